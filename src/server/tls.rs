//! TLS on the API port: the certificate chain and key come from PEM files and are read again when
//! either file changes (a renewed certificate takes effect without a restart).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server.tls_cert and server.tls_key go together: set both, or neither")]
    Half,
    #[error("cannot read the TLS certificate {path}: {message}")]
    Cert { path: String, message: String },
    #[error("cannot read the TLS key {path}: {message}")]
    Key { path: String, message: String },
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// The acceptor for `cert` and `key`, or `None` when neither is set.
pub(crate) fn acceptor(
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Option<TlsAcceptor>, TlsError> {
    let (cert, key) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert.to_owned(), key.to_owned()),
        _ => return Err(TlsError::Half),
    };
    let resolver = ReloadingCert::new(cert, key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// How often a handshake may look at the files' modification times.
const RECHECK: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    stamps: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
    key: Arc<CertifiedKey>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl ReloadingCert {
    fn new(cert: PathBuf, key: PathBuf) -> Result<Self, TlsError> {
        let loaded = Loaded {
            stamps: (modified(&cert), modified(&key)),
            checked: Instant::now(),
            key: load(&cert, &key)?,
        };
        Ok(ReloadingCert {
            cert,
            key,
            current: RwLock::new(loaded),
        })
    }

    /// Reads the files again when their modification times changed; a bad new pair is logged
    /// and the old one kept.
    fn refresh(&self) {
        let due = self
            .current
            .read()
            .map(|c| c.checked.elapsed() >= RECHECK)
            .unwrap_or(false);
        if !due {
            return;
        }
        let Ok(mut current) = self.current.write() else {
            return;
        };
        current.checked = Instant::now();
        let stamps = (modified(&self.cert), modified(&self.key));
        if stamps == current.stamps {
            return;
        }
        match load(&self.cert, &self.key) {
            Ok(key) => {
                current.key = key;
                current.stamps = stamps;
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                tracing::warn!(error = %e, "TLS certificate not reloaded; keeping the old one")
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.refresh();
        self.current.read().ok().map(|c| c.key.clone())
    }
}

fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_err = |message: String| TlsError::Cert {
        path: cert.display().to_string(),
        message,
    };
    let key_err = |message: String| TlsError::Key {
        path: key.display().to_string(),
        message,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no certificate in the file".into()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| key_err(e.to_string()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&private)
        .map_err(|e| key_err(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}
