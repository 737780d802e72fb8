//! The embedded default: a private PostgreSQL cluster under the data directory, started as a child
//! process with a Unix socket in a directory of its own and no TCP listener.
//!
//! The postmaster is spawned by a keeper thread that lives until [`EmbeddedPostgres::stop`], with
//! `PR_SET_PDEATHSIG`: if this process dies without stopping it (even by SIGKILL), the kernel sends
//! the postmaster SIGINT, so no orphan is ever left running. (The signal fires when the spawning
//! *thread* exits, which is why the spawner is a thread we control.)

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The port only names the socket file (`.s.PGSQL.<port>`); no TCP is opened.
const SOCKET_PORT: u16 = 5432;
/// The cluster's superuser, and the database the server uses.
pub const SUPERUSER: &str = "coronium";
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "PostgreSQL server binaries (initdb, postgres) were not found on PATH or in \
         /usr/lib/postgresql/*/bin. Install them (Debian/Ubuntu: `apt-get install postgresql`), \
         or set DATABASE_URL to use an existing PostgreSQL server instead."
    )]
    BinariesMissing,
    #[error(
        "PostgreSQL server binaries (initdb, postgres) are not in {0}, the folder postgres.bin_dir \
         (CORONIUM_PG_BIN_DIR) names. Point it at the folder that holds them (Debian: \
         /usr/lib/postgresql/15/bin, after `apt-get install postgresql`), unset it to search PATH \
         and /usr/lib/postgresql/*/bin, or set DATABASE_URL to use an existing PostgreSQL server."
    )]
    BinariesNotInBinDir(PathBuf),
    #[error(
        "running as root, and PostgreSQL refuses to run as root: there is no `postgres` system \
         user to run it as. Create one (`useradd --system postgres`), or set DATABASE_URL."
    )]
    NoPostgresUser,
    #[error(
        "the data directory {dir} is in use by another coronium process{holder}; stop it first, \
         or use another --data-dir"
    )]
    InUse { dir: String, holder: String },
    #[error(
        "running as root, PostgreSQL runs as the `postgres` user, which cannot enter {blocked} \
         (mode {mode:o}, owner uid {owner}) on the way to the data directory {dir}. Give it \
         passage (`chmod o+x {blocked}`), use a --data-dir it can reach (for example under \
         /var/lib), or run coronium as a normal user."
    )]
    Unreachable {
        dir: String,
        blocked: String,
        mode: u32,
        owner: u32,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EmbeddedError {
    let what = what.into();
    move |source| EmbeddedError::Io { what, source }
}

#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// `<data dir>/pg`: holds `data/` (the cluster), `run/` (the socket) and `postgres.log`.
    pub dir: PathBuf,
    /// fsync, synchronous_commit and full_page_writes on (the default); tests turn them off.
    pub durable: bool,
    /// Where initdb and postgres live; searched for when not given.
    pub bin_dir: Option<PathBuf>,
}

/// A running private cluster. Stopped (fast shutdown) by [`stop`](Self::stop) or on drop.
pub struct EmbeddedPostgres {
    socket_dir: PathBuf,
    pid: i32,
    /// How to tell the keeper thread to stop the postmaster, and the thread; taken by the first
    /// [`stop`](Self::stop). Behind a lock so a shared (`static`) instance can be stopped too.
    keeper: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
    /// The data directory's lock, held for as long as this process owns the cluster.
    _lock: fs::File,
}

/// Takes `<dir>/coronium.lock` (an OS file lock: released however this process ends) and writes
/// our pid into it for the next one's error message.
fn lock_data_dir(dir: &Path) -> Result<fs::File, EmbeddedError> {
    use std::io::{Read as _, Seek as _, Write as _};
    use std::os::fd::AsRawFd as _;
    let path = dir.join("coronium.lock");
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(format!("open {}", path.display())))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        let pid = pid.trim();
        return Err(EmbeddedError::InUse {
            dir: dir.parent().unwrap_or(dir).display().to_string(),
            holder: if pid.is_empty() {
                String::new()
            } else {
                format!(" (pid {pid})")
            },
        });
    }
    let written = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()));
    written.map_err(io_err(format!("write {}", path.display())))?;
    Ok(file)
}

/// The uid and gid to run PostgreSQL as: `postgres` when we are root, else ourselves.
#[derive(Clone, Copy)]
struct RunAs(Option<(u32, u32)>);

