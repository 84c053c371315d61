//! The Prometheus page, parsed by a real exposition-format parser: Envoy's names, App Mesh's
//! cluster names, and counters that move when they should.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use outrider_test_support::servers::TestServer;
use prometheus_parse::{Scrape, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn admin_get(admin: SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The admin answers with a length-delimited body (no chunking) for these pages.
    body.to_string()
}

async fn scrape(admin: SocketAddr) -> Scrape {
    let body = admin_get(admin, "/stats/prometheus").await;
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// The value of a counter or gauge sample with the given labels (0 when absent).
fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            Value::Summary(_) => 0.0,
        })
        .sum()
}

#[tokio::test]
async fn envoy_metric_names_move_with_traffic() {
    let web = TestServer::http("web");
    let spec = stream(&[
        mesh("DROP_ALL"),
        client(&["web.local"], &[]),
        local_node("web", web.addr().port(), "http"),
        service_node("web.local", "web"),
    ]);
    let proxy = start(&spec).await;
    let admin = proxy.addrs().admin.unwrap();
    let cluster = format!("cds_egress_m_web_http_{}", web.addr().port());
    let c = [("envoy_cluster_name", cluster.as_str())];
    let eg = [("envoy_http_conn_manager_prefix", "egress")];

    let before = scrape(admin).await;
    let rq0 = value(&before, "envoy_cluster_upstream_rq_total", &c);
    let mut h1 = H1::connect(proxy.addrs().egress).await;
    for _ in 0..5 {
        assert_eq!(h1.get("web.local", "/").await.status, 200);
    }
    assert_eq!(h1.get("unknown.local", "/").await.status, 404);
    let after = scrape(admin).await;

    assert_eq!(
        value(&after, "envoy_cluster_upstream_rq_total", &c) - rq0,
        5.0
    );
    assert_eq!(
        value(
            &after,
            "envoy_cluster_upstream_rq_xx",
            &[c[0], ("envoy_response_code_class", "2")]
        ),
        5.0
    );
    assert!(value(&after, "envoy_cluster_upstream_cx_total", &c) >= 1.0);
    assert!(value(&after, "envoy_cluster_upstream_cx_active", &c) >= 1.0);
    assert_eq!(value(&after, "envoy_cluster_membership_total", &c), 1.0);
    assert_eq!(value(&after, "envoy_cluster_membership_healthy", &c), 1.0);
    // rq_time is a histogram with Envoy's millisecond buckets.
    let hist = after
        .samples
        .iter()
        .find(|x| {
            x.metric == "envoy_cluster_upstream_rq_time"
                && x.labels.get("envoy_cluster_name") == Some(&cluster)
        })
        .expect("rq_time histogram");
    match &hist.value {
        Value::Histogram(b) => {
            assert!(b.iter().any(|h| h.less_than == 0.5));
            assert!(b.iter().any(|h| h.less_than == 3_600_000.0));
            assert_eq!(b.iter().map(|h| h.count).fold(0.0, f64::max), 5.0);
        }
        other => panic!("rq_time is not a histogram: {other:?}"),
    }
    assert_eq!(
        value(&after, "envoy_http_downstream_rq_total", &eg)
            - value(&before, "envoy_http_downstream_rq_total", &eg),
        6.0
    );
    assert!(
        value(
            &after,
            "envoy_http_downstream_rq_xx",
            &[eg[0], ("envoy_response_code_class", "4")]
        ) >= 1.0
    );
    assert!(value(&after, "envoy_http_downstream_cx_total", &eg) >= 1.0);
    assert_eq!(value(&after, "envoy_server_live", &[]), 1.0);
    assert!(value(&after, "envoy_server_memory_allocated", &[]) > 0.0);

    // The same samples in Envoy's `name: value` shape, and the endpoint list.
    let stats = admin_get(admin, "/stats").await;
    assert!(
        stats.contains("envoy_cluster_upstream_rq_total{"),
        "{stats}"
    );
    let clusters = admin_get(admin, "/clusters").await;
    assert!(
        clusters.contains(&format!("{cluster}::{}::health_flags::healthy", web.addr())),
        "{clusters}"
    );
    proxy.shutdown(Duration::from_secs(1)).await;
}
