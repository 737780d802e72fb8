//! All SQL of the users domain. Each operation that must be consistent is one statement: the
//! counters and statistics are bumped in the same statement as the row they count.

use deadpool_postgres::GenericClient;
use serde_json::{Map, Value};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use super::User;
use super::error::UserError;
use super::input::{Login, NewUser, UserPatch};
use super::query::UserQuery;
use super::throttle::{ClientAddress, ThrottleSettings};

/// The columns every query returns to build a [`User`], in [`user_from_row`]'s order.
macro_rules! user_columns {
    () => {
        r#"user_id, scope, username, email, "group", extra, active, confirmation,
           extract(epoch from created)::bigint, extract(epoch from updated)::bigint,
           extract(epoch from last_login)::bigint, login_count"#
    };
}

/// Today in UTC: the day the statistics are filed under.
macro_rules! today {
    () => {
        "(now() AT TIME ZONE 'UTC')::date"
    };
}

fn user_from_row(row: &Row) -> User {
    let active: bool = row.get(6);
    let confirmation: Option<String> = row.get(7);
    let extra = match row.get::<_, Value>(5) {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    User {
        user_id: row.get(0),
        scope: row.get(1),
        username: row.get(2),
        email: row.get(3),
        group: row.get(4),
        extra,
        validated: active && confirmation.is_none(),
        active,
        confirmation,
        created: row.get(8),
        updated: row.get(9),
        last_login: row.get(10),
        login_count: row.get(11),
    }
}

/// Maps a unique-index violation to Coronium's 600; other errors pass through.
/// The name of the unique index or constraint a statement violated, if that is why it failed.
fn unique_violated(e: &tokio_postgres::Error) -> Option<&str> {
    (e.code() == Some(&SqlState::UNIQUE_VIOLATION))
        .then(|| e.as_db_error().and_then(|d| d.constraint()).unwrap_or(""))
}

fn duplicate_to_600(e: tokio_postgres::Error) -> UserError {
    if let Some(constraint) = unique_violated(&e) {
        return UserError::AlreadyExists(if constraint.contains("email") {
            "Email already exists."
        } else {
            "Username already exists."
        });
    }
    e.into()
}

pub async fn insert(
    client: &impl GenericClient,
    scope: &str,
    user: &NewUser,
    password_hash: Option<&str>,
    confirmation: Option<PendingConfirmation<'_>>,
) -> Result<User, UserError> {
    let stmt = client
        .prepare_cached(concat!(
            r#"WITH ins AS (
                 INSERT INTO users (user_id, scope, username, email, "group", extra, password_hash,
                                    active, confirmation, confirmation_code, confirmation_options,
                                    confirmation_email)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,
                         CASE WHEN $10::text IS NOT NULL THEN $4 END)
                 RETURNING "#,
            user_columns!(),
            r#"), stat AS (
                 INSERT INTO user_stats_daily AS s (scope, day, joins)
                 SELECT $2, "#,
            today!(),
            r#", 1 FROM ins
                 ON CONFLICT (scope, day) DO UPDATE SET joins = s.joins + 1)
               SELECT * FROM ins"#
        ))
        .await?;
    let pending = confirmation.map(|_| "pending");
    let row = client
        .query_one(
            &stmt,
            &[
                &Uuid::now_v7(),
                &scope,
                &user.username,
                &user.email,
                &user.group,
                &Value::Object(user.extra.clone()),
                &password_hash,
                &confirmation.is_none(),
                &pending,
                &confirmation.map(|c| c.code_hash),
                &confirmation.map(|c| c.options),
            ],
        )
        .await
        .map_err(duplicate_to_600)?;
    Ok(user_from_row(&row))
}

/// What login needs to decide: the id, the stored hash, and whether the user may record a login.
pub struct LoginCandidate {
    pub user_id: Uuid,
    /// `None`: a user registered without a password.
    pub password_hash: Option<String>,
    pub records_login: bool,
}

