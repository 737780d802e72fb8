local function apiListener( evt )
  if evt.error then
    print(evt.error)
  else
    print(evt.result.user_id) -- result holds the user object
  end
end

core.users.login({username="tiny", password="abcd1234"}, apiListener)
