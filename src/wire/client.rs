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
    #[error("{0}")]
    Address(String),
    #[error("cannot read the CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("TLS with {addr}: {source}")]
    Tls {
        addr: String,
        #[source]
        source: std::io::Error,
    },
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

/// Where a call goes: `HOST:PORT` or `http://HOST:PORT` in plain HTTP, `https://HOST:PORT` over
/// TLS (certificates checked against the public roots, and a private CA's when given).
pub struct Target {
    /// `HOST:PORT`.
    authority: String,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
}

impl Target {
    pub fn parse(addr: &str, ca_file: Option<&std::path::Path>) -> Result<Target, ClientError> {
        let (https, authority) = match addr.split_once("://") {
            Some(("https", rest)) => (true, rest),
            Some(("http", rest)) => (false, rest),
            Some((scheme, _)) => {
                return Err(ClientError::Address(format!(
                    "{addr}: the address is HOST:PORT, http://HOST:PORT or https://HOST:PORT, not {scheme}://"
                )));
            }
            None => (false, addr),
        };
        let authority = authority.trim_end_matches('/').to_owned();
        if !https {
            if ca_file.is_some() {
                return Err(ClientError::Address(
                    "--ca-file is for an https:// address".into(),
                ));
            }
            return Ok(Target {
                authority,
                tls: None,
            });
        }
        let host = match authority.rsplit_once(':') {
            Some((host, port)) if port.parse::<u16>().is_ok() => host,
            _ => authority.as_str(),
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let name = rustls::pki_types::ServerName::try_from(host)
            .map_err(|e| ClientError::Address(format!("{addr}: {e}")))?;
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = ca_file {
            use rustls::pki_types::pem::PemObject as _;
            let ca_error = |reason: String| ClientError::CaFile {
                path: path.display().to_string(),
                reason,
            };
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| ca_error(e.to_string()))?;
            let mut added = 0;
            for cert in certs {
                roots
                    .add(cert.map_err(|e| ca_error(e.to_string()))?)
                    .map_err(|e| ca_error(e.to_string()))?;
                added += 1;
            }
            if added == 0 {
                return Err(ca_error("no PEM certificate in it".into()));
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Address(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        Ok(Target {
            authority,
            tls: Some((connector, name)),
        })
    }
}

/// POSTs `body` to `http://{addr}/` with `headers`; returns the HTTP status and the JSON answer.
pub async fn post(
    addr: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Result<(u16, Value), ClientError> {
    post_to(&Target::parse(addr, None)?, headers, body).await
}

/// POSTs `body` to `target` with `headers`; returns the HTTP status and the JSON answer.
pub async fn post_to(
    target: &Target,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Result<(u16, Value), ClientError> {
    let addr = target.authority.as_str();
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|source| ClientError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    match &target.tls {
        None => send(stream, addr, headers, body).await,
        Some((connector, name)) => {
            let stream = connector
                .connect(name.clone(), stream)
                .await
                .map_err(|source| ClientError::Tls {
                    addr: addr.to_owned(),
                    source,
                })?;
            send(stream, addr, headers, body).await
        }
    }
}

async fn send<I>(
    stream: I,
    addr: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Result<(u16, Value), ClientError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
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
    call_to(
        &Target::parse(addr, None)?,
        server_key,
        project,
        action,
        scope,
        params,
    )
    .await
}

/// [`call`] to a [`Target`] (plain HTTP or TLS).
pub async fn call_to(
    target: &Target,
    server_key: &str,
    project: &str,
    action: &str,
    scope: &str,
    params: &Value,
) -> Result<Value, ClientError> {
    let headers = signed_headers(server_key, project, action, scope, unix_now());
    Ok(post_to(target, &headers, params.to_string().into_bytes())
        .await?
        .1)
}
