//! The users functions through `coronium run`: statuses and messages, both calling conventions,
//! extra merge and NULL, and that refused input writes nothing.

use serde_json::json;

use crate::common::{TestDb, assert_ok, coronium, run_lua, scratch_dir};

async fn count_users(db: &TestDb) -> i64 {
    db.client()
        .await
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn bad_input_gets_coronium_statuses_and_writes_nothing() {
    let db = TestDb::new().await;
    let run = run_lua(
        &db,
        "bad.lua",
        r#"
local function show(...) print(select(2, ...)) end
show(core.users.create({password = "x"}))
show(core.users.create({username = "a"}))
show(core.users.create({username = "", password = "x"}))
show(core.users.create({username = 12, password = "x"}))
show(core.users.create({username = "a", password = "x", extra = {deep = {x = 1}}}))
show(core.users.create({username = "a", password = "x", extra = {f = print}}))
show(core.users.create({username = "a", password = "x", email = "not-an-email"}))
show(core.users.create({username = string.rep("n", 65), password = "x"}))
show(core.users.create({username = "a", password = "x", confirmation = {subject = "hi"}}))
show(core.users.create("tiny"))
show(core.users.get({}))
show(core.users.get({user_id = "not-a-uuid"}))
show(core.users.get("289bc36e-0df7-44df-99b1-a6543c6f45eb"))
show(core.users.update({user_id = "289bc36e-0df7-44df-99b1-a6543c6f45eb"}))
show(core.users.update({update = {group = "x"}}))
show(core.users.update("not-a-uuid", {group = "x"}))
show(core.users.delete({}))
print(core.users.delete({user_id = "not-a-uuid"}))
"#,
    );
    assert_ok(&run);
    assert_eq!(
        run.lines(),
        [
            "Missing required parameter: username\t804",
            "Missing required parameter: password\t804",
            "Missing required parameter: username\t804",
            "Parameter 'username' must be a string.\t801",
            "Extra table can only contain string, number, or boolean types.\t801",
            "Extra table can only contain string, number, or boolean types.\t801",
            "Email address not found or invalid.\t704",
            "Parameter 'username' is longer than 64 characters.\t801",
            "Missing required parameter: email\t804",
            "Parameters must be a table, not a string.\t801",
            "Missing required parameter: user_id\t804",
            "User not found.\t604",
            "User not found.\t604",
            "Missing required parameter: update\t804",
            "Missing required parameter: user_id\t804",
            "User not found.\t604",
            "Missing required parameter: user_id\t804",
            "0",
        ]
    );
    assert_eq!(count_users(&db).await, 0);
}

#[tokio::test]
async fn duplicates_are_600_case_insensitively_per_scope() {
    let db = TestDb::new().await;
    let run = run_lua(
        &db,
        "dup.lua",
        r#"
local id = core.users.create({username = "Tiny", password = "x", email = "Tiny@Example.com"})
print(select(2, core.users.create({username = "tINY", password = "y"})))
print(select(2, core.users.create({username = "other", password = "y", email = "tiny@example.COM"})))
-- Another scope is another namespace.
print(type(core.users.create({username = "tiny", password = "y", scope = "game2"})))
-- Renaming onto a taken name is refused too, and changes nothing.
local other = core.users.create({username = "other", password = "y"})
print(select(2, core.users.update(other, {username = "TINY"})))
print(core.users.get(other).username)
"#,
    );
    assert_ok(&run);
    assert_eq!(
        run.lines(),
        [
            "Username already exists.\t600",
            "Email already exists.\t600",
            "string",
            "Username already exists.\t600",
            "other",
        ]
    );
}

#[tokio::test]
async fn both_calling_conventions_and_evt_shape() {
    let db = TestDb::new().await;
    let run = run_lua(
        &db,
        "conventions.lua",
        r#"
local order = {}
-- Seed style: the listener runs once, before the call returns; evt has result xor error.
local ret = core.users.create({username = "tiny", password = "abcd1234"}, function(evt)
  order[#order + 1] = "listener"
  print("evt", type(evt.result), evt.error, evt.status)
end)
order[#order + 1] = "after"
print(table.concat(order, ","), ret)
core.users.get({user_id = "289bc36e-0df7-44df-99b1-a6543c6f45eb"}, function(evt)
  print("evt", evt.result, evt.error, evt.status)
end)
-- Return style: result, or nil, err, status.
local user = core.users.login({username = "TINY", password = "abcd1234"})
print(user.username, user.active, user.validated, user.login_count, user.password, user.password_hash)
print(core.users.login({username = "tiny", password = "wrong"}))
print(core.users.login({username = "nobody", password = "abcd1234"}))
-- 2.x positional forms.
local id = core.users.register("p2", "pw", "default", {email = "p2@example.com", extra = {a = 1}})
print(#id, core.users.get(id).email, core.users.get(id).extra.a)
local u = core.users.get(core.users.register("p3", "pw", "default", {login = true}))
print(u.username, u.login_count)
print(core.users.update(id, {group = "vip"}).group)
print(core.users.delete(id), core.users.delete(id))
"#,
    );
    assert_ok(&run);
    assert_eq!(
        run.lines(),
        [
            "evt\tstring\tnil\tnil",
            "listener,after\tnil",
            "evt\tnil\tUser not found.\t604",
            "tiny\ttrue\ttrue\t1\tnil\tnil",
            "nil\tInvalid username or password.\t603",
            "nil\tInvalid username or password.\t603",
            "36\tp2@example.com\t1",
            "p3\t1",
            "vip",
            "1\t0",
        ]
    );
}

#[tokio::test]
async fn extra_merges_key_by_key_and_null_deletes() {
    let db = TestDb::new().await;
    let run = run_lua(
        &db,
        "extra.lua",
        r#"
local id = core.users.create({username = "x", password = "p", extra = {color = "Red", n = 1, ok = true}})
local u = core.users.update({user_id = id, update = {extra = {n = 2.5, shape = "round"}}})
print(u.extra.color, u.extra.n, u.extra.ok, u.extra.shape)
u = core.users.update(id, {extra = {color = core.NULL, ok = core.users.NULL}})
print(u.extra.color, u.extra.n, u.extra.ok, u.extra.shape)
-- A nested value is refused and nothing is written (the email change included).
print(select(2, core.users.update(id, {email = "x@example.com", extra = {bad = {1, 2}}})))
u = core.users.get(id)
print(u.email, u.extra.n, u.extra.bad)
print(select(2, core.users.update(id, {login_count = 99})))
print(select(2, core.users.update(id, {active = "yes"})))
u = core.users.update(id, {active = false, password = "new"})
print(u.active, u.validated)
print(core.users.login({username = "x", password = "new"}).active)
"#,
    );
    assert_ok(&run);
    assert_eq!(
        run.lines(),
        [
            "Red\t2.5\ttrue\tround",
            "nil\t2.5\tnil\tround",
            "Extra table can only contain string, number, or boolean types.\t801",
            "nil\t2.5\tnil",
            "Field 'login_count' cannot be updated (allowed: username, password, email, group, extra, active).\t801",
            "Parameter 'active' must be a boolean.\t801",
            "false\tfalse",
            "false",
        ]
    );
    let client = db.client().await;
    let row = client
        .query_one("SELECT login_count, extra FROM users", &[])
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, i64>(0),
        0,
        "an inactive user's login records no event"
    );
    assert_eq!(
        row.get::<_, serde_json::Value>(1),
        serde_json::json!({"n": 2.5, "shape": "round"})
    );
}

#[tokio::test]
async fn confirmation_creates_a_pending_user_who_logs_in_inactive() {
    let db = TestDb::new().await;
    let dir = scratch_dir("confirm");
    let script = dir.join("confirm.lua");
    std::fs::write(
        &script,
        r#"
local id = core.users.create({username = "c", password = "p", email = "c@example.com",
  confirmation = {from_email = "games@example.com", subject = "Welcome", tpl_keys = {name = "C"}}})
local u = core.users.get(id)
print(u.active, u.confirmation, u.validated)
u = core.users.login({email = "C@example.com", password = "p"})
print(u.active, u.confirmation, u.validated, u.login_count, u.last_login)
print(select(2, core.users.create({username = "d", password = "p", email = "d@example.com",
  confirmation = {from_email = "games@example.com", subject = "Hi", colour = "x"}})))
"#,
    )
    .unwrap();
    let out = coronium(Some(&db))
        .env("CORONIUM_LOG", "info")
        .args(["run"])
        .arg(&script)
        .output()
        .unwrap();
    let run = crate::common::Run::from(out);
    assert_ok(&run);
    assert_eq!(
        run.lines(),
        [
            "false\tpending\tfalse",
            "false\tpending\tfalse\t0\tnil",
            "Unknown confirmation option 'colour'.\t801",
        ]
    );
    // The mail waits in the outbox (a server's sender delivers it); the user row keeps only
    // the hash of the code in its link.
    let client = db.client().await;
    let code_hash: String = client
        .query_one(
            "SELECT confirmation_code FROM users WHERE username = 'c'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let row = client
        .query_one(
            "SELECT purpose, state, message->>'text' FROM mail_outbox",
            &[],
        )
        .await
        .unwrap();
    let (purpose, state, text): (String, String, String) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (purpose.as_str(), state.as_str()),
        ("confirmation", "queued")
    );
    let link = "http://localhost:10001/_confirmation?code=";
    let code = text[text.find(link).unwrap_or_else(|| panic!("{text}")) + link.len()..]
        .split_whitespace()
        .next()
        .unwrap();
    assert_eq!(coronium::mail::code_hash(code), code_hash);
}

#[tokio::test]
async fn a_listener_error_fails_the_script_with_file_and_line() {
    let db = TestDb::new().await;
    let run = run_lua(
        &db,
        "listener_error.lua",
        "core.users.get({user_id = \"x\"}, function(evt)\n  error(\"listener broke\")\nend)\nprint(\"not reached\")\n",
    );
    assert!(!run.success);
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr.contains("listener_error.lua:2: listener broke"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("stack traceback"), "{}", run.stderr);

    let run = run_lua(&db, "syntax.lua", "print(\"a\"\nlocal = 1\n");
    assert!(!run.success);
    assert!(run.stderr.contains("syntax.lua:2"), "{}", run.stderr);

    // pcall catches host errors and listener errors alike, and the script carries on.
    let run = run_lua(
        &db,
        "pcall.lua",
        "print(pcall(core.users.get, {user_id = \"x\"}, function() error(\"inner\", 0) end))\nprint(\"carried on\")\n",
    );
    assert_ok(&run);
    assert_eq!(run.lines(), ["false\tinner", "carried on"]);
}

#[tokio::test]
async fn a_dropped_database_connection_is_survived() {
    use std::io::{BufRead as _, BufReader};
    let db = TestDb::new().await;
    let dir = scratch_dir("drop");
    let script = dir.join("drop.lua");
    std::fs::write(
        &script,
        r#"
local id = core.users.create({username = "steady", password = "p"})
print("ready")
core.sleep(0.5)
print(core.users.get(id).username)
"#,
    )
    .unwrap();
    // Its log (the pool's warning about the cut connection) is read at the end.
    let mut child = coronium(Some(&db))
        .arg("run")
        .arg(&script)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let killed = db.end_other_sessions().await;
    assert!(killed >= 1, "the script's connection was cut");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    assert!(child.wait().unwrap().success(), "{log}");
    assert_eq!(rest, "steady\n", "{log}");
}

/// Lua gets exactly the record the wire protocol sends: same fields, same values, absent fields
/// absent (the Lua table is built directly, not through JSON).
#[tokio::test]
async fn lua_sees_the_same_user_record_as_the_wire() {
    let db = TestDb::new().await;
    let run = run_lua(
        &db,
        "record.lua",
        r#"
local full = core.users.create({username = "Full", password = "p", email = "full@example.com",
  group = "vip", extra = {level = 3, ratio = 0.5, name = "x", on = true}})
core.users.login({username = "full", password = "p"})
local bare = core.users.create({username = "bare", password = "p"})
print(full)
print(core.json.encode(core.users.get(full)))
print(bare)
print(core.json.encode(core.users.get(bare)))
"#,
    );
    assert_ok(&run);
    let lines = run.lines();
    let users = db.users_with(crate::common::TEST_HASH).await;
    for pair in lines.chunks(2) {
        let id = coronium::users::UserId::parse(pair[0]);
        let from_lua: serde_json::Value = serde_json::from_str(pair[1]).unwrap();
        let scope = coronium::users::Scope::parse("default").unwrap();
        let from_wire = serde_json::to_value(
            users
                .get(coronium::users::Within::Scope(&scope), id)
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(from_lua, from_wire);
    }
    assert!(lines[1].contains("\"last_login\"") && !lines[3].contains("\"last_login\""));
    assert!(!lines[3].contains("\"email\"") && !lines[3].contains("\"confirmation\""));
}

/// Users spec §1: server code naming a user by id alone (`get(id)`, `update(id, t)`,
/// `delete(id)`) finds it in any scope; the table forms act in the caller's scope.
#[tokio::test]
async fn positional_forms_find_a_user_by_id_in_any_scope() {
    let db = TestDb::new().await;
    let run = run_lua(
        &db,
        "anyscope.lua",
        r#"
local id = assert(core.users.create({username = "pilot", password = "pw", scope = "arena"}))
print(core.users.get(id).scope)
print(select(2, core.users.get({user_id = id})))
print(core.users.get({user_id = id, scope = "arena"}).username)
print(core.users.update(id, {group = "aces"}).group)
print(select(2, core.users.update({user_id = id, update = {group = "x"}})))
print(core.users.delete({user_id = id}), core.users.get(id).group)
print(core.users.delete(id), select(2, core.users.get(id)))
"#,
    );
    assert_ok(&run);
    assert_eq!(
        run.lines(),
        [
            "arena",
            "User not found.\t604",
            "pilot",
            "aces",
            "User not found.\t604",
            "0\taces",
            "1\tUser not found.\t604",
        ]
    );
}

/// `register(username, password, scope, meta)` (users spec §2): the id of an active, confirmed
/// user; anonymous and password-less users; a login with `meta.login`; each refusal's status.
#[tokio::test]
async fn register_makes_active_users_named_or_not_with_or_without_a_password() {
    let db = TestDb::new().await;
    let run = run_lua(
        &db,
        "register.lua",
        r#"
local function show(...) print((select(2, ...)), (select(3, ...))) end
local id = core.users.register("pat", "pw", "arena", {email = "pat@example.com", group = "g", extra = {lvl = 2}})
local pat = core.users.get(id)
print(pat.username, pat.scope, pat.active, pat.validated, pat.confirmation, pat.group, pat.extra.lvl, pat.login_count)
print(core.users.login({username = "pat", password = "pw", scope = "arena"}).user_id == id)
local anon = core.users.get(core.users.register(nil, nil, "arena", {login = true}))
print(anon.username:match("^user%-%x+$") ~= nil, #anon.username, anon.login_count, anon.active)
local quiet = core.users.register("quiet", nil, "arena")
print(select(3, core.users.login({username = "quiet", password = "anything", scope = "arena"})))
core.users.register("lis", "pw", "arena", {}, function(evt) print("listener", #evt.result) end)
show(core.users.register("x", "pw"))
show(core.users.register(nil, "pw", "arena"))
show(core.users.register("y", "pw", "arena", {device_id = "d"}))
show(core.users.register("y", "pw", "arena", {login = "yes"}))
show(core.users.register("y", "pw", "arena", {email = "nope"}))
show(core.users.register("PAT", "pw", "arena"))
show(core.users.register("z", "pw", "arena", {extra = {deep = {}}}))
"#,
    );
    assert_ok(&run);
    assert_eq!(
        run.lines(),
        [
            "pat\tarena\ttrue\ttrue\tnil\tg\t2\t0",
            "true",
            "true\t17\t1\ttrue",
            "603",
            "listener\t36",
            "Missing required parameter: scope\t804",
            "An anonymous user cannot have a password.\t801",
            "Unknown meta key 'device_id'.\t801",
            "Meta key 'login' must be a boolean.\t801",
            "Email address not found or invalid.\t704",
            "Username already exists.\t600",
            "Extra table can only contain string, number, or boolean types.\t801",
        ]
    );
}

/// A user registered without a password is told, over the wire, to log in from server code.
#[tokio::test]
async fn a_password_less_user_cannot_log_in_from_a_client() {
    use coronium::users::password::md5_hex;
    use serde_json::json;
    let db = TestDb::new().await;
    let run = run_lua(
        &db,
        "quiet.lua",
        r#"print(#core.users.register("quiet", nil, "default"))"#,
    );
    assert_ok(&run);
    let server = crate::common::TestServer::start(&db, |_| {});
    assert_eq!(
        server
            .call(
                "api.users",
                "login",
                json!({"username": "quiet", "password": md5_hex("anything")})
            )
            .await,
        json!({"result": {"error": "User requires server-side login.", "status": 605}})
    );
    assert_eq!(
        server
            .call(
                "api.users",
                "login",
                json!({"username": "nobody", "password": md5_hex("anything")})
            )
            .await,
        json!({"result": {"error": "Invalid username or password.", "status": 603}})
    );
}

/// `resendConfirmation` from Lua: the table form, answering the user id; once a minute; 614 for
/// a user who is not pending, 804 without an id.
#[tokio::test]
async fn resend_confirmation_from_lua() {
    let db = TestDb::new().await;
    let run = run_lua(
        &db,
        "resend.lua",
        r#"
local id = assert(core.users.create({username = "pend", password = "pw", email = "p@example.com",
  confirmation = {from_email = "games@example.com", subject = "Confirm"}}))
print(core.users.resendConfirmation({user_id = id}) == id)
core.users.resendConfirmation({user_id = id}, function(evt) print("listener", evt.error, evt.status) end)
local plain = assert(core.users.create({username = "plain", password = "pw"}))
print(select(2, core.users.resendConfirmation({user_id = plain})))
print(select(2, core.users.resendConfirmation({})))
"#,
    );
    assert_ok(&run);
    assert_eq!(
        run.lines(),
        [
            "true",
            "listener\tToo many requests.\t810",
            "Pending user not found.\t614",
            "Missing required parameter: user_id\t804",
        ]
    );
}

/// `login{user_id}` from server code (users spec §3): no password, any scope; the login event
/// only for active, confirmed users; 604 for an unknown or malformed id. Not a client action.
#[tokio::test]
async fn server_code_logs_a_user_in_by_id() {
    use coronium::users::password::md5_hex;
    use serde_json::json;
    let db = TestDb::new().await;
    let run = run_lua(
        &db,
        "by-id.lua",
        r#"
local id = core.users.register("far", "pw", "arena")
local user = core.users.login({user_id = id})
print(user.username, user.scope, user.login_count)
print(core.users.login({user_id = id, password = "wrong"}).login_count)
local pend = assert(core.users.create({username = "pend", password = "pw", email = "p@example.com",
  confirmation = {from_email = "g@example.com", subject = "Confirm"}}))
local pending = core.users.login({user_id = pend})
print(pending.username, pending.active, pending.login_count)
print(select(2, core.users.login({user_id = "00000000-0000-4000-8000-000000000001"})))
print(select(2, core.users.login({user_id = "not-an-id"})))
print(id)
"#,
    );
    assert_ok(&run);
    let lines = run.lines();
    assert_eq!(
        lines[..5],
        [
            "far\tarena\t1",
            "2",
            "pend\tfalse\t0",
            "User not found.\t604",
            "User not found.\t604",
        ]
    );
    let server = crate::common::TestServer::start(&db, |_| {});
    assert_eq!(
        server
            .call_in("arena", "api.users", "login", json!({"user_id": lines[5]}))
            .await,
        json!({"result": {"error": "Missing required parameter: password", "status": 804}})
    );
    assert_eq!(
        server
            .call_in(
                "arena",
                "api.users",
                "login",
                json!({"user_id": lines[5], "password": md5_hex("nope")})
            )
            .await,
        json!({"result": {"error": "Missing required parameter: username", "status": 804}})
    );
}

/// `login{username, scope}` from server code (users spec §3): no password, in the scope the call
/// names; 604 for nobody; without `scope` it is a password login missing its password. A handler
/// that passes the client's own input on gets only the client's ways in (no `user_id`, no
/// password-less name), whatever else it does with the table.
#[tokio::test]
async fn server_code_logs_a_user_in_by_name_and_forwarded_input_cannot() {
    use crate::common::{serve_projects, write_project};
    use serde_json::json;
    let db = TestDb::new().await;
    let run = run_lua(
        &db,
        "by-name.lua",
        r#"
local id = core.users.register("named", "pw", "arena")
local user = core.users.login({username = "NAMED", scope = "arena"})
print(user.user_id == id, user.scope, user.login_count)
core.users.login({username = "named", scope = "arena"}, function(evt) print("listener", evt.result.login_count) end)
print(select(2, core.users.login({username = "nobody", scope = "arena"})))
print(select(2, core.users.login({username = "named", scope = "default"})))
print(select(2, core.users.login({username = "named"})))
"#,
    );
    assert_ok(&run);
    assert_eq!(
        run.lines(),
        [
            "true\tarena\t1",
            "listener\t2",
            "User not found.\t604",
            "User not found.\t604",
            "Missing required parameter: password\t804",
        ]
    );

    let root = scratch_dir("projects");
    write_project(
        &root,
        "Fwd",
        &[(
            "main.lua",
            r#"
local api = core.api()
function api.login(input)
  input.scope = input.scope or "arena"
  local user, err, status = core.users.login(input)
  if not user then return nil, err, status end
  return user.username
end
function api.relay(input) return core.callApi("Fwd", "login", input) end
return api
"#,
        )],
    );
    let server = serve_projects(&db, &root, "1", &[]);
    let id = db
        .client()
        .await
        .query_one(
            "SELECT user_id::text FROM users WHERE username = 'named'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, String>(0);
    for method in ["login", "relay"] {
        assert_eq!(
            server.call("Fwd", method, json!({"user_id": id})).await,
            json!({"result": {"error": "A client cannot log in by user_id.", "status": 801}}),
            "{method}"
        );
        assert_eq!(
            server
                .call("Fwd", method, json!({"user_id": id, "password": "wrong"}))
                .await["result"]["status"],
            801,
            "{method}"
        );
        assert_eq!(
            server
                .call("Fwd", method, json!({"username": "named"}))
                .await,
            json!({"result": {"error": "Missing required parameter: password", "status": 804}}),
            "{method}"
        );
        assert_eq!(
            server
                .call(
                    "Fwd",
                    method,
                    json!({"username": "named", "password": "pw"})
                )
                .await,
            json!({"result": "named"}),
            "{method}: a password login passes through"
        );
    }
}

/// A user the database refuses to store (here a trigger standing in for a full disk) is 601
/// `User could not be created.` from create and register, in Lua and over the wire, with the
/// cause in the log and nothing queued.
#[tokio::test]
async fn a_storage_failure_is_601() {
    use coronium::users::password::md5_hex;
    use serde_json::json;
    let db = TestDb::new().await;
    db.client()
        .await
        .batch_execute(
            "CREATE FUNCTION refuse_doomed() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.username = 'doomed' THEN RAISE EXCEPTION 'disk full (simulated)'; END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER refuse_doomed BEFORE INSERT ON users
               FOR EACH ROW EXECUTE FUNCTION refuse_doomed();",
        )
        .await
        .unwrap();
    let run = run_lua(
        &db,
        "doomed.lua",
        r#"
print(select(2, core.users.register("doomed", "pw", "default")))
print(select(2, core.users.create({username = "doomed", password = "pw"})))
print(select(2, core.users.create({username = "doomed", password = "pw", email = "d@example.com",
  confirmation = {from_email = "g@example.com", subject = "Hi"}})))
print(core.users.create({username = "fine", password = "pw"}) ~= nil)
"#,
    );
    assert_ok(&run);
    assert_eq!(
        run.lines(),
        [
            "User could not be created.\t601",
            "User could not be created.\t601",
            "User could not be created.\t601",
            "true",
        ]
    );
    assert!(
        run.stderr.contains("disk full (simulated)"),
        "{}",
        run.stderr
    );
    let server = crate::common::TestServer::start(&db, |_| {});
    assert_eq!(
        server
            .call(
                "api.users",
                "create",
                json!({"username": "doomed", "password": md5_hex("pw")})
            )
            .await,
        json!({"result": {"error": "User could not be created.", "status": 601}})
    );
    let queued: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM mail_outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(queued, 0);
}

/// A wire client sends md5 hex (the plugin hashes what the player typed); a plain password
/// through the wire would make a user whom no login could reach, so it is refused with 801.
#[tokio::test]
async fn the_wire_refuses_a_password_that_is_not_md5_hex() {
    let db = TestDb::new().await;
    let server = crate::common::TestServer::start(&db, |_| {});
    let refused = server
        .call(
            "api.users",
            "create",
            json!({ "username": "plain", "password": "abcd1234" }),
        )
        .await;
    assert_eq!(refused["result"]["status"], 801, "{refused}");
    let message = refused["result"]["error"].as_str().unwrap();
    assert!(
        message.contains("md5") && message.contains("32"),
        "{message}"
    );
    assert_eq!(count_users(&db).await, 0, "nothing was created");

    let md5 = coronium::users::password::md5_hex("abcd1234");
    let created = server
        .call(
            "api.users",
            "create",
            json!({ "username": "hexed", "password": md5.to_uppercase() }),
        )
        .await;
    let id = created["result"]["user_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"));
    let update = server
        .call(
            "api.users",
            "update",
            json!({ "user_id": id, "update": { "password": "new-plain-password" } }),
        )
        .await;
    assert_eq!(update["result"]["status"], 801, "{update}");
    // The password is unchanged: the old one still logs in, from the wire and from Lua.
    let login = server
        .call(
            "api.users",
            "login",
            json!({ "username": "hexed", "password": md5 }),
        )
        .await;
    assert_eq!(login["result"]["user_id"], id, "{login}");
    let lua = run_lua(
        &db,
        "login.lua",
        "local user = core.users.login({username = 'hexed', password = 'abcd1234'})\n\
         print(user and user.username)",
    );
    assert_ok(&lua);
    assert_eq!(lua.lines(), ["hexed"]);
}
