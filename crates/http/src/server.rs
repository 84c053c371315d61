//! Serving one downstream connection: protocol detection (HTTP/1.1, h2c, or opaque TCP), the
//! HTTP/1.1 server of our own or hyper's HTTP/2 server, and the L4 path for TCP.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::Either;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use outrider_config::{DEFAULT_IDLE_TIMEOUT, ListenerTlsMode, Protocol};
use outrider_tls::{ServerTls, TLS_HANDSHAKE_BYTE};
use outrider_transport::Gather;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::h1server::SplitIo;
use crate::idle::{Activity, Tracked};
use crate::proxy::{ConnInfo, Direction, ListenerCtx, ProxyService};
use crate::runtime::TcpDecision;

/// How long an egress connection to an unknown port may stay silent before it is treated as
/// opaque TCP (server-first protocols such as MySQL send nothing). Default is 1 s.
pub const DETECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Time allowed to receive a request head on HTTP/1.1 (and the first byte on a PERMISSIVE
/// listener). Envoy leaves `request_headers_timeout` disabled; a sidecar facing hostile clients
/// bounds it so a slow client cannot hold a connection open. Default is 60 s.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// HTTP/2 streams per downstream connection. Default is 1024.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Most request-head fields on HTTP/1.1; more is answered 431. Default is 100.
pub const MAX_HEADERS: usize = 100;
/// Largest request head (HTTP/1.1 read buffer) and HTTP/2 header list; more is answered 431.
/// Default is 60 KiB.
pub const MAX_HEADER_BYTES: usize = 60 * 1024;
/// HTTP/2 streams the client may reset before the server accepts them, before the connection
/// is closed with GOAWAY (rapid-reset defence). Default is 20.
pub const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// HTTP/2 streams the server may reset for protocol errors before the connection is closed
/// with GOAWAY. Default is 1024.
pub const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// Per-listener limits applied to every connection [`serve_connection`] serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    /// Time a client has to send a complete HTTP/1.1 request head: on a new connection counted
    /// from the accept (so a silent client is closed too), on a keep-alive connection from the
    /// first byte of the next head (the wait before it is the listener's idle timeout); past
    /// it the connection is closed without an answer. Default is [`HEADER_READ_TIMEOUT`]
    /// (60 s).
    pub header_read_timeout: Duration,
    /// HTTP/2 streams a client may have open at once on one connection; streams past it are
    /// refused (`RST_STREAM REFUSED_STREAM`). Default is [`MAX_CONCURRENT_STREAMS`] (1024).
    pub max_concurrent_streams: u32,
}

/// What the first bytes of a connection say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http,
    Opaque,
}

/// Tells HTTP/1.x and the HTTP/2 preface apart from anything else, from the first bytes.
pub fn detect(prefix: &[u8]) -> Detected {
    const METHODS: [&[u8]; 10] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"HEAD ",
        b"DELETE ",
        b"OPTIONS ",
        b"PATCH ",
        b"TRACE ",
        b"CONNECT ",
        b"PRI * HTTP/2",
    ];
    let http = METHODS.iter().any(|m| {
        let n = m.len().min(prefix.len());
        n > 0 && prefix[..n] == m[..n]
    });
    if http {
        Detected::Http
    } else {
        Detected::Opaque
    }
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            header_read_timeout: HEADER_READ_TIMEOUT,
            max_concurrent_streams: MAX_CONCURRENT_STREAMS,
        }
    }
}