impl RunAs {
    fn detect() -> Result<Self, EmbeddedError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(RunAs(None));
        }
        let name = CString::new("postgres").expect("no NUL");
        // SAFETY: getpwnam returns null or a pointer to a static record, read at once.
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        if pw.is_null() {
            return Err(EmbeddedError::NoPostgresUser);
        }
        // SAFETY: checked non-null above.
        let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        Ok(RunAs(Some((uid, gid))))
    }

    fn apply(self, cmd: &mut Command) {
        if let Some((uid, gid)) = self.0 {
            cmd.uid(uid).gid(gid);
        }
    }

    /// Whether the user PostgreSQL runs as can pass through every directory above `dir` (as
    /// root, a data directory under a private home such as /root is out of its reach).
    fn check_reach(self, dir: &Path) -> Result<(), EmbeddedError> {
        use std::os::unix::fs::MetadataExt as _;
        let Some((uid, gid)) = self.0 else {
            return Ok(());
        };
        for ancestor in dir.ancestors().skip(1) {
            let Ok(meta) = fs::metadata(ancestor) else {
                continue;
            };
            let mode = meta.mode() & 0o7777;
            let passes = if meta.uid() == uid {
                mode & 0o100 != 0
            } else if meta.gid() == gid {
                mode & 0o010 != 0
            } else {
                mode & 0o001 != 0
            };
            if !passes {
                return Err(EmbeddedError::Unreachable {
                    dir: dir.display().to_string(),
                    blocked: ancestor.display().to_string(),
                    mode,
                    owner: meta.uid(),
                });
            }
        }
        Ok(())
    }

    fn chown(self, path: &Path) -> Result<(), EmbeddedError> {
        if let Some((uid, gid)) = self.0 {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(io_err(format!("chown {}", path.display())))?;
        }
        Ok(())
    }
}

