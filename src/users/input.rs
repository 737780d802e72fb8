//! Parse, don't validate: caller parameters (a JSON object, whichever layer they came from) become
//! typed requests here, or a Coronium error. Nothing reaches SQL without passing through this file.

use serde_json::{Map, Value};
use uuid::Uuid;

use super::error::{EXTRA_TYPES_MESSAGE, UserError};
use super::password::Secret;

pub type Params = Map<String, Value>;

/// The string `core.users.NULL` / `core.NULL`: inside `update.extra`, deletes that key.
pub const NULL_SENTINEL: &str = "_NULL";

const MAX_USERNAME_CHARS: usize = 64;
const MAX_EMAIL_CHARS: usize = 254;
const MAX_GROUP_CHARS: usize = 64;
const MAX_SCOPE_CHARS: usize = 64;
pub const MAX_PASSWORD_BYTES: usize = 1024;
const MAX_EXTRA_BYTES: usize = 16 * 1024;
const MAX_EXTRA_KEY_CHARS: usize = 128;

pub const DEFAULT_GROUP: &str = "default";

/// How the caller's `password` field is to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordForm {
    /// Typed in Lua: the host computes `md5_hex(plain)`.
    Plain,
    /// From the wire: already `md5_hex(plain)`.
    Canonical,
}

fn secret(plain_or_canonical: &str, form: PasswordForm) -> Secret {
    match form {
        PasswordForm::Plain => Secret::from_plain(plain_or_canonical),
        PasswordForm::Canonical => Secret::from_canonical(&plain_or_canonical.to_ascii_lowercase()),
    }
}

/// A string field: absent or null is `None`; any other non-string is a type error.
fn opt_str<'a>(params: &'a Params, key: &'static str) -> Result<Option<&'a str>, UserError> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.contains('\0') => Err(nul_in(key)),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(UserError::bad(format!(
            "Parameter '{key}' must be a string."
        ))),
    }
}

/// Refuses parameters with NUL anywhere (a key, a string, however deep): PostgreSQL's text and
/// JSONB cannot hold it, so it is the caller's mistake (801), stopped before any statement fails
/// on it (and logs the failure, in PostgreSQL's log and ours).
pub fn refuse_nul(params: &Params) -> Result<(), UserError> {
    match params
        .iter()
        .find(|(key, value)| key.contains('\0') || has_nul(value))
    {
        Some((key, _)) => Err(nul_in(key)),
        None => Ok(()),
    }
}

/// Whether `value` holds NUL anywhere, in a key or a string, however deep (PostgreSQL's text and
/// JSONB cannot store it).
pub fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// PostgreSQL's text and JSONB cannot hold NUL: refused here, as the caller's mistake, before
/// any statement fails on it.
fn nul_in(key: &str) -> UserError {
    UserError::bad(format!(
        "Parameter '{key}' must not contain a NUL character."
    ))
}

/// A required, non-empty string field.
fn required_str<'a>(params: &'a Params, key: &'static str) -> Result<&'a str, UserError> {
    match opt_str(params, key)? {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(UserError::Missing(key)),
    }
}

fn check_len(value: &str, key: &str, max: usize) -> Result<(), UserError> {
    // No more characters than bytes: most values need no count.
    if value.len() > max && value.chars().count() > max {
        return Err(UserError::bad(format!(
            "Parameter '{key}' is longer than {max} characters."
        )));
    }
    Ok(())
}

/// Text that passed its parser; only the parser makes one.
macro_rules! parsed_text {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl tokio_postgres::types::ToSql for $name {
            fn to_sql(
                &self,
                ty: &tokio_postgres::types::Type,
                out: &mut bytes::BytesMut,
            ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>>
            {
                self.0.to_sql(ty, out)
            }

            fn accepts(ty: &tokio_postgres::types::Type) -> bool {
                <String as tokio_postgres::types::ToSql>::accepts(ty)
            }

            tokio_postgres::types::to_sql_checked!();
        }
    };
}

parsed_text!(
    /// A scope name (Coronium's `X-Scope`): non-empty, at most 64 characters. Every users
    /// operation takes one, so every operation checks its scope alike.
    Scope
);
parsed_text!(
    /// A username as stored: at most 64 characters, no leading or trailing spaces, no control
    /// characters.
    Username
);
parsed_text!(
    /// An email address as stored: valid, at most 254 characters.
    Email
);

