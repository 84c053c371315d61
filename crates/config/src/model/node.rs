//! VirtualNode and VirtualRouter specs.

use serde::Deserialize;

use super::{
    BackendDefaults, ClientPolicy, Duration, HealthCheckPolicy, HttpTimeout, IpPreferenceSpec,
    ListenerTls, Logging, PortMapping, TcpTimeout,
};

/// `VirtualNodeHttpConnectionPool`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpConnectionPool {
    pub max_connections: i64,
    pub max_pending_requests: Option<i64>,
}

/// `VirtualNodeHttp2ConnectionPool` / `VirtualNodeGrpcConnectionPool`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Http2ConnectionPool {
    pub max_requests: i64,
}

/// `VirtualNodeTcpConnectionPool`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpConnectionPool {
    pub max_connections: i64,
}

/// `VirtualNodeConnectionPool`: one per protocol, which must match the port mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ConnectionPoolSpec {
    Http(HttpConnectionPool),
    Http2(Http2ConnectionPool),
    Grpc(Http2ConnectionPool),
    Tcp(TcpConnectionPool),
}

/// `ListenerTimeout`: one per protocol, which must match the port mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ListenerTimeout {
    Http(HttpTimeout),
    Http2(HttpTimeout),
    Grpc(HttpTimeout),
    Tcp(TcpTimeout),
}

/// `OutlierDetection`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetectionSpec {
    pub base_ejection_duration: Duration,
    pub interval: Duration,
    pub max_ejection_percent: i64,
    pub max_server_errors: i64,
}

/// A virtual node `Listener`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    pub connection_pool: Option<ConnectionPoolSpec>,
    pub health_check: Option<HealthCheckPolicy>,
    pub outlier_detection: Option<OutlierDetectionSpec>,
    pub port_mapping: PortMapping,
    pub timeout: Option<ListenerTimeout>,
    pub tls: Option<ListenerTls>,
}

/// `ResponseType` of DNS discovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DnsResponseType {
    Loadbalancer,
    Endpoints,
}

/// `DnsServiceDiscovery`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DnsServiceDiscovery {
    pub hostname: String,
    pub ip_preference: Option<IpPreferenceSpec>,
    /// Default is `ENDPOINTS`.
    pub response_type: Option<DnsResponseType>,
}

/// `AwsCloudMapInstanceAttribute`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudMapAttribute {
    pub key: String,
    pub value: String,
}

/// `AwsCloudMapServiceDiscovery`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudMapServiceDiscovery {
    #[serde(default)]
    pub attributes: Vec<CloudMapAttribute>,
    pub ip_preference: Option<IpPreferenceSpec>,
    pub namespace_name: String,
    pub service_name: String,
}

/// `ServiceDiscovery`: `{dns} | {awsCloudMap}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ServiceDiscovery {
    Dns(DnsServiceDiscovery),
    AwsCloudMap(CloudMapServiceDiscovery),
}

/// `VirtualServiceBackend`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServiceBackend {
    pub client_policy: Option<ClientPolicy>,
    pub virtual_service_name: String,
}

/// `Backend`: `{virtualService}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Backend {
    VirtualService(VirtualServiceBackend),
}

/// `VirtualNodeSpec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualNodeSpec {
    pub backend_defaults: Option<BackendDefaults>,
    #[serde(default)]
    pub backends: Vec<Backend>,
    #[serde(default)]
    pub listeners: Vec<Listener>,
    pub logging: Option<Logging>,
    pub service_discovery: Option<ServiceDiscovery>,
}

/// `VirtualRouterListener`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualRouterListener {
    pub port_mapping: PortMapping,
}

/// `VirtualRouterSpec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualRouterSpec {
    #[serde(default)]
    pub listeners: Vec<VirtualRouterListener>,
}
