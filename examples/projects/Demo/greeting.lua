-- A module of the Demo project, loaded with require("Demo.greeting").
local greeting = {}

function greeting.hello(name)
  return core.sf("Hello, %s!", name or "player")
end

return greeting
