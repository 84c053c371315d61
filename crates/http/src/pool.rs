//! Upstream connection pools: HTTP/1.1 keep-alive connections kept idle per endpoint, and one
//! multiplexed HTTP/2 connection per endpoint.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use outrider_telemetry::ClusterStats;
use outrider_tls::{ClientTls, MaybeTls};
use outrider_transport::{ConnectError, Gather};
use tokio::net::TcpStream;

use crate::body::{ReqBody, UpstreamBody};
use crate::h1client::{self, ExchangeErrorKind, H1Conn};

/// Idle HTTP/1.1 connections kept per endpoint. Default is 128.
pub const MAX_IDLE_PER_ENDPOINT: usize = 128;
/// An idle upstream connection older than this is closed instead of reused. Default is 60 s.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often idle HTTP/1.1 connections are checked while no request takes them: ones the
/// upstream closed or that outlived [`POOL_IDLE_TIMEOUT`] are closed. Default is 10 s.
pub const POOL_SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// Most pass-through destinations (ALLOW_ALL) kept with pools at once. Default is 1024.
const MAX_PASSTHROUGH_POOLS: usize = 1024;

/// Why an upstream exchange failed before a response head arrived.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// TCP connect failed or timed out (Envoy: UF, "connection failure").
    #[error("upstream connect error: {0}")]
    Connect(#[from] ConnectError),
    /// The HTTP handshake on a new connection failed.
    #[error("upstream handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
    /// The upstream refused the stream (HTTP/2 REFUSED_STREAM): it was not processed.
    #[error("upstream refused the stream: {0}")]
    Refused(#[source] hyper::Error),
    /// The connection or stream broke after the request was (maybe) sent.
    #[error("upstream reset before response headers: {0}")]
    Reset(#[source] hyper::Error),
    /// An HTTP/1.1 exchange failed before a usable response head: the connection broke or
    /// closed, or the upstream's answer was not valid HTTP/1.1.
    #[error("upstream reset before response headers: {0}")]
    Http1(#[source] ExchangeErrorKind),
}

impl SendError {
    /// True when the request certainly did not reach the application.
    pub fn is_connect_failure(&self) -> bool {
        matches!(self, SendError::Connect(_) | SendError::Handshake(_))
    }

    /// True for a connect timeout.
    pub fn is_connect_timeout(&self) -> bool {
        matches!(self, SendError::Connect(e) if e.is_timeout())
    }
}

/// How connections to a cluster's endpoints are secured.
#[derive(Debug, Clone, Default)]
pub enum Origination {
    /// Plaintext (h2c or HTTP/1.1). The default.
    #[default]
    Plain,
    /// TLS from the cluster's client policy.
    Tls(Arc<ClientTls>),
    /// TLS is required but its files could not be used: every connect fails rather than
    /// falling back to plaintext.
    Broken(Arc<str>),
}

/// The origination of a cluster, shared by its endpoint pools and swapped on reload.
pub(crate) type SharedOrigination = Arc<ArcSwap<Origination>>;

struct Idle {
    conn: H1Conn,
    since: Instant,
}

/// Connections to one endpoint.
pub struct EndpointPool {
    addr: SocketAddr,
    idle: Mutex<Vec<Idle>>,
    h2: ArcSwapOption<http2::SendRequest<ReqBody>>,
    h2_dial: tokio::sync::Mutex<()>,
    stats: ClusterStats,
    origination: SharedOrigination,
}

impl EndpointPool {
    fn new(addr: SocketAddr, stats: ClusterStats, origination: SharedOrigination) -> Self {
        EndpointPool {
            addr,
            idle: Mutex::new(Vec::new()),
            h2: ArcSwapOption::empty(),
            h2_dial: tokio::sync::Mutex::new(()),
            stats,
            origination,
        }
    }

    /// The endpoint address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Idle HTTP/1.1 connections right now (for `/clusters`).
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// Keeps an HTTP/1.1 connection whose last response was read to the end, for the next
    /// request to this endpoint.
    pub(crate) fn put_idle(&self, conn: H1Conn) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let now = Instant::now();
        // The stack is pushed and popped at the back, so the oldest entries are at the front:
        // only those can have expired. Checking the front keeps a put O(1) in the common case.
        let expired = idle
            .iter()
            .take_while(|c| now.duration_since(c.since) >= POOL_IDLE_TIMEOUT)
            .count();
        if expired > 0 {
            idle.drain(..expired);
        }
        if idle.len() < MAX_IDLE_PER_ENDPOINT {
            idle.push(Idle { conn, since: now });
        }
    }

    /// Closes the idle connections the upstream closed (they would otherwise sit in CLOSE_WAIT
    /// until the next request to this endpoint) and those past [`POOL_IDLE_TIMEOUT`].
    fn sweep_idle(&self) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let now = Instant::now();
        idle.retain_mut(|c| {
            now.duration_since(c.since) < POOL_IDLE_TIMEOUT && c.conn.is_reusable()
        });
    }

    /// The most recently used idle connection that is still open and not expired at `now`
    /// (the caller's clock read).
    fn take_idle(&self, now: Instant) -> Option<H1Conn> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(mut c) = idle.pop() {
            if now.duration_since(c.since) < POOL_IDLE_TIMEOUT && c.conn.is_reusable() {
                return Some(c.conn);
            }
        }
        None
    }

    /// Sends one request over HTTP/1.1 or HTTP/2 (h2c). Also says whether the request waited
    /// for a new connection. An HTTP/1.1 connection goes back to the pool once the response
    /// body is read to the end.
    ///
    /// HTTP/2 takes the request out of `req`; HTTP/1.1 leaves its head there (and a body that
    /// does not stream), so the caller can send it again. `now` is the caller's reading of the
    /// clock, against which idle connections are aged.
    pub(crate) fn send(
        self: &Arc<Self>,
        h2: bool,
        req: &mut Request<ReqBody>,
        connect_timeout: Duration,
        now: Instant,
    ) -> impl Future<Output = Result<(Response<UpstreamBody>, bool), SendError>> {
        use futures_util::TryFutureExt as _;
        use futures_util::future::Either;

        // Either, not an async block: the request is held only by the protocol's own future.
        if h2 {
            let req = std::mem::replace(req, Request::new(ReqBody::Empty));
            Either::Left(
                self.send_h2(req, connect_timeout)
                    .map_ok(|r| (r.map(UpstreamBody::H2), false)),
            )
        } else {
            Either::Right(self.send_h1(req, connect_timeout, now))
        }
    }

    #[expect(
        clippy::manual_async_fn,
        reason = "an async block does not keep a second copy of its arguments in the future"
    )]
    fn send_h1(
        self: &Arc<Self>,
        req: &mut Request<ReqBody>,
        connect_timeout: Duration,
        now: Instant,
    ) -> impl Future<Output = Result<(Response<UpstreamBody>, bool), SendError>> {
        async move {
            // Dialing is the rare path and its future (connect, TLS) is large: boxed so that
            // every request reusing a pooled connection does not carry it.
            let (mut conn, mut dialed) = match self.take_idle(now) {
                Some(conn) => (conn, false),
                None => (Box::pin(self.dial_h1(connect_timeout)).await?, true),
            };
            // An idempotent request that can be sent again (its body is not streaming) gets a
            // new connection when a reused one turns out closed before any answer: the
            // upstream closed it while idle, as the request was on its way (RFC 9110 9.2.2).
            let resend = !matches!(req.body(), ReqBody::Stream(_)) && idempotent(req.method());
            loop {
                match h1client::exchange(&mut conn, req).await {
                    Ok((head, upload)) => {
                        let resp = h1client::response(conn, head, upload, self);
                        return Ok((resp.map(UpstreamBody::H1), dialed));
                    }
                    Err(err) if !dialed && resend && err.nothing_received => {
                        drop(conn);
                        conn = Box::pin(self.dial_h1(connect_timeout)).await?;
                        dialed = true;
                    }
                    Err(err) => return Err(SendError::Http1(err.kind)),
                }
            }
        }
    }

    async fn dial_h1(&self, connect_timeout: Duration) -> Result<H1Conn, SendError> {
        let stream = self.connect(connect_timeout).await?;
        Ok(H1Conn::new(stream, self.stats.cx_active.clone()))
    }

    #[expect(
        clippy::manual_async_fn,
        reason = "an async block does not keep a second copy of its arguments in the future"
    )]
    fn send_h2(
        &self,
        req: Request<ReqBody>,
        connect_timeout: Duration,
    ) -> impl Future<Output = Result<Response<Incoming>, SendError>> {
        async move {
            let mut tx = self.h2_sender(connect_timeout).await?;
            match tx.send_request(req).await {
                Ok(resp) => Ok(resp),
                Err(err) => {
                    if is_refused(&err) {
                        Err(SendError::Refused(err))
                    } else {
                        Err(SendError::Reset(err))
                    }
                }
            }
        }
    }

    async fn h2_sender(
        &self,
        connect_timeout: Duration,
    ) -> Result<http2::SendRequest<ReqBody>, SendError> {
        if let Some(tx) = &*self.h2.load()
            && !tx.is_closed()
        {
            return Ok((**tx).clone());
        }
        // Rare and large (lock wait, connect, TLS, handshake): boxed, see `send_h1`.
        Box::pin(self.dial_h2(connect_timeout)).await
    }

    async fn dial_h2(
        &self,
        connect_timeout: Duration,
    ) -> Result<http2::SendRequest<ReqBody>, SendError> {
        // One dial at a time per endpoint: concurrent requests share the new connection.
        let _dialing = self.h2_dial.lock().await;
        if let Some(tx) = self.h2.load_full()
            && !tx.is_closed()
        {
            return Ok((*tx).clone());
        }
        let stream = self.connect(connect_timeout).await?;
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .adaptive_window(true)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(TokioIo::new(Gather::new(stream)))
            .await
            .map_err(SendError::Handshake)?;
        let stats = self.stats.clone();
        tokio::spawn(async move {
            let _ = conn.await;
            stats.cx_active.decrement(1.0);
        });
        self.h2.store(Some(Arc::new(tx.clone())));
        Ok(tx)
    }

    async fn connect(&self, connect_timeout: Duration) -> Result<MaybeTls<TcpStream>, SendError> {
        let origination = self.origination.load_full();
        if let Origination::Broken(reason) = &*origination {
            self.stats.cx_connect_fail.increment(1);
            return Err(SendError::Connect(ConnectError::Other(
                std::io::Error::other(reason.to_string()),
            )));
        }
        match outrider_transport::connect(self.addr, connect_timeout).await {
            Ok(stream) => {
                let stream = match &*origination {
                    Origination::Tls(tls) => match tls.connect(stream).await {
                        Ok(s) => MaybeTls::Client(Box::new(s)),
                        Err(err) => {
                            // A failed handshake is a connect failure (Envoy: UF).
                            tracing::debug!(addr = %self.addr, error = %err, "upstream TLS handshake failed");
                            self.stats.cx_connect_fail.increment(1);
                            return Err(SendError::Connect(ConnectError::Other(err)));
                        }
                    },
                    _ => MaybeTls::Plain(stream),
                };
                self.stats.cx_total.increment(1);
                self.stats.cx_active.increment(1.0);
                Ok(stream)
            }
            Err(err) => {
                self.stats.cx_connect_fail.increment(1);
                if err.is_timeout() {
                    self.stats.cx_connect_timeout.increment(1);
                }
                Err(SendError::Connect(err))
            }
        }
    }
}

