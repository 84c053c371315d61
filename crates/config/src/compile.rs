//! Compilation of validated resources into the [`Snapshot`] of one virtual node (or, in
//! [`gateway`], one virtual gateway).

#[path = "gateway.rs"]
mod gateway;

use std::collections::HashMap;
use std::sync::Arc;

use outrider_route::{
    CookieMatch, GrpcMatch, HeaderMatch, HostMatch, HttpMatch, PathMatch, QueryMatch, Route,
    RouteMatch, RouteTable, StringMatch, TcpMatch, WeightedTargets,
};

use crate::load::{Kind, Resource, Resources, Spec};
use crate::model::{
    self, AccessLogSpec, ConnectionPoolSpec, DnsResponseType, EgressFilterType, HeaderMatchSpec,
    HostnameMatch, HttpTimeout, IpPreferenceSpec, ListenerTimeout, LoggingFormat, RetryPolicySpec,
    ServiceDiscovery, VirtualNodeSpec, VirtualServiceProvider,
};
use crate::validate::{protocol, to_duration};
use crate::{
    AccessLog, AccessLogFormat, CertFiles, ClientTls, Cluster, ClusterId, ConnectionPool,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_PER_REQUEST_TIMEOUT, Discovery, EgressFilter, HealthCheck,
    Identity, IpPreference, ListenerTls, ListenerTlsMode, NodeListener, OutlierDetection, Problem,
    Protocol, Provider, ResponseType, RetryPolicy, RouteAction, Router, RouterListener, Snapshot,
    Timeouts, VirtualService, grpc_retry, http_retry,
};

/// The environment variable App Mesh's Envoy image reads its identity from.
pub const RESOURCE_ARN_ENV: &str = "APPMESH_RESOURCE_ARN";

/// Which resource this proxy is: `--mesh`, `--node`, `--gateway`, or an ARN.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// The mesh. Default is the only mesh the files hold.
    pub mesh: Option<String>,
    /// The virtual node this proxy serves.
    pub node: Option<String>,
    /// The virtual gateway this proxy serves. Default is none; when set, `node` is ignored.
    pub gateway: Option<String>,
}

impl Selector {
    /// A selector for the virtual node `node`, in the only mesh the files hold.
    pub fn node(node: impl Into<String>) -> Selector {
        Selector {
            node: Some(node.into()),
            ..Selector::default()
        }
    }

    /// Parses `arn:aws:appmesh:REGION:ACCOUNT:mesh/MESH/virtualNode/NAME` (or
    /// `.../virtualGateway/NAME`), as in `APPMESH_RESOURCE_ARN`.
    pub fn from_arn(arn: &str) -> Result<Selector, Problem> {
        let bad = |why: &str| {
            Problem::error(
                "-",
                "-",
                "-",
                RESOURCE_ARN_ENV,
                format!(
                    "\"{arn}\" is not an App Mesh resource ARN ({why}); expected \
                     arn:aws:appmesh:REGION:ACCOUNT:mesh/MESH/virtualNode/NAME"
                ),
            )
        };
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        let [prefix, _partition, service, _region, _account, resource] = parts.as_slice() else {
            return Err(bad("it does not have six `:`-separated parts"));
        };
        if *prefix != "arn" || *service != "appmesh" {
            return Err(bad("it does not start with arn:PARTITION:appmesh"));
        }
        let segments: Vec<&str> = resource.split('/').collect();
        let [mesh_key, mesh, kind, name] = segments.as_slice() else {
            return Err(bad("the resource is not mesh/MESH/KIND/NAME"));
        };
        if *mesh_key != "mesh" || mesh.is_empty() || name.is_empty() {
            return Err(bad("the resource is not mesh/MESH/KIND/NAME"));
        }
        let mut sel = Selector {
            mesh: Some((*mesh).to_owned()),
            ..Selector::default()
        };
        match *kind {
            "virtualNode" => sel.node = Some((*name).to_owned()),
            "virtualGateway" => sel.gateway = Some((*name).to_owned()),
            _ => return Err(bad("the kind is neither virtualNode nor virtualGateway")),
        }
        Ok(sel)
    }
}

