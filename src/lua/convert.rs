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

/// The largest conversion [`host_sized_up_to`] runs with the limit lifted: past it the
/// overshoot would matter, and the protected path's cost is small beside the data's own.
pub const LIFT_AT_MOST: usize = 256 * 1024;

/// [`host_sized`] for host data of about `bytes` (as JSON): the limit is lifted only when that
/// is small, so a large record or result converts under the state's limit like script data
/// (and fails with a memory error rather than filling the state past it).
pub fn host_sized_up_to<R>(lua: &Lua, bytes: usize, f: impl FnOnce() -> R) -> R {
    if bytes <= LIFT_AT_MOST {
        host_sized(lua, f)
    } else {
        f()
    }
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
    // at 2. The `StackValue` handed to `sink` borrows the walker, a local of the closure, so
    // neither outlives the call. The walk only reads; the one Lua call that may allocate is
    // `lua_checkstack`, whose error (only at the memory limit) this Luau build raises as a C++
    // exception: it unwinds through the closure's frames (mlua's `C-unwind` callbacks; Rust runs
    // their destructors) to the protected call. The unit tests raise errors mid-conversion and
    // keep using the state.
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
///
/// # Safety
///
/// `state` is a live Lua state on this thread, `index` a valid slot holding a string, and the
/// string stays reachable (on the stack, or a key or value of a table on the stack) for as long
/// as the returned text is used: the text borrows the string's bytes. Luau's collector never
/// moves objects, so reachable is enough.
unsafe fn string_at<'s>(state: *mut ffi::lua_State, index: c_int) -> Cow<'s, str> {
    let mut len = 0usize;
    // SAFETY: the caller guarantees a string at `index`: no conversion, no allocation.
    let ptr = unsafe { ffi::lua_tolstring(state, index, &mut len) };
    // SAFETY: Lua hands back `len` bytes at `ptr`, alive while the string is (see above).
    let bytes = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
    String::from_utf8_lossy(bytes)
}

/// The 1-based array position `index` holds as a key, if it is one within `1..=len`.
///
/// # Safety
///
/// `state` is a live Lua state on this thread and `index` a valid slot.
unsafe fn sequence_position(state: *mut ffi::lua_State, index: c_int, len: usize) -> Option<usize> {
    // SAFETY: reading a valid slot's type and number neither allocates nor raises.
    let n = unsafe {
        match ffi::lua_type(state, index) {
            ffi::LUA_TNUMBER => ffi::lua_tonumberx(state, index, std::ptr::null_mut()),
            ffi::LUA_TINTEGER => ffi::lua_tointeger64(state, index, std::ptr::null_mut()) as f64,
            _ => return None,
        }
    };
    (n.fract() == 0.0 && n >= 1.0 && n <= len as f64).then_some(n as usize)
}

impl Serialize for StackValue<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let walker = self.walker;
        let state = walker.state;
        let index = self.index;
        // SAFETY: a `StackValue` exists only inside `encode`'s protected call (its lifetime is
        // the walk's), so `state` is the running stack and `index` a live slot of it. Reading a
        // slot neither allocates nor raises; `serialize_table` keeps its own rules.
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
    ///
    /// # Safety
    ///
    /// The value at `self.index` is a table, and the walk's stack is the running one (as for
    /// every `StackValue`). Every push below is popped before returning, on every path.
    unsafe fn serialize_table<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let walker = self.walker;
        let state = walker.state;
        let table = self.index;
        walker.visit()?;
        // SAFETY: growing the stack may allocate; a failure at the memory limit raises a Lua
        // error, which the protected call around the walk catches (see `encode`).
        if self.depth >= MAX_DEPTH || unsafe { ffi::lua_checkstack(state, 4) } == 0 {
            return Err(walker.fail(ConvertError::TooDeep));
        }
        let child = |index| StackValue {
            walker,
            index,
            depth: self.depth + 1,
        };
        // SAFETY: `table` is a table slot; its length is read without metamethods.
        let len = unsafe { ffi::lua_objlen(state, table) };
        // SAFETY: `lua_rawiter` pushes a key and a value (2 slots: `lua_checkstack` above made
        // room for 4) and each is popped before the next step; `lua_getmetatable` pushes one
        // value only when it returns non-zero, and it is popped. No metamethod runs.
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
                // SAFETY: one raw read pushes one value (room made above); it is popped below
                // whatever the element's serialization returned.
                let top = unsafe {
                    ffi::lua_rawgeti_(state, table, position as c_int);
                    ffi::lua_gettop(state)
                };
                let written = seq.serialize_element(&child(top));
                // SAFETY: pops the value pushed above.
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
            // SAFETY: pushes a key and a value when it returns a position, none at the end.
            iter = unsafe { ffi::lua_rawiter(state, table, iter) };
            if iter < 0 {
                break;
            }
            // SAFETY: the key is at -2; its text may borrow the key string, which the table
            // keeps reachable (it stays on the stack for the whole walk, unchanged).
            let key = unsafe { key_text(state, -2) };
            // SAFETY: pops the key and value `lua_rawiter` pushed.
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
            // SAFETY: `before` is a position this walk got from `lua_rawiter` on the same,
            // unchanged table, so the step pushes that entry's key and value again.
            let top = unsafe {
                ffi::lua_rawiter(state, table, *before);
                ffi::lua_gettop(state)
            };
            let written = map.serialize_entry(key, &child(top));
            // SAFETY: pops the key and value pushed above.
            unsafe { ffi::lua_pop(state, 2) };
            written?;
        }
        map.end()
    }
}

