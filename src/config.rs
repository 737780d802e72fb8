//! Typed settings: defaults, then `coronium.toml` (or `--config PATH`), then environment
//! variables (`CORONIUM_*`, and `DATABASE_URL`), then command-line flags.

use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;

use crate::admin::ConsoleSettings;
use crate::analytics::AnalyticsSettings;
use crate::db::{EmbeddedOptions, Location};
use crate::mail::MailSettings;
use crate::users::{HashParams, ThrottleSettings, UsersSettings};

/// The config file read when `--config` is not given and it exists.
pub const DEFAULT_CONFIG_FILE: &str = "coronium.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("environment variable {name}={value:?}: {reason}")]
    Env {
        name: &'static str,
        value: String,
        reason: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the embedded cluster (and later the server key) live.
    pub data_dir: PathBuf,
    /// A PostgreSQL server to use instead of the embedded default.
    pub database_url: Option<SecretString>,
    /// The scope `coronium run` scripts act in.
    pub scope: String,
    /// The base URL links in mails point to.
    pub public_url: String,
    /// Database connections per pool.
    pub pool_size: usize,
    pub argon2: HashParams,
    /// Failed-login limits (`[login_throttle]`).
    pub login_throttle: ThrottleSettings,
    /// The users module's choices (`[users]`).
    pub users: UsersSettings,
    pub lua: LuaSettings,
    /// Mail transport, templates and retries (`[mail]`).
    pub mail: MailSettings,
    /// The operator's console (`[console]`).
    pub console: ConsoleSettings,
    /// `api.analytics` (`[analytics]`).
    pub analytics: AnalyticsSettings,
    pub postgres: PostgresSettings,
    pub server: ServerSettings,
}

/// `coronium serve`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on (an IP address, or `localhost`).
    #[serde(deserialize_with = "host_address")]
    pub host: std::net::IpAddr,
    /// Port to listen on (Coronium's API port is 10001; 0 picks a free one).
    pub port: u16,
    /// Worker threads, each with its own Lua state; 0 means one per core.
    pub workers: usize,
    /// Where API projects live (`<projects_dir>/<Name>/main.lua`).
    pub projects_dir: PathBuf,
    /// The server key clients sign with; generated into the data directory when unset.
    pub server_key: Option<SecretString>,
    /// Refuse requests whose `X-Request-Time` is further than this from our clock (seconds);
    /// 0 turns the check off.
    pub request_window_secs: u64,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Time a client has to send its request headers (and, on a new connection, its first byte;
    /// an HTTP/1.1 connection idle between requests this long is closed too).
    pub header_read_timeout_secs: u64,
    /// Time a client has to send a request's whole body once its headers are in.
    pub body_read_timeout_secs: u64,
    /// A connection with no request under way for this long is closed (HTTP/2 included).
    pub keep_alive_idle_secs: u64,
    /// Open connections one client address may hold at once; 0 for no cap.
    pub max_connections_per_ip: usize,
    /// Time a request may take from headers read to answer.
    pub request_timeout_secs: u64,
    /// Open connections accepted at once (process-wide); more are closed at once.
    pub max_connections: usize,
    /// Lua CPU time one request may use, in milliseconds.
    pub cpu_budget_ms: u64,
    /// Requests one client address may make per minute to the mail-link pages
    /// (`/_confirmation`, `/_resetpassword`); 0 for no limit.
    pub page_requests_per_minute: u32,
    /// On SIGTERM, how long in-flight requests get to finish.
    pub shutdown_grace_secs: u64,
    /// PEM certificate chain: with `tls_key`, the API port speaks HTTPS (files re-read when they
    /// change).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Proxies (addresses or networks, `"10.0.0.0/8"`) whose `X-Forwarded-For` names the client.
    /// From any other peer the header is ignored: the client is the socket's peer.
    #[serde(deserialize_with = "networks")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            host: std::net::IpAddr::from([0, 0, 0, 0]),
            port: 10001,
            workers: 0,
            projects_dir: PathBuf::from("./projects"),
            server_key: None,
            request_window_secs: 0,
            max_body_bytes: 1024 * 1024,
            header_read_timeout_secs: 10,
            body_read_timeout_secs: 10,
            keep_alive_idle_secs: 60,
            max_connections_per_ip: 1000,
            request_timeout_secs: 30,
            max_connections: 10_000,
            cpu_budget_ms: 1000,
            page_requests_per_minute: 30,
            shutdown_grace_secs: 10,
            tls_cert: None,
            tls_key: None,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LuaSettings {
    /// Memory limit of one Lua state, in MiB.
    pub memory_limit_mb: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresSettings {
    /// Directory holding `initdb` and `postgres`; searched for when unset.
    pub bin_dir: Option<PathBuf>,
    /// fsync and synchronous commit for the embedded cluster. Only tests should turn this off.
    pub durable: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./coronium-data"),
            database_url: None,
            scope: "default".into(),
            public_url: "http://localhost:10001".into(),
            pool_size: 8,
            argon2: HashParams::default(),
            login_throttle: ThrottleSettings::default(),
            users: UsersSettings::default(),
            lua: LuaSettings::default(),
            mail: MailSettings::default(),
            console: ConsoleSettings::default(),
            analytics: AnalyticsSettings::default(),
            postgres: PostgresSettings::default(),
            server: ServerSettings::default(),
        }
    }
}

