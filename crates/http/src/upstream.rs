//! One upstream cluster at run time: its endpoints, balancer, connection pools and stats.

use std::net::SocketAddr;
use std::time::Duration;

use outrider_balance::{Algorithm, Balancer};
use outrider_config::Protocol;
use outrider_telemetry::ClusterStats;

use crate::pool::PoolSet;

/// A cluster (one listener of a target virtual node, a local app port, or the pass-through
/// destinations) as the proxy uses it.
pub struct Upstream {
    name: String,
    protocol: Protocol,
    pub(crate) balancer: Balancer,
    pub(crate) pools: PoolSet,
    pub(crate) stats: ClusterStats,
    connect_timeout: Duration,
}

impl Upstream {
    /// A cluster with no endpoints yet; feed it with [`Upstream::set_endpoints`].
    pub fn new(
        name: &str,
        protocol: Protocol,
        algorithm: Algorithm,
        connect_timeout: Duration,
    ) -> Self {
        let stats = ClusterStats::new(name);
        Upstream {
            name: name.to_string(),
            protocol,
            balancer: Balancer::new(algorithm),
            pools: PoolSet::new(stats.clone()),
            stats,
            connect_timeout,
        }
    }

    /// The pass-through cluster used by `egressFilter: ALLOW_ALL` for unknown destinations.
    pub fn passthrough(name: &str, connect_timeout: Duration) -> Self {
        let stats = ClusterStats::new(name);
        Upstream {
            name: name.to_string(),
            protocol: Protocol::Http,
            balancer: Balancer::new(Algorithm::RoundRobin),
            pools: PoolSet::passthrough(stats.clone()),
            stats,
            connect_timeout,
        }
    }

    /// App Mesh's cluster name, e.g. `cds_egress_mesh_node_http_8080`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The protocol spoken to the endpoints.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Connect timeout for new connections. Default is 5 s.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Replaces the endpoint set. Requests in flight on removed endpoints finish normally.
    pub fn set_endpoints(&self, addrs: &[SocketAddr]) {
        self.balancer.update(addrs);
        self.pools.retain(addrs);
        self.stats.membership_total.set(addrs.len() as f64);
        let healthy = self
            .balancer
            .endpoints()
            .iter()
            .filter(|e| e.is_available())
            .count();
        self.stats.membership_healthy.set(healthy as f64);
    }

    /// Endpoint addresses with their health, for `/clusters`.
    pub fn endpoint_report(&self) -> Vec<EndpointReport> {
        self.balancer
            .endpoints()
            .iter()
            .map(|e| EndpointReport {
                addr: e.addr(),
                healthy: e.is_available(),
                in_flight: e.in_flight(),
                idle_connections: self
                    .pools
                    .pools()
                    .iter()
                    .find(|p| p.addr() == e.addr())
                    .map_or(0, |p| p.idle_count()),
            })
            .collect()
    }
}

/// One endpoint as `/clusters` shows it.
#[derive(Debug, Clone)]
pub struct EndpointReport {
    pub addr: SocketAddr,
    pub healthy: bool,
    pub in_flight: u32,
    pub idle_connections: usize,
}
