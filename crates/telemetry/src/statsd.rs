//! A StatsD / DogStatsD sink behind the `metrics` facade: handles are plain atomics, and a
//! dedicated thread sends counter deltas, gauge values and timer samples on an interval, with
//! Envoy's statsd-sink names (`envoy.cluster.upstream_rq_total`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_util::storage::AtomicBucket;

/// StatsD agent address when `STATSD_ADDRESS` is unset. Default is 127.0.0.1.
pub const DEFAULT_STATSD_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// StatsD agent port when `STATSD_PORT` is unset. Default is 8125.
pub const DEFAULT_STATSD_PORT: u16 = 8125;

/// How often metrics are sent, as Envoy's `stats_flush_interval`. Default is 5 s.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// Largest UDP datagram sent: fits a 1500-byte MTU with IP/UDP headers, as DogStatsD advises.
const MAX_UDP_DATAGRAM: usize = 1432;

/// Largest unix datagram sent; the DogStatsD agent reads up to 8 KiB per datagram.
const MAX_UNIX_DATAGRAM: usize = 8192;

/// Timer samples sent per histogram per flush; beyond this a sample rate scales the counts.
const MAX_SAMPLES_PER_FLUSH: usize = 1000;

/// Envoy stat scopes: the first component after `envoy_` that becomes its own dotted segment.
const SCOPES: &[&str] = &[
    "cluster_manager",
    "listener_manager",
    "access_log",
    "cluster",
    "listener",
    "server",
    "http",
    "tcp",
    "runtime",
];

/// The label holding a response code class; folded into the name in plain StatsD
/// (`upstream_rq_xx` + class 2 → `upstream_rq_2xx`).
const CLASS_LABEL: &str = "envoy_response_code_class";

/// Where the StatsD agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatsdTarget {
    /// A UDP address (`STATSD_ADDRESS:STATSD_PORT`).
    Udp(SocketAddr),
    /// A unix datagram socket (`STATSD_SOCKET_PATH`).
    Unix(PathBuf),
}

/// StatsD sink settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsdOptions {
    /// The agent. Default is UDP 127.0.0.1:8125.
    pub target: StatsdTarget,
    /// DogStatsD tags (`|#k:v`) when true; plain StatsD with labels folded into names when
    /// false. Default is true.
    pub tags: bool,
    /// Send period. Default is [`DEFAULT_FLUSH_INTERVAL`].
    pub flush_interval: Duration,
}

/// A `metrics` recorder that sends to a StatsD agent. Cloning shares the same registry.
#[derive(Clone)]
pub struct StatsdRecorder {
    inner: Arc<Inner>,
}

struct Inner {
    socket: Socket,
    tags: bool,
    /// Pre-rendered `k:v` global tags (DogStatsD only).
    global_tags: Vec<String>,
    registry: Mutex<Registry>,
}

enum Socket {
    Udp(UdpSocket, SocketAddr),
    Unix(UnixDatagram, PathBuf),
}

#[derive(Default)]
struct Registry {
    counters: HashMap<Key, Entry<CounterState>>,
    gauges: HashMap<Key, Entry<Arc<AtomicU64>>>,
    histograms: HashMap<Key, Entry<Arc<AtomicBucket<f64>>>>,
}

/// One metric series with its wire name and tag suffix rendered once at registration.
struct Entry<S> {
    name: String,
    /// `|#k:v,...` or empty.
    tags: String,
    state: S,
}

struct CounterState {
    value: Arc<AtomicU64>,
    last_sent: u64,
}

/// Packs lines into datagrams no larger than the socket's limit.
struct Packer<'s> {
    socket: &'s Socket,
    buf: String,
    max: usize,
}

impl Default for StatsdOptions {
    fn default() -> Self {
        StatsdOptions {
            target: StatsdTarget::Udp(SocketAddr::new(DEFAULT_STATSD_ADDRESS, DEFAULT_STATSD_PORT)),
            tags: true,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
        }
    }
}

