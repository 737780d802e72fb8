-- core's small utilities that ported code uses (compat §6): uuid, md5, sleep, log, trim, split,
-- debug. Returns them by name; the prelude puts each into `core`.
-- `UTIL` and `TEXT` are the Rust halves (src/lua/natives/util.rs, text.rs); `kernel` what the
-- prelude shares (here: how to wait for the host).
local UTIL, kernel, TEXT = ...
local wait = kernel.wait
local native_trim, native_split = TEXT.trim, TEXT.split

local util = { uuid = UTIL.uuid, md5 = UTIL.md5 }

-- A log line names the project and action whose request wrote it.
function util.log(...)
  UTIL.log(kernel.project(), kernel.action(), ...)
end

function util.sleep(seconds)
  UTIL.sleep(seconds)
  wait()
end

-- Both in linear time, in Rust (a pattern-based trim is quadratic on long runs of spaces).
function util.trim(s)
  return native_trim(tostring(s))
end

-- split(s, sep): pieces between plain separators (empty pieces kept); without `sep`, words.
function util.split(s, sep)
  return native_split(tostring(s), sep)
end

-- core.debug(value): pretty-prints a value, tables nested and sorted by key.
local function dump(value, indent, seen, out)
  if type(value) ~= "table" then
    out[#out + 1] = type(value) == "string" and string.format("%q", value) or tostring(value)
    return
  end
  if seen[value] then
    out[#out + 1] = "<cycle>"
    return
  end
  seen[value] = true
  local keys = {}
  for k in pairs(value) do
    keys[#keys + 1] = k
  end
  table.sort(keys, function(a, b)
    if type(a) == type(b) and (type(a) == "number" or type(a) == "string") then
      return a < b
    end
    return type(a) < type(b)
  end)
  if #keys == 0 then
    out[#out + 1] = "{}"
  else
    out[#out + 1] = "{\n"
    for _, k in ipairs(keys) do
      local label = type(k) == "string" and k:match("^[%a_][%w_]*$") and k or "[" .. (type(k) == "string" and string.format("%q", k) or tostring(k)) .. "]"
      out[#out + 1] = indent .. "  " .. label .. " = "
      dump(value[k], indent .. "  ", seen, out)
      out[#out + 1] = ",\n"
    end
    out[#out + 1] = indent .. "}"
  end
  seen[value] = nil
end

function util.debug(value)
  local out = {}
  dump(value, "", {}, out)
  UTIL.write(table.concat(out))
end


return util
