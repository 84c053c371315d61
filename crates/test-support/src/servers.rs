//! In-process upstream servers on `127.0.0.1:0` that record what they saw: HTTP/1.1 and h2c,
//! gRPC, WebSocket and raw TCP, for the proxy's end-to-end tests.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream;
use http::header::{CONNECTION, CONTENT_TYPE, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Header naming the server on every HTTP response.
pub const X_SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");

/// gRPC method that echoes the request's messages.
pub const GRPC_UNARY: &str = "/test.Echo/Unary";
/// gRPC method that answers N one-byte messages `[0]..[N-1]`, N being the request's first byte.
pub const GRPC_STREAM: &str = "/test.Echo/Stream";
/// gRPC method that fails with `grpc-status: 13` and `grpc-message: boom`.
pub const GRPC_FAIL: &str = "/test.Echo/Fail";

/// Length of the gRPC message prefix: a compressed flag and a big-endian u32 length.
const GRPC_PREFIX_LEN: usize = 5;
/// Appended to the client's key before hashing, per RFC 6455 section 1.3.
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Pause after an accept error (EMFILE, say) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(10);

type TestBody = BoxBody<Bytes, hyper::Error>;

/// A request as the server received it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// The request method.
    pub method: Method,
    /// The request target (origin form for HTTP/1.1, with authority for HTTP/2).
    pub uri: Uri,
    /// The protocol version the request arrived with.
    pub version: Version,
    /// All request headers.
    pub headers: HeaderMap,
}

/// A running test server. It stops (listener and every connection) when dropped.
#[derive(Debug)]
pub struct TestServer {
    addr: SocketAddr,
    state: Arc<State>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Http,
    H2Only,
    Grpc,
    WebSocket,
}

#[derive(Debug)]
struct State {
    name: String,
    served_by: HeaderValue,
    body: Bytes,
    hits: AtomicU64,
    last: Mutex<Option<SeenRequest>>,
    stop: CancellationToken,
}

impl TestServer {
    /// An HTTP server accepting HTTP/1.1 and h2c prior knowledge: every response is 200 with
    /// `x-served-by: <name>` and body `<name>\n`, except `POST /echo`, which echoes the body.
    ///
    /// # Panics
    /// Outside a tokio runtime, if binding `127.0.0.1:0` fails, or if `name` is not a valid
    /// header value.
    pub fn http(name: &str) -> TestServer {
        Self::start_http(name, Mode::Http)
    }

    /// Like [`TestServer::http`], but speaks only h2c with prior knowledge.
    ///
    /// # Panics
    /// As [`TestServer::http`].
    pub fn h2_only(name: &str) -> TestServer {
        Self::start_http(name, Mode::H2Only)
    }

    /// An h2c gRPC server with [`GRPC_UNARY`], [`GRPC_STREAM`] and [`GRPC_FAIL`]; other methods
    /// get a trailers-only `grpc-status: 12` (UNIMPLEMENTED).
    ///
    /// # Panics
    /// As [`TestServer::http`].
    pub fn grpc(name: &str) -> TestServer {
        Self::start_http(name, Mode::Grpc)
    }

    /// An HTTP/1.1 server that answers an `Upgrade: websocket` request with 101 and a correct
    /// `Sec-WebSocket-Accept`, then echoes raw bytes (no WebSocket framing). Other requests are
    /// served as by [`TestServer::http`].
    ///
    /// # Panics
    /// As [`TestServer::http`].
    pub fn websocket_echo(name: &str) -> TestServer {
        Self::start_http(name, Mode::WebSocket)
    }