pub async fn find_for_login(
    client: &impl GenericClient,
    scope: &str,
    login: &Login,
) -> Result<Option<LoginCandidate>, UserError> {
    let (sql, key) = match login {
        Login::Username(u) => (
            "SELECT user_id, password_hash, active AND confirmation IS NULL FROM users
             WHERE scope = $1 AND lower(username) = lower($2)",
            u,
        ),
        Login::Email(e) => (
            "SELECT user_id, password_hash, active AND confirmation IS NULL FROM users
             WHERE scope = $1 AND lower(email) = lower($2)",
            e,
        ),
    };
    let stmt = client.prepare_cached(sql).await?;
    let row = client.query_opt(&stmt, &[&scope, key]).await?;
    Ok(row.map(|row| LoginCandidate {
        user_id: row.get(0),
        password_hash: row.get(1),
        records_login: row.get(2),
    }))
}

/// What a throttled login attempt learned in one statement: the candidate, the key its failures
/// are counted under, and how long the client must wait first (0: it may check its password now,
/// and the attempt is already counted as a failure until the login's [`Release`] takes it back).
pub struct LoginAttempt {
    pub candidate: Option<LoginCandidate>,
    pub account: String,
    pub wait_secs: f64,
}

/// An IPv6 network (/48) may fail this many times what one address (/64) may.
const NETWORK_TIMES_ADDRESS: u32 = 4;

/// Finds the login's user and passes the attempt through the throttle
/// (`coronium_login_attempt`, migration 0002), both in one statement.
pub async fn attempt_login(
    client: &impl GenericClient,
    scope: &str,
    login: &Login,
    address: &ClientAddress,
    limits: &ThrottleSettings,
) -> Result<LoginAttempt, UserError> {
    // Both forms key an unknown name by the lower() the lookup compares with.
    macro_rules! attempt {
        ($column:literal) => {
            concat!(
                "WITH cand AS (
                   SELECT user_id, password_hash, active AND confirmation IS NULL AS records
                   FROM users WHERE scope = $1 AND lower(",
                $column,
                ") = lower($2)
                 ), acct AS (
                   SELECT COALESCE((SELECT user_id::text FROM cand), 'name:' || lower($2)) AS key
                 )
                 SELECT cand.user_id, cand.password_hash, cand.records, acct.key,
                        coronium_login_attempt('', $1, acct.key, $3, $9, $4, $5, $6, $7, $10, $8)
                 FROM acct LEFT JOIN cand ON true"
            )
        };
    }
    let (sql, name) = match login {
        Login::Username(u) => (attempt!("username"), u),
        Login::Email(e) => (attempt!("email"), e),
    };
    let as_i32 = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    let stmt = client.prepare_cached(sql).await?;
    let row = client
        .query_one(
            &stmt,
            &[
                &scope,
                name,
                &address.as_str(),
                &as_i32(limits.window_secs),
                &as_i32(limits.per_account_address),
                &as_i32(limits.per_account),
                &as_i32(limits.per_address),
                &as_i32(limits.max_delay_secs),
                &address.network(),
                &as_i32(limits.per_address.saturating_mul(NETWORK_TIMES_ADDRESS)),
            ],
        )
        .await?;
    let candidate = row.get::<_, Option<Uuid>>(0).map(|user_id| LoginCandidate {
        user_id,
        password_hash: row.get(1),
        records_login: row.get(2),
    });
    Ok(LoginAttempt {
        candidate,
        account: row.get(3),
        wait_secs: row.get(4),
    })
}

/// The throttle's counters a successful login releases: its account is no longer held back from
/// this address, the attempt [`attempt_login`] counted is taken back from the wider counters,
/// and the address becomes one the account is known at.
pub struct Release<'a> {
    pub scope: &'a str,
    pub account: &'a str,
    pub address: &'a str,
    /// The address's wider network (an IPv6 /48), when it has one.
    pub network: Option<&'a str>,
}