impl Scope {
    pub fn parse(value: &str) -> Result<Scope, UserError> {
        Self::check(value)?;
        Ok(Scope(value.to_owned()))
    }

    /// [`Scope::parse`] of text the caller already owns (no copy).
    pub fn parse_owned(value: String) -> Result<Scope, UserError> {
        Self::check(&value)?;
        Ok(Scope(value))
    }

    fn check(value: &str) -> Result<(), UserError> {
        if value.is_empty() {
            return Err(UserError::Missing("scope"));
        }
        check_len(value, "scope", MAX_SCOPE_CHARS)
    }
}

impl Username {
    pub fn parse(value: &str) -> Result<Username, UserError> {
        check_len(value, "username", MAX_USERNAME_CHARS)?;
        if value.trim() != value || value.chars().any(char::is_control) {
            return Err(UserError::bad(
                "Parameter 'username' must not have leading or trailing spaces or control characters.",
            ));
        }
        Ok(Username(value.to_owned()))
    }
}

impl Email {
    pub fn parse(value: &str) -> Result<Email, UserError> {
        if value.chars().count() > MAX_EMAIL_CHARS
            || value.chars().any(char::is_whitespace)
            || !email_address::EmailAddress::is_valid(value)
        {
            return Err(UserError::InvalidEmail);
        }
        Ok(Email(value.to_owned()))
    }
}

/// A user's id: a UUID. Anything else names no user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserId(Uuid);

impl UserId {
    pub fn parse(value: &str) -> Option<UserId> {
        Uuid::try_parse(value).ok().map(UserId)
    }

    pub fn uuid(self) -> Uuid {
        self.0
    }
}

impl From<Uuid> for UserId {
    fn from(id: Uuid) -> Self {
        UserId(id)
    }
}

fn group(value: &str) -> Result<String, UserError> {
    if value.is_empty() {
        return Err(UserError::bad("Parameter 'group' must not be empty."));
    }
    check_len(value, "group", MAX_GROUP_CHARS)?;
    Ok(value.to_owned())
}

fn password(value: &str, form: PasswordForm) -> Result<Secret, UserError> {
    if value.len() > MAX_PASSWORD_BYTES {
        return Err(UserError::bad(format!(
            "Parameter 'password' is longer than {MAX_PASSWORD_BYTES} bytes."
        )));
    }
    Ok(secret(value, form))
}

/// A password being set: from the wire it must be what the client plugin sends, md5 hex, or
/// the user could never log in with the password they typed (Lua's login hashes it).
fn new_password(value: &str, form: PasswordForm) -> Result<Secret, UserError> {
    if form == PasswordForm::Canonical
        && !(value.len() == 32 && value.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(UserError::bad(
            "Parameter 'password' must be the password's md5 digest in hex (32 characters), as \
             the Coronium client sends it.",
        ));
    }
    password(value, form)
}

/// A user id: anything that is not a UUID cannot name a user, so it is "not found".
pub fn user_id(params: &Params) -> Result<Option<UserId>, UserError> {
    match params.get("user_id") {
        None | Some(Value::Null) => Err(UserError::Missing("user_id")),
        Some(Value::String(s)) if s.is_empty() => Err(UserError::Missing("user_id")),
        Some(Value::String(s)) => Ok(UserId::parse(s)),
        Some(_) => Err(UserError::bad("Parameter 'user_id' must be a string.")),
    }
}