/// Builds the snapshot of the selected node. Assumes [`crate::validate`] found no error; any
/// inconsistency met anyway is returned as problems rather than panicking.
pub fn compile(res: &Resources, sel: &Selector) -> Result<Snapshot, Vec<Problem>> {
    let selector_problem =
        |path: &str, reason: String| vec![Problem::error("-", "-", "-", path, reason)];
    if sel.node.is_none() && sel.gateway.is_none() {
        return Err(selector_problem(
            "--node",
            format!("no virtual node selected: pass --node NAME or set {RESOURCE_ARN_ENV}"),
        ));
    }
    let meshes = res.mesh_names();
    let mesh: &str = match (&sel.mesh, meshes.as_slice()) {
        (Some(m), _) => m,
        (None, [one]) => one,
        // No meshName anywhere: the files describe one unnamed mesh.
        (None, []) => "",
        (None, many) => {
            return Err(selector_problem(
                "--mesh",
                format!(
                    "the files hold several meshes ({}): pick one with --mesh",
                    many.join(", ")
                ),
            ));
        }
    };
    let mut c = Compiler {
        res,
        mesh,
        single: meshes.len() <= 1,
        clusters: Vec::new(),
        interned: HashMap::new(),
        problems: Vec::new(),
    };
    let mesh_spec = c.find(Kind::Mesh, None, mesh).and_then(|r| match &r.spec {
        Spec::Mesh(m) => Some(m.clone()),
        _ => None,
    });
    let egress_filter = match mesh_spec.as_ref().and_then(|m| m.egress_filter) {
        Some(f) if f.type_ == EgressFilterType::AllowAll => EgressFilter::AllowAll,
        _ => EgressFilter::DropAll,
    };
    let node_name = match (sel.gateway.as_deref(), sel.node.as_deref()) {
        (Some(gw), _) => return gateway::compile(c, gw, egress_filter),
        (None, Some(n)) => n,
        (None, None) => {
            return Err(selector_problem(
                "--node",
                "no virtual node selected".into(),
            ));
        }
    };
    let Some(node) = c.find(Kind::VirtualNode, None, node_name) else {
        let known: Vec<&str> = c
            .in_mesh(Kind::VirtualNode)
            .map(|r| r.name.as_str())
            .collect();
        return Err(selector_problem(
            "--node",
            format!(
                "virtual node \"{node_name}\" is not in mesh \"{mesh}\" (known: {})",
                known.join(", ")
            ),
        ));
    };
    let Spec::VirtualNode(spec) = &node.spec else {
        return Err(selector_problem(
            "--node",
            "internal: a virtual node without a node spec".to_owned(),
        ));
    };
    let listeners = spec
        .listeners
        .iter()
        .map(|l| c.node_listener(node_name, l))
        .collect();
    let mut backends = Vec::new();
    let default_policy = spec
        .backend_defaults
        .as_ref()
        .and_then(|d| d.client_policy.as_ref());
    for b in &spec.backends {
        let model::Backend::VirtualService(vs) = b;
        let first_new = c.clusters.len();
        if let Some(svc) = c.backend(node, &vs.virtual_service_name) {
            backends.push(svc);
        }
        // A cluster shared by several backends keeps the policy of the first that reached it.
        let policy = vs.client_policy.as_ref().or(default_policy);
        if let Some(tls) = policy.and_then(|p| p.tls.as_ref()) {
            for cluster in &mut c.clusters[first_new..] {
                cluster.tls = client_tls(tls, &vs.virtual_service_name, cluster.port);
            }
        }
    }
    let access_log = access_log(spec.logging.as_ref());
    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    Ok(Snapshot {
        hash: res.digest(),
        mesh: Arc::from(mesh),
        identity: Identity::VirtualNode(node_name.to_owned()),
        egress_filter,
        listeners,
        backends,
        clusters: c.clusters,
        access_log,
        gateway: None,
    })
}

