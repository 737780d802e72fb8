//! Request routing: one module per route family. `wire`: the Coronium protocol (`POST /`);
//! `ops`: operations (`/healthz`, `/metrics`); `pages`: the mail-link pages (`/_confirmation`,
//! `/_resetpassword`); `console`: the operator's console (`/_coronium/admin/`).

mod console;
mod ops;
mod pages;
mod wire;

use std::convert::Infallible;
use std::net::IpAddr;
use std::rc::Rc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::worker::Worker;

pub(super) async fn handle(
    worker: Rc<Worker>,
    request: Request<Incoming>,
    peer: IpAddr,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = match (request.method(), request.uri().path()) {
        // Boxed: its database round trip would otherwise size every request's future.
        (&Method::GET, "/") => ops::home(&worker),
        (&Method::GET, "/healthz") => Box::pin(ops::health(&worker)).await,
        (&Method::GET, "/metrics") => ops::metrics(&worker),
        (&Method::POST, "/") => wire::call(&worker, request, peer).await,
        (&Method::GET, "/_confirmation") => {
            let client = client_ip(&worker, request.headers(), peer);
            Box::pin(pages::confirmation(&worker, &request, client)).await
        }
        (&Method::GET, "/_resetpassword") => {
            let client = client_ip(&worker, request.headers(), peer);
            Box::pin(pages::reset_form(&worker, &request, client)).await
        }
        (&Method::POST, "/_resetpassword") => {
            let client = client_ip(&worker, request.headers(), peer);
            Box::pin(pages::reset_submit(&worker, request, client)).await
        }
        (_, path) if console::is_console_path(path) => {
            Box::pin(console::handle(&worker, request, peer)).await
        }
        _ => json_response(404, &json!({ "error": "Not found." })),
    };
    Ok(response)
}

const X_FORWARDED_FOR: hyper::header::HeaderName =
    hyper::header::HeaderName::from_static("x-forwarded-for");

/// Where a request came from: the socket's peer, or what trusted proxies say it forwarded.
pub(super) fn client_ip(worker: &Worker, headers: &hyper::HeaderMap, peer: IpAddr) -> IpAddr {
    let trusted = &worker.shared.settings.trusted_proxies;
    if trusted.is_empty() {
        return peer;
    }
    let forwarded_for = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok());
    crate::server::forwarded::client_ip(peer, forwarded_for, trusted)
}

pub(super) fn json_response(status: u16, body: &Value) -> Response<Full<Bytes>> {
    json_bytes_response(status, serde_json::to_vec(body).unwrap_or_default())
}

pub(super) fn json_bytes_response(status: u16, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
