//! `core.email`'s native half: the message the Lua builder (lua/core/email.lua) assembled is
//! checked and queued in the outbox; this instance's sender delivers it.

use std::rc::Rc;

use mlua::{Lua, MultiValue, Table, Value};
use serde_json::Value as Json;

use super::super::Host;
use super::super::convert::{self, ConvertError, Unencodable};
use crate::mail::email::{self, EmailError};

pub(super) fn install(lua: &Lua, host: &Rc<Host>) -> mlua::Result<Table> {
    let native = lua.create_table()?;
    let send_host = host.clone();
    native.set(
        "send",
        lua.create_function(
            move |lua, (message, project, client): (Table, Option<String>, Value)| {
                let value = Value::Table(message);
                let fields = convert::host_sized(lua, || {
                    convert::lua_to_json(lua, &value, Unencodable::Mark, Some(&send_host.meter))
                });
                let draft = match fields {
                    Ok(Json::Object(fields)) => email::draft(&fields),
                    Err(ConvertError::OverBudget(e)) => return Err(mlua::Error::runtime(e)),
                    _ => Err(EmailError::Bad("The message could not be read.".into())),
                };
                // Only a message that would be queued counts against its project's budget.
                let mailer = &send_host.services.mailer;
                let draft = draft.and_then(|message| {
                    let client = super::users::client_from_lua(&client);
                    let client = (!client.is_local()).then_some(client.as_str());
                    if mailer.admit_project_message(project.as_deref(), client) {
                        Ok(message)
                    } else {
                        Err(EmailError::TooMany)
                    }
                });
                let (host, lua) = (send_host.clone(), lua.clone());
                send_host.pending.start(async move {
                let queued = match draft {
                    Ok(message) => email::queue(&host.services.db, &message).await,
                    Err(e) => Err(e),
                };
                match queued {
                    Ok(id) => {
                        host.services.mailer.queued(1);
                        let answer = lua.create_table()?;
                        answer.set("id", id.to_string())?;
                        answer.set("message", "Queued. Thank you.")?;
                        Ok(MultiValue::from_iter([Value::Table(answer)]))
                    }
                    Err(e) => {
                        if let EmailError::Queue(cause) = &e {
                            tracing::error!(error = %cause, "core.email could not queue a message");
                        }
                        let answer = e.answer();
                        Ok(MultiValue::from_iter([
                            Value::Nil,
                            Value::String(lua.create_string(&answer.message)?),
                            Value::Integer(answer.status.code()),
                        ]))
                    }
                }
            });
                Ok(())
            },
        )?,
    )?;
    Ok(native)
}
