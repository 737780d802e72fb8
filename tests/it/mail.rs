//! Mail over real protocols (users spec §4): an SMTP server on loopback and a local HTTP
//! listener standing in for Mailgun receive what the outbox sends; the links in the mails are
//! followed over HTTP; the outbox survives a restart and is shared by two instances.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coronium::users::password::md5_hex;
use mail_parser::MessageParser;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

use crate::common::{
    TestDb, TestServer, assert_ok, http_get, run_lua, scratch_dir, serve_projects, write_project,
};

/// How a test SMTP server answers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Accept,
    /// 451 at MAIL FROM: try again later.
    Transient,
    /// 550 at RCPT TO: this mailbox does not exist.
    Permanent,
    /// Accepts the connection and never says a word.
    Hang,
}

#[derive(Debug, Clone)]
struct Received {
    from: String,
    to: Vec<String>,
    data: String,
}

/// An SMTP server on loopback, on a thread of its own, that keeps what it receives. With a TLS
/// acceptor it offers STARTTLS, and AUTH only once TLS is up (as real servers do).
struct SmtpSink {
    port: u16,
    shared: Arc<SinkState>,
}

#[derive(Default)]
struct SinkState {
    received: Mutex<Vec<Received>>,
    mode: Mutex<Option<Mode>>,
    attempts: Mutex<usize>,
    connections: Mutex<usize>,
    /// (user, password, over TLS)
    logins: Mutex<Vec<(String, String, bool)>>,
}

impl SinkState {
    fn mode(&self) -> Mode {
        self.mode.lock().unwrap().unwrap_or(Mode::Accept)
    }
}

/// How an SMTP session ended: closed, or upgraded to TLS (the plain stream handed back).
enum Ended<S> {
    Closed,
    StartTls(S),
}

impl SmtpSink {
    fn start(mode: Mode) -> SmtpSink {
        Self::start_with(mode, None)
    }

    fn start_with(mode: Mode, tls: Option<tokio_rustls::TlsAcceptor>) -> SmtpSink {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(SinkState::default());
        *shared.mode.lock().unwrap() = Some(mode);
        let state = shared.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let (state, tls) = (state.clone(), tls.clone());
                    tokio::spawn(async move {
                        let offer_tls = tls.is_some();
                        if let (Ok(Ended::StartTls(plain)), Some(tls)) =
                            (session(stream, false, offer_tls, &state).await, tls)
                            && let Ok(secure) = tls.accept(plain).await
                        {
                            let _ = session(secure, true, false, &state).await;
                        }
                    });
                }
            });
        });
        SmtpSink { port, shared }
    }

    fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = Some(mode);
    }

    fn attempts(&self) -> usize {
        *self.shared.attempts.lock().unwrap()
    }

    fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    fn logins(&self) -> Vec<(String, String, bool)> {
        self.shared.logins.lock().unwrap().clone()
    }

    /// Waits until `count` mails arrived; they all.
    async fn wait_for(&self, count: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = self.received();
            if got.len() >= count {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {count} mails arrived",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn session<S>(
    stream: S,
    secure: bool,
    offer_tls: bool,
    state: &SinkState,
) -> std::io::Result<Ended<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use base64::Engine as _;
    let mut io = BufReader::new(stream);
    if !secure {
        *state.connections.lock().unwrap() += 1;
        if state.mode() == Mode::Hang {
            std::future::pending::<()>().await;
        }
        io.get_mut().write_all(b"220 sink ESMTP\r\n").await?;
    }
    let mut mail = Received {
        from: String::new(),
        to: Vec::new(),
        data: String::new(),
    };
    let mut line = String::new();
    loop {
        line.clear();
        if io.read_line(&mut line).await? == 0 {
            return Ok(Ended::Closed);
        }
        let command = line.trim_end().to_owned();
        let upper = command.to_ascii_uppercase();
        let mode = state.mode();
        let answer: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            match (secure, offer_tls) {
                (false, true) => b"250-sink\r\n250-STARTTLS\r\n250 8BITMIME\r\n",
                (true, _) => b"250-sink\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n",
                (false, false) => b"250-sink\r\n250 8BITMIME\r\n",
            }
        } else if upper == "STARTTLS" && offer_tls && !secure {
            io.get_mut().write_all(b"220 2.0.0 ready\r\n").await?;
            io.get_mut().flush().await?;
            return Ok(Ended::StartTls(io.into_inner()));
        } else if upper.starts_with("AUTH PLAIN") {
            let mut token = command[10..].trim().to_owned();
            if token.is_empty() {
                io.get_mut().write_all(b"334 \r\n").await?;
                line.clear();
                io.read_line(&mut line).await?;
                token = line.trim().to_owned();
            }
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(token)
                .unwrap_or_default();
            let parts: Vec<String> = decoded
                .split(|b| *b == 0)
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            if let [_, user, password] = parts.as_slice() {
                state
                    .logins
                    .lock()
                    .unwrap()
                    .push((user.clone(), password.clone(), secure));
            }
            b"235 2.7.0 accepted\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            *state.attempts.lock().unwrap() += 1;
            if mode == Mode::Transient {
                b"451 4.3.0 try again later\r\n"
            } else {
                mail.from = command[10..].trim().to_owned();
                b"250 OK\r\n"
            }
        } else if upper.starts_with("RCPT TO:") {
            if mode == Mode::Permanent {
                b"550 5.1.1 no such mailbox\r\n"
            } else {
                mail.to.push(command[8..].trim().to_owned());
                b"250 OK\r\n"
            }
        } else if upper == "DATA" {
            io.get_mut().write_all(b"354 go ahead\r\n").await?;
            let mut data = String::new();
            loop {
                line.clear();
                if io.read_line(&mut line).await? == 0 {
                    return Ok(Ended::Closed);
                }
                if line == ".\r\n" {
                    break;
                }
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
            }
            mail.data = data;
            state.received.lock().unwrap().push(mail.clone());
            mail.to.clear();
            b"250 queued\r\n"
        } else if upper == "QUIT" {
            io.get_mut().write_all(b"221 bye\r\n").await?;
            return Ok(Ended::Closed);
        } else if upper == "RSET" || upper == "NOOP" {
            b"250 OK\r\n"
        } else {
            b"502 not implemented\r\n"
        };
        io.get_mut().write_all(answer).await?;
        io.get_mut().flush().await?;
    }
}

/// A mail's parts, decoded.
struct Parsed {
    subject: String,
    from: String,
    to: String,
    text: String,
    html: Option<String>,
}

fn parse(mail: &Received) -> Parsed {
    let message = MessageParser::default()
        .parse(mail.data.as_bytes())
        .expect("a MIME message");
    let address = |a: Option<&mail_parser::Address>| {
        a.and_then(|a| a.first())
            .and_then(|a| a.address())
            .unwrap_or_default()
            .to_owned()
    };
    Parsed {
        subject: message.subject().unwrap_or_default().to_owned(),
        from: address(message.from()),
        to: address(message.to()),
        // SMTP carries CRLF line ends.
        text: message
            .body_text(0)
            .unwrap_or_default()
            .replace("\r\n", "\n"),
        html: message.body_html(0).map(|h| h.into_owned()),
    }
}

/// The path and query of the first link to `page` in `text`.
fn link_path(text: &str, page: &str) -> String {
    let at = text
        .find(&format!("/{page}?code="))
        .unwrap_or_else(|| panic!("no {page} link in {text:?}"));
    text[at..]
        .split(|c: char| c.is_whitespace() || c == '"' || c == '<')
        .next()
        .unwrap()
        .to_owned()
}

const PUBLIC_URL: &str = "https://play.example.com";

fn smtp_env(sink: &SmtpSink) -> Vec<(String, String)> {
    vec![
        ("CORONIUM_MAIL_SMTP_URL".into(), sink.url()),
        ("CORONIUM_PUBLIC_URL".into(), PUBLIC_URL.into()),
        ("CORONIUM_MAIL_RETRY_SECS".into(), "1".into()),
        ("CORONIUM_MAIL_POLL_SECS".into(), "1".into()),
    ]
}

