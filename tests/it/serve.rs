//! `coronium serve` over real sockets: the wire protocol, `api.users`, refusals, shutdown.

use coronium::users::password::md5_hex;
use coronium::wire::client::{signed_headers, unix_now};
use serde_json::{Value, json};

use crate::common::{TestDb, TestServer};

fn error(message: &str, status: i64) -> Value {
    json!({"result": {"error": message, "status": status}})
}

#[tokio::test]
async fn users_actions_under_both_name_sets() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |_| {});
    let secret = md5_hex("abcd1234");
    for (create, login, get, update, delete) in [
        ("create", "login", "get", "update", "delete"),
        (
            "createUser",
            "loginUser",
            "getUsers",
            "updateUser",
            "deleteUser",
        ),
    ] {
        let name = format!("wire_{create}");
        let created = server
            .call("api.users", create, json!({"username": name, "password": secret, "email": format!("{name}@example.com")}))
            .await;
        let user_id = created["result"]["user_id"].as_str().unwrap().to_owned();
        assert_eq!(
            created,
            json!({"result": {"user_id": user_id, "confirmation": null}})
        );

        let user = server
            .call(
                "api.users",
                login,
                json!({"username": name, "password": secret}),
            )
            .await["result"]
            .clone();
        assert_eq!(user["user_id"], json!(user_id));
        assert_eq!(
            (user["login_count"].clone(), user["validated"].clone()),
            (json!(1), json!(true))
        );
        assert!(user.get("password_hash").is_none() && user.get("password").is_none());

        let got = server
            .call("api.users", get, json!({"user_id": user_id}))
            .await;
        assert_eq!(got["result"]["email"], json!(format!("{name}@example.com")));

        let updated = server
            .call(
                "api.users",
                update,
                json!({"user_id": user_id, "update": {"extra": {"level": 3}}}),
            )
            .await;
        assert_eq!(updated["result"]["extra"], json!({"level": 3}));

        assert_eq!(
            server
                .call("api.users", delete, json!({"user_id": user_id}))
                .await,
            json!({"result": 1})
        );
        assert_eq!(
            server
                .call("api.users", delete, json!({"user_id": user_id}))
                .await,
            json!({"result": 0})
        );
        assert_eq!(
            server
                .call("api.users", get, json!({"user_id": user_id}))
                .await,
            error("User not found.", 604)
        );
    }
    // The same users answer from Lua: the wire's md5 password is Lua's plain one.
    let created = server
        .call(
            "api.users",
            "create",
            json!({"username": "both", "password": secret}),
        )
        .await;
    assert!(created["result"]["user_id"].is_string());
    let lua = crate::common::run_lua(
        &db,
        "both.lua",
        "print(core.users.login({username = 'both', password = 'abcd1234'}).username)",
    );
    assert_eq!(lua.stdout.trim(), "both");
}

#[tokio::test]
async fn the_scope_comes_from_the_header_only() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |_| {});
    let secret = md5_hex("pw");
    let created = server
        .call_in(
            "game1",
            "api.users",
            "create",
            json!({"username": "s", "password": secret, "scope": "game2"}),
        )
        .await;
    let user_id = created["result"]["user_id"].clone();
    let user = server
        .call_in("game1", "api.users", "get", json!({"user_id": user_id}))
        .await;
    assert_eq!(user["result"]["scope"], json!("game1"));
    // Naming another scope in the body reaches nothing there.
    let other = server
        .call_in(
            "game2",
            "api.users",
            "get",
            json!({"user_id": user_id, "scope": "game1"}),
        )
        .await;
    assert_eq!(other, error("User not found.", 604));
    let login = server
        .call_in(
            "game2",
            "api.users",
            "login",
            json!({"username": "s", "password": secret, "scope": "game1"}),
        )
        .await;
    assert_eq!(login, error("Invalid username or password.", 603));
}

