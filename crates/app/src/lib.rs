//! Wiring: a snapshot becomes listeners, clusters fed by discovery, and an admin endpoint; plus
//! start-up, drain and shutdown.

mod drain;
mod memory;
mod reload;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use outrider_admin::{AdminScope, AdminSource, ReloadFuture};
use outrider_config::Snapshot;
use outrider_discovery::{Resolver, ResolverConfig};
use outrider_http::{
    ConnInfo, Direction, ListenerCtx, Runtime, RuntimeOptions, ServeOptions, serve_connection,
};
use outrider_telemetry::{ListenerStats, ServerStats};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::drain::Gate;
pub use crate::drain::{DEFAULT_DRAIN_QUIET, DRAIN_FINAL_GRACE};
pub use crate::memory::{
    HEAP_TRIM_INTERVAL, HEAP_TRIM_THRESHOLD, MALLOC_ARENA_MAX, TrimPolicy, limit_malloc_arenas,
    release_startup_memory, spawn_heap_trimmer,
};
use crate::reload::ReloadState;
pub use crate::reload::{
    ConfigSource, RELOAD_DEBOUNCE, RELOAD_FAILURES_TOTAL, RELOAD_TOTAL, ReloadError, ReloadReport,
    Trigger,
};

/// Ingress listener address. Default is 0.0.0.0:15000.
pub const DEFAULT_INGRESS_ADDR: &str = "0.0.0.0:15000";
/// Egress listener address. Default is 0.0.0.0:15001.
pub const DEFAULT_EGRESS_ADDR: &str = "0.0.0.0:15001";
/// Admin address, loopback only. Default is 127.0.0.1:9901.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9901";
/// How long start-up waits for the first DNS answers before serving. Default is 2 s.
pub const STARTUP_DISCOVERY_WAIT: Duration = Duration::from_secs(2);
/// How long a drain waits for egress traffic (`LISTENER_DRAIN_WAIT_TIME_S`). Default is 20 s.
pub const DEFAULT_DRAIN_WAIT: Duration = Duration::from_secs(20);

/// Concurrent downstream connections per listener (ingress and egress each); more are closed
/// at once. Envoy's overload manager has no default cap; this bounds memory and file
/// descriptors under a connection flood. Default is 16384.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
/// Counter of connections closed at accept because the listener was full, labelled
/// `envoy_listener_address` (Envoy's `<ip>_<port>`).
pub const LISTENER_CX_OVERFLOW: &str = "envoy_listener_downstream_cx_overflow";

/// How long shutdown and drain wait for queued spans to reach the collector. Default is 2 s.
pub const TRACE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything `outrider run` needs to start.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// None: the transparent pass-through sidecar.
    pub snapshot: Option<Snapshot>,
    pub ingress_addr: SocketAddr,
    pub egress_addr: SocketAddr,
    /// None disables the admin endpoint.
    pub admin_addr: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    pub resolver: ResolverConfig,
    /// DNS re-resolution period. Default is 5 s.
    pub dns_refresh: Duration,
    pub runtime: RuntimeOptions,
    /// Drain period for egress after SIGTERM. Default is 20 s.
    pub drain_wait: Duration,
    /// A drain ends early once no connection has been open this long. Default is 1 s.
    pub drain_quiet: Duration,
    /// Access log of the transparent sidecar (no snapshot). Default is None.
    pub transparent_access_log: Option<outrider_config::AccessLog>,
    /// The files the snapshot came from, for reloads (SIGHUP, `POST /reload`, file changes).
    /// None: reloads are refused with [`ReloadError::NotConfigured`]. Default is None.
    pub config_source: Option<ConfigSource>,
    /// Reload when the directories of `config_source` change. Default is true.
    pub watch_config: bool,
    /// Distributed tracing. None reads the OTel/X-Ray variables
    /// ([`outrider_telemetry::TracingOptions::from_env`]); tracing stays off when none is set.
    /// Default is None.
    pub tracing: Option<outrider_telemetry::TracingOptions>,
    /// Most concurrent downstream connections on each listener (at least 1); over it a new
    /// connection is closed at once and counted in [`LISTENER_CX_OVERFLOW`]. Default is
    /// [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// Limits applied to each downstream connection (the request-head read timeout). Default
    /// is [`ServeOptions::default`].
    pub serve: ServeOptions,
}

