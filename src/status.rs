//! Coronium status codes (compat spec §5), one type for every layer: the domains name the code
//! of each failure, the wire writes it into the envelope, the Lua runtime hands it to scripts
//! (the prelude gets the values from here, see [`Status::NAMED`]), and `core.error` may carry any
//! code of a project's own.

use std::fmt;

/// A Coronium status code. The named ones are Coronium's; any other value is a project's own
/// (from `core.error(message, code)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(i64);

impl Status {
    pub const USER_EXISTS: Status = Status(600);
    pub const USER_NOT_CREATED: Status = Status(601);
    pub const PASSWORD_INVALID: Status = Status(603);
    pub const USER_NOT_FOUND: Status = Status(604);
    pub const SERVER_SIDE_LOGIN_REQUIRED: Status = Status(605);
    pub const PENDING_USER_NOT_FOUND: Status = Status(614);
    pub const AUTH_PROVIDER_LINKED: Status = Status(620);
    pub const AUTH_PROVIDER_NOT_LINKED: Status = Status(624);
    pub const EMAIL_NOT_SENT: Status = Status(701);
    pub const EMAIL_NOT_CONFIGURED: Status = Status(702);
    pub const EMAIL_INVALID: Status = Status(704);
    pub const INVALID_RESULT: Status = Status(800);
    pub const MISMATCHED_PARAMETER: Status = Status(801);
    pub const MISSING_PARAMETER: Status = Status(804);
    pub const GENERAL: Status = Status(810);
    pub const JSON_DECODE_FAILED: Status = Status(830);
    pub const JSON_ENCODE_FAILED: Status = Status(831);
    /// `core.error(message)` without a code.
    pub const DEFAULT: Status = Status(-1);

    /// The statuses the prelude uses, by name (`STATUS.GENERAL` ...).
    pub const NAMED: &[(&str, Status)] = &[
        ("USER_EXISTS", Status::USER_EXISTS),
        ("USER_NOT_CREATED", Status::USER_NOT_CREATED),
        ("PASSWORD_INVALID", Status::PASSWORD_INVALID),
        ("USER_NOT_FOUND", Status::USER_NOT_FOUND),
        (
            "SERVER_SIDE_LOGIN_REQUIRED",
            Status::SERVER_SIDE_LOGIN_REQUIRED,
        ),
        ("PENDING_USER_NOT_FOUND", Status::PENDING_USER_NOT_FOUND),
        ("AUTH_PROVIDER_LINKED", Status::AUTH_PROVIDER_LINKED),
        ("AUTH_PROVIDER_NOT_LINKED", Status::AUTH_PROVIDER_NOT_LINKED),
        ("EMAIL_NOT_SENT", Status::EMAIL_NOT_SENT),
        ("EMAIL_NOT_CONFIGURED", Status::EMAIL_NOT_CONFIGURED),
        ("EMAIL_INVALID", Status::EMAIL_INVALID),
        ("INVALID_RESULT", Status::INVALID_RESULT),
        ("MISMATCHED_PARAMETER", Status::MISMATCHED_PARAMETER),
        ("MISSING_PARAMETER", Status::MISSING_PARAMETER),
        ("GENERAL", Status::GENERAL),
        ("JSON_DECODE_FAILED", Status::JSON_DECODE_FAILED),
        ("JSON_ENCODE_FAILED", Status::JSON_ENCODE_FAILED),
        ("DEFAULT", Status::DEFAULT),
    ];

    /// A project's own code (or a Coronium one given as a number).
    pub const fn from_code(code: i64) -> Status {
        Status(code)
    }

    pub const fn code(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl serde::Serialize for Status {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i64(self.0)
    }
}

/// A call that ended in an error answer: what the client reads as
/// `{"result": {"error": message, "status": status}}`, and a script as `nil, message, status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorAnswer {
    pub message: String,
    pub status: Status,
}

impl ErrorAnswer {
    pub fn new(status: Status, message: impl Into<String>) -> Self {
        ErrorAnswer {
            message: message.into(),
            status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_statuses_are_distinct_and_listed_once() {
        let mut codes: Vec<i64> = Status::NAMED.iter().map(|(_, s)| s.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Status::NAMED.len());
        assert_eq!(
            serde_json::to_string(&Status::GENERAL).unwrap(),
            "810",
            "a status is a plain number on the wire"
        );
    }
}
