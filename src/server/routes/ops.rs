//! Operations routes: `/healthz` (database reachable, no worker stuck) and `/metrics`
//! (Prometheus text).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use serde_json::json;

use super::json_response;
use crate::server::worker::Worker;

/// `GET /`: what this server is, for whoever opens its address in a browser.
pub(super) fn home(worker: &Worker) -> Response<Full<Bytes>> {
    let console = if worker.services.console.is_some() {
        r#"<li><a href="/_coronium/admin/">The console</a> (accounts: <code>coronium admin add NAME</code> on the server)</li>"#
    } else {
        ""
    };
    let page = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>coronium</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em;color:#1c2430}}code{{font-size:14px}}</style>
</head><body>
<h1>coronium {version}</h1>
<p>A Coronium Core server. Game clients and the <code>coronium call</code> command send signed
requests (<code>POST /</code>) to this address, with the server key, a scope and an API
project's name.</p>
<ul>
{console}
<li><a href="/healthz">/healthz</a>: whether this server and its database answer</li>
</ul>
</body></html>
"#,
        version = env!("CARGO_PKG_VERSION"),
    );
    let mut response = Response::new(Full::new(Bytes::from(page)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

pub(super) fn metrics(worker: &Worker) -> Response<Full<Bytes>> {
    match worker.services.vitals.metrics() {
        Some(handle) => {
            let mut response = Response::new(Full::new(Bytes::from(handle.render())));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        None => json_response(404, &json!({ "error": "Metrics are off." })),
    }
}

pub(super) async fn health(worker: &Worker) -> Response<Full<Bytes>> {
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
