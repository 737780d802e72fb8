//! The console in a real browser: Debian's `chromium`, driven through `chromedriver` (WebDriver)
//! with fantoccini. Every step is what an operator does: open a page, fill a field, press a
//! button; what it changed is then read over the wire, from Lua and from the database.
//!
//! `CORONIUM_CHROMIUM` and `CORONIUM_CHROMEDRIVER` name other binaries; `CORONIUM_SCREENSHOTS=DIR`
//! saves the README's screenshots there (`docs/`).

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::common::*;
use crate::console::{ADMIN, PASSWORD, add_admin, create_user, log_in, md5_hex};

const CONSOLE: &str = "/_coronium/admin";

/// A headless Chromium under its own chromedriver; both die with it (one process group).
struct Chrome {
    driver: Child,
    client: Option<Client>,
    base: String,
    _profile: PathBuf,
}

impl Drop for Chrome {
    fn drop(&mut self) {
        // The group holds chromedriver and every browser process it started.
        unsafe { libc::kill(-(self.driver.id() as i32), libc::SIGKILL) };
        let _ = self.driver.wait();
    }
}

fn binary(env: &str, default: &str) -> String {
    let path = std::env::var(env).unwrap_or_else(|_| default.to_owned());
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: the browser tests need Debian's chromium and chromium-driver \
         (apt-get install -y chromium chromium-driver), or {env} naming another"
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Chrome {
    async fn start(server: &TestServer) -> Chrome {
        let chromium = binary("CORONIUM_CHROMIUM", "/usr/bin/chromium");
        let chromedriver = binary("CORONIUM_CHROMEDRIVER", "/usr/bin/chromedriver");
        let port = free_port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let profile = scratch_dir("chromium");
        let mut chrome = Chrome {
            driver,
            client: None,
            base: format!("http://{}{CONSOLE}", server.addr),
            _profile: profile.clone(),
        };
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                // Headless as root, and quiet: the machine's network is closed, so nothing
                // should try to reach Google's hosts.
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                    "--window-size=1280,900", format!("--user-data-dir={}", profile.display()),
                ],
            },
        });
        let capabilities = capabilities.as_object().unwrap().clone();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => {
                    chrome.client = Some(client);
                    return chrome;
                }
                // chromedriver is still starting.
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("no browser session: {e}"),
            }
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    /// Opens a console page (`path` under the console).
    async fn open(&self, path: &str) {
        self.client()
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap();
    }

    /// The page's path and query.
    async fn location(&self) -> String {
        let url = self.client().current_url().await.unwrap();
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        }
    }

    async fn fill(&self, css: &str, text: &str) {
        let field = self.client().find(Locator::Css(css)).await.unwrap();
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    /// Presses a button (or follows a link) and waits for the page it leads to.
    async fn press(&self, css: &str) {
        let old = self.client().find(Locator::Css("html")).await.unwrap();
        self.client()
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .unwrap();
        // The old document's root goes stale once the next page has loaded.
        let deadline = Instant::now() + Duration::from_secs(10);
        while old.tag_name().await.is_ok() {
            assert!(Instant::now() < deadline, "pressing {css} led nowhere");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.client()
            .wait()
            .for_element(Locator::Css("body"))
            .await
            .unwrap();
    }

    /// Clicks what does not navigate (a checkbox).
    async fn click(&self, css: &str) {
        let element = self.client().find(Locator::Css(css)).await.unwrap();
        element.click().await.unwrap();
    }

    async fn text(&self, css: &str) -> String {
        self.client()
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .text()
            .await
            .unwrap()
    }

    async fn has(&self, css: &str) -> bool {
        !self
            .client()
            .find_all(Locator::Css(css))
            .await
            .unwrap()
            .is_empty()
    }

    async fn attr(&self, css: &str, name: &str) -> Option<String> {
        let element = self.client().find(Locator::Css(css)).await.ok()?;
        element.attr(name).await.unwrap()
    }

    async fn sign_in(&self) {
        self.open("/login").await;
        self.fill("#name", ADMIN).await;
        self.fill("#password", PASSWORD).await;
        self.press("form button[type=submit]").await;
        assert_eq!(self.location().await, format!("{CONSOLE}/"), "signed in");
    }

    /// Saves a screenshot as `<CORONIUM_SCREENSHOTS>/<name>.png` when that is set.
    async fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os("CORONIUM_SCREENSHOTS") else {
            return;
        };
        let png = self.client().screenshot().await.unwrap();
        std::fs::write(PathBuf::from(dir).join(format!("{name}.png")), png).unwrap();
    }

    async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }
}

