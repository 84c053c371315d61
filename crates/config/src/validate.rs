//! Validation of loaded resources: every problem at once, each with file, kind, name, field path
//! and reason. Warnings name the fields App Mesh accepts that Outrider does not honour yet.

use std::collections::HashMap;

use crate::Problem;
use crate::load::{Kind, Resource, Resources, Spec};
use crate::model::{
    ClientPolicy, ClientTlsCertificate, ConnectionPoolSpec, Duration, DurationUnit,
    HeaderMatchMethod, HeaderMatchSpec, HealthCheckPolicy, HostnameMatch, HttpPathMatch,
    HttpQueryParameter, ListenerTimeout, ListenerTls, ListenerTlsCertificate, ListenerTlsTrust,
    PortMapping, PortProtocol, RetryPolicySpec, RouteActionSpec, ServiceDiscovery, TlsMode,
    TlsTrust, VirtualNodeSpec, VirtualServiceProvider,
};

/// Fields App Mesh accepts that Outrider does not honour yet, and the documented extensions:
/// (path pattern, message). `[]` stands for any index. Remove a row when its feature lands and
/// the warning disappears everywhere.
pub const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "spec.listeners[].tls",
        "listener TLS needs a file certificate offline; this listener serves plaintext",
    ),
    (
        "spec.listeners[].tls.certificate.acm",
        "ACM certificates cannot be read offline; use certificate.file offline",
    ),
    (
        "spec.listeners[].tls.certificate.sds",
        "SDS certificates are not supported; use certificate.file offline",
    ),
    (
        "spec.listeners[].tls.validation.trust.sds",
        "SDS trust is not supported; client certificates are not asked for",
    ),
    (
        "spec.backendDefaults.clientPolicy",
        "a client policy without tls has no effect",
    ),
    (
        "spec.backends[].virtualService.clientPolicy",
        "a client policy without tls has no effect",
    ),
    (
        "clientPolicy.tls.validation.trust",
        "only validation.trust.file can be read offline; this client policy is ignored and traffic is plaintext",
    ),
    (
        "clientPolicy.tls.certificate.sds",
        "SDS client certificates are not supported; no client certificate is sent",
    ),
    ("spec.logging.accessLog", "access logs are not written yet"),
    (
        "spec.serviceDiscovery.awsCloudMap.attributes",
        "Cloud Map attributes are ignored: every instance of serviceName.namespaceName is an endpoint",
    ),
    (
        "gateway.listeners[].connectionPool",
        "a virtual gateway listener's connectionPool is not enforced yet",
    ),
    (
        "gateway.listeners[].healthCheck",
        "a virtual gateway listener's healthCheck has no effect: no proxy health-checks a gateway",
    ),
    (
        "match.hostname",
        "extension (not App Mesh): the route matches the request's host; App Mesh would refuse this field",
    ),
    (
        "match.cookies",
        "extension (not App Mesh): the route matches cookies; App Mesh would refuse this field",
    ),
];

/// Most weighted targets in one route.
pub const MAX_WEIGHTED_TARGETS: usize = 10;
/// Most header (or metadata, or cookie) matches in one route.
pub const MAX_HEADER_MATCHES: usize = 10;
/// Most query parameter matches in one route.
pub const MAX_QUERY_PARAMETERS: usize = 10;
/// Longest path, prefix or regex in a match.
pub const MAX_PATH_LEN: usize = 255;
/// Largest weight of one target.
pub const MAX_WEIGHT: i64 = 100;
/// Largest route priority (0 is evaluated first).
pub const MAX_PRIORITY: i64 = 1000;
/// Health check interval bounds, in milliseconds.
pub const HEALTH_INTERVAL_MS: (i64, i64) = (5_000, 300_000);
/// Health check timeout bounds, in milliseconds.
pub const HEALTH_TIMEOUT_MS: (i64, i64) = (2_000, 60_000);
/// Healthy and unhealthy threshold bounds.
pub const HEALTH_THRESHOLD: (i64, i64) = (2, 10);

/// Lookup of resources by (kind, mesh, parent, name).
type Index<'a> = HashMap<(Kind, &'a str, &'a str, &'a str), &'a Resource>;

struct Ctx<'a> {
    index: Index<'a>,
    default_mesh: Option<&'a str>,
    out: Vec<Problem>,
}

