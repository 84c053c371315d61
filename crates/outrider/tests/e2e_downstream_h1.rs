//! End to end: the downstream HTTP/1.1 server (crates/http/src/h1server.rs), spoken to over raw
//! TCP on the ingress listener in front of a real local app: keep-alive and pipelining,
//! HTTP/1.0, `Expect: 100-continue`, heads that trickle in, chunked uploads, request framing
//! that must be refused, trailers only for clients that take them, and connections closing
//! on drain.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns, unwrap here

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use outrider_app::ProxyOptions;
use outrider_test_support::servers::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GRACE: Duration = Duration::from_millis(200);
/// Longest wait for one answer.
const ANSWER_WAIT: Duration = Duration::from_secs(3);

async fn proxy_with(
    tune: impl FnOnce(&mut ProxyOptions),
) -> (outrider_app::RunningProxy, TestServer) {
    let app = TestServer::http("app");
    (common::start_in_front(app.addr().port(), tune).await, app)
}

/// One response read off a raw connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// A raw client connection with its unread bytes.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            s: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    async fn more(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(ANSWER_WAIT, self.s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            _ => false,
        }
    }

    /// The next response (a Content-Length or chunked body; interim heads are returned as
    /// they come); None if the connection closed or stayed silent first.
    async fn answer(&mut self) -> Option<Answer> {
        let end = loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            if !self.more().await {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
        self.buf.drain(..end + 4);
        let status = head.get(9..12)?.parse().ok()?;
        let mut a = Answer {
            status,
            head,
            body: Vec::new(),
        };
        if (100..200).contains(&status) || status == 204 || status == 304 {
            return Some(a);
        }
        if let Some(len) = a.header("content-length") {
            let len: usize = len.parse().ok()?;
            while self.buf.len() < len {
                if !self.more().await {
                    return None;
                }
            }
            a.body = self.buf.drain(..len).collect();
        } else if a.header("transfer-encoding").as_deref() == Some("chunked") {
            // Chunks, then the last chunk and trailers up to an empty line.
            loop {
                let line_end = loop {
                    if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break p;
                    }
                    if !self.more().await {
                        return None;
                    }
                };
                let size_line = String::from_utf8_lossy(&self.buf[..line_end]).to_string();
                let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
                self.buf.drain(..line_end + 2);
                if size == 0 {
                    while !self.buf.windows(2).any(|w| w == b"\r\n") || !self.trailers_done() {
                        if !self.more().await {
                            return None;
                        }
                    }
                    let t = self.buf.windows(2).position(|w| w == b"\r\n").unwrap();
                    if t == 0 {
                        self.buf.drain(..2);
                    } else {
                        let end = self.buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
                        let trailers = String::from_utf8_lossy(&self.buf[..end]).to_string();
                        a.head.push_str("\r\n");
                        a.head.push_str(&trailers);
                        self.buf.drain(..end + 4);
                    }
                    break;
                }
                while self.buf.len() < size + 2 {
                    if !self.more().await {
                        return None;
                    }
                }
                a.body.extend(self.buf.drain(..size));
                self.buf.drain(..2);
            }
        }
        Some(a)
    }

    fn trailers_done(&self) -> bool {
        self.buf.starts_with(b"\r\n") || self.buf.windows(4).any(|w| w == b"\r\n\r\n")
    }

    /// Whether the proxy closed the connection (within the answer wait).
    async fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        matches!(
            tokio::time::timeout(ANSWER_WAIT, self.s.read(&mut chunk)).await,
            Ok(Ok(0) | Err(_))
        )
    }
}

