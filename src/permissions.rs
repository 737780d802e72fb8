//! Client permissions per scope (users spec §9): which wire actions of the built-in modules a
//! client may call in a scope. Every action is allowed unless the console denied it.
//!
//! Every wire call of `api.users` and `api.analytics` asks, so the denials are kept in memory: one
//! snapshot per process, reloaded (by whichever worker asks, on its own database handle) when
//! older than [`FRESH_FOR`] or when this process changed them. Another instance sees a change
//! within that time.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::GenericClient;

use crate::db::DbHandle;

/// How long a snapshot is trusted before it is read again.
pub const FRESH_FOR: Duration = Duration::from_secs(2);

/// The wire actions a scope's permissions cover, by module (v2 names).
pub const MODULE_ACTIONS: &[(&str, &[&str])] = &[
    (
        "api.users",
        &[
            "login",
            "get",
            "create",
            "update",
            "delete",
            "resendConfirmation",
            "addAuthProvider",
            "getAuthProvider",
            "updateAuthProvider",
            "updateTokenExpiry",
            "accessTokenExpired",
            "removeAuthProvider",
        ],
    ),
    ("api.analytics", &["appOpened", "event"]),
];

/// The answer to a denied action.
pub const DENIED_MESSAGE: &str = "Action not permitted for this scope.";

#[derive(Debug, thiserror::Error)]
pub enum PermissionError {
    #[error("unknown action {project}/{action}")]
    UnknownAction { project: String, action: String },
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database: {}", .0.as_db_error().map_or_else(|| .0.to_string(), |db| db.to_string()))]
    Postgres(#[from] tokio_postgres::Error),
}

impl crate::db::StatementError for PermissionError {
    fn postgres(&self) -> Option<&tokio_postgres::Error> {
        match self {
            PermissionError::Postgres(e) => Some(e),
            _ => None,
        }
    }
}

/// "scope\0project\0action": one lookup key, no tuple of strings to build per request.
fn key(scope: &str, project: &str, action: &str) -> String {
    format!("{scope}\0{project}\0{action}")
}

struct Snapshot {
    denied: Arc<HashSet<String>>,
    loaded: Option<Instant>,
}

/// The process's view of the denials. Cheap to share: clone the `Arc`.
pub struct Permissions {
    snapshot: Mutex<Snapshot>,
}

impl Default for Permissions {
    fn default() -> Self {
        Permissions {
            snapshot: Mutex::new(Snapshot {
                denied: Arc::default(),
                loaded: None,
            }),
        }
    }
}

impl Permissions {
    /// Whether a client may call `project`'s `action` (its v2 name) in `scope`.
    pub async fn allowed(
        &self,
        db: &DbHandle,
        scope: &str,
        project: &str,
        action: &str,
    ) -> Result<bool, PermissionError> {
        let denied = self.current(db).await?;
        Ok(denied.is_empty() || !denied.contains(&key(scope, project, action)))
    }

    async fn current(&self, db: &DbHandle) -> Result<Arc<HashSet<String>>, PermissionError> {
        let (denied, fresh) = {
            let snapshot = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
            let fresh = snapshot.loaded.is_some_and(|at| at.elapsed() < FRESH_FOR);
            (snapshot.denied.clone(), fresh)
        };
        if fresh {
            return Ok(denied);
        }
        match db.read(|client| async move { load(&*client).await }).await {
            Ok(loaded) => {
                let loaded = Arc::new(loaded);
                let mut snapshot = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
                snapshot.denied = loaded.clone();
                snapshot.loaded = Some(Instant::now());
                Ok(loaded)
            }
            // A database that does not answer fails the call anyway; keep what we knew.
            Err(e) if !denied.is_empty() => {
                tracing::warn!(error = %e, "cannot reload scope permissions; using the last ones");
                Ok(denied)
            }
            Err(e) => Err(e),
        }
    }

    /// Makes the next call read the denials again (after this process changed them).
    pub fn invalidate(&self) {
        self.snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .loaded = None;
    }
}

async fn load(client: &impl GenericClient) -> Result<HashSet<String>, PermissionError> {
    let rows = client
        .query(
            "SELECT scope, project, action FROM scope_denied_actions",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| key(r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// A scope's denied actions, by module.
pub async fn denied_in(
    db: &DbHandle,
    scope: &str,
) -> Result<BTreeMap<String, Vec<String>>, PermissionError> {
    let rows = db
        .read(|client| async move {
            Ok::<_, PermissionError>(
                client
                    .query(
                        "SELECT project, action FROM scope_denied_actions
                         WHERE scope = $1 ORDER BY project, action",
                        &[&scope],
                    )
                    .await?,
            )
        })
        .await?;
    let mut denied: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in rows {
        denied.entry(row.get(0)).or_default().push(row.get(1));
    }
    Ok(denied)
}

/// Replaces a scope's denials with `denied` ((project, action) pairs of [`MODULE_ACTIONS`]).
pub async fn set_denied(
    db: &DbHandle,
    scope: &str,
    denied: &[(String, String)],
) -> Result<(), PermissionError> {
    for (project, action) in denied {
        let known = MODULE_ACTIONS
            .iter()
            .any(|(p, actions)| p == project && actions.contains(&action.as_str()));
        if !known {
            return Err(PermissionError::UnknownAction {
                project: project.clone(),
                action: action.clone(),
            });
        }
    }
    let projects: Vec<&str> = denied.iter().map(|(p, _)| p.as_str()).collect();
    let actions: Vec<&str> = denied.iter().map(|(_, a)| a.as_str()).collect();
    let (projects, actions) = (&projects, &actions);
    db.transaction(async |tx| {
        tx.execute(
            "DELETE FROM scope_denied_actions WHERE scope = $1",
            &[&scope],
        )
        .await?;
        tx.execute(
            "INSERT INTO scope_denied_actions (scope, project, action)
             SELECT $1, p, a FROM unnest($2::text[], $3::text[]) AS t(p, a)",
            &[&scope, projects, actions],
        )
        .await?;
        Ok::<_, PermissionError>(())
    })
    .await
}
