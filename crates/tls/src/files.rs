//! Reading PEM files, and the modification stamps that tell when they changed.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::TlsError;

/// Modification time and length of each watched file; a change in either means reload.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Stamps(Vec<Option<(SystemTime, u64)>>);

impl Stamps {
    pub(crate) fn of(paths: &[&str]) -> Stamps {
        Stamps(
            paths
                .iter()
                .map(|p| {
                    std::fs::metadata(p)
                        .ok()
                        .and_then(|m| Some((m.modified().ok()?, m.len())))
                })
                .collect(),
        )
    }
}

/// A TLS config rebuilt when its files change; shared by listeners and origination.
pub(crate) struct Reloadable<T> {
    config: arc_swap::ArcSwap<T>,
    stamps: std::sync::Mutex<Stamps>,
}

impl<T> Reloadable<T> {
    pub(crate) fn new(config: T, stamps: Stamps) -> Self {
        Reloadable {
            config: arc_swap::ArcSwap::from_pointee(config),
            stamps: std::sync::Mutex::new(stamps),
        }
    }

    /// The config in place now.
    pub(crate) fn current(&self) -> std::sync::Arc<T> {
        self.config.load_full()
    }

    /// Rebuilds with `build` when `now` differs from the stamps last built from. True when a
    /// new config is in place; on error the previous config stays.
    pub(crate) fn reload_if_changed(
        &self,
        now: Stamps,
        build: impl FnOnce() -> Result<T, TlsError>,
    ) -> Result<bool, TlsError> {
        {
            let Ok(seen) = self.stamps.lock() else {
                return Ok(false);
            };
            if *seen == now {
                return Ok(false);
            }
        }
        self.config.store(std::sync::Arc::new(build()?));
        if let Ok(mut seen) = self.stamps.lock() {
            *seen = now;
        }
        Ok(true)
    }
}

/// Runs a handshake within `limit`; running out is a `TimedOut` I/O error.
pub(crate) async fn within<T>(
    limit: std::time::Duration,
    handshake: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    match tokio::time::timeout(limit, handshake).await {
        Ok(res) => res,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "TLS handshake timed out",
        )),
    }
}

fn read(path: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: PathBuf::from(path),
        source,
    })
}

fn pem_err(path: &str, reason: impl Into<String>) -> TlsError {
    TlsError::Pem {
        path: Path::new(path).to_path_buf(),
        reason: reason.into(),
    }
}

/// Every certificate of a PEM chain file, leaf first.
pub(crate) fn certs(path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(path, e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_err(path, "no CERTIFICATE in file"));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub(crate) fn key(path: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| pem_err(path, e.to_string()))
}

/// A root store holding every certificate of a PEM trust file.
pub(crate) fn roots(path: &str) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certs(path)? {
        store.add(cert)?;
    }
    Ok(store)
}
