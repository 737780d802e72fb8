//! The failed-login throttle (kept in PostgreSQL): one count per account whatever spelling finds
//! it, shared by instances, per client address so a stranger cannot lock a player out, with
//! progressive delays, per-address limits, `X-Forwarded-For` only from trusted proxies, and
//! `coronium users unlock`.

use coronium::users::password::md5_hex;
use coronium::wire::client::{signed_headers, unix_now};
use serde_json::{Value, json};

use crate::common::{TestDb, TestServer, coronium};

const INVALID: &str = "Invalid username or password.";

/// A server that believes `X-Forwarded-For` from the tests (they connect from 127.0.0.1).
fn behind_proxy(db: &TestDb, env: &[(&str, &str)]) -> TestServer {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    TestServer::start(db, move |cmd| {
        cmd.env("CORONIUM_TRUSTED_PROXIES", "127.0.0.1");
        for (k, v) in env {
            cmd.env(k, v);
        }
    })
}

/// Signed headers of a call, as if from the client address `from` (through the proxy).
fn headers_from(key: &str, project: &str, action: &str, from: &str) -> Vec<(&'static str, String)> {
    let mut headers = signed_headers(key, project, action, "default", unix_now());
    headers.push(("X-Forwarded-For", from.to_owned()));
    headers
}

/// A wire login, as if from the client address `from`.
async fn login_from(server: &TestServer, from: &str, params: Value) -> Value {
    let headers = headers_from(&server.key, "api.users", "login", from);
    server.post(&headers, params.to_string().as_bytes()).await.1
}

fn by_name(name: &str, password: &str) -> Value {
    json!({"username": name, "password": md5_hex(password)})
}

fn by_email(email: &str, password: &str) -> Value {
    json!({"email": email, "password": md5_hex(password)})
}

async fn create(server: &TestServer, name: &str, email: &str) {
    let created = server
        .call(
            "api.users",
            "create",
            json!({"username": name, "email": email, "password": md5_hex("right")}),
        )
        .await;
    assert!(created["result"]["user_id"].is_string(), "{created}");
}

/// The error message of an answer, and its status.
fn failure(answer: &Value) -> (String, i64) {
    (
        answer["result"]["error"].as_str().unwrap_or("").to_owned(),
        answer["result"]["status"].as_i64().unwrap_or(0),
    )
}

fn is_throttled(answer: &Value) -> bool {
    let (message, status) = failure(answer);
    status == 603 && message.starts_with("Too many failed login attempts; try again in ")
}

fn logged_in_as(answer: &Value, name: &str) -> bool {
    answer["result"]["username"] == json!(name)
}

#[tokio::test]
async fn every_spelling_that_finds_the_account_counts_against_it() {
    let db = TestDb::new().await;
    let server = behind_proxy(&db, &[]);
    create(&server, "victim", "victim@example.com").await;
    let from = "198.51.100.20";
    // Each of these finds the account (PostgreSQL's lower() folds İ to i, as the lookup does).
    let spellings = [
        by_name("victim", "right"),
        by_name("VICTIM", "right"),
        by_name("vİctim", "right"),
        by_email("Victim@Example.com", "right"),
    ];
    for spelling in &spellings {
        assert!(
            logged_in_as(&login_from(&server, from, spelling.clone()).await, "victim"),
            "{spelling} finds the account"
        );
    }
    // Ten failures, spread over the spellings.
    let wrong = [
        by_name("victim", "wrong"),
        by_name("Victim", "wrong"),
        by_name("vİctim", "wrong"),
        by_name("VİCTİM", "wrong"),
        by_email("victim@example.com", "wrong"),
        by_email("VICTIM@EXAMPLE.COM", "wrong"),
    ];
    for n in 0..10 {
        let answer = login_from(&server, from, wrong[n % wrong.len()].clone()).await;
        assert_eq!(failure(&answer), (INVALID.to_owned(), 603), "failure {n}");
    }
    for spelling in &spellings {
        let answer = login_from(&server, from, spelling.clone()).await;
        assert!(
            is_throttled(&answer),
            "the right password through {spelling} waits: {answer}"
        );
    }
    // Unknown names are throttled alike, so the refusal tells nothing about who exists.
    for _ in 0..10 {
        login_from(&server, from, by_name("nobody", "x")).await;
    }
    assert!(is_throttled(
        &login_from(&server, from, by_name("NOBODY", "x")).await
    ));
    // Another account from the same address is not affected.
    create(&server, "bystander", "bystander@example.com").await;
    assert!(logged_in_as(
        &login_from(&server, from, by_name("bystander", "right")).await,
        "bystander"
    ));
}

