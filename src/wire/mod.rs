//! The Coronium wire protocol (client plugin 2.6.5, compat spec §4): `POST /` routed by headers,
//! signed with HMAC-SHA1, answered with `{"result": ...}` envelopes.

pub mod analytics;
pub mod client;
pub mod key;
pub mod users;

use crate::status::Status;
use std::sync::LazyLock;

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use sha1::Sha1;
use subtle::ConstantTimeEq;

/// The constant every Coronium client signs with (it is baked into the client plugin).
const CLIENT_SIGNING_KEY: &[u8] =
    b"$5$Iepk44qk5JhyxKZz$0c0uESFkSh3DyfQfChIsvYzHPVckRcexchATK/N.MB7";

/// The project id of the built-in users module.
/// What a request signed with another key is told.
pub const SIGNATURE_INVALID: &str = "Request signature is invalid.";
pub const USERS_PROJECT: &str = "api.users";
/// The scope of a request without `X-Scope`.
pub const DEFAULT_SCOPE: &str = "default";

/// `base64(HMAC-SHA1(K, lower(server_key .. ":" .. project .. action .. time)))`.
pub fn signature(server_key: &str, project: &str, action: &str, time: &str) -> String {
    // The key is a constant: key the HMAC once and clone it (saves two SHA-1 blocks a request).
    static KEYED: LazyLock<Hmac<Sha1>> = LazyLock::new(|| {
        Hmac::<Sha1>::new_from_slice(CLIENT_SIGNING_KEY).expect("HMAC takes any key")
    });
    let mut mac = KEYED.clone();
    let parts = [server_key, ":", project, action, time];
    if parts.iter().all(|part| part.is_ascii()) {
        // The usual case: lowercase piece by piece on the stack, no allocation.
        let mut lowered = [0u8; 64];
        for part in parts {
            for chunk in part.as_bytes().chunks(lowered.len()) {
                let piece = &mut lowered[..chunk.len()];
                piece.copy_from_slice(chunk);
                piece.make_ascii_lowercase();
                mac.update(piece);
            }
        }
    } else {
        mac.update(parts.concat().to_lowercase().as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Whether `given` is the right signature, compared in constant time.
pub fn signature_matches(
    server_key: &str,
    project: &str,
    action: &str,
    time: &str,
    given: &str,
) -> bool {
    let expected = signature(server_key, project, action, time);
    expected.as_bytes().ct_eq(given.trim().as_bytes()).into()
}

/// A wire-level refusal: a Coronium status, a message, and the HTTP status we answer with
/// (the client reads only the envelope; the HTTP status is for operators and proxies).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct WireError {
    pub status: Status,
    pub message: String,
    pub http: u16,
}

impl WireError {
    pub fn new(status: Status, http: u16, message: impl Into<String>) -> Self {
        WireError {
            status,
            message: message.into(),
            http,
        }
    }

    pub fn missing_header(name: &str) -> Self {
        Self::new(
            Status::MISSING_PARAMETER,
            400,
            format!("Missing required header: {name}"),
        )
    }

    pub fn bad_signature() -> Self {
        Self::new(Status::GENERAL, 401, SIGNATURE_INVALID)
    }

    pub fn stale(window: u64) -> Self {
        Self::new(
            Status::GENERAL,
            401,
            format!("Request time is more than {window} seconds away from the server's clock."),
        )
    }

    pub fn bad_json(detail: impl std::fmt::Display) -> Self {
        Self::new(
            Status::JSON_DECODE_FAILED,
            400,
            format!("JSON decode failed: {detail}"),
        )
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            Status::GENERAL,
            413,
            format!("Request body is larger than {limit} bytes."),
        )
    }

    pub fn unknown_project(project: &str) -> Self {
        Self::new(
            Status::GENERAL,
            404,
            format!("Unknown project '{project}'."),
        )
    }

    pub fn unknown_action(project: &str, action: &str) -> Self {
        Self::new(
            Status::GENERAL,
            404,
            format!("Unknown action '{action}' in project '{project}'."),
        )
    }

    pub fn envelope(&self) -> Vec<u8> {
        error_envelope(&self.message, self.status)
    }
}

/// A result written as JSON text once, straight from its Rust value (no `serde_json::Value` tree
/// in between; this runs on every request).
pub fn json_text(value: &impl serde::Serialize) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).unwrap_or_else(|e| {
        // Only a map with non-string keys fails, and no result has one.
        tracing::error!("cannot encode a result as JSON: {e}");
        RawValue::from_string("null".into()).expect("null is JSON")
    })
}

/// `{"result": result}`, as the response body.
pub fn envelope(result: &RawValue) -> Vec<u8> {
    let mut body = Vec::with_capacity(result.get().len() + 11);
    body.extend_from_slice(b"{\"result\":");
    body.extend_from_slice(result.get().as_bytes());
    body.push(b'}');
    body
}

/// `{"result": {"error": message, "status": status}}`, as the response body.
pub fn error_envelope(message: &str, status: Status) -> Vec<u8> {
    serde_json::to_vec(&json!({ "result": { "error": message, "status": status } }))
        .unwrap_or_default()
}

/// The request body as the parameters object: `[]` (an empty Lua table) and an empty body are
/// an empty object; any other non-object is refused.
pub fn parse_params(body: &[u8]) -> Result<serde_json::Map<String, Value>, WireError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(Value::Array(items)) if items.is_empty() => Ok(serde_json::Map::new()),
        Ok(_) => Err(WireError::bad_json("the body must be a JSON object")),
        Err(e) => Err(WireError::bad_json(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_lowercases_the_whole_message_whatever_its_text() {
        let reference = |key: &str, project: &str, action: &str, time: &str| {
            let message = format!("{key}:{project}{action}{time}").to_lowercase();
            let mut mac = Hmac::<Sha1>::new_from_slice(CLIENT_SIGNING_KEY).unwrap();
            mac.update(message.as_bytes());
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        };
        let long = "LongName".repeat(30);
        for (project, action) in [("MyGame", "GetCars"), ("Jeu-Été", "ÉCRIRE"), (&*long, "A")] {
            assert_eq!(
                signature("Key-ABC", project, action, "1516647155"),
                reference("Key-ABC", project, action, "1516647155")
            );
        }
    }

    #[test]
    fn signature_test_vectors_of_the_compat_spec() {
        let key = "03624656-ca90-11e7-b8d4-fb59abeb4c03";
        assert_eq!(
            signature(key, "api.users", "login", "1516647155"),
            "A/jWdwXDhbuTuHEHXFwQb3cKJyo="
        );
        assert_eq!(
            signature(key, "funrun", "getCars", "1516647155"),
            "qKAEPkwrLkBExCGawiJ74358+Cs="
        );
        assert!(signature_matches(
            key,
            "funrun",
            "getCars",
            "1516647155",
            "qKAEPkwrLkBExCGawiJ74358+Cs="
        ));
        assert!(!signature_matches(
            key,
            "funrun",
            "getCars",
            "1516647156",
            "qKAEPkwrLkBExCGawiJ74358+Cs="
        ));
    }

    #[test]
    fn bodies() {
        assert!(parse_params(b"[]").unwrap().is_empty());
        assert!(parse_params(b"").unwrap().is_empty());
        assert_eq!(parse_params(b"{\"a\":1}").unwrap()["a"], 1);
        assert_eq!(
            parse_params(b"{nope").unwrap_err().status,
            Status::JSON_DECODE_FAILED
        );
        assert_eq!(
            parse_params(b"[1]").unwrap_err().status,
            Status::JSON_DECODE_FAILED
        );
    }
}
