//! End to end: how the proxy treats HTTP/1.1 upstreams whose responses are framed in unusual
//! (legal or not) ways. Every upstream here is a scripted raw TCP server that writes exact bytes,
//! and counts the connections it accepts so that connection reuse can be asserted.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns, unwrap here

mod common;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{
    H1, client, h1_request, local_node, mesh, router, service_node, service_router, start, stream,
};
use http::{Method, StatusCode, Version};
use http_body_util::Full;
use outrider_app::RunningProxy;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

const GRACE: Duration = Duration::from_millis(200);
/// Upper bound on a whole test, so a hang fails instead of blocking the suite.
const TEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound on any single read or write of a raw connection.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest head (or line) a raw peer buffers before giving up.
const MAX_HEAD: usize = 1 << 20;
/// Connections a raw upstream accepts before it stops listening.
const MAX_CONNS: usize = 32;
/// Requests a raw upstream serves on one keep-alive connection.
const MAX_REQUESTS_PER_CONN: usize = 16;
/// Chunks a chunked-body reader accepts.
const MAX_CHUNKS: usize = 1 << 16;
/// The virtual service every test calls.
const HOST: &str = "svc.local";
/// Body of the proxy's local reply when the upstream breaks before a response head.
const RESET_BODY: &str = "upstream connect error or disconnect/reset before headers. reset reason: connection termination";

// ---- raw wire helpers ----

/// A parsed message head (request or response).
#[derive(Debug)]
struct Head {
    line: String,
    /// Names lower-cased, in arrival order.
    headers: Vec<(String, String)>,
}

impl Head {
    fn parse(raw: &[u8]) -> Head {
        let text = String::from_utf8_lossy(raw);
        let mut lines = text.split("\r\n");
        let line = lines.next().unwrap_or_default().to_string();
        let headers = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Head { line, headers }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The status of a response head.
    fn status(&self) -> u16 {
        self.line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// The method of a request head.
    fn method(&self) -> &str {
        self.line.split(' ').next().unwrap_or_default()
    }

    /// The target of a request head.
    fn path(&self) -> &str {
        self.line.split(' ').nth(1).unwrap_or_default()
    }

    fn is_chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    fn content_length(&self) -> Option<usize> {
        self.header("content-length").and_then(|v| v.parse().ok())
    }
}

/// One side of a raw connection with a read buffer.
struct Wire<S> {
    io: S,
    buf: Vec<u8>,
}

impl Wire<TcpStream> {
    async fn connect(addr: SocketAddr) -> Wire<TcpStream> {
        Wire::new(TcpStream::connect(addr).await.unwrap())
    }
}

impl<S> Wire<S> {
    fn new(io: S) -> Wire<S> {
        Wire {
            io,
            buf: Vec::new(),
        }
    }
}

impl<S: AsyncRead + Unpin> Wire<S> {
    /// Reads more bytes into the buffer: `Ok(0)` at end of stream, an error on timeout.
    async fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(IO_TIMEOUT, self.io.read(&mut chunk))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "read timed out"))??;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Bytes up to and including `delim`, or `None` at end of stream, on error or past
    /// [`MAX_HEAD`].
    async fn read_until(&mut self, delim: &[u8]) -> Option<Vec<u8>> {
        loop {
            if let Some(at) = find(&self.buf, delim) {
                return Some(self.buf.drain(..at + delim.len()).collect());
            }
            if self.buf.len() > MAX_HEAD {
                return None;
            }
            match self.fill().await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    async fn read_head(&mut self) -> Option<Head> {
        self.read_until(b"\r\n\r\n")
            .await
            .map(|raw| Head::parse(&raw))
    }

    async fn read_exact(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            match self.fill().await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    /// A chunked body, decoded; extensions and trailers are dropped.
    async fn read_chunked(&mut self) -> Option<Vec<u8>> {
        let mut body = Vec::new();
        for _ in 0..MAX_CHUNKS {
            let line = self.read_until(b"\r\n").await?;
            let line = String::from_utf8_lossy(&line[..line.len() - 2]).into_owned();
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16).ok()?;
            if size == 0 {
                // Trailer section: lines up to an empty one.
                for _ in 0..MAX_CHUNKS {
                    if self.read_until(b"\r\n").await?.len() == 2 {
                        return Some(body);
                    }
                }
                return None;
            }
            let data = self.read_exact(size + 2).await?;
            if &data[size..] != b"\r\n" {
                return None;
            }
            body.extend_from_slice(&data[..size]);
        }
        None
    }

    /// The body a request head announces (none, sized or chunked).
    async fn read_body(&mut self, head: &Head) -> Option<Vec<u8>> {
        if head.is_chunked() {
            self.read_chunked().await
        } else {
            self.read_exact(head.content_length().unwrap_or(0)).await
        }
    }

    /// Everything until the peer closes (or resets); panics if it neither closes nor sends
    /// within [`IO_TIMEOUT`].
    async fn read_to_close(&mut self) -> Vec<u8> {
        loop {
            match self.fill().await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    panic!("peer neither closed nor sent within {IO_TIMEOUT:?}")
                }
                Err(_) => break,
            }
        }
        std::mem::take(&mut self.buf)
    }
}

