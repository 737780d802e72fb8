//! API projects through `coronium serve`: handlers, errors, isolation, require, callApi,
//! reloading, budgets, load and shutdown.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{TestDb, scratch_dir, serve_projects as serve, write_project};

const MAIN: &str = r#"
local api = core.api()
local helper = require("Proj.helper")

function api.echo(input, scope) return { input = input, scope = scope } end
function api.err() return core.error("nope", 123) end
function api.default_err() return core.error("plain") end
function api.nilerr() return nil, "bad thing" end
function api.nothing() end
function api.boom() error("kaboom") end
function api.spin() while true do end end
function api.bomb()
  local t = {}
  for i = 1, 1e9 do t[i] = string.rep("x", 4096) .. i end
end
function api.setglobal(input) leak = input.v return leak end
function api.getglobal() return leak or "none" end
function api.helper(input) return helper.twice(input.n) end
function api.call() return core.callApi("Proj", "echo", { x = 1 }) end
function api.call_missing() return core.callApi("Proj", "missing", {}) end
function api.call_broken() return core.callApi("Broken", "x", {}) end
function api.call_waiter() return core.callApi("Waiter", "loaded", {}) end
function api.unencodable() return { f = print } end
function api.sleep(input) core.sleep(input.s) return "slept" end
function api.signup(input)
  local id, err, status = core.users.create({ username = input.username, password = "pw" })
  if not id then return nil, err, status end
  return core.users.get(id).scope
end
function api.version() return "one" end
return api
"#;

const HELPER: &str = r#"
local helper = {}
function helper.twice(n) return n * 2 end
return helper
"#;

/// A project whose loading waits on the host (a sleep, a database call).
const WAITER: &str = r#"
local api = core.api()
core.sleep(0.001)
local user, err, status = core.users.get("not-a-uuid")
local loaded = { user = user == nil, err = err, status = status }
function api.loaded() return loaded end
return api
"#;

fn projects() -> PathBuf {
    let root = scratch_dir("projects");
    write_project(&root, "Proj", &[("main.lua", MAIN), ("helper.lua", HELPER)]);
    write_project(
        &root,
        "Broken",
        &[("main.lua", "local api = core.api(\nreturn api")],
    );
    write_project(&root, "NotApi", &[("main.lua", "return 42")]);
    write_project(&root, "Waiter", &[("main.lua", WAITER)]);
    root
}

fn error(message: &str, status: i64) -> Value {
    json!({"result": {"error": message, "status": status}})
}

#[tokio::test]
async fn handlers_answer_and_fail_as_coronium_did() {
    let db = TestDb::new().await;
    let root = projects();
    let server = serve(&db, &root, "2", &[]);
    let call = |action: &'static str, params: Value| server.call_in("game", "Proj", action, params);

    assert_eq!(
        call("echo", json!({"a": [1, 2]})).await,
        json!({"result": {"input": {"a": [1, 2]}, "scope": "game"}})
    );
    assert_eq!(
        call("echo", json!([])).await,
        json!({"result": {"input": {}, "scope": "game"}})
    );
    assert_eq!(call("err", json!({})).await, error("nope", 123));
    assert_eq!(call("default_err", json!({})).await, error("plain", -1));
    assert_eq!(call("nilerr", json!({})).await, error("bad thing", -1));
    assert_eq!(
        call("nothing", json!({})).await,
        error("Result was not valid", 800)
    );
    let boom = call("boom", json!({})).await;
    let message = boom["result"]["error"].as_str().unwrap();
    assert!(message.contains("Proj/main.lua:10: kaboom"), "{boom}");
    assert_eq!(boom["result"]["status"], json!(810));
    assert_eq!(
        call("helper", json!({"n": 21})).await,
        json!({"result": 42})
    );
    assert_eq!(
        call("call", json!({})).await,
        json!({"result": {"input": {"x": 1}, "scope": "game"}})
    );
    assert_eq!(
        call("call_missing", json!({})).await,
        error("Unknown action 'missing' in project 'Proj'.", 810)
    );
    assert_eq!(
        call("unencodable", json!({})).await,
        error(
            "JSON encode failed: cannot encode a function value as JSON",
            831
        )
    );
    assert_eq!(
        call("signup", json!({"username": "p1"})).await,
        json!({"result": "game"})
    );
    assert_eq!(
        call("signup", json!({"username": "P1"})).await,
        error("Username already exists.", 600)
    );
    assert_eq!(
        call("missing", json!({})).await,
        error("Unknown action 'missing' in project 'Proj'.", 810)
    );
    assert_eq!(
        server.call("Nope", "x", json!({})).await,
        error("Unknown project 'Nope'.", 810)
    );
    let broken = server.call("Broken", "x", json!({})).await;
    assert!(
        broken["result"]["error"]
            .as_str()
            .unwrap()
            .starts_with("project 'Broken' failed to load:"),
        "{broken}"
    );
    // callApi waits for a project to load; the load itself may wait on the host.
    let broken = call("call_broken", json!({})).await;
    assert_eq!(broken["result"]["status"], json!(810), "{broken}");
    assert!(
        broken["result"]["error"]
            .as_str()
            .unwrap()
            .contains("project 'Broken' failed to load:"),
        "{broken}"
    );
    let waited = json!({"result": {"user": true, "err": "User not found.", "status": 604}});
    assert_eq!(call("call_waiter", json!({})).await, waited);
    assert_eq!(server.call("Waiter", "loaded", json!({})).await, waited);
    let not_api = server.call("NotApi", "x", json!({})).await;
    assert!(
        not_api["result"]["error"]
            .as_str()
            .unwrap()
            .contains("must return the table made by core.api()")
    );
    // After all that, the server still serves.
    assert_eq!(call("helper", json!({"n": 1})).await, json!({"result": 2}));
}