async fn wire_get(server: &TestServer, scope: &str, id: &str) -> serde_json::Value {
    server
        .call_in(scope, "api.users", "get", json!({ "user_id": id }))
        .await
}

/// Sign-in, the refusals, search, edit, disable, reset, resend and delete, each through the
/// browser, each checked where a game sees it.
#[tokio::test]
async fn an_operator_manages_users_in_a_real_browser() {
    let db = TestDb::new().await;
    assert!(add_admin(&db, ADMIN, PASSWORD).status.success());
    let server = TestServer::start(&db, |_| {});
    let id = create_user(&server, "game", "alice", "alice@example.com").await;
    create_user(&server, "game", "albert", "albert@example.org").await;
    create_user(&server, "game", "bob", "bob@example.com").await;
    let chrome = Chrome::start(&server).await;

    // Without a session every page leads to the sign-in form.
    chrome.open(&format!("/users/{id}")).await;
    assert_eq!(chrome.location().await, format!("{CONSOLE}/login"));
    assert!(!chrome.client().source().await.unwrap().contains("alice"));
    // A wrong password is refused on the form.
    chrome.fill("#name", ADMIN).await;
    chrome.fill("#password", "not the password").await;
    chrome.press("form button[type=submit]").await;
    assert!(chrome.has("p.error[role=alert]").await);
    chrome.sign_in().await;

    // Search by username prefix, in one scope.
    chrome.open("/users?scope=game").await;
    chrome.fill("#q", "al").await;
    chrome.press("form.search button[type=submit]").await;
    let table = chrome.text("table.users").await;
    assert!(
        table.contains("alice") && table.contains("albert"),
        "{table}"
    );
    assert!(!table.contains("bob"), "{table}");
    chrome.press(&format!("a[href$='/users/{id}']")).await;
    assert_eq!(chrome.location().await, format!("{CONSOLE}/users/{id}"));

    // A form whose CSRF token was tampered with changes nothing.
    chrome
        .client()
        .execute(
            "document.querySelector('form[action$=\"/disable\"] input[name=csrf]').value = 'forged'",
            vec![],
        )
        .await
        .unwrap();
    chrome.press("form[action$='/disable'] button").await;
    assert!(
        chrome
            .text("main")
            .await
            .contains("security token is missing or wrong")
    );
    let user = wire_get(&server, "game", &id).await;
    assert_eq!(user["result"]["active"], true, "{user}");

    // An extra key set in the form is what Lua and the wire read.
    chrome.open(&format!("/users/{id}")).await;
    chrome.fill("#extra-key", "level").await;
    chrome.fill("#extra-value", "7").await;
    chrome.press("form.inline button[type=submit]").await;
    assert!(chrome.text("table.extra").await.contains("level"));
    let user = wire_get(&server, "game", &id).await;
    assert_eq!(user["result"]["extra"]["level"], 7, "{user}");
    let lua = run_lua(
        &db,
        "get.lua",
        &format!(
            "local user, err = core.users.get('{id}', 'game')\n\
             print(user and user.extra.level or err)"
        ),
    );
    assert_ok(&lua);
    assert_eq!(lua.lines(), ["7"]);

    // Disabled in the browser: the user's login answers active = false.
    chrome.press("form[action$='/disable'] button").await;
    assert_eq!(chrome.text("#user-state").await, "inactive");
    let login = log_in(&server, "game", "alice").await;
    assert_eq!(login["result"]["active"], false, "{login}");

    // A password reset goes to the outbox.
    chrome.press("form[action$='/reset'] button").await;
    assert!(chrome.has("p.notice").await);
    let client = db.client().await;
    let outbox = async |purpose: &str, user: &str| -> i64 {
        let user = uuid::Uuid::parse_str(user).unwrap();
        client
            .query_one(
                "SELECT count(*) FROM mail_outbox WHERE user_id = $1 AND purpose = $2",
                &[&user, &purpose],
            )
            .await
            .unwrap()
            .get(0)
    };
    assert_eq!(outbox("password_reset", &id).await, 1);

    // Resending a pending user's confirmation queues a second one.
    let pending = server
        .call_in(
            "game",
            "api.users",
            "create",
            json!({
                "username": "pete", "password": md5_hex("pw-123456"), "email": "pete@example.com",
                "confirmation": { "from_email": "games@example.com", "subject": "Welcome" }
            }),
        )
        .await;
    let pete = pending["result"]["user_id"].as_str().unwrap().to_owned();
    assert_eq!(outbox("confirmation", &pete).await, 1);
    chrome.open("/pending?scope=game").await;
    chrome.press(&format!("a[href$='/users/{pete}']")).await;
    chrome.press("form[action$='/resend'] button").await;
    assert!(chrome.has("p.notice").await);
    assert_eq!(outbox("confirmation", &pete).await, 2);

    // Delete asks first; the user is there until the second press.
    chrome.open(&format!("/users/{id}")).await;
    chrome.press("a.danger").await;
    assert!(chrome.text("main").await.contains("cannot be undone"));
    let user = wire_get(&server, "game", &id).await;
    assert_eq!(user["result"]["username"], "alice", "{user}");
    chrome.press("form[action$='/delete'] button.danger").await;
    let gone = wire_get(&server, "game", &id).await;
    assert_eq!(gone["result"]["status"], 604, "{gone}");

    // The audit page lists what was done, by whom.
    chrome.open("/audit").await;
    let audit = chrome.text("main").await;
    assert!(
        audit.contains("user.delete") && audit.contains(ADMIN),
        "{audit}"
    );

    // Signing out ends the session: the pages lead to the sign-in form again.
    chrome.press("form.logout button").await;
    chrome.open("/users?scope=game").await;
    assert_eq!(chrome.location().await, format!("{CONSOLE}/login"));
    chrome.close().await;
}

