//! The outbox's statements. Request-side code calls [`enqueue`] inside its own transaction; the
//! sender calls the rest.

use std::time::Duration;

use deadpool_postgres::GenericClient;
use uuid::Uuid;

use super::{Message, Purpose};

/// Queues `message`; sent once the caller's transaction commits. Returns the outbox id. A
/// confirmation or reset mail is filed under its address, which [`destination_has_room`] counts.
pub async fn enqueue(
    client: &impl GenericClient,
    purpose: Purpose,
    user_id: Option<Uuid>,
    message: &Message,
) -> Result<i64, tokio_postgres::Error> {
    let destination = match purpose {
        Purpose::Confirmation | Purpose::PasswordReset => {
            message.to.first().map(|to| to.to_lowercase())
        }
        Purpose::Email => None,
    };
    let message = serde_json::to_value(message).expect("a message is plain data");
    let row = client
        .query_one(
            "INSERT INTO mail_outbox (purpose, user_id, message, destination)
             VALUES ($1, $2, $3, $4) RETURNING id",
            &[&purpose.as_str(), &user_id, &message, &destination],
        )
        .await?;
    Ok(row.get(0))
}

/// Link mails (confirmations and resets) one address may be sent, across every scope.
#[derive(Debug, Clone, Copy)]
pub struct DestinationCaps {
    pub per_hour: u32,
    pub per_day: u32,
}

/// Whether `to` may be sent one more link mail now; inside the caller's transaction, which it
/// serializes with every other one for the same address (an advisory lock until commit), so
/// concurrent sign-ups cannot pass the caps together. A cap of 0 is no cap.
pub async fn destination_has_room(
    client: &impl GenericClient,
    to: &str,
    caps: DestinationCaps,
) -> Result<bool, tokio_postgres::Error> {
    client
        .execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('mail-to:' || lower($1), 0))",
            &[&to],
        )
        .await?;
    // A statement of its own: its snapshot, taken once the lock is held, sees the mails that
    // transactions which held it before us committed.
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE created > now() - interval '1 hour'), count(*)
             FROM mail_outbox
             WHERE destination = lower($1) AND created > now() - interval '1 day'",
            &[&to],
        )
        .await?;
    let (hour, day): (i64, i64) = (row.get(0), row.get(1));
    let within = |count: i64, cap: u32| cap == 0 || count < i64::from(cap);
    Ok(within(hour, caps.per_hour) && within(day, caps.per_day))
}

/// A mail claimed for one attempt.
#[derive(Debug)]
pub struct Claimed {
    pub id: i64,
    pub message: Result<Message, String>,
    /// Attempts so far, this one included.
    pub attempts: i32,
}

/// Claims up to `batch` due mails for an attempt each, leased for `lease`: no other sender takes
/// them meanwhile (SKIP LOCKED while claiming, the lease after), and they come back by
/// themselves if this instance dies mid-send. The kinds take turns (a reset, a `core.email`, a
/// confirmation, a reset...), so a flood of one kind delays the others by one batch at most.
pub async fn claim(
    client: &impl GenericClient,
    batch: i64,
    lease: Duration,
) -> Result<Vec<Claimed>, tokio_postgres::Error> {
    let rows = client
        .query(
            "WITH due AS (
               SELECT d.id, d.rank FROM unnest(ARRAY['password_reset', 'email', 'confirmation']) p,
               LATERAL (SELECT id, row_number() OVER (ORDER BY next_attempt, id) AS rank
                        FROM (SELECT id, next_attempt FROM mail_outbox
                              WHERE state = 'queued' AND purpose = p AND next_attempt <= now()
                              ORDER BY next_attempt, id LIMIT $1
                              FOR UPDATE SKIP LOCKED) q) d
               ORDER BY d.rank, d.id LIMIT $1)
             UPDATE mail_outbox o
             SET attempts = o.attempts + 1, next_attempt = now() + make_interval(secs => $2)
             FROM due WHERE o.id = due.id
             RETURNING o.id, o.message, o.attempts, due.rank",
            &[&batch, &lease.as_secs_f64()],
        )
        .await?;
    let mut claimed: Vec<(i64, Claimed)> = rows
        .iter()
        .map(|row| {
            let claimed = Claimed {
                id: row.get(0),
                message: serde_json::from_value(row.get(1)).map_err(|e| e.to_string()),
                attempts: row.get(2),
            };
            (row.get(3), claimed)
        })
        .collect();
    // Each kind's first, then each kind's second...: the order the kinds take turns in.
    claimed.sort_by_key(|(rank, mail)| (*rank, mail.id));
    Ok(claimed.into_iter().map(|(_, mail)| mail).collect())
}

pub async fn mark_sent(client: &impl GenericClient, id: i64) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE mail_outbox SET state = 'sent', finished = now(), last_error = NULL
             WHERE id = $1",
            &[&id],
        )
        .await?;
    Ok(())
}

/// Puts a mail back in the queue, due again after `after`.
pub async fn retry_later(
    client: &impl GenericClient,
    id: i64,
    after: Duration,
    error: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE mail_outbox SET next_attempt = now() + make_interval(secs => $2), last_error = $3
             WHERE id = $1",
            &[&id, &after.as_secs_f64(), &error],
        )
        .await?;
    Ok(())
}

/// Gives a mail up, and undoes what it was for unless a newer mail of the same kind for the
/// same user took over: a confirmation becomes `"failed"`, a reset's records are deleted.
pub async fn mark_failed(
    client: &impl GenericClient,
    id: i64,
    error: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "WITH failed AS (
                 UPDATE mail_outbox SET state = 'failed', finished = now(), last_error = $2
                 WHERE id = $1
                 RETURNING purpose, user_id),
             latest AS (
                 SELECT f.purpose, f.user_id FROM failed f
                 WHERE f.user_id IS NOT NULL AND NOT EXISTS (
                     SELECT 1 FROM mail_outbox m
                     WHERE m.user_id = f.user_id AND m.purpose = f.purpose AND m.id > $1)),
             confirmation AS (
                 UPDATE users u SET confirmation = 'failed', updated = now()
                 FROM latest l
                 WHERE l.purpose = 'confirmation' AND u.user_id = l.user_id
                   AND u.confirmation = 'pending'
                 RETURNING 1),
             resets AS (
                 DELETE FROM password_resets p USING latest l
                 WHERE l.purpose = 'password_reset' AND p.user_id = l.user_id
                 RETURNING 1)
             SELECT (SELECT count(*) FROM confirmation), (SELECT count(*) FROM resets)",
            &[&id, &error],
        )
        .await?;
    Ok(())
}

/// Mails waiting to be sent (due or not), and the age of the oldest, in seconds.
pub async fn backlog(client: &impl GenericClient) -> Result<(i64, f64), tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT count(*), coalesce(extract(epoch FROM now() - min(created))::float8, 0)
             FROM mail_outbox WHERE state = 'queued'",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}
