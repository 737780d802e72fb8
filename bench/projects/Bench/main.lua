-- The benchmark's API project.
local api = core.api()

-- Lua + DB: one core.users.get per request.
function api.get(input)
  local user, err, status = core.users.get(input.user_id)
  if not user then
    return core.error(err, status)
  end
  return user
end

-- Lua + HTTP alone: no database.
function api.hello(input)
  return { hello = input.name or "world" }
end

-- Parks the request: for measuring memory per waiting request.
function api.park(input)
  core.sleep(tonumber(input.seconds) or 2)
  return true
end

return api