/// The statements of a [`Release`], as CTEs over the parameters holding its scope, account,
/// address and network (all null: nothing to release). Only the players' realm ('') is
/// released here; the console forgets its own counters.
macro_rules! release_ctes {
    ($scope:literal, $account:literal, $address:literal, $network:literal) => {
        concat!(
            "release_pair AS (
               DELETE FROM login_failures
               WHERE scope = ",
            $scope,
            " AND account = ",
            $account,
            " AND address = ",
            $address,
            "
             ), release_wider AS (
               UPDATE login_failures SET failures = greatest(failures - 1, 0)
               WHERE (scope = ",
            $scope,
            " AND account = ",
            $account,
            " AND address = '')
                  OR (scope = '' AND account = '' AND address IN (",
            $address,
            ", ",
            $network,
            "))
             ), remember AS (
               INSERT INTO login_known (scope, account, address)
               SELECT ",
            $scope,
            "::text, ",
            $account,
            "::text, ",
            $address,
            "::text WHERE ",
            $scope,
            "::text IS NOT NULL
               ON CONFLICT (scope, account, address) DO UPDATE SET last_success = now()
               WHERE login_known.last_success < now() - interval '1 day'
             )"
        )
    };
}

/// A successful login that records no event releases its throttle counters on its own.
pub async fn login_succeeded(
    client: &impl GenericClient,
    release: &Release<'_>,
) -> Result<(), UserError> {
    let stmt = client
        .prepare_cached(concat!(
            "WITH ",
            release_ctes!("$1", "$2", "$3", "$4"),
            " SELECT 1"
        ))
        .await?;
    client
        .execute(
            &stmt,
            &[
                &release.scope,
                &release.account,
                &release.address,
                &release.network,
            ],
        )
        .await?;
    Ok(())
}

/// Drops failure counters nobody has added to for `window_secs`: they no longer count.
pub async fn forget_old_login_failures(
    client: &impl GenericClient,
    window_secs: u32,
) -> Result<u64, UserError> {
    let stmt = client
        .prepare_cached(
            "WITH known AS (DELETE FROM login_known WHERE last_success < now() - interval '90 days')
             DELETE FROM login_failures
             WHERE last_failure < now() - make_interval(secs => $1::integer)",
        )
        .await?;
    let window = i32::try_from(window_secs).unwrap_or(i32::MAX);
    Ok(client.execute(&stmt, &[&window]).await?)
}

/// Clears every failure counter of the account `name` finds in `scope` (as username or email,
/// compared as login compares), and of the name itself. The number of counters removed.
pub async fn unlock(
    client: &impl GenericClient,
    scope: &str,
    name: &str,
) -> Result<u64, UserError> {
    let stmt = client
        .prepare_cached(
            "DELETE FROM login_failures
             WHERE scope = $1 AND account IN (
               SELECT user_id::text FROM users
               WHERE scope = $1 AND (lower(username) = lower($2) OR lower(email) = lower($2))
               UNION ALL SELECT 'name:' || lower($2))",
        )
        .await?;
    Ok(client.execute(&stmt, &[&scope, &name]).await?)
}

/// Marks a login event: last_login, login_count, the day's statistics and the throttle's
/// release in one statement. `rehash` replaces the stored hash, but only if it is still the one
/// that was verified.
pub async fn record_login(
    client: &impl GenericClient,
    user_id: Uuid,
    verified_hash: &str,
    rehash: Option<&str>,
    release: Option<&Release<'_>>,
) -> Result<Option<User>, UserError> {
    let stmt = client
        .prepare_cached(concat!(
            r#"WITH u AS (
                 UPDATE users SET last_login = now(), login_count = login_count + 1,
                   password_hash = CASE WHEN password_hash = $2
                                        THEN COALESCE($3, password_hash) ELSE password_hash END
                 WHERE user_id = $1
                 RETURNING "#,
            user_columns!(),
            r#"), stat AS (
                 INSERT INTO user_stats_daily AS s (scope, day, logins)
                 SELECT scope, "#,
            today!(),
            r#", 1 FROM u
                 ON CONFLICT (scope, day) DO UPDATE SET logins = s.logins + 1), "#,
            release_ctes!("$4", "$5", "$6", "$7"),
            r#"
               SELECT * FROM u"#
        ))
        .await?;
    let row = client
        .query_opt(
            &stmt,
            &[
                &user_id,
                &verified_hash,
                &rehash,
                &release.map(|r| r.scope),
                &release.map(|r| r.account),
                &release.map(|r| r.address),
                &release.and_then(|r| r.network),
            ],
        )
        .await?;
    Ok(row.as_ref().map(user_from_row))
}

/// Replaces a verified hash with a fresh one (a login that records no event still upgrades it).
pub async fn replace_hash(
    client: &impl GenericClient,
    user_id: Uuid,
    verified_hash: &str,
    new_hash: &str,
) -> Result<(), UserError> {
    let stmt = client
        .prepare_cached(
            "UPDATE users SET password_hash = $3 WHERE user_id = $1 AND password_hash = $2",
        )
        .await?;
    client
        .execute(&stmt, &[&user_id, &verified_hash, &new_hash])
        .await?;
    Ok(())
}

/// A user by id, in `scope` (`None`: in any scope).
pub async fn get(
    client: &impl GenericClient,
    scope: Option<&str>,
    user_id: Uuid,
) -> Result<Option<User>, UserError> {
    let stmt = client
        .prepare_cached(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE user_id = $1 AND ($2::text IS NULL OR scope = $2)"
        ))
        .await?;
    let row = client.query_opt(&stmt, &[&user_id, &scope]).await?;
    Ok(row.as_ref().map(user_from_row))
}

