//! OAuth provider links (users spec §5) from Lua: both calling conventions, each status, and the
//! login by provider account.

use crate::common::{TestDb, assert_ok, run_lua};

/// Prints what a call answered: the result (tables as sorted `key=value` lists) or `err status`.
const SHOW: &str = r#"
local function flat(value)
  if type(value) ~= "table" then return tostring(value) end
  local keys = {}
  for k in pairs(value) do keys[#keys + 1] = k end
  table.sort(keys)
  local out = {}
  for _, k in ipairs(keys) do out[#out + 1] = k .. "=" .. flat(value[k]) end
  return "{" .. table.concat(out, ",") .. "}"
end
local function show(result, err, status)
  if err then print(err, status) else print(flat(result)) end
end
local id = assert(core.users.create({username = "ann", password = "pw", scope = "arena"}))
local other = assert(core.users.create({username = "bob", password = "pw", scope = "arena"}))
"#;

fn script(body: &str) -> String {
    format!("{SHOW}\n{body}")
}

#[tokio::test]
async fn links_are_added_read_changed_and_removed_in_both_forms() {
    let db = TestDb::new().await;
    let run = run_lua(
        &db,
        "links.lua",
        &script(
            r#"
show(core.users.addAuthProvider(id, core.GOOGLE, {client_id = "g-1", access_token = "t", access_token_expiry = 4102444800}))
show(core.users.getAuthProvider(id, "google"))
show(core.users.addAuthProvider({user_id = id, provider = core.FACEBOOK, scope = "arena", client_id = "f-1"}))
show(core.users.getAuthProviders(id))
show(core.users.updateAuthProvider(id, "google", {access_token = core.NULL, access_token_expiry = 1}))
show(core.users.updateTokenExpiry(id, "google", 4102444800, "fresh"))
show(core.users.accessTokenExpired(id, "google"))
show(core.users.accessTokenExpired(id, "facebook"))
show(core.users.accessTokenExpired(id, "twitter"))
core.users.accessTokenExpired({user_id = id, provider = "google", scope = "arena"}, function(evt) print("listener", flat(evt.result)) end)
show(core.users.removeAuthProvider({user_id = id, provider = "facebook", scope = "arena"}))
show(core.users.removeAuthProvider(id, "google") == id)
show(core.users.getAuthProviders(id))
show(core.users.removeAuthProviders(id) == id)
"#,
        ),
    );
    assert_ok(&run);
    let id_line = |line: &str| line.replace(char::is_alphanumeric, "x");
    let lines = run.lines();
    assert_eq!(
        lines[..10],
        [
            "{access_token=t,access_token_expired=false,access_token_expiry=4102444800,client_id=g-1,provider=google}",
            "{access_token=t,access_token_expired=false,access_token_expiry=4102444800,client_id=g-1,provider=google}",
            "{access_token_expired=true,client_id=f-1,provider=facebook}",
            "{facebook={access_token_expired=true,client_id=f-1,provider=facebook},google={access_token=t,access_token_expired=false,access_token_expiry=4102444800,client_id=g-1,provider=google}}",
            "{access_token_expired=true,access_token_expiry=1,client_id=g-1,provider=google}",
            "{access_token=fresh,access_token_expired=false,access_token_expiry=4102444800,client_id=g-1,provider=google}",
            "false",
            "true",
            "true",
            "listener\t{expired=false}",
        ]
    );
    assert_eq!(
        id_line(lines[10]),
        id_line("{user_id=01a23cca-6432-764f-b1c0-65c1bed49407}")
    );
    assert_eq!(lines[11..], ["true", "{}", "true"]);
}

#[tokio::test]
async fn each_link_failure_has_its_status() {
    let db = TestDb::new().await;
    let run = run_lua(
        &db,
        "link-errors.lua",
        &script(
            r#"
local nobody = "00000000-0000-4000-8000-000000000001"
assert(core.users.addAuthProvider(id, "google", {client_id = "g-1"}))
show(core.users.addAuthProvider(nil, "google", {client_id = "x"}))
show(core.users.addAuthProvider(id, nil, {client_id = "x"}))
show(core.users.addAuthProvider(id, "steam", {}))
show(core.users.addAuthProvider(id, "steam", {client_id = "s", access_token_expiry = "soon"}))
show(core.users.addAuthProvider(id, "steam", {client_id = "s", secret = "x"}))
show(core.users.addAuthProvider(id, string.rep("p", 65), {client_id = "s"}))
show(core.users.addAuthProvider(nobody, "steam", {client_id = "s"}))
show(core.users.addAuthProvider(id, "google", {client_id = "g-2"}))
show(core.users.addAuthProvider(other, "google", {client_id = "g-1"}))
show(core.users.getAuthProvider(id, "steam"))
show(core.users.getAuthProvider(nobody, "google"))
show(core.users.getAuthProviders(nobody))
show(core.users.updateAuthProvider(id, "steam", {access_token = "t"}))
show(core.users.updateAuthProvider(id, "google", {client_id = core.NULL}))
assert(core.users.addAuthProvider(other, "google", {client_id = "g-9"}))
show(core.users.updateAuthProvider(other, "google", {client_id = "g-1"}))
show(core.users.updateTokenExpiry(id, "google"))
show(core.users.updateTokenExpiry(id, "steam", 5))
show(core.users.removeAuthProvider(id, "steam"))
show(core.users.removeAuthProvider(nobody, "google"))
show(core.users.removeAuthProviders(nobody))
show(core.users.getAuthProvider({user_id = id, provider = "google"}))
"#,
        ),
    );
    assert_ok(&run);
    let lines = run.lines();
    let statuses: Vec<&str> = lines
        .iter()
        .map(|line| line.rsplit('\t').next().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "804", "804", "804", "801", "801", "801", "604", "620", "620", "624", "604", "604",
            "624", "801", "620", "804", "624", "624", "604", "604",
            // The table form acts in the request's scope ("default"): ann is not there.
            "604",
        ],
        "{lines:#?}"
    );
    assert_eq!(lines[7], "OAuth provider already exists for user.\t620");
    assert_eq!(
        lines[8],
        "This provider account is already linked to another user.\t620"
    );
    assert_eq!(lines[9], "OAuth provider does not exist for user.\t624");
}

#[tokio::test]
async fn a_provider_account_logs_its_user_in_and_deleting_the_user_drops_its_links() {
    let db = TestDb::new().await;
    let run = run_lua(
        &db,
        "oauth-login.lua",
        &script(
            r#"
assert(core.users.addAuthProvider(id, core.OPENUDID, {client_id = "device-1"}))
local user = core.users.login({provider = core.OPENUDID, client_id = "device-1", scope = "arena"})
print(user.username, user.login_count, user.oauth.provider, user.oauth.client_id)
print(select(2, core.users.login({provider = core.OPENUDID, client_id = "device-2", scope = "arena"})))
print(select(2, core.users.login({provider = core.OPENUDID, client_id = "device-1", scope = "elsewhere"})))
local found = core.users.getWithProvider("arena", core.OPENUDID, "device-1")
print(found.username, found.login_count, found.oauth.client_id)
print(select(2, core.users.getWithProvider("arena", core.OPENUDID)))
print(select(2, core.users.getWithProvider(nil, core.OPENUDID, "device-1")))
print(core.users.delete(id))
print(select(2, core.users.getWithProvider("arena", core.OPENUDID, "device-1")))
-- The account is free again once its user is gone.
print(core.users.addAuthProvider(other, core.OPENUDID, {client_id = "device-1"}).client_id)
"#,
        ),
    );
    assert_ok(&run);
    assert_eq!(
        run.lines(),
        [
            "ann\t1\topenudid\tdevice-1",
            "User not found.\t604",
            "User not found.\t604",
            "ann\t1\tdevice-1",
            "Missing required parameter: client_id\t804",
            "Missing required parameter: scope\t804",
            "1",
            "User not found.\t604",
            "device-1",
        ]
    );
}

/// The client plugin's provider actions over the wire, and its login by provider account.
#[tokio::test]
async fn the_client_actions_over_the_wire() {
    use crate::common::TestServer;
    use coronium::users::password::md5_hex;
    use serde_json::json;
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |_| {});
    let created = server
        .call(
            "api.users",
            "create",
            json!({"username": "ann", "password": md5_hex("pw")}),
        )
        .await;
    let id = created["result"]["user_id"].clone();
    let call = |action: &'static str, params: serde_json::Value| {
        let server = &server;
        async move { server.call("api.users", action, params).await }
    };
    assert_eq!(
        call(
            "addAuthProvider",
            json!({"user_id": id, "provider": "google", "auth": {"client_id": "g-1", "access_token": "t"}})
        )
        .await,
        json!({"result": {"provider": "google", "client_id": "g-1", "access_token": "t",
                          "access_token_expired": false}})
    );
    // The flat form a documented client example sends.
    assert_eq!(
        call(
            "addAuthProvider",
            json!({"user_id": id, "provider": "openudid", "client_id": "device-1"})
        )
        .await["result"]["client_id"],
        json!("device-1")
    );
    assert_eq!(
        call(
            "getAuthProvider",
            json!({"user_id": id, "provider": "google"})
        )
        .await["result"]["access_token"],
        json!("t")
    );
    assert_eq!(
        call(
            "updateAuthProvider",
            json!({"user_id": id, "provider": "google", "update": {"access_token": "u"}})
        )
        .await["result"]["access_token"],
        json!("u")
    );
    assert_eq!(
        call(
            "updateTokenExpiry",
            json!({"user_id": id, "provider": "google", "expiry": 1, "token": "v"})
        )
        .await["result"],
        json!({"provider": "google", "client_id": "g-1", "access_token": "v",
               "access_token_expiry": 1, "access_token_expired": true})
    );
    assert_eq!(
        call(
            "accessTokenExpired",
            json!({"user_id": id, "provider": "google"})
        )
        .await,
        json!({"result": {"expired": true}})
    );
    let login = call(
        "login",
        json!({"provider": "openudid", "client_id": "device-1"}),
    )
    .await;
    assert_eq!(login["result"]["username"], json!("ann"));
    assert_eq!(login["result"]["login_count"], json!(1));
    assert_eq!(login["result"]["oauth"]["client_id"], json!("device-1"));
    assert_eq!(
        call(
            "login",
            json!({"provider": "openudid", "client_id": "device-2"})
        )
        .await,
        json!({"result": {"error": "User not found.", "status": 604}})
    );
    // Without a password or a provider account, a client cannot log in.
    assert_eq!(
        call("login", json!({"user_id": id})).await,
        json!({"result": {"error": "Missing required parameter: password", "status": 804}})
    );
    assert_eq!(
        call(
            "removeAuthProvider",
            json!({"user_id": id, "provider": "google"})
        )
        .await,
        json!({"result": {"user_id": id}})
    );
    assert_eq!(
        call(
            "removeAuthProvider",
            json!({"user_id": id, "provider": "google"})
        )
        .await,
        json!({"result": {"error": "OAuth provider does not exist for user.", "status": 624}})
    );
    // The server-only functions are no client actions.
    for action in ["getAuthProviders", "removeAuthProviders", "getWithProvider"] {
        assert_eq!(
            call(action, json!({"user_id": id})).await["result"]["status"],
            json!(810),
            "{action}"
        );
    }
    // Another scope sees none of it.
    assert_eq!(
        server
            .call_in(
                "elsewhere",
                "api.users",
                "getAuthProvider",
                json!({"user_id": id, "provider": "openudid"})
            )
            .await,
        json!({"result": {"error": "User not found.", "status": 604}})
    );
}

