//! The `coronium` command line. Each subcommand is a function here; `main.rs` only parses and
//! reports.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError};
use crate::db::{Database, DbError};
use crate::lua::{Output, Runtime, RuntimeOptions, ScriptError};
use crate::users::{PasswordHasher, Users};

#[derive(Debug, Parser)]
#[command(
    name = "coronium",
    version,
    about = "Coronium Core compatible Lua server on PostgreSQL"
)]
pub struct Cli {
    /// Config file (default: ./coronium.toml when it exists).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Data directory: holds the embedded PostgreSQL cluster (default ./coronium-data).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one Lua script with `core` against the configured database.
    Run {
        /// The Lua file to run.
        file: PathBuf,
        /// The scope `core.users` acts in (default: the configured scope, "default").
        #[arg(long)]
        scope: Option<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Database(#[from] DbError),
    #[error("{0}")]
    Setup(String),
    #[error("{0}")]
    Script(ScriptError),
}

impl Cli {
    /// The settings: file and environment, then this command line's flags on top.
    pub fn config(&self) -> Result<Config, ConfigError> {
        let mut config = Config::load(self.config.as_deref())?;
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        Ok(config)
    }
}

/// Runs the command to completion on the calling thread and says how the process should exit.
pub fn execute(cli: Cli) -> Result<ExitCode, CliError> {
    let config = cli.config()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Setup(format!("cannot start the async runtime: {e}")))?;
    let local = tokio::task::LocalSet::new();
    match cli.command {
        Command::Run { file, scope } => local.block_on(&runtime, run_script(config, &file, scope)),
    }
}

/// `coronium run FILE`: one script, `print` to stdout. SIGINT / SIGTERM stop the script, then the
/// embedded database, and exit with 128 + the signal number.
async fn run_script(
    config: Config,
    file: &Path,
    scope: Option<String>,
) -> Result<ExitCode, CliError> {
    let database = Database::open(&config.database_location(), config.pool_size).await?;
    let hasher = PasswordHasher::new(config.argon2).map_err(|e| CliError::Setup(e.to_string()))?;
    let users = Users::new(
        database.pool().clone(),
        Arc::new(hasher),
        &config.public_url,
    );
    let outcome = match Runtime::new(
        users,
        RuntimeOptions {
            scope: scope.unwrap_or(config.scope.clone()),
            memory_limit: config.lua.memory_limit_mb.saturating_mul(1024 * 1024),
            output: Output::Stdout,
        },
    ) {
        Ok(lua) => {
            tokio::select! {
                result = lua.run_file(file) => result.map(|()| ExitCode::SUCCESS),
                signal = shutdown_signal() => Ok(ExitCode::from(128 + signal)),
            }
        }
        Err(e) => Err(e),
    };
    database.shutdown().await;
    outcome.map_err(CliError::Script)
}

/// Waits for SIGINT or SIGTERM and returns its number.
pub async fn shutdown_signal() -> u8 {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => libc::SIGINT as u8,
        _ = term.recv() => libc::SIGTERM as u8,
    }
}
