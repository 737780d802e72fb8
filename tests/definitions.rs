//! The `core` type definitions (editor/coronium.d.luau) under Luau's own type checker, the one
//! luau-lsp runs in editors: they load, the code we ship and scaffold checks clean against them,
//! and mistakes an author makes are caught.

use luau_analyze::{Checker, Diagnostic, Severity};

const DEFINITIONS: &str = include_str!("../editor/coronium.d.luau");

fn checker() -> Checker {
    let mut checker = Checker::new().expect("a checker");
    checker
        .add_definitions(DEFINITIONS)
        .expect("the definitions load");
    checker
}

/// The type errors (not lint warnings) Luau finds in `source`, in strict mode.
fn errors(checker: &mut Checker, source: &str) -> Vec<Diagnostic> {
    checker
        .check(source)
        .expect("checked")
        .diagnostics
        .into_iter()
        .filter(|d| d.severity == Severity::Error)
        .collect()
}

fn scaffold(file: &str) -> String {
    std::fs::read_to_string(format!("editor/template/{file}"))
        .unwrap()
        .replace("__NAME__", "Demo")
}

#[test]
fn the_scaffolded_project_checks_clean_in_strict_mode() {
    let mut checker = checker();
    for file in ["main.lua", "test.lua"] {
        let found = errors(&mut checker, &scaffold(file));
        assert!(found.is_empty(), "{file}: {found:#?}");
    }
}

#[test]
fn both_calling_conventions_of_every_users_function_check_clean() {
    let mut checker = checker();
    let source = r#"
local id = "289bc36e-0df7-44df-99b1-a6543c6f45eb"
local function listener(evt)
  if evt.error then print(evt.error, evt.status) end
end
core.users.create({username = "tiny", password = "abcd1234", email = "t@example.com",
  extra = {color = "Blue", level = 3, vip = true}}, listener)
local new_id, err, status = core.users.create({username = "tiny", password = "abcd1234"})
core.users.login({username = "tiny", password = "abcd1234"}, function(evt)
  if evt.result then print(evt.result.user_id, evt.result.login_count) end
end)
local user = core.users.login({email = "t@example.com", password = "abcd1234"})
if user then print(user.username, user.extra.color, user.active, user.last_login) end
core.users.get({user_id = id}, listener)
local same = core.users.get(id)
core.users.update({user_id = id, update = {email = "new@example.com", extra = {color = core.NULL}}}, listener)
local updated = core.users.update(id, {group = "vip", active = false})
core.users.delete({user_id = id}, listener)
local removed = core.users.delete(id)
local registered = core.users.register("tiny2", "abcd1234", "default", {email = "x@example.com", login = true})
local list = core.users.getWithQuery("default", {group = "vip", orderby = {created = "DESC"}, limit = {0, 10}})
local group = core.users.getGroup("default", "vip", 5)
local info = core.users.addAuthProvider(id, core.FACEBOOK, {client_id = "123", access_token = "t"})
local expired = core.users.accessTokenExpired(id, core.FACEBOOK)
local by_provider = core.users.getWithProvider("default", core.FACEBOOK, "123")
core.users.updateTokenExpiry(id, core.FACEBOOK, os.time() + 3600, "token")
core.users.removeAuthProviders(id)
core.users.sendPasswordResetLink("t@example.com", "default", {from_email = "a@b.c", subject = "Reset"})
core.users.resendConfirmation({user_id = id}, listener)
core.users.flushExpiredPasswordResets()
local encoded = core.json.encode({a = 1})
local decoded, why = core.json.decode("[1, 2]")
local sent = core.email.new():to("a@example.com"):from("b@example.com"):subject("Hi"):text("Hello"):send()
core.log("id", core.uuid(), core.md5("x"), core.sf("%d", 5), core.trim(" a "), #core.split("a,b", ","))
core.debug({nested = {1, 2}})
core.sleep(0.1)
local answer, failure, code = core.callApi("Other", "hello", {name = "you"})
local api = core.api()
function api.hello(input, scope)
  return {greeting = "Hello " .. tostring(input.name), scope = scope}
end
function api.fail(input, scope)
  return core.error("Nope.", 604)
end
return api
"#;
    let found = errors(&mut checker, source);
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn an_authors_mistakes_are_caught() {
    let mut checker = checker();
    let cases = [
        // a misspelt function
        ("core.users.logn({username = 'a', password = 'b'})", "logn"),
        // an id that is no string
        ("local u = core.users.get(5)", "number"),
        // a user field that does not exist
        (
            "local u = core.users.get('x')\nif u then print(u.password) end",
            "password",
        ),
        // a nested table in extra
        ("core.users.update('x', {extra = {deep = {1}}})", ""),
        // an email method that does not exist
        ("core.email.new():body('x')", "body"),
    ];
    for (source, mentions) in cases {
        let found = errors(&mut checker, source);
        assert!(!found.is_empty(), "not caught: {source}");
        assert!(
            found.iter().any(|d| d.message.contains(mentions)),
            "{source}: {found:#?}"
        );
    }
}

#[test]
fn the_seed_examples_check_clean() {
    let mut checker = checker();
    let mut checked = 0;
    for entry in std::fs::read_dir("examples/seed").unwrap() {
        let path = entry.unwrap().path();
        // The "-signature" files show a call's shape with placeholder names, not code to run.
        let name = path.to_string_lossy();
        if !name.ends_with(".lua") || name.ends_with("-signature.lua") {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        let found = errors(&mut checker, &source);
        assert!(found.is_empty(), "{}: {found:#?}", path.display());
        checked += 1;
    }
    assert_eq!(checked, 7);
}

/// Every `.lua` file under `dir`, at any depth, sorted. (Not `coronium::lua::check`'s walker:
/// this test cannot link the library, whose Luau clashes with luau-analyze's.)
fn lua_files(dir: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![std::path::PathBuf::from(dir)];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "lua") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

#[test]
fn the_example_projects_and_the_users_tour_check_clean_in_strict_mode() {
    let mut checker = checker();
    let mut files = lua_files("examples/projects");
    files.push("examples/users-tour.lua".into());
    let mut failures = Vec::new();
    for path in &files {
        let mut found = errors(&mut checker, &std::fs::read_to_string(path).unwrap());
        // The checker sees one file at a time; the server resolves `require("Demo.greeting")`.
        found.retain(|d| !d.message.starts_with("Unknown require"));
        if !found.is_empty() {
            failures.push(format!("{}: {found:#?}", path.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(files.len() >= 3, "{files:?}");
}
