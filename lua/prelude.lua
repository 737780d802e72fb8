-- The Lua side of `core`: calling conventions, compat shims and small utilities.
-- Runs once per Lua state, before the sandbox is sealed. `native` holds the Rust functions and
-- never becomes visible to scripts.
local core, native = ...

local NULL = "_NULL"
core.NULL = NULL
core.FACEBOOK, core.GOOGLE, core.OPENUDID = "facebook", "google", "openudid"

------------------------------------------------------------------------------------------------
-- core.users: one function, two calling conventions (compat §1).
-- With a listener, the listener gets `evt` once and the call returns nothing; without one, the
-- call returns `result`, or `nil, err, status`.
------------------------------------------------------------------------------------------------
local function deliver(listener, result, err, status)
  if type(listener) == "function" then
    if err ~= nil then
      listener({ error = err, status = status })
    else
      listener({ result = result })
    end
    return
  end
  if err ~= nil then
    return nil, err, status
  end
  return result
end

------------------------------------------------------------------------------------------------
-- Waiting for the host: a native that has to wait (a database call, a sleep) leaves its work with
-- the host and returns; `wait` then yields the host's "pending" marker and returns what the host
-- resumes with (`true, results...`, or `false, message` for a failure, raised here).
------------------------------------------------------------------------------------------------
local PENDING = native.pending
local raw_resume, raw_yield, raw_create = coroutine.resume, coroutine.yield, coroutine.create

local function await(ok, ...)
  if ok then
    return ...
  end
  error((...), 0)
end

local function wait()
  return await(raw_yield(PENDING))
end

------------------------------------------------------------------------------------------------
-- Request contexts: each request's coroutine (and the coroutines it creates) maps to a context
-- holding its scope and its own globals. Weak keys: a finished request leaves nothing behind.
------------------------------------------------------------------------------------------------
local contexts = setmetatable({}, { __mode = "k" })

local function context()
  return contexts[coroutine.running()]
end

local function scope()
  local ctx = contexts[coroutine.running()]
  return ctx and ctx.scope
end

local users = { NULL = NULL }
core.users = users

function users.create(params, listener)
  native.create(params, scope())
  return deliver(listener, wait())
end

function users.login(params, listener)
  native.login(params, scope())
  return deliver(listener, wait())
end

-- get({user_id = id}, listener) | get({user_id = id}) | get(id)
function users.get(params, listener)
  native.get(params, scope())
  return deliver(listener, wait())
end

-- update({user_id = id, update = {...}}, listener) | update(id, {...})
function users.update(params, update, listener)
  if type(params) == "string" then
    params = { user_id = params, update = update }
  else
    listener = update
  end
  native.update(params, scope())
  return deliver(listener, wait())
end

-- delete({user_id = id}, listener) | delete(id)
function users.delete(params, listener)
  native.delete(params, scope())
  return deliver(listener, wait())
end

-- Coronium 2.x: register(username, password, scope, meta) -> user_id
-- meta = { email, group, extra, login }; with meta.login the new user is logged in and returned.
function users.register(username, password, in_scope, meta, listener)
  if type(meta) == "function" then
    meta, listener = nil, meta
  elseif type(in_scope) == "function" then
    in_scope, listener = nil, in_scope
  end
  meta = type(meta) == "table" and meta or {}
  local params = {
    username = username,
    password = password,
    scope = in_scope,
    email = meta.email,
    group = meta.group,
    extra = meta.extra,
  }
  native.create(params, scope())
  local user_id, err, status = wait()
  if err == nil and meta.login then
    native.login({ username = username, password = password, scope = params.scope }, scope())
    return deliver(listener, wait())
  end
  return deliver(listener, user_id, err, status)
end

------------------------------------------------------------------------------------------------
-- Small utilities ported code uses (compat §6).
------------------------------------------------------------------------------------------------
core.sf = string.format
core.uuid = native.uuid
core.md5 = native.md5
function core.sleep(seconds)
  native.sleep(seconds)
  wait()
end
core.log = native.log
core.json = { encode = native.json_encode, decode = native.json_decode }

function core.trim(s)
  return (tostring(s):gsub("^%s+", ""):gsub("%s+$", ""))
end

