//! Where mail goes: an SMTP server (lettre), Mailgun's HTTP API, or, when neither is configured,
//! `.eml` files in the data directory for development.

use std::path::PathBuf;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lettre::message::{Mailbox, MultiPart, header::ContentType};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};

use super::{MailError, Message, Region, settings::MailSettings};

/// How long one delivery attempt may take before it counts as failed (and is retried).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an attempt failed, and whether trying again could help.
#[derive(Debug)]
pub struct SendFailure {
    /// A refusal that will not change (a bad address, a rejected key): no retries.
    pub permanent: bool,
    pub reason: String,
}

impl SendFailure {
    fn transient(reason: impl Into<String>) -> Self {
        SendFailure {
            permanent: false,
            reason: reason.into(),
        }
    }

    fn permanent(reason: impl Into<String>) -> Self {
        SendFailure {
            permanent: true,
            reason: reason.into(),
        }
    }
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<bytes::Bytes>>;

pub enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Mailgun {
        client: HttpsClient,
        /// `<base>/v3/<domain>/messages`
        url: String,
        api_key: SecretString,
    },
    /// Development: each mail becomes `<dir>/<outbox id>.eml`.
    Files(PathBuf),
}

impl Transport {
    /// The transport the settings describe; `data_dir` holds the development outbox.
    pub fn from_settings(
        settings: &MailSettings,
        data_dir: &std::path::Path,
    ) -> Result<Transport, MailError> {
        let mailgun = &settings.mailgun;
        match (&settings.smtp_url, &mailgun.api_key) {
            (Some(_), Some(_)) => Err(MailError::Config(
                "both mail.smtp_url and mail.mailgun.api_key are set; configure one transport"
                    .into(),
            )),
            (Some(url), None) => smtp(url, settings.smtp_ca_file.as_deref()).map(Transport::Smtp),
            (None, Some(api_key)) => {
                let domain = mailgun
                    .domain
                    .as_deref()
                    .filter(|d| !d.is_empty())
                    .ok_or_else(|| {
                        MailError::Config(
                            "mail.mailgun.api_key is set but mail.mailgun.domain is not".into(),
                        )
                    })?;
                let base = match &mailgun.base_url {
                    Some(base) => base.trim_end_matches('/').to_owned(),
                    None => match mailgun.region {
                        Region::Us => "https://api.mailgun.net".to_owned(),
                        Region::Eu => "https://api.eu.mailgun.net".to_owned(),
                    },
                };
                let connector = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_webpki_roots()
                    .https_or_http()
                    .enable_http1()
                    .build();
                Ok(Transport::Mailgun {
                    client: Client::builder(TokioExecutor::new()).build(connector),
                    url: format!("{base}/v3/{domain}/messages"),
                    api_key: api_key.clone(),
                })
            }
            (None, None) => Ok(Transport::Files(data_dir.join("mail"))),
        }
    }

    /// What the start-up log says about where mail goes (never a credential).
    pub fn describe(&self) -> String {
        match self {
            Transport::Smtp(_) => "SMTP (mail.smtp_url)".into(),
            Transport::Mailgun { url, .. } => format!("Mailgun API at {url}"),
            Transport::Files(dir) => {
                format!("files in {} (no transport configured)", dir.display())
            }
        }
    }

    /// One delivery attempt of outbox mail `id`.
    pub async fn send(&self, id: i64, message: &Message) -> Result<(), SendFailure> {
        match self {
            Transport::Smtp(smtp) => {
                let email = build(message, Encoding::Standard).map_err(SendFailure::permanent)?;
                match tokio::time::timeout(SEND_TIMEOUT, smtp.send(email)).await {
                    Err(_) => Err(SendFailure::transient(
                        "the SMTP server did not answer in time",
                    )),
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) if e.is_permanent() => Err(SendFailure::permanent(e.to_string())),
                    Ok(Err(e)) => Err(SendFailure::transient(e.to_string())),
                }
            }
            Transport::Mailgun {
                client,
                url,
                api_key,
            } => mailgun_send(client, url, api_key, message).await,
            Transport::Files(dir) => {
                let email = build(message, Encoding::Readable).map_err(SendFailure::permanent)?;
                let path = dir.join(format!("{id}.eml"));
                write_private(dir, &path, &email.formatted())
                    .await
                    .map_err(|e| SendFailure::transient(format!("{}: {e}", path.display())))?;
                tracing::info!(
                    path = %path.display(),
                    to = %message.to.join(", "),
                    subject = %message.subject,
                    "mail written to the development outbox (configure mail.smtp_url or \
                     mail.mailgun to send it)"
                );
                Ok(())
            }
        }
    }
}

