//! The run-time view of one snapshot: clusters with their pools, and the indexes that turn a
//! request's authority or a connection's original destination into a decision.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use outrider_balance::Algorithm;
use outrider_config::{
    ClusterId, ConnectionPool, EgressFilter, Protocol, Provider, RetryPolicy, RouteAction,
    RouterListener, Snapshot, Timeouts,
};
use outrider_policy::RetryBudgetConfig;
use outrider_route::{RequestParts, RouteTable};

use crate::access::AccessLog;
use crate::upstream::{Upstream, UpstreamPolicy};

/// Retry policy for traffic to the local app (ingress): App Mesh applies route retries on the
/// client side only.
pub const NO_RETRY: RetryPolicy = RetryPolicy {
    max_retries: 0,
    per_retry_timeout: None,
    http_events: 0,
    grpc_events: 0,
    connection_error: false,
    implicit: false,
};

/// Name of the pass-through cluster (`egressFilter: ALLOW_ALL`).
pub const PASSTHROUGH_CLUSTER: &str = "passthrough";

/// Options for building a [`Runtime`].
#[derive(Debug, Clone, Copy)]
pub struct RuntimeOptions {
    /// Endpoint choice. Default is P2C over peak EWMA.
    pub algorithm: Algorithm,
    /// Default is 5 s.
    pub connect_timeout: Duration,
    /// Retry budget of every egress cluster (extension, not App Mesh: App Mesh has no retry
    /// budget and allows unbounded concurrent retries). Default is 20 % of requests in flight,
    /// at least 3 retries.
    pub retry_budget: RetryBudgetConfig,
    /// Client-side circuit breaking (extension, not App Mesh): when true, this proxy also
    /// applies the TARGET node listener's `connectionPool` to its own egress traffic toward
    /// that listener's cluster, so one client cannot overrun it alone. App Mesh applies
    /// `connectionPool` only on the target's own proxy. Default is false.
    pub client_side_limits: bool,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            algorithm: Algorithm::P2c,
            connect_timeout: outrider_transport::DEFAULT_CONNECT_TIMEOUT,
            retry_budget: RetryBudgetConfig::default(),
            client_side_limits: false,
        }
    }
}

/// Where an HTTP request goes.
pub enum HttpDecision<'a> {
    /// To a cluster, with the route's policies.
    Cluster {
        upstream: &'a Arc<Upstream>,
        timeouts: Timeouts,
        retry: RetryPolicy,
        route: Option<&'a str>,
    },
    /// The authority names a backend, but no route matches (404, Envoy's NR).
    NoRoute,
    /// A route matched but every target has weight 0, or the provider has no listener.
    NoCluster,
    /// The authority is not a backend of this node: the egress filter decides.
    Unknown(EgressFilter),
}

/// Where a TCP connection goes.
pub enum TcpDecision<'a> {
    Cluster {
        upstream: &'a Arc<Upstream>,
        idle: Option<Duration>,
    },
    /// Forward to the original destination unchanged (ALLOW_ALL, or no config).
    Passthrough(SocketAddr),
    /// Refuse (DROP_ALL, or nowhere to go).
    Deny,
}

/// The addresses a TCP virtual service's name resolves to, as the app resolved it before
/// connecting. Two TCP virtual services on the same port are told apart by which of them the
/// connection's original destination address belongs to, as App Mesh's Envoy did. The app keeps
/// the set current with a DNS watch of [`ServiceAddrs::name`]; it starts empty, and a reload
/// keeps the set of a service whose name did not change.
#[derive(Debug)]
pub struct ServiceAddrs {
    name: Box<str>,
    port: u16,
    /// Sorted, deduplicated, IPv4-mapped IPv6 addresses turned into IPv4. Swapped whole so
    /// the connection path reads it without a lock.
    ips: ArcSwap<Vec<IpAddr>>,
}

/// Why [`choose_router_listener`] chose a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerChoice {
    /// The port the request named (the authority's, or a gateway route target's).
    Preferred,
    /// The original destination port of the connection.
    Destination,
    /// Neither named one of the router's HTTP listeners: its first (often only) one.
    First,
}

