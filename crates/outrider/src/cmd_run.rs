//! `outrider run`: the proxy.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use outrider_app::{
    ConfigSource, DEFAULT_ADMIN_ADDR, DEFAULT_EGRESS_ADDR, DEFAULT_INGRESS_ADDR, ProxyOptions,
    RunningProxy, Trigger,
};
use outrider_discovery::ResolverConfig;
use outrider_telemetry::LogFormat;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::SpecArgs;

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Ingress listener (traffic to the local app).
    #[arg(long, default_value = DEFAULT_INGRESS_ADDR)]
    pub ingress_addr: SocketAddr,
    /// Egress listener (traffic from the local app).
    #[arg(long, default_value = DEFAULT_EGRESS_ADDR)]
    pub egress_addr: SocketAddr,
    /// Admin endpoint; loopback by default. ENVOY_ADMIN_ACCESS_PORT sets only its port.
    #[arg(long)]
    pub admin_addr: Option<SocketAddr>,
    /// Serves only /ready and /stats/prometheus, for a routable scrape address. Off by default.
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Worker threads. Default is the number of CPUs.
    #[arg(long, env = "ENVOY_CONCURRENCY")]
    pub workers: Option<usize>,
    /// A DNS server (IP:PORT) to resolve service discovery names with, instead of the system resolver.
    #[arg(long)]
    pub dns_resolver: Option<SocketAddr>,
    /// DNS re-resolution period, e.g. 5s or 500ms.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub dns_refresh: Duration,
    /// Endpoint choice.
    #[arg(long, value_enum, default_value_t = LbPolicy::LeastRequest)]
    pub lb_policy: LbPolicy,
    /// trace, debug, info, warning, error, critical or off.
    #[arg(long, env = "ENVOY_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// text or json.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub log_format: Format,
    /// Seconds egress stays open after SIGTERM so the app can finish its calls.
    #[arg(long, env = "LISTENER_DRAIN_WAIT_TIME_S", default_value_t = 20)]
    pub drain_wait_s: u64,
    /// Do not watch the --config files and directories; reload only on SIGHUP or POST /reload.
    #[arg(long)]
    pub no_watch: bool,
    /// Access log of the transparent sidecar (no --config), in Envoy's default format; `off`
    /// disables it. With --config, the node's `logging.accessLog` decides.
    #[arg(long, default_value = "/dev/stdout")]
    pub access_log: String,
    /// Retry budget (extension): percent of requests in flight that may be retries.
    #[arg(long, default_value_t = outrider_http::RetryBudgetConfig::default().percent)]
    pub retry_budget_percent: f64,
    /// Retry budget (extension): concurrent retries always allowed.
    #[arg(long, default_value_t = outrider_http::RetryBudgetConfig::default().min_retry_concurrency)]
    pub retry_budget_min: u32,
    /// Client-side circuit breaking (extension): also apply each target listener's
    /// `connectionPool` to this proxy's own egress traffic toward it.
    #[arg(long)]
    pub client_side_limits: bool,
    /// Most concurrent downstream connections per listener (at least 1); more are closed at once.
    #[arg(long, default_value_t = outrider_app::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Time a client has to send an HTTP/1.1 request head, e.g. 60s or 500ms.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// Share of new traces sampled, 0.0 to 1.0; overrides OTEL_TRACES_SAMPLER_ARG and
    /// XRAY_SAMPLING_RATE. Tracing itself is turned on by those variables' exporters.
    #[arg(long, value_parser = parse_rate)]
    pub trace_sampling_rate: Option<f64>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LbPolicy {
    /// Least request, power of two choices over peak-EWMA latency.
    LeastRequest,
    RoundRobin,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Parses `5s`, `500ms`, `250us` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (try 5s or 500ms)"))?;
    let secs = match unit {
        "s" => value,
        "ms" => value / 1e3,
        "us" => value / 1e6,
        "m" => value * 60.0,
        _ => return Err(format!("unknown unit in {s:?} (s, ms, us, m)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("not a duration: {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a sampling rate between 0 and 1.
fn parse_rate(s: &str) -> Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|r| (0.0..=1.0).contains(r))
        .ok_or_else(|| format!("not a rate between 0 and 1: {s:?}"))
}

/// Tracing options from the environment with the mesh and node known, so X-Ray segments are
/// named `<mesh>/<node>`; `rate` overrides the sampler's. None leaves the variables to the
/// proxy (which reports a bad one and runs without tracing).
fn tracing_options(
    snapshot: Option<&outrider_config::Snapshot>,
    rate: Option<f64>,
) -> Option<outrider_telemetry::TracingOptions> {
    let from_env = match snapshot {
        Some(s) => {
            let node = match &s.identity {
                outrider_config::Identity::VirtualNode(n)
                | outrider_config::Identity::VirtualGateway(n) => n.to_string(),
            };
            outrider_telemetry::TracingOptions::from_env_in(s.mesh.as_ref(), &node)
        }
        // The transparent sidecar knows no node; APPMESH_RESOURCE_ARN may still name the mesh.
        None => outrider_telemetry::TracingOptions::from_env(""),
    };
    let mut opts = match from_env {
        Ok(Some(o)) => o,
        Ok(None) => {
            if rate.is_some() {
                tracing::warn!(
                    "--trace-sampling-rate has no effect: no OTLP endpoint and no ENABLE_ENVOY_XRAY_TRACING"
                );
            }
            return None;
        }
        Err(_) => return None,
    };
    if let Some(r) = rate {
        opts.sampler.rate = r;
    }
    Some(opts)
}

fn admin_addr(flag: Option<SocketAddr>) -> Result<SocketAddr, String> {
    if let Some(a) = flag {
        return Ok(a);
    }
    match std::env::var("ENVOY_ADMIN_ACCESS_PORT") {
        Ok(port) => port
            .trim()
            .parse::<u16>()
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .map_err(|_| format!("ENVOY_ADMIN_ACCESS_PORT: not a port: {port:?}")),
        Err(_) => DEFAULT_ADMIN_ADDR
            .parse()
            .map_err(|_| "bad default admin address".to_string()),
    }
}

pub fn run(args: RunArgs) -> ExitCode {
    // Before any thread starts, so helper threads share arenas instead of adding their own.
    outrider_app::limit_malloc_arenas();
    let format = match args.log_format {
        Format::Text => LogFormat::Text,
        Format::Json => LogFormat::Json,
    };
    if let Err(e) = outrider_telemetry::init_logging(&args.log_level, format) {
        eprintln!("outrider: {e}");
        return ExitCode::from(1);
    }
    let admin = match admin_addr(args.admin_addr) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("outrider: {e}");
            return ExitCode::from(1);
        }
    };
    let mut config_source = None;
    let snapshot = if args.spec.config.is_empty() {
        tracing::info!("no --config: running as a transparent pass-through sidecar");
        None
    } else {
        let selector = match args.spec.selector() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("outrider: {e}");
                return ExitCode::from(1);
            }
        };
        match outrider_config::build(&args.spec.config, &selector) {
            Ok(built) => {
                for w in &built.warnings {
                    tracing::warn!("{w}");
                }
                config_source = Some(ConfigSource {
                    paths: args.spec.config.clone(),
                    selector,
                });
                Some(built.snapshot)
            }
            Err(problems) => {
                for p in &problems {
                    eprintln!("{p}");
                }
                eprintln!("outrider: configuration refused");
                return ExitCode::from(1);
            }
        }
    };
    let tracing_opts = tracing_options(snapshot.as_ref(), args.trace_sampling_rate);
    let mut opts = ProxyOptions::local(snapshot);
    opts.tracing = tracing_opts;
    opts.ingress_addr = args.ingress_addr;
    opts.egress_addr = args.egress_addr;
    opts.admin_addr = Some(admin);
    opts.metrics_addr = args.metrics_addr;
    opts.resolver = args
        .dns_resolver
        .map_or(ResolverConfig::System, ResolverConfig::Server);
    opts.dns_refresh = args.dns_refresh;
    opts.runtime.algorithm = match args.lb_policy {
        LbPolicy::LeastRequest => outrider_balance_algorithm::P2C,
        LbPolicy::RoundRobin => outrider_balance_algorithm::ROUND_ROBIN,
    };
    opts.drain_wait = Duration::from_secs(args.drain_wait_s);
    opts.config_source = config_source;
    opts.watch_config = !args.no_watch;
    if !(args.retry_budget_percent.is_finite()
        && (0.0..=100.0).contains(&args.retry_budget_percent))
    {
        eprintln!("outrider: --retry-budget-percent must be within 0 to 100");
        return ExitCode::from(1);
    }
    opts.runtime.retry_budget = outrider_http::RetryBudgetConfig {
        percent: args.retry_budget_percent,
        min_retry_concurrency: args.retry_budget_min,
    };
    opts.runtime.client_side_limits = args.client_side_limits;
    opts.max_connections = args.max_connections;
    opts.serve.header_read_timeout = args.header_read_timeout;
    if args.access_log != "off" {
        opts.transparent_access_log = Some(outrider_config::AccessLog {
            path: args.access_log.clone(),
            format: outrider_config::AccessLogFormat::Default,
        });
    }

    let workers = args.workers.filter(|w| *w > 0).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    // One worker means one thread: a current-thread runtime has no work-stealing queues and
    // no cross-thread wake-ups, which is cheaper per request and per idle wake-up.
    let built = if workers == 1 {
        crate::cache_on_runtime_threads(&mut tokio::runtime::Builder::new_current_thread())
            .enable_all()
            .build()
    } else {
        crate::cache_on_runtime_threads(&mut tokio::runtime::Builder::new_multi_thread())
            .worker_threads(workers)
            .enable_all()
            .build()
    };
    let runtime = match built {
        Ok(r) => r,
        Err(e) => {
            eprintln!("outrider: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    // With one worker, the worker is this thread (it runs `serve`).
    runtime.block_on(serve(opts, workers == 1))
}

/// Re-exported names, so this file does not depend on the balance crate directly.
mod outrider_balance_algorithm {
    pub use outrider_http::Algorithm;
    pub const P2C: Algorithm = Algorithm::P2c;
    pub const ROUND_ROBIN: Algorithm = Algorithm::RoundRobin;
}

/// Runs the proxy until it is told to stop. `worker_is_this_thread`: the runtime is a
/// current-thread one, so this thread serves requests and should cache freed heap blocks.
async fn serve(opts: ProxyOptions, worker_is_this_thread: bool) -> ExitCode {
    let drain_wait = opts.drain_wait;
    // Handlers first: SIGHUP's default action would kill the process while it starts.
    let (mut term, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(h)) => (t, h),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("outrider: cannot watch SIGTERM/SIGHUP: {e}");
            return ExitCode::from(2);
        }
    };
    let proxy = match outrider_app::start(opts).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("outrider: {e}");
            return ExitCode::from(2);
        }
    };
    // Start-up is over: the heap its parsers and compilers used goes back to the kernel.
    outrider_app::release_startup_memory();
    if worker_is_this_thread {
        // Only from now on: blocks that start-up freed would otherwise stay cached (up to
        // 256 KiB), out of reach of the trim above.
        outrider_alloc::enable_thread_cache();
    }
    // And what a burst of connections needed, once they have closed.
    outrider_app::spawn_heap_trimmer();
    let addrs = proxy.addrs();
    eprintln!(
        "outrider: ingress {} egress {} admin {}",
        addrs.ingress,
        addrs.egress,
        addrs.admin.map_or("off".to_string(), |a| a.to_string())
    );
    // SIGHUP reloads for as long as the process lives, draining included.
    let reloads = reload_on_hangup(&proxy, &mut hup);
    tokio::pin!(reloads);
    tokio::select! {
        _ = term.recv() => tracing::info!(drain_wait_s = drain_wait.as_secs(), "SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
        _ = &mut reloads => {}
        _ = proxy.quit_requested() => {
            tracing::info!("quit requested");
            return ExitCode::SUCCESS;
        }
    }
    // A second SIGTERM or SIGINT exits at once.
    tokio::select! {
        _ = proxy.drain() => tracing::info!("drained"),
        _ = term.recv() => tracing::info!("second SIGTERM: exiting now"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: exiting now"),
        _ = &mut reloads => {}
        _ = proxy.quit_requested() => tracing::info!("quit requested"),
    }
    ExitCode::SUCCESS
}

/// Reloads the configuration on every SIGHUP; never returns while signals can arrive.
async fn reload_on_hangup(proxy: &RunningProxy, hup: &mut Signal) {
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the configuration");
        // The outcome is logged and counted by the reload itself.
        let _ = proxy.reload(Trigger::Signal).await;
    }
    std::future::pending::<()>().await;
}
