//! Versioned SQL migrations, applied at start in one transaction under an advisory lock, so two
//! processes starting at once never both migrate.

use tokio_postgres::Client;

/// (version, name, SQL). Append only: a released migration never changes.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "users", include_str!("../../migrations/0001_users.sql")),
    (
        2,
        "login throttle",
        include_str!("../../migrations/0002_login_throttle.sql"),
    ),
    (
        3,
        "auth providers",
        include_str!("../../migrations/0003_auth_providers.sql"),
    ),
    (
        4,
        "password-less users",
        include_str!("../../migrations/0004_passwordless_users.sql"),
    ),
    (5, "mail", include_str!("../../migrations/0005_mail.sql")),
    (
        6,
        "console",
        include_str!("../../migrations/0006_console.sql"),
    ),
    (
        7,
        "analytics",
        include_str!("../../migrations/0007_analytics.sql"),
    ),
    (
        8,
        "scope permissions",
        include_str!("../../migrations/0008_scope_permissions.sql"),
    ),
    (
        9,
        "links bound to their address",
        include_str!("../../migrations/0009_bound_links.sql"),
    ),
    (
        10,
        "known login addresses",
        include_str!("../../migrations/0010_known_addresses.sql"),
    ),
    (
        11,
        "mail fairness",
        include_str!("../../migrations/0011_mail_fairness.sql"),
    ),
    (
        12,
        "extra key count",
        include_str!("../../migrations/0012_extra_keys.sql"),
    ),
];

/// Arbitrary constant naming "coronium schema migration" among advisory locks.
const MIGRATION_LOCK_KEY: i64 = 0x636f_726f_6e69_756d;

/// Applies the migrations this database lacks; returns the versions applied.
pub async fn run(client: &mut Client) -> Result<Vec<i32>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    // Keep "already exists, skipping" notices out of the log.
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    integer     PRIMARY KEY,
             name       text        NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut newly = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        newly.push(*version);
    }
    tx.commit().await?;
    Ok(newly)
}

/// The newest schema version this binary knows.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}