/// An SMTP transport from its URL (`smtp://`, `smtp://...?tls=required`, `smtps://`), trusting
/// `ca_file`'s certificate too when given. Credentials travel only over TLS, except to this
/// machine.
fn smtp(
    url: &SecretString,
    ca_file: Option<&std::path::Path>,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, MailError> {
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    let text = url.expose_secret();
    // Errors never show the URL: it may hold a password.
    let parsed = url::Url::parse(text)
        .map_err(|e| MailError::Config(format!("mail.smtp_url is not a URL: {e}")))?;
    let tls_mode = parsed
        .query_pairs()
        .find(|(k, _)| k == "tls")
        .map(|(_, v)| v.into_owned());
    let tls = parsed.scheme() == "smtps"
        || matches!(tls_mode.as_deref(), Some("required" | "opportunistic"));
    let loopback = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        // `smtp` is no special scheme to the URL parser: an IP address arrives as a name.
        Some(url::Host::Domain(name)) => {
            name == "localhost"
                || name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        None => false,
    };
    if parsed.password().is_some() && !tls && !loopback {
        return Err(MailError::Config(
            "mail.smtp_url has credentials but no TLS: use smtps:// or add ?tls=required, so \
             the password does not cross the network in clear"
                .into(),
        ));
    }
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(text)
        .map_err(|e| MailError::Config(format!("mail.smtp_url: {e}")))?
        .timeout(Some(SEND_TIMEOUT));
    if let Some(ca_file) = ca_file {
        let shown = ca_file.display();
        if !tls {
            return Err(MailError::Config(format!(
                "mail.smtp_ca_file ({shown}) is set but mail.smtp_url uses no TLS"
            )));
        }
        let pem = std::fs::read(ca_file)
            .map_err(|e| MailError::Config(format!("mail.smtp_ca_file {shown}: {e}")))?;
        let certificate = Certificate::from_pem(&pem)
            .map_err(|e| MailError::Config(format!("mail.smtp_ca_file {shown}: {e}")))?;
        let host = parsed.host_str().unwrap_or_default().to_owned();
        let parameters = TlsParameters::builder(host)
            .add_root_certificate(certificate)
            .build_rustls()
            .map_err(|e| MailError::Config(format!("mail.smtp_ca_file {shown}: {e}")))?;
        builder = builder.tls(match (parsed.scheme(), tls_mode.as_deref()) {
            ("smtps", _) => Tls::Wrapper(parameters),
            (_, Some("opportunistic")) => Tls::Opportunistic(parameters),
            _ => Tls::Required(parameters),
        });
    }
    Ok(builder.build())
}

/// How bodies are encoded: as the standard picks (quoted-printable for long lines), or as they
/// are, so a development `.eml` file reads as it will be seen (links whole).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Standard,
    Readable,
}

/// `text` with every line break a plain `\n` (which the MIME body then writes as CRLF): a
/// bare CR would otherwise reach the SMTP DATA verbatim in a part labelled 7bit, where servers
/// and clients read it differently (a way to smuggle lines past filters).
fn one_kind_of_line_break(text: &str) -> String {
    if !text.contains('\r') {
        return text.to_owned();
    }
    text.replace("\r\n", "\n").replace('\r', "\n")
}

/// The MIME message: text, HTML, or both as alternatives.
pub fn build(message: &Message, encoding: Encoding) -> Result<lettre::Message, String> {
    use lettre::message::{Body, SinglePart, header::ContentTransferEncoding};
    let mailbox = |text: &str| -> Result<Mailbox, String> {
        text.parse()
            .map_err(|e| format!("invalid address {text:?}: {e}"))
    };
    let body = |text: &str| {
        let text = one_kind_of_line_break(text);
        match encoding {
            // Binary: no transfer encoding at all (a file, not a wire with line limits).
            Encoding::Readable => {
                Body::new_with_encoding(text.clone(), ContentTransferEncoding::Binary)
                    .unwrap_or_else(|_| Body::new(text))
            }
            Encoding::Standard => Body::new(text),
        }
    };
    let part = |content_type: ContentType, text: &str| {
        SinglePart::builder().header(content_type).body(body(text))
    };
    let mut builder = lettre::Message::builder()
        .from(mailbox(&message.from)?)
        .subject(message.subject.clone());
    for to in &message.to {
        builder = builder.to(mailbox(to)?);
    }
    for cc in &message.cc {
        builder = builder.cc(mailbox(cc)?);
    }
    for bcc in &message.bcc {
        builder = builder.bcc(mailbox(bcc)?);
    }
    if let Some(reply_to) = &message.reply_to {
        builder = builder.reply_to(mailbox(reply_to)?);
    }
    let built = match (&message.text, &message.html) {
        (Some(text), Some(html)) => builder.multipart(
            MultiPart::alternative()
                .singlepart(part(ContentType::TEXT_PLAIN, text))
                .singlepart(part(ContentType::TEXT_HTML, html)),
        ),
        (None, Some(html)) => builder.singlepart(part(ContentType::TEXT_HTML, html)),
        (text, None) => builder.singlepart(part(
            ContentType::TEXT_PLAIN,
            text.as_deref().unwrap_or_default(),
        )),
    };
    built.map_err(|e| e.to_string())
}