struct Compiler<'a> {
    res: &'a Resources,
    mesh: &'a str,
    /// True when resources without `meshName` belong to `mesh`.
    single: bool,
    clusters: Vec<Cluster>,
    interned: HashMap<(String, u16), ClusterId>,
    problems: Vec<Problem>,
}

impl<'a> Compiler<'a> {
    fn in_mesh(&self, kind: Kind) -> impl Iterator<Item = &'a Resource> + use<'a> {
        let (mesh, single) = (self.mesh, self.single);
        self.res
            .of_kind(kind)
            .filter(move |r| match (&r.mesh, kind) {
                (_, Kind::Mesh) => true,
                (Some(m), _) => m == mesh,
                (None, _) => single,
            })
    }

    fn find(&self, kind: Kind, parent: Option<&str>, name: &str) -> Option<&'a Resource> {
        self.in_mesh(kind)
            .find(|r| r.name == name && r.parent.as_deref() == parent)
    }

    fn node_listener(&self, node: &str, l: &model::Listener) -> NodeListener {
        let proto = protocol(l.port_mapping.protocol);
        let port = port(l.port_mapping.port);
        let timeouts = match (&l.timeout, proto) {
            (Some(ListenerTimeout::Tcp(t)), Protocol::Tcp) => tcp_timeouts(t.idle.as_ref()),
            (None, Protocol::Tcp) => tcp_timeouts(None),
            (
                Some(
                    ListenerTimeout::Http(t) | ListenerTimeout::Http2(t) | ListenerTimeout::Grpc(t),
                ),
                _,
            ) => http_timeouts(Some(t)),
            _ => http_timeouts(None),
        };
        let connection_pool = connection_pool(l.connection_pool);
        NodeListener {
            port,
            protocol: proto,
            timeouts,
            connection_pool,
            cluster_name: format!("cds_ingress_{}_{node}_{}_{port}", self.mesh, proto.as_str()),
            tls: l.tls.as_ref().and_then(listener_tls),
        }
    }

    fn backend(&mut self, from: &Resource, service: &str) -> Option<VirtualService> {
        let Some(vs) = self.find(Kind::VirtualService, None, service) else {
            self.problems.push(from.error(
                "spec.backends",
                format!("virtual service \"{service}\" does not exist"),
            ));
            return None;
        };
        let Spec::VirtualService(spec) = &vs.spec else {
            return None;
        };
        let provider = match &spec.provider {
            None => Provider::Node {
                node: String::new(),
                clusters: Vec::new(),
            },
            Some(VirtualServiceProvider::VirtualNode(p)) => {
                let name = &p.virtual_node_name;
                let ports: Vec<u16> =
                    match self.find(Kind::VirtualNode, None, name).map(|r| &r.spec) {
                        Some(Spec::VirtualNode(n)) => n
                            .listeners
                            .iter()
                            .map(|l| port(l.port_mapping.port))
                            .collect(),
                        _ => {
                            self.problems.push(vs.error(
                                "spec.provider.virtualNode.virtualNodeName",
                                format!("virtual node \"{name}\" does not exist"),
                            ));
                            return None;
                        }
                    };
                let clusters = ports
                    .into_iter()
                    .filter_map(|p| self.cluster(vs, name, Some(p)))
                    .collect();
                Provider::Node {
                    node: name.clone(),
                    clusters,
                }
            }
            Some(VirtualServiceProvider::VirtualRouter(p)) => {
                Provider::Router(self.router(vs, &p.virtual_router_name)?)
            }
        };
        Some(VirtualService {
            name: Arc::from(service),
            provider,
        })
    }

    fn router(&mut self, vs: &Resource, name: &str) -> Option<Router> {
        let Some(Spec::VirtualRouter(spec)) =
            self.find(Kind::VirtualRouter, None, name).map(|r| &r.spec)
        else {
            self.problems.push(vs.error(
                "spec.provider.virtualRouter.virtualRouterName",
                format!("virtual router \"{name}\" does not exist"),
            ));
            return None;
        };
        let routes: Vec<&'a Resource> = self
            .in_mesh(Kind::Route)
            .filter(|r| r.parent.as_deref() == Some(name))
            .collect();
        let mut listeners = Vec::new();
        for l in &spec.listeners {
            let lport = port(l.port_mapping.port);
            let lproto = protocol(l.port_mapping.protocol);
            let mut table = Vec::new();
            for r in &routes {
                if let Some(route) = self.route(r, lport, lproto) {
                    table.push(route);
                }
            }
            listeners.push(RouterListener {
                port: lport,
                protocol: lproto,
                routes: RouteTable::new(table),
            });
        }
        Some(Router {
            name: name.to_owned(),
            listeners,
        })
    }

    /// The route compiled for one router listener, or `None` when it belongs to another.
    fn route(&mut self, r: &Resource, lport: u16, lproto: Protocol) -> Option<Route<RouteAction>> {
        let Spec::Route(spec) = &r.spec else {
            return None;
        };
        let (proto, mport, action, matcher, timeouts, retry) =
            if let Some(h) = spec.http_route.as_ref() {
                (
                    Protocol::Http,
                    h.match_.port,
                    &h.action,
                    None,
                    http_timeouts(h.timeout.as_ref()),
                    retry(h.retry_policy.as_ref()),
                )
            } else if let Some(h) = spec.http2_route.as_ref() {
                (
                    Protocol::Http2,
                    h.match_.port,
                    &h.action,
                    None,
                    http_timeouts(h.timeout.as_ref()),
                    retry(h.retry_policy.as_ref()),
                )
            } else if let Some(g) = spec.grpc_route.as_ref() {
                (
                    Protocol::Grpc,
                    g.match_.port,
                    &g.action,
                    None,
                    http_timeouts(g.timeout.as_ref()),
                    retry(g.retry_policy.as_ref()),
                )
            } else if let Some(t) = spec.tcp_route.as_ref() {
                let mport = t.match_.as_ref().and_then(|m| m.port);
                let timeouts = tcp_timeouts(t.timeout.as_ref().and_then(|t| t.idle.as_ref()));
                (
                    Protocol::Tcp,
                    mport,
                    &t.action,
                    Some(RouteMatch::Tcp(TcpMatch {
                        port: mport.map(port),
                    })),
                    timeouts,
                    RetryPolicy::IMPLICIT,
                )
            } else {
                return None;
            };
        if proto != lproto || mport.is_some_and(|p| port(p) != lport) {
            return None;
        }
        let matcher = match matcher {
            Some(m) => m,
            None => match self.route_match(r, spec) {
                Ok(m) => m,
                Err(p) => {
                    self.problems.push(p);
                    return None;
                }
            },
        };
        let mut targets = Vec::with_capacity(action.weighted_targets.len());
        for t in &action.weighted_targets {
            let id = self.cluster(r, &t.virtual_node, t.port.map(port))?;
            targets.push((id, u32::try_from(t.weight).unwrap_or(0)));
        }
        let priority = spec.priority.and_then(|p| u16::try_from(p).ok());
        let action = RouteAction {
            targets: WeightedTargets::new(targets),
            timeouts,
            retry,
        };
        Some(Route {
            name: Arc::from(r.name.as_str()),
            priority,
            matcher,
            action,
        })
    }

    fn route_match(&self, r: &Resource, spec: &model::RouteSpec) -> Result<RouteMatch, Problem> {
        if let Some((base, h)) = spec
            .http_route
            .as_ref()
            .map(|h| ("spec.httpRoute.match", h))
            .or(spec
                .http2_route
                .as_ref()
                .map(|h| ("spec.http2Route.match", h)))
        {
            let m = &h.match_;
            let path = path_match(r, base, m.prefix.as_deref(), m.path.as_ref())?;
            let method = http_method(r, base, m.method)?;
            return Ok(RouteMatch::Http(HttpMatch {
                path,
                method,
                scheme: m.scheme.map(|s| match s {
                    model::HttpScheme::Http => "http".to_owned(),
                    model::HttpScheme::Https => "https".to_owned(),
                }),
                headers: headers(r, &format!("{base}.headers"), &m.headers)?,
                query: query_matches(&m.query_parameters),
                port: m.port.map(port),
                hostname: m.hostname.as_ref().and_then(host_match),
                cookies: cookies(r, &format!("{base}.cookies"), &m.cookies)?,
            }));
        }
        if let Some(g) = &spec.grpc_route {
            let m = &g.match_;
            return Ok(RouteMatch::Grpc(GrpcMatch {
                service_name: m.service_name.clone(),
                method_name: m.method_name.clone(),
                metadata: headers(r, "spec.grpcRoute.match.metadata", &m.metadata)?,
                port: m.port.map(port),
                hostname: m.hostname.as_ref().and_then(host_match),
                cookies: cookies(r, "spec.grpcRoute.match.cookies", &m.cookies)?,
            }));
        }
        Err(r.error("spec", "no route kind"))
    }

    /// The cluster for `(node, port)`, created on first use. `port: None` means the node's
    /// only listener.
    fn cluster(&mut self, from: &Resource, node: &str, want: Option<u16>) -> Option<ClusterId> {
        let Some(Spec::VirtualNode(spec)) =
            self.find(Kind::VirtualNode, None, node).map(|r| &r.spec)
        else {
            self.problems
                .push(from.error("spec", format!("virtual node \"{node}\" does not exist")));
            return None;
        };
        let listener = match want {
            Some(p) => spec
                .listeners
                .iter()
                .find(|l| port(l.port_mapping.port) == p),
            None if spec.listeners.len() == 1 => spec.listeners.first(),
            None => None,
        };
        let Some(listener) = listener else {
            let reason = match want {
                Some(p) => format!("virtual node \"{node}\" has no listener on port {p}"),
                None => {
                    format!("virtual node \"{node}\" needs exactly one listener, or a target port")
                }
            };
            self.problems.push(from.error("spec", reason));
            return None;
        };
        let lport = port(listener.port_mapping.port);
        if let Some(id) = self.interned.get(&(node.to_owned(), lport)) {
            return Some(*id);
        }
        let proto = protocol(listener.port_mapping.protocol);
        let id = ClusterId(self.clusters.len());
        let cluster = Cluster {
            name: format!("cds_egress_{}_{node}_{}_{lport}", self.mesh, proto.as_str()),
            node: node.to_owned(),
            port: lport,
            protocol: proto,
            discovery: self.discovery(spec),
            connection_pool: connection_pool(listener.connection_pool),
            health_check: listener.health_check.as_ref().map(|hc| HealthCheck {
                protocol: protocol(hc.protocol),
                port: hc.port.map(port),
                path: hc.path.clone(),
                interval: millis(hc.interval_millis),
                timeout: millis(hc.timeout_millis),
                healthy_threshold: count(hc.healthy_threshold),
                unhealthy_threshold: count(hc.unhealthy_threshold),
            }),
            outlier_detection: listener
                .outlier_detection
                .as_ref()
                .map(|od| OutlierDetection {
                    max_server_errors: count(od.max_server_errors),
                    interval: to_duration(&od.interval).unwrap_or_default(),
                    base_ejection_duration: to_duration(&od.base_ejection_duration)
                        .unwrap_or_default(),
                    max_ejection_percent: u32::try_from(od.max_ejection_percent).unwrap_or(0),
                }),
            tls: None,
        };
        self.clusters.push(cluster);
        self.interned.insert((node.to_owned(), lport), id);
        Some(id)
    }

    fn discovery(&self, spec: &VirtualNodeSpec) -> Discovery {
        let mesh_pref = self
            .find(Kind::Mesh, None, self.mesh)
            .and_then(|r| match &r.spec {
                Spec::Mesh(m) => m.service_discovery.and_then(|sd| sd.ip_preference),
                _ => None,
            });
        match &spec.service_discovery {
            Some(ServiceDiscovery::Dns(d)) => Discovery::Dns {
                hostname: d.hostname.clone(),
                response_type: match d.response_type {
                    Some(DnsResponseType::Loadbalancer) => ResponseType::LoadBalancer,
                    _ => ResponseType::Endpoints,
                },
                ip_preference: ip_preference(d.ip_preference.or(mesh_pref)),
            },
            Some(ServiceDiscovery::AwsCloudMap(c)) => Discovery::Dns {
                hostname: format!("{}.{}", c.service_name, c.namespace_name),
                response_type: ResponseType::Endpoints,
                ip_preference: ip_preference(c.ip_preference.or(mesh_pref)),
            },
            None => Discovery::None,
        }
    }
}

