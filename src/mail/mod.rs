//! Mail (users spec §4): an outbox in PostgreSQL, written in the same transaction as the record a
//! mail belongs to, and a sender per instance that drains it (see [`sender`]). Nothing on a
//! request's path waits for a mail server.

pub mod email;
pub mod outbox;
pub mod sender;
pub mod settings;
pub mod template;
pub mod transport;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tokio::sync::Notify;

pub use settings::{MailSettings, MailgunSettings, Region};
pub use template::{Kind as TemplateKind, TemplateError, Templates};

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The mail settings cannot work (said at start-up).
    #[error("mail settings: {0}")]
    Config(String),
    #[error("mail outbox: {0}")]
    Database(#[from] tokio_postgres::Error),
    #[error("mail outbox: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
}

impl crate::db::StatementError for MailError {
    fn postgres(&self) -> Option<&tokio_postgres::Error> {
        match self {
            MailError::Database(e) => Some(e),
            _ => None,
        }
    }
}

/// One mail as the outbox keeps it. Addresses may carry a name (`Chris <user@example.com>`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Message {
    pub from: String,
    pub to: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cc: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bcc: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// Mailgun's `o:tag` (other transports ignore it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// What a mail is for, and so what its final failure undoes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A confirmation link: failing for good marks the user's confirmation `"failed"`.
    Confirmation,
    /// A password-reset link: failing for good deletes the reset records the mail carried.
    PasswordReset,
    /// `core.email` from an API project.
    Email,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Confirmation => "confirmation",
            Purpose::PasswordReset => "password_reset",
            Purpose::Email => "email",
        }
    }
}

/// What request-side code needs to queue mail: the templates, where links point, and a way to
/// wake this instance's sender. Cheap to clone; one per process.
#[derive(Clone)]
pub struct Mailer {
    inner: Arc<MailerInner>,
}

struct MailerInner {
    templates: Templates,
    public_url: String,
    wake: Notify,
    /// Who a client's mail may name as its sender.
    client_senders: ClientSenders,
    /// `core.email` messages per project per minute.
    project_rate: crate::rate::PerMinute,
    /// `core.email` messages per project and client address per minute.
    client_rate: crate::rate::PerMinute,
    destination_caps: outbox::DestinationCaps,
}

impl Mailer {
    pub fn new(templates: Templates, public_url: &str, settings: &MailSettings) -> Self {
        Mailer {
            inner: Arc::new(MailerInner {
                templates,
                public_url: public_url.trim_end_matches('/').to_owned(),
                wake: Notify::new(),
                client_senders: ClientSenders::new(settings, public_url),
                project_rate: crate::rate::PerMinute::new(settings.project_messages_per_minute),
                client_rate: crate::rate::PerMinute::new(settings.client_messages_per_minute),
                destination_caps: outbox::DestinationCaps {
                    per_hour: settings.per_address_per_hour,
                    per_day: settings.per_address_per_day,
                },
            }),
        }
    }

    /// Counts a `core.email` message of `project` (scripts have none: not counted), asked for
    /// by the request of `client` (none: the server's own code); whether it is within the
    /// client's budget for this minute and then the project's.
    pub fn admit_project_message(&self, project: Option<&str>, client: Option<&str>) -> bool {
        let Some(project) = project else {
            return true;
        };
        if let Some(client) = client
            && !self.inner.client_rate.allow((project, client))
        {
            return false;
        }
        self.inner.project_rate.allow(project)
    }

    /// How many link mails one address may be sent (see [`outbox::destination_has_room`]).
    pub fn destination_caps(&self) -> outbox::DestinationCaps {
        self.inner.destination_caps
    }

    /// The sender a client's mail goes out under when it asked for `from` (an address, maybe
    /// with a name): `from` itself when allowed, the server's own sender when the operator
    /// listed none, `None` (refused) when `from` is not on the operator's list.
    pub fn client_sender(&self, from: &str) -> Option<String> {
        match &self.inner.client_senders {
            ClientSenders::Any => Some(from.to_owned()),
            ClientSenders::Fixed(sender) => Some(sender.clone()),
            ClientSenders::Listed(allowed) => {
                allowed.contains(&address_of(from)).then(|| from.to_owned())
            }
        }
    }

