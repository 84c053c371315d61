//! One upstream cluster at run time: its endpoints, balancer, connection pools, stats, and the
//! resilience state around them (retry budget, circuit breaker, outlier detection, health
//! checks).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use metrics::{Counter, Gauge, counter, gauge};
use outrider_balance::{Algorithm, Balancer, Endpoint, OutlierConfig, OutlierDetector};
use outrider_config::{ConnectionPool, HealthCheck, OutlierDetection, Protocol};
use outrider_policy::{Limiter, LimiterConfig, RetryBudget, RetryBudgetConfig};
use outrider_telemetry::ClusterStats;
use outrider_tls::ClientTls;
use tokio::task::AbortHandle;

use crate::pool::{Origination, PoolSet};

/// Requests allowed to wait for an HTTP/1 connection when `connectionPool.http` sets
/// `maxConnections` but not `maxPendingRequests` (Envoy's default). Default is 1024.
pub const DEFAULT_MAX_PENDING_REQUESTS: u32 = 1024;

/// The resilience settings of one cluster. Two clusters with equal policies can share state
/// across a reload.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UpstreamPolicy {
    /// Circuit-breaker limits. Default is unlimited.
    pub connection_pool: ConnectionPool,
    /// Active health check of every endpoint. Default is none.
    pub health_check: Option<HealthCheck>,
    /// Passive ejection. Default is none.
    pub outlier_detection: Option<OutlierDetection>,
    /// Retry budget. Default is 20 % of requests in flight, at least 3.
    pub retry_budget: RetryBudgetConfig,
}

/// Counters Envoy has and `ClusterStats` does not, registered with Envoy's names.
pub(crate) struct ResilienceStats {
    pub(crate) rq_retry_overflow: Counter,
    pub(crate) cx_overflow: Counter,
    pub(crate) hc_attempt: Counter,
    pub(crate) hc_success: Counter,
    pub(crate) hc_failure: Counter,
    pub(crate) ejections_active: Gauge,
    pub(crate) ejections_total: Counter,
}

impl ResilienceStats {
    fn new(cluster: &str) -> Self {
        let l = || ("envoy_cluster_name", cluster.to_string());
        ResilienceStats {
            rq_retry_overflow: counter!("envoy_cluster_upstream_rq_retry_overflow", &[l()]),
            cx_overflow: counter!("envoy_cluster_upstream_cx_overflow", &[l()]),
            hc_attempt: counter!("envoy_cluster_health_check_attempt", &[l()]),
            hc_success: counter!("envoy_cluster_health_check_success", &[l()]),
            hc_failure: counter!("envoy_cluster_health_check_failure", &[l()]),
            ejections_active: gauge!("envoy_cluster_outlier_detection_ejections_active", &[l()]),
            ejections_total: counter!("envoy_cluster_outlier_detection_ejections_total", &[l()]),
        }
    }
}

/// A cluster (one listener of a target virtual node, a local app port, or the pass-through
/// destinations) as the proxy uses it.
pub struct Upstream {
    name: String,
    protocol: Protocol,
    pub(crate) balancer: Balancer,
    pub(crate) pools: PoolSet,
    pub(crate) stats: ClusterStats,
    pub(crate) extra: ResilienceStats,
    connect_timeout: Duration,
    policy: UpstreamPolicy,
    pub(crate) budget: RetryBudget,
    pub(crate) limiter: Option<Limiter>,
    pub(crate) outlier: Option<OutlierDetector>,
    /// Health-check tasks by endpoint, and the outlier sweeper; not on the request path.
    tasks: Mutex<Tasks>,
}

#[derive(Default)]
struct Tasks {
    checkers: HashMap<SocketAddr, AbortHandle>,
    sweeper: Option<AbortHandle>,
}

impl Upstream {
    /// A cluster with no endpoints yet and no resilience policy beyond the default retry
    /// budget; feed it with [`Upstream::set_endpoints`].
    pub fn new(
        name: &str,
        protocol: Protocol,
        algorithm: Algorithm,
        connect_timeout: Duration,
    ) -> Self {
        Self::with_policy(
            name,
            protocol,
            algorithm,
            connect_timeout,
            UpstreamPolicy::default(),
        )
    }

