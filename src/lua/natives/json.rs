//! `core.json`: encode and decode, looking at the CPU budget as they go.

use std::rc::Rc;

use mlua::{Lua, MultiValue, Table, Value};

use super::super::convert::{self, ConvertError, Unencodable};
use super::super::{Host, to_lua};

pub(super) fn install(lua: &Lua, host: &Rc<Host>) -> mlua::Result<Table> {
    let native = lua.create_table()?;
    // Both look at the CPU budget as they go: a script sizes their work. Over it, they raise
    // (the request is over); other failures answer `nil, message`.
    let encode_host = host.clone();
    native.set(
        "encode",
        lua.create_function(move |lua, value: Value| {
            let encoded = convert::encode(
                lua,
                &value,
                Unencodable::Fail,
                Some(&encode_host.meter),
                |v| serde_json::to_string(v),
            );
            match encoded {
                Err(ConvertError::OverBudget(e)) => Err(mlua::Error::runtime(e)),
                other => value_or_error(lua, other.map_err(|e| e.to_string())),
            }
        })?,
    )?;
    let decode_host = host.clone();
    native.set(
        "decode",
        lua.create_function(move |lua, text: mlua::LuaString| {
            match to_lua::json_text_to_lua(lua, &text.as_bytes(), &decode_host.meter) {
                Ok(value) => value_or_error(lua, Ok(value)),
                Err(to_lua::Pushed::Refused(to_lua::PushError::OverBudget(e))) => {
                    Err(mlua::Error::runtime(e))
                }
                Err(to_lua::Pushed::Refused(e)) => {
                    value_or_error(lua, Err::<Value, _>(e.to_string()))
                }
                Err(to_lua::Pushed::Lua(e)) => Err(e),
            }
        })?,
    )?;
    Ok(native)
}

/// `value`, or `nil, message`: how `core.json` reports failures.
fn value_or_error(
    lua: &Lua,
    outcome: Result<impl mlua::IntoLua, String>,
) -> mlua::Result<MultiValue> {
    let mut out = MultiValue::new();
    match outcome {
        Ok(value) => out.push_back(value.into_lua(lua)?),
        Err(message) => {
            out.push_back(Value::Nil);
            out.push_back(Value::String(lua.create_string(message)?));
        }
    }
    Ok(out)
}
