//! OAuth provider links (users spec §5): which provider accounts a user logs in with, and their
//! access tokens. A provider account (scope, provider, client id) belongs to one user, so a login
//! by client id is unambiguous.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;

use super::error::UserError;
use super::input::{NULL_SENTINEL, Params, Scope, UserId};
use super::store::{self, Link};
use super::{User, Users, Within};

/// Longest provider name (a free string: `facebook`, `google`, `openudid`, or an app's own).
const MAX_PROVIDER_CHARS: usize = 64;
/// Provider links one user may have: every record that lists them (the console's user page,
/// a login by provider) stays small however often a client adds one.
const MAX_LINKS_PER_USER: i64 = 20;
/// Longest provider client id and access token.
const MAX_CLIENT_ID_CHARS: usize = 256;
const MAX_TOKEN_CHARS: usize = 4096;

/// A link as callers see it ("provider info"); absent fields are left out.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProviderInfo {
    pub provider: String,
    pub client_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token_expiry: Option<i64>,
    pub access_token_expired: bool,
}

impl From<Link> for ProviderInfo {
    fn from(link: Link) -> Self {
        ProviderInfo {
            access_token_expired: expired(Some(&link)),
            provider: link.provider,
            client_id: link.client_id,
            access_token: link.access_token,
            access_token_expiry: link.access_token_expiry,
        }
    }
}

/// A user found through a provider link: the user object with its `oauth` info.
#[derive(Debug, Clone, Serialize)]
pub struct LinkedUser {
    #[serde(flatten)]
    pub user: User,
    pub oauth: ProviderInfo,
}

/// Whether a link's token is to be renewed: always without a link or without token and expiry,
/// never when the token has no expiry, else once the expiry (Unix seconds) has come.
fn expired(link: Option<&Link>) -> bool {
    let Some(link) = link else { return true };
    match (&link.access_token, link.access_token_expiry) {
        (None, None) => true,
        (_, None) => false,
        (_, Some(expiry)) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            now >= expiry
        }
    }
}

/// A provider name: a non-empty string of at most 64 characters, matched exactly.
pub fn provider(params: &Params) -> Result<String, UserError> {
    match params.get("provider") {
        None | Some(Value::Null) => Err(UserError::Missing("provider")),
        Some(Value::String(p)) if p.is_empty() => Err(UserError::Missing("provider")),
        Some(Value::String(p)) if p.chars().count() > MAX_PROVIDER_CHARS => Err(UserError::bad(
            format!("Parameter 'provider' is longer than {MAX_PROVIDER_CHARS} characters."),
        )),
        Some(Value::String(p)) => Ok(p.clone()),
        Some(_) => Err(UserError::bad("Parameter 'provider' must be a string.")),
    }
}

/// The user and provider a link operation names (`user_id`, `provider`).
pub fn link_target(params: &Params) -> Result<(Option<UserId>, String), UserError> {
    Ok((super::input::user_id(params)?, provider(params)?))
}

/// A provider account's id, where one is required (`getWithProvider`, OAuth login).
pub fn required_client_id(params: &Params) -> Result<String, UserError> {
    match params.get("client_id") {
        None | Some(Value::Null) => Err(UserError::Missing("client_id")),
        Some(value) => client_id(value),
    }
}

/// The provider account a login names (`provider` and `client_id`, both given), if any.
pub fn login_account(params: &Params) -> Result<Option<(String, String)>, UserError> {
    if params.get("client_id").is_none_or(Value::is_null)
        || params.get("provider").is_none_or(Value::is_null)
    {
        return Ok(None);
    }
    Ok(Some((provider(params)?, required_client_id(params)?)))
}

/// A field of a link change: left as it is, cleared (`core.NULL`), or set.
#[derive(Debug, Clone, PartialEq)]
pub enum Change<T> {
    Keep,
    Clear,
    Set(T),
}

impl<T: Clone> Change<T> {
    fn apply(&self, current: Option<T>) -> Option<T> {
        match self {
            Change::Keep => current,
            Change::Clear => None,
            Change::Set(value) => Some(value.clone()),
        }
    }
}

