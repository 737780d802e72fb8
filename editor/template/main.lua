--!strict
-- The __NAME__ API project. Each function in `api` is an action clients can call:
--   coronium call __NAME__ hello '{"name": "you"}'
-- Save a change and the server loads it on the next request; `coronium check` finds syntax
-- errors without a server.
local api = core.api()

-- Greets whoever asks. `input` is the table the client sent; `scope` is the client's app scope.
function api.hello(input, scope)
	local name = input.name or "stranger"
	print("hello asked by " .. tostring(name)) -- print goes to the server's log
	return { greeting = "Hello, " .. tostring(name) .. "!", scope = scope }
end

-- A user's name and login count. core.users functions without a listener answer the result,
-- or nil, an error message and a Coronium status code.
function api.profile(input, scope)
	local user, err, status = core.users.get(input.user_id)
	if not user then
		return core.error(err, status)
	end
	return { username = user.username, logins = user.login_count }
end

return api
