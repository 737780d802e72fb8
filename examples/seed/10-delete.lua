local function apiListener( evt )
  if evt.error then
    print(evt.error)
  else
    print(evt.result) -- 1
  end
end

core.users.delete({user_id="289bc36e-0df7-44df-99b1-a6543c6f45eb"}, apiListener)
