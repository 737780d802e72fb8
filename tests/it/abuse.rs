//! What a hostile client holding the shipped key can do to other players, and the bounds that
//! stop it: each test is an attack that once worked, and states the property that now holds.

use crate::console::md5_hex;
use serde_json::json;

use crate::common::{TEST_HASH, TestDb, TestServer};

/// Sends `count` analytics events named `name(i)` in `scope`, 16 at a time; their answers.
async fn send_events(
    server: &TestServer,
    scope: &str,
    count: usize,
    name: impl Fn(usize) -> String,
) -> Vec<serde_json::Value> {
    let mut answers = Vec::new();
    let names: Vec<String> = (0..count).map(name).collect();
    for chunk in names.chunks(16) {
        let calls = chunk.iter().map(|name| {
            let (addr, key, scope) = (server.addr.clone(), server.key.clone(), scope.to_owned());
            let name = name.clone();
            tokio::spawn(async move {
                coronium::wire::client::call(
                    &addr,
                    &key,
                    "api.analytics",
                    "event",
                    &scope,
                    &json!({ "name": name }),
                )
                .await
                .unwrap()
            })
        });
        for call in calls.collect::<Vec<_>>() {
            answers.push(call.await.unwrap());
        }
    }
    answers
}

/// Records that PostgreSQL cannot store (a NUL in a name) are refused one by one; they never
/// take the honest records batched with them down.
#[tokio::test]
async fn one_clients_nul_loses_no_one_elses_analytics() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |_| {});
    let answers = send_events(&server, "mixed", 400, |i| {
        if i % 4 == 0 {
            format!("bad\u{0}{i}")
        } else {
            "honest".to_owned()
        }
    })
    .await;
    for (i, answer) in answers.iter().enumerate() {
        if i % 4 == 0 {
            assert_eq!(answer["result"]["status"], 801, "{answer}");
            assert!(
                answer["result"]["error"].as_str().unwrap().contains("NUL"),
                "{answer}"
            );
        } else {
            assert_eq!(answer, &json!({ "result": true }), "record {i}");
        }
    }
    // NUL in an event's value, and in an open's fields, is refused the same way.
    let value = server
        .call_in(
            "mixed",
            "api.analytics",
            "event",
            json!({ "name": "x", "value": { "k\u{0}": 1 } }),
        )
        .await;
    assert_eq!(value["result"]["status"], 801, "{value}");
    let opened = server
        .call_in(
            "mixed",
            "api.analytics",
            "appOpened",
            json!({ "platform": "ios\u{0}" }),
        )
        .await;
    assert_eq!(opened["result"]["status"], 801, "{opened}");
    let stored: i64 = db
        .client()
        .await
        .query_one(
            "SELECT (SELECT count(*) FROM analytics_inbox WHERE scope = 'mixed')
                  + (SELECT count(*) FROM analytics_events WHERE scope = 'mixed')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 300, "every honest record is stored");
}

/// Made-up event names cannot grow the daily counts without bound: past the day's cap of
/// distinct keys per scope and metric, the rest are counted together as "(other)", and nothing
/// is lost from the totals.
#[tokio::test]
async fn made_up_event_names_are_counted_within_a_cap() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |cmd| {
        cmd.env("CORONIUM_ANALYTICS_MAX_KEYS_PER_DAY", "5");
    });
    // Two keys that the day knows first, then a flood of new ones.
    send_events(&server, "capped", 4, |i| format!("known{}", i % 2)).await;
    let app = db
        .app_configured(|config| config.analytics.max_keys_per_day = 5)
        .await;
    let analytics = app.services(1).unwrap().analytics;
    analytics.roll_up().await.unwrap();
    let answers = send_events(&server, "capped", 60, |i| format!("made-up-{i}")).await;
    assert!(answers.iter().all(|a| a == &json!({ "result": true })));
    send_events(&server, "capped", 2, |i| format!("known{i}")).await;
    analytics.roll_up().await.unwrap();
    let client = db.client().await;
    let rows = client
        .query(
            "SELECT key, count FROM analytics_daily WHERE scope = 'capped' AND metric = 'event'
             ORDER BY key",
            &[],
        )
        .await
        .unwrap();
    let keys: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(keys.len(), 6, "5 keys and (other): {keys:?}");
    assert!(keys.contains(&("known0".into(), 3)), "{keys:?}");
    assert!(keys.contains(&("known1".into(), 3)), "{keys:?}");
    let total: i64 = keys.iter().map(|(_, n)| n).sum();
    assert_eq!(total, 66, "every event is counted: {keys:?}");
    let other = keys.iter().find(|(k, _)| k == "(other)").map(|(_, n)| *n);
    assert_eq!(other, Some(57), "{keys:?}");
}

