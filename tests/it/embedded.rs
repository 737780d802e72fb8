//! The embedded PostgreSQL through the real binary: first start, restart, a stale lock file,
//! SIGTERM, missing binaries, and two processes migrating one database at once.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{TestDb, coronium, scratch_dir};

/// PIDs of postgres processes running on `data_dir`.
fn postgres_on(data_dir: &Path) -> Vec<i32> {
    let needle = data_dir.join("pg").join("data").display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit(')')
                .next()
                .is_some_and(|s| s.trim_start().starts_with('Z'));
            !zombie
                && String::from_utf8_lossy(&cmdline)
                    .replace('\0', " ")
                    .contains(&needle)
        })
        .collect()
}

/// A one-worker `coronium serve` on its own embedded PostgreSQL in `data`.
fn embedded_server(data: &Path) -> crate::common::TestServer {
    crate::common::TestServer::start_with_key(
        None,
        data,
        Some(crate::common::TEST_SERVER_KEY),
        |cmd| {
            cmd.env("CORONIUM_WORKERS", "1");
        },
    )
}

fn write_script(dir: &Path, name: &str, source: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, source).unwrap();
    path
}

/// Starts `coronium run sleeper` on `data` and returns once the script printed "ready".
fn start_sleeper(data: &Path, sleeper: &Path) -> std::process::Child {
    let mut child = coronium(None)
        .arg("--data-dir")
        .arg(data)
        .arg("run")
        .arg(sleeper)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 6];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    assert_eq!(&first, b"ready\n");
    child
}

