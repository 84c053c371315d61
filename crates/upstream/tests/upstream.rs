//! End-to-end tests of the built-in upstream over real sockets.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use outrider_upstream::{Latency, UpstreamConfig, serve};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Running {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

async fn start(cfg: UpstreamConfig) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(listener, Arc::new(cfg), shutdown.clone()));
    Running {
        addr,
        shutdown,
        task,
    }
}

fn named(name: &str) -> UpstreamConfig {
    UpstreamConfig {
        name: name.into(),
        ..UpstreamConfig::default()
    }
}

async fn h1(addr: SocketAddr, req: Request<Full<Bytes>>) -> Response<Incoming> {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    send.send_request(req).await.unwrap()
}

async fn h2(addr: SocketAddr, req: Request<Full<Bytes>>) -> Response<Incoming> {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    send.send_request(req).await.unwrap()
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://upstream{path}"))
        .body(Full::default())
        .unwrap()
}

async fn body_and_trailers(resp: Response<Incoming>) -> (Bytes, Option<HeaderMap>) {
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (collected.to_bytes(), trailers)
}

fn grpc_frame(msg: &[u8]) -> Vec<u8> {
    let mut v = vec![0];
    v.extend_from_slice(&u32::try_from(msg.len()).unwrap().to_be_bytes());
    v.extend_from_slice(msg);
    v
}

fn grpc_request(wire: Vec<u8>) -> Request<Full<Bytes>> {
    Request::post("http://upstream/test.Echo/Unary")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(wire)))
        .unwrap()
}

#[tokio::test]
async fn http1_default_body_and_header() {
    let up = start(named("alpha")).await;
    let resp = h1(up.addr, get("/anything")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), Version::HTTP_11);
    assert_eq!(resp.headers()["x-upstream"], "alpha");
    let (body, _) = body_and_trailers(resp).await;
    assert_eq!(body, "hello from alpha\n");
}

#[tokio::test]
async fn h2c_prior_knowledge_on_same_port() {
    let up = start(UpstreamConfig {
        body_size: Some(100_000),
        ..named("beta")
    })
    .await;
    let resp = h2(up.addr, get("/")).await;
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-upstream"], "beta");
    let (body, _) = body_and_trailers(resp).await;
    assert_eq!(body.len(), 100_000);
}

#[tokio::test]
async fn post_body_is_discarded_and_echo_streams_back() {
    let up = start(named("gamma")).await;
    let post = Request::post("http://upstream/upload")
        .body(Full::new(Bytes::from(vec![1u8; 50_000])))
        .unwrap();
    let (body, _) = body_and_trailers(h1(up.addr, post).await).await;
    assert_eq!(body, "hello from gamma\n");

    let payload = Bytes::from((0..200_000u32).map(|i| i as u8).collect::<Vec<_>>());
    for via_header in [false, true] {
        let builder = if via_header {
            Request::put("http://upstream/x").header("x-echo", "1")
        } else {
            Request::post("http://upstream/echo")
        };
        let req = builder.body(Full::new(payload.clone())).unwrap();
        let resp = h1(up.addr, req).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["x-upstream"], "gamma");
        let (body, _) = body_and_trailers(resp).await;
        assert_eq!(body, payload);
    }
    let req = Request::post("http://upstream/echo")
        .body(Full::new(payload.clone()))
        .unwrap();
    let (body, _) = body_and_trailers(h2(up.addr, req).await).await;
    assert_eq!(body, payload);
}

#[tokio::test]
async fn grpc_unary_echo_with_trailers() {
    let up = start(named("grpc")).await;
    let mut wire = grpc_frame(b"hello");
    wire.extend(grpc_frame(b"world"));
    let resp = h2(up.addr, grpc_request(wire.clone())).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    assert_eq!(resp.headers()["x-upstream"], "grpc");
    let (body, trailers) = body_and_trailers(resp).await;
    assert_eq!(body, wire);
    assert_eq!(trailers.unwrap()["grpc-status"], "0");

    // A truncated message is a malformed request: INTERNAL, as real servers answer.
    let mut cut = grpc_frame(b"hello");
    cut.pop();
    let (_, trailers) = body_and_trailers(h2(up.addr, grpc_request(cut)).await).await;
    assert_eq!(trailers.unwrap()["grpc-status"], "13");
}

#[tokio::test]
async fn fail_rate_one_always_fails() {
    let up = start(UpstreamConfig {
        fail_rate: 1.0,
        fail_status: 502,
        ..named("flaky")
    })
    .await;
    for _ in 0..5 {
        let resp = h1(up.addr, get("/")).await;
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(resp.headers()["x-upstream"], "flaky");
        let (body, _) = body_and_trailers(resp).await;
        assert_eq!(body, "injected failure\n");
    }
    let resp = h2(up.addr, grpc_request(grpc_frame(b"x"))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["grpc-status"], "14");
    assert_eq!(resp.headers()["grpc-message"], "injected failure");
    // Trailers-only: the status travels in the headers and the body is empty.
    assert!(http_body::Body::is_end_stream(resp.body()));
}

#[tokio::test]
async fn fixed_latency_is_applied() {
    let delay = Duration::from_millis(200);
    let up = start(UpstreamConfig {
        latency: Latency::Fixed(delay),
        ..named("slow")
    })
    .await;
    let started = Instant::now();
    let resp = h1(up.addr, get("/")).await;
    let elapsed = started.elapsed();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(elapsed >= delay, "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
}

#[tokio::test]
async fn shutdown_stops_accepting_and_returns() {
    let up = start(named("bye")).await;
    let resp = h1(up.addr, get("/")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    up.shutdown.cancel();
    let result = tokio::time::timeout(Duration::from_secs(3), up.task)
        .await
        .unwrap()
        .unwrap();
    assert!(result.is_ok());
    assert!(TcpStream::connect(up.addr).await.is_err());
}

#[tokio::test]
async fn invalid_config_is_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cfg = UpstreamConfig {
        fail_rate: 2.0,
        ..UpstreamConfig::default()
    };
    let err = serve(listener, Arc::new(cfg), CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}
