//! TLS for Outrider: rustls server and client configs built from a snapshot's listener and
//! client-policy TLS, with certificate files reloaded when they change.

mod client;
mod files;
mod server;
mod stream;
mod verify;

use std::path::PathBuf;
use std::time::Duration;

pub use client::ClientTls;
pub use server::{HANDSHAKE_TIMEOUT, ServerTls, server_tls};
pub use stream::MaybeTls;

/// How often certificate, key and trust files are checked for changes. Default is 5 s.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(5);
/// ALPN protocol id of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol id of HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// First byte of a TLS record carrying a handshake: how a permissive listener tells TLS from
/// plaintext.
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate, key or trust file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the expected kind.
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    /// rustls refused the certificate, key or trust.
    #[error("invalid TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built from the trust.
    #[error("invalid trust: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The server name is not a valid DNS name or IP address.
    #[error("invalid server name {0:?}")]
    ServerName(String),
}

/// A downstream connection after the TLS handshake.
pub type ServerStream<S> = tokio_rustls::server::TlsStream<S>;
/// An upstream connection after the TLS handshake.
pub type ClientStream<S> = tokio_rustls::client::TlsStream<S>;