impl StatsdRecorder {
    /// Opens the client socket (the agent need not be up yet) and starts the flush thread,
    /// which ends when the last clone of the recorder is dropped. `global_labels` use
    /// Prometheus-style names (`appmesh_mesh`) and become tags (`appmesh.mesh`) in DogStatsD
    /// mode; plain StatsD omits them.
    pub fn new(opts: &StatsdOptions, global_labels: &[(String, String)]) -> io::Result<Self> {
        let socket = match &opts.target {
            StatsdTarget::Udp(addr) => {
                let bind: SocketAddr = if addr.is_ipv4() {
                    (Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let s = UdpSocket::bind(bind)?;
                s.set_nonblocking(true)?;
                Socket::Udp(s, *addr)
            }
            StatsdTarget::Unix(path) => {
                let s = UnixDatagram::unbound()?;
                s.set_nonblocking(true)?;
                Socket::Unix(s, path.clone())
            }
        };
        let global_tags = global_labels
            .iter()
            .map(|(k, v)| format!("{}:{}", dotted_label(k), sanitize_tag(v)))
            .collect();
        let inner = Arc::new(Inner {
            socket,
            tags: opts.tags,
            global_tags,
            registry: Mutex::new(Registry::default()),
        });
        let weak = Arc::downgrade(&inner);
        let interval = opts.flush_interval;
        std::thread::Builder::new()
            .name("statsd-flush".into())
            .spawn(move || flush_loop(weak, interval))?;
        Ok(StatsdRecorder { inner })
    }

    /// Sends everything recorded since the last flush now (the flush thread does this on its
    /// interval). Returns the first send error; later lines are still attempted.
    pub fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }

    fn entry_parts(&self, key: &Key) -> (String, String) {
        render_key(key, self.inner.tags, &self.inner.global_tags)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.inner
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Recorder for StatsdRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut reg = self.lock();
        if let Some(e) = reg.counters.get(key) {
            return Counter::from_arc(e.state.value.clone());
        }
        let (name, tags) = self.entry_parts(key);
        let value = Arc::new(AtomicU64::new(0));
        let state = CounterState {
            value: value.clone(),
            last_sent: 0,
        };
        reg.counters
            .insert(key.clone(), Entry { name, tags, state });
        Counter::from_arc(value)
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let mut reg = self.lock();
        if let Some(e) = reg.gauges.get(key) {
            return Gauge::from_arc(e.state.clone());
        }
        let (name, tags) = self.entry_parts(key);
        let state = Arc::new(AtomicU64::new(0f64.to_bits()));
        reg.gauges.insert(
            key.clone(),
            Entry {
                name,
                tags,
                state: state.clone(),
            },
        );
        Gauge::from_arc(state)
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let mut reg = self.lock();
        if let Some(e) = reg.histograms.get(key) {
            return Histogram::from_arc(e.state.clone());
        }
        let (name, tags) = self.entry_parts(key);
        let state = Arc::new(AtomicBucket::new());
        reg.histograms.insert(
            key.clone(),
            Entry {
                name,
                tags,
                state: state.clone(),
            },
        );
        Histogram::from_arc(state)
    }
}

impl Inner {
    fn flush(&self) -> io::Result<()> {
        let max = match self.socket {
            Socket::Udp(..) => MAX_UDP_DATAGRAM,
            Socket::Unix(..) => MAX_UNIX_DATAGRAM,
        };
        let mut p = Packer {
            socket: &self.socket,
            buf: String::with_capacity(max),
            max,
        };
        let mut result = Ok(());
        let mut line = String::new();
        let mut reg = self
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for e in reg.counters.values_mut() {
            let now = e.state.value.load(Ordering::Relaxed);
            let delta = now.saturating_sub(e.state.last_sent);
            if delta == 0 {
                continue;
            }
            e.state.last_sent = now;
            line.clear();
            let _ = write!(line, "{}:{}|c{}", e.name, delta, e.tags);
            result = result.and(p.push(&line));
        }
        for e in reg.gauges.values() {
            // Plain StatsD reads a leading sign as a relative change, so never send one.
            let v = f64::from_bits(e.state.load(Ordering::Relaxed)).max(0.0);
            line.clear();
            let _ = write!(line, "{}:{}|g{}", e.name, v, e.tags);
            result = result.and(p.push(&line));
        }
        let mut samples: Vec<f64> = Vec::new();
        for e in reg.histograms.values() {
            samples.clear();
            e.state.clear_with(|block| samples.extend_from_slice(block));
            if samples.is_empty() {
                continue;
            }
            let rate = if samples.len() > MAX_SAMPLES_PER_FLUSH {
                MAX_SAMPLES_PER_FLUSH as f64 / samples.len() as f64
            } else {
                1.0
            };
            for v in samples.iter().take(MAX_SAMPLES_PER_FLUSH) {
                line.clear();
                let _ = write!(line, "{}:{}|ms", e.name, v);
                if rate < 1.0 {
                    let _ = write!(line, "|@{rate:.4}");
                }
                line.push_str(&e.tags);
                result = result.and(p.push(&line));
            }
        }
        drop(reg);
        result.and(p.finish())
    }
}

impl Packer<'_> {
    fn push(&mut self, line: &str) -> io::Result<()> {
        let mut result = Ok(());
        if !self.buf.is_empty() && self.buf.len() + 1 + line.len() > self.max {
            result = self.send();
        }
        if !self.buf.is_empty() {
            self.buf.push('\n');
        }
        self.buf.push_str(line);
        result
    }

    fn finish(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.send()
    }

    fn send(&mut self) -> io::Result<()> {
        let bytes = self.buf.as_bytes();
        let r = match self.socket {
            Socket::Udp(s, addr) => s.send_to(bytes, addr).map(drop),
            Socket::Unix(s, path) => s.send_to(bytes, path).map(drop),
        };
        self.buf.clear();
        r
    }
}

