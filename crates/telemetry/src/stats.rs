//! Envoy-named metrics. Handles are registered once per cluster or listener when a snapshot is
//! built, so the request path only does atomic increments: no name lookup, no lock.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit, counter, gauge, histogram,
};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::statsd::{
    DEFAULT_FLUSH_INTERVAL, DEFAULT_STATSD_ADDRESS, DEFAULT_STATSD_PORT, StatsdOptions,
    StatsdRecorder, StatsdTarget,
};

/// Envoy's default histogram buckets for `*_rq_time` and `*_cx_length_ms`, in milliseconds.
const TIME_BUCKETS_MS: &[f64] = &[
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// How often the Prometheus recorder drains its histogram buffers. The exporter's docs ask for
/// an upkeep every few seconds when its own HTTP listener is not used.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Prometheus label names of App Mesh's stats tags (`ENABLE_ENVOY_STATS_TAGS`); over DogStatsD
/// they become `appmesh.mesh` and `appmesh.virtual_node`.
const MESH_LABEL: &str = "appmesh_mesh";
const VIRTUAL_NODE_LABEL: &str = "appmesh_virtual_node";

/// Global labels added to every metric when `ENABLE_ENVOY_STATS_TAGS=1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsTags {
    /// The mesh name (`appmesh.mesh`).
    pub mesh: String,
    /// The virtual node (or gateway) name (`appmesh.virtual_node`).
    pub virtual_node: String,
}

/// Process-wide metrics setup. Default is Prometheus only, without global labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TelemetryOptions {
    /// Also send every metric to a StatsD / DogStatsD agent. Default is `None`.
    pub statsd: Option<StatsdOptions>,
    /// App Mesh stats tags on every metric. Default is `None`.
    pub stats_tags: Option<StatsTags>,
}

/// Metrics setup that cannot be honoured.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// An environment variable has a value that cannot be used.
    #[error("invalid {name}={value:?}: {reason}")]
    InvalidEnv {
        name: &'static str,
        value: String,
        reason: &'static str,
    },
    /// The StatsD client socket could not be created.
    #[error("statsd socket: {0}")]
    Socket(#[from] std::io::Error),
    /// A recorder was installed before these (non-default) options could take effect.
    #[error("metrics were already installed; StatsD and stats tags must be set up first")]
    AlreadyInstalled,
}

impl TelemetryOptions {
    /// Reads the App Mesh Envoy image variables from the process environment: see
    /// [`TelemetryOptions::from_lookup`].
    pub fn from_env(mesh: &str, virtual_node: &str) -> Result<Self, TelemetryError> {
        Self::from_lookup(|k| std::env::var(k).ok(), mesh, virtual_node)
    }

