//! `core.users`' natives: each parses its Lua argument, leaves the async domain call for the
//! coroutine's driver (see [`super::super::pending`]) and answers `result`, or `nil, err, status`.

use std::net::IpAddr;
use std::rc::Rc;

use mlua::{Lua, MultiValue, Table, Value};
use serde_json::{Map, Value as Json};

use super::super::Host;
use super::super::budget::Meter;
use super::super::convert::{self, ConvertError, Unencodable};
use super::super::to_lua;
use crate::users::input::{self, Credentials, NewUser, PasswordForm, UserPatch};
use crate::users::oauth::{self, LinkFields, ProviderInfo};
use crate::users::{ClientAddress, Scope, User, UserError, UserQuery, Within};

/// `result` alone on success, `nil, err, status` on failure, as the prelude's `deliver` expects
/// them.
type Outcome = MultiValue;

fn success(value: Value) -> Outcome {
    MultiValue::from_iter([value])
}

fn failure(lua: &Lua, error: &UserError) -> mlua::Result<Outcome> {
    // Gated: a client can make a handler repeat a failing call as often as it likes.
    static GATE: crate::logging::Gate = crate::logging::Gate::new();
    if let UserError::Internal(cause) = error
        && let Some(held_back) = GATE.pass()
    {
        tracing::error!(error = %cause, held_back, "core.users call failed");
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
                Ok(Json::Object(map)) => {
                    input::refuse_nul(&map)?;
                    Ok(map)
                }
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
    convert::host_sized_up_to(lua, user.size_hint(), || to_lua::to_lua(lua, user))
}

/// A user with the provider link it was found by, sized like [`user_value`].
fn linked_user_value(lua: &Lua, user: &oauth::LinkedUser) -> mlua::Result<Value> {
    let bytes = user.user.size_hint() + 1024;
    convert::host_sized_up_to(lua, bytes, || to_lua::to_lua(lua, user))
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
    /// The 2.x positional form (`get(id)`, `update(id, t)`, `delete(id)`): the user is found by
    /// id in any scope (users spec §1).
    positional: bool,
}

impl Caller {
    /// Where a user given by id is looked for.
    fn within(&self) -> Within<'_> {
        if self.positional {
            Within::AnyScope
        } else {
            Within::Scope(&self.scope)
        }
    }
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
pub(super) fn client_from_lua(value: &Value) -> ClientAddress {
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
    ClientAddress::from(ip)
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
            move |lua,
                  (arg, request_scope, client, positional): (
                Value,
                Option<String>,
                Value,
                Option<bool>,
            )| {
                let positional = positional.unwrap_or(false)
                    || (takes == Takes::ParamsOrUserId && matches!(arg, Value::String(_)));
                let parsed = match &arg {
                    Value::String(id) if takes == Takes::ParamsOrUserId => Ok(Map::from_iter([(
                        "user_id".to_owned(),
                        Json::String(id.to_string_lossy()),
                    )])),
                    _ => params(lua, &host.meter, &arg),
                };
                let parsed = parsed.and_then(|params| {
                    let scope = Scope::parse_owned(scope(&host, &params, request_scope))?;
                    let client = client_from_lua(&client);
                    Ok((
                        params,
                        Caller {
                            scope,
                            client,
                            positional,
                        },
                    ))
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

pub(super) fn install(lua: &Lua, host: &Rc<Host>) -> mlua::Result<Table> {
    let native = lua.create_table()?;
    // Whether a client may log in by provider account alone: the prelude applies the wire's
    // rules to a client's own table passed to `login`.
    native.set(
        "wire_oauth_login",
        host.services.users.settings().wire_oauth_login,
    )?;
    users_op(
        lua,
        &native,
        "create",
        Takes::Params,
        host,
        |host, lua, params, Caller { scope, client, .. }| async move {
            let new_user = NewUser::parse(&params, PasswordForm::Plain)?;
            host.services.users.admit_sign_up(&client)?;
            let user = host.services.users.create(&scope, new_user).await?;
            Ok(Value::String(lua.create_string(user.user_id.to_string())?))
        },
    )?;

    users_op(
        lua,
        &native,
        "login",
        Takes::Params,
        host,
        |host, lua, params, Caller { scope, client, .. }| async move {
            // An OAuth login comes first (users spec §3): the provider account is the credential.
            if let Some((provider, client_id)) = oauth::login_account(&params)? {
                let users = &host.services.users;
                let user = users
                    .login_with_provider(&scope, &provider, &client_id)
                    .await?;
                return Ok(linked_user_value(&lua, &user)?);
            }
            // Then by user id, in any scope and without a password (server code only).
            if params.get("user_id").is_some_and(|id| !id.is_null()) {
                let user = host
                    .services
                    .users
                    .login_by_id(input::user_id(&params)?)
                    .await?;
                return Ok(user_value(&lua, &user)?);
            }
            // Then by username alone, in the scope the call names (server code only).
            let no_password = params.get("password").is_none_or(Json::is_null);
            if let (true, Some(Json::String(username)), Some(Json::String(_))) =
                (no_password, params.get("username"), params.get("scope"))
            {
                let users = &host.services.users;
                let user = users.login_by_username(&scope, username).await?;
                return Ok(user_value(&lua, &user)?);
            }
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
        host,
        |host, lua, params, caller| async move {
            let user_id = input::user_id(&params)?;
            let user = host.services.users.get(caller.within(), user_id).await?;
            Ok(user_value(&lua, &user)?)
        },
    )?;

    users_op(
        lua,
        &native,
        "update",
        Takes::Params,
        host,
        |host, lua, params, caller| async move {
            let user_id = input::user_id(&params)?;
            let patch = UserPatch::parse(params.get("update"), PasswordForm::Plain)?;
            let user = host
                .services
                .users
                .update(caller.within(), user_id, patch)
                .await?;
            Ok(user_value(&lua, &user)?)
        },
    )?;

    users_op(
        lua,
        &native,
        "delete",
        Takes::ParamsOrUserId,
        host,
        |host, _lua, params, caller| async move {
            let user_id = input::user_id(&params)?;
            let count = host.services.users.delete(caller.within(), user_id).await?;
            Ok(Value::Number(count as f64))
        },
    )?;
    install_providers(lua, &native, host)?;

    users_op(
        lua,
        &native,
        "resend_confirmation",
        Takes::Params,
        host,
        |host, lua, params, Caller { scope, .. }| async move {
            let request = input::resend_request(&params)?;
            let user_id = input::user_id(&params)?;
            let users = &host.services.users;
            let user = users.resend_confirmation(&scope, user_id, request).await?;
            Ok(Value::String(lua.create_string(user.user_id.to_string())?))
        },
    )?;

    users_op(
        lua,
        &native,
        "send_confirmation_link",
        Takes::Params,
        host,
        |host, lua, params, _caller| async move {
            let user_id = input::user_id(&params)?;
            let options = mail_options(&params)?;
            let users = &host.services.users;
            users.send_confirmation_link(user_id, options).await?;
            Ok(Value::String(lua.create_string("OK")?))
        },
    )?;

    users_op(
        lua,
        &native,
        "send_password_reset_link",
        Takes::Params,
        host,
        |host, _lua, params, Caller { scope, .. }| async move {
            required_scope(&params)?;
            let to = match params.get("to_email") {
                Some(Json::String(to)) if !to.is_empty() => to.clone(),
                None | Some(Json::Null) | Some(Json::String(_)) => {
                    return Err(UserError::Missing("to_email").into());
                }
                Some(_) => {
                    return Err(UserError::bad("Parameter 'to_email' must be a string.").into());
                }
            };
            let options = mail_options(&params)?;
            let users = &host.services.users;
            users.send_password_reset_link(&scope, &to, options).await?;
            Ok(Value::Boolean(true))
        },
    )?;

    users_op(
        lua,
        &native,
        "flush_expired_password_resets",
        Takes::Params,
        host,
        |host, _lua, _params, _caller| async move {
            let count = host.services.users.flush_expired_password_resets().await?;
            Ok(Value::Number(count as f64))
        },
    )?;

    users_op(
        lua,
        &native,
        "register",
        Takes::Params,
        host,
        |host, lua, params, Caller { scope, client, .. }| async move {
            required_scope(&params)?;
            let registration = input::Registration::parse(&params)?;
            host.services.users.admit_sign_up(&client)?;
            let id = host.services.users.register(&scope, registration).await?;
            Ok(Value::String(lua.create_string(id.to_string())?))
        },
    )?;

    users_op(
        lua,
        &native,
        "get_with_query",
        Takes::Params,
        host,
        |host, lua, params, Caller { scope, .. }| async move {
            required_scope(&params)?;
            let query = UserQuery::parse(params.get("query"))?;
            query_result(
                &lua,
                &query,
                host.services.users.query(&scope, &query).await?,
            )
        },
    )?;

    users_op(
        lua,
        &native,
        "get_group",
        Takes::Params,
        host,
        |host, lua, params, Caller { scope, .. }| async move {
            required_scope(&params)?;
            let query = UserQuery::group(params.get("group"), params.get("limit"))?;
            query_result(
                &lua,
                &query,
                host.services.users.query(&scope, &query).await?,
            )
        },
    )?;
    Ok(native)
}

/// The OAuth provider functions (users spec §5). Each takes the table form's parameters; the
/// prelude builds them for the positional forms (and marks those, to find the user in any scope).
fn install_providers(lua: &Lua, native: &Table, host: &Rc<Host>) -> mlua::Result<()> {
    users_op(
        lua,
        native,
        "add_provider",
        Takes::Params,
        host,
        |host, lua, params, caller| async move {
            let (user_id, provider) = oauth::link_target(&params)?;
            let fields = LinkFields::to_add(&params)?;
            let users = &host.services.users;
            let info = users
                .add_provider(caller.within(), user_id, provider, fields)
                .await?;
            Ok(sized(&lua, &info)?)
        },
    )?;

    users_op(
        lua,
        native,
        "get_provider",
        Takes::Params,
        host,
        |host, lua, params, caller| async move {
            let (user_id, provider) = oauth::link_target(&params)?;
            let users = &host.services.users;
            let info = users.provider(caller.within(), user_id, &provider).await?;
            Ok(sized(&lua, &info)?)
        },
    )?;

    users_op(
        lua,
        native,
        "get_providers",
        Takes::Params,
        host,
        |host, lua, params, caller| async move {
            let user_id = input::user_id(&params)?;
            let infos = host
                .services
                .users
                .providers(caller.within(), user_id)
                .await?;
            let by_provider: std::collections::BTreeMap<String, ProviderInfo> = infos
                .into_iter()
                .map(|info| (info.provider.clone(), info))
                .collect();
            Ok(sized(&lua, &by_provider)?)
        },
    )?;

    users_op(
        lua,
        native,
        "update_provider",
        Takes::Params,
        host,
        |host, lua, params, caller| async move {
            let (user_id, provider) = oauth::link_target(&params)?;
            let fields = LinkFields::parse(params.get("update"))?;
            let users = &host.services.users;
            let info = users
                .update_provider(caller.within(), user_id, &provider, fields)
                .await?;
            Ok(sized(&lua, &info)?)
        },
    )?;

    users_op(
        lua,
        native,
        "update_token_expiry",
        Takes::Params,
        host,
        |host, lua, params, caller| async move {
            let (user_id, provider) = oauth::link_target(&params)?;
            let fields = LinkFields::token_expiry(&params)?;
            let users = &host.services.users;
            let info = users
                .update_provider(caller.within(), user_id, &provider, fields)
                .await?;
            Ok(sized(&lua, &info)?)
        },
    )?;

    users_op(
        lua,
        native,
        "remove_provider",
        Takes::Params,
        host,
        |host, lua, params, caller| async move {
            let (user_id, provider) = oauth::link_target(&params)?;
            let users = &host.services.users;
            let id = users
                .remove_providers(caller.within(), user_id, Some(&provider))
                .await?;
            Ok(Value::String(lua.create_string(id.uuid().to_string())?))
        },
    )?;

    users_op(
        lua,
        native,
        "remove_providers",
        Takes::Params,
        host,
        |host, lua, params, caller| async move {
            let user_id = input::user_id(&params)?;
            let users = &host.services.users;
            let id = users
                .remove_providers(caller.within(), user_id, None)
                .await?;
            Ok(Value::String(lua.create_string(id.uuid().to_string())?))
        },
    )?;

    users_op(
        lua,
        native,
        "token_expired",
        Takes::Params,
        host,
        |host, _lua, params, caller| async move {
            let (user_id, provider) = oauth::link_target(&params)?;
            let users = &host.services.users;
            let expired = users
                .token_expired(caller.within(), user_id, &provider)
                .await?;
            Ok(Value::Boolean(expired))
        },
    )?;

    users_op(
        lua,
        native,
        "get_with_provider",
        Takes::Params,
        host,
        |host, lua, params, Caller { scope, .. }| async move {
            required_scope(&params)?;
            let provider = oauth::provider(&params)?;
            let client_id = oauth::required_client_id(&params)?;
            let users = &host.services.users;
            let user = users.with_provider(&scope, &provider, &client_id).await?;
            Ok(linked_user_value(&lua, &user)?)
        },
    )
}

/// A host value pushed onto the Lua stack under the state's limits.
fn sized<T: serde::Serialize>(lua: &Lua, value: &T) -> mlua::Result<Value> {
    convert::host_sized(lua, || to_lua::to_lua(lua, value))
}

/// Server-side queries name their scope (an argument, not the request's).
/// The mail options of `sendConfirmationLink` and `sendPasswordResetLink` (804 without them).
fn mail_options(params: &input::Params) -> Result<input::MailOptions, UserError> {
    match params.get("options") {
        None | Some(Json::Null) => Err(UserError::Missing("options")),
        Some(options) => input::MailOptions::parse(options, "options"),
    }
}

fn required_scope(params: &input::Params) -> Result<(), UserError> {
    match params.get("scope") {
        Some(Json::String(scope)) if !scope.is_empty() => Ok(()),
        Some(Json::String(_)) | None | Some(Json::Null) => Err(UserError::Missing("scope")),
        Some(_) => Err(UserError::bad("Parameter 'scope' must be a string.")),
    }
}

/// The users a query found: an array, or for `limit == 1` the one user (604 when none).
fn query_result(lua: &Lua, query: &UserQuery, users: Vec<User>) -> Result<Value, OpError> {
    if query.single {
        let user = users.first().ok_or(UserError::NotFound)?;
        return Ok(user_value(lua, user)?);
    }
    let bytes = users.iter().map(User::size_hint).sum();
    Ok(convert::host_sized_up_to(lua, bytes, || {
        to_lua::to_lua(lua, &users)
    })?)
}