/// The bound on a user's whole `extra` that an update may not take it past.
#[derive(Clone, Copy)]
pub struct ExtraBound {
    pub bytes: i64,
    pub keys: i64,
}

/// What an update found.
pub enum Updated {
    User(Box<User>),
    NotFound,
    /// The merged `extra` would pass the bound: nothing was changed.
    ExtraTooLarge,
}

/// Applies a patch in one statement: `extra` is merged key by key (`||`) and removed keys are
/// dropped (`-`), so concurrent updates of different keys never lose each other's writes. The
/// bound is checked on the merged value in the same statement (an `UPDATE` re-reads a row that
/// a concurrent one changed), so concurrent patches cannot pass it together; a patch that does
/// not grow `extra` always applies, so records stored before the bound can still shrink.
pub async fn update(
    client: &impl GenericClient,
    scope: Option<&str>,
    user_id: Uuid,
    patch: &UserPatch,
    password_hash: Option<&str>,
    bound: ExtraBound,
) -> Result<Updated, UserError> {
    macro_rules! update_users {
        () => {
            r#"UPDATE users SET
                 username = COALESCE($3, username),
                 email = COALESCE($4, email),
                 "group" = COALESCE($5, "group"),
                 extra = (extra || $6::jsonb) - $7::text[],
                 password_hash = COALESCE($8, password_hash),
                 active = COALESCE($9, active),
                 disabled = COALESCE(NOT $9, disabled),
                 updated = now()
               WHERE user_id = $1 AND ($2::text IS NULL OR scope = $2)
                 AND CASE
                   WHEN $6::jsonb = '{}'::jsonb THEN true
                   WHEN octet_length(((extra || $6::jsonb) - $7::text[])::text)
                        > GREATEST($10::int8, octet_length(extra::text)) THEN false
                   -- Every key takes at least 8 bytes of the text (`"k": 1, `): a shorter
                   -- text holds fewer keys than the bound, with no need to count them.
                   WHEN octet_length(((extra || $6::jsonb) - $7::text[])::text) < 8 * $11::int8
                        THEN true
                   ELSE coronium_jsonb_keys((extra || $6::jsonb) - $7::text[])
                        <= GREATEST($11::int8, coronium_jsonb_keys(extra))
                 END
               RETURNING "#
        };
    }
    // A new password also ends the user's open password resets (users spec §3), in the same
    // statement; other updates keep to the plain one.
    let stmt = match password_hash {
        None => client.prepare_cached(concat!(update_users!(), user_columns!())),
        Some(_) => client.prepare_cached(concat!(
            "WITH u AS (",
            update_users!(),
            user_columns!(),
            "), resets AS (DELETE FROM password_resets p USING u WHERE p.user_id = u.user_id)
             SELECT * FROM u"
        )),
    }
    .await?;
    let row = client
        .query_opt(
            &stmt,
            &[
                &user_id,
                &scope,
                &patch.username,
                &patch.email,
                &patch.group,
                &Value::Object(patch.extra_set.clone()),
                &patch.extra_remove,
                &password_hash,
                &patch.active,
                &bound.bytes,
                &bound.keys,
            ],
        )
        .await
        .map_err(duplicate_to_600)?;
    if let Some(row) = row {
        return Ok(Updated::User(Box::new(user_from_row(&row))));
    }
    // Nothing updated: no such user, or the bound held it back (only a patch that adds keys).
    if patch.extra_set.is_empty() {
        return Ok(Updated::NotFound);
    }
    let exists = client
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM users WHERE user_id = $1 AND ($2::text IS NULL OR scope = $2))",
        )
        .await?;
    let exists: bool = client.query_one(&exists, &[&user_id, &scope]).await?.get(0);
    Ok(if exists {
        Updated::ExtraTooLarge
    } else {
        Updated::NotFound
    })
}