#[tokio::test]
async fn globals_set_by_one_request_stay_in_that_request() {
    let db = TestDb::new().await;
    let root = projects();
    let server = serve(&db, &root, "1", &[]);
    assert_eq!(
        server
            .call("Proj", "setglobal", json!({"v": "secret"}))
            .await,
        json!({"result": "secret"})
    );
    assert_eq!(
        server.call("Proj", "getglobal", json!({})).await,
        json!({"result": "none"})
    );
}

#[tokio::test]
async fn a_runaway_handler_is_stopped_and_the_worker_keeps_answering() {
    let db = TestDb::new().await;
    let root = projects();
    let server = serve(&db, &root, "1", &[("CORONIUM_CPU_BUDGET_MS", "300")]);
    let started = Instant::now();
    let spin = server.call("Proj", "spin", json!({}));
    let other = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let answer = server.call("Proj", "echo", json!({"n": 1})).await;
        (answer, started.elapsed())
    };
    let (spun, (answer, answered_at)) = tokio::join!(spin, other);
    let spun_at = started.elapsed();
    assert_eq!(spun["result"]["status"], json!(810));
    assert!(
        spun["result"]["error"]
            .as_str()
            .unwrap()
            .contains("CPU budget of 300 ms"),
        "{spun}"
    );
    assert_eq!(answer["result"]["input"], json!({"n": 1}));
    assert!(
        answered_at < spun_at,
        "the other request was answered while the runaway ran"
    );
    assert_eq!(
        server.call("Proj", "helper", json!({"n": 2})).await,
        json!({"result": 4})
    );
}

#[tokio::test]
async fn a_memory_bomb_fails_its_request_only() {
    let db = TestDb::new().await;
    let root = projects();
    let server = serve(&db, &root, "1", &[("CORONIUM_LUA_MEMORY_LIMIT_MB", "64")]);
    let bomb = server.call("Proj", "bomb", json!({})).await;
    assert_eq!(bomb["result"]["status"], json!(810), "{bomb}");
    assert!(
        bomb["result"]["error"].as_str().unwrap().contains("memory"),
        "{bomb}"
    );
    assert_eq!(
        server.call("Proj", "helper", json!({"n": 3})).await,
        json!({"result": 6})
    );
}

#[tokio::test]
async fn edits_take_effect_without_a_restart() {
    let db = TestDb::new().await;
    let root = projects();
    let server = serve(&db, &root, "2", &[]);
    assert_eq!(
        server.call("Proj", "version", json!({})).await,
        json!({"result": "one"})
    );
    assert_eq!(
        server.call("Proj", "helper", json!({"n": 5})).await,
        json!({"result": 10})
    );
    std::fs::write(
        root.join("Proj/main.lua"),
        MAIN.replace("return \"one\"", "return \"two!\""),
    )
    .unwrap();
    std::fs::write(
        root.join("Proj/helper.lua"),
        HELPER.replace("n * 2", "n * 3"),
    )
    .unwrap();
    for _ in 0..4 {
        assert_eq!(
            server.call("Proj", "version", json!({})).await,
            json!({"result": "two!"})
        );
        assert_eq!(
            server.call("Proj", "helper", json!({"n": 5})).await,
            json!({"result": 15})
        );
    }
}