    pub fn templates(&self) -> &Templates {
        &self.inner.templates
    }

    /// A link to one of our pages carrying `code`.
    pub fn link(&self, page: &str, code: &str) -> String {
        format!("{}/{page}?code={code}", self.inner.public_url)
    }

    /// Counts `count` mails queued and wakes the sender (call after the transaction committed).
    pub fn queued(&self, count: u64) {
        metrics::counter!("coronium_mail_queued_total").increment(count);
        self.inner.wake.notify_one();
    }

    pub(crate) async fn woken(&self) {
        self.inner.wake.notified().await;
    }
}

/// Who a client's mail may name as its sender (`mail.client_senders`).
enum ClientSenders {
    /// `["*"]`: anyone, as in Coronium.
    Any,
    /// Empty: the server's own sender, whatever the client asked for.
    Fixed(String),
    /// Lower-cased addresses; a client naming another is refused.
    Listed(Vec<String>),
}

impl ClientSenders {
    fn new(settings: &MailSettings, public_url: &str) -> Self {
        if settings.client_senders.iter().any(|s| s.trim() == "*") {
            return ClientSenders::Any;
        }
        if settings.client_senders.is_empty() {
            let host = url::Url::parse(public_url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .unwrap_or_else(|| "localhost".into());
            let sender = settings
                .from
                .clone()
                .unwrap_or_else(|| format!("no-reply@{host}"));
            return ClientSenders::Fixed(sender);
        }
        ClientSenders::Listed(
            settings
                .client_senders
                .iter()
                .map(|s| address_of(s))
                .collect(),
        )
    }
}

/// The lower-cased address of `Name <address>` or `address`.
fn address_of(text: &str) -> String {
    match text.parse::<lettre::message::Mailbox>() {
        Ok(mailbox) => mailbox.email.to_string().to_ascii_lowercase(),
        Err(_) => text.trim().to_ascii_lowercase(),
    }
}

/// A fresh one-time code for a link (32 random bytes, base64url) and the hash that is stored
/// instead of it.
pub fn new_code() -> (String, String) {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    let code = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let hash = code_hash(&code);
    (code, hash)
}

/// How a code is stored and looked up: SHA-256, hex. A code carries 256 random bits, so a fast
/// hash is enough: nobody can guess one from its hash.
pub fn code_hash(code: &str) -> String {
    hex::encode(sha2::Sha256::digest(code.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_senders_compare_addresses() {
        let templates = Templates::new("/nonexistent");
        let fixed = Mailer::new(
            templates.clone(),
            "https://play.example.com:8443/x",
            &MailSettings::default(),
        );
        assert_eq!(
            fixed
                .client_sender("Your Bank <security@bank.example>")
                .as_deref(),
            Some("no-reply@play.example.com"),
            "by default a client cannot choose the sender"
        );
        let any = MailSettings {
            client_senders: vec!["*".into()],
            ..MailSettings::default()
        };
        let open = Mailer::new(templates.clone(), "http://x", &any);
        assert_eq!(
            open.client_sender("anyone@example.com").as_deref(),
            Some("anyone@example.com")
        );
        let listed = MailSettings {
            client_senders: vec!["Games <Games@Example.com>".into()],
            ..MailSettings::default()
        };
        let closed = Mailer::new(templates, "http://x", &listed);
        assert!(closed.client_sender("games@example.com").is_some());
        assert!(
            closed
                .client_sender("The Team <GAMES@example.com>")
                .is_some()
        );
        assert!(closed.client_sender("bank@example.com").is_none());
    }

    #[test]
    fn codes_are_random_and_stored_hashed() {
        let (a, a_hash) = new_code();
        let (b, _) = new_code();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43, "32 bytes, base64url without padding");
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_eq!(a_hash, code_hash(&a));
        assert_eq!(a_hash.len(), 64);
        assert!(!a_hash.contains(&a));
    }
}
