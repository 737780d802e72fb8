//! The composition root. [`App::build`] turns the configuration into what runs: the database
//! (embedded or by URL, migrated) and the password hasher; [`App::services`]
//! hands each worker (or a script) its own [`Services`]. `cli.rs` only parses and calls in here;
//! tests build an `App` to run a whole server in-process.

use std::sync::Arc;

use secrecy::SecretString;

use crate::admin::Console;
use crate::analytics::Analytics;
use crate::config::Config;
use crate::db::{Database, DbError, DbHandle};
use crate::mail::sender::Sender;
use crate::mail::transport::Transport;
use crate::mail::{MailError, Mailer, Templates};
use crate::permissions::Permissions;
use crate::users::{PasswordHasher, Users};
use crate::vitals::Vitals;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Database(#[from] DbError),
    #[error(transparent)]
    Key(#[from] crate::wire::key::KeyError),
    #[error("argon2: {0}")]
    Hasher(String),
    #[error(transparent)]
    Mail(#[from] MailError),
    #[error("cannot start the mail sender: {0}")]
    MailSender(#[source] std::io::Error),
}

/// What one worker thread (or one script) works with: its own database handle and the domain
/// services on it. Cheap to clone; never shared between threads once a worker has it.
#[derive(Clone)]
pub struct Services {
    pub db: DbHandle,
    pub users: Users,
    pub mailer: Mailer,
    /// The operator's console; `None` when `console.enabled` is off.
    pub console: Option<Console>,
    pub analytics: Analytics,
    /// The process's client permissions per scope (one for every worker).
    pub permissions: Arc<Permissions>,
    /// What the console's Server and Projects pages show (one for every worker).
    pub vitals: Arc<Vitals>,
}

/// The running configuration's resources, built once per process.
pub struct App {
    config: Config,
    database: Database,
    hasher: Arc<PasswordHasher>,
    mailer: Mailer,
    permissions: Arc<Permissions>,
    vitals: Arc<Vitals>,
    /// Sign-ups per client address, one budget for every worker.
    sign_ups: Arc<crate::rate::PerMinute>,
}

impl App {
    /// Checks the argon2 parameters, then opens the database (starting the embedded cluster
    /// when no URL is set) and migrates it.
    pub async fn build(config: Config) -> Result<App, AppError> {
        // Cheap checks first: a bad setting should not wait for a database to start.
        let hasher =
            PasswordHasher::new(config.argon2).map_err(|e| AppError::Hasher(e.to_string()))?;
        Transport::from_settings(&config.mail, &config.data_dir)?;
        let mailer = Mailer::new(
            Templates::new(config.templates_dir()),
            &config.public_url,
            &config.mail,
        );
        let database = Database::open(&config.database_location()).await?;
        let sign_ups = Arc::new(crate::rate::PerMinute::new(
            config.users.sign_ups_per_address_per_minute,
        ));
        Ok(App {
            config,
            database,
            hasher: Arc::new(hasher),
            mailer,
            permissions: Arc::default(),
            vitals: Arc::default(),
            sign_ups,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The process's vitals (what the console's Server and Projects pages show).
    pub fn vitals(&self) -> &Arc<Vitals> {
        &self.vitals
    }

    /// The key clients sign requests with: the configured one, else the data directory's (made
    /// there on first use). Only a server needs it: a script run makes no key file.
    pub fn server_key(&self) -> Result<SecretString, AppError> {
        server_key(&self.config)
    }

    /// Services on a database handle of `connections` shared connections of its own.
    pub fn services(&self, connections: usize) -> Result<Services, AppError> {
        let db = self.database.new_handle(connections)?;
        let users = Users::new(db.clone(), self.hasher.clone(), self.mailer.clone())
            .with_login_throttle(self.config.login_throttle)
            .with_settings(self.config.users)
            .with_sign_up_budget(self.sign_ups.clone());
        let analytics = Analytics::new(db.clone(), self.config.analytics);
        let console = self.config.console.enabled.then(|| {
            Console::new(
                crate::admin::ConsoleParts {
                    db: db.clone(),
                    hasher: self.hasher.clone(),
                    users: users.clone(),
                    analytics: analytics.clone(),
                    permissions: self.permissions.clone(),
                    vitals: self.vitals.clone(),
                    projects_dir: self.config.server.projects_dir.clone(),
                },
                self.config.console.clone(),
            )
        });
        Ok(Services {
            analytics,
            permissions: self.permissions.clone(),
            vitals: self.vitals.clone(),
            db,
            users,
            mailer: self.mailer.clone(),
            console,
        })
    }

    /// Starts this instance's mail sender (see [`crate::mail::sender`]); it runs until the
    /// returned handle is stopped or dropped. Logs where mail goes.
    pub fn start_mail_sender(&self) -> Result<Sender, AppError> {
        let transport = Transport::from_settings(&self.config.mail, &self.config.data_dir)?;
        tracing::info!(
            transport = %transport.describe(),
            templates = %self.mailer.templates().dir().display(),
            "mail"
        );
        if !matches!(transport, Transport::Files(_))
            && self
                .config
                .mail
                .client_senders
                .iter()
                .any(|s| s.trim() == "*")
        {
            tracing::warn!(
                "mail.client_senders is \"*\": any client holding the server key can have this \
                 server mail any address under any sender name; list your senders there"
            );
        }
        Sender::spawn(
            self.database.new_handle(1)?,
            self.mailer.clone(),
            transport,
            self.config.mail.clone(),
        )
        .map_err(AppError::MailSender)
    }

    /// Stops the embedded database (if any). Handles still open lose their connections.
    pub async fn shutdown(self) {
        self.database.shutdown().await;
    }
}

/// The configured server key, else the data directory's (made on first use).
pub fn server_key(config: &Config) -> Result<SecretString, AppError> {
    Ok(match &config.server.server_key {
        Some(key) => key.clone(),
        None => crate::wire::key::load_or_create(&config.data_dir)?.into(),
    })
}
