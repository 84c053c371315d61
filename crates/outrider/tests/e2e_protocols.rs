//! End to end: protocol translation (HTTP/1.1 ⇄ h2c), gRPC with trailers, WebSocket upgrades,
//! ingress to the local app, header hygiene and the implicit retry policy.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns, unwrap here

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::{
    Counting, EXCHANGE_TIMEOUT, H1, H2, X_UPSTREAM, client, h1_request, h2_request, local_node,
    mesh, service_node, start, stream,
};
use http::{Method, StatusCode, Version};
use outrider_test_support::servers::{
    GRPC_FAIL, GRPC_STREAM, GRPC_UNARY, TestServer, grpc_decode, grpc_frame,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GRACE: Duration = Duration::from_millis(200);

/// A mesh where `service` is provided directly by one node on `port` speaking `protocol`.
fn one_service(service: &str, port: u16, protocol: &str) -> String {
    stream(&[
        mesh("DROP_ALL"),
        client(&[service], &[]),
        local_node("target", port, protocol),
        service_node(service, "target"),
    ])
}

async fn curl(args: &[&str]) -> (bool, String, String) {
    let out = tokio::time::timeout(
        EXCHANGE_TIMEOUT,
        tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "4"])
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("curl timed out")
    .expect("curl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_downstream_to_h2c_upstream() {
    let up = TestServer::h2_only("h2up");
    let proxy = start(&one_service("h2.local", up.addr().port(), "http2")).await;
    let mut c = H1::connect(proxy.addrs().egress).await;
    for i in 0..3 {
        let r = c.get("h2.local", &format!("/a?i={i}")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.version, Version::HTTP_11);
        assert_eq!(r.body, Bytes::from_static(b"h2up\n"));
    }
    let seen = up.last_request().unwrap();
    assert_eq!(seen.version, Version::HTTP_2);
    assert_eq!(seen.uri.authority().map(|a| a.as_str()), Some("h2.local"));
    assert_eq!(seen.uri.path_and_query().unwrap().as_str(), "/a?i=2");

    // curl as an explicit HTTP/1.1 proxy client (absolute-form request target).
    let egress = format!("http://{}", proxy.addrs().egress);
    let (ok, body, err) = curl(&["-x", &egress, "http://h2.local/curl"]).await;
    assert!(ok, "curl failed: {err}");
    assert_eq!(body, "h2up\n");
    let seen = up.last_request().unwrap();
    assert_eq!(seen.version, Version::HTTP_2);
    assert_eq!(seen.uri.authority().map(|a| a.as_str()), Some("h2.local"));
    assert_eq!(seen.uri.path(), "/curl");
    proxy.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_downstream_to_http1_upstream() {
    let up = TestServer::http("h1up");
    let proxy = start(&one_service("h1.local", up.addr().port(), "http")).await;
    let mut c = H2::connect(proxy.addrs().egress).await;
    let r = c.send(h2_request("h1.local", "/b", &[])).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.body, Bytes::from_static(b"h1up\n"));
    let seen = up.last_request().unwrap();
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.headers.get("host").unwrap(), "h1.local");
    assert_eq!(seen.uri.path(), "/b");

    // curl with h2c prior knowledge: its Host header becomes :authority.
    let url = format!("http://{}/curl", proxy.addrs().egress);
    let (ok, body, err) = curl(&["--http2-prior-knowledge", "-H", "Host: h1.local", &url]).await;
    assert!(ok, "curl failed: {err}");
    assert_eq!(body, "h1up\n");
    let seen = up.last_request().unwrap();
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.headers.get("host").unwrap(), "h1.local");
    proxy.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_streaming_and_failure_pass_through() {
    let up = TestServer::grpc("grpcup");
    let proxy = start(&one_service("grpc.local", up.addr().port(), "grpc")).await;
    let mut c = H2::connect(proxy.addrs().egress).await;

    let r = c
        .grpc("grpc.local", GRPC_UNARY, grpc_frame(b"hello"), &[])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("application/grpc"));
    assert_eq!(grpc_decode(&r.body), vec![Bytes::from_static(b"hello")]);
    assert_eq!(r.trailer("grpc-status"), Some("0"));

    let r = c
        .grpc("grpc.local", GRPC_STREAM, grpc_frame(&[5]), &[])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let got: Vec<Bytes> = grpc_decode(&r.body);
    let want: Vec<Bytes> = (0u8..5).map(|i| Bytes::copy_from_slice(&[i])).collect();
    assert_eq!(got, want);
    assert_eq!(r.trailer("grpc-status"), Some("0"));
    assert_eq!(r.trailer("x-trailer"), Some("done"));

    let r = c.grpc("grpc.local", GRPC_FAIL, grpc_frame(b"x"), &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("grpc-status"), Some("13"));
    assert_eq!(r.header("grpc-message"), Some("boom"));

    let seen = up.last_request().unwrap();
    assert_eq!(seen.version, Version::HTTP_2);
    assert_eq!(seen.uri.path(), GRPC_FAIL);
    assert_eq!(seen.headers.get("te").unwrap(), "trailers");
    proxy.shutdown(GRACE).await;
}