/// The dashboard's chart after joins and logins, analytics sent over the wire, and a scope
/// permission unchecked in the browser and refused on the wire.
#[tokio::test]
async fn dashboard_analytics_and_scope_permissions_in_a_real_browser() {
    let db = TestDb::new().await;
    assert!(add_admin(&db, ADMIN, PASSWORD).status.success());
    let server = TestServer::start(&db, |_| {});
    for name in ["dana", "dave", "dora"] {
        create_user(&server, "arena", name, &format!("{name}@example.com")).await;
    }
    let chrome = Chrome::start(&server).await;
    chrome.sign_in().await;
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
    let bar = |metric: &str| format!("svg rect.{metric}[data-day='{today}']");

    chrome.open("/?scope=arena").await;
    assert_eq!(chrome.text("#joins-today").await, "3");
    assert_eq!(
        chrome.attr(&bar("joins"), "data-value").await.as_deref(),
        Some("3")
    );
    assert_eq!(
        chrome.attr(&bar("logins"), "data-value").await.as_deref(),
        Some("0")
    );
    // A join and two logins later, the chart shows them.
    create_user(&server, "arena", "dirk", "dirk@example.com").await;
    for _ in 0..2 {
        let login = log_in(&server, "arena", "dana").await;
        assert!(login["result"]["user_id"].is_string(), "{login}");
    }
    chrome.client().refresh().await.unwrap();
    assert_eq!(
        chrome.attr(&bar("joins"), "data-value").await.as_deref(),
        Some("4")
    );
    assert_eq!(
        chrome.attr(&bar("logins"), "data-value").await.as_deref(),
        Some("2")
    );
    assert_eq!(chrome.text("#logins-today").await, "2");

    // Analytics sent through the wire reach the analytics page (rolled up within seconds).
    for platform in ["ios", "android", "ios"] {
        let opened = server
            .call_in(
                "arena",
                "api.analytics",
                "appOpened",
                json!({ "name": "Arena", "platform": platform, "version": "2.0" }),
            )
            .await;
        assert_eq!(opened, json!({ "result": true }));
    }
    let event = server
        .call_in(
            "arena",
            "api.analytics",
            "event",
            json!({ "name": "boss_beaten", "value": 1 }),
        )
        .await;
    assert_eq!(event, json!({ "result": true }));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        chrome.open("/analytics?scope=arena").await;
        if chrome.text("#opens-total").await == "3" {
            break;
        }
        assert!(Instant::now() < deadline, "the opens never showed");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let page = chrome.text("main").await;
    assert!(
        page.contains("boss_beaten") && page.contains("android"),
        "{page}"
    );
    chrome.open("/?scope=arena").await;
    assert_eq!(chrome.text("#opens-today").await, "3");

    // Unchecking `create` for the scope refuses it over the wire, in that scope only.
    chrome.open("/scopes?scope=arena").await;
    let create = "input[value='api.users/create']";
    assert_eq!(
        chrome.attr(create, "checked").await.as_deref(),
        Some("true")
    );
    chrome.click(create).await;
    chrome.press("form[action$='/scopes'] button.primary").await;
    chrome.open("/scopes?scope=arena").await;
    assert_eq!(
        chrome.attr(create, "checked").await,
        None,
        "saved unchecked"
    );
    let answer = server
        .call_in(
            "arena",
            "api.users",
            "create",
            json!({ "username": "eve", "password": md5_hex("pw-123456") }),
        )
        .await;
    assert_eq!(answer["result"]["status"], 810, "{answer}");
    assert_eq!(
        answer["result"]["error"],
        "Action not permitted for this scope."
    );
    create_user(&server, "elsewhere", "eve", "eve@example.com").await;
    chrome.close().await;
}

