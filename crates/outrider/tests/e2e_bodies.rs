//! End to end: request and response bodies — small (replayable) and large (streamed), sized and
//! chunked, across HTTP/1.1 and h2c — and body replay on retry.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns, unwrap here

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::{Counting, H1, H2, client, h1_request, local_node, mesh, service_node, start, stream};
use http::{Method, Request, StatusCode, Version};
use http_body_util::Full;
use outrider_test_support::servers::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GRACE: Duration = Duration::from_millis(200);
/// Larger than the proxy's replay buffer, so it streams.
const LARGE: usize = 300 * 1024;

fn one_service(service: &str, port: u16, protocol: &str) -> String {
    stream(&[
        mesh("DROP_ALL"),
        client(&[service], &[]),
        local_node("target", port, protocol),
        service_node(service, "target"),
    ])
}

fn payload(n: usize) -> Bytes {
    (0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into()
}

fn echo_h1(host: &str, body: Bytes) -> Request<Full<Bytes>> {
    let mut req = h1_request(Method::POST, host, "/echo", &[]);
    *req.body_mut() = Full::new(body);
    req
}

fn echo_h2(authority: &str, body: Bytes) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::POST)
        .uri(format!("http://{authority}/echo"))
        .version(Version::HTTP_2)
        .body(Full::new(body))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_echo_through_every_protocol_pair() {
    let h1_up = TestServer::http("h1up");
    let h2_up = TestServer::h2_only("h2up");
    let spec = stream(&[
        mesh("DROP_ALL"),
        client(&["one.local", "two.local"], &[]),
        local_node("one", h1_up.addr().port(), "http"),
        local_node("two", h2_up.addr().port(), "http2"),
        service_node("one.local", "one"),
        service_node("two.local", "two"),
    ]);
    let proxy = start(&spec).await;
    let egress = proxy.addrs().egress;
    let mut h1 = H1::connect(egress).await;
    let mut h2 = H2::connect(egress).await;
    for size in [0, 1, 10 * 1024, LARGE] {
        let body = payload(size);
        for host in ["one.local", "two.local"] {
            let r = h1.send(echo_h1(host, body.clone())).await;
            assert_eq!(r.status, StatusCode::OK, "h1 -> {host}, {size} bytes");
            assert_eq!(r.body.len(), size, "h1 -> {host}");
            assert_eq!(r.body, body, "h1 -> {host}, {size} bytes");
            let r = h2.send(echo_h2(host, body.clone())).await;
            assert_eq!(r.status, StatusCode::OK, "h2 -> {host}, {size} bytes");
            assert_eq!(r.body, body, "h2 -> {host}, {size} bytes");
        }
    }
    proxy.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_request_body_is_forwarded() {
    let up = TestServer::http("up");
    let proxy = start(&one_service("svc.local", up.addr().port(), "http")).await;
    let mut s = TcpStream::connect(proxy.addrs().egress).await.unwrap();
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: svc.local\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(common::EXCHANGE_TIMEOUT, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // Either framing is fine; the bytes must arrive in order.
    assert!(
        text.contains("hello world") || text.contains("hello\r\n6\r\n world"),
        "{text}"
    );
    proxy.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_request_with_body_is_replayed_on_retry() {
    let up = Counting::start(SocketAddr::from(([127, 0, 0, 1], 0)), "flaky", 1)
        .await
        .unwrap();
    let proxy = start(&one_service("svc.local", up.addr().port(), "http")).await;
    let mut c = H1::connect(proxy.addrs().egress).await;
    let mut req = h1_request(Method::PUT, "svc.local", "/doc", &[]);
    *req.body_mut() = Full::new(Bytes::from_static(b"small document"));
    let r = c.send(req).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(up.hits(), 2);
    proxy.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_request_has_no_body() {
    let up = TestServer::http("up");
    let proxy = start(&one_service("svc.local", up.addr().port(), "http")).await;
    let mut c = H1::connect(proxy.addrs().egress).await;
    let r = c
        .send(h1_request(Method::HEAD, "svc.local", "/", &[]))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.is_empty());
    // The connection is still usable afterwards.
    let r = c.get("svc.local", "/").await;
    assert_eq!(r.body, Bytes::from_static(b"up\n"));
    assert_eq!(up.last_request().unwrap().method, Method::GET);
    proxy.shutdown(GRACE).await;
}
