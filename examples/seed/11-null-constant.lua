-- Filled in: the seed shows the bare expression `core.users.NULL`, which is not a statement in
-- Lua; printing it is the smallest change that runs.
print(core.users.NULL)
