//! Each test server, exercised over real sockets.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use outrider_test_support::servers::{
    GRPC_FAIL, GRPC_STREAM, GRPC_UNARY, TestServer, grpc_decode, grpc_frame,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
    Request::get(format!("http://test{path}"))
        .header("x-probe", "1")
        .body(Full::default())
        .unwrap()
}

fn grpc_call(method: &str, msg: &[u8]) -> Request<Full<Bytes>> {
    Request::post(format!("http://test{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(grpc_frame(msg)))
        .unwrap()
}

#[tokio::test]
async fn http_server_answers_h1_and_h2_and_records() {
    let srv = TestServer::http("web");
    assert_eq!(srv.hits(), 0);
    assert!(srv.last_request().is_none());

    let resp = h1(srv.addr(), get("/a?b=c")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-served-by"], "web");
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        "web\n"
    );
    let seen = srv.last_request().unwrap();
    assert_eq!(seen.uri.path_and_query().unwrap(), "/a?b=c");
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.headers["x-probe"], "1");

    let resp = h2(srv.addr(), get("/h2")).await;
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(srv.last_request().unwrap().version, Version::HTTP_2);

    let echo = Request::post("http://test/echo")
        .body(Full::new(Bytes::from_static(b"ping")))
        .unwrap();
    let resp = h1(srv.addr(), echo).await;
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ping");
    assert_eq!(srv.hits(), 3);
}

#[tokio::test]
async fn h2_only_refuses_http1() {
    let srv = TestServer::h2_only("h2");
    let resp = h2(srv.addr(), get("/")).await;
    assert_eq!(resp.headers()["x-served-by"], "h2");

    let mut raw = TcpStream::connect(srv.addr()).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), raw.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "an HTTP/1.1 request must end the connection");
    assert!(!buf.starts_with(b"HTTP/1.1"));
    assert_eq!(srv.hits(), 1);
}

#[tokio::test]
async fn grpc_unary_stream_and_fail() {
    let srv = TestServer::grpc("rpc");

    let resp = h2(srv.addr(), grpc_call(GRPC_UNARY, b"hello")).await;
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(
        grpc_decode(&collected.to_bytes()),
        vec![Bytes::from("hello")]
    );

    let resp = h2(srv.addr(), grpc_call(GRPC_STREAM, &[3])).await;
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().unwrap().clone();
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-trailer"], "done");
    let msgs = grpc_decode(&collected.to_bytes());
    assert_eq!(
        msgs,
        vec![
            Bytes::from_static(&[0]),
            Bytes::from_static(&[1]),
            Bytes::from_static(&[2])
        ]
    );

    let resp = h2(srv.addr(), grpc_call(GRPC_FAIL, b"")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["grpc-status"], "13");
    assert_eq!(resp.headers()["grpc-message"], "boom");
    assert!(http_body::Body::is_end_stream(resp.body()));
    assert_eq!(srv.last_request().unwrap().uri.path(), GRPC_FAIL);
}

#[tokio::test]
async fn websocket_upgrade_then_raw_echo() {
    let srv = TestServer::websocket_echo("ws");
    let mut raw = TcpStream::connect(srv.addr()).await.unwrap();
    raw.write_all(
        b"GET /chat HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
          sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        raw.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
        assert!(head.len() < 4096);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // The RFC 6455 section 1.3 example key and its accept value.
    assert!(
        head.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
    assert!(head.contains("x-served-by: ws\r\n"), "{head}");

    raw.write_all(b"\x81\x02hi").await.unwrap();
    let mut echoed = [0u8; 4];
    raw.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"\x81\x02hi");
    assert_eq!(srv.hits(), 1);
}

#[tokio::test]
async fn tcp_echo_greets_then_echoes() {
    let srv = TestServer::tcp_echo("raw");
    let mut conn = TcpStream::connect(srv.addr()).await.unwrap();
    let mut greeting = [0u8; 4];
    conn.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting, b"raw\n");
    conn.write_all(b"abc").await.unwrap();
    conn.shutdown().await.unwrap();
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"abc");
    assert_eq!(srv.hits(), 1);
}

#[tokio::test]
async fn drop_stops_the_server() {
    let srv = TestServer::tcp_echo("gone");
    let addr = srv.addr();
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let mut greeting = [0u8; 5];
    conn.read_exact(&mut greeting).await.unwrap();
    drop(srv);
    // The open connection is closed (EOF or reset, either is fine) and the listener goes away.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(2), conn.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "connection still open after drop");
    let mut refused = false;
    for _ in 0..50 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(refused);
}
