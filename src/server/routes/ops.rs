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

pub(super) fn metrics(worker: &Worker) -> Response<Full<Bytes>> {
    match &worker.shared.metrics {
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
