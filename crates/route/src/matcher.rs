//! Matchers for one route: path, headers, method, scheme, query, port, host, cookies, gRPC.

use http::{HeaderName, Method};
use regex::Regex;

/// How one string (a header value, a cookie value, gRPC metadata) is matched.
#[derive(Debug, Clone)]
pub enum StringMatch {
    /// The whole value equals this.
    Exact(String),
    /// The value starts with this.
    Prefix(String),
    /// The value ends with this.
    Suffix(String),
    /// The whole value matches this pattern (anchored at both ends, as Envoy does).
    Regex(Regex),
    /// The value parses as an integer `n` with `start <= n < end` (Envoy's `range_match`).
    Range { start: i64, end: i64 },
}

/// A header (or gRPC metadata) matcher. `matcher: None` means "the header is present".
#[derive(Debug, Clone)]
pub struct HeaderMatch {
    pub name: HeaderName,
    pub matcher: Option<StringMatch>,
    /// Negates the result (a missing header matches an inverted matcher).
    pub invert: bool,
}

/// A path matcher. Paths are compared without the query string.
#[derive(Debug, Clone)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    /// Anchored at both ends.
    Regex(Regex),
}

/// Host (authority without port) matcher, compared case-insensitively. Extension to App Mesh
/// routes, in the shape GatewayRoute uses.
#[derive(Debug, Clone)]
pub enum HostMatch {
    Exact(String),
    Suffix(String),
}

/// A query parameter matcher: `exact: None` means "the parameter is present".
#[derive(Debug, Clone)]
pub struct QueryMatch {
    pub name: String,
    pub exact: Option<String>,
}

/// A cookie matcher (extension to App Mesh routes): `matcher: None` means "present".
#[derive(Debug, Clone)]
pub struct CookieMatch {
    pub name: String,
    pub matcher: Option<StringMatch>,
    pub invert: bool,
}

/// The match of an `httpRoute` or `http2Route`.
#[derive(Debug, Clone, Default)]
pub struct HttpMatch {
    pub path: Option<PathMatch>,
    pub method: Option<Method>,
    /// `http` or `https`.
    pub scheme: Option<String>,
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<QueryMatch>,
    pub port: Option<u16>,
    pub hostname: Option<HostMatch>,
    pub cookies: Vec<CookieMatch>,
}

/// The match of a `grpcRoute`. The request path is `/<service>/<method>`.
#[derive(Debug, Clone, Default)]
pub struct GrpcMatch {
    pub service_name: Option<String>,
    pub method_name: Option<String>,
    pub metadata: Vec<HeaderMatch>,
    pub port: Option<u16>,
    pub hostname: Option<HostMatch>,
    pub cookies: Vec<CookieMatch>,
}

/// The match of a `tcpRoute`.
#[derive(Debug, Clone, Default)]
pub struct TcpMatch {
    pub port: Option<u16>,
}

/// One route's match, by route kind.
#[derive(Debug, Clone)]
pub enum RouteMatch {
    Http(HttpMatch),
    Grpc(GrpcMatch),
    Tcp(TcpMatch),
}
