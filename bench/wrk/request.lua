-- wrk script: signed Coronium requests. The shell sets BENCH_PROJECT, BENCH_ACTION, BENCH_TIME,
-- BENCH_AUTH (headers from `coronium sign`), BENCH_KIND (what body to send) and BENCH_USERS.
local project = os.getenv("BENCH_PROJECT")
local action = os.getenv("BENCH_ACTION")
local kind = os.getenv("BENCH_KIND")
local users = tonumber(os.getenv("BENCH_USERS") or "10000")
local password = "e19d5cd5af0378da05f63f891c7467af" -- md5_hex("abcd1234")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Project-Id"] = project
wrk.headers["X-Action"] = action
wrk.headers["X-Scope"] = "default"
wrk.headers["X-Request-Time"] = os.getenv("BENCH_TIME")
wrk.headers["X-Request-Auth"] = os.getenv("BENCH_AUTH")

local counter = 0
local threads = {}
-- Globals of each thread's own Lua state (set in setup, read back in done).
thread_tag = "main"
errors = 0

function setup(thread)
  thread:set("thread_tag", tostring(#threads + 1) .. "_" .. tostring(math.random(1, 1e9)))
  table.insert(threads, thread)
end

-- The seeded users' ids are derived from their number (see bench/run).
local function user_id(n)
  return string.format("00000000-0000-4000-8000-%012x", n)
end

local bodies = {
  get = function()
    return string.format('{"user_id":"%s"}', user_id(math.random(1, users)))
  end,
  update = function()
    return string.format('{"user_id":"%s","update":{"extra":{"n":%d}}}',
      user_id(math.random(1, users)), math.random(1, 1e6))
  end,
  login = function()
    return string.format('{"username":"user%d","password":"%s"}', math.random(1, users), password)
  end,
  create = function()
    counter = counter + 1
    return string.format('{"username":"new_%s_%d","password":"%s"}', thread_tag, counter, password)
  end,
  hello = function()
    return '{"name":"bench"}'
  end,
  opened = function()
    return string.format(
      '{"name":"Bench","platform":"ios","platform_ver":"17.1","version":"1.%d","model":"iPhone",'
        .. '"manufacturer":"Apple","screen_w":1170,"screen_h":2532,"device_id":"device-%d"}',
      math.random(0, 9), math.random(1, users))
  end,
  park = function()
    return '{"seconds":2}'
  end,
}
local body = bodies[kind]

-- Requests are written ahead, in each thread's init, wherever the body need not be unique
-- (everything but create): the load generator shares the server's cores, and formatting a
-- request costs wrk about as much CPU as some of the rows cost the server.
local PREPARED = 10000
local prepared = nil
local next_prepared = 0

function init(args)
  if kind == "create" then
    return
  end
  prepared = {}
  for i = 1, PREPARED do
    prepared[i] = wrk.format(nil, "/", nil, body())
  end
end

function request()
  if prepared then
    next_prepared = next_prepared % PREPARED + 1
    return prepared[next_prepared]
  end
  return wrk.format(nil, "/", nil, body())
end

function response(status, headers, body)
  if status ~= 200 or body:find('"error"', 1, true) then
    errors = errors + 1
  end
end

function done(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local answered_errors = 0
  for _, thread in ipairs(threads) do
    answered_errors = answered_errors + (thread:get("errors") or 0)
  end
  io.write(string.format(
    '{"requests":%d,"seconds":%.3f,"rps":%.1f,"p50_ms":%.3f,"p99_ms":%.3f,"socket_errors":%d,"error_answers":%d}\n',
    summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    answered_errors))
end
