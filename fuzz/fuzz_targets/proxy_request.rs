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

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let rt = outrider_fuzz::runtime();
        let (proxy, up) = rt.block_on(async {
            let up = TestServer::http("up");
            (outrider_fuzz::start_proxy(up.addr().port()).await, up)
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
