//! End to end: what a client sees when the upstream is down or slow — Envoy-shaped local
//! replies for HTTP and gRPC.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns, unwrap here

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    H1, H2, client, local_node, mesh, router, service_node, service_router, start, stream,
};
use http::StatusCode;
use outrider_test_support::servers::grpc_frame;
use outrider_upstream::{Latency, UpstreamConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const GRACE: Duration = Duration::from_millis(200);

/// A port nothing listens on: bound, then released.
async fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_become_503_or_unavailable() {
    let port = dead_port().await;
    let spec = stream(&[
        mesh("DROP_ALL"),
        client(&["down.local", "gdown.local"], &[]),
        local_node("down", port, "http"),
        local_node("gdown", port, "grpc"),
        service_node("down.local", "down"),
        service_node("gdown.local", "gdown"),
    ]);
    let proxy = start(&spec).await;
    let mut c = H1::connect(proxy.addrs().egress).await;
    let r = c.get("down.local", "/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert!(body.contains("upstream connect error"), "{body}");
    let mut g = H2::connect(proxy.addrs().egress).await;
    let r = g
        .grpc("gdown.local", "/test.Echo/Unary", grpc_frame(b"x"), &[])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("grpc-status"), Some("14"));
    proxy.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_answers_504() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = CancellationToken::new();
    let cfg = UpstreamConfig {
        name: "slow".into(),
        latency: Latency::Fixed(Duration::from_secs(3)),
        ..UpstreamConfig::default()
    };
    tokio::spawn(outrider_upstream::serve(
        listener,
        Arc::new(cfg),
        stop.clone(),
    ));
    let timed = "meshName: m\nvirtualRouterName: r\nrouteName: t\nspec:\n  httpRoute:\n    match: {prefix: /}\n    action: {weightedTargets: [{virtualNode: slow, weight: 1}]}\n    timeout: {perRequest: {unit: ms, value: 200}}\n";
    let spec = stream(&[
        mesh("DROP_ALL"),
        client(&["slow.local"], &[]),
        local_node("slow", port, "http"),
        router("r", &[(8080, "http")]),
        service_router("slow.local", "r"),
        timed.to_string(),
    ]);
    let proxy = start(&spec).await;
    let mut c = H1::connect(proxy.addrs().egress).await;
    let started = Instant::now();
    let r = c.get("slow.local", "/").await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(String::from_utf8_lossy(&r.body), "upstream request timeout");
    stop.cancel();
    proxy.shutdown(GRACE).await;
}
