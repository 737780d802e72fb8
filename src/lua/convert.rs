//! Lua values ↔ JSON. JSON null ↔ nil (and `core.NULL`), integral numbers encode as JSON integers,
//! an empty table encodes as `{}` unless it carries the array metatable (as decoded `[]` do), and
//! nesting is limited so a cyclic table is an error, not a stack overflow.

use mlua::{Lua, LuaSerdeExt, Table, Value};
use serde_json::{Map, Number, Value as Json};

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

pub fn lua_to_json(lua: &Lua, value: &Value, mode: Unencodable) -> Result<Json, ConvertError> {
    to_json(lua, value, mode, 0)
}

fn number(n: f64) -> Result<Json, ConvertError> {
    if !n.is_finite() {
        return Err(ConvertError::NotFinite(n));
    }
    if n.fract() == 0.0 && n.abs() <= MAX_SAFE_INTEGER {
        return Ok(Json::Number(Number::from(n as i64)));
    }
    Ok(Number::from_f64(n).map_or(Json::Null, Json::Number))
}

fn to_json(
    lua: &Lua,
    value: &Value,
    mode: Unencodable,
    depth: usize,
) -> Result<Json, ConvertError> {
    Ok(match value {
        Value::Nil => Json::Null,
        Value::LightUserData(ud) if ud.0.is_null() => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Integer(i) => Json::Number(Number::from(*i)),
        Value::Number(n) => number(*n)?,
        Value::String(s) => Json::String(s.to_string_lossy()),
        Value::Table(t) => {
            if depth >= MAX_DEPTH {
                return Err(ConvertError::TooDeep);
            }
            table_to_json(lua, t, mode, depth + 1)?
        }
        other => {
            let name = other.type_name();
            match mode {
                Unencodable::Fail => return Err(ConvertError::Unsupported(name)),
                Unencodable::Mark => {
                    let mut marker = Map::new();
                    marker.insert("unencodable".into(), Json::String(name.into()));
                    Json::Object(marker)
                }
            }
        }
    })
}

fn table_to_json(
    lua: &Lua,
    table: &Table,
    mode: Unencodable,
    depth: usize,
) -> Result<Json, ConvertError> {
    // One pass over the table (each step through mlua costs far more than the Vec).
    let mut entries = Vec::new();
    table.for_each(|key: Value, value: Value| {
        entries.push((key, value));
        Ok(())
    })?;
    let len = table.raw_len();
    let index = |key: &Value| match key {
        Value::Integer(i) if *i >= 1 && (*i as usize) <= len => Some(*i as usize),
        Value::Number(n) if n.fract() == 0.0 && *n >= 1.0 && *n <= len as f64 => Some(*n as usize),
        _ => None,
    };
    // Distinct keys, as many as the length, each within 1..=len: exactly the sequence 1..=len.
    let sequence =
        len > 0 && entries.len() == len && entries.iter().all(|(k, _)| index(k).is_some());
    let marked_array = || {
        entries.is_empty()
            && table
                .metatable()
                .is_some_and(|mt| mt == lua.array_metatable())
    };
    if sequence || marked_array() {
        let mut items = vec![Json::Null; len];
        for (key, value) in &entries {
            if let Some(i) = index(key) {
                items[i - 1] = to_json(lua, value, mode, depth)?;
            }
        }
        return Ok(Json::Array(items));
    }
    let mut map = Map::new();
    for (key, value) in &entries {
        let key = match key {
            Value::String(s) => s.to_string_lossy(),
            Value::Integer(i) => i.to_string(),
            Value::Number(n) => match number(*n)? {
                Json::Number(n) => n.to_string(),
                _ => n.to_string(),
            },
            other => return Err(ConvertError::BadKey(other.type_name())),
        };
        map.insert(key, to_json(lua, value, mode, depth)?);
    }
    Ok(Json::Object(map))
}

/// JSON → Lua. Arrays get the array metatable so that they encode back as arrays, even empty.
pub fn json_to_lua(lua: &Lua, value: &Json) -> mlua::Result<Value> {
    json_to_lua_at(lua, value, 0)
}

fn json_to_lua_at(lua: &Lua, value: &Json, depth: usize) -> mlua::Result<Value> {
    if depth > MAX_DEPTH {
        return Err(mlua::Error::runtime(ConvertError::TooDeep.to_string()));
    }
    Ok(match value {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => Value::Number(n.as_f64().unwrap_or(0.0)),
        Json::String(s) => Value::String(lua.create_string(s)?),
        Json::Array(items) => {
            let table = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.iter().enumerate() {
                table.raw_set(i + 1, json_to_lua_at(lua, item, depth + 1)?)?;
            }
            table.set_metatable(Some(lua.array_metatable()))?;
            Value::Table(table)
        }
        Json::Object(map) => {
            let table = lua.create_table_with_capacity(0, map.len())?;
            for (k, v) in map {
                table.raw_set(k.as_str(), json_to_lua_at(lua, v, depth + 1)?)?;
            }
            Value::Table(table)
        }
    })
}
