//! The operator's console over real HTTP: sign-in, sessions, CSRF, the pages' changes as the
//! wire and Lua see them, the audit trail, and the admin and users commands.

use std::collections::HashMap;
use std::io::Write as _;

use coronium::admin::pages::{self as console, Method};
use serde_json::json;

use crate::common::*;

pub(crate) const ADMIN: &str = "ops";
pub(crate) const PASSWORD: &str = "correct horse battery";

/// `coronium admin add NAME` with the password on stdin; the command's output.
pub(crate) fn add_admin(db: &TestDb, name: &str, password: &str) -> std::process::Output {
    let mut child = coronium(Some(db))
        .args(["admin", "add", name])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    child.wait_with_output().unwrap()
}

/// An HTTP answer as a browser would see it.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn set_cookies(&self) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The value of a hidden field in the page.
    fn field(&self, name: &str) -> String {
        let marker = format!(r#"name="{name}" value=""#);
        let at = self
            .body
            .find(&marker)
            .unwrap_or_else(|| panic!("no field {name} in {}", self.body))
            + marker.len();
        self.body[at..].split('"').next().unwrap().to_owned()
    }
}

/// A minimal browser: a cookie jar and plain requests.
pub(crate) struct Browser {
    addr: String,
    cookies: HashMap<String, String>,
    /// Sent as `X-Forwarded-For` (for a server that trusts the tests as its proxy).
    pub(crate) forwarded_for: Option<String>,
}

impl Browser {
    pub(crate) fn new(addr: &str) -> Self {
        Browser {
            addr: addr.to_owned(),
            cookies: HashMap::new(),
            forwarded_for: None,
        }
    }

    async fn request(&mut self, method: &str, path: &str, form: Option<&[(&str, &str)]>) -> Answer {
        use http_body_util::BodyExt as _;
        let stream = tokio::net::TcpStream::connect(&self.addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let cookie = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let body = form
            .map(|fields| {
                form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(fields)
                    .finish()
            })
            .unwrap_or_default();
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("Host", &self.addr)
            .header("content-type", "application/x-www-form-urlencoded");
        if !cookie.is_empty() {
            builder = builder.header("cookie", cookie);
        }
        if let Some(from) = &self.forwarded_for {
            builder = builder.header("x-forwarded-for", from);
        }
        let response = sender
            .send_request(
                builder
                    .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status().as_u16();
        let headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let answer = Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        };
        for set in answer.set_cookies() {
            let pair = set.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        answer
    }

    pub(crate) async fn get(&mut self, path: &str) -> Answer {
        self.request("GET", path, None).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Answer {
        self.request("POST", path, Some(form)).await
    }

    /// Signs in through the form; the answer to the form's POST.
    pub(crate) async fn sign_in(&mut self, name: &str, password: &str) -> Answer {
        let form = self.get("/_coronium/admin/login").await;
        assert_eq!(form.status, 200, "{}", form.body);
        let token = form.field("login_csrf");
        self.post(
            "/_coronium/admin/login",
            &[
                ("login_csrf", &token),
                ("name", name),
                ("password", password),
            ],
        )
        .await
    }

    /// The CSRF token of a page's forms.
    async fn csrf(&mut self, path: &str) -> String {
        let page = self.get(path).await;
        assert_eq!(page.status, 200, "{}", page.body);
        page.field("csrf")
    }
}

pub(crate) async fn create_user(
    server: &TestServer,
    scope: &str,
    username: &str,
    email: &str,
) -> String {
    let answer = server
        .call_in(
            scope,
            "api.users",
            "create",
            json!({ "username": username, "password": md5_hex("pw-123456"), "email": email }),
        )
        .await;
    answer["result"]["user_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"))
        .to_owned()
}

/// A wire login by a user [`create_user`] made; the whole answer.
pub(crate) async fn log_in(server: &TestServer, scope: &str, username: &str) -> serde_json::Value {
    server
        .call_in(
            scope,
            "api.users",
            "login",
            json!({ "username": username, "password": md5_hex("pw-123456") }),
        )
        .await
}

pub(crate) fn md5_hex(s: &str) -> String {
    coronium::users::password::md5_hex(s)
}

#[tokio::test]
async fn every_route_but_sign_in_refuses_a_request_without_a_session() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |_| {});
    let id = create_user(&server, "default", "walker", "walker@example.com").await;
    let mut browser = Browser::new(&server.addr);
    for route in console::ROUTES {
        let path = format!("/_coronium/admin{}", route.path.replace("{id}", &id));
        let answer = match route.method {
            Method::Get => browser.get(&path).await,
            Method::Post => browser.post(&path, &[("csrf", "guess")]).await,
        };
        match (route.public, route.method) {
            (true, Method::Get) => assert_eq!(answer.status, 200, "{path}"),
            // The sign-in form without its token.
            (true, Method::Post) => assert_eq!(answer.status, 403, "{path}"),
            (false, Method::Get) => {
                assert_eq!(answer.status, 303, "{path}");
                assert_eq!(answer.header("location"), Some("/_coronium/admin/login"));
            }
            (false, Method::Post) => assert_eq!(answer.status, 403, "{path}"),
        }
        assert!(!answer.body.contains("walker@example.com"), "{path} leaked");
    }
    // A session cookie that was never issued opens nothing either.
    browser
        .cookies
        .insert(console::SESSION_COOKIE.into(), "made-up".into());
    let answer = browser.get(&format!("/_coronium/admin/users/{id}")).await;
    assert_eq!(answer.status, 303);
    // The old Webmin address leads to the console.
    let (status, _) = http_get(&server.addr, "/_coronium/webmin/").await;
    assert_eq!(status, 301);
    let user = server
        .call("api.users", "get", json!({ "user_id": id }))
        .await;
    assert_eq!(user["result"]["username"], "walker", "nothing changed");
}

