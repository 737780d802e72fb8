//! The users domain: create, login, get, update, delete, as the seed and compat spec §2–§3 say.
//! It knows nothing of Lua or HTTP: callers hand it a scope and parsed parameters.

mod error;
pub mod input;
mod mail;
pub mod oauth;
pub mod password;
pub mod query;
mod store;
pub mod throttle;

use std::sync::Arc;

use crate::db::DbHandle;
use crate::mail::Mailer;
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

pub use error::{EXTRA_TYPES_MESSAGE, InternalError, UserError};
pub use input::{
    Credentials, Email, MailOptions, NewUser, Params, PasswordForm, Scope, UserId, UserPatch,
    Username,
};
pub use oauth::{LinkFields, LinkedUser, ProviderInfo};
pub use password::{HashParams, PasswordHasher};
pub use query::UserQuery;
pub use throttle::{ClientAddress, ThrottleSettings};

/// A user as callers see it (compat §2): never the password or its hash.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct User {
    pub user_id: Uuid,
    pub username: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    pub group: String,
    pub extra: Map<String, Value>,
    pub scope: String,
    pub active: bool,
    /// `"pending"` or `"failed"`; absent once confirmed or when never asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirmation: Option<String>,
    pub validated: bool,
    /// Unix seconds.
    pub created: i64,
    pub updated: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_login: Option<i64>,
    pub login_count: i64,
}

impl User {
    /// About how many bytes the record takes as JSON (its `extra` walked, the rest estimated),
    /// known before it is converted into Lua or written out.
    pub fn size_hint(&self) -> usize {
        fn size(value: &Value) -> usize {
            match value {
                Value::String(s) => s.len() + 2,
                Value::Array(items) => 2 + items.iter().map(size).sum::<usize>(),
                Value::Object(map) => {
                    2 + map
                        .iter()
                        .map(|(k, v)| k.len() + 4 + size(v))
                        .sum::<usize>()
                }
                _ => 8,
            }
        }
        let texts = self.username.len() + self.email.as_ref().map_or(0, String::len);
        let extra: usize = self.extra.iter().map(|(k, v)| k.len() + 4 + size(v)).sum();
        300 + texts + self.group.len() + self.scope.len() + extra
    }
}

/// The users module's choices where Coronium's behaviour is a trade-off (`[users]`).
#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsersSettings {
    /// Whether a client may log in over the wire by provider account (`{provider, client_id}`)
    /// alone, as Coronium allows and device-as-user apps rely on. Off: only server code can.
    pub wire_oauth_login: bool,
    /// The most rows `getWithQuery` and `getGroup` return.
    pub max_query_limit: i64,
    /// The largest a user's whole `extra` may grow, in bytes of JSON text (each create or
    /// update carries at most 16 KiB; updates merge).
    pub extra_max_bytes: u32,
    /// The most keys a user's whole `extra` may hold.
    pub extra_max_keys: u32,
    /// Sign-ups (`create`, `register`) one client address may make per minute, across every
    /// worker (0: no limit). Server code with no client behind it is not counted.
    pub sign_ups_per_address_per_minute: u32,
}

impl Default for UsersSettings {
    fn default() -> Self {
        UsersSettings {
            wire_oauth_login: true,
            max_query_limit: query::MAX_LIMIT,
            extra_max_bytes: 64 * 1024,
            extra_max_keys: 1000,
            sign_ups_per_address_per_minute: 30,
        }
    }
}

impl UsersSettings {
    /// The answer to a create or update whose `extra` would pass the bound (801).
    fn extra_too_large(&self) -> UserError {
        UserError::bad(format!(
            "The user's extra data would be larger than {} bytes or {} keys.",
            self.extra_max_bytes, self.extra_max_keys
        ))
    }

    /// Checks a new user's whole `extra` (updates are checked in their statement).
    fn check_new_extra(&self, extra: &serde_json::Map<String, Value>) -> Result<(), UserError> {
        let bytes = serde_json::to_string(extra).map_or(usize::MAX, |s| s.len());
        if extra.len() > self.extra_max_keys as usize || bytes > self.extra_max_bytes as usize {
            return Err(self.extra_too_large());
        }
        Ok(())
    }
}

