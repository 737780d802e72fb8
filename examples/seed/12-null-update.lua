local function apiListener( evt )
  -- Filled in: the seed shows `...` here, which is not valid Lua; this body reports the outcome
  -- the way the update example does.
  if evt.error then print(evt.error) else print(evt.result.user_id) end
end

core.users.update({
  user_id = "<user_id>",
  update = {
    extra = {
      color = core.users.NULL --remove the `color` key
    }
  }
}, apiListener)