#[tokio::test]
async fn refusals_get_envelopes_write_nothing_and_the_server_carries_on() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |cmd| {
        cmd.env("CORONIUM_REQUEST_WINDOW_SECS", "300")
            .env("CORONIUM_MAX_BODY_BYTES", "1024");
    });
    let body = json!({"username": "x", "password": md5_hex("p")}).to_string();
    let signed = |project: &str, action: &str, time: i64| {
        signed_headers(&server.key, project, action, "default", time)
    };
    let now = unix_now();

    // (headers, body, expected HTTP status, expected answer)
    type Case<'a> = (Vec<(&'a str, String)>, Vec<u8>, u16, Value);
    let cases: Vec<Case> = vec![
        (
            vec![],
            body.clone().into_bytes(),
            400,
            error("Missing required header: X-Project-Id", 804),
        ),
        (
            signed_headers("not-the-key", "api.users", "create", "default", now),
            body.clone().into_bytes(),
            401,
            error("Request signature is invalid.", 810),
        ),
        (
            signed("api.users", "create", now - 3600),
            body.clone().into_bytes(),
            401,
            error(
                "Request time is more than 300 seconds away from the server's clock.",
                810,
            ),
        ),
        (
            signed("api.users", "create", now),
            b"{\"username\": ".to_vec(),
            400,
            json!({"result": {"error": "JSON decode failed: EOF while parsing a value at line 1 column 13", "status": 830}}),
        ),
        (
            signed("api.users", "create", now),
            format!(
                "{{\"username\": \"{}\", \"password\": \"p\"}}",
                "x".repeat(2000)
            )
            .into_bytes(),
            413,
            error("Request body is larger than 1024 bytes.", 810),
        ),
        (
            signed("nosuch", "thing", now),
            body.clone().into_bytes(),
            404,
            error("Unknown project 'nosuch'.", 810),
        ),
        (
            signed("api.users", "fly", now),
            body.clone().into_bytes(),
            404,
            error("Unknown action 'fly' in project 'api.users'.", 810),
        ),
        (
            signed("api.users", "create", now),
            b"[]".to_vec(),
            200,
            error("Missing required parameter: username", 804),
        ),
    ];
    for (headers, body, http, answer) in cases {
        let (status, got) = server.post(&headers, &body).await;
        assert_eq!((status, &got), (http, &answer));
    }
    let count: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0, "no refusal wrote anything");
    let created = server
        .call("api.users", "create", serde_json::from_str(&body).unwrap())
        .await;
    assert!(created["result"]["user_id"].is_string(), "{created}");
}

