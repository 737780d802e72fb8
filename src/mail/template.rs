//! Mail templates (users spec §4.2): the subset of lua-resty-template that flat values need.
//! `{{ key }}` is HTML-escaped (even in plain-text mail, as Coronium did), `{* key *}` is raw, and
//! `{-raw-}...{-raw-}` is copied verbatim. `{% %}` and `{( )}` would run Lua or include files:
//! a template using them is invalid (no code in mail).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TemplateError {
    #[error("{0}: template not found")]
    NotFound(String),
    #[error("{name}: {reason}")]
    Invalid { name: String, reason: String },
}

/// A parsed template: text and the places values go.
#[derive(Debug, Clone)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Escaped(String),
    Raw(String),
}

impl Template {
    pub fn parse(name: &str, source: &str) -> Result<Template, TemplateError> {
        let invalid = |reason: String| TemplateError::Invalid {
            name: name.to_owned(),
            reason,
        };
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = source;
        while let Some(at) = rest.find('{') {
            text.push_str(&rest[..at]);
            let tail = &rest[at..];
            let (open, close, kind) = match tail.get(..2) {
                Some("{{") => ("{{", "}}", Some(true)),
                Some("{*") => ("{*", "*}", Some(false)),
                Some("{%") | Some("{(") => {
                    return Err(invalid(format!(
                        "'{}' runs code or includes files, which mail templates may not",
                        &tail[..2]
                    )));
                }
                _ if tail.starts_with("{-raw-}") => {
                    let body = &tail["{-raw-}".len()..];
                    let end = body
                        .find("{-raw-}")
                        .ok_or_else(|| invalid("'{-raw-}' is not closed".into()))?;
                    text.push_str(&body[..end]);
                    rest = &body[end + "{-raw-}".len()..];
                    continue;
                }
                _ => {
                    text.push('{');
                    rest = &tail[1..];
                    continue;
                }
            };
            let body = &tail[open.len()..];
            let end = body
                .find(close)
                .ok_or_else(|| invalid(format!("'{open}' is not closed")))?;
            let key = body[..end].trim();
            if !is_key(key) {
                return Err(invalid(format!(
                    "'{open} {key} {close}': only flat key names are supported"
                )));
            }
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(match kind {
                Some(true) => Part::Escaped(key.to_owned()),
                _ => Part::Raw(key.to_owned()),
            });
            rest = &body[end + close.len()..];
        }
        text.push_str(rest);
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Template { parts })
    }

    /// Fills in `values`; keys it does not have render empty.
    pub fn render(&self, values: &Map<String, Value>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Escaped(key) => escape_html_into(&value_text(values.get(key)), &mut out),
                Part::Raw(key) => out.push_str(&value_text(values.get(key))),
            }
        }
        out
    }
}

fn is_key(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn value_text(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// lua-resty-template's escaping: `& < > " ' /`.
pub fn escape_html_into(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '/' => out.push_str("&#47;"),
            c => out.push(c),
        }
    }
}

pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    escape_html_into(text, &mut out);
    out
}

/// Which mail a template is for, and so its directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Confirmation,
    PasswordReset,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Confirmation => "registration",
            Kind::PasswordReset => "password",
        }
    }

    fn defaults(self) -> (&'static str, &'static str) {
        match self {
            Kind::Confirmation => (
                include_str!("templates/registration/email.tpl"),
                include_str!("templates/registration/email.html.tpl"),
            ),
            Kind::PasswordReset => (
                include_str!("templates/password/email.tpl"),
                include_str!("templates/password/email.html.tpl"),
            ),
        }
    }
}

/// The template every mail uses unless the caller names another.
pub const DEFAULT_NAME: &str = "email.tpl";

/// A mail's body templates: the text, and an HTML alternative when one exists beside it
/// (`email.tpl` → `email.html.tpl`).
#[derive(Debug, Clone)]
pub struct MailTemplate {
    pub text: Template,
    pub html: Option<Template>,
}

/// Whether `name` may name a template: a bare file name, nothing that leaves its directory.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
}

/// Finds templates under `<templates_dir>/<registration|password|pages>/`, falling back to the
/// ones built into the binary.
#[derive(Debug, Clone)]
pub struct Templates {
    dir: PathBuf,
}

impl Templates {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Templates { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The named template of a kind (the default when `name` is `None`).
    pub async fn mail(
        &self,
        kind: Kind,
        name: Option<&str>,
    ) -> Result<MailTemplate, TemplateError> {
        let name = name.unwrap_or(DEFAULT_NAME);
        if !valid_name(name) {
            return Err(TemplateError::NotFound(name.to_owned()));
        }
        let folder = self.dir.join(kind.dir());
        let html_name = match name.strip_suffix(".tpl") {
            Some(stem) => format!("{stem}.html.tpl"),
            None => format!("{name}.html"),
        };
        let shown = format!("{}/{name}", kind.dir());
        match read_optional(&folder.join(name)).await {
            Some(text) => {
                let html = match read_optional(&folder.join(&html_name)).await {
                    Some(html) => Some(Template::parse(&html_name, &html)?),
                    None => None,
                };
                Ok(MailTemplate {
                    text: Template::parse(&shown, &text)?,
                    html,
                })
            }
            None if name == DEFAULT_NAME => {
                let (text, html) = kind.defaults();
                Ok(MailTemplate {
                    text: Template::parse(&shown, text)?,
                    html: Some(Template::parse(&html_name, html)?),
                })
            }
            None => Err(TemplateError::NotFound(shown)),
        }
    }

    /// A page template (`pages/<name>`), else the built-in one.
    pub async fn page(&self, name: &str, default: &str) -> Result<Template, TemplateError> {
        match read_optional(&self.dir.join("pages").join(name)).await {
            Some(source) => Template::parse(name, &source),
            None => Template::parse(name, default),
        }
    }
}

/// A file's text; `None` when it does not exist or cannot be read (logged).
async fn read_optional(path: &Path) -> Option<String> {
    match tokio::fs::read_to_string(path).await {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read template");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn values(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn escaped_raw_and_verbatim() {
        let t = Template::parse(
            "t",
            "Hi {{ name }}, {* link *} {{missing}}|{-raw-}{{ name }}{-raw-} {n} {{ count }}",
        )
        .unwrap();
        let out = t.render(&values(json!({
            "name": "A & B </b>", "link": "http://x/?a=1&b=2", "count": 3
        })));
        assert_eq!(
            out,
            "Hi A &amp; B &lt;&#47;b&gt;, http://x/?a=1&b=2 |{{ name }} {n} 3"
        );
    }

    #[test]
    fn code_and_includes_make_a_template_invalid() {
        for source in [
            "{% os.exit() %}",
            "{(other.tpl)}",
            "{{ a.b }}",
            "{{ x",
            "{-raw-}open",
        ] {
            assert!(
                matches!(
                    Template::parse("t", source),
                    Err(TemplateError::Invalid { .. })
                ),
                "{source}"
            );
        }
    }

    #[test]
    fn names_stay_in_their_directory() {
        for bad in ["", ".", "..", "../x.tpl", "a/b.tpl", "a\\b"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(valid_name("welcome.tpl"));
    }
}