/// Raises this process's open-file limit so a thousand client sockets fit.
fn raise_fd_limit() {
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_on_two_workers() {
    raise_fd_limit();
    let db = TestDb::new().await;
    let root = projects();
    write_project(
        &root,
        "Load",
        &[(
            "main.lua",
            r#"local api = core.api()
function api.get(input)
  local user, err = core.users.get(input.id)
  if not user then return nil, err end
  n = (n or 0) + 1
  return { name = user.username, n = n, tag = input.tag }
end
return api"#,
        )],
    );
    let server = std::sync::Arc::new(serve(&db, &root, "2", &[]));
    let created = server
        .call("Proj", "signup", json!({"username": "loaded"}))
        .await;
    assert_eq!(created, json!({"result": "default"}));
    let id: String = db
        .client()
        .await
        .query_one(
            "SELECT user_id::text FROM users WHERE username = 'loaded'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let tasks: Vec<_> = (0..1000)
        .map(|tag| {
            let server = server.clone();
            let id = id.clone();
            tokio::spawn(async move {
                (
                    tag,
                    server
                        .call("Load", "get", json!({"id": id, "tag": tag}))
                        .await,
                )
            })
        })
        .collect();
    // Meanwhile, editing the project under load loses no request: requests already running
    // finish on the code they started with, later ones get the new code.
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Saved as editors save (a new file renamed over the old): a request may otherwise read a
    // file the write has truncated but not yet filled.
    let save = |path: PathBuf, text: String| {
        let fresh = path.with_extension("lua.new");
        std::fs::write(&fresh, text).unwrap();
        std::fs::rename(&fresh, &path).unwrap();
    };
    let edited = std::fs::read_to_string(root.join("Load/main.lua")).unwrap();
    save(
        root.join("Load/main.lua"),
        format!("-- edited under load\n{edited}"),
    );
    save(
        root.join("Proj/helper.lua"),
        HELPER.replace("n * 2", "n * 4"),
    );
    for task in tasks {
        let (tag, answer) = task.await.unwrap();
        assert_eq!(
            answer,
            json!({"result": {"name": "loaded", "n": 1, "tag": tag}}),
            "request {tag}"
        );
    }
    assert_eq!(
        server.call("Proj", "helper", json!({"n": 1})).await,
        json!({"result": 4})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests() {
    let db = TestDb::new().await;
    let root = projects();
    let server = crate::common::serve_projects_process(&db, &root, "2", &[]);
    let addr = server.addr.clone();
    let key = server.key.clone();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (addr, key) = (addr.clone(), key.clone());
            tokio::spawn(async move {
                coronium::wire::client::call(
                    &addr,
                    &key,
                    "Proj",
                    "sleep",
                    "default",
                    &json!({"s": 0.5}),
                )
                .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = tokio::task::spawn_blocking(move || server.stop())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), json!({"result": "slept"}));
    }
    // And the listener is gone.
    assert!(tokio::net::TcpStream::connect(&addr).await.is_err());
}

#[tokio::test]
async fn a_request_over_its_time_limit_is_answered_and_the_worker_carries_on() {
    let db = TestDb::new().await;
    let root = projects();
    let server = serve(&db, &root, "1", &[("CORONIUM_REQUEST_TIMEOUT_SECS", "1")]);
    let headers = coronium::wire::client::signed_headers(
        &server.key,
        "Proj",
        "sleep",
        "default",
        coronium::wire::client::unix_now(),
    );
    let (status, answer) = server.post(&headers, br#"{"s": 5}"#).await;
    assert_eq!(
        (status, answer),
        (504, error("The request timed out.", 810))
    );
    assert_eq!(
        server.call("Proj", "helper", json!({"n": 4})).await,
        json!({"result": 8})
    );
}

/// A project file that is a FIFO (or a device) would block the worker reading it forever: it
/// is refused as not a regular file, and the worker goes on answering.
#[tokio::test]
async fn a_project_file_that_is_no_regular_file_is_refused() {
    let db = TestDb::new().await;
    let root = scratch_dir("fifo");
    write_project(
        &root,
        "Pipes",
        &[(
            "main.lua",
            r#"
local api = core.api()
function api.fifo() local ok, err = pcall(require, "Pipes.fifo") return {ok = ok, err = tostring(err)} end
function api.ping() return "pong" end
return api
"#,
        )],
    );
    let fifo = std::ffi::CString::new(root.join("Pipes/fifo.lua").to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path and a mode; mkfifo only creates the file.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    // A process of its own: were the worker blocked, dropping the server still ends it.
    let server = crate::common::serve_projects_process(&db, &root, "1", &[]);
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        server.call("Pipes", "fifo", json!({})),
    )
    .await
    .expect("answered, not blocked on the FIFO");
    assert_eq!(answer["result"]["ok"], json!(false), "{answer}");
    assert!(
        answer["result"]["err"]
            .as_str()
            .unwrap()
            .contains("not a regular file"),
        "{answer}"
    );
    assert_eq!(
        server.call("Pipes", "ping", json!({})).await,
        json!({"result": "pong"})
    );
}