/// A table key as JSON object key text.
///
/// # Safety
///
/// As for [`string_at`]: a live state on this thread, a valid slot `key`, and a key string that
/// stays reachable while the text is used.
unsafe fn key_text<'s>(
    state: *mut ffi::lua_State,
    key: c_int,
) -> Result<Cow<'s, str>, ConvertError> {
    // SAFETY: reading a valid slot's type neither allocates nor raises.
    Ok(match unsafe { ffi::lua_type(state, key) } {
        // SAFETY: a string slot, kept reachable by the caller.
        ffi::LUA_TSTRING => unsafe { string_at(state, key) },
        ffi::LUA_TNUMBER => {
            // SAFETY: a number slot: read without conversion in place.
            match number(unsafe { ffi::lua_tonumberx(state, key, std::ptr::null_mut()) })? {
                NumberForm::Integer(i) => Cow::Owned(i.to_string()),
                NumberForm::Float(f) => {
                    Cow::Owned(Number::from_f64(f).map_or_else(|| f.to_string(), |n| n.to_string()))
                }
            }
        }
        ffi::LUA_TINTEGER => Cow::Owned(
            // SAFETY: an integer slot: read without conversion in place.
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

#[cfg(test)]
mod tests {
    use mlua::{Lua, Table, Value};
    use proptest::prelude::*;
    use serde_json::{Value as Json, json};

    use super::*;
    use crate::lua::budget::Meter;
    use crate::lua::to_lua;

    fn state() -> Lua {
        crate::lua::fuzzing::new_state()
    }

    /// The state still works after a conversion, whatever the conversion did.
    fn assert_usable(lua: &Lua) {
        let sum: i64 = lua
            .load("local t = {} for i = 1, 100 do t[i] = i end return #t")
            .eval()
            .unwrap();
        assert_eq!(sum, 100);
        let back = lua_to_json(
            lua,
            &Value::Table(lua.create_table().unwrap()),
            Unencodable::Fail,
            None,
        );
        assert_eq!(back.unwrap(), json!({}));
    }

    /// JSON as it comes back from Lua, by the documented rules: integral numbers within a
    /// double's exact range are integers, object keys sorted (serde_json's maps are).
    fn normalized(value: &Json) -> Json {
        match value {
            Json::Number(n) => match n.as_f64() {
                Some(f) if f.fract() == 0.0 && f.abs() <= MAX_SAFE_INTEGER => json!(f as i64),
                Some(f) => json!(f),
                None => value.clone(),
            },
            Json::Array(items) => Json::Array(items.iter().map(normalized).collect()),
            Json::Object(map) => Json::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), normalized(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// JSON that Lua holds without loss: no null inside arrays or objects (nil is no element and
    /// no key), numbers a double holds.
    fn lossless_json() -> impl Strategy<Value = Json> {
        let leaf = prop_oneof![
            any::<bool>().prop_map(Json::from),
            (-(1i64 << 53)..(1i64 << 53)).prop_map(Json::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Json::from),
            any::<String>().prop_map(Json::from),
        ];
        leaf.prop_recursive(6, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Json::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..8)
                    .prop_map(|map| Json::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn json_through_lua_comes_back_the_same(value in lossless_json()) {
            let lua = state();
            let in_lua = to_lua::to_lua(&lua, &value).unwrap();
            let back = lua_to_json(&lua, &in_lua, Unencodable::Fail, None).unwrap();
            prop_assert_eq!(normalized(&back), normalized(&value));
            let text = serde_json::to_vec(&value).unwrap();
            let decoded = to_lua::json_text_to_lua(&lua, &text, &Meter::default()).unwrap();
            let again = lua_to_json(&lua, &decoded, Unencodable::Fail, None).unwrap();
            prop_assert_eq!(normalized(&again), normalized(&value));
        }

        #[test]
        fn any_lua_table_encodes_or_fails_cleanly(shape in table_shape()) {
            let lua = state();
            let table = build(&lua, &shape);
            for mode in [Unencodable::Fail, Unencodable::Mark] {
                match lua_to_json(&lua, &Value::Table(table.clone()), mode, None) {
                    Ok(json) => prop_assert!(serde_json::to_string(&json).is_ok()),
                    Err(e) => prop_assert!(!e.to_string().is_empty()),
                }
            }
            assert_usable(&lua);
        }
    }

    /// A Lua table to build: keys and values of every kind JSON can and cannot hold.
    #[derive(Debug, Clone)]
    enum Shape {
        Number(f64),
        Integer(i64),
        Text(String),
        Bool(bool),
        Function,
        Table(Vec<(Shape, Shape)>),
        /// The table being built itself: a cycle.
        Itself,
    }

    fn table_shape() -> impl Strategy<Value = Vec<(Shape, Shape)>> {
        let leaf = prop_oneof![
            prop_oneof![
                Just(f64::NAN),
                Just(f64::INFINITY),
                Just(f64::NEG_INFINITY),
                Just(1e300),
                Just(-0.0),
                any::<f64>(),
                (1u32..6).prop_map(f64::from),
            ]
            .prop_map(Shape::Number),
            prop_oneof![Just(i64::MAX), Just(i64::MIN), any::<i64>()].prop_map(Shape::Integer),
            any::<String>().prop_map(Shape::Text),
            any::<bool>().prop_map(Shape::Bool),
            Just(Shape::Function),
            Just(Shape::Itself),
        ];
        let shape = leaf.prop_recursive(4, 48, 6, |inner| {
            prop::collection::vec((inner.clone(), inner), 0..6).prop_map(Shape::Table)
        });
        prop::collection::vec((shape.clone(), shape), 0..8)
    }

    fn build(lua: &Lua, entries: &[(Shape, Shape)]) -> Table {
        let table = lua.create_table().unwrap();
        fill(lua, &table, &table, entries);
        table
    }

    fn fill(lua: &Lua, root: &Table, table: &Table, entries: &[(Shape, Shape)]) {
        for (key, value) in entries {
            let (key, value) = (value_of(lua, root, key), value_of(lua, root, value));
            // NaN and nil keys are refused by Lua itself: not what is tested here.
            let _ = table.raw_set(key, value);
        }
    }

    fn value_of(lua: &Lua, root: &Table, shape: &Shape) -> Value {
        match shape {
            Shape::Number(n) => Value::Number(*n),
            Shape::Integer(i) => Value::Integer(*i),
            Shape::Text(s) => Value::String(lua.create_string(s).unwrap()),
            Shape::Bool(b) => Value::Boolean(*b),
            Shape::Function => Value::Function(lua.create_function(|_, ()| Ok(())).unwrap()),
            Shape::Itself => Value::Table(root.clone()),
            Shape::Table(entries) => {
                let table = lua.create_table().unwrap();
                fill(lua, root, &table, entries);
                Value::Table(table)
            }
        }
    }

    #[test]
    fn cycles_and_depth_fail_with_their_own_error() {
        let lua = state();
        let cyclic: Table = lua.load("local t = {} t.self = t return t").eval().unwrap();
        let err = lua_to_json(&lua, &Value::Table(cyclic), Unencodable::Fail, None).unwrap_err();
        assert!(matches!(err, ConvertError::TooDeep), "{err}");
        let deep: Table = lua
            .load("local t = {} local top = t for i = 1, 200 do t.x = {} t = t.x end return top")
            .eval()
            .unwrap();
        assert!(matches!(
            lua_to_json(&lua, &Value::Table(deep), Unencodable::Fail, None),
            Err(ConvertError::TooDeep)
        ));
        assert_usable(&lua);
    }

    /// A Lua error raised inside a conversion (out of memory while pushing strings) unwinds to
    /// the protected call; the state goes on working, again and again.
    #[test]
    fn an_error_raised_mid_conversion_leaves_the_state_usable() {
        let lua = state();
        let strings: Vec<String> = (0..20_000).map(|i| format!("{i:0>64}")).collect();
        let text = serde_json::to_vec(&strings).unwrap();
        for _ in 0..20 {
            lua.gc_collect().unwrap();
            lua.set_memory_limit(lua.used_memory() + 256 * 1024)
                .unwrap();
            let pushed = to_lua::json_text_to_lua(&lua, &text, &Meter::default());
            assert!(
                matches!(
                    pushed,
                    Err(to_lua::Pushed::Lua(mlua::Error::MemoryError(_)))
                ),
                "{pushed:?}"
            );
            lua.set_memory_limit(256 << 20).unwrap();
            assert_usable(&lua);
        }
        // And with room, the same text converts.
        let value = to_lua::json_text_to_lua(&lua, &text, &Meter::default()).unwrap();
        let back = lua_to_json(&lua, &value, Unencodable::Fail, None).unwrap();
        assert_eq!(back, json!(strings));
    }
}
