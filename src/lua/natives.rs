//! The Rust functions behind `core`: the users operations (returning `result, err, status`) and
//! the utilities that need the host (uuid, md5, sleep, log, json, output).

use std::net::IpAddr;
use std::rc::Rc;
use std::time::Duration;

use mlua::{IntoLuaMulti, Lua, MultiValue, Table, Value, Variadic};
use serde_json::{Map, Value as Json};

use super::budget::Meter;
use super::convert::{self, ConvertError, Unencodable};
use super::{Host, Output, pending, text, to_lua};
use crate::status::Status;
use crate::users::input::{self, Credentials, NewUser, PasswordForm, UserPatch};
use crate::users::{ClientAddress, Scope, User, UserError, password};

/// `result` alone on success, `nil, err, status` on failure, as the prelude's `deliver` expects
/// them.
type Outcome = MultiValue;

fn success(value: Value) -> Outcome {
    MultiValue::from_iter([value])
}

fn failure(lua: &Lua, error: &UserError) -> mlua::Result<Outcome> {
    if let UserError::Internal(cause) = error {
        tracing::error!(error = %cause, "core.users call failed");
    }
    Ok(MultiValue::from_iter([
        Value::Nil,
        Value::String(lua.create_string(error.to_string())?),
        Value::Integer(error.status().code()),
    ]))
}

/// The call's parameters as a JSON object; values JSON cannot hold are marked so validation
/// refuses them with Coronium's own status.
/// The conversion runs under the request's CPU budget (a script sizes the table).
fn params(lua: &Lua, meter: &Meter, value: &Value) -> Result<input::Params, OpError> {
    match value {
        Value::Nil => Ok(Map::new()),
        Value::Table(_) => {
            match convert::host_sized(lua, || {
                convert::lua_to_json(lua, value, Unencodable::Mark, Some(meter))
            }) {
                Ok(Json::Object(map)) => Ok(map),
                Ok(Json::Array(items)) if items.is_empty() => Ok(Map::new()),
                Ok(_) => Err(UserError::BadParameter(
                    "Parameters must be a table of named fields.".into(),
                )
                .into()),
                Err(ConvertError::OverBudget(e)) => Err(mlua::Error::runtime(e).into()),
                Err(e) => Err(UserError::BadParameter(format!("Bad parameters: {e}.")).into()),
            }
        }
        other => Err(UserError::BadParameter(format!(
            "Parameters must be a table, not a {}.",
            other.type_name()
        ))
        .into()),
    }
}

/// The scope a call acts in: its own `scope` parameter (server-side code is trusted), else the
/// request's, else the host's.
fn scope(host: &Host, params: &input::Params, request_scope: Option<String>) -> String {
    params
        .get("scope")
        .and_then(Json::as_str)
        .map(str::to_owned)
        .or(request_scope)
        .unwrap_or_else(|| host.scope.clone())
}

/// The user as a Lua table: [`User`]'s own serialization (the wire's record), pushed straight
/// onto the Lua stack (this runs on every `core.users` call that returns a user). Absent fields
/// are nil.
fn user_value(lua: &Lua, user: &User) -> mlua::Result<Value> {
    convert::host_sized(lua, || to_lua::to_lua(lua, user))
}

/// Why a users operation did not produce a result: the caller's problem (answered as
/// `nil, err, status`) or a Lua failure (raised).
enum OpError {
    User(UserError),
    Lua(mlua::Error),
}

impl From<UserError> for OpError {
    fn from(e: UserError) -> Self {
        OpError::User(e)
    }
}

impl From<mlua::Error> for OpError {
    fn from(e: mlua::Error) -> Self {
        OpError::Lua(e)
    }
}

/// What a users operation takes from Lua.
#[derive(Clone, Copy, PartialEq)]
enum Takes {
    Params,
    /// A params table, or the user id alone (`get(id)`; no table to build and convert).
    ParamsOrUserId,
}

/// Who a users operation acts for: the scope, and the client address of the request whose code
/// runs (the prelude passes both; `None` outside a request).
struct Caller {
    scope: Scope,
    client: ClientAddress,
}

