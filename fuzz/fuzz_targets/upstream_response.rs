//! Any bytes as an upstream's answer: an in-process proxy forwards a fixed request to a raw TCP
//! upstream that writes the input back as its response. The proxy must answer the client or
//! close within a bound, never panic, and keep serving (a well-formed exchange is checked
//! every [`HEALTH_EVERY`] inputs on the same proxy).
//!
//! The first input byte picks the exchange; the rest is what the upstream writes:
//! - bits 0-1: the client's request: 0 GET, 1 HEAD, 2 POST with a small body, 3 an Upgrade;
//! - bit 2: the upstream keeps the connection open and answers every further request on it
//!   with the current input (pooled connections get reused), closing after [`KEEPALIVE_IDLE`]
//!   without one; otherwise it half-closes right after the response;
//! - bit 3: the first [`TRICKLE_BYTES`] are written a few bytes at a time (partial heads,
//!   chunk-size lines and trailers across reads);
//! - bit 4: a POST's body is chunked (the proxy streams it upstream, alongside the response
//!   when the upstream answers early) instead of sized (the proxy buffers it for replay);
//! - bit 6: the upstream ends the connection with a reset (zero linger) instead of a FIN;
//! - bit 7: a [`FILLER`]-byte field goes in after the first line, past the 64 KiB head limit.
//!
//! Bit 5 is unused, so that seeds can start with a printable character: '0'-'3' are GET, HEAD,
//! chunked POST, Upgrade ('"' a sized POST); '4'-'7' the same with a keep-alive upstream;
//! '8'-'?' the same trickled; 'P'-'_' as '0'-'?' with a reset; 0x80 and up big heads.
#![no_main]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longest the proxy may take to answer and close; past it the input counts as a hang (a
/// crash for libFuzzer).
const EXCHANGE_BOUND: Duration = Duration::from_secs(5);
/// Most response bytes the client reads before it hangs up.
const READ_CAP: usize = 1 << 20;
/// A well-formed exchange is checked this often (and on the first input).
const HEALTH_EVERY: u64 = 64;
/// The path that makes the upstream answer [`HEALTHY`] instead of the input.
const HEALTH_PATH: &[u8] = b"/__outrider_fuzz_health";
const HEALTHY: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nhealthy";
/// How long the upstream waits for the request on a connection just accepted.
const FIRST_REQUEST_WAIT: Duration = Duration::from_secs(2);
/// How long a keep-alive upstream waits for a further request before it closes.
const KEEPALIVE_IDLE: Duration = Duration::from_millis(20);
/// How long a half-closed upstream connection waits for the proxy to close its side.
const DRAIN_WAIT: Duration = Duration::from_secs(1);
/// Largest request head (and body) the upstream reads.
const MAX_REQUEST: usize = 64 * 1024;
/// Bytes written a few at a time in trickle mode; the rest goes in one write.
const TRICKLE_BYTES: usize = 512;
const TRICKLE_PIECE: usize = 7;
/// Size of the field added in big-head mode: more than the proxy's 64 KiB head limit.
const FILLER: usize = 66 * 1024;

const KEEP_ALIVE: u8 = 1 << 2;
const TRICKLE: u8 = 1 << 3;
const CHUNKED_POST: u8 = 1 << 4;
const RESET: u8 = 1 << 6;
const BIG_HEAD: u8 = 1 << 7;

/// What the upstream sends for the input being run.
struct Served {
    mode: u8,
    response: Vec<u8>,
}

type Slot = Arc<Mutex<Arc<Served>>>;

/// Everything stays reachable for the life of the process, so LeakSanitizer does not take the
/// long-lived proxy and upstream for leaks.
struct Harness {
    rt: tokio::runtime::Runtime,
    _proxy: outrider_app::RunningProxy,
    egress: SocketAddr,
    slot: Slot,
    runs: AtomicU64,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let rt = outrider_fuzz::runtime();
        let slot: Slot = Arc::new(Mutex::new(Arc::new(Served {
            mode: 0,
            response: Vec::new(),
        })));
        let proxy = rt.block_on(async {
            let listener = match TcpListener::bind("127.0.0.1:0").await {
                Ok(l) => l,
                Err(e) => panic!("harness upstream: {e}"),
            };
            let port = match listener.local_addr() {
                Ok(a) => a.port(),
                Err(e) => panic!("harness upstream: {e}"),
            };
            tokio::spawn(upstream(listener, slot.clone()));
            outrider_fuzz::start_proxy(port).await
        });
        let egress = proxy.addrs().egress;
        Harness {
            rt,
            _proxy: proxy,
            egress,
            slot,
            runs: AtomicU64::new(0),
        }
    })
}

