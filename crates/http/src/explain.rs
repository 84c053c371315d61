//! `outrider explain` and `GET /explain`: what the proxy would do with one request, and why.
//!
//! The decision logic mirrors [`Runtime::route_http`], [`Runtime::route_tcp`] and the ingress
//! path of the proxy, but reports every step instead of only the outcome, and shows every
//! weighted target with its share instead of drawing one. It never touches the network: the
//! endpoints are filled in afterwards, live from a [`Runtime`] or by the caller.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use outrider_config::{
    Cluster, ClusterId, Discovery, EgressFilter, Gateway, GatewayRewrite, Protocol, Provider,
    RetryPolicy, RouteAction, Snapshot, Timeouts, VirtualService, grpc_retry, http_retry,
};
use outrider_route::{
    GrpcMatch, HeaderMatch, HostMatch, HttpMatch, PathMatch, QueryMatch, RequestParts, Route,
    RouteMatch, StringMatch,
};

use crate::runtime::{ListenerChoice, NO_RETRY, Runtime};
use crate::upstream::EndpointReport;

/// The port of an `http://` URL without one. Default is 80.
pub const DEFAULT_HTTP_PORT: u16 = 80;
/// The port of an `https://` URL without one. Default is 443.
pub const DEFAULT_HTTPS_PORT: u16 = 443;

/// Why a request could not be explained: the request itself is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    /// The method is not a valid HTTP method token.
    #[error("bad method {0:?}")]
    Method(String),
    /// The URL does not parse, or has no host.
    #[error("bad URL {0:?}: give an absolute URL such as http://svc.local:8080/path")]
    Url(String),
    /// A header is not `Name: value` (or `name:value`).
    #[error("bad header {0:?}: write it as 'Name: value'")]
    Header(String),
}

/// One request to explain.
#[derive(Debug, Clone)]
pub struct ExplainRequest {
    /// The request method.
    pub method: Method,
    /// `http`, `https`, `grpc` or `tcp` (a TCP connection to the authority's port).
    pub scheme: String,
    /// The host of the authority, as written.
    pub host: String,
    /// The port written in the authority. Default is none (the scheme's port).
    pub authority_port: Option<u16>,
    /// The path, without the query.
    pub path: String,
    /// The query string, without `?`. Default is none.
    pub query: Option<String>,
    /// Request headers.
    pub headers: HeaderMap,
    /// `Some(port)`: explain an inbound request redirected from this app port (ingress).
    /// Default is none (egress).
    pub ingress_port: Option<u16>,
    /// The connection's original destination address, which picks among TCP virtual
    /// services sharing a port (`--dst`, `dst=`). Default is none: the URL's host when it is
    /// an IP address.
    pub dst: Option<IpAddr>,
}

/// Which way the request travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExplainDirection {
    /// From the local app to the mesh (listener 15001).
    Egress,
    /// From the mesh to the local app (listener 15000).
    Ingress,
    /// Into a virtual gateway, on one of its listeners.
    Gateway,
}

/// The final answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded to the clusters in [`Explanation::targets`].
    Routed,
    /// The authority names a backend, but no route matches: 404 (Envoy's `NR`).
    NoRoute,
    /// A route or provider was found but leads to no cluster: 503 (no healthy upstream).
    NoCluster,
    /// The authority is not a backend of this node: the mesh's egress filter decides.
    NotABackend(EgressFilter),
    /// Ingress with no node listener for the port: 503.
    NoListener,
    /// The config-less sidecar: every connection goes to its original destination.
    Transparent,
}

/// One route, as shown to a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteReport {
    /// The route's name.
    pub name: String,
    /// `priority`. Default is none (ordered by specificity).
    pub priority: Option<u16>,
    /// `http`, `grpc` or `tcp`.
    pub kind: &'static str,
    /// The match, in one line (`prefix /api, header x-canary = 1`).
    pub summary: String,
}

/// One weighted target and its share of the traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetReport {
    /// The target virtual node.
    pub node: String,
    /// The App Mesh cluster name (`cds_egress_<mesh>_<node>_<protocol>_<port>`).
    pub cluster: String,
    /// The configured weight.
    pub weight: u32,
    /// `weight` over the total, in percent (0 when every weight is 0).
    pub percent: f64,
}

/// One endpoint of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointLine {
    /// The address.
    pub addr: SocketAddr,
    /// `healthy`, `/failed_active_hc`, `/failed_outlier_check`, or `resolved` (not checked).
    pub health: String,
}

/// A cluster the request may be sent to, with how its endpoints are found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterReport {
    /// The App Mesh cluster name.
    pub name: String,
    /// The virtual node behind it (empty for the local app).
    pub node: String,
    /// The endpoints' port.
    pub port: u16,
    /// The DNS name (or Cloud Map name) to resolve; none when the node has no
    /// `serviceDiscovery`, or for the local app.
    pub hostname: Option<String>,
    /// The endpoints. Default is none (not looked up); `Some(empty)` means none were found.
    pub endpoints: Option<Vec<EndpointLine>>,
    /// Why `endpoints` is none or empty, when that is known. Default is none.
    pub endpoints_note: Option<String>,
}

/// One TCP virtual service on a port several share, and whether the destination picked it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpCandidate {
    /// The virtual service name.
    pub service: String,
    /// The addresses its name resolves to. Default is none (not known: not resolved).
    pub addresses: Option<Vec<IpAddr>>,
    /// True for the service the destination address belongs to.
    pub chosen: bool,
}

/// Everything `explain` found out about one request, step by step.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// Which listener the request arrives on.
    pub direction: ExplainDirection,
    /// The request line, as understood (`GET http://svc.local/path`).
    pub request: String,
    /// The listener, in words (`egress 15001, HTTP`, `ingress 15000 -> node listener http 8080`).
    pub listener: String,
    /// Gateway mode: the gateway route that matched. Default is none.
    pub gateway_route: Option<RouteReport>,
    /// Gateway mode: the rewrites that route applies (`path /a/x -> /x`,
    /// `host gw.example.com -> svc.local`). Default is empty.
    pub rewrites: Vec<String>,
    /// The TCP virtual services sharing the destination port, when several do. Default is
    /// empty.
    pub tcp_candidates: Vec<TcpCandidate>,
    /// The virtual service the authority names. Default is none.
    pub virtual_service: Option<String>,
    /// `virtual router NAME` or `virtual node NAME`. Default is none.
    pub provider: Option<String>,
    /// The router listener chosen (`http 8080`). Default is none.
    pub router_listener: Option<String>,
    /// Why that listener (`authority port 8080`, `only listener`, ...). Default is none.
    pub listener_reason: Option<String>,
    /// The matching route. Default is none.
    pub route: Option<RouteReport>,
    /// The routes tried, in evaluation order, when none matched.
    pub tried: Vec<RouteReport>,
    /// Weighted targets with their shares.
    pub targets: Vec<TargetReport>,
    /// Timeouts that apply. Default is none (no cluster chosen).
    pub timeouts: Option<Timeouts>,
    /// The retry policy that applies. Default is none (no cluster chosen).
    pub retry: Option<RetryPolicy>,
    /// The clusters behind [`Explanation::targets`] (one for ingress or a node provider).
    pub clusters: Vec<ClusterReport>,
    /// The final answer.
    pub outcome: Outcome,
    /// One line on what the client sees (`404, no route`), and other remarks.
    pub notes: Vec<String>,
}

