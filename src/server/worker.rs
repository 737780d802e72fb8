//! One worker thread: its runtime, its accept loop and its HTTP connections. Requests go to
//! [`super::routes`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::net::TcpListener as StdListener;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::watch;

use super::limits::{Activity, AddressCounts};
use super::routes;
use super::{Shared, Stalls, secs};
use crate::app::Services;
use crate::lua::{Health, Output, Runtime, RuntimeOptions};
use crate::users::Users;

/// Runs spawned futures on the worker's `LocalSet`, so connection tasks need not be `Send`.
#[derive(Clone, Copy)]
struct LocalExec;

impl<F: Future + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, future: F) {
        tokio::task::spawn_local(future);
    }
}

/// A worker's own state; never leaves its thread.
pub(super) struct Worker {
    pub(super) index: usize,
    pub(super) shared: Arc<Shared>,
    /// Every worker's pulse, for `/healthz`.
    pub(super) stalls: Arc<Stalls>,
    pub(super) services: Services,
    /// The worker's Lua state, replaced when it runs out of room for good (requests under way
    /// finish on the state they started on).
    pub(super) lua: RefCell<Rc<Runtime>>,
    pub(super) lua_options: RuntimeOptions,
    /// Metric handles per (project, action, outcome), looked up once: registering labels costs
    /// more than the request's own counting. Bounded: only routed requests get names as labels.
    pub(super) request_metrics: RefCell<HashMap<RouteKey, RequestMetrics>>,
}

pub(super) type RouteKey = (Option<String>, Option<String>, &'static str);

pub(super) struct RequestMetrics {
    pub(super) total: metrics::Counter,
    pub(super) duration: metrics::Histogram,
}

/// What a worker shares with the others to watch over connections and workers.
pub(super) struct Oversight {
    pub stalls: Arc<Stalls>,
    pub addresses: Arc<AddressCounts>,
    /// Set when the API port speaks HTTPS.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Serves one connection's requests until it closes, the server shuts down, or it has had no
/// request under way for `keep_alive_idle` (an idle HTTP/2 connection: nothing is lost by
/// closing it).
async fn serve<I>(
    io: I,
    builder: &auto::Builder<LocalExec>,
    watcher: hyper_util::server::graceful::Watcher,
    worker: Rc<Worker>,
    keep_alive_idle: Duration,
    peer: IpAddr,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let activity = Activity::new();
    let for_service = activity.clone();
    let service = service_fn(move |req| {
        let request = for_service.begin();
        let worker = worker.clone();
        async move {
            let response = routes::handle(worker, req, peer).await;
            drop(request);
            response
        }
    });
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    tokio::select! {
        _ = watcher.watch(conn) => {}
        () = activity.idle(keep_alive_idle) => {}
    }
}

pub(super) fn run_worker(
    index: usize,
    listener: StdListener,
    services: Services,
    shared: Arc<Shared>,
    oversight: Oversight,
    mut stopped: watch::Receiver<bool>,
) {
    let Oversight {
        stalls,
        addresses,
        tls,
    } = oversight;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = index, error = %e, "cannot start worker runtime");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(worker = index, error = %e, "cannot use listener");
                return;
            }
        };
        let settings = &shared.settings;
        let mut builder = auto::Builder::new(LocalExec);
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(secs(settings.header_read_timeout_secs))
            .max_buf_size(64 * 1024)
            .max_headers(100);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(128)
            .max_header_list_size(64 * 1024);
        let grace = secs(settings.shutdown_grace_secs);
        let lua_options = RuntimeOptions {
            scope: crate::wire::DEFAULT_SCOPE.to_owned(),
            memory_limit: shared.lua_memory_limit,
            output: Output::Log,
            projects_dir: Some(settings.projects_dir.clone()),
            cpu_budget: Some(Duration::from_millis(settings.cpu_budget_ms.max(1))),
            pulse: Some(stalls.pulses[index].clone()),
        };
        let lua = match Runtime::new(services.clone(), lua_options.clone()) {
            Ok(lua) => lua,
            Err(e) => {
                tracing::error!(worker = index, error = %e, "cannot create the Lua state");
                return;
            }
        };
        let worker = Rc::new(Worker {
            index,
            stalls,
            services,
            lua: RefCell::new(Rc::new(lua)),
            lua_options,
            shared: shared.clone(),
            request_metrics: RefCell::default(),
        });
        tokio::task::spawn_local(report_pool(index, worker.clone()));
        let graceful = GracefulShutdown::new();
        let builder = Rc::new(builder);
        let first_byte = secs(settings.header_read_timeout_secs);
        let keep_alive_idle = secs(settings.keep_alive_idle_secs);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            // Out of file descriptors and the like: back off, keep serving.
                            tracing::warn!(worker = index, error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let Ok(permit) = worker.shared.connections.clone().try_acquire_owned() else {
                        tracing::warn!("connection limit reached; closing a new connection");
                        continue;
                    };
                    let Some(slot) = addresses.admit(peer.ip()) else {
                        tracing::debug!(peer = %peer.ip(), "per-address connection cap reached; closing a new connection");
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let (worker, builder, watcher) = (worker.clone(), builder.clone(), graceful.watcher());
                    let tls = tls.clone();
                    tokio::task::spawn_local(async move {
                        let _held = (permit, slot);
                        // Telling HTTP/1.1 from HTTP/2 waits for bytes with no deadline of its
                        // own: a connection that sends nothing is closed at the header deadline.
                        let mut first = [0u8; 1];
                        match tokio::time::timeout(first_byte, stream.peek(&mut first)).await {
                            Ok(Ok(n)) if n > 0 => {}
                            _ => return,
                        }
                        let Some(tls) = &tls else {
                            serve(stream, &builder, watcher, worker, keep_alive_idle, peer.ip()).await;
                            return;
                        };
                        // The handshake is part of what the client must send in time.
                        match tokio::time::timeout(first_byte, tls.accept(stream)).await {
                            Ok(Ok(stream)) => {
                                serve(stream, &builder, watcher, worker, keep_alive_idle, peer.ip()).await;
                            }
                            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!("TLS handshake not done in time"),
                        }
                    });
                }
                _ = stopped.changed() => break,
            }
        }
        drop(listener);
        if tokio::time::timeout(grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                worker = index,
                "grace period over; closing remaining connections"
            );
        }
    });
}