    /// A plain TCP server that writes `<name>\n` and then echoes every byte. `hits` counts
    /// connections.
    ///
    /// # Panics
    /// As [`TestServer::http`].
    pub fn tcp_echo(name: &str) -> TestServer {
        let (listener, server) = Self::bind(name);
        let state = Arc::clone(&server.state);
        spawn_until_stopped(&state.stop.clone(), async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                };
                state.hits.fetch_add(1, Ordering::Relaxed);
                spawn_until_stopped(&state.stop, tcp_echo(stream, state.name.clone()));
            }
        });
        server
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The name given at start.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Requests received so far (connections, for [`TestServer::tcp_echo`]).
    pub fn hits(&self) -> u64 {
        self.state.hits.load(Ordering::Relaxed)
    }

    /// The most recent request, if any.
    pub fn last_request(&self) -> Option<SeenRequest> {
        self.state
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn bind(name: &str) -> (TcpListener, TestServer) {
        let std = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        std.set_nonblocking(true).expect("set_nonblocking");
        let listener = TcpListener::from_std(std).expect("TestServer needs a tokio runtime");
        let addr = listener.local_addr().expect("local_addr");
        let state = Arc::new(State {
            name: name.to_owned(),
            served_by: HeaderValue::from_str(name).expect("server name must be a header value"),
            body: Bytes::from(format!("{name}\n")),
            hits: AtomicU64::new(0),
            last: Mutex::new(None),
            stop: CancellationToken::new(),
        });
        (listener, TestServer { addr, state })
    }

    fn start_http(name: &str, mode: Mode) -> TestServer {
        let (listener, server) = Self::bind(name);
        let state = Arc::clone(&server.state);
        spawn_until_stopped(&state.stop.clone(), async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder = match mode {
                Mode::Http => builder,
                Mode::H2Only | Mode::Grpc => builder.http2_only(),
                Mode::WebSocket => builder.http1_only(),
            };
            let builder = Arc::new(builder);
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                };
                let svc_state = Arc::clone(&state);
                let service = service_fn(move |req| handle(Arc::clone(&svc_state), mode, req));
                let builder = Arc::clone(&builder);
                spawn_until_stopped(&state.stop, async move {
                    let io = TokioIo::new(stream);
                    // Errors are the client's doing (resets, garbage); tests check responses.
                    // Only the non-upgrade path honours `http2_only`.
                    let _ = match mode {
                        Mode::H2Only | Mode::Grpc => builder.serve_connection(io, service).await,
                        Mode::Http | Mode::WebSocket => {
                            builder.serve_connection_with_upgrades(io, service).await
                        }
                    };
                });
            }
        });
        server
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.state.stop.cancel();
    }
}

impl State {
    fn record(&self, req: &Request<Incoming>) {
        let seen = SeenRequest {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        };
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(seen);
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    fn response(&self, status: StatusCode, body: TestBody) -> Response<TestBody> {
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert(X_SERVED_BY, self.served_by.clone());
        resp
    }
}

/// Frames one gRPC message (uncompressed) for a request or response body.
pub fn grpc_frame(msg: &[u8]) -> Bytes {
    let len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
    let mut buf = BytesMut::with_capacity(GRPC_PREFIX_LEN + msg.len());
    buf.extend_from_slice(&[0]);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(msg);
    buf.freeze()
}

/// Splits a gRPC body into its messages; a trailing incomplete message is ignored.
pub fn grpc_decode(buf: &[u8]) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut rest = buf;
    while rest.len() >= GRPC_PREFIX_LEN {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let Some(msg) = rest.get(GRPC_PREFIX_LEN..GRPC_PREFIX_LEN + len) else {
            break;
        };
        out.push(Bytes::copy_from_slice(msg));
        rest = &rest[GRPC_PREFIX_LEN + len..];
    }
    out
}

fn spawn_until_stopped<F>(stop: &CancellationToken, fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(stop.clone().run_until_cancelled_owned(fut));
}

async fn handle(
    state: Arc<State>,
    mode: Mode,
    mut req: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    state.record(&req);
    if mode == Mode::Grpc {
        return Ok(grpc(&state, req).await);
    }
    if mode == Mode::WebSocket
        && let Some(accept) = websocket_accept(req.headers())
    {
        let upgrade = hyper::upgrade::on(&mut req);
        spawn_until_stopped(&state.stop, async move {
            if let Ok(upgraded) = upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let (mut reader, mut writer) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
                let _ = writer.shutdown().await;
            }
        });
        let mut resp = state.response(StatusCode::SWITCHING_PROTOCOLS, empty());
        let headers = resp.headers_mut();
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
        return Ok(resp);
    }
    if req.method() == Method::POST && req.uri().path() == "/echo" {
        return Ok(state.response(StatusCode::OK, req.into_body().boxed()));
    }
    // Read the request fully so an HTTP/1.1 connection stays reusable.
    let _ = req.into_body().collect().await;
    Ok(state.response(StatusCode::OK, full(state.body.clone())))
}

