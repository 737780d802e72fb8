//! The console's SQL: admins, sessions, the audit trail, user search and the dashboard's figures.
//! Every function takes a client, so callers choose the connection (shared or a transaction).

use deadpool_postgres::GenericClient;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::AdminError;

/// An admin account as `admin list` and the console show it.
#[derive(Debug, Clone, Serialize)]
pub struct AdminAccount {
    pub name: String,
    /// Unix seconds.
    pub created: i64,
    pub last_login: Option<i64>,
}

pub async fn add_admin(
    client: &impl GenericClient,
    name: &str,
    password_hash: &str,
) -> Result<bool, AdminError> {
    let added = client
        .execute(
            "INSERT INTO admins (name, password_hash) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&name, &password_hash],
        )
        .await?;
    Ok(added == 1)
}

/// Replaces an admin's password and ends their sessions; false when there is no such admin.
pub async fn set_password(
    client: &impl GenericClient,
    name: &str,
    password_hash: &str,
) -> Result<bool, AdminError> {
    let changed = client
        .query_opt(
            "WITH a AS (UPDATE admins SET password_hash = $2 WHERE name = $1 RETURNING name),
                  s AS (DELETE FROM admin_sessions WHERE admin IN (SELECT name FROM a))
             SELECT name FROM a",
            &[&name, &password_hash],
        )
        .await?;
    Ok(changed.is_some())
}

pub async fn remove_admin(client: &impl GenericClient, name: &str) -> Result<bool, AdminError> {
    Ok(client
        .execute("DELETE FROM admins WHERE name = $1", &[&name])
        .await?
        == 1)
}

pub async fn list_admins(client: &impl GenericClient) -> Result<Vec<AdminAccount>, AdminError> {
    let rows = client
        .query(
            "SELECT name, extract(epoch FROM created)::bigint,
                    extract(epoch FROM last_login)::bigint
             FROM admins ORDER BY name",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| AdminAccount {
            name: row.get(0),
            created: row.get(1),
            last_login: row.get(2),
        })
        .collect())
}

pub async fn password_hash(
    client: &impl GenericClient,
    name: &str,
) -> Result<Option<String>, AdminError> {
    Ok(client
        .query_opt("SELECT password_hash FROM admins WHERE name = $1", &[&name])
        .await?
        .map(|row| row.get(0)))
}

/// Counts a login attempt against the admin account `name` from `address` with the users'
/// throttle function (migration 0002), under scope '' where no user lives; the seconds to wait
/// (0: the attempt may check its password).
pub async fn login_attempt(
    client: &impl GenericClient,
    name: &str,
    address: &crate::users::ClientAddress,
) -> Result<f64, AdminError> {
    const WINDOW_SECS: i32 = 15 * 60;
    const PER_ACCOUNT_ADDRESS: i32 = 5;
    const PER_ACCOUNT: i32 = 20;
    const PER_ADDRESS: i32 = 300;
    const MAX_DELAY_SECS: i32 = 15 * 60;
    let row = client
        .query_one(
            "SELECT coronium_login_attempt('console', '', 'admin:' || $1, $2, $8, $3, $4, $5, $6, $9, $7)",
            &[
                &name,
                &address.as_str(),
                &WINDOW_SECS,
                &PER_ACCOUNT_ADDRESS,
                &PER_ACCOUNT,
                &PER_ADDRESS,
                &MAX_DELAY_SECS,
                &address.network(),
                &(PER_ADDRESS * 4),
            ],
        )
        .await?;
    Ok(row.get(0))
}