/// The pages the README shows, over a month of history: the chart draws a bar a day. With
/// `CORONIUM_SCREENSHOTS=docs` it refreshes `docs/console-*.png`.
#[tokio::test]
async fn the_console_pages_over_a_month_of_history() {
    let db = TestDb::new().await;
    assert!(add_admin(&db, ADMIN, PASSWORD).status.success());
    let server = TestServer::start(&db, |_| {});
    let names = [
        ("mira", "mira@example.com"),
        ("tomas", "tomas@example.org"),
        ("aiko", "aiko@example.jp"),
        ("lena", "lena@example.de"),
        ("omar", "omar@example.com"),
        ("priya", "priya@example.in"),
        ("jonas", "jonas@example.se"),
        ("chen", "chen@example.com"),
    ];
    let mut ids = Vec::new();
    for (name, email) in names {
        ids.push(create_user(&server, "arena", name, email).await);
    }
    for _ in 0..3 {
        let login = log_in(&server, "arena", "mira").await;
        assert!(login["result"]["user_id"].is_string(), "{login}");
    }
    let updated = server
        .call_in(
            "arena",
            "api.users",
            "update",
            json!({ "user_id": ids[0], "update": { "group": "vip",
                    "extra": { "level": 12, "title": "Captain", "color": "teal" } } }),
        )
        .await;
    assert!(updated["result"].is_object(), "{updated}");
    // A month of joins and logins before today.
    db.client()
        .await
        .execute(
            "INSERT INTO user_stats_daily (scope, day, joins, logins)
             SELECT 'arena', (now() AT TIME ZONE 'UTC')::date - d,
                    (20 + 12 * sin(d / 3.0))::bigint, (140 + 60 * cos(d / 4.0) + 3 * d)::bigint
             FROM generate_series(1, 29) AS d",
            &[],
        )
        .await
        .unwrap();
    db.client()
        .await
        .execute(
            "INSERT INTO analytics_daily (scope, day, metric, key, count)
             SELECT 'arena', (now() AT TIME ZONE 'UTC')::date - d, 'opens', '',
                    (400 + 90 * sin(d / 5.0))::bigint
             FROM generate_series(0, 29) AS d",
            &[],
        )
        .await
        .unwrap();
    let chrome = Chrome::start(&server).await;
    // The sign-in page, the first thing an operator sees, has the console's stylesheet too.
    chrome.open("/login").await;
    let styled = |chrome: &Chrome| {
        let client = chrome.client().clone();
        async move {
            client
                .execute(
                    "const s = document.styleSheets[0];
                     return s && s.href.endsWith('/_coronium/admin/assets/console.css')
                         ? s.cssRules.length : 0;",
                    vec![],
                )
                .await
                .unwrap()
        }
    };
    let rules = styled(&chrome).await;
    assert!(
        rules.as_u64().unwrap_or(0) > 10,
        "the sign-in page's stylesheet: {rules}"
    );
    chrome.screenshot("console-sign-in").await;
    chrome.open("/no-such-page").await;
    let rules = styled(&chrome).await;
    assert!(
        rules.as_u64().unwrap_or(0) > 10,
        "a Not found page's stylesheet: {rules}"
    );
    chrome.sign_in().await;

    chrome.open("/?scope=arena").await;
    let bars = chrome
        .client()
        .find_all(Locator::Css("svg rect.joins"))
        .await
        .unwrap();
    assert_eq!(bars.len(), 30, "a bar a day");
    assert_eq!(chrome.text("#total-users").await, "8");
    chrome.screenshot("console-dashboard").await;

    chrome.open("/users?scope=arena").await;
    let rows = chrome
        .client()
        .find_all(Locator::Css("table.users tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 8);
    chrome.screenshot("console-users").await;

    chrome.open(&format!("/users/{}", ids[0])).await;
    assert!(chrome.text("table.extra").await.contains("Captain"));
    chrome.screenshot("console-user").await;
    chrome.close().await;
}