/// Our own failure while creating a user becomes Coronium's 601 `User could not be created.`
/// (users spec §2), with the cause in the log; the caller's mistakes keep their status, and an
/// unreachable database its "try again shortly" (810).
fn not_created(error: UserError, operation: &'static str) -> UserError {
    match error {
        // An unreachable database keeps its own answer: the caller should try again shortly.
        UserError::Internal(cause) if !cause.is_transient() => {
            tracing::error!(error = %cause, operation, "the user could not be stored");
            UserError::NotCreated
        }
        other => other,
    }
}

/// Where an operation looks for a user it is given by id.
#[derive(Debug, Clone, Copy)]
pub enum Within<'a> {
    /// The caller's scope: the wire, and Lua's table forms (`get{user_id}`).
    Scope(&'a Scope),
    /// Any scope: server code naming a user by id alone (`get(id)`, `update(id, t)`,
    /// `delete(id)`). Ids are global, and Coronium code registers users into one scope and then
    /// acts on them by id (users spec §1).
    AnyScope,
}

impl<'a> Within<'a> {
    fn scope(self) -> Option<&'a str> {
        match self {
            Within::Scope(scope) => Some(scope.as_str()),
            Within::AnyScope => None,
        }
    }
}

/// The users service: one per database handle, sharing one password hasher process-wide.
#[derive(Clone)]
pub struct Users {
    db: DbHandle,
    hasher: Arc<PasswordHasher>,
    mailer: Mailer,
    throttle: ThrottleSettings,
    settings: UsersSettings,
    /// Sign-ups per client address, shared by every worker's `Users`.
    sign_ups: Arc<crate::rate::PerMinute>,
}

impl Users {
    /// `mailer` queues confirmation and reset mail, with links to its public URL.
    pub fn new(db: DbHandle, hasher: Arc<PasswordHasher>, mailer: Mailer) -> Self {
        Users {
            db,
            hasher,
            mailer,
            throttle: ThrottleSettings::default(),
            settings: UsersSettings::default(),
            sign_ups: Arc::new(crate::rate::PerMinute::new(0)),
        }
    }

    /// Counts sign-ups against `budget` (one per process, made for the settings' limit).
    pub fn with_sign_up_budget(mut self, budget: Arc<crate::rate::PerMinute>) -> Self {
        self.sign_ups = budget;
        self
    }

    /// Counts one sign-up from `client`; refused (810) past its budget, before any hashing.
    pub fn admit_sign_up(&self, client: &ClientAddress) -> Result<(), UserError> {
        if client.is_local() || self.sign_ups.allow(client.as_str()) {
            Ok(())
        } else {
            Err(UserError::TooManySignUps)
        }
    }

    /// Replaces the default failed-login throttle settings.
    pub fn with_login_throttle(mut self, settings: ThrottleSettings) -> Self {
        self.throttle = settings;
        self
    }

    /// Replaces the default `[users]` settings.
    pub fn with_settings(mut self, settings: UsersSettings) -> Self {
        self.settings = settings;
        self
    }

    pub fn settings(&self) -> UsersSettings {
        self.settings
    }

    /// The stored form of a password, when one was given.
    async fn hash_if_given(
        &self,
        secret: Option<&password::Secret>,
    ) -> Result<Option<String>, UserError> {
        match secret {
            Some(secret) => Ok(Some(
                self.hasher
                    .hash(secret)
                    .await
                    .map_err(UserError::Internal)?,
            )),
            None => Ok(None),
        }
    }

    /// Creates a user; with `confirmation`, the user starts inactive and pending, and the
    /// confirmation mail is queued in the same transaction (see [`mail`]).
    /// A failure to store the user is 601 (users spec §2; the cause is logged).
    pub async fn create(&self, scope: &Scope, new_user: NewUser) -> Result<User, UserError> {
        self.settings.check_new_extra(&new_user.extra)?;
        let password_hash = self
            .hash_if_given(new_user.secret.as_ref())
            .await
            .map_err(|e| not_created(e, "create"))?;
        if new_user.confirmation.is_some() {
            return self
                .create_pending(scope, &new_user, password_hash.as_deref())
                .await
                .map_err(|e| not_created(e, "create"));
        }
        let (scope, new_user_ref, hash) = (scope.as_str(), &new_user, password_hash.as_deref());
        self.db
            .write(|client| async move {
                store::insert(&*client, scope, new_user_ref, hash, None).await
            })
            .await
            .map_err(|e| not_created(e, "create"))
    }

