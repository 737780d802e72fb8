//! `core.email` (Coronium's email module): a message an API project builds and sends, queued in
//! the same outbox as the users module's mail.

use serde_json::{Map, Value};

use super::{Message, Purpose, outbox};
use crate::db::DbHandle;
use crate::status::{ErrorAnswer, Status};

/// Recipients (to, cc and bcc together) one message may have.
pub const MAX_RECIPIENTS: usize = 50;
/// The most bytes of subject, text and HTML one message may carry.
pub const MAX_MESSAGE_BYTES: usize = 512 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    #[error("Missing required parameter: {0}")]
    Missing(&'static str),
    #[error("Email address not found or invalid.")]
    InvalidAddress,
    #[error("{0}")]
    Bad(String),
    #[error("Email could not be queued.")]
    Queue(#[from] super::MailError),
    #[error("Too many messages from this project; try again in a minute.")]
    TooMany,
}

impl EmailError {
    pub fn answer(&self) -> ErrorAnswer {
        let status = match self {
            EmailError::Missing(_) => Status::MISSING_PARAMETER,
            EmailError::InvalidAddress => Status::EMAIL_INVALID,
            EmailError::Bad(_) => Status::MISMATCHED_PARAMETER,
            EmailError::Queue(_) => Status::EMAIL_NOT_SENT,
            EmailError::TooMany => Status::GENERAL,
        };
        ErrorAnswer::new(status, self.to_string())
    }
}

/// Checks a message as `core.email`'s builder hands it over: `{from, to = {...}, cc, bcc,
/// replyTo, subject, text, html, tag}`. Each address entry may list several, comma-separated.
pub fn draft(fields: &Map<String, Value>) -> Result<Message, EmailError> {
    let text = |key: &'static str| -> Result<Option<String>, EmailError> {
        match fields.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.contains('\0') => Err(EmailError::Bad(format!(
                "'{key}' must not contain a NUL character."
            ))),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(EmailError::Bad(format!("'{key}' must be a string."))),
        }
    };
    let addresses = |key: &'static str| -> Result<Vec<String>, EmailError> {
        let entries = match fields.get(key) {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::Array(entries)) => entries.clone(),
            Some(Value::Object(map)) if map.is_empty() => return Ok(Vec::new()),
            Some(single) => vec![single.clone()],
        };
        let mut out = Vec::new();
        for entry in entries {
            let Value::String(list) = entry else {
                return Err(EmailError::Bad(format!(
                    "'{key}' addresses must be strings."
                )));
            };
            let parsed: lettre::message::Mailboxes =
                list.parse().map_err(|_| EmailError::InvalidAddress)?;
            out.extend(parsed.into_iter().map(|mailbox| mailbox.to_string()));
        }
        Ok(out)
    };
    let single = |key: &'static str| -> Result<Option<String>, EmailError> {
        match text(key)? {
            None => Ok(None),
            Some(address) => address
                .parse::<lettre::message::Mailbox>()
                .map(|mailbox| Some(mailbox.to_string()))
                .map_err(|_| EmailError::InvalidAddress),
        }
    };
    let message = Message {
        from: single("from")?.ok_or(EmailError::Missing("from"))?,
        to: addresses("to")?,
        cc: addresses("cc")?,
        bcc: addresses("bcc")?,
        reply_to: single("replyTo")?,
        subject: text("subject")?.unwrap_or_else(|| "(no subject)".to_owned()),
        text: text("text")?,
        html: text("html")?,
        tag: text("tag")?,
    };
    if message.to.is_empty() {
        return Err(EmailError::Missing("to"));
    }
    if message.to.len() + message.cc.len() + message.bcc.len() > MAX_RECIPIENTS {
        return Err(EmailError::Bad(format!(
            "A message may have at most {MAX_RECIPIENTS} recipients."
        )));
    }
    let size = message.subject.len()
        + message.text.as_ref().map_or(0, String::len)
        + message.html.as_ref().map_or(0, String::len);
    if size > MAX_MESSAGE_BYTES {
        return Err(EmailError::Bad(format!(
            "A message may carry at most {} KiB.",
            MAX_MESSAGE_BYTES / 1024
        )));
    }
    if message.subject.contains(['\r', '\n']) {
        return Err(EmailError::Bad("The subject must be one line.".into()));
    }
    Ok(message)
}

/// Queues a checked message; its outbox id.
pub async fn queue(db: &DbHandle, message: &Message) -> Result<i64, EmailError> {
    Ok(db
        .write(|client| async move {
            outbox::enqueue(&*client, Purpose::Email, None, message)
                .await
                .map_err(super::MailError::from)
        })
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn addresses_lists_and_defaults() {
        let message = draft(&fields(json!({
            "from": "Games <games@example.com>",
            "to": ["a@example.com, Jim <jim@example.com>", "c@example.com"],
            "text": "hi"
        })))
        .unwrap();
        assert_eq!(
            message.to,
            ["a@example.com", "Jim <jim@example.com>", "c@example.com"]
        );
        assert_eq!(message.subject, "(no subject)");
    }

    #[test]
    fn refusals() {
        let status = |v: Value| draft(&fields(v)).unwrap_err().answer().status.code();
        assert_eq!(status(json!({"to": ["a@example.com"]})), 804);
        assert_eq!(status(json!({"from": "a@example.com"})), 804);
        assert_eq!(
            status(json!({"from": "nope", "to": ["a@example.com"]})),
            704
        );
        assert_eq!(
            status(
                json!({"from": "a@example.com", "to": ["a@example.com"], "subject": "x\r\nBcc: v@example.com"})
            ),
            801
        );
        let many: Vec<String> = (0..51).map(|i| format!("u{i}@example.com")).collect();
        assert_eq!(status(json!({"from": "a@example.com", "to": many})), 801);
        let big = "x".repeat(MAX_MESSAGE_BYTES + 1);
        assert_eq!(
            status(json!({"from": "a@example.com", "to": ["b@example.com"], "text": big})),
            801
        );
    }
}
