//! Lua values ↔ JSON. JSON null ↔ nil (and `core.NULL`), integral numbers encode as JSON integers,
//! an empty table encodes as `{}` unless it carries the array metatable (as decoded `[]` do), and
//! nesting is limited so a cyclic table is an error, not a stack overflow.

use std::borrow::Cow;
use std::cell::Cell;
use std::ffi::c_int;

use mlua::{Lua, LuaSerdeExt, Value, ffi};

use super::budget::{Meter, OverBudget, Paced};
use serde::Serialize;
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde_json::{Number, Value as Json};

/// Deepest nesting converted either way.
pub const MAX_DEPTH: usize = 64;
/// Largest magnitude a double holds exactly; integral numbers within it encode as integers.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_992.0;

/// What to do with values JSON cannot hold (functions, threads, userdata).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Unencodable {
    /// Fail the conversion (`core.json.encode`).
    Fail,
    /// Replace with an object naming the type, so domain validation refuses it with its own
    /// message (an `extra` holding a function gets 801, not a conversion error).
    Mark,
}

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("cannot encode a {0} value as JSON")]
    Unsupported(&'static str),
    #[error("cannot encode {0} as JSON")]
    NotFinite(f64),
    #[error("table keys must be strings or numbers, found a {0}")]
    BadKey(&'static str),
    #[error("tables nested deeper than {MAX_DEPTH} levels (or a table that contains itself)")]
    TooDeep,
    #[error("{0}")]
    Json(String),
    #[error(transparent)]
    OverBudget(#[from] OverBudget),
    #[error(transparent)]
    Lua(#[from] mlua::Error),
}

/// Runs `f` with the state's memory limit lifted, for conversions whose size the host already
/// bounds (a request body, a user record, a handler's result). With a limit set, mlua wraps every
/// allocating call in a protected call: measured with callgrind, ~2,000 instructions per string
/// or field, most of a Lua handler's conversion cost. Memory used meanwhile still counts, so the
/// next allocation past the limit fails as before; the overshoot is one conversion at most.
/// Never wrap Lua code or a conversion a script sizes (`core.json.decode`) in this.
pub fn host_sized<R>(lua: &Lua, f: impl FnOnce() -> R) -> R {
    struct Restore<'a>(&'a Lua, usize);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            if self.1 != 0 {
                let _ = self.0.set_memory_limit(self.1);
            }
        }
    }
    let _restore = Restore(lua, lua.set_memory_limit(0).unwrap_or(0));
    f()
}

/// Lua → JSON, written by `sink` through serde (`serde_json::to_string`, `to_raw_value`,
/// `to_value`). The walk reads the Lua stack directly: going through mlua's `Value`s costs a
/// registry reference per key and value, measured with callgrind at ~30,000 instructions for a
/// user record (most of a Lua handler's per-request work). With a `meter`, the walk looks at
/// the running request's CPU budget as it goes (a script sizes the table).
pub fn encode<T>(
    lua: &Lua,
    value: &Value,
    mode: Unencodable,
    meter: Option<&Meter>,
    sink: impl FnOnce(&StackValue<'_>) -> serde_json::Result<T>,
) -> Result<T, ConvertError> {
    let error = Cell::new(None);
    let paced = Paced::new(meter);
    let mut written = None;
    // SAFETY: the closure runs in a protected call with `value` at 1 and the array metatable
    // at 2. The walk only reads; the one Lua call that may allocate is `lua_checkstack`, and its
    // error (only at the memory limit) is caught by the protected call, at worst leaking what the
    // sink had written so far.
    unsafe {
        lua.exec_raw::<()>((value, lua.array_metatable()), |state| {
            let walker = Walker {
                state,
                array_metatable: 2,
                mode,
                error: &error,
                paced: &paced,
            };
            written = Some(sink(&StackValue {
                walker: &walker,
                index: 1,
                depth: 0,
            }));
            ffi::lua_settop(state, 0);
        })?;
    }
    if let Some(e) = error.take() {
        return Err(e);
    }
    match written {
        Some(Ok(out)) => Ok(out),
        Some(Err(e)) => Err(ConvertError::Json(e.to_string())),
        None => Err(ConvertError::Json("the conversion did not run".into())),
    }
}

/// Lua → `serde_json::Value`.
pub fn lua_to_json(
    lua: &Lua,
    value: &Value,
    mode: Unencodable,
    meter: Option<&Meter>,
) -> Result<Json, ConvertError> {
    encode(lua, value, mode, meter, |v| serde_json::to_value(v))
}

/// How an integral Lua number within a double's exact range encodes: as a JSON integer.
enum NumberForm {
    Integer(i64),
    Float(f64),
}

fn number(n: f64) -> Result<NumberForm, ConvertError> {
    if !n.is_finite() {
        return Err(ConvertError::NotFinite(n));
    }
    if n.fract() == 0.0 && n.abs() <= MAX_SAFE_INTEGER {
        return Ok(NumberForm::Integer(n as i64));
    }
    Ok(NumberForm::Float(n))
}

struct Walker<'a> {
    state: *mut ffi::lua_State,
    /// Stack index of mlua's array metatable (what marks an empty table as `[]`).
    array_metatable: c_int,
    mode: Unencodable,
    /// Why the walk stopped, when the reason is ours rather than the serializer's.
    error: &'a Cell<Option<ConvertError>>,
    /// Each table, key and element is a step against the budget.
    paced: &'a Paced<'a>,
}

