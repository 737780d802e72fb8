-- Library functions whose C implementation could outrun the CPU budget. Luau calls the budget's
-- interrupt at Lua calls and loops and inside the pattern matcher, not inside other C loops; these
-- wrappers keep every such loop short, in Lua, or in linear time. Run once per state by the
-- prelude, before the sandbox seals the libraries.
-- `TEXT` is the Rust half of the text functions (src/lua/natives/text.rs).
local core, TEXT = ...
local raw_find, raw_match, raw_gmatch, raw_gsub = string.find, string.match, string.gmatch, string.gsub
local find_plain = TEXT.find_plain
local SPECIALS = "[%^%$%*%+%?%.%(%)%[%]%%%-]"
-- Between two of the matcher's interrupts it may compare a whole literal run of the pattern.
local MAX_PATTERN = 64 * 1024

local function checked(pattern, name)
  if type(pattern) == "string" and #pattern > MAX_PATTERN then
    error("bad argument #2 to '" .. name .. "' (pattern longer than " .. MAX_PATTERN .. " bytes)", 3)
  end
  return pattern
end

-- A plain search (or a pattern without specials) in linear time: Luau's compares the needle at
-- every candidate position.
function string.find(s, pattern, init, plain)
  if plain or (type(pattern) == "string" and not raw_find(pattern, SPECIALS)) then
    return find_plain(s, pattern, init)
  end
  return raw_find(s, checked(pattern, "find"), init, plain)
end

function string.match(s, pattern, init)
  return raw_match(s, checked(pattern, "match"), init)
end

function string.gmatch(s, pattern)
  return raw_gmatch(s, checked(pattern, "gmatch"))
end

function string.gsub(s, pattern, repl, n)
  return raw_gsub(s, checked(pattern, "gsub"), repl, n)
end

-- Luau's split runs in C (2 s for 12 million pieces); this one in Rust looks at the budget.
string.split = TEXT.string_split

-- %q escapes byte by byte in C, about 0.1 s per MiB.
local raw_format = string.format
local MAX_QUOTED = 1024 * 1024
function string.format(fmt, ...)
  if type(fmt) == "string" and raw_find(fmt, "%q", 1, true) then
    for i = 1, select("#", ...) do
      local arg = select(i, ...)
      if type(arg) == "string" and #arg > MAX_QUOTED then
        error("bad argument #" .. (i + 1) .. " to 'format' (string longer than " .. MAX_QUOTED .. " bytes for %q)", 2)
      end
    end
  end
  return raw_format(fmt, ...)
end
core.sf = string.format

-- Luau's sort compares in C; a comparator in Lua meets the budget at every comparison.
local raw_sort = table.sort
local function less(a, b)
  return a < b
end
function table.sort(t, comp)
  return raw_sort(t, comp or less)
end

-- Luau's move loops over the whole range in C, even over nils (2^31 steps on an empty table);
-- long ranges run in Lua.
local raw_move = table.move
local MOVE_IN_C = 4096
function table.move(a1, f, e, t, a2)
  if type(f) == "number" and type(e) == "number" and e - f < MOVE_IN_C then
    return raw_move(a1, f, e, t, a2)
  end
  if a2 == nil then
    a2 = a1
  end
  if type(a1) ~= "table" or type(a2) ~= "table" then
    return raw_move(a1, f, e, t, a2) -- its own argument errors
  end
  f, e, t = math.floor(f), math.floor(e), math.floor(t)
  if t > f and t <= e and a1 == a2 then
    for i = e - f, 0, -1 do
      rawset(a2, t + i, rawget(a1, f + i))
    end
  else
    for i = 0, e - f do
      rawset(a2, t + i, rawget(a1, f + i))
    end
  end
  return a2
end
