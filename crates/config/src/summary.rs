//! Human and machine views of a [`Snapshot`]: `outrider validate`'s summary and `/config_dump`.

use std::fmt::Write as _;
use std::time::Duration;

use outrider_route::{HeaderMatch, HostMatch, PathMatch, Route, RouteMatch, StringMatch};
use serde_json::{Value, json};

use crate::{
    AccessLogFormat, Cluster, ClusterId, Discovery, EgressFilter, Gateway, GatewayRewrite,
    Identity, Provider, RetryPolicy, RouteAction, Snapshot, Timeouts,
};

impl Snapshot {
    /// A readable multi-line summary of what the node would do: listeners, backends with each
    /// router listener's routes in evaluation order and their weighted targets, and clusters.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let who = match &self.identity {
            Identity::VirtualNode(n) => format!("virtual node {n}"),
            Identity::VirtualGateway(n) => format!("virtual gateway {n}"),
        };
        let mesh = if self.mesh.is_empty() {
            "(unnamed)"
        } else {
            &self.mesh
        };
        let _ = writeln!(s, "{who} in mesh {mesh} (config {})", self.hash);
        let filter = match self.egress_filter {
            EgressFilter::AllowAll => "ALLOW_ALL",
            EgressFilter::DropAll => "DROP_ALL",
        };
        let _ = writeln!(s, "egress filter: {filter}");
        let _ = writeln!(s, "listeners:");
        if self.listeners.is_empty() {
            let _ = writeln!(s, "  (none)");
        }
        if let Some(gw) = &self.gateway {
            self.gateway_summary(&mut s, gw);
        }
        for l in self.listeners.iter().filter(|_| self.gateway.is_none()) {
            let _ = writeln!(
                s,
                "  {}/{} -> 127.0.0.1:{} ({}) timeouts {}",
                l.port,
                l.protocol.as_str(),
                l.port,
                l.cluster_name,
                timeouts(&l.timeouts)
            );
        }
        let _ = writeln!(s, "backends:");
        if self.backends.is_empty() {
            let _ = writeln!(s, "  (none)");
        }
        for b in &self.backends {
            match &b.provider {
                Provider::Node { node, clusters } if node.is_empty() && clusters.is_empty() => {
                    let _ = writeln!(s, "  {}: no provider (503)", b.name);
                }
                Provider::Node { node, clusters } => {
                    let names: Vec<&str> = clusters.iter().map(|c| self.cluster_name(*c)).collect();
                    let _ = writeln!(
                        s,
                        "  {}: virtual node {node} -> {}",
                        b.name,
                        names.join(", ")
                    );
                }
                Provider::Router(r) => {
                    let _ = writeln!(s, "  {}: virtual router {}", b.name, r.name);
                    for l in &r.listeners {
                        let _ = writeln!(s, "    listener {}/{}:", l.port, l.protocol.as_str());
                        if l.routes.is_empty() {
                            let _ = writeln!(s, "      (no routes)");
                        }
                        for (i, route) in l.routes.routes().iter().enumerate() {
                            route_line(&mut s, i, route);
                            let _ = writeln!(s, "         -> {}", self.targets(&route.action));
                            let _ = writeln!(
                                s,
                                "         timeouts {}, retry {}",
                                timeouts(&route.action.timeouts),
                                retry(&route.action.retry)
                            );
                        }
                    }
                }
            }
        }
        let _ = writeln!(s, "clusters:");
        if self.clusters.is_empty() {
            let _ = writeln!(s, "  (none)");
        }
        for c in &self.clusters {
            let _ = writeln!(s, "  {} -> {}", c.name, discovery(c));
        }
        if let Some(log) = &self.access_log {
            let _ = writeln!(s, "access log: {}", log.path);
        }
        s
    }

    /// The snapshot as JSON, for the admin `/config_dump`.
    pub fn dump(&self) -> Value {
        let identity = match &self.identity {
            Identity::VirtualNode(n) => json!({"virtualNode": n}),
            Identity::VirtualGateway(n) => json!({"virtualGateway": n}),
        };
        let backends: Vec<Value> = self
            .backends
            .iter()
            .map(|b| match &b.provider {
                Provider::Node { node, clusters } => json!({
                    "virtualService": &*b.name,
                    "virtualNode": node,
                    "clusters": clusters.iter().map(|c| self.cluster_name(*c)).collect::<Vec<_>>(),
                }),
                Provider::Router(r) => json!({
                    "virtualService": &*b.name,
                    "virtualRouter": r.name,
                    "listeners": r.listeners.iter().map(|l| json!({
                        "port": l.port,
                        "protocol": l.protocol.as_str(),
                        "routes": l.routes.routes().iter().map(|route| json!({
                            "name": &*route.name,
                            "priority": route.priority,
                            "match": describe_match(&route.matcher),
                            "targets": route.action.targets.iter_all().map(|(c, w)| json!({
                                "cluster": self.cluster_name(*c),
                                "weight": w,
                            })).collect::<Vec<_>>(),
                            "timeouts": timeouts_json(&route.action.timeouts),
                            "retry": retry(&route.action.retry),
                        })).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                }),
            })
            .collect();
        json!({
            "hash": self.hash,
            "mesh": &*self.mesh,
            "identity": identity,
            "egressFilter": match self.egress_filter {
                EgressFilter::AllowAll => "ALLOW_ALL",
                EgressFilter::DropAll => "DROP_ALL",
            },
            "listeners": self.listeners.iter().map(|l| json!({
                "port": l.port,
                "protocol": l.protocol.as_str(),
                "cluster": l.cluster_name,
                "timeouts": timeouts_json(&l.timeouts),
                "connectionPool": {
                    "maxConnections": l.connection_pool.max_connections,
                    "maxPendingRequests": l.connection_pool.max_pending_requests,
                    "maxRequests": l.connection_pool.max_requests,
                },
            })).collect::<Vec<_>>(),
            "backends": backends,
            "gateway": self.gateway.as_ref().map(|gw| json!({
                "name": gw.name,
                "listeners": gw.listeners.iter().map(|l| json!({
                    "port": l.port,
                    "protocol": l.protocol.as_str(),
                    "routes": l.routes.routes().iter().map(|route| json!({
                        "name": &*route.name,
                        "priority": route.priority,
                        "match": describe_match(&route.matcher),
                        "virtualService": self.backends.get(route.action.service).map(|b| &*b.name),
                        "port": route.action.port,
                        "rewrite": rewrite(&route.action.rewrite).trim(),
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })),
            "clusters": self.clusters.iter().map(|c| json!({
                "name": c.name,
                "node": c.node,
                "port": c.port,
                "protocol": c.protocol.as_str(),
                "discovery": discovery(c),
                "healthCheck": c.health_check.is_some(),
                "outlierDetection": c.outlier_detection.is_some(),
            })).collect::<Vec<_>>(),
            "accessLog": self.access_log.as_ref().map(|l| json!({
                "path": l.path,
                "format": match &l.format {
                    AccessLogFormat::Default => json!("default"),
                    AccessLogFormat::Text(t) => json!({"text": t}),
                    AccessLogFormat::Json(kv) => json!({"json": kv.iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>()}),
                },
            })),
        })
    }

    /// The gateway listeners with their gateway routes in evaluation order.
    fn gateway_summary(&self, s: &mut String, gw: &Gateway) {
        for l in &gw.listeners {
            let tls = self
                .listeners
                .iter()
                .find(|n| n.port == l.port)
                .and_then(|n| n.tls.as_ref())
                .map_or("", |_| " tls");
            let _ = writeln!(s, "  {}/{}{tls} (gateway):", l.port, l.protocol.as_str());
            if l.routes.is_empty() {
                let _ = writeln!(s, "      (no gateway routes)");
            }
            for (i, route) in l.routes.routes().iter().enumerate() {
                route_line(s, i, route);
                let a = &route.action;
                let target = self.backends.get(a.service).map_or("?", |b| &*b.name);
                let port = a.port.map(|p| format!(":{p}")).unwrap_or_default();
                let _ = writeln!(
                    s,
                    "         -> virtual service {target}{port}{}",
                    rewrite(&a.rewrite)
                );
            }
        }
    }

    /// The cluster a [`ClusterId`] names, if it is in range.
    pub fn cluster(&self, id: ClusterId) -> Option<&Cluster> {
        self.clusters.get(id.0)
    }

    fn cluster_name(&self, id: ClusterId) -> &str {
        self.cluster(id).map_or("?", |c| c.name.as_str())
    }

    fn targets(&self, action: &RouteAction) -> String {
        let total: u64 = action.targets.iter_all().map(|(_, w)| u64::from(w)).sum();
        let parts: Vec<String> = action
            .targets
            .iter_all()
            .map(|(c, w)| {
                let pct = if total == 0 {
                    0.0
                } else {
                    f64::from(w) * 100.0 / total as f64
                };
                format!("{} {pct:.0}%", self.cluster_name(*c))
            })
            .collect();
        parts.join(", ")
    }
}

fn rewrite(r: &GatewayRewrite) -> String {
    let mut parts = Vec::new();
    if let Some((from, to)) = &r.prefix {
        parts.push(format!("prefix {from} => {to}"));
    }
    if let Some(p) = &r.path {
        parts.push(format!("path => {p}"));
    }
    parts.push(if r.hostname {
        "host => target".to_owned()
    } else {
        "host kept".to_owned()
    });
    format!(" (rewrite {})", parts.join(", "))
}

fn duration(d: Option<Duration>) -> String {
    match d {
        None => "off".to_owned(),
        Some(d) if d.subsec_millis() == 0 => format!("{}s", d.as_secs()),
        Some(d) => format!("{}ms", d.as_millis()),
    }
}

fn timeouts(t: &Timeouts) -> String {
    format!(
        "request {} idle {}",
        duration(t.per_request),
        duration(t.idle)
    )
}

fn timeouts_json(t: &Timeouts) -> Value {
    json!({
        "perRequestMs": t.per_request.map(|d| d.as_millis() as u64),
        "idleMs": t.idle.map(|d| d.as_millis() as u64),
    })
}

fn retry(r: &RetryPolicy) -> String {
    if r.implicit {
        return format!(
            "implicit ({} on connect failure, refused stream, 503; idempotent only)",
            r.max_retries
        );
    }
    let per_try = r
        .per_retry_timeout
        .map(|d| format!(" per try {}", duration(Some(d))))
        .unwrap_or_default();
    format!("{} retries{per_try}", r.max_retries)
}

fn discovery(c: &Cluster) -> String {
    match &c.discovery {
        Discovery::Dns { hostname, .. } => format!("dns {hostname}:{}", c.port),
        Discovery::None => "no service discovery".to_owned(),
    }
}

fn string_match(m: &StringMatch) -> String {
    match m {
        StringMatch::Exact(s) => format!("= {s:?}"),
        StringMatch::Prefix(s) => format!("prefix {s:?}"),
        StringMatch::Suffix(s) => format!("suffix {s:?}"),
        StringMatch::Regex(re) => format!("~ {:?}", re.as_str()),
        StringMatch::Range { start, end } => format!("in [{start}, {end})"),
    }
}

fn header(kind: &str, h: &HeaderMatch) -> String {
    let not = if h.invert { "!" } else { "" };
    match &h.matcher {
        Some(m) => format!("{not}{kind} {} {}", h.name, string_match(m)),
        None => format!("{not}{kind} {} present", h.name),
    }
}

fn host(h: &HostMatch) -> String {
    match h {
        HostMatch::Exact(e) => format!("host = {e}"),
        HostMatch::Suffix(s) => format!("host suffix {s}"),
    }
}

/// One line describing a route's match.
/// `N. name[ priority P]: match`, the first line of a route (mesh or gateway) in a summary.
fn route_line<A>(s: &mut String, index: usize, route: &Route<A>) {
    let prio = route
        .priority
        .map(|p| format!(" priority {p}"))
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "      {}. {}{prio}: {}",
        index + 1,
        route.name,
        describe_match(&route.matcher)
    );
}

fn describe_match(m: &RouteMatch) -> String {
    let mut parts: Vec<String> = Vec::new();
    match m {
        RouteMatch::Http(h) => {
            match &h.path {
                Some(PathMatch::Prefix(p)) => parts.push(format!("prefix {p}")),
                Some(PathMatch::Exact(p)) => parts.push(format!("path = {p}")),
                Some(PathMatch::Regex(re)) => parts.push(format!("path ~ {}", re.as_str())),
                None => {}
            }
            if let Some(meth) = &h.method {
                parts.push(format!("method {meth}"));
            }
            if let Some(s) = &h.scheme {
                parts.push(format!("scheme {s}"));
            }
            parts.extend(h.headers.iter().map(|x| header("header", x)));
            parts.extend(h.query.iter().map(|q| match &q.exact {
                Some(v) => format!("query {} = {v:?}", q.name),
                None => format!("query {} present", q.name),
            }));
            if let Some(p) = h.port {
                parts.push(format!("port {p}"));
            }
            parts.extend(h.hostname.iter().map(host));
            parts.extend(h.cookies.iter().map(|c| {
                let not = if c.invert { "!" } else { "" };
                match &c.matcher {
                    Some(m) => format!("{not}cookie {} {}", c.name, string_match(m)),
                    None => format!("{not}cookie {} present", c.name),
                }
            }));
        }
        RouteMatch::Grpc(g) => {
            parts.push(format!(
                "grpc {}/{}",
                g.service_name.as_deref().unwrap_or("*"),
                g.method_name.as_deref().unwrap_or("*")
            ));
            parts.extend(g.metadata.iter().map(|x| header("metadata", x)));
            if let Some(p) = g.port {
                parts.push(format!("port {p}"));
            }
            parts.extend(g.hostname.iter().map(host));
        }
        RouteMatch::Tcp(t) => {
            parts.push(
                t.port
                    .map_or_else(|| "any tcp".to_owned(), |p| format!("tcp port {p}")),
            );
        }
    }
    if parts.is_empty() {
        "any".to_owned()
    } else {
        parts.join(", ")
    }
}