    /// Registers a user (users spec §2): active and confirmed, under a made-up name when none
    /// was given; answers its id. With `login`, a login is recorded along with the join. A
    /// failure to store it is 601 (the cause is logged).
    pub async fn register(
        &self,
        scope: &Scope,
        registration: input::Registration,
    ) -> Result<Uuid, UserError> {
        let input::Registration {
            mut user,
            anonymous,
            login,
        } = registration;
        self.settings.check_new_extra(&user.extra)?;
        let password_hash = self.hash_if_given(user.secret.as_ref()).await?;
        let mut collisions = 0;
        let created = loop {
            if anonymous {
                let made_up = Uuid::new_v4().simple().to_string();
                user.username =
                    Username::parse(&format!("{}{}", input::ANONYMOUS_PREFIX, &made_up[..12]))?;
            }
            let (scope, user_ref, hash) = (scope.as_str(), &user, password_hash.as_deref());
            let inserted = self
                .db
                .write(|client| async move {
                    store::insert(&*client, scope, user_ref, hash, None).await
                })
                .await;
            match inserted {
                // A made-up name already taken (1 in 2^48 per user): make up another.
                Err(UserError::AlreadyExists(what))
                    if anonymous && what.starts_with("Username") && collisions < 3 =>
                {
                    collisions += 1;
                }
                other => break other.map_err(|e| not_created(e, "register"))?,
            }
        };
        if login {
            let id = created.user_id;
            self.db
                .write(|client| async move { store::record_passwordless_login(&*client, id).await })
                .await?;
        }
        Ok(created.user_id)
    }

    /// Logs a user in by id alone, in any scope (server code only: users spec §3); the login
    /// event for active, confirmed users, the record either way. A malformed id is not found.
    pub async fn login_by_id(&self, user_id: Option<UserId>) -> Result<User, UserError> {
        let id = user_id.ok_or(UserError::NotFound)?.uuid();
        self.db
            .write(|client| async move { store::record_passwordless_login(&*client, id).await })
            .await?
            .ok_or(UserError::NotFound)
    }

    /// Logs a user in by username alone, in `scope`, with no password (server code only: users
    /// spec §3); the login event for active, confirmed users. 604 when nobody has that name.
    pub async fn login_by_username(
        &self,
        scope: &Scope,
        username: &str,
    ) -> Result<User, UserError> {
        let login = input::Login::Username(username.to_owned());
        let (scope, login) = (scope.as_str(), &login);
        let candidate = self
            .db
            .read(|client| async move { store::find_for_login(&*client, scope, login).await })
            .await?
            .ok_or(UserError::NotFound)?;
        let id = candidate.user_id;
        self.db
            .write(|client| async move { store::record_passwordless_login(&*client, id).await })
            .await?
            .ok_or(UserError::NotFound)
    }

    /// Logs a user in by username or email. Unknown users and wrong passwords are answered alike
    /// (603) after the same amount of hashing work. Inactive or pending users get their record
    /// (`active = false`, `validated = false`) and no login event. Attempts pass the failed-login
    /// throttle first, counted from `client` (see [`throttle`]).
    pub async fn login(
        &self,
        scope: &Scope,
        credentials: Credentials,
        client: &ClientAddress,
    ) -> Result<User, UserError> {
        let (scope_ref, login) = (scope.as_str(), &credentials.login);
        let (candidate, throttled_as) = if self.throttle.enabled && !client.is_local() {
            let (address, limits) = (client, &self.throttle);
            let attempt = self
                .db
                .write(|client| async move {
                    store::attempt_login(&*client, scope_ref, login, address, limits).await
                })
                .await?;
            if attempt.wait_secs > 0.0 {
                return Err(UserError::TooManyAttempts(throttle::wait_secs(
                    attempt.wait_secs,
                )));
            }
            (attempt.candidate, Some(attempt.account))
        } else {
            let candidate = self
                .db
                .read(
                    |client| async move { store::find_for_login(&*client, scope_ref, login).await },
                )
                .await?;
            (candidate, None)
        };
        let stored = candidate.as_ref().and_then(|c| c.password_hash.as_deref());
        let verdict = self
            .hasher
            .verify(&credentials.secret, stored)
            .await
            .map_err(UserError::Internal)?;
        if stored.is_none()
            && candidate.is_some()
            && credentials.form == input::PasswordForm::Canonical
        {
            // Registered without a password: only server code can log this user in.
            return Err(UserError::ServerSideLoginRequired);
        }
        let Some((candidate, verified)) = candidate
            .filter(|_| verdict.matched)
            .and_then(|c| c.password_hash.clone().map(|hash| (c, hash)))
        else {
            return Err(UserError::BadCredentials);
        };
        let network = client.network();
        let release = throttled_as.as_deref().map(|account| store::Release {
            scope: scope_ref,
            account,
            address: client.as_str(),
            network: network.as_deref(),
        });
        let rehash = if verdict.needs_rehash {
            Some(
                self.hasher
                    .hash(&credentials.secret)
                    .await
                    .map_err(UserError::Internal)?,
            )
        } else {
            None
        };
        if candidate.records_login {
            let (id, hash, rehash) = (candidate.user_id, verified.as_str(), &rehash);
            let release = release.as_ref();
            self.db
                .write(|client| async move {
                    store::record_login(&*client, id, hash, rehash.as_deref(), release).await
                })
                .await?
                .ok_or(UserError::BadCredentials)
        } else {
            if let Some(release) = &release {
                self.db
                    .write(|client| async move { store::login_succeeded(&*client, release).await })
                    .await?;
            }
            if let Some(new_hash) = &rehash {
                let (id, hash) = (candidate.user_id, verified.as_str());
                self.db
                    .write(|client| async move {
                        store::replace_hash(&*client, id, hash, new_hash).await
                    })
                    .await?;
            }
            let (scope, id) = (scope.as_str(), candidate.user_id);
            self.db
                .read(|client| async move { store::get(&*client, Some(scope), id).await })
                .await?
                .ok_or(UserError::BadCredentials)
        }
    }

