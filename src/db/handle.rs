//! A worker's way to the database, and the one place that knows how connections are lent.
//!
//! Single statements (each its own implicit transaction) run on shared connections, where
//! concurrent statements are pipelined (see [`super::shared`]): reads on connections of their own,
//! so they never queue behind a commit's WAL flush, and writes in turn over the rest, so commits
//! share flushes. Measured with `bench/run` on 2 cores: one read connection per worker served
//! ~1.5x the gets of exclusive checkouts (more served fewer), and pipelined writes ~1.1x the
//! updates of exclusive ones. Work that needs several statements in one transaction gets a
//! connection of its own from a separate, small pool, so it never waits on the shared slots (every
//! connection of the shared pool is lent to them once warm).

use std::sync::Arc;

use deadpool_postgres::{Object, Pool, PoolError, Status};
use tokio_postgres::error::SqlState;

use super::shared::SharedConnections;

/// Connections of the shared pool that reads share; writes share the others.
const READ_CONNECTIONS: usize = 1;

/// What a statement's error must tell the handle: the PostgreSQL error behind it, if any, so a
/// lost connection can be told from a failed statement.
pub trait StatementError: From<PoolError> {
    fn postgres(&self) -> Option<&tokio_postgres::Error>;
}

/// Cheap to clone; one per worker (its connections do their I/O on the worker's thread).
#[derive(Clone)]
pub struct DbHandle {
    reads: Arc<SharedConnections>,
    writes: Arc<SharedConnections>,
    /// Shared connections' pool, for its gauges.
    shared: Pool,
    /// Connections lent whole, one per transaction.
    reserved: Pool,
}

impl DbHandle {
    /// `shared` becomes the pipelined read and write connections (all of it: nothing else may
    /// take from it); `reserved` lends whole connections for transactions.
    pub fn new(shared: Pool, reserved: Pool) -> Self {
        let size = shared.status().max_size;
        DbHandle {
            reads: Arc::new(SharedConnections::new(shared.clone(), READ_CONNECTIONS)),
            writes: Arc::new(SharedConnections::new(
                shared.clone(),
                write_connections(size),
            )),
            shared,
            reserved,
        }
    }

    /// Runs a read on a shared connection. A read is safe to repeat, so one whose connection
    /// turned out to be gone (the database restarted, an admin ended the backend) is retried once
    /// on a fresh connection instead of failing the request.
    pub async fn read<T, E, F, Fut>(&self, statement: F) -> Result<T, E>
    where
        E: StatementError,
        F: Fn(Arc<Object>) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let client = self.reads.get().await?;
        let outcome = statement(client.clone()).await;
        if !connection_lost(&outcome, &client) {
            return outcome;
        }
        self.reads.discard(&client);
        // The pool gets a connection back only when its last holder lets go: don't hold it while
        // waiting for its replacement.
        drop(client);
        statement(self.reads.get().await?).await
    }

    /// Runs a write on a shared connection. A write is not repeated (it may have been applied
    /// before the connection went), but a lost connection is replaced for the next one.
    pub async fn write<T, E, F, Fut>(&self, statement: F) -> Result<T, E>
    where
        E: StatementError,
        F: FnOnce(Arc<Object>) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let client = self.writes.get().await?;
        let outcome = statement(client.clone()).await;
        if connection_lost(&outcome, &client) {
            self.writes.discard(&client);
        }
        outcome
    }

    /// Runs `work` in one transaction on a connection of its own (from a small pool kept apart,
    /// so it never waits on the shared slots): committed when `work` succeeds, rolled back when
    /// it fails, is dropped (a request that ends early) or loses its connection.
    pub async fn transaction<T, E>(
        &self,
        work: impl AsyncFnOnce(&deadpool_postgres::Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: StatementError + From<tokio_postgres::Error>,
    {
        let mut client = self.reserved.get().await?;
        let transaction = client.transaction().await?;
        let out = work(&transaction).await?;
        transaction.commit().await?;
        Ok(out)
    }

    /// Checks the database answers (`/healthz`), through the read connection.
    pub async fn ping(&self) -> Result<(), PingError> {
        self.read(|client| async move {
            client.query_one("SELECT 1", &[]).await?;
            Ok(())
        })
        .await
    }

    /// The shared pool's gauges.
    pub fn status(&self) -> Status {
        self.shared.status()
    }
}

/// Why the database did not answer a ping.
#[derive(Debug, thiserror::Error)]
pub enum PingError {
    #[error("database pool: {0}")]
    Pool(#[from] PoolError),
    #[error("database: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

impl StatementError for PingError {
    fn postgres(&self) -> Option<&tokio_postgres::Error> {
        match self {
            PingError::Postgres(e) => Some(e),
            PingError::Pool(_) => None,
        }
    }
}

/// What a pool of `size` leaves for writes once reads have theirs (pools hold at least two).
fn write_connections(size: usize) -> usize {
    size.saturating_sub(READ_CONNECTIONS).max(1)
}

/// Whether a statement failed because its connection's session is over (rather than because of
/// the statement itself).
fn connection_lost<T, E: StatementError>(outcome: &Result<T, E>, client: &Object) -> bool {
    let Some(e) = outcome.as_ref().err().and_then(StatementError::postgres) else {
        return false;
    };
    client.is_closed()
        || e.is_closed()
        || [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
        ]
        .iter()
        .any(|state| e.code() == Some(state))
}
