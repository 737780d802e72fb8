//! The sender: one thread per instance that drains the outbox. It wakes when this instance
//! queues mail and every `poll_secs` otherwise (mail queued by other instances, retries due),
//! sends each due mail once, and records `sent`, a retry with backoff, or `failed`.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

use super::transport::{SEND_TIMEOUT, Transport};
use super::{MailError, MailSettings, Mailer, outbox};
use crate::db::DbHandle;

/// Mails claimed per round.
const BATCH: i64 = 16;
/// How long a claimed mail is ours: past one attempt's deadline, so it is never sent twice at
/// once, and short enough that a crash delays it only a little.
const LEASE: Duration = Duration::from_secs(SEND_TIMEOUT.as_secs() + 30);
/// How long a stopping sender waits for the attempt under way.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// The longest wait between retries.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(3600);

/// A running sender; [`stop`](Self::stop) ends it after the attempt in flight.
pub struct Sender {
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl Sender {
    /// Starts the sender on a thread of its own with its own database handle.
    pub fn spawn(
        db: DbHandle,
        mailer: Mailer,
        transport: Transport,
        settings: MailSettings,
    ) -> std::io::Result<Sender> {
        let (stop, stopped) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("coronium-mail".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        tracing::error!(error = %e, "mail sender cannot start; mail stays queued");
                        return;
                    }
                };
                // A local set: the attempts in flight run on this thread (Mailgun's form
                // builder is not `Send`).
                tokio::task::LocalSet::new().block_on(
                    &runtime,
                    run(db, mailer, Arc::new(transport), settings, stopped),
                );
            })?;
        Ok(Sender {
            stop,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.halt();
    }
}

async fn run(
    db: DbHandle,
    mailer: Mailer,
    transport: Arc<Transport>,
    settings: MailSettings,
    mut stopped: watch::Receiver<bool>,
) {
    let queued = metrics::gauge!("coronium_mail_queued");
    let oldest = metrics::gauge!("coronium_mail_oldest_queued_seconds");
    let poll = Duration::from_secs(settings.poll_secs.max(1));
    let mut warned = false;
    // What `drain` checks between mails; `stopped` itself is awaited below.
    let watching = stopped.clone();
    while !*stopped.borrow() {
        let drained = drain(&db, &transport, &settings, &watching);
        tokio::pin!(drained);
        let outcome = tokio::select! {
            outcome = &mut drained => outcome,
            _ = stopped.changed() => {
                // Stopping: the attempt under way gets a moment to finish (the drain stops
                // after it); one that hangs comes back to the queue when its lease ends.
                let _ = tokio::time::timeout(STOP_GRACE, drained).await;
                return;
            }
        };
        match outcome {
            Ok(()) => warned = false,
            // The database is away (restarting, unreachable): try again next round.
            Err(e) if !warned => {
                tracing::warn!(error = %e, "mail sender cannot reach the outbox; retrying");
                warned = true;
            }
            Err(_) => {}
        }
        if let Ok((count, age)) = db
            .read(|client| async move { outbox::backlog(&*client).await.map_err(MailError::from) })
            .await
        {
            queued.set(count as f64);
            oldest.set(age);
        }
        tokio::select! {
            _ = mailer.woken() => {}
            _ = tokio::time::sleep(poll) => {}
            _ = stopped.changed() => {}
        }
    }
}

/// Mails sent at once: a slow or greylisting server for one mail does not hold up the rest.
const PARALLEL: usize = 4;

/// Sends every due mail, a batch at a time, until none is due or the sender is stopped; up to
/// [`PARALLEL`] at once, in the order the claim gave (the kinds taking turns).
async fn drain(
    db: &DbHandle,
    transport: &Arc<Transport>,
    settings: &MailSettings,
    stopped: &watch::Receiver<bool>,
) -> Result<(), MailError> {
    loop {
        let claimed = db
            .write(|client| async move {
                outbox::claim(&*client, BATCH, LEASE)
                    .await
                    .map_err(MailError::from)
            })
            .await?;
        if claimed.is_empty() {
            return Ok(());
        }
        let mut sending = tokio::task::JoinSet::new();
        let mut outcome = Ok(());
        for mail in claimed {
            if *stopped.borrow() {
                // Leased mail comes back by itself once the lease runs out.
                break;
            }
            if sending.len() >= PARALLEL
                && let Some(done) = sending.join_next().await
            {
                outcome = outcome.and(done.unwrap_or(Ok(())));
            }
            let (db, transport) = (db.clone(), transport.clone());
            let max_attempts = settings.max_attempts as i32;
            let retry_secs = settings.retry_secs;
            sending.spawn_local(async move {
                attempt(&db, &transport, mail, max_attempts, retry_secs).await
            });
        }
        while let Some(done) = sending.join_next().await {
            outcome = outcome.and(done.unwrap_or(Ok(())));
        }
        outcome?;
        if *stopped.borrow() {
            return Ok(());
        }
    }
}

/// One attempt at one mail, and what it leaves in the outbox.
async fn attempt(
    db: &DbHandle,
    transport: &Transport,
    mail: outbox::Claimed,
    max_attempts: i32,
    retry_secs: u64,
) -> Result<(), MailError> {
    let outcome = match &mail.message {
        Ok(message) => transport.send(mail.id, message).await,
        Err(e) => Err(super::transport::SendFailure {
            permanent: true,
            reason: format!("unreadable outbox entry: {e}"),
        }),
    };
    let id = mail.id;
    match outcome {
        Ok(()) => {
            metrics::counter!("coronium_mail_sent_total").increment(1);
            tracing::info!(mail = id, attempts = mail.attempts, "mail sent");
            db.write(|client| async move {
                outbox::mark_sent(&*client, id)
                    .await
                    .map_err(MailError::from)
            })
            .await
        }
        Err(failure) if failure.permanent || mail.attempts >= max_attempts => {
            metrics::counter!("coronium_mail_failed_total").increment(1);
            tracing::error!(
                mail = id,
                attempts = mail.attempts,
                reason = %failure.reason,
                "mail not delivered; given up"
            );
            let reason = failure.reason.as_str();
            db.write(|client| async move {
                outbox::mark_failed(&*client, id, reason)
                    .await
                    .map_err(MailError::from)
            })
            .await
        }
        Err(failure) => {
            metrics::counter!("coronium_mail_retries_total").increment(1);
            let wait = retry_wait(retry_secs, mail.attempts);
            tracing::warn!(
                mail = id,
                attempts = mail.attempts,
                retry_in_secs = wait.as_secs(),
                reason = %failure.reason,
                "mail not delivered yet; will retry"
            );
            let reason = failure.reason.as_str();
            db.write(|client| async move {
                outbox::retry_later(&*client, id, wait, reason)
                    .await
                    .map_err(MailError::from)
            })
            .await
        }
    }
}

/// `base`, doubled for every attempt after the first, at most an hour.
fn retry_wait(base_secs: u64, attempts: i32) -> Duration {
    let doublings = attempts.saturating_sub(1).clamp(0, 20) as u32;
    Duration::from_secs(base_secs.saturating_mul(1 << doublings)).min(MAX_RETRY_WAIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_an_hour() {
        assert_eq!(retry_wait(30, 1), Duration::from_secs(30));
        assert_eq!(retry_wait(30, 2), Duration::from_secs(60));
        assert_eq!(retry_wait(30, 4), Duration::from_secs(240));
        assert_eq!(retry_wait(30, 40), MAX_RETRY_WAIT);
        assert_eq!(retry_wait(0, 3), Duration::ZERO);
    }
}