pub async fn delete(
    client: &impl GenericClient,
    scope: Option<&str>,
    user_id: Uuid,
) -> Result<u64, UserError> {
    let stmt = client
        .prepare_cached("DELETE FROM users WHERE user_id = $1 AND ($2::text IS NULL OR scope = $2)")
        .await?;
    Ok(client.execute(&stmt, &[&user_id, &scope]).await?)
}

/// A confirmation code's hash and the mail options stored with it.
#[derive(Clone, Copy)]
pub struct PendingConfirmation<'a> {
    pub code_hash: &'a str,
    pub options: &'a Value,
}

/// A user about to get a confirmation mail, locked until the transaction ends.
pub struct ConfirmationTarget {
    pub user: User,
    /// The options stored with the last confirmation mail.
    pub options: Option<Value>,
    /// Whether a resend was queued within the last minute.
    pub resent_lately: bool,
}

/// Locks the user `user_id` (in `scope`, or any) for a confirmation mail.
pub async fn confirmation_target(
    client: &impl GenericClient,
    user_id: Uuid,
    scope: Option<&str>,
) -> Result<Option<ConfirmationTarget>, UserError> {
    let stmt = client
        .prepare_cached(concat!(
            "SELECT ",
            user_columns!(),
            ", confirmation_options,
               coalesce(confirmation_resent > now() - interval '60 seconds', false)
             FROM users WHERE user_id = $1 AND ($2::text IS NULL OR scope = $2)
             FOR UPDATE"
        ))
        .await?;
    let row = client.query_opt(&stmt, &[&user_id, &scope]).await?;
    Ok(row.map(|row| ConfirmationTarget {
        user: user_from_row(&row),
        options: row.get(12),
        resent_lately: row.get(13),
    }))
}

/// Whose confirmation a new code is for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// `resendConfirmation`: counts against the one-a-minute limit.
    Resend,
    /// `sendConfirmationLink`: the user also becomes inactive until confirmed.
    NewLink,
}

/// Gives a user a fresh confirmation code (the old one stops working) and its mail options.
pub async fn renew_confirmation(
    client: &impl GenericClient,
    user_id: Uuid,
    pending: PendingConfirmation<'_>,
    renewal: Renewal,
) -> Result<User, UserError> {
    let stmt = client
        .prepare_cached(concat!(
            "UPDATE users SET confirmation = 'pending', confirmation_code = $2,
                 confirmation_options = $3, confirmation_email = email,
                 confirmation_resent = CASE WHEN $4 THEN now() ELSE confirmation_resent END,
                 active = CASE WHEN $4 THEN active ELSE false END,
                 updated = now()
             WHERE user_id = $1
             RETURNING ",
            user_columns!()
        ))
        .await?;
    let row = client
        .query_one(
            &stmt,
            &[
                &user_id,
                &pending.code_hash,
                &pending.options,
                &(renewal == Renewal::Resend),
            ],
        )
        .await?;
    Ok(user_from_row(&row))
}

/// Confirms the user whose code hashes to `code_hash`: active, confirmed, the code gone.
pub async fn confirm(
    client: &impl GenericClient,
    code_hash: &str,
) -> Result<Option<User>, UserError> {
    let stmt = client
        .prepare_cached(concat!(
            "UPDATE users SET active = NOT disabled, confirmation = NULL, confirmation_code = NULL,
                 confirmation_options = NULL, confirmation_email = NULL, updated = now()
             WHERE confirmation_code = $1
               AND (confirmation_email IS NULL OR lower(confirmation_email) = lower(email))
             RETURNING ",
            user_columns!()
        ))
        .await?;
    let row = client.query_opt(&stmt, &[&code_hash]).await?;
    Ok(row.as_ref().map(user_from_row))
}