/// The raw upstream: every accepted connection is served on a task of its own.
async fn upstream(listener: TcpListener, slot: Slot) {
    loop {
        if let Ok((s, _)) = listener.accept().await {
            tokio::spawn(upstream_conn(s, slot.clone()));
        }
    }
}

/// Reads request heads (skipping any body) and answers each with the current input, or with
/// [`HEALTHY`] when the request asks for [`HEALTH_PATH`].
async fn upstream_conn(mut s: TcpStream, slot: Slot) {
    let _ = s.set_nodelay(true);
    let mut buf = Vec::with_capacity(1024);
    let mut wait = FIRST_REQUEST_WAIT;
    let mut mode = 0;
    loop {
        let head = tokio::time::timeout(wait, read_head(&mut s, &mut buf)).await;
        let Ok(Some((health, body))) = head else {
            break;
        };
        if health {
            if !skip(&mut s, &mut buf, body).await || s.write_all(HEALTHY).await.is_err() {
                return;
            }
            wait = KEEPALIVE_IDLE;
            continue;
        }
        let served = slot
            .lock()
            .map(|g| Arc::clone(&g))
            .unwrap_or_else(|p| Arc::clone(&p.into_inner()));
        mode = served.mode;
        // A closing upstream answers before it reads the request body (the proxy goes on
        // sending it alongside the response); one that keeps the connection reads it first,
        // to stay in step.
        if mode & KEEP_ALIVE != 0 && !skip(&mut s, &mut buf, body).await {
            return;
        }
        if write_response(&mut s, &served).await.is_err() {
            return;
        }
        if mode & KEEP_ALIVE == 0 {
            break;
        }
        wait = KEEPALIVE_IDLE;
    }
    if mode & RESET != 0 {
        let _ = s.set_zero_linger();
        return;
    }
    // Half-close, then wait for the proxy to close its side, so that unread request bytes do
    // not turn the close into a reset.
    let _ = s.shutdown().await;
    let _ = tokio::time::timeout(DRAIN_WAIT, async {
        let mut sink = [0u8; 4096];
        while let Ok(n) = s.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Reads one request head off the front of `buf`: whether it asks for [`HEALTH_PATH`], and how
/// its body is framed. `None` at the end of the stream, on an error or past the bound.
async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(bool, ReqBody)> {
    let head_len = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_REQUEST || !read_more(s, buf).await {
            return None;
        }
    };
    let head = &buf[..head_len];
    let body = if has_field(head, b"transfer-encoding", b"chunked") {
        ReqBody::Chunked
    } else {
        ReqBody::Length(content_length(head))
    };
    let parsed = (find(head, HEALTH_PATH).is_some(), body);
    buf.drain(..head_len);
    Some(parsed)
}

/// How the request body the proxy sends is framed.
#[derive(Clone, Copy)]
enum ReqBody {
    Length(usize),
    Chunked,
}

/// Consumes the request body off the front of `buf`, reading as needed; false past the bound
/// or at the end of the stream. A chunked body ends at the first last-chunk: the proxy's own
/// chunks here carry only "hello".
async fn skip(s: &mut TcpStream, buf: &mut Vec<u8>, body: ReqBody) -> bool {
    loop {
        let end = match body {
            ReqBody::Length(n) if buf.len() >= n => Some(n),
            ReqBody::Length(_) => None,
            ReqBody::Chunked => find(buf, b"0\r\n\r\n").map(|i| i + 5),
        };
        if let Some(end) = end {
            buf.drain(..end);
            return true;
        }
        if buf.len() > MAX_REQUEST || !read_more(s, buf).await {
            return false;
        }
    }
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The values of the field `name` in a request head.
fn field_values<'a>(head: &'a [u8], name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    head.split(|b| *b == b'\n').filter_map(move |line| {
        let colon = line.iter().position(|b| *b == b':')?;
        let (n, value) = line.split_at(colon);
        n.eq_ignore_ascii_case(name)
            .then(|| value[1..].trim_ascii())
    })
}

fn has_field(head: &[u8], name: &[u8], value: &[u8]) -> bool {
    field_values(head, name).any(|v| v.eq_ignore_ascii_case(value))
}

/// The request's `content-length`, 0 when absent or unreadable.
fn content_length(head: &[u8]) -> usize {
    field_values(head, b"content-length")
        .find_map(|v| std::str::from_utf8(v).ok()?.parse().ok())
        .unwrap_or(0)
}

async fn write_response(s: &mut TcpStream, served: &Served) -> std::io::Result<()> {
    let filled;
    let mut bytes: &[u8] = &served.response;
    if served.mode & BIG_HEAD != 0 {
        let at = bytes
            .iter()
            .position(|b| *b == b'\n')
            .map_or(bytes.len(), |i| i + 1);
        let mut v = Vec::with_capacity(bytes.len() + FILLER + 16);
        v.extend_from_slice(&bytes[..at]);
        v.extend_from_slice(b"x-fill: ");
        v.resize(v.len() + FILLER, b'a');
        v.extend_from_slice(b"\r\n");
        v.extend_from_slice(&bytes[at..]);
        filled = v;
        bytes = &filled;
    }
    if served.mode & TRICKLE != 0 {
        let (slow, rest) = bytes.split_at(bytes.len().min(TRICKLE_BYTES));
        for piece in slow.chunks(TRICKLE_PIECE) {
            s.write_all(piece).await?;
            tokio::task::yield_now().await;
        }
        bytes = rest;
    }
    s.write_all(bytes).await
}

/// The client's request for the method bits of the first byte.
fn request(selector: u8) -> &'static [u8] {
    match selector & 3 {
        0 => b"GET / HTTP/1.1\r\nHost: svc.local\r\nConnection: close\r\n\r\n",
        1 => b"HEAD / HTTP/1.1\r\nHost: svc.local\r\nConnection: close\r\n\r\n",
        2 if selector & CHUNKED_POST != 0 => {
            b"POST /p HTTP/1.1\r\nHost: svc.local\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        }
        2 => b"POST /p HTTP/1.1\r\nHost: svc.local\r\nConnection: close\r\ncontent-length: 5\r\n\r\nhello",
        _ => b"GET /ws HTTP/1.1\r\nHost: svc.local\r\nConnection: upgrade, close\r\nUpgrade: websocket\r\n\r\n",
    }
}

/// Sends `req` on a new connection and reads until the proxy closes (or [`READ_CAP`]).
async fn exchange(addr: SocketAddr, req: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return got;
    };
    // The proxy may answer and close before reading everything: write errors are fine.
    let _ = s.write_all(req).await;
    let mut buf = [0u8; 16 * 1024];
    while got.len() < READ_CAP {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

/// A well-formed exchange still works. Retried: a connection pooled a moment ago may carry
/// bytes an upstream in trickle mode was still writing past its response when the probe ran.
async fn check_health(addr: SocketAddr) {
    let req =
        b"GET /__outrider_fuzz_health HTTP/1.1\r\nHost: svc.local\r\nConnection: close\r\n\r\n";
    let mut last = Vec::new();
    for _ in 0..3 {
        last = exchange(addr, req).await;
        if last.starts_with(b"HTTP/1.1 200") && last.ends_with(b"\r\n\r\nhealthy") {
            return;
        }
    }
    panic!(
        "proxy no longer serves a well-formed upstream: {:?}",
        String::from_utf8_lossy(&last)
    );
}

fuzz_target!(|data: &[u8]| {
    let h = harness();
    let Some((&selector, response)) = data.split_first() else {
        return;
    };
    let served = Arc::new(Served {
        mode: selector,
        response: response.to_vec(),
    });
    match h.slot.lock() {
        Ok(mut g) => *g = served,
        Err(p) => *p.into_inner() = served,
    }
    let run = h.runs.fetch_add(1, Ordering::Relaxed);
    // The timer must be made inside the runtime, hence the async block.
    let done = h.rt.block_on(async {
        tokio::time::timeout(EXCHANGE_BOUND, exchange(h.egress, request(selector))).await
    });
    assert!(
        done.is_ok(),
        "proxy neither answered nor closed within {EXCHANGE_BOUND:?}"
    );
    if run.is_multiple_of(HEALTH_EVERY) {
        let done = h
            .rt
            .block_on(async { tokio::time::timeout(EXCHANGE_BOUND, check_health(h.egress)).await });
        assert!(
            done.is_ok(),
            "health exchange did not finish within {EXCHANGE_BOUND:?}"
        );
    }
});
