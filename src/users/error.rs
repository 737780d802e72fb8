//! The one error type of the users domain. Every variant carries a Coronium status code, so the
//! Lua and wire layers can answer `nil, message, status` without knowing the domain's internals.

use crate::status::{ErrorAnswer, Status};

/// Coronium's message for an `extra` table holding something other than flat scalars.
pub const EXTRA_TYPES_MESSAGE: &str =
    "Extra table can only contain string, number, or boolean types.";

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// 804: a required parameter is absent (or empty).
    #[error("Missing required parameter: {0}")]
    Missing(&'static str),
    /// 801: a parameter has the wrong type, length or shape.
    #[error("{0}")]
    BadParameter(String),
    /// 704: the email address is not valid.
    #[error("Email address not found or invalid.")]
    InvalidEmail,
    /// 600: the username or email is already taken in this scope.
    #[error("{0}")]
    AlreadyExists(&'static str),
    /// 603: unknown user or wrong password; deliberately the same answer for both.
    #[error("Invalid username or password.")]
    BadCredentials,
    /// 603 as well: too many failed logins for this account or address lately; the password
    /// was not checked. Carries the seconds to wait.
    #[error("Too many failed login attempts; try again in {0} s.")]
    TooManyAttempts(u64),
    /// 601: a registration could not be stored (the cause is logged).
    #[error("User could not be created.")]
    NotCreated,
    /// 605: a user without a password tried to log in from a client.
    #[error("User requires server-side login.")]
    ServerSideLoginRequired,
    /// 604: no such user in this scope (malformed ids included).
    #[error("User not found.")]
    NotFound,
    /// 614: no user in this scope is waiting for confirmation under that id.
    #[error("Pending user not found.")]
    PendingNotFound,
    /// 620: the user has a link to this provider already, or the provider account is linked to
    /// another user.
    #[error("{0}")]
    ProviderLinked(&'static str),
    /// 624: the user has no link to this provider.
    #[error("OAuth provider does not exist for user.")]
    ProviderNotLinked,
    /// 702: the mail's template is missing or invalid (the cause is logged); nothing was
    /// written.
    #[error("Email configuration is not set or invalid.")]
    MailNotConfigured,
    /// 810: this was asked too often lately (a confirmation resent within a minute).
    #[error("Too many requests.")]
    TooManyRequests,
    /// 810: this client address signed up too often in the last minute; nothing was hashed
    /// or stored.
    #[error("Too many sign-ups from this address; try again in a minute.")]
    TooManySignUps,
    /// 810: the address was sent as many confirmation and reset mails lately as it may be;
    /// nothing was written.
    #[error("Too many mails to this address lately; try again later.")]
    TooManyMails,
    /// 810: something on our side failed; details go to the log, not to the caller, who learns
    /// only whether the database is unreachable (worth trying again shortly) or not.
    #[error("{}", .0.caller_message())]
    Internal(#[source] InternalError),
}

/// Failures that are never the caller's fault.
#[derive(Debug, thiserror::Error)]
pub enum InternalError {
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The server's own words, when it said something, so the log says what failed.
    #[error("database: {error}{detail}", error = .0, detail = db_detail(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("password hashing: {0}")]
    Hashing(String),
    /// Every hashing thread has a full queue: the caller is told to try again shortly.
    #[error("the password hashing queue is full")]
    Busy,
}

/// What PostgreSQL itself said about a failed statement (`tokio_postgres` shows only "db error").
fn db_detail(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|db| format!(": {db}"))
        .unwrap_or_default()
}

impl InternalError {
    /// Whether the database could not be reached: down, restarting, or the connection lost.
    pub fn is_unavailable(&self) -> bool {
        use deadpool_postgres::PoolError;
        match self {
            InternalError::Pool(PoolError::Timeout(_) | PoolError::Closed) => true,
            InternalError::Pool(PoolError::Backend(e)) | InternalError::Postgres(e) => {
                unreachable_database(e)
            }
            _ => false,
        }
    }

    /// Whether the failure passes by itself (the database back, the hashing queue drained):
    /// the caller is told to try again rather than that the operation failed.
    pub fn is_transient(&self) -> bool {
        matches!(self, InternalError::Busy) || self.is_unavailable()
    }

    fn caller_message(&self) -> &'static str {
        if matches!(self, InternalError::Busy) {
            "The server is busy; try again shortly."
        } else if self.is_unavailable() {
            "The database is unavailable; try again shortly."
        } else {
            "Internal server error."
        }
    }
}

/// A connection that closed, could not be made, or a server shutting down or starting up.
fn unreachable_database(e: &tokio_postgres::Error) -> bool {
    use std::error::Error as _;
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            let code = code.code();
            code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
        }
        None => e.source().is_some_and(|s| s.is::<std::io::Error>()),
    }
}

impl UserError {
    /// The Coronium status code of this error (compat spec §5).
    pub fn status(&self) -> Status {
        match self {
            UserError::Missing(_) => Status::MISSING_PARAMETER,
            UserError::BadParameter(_) => Status::MISMATCHED_PARAMETER,
            UserError::InvalidEmail => Status::EMAIL_INVALID,
            UserError::AlreadyExists(_) => Status::USER_EXISTS,
            UserError::BadCredentials | UserError::TooManyAttempts(_) => Status::PASSWORD_INVALID,
            UserError::NotFound => Status::USER_NOT_FOUND,
            UserError::PendingNotFound => Status::PENDING_USER_NOT_FOUND,
            UserError::NotCreated => Status::USER_NOT_CREATED,
            UserError::ServerSideLoginRequired => Status::SERVER_SIDE_LOGIN_REQUIRED,
            UserError::ProviderLinked(_) => Status::AUTH_PROVIDER_LINKED,
            UserError::ProviderNotLinked => Status::AUTH_PROVIDER_NOT_LINKED,
            UserError::MailNotConfigured => Status::EMAIL_NOT_CONFIGURED,
            UserError::TooManyRequests
            | UserError::TooManySignUps
            | UserError::TooManyMails
            | UserError::Internal(_) => Status::GENERAL,
        }
    }

    /// The answer a caller gets.
    pub fn answer(&self) -> ErrorAnswer {
        ErrorAnswer::new(self.status(), self.to_string())
    }

    pub(crate) fn bad(message: impl Into<String>) -> Self {
        UserError::BadParameter(message.into())
    }
}

impl crate::db::StatementError for UserError {
    fn postgres(&self) -> Option<&tokio_postgres::Error> {
        match self {
            UserError::Internal(InternalError::Postgres(e)) => Some(e),
            _ => None,
        }
    }
}

impl From<deadpool_postgres::PoolError> for UserError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        UserError::Internal(e.into())
    }
}

impl From<tokio_postgres::Error> for UserError {
    fn from(e: tokio_postgres::Error) -> Self {
        UserError::Internal(e.into())
    }
}
