//! VirtualGateway and GatewayRoute specs, compiled by gateway mode (`--gateway`).

use serde::Deserialize;

use super::{
    BackendDefaults, HeaderMatchSpec, HealthCheckPolicy, HostnameMatch, HttpMethod, HttpPathMatch,
    HttpQueryParameter, ListenerTls, Logging, PortMapping,
};
use crate::model::{Http2ConnectionPool, HttpConnectionPool};

/// `VirtualGatewayConnectionPool` (no TCP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum GatewayConnectionPool {
    Http(HttpConnectionPool),
    Http2(Http2ConnectionPool),
    Grpc(Http2ConnectionPool),
}

/// `VirtualGatewayListener`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayListener {
    pub connection_pool: Option<GatewayConnectionPool>,
    pub health_check: Option<HealthCheckPolicy>,
    pub port_mapping: PortMapping,
    pub tls: Option<ListenerTls>,
}

/// `VirtualGatewaySpec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualGatewaySpec {
    pub backend_defaults: Option<BackendDefaults>,
    pub listeners: Vec<GatewayListener>,
    pub logging: Option<Logging>,
}

/// `ENABLED` / `DISABLED` switches of gateway rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Toggle {
    Enabled,
    Disabled,
}

/// `GatewayRouteHostnameRewrite`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostnameRewrite {
    pub default_target_hostname: Option<Toggle>,
}

/// `HttpGatewayRoutePathRewrite`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathRewrite {
    pub exact: Option<String>,
}

/// `HttpGatewayRoutePrefixRewrite`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrefixRewrite {
    pub default_prefix: Option<Toggle>,
    pub value: Option<String>,
}

/// `HttpGatewayRouteRewrite`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGatewayRewrite {
    pub hostname: Option<HostnameRewrite>,
    pub path: Option<PathRewrite>,
    pub prefix: Option<PrefixRewrite>,
}

/// `GrpcGatewayRouteRewrite`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcGatewayRewrite {
    pub hostname: Option<HostnameRewrite>,
}

/// `GatewayRouteVirtualService`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayTargetService {
    pub virtual_service_name: String,
}

/// `GatewayRouteTarget`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayRouteTarget {
    pub port: Option<i64>,
    pub virtual_service: GatewayTargetService,
}

/// `HttpGatewayRouteAction`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGatewayRouteAction {
    pub rewrite: Option<HttpGatewayRewrite>,
    pub target: GatewayRouteTarget,
}

/// `GrpcGatewayRouteAction`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcGatewayRouteAction {
    pub rewrite: Option<GrpcGatewayRewrite>,
    pub target: GatewayRouteTarget,
}

/// `HttpGatewayRouteMatch`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGatewayRouteMatch {
    #[serde(default)]
    pub headers: Vec<HeaderMatchSpec>,
    pub hostname: Option<HostnameMatch>,
    pub method: Option<HttpMethod>,
    pub path: Option<HttpPathMatch>,
    pub port: Option<i64>,
    pub prefix: Option<String>,
    #[serde(default)]
    pub query_parameters: Vec<HttpQueryParameter>,
}

/// `GrpcGatewayRouteMatch`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcGatewayRouteMatch {
    pub hostname: Option<HostnameMatch>,
    #[serde(default)]
    pub metadata: Vec<HeaderMatchSpec>,
    pub port: Option<i64>,
    pub service_name: Option<String>,
}

/// `HttpGatewayRoute` (both `httpRoute` and `http2Route`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGatewayRoute {
    pub action: HttpGatewayRouteAction,
    #[serde(rename = "match")]
    pub match_: HttpGatewayRouteMatch,
}

/// `GrpcGatewayRoute`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcGatewayRoute {
    pub action: GrpcGatewayRouteAction,
    #[serde(rename = "match")]
    pub match_: GrpcGatewayRouteMatch,
}

/// `GatewayRouteSpec`: exactly one route kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayRouteSpec {
    pub grpc_route: Option<GrpcGatewayRoute>,
    pub http2_route: Option<HttpGatewayRoute>,
    pub http_route: Option<HttpGatewayRoute>,
    /// 0–1000, 0 first.
    pub priority: Option<i64>,
}
