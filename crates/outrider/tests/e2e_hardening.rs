//! End to end: hostile HTTP/1.1 bytes written over raw TCP to the ingress listener. Each case
//! checks the proxy's answer and that the proxy still serves the next client.
//!
//! What the HTTP/1.1 server answers, as pinned here: more than 100 header fields → 431; a
//! head still incomplete once 60 KiB are buffered → 431 (a head that completes within the
//! read crossing that mark is accepted, so the bound is 60 KiB plus one read); a request line
//! longer than that → 431; differing duplicate Content-Length and bad header names or values
//! → 400; a bad chunk size ends the exchange with a closed connection. Content-Length
//! together with Transfer-Encoding in any request of a connection is answered 400 and the
//! connection closed, as Envoy does; the app never sees such a request.
//!
//! Also: a slow client is cut off by the header-read timeout; HTTP/2 rapid reset
//! (CVE-2023-44487) and CONTINUATION floods end in GOAWAY, an oversized header list is refused,
//! streams past the concurrent-stream limit are refused; a full listener closes new
//! connections at once and counts them.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns, unwrap here

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::H1;
use http::StatusCode;
use outrider_app::ProxyOptions;
use outrider_test_support::servers::TestServer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GRACE: Duration = Duration::from_millis(200);
/// Longest wait for the proxy's answer to one hostile request.
const ANSWER_WAIT: Duration = Duration::from_secs(3);

