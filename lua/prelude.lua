-- The Lua side of `core`: calling conventions, compat shims and small utilities.
-- Runs once per Lua state, before the sandbox is sealed. `native` holds the Rust functions and
-- never becomes visible to scripts.
local core, native, modules = ...

-- The standard globals (read-only once the host seals the state), and the originals of what the
-- prelude replaces below.
local HOST = _G
local raw_setfenv, raw_loadstring = setfenv, loadstring

-- Coronium status codes by name (from Rust's `Status`), and what `invoke` answers as its error
-- when an api has no such method (the host and `core.callApi` word that error themselves).
local STATUS, NO_SUCH_ACTION = native.STATUS, native.NO_SUCH_ACTION

-- The Rust half of each `core` module (see src/lua/natives/).
local JSON, TEXT, UTIL = native.json, native.text, native.util

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

-- The tables a client sent (each request's input), however far a handler passes them on: a
-- client's own table may log in only as the client could over the wire (users spec §3).
local from_client = setmetatable({}, { __mode = "k" })

local function is_from_client(t)
  return from_client[t] == true
end

local function scope()
  local ctx = contexts[coroutine.running()]
  return ctx and ctx.scope
end

-- The address of the client whose request runs (for the failed-login throttle); nil outside a
-- request.
local function client()
  local ctx = contexts[coroutine.running()]
  return ctx and ctx.client
end

-- The `core` modules written in Lua, each a file of its own under lua/core/ (compiled by the
-- host and passed in as `modules`), get what they share with the prelude through `kernel`.
local kernel = { deliver = deliver, wait = wait, scope = scope, client = client, NULL = NULL, STATUS = STATUS,
  freeze = native.freeze, is_from_client = is_from_client,
  project = function() local ctx = context() return ctx and ctx.project end,
  action = function() local ctx = context() return ctx and ctx.action end }
core.users = modules.users(native.users, kernel)

------------------------------------------------------------------------------------------------
-- Small utilities ported code uses (compat §6), in lua/core/util.lua and lua/core/json.lua.
------------------------------------------------------------------------------------------------
for name, value in pairs(modules.util(UTIL, kernel, TEXT)) do
  core[name] = value
end
core.json = modules.json(JSON, kernel)
core.email = modules.email(native.email, kernel)

-- print with the sink the host chose (stdout for `coronium run`).
function print(...)
  local n = select("#", ...)
  local parts = table.create and table.create(n) or {}
  for i = 1, n do
    parts[i] = tostring((select(i, ...)))
  end
  UTIL.write(table.concat(parts, "\t"), kernel.project(), kernel.action())
end

------------------------------------------------------------------------------------------------
-- Budget errors are not for catching.
------------------------------------------------------------------------------------------------
-- A request past its CPU budget must end: an error caught then (by pcall, xpcall or resume) is
-- raised again, or a loop around pcall would outlive every budget. The meter sets one byte
-- (`BUDGET.flag`) when the budget is spent; reading it allocates nothing, and where a script at
-- the top of its call stack leaves no room for the read, the read fails: an error all the same,
-- for the next pcall down.
-- Scripts run without a budget (no `BUDGET`) and keep the plain functions.
local BUDGET = native.budget
local SPENT, SPENT_MESSAGE = BUDGET and BUDGET.flag, BUDGET and BUDGET.message
local readu8 = buffer.readu8
local raw_pcall, raw_xpcall = pcall, xpcall
local function rethrow_if_over(ok, ...)
  if not ok and SPENT and readu8(SPENT, 0) ~= 0 then
    error(SPENT_MESSAGE, 0)
  end
  return ok, ...
end

if BUDGET then
  function pcall(f, ...)
    return rethrow_if_over(raw_pcall(f, ...))
  end
  function xpcall(f, handler, ...)
    return rethrow_if_over(raw_xpcall(f, handler, ...))
  end
end

------------------------------------------------------------------------------------------------
-- Scripts' own coroutines may call core functions that wait for the host. Such a coroutine
-- yields the host's "pending" marker; resume passes it up to the coroutine the host drives, and
-- hands what the host resumes with down to the inner one.
------------------------------------------------------------------------------------------------
-- The meter yields a coroutine that runs past the request's budget; its resumer (with room on
-- its own call stack, whatever the coroutine's looks like) raises the budget error.
local function settle(co, ...)
  local ok, first = ...
  if ok and first == PENDING and select("#", ...) == 2 then
    return settle(co, raw_resume(co, raw_yield(PENDING)))
  end
  if SPENT and readu8(SPENT, 0) ~= 0 then
    error(SPENT_MESSAGE, 0)
  end
  return ...
end

function coroutine.create(f)
  local co = raw_create(f)
  contexts[co] = contexts[coroutine.running()]
  return co
end

function coroutine.resume(co, ...)
  return rethrow_if_over(settle(co, raw_resume(co, ...)))
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
local ERROR_MT = native.freeze({ __tostring = function(e) return tostring(e.error) end })

function core.api()
  return {}
end

-- core.error(msg, code): return it from a handler to answer with an error.
function core.error(message, status)
  return setmetatable({ error = message, status = tonumber(status) or STATUS.DEFAULT }, ERROR_MT)
end

-- Turns what a handler returned into result, err, status.
local function outcome(result, err, status)
  if type(result) == "table" and getmetatable(result) == ERROR_MT then
    return nil, tostring(result.error), result.status
  end
  if result == nil then
    if err ~= nil then
      return nil, tostring(err), tonumber(status) or STATUS.DEFAULT
    end
    return nil, "Result was not valid", STATUS.INVALID_RESULT
  end
  return result
end

local function invoke(api, method, input, in_scope)
  local handler = type(api) == "table" and rawget(api, method)
  if type(handler) ~= "function" then
    return nil, NO_SUCH_ACTION
  end
  return outcome(handler(input, in_scope))
end

-- Which project each environment belongs to (weak keys): a project's own, and the tables its
-- code gave its functions with setfenv. A function belongs to the project its environment does.
local owners = setmetatable({}, { __mode = "k" })
local freeze = native.freeze

-- The globals a project's files see: this request's own globals first, then what the project's
-- files defined at load time, then the sandboxed standard globals. Writes during a request stay
-- in that request. Until a request of the project writes a global, reads need no Lua function:
-- `__index` is the shared table itself (whose own `__index` is `_G`), a lookup Luau does in C.
-- The environment itself is read-only (a raw write would outlive the request) and its metatable
-- is hidden; what the files defined is frozen once the project has loaded.
local function project_env(shared_globals)
  setmetatable(shared_globals, { __index = HOST })
  local meta = { __index = shared_globals, __metatable = false }
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
  return freeze(setmetatable({}, meta))
end

-- Runs `api[method]` as `project`: the context names the project whose code runs, for the
-- environment rules below (restored however the handler ends).
local function invoke_as(project, api, method, params)
  local ctx = contexts[coroutine.running()]
  if not ctx then
    return invoke(api, method, params, nil)
  end
  local caller = ctx.project
  ctx.project = project
  local ok, result, err, status = raw_pcall(invoke, api, method, params, ctx.scope)
  ctx.project = caller
  if not ok then
    error(result, 0)
  end
  return result, err, status
end

function core.callApi(project, method, params)
  native.project_api(project)
  local api = wait()
  if api == nil then
    return nil, "Unknown project '" .. tostring(project) .. "'.", STATUS.GENERAL
  end
  local result, err, status = invoke_as(tostring(project), api, method, params or {})
  if err == NO_SUCH_ACTION then
    return nil, "Unknown action '" .. tostring(method) .. "' in project '" .. tostring(project) .. "'.", STATUS.GENERAL
  end
  return result, err, status
end

-- For the host: the entry point of a request, and the environment maker for projects.
local host = {}

function host.request(api, method, input, in_scope, project, from)
  -- `globals` is made on the request's first global write; most requests write none.
  contexts[coroutine.running()] = { scope = in_scope, project = project, client = from,
    action = method }
  if type(input) == "table" then
    from_client[input] = true
  end
  return invoke(api, method, input, in_scope)
end

-- Module tables and the api are shared by every request of the project on this worker: frozen.
local function seal(value)
  if type(value) == "table" then
    freeze(value)
  end
  return value
end

-- A fresh environment for a project's files, with a `require` that loads "<Project>.<file>" of
-- this project only into this environment, once; and the function that seals the project once
-- it has loaded.
function host.new_project(name)
  local shared = {}
  local env = project_env(shared)
  owners[env] = name
  local modules = {}
  local sealed = false
  shared.require = function(module_name)
    module_name = tostring(module_name)
    local cached = modules[module_name]
    if cached ~= nil then
      return cached
    end
    local source, chunkname = native.read_module(name, module_name)
    if source == nil then
      error(chunkname, 2)
    end
    local chunk, err = raw_loadstring(source, chunkname)
    if not chunk then
      error(err, 2)
    end
    raw_setfenv(chunk, env)
    local value = chunk(module_name)
    if value == nil then
      value = true
    end
    if sealed then
      seal(value)
    end
    modules[module_name] = value
    return value
  end
  local function loaded(api)
    sealed = true
    for _, value in pairs(modules) do
      seal(value)
    end
    seal(api)
    freeze(shared)
  end
  return env, loaded
end

------------------------------------------------------------------------------------------------
-- Lua 5.1's getfenv / setfenv / loadstring, kept for old code, within the caller's project: a
-- project reaches its own functions' environments, never another project's nor those of the
-- functions the server provides (the prelude, C functions), which every project shares.
------------------------------------------------------------------------------------------------
local debug_info = debug.info
local env_of = native.env_of

-- The project whose code called getfenv/setfenv (`level` counts from the caller of the function
-- asking): the owner of the caller's environment, else (a C function in between, as in
-- `pcall(setfenv, ...)`) the project the request runs now.
local function caller_project(level)
  local caller = debug_info(level + 1, "f")
  local env = caller and env_of(caller)
  local owner = env and owners[env]
  if owner ~= nil then
    return owner
  end
  local ctx = contexts[coroutine.running()]
  return ctx and ctx.project
end

-- The function a getfenv/setfenv argument names: itself, or the one running at a level (counted
-- from the caller of the function asking, 2 levels up from here). Level 0 is the caller too.
local function named_function(target, name)
  if target == nil then
    target = 1
  end
  if type(target) == "function" then
    return target
  end
  if type(target) ~= "number" or target < 0 or target % 1 ~= 0 then
    error("bad argument #1 to '" .. name .. "' (function or level expected)", 3)
  end
  local f = debug_info(math.max(target, 1) + 2, "f")
  if f == nil then
    error("bad argument #1 to '" .. name .. "' (invalid level)", 3)
  end
  return f
end

function getfenv(target)
  local project = caller_project(2)
  local env = env_of(named_function(target, "getfenv"))
  if env == nil then
    return HOST -- a C function's: the read-only standard globals
  end
  local owner = owners[env]
  if owner ~= nil and owner ~= project then
    error("getfenv: that function belongs to another project", 2)
  end
  return env
end

function setfenv(target, env)
  if type(env) ~= "table" then
    error("bad argument #2 to 'setfenv' (table expected, got " .. type(env) .. ")", 2)
  end
  local project = caller_project(2)
  if target == 0 then
    error("setfenv: level 0 (the thread's globals) is shared with other requests", 2)
  end
  local f = named_function(target, "setfenv")
  local current = env_of(f)
  if current == nil or current == HOST then
    error("setfenv: cannot change the environment of a function the server provides", 2)
  end
  local owner = owners[current]
  if owner ~= nil and owner ~= project then
    error("setfenv: that function belongs to another project", 2)
  end
  local env_owner = owners[env]
  if env_owner ~= nil and env_owner ~= project then
    error("setfenv: that environment belongs to another project", 2)
  end
  if env_owner == nil and env ~= HOST and project ~= nil then
    owners[env] = project
  end
  raw_setfenv(f, env)
  return f
end

-- Compiling runs in C (about 2 MB/s on hostile input, and outside the state's memory limit), so
-- chunks are capped. A chunk runs in its caller's environment, as it would in Lua 5.1 under
-- setfenv: never in the thread's globals, which every request shares.
local MAX_CHUNK = 256 * 1024
function loadstring(source, chunkname)
  if type(source) == "string" and #source > MAX_CHUNK then
    return nil, "loadstring: chunk larger than " .. MAX_CHUNK .. " bytes"
  end
  local chunk, err = raw_loadstring(source, chunkname)
  if chunk then
    local caller = debug_info(2, "f")
    local env = caller and env_of(caller)
    if env ~= nil and env ~= HOST then
      raw_setfenv(chunk, env)
    end
  end
  return chunk, err
end

------------------------------------------------------------------------------------------------
-- The standard library made safe to share and to budget (lua/host/guards.lua), and the Lua 5.1
-- names Coronium-era code uses (lua/host/lua51.lua).
------------------------------------------------------------------------------------------------
modules.guards(core, TEXT)
modules.lua51()

return host