/// The users `query` matches in `scope`, in its order (then by id): `count` rows from its
/// offset.
pub async fn query(
    client: &impl GenericClient,
    scope: &str,
    query: &UserQuery,
    count: i64,
) -> Result<Vec<User>, UserError> {
    use std::fmt::Write as _;
    use tokio_postgres::types::ToSql;
    let mut sql = String::from(concat!(
        "SELECT ",
        user_columns!(),
        " FROM users WHERE scope = $1"
    ));
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&scope];
    let conditions: [(&str, Option<&(dyn ToSql + Sync)>); 4] = [
        (
            "lower(username) = lower(${})",
            query.username.as_ref().map(|v| v as _),
        ),
        (
            "lower(email) = lower(${})",
            query.email.as_ref().map(|v| v as _),
        ),
        ("\"group\" = ${}", query.group.as_ref().map(|v| v as _)),
        ("active = ${}", query.active.as_ref().map(|v| v as _)),
    ];
    for (condition, value) in conditions {
        if let Some(value) = value {
            params.push(value);
            let _ = write!(
                sql,
                " AND {}",
                condition.replace("{}", &params.len().to_string())
            );
        }
    }
    sql.push_str(" ORDER BY ");
    if query.order.is_empty() {
        sql.push_str("created ASC, ");
    }
    for (column, direction) in &query.order {
        let _ = write!(sql, "{} {} NULLS LAST, ", column.sql(), direction.sql());
    }
    sql.push_str("user_id ASC");
    let _ = write!(
        sql,
        " LIMIT ${} OFFSET ${}",
        params.len() + 1,
        params.len() + 2
    );
    params.push(&count);
    params.push(&query.offset);
    let rows = client.query(sql.as_str(), &params).await?;
    Ok(rows.iter().map(user_from_row).collect())
}

/// A user's link to an OAuth provider, as stored.
#[derive(Debug, Clone)]
pub struct Link {
    pub provider: String,
    pub client_id: String,
    pub access_token: Option<String>,
    pub access_token_expiry: Option<i64>,
}

fn link_from_row(row: &Row, first: usize) -> Link {
    Link {
        provider: row.get(first),
        client_id: row.get(first + 1),
        access_token: row.get(first + 2),
        access_token_expiry: row.get(first + 3),
    }
}

/// The two ways a link can collide: the user has one to this provider, or the provider account
/// belongs to another user.
fn link_taken(e: tokio_postgres::Error) -> UserError {
    if let Some(constraint) = unique_violated(&e) {
        return UserError::ProviderLinked(if constraint.contains("account") {
            "This provider account is already linked to another user."
        } else {
            "OAuth provider already exists for user."
        });
    }
    e.into()
}

/// The scope of the user `user_id` names (in `scope`, or any), held against deletion until the
/// transaction ends; `None` when there is no such user.
/// The user's scope and how many links they have, the user locked until the transaction ends
/// (so concurrent additions count one after the other, and the user cannot go meanwhile).
pub async fn user_scope_for_links(
    client: &impl GenericClient,
    scope: Option<&str>,
    user_id: Uuid,
) -> Result<Option<(String, i64)>, UserError> {
    let stmt = client
        .prepare_cached(
            "SELECT scope FROM users WHERE user_id = $1 AND ($2::text IS NULL OR scope = $2) \
             FOR NO KEY UPDATE",
        )
        .await?;
    let Some(row) = client.query_opt(&stmt, &[&user_id, &scope]).await? else {
        return Ok(None);
    };
    // Counted by a statement of its own: its snapshot is taken once the lock is held, so it
    // sees the links that concurrent additions committed before us.
    let count = client
        .prepare_cached("SELECT count(*) FROM user_auth_providers WHERE user_id = $1")
        .await?;
    let links: i64 = client.query_one(&count, &[&user_id]).await?.get(0);
    Ok(Some((row.get(0), links)))
}

