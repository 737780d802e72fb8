//! `coronium serve`: N worker threads, each a current-thread tokio runtime with a `LocalSet`, its
//! own database handle and (for API projects) its own Lua state. Every worker has its own
//! `SO_REUSEPORT` listener on the same address, so the kernel spreads connections over them.

pub mod forwarded;
mod limits;
mod routes;
mod tls;
mod worker;

pub use tls::TlsError;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use secrecy::SecretString;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::{Semaphore, watch};

use crate::app::{App, AppError, Services};
use crate::config::ServerSettings;
use crate::lua::Pulse;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot listen on {addr}: the port is in use by another process (another coronium \
         server?); stop it or choose another --port"
    )]
    PortInUse { addr: SocketAddr },
    #[error("cannot start worker thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    App(#[from] AppError),
}

/// What every worker shares: settings, the server key, process-wide limits.
pub struct Shared {
    pub settings: ServerSettings,
    pub server_key: SecretString,
    /// One permit per open connection (`max_connections`).
    pub connections: Arc<Semaphore>,
    /// Memory limit of each worker's Lua state, in bytes.
    pub lua_memory_limit: usize,
    /// The mail-link pages' per-address budget.
    pub(crate) page_rate: limits::PageRate,
}

/// Installs the process-wide Prometheus recorder (once per process: every server of the process
/// gets its handle) and returns its handle.
pub fn install_metrics() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(install_recorder).clone()
}

fn install_recorder() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    const LATENCY_BUCKETS: &[f64] = &[
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("coronium_request_duration_seconds".into()),
            LATENCY_BUCKETS,
        )
        .ok()?;
    match builder.install_recorder() {
        Ok(handle) => Some(handle),
        Err(e) => {
            tracing::warn!(error = %e, "metrics are off");
            None
        }
    }
}

/// A running server. Dropping it does not stop it: call [`shutdown`](Self::shutdown).
pub struct Server {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    watchdog: Option<JoinHandle<()>>,
    scheme: &'static str,
    /// This instance's mail sender.
    mail: Option<crate::mail::sender::Sender>,
}

/// Every worker's Lua pulse. A slice may run its whole CPU budget; one that runs past the
/// budget plus [`STALL_MARGIN`] is stuck where the meter cannot fail it (a C function it does not
/// know), and its worker serves nothing meanwhile.
pub(crate) struct Stalls {
    pub(crate) pulses: Vec<Arc<Pulse>>,
    after: Duration,
}

const STALL_MARGIN: Duration = Duration::from_secs(1);

impl Stalls {
    /// A worker is stuck once its running slice has run longer than `after`.
    fn new(workers: usize, after: Duration) -> Self {
        Stalls {
            pulses: (0..workers).map(|_| Arc::default()).collect(),
            after,
        }
    }

    /// The workers stuck now, and for how long.
    pub(crate) fn stalled(&self) -> Vec<(usize, Duration)> {
        self.pulses
            .iter()
            .enumerate()
            .filter_map(|(worker, pulse)| {
                pulse
                    .busy_for()
                    .filter(|busy| *busy > self.after)
                    .map(|busy| (worker, busy))
            })
            .collect()
    }
}

/// Watches the workers until `stopped`: logs when one gets stuck and when it recovers, and keeps
/// `coronium_worker_stalled{worker}` (1 while stuck) for load balancers and alerts.
fn watchdog(stalls: Arc<Stalls>, stopped: watch::Receiver<bool>) {
    let gauges: Vec<_> = (0..stalls.pulses.len())
        .map(|worker| metrics::gauge!("coronium_worker_stalled", "worker" => worker.to_string()))
        .collect();
    let mut stuck = vec![false; gauges.len()];
    while !*stopped.borrow() {
        // `shutdown` unparks this thread: stopping need not wait out the period.
        std::thread::park_timeout(Duration::from_millis(250));
        let now: Vec<_> = stalls.stalled();
        for (worker, was) in stuck.iter_mut().enumerate() {
            let busy = now.iter().find(|(w, _)| *w == worker).map(|(_, b)| *b);
            match (busy, *was) {
                (Some(busy), false) => {
                    tracing::error!(
                        worker,
                        busy_ms = busy.as_millis() as u64,
                        "worker stuck in Lua past its CPU budget (a library call the budget \
                         cannot reach); its requests wait"
                    );
                    gauges[worker].set(1.0);
                    *was = true;
                }
                (None, true) => {
                    tracing::warn!(worker, "worker answers again");
                    gauges[worker].set(0.0);
                    *was = false;
                }
                _ => {}
            }
        }
    }
}