/// The HTTP (http, http2, grpc) listener of a router that serves a request: the one on the
/// preferred port, else on the destination port, else the first. Routing and `explain` both
/// use it, so what `explain` reports is what the proxy does.
pub fn choose_router_listener(
    listeners: &[RouterListener],
    preferred: Option<u16>,
    destination: Option<u16>,
) -> Option<(&RouterListener, ListenerChoice)> {
    let on = |p: u16| {
        listeners
            .iter()
            .find(|l| l.protocol.is_http() && l.port == p)
    };
    preferred
        .and_then(on)
        .map(|l| (l, ListenerChoice::Preferred))
        .or_else(|| {
            destination
                .and_then(on)
                .map(|l| (l, ListenerChoice::Destination))
        })
        .or_else(|| {
            listeners
                .iter()
                .find(|l| l.protocol.is_http())
                .map(|l| (l, ListenerChoice::First))
        })
}

/// A fast, unkeyed hash for the virtual-service host table, looked up once per request.
/// SipHash (std's default) cost about 600 instructions per lookup here. Flooding is no concern:
/// the keys come from the config, and requests only look up, never insert.
#[derive(Default, Clone, Copy)]
struct HostHasher(u64);

/// An odd constant with well-spread bits (from the golden ratio), for multiplicative mixing.
const HOST_HASH_MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