/// A request's client address as the prelude keeps it in the request's context: an IPv4
/// address as a number (no string to make on every request), an IPv6 one as text.
pub(crate) fn client_to_lua(lua: &Lua, ip: IpAddr) -> mlua::Result<Value> {
    Ok(match ip.to_canonical() {
        IpAddr::V4(v4) => Value::Integer(i64::from(u32::from(v4))),
        IpAddr::V6(v6) => Value::String(lua.create_string(v6.to_string())?),
    })
}

/// The address [`client_to_lua`] made; anything else (no request) is the server's own code.
fn client_from_lua(value: &Value) -> ClientAddress {
    let ip = match value {
        Value::Integer(n) => u32::try_from(*n)
            .ok()
            .map(|n| IpAddr::from(n.to_be_bytes())),
        Value::Number(n) if n.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(n) => {
            Some(IpAddr::from((*n as u32).to_be_bytes()))
        }
        Value::String(s) => s.to_str().ok().and_then(|s| s.parse().ok()),
        _ => None,
    };
    ip.map_or_else(ClientAddress::local, ClientAddress::from_ip)
}

/// Registers a users operation: parse the Lua argument, leave the async domain call for the
/// coroutine's driver (see [`super::pending`]), and turn its outcome into `result, err, status`.
fn users_op<F, Fut>(
    lua: &Lua,
    native: &Table,
    name: &str,
    takes: Takes,
    host: &Rc<Host>,
    op: F,
) -> mlua::Result<()>
where
    F: Fn(Rc<Host>, Lua, input::Params, Caller) -> Fut + 'static,
    Fut: Future<Output = Result<Value, OpError>> + 'static,
{
    let host = host.clone();
    let op = Rc::new(op);
    native.set(
        name,
        lua.create_function(
            move |lua, (arg, request_scope, client): (Value, Option<String>, Value)| {
                let parsed = match &arg {
                    Value::String(id) if takes == Takes::ParamsOrUserId => Ok(Map::from_iter([(
                        "user_id".to_owned(),
                        Json::String(id.to_string_lossy()),
                    )])),
                    _ => params(lua, &host.meter, &arg),
                };
                let parsed = parsed.and_then(|params| {
                    let scope = Scope::parse(&scope(&host, &params, request_scope))?;
                    let client = client_from_lua(&client);
                    Ok((params, Caller { scope, client }))
                });
                let (op_host, op, lua) = (host.clone(), op.clone(), lua.clone());
                host.pending.start(async move {
                    let outcome = match parsed {
                        Ok((params, caller)) => op(op_host, lua.clone(), params, caller).await,
                        Err(e) => Err(e),
                    };
                    match outcome {
                        Ok(value) => Ok(success(value)),
                        Err(OpError::User(e)) => failure(&lua, &e),
                        Err(OpError::Lua(e)) => Err(e),
                    }
                });
                Ok(())
            },
        )?,
    )
}