/// Refuses a port another process listens on. Our workers share their port through
/// `SO_REUSEPORT`, which would as readily let a second server join the first and split its
/// clients with it: a socket without it binds only where nobody listens (`SO_REUSEADDR` lets it
/// past connections of an earlier run still closing).
fn check_port_free(addr: SocketAddr) -> Result<(), ServerError> {
    let listen_err = |source| ServerError::Listen { addr, source };
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(listen_err)?;
    probe.set_reuse_address(true).map_err(listen_err)?;
    match probe.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(ServerError::PortInUse { addr }),
        Err(e) => Err(listen_err(e)),
    }
}

/// One listener per worker on the same address (the first picks the port when it is 0).
fn listeners(addr: SocketAddr, count: usize) -> Result<Vec<TcpListener>, ServerError> {
    if addr.port() != 0 {
        check_port_free(addr)?;
    }
    let mut bound = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count {
        let listen_err = |source| ServerError::Listen { addr, source };
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(listen_err)?;
        socket.set_reuse_address(true).map_err(listen_err)?;
        socket.set_reuse_port(true).map_err(listen_err)?;
        socket.set_nonblocking(true).map_err(listen_err)?;
        socket.bind(&addr.into()).map_err(listen_err)?;
        socket.listen(1024).map_err(listen_err)?;
        let listener: TcpListener = socket.into();
        addr = listener.local_addr().map_err(listen_err)?;
        bound.push(listener);
    }
    Ok(bound)
}