#[tokio::test]
async fn health_metrics_and_clean_shutdown() {
    let db = TestDb::new().await;
    let server = TestServer::start_process(&db, |_| {});
    let (status, body) = crate::common::http_get(&server.addr, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    server
        .call("api.users", "get", json!({"user_id": "x"}))
        .await;
    server
        .call("api.users", "get", json!({"user_id": "x"}))
        .await;
    server.call("made-up", "thing", json!({})).await;
    let (status, metrics) = crate::common::http_get(&server.addr, "/metrics").await;
    assert_eq!(status, 200);
    let line = |prefix: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
            .to_owned()
    };
    // Requests by project, action and outcome; requests spread over two workers, so sum them up.
    let total = |labels: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(&format!("coronium_requests_total{{{labels}}}")))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    assert_eq!(
        total(r#"project="api.users",action="get",outcome="error""#),
        2.0
    );
    assert_eq!(total(r#"project="-",action="-",outcome="refused""#), 1.0);
    line(
        "coronium_request_duration_seconds_bucket{project=\"api.users\",action=\"get\",le=\"0.005\"}",
    );
    line("coronium_requests_in_flight");
    line("coronium_db_pool_connections{worker=");
    let lua_bytes: f64 = line("coronium_lua_memory_bytes{worker=")
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        lua_bytes > 0.0,
        "a worker's Lua state holds at least the prelude"
    );
    assert!(
        !metrics.contains("made-up"),
        "client-chosen names are not labels"
    );
    let (status, _) = crate::common::http_get(&server.addr, "/nope").await;
    assert_eq!(status, 404);
    let status = server.stop();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn json_logs_on_request() {
    let db = TestDb::new().await;
    let dir = crate::common::scratch_dir("jsonlog");
    let script = dir.join("log.lua");
    std::fs::write(&script, "core.log('hello', 42)").unwrap();
    let out = crate::common::coronium(Some(&db))
        .env("CORONIUM_LOG", "info")
        .args(["--log-format", "json", "run"])
        .arg(&script)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let entry: Value = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["target"] == "lua")
        .unwrap_or_else(|| panic!("no JSON log line from lua in {stderr}"));
    assert_eq!(entry["fields"]["message"], "hello 42");
    assert_eq!(entry["level"], "INFO");
}

#[tokio::test]
async fn key_file_and_the_call_command() {
    let db = TestDb::new().await;
    let data = crate::common::scratch_dir("keys");
    let key_cmd = |regenerate: bool| {
        let mut cmd = crate::common::coronium(None);
        cmd.arg("--data-dir").arg(&data).arg("key");
        if regenerate {
            cmd.arg("--regenerate");
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8(out.stdout).unwrap().trim().to_owned(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let key_file = data.join("server.key").display().to_string();
    let (first, said) = key_cmd(false);
    assert!(uuid::Uuid::try_parse(&first).is_ok(), "{first}");
    assert!(
        said.contains("a new server key, now in") && said.contains(&key_file),
        "{said}"
    );
    let (again, said) = key_cmd(false);
    assert_eq!(again, first, "the key is kept");
    assert!(
        said.starts_with(&format!("the server key in {key_file}")),
        "{said}"
    );
    let key_cmd = |regenerate| key_cmd(regenerate).0;
    let second = key_cmd(true);
    assert_ne!(second, first);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(data.join("server.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    let server = TestServer::start_with_key(Some(&db), &data, None, |_| {});
    assert_eq!(server.key, second);
    // A client signing with the old key is refused.
    let stale = coronium::wire::client::call(
        &server.addr,
        &first,
        "api.users",
        "get",
        "default",
        &json!({}),
    )
    .await
    .unwrap();
    assert_eq!(stale, error("Request signature is invalid.", 810));

    let call = |args: &[&str]| {
        let out = crate::common::coronium(None)
            .arg("--data-dir")
            .arg(&data)
            .arg("call")
            .args(args)
            .args(["--addr", &server.addr])
            .output()
            .unwrap();
        (
            out.status.success(),
            serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        )
    };
    let (ok, created) = call(&[
        "api.users",
        "create",
        &json!({"username": "cli", "password": md5_hex("pw")}).to_string(),
    ]);
    assert!(ok, "{created}");
    assert!(created["result"]["user_id"].is_string());
    let (ok, refused) = call(&["api.users", "get", "{}"]);
    assert!(!ok);
    assert_eq!(refused, error("Missing required parameter: user_id", 804));

    // Regenerating says the running server keeps its key until restarted; `call` then says
    // which key it signed with.
    let in_data_dir = |args: &[&str]| {
        crate::common::coronium(None)
            .arg("--data-dir")
            .arg(&data)
            .args(args)
            .output()
            .unwrap()
    };
    let out = in_data_dir(&["key", "--regenerate"]);
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("until it is restarted"), "{said}");
    let out = in_data_dir(&["call", "api.users", "get", "{}", "--addr", &server.addr]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("signed with the key from") && said.contains("server.key"),
        "{said}"
    );

    // From a folder without a key, `call` makes none and says where the key should be.
    let elsewhere = crate::common::scratch_dir("elsewhere");
    let out = crate::common::coronium(None)
        .current_dir(&elsewhere)
        .args(["call", "api.users", "get", "{}", "--addr", &server.addr])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("there is no server key at") && said.contains("--data-dir"),
        "{said}"
    );
    assert!(
        !elsewhere.join("coronium-data").exists(),
        "nothing was made"
    );
}

#[tokio::test]
async fn resend_confirmation_renews_a_pending_users_code() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |_| {});
    let created = server
        .call(
            "api.users",
            "create",
            json!({"username": "pend", "password": md5_hex("pw"), "email": "pend@example.com",
                   "confirmation": {"from_email": "games@example.com", "subject": "Confirm"}}),
        )
        .await;
    let user_id = created["result"]["user_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"))
        .to_owned();
    assert_eq!(created["result"]["confirmation"], json!("pending"));
    let client = db.client().await;
    let code_sql = "SELECT confirmation_code FROM users WHERE user_id = $1::text::uuid";
    let before: String = client
        .query_one(code_sql, &[&user_id])
        .await
        .unwrap()
        .get(0);
    let resent = server
        .call(
            "api.users",
            "resendConfirmation",
            json!({"user_id": user_id}),
        )
        .await;
    // The client's documented answer: the user id as a string.
    assert_eq!(resent, json!({ "result": user_id }));
    let after: String = client
        .query_one(code_sql, &[&user_id])
        .await
        .unwrap()
        .get(0);
    assert_ne!(after, before, "a fresh code replaces the old one");

    // A confirmed (or never asked) user is not pending; an unknown id is nobody.
    let plain = server
        .call(
            "api.users",
            "create",
            json!({"username": "plain", "password": md5_hex("pw")}),
        )
        .await;
    assert_eq!(
        server
            .call(
                "api.users",
                "resendConfirmation",
                json!({"user_id": plain["result"]["user_id"]})
            )
            .await,
        error("Pending user not found.", 614)
    );
    assert_eq!(
        server
            .call(
                "api.users",
                "resendConfirmation",
                json!({"user_id": "not-a-uuid"})
            )
            .await,
        error("User not found.", 604)
    );
}

#[tokio::test]
async fn h2c_with_prior_knowledge() {
    use http_body_util::BodyExt as _;
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |_| {});
    let stream = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let headers = signed_headers(&server.key, "api.users", "get", "default", unix_now());
    let mut request = hyper::Request::post(format!("http://{}/", server.addr));
    for (name, value) in &headers {
        request = request.header(*name, value);
    }
    let response = sender
        .send_request(
            request
                .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer, error("Missing required parameter: user_id", 804));
}