#[tokio::test]
async fn sign_in_sessions_cookies_and_csrf() {
    let db = TestDb::new().await;
    let added = add_admin(&db, ADMIN, PASSWORD);
    assert!(added.status.success(), "{added:?}");
    let all_output = format!(
        "{}{}",
        String::from_utf8_lossy(&added.stdout),
        String::from_utf8_lossy(&added.stderr)
    );
    assert!(!all_output.contains(PASSWORD), "the password was printed");
    // A short password and a taken name are refused.
    let weak = add_admin(&db, "other", "short");
    assert!(!weak.status.success());
    assert!(String::from_utf8_lossy(&weak.stderr).contains("at least 10 characters"));
    let again = add_admin(&db, ADMIN, PASSWORD);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let server = TestServer::start(&db, |_| {});
    let mut browser = Browser::new(&server.addr);
    // Wrong password and unknown admin: the same answer.
    let wrong = browser.sign_in(ADMIN, "not the password").await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("Wrong name or password."));
    let unknown = browser.sign_in("nobody", PASSWORD).await;
    assert_eq!(unknown.status, 401);
    assert!(unknown.body.contains("Wrong name or password."));
    // The sign-in form needs its own token.
    let forged = browser
        .post(
            "/_coronium/admin/login",
            &[
                ("login_csrf", "forged"),
                ("name", ADMIN),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(forged.status, 403);

    // Session fixation: a token planted before sign-in is replaced, never promoted.
    browser
        .cookies
        .insert(console::SESSION_COOKIE.into(), "planted-token".into());
    let signed_in = browser.sign_in(ADMIN, PASSWORD).await;
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);
    assert_eq!(signed_in.header("location"), Some("/_coronium/admin/"));
    let session_cookie = signed_in
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("coronium_admin="))
        .expect("a session cookie")
        .to_owned();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/_coronium/admin"] {
        assert!(session_cookie.contains(flag), "{session_cookie}");
    }
    assert!(
        !session_cookie.contains("Secure"),
        "plain HTTP: no Secure flag"
    );
    let token = browser.cookies[console::SESSION_COOKIE].clone();
    assert_ne!(token, "planted-token");
    assert!(token.len() >= 43, "{token}");

    let dashboard = browser.get("/_coronium/admin/").await;
    assert_eq!(dashboard.status, 200);
    assert!(dashboard.body.contains("Dashboard"));
    for header in [
        "content-security-policy",
        "x-frame-options",
        "cache-control",
    ] {
        assert!(dashboard.header(header).is_some(), "{header}");
    }
    // The session row holds only a hash of the token.
    let client = db.client().await;
    let stored: i64 = client
        .query_one(
            "SELECT count(*) FROM admin_sessions WHERE position($1::bytea in token_hash) > 0",
            &[&token.as_bytes()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 0);

    // A change with a wrong CSRF token is refused and changes nothing.
    let id = create_user(&server, "default", "victim", "victim@example.com").await;
    let refused = browser
        .post(
            &format!("/_coronium/admin/users/{id}/disable"),
            &[("csrf", "wrong")],
        )
        .await;
    assert_eq!(refused.status, 403);
    let missing = browser
        .post(&format!("/_coronium/admin/users/{id}/disable"), &[])
        .await;
    assert_eq!(missing.status, 403);
    let user = server
        .call("api.users", "get", json!({ "user_id": id }))
        .await;
    assert_eq!(user["result"]["active"], true);

    // Sign out ends the session for good.
    let csrf = browser.csrf("/_coronium/admin/").await;
    let out = browser
        .post("/_coronium/admin/logout", &[("csrf", &csrf)])
        .await;
    assert_eq!(out.status, 303);
    let mut stolen = Browser::new(&server.addr);
    stolen
        .cookies
        .insert(console::SESSION_COOKIE.into(), token.clone());
    assert_eq!(stolen.get("/_coronium/admin/").await.status, 303);

    // `admin passwd` ends open sessions; `admin list` shows the admin; `remove` removes.
    let signed_in = browser.sign_in(ADMIN, PASSWORD).await;
    assert_eq!(signed_in.status, 303);
    let mut passwd = coronium(Some(&db))
        .args(["admin", "passwd", ADMIN])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(passwd.stdin.take().unwrap(), "another long password").unwrap();
    assert!(passwd.wait().unwrap().success());
    assert_eq!(browser.get("/_coronium/admin/").await.status, 303);
    assert_eq!(browser.sign_in(ADMIN, PASSWORD).await.status, 401);
    assert_eq!(
        browser.sign_in(ADMIN, "another long password").await.status,
        303
    );
    let list = coronium(Some(&db))
        .args(["admin", "list"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&list.stdout).starts_with("ops\t"));
    let hashes: Vec<String> = client
        .query("SELECT password_hash FROM admins", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        hashes.iter().all(|h| h.starts_with("$argon2id$")),
        "{hashes:?}"
    );
    let removed = coronium(Some(&db))
        .args(["admin", "remove", ADMIN])
        .output()
        .unwrap();
    assert!(removed.status.success());
    assert_eq!(browser.get("/_coronium/admin/").await.status, 303);
}