/// A port already range-checked by validation; out-of-range values become 0 (never matched).
/// A listener's TLS when it can be served offline: `DISABLED`, ACM and SDS certificates give
/// none (validation warns about the last two).
fn listener_tls(tls: &model::ListenerTls) -> Option<ListenerTls> {
    let mode = match tls.mode {
        model::TlsMode::Strict => ListenerTlsMode::Strict,
        model::TlsMode::Permissive => ListenerTlsMode::Permissive,
        model::TlsMode::Disabled => return None,
    };
    let model::ListenerTlsCertificate::File(cert) = &tls.certificate else {
        return None;
    };
    let validation = tls.validation.as_ref();
    let client_trust = validation.and_then(|v| match &v.trust {
        model::ListenerTlsTrust::File(f) => Some(f.certificate_chain.clone()),
        model::ListenerTlsTrust::Sds(_) => None,
    });
    Some(ListenerTls {
        mode,
        certificate: cert_files(cert),
        client_trust,
        client_sans: validation
            .and_then(|v| v.subject_alternative_names.as_ref())
            .map(|s| s.match_.exact.clone())
            .unwrap_or_default(),
    })
}

/// A client policy's TLS for one cluster port: none when `enforce` is false, when `ports` is
/// set and leaves this port out, or when the trust is not a file (ACM and SDS, warned).
fn client_tls(tls: &model::ClientPolicyTls, service: &str, port: u16) -> Option<ClientTls> {
    if !tls.enforce.unwrap_or(true) {
        return None;
    }
    if !tls.ports.is_empty() && !tls.ports.iter().any(|p| i64::from(port) == *p) {
        return None;
    }
    let model::TlsTrust::File(trust) = &tls.validation.trust else {
        return None;
    };
    Some(ClientTls {
        server_name: service.to_owned(),
        certificate: match &tls.certificate {
            Some(model::ClientTlsCertificate::File(f)) => Some(cert_files(f)),
            _ => None,
        },
        trust: trust.certificate_chain.clone(),
        sans: tls
            .validation
            .subject_alternative_names
            .as_ref()
            .map(|s| s.match_.exact.clone())
            .unwrap_or_default(),
    })
}

