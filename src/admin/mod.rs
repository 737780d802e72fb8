//! The operator's console (`/_coronium/admin/`) and the admin accounts behind it.
//!
//! `Console` is the service: admin accounts (made only from the command line: there is no
//! default password), sessions kept in PostgreSQL so every instance honours them, the audit
//! trail, and the pages (`pages.rs`, rendered from templates embedded in the binary). It knows
//! nothing of HTTP: `server/routes/console.rs` turns a request into a [`pages::ConsoleRequest`]
//! and the answer back.

mod chart;
pub mod pages;
pub mod projects;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use crate::analytics::Analytics;
use crate::db::DbHandle;
use crate::permissions::Permissions;
use crate::users::input::UserId;
use crate::users::password::Secret;
use crate::users::{InternalError, PasswordHasher, User, UserError, Users, Within};
use crate::vitals::Vitals;

pub use store::AdminAccount;

/// `[console]` in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleSettings {
    /// Serve the console under `/_coronium/admin/` (it refuses everyone until an admin exists).
    pub enabled: bool,
    /// A session unused this long ends.
    pub idle_minutes: u32,
    /// A session ends this long after its login, however busy.
    pub session_hours: u32,
    /// The sender of the password-reset mail the console sends.
    pub mail_from: String,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        ConsoleSettings {
            enabled: true,
            idle_minutes: 30,
            session_hours: 12,
            mail_from: "Coronium <no-reply@localhost>".into(),
        }
    }
}

impl ConsoleSettings {
    fn idle_secs(&self) -> i64 {
        i64::from(self.idle_minutes.max(1)) * 60
    }

    fn session_secs(&self) -> i64 {
        i64::from(self.session_hours.max(1)) * 3600
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("an admin's name is 1 to 64 letters, digits, '.', '_' or '-'")]
    BadName,
    #[error("a console password needs at least {MIN_PASSWORD_CHARS} characters")]
    WeakPassword,
    #[error("an admin named {0:?} already exists")]
    Exists(String),
    #[error("no admin is named {0:?}")]
    NoSuchAdmin(String),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("password hashing: {0}")]
    Hashing(String),
    #[error("console template: {0}")]
    Template(#[from] minijinja::Error),
    /// A users operation failed on our side (its cause, for the log).
    #[error("users: {0}")]
    Users(String),
}

impl From<AdminError> for UserError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::Pool(e) => UserError::Internal(InternalError::Pool(e)),
            AdminError::Postgres(e) => UserError::Internal(InternalError::Postgres(e)),
            other => UserError::Internal(InternalError::Hashing(other.to_string())),
        }
    }
}

impl crate::db::StatementError for AdminError {
    fn postgres(&self) -> Option<&tokio_postgres::Error> {
        match self {
            AdminError::Postgres(e) => Some(e),
            _ => None,
        }
    }
}

/// The shortest console password accepted.
pub const MIN_PASSWORD_CHARS: usize = 10;