impl ProxyOptions {
    /// Options with every address on `127.0.0.1:0` (tests and demos).
    pub fn local(snapshot: Option<Snapshot>) -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        ProxyOptions {
            snapshot,
            ingress_addr: any,
            egress_addr: any,
            admin_addr: Some(any),
            metrics_addr: None,
            resolver: ResolverConfig::System,
            dns_refresh: outrider_discovery::DEFAULT_REFRESH,
            runtime: RuntimeOptions::default(),
            drain_wait: DEFAULT_DRAIN_WAIT,
            drain_quiet: DEFAULT_DRAIN_QUIET,
            transparent_access_log: None,
            config_source: None,
            watch_config: true,
            tracing: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            serve: ServeOptions::default(),
        }
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

struct Shared {
    runtime: Arc<ArcSwap<Runtime>>,
    ready: AtomicBool,
    draining: AtomicBool,
    /// Each listener stops on its own: a drain closes ingress first.
    ingress: Gate,
    egress: Gate,
    drain_wait: Duration,
    drain_quiet: Duration,
    /// Fired by `/quitquitquit`: exit at once.
    quit: CancellationToken,
    reload: ReloadState,
    server: ServerStats,
    addrs: Addrs,
    /// Spans are flushed to the collector on shutdown and drain.
    tracer: Option<Arc<outrider_telemetry::Tracer>>,
}

/// The addresses the proxy actually bound.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub ingress: SocketAddr,
    pub egress: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
}

/// A started proxy.
pub struct RunningProxy {
    shared: Arc<Shared>,
    tracker: TaskTracker,
}

impl RunningProxy {
    /// The bound addresses.
    pub fn addrs(&self) -> Addrs {
        self.shared.addrs
    }

    /// The running runtime (tests and `/clusters`).
    pub fn runtime(&self) -> Arc<Runtime> {
        self.shared.runtime.load_full()
    }

    /// True once ready and until draining.
    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Acquire) && !self.shared.draining.load(Ordering::Acquire)
    }

    /// Stops accepting on both listeners at once, lets connections in flight finish (up to
    /// `grace`), then returns.
    pub async fn shutdown(self, grace: Duration) {
        self.shared.draining.store(true, Ordering::Release);
        self.tracker.close();
        tokio::join!(
            self.shared.ingress.close(grace),
            self.shared.egress.close(grace),
        );
        let _ = tokio::time::timeout(grace, self.tracker.wait()).await;
        if let Some(t) = &self.shared.tracer {
            t.flush(TRACE_FLUSH_TIMEOUT).await;
        }
        self.shared.quit.cancel();
    }

    /// The SIGTERM drain: `/ready` turns 503, ingress stops accepting at once and its
    /// connections close gracefully, egress stays open until the drain wait passes or no
    /// connection has been open for the quiet period, connections in flight finish; then the
    /// admin endpoint stops too. Returns when the process may exit.
    pub async fn drain(&self) {
        self.shared.draining.store(true, Ordering::Release);
        drain::drain(
            &self.shared.ingress,
            &self.shared.egress,
            self.shared.drain_wait,
            self.shared.drain_quiet,
        )
        .await;
        if let Some(t) = &self.shared.tracer {
            t.flush(TRACE_FLUSH_TIMEOUT).await;
        }
        self.shared.quit.cancel();
    }

    /// `POST /drain_listeners`: `/ready` turns 503 and ingress closes; the proxy keeps running.
    pub fn drain_listeners(&self) {
        self.shared.draining.store(true, Ordering::Release);
        self.shared.ingress.stop.cancel();
    }

    /// Re-reads the config files and swaps the new configuration in; a bad one is refused
    /// (logged and counted) and the running one stays.
    pub async fn reload(&self, trigger: Trigger) -> Result<ReloadReport, ReloadError> {
        reload::reload(&self.shared, trigger).await
    }

    /// The running config version: 1 at start-up, one more per reload that changed something.
    pub fn config_version(&self) -> u64 {
        self.shared.reload.version()
    }

    /// Resolves when `/quitquitquit` was called.
    pub async fn quit_requested(&self) {
        self.shared.quit.cancelled().await;
    }

    /// Resolves when `/drain_listeners` (or a drain or shutdown) closed the ingress listener.
    pub async fn drain_requested(&self) {
        self.shared.ingress.stop.cancelled().await;
    }
}

fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    outrider_transport::bind(addr).map_err(|source| StartError::Bind { what, addr, source })
}