impl<S: AsyncWrite + Unpin> Wire<S> {
    async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        tokio::time::timeout(IO_TIMEOUT, self.io.write_all(bytes))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timed out"))?
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `head` (status line and headers, ending in an empty line) followed by `body`.
fn response(head: &str, body: &[u8]) -> Vec<u8> {
    let mut out = head.as_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// A 200 with a Content-Length body.
fn ok(body: &[u8]) -> Vec<u8> {
    response(
        &format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()),
        body,
    )
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// FNV-1a, so an upstream can report what it received in a few bytes.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn raw_get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n").into_bytes()
}

/// Reads one response with a Content-Length (or no) body from a raw client connection.
async fn read_sized_response<S: AsyncRead + Unpin>(w: &mut Wire<S>) -> (Head, Vec<u8>) {
    let head = w.read_head().await.expect("a response head");
    let body = w
        .read_exact(head.content_length().unwrap_or(0))
        .await
        .expect("the whole response body");
    (head, body)
}

// ---- the scripted upstream ----

/// A raw TCP upstream: each accepted connection is handed to the script.
struct RawUpstream {
    port: u16,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl RawUpstream {
    async fn start<F, Fut>(script: F) -> RawUpstream
    where
        F: Fn(Wire<TcpStream>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            for _ in 0..MAX_CONNS {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                conns.spawn(script(Wire::new(stream)));
            }
            while conns.join_next().await.is_some() {}
        });
        RawUpstream {
            port,
            accepted,
            task,
        }
    }

    /// Connections accepted so far.
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        // Aborting the accept loop drops the JoinSet, which aborts every connection.
        self.task.abort();
    }
}

/// Serves requests on one connection until it closes: reads each head and body and writes what
/// `respond` makes of them.
async fn keep_alive<F>(mut w: Wire<TcpStream>, respond: F)
where
    F: Fn(&Head, &[u8]) -> Vec<u8>,
{
    for _ in 0..MAX_REQUESTS_PER_CONN {
        let Some(head) = w.read_head().await else {
            return;
        };
        let Some(body) = w.read_body(&head).await else {
            return;
        };
        if w.write(&respond(&head, &body)).await.is_err() {
            return;
        }
    }
}

/// Reads one request head, writes `bytes`, and closes.
async fn answer_once_and_close(mut w: Wire<TcpStream>, bytes: Vec<u8>) {
    if w.read_head().await.is_some() {
        let _ = w.write(&bytes).await;
    }
}

/// A proxy whose egress sends [`HOST`] to the raw upstream.
/// The proxy in front of `up`, and a client connected to its egress listener.
async fn proxy_and_client(up: &RawUpstream) -> (RunningProxy, H1) {
    let proxy = proxy_to(up).await;
    let client = H1::connect(proxy.addrs().egress).await;
    (proxy, client)
}

async fn proxy_to(up: &RawUpstream) -> RunningProxy {
    start(&stream(&[
        mesh("DROP_ALL"),
        client(&[HOST], &[]),
        local_node("target", up.port, "http"),
        service_node(HOST, "target"),
    ]))
    .await
}

/// Asserts how many connections the proxy opened to the upstream so far (pooling).
fn expect_connections(up: &RawUpstream, n: usize, why: &str) {
    assert_eq!(up.accepted(), n, "{why}");
}

async fn within<F: Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test exceeded its time limit");
}

// ---- 1. Content-Length ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_body_is_intact_and_upstream_connection_reused() {
    within(async {
        let body = payload(100 * 1024);
        let served = body.clone();
        let up = RawUpstream::start(move |w| {
            let served = served.clone();
            async move { keep_alive(w, move |_, _| ok(&served)).await }
        })
        .await;
        let (proxy, mut c) = proxy_and_client(&up).await;
        for _ in 0..2 {
            let r = c.get(HOST, "/big").await;
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(r.header("content-length"), Some("102400"));
            assert_eq!(r.body.len(), body.len());
            assert!(r.body == body, "body bytes differ");
        }
        expect_connections(&up, 1, "the second request reuses the pooled connection");
        proxy.shutdown(GRACE).await;
    })
    .await;
}

