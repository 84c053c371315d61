//! Any bytes written raw to an in-process proxy (egress, or ingress when the first byte is odd)
//! with a live upstream behind it: the proxy must answer or close within a bound, never panic,
//! and keep serving (each input gets a fresh connection to the same proxy).
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use outrider_test_support::servers::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest the proxy may take to answer and close after the client half-closes; past it the
/// input counts as a hang (a crash for libFuzzer).
const EXCHANGE_BOUND: Duration = Duration::from_secs(5);

/// Everything stays reachable for the life of the process, so LeakSanitizer does not take the
/// long-lived proxy and upstream for leaks.
struct Harness {
    rt: tokio::runtime::Runtime,
    _proxy: outrider_app::RunningProxy,
    _upstream: TestServer,
    egress: SocketAddr,
    ingress: SocketAddr,
}

fn spec(port: u16) -> String {
    format!(
        "meshName: m\nspec: {{egressFilter: {{type: DROP_ALL}}}}\n---\n\
         meshName: m\nvirtualNodeName: front\nspec:\n  backends: [{{virtualService: {{virtualServiceName: svc.local}}}}]\n  listeners: [{{portMapping: {{port: {port}, protocol: http}}}}]\n  serviceDiscovery: {{dns: {{hostname: 127.0.0.1}}}}\n---\n\
         meshName: m\nvirtualNodeName: up\nspec:\n  listeners: [{{portMapping: {{port: {port}, protocol: http}}}}]\n  serviceDiscovery: {{dns: {{hostname: 127.0.0.1}}}}\n---\n\
         meshName: m\nvirtualServiceName: svc.local\nspec: {{provider: {{virtualNode: {{virtualNodeName: up}}}}}}\n"
    )
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => panic!("harness runtime: {e}"),
        };
        let (proxy, up) = rt.block_on(async {
            let up = TestServer::http("up");
            let sel = outrider_config::Selector { mesh: None, node: Some("front".into()), gateway: None };
            let built = match outrider_config::build_from_str("fuzz.yaml", &spec(up.addr().port()), &sel) {
                Ok(b) => b,
                Err(p) => panic!("harness spec must compile: {p:?}"),
            };
            let opts = outrider_app::ProxyOptions {
                admin_addr: None,
                watch_config: false,
                ..outrider_app::ProxyOptions::local(Some(built.snapshot))
            };
            match outrider_app::start(opts).await {
                Ok(p) => (p, up),
                Err(e) => panic!("harness proxy: {e}"),
            }
        });
        let (egress, ingress) = (proxy.addrs().egress, proxy.addrs().ingress);
        Harness { rt, _proxy: proxy, _upstream: up, egress, ingress }
    })
}

async fn exchange(addr: SocketAddr, data: &[u8]) {
    let Ok(mut s) = TcpStream::connect(addr).await else { return };
    // The proxy may answer and close before reading everything: write errors are fine.
    let _ = s.write_all(data).await;
    let _ = s.shutdown().await;
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let h = harness();
    let addr = if data.first().is_some_and(|b| b & 1 == 1) { h.ingress } else { h.egress };
    // The timer must be made inside the runtime, hence the async block.
    let done = h.rt.block_on(async { tokio::time::timeout(EXCHANGE_BOUND, exchange(addr, data)).await });
    assert!(done.is_ok(), "proxy neither answered nor closed within {EXCHANGE_BOUND:?}");
});
