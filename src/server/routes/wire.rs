//! The Coronium wire route (`POST /`): the signed request is read and checked first
//! (`read_call`), then run (`run_call`) with only what the call needs, measured and logged.

use std::net::IpAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_LENGTH;
use hyper::{Request, Response};
use secrecy::ExposeSecret;
use serde_json::Value;
use serde_json::value::RawValue;

use super::json_bytes_response;
use crate::lua::HandlerOutcome;
use crate::server::secs;
use crate::server::worker::{RequestMetrics, Worker};
use crate::status::{ErrorAnswer, Status};
use crate::wire::{self, WireError};

/// Labels of a wire request for metrics and the access log. Names a client made up are not
/// labels (they would let anyone grow the metrics without bound): only routed requests get them.
#[derive(Default)]
struct Route {
    project: Option<String>,
    action: Option<String>,
}

/// One wire request, measured and logged.
pub(super) async fn call(
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
        // Whole microseconds: `0.022`, not `0.022121000000000002`.
        ms = elapsed.as_micros() as f64 / 1000.0,
        "POST /"
    );
    let mut key = (route.project, route.action, outcome);
    let mut known = worker.request_metrics.borrow_mut();
    // A route this worker has handles for under its own names was given labels of its own;
    // only a new one asks the process-wide label budget (a lock), not every request.
    if !known.contains_key(&key)
        && let (Some(project), Some(action)) = (&key.0, &key.1)
    {
        match own_labels(project, action) {
            (true, true) => {}
            (true, false) => key.1 = Some(OTHER_ACTIONS.to_owned()),
            _ => {
                key.0 = Some(OTHER_ACTIONS.to_owned());
                key.1 = Some(OTHER_ACTIONS.to_owned());
            }
        }
    }
    let handles = known
        .entry(key)
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

/// Actions of one project that get a metric label of their own; the rest share
/// `(other)`. A project that defines thousands of actions (a hostile project author, or
/// clients calling them all) cannot grow `/metrics` without bound.
const LABELLED_ACTIONS_PER_PROJECT: usize = 100;
/// Projects whose actions get labels of their own (the projects folder is the operator's, but
/// the bound does not depend on that).
const LABELLED_PROJECTS: usize = 200;
const OTHER_ACTIONS: &str = "(other)";

/// Whether a routed request's project and action get labels of their own names (while there
/// are labels to give), or share `(other)`.
fn own_labels(project: &str, action: &str) -> (bool, bool) {
    use std::collections::{HashMap, HashSet};
    use std::sync::{LazyLock, Mutex};
    static LABELLED: LazyLock<Mutex<HashMap<String, HashSet<String>>>> =
        LazyLock::new(Mutex::default);
    let mut labelled = LABELLED.lock().unwrap_or_else(|e| e.into_inner());
    let room_for_project = labelled.len() < LABELLED_PROJECTS;
    let actions = match labelled.get_mut(project) {
        Some(actions) => actions,
        None if room_for_project => labelled.entry(project.to_owned()).or_default(),
        None => return (false, false),
    };
    if actions.contains(action) {
        return (true, true);
    }
    if actions.len() < LABELLED_ACTIONS_PER_PROJECT {
        actions.insert(action.to_owned());
        return (true, true);
    }
    (true, false)
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
    let client = super::client_ip(worker, &parts.headers, peer);
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
    let (project, action) = (project.as_str(), action.as_str());
    let timeout = secs(worker.shared.settings.request_timeout_secs);
    let call = async {
        if project == wire::analytics::ANALYTICS_PROJECT {
            let analytics_action = wire::analytics::Action::parse(action)
                .ok_or_else(|| WireError::unknown_action(project, action))?;
            permitted(worker, &scope, project, analytics_action.name()).await?;
            *route = Route {
                project: Some(project.to_owned()),
                action: Some(action.to_owned()),
            };
            Box::pin(wire::analytics::execute(
                &worker.services.analytics,
                &scope,
                analytics_action,
                &params,
            ))
            .await
            .map_err(|e| Answer::Failed(e.answer()))
        } else if project == wire::USERS_PROJECT {
            let users_action = wire::users::Action::parse(action)
                .ok_or_else(|| WireError::unknown_action(project, action))?;
            permitted(worker, &scope, project, users_action.name()).await?;
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
            .map_err(|e| {
                // The client gets no details of our own failures; the operator does.
                // Gated: a client can repeat a call that fails as often as it likes.
                static GATE: crate::logging::Gate = crate::logging::Gate::new();
                if let crate::users::UserError::Internal(cause) = &e
                    && let Some(held_back) = GATE.pass()
                {
                    tracing::error!(error = %cause, project, action, held_back, "api.users call failed");
                }
                Answer::Failed(e.answer())
            })
        } else {
            let lua = worker.lua.borrow().clone();
            let outcome = lua
                .handle(project, action, Value::Object(params), &scope, Some(client))
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

/// Refuses a built-in module's action the console denied in this scope (users spec §9).
async fn permitted(
    worker: &Worker,
    scope: &str,
    project: &str,
    action: &str,
) -> Result<(), Answer> {
    let services = &worker.services;
    match services
        .permissions
        .allowed(&services.db, scope, project, action)
        .await
    {
        Ok(true) => Ok(()),
        Ok(false) => {
            Err(WireError::new(Status::GENERAL, 403, crate::permissions::DENIED_MESSAGE).into())
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read scope permissions");
            Err(Answer::Failed(ErrorAnswer::new(
                Status::GENERAL,
                "The database is unavailable; try again shortly.",
            )))
        }
    }
}
