-- core.users: one function, two calling conventions (compat §1), and the Coronium 2.x
-- positional forms. With a listener, the listener gets `evt` once and the call returns nothing;
-- without one, the call returns `result`, or `nil, err, status`.
-- `USERS` is the Rust half (src/lua/natives/users.rs); `kernel` what the prelude shares: how to
-- deliver a result, wait for the host, and read the running request's scope and client.
local USERS, kernel = ...
local deliver, wait, scope, client = kernel.deliver, kernel.wait, kernel.scope, kernel.client

local users = { NULL = kernel.NULL }

function users.create(params, listener)
  USERS.create(params, scope())
  return deliver(listener, wait())
end

-- login({username, password} | {email, password} | {provider, client_id}), and from server
-- code also password-less: {user_id} (any scope) or {username, scope} (that scope). A handler
-- that passes the client's own input table on gets only the client's ways in: a client that
-- sends {user_id} or {username, scope} to `core.users.login(input)` logs in as nobody.
function users.login(params, listener)
  local from_client = type(params) == "table" and kernel.is_from_client(params)
  local by_account = from_client and USERS.wire_oauth_login
    and params.provider ~= nil and params.client_id ~= nil
  if from_client and not by_account then
    if params.user_id ~= nil then
      return deliver(listener, nil, "A client cannot log in by user_id.", kernel.STATUS.MISMATCHED_PARAMETER)
    end
    if params.password == nil then
      return deliver(listener, nil, "Missing required parameter: password", kernel.STATUS.MISSING_PARAMETER)
    end
  end
  USERS.login(params, scope(), client())
  return deliver(listener, wait())
end

-- get({user_id = id}, listener) | get({user_id = id}) | get(id)
function users.get(params, listener)
  USERS.get(params, scope())
  return deliver(listener, wait())
end

-- update({user_id = id, update = {...}}, listener) | update(id, {...})
-- The positional forms find the user by id in any scope (users spec §1).
function users.update(params, update, listener)
  local positional = type(params) == "string"
  if positional then
    params = { user_id = params, update = update }
  else
    listener = update
  end
  USERS.update(params, scope(), nil, positional)
  return deliver(listener, wait())
end

-- delete({user_id = id}, listener) | delete(id)
function users.delete(params, listener)
  USERS.delete(params, scope())
  return deliver(listener, wait())
end

-- resendConfirmation({user_id, confirmation?}, listener) → the user id: a pending user's fresh
-- confirmation link (the old one stops working).
function users.resendConfirmation(params, listener)
  USERS.resend_confirmation(params, scope())
  return deliver(listener, wait())
end

-- Mail (users spec §4), server-side only; options = {from_email, subject, tpl_name or email_tpl,
-- tpl_keys}. sendConfirmationLink(user_id, options) → "OK": the user (in any scope) becomes
-- pending until the link is opened.
function users.sendConfirmationLink(user_id, options, listener)
  USERS.send_confirmation_link({ user_id = user_id, options = options }, scope())
  return deliver(listener, wait())
end

-- sendPasswordResetLink(to_email, scope, options) → true: a link valid for 24 hours.
function users.sendPasswordResetLink(to_email, in_scope, options, listener)
  USERS.send_password_reset_link({ to_email = to_email, scope = in_scope, options = options }, scope())
  return deliver(listener, wait())
end

-- flushExpiredPasswordResets() → how many expired reset codes were deleted.
function users.flushExpiredPasswordResets(listener)
  USERS.flush_expired_password_resets({}, scope())
  return deliver(listener, wait())
end

-- Coronium 2.x: register(username, password, scope, meta) → user_id (users spec §2). The user
-- is active and confirmed; a nil username makes one up (`user-` and 12 hex digits), a nil
-- password makes a user only server code can log in; meta = {email, group, extra, login}.
function users.register(username, password, in_scope, meta, listener)
  if type(meta) == "function" then
    meta, listener = nil, meta
  end
  USERS.register({ username = username, password = password, scope = in_scope, meta = meta }, scope())
  return deliver(listener, wait())
end

-- Queries (users spec §6), server-side only: positional arguments, then an optional listener.
-- getWithQuery(scope, query) → users (limit == 1: the user); getGroup(scope, group, limit).
function users.getWithQuery(in_scope, query, listener)
  if type(query) == "function" then
    query, listener = nil, query
  end
  USERS.get_with_query({ scope = in_scope, query = query }, scope())
  return deliver(listener, wait())
