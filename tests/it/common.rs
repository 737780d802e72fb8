//! Test support: one private PostgreSQL cluster per test process, a template database migrated
//! once, and a fresh database per test made from that template. No mocks: every test talks to
//! this real server, through the real `coronium` binary or the library.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use coronium::app::App;
use coronium::config::Config;
use coronium::db::{Database, EmbeddedOptions, EmbeddedPostgres, Location, embedded, migrate};
use coronium::lua::{Output as LuaOutput, Runtime, RuntimeOptions};
use coronium::users::{HashParams, Users};
use tokio_postgres::NoTls;

const TEMPLATE: &str = "coronium_template";

/// Cheap argon2 parameters so tests spend their time on behaviour, not hashing.
pub const TEST_HASH: HashParams = HashParams {
    m_cost: 256,
    t_cost: 1,
    p_cost: 1,
};

struct Cluster {
    server: EmbeddedPostgres,
}

/// Removes clusters left in /tmp by earlier test processes that have exited.
fn sweep_stale_dirs() {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name
            .strip_prefix("coronium-test-")
            .and_then(|p| p.parse::<u32>().ok())
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A scratch directory that the `postgres` user can traverse (tests run as root in CI).
pub fn scratch_dir(label: &str) -> PathBuf {
    remove_scratch_when_done();
    let dir = scratch_root().join(format!("{label}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    for ancestor in [dir.as_path(), dir.parent().unwrap()] {
        std::fs::set_permissions(ancestor, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

/// The test cluster's folder (a fixed name, so the exit handler finds its pid file).
fn cluster_dir() -> PathBuf {
    let dir = scratch_dir("cluster");
    let fixed = scratch_root().join("cluster");
    std::fs::rename(&dir, &fixed).unwrap();
    fixed
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

fn cluster() -> &'static Cluster {
    // Set up on a thread of its own: the first caller may be inside a tokio runtime.
    CLUSTER.get_or_init(|| std::thread::spawn(start_cluster).join().unwrap())
}

/// This process's scratch root: every [`scratch_dir`] and the test cluster live under it.
fn scratch_root() -> PathBuf {
    PathBuf::from(format!("/tmp/coronium-test-{}", std::process::id()))
}

/// At exit: stops the test cluster through its keeper (a postmaster killed from outside would
/// be started again by the keeper, into the folder being removed) and removes this process's
/// scratch root, so a test run leaves nothing behind in /tmp.
extern "C" fn remove_scratch_at_exit() {
    if let Some(cluster) = CLUSTER.get() {
        cluster.server.stop();
    }
    let root = scratch_root();
    // A process server a test did not wait for may still be writing into its folder.
    for _ in 0..50 {
        if std::fs::remove_dir_all(&root).is_ok() || !root.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Registers [`remove_scratch_at_exit`] once, with the first scratch folder or the cluster,
/// whichever a test process makes first (a run of tests that never start the cluster cleans up
/// too).
fn remove_scratch_when_done() {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    // SAFETY: registers a function that takes no arguments and never unwinds (it only ignores
    // errors); it runs once, as the process exits.
    REGISTERED.call_once(|| unsafe {
        libc::atexit(remove_scratch_at_exit);
    });
}

fn start_cluster() -> Cluster {
    {
        sweep_stale_dirs();
        remove_scratch_when_done();
        let server = EmbeddedPostgres::start(&EmbeddedOptions {
            dir: cluster_dir().join("pg"),
            durable: false,
            bin_dir: None,
        })
        .expect("start the test PostgreSQL cluster");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut attempts = 0;
            while let Err(e) = embedded::ensure_database(&server, TEMPLATE).await {
                attempts += 1;
                assert!(attempts < 3000, "test cluster did not come up: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            let (mut client, conn) = server
                .connect_config(TEMPLATE)
                .connect(NoTls)
                .await
                .unwrap();
            let driver = tokio::spawn(conn);
            migrate::run(&mut client).await.unwrap();
            drop(client);
            let _ = driver.await;
        });
        Cluster { server }
    }
}

/// A database of its own for one test, already migrated.
pub struct TestDb {
    pub name: String,
    config: tokio_postgres::Config,
}

impl TestDb {
    pub async fn new() -> TestDb {
        Self::create(Some(TEMPLATE)).await
    }

    /// An empty database (no schema), for migration tests.
    pub async fn empty() -> TestDb {
        Self::create(None).await
    }

    async fn create(template: Option<&str>) -> TestDb {
        let cluster = cluster();
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let admin = cluster.server.connect_config("postgres");
        let (client, conn) = admin.connect(NoTls).await.unwrap();
        let driver = tokio::spawn(conn);
        let sql = match template {
            Some(t) => format!("CREATE DATABASE {name} TEMPLATE {t}"),
            None => format!("CREATE DATABASE {name} TEMPLATE template0"),
        };
        client.batch_execute(&sql).await.unwrap();
        drop(client);
        let _ = driver.await;
        TestDb {
            config: cluster.server.connect_config(&name),
            name,
        }
    }

    /// A libpq-style connection string for `DATABASE_URL`.
    pub fn url(&self) -> String {
        let host = cluster().server.socket_dir().display().to_string();
        format!("host={host} port=5432 user=coronium dbname={}", self.name)
    }

    /// A plain client, for asserting on what was written.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = self.config.connect(NoTls).await.unwrap();
        tokio::spawn(conn);
        client
    }

    /// Ends every other session on this test database (as an admin or a restart would), and
    /// says how many there were.
    pub async fn end_other_sessions(&self) -> i64 {
        self.client()
            .await
            .query_one(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()) t",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// The library's own database handle on this test database.
    pub async fn open(&self) -> Database {
        Database::open(&Location::Url(self.url().into()))
            .await
            .unwrap()
    }

    /// The application on this database, with the given hashing parameters and the test key.
    pub async fn app_with(&self, params: HashParams) -> App {
        self.app_configured(|config| config.argon2 = params).await
    }

    /// The application on this database (test hashing and key), with `configure`'s settings.
    pub async fn app_configured(&self, configure: impl FnOnce(&mut Config)) -> App {
        let mut config = Config {
            database_url: Some(self.url().into()),
            argon2: TEST_HASH,
            ..Config::default()
        };
        config.server.server_key = Some(TEST_SERVER_KEY.into());
        configure(&mut config);
        App::build(config).await.unwrap()
    }

    /// A users service on this database with the given hashing parameters.
    pub async fn users_with(&self, params: HashParams) -> Users {
        self.app_with(params).await.services(8).unwrap().users
    }

    /// A Lua runtime (scope "default", output to the log) on this database.
    pub async fn runtime(&self) -> Runtime {
        Runtime::new(
            self.app_with(TEST_HASH).await.services(8).unwrap(),
            RuntimeOptions {
                scope: "default".into(),
                memory_limit: 64 * 1024 * 1024,
                output: LuaOutput::Log,
                projects_dir: None,
                cpu_budget: None,
                pulse: None,
            },
        )
        .unwrap()
    }
}

/// The `coronium` binary with a clean environment pointing at `db`.
pub fn coronium(db: Option<&TestDb>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coronium"));
    for (key, _) in std::env::vars() {
        if key.starts_with("CORONIUM_") || key == "DATABASE_URL" {
            cmd.env_remove(key);
        }
    }
    cmd.env("CORONIUM_ARGON2_M_COST", TEST_HASH.m_cost.to_string())
        .env("CORONIUM_ARGON2_T_COST", TEST_HASH.t_cost.to_string())
        .env("CORONIUM_LOG", "warn")
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if let Some(db) = db {
        cmd.env("DATABASE_URL", db.url());
    }
    cmd
}

/// What a `coronium run` printed and how it exited.
pub struct Run {
    pub stdout: String,
    pub stderr: String,
    pub success: bool,
}

impl Run {
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

impl From<Output> for Run {
    fn from(out: Output) -> Run {
        Run {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            success: out.status.success(),
        }
    }
}

/// Runs a file with `coronium run` against `db`.
pub fn run_file(db: &TestDb, path: &Path) -> Run {
    coronium(Some(db))
        .arg("run")
        .arg(path)
        .output()
        .expect("spawn coronium")
        .into()
}

/// Runs Lua source (written to a temporary file named `name`) with `coronium run`.
pub fn run_lua(db: &TestDb, name: &str, source: &str) -> Run {
    let dir = scratch_dir("script");
    let path = dir.join(name);
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(source.as_bytes()))
        .unwrap();
    run_file(db, &path)
}

/// Asserts a run succeeded, showing its stderr when it did not.
#[track_caller]
pub fn assert_ok(run: &Run) {
    assert!(
        run.success,
        "coronium run failed\nstdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
}

pub fn is_uuid(s: &str) -> bool {
    uuid::Uuid::try_parse(s).is_ok_and(|u| u.to_string() == s)
}

/// Writes `<root>/<name>/<file>` for each file of an API project.
pub fn write_project(root: &Path, name: &str, files: &[(&str, &str)]) {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for (file, source) in files {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, source).unwrap();
    }
}

/// A server (in this process) for the API projects under `root`, with `workers` workers and
/// `env` set.
pub fn serve_projects(db: &TestDb, root: &Path, workers: &str, env: &[(&str, &str)]) -> TestServer {
    TestServer::start(db, projects_settings(root, workers, env))
}

/// [`serve_projects`] as a child process (for tests that read its metrics or signal it).
pub fn serve_projects_process(
    db: &TestDb,
    root: &Path,
    workers: &str,
    env: &[(&str, &str)],
) -> TestServer {
    TestServer::start_process(db, projects_settings(root, workers, env))
}

fn projects_settings(
    root: &Path,
    workers: &str,
    env: &[(&str, &str)],
) -> impl FnOnce(&mut Command) + use<> {
    let root = root.to_owned();
    let mut env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.push(("CORONIUM_WORKERS".into(), workers.into()));
    move |cmd| {
        cmd.arg("--projects").arg(&root);
        for (k, v) in env {
            cmd.env(k, v);
        }
    }
}

/// A server on an ephemeral port against a test database: in this process (the default: the
/// library's `App` and `Server`, as `coronium serve` builds them), or a `coronium serve` child
/// process for tests that need one (its metrics, its memory, its signals, its log).
pub struct TestServer {
    running: Running,
    pub addr: String,
    pub key: String,
    /// Where a server process logs, unless the test took its stderr: shown if the test fails,
    /// so the expected warnings of passing tests do not read as failures.
    log: Option<PathBuf>,
}

enum Running {
    Process(std::process::Child),
    /// Taken when the server is shut down.
    InProcess(Option<Box<(coronium::server::Server, App)>>),
}

pub const TEST_SERVER_KEY: &str = "03624656-ca90-11e7-b8d4-fb59abeb4c03";

impl TestServer {
    /// Starts a server with 2 workers; `configure` may add environment and `--projects`, as for
    /// the binary. It runs in this process unless `configure` asks for something only a process
    /// has (another flag).
    pub fn start(db: &TestDb, configure: impl FnOnce(&mut Command)) -> TestServer {
        let mut asked = Command::new("coronium");
        configure(&mut asked);
        // CORONIUM_TEST_PROCESSES=1 runs every server as a process (to compare, or to debug).
        let in_process = std::env::var_os("CORONIUM_TEST_PROCESSES").is_none();
        match in_process_config(db, &asked).filter(|_| in_process) {
            Some(config) => Self::in_process(config),
            None => Self::start_process(db, |cmd| copy_settings(&asked, cmd)),
        }
    }

    /// A `coronium serve` child process (what `start` makes for settings it cannot take in
    /// process), for tests that read its metrics, memory, log or exit status.
    pub fn start_process(db: &TestDb, configure: impl FnOnce(&mut Command)) -> TestServer {
        Self::start_with_key(
            Some(db),
            &scratch_dir("serve"),
            Some(TEST_SERVER_KEY),
            configure,
        )
    }

    fn in_process(config: Config) -> TestServer {
        // `App::build` is async; the test's own runtime may be the current thread's, so build
        // on a thread of its own (the handles it makes connect later, on the workers).
        let app = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(App::build(config))
        })
        .join()
        .unwrap()
        .expect("build the app");
        let server = coronium::server::Server::start(&app).expect("start the server");
        TestServer {
            addr: server.local_addr().to_string(),
            key: TEST_SERVER_KEY.to_owned(),
            running: Running::InProcess(Some(Box::new((server, app)))),
            log: None,
        }
    }

    /// Starts a server on `data_dir`; with `key: None` it uses (or makes) the key file there.
    /// Without `db`, the server runs on its embedded PostgreSQL in `data_dir`.
    pub fn start_with_key(
        db: Option<&TestDb>,
        data_dir: &Path,
        key: Option<&str>,
        configure: impl FnOnce(&mut Command),
    ) -> TestServer {
        use std::io::BufRead as _;
        let mut cmd = coronium(db);
        if let Some(key) = key {
            cmd.env("CORONIUM_SERVER_KEY", key);
        }
        // Two workers unless `configure` sets CORONIUM_WORKERS (a flag would win over it).
        cmd.env("CORONIUM_WORKERS", "2")
            .args(["serve", "--port", "0", "--host", "127.0.0.1"])
            .arg("--data-dir")
            .arg(data_dir)
            .stdout(std::process::Stdio::piped());
        let log = scratch_dir("server-log").join("server.log");
        cmd.stderr(std::fs::File::create(&log).expect("the server's log file"));
        configure(&mut cmd);
        let mut child = cmd.spawn().expect("spawn coronium serve");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|url| url.split_once("://"))
            .map(|(_, addr)| addr.to_owned())
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
        let key = match key {
            Some(key) => key.to_owned(),
            None => std::fs::read_to_string(data_dir.join("server.key"))
                .unwrap()
                .trim()
                .to_owned(),
        };
        TestServer {
            running: Running::Process(child),
            addr,
            key,
            log: Some(log),
        }
    }

    /// What the server process has logged so far (empty when the test took its stderr).
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|path| std::fs::read_to_string(path).ok())
            .unwrap_or_default()
    }

    /// The server process's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child().id()))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// The CPU time the server process has used so far (user and system): unlike wall time, a
    /// busy machine does not stretch it.
    pub fn cpu_time(&self) -> std::time::Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child().id())).unwrap();
        // The fields after the command's closing parenthesis; utime and stime are the 12th
        // and 13th of them (the 14th and 15th of the line), in clock ticks.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf reads a constant of the system; it has no preconditions.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        std::time::Duration::from_millis(ticks * 1000 / per_second)
    }

    /// A signed call in `scope`; the whole answer.
    pub async fn call_in(
        &self,
        scope: &str,
        project: &str,
        action: &str,
        params: serde_json::Value,
    ) -> serde_json::Value {
        coronium::wire::client::call(&self.addr, &self.key, project, action, scope, &params)
            .await
            .unwrap()
    }

    pub async fn call(
        &self,
        project: &str,
        action: &str,
        params: serde_json::Value,
    ) -> serde_json::Value {
        self.call_in("default", project, action, params).await
    }

    /// The same call with each of `params`, all sent at once (each on a connection of its own);
    /// the answers, in the order of `params`.
    pub async fn call_all(
        &self,
        scope: &str,
        project: &str,
        action: &str,
        params: Vec<serde_json::Value>,
    ) -> Vec<serde_json::Value> {
        let calls: Vec<_> = params
            .into_iter()
            .map(|params| {
                let (addr, key) = (self.addr.clone(), self.key.clone());
                let (scope, project, action) =
                    (scope.to_owned(), project.to_owned(), action.to_owned());
                tokio::spawn(async move {
                    coronium::wire::client::call(&addr, &key, &project, &action, &scope, &params)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut answers = Vec::new();
        for call in calls {
            answers.push(call.await.unwrap());
        }
        answers
    }

    /// A raw POST: any headers, any body.
    pub async fn post(&self, headers: &[(&str, String)], body: &[u8]) -> (u16, serde_json::Value) {
        coronium::wire::client::post(&self.addr, headers, body.to_vec())
            .await
            .unwrap()
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let child = self.child();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        match &mut self.running {
            Running::Process(child) => child.wait().unwrap(),
            Running::InProcess(_) => unreachable!(),
        }
    }

    fn child(&self) -> &std::process::Child {
        match &self.running {
            Running::Process(child) => child,
            Running::InProcess(_) => panic!("this test needs TestServer::start_process"),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        match &mut self.running {
            Running::Process(child) => {
                let _ = child.kill();
                let _ = child.wait();
                if std::thread::panicking()
                    && let Some(text) = self
                        .log
                        .as_ref()
                        .and_then(|p| std::fs::read_to_string(p).ok())
                {
                    let lines: Vec<&str> = text.lines().collect();
                    let tail = lines[lines.len().saturating_sub(60)..].join("\n");
                    eprintln!("--- the server's log (last 60 lines) ---\n{tail}");
                }
            }
            Running::InProcess(running) => {
                if let Some(running) = running.take() {
                    let (server, app) = *running;
                    server.shutdown();
                    drop(app);
                }
            }
        }
    }
}

/// The configuration `coronium serve` would build from what `asked` sets, when the server can
/// run in this process: its environment, and no flag but `--projects`.
fn in_process_config(db: &TestDb, asked: &Command) -> Option<Config> {
    let args: Vec<String> = asked
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let projects = match args.as_slice() {
        [] => None,
        [flag, dir] if flag == "--projects" => Some(PathBuf::from(dir)),
        _ => return None,
    };
    let env: Vec<(String, String)> = asked
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_str()?.to_owned(), v?.to_str()?.to_owned())))
        .collect();
    let mut config = Config {
        data_dir: scratch_dir("serve"),
        database_url: Some(db.url().into()),
        argon2: TEST_HASH,
        ..Config::default()
    };
    config.server.server_key = Some(TEST_SERVER_KEY.into());
    config.server.workers = 2;
    config.server.host = [127, 0, 0, 1].into();
    config.server.port = 0;
    // Connections a test leaves open must not hold its end up.
    config.server.shutdown_grace_secs = 1;
    if let Some(dir) = projects {
        config.server.projects_dir = dir;
    }
    config
        .apply_env(|name| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
        .expect("test settings");
    Some(config)
}

/// Gives `cmd` the arguments and environment `asked` was given.
fn copy_settings(asked: &Command, cmd: &mut Command) {
    cmd.args(asked.get_args());
    for (k, v) in asked.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
}

/// GET `path` from a server; the HTTP status and the body.
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use http_body_util::BodyExt as _;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let response = sender
        .send_request(
            hyper::Request::get(path)
                .header("Host", addr)
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}