impl ExplainRequest {
    /// Parses a request from the command line or the admin query: `method` (`GET`), an absolute
    /// `url`, headers as `Name: value`, and for ingress the app port it was sent to.
    pub fn parse<S: AsRef<str>>(
        method: &str,
        url: &str,
        headers: &[S],
        ingress_port: Option<u16>,
    ) -> Result<Self, ExplainError> {
        let method = Method::from_bytes(method.trim().to_ascii_uppercase().as_bytes())
            .map_err(|_| ExplainError::Method(method.to_string()))?;
        let bad_url = || ExplainError::Url(url.to_string());
        // A bare authority (`svc.local:8080/x`) is taken as http.
        let full = if url.contains("://") {
            url.to_string()
        } else {
            format!("http://{url}")
        };
        let uri: Uri = full.parse().map_err(|_| bad_url())?;
        let authority = uri.authority().ok_or_else(bad_url)?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(bad_url());
        }
        let mut map = HeaderMap::new();
        for h in headers {
            let h = h.as_ref();
            let (name, value) = h
                .split_once(':')
                .ok_or_else(|| ExplainError::Header(h.to_string()))?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| ExplainError::Header(h.to_string()))?;
            let value = HeaderValue::from_str(value.trim())
                .map_err(|_| ExplainError::Header(h.to_string()))?;
            map.append(name, value);
        }
        Ok(ExplainRequest {
            method,
            scheme: uri.scheme_str().unwrap_or("http").to_ascii_lowercase(),
            host: host.to_string(),
            authority_port: authority.port_u16(),
            path: match uri.path() {
                "" => "/".to_string(),
                p => p.to_string(),
            },
            query: uri.query().map(str::to_string),
            headers: map,
            ingress_port,
            dst: None,
        })
    }

    /// The destination port: the authority's, else the scheme's default.
    pub fn port(&self) -> u16 {
        self.authority_port.unwrap_or(match self.scheme.as_str() {
            "https" => DEFAULT_HTTPS_PORT,
            _ => DEFAULT_HTTP_PORT,
        })
    }

    fn line(&self) -> String {
        let mut s = format!("{} {}://{}", self.method, self.scheme, self.host);
        if let Some(p) = self.authority_port {
            let _ = write!(s, ":{p}");
        }
        s.push_str(&self.path);
        if let Some(q) = &self.query {
            let _ = write!(s, "?{q}");
        }
        s
    }
}

impl Explanation {
    fn new(direction: ExplainDirection, request: String, listener: String) -> Self {
        Explanation {
            direction,
            request,
            listener,
            gateway_route: None,
            rewrites: Vec::new(),
            tcp_candidates: Vec::new(),
            virtual_service: None,
            provider: None,
            router_listener: None,
            listener_reason: None,
            route: None,
            tried: Vec::new(),
            targets: Vec::new(),
            timeouts: None,
            retry: None,
            clusters: Vec::new(),
            outcome: Outcome::NoRoute,
            notes: Vec::new(),
        }
    }

    /// True when the request would be forwarded somewhere (a route, a node provider, an
    /// ingress listener, or pass-through).
    pub fn found(&self) -> bool {
        matches!(
            self.outcome,
            Outcome::Routed | Outcome::Transparent | Outcome::NotABackend(EgressFilter::AllowAll)
        )
    }

    /// Fills each cluster's endpoints from the live runtime: the addresses discovery found and
    /// their health, as `/clusters` shows them.
    pub fn fill_live(&mut self, rt: &Runtime) {
        for c in &mut self.clusters {
            let up = rt
                .clusters()
                .iter()
                .chain(rt.locals().iter())
                .find(|u| u.name() == c.name);
            match up {
                Some(up) => {
                    let lines: Vec<EndpointLine> =
                        up.endpoint_report().iter().map(live_line).collect();
                    if lines.is_empty() {
                        c.endpoints_note = Some("no endpoints (not resolved yet, or none)".into());
                    }
                    c.endpoints = Some(lines);
                }
                None => c.endpoints_note = Some("cluster not running".into()),
            }
        }
    }

    /// Fills each cluster's endpoints with `resolve(hostname, port)`: `Ok` addresses (shown as
    /// `resolved`, health unknown) or `Err` with why not. Clusters without a hostname keep
    /// their endpoints.
    pub fn fill_resolved(
        &mut self,
        mut resolve: impl FnMut(&str, u16) -> Result<Vec<SocketAddr>, String>,
    ) {
        for c in &mut self.clusters {
            let Some(host) = &c.hostname else { continue };
            match resolve(host, c.port) {
                Ok(addrs) => {
                    if addrs.is_empty() {
                        c.endpoints_note = Some(format!("{host} resolves to no address"));
                    }
                    c.endpoints = Some(
                        addrs
                            .into_iter()
                            .map(|addr| EndpointLine {
                                addr,
                                health: "resolved".into(),
                            })
                            .collect(),
                    );
                }
                Err(e) => c.endpoints_note = Some(format!("cannot resolve {host}: {e}")),
            }
        }
    }
}

/// Explains `req` against the live runtime, endpoints and their health included; TCP
/// services sharing a port are told apart by the addresses the runtime keeps for them.
pub fn explain(rt: &Runtime, req: &ExplainRequest) -> Explanation {
    let mut ex = if rt.is_transparent() {
        transparent(req)
    } else {
        explain_snapshot_with(rt.snapshot(), req, |name| {
            rt.tcp_service_addrs()
                .find(|a| a.name() == name)
                .map(|a| a.current().to_vec())
        })
    };
    ex.fill_live(rt);
    ex
}

/// Explains `req` against a snapshot alone. Endpoints are left out (see
/// [`Explanation::fill_resolved`]), except the local app's, which are fixed; the addresses
/// of TCP services sharing a port are unknown (see [`explain_snapshot_with`]).
pub fn explain_snapshot(snap: &Snapshot, req: &ExplainRequest) -> Explanation {
    explain_snapshot_with(snap, req, |_| None)
}

