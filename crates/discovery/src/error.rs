//! The resolution error type.

use std::io;

use crate::wire::WireError;

/// Why a hostname could not be resolved.
///
/// A name that does not exist (NXDOMAIN) or has no address records is not an error: it resolves
/// to an empty list. Every variant here means "the answer is unknown", so callers that keep state
/// should keep what they had.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The hostname is not a valid DNS name.
    #[error("invalid hostname {0:?}")]
    InvalidHost(String),
    /// No response arrived within the timeout, on any attempt.
    #[error("DNS query timed out")]
    Timeout,
    /// The socket to the DNS server failed (e.g. connection refused).
    #[error("DNS transport failed")]
    Io(#[source] io::Error),
    /// The server's response could not be used.
    #[error("malformed DNS response")]
    Malformed(#[source] WireError),
    /// The server answered with an error code such as SERVFAIL (2) or REFUSED (5).
    #[error("DNS server answered with rcode {rcode}")]
    Server {
        /// The response code from the header.
        rcode: u8,
    },
    /// The answer was truncated even over TCP.
    #[error("DNS response truncated over TCP")]
    TruncatedOverTcp,
    /// The operating system resolver failed; it does not tell a missing name from an outage.
    #[error("system resolver failed")]
    System(#[source] io::Error),
}

impl ResolveError {
    /// True when the server could not be reached or did not answer in time.
    pub fn is_transport(&self) -> bool {
        matches!(self, ResolveError::Timeout | ResolveError::Io(_))
    }
}