/// Roll-ups started together (the periodic one, the console's, another instance's) take turns:
/// none fails on a deadlock, and each record is counted once.
#[tokio::test]
async fn roll_ups_started_together_take_turns() {
    let db = TestDb::new().await;
    let client = db.client().await;
    // An inbox of many keys in two scopes, as an event flood leaves it.
    client
        .execute(
            "INSERT INTO analytics_inbox (scope, kind, name, data)
             SELECT 'flood' || (i % 2), 'event', 'e' || (i % 700), '{}'::jsonb
             FROM generate_series(1, 30000) i",
            &[],
        )
        .await
        .unwrap();
    let app = db.app_with(TEST_HASH).await;
    let rolls: Vec<_> = (0..6)
        .map(|i| {
            let analytics = app.services(1).unwrap().analytics;
            tokio::spawn(async move {
                if i % 2 == 0 {
                    analytics.roll_up().await
                } else {
                    analytics.roll_up_unless_busy().await
                }
            })
        })
        .collect();
    let mut moved = 0;
    for roll in rolls {
        moved += roll.await.unwrap().expect("no roll-up fails");
    }
    // The skipping ones may have left a batch behind; a last one in turn takes the rest.
    moved += app.services(1).unwrap().analytics.roll_up().await.unwrap();
    assert_eq!(moved, 30000);
    let counted: i64 = client
        .query_one(
            "SELECT sum(count)::bigint FROM analytics_daily WHERE metric = 'event'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(counted, 30000);
}

/// A user made over the wire; its id.
async fn create_user(server: &TestServer, scope: &str, username: &str) -> String {
    let answer = server
        .call_in(
            scope,
            "api.users",
            "create",
            json!({ "username": username, "password": md5_hex("pw-123456") }),
        )
        .await;
    answer["result"]["user_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"))
        .to_owned()
}

/// `extra` keys `prefix0..prefix{count}`, each with a value of `len` characters.
fn extra_keys(prefix: &str, count: usize, len: usize) -> serde_json::Value {
    let map: serde_json::Map<String, serde_json::Value> = (0..count)
        .map(|i| (format!("{prefix}{i}"), json!("v".repeat(len))))
        .collect();
    serde_json::Value::Object(map)
}

