//! The mail-link pages (users spec §4.4): `GET /_confirmation?code=`, `GET /_resetpassword?code=`
//! (a form) and `POST /_resetpassword`. Plain HTML that works without JavaScript, from templates
//! an operator may override (`<templates>/pages/`). The answers never say whether an address or
//! user exists, only whether the link's code is good; each client address gets a budget of
//! requests per minute.

use std::net::IpAddr;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde_json::{Map, Value, json};

use super::json_response;
use crate::server::worker::Worker;
use crate::users::input::MAX_PASSWORD_BYTES;
use crate::users::password::Secret;

const CONFIRMATION_PAGE: &str = include_str!("../../mail/templates/pages/confirmation.tpl");
const PASSWORD_FORM_PAGE: &str = include_str!("../../mail/templates/pages/password_form.tpl");
const PASSWORD_RESULT_PAGE: &str = include_str!("../../mail/templates/pages/password_result.tpl");

/// The largest reset form accepted (a code and two passwords).
const MAX_FORM_BYTES: usize = 16 * 1024;

const RESET_LINK_GONE: &str = "This password reset link no longer works: links work once and \
    expire after 24 hours. You can ask for a new one in the app.";

/// `GET /_confirmation?code=`: a known code confirms its user (active, validated) and is used up.
pub(super) async fn confirmation(
    worker: &Worker,
    request: &Request<Incoming>,
    client: IpAddr,
) -> Response<Full<Bytes>> {
    if !worker.shared.page_rate.allow(client) {
        return too_many();
    }
    let code = query_code(request);
    let confirmed = match code.as_deref() {
        Some(code) => worker.services.users.confirm(code).await,
        None => Ok(None),
    };
    let (status, title, message) = match confirmed {
        Ok(Some(_)) => (
            200,
            "Email address confirmed",
            "Thank you: your email address is confirmed and your account is active. You can \
             return to the app.",
        ),
        Ok(None) => (
            404,
            "Link not valid",
            "This confirmation link is not valid or has already been used.",
        ),
        Err(e) => return unavailable(&e),
    };
    let values = values(&[("title", title), ("message", message)]);
    page(
        worker,
        "confirmation.tpl",
        CONFIRMATION_PAGE,
        &values,
        status,
    )
    .await
}

/// `GET /_resetpassword?code=`: the form for a valid code, else a page saying the link is gone.
pub(super) async fn reset_form(
    worker: &Worker,
    request: &Request<Incoming>,
    client: IpAddr,
) -> Response<Full<Bytes>> {
    if !worker.shared.page_rate.allow(client) {
        return too_many();
    }
    let code = query_code(request).unwrap_or_default();
    match worker.services.users.password_reset_valid(&code).await {
        Ok(true) => form(worker, &code, "", 200).await,
        Ok(false) => link_gone(worker).await,
        Err(e) => unavailable(&e),
    }
}