/// The server answers a plain signed request (a user that does not exist: nothing written).
async fn assert_serves(server: &TestServer) {
    assert_eq!(
        server
            .call("api.users", "get", json!({"user_id": "nope"}))
            .await,
        error("User not found.", 604)
    );
}

/// The head of a raw HTTP/1.1 `api.users get` request, signed, announcing `length` body bytes,
/// with `extra` header lines.
fn signed_get_head(key: &str, length: usize, extra: &str) -> String {
    let mut head =
        format!("POST / HTTP/1.1\r\nHost: localhost\r\n{extra}Content-Length: {length}\r\n");
    for (name, value) in signed_headers(key, "api.users", "get", "default", unix_now()) {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// Reads from `stream` until the server closes it or `wait` passes; true when it closed.
async fn closed_by_server(stream: &mut tokio::net::TcpStream, wait: std::time::Duration) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn slow_headers_and_too_many_connections_are_cut_off() {
    use std::time::Duration;
    use tokio::io::AsyncWriteExt as _;
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |cmd| {
        cmd.env("CORONIUM_HEADER_READ_TIMEOUT_SECS", "1")
            .env("CORONIUM_MAX_CONNECTIONS", "2");
    });
    // A client that never finishes its headers is disconnected.
    let mut slow = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    slow.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert!(
        closed_by_server(&mut slow, Duration::from_secs(5)).await,
        "slow headers were cut off"
    );
    drop(slow);
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Two connections are open; a third is closed at once; when one goes, room is made again.
    let mut first = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    let second = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    assert!(
        closed_by_server(&mut third, Duration::from_millis(900)).await,
        "over the cap"
    );
    assert!(
        !closed_by_server(&mut first, Duration::from_millis(200)).await,
        "within the cap"
    );
    drop(first);
    drop(second);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        server.call("api.users", "get", json!({})).await,
        error("Missing required parameter: user_id", 804)
    );
}

