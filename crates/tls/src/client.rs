//! TLS origination toward an upstream cluster, from a client policy.

use std::io;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;

use crate::files::{self, Reloadable, Stamps};
use crate::server::{HANDSHAKE_TIMEOUT_CLIENT, provider, spawn_reloader};
use crate::verify::{UpstreamVerifier, parse_sans};
use crate::{ALPN_H2, ALPN_HTTP1, TlsError};

/// The TLS side of one cluster: the current client config, swapped when files change.
pub struct ClientTls {
    spec: outrider_config::ClientTls,
    h2: bool,
    server_name: ServerName<'static>,
    config: Reloadable<ClientConfig>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("spec", &self.spec)
            .field("h2", &self.h2)
            .finish()
    }
}

impl ClientTls {
    /// Reads the files of `spec` and builds the config; ALPN offers `h2` when `h2` is true and
    /// `http/1.1` otherwise. Inside a Tokio runtime the files are checked every
    /// [`crate::RELOAD_INTERVAL`] until the returned value is dropped.
    pub fn new(spec: &outrider_config::ClientTls, h2: bool) -> Result<Arc<Self>, TlsError> {
        let server_name = ServerName::try_from(spec.server_name.clone())
            .map_err(|_| TlsError::ServerName(spec.server_name.clone()))?;
        let stamps = stamps(spec);
        let config = build(spec, h2)?;
        let tls = Arc::new(ClientTls {
            spec: spec.clone(),
            h2,
            server_name,
            config: Reloadable::new(config, stamps),
        });
        spawn_reloader(Arc::downgrade(&tls), |t: &ClientTls| t.reload());
        Ok(tls)
    }

    /// The settings this was built from.
    pub fn spec(&self) -> &outrider_config::ClientTls {
        &self.spec
    }

    /// Runs the client handshake over `io`, sending the virtual service name in SNI.
    pub async fn connect<S>(&self, io: S) -> io::Result<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let connector = tokio_rustls::TlsConnector::from(self.config.current());
        let handshake = connector.connect(self.server_name.clone(), io);
        files::within(HANDSHAKE_TIMEOUT_CLIENT, handshake).await
    }

    /// Rebuilds the config when a file changed. Returns true when a new config is in place;
    /// on error the previous config stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        self.config
            .reload_if_changed(stamps(&self.spec), || build(&self.spec, self.h2))
    }
}

fn stamps(spec: &outrider_config::ClientTls) -> Stamps {
    let mut paths = vec![spec.trust.as_str()];
    if let Some(cert) = &spec.certificate {
        paths.push(&cert.certificate_chain);
        paths.push(&cert.private_key);
    }
    Stamps::of(&paths)
}

fn build(spec: &outrider_config::ClientTls, h2: bool) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let sans = parse_sans(&spec.sans);
    let verifier = UpstreamVerifier {
        roots: Arc::new(files::roots(&spec.trust)?),
        none_can_match: sans.is_empty() && !spec.sans.is_empty(),
        sans,
        provider: provider.clone(),
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match &spec.certificate {
        Some(cert) => builder.with_client_auth_cert(
            files::certs(&cert.certificate_chain)?,
            files::key(&cert.private_key)?,
        )?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![if h2 { ALPN_H2 } else { ALPN_HTTP1 }.to_vec()];
    Ok(config)
}