async fn grpc(state: &State, req: Request<Incoming>) -> Response<TestBody> {
    let path = req.uri().path().to_owned();
    let request = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return grpc_trailers_only(state, "13", Some("unreadable request")),
    };
    let messages = grpc_decode(&request);
    let (frames, extra): (Vec<Bytes>, Option<(HeaderName, HeaderValue)>) = match path.as_str() {
        GRPC_UNARY => (messages.iter().map(|m| grpc_frame(m)).collect(), None),
        GRPC_STREAM => {
            let n = messages
                .first()
                .and_then(|m| m.first())
                .copied()
                .unwrap_or(0);
            let frames = (0..n).map(|i| grpc_frame(&[i])).collect();
            let done = (
                HeaderName::from_static("x-trailer"),
                HeaderValue::from_static("done"),
            );
            (frames, Some(done))
        }
        GRPC_FAIL => return grpc_trailers_only(state, "13", Some("boom")),
        _ => return grpc_trailers_only(state, "12", Some("unknown method")),
    };
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    if let Some((name, value)) = extra {
        trailers.insert(name, value);
    }
    let frames = frames
        .into_iter()
        .map(|f| Ok(Frame::data(f)))
        .chain(std::iter::once(Ok(Frame::trailers(trailers))));
    let body = StreamBody::new(stream::iter(frames)).boxed();
    let mut resp = state.response(StatusCode::OK, body);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    resp
}

fn grpc_trailers_only(
    state: &State,
    status: &'static str,
    message: Option<&'static str>,
) -> Response<TestBody> {
    let mut resp = state.response(StatusCode::OK, empty());
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from_static(status));
    if let Some(message) = message {
        headers.insert("grpc-message", HeaderValue::from_static(message));
    }
    resp
}

async fn tcp_echo(mut stream: TcpStream, name: String) {
    let (mut reader, mut writer) = stream.split();
    if writer
        .write_all(format!("{name}\n").as_bytes())
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::io::copy(&mut reader, &mut writer).await;
    let _ = writer.shutdown().await;
}

/// `Sec-WebSocket-Accept` for a WebSocket upgrade request, or `None` if it is not one.
fn websocket_accept(headers: &HeaderMap) -> Option<HeaderValue> {
    let wants_websocket = headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = headers.get(SEC_WEBSOCKET_KEY)?;
    if !wants_websocket {
        return None;
    }
    let mut input = key.as_bytes().to_vec();
    input.extend_from_slice(WEBSOCKET_GUID.as_bytes());
    HeaderValue::from_str(&base64(&sha1(&input))).ok()
}

fn full(data: Bytes) -> TestBody {
    Full::new(data).map_err(|never| match never {}).boxed()
}

fn empty() -> TestBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// SHA-1 (FIPS 180-4), needed only for the WebSocket handshake.
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xEFCD_AB89,
        0x98BA_DCFE,
        0x1032_5476,
        0xC3D2_E1F0,
    ];
    let mut msg = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (hv, v) in h.iter_mut().zip([a, b, c, d, e]) {
            *hv = hv.wrapping_add(v);
        }
    }
    let mut out = [0u8; 20];
    for (chunk, v) in out.chunks_exact_mut(4).zip(h) {
        chunk.copy_from_slice(&v.to_be_bytes());
    }
    out
}

/// Standard base64 with padding.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_accept_matches_rfc_6455_example() {
        let mut headers = HeaderMap::new();
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(
            SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        assert_eq!(
            websocket_accept(&headers).unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn sha1_and_base64_known_answers() {
        let hex = |d: [u8; 20]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(hex(sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(
            hex(sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        let long = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
        assert_eq!(hex(sha1(long)), "84983e441c3bd26ebaae4aa1f95129e5e54670f1");
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn grpc_frames_round_trip() {
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&grpc_frame(b"one"));
        wire.extend_from_slice(&grpc_frame(b""));
        wire.extend_from_slice(&grpc_frame(b"three"));
        wire.extend_from_slice(&[0, 0, 0]);
        assert_eq!(
            grpc_decode(&wire),
            vec![Bytes::from("one"), Bytes::new(), Bytes::from("three")]
        );
    }
}