/// Explains `req` against a snapshot, with `addrs(virtual service name)` giving the addresses
/// the name resolves to (None: unknown), used only when several TCP virtual services share
/// the destination port. A snapshot of a virtual gateway explains a request arriving on the
/// gateway listener of `req.ingress_port`, else of the URL's port.
pub fn explain_snapshot_with(
    snap: &Snapshot,
    req: &ExplainRequest,
    addrs: impl Fn(&str) -> Option<Vec<IpAddr>>,
) -> Explanation {
    if let Some(gw) = &snap.gateway {
        return gateway(snap, gw, req);
    }
    match req.ingress_port {
        Some(port) => ingress(snap, req, port),
        None => egress(snap, req, &addrs),
    }
}

fn transparent(req: &ExplainRequest) -> Explanation {
    let (direction, listener) = match req.ingress_port {
        Some(_) => (ExplainDirection::Ingress, "ingress 15000"),
        None => (ExplainDirection::Egress, "egress 15001"),
    };
    let mut ex = Explanation::new(direction, req.line(), listener.into());
    ex.outcome = Outcome::Transparent;
    ex.notes
        .push("no --config: the connection goes to its original destination unchanged".into());
    ex
}

fn ingress(snap: &Snapshot, req: &ExplainRequest, port: u16) -> Explanation {
    let listeners = &snap.listeners;
    let (index, reason) = match listeners.iter().position(|l| l.port == port) {
        Some(i) => (Some(i), format!("original destination port {port}")),
        None if listeners.len() == 1 => (
            Some(0),
            format!("only listener (port {port} is not a listener)"),
        ),
        None => (None, String::new()),
    };
    let mut ex = Explanation::new(
        ExplainDirection::Ingress,
        req.line(),
        "ingress 15000".into(),
    );
    let Some(l) = index.and_then(|i| listeners.get(i)) else {
        ex.outcome = Outcome::NoListener;
        ex.notes.push(format!(
            "503: the node has no listener for port {port} ({} listeners)",
            listeners.len()
        ));
        return ex;
    };
    ex.router_listener = Some(format!("node listener {} {}", l.protocol.as_str(), l.port));
    ex.listener_reason = Some(reason);
    ex.timeouts = Some(l.timeouts);
    ex.retry = Some(NO_RETRY);
    ex.clusters.push(ClusterReport {
        name: l.cluster_name.clone(),
        node: String::new(),
        port: l.port,
        hostname: None,
        endpoints: Some(vec![EndpointLine {
            addr: SocketAddr::from(([127, 0, 0, 1], l.port)),
            health: "local app".into(),
        }]),
        endpoints_note: None,
    });
    ex.outcome = Outcome::Routed;
    ex.notes
        .push("ingress: no retries (App Mesh retries on the client side only)".into());
    ex
}

/// The backend the host names, case-insensitively.
fn backend_by_host(snap: &Snapshot, host: &str) -> Option<usize> {
    snap.backends
        .iter()
        .position(|vs| vs.name.eq_ignore_ascii_case(host))
}

/// The TCP virtual services on a port (indexes of `snap.backends`), in backend order, as the
/// runtime indexes them.
fn backends_on_tcp_port(snap: &Snapshot, port: u16) -> Vec<usize> {
    snap.backends
        .iter()
        .enumerate()
        .filter(|(_, vs)| tcp_ports(snap, &vs.provider).any(|p| p == port))
        .map(|(i, _)| i)
        .collect()
}

fn tcp_ports<'a>(snap: &'a Snapshot, provider: &'a Provider) -> Box<dyn Iterator<Item = u16> + 'a> {
    match provider {
        Provider::Router(r) => Box::new(
            r.listeners
                .iter()
                .filter(|l| l.protocol == Protocol::Tcp)
                .map(|l| l.port),
        ),
        Provider::Node { clusters, .. } => Box::new(
            clusters
                .iter()
                .filter_map(|id| snap.clusters.get(id.0))
                .filter(|c| c.protocol == Protocol::Tcp)
                .map(|c| c.port),
        ),
    }
}

/// What picks a provider's listener and route once the virtual service is known.
struct ServiceRequest<'a> {
    req: &'a ExplainRequest,
    /// The host routes match (rewritten in gateway mode).
    host: &'a str,
    /// The path routes match (rewritten in gateway mode).
    path: &'a str,
    /// The port whose listener is tried first, and what to call it in the report.
    preferred: Option<(u16, &'static str)>,
    /// The destination port, tried next. None in gateway mode.
    dest_port: Option<u16>,
}

fn egress(
    snap: &Snapshot,
    req: &ExplainRequest,
    addrs: &dyn Fn(&str) -> Option<Vec<IpAddr>>,
) -> Explanation {
    let port = req.port();
    // The egress listener sends a connection down the TCP path by its original port alone.
    match backends_on_tcp_port(snap, port).as_slice() {
        [] => {}
        [only] => return egress_tcp(snap, req, *only, port, false),
        several => return egress_shared_tcp(snap, req, several, port, addrs),
    }
    let mut ex = Explanation::new(
        ExplainDirection::Egress,
        req.line(),
        format!("egress 15001, HTTP (port {port} is not a TCP backend port)"),
    );
    if req.scheme == "tcp" {
        ex.listener = format!("egress 15001, TCP (port {port} is no backend's TCP port)");
        return not_a_backend(snap, ex, &req.host);
    }
    let Some(vs) = backend_by_host(snap, &req.host).and_then(|i| snap.backends.get(i)) else {
        return not_a_backend(snap, ex, &req.host);
    };
    ex.virtual_service = Some(vs.name.to_string());
    let q = ServiceRequest {
        req,
        host: &req.host,
        path: &req.path,
        preferred: req.authority_port.map(|p| (p, "authority port")),
        dest_port: Some(port),
    };
    service_http(snap, &mut ex, vs, &q);
    ex
}