impl Walker<'_> {
    fn fail<E: serde::ser::Error>(&self, error: ConvertError) -> E {
        let message = error.to_string();
        self.error.set(Some(error));
        E::custom(message)
    }

    /// Counts a visit; fails once the budget is spent.
    fn visit<E: serde::ser::Error>(&self) -> Result<(), E> {
        self.paced.step().map_err(|e| self.fail(e.into()))
    }
}

/// The Lua value at a stack slot, serializable while its walk lasts.
pub struct StackValue<'a> {
    walker: &'a Walker<'a>,
    index: c_int,
    depth: usize,
}

/// mlua's names for types JSON cannot hold.
fn type_name(lua_type: c_int) -> &'static str {
    match lua_type {
        ffi::LUA_TNIL => "nil",
        ffi::LUA_TBOOLEAN => "boolean",
        ffi::LUA_TLIGHTUSERDATA => "lightuserdata",
        ffi::LUA_TNUMBER => "number",
        ffi::LUA_TINTEGER => "integer",
        ffi::LUA_TVECTOR => "vector",
        ffi::LUA_TSTRING => "string",
        ffi::LUA_TTABLE => "table",
        ffi::LUA_TFUNCTION => "function",
        ffi::LUA_TUSERDATA => "userdata",
        ffi::LUA_TTHREAD => "thread",
        ffi::LUA_TBUFFER => "buffer",
        _ => "other",
    }
}

/// The bytes of the string at `index` (which must be a string: `lua_tolstring` converts numbers
/// in place, which would break a table walk).
unsafe fn string_at<'s>(state: *mut ffi::lua_State, index: c_int) -> Cow<'s, str> {
    let mut len = 0usize;
    let ptr = unsafe { ffi::lua_tolstring(state, index, &mut len) };
    let bytes = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
    String::from_utf8_lossy(bytes)
}

/// The 1-based array position `index` holds as a key, if it is one within `1..=len`.
unsafe fn sequence_position(state: *mut ffi::lua_State, index: c_int, len: usize) -> Option<usize> {
    let n = match unsafe { ffi::lua_type(state, index) } {
        ffi::LUA_TNUMBER => unsafe { ffi::lua_tonumberx(state, index, std::ptr::null_mut()) },
        ffi::LUA_TINTEGER => unsafe {
            ffi::lua_tointeger64(state, index, std::ptr::null_mut()) as f64
        },
        _ => return None,
    };
    (n.fract() == 0.0 && n >= 1.0 && n <= len as f64).then_some(n as usize)
}

impl Serialize for StackValue<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let walker = self.walker;
        let state = walker.state;
        let index = self.index;
        // SAFETY: `index` is a live slot of the walk's stack frame.
        unsafe {
            match ffi::lua_type(state, index) {
                ffi::LUA_TNIL => serializer.serialize_unit(),
                ffi::LUA_TBOOLEAN => {
                    serializer.serialize_bool(ffi::lua_toboolean(state, index) != 0)
                }
                ffi::LUA_TNUMBER => {
                    match number(ffi::lua_tonumberx(state, index, std::ptr::null_mut())) {
                        Ok(NumberForm::Integer(i)) => serializer.serialize_i64(i),
                        Ok(NumberForm::Float(f)) => serializer.serialize_f64(f),
                        Err(e) => Err(walker.fail(e)),
                    }
                }
                ffi::LUA_TINTEGER => serializer.serialize_i64(ffi::lua_tointeger64(
                    state,
                    index,
                    std::ptr::null_mut(),
                )),
                ffi::LUA_TSTRING => serializer.serialize_str(&string_at(state, index)),
                ffi::LUA_TTABLE => self.serialize_table(serializer),
                ffi::LUA_TLIGHTUSERDATA if ffi::lua_touserdata(state, index).is_null() => {
                    serializer.serialize_unit()
                }
                other => match walker.mode {
                    Unencodable::Fail => {
                        Err(walker.fail(ConvertError::Unsupported(type_name(other))))
                    }
                    Unencodable::Mark => {
                        let mut marker = serializer.serialize_map(Some(1))?;
                        marker.serialize_entry("unencodable", type_name(other))?;
                        marker.end()
                    }
                },
            }
        }
    }
}

