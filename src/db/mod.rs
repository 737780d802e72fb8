//! The database: either the server named by `DATABASE_URL`, or the embedded default cluster under
//! the data directory. Opening it also applies the migrations; the pool is ready on return.

pub mod embedded;
mod handle;
pub mod migrate;
mod pglog;
mod shared;

use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

pub use embedded::{EmbeddedOptions, EmbeddedPostgres};
pub use handle::{DbHandle, PingError, StatementError};

/// The database the server uses on the embedded cluster.
pub const EMBEDDED_DATABASE: &str = "coronium";
/// Reads and writes each share connections of their own (see [`handle`]): at least one each.
const MIN_POOL_SIZE: usize = 2;
/// Connections a handle lends whole, for transactions (made when first needed).
const RESERVED_CONNECTIONS: usize = 2;
const CONNECT_PATIENCE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(
        "DATABASE_URL is not a valid PostgreSQL connection string ({}); it looks like \
         postgres://USER:PASSWORD@HOST:5432/DATABASE or host=HOST user=USER dbname=DATABASE",
        words(.0)
    )]
    BadUrl(#[source] tokio_postgres::Error),
    #[error(transparent)]
    Embedded(#[from] embedded::EmbeddedError),
    #[error("cannot connect to PostgreSQL: {}", words(.0))]
    Connect(#[source] tokio_postgres::Error),
    #[error("applying migrations failed: {}", words(.0))]
    Migrate(#[source] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(String),
}

/// What went wrong, in PostgreSQL's own words when it said something (`tokio_postgres` itself
/// shows only "db error" or "error connecting to server"), else with the cause underneath (the
/// refused connection, the unknown host).
pub fn words(e: &tokio_postgres::Error) -> String {
    use std::error::Error as _;
    if let Some(db) = e.as_db_error() {
        return db.to_string();
    }
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

/// Where the database is.
#[derive(Debug, Clone)]
pub enum Location {
    /// A server the operator runs (`DATABASE_URL`; it may hold a password, so it is kept out of
    /// `Debug`).
    Url(SecretString),
    /// The private cluster under the data directory.
    Embedded(EmbeddedOptions),
}

pub struct Database {
    config: tokio_postgres::Config,
    embedded: Option<EmbeddedPostgres>,
}

impl Database {
    /// Starts the embedded cluster if that is the location, and migrates (so a bad database
    /// fails here, not on first use).
    pub async fn open(location: &Location) -> Result<Self, DbError> {
        let (config, embedded) = match location {
            Location::Url(url) => (url.expose_secret().parse().map_err(DbError::BadUrl)?, None),
            Location::Embedded(options) => {
                let options = options.clone();
                let server = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&options))
                    .await
                    .map_err(|e| DbError::Pool(e.to_string()))??;
                retry_connect(CONNECT_PATIENCE, || {
                    embedded::ensure_database(&server, EMBEDDED_DATABASE)
                })
                .await?;
                (server.connect_config(EMBEDDED_DATABASE), Some(server))
            }
        };
        // Only our own cluster gets patience while it starts; a server named by URL must answer.
        let patience = if embedded.is_some() {
            CONNECT_PATIENCE
        } else {
            Duration::ZERO
        };
        let (mut client, connection) = retry_connect(patience, || config.connect(NoTls)).await?;
        let driver = tokio::spawn(connection);
        let applied = migrate::run(&mut client).await.map_err(DbError::Migrate)?;
        if !applied.is_empty() {
            tracing::info!(?applied, "applied database migrations");
        }
        drop(client);
        let _ = driver.await;
        Ok(Database { config, embedded })
    }

    /// A handle with `size` shared connections (and a few reserved for transactions), made
    /// when first used. One per worker thread keeps each connection's I/O on the thread that
    /// uses it.
    pub fn new_handle(&self, size: usize) -> Result<DbHandle, DbError> {
        Ok(DbHandle::new(
            new_pool(&self.config, size)?,
            new_pool(&self.config, RESERVED_CONNECTIONS)?,
        ))
    }

    /// Stops the embedded cluster (if any) and waits for it to exit. Handles still open lose
    /// their connections.
    pub async fn shutdown(mut self) {
        if let Some(server) = self.embedded.take() {
            let _ = tokio::task::spawn_blocking(move || server.stop()).await;
        }
    }
}

fn new_pool(config: &tokio_postgres::Config, size: usize) -> Result<Pool, DbError> {
    let manager = Manager::from_config(
        config.clone(),
        NoTls,
        ManagerConfig {
            // Connections come back to the pool only when a shared one failed (see `shared`):
            // rare, so a round trip to prove the replacement works costs nothing in practice.
            recycling_method: RecyclingMethod::Verified,
        },
    );
    Pool::builder(manager)
        .max_size(size.max(MIN_POOL_SIZE))
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(10)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| DbError::Pool(e.to_string()))
}

/// Retries a connection attempt while the server is still starting up (or its socket is not
/// accepting yet), for up to `patience`.
async fn retry_connect<T, F, Fut>(patience: Duration, mut attempt: F) -> Result<T, DbError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tokio_postgres::Error>>,
{
    let deadline = Instant::now() + patience;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) => {
                let starting = e.code() == Some(&SqlState::CANNOT_CONNECT_NOW)
                    || (e.code().is_none() && e.as_db_error().is_none());
                if !starting || Instant::now() > deadline {
                    return Err(DbError::Connect(e));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