/// Methods a client may send again without asking (RFC 9110 9.2.2).
pub(crate) fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn is_refused(err: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = e.source();
    }
    false
}

/// The pools of one cluster, keyed by endpoint. Reads take no lock; a new endpoint copies the
/// map once.
pub struct PoolSet {
    map: ArcSwap<HashMap<SocketAddr, Arc<EndpointPool>>>,
    write: Mutex<()>,
    stats: ClusterStats,
    bounded: bool,
    origination: SharedOrigination,
}

impl PoolSet {
    /// Pools for a cluster's endpoints.
    pub fn new(stats: ClusterStats) -> Self {
        PoolSet {
            map: ArcSwap::from_pointee(HashMap::new()),
            write: Mutex::new(()),
            stats,
            bounded: false,
            origination: SharedOrigination::default(),
        }
    }

    /// Pools for pass-through destinations, with a bounded number of entries.
    pub fn passthrough(stats: ClusterStats) -> Self {
        PoolSet {
            bounded: true,
            ..PoolSet::new(stats)
        }
    }

    /// The pool of `addr`, created on first use.
    pub fn get(&self, addr: SocketAddr) -> Arc<EndpointPool> {
        if let Some(p) = self.map.load().get(&addr) {
            return p.clone();
        }
        let _guard = self.write.lock();
        let current = self.map.load_full();
        if let Some(p) = current.get(&addr) {
            return p.clone();
        }
        let mut next = if self.bounded && current.len() >= MAX_PASSTHROUGH_POOLS {
            HashMap::new()
        } else {
            (*current).clone()
        };
        let pool = Arc::new(EndpointPool::new(
            addr,
            self.stats.clone(),
            self.origination.clone(),
        ));
        next.insert(addr, pool.clone());
        self.map.store(Arc::new(next));
        pool
    }