async fn peek_detect(stream: &TcpStream) -> Detected {
    let mut buf = [0u8; 16];
    match tokio::time::timeout(DETECT_TIMEOUT, stream.peek(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => detect(&buf[..n]),
        _ => Detected::Opaque,
    }
}

/// Serves one accepted connection until it ends or `shutdown` fires (then drains gracefully),
/// within the limits of `opts`.
#[expect(
    clippy::manual_async_fn,
    reason = "an async block does not keep a second copy of its arguments in the future"
)]
pub fn serve_connection(
    stream: TcpStream,
    ctx: Arc<ListenerCtx>,
    conn: ConnInfo,
    opts: ServeOptions,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send {
    async move {
        // Heads are timed from here: the TLS handshake and protocol sniffing count too.
        let accepted = tokio::time::Instant::now();
        let runtime = ctx.runtime.load_full();
        let orig_port = conn.orig_dst.map(|a| a.port());
        let tls = match listener_tls(&runtime, ctx.direction, orig_port) {
            Ok(tls) => tls,
            Err(err) => {
                // Fail closed: a listener that should speak TLS never falls back to plaintext.
                tracing::warn!(peer = %conn.peer, error = %err, "listener TLS unusable: closing connection");
                return;
            }
        };
        if let Some(tls) = tls {
            let terminate = match tls.mode() {
                ListenerTlsMode::Strict => true,
                ListenerTlsMode::Permissive => {
                    first_byte(&stream, opts.header_read_timeout).await == Some(TLS_HANDSHAKE_BYTE)
                }
            };
            if terminate {
                drop(runtime);
                // Boxed: the TLS path's future (handshake, TLS stream, its own HTTP server) is
                // twice the plaintext one, and every connection's task would otherwise carry it.
                Box::pin(serve_tls(stream, &tls, ctx, conn, opts, shutdown, accepted)).await;
                return;
            }
        }
        let l4 = match ctx.direction {
            Direction::Ingress => {
                if runtime.is_transparent() {
                    peek_detect(&stream).await == Detected::Opaque
                } else {
                    runtime
                        .ingress_listener(orig_port)
                        .and_then(|i| runtime.snapshot().listeners.get(i))
                        .is_some_and(|l| l.protocol == Protocol::Tcp)
                }
            }
            Direction::Egress => match orig_port {
                Some(port) if runtime.is_tcp_port(port) => true,
                Some(_) => peek_detect(&stream).await == Detected::Opaque,
                None => false,
            },
        };
        drop(runtime);
        if l4 {
            // Boxed: the splice's future is large, and most connections are HTTP.
            Box::pin(serve_tcp(stream, &ctx, conn)).await;
        } else {
            // A client that never sends a byte is held to the header-read deadline; the first
            // bytes tell HTTP/2 (its connection preface) from HTTP/1.1.
            let h2 = match sniff_h2(&stream, opts.header_read_timeout).await {
                Some(h2) => h2,
                None => {
                    tracing::debug!(peer = %conn.peer, "no request bytes before the header-read timeout: closing");
                    return;
                }
            };
            serve_http(stream, ctx, conn, opts, shutdown, h2, accepted).await;
        }
    }
}

/// The TLS settings of the ingress listener a connection arrived on, if it terminates TLS.
fn listener_tls(
    runtime: &crate::runtime::Runtime,
    direction: Direction,
    orig_port: Option<u16>,
) -> Result<Option<Arc<ServerTls>>, outrider_tls::TlsError> {
    if direction != Direction::Ingress || runtime.is_transparent() {
        return Ok(None);
    }
    match runtime
        .ingress_listener(orig_port)
        .and_then(|i| runtime.snapshot().listeners.get(i))
        .and_then(|l| l.tls.as_ref())
    {
        Some(spec) => outrider_tls::server_tls(spec).map(Some),
        None => Ok(None),
    }
}

/// Whether the client opens with the HTTP/2 connection preface (h2c with prior knowledge),
/// from its first bytes; `None` if it sends none within `wait`. A first read shorter than
/// `PRI ` that could still be the preface waits a little for more ([`PREFACE_WAIT`]); a client
/// that stops there (or half-closes: a peek cannot see the end of the stream behind unread
/// bytes) is served as HTTP/1.1, whose parser then answers or closes.
async fn sniff_h2(stream: &TcpStream, wait: Duration) -> Option<bool> {
    const PREFACE: &[u8] = b"PRI ";
    let first = async {
        let mut buf = [0u8; 4];
        let n = stream.peek(&mut buf).await.ok()?;
        (n > 0).then_some((buf, n))
    };
    let (mut buf, mut n) = tokio::time::timeout(wait, first).await.ok().flatten()?;
    let mut waited = Duration::ZERO;
    while n < PREFACE.len() && buf[..n] == PREFACE[..n] && waited < PREFACE_WAIT {
        // peek returns at once while the bytes are unread: poll for the next segment.
        tokio::time::sleep(Duration::from_millis(1)).await;
        waited += Duration::from_millis(1);
        n = stream.peek(&mut buf).await.ok()?;
    }
    Some(n >= PREFACE.len() && buf[..] == PREFACE[..])
}

/// How long a connection whose first bytes could still be the start of the HTTP/2 preface
/// waits for the rest before it is taken as HTTP/1.1. Default is 20 ms.
const PREFACE_WAIT: Duration = Duration::from_millis(20);

/// The first byte the client sends, waiting at most `wait`.
async fn first_byte(stream: &TcpStream, wait: Duration) -> Option<u8> {
    let mut buf = [0u8; 1];
    match tokio::time::timeout(wait, stream.peek(&mut buf)).await {
        Ok(Ok(1)) => Some(buf[0]),
        _ => None,
    }
}

/// Terminates TLS, then serves the decrypted stream as HTTP, or as TCP on a TCP listener.
async fn serve_tls(
    stream: TcpStream,
    tls: &ServerTls,
    ctx: Arc<ListenerCtx>,
    conn: ConnInfo,
    opts: ServeOptions,
    shutdown: CancellationToken,
    accepted: tokio::time::Instant,
) {
    let stream = match tls.accept(stream).await {
        Ok(s) => s,
        Err(err) => {
            tracing::debug!(peer = %conn.peer, error = %err, "downstream TLS handshake failed");
            return;
        }
    };
    let l4 = {
        let runtime = ctx.runtime.load();
        runtime
            .ingress_listener(conn.orig_dst.map(|a| a.port()))
            .and_then(|i| runtime.snapshot().listeners.get(i))
            .is_some_and(|l| l.protocol == Protocol::Tcp)
    };
    if l4 {
        serve_tcp(stream, &ctx, conn).await;
    } else {
        // ALPN says which HTTP the client speaks (both are offered).
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        serve_http(stream, ctx, conn, opts, shutdown, h2, accepted).await;
    }
}

/// Serves HTTP on a connection: hyper's HTTP/2 server, or the HTTP/1.1 server of our own.
/// Set up before the returned future, which then keeps only what serving needs.
fn serve_http<S>(
    stream: S,
    ctx: Arc<ListenerCtx>,
    conn: ConnInfo,
    opts: ServeOptions,
    shutdown: CancellationToken,
    h2: bool,
    accepted: tokio::time::Instant,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + SplitIo + Unpin + Send + 'static,
{
    ctx.stats.cx_total.increment(1);
    ctx.stats.cx_active.increment(1.0);
    let idle = idle_timeout(&ctx, conn);
    let served = if h2 {
        // Boxed: hyper's HTTP/2 connection is large, and most connections are HTTP/1.1.
        Either::Left(Box::pin(serve_h2(
            stream,
            ctx.clone(),
            conn,
            opts,
            shutdown,
            idle,
        )))
    } else {
        let service = ProxyService::new(ctx.clone(), conn);
        Either::Right(crate::h1server::serve(
            stream, accepted, service, opts, idle, shutdown,
        ))
    };
    served.map(move |()| ctx.stats.cx_active.decrement(1.0))
}

/// HTTP/2 through hyper's server, with the idle timeout watched from the outside.
async fn serve_h2<S>(
    stream: S,
    ctx: Arc<ListenerCtx>,
    conn: ConnInfo,
    opts: ServeOptions,
    shutdown: CancellationToken,
    idle: Option<Duration>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new();
    let service = ProxyService::new(ctx.clone(), conn).with_activity(activity.clone());
    let stream = Tracked::new(stream, activity.clone());
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(opts.max_concurrent_streams)
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESET_STREAMS)
        .adaptive_window(true);
    let connection = builder.serve_connection(TokioIo::new(Gather::new(stream)), service);
    tokio::pin!(connection);
    tokio::select! {
        res = connection.as_mut() => {
            if let Err(err) = res {
                tracing::debug!(peer = %conn.peer, error = %err, "downstream connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
        _ = idle_wait(&activity, idle) => {
            tracing::debug!(peer = %conn.peer, "downstream connection idle: closing");
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// The listener's idle timeout on ingress; App Mesh's default (300 s) on egress, where a
/// connection is not tied to one route.
fn idle_timeout(ctx: &ListenerCtx, conn: ConnInfo) -> Option<Duration> {
    let runtime = ctx.runtime.load();
    if runtime.is_transparent() {
        return Some(DEFAULT_IDLE_TIMEOUT);
    }
    match ctx.direction {
        Direction::Ingress => runtime
            .ingress_listener(conn.orig_dst.map(|a| a.port()))
            .and_then(|i| runtime.snapshot().listeners.get(i))
            .map_or(Some(DEFAULT_IDLE_TIMEOUT), |l| l.timeouts.idle),
        Direction::Egress => Some(DEFAULT_IDLE_TIMEOUT),
    }
}

async fn idle_wait(activity: &Activity, idle: Option<Duration>) {
    match idle {
        Some(idle) => activity.idle_for(idle).await,
        None => std::future::pending().await,
    }
}

/// A downstream stream the L4 path can splice to an upstream socket.
trait L4Stream: Send {
    fn proxy_to(
        self,
        upstream: TcpStream,
        idle: Option<Duration>,
    ) -> impl Future<Output = std::io::Result<(u64, u64)>> + Send;
}

impl L4Stream for TcpStream {
    /// Plain TCP keeps reset propagation (zero linger on error).
    fn proxy_to(
        self,
        upstream: TcpStream,
        idle: Option<Duration>,
    ) -> impl Future<Output = std::io::Result<(u64, u64)>> + Send {
        outrider_transport::proxy(self, upstream, idle)
    }
}

impl L4Stream for outrider_tls::ServerStream<TcpStream> {
    fn proxy_to(
        self,
        upstream: TcpStream,
        idle: Option<Duration>,
    ) -> impl Future<Output = std::io::Result<(u64, u64)>> + Send {
        outrider_transport::proxy_io(self, upstream, idle)
    }
}

async fn serve_tcp<S: L4Stream>(stream: S, ctx: &ListenerCtx, conn: ConnInfo) {
    let runtime = ctx.runtime.load_full();
    let orig_port = conn.orig_dst.map(|a| a.port());
    let mut permit = None;
    let log = runtime.access_log().cloned();
    let start_wall = std::time::SystemTime::now();
    let start = std::time::Instant::now();
    let mut cluster = crate::runtime::PASSTHROUGH_CLUSTER.to_string();
    let (target, idle) = match ctx.direction {
        Direction::Ingress => {
            // The listener's `connectionPool.tcp.maxConnections`: overflow closes at once.
            if let Some(local) = runtime
                .ingress_listener(orig_port)
                .and_then(|i| runtime.locals().get(i))
                && let Some(limiter) = &local.limiter
            {
                match limiter.try_acquire() {
                    Ok(p) => permit = Some(p),
                    Err(_) => {
                        local.extra.cx_overflow.increment(1);
                        return;
                    }
                }
            }
            let port = match runtime
                .ingress_listener(orig_port)
                .and_then(|i| runtime.snapshot().listeners.get(i))
            {
                Some(l) => l.port,
                None => orig_port.unwrap_or(conn.local.port()),
            };
            let idle = runtime
                .ingress_listener(orig_port)
                .and_then(|i| runtime.snapshot().listeners.get(i))
                .and_then(|l| l.timeouts.idle);
            if let Some(local) = runtime
                .ingress_listener(orig_port)
                .and_then(|i| runtime.locals().get(i))
            {
                cluster = local.name().to_string();
            }
            (std::net::SocketAddr::from(([127, 0, 0, 1], port)), idle)
        }
        Direction::Egress => match runtime.route_tcp(conn.orig_dst) {
            TcpDecision::Cluster { upstream, idle } => match upstream.balancer.pick() {
                Some(ep) => {
                    cluster = upstream.name().to_string();
                    (ep.addr(), idle)
                }
                None => return,
            },
            TcpDecision::Passthrough(addr) => (addr, None),
            TcpDecision::Deny => return,
        },
    };
    if outrider_transport::is_self(target, &ctx.own_addrs) {
        return;
    }
    drop(runtime);
    ctx.stats.tcp_cx_total.increment(1);
    let upstream = match outrider_transport::connect(
        target,
        outrider_transport::DEFAULT_CONNECT_TIMEOUT,
    )
    .await
    {
        Ok(s) => s,
        Err(err) => {
            tracing::debug!(%target, error = %err, "tcp upstream connect failed");
            if let Some(log) = &log {
                let local = conn.orig_dst.unwrap_or(conn.local);
                log.log_tcp(
                    start_wall,
                    start.elapsed(),
                    0,
                    0,
                    Some(target),
                    &cluster,
                    conn.peer,
                    local,
                    "UF",
                    conn.id,
                );
            }
            return;
        }
    };
    let _permit = permit;
    let (sent, received) = match stream.proxy_to(upstream, idle).await {
        Ok((sent, received)) => (sent, received),
        Err(err) => {
            tracing::debug!(%target, error = %err, "tcp proxy ended with an error");
            (0, 0)
        }
    };
    ctx.stats.tcp_bytes_received.increment(sent);
    ctx.stats.tcp_bytes_sent.increment(received);
    if let Some(log) = &log {
        let local = conn.orig_dst.unwrap_or(conn.local);
        log.log_tcp(
            start_wall,
            start.elapsed(),
            sent,
            received,
            Some(target),
            &cluster,
            conn.peer,
            local,
            "",
            conn.id,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_http() {
        assert_eq!(detect(b"GET / HTTP/1.1\r\n"), Detected::Http);
        assert_eq!(detect(b"PRI * HTTP/2.0\r\n"), Detected::Http);
        assert_eq!(detect(b"PO"), Detected::Http);
        assert_eq!(detect(b"\x16\x03\x01"), Detected::Opaque);
        assert_eq!(detect(b"SSH-2.0"), Detected::Opaque);
        assert_eq!(detect(b""), Detected::Opaque);
    }
}