fn with_env(env: Vec<(String, String)>) -> impl FnOnce(&mut std::process::Command) {
    move |cmd| {
        for (k, v) in env {
            cmd.env(k, v);
        }
    }
}

fn confirmation(subject: &str) -> Value {
    json!({"from_email": "Games <games@example.com>", "subject": subject})
}

async fn create_pending(server: &TestServer, name: &str, options: Value) -> Value {
    server
        .call(
            "api.users",
            "create",
            json!({"username": name, "password": md5_hex("old-pw"),
                   "email": format!("{name}@example.com"), "confirmation": options}),
        )
        .await
}

async fn login(server: &TestServer, name: &str, password: &str) -> Value {
    server
        .call(
            "api.users",
            "login",
            json!({"username": name, "password": md5_hex(password)}),
        )
        .await
}

/// The whole confirmation flow: create → SMTP → link → active and validated; the link works
/// once; the code is stored only as a hash.
#[tokio::test]
async fn confirmation_mail_arrives_over_smtp_and_its_link_confirms() {
    let db = TestDb::new().await;
    let sink = SmtpSink::start(Mode::Accept);
    let server = TestServer::start(&db, with_env(smtp_env(&sink)));
    let created = create_pending(&server, "tiny", confirmation("Confirm your account")).await;
    assert_eq!(created["result"]["confirmation"], "pending", "{created}");
    let user_id = created["result"]["user_id"].as_str().unwrap().to_owned();

    let mails = sink.wait_for(1).await;
    let mail = parse(&mails[0]);
    assert_eq!(mail.subject, "Confirm your account");
    // With no senders listed, a client cannot choose whose name the mail carries.
    assert_eq!(mail.from, "no-reply@play.example.com");
    assert_eq!(mail.to, "tiny@example.com");
    assert_eq!(mails[0].to, ["<tiny@example.com>"]);
    let path = link_path(&mail.text, "_confirmation");
    assert!(
        mail.text.contains(&format!("{PUBLIC_URL}{path}")),
        "{}",
        mail.text
    );
    let html = mail.html.expect("an HTML alternative");
    assert!(mails[0].data.contains("text/html"), "{}", mails[0].data);
    assert!(
        html.contains(&format!("<a href=\"{PUBLIC_URL}{path}\"")),
        "{html}"
    );

    let client = db.client().await;
    let stored: String = client
        .query_one(
            "SELECT confirmation_code FROM users WHERE user_id = $1::text::uuid",
            &[&user_id],
        )
        .await
        .unwrap()
        .get(0);
    let code = path.split("code=").nth(1).unwrap();
    assert!(!stored.contains(code), "the code is stored only as a hash");

    let before = login(&server, "tiny", "old-pw").await;
    assert_eq!(before["result"]["active"], false, "{before}");
    let (status, page) = http_get(&server.addr, &path).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("confirmed"), "{page}");
    let after = login(&server, "tiny", "old-pw").await;
    assert_eq!(after["result"]["active"], true, "{after}");
    assert_eq!(after["result"]["validated"], true, "{after}");
    assert!(after["result"].get("confirmation").is_none(), "{after}");

    let (status, page) = http_get(&server.addr, &path).await;
    assert_eq!(status, 404, "a used link: {page}");
    let (status, _) = http_get(&server.addr, "/_confirmation?code=made-up").await;
    assert_eq!(status, 404);
    let (status, _) = http_get(&server.addr, "/_confirmation").await;
    assert_eq!(status, 404);
}

/// Custom templates with tpl_keys (escaped and raw), the alias of the template option, and a
/// missing or code-running template refused with 702 and nothing written.
#[tokio::test]
async fn templates_fill_tpl_keys_and_a_bad_template_changes_nothing() {
    let db = TestDb::new().await;
    let sink = SmtpSink::start(Mode::Accept);
    let templates = scratch_dir("templates");
    std::fs::create_dir_all(templates.join("registration")).unwrap();
    std::fs::write(
        templates.join("registration/welcome.tpl"),
        "Hello {{ name }} of {* team *}!\nConfirm: {* confirm_link *}\nAgain: {{ confirm_link }}\n",
    )
    .unwrap();
    std::fs::write(
        templates.join("registration/evil.tpl"),
        "{% os.execute('true') %}",
    )
    .unwrap();
    let mut env = smtp_env(&sink);
    env.push((
        "CORONIUM_MAIL_TEMPLATES_DIR".into(),
        templates.display().to_string(),
    ));
    let server = TestServer::start(&db, with_env(env));
    let mut options = confirmation("Welcome");
    options["tpl_name"] = json!("welcome.tpl");
    options["tpl_keys"] = json!({"name": "A & B", "team": "<Red>", "confirm_link": "ignored"});
    let created = create_pending(&server, "templated", options).await;
    assert_eq!(created["result"]["confirmation"], "pending", "{created}");
    let raw = sink.wait_for(1).await[0].clone();
    let mail = parse(&raw);
    assert!(
        mail.text.starts_with("Hello A &amp; B of <Red>!\n"),
        "{}",
        mail.text
    );
    let path = link_path(&mail.text, "_confirmation");
    assert!(
        mail.text
            .contains("Again: https:&#47;&#47;play.example.com&#47;_confirmation?code="),
        "{{{{ }}}} escapes the link, as Coronium did: {}",
        mail.text
    );
    assert!(
        !raw.data.contains("text/html"),
        "no welcome.html.tpl beside it: {}",
        raw.data
    );
    assert!(path.len() > 20);

    for (name, template) in [("missing", "nope.tpl"), ("evil", "evil.tpl")] {
        let mut options = confirmation("Welcome");
        options["email_tpl"] = json!(template);
        assert_eq!(
            create_pending(&server, name, options).await,
            json!({"result": {"error": "Email configuration is not set or invalid.", "status": 702}})
        );
        assert_eq!(
            server
                .call(
                    "api.users",
                    "login",
                    json!({"username": name, "password": md5_hex("old-pw")})
                )
                .await["result"]["status"],
            603,
            "{name}: no user was created"
        );
    }
    let mut options = confirmation("Welcome");
    options["email_tpl"] = json!("../../etc/passwd");
    assert_eq!(
        create_pending(&server, "escape", options).await["result"]["status"],
        801
    );
    let queued: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM mail_outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(queued, 1, "only the good mail was queued");
}

const RESET_PROJECT: &str = r#"
local api = core.api()
function api.forgot(input)
  return core.users.sendPasswordResetLink(input.email, "default",
    { from_email = "support@example.com", subject = "Reset your password" })
end
function api.lua_login(input)
  local user, err, status = core.users.login({ username = input.username, password = input.password })
  if not user then return nil, err, status end
  return user.username
end
function api.flush() return core.users.flushExpiredPasswordResets() end
function api.relink(input)
  return core.users.sendConfirmationLink(input.user_id,
    { from_email = "games@example.com", subject = "Please confirm again" })
end
return api
"#;

/// A server for the `Account` project ([`RESET_PROJECT`]) that mails through `sink`, with
/// `extra` settings.
fn account_server(db: &TestDb, sink: &SmtpSink, extra: &[(&str, &str)]) -> TestServer {
    let root = scratch_dir("projects");
    write_project(&root, "Account", &[("main.lua", RESET_PROJECT)]);
    let env = smtp_env(sink);
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.extend_from_slice(extra);
    serve_projects(db, &root, "2", &env)
}