/// Patches merge, but a user's whole `extra` has a bound that no number of updates passes, not
/// even sent together: past it an update is answered 801 naming the limit and changes nothing.
#[tokio::test]
async fn no_number_of_updates_grows_extra_past_its_bound() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |_| {});
    let id = create_user(&server, "default", "hoarder").await;
    // 40 patches of ~10 KiB sent at once: only as many as fit in 64 KiB apply.
    let patches = (0..40)
        .map(|i| json!({ "user_id": id, "update": { "extra": extra_keys(&format!("p{i}_"), 10, 1000) } }))
        .collect();
    let updates = server
        .call_all("default", "api.users", "update", patches)
        .await;
    let mut applied = 0;
    for answer in updates {
        if answer["result"]["user_id"].is_string() {
            applied += 1;
        } else {
            assert_eq!(answer["result"]["status"], 801, "{answer}");
            let error = answer["result"]["error"].as_str().unwrap();
            assert!(error.contains("65536 bytes"), "{error}");
        }
    }
    assert!((1..=6).contains(&applied), "{applied} patches applied");
    let client = db.client().await;
    let stored: i32 = client
        .query_one(
            "SELECT octet_length(extra::text) FROM users WHERE username = 'hoarder'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(stored <= 65536, "extra is {stored} bytes");
    // The bound on keys: small values, many keys.
    let many = create_user(&server, "default", "many-keys").await;
    let first = server
        .call(
            "api.users",
            "update",
            json!({ "user_id": many, "update": { "extra": extra_keys("a", 600, 1) } }),
        )
        .await;
    assert!(first["result"]["user_id"].is_string(), "{first}");
    let second = server
        .call(
            "api.users",
            "update",
            json!({ "user_id": many, "update": { "extra": extra_keys("b", 600, 1) } }),
        )
        .await;
    assert_eq!(second["result"]["status"], 801, "{second}");
    assert!(
        second["result"]["error"]
            .as_str()
            .unwrap()
            .contains("1000 keys")
    );
    // A variant: the bound holds on create and on register as well (made of one full patch of
    // keys), and for an unknown user the answer is still 604.
    let create = server
        .call(
            "api.users",
            "create",
            json!({ "username": "born-big", "password": md5_hex("pw-123456"),
                    "extra": extra_keys("k", 1500, 1) }),
        )
        .await;
    assert_eq!(create["result"]["status"], 801, "{create}");
    let unknown = server
        .call(
            "api.users",
            "update",
            json!({ "user_id": "00000000-0000-4000-8000-000000000000",
                    "update": { "extra": { "a": 1 } } }),
        )
        .await;
    assert_eq!(unknown["result"]["status"], 604, "{unknown}");
}

/// A record stored before the bound existed (larger than it) can still shrink: an update that
/// does not grow `extra` applies; one that grows it is refused.
#[tokio::test]
async fn a_record_past_the_bound_can_still_shrink() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |_| {});
    let id = create_user(&server, "default", "legacy").await;
    db.client()
        .await
        .execute(
            "UPDATE users SET extra = (SELECT jsonb_object_agg('k' || i, repeat('x', 100))
                                       FROM generate_series(1, 2000) i)
             WHERE username = 'legacy'",
            &[],
        )
        .await
        .unwrap();
    let grow = server
        .call(
            "api.users",
            "update",
            json!({ "user_id": id, "update": { "extra": { "new": 1 } } }),
        )
        .await;
    assert_eq!(grow["result"]["status"], 801, "{grow}");
    let shrink = server
        .call(
            "api.users",
            "update",
            json!({ "user_id": id, "update": { "extra": { "k1": "_NULL", "k2": "short" } } }),
        )
        .await;
    assert!(shrink["result"]["user_id"].is_string(), "{shrink}");
    assert_eq!(shrink["result"]["extra"]["k2"], "short");
}

const FAT: &str = r#"
local api = core.api()
function api.fat(input)
  local users, err = core.users.getWithQuery(input.scope)
  if not users then return core.error(tostring(err), 810) end
  return #users
end
function api.ping() return "pong" end
return api
"#;

/// Records far larger than a Lua state (written before the bound, or many at once) enter Lua
/// under the state's memory limit: the query fails with a memory error instead of filling the
/// state past its limit, and the worker goes on serving.
#[tokio::test]
async fn large_records_enter_lua_under_its_memory_limit() {
    let db = TestDb::new().await;
    let root = crate::common::scratch_dir("fat-records");
    crate::common::write_project(&root, "Fat", &[("main.lua", FAT)]);
    let server =
        crate::common::serve_projects(&db, &root, "1", &[("CORONIUM_LUA_MEMORY_LIMIT_MB", "8")]);
    // 200 users of 100 KiB each (a query answers 100 of them): 10 MB, past the 8 MB state
    // (every value differs: Luau keeps one copy of equal strings).
    db.client()
        .await
        .execute(
            "INSERT INTO users (user_id, scope, username, extra)
             SELECT gen_random_uuid(), 'fat', 'u' || i,
                    (SELECT jsonb_object_agg('k' || j, repeat(md5(i || '.' || j), 30))
                     FROM generate_series(1, 100) j)
             FROM generate_series(1, 200) i",
            &[],
        )
        .await
        .unwrap();
    let fat = server.call("Fat", "fat", json!({ "scope": "fat" })).await;
    assert_eq!(fat["result"]["status"], 810, "{fat}");
    assert_eq!(
        server.call("Fat", "ping", json!({})).await,
        json!({ "result": "pong" })
    );
    // A few of the same records fit and are served.
    db.client()
        .await
        .execute(
            "INSERT INTO users (user_id, scope, username, extra)
             SELECT gen_random_uuid(), 'few', username, extra FROM users WHERE scope = 'fat' LIMIT 5",
            &[],
        )
        .await
        .unwrap();
    let few = server.call("Fat", "fat", json!({ "scope": "few" })).await;
    assert_eq!(few, json!({ "result": 5 }));
}

