-- wrk script: the console's users search, signed in. The shell sets BENCH_COOKIE (a session
-- cookie) and BENCH_SCOPE; each request searches a random username prefix.
local cookie = os.getenv("BENCH_COOKIE")
local scope = os.getenv("BENCH_SCOPE")
errors = 0

function request()
  local path = string.format("/_coronium/admin/users?scope=%s&q=user%d", scope, math.random(1, 9999))
  return wrk.format("GET", path, { ["Cookie"] = cookie })
end

function response(status, headers, body)
  if status ~= 200 then
    errors = errors + 1
  end
end

function done(summary, latency, requests)
  local seconds = summary.duration / 1e6
  io.write(string.format(
    '{"requests":%d,"seconds":%.3f,"rps":%.1f,"p50_ms":%.3f,"p99_ms":%.3f,"socket_errors":%d,"error_answers":%d}\n',
    summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    errors))
end