/// The HTTP decision once the virtual service is known: the provider's listener, then its
/// route (a router) or its cluster (a node), as [`Runtime::route_service`] decides.
fn service_http(
    snap: &Snapshot,
    ex: &mut Explanation,
    vs: &VirtualService,
    q: &ServiceRequest<'_>,
) {
    match &vs.provider {
        Provider::Router(router) => {
            ex.provider = Some(format!("virtual router {}", router.name));
            let http_count = router
                .listeners
                .iter()
                .filter(|l| l.protocol.is_http())
                .count();
            let chosen = crate::runtime::choose_router_listener(
                &router.listeners,
                q.preferred.map(|(p, _)| p),
                q.dest_port,
            )
            .map(|(l, why)| {
                let reason = match (why, q.preferred, q.dest_port) {
                    (ListenerChoice::Preferred, Some((p, what)), _) => format!("{what} {p}"),
                    (ListenerChoice::Destination, _, Some(p)) => format!("destination port {p}"),
                    (ListenerChoice::First, _, _) if http_count == 1 => {
                        "only HTTP listener".to_string()
                    }
                    (_, _, Some(p)) => format!("first HTTP listener (no listener on port {p})"),
                    _ => "first HTTP listener".to_string(),
                };
                (l, reason)
            });
            let Some((listener, reason)) = chosen else {
                ex.outcome = Outcome::NoCluster;
                ex.notes
                    .push("503: the router has no HTTP, HTTP/2 or gRPC listener".into());
                return;
            };
            ex.router_listener = Some(format!("{} {}", listener.protocol.as_str(), listener.port));
            ex.listener_reason = Some(reason);
            let parts = RequestParts {
                method: &q.req.method,
                scheme: "http",
                host: q.host,
                port: listener.port,
                path: q.path,
                query: q.req.query.as_deref(),
                headers: &q.req.headers,
            };
            match listener.routes.select(&parts) {
                Some(route) => routed(snap, ex, route),
                None => {
                    ex.outcome = Outcome::NoRoute;
                    ex.tried = listener.routes.routes().iter().map(route_report).collect();
                    ex.notes.push(format!(
                        "404: no route of listener {} {} matched ({} tried)",
                        listener.protocol.as_str(),
                        listener.port,
                        ex.tried.len()
                    ));
                }
            }
        }
        Provider::Node { node, clusters } => {
            ex.provider = Some(format!("virtual node {node}"));
            let http = |id: &&ClusterId| {
                snap.clusters
                    .get(id.0)
                    .is_some_and(|c| c.protocol.is_http())
            };
            let on = |p: u16| {
                clusters
                    .iter()
                    .filter(http)
                    .find(|id| snap.clusters.get(id.0).is_some_and(|c| c.port == p))
            };
            let preferred = q.preferred.and_then(|(p, what)| on(p).map(|id| (id, what)));
            let destination = || q.dest_port.and_then(on).map(|id| (id, "destination port"));
            let (id, reason) = match preferred.or_else(destination) {
                Some((id, why)) => (Some(id), why),
                None => (
                    clusters.iter().find(http),
                    "first HTTP listener of the node",
                ),
            };
            match id.and_then(|id| snap.clusters.get(id.0)) {
                Some(c) => {
                    ex.router_listener = Some(format!("{} {}", c.protocol.as_str(), c.port));
                    ex.listener_reason = Some(reason.into());
                    ex.timeouts = Some(Timeouts::default());
                    ex.retry = Some(RetryPolicy::IMPLICIT);
                    ex.targets.push(TargetReport {
                        node: c.node.clone(),
                        cluster: c.name.clone(),
                        weight: 1,
                        percent: 100.0,
                    });
                    ex.clusters.push(cluster_report(c));
                    ex.outcome = Outcome::Routed;
                    ex.notes.push(
                        "a virtual node provider has no routes: App Mesh's default timeouts and implicit retries apply"
                            .into(),
                    );
                }
                None => {
                    ex.outcome = Outcome::NoCluster;
                    ex.notes
                        .push(format!("503: virtual node {node} has no HTTP listener"));
                }
            }
        }
    }
}

/// Gateway mode, as the proxy decides it: the listener by the port the request arrived on,
/// the first matching gateway route, its rewrites (path, then Host), then the target virtual
/// service's own listener and route.
fn gateway(snap: &Snapshot, gw: &Gateway, req: &ExplainRequest) -> Explanation {
    let port = req.ingress_port.unwrap_or_else(|| req.port());
    let mut ex = Explanation::new(
        ExplainDirection::Gateway,
        req.line(),
        format!("virtual gateway {}", gw.name),
    );
    let listeners = &gw.listeners;
    let (index, reason) = match listeners.iter().position(|l| l.port == port) {
        Some(i) => (Some(i), format!("port {port}")),
        None if listeners.len() == 1 => (
            Some(0),
            format!("only listener (port {port} is not a listener)"),
        ),
        None => (None, String::new()),
    };
    let Some(listener) = index.and_then(|i| listeners.get(i)) else {
        ex.outcome = Outcome::NoListener;
        ex.notes.push(format!(
            "404: the gateway has no listener on port {port} ({} listeners)",
            listeners.len()
        ));
        return ex;
    };
    ex.listener = format!(
        "virtual gateway {} listener {} {} ({reason})",
        gw.name,
        listener.protocol.as_str(),
        listener.port
    );
    let parts = RequestParts {
        method: &req.method,
        scheme: "http",
        host: &req.host,
        port: listener.port,
        path: &req.path,
        query: req.query.as_deref(),
        headers: &req.headers,
    };
    let Some(route) = listener.routes.select(&parts) else {
        ex.outcome = Outcome::NoRoute;
        ex.tried = listener.routes.routes().iter().map(route_report).collect();
        ex.notes.push(format!(
            "404: no gateway route of listener {} {} matched ({} tried)",
            listener.protocol.as_str(),
            listener.port,
            ex.tried.len()
        ));
        return ex;
    };
    ex.gateway_route = Some(route_report(route));
    let action = &route.action;
    let Some(vs) = snap.backends.get(action.service) else {
        ex.outcome = Outcome::NoCluster;
        ex.notes
            .push("503: the gateway route's virtual service is unknown".into());
        return ex;
    };
    let path = rewritten_path(&req.path, &action.rewrite).filter(|p| *p != req.path);
    if let Some(p) = &path {
        ex.rewrites.push(format!("path {} -> {p}", req.path));
    }
    let host = if action.rewrite.hostname {
        if !vs.name.eq_ignore_ascii_case(&req.host) {
            ex.rewrites
                .push(format!("host {} -> {}", req.host, vs.name));
        }
        &*vs.name
    } else {
        req.host.as_str()
    };
    ex.virtual_service = Some(vs.name.to_string());
    let q = ServiceRequest {
        req,
        host,
        path: path.as_deref().unwrap_or(&req.path),
        preferred: action.port.map(|p| (p, "gateway route target port")),
        dest_port: None,
    };
    service_http(snap, &mut ex, vs, &q);
    ex
}

/// The path after a gateway route's rewrite (exact, else the matched prefix replaced, without
/// doubling the `/` after it); None when the route keeps the path.
fn rewritten_path(path: &str, rewrite: &GatewayRewrite) -> Option<String> {
    match (&rewrite.path, &rewrite.prefix) {
        (Some(exact), _) => Some(exact.clone()),
        (None, Some((matched, to))) => path.strip_prefix(matched.as_str()).map(|rest| {
            let rest = if to.ends_with('/') {
                rest.strip_prefix('/').unwrap_or(rest)
            } else {
                rest
            };
            let out = format!("{to}{rest}");
            if out.is_empty() { "/".to_string() } else { out }
        }),
        (None, None) => None,
    }
}