    /// A cluster with a resilience policy. Health checks and the outlier sweeper start with
    /// the first endpoints (inside a Tokio runtime).
    pub fn with_policy(
        name: &str,
        protocol: Protocol,
        algorithm: Algorithm,
        connect_timeout: Duration,
        policy: UpstreamPolicy,
    ) -> Self {
        let stats = ClusterStats::new(name);
        Upstream {
            name: name.to_string(),
            protocol,
            balancer: Balancer::new(algorithm),
            pools: PoolSet::new(stats.clone()),
            extra: ResilienceStats::new(name),
            stats,
            connect_timeout,
            budget: RetryBudget::new(policy.retry_budget),
            limiter: limiter(protocol, &policy.connection_pool).map(Limiter::new),
            outlier: policy.outlier_detection.as_ref().map(|od| {
                OutlierDetector::new(
                    OutlierConfig {
                        max_errors: od.max_server_errors,
                        interval: od.interval,
                        base_ejection: od.base_ejection_duration,
                        max_ejection_percent: od.max_ejection_percent,
                    },
                    tokio::time::Instant::now().into_std(),
                )
            }),
            policy,
            tasks: Mutex::new(Tasks::default()),
        }
    }

    /// The pass-through cluster used by `egressFilter: ALLOW_ALL` for unknown destinations.
    pub fn passthrough(name: &str, connect_timeout: Duration) -> Self {
        let mut up = Self::new(name, Protocol::Http, Algorithm::RoundRobin, connect_timeout);
        up.pools = PoolSet::passthrough(up.stats.clone());
        up
    }

    /// App Mesh's cluster name, e.g. `cds_egress_mesh_node_http_8080`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The protocol spoken to the endpoints.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The resilience settings this cluster was built with.
    pub fn policy(&self) -> &UpstreamPolicy {
        &self.policy
    }

    /// Connect timeout for new connections. Default is 5 s.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Applies the cluster's client-policy TLS (`None`: plaintext). Unchanged settings keep
    /// the pools; a change drops pooled connections so that new ones use the new setting. When
    /// the files cannot be used, connects fail instead of falling back to plaintext.
    pub fn set_client_tls(&self, tls: Option<&outrider_config::ClientTls>) {
        let current = self.pools.origination();
        let same = match (&*current, tls) {
            (Origination::Plain, None) => true,
            (Origination::Tls(t), Some(spec)) => t.spec() == spec,
            _ => false,
        };
        if same {
            return;
        }
        let next = match tls {
            None => Origination::Plain,
            Some(spec) => match ClientTls::new(spec, self.protocol.is_h2()) {
                Ok(t) => Origination::Tls(t),
                Err(err) => {
                    tracing::error!(cluster = self.name(), error = %err, "client TLS unusable: connections to this cluster will fail");
                    Origination::Broken(Arc::from(err.to_string()))
                }
            },
        };
        self.pools.set_origination(next);
    }

    /// Replaces the endpoint set. Requests in flight on removed endpoints finish normally.
    /// Starts a health checker per new endpoint and stops those of removed ones.
    pub fn set_endpoints(self: &Arc<Self>, addrs: &[SocketAddr]) {
        self.balancer.update(addrs);
        self.pools.retain(addrs);
        self.stats.membership_total.set(addrs.len() as f64);
        self.refresh_membership();
        self.reconcile_tasks(addrs);
    }

    /// Closes idle HTTP/1.1 connections that the upstream closed or that expired.
    pub fn sweep_idle(&self) {
        self.pools.sweep_idle();
    }

    /// Recounts healthy endpoints and active ejections into the gauges.
    pub(crate) fn refresh_membership(&self) {
        let eps = self.balancer.endpoints();
        let healthy = eps.iter().filter(|e| e.is_available()).count();
        self.stats.membership_healthy.set(healthy as f64);
        if self.outlier.is_some() {
            self.extra
                .ejections_active
                .set(OutlierDetector::active(&eps) as f64);
        }
    }