// ---- 2. chunked ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_with_extensions_and_trailers_is_intact() {
    within(async {
        let up = RawUpstream::start(|w| {
            keep_alive(w, |_, _| {
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n\
                  5;foo=bar\r\nhello\r\n\
                  1;lone\r\n \r\n\
                  5;a=1;b=\"q r\"\r\nworld\r\n\
                  0\r\nx-checksum: abc123\r\n\r\n"
                    .to_vec()
            })
        })
        .await;
        let (proxy, mut c) = proxy_and_client(&up).await;
        let r = c
            .send(h1_request(Method::GET, HOST, "/", &[("te", "trailers")]))
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, Bytes::from_static(b"hello world"));
        assert_eq!(r.header("content-length"), None);
        // The trailer field is forwarded to a client that accepts trailers.
        assert_eq!(r.trailer("x-checksum"), Some("abc123"));
        // Without `TE: trailers` the body still arrives whole, and the trailers are dropped.
        let r = c.get(HOST, "/").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, Bytes::from_static(b"hello world"));
        assert_eq!(r.trailer("x-checksum"), None);
        assert_eq!(up.accepted(), 1);
        proxy.shutdown(GRACE).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_with_upper_case_hex_sizes_is_intact() {
    within(async {
        let body = payload(26 + 255 + 500 + 10);
        let served = body.clone();
        let up = RawUpstream::start(move |w| {
            let served = served.clone();
            async move {
                keep_alive(w, move |_, _| {
                    let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                    let mut at = 0;
                    for (size, hex) in [(26, "1A"), (255, "FF"), (500, "1F4"), (10, "00A")] {
                        out.extend_from_slice(format!("{hex}\r\n").as_bytes());
                        out.extend_from_slice(&served[at..at + size]);
                        out.extend_from_slice(b"\r\n");
                        at += size;
                    }
                    out.extend_from_slice(b"0\r\n\r\n");
                    out
                })
                .await;
            }
        })
        .await;
        let (proxy, mut c) = proxy_and_client(&up).await;
        for _ in 0..2 {
            let r = c.get(HOST, "/hex").await;
            assert_eq!(r.status, StatusCode::OK);
            assert!(r.body == body, "body bytes differ ({} bytes)", r.body.len());
        }
        assert_eq!(up.accepted(), 1);
        proxy.shutdown(GRACE).await;
    })
    .await;
}

// ---- 3. close-delimited ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_delimited_body_is_intact_and_next_request_dials_again() {
    within(async {
        let body = payload(50 * 1024);
        let served = body.clone();
        let up = RawUpstream::start(move |mut w| {
            let served = served.clone();
            async move {
                if w.read_head().await.is_none() {
                    return;
                }
                let _ = w
                    .write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
                    .await;
                for part in served.chunks(7 * 1024) {
                    if w.write(part).await.is_err() {
                        return;
                    }
                }
                // Dropping the connection ends the body.
            }
        })
        .await;
        let (proxy, mut c) = proxy_and_client(&up).await;
        for _ in 0..2 {
            let r = c.get(HOST, "/eof").await;
            assert_eq!(r.status, StatusCode::OK);
            assert!(r.body == body, "body bytes differ ({} bytes)", r.body.len());
        }
        expect_connections(
            &up,
            2,
            "a close-delimited response's connection is not reused",
        );
        proxy.shutdown(GRACE).await;
    })
    .await;
}

// ---- 4. HEAD ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_with_content_length_has_no_body_and_connection_stays_usable() {
    within(async {
        let up = RawUpstream::start(|w| {
            keep_alive(w, |head, _| {
                if head.method() == "HEAD" {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n".to_vec()
                } else {
                    ok(b"after")
                }
            })
        })
        .await;
        let proxy = proxy_to(&up).await;
        // Raw, so any body bytes after the HEAD response would show up in the next response.
        let mut w = Wire::connect(proxy.addrs().egress).await;
        w.write(format!("HEAD / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let head = w.read_head().await.expect("HEAD response head");
        assert_eq!(head.status(), 200, "{head:?}");
        assert_eq!(head.header("content-length"), Some("1234"), "{head:?}");
        w.write(&raw_get("/next")).await.unwrap();
        let (head, body) = read_sized_response(&mut w).await;
        assert!(head.line.starts_with("HTTP/1.1 200"), "{head:?}");
        assert_eq!(body, b"after");
        expect_connections(&up, 1, "the upstream connection is reused after HEAD");
        proxy.shutdown(GRACE).await;
    })
    .await;
}

// ---- 5. 204 / 304 ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_body_204_and_304_keep_connections_reusable() {
    within(async {
        let up = RawUpstream::start(|w| {
            keep_alive(w, |head, _| match head.path() {
                "/204" => b"HTTP/1.1 204 No Content\r\nX-Kind: none\r\n\r\n".to_vec(),
                // A 304 may carry the Content-Length of the representation; it has no body.
                "/304" => {
                    b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 42\r\n\r\n"
                        .to_vec()
                }
                _ => ok(b"fresh"),
            })
        })
        .await;
        let proxy = proxy_to(&up).await;
        let mut w = Wire::connect(proxy.addrs().egress).await;
        w.write(&raw_get("/204")).await.unwrap();
        let head = w.read_head().await.expect("204 head");
        assert_eq!(head.status(), 204, "{head:?}");
        assert_eq!(head.header("x-kind"), Some("none"));
        assert_eq!(head.header("content-length"), None, "{head:?}");
        assert_eq!(head.header("transfer-encoding"), None, "{head:?}");

        w.write(&raw_get("/304")).await.unwrap();
        let head = w.read_head().await.expect("304 head");
        assert_eq!(head.status(), 304, "{head:?}");
        assert_eq!(head.header("etag"), Some("\"v1\""));
        assert_eq!(head.header("transfer-encoding"), None, "{head:?}");
        // A 304 may state the length of the representation it stands for (RFC 9110 8.6); it
        // is passed on as is, and no body follows.
        assert_eq!(head.header("content-length"), Some("42"), "{head:?}");

        w.write(&raw_get("/ok")).await.unwrap();
        let (head, body) = read_sized_response(&mut w).await;
        assert_eq!(head.status(), 200, "{head:?}");
        assert_eq!(body, b"fresh");
        expect_connections(&up, 1, "204 and 304 leave the upstream connection reusable");
        proxy.shutdown(GRACE).await;
    })
    .await;
}

