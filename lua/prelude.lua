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
local kernel = { deliver = deliver, wait = wait, scope = scope, client = client, NULL = NULL }
core.users = modules.users(native.users, kernel)

------------------------------------------------------------------------------------------------
-- Small utilities ported code uses (compat §6).
------------------------------------------------------------------------------------------------
core.uuid = UTIL.uuid
core.md5 = UTIL.md5
function core.sleep(seconds)
  UTIL.sleep(seconds)
  wait()
end
core.log = UTIL.log
core.json = { encode = JSON.encode, decode = JSON.decode }

local native_trim, native_split = TEXT.trim, TEXT.split

-- Both in linear time, in Rust (a pattern-based trim is quadratic on long runs of spaces).
function core.trim(s)
  return native_trim(tostring(s))
end

-- split(s, sep): pieces between plain separators (empty pieces kept); without `sep`, words.
function core.split(s, sep)
  return native_split(tostring(s), sep)
end

-- print with the sink the host chose (stdout for `coronium run`).
function print(...)
  local n = select("#", ...)
  local parts = table.create and table.create(n) or {}
  for i = 1, n do
    parts[i] = tostring((select(i, ...)))
  end
  UTIL.write(table.concat(parts, "\t"))
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
  UTIL.write(table.concat(out))
end

------------------------------------------------------------------------------------------------
-- Budget errors are not for catching.
------------------------------------------------------------------------------------------------
-- A request past its CPU budget must end: an error caught then (by pcall, xpcall or resume) is
-- raised again, or a loop around pcall would outlive every budget.
-- Scripts run without a budget and keep the plain functions.
local over_budget = native.over_budget
local raw_pcall, raw_xpcall = pcall, xpcall
local function rethrow_if_over(ok, ...)
  -- The error caught may be "not enough memory": asking may itself fail, and then it is not the
  -- budget's.
  if not ok and native.budgeted then
    local asked, over = raw_pcall(over_budget)
    if asked and over then
      error((...), 0)
    end
  end
  return ok, ...
end

if native.budgeted then
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
  contexts[coroutine.running()] = { scope = in_scope, project = project, client = from }
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
-- Library functions whose C implementation could outrun the CPU budget. Luau calls the budget's
-- interrupt at Lua calls and loops and inside the pattern matcher, not inside other C loops; these
-- wrappers keep every such loop short, in Lua, or in linear time.
------------------------------------------------------------------------------------------------
local raw_find, raw_match, raw_gmatch, raw_gsub = string.find, string.match, string.gmatch, string.gsub
local find_plain = TEXT.find_plain
local SPECIALS = "[%^%$%*%+%?%.%(%)%[%]%%%-]"
-- Between two of the matcher's interrupts it may compare a whole literal run of the pattern.
local MAX_PATTERN = 64 * 1024

local function checked(pattern, name)
  if type(pattern) == "string" and #pattern > MAX_PATTERN then
    error("bad argument #2 to '" .. name .. "' (pattern longer than " .. MAX_PATTERN .. " bytes)", 3)
  end
  return pattern
end

-- A plain search (or a pattern without specials) in linear time: Luau's compares the needle at
-- every candidate position.
function string.find(s, pattern, init, plain)
  if plain or (type(pattern) == "string" and not raw_find(pattern, SPECIALS)) then
    return find_plain(s, pattern, init)
  end
  return raw_find(s, checked(pattern, "find"), init, plain)
end

function string.match(s, pattern, init)
  return raw_match(s, checked(pattern, "match"), init)
end

function string.gmatch(s, pattern)
  return raw_gmatch(s, checked(pattern, "gmatch"))
end

function string.gsub(s, pattern, repl, n)
  return raw_gsub(s, checked(pattern, "gsub"), repl, n)
end

-- Luau's split runs in C (2 s for 12 million pieces); this one in Rust looks at the budget.
string.split = TEXT.string_split

-- %q escapes byte by byte in C, about 0.1 s per MiB.
local raw_format = string.format
local MAX_QUOTED = 1024 * 1024
function string.format(fmt, ...)
  if type(fmt) == "string" and raw_find(fmt, "%q", 1, true) then
    for i = 1, select("#", ...) do
      local arg = select(i, ...)
      if type(arg) == "string" and #arg > MAX_QUOTED then
        error("bad argument #" .. (i + 1) .. " to 'format' (string longer than " .. MAX_QUOTED .. " bytes for %q)", 2)
      end
    end
  end
  return raw_format(fmt, ...)
end
core.sf = string.format

-- Luau's sort compares in C; a comparator in Lua meets the budget at every comparison.
local raw_sort = table.sort
local function less(a, b)
  return a < b
end
function table.sort(t, comp)
  return raw_sort(t, comp or less)
end

-- Luau's move loops over the whole range in C, even over nils (2^31 steps on an empty table);
-- long ranges run in Lua.
local raw_move = table.move
local MOVE_IN_C = 4096
function table.move(a1, f, e, t, a2)
  if type(f) == "number" and type(e) == "number" and e - f < MOVE_IN_C then
    return raw_move(a1, f, e, t, a2)
  end
  if a2 == nil then
    a2 = a1
  end
  if type(a1) ~= "table" or type(a2) ~= "table" then
    return raw_move(a1, f, e, t, a2) -- its own argument errors
  end
  f, e, t = math.floor(f), math.floor(e), math.floor(t)
  if t > f and t <= e and a1 == a2 then
    for i = e - f, 0, -1 do
      rawset(a2, t + i, rawget(a1, f + i))
    end
  else
    for i = 0, e - f do
      rawset(a2, t + i, rawget(a1, f + i))
    end
  end
  return a2
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