#[tokio::test]
async fn failed_sign_ins_are_throttled() {
    let db = TestDb::new().await;
    assert!(add_admin(&db, ADMIN, PASSWORD).status.success());
    let server = TestServer::start(&db, |_| {});
    let mut browser = Browser::new(&server.addr);
    for _ in 0..5 {
        assert_eq!(
            browser.sign_in(ADMIN, "guess guess guess").await.status,
            401
        );
    }
    // Past the limit even the right password waits.
    let held = browser.sign_in(ADMIN, PASSWORD).await;
    assert_eq!(held.status, 429, "{}", held.body);
    assert!(held.body.contains("Too many failed sign-ins"));
}

#[tokio::test]
async fn the_pages_manage_users_as_the_wire_sees_them() {
    let db = TestDb::new().await;
    assert!(add_admin(&db, ADMIN, PASSWORD).status.success());
    let server = TestServer::start(&db, |_| {});
    let id = create_user(&server, "game", "alice", "alice@example.com").await;
    create_user(&server, "game", "albert", "albert@example.org").await;
    create_user(&server, "game", "bob", "bob@example.com").await;
    create_user(&server, "other", "alina", "alina@example.com").await;
    let mut browser = Browser::new(&server.addr);
    assert_eq!(browser.sign_in(ADMIN, PASSWORD).await.status, 303);

    // Search: a username prefix, an email prefix, one scope only.
    let found = browser.get("/_coronium/admin/users?scope=game&q=Al").await;
    assert_eq!(found.status, 200);
    assert!(found.body.contains("alice") && found.body.contains("albert"));
    assert!(!found.body.contains("bob@") && !found.body.contains("alina"));
    let by_email = browser
        .get("/_coronium/admin/users?scope=game&q=bob%40example")
        .await;
    assert!(by_email.body.contains("bob@example.com"));
    assert!(!by_email.body.contains("alice"));

    // The detail page; extra set through the form reaches the wire's get.
    let detail = browser.get(&format!("/_coronium/admin/users/{id}")).await;
    assert_eq!(detail.status, 200);
    assert!(detail.body.contains("alice@example.com"));
    let csrf = detail.field("csrf");
    let set = browser
        .post(
            &format!("/_coronium/admin/users/{id}/extra"),
            &[("csrf", &csrf), ("key", "level"), ("value", "7")],
        )
        .await;
    assert_eq!(set.status, 303, "{}", set.body);
    let set = browser
        .post(
            &format!("/_coronium/admin/users/{id}/extra"),
            &[("csrf", &csrf), ("key", "title"), ("value", "Hero <b>")],
        )
        .await;
    assert_eq!(set.status, 303);
    let user = server
        .call_in("game", "api.users", "get", json!({ "user_id": id }))
        .await;
    assert_eq!(user["result"]["extra"]["level"], 7);
    assert_eq!(user["result"]["extra"]["title"], "Hero <b>");
    let page = browser.get(&format!("/_coronium/admin/users/{id}")).await;
    assert!(page.body.contains("Hero &lt;b&gt;"), "escaped in the page");
    let removed = browser
        .post(
            &format!("/_coronium/admin/users/{id}/extra/remove"),
            &[("csrf", &csrf), ("key", "title")],
        )
        .await;
    assert_eq!(removed.status, 303);
    let user = server
        .call_in("game", "api.users", "get", json!({ "user_id": id }))
        .await;
    assert!(user["result"]["extra"].get("title").is_none());

    // Edit: a bad email is refused with the reason and changes nothing.
    let bad = browser
        .post(
            &format!("/_coronium/admin/users/{id}"),
            &[
                ("csrf", &csrf),
                ("email", "not-an-address"),
                ("group", "vip"),
                ("active", "on"),
            ],
        )
        .await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("Email address not found or invalid."));
    let edited = browser
        .post(
            &format!("/_coronium/admin/users/{id}"),
            &[
                ("csrf", &csrf),
                ("email", "alice@example.net"),
                ("group", "vip"),
                ("active", "on"),
            ],
        )
        .await;
    assert_eq!(edited.status, 303);
    let user = server
        .call_in("game", "api.users", "get", json!({ "user_id": id }))
        .await;
    assert_eq!(user["result"]["group"], "vip");
    assert_eq!(user["result"]["email"], "alice@example.net");

    // Disable: the user's login answers active = false; enable brings it back.
    let disabled = browser
        .post(
            &format!("/_coronium/admin/users/{id}/disable"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(disabled.status, 303);
    let login = log_in(&server, "game", "alice").await;
    assert_eq!(login["result"]["active"], false, "{login}");

    // Reset and resend put mail in the outbox.
    let reset = browser
        .post(
            &format!("/_coronium/admin/users/{id}/reset"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(reset.status, 303, "{}", reset.body);
    let client = db.client().await;
    let uuid = uuid::Uuid::parse_str(&id).unwrap();
    let mails: i64 = client
        .query_one(
            "SELECT count(*) FROM mail_outbox WHERE user_id = $1 AND purpose = 'password_reset'",
            &[&uuid],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(mails, 1);
    // Alice is not pending: resend says so and changes nothing.
    let resend = browser
        .post(
            &format!("/_coronium/admin/users/{id}/resend"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(resend.status, 400);
    assert!(resend.body.contains("Pending user not found."));

    // Delete asks first, then the user is gone.
    let ask = browser
        .get(&format!("/_coronium/admin/users/{id}/delete"))
        .await;
    assert_eq!(ask.status, 200);
    assert!(ask.body.contains("cannot be undone"));
    let user = server
        .call_in("game", "api.users", "get", json!({ "user_id": id }))
        .await;
    assert_eq!(
        user["result"]["username"], "alice",
        "asking deleted nothing"
    );
    let deleted = browser
        .post(
            &format!("/_coronium/admin/users/{id}/delete"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(deleted.status, 303);
    let gone = server
        .call_in("game", "api.users", "get", json!({ "user_id": id }))
        .await;
    assert_eq!(gone["result"]["status"], 604, "{gone}");

    // Every change is in the audit trail, with who and which user.
    let actions: Vec<(String, String)> = client
        .query(
            "SELECT admin, action FROM admin_audit WHERE user_id = $1 ORDER BY id",
            &[&uuid],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let names: Vec<&str> = actions.iter().map(|(_, a)| a.as_str()).collect();
    assert_eq!(
        names,
        [
            "user.extra.set",
            "user.extra.set",
            "user.extra.remove",
            "user.edit",
            "user.disable",
            "user.password_reset",
            "user.delete"
        ]
    );
    assert!(actions.iter().all(|(admin, _)| admin == ADMIN));
    let audit = browser.get("/_coronium/admin/audit").await;
    assert!(audit.body.contains("user.delete"));
}

#[tokio::test]
async fn the_dashboard_counts_joins_and_logins_and_lists_pending_users() {
    let db = TestDb::new().await;
    assert!(add_admin(&db, ADMIN, PASSWORD).status.success());
    let server = TestServer::start(&db, |_| {});
    for name in ["dana", "dave", "dora"] {
        create_user(&server, "dash", name, &format!("{name}@example.com")).await;
    }
    for _ in 0..2 {
        let login = log_in(&server, "dash", "dana").await;
        assert!(login["result"]["user_id"].is_string(), "{login}");
    }
    // A pending user (confirmation mail to the development outbox).
    let pending = server
        .call_in(
            "dash",
            "api.users",
            "create",
            json!({
                "username": "pete", "password": md5_hex("pw-123456"), "email": "pete@example.com",
                "confirmation": { "from_email": "games@example.com", "subject": "Welcome" }
            }),
        )
        .await;
    assert_eq!(pending["result"]["confirmation"], "pending", "{pending}");
    let mut browser = Browser::new(&server.addr);
    assert_eq!(browser.sign_in(ADMIN, PASSWORD).await.status, 303);
    let dashboard = browser.get("/_coronium/admin/?scope=dash").await;
    assert_eq!(dashboard.status, 200);
    let body = &dashboard.body;
    assert!(
        body.contains(r#"<span class="value" id="total-users">4</span>"#),
        "{body}"
    );
    assert!(body.contains(r#"<span class="value" id="pending-users">1</span>"#));
    assert!(body.contains(r#"<span class="value" id="joins-today">4</span>"#));
    assert!(body.contains(r#"<span class="value" id="logins-today">2</span>"#));
    // The chart's bars for today carry the same figures.
    let today: String = db
        .client()
        .await
        .query_one(
            "SELECT to_char((now() AT TIME ZONE 'UTC')::date, 'YYYY-MM-DD')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(body.contains(&format!(
        r#"class="joins" data-day="{today}" data-value="4""#
    )));
    assert!(body.contains(&format!(
        r#"class="logins" data-day="{today}" data-value="2""#
    )));
    let list = browser.get("/_coronium/admin/pending?scope=dash").await;
    assert!(list.body.contains("pete") && !list.body.contains("dana"));
}

/// The users list pages by keyset over a "C"-collated index: the plan of every variant of its
/// statement is an index scan, never a sequential scan, even as a generic plan.
#[tokio::test]
async fn user_search_reads_an_index_not_the_table() {
    use coronium::admin::store::{SearchField, UserState, search_sql};
    let db = TestDb::new().await;
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO users (user_id, scope, username, email, password_hash)
             SELECT gen_random_uuid(), 's' || (i % 3), 'user' || i, 'user' || i || '@example.com', 'x'
             FROM generate_series(1, 30000) AS i;
             ANALYZE users;
             SET plan_cache_mode = force_generic_plan;",
        )
        .await
        .unwrap();
    for field in [SearchField::Username, SearchField::Email] {
        for state in [None, Some(UserState::Active), Some(UserState::Pending)] {
            let sql = search_sql(field, state);
            client
                .batch_execute(&format!("PREPARE page AS {sql}"))
                .await
                .unwrap();
            let plan: Vec<String> = client
                .query(
                    "EXPLAIN EXECUTE page('s1', 'user1', 'user1\u{10FFFF}', 51, NULL, NULL)",
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            let plan = plan.join("\n");
            assert!(!plan.contains("Seq Scan"), "{field:?} {state:?}:\n{plan}");
            // The pending list may read the (smaller) index of pending users instead.
            let index = match (field, state) {
                (_, Some(UserState::Pending)) => "Index Scan",
                (SearchField::Username, _) => "users_scope_username_c_idx",
                (SearchField::Email, _) => "users_scope_email_c_idx",
            };
            assert!(plan.contains(index), "{field:?} {state:?}:\n{plan}");
            client.batch_execute("DEALLOCATE page").await.unwrap();
        }
    }
}

#[tokio::test]
async fn the_users_commands_list_show_disable_and_delete() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |_| {});
    let id = create_user(&server, "cli", "carol", "carol@example.com").await;
    create_user(&server, "cli", "casey", "casey@example.com").await;
    let run = |args: &[&str]| coronium(Some(&db)).args(args).output().unwrap();
    let list = run(&["users", "list", "--scope", "cli", "--search", "car"]);
    let out = String::from_utf8_lossy(&list.stdout);
    assert!(
        out.contains("carol\tcarol@example.com") && !out.contains("casey"),
        "{out}"
    );
    let show = run(&["users", "show", &id]);
    let shown: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(shown["username"], "carol");
    assert!(run(&["users", "disable", &id]).status.success());
    let login = log_in(&server, "cli", "carol").await;
    assert_eq!(login["result"]["active"], false);
    assert!(run(&["users", "enable", &id]).status.success());
    // Asked first: no answer (stdin closed) deletes nothing; `y` or `--yes` does.
    let unanswered = run(&["users", "delete", &id]);
    assert!(!unanswered.status.success());
    assert!(String::from_utf8_lossy(&unanswered.stderr).contains("Delete carol (scope cli"));
    let kept = server
        .call_in("cli", "api.users", "get", json!({ "user_id": id }))
        .await;
    assert_eq!(kept["result"]["username"], "carol", "{kept}");
    let mut answered = coronium(Some(&db))
        .args(["users", "delete", &id])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    answered.stdin.take().unwrap().write_all(b"n\n").unwrap();
    assert!(!answered.wait_with_output().unwrap().status.success());
    assert!(run(&["users", "delete", &id, "--yes"]).status.success());
    let gone = server
        .call_in("cli", "api.users", "get", json!({ "user_id": id }))
        .await;
    assert_eq!(gone["result"]["status"], 604);
    let bad = run(&["users", "show", "not-a-uuid"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a user id"));
}

/// `api.analytics` from the client plugin: appOpened and events are stored per scope, rolled up
/// into daily counts, and shown on the console's analytics page.
#[tokio::test]
async fn analytics_sent_over_the_wire_reach_the_console() {
    let db = TestDb::new().await;
    assert!(add_admin(&db, ADMIN, PASSWORD).status.success());
    let server = TestServer::start(&db, |_| {});
    for (platform, version) in [("ios", "1.2"), ("android", "1.2"), ("ios", "1.3")] {
        let opened = server
            .call_in(
                "stats",
                "api.analytics",
                "appOpened",
                json!({
                    "name": "FunRun", "platform": platform, "platform_ver": "17.1",
                    "version": version, "model": "iPhone", "manufacturer": "Apple",
                    "screen_w": 320, "screen_h": 480, "device_id": "device-1",
                }),
            )
            .await;
        assert_eq!(opened, json!({ "result": true }));
    }
    for _ in 0..2 {
        let event = server
            .call_in(
                "stats",
                "api.analytics",
                "event",
                json!({ "name": "level_up", "value": 3 }),
            )
            .await;
        assert_eq!(event, json!({ "result": true }));
    }
    // Another scope's opens stay there.
    server
        .call_in("elsewhere", "api.analytics", "appOpened", json!({}))
        .await;
    let nameless = server
        .call_in("stats", "api.analytics", "event", json!({ "value": 1 }))
        .await;
    assert_eq!(nameless["result"]["status"], 804, "{nameless}");
    let unknown = server
        .call_in("stats", "api.analytics", "dropTables", json!({}))
        .await;
    assert_eq!(unknown["result"]["status"], 810, "{unknown}");

    let mut browser = Browser::new(&server.addr);
    assert_eq!(browser.sign_in(ADMIN, PASSWORD).await.status, 303);
    let page = browser.get("/_coronium/admin/analytics?scope=stats").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body
            .contains(r#"<span class="value" id="opens-total">3</span>"#),
        "{}",
        page.body
    );
    assert!(page.body.contains("<td>level_up</td><td>2</td>"));
    assert!(page.body.contains("<td>ios</td><td>2</td>"));
    assert!(page.body.contains("<td>1.2</td><td>2</td>"));
    // The counts live in the daily roll-up; the inbox is empty once rolled up.
    let client = db.client().await;
    let opens: i64 = client
        .query_one(
            "SELECT COALESCE(sum(count), 0)::bigint FROM analytics_daily
             WHERE scope = 'stats' AND metric = 'opens'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(opens, 3);
    let raw: i64 = client
        .query_one(
            "SELECT count(*) FROM analytics_events WHERE scope = 'stats'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(raw, 5);
}

/// Scope permissions (users spec §9): actions unchecked in the console are refused over the wire
/// in that scope only (v1 names too) with 810 and HTTP 403; checking them again allows them.
#[tokio::test]
async fn scope_permissions_deny_wire_actions() {
    use coronium::wire::client::{signed_headers, unix_now};
    let db = TestDb::new().await;
    assert!(add_admin(&db, ADMIN, PASSWORD).status.success());
    let server = TestServer::start(&db, |_| {});
    create_user(&server, "locked", "first", "first@example.com").await;
    let mut browser = Browser::new(&server.addr);
    assert_eq!(browser.sign_in(ADMIN, PASSWORD).await.status, 303);
    let page = browser.get("/_coronium/admin/scopes?scope=locked").await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains(r#"value="api.users/create" checked"#),
        "allowed by default"
    );
    let csrf = page.field("csrf");
    let mut allow: Vec<(&str, String)> = vec![("csrf", csrf.clone()), ("scope", "locked".into())];
    for (project, actions) in coronium::permissions::MODULE_ACTIONS {
        for action in *actions {
            if !(*project == "api.users" && *action == "create") {
                allow.push(("allow", format!("{project}/{action}")));
            }
        }
    }
    let fields: Vec<(&str, &str)> = allow.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let saved = browser.post("/_coronium/admin/scopes", &fields).await;
    assert_eq!(saved.status, 303, "{}", saved.body);
    let page = browser.get("/_coronium/admin/scopes?scope=locked").await;
    assert!(
        page.body.contains(r#"value="api.users/create">"#),
        "now unchecked"
    );

    let body = serde_json::to_vec(&json!({
        "username": "second", "password": md5_hex("pw-123456")
    }))
    .unwrap();
    for action in ["create", "createUser"] {
        let headers = signed_headers(&server.key, "api.users", action, "locked", unix_now());
        let (http, answer) = server.post(&headers, &body).await;
        assert_eq!(http, 403, "{action}: {answer}");
        assert_eq!(
            answer,
            json!({ "result": { "error": "Action not permitted for this scope.", "status": 810 } })
        );
    }
    // Other actions in the scope, and the same action in other scopes, still work.
    let login = log_in(&server, "locked", "first").await;
    assert!(login["result"]["user_id"].is_string(), "{login}");
    create_user(&server, "open", "second", "second@example.com").await;
    let nobody: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM users WHERE scope = 'locked' AND username = 'second'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(nobody, 0);

    // Allowing everything again takes effect at once.
    let mut fields = fields.clone();
    fields.push(("allow", "api.users/create"));
    assert_eq!(
        browser
            .post("/_coronium/admin/scopes", &fields)
            .await
            .status,
        303
    );
    create_user(&server, "locked", "second", "second@example.com").await;
    let audit: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM admin_audit WHERE action = 'scope.permissions' AND scope = 'locked'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(audit, 2);
}

/// The Projects page: each project's files and state, a failed load with its file and line,
/// and the recent handler errors, as the workers saw them.
#[tokio::test]
async fn the_projects_page_shows_loads_failures_and_handler_errors() {
    let db = TestDb::new().await;
    assert!(add_admin(&db, ADMIN, PASSWORD).status.success());
    let root = scratch_dir("projects");
    write_project(
        &root,
        "Demo",
        &[
            (
                "main.lua",
                "local api = core.api()\n\
                 function api.ok() return 1 end\n\
                 function api.fail() local t = nil; return t.field end\n\
                 return api\n",
            ),
            ("lib/util.lua", "return {}\n"),
        ],
    );
    write_project(
        &root,
        "Broken",
        &[("main.lua", "local api = core.api()\nreturn api +\n")],
    );
    let server = serve_projects(&db, &root, "2", &[]);
    let ok = server.call("Demo", "ok", json!({})).await;
    assert_eq!(ok, json!({ "result": 1 }));
    let failed = server.call("Demo", "fail", json!({})).await;
    assert_eq!(failed["result"]["status"], 810, "{failed}");
    let broken = server.call("Broken", "any", json!({})).await;
    assert_eq!(broken["result"]["status"], 810, "{broken}");

    let mut browser = Browser::new(&server.addr);
    assert_eq!(browser.sign_in(ADMIN, PASSWORD).await.status, 303);
    let page = browser.get("/_coronium/admin/projects").await;
    assert_eq!(page.status, 200, "{}", page.body);
    // minijinja escapes '/' in text.
    let body = &page.body.replace("&#x2f;", "/");
    let section = |name: &str| {
        let start = body
            .find(&format!(r#"id="project-{name}""#))
            .unwrap_or_else(|| panic!("no {name} in {body}"));
        let end = body[start..].find("</section>").unwrap() + start;
        body[start..end].to_owned()
    };
    let demo = section("Demo");
    assert!(
        demo.contains(r#"<span class="tag state-loaded">loaded</span>"#),
        "{demo}"
    );
    assert!(
        demo.contains("<code>main.lua</code>") && demo.contains("<code>lib/util.lua</code>"),
        "{demo}"
    );
    let broken = section("Broken");
    assert!(
        broken.contains(r#"<span class="tag state-failed">failed</span>"#),
        "{broken}"
    );
    assert!(
        broken.contains("<code>Broken/main.lua:3</code>"),
        "{broken}"
    );
    // The handler error ring: the failing action, where it failed.
    let errors = &body[body.find("Recent handler errors").unwrap()..];
    assert!(
        errors.contains("<td>Demo</td><td>fail</td><td><code>Demo/main.lua:3</code></td>"),
        "{errors}"
    );
    assert!(errors.contains("attempt to index nil"), "{errors}");

    // Fixed on disk: the next request loads it, and the page says so.
    std::fs::write(
        root.join("Broken/main.lua"),
        "local api = core.api()\nfunction api.any() return 2 end\nreturn api\n",
    )
    .unwrap();
    let fixed = server.call("Broken", "any", json!({})).await;
    assert_eq!(fixed, json!({ "result": 2 }));
    let page = browser.get("/_coronium/admin/projects").await;
    let start = page.body.find(r#"id="project-Broken""#).unwrap();
    assert!(
        page.body[start..].contains(r#"<span class="tag state-loaded">loaded</span>"#),
        "{}",
        page.body
    );
}

/// The Server page shows the figures `/metrics` exports (a process of its own: its own
/// recorder), the version and the workers.
#[tokio::test]
async fn the_server_page_shows_what_metrics_exports() {
    let db = TestDb::new().await;
    assert!(add_admin(&db, ADMIN, PASSWORD).status.success());
    let server = TestServer::start_process(&db, |cmd| {
        cmd.env("CORONIUM_WORKERS", "3");
    });
    for name in ["sam", "sue"] {
        create_user(&server, "default", name, &format!("{name}@example.com")).await;
    }
    let missing = server
        .call(
            "api.users",
            "get",
            json!({ "user_id": uuid::Uuid::new_v4().to_string() }),
        )
        .await;
    assert_eq!(missing["result"]["status"], 604);
    let (http, _) = server.post(&[], b"{}").await;
    assert_eq!(http, 400, "an unsigned request is refused");

    let (status, metrics) = http_get(&server.addr, "/metrics").await;
    assert_eq!(status, 200);
    let total: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("coronium_requests_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(total, 4.0, "{metrics}");
    let mut browser = Browser::new(&server.addr);
    assert_eq!(browser.sign_in(ADMIN, PASSWORD).await.status, 303);
    let page = browser.get("/_coronium/admin/server").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let body = &page.body;
    assert!(body.contains(&format!("coronium {}", env!("CARGO_PKG_VERSION"))));
    assert!(
        body.contains(r#"<span class="value" id="workers">3</span>"#),
        "{body}"
    );
    assert!(body.contains(r#"<dd id="requests-total">4</dd>"#), "{body}");
    // The 604 answer and the refused request, as `/metrics` labels them.
    assert!(body.contains(r#"<dd id="failed-total">2</dd>"#), "{body}");
    assert!(body.contains(r#"id="rps""#) && body.contains(r#"id="error-rate""#));
}

/// No log line and no command output carries an admin's password, at the most verbose level,
/// whether the sign-in succeeds or fails.
#[tokio::test]
async fn an_admin_password_is_never_logged() {
    let db = TestDb::new().await;
    let added = coronium(Some(&db))
        .env("CORONIUM_LOG", "trace")
        .args(["admin", "add", ADMIN])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = added;
    writeln!(child.stdin.take().unwrap(), "{PASSWORD}").unwrap();
    let added = child.wait_with_output().unwrap();
    assert!(added.status.success());
    let log_path = scratch_dir("log").join("server.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let server = TestServer::start_process(&db, |cmd| {
        cmd.env("CORONIUM_LOG", "trace").stderr(log_file);
    });
    let mut browser = Browser::new(&server.addr);
    let wrong = "wrong but long password";
    assert_eq!(browser.sign_in(ADMIN, wrong).await.status, 401);
    assert_eq!(browser.sign_in(ADMIN, PASSWORD).await.status, 303);
    drop(server);
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("console"), "the log was written: {log}");
    let outputs = [
        log,
        String::from_utf8_lossy(&added.stdout).into_owned(),
        String::from_utf8_lossy(&added.stderr).into_owned(),
    ];
    for output in &outputs {
        for secret in [PASSWORD, wrong] {
            // As typed, and as the form sends it.
            let encoded = secret.replace(' ', "+");
            assert!(
                !output.contains(secret) && !output.contains(&encoded),
                "{secret:?} in {output}"
            );
        }
    }
}

/// A session unused for `console.idle_minutes` ends; a busy one is kept alive, its last use
/// written at most every 30 s (so most page views only read).
#[tokio::test]
async fn idle_sessions_end_and_busy_ones_are_kept_alive() {
    let db = TestDb::new().await;
    assert!(add_admin(&db, ADMIN, PASSWORD).status.success());
    let server = TestServer::start(&db, |_| {});
    let mut browser = Browser::new(&server.addr);
    assert_eq!(browser.sign_in(ADMIN, PASSWORD).await.status, 303);
    let client = db.client().await;
    let last_seen_age = async || -> f64 {
        client
            .query_one(
                "SELECT extract(epoch FROM now() - last_seen)::float8 FROM admin_sessions",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    };
    let age = async |secs: i32| {
        client
            .execute(
                "UPDATE admin_sessions SET last_seen = now() - make_interval(secs => $1)",
                &[&f64::from(secs)],
            )
            .await
            .unwrap();
    };
    age(10).await;
    assert_eq!(browser.get("/_coronium/admin/audit").await.status, 200);
    assert!(
        last_seen_age().await >= 9.0,
        "a recent use is not written again"
    );
    age(40).await;
    assert_eq!(browser.get("/_coronium/admin/audit").await.status, 200);
    assert!(last_seen_age().await < 5.0, "an older one is");
    age(31 * 60).await;
    let ended = browser.get("/_coronium/admin/audit").await;
    assert_eq!(ended.status, 303);
    assert_eq!(ended.header("location"), Some("/_coronium/admin/login"));
}

/// Opens sent at once share inserts (a batch per worker); each is stored exactly once, and
/// all are counted.
#[tokio::test]
async fn concurrent_app_opens_are_each_stored_once() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |_| {});
    let mut calls = Vec::new();
    for i in 0..300 {
        let (addr, key) = (server.addr.clone(), server.key.clone());
        calls.push(tokio::spawn(async move {
            coronium::wire::client::call(
                &addr,
                &key,
                "api.analytics",
                "appOpened",
                "burst",
                &json!({ "platform": if i % 3 == 0 { "ios" } else { "android" } }),
            )
            .await
            .unwrap()
        }));
    }
    for call in calls {
        assert_eq!(call.await.unwrap(), json!({ "result": true }));
    }
    let client = db.client().await;
    let stored: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM analytics_inbox WHERE scope = 'burst')
                  + (SELECT count(*) FROM analytics_events WHERE scope = 'burst')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 300);
    let ios: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM analytics_inbox WHERE scope = 'burst' AND platform = 'ios')
                  + (SELECT count(*) FROM analytics_events WHERE scope = 'burst' AND platform = 'ios')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ios, 100);
}