// ---- 6. 100 Continue ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_100_continue_is_skipped_and_final_response_delivered() {
    within(async {
        let up = RawUpstream::start(|mut w| async move {
            for _ in 0..MAX_REQUESTS_PER_CONN {
                let Some(head) = w.read_head().await else {
                    return;
                };
                let body = format!("final {}", head.path());
                let final_response = ok(body.as_bytes());
                let sent = if head.path() == "/split" {
                    // The interim response and the final one in separate segments.
                    let first = w.write(b"HTTP/1.1 100 Continue\r\n\r\n").await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    match first {
                        Ok(()) => w.write(&final_response).await,
                        Err(e) => Err(e),
                    }
                } else {
                    let mut both = b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n".to_vec();
                    both.extend_from_slice(&final_response);
                    w.write(&both).await
                };
                if sent.is_err() {
                    return;
                }
            }
        })
        .await;
        let proxy = proxy_to(&up).await;
        let mut w = Wire::connect(proxy.addrs().egress).await;
        for path in ["/split", "/joined"] {
            w.write(&raw_get(path)).await.unwrap();
            let (head, body) = read_sized_response(&mut w).await;
            // The interim response is not passed on: the first head the client sees is the 200.
            assert!(head.line.starts_with("HTTP/1.1 200"), "{head:?}");
            assert_eq!(head.header("x-interim"), None);
            assert_eq!(body, format!("final {path}").as_bytes());
        }
        assert_eq!(up.accepted(), 1);
        proxy.shutdown(GRACE).await;
    })
    .await;
}

// ---- 7. Connection: close ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_response_is_delivered_and_next_request_dials_again() {
    within(async {
        let up = RawUpstream::start(|w| {
            answer_once_and_close(
                w,
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 11\r\n\r\nhello world"
                    .to_vec(),
            )
        })
        .await;
        let (proxy, mut c) = proxy_and_client(&up).await;
        for _ in 0..2 {
            let r = c.get(HOST, "/").await;
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(r.body, Bytes::from_static(b"hello world"));
            // Hop-by-hop: the upstream's `Connection: close` does not close the client's
            // connection (the loop's second request proves it stays open).
            assert_eq!(r.header("connection"), None);
        }
        assert_eq!(up.accepted(), 2);
        proxy.shutdown(GRACE).await;
    })
    .await;
}

// ---- 8. HTTP/1.0 ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_response_works_and_is_not_reused() {
    within(async {
        // The upstream would serve more requests on the connection: only the proxy's choice
        // not to reuse an HTTP/1.0 (no keep-alive) connection makes it dial again.
        let up = RawUpstream::start(|w| {
            keep_alive(w, |_, _| {
                b"HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nold-10".to_vec()
            })
        })
        .await;
        let (proxy, mut c) = proxy_and_client(&up).await;
        for _ in 0..2 {
            let r = c.get(HOST, "/").await;
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(
                r.version,
                Version::HTTP_11,
                "the client is answered in its version"
            );
            assert_eq!(r.body, Bytes::from_static(b"old-10"));
        }
        assert_eq!(up.accepted(), 2);
        proxy.shutdown(GRACE).await;
    })
    .await;
}

