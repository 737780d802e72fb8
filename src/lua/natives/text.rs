//! Text natives whose work a script sizes, in linear time and under the CPU budget: `core.trim`,
//! `core.split`, `string.split` and plain `string.find`.

use std::rc::Rc;

use mlua::{Lua, MultiValue, Table, Value};

use super::super::{Host, text};

pub(super) fn install(lua: &Lua, host: &Rc<Host>) -> mlua::Result<Table> {
    let native = lua.create_table()?;
    native.set(
        "trim",
        lua.create_function(|lua, s: mlua::LuaString| {
            lua.create_string(text::trim(&s.as_bytes()))
        })?,
    )?;
    native.set("split", split_function(lua, host, text::Separator::Core)?)?;
    native.set(
        "string_split",
        split_function(lua, host, text::Separator::Luau)?,
    )?;
    native.set(
        "find_plain",
        lua.create_function(
            |_, (s, needle, init): (mlua::LuaString, mlua::LuaString, Option<i64>)| {
                let found = text::find_plain(&s.as_bytes(), &needle.as_bytes(), init.unwrap_or(1));
                Ok(match found {
                    Some((first, last)) => MultiValue::from_iter([
                        Value::Integer(first as i64),
                        Value::Integer(last as i64),
                    ]),
                    None => MultiValue::from_iter([Value::Nil]),
                })
            },
        )?,
    )?;
    Ok(native)
}

fn split_function(
    lua: &Lua,
    host: &Rc<Host>,
    form: text::Separator,
) -> mlua::Result<mlua::Function> {
    let host = host.clone();
    lua.create_function(
        move |lua, (s, sep): (mlua::LuaString, Option<mlua::LuaString>)| {
            text::split_table(lua, &host.meter, &s, sep.as_ref(), form)
        },
    )
}