    /// Reads `ENABLE_ENVOY_DOG_STATSD` (1 enables), `STATSD_ADDRESS` (default 127.0.0.1),
    /// `STATSD_PORT` (default 8125), `STATSD_SOCKET_PATH` (a unix datagram socket, wins over the
    /// address), `STATSD_TAGS` (0 sends plain StatsD; default 1) and `ENABLE_ENVOY_STATS_TAGS`
    /// (1 adds `mesh` and `virtual_node` as global labels) through `lookup`.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
        mesh: &str,
        virtual_node: &str,
    ) -> Result<Self, TelemetryError> {
        let flag = |name: &'static str| -> Result<Option<bool>, TelemetryError> {
            match lookup(name).as_deref().map(str::trim) {
                None | Some("") => Ok(None),
                Some("1") | Some("true") => Ok(Some(true)),
                Some("0") | Some("false") => Ok(Some(false)),
                Some(v) => Err(TelemetryError::InvalidEnv {
                    name,
                    value: v.to_string(),
                    reason: "expected 1 or 0",
                }),
            }
        };
        let mut opts = TelemetryOptions::default();
        if flag("ENABLE_ENVOY_STATS_TAGS")? == Some(true) {
            opts.stats_tags = Some(StatsTags {
                mesh: mesh.to_string(),
                virtual_node: virtual_node.to_string(),
            });
        }
        if flag("ENABLE_ENVOY_DOG_STATSD")? != Some(true) {
            return Ok(opts);
        }
        let target = match lookup("STATSD_SOCKET_PATH").filter(|p| !p.trim().is_empty()) {
            Some(path) => StatsdTarget::Unix(path.trim().into()),
            None => {
                let ip = match lookup("STATSD_ADDRESS").filter(|a| !a.trim().is_empty()) {
                    None => DEFAULT_STATSD_ADDRESS,
                    Some(a) => {
                        a.trim()
                            .parse::<IpAddr>()
                            .map_err(|_| TelemetryError::InvalidEnv {
                                name: "STATSD_ADDRESS",
                                value: a.clone(),
                                reason: "expected an IP address",
                            })?
                    }
                };
                let port = match lookup("STATSD_PORT").filter(|p| !p.trim().is_empty()) {
                    None => DEFAULT_STATSD_PORT,
                    Some(p) => p
                        .trim()
                        .parse::<u16>()
                        .map_err(|_| TelemetryError::InvalidEnv {
                            name: "STATSD_PORT",
                            value: p.clone(),
                            reason: "expected a port number",
                        })?,
                };
                StatsdTarget::Udp(SocketAddr::new(ip, port))
            }
        };
        opts.statsd = Some(StatsdOptions {
            target,
            tags: flag("STATSD_TAGS")?.unwrap_or(true),
            // Outrider's own variable (not in the App Mesh image): how often samples are sent.
            flush_interval: match lookup("STATSD_FLUSH_INTERVAL_MS")
                .filter(|v| !v.trim().is_empty())
            {
                None => DEFAULT_FLUSH_INTERVAL,
                Some(v) => match v.trim().parse::<u64>() {
                    Ok(ms) if ms > 0 => std::time::Duration::from_millis(ms),
                    _ => {
                        return Err(TelemetryError::InvalidEnv {
                            name: "STATSD_FLUSH_INTERVAL_MS",
                            value: v,
                            reason: "expected a positive number of milliseconds",
                        });
                    }
                },
            },
        });
        Ok(opts)
    }

    fn global_labels(&self) -> Vec<(String, String)> {
        match &self.stats_tags {
            Some(t) => vec![
                (MESH_LABEL.to_string(), t.mesh.clone()),
                (VIRTUAL_NODE_LABEL.to_string(), t.virtual_node.clone()),
            ],
            None => Vec::new(),
        }
    }
}

/// Installs the process-wide Prometheus recorder (once) and returns its handle. Must run before
/// any stats handle is created, or those handles record nothing. Same as
/// [`install_metrics_with`] with default options (no StatsD, no stats tags).
pub fn install_metrics() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| install(&TelemetryOptions::default(), None))
}

/// Installs the process-wide recorder with `opts`: Prometheus, plus a StatsD sink fed by the
/// same handles when `opts.statsd` is set. Call it first in the process: when a recorder is
/// already installed, default options succeed and anything else is `AlreadyInstalled`.
pub fn install_metrics_with(
    opts: &TelemetryOptions,
) -> Result<&'static PrometheusHandle, TelemetryError> {
    if let Some(handle) = HANDLE.get() {
        return if *opts == TelemetryOptions::default() {
            Ok(handle)
        } else {
            Err(TelemetryError::AlreadyInstalled)
        };
    }
    let statsd = match &opts.statsd {
        Some(s) => Some(StatsdRecorder::new(s, &opts.global_labels())?),
        None => None,
    };
    let mut ours = false;
    let handle = HANDLE.get_or_init(|| {
        ours = true;
        install(opts, statsd)
    });
    if ours || *opts == TelemetryOptions::default() {
        Ok(handle)
    } else {
        Err(TelemetryError::AlreadyInstalled)
    }
}

