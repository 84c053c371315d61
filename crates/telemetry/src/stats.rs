//! Envoy-named metrics. Handles are registered once per cluster or listener when a snapshot is
//! built, so the request path only does atomic increments: no name lookup, no lock.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Envoy's default histogram buckets for `*_rq_time` and `*_cx_length_ms`, in milliseconds.
const TIME_BUCKETS_MS: &[f64] = &[
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// How often the Prometheus recorder drains its histogram buffers. The exporter's docs ask for
/// an upkeep every few seconds when its own HTTP listener is not used.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once) and returns its handle. Must run before
/// any stats handle is created, or those handles record nothing.
pub fn install_metrics() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_time".into()), TIME_BUCKETS_MS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_ms".into()), TIME_BUCKETS_MS));
        let builder = match builder {
            Ok(b) => b,
            // Only fails on an empty bucket list, which the constant is not.
            Err(_) => PrometheusBuilder::new(),
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (tests); keep ours for rendering anyway.
        let _ = metrics::set_global_recorder(recorder);
        let upkeep = handle.clone();
        let _ = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_INTERVAL);
                    upkeep.run_upkeep();
                }
            });
        handle
    })
}

/// The Prometheus exposition text of every metric.
pub fn prometheus_text() -> String {
    let handle = install_metrics();
    handle.run_upkeep();
    handle.render()
}

/// Envoy's response code class label (`1`..`5`), or `None` outside 100–599.
pub fn response_class(status: u16) -> Option<usize> {
    match status {
        100..=599 => Some((status / 100) as usize),
        _ => None,
    }
}

/// Upstream cluster statistics, `envoy_cluster_*{envoy_cluster_name="..."}`.
#[derive(Clone)]
pub struct ClusterStats {
    pub rq_total: Counter,
    /// Indexed by class 1..=5 (index 0 unused).
    rq_xx: [Counter; 6],
    pub rq_time: Histogram,
    pub rq_timeout: Counter,
    pub rq_retry: Counter,
    pub rq_retry_success: Counter,
    pub rq_pending_overflow: Counter,
    pub cx_total: Counter,
    pub cx_active: Gauge,
    pub cx_connect_fail: Counter,
    pub cx_connect_timeout: Counter,
    pub membership_total: Gauge,
    pub membership_healthy: Gauge,
}

impl ClusterStats {
    /// Registers (or finds) the handles of one cluster.
    pub fn new(cluster: &str) -> Self {
        install_metrics();
        let name = cluster.to_string();
        let c = |metric: &'static str| counter!(metric, "envoy_cluster_name" => name.clone());
        let xx = |class: &'static str| counter!("envoy_cluster_upstream_rq_xx", "envoy_response_code_class" => class, "envoy_cluster_name" => name.clone());
        ClusterStats {
            rq_total: c("envoy_cluster_upstream_rq_total"),
            rq_xx: [Counter::noop(), xx("1"), xx("2"), xx("3"), xx("4"), xx("5")],
            rq_time: histogram!("envoy_cluster_upstream_rq_time", "envoy_cluster_name" => name.clone()),
            rq_timeout: c("envoy_cluster_upstream_rq_timeout"),
            rq_retry: c("envoy_cluster_upstream_rq_retry"),
            rq_retry_success: c("envoy_cluster_upstream_rq_retry_success"),
            rq_pending_overflow: c("envoy_cluster_upstream_rq_pending_overflow"),
            cx_total: c("envoy_cluster_upstream_cx_total"),
            cx_active: gauge!("envoy_cluster_upstream_cx_active", "envoy_cluster_name" => name.clone()),
            cx_connect_fail: c("envoy_cluster_upstream_cx_connect_fail"),
            cx_connect_timeout: c("envoy_cluster_upstream_cx_connect_timeout"),
            membership_total: gauge!("envoy_cluster_membership_total", "envoy_cluster_name" => name.clone()),
            membership_healthy: gauge!("envoy_cluster_membership_healthy", "envoy_cluster_name" => name),
        }
    }

    /// Counts one finished upstream request with its status and time since `start`.
    pub fn record_response(&self, status: u16, start: Instant) {
        if let Some(class) = response_class(status) {
            self.rq_xx[class].increment(1);
        }
        self.rq_time.record(start.elapsed().as_secs_f64() * 1000.0);
    }
}

/// Downstream statistics of one listener, `envoy_http_downstream_*` and
/// `envoy_listener_downstream_*` with `envoy_http_conn_manager_prefix` = `ingress` | `egress`.
#[derive(Clone)]
pub struct ListenerStats {
    pub rq_total: Counter,
    rq_xx: [Counter; 6],
    pub rq_time: Histogram,
    pub cx_total: Counter,
    pub cx_active: Gauge,
    pub tcp_cx_total: Counter,
    pub tcp_bytes_received: Counter,
    pub tcp_bytes_sent: Counter,
}

impl ListenerStats {
    /// Registers (or finds) the handles of one listener (`ingress` or `egress`).
    pub fn new(prefix: &'static str) -> Self {
        install_metrics();
        let c = |metric: &'static str| counter!(metric, "envoy_http_conn_manager_prefix" => prefix);
        let xx = |class: &'static str| counter!("envoy_http_downstream_rq_xx", "envoy_response_code_class" => class, "envoy_http_conn_manager_prefix" => prefix);
        let t = |metric: &'static str| counter!(metric, "envoy_tcp_prefix" => prefix);
        ListenerStats {
            rq_total: c("envoy_http_downstream_rq_total"),
            rq_xx: [Counter::noop(), xx("1"), xx("2"), xx("3"), xx("4"), xx("5")],
            rq_time: histogram!("envoy_http_downstream_rq_time", "envoy_http_conn_manager_prefix" => prefix),
            cx_total: c("envoy_http_downstream_cx_total"),
            cx_active: gauge!("envoy_http_downstream_cx_active", "envoy_http_conn_manager_prefix" => prefix),
            tcp_cx_total: t("envoy_tcp_downstream_cx_total"),
            tcp_bytes_received: t("envoy_tcp_downstream_cx_rx_bytes_total"),
            tcp_bytes_sent: t("envoy_tcp_downstream_cx_tx_bytes_total"),
        }
    }

    /// Counts one finished downstream request.
    pub fn record_response(&self, status: u16, start: Instant) {
        if let Some(class) = response_class(status) {
            self.rq_xx[class].increment(1);
        }
        self.rq_time.record(start.elapsed().as_secs_f64() * 1000.0);
    }
}

/// Process-level statistics: `envoy_server_live`, `envoy_server_uptime`, memory.
pub struct ServerStats {
    started: Instant,
    live: Gauge,
    uptime: Gauge,
    memory_allocated: Gauge,
}

impl ServerStats {
    pub fn new() -> Self {
        install_metrics();
        let live = gauge!("envoy_server_live");
        live.set(1.0);
        ServerStats {
            started: Instant::now(),
            live,
            uptime: gauge!("envoy_server_uptime"),
            memory_allocated: gauge!("envoy_server_memory_allocated"),
        }
    }

    /// Refreshes the gauges that are sampled rather than counted (call before rendering).
    pub fn refresh(&self, live: bool) {
        self.live.set(if live { 1.0 } else { 0.0 });
        self.uptime.set(self.started.elapsed().as_secs() as f64);
        if let Some(rss) = resident_bytes() {
            self.memory_allocated.set(rss as f64);
        }
    }

    /// Seconds since the process started serving.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Default for ServerStats {
    fn default() -> Self {
        Self::new()
    }
}

/// Resident set size from /proc/self/statm, in bytes.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
