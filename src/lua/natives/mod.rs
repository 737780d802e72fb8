//! The Rust functions behind `core`, one table per `core` module (`users`, `json`, `email`,
//! `text`, `util`), plus what the prelude itself needs from the host (waiting, project loading,
//! freezing, environments, the CPU budget, status codes). The prelude receives them as `native`;
//! scripts never see it. A new `core` module is a file here and a table in [`install`].

mod email;
mod json;
mod text;
mod users;
mod util;

use std::rc::Rc;

use mlua::{IntoLuaMulti, Lua, MultiValue, Table, Value};

use super::{Host, pending};
use crate::status::Status;

pub(crate) use users::client_to_lua;

pub(crate) fn install(lua: &Lua, host: Rc<Host>) -> mlua::Result<Table> {
    let native = lua.create_table()?;
    let statuses = lua.create_table()?;
    for (name, status) in Status::NAMED {
        statuses.set(*name, status.code())?;
    }
    statuses.set_readonly(true);
    native.set("STATUS", statuses)?;
    native.set("users", users::install(lua, &host)?)?;
    native.set("json", json::install(lua, &host)?)?;
    native.set("email", email::install(lua, &host)?)?;
    native.set("text", text::install(lua, &host)?)?;
    native.set("util", util::install(lua, &host)?)?;
    let projects_host = host.clone();
    native.set(
        "project_api",
        lua.create_function(move |lua, name: String| {
            let (host, lua) = (projects_host.clone(), lua.clone());
            projects_host.pending.start(async move {
                match host.projects.api(&lua, &name).await {
                    Ok(Some(api)) => Ok(MultiValue::from_iter([Value::Table(api)])),
                    Ok(None) => Ok(MultiValue::from_iter([Value::Nil])),
                    Err(e) => Err(mlua::Error::runtime(e.to_string())),
                }
            });
            Ok(())
        })?,
    )?;
    let modules_host = host.clone();
    // `source, chunkname`, or `nil, message` (raised by the prelude's `require` as text).
    native.set(
        "read_module",
        lua.create_function(move |lua, (project, module): (String, String)| {
            match modules_host.projects.read_module(&project, &module) {
                Ok((source, chunkname)) => (source, chunkname).into_lua_multi(lua),
                Err(e) => (Value::Nil, e.to_string()).into_lua_multi(lua),
            }
        })?,
    )?;
    // The value a coroutine yields while it waits for the host; the prelude lets scripts' own
    // coroutines pass it up to the coroutine the host drives.
    native.set("pending", Value::LightUserData(pending::marker()))?;
    native.set(
        "freeze",
        lua.create_function(|_, table: Table| {
            table.set_readonly(true);
            Ok(table)
        })?,
    )?;
    // A Lua function's environment, nil for a C function; unlike Luau's `getfenv`, looking does
    // not turn off the environment's fast global lookups.
    native.set(
        "env_of",
        lua.create_function(|_, f: mlua::Function| Ok(f.environment()))?,
    )?;
    // Budgeted states only: what the prelude's pcall wrappers read (see budget::SpentFlag).
    native.set("budget", host.meter.spent_flag(lua)?)?;
    Ok(native)
}