async fn mailgun_send(
    client: &HttpsClient,
    url: &str,
    api_key: &SecretString,
    message: &Message,
) -> Result<(), SendFailure> {
    use base64::Engine as _;
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("from", &message.from);
    for to in &message.to {
        form.append_pair("to", to);
    }
    for cc in &message.cc {
        form.append_pair("cc", cc);
    }
    for bcc in &message.bcc {
        form.append_pair("bcc", bcc);
    }
    form.append_pair("subject", &message.subject);
    if let Some(text) = &message.text {
        form.append_pair("text", text);
    }
    if let Some(html) = &message.html {
        form.append_pair("html", html);
    }
    if let Some(reply_to) = &message.reply_to {
        form.append_pair("h:Reply-To", reply_to);
    }
    if let Some(tag) = &message.tag {
        form.append_pair("o:tag", tag);
    }
    let auth = base64::engine::general_purpose::STANDARD
        .encode(format!("api:{}", api_key.expose_secret()));
    let request = hyper::Request::post(url)
        .header("authorization", format!("Basic {auth}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::from(form.finish()))
        .map_err(|e| SendFailure::permanent(e.to_string()))?;
    let response = match tokio::time::timeout(SEND_TIMEOUT, client.request(request)).await {
        Err(_) => return Err(SendFailure::transient("Mailgun did not answer in time")),
        Ok(Err(e)) => return Err(SendFailure::transient(format!("Mailgun: {e}"))),
        Ok(Ok(response)) => response,
    };
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    // Mailgun explains a refusal in a small JSON body; keep a bounded piece of it.
    let limited = http_body_util::Limited::new(response.into_body(), 64 * 1024);
    let body = tokio::time::timeout(Duration::from_secs(5), limited.collect())
        .await
        .ok()
        .and_then(Result::ok)
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let said = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    let reason = format!("Mailgun answered {status}: {said}");
    if status.is_server_error() || status.as_u16() == 429 {
        Err(SendFailure::transient(reason))
    } else {
        Err(SendFailure::permanent(reason))
    }
}

/// Writes a file only its owner can read (a mail may hold a confirmation or reset link) in a
/// directory only its owner can enter.
async fn write_private(
    dir: &std::path::Path,
    path: &std::path::Path,
    bytes: &[u8],
) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let (dir, path, bytes) = (dir.to_owned(), path.to_owned(), bytes.to_owned());
    tokio::task::spawn_blocking(move || {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        std::io::Write::write_all(&mut file, &bytes)
    })
    .await
    .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_cr_never_reaches_the_wire() {
        let message = Message {
            from: "a@example.com".into(),
            to: vec!["b@example.com".into()],
            subject: "s".into(),
            text: Some("one\rtwo\r\nthree\nfour".into()),
            ..Message::default()
        };
        let formatted = build(&message, Encoding::Standard).unwrap().formatted();
        let text = String::from_utf8(formatted).unwrap();
        let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
        assert!(body.starts_with("one\r\ntwo\r\nthree\r\nfour"), "{body:?}");
        assert_eq!(
            text.matches('\r').count(),
            text.matches("\r\n").count(),
            "{text:?}"
        );
    }

    fn with_smtp(url: &str) -> MailSettings {
        MailSettings {
            smtp_url: Some(url.to_owned().into()),
            ..MailSettings::default()
        }
    }

    fn config_error(settings: &MailSettings) -> String {
        match Transport::from_settings(settings, std::path::Path::new("/tmp")) {
            Err(MailError::Config(message)) => message,
            Err(e) => panic!("{e}"),
            Ok(t) => panic!("accepted: {}", t.describe()),
        }
    }

    #[test]
    fn passwords_cross_the_network_only_over_tls() {
        let message = config_error(&with_smtp("smtp://me:hunter2@mail.example.com"));
        assert!(message.contains("TLS"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        let path = std::path::Path::new("/tmp");
        for fine in [
            "smtp://me:hunter2@127.0.0.1:25",
            "smtp://me:hunter2@mail.example.com?tls=required",
            "smtps://me:hunter2@mail.example.com",
            "smtp://mail.example.com",
        ] {
            let transport = Transport::from_settings(&with_smtp(fine), path).unwrap();
            assert!(!transport.describe().contains("hunter2"));
        }
        let bad = config_error(&with_smtp("not a url with hunter2"));
        assert!(!bad.contains("hunter2"), "{bad}");
    }

    #[test]
    fn one_transport_at_a_time() {
        let mut both = with_smtp("smtp://localhost");
        both.mailgun.api_key = Some("key".to_owned().into());
        both.mailgun.domain = Some("mg.example.com".into());
        assert!(config_error(&both).contains("one transport"));
        let mut no_domain = MailSettings::default();
        no_domain.mailgun.api_key = Some("key".to_owned().into());
        assert!(config_error(&no_domain).contains("domain"));
        let mut eu = no_domain.clone();
        eu.mailgun.domain = Some("mg.example.com".into());
        eu.mailgun.region = Region::Eu;
        let transport = Transport::from_settings(&eu, std::path::Path::new("/tmp")).unwrap();
        assert_eq!(
            transport.describe(),
            "Mailgun API at https://api.eu.mailgun.net/v3/mg.example.com/messages"
        );
        assert!(matches!(
            Transport::from_settings(&MailSettings::default(), std::path::Path::new("/d")),
            Ok(Transport::Files(dir)) if dir == std::path::Path::new("/d/mail")
        ));
    }
}
