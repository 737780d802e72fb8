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
    /// Lower-cased addresses; empty: any.
    client_senders: Vec<String>,
    /// `core.email` messages per project per minute.
    project_rate: crate::rate::PerMinute<String>,
    /// `core.email` messages per project and client address per minute.
    client_rate: crate::rate::PerMinute<(String, String)>,
    destination_caps: outbox::DestinationCaps,
}

impl Mailer {
    pub fn new(templates: Templates, public_url: &str, settings: &MailSettings) -> Self {
        Mailer {
            inner: Arc::new(MailerInner {
                templates,
                public_url: public_url.trim_end_matches('/').to_owned(),
                wake: Notify::new(),
                client_senders: settings
                    .client_senders
                    .iter()
                    .map(|s| address_of(s))
                    .collect(),
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
            && !self
                .inner
                .client_rate
                .allow((project.to_owned(), client.to_owned()))
        {
            return false;
        }
        self.inner.project_rate.allow(project.to_owned())
    }

    /// How many link mails one address may be sent (see [`outbox::destination_has_room`]).
    pub fn destination_caps(&self) -> outbox::DestinationCaps {
        self.inner.destination_caps
    }

    /// Whether a client may send mail as `from` (an address, maybe with a name).
    pub fn client_may_send_as(&self, from: &str) -> bool {
        let allowed = &self.inner.client_senders;
        allowed.is_empty() || allowed.contains(&address_of(from))
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
        let open = Mailer::new(templates.clone(), "http://x", &MailSettings::default());
        assert!(open.client_may_send_as("anyone@example.com"));
        let listed = MailSettings {
            client_senders: vec!["Games <Games@Example.com>".into()],
            ..MailSettings::default()
        };
        let closed = Mailer::new(templates, "http://x", &listed);
        assert!(closed.client_may_send_as("games@example.com"));
        assert!(closed.client_may_send_as("The Team <GAMES@example.com>"));
        assert!(!closed.client_may_send_as("bank@example.com"));
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