// ---- 9. malformed or missing response ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_status_line_is_answered_503() {
    within(async {
        let up = RawUpstream::start(|mut w| async move {
            let Some(head) = w.read_head().await else {
                return;
            };
            let reply: &[u8] = match head.path() {
                "/abc" => b"HTTP/1.1 abc OK\r\nContent-Length: 2\r\n\r\nno",
                "/garbage" => b"\x00\x01\x02 not http at all \xff\xfe\r\n\r\n",
                _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            };
            let _ = w.write(reply).await;
        })
        .await;
        let (proxy, mut c) = proxy_and_client(&up).await;
        for path in ["/abc", "/garbage"] {
            let r = c.get(HOST, path).await;
            // Envoy's UR reply: 503, not 502. A broken exchange is never retried under App
            // Mesh's implicit retry policy (it may have been processed).
            assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
            assert_eq!(String::from_utf8_lossy(&r.body), RESET_BODY, "{path}");
        }
        assert_eq!(up.accepted(), 2, "one connection per request: no retry");
        // The proxy keeps serving.
        let r = c.get(HOST, "/ok").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, Bytes::from_static(b"ok"));
        proxy.shutdown(GRACE).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_without_a_response_is_answered_503() {
    within(async {
        let up = RawUpstream::start(|mut w| async move {
            // Reads the request and closes without a byte.
            let _ = w.read_head().await;
        })
        .await;
        let (proxy, mut c) = proxy_and_client(&up).await;
        let r = c.get(HOST, "/").await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(String::from_utf8_lossy(&r.body), RESET_BODY);
        // App Mesh's implicit policy retries connect failures, not a reset after sending.
        assert_eq!(up.accepted(), 1);
        proxy.shutdown(GRACE).await;
    })
    .await;
}

// ---- 10. huge response head ----

/// A response head with `count` headers of `size` bytes each.
fn huge_head(count: usize, size: usize) -> Vec<u8> {
    let value = "v".repeat(size);
    let mut head = String::from("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n");
    for i in 0..count {
        head.push_str(&format!("X-Big-{i}: {value}\r\n"));
    }
    head.push_str("\r\n");
    response(&head, b"body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_head_over_64_kib() {
    within(async {
        let up = RawUpstream::start(|mut w| async move {
            let Some(head) = w.read_head().await else {
                return;
            };
            match head.path() {
                // 48 KiB of fields, at once: under the limit.
                "/48k" => {
                    let _ = w.write(&huge_head(12, 4 * 1024)).await;
                }
                // 80 KiB of fields, 4 KiB at a time.
                "/80k-trickled" => {
                    for piece in huge_head(20, 4 * 1024).chunks(4 * 1024) {
                        if w.write(piece).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
                // 80 KiB of fields, at once: held to the same limit as a trickled head.
                "/80k" => {
                    let _ = w.write(&huge_head(20, 4 * 1024)).await;
                }
                // 512 KiB of fields, at once.
                "/512k" => {
                    let _ = w.write(&huge_head(64, 8 * 1024)).await;
                }
                _ => {
                    let _ = w.write(&ok(b"ok")).await;
                }
            }
        })
        .await;
        let (proxy, mut c) = proxy_and_client(&up).await;

        let r = c.get(HOST, "/48k").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("x-big-11").map(str::len), Some(4 * 1024));
        assert_eq!(r.body, Bytes::from_static(b"body"));

        // Over 64 KiB of response head is a protocol error: 503 (UR), not retried.
        for path in ["/80k", "/80k-trickled", "/512k"] {
            let r = c.get(HOST, path).await;
            assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
            assert_eq!(String::from_utf8_lossy(&r.body), RESET_BODY, "{path}");
        }
        assert_eq!(up.accepted(), 4);
        // The proxy keeps serving.
        let r = c.get(HOST, "/ok").await;
        assert_eq!(r.status, StatusCode::OK);
        proxy.shutdown(GRACE).await;
    })
    .await;
}

// ---- 11. Transfer-Encoding and Content-Length together ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_wins_over_content_length() {
    within(async {
        let up = RawUpstream::start(|w| {
            keep_alive(w, |_, _| {
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
                  6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"
                    .to_vec()
            })
        })
        .await;
        let proxy = proxy_to(&up).await;
        let mut w = Wire::connect(proxy.addrs().egress).await;
        for _ in 0..2 {
            w.write(&raw_get("/both")).await.unwrap();
            let head = w.read_head().await.expect("a response head");
            assert_eq!(head.status(), 200, "{head:?}");
            // RFC 9112 §6.3: chunked wins, and a proxy must not forward the Content-Length.
            assert_eq!(head.header("content-length"), None, "{head:?}");
            assert!(head.is_chunked(), "{head:?}");
            let body = w.read_chunked().await.expect("a chunked body");
            assert_eq!(body, b"hello world");
        }
        // A response framed both ways is a smuggling signal: its connection is not reused.
        assert_eq!(up.accepted(), 2);
        proxy.shutdown(GRACE).await;
    })
    .await;
}

// ---- 12. stale pooled connection ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_pooled_connection_is_replaced() {
    within(async {
        let closed = Arc::new(tokio::sync::Notify::new());
        let signal = closed.clone();
        let up = RawUpstream::start(move |mut w| {
            let signal = signal.clone();
            async move {
                let Some(_) = w.read_head().await else {
                    return;
                };
                // A keep-alive response, then the connection is closed while idle in the pool.
                let _ = w.write(&ok(b"fresh")).await;
                drop(w);
                signal.notify_one();
            }
        })
        .await;
        let (proxy, mut c) = proxy_and_client(&up).await;
        let r = c.get(HOST, "/").await;
        assert_eq!(r.status, StatusCode::OK);
        // Whether the close has reached the proxy yet or not, the next request must succeed:
        // either the pooled connection is seen closed when taken, or the request is re-sent.
        closed.notified().await;
        let r = c.get(HOST, "/").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, Bytes::from_static(b"fresh"));
        assert_eq!(up.accepted(), 2);
        proxy.shutdown(GRACE).await;
    })
    .await;
}

