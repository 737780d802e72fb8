//! One worker: its accept loop, its HTTP connections, and request routing.

use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::net::TcpListener as StdListener;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use secrecy::ExposeSecret;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::forwarded;
use super::limits::{Activity, AddressCounts};
use super::{Shared, Stalls, secs};
use crate::app::Services;
use crate::lua::{HandlerOutcome, Health, Output, Runtime, RuntimeOptions};
use crate::status::{ErrorAnswer, Status};
use crate::users::Users;
use crate::wire::{self, WireError};

/// Runs spawned futures on the worker's `LocalSet`, so connection tasks need not be `Send`.
#[derive(Clone, Copy)]
struct LocalExec;

impl<F: Future + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, future: F) {
        tokio::task::spawn_local(future);
    }
}

/// A worker's own state; never leaves its thread.
struct Worker {
    index: usize,
    shared: Arc<Shared>,
    /// Every worker's pulse, for `/healthz`.
    stalls: Arc<Stalls>,
    services: Services,
    /// The worker's Lua state, replaced when it runs out of room for good (requests under way
    /// finish on the state they started on).
    lua: RefCell<Rc<Runtime>>,
    lua_options: RuntimeOptions,
    /// Metric handles per (project, action, outcome), looked up once: registering labels costs
    /// more than the request's own counting. Bounded: only routed requests get names as labels.
    request_metrics: RefCell<HashMap<RouteKey, RequestMetrics>>,
}

