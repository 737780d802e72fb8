//! The console's HTTP side: reads cookies, the query and a form body (bounded), hands a
//! [`ConsoleRequest`] to the console and sends its answer with headers that keep the pages out
//! of frames, caches and other origins' reach.

use std::net::IpAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, COOKIE, HeaderValue, LOCATION,
    REFERRER_POLICY, SET_COOKIE, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use hyper::{Method, Request, Response, StatusCode};

use crate::admin::pages::{
    self, BASE, ConsoleRequest, ConsoleResponse, LOGIN_COOKIE, SESSION_COOKIE,
};
use crate::server::secs;
use crate::server::worker::Worker;

/// The largest console form accepted (an `extra` value is the biggest thing a form carries).
const MAX_FORM_BYTES: usize = 64 * 1024;

/// The old Webmin's address: bookmarks land on the console.
pub(super) const WEBMIN: &str = "/_coronium/webmin";

pub(super) fn is_console_path(path: &str) -> bool {
    path == BASE
        || path.starts_with("/_coronium/admin/")
        || path == WEBMIN
        || path.starts_with("/_coronium/webmin/")
}

pub(super) async fn handle(
    worker: &Worker,
    request: Request<Incoming>,
    peer: IpAddr,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    if path == WEBMIN || path.starts_with("/_coronium/webmin/") || path == BASE {
        return redirect(301, &format!("{BASE}/"));
    }
    let Some(console) = worker.services.console.as_ref() else {
        return plain(404, "Not found.");
    };
    let method = match *request.method() {
        Method::GET | Method::HEAD => pages::Method::Get,
        Method::POST => pages::Method::Post,
        _ => return plain(405, "Method not allowed."),
    };
    let client = super::client_ip(worker, request.headers(), peer);
    let secure = worker.shared.settings.tls_cert.is_some()
        || forwarded_https(worker, request.headers(), peer);
    let (session_token, login_token) = cookies(request.headers());
    let query = request
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let form = match method {
        pages::Method::Get => Vec::new(),
        pages::Method::Post => {
            let deadline = secs(worker.shared.settings.body_read_timeout_secs);
            let body = Limited::new(request.into_body(), MAX_FORM_BYTES).collect();
            match tokio::time::timeout(deadline, body).await {
                Ok(Ok(body)) => form_urlencoded::parse(&body.to_bytes())
                    .into_owned()
                    .collect(),
                Ok(Err(_)) => return plain(413, "The form is too large."),
                Err(_) => return plain(408, "The form did not arrive in time."),
            }
        }
    };
    let console_request = ConsoleRequest {
        method,
        path: path[BASE.len()..].to_owned(),
        query,
        form,
        session_token,
        login_token,
        client,
        secure,
    };
    respond(console.handle(console_request).await)
}

/// The session and login cookies, if sent.
fn cookies(headers: &hyper::HeaderMap) -> (Option<String>, Option<String>) {
    let (mut session, mut login) = (None, None);
    for header in headers.get_all(COOKIE) {
        let Ok(text) = header.to_str() else { continue };
        for pair in text.split(';') {
            let Some((name, value)) = pair.trim().split_once('=') else {
                continue;
            };
            let value = Some(value.to_owned()).filter(|v| !v.is_empty());
            match name {
                SESSION_COOKIE => session = value,
                LOGIN_COOKIE => login = value,
                _ => {}
            }
        }
    }
    (session, login)
}

/// A trusted proxy in front says the browser used HTTPS.
fn forwarded_https(worker: &Worker, headers: &hyper::HeaderMap, peer: IpAddr) -> bool {
    let trusted = &worker.shared.settings.trusted_proxies;
    trusted.iter().any(|net| net.contains(&peer))
        && headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

fn respond(answer: ConsoleResponse) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(answer.body)));
    *response.status_mut() =
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(answer.content_type));
    if let Some(location) = answer.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        headers.insert(LOCATION, location);
    }
    for cookie in answer.cookies {
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            headers.append(SET_COOKIE, value);
        }
    }
    secure_headers(headers);
    response
}

fn secure_headers(headers: &mut hyper::HeaderMap) {
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

fn redirect(status: u16, location: &str) -> Response<Full<Bytes>> {
    let mut response = plain(status, "");
    if let Ok(location) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, location);
    }
    response
}

fn plain(status: u16, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::NOT_FOUND);
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    secure_headers(response.headers_mut());
    response
}