#[test]
fn embedded_cluster_lifecycle() {
    let dir = scratch_dir("embedded");
    let data = dir.join("data");
    let script = write_script(
        &dir,
        "count.lua",
        r#"core.users.create({username = "persist", password = "pw"})
local u = core.users.login({username = "persist", password = "pw"})
print(u.login_count)"#,
    );
    let run = |script: &Path| {
        coronium(None)
            .arg("--data-dir")
            .arg(&data)
            .arg("run")
            .arg(script)
            .output()
            .unwrap()
    };

    // First start on an empty data dir: initdb, migrate, run.
    let out = run(&script);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    assert!(data.join("pg/data/PG_VERSION").is_file());
    assert_eq!(
        postgres_on(&data),
        Vec::<i32>::new(),
        "stopped on normal exit"
    );

    // Restart on the existing cluster: the data persisted.
    let started = Instant::now();
    let out = run(&script);
    let restart = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
    eprintln!("restart on an existing data dir took {restart:?}");

    // A stale postmaster.pid, as a crash leaves it (its pid long gone).
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    std::fs::write(
        data.join("pg/data/postmaster.pid"),
        format!("{dead_pid}\n{}\n0\n5432\n", data.join("pg/data").display()),
    )
    .unwrap();
    let out = run(&script);
    assert!(
        out.status.success(),
        "stale pid: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3");

    // A script that fails still stops the database.
    let failing = write_script(&dir, "fail.lua", "error('on purpose')");
    let out = run(&failing);
    assert!(!out.status.success());
    assert_eq!(postgres_on(&data), Vec::<i32>::new());

    // SIGTERM while a script waits: the script stops, PostgreSQL stops, nothing is left.
    let sleeper = write_script(
        &dir,
        "sleep.lua",
        "print('ready')\ncore.sleep(60)\nprint('not reached')",
    );
    let mut child = start_sleeper(&data, &sleeper);
    assert_eq!(postgres_on(&data).len(), 1, "one postmaster while running");
    // Meanwhile a second process on the same data directory is refused, clearly.
    let out = run(&script);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "the data directory {} is in use by another coronium process",
            data.display()
        )),
        "{stderr}"
    );
    // Whatever the second binary is called: the data directory's lock decides, not a name.
    let renamed = dir.join("coronium-server");
    std::fs::copy(env!("CARGO_BIN_EXE_coronium"), &renamed).unwrap();
    let mut cmd = coronium(None);
    cmd.arg("--data-dir").arg(&data).arg("run").arg(&script);
    let out = std::process::Command::new(&renamed)
        .args(cmd.get_args())
        .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is in use by another coronium process"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        postgres_on(&data).len(),
        1,
        "the first one's PostgreSQL still runs"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        postgres_on(&data),
        Vec::<i32>::new(),
        "no postgres left after SIGTERM"
    );

    // SIGKILL leaves no orphan either: the kernel tells the postmaster its parent died.
    let mut child = start_sleeper(&data, &sleeper);
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !postgres_on(&data).is_empty() {
        assert!(
            Instant::now() < deadline,
            "postgres outlived a SIGKILLed coronium"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = run(&script);
    assert!(
        out.status.success(),
        "after SIGKILL: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "4");
}

#[test]
fn missing_postgres_binaries_say_what_to_install() {
    let dir = scratch_dir("nobin");
    let script = write_script(&dir, "x.lua", "print(1)");
    let out = coronium(None)
        .env("CORONIUM_PG_BIN_DIR", dir.join("no-such-dir"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("run")
        .arg(&script)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("apt-get install postgresql"), "{stderr}");
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
    // The setting that was used, and the folder it named.
    assert!(
        stderr.contains("CORONIUM_PG_BIN_DIR") && stderr.contains("no-such-dir"),
        "{stderr}"
    );
    assert_eq!(out.stdout, b"");
}

#[tokio::test]
async fn two_processes_migrating_at_once_both_start() {
    let db = TestDb::empty().await;
    let dir = scratch_dir("migrate");
    let script = write_script(
        &dir,
        "x.lua",
        "print(type(core.users.create({username = core.uuid(), password = 'p'})))",
    );
    let children: Vec<_> = (0..2)
        .map(|_| {
            coronium(Some(&db))
                .arg("run")
                .arg(&script)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "string");
    }
    let versions: Vec<i32> = db
        .client()
        .await
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let all: Vec<i32> = (1..=coronium::db::migrate::latest_version()).collect();
    assert_eq!(versions, all, "each migration applied once");
}

#[test]
fn a_data_directory_postgres_cannot_reach_is_explained() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only root runs PostgreSQL as another user");
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    let dir = scratch_dir("private");
    let private = dir.join("home");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let script = write_script(&dir, "hello.lua", "print('hello')");
    let out = coronium(None)
        .arg("--data-dir")
        .arg(private.join("data"))
        .arg("run")
        .arg(&script)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "the `postgres` user, which cannot enter {} (mode 700",
            private.display()
        )) && stderr.contains(&format!("chmod o+x {}", private.display())),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_embedded_postgresql_is_started_again_after_it_dies() {
    let dir = scratch_dir("supervised");
    let data = dir.join("data");
    let server = embedded_server(&data);
    let addr = server.addr.clone();
    let key = crate::common::TEST_SERVER_KEY;
    let create = |name: String| {
        let addr = addr.clone();
        async move {
            coronium::wire::client::call(
                &addr,
                key,
                "api.users",
                "create",
                "default",
                &serde_json::json!({"username": name, "password": "e19d5cd5af0378da05f63f891c7467af"}),
            )
            .await
            .unwrap()
        }
    };
    assert!(create("before".into()).await["result"]["user_id"].is_string());

    let postmaster: i32 = std::fs::read_to_string(data.join("pg/data/postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // SAFETY: killing the postmaster our child started.
    unsafe { libc::kill(postmaster, libc::SIGKILL) };

    let started = Instant::now();
    let (mut attempts, mut unavailable) = (0, 0);
    loop {
        let (status, _) = crate::common::http_get(&addr, "/healthz").await;
        let created = create(format!("after{attempts}")).await;
        attempts += 1;
        if status == 200 && created["result"]["user_id"].is_string() {
            break;
        }
        // Meanwhile a write that fails says what is wrong. (The health check, asked just
        // before, may still see the outage when the write already gets through.)
        if !created["result"]["user_id"].is_string() {
            let error = created["result"]["error"].as_str().unwrap_or_default();
            assert!(
                error == "The database is unavailable; try again shortly.",
                "{created}"
            );
            unavailable += 1;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not back after 30 s: /healthz {status}, create {created}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "back after {:?} ({unavailable} answers meanwhile)",
        started.elapsed()
    );
    // The client was told only that the database is unavailable; the log says why.
    if unavailable > 0 {
        let log = server.log_text();
        assert!(
            log.lines().any(|l| l.contains("ERROR")
                && l.contains("api.users call failed")
                && l.contains("database")),
            "{log}"
        );
    }
    assert_eq!(
        postgres_on(&data)
            .iter()
            .filter(|p| **p == postmaster)
            .count(),
        0
    );
    assert!(server.stop().success());
    assert_eq!(
        postgres_on(&data),
        Vec::<i32>::new(),
        "stopped with the server"
    );
}

/// `coronium users unlock` works while a server holds the embedded cluster: it reaches the
/// database through the server's socket instead of taking the data directory.
#[tokio::test]
async fn users_unlock_reaches_a_running_servers_embedded_database() {
    let data = scratch_dir("unlock-running").join("data");
    let server = embedded_server(&data);
    let call = |action: &'static str, password: &'static str| {
        let params = serde_json::json!({"username": "held", "password": password});
        let addr = server.addr.clone();
        async move {
            coronium::wire::client::call(
                &addr,
                crate::common::TEST_SERVER_KEY,
                "api.users",
                action,
                "default",
                &params,
            )
            .await
            .unwrap()
        }
    };
    let right = "e19d5cd5af0378da05f63f891c7467af";
    let wrong = "00000000000000000000000000000000";
    assert!(call("create", right).await["result"]["user_id"].is_string());
    for _ in 0..10 {
        call("login", wrong).await;
    }
    let refused = call("login", right).await;
    assert_eq!(
        refused["result"]["status"],
        serde_json::json!(603),
        "{refused}"
    );
    let out = coronium(None)
        .arg("--data-dir")
        .arg(&data)
        .args(["users", "unlock", "held"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // This address's count for the account, and the account's count from every address.
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("cleared 2 failed-login"), "{printed}");
    assert_eq!(
        call("login", right).await["result"]["username"],
        serde_json::json!("held")
    );
}

/// The probe's disk attack (updates whose `extra` PostgreSQL cannot store, from 4 connections)
/// against a server on its embedded PostgreSQL: every attempt is refused before any statement,
/// so neither the cluster's log nor the server's grows with the flood; and the cluster's output
/// reaches `pg/postgres.log` through coronium's pipe (its start-up lines are there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_flood_does_not_fill_the_disk() {
    let dir = scratch_dir("error-flood");
    let server = embedded_server(&dir.join("data"));
    let pg_log = dir.join("data/pg/postgres.log");
    let created = server
        .call(
            "api.users",
            "create",
            serde_json::json!({ "username": "target", "password": "e19d5cd5af0378da05f63f891c7467af" }),
        )
        .await;
    let id = created["result"]["user_id"].as_str().unwrap().to_owned();
    let size = |path: &Path| std::fs::metadata(path).map_or(0, |m| m.len());
    let started_log = std::fs::read_to_string(&pg_log).unwrap();
    assert!(
        started_log.contains("database system is ready"),
        "{started_log}"
    );
    let (pg_before, server_before) = (size(&pg_log), server.log_text().len());
    let flood: Vec<_> = (0..4)
        .map(|_| {
            let (addr, key, id) = (server.addr.clone(), server.key.clone(), id.clone());
            tokio::spawn(async move {
                let mut refused = 0;
                for _ in 0..250 {
                    let answer = coronium::wire::client::call(
                        &addr,
                        &key,
                        "api.users",
                        "update",
                        "default",
                        &serde_json::json!({ "user_id": id,
                            "update": { "extra": { "k": "x\u{0}".repeat(2000) } } }),
                    )
                    .await
                    .unwrap();
                    refused += usize::from(answer["result"]["status"] == 801);
                }
                refused
            })
        })
        .collect();
    let mut refused = 0;
    for task in flood {
        refused += task.await.unwrap();
    }
    assert_eq!(refused, 1000);
    let pg_grown = size(&pg_log) - pg_before;
    let server_grown = server.log_text().len() - server_before;
    println!(
        "1000 refused updates: postgres.log grew {pg_grown} bytes, the server log {server_grown}"
    );
    assert!(pg_grown < 4096, "postgres.log grew {pg_grown} bytes");
    assert!(
        server_grown < 4096,
        "the server log grew {server_grown} bytes"
    );
}