fn cert_files(f: &model::TlsFileCertificate) -> CertFiles {
    CertFiles {
        certificate_chain: f.certificate_chain.clone(),
        private_key: f.private_key.clone(),
    }
}

fn port(p: i64) -> u16 {
    u16::try_from(p).unwrap_or(0)
}

/// A count already checked to be >= 1 by validation, saturating at `u32::MAX`.
fn count(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

fn millis(ms: i64) -> std::time::Duration {
    std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// A configured timeout: absent → `default`, `0` → disabled (`None`).
fn timeout(
    d: Option<&model::Duration>,
    default: std::time::Duration,
) -> Option<std::time::Duration> {
    match d {
        None => Some(default),
        Some(d) => to_duration(d).filter(|t| !t.is_zero()),
    }
}

fn http_timeouts(t: Option<&HttpTimeout>) -> Timeouts {
    Timeouts {
        per_request: timeout(
            t.and_then(|t| t.per_request.as_ref()),
            DEFAULT_PER_REQUEST_TIMEOUT,
        ),
        idle: timeout(t.and_then(|t| t.idle.as_ref()), DEFAULT_IDLE_TIMEOUT),
    }
}

/// TCP has no per-request timeout, only idle.
fn tcp_timeouts(idle: Option<&model::Duration>) -> Timeouts {
    Timeouts {
        per_request: None,
        idle: timeout(idle, DEFAULT_IDLE_TIMEOUT),
    }
}

fn retry(spec: Option<&RetryPolicySpec>) -> RetryPolicy {
    let Some(spec) = spec else {
        return RetryPolicy::IMPLICIT;
    };
    let http_events = spec.http_retry_events.iter().fold(0, |acc, e| {
        acc | match e {
            model::HttpRetryEvent::ServerError => http_retry::SERVER_ERROR,
            model::HttpRetryEvent::GatewayError => http_retry::GATEWAY_ERROR,
            model::HttpRetryEvent::ClientError => http_retry::CLIENT_ERROR,
            model::HttpRetryEvent::StreamError => http_retry::STREAM_ERROR,
        }
    });
    let grpc_events = spec.grpc_retry_events.iter().fold(0, |acc, e| {
        acc | match e {
            model::GrpcRetryEvent::Cancelled => grpc_retry::CANCELLED,
            model::GrpcRetryEvent::DeadlineExceeded => grpc_retry::DEADLINE_EXCEEDED,
            model::GrpcRetryEvent::Internal => grpc_retry::INTERNAL,
            model::GrpcRetryEvent::ResourceExhausted => grpc_retry::RESOURCE_EXHAUSTED,
            model::GrpcRetryEvent::Unavailable => grpc_retry::UNAVAILABLE,
        }
    });
    RetryPolicy {
        max_retries: count(spec.max_retries.unwrap_or(0)),
        per_retry_timeout: spec
            .per_retry_timeout
            .as_ref()
            .and_then(to_duration)
            .filter(|d| !d.is_zero()),
        http_events,
        grpc_events,
        connection_error: !spec.tcp_retry_events.is_empty(),
        implicit: false,
    }
}

fn method_name(m: model::HttpMethod) -> &'static str {
    match m {
        model::HttpMethod::Get => "GET",
        model::HttpMethod::Head => "HEAD",
        model::HttpMethod::Post => "POST",
        model::HttpMethod::Put => "PUT",
        model::HttpMethod::Delete => "DELETE",
        model::HttpMethod::Connect => "CONNECT",
        model::HttpMethod::Options => "OPTIONS",
        model::HttpMethod::Trace => "TRACE",
        model::HttpMethod::Patch => "PATCH",
    }
}

fn ip_preference(p: Option<IpPreferenceSpec>) -> IpPreference {
    match p {
        None => IpPreference::Any,
        Some(IpPreferenceSpec::Ipv4Only) => IpPreference::Ipv4Only,
        Some(IpPreferenceSpec::Ipv6Only) => IpPreference::Ipv6Only,
        Some(IpPreferenceSpec::Ipv4Preferred) => IpPreference::Ipv4Preferred,
        Some(IpPreferenceSpec::Ipv6Preferred) => IpPreference::Ipv6Preferred,
    }
}

/// Compiles a pattern anchored at both ends, so alternations match whole values.
fn regex(r: &Resource, path: &str, pattern: &str) -> Result<regex::Regex, Problem> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| r.error(path, format!("invalid regex: {e}")))
}

