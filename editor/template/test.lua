-- A script for `coronium run`: it gets `core` against the server's database, no server needed.
--   coronium run projects/__NAME__/test.lua
-- It exercises core.users the way the project's handlers do, and cleans up after itself.
local name = "test-" .. string.sub(core.uuid(), 1, 8)
local password = "not-a-real-password"

local id, err = core.users.create({ username = name, password = password })
if not id then
	error("create: " .. tostring(err))
end

local user, get_err = core.users.get(id)
if not user then
	error("get: " .. tostring(get_err))
end
assert(user.username == name, "the username is kept")

local logged_in = core.users.login({ username = name, password = password })
assert(logged_in and logged_in.login_count == 1, "one login counted")

assert(core.users.delete(id) == 1, "the user is deleted")
print("ok: created, logged in and deleted " .. name)
