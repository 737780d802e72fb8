//! `api.users` over the wire: the v2 and v1 action names, with the client's md5 passwords and
//! the request's scope, answering in Coronium 2.x result shapes.

use std::net::IpAddr;

use serde_json::Value;
use serde_json::value::RawValue;

use super::json_text;
use crate::users::input::{self, Params};
use crate::users::oauth::{self, LinkFields};
use crate::users::{
    ClientAddress, Credentials, NewUser, PasswordForm, Scope, UserError, UserPatch, Users, Within,
};

/// An `api.users` action (compat §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Login,
    Get,
    Create,
    Update,
    Delete,
    ResendConfirmation,
    AddAuthProvider,
    GetAuthProvider,
    UpdateAuthProvider,
    UpdateTokenExpiry,
    AccessTokenExpired,
    RemoveAuthProvider,
}

impl Action {
    /// Parses an `X-Action`: v2 names and their v1 equivalents.
    pub fn parse(name: &str) -> Option<Action> {
        Some(match name {
            "login" | "loginUser" => Action::Login,
            "get" | "getUsers" | "getUser" => Action::Get,
            "create" | "createUser" => Action::Create,
            "update" | "updateUser" => Action::Update,
            "delete" | "deleteUser" => Action::Delete,
            "resendConfirmation" => Action::ResendConfirmation,
            "addAuthProvider" => Action::AddAuthProvider,
            "getAuthProvider" => Action::GetAuthProvider,
            "updateAuthProvider" => Action::UpdateAuthProvider,
            "updateTokenExpiry" => Action::UpdateTokenExpiry,
            "accessTokenExpired" => Action::AccessTokenExpired,
            "removeAuthProvider" => Action::RemoveAuthProvider,
            _ => return None,
        })
    }

    /// The v2 name (what scope permissions are kept under).
    pub fn name(self) -> &'static str {
        match self {
            Action::Login => "login",
            Action::Get => "get",
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::ResendConfirmation => "resendConfirmation",
            Action::AddAuthProvider => "addAuthProvider",
            Action::GetAuthProvider => "getAuthProvider",
            Action::UpdateAuthProvider => "updateAuthProvider",
            Action::UpdateTokenExpiry => "updateTokenExpiry",
            Action::AccessTokenExpired => "accessTokenExpired",
            Action::RemoveAuthProvider => "removeAuthProvider",
        }
    }
}

/// Runs one action in `scope` (from `X-Scope`). A `scope` in the body is ignored: a client acts
/// only in the scope its headers name.
pub async fn execute(
    users: &Users,
    scope: String,
    action: Action,
    mut params: Params,
    client: IpAddr,
) -> Result<Box<RawValue>, UserError> {
    params.remove("scope");
    input::refuse_nul(&params)?;
    let scope = &Scope::parse_owned(scope)?;
    let within = Within::Scope(scope);
    Ok(match action {
        Action::Login => {
            // A provider account logs in by its client id alone (users spec §3: Coronium's
            // design, which device-as-user apps rely on), unless the operator turned it off.
            let by_account = match users.settings().wire_oauth_login {
                true => oauth::login_account(&params)?,
                false => None,
            };
            if let Some((provider, client_id)) = by_account {
                return Ok(json_text(
                    &users
                        .login_with_provider(scope, &provider, &client_id)
                        .await?,
                ));
            }
            // Password-less logins (by user id or username alone) are for server code only.
            if params.get("password").is_none_or(Value::is_null) {
                return Err(UserError::Missing("password"));
            }
            let credentials = Credentials::parse(&params, PasswordForm::Canonical)?;
            let client = ClientAddress::from_ip(client);
            json_text(&users.login(scope, credentials, &client).await?)
        }
        Action::Get => json_text(
            &users
                .get(Within::Scope(scope), input::user_id(&params)?)
                .await?,
        ),
        Action::Create => {
            let mut new_user = NewUser::parse(&params, PasswordForm::Canonical)?;
            users.check_client_mail(new_user.confirmation.as_mut())?;
            users.admit_sign_up(&ClientAddress::from_ip(client))?;
            let user = users.create(scope, new_user).await?;
            json_text(
                &serde_json::json!({ "user_id": user.user_id, "confirmation": user.confirmation }),
            )
        }
        Action::Update => {
            let user_id = input::user_id(&params)?;
            let patch = UserPatch::parse(params.get("update"), PasswordForm::Canonical)?;
            json_text(&users.update(Within::Scope(scope), user_id, patch).await?)
        }
        Action::Delete => json_text(
            &users
                .delete(Within::Scope(scope), input::user_id(&params)?)
                .await?,
        ),
        Action::ResendConfirmation => {
            let mut request = input::resend_request(&params)?;
            users.check_client_mail(request.as_mut())?;
            let user = users
                .resend_confirmation(scope, input::user_id(&params)?, request)
                .await?;
            // The client's documented result: the user id as a string (users spec §4).
            json_text(&user.user_id.to_string())
        }
        Action::AddAuthProvider => {
            let fields = LinkFields::to_add(&params)?;
            let (user_id, provider) = oauth::link_target(&params)?;
            json_text(
                &users
                    .add_provider(within, user_id, provider, fields)
                    .await?,
            )
        }
        Action::GetAuthProvider => {
            let (user_id, provider) = oauth::link_target(&params)?;
            json_text(&users.provider(within, user_id, &provider).await?)
        }
        Action::UpdateAuthProvider => {
            let (user_id, provider) = oauth::link_target(&params)?;
            let fields = LinkFields::parse(params.get("update"))?;
            json_text(
                &users
                    .update_provider(within, user_id, &provider, fields)
                    .await?,
            )
        }
        Action::UpdateTokenExpiry => {
            let (user_id, provider) = oauth::link_target(&params)?;
            let fields = LinkFields::token_expiry(&params)?;
            json_text(
                &users
                    .update_provider(within, user_id, &provider, fields)
                    .await?,
            )
        }
        Action::AccessTokenExpired => {
            let (user_id, provider) = oauth::link_target(&params)?;
            let expired = users.token_expired(within, user_id, &provider).await?;
            json_text(&serde_json::json!({ "expired": expired }))
        }
        Action::RemoveAuthProvider => {
            let (user_id, provider) = oauth::link_target(&params)?;
            let id = users
                .remove_providers(within, user_id, Some(&provider))
                .await?;
            json_text(&serde_json::json!({ "user_id": id.uuid() }))
        }
    })
}