impl std::hash::Hasher for HostHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(c);
            self.mix(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, b: u8) {
        self.mix(u64::from(b));
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl HostHasher {
    fn mix(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(HOST_HASH_MULTIPLIER);
    }
}

type BuildHostHasher = std::hash::BuildHasherDefault<HostHasher>;

/// Everything a listener needs from one snapshot.
pub struct Runtime {
    snapshot: Arc<Snapshot>,
    clusters: Vec<Arc<Upstream>>,
    locals: Vec<Arc<Upstream>>,
    passthrough: Arc<Upstream>,
    hosts: HashMap<Box<str>, usize, BuildHostHasher>,
    /// Original port to the TCP virtual services on it (indexes of `snapshot.backends`), in
    /// backend order.
    tcp_ports: HashMap<u16, Vec<usize>>,
    /// Parallel to `snapshot.backends`: the resolved addresses of a TCP virtual service that
    /// shares a port with another one; None for every other service.
    tcp_addrs: Vec<Option<Arc<ServiceAddrs>>>,
    /// True when there is no config at all: a transparent pass-through sidecar.
    transparent: bool,
    /// The node's access log, if it has one.
    access_log: Option<Arc<AccessLog>>,
}

impl Runtime {
    /// Builds the run-time view. Clusters of `previous` with the same name are reused, so pools,
    /// endpoint state and discovery survive a reload.
    pub fn new(snapshot: Arc<Snapshot>, previous: Option<&Runtime>, opts: RuntimeOptions) -> Self {
        let reuse = |name: &str, protocol: Protocol, policy: &UpstreamPolicy| {
            let prev = previous?;
            prev.clusters
                .iter()
                .chain(prev.locals.iter())
                .find(|u| u.name() == name && u.protocol() == protocol && u.policy() == policy)
                .cloned()
        };
        let clusters: Vec<Arc<Upstream>> = snapshot
            .clusters
            .iter()
            .map(|c| {
                let policy = UpstreamPolicy {
                    connection_pool: if opts.client_side_limits {
                        c.connection_pool
                    } else {
                        ConnectionPool::default()
                    },
                    health_check: c.health_check.clone(),
                    outlier_detection: c.outlier_detection.clone(),
                    retry_budget: opts.retry_budget,
                };
                reuse(&c.name, c.protocol, &policy).unwrap_or_else(|| {
                    Arc::new(Upstream::with_policy(
                        &c.name,
                        c.protocol,
                        opts.algorithm,
                        opts.connect_timeout,
                        policy,
                    ))
                })
            })
            .collect();
        for (up, c) in clusters.iter().zip(&snapshot.clusters) {
            up.set_client_tls(c.tls.as_ref());
        }
        // A gateway has no local app behind its listeners.
        let local_listeners = match snapshot.gateway {
            Some(_) => &[][..],
            None => &snapshot.listeners[..],
        };
        let locals = local_listeners
            .iter()
            .map(|l| {
                // Limits toward the local app are the listener's own `connectionPool`.
                let policy = UpstreamPolicy {
                    connection_pool: l.connection_pool,
                    retry_budget: opts.retry_budget,
                    ..UpstreamPolicy::default()
                };
                let up = reuse(&l.cluster_name, l.protocol, &policy).unwrap_or_else(|| {
                    Arc::new(Upstream::with_policy(
                        &l.cluster_name,
                        l.protocol,
                        Algorithm::RoundRobin,
                        opts.connect_timeout,
                        policy,
                    ))
                });
                up.set_endpoints(&[SocketAddr::from(([127, 0, 0, 1], l.port))]);
                up
            })
            .collect();
        let passthrough = previous.map(|p| p.passthrough.clone()).unwrap_or_else(|| {
            Arc::new(Upstream::passthrough(
                PASSTHROUGH_CLUSTER,
                opts.connect_timeout,
            ))
        });
        let mut hosts = HashMap::with_hasher(BuildHostHasher::default());
        let mut tcp_ports: HashMap<u16, Vec<usize>> = HashMap::new();
        let mut add_tcp = |port: u16, i: usize| {
            let services = tcp_ports.entry(port).or_default();
            if !services.contains(&i) {
                services.push(i);
            }
        };
        for (i, vs) in snapshot.backends.iter().enumerate() {
            hosts
                .entry(vs.name.to_ascii_lowercase().into_boxed_str())
                .or_insert(i);
            match &vs.provider {
                Provider::Router(r) => {
                    for l in r.listeners.iter().filter(|l| l.protocol == Protocol::Tcp) {
                        add_tcp(l.port, i);
                    }
                }
                Provider::Node { clusters, .. } => {
                    for id in clusters {
                        if let Some(c) = snapshot.clusters.get(id.0)
                            && c.protocol == Protocol::Tcp
                        {
                            add_tcp(c.port, i);
                        }
                    }
                }
            }
        }
        let tcp_addrs = shared_port_addrs(&snapshot, &tcp_ports, previous);
        // Keep the open log (and its writer thread) when a reload did not change it.
        let access_log = snapshot.access_log.as_ref().and_then(|cfg| {
            if let Some(prev) = previous.and_then(|p| p.access_log.as_ref())
                && prev.config() == cfg
            {
                return Some(prev.clone());
            }
            match AccessLog::open(cfg) {
                Ok(log) => Some(Arc::new(log)),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot open the access log; requests are not logged");
                    None
                }
            }
        });
        Runtime {
            snapshot,
            clusters,
            locals,
            passthrough,
            hosts,
            tcp_ports,
            tcp_addrs,
            transparent: false,
            access_log,
        }
    }

    /// The transparent sidecar with an access log (`--access-log`).
    pub fn transparent_with_log(
        opts: RuntimeOptions,
        log: Option<outrider_config::AccessLog>,
    ) -> Self {
        let mut rt = Runtime::transparent(opts);
        if let Some(cfg) = log {
            match AccessLog::open(&cfg) {
                Ok(l) => rt.access_log = Some(Arc::new(l)),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot open the access log; requests are not logged")
                }
            }
        }
        rt
    }

    /// The access log requests and connections are written to, if any.
    pub fn access_log(&self) -> Option<&Arc<AccessLog>> {
        self.access_log.as_ref()
    }

    /// The runtime of `outrider run` without `--config`: everything passes through.
    pub fn transparent(opts: RuntimeOptions) -> Self {
        let snapshot = Arc::new(Snapshot {
            hash: String::new(),
            mesh: Arc::from(""),
            identity: outrider_config::Identity::VirtualNode(String::new()),
            egress_filter: EgressFilter::AllowAll,
            listeners: Vec::new(),
            backends: Vec::new(),
            clusters: Vec::new(),
            access_log: None,
            gateway: None,
        });
        let mut rt = Runtime::new(snapshot, None, opts);
        rt.transparent = true;
        rt
    }

    /// The snapshot this runtime was built from.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    /// True for the config-less pass-through sidecar.
    pub fn is_transparent(&self) -> bool {
        self.transparent
    }

    /// Upstream clusters, parallel to `snapshot().clusters`.
    pub fn clusters(&self) -> &[Arc<Upstream>] {
        &self.clusters
    }

    /// Local app clusters, parallel to `snapshot().listeners`.
    pub fn locals(&self) -> &[Arc<Upstream>] {
        &self.locals
    }

    /// The pass-through cluster.
    pub fn passthrough(&self) -> &Arc<Upstream> {
        &self.passthrough
    }

    /// Closes idle HTTP/1.1 upstream connections that their upstream closed or that expired,
    /// in every cluster (run every [`crate::POOL_SWEEP_INTERVAL`]).
    pub fn sweep_idle_connections(&self) {
        for upstream in self.clusters.iter().chain(&self.locals) {
            upstream.sweep_idle();
        }
        self.passthrough.sweep_idle();
    }

    fn cluster(&self, id: ClusterId) -> Option<&Arc<Upstream>> {
        self.clusters.get(id.0)
    }

    /// The node listener an inbound connection belongs to: by original port, else the only one.
    pub fn ingress_listener(&self, orig_port: Option<u16>) -> Option<usize> {
        let listeners = &self.snapshot.listeners;
        if let Some(port) = orig_port
            && let Some(i) = listeners.iter().position(|l| l.port == port)
        {
            return Some(i);
        }
        if listeners.len() == 1 { Some(0) } else { None }
    }

    /// Decides an egress HTTP request. `authority_port` is the port written in the authority;
    /// `orig_port` the original destination port of a redirected connection.
    pub fn route_http<'a>(
        &'a self,
        parts: &RequestParts<'_>,
        authority_port: Option<u16>,
        orig_port: Option<u16>,
    ) -> HttpDecision<'a> {
        let Some(&vs_index) = self.lookup_host(parts.host) else {
            return HttpDecision::Unknown(self.snapshot.egress_filter);
        };
        self.route_service(vs_index, parts, authority_port, orig_port)
    }

    /// Decides an HTTP request to the virtual service at `vs_index` of
    /// `snapshot().backends`, as egress does once the authority named it: `port` (then
    /// `orig_port`) picks the provider's listener, else its first HTTP one. An index out of
    /// range gives [`HttpDecision::NoCluster`].
    pub fn route_service<'a>(
        &'a self,
        vs_index: usize,
        parts: &RequestParts<'_>,
        port: Option<u16>,
        orig_port: Option<u16>,
    ) -> HttpDecision<'a> {
        let authority_port = port;
        let Some(vs) = self.snapshot.backends.get(vs_index) else {
            return HttpDecision::NoCluster;
        };
        match &vs.provider {
            Provider::Router(router) => {
                let Some((listener, _)) =
                    choose_router_listener(&router.listeners, authority_port, orig_port)
                else {
                    return HttpDecision::NoCluster;
                };
                let parts = RequestParts {
                    port: listener.port,
                    ..*parts
                };
                self.select(&listener.routes, &parts)
            }
            Provider::Node { clusters, .. } => {
                let pick = |p: u16| {
                    clusters.iter().copied().find(|id| {
                        self.snapshot
                            .clusters
                            .get(id.0)
                            .is_some_and(|c| c.port == p && c.protocol.is_http())
                    })
                };
                let id = authority_port
                    .and_then(pick)
                    .or_else(|| orig_port.and_then(pick))
                    .or_else(|| {
                        clusters.iter().copied().find(|id| {
                            self.snapshot
                                .clusters
                                .get(id.0)
                                .is_some_and(|c| c.protocol.is_http())
                        })
                    });
                match id.and_then(|id| self.cluster(id)) {
                    Some(upstream) => HttpDecision::Cluster {
                        upstream,
                        timeouts: Timeouts::default(),
                        retry: RetryPolicy::IMPLICIT,
                        route: None,
                    },
                    None => HttpDecision::NoCluster,
                }
            }
        }
    }

    fn select<'a>(
        &'a self,
        table: &'a RouteTable<RouteAction>,
        parts: &RequestParts<'_>,
    ) -> HttpDecision<'a> {
        let Some(route) = table.select(parts) else {
            return HttpDecision::NoRoute;
        };
        match route.action.targets.pick().and_then(|id| self.cluster(*id)) {
            Some(upstream) => HttpDecision::Cluster {
                upstream,
                timeouts: route.action.timeouts,
                retry: route.action.retry,
                route: Some(&route.name),
            },
            None => HttpDecision::NoCluster,
        }
    }

    fn lookup_host(&self, host: &str) -> Option<&usize> {
        if self.hosts.is_empty() {
            return None;
        }
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.hosts.get(host.to_ascii_lowercase().as_str())
        } else {
            self.hosts.get(host)
        }
    }

    /// Decides an egress TCP connection by its original destination: the TCP virtual service
    /// on its port, or, when several share the port, the one whose name resolves to its
    /// address (see [`ServiceAddrs`]). A port no TCP service uses, or a shared port where no
    /// service's addresses hold the destination, follows the egress filter: ALLOW_ALL passes
    /// through to `orig`, DROP_ALL denies. No destination at all is denied.
    pub fn route_tcp(&self, orig: Option<SocketAddr>) -> TcpDecision<'_> {
        let Some(orig) = orig else {
            return TcpDecision::Deny;
        };
        let chosen = match self.tcp_ports.get(&orig.port()).map(Vec::as_slice) {
            None => None,
            Some(&[only]) => Some(only),
            Some(several) => {
                let ip = orig.ip().to_canonical();
                several.iter().copied().find(|&i| {
                    self.tcp_addrs
                        .get(i)
                        .and_then(Option::as_ref)
                        .is_some_and(|addrs| addrs.contains(ip))
                })
            }
        };
        match chosen {
            Some(vs_index) => self.tcp_service(vs_index, orig.port()),
            None => match self.snapshot.egress_filter {
                EgressFilter::AllowAll => TcpDecision::Passthrough(orig),
                EgressFilter::DropAll => TcpDecision::Deny,
            },
        }
    }

    /// The cluster of the TCP virtual service at `vs_index` for a connection to `port`.
    fn tcp_service(&self, vs_index: usize, port: u16) -> TcpDecision<'_> {
        let Some(vs) = self.snapshot.backends.get(vs_index) else {
            return TcpDecision::Deny;
        };
        let id = match &vs.provider {
            Provider::Router(router) => router
                .listeners
                .iter()
                .find(|l| l.protocol == Protocol::Tcp && l.port == port)
                .and_then(|l| l.routes.select_tcp(port))
                .and_then(|r| r.action.targets.pick().copied()),
            Provider::Node { clusters, .. } => clusters.iter().copied().find(|id| {
                self.snapshot
                    .clusters
                    .get(id.0)
                    .is_some_and(|c| c.port == port)
            }),
        };
        match id.and_then(|id| self.cluster(id)) {
            Some(upstream) => TcpDecision::Cluster {
                upstream,
                idle: Timeouts::default().idle,
            },
            None => TcpDecision::Deny,
        }
    }

    /// The address sets of the TCP virtual services that share a port with another one, each
    /// once: the names the app must keep resolved for [`Runtime::route_tcp`] to tell them
    /// apart. Empty when no two TCP services share a port.
    pub fn tcp_service_addrs(&self) -> impl Iterator<Item = &Arc<ServiceAddrs>> {
        self.tcp_addrs.iter().flatten()
    }

    /// True when an egress connection to this original port should be treated as TCP without
    /// looking at its bytes (a TCP virtual service's port).
    pub fn is_tcp_port(&self, port: u16) -> bool {
        self.tcp_ports.contains_key(&port)
    }
}