-- split(s, sep): pieces between plain separators (empty pieces kept); without `sep`, words.
function core.split(s, sep)
  s = tostring(s)
  local parts = {}
  if sep == nil or sep == "" then
    for word in s:gmatch("%S+") do
      parts[#parts + 1] = word
    end
    return parts
  end
  local start = 1
  while true do
    local i, j = s:find(sep, start, true)
    if not i then
      parts[#parts + 1] = s:sub(start)
      return parts
    end
    parts[#parts + 1] = s:sub(start, i - 1)
    start = j + 1
  end
end

-- print with the sink the host chose (stdout for `coronium run`).
function print(...)
  local n = select("#", ...)
  local parts = table.create and table.create(n) or {}
  for i = 1, n do
    parts[i] = tostring((select(i, ...)))
  end
  native.write(table.concat(parts, "\t"))
end

-- core.debug(value): pretty-prints a value, tables nested and sorted by key.
local function dump(value, indent, seen, out)
  if type(value) ~= "table" then
    out[#out + 1] = type(value) == "string" and string.format("%q", value) or tostring(value)
    return
  end
  if seen[value] then
    out[#out + 1] = "<cycle>"
    return
  end
  seen[value] = true
  local keys = {}
  for k in pairs(value) do
    keys[#keys + 1] = k
  end
  table.sort(keys, function(a, b)
    if type(a) == type(b) and (type(a) == "number" or type(a) == "string") then
      return a < b
    end
    return type(a) < type(b)
  end)
  if #keys == 0 then
    out[#out + 1] = "{}"
  else
    out[#out + 1] = "{\n"
    for _, k in ipairs(keys) do
      local label = type(k) == "string" and k:match("^[%a_][%w_]*$") and k or "[" .. (type(k) == "string" and string.format("%q", k) or tostring(k)) .. "]"
      out[#out + 1] = indent .. "  " .. label .. " = "
      dump(value[k], indent .. "  ", seen, out)
      out[#out + 1] = ",\n"
    end
    out[#out + 1] = indent .. "}"
  end
  seen[value] = nil
end

function core.debug(value)
  local out = {}
  dump(value, "", {}, out)
  native.write(table.concat(out))
end

------------------------------------------------------------------------------------------------
-- Scripts' own coroutines may call core functions that wait for the host. Such a coroutine
-- yields the host's "pending" marker; resume passes it up to the coroutine the host drives, and
-- hands what the host resumes with down to the inner one.
------------------------------------------------------------------------------------------------
local function settle(co, ...)
  local ok, first = ...
  if ok and first == PENDING and select("#", ...) == 2 then
    return settle(co, raw_resume(co, raw_yield(PENDING)))
  end
  return ...
end

function coroutine.create(f)
  local co = raw_create(f)
  contexts[co] = contexts[coroutine.running()]
  return co
end

function coroutine.resume(co, ...)
  return settle(co, raw_resume(co, ...))
end

local function unwrap(ok, ...)
  if not ok then
    error((...), 0)
  end
  return ...
end

function coroutine.wrap(f)
  local co = coroutine.create(f)
  return function(...)
    return unwrap(settle(co, raw_resume(co, ...)))
  end
end

------------------------------------------------------------------------------------------------
-- API projects (compat §4): `local api = core.api()` ... `return api`; handlers run as
-- api[method](input, scope) in a coroutine of their own.
------------------------------------------------------------------------------------------------
local ERROR_MT = { __tostring = function(e) return tostring(e.error) end }

function core.api()
  return {}
end

-- core.error(msg, code): return it from a handler to answer with an error.
function core.error(message, status)
  return setmetatable({ error = message, status = tonumber(status) or -1 }, ERROR_MT)
end

-- Turns what a handler returned into result, err, status.
local function outcome(result, err, status)
  if type(result) == "table" and getmetatable(result) == ERROR_MT then
    return nil, tostring(result.error), result.status
  end
  if result == nil then
    if err ~= nil then
      return nil, tostring(err), tonumber(status) or -1
    end
    return nil, "Result was not valid", 800
  end
  return result
end

-- Status 0 means the api has no such method (the caller words the error).
local function invoke(api, method, input, in_scope)
  local handler = type(api) == "table" and rawget(api, method)
  if type(handler) ~= "function" then
    return nil, "unknown action", 0
  end
  return outcome(handler(input, in_scope))
end

-- The globals a project's files see: this request's own globals first, then what the project's
-- files defined at load time, then the sandboxed standard globals. Writes during a request stay
-- in that request. Until a request of the project writes a global, reads need no Lua function:
-- `__index` is the shared table itself (whose own `__index` is `_G`), a lookup Luau does in C.
local function project_env(shared_globals)
  setmetatable(shared_globals, { __index = _G })
  local meta = { __index = shared_globals }
  local function request_first(_, key)
    local ctx = contexts[coroutine.running()]
    local globals = ctx and ctx.globals
    if globals then
      local value = globals[key]
      if value ~= nil then
        return value
      end
    end
    return shared_globals[key]
  end
  meta.__newindex = function(_, key, value)
    local ctx = contexts[coroutine.running()]
    if ctx then
      local globals = ctx.globals
      if not globals then
        globals = {}
        ctx.globals = globals
      end
      globals[key] = value
      meta.__index = request_first
    else
      rawset(shared_globals, key, value)
    end
  end
  return setmetatable({}, meta)
end

function core.callApi(project, method, params)
  native.project_api(project)
  local api = wait()
  if api == nil then
    return nil, "Unknown project '" .. tostring(project) .. "'.", 810
  end
  local result, err, status = invoke(api, method, params or {}, scope())
  if status == 0 then
    return nil, "Unknown action '" .. tostring(method) .. "' in project '" .. tostring(project) .. "'.", 810
  end
  return result, err, status
end

-- For the host: the entry point of a request, and the environment maker for projects.
local host = {}

function host.request(api, method, input, in_scope)
  -- `globals` is made on the request's first global write; most requests write none.
  contexts[coroutine.running()] = { scope = in_scope }
  return invoke(api, method, input, in_scope)
end

-- A fresh environment for a project's files, with a `require` that loads
-- "<Project>.<file>" from the projects directory into this environment, once.
function host.new_project(name)
  local shared = {}
  local env = project_env(shared)
  local modules = {}
  shared.require = function(module_name)
    module_name = tostring(module_name)
    local cached = modules[module_name]
    if cached ~= nil then
      return cached
    end
    local source, chunkname = native.read_module(name, module_name)
    local chunk, err = loadstring(source, chunkname)
    if not chunk then
      error(err, 2)
    end
    setfenv(chunk, env)
    local value = chunk(module_name)
    if value == nil then
      value = true
    end
    modules[module_name] = value
    return value
  end
  return env
end

------------------------------------------------------------------------------------------------
-- Lua 5.1 names that Coronium-era code uses, where Luau lacks them.
------------------------------------------------------------------------------------------------
unpack = unpack or table.unpack
math.mod = math.mod or math.fmod
math.pow = math.pow or function(x, y) return x ^ y end
table.getn = table.getn or function(t) return #t end
table.maxn = table.maxn or function(t)
  local max = 0
  for k in pairs(t) do
    if type(k) == "number" and k > max then
      max = k
    end
  end
  return max
end
string.gfind = string.gfind or string.gmatch

return host