/// Finds the directory holding `initdb` and `postgres`: PATH first, then Debian's layout.
fn find_bin_dir() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_both(&dir) {
                return Some(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| has_both(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

impl EmbeddedPostgres {
    /// Initialises the cluster on first use, clears a stale lock left by a crash, starts the
    /// postmaster and waits until its socket exists. Blocking; takes ~1 s on first use, ~50 ms after.
    pub fn start(options: &EmbeddedOptions) -> Result<Self, EmbeddedError> {
        let bin = match &options.bin_dir {
            Some(dir) if !dir.join("postgres").is_file() || !dir.join("initdb").is_file() => {
                return Err(EmbeddedError::BinariesNotInBinDir(dir.clone()));
            }
            Some(dir) => dir.clone(),
            None => find_bin_dir().ok_or(EmbeddedError::BinariesMissing)?,
        };
        let run_as = RunAs::detect()?;
        fs::create_dir_all(&options.dir)
            .map_err(io_err(format!("create {}", options.dir.display())))?;
        let dir = options
            .dir
            .canonicalize()
            .map_err(io_err(format!("resolve {}", options.dir.display())))?;
        let lock = lock_data_dir(&dir)?;
        run_as.check_reach(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err(format!("chmod {}", dir.display())))?;
        run_as.chown(&dir)?;
        let data = dir.join("data");
        if !data.join("PG_VERSION").is_file() {
            init_cluster(&bin, &dir, &data, run_as, options.durable)?;
        }
        clear_stale_lock(&data)?;
        let socket_dir = dir.join("run");
        if !socket_dir.is_dir() {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&socket_dir)
                .map_err(io_err(format!("create {}", socket_dir.display())))?;
        }
        run_as.chown(&socket_dir)?;

        let log_path = dir.join("postgres.log");
        let log = super::pglog::RotatingLog::open(&log_path, super::pglog::ROTATE_AT)
            .map_err(io_err(format!("open {}", log_path.display())))?;
        let log = Arc::new(Mutex::new(log));
        let mut cmd = Command::new(bin.join("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(&socket_dir)
            .arg("-p")
            .arg(SOCKET_PORT.to_string())
            .args([
                "-c",
                "listen_addresses=",
                "-c",
                "unix_socket_permissions=0700",
            ])
            .current_dir(&dir)
            .stdin(Stdio::null())
            // Through pipes into the rotating log (see `pglog`), never straight into a file.
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a terminal's Ctrl-C reaches us, and we stop it in order.
            .process_group(0);
        if !options.durable {
            cmd.args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]);
        }
        run_as.apply(&mut cmd);
        // SAFETY: prctl and getppid are async-signal-safe; nothing else runs in the hook.
        unsafe {
            let parent = libc::getpid();
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before the prctl took effect.
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("parent exited"));
                }
                Ok(())
            });
        }

        let (started_tx, started_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let supervised = Supervised {
            data: data.clone(),
            log_path: log_path.clone(),
            log,
        };
        let keeper = std::thread::Builder::new()
            .name("postgres-keeper".into())
            .spawn(move || {
                let child = match supervised.spawn(&mut cmd) {
                    Ok(child) => child,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                let _ = started_tx.send(Ok(child.id() as i32));
                supervised.keep(cmd, child, &stop_rx);
            })
            .map_err(io_err("spawn postgres keeper thread"))?;
        let pid = match started_rx.recv() {
            Ok(Ok(pid)) => pid,
            Ok(Err(e)) => {
                let _ = keeper.join();
                return Err(io_err(format!("start {}", bin.join("postgres").display()))(
                    e,
                ));
            }
            Err(_) => return Err(EmbeddedError::Failed("postgres keeper thread died".into())),
        };
        let server = EmbeddedPostgres {
            socket_dir,
            pid,
            keeper: Mutex::new(Some((stop_tx, keeper))),
            _lock: lock,
        };
        server.wait_for_socket(&log_path)?;
        Ok(server)
    }

    fn wait_for_socket(&self, log_path: &Path) -> Result<(), EmbeddedError> {
        let socket = self.socket_path();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if socket.exists() {
                return Ok(());
            }
            // SAFETY: probing our own child's pid.
            let alive = unsafe { libc::kill(self.pid, 0) } == 0 && !is_zombie(self.pid);
            if !alive || Instant::now() > deadline {
                self.stop();
                // Its last words pass through a pipe and a copier thread on their way there.
                std::thread::sleep(Duration::from_millis(200));
                return Err(EmbeddedError::Failed(format!(
                    "PostgreSQL did not start. Last lines of {}:\n{}",
                    log_path.display(),
                    tail(log_path, 15)
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The directory holding the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    fn socket_path(&self) -> PathBuf {
        self.socket_dir.join(format!(".s.PGSQL.{SOCKET_PORT}"))
    }

    /// A connection string for `dbname` on the cluster under `options.dir` that another process
    /// runs: what a command uses to reach a running server's database without taking its lock.
    pub fn running_cluster_url(options: &EmbeddedOptions, dbname: &str) -> String {
        let dir = options
            .dir
            .canonicalize()
            .unwrap_or_else(|_| options.dir.clone());
        format!(
            "host={} port={SOCKET_PORT} user={SUPERUSER} dbname={dbname}",
            dir.join("run").display()
        )
    }

    /// Connection settings for `dbname` on this cluster.
    pub fn connect_config(&self, dbname: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.socket_dir)
            .port(SOCKET_PORT)
            .user(SUPERUSER)
            .dbname(dbname)
            .application_name("coronium");
        config
    }

    /// Fast shutdown: waits until the postmaster has exited. Idempotent.
    pub fn stop(&self) {
        let keeper = self.keeper.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((stop_tx, keeper)) = keeper {
            let _ = stop_tx.send(());
            let _ = keeper.join();
        }
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the keeper needs to restart a postmaster that died.
struct Supervised {
    data: PathBuf,
    log_path: PathBuf,
    log: Arc<Mutex<super::pglog::RotatingLog>>,
}

/// How often the keeper looks whether the postmaster still runs.
const SUPERVISE_EVERY: Duration = Duration::from_millis(200);

impl Supervised {
    /// Starts the postmaster with its output copied into the log.
    fn spawn(&self, cmd: &mut Command) -> std::io::Result<std::process::Child> {
        let mut child = cmd.spawn()?;
        if let Some(out) = child.stdout.take() {
            super::pglog::copy_into(out, self.log.clone());
        }
        if let Some(err) = child.stderr.take() {
            super::pglog::copy_into(err, self.log.clone());
        }
        Ok(child)
    }

    /// Runs on the keeper thread until `stop` says so (or its sender is gone): then stops the
    /// postmaster. A postmaster that dies meanwhile (killed, crashed) is reaped and started again,
    /// with a growing pause between tries; the pool's connections reconnect on their own.
    fn keep(&self, mut cmd: Command, mut child: std::process::Child, stop: &mpsc::Receiver<()>) {
        let mut pause = Duration::from_millis(100);
        loop {
            match stop.recv_timeout(SUPERVISE_EVERY) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                _ => {
                    // SAFETY: signalling our own child. SIGINT is PostgreSQL's fast shutdown.
                    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
                    let _ = child.wait();
                    return;
                }
            }
            let Ok(Some(status)) = child.try_wait() else {
                pause = Duration::from_millis(100);
                continue;
            };
            tracing::error!(
                %status,
                log = %tail(&self.log_path, 5),
                "the embedded PostgreSQL stopped unexpectedly; starting it again"
            );
            metrics::counter!("coronium_postgres_restarts_total").increment(1);
            // Until it runs again: its backends may take a moment to notice and let go of its
            // shared memory, so a start may fail and be tried again.
            loop {
                if !matches!(
                    stop.recv_timeout(pause),
                    Err(mpsc::RecvTimeoutError::Timeout)
                ) {
                    return;
                }
                pause = (pause * 2).min(Duration::from_secs(5));
                if let Err(e) = clear_stale_lock(&self.data) {
                    tracing::warn!(error = %e, "cannot clear the stale lock yet");
                    continue;
                }
                match self.spawn(&mut cmd) {
                    Ok(mut restarted) => {
                        std::thread::sleep(SUPERVISE_EVERY);
                        if let Ok(None) = restarted.try_wait() {
                            tracing::warn!(
                                pid = restarted.id(),
                                "the embedded PostgreSQL runs again"
                            );
                            child = restarted;
                            break;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot start the embedded PostgreSQL"),
                }
            }
        }
    }
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn init_cluster(
    bin: &Path,
    dir: &Path,
    data: &Path,
    run_as: RunAs,
    durable: bool,
) -> Result<(), EmbeddedError> {
    // A half-made cluster (initdb interrupted) has no PG_VERSION; initdb wants an empty dir.
    if data.exists() {
        fs::remove_dir_all(data).map_err(io_err(format!("remove {}", data.display())))?;
    }
    let mut cmd = Command::new(bin.join("initdb"));
    cmd.arg("-D")
        .arg(data)
        .args([
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ])
        .current_dir(dir)
        .stdin(Stdio::null());
    if !durable {
        cmd.arg("--no-sync");
    }
    run_as.apply(&mut cmd);
    tracing::info!(data = %data.display(), "initialising the embedded PostgreSQL cluster");
    let out = cmd
        .output()
        .map_err(io_err(format!("run {}", bin.join("initdb").display())))?;
    if !out.status.success() {
        let _ = fs::remove_dir_all(data);
        return Err(EmbeddedError::Failed(format!(
            "initdb failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// Handles a `postmaster.pid` left behind: a dead or reused pid is stale and removed; a live
/// postmaster on our data directory is an orphan (its owner is gone: we hold the data directory's
/// lock, which a live owner would) and is stopped.
fn clear_stale_lock(data: &Path) -> Result<(), EmbeddedError> {
    let lock = data.join("postmaster.pid");
    let Ok(text) = fs::read_to_string(&lock) else {
        return Ok(());
    };
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
    else {
        return remove_lock(&lock);
    };
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let ours = comm.trim() == "postgres"
        && String::from_utf8_lossy(&cmdline).contains(&*data.to_string_lossy());
    if !ours || is_zombie(pid) {
        tracing::info!(pid, "removing a stale postmaster.pid");
        return remove_lock(&lock);
    }
    tracing::warn!(
        pid,
        "stopping an orphaned PostgreSQL left by an earlier run"
    );
    // SAFETY: signalling a postmaster that runs on our own data directory.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(30);
    // SAFETY: probing a pid.
    while unsafe { libc::kill(pid, 0) } == 0 && !is_zombie(pid) {
        if Instant::now() > deadline {
            return Err(EmbeddedError::Failed(format!(
                "an orphaned PostgreSQL (pid {pid}) on {} did not stop",
                data.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if lock.exists() {
        remove_lock(&lock)?;
    }
    Ok(())
}

fn remove_lock(lock: &Path) -> Result<(), EmbeddedError> {
    fs::remove_file(lock).map_err(io_err(format!("remove {}", lock.display())))
}

/// Creates `name` on the cluster if it does not exist yet.
pub async fn ensure_database(
    server: &EmbeddedPostgres,
    name: &str,
) -> Result<(), tokio_postgres::Error> {
    let (client, connection) = server
        .connect_config("postgres")
        .connect(tokio_postgres::NoTls)
        .await?;
    let conn = tokio::spawn(connection);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        let quoted = name.replace('"', "\"\"");
        client
            .batch_execute(&format!("CREATE DATABASE \"{quoted}\""))
            .await?;
    }
    drop(client);
    let _ = conn.await;
    Ok(())
}