/// A successful login: forgets the account's failures, knows its address from now on, records
/// the login and opens a session.
pub async fn open_session(
    client: &impl GenericClient,
    name: &str,
    address: &str,
    token_hash: &[u8],
    csrf: &str,
    absolute_secs: i64,
) -> Result<(), AdminError> {
    client
        .execute(
            "WITH f AS (DELETE FROM login_failures WHERE scope = '' AND account = 'admin:' || $1),
                  k AS (INSERT INTO login_known (scope, account, address)
                        VALUES ('', 'admin:' || $1, $5)
                        ON CONFLICT (scope, account, address) DO UPDATE SET last_success = now()),
                  a AS (UPDATE admins SET last_login = now() WHERE name = $1)
             INSERT INTO admin_sessions (token_hash, admin, csrf, expires)
             VALUES ($2, $1, $3, now() + make_interval(secs => $4))",
            &[&name, &token_hash, &csrf, &(absolute_secs as f64), &address],
        )
        .await?;
    Ok(())
}

/// How stale `last_seen` may get before a request writes it again: most requests then only
/// read, and a busy session's requests do not queue on its row lock.
const SESSION_TOUCH_SECS: f64 = 30.0;

/// The session a token opens, if it is still alive (not past its absolute end and used within
/// `idle_secs`); marks it used (to within [`SESSION_TOUCH_SECS`]).
pub async fn touch_session(
    client: &impl GenericClient,
    token_hash: &[u8],
    idle_secs: i64,
) -> Result<Option<(String, String)>, AdminError> {
    let row = client
        .query_opt(
            "WITH alive AS (
               SELECT admin, csrf, last_seen FROM admin_sessions
               WHERE token_hash = $1 AND expires > now()
                 AND last_seen > now() - make_interval(secs => $2)),
             touched AS (
               UPDATE admin_sessions SET last_seen = now()
               WHERE token_hash = $1 AND last_seen < now() - make_interval(secs => $3)
                 AND EXISTS (SELECT 1 FROM alive))
             SELECT admin, csrf FROM alive",
            &[&token_hash, &(idle_secs as f64), &SESSION_TOUCH_SECS],
        )
        .await?;
    Ok(row.map(|row| (row.get(0), row.get(1))))
}

pub async fn close_session(
    client: &impl GenericClient,
    token_hash: &[u8],
) -> Result<(), AdminError> {
    client
        .execute(
            "DELETE FROM admin_sessions WHERE token_hash = $1",
            &[&token_hash],
        )
        .await?;
    Ok(())
}

/// Drops sessions past their end (now and then; any instance will do).
pub async fn forget_dead_sessions(
    client: &impl GenericClient,
    idle_secs: i64,
) -> Result<u64, AdminError> {
    Ok(client
        .execute(
            "DELETE FROM admin_sessions
             WHERE expires < now() OR last_seen < now() - make_interval(secs => $1)",
            &[&(idle_secs as f64)],
        )
        .await?)
}

/// One change an admin made.
pub struct AuditEntry<'a> {
    pub admin: &'a str,
    pub action: &'a str,
    pub scope: Option<&'a str>,
    pub user_id: Option<Uuid>,
    pub detail: Value,
}

pub async fn audit(client: &impl GenericClient, entry: &AuditEntry<'_>) -> Result<(), AdminError> {
    client
        .execute(
            "INSERT INTO admin_audit (admin, action, scope, user_id, detail)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &entry.admin,
                &entry.action,
                &entry.scope,
                &entry.user_id,
                &entry.detail,
            ],
        )
        .await?;
    Ok(())
}

/// An audit row as the audit page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRow {
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    pub admin: String,
    pub action: String,
    pub scope: Option<String>,
    pub user_id: Option<Uuid>,
    pub detail: String,
}

/// The newest entries, older than `before` when given.
pub async fn audit_page(
    client: &impl GenericClient,
    before: Option<i64>,
    count: i64,
) -> Result<Vec<AuditRow>, AdminError> {
    let rows = client
        .query(
            "SELECT id, extract(epoch FROM at)::bigint, admin, action, scope, user_id, detail::text
             FROM admin_audit WHERE id < $1 ORDER BY id DESC LIMIT $2",
            &[&before.unwrap_or(i64::MAX), &count],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| AuditRow {
            id: row.get(0),
            at: row.get(1),
            admin: row.get(2),
            action: row.get(3),
            scope: row.get(4),
            user_id: row.get(5),
            detail: row.get(6),
        })
        .collect())
}

