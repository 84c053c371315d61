//! End to end: DNS service discovery against the in-process DNS server, with endpoints added and
//! removed while traffic flows.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns, unwrap here

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{CLIENT, Counting, H1, X_UPSTREAM, client, mesh, node, service_node, stream};
use http::StatusCode;
use outrider_test_support::dns::DnsServer;
use tokio::time::Instant;

const NAME: &str = "app.mesh.test";
const FIRST: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const SECOND: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// Concurrent client loops; more than one so a least-loaded balancer spreads the load.
const CLIENTS: usize = 4;
/// Pause between one client's requests.
const PACE: Duration = Duration::from_millis(10);

/// Two counting upstreams on the same port, at 127.0.0.1 and 127.0.0.2.
async fn pair() -> (Counting, Counting) {
    for _ in 0..16 {
        let first = Counting::start(SocketAddr::new(FIRST, 0), "first", 0)
            .await
            .unwrap();
        let port = first.addr().port();
        if let Ok(second) = Counting::start(SocketAddr::new(SECOND, port), "second", 0).await {
            return (first, second);
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

/// One response: when it arrived and who served it (None: a failure).
type Sample = (Instant, Option<String>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_added_and_removed_under_traffic_without_errors() {
    let (first, second) = pair().await;
    let dns = DnsServer::start().await.unwrap();
    dns.set(NAME, &[FIRST]);
    let spec = stream(&[
        mesh("DROP_ALL"),
        client(&["app.local"], &[]),
        node("app", NAME, first.addr().port(), "http"),
        service_node("app.local", "app"),
    ]);
    // Round robin: this test is about discovery, and it needs both endpoints to get traffic
    // while both are listed. Least-request over peak EWMA may, by design, keep away from an
    // endpoint whose last answer was slow (a loaded CI machine) for seconds.
    let sel = outrider_config::Selector {
        mesh: None,
        node: Some(CLIENT.to_string()),
        gateway: None,
    };
    let built = outrider_config::build_from_str("test.yaml", &spec, &sel).unwrap();
    let mut opts = outrider_app::ProxyOptions::local(Some(built.snapshot));
    opts.dns_refresh = common::TEST_DNS_REFRESH;
    opts.resolver = outrider_discovery::ResolverConfig::Server(dns.addr());
    opts.runtime.algorithm = outrider_http::Algorithm::RoundRobin;
    let proxy = outrider_app::start(opts).await.unwrap();
    let egress = proxy.addrs().egress;

    let stop = Arc::new(AtomicBool::new(false));
    let mut loops = Vec::new();
    for _ in 0..CLIENTS {
        let stop = stop.clone();
        loops.push(tokio::spawn(async move {
            let mut c = H1::connect(egress).await;
            let mut samples: Vec<Sample> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = c.get("app.local", "/").await;
                let who = (r.status == StatusCode::OK)
                    .then(|| r.header(X_UPSTREAM).map(str::to_string))
                    .flatten();
                samples.push((Instant::now(), who));
                tokio::time::sleep(PACE).await;
            }
            samples
        }));
    }

    tokio::time::sleep(Duration::from_millis(400)).await;
    let added = Instant::now();
    dns.set(NAME, &[FIRST, SECOND]);
    // Long enough that both endpoints serve for a while even on a loaded machine.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let removed = Instant::now();
    dns.set(NAME, &[FIRST]);
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);

    let mut samples = Vec::new();
    for l in loops {
        samples.extend(l.await.unwrap());
    }
    let failures = samples.iter().filter(|(_, who)| who.is_none()).count();
    assert!(samples.len() >= 200, "only {} requests", samples.len());
    assert_eq!(
        failures,
        0,
        "{failures} of {} requests failed",
        samples.len()
    );

    let served = |from: Instant, to: Instant, name: &str| {
        samples
            .iter()
            .filter(|(t, who)| *t >= from && *t < to && who.as_deref() == Some(name))
            .count()
    };
    // Allow a few refresh periods for each change to take effect.
    let settle = Duration::from_millis(400);
    let end = Instant::now();
    assert_eq!(
        served(samples[0].0, added, "second"),
        0,
        "second got traffic before it was in DNS"
    );
    let both_first = served(added + settle, removed, "first");
    let both_second = served(added + settle, removed, "second");
    assert!(
        both_first > 0 && both_second > 0,
        "with both endpoints: first {both_first}, second {both_second}"
    );
    assert_eq!(
        served(removed + settle, end, "second"),
        0,
        "second got traffic after it left DNS"
    );
    assert!(second.hits() > 0);
    proxy.shutdown(Duration::from_millis(200)).await;
}