#[tokio::test]
async fn a_stranger_cannot_lock_a_player_out_from_another_address() {
    let db = TestDb::new().await;
    let server = behind_proxy(&db, &[]);
    create(&server, "player", "player@example.com").await;
    let stranger = "203.0.113.66";
    // The stranger keeps hammering, past the limit.
    for _ in 0..25 {
        login_from(&server, stranger, by_name("player", "guess")).await;
    }
    assert!(is_throttled(
        &login_from(&server, stranger, by_name("player", "right")).await
    ));
    // The player, elsewhere, gets in at once.
    assert!(logged_in_as(
        &login_from(&server, "192.0.2.10", by_name("player", "right")).await,
        "player"
    ));
}

#[tokio::test]
async fn forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() {
    let db = TestDb::new().await;
    // No trusted proxies: the header is the client's own claim.
    let server = TestServer::start(&db, |_| {});
    create(&server, "target", "target@example.com").await;
    for n in 0..10 {
        let answer = login_from(&server, &format!("198.51.100.{n}"), by_name("target", "x")).await;
        assert_eq!(failure(&answer), (INVALID.to_owned(), 603));
    }
    assert!(
        is_throttled(&login_from(&server, "198.51.100.99", by_name("target", "right")).await),
        "a made-up X-Forwarded-For does not buy fresh attempts"
    );
}

#[tokio::test]
async fn two_instances_share_the_throttle_and_it_outlives_them() {
    let db = TestDb::new().await;
    let first = behind_proxy(&db, &[]);
    let second = behind_proxy(&db, &[]);
    create(&first, "shared", "shared@example.com").await;
    let from = "198.51.100.5";
    for n in 0..10 {
        let server = if n % 2 == 0 { &first } else { &second };
        let answer = login_from(server, from, by_name("shared", "wrong")).await;
        assert_eq!(failure(&answer), (INVALID.to_owned(), 603));
    }
    for server in [&first, &second] {
        assert!(is_throttled(
            &login_from(server, from, by_name("shared", "right")).await
        ));
    }
    drop((first, second));
    let restarted = behind_proxy(&db, &[]);
    assert!(
        is_throttled(&login_from(&restarted, from, by_name("shared", "right")).await),
        "a restart forgets nothing"
    );
}

