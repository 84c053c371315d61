//! The compiled, immutable view of the mesh for one virtual node (or gateway): what the data
//! plane reads. Built once per config load; swapped whole on reload.

use std::sync::Arc;
use std::time::Duration;

use outrider_route::{RouteTable, WeightedTargets};

/// App Mesh's per-request timeout when none is configured. Default is 15 s.
pub const DEFAULT_PER_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// App Mesh's idle timeout when none is configured. Default is 300 s.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How often DNS names are re-resolved. Default is 5 s.
pub const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(5);

/// Which resource this proxy is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    VirtualNode(String),
    VirtualGateway(String),
}

/// The mesh's `egressFilter.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EgressFilter {
    AllowAll,
    /// App Mesh's default.
    #[default]
    DropAll,
}

/// A listener or cluster protocol (`portMapping.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Tcp,
}

impl Protocol {
    /// The App Mesh spelling, as used in cluster names (`http`, `http2`, `grpc`, `tcp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
            Protocol::Tcp => "tcp",
        }
    }

    /// True for the protocols that are proxied at L7.
    pub fn is_http(self) -> bool {
        !matches!(self, Protocol::Tcp)
    }

    /// True when the upstream connection speaks HTTP/2 (h2c).
    pub fn is_h2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }
}

/// Timeouts of a listener or route. `None` means disabled (App Mesh's `0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Default is [`DEFAULT_PER_REQUEST_TIMEOUT`].
    pub per_request: Option<Duration>,
    /// Default is [`DEFAULT_IDLE_TIMEOUT`].
    pub idle: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            per_request: Some(DEFAULT_PER_REQUEST_TIMEOUT),
            idle: Some(DEFAULT_IDLE_TIMEOUT),
        }
    }
}

/// `connectionPool` limits. `None` means unlimited (App Mesh's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectionPool {
    pub max_connections: Option<u32>,
    pub max_pending_requests: Option<u32>,
    pub max_requests: Option<u32>,
}

/// A listener's active `healthCheck`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub protocol: Protocol,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

/// A listener's passive `outlierDetection`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierDetection {
    pub max_server_errors: u32,
    pub interval: Duration,
    pub base_ejection_duration: Duration,
    pub max_ejection_percent: u32,
}

/// HTTP retry events (`httpRetryEvents`), as bit flags.
pub mod http_retry {
    /// `server-error`: 500–511.
    pub const SERVER_ERROR: u8 = 1;
    /// `gateway-error`: 502, 503, 504.
    pub const GATEWAY_ERROR: u8 = 2;
    /// `client-error`: 409.
    pub const CLIENT_ERROR: u8 = 4;
    /// `stream-error`: refused or reset streams.
    pub const STREAM_ERROR: u8 = 8;
    /// Not an App Mesh event: HTTP 503 only, used by the implicit default policy.
    pub const STATUS_503: u8 = 16;
}

/// gRPC retry events (`grpcRetryEvents`), as bit flags.
pub mod grpc_retry {
    pub const CANCELLED: u8 = 1;
    pub const DEADLINE_EXCEEDED: u8 = 2;
    pub const INTERNAL: u8 = 4;
    pub const RESOURCE_EXHAUSTED: u8 = 8;
    pub const UNAVAILABLE: u8 = 16;
}

/// A route's `retryPolicy`, or App Mesh's implicit default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub per_retry_timeout: Option<Duration>,
    /// Bits of [`http_retry`].
    pub http_events: u8,
    /// Bits of [`grpc_retry`].
    pub grpc_events: u8,
    /// `tcpRetryEvents: [connection-error]`.
    pub connection_error: bool,
    /// True when this is App Mesh's implicit default (idempotent requests only).
    pub implicit: bool,
}