fn string_match(
    r: &Resource,
    path: &str,
    m: &model::HeaderMatchMethod,
) -> Result<StringMatch, Problem> {
    Ok(match m {
        model::HeaderMatchMethod::Exact(s) => StringMatch::Exact(s.clone()),
        model::HeaderMatchMethod::Prefix(s) => StringMatch::Prefix(s.clone()),
        model::HeaderMatchMethod::Suffix(s) => StringMatch::Suffix(s.clone()),
        model::HeaderMatchMethod::Regex(s) => {
            StringMatch::Regex(regex(r, &format!("{path}.regex"), s)?)
        }
        model::HeaderMatchMethod::Range(range) => StringMatch::Range {
            start: range.start,
            end: range.end,
        },
    })
}

fn headers(
    r: &Resource,
    path: &str,
    specs: &[HeaderMatchSpec],
) -> Result<Vec<HeaderMatch>, Problem> {
    specs
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let p = format!("{path}[{i}]");
            let name = http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
                .map_err(|_| {
                    r.error(
                        format!("{p}.name"),
                        format!("\"{}\" is not a valid header name", h.name),
                    )
                })?;
            let matcher = h
                .match_
                .as_ref()
                .map(|m| string_match(r, &format!("{p}.match"), m))
                .transpose()?;
            Ok(HeaderMatch {
                name,
                matcher,
                invert: h.invert.unwrap_or(false),
            })
        })
        .collect()
}

