//! `outrider upstream`: the built-in upstream for demos and load tests.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use outrider_upstream::{Latency, UpstreamConfig};
use tokio_util::sync::CancellationToken;

#[derive(Args, Debug)]
pub struct UpstreamArgs {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Reported in the x-upstream header and the default body.
    #[arg(long, default_value = "upstream")]
    pub name: String,
    /// none, fixed:1ms, uniform:1ms..5ms or exp:5ms.
    #[arg(long, default_value = "none")]
    pub latency: Latency,
    /// Share of requests answered with --status (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Status of injected failures.
    #[arg(long, default_value_t = 503)]
    pub status: u16,
    /// Response body size in bytes (default: a short greeting).
    #[arg(long)]
    pub body_size: Option<usize>,
    /// Worker threads. Default is 1.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
}

pub fn run(args: UpstreamArgs) -> ExitCode {
    let cfg = UpstreamConfig {
        name: args.name,
        latency: args.latency,
        fail_rate: args.fail_rate,
        fail_status: args.status,
        body_size: args.body_size,
    };
    if let Err(e) = cfg.validate() {
        eprintln!("outrider upstream: {e}");
        return ExitCode::from(1);
    }
    let rt = match crate::cache_on_runtime_threads(&mut tokio::runtime::Builder::new_multi_thread())
        .worker_threads(args.workers.max(1))
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("outrider upstream: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(args.addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("outrider upstream: cannot listen on {}: {e}", args.addr);
                return ExitCode::from(2);
            }
        };
        eprintln!("outrider upstream: listening on {}", args.addr);
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            stop.cancel();
        });
        match outrider_upstream::serve(listener, Arc::new(cfg), shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("outrider upstream: {e}");
                ExitCode::from(2)
            }
        }
    })
}
