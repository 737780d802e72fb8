-- core.json: encode and decode in Rust (src/lua/natives/json.rs), with Coronium's rules for
-- nulls, arrays and numbers (compat §6).
local JSON = ...
return { encode = JSON.encode, decode = JSON.decode }