/// Several TCP virtual services on the destination port: the one whose addresses hold the
/// destination address, as [`Runtime::route_tcp`] decides; without an address, the one the
/// URL names (the app resolved that name), else only the candidates.
fn egress_shared_tcp(
    snap: &Snapshot,
    req: &ExplainRequest,
    several: &[usize],
    port: u16,
    addrs: &dyn Fn(&str) -> Option<Vec<IpAddr>>,
) -> Explanation {
    let dst = req
        .dst
        .or_else(|| req.host.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical());
    let services: Vec<(usize, &VirtualService)> = several
        .iter()
        .filter_map(|&i| snap.backends.get(i).map(|vs| (i, vs)))
        .collect();
    let mut candidates: Vec<TcpCandidate> = services
        .iter()
        .map(|(_, vs)| TcpCandidate {
            service: vs.name.to_string(),
            addresses: addrs(&vs.name).map(|mut ips| {
                ips.iter_mut().for_each(|ip| *ip = ip.to_canonical());
                ips.sort_unstable();
                ips.dedup();
                ips
            }),
            chosen: false,
        })
        .collect();
    let names = candidates
        .iter()
        .map(|c| c.service.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let shared = format!("port {port} is shared by TCP services {names}");
    let (pick, note) = match dst {
        Some(ip) => match candidates
            .iter()
            .position(|c| c.addresses.as_ref().is_some_and(|a| a.contains(&ip)))
        {
            Some(k) => (
                Some(k),
                format!(
                    "{shared}: destination {ip} is an address of {}",
                    candidates[k].service
                ),
            ),
            None => {
                let unknown: Vec<&str> = candidates
                    .iter()
                    .filter(|c| c.addresses.is_none())
                    .map(|c| c.service.as_str())
                    .collect();
                let mut note = format!("{shared}: destination {ip} is an address of none of them");
                if !unknown.is_empty() {
                    let _ = write!(note, " (addresses of {} unknown)", unknown.join(", "));
                }
                (None, note)
            }
        },
        None => match candidates
            .iter()
            .position(|c| c.service.eq_ignore_ascii_case(&req.host))
        {
            Some(k) => (
                Some(k),
                format!(
                    "{shared}: the destination address decides; explained as {}, the service the URL names (give --dst IP, or dst=IP, to check an address)",
                    candidates[k].service
                ),
            ),
            None => (
                None,
                format!("{shared}: the destination address decides; give --dst IP (dst=IP)"),
            ),
        },
    };
    let mut ex = match pick.and_then(|k| services.get(k)) {
        Some(&(vs_index, _)) => egress_tcp(snap, req, vs_index, port, true),
        None => {
            let mut ex = Explanation::new(
                ExplainDirection::Egress,
                req.line(),
                format!("egress 15001, TCP (port {port} is a TCP backend port)"),
            );
            ex.outcome = Outcome::NotABackend(snap.egress_filter);
            ex.notes.push(match snap.egress_filter {
                EgressFilter::AllowAll => {
                    "egressFilter ALLOW_ALL: passed through to the original destination".into()
                }
                EgressFilter::DropAll => "egressFilter DROP_ALL: the connection is closed".into(),
            });
            ex
        }
    };
    if let Some(c) = pick.and_then(|k| candidates.get_mut(k)) {
        c.chosen = true;
    }
    ex.tcp_candidates = candidates;
    ex.notes.insert(0, note);
    ex
}

/// The TCP decision for the virtual service at `vs_index`; `shared` when the port has several
/// (the destination address chose it, not the port alone).
fn egress_tcp(
    snap: &Snapshot,
    req: &ExplainRequest,
    vs_index: usize,
    port: u16,
    shared: bool,
) -> Explanation {
    let mut ex = Explanation::new(
        ExplainDirection::Egress,
        req.line(),
        format!("egress 15001, TCP (port {port} is a TCP backend port)"),
    );
    let Some(vs) = snap.backends.get(vs_index) else {
        ex.outcome = Outcome::NoCluster;
        return ex;
    };
    ex.virtual_service = Some(vs.name.to_string());
    if !shared && !vs.name.eq_ignore_ascii_case(&req.host) {
        ex.notes.push(format!(
            "TCP is routed by destination port alone: {port} belongs to {}, whatever the host",
            vs.name
        ));
    }
    match &vs.provider {
        Provider::Router(router) => {
            ex.provider = Some(format!("virtual router {}", router.name));
            let listener = router
                .listeners
                .iter()
                .find(|l| l.protocol == Protocol::Tcp && l.port == port);
            let Some(listener) = listener else {
                ex.outcome = Outcome::NoCluster;
                return ex;
            };
            ex.router_listener = Some(format!("tcp {port}"));
            ex.listener_reason = Some(format!("destination port {port}"));
            match listener.routes.select_tcp(port) {
                Some(route) => {
                    routed(snap, &mut ex, route);
                    // The TCP path applies only the idle timeout, and never retries.
                    ex.timeouts = Some(Timeouts {
                        per_request: None,
                        idle: Timeouts::default().idle,
                    });
                    ex.retry = None;
                }
                None => {
                    ex.outcome = Outcome::NoCluster;
                    ex.tried = listener.routes.routes().iter().map(route_report).collect();
                    ex.notes
                        .push("the connection is refused: no TCP route matches".into());
                }
            }
        }
        Provider::Node { node, clusters } => {
            ex.provider = Some(format!("virtual node {node}"));
            let c = clusters
                .iter()
                .filter_map(|id| snap.clusters.get(id.0))
                .find(|c| c.port == port);
            if let Some(c) = c {
                ex.router_listener = Some(format!("tcp {port}"));
                ex.listener_reason = Some(format!("destination port {port}"));
                ex.timeouts = Some(Timeouts {
                    per_request: None,
                    idle: Timeouts::default().idle,
                });
                ex.targets.push(TargetReport {
                    node: c.node.clone(),
                    cluster: c.name.clone(),
                    weight: 1,
                    percent: 100.0,
                });
                ex.clusters.push(cluster_report(c));
                ex.outcome = Outcome::Routed;
            } else {
                ex.outcome = Outcome::NoCluster;
            }
        }
    }
    ex
}

fn not_a_backend(snap: &Snapshot, mut ex: Explanation, host: &str) -> Explanation {
    ex.outcome = Outcome::NotABackend(snap.egress_filter);
    let names: Vec<&str> = snap.backends.iter().map(|vs| &*vs.name).collect();
    ex.notes.push(format!(
        "{host:?} is not a backend of this node (backends: {})",
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    ));
    ex.notes.push(match snap.egress_filter {
        EgressFilter::AllowAll => {
            "egressFilter ALLOW_ALL: passed through to the original destination".into()
        }
        EgressFilter::DropAll => {
            "egressFilter DROP_ALL: refused (HTTP 404, TCP connection closed)".into()
        }
    });
    ex
}

fn routed(snap: &Snapshot, ex: &mut Explanation, route: &Route<RouteAction>) {
    ex.route = Some(route_report(route));
    ex.timeouts = Some(route.action.timeouts);
    ex.retry = Some(route.action.retry);
    let total = route.action.targets.total();
    for (id, weight) in route.action.targets.iter_all() {
        let Some(c) = snap.clusters.get(id.0) else {
            continue;
        };
        ex.targets.push(TargetReport {
            node: c.node.clone(),
            cluster: c.name.clone(),
            weight,
            percent: if total == 0 {
                0.0
            } else {
                f64::from(weight) * 100.0 / f64::from(total)
            },
        });
        if weight > 0 && !ex.clusters.iter().any(|r| r.name == c.name) {
            ex.clusters.push(cluster_report(c));
        }
    }
    if total == 0 {
        ex.outcome = Outcome::NoCluster;
        ex.notes
            .push("503: every target of the route has weight 0".into());
    } else {
        ex.outcome = Outcome::Routed;
    }
}

fn cluster_report(c: &Cluster) -> ClusterReport {
    let (hostname, note) = match &c.discovery {
        Discovery::Dns { hostname, .. } => (Some(hostname.clone()), None),
        Discovery::None => (
            None,
            Some(format!(
                "virtual node {} has no serviceDiscovery: it cannot be reached",
                c.node
            )),
        ),
    };
    ClusterReport {
        name: c.name.clone(),
        node: c.node.clone(),
        port: c.port,
        hostname,
        endpoints: None,
        endpoints_note: note,
    }
}

fn live_line(e: &EndpointReport) -> EndpointLine {
    let health = match (e.failed_active_hc, e.failed_outlier_check) {
        (false, false) => "healthy",
        (true, false) => "/failed_active_hc",
        (false, true) => "/failed_outlier_check",
        (true, true) => "/failed_active_hc/failed_outlier_check",
    };
    EndpointLine {
        addr: e.addr,
        health: health.into(),
    }
}

fn route_report<T>(r: &Route<T>) -> RouteReport {
    let (kind, summary) = match &r.matcher {
        RouteMatch::Http(m) => ("http", http_summary(m)),
        RouteMatch::Grpc(m) => ("grpc", grpc_summary(m)),
        RouteMatch::Tcp(m) => (
            "tcp",
            m.port
                .map_or_else(|| "any port".to_string(), |p| format!("port {p}")),
        ),
    };
    RouteReport {
        name: r.name.to_string(),
        priority: r.priority,
        kind,
        summary,
    }
}

fn http_summary(m: &HttpMatch) -> String {
    let mut parts = Vec::new();
    match &m.path {
        Some(PathMatch::Prefix(p)) => parts.push(format!("prefix {p}")),
        Some(PathMatch::Exact(p)) => parts.push(format!("path = {p}")),
        Some(PathMatch::Regex(r)) => parts.push(format!("path ~ {}", r.as_str())),
        None => {}
    }
    if let Some(method) = &m.method {
        parts.push(format!("method {method}"));
    }
    if let Some(s) = &m.scheme {
        parts.push(format!("scheme {s}"));
    }
    common_summary(
        &mut parts,
        &m.headers,
        "header",
        m.port,
        m.hostname.as_ref(),
    );
    for q in &m.query {
        parts.push(query_summary(q));
    }
    for c in &m.cookies {
        parts.push(format!(
            "cookie {}{}",
            if c.invert { "not " } else { "" },
            string_summary(&c.name, c.matcher.as_ref())
        ));
    }
    if parts.is_empty() {
        "any request".into()
    } else {
        parts.join(", ")
    }
}

fn grpc_summary(m: &GrpcMatch) -> String {
    let mut parts = Vec::new();
    match (&m.service_name, &m.method_name) {
        (Some(s), Some(meth)) => parts.push(format!("/{s}/{meth}")),
        (Some(s), None) => parts.push(format!("service {s}")),
        (None, Some(meth)) => parts.push(format!("method {meth}")),
        (None, None) => {}
    }
    common_summary(
        &mut parts,
        &m.metadata,
        "metadata",
        m.port,
        m.hostname.as_ref(),
    );
    if parts.is_empty() {
        "any gRPC call".into()
    } else {
        parts.join(", ")
    }
}

fn common_summary(
    parts: &mut Vec<String>,
    headers: &[HeaderMatch],
    what: &str,
    port: Option<u16>,
    host: Option<&HostMatch>,
) {
    for h in headers {
        parts.push(format!(
            "{what} {}{}",
            if h.invert { "not " } else { "" },
            string_summary(h.name.as_str(), h.matcher.as_ref())
        ));
    }
    if let Some(p) = port {
        parts.push(format!("port {p}"));
    }
    match host {
        Some(HostMatch::Exact(h)) => parts.push(format!("host = {h}")),
        Some(HostMatch::Suffix(h)) => parts.push(format!("host ends with {h}")),
        None => {}
    }
}

fn query_summary(q: &QueryMatch) -> String {
    match &q.exact {
        Some(v) => format!("query {} = {v}", q.name),
        None => format!("query {} present", q.name),
    }
}

fn string_summary(name: &str, m: Option<&StringMatch>) -> String {
    match m {
        None => format!("{name} present"),
        Some(StringMatch::Exact(v)) => format!("{name} = {v}"),
        Some(StringMatch::Prefix(v)) => format!("{name} starts with {v}"),
        Some(StringMatch::Suffix(v)) => format!("{name} ends with {v}"),
        Some(StringMatch::Regex(r)) => format!("{name} ~ {}", r.as_str()),
        Some(StringMatch::Range { start, end }) => format!("{name} in [{start}, {end})"),
    }
}

fn duration_text(d: Option<Duration>) -> String {
    match d {
        None => "disabled".into(),
        Some(d) if d.subsec_millis() == 0 => format!("{}s", d.as_secs()),
        Some(d) => format!("{}ms", d.as_millis()),
    }
}

/// The retry policy in one line.
fn retry_text(r: &RetryPolicy) -> String {
    if r.max_retries == 0 {
        return "none".into();
    }
    let mut events = Vec::new();
    let http = [
        (http_retry::SERVER_ERROR, "server-error"),
        (http_retry::GATEWAY_ERROR, "gateway-error"),
        (http_retry::CLIENT_ERROR, "client-error"),
        (http_retry::STREAM_ERROR, "stream-error"),
        (http_retry::STATUS_503, "503"),
    ];
    let grpc = [
        (grpc_retry::CANCELLED, "cancelled"),
        (grpc_retry::DEADLINE_EXCEEDED, "deadline-exceeded"),
        (grpc_retry::INTERNAL, "internal"),
        (grpc_retry::RESOURCE_EXHAUSTED, "resource-exhausted"),
        (grpc_retry::UNAVAILABLE, "unavailable"),
    ];
    events.extend(
        http.iter()
            .filter(|(bit, _)| r.http_events & bit != 0)
            .map(|(_, n)| format!("http {n}")),
    );
    events.extend(
        grpc.iter()
            .filter(|(bit, _)| r.grpc_events & bit != 0)
            .map(|(_, n)| format!("grpc {n}")),
    );
    if r.connection_error {
        events.push("connection-error".into());
    }
    let mut s = format!("{} retries on {}", r.max_retries, events.join(", "));
    if let Some(t) = r.per_retry_timeout {
        let _ = write!(s, "; per retry {}", duration_text(Some(t)));
    }
    if r.implicit {
        s.push_str(" (App Mesh's implicit policy: idempotent requests only)");
    }
    s
}

impl ExplainDirection {
    /// `egress` or `ingress`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExplainDirection::Egress => "egress",
            ExplainDirection::Ingress => "ingress",
            ExplainDirection::Gateway => "gateway",
        }
    }
}