/// `POST /_resetpassword` with `code`, `password` and `password_repeat` (form-encoded, from the
/// page; or JSON, from an app): the new password is stored as a client would send it (md5 hex,
/// then argon2id), and every reset code of the user is used up. A form gets a page back; JSON
/// gets `{"ok": true}` or `{"error", "status"}`.
pub(super) async fn reset_submit(
    worker: &Worker,
    request: Request<Incoming>,
    client: IpAddr,
) -> Response<Full<Bytes>> {
    if !worker.shared.page_rate.allow(client) {
        return too_many();
    }
    let json_body = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let deadline = crate::server::secs(worker.shared.settings.body_read_timeout_secs);
    let collected = tokio::time::timeout(
        deadline,
        Limited::new(request.into_body(), MAX_FORM_BYTES).collect(),
    )
    .await;
    let body = match collected {
        Ok(Ok(body)) => body.to_bytes(),
        _ => return refusal(json_body, 400, "The form could not be read.", 801),
    };
    let fields = if json_body {
        match serde_json::from_slice::<Map<String, Value>>(&body) {
            Ok(map) => map,
            Err(_) => return refusal(true, 400, "The body must be a JSON object.", 801),
        }
    } else {
        form_urlencoded::parse(&body)
            .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
            .collect()
    };
    let field = |name: &str| fields.get(name).and_then(Value::as_str).unwrap_or_default();
    let (code, password) = (field("code"), field("password"));
    let repeat = fields.get("password_repeat").and_then(Value::as_str);
    let problem = if password.is_empty() {
        Some("Please enter a new password.")
    } else if password.len() > MAX_PASSWORD_BYTES {
        Some("The password is too long.")
    } else if repeat.is_some_and(|r| r != password) || (!json_body && repeat.is_none()) {
        Some("The two passwords are not the same.")
    } else {
        None
    };
    if let Some(problem) = problem {
        return if json_body {
            refusal(true, 400, problem, 801)
        } else {
            form(worker, code, problem, 400).await
        };
    }
    let users = &worker.services.users;
    match users
        .reset_password(code, &Secret::from_plain(password))
        .await
    {
        Ok(true) if json_body => json_response(200, &json!({ "ok": true })),
        Ok(true) => {
            let values = values(&[
                ("title", "Password changed"),
                (
                    "message",
                    "Your password has been changed. You can log in with it in the app.",
                ),
            ]);
            page(
                worker,
                "password_result.tpl",
                PASSWORD_RESULT_PAGE,
                &values,
                200,
            )
            .await
        }
        Ok(false) if json_body => refusal(true, 404, RESET_LINK_GONE, 604),
        Ok(false) => link_gone(worker).await,
        Err(e) => unavailable(&e),
    }
}

async fn form(worker: &Worker, code: &str, error: &str, status: u16) -> Response<Full<Bytes>> {
    let values = values(&[
        ("code", code),
        ("error", error),
        ("action", "/_resetpassword"),
    ]);
    page(
        worker,
        "password_form.tpl",
        PASSWORD_FORM_PAGE,
        &values,
        status,
    )
    .await
}

async fn link_gone(worker: &Worker) -> Response<Full<Bytes>> {
    let values = values(&[
        ("title", "Link no longer valid"),
        ("message", RESET_LINK_GONE),
    ]);
    page(
        worker,
        "password_result.tpl",
        PASSWORD_RESULT_PAGE,
        &values,
        404,
    )
    .await
}

fn values(pairs: &[(&str, &str)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
        .collect()
}

/// The `code` query parameter.
fn query_code(request: &Request<Incoming>) -> Option<String> {
    form_urlencoded::parse(request.uri().query()?.as_bytes())
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

/// A page from the operator's template, else the built-in one. Pages carry codes in their URL:
/// no caching, no referrer, no framing, no scripts.
async fn page(
    worker: &Worker,
    name: &str,
    default: &str,
    values: &Map<String, Value>,
    status: u16,
) -> Response<Full<Bytes>> {
    let templates = worker.services.mailer.templates();
    let html = match templates.page(name, default).await {
        Ok(template) => template.render(values),
        Err(e) => {
            tracing::warn!(error = %e, "page template invalid; using the built-in one");
            match crate::mail::template::Template::parse(name, default) {
                Ok(template) => template.render(values),
                Err(_) => String::new(),
            }
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(html)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    response
}

fn refusal(json_body: bool, http: u16, message: &str, status: i64) -> Response<Full<Bytes>> {
    if json_body {
        return json_response(http, &json!({ "error": message, "status": status }));
    }
    plain(http, message)
}

fn too_many() -> Response<Full<Bytes>> {
    let mut response = plain(429, "Too many requests; try again in a minute.");
    response
        .headers_mut()
        .insert("retry-after", HeaderValue::from_static("60"));
    response
}

fn unavailable(error: &crate::users::UserError) -> Response<Full<Bytes>> {
    tracing::error!(error = %error, "mail-link page failed");
    plain(503, "The service is unavailable; try again shortly.")
}

fn plain(status: u16, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text.to_owned())));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