type RouteKey = (Option<String>, Option<String>, &'static str);

struct RequestMetrics {
    total: metrics::Counter,
    duration: metrics::Histogram,
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
            let response = handle(worker, req, peer).await;
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
            scope: wire::DEFAULT_SCOPE.to_owned(),
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
    fn look_after(&self, lua: &Rc<Runtime>) {
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
        if index == 0 && second % 60 == 59 {
            tokio::task::spawn_local(forget_old_login_failures(worker.services.users.clone()));
        }
        let status = worker.services.db.status();
        size.set(status.size as f64);
        idle.set(status.available as f64);
        waiting.set(status.waiting as f64);
        let lua = worker.lua.borrow().clone();
        worker.look_after(&lua);
        lua_memory.set(worker.lua.borrow().used_memory() as f64);
        if index == 0
            && let Some(handle) = &worker.shared.metrics
        {
            handle.run_upkeep();
        }
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

fn json_response(status: u16, body: &Value) -> Response<Full<Bytes>> {
    json_bytes_response(status, serde_json::to_vec(body).unwrap_or_default())
}

fn json_bytes_response(status: u16, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

async fn handle(
    worker: Rc<Worker>,
    request: Request<Incoming>,
    peer: IpAddr,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = match (request.method(), request.uri().path()) {
        // Boxed: its database round trip would otherwise size every request's future.
        (&Method::GET, "/healthz") => Box::pin(health(&worker)).await,
        (&Method::GET, "/metrics") => match &worker.shared.metrics {
            Some(handle) => {
                let mut response = Response::new(Full::new(Bytes::from(handle.render())));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                response
            }
            None => json_response(404, &json!({ "error": "Metrics are off." })),
        },
        (&Method::POST, "/") => wire_call(&worker, request, peer).await,
        _ => json_response(404, &json!({ "error": "Not found." })),
    };
    Ok(response)
}

/// Labels of a wire request for metrics and the access log. Names a client made up are not
/// labels (they would let anyone grow the metrics without bound): only routed requests get them.
#[derive(Default)]
struct Route {
    project: Option<String>,
    action: Option<String>,
}

/// One wire request, measured and logged.
async fn wire_call(
    worker: &Worker,
    request: Request<Incoming>,
    peer: IpAddr,
) -> Response<Full<Bytes>> {
    let started = std::time::Instant::now();
    let in_flight = metrics::gauge!("coronium_requests_in_flight");
    in_flight.increment(1.0);
    let mut route = Route::default();
    let (http, status, outcome, body) = match wire_request(worker, request, peer, &mut route).await
    {
        Ok(result) => (200, 0, "ok", wire::envelope(&result)),
        Err(Answer::Refused(e)) => (e.http, e.status.code(), "refused", e.envelope()),
        Err(Answer::Failed(failed)) => (
            200,
            failed.status.code(),
            "error",
            wire::error_envelope(&failed.message, failed.status),
        ),
    };
    in_flight.decrement(1.0);
    let elapsed = started.elapsed();
    let project = route.project.as_deref().unwrap_or("-");
    let action = route.action.as_deref().unwrap_or("-");
    tracing::info!(
        target: "coronium::access",
        project,
        action,
        http,
        status,
        outcome,
        ms = elapsed.as_secs_f64() * 1000.0,
        "POST /"
    );
    let mut known = worker.request_metrics.borrow_mut();
    let handles = known
        .entry((route.project, route.action, outcome))
        .or_insert_with_key(|(project, action, outcome)| {
            let labels = [
                ("project", project.as_deref().unwrap_or("-").to_owned()),
                ("action", action.as_deref().unwrap_or("-").to_owned()),
                ("outcome", (*outcome).to_owned()),
            ];
            RequestMetrics {
                total: metrics::counter!("coronium_requests_total", &labels),
                duration: metrics::histogram!("coronium_request_duration_seconds", &labels[..2]),
            }
        });
    handles.total.increment(1);
    handles.duration.record(elapsed.as_secs_f64());
    drop(known);
    json_bytes_response(http, body)
}

async fn health(worker: &Worker) -> Response<Full<Bytes>> {
    // A stuck worker cannot answer for itself; any other worker reports it.
    if let Some((stuck, busy)) = worker.stalls.stalled().first() {
        let error = format!(
            "worker {stuck} has been stuck in Lua for {} ms",
            busy.as_millis()
        );
        return json_response(503, &json!({ "status": "unavailable", "error": error }));
    }
    // The operator asking wants the cause, not the callers' generic message.
    let check = async { worker.services.db.ping().await.map_err(|e| e.to_string()) };
    match tokio::time::timeout(Duration::from_secs(5), check).await {
        Ok(Ok(_)) => json_response(200, &json!({ "status": "ok" })),
        Ok(Err(e)) => json_response(503, &json!({ "status": "unavailable", "error": e })),
        Err(_) => json_response(503, &json!({ "status": "unavailable", "error": "timeout" })),
    }
}

/// How a wire request ended without a result.
enum Answer {
    /// Refused before anything ran (headers, signature, body).
    Refused(WireError),
    /// The call ran and failed with a Coronium status.
    Failed(ErrorAnswer),
}

impl From<WireError> for Answer {
    fn from(e: WireError) -> Self {
        Answer::Refused(e)
    }
}

const X_FORWARDED_FOR: hyper::header::HeaderName =
    hyper::header::HeaderName::from_static("x-forwarded-for");

/// A signed request, read and checked: what the call needs and nothing of the HTTP request (a
/// handler that waits should not keep its request's headers and body alive).
struct WireCall {
    project: String,
    action: String,
    scope: String,
    params: serde_json::Map<String, Value>,
    /// Where the request came from (through trusted proxies).
    client: IpAddr,
}

async fn wire_request(
    worker: &Worker,
    request: Request<Incoming>,
    peer: IpAddr,
    route: &mut Route,
) -> Result<Box<RawValue>, Answer> {
    let call = read_call(worker, request, peer).await?;
    run_call(worker, call, route).await
}

/// Checks the headers and the signature, and reads the body.
async fn read_call(
    worker: &Worker,
    request: Request<Incoming>,
    peer: IpAddr,
) -> Result<WireCall, Answer> {
    let settings = &worker.shared.settings;
    let (parts, body) = request.into_parts();
    let header = |name: &'static str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let required = |name: &'static str| header(name).ok_or_else(|| WireError::missing_header(name));
    let project = required("X-Project-Id")?;
    let action = required("X-Action")?;
    let time = required("X-Request-Time")?;
    let auth = required("X-Request-Auth")?;
    let scope = header("X-Scope").unwrap_or(wire::DEFAULT_SCOPE);
    let key = worker.shared.server_key.expose_secret();
    if !wire::signature_matches(key, project, action, time, auth) {
        return Err(WireError::bad_signature().into());
    }
    if settings.request_window_secs > 0 {
        let sent: i64 = time
            .parse()
            .map_err(|_| WireError::stale(settings.request_window_secs))?;
        if wire::client::unix_now().abs_diff(sent) > settings.request_window_secs {
            return Err(WireError::stale(settings.request_window_secs).into());
        }
    }
    let limit = settings.max_body_bytes;
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(WireError::too_large(limit).into());
    }
    // A body sent slowly holds a connection and a task: it gets a deadline of its own.
    let deadline = secs(settings.body_read_timeout_secs);
    let body = match tokio::time::timeout(deadline, Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(WireError::too_large(limit).into());
        }
        Ok(Err(e)) => {
            return Err(WireError::new(
                Status::GENERAL,
                400,
                format!("Cannot read the request body: {e}"),
            )
            .into());
        }
        Err(_) => {
            let message = format!(
                "The request body did not arrive within {} s.",
                settings.body_read_timeout_secs
            );
            return Err(WireError::new(Status::GENERAL, 408, message).into());
        }
    };
    let params = wire::parse_params(&body)?;
    let client = if settings.trusted_proxies.is_empty() {
        peer
    } else {
        let forwarded_for = parts
            .headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok());
        forwarded::client_ip(peer, forwarded_for, &settings.trusted_proxies)
    };
    Ok(WireCall {
        project: project.to_owned(),
        action: action.to_owned(),
        scope: scope.to_owned(),
        params,
        client,
    })
}

/// Runs a checked call under the request time limit.
async fn run_call(
    worker: &Worker,
    call: WireCall,
    route: &mut Route,
) -> Result<Box<RawValue>, Answer> {
    let WireCall {
        project,
        action,
        scope,
        params,
        client,
    } = call;
    let (project, action, scope) = (project.as_str(), action.as_str(), scope.as_str());
    let timeout = secs(worker.shared.settings.request_timeout_secs);
    let call = async {
        if project == wire::USERS_PROJECT {
            let users_action = wire::users::Action::parse(action)
                .ok_or_else(|| WireError::unknown_action(project, action))?;
            *route = Route {
                project: Some(project.to_owned()),
                action: Some(action.to_owned()),
            };
            // Boxed: its future (~2.4 KB, hashing and two statements deep) would otherwise size
            // every request's future, parked Lua handlers included.
            Box::pin(wire::users::execute(
                &worker.services.users,
                scope,
                users_action,
                params,
                client,
            ))
            .await
            .map_err(|e| Answer::Failed(e.answer()))
        } else {
            let lua = worker.lua.borrow().clone();
            let outcome = lua
                .handle(project, action, Value::Object(params), scope, Some(client))
                .await;
            if let HandlerOutcome::Error(_) = outcome {
                worker.look_after(&lua);
            }
            if !matches!(
                outcome,
                HandlerOutcome::UnknownProject | HandlerOutcome::UnknownAction
            ) {
                *route = Route {
                    project: Some(project.to_owned()),
                    action: Some(action.to_owned()),
                };
            }
            match outcome {
                HandlerOutcome::Result(text) => Ok(text),
                HandlerOutcome::Error(failed) => Err(Answer::Failed(failed)),
                HandlerOutcome::UnknownProject => Err(WireError::unknown_project(project).into()),
                HandlerOutcome::UnknownAction => {
                    Err(WireError::unknown_action(project, action).into())
                }
            }
        }
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(outcome) => outcome,
        Err(_) => Err(WireError::new(Status::GENERAL, 504, "The request timed out.").into()),
    }
}