fn cookies(
    r: &Resource,
    path: &str,
    specs: &[HeaderMatchSpec],
) -> Result<Vec<CookieMatch>, Problem> {
    specs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let matcher = c
                .match_
                .as_ref()
                .map(|m| string_match(r, &format!("{path}[{i}].match"), m))
                .transpose()?;
            Ok(CookieMatch {
                name: c.name.clone(),
                matcher,
                invert: c.invert.unwrap_or(false),
            })
        })
        .collect()
}

fn host_match(h: &HostnameMatch) -> Option<HostMatch> {
    match (&h.exact, &h.suffix) {
        (Some(e), _) => Some(HostMatch::Exact(e.to_ascii_lowercase())),
        (None, Some(s)) => Some(HostMatch::Suffix(s.to_ascii_lowercase())),
        (None, None) => None,
    }
}

fn access_log(logging: Option<&model::Logging>) -> Option<AccessLog> {
    let AccessLogSpec::File(f) = logging?.access_log.as_ref()?;
    let format = match &f.format {
        None => AccessLogFormat::Default,
        Some(LoggingFormat::Text(t)) => AccessLogFormat::Text(t.clone()),
        Some(LoggingFormat::Json(kv)) => AccessLogFormat::Json(
            kv.iter()
                .map(|p| (p.key.clone(), p.value.clone()))
                .collect(),
        ),
    };
    Some(AccessLog {
        path: f.path.clone(),
        format,
    })
}