end

function users.getGroup(in_scope, group, limit, listener)
  if type(limit) == "function" then
    limit, listener = nil, limit
  end
  USERS.get_group({ scope = in_scope, group = group, limit = limit }, scope())
  return deliver(listener, wait())
end

-- getAndMerge(user_id, merge_tbl) reads project databases, which this server has no module for.
function users.getAndMerge(user_id, merge_tbl, listener)
  if type(merge_tbl) == "function" then
    listener = merge_tbl
  end
  return deliver(listener, nil, "getAndMerge needs the database module.", kernel.STATUS.GENERAL)
end

-- OAuth provider links (users spec §5). The table forms take the client's data table and act in
-- the request's scope; the positional forms find the user by id in any scope. Both take an
-- optional listener last.
local function positional(native, params, listener)
  native(params, scope(), nil, true)
  return deliver(listener, wait())
end

local function table_form(native, params, listener, shape)
  native(params, scope())
  local result, err, status = wait()
  if err == nil and shape then
    result = shape(result)
  end
  return deliver(listener, result, err, status)
end

-- addAuthProvider(user_id, provider, {client_id, access_token, access_token_expiry})
-- | addAuthProvider({user_id, provider, auth = {...}}, listener)
function users.addAuthProvider(user_id, provider, auth, listener)
  if type(user_id) == "table" then
    return table_form(USERS.add_provider, user_id, provider)
  end
  return positional(USERS.add_provider, { user_id = user_id, provider = provider, auth = auth }, listener)
end

-- getAuthProvider(user_id, provider) | getAuthProvider({user_id, provider}, listener)
function users.getAuthProvider(user_id, provider, listener)
  if type(user_id) == "table" then
    return table_form(USERS.get_provider, user_id, provider)
  end
  return positional(USERS.get_provider, { user_id = user_id, provider = provider }, listener)
end

-- getAuthProviders(user_id) → {[provider] = info}
function users.getAuthProviders(user_id, listener)
  return positional(USERS.get_providers, { user_id = user_id }, listener)
end

-- updateAuthProvider(user_id, provider, {client_id, access_token, access_token_expiry})
-- | updateAuthProvider({user_id, provider, update = {...}}, listener)
function users.updateAuthProvider(user_id, provider, update, listener)
  if type(user_id) == "table" then
    return table_form(USERS.update_provider, user_id, provider)
  end
  return positional(USERS.update_provider, { user_id = user_id, provider = provider, update = update }, listener)
end

-- updateTokenExpiry(user_id, provider, expiry, token) | updateTokenExpiry({user_id, provider,
-- expiry, token}, listener)
function users.updateTokenExpiry(user_id, provider, expiry, token, listener)
  if type(user_id) == "table" then
    return table_form(USERS.update_token_expiry, user_id, provider)
  end
  if type(token) == "function" then
    token, listener = nil, token
  end
  local params = { user_id = user_id, provider = provider, expiry = expiry, token = token }
  return positional(USERS.update_token_expiry, params, listener)
end

-- removeAuthProvider(user_id, provider) → id | removeAuthProvider({user_id, provider}) → {user_id}
function users.removeAuthProvider(user_id, provider, listener)
  if type(user_id) == "table" then
    return table_form(USERS.remove_provider, user_id, provider, function(id)
      return { user_id = id }
    end)
  end
  return positional(USERS.remove_provider, { user_id = user_id, provider = provider }, listener)
end

-- removeAuthProviders(user_id) → id, links or none
function users.removeAuthProviders(user_id, listener)
  return positional(USERS.remove_providers, { user_id = user_id }, listener)
end

-- accessTokenExpired(user_id, provider) → boolean | accessTokenExpired({user_id, provider}) →
-- {expired}
function users.accessTokenExpired(user_id, provider, listener)
  if type(user_id) == "table" then
    return table_form(USERS.token_expired, user_id, provider, function(expired)
      return { expired = expired }
    end)
  end
  return positional(USERS.token_expired, { user_id = user_id, provider = provider }, listener)
end

-- getWithProvider(scope, provider, client_id) → the user with its `oauth` info
function users.getWithProvider(in_scope, provider, client_id, listener)
  USERS.get_with_provider({ scope = in_scope, provider = provider, client_id = client_id }, scope())
  return deliver(listener, wait())
end

return users