/// Reads share a pipelined connection per worker: many at once must each get their own answer,
/// and a connection the database dropped must not fail the next requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_reads_answer_each_request_and_survive_a_dropped_connection() {
    let db = TestDb::new().await;
    let server = std::sync::Arc::new(TestServer::start(&db, |_| {}));
    let mut ids = Vec::new();
    for n in 0..12 {
        let created = server
            .call(
                "api.users",
                "create",
                json!({"username": format!("reader{n}"), "password": md5_hex("pw")}),
            )
            .await;
        ids.push(created["result"]["user_id"].as_str().unwrap().to_owned());
    }
    let get_all = |round: usize| {
        let tasks: Vec<_> = (0..240)
            .map(|i| {
                let n = (i * 7 + round) % ids.len();
                let (server, id) = (server.clone(), ids[n].clone());
                tokio::spawn(async move {
                    let got = server
                        .call("api.users", "get", json!({"user_id": id}))
                        .await;
                    (n, got)
                })
            })
            .collect();
        async move {
            for task in tasks {
                let (n, got) = task.await.unwrap();
                assert_eq!(
                    got["result"]["username"],
                    json!(format!("reader{n}")),
                    "{got}"
                );
            }
        }
    };
    get_all(0).await;
    let killed = db.end_other_sessions().await;
    assert!(killed >= 2, "both workers' read connections were cut");
    get_all(1).await;
    let login = server
        .call(
            "api.users",
            "login",
            json!({"username": "reader3", "password": md5_hex("pw")}),
        )
        .await;
    assert_eq!(login["result"]["login_count"], json!(1), "{login}");
    // Concurrent writes spread over every write connection of both workers, so the pools'
    // connections are all lent out; the health check must still get through.
    let updates: Vec<_> = (0..24)
        .map(|i| {
            let (server, id) = (server.clone(), ids[i % ids.len()].clone());
            tokio::spawn(async move {
                server
                    .call(
                        "api.users",
                        "update",
                        json!({"user_id": id, "update": {"extra": {format!("k{i}"): i}}}),
                    )
                    .await
            })
        })
        .collect();
    for update in updates {
        let answer = update.await.unwrap();
        assert!(answer["result"]["user_id"].is_string(), "{answer}");
    }
    let (status, body) = crate::common::http_get(&server.addr, "/healthz").await;
    assert_eq!((status, body.contains("\"ok\"")), (200, true), "{body}");
}

#[tokio::test]
async fn a_second_server_on_the_same_port_is_refused() {
    let db = TestDb::new().await;
    let first = TestServer::start(&db, |_| {});
    let port = first.addr.rsplit(':').next().unwrap().to_owned();
    let mut second = crate::common::coronium(Some(&db))
        .env("CORONIUM_SERVER_KEY", "another-key")
        .args(["serve", "--host", "127.0.0.1", "--port", &port])
        .arg("--data-dir")
        .arg(crate::common::scratch_dir("second"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = second.kill();
            panic!("a second server started on the first one's port");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(second.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("the port is in use by another process"),
        "{stderr}"
    );
    // Every request still reaches the first server (a second one would answer some with its key).
    for _ in 0..20 {
        assert_eq!(
            first
                .call("api.users", "get", json!({"user_id": "nope"}))
                .await,
            error("User not found.", 604)
        );
    }
}

/// Reads from `stream` until the server closes it; how long that took, and what it sent.
async fn until_closed(
    label: &str,
    stream: &mut tokio::net::TcpStream,
) -> (std::time::Duration, String) {
    use tokio::io::AsyncReadExt as _;
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buf)).await
        {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "{label}: still open after 10 s: {}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    (
        started.elapsed(),
        String::from_utf8_lossy(&got).into_owned(),
    )
}