/// What `addAuthProvider` and `updateAuthProvider` give: a client id, a token, an expiry.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkFields {
    pub client_id: Option<String>,
    pub access_token: Change<String>,
    pub access_token_expiry: Change<i64>,
}

impl LinkFields {
    /// Reads `client_id`, `access_token` and `access_token_expiry` from `fields` (a table;
    /// absent: nothing). Other keys are refused.
    pub fn parse(fields: Option<&Value>) -> Result<LinkFields, UserError> {
        let mut parsed = LinkFields {
            client_id: None,
            access_token: Change::Keep,
            access_token_expiry: Change::Keep,
        };
        let map = match fields {
            None | Some(Value::Null) => return Ok(parsed),
            Some(Value::Object(map)) => map,
            Some(Value::Array(items)) if items.is_empty() => return Ok(parsed),
            Some(_) => return Err(UserError::bad("Provider fields must be a table.")),
        };
        for (key, value) in map {
            match key.as_str() {
                "client_id" => parsed.client_id = Some(client_id(value)?),
                "access_token" => parsed.access_token = token(value)?,
                "access_token_expiry" => parsed.access_token_expiry = expiry(value)?,
                other => {
                    return Err(UserError::bad(format!("Unknown provider field '{other}'.")));
                }
            }
        }
        Ok(parsed)
    }

    /// `updateTokenExpiry`'s `expiry` (required) and optional `token`.
    pub fn token_expiry(params: &Params) -> Result<LinkFields, UserError> {
        let access_token_expiry = match params.get("expiry") {
            None | Some(Value::Null) => return Err(UserError::Missing("expiry")),
            Some(value) => expiry(value)?,
        };
        let access_token = match params.get("token") {
            None => Change::Keep,
            Some(value) => token(value)?,
        };
        Ok(LinkFields {
            client_id: None,
            access_token,
            access_token_expiry,
        })
    }

    /// `addAuthProvider`'s fields: its `auth` table, or the flat form some Coronium code (a
    /// documented client example among it) sends instead.
    pub fn to_add(params: &Params) -> Result<LinkFields, UserError> {
        match params.get("auth") {
            Some(auth) if !auth.is_null() => LinkFields::parse(Some(auth)),
            _ => LinkFields::parse_flat(params),
        }
    }

    /// The flat form some Coronium code sends instead of an `auth` table.
    pub fn parse_flat(params: &Params) -> Result<LinkFields, UserError> {
        let flat: serde_json::Map<String, Value> = params
            .iter()
            .filter(|(key, _)| {
                matches!(
                    key.as_str(),
                    "client_id" | "access_token" | "access_token_expiry"
                )
            })
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        LinkFields::parse(Some(&Value::Object(flat)))
    }
}

fn client_id(value: &Value) -> Result<String, UserError> {
    match value {
        Value::String(id) if id.is_empty() => Err(UserError::Missing("client_id")),
        Value::String(id) if id == NULL_SENTINEL => Err(UserError::bad(
            "A provider link cannot lose its client_id; remove the link instead.",
        )),
        Value::String(id) if id.chars().count() > MAX_CLIENT_ID_CHARS => Err(UserError::bad(
            format!("Parameter 'client_id' is longer than {MAX_CLIENT_ID_CHARS} characters."),
        )),
        Value::String(id) => Ok(id.clone()),
        // Device ids and numeric provider ids arrive as numbers from some clients.
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(UserError::bad("Parameter 'client_id' must be a string.")),
    }
}

fn token(value: &Value) -> Result<Change<String>, UserError> {
    match value {
        Value::Null => Ok(Change::Keep),
        Value::String(t) if t == NULL_SENTINEL => Ok(Change::Clear),
        Value::String(t) if t.chars().count() > MAX_TOKEN_CHARS => Err(UserError::bad(format!(
            "Parameter 'access_token' is longer than {MAX_TOKEN_CHARS} characters."
        ))),
        Value::String(t) => Ok(Change::Set(t.clone())),
        _ => Err(UserError::bad("Parameter 'access_token' must be a string.")),
    }
}