/// The workers' listening sockets: one per worker on the same address (`SO_REUSEPORT`), bound
/// before the server starts so that a caller can say where it listens first.
pub struct Listeners {
    sockets: Vec<TcpListener>,
    local_addr: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Listeners {
    /// Binds one listener per worker of `settings` (`workers = 0` is one per core) on its host
    /// and port (0 picks a free port, shared by all), with TLS when `tls_cert` and `tls_key` are
    /// set (their files are read here, so a bad certificate is refused before anything listens).
    pub fn bind(settings: &ServerSettings) -> Result<Listeners, ServerError> {
        let tls = tls::acceptor(settings.tls_cert.as_deref(), settings.tls_key.as_deref())?;
        let workers = match settings.workers {
            0 => default_workers(),
            n => n,
        };
        let addr = SocketAddr::new(settings.host, settings.port);
        let sockets = listeners(addr, workers)?;
        let local_addr = sockets[0]
            .local_addr()
            .map_err(|source| ServerError::Listen { addr, source })?;
        Ok(Listeners {
            sockets,
            local_addr,
            tls,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `https` when the listeners speak TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// How many workers will serve them.
    pub fn workers(&self) -> usize {
        self.sockets.len()
    }
}

/// Serves `app` on `listeners` until `shutdown` completes, then stops accepting, lets in-flight
/// requests finish within the grace period and returns once every worker has exited. The
/// database stays up: the caller owns `app` and shuts it down after.
pub async fn run(
    app: &App,
    listeners: Listeners,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServerError> {
    let server = Server::start_on(app, listeners)?;
    shutdown.await;
    let _ = tokio::task::spawn_blocking(move || server.shutdown()).await;
    Ok(())
}

impl Server {
    /// Binds the listeners and starts the workers: [`Listeners::bind`] then
    /// [`start_on`](Self::start_on). Returns once every worker listens.
    pub fn start(app: &App) -> Result<Server, ServerError> {
        Self::start_on(app, Listeners::bind(&app.config().server)?)
    }

    /// Starts one worker per listener, each with its own services from `app` and a share of
    /// `pool_size` connections (at least two). Returns once every worker listens.
    pub fn start_on(app: &App, listeners: Listeners) -> Result<Server, ServerError> {
        let config = app.config();
        let per_worker = config.pool_size.div_ceil(listeners.workers()).max(2);
        let services = (0..listeners.workers())
            .map(|_| app.services(per_worker))
            .collect::<Result<Vec<_>, _>>()?;
        // `/metrics` and the console's Server page render the handle `Vitals` keeps.
        app.vitals()
            .server_started(listeners.workers(), install_metrics());
        let shared = Arc::new(Shared {
            server_key: app.server_key()?,
            connections: Arc::new(Semaphore::new(config.server.max_connections)),
            lua_memory_limit: config.lua.memory_limit_mb.saturating_mul(1024 * 1024),
            page_rate: limits::PageRate::new(config.server.page_requests_per_minute),
            settings: config.server.clone(),
        });
        let mut server = Self::start_workers(shared, listeners, services)?;
        server.mail = Some(app.start_mail_sender()?);
        Ok(server)
    }

    fn start_workers(
        shared: Arc<Shared>,
        listeners: Listeners,
        services: Vec<Services>,
    ) -> Result<Server, ServerError> {
        let scheme = listeners.scheme();
        let Listeners {
            sockets: listeners,
            local_addr,
            tls,
        } = listeners;
        let (stop, stopped) = watch::channel(false);
        let stalls = Arc::new(Stalls::new(
            services.len(),
            Duration::from_millis(shared.settings.cpu_budget_ms.max(1)) + STALL_MARGIN,
        ));
        let addresses = Arc::new(limits::AddressCounts::new(
            shared.settings.max_connections_per_ip,
        ));
        let mut workers = Vec::new();
        for (index, (listener, services)) in listeners.into_iter().zip(services).enumerate() {
            let shared = shared.clone();
            let stopped = stopped.clone();
            let oversight = worker::Oversight {
                stalls: stalls.clone(),
                addresses: addresses.clone(),
                tls: tls.clone(),
            };
            let handle = std::thread::Builder::new()
                .name(format!("worker-{index}"))
                .spawn(move || {
                    worker::run_worker(index, listener, services, shared, oversight, stopped)
                })
                .map_err(ServerError::Thread)?;
            workers.push(handle);
        }
        let watching = stopped.clone();
        let watchdog = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || watchdog(stalls, watching))
            .map_err(ServerError::Thread)?;
        Ok(Server {
            local_addr,
            stop,
            workers,
            watchdog: Some(watchdog),
            scheme,
            mail: None,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// `https` when the API port speaks TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        self.scheme
    }

    /// Stops accepting, lets in-flight requests finish within the grace period, and waits for
    /// the workers to exit. Blocking.
    pub fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Some(watchdog) = &self.watchdog {
            watchdog.thread().unpark();
        }
        for worker in self.workers {
            let _ = worker.join();
        }
        if let Some(watchdog) = self.watchdog {
            let _ = watchdog.join();
        }
        if let Some(mail) = self.mail {
            mail.stop();
        }
    }
}

/// How many workers `workers = 0` means.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

pub(crate) fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slice_that_runs_past_the_threshold_is_a_stall() {
        let stalls = Stalls::new(2, Duration::from_millis(20));
        assert!(stalls.stalled().is_empty());
        stalls.pulses[1].enter(std::time::Instant::now());
        assert!(stalls.stalled().is_empty(), "not yet");
        std::thread::sleep(Duration::from_millis(40));
        let stalled = stalls.stalled();
        assert_eq!(stalled.len(), 1);
        assert_eq!(stalled[0].0, 1);
        assert!(stalled[0].1 >= Duration::from_millis(40), "{stalled:?}");
        stalls.pulses[1].leave();
        assert!(stalls.stalled().is_empty(), "the slice ended");
    }
}