/// Binds every listener, starts discovery and serves. The admin endpoint answers (503) at once;
/// the proxy accepts traffic and reports ready after the first DNS answers (or
/// [`STARTUP_DISCOVERY_WAIT`]), which is when this returns. With `watch_config`, changes to the
/// config directories reload the configuration.
pub async fn start(opts: ProxyOptions) -> Result<RunningProxy, StartError> {
    // StatsD/DogStatsD and App Mesh stats tags come from the App Mesh image's variables. A bad
    // variable is reported and the proxy runs with Prometheus only.
    let (mesh, node) = match &opts.snapshot {
        Some(s) => (
            s.mesh.to_string(),
            match &s.identity {
                outrider_config::Identity::VirtualNode(n)
                | outrider_config::Identity::VirtualGateway(n) => n.clone(),
            },
        ),
        None => (String::new(), String::new()),
    };
    match outrider_telemetry::TelemetryOptions::from_env(&mesh, &node) {
        Ok(t) => {
            if let Err(e) = outrider_telemetry::install_metrics_with(&t) {
                tracing::warn!(error = %e, "metrics sinks not installed as configured");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "bad telemetry environment; Prometheus only");
            outrider_telemetry::install_metrics();
        }
    }
    let tracing_opts = match opts.tracing.clone() {
        Some(t) => Some(t),
        None => outrider_telemetry::TracingOptions::from_env(&node).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "bad tracing environment; tracing off");
            None
        }),
    };
    let tracer = tracing_opts.as_ref().map(outrider_telemetry::Tracer::start);
    let ingress = bind("ingress", opts.ingress_addr)?;
    let egress = bind("egress", opts.egress_addr)?;
    let admin = opts.admin_addr.map(|a| bind("admin", a)).transpose()?;
    let metrics = opts.metrics_addr.map(|a| bind("metrics", a)).transpose()?;
    let mut gateway = bind_gateway(&opts, ingress.local_addr().ok())?;
    let gateway_mode = opts.snapshot.as_ref().is_some_and(|s| s.gateway.is_some());
    let local = |l: &TcpListener, fallback: SocketAddr| l.local_addr().unwrap_or(fallback);
    let addrs = Addrs {
        ingress: local(&ingress, opts.ingress_addr),
        egress: local(&egress, opts.egress_addr),
        admin: admin.as_ref().map(|l| local(l, opts.ingress_addr)),
        metrics: metrics.as_ref().map(|l| local(l, opts.ingress_addr)),
    };

    let runtime = match &opts.snapshot {
        Some(s) => Runtime::new(Arc::new(s.clone()), None, opts.runtime),
        None => Runtime::transparent_with_log(opts.runtime, opts.transparent_access_log.clone()),
    };
    let config_source = opts.snapshot.as_ref().and(opts.config_source.clone());
    let shared = Arc::new(Shared {
        runtime: Arc::new(ArcSwap::from_pointee(runtime)),
        ready: AtomicBool::new(false),
        draining: AtomicBool::new(false),
        ingress: Gate::default(),
        egress: Gate::default(),
        drain_wait: opts.drain_wait,
        drain_quiet: opts.drain_quiet,
        quit: CancellationToken::new(),
        reload: ReloadState::new(
            config_source,
            Resolver::new(opts.resolver),
            opts.dns_refresh,
            opts.runtime,
        ),
        server: ServerStats::new(),
        addrs,
        tracer: tracer.clone(),
    });
    let tracker = TaskTracker::new();

    // The admin endpoint first, so health checks get an answer (503) while discovery starts.
    let source: Arc<dyn AdminSource> = Arc::new(Admin {
        shared: shared.clone(),
    });
    if let Some(l) = admin {
        tokio::spawn(outrider_admin::serve(
            l,
            source.clone(),
            AdminScope::Full,
            shared.quit.clone(),
        ));
    }
    if let Some(l) = metrics {
        tokio::spawn(outrider_admin::serve(
            l,
            source,
            AdminScope::MetricsOnly,
            shared.quit.clone(),
        ));
    }

    // Discovery before accepting, so the first requests find endpoints. Reloads take the same
    // lock, so a file change during start-up waits for this.
    {
        let mut discovery = shared.reload.discovery.lock().await;
        let runtime = shared.runtime.load_full();
        discovery
            .sync(
                &runtime,
                shared.reload.resolver(),
                shared.reload.dns_refresh(),
            )
            .await;
    }

    let mut own = vec![addrs.ingress, addrs.egress];
    own.extend(gateway.iter().filter_map(|l| l.local_addr().ok()));
    for (listener, direction, gate) in [
        (ingress, Direction::Ingress, &shared.ingress),
        (egress, Direction::Egress, &shared.egress),
    ] {
        let ctx = Arc::new(ListenerCtx {
            direction,
            runtime: shared.runtime.clone(),
            stats: ListenerStats::new(direction.as_str()),
            own_addrs: own.clone(),
            tracer: tracer.clone(),
        });
        if direction == Direction::Ingress {
            for l in gateway.drain(..) {
                let limits = Limits::new(&l, opts.max_connections, opts.serve);
                tracker.spawn(accept_loop(l, ctx.clone(), gate.clone(), limits, true));
            }
        }
        let limits = Limits::new(&listener, opts.max_connections, opts.serve);
        tracker.spawn(accept_loop(
            listener,
            ctx,
            gate.clone(),
            limits,
            gateway_mode,
        ));
    }
    if opts.watch_config
        && let Err(e) = reload::spawn_watcher(shared.clone(), shared.quit.clone())
    {
        // The proxy still reloads on SIGHUP and POST /reload.
        tracing::warn!(error = %e, "cannot watch the config files; reload with SIGHUP or POST /reload");
    }
    tokio::spawn(sweep_idle_connections(shared.clone()));
    shared.ready.store(true, Ordering::Release);
    tracing::info!(ingress = %addrs.ingress, egress = %addrs.egress, admin = ?addrs.admin, "outrider ready");
    Ok(RunningProxy { shared, tracker })
}