/// Writes `bytes` and returns the status code of the answer, or None when the connection
/// closed (or stayed silent) without one.
async fn raw(addr: SocketAddr, bytes: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The proxy may answer and close before reading everything: a write error is fine.
    let _ = s.write_all(bytes).await;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let read = tokio::time::timeout(ANSWER_WAIT, async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let _ = read;
    let text = String::from_utf8_lossy(&buf);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
}

/// The proxy in front of one local app, with a check that it still serves.
struct Setup {
    proxy: outrider_app::RunningProxy,
    app: TestServer,
}

impl Setup {
    async fn new() -> Setup {
        Setup::with(|_| {}).await
    }

    /// The proxy with options changed by `tune` before it starts.
    async fn with(tune: impl FnOnce(&mut ProxyOptions)) -> Setup {
        let app = TestServer::http("app");
        Setup {
            proxy: common::start_in_front(app.addr().port(), tune).await,
            app,
        }
    }

    fn ingress(&self) -> SocketAddr {
        self.proxy.addrs().ingress
    }

    async fn still_serves(&self) {
        let mut c = H1::connect(self.ingress()).await;
        let r = c.get("client.local", "/next").await;
        assert_eq!((r.status, r.served_by()), (StatusCode::OK, Some("app")));
    }

    /// A fresh HTTP/2 client (the `h2` crate) is served.
    async fn still_serves_h2(&self) {
        let served = tokio::time::timeout(ANSWER_WAIT, async {
            let tcp = TcpStream::connect(self.ingress()).await.unwrap();
            let (client, conn) = h2::client::handshake(tcp).await.unwrap();
            tokio::spawn(conn);
            let mut client = client.ready().await.unwrap();
            let (resp, _) = client.send_request(h2_get("/next-h2"), true).unwrap();
            resp.await.unwrap().status()
        })
        .await;
        assert_eq!(served.ok(), Some(StatusCode::OK));
    }

    async fn done(self) {
        self.proxy.shutdown(GRACE).await;
    }
}

fn head_with(extra: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nhost: client.local\r\n{extra}\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_header_fields_get_431() {
    let s = Setup::new().await;
    let many: String = (0..101).map(|i| format!("x-h{i}: v\r\n")).collect();
    assert_eq!(raw(s.ingress(), &head_with(&many)).await, Some(431));
    s.still_serves().await;
    s.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_head_gets_431() {
    let s = Setup::new().await;
    let big = format!("x-big: {}\r\n", "a".repeat(100 * 1024));
    assert_eq!(raw(s.ingress(), &head_with(&big)).await, Some(431));
    s.still_serves().await;
    s.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_request_line_is_refused() {
    let s = Setup::new().await;
    let line = format!(
        "GET /{} HTTP/1.1\r\nhost: client.local\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let code = raw(s.ingress(), line.as_bytes()).await;
    assert!(matches!(code, Some(414 | 431 | 400)), "{code:?}");
    s.still_serves().await;
    s.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_attacks_get_400() {
    let s = Setup::new().await;
    let cases: [&[u8]; 3] = [
        b"POST / HTTP/1.1\r\nhost: client.local\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
        b"GET / HTTP/1.1\r\nhost: client.local\r\nbad header: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: client.local\r\nx-bad: a\x01b\r\n\r\n",
    ];
    for case in cases {
        let code = raw(s.ingress(), case).await;
        assert_eq!(code, Some(400), "{}", String::from_utf8_lossy(case));
        s.still_serves().await;
    }
    s.done().await;
}

/// Reads one response with a Content-Length body; None if the connection closed first or
/// stayed silent past [`ANSWER_WAIT`]. Returns the status and the body.
async fn read_response(s: &mut TcpStream) -> Option<(u16, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    tokio::time::timeout(ANSWER_WAIT, async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())?;
                if buf.len() >= end + 4 + len {
                    let status = head.get(9..12)?.parse().ok()?;
                    return Some((status, buf[end + 4..end + 4 + len].to_vec()));
                }
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .ok()?
}

const SMUGGLE: &[u8] = b"POST /smuggle HTTP/1.1\r\nhost: client.local\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_gets_400_and_close() {
    let s = Setup::new().await;
    // Either order of the two fields, any case, and a smuggled request riding behind.
    let cases: [&[u8]; 3] = [
        SMUGGLE,
        b"POST /smuggle HTTP/1.1\r\nTransfer-Encoding: chunked\r\nhost: client.local\r\nContent-Length: 40\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: client.local\r\n\r\n",
        b"POST /smuggle HTTP/1.1\r\nhost: client.local\r\ncontent-length: 0\r\ntransfer-encoding: gzip\r\n\r\n",
    ];
    for case in cases {
        let mut c = TcpStream::connect(s.ingress()).await.unwrap();
        c.write_all(case).await.unwrap();
        let all = read_to_close(&mut c).await.expect("connection left open");
        let text = String::from_utf8_lossy(&all);
        assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
        assert!(
            text.to_ascii_lowercase().contains("connection: close"),
            "{text}"
        );
        assert!(
            s.app.last_request().is_none_or(|r| r.uri.path() == "/next"),
            "the app saw a smuggling request"
        );
        s.still_serves().await;
    }
    s.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_later_on_a_keep_alive_connection_gets_400() {
    let s = Setup::new().await;
    let mut c = TcpStream::connect(s.ingress()).await.unwrap();
    // Bodies that look like heads must be skipped, not scanned.
    let body = "content-length: 1\r\ntransfer-encoding: chunked\r\n\r\n";
    let fixed = format!(
        "POST /echo HTTP/1.1\r\nhost: client.local\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    c.write_all(fixed.as_bytes()).await.unwrap();
    let (status, echoed) = read_response(&mut c)
        .await
        .expect("no answer to the CL request");
    assert_eq!((status, echoed.as_slice()), (200, body.as_bytes()));
    let chunked = format!(
        "POST /chunked HTTP/1.1\r\nhost: client.local\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    c.write_all(chunked.as_bytes()).await.unwrap();
    // (Not echoed: the answer to a chunked upload comes back chunked.)
    let (status, _) = read_response(&mut c)
        .await
        .expect("no answer to the chunked request");
    assert_eq!(status, 200);
    assert_eq!(s.app.last_request().unwrap().uri.path(), "/chunked");
    c.write_all(b"GET /plain HTTP/1.1\r\nhost: client.local\r\n\r\n")
        .await
        .unwrap();
    let (status, _) = read_response(&mut c).await.expect("no answer to the GET");
    assert_eq!(status, 200);
    assert_eq!(s.app.last_request().unwrap().uri.path(), "/plain");
    c.write_all(SMUGGLE).await.unwrap();
    let all = read_to_close(&mut c).await.expect("connection left open");
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert_eq!(s.app.last_request().unwrap().uri.path(), "/plain");
    s.still_serves().await;
    s.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_pipelined_is_never_served() {
    let s = Setup::new().await;
    let mut c = TcpStream::connect(s.ingress()).await.unwrap();
    let mut req =
        b"POST /first HTTP/1.1\r\nhost: client.local\r\ncontent-length: 3\r\n\r\nabc".to_vec();
    req.extend_from_slice(SMUGGLE);
    c.write_all(&req).await.unwrap();
    let all = read_to_close(&mut c).await.expect("connection left open");
    let text = String::from_utf8_lossy(&all);
    // The first request may or may not be answered (it can share a read with the smuggling
    // head, which is dropped whole), but the connection ends with the 400.
    assert!(text.contains("HTTP/1.1 400 "), "{text}");
    assert!(
        s.app
            .last_request()
            .is_none_or(|r| r.uri.path() == "/first"),
        "the app saw the smuggling request"
    );
    s.still_serves().await;
    s.done().await;
}

/// Reads until the peer closes; None if it stays open past [`ANSWER_WAIT`].
async fn read_to_close<S: AsyncRead + Unpin>(s: &mut S) -> Option<Vec<u8>> {
    let mut all = Vec::new();
    tokio::time::timeout(ANSWER_WAIT, async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => all.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .ok()?;
    Some(all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_is_cut_off_by_the_header_read_timeout() {
    let timeout = Duration::from_millis(300);
    let s = Setup::with(|o| o.serve.header_read_timeout = timeout).await;
    let started = std::time::Instant::now();
    let mut slow = TcpStream::connect(s.ingress()).await.unwrap();
    slow.write_all(b"GET /slow HTTP/1.1\r\nhost: clie")
        .await
        .unwrap();
    // A silent client is held to the same deadline.
    let mut silent = TcpStream::connect(s.ingress()).await.unwrap();
    // Others are served while the slow ones wait.
    s.still_serves().await;
    let answer = read_to_close(&mut slow)
        .await
        .expect("slow client not disconnected");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= timeout - Duration::from_millis(50),
        "{elapsed:?}"
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    let answer = read_to_close(&mut silent)
        .await
        .expect("silent client not disconnected");
    assert!(answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"));
    assert!(s.app.last_request().is_none_or(|r| r.uri.path() != "/slow"));
    s.still_serves().await;
    s.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_listener_closes_new_connections_at_once_and_counts_them() {
    let s = Setup::with(|o| o.max_connections = 2).await;
    let held = [
        TcpStream::connect(s.ingress()).await.unwrap(),
        TcpStream::connect(s.ingress()).await.unwrap(),
    ];
    let mut over = TcpStream::connect(s.ingress()).await.unwrap();
    let _ = over
        .write_all(b"GET / HTTP/1.1\r\nhost: client.local\r\n\r\n")
        .await;
    let answer = read_to_close(&mut over)
        .await
        .expect("over-limit connection left open");
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    let label = format!(
        "envoy_listener_address=\"{}_{}\"",
        s.ingress().ip(),
        s.ingress().port()
    );
    let stats = admin_get(s.proxy.addrs().admin.unwrap(), "/stats/prometheus").await;
    let line = stats
        .lines()
        .find(|l| l.starts_with("envoy_listener_downstream_cx_overflow") && l.contains(&label))
        .unwrap_or_else(|| panic!("no overflow counter for {label} in:\n{stats}"));
    let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 1.0, "{line}");
    // A slot frees when a held connection ends.
    drop(held);
    let mut served = false;
    for _ in 0..50 {
        let mut c = TcpStream::connect(s.ingress()).await.unwrap();
        c.write_all(b"GET /after HTTP/1.1\r\nhost: client.local\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = read_to_close(&mut c).await.unwrap_or_default();
        if answer.starts_with(b"HTTP/1.1 200") {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "no slot freed after the held connections closed");
    s.done().await;
}

/// One GET over a fresh connection to the admin endpoint; the body.
async fn admin_get(admin: SocketAddr, path: &str) -> String {
    let mut c = TcpStream::connect(admin).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
    c.write_all(req.as_bytes()).await.unwrap();
    let all = read_to_close(&mut c).await.unwrap();
    String::from_utf8_lossy(&all).into_owned()
}

// ---- HTTP/2: raw frames and the h2 crate ----

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const CANCEL: u32 = 0x8;
const REFUSED_STREAM: u32 = 0x7;
const COMPRESSION_ERROR: u32 = 0x9;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn h2_get(path: &str) -> http::Request<()> {
    http::Request::builder()
        .uri(format!("http://client.local{path}"))
        .body(())
        .unwrap()
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK for `GET http://client.local/`: static-table :method, :scheme, :path, then
/// :authority as a literal without indexing.
fn get_block() -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x84, 0x01, 12];
    b.extend_from_slice(b"client.local");
    b
}

/// A frame the proxy sent, or how the connection ended.
#[derive(Debug, PartialEq)]
enum Seen {
    Frame { kind: u8, stream: u32, code: u32 },
    Closed,
    Silent,
}

/// Reads frames until one satisfies `want`, the connection closes, or [`ANSWER_WAIT`] passes.
/// `code` is the error code of RST_STREAM and GOAWAY frames, else 0.
async fn frames_until(
    s: &mut tokio::net::tcp::OwnedReadHalf,
    want: impl Fn(u8, u32, u32) -> bool,
) -> Seen {
    let read = async {
        loop {
            let mut head = [0u8; 9];
            if s.read_exact(&mut head).await.is_err() {
                return Seen::Closed;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            if s.read_exact(&mut payload).await.is_err() {
                return Seen::Closed;
            }
            let code = match head[3] {
                RST_STREAM if len >= 4 => u32::from_be_bytes(payload[..4].try_into().unwrap()),
                GOAWAY if len >= 8 => u32::from_be_bytes(payload[4..8].try_into().unwrap()),
                _ => 0,
            };
            if want(head[3], stream, code) {
                return Seen::Frame {
                    kind: head[3],
                    stream,
                    code,
                };
            }
        }
    };
    tokio::time::timeout(ANSWER_WAIT, read)
        .await
        .unwrap_or(Seen::Silent)
}

/// Connects, writes `bytes` from a separate task (the proxy may stop reading), returns the
/// read half.
async fn h2_attack(addr: SocketAddr, bytes: Vec<u8>) -> tokio::net::tcp::OwnedReadHalf {
    let (read, mut write) = TcpStream::connect(addr).await.unwrap().into_split();
    tokio::spawn(async move {
        let _ = tokio::time::timeout(ANSWER_WAIT, write.write_all(&bytes)).await;
        // Keep the write half open until the reader is done with the connection.
        tokio::time::sleep(ANSWER_WAIT).await;
    });
    read
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_rapid_reset_gets_goaway() {
    let s = Setup::new().await;
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &[]));
    for i in 0..2000u32 {
        let id = 2 * i + 1;
        bytes.extend(frame(HEADERS, END_HEADERS, id, &get_block()));
        bytes.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    let started = std::time::Instant::now();
    let mut read = h2_attack(s.ingress(), bytes).await;
    let seen = frames_until(&mut read, |kind, _, _| kind == GOAWAY).await;
    assert!(
        matches!(
            seen,
            Seen::Frame {
                kind: GOAWAY,
                code: ENHANCE_YOUR_CALM,
                ..
            }
        ),
        "{seen:?}"
    );
    // Bounded work: the connection is cut long before 2000 upstream requests could finish.
    assert!(started.elapsed() < ANSWER_WAIT, "{:?}", started.elapsed());
    assert!(
        s.app.hits() < 2000,
        "{} requests reached the app",
        s.app.hits()
    );
    s.still_serves_h2().await;
    s.still_serves().await;
    s.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_continuation_flood_gets_goaway() {
    let s = Setup::new().await;
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &[]));
    bytes.extend(frame(HEADERS, 0, 1, &get_block()));
    // Literal fields without indexing, new names: a header list that never ends.
    let mut field = vec![0x00, 6];
    field.extend_from_slice(b"x-fl00");
    field.push(100);
    field.extend_from_slice(&[b'a'; 100]);
    // Whole fields per frame, so the block stays valid HPACK and only its length offends.
    let block: Vec<u8> = field
        .iter()
        .copied()
        .cycle()
        .take(field.len() * 9)
        .collect();
    for _ in 0..1000 {
        bytes.extend(frame(CONTINUATION, 0, 1, &block));
    }
    let mut read = h2_attack(s.ingress(), bytes).await;
    let seen = frames_until(&mut read, |kind, _, _| kind == GOAWAY).await;
    // Too many CONTINUATION frames, or a block past the header list limit.
    assert!(
        matches!(
            seen,
            Seen::Frame {
                kind: GOAWAY,
                code: ENHANCE_YOUR_CALM | COMPRESSION_ERROR,
                ..
            }
        ),
        "{seen:?}"
    );
    s.still_serves_h2().await;
    s.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_oversized_header_list_is_refused() {
    let s = Setup::new().await;
    let outcome = tokio::time::timeout(ANSWER_WAIT, async {
        let tcp = TcpStream::connect(s.ingress()).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let mut client = client.ready().await.map_err(|e| e.to_string())?;
        let mut req = h2_get("/big");
        let value = http::HeaderValue::from_str(&"v".repeat(1024)).unwrap();
        for i in 0..80 {
            let name = http::HeaderName::try_from(format!("x-big-{i}")).unwrap();
            req.headers_mut().insert(name, value.clone());
        }
        let (resp, _) = client.send_request(req, true).map_err(|e| e.to_string())?;
        resp.await.map(|r| r.status()).map_err(|e| e.to_string())
    })
    .await
    .expect("no answer to an oversized header list");
    // h2 decodes the list within its bound, drops it and answers the stream itself.
    assert_eq!(outcome, Ok(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
    assert!(s.app.last_request().is_none());
    s.still_serves_h2().await;
    s.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_past_the_limit_are_refused() {
    let s = Setup::with(|o| o.serve.max_concurrent_streams = 4).await;
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &[]));
    // Requests that never end their body keep their streams open.
    for i in 0..12u32 {
        bytes.extend(frame(HEADERS, END_HEADERS, 2 * i + 1, &get_block()));
    }
    let mut read = h2_attack(s.ingress(), bytes).await;
    let seen = frames_until(&mut read, |kind, _, code| {
        (kind == RST_STREAM && code == REFUSED_STREAM) || kind == GOAWAY
    })
    .await;
    match seen {
        Seen::Frame {
            kind: RST_STREAM,
            stream,
            ..
        } => assert!(stream > 7, "stream {stream} within the limit was refused"),
        other => assert!(
            matches!(other, Seen::Frame { kind: GOAWAY, .. }),
            "{other:?}"
        ),
    }
    s.still_serves_h2().await;
    s.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_chunk_size_is_refused_or_closed() {
    let s = Setup::new().await;
    let req = b"POST / HTTP/1.1\r\nhost: client.local\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
    let code = raw(s.ingress(), req).await;
    assert!(
        matches!(code, None | Some(400 | 502 | 503)),
        "bad chunk answered {code:?}"
    );
    s.still_serves().await;
    s.done().await;
}