/// Which field a search's text is a prefix of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchField {
    Username,
    Email,
}

/// A user's state as the list filters it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserState {
    Active,
    Inactive,
    Pending,
}

impl UserState {
    pub fn parse(value: &str) -> Option<UserState> {
        Some(match value {
            "active" => UserState::Active,
            "inactive" => UserState::Inactive,
            "pending" => UserState::Pending,
            _ => return None,
        })
    }
}

/// One page of the users list: a prefix of one field, filters, and where the last page ended.
#[derive(Debug, Clone, Default)]
pub struct UserSearch {
    pub scope: String,
    /// Lower-cased prefix; empty: every user.
    pub prefix: String,
    pub field: Option<SearchField>,
    pub group: Option<String>,
    pub state: Option<UserState>,
    /// The sort key (lower-cased username or email) of the last row of the previous page.
    pub after: Option<String>,
}

/// A row of the users list.
#[derive(Debug, Clone, Serialize)]
pub struct UserRow {
    pub user_id: Uuid,
    pub username: String,
    pub email: Option<String>,
    pub group: String,
    pub active: bool,
    pub confirmation: Option<String>,
    pub created: i64,
    pub last_login: Option<i64>,
    pub login_count: i64,
    /// The keyset cursor of this row.
    #[serde(skip)]
    pub key: String,
}

/// Larger than any character a name can hold: the upper end of a prefix's range in byte order.
const BEYOND: char = '\u{10FFFF}';

/// The statement of a users page (public for the test that checks its plan): parameters are
/// scope, prefix, the prefix's upper bound, limit, group (or NULL), cursor (or NULL).
pub fn search_sql(field: SearchField, state: Option<UserState>) -> String {
    let key = match field {
        SearchField::Username => r#"lower(username) COLLATE "C""#,
        SearchField::Email => r#"lower(email) COLLATE "C""#,
    };
    let mut sql = format!(
        r#"SELECT user_id, username, email, "group", active, confirmation,
                  extract(epoch FROM created)::bigint, extract(epoch FROM last_login)::bigint,
                  login_count, {key}
           FROM users
           WHERE scope = $1 AND {key} >= $2 AND {key} < $3 AND {key} > COALESCE($6, '')
             AND ($5::text IS NULL OR "group" = $5)"#
    );
    if field == SearchField::Email {
        sql.push_str(" AND email IS NOT NULL");
    }
    sql.push_str(match state {
        None => "",
        Some(UserState::Active) => " AND active",
        Some(UserState::Inactive) => " AND NOT active AND confirmation IS NULL",
        Some(UserState::Pending) => " AND confirmation IS NOT NULL",
    });
    sql.push_str(&format!(" ORDER BY {key} LIMIT $4"));
    sql
}

/// The upper end of the range of keys that start with `prefix`.
pub fn prefix_end(prefix: &str) -> String {
    format!("{prefix}{BEYOND}")
}

/// A page of users in keyset order: the prefix is a range of a "C"-collated index (migration
/// 0006), so a search reads only the rows it shows whatever the table's size.
pub async fn search_users(
    client: &impl GenericClient,
    search: &UserSearch,
    count: i64,
) -> Result<Vec<UserRow>, AdminError> {
    let sql = search_sql(search.field.unwrap_or(SearchField::Username), search.state);
    let upper = prefix_end(&search.prefix);
    let stmt = client.prepare_cached(&sql).await?;
    let rows = client
        .query(
            &stmt,
            &[
                &search.scope,
                &search.prefix,
                &upper,
                &count,
                &search.group,
                &search.after,
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| UserRow {
            user_id: row.get(0),
            username: row.get(1),
            email: row.get(2),
            group: row.get(3),
            active: row.get(4),
            confirmation: row.get(5),
            created: row.get(6),
            last_login: row.get(7),
            login_count: row.get(8),
            key: row.get(9),
        })
        .collect())
}