/// An `extra` table: flat, with string, number or boolean values (compat §2).
/// `allow_null_sentinel` keeps `"_NULL"` values, which only `update` gives a meaning.
fn extra(value: &Value, allow_null_sentinel: bool) -> Result<Map<String, Value>, UserError> {
    let map = match value {
        Value::Object(map) => map.clone(),
        // An empty Lua table may arrive as `[]`.
        Value::Array(items) if items.is_empty() => Map::new(),
        _ => return Err(UserError::bad(EXTRA_TYPES_MESSAGE)),
    };
    for (key, value) in &map {
        if !matches!(value, Value::String(_) | Value::Number(_) | Value::Bool(_)) {
            return Err(UserError::bad(EXTRA_TYPES_MESSAGE));
        }
        if key.contains('\0') || value.as_str().is_some_and(|s| s.contains('\0')) {
            return Err(nul_in("extra"));
        }
        check_len(key, "extra key", MAX_EXTRA_KEY_CHARS)?;
    }
    if serde_json::to_string(&map).map_or(usize::MAX, |s| s.len()) > MAX_EXTRA_BYTES {
        return Err(UserError::bad(format!(
            "Parameter 'extra' is larger than {MAX_EXTRA_BYTES} bytes."
        )));
    }
    Ok(if allow_null_sentinel {
        map
    } else {
        map.into_iter()
            .filter(|(_, v)| v.as_str() != Some(NULL_SENTINEL))
            .collect()
    })
}

/// The longest subject a confirmation or reset mail may have.
const MAX_SUBJECT_BYTES: usize = 255;

/// A mail's sender: an address, maybe with a display name.
fn sender(text: &str) -> Result<String, UserError> {
    match text.parse::<lettre::message::Mailbox>() {
        Ok(mailbox) if text.len() <= 320 => Ok(mailbox.to_string()),
        _ => Err(UserError::InvalidEmail),
    }
}

/// `resendConfirmation`'s optional `confirmation` options (else the stored ones).
pub fn resend_request(params: &Params) -> Result<Option<MailOptions>, UserError> {
    match params.get("confirmation") {
        None | Some(Value::Null) => Ok(None),
        Some(options) => MailOptions::parse(options, "confirmation").map(Some),
    }
}

/// The options of a confirmation or reset mail (users spec §4): `create`'s `confirmation`,
/// `sendConfirmationLink`'s and `sendPasswordResetLink`'s `options`. The template's name may be
/// given as `email_tpl` or `tpl_name` (Coronium used one for each mail).
#[derive(Debug, Clone, PartialEq)]
pub struct MailOptions {
    /// An address, maybe with a name (`Games <games@example.com>`).
    pub from_email: String,
    pub subject: String,
    pub template: Option<String>,
    pub tpl_keys: Map<String, Value>,
}

impl MailOptions {
    /// `what` names the options in messages (`confirmation`, `options`).
    pub fn parse(value: &Value, what: &str) -> Result<MailOptions, UserError> {
        let Value::Object(opts) = value else {
            return Err(UserError::bad(format!(
                "Parameter '{what}' must be a table."
            )));
        };
        if let Some(unknown) = opts.keys().find(|k| {
            !matches!(
                k.as_str(),
                "from_email" | "subject" | "email_tpl" | "tpl_name" | "tpl_keys"
            )
        }) {
            return Err(UserError::bad(format!(
                "Unknown {what} option '{unknown}'."
            )));
        }
        let tpl_keys = match opts.get("tpl_keys") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(keys)) => keys.clone(),
            Some(Value::Array(a)) if a.is_empty() => Map::new(),
            Some(_) => {
                return Err(UserError::bad(format!(
                    "Option 'tpl_keys' of '{what}' must be a table."
                )));
            }
        };
        let template = match (opt_str(opts, "email_tpl")?, opt_str(opts, "tpl_name")?) {
            (Some(a), Some(b)) if a != b => {
                return Err(UserError::bad(format!(
                    "Options 'email_tpl' and 'tpl_name' of '{what}' name different templates."
                )));
            }
            (Some(name), _) | (None, Some(name)) => {
                if !crate::mail::template::valid_name(name) {
                    return Err(UserError::bad(format!(
                        "Template name '{name}' must be a file name in the templates folder."
                    )));
                }
                Some(name.to_owned())
            }
            (None, None) => None,
        };
        let subject = required_str(opts, "subject")?;
        if subject.contains(['\r', '\n']) || subject.len() > MAX_SUBJECT_BYTES {
            return Err(UserError::bad(format!(
                "Option 'subject' of '{what}' must be one line of at most {MAX_SUBJECT_BYTES} bytes."
            )));
        }
        Ok(MailOptions {
            from_email: sender(required_str(opts, "from_email")?)?,
            subject: subject.to_owned(),
            template,
            tpl_keys,
        })
    }

    /// The stored form, which [`parse`](Self::parse) reads back.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("from_email".into(), self.from_email.clone().into());
        map.insert("subject".into(), self.subject.clone().into());
        if let Some(template) = &self.template {
            map.insert("email_tpl".into(), template.clone().into());
        }
        map.insert("tpl_keys".into(), Value::Object(self.tpl_keys.clone()));
        Value::Object(map)
    }
}

