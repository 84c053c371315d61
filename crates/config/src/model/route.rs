//! Route specs: HTTP, HTTP/2, gRPC and TCP routes with retry policies and timeouts.

use serde::Deserialize;

use super::{
    Duration, HeaderMatchSpec, HostnameMatch, HttpMethod, HttpPathMatch, HttpQueryParameter,
    HttpScheme, HttpTimeout, TcpTimeout,
};

/// `WeightedTarget`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WeightedTarget {
    pub port: Option<i64>,
    pub virtual_node: String,
    pub weight: i64,
}

/// `HttpRouteAction` / `GrpcRouteAction` / `TcpRouteAction`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteActionSpec {
    pub weighted_targets: Vec<WeightedTarget>,
}

/// `HttpRetryPolicyEvent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HttpRetryEvent {
    ServerError,
    GatewayError,
    ClientError,
    StreamError,
}

/// `TcpRetryPolicyEvent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TcpRetryEvent {
    ConnectionError,
}

/// `GrpcRetryPolicyEvent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GrpcRetryEvent {
    Cancelled,
    DeadlineExceeded,
    Internal,
    ResourceExhausted,
    Unavailable,
}

/// `HttpRetryPolicy` and `GrpcRetryPolicy` (HTTP routes have no `grpcRetryEvents`; validation
/// reports one there).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicySpec {
    #[serde(default)]
    pub grpc_retry_events: Vec<GrpcRetryEvent>,
    #[serde(default)]
    pub http_retry_events: Vec<HttpRetryEvent>,
    pub max_retries: Option<i64>,
    pub per_retry_timeout: Option<Duration>,
    #[serde(default)]
    pub tcp_retry_events: Vec<TcpRetryEvent>,
}

/// `HttpRouteMatch`, plus Outrider's `hostname` and `cookies` extensions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteMatch {
    #[serde(default)]
    pub headers: Vec<HeaderMatchSpec>,
    pub method: Option<HttpMethod>,
    pub path: Option<HttpPathMatch>,
    pub port: Option<i64>,
    pub prefix: Option<String>,
    #[serde(default)]
    pub query_parameters: Vec<HttpQueryParameter>,
    pub scheme: Option<HttpScheme>,
    /// Extension (not App Mesh).
    pub hostname: Option<HostnameMatch>,
    /// Extension (not App Mesh).
    #[serde(default)]
    pub cookies: Vec<HeaderMatchSpec>,
}

/// `HttpRoute` (used by both `httpRoute` and `http2Route`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    pub action: RouteActionSpec,
    #[serde(rename = "match")]
    pub match_: HttpRouteMatch,
    pub retry_policy: Option<RetryPolicySpec>,
    pub timeout: Option<HttpTimeout>,
}

/// `GrpcRouteMatch`, plus Outrider's `hostname` and `cookies` extensions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteMatch {
    #[serde(default)]
    pub metadata: Vec<HeaderMatchSpec>,
    pub method_name: Option<String>,
    pub port: Option<i64>,
    pub service_name: Option<String>,
    /// Extension (not App Mesh).
    pub hostname: Option<HostnameMatch>,
    /// Extension (not App Mesh).
    #[serde(default)]
    pub cookies: Vec<HeaderMatchSpec>,
}

/// `GrpcRoute`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRoute {
    pub action: RouteActionSpec,
    #[serde(rename = "match")]
    pub match_: GrpcRouteMatch,
    pub retry_policy: Option<RetryPolicySpec>,
    pub timeout: Option<HttpTimeout>,
}

/// `TcpRouteMatch`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRouteMatch {
    pub port: Option<i64>,
}

/// `TcpRoute`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRoute {
    pub action: RouteActionSpec,
    #[serde(rename = "match")]
    pub match_: Option<TcpRouteMatch>,
    pub timeout: Option<TcpTimeout>,
}

/// `RouteSpec`: exactly one of the four route kinds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteSpec {
    pub grpc_route: Option<GrpcRoute>,
    pub http2_route: Option<HttpRoute>,
    pub http_route: Option<HttpRoute>,
    /// 0–1000, 0 first.
    pub priority: Option<i64>,
    pub tcp_route: Option<TcpRoute>,
}