pub async fn insert_link(
    client: &impl GenericClient,
    user_id: Uuid,
    scope: &str,
    link: &Link,
) -> Result<(), UserError> {
    let stmt = client
        .prepare_cached(
            "INSERT INTO user_auth_providers (user_id, scope, provider, client_id, access_token, \
             access_token_expiry) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .await?;
    client
        .execute(
            &stmt,
            &[
                &user_id,
                &scope,
                &link.provider,
                &link.client_id,
                &link.access_token,
                &link.access_token_expiry,
            ],
        )
        .await
        .map_err(link_taken)?;
    Ok(())
}

/// The user's links (to `provider` only, when given), by provider name, in one read; `None`
/// when there is no such user (in `scope`, or any).
pub async fn links(
    client: &impl GenericClient,
    scope: Option<&str>,
    user_id: Uuid,
    provider: Option<&str>,
) -> Result<Option<Vec<Link>>, UserError> {
    let stmt = client
        .prepare_cached(
            "SELECT p.provider, p.client_id, p.access_token, p.access_token_expiry
             FROM users u LEFT JOIN user_auth_providers p
               ON p.user_id = u.user_id AND ($3::text IS NULL OR p.provider = $3)
             WHERE u.user_id = $1 AND ($2::text IS NULL OR u.scope = $2)
             ORDER BY p.provider",
        )
        .await?;
    let rows = client.query(&stmt, &[&user_id, &scope, &provider]).await?;
    if rows.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        rows.iter()
            // The user without a (matching) link: one row of NULLs.
            .filter(|row| row.get::<_, Option<String>>(0).is_some())
            .map(|row| link_from_row(row, 0))
            .collect(),
    ))
}

/// Replaces a link's fields with `link`'s; whether there was one to replace.
pub async fn update_link(
    client: &impl GenericClient,
    user_id: Uuid,
    link: &Link,
) -> Result<bool, UserError> {
    let stmt = client
        .prepare_cached(
            "UPDATE user_auth_providers SET client_id = $3, access_token = $4, \
             access_token_expiry = $5, updated = now() WHERE user_id = $1 AND provider = $2",
        )
        .await?;
    let changed = client
        .execute(
            &stmt,
            &[
                &user_id,
                &link.provider,
                &link.client_id,
                &link.access_token,
                &link.access_token_expiry,
            ],
        )
        .await
        .map_err(link_taken)?;
    Ok(changed > 0)
}

/// Deletes the user's link to `provider`, or all of them; how many went.
pub async fn delete_links(
    client: &impl GenericClient,
    user_id: Uuid,
    provider: Option<&str>,
) -> Result<u64, UserError> {
    let stmt = client
        .prepare_cached(
            "DELETE FROM user_auth_providers \
             WHERE user_id = $1 AND ($2::text IS NULL OR provider = $2)",
        )
        .await?;
    Ok(client.execute(&stmt, &[&user_id, &provider]).await?)
}

/// The user a provider account is linked to in `scope`, with the link.
pub async fn user_by_link(
    client: &impl GenericClient,
    scope: &str,
    provider: &str,
    client_id: &str,
) -> Result<Option<(User, Link)>, UserError> {
    let stmt = client
        .prepare_cached(concat!(
            "SELECT ",
            user_columns!(),
            r#", l.provider, l.client_id, l.access_token, l.access_token_expiry
               FROM users JOIN (
                 SELECT user_id AS linked, provider, client_id, access_token, access_token_expiry
                 FROM user_auth_providers
                 WHERE scope = $1 AND provider = $2 AND client_id = $3) l
               ON users.user_id = l.linked"#
        ))
        .await?;
    let row = client
        .query_opt(&stmt, &[&scope, &provider, &client_id])
        .await?;
    Ok(row.map(|row| (user_from_row(&row), link_from_row(&row, 12))))
}

/// Records a password-less login (by provider link): the login event and the day's count, for a
/// user who may log in (active and confirmed); the user's record either way.
pub async fn record_passwordless_login(
    client: &impl GenericClient,
    user_id: Uuid,
) -> Result<Option<User>, UserError> {
    let stmt = client
        .prepare_cached(concat!(
            r#"WITH u AS (
                 UPDATE users SET last_login = now(), login_count = login_count + 1
                 WHERE user_id = $1 AND active AND confirmation IS NULL
                 RETURNING "#,
            user_columns!(),
            r#"), stat AS (
                 INSERT INTO user_stats_daily AS s (scope, day, logins)
                 SELECT scope, "#,
            today!(),
            r#", 1 FROM u
                 ON CONFLICT (scope, day) DO UPDATE SET logins = s.logins + 1)
               SELECT * FROM u
               UNION ALL
               SELECT "#,
            user_columns!(),
            r#" FROM users WHERE user_id = $1 AND NOT EXISTS (SELECT 1 FROM u)"#
        ))
        .await?;
    let row = client.query_opt(&stmt, &[&user_id]).await?;
    Ok(row.as_ref().map(user_from_row))
}