pub(crate) fn install(lua: &Lua, host: Rc<Host>) -> mlua::Result<Table> {
    let native = lua.create_table()?;
    let statuses = lua.create_table()?;
    for (name, status) in Status::NAMED {
        statuses.set(*name, status.code())?;
    }
    statuses.set_readonly(true);
    native.set("STATUS", statuses)?;

    users_op(
        lua,
        &native,
        "create",
        Takes::Params,
        &host,
        |host, lua, params, Caller { scope, .. }| async move {
            let new_user = NewUser::parse(&params, PasswordForm::Plain)?;
            let user = host.services.users.create(&scope, new_user).await?;
            Ok(Value::String(lua.create_string(user.user_id.to_string())?))
        },
    )?;

    users_op(
        lua,
        &native,
        "login",
        Takes::Params,
        &host,
        |host, lua, params, Caller { scope, client }| async move {
            let credentials = Credentials::parse(&params, PasswordForm::Plain)?;
            let user = host
                .services
                .users
                .login(&scope, credentials, &client)
                .await?;
            Ok(user_value(&lua, &user)?)
        },
    )?;

    users_op(
        lua,
        &native,
        "get",
        Takes::ParamsOrUserId,
        &host,
        |host, lua, params, Caller { scope, .. }| async move {
            let user_id = input::user_id(&params)?;
            let user = host.services.users.get(&scope, user_id).await?;
            Ok(user_value(&lua, &user)?)
        },
    )?;

    users_op(
        lua,
        &native,
        "update",
        Takes::Params,
        &host,
        |host, lua, params, Caller { scope, .. }| async move {
            let user_id = input::user_id(&params)?;
            let patch = UserPatch::parse(params.get("update"), PasswordForm::Plain)?;
            let user = host.services.users.update(&scope, user_id, patch).await?;
            Ok(user_value(&lua, &user)?)
        },
    )?;

    users_op(
        lua,
        &native,
        "delete",
        Takes::ParamsOrUserId,
        &host,
        |host, _lua, params, Caller { scope, .. }| async move {
            let user_id = input::user_id(&params)?;
            let count = host.services.users.delete(&scope, user_id).await?;
            Ok(Value::Number(count as f64))
        },
    )?;

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
        "uuid",
        lua.create_function(|_, ()| Ok(uuid::Uuid::new_v4().to_string()))?,
    )?;
    native.set(
        "md5",
        lua.create_function(|_, s: mlua::LuaString| Ok(password::md5_hex(&s.to_string_lossy())))?,
    )?;
    let sleep_host = host.clone();
    native.set(
        "sleep",
        lua.create_function(move |_, seconds: f64| {
            sleep_host.pending.start(async move {
                if seconds.is_finite() && seconds > 0.0 {
                    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
                }
                Ok(MultiValue::new())
            });
            Ok(())
        })?,
    )?;
    native.set(
        "log",
        lua.create_function(|_, args: Variadic<Value>| {
            let line = args
                .iter()
                .map(|v| v.to_string().unwrap_or_else(|_| v.type_name().to_owned()))
                .collect::<Vec<_>>()
                .join(" ");
            tracing::info!(target: "lua", "{}", log_line(&line));
            Ok(())
        })?,
    )?;
    let output = host.output;
    native.set(
        "write",
        lua.create_function(move |_, line: mlua::LuaString| {
            let line = line.to_string_lossy();
            match output {
                Output::Stdout => {
                    use std::io::Write as _;
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
                Output::Log => tracing::info!(target: "lua", "{}", log_line(&line)),
            }
            Ok(())
        })?,
    )?;
    // Read-only in place (Luau's `table.freeze` refuses tables with a protected metatable).
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
    native.set(
        "trim",
        lua.create_function(|lua, s: mlua::LuaString| {
            lua.create_string(text::trim(&s.as_bytes()))
        })?,
    )?;
    native.set("split", split_function(lua, &host, text::Separator::Core)?)?;
    native.set(
        "string_split",
        split_function(lua, &host, text::Separator::Luau)?,
    )?;
    native.set("budgeted", host.meter.is_budgeted())?;
    let budget_host = host.clone();
    native.set(
        "over_budget",
        lua.create_function(move |_, ()| Ok(budget_host.meter.check().is_err()))?,
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
    // Both look at the CPU budget as they go: a script sizes their work. Over it, they raise
    // (the request is over); other failures answer `nil, message`.
    let encode_host = host.clone();
    native.set(
        "json_encode",
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
        "json_decode",
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

/// `core.split` or `string.split`, under the running request's budget.
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

/// Longest line a script writes into a server's log: the log is written on the worker's thread,
/// and one `print` of a 200 MB string should not fill the operator's disk.
const MAX_LOG_LINE: usize = 64 * 1024;

/// `line`, cut at [`MAX_LOG_LINE`] bytes (on a character boundary) with a note of the rest.
fn log_line(line: &str) -> std::borrow::Cow<'_, str> {
    if line.len() <= MAX_LOG_LINE {
        return line.into();
    }
    let cut = (0..=MAX_LOG_LINE)
        .rev()
        .find(|&at| line.is_char_boundary(at))
        .unwrap_or(0);
    format!("{}... ({} more bytes)", &line[..cut], line.len() - cut).into()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_log_lines_are_cut_on_a_character_boundary() {
        assert_eq!(log_line("short"), "short");
        let long = format!("{}é{}", "x".repeat(MAX_LOG_LINE - 1), "y".repeat(10));
        let cut = log_line(&long);
        assert!(cut.starts_with(&"x".repeat(MAX_LOG_LINE - 1)));
        assert!(
            cut.ends_with("... (12 more bytes)"),
            "{}",
            &cut[MAX_LOG_LINE - 5..]
        );
    }
}