#[tokio::test]
async fn past_the_limit_each_attempt_waits_twice_as_long_and_success_clears() {
    let db = TestDb::new().await;
    let server = behind_proxy(&db, &[("CORONIUM_LOGIN_THROTTLE_PER_ACCOUNT_ADDRESS", "2")]);
    create(&server, "slow", "slow@example.com").await;
    let from = "198.51.100.7";
    for _ in 0..2 {
        login_from(&server, from, by_name("slow", "wrong")).await;
    }
    let refused = login_from(&server, from, by_name("slow", "right")).await;
    assert_eq!(
        failure(&refused),
        (
            "Too many failed login attempts; try again in 1 s.".to_owned(),
            603
        )
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    // After the wait the password is checked again; a wrong one doubles the next wait.
    let answer = login_from(&server, from, by_name("slow", "wrong")).await;
    assert_eq!(failure(&answer), (INVALID.to_owned(), 603));
    let refused = login_from(&server, from, by_name("slow", "right")).await;
    assert_eq!(
        failure(&refused).0,
        "Too many failed login attempts; try again in 2 s."
    );
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert!(logged_in_as(
        &login_from(&server, from, by_name("slow", "right")).await,
        "slow"
    ));
    // The success cleared this address's count: two fresh failures before any wait.
    for _ in 0..2 {
        let answer = login_from(&server, from, by_name("slow", "wrong")).await;
        assert_eq!(failure(&answer), (INVALID.to_owned(), 603));
    }
}

#[tokio::test]
async fn an_address_spraying_names_and_a_swarm_on_one_account_are_limited() {
    let db = TestDb::new().await;
    let server = behind_proxy(
        &db,
        &[
            ("CORONIUM_LOGIN_THROTTLE_PER_ADDRESS", "5"),
            ("CORONIUM_LOGIN_THROTTLE_PER_ACCOUNT", "6"),
        ],
    );
    create(&server, "popular", "popular@example.com").await;
    // One address, five different names: then every name waits from there.
    let sprayer = "198.51.100.50";
    for n in 0..5 {
        let answer = login_from(&server, sprayer, by_name(&format!("user{n}"), "x")).await;
        assert_eq!(failure(&answer), (INVALID.to_owned(), 603));
    }
    assert!(is_throttled(
        &login_from(&server, sprayer, by_name("popular", "right")).await
    ));
    // Six addresses, one failure each on one account: the account waits, from anywhere.
    for n in 0..6 {
        let answer = login_from(&server, &format!("192.0.2.{n}"), by_name("popular", "x")).await;
        assert_eq!(failure(&answer), (INVALID.to_owned(), 603));
    }
    assert!(is_throttled(
        &login_from(&server, "192.0.2.200", by_name("popular", "right")).await
    ));
}

#[tokio::test]
async fn users_unlock_clears_an_account_from_every_address() {
    let db = TestDb::new().await;
    let server = behind_proxy(&db, &[]);
    create(&server, "locked", "locked@example.com").await;
    for from in ["198.51.100.1", "198.51.100.2"] {
        for _ in 0..10 {
            login_from(&server, from, by_name("locked", "wrong")).await;
        }
        assert!(is_throttled(
            &login_from(&server, from, by_name("locked", "right")).await
        ));
    }
    let out = coronium(Some(&db))
        .args([
            "users",
            "unlock",
            "LOCKED@example.com",
            "--scope",
            "default",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("cleared 3 failed-login counter(s)"),
        "{printed}"
    );
    for from in ["198.51.100.1", "198.51.100.2"] {
        assert!(logged_in_as(
            &login_from(&server, from, by_name("locked", "right")).await,
            "locked"
        ));
    }
}

/// Server-side code logs players in for the request's client: the same throttle holds.
#[tokio::test]
async fn lua_logins_count_against_the_request_client() {
    let db = TestDb::new().await;
    let root = crate::common::scratch_dir("throttle-projects");
    crate::common::write_project(
        &root,
        "Game",
        &[(
            "main.lua",
            r#"local api = core.api()
function api.signIn(input)
  return core.users.login({username = input.name, password = input.password})
end
return api"#,
        )],
    );
    let server = crate::common::serve_projects(
        &db,
        &root,
        "2",
        &[("CORONIUM_TRUSTED_PROXIES", "127.0.0.1")],
    );
    create(&server, "luaplayer", "luaplayer@example.com").await;
    let sign_in = |from: &'static str, password: &'static str| {
        let headers = headers_from(&server.key, "Game", "signIn", from);
        let body = json!({"name": "luaplayer", "password": password}).to_string();
        let server = &server;
        async move { server.post(&headers, body.as_bytes()).await.1 }
    };
    for _ in 0..10 {
        assert_eq!(failure(&sign_in("198.51.100.30", "wrong").await).1, 603);
    }
    assert!(is_throttled(&sign_in("198.51.100.30", "right").await));
    assert!(logged_in_as(
        &sign_in("192.0.2.30", "right").await,
        "luaplayer"
    ));
}

/// Guesses sent all at once are each counted before the next one is let through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_guesses_cannot_slip_past_the_limit_together() {
    let db = TestDb::new().await;
    let server = behind_proxy(&db, &[]);
    create(&server, "raced", "raced@example.com").await;
    let mut guesses = tokio::task::JoinSet::new();
    for n in 0..40 {
        let (addr, key) = (server.addr.clone(), server.key.clone());
        guesses.spawn(async move {
            let headers = headers_from(&key, "api.users", "login", "198.51.100.77");
            let body = by_name("raced", &format!("guess{n}")).to_string();
            coronium::wire::client::post(&addr, &headers, body.into_bytes())
                .await
                .unwrap()
                .1
        });
    }
    let (mut checked, mut held_back) = (0, 0);
    while let Some(answer) = guesses.join_next().await {
        let answer = answer.unwrap();
        if is_throttled(&answer) {
            held_back += 1;
        } else {
            assert_eq!(failure(&answer), (INVALID.to_owned(), 603));
            checked += 1;
        }
    }
    assert_eq!((checked, held_back), (10, 30));
}

/// An address already held back can send made-up names for ever: the table does not grow.
#[tokio::test]
async fn a_held_back_address_adds_no_rows() {
    let db = TestDb::new().await;
    let server = behind_proxy(&db, &[("CORONIUM_LOGIN_THROTTLE_PER_ADDRESS", "3")]);
    let from = "198.51.100.88";
    for n in 0..3 {
        login_from(&server, from, by_name(&format!("made-up-{n}"), "x")).await;
    }
    let rows = || async {
        db.client()
            .await
            .query_one("SELECT count(*) FROM login_failures", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let before = rows().await;
    assert_eq!(before, 7, "one address row, and two rows per name");
    for n in 0..50 {
        let answer = login_from(&server, from, by_name(&format!("flood-{n}"), "x")).await;
        assert!(is_throttled(&answer), "{answer}");
    }
    assert_eq!(rows().await, before);
}

/// A pending user's login records no event, but clears the count all the same.
#[tokio::test]
async fn a_pending_users_successful_login_clears_its_count() {
    let db = TestDb::new().await;
    let server = behind_proxy(&db, &[]);
    let created = server
        .call(
            "api.users",
            "create",
            json!({
                "username": "waiting",
                "email": "waiting@example.com",
                "password": md5_hex("right"),
                "confirmation": {"from_email": "game@example.com", "subject": "Welcome"}
            }),
        )
        .await;
    assert_eq!(
        created["result"]["confirmation"],
        json!("pending"),
        "{created}"
    );
    let from = "198.51.100.44";
    for _ in 0..5 {
        login_from(&server, from, by_name("waiting", "wrong")).await;
    }
    let answer = login_from(&server, from, by_name("waiting", "right")).await;
    assert_eq!(answer["result"]["active"], json!(false), "{answer}");
    for n in 0..9 {
        let answer = login_from(&server, from, by_name("waiting", "wrong")).await;
        assert_eq!(failure(&answer), (INVALID.to_owned(), 603), "failure {n}");
    }
}

/// The probe's lockout, and its variants: strangers from 256 addresses (IPv4, and every /64 of
/// an IPv6 /56) fail logins against one player for as long as they like. The owner, from an
/// address they logged in from before, always gets in: the account-wide counter that strangers
/// fill does not hold a known address back. (From an address never seen before, the owner is
/// slowed like any stranger: that case is not guaranteed.)
#[tokio::test]
async fn no_number_of_strangers_locks_an_owner_out() {
    let db = TestDb::new().await;
    let server = behind_proxy(&db, &[]);
    create(&server, "owner", "owner@example.com").await;
    // The owner's home address and phone network, each used once.
    assert!(logged_in_as(
        &login_from(&server, "198.51.100.7", by_name("owner", "right")).await,
        "owner"
    ));
    assert!(logged_in_as(
        &login_from(&server, "2001:db8:77:1::5", by_name("owner", "right")).await,
        "owner"
    ));
    let mut strangers: Vec<String> = (0..128).map(|i| format!("203.0.113.{i}")).collect();
    strangers.extend((0..128).map(|i| format!("2001:db8:66:{i:x}00::1")));
    for round in 0..3 {
        let mut refused = 0;
        for stranger in &strangers {
            let answer = login_from(&server, stranger, by_name("owner", "wrong")).await;
            assert!(!logged_in_as(&answer, "owner"));
            refused += usize::from(is_throttled(&answer));
        }
        // The account-wide limit has long been reached: strangers are held back.
        assert!(refused > 0, "round {round}: strangers are slowed");
        for home in ["198.51.100.7", "2001:db8:77:1::9"] {
            let answer = login_from(&server, home, by_name("owner", "right")).await;
            assert!(
                logged_in_as(&answer, "owner"),
                "round {round}, from {home}: {answer}"
            );
        }
        // A variant: by email, the same account, the same guarantee.
        let answer = login_from(
            &server,
            "198.51.100.7",
            by_email("owner@example.com", "right"),
        )
        .await;
        assert!(logged_in_as(&answer, "owner"), "{answer}");
    }
    // A new address is slowed like the strangers are (said, not guaranteed).
    let answer = login_from(&server, "192.0.2.200", by_name("owner", "right")).await;
    assert!(
        is_throttled(&answer) || logged_in_as(&answer, "owner"),
        "{answer}"
    );
}

/// One IPv6 allocation cannot pose as many sprayers: its /64s share a wider budget (its /48),
/// so spraying made-up names from 300 /64s of one /48 is held back long before 300 × the
/// per-address limit.
#[tokio::test]
async fn an_ipv6_allocation_is_counted_as_one_network() {
    let db = TestDb::new().await;
    let server = behind_proxy(&db, &[("CORONIUM_LOGIN_THROTTLE_PER_ADDRESS", "5")]);
    let mut held_back = 0;
    let mut attempts = 0;
    for net in 0..30 {
        for i in 0..5 {
            let from = format!("2001:db8:99:{net:x}::{i}");
            let answer =
                login_from(&server, &from, by_name(&format!("nobody{net}-{i}"), "x")).await;
            attempts += 1;
            held_back += usize::from(is_throttled(&answer));
        }
    }
    // 5 per /64 and 20 per /48: about the /48's limit, not 30 /64s' worth (150); past the limit
    // one more gets through each time a growing wait ends (1 s, 2 s, 4 s...), a few on a slow
    // machine.
    let let_through = attempts - held_back;
    assert!(
        (20..40).contains(&let_through),
        "{held_back} of {attempts} held back"
    );
}

/// The console's sign-ins have the same property, and counters of their own: strangers from
/// many addresses cannot keep an admin out at an address they signed in from before, and a
/// flood of failed player logins from the admin's address does not hold the admin back.
#[tokio::test]
async fn strangers_cannot_lock_an_admin_out_of_the_console() {
    use crate::console::{ADMIN, Browser, PASSWORD, add_admin};
    let db = TestDb::new().await;
    assert!(add_admin(&db, ADMIN, PASSWORD).status.success());
    let server = behind_proxy(&db, &[("CORONIUM_LOGIN_THROTTLE_PER_ADDRESS", "5")]);
    let mut admin = Browser::new(&server.addr);
    admin.forwarded_for = Some("198.51.100.20".into());
    assert_eq!(admin.sign_in(ADMIN, PASSWORD).await.status, 303);
    // Failed player logins from the admin's own address, past the players' per-address limit.
    for i in 0..10 {
        login_from(
            &server,
            "198.51.100.20",
            by_name(&format!("nobody{i}"), "x"),
        )
        .await;
    }
    // 5 wrong passwords from each of 8 addresses: past the admin account's limit of 20.
    let mut held_back = 0;
    for i in 0..8 {
        let mut stranger = Browser::new(&server.addr);
        stranger.forwarded_for = Some(format!("203.0.113.{i}"));
        for _ in 0..5 {
            held_back += usize::from(stranger.sign_in(ADMIN, "guess").await.status == 429);
        }
    }
    assert!(held_back > 0, "strangers are slowed");
    let mut again = Browser::new(&server.addr);
    again.forwarded_for = Some("198.51.100.20".into());
    assert_eq!(
        again.sign_in(ADMIN, PASSWORD).await.status,
        303,
        "the admin gets in"
    );
}