#[tokio::test]
async fn slow_clients_are_closed_at_their_deadlines() {
    use tokio::io::AsyncWriteExt as _;
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |cmd| {
        cmd.env("CORONIUM_HEADER_READ_TIMEOUT_SECS", "1")
            .env("CORONIUM_BODY_READ_TIMEOUT_SECS", "1");
    });
    let connect = || tokio::net::TcpStream::connect(server.addr.clone());
    let second = std::time::Duration::from_secs(1);
    let late = std::time::Duration::from_secs(3);

    // The four slow clients at once: each deadline is its connection's own.
    let silent = async {
        // Sends nothing at all.
        let mut silent = connect().await.unwrap();
        let (took, _) = until_closed("silent", &mut silent).await;
        assert!(took >= second / 2 && took < late, "silent: {took:?}");
    };
    let partial = async {
        // Half a header block.
        let mut partial = connect().await.unwrap();
        partial
            .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nX-Action: get\r\n")
            .await
            .unwrap();
        let (took, _) = until_closed("partial headers", &mut partial).await;
        assert!(took < late, "partial headers: {took:?}");
    };
    let slow_body = async {
        // Signed headers, then part of the body it announced.
        let head = signed_get_head(&server.key, 100, "") + "{\"user_id\":";
        let mut slow_body = connect().await.unwrap();
        slow_body.write_all(head.as_bytes()).await.unwrap();
        let (took, answer) = until_closed("slow body", &mut slow_body).await;
        assert!(took < late, "slow body: {took:?}");
        assert!(
            answer.starts_with("HTTP/1.1 408")
                && answer.contains("The request body did not arrive within 1 s."),
            "{answer}"
        );
    };
    let kept = async {
        // A finished request, then silence: the kept-alive connection is closed too.
        let mut kept = connect().await.unwrap();
        let body = br#"{"user_id":"nope"}"#;
        let request = signed_get_head(&server.key, body.len(), "");
        kept.write_all(request.as_bytes()).await.unwrap();
        kept.write_all(body).await.unwrap();
        let (took, answer) = until_closed("idle keep-alive", &mut kept).await;
        assert!(answer.contains("User not found."), "{answer}");
        assert!(took < late, "idle keep-alive: {took:?}");
    };
    tokio::join!(silent, partial, slow_body, kept);

    // And the server still serves.
    assert_serves(&server).await;
}

#[tokio::test]
async fn one_client_address_holds_at_most_its_cap_of_connections() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |cmd| {
        cmd.env("CORONIUM_MAX_CONNECTIONS_PER_IP", "3");
    });
    let connect = || tokio::net::TcpStream::connect(server.addr.clone());
    let mut held = vec![
        connect().await.unwrap(),
        connect().await.unwrap(),
        connect().await.unwrap(),
    ];
    // Let the server accept them before the fourth arrives.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut fourth = connect().await.unwrap();
    let (took, _) = until_closed("fourth", &mut fourth).await;
    assert!(took < std::time::Duration::from_secs(1), "{took:?}");
    held.pop();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_serves(&server).await;
}

#[tokio::test]
async fn https_with_a_test_certificate() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let db = TestDb::new().await;
    let dir = crate::common::scratch_dir("tls");
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let server = TestServer::start(&db, |cmd| {
        cmd.env("CORONIUM_TLS_CERT", &cert)
            .env("CORONIUM_TLS_KEY", &key);
    });

    // A client that trusts only `cert`.
    let connector_for = |cert: &rustls::pki_types::CertificateDer<'static>| {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
    };
    let connector = connector_for(certified.cert.der());
    let body = br#"{"user_id":"nope"}"#;
    let request = signed_get_head(&server.key, body.len(), "Connection: close\r\n");

    let tcp = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(request.as_bytes()).await.unwrap();
    tls.write_all(body).await.unwrap();
    let mut answer = String::new();
    let _ = tls.read_to_string(&mut answer).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains(r#"{"result":{"error":"User not found.","status":604}}"#),
        "{answer}"
    );

    // A renewed certificate takes effect without a restart.
    let renewed = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(&key, renewed.signing_key.serialize_pem()).unwrap();
    std::fs::write(&cert, renewed.cert.pem()).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let connector = connector_for(renewed.cert.der());
    let tcp = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector
        .connect(name, tcp)
        .await
        .expect("a handshake with the renewed certificate");

    // Plain HTTP on the TLS port gets no answer.
    let mut plain = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    plain.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        plain.read_to_end(&mut got),
    )
    .await;
    assert!(!String::from_utf8_lossy(&got).contains("User not found"));
}