/// Checks an admin's name: short and plain, since it shows up in logs and the audit trail.
pub fn valid_admin_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The console service, one per worker (on the worker's database handle).
#[derive(Clone)]
pub struct Console {
    db: DbHandle,
    hasher: Arc<PasswordHasher>,
    users: Users,
    analytics: Analytics,
    permissions: Arc<Permissions>,
    vitals: Arc<Vitals>,
    projects_dir: Arc<PathBuf>,
    settings: Arc<ConsoleSettings>,
    views: Arc<pages::Views>,
}

/// What the console works on: a worker's services and the process's shared state.
pub struct ConsoleParts {
    pub db: DbHandle,
    pub hasher: Arc<PasswordHasher>,
    pub users: Users,
    pub analytics: Analytics,
    pub permissions: Arc<Permissions>,
    pub vitals: Arc<Vitals>,
    /// Where the API projects the Projects page lists live.
    pub projects_dir: PathBuf,
}

impl Console {
    pub fn new(parts: ConsoleParts, settings: ConsoleSettings) -> Self {
        Console {
            db: parts.db,
            hasher: parts.hasher,
            users: parts.users,
            analytics: parts.analytics,
            permissions: parts.permissions,
            vitals: parts.vitals,
            projects_dir: Arc::new(parts.projects_dir),
            settings: Arc::new(settings),
            views: Arc::new(pages::Views::new()),
        }
    }

    pub fn settings(&self) -> &ConsoleSettings {
        &self.settings
    }

    async fn hash_password(&self, password: &str) -> Result<String, AdminError> {
        if password.chars().count() < MIN_PASSWORD_CHARS {
            return Err(AdminError::WeakPassword);
        }
        self.hasher
            .hash(&Secret::from_plain(password))
            .await
            .map_err(|e| AdminError::Hashing(e.to_string()))
    }

    /// `coronium admin add`: a new admin; the password is never logged.
    pub async fn add_admin(&self, name: &str, password: &str) -> Result<(), AdminError> {
        if !valid_admin_name(name) {
            return Err(AdminError::BadName);
        }
        let hash = self.hash_password(password).await?;
        let added = self
            .db
            .write(|client| {
                let hash = hash.clone();
                async move { store::add_admin(&*client, name, &hash).await }
            })
            .await?;
        if !added {
            return Err(AdminError::Exists(name.into()));
        }
        self.audit_cli("admin.add", name).await
    }

    /// `coronium admin passwd`: a new password; the admin's open sessions end.
    pub async fn set_admin_password(&self, name: &str, password: &str) -> Result<(), AdminError> {
        let hash = self.hash_password(password).await?;
        let changed = self
            .db
            .write(|client| {
                let hash = hash.clone();
                async move { store::set_password(&*client, name, &hash).await }
            })
            .await?;
        if !changed {
            return Err(AdminError::NoSuchAdmin(name.into()));
        }
        self.audit_cli("admin.passwd", name).await
    }

    /// `coronium admin remove`: the admin and their sessions go.
    pub async fn remove_admin(&self, name: &str) -> Result<(), AdminError> {
        let removed = self
            .db
            .write(|client| async move { store::remove_admin(&*client, name).await })
            .await?;
        if !removed {
            return Err(AdminError::NoSuchAdmin(name.into()));
        }
        self.audit_cli("admin.remove", name).await
    }

    pub async fn admins(&self) -> Result<Vec<AdminAccount>, AdminError> {
        self.db
            .read(|client| async move { store::list_admins(&*client).await })
            .await
    }

    async fn audit_cli(&self, action: &str, name: &str) -> Result<(), AdminError> {
        let entry = store::AuditEntry {
            admin: "(command line)",
            action,
            scope: None,
            user_id: None,
            detail: serde_json::json!({ "admin": name }),
        };
        self.db
            .write(|client| async move { store::audit(&*client, &entry).await })
            .await
    }

    /// A page of a scope's users by username (or by email when `search` has an '@').
    pub async fn list_users(
        &self,
        scope: &str,
        search: &str,
        after: Option<String>,
    ) -> Result<Vec<store::UserRow>, AdminError> {
        let search = search.trim().to_lowercase();
        let query = store::UserSearch {
            scope: scope.to_owned(),
            field: Some(match search.contains('@') {
                true => store::SearchField::Email,
                false => store::SearchField::Username,
            }),
            prefix: search,
            group: None,
            state: None,
            after,
        };
        let query = &query;
        self.db
            .read(|client| async move { store::search_users(&*client, query, 50).await })
            .await
    }

    /// `coronium users disable|enable ID`, audited.
    pub async fn set_user_active_from_cli(
        &self,
        id: UserId,
        active: bool,
    ) -> Result<User, UserError> {
        let patch = crate::users::input::UserPatch {
            active: Some(active),
            ..Default::default()
        };
        let user = self.users.update(Within::AnyScope, Some(id), patch).await?;
        let action = if active {
            "user.enable"
        } else {
            "user.disable"
        };
        self.audit_user_cli(action, &user, serde_json::json!({}))
            .await?;
        Ok(user)
    }

    /// `coronium users delete ID`, audited.
    pub async fn delete_user_from_cli(&self, id: UserId) -> Result<(), UserError> {
        let user = self.users.get(Within::AnyScope, Some(id)).await?;
        self.users.delete(Within::AnyScope, Some(id)).await?;
        let detail = serde_json::json!({ "username": user.username, "email": user.email });
        self.audit_user_cli("user.delete", &user, detail).await?;
        Ok(())
    }

    async fn audit_user_cli(
        &self,
        action: &str,
        user: &User,
        detail: serde_json::Value,
    ) -> Result<(), AdminError> {
        let entry = store::AuditEntry {
            admin: "(command line)",
            action,
            scope: Some(&user.scope),
            user_id: Some(user.user_id),
            detail,
        };
        let entry = &entry;
        self.db
            .write(|client| async move { store::audit(&*client, entry).await })
            .await
    }

    /// Drops ended sessions (run now and then by a worker).
    pub async fn forget_dead_sessions(&self) -> Result<u64, AdminError> {
        let idle = self.settings.idle_secs();
        self.db
            .write(|client| async move { store::forget_dead_sessions(&*client, idle).await })
            .await
    }
}
