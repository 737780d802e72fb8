//! `[mail]` settings.

use std::path::PathBuf;

use secrecy::SecretString;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MailSettings {
    /// An SMTP server: `smtps://user:pass@host:465`, `smtp://user:pass@host:587?tls=required`
    /// (STARTTLS), or `smtp://localhost:25` (a local MTA). Never logged.
    pub smtp_url: Option<SecretString>,
    /// A PEM CA certificate to trust for the SMTP server's TLS, besides the public roots (a
    /// private MTA with an internal CA). Certificates are always verified.
    pub smtp_ca_file: Option<PathBuf>,
    /// Mailgun's HTTP API, for ports that only have an API key.
    pub mailgun: MailgunSettings,
    /// Where templates are looked for (`registration/`, `password/`, `pages/`); unset:
    /// `<data_dir>/templates`. Missing files fall back to the built-in ones.
    pub templates_dir: Option<PathBuf>,
    /// Delivery attempts before a mail is given up as failed.
    pub max_attempts: u32,
    /// Wait before the first retry, in seconds; each further retry waits twice as long (at most
    /// an hour).
    pub retry_secs: u64,
    /// How often the sender looks for mail queued by other instances or due for a retry.
    pub poll_secs: u64,
    /// The senders (`from_email`) a client's `create` or `resendConfirmation` may name; others
    /// are refused (801). Every game ships the server key, so anyone can ask for a confirmation
    /// mail to any address: this keeps them from choosing whose name it carries. Empty (the
    /// default): a client's sender is replaced by [`from`](Self::from); `["*"]`: any sender,
    /// as in Coronium.
    pub client_senders: Vec<String>,
    /// The sender of client-asked mail when `client_senders` is empty; unset:
    /// `no-reply@<the public URL's host>`.
    pub from: Option<String>,
    /// Messages one API project may queue through `core.email` per minute (0: no limit), so a
    /// project cannot flood the mail account every project's mail leaves through.
    pub project_messages_per_minute: u32,
    /// Messages one client address may have a project queue through `core.email` per minute
    /// (0: no limit): a client that calls a project's mailing action spends its own budget,
    /// not the whole project's.
    pub client_messages_per_minute: u32,
    /// Confirmation and reset mails one address may be sent per hour, across every scope
    /// (0: no limit): nobody can aim a flood of sign-ups at someone's inbox.
    pub per_address_per_hour: u32,
    /// The same, per day.
    pub per_address_per_day: u32,
}

impl Default for MailSettings {
    fn default() -> Self {
        MailSettings {
            smtp_url: None,
            smtp_ca_file: None,
            mailgun: MailgunSettings::default(),
            templates_dir: None,
            max_attempts: 8,
            retry_secs: 30,
            poll_secs: 5,
            client_senders: Vec::new(),
            from: None,
            project_messages_per_minute: 60,
            client_messages_per_minute: 10,
            per_address_per_hour: 5,
            per_address_per_day: 20,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MailgunSettings {
    /// The sending domain.
    pub domain: Option<String>,
    /// Never logged.
    pub api_key: Option<SecretString>,
    /// `US` (default) or `EU`, any case.
    pub region: Region,
    /// Overrides the region's API address (a proxy, or a test's listener).
    pub base_url: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Region {
    #[default]
    Us,
    Eu,
}

impl std::str::FromStr for Region {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "US" => Ok(Region::Us),
            "EU" => Ok(Region::Eu),
            _ => Err(format!("{s:?} is not a Mailgun region (US or EU)")),
        }
    }
}

impl<'de> Deserialize<'de> for Region {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}
