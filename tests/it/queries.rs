//! `core.users.getWithQuery`, `getGroup` and `getAndMerge` (users spec §6): server-side only,
//! positional arguments with an optional listener.

use crate::common::{TestDb, assert_ok, run_lua};

/// Five users in "arena" (one inactive), one in another scope: what every query below runs on.
const SEED: &str = r#"
local function make(name, group, email, scope)
  local id, err = core.users.create({username = name, password = "pw" .. name, group = group,
                                     email = email, scope = scope or "arena"})
  assert(id, err)
  return id
end
make("ann", "cadets", "ann@example.com")
make("bob", "cadets")
make("cyd", "pilots")
make("dee", "cadets")
local eve = make("eve", "cadets")
assert(core.users.update({user_id = eve, update = {active = false}, scope = "arena"}))
make("ann", "cadets", nil, "elsewhere")
local function names(users)
  local out = {}
  for i, user in ipairs(users) do out[i] = user.username end
  return table.concat(out, ",")
end
"#;

fn script(body: &str) -> String {
    format!("{SEED}\n{body}")
}

#[tokio::test]
async fn queries_match_equalities_in_their_scope_in_order() {
    let db = TestDb::new().await;
    let run = run_lua(
        &db,
        "query.lua",
        &script(
            r#"
print(names(core.users.getWithQuery("arena")))
print(names(core.users.getWithQuery("arena", {group = "cadets", active = true})))
print(names(core.users.getWithQuery("arena", {username = "ANN"})), core.users.getWithQuery("arena", {username = "ANN"})[1].scope)
print(names(core.users.getWithQuery("arena", {email = "Ann@Example.com"})))
print(names(core.users.getWithQuery("arena", {orderby = {username = "desc"}})))
print(names(core.users.getWithQuery("arena", {orderby = {group = "DESC", username = "ASC"}})))
print(names(core.users.getWithQuery("arena", {limit = {1, 2}})))
print(#core.users.getWithQuery("arena", {group = "nobody"}))
"#,
        ),
    );
    assert_ok(&run);
    assert_eq!(
        run.lines(),
        [
            "ann,bob,cyd,dee,eve",
            "ann,bob,dee",
            "ann\tarena",
            "ann",
            "eve,dee,cyd,bob,ann",
            // `group` before `username`: alphabetical, whatever order the table was written in.
            "cyd,ann,bob,dee,eve",
            "bob,cyd",
            "0",
        ]
    );
}

#[tokio::test]
async fn limit_one_is_the_user_itself_and_not_found_without_a_match() {
    let db = TestDb::new().await;
    let run = run_lua(
        &db,
        "single.lua",
        &script(
            r#"
local user = core.users.getWithQuery("arena", {username = "cyd", limit = 1})
print(user.username, user.group, user[1])
print(core.users.getWithQuery("arena", {username = "zed", limit = 1}))
print(#core.users.getWithQuery("arena", {username = "cyd", limit = {0, 1}}))
core.users.getWithQuery("arena", {limit = 1}, function(evt) print("listener", evt.result.username, evt.error) end)
core.users.getWithQuery("arena", {username = "zed", limit = 1}, function(evt) print("listener", evt.result, evt.error, evt.status) end)
"#,
        ),
    );
    assert_ok(&run);
    assert_eq!(
        run.lines(),
        [
            "cyd\tpilots\tnil",
            "nil\tUser not found.\t604",
            "1",
            "listener\tann\tnil",
            "listener\tnil\tUser not found.\t604",
        ]
    );
}

#[tokio::test]
async fn get_group_is_the_groups_active_users() {
    let db = TestDb::new().await;
    let run = run_lua(
        &db,
        "group.lua",
        &script(
            r#"
print(names(core.users.getGroup("arena", "cadets")))
print(names(core.users.getGroup("arena", "cadets", 2)))
print(core.users.getGroup("arena", "cadets", 1).username)
print(names(core.users.getGroup("arena", "cadets", {1, 5})))
core.users.getGroup("arena", "pilots", function(evt) print("listener", names(evt.result)) end)
print(core.users.getGroup("arena"))
print(core.users.getGroup("arena", "nobody", 1))
"#,
        ),
    );
    assert_ok(&run);
    assert_eq!(
        run.lines(),
        [
            "ann,bob,dee",
            "ann,bob",
            "ann",
            "bob,dee",
            "listener\tcyd",
            "nil\tMissing required parameter: group\t804",
            "nil\tUser not found.\t604",
        ]
    );
}

#[tokio::test]
async fn bad_queries_are_refused_with_their_status() {
    let db = TestDb::new().await;
    let run = run_lua(
        &db,
        "bad.lua",
        &script(
            r#"
local function show(...) print((select(2, ...)), (select(3, ...))) end
show(core.users.getWithQuery(nil, {}))
show(core.users.getWithQuery("arena", {password = "pwann"}))
show(core.users.getWithQuery("arena", {where = "1=1"}))
show(core.users.getWithQuery("arena", {limit = 0}))
show(core.users.getWithQuery("arena", {limit = {-1, 5}}))
show(core.users.getWithQuery("arena", {orderby = {password_hash = "ASC"}}))
show(core.users.getWithQuery("arena", {orderby = {username = "sideways"}}))
show(core.users.getWithQuery("arena", {active = "yes"}))
show(core.users.getAndMerge("00000000-0000-0000-0000-000000000000", {}))
"#,
        ),
    );
    assert_ok(&run);
    let lines = run.lines();
    assert_eq!(lines[0], "Missing required parameter: scope\t804");
    for line in &lines[1..8] {
        assert!(line.ends_with("\t801"), "{line}");
    }
    assert!(lines[1].contains("password"), "{}", lines[1]);
    assert!(lines[2].contains("'where'"), "{}", lines[2]);
    assert_eq!(lines[8], "getAndMerge needs the database module.\t810");
}

/// `users.max_query_limit` cuts what a query may ask for.
#[tokio::test]
async fn the_operator_caps_how_many_users_a_query_returns() {
    let db = TestDb::new().await;
    let path = crate::common::scratch_dir("script").join("capped.lua");
    std::fs::write(
        &path,
        script(
            r#"
print(names(core.users.getWithQuery("arena", {limit = 100})))
print(names(core.users.getGroup("arena", "cadets", {1, 50})))
"#,
        ),
    )
    .unwrap();
    let run: crate::common::Run = crate::common::coronium(Some(&db))
        .env("CORONIUM_USERS_MAX_QUERY_LIMIT", "2")
        .arg("run")
        .arg(&path)
        .output()
        .unwrap()
        .into();
    assert_ok(&run);
    assert_eq!(run.lines(), ["ann,bob", "bob,dee"]);
}