impl RetryPolicy {
    /// App Mesh's implicit policy for a route without `retryPolicy`: two retries on connection
    /// failure, refused stream and HTTP 503 (gRPC UNAVAILABLE), idempotent requests only.
    pub const IMPLICIT: RetryPolicy = RetryPolicy {
        max_retries: 2,
        per_retry_timeout: None,
        http_events: http_retry::STATUS_503 | http_retry::STREAM_ERROR,
        grpc_events: grpc_retry::UNAVAILABLE,
        connection_error: true,
        implicit: true,
    };
}

/// Index of a [`Cluster`] in [`Snapshot::clusters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClusterId(pub usize);

/// What a route does: weighted targets plus the policies that apply on the way.
#[derive(Debug, Clone)]
pub struct RouteAction {
    pub targets: WeightedTargets<ClusterId>,
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
}

/// One `listeners[]` entry of a virtual router, with its compiled routes.
#[derive(Debug, Clone)]
pub struct RouterListener {
    pub port: u16,
    pub protocol: Protocol,
    pub routes: RouteTable<RouteAction>,
}

/// A virtual router.
#[derive(Debug, Clone)]
pub struct Router {
    pub name: String,
    pub listeners: Vec<RouterListener>,
}

/// Who provides a virtual service.
#[derive(Debug, Clone)]
pub enum Provider {
    Router(Router),
    /// A virtual node directly: one cluster per listener of that node (may be empty when the
    /// node has no listener, in which case requests fail with 503 "no healthy upstream").
    Node {
        node: String,
        clusters: Vec<ClusterId>,
    },
}

/// A virtual service this node may call (one of its `backends`).
#[derive(Debug, Clone)]
pub struct VirtualService {
    pub name: Arc<str>,
    pub provider: Provider,
}

/// `serviceDiscovery.dns.responseType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResponseType {
    /// Every address is an endpoint. App Mesh's default.
    #[default]
    Endpoints,
    /// Only the first address is used.
    LoadBalancer,
}

/// The mesh's `serviceDiscovery.ipPreference` (or the node's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IpPreference {
    #[default]
    Any,
    Ipv4Only,
    Ipv6Only,
    Ipv4Preferred,
    Ipv6Preferred,
}

/// How a cluster's endpoints are found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// `dns.hostname`, or Cloud Map's `serviceName.namespaceName`.
    Dns {
        hostname: String,
        response_type: ResponseType,
        ip_preference: IpPreference,
    },
    /// The node has no `serviceDiscovery`: it cannot be reached.
    None,
}

/// An upstream cluster: one listener (port) of one target virtual node.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// App Mesh's name, `cds_egress_<mesh>_<node>_<protocol>_<port>`.
    pub name: String,
    pub node: String,
    pub port: u16,
    pub protocol: Protocol,
    pub discovery: Discovery,
    /// The target listener's `connectionPool`. App Mesh applies it only on the target's own
    /// proxy; Outrider's client applies it too when `RuntimeOptions::client_side_limits` is
    /// set (extension, off by default).
    pub connection_pool: ConnectionPool,
    pub health_check: Option<HealthCheck>,
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS origination toward the endpoints, from the client policy of the first backend that
    /// reaches this cluster. Default is none (plaintext).
    pub tls: Option<ClientTls>,
}

/// A PEM certificate chain and its PEM private key, both read from files.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertFiles {
    pub certificate_chain: String,
    pub private_key: String,
}

/// `ListenerTlsMode`, with `DISABLED` compiled away (no [`ListenerTls`] at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerTlsMode {
    /// TLS only.
    Strict,
    /// TLS and plaintext on the same port.
    Permissive,
}

/// A listener's `tls` with a file certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListenerTls {
    pub mode: ListenerTlsMode,
    pub certificate: CertFiles,
    /// `validation.trust.file.certificateChain`: when set, clients must present a certificate
    /// issued by one of these CAs (mTLS). Default is none (no client certificate asked).
    pub client_trust: Option<String>,
    /// `validation.subjectAlternativeNames.match.exact`: the client certificate must carry one
    /// of these SANs. Default is empty (any SAN).
    pub client_sans: Vec<String>,
}