impl ServiceAddrs {
    /// An empty address set for the virtual service `name`, which listens on `port`.
    pub fn new(name: &str, port: u16) -> Self {
        ServiceAddrs {
            name: name.into(),
            port,
            ips: ArcSwap::from_pointee(Vec::new()),
        }
    }

    /// The virtual service name to resolve.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A port the service listens on (one of those it shares); the addresses do not depend on
    /// it, but a DNS watch publishes endpoints with a port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Replaces the addresses (the name's latest DNS answer). Cheap to call with an unchanged
    /// set: nothing is swapped then.
    pub fn set(&self, ips: impl IntoIterator<Item = IpAddr>) {
        let mut next: Vec<IpAddr> = ips.into_iter().map(|ip| ip.to_canonical()).collect();
        next.sort_unstable();
        next.dedup();
        if **self.ips.load() != next {
            self.ips.store(Arc::new(next));
        }
    }

    /// True when `ip` is one of the addresses (an IPv4-mapped IPv6 address matches its IPv4
    /// form). Lock-free.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.ips.load().binary_search(&ip.to_canonical()).is_ok()
    }

    /// The current addresses, sorted.
    pub fn current(&self) -> Arc<Vec<IpAddr>> {
        self.ips.load_full()
    }
}

/// The address sets of the TCP services on a port with more than one, parallel to
/// `snapshot.backends`. A service of `previous` with the same name keeps its set (and its DNS
/// watch in the app), so a reload does not forget the addresses.
fn shared_port_addrs(
    snapshot: &Snapshot,
    tcp_ports: &HashMap<u16, Vec<usize>>,
    previous: Option<&Runtime>,
) -> Vec<Option<Arc<ServiceAddrs>>> {
    let mut addrs: Vec<Option<Arc<ServiceAddrs>>> = vec![None; snapshot.backends.len()];
    for (&port, services) in tcp_ports.iter().filter(|(_, s)| s.len() > 1) {
        for &i in services {
            let (Some(slot), Some(vs)) = (addrs.get_mut(i), snapshot.backends.get(i)) else {
                continue;
            };
            if slot.is_some() {
                continue;
            }
            let kept = previous.and_then(|p| p.tcp_service_addrs().find(|a| a.name() == &*vs.name));
            *slot = Some(
                kept.cloned()
                    .unwrap_or_else(|| Arc::new(ServiceAddrs::new(&vs.name, port))),
            );
        }
    }
    addrs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn router_listener_choice_order() {
        let l = |port, protocol| RouterListener {
            port,
            protocol,
            routes: outrider_route::RouteTable::default(),
        };
        let ls = [
            l(9000, Protocol::Tcp),
            l(8080, Protocol::Http),
            l(8443, Protocol::Http2),
        ];
        let pick = |a, d| choose_router_listener(&ls, a, d).map(|(l, why)| (l.port, why));
        assert_eq!(
            pick(Some(8443), Some(8080)),
            Some((8443, ListenerChoice::Preferred))
        );
        assert_eq!(
            pick(Some(1), Some(8443)),
            Some((8443, ListenerChoice::Destination))
        );
        // A TCP listener never serves HTTP, even on the named port.
        assert_eq!(pick(Some(9000), None), Some((8080, ListenerChoice::First)));
        assert_eq!(
            choose_router_listener(&ls[..1], None, None).map(|(l, _)| l.port),
            None
        );
    }
    use outrider_config::{Selector, build_from_str};

    /// Two TCP services on port 9000 (a node provider and a router), one alone on 5432.
    fn spec(egress_filter: &str) -> String {
        format!(
            "\
meshName: m
spec: {{egressFilter: {{type: {egress_filter}}}}}
---
meshName: m
virtualNodeName: client
spec:
  backends:
    - {{virtualService: {{virtualServiceName: a.local}}}}
    - {{virtualService: {{virtualServiceName: b.local}}}}
    - {{virtualService: {{virtualServiceName: cache.local}}}}
  listeners: [{{portMapping: {{port: 8080, protocol: http}}}}]
  serviceDiscovery: {{dns: {{hostname: 127.0.0.1}}}}
---
meshName: m
virtualNodeName: db-a
spec:
  listeners: [{{portMapping: {{port: 9000, protocol: tcp}}}}]
  serviceDiscovery: {{dns: {{hostname: db-a.internal}}}}
---
meshName: m
virtualNodeName: db-b
spec:
  listeners: [{{portMapping: {{port: 7000, protocol: tcp}}}}]
  serviceDiscovery: {{dns: {{hostname: db-b.internal}}}}
---
meshName: m
virtualNodeName: cache
spec:
  listeners: [{{portMapping: {{port: 5432, protocol: tcp}}}}]
  serviceDiscovery: {{dns: {{hostname: cache.internal}}}}
---
meshName: m
virtualServiceName: a.local
spec: {{provider: {{virtualNode: {{virtualNodeName: db-a}}}}}}
---
meshName: m
virtualRouterName: b-router
spec:
  listeners: [{{portMapping: {{port: 9000, protocol: tcp}}}}]
---
meshName: m
virtualRouterName: b-router
routeName: to-b
spec:
  tcpRoute:
    action: {{weightedTargets: [{{virtualNode: db-b, weight: 1}}]}}
---
meshName: m
virtualServiceName: b.local
spec: {{provider: {{virtualRouter: {{virtualRouterName: b-router}}}}}}
---
meshName: m
virtualServiceName: cache.local
spec: {{provider: {{virtualNode: {{virtualNodeName: cache}}}}}}
"
        )
    }

    fn runtime(egress_filter: &str, previous: Option<&Runtime>) -> Runtime {
        let sel = Selector {
            mesh: None,
            node: Some("client".into()),
            gateway: None,
        };
        let snap = match build_from_str("t.yaml", &spec(egress_filter), &sel) {
            Ok(b) => b.snapshot,
            Err(p) => panic!("{p:?}"),
        };
        Runtime::new(Arc::new(snap), previous, RuntimeOptions::default())
    }

    fn addrs<'a>(rt: &'a Runtime, name: &str) -> &'a Arc<ServiceAddrs> {
        rt.tcp_service_addrs()
            .find(|a| a.name() == name)
            .unwrap_or_else(|| panic!("no address set for {name}"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The node name in the chosen cluster's name, "passthrough:<addr>" or "deny".
    fn decide(rt: &Runtime, orig: &str) -> String {
        match rt.route_tcp(Some(orig.parse().unwrap())) {
            TcpDecision::Cluster { upstream, .. } => upstream.name().to_string(),
            TcpDecision::Passthrough(addr) => format!("passthrough:{addr}"),
            TcpDecision::Deny => "deny".to_string(),
        }
    }

    #[test]
    fn only_services_sharing_a_port_are_watched() {
        let rt = runtime("DROP_ALL", None);
        let mut names: Vec<_> = rt
            .tcp_service_addrs()
            .map(|a| (a.name().to_string(), a.port()))
            .collect();
        names.sort();
        assert_eq!(
            names,
            [("a.local".to_string(), 9000), ("b.local".to_string(), 9000)]
        );
        assert!(rt.is_tcp_port(9000) && rt.is_tcp_port(5432));
    }

    #[test]
    fn shared_port_is_split_by_destination_address() {
        let rt = runtime("DROP_ALL", None);
        addrs(&rt, "a.local").set([ip("10.0.0.1"), ip("10.0.0.2")]);
        addrs(&rt, "b.local").set([ip("10.0.1.1"), ip("fd00::1")]);
        assert_eq!(decide(&rt, "10.0.0.2:9000"), "cds_egress_m_db-a_tcp_9000");
        assert_eq!(decide(&rt, "10.0.1.1:9000"), "cds_egress_m_db-b_tcp_7000");
        assert_eq!(decide(&rt, "[fd00::1]:9000"), "cds_egress_m_db-b_tcp_7000");
        // An IPv4 connection seen through a dual-stack socket still matches.
        assert_eq!(
            decide(&rt, "[::ffff:10.0.0.1]:9000"),
            "cds_egress_m_db-a_tcp_9000"
        );
        // Neither service's address: the egress filter decides.
        assert_eq!(decide(&rt, "10.9.9.9:9000"), "deny");
        // A port with one TCP service needs no address.
        assert_eq!(decide(&rt, "10.9.9.9:5432"), "cds_egress_m_cache_tcp_5432");
        assert_eq!(decide(&rt, "10.0.0.1:5433"), "deny");
        assert!(matches!(rt.route_tcp(None), TcpDecision::Deny));
    }

    #[test]
    fn unmatched_address_passes_through_with_allow_all() {
        let rt = runtime("ALLOW_ALL", None);
        assert_eq!(decide(&rt, "10.0.0.1:9000"), "passthrough:10.0.0.1:9000");
        addrs(&rt, "a.local").set([ip("10.0.0.1")]);
        assert_eq!(decide(&rt, "10.0.0.1:9000"), "cds_egress_m_db-a_tcp_9000");
        // A new DNS answer moves the service.
        addrs(&rt, "a.local").set([ip("10.0.0.3")]);
        assert_eq!(decide(&rt, "10.0.0.1:9000"), "passthrough:10.0.0.1:9000");
        assert_eq!(decide(&rt, "10.0.0.3:9000"), "cds_egress_m_db-a_tcp_9000");
    }

    #[test]
    fn reload_keeps_the_address_sets() {
        let old = runtime("DROP_ALL", None);
        addrs(&old, "b.local").set([ip("10.0.1.1")]);
        let new = runtime("ALLOW_ALL", Some(&old));
        assert!(Arc::ptr_eq(addrs(&old, "b.local"), addrs(&new, "b.local")));
        assert_eq!(decide(&new, "10.0.1.1:9000"), "cds_egress_m_db-b_tcp_7000");
    }

    #[test]
    fn address_sets_are_sorted_and_deduplicated() {
        let a = ServiceAddrs::new("x", 1);
        a.set([ip("10.0.0.2"), ip("::ffff:10.0.0.1"), ip("10.0.0.2")]);
        assert_eq!(*a.current(), [ip("10.0.0.1"), ip("10.0.0.2")]);
        assert!(a.contains(ip("10.0.0.1")));
        assert!(!a.contains(ip("10.0.0.3")));
    }
}
