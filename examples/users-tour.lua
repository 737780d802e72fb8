-- A tour of core.users on real ids: create, get, update, remove an extra key, log in, delete.
-- Run it with: coronium run examples/users-tour.lua
local name = "tour_" .. core.uuid():sub(1, 8)

local user_id, err, status = core.users.create({
  username = name,
  password = "abcd1234",
  email = name .. "@example.com",
  extra = { color = "Red", level = 1 },
})
if not user_id then
  error(core.sf("create failed: %s (%d)", err, status))
end
print("created", user_id)

core.users.get({ user_id = user_id }, function(evt)
  print("get", evt.result.username, evt.result.extra.color, evt.result.extra.level)
end)

-- The 2.x positional style: update(user_id, fields).
local user, update_err, update_status = core.users.update(user_id, { extra = { level = 2, badge = "gold" } })
if not user then
  error(core.sf("update failed: %s (%d)", update_err, update_status))
end
print("update", user.extra.color, user.extra.level, user.extra.badge)

core.users.update({ user_id = user_id, update = { extra = { color = core.users.NULL } } }, function(evt)
  print("null", evt.result.extra.color, evt.result.extra.level)
end)

core.users.login({ email = name .. "@example.com", password = "abcd1234" }, function(evt)
  print("login", evt.result.user_id == user_id, evt.result.login_count)
end)

print("delete", core.users.delete(user_id))
print("get after delete", core.users.get(user_id))
