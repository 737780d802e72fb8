//! The `coronium` command line. Each subcommand is a function here; `main.rs` only parses and
//! reports.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};

use crate::app::{App, AppError};
use crate::config::{Config, ConfigError};
use crate::db::embedded::EmbeddedError;
use crate::db::{DbError, EmbeddedPostgres};
use crate::lua::{Output, Runtime, RuntimeOptions, ScriptError};
use crate::users::PasswordHasher;

#[derive(Debug, Parser)]
#[command(
    name = "coronium",
    version,
    about = "Coronium Core compatible Lua server on PostgreSQL",
    after_help = "Environment (each overrides coronium.toml; every setting has one, see \
docs/configuration.md):
  DATABASE_URL            an external PostgreSQL instead of the embedded one
  CORONIUM_DATA_DIR       the data directory (--data-dir)
  CORONIUM_SERVER_KEY     the server key, instead of <data dir>/server.key
  CORONIUM_HOST, CORONIUM_PORT, CORONIUM_WORKERS, CORONIUM_PROJECTS_DIR   as serve's flags
  CORONIUM_PG_BIN_DIR     where initdb and postgres are (default: PATH, /usr/lib/postgresql/*/bin)
  CORONIUM_LOG            error, warn, info (default), debug, trace, or TARGET=LEVEL,...
  CORONIUM_LOG_FORMAT     human (default) or json"
)]
pub struct Cli {
    /// Config file (default: ./coronium.toml when it exists).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Data directory: the embedded PostgreSQL cluster, the server key (server.key) that `serve`
    /// answers to and `call` signs with, and development mail (default ./coronium-data;
    /// CORONIUM_DATA_DIR).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "CORONIUM_LOG_FORMAT",
        default_value = "human"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
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
    /// Serve the Coronium wire protocol and API projects over HTTP.
    Serve {
        /// Port to listen on (default 10001; 0 picks a free port).
        #[arg(long)]
        port: Option<u16>,
        /// Address to listen on: an IP address or localhost (default 0.0.0.0).
        #[arg(long, value_parser = crate::config::parse_host)]
        host: Option<std::net::IpAddr>,
        /// Directory of API projects (default ./projects).
        #[arg(long, value_name = "DIR")]
        projects: Option<PathBuf>,
        /// Worker threads (default: one per core).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Call a running server the way a Coronium client does (signed), and print the answer.
    Call {
        /// Project (`api.users` for the users module).
        project: String,
        /// Action (method) name.
        action: String,
        /// Parameters as a JSON object (default `{}`).
        #[arg(default_value = "{}")]
        params: String,
        /// The server's address: HOST:PORT, or https://HOST:PORT for a server with TLS
        /// (default 127.0.0.1:<configured port>).
        #[arg(long, value_name = "HOST:PORT")]
        addr: Option<String>,
        /// A PEM CA certificate to trust besides the public roots (a private or self-signed
        /// server certificate), for an https:// address.
        #[arg(long, value_name = "PATH")]
        ca_file: Option<PathBuf>,
        /// The scope to act in (X-Scope).
        #[arg(long, default_value = "default")]
        scope: String,
    },
    /// Print the signing headers of one request (for load generators and shell clients).
    #[command(hide = true)]
    Sign {
        project: String,
        action: String,
        /// Unix time to sign (default: now).
        #[arg(long)]
        time: Option<i64>,
    },
    /// Time one password hash with the configured argon2 parameters (median of N, in ms).
    #[command(hide = true)]
    HashTime {
        #[arg(long, default_value_t = 15)]
        samples: usize,
    },
    /// Manage users (works beside a running server).
    #[command(subcommand)]
    Users(UsersCommand),
    /// Manage the console's admin accounts (works beside a running server).
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Create an API project: main.lua, a test script, and editor settings with the `core` types.
    New {
        /// The project's name: clients call it by this name (letters, digits, '_' and '-').
        name: String,
        /// Directory of API projects (default ./projects).
        #[arg(long, value_name = "DIR")]
        projects: Option<PathBuf>,
    },
    /// Compile every Lua file of the API projects and report syntax errors (no database needed;
    /// exits 1 on an error).
    Check {
        /// Only this project: its name in the projects directory, or its folder.
        project: Option<String>,
        /// Directory of API projects (default ./projects).
        #[arg(long, value_name = "DIR")]
        projects: Option<PathBuf>,
    },
    /// Print the server key clients sign requests with (created on first use).
    Key {
        /// Replace the key with a new one (clients must be given the new key).
        #[arg(long)]
        regenerate: bool,
    },
}

impl Command {
    /// Commands that print an answer and exit (no server, no script).
    pub fn prints_and_exits(&self) -> bool {
        !matches!(self, Command::Serve { .. } | Command::Run { .. })
    }
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Clear the failed-login throttle of an account (from every address), so its owner can log
    /// in at once.
    Unlock {
        /// The username or email the account logs in with.
        name: String,
        /// The account's scope.
        #[arg(long, default_value = "default")]
        scope: String,
    },
    /// List a scope's users by username (50 at a time; --after continues).
    List {
        #[arg(long, default_value = "default")]
        scope: String,
        /// Only usernames (or, with an '@', emails) that start with this.
        #[arg(long)]
        search: Option<String>,
        /// Continue after this username (or email).
        #[arg(long)]
        after: Option<String>,
    },
    /// Print one user's record as JSON.
    Show { user_id: String },
    /// Make a user inactive: their logins answer `active = false`.
    Disable { user_id: String },
    /// Make a user active again.
    Enable { user_id: String },
    /// Delete a user, their OAuth links and unsent mail (asks first; `--yes` does not).
    Delete {
        user_id: String,
        /// Delete without asking.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Add a console admin. The password is asked for (or read from one line of stdin).
    Add { name: String },
    /// Set an admin's password; their open sessions end.
    Passwd { name: String },
    /// List the admins.
    List,
    /// Remove an admin; their open sessions end.
    Remove { name: String },
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Setup(String),
    #[error("{0}")]
    Script(ScriptError),
    #[error(transparent)]
    Key(#[from] crate::wire::key::KeyError),
    #[error(transparent)]
    Server(#[from] crate::server::ServerError),
    #[error(transparent)]
    App(#[from] AppError),
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
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
        Command::Serve {
            port,
            host,
            projects,
            workers,
        } => {
            let mut config = config;
            let server = &mut config.server;
            server.port = port.unwrap_or(server.port);
            server.host = host.unwrap_or(server.host);
            server.projects_dir = projects.unwrap_or(server.projects_dir.clone());
            server.workers = workers.unwrap_or(server.workers);
            local.block_on(&runtime, serve(config))
        }
        Command::Key { regenerate } => key(&config, regenerate),
        Command::New { name, projects } => {
            new_project(&projects.unwrap_or(config.server.projects_dir), &name)
        }
        Command::Check { project, projects } => check_projects(
            &projects.unwrap_or(config.server.projects_dir),
            project.as_deref(),
        ),
        Command::Users(UsersCommand::Unlock { name, scope }) => {
            local.block_on(&runtime, unlock(config, &name, &scope))
        }
        Command::Users(command) => local.block_on(&runtime, users_command(config, command)),
        Command::Admin(command) => {
            // Read before anything starts: the prompt should not wait behind a database start.
            let password = match &command {
                AdminCommand::Add { .. } | AdminCommand::Passwd { .. } => Some(read_password()?),
                _ => None,
            };
            local.block_on(&runtime, admin_command(config, command, password))
        }
        Command::Sign {
            project,
            action,
            time,
        } => {
            let key = server_key(&config)?;
            let time = time.unwrap_or_else(crate::wire::client::unix_now);
            for (name, value) in crate::wire::client::signed_headers(
                key.expose_secret(),
                &project,
                &action,
                "default",
                time,
            ) {
                if name.starts_with("X-Request") {
                    println!("{name}: {value}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::HashTime { samples } => runtime.block_on(hash_time(&config, samples)),
        Command::Call {
            project,
            action,
            params,
            addr,
            ca_file,
            scope,
        } => {
            let addr = addr.unwrap_or_else(|| format!("127.0.0.1:{}", config.server.port));
            let call_to = CallTo {
                addr: &addr,
                ca_file: ca_file.as_deref(),
            };
            runtime.block_on(call(&config, call_to, &project, &action, &params, &scope))
        }
    }
}

/// `coronium new`: writes the project and says how to call it and edit it.
fn new_project(projects_dir: &Path, name: &str) -> Result<ExitCode, CliError> {
    let folder = crate::scaffold::new_project(projects_dir, name)
        .map_err(|e| CliError::Setup(e.to_string()))?;
    println!("created {}", folder.display());
    println!("  main.lua        the project: each function in `api` is an action");
    println!("  test.lua        a script for `coronium run`");
    println!(
        "  .luaurc, .vscode/settings.json, types/coronium.d.luau   completion for `core` (docs/editor.md)"
    );
    println!();
    println!(
        "call it (with `coronium serve --projects {}` running):",
        projects_dir.display()
    );
    println!("  coronium call {name} hello '{{\"name\": \"you\"}}'");
    Ok(ExitCode::SUCCESS)
}

/// `coronium check`: compiles the projects' Lua files; exit status 1 on any problem.
fn check_projects(projects_dir: &Path, only: Option<&str>) -> Result<ExitCode, CliError> {
    let report =
        crate::lua::check::check(projects_dir, only).map_err(|e| CliError::Setup(e.to_string()))?;
    for problem in &report.problems {
        println!("{}", problem.message);
    }
    let files = plural(report.files, "file");
    let projects = plural(report.projects, "project");
    if report.projects == 0 {
        println!(
            "no projects in {}: a project is a folder holding a main.lua (`coronium new NAME` makes one)",
            projects_dir.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    if report.problems.is_empty() {
        println!("ok: {files} in {projects} compiled");
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "{} in {files} of {projects}",
            plural(report.problems.len(), "problem")
        );
        Ok(ExitCode::FAILURE)
    }
}

/// "1 file", "3 files".
fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// The configured server key, else the data directory's (made on first use).
fn server_key(config: &Config) -> Result<SecretString, CliError> {
    Ok(crate::app::server_key(config)?)
}

/// `coronium hash-time`: the cost of one password hash, for the benchmark's hashing ceiling.
async fn hash_time(config: &Config, samples: usize) -> Result<ExitCode, CliError> {
    let hasher = PasswordHasher::new(config.argon2).map_err(|e| CliError::Setup(e.to_string()))?;
    let secret = crate::users::password::Secret::from_plain("benchmark");
    // Warm up first: the first hashes of a thread pay for faulting in m_cost of fresh memory.
    for _ in 0..3 {
        hasher
            .hash(&secret)
            .await
            .map_err(|e| CliError::Setup(e.to_string()))?;
    }
    let mut times = Vec::with_capacity(samples.max(1));
    for _ in 0..samples.max(1) {
        let started = std::time::Instant::now();
        hasher
            .hash(&secret)
            .await
            .map_err(|e| CliError::Setup(e.to_string()))?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    println!("{:.3}", times[times.len() / 2]);
    Ok(ExitCode::SUCCESS)
}

/// Where `coronium call` sends.
struct CallTo<'a> {
    addr: &'a str,
    ca_file: Option<&'a Path>,
}

/// `coronium call`: exits 0 on a result, 1 on an error answer.
async fn call(
    config: &Config,
    to: CallTo<'_>,
    project: &str,
    action: &str,
    params: &str,
    scope: &str,
) -> Result<ExitCode, CliError> {
    let addr = to.addr;
    let params: serde_json::Value = serde_json::from_str(params)
        .map_err(|e| CliError::Setup(format!("the parameters are not JSON: {e}")))?;
    let (key, key_source) = signing_key(config)?;
    let target = crate::wire::client::Target::parse(addr, to.ca_file)
        .map_err(|e| CliError::Setup(e.to_string()))?;
    let answer = crate::wire::client::call_to(
        &target,
        key.expose_secret(),
        project,
        action,
        scope,
        &params,
    )
    .await
    .map_err(|e| {
        let mut message = format!("cannot call {addr}: {e}");
        if e.to_string().contains("invalid HTTP version") {
            // A TLS server answers a plain request with a TLS alert, which is no HTTP.
            message.push_str(&format!(
                " (the server speaks HTTPS: use --addr https://{}, and --ca-file \
                         for a private or self-signed certificate)",
                addr.trim_start_matches("http://")
            ));
        }
        CliError::Setup(message)
    })?;
    println!(
        "{}",
        serde_json::to_string_pretty(&answer).unwrap_or_else(|_| answer.to_string())
    );
    if answer["result"]["error"] == crate::wire::SIGNATURE_INVALID {
        eprintln!(
            "hint: the request was signed with the key from {key_source}; the server at {addr} \
             has another (does it use another data directory, or was its key regenerated?)"
        );
    }
    let failed = answer["result"].get("error").is_some() || answer.get("result").is_none();
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The key of the server `call` calls, and where it came from: never a new one (a new key
/// cannot be the server's).
fn signing_key(config: &Config) -> Result<(SecretString, String), CliError> {
    if let Some(key) = &config.server.server_key {
        let source = "CORONIUM_SERVER_KEY (or server_key in the config)";
        return Ok((key.clone(), source.to_owned()));
    }
    let path = key_file(config);
    let shown = std::path::absolute(&path).unwrap_or(path);
    match crate::wire::key::load(&config.data_dir) {
        Ok(key) => Ok((SecretString::from(key), shown.display().to_string())),
        Err(crate::wire::key::KeyError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Err(CliError::Setup(format!(
                "there is no server key at {}: `coronium call` signs with the key of the server \
                 it calls, which `coronium serve` keeps in its data directory; run `call` with \
                 that server's --data-dir (or CORONIUM_DATA_DIR), or set CORONIUM_SERVER_KEY",
                shown.display()
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// Where the data directory's key lives.
fn key_file(config: &Config) -> PathBuf {
    config.data_dir.join(crate::wire::key::KEY_FILE)
}

/// `coronium key [--regenerate]`.
fn key(config: &Config, regenerate: bool) -> Result<ExitCode, CliError> {
    let key = match (regenerate, config.server.server_key.is_some()) {
        (true, true) => {
            return Err(CliError::Setup(
                "the server key is set by the configuration (server_key or CORONIUM_SERVER_KEY); \
                 change it there"
                    .into(),
            ));
        }
        (true, false) => crate::wire::key::write_new(&config.data_dir)?.into(),
        (false, _) => {
            // Where it comes from, on stderr: stdout stays the key alone, for scripts.
            let file = key_file(config);
            if config.server.server_key.is_some() {
                eprintln!("the server key set by server_key or CORONIUM_SERVER_KEY:");
            } else if file.is_file() {
                eprintln!("the server key in {}:", file.display());
            } else {
                eprintln!(
                    "a new server key, now in {} (a server started with this data directory \
                     answers to it):",
                    file.display()
                );
            }
            server_key(config)?
        }
    };
    // Printing the key is what this command is for.
    println!("{}", key.expose_secret());
    if regenerate {
        eprintln!(
            "The new key is in {}. A running server keeps signing with the old one until it is \
             restarted; restart it, and give your clients the new key.",
            key_file(config).display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `coronium serve`: runs until SIGINT or SIGTERM, then drains in-flight requests and stops the
/// embedded database last.
async fn serve(config: Config) -> Result<ExitCode, CliError> {
    // The port and the TLS files first: a port in use or a missing certificate is said before
    // any PostgreSQL starts (connections made meanwhile wait in the backlog).
    let listeners = crate::server::Listeners::bind(&config.server)?;
    let app = App::build(config).await?;
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "listening on {}://{}",
            listeners.scheme(),
            listeners.local_addr()
        );
        let _ = out.flush();
    }
    tracing::info!(addr = %listeners.local_addr(), workers = listeners.workers(), "coronium serving");
    startup_summary(app.config(), listeners.scheme(), listeners.local_addr());
    let served = crate::server::run(&app, listeners, async {
        let signal = shutdown_signal().await;
        tracing::info!(signal, "shutting down: draining in-flight requests");
    })
    .await;
    app.shutdown().await;
    served?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// The log filter `CORONIUM_LOG` asks for: a level (`debug`), or directives (`info,coronium=debug`).
/// A bare word that is not a level would be taken as a target at trace and turn every other
/// line off (`verbose` logged nothing), so it is refused with what would work.
pub fn log_filter(value: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];
    for directive in value.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !directive.contains('=') && !LEVELS.contains(&directive.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "CORONIUM_LOG={value:?}: {directive:?} is not a level (error, warn, info, debug, \
                 trace or off); for one part of the server, write it as TARGET=LEVEL \
                 (info,coronium::access=warn)"
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(value)
        .map_err(|e| format!("CORONIUM_LOG={value:?} is not a log filter: {e}"))
}

/// Logs where everything is: data, database, projects (warning when there are none), the key
/// and the console, so a mistyped folder shows at start and not as "Unknown project" later.
fn startup_summary(config: &Config, scheme: &str, addr: std::net::SocketAddr) {
    let database = match &config.database_url {
        Some(url) => crate::config::redacted_url(url.expose_secret()),
        None => format!("embedded, in {}", config.data_dir.join("pg").display()),
    };
    tracing::info!(data_dir = %config.data_dir.display(), %database, "data");
    let folder = &config.server.projects_dir;
    match crate::lua::project_dirs(folder) {
        Ok(found) if found.is_empty() => tracing::warn!(
            folder = %folder.display(),
            "no API projects in the projects folder (a project is <folder>/<Name>/main.lua): \
             calls to projects answer \"Unknown project\"; --projects names another folder"
        ),
        Ok(found) => {
            let names: Vec<&str> = found.iter().map(|(name, _)| name.as_str()).collect();
            tracing::info!(folder = %folder.display(), projects = %names.join(", "), "API projects");
        }
        // The default folder, absent: a server for the built-in modules only.
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                && *folder == crate::config::ServerSettings::default().projects_dir =>
        {
            tracing::info!(
                folder = %folder.display(),
                "no projects folder: only api.users and api.analytics answer; --projects DIR \
                 serves the API projects in DIR"
            )
        }
        Err(e) => tracing::warn!(
            folder = %folder.display(),
            error = %e,
            "the projects folder cannot be read: calls to projects answer \"Unknown project\"; \
             --projects names another folder"
        ),
    }
    match config.server.server_key {
        Some(_) => tracing::info!("server key: from the configuration (CORONIUM_SERVER_KEY)"),
        None => tracing::info!(
            file = %key_file(config).display(),
            "server key"
        ),
    }
    if config.console.enabled {
        let host = if addr.ip().is_unspecified() {
            std::net::SocketAddr::new([127, 0, 0, 1].into(), addr.port())
        } else {
            addr
        };
        tracing::info!(
            "console: {scheme}://{host}/_coronium/admin/ (an account: coronium admin add NAME)"
        );
    }
}

/// `coronium run FILE`: one script, `print` to stdout. SIGINT / SIGTERM stop the script, then the
/// embedded database, and exit with 128 + the signal number.
async fn run_script(
    config: Config,
    file: &Path,
    scope: Option<String>,
) -> Result<ExitCode, CliError> {
    // A missing file is said before a database starts for it.
    if let Err(source) = std::fs::metadata(file) {
        return Err(CliError::Script(ScriptError::Read {
            path: file.display().to_string(),
            source,
        }));
    }
    let app = App::build(config).await?;
    let config = app.config();
    let options = RuntimeOptions {
        scope: scope.unwrap_or(config.scope.clone()),
        memory_limit: config.lua.memory_limit_mb.saturating_mul(1024 * 1024),
        output: Output::Stdout,
        projects_dir: None,
        cpu_budget: None,
        pulse: None,
    };
    let outcome = match app.services(config.pool_size) {
        Ok(services) => match Runtime::new(services, options) {
            Ok(lua) => {
                tokio::select! {
                    result = lua.run_file(file) => result
                        .map(|()| ExitCode::SUCCESS)
                        .map_err(CliError::Script),
                    signal = shutdown_signal() => Ok(ExitCode::from(128 + signal)),
                }
            }
            Err(e) => Err(CliError::Script(e)),
        },
        Err(e) => Err(e.into()),
    };
    app.shutdown().await;
    outcome
}

/// An `App` for a maintenance command: on its own database, or, when a server holds the
/// embedded cluster, on that cluster through its socket.
async fn open_beside_server(config: Config) -> Result<App, CliError> {
    Ok(match App::build(config.clone()).await {
        Err(AppError::Database(DbError::Embedded(EmbeddedError::InUse { .. }))) => {
            let crate::db::Location::Embedded(options) = config.database_location() else {
                unreachable!("only the embedded cluster has a data directory lock")
            };
            let mut through_socket = config;
            through_socket.database_url = Some(
                EmbeddedPostgres::running_cluster_url(&options, crate::db::EMBEDDED_DATABASE)
                    .into(),
            );
            App::build(through_socket).await?
        }
        other => other?,
    })
}

fn user_error(e: crate::users::UserError) -> CliError {
    match e {
        crate::users::UserError::Internal(cause) => CliError::Setup(cause.to_string()),
        other => CliError::Setup(other.to_string()),
    }
}

/// `coronium users unlock NAME --scope S`.
async fn unlock(config: Config, name: &str, scope: &str) -> Result<ExitCode, CliError> {
    let parsed_scope = crate::users::Scope::parse(scope).map_err(user_error)?;
    let app = open_beside_server(config).await?;
    let cleared = match app.services(2) {
        Ok(services) => services
            .users
            .unlock(&parsed_scope, name)
            .await
            .map_err(user_error),
        Err(e) => Err(e.into()),
    };
    app.shutdown().await;
    let cleared = cleared?;
    println!("cleared {cleared} failed-login counter(s) of {name:?} in scope {scope:?}");
    Ok(ExitCode::SUCCESS)
}

/// `coronium users list|show|disable|enable|delete`.
async fn users_command(config: Config, command: UsersCommand) -> Result<ExitCode, CliError> {
    let app = open_beside_server(config).await?;
    let outcome = match app.services(2) {
        Ok(services) => run_users_command(&services, command).await,
        Err(e) => Err(e.into()),
    };
    app.shutdown().await;
    outcome
}

/// `coronium admin add|passwd|list|remove`.
async fn admin_command(
    config: Config,
    command: AdminCommand,
    password: Option<SecretString>,
) -> Result<ExitCode, CliError> {
    let app = open_beside_server(config).await?;
    let outcome = match app.services(2) {
        Ok(services) => run_admin_command(&services, command, password).await,
        Err(e) => Err(e.into()),
    };
    app.shutdown().await;
    outcome
}

fn console_of(services: &crate::app::Services) -> Result<&crate::admin::Console, CliError> {
    services.console.as_ref().ok_or_else(|| {
        CliError::Setup("the console is turned off (console.enabled = false)".into())
    })
}

async fn run_users_command(
    services: &crate::app::Services,
    command: UsersCommand,
) -> Result<ExitCode, CliError> {
    let console = console_of(services)?;
    let user_id = |id: &str| {
        crate::users::input::UserId::parse(id)
            .ok_or_else(|| CliError::Setup(format!("{id:?} is not a user id (a UUID)")))
    };
    match command {
        UsersCommand::List {
            scope,
            search,
            after,
        } => {
            let page = console
                .list_users(&scope, search.as_deref().unwrap_or(""), after)
                .await?;
            for row in &page {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    row.user_id,
                    row.username,
                    row.email.as_deref().unwrap_or("-"),
                    row.group,
                    match (&row.confirmation, row.active) {
                        (Some(c), _) => c.as_str(),
                        (None, true) => "active",
                        (None, false) => "inactive",
                    }
                );
            }
            if page.is_empty() {
                eprintln!("no users in scope {scope:?} match");
            }
        }
        UsersCommand::Show { user_id: id } => {
            let user = services
                .users
                .get(crate::users::Within::AnyScope, Some(user_id(&id)?))
                .await
                .map_err(user_error)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&user).unwrap_or_default()
            );
        }
        UsersCommand::Disable { user_id: ref id } | UsersCommand::Enable { user_id: ref id } => {
            let active = matches!(command, UsersCommand::Enable { .. });
            let user = console
                .set_user_active_from_cli(user_id(id)?, active)
                .await
                .map_err(user_error)?;
            println!(
                "{} is {}",
                user.username,
                if user.active { "active" } else { "inactive" }
            );
        }
        UsersCommand::Delete { user_id: id, yes } => {
            let id = user_id(&id)?;
            if !yes {
                let user = services
                    .users
                    .get(crate::users::Within::AnyScope, Some(id))
                    .await
                    .map_err(user_error)?;
                eprint!(
                    "Delete {} (scope {}{})? This cannot be undone. [y/N] ",
                    user.username,
                    user.scope,
                    user.email
                        .as_deref()
                        .map(|e| format!(", {e}"))
                        .unwrap_or_default()
                );
                let mut answer = String::new();
                let _ = std::io::stdin().read_line(&mut answer);
                if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
                    eprintln!("not deleted (--yes deletes without asking)");
                    return Ok(ExitCode::FAILURE);
                }
            }
            console.delete_user_from_cli(id).await.map_err(user_error)?;
            println!("deleted");
        }
        UsersCommand::Unlock { .. } => unreachable!("handled before"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_admin_command(
    services: &crate::app::Services,
    command: AdminCommand,
    password: Option<SecretString>,
) -> Result<ExitCode, CliError> {
    let console = console_of(services)?;
    let password = || password.as_ref().map(|p| p.expose_secret()).unwrap_or("");
    match command {
        AdminCommand::Add { name } => {
            console.add_admin(&name, password()).await?;
            println!("added admin {name:?}; sign in at /_coronium/admin/");
        }
        AdminCommand::Passwd { name } => {
            console.set_admin_password(&name, password()).await?;
            println!("changed the password of {name:?}; their sessions ended");
        }
        AdminCommand::List => {
            let admins = console.admins().await?;
            for admin in &admins {
                println!(
                    "{}\tcreated {}\tlast sign-in {}",
                    admin.name,
                    crate::admin::pages::format_utc(admin.created),
                    admin
                        .last_login
                        .map(crate::admin::pages::format_utc)
                        .unwrap_or_else(|| "never".into())
                );
            }
            if admins.is_empty() {
                eprintln!("no admins yet: add one with `coronium admin add NAME`");
            }
        }
        AdminCommand::Remove { name } => {
            console.remove_admin(&name).await?;
            println!("removed admin {name:?}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A new password: asked twice on a terminal, else one line of stdin (for scripts).
fn read_password() -> Result<SecretString, CliError> {
    use std::io::IsTerminal as _;
    let unreadable = |e: std::io::Error| CliError::Setup(format!("cannot read the password: {e}"));
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ").map_err(unreadable)?;
        let again = rpassword::prompt_password("Again: ").map_err(unreadable)?;
        if first != again {
            return Err(CliError::Setup("the passwords differ".into()));
        }
        return Ok(first.into());
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(unreadable)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned().into())
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

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn log_levels_and_directives_are_taken_and_a_stray_word_is_refused() {
        for good in [
            "debug",
            "WARN",
            "info,coronium::access=warn",
            "coronium=trace",
            "",
        ] {
            assert!(log_filter(good).is_ok(), "{good}");
        }
        let refused = log_filter("verbose").unwrap_err();
        assert!(refused.contains("\"verbose\" is not a level"), "{refused}");
        assert!(log_filter("info,coronium=loud").is_err());
    }
}