fn flush_loop(inner: Weak<Inner>, interval: Duration) {
    loop {
        std::thread::sleep(interval);
        let Some(inner) = inner.upgrade() else { return };
        // The agent may be down or restarting; metrics are best effort, as in Envoy.
        let _ = inner.flush();
    }
}

/// Renders a key's wire name and tag suffix. DogStatsD: dotted name plus `|#` tags. Plain
/// StatsD: label values folded into the name after the scope, Envoy-style.
fn render_key(key: &Key, tags: bool, global: &[String]) -> (String, String) {
    let full = key.name();
    let (scope, rest) = split_scope(full);
    let mut name = String::with_capacity(full.len() + 16);
    if full.starts_with("envoy_") {
        name.push_str("envoy.");
    }
    if let Some(scope) = scope {
        name.push_str(scope);
        name.push('.');
    }
    if tags {
        name.push_str(rest);
        let mut t = String::new();
        let labels = key
            .labels()
            .map(|l| format!("{}:{}", dotted_label(l.key()), sanitize_tag(l.value())));
        for tag in global.iter().cloned().chain(labels) {
            t.push_str(if t.is_empty() { "|#" } else { "," });
            t.push_str(&tag);
        }
        return (sanitize_name(&name), t);
    }
    let mut class = None;
    for l in key.labels() {
        if l.key() == CLASS_LABEL {
            class = Some(l.value());
            continue;
        }
        name.push_str(&sanitize_name(l.value()));
        name.push('.');
    }
    match (class, rest.strip_suffix("_xx")) {
        (Some(c), Some(stem)) => {
            let _ = write!(name, "{stem}_{}xx", sanitize_name(c));
        }
        _ => name.push_str(rest),
    }
    (sanitize_name(&name), String::new())
}

/// `envoy_cluster_upstream_rq_total` → (`cluster`, `upstream_rq_total`). A name outside the
/// known scopes keeps only the `envoy_` prefix split off.
fn split_scope(name: &str) -> (Option<&str>, &str) {
    let Some(rest) = name.strip_prefix("envoy_") else {
        return (None, name);
    };
    for scope in SCOPES {
        if let Some(tail) = rest.strip_prefix(scope).and_then(|t| t.strip_prefix('_')) {
            return (Some(scope), tail);
        }
    }
    (None, rest)
}

/// Prometheus-style label names to Envoy tag names: the first `_` becomes `.`
/// (`envoy_cluster_name` → `envoy.cluster_name`, `appmesh_mesh` → `appmesh.mesh`).
fn dotted_label(k: &str) -> String {
    k.replacen('_', ".", 1)
}

/// Characters that would break the StatsD line protocol in a name.
fn sanitize_name(s: &str) -> String {
    s.replace([':', '|', '@', '#', ',', '\n', ' '], "_")
}

/// Characters that would break DogStatsD tag lists.
fn sanitize_tag(s: &str) -> String {
    s.replace(['|', ',', '#', '\n'], "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
        let labels: Vec<metrics::Label> = labels
            .iter()
            .map(|(k, v)| metrics::Label::new(*k, *v))
            .collect();
        Key::from_parts(name, labels)
    }

    #[test]
    fn dogstatsd_names_and_tags() {
        let k = key(
            "envoy_cluster_upstream_rq_total",
            &[("envoy_cluster_name", "cds_egress_a")],
        );
        let (n, t) = render_key(&k, true, &["appmesh.mesh:m".into()]);
        assert_eq!(n, "envoy.cluster.upstream_rq_total");
        assert_eq!(t, "|#appmesh.mesh:m,envoy.cluster_name:cds_egress_a");
        let (n, t) = render_key(&key("envoy_server_live", &[]), true, &[]);
        assert_eq!((n.as_str(), t.as_str()), ("envoy.server.live", ""));
        let (n, _) = render_key(&key("envoy_access_log_dropped_total", &[]), true, &[]);
        assert_eq!(n, "envoy.access_log.dropped_total");
        let (n, _) = render_key(&key("custom_metric", &[]), true, &[]);
        assert_eq!(n, "custom_metric");
    }

    #[test]
    fn plain_statsd_folds_labels_into_names() {
        let k = key(
            "envoy_cluster_upstream_rq_total",
            &[("envoy_cluster_name", "cds_egress_a")],
        );
        let (n, t) = render_key(&k, false, &["appmesh.mesh:m".into()]);
        assert_eq!(n, "envoy.cluster.cds_egress_a.upstream_rq_total");
        assert_eq!(t, "");
        let k = key(
            "envoy_http_downstream_rq_xx",
            &[
                ("envoy_response_code_class", "2"),
                ("envoy_http_conn_manager_prefix", "ingress"),
            ],
        );
        assert_eq!(
            render_key(&k, false, &[]).0,
            "envoy.http.ingress.downstream_rq_2xx"
        );
        let k = key(
            "envoy_cluster_upstream_rq_total",
            &[("envoy_cluster_name", "a:b|c")],
        );
        assert_eq!(
            render_key(&k, false, &[]).0,
            "envoy.cluster.a_b_c.upstream_rq_total"
        );
    }
}