/// Closes pooled upstream connections that their upstream closed or that expired, every
/// [`outrider_http::POOL_SWEEP_INTERVAL`], so that without traffic they do not linger half
/// closed; requests also skip and close such connections when they take one.
async fn sweep_idle_connections(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(outrider_http::POOL_SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.quit.cancelled() => return,
            _ = tick.tick() => shared.runtime.load().sweep_idle_connections(),
        }
    }
}

/// The connection limit and per-connection options of one listener.
struct Limits {
    slots: Arc<Semaphore>,
    overflow: metrics::Counter,
    serve: ServeOptions,
}

impl Limits {
    fn new(listener: &TcpListener, max_connections: usize, serve: ServeOptions) -> Limits {
        let label = listener
            .local_addr()
            .map(|a| format!("{}_{}", a.ip(), a.port()))
            .unwrap_or_default();
        Limits {
            slots: Arc::new(Semaphore::new(
                max_connections.clamp(1, Semaphore::MAX_PERMITS),
            )),
            overflow: metrics::counter!(LISTENER_CX_OVERFLOW, "envoy_listener_address" => label),
            serve,
        }
    }
}

/// Gateway mode: one socket per virtual gateway listener, on `portMapping.port` of the ingress
/// address's IP (so 0.0.0.0 by default, 127.0.0.1 in tests), as App Mesh's gateway Envoy
/// listened on each listener's own port. A port equal to the ingress listener's is served by
/// that listener. Ports are bound once at start-up: a reload that adds a listener port needs a
/// restart to serve it.
fn bind_gateway(
    opts: &ProxyOptions,
    ingress: Option<SocketAddr>,
) -> Result<Vec<TcpListener>, StartError> {
    let Some(snapshot) = opts.snapshot.as_ref().filter(|s| s.gateway.is_some()) else {
        return Ok(Vec::new());
    };
    let ip = opts.ingress_addr.ip();
    snapshot
        .listeners
        .iter()
        .filter(|l| ingress.is_none_or(|a| a.port() != l.port))
        .map(|l| bind("gateway", SocketAddr::new(ip, l.port)))
        .collect()
}

/// Accepts until the gate stops; returning drops the listener, so new connections are refused.
/// A connection over the listener's limit is closed at once, before any byte is read. With
/// `local_is_dst` (gateway mode), a connection that was not redirected counts its own local
/// address as its destination, so the port it arrived on picks the gateway listener.
async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<ListenerCtx>,
    gate: Gate,
    limits: Limits,
    local_is_dst: bool,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = gate.stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = ctx.direction.as_str(), error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = limits.slots.clone().try_acquire_owned() else {
            limits.overflow.increment(1);
            drop(stream);
            continue;
        };
        let _ = outrider_transport::set_nodelay_keepalive(&stream);
        let local = stream.local_addr().unwrap_or(peer);
        let conn = ConnInfo {
            id: outrider_http::next_connection_id(),
            peer,
            local,
            orig_dst: outrider_transport::original_dst(&stream)
                .or_else(|| local_is_dst.then_some(local)),
        };
        let served = serve_connection(stream, ctx.clone(), conn, limits.serve, gate.stop.clone());
        // The slot frees when the connection ends, however it ends. A combinator, not an
        // async block: a block that awaits the future it captured holds it twice.
        let task = futures_util::FutureExt::map(served, move |()| drop(permit));
        gate.conns.spawn(task);
    }
}

