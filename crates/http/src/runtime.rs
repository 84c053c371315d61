//! The run-time view of one snapshot: clusters with their pools, and the indexes that turn a
//! request's authority or a connection's original port into a decision.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use outrider_balance::Algorithm;
use outrider_config::{
    ClusterId, ConnectionPool, EgressFilter, Protocol, Provider, RetryPolicy, RouteAction,
    Snapshot, Timeouts,
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

/// Everything a listener needs from one snapshot.
pub struct Runtime {
    snapshot: Arc<Snapshot>,
    clusters: Vec<Arc<Upstream>>,
    locals: Vec<Arc<Upstream>>,
    passthrough: Arc<Upstream>,
    hosts: HashMap<Box<str>, usize>,
    tcp_ports: HashMap<u16, usize>,
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
        let mut hosts = HashMap::new();
        let mut tcp_ports = HashMap::new();
        for (i, vs) in snapshot.backends.iter().enumerate() {
            hosts
                .entry(vs.name.to_ascii_lowercase().into_boxed_str())
                .or_insert(i);
            match &vs.provider {
                Provider::Router(r) => {
                    for l in r.listeners.iter().filter(|l| l.protocol == Protocol::Tcp) {
                        tcp_ports.entry(l.port).or_insert(i);
                    }
                }
                Provider::Node { clusters, .. } => {
                    for id in clusters {
                        if let Some(c) = snapshot.clusters.get(id.0)
                            && c.protocol == Protocol::Tcp
                        {
                            tcp_ports.entry(c.port).or_insert(i);
                        }
                    }
                }
            }
        }
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
                let http_listeners = || router.listeners.iter().filter(|l| l.protocol.is_http());
                let chosen = authority_port
                    .and_then(|p| http_listeners().find(|l| l.port == p))
                    .or_else(|| orig_port.and_then(|p| http_listeners().find(|l| l.port == p)))
                    .or_else(|| http_listeners().next());
                let Some(listener) = chosen else {
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

    /// Decides an egress TCP connection by its original destination.
    pub fn route_tcp(&self, orig: Option<SocketAddr>) -> TcpDecision<'_> {
        let Some(orig) = orig else {
            return TcpDecision::Deny;
        };
        if let Some(&vs_index) = self.tcp_ports.get(&orig.port()) {
            let vs = &self.snapshot.backends[vs_index];
            let id = match &vs.provider {
                Provider::Router(router) => router
                    .listeners
                    .iter()
                    .find(|l| l.protocol == Protocol::Tcp && l.port == orig.port())
                    .and_then(|l| l.routes.select_tcp(orig.port()))
                    .and_then(|r| r.action.targets.pick().copied()),
                Provider::Node { clusters, .. } => clusters.iter().copied().find(|id| {
                    self.snapshot
                        .clusters
                        .get(id.0)
                        .is_some_and(|c| c.port == orig.port())
                }),
            };
            return match id.and_then(|id| self.cluster(id)) {
                Some(upstream) => TcpDecision::Cluster {
                    upstream,
                    idle: Timeouts::default().idle,
                },
                None => TcpDecision::Deny,
            };
        }
        match self.snapshot.egress_filter {
            EgressFilter::AllowAll => TcpDecision::Passthrough(orig),
            EgressFilter::DropAll => TcpDecision::Deny,
        }
    }

    /// True when an egress connection to this original port should be treated as TCP without
    /// looking at its bytes (a TCP virtual service's port).
    pub fn is_tcp_port(&self, port: u16) -> bool {
        self.tcp_ports.contains_key(&port)
    }
}
