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
