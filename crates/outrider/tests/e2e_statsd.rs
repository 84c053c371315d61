//! DogStatsD through the App Mesh image's variables: a real UDP socket receives the proxy's
//! metrics with Envoy's dotted names, the cluster tag and App Mesh's stats tags.
//!
//! One test per binary: the metrics recorder is process-wide and reads the environment once.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::time::{Duration, Instant};

use common::*;
use outrider_test_support::servers::TestServer;

#[tokio::test]
async fn dogstatsd_datagrams_carry_names_tags_and_values() {
    let sink = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = sink.local_addr().unwrap().port();
    // SAFETY: set before any other thread of this test binary reads the environment; this
    // binary holds this one test.
    unsafe {
        std::env::set_var("ENABLE_ENVOY_DOG_STATSD", "1");
        std::env::set_var("STATSD_ADDRESS", "127.0.0.1");
        std::env::set_var("STATSD_PORT", port.to_string());
        std::env::set_var("STATSD_FLUSH_INTERVAL_MS", "100");
        std::env::set_var("ENABLE_ENVOY_STATS_TAGS", "1");
    }
    let web = TestServer::http("web");
    let spec = stream(&[
        mesh("DROP_ALL"),
        client(&["web.local"], &[]),
        local_node("web", web.addr().port(), "http"),
        service_node("web.local", "web"),
    ]);
    let proxy = start(&spec).await;
    let mut h1 = H1::connect(proxy.addrs().egress).await;
    for _ in 0..3 {
        assert_eq!(h1.get("web.local", "/").await.status, 200);
    }
    let cluster = format!("cds_egress_m_web_http_{}", web.addr().port());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut total = 0.0;
    let mut seen = String::new();
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline
        && (total < 3.0 || !seen.contains("envoy.cluster.upstream_rq_time:"))
    {
        let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), sink.recv(&mut buf)).await
        else {
            continue;
        };
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        for line in text.lines() {
            // envoy.cluster.upstream_rq_total:3|c|#envoy.cluster_name:...,appmesh.mesh:m,...
            if line.starts_with("envoy.cluster.upstream_rq_total:")
                && line.contains(&format!("envoy.cluster_name:{cluster}"))
            {
                assert!(line.contains("|c"), "{line}");
                assert!(line.contains("appmesh.mesh:m"), "{line}");
                assert!(line.contains("appmesh.virtual_node:client"), "{line}");
                let value: f64 = line
                    .split(':')
                    .nth(1)
                    .unwrap()
                    .split('|')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                total += value;
            }
        }
        seen.push_str(&text);
    }
    assert_eq!(total, 3.0, "datagrams seen:\n{seen}");
    assert!(seen.contains("envoy.cluster.upstream_rq_time:"), "{seen}");
    assert!(seen.contains("|ms"), "{seen}");
    proxy.shutdown(Duration::from_secs(1)).await;
}