impl Outcome {
    /// A stable one-word name: `routed`, `no_route`, `no_cluster`, `not_a_backend`,
    /// `no_listener`, `transparent`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Routed => "routed",
            Outcome::NoRoute => "no_route",
            Outcome::NoCluster => "no_cluster",
            Outcome::NotABackend(_) => "not_a_backend",
            Outcome::NoListener => "no_listener",
            Outcome::Transparent => "transparent",
        }
    }
}

impl fmt::Display for RouteReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} route", self.name, self.kind)?;
        if let Some(p) = self.priority {
            write!(f, ", priority {p}")?;
        }
        write!(f, "): {}", self.summary)
    }
}

impl fmt::Display for Explanation {
    /// The readable report `outrider explain` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "request:         {}", self.request)?;
        writeln!(f, "direction:       {}", self.direction.as_str())?;
        writeln!(f, "listener:        {}", self.listener)?;
        if let Some(r) = &self.gateway_route {
            writeln!(f, "gateway route:   {r}")?;
            if self.rewrites.is_empty() {
                writeln!(f, "rewrite:         none")?;
            } else {
                writeln!(f, "rewrite:         {}", self.rewrites.join("; "))?;
            }
        }
        if !self.tcp_candidates.is_empty() {
            writeln!(f, "tcp services on this port:")?;
            for c in &self.tcp_candidates {
                write!(f, "  {}", c.service)?;
                match &c.addresses {
                    None => write!(f, " (addresses unknown)")?,
                    Some(a) if a.is_empty() => write!(f, " (no address)")?,
                    Some(a) => {
                        let list: Vec<String> = a.iter().map(ToString::to_string).collect();
                        write!(f, " ({})", list.join(", "))?;
                    }
                }
                if c.chosen {
                    write!(f, " <- chosen")?;
                }
                writeln!(f)?;
            }
        }
        if let Some(vs) = &self.virtual_service {
            writeln!(f, "virtual service: {vs}")?;
        }
        if let Some(p) = &self.provider {
            writeln!(f, "provider:        {p}")?;
        }
        if let Some(l) = &self.router_listener {
            let why = self.listener_reason.as_deref().unwrap_or("");
            writeln!(f, "chosen listener: {l} ({why})")?;
        }
        if let Some(r) = &self.route {
            writeln!(f, "route:           {r}")?;
        }
        if !self.tried.is_empty() {
            writeln!(f, "routes tried, in order:")?;
            for (i, r) in self.tried.iter().enumerate() {
                writeln!(f, "  {}. {r}", i + 1)?;
            }
        }
        if !self.targets.is_empty() {
            writeln!(f, "targets:")?;
            for t in &self.targets {
                writeln!(
                    f,
                    "  {:>5.1}%  {} (weight {}) -> {}",
                    t.percent, t.node, t.weight, t.cluster
                )?;
            }
        }
        if let Some(t) = &self.timeouts {
            writeln!(
                f,
                "timeouts:        per request {}, idle {}",
                duration_text(t.per_request),
                duration_text(t.idle)
            )?;
        }
        if let Some(r) = &self.retry {
            writeln!(f, "retries:         {}", retry_text(r))?;
        }
        for c in &self.clusters {
            write!(f, "cluster:         {}", c.name)?;
            if let Some(h) = &c.hostname {
                write!(f, " (dns {h}:{})", c.port)?;
            }
            writeln!(f)?;
            for e in c.endpoints.iter().flatten() {
                writeln!(f, "  endpoint {} {}", e.addr, e.health)?;
            }
            if let Some(n) = &c.endpoints_note {
                writeln!(f, "  {n}")?;
            }
        }
        writeln!(f, "outcome:         {}", self.outcome.as_str())?;
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        Ok(())
    }
}