/// Checks every resource and returns every problem found (errors and warnings), in the order
/// found: resources in load order, fields in spec order.
pub fn validate(res: &Resources) -> Vec<Problem> {
    let several = res.mesh_names().len() > 1;
    let mut ctx = Ctx {
        index: HashMap::new(),
        default_mesh: res.single_mesh(),
        out: Vec::new(),
    };
    let mut first: HashMap<(Kind, &str, &str, &str), &Resource> = HashMap::new();
    for r in &res.items {
        if r.mesh.is_none() && several && r.kind() != Kind::Mesh {
            ctx.out.push(r.error(
                "meshName",
                "meshName is required when the files hold several meshes",
            ));
            continue;
        }
        let key = (
            r.kind(),
            ctx.mesh_of(r),
            r.parent.as_deref().unwrap_or(""),
            r.name.as_str(),
        );
        if let Some(prev) = first.get(&key) {
            ctx.out.push(r.error(
                r.kind().name_key(),
                format!(
                    "duplicate {} \"{}\" (first defined in {})",
                    r.kind(),
                    r.name,
                    prev.file
                ),
            ));
            continue;
        }
        first.insert(key, r);
    }
    ctx.index = first;
    for r in &res.items {
        if r.mesh.is_none() && several && r.kind() != Kind::Mesh {
            continue;
        }
        match &r.spec {
            Spec::Mesh(_) => {}
            Spec::VirtualService(s) => ctx.service(r, s.provider.as_ref()),
            Spec::VirtualNode(s) => ctx.node(r, s),
            Spec::VirtualRouter(s) => {
                if s.listeners.is_empty() {
                    ctx.out.push(r.error(
                        "spec.listeners",
                        "a virtual router needs at least one listener",
                    ));
                }
                for (i, l) in s.listeners.iter().enumerate() {
                    ctx.port_mapping(
                        r,
                        &format!("spec.listeners[{i}].portMapping"),
                        &l.port_mapping,
                    );
                }
            }
            Spec::Route(s) => ctx.route(r, s),
            Spec::VirtualGateway(s) => {
                if s.listeners.is_empty() {
                    ctx.out.push(r.error(
                        "spec.listeners",
                        "a virtual gateway needs at least one listener",
                    ));
                }
                for (i, l) in s.listeners.iter().enumerate() {
                    let p = format!("spec.listeners[{i}]");
                    ctx.port_mapping(r, &format!("{p}.portMapping"), &l.port_mapping);
                    if l.port_mapping.protocol == PortProtocol::Tcp {
                        ctx.out.push(r.error(
                            format!("{p}.portMapping.protocol"),
                            "a virtual gateway listener speaks http, http2 or grpc, not tcp",
                        ));
                    }
                    if let Some(hc) = &l.health_check {
                        ctx.warn(
                            r,
                            "gateway.listeners[].healthCheck",
                            &format!("{p}.healthCheck"),
                        );
                        ctx.health_check(r, &format!("{p}.healthCheck"), hc);
                    }
                    if l.connection_pool.is_some() {
                        ctx.warn(
                            r,
                            "gateway.listeners[].connectionPool",
                            &format!("{p}.connectionPool"),
                        );
                    }
                    if let Some(tls) = &l.tls {
                        ctx.tls(r, &format!("{p}.tls"), tls);
                    }
                }
                if let Some(cp) = s
                    .backend_defaults
                    .as_ref()
                    .and_then(|d| d.client_policy.as_ref())
                {
                    ctx.client_policy(
                        r,
                        "spec.backendDefaults.clientPolicy",
                        "spec.backendDefaults.clientPolicy",
                        cp,
                    );
                }
            }
            Spec::GatewayRoute(s) => ctx.gateway_route(r, s),
        }
    }
    ctx.out
}

/// The protocol a port mapping (or route kind) speaks, as the snapshot names it.
pub(crate) fn protocol(p: PortProtocol) -> crate::Protocol {
    match p {
        PortProtocol::Http => crate::Protocol::Http,
        PortProtocol::Http2 => crate::Protocol::Http2,
        PortProtocol::Grpc => crate::Protocol::Grpc,
        PortProtocol::Tcp => crate::Protocol::Tcp,
    }
}

/// A duration in the API's shape converted, or `None` when invalid (reported by validation).
pub(crate) fn to_duration(d: &Duration) -> Option<std::time::Duration> {
    let value = u64::try_from(d.value?).ok()?;
    Some(match d.unit? {
        DurationUnit::Seconds => std::time::Duration::from_secs(value),
        DurationUnit::Millis => std::time::Duration::from_millis(value),
    })
}