/// A validated `create`.
#[derive(Debug)]
pub struct NewUser {
    pub username: Username,
    /// `None` only for a registration without a password.
    pub secret: Option<Secret>,
    pub email: Option<Email>,
    pub group: String,
    pub extra: Map<String, Value>,
    pub confirmation: Option<MailOptions>,
}

impl NewUser {
    pub fn parse(params: &Params, form: PasswordForm) -> Result<Self, UserError> {
        let username = Username::parse(required_str(params, "username")?)?;
        let secret = Some(new_password(required_str(params, "password")?, form)?);
        let (email, group, extra) = profile(params)?;
        let confirmation = match params.get("confirmation") {
            None | Some(Value::Null) => None,
            // The seed: "User email is required if using email confirmation."
            Some(_) if email.is_none() => return Err(UserError::Missing("email")),
            Some(v) => Some(MailOptions::parse(v, "confirmation")?),
        };
        Ok(NewUser {
            username,
            secret,
            email,
            group,
            extra,
            confirmation,
        })
    }
}

/// A new user's `email`, `group` and `extra`.
type Profile = (Option<Email>, String, Map<String, Value>);

/// [`Profile`] as `create`'s parameters and `register`'s meta give it.
fn profile(params: &Params) -> Result<Profile, UserError> {
    let email = opt_str(params, "email")?
        .filter(|e| !e.is_empty())
        .map(Email::parse)
        .transpose()?;
    let group = opt_str(params, "group")?
        .map(group)
        .transpose()?
        .unwrap_or_else(|| DEFAULT_GROUP.to_owned());
    let extra = match params.get("extra") {
        None | Some(Value::Null) => Map::new(),
        Some(v) => extra(v, false)?,
    };
    Ok((email, group, extra))
}

/// A validated `register(username, password, scope, meta)` (users spec §2): created active and
/// confirmed, maybe without a name (one is made up) or a password (server-side logins only).
#[derive(Debug)]
pub struct Registration {
    pub user: NewUser,
    /// No username was given: `user.username` is to be replaced by a made-up one.
    pub anonymous: bool,
    /// `meta.login`: record a login along with the join.
    pub login: bool,
}

/// Made-up usernames: `user-` and 12 hex digits.
pub const ANONYMOUS_PREFIX: &str = "user-";

impl Registration {
    /// Reads the positional arguments as the prelude passes them: `username`, `password` (plain
    /// text, from Lua) and the `meta` table (`email`, `group`, `extra`, `login`).
    pub fn parse(params: &Params) -> Result<Registration, UserError> {
        let username = opt_str(params, "username")?.filter(|name| !name.is_empty());
        let password = opt_str(params, "password")?;
        if username.is_none() && password.is_some() {
            return Err(UserError::bad("An anonymous user cannot have a password."));
        }
        let no_meta = Map::new();
        let meta = match params.get("meta") {
            None | Some(Value::Null) => &no_meta,
            Some(Value::Object(meta)) => meta,
            Some(Value::Array(items)) if items.is_empty() => &no_meta,
            Some(_) => return Err(UserError::bad("Parameter 'meta' must be a table.")),
        };
        if let Some(key) = meta
            .keys()
            .find(|key| !matches!(key.as_str(), "email" | "group" | "extra" | "login"))
        {
            return Err(UserError::bad(format!("Unknown meta key '{key}'.")));
        }
        let login = match meta.get("login") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(login)) => *login,
            Some(_) => return Err(UserError::bad("Meta key 'login' must be a boolean.")),
        };
        let (email, group, extra) = profile(meta)?;
        let user = NewUser {
            // Replaced by a made-up name when there is none.
            username: Username::parse(username.unwrap_or(ANONYMOUS_PREFIX))?,
            secret: password
                .map(|plain| self::password(plain, PasswordForm::Plain))
                .transpose()?,
            email,
            group,
            extra,
            confirmation: None,
        };
        Ok(Registration {
            user,
            anonymous: username.is_none(),
            login,
        })
    }
}