/// A listener's `connectionPool`, by protocol.
fn connection_pool(spec: Option<ConnectionPoolSpec>) -> ConnectionPool {
    match spec {
        Some(ConnectionPoolSpec::Http(h)) => ConnectionPool {
            max_connections: Some(count(h.max_connections)),
            max_pending_requests: h.max_pending_requests.map(count),
            max_requests: None,
        },
        Some(ConnectionPoolSpec::Http2(h) | ConnectionPoolSpec::Grpc(h)) => ConnectionPool {
            max_requests: Some(count(h.max_requests)),
            ..ConnectionPool::default()
        },
        Some(ConnectionPoolSpec::Tcp(t)) => ConnectionPool {
            max_connections: Some(count(t.max_connections)),
            ..ConnectionPool::default()
        },
        None => ConnectionPool::default(),
    }
}

/// A route's `prefix` or `path` (`exact` | `regex`, anchored) as a matcher; shared by mesh
/// routes and gateway routes.
fn path_match(
    r: &Resource,
    base: &str,
    prefix: Option<&str>,
    path: Option<&model::HttpPathMatch>,
) -> Result<Option<PathMatch>, Problem> {
    Ok(match (prefix, path) {
        (Some(p), _) => Some(PathMatch::Prefix(p.to_owned())),
        (None, Some(p)) => match (&p.exact, &p.regex) {
            (Some(e), _) => Some(PathMatch::Exact(e.clone())),
            (None, Some(re)) => Some(PathMatch::Regex(regex(
                r,
                &format!("{base}.path.regex"),
                re,
            )?)),
            (None, None) => None,
        },
        (None, None) => None,
    })
}

/// A route's `queryParameters`; shared by mesh routes and gateway routes.
fn query_matches(params: &[model::HttpQueryParameter]) -> Vec<QueryMatch> {
    params
        .iter()
        .map(|q| QueryMatch {
            name: q.name.clone(),
            exact: q.match_.as_ref().and_then(|x| x.exact.clone()),
        })
        .collect()
}

/// A route's `method` as an `http::Method`; shared by mesh routes and gateway routes.
fn http_method(
    r: &Resource,
    base: &str,
    method: Option<model::HttpMethod>,
) -> Result<Option<http::Method>, Problem> {
    method
        .map(|m| {
            http::Method::from_bytes(method_name(m).as_bytes())
                .map_err(|e| r.error(format!("{base}.method"), e.to_string()))
        })
        .transpose()
}
