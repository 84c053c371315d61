//! Active health checks end to end: a node listener's `healthCheck` run by the client proxy
//! against each endpoint, an unhealthy endpoint taken out of rotation and brought back.
//!
//! App Mesh's minimum interval is 5 s and thresholds are at least 2, so this test takes about
//! 20 s of wall time; every wait is bounded.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use outrider_test_support::dns::DnsServer;
use outrider_test_support::faults::FaultServer;

const NAME: &str = "checked.m.local";

async fn served_by(c: &mut H1, n: usize) -> (usize, usize) {
    let (mut a, mut b) = (0, 0);
    for _ in 0..n {
        let r = c.get("checked.local", "/").await;
        assert_eq!(
            r.status, 200,
            "no request may fail while an endpoint is unhealthy"
        );
        match r.served_by() {
            Some("a") => a += 1,
            Some("b") => b += 1,
            other => panic!("unexpected server {other:?}"),
        }
    }
    (a, b)
}

async fn clusters(proxy: &outrider_app::RunningProxy) -> String {
    let mut admin = H1::connect(proxy.addrs().admin.unwrap()).await;
    String::from_utf8_lossy(&admin.get("admin", "/clusters").await.body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_endpoint_leaves_rotation_and_comes_back() {
    let a = FaultServer::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), "a")
        .await
        .unwrap();
    let port = a.addr().port();
    let b = FaultServer::start_on(SocketAddr::from(([127, 0, 0, 2], port)), "b")
        .await
        .unwrap();
    b.faults().unhealthy.store(true, Ordering::SeqCst);
    let dns = DnsServer::start().await.unwrap();
    dns.set(
        NAME,
        &[
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
        ],
    );
    let checked = format!(
        "meshName: m\nvirtualNodeName: checked\nspec:\n  listeners:\n    - portMapping: {{port: {port}, protocol: http}}\n      healthCheck: {{protocol: http, path: /health, intervalMillis: 5000, timeoutMillis: 2000, healthyThreshold: 2, unhealthyThreshold: 2}}\n  serviceDiscovery: {{dns: {{hostname: {NAME}}}}}\n"
    );
    let spec = stream(&[
        mesh("DROP_ALL"),
        client(&["checked.local"], &[]),
        checked,
        service_node("checked.local", "checked"),
    ]);
    let proxy = start_as(&spec, CLIENT, Some(dns.addr())).await;
    let mut c = H1::connect(proxy.addrs().egress).await;

    // Failing checks mark b unhealthy after `unhealthyThreshold` intervals.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if clusters(&proxy).await.contains("127.0.0.2")
            && clusters(&proxy).await.contains("/failed_active_hc")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b never marked unhealthy:\n{}",
            clusters(&proxy).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (to_a, to_b) = served_by(&mut c, 50).await;
    assert_eq!((to_a, to_b), (50, 0), "an unhealthy endpoint got traffic");

    // Passing checks bring it back after `healthyThreshold` intervals.
    b.faults().unhealthy.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if !clusters(&proxy).await.contains("/failed_active_hc") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b never came back:\n{}",
            clusters(&proxy).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, to_b) = served_by(&mut c, 200).await;
    assert!(to_b > 0, "a recovered endpoint got no traffic");

    let mut admin = H1::connect(proxy.addrs().admin.unwrap()).await;
    let stats =
        String::from_utf8_lossy(&admin.get("admin", "/stats/prometheus").await.body).into_owned();
    for metric in [
        "envoy_cluster_health_check_attempt",
        "envoy_cluster_health_check_failure",
        "envoy_cluster_health_check_success",
    ] {
        assert!(
            stats
                .lines()
                .any(|l| l.starts_with(metric) && !l.ends_with(" 0")),
            "{metric} did not move:\n{stats}"
        );
    }
    proxy.shutdown(Duration::from_secs(1)).await;
}