/// Who is logging in: by username, or by email when no username is given.
#[derive(Debug)]
pub enum Login {
    Username(String),
    Email(String),
}

#[derive(Debug)]
pub struct Credentials {
    pub login: Login,
    pub secret: Secret,
    /// Where the password came from: a wire login of a user without a password is told to log
    /// in from server code (605).
    pub form: PasswordForm,
}

impl Credentials {
    pub fn parse(params: &Params, form: PasswordForm) -> Result<Self, UserError> {
        // Bounded before anything looks the name up or counts it: no account has a longer one.
        let login = match (opt_str(params, "username")?, opt_str(params, "email")?) {
            (Some(u), _) if !u.is_empty() => {
                check_len(u, "username", MAX_USERNAME_CHARS)?;
                Login::Username(u.to_owned())
            }
            (_, Some(e)) if !e.is_empty() => {
                check_len(e, "email", MAX_EMAIL_CHARS)?;
                Login::Email(e.to_owned())
            }
            _ => return Err(UserError::Missing("username")),
        };
        let secret = password(required_str(params, "password")?, form)?;
        Ok(Credentials {
            login,
            secret,
            form,
        })
    }
}

/// A validated `update`: only the fields present change.
#[derive(Debug, Default)]
pub struct UserPatch {
    pub username: Option<Username>,
    pub secret: Option<Secret>,
    pub email: Option<Email>,
    pub group: Option<String>,
    /// Keys to set (merged into the stored `extra`).
    pub extra_set: Map<String, Value>,
    /// Keys whose value was `"_NULL"`: removed from the stored `extra`.
    pub extra_remove: Vec<String>,
    pub active: Option<bool>,
}