    /// Drops the pools of endpoints that are gone (their idle connections close).
    pub fn retain(&self, addrs: &[SocketAddr]) {
        let _guard = self.write.lock();
        let current = self.map.load_full();
        if current.keys().all(|a| addrs.contains(a)) {
            return;
        }
        let next: HashMap<_, _> = current
            .iter()
            .filter(|(a, _)| addrs.contains(a))
            .map(|(a, p)| (*a, p.clone()))
            .collect();
        self.map.store(Arc::new(next));
    }

    /// Secures new connections as `origination` says. Pooled connections made under the
    /// previous setting are dropped so that none outlives a change of security.
    pub(crate) fn set_origination(&self, origination: Origination) {
        let _guard = self.write.lock();
        self.origination.store(Arc::new(origination));
        self.map.store(Arc::new(HashMap::new()));
    }

    /// How new connections are secured.
    pub(crate) fn origination(&self) -> Arc<Origination> {
        self.origination.load_full()
    }

    /// Closes idle connections that the upstream closed or that expired, in every pool.
    pub fn sweep_idle(&self) {
        for pool in self.map.load().values() {
            pool.sweep_idle();
        }
    }

    /// Every pool (for `/clusters`).
    pub fn pools(&self) -> Vec<Arc<EndpointPool>> {
        self.map.load().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use outrider_test_support::servers::TestServer;

    fn get() -> Request<ReqBody> {
        Request::builder()
            .uri("/")
            .header(http::header::HOST, "test")
            .body(ReqBody::Empty)
            .unwrap()
    }

    #[tokio::test]
    async fn sweeping_closes_idle_connections_the_upstream_closed() {
        // An upstream that answers one request with keep-alive, then closes the connection.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            drop(s);
            let _ = closed_tx.send(());
        });
        let pool = Arc::new(EndpointPool::new(
            addr,
            ClusterStats::new("pool-sweep-test"),
            SharedOrigination::default(),
        ));
        let (resp, _) = pool
            .send(false, &mut get(), Duration::from_secs(2), Instant::now())
            .await
            .unwrap();
        resp.into_body().collect().await.unwrap();
        assert_eq!(pool.idle_count(), 1);
        closed_rx.await.unwrap();
        // The FIN reaches the socket and then tokio's readiness, both asynchronously: bounded
        // retries instead of a fixed sleep.
        for _ in 0..200 {
            pool.sweep_idle();
            if pool.idle_count() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(pool.idle_count(), 0, "the closed connection left the pool");
    }

    #[tokio::test]
    async fn only_the_request_that_dialed_is_marked_dialed() {
        let server = TestServer::http("a");
        let pool = Arc::new(EndpointPool::new(
            server.addr(),
            ClusterStats::new("pool-test"),
            SharedOrigination::default(),
        ));
        for expect_dialed in [true, false, false] {
            let (resp, dialed) = pool
                .send(false, &mut get(), Duration::from_secs(2), Instant::now())
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.unwrap();
            assert_eq!(dialed, expect_dialed);
            assert_eq!(pool.idle_count(), 1, "the connection is back in the pool");
        }
    }
}