/// The user an address belongs to in `scope` (compared as the unique index does) and the
/// address as stored, locked until the transaction ends.
pub async fn user_id_by_email(
    client: &impl GenericClient,
    scope: &str,
    email: &str,
) -> Result<Option<(Uuid, String)>, UserError> {
    let stmt = client
        .prepare_cached(
            "SELECT user_id, email FROM users WHERE scope = $1 AND lower(email) = lower($2)
             FOR UPDATE",
        )
        .await?;
    let row = client.query_opt(&stmt, &[&scope, &email]).await?;
    Ok(row.map(|row| (row.get(0), row.get(1))))
}

/// Records a reset code for a user, replacing the user's older ones.
pub async fn replace_password_reset(
    client: &impl GenericClient,
    user_id: Uuid,
    scope: &str,
    code_hash: &str,
) -> Result<(), UserError> {
    let stmt = client
        .prepare_cached(
            "WITH old AS (DELETE FROM password_resets WHERE user_id = $1)
             INSERT INTO password_resets (code_hash, user_id, scope, email)
             SELECT $3, $1, $2, email FROM users WHERE user_id = $1",
        )
        .await?;
    client
        .execute(&stmt, &[&user_id, &scope, &code_hash])
        .await?;
    Ok(())
}

/// Reset codes live this long (users spec §4).
macro_rules! reset_lifetime {
    () => {
        "interval '24 hours'"
    };
}

/// A reset code works only while the user's email is the address it was mailed to (`p` the
/// code's row, `u` the user's; NULL: a code from before addresses were stored).
macro_rules! reset_still_bound {
    () => {
        "(p.email IS NULL OR lower(p.email) = lower(u.email))"
    };
}

/// The user a reset code is for, while it is valid.
pub async fn password_reset_user(
    client: &impl GenericClient,
    code_hash: &str,
) -> Result<Option<Uuid>, UserError> {
    let stmt = client
        .prepare_cached(concat!(
            "SELECT p.user_id FROM password_resets p JOIN users u USING (user_id)
             WHERE p.code_hash = $1 AND ",
            reset_still_bound!(),
            " AND p.created > now() - ",
            reset_lifetime!()
        ))
        .await?;
    let row = client.query_opt(&stmt, &[&code_hash]).await?;
    Ok(row.map(|row| row.get(0)))
}

/// Uses a reset code: when it is valid, the user's password becomes `password_hash` and every
/// reset code of theirs is gone. `false` for an unknown, used or expired code.
pub async fn use_password_reset(
    client: &impl GenericClient,
    code_hash: &str,
    password_hash: &str,
) -> Result<bool, UserError> {
    let stmt = client
        .prepare_cached(concat!(
            "WITH used AS (
                 DELETE FROM password_resets p USING users u
                 WHERE p.code_hash = $1 AND u.user_id = p.user_id AND ",
            reset_still_bound!(),
            " AND p.created > now() - ",
            reset_lifetime!(),
            " RETURNING p.user_id),
             others AS (
                 DELETE FROM password_resets p USING used u
                 WHERE p.user_id = u.user_id AND p.code_hash <> $1),
             changed AS (
                 UPDATE users SET password_hash = $2, updated = now()
                 FROM used WHERE users.user_id = used.user_id
                 RETURNING 1)
             SELECT count(*) FROM changed"
        ))
        .await?;
    let changed: i64 = client
        .query_one(&stmt, &[&code_hash, &password_hash])
        .await?
        .get(0);
    Ok(changed > 0)
}

/// Deletes reset codes past their lifetime; how many.
pub async fn flush_expired_password_resets(client: &impl GenericClient) -> Result<u64, UserError> {
    let stmt = client
        .prepare_cached(concat!(
            "DELETE FROM password_resets WHERE created <= now() - ",
            reset_lifetime!()
        ))
        .await?;
    Ok(client.execute(&stmt, &[]).await?)
}