/// The console's page of a huge record (stored before the bound) stays small: the first keys,
/// each value cut, and how many more there are.
#[tokio::test]
async fn the_console_page_of_a_huge_record_stays_small() {
    use crate::console::{ADMIN, Browser, PASSWORD, add_admin};
    let db = TestDb::new().await;
    assert!(add_admin(&db, ADMIN, PASSWORD).status.success());
    let server = TestServer::start(&db, |_| {});
    let id = create_user(&server, "default", "huge").await;
    db.client()
        .await
        .execute(
            "UPDATE users SET extra = (SELECT jsonb_object_agg('k' || i, repeat(md5(i::text), 5))
                                       FROM generate_series(1, 36000) i)
             WHERE username = 'huge'",
            &[],
        )
        .await
        .unwrap();
    let mut browser = Browser::new(&server.addr);
    assert_eq!(browser.sign_in(ADMIN, PASSWORD).await.status, 303);
    let page = browser.get(&format!("/_coronium/admin/users/{id}")).await;
    assert_eq!(page.status, 200);
    assert!(page.body.len() < 200_000, "{} bytes", page.body.len());
    assert!(
        page.body.contains("35800 more keys are not shown"),
        "{}",
        &page.body[..2000.min(page.body.len())]
    );
}

/// A metric's value in a `/metrics` page (0 when it is not there yet).
fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// A signed `api.users` call as raw HTTP/1.1 bytes, for clients that misbehave after sending.
fn raw_users_call(addr: &str, key: &str, action: &str, params: &serde_json::Value) -> String {
    let body = params.to_string();
    let headers = coronium::wire::client::signed_headers(
        key,
        "api.users",
        action,
        "default",
        coronium::wire::client::unix_now(),
    );
    let mut request = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    request
}

/// Opens a connection and writes `request` on it; the connection, left unread.
async fn send_raw(addr: &str, request: &str) -> Option<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt as _;
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream.write_all(request.as_bytes()).await.ok()?;
    Some(stream)
}

/// Writes a signed `api.users create` on a fresh connection, then resets it (RST) without
/// reading the answer: a client that is gone before its password is hashed.
async fn abandoned_sign_up(addr: &str, key: &str, i: usize) {
    let params = json!({ "username": format!("gone{i}"), "password": md5_hex("pw-123456") });
    let Some(stream) = send_raw(addr, &raw_users_call(addr, key, "create", &params)).await else {
        return;
    };
    // Long enough for the server to read the request and queue its hash.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    // A zero linger makes the close a reset; it never blocks (the reason for the deprecation).
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(std::time::Duration::ZERO));
    drop(stream);
}