impl Explanation {
    /// The JSON `GET /explain` answers with.
    pub fn to_json(&self) -> serde_json::Value {
        let route = |r: &RouteReport| {
            serde_json::json!({
                "name": r.name,
                "priority": r.priority,
                "kind": r.kind,
                "match": r.summary,
            })
        };
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
        serde_json::json!({
            "request": self.request,
            "found": self.found(),
            "outcome": self.outcome.as_str(),
            "egress_filter": match &self.outcome {
                Outcome::NotABackend(EgressFilter::AllowAll) => Some("ALLOW_ALL"),
                Outcome::NotABackend(EgressFilter::DropAll) => Some("DROP_ALL"),
                _ => None,
            },
            "direction": self.direction.as_str(),
            "listener": self.listener,
            "gateway_route": self.gateway_route.as_ref().map(route),
            "rewrites": self.rewrites,
            "tcp_candidates": self.tcp_candidates.iter().map(|c| serde_json::json!({
                "virtual_service": c.service,
                "addresses": c.addresses.as_ref().map(|a| a.iter().map(ToString::to_string).collect::<Vec<_>>()),
                "chosen": c.chosen,
            })).collect::<Vec<_>>(),
            "virtual_service": self.virtual_service,
            "provider": self.provider,
            "chosen_listener": self.router_listener,
            "listener_reason": self.listener_reason,
            "route": self.route.as_ref().map(route),
            "routes_tried": self.tried.iter().map(route).collect::<Vec<_>>(),
            "targets": self.targets.iter().map(|t| serde_json::json!({
                "virtual_node": t.node,
                "cluster": t.cluster,
                "weight": t.weight,
                "percent": t.percent,
            })).collect::<Vec<_>>(),
            "timeouts": self.timeouts.map(|t| serde_json::json!({
                "per_request_s": secs(t.per_request),
                "idle_s": secs(t.idle),
            })),
            "retry": self.retry.map(|r| serde_json::json!({
                "max_retries": r.max_retries,
                "per_retry_timeout_s": secs(r.per_retry_timeout),
                "implicit": r.implicit,
                "summary": retry_text(&r),
            })),
            "clusters": self.clusters.iter().map(|c| serde_json::json!({
                "name": c.name,
                "virtual_node": c.node,
                "port": c.port,
                "hostname": c.hostname,
                "endpoints": c.endpoints.as_ref().map(|es| es.iter().map(|e| serde_json::json!({
                    "address": e.addr.to_string(),
                    "health": e.health,
                })).collect::<Vec<_>>()),
                "note": c.endpoints_note,
            })).collect::<Vec<_>>(),
            "notes": self.notes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrider_config::{Selector, build_from_str};

    fn snapshot(spec: &str, node: &str) -> Snapshot {
        let sel = Selector {
            mesh: None,
            node: Some(node.into()),
            gateway: None,
        };
        match build_from_str("t.yaml", spec, &sel) {
            Ok(b) => b.snapshot,
            Err(p) => panic!("{p:?}"),
        }
    }

    const SPEC: &str = "\
meshName: m
spec: {egressFilter: {type: DROP_ALL}}
---
meshName: m
virtualNodeName: client
spec:
  backends: [{virtualService: {virtualServiceName: svc.local}}, {virtualService: {virtualServiceName: db.local}}]
  listeners: [{portMapping: {port: 8080, protocol: http}}]
  serviceDiscovery: {dns: {hostname: 127.0.0.1}}
---
meshName: m
virtualNodeName: blue
spec:
  listeners: [{portMapping: {port: 9000, protocol: http}}]
  serviceDiscovery: {dns: {hostname: blue.local}}
---
meshName: m
virtualNodeName: green
spec:
  listeners: [{portMapping: {port: 9000, protocol: http}}]
  serviceDiscovery: {dns: {hostname: green.local}}
---
meshName: m
virtualNodeName: pg
spec:
  listeners: [{portMapping: {port: 5432, protocol: tcp}}]
  serviceDiscovery: {dns: {hostname: pg.local}}
---
meshName: m
virtualServiceName: db.local
spec: {provider: {virtualNode: {virtualNodeName: pg}}}
---
meshName: m
virtualRouterName: r
spec:
  listeners: [{portMapping: {port: 9000, protocol: http}}]
---
meshName: m
virtualServiceName: svc.local
spec: {provider: {virtualRouter: {virtualRouterName: r}}}
---
meshName: m
virtualRouterName: r
routeName: api
spec:
  httpRoute:
    match: {prefix: /api, headers: [{name: x-canary, match: {exact: '1'}}]}
    action: {weightedTargets: [{virtualNode: blue, weight: 3}, {virtualNode: green, weight: 1}]}
---
meshName: m
virtualRouterName: r
routeName: exact
spec:
  httpRoute:
    match: {path: {exact: /only}}
    action: {weightedTargets: [{virtualNode: blue, weight: 1}]}
";

    fn req(url: &str, headers: &[&str]) -> ExplainRequest {
        ExplainRequest::parse("GET", url, headers, None).unwrap()
    }

    #[test]
    fn weighted_route_shows_both_shares() {
        let snap = snapshot(SPEC, "client");
        let ex = explain_snapshot(&snap, &req("http://svc.local/api/x", &["x-canary: 1"]));
        assert_eq!(ex.outcome, Outcome::Routed);
        assert_eq!(ex.route.as_ref().unwrap().name, "api");
        assert_eq!(ex.router_listener.as_deref(), Some("http 9000"));
        assert_eq!(ex.listener_reason.as_deref(), Some("only HTTP listener"));
        let shares: Vec<_> = ex
            .targets
            .iter()
            .map(|t| (t.node.as_str(), t.percent))
            .collect();
        assert_eq!(shares, vec![("blue", 75.0), ("green", 25.0)]);
        assert_eq!(ex.clusters.len(), 2);
        assert_eq!(ex.retry, Some(RetryPolicy::IMPLICIT));
        let text = ex.to_string();
        assert!(text.contains("75.0%"), "{text}");
        assert!(text.contains("idempotent"), "{text}");
    }

    #[test]
    fn no_route_lists_routes_in_order() {
        let snap = snapshot(SPEC, "client");
        let ex = explain_snapshot(&snap, &req("http://svc.local/api/x", &[]));
        assert_eq!(ex.outcome, Outcome::NoRoute);
        assert!(!ex.found());
        let names: Vec<_> = ex.tried.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec!["exact", "api"]);
        assert_eq!(ex.tried[1].summary, "prefix /api, header x-canary = 1");
    }

    #[test]
    fn unknown_host_follows_the_egress_filter() {
        let snap = snapshot(SPEC, "client");
        let ex = explain_snapshot(&snap, &req("http://other.local/", &[]));
        assert_eq!(ex.outcome, Outcome::NotABackend(EgressFilter::DropAll));
        assert!(!ex.found());
        assert!(ex.notes.iter().any(|n| n.contains("DROP_ALL")));
    }

    #[test]
    fn tcp_goes_by_port_and_node_provider() {
        let snap = snapshot(SPEC, "client");
        let ex = explain_snapshot(&snap, &req("tcp://db.local:5432", &[]));
        assert_eq!(ex.outcome, Outcome::Routed);
        assert_eq!(ex.provider.as_deref(), Some("virtual node pg"));
        assert_eq!(ex.clusters[0].hostname.as_deref(), Some("pg.local"));
        assert_eq!(ex.retry, None);
    }

    #[test]
    fn ingress_uses_the_node_listener() {
        let snap = snapshot(SPEC, "client");
        let r = ExplainRequest::parse::<&str>("GET", "http://x/", &[], Some(8080)).unwrap();
        let ex = explain_snapshot(&snap, &r);
        assert_eq!(ex.direction, ExplainDirection::Ingress);
        assert_eq!(ex.outcome, Outcome::Routed);
        assert_eq!(ex.retry, Some(NO_RETRY));
        assert_eq!(ex.clusters[0].name, "cds_ingress_m_client_http_8080");
    }

    #[test]
    fn resolved_endpoints_are_filled() {
        let snap = snapshot(SPEC, "client");
        let mut ex = explain_snapshot(&snap, &req("http://svc.local/only", &[]));
        ex.fill_resolved(|host, port| {
            if host == "blue.local" {
                Ok(vec![SocketAddr::from(([10, 0, 0, 1], port))])
            } else {
                Err("no such host".into())
            }
        });
        let eps = ex.clusters[0].endpoints.as_ref().unwrap();
        assert_eq!(eps[0].addr.to_string(), "10.0.0.1:9000");
        let json = ex.to_json();
        assert_eq!(json["found"], true);
        assert_eq!(json["route"]["name"], "exact");
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(matches!(
            ExplainRequest::parse::<&str>("G E T", "http://a/", &[], None),
            Err(ExplainError::Method(_))
        ));
        assert!(matches!(
            ExplainRequest::parse::<&str>("GET", "http://", &[], None),
            Err(ExplainError::Url(_))
        ));
        assert!(matches!(
            ExplainRequest::parse("GET", "http://a/", &["nocolon"], None),
            Err(ExplainError::Header(_))
        ));
        let r = ExplainRequest::parse::<&str>("get", "svc.local:81/p?q=1", &[], None).unwrap();
        assert_eq!(
            (r.port(), r.path.as_str(), r.query.as_deref()),
            (81, "/p", Some("q=1"))
        );
    }
}