/// POSTs a form to the reset page; the status and the page.
async fn post_form(addr: &str, fields: &[(&str, &str)]) -> (u16, String) {
    use http_body_util::BodyExt as _;
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let response = sender
        .send_request(
            hyper::Request::post("/_resetpassword")
                .header("Host", addr)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// sendPasswordResetLink → SMTP → the form → a new password that both wire and Lua logins
/// take, the old one no longer; the code works once, expires after 24 hours, and the flush
/// removes expired ones.
#[tokio::test]
async fn a_reset_mail_sets_a_new_password() {
    let db = TestDb::new().await;
    let sink = SmtpSink::start(Mode::Accept);
    let server = account_server(&db, &sink, &[]);
    let created = server
        .call(
            "api.users",
            "create",
            json!({"username": "forgetful", "password": md5_hex("old-pw"), "email": "Forgetful@Example.com"}),
        )
        .await;
    assert!(created["result"]["user_id"].is_string(), "{created}");

    // Unknown addresses are 704 for server code (which decides what a client learns).
    assert_eq!(
        server
            .call("Account", "forgot", json!({"email": "nobody@example.com"}))
            .await,
        json!({"result": {"error": "Email address not found or invalid.", "status": 704}})
    );
    assert_eq!(
        server
            .call(
                "Account",
                "forgot",
                json!({"email": "forgetful@example.com"})
            )
            .await,
        json!({"result": true})
    );
    let mail = parse(&sink.wait_for(1).await[0]);
    assert_eq!(mail.subject, "Reset your password");
    assert_eq!(mail.to, "Forgetful@Example.com");
    let path = link_path(&mail.text, "_resetpassword");
    let code = path.split("code=").nth(1).unwrap().to_owned();

    let (status, form) = http_get(&server.addr, &path).await;
    assert_eq!(status, 200, "{form}");
    assert!(form.contains("<form method=\"post\""), "{form}");
    assert!(form.contains(&code), "the code rides in the form");
    assert!(!form.contains("<script"), "no JavaScript needed");

    let (status, page) = post_form(
        &server.addr,
        &[
            ("code", &code),
            ("password", "new-pw"),
            ("password_repeat", "typo"),
        ],
    )
    .await;
    assert_eq!(status, 400);
    assert!(page.contains("not the same"), "{page}");
    let (status, page) = post_form(
        &server.addr,
        &[
            ("code", &code),
            ("password", "new-pw"),
            ("password_repeat", "new-pw"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("changed"), "{page}");

    assert_eq!(
        login(&server, "forgetful", "new-pw").await["result"]["username"],
        "forgetful"
    );
    assert_eq!(
        login(&server, "forgetful", "old-pw").await["result"]["status"],
        603
    );
    assert_eq!(
        server
            .call(
                "Account",
                "lua_login",
                json!({"username": "forgetful", "password": "new-pw"})
            )
            .await,
        json!({"result": "forgetful"})
    );

    // Used: the form and the post both say the link is gone.
    let (status, page) = http_get(&server.addr, &path).await;
    assert_eq!(status, 404);
    assert!(page.contains("no longer works"), "{page}");
    let (status, _) = post_form(
        &server.addr,
        &[
            ("code", &code),
            ("password", "again"),
            ("password_repeat", "again"),
        ],
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        login(&server, "forgetful", "new-pw").await["result"]["username"],
        "forgetful"
    );

    // A password changed by update ends open resets.
    server
        .call(
            "Account",
            "forgot",
            json!({"email": "forgetful@example.com"}),
        )
        .await;
    let mail = parse(&sink.wait_for(2).await[1]);
    let open_link = link_path(&mail.text, "_resetpassword");
    assert_eq!(http_get(&server.addr, &open_link).await.0, 200);
    let user_id = created["result"]["user_id"].clone();
    let updated = server
        .call(
            "api.users",
            "update",
            json!({"user_id": user_id, "update": {"password": md5_hex("newer-pw")}}),
        )
        .await;
    assert!(updated["result"]["user_id"].is_string(), "{updated}");
    assert_eq!(http_get(&server.addr, &open_link).await.0, 404);

    // Expired after 24 hours; the flush deletes it.
    server
        .call(
            "Account",
            "forgot",
            json!({"email": "forgetful@example.com"}),
        )
        .await;
    let mail = parse(&sink.wait_for(3).await[2]);
    let path = link_path(&mail.text, "_resetpassword");
    db.client()
        .await
        .execute(
            "UPDATE password_resets SET created = now() - interval '25 hours'",
            &[],
        )
        .await
        .unwrap();
    let (status, _) = http_get(&server.addr, &path).await;
    assert_eq!(status, 404, "expired");
    assert_eq!(
        server.call("Account", "flush", json!({})).await,
        json!({"result": 1})
    );
    assert_eq!(
        server.call("Account", "flush", json!({})).await,
        json!({"result": 0})
    );
}

/// resendConfirmation reuses the stored options and kills the old link; once a minute.
/// sendConfirmationLink makes an active user pending again.
#[tokio::test]
async fn resend_and_send_confirmation_link() {
    let db = TestDb::new().await;
    let sink = SmtpSink::start(Mode::Accept);
    let server = account_server(&db, &sink, &[]);
    let created = create_pending(&server, "again", confirmation("First subject")).await;
    let user_id = created["result"]["user_id"].as_str().unwrap().to_owned();
    let first = link_path(&parse(&sink.wait_for(1).await[0]).text, "_confirmation");

    assert_eq!(
        server
            .call(
                "api.users",
                "resendConfirmation",
                json!({"user_id": user_id})
            )
            .await,
        json!({"result": user_id})
    );
    let second = parse(&sink.wait_for(2).await[1]);
    assert_eq!(second.subject, "First subject", "the stored options");
    let second_link = link_path(&second.text, "_confirmation");
    assert_ne!(first, second_link);
    assert_eq!(
        server
            .call(
                "api.users",
                "resendConfirmation",
                json!({"user_id": user_id})
            )
            .await,
        json!({"result": {"error": "Too many requests.", "status": 810}})
    );
    assert_eq!(
        http_get(&server.addr, &first).await.0,
        404,
        "the old link died"
    );
    assert_eq!(http_get(&server.addr, &second_link).await.0, 200);
    assert_eq!(
        server
            .call(
                "api.users",
                "resendConfirmation",
                json!({"user_id": user_id})
            )
            .await,
        json!({"result": {"error": "Pending user not found.", "status": 614}}),
        "confirmed: nothing to resend"
    );

    // sendConfirmationLink: the active user becomes pending until the new link is opened.
    assert_eq!(
        server
            .call("Account", "relink", json!({"user_id": user_id}))
            .await,
        json!({"result": "OK"})
    );
    let third = parse(&sink.wait_for(3).await[2]);
    assert_eq!(third.subject, "Please confirm again");
    let user = login(&server, "again", "old-pw").await;
    assert_eq!(user["result"]["active"], false, "{user}");
    assert_eq!(user["result"]["confirmation"], "pending", "{user}");
    let (status, _) = http_get(&server.addr, &link_path(&third.text, "_confirmation")).await;
    assert_eq!(status, 200);
    assert_eq!(
        login(&server, "again", "old-pw").await["result"]["active"],
        true
    );

    // A user without an address, and an unknown one.
    let plain = server
        .call(
            "api.users",
            "create",
            json!({"username": "noaddr", "password": md5_hex("pw")}),
        )
        .await;
    assert_eq!(
        server
            .call(
                "Account",
                "relink",
                json!({"user_id": plain["result"]["user_id"]})
            )
            .await,
        json!({"result": {"error": "Email address not found or invalid.", "status": 704}})
    );
    assert_eq!(
        server
            .call(
                "Account",
                "relink",
                json!({"user_id": "00000000-0000-4000-8000-000000000000"})
            )
            .await,
        json!({"result": {"error": "User not found.", "status": 604}})
    );
}

/// A mail the SMTP server keeps deferring is retried; one it refuses for good fails, and the
/// confirmation it carried becomes "failed".
#[tokio::test]
async fn deferred_mail_is_retried_and_refused_mail_fails_the_confirmation() {
    let db = TestDb::new().await;
    let sink = SmtpSink::start(Mode::Transient);
    // A process: its /metrics are its own.
    let server = TestServer::start_process(&db, with_env(smtp_env(&sink)));
    create_pending(&server, "deferred", confirmation("Hi")).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while sink.attempts() < 2 {
        assert!(
            Instant::now() < deadline,
            "retried: {} attempts",
            sink.attempts()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sink.set_mode(Mode::Accept);
    assert_eq!(parse(&sink.wait_for(1).await[0]).to, "deferred@example.com");
    let user = login(&server, "deferred", "old-pw").await;
    assert_eq!(user["result"]["confirmation"], "pending", "{user}");

    sink.set_mode(Mode::Permanent);
    create_pending(&server, "bounced", confirmation("Hi")).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let user = login(&server, "bounced", "old-pw").await;
        if user["result"]["confirmation"] == "failed" {
            break;
        }
        assert!(Instant::now() < deadline, "{user}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (state, error): (String, String) = {
        let row = db
            .client()
            .await
            .query_one(
                "SELECT state, last_error FROM mail_outbox ORDER BY id DESC LIMIT 1",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(state, "failed");
    assert!(error.contains("550"), "{error}");
    let (status, metrics) = http_get(&server.addr, "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "coronium_mail_queued_total",
        "coronium_mail_sent_total",
        "coronium_mail_retries_total",
        "coronium_mail_failed_total",
        "coronium_mail_queued ",
        "coronium_mail_oldest_queued_seconds",
    ] {
        assert!(metrics.contains(name), "{name} in {metrics}");
    }
}

/// A mail queued while its server could not send it is sent by the next server on the same
/// database, after the first was killed (SIGKILL); two servers sharing an outbox send each mail
/// once.
#[tokio::test]
async fn the_outbox_survives_a_kill_and_instances_share_it() {
    let db = TestDb::new().await;
    let down = SmtpSink::start(Mode::Transient);
    // Its retry comes 5 s after the failure, so the kill below lands before it, never while the
    // retry holds the mail's lease (a minute) on a busy machine.
    let mut first_env = smtp_env(&down);
    first_env.retain(|(k, _)| k != "CORONIUM_MAIL_RETRY_SECS");
    first_env.push(("CORONIUM_MAIL_RETRY_SECS".into(), "5".into()));
    let first = TestServer::start_process(&db, with_env(first_env));
    create_pending(&first, "patient", confirmation("Still here")).await;
    // Killed once its first attempt is recorded as failed (not mid-attempt, where the mail's
    // lease would hold it for a minute).
    let client = db.client().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let retrying: i64 = client
            .query_one(
                "SELECT count(*) FROM mail_outbox WHERE state = 'queued' AND attempts >= 1
                 AND last_error IS NOT NULL AND next_attempt < now() + interval '30 seconds'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if retrying == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no failed attempt recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(first); // SIGKILL

    let up = SmtpSink::start(Mode::Accept);
    let a = TestServer::start(&db, with_env(smtp_env(&up)));
    let other = SmtpSink::start(Mode::Accept);
    let b = TestServer::start(&db, with_env(smtp_env(&other)));
    // Whichever instance claims it first sends it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let still_here = loop {
        if let Some(mail) = up.received().into_iter().chain(other.received()).next() {
            break mail;
        }
        assert!(
            Instant::now() < deadline,
            "the queued mail was not sent after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(parse(&still_here).subject, "Still here");

    for i in 0..20 {
        let server = if i % 2 == 0 { &a } else { &b };
        create_pending(server, &format!("many{i}"), confirmation("Many")).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let total = up.received().len() + other.received().len();
        if total >= 21 {
            break;
        }
        assert!(Instant::now() < deadline, "{total} of 21 sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut recipients: Vec<String> = up
        .received()
        .iter()
        .chain(other.received().iter())
        .map(|m| m.to.join(","))
        .collect();
    assert_eq!(recipients.len(), 21, "each mail once");
    recipients.sort();
    recipients.dedup();
    assert_eq!(recipients.len(), 21, "each mail once");
}

/// What the Mailgun stand-in kept of a request: its path, authorization and form.
type MailgunPost = (String, String, Vec<(String, String)>);

/// A stand-in for Mailgun's API on loopback: answers `status` and keeps each request.
struct MailgunStub {
    addr: String,
    requests: Arc<Mutex<Vec<MailgunPost>>>,
}

impl MailgunStub {
    fn start(status: u16) -> MailgunStub {
        use http_body_util::BodyExt as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests: Arc<Mutex<Vec<_>>> = Arc::default();
        let kept = requests.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let kept = kept.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(
                            move |request: hyper::Request<hyper::body::Incoming>| {
                                let kept = kept.clone();
                                async move {
                                    let path = request.uri().path().to_owned();
                                    let auth = request
                                        .headers()
                                        .get("authorization")
                                        .and_then(|v| v.to_str().ok())
                                        .unwrap_or_default()
                                        .to_owned();
                                    let body =
                                        request.into_body().collect().await.unwrap().to_bytes();
                                    let form = form_urlencoded::parse(&body)
                                        .map(|(k, v)| (k.into_owned(), v.into_owned()))
                                        .collect();
                                    kept.lock().unwrap().push((path, auth, form));
                                    let mut response =
                                        hyper::Response::new(http_body_util::Full::new(
                                            bytes::Bytes::from_static(br#"{"message": "stub"}"#),
                                        ));
                                    *response.status_mut() =
                                        hyper::StatusCode::from_u16(status).unwrap();
                                    Ok::<_, std::convert::Infallible>(response)
                                }
                            },
                        );
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        MailgunStub { addr, requests }
    }

    async fn wait_for(&self, count: usize) -> Vec<MailgunPost> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = self.requests.lock().unwrap().clone();
            if got.len() >= count {
                return got;
            }
            assert!(Instant::now() < deadline, "{} of {count} posts", got.len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn mailgun_env(stub: &MailgunStub) -> Vec<(String, String)> {
    vec![
        ("CORONIUM_MAILGUN_DOMAIN".into(), "mg.example.com".into()),
        ("CORONIUM_MAILGUN_API_KEY".into(), "key-0123456789".into()),
        (
            "CORONIUM_MAILGUN_BASE_URL".into(),
            format!("http://{}", stub.addr),
        ),
        ("CORONIUM_MAIL_POLL_SECS".into(), "1".into()),
        (
            "CORONIUM_MAIL_CLIENT_SENDERS".into(),
            "games@example.com".into(),
        ),
    ]
}

/// The Mailgun transport posts Mailgun's form with basic auth `api:<key>`; a refusal fails the
/// mail (and its confirmation).
#[tokio::test]
async fn mailgun_transport_posts_the_messages_form() {
    use base64::Engine as _;
    let db = TestDb::new().await;
    let stub = MailgunStub::start(200);
    let server = TestServer::start(&db, with_env(mailgun_env(&stub)));
    create_pending(&server, "gunned", confirmation("Via Mailgun")).await;
    let posts = stub.wait_for(1).await;
    let (path, auth, form) = &posts[0];
    assert_eq!(path, "/v3/mg.example.com/messages");
    let expected = base64::engine::general_purpose::STANDARD.encode("api:key-0123456789");
    assert_eq!(auth, &format!("Basic {expected}"));
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    };
    assert_eq!(field("from"), "Games <games@example.com>");
    assert_eq!(field("to"), "gunned@example.com");
    assert_eq!(field("subject"), "Via Mailgun");
    assert!(field("text").contains("/_confirmation?code="), "{form:?}");
    assert!(field("html").contains("/_confirmation?code="), "{form:?}");
    drop(server);

    let refusing = MailgunStub::start(401);
    let server = TestServer::start(&db, with_env(mailgun_env(&refusing)));
    create_pending(&server, "refused", confirmation("Via Mailgun")).await;
    refusing.wait_for(1).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let user = login(&server, "refused", "old-pw").await;
        if user["result"]["confirmation"] == "failed" {
            break;
        }
        assert!(Instant::now() < deadline, "{user}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// With no transport configured, each mail is an `.eml` file under `<data_dir>/mail/` that
/// only its owner can read.
#[tokio::test]
async fn without_a_transport_mail_goes_to_eml_files() {
    use std::os::unix::fs::PermissionsExt as _;
    let db = TestDb::new().await;
    let data_dir = scratch_dir("data");
    let server = TestServer::start(&db, |cmd| {
        cmd.env("CORONIUM_DATA_DIR", &data_dir);
    });
    create_pending(&server, "local", confirmation("Local")).await;
    let dir = data_dir.join("mail");
    let deadline = Instant::now() + Duration::from_secs(15);
    let file = loop {
        let found = std::fs::read_dir(&dir)
            .ok()
            .and_then(|mut entries| entries.next())
            .and_then(Result::ok);
        if let Some(entry) = found {
            break entry.path();
        }
        assert!(Instant::now() < deadline, "no .eml in {}", dir.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(file.extension().unwrap(), "eml");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let data = std::fs::read_to_string(&file).unwrap();
    assert!(
        data.contains("http://localhost:10001/_confirmation?code="),
        "the link reads whole in the file: {data}"
    );
    let mail = parse(&Received {
        from: String::new(),
        to: Vec::new(),
        data,
    });
    assert_eq!(mail.to, "local@example.com");
    let path = link_path(&mail.text, "_confirmation");
    assert_eq!(http_get(&server.addr, &path).await.0, 200);
}

/// The link pages give each client address a budget per minute (the code is the only
/// credential): guessing codes runs out of it.
#[tokio::test]
async fn link_pages_are_rate_limited_per_address() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |cmd| {
        cmd.env("CORONIUM_PAGE_REQUESTS_PER_MINUTE", "5");
    });
    for i in 0..5 {
        let path = format!("/_confirmation?code=guess{i}");
        assert_eq!(http_get(&server.addr, &path).await.0, 404);
    }
    assert_eq!(
        http_get(&server.addr, "/_confirmation?code=guess5").await.0,
        429
    );
    assert_eq!(
        http_get(&server.addr, "/_resetpassword?code=guess6")
            .await
            .0,
        429
    );
    let (status, _) = post_form(
        &server.addr,
        &[("code", "x"), ("password", "a"), ("password_repeat", "a")],
    )
    .await;
    assert_eq!(status, 429);
}

const NEWSLETTER: &str = r#"
local api = core.api()
function api.send()
  local msg = core.email.new("ignored-key", "ignored-domain")
  msg:to("a@example.com, Jim <jim@example.com>"):cc("c@example.com"):bcc("hidden@example.com")
  msg:from("News <news@example.com>"):replyTo("Help <help@example.com>")
  msg:subject("Weekly"):text("Plain words"):html("<p>Rich words</p>"):tag("weekly")
  local resp, err, status = msg:send()
  if not resp then return nil, err, status end
  return resp.message
end
function api.bad()
  local _, err, status = core.email.new():to("a@example.com"):send()
  local _, err2, status2 = core.email.new():from("x@example.com"):to("not an address"):send()
  return { err, status, err2, status2 }
end
function api.tamper()
  local m = core.email.new()
  local reach = pcall(function() getmetatable(m).send = function() end end)
  local replace = pcall(function() core.email.new = function() end end)
  return { reach = reach, replace = replace, meta = getmetatable(m) }
end
return api
"#;

/// `core.email` from an API project: the builder's fields arrive over SMTP (bcc only in the
/// envelope); bad messages get their status; a project cannot reach the shared methods.
#[tokio::test]
async fn core_email_sends_through_the_outbox() {
    let db = TestDb::new().await;
    let sink = SmtpSink::start(Mode::Accept);
    let root = scratch_dir("projects");
    write_project(&root, "News", &[("main.lua", NEWSLETTER)]);
    let env = smtp_env(&sink);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let server = serve_projects(&db, &root, "2", &env);
    assert_eq!(
        server.call("News", "send", json!({})).await,
        json!({"result": "Queued. Thank you."})
    );
    let raw = sink.wait_for(1).await[0].clone();
    let mut envelope = raw.to.clone();
    envelope.sort();
    assert_eq!(
        envelope,
        [
            "<a@example.com>",
            "<c@example.com>",
            "<hidden@example.com>",
            "<jim@example.com>"
        ]
    );
    assert_eq!(raw.from, "<news@example.com>");
    assert!(
        !raw.data.contains("hidden@example.com"),
        "bcc stays out of the headers"
    );
    let message = MessageParser::default().parse(raw.data.as_bytes()).unwrap();
    assert_eq!(message.subject(), Some("Weekly"));
    assert_eq!(
        message
            .reply_to()
            .and_then(|a| a.first())
            .and_then(|a| a.address()),
        Some("help@example.com")
    );
    assert!(message.body_text(0).unwrap().contains("Plain words"));
    assert!(message.body_html(0).unwrap().contains("<p>Rich words</p>"));

    assert_eq!(
        server.call("News", "bad", json!({})).await,
        json!({"result": ["Missing required parameter: from", 804,
                          "Email address not found or invalid.", 704]})
    );
    assert_eq!(
        server.call("News", "tamper", json!({})).await,
        json!({"result": {"reach": false, "replace": false, "meta": false}})
    );
}

/// With `mail.client_senders` set, a client's confirmation can name only those senders
/// (anyone holding the server key could otherwise mail any address in anyone's name); server
/// code is not limited.
#[tokio::test]
async fn clients_send_only_as_the_listed_senders() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |cmd| {
        cmd.env(
            "CORONIUM_MAIL_CLIENT_SENDERS",
            "games@example.com, help@example.com",
        );
    });
    let refused = create_pending(
        &server,
        "phished",
        json!({"from_email": "Your Bank <security@bank.example>", "subject": "Verify"}),
    )
    .await;
    assert_eq!(refused["result"]["status"], 801, "{refused}");
    assert_eq!(
        login(&server, "phished", "old-pw").await["result"]["status"],
        603,
        "nothing was created"
    );
    let allowed = create_pending(
        &server,
        "welcome",
        json!({"from_email": "The Team <Games@Example.com>", "subject": "Welcome"}),
    )
    .await;
    assert_eq!(allowed["result"]["confirmation"], "pending", "{allowed}");
}

/// By default (no senders listed) a client's confirmation goes out under the server's own
/// sender, whatever `from_email` it named; `*` restores Coronium's any-sender behaviour.
#[tokio::test]
async fn by_default_a_client_cannot_choose_the_sender() {
    let db = TestDb::new().await;
    let sink = SmtpSink::start(Mode::Accept);
    let mut env = smtp_env(&sink);
    env.push((
        "CORONIUM_MAIL_FROM".into(),
        "Games <no-reply@games.example>".into(),
    ));
    let server = TestServer::start(&db, with_env(env));
    let created = create_pending(
        &server,
        "phished",
        json!({"from_email": "Your Bank <security@bank.example>", "subject": "Verify"}),
    )
    .await;
    assert_eq!(created["result"]["confirmation"], "pending", "{created}");
    let mail = parse(&sink.wait_for(1).await[0]);
    assert_eq!(mail.from, "no-reply@games.example");
    assert!(!sink.received()[0].data.contains("bank.example"));

    let db = TestDb::new().await;
    let sink = SmtpSink::start(Mode::Accept);
    let mut env = smtp_env(&sink);
    env.push(("CORONIUM_MAIL_CLIENT_SENDERS".into(), "*".into()));
    let server = TestServer::start(&db, with_env(env));
    create_pending(&server, "anyone", confirmation("Hi")).await;
    assert_eq!(parse(&sink.wait_for(1).await[0]).from, "games@example.com");
}

/// The server-side mail functions from Lua: each success shape, with and without a listener,
/// and each status; refused calls queue nothing.
#[tokio::test]
async fn mail_functions_answer_every_status() {
    let db = TestDb::new().await;
    let run = run_lua(
        &db,
        "mail.lua",
        r#"
local opts = { from_email = "games@example.com", subject = "Hi" }
local function with(extra)
  local t = { from_email = "games@example.com", subject = "Hi" }
  for k, v in pairs(extra) do t[k] = v end
  return t
end
local id = assert(core.users.create({ username = "m", password = "pw", email = "M@example.com" }))
local noaddr = assert(core.users.create({ username = "n", password = "pw" }))
local nobody = "00000000-0000-4000-8000-000000000000"
print("link", core.users.sendConfirmationLink(id, opts))
core.users.sendConfirmationLink(id, opts, function(evt) print("listener", evt.result) end)
print(select(2, core.users.sendConfirmationLink(nil, opts)))
print(select(2, core.users.sendConfirmationLink(id)))
print(select(2, core.users.sendConfirmationLink(id, { subject = "x" })))
print(select(2, core.users.sendConfirmationLink(id, with({ colour = 1 }))))
print(select(2, core.users.sendConfirmationLink(nobody, opts)))
print(select(2, core.users.sendConfirmationLink(noaddr, opts)))
print(select(2, core.users.sendConfirmationLink(id, with({ tpl_name = "missing.tpl" }))))
print("user", core.users.get(id).active, core.users.get(id).confirmation)

print("reset", core.users.sendPasswordResetLink("m@example.com", "default", opts))
core.users.sendPasswordResetLink("m@EXAMPLE.com", "default", opts, function(evt) print("listener", evt.result) end)
print(select(2, core.users.sendPasswordResetLink(nil, "default", opts)))
print(select(2, core.users.sendPasswordResetLink("m@example.com", nil, opts)))
print(select(2, core.users.sendPasswordResetLink("m@example.com", "default")))
print(select(2, core.users.sendPasswordResetLink("m@example.com", "default", with({ subject = "a\nb" }))))
print(select(2, core.users.sendPasswordResetLink("x@example.com", "default", opts)))
print(select(2, core.users.sendPasswordResetLink("m@example.com", "other", opts)))
print(select(2, core.users.sendPasswordResetLink("not an address", "default", opts)))
print(select(2, core.users.sendPasswordResetLink("m@example.com", "default", with({ tpl_name = "missing.tpl" }))))

print("flush", core.users.flushExpiredPasswordResets())
core.users.flushExpiredPasswordResets(function(evt) print("listener", evt.result) end)

print(select(2, core.users.resendConfirmation({ user_id = id, confirmation = with({ email_tpl = "missing.tpl" }) })))
print("resend", core.users.resendConfirmation({ user_id = id }) == id)
print(select(2, core.users.resendConfirmation({ user_id = id })))
print(select(2, core.users.resendConfirmation({ user_id = nobody })))
"#,
    );
    assert_ok(&run);
    assert_eq!(
        run.lines(),
        [
            "link\tOK",
            "listener\tOK",
            "Missing required parameter: user_id\t804",
            "Missing required parameter: options\t804",
            "Missing required parameter: from_email\t804",
            "Unknown options option 'colour'.\t801",
            "User not found.\t604",
            "Email address not found or invalid.\t704",
            "Email configuration is not set or invalid.\t702",
            "user\tfalse\tpending",
            "reset\ttrue",
            "listener\ttrue",
            "Missing required parameter: to_email\t804",
            "Missing required parameter: scope\t804",
            "Missing required parameter: options\t804",
            "Option 'subject' of 'options' must be one line of at most 255 bytes.\t801",
            "Email address not found or invalid.\t704",
            "Email address not found or invalid.\t704",
            "Email address not found or invalid.\t704",
            "Email configuration is not set or invalid.\t702",
            "flush\t0",
            "listener\t0",
            "Email configuration is not set or invalid.\t702",
            "resend\ttrue",
            "Too many requests.\t810",
            "User not found.\t604",
        ]
    );
    let client = db.client().await;
    let rows = client
        .query(
            "SELECT purpose, message->'to'->>0 FROM mail_outbox ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let queued: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let expected = [
        ("confirmation", "M@example.com"),
        ("confirmation", "M@example.com"),
        ("password_reset", "M@example.com"),
        ("password_reset", "M@example.com"),
        ("confirmation", "M@example.com"),
    ];
    assert_eq!(
        queued,
        expected.map(|(p, t)| (p.to_owned(), t.to_owned())),
        "only the successful calls queued mail"
    );
    let resets: i64 = client
        .query_one("SELECT count(*) FROM password_resets", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(resets, 1, "a new reset code replaces the user's older one");
}

/// `examples/projects/Accounts` as the README runs it: sign-up with confirmation, the link,
/// a forgotten password (the same answer for an unknown address), and device login.
#[tokio::test]
async fn the_accounts_example_works() {
    let db = TestDb::new().await;
    let sink = SmtpSink::start(Mode::Accept);
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/projects");
    let env = smtp_env(&sink);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let server = serve_projects(&db, &root, "2", &env);
    let account = json!({"username": "ann", "password": "secret", "email": "ann@example.com"});
    let signed_up = server.call("Accounts", "signup", account.clone()).await;
    assert_eq!(
        signed_up["result"]["confirmation"], "pending",
        "{signed_up}"
    );
    let status = server.call("Accounts", "status", account.clone()).await;
    assert_eq!(status["result"]["validated"], false, "{status}");
    let mail = parse(&sink.wait_for(1).await[0]);
    assert_eq!(mail.subject, "Confirm your account");
    assert_eq!(
        http_get(&server.addr, &link_path(&mail.text, "_confirmation"))
            .await
            .0,
        200
    );
    let status = server.call("Accounts", "status", account).await;
    assert_eq!(
        status,
        json!({"result": {"active": true, "validated": true}}),
        "{status}"
    );

    for email in ["ann@example.com", "nobody@example.com"] {
        assert_eq!(
            server
                .call("Accounts", "forgot", json!({"email": email}))
                .await,
            json!({"result": {"requested": true}})
        );
    }
    let mails = sink.wait_for(2).await;
    assert_eq!(parse(&mails[1]).subject, "Reset your password");

    let first = server
        .call("Accounts", "device", json!({"device_id": "device-0001"}))
        .await;
    assert_eq!(first["result"]["created"], true, "{first}");
    let again = server
        .call("Accounts", "device", json!({"device_id": "device-0001"}))
        .await;
    assert_eq!(again["result"]["created"], false, "{again}");
    assert_eq!(again["result"]["user_id"], first["result"]["user_id"]);
    assert!(
        again["result"]["username"]
            .as_str()
            .unwrap()
            .starts_with("user-")
    );
    assert_eq!(
        server.call("Accounts", "flush", json!({})).await,
        json!({"result": {"deleted": 0}})
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.received().len(), 2, "no mail for an unknown address");
}

/// POSTs JSON to the reset page; the status and the answer.
async fn post_json(addr: &str, body: Value) -> (u16, Value) {
    use http_body_util::BodyExt as _;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let response = sender
        .send_request(
            hyper::Request::post("/_resetpassword")
                .header("Host", addr)
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(
                    body.to_string(),
                )))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// An app may post the new password as JSON: `{"ok": true}`, or `{"error", "status"}` (801 for
/// a bad password, 604 for a code that is unknown or used); a password-less user gains one.
#[tokio::test]
async fn the_reset_page_answers_json_to_apps() {
    let db = TestDb::new().await;
    let run = run_lua(
        &db,
        "reset.lua",
        r#"
assert(core.users.register("device-user", nil, "default", { email = "dev@example.com" }))
print(core.users.sendPasswordResetLink("dev@example.com", "default",
  { from_email = "games@example.com", subject = "Reset" }))
"#,
    );
    assert_ok(&run);
    let text: String = db
        .client()
        .await
        .query_one("SELECT message->>'text' FROM mail_outbox", &[])
        .await
        .unwrap()
        .get(0);
    let path = link_path(&text, "_resetpassword");
    let code = path.split("code=").nth(1).unwrap();
    let server = TestServer::start(&db, |_| {});
    let (status, answer) = post_json(
        &server.addr,
        json!({"code": code, "password": "a", "password_repeat": "b"}),
    )
    .await;
    assert_eq!((status, &answer["status"]), (400, &json!(801)), "{answer}");
    let (status, answer) = post_json(&server.addr, json!({"code": code, "password": ""})).await;
    assert_eq!((status, &answer["status"]), (400, &json!(801)), "{answer}");
    let (status, answer) =
        post_json(&server.addr, json!({"code": "made-up", "password": "x"})).await;
    assert_eq!((status, &answer["status"]), (404, &json!(604)), "{answer}");
    assert_eq!(
        login(&server, "device-user", "chosen").await["result"]["status"],
        605,
        "no password yet: server-side login only"
    );
    let (status, answer) =
        post_json(&server.addr, json!({"code": code, "password": "chosen"})).await;
    assert_eq!((status, answer), (200, json!({"ok": true})));
    assert_eq!(
        login(&server, "device-user", "chosen").await["result"]["username"],
        "device-user"
    );
    let (status, _) = post_json(&server.addr, json!({"code": code, "password": "again"})).await;
    assert_eq!(status, 404, "used");
}

const SPAMMER: &str = r#"
local api = core.api()
function api.blast(input)
  local answers = {}
  for i = 1, input.n do
    local sent, err, status = core.email.new():from("x@example.com"):to("victim" .. i .. "@example.com"):send()
    answers[i] = sent and "queued" or (err .. " " .. status)
  end
  return answers
end
return api
"#;

/// One project cannot flood the mail account every project shares: `core.email` gets a budget
/// per project per minute; another project keeps its own.
#[tokio::test]
async fn a_project_gets_a_mail_budget() {
    let db = TestDb::new().await;
    let root = scratch_dir("projects");
    write_project(&root, "Spam", &[("main.lua", SPAMMER)]);
    write_project(&root, "Other", &[("main.lua", SPAMMER)]);
    let server = serve_projects(
        &db,
        &root,
        "2",
        &[("CORONIUM_MAIL_PROJECT_MESSAGES_PER_MINUTE", "3")],
    );
    let over = "Too many messages from this project; try again in a minute. 810";
    assert_eq!(
        server.call("Spam", "blast", json!({"n": 5})).await,
        json!({"result": ["queued", "queued", "queued", over, over]})
    );
    assert_eq!(
        server.call("Other", "blast", json!({"n": 1})).await,
        json!({"result": ["queued"]})
    );
    let queued: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM mail_outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(queued, 4);
}

/// SMTP with STARTTLS to a server whose certificate a private CA signed (`mail.smtp_ca_file`):
/// the mail arrives and the credentials cross only the encrypted channel. Without the CA the
/// certificate is refused and the credentials are never sent.
#[tokio::test]
async fn smtp_starttls_with_a_private_ca_and_credentials() {
    let db = TestDb::new().await;
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = scratch_dir("smtp-tls");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, certified.cert.pem()).unwrap();
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)
    .unwrap();
    let sink = SmtpSink::start_with(
        Mode::Accept,
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
    );
    let url = format!(
        "smtp://mailer:s3cret-pw@localhost:{}?tls=required",
        sink.port
    );
    let mut env = smtp_env(&sink);
    env.retain(|(k, _)| k != "CORONIUM_MAIL_SMTP_URL");
    let mut trusting = env.clone();
    trusting.push(("CORONIUM_MAIL_SMTP_URL".into(), url.clone()));
    trusting.push((
        "CORONIUM_MAIL_SMTP_CA_FILE".into(),
        ca.display().to_string(),
    ));
    let server = TestServer::start(&db, with_env(trusting));
    create_pending(&server, "secure", confirmation("Over TLS")).await;
    let mail = parse(&sink.wait_for(1).await[0]);
    assert_eq!(mail.subject, "Over TLS");
    assert_eq!(
        sink.logins(),
        [("mailer".to_owned(), "s3cret-pw".to_owned(), true)]
    );
    drop(server);

    let mut untrusting = env;
    untrusting.push(("CORONIUM_MAIL_SMTP_URL".into(), url));
    let server = TestServer::start(&db, with_env(untrusting));
    create_pending(&server, "unsure", confirmation("Over TLS")).await;
    let client = db.client().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let error = loop {
        let row = client
            .query_opt(
                "SELECT last_error FROM mail_outbox o JOIN users u USING (user_id)
                 WHERE u.username = 'unsure' AND o.last_error IS NOT NULL",
                &[],
            )
            .await
            .unwrap();
        if let Some(row) = row {
            break row.get::<_, String>(0);
        }
        assert!(Instant::now() < deadline, "no failed attempt recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!error.contains("s3cret-pw"), "{error}");
    assert_eq!(
        sink.logins().len(),
        1,
        "no credentials to an unverified server"
    );
    assert_eq!(sink.received().len(), 1);
}

/// An operator's page templates replace the built-in ones; the pages carry headers that keep
/// their codes out of caches, referrers and frames.
#[tokio::test]
async fn pages_use_the_operators_templates_and_safe_headers() {
    let db = TestDb::new().await;
    let templates = scratch_dir("templates");
    std::fs::create_dir_all(templates.join("pages")).unwrap();
    std::fs::write(
        templates.join("pages/confirmation.tpl"),
        "<main class=\"ours\">{{ title }}: {{ message }}</main>",
    )
    .unwrap();
    let server = TestServer::start(&db, |cmd| {
        cmd.env("CORONIUM_MAIL_TEMPLATES_DIR", &templates);
    });
    let (status, page) = http_get(&server.addr, "/_confirmation?code=%3Cscript%3E").await;
    assert_eq!(status, 404);
    assert_eq!(
        page,
        "<main class=\"ours\">Link not valid: This confirmation link is not valid or has \
         already been used.</main>"
    );
    let (status, page) = http_get(&server.addr, "/_resetpassword?code=x").await;
    assert_eq!(status, 404, "the built-in page where none is given");
    assert!(page.contains("Link no longer valid"), "{page}");

    let stream = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let response = sender
        .send_request(
            hyper::Request::get("/_resetpassword?code=x")
                .header("Host", &server.addr)
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(header("cache-control"), "no-store");
    assert_eq!(header("referrer-policy"), "no-referrer");
    assert_eq!(header("x-frame-options"), "DENY");
    assert!(header("content-security-policy").contains("default-src 'none'"));
    assert!(header("content-type").starts_with("text/html"));
}

/// A server stops promptly even while its sender waits on a mail server that never answers; the
/// mail stays queued for the next one.
#[tokio::test]
async fn stopping_does_not_wait_for_a_hung_mail_server() {
    let db = TestDb::new().await;
    let sink = SmtpSink::start(Mode::Hang);
    let server = TestServer::start(&db, with_env(smtp_env(&sink)));
    create_pending(&server, "waiting", confirmation("Hi")).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while *sink.shared.connections.lock().unwrap() == 0 {
        assert!(Instant::now() < deadline, "the sender never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopping = Instant::now();
    drop(server);
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(9), "stopping took {took:?}");
    let state: String = db
        .client()
        .await
        .query_one("SELECT state FROM mail_outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "queued");
}

/// A link works only for the address it was mailed to: sign up with your own address, change
/// the email to someone else's, and the link no longer validates anything; a reset link sent
/// before an email change stops working. And a user an operator disabled stays disabled
/// whatever link they open.
#[tokio::test]
async fn links_are_bound_to_their_address_and_disabling_holds() {
    let db = TestDb::new().await;
    let sink = SmtpSink::start(Mode::Accept);
    let server = account_server(&db, &sink, &[]);

    // The attacker's own address, then the victim's.
    let created = create_pending(&server, "mallory", confirmation("Confirm")).await;
    let mallory = created["result"]["user_id"].as_str().unwrap().to_owned();
    let path = link_path(&parse(&sink.wait_for(1).await[0]).text, "_confirmation");
    let changed = server
        .call(
            "api.users",
            "update",
            json!({"user_id": mallory, "update": {"email": "victim@example.com"}}),
        )
        .await;
    assert_eq!(
        changed["result"]["email"], "victim@example.com",
        "{changed}"
    );
    let (status, page) = http_get(&server.addr, &path).await;
    assert_eq!(status, 404, "the link was for another address: {page}");
    let after = login(&server, "mallory", "old-pw").await;
    assert_eq!(after["result"]["validated"], false, "{after}");
    assert_eq!(after["result"]["active"], false, "{after}");
    // Changing back to the address it was sent to makes it work again: it is the address
    // that is proven, not the order of events.
    server
        .call(
            "api.users",
            "update",
            json!({"user_id": mallory, "update": {"email": "mallory@example.com"}}),
        )
        .await;
    assert_eq!(http_get(&server.addr, &path).await.0, 200);

    // A reset link, then an email change: the link stops working.
    let forgot = server
        .call("Account", "forgot", json!({"email": "mallory@example.com"}))
        .await;
    assert_eq!(forgot, json!({"result": true}));
    let reset = link_path(&parse(&sink.wait_for(2).await[1]).text, "_resetpassword");
    server
        .call(
            "api.users",
            "update",
            json!({"user_id": mallory, "update": {"email": "elsewhere@example.com"}}),
        )
        .await;
    let (status, page) = http_get(&server.addr, &reset).await;
    assert_ne!(status, 200, "a reset link for the old address: {page}");
    let code = reset.split("code=").nth(1).unwrap().to_owned();
    let (status, _) = post_form(
        &server.addr,
        &[
            ("code", &code),
            ("password", "taken"),
            ("password_repeat", "taken"),
        ],
    )
    .await;
    assert_ne!(status, 200);
    assert!(login(&server, "mallory", "taken").await["result"]["user_id"].is_null());

    // Disabled while pending (an update with active = false, as the console's disable does),
    // then the link: confirmed, but still disabled.
    let created = create_pending(&server, "banned", confirmation("Confirm")).await;
    let banned = created["result"]["user_id"].as_str().unwrap().to_owned();
    let path = link_path(&parse(&sink.wait_for(3).await[2]).text, "_confirmation");
    server
        .call(
            "api.users",
            "update",
            json!({"user_id": banned, "update": {"active": false}}),
        )
        .await;
    assert_eq!(http_get(&server.addr, &path).await.0, 200);
    let after = login(&server, "banned", "old-pw").await;
    assert_eq!(after["result"]["active"], false, "{after}");
    assert!(
        after["result"].get("confirmation").is_none(),
        "confirmed: {after}"
    );
}

/// Sign-ups aimed at one victim's address, across 100 scopes, send at most the hourly cap of
/// mails to it; a variant through another route (reset requests for accounts with that address
/// in other scopes) shares the same cap.
#[tokio::test]
async fn no_flood_of_sign_ups_fills_one_inbox() {
    let db = TestDb::new().await;
    let sink = SmtpSink::start(Mode::Accept);
    let server = account_server(
        &db,
        &sink,
        &[("CORONIUM_USERS_SIGN_UPS_PER_ADDRESS_PER_MINUTE", "0")],
    );
    // One in each of 100 scopes, all at once: the cap holds for sign-ups that race each other.
    let sign_ups: Vec<_> = (0..100)
        .map(|i| {
            let (addr, key) = (server.addr.clone(), server.key.clone());
            tokio::spawn(async move {
                coronium::wire::client::call(
                    &addr,
                    &key,
                    "api.users",
                    "create",
                    &format!("scope{i}"),
                    &json!({"username": "victim", "password": md5_hex("pw"),
                            "email": "Victim@Example.com", "confirmation": confirmation("Hi")}),
                )
                .await
                .unwrap()
            })
        })
        .collect();
    let mut created = 0;
    for sign_up in sign_ups {
        let answer = sign_up.await.unwrap();
        if answer["result"]["user_id"].is_string() {
            created += 1;
        } else {
            assert_eq!(answer["result"]["status"], 810, "{answer}");
            assert_eq!(
                answer["result"]["error"],
                "Too many mails to this address lately; try again later."
            );
        }
    }
    assert_eq!(created, 5, "the hourly cap");
    // The same address in the default scope, made without a mail, then a reset for it.
    let plain = server
        .call(
            "api.users",
            "create",
            json!({"username": "victim", "password": md5_hex("pw"), "email": "victim@example.com"}),
        )
        .await;
    assert!(plain["result"]["user_id"].is_string(), "{plain}");
    let forgot = server
        .call("Account", "forgot", json!({"email": "victim@example.com"}))
        .await;
    assert_eq!(forgot["result"]["status"], 810, "{forgot}");
    let queued: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM mail_outbox WHERE message->'to'->>0 ILIKE 'victim@example.com'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(queued, 5);
    assert_eq!(sink.wait_for(5).await.len(), 5);
}

/// An honest reset is not queued behind a flood of confirmations: the kinds take turns, so it
/// reaches the relay after at most a batch or two of the 600 confirmations queued before it.
#[tokio::test]
async fn an_honest_reset_overtakes_a_confirmation_flood() {
    let db = TestDb::new().await;
    let sink = SmtpSink::start(Mode::Accept);
    let server = account_server(&db, &sink, &[]);
    let created = server
        .call(
            "api.users",
            "create",
            json!({"username": "honest", "password": md5_hex("pw"), "email": "honest@example.com"}),
        )
        .await;
    assert!(created["result"]["user_id"].is_string(), "{created}");
    // 600 confirmations to 600 addresses, queued before the reset.
    let flood: Vec<serde_json::Value> = (0..600)
        .map(|i| {
            serde_json::to_value(coronium::mail::Message {
                from: "games@example.com".into(),
                to: vec![format!("flood{i}@example.com")],
                subject: "Confirm".into(),
                text: Some("flood".into()),
                ..Default::default()
            })
            .unwrap()
        })
        .collect();
    db.client()
        .await
        .execute(
            "INSERT INTO mail_outbox (purpose, message, destination, created)
             SELECT 'confirmation', m, m->'to'->>0, now() - interval '1 second'
             FROM unnest($1::jsonb[]) m",
            &[&flood],
        )
        .await
        .unwrap();
    let started = Instant::now();
    let forgot = server
        .call("Account", "forgot", json!({"email": "honest@example.com"}))
        .await;
    assert_eq!(forgot, json!({"result": true}));
    let reset_at = loop {
        let got = sink.received();
        if let Some(at) = got.iter().position(|m| m.to == ["<honest@example.com>"]) {
            break at;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{} mails, no reset",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "the reset was mail {reset_at} to arrive, {:?} after it was asked for",
        started.elapsed()
    );
    assert!(reset_at <= 40, "{reset_at} confirmations went first");
}

/// A client that calls a project's mailing action spends its own share of the project's
/// `core.email` budget: it cannot use up the budget for everyone else.
#[tokio::test]
async fn core_email_budgets_are_charged_to_the_caller() {
    let db = TestDb::new().await;
    let root = scratch_dir("projects");
    write_project(&root, "Spam", &[("main.lua", SPAMMER)]);
    let server = serve_projects(
        &db,
        &root,
        "2",
        &[
            ("CORONIUM_MAIL_PROJECT_MESSAGES_PER_MINUTE", "20"),
            ("CORONIUM_MAIL_CLIENT_MESSAGES_PER_MINUTE", "3"),
            ("CORONIUM_TRUSTED_PROXIES", "127.0.0.1"),
        ],
    );
    let over = "Too many messages from this project; try again in a minute. 810";
    let from = |address: &str| {
        let mut headers = coronium::wire::client::signed_headers(
            &server.key,
            "Spam",
            "blast",
            "default",
            coronium::wire::client::unix_now(),
        );
        headers.push(("X-Forwarded-For", address.to_owned()));
        headers
    };
    let body = json!({"n": 5}).to_string();
    let (_, hostile) = server.post(&from("203.0.113.9"), body.as_bytes()).await;
    assert_eq!(
        hostile,
        json!({"result": ["queued", "queued", "queued", over, over]})
    );
    let (_, honest) = server.post(&from("198.51.100.3"), body.as_bytes()).await;
    assert_eq!(
        honest,
        json!({"result": ["queued", "queued", "queued", over, over]})
    );
}
