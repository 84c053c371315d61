//! TLS termination on a listener: the rustls server config, its reload, and a process-wide
//! cache so that every connection to a listener shares one config.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use outrider_config::{ListenerTls, ListenerTlsMode};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

use crate::files::{self, Reloadable, Stamps};
use crate::verify::{PeerVerifier, parse_sans};
use crate::{ALPN_H2, ALPN_HTTP1, RELOAD_INTERVAL, TlsError};

/// Time allowed for a downstream TLS handshake. Default is 10 s.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for an upstream TLS handshake. Default is 10 s.
pub(crate) const HANDSHAKE_TIMEOUT_CLIENT: Duration = HANDSHAKE_TIMEOUT;

type Cache = HashMap<ListenerTls, Arc<ServerTls>>;

/// The TLS side of one listener: the current server config, swapped when files change.
pub struct ServerTls {
    spec: ListenerTls,
    config: Reloadable<ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("spec", &self.spec)
            .finish()
    }
}

/// The provider every config uses, named explicitly so that no process-level default is
/// needed.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// The shared [`ServerTls`] of `spec`, built on first use. Entries live for the process (one
/// per distinct listener TLS setting); lookups take no lock.
pub fn server_tls(spec: &ListenerTls) -> Result<Arc<ServerTls>, TlsError> {
    static CACHE: OnceLock<(ArcSwap<Cache>, Mutex<()>)> = OnceLock::new();
    let (map, write) = CACHE.get_or_init(Default::default);
    if let Some(tls) = map.load().get(spec) {
        return Ok(tls.clone());
    }
    let _guard = write.lock();
    if let Some(tls) = map.load().get(spec) {
        return Ok(tls.clone());
    }
    let tls = ServerTls::new(spec)?;
    let mut next = (**map.load()).clone();
    next.insert(spec.clone(), tls.clone());
    map.store(Arc::new(next));
    Ok(tls)
}

impl ServerTls {
    /// Reads the files of `spec` and builds the config. Inside a Tokio runtime, a task checks
    /// the files every [`RELOAD_INTERVAL`] until the returned value is dropped.
    pub fn new(spec: &ListenerTls) -> Result<Arc<Self>, TlsError> {
        let stamps = stamps(spec);
        let config = build(spec)?;
        let tls = Arc::new(ServerTls {
            spec: spec.clone(),
            config: Reloadable::new(config, stamps),
        });
        spawn_reloader(Arc::downgrade(&tls), |t: &ServerTls| t.reload());
        Ok(tls)
    }

    /// STRICT or PERMISSIVE.
    pub fn mode(&self) -> ListenerTlsMode {
        self.spec.mode
    }

    /// Runs the server handshake over `io`, within [`HANDSHAKE_TIMEOUT`].
    pub async fn accept<S>(&self, io: S) -> io::Result<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.current());
        files::within(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await
    }

    /// Rebuilds the config when a file changed. Returns true when a new config is in place;
    /// on error the previous config stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        self.config
            .reload_if_changed(stamps(&self.spec), || build(&self.spec))
    }
}

fn stamps(spec: &ListenerTls) -> Stamps {
    let mut paths = vec![
        spec.certificate.certificate_chain.as_str(),
        spec.certificate.private_key.as_str(),
    ];
    if let Some(trust) = &spec.client_trust {
        paths.push(trust);
    }
    Stamps::of(&paths)
}

fn build(spec: &ListenerTls) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &spec.client_trust {
        Some(trust) => {
            let roots = Arc::new(files::roots(trust)?);
            let inner = WebPkiClientVerifier::builder_with_provider(roots, provider).build()?;
            let sans = parse_sans(&spec.client_sans);
            builder.with_client_cert_verifier(Arc::new(PeerVerifier {
                inner,
                none_can_match: sans.is_empty() && !spec.client_sans.is_empty(),
                sans,
            }))
        }
        None => builder.with_no_client_auth(),
    };
    let certs = files::certs(&spec.certificate.certificate_chain)?;
    let key = files::key(&spec.certificate.private_key)?;
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    Ok(config)
}

/// Polls for file changes until `target` is dropped. Outside a Tokio runtime nothing is
/// spawned (the config then never reloads).
pub(crate) fn spawn_reloader<T, F>(target: Weak<T>, reload: F)
where
    T: Send + Sync + std::fmt::Debug + 'static,
    F: Fn(&T) -> Result<bool, TlsError> + Send + 'static,
{
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    handle.spawn(async move {
        loop {
            tokio::time::sleep(RELOAD_INTERVAL).await;
            let Some(t) = target.upgrade() else {
                return;
            };
            match reload(&t) {
                Ok(true) => tracing::info!(tls = ?t, "TLS files changed: new handshakes use them"),
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(tls = ?t, error = %err, "TLS files changed but cannot be used; keeping the previous ones")
                }
            }
        }
    });
}
