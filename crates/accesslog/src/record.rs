//! The facts of one finished request or TCP connection, borrowed from the proxy's own state.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use http::HeaderMap;

/// One request (HTTP) or one connection (TCP), as the formatter sees it. Everything is borrowed
/// so building a record costs no allocation. `None` (or an empty string for `response_flags`)
/// renders as Envoy's `-`.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// When the first byte of the request (or the connection) arrived.
    pub start: SystemTime,
    /// `:method`, e.g. `GET`.
    pub method: Option<&'a str>,
    /// `:path` including the query string, as the client sent it.
    pub path: Option<&'a str>,
    /// `:authority` (or the HTTP/1 `Host`).
    pub authority: Option<&'a str>,
    /// `:scheme`, `http` or `https`.
    pub scheme: Option<&'a str>,
    /// Envoy's protocol name: `HTTP/1.0`, `HTTP/1.1`, `HTTP/2` or `HTTP/3`; `None` for TCP.
    pub protocol: Option<&'a str>,
    /// Request headers as received from downstream (empty for TCP).
    pub request_headers: &'a HeaderMap,
    /// Response headers, when a response was sent.
    pub response_headers: Option<&'a HeaderMap>,
    /// Response trailers (gRPC status lives here).
    pub response_trailers: Option<&'a HeaderMap>,
    /// HTTP status sent downstream; 0 for TCP or when no response was sent.
    pub response_code: u16,
    /// Envoy response flags, e.g. `UF,URX`; empty when none.
    pub response_flags: &'a str,
    /// Body bytes (HTTP) or stream bytes (TCP) received from downstream.
    pub bytes_received: u64,
    /// Body bytes (HTTP) or stream bytes (TCP) sent to downstream.
    pub bytes_sent: u64,
    /// From start until the last byte was sent downstream.
    pub duration: Duration,
    /// From start until the last request byte was received.
    pub request_duration: Option<Duration>,
    /// From start until the first upstream response byte.
    pub response_duration: Option<Duration>,
    /// The upstream endpoint the request went to.
    pub upstream_host: Option<SocketAddr>,
    /// The upstream cluster name.
    pub upstream_cluster: Option<&'a str>,
    /// The downstream peer.
    pub downstream_remote: Option<SocketAddr>,
    /// The local address the downstream connection arrived on (the original destination on egress).
    pub downstream_local: Option<SocketAddr>,
    /// The name of the route that matched.
    pub route_name: Option<&'a str>,
    /// Why the upstream connection failed, e.g. `connection refused`.
    pub upstream_transport_failure_reason: Option<&'a str>,
    /// Process-unique id of the downstream connection.
    pub connection_id: u64,
}

impl<'a> Record<'a> {
    /// A record with the given start and request headers and every other fact unknown
    /// (`None`, 0 or empty); callers fill in what they have.
    pub fn new(start: SystemTime, request_headers: &'a HeaderMap) -> Self {
        Record {
            start,
            method: None,
            path: None,
            authority: None,
            scheme: None,
            protocol: None,
            request_headers,
            response_headers: None,
            response_trailers: None,
            response_code: 0,
            response_flags: "",
            bytes_received: 0,
            bytes_sent: 0,
            duration: Duration::ZERO,
            request_duration: None,
            response_duration: None,
            upstream_host: None,
            upstream_cluster: None,
            downstream_remote: None,
            downstream_local: None,
            route_name: None,
            upstream_transport_failure_reason: None,
            connection_id: 0,
        }
    }
}
