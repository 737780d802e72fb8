-- An API project: call it with `coronium call Demo <method> '<json>'` while `coronium serve
-- --projects examples/projects` runs. Each method gets the request's input table and scope.
local api = core.api()
local greeting = require("Demo.greeting")

-- The seed's create example, unchanged, inside a handler: the listener runs before
-- core.users.create returns, so the handler can answer with what it saw.
function api.signup(input, scope)
  local outcome

  local function apiListener( evt )
    if evt.error then
      print(evt.error)
    else
      print(evt.result) -- result holds the users id
    end
    outcome = evt
  end

  core.users.create({
    username=input.username,
    password=input.password
  }, apiListener)

  if outcome.error then
    return core.error(outcome.error, outcome.status)
  end
  return { user_id = outcome.result, scope = scope }
end

-- The seed's login example, the same way.
function api.login(input)
  local user, failure
  core.users.login({username=input.username, password=input.password}, function( evt )
    if evt.error then failure = evt else user = evt.result end
  end)
  if failure then
    return core.error(failure.error, failure.status)
  end
  return { user_id = user.user_id, login_count = user.login_count }
end

-- No database: the Lua and HTTP overhead alone.
function api.hello(input, scope)
  return { message = greeting.hello(input.name), scope = scope }
end

return api