/// A client policy's `tls`, as applied to one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientTls {
    /// The name sent in SNI: the virtual service name of the backend.
    pub server_name: String,
    /// `certificate.file`: the client certificate for mTLS. Default is none.
    pub certificate: Option<CertFiles>,
    /// `validation.trust.file.certificateChain`: the CAs the upstream must chain to.
    pub trust: String,
    /// `validation.subjectAlternativeNames.match.exact`: the upstream certificate must carry
    /// one of these SANs. Default is empty (any SAN the trust vouches for).
    pub sans: Vec<String>,
}

/// One of this node's own listeners (the ingress side).
#[derive(Debug, Clone)]
pub struct NodeListener {
    pub port: u16,
    pub protocol: Protocol,
    pub timeouts: Timeouts,
    pub connection_pool: ConnectionPool,
    /// `cds_ingress_<mesh>_<node>_<protocol>_<port>`.
    pub cluster_name: String,
    /// TLS termination. Default is none (plaintext, or `mode: DISABLED`).
    pub tls: Option<ListenerTls>,
}

/// Access log format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// Envoy's default text format.
    Default,
    Text(String),
    Json(Vec<(String, String)>),
}

/// `logging.accessLog.file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLog {
    pub path: String,
    pub format: AccessLogFormat,
}

/// The compiled view for one node. Immutable once built.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Content hash of the resources this was built from (hex).
    pub hash: String,
    pub mesh: Arc<str>,
    pub identity: Identity,
    pub egress_filter: EgressFilter,
    /// This node's listeners (ingress).
    pub listeners: Vec<NodeListener>,
    /// The virtual services this node may call.
    pub backends: Vec<VirtualService>,
    /// Upstream clusters referenced by [`ClusterId`].
    pub clusters: Vec<Cluster>,
    pub access_log: Option<AccessLog>,
    /// Gateway mode: the virtual gateway's routes, one table per entry of [`Snapshot::listeners`]
    /// (same order). Default is none (a virtual node).
    pub gateway: Option<Gateway>,
}

/// A compiled virtual gateway: its listeners are [`Snapshot::listeners`] (TLS, timeouts), its
/// targets are [`Snapshot::backends`].
#[derive(Debug, Clone)]
pub struct Gateway {
    pub name: String,
    /// Parallel to [`Snapshot::listeners`].
    pub listeners: Vec<GatewayListener>,
}

/// One `listeners[]` entry of a virtual gateway with the gateway routes of its protocol.
#[derive(Debug, Clone)]
pub struct GatewayListener {
    pub port: u16,
    pub protocol: Protocol,
    pub routes: RouteTable<GatewayAction>,
}

/// What a gateway route does: rewrite the request, then send it to a virtual service exactly
/// as a sidecar's egress would.
#[derive(Debug, Clone)]
pub struct GatewayAction {
    /// Index of the target in [`Snapshot::backends`].
    pub service: usize,
    /// `action.target.port`: the provider listener to use. Default is none (the provider's
    /// only, or first, HTTP listener).
    pub port: Option<u16>,
    pub rewrite: GatewayRewrite,
}

/// The rewrites of a gateway route, resolved against its match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRewrite {
    /// `(matched prefix, replacement)`: App Mesh replaces the matched prefix with `/` unless
    /// `defaultPrefix: DISABLED`, or with `value`. Default is none (path kept), which only
    /// happens without a prefix match or with `defaultPrefix: DISABLED`.
    pub prefix: Option<(String, String)>,
    /// `path.exact`: the whole path is replaced (the query string is kept). Default is none.
    pub path: Option<String>,
    /// `hostname.defaultTargetHostname`: true sets the Host (`:authority`) to the target
    /// virtual service's name. Default is true (App Mesh's `ENABLED`).
    pub hostname: bool,
}
