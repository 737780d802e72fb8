-- An API project: call it with `coronium call Demo <method> '<json>'` while `coronium serve
-- --projects examples/projects` runs. Each method gets the request's input table and scope.
local api = core.api()
local greeting = require("Demo.greeting")

-- The seed's create example inside a handler: the listener runs before core.users.create
-- returns, so the handler answers with what the listener saw.
function api.signup(input, scope)
  local answer

  core.users.create({
    username=input.username,
    password=input.password
  }, function( evt )
    if evt.error then
      print(evt.error)
      answer = core.error(evt.error, evt.status)
    else
      print(evt.result) -- result holds the users id
      answer = { user_id = evt.result, scope = scope }
    end
  end)

  return answer
end

-- The seed's login example, the same way.
function api.login(input)
  local answer
  core.users.login({username=input.username, password=input.password}, function( evt )
    if evt.error then
      answer = core.error(evt.error, evt.status)
    else
      answer = { user_id = evt.result.user_id, login_count = evt.result.login_count }
    end
  end)
  return answer
end

-- No database: the Lua and HTTP overhead alone.
function api.hello(input, scope)
  return { message = greeting.hello(input.name), scope = scope }
end

return api