#[tokio::test]
async fn a_flood_of_huge_login_names_costs_no_memory() {
    let db = TestDb::new().await;
    let server = TestServer::start_process(&db, |_| {});
    assert_serves(&server).await;
    let before = server.rss_kib();
    for n in 0..300 {
        let name = format!("{n:06}{}", "x".repeat(1_000_000));
        let answer = server
            .call(
                "api.users",
                "login",
                json!({"username": name, "password": md5_hex("pw")}),
            )
            .await;
        assert_eq!(
            answer,
            error("Parameter 'username' is longer than 64 characters.", 801)
        );
    }
    let grown_mb = server.rss_kib().saturating_sub(before) / 1024;
    assert!(grown_mb < 50, "RSS grew by {grown_mb} MB");
}

/// Every `api.users` action checks its scope alike (not only create and login).
#[tokio::test]
async fn every_users_action_checks_the_scope() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |_| {});
    let long = "s".repeat(65);
    let id = "00000000-0000-4000-8000-000000000001";
    for (action, params) in [
        ("get", json!({"user_id": id})),
        ("update", json!({"user_id": id, "update": {"group": "g"}})),
        ("delete", json!({"user_id": id})),
        ("resendConfirmation", json!({"user_id": id})),
        ("login", json!({"username": "u", "password": md5_hex("p")})),
        ("create", json!({"username": "u", "password": md5_hex("p")})),
    ] {
        assert_eq!(
            server.call_in(&long, "api.users", action, params).await,
            error("Parameter 'scope' is longer than 64 characters.", 801),
            "{action}"
        );
    }
}

/// `coronium call` reaches a server with TLS at `--addr https://...`, trusting a private CA
/// with `--ca-file`; without it the certificate is refused, and a plain-HTTP call to a TLS
/// server says what to do instead of "invalid HTTP version".
#[tokio::test]
async fn call_speaks_tls_with_a_private_ca() {
    let db = TestDb::new().await;
    let dir = crate::common::scratch_dir("tls-call");
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let server = TestServer::start(&db, |cmd| {
        cmd.env("CORONIUM_TLS_CERT", &cert)
            .env("CORONIUM_TLS_KEY", &key);
    });
    let port = server.addr.rsplit_once(':').unwrap().1.to_owned();
    let call = |args: &[&str]| {
        let out = crate::common::coronium(Some(&db))
            .env("CORONIUM_SERVER_KEY", crate::common::TEST_SERVER_KEY)
            .arg("call")
            .args(args)
            .args(["api.users", "get", r#"{"user_id":"nope"}"#])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (text, out.status.code())
    };
    let https = format!("https://localhost:{port}");
    let ca = cert.to_str().unwrap();
    let (text, code) = call(&["--addr", &https, "--ca-file", ca]);
    assert!(text.contains("User not found."), "{text}");
    assert_eq!(code, Some(1), "an error answer: {text}");
    let (text, _) = call(&["--addr", &https]);
    assert!(
        text.contains("certificate"),
        "an unknown issuer is refused: {text}"
    );
    assert!(!text.contains("User not found."));
    let (text, _) = call(&["--addr", &format!("127.0.0.1:{port}")]);
    assert!(
        text.contains("the server speaks HTTPS: use --addr https://127.0.0.1:"),
        "{text}"
    );
    let (text, _) = call(&["--addr", &format!("ftp://localhost:{port}")]);
    assert!(text.contains("https://HOST:PORT"), "{text}");
}