struct Admin {
    shared: Arc<Shared>,
}

impl AdminSource for Admin {
    fn ready(&self) -> bool {
        self.shared.ready.load(Ordering::Acquire) && !self.shared.draining.load(Ordering::Acquire)
    }

    fn server_info(&self) -> serde_json::Value {
        let state = if self.shared.draining.load(Ordering::Acquire) {
            "DRAINING"
        } else if self.shared.ready.load(Ordering::Acquire) {
            "LIVE"
        } else {
            "INITIALIZING"
        };
        let rt = self.shared.runtime.load();
        let snap = rt.snapshot();
        let identity = match &snap.identity {
            outrider_config::Identity::VirtualNode(n) => serde_json::json!({"virtualNode": n}),
            outrider_config::Identity::VirtualGateway(n) => {
                serde_json::json!({"virtualGateway": n})
            }
        };
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "state": state,
            "uptime_current_epoch": format!("{}s", self.shared.server.uptime().as_secs()),
            "mesh": &*snap.mesh,
            "identity": identity,
            "config_hash": snap.hash,
            "config_version": self.shared.reload.version(),
            "last_reload": self.shared.reload.last_json(),
            "transparent": rt.is_transparent(),
            "listeners": {
                "ingress": self.shared.addrs.ingress.to_string(),
                "egress": self.shared.addrs.egress.to_string(),
            },
        })
    }

    fn config_dump(&self) -> serde_json::Value {
        let rt = self.shared.runtime.load();
        if rt.is_transparent() {
            return serde_json::json!({"transparent": true, "note": "no --config: every connection passes through to its original destination"});
        }
        let mut dump = rt.snapshot().dump();
        if let Some(obj) = dump.as_object_mut() {
            obj.insert("config_version".into(), self.shared.reload.version().into());
            obj.insert("config_hash".into(), rt.snapshot().hash.clone().into());
        }
        dump
    }

    fn clusters(&self) -> String {
        use std::fmt::Write as _;
        let rt = self.shared.runtime.load();
        let mut out = String::new();
        for up in rt.clusters().iter().chain(rt.locals().iter()) {
            for e in up.endpoint_report() {
                let flag = match (e.failed_active_hc, e.failed_outlier_check) {
                    (false, false) => "healthy",
                    (true, false) => "/failed_active_hc",
                    (false, true) => "/failed_outlier_check",
                    (true, true) => "/failed_active_hc/failed_outlier_check",
                };
                let _ = writeln!(out, "{}::{}::health_flags::{}", up.name(), e.addr, flag);
                let _ = writeln!(out, "{}::{}::rq_active::{}", up.name(), e.addr, e.in_flight);
                let _ = writeln!(
                    out,
                    "{}::{}::cx_idle::{}",
                    up.name(),
                    e.addr,
                    e.idle_connections
                );
            }
            if up.endpoint_report().is_empty() {
                let _ = writeln!(out, "{}::no_endpoints", up.name());
            }
        }
        out
    }

    fn refresh_stats(&self) {
        self.shared.server.refresh(self.ready());
    }

    fn quit(&self) {
        self.shared.draining.store(true, Ordering::Release);
        self.shared.ingress.stop.cancel();
        self.shared.egress.stop.cancel();
        self.shared.quit.cancel();
    }

    fn drain(&self) {
        self.shared.draining.store(true, Ordering::Release);
        self.shared.ingress.stop.cancel();
    }

    fn explain(
        &self,
        query: &outrider_admin::ExplainQuery,
    ) -> Result<serde_json::Value, outrider_admin::ExplainFailure> {
        let mut req = outrider_http::ExplainRequest::parse(
            &query.method,
            &query.url,
            &query.headers,
            query.ingress_port,
        )
        .map_err(|e| outrider_admin::ExplainFailure::BadRequest(e.to_string()))?;
        req.dst = query.dst;
        Ok(outrider_http::explain(&self.shared.runtime.load(), &req).to_json())
    }

    fn reload(&self) -> ReloadFuture<'_> {
        Box::pin(async move {
            reload::reload(&self.shared, Trigger::Admin)
                .await
                .map(|r| r.to_json())
        })
    }

    fn set_log_level(&self, level: &str) -> Result<(), String> {
        outrider_telemetry::set_level(level).map_err(|e| e.to_string())
    }
}