impl Default for LuaSettings {
    fn default() -> Self {
        LuaSettings {
            memory_limit_mb: 256,
        }
    }
}

impl Default for PostgresSettings {
    fn default() -> Self {
        PostgresSettings {
            bin_dir: None,
            durable: true,
        }
    }
}

impl Config {
    /// Reads the file (the explicit one must exist; the default one may not) and applies the
    /// environment on top.
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        let mut config = match explicit {
            Some(path) => Self::from_file(path)?,
            None if Path::new(DEFAULT_CONFIG_FILE).is_file() => {
                Self::from_file(Path::new(DEFAULT_CONFIG_FILE))?
            }
            None => Config::default(),
        };
        config.apply_env(|name| std::env::var(name).ok())?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what parsing cannot, so a bad setting stops the command before anything starts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let HashParams {
            m_cost,
            t_cost,
            p_cost,
        } = self.argon2;
        let invalid = |key, reason: String| Err(ConfigError::Invalid { key, reason });
        if !(1..=16).contains(&p_cost) {
            return invalid(
                "argon2.p_cost (CORONIUM_ARGON2_P_COST)",
                format!("{p_cost} lanes: from 1 to 16"),
            );
        }
        if t_cost < 1 {
            return invalid(
                "argon2.t_cost (CORONIUM_ARGON2_T_COST)",
                "0 iterations: at least 1".into(),
            );
        }
        if m_cost < 8 * p_cost || m_cost > 4 * 1024 * 1024 {
            return invalid(
                "argon2.m_cost (CORONIUM_ARGON2_M_COST)",
                format!(
                    "{m_cost} KiB: from {} KiB (8 per lane) to 4 GiB; the recommended minimum is 19456",
                    8 * p_cost
                ),
            );
        }
        Ok(())
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            message: in_plain_words(&source.to_string()),
        })
    }

    /// Applies `CORONIUM_*` and `DATABASE_URL` overrides; `var` reads one variable.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn parsed<T: std::str::FromStr>(name: &'static str, value: String) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            value.parse().map_err(|e: T::Err| {
                let expected = std::any::type_name::<T>();
                let reason = match type_words(expected) {
                    Some(words) => format!("{e} (expected {words})"),
                    None => e.to_string(),
                };
                ConfigError::Env {
                    name,
                    value,
                    reason,
                }
            })
        }
        // Each variable parses into its field; a value that does not parse names the variable.
        macro_rules! overrides {
            ($($name:literal => $field:expr),* $(,)?) => {
                $(if let Some(v) = var($name) {
                    $field = parsed($name, v)?;
                })*
            };
        }
        overrides! {
            "CORONIUM_DATA_DIR" => self.data_dir,
            "CORONIUM_SCOPE" => self.scope,
            "CORONIUM_PUBLIC_URL" => self.public_url,
            "CORONIUM_POOL_SIZE" => self.pool_size,
            "CORONIUM_ARGON2_M_COST" => self.argon2.m_cost,
            "CORONIUM_ARGON2_T_COST" => self.argon2.t_cost,
            "CORONIUM_ARGON2_P_COST" => self.argon2.p_cost,
            "CORONIUM_LUA_MEMORY_LIMIT_MB" => self.lua.memory_limit_mb,
            "CORONIUM_PG_DURABLE" => self.postgres.durable,
            "CORONIUM_PORT" => self.server.port,
            "CORONIUM_WORKERS" => self.server.workers,
            "CORONIUM_PROJECTS_DIR" => self.server.projects_dir,
            "CORONIUM_REQUEST_WINDOW_SECS" => self.server.request_window_secs,
            "CORONIUM_MAX_BODY_BYTES" => self.server.max_body_bytes,
            "CORONIUM_HEADER_READ_TIMEOUT_SECS" => self.server.header_read_timeout_secs,
            "CORONIUM_BODY_READ_TIMEOUT_SECS" => self.server.body_read_timeout_secs,
            "CORONIUM_KEEP_ALIVE_IDLE_SECS" => self.server.keep_alive_idle_secs,
            "CORONIUM_MAX_CONNECTIONS_PER_IP" => self.server.max_connections_per_ip,
            "CORONIUM_REQUEST_TIMEOUT_SECS" => self.server.request_timeout_secs,
            "CORONIUM_MAX_CONNECTIONS" => self.server.max_connections,
            "CORONIUM_CPU_BUDGET_MS" => self.server.cpu_budget_ms,
            "CORONIUM_SHUTDOWN_GRACE_SECS" => self.server.shutdown_grace_secs,
            "CORONIUM_PAGE_REQUESTS_PER_MINUTE" => self.server.page_requests_per_minute,
            "CORONIUM_USERS_WIRE_OAUTH_LOGIN" => self.users.wire_oauth_login,
            "CORONIUM_USERS_MAX_QUERY_LIMIT" => self.users.max_query_limit,
            "CORONIUM_USERS_EXTRA_MAX_BYTES" => self.users.extra_max_bytes,
            "CORONIUM_USERS_EXTRA_MAX_KEYS" => self.users.extra_max_keys,
            "CORONIUM_USERS_SIGN_UPS_PER_ADDRESS_PER_MINUTE" => self.users.sign_ups_per_address_per_minute,
            "CORONIUM_MAIL_MAX_ATTEMPTS" => self.mail.max_attempts,
            "CORONIUM_MAIL_RETRY_SECS" => self.mail.retry_secs,
            "CORONIUM_MAIL_POLL_SECS" => self.mail.poll_secs,
            "CORONIUM_MAIL_PROJECT_MESSAGES_PER_MINUTE" => self.mail.project_messages_per_minute,
            "CORONIUM_MAIL_CLIENT_MESSAGES_PER_MINUTE" => self.mail.client_messages_per_minute,
            "CORONIUM_MAIL_PER_ADDRESS_PER_HOUR" => self.mail.per_address_per_hour,
            "CORONIUM_MAIL_PER_ADDRESS_PER_DAY" => self.mail.per_address_per_day,
            "CORONIUM_MAILGUN_REGION" => self.mail.mailgun.region,
            "CORONIUM_ANALYTICS_KEEP_DAYS" => self.analytics.keep_days,
            "CORONIUM_ANALYTICS_MAX_KEYS_PER_DAY" => self.analytics.max_keys_per_day,
            "CORONIUM_CONSOLE" => self.console.enabled,
            "CORONIUM_CONSOLE_IDLE_MINUTES" => self.console.idle_minutes,
            "CORONIUM_CONSOLE_SESSION_HOURS" => self.console.session_hours,
            "CORONIUM_CONSOLE_MAIL_FROM" => self.console.mail_from,
            "CORONIUM_LOGIN_THROTTLE" => self.login_throttle.enabled,
            "CORONIUM_LOGIN_THROTTLE_WINDOW_SECS" => self.login_throttle.window_secs,
            "CORONIUM_LOGIN_THROTTLE_PER_ACCOUNT_ADDRESS" => self.login_throttle.per_account_address,
            "CORONIUM_LOGIN_THROTTLE_PER_ACCOUNT" => self.login_throttle.per_account,
            "CORONIUM_LOGIN_THROTTLE_PER_ADDRESS" => self.login_throttle.per_address,
            "CORONIUM_LOGIN_THROTTLE_MAX_DELAY_SECS" => self.login_throttle.max_delay_secs,
        }
        if let Some(v) = var("CORONIUM_HOST") {
            self.server.host = parse_host(&v).map_err(|reason| ConfigError::Env {
                name: "CORONIUM_HOST",
                value: v.clone(),
                reason,
            })?;
        }
        if let Some(v) = var("CORONIUM_TRUSTED_PROXIES") {
            self.server.trusted_proxies = v
                .split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| {
                    parse_network(item).map_err(|reason| ConfigError::Env {
                        name: "CORONIUM_TRUSTED_PROXIES",
                        value: v.clone(),
                        reason,
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = var("CORONIUM_DATABASE_URL").or_else(|| var("DATABASE_URL")) {
            self.database_url = Some(v).filter(|v| !v.is_empty()).map(SecretString::from);
        }
        if let Some(v) = var("CORONIUM_SERVER_KEY") {
            self.server.server_key = Some(v).filter(|v| !v.is_empty()).map(SecretString::from);
        }
        if let Some(v) = var("CORONIUM_MAIL_SMTP_URL") {
            self.mail.smtp_url = Some(v).filter(|v| !v.is_empty()).map(SecretString::from);
        }
        if let Some(v) = var("CORONIUM_MAIL_SMTP_CA_FILE") {
            self.mail.smtp_ca_file = Some(v).filter(|v| !v.is_empty()).map(PathBuf::from);
        }
        if let Some(v) = var("CORONIUM_MAILGUN_API_KEY") {
            self.mail.mailgun.api_key = Some(v).filter(|v| !v.is_empty()).map(SecretString::from);
        }
        if let Some(v) = var("CORONIUM_MAILGUN_DOMAIN") {
            self.mail.mailgun.domain = Some(v).filter(|v| !v.is_empty());
        }
        if let Some(v) = var("CORONIUM_MAILGUN_BASE_URL") {
            self.mail.mailgun.base_url = Some(v).filter(|v| !v.is_empty());
        }
        if let Some(v) = var("CORONIUM_MAIL_CLIENT_SENDERS") {
            self.mail.client_senders = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if let Some(v) = var("CORONIUM_MAIL_FROM") {
            self.mail.from = Some(v).filter(|v| !v.is_empty());
        }
        if let Some(v) = var("CORONIUM_MAIL_TEMPLATES_DIR") {
            self.mail.templates_dir = Some(v.into());
        }
        if let Some(v) = var("CORONIUM_TLS_CERT") {
            self.server.tls_cert = Some(v.into());
        }
        if let Some(v) = var("CORONIUM_TLS_KEY") {
            self.server.tls_key = Some(v.into());
        }
        if let Some(v) = var("CORONIUM_PG_BIN_DIR") {
            self.postgres.bin_dir = Some(v.into());
        }
        Ok(())
    }

    /// Where mail templates are looked for.
    pub fn templates_dir(&self) -> PathBuf {
        self.mail
            .templates_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("templates"))
    }

    /// Where the database is: `database_url` when set, else the embedded cluster.
    pub fn database_location(&self) -> Location {
        match &self.database_url {
            Some(url) => Location::Url(url.clone()),
            None => Location::Embedded(EmbeddedOptions {
                dir: self.data_dir.join("pg"),
                durable: self.postgres.durable,
                bin_dir: self.postgres.bin_dir.clone(),
            }),
        }
    }
}

/// A database URL fit for a log: the password left out (`postgres://u:***@h/db`,
/// `host=h password=***`).
pub fn redacted_url(url: &str) -> String {
    if url.contains("://") {
        let Ok(mut parsed) = url::Url::parse(url) else {
            return "(a database URL that does not parse)".into();
        };
        if parsed.password().is_some() {
            let _ = parsed.set_password(Some("***"));
        }
        if parsed.query_pairs().any(|(key, _)| key == "password") {
            let pairs: Vec<(String, String)> = parsed
                .query_pairs()
                .map(|(key, value)| {
                    let value = if key == "password" {
                        "***".into()
                    } else {
                        value
                    };
                    (key.into_owned(), value.into_owned())
                })
                .collect();
            parsed.query_pairs_mut().clear().extend_pairs(pairs);
        }
        return parsed.to_string();
    }
    url.split_whitespace()
        .map(|pair| match pair.split_once('=') {
            Some(("password", _)) => "password=***".to_owned(),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A network (`10.0.0.0/8`) or a single address (`192.0.2.1`, taken as `/32` or `/128`).
fn parse_network(text: &str) -> Result<ipnet::IpNet, String> {
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{text:?} is not an IP address or network"))
}

/// The address to listen on: an IP address, or `localhost` (this machine only).
pub fn parse_host(text: &str) -> Result<std::net::IpAddr, String> {
    if text.eq_ignore_ascii_case("localhost") {
        return Ok(std::net::Ipv4Addr::LOCALHOST.into());
    }
    text.parse().map_err(|_| {
        format!(
            "{text:?} is not an IP address: use 0.0.0.0 (every interface), 127.0.0.1 or \
             localhost (this machine only), or one of this machine's addresses"
        )
    })
}

fn host_address<'de, D: serde::Deserializer<'de>>(d: D) -> Result<std::net::IpAddr, D::Error> {
    parse_host(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

fn networks<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|text| parse_network(text).map_err(serde::de::Error::custom))
        .collect()
}

/// What a Rust number type means to someone writing a config file.
fn type_words(type_name: &str) -> Option<&'static str> {
    Some(match type_name {
        "u16" => "a whole number from 0 to 65535",
        "u32" => "a whole number from 0 to 4294967295",
        "u64" | "usize" => "a whole number, 0 or more",
        "i64" | "i32" => "a whole number",
        "f64" | "f32" => "a number",
        "bool" => "true or false",
        _ => return None,
    })
}

/// A TOML error with its Rust type names ("expected u16") said in words.
fn in_plain_words(message: &str) -> String {
    let mut text = message.to_owned();
    for name in ["u16", "u32", "u64", "usize", "i64", "i32", "f64", "f32"] {
        if let Some(words) = type_words(name) {
            text = text.replace(&format!("expected {name}"), &format!("expected {words}"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_out_of_range_are_said_in_words() {
        let dir = std::env::temp_dir().join(format!("coronium-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("coronium.toml");
        std::fs::write(&file, "[server]\nport = 70000\n").unwrap();
        let error = Config::from_file(&file).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            error.contains("expected a whole number from 0 to 65535") && !error.contains("u16"),
            "{error}"
        );
        let mut config = Config::default();
        let error = config
            .apply_env(|name| (name == "CORONIUM_PORT").then(|| "ten".to_owned()))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("CORONIUM_PORT") && error.contains("from 0 to 65535"),
            "{error}"
        );
    }

    #[test]
    fn argon2_settings_are_checked_and_named() {
        let mut config = Config::default();
        assert!(config.validate().is_ok());
        config.argon2.m_cost = 5;
        let error = config.validate().unwrap_err().to_string();
        assert!(
            error.starts_with("argon2.m_cost (CORONIUM_ARGON2_M_COST): 5 KiB"),
            "{error}"
        );
        config.argon2 = HashParams {
            m_cost: 19456,
            t_cost: 0,
            p_cost: 1,
        };
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("argon2.t_cost")
        );
    }

    #[test]
    fn the_host_is_an_address_or_localhost() {
        let config: Config = toml::from_str("[server]\nhost = \"localhost\"\n").unwrap();
        assert_eq!(config.server.host.to_string(), "127.0.0.1");
        let bad = toml::from_str::<Config>("[server]\nhost = \"example.com\"\n").unwrap_err();
        assert!(bad.to_string().contains("is not an IP address"), "{bad}");
        let mut config = Config::default();
        config
            .apply_env(|name| (name == "CORONIUM_HOST").then(|| "::1".to_owned()))
            .unwrap();
        assert_eq!(config.server.host.to_string(), "::1");
    }

    #[test]
    fn database_urls_are_logged_without_their_password() {
        assert_eq!(
            redacted_url("postgres://game:s3cret@db.example:5432/coronium?sslmode=require"),
            "postgres://game:***@db.example:5432/coronium?sslmode=require"
        );
        assert_eq!(
            redacted_url("postgresql://db.example/app?user=u&password=s3cret&x=1"),
            "postgresql://db.example/app?user=u&password=***&x=1"
        );
        assert_eq!(
            redacted_url("host=/run/pg user=game password=s3cret dbname=app"),
            "host=/run/pg user=game password=*** dbname=app"
        );
        assert_eq!(redacted_url("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn file_then_environment() {
        let mut config: Config =
            toml::from_str("scope = \"game\"\npool_size = 3\n[argon2]\nm_cost = 1024\n").unwrap();
        assert_eq!((config.scope.as_str(), config.pool_size), ("game", 3));
        assert_eq!(config.argon2.t_cost, 2, "unset keys keep their defaults");
        config
            .apply_env(|name| match name {
                "DATABASE_URL" => Some("postgres://x@localhost/db".into()),
                "CORONIUM_POOL_SIZE" => Some("5".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(config.pool_size, 5);
        assert!(matches!(config.database_location(), Location::Url(_)));
        let bad = config.apply_env(|name| (name == "CORONIUM_POOL_SIZE").then(|| "many".into()));
        assert!(bad.unwrap_err().to_string().contains("CORONIUM_POOL_SIZE"));
    }

    #[test]
    fn trusted_proxies_take_addresses_and_networks() {
        let mut config = Config::default();
        config
            .apply_env(|name| {
                (name == "CORONIUM_TRUSTED_PROXIES").then(|| "127.0.0.1, 10.0.0.0/8,::1".into())
            })
            .unwrap();
        let nets: Vec<String> = config
            .server
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(nets, ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]);
        let bad = config.apply_env(|name| (name == "CORONIUM_TRUSTED_PROXIES").then(|| "x".into()));
        assert!(
            bad.unwrap_err()
                .to_string()
                .contains("CORONIUM_TRUSTED_PROXIES")
        );
        let from_file: Config =
            toml::from_str("[server]\ntrusted_proxies = [\"192.0.2.0/24\", \"::1\"]").unwrap();
        assert_eq!(from_file.server.trusted_proxies.len(), 2);
        assert!(toml::from_str::<Config>("[server]\ntrusted_proxies = [\"nope\"]").is_err());
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let mut config = Config::default();
        config
            .apply_env(|name| match name {
                "DATABASE_URL" => Some("postgres://app:hunter2@db.example/game".into()),
                "CORONIUM_SERVER_KEY" => Some("0123-secret-key".into()),
                _ => None,
            })
            .unwrap();
        let shown = format!("{config:?} {:?}", config.database_location());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("0123-secret-key"), "{shown}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Config>("scoep = \"x\"").is_err());
    }
}