/// Users of a scope by state.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScopeTotals {
    pub total: i64,
    pub active: i64,
    pub pending: i64,
}

pub async fn scope_totals(
    client: &impl GenericClient,
    scope: &str,
) -> Result<ScopeTotals, AdminError> {
    let row = client
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE active),
                    count(*) FILTER (WHERE confirmation IS NOT NULL)
             FROM users WHERE scope = $1",
            &[&scope],
        )
        .await?;
    Ok(ScopeTotals {
        total: row.get(0),
        active: row.get(1),
        pending: row.get(2),
    })
}

/// One day's joins, logins and app opens.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DayFigures {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    pub joins: i64,
    pub logins: i64,
    /// `api.analytics` `appOpened` calls (rolled up).
    pub opens: i64,
}

/// The last `days` days (UTC), today included, oldest first; days without activity are zero.
pub async fn daily_figures(
    client: &impl GenericClient,
    scope: &str,
    days: i32,
) -> Result<Vec<DayFigures>, AdminError> {
    let rows = client
        .query(
            "SELECT to_char(d.day, 'YYYY-MM-DD'), COALESCE(s.joins, 0), COALESCE(s.logins, 0),
                    COALESCE(a.count, 0)::bigint
             FROM generate_series((now() AT TIME ZONE 'UTC')::date - ($2 - 1),
                                  (now() AT TIME ZONE 'UTC')::date, interval '1 day') AS d(day)
             LEFT JOIN user_stats_daily s ON s.scope = $1 AND s.day = d.day::date
             LEFT JOIN analytics_daily a ON a.scope = $1 AND a.day = d.day::date
                                        AND a.metric = 'opens' AND a.key = ''
             ORDER BY d.day",
            &[&scope, &days],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| DayFigures {
            day: row.get(0),
            joins: row.get(1),
            logins: row.get(2),
            opens: row.get(3),
        })
        .collect())
}

/// The scopes the console offers, those starting with `prefix` (`""`: all): `default` first,
/// then the scopes with the most sign-ups, then the rest of those that have users (a skip scan
/// of the users' scope index, from the prefix on); at most [`MAX_SCOPES_LISTED`]. Made-up
/// scopes, however many, come after the ones with players, and any scope is found by its name.
pub async fn scopes(client: &impl GenericClient, prefix: &str) -> Result<Vec<String>, AdminError> {
    let rows = client
        .query(
            "WITH RECURSIVE walk(scope, n) AS (
               (SELECT scope, 1 FROM users WHERE scope >= $1 ORDER BY scope LIMIT 1)
               UNION ALL
               SELECT (SELECT u.scope FROM users u WHERE u.scope > w.scope
                       ORDER BY u.scope LIMIT 1), w.n + 1
               FROM walk w WHERE w.scope IS NOT NULL AND w.n < $2
             ),
             found(scope, weight) AS (
               SELECT scope, 0::numeric FROM walk
               WHERE scope IS NOT NULL AND starts_with(scope, $1)
               UNION ALL
               SELECT scope, sum(joins) FROM user_stats_daily
               WHERE starts_with(scope, $1) GROUP BY scope
               UNION ALL
               SELECT 'default', 1e30 WHERE starts_with('default', $1)
             )
             SELECT scope FROM found GROUP BY scope ORDER BY max(weight) DESC, scope LIMIT $2",
            &[&prefix, &MAX_SCOPES_LISTED],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// The most scopes the picker and the Scopes page list at once.
pub const MAX_SCOPES_LISTED: i32 = 100;

/// Failed-login counters that hold a user back now (any address).
pub async fn login_failures(client: &impl GenericClient, user_id: Uuid) -> Result<i64, AdminError> {
    let row = client
        .query_one(
            "SELECT COALESCE(sum(failures), 0)::bigint FROM login_failures
             WHERE account = $1::uuid::text AND address = ''",
            &[&user_id],
        )
        .await?;
    Ok(row.get(0))
}