    /// A user's record; no login event. `None` (a malformed id) is simply not found.
    pub async fn get(
        &self,
        within: Within<'_>,
        user_id: Option<UserId>,
    ) -> Result<User, UserError> {
        let user_id = user_id.ok_or(UserError::NotFound)?;
        let scope = within.scope();
        self.db
            .read(|client| async move { store::get(&*client, scope, user_id.uuid()).await })
            .await?
            .ok_or(UserError::NotFound)
    }

    /// The users of `scope` that `query` matches (`getWithQuery`, `getGroup`); no events.
    pub async fn query(&self, scope: &Scope, query: &UserQuery) -> Result<Vec<User>, UserError> {
        let count = query.count.min(self.settings.max_query_limit.max(1));
        self.db
            .read(
                |client| async move { store::query(&*client, scope.as_str(), query, count).await },
            )
            .await
    }

    /// Clears the failed-login counters of the account `name` (username or email) finds in
    /// `scope`, from every address; the number of counters removed.
    pub async fn unlock(&self, scope: &Scope, name: &str) -> Result<u64, UserError> {
        let scope = scope.as_str();
        self.db
            .write(|client| async move { store::unlock(&*client, scope, name).await })
            .await
    }

    /// Drops failed-login counters that no longer count (run now and then; any instance will do).
    pub async fn forget_old_login_failures(&self) -> Result<u64, UserError> {
        let window = self.throttle.window_secs;
        self.db
            .write(|client| async move { store::forget_old_login_failures(&*client, window).await })
            .await
    }

    /// Applies `patch` and returns the updated record.
    pub async fn update(
        &self,
        within: Within<'_>,
        user_id: Option<UserId>,
        patch: UserPatch,
    ) -> Result<User, UserError> {
        let user_id = user_id.ok_or(UserError::NotFound)?;
        let password_hash = self.hash_if_given(patch.secret.as_ref()).await?;
        let (patch, hash, scope) = (&patch, password_hash.as_deref(), within.scope());
        let bound = store::ExtraBound {
            bytes: i64::from(self.settings.extra_max_bytes),
            keys: i64::from(self.settings.extra_max_keys),
        };
        let updated = self
            .db
            .write(|client| async move {
                store::update(&*client, scope, user_id.uuid(), patch, hash, bound).await
            })
            .await?;
        match updated {
            store::Updated::User(user) => Ok(*user),
            store::Updated::NotFound => Err(UserError::NotFound),
            store::Updated::ExtraTooLarge => Err(self.settings.extra_too_large()),
        }
    }

    /// Deletes a user; the number of records removed (0 when there was none).
    pub async fn delete(
        &self,
        within: Within<'_>,
        user_id: Option<UserId>,
    ) -> Result<u64, UserError> {
        let Some(user_id) = user_id else {
            return Ok(0);
        };
        let scope = within.scope();
        self.db
            .write(|client| async move { store::delete(&*client, scope, user_id.uuid()).await })
            .await
    }
}
