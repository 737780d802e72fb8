//! What a newcomer meets first: the start-up summary, the page at `/`, and errors that name the
//! setting that caused them (the PostgreSQL binaries' folder: `embedded.rs`).

use serde_json::json;

use crate::common::*;

/// `coronium serve` with its log in a file; the server and the log's path.
fn serve_logged(db: &TestDb, projects: &std::path::Path) -> (TestServer, std::path::PathBuf) {
    let log_path = scratch_dir("log").join("server.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let server = TestServer::start_process(db, |cmd| {
        cmd.env("CORONIUM_LOG", "info")
            .arg("--projects")
            .arg(projects)
            .stderr(log_file);
    });
    (server, log_path)
}

#[tokio::test]
async fn the_start_up_summary_names_the_projects_or_warns_there_are_none() {
    let db = TestDb::new().await;
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/projects");
    let (server, log_path) = serve_logged(&db, &examples);
    let (status, page) = http_get(&server.addr, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("A Coronium Core server") && page.contains(r#"href="/healthz""#));
    assert!(page.contains(r#"href="/_coronium/admin/""#), "{page}");
    let answer = server.call("Demo", "hello", json!({ "name": "Ann" })).await;
    assert_eq!(answer["result"]["message"], "Hello, Ann!", "{answer}");
    drop(server);
    let log = std::fs::read_to_string(&log_path).unwrap();
    let projects_line = log
        .lines()
        .find(|l| l.contains("API projects"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        projects_line.contains("Accounts, Demo") && projects_line.contains("examples/projects"),
        "{projects_line}"
    );
    assert!(
        log.contains("server key") && log.contains("/_coronium/admin/"),
        "{log}"
    );
    // The access log's milliseconds are whole microseconds.
    let ms = log
        .lines()
        .find(|l| l.contains("coronium::access"))
        .and_then(|l| l.split("ms=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or_else(|| panic!("no access line in {log}"))
        .to_owned();
    let decimals = ms.split('.').nth(1).map_or(0, str::len);
    assert!(decimals <= 3, "ms={ms}");

    // A mistyped folder is named at start, not discovered as "Unknown project" later.
    let missing = scratch_dir("typo").join("projcets");
    let (server, log_path) = serve_logged(&db, &missing);
    let answer = server.call("Demo", "hello", json!({})).await;
    assert_eq!(
        answer["result"]["error"], "Unknown project 'Demo'.",
        "{answer}"
    );
    drop(server);
    let log = std::fs::read_to_string(&log_path).unwrap();
    let warning = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("projcets"))
        .unwrap_or_else(|| panic!("no warning in {log}"));
    assert!(warning.contains("--projects"), "{warning}");
}

#[test]
fn a_log_setting_that_is_no_level_is_said_and_logging_goes_on() {
    let data = scratch_dir("log-level");
    let out = coronium(None)
        .env("CORONIUM_LOG", "verbose")
        .arg("--data-dir")
        .arg(&data)
        .arg("key")
        .output()
        .unwrap();
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("\"verbose\" is not a level") && said.contains("logging at info"),
        "{said}"
    );
}

#[test]
fn a_missing_script_is_said_before_any_database_starts() {
    let data = scratch_dir("no-script");
    let out = coronium(None)
        .arg("--data-dir")
        .arg(&data)
        .args(["run", "nope.lua"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("cannot read nope.lua"), "{said}");
    assert!(!data.join("pg").exists(), "no cluster was made for it");
}

#[test]
fn bad_settings_are_said_before_any_database_starts() {
    let data = scratch_dir("bad-settings");
    let serve = |env: &[(&str, &str)]| {
        let mut cmd = coronium(None);
        cmd.arg("--data-dir")
            .arg(&data)
            .args(["serve", "--port", "0"]);
        for (name, value) in env {
            cmd.env(name, value);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let said = serve(&[
        ("CORONIUM_TLS_CERT", "/nonexistent/cert.pem"),
        ("CORONIUM_TLS_KEY", "/nonexistent/key.pem"),
    ]);
    assert!(said.contains("/nonexistent/cert.pem"), "{said}");
    let said = serve(&[("CORONIUM_ARGON2_M_COST", "4")]);
    assert!(
        said.contains("argon2.m_cost (CORONIUM_ARGON2_M_COST): 4 KiB"),
        "{said}"
    );
    let said = serve(&[("CORONIUM_PORT", "70000")]);
    assert!(said.contains("from 0 to 65535"), "{said}");
    assert!(!data.join("pg").exists(), "no cluster was made for them");
}

#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    use std::os::unix::process::ExitStatusExt as _;
    let data = scratch_dir("pipe");
    let mut child = coronium(None)
        .arg("--data-dir")
        .arg(&data)
        .arg("key")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // `coronium key | head -c0`: the reader is gone before the key is printed.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!said.contains("panicked"), "{said}");
    assert!(
        out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
        "{:?}: {said}",
        out.status
    );
}

/// What a command printed and how it exited.
fn output(cmd: &mut std::process::Command) -> (String, bool) {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (text, out.status.success())
}

#[tokio::test]
async fn a_new_project_is_checked_served_and_tested_as_the_readme_says() {
    let db = TestDb::new().await;
    let projects = scratch_dir("authoring").join("projects");
    // A server already running finds a project made after it started.
    let (server, log_path) = serve_logged(&db, &projects);

    let (said, ok) = output(
        coronium(None)
            .args(["new", "Game", "--projects"])
            .arg(&projects),
    );
    assert!(ok, "{said}");
    assert!(said.contains("coronium call Game hello"), "{said}");
    for file in ["main.lua", "test.lua", ".luaurc", ".vscode/settings.json"] {
        assert!(projects.join("Game").join(file).is_file(), "{file}");
    }
    let definitions = std::fs::read_to_string(projects.join("Game/types/coronium.d.luau")).unwrap();
    assert_eq!(definitions, coronium::scaffold::DEFINITIONS);
    let (said, ok) = output(
        coronium(None)
            .args(["new", "Game", "--projects"])
            .arg(&projects),
    );
    assert!(!ok && said.contains("already exists"), "{said}");

    let (said, ok) = output(coronium(None).args(["check", "--projects"]).arg(&projects));
    assert!(ok, "{said}");
    assert!(said.contains("ok: 2 files in 1 project compiled"), "{said}");

    let answer = server.call("Game", "hello", json!({"name": "you"})).await;
    assert_eq!(answer["result"]["greeting"], "Hello, you!", "{answer}");
    // The sample test script runs against the same database.
    let (said, ok) = output(
        coronium(Some(&db))
            .arg("run")
            .arg(projects.join("Game/test.lua")),
    );
    assert!(
        ok && said.contains("ok: created, logged in and deleted"),
        "{said}"
    );

    // A broken edit: check names the file and line and fails; the server answers the load error.
    let main = projects.join("Game/main.lua");
    let text = std::fs::read_to_string(&main).unwrap();
    std::fs::write(
        &main,
        text.replace("local api = core.api()", "local api = = core.api()"),
    )
    .unwrap();
    let (said, ok) = output(
        coronium(None)
            .args(["check", "Game", "--projects"])
            .arg(&projects),
    );
    assert!(!ok, "{said}");
    assert!(said.contains("Game/main.lua:6:"), "{said}");
    assert!(said.contains("1 problem in 2 files of 1 project"), "{said}");
    // The projects we ship check clean too.
    for shipped in ["examples/projects", "bench/projects"] {
        let (said, ok) = output(coronium(None).args(["check", "--projects", shipped]));
        assert!(ok && said.starts_with("ok: "), "{shipped}: {said}");
    }
    let (said, ok) = output(
        coronium(None)
            .args(["check", "--projects"])
            .arg(projects.join("none")),
    );
    assert!(
        !ok && said.contains("cannot read the projects folder"),
        "{said}"
    );
    drop(server);
    // The handler's print went to the server's log.
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("hello asked by you"), "{log}");
}

/// A database that cannot be used says why in PostgreSQL's own words, in `serve` and in the
/// maintenance commands alike (it said only "db error" before), and a malformed URL shows what
/// one looks like.
#[tokio::test]
async fn database_errors_say_why() {
    let db = TestDb::new().await;
    let missing = db.url().replace(&db.name, "no_such_database");
    for args in [
        &["users", "list", "--scope", "default"][..],
        &["serve", "--port", "0"][..],
    ] {
        let (text, ok) = output(coronium(Some(&db)).env("DATABASE_URL", &missing).args(args));
        assert!(!ok, "{args:?}: {text}");
        assert!(
            text.contains(r#"database "no_such_database" does not exist"#),
            "{args:?}: {text}"
        );
    }
    let (text, ok) = output(
        coronium(Some(&db))
            .env("DATABASE_URL", "postgres://u:p@localhost:notaport/x")
            .args(["users", "list", "--scope", "default"]),
    );
    assert!(!ok);
    assert!(
        text.contains("postgres://USER:PASSWORD@HOST:5432/DATABASE"),
        "{text}"
    );
}