impl<'a> Ctx<'a> {
    fn mesh_of(&self, r: &'a Resource) -> &'a str {
        r.mesh.as_deref().or(self.default_mesh).unwrap_or("")
    }

    fn find(&self, kind: Kind, mesh: &'a str, parent: &str, name: &str) -> Option<&'a Resource> {
        self.index.get(&(kind, mesh, parent, name)).copied()
    }

    fn warn(&mut self, r: &Resource, pattern: &str, path: &str) {
        if let Some((_, msg)) = UNSUPPORTED.iter().find(|(p, _)| *p == pattern) {
            self.out.push(r.warning(path, *msg));
        }
    }

    fn err(&mut self, r: &Resource, path: impl Into<String>, reason: impl Into<String>) {
        self.out.push(r.error(path, reason));
    }

    fn range(&mut self, r: &Resource, path: &str, value: i64, (lo, hi): (i64, i64)) {
        if value < lo || value > hi {
            self.err(
                r,
                path,
                format!("{value} is out of range: must be {lo}–{hi}"),
            );
        }
    }

    fn at_least_one(&mut self, r: &Resource, path: &str, value: i64) {
        if value < 1 {
            self.err(
                r,
                path,
                format!("{value} is out of range: must be at least 1"),
            );
        }
    }

    fn port(&mut self, r: &Resource, path: &str, port: i64) {
        self.range(r, path, port, (1, 65_535));
    }

    fn port_mapping(&mut self, r: &Resource, path: &str, pm: &PortMapping) {
        self.port(r, &format!("{path}.port"), pm.port);
    }

    fn duration(&mut self, r: &Resource, path: &str, d: &Duration) {
        if d.unit.is_none() {
            self.err(r, format!("{path}.unit"), "missing unit: must be s or ms");
        }
        match d.value {
            None => self.err(r, format!("{path}.value"), "missing value"),
            Some(v) if v < 0 => self.err(r, format!("{path}.value"), format!("{v} is negative")),
            Some(_) => {}
        }
    }

    fn regex(&mut self, r: &Resource, path: &str, pattern: &str) {
        if pattern.len() > MAX_PATH_LEN {
            self.err(
                r,
                path,
                format!(
                    "regex is {} characters long: at most {MAX_PATH_LEN}",
                    pattern.len()
                ),
            );
        }
        if let Err(e) = regex::Regex::new(pattern) {
            self.err(
                r,
                path,
                format!("invalid regex: {}", e.to_string().replace('\n', " ")),
            );
        }
    }

    fn service(&mut self, r: &'a Resource, provider: Option<&VirtualServiceProvider>) {
        let mesh = self.mesh_of(r);
        match provider {
            None => self.out.push(r.warning(
                "spec.provider",
                "no provider: requests to this service fail with 503",
            )),
            Some(VirtualServiceProvider::VirtualNode(p)) => {
                if self
                    .find(Kind::VirtualNode, mesh, "", &p.virtual_node_name)
                    .is_none()
                {
                    self.err(
                        r,
                        "spec.provider.virtualNode.virtualNodeName",
                        format!(
                            "virtual node \"{}\" does not exist in mesh \"{mesh}\"",
                            p.virtual_node_name
                        ),
                    );
                }
            }
            Some(VirtualServiceProvider::VirtualRouter(p)) => {
                if self
                    .find(Kind::VirtualRouter, mesh, "", &p.virtual_router_name)
                    .is_none()
                {
                    self.err(
                        r,
                        "spec.provider.virtualRouter.virtualRouterName",
                        format!(
                            "virtual router \"{}\" does not exist in mesh \"{mesh}\"",
                            p.virtual_router_name
                        ),
                    );
                }
            }
        }
    }

    fn node(&mut self, r: &'a Resource, s: &VirtualNodeSpec) {
        let mesh = self.mesh_of(r);
        if let Some(cp) = s
            .backend_defaults
            .as_ref()
            .and_then(|b| b.client_policy.as_ref())
        {
            self.client_policy(
                r,
                "spec.backendDefaults.clientPolicy",
                "spec.backendDefaults.clientPolicy",
                cp,
            );
        }
        for (i, b) in s.backends.iter().enumerate() {
            let crate::model::Backend::VirtualService(vs) = b;
            let p = format!("spec.backends[{i}].virtualService");
            if let Some(cp) = &vs.client_policy {
                self.client_policy(
                    r,
                    "spec.backends[].virtualService.clientPolicy",
                    &format!("{p}.clientPolicy"),
                    cp,
                );
            }
            if self
                .find(Kind::VirtualService, mesh, "", &vs.virtual_service_name)
                .is_none()
            {
                self.err(
                    r,
                    format!("{p}.virtualServiceName"),
                    format!(
                        "virtual service \"{}\" does not exist in mesh \"{mesh}\"",
                        vs.virtual_service_name
                    ),
                );
            }
        }
        let mut ports: Vec<i64> = Vec::new();
        for (i, l) in s.listeners.iter().enumerate() {
            let p = format!("spec.listeners[{i}]");
            self.port_mapping(r, &format!("{p}.portMapping"), &l.port_mapping);
            if ports.contains(&l.port_mapping.port) {
                self.err(
                    r,
                    format!("{p}.portMapping.port"),
                    format!("port {} is used by another listener", l.port_mapping.port),
                );
            }
            ports.push(l.port_mapping.port);
            let proto = l.port_mapping.protocol;
            if let Some(hc) = &l.health_check {
                self.health_check(r, &format!("{p}.healthCheck"), hc);
                self.warn(
                    r,
                    "spec.listeners[].healthCheck",
                    &format!("{p}.healthCheck"),
                );
            }
            if let Some(od) = &l.outlier_detection {
                let q = format!("{p}.outlierDetection");
                self.warn(r, "spec.listeners[].outlierDetection", &q);
                self.at_least_one(r, &format!("{q}.maxServerErrors"), od.max_server_errors);
                self.range(
                    r,
                    &format!("{q}.maxEjectionPercent"),
                    od.max_ejection_percent,
                    (0, 100),
                );
                self.duration(r, &format!("{q}.interval"), &od.interval);
                self.duration(
                    r,
                    &format!("{q}.baseEjectionDuration"),
                    &od.base_ejection_duration,
                );
            }
            if let Some(pool) = &l.connection_pool {
                self.connection_pool(r, &format!("{p}.connectionPool"), pool, proto);
                self.warn(
                    r,
                    "spec.listeners[].connectionPool",
                    &format!("{p}.connectionPool"),
                );
            }
            if let Some(t) = &l.timeout {
                self.listener_timeout(r, &format!("{p}.timeout"), t, proto);
            }
            if let Some(tls) = &l.tls {
                self.tls(r, &format!("{p}.tls"), tls);
            }
        }
        match &s.service_discovery {
            Some(ServiceDiscovery::Dns(d)) if d.hostname.trim().is_empty() => {
                self.err(r, "spec.serviceDiscovery.dns.hostname", "hostname is empty");
            }
            Some(ServiceDiscovery::AwsCloudMap(c)) => {
                if !c.attributes.is_empty() {
                    let path = "spec.serviceDiscovery.awsCloudMap.attributes";
                    self.warn(r, path, path);
                }
                if c.service_name.is_empty() || c.namespace_name.is_empty() {
                    self.err(
                        r,
                        "spec.serviceDiscovery.awsCloudMap",
                        "serviceName and namespaceName must not be empty",
                    );
                }
            }
            _ => {}
        }
        if let Some(crate::model::AccessLogSpec::File(f)) =
            s.logging.as_ref().and_then(|l| l.access_log.as_ref())
        {
            if f.path.trim().is_empty() {
                self.err(r, "spec.logging.accessLog.file.path", "path is empty");
            }
            match &f.format {
                Some(crate::model::LoggingFormat::Text(t)) => {
                    if let Err(e) = outrider_accesslog::Format::text(t) {
                        self.err(r, "spec.logging.accessLog.file.format.text", e.to_string());
                    }
                }
                Some(crate::model::LoggingFormat::Json(kv)) => {
                    for (i, pair) in kv.iter().enumerate() {
                        if let Err(e) = outrider_accesslog::Format::text(&pair.value) {
                            self.err(
                                r,
                                format!("spec.logging.accessLog.file.format.json[{i}].value"),
                                e.to_string(),
                            );
                        }
                    }
                }
                None => {}
            }
        }
    }

    fn client_policy(&mut self, r: &Resource, pattern: &str, path: &str, cp: &ClientPolicy) {
        let Some(tls) = &cp.tls else {
            self.warn(r, pattern, path);
            return;
        };
        if !matches!(tls.validation.trust, TlsTrust::File(_)) {
            self.warn(
                r,
                "clientPolicy.tls.validation.trust",
                &format!("{path}.tls.validation.trust"),
            );
        }
        if let Some(ClientTlsCertificate::Sds(_)) = &tls.certificate {
            self.warn(
                r,
                "clientPolicy.tls.certificate.sds",
                &format!("{path}.tls.certificate.sds"),
            );
        }
    }

    fn tls(&mut self, r: &Resource, path: &str, tls: &ListenerTls) {
        if tls.mode == TlsMode::Disabled {
            return;
        }
        if !matches!(tls.certificate, ListenerTlsCertificate::File(_)) {
            self.warn(r, "spec.listeners[].tls", path);
        }
        if let Some(ListenerTlsTrust::Sds(_)) = tls.validation.as_ref().map(|v| &v.trust) {
            self.warn(
                r,
                "spec.listeners[].tls.validation.trust.sds",
                &format!("{path}.validation.trust.sds"),
            );
        }
        match &tls.certificate {
            ListenerTlsCertificate::Acm(_) => {
                self.warn(
                    r,
                    "spec.listeners[].tls.certificate.acm",
                    &format!("{path}.certificate.acm"),
                );
            }
            ListenerTlsCertificate::Sds(_) => {
                self.warn(
                    r,
                    "spec.listeners[].tls.certificate.sds",
                    &format!("{path}.certificate.sds"),
                );
            }
            ListenerTlsCertificate::File(_) => {}
        }
    }

    fn health_check(&mut self, r: &Resource, path: &str, hc: &HealthCheckPolicy) {
        self.range(
            r,
            &format!("{path}.intervalMillis"),
            hc.interval_millis,
            HEALTH_INTERVAL_MS,
        );
        self.range(
            r,
            &format!("{path}.timeoutMillis"),
            hc.timeout_millis,
            HEALTH_TIMEOUT_MS,
        );
        self.range(
            r,
            &format!("{path}.healthyThreshold"),
            hc.healthy_threshold,
            HEALTH_THRESHOLD,
        );
        self.range(
            r,
            &format!("{path}.unhealthyThreshold"),
            hc.unhealthy_threshold,
            HEALTH_THRESHOLD,
        );
        if let Some(port) = hc.port {
            self.port(r, &format!("{path}.port"), port);
        }
        if hc.protocol.is_http_like() && hc.path.as_deref().is_none_or(str::is_empty) {
            self.err(
                r,
                format!("{path}.path"),
                "an HTTP health check needs a path",
            );
        }
    }

    fn connection_pool(
        &mut self,
        r: &Resource,
        path: &str,
        pool: &ConnectionPoolSpec,
        proto: PortProtocol,
    ) {
        let (kind, p) = match pool {
            ConnectionPoolSpec::Http(h) => {
                self.at_least_one(r, &format!("{path}.http.maxConnections"), h.max_connections);
                if let Some(m) = h.max_pending_requests {
                    self.at_least_one(r, &format!("{path}.http.maxPendingRequests"), m);
                }
                ("http", PortProtocol::Http)
            }
            ConnectionPoolSpec::Http2(h) => {
                self.at_least_one(r, &format!("{path}.http2.maxRequests"), h.max_requests);
                ("http2", PortProtocol::Http2)
            }
            ConnectionPoolSpec::Grpc(h) => {
                self.at_least_one(r, &format!("{path}.grpc.maxRequests"), h.max_requests);
                ("grpc", PortProtocol::Grpc)
            }
            ConnectionPoolSpec::Tcp(t) => {
                self.at_least_one(r, &format!("{path}.tcp.maxConnections"), t.max_connections);
                ("tcp", PortProtocol::Tcp)
            }
        };
        if p != proto {
            self.err(
                r,
                format!("{path}.{kind}"),
                format!(
                    "a {kind} connection pool on a {} listener: the kinds must match",
                    protocol(proto).as_str()
                ),
            );
        }
    }

    fn listener_timeout(
        &mut self,
        r: &Resource,
        path: &str,
        t: &ListenerTimeout,
        proto: PortProtocol,
    ) {
        let (kind, p) = match t {
            ListenerTimeout::Http(h) => {
                self.http_timeout(r, &format!("{path}.http"), h);
                ("http", PortProtocol::Http)
            }
            ListenerTimeout::Http2(h) => {
                self.http_timeout(r, &format!("{path}.http2"), h);
                ("http2", PortProtocol::Http2)
            }
            ListenerTimeout::Grpc(h) => {
                self.http_timeout(r, &format!("{path}.grpc"), h);
                ("grpc", PortProtocol::Grpc)
            }
            ListenerTimeout::Tcp(t) => {
                if let Some(idle) = &t.idle {
                    self.duration(r, &format!("{path}.tcp.idle"), idle);
                }
                ("tcp", PortProtocol::Tcp)
            }
        };
        if p != proto {
            self.err(
                r,
                format!("{path}.{kind}"),
                format!(
                    "a {kind} timeout on a {} listener: the kinds must match",
                    protocol(proto).as_str()
                ),
            );
        }
    }

    fn http_timeout(&mut self, r: &Resource, path: &str, t: &crate::model::HttpTimeout) {
        if let Some(d) = &t.per_request {
            self.duration(r, &format!("{path}.perRequest"), d);
        }
        if let Some(d) = &t.idle {
            self.duration(r, &format!("{path}.idle"), d);
        }
    }

    fn route(&mut self, r: &'a Resource, s: &crate::model::RouteSpec) {
        let mesh = self.mesh_of(r);
        let router_name = r.parent.as_deref().unwrap_or("");
        let router = self.find(Kind::VirtualRouter, mesh, "", router_name);
        if router.is_none() {
            self.err(
                r,
                "virtualRouterName",
                format!("virtual router \"{router_name}\" does not exist in mesh \"{mesh}\""),
            );
        }
        if let Some(p) = s.priority {
            self.range(r, "spec.priority", p, (0, MAX_PRIORITY));
        }
        let kinds = usize::from(s.http_route.is_some())
            + usize::from(s.http2_route.is_some())
            + usize::from(s.grpc_route.is_some())
            + usize::from(s.tcp_route.is_some());
        if kinds != 1 {
            self.err(r, "spec", format!("exactly one of httpRoute, http2Route, grpcRoute, tcpRoute is required, found {kinds}"));
            return;
        }
        let (base, proto, port, action) = if let Some(h) = &s.http_route {
            self.http_route(r, "spec.httpRoute", h);
            (
                "spec.httpRoute",
                PortProtocol::Http,
                h.match_.port,
                &h.action,
            )
        } else if let Some(h) = &s.http2_route {
            self.http_route(r, "spec.http2Route", h);
            (
                "spec.http2Route",
                PortProtocol::Http2,
                h.match_.port,
                &h.action,
            )
        } else if let Some(g) = &s.grpc_route {
            self.grpc_route(r, g);
            (
                "spec.grpcRoute",
                PortProtocol::Grpc,
                g.match_.port,
                &g.action,
            )
        } else if let Some(t) = &s.tcp_route {
            let port = t.match_.as_ref().and_then(|m| m.port);
            if let Some(idle) = t.timeout.as_ref().and_then(|t| t.idle.as_ref()) {
                self.duration(r, "spec.tcpRoute.timeout.idle", idle);
            }
            ("spec.tcpRoute", PortProtocol::Tcp, port, &t.action)
        } else {
            return;
        };
        if let Some(p) = port {
            self.port(r, &format!("{base}.match.port"), p);
        }
        if let Some(Spec::VirtualRouter(rs)) = router.map(|x| &x.spec) {
            self.route_listener(r, base, proto, port, router_name, rs);
        }
        self.action(r, &format!("{base}.action"), action, mesh);
    }

    /// Checks that the route's kind and `match.port` agree with its router's listeners.
    fn route_listener(
        &mut self,
        r: &Resource,
        base: &str,
        proto: PortProtocol,
        port: Option<i64>,
        router_name: &str,
        rs: &crate::model::VirtualRouterSpec,
    ) {
        let ports = || {
            rs.listeners
                .iter()
                .map(|l| l.port_mapping.port.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let listener = match port {
            Some(p) => match rs.listeners.iter().find(|l| l.port_mapping.port == p) {
                Some(l) => l,
                None => {
                    let msg = format!(
                        "port {p} is not a listener port of virtual router \"{router_name}\" ({})",
                        ports()
                    );
                    self.err(r, format!("{base}.match.port"), msg);
                    return;
                }
            },
            None => match rs.listeners.as_slice() {
                [only] => only,
                [] => return,
                _ => {
                    let msg = format!(
                        "match.port is required: virtual router \"{router_name}\" has several listeners ({})",
                        ports()
                    );
                    self.err(r, format!("{base}.match.port"), msg);
                    return;
                }
            },
        };
        if listener.port_mapping.protocol != proto {
            let kind = base.trim_start_matches("spec.");
            self.err(
                r,
                base,
                format!(
                    "a {kind} needs a {} listener, but virtual router \"{router_name}\" listens with {} on port {}",
                    protocol(proto).as_str(),
                    protocol(listener.port_mapping.protocol).as_str(),
                    listener.port_mapping.port
                ),
            );
        }
    }

    fn action(&mut self, r: &Resource, path: &str, action: &RouteActionSpec, mesh: &'a str) {
        let n = action.weighted_targets.len();
        if n == 0 || n > MAX_WEIGHTED_TARGETS {
            self.err(
                r,
                format!("{path}.weightedTargets"),
                format!("{n} weighted targets: must be 1–{MAX_WEIGHTED_TARGETS}"),
            );
        }
        for (i, t) in action.weighted_targets.iter().enumerate() {
            let p = format!("{path}.weightedTargets[{i}]");
            self.range(r, &format!("{p}.weight"), t.weight, (0, MAX_WEIGHT));
            if let Some(port) = t.port {
                self.port(r, &format!("{p}.port"), port);
            }
            let Some(node) = self.find(Kind::VirtualNode, mesh, "", &t.virtual_node) else {
                self.err(
                    r,
                    format!("{p}.virtualNode"),
                    format!(
                        "virtual node \"{}\" does not exist in mesh \"{mesh}\"",
                        t.virtual_node
                    ),
                );
                continue;
            };
            let Spec::VirtualNode(ns) = &node.spec else {
                continue;
            };
            let ports: Vec<i64> = ns.listeners.iter().map(|l| l.port_mapping.port).collect();
            let list = ports
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            match t.port {
                Some(port) if !ports.contains(&port) => self.err(
                    r,
                    format!("{p}.port"),
                    format!(
                        "port {port} is not a listener port of virtual node \"{}\" ({list})",
                        t.virtual_node
                    ),
                ),
                None if ports.len() > 1 => self.err(
                    r,
                    format!("{p}.port"),
                    format!(
                        "port is required: virtual node \"{}\" has several listeners ({list})",
                        t.virtual_node
                    ),
                ),
                _ => {}
            }
        }
    }

    fn retry(&mut self, r: &Resource, path: &str, rp: &RetryPolicySpec, grpc: bool) {
        if !grpc && !rp.grpc_retry_events.is_empty() {
            self.err(
                r,
                format!("{path}.grpcRetryEvents"),
                "grpcRetryEvents is only valid in a grpcRoute",
            );
        }
        let any = !rp.grpc_retry_events.is_empty()
            || !rp.http_retry_events.is_empty()
            || !rp.tcp_retry_events.is_empty();
        match rp.max_retries {
            Some(m) if m < 0 => {
                self.err(r, format!("{path}.maxRetries"), format!("{m} is negative"))
            }
            None if any => self.err(
                r,
                format!("{path}.maxRetries"),
                "maxRetries is required when retry events are set",
            ),
            _ => {}
        }
        match &rp.per_retry_timeout {
            Some(d) => self.duration(r, &format!("{path}.perRetryTimeout"), d),
            None if any => self.err(
                r,
                format!("{path}.perRetryTimeout"),
                "perRetryTimeout is required when retry events are set",
            ),
            None => {}
        }
    }

    fn headers(
        &mut self,
        r: &Resource,
        path: &str,
        headers: &[HeaderMatchSpec],
        header_names: bool,
    ) {
        if headers.len() > MAX_HEADER_MATCHES {
            self.err(
                r,
                path,
                format!("{} matches: at most {MAX_HEADER_MATCHES}", headers.len()),
            );
        }
        for (i, h) in headers.iter().enumerate() {
            let p = format!("{path}[{i}]");
            if h.name.is_empty() {
                self.err(r, format!("{p}.name"), "name is empty");
            } else if header_names && http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                self.err(
                    r,
                    format!("{p}.name"),
                    format!("\"{}\" is not a valid header name", h.name),
                );
            }
            match &h.match_ {
                Some(HeaderMatchMethod::Regex(re)) => {
                    self.regex(r, &format!("{p}.match.regex"), re)
                }
                Some(HeaderMatchMethod::Range(range)) if range.start >= range.end => {
                    self.err(
                        r,
                        format!("{p}.match.range"),
                        format!("start {} must be less than end {}", range.start, range.end),
                    );
                }
                _ => {}
            }
        }
    }

    fn hostname(&mut self, r: &Resource, path: &str, h: &HostnameMatch, extension: bool) {
        if extension {
            self.warn(r, "match.hostname", path);
        }
        if h.exact.is_some() == h.suffix.is_some() {
            self.err(r, path, "exactly one of exact and suffix is required");
        }
    }

    fn query(&mut self, r: &Resource, path: &str, q: &[HttpQueryParameter]) {
        if q.len() > MAX_QUERY_PARAMETERS {
            self.err(
                r,
                path,
                format!(
                    "{} query parameters: at most {MAX_QUERY_PARAMETERS}",
                    q.len()
                ),
            );
        }
        for (i, p) in q.iter().enumerate() {
            if p.name.is_empty() {
                self.err(r, format!("{path}[{i}].name"), "name is empty");
            }
        }
    }

    fn path_match(
        &mut self,
        r: &Resource,
        m: &str,
        prefix: Option<&String>,
        path: Option<&HttpPathMatch>,
    ) {
        match (prefix, path) {
            (Some(_), Some(_)) | (None, None) => {
                self.err(r, m, "exactly one of prefix and path is required");
            }
            (Some(prefix), None) => {
                if !prefix.starts_with('/') {
                    self.err(r, format!("{m}.prefix"), "prefix must start with /");
                }
                if prefix.len() > MAX_PATH_LEN {
                    self.err(
                        r,
                        format!("{m}.prefix"),
                        format!("prefix is longer than {MAX_PATH_LEN} characters"),
                    );
                }
            }
            (None, Some(p)) => match (&p.exact, &p.regex) {
                (Some(exact), None) => {
                    if exact.len() > MAX_PATH_LEN {
                        self.err(
                            r,
                            format!("{m}.path.exact"),
                            format!("path is longer than {MAX_PATH_LEN} characters"),
                        );
                    }
                }
                (None, Some(re)) => self.regex(r, &format!("{m}.path.regex"), re),
                _ => self.err(
                    r,
                    format!("{m}.path"),
                    "exactly one of exact and regex is required",
                ),
            },
        }
    }

    fn http_route(&mut self, r: &Resource, base: &str, h: &crate::model::HttpRoute) {
        let m = format!("{base}.match");
        self.path_match(r, &m, h.match_.prefix.as_ref(), h.match_.path.as_ref());
        self.headers(r, &format!("{m}.headers"), &h.match_.headers, true);
        self.query(
            r,
            &format!("{m}.queryParameters"),
            &h.match_.query_parameters,
        );
        self.extensions(r, &m, h.match_.hostname.as_ref(), &h.match_.cookies);
        if let Some(rp) = &h.retry_policy {
            self.retry(r, &format!("{base}.retryPolicy"), rp, false);
        }
        if let Some(t) = &h.timeout {
            self.http_timeout(r, &format!("{base}.timeout"), t);
        }
    }

    fn grpc_route(&mut self, r: &Resource, g: &crate::model::GrpcRoute) {
        let m = "spec.grpcRoute.match";
        if g.match_.method_name.is_some() && g.match_.service_name.is_none() {
            self.err(r, format!("{m}.methodName"), "methodName needs serviceName");
        }
        self.headers(r, &format!("{m}.metadata"), &g.match_.metadata, true);
        self.extensions(r, m, g.match_.hostname.as_ref(), &g.match_.cookies);
        if let Some(rp) = &g.retry_policy {
            self.retry(r, "spec.grpcRoute.retryPolicy", rp, true);
        }
        if let Some(t) = &g.timeout {
            self.http_timeout(r, "spec.grpcRoute.timeout", t);
        }
    }

    fn extensions(
        &mut self,
        r: &Resource,
        m: &str,
        hostname: Option<&HostnameMatch>,
        cookies: &[HeaderMatchSpec],
    ) {
        if let Some(h) = hostname {
            self.hostname(r, &format!("{m}.hostname"), h, true);
        }
        if !cookies.is_empty() {
            let p = format!("{m}.cookies");
            self.warn(r, "match.cookies", &p);
            self.headers(r, &p, cookies, false);
        }
    }

    fn gateway_route(&mut self, r: &'a Resource, s: &crate::model::GatewayRouteSpec) {
        let mesh = self.mesh_of(r);
        let gw = r.parent.as_deref().unwrap_or("");
        if self.find(Kind::VirtualGateway, mesh, "", gw).is_none() {
            self.err(
                r,
                "virtualGatewayName",
                format!("virtual gateway \"{gw}\" does not exist in mesh \"{mesh}\""),
            );
        }
        if let Some(p) = s.priority {
            self.range(r, "spec.priority", p, (0, MAX_PRIORITY));
        }
        let kinds = usize::from(s.http_route.is_some())
            + usize::from(s.http2_route.is_some())
            + usize::from(s.grpc_route.is_some());
        if kinds != 1 {
            self.err(
                r,
                "spec",
                format!(
                    "exactly one of httpRoute, http2Route, grpcRoute is required, found {kinds}"
                ),
            );
            return;
        }
        let (base, target) = if let Some(h) = s
            .http_route
            .as_ref()
            .map(|h| ("spec.httpRoute", h))
            .or(s.http2_route.as_ref().map(|h| ("spec.http2Route", h)))
        {
            let (base, h) = h;
            let m = format!("{base}.match");
            if h.match_.prefix.is_some() || h.match_.path.is_some() {
                self.path_match(r, &m, h.match_.prefix.as_ref(), h.match_.path.as_ref());
            }
            self.headers(r, &format!("{m}.headers"), &h.match_.headers, true);
            self.query(
                r,
                &format!("{m}.queryParameters"),
                &h.match_.query_parameters,
            );
            if let Some(host) = &h.match_.hostname {
                self.hostname(r, &format!("{m}.hostname"), host, false);
            }
            self.gateway_rewrite(r, base, h);
            (base, &h.action.target)
        } else if let Some(g) = &s.grpc_route {
            let m = "spec.grpcRoute.match";
            self.headers(r, &format!("{m}.metadata"), &g.match_.metadata, true);
            if let Some(host) = &g.match_.hostname {
                self.hostname(r, &format!("{m}.hostname"), host, false);
            }
            ("spec.grpcRoute", &g.action.target)
        } else {
            return;
        };
        let vs = &target.virtual_service.virtual_service_name;
        if self.find(Kind::VirtualService, mesh, "", vs).is_none() {
            self.err(
                r,
                format!("{base}.action.target.virtualService.virtualServiceName"),
                format!("virtual service \"{vs}\" does not exist in mesh \"{mesh}\""),
            );
        }
        if let Some(port) = target.port {
            self.port(r, &format!("{base}.action.target.port"), port);
        }
    }
}

impl Ctx<'_> {
    /// App Mesh's rules for HTTP gateway rewrites: a prefix rewrite needs a prefix match and
    /// sets `defaultPrefix` or `value`, not both; a path rewrite needs an exact path match.
    fn gateway_rewrite(&mut self, r: &Resource, base: &str, h: &crate::model::HttpGatewayRoute) {
        let Some(rw) = &h.action.rewrite else {
            return;
        };
        let at = format!("{base}.action.rewrite");
        if let Some(p) = &rw.prefix {
            if h.match_.prefix.is_none() {
                self.err(
                    r,
                    format!("{at}.prefix"),
                    "a prefix rewrite needs a match on prefix",
                );
            }
            if p.default_prefix.is_some() && p.value.is_some() {
                self.err(
                    r,
                    format!("{at}.prefix"),
                    "set defaultPrefix or value, not both",
                );
            }
            if let Some(v) = &p.value
                && !v.starts_with('/')
            {
                self.err(r, format!("{at}.prefix.value"), "must start with /");
            }
        }
        if let Some(p) = &rw.path {
            if h.match_.path.as_ref().is_none_or(|m| m.exact.is_none()) {
                self.err(
                    r,
                    format!("{at}.path"),
                    "a path rewrite needs a match on path.exact",
                );
            }
            if let Some(e) = &p.exact
                && !e.starts_with('/')
            {
                self.err(r, format!("{at}.path.exact"), "must start with /");
            }
        }
    }
}

impl PortProtocol {
    /// True for the protocols health-checked with an HTTP request (which needs a path).
    fn is_http_like(self) -> bool {
        matches!(self, PortProtocol::Http | PortProtocol::Http2)
    }
}