impl Worker {
    /// Reclaims `lua`'s garbage when it is near its limit, and replaces it with a fresh state
    /// (projects load again on first use) when a full collection leaves no room.
    pub(super) fn look_after(&self, lua: &Rc<Runtime>) {
        if lua.reclaim() == Health::Healthy || !Rc::ptr_eq(&self.lua.borrow(), lua) {
            return;
        }
        match Runtime::new(self.services.clone(), self.lua_options.clone()) {
            Ok(fresh) => {
                tracing::warn!(
                    worker = self.index,
                    used = lua.used_memory(),
                    "the Lua state stays near its memory limit after a full collection; \
                     replaced it with a fresh one (its requests under way finish on the old one)"
                );
                metrics::counter!("coronium_lua_rebuilds_total").increment(1);
                *self.lua.borrow_mut() = Rc::new(fresh);
            }
            Err(e) => {
                tracing::error!(worker = self.index, error = %e, "cannot make a fresh Lua state")
            }
        }
    }
}

/// Publishes this worker's pool usage every second (and, on worker 0, keeps the metrics
/// recorder's histograms trimmed).
async fn report_pool(index: usize, worker: Rc<Worker>) {
    let label = [("worker", index.to_string())];
    let size = metrics::gauge!("coronium_db_pool_connections", &label);
    let idle = metrics::gauge!("coronium_db_pool_idle_connections", &label);
    let waiting = metrics::gauge!("coronium_db_pool_waiting", &label);
    let lua_memory = metrics::gauge!("coronium_lua_memory_bytes", &label);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    for second in 0u64.. {
        tick.tick().await;
        if index == 0 && second % 5 == 4 {
            tokio::task::spawn_local(roll_up_analytics(
                worker.services.analytics.clone(),
                second % 3600 == 3599,
            ));
        }
        if index == 0 && second % 5 == 0 {
            worker.services.vitals.sample();
        }
        if index == 0 && second % 60 == 59 {
            tokio::task::spawn_local(forget_old_login_failures(worker.services.users.clone()));
            if let Some(console) = worker.services.console.clone() {
                tokio::task::spawn_local(forget_dead_sessions(console));
            }
        }
        let status = worker.services.db.status();
        size.set(status.size as f64);
        idle.set(status.available as f64);
        waiting.set(status.waiting as f64);
        let lua = worker.lua.borrow().clone();
        worker.look_after(&lua);
        lua_memory.set(worker.lua.borrow().used_memory() as f64);
        if index == 0
            && let Some(handle) = worker.services.vitals.metrics()
        {
            handle.run_upkeep();
        }
    }
}

/// Moves analytics from the inbox into events and daily counts (and, now and then, drops raw
/// events past their days). Any instance may: each record is moved once.
async fn roll_up_analytics(analytics: crate::analytics::Analytics, prune: bool) {
    if let Err(e) = analytics.roll_up_unless_busy().await {
        tracing::warn!(error = %e, "cannot roll up analytics");
    }
    if prune && let Err(e) = analytics.prune().await {
        tracing::warn!(error = %e, "cannot drop old analytics events");
    }
}

/// Ended console sessions are refused anyway; dropping them keeps the table small.
async fn forget_dead_sessions(console: crate::admin::Console) {
    match console.forget_dead_sessions().await {
        Ok(0) => {}
        Ok(dropped) => tracing::debug!(dropped, "forgot ended console sessions"),
        Err(e) => tracing::warn!(error = %e, "cannot forget ended console sessions"),
    }
}

/// Counters of failed logins stop counting after their window; dropping them keeps the table
/// small. Every instance does it; the statement is cheap when there is nothing to drop.
async fn forget_old_login_failures(users: Users) {
    match users.forget_old_login_failures().await {
        Ok(0) => {}
        Ok(dropped) => tracing::debug!(dropped, "forgot old failed-login counters"),
        Err(e) => tracing::warn!(error = %e, "cannot forget old failed-login counters"),
    }
}
