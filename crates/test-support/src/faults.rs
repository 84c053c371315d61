//! Fault-injecting upstreams for resilience tests: an HTTP/1.1 + h2c server whose behaviour
//! (fail the first N, fail with a probability, delay, reset mid-response, hang, gRPC errors,
//! health answers) can be changed while it runs, and a port that refuses connections.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Path of the gRPC health method the server answers.
pub const GRPC_HEALTH_PATH: &str = "/grpc.health.v1.Health/Check";

/// What the server does, changeable at run time. All fields are atomics.
#[derive(Debug, Default)]
pub struct Faults {
    /// Answer the first N requests with `fail_status`.
    pub fail_first: AtomicU64,
    /// Answer this many per mille of requests with `fail_status` (random).
    pub fail_permille: AtomicU32,
    /// Answer exactly this many tenths of requests with `fail_status`, spread evenly and never
    /// two in a row (request n fails when `(n+1)*k/10 > n*k/10`, for k ≤ 5): deterministic, so a
    /// test of retries does not depend on luck.
    pub fail_spread_tenths: AtomicU32,
    /// Status of failures; 0 means 503.
    pub fail_status: AtomicU32,
    /// Wait this long before answering.
    pub delay_ms: AtomicU64,
    /// Never answer (the request hangs until the client gives up).
    pub hang: AtomicBool,
    /// Send the head and part of the body, then break the connection.
    pub reset_mid_response: AtomicBool,
    /// Answer gRPC requests with this grpc-status (0 = OK).
    pub grpc_status: AtomicU32,
    /// Answer health checks (any path, and gRPC health) as unhealthy.
    pub unhealthy: AtomicBool,
}

/// A running fault-injecting upstream.
pub struct FaultServer {
    addr: SocketAddr,
    faults: Arc<Faults>,
    hits: Arc<AtomicU64>,
    closed: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

type Body = BoxBody<Bytes, std::io::Error>;

impl FaultServer {
    /// Binds 127.0.0.1:0 and serves HTTP/1.1 and h2c, answering 200 with `x-served-by: name`.
    pub async fn start(name: &str) -> std::io::Result<FaultServer> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), name).await
    }

    /// [`FaultServer::start`] on a chosen address (e.g. 127.0.0.2 with another server's port,
    /// so two endpoints share a port as a DNS name's addresses do).
    pub async fn start_on(addr: SocketAddr, name: &str) -> std::io::Result<FaultServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let faults = Arc::new(Faults::default());
        let hits = Arc::new(AtomicU64::new(0));
        let closed = Arc::new(AtomicU64::new(0));
        let name = HeaderValue::from_str(name).unwrap_or(HeaderValue::from_static("fault"));
        let (f, h, c) = (faults.clone(), hits.clone(), closed.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (f, h, c, name) = (f.clone(), h.clone(), c.clone(), name.clone());
                let svc = service_fn(move |req| answer(req, f.clone(), h.clone(), name.clone()));
                conns.spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                    c.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Ok(FaultServer {
            addr,
            faults,
            hits,
            closed,
            task,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The live fault switches.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Requests received so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    /// Connections that ended (closed by either side) so far.
    pub fn closed_connections(&self) -> u64 {
        self.closed.load(Ordering::SeqCst)
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A port on 127.0.0.1 that refuses connections (bound, then released).
pub async fn refusing_addr() -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    l.local_addr()
}

fn full(b: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(b.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

async fn answer(
    req: Request<Incoming>,
    f: Arc<Faults>,
    hits: Arc<AtomicU64>,
    name: HeaderValue,
) -> Result<Response<Body>, Infallible> {
    let n = hits.fetch_add(1, Ordering::SeqCst);
    let grpc = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let path = req.uri().path().to_owned();
    let _ = req.into_body().collect().await;
    let delay = f.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if f.hang.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    let unhealthy = f.unhealthy.load(Ordering::SeqCst);
    if path == GRPC_HEALTH_PATH {
        let status = if unhealthy { 2 } else { 1 };
        return Ok(grpc_response(
            &name,
            0,
            Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]),
        ));
    }
    let fail_first = n < f.fail_first.load(Ordering::SeqCst);
    let permille = f.fail_permille.load(Ordering::SeqCst);
    let random_fail = permille > 0 && fastrand_permille() < permille;
    let k = u64::from(f.fail_spread_tenths.load(Ordering::SeqCst).min(5));
    let spread_fail = k > 0 && (n + 1) * k / 10 > n * k / 10;
    if unhealthy || fail_first || random_fail || spread_fail {
        let status = match f.fail_status.load(Ordering::SeqCst) {
            0 => StatusCode::SERVICE_UNAVAILABLE,
            s => StatusCode::from_u16(s as u16).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
        };
        let mut resp = Response::new(full("fault"));
        *resp.status_mut() = status;
        resp.headers_mut().insert("x-served-by", name);
        return Ok(resp);
    }
    if grpc {
        let code = f.grpc_status.load(Ordering::SeqCst);
        return Ok(grpc_response(
            &name,
            code,
            Bytes::from_static(&[0, 0, 0, 0, 0]),
        ));
    }
    if f.reset_mid_response.load(Ordering::SeqCst) {
        let frames = stream::iter(vec![
            Ok(Frame::data(Bytes::from_static(b"partial"))),
            Err(std::io::Error::other("reset mid-response")),
        ]);
        let mut resp = Response::new(StreamBody::new(frames).boxed());
        resp.headers_mut()
            .insert("content-length", HeaderValue::from_static("1000"));
        resp.headers_mut().insert("x-served-by", name);
        return Ok(resp);
    }
    let mut resp = Response::new(full(name.as_bytes().to_vec()));
    resp.headers_mut().insert("x-served-by", name);
    Ok(resp)
}

fn grpc_response(name: &HeaderValue, code: u32, message: Bytes) -> Response<Body> {
    let mut trailers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&code.to_string()) {
        trailers.insert("grpc-status", v);
    }
    let frames = stream::iter(vec![
        Ok(Frame::data(message)),
        Ok(Frame::trailers(trailers)),
    ]);
    let mut resp = Response::new(StreamBody::new(frames).boxed());
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    resp.headers_mut().insert("x-served-by", name.clone());
    resp
}

/// A random number in 0..1000 without a dependency: hash of a per-call counter and time.
fn fastrand_permille() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(SEQ.fetch_add(1, Ordering::Relaxed));
    (h.finish() % 1000) as u32
}