/// Builds the Prometheus recorder with Envoy's buckets and the global labels.
fn prometheus_recorder(opts: &TelemetryOptions) -> PrometheusRecorder {
    let labelled = || {
        let mut builder = PrometheusBuilder::new();
        for (k, v) in opts.global_labels() {
            builder = builder.add_global_label(k, v);
        }
        builder
    };
    let with_buckets = labelled()
        .set_buckets_for_metric(Matcher::Suffix("_time".into()), TIME_BUCKETS_MS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_ms".into()), TIME_BUCKETS_MS));
    match with_buckets {
        Ok(b) => b.build_recorder(),
        // Only fails on an empty bucket list, which the constant is not.
        Err(_) => labelled().build_recorder(),
    }
}

/// Builds the global recorder (Prometheus alone, or fanned out to StatsD) and starts upkeep.
fn install(opts: &TelemetryOptions, statsd: Option<StatsdRecorder>) -> PrometheusHandle {
    let prom = prometheus_recorder(opts);
    let handle = prom.handle();
    // Another recorder may already be installed (tests); keep ours for rendering anyway.
    match statsd {
        Some(statsd) => {
            let _ = metrics::set_global_recorder(Fanout { prom, statsd });
        }
        None => {
            let _ = metrics::set_global_recorder(prom);
        }
    }
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
}

/// Sends every registration to Prometheus and StatsD; each handle updates both.
struct Fanout {
    prom: PrometheusRecorder,
    statsd: StatsdRecorder,
}

/// A pair of handles updated together.
struct Both<T>(T, T);

impl Recorder for Fanout {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.statsd
            .describe_counter(key.clone(), unit, description.clone());
        self.prom.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.statsd
            .describe_gauge(key.clone(), unit, description.clone());
        self.prom.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.statsd
            .describe_histogram(key.clone(), unit, description.clone());
        self.prom.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        Counter::from_arc(Arc::new(Both(
            self.prom.register_counter(key, metadata),
            self.statsd.register_counter(key, metadata),
        )))
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(Arc::new(Both(
            self.prom.register_gauge(key, metadata),
            self.statsd.register_gauge(key, metadata),
        )))
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(Arc::new(Both(
            self.prom.register_histogram(key, metadata),
            self.statsd.register_histogram(key, metadata),
        )))
    }
}

impl CounterFn for Both<Counter> {
    fn increment(&self, value: u64) {
        self.0.increment(value);
        self.1.increment(value);
    }

    fn absolute(&self, value: u64) {
        self.0.absolute(value);
        self.1.absolute(value);
    }
}

impl GaugeFn for Both<Gauge> {
    fn increment(&self, value: f64) {
        self.0.increment(value);
        self.1.increment(value);
    }

    fn decrement(&self, value: f64) {
        self.0.decrement(value);
        self.1.decrement(value);
    }

    fn set(&self, value: f64) {
        self.0.set(value);
        self.1.set(value);
    }
}

impl HistogramFn for Both<Histogram> {
    fn record(&self, value: f64) {
        self.0.record(value);
        self.1.record(value);
    }
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
        self.record_response_elapsed(status, start.elapsed());
    }

    /// Counts one finished upstream request with its status and its already measured time,
    /// for callers that need the elapsed time elsewhere too (one clock read instead of two).
    pub fn record_response_elapsed(&self, status: u16, elapsed: Duration) {
        if let Some(class) = response_class(status) {
            self.rq_xx[class].increment(1);
        }
        self.rq_time.record(elapsed.as_secs_f64() * 1000.0);
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
    /// Registers the server gauges and marks the process live.
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

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;

    use super::*;

    #[test]
    fn fanout_feeds_prometheus_and_statsd() {
        let agent = UdpSocket::bind("127.0.0.1:0").unwrap();
        agent
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let opts = TelemetryOptions {
            statsd: Some(StatsdOptions {
                target: StatsdTarget::Udp(agent.local_addr().unwrap()),
                tags: true,
                flush_interval: Duration::from_secs(3600),
            }),
            stats_tags: Some(StatsTags {
                mesh: "m".into(),
                virtual_node: "vn".into(),
            }),
        };
        let prom = prometheus_recorder(&opts);
        let handle = prom.handle();
        let statsd =
            StatsdRecorder::new(opts.statsd.as_ref().unwrap(), &opts.global_labels()).unwrap();
        let fan = Fanout {
            prom,
            statsd: statsd.clone(),
        };
        let stats = metrics::with_local_recorder(&fan, || ListenerStats::new("egress"));
        stats.rq_total.increment(4);
        stats.cx_active.increment(1.0);
        stats.record_response(201, Instant::now());
        let text = handle.render();
        assert!(text.contains("envoy_http_downstream_rq_total{appmesh_mesh=\"m\",appmesh_virtual_node=\"vn\",envoy_http_conn_manager_prefix=\"egress\"} 4"), "{text}");
        statsd.flush().unwrap();
        let mut buf = [0u8; 2048];
        let n = agent.recv(&mut buf).unwrap();
        let got = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(got.contains("envoy.http.downstream_rq_total:4|c|#appmesh.mesh:m,appmesh.virtual_node:vn,envoy.http_conn_manager_prefix:egress"), "{got}");
        assert!(got.contains("envoy.http.downstream_cx_active:1|g"), "{got}");
        assert!(got.contains("envoy.http.downstream_rq_xx:1|c|#appmesh.mesh:m,appmesh.virtual_node:vn,envoy.response_code_class:2"), "{got}");
    }
}
