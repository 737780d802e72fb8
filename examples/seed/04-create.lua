local function apiListener( evt )
  if evt.error then
    print(evt.error)
  else
    print(evt.result) -- result holds the users id
  end
end

core.users.create({
  username="tiny", 
  password="abcd1234"
}, apiListener)
