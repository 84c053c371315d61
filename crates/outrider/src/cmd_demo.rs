//! `outrider demo`: demo services and the proxy in one process, on an embedded App Mesh spec.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use outrider_app::ProxyOptions;
use outrider_upstream::{Latency, UpstreamConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// The embedded spec (create-input shape, YAML stream).
const DEMO_SPEC: &str = include_str!("demo.yaml");
/// Share of the `reports` service's answers that are 503s (hidden by the implicit retry).
const REPORTS_FAIL_RATE: f64 = 0.2;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Egress listener (point curl's -x or Host header here).
    #[arg(long, default_value = "127.0.0.1:15001")]
    pub egress_addr: SocketAddr,
    /// Ingress listener.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub ingress_addr: SocketAddr,
    /// Admin endpoint.
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin_addr: SocketAddr,
    /// Send the printed requests itself, report what came back, and exit (0 when every demo
    /// behaviour showed).
    #[arg(long)]
    pub check: bool,
}

pub fn run(args: DemoArgs) -> ExitCode {
    let _ = outrider_telemetry::init_logging("warning", outrider_telemetry::LogFormat::Text);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("outrider demo: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(demo(args))
}

async fn start_service(
    name: &str,
    fail_rate: f64,
    shutdown: &CancellationToken,
) -> std::io::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let cfg = UpstreamConfig {
        name: name.to_string(),
        latency: Latency::None,
        fail_rate,
        fail_status: 503,
        body_size: None,
    };
    let token = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = outrider_upstream::serve(listener, Arc::new(cfg), token).await {
            eprintln!("demo service failed: {e}");
        }
    });
    Ok(port)
}

async fn demo(args: DemoArgs) -> ExitCode {
    let shutdown = CancellationToken::new();
    let ports = async {
        Ok::<_, std::io::Error>((
            start_service("greeter-v1", 0.0, &shutdown).await?,
            start_service("greeter-v2", 0.0, &shutdown).await?,
            start_service("reports", REPORTS_FAIL_RATE, &shutdown).await?,
        ))
    };
    let (v1, v2, reports) = match ports.await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("outrider demo: cannot start the demo services: {e}");
            return ExitCode::from(2);
        }
    };
    let spec = DEMO_SPEC
        .replace("__V1__", &v1.to_string())
        .replace("__V2__", &v2.to_string())
        .replace("__REPORTS__", &reports.to_string());
    let selector = outrider_config::Selector {
        mesh: None,
        node: Some("demo-client".into()),
        gateway: None,
    };
    let built = match outrider_config::build_from_str("demo.yaml", &spec, &selector) {
        Ok(b) => b,
        Err(problems) => {
            for p in problems {
                eprintln!("{p}");
            }
            return ExitCode::from(2);
        }
    };
    let mut opts = ProxyOptions::local(Some(built.snapshot));
    opts.egress_addr = args.egress_addr;
    opts.ingress_addr = args.ingress_addr;
    opts.admin_addr = Some(args.admin_addr);
    let proxy = match outrider_app::start(opts).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "outrider demo: {e} (use --egress-addr/--ingress-addr/--admin-addr 127.0.0.1:0 to pick free ports)"
            );
            return ExitCode::from(2);
        }
    };
    let addrs = proxy.addrs();
    let egress = addrs.egress;
    let admin = addrs
        .admin
        .map_or_else(|| "off".to_string(), |a| a.to_string());
    println!("Outrider demo: mesh `demo`, this proxy is virtual node `demo-client`.");
    println!(
        "Services: greeter-v1 on :{v1}, greeter-v2 on :{v2}, reports on :{reports} (20% of its answers are 503s)."
    );
    println!();
    println!("# 80/20 weighted split between greeter-v1 and greeter-v2 (route `split`):");
    println!(
        "for i in $(seq 20); do curl -s -x http://{egress} http://greeter.demo.local/; done | sort | uniq -c"
    );
    println!("# header route (`canary`): x-canary: true always goes to greeter-v2:");
    println!("curl -s -x http://{egress} -H 'x-canary: true' http://greeter.demo.local/");
    println!("# path route (`reports-path`): /reports goes to the reports service:");
    println!("curl -s -x http://{egress} http://greeter.demo.local/reports");
    println!("# HTTP/2 (h2c, prior knowledge) on the same listener:");
    println!("curl -s --http2-prior-knowledge -H 'Host: greeter.demo.local' http://{egress}/");
    println!(
        "# a flaky service: App Mesh's implicit retry policy (2 retries on 503) hides its failures:"
    );
    println!(
        "for i in $(seq 20); do curl -s -o /dev/null -w '%{{http_code}}\\n' -x http://{egress} http://reports.demo.local/; done | sort | uniq -c"
    );
    println!("# what the proxy did:");
    println!("curl -s http://{admin}/stats/prometheus | grep -E 'upstream_rq_(total|retry)'");
    println!("curl -s http://{admin}/clusters");
    println!("curl -s http://{admin}/config_dump");
    println!();

    if args.check {
        let ok = check(egress).await;
        proxy.shutdown(Duration::from_secs(1)).await;
        shutdown.cancel();
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    println!("Press Ctrl-C to stop.");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = proxy.quit_requested() => {}
    }
    proxy.shutdown(Duration::from_secs(2)).await;
    shutdown.cancel();
    ExitCode::SUCCESS
}

/// One HTTP/1.1 request through the egress listener as an explicit proxy; returns status and body.
async fn get(
    egress: SocketAddr,
    host: &str,
    path: &str,
    extra: &str,
) -> std::io::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(egress).await?;
    let req = format!(
        "GET http://{host}{path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "demo request timed out")
        })??;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

async fn check(egress: SocketAddr) -> bool {
    const N: usize = 200;
    let mut v1 = 0;
    let mut v2 = 0;
    for _ in 0..N {
        match get(egress, "greeter.demo.local", "/", "").await {
            Ok((200, body)) if body.contains("greeter-v1") => v1 += 1,
            Ok((200, body)) if body.contains("greeter-v2") => v2 += 1,
            other => {
                eprintln!("split: unexpected answer {other:?}");
                return false;
            }
        }
    }
    let share = v1 as f64 / N as f64;
    println!(
        "split: {v1} greeter-v1, {v2} greeter-v2 of {N} ({:.0}% / {:.0}%)",
        share * 100.0,
        (1.0 - share) * 100.0
    );
    let split_ok = (0.70..=0.90).contains(&share);
    let canary = get(egress, "greeter.demo.local", "/", "x-canary: true\r\n").await;
    let canary_ok = matches!(&canary, Ok((200, b)) if b.contains("greeter-v2"));
    println!("canary header route: {canary:?}");
    let path = get(egress, "greeter.demo.local", "/reports", "").await;
    // Either answer comes from the reports service: it fails 20% of its answers by design,
    // and even after two retries one request in ~125 still ends in its 503.
    let path_ok = matches!(&path, Ok((200, b)) if b.contains("reports"))
        || matches!(&path, Ok((503, b)) if b.contains("injected failure"));
    println!("path route: {path:?}");
    let mut flaky_ok = 0;
    for _ in 0..20 {
        if matches!(
            get(egress, "reports.demo.local", "/", "").await,
            Ok((200, _))
        ) {
            flaky_ok += 1;
        }
    }
    println!("reports (flaky, retried): {flaky_ok}/20 answered 200");
    let ok = split_ok && canary_ok && path_ok && flaky_ok >= 18;
    println!("demo check: {}", if ok { "ok" } else { "FAILED" });
    ok
}
