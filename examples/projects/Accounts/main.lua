-- Accounts: sign-up with an email confirmation, a forgotten password, and device login.
-- Call it with `coronium call Accounts <method> '<json>'` while `coronium serve --projects
-- examples/projects` runs. Without mail settings, each mail lands in coronium-data/mail/ as an
-- .eml file (the server logs where); open the link in it with a browser.
local api = core.api()

local SENDER = "Games <games@example.com>"

-- Sign-up with confirmation: the user starts pending and inactive until the link in the mail
-- is opened (GET /_confirmation?code=...). `tpl_keys` fill a custom template's {{ keys }}.
function api.signup(input)
  local id, err, status = core.users.create({
    username = input.username,
    password = input.password,
    email = input.email,
    confirmation = {
      from_email = SENDER,
      subject = "Confirm your account",
      tpl_keys = { username = input.username },
    },
  })
  if not id then
    return core.error(err, status)
  end
  return { user_id = id, confirmation = "pending" }
end

-- A new confirmation link (the old one stops working); at most one a minute per user.
function api.resend(input)
  local id, err, status = core.users.resendConfirmation({ user_id = input.user_id })
  if not id then
    return core.error(err, status)
  end
  return { user_id = id }
end

-- Where the app stands: active and validated once the link was opened.
function api.status(input)
  local user, err, status = core.users.login({ username = input.username, password = input.password })
  if not user then
    return core.error(err, status)
  end
  return { active = user.active, validated = user.validated, confirmation = user.confirmation }
end

-- A forgotten password: the mail's link (GET /_resetpassword?code=...) opens a form for a new
-- one, valid for 24 hours. The answer is the same whether or not the address belongs to
-- anyone, so the app cannot be used to find out who plays.
function api.forgot(input, scope)
  local sent, err, status = core.users.sendPasswordResetLink(input.email, scope, {
    from_email = SENDER,
    subject = "Reset your password",
  })
  if not sent and status ~= 704 then
    return core.error(err, status)
  end
  return { requested = true }
end

-- Device login: the device's id is the account (core.OPENUDID). The first login makes an
-- anonymous user without a password and links the device to it; later logins find it.
function api.device(input, scope)
  local udid = input.device_id
  if type(udid) ~= "string" or #udid < 8 then
    return core.error("Parameter 'device_id' must be a string of at least 8 characters.", 801)
  end
  local user = core.users.login({ provider = core.OPENUDID, client_id = udid, scope = scope })
  if user then
    return { user_id = user.user_id, username = user.username, created = false }
  end
  local id, err, status = core.users.register(nil, nil, scope, { login = true })
  if not id then
    return core.error(err, status)
  end
  local linked, link_err, link_status = core.users.addAuthProvider(id, core.OPENUDID, { client_id = udid })
  if not linked then
    -- Another request linked this device first: keep its user, drop ours.
    core.users.delete(id)
    if link_status == 620 then
      return api.device(input, scope)
    end
    return core.error(link_err, link_status)
  end
  local user = core.users.get(id)
  return { user_id = id, username = user and user.username, created = true }
end

-- For a recurring job: expired reset codes out (they are refused when used anyway).
function api.flush()
  return { deleted = core.users.flushExpiredPasswordResets() }
end

return api