fn expiry(value: &Value) -> Result<Change<i64>, UserError> {
    match value {
        Value::Null => Ok(Change::Keep),
        Value::String(t) if t == NULL_SENTINEL => Ok(Change::Clear),
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Change::Set)
            .ok_or_else(|| UserError::bad("Parameter 'access_token_expiry' must be a number.")),
        _ => Err(UserError::bad(
            "Parameter 'access_token_expiry' must be a number.",
        )),
    }
}

/// A user id that must name a user: absent is 804, malformed is simply not found.
fn existing_id(user_id: Option<UserId>) -> Result<UserId, UserError> {
    user_id.ok_or(UserError::NotFound)
}

impl Users {
    /// Links `provider` to the user (`client_id` required).
    pub async fn add_provider(
        &self,
        within: Within<'_>,
        user_id: Option<UserId>,
        provider: String,
        fields: LinkFields,
    ) -> Result<ProviderInfo, UserError> {
        let id = existing_id(user_id)?.uuid();
        let client_id = fields
            .client_id
            .clone()
            .ok_or(UserError::Missing("client_id"))?;
        let link = Link {
            provider,
            client_id,
            access_token: fields.access_token.apply(None),
            access_token_expiry: fields.access_token_expiry.apply(None),
        };
        let scope = within.scope();
        let link_ref = &link;
        self.db
            .transaction(async |tx| {
                let (user_scope, links) = store::user_scope_for_links(tx, scope, id)
                    .await?
                    .ok_or(UserError::NotFound)?;
                if links >= MAX_LINKS_PER_USER {
                    return Err(UserError::bad(format!(
                        "A user can be linked to at most {MAX_LINKS_PER_USER} providers."
                    )));
                }
                store::insert_link(tx, id, &user_scope, link_ref).await
            })
            .await?;
        Ok(link.into())
    }

    /// The user's link to `provider`.
    pub async fn provider(
        &self,
        within: Within<'_>,
        user_id: Option<UserId>,
        provider: &str,
    ) -> Result<ProviderInfo, UserError> {
        let mut links = self.links(within, user_id, Some(provider)).await?;
        links
            .pop()
            .map(ProviderInfo::from)
            .ok_or(UserError::ProviderNotLinked)
    }

    /// All of the user's links, by provider.
    pub async fn providers(
        &self,
        within: Within<'_>,
        user_id: Option<UserId>,
    ) -> Result<Vec<ProviderInfo>, UserError> {
        Ok(self
            .links(within, user_id, None)
            .await?
            .into_iter()
            .map(ProviderInfo::from)
            .collect())
    }

    async fn links(
        &self,
        within: Within<'_>,
        user_id: Option<UserId>,
        provider: Option<&str>,
    ) -> Result<Vec<Link>, UserError> {
        let (id, scope) = (existing_id(user_id)?.uuid(), within.scope());
        self.db
            .read(|client| async move { store::links(&*client, scope, id, provider).await })
            .await?
            .ok_or(UserError::NotFound)
    }

    /// Changes the given fields of the user's link to `provider`.
    pub async fn update_provider(
        &self,
        within: Within<'_>,
        user_id: Option<UserId>,
        provider: &str,
        fields: LinkFields,
    ) -> Result<ProviderInfo, UserError> {
        let id = existing_id(user_id)?.uuid();
        let scope = within.scope();
        let fields = &fields;
        let link = self
            .db
            .transaction(async |tx| {
                let current = store::links(tx, scope, id, Some(provider))
                    .await?
                    .ok_or(UserError::NotFound)?
                    .pop()
                    .ok_or(UserError::ProviderNotLinked)?;
                let changed = Link {
                    provider: current.provider,
                    client_id: fields.client_id.clone().unwrap_or(current.client_id),
                    access_token: fields.access_token.apply(current.access_token),
                    access_token_expiry: fields
                        .access_token_expiry
                        .apply(current.access_token_expiry),
                };
                store::update_link(tx, id, &changed).await?;
                Ok::<_, UserError>(changed)
            })
            .await?;
        Ok(link.into())
    }