/// An upstream whose first connection answers one request (`first`), then reads the next
/// request and closes without a byte, as a server does that times the connection out just as
/// the request arrives; later connections answer `again` to everything.
async fn closes_on_second_request() -> RawUpstream {
    let conns = Arc::new(AtomicUsize::new(0));
    RawUpstream::start(move |mut w| {
        let n = conns.fetch_add(1, Ordering::SeqCst);
        async move {
            if n > 0 {
                return keep_alive(w, |_, _| ok(b"again")).await;
            }
            let Some(head) = w.read_head().await else {
                return;
            };
            if w.read_body(&head).await.is_none() || w.write(&ok(b"first")).await.is_err() {
                return;
            }
            let Some(head) = w.read_head().await else {
                return;
            };
            let _ = w.read_body(&head).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connection_closed_as_the_request_arrives() {
    within(async {
        // An idempotent request is sent again on a new connection.
        let up = closes_on_second_request().await;
        let (proxy, mut c) = proxy_and_client(&up).await;
        let r = c.get(HOST, "/").await;
        assert_eq!(r.body, Bytes::from_static(b"first"));
        let r = c.get(HOST, "/").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, Bytes::from_static(b"again"));
        assert_eq!(up.accepted(), 2);
        proxy.shutdown(GRACE).await;

        // A POST may have been processed: it is not sent again, and the client gets 503 (UR).
        let up = closes_on_second_request().await;
        let (proxy, mut c) = proxy_and_client(&up).await;
        let r = c.get(HOST, "/").await;
        assert_eq!(r.body, Bytes::from_static(b"first"));
        let mut req = h1_request(Method::POST, HOST, "/", &[]);
        *req.body_mut() = Full::new(Bytes::from_static(b"order #1"));
        let r = c.send(req).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(String::from_utf8_lossy(&r.body), RESET_BODY);
        assert_eq!(up.accepted(), 1);
        proxy.shutdown(GRACE).await;
    })
    .await;
}

// ---- 13. large request bodies ----

/// An upstream that answers each request with `<bytes> <framing> <fnv1a>` of its body.
async fn counting_upstream() -> RawUpstream {
    RawUpstream::start(|w| {
        keep_alive(w, |head, body| {
            let framing = if head.is_chunked() {
                "chunked"
            } else if head.header("content-length").is_some() {
                "length"
            } else {
                "none"
            };
            ok(format!("{} {framing} {:x}", body.len(), fnv1a(body)).as_bytes())
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_request_bodies_reach_the_upstream_intact() {
    within(async {
        const MIB: usize = 1024 * 1024;
        let up = counting_upstream().await;
        let proxy = proxy_to(&up).await;
        let body = payload(MIB);
        let sum = fnv1a(&body);

        // Sized.
        let mut c = H1::connect(proxy.addrs().egress).await;
        let mut req = h1_request(Method::POST, HOST, "/upload", &[]);
        *req.body_mut() = Full::new(Bytes::from(body.clone()));
        let r = c.send(req).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            String::from_utf8_lossy(&r.body),
            format!("{MIB} length {sum:x}")
        );

        // Chunked, in 64 KiB chunks; the proxy forwards it chunked.
        let mut w = Wire::connect(proxy.addrs().egress).await;
        let mut req =
            format!("POST /upload HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n")
                .into_bytes();
        for part in body.chunks(64 * 1024) {
            req.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            req.extend_from_slice(part);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"0\r\n\r\n");
        w.write(&req).await.unwrap();
        let (head, got) = read_sized_response(&mut w).await;
        assert_eq!(head.status(), 200, "{head:?}");
        assert_eq!(
            String::from_utf8_lossy(&got),
            format!("{MIB} chunked {sum:x}")
        );
        proxy.shutdown(GRACE).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_is_echoed_while_the_upstream_still_reads_it() {
    within(async {
        const SIZE: usize = 1024 * 1024;
        // Answers right after the head and echoes the body as chunks while reading it: the
        // proxy must keep sending the request body while it relays the response.
        let up = RawUpstream::start(|mut w| async move {
            let Some(head) = w.read_head().await else {
                return;
            };
            let total = head.content_length().unwrap_or(0);
            if w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
            let mut echoed = 0;
            for _ in 0..MAX_CHUNKS {
                if echoed == total {
                    break;
                }
                if w.buf.is_empty() {
                    match w.fill().await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
                let take = w.buf.len().min(total - echoed);
                let mut chunk = format!("{take:x}\r\n").into_bytes();
                chunk.extend(w.buf.drain(..take));
                chunk.extend_from_slice(b"\r\n");
                echoed += take;
                if w.write(&chunk).await.is_err() {
                    return;
                }
            }
            let _ = w.write(b"0\r\n\r\n").await;
        })
        .await;
        let proxy = proxy_to(&up).await;
        let stream = TcpStream::connect(proxy.addrs().egress).await.unwrap();
        let (read, mut write) = stream.into_split();
        let body = payload(SIZE);
        let sent = body.clone();
        let writer = tokio::spawn(async move {
            let head =
                format!("POST /echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {SIZE}\r\n\r\n");
            write.write_all(head.as_bytes()).await.unwrap();
            for part in sent.chunks(64 * 1024) {
                write.write_all(part).await.unwrap();
            }
            write
        });
        let mut r = Wire::new(read);
        let head = r.read_head().await.expect("a response head");
        assert_eq!(head.status(), 200, "{head:?}");
        assert!(head.is_chunked(), "{head:?}");
        let echoed = r.read_chunked().await.expect("the whole echo");
        assert_eq!(echoed.len(), SIZE);
        assert!(echoed == body, "echoed bytes differ");
        let _write = writer.await.unwrap();
        proxy.shutdown(GRACE).await;
    })
    .await;
}

// ---- 14. early response before the request body is read ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_413_before_the_request_body_is_read() {
    within(async {
        let up = RawUpstream::start(|mut w| async move {
            if w.read_head().await.is_none() {
                return;
            }
            let _ = w
                .write(
                    b"HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 8\r\n\r\ntoo big!",
                )
                .await;
            // Closed with the request body unread.
        })
        .await;
        let proxy = proxy_to(&up).await;
        let stream = TcpStream::connect(proxy.addrs().egress).await.unwrap();
        let (read, mut write) = stream.into_split();
        let writer = tokio::spawn(async move {
            let body = payload(1024 * 1024);
            let head = format!(
                "POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            // Either write may fail once the proxy gives up on the request body.
            if write.write_all(head.as_bytes()).await.is_ok() {
                let _ = write.write_all(&body).await;
            }
            write
        });
        let mut r = Wire::new(read);
        let (head, body) = read_sized_response(&mut r).await;
        assert_eq!(head.status(), 413, "{head:?}");
        assert_eq!(body, b"too big!");
        writer.abort();
        proxy.shutdown(GRACE).await;
    })
    .await;
}

/// A proxy like [`proxy_to`] whose route gives each request `timeout_ms` at most.
async fn proxy_with_timeout(up: &RawUpstream, timeout_ms: u64) -> RunningProxy {
    let timed = format!(
        "meshName: m\nvirtualRouterName: r\nrouteName: t\nspec:\n  httpRoute:\n    match: {{prefix: /}}\n    action: {{weightedTargets: [{{virtualNode: target, weight: 1}}]}}\n    timeout: {{perRequest: {{unit: ms, value: {timeout_ms}}}}}\n"
    );
    start(&stream(&[
        mesh("DROP_ALL"),
        client(&[HOST], &[]),
        local_node("target", up.port, "http"),
        router("r", &[(8080, "http")]),
        service_router(HOST, "r"),
        timed,
    ]))
    .await
}

/// Sends a 16 MiB request body to an upstream that reads `read_first` bytes of it, answers
/// 413 and then holds the connection open without reading more. Returns the client's response
/// status and body, and how long it took.
async fn early_413_held_open(read_first: usize) -> (u16, Vec<u8>, Duration) {
    let up = RawUpstream::start(move |mut w| async move {
        if w.read_head().await.is_none() || w.read_exact(read_first).await.is_none() {
            return;
        }
        let _ = w
            .write(
                b"HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 8\r\n\r\ntoo big!",
            )
            .await;
        // Neither reads the rest of the body nor closes for a while: the proxy's writes of
        // the body stall once the socket buffers are full.
        tokio::time::sleep(Duration::from_secs(8)).await;
    })
    .await;
    // A proxy stuck writing the body shows as a 504 after 3 s.
    let proxy = proxy_with_timeout(&up, 3000).await;
    let stream = TcpStream::connect(proxy.addrs().egress).await.unwrap();
    let (read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        // More than the loopback socket buffers between proxy and upstream can hold.
        let body = payload(16 * 1024 * 1024);
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        if write.write_all(head.as_bytes()).await.is_ok() {
            let _ = write.write_all(&body).await;
        }
        write
    });
    let started = std::time::Instant::now();
    let mut r = Wire::new(read);
    let (head, body) = read_sized_response(&mut r).await;
    let took = started.elapsed();
    writer.abort();
    proxy.shutdown(GRACE).await;
    (head.status(), body, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_413_while_the_upstream_keeps_the_connection_open_unread() {
    within(async {
        let (status, body, took) = early_413_held_open(0).await;
        assert_eq!(status, 413, "after {took:?}");
        assert_eq!(body, b"too big!");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_413_after_part_of_the_body_while_the_upstream_stops_reading() {
    within(async {
        let (status, body, took) = early_413_held_open(256 * 1024).await;
        assert_eq!(status, 413, "after {took:?}");
        assert_eq!(body, b"too big!");
    })
    .await;
}

// ---- 15. upgrade ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_spliced_both_ways() {
    within(async {
        let up = RawUpstream::start(|mut w| async move {
            let Some(head) = w.read_head().await else {
                return;
            };
            let upgrade = head.header("upgrade") == Some("websocket")
                && head
                    .header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("upgrade"));
            if !upgrade {
                let _ = w.write(&response("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", b"")).await;
                return;
            }
            if w
                .write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
            // Echo until the peer closes.
            for _ in 0..1024 {
                if !w.buf.is_empty() {
                    let data = std::mem::take(&mut w.buf);
                    if w.write(&data).await.is_err() {
                        return;
                    }
                }
                match w.fill().await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        let proxy = proxy_to(&up).await;
        let mut w = Wire::connect(proxy.addrs().egress).await;
        w.write(
            format!(
                "GET /ws HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let head = w.read_head().await.expect("the 101 head");
        assert_eq!(head.status(), 101, "{head:?}");
        assert_eq!(head.header("upgrade"), Some("websocket"), "{head:?}");
        let large = payload(20_000);
        let messages: [&[u8]; 3] = [b"ping-1", b"\x00\x01binary\xff", &large];
        for msg in messages {
            w.write(msg).await.unwrap();
            let echoed = w.read_exact(msg.len()).await.expect("the echo");
            assert_eq!(echoed, msg);
        }
        assert_eq!(up.accepted(), 1);
        proxy.shutdown(GRACE).await;
    })
    .await;
}

// ---- 16. truncated body ----

/// Splits a raw response into its head and what followed it.
fn split_response(raw: &[u8]) -> Option<(Head, &[u8])> {
    let at = find(raw, b"\r\n\r\n")? + 4;
    Some((Head::parse(&raw[..at]), &raw[at..]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_content_length_body_ends_early_and_proxy_keeps_serving() {
    within(async {
        const ANNOUNCED: usize = 100_000;
        const SENT: usize = 40_000;
        let up = RawUpstream::start(|mut w| async move {
            let Some(head) = w.read_head().await else {
                return;
            };
            if head.path().starts_with("/short") {
                let mut reply =
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {ANNOUNCED}\r\n\r\n").into_bytes();
                reply.extend_from_slice(&payload(SENT));
                let _ = w.write(&reply).await;
                if head.path() == "/short-then-pause" {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                // Closes 60 000 bytes short.
            } else {
                let _ = w.write(&ok(b"still here")).await;
            }
        })
        .await;
        let proxy = proxy_to(&up).await;
        let egress = proxy.addrs().egress;

        // The upstream closes right after the partial body: the proxy closes the client
        // connection without completing the response (nor hanging).
        let mut w = Wire::connect(egress).await;
        w.write(&raw_get("/short")).await.unwrap();
        let raw = w.read_to_close().await;
        if let Some((head, body)) = split_response(&raw) {
            assert_eq!(head.status(), 200, "{head:?}");
            assert_eq!(head.content_length(), Some(ANNOUNCED), "{head:?}");
            assert!(body.len() < ANNOUNCED, "got {} bytes", body.len());
            assert_eq!(
                body,
                &payload(SENT)[..body.len()],
                "a prefix of what was sent"
            );
        } else {
            assert!(raw.len() < 100, "no head yet {} bytes", raw.len());
        }

        // The upstream pauses before closing: the head and every byte sent reach the client
        // before the proxy closes the connection short of the announced length.
        let mut w = Wire::connect(egress).await;
        w.write(&raw_get("/short-then-pause")).await.unwrap();
        let raw = w.read_to_close().await;
        let (head, body) = split_response(&raw).expect("a response head");
        assert_eq!(head.status(), 200, "{head:?}");
        assert_eq!(head.content_length(), Some(ANNOUNCED), "{head:?}");
        assert_eq!(body.len(), SENT);
        assert!(body == payload(SENT), "the bytes sent, in order");

        let mut c = H1::connect(egress).await;
        let r = c.get(HOST, "/ok").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, Bytes::from_static(b"still here"));
        assert_eq!(up.accepted(), 3, "a truncated connection is not reused");
        proxy.shutdown(GRACE).await;
    })
    .await;
}
