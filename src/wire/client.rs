//! A small client for the wire protocol: signs requests the way the Coronium client plugin does.
//! Used by `coronium call` and by the tests.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("bad request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("the answer is not JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// The headers a client sends for one call, signed with `server_key` at `time`.
pub fn signed_headers(
    server_key: &str,
    project: &str,
    action: &str,
    scope: &str,
    time: i64,
) -> Vec<(&'static str, String)> {
    let time = time.to_string();
    vec![
        ("X-Project-Id", project.to_owned()),
        ("X-Action", action.to_owned()),
        ("X-Scope", scope.to_owned()),
        (
            "X-Request-Auth",
            super::signature(server_key, project, action, &time),
        ),
        ("X-Request-Time", time),
        ("Content-Type", "application/json".to_owned()),
    ]
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// POSTs `body` to `http://{addr}/` with `headers`; returns the HTTP status and the JSON answer.
pub async fn post(
    addr: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Result<(u16, Value), ClientError> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|source| ClientError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::task::spawn(async move {
        let _ = connection.await;
    });
    let mut request = Request::post("/").header("Host", addr);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = sender
        .send_request(request.body(Full::new(Bytes::from(body)))?)
        .await?;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await?.to_bytes();
    driver.abort();
    Ok((status, serde_json::from_slice(&bytes)?))
}

/// One signed call; returns the whole answer (`{"result": ...}`).
pub async fn call(
    addr: &str,
    server_key: &str,
    project: &str,
    action: &str,
    scope: &str,
    params: &Value,
) -> Result<Value, ClientError> {
    let headers = signed_headers(server_key, project, action, scope, unix_now());
    Ok(post(addr, &headers, params.to_string().into_bytes())
        .await?
        .1)
}