    fn reconcile_tasks(self: &Arc<Self>, addrs: &[SocketAddr]) {
        if self.policy.health_check.is_none() && self.outlier.is_none() {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Ok(mut tasks) = self.tasks.lock() else {
            return;
        };
        if let Some(hc) = &self.policy.health_check {
            tasks.checkers.retain(|addr, task| {
                let keep = addrs.contains(addr);
                if !keep {
                    task.abort();
                }
                keep
            });
            for &addr in addrs {
                if let std::collections::hash_map::Entry::Vacant(slot) = tasks.checkers.entry(addr)
                {
                    let task =
                        handle.spawn(crate::health::run(Arc::downgrade(self), addr, hc.clone()));
                    slot.insert(task.abort_handle());
                }
            }
        }
        if let Some(od) = &self.outlier
            && tasks.sweeper.is_none()
        {
            let task = handle.spawn(sweep(Arc::downgrade(self), od.config().interval));
            tasks.sweeper = Some(task.abort_handle());
        }
    }

    /// Records a server error or connect failure on `ep` for outlier detection.
    pub(crate) fn record_outlier_error(&self, ep: &Endpoint) {
        let Some(od) = &self.outlier else {
            return;
        };
        let eps = self.balancer.endpoints();
        if od.record_error(ep, &eps, tokio::time::Instant::now().into_std()) {
            tracing::info!(cluster = self.name(), addr = %ep.addr(), "endpoint ejected by outlier detection");
            self.extra.ejections_total.increment(1);
            self.refresh_membership();
        }
    }

    /// The live endpoint of `addr`, if still in the set.
    pub(crate) fn endpoint(&self, addr: SocketAddr) -> Option<Arc<Endpoint>> {
        self.balancer
            .endpoints()
            .iter()
            .find(|e| e.addr() == addr)
            .cloned()
    }

    /// Endpoint addresses with their health, for `/clusters`.
    pub fn endpoint_report(&self) -> Vec<EndpointReport> {
        self.balancer
            .endpoints()
            .iter()
            .map(|e| EndpointReport {
                addr: e.addr(),
                healthy: e.is_available(),
                failed_active_hc: !e.is_healthy(),
                failed_outlier_check: e.is_ejected(),
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

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.get_mut() {
            for task in tasks.checkers.values() {
                task.abort();
            }
            if let Some(s) = &tasks.sweeper {
                s.abort();
            }
        }
    }
}

/// The circuit-breaker limits that apply to `protocol`, if any.
fn limiter(protocol: Protocol, pool: &ConnectionPool) -> Option<LimiterConfig> {
    match protocol {
        Protocol::Http => pool.max_connections.map(|max| LimiterConfig {
            max_concurrent: max,
            max_pending: pool
                .max_pending_requests
                .unwrap_or(DEFAULT_MAX_PENDING_REQUESTS),
        }),
        Protocol::Http2 | Protocol::Grpc => pool.max_requests.map(|max| LimiterConfig {
            max_concurrent: max,
            max_pending: 0,
        }),
        Protocol::Tcp => pool.max_connections.map(|max| LimiterConfig {
            max_concurrent: max,
            max_pending: 0,
        }),
    }
}

/// Once per outlier interval: restart error windows and bring back endpoints whose ejection
/// is over. Ends when the cluster is gone.
async fn sweep(upstream: Weak<Upstream>, interval: Duration) {
    let interval = interval.max(Duration::from_millis(1));
    loop {
        tokio::time::sleep(interval).await;
        let Some(up) = upstream.upgrade() else {
            return;
        };
        if let Some(od) = &up.outlier {
            let eps = up.balancer.endpoints();
            let back = od.sweep(&eps, tokio::time::Instant::now().into_std());
            if back > 0 {
                tracing::info!(
                    cluster = up.name(),
                    endpoints = back,
                    "ejected endpoints restored"
                );
            }
        }
        up.refresh_membership();
    }
}

/// One endpoint as `/clusters` shows it.
#[derive(Debug, Clone)]
pub struct EndpointReport {
    pub addr: SocketAddr,
    /// Eligible for new requests outside panic mode.
    pub healthy: bool,
    /// The active health check says unhealthy (`/failed_active_hc`).
    pub failed_active_hc: bool,
    /// Ejected by outlier detection (`/failed_outlier_check`).
    pub failed_outlier_check: bool,
    pub in_flight: u32,
    pub idle_connections: usize,
}