/// Reads until the end of an HTTP/1.1 response head.
async fn read_head(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).await.unwrap();
        assert_eq!(n, 1, "connection closed inside the response head");
        buf.push(byte[0]);
        assert!(buf.len() < 16 * 1024, "response head too long");
    }
    String::from_utf8(buf).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_echoes_bytes_both_ways() {
    let up = TestServer::websocket_echo("ws");
    let proxy = start(&one_service("ws.local", up.addr().port(), "http")).await;
    tokio::time::timeout(EXCHANGE_TIMEOUT, async {
        let mut s = TcpStream::connect(proxy.addrs().egress).await.unwrap();
        s.write_all(
            b"GET /chat HTTP/1.1\r\nHost: ws.local\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
        let head = read_head(&mut s).await;
        let lower = head.to_ascii_lowercase();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(lower.contains("upgrade: websocket"), "{head}");
        assert!(
            head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "accept key: {head}"
        );
        for msg in [&b"ping from client"[..], &[0u8, 1, 2, 255, 254][..]] {
            s.write_all(msg).await.unwrap();
            let mut back = vec![0u8; msg.len()];
            s.read_exact(&mut back).await.unwrap();
            assert_eq!(back, msg);
        }
        s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    })
    .await
    .expect("websocket exchange timed out");
    let seen = up.last_request().unwrap();
    assert_eq!(seen.headers.get("upgrade").unwrap(), "websocket");
    proxy.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_reaches_the_local_app() {
    let app = TestServer::http("app");
    let spec = stream(&[
        mesh("DROP_ALL"),
        client(&[], &[(app.addr().port(), "http")]),
    ]);
    let proxy = start(&spec).await;
    let mut c = H1::connect(proxy.addrs().ingress).await;
    let r = c.get("client.local", "/from-mesh").await;
    assert_eq!((r.status, r.served_by()), (StatusCode::OK, Some("app")));
    let seen = app.last_request().unwrap();
    assert_eq!(seen.uri.path(), "/from-mesh");
    assert_eq!(seen.headers.get("host").unwrap(), "client.local");
    let mut c2 = H2::connect(proxy.addrs().ingress).await;
    let r = c2.send(h2_request("client.local", "/h2", &[])).await;
    assert_eq!((r.status, r.served_by()), (StatusCode::OK, Some("app")));
    assert_eq!(app.last_request().unwrap().version, Version::HTTP_11);
    proxy.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_removed_forwarding_headers_added() {
    let up = TestServer::http("up");
    let proxy = start(&one_service("svc.local", up.addr().port(), "http")).await;
    let mut c = H1::connect(proxy.addrs().egress).await;
    let r = c
        .send(h1_request(
            Method::GET,
            "svc.local",
            "/",
            &[
                ("connection", "x-hop, keep-alive"),
                ("x-hop", "secret"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("x-forwarded-for", "10.0.0.1"),
                ("x-end-to-end", "kept"),
            ],
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let h = up.last_request().unwrap().headers;
    for gone in ["x-hop", "keep-alive", "proxy-connection"] {
        assert!(!h.contains_key(gone), "{gone} was forwarded: {h:?}");
    }
    assert_eq!(h.get("x-end-to-end").unwrap(), "kept");
    assert_eq!(h.get("x-forwarded-for").unwrap(), "10.0.0.1,127.0.0.1");
    let id = h.get("x-request-id").unwrap().to_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "{id}");

    let r = c
        .send(h1_request(
            Method::GET,
            "svc.local",
            "/",
            &[("x-request-id", "given-id")],
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let h = up.last_request().unwrap().headers;
    assert_eq!(h.get("x-request-id").unwrap(), "given-id");
    assert_eq!(h.get("x-forwarded-for").unwrap(), "127.0.0.1");
    proxy.shutdown(GRACE).await;
}

async fn counting(fail_first: u64) -> Counting {
    Counting::start(SocketAddr::from(([127, 0, 0, 1], 0)), "flaky", fail_first)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_retry_on_503_for_get_only() {
    // GET: two 503s are retried (App Mesh's default: 2 retries), the third attempt succeeds.
    let up = counting(2).await;
    let proxy = start(&one_service("svc.local", up.addr().port(), "http")).await;
    let mut c = H1::connect(proxy.addrs().egress).await;
    let r = c.get("svc.local", "/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header(X_UPSTREAM), Some("flaky"));
    assert_eq!(up.hits(), 3);
    proxy.shutdown(GRACE).await;

    // GET that keeps failing: three attempts, then the upstream's 503 is passed on.
    let up = counting(u64::MAX).await;
    let proxy = start(&one_service("svc.local", up.addr().port(), "http")).await;
    let mut c = H1::connect(proxy.addrs().egress).await;
    let r = c.get("svc.local", "/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.header(X_UPSTREAM), Some("flaky"));
    assert_eq!(up.hits(), 3);
    proxy.shutdown(GRACE).await;

    // POST is not idempotent: the implicit policy does not retry it.
    let up = counting(1).await;
    let proxy = start(&one_service("svc.local", up.addr().port(), "http")).await;
    let mut c = H1::connect(proxy.addrs().egress).await;
    let mut req = h1_request(Method::POST, "svc.local", "/submit", &[]);
    *req.body_mut() = http_body_util::Full::new(Bytes::from_static(b"payload"));
    let r = c.send(req).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(up.hits(), 1);
    proxy.shutdown(GRACE).await;
}