const HOST: &str = "host: client.local\r\n";

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\n{HOST}\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_and_pipelined_requests_are_answered_in_order() {
    let (proxy, app) = proxy_with(|_| {}).await;
    let mut c = Raw::connect(proxy.addrs().ingress).await;
    for path in ["/one", "/two"] {
        c.send(&get(path)).await;
        let a = c.answer().await.expect("keep-alive answer");
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(app.last_request().unwrap().uri.path(), path);
        assert!(a.header("date").is_some(), "{a:?}");
    }
    // Three requests in one write, the middle one with a body.
    let mut batch = get("/p1");
    batch.extend_from_slice(
        format!("POST /echo HTTP/1.1\r\n{HOST}content-length: 5\r\n\r\nhello").as_bytes(),
    );
    batch.extend_from_slice(&get("/p3"));
    c.send(&batch).await;
    let a = c.answer().await.unwrap();
    assert_eq!(a.status, 200);
    let a = c.answer().await.unwrap();
    assert_eq!((a.status, a.body.as_slice()), (200, &b"hello"[..]));
    let a = c.answer().await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(app.last_request().unwrap().uri.path(), "/p3");
    proxy.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_closes_unless_kept_alive() {
    let (proxy, _app) = proxy_with(|_| {}).await;
    let mut c = Raw::connect(proxy.addrs().ingress).await;
    c.send(format!("GET / HTTP/1.0\r\n{HOST}connection: keep-alive\r\n\r\n").as_bytes())
        .await;
    let a = c.answer().await.unwrap();
    assert!(a.head.starts_with("HTTP/1.0 200"), "{a:?}");
    assert_eq!(a.header("connection").as_deref(), Some("keep-alive"));
    c.send(format!("GET / HTTP/1.0\r\n{HOST}\r\n").as_bytes())
        .await;
    let a = c.answer().await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.header("connection").as_deref(), Some("close"));
    assert!(c.closed().await, "HTTP/1.0 without keep-alive stays open");
    // `Connection: close` on HTTP/1.1 too.
    let mut c = Raw::connect(proxy.addrs().ingress).await;
    c.send(format!("GET / HTTP/1.1\r\n{HOST}connection: close\r\n\r\n").as_bytes())
        .await;
    let a = c.answer().await.unwrap();
    assert_eq!(a.header("connection").as_deref(), Some("close"));
    assert!(c.closed().await);
    proxy.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let (proxy, app) = proxy_with(|_| {}).await;
    let mut c = Raw::connect(proxy.addrs().ingress).await;
    c.send(
        format!("POST /echo HTTP/1.1\r\n{HOST}expect: 100-continue\r\ncontent-length: 4\r\n\r\n")
            .as_bytes(),
    )
    .await;
    let interim = c.answer().await.expect("no 100 Continue");
    assert_eq!(interim.status, 100, "{interim:?}");
    c.send(b"ping").await;
    let a = c.answer().await.unwrap();
    assert_eq!((a.status, a.body.as_slice()), (200, &b"ping"[..]));
    // The expectation was met here: the app does not see it.
    assert!(!app.last_request().unwrap().headers.contains_key("expect"));
    proxy.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_trickled_a_byte_at_a_time_and_a_chunked_upload_are_served() {
    let (proxy, _app) = proxy_with(|_| {}).await;
    let mut c = Raw::connect(proxy.addrs().ingress).await;
    let req = format!(
        "POST /echo HTTP/1.1\r\n{HOST}transfer-encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n4\r\ndefg\r\n0\r\nx-t: 1\r\n\r\n"
    );
    for b in req.as_bytes() {
        c.send(&[*b]).await;
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let a = c.answer().await.unwrap();
    assert_eq!(
        (a.status, a.body.as_slice()),
        (200, &b"abcdefg"[..]),
        "{a:?}"
    );
    // The connection goes on.
    c.send(&get("/after")).await;
    assert_eq!(c.answer().await.unwrap().status, 200);
    proxy.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_the_proxy_cannot_trust_is_refused_and_closed() {
    let (proxy, app) = proxy_with(|_| {}).await;
    for bad in [
        format!("GET / HTTP/1.1\r\n{HOST}host: other.local\r\n\r\n"),
        format!("POST / HTTP/1.1\r\n{HOST}transfer-encoding: chunked, gzip\r\n\r\n"),
        format!("POST / HTTP/1.0\r\n{HOST}transfer-encoding: chunked\r\n\r\n0\r\n\r\n"),
        format!("POST / HTTP/1.1\r\n{HOST}content-length: 1, 2\r\n\r\nab"),
        "GET / HTTP/2.0\r\n\r\n".to_string(),
    ] {
        let mut c = Raw::connect(proxy.addrs().ingress).await;
        c.send(bad.as_bytes()).await;
        let a = c
            .answer()
            .await
            .unwrap_or_else(|| panic!("no answer to {bad:?}"));
        assert_eq!(a.status, 400, "{bad:?}: {a:?}");
        assert_eq!(a.header("connection").as_deref(), Some("close"));
        assert!(c.closed().await, "{bad:?}");
    }
    assert!(
        app.last_request().is_none(),
        "the app saw a refused request"
    );
    proxy.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_with_no_line_end_is_cut_off_at_the_size_limit() {
    let (proxy, _app) = proxy_with(|_| {}).await;
    let mut c = Raw::connect(proxy.addrs().ingress).await;
    // 70 KiB and never a line end: refused once past the 60 KiB limit, not buffered on.
    let junk = vec![b'a'; 70 * 1024];
    // The proxy may answer and close before it read everything: a write error is fine.
    let _ = c.s.write_all(&junk).await;
    let a = c.answer().await.expect("no answer to an endless head");
    assert_eq!(a.status, 431, "{a:?}");
    assert!(c.closed().await);
    proxy.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_of_the_h2_preface_then_the_end_is_closed_promptly() {
    // Found by the proxy_request fuzz target: "P" could begin the HTTP/2 preface, and a peek
    // cannot see the end of the stream behind it.
    let (proxy, _app) = proxy_with(|_| {}).await;
    for partial in [&b"P"[..], b"PR", b"PRI"] {
        let mut c = Raw::connect(proxy.addrs().ingress).await;
        c.send(partial).await;
        c.s.shutdown().await.unwrap();
        let started = std::time::Instant::now();
        assert!(c.closed().await, "{partial:?} left open");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
    // A real preface still gets HTTP/2.
    let tcp = TcpStream::connect(proxy.addrs().ingress).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = http::Request::builder()
        .uri("http://client.local/h2")
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    proxy.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_chunked_upload_ends_the_connection_and_the_proxy_serves_on() {
    // Found by the proxy_request fuzz target: the connection's task panicked when the body
    // broke before the response was written. tokio contains a task's panic, so the test
    // watches for one.
    static PANICKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICKED.store(true, std::sync::atomic::Ordering::SeqCst);
        previous(info);
    }));
    let (proxy, _app) = proxy_with(|_| {}).await;
    for _ in 0..3 {
        let mut c = Raw::connect(proxy.addrs().ingress).await;
        c.send(
            format!("PUT /x HTTP/1.1\r\n{HOST}transfer-encoding: chunked\r\n\r\nzz\r\n").as_bytes(),
        )
        .await;
        c.s.shutdown().await.unwrap();
        // An error answer or none, then the end.
        while c.answer().await.is_some() {}
        assert!(c.closed().await);
    }
    let mut c = Raw::connect(proxy.addrs().ingress).await;
    c.send(&get("/after")).await;
    assert_eq!(c.answer().await.unwrap().status, 200);
    assert!(
        !PANICKED.load(std::sync::atomic::Ordering::SeqCst),
        "a task panicked"
    );
    proxy.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_idle_keep_alive_connections_at_once() {
    let (proxy, _app) = proxy_with(|_| {}).await;
    let mut c = Raw::connect(proxy.addrs().ingress).await;
    c.send(&get("/")).await;
    assert_eq!(c.answer().await.unwrap().status, 200);
    let started = std::time::Instant::now();
    let shutdown = tokio::spawn(proxy.shutdown(Duration::from_secs(5)));
    assert!(c.closed().await, "an idle connection outlived the drain");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    shutdown.await.unwrap();
}