impl UserPatch {
    /// Parses the `update` table itself (the value of `params.update` in the seed's form).
    pub fn parse(update: Option<&Value>, form: PasswordForm) -> Result<Self, UserError> {
        let fields = match update {
            None | Some(Value::Null) => return Err(UserError::Missing("update")),
            Some(Value::Object(fields)) => fields,
            Some(Value::Array(a)) if a.is_empty() => return Ok(UserPatch::default()),
            Some(_) => return Err(UserError::bad("Parameter 'update' must be a table.")),
        };
        let mut patch = UserPatch::default();
        for (key, value) in fields {
            match key.as_str() {
                "username" => {
                    patch.username = Some(Username::parse(required_str(fields, "username")?)?);
                }
                "password" => {
                    patch.secret = Some(new_password(required_str(fields, "password")?, form)?);
                }
                "email" => patch.email = Some(Email::parse(required_str(fields, "email")?)?),
                "group" => patch.group = Some(group(required_str(fields, "group")?)?),
                "extra" => {
                    for (k, v) in extra(value, true)? {
                        if v.as_str() == Some(NULL_SENTINEL) {
                            patch.extra_remove.push(k);
                        } else {
                            patch.extra_set.insert(k, v);
                        }
                    }
                }
                "active" => match value {
                    Value::Bool(b) => patch.active = Some(*b),
                    _ => return Err(UserError::bad("Parameter 'active' must be a boolean.")),
                },
                other => {
                    return Err(UserError::bad(format!(
                        "Field '{other}' cannot be updated (allowed: username, password, email, group, extra, active)."
                    )));
                }
            }
        }
        Ok(patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(v: Value) -> Params {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn create_requires_username_and_password() {
        let err =
            NewUser::parse(&params(json!({"password": "x"})), PasswordForm::Plain).unwrap_err();
        assert_eq!(
            (err.status().code(), err.to_string().as_str()),
            (804, "Missing required parameter: username")
        );
        let err =
            NewUser::parse(&params(json!({"username": "a"})), PasswordForm::Plain).unwrap_err();
        assert_eq!(err.status().code(), 804);
        let err = NewUser::parse(
            &params(json!({"username": "", "password": "x"})),
            PasswordForm::Plain,
        )
        .unwrap_err();
        assert_eq!(err.status().code(), 804);
    }

    #[test]
    fn extra_must_be_flat() {
        for bad in [
            json!({"a": {"b": 1}}),
            json!({"a": [1]}),
            json!("str"),
            json!([1, 2]),
        ] {
            let p = params(json!({"username": "a", "password": "b", "extra": bad}));
            let err = NewUser::parse(&p, PasswordForm::Plain).unwrap_err();
            assert_eq!(
                (err.status().code(), err.to_string().as_str()),
                (801, EXTRA_TYPES_MESSAGE)
            );
        }
        let p = params(
            json!({"username": "a", "password": "b", "extra": {"s": "x", "n": 1.5, "b": true}}),
        );
        assert_eq!(
            NewUser::parse(&p, PasswordForm::Plain).unwrap().extra.len(),
            3
        );
    }

    #[test]
    fn emails_are_checked() {
        for bad in ["nope", "a b@c.d", "@x.y", "a@"] {
            let p = params(json!({"username": "a", "password": "b", "email": bad}));
            assert_eq!(
                NewUser::parse(&p, PasswordForm::Plain)
                    .unwrap_err()
                    .status()
                    .code(),
                704,
                "{bad}"
            );
        }
    }

    #[test]
    fn confirmation_needs_sender_subject_and_email() {
        let conf = json!({"from_email": "games@example.com", "subject": "Hi"});
        let p = params(json!({"username": "a", "password": "b", "confirmation": conf}));
        assert_eq!(
            NewUser::parse(&p, PasswordForm::Plain)
                .unwrap_err()
                .to_string(),
            "Missing required parameter: email"
        );
        let p = params(
            json!({"username": "a", "password": "b", "email": "a@example.com",
            "confirmation": {"subject": "Hi"}}),
        );
        assert_eq!(
            NewUser::parse(&p, PasswordForm::Plain)
                .unwrap_err()
                .to_string(),
            "Missing required parameter: from_email"
        );
    }

    #[test]
    fn mail_options_alias_template_names_and_round_trip() {
        let base = json!({"from_email": "games@example.com", "subject": "Hi"});
        let with = |key: &str, value: Value| {
            let mut v = base.clone();
            v[key] = value;
            v
        };
        let a = MailOptions::parse(&with("email_tpl", json!("a.tpl")), "options").unwrap();
        let b = MailOptions::parse(&with("tpl_name", json!("a.tpl")), "options").unwrap();
        assert_eq!(a, b);
        assert_eq!(MailOptions::parse(&a.to_json(), "options").unwrap(), a);
        let mut both = with("email_tpl", json!("a.tpl"));
        both["tpl_name"] = json!("b.tpl");
        assert_eq!(
            MailOptions::parse(&both, "options")
                .unwrap_err()
                .status()
                .code(),
            801
        );
        for bad in ["../secret", "a/b.tpl", ".."] {
            assert_eq!(
                MailOptions::parse(&with("tpl_name", json!(bad)), "options")
                    .unwrap_err()
                    .status()
                    .code(),
                801,
                "{bad}"
            );
        }
        assert_eq!(
            MailOptions::parse(&with("bcc", json!("x@example.com")), "options")
                .unwrap_err()
                .status()
                .code(),
            801
        );
    }

    #[test]
    fn update_splits_extra_into_set_and_remove() {
        let patch = UserPatch::parse(
            Some(&json!({"extra": {"color": "_NULL", "level": 3}, "active": false})),
            PasswordForm::Plain,
        )
        .unwrap();
        assert_eq!(patch.extra_remove, vec!["color".to_owned()]);
        assert_eq!(patch.extra_set.get("level"), Some(&json!(3)));
        assert_eq!(patch.active, Some(false));
        assert_eq!(
            UserPatch::parse(None, PasswordForm::Plain)
                .unwrap_err()
                .status()
                .code(),
            804
        );
        assert_eq!(
            UserPatch::parse(Some(&json!({"login_count": 5})), PasswordForm::Plain)
                .unwrap_err()
                .status()
                .code(),
            801
        );
    }

    #[test]
    fn malformed_user_id_names_nobody() {
        assert_eq!(
            user_id(&params(json!({"user_id": "not-a-uuid"}))).unwrap(),
            None
        );
        assert_eq!(
            user_id(&params(json!({}))).unwrap_err().status().code(),
            804
        );
    }
}
