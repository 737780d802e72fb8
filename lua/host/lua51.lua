-- Lua 5.1 names that Coronium-era code uses, where Luau lacks them. Run once per state by the
-- prelude, before the sandbox seals the libraries.
unpack = unpack or table.unpack
math.mod = math.mod or math.fmod
math.pow = math.pow or function(x, y) return x ^ y end
table.getn = table.getn or function(t) return #t end
table.maxn = table.maxn or function(t)
  local max = 0
  for k in pairs(t) do
    if type(k) == "number" and k > max then
      max = k
    end
  end
  return max
end
string.gfind = string.gfind or string.gmatch