/// `users.wire_oauth_login = false`: a client can no longer log in by provider account alone,
/// over the wire or through a handler that passes its input on; server code still can.
#[tokio::test]
async fn operators_can_turn_off_the_wire_login_by_provider_account() {
    use crate::common::{TestServer, scratch_dir, serve_projects, write_project};
    use serde_json::json;
    let db = TestDb::new().await;
    let run = run_lua(
        &db,
        "device.lua",
        r#"
local id = assert(core.users.create({username = "dev", password = "pw"}))
assert(core.users.addAuthProvider(id, core.OPENUDID, {client_id = "device-1"}))
print(core.users.login({provider = core.OPENUDID, client_id = "device-1"}).username)
"#,
    );
    assert_ok(&run);
    assert_eq!(run.lines(), ["dev"]);
    let server = TestServer::start(&db, |cmd| {
        cmd.env("CORONIUM_USERS_WIRE_OAUTH_LOGIN", "false");
    });
    assert_eq!(
        server
            .call(
                "api.users",
                "login",
                json!({"provider": "openudid", "client_id": "device-1"})
            )
            .await,
        json!({"result": {"error": "Missing required parameter: password", "status": 804}})
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
  local user, err, status = core.users.login(input)
  if not user then return nil, err, status end
  return user.username
end
function api.own(input)
  return core.users.login({provider = input.provider, client_id = input.client_id}).username
end
return api
"#,
        )],
    );
    let account = json!({"provider": "openudid", "client_id": "device-1"});
    for (setting, forwarded) in [
        ("true", json!({"result": "dev"})),
        (
            "false",
            json!({"result": {"error": "Missing required parameter: password", "status": 804}}),
        ),
    ] {
        let env = [("CORONIUM_USERS_WIRE_OAUTH_LOGIN", setting)];
        let server = serve_projects(&db, &root, "1", &env);
        assert_eq!(
            server.call("Fwd", "login", account.clone()).await,
            forwarded,
            "wire_oauth_login = {setting}"
        );
        assert_eq!(
            server.call("Fwd", "own", account.clone()).await,
            json!({"result": "dev"}),
            "a table the handler builds is its own choice"
        );
    }
}