/// Sign-ups whose clients hung up cost no hashing: their queued hashes are skipped, so honest
/// logins during the flood are served (never a 504), and the queue gauge comes back to exactly
/// 0 afterwards (it counted abandoned work for good before).
#[tokio::test]
async fn abandoned_sign_ups_do_not_hold_up_honest_logins() {
    let db = TestDb::new().await;
    // The per-address sign-up budget is off here: this is the flood it would not stop (one
    // sign-up from each of many addresses).
    // The default hashing cost (tests otherwise use a cheap one): each hash takes tens of
    // milliseconds, so the flood's hashes would queue for many seconds if they all ran.
    let server = TestServer::start_process(&db, |cmd| {
        cmd.env("CORONIUM_USERS_SIGN_UPS_PER_ADDRESS_PER_MINUTE", "0")
            .env("CORONIUM_ARGON2_M_COST", "19456")
            .env("CORONIUM_ARGON2_T_COST", "2");
    });
    create_user(&server, "default", "honest").await;
    let flood = {
        let (addr, key) = (server.addr.clone(), server.key.clone());
        tokio::spawn(async move {
            let mut running = tokio::task::JoinSet::new();
            for i in 0..4000 {
                if running.len() >= 32 {
                    running.join_next().await;
                }
                let (addr, key) = (addr.clone(), key.clone());
                running.spawn(async move { abandoned_sign_up(&addr, &key, i).await });
            }
            running.join_all().await;
        })
    };
    // An honest client tries again shortly when told the server is busy, as the answer asks.
    let mut slowest = std::time::Duration::ZERO;
    let (mut logins, mut busy) = (0, 0);
    while !flood.is_finished() {
        let started = std::time::Instant::now();
        let login = loop {
            let login = crate::console::log_in(&server, "default", "honest").await;
            if login["result"]["error"] != "The server is busy; try again shortly." || busy > 100 {
                break login;
            }
            busy += 1;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        slowest = slowest.max(started.elapsed());
        logins += 1;
        assert!(login["result"]["user_id"].is_string(), "{login}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    flood.await.unwrap();
    println!(
        "{logins} honest logins during the flood ({busy} answered busy first), the slowest in {slowest:?}"
    );
    // Every place in the queue is given back, the skipped ones too.
    let mut page = String::new();
    for _ in 0..600 {
        page = crate::common::http_get(&server.addr, "/metrics").await.1;
        if metric(&page, "coronium_password_hash_queue") == 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(metric(&page, "coronium_password_hash_queue"), 0.0, "{page}");
    let skipped = metric(&page, "coronium_password_hashes_skipped_total");
    println!("{skipped} abandoned hashes skipped");
    assert!(skipped > 0.0, "abandoned work is dropped");
}

/// One address cannot sign up without bound: past its budget a sign-up is refused at once
/// (810), before any hashing, while another address still signs up.
#[tokio::test]
async fn one_address_signs_up_within_a_budget() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |cmd| {
        cmd.env("CORONIUM_USERS_SIGN_UPS_PER_ADDRESS_PER_MINUTE", "5");
    });
    let mut refused = 0;
    for i in 0..8 {
        let answer = server
            .call(
                "api.users",
                "create",
                json!({ "username": format!("many{i}"), "password": md5_hex("pw-123456") }),
            )
            .await;
        if answer["result"]["user_id"].is_null() {
            assert_eq!(answer["result"]["status"], 810, "{answer}");
            assert!(
                answer["result"]["error"]
                    .as_str()
                    .unwrap()
                    .contains("sign-ups")
            );
            refused += 1;
        }
    }
    assert_eq!(refused, 3);
    let stored: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 5);
}

const PRINTER: &str = r#"
local api = core.api()
function api.say(input)
  print(input.text)
  core.log(input.text)
  return true
end
return api
"#;

/// No value a client or script sets can start a made-up line in the server's log: a printed
/// text, a `core.log` line, a console sign-in name, each with newlines, carriage returns and
/// terminal escapes, in the human format and in JSON.
#[tokio::test]
async fn no_client_value_forges_a_log_line() {
    use crate::console::{Browser, PASSWORD};
    let forged = "hello\n2026-12-08T00:00:00.000000Z ERROR coronium: FORGED\r\n\u{1b}[2KFORGED\u{2028}FORGED";
    for format in ["human", "json"] {
        let db = TestDb::new().await;
        let root = crate::common::scratch_dir("log-forging");
        crate::common::write_project(&root, "Printer", &[("main.lua", PRINTER)]);
        let server = crate::common::serve_projects_process(
            &db,
            &root,
            "1",
            &[("CORONIUM_LOG_FORMAT", format), ("CORONIUM_LOG", "info")],
        );
        let said = server
            .call("Printer", "say", json!({ "text": forged }))
            .await;
        assert_eq!(said, json!({ "result": true }));
        let mut browser = Browser::new(&server.addr);
        let refused = browser.sign_in(forged, PASSWORD).await;
        assert_eq!(refused.status, 401, "the sign-in is refused");
        // The log is written as the events happen; the last one is the sign-in's.
        let mut log = String::new();
        for _ in 0..100 {
            log = server.log_text();
            if log.contains("console sign-in refused") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(log.contains("console sign-in refused"), "{format}: {log:?}");
        for line in log.lines() {
            assert!(
                !line.contains('\u{1b}') && !line.contains('\r'),
                "{format}: {line:?}"
            );
            assert!(
                !line.trim_start().starts_with("FORGED")
                    && !line.starts_with("2026-12-08T00:00:00"),
                "{format}: a forged line: {line:?}"
            );
            if format == "json" {
                serde_json::from_str::<serde_json::Value>(line)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
            }
        }
        assert!(log.matches("FORGED").count() >= 3 * 3, "{log}");
        // Printed and logged lines name the project and action whose request wrote them.
        let printed: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(" lua: ") || l.contains(r#""target":"lua""#))
            .collect();
        assert_eq!(printed.len(), 2, "{log}");
        for line in printed {
            assert!(
                line.contains("Printer") && line.contains("say"),
                "{format}: {line}"
            );
        }
    }
}

/// Made-up scopes cannot push real ones out of the console: `default` and the scopes with
/// players come first in the picker and on the Scopes page, the dashboard opens on `default`,
/// and any scope is found by how its name begins.
#[tokio::test]
async fn made_up_scopes_do_not_hide_real_ones() {
    use crate::console::{ADMIN, Browser, PASSWORD, add_admin};
    let db = TestDb::new().await;
    assert!(add_admin(&db, ADMIN, PASSWORD).status.success());
    let server = TestServer::start(&db, |_| {});
    create_user(&server, "default", "player").await;
    for i in 0..3 {
        create_user(&server, "arena", &format!("fighter{i}")).await;
    }
    // 520 scopes that sort before every real one, a sign-up each (as the probe made them).
    db.client()
        .await
        .batch_execute(
            "INSERT INTO users (user_id, scope, username)
             SELECT gen_random_uuid(), '!' || lpad(i::text, 6, '0'), 'x' FROM generate_series(0, 519) i;
             INSERT INTO user_stats_daily (scope, day, joins)
             SELECT '!' || lpad(i::text, 6, '0'), current_date, 1 FROM generate_series(0, 519) i;",
        )
        .await
        .unwrap();
    let mut browser = Browser::new(&server.addr);
    assert_eq!(browser.sign_in(ADMIN, PASSWORD).await.status, 303);
    let dashboard = browser.get("/_coronium/admin/").await;
    assert_eq!(dashboard.status, 200, "{}", dashboard.body);
    let picker = &dashboard.body[dashboard.body.find("scope-picker").unwrap()..];
    let first = picker.find("<option").unwrap();
    assert!(
        picker[first..].starts_with(r#"<option value="default" selected>"#),
        "{}",
        &picker[..300]
    );
    let arena = picker.find(r#"value="arena""#).unwrap();
    assert!(arena < picker.find(r#"value="!000000""#).unwrap_or(usize::MAX));
    let scopes = browser.get("/_coronium/admin/scopes").await;
    assert!(scopes.body.contains(">arena</a>"), "{}", scopes.body);
    assert!(scopes.body.contains(">default</a>"));
    // A variant: the made-up scopes are still there to be found, by their beginning.
    let found = browser.get("/_coronium/admin/scopes?find=%2100051").await;
    for i in 510..520 {
        assert!(
            found.body.contains(&format!(">!000{i}</a>")),
            "{}",
            found.body
        );
    }
    assert!(!found.body.contains(">arena</a>"));
    let none = browser
        .get("/_coronium/admin/scopes?find=nothing-like-it")
        .await;
    assert!(none.body.contains("No scope begins with that."));
    // The chosen scope stays chosen across every page, the Audit page included.
    let audit = browser.get("/_coronium/admin/audit?scope=arena").await;
    assert!(
        audit.body.contains(r#"<option value="arena" selected>"#),
        "{}",
        audit.body
    );
    assert!(audit.body.contains("audit?scope=arena"), "{}", audit.body);
    assert!(audit.body.contains("users?scope=arena"));
    let dashboard = browser.get("/_coronium/admin/?scope=arena").await;
    assert!(dashboard.body.contains("audit?scope=arena"));
}

/// A project with thousands of actions cannot grow `/metrics` without bound: each project's
/// first 100 actions get labels of their own, the rest are counted together as "(other)".
#[tokio::test]
async fn metric_labels_stay_bounded_however_many_actions() {
    let db = TestDb::new().await;
    let root = crate::common::scratch_dir("many-actions");
    let mut main = String::from("local api = core.api()\n");
    for i in 0..300 {
        main.push_str(&format!("function api.a{i}() return {i} end\n"));
    }
    main.push_str("return api\n");
    crate::common::write_project(&root, "Many", &[("main.lua", &main)]);
    let server = crate::common::serve_projects_process(&db, &root, "1", &[]);
    for i in 0..300 {
        let answer = server.call("Many", &format!("a{i}"), json!({})).await;
        assert_eq!(answer, json!({ "result": i }));
    }
    let page = crate::common::http_get(&server.addr, "/metrics").await.1;
    let labelled: std::collections::HashSet<&str> = page
        .lines()
        .filter(|l| l.starts_with("coronium_requests_total{") && l.contains("project=\"Many\""))
        .filter_map(|l| l.split("action=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(labelled.len(), 101, "{labelled:?}");
    assert!(labelled.contains("(other)"));
    let other = page
        .lines()
        .find(|l| {
            l.starts_with("coronium_requests_total{")
                && l.contains("project=\"Many\"")
                && l.contains("action=\"(other)\"")
        })
        .unwrap();
    assert!(other.ends_with(" 200"), "{other}");
}

/// Writes a signed `api.users get` of `user_id` on a fresh connection and keeps the connection
/// open without reading the answer (a client that lets the server's buffers fill).
async fn unread_get(addr: &str, key: &str, user_id: &str) -> Option<tokio::net::TcpStream> {
    let params = json!({ "user_id": user_id });
    send_raw(addr, &raw_users_call(addr, key, "get", &params)).await
}

/// The probe's memory attack on today's bound: the largest record a client can build (its
/// `extra` at the bound), then 200 connections that ask for it and never read. The server's
/// memory grows by far less than 100 MB (it grew by 1.1 GB when `extra` had no total bound).
#[tokio::test]
async fn unread_answers_of_the_largest_record_stay_small() {
    let db = TestDb::new().await;
    let server = TestServer::start_process(&db, |cmd| {
        cmd.env("CORONIUM_MAX_CONNECTIONS_PER_IP", "0");
    });
    let id = create_user(&server, "default", "fat").await;
    // Fill `extra` in patches of ~15 KiB until the bound refuses more.
    for i in 0.. {
        let answer = server
            .call(
                "api.users",
                "update",
                json!({ "user_id": id, "update": { "extra": extra_keys(&format!("p{i}_"), 15, 1000) } }),
            )
            .await;
        if answer["result"]["status"] == 801 {
            break;
        }
        assert!(answer["result"]["user_id"].is_string(), "{answer}");
    }
    let before = server.rss_kib();
    let mut held = Vec::new();
    for _ in 0..200 {
        if let Some(stream) = unread_get(&server.addr, &server.key, &id).await {
            held.push(stream);
        }
    }
    // Let the server take every request and write what the sockets take.
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let grown_mb = server.rss_kib().saturating_sub(before) / 1024;
    println!(
        "{} unread answers held; the server grew by {grown_mb} MB",
        held.len()
    );
    assert!(held.len() >= 150, "{} connections", held.len());
    assert!(grown_mb < 100, "grew by {grown_mb} MB");
    // Still serving.
    assert!(
        crate::console::log_in(&server, "default", "fat").await["result"]["user_id"].is_string()
    );
}

const NUL_MAILER: &str = r#"
local api = core.api()
function api.mail(input)
  local sent, err, status = core.email.new():from("x@example.com"):to("a@example.com")
    :subject("hi"):text(input.text):send()
  return sent and "queued" or (err .. " " .. status)
end
function api.create(input)
  local id, err, status = core.users.create(input)
  return id and "created" or (err .. " " .. status)
end
return api
"#;

/// NUL, which PostgreSQL cannot store, is refused (801) wherever a client or script can put
/// it, before any statement can fail on it (a failed statement is logged in full by PostgreSQL
/// and by us: a client could fill the disk that way): every field of every `api.users` action,
/// however deep, `core.users` calls from a handler, and `core.email` text.
#[tokio::test]
async fn nul_is_refused_before_any_statement() {
    let db = TestDb::new().await;
    let root = crate::common::scratch_dir("nul");
    crate::common::write_project(&root, "Nul", &[("main.lua", NUL_MAILER)]);
    let server = crate::common::serve_projects(&db, &root, "1", &[]);
    let id = create_user(&server, "default", "plain").await;
    let attempts = [
        (
            "update",
            json!({ "user_id": id, "update": { "extra": { "k": "a\u{0}b" } } }),
        ),
        (
            "update",
            json!({ "user_id": id, "update": { "group": "g\u{0}" } }),
        ),
        (
            "create",
            json!({ "username": "x", "password": md5_hex("p"), "email": "x@example.com",
                           "confirmation": { "from_email": "a@example.com", "subject": "s",
                                             "tpl_keys": { "name": "n\u{0}" } } }),
        ),
        (
            "addAuthProvider",
            json!({ "user_id": id, "provider": "google", "client_id": "c",
                                    "access_token": "t\u{0}" }),
        ),
        (
            "login",
            json!({ "username": "plain\u{0}", "password": md5_hex("p") }),
        ),
    ];
    for (action, params) in attempts {
        let answer = server.call("api.users", action, params).await;
        assert_eq!(answer["result"]["status"], 801, "{action}: {answer}");
    }
    let mailed = server
        .call("Nul", "mail", json!({ "text": "a\u{0}b" }))
        .await;
    assert!(
        mailed["result"].as_str().unwrap().ends_with(" 801"),
        "{mailed}"
    );
    let created = server
        .call(
            "Nul",
            "create",
            json!({ "username": "y", "password": "p", "extra": { "k\u{0}": 1 } }),
        )
        .await;
    assert!(
        created["result"].as_str().unwrap().ends_with(" 801"),
        "{created}"
    );
    let rows: i64 = db
        .client()
        .await
        .query_one(
            "SELECT (SELECT count(*) FROM users) + (SELECT count(*) FROM mail_outbox)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "nothing was written");
}

/// A client cannot grow one user's provider links without bound (every record that lists
/// them would grow with it): at most 20, even added all at once; removing one makes room.
#[tokio::test]
async fn provider_links_per_user_are_bounded() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |_| {});
    let id = create_user(&server, "default", "linked").await;
    let links = (0..30)
        .map(
            |i| json!({ "user_id": id, "provider": format!("p{i}"), "client_id": format!("c{i}") }),
        )
        .collect();
    let adds = server
        .call_all("default", "api.users", "addAuthProvider", links)
        .await;
    let mut refused = 0;
    for answer in adds {
        if answer["result"]["status"] == 801 {
            assert!(
                answer["result"]["error"]
                    .as_str()
                    .unwrap()
                    .contains("at most 20")
            );
            refused += 1;
        } else {
            assert!(answer["result"].get("status").is_none(), "{answer}");
        }
    }
    assert_eq!(refused, 10);
    let removed = server
        .call(
            "api.users",
            "removeAuthProvider",
            json!({ "user_id": id, "provider": "p0" }),
        )
        .await;
    assert!(removed["result"]["user_id"].is_string(), "{removed}");
    let again = server
        .call(
            "api.users",
            "addAuthProvider",
            json!({ "user_id": id, "provider": "again", "client_id": "c-again" }),
        )
        .await;
    assert!(again["result"].get("status").is_none(), "{again}");
}