    /// Removes the user's link to `provider` (`None`: every link; the user need have none).
    pub async fn remove_providers(
        &self,
        within: Within<'_>,
        user_id: Option<UserId>,
        provider: Option<&str>,
    ) -> Result<UserId, UserError> {
        let user_id = existing_id(user_id)?;
        let (id, scope) = (user_id.uuid(), within.scope());
        self.db
            .transaction(async |tx| {
                store::user_scope_for_links(tx, scope, id)
                    .await?
                    .ok_or(UserError::NotFound)?;
                let removed = store::delete_links(tx, id, provider).await?;
                if provider.is_some() && removed == 0 {
                    return Err(UserError::ProviderNotLinked);
                }
                Ok::<_, UserError>(())
            })
            .await?;
        Ok(user_id)
    }

    /// Whether the user's token for `provider` is to be renewed: true without such a user or
    /// link.
    pub async fn token_expired(
        &self,
        within: Within<'_>,
        user_id: Option<UserId>,
        provider: &str,
    ) -> Result<bool, UserError> {
        match self.provider(within, user_id, provider).await {
            Ok(info) => Ok(info.access_token_expired),
            Err(UserError::NotFound | UserError::ProviderNotLinked) => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// The user a provider account is linked to in `scope`, with its `oauth` info; no event.
    pub async fn with_provider(
        &self,
        scope: &Scope,
        provider: &str,
        client_id: &str,
    ) -> Result<LinkedUser, UserError> {
        let scope = scope.as_str();
        let (user, link) = self
            .db
            .read(|client| async move {
                store::user_by_link(&*client, scope, provider, client_id).await
            })
            .await?
            .ok_or(UserError::NotFound)?;
        Ok(LinkedUser {
            user,
            oauth: link.into(),
        })
    }

    /// Logs in the user a provider account is linked to (no password: the client id is the
    /// credential, as in Coronium); the login event for active, confirmed users.
    pub async fn login_with_provider(
        &self,
        scope: &Scope,
        provider: &str,
        client_id: &str,
    ) -> Result<LinkedUser, UserError> {
        let found = self.with_provider(scope, provider, client_id).await?;
        let id = found.user.user_id;
        let user = self
            .db
            .write(|client| async move { store::record_passwordless_login(&*client, id).await })
            .await?
            .ok_or(UserError::NotFound)?;
        Ok(LinkedUser {
            user,
            oauth: found.oauth,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn link(token: Option<&str>, expiry: Option<i64>) -> Link {
        Link {
            provider: "google".into(),
            client_id: "g-1".into(),
            access_token: token.map(str::to_owned),
            access_token_expiry: expiry,
        }
    }

    #[test]
    fn expiry_rules() {
        assert!(expired(None), "no link");
        assert!(expired(Some(&link(None, None))), "neither token nor expiry");
        assert!(
            !expired(Some(&link(Some("t"), None))),
            "a token without expiry"
        );
        assert!(expired(Some(&link(Some("t"), Some(1)))), "long past");
        assert!(
            !expired(Some(&link(Some("t"), Some(i64::MAX)))),
            "far ahead"
        );
    }

    #[test]
    fn fields_parse_set_clear_and_refuse() {
        let fields = LinkFields::parse(Some(&json!({
            "client_id": "abc", "access_token": "_NULL", "access_token_expiry": 1700000000
        })))
        .unwrap();
        assert_eq!(fields.client_id.as_deref(), Some("abc"));
        assert_eq!(fields.access_token, Change::Clear);
        assert_eq!(fields.access_token_expiry, Change::Set(1_700_000_000));
        for bad in [
            json!({"access_token_expiry": "tomorrow"}),
            json!({"client_id": "_NULL"}),
            json!({"client_id": {}}),
            json!({"secret": "x"}),
        ] {
            assert!(
                matches!(
                    LinkFields::parse(Some(&bad)),
                    Err(UserError::BadParameter(_))
                ),
                "{bad}"
            );
        }
        let params = json!({"user_id": "x", "client_id": 42})
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(
            LinkFields::parse_flat(&params)
                .unwrap()
                .client_id
                .as_deref(),
            Some("42")
        );
    }
}