impl StackValue<'_> {
    /// A sequence `1..=len` (or an empty table carrying the array metatable) becomes an array,
    /// anything else an object.
    unsafe fn serialize_table<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let walker = self.walker;
        let state = walker.state;
        let table = self.index;
        walker.visit()?;
        if self.depth >= MAX_DEPTH || unsafe { ffi::lua_checkstack(state, 4) } == 0 {
            return Err(walker.fail(ConvertError::TooDeep));
        }
        let child = |index| StackValue {
            walker,
            index,
            depth: self.depth + 1,
        };
        let len = unsafe { ffi::lua_objlen(state, table) };
        let is_array = unsafe {
            if len > 0 {
                // Distinct keys, as many as the length, each within 1..=len: exactly 1..=len.
                let mut count = 0usize;
                let mut sequence = true;
                let mut iter = 0;
                loop {
                    iter = ffi::lua_rawiter(state, table, iter);
                    if iter < 0 {
                        break;
                    }
                    count += 1;
                    sequence = sequence && sequence_position(state, -2, len).is_some();
                    ffi::lua_pop(state, 2);
                }
                sequence && count == len
            } else {
                let empty = ffi::lua_rawiter(state, table, 0) < 0;
                if !empty {
                    ffi::lua_pop(state, 2);
                }
                empty && ffi::lua_getmetatable(state, table) != 0 && {
                    let marked = ffi::lua_rawequal(state, -1, walker.array_metatable) != 0;
                    ffi::lua_pop(state, 1);
                    marked
                }
            }
        };
        if is_array {
            let mut seq = serializer.serialize_seq(Some(len))?;
            for position in 1..=len {
                walker.visit()?;
                unsafe { ffi::lua_rawgeti_(state, table, position as c_int) };
                let top = unsafe { ffi::lua_gettop(state) };
                let written = seq.serialize_element(&child(top));
                unsafe { ffi::lua_pop(state, 1) };
                written?;
            }
            return seq.end();
        }
        // Keys in sorted order, as serde_json's own maps write them (output a client can
        // compare or cache): first each key's text and where the walk found it, then the entries
        // again from those positions.
        let mut keys: Vec<(Cow<'_, str>, c_int)> = Vec::new();
        let mut iter = 0;
        loop {
            let before = iter;
            iter = unsafe { ffi::lua_rawiter(state, table, iter) };
            if iter < 0 {
                break;
            }
            let key = unsafe { key_text(state, -2) };
            unsafe { ffi::lua_pop(state, 2) };
            keys.push((key.map_err(|e| walker.fail(e))?, before));
            walker.visit()?;
        }
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        let mut map = serializer.serialize_map(Some(keys.len()))?;
        for (i, (key, before)) in keys.iter().enumerate() {
            // Two keys with the same text (1 and "1"): the one the walk met last wins.
            if keys.get(i + 1).is_some_and(|next| next.0 == *key) {
                continue;
            }
            unsafe { ffi::lua_rawiter(state, table, *before) };
            let top = unsafe { ffi::lua_gettop(state) };
            let written = map.serialize_entry(key, &child(top));
            unsafe { ffi::lua_pop(state, 2) };
            written?;
        }
        map.end()
    }
}

/// A table key as JSON object key text.
unsafe fn key_text<'s>(
    state: *mut ffi::lua_State,
    key: c_int,
) -> Result<Cow<'s, str>, ConvertError> {
    Ok(match unsafe { ffi::lua_type(state, key) } {
        ffi::LUA_TSTRING => unsafe { string_at(state, key) },
        ffi::LUA_TNUMBER => {
            match number(unsafe { ffi::lua_tonumberx(state, key, std::ptr::null_mut()) })? {
                NumberForm::Integer(i) => Cow::Owned(i.to_string()),
                NumberForm::Float(f) => {
                    Cow::Owned(Number::from_f64(f).map_or_else(|| f.to_string(), |n| n.to_string()))
                }
            }
        }
        ffi::LUA_TINTEGER => Cow::Owned(
            unsafe { ffi::lua_tointeger64(state, key, std::ptr::null_mut()) }.to_string(),
        ),
        other => return Err(ConvertError::BadKey(type_name(other))),
    })
}

/// JSON → Lua (see [`super::to_lua`]): arrays get the array metatable so that they encode back
/// as arrays, even empty; null is nil.
pub fn json_to_lua(lua: &Lua, value: &Json) -> mlua::Result<Value> {
    super::to_lua::to_lua(lua, value)
}
