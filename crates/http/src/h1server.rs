//! The HTTP/1.1 server for downstream connections.
//!
//! hyper's server keeps an 8 KiB read buffer and a write buffer for the whole life of a
//! connection, arms a boxed header-read timer for every request, and feeds request bodies
//! through a channel. Here a connection is a loop in its own task: read a request head, hand
//! the request to the proxy, write the response, repeat. The read buffer exists only while
//! bytes are in hand (an idle keep-alive connection holds none: the next head is read into the
//! stack and copied into a buffer of its own size), timers are armed only when a head arrives
//! in pieces or the connection waits for its next request, and a request body reads straight
//! from the socket as the proxy pulls it, then hands the read side back to the loop.
//!
//! Requests follow RFC 9112 framing; a request with both `Content-Length` and
//! `Transfer-Encoding`, a `Transfer-Encoding` whose last coding is not chunked, conflicting
//! lengths or more than one `Host` are refused with 400 and the connection is closed, as Envoy
//! does. Heads over [`MAX_HEADER_BYTES`] or with more than [`MAX_HEADERS`] fields get 431.

use std::future::{Future, poll_fn};
use std::io;
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use bytes::{Buf, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version, header};
use http_body::{Body, Frame, SizeHint};
use outrider_tls::ServerStream;
use outrider_transport::Gather;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::body::{DownBody, RespBody};
use crate::h1codec::{
    Decoder, FieldSpan, Framing, H1BodyError, READ_SIZE, Sender, chunked_last, connection_tokens,
    field_spans, parse_content_length, push_decimal, push_field,
};
use crate::headers::{FORWARDING_FIELDS, is_upgrade};
use crate::proxy::ProxyService;
use crate::server::{MAX_HEADER_BYTES, MAX_HEADERS, ServeOptions};

/// How long a response waits, once written, for the request body the proxy still holds to
/// come back whole before the connection is closed instead of reused.
const BODY_RETURN_WAIT: Duration = Duration::from_secs(1);
/// After a response that closes the connection, the client's unread bytes are read and
/// dropped for up to this long, so that closing with data unread does not reset the
/// connection and destroy the response on its way to the client.
const LINGER: Duration = Duration::from_secs(1);
/// ... and up to this many bytes.
const LINGER_BYTES: usize = 256 * 1024;

/// The read side of a downstream connection.
pub(crate) enum ReadIo {
    Tcp(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<ServerStream<TcpStream>>),
}

/// The write side of a downstream connection. Plain TCP goes through [`Gather`]: a response
/// head and a small body leave in one `send(2)` instead of a `writev(2)`, which costs about a
/// microsecond more in the kernel per call.
pub(crate) enum WriteIo {
    Tcp(Gather<OwnedWriteHalf>),
    Tls(tokio::io::WriteHalf<ServerStream<TcpStream>>),
}

/// A downstream stream the server can split into its two sides.
pub(crate) trait SplitIo {
    fn split_io(self) -> (ReadIo, WriteIo);
}

impl SplitIo for TcpStream {
    fn split_io(self) -> (ReadIo, WriteIo) {
        let (r, w) = self.into_split();
        (ReadIo::Tcp(r), WriteIo::Tcp(Gather::new(w)))
    }
}

impl SplitIo for ServerStream<TcpStream> {
    fn split_io(self) -> (ReadIo, WriteIo) {
        let (r, w) = tokio::io::split(self);
        (ReadIo::Tls(r), WriteIo::Tls(w))
    }
}

impl AsyncRead for ReadIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadIo::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            ReadIo::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteIo::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            WriteIo::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteIo::Tcp(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            WriteIo::Tls(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WriteIo::Tcp(w) => w.is_write_vectored(),
            WriteIo::Tls(w) => w.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteIo::Tcp(w) => Pin::new(w).poll_flush(cx),
            WriteIo::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteIo::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            WriteIo::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

/// The read side with the bytes read and not yet consumed.
pub(crate) struct ReadSide {
    io: ReadIo,
    buf: BytesMut,
}

impl ReadSide {
    /// Reads the start of a message while nothing is buffered: into the stack, then into a
    /// buffer of just that size, so that a connection waiting for its next request holds no
    /// buffer. With bytes in hand, reads on into the buffer.
    fn poll_fill_head(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if !self.buf.is_empty() {
            return fill(&mut self.io, &mut self.buf, cx);
        }
        let mut stack = [const { MaybeUninit::<u8>::uninit() }; READ_SIZE];
        let mut rb = ReadBuf::uninit(&mut stack);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
        let got = rb.filled();
        // A full read may have more behind it: leave room for the next one.
        let room = if got.len() == READ_SIZE { READ_SIZE } else { 0 };
        self.buf = BytesMut::with_capacity(got.len() + room);
        self.buf.extend_from_slice(got);
        Poll::Ready(Ok(got.len()))
    }
}

/// Reads more bytes from `io` into `buf`; `Ok(0)` at the end of the stream.
fn fill(io: &mut ReadIo, buf: &mut BytesMut, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_SIZE / 4 {
        buf.reserve(READ_SIZE);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// The read side coming back from a request body, and whether the body was read to its end
/// (only then can the connection carry another request).
type Returned = (ReadSide, bool);

/// A request body read from the downstream connection as the proxy pulls it. At its end the
/// read side goes back to the connection's loop, which can then read the next request; a body
/// dropped before its end gives it back unfinished (the connection then closes, after
/// draining what the client still sends), and a broken one does not give it back at all.
pub struct H1ReqBody {
    side: Option<ReadSide>,
    decoder: Decoder,
    back: Option<oneshot::Sender<Returned>>,
}

impl H1ReqBody {
    fn give_back(&mut self) {
        if let (Some(side), Some(back)) = (self.side.take(), self.back.take()) {
            let _ = back.send((side, self.decoder == Decoder::Done));
        }
    }
}

impl Drop for H1ReqBody {
    fn drop(&mut self) {
        self.give_back();
    }
}

impl std::fmt::Debug for H1ReqBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1ReqBody")
            .field("decoder", &self.decoder)
            .finish()
    }
}

impl Body for H1ReqBody {
    type Data = bytes::Bytes;
    type Error = H1BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, H1BodyError>>> {
        let this = self.get_mut();
        let Some(side) = this.side.as_mut() else {
            return Poll::Ready(None);
        };
        let ReadSide { io, buf } = side;
        let polled = this
            .decoder
            .poll_frame(buf, cx, |buf, cx| fill(io, buf, cx));
        match &polled {
            Poll::Ready(Some(Err(_))) => {
                this.side = None;
                this.back = None;
            }
            Poll::Ready(_) if this.decoder == Decoder::Done => this.give_back(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.decoder == Decoder::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// A downstream connection that switched protocols (a 101 answer to an upgrade request): the
/// bytes the client sent behind its request first, then the stream itself.
pub(crate) struct Upgraded {
    read: ReadSide,
    write: WriteIo,
}

impl AsyncRead for Upgraded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.read.buf.is_empty() {
            let n = this.read.buf.len().min(out.remaining());
            out.put_slice(&this.read.buf[..n]);
            this.read.buf.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.read.io).poll_read(cx, out)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().write).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().write).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().write).poll_shutdown(cx)
    }
}

/// Request extension on an upgrade request: the connection, once a 101 has been written.
#[derive(Clone)]
pub(crate) struct OnUpgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl OnUpgrade {
    /// The upgraded connection; an error if the response was not a 101 or the connection
    /// broke while it was written.
    pub(crate) async fn upgraded(self) -> Option<Upgraded> {
        let rx = self.0.lock().ok()?.take()?;
        rx.await.ok()
    }
}

/// How a request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqFraming {
    None,
    Length(u64),
    Chunked,
}

/// A parsed request head and what it says about the connection.
struct Head {
    req: Request<()>,
    framing: ReqFraming,
    keep_alive: bool,
    /// The client waits for `100 Continue` before it sends the body.
    expect_continue: bool,
    /// The client takes trailers (`TE: trailers`).
    trailers: bool,
}

/// Why a request head was refused: 400 or 431.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Bad(&'static str),
    TooLarge(&'static str),
}

/// Parses a request head at the front of `buf` and consumes it; `None` while incomplete.
fn parse_request(buf: &mut BytesMut) -> Result<Option<Head>, Refusal> {
    // Field positions, as offsets into the head, so the values can share the head's bytes
    // once it is split off the read buffer.
    let mut spans: [FieldSpan; MAX_HEADERS] = [(0, 0, 0, 0); MAX_HEADERS];
    let (len, method, path, minor, count) = {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let len = match req.parse_with_uninit_headers(buf, &mut fields) {
            // Checked here too, not only while incomplete: a large head that arrives in one
            // read is held to the same limit.
            Ok(httparse::Status::Complete(len)) if len > MAX_HEADER_BYTES => {
                return Err(Refusal::TooLarge("request head too large"));
            }
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Refusal::TooLarge("too many header fields"));
            }
            Err(_) => return Err(Refusal::Bad("malformed request head")),
        };
        field_spans(buf.as_ptr(), req.headers, &mut spans);
        let base = buf.as_ptr() as usize;
        let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
            .map_err(|_| Refusal::Bad("invalid method"))?;
        let path = req.path.map_or((0, 0), |p| {
            let start = p.as_ptr() as usize - base;
            (start, start + p.len())
        });
        (
            len,
            method,
            path,
            req.version.unwrap_or(1),
            req.headers.len(),
        )
    };
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(path.0..path.1))
        .map_err(|_| Refusal::Bad("invalid request target"))?;
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut headers = HeaderMap::with_capacity(count + FORWARDING_FIELDS);
    let mut content_length: Option<u64> = None;
    let mut has_te = false;
    let mut chunked = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut hosts = 0;
    let mut expect_continue = false;
    let mut trailers = false;
    for &(ns, ne, vs, ve) in &spans[..count] {
        let name = HeaderName::from_bytes(&head[ns as usize..ne as usize])
            .map_err(|_| Refusal::Bad("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize))
            .map_err(|_| Refusal::Bad("invalid header value"))?;
        if name == header::CONTENT_LENGTH {
            let n = parse_content_length(value.as_bytes())
                .ok_or(Refusal::Bad("invalid content-length"))?;
            if content_length.is_some_and(|c| c != n) {
                return Err(Refusal::Bad("conflicting content-length"));
            }
            content_length = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            has_te = true;
            chunked = chunked_last(value.as_bytes());
        } else if name == header::CONNECTION {
            let (c, k) = connection_tokens(value.as_bytes());
            close |= c;
            keep_alive_token |= k;
        } else if name == header::HOST {
            hosts += 1;
        } else if name == header::TE {
            trailers |= value
                .as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"));
        } else if name == header::EXPECT && value.as_bytes().eq_ignore_ascii_case(b"100-continue") {
            expect_continue = true;
            // Answered here (as Envoy does by default): the upstream gets the body without
            // having to answer the expectation.
            continue;
        }
        headers.append(name, value);
    }
    if hosts > 1 {
        return Err(Refusal::Bad("more than one host"));
    }
    let framing = if has_te {
        // Both framings in one request is a smuggling vector; a body framed by anything but
        // chunked last cannot be delimited; HTTP/1.0 has no transfer codings.
        if content_length.is_some() {
            return Err(Refusal::Bad("content-length with transfer-encoding"));
        }
        if !chunked || version == Version::HTTP_10 {
            return Err(Refusal::Bad("transfer-encoding not ending in chunked"));
        }
        ReqFraming::Chunked
    } else {
        match content_length {
            Some(0) | None => ReqFraming::None,
            Some(n) => ReqFraming::Length(n),
        }
    };
    let keep_alive = if version == Version::HTTP_10 {
        keep_alive_token && !close
    } else {
        !close
    };
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    Ok(Some(Head {
        req,
        expect_continue: expect_continue
            && version == Version::HTTP_11
            && framing != ReqFraming::None,
        framing,
        keep_alive,
        trailers,
    }))
}

/// What waiting for the next request head gave.
#[expect(
    clippy::large_enum_variant,
    reason = "returned once per request and taken apart at once; a box would allocate per request"
)]
enum Next {
    Head(Head),
    Refuse(Refusal),
    /// The client closed, timed out, or the connection idled or drains: close, unanswered.
    Close,
}

/// Timers of a connection, armed only when needed.
struct Timers {
    /// Bounds the wait for a next request; re-armed lazily (see [`Timers::poll_idle`]).
    idle: Option<Pin<Box<Sleep>>>,
    idle_after: Option<Duration>,
    header_read: Duration,
    /// The first head's deadline, counted from the accept; later heads get `header_read`
    /// from their first byte.
    first_head_by: Option<Instant>,
}

impl Timers {
    /// Ready once the connection has waited `idle_after` since `since`. The timer stays
    /// registered across requests at the deadline of an earlier wait; when it fires early
    /// it is moved to this wait's deadline, so a busy connection re-arms it about once per
    /// idle period rather than once per request.
    fn poll_idle(&mut self, since: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let Some(after) = self.idle_after else {
            return Poll::Pending;
        };
        // A timeout too large to add is no timeout.
        let Some(due) = since.checked_add(after) else {
            return Poll::Pending;
        };
        let timer = self
            .idle
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if Instant::now() >= due {
                return Poll::Ready(());
            }
            timer.as_mut().reset(due);
        }
    }
}

/// `at + after`, or a deadline decades away when that does not fit (a configured timeout too
/// large to add is no timeout, and must not panic).
fn later(at: Instant, after: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);
    at.checked_add(after.min(FAR))
        .unwrap_or_else(|| at + Duration::from_secs(3600))
}

/// Waits for and parses the next request head.
async fn next_head(
    side: &mut ReadSide,
    timers: &mut Timers,
    mut drain: Pin<&mut tokio_util::sync::WaitForCancellationFutureOwned>,
) -> Next {
    // Bytes at the front of the buffer already parsed without a complete head: a head is
    // parsed again only once a new line has ended, so a client that trickles its head a byte
    // at a time costs one parse per line, not one per read.
    let mut parsed = 0;
    let mut idle_since = None;
    let mut header_timer: Option<Pin<Box<Sleep>>> = None;
    poll_fn(|cx| {
        loop {
            let new_line = parsed == 0
                || memchr::memchr(b'\n', side.buf.get(parsed..).unwrap_or_default()).is_some();
            if !side.buf.is_empty() && new_line {
                match parse_request(&mut side.buf) {
                    Ok(Some(head)) => return Poll::Ready(Next::Head(head)),
                    Ok(None) => parsed = side.buf.len(),
                    Err(refusal) => return Poll::Ready(Next::Refuse(refusal)),
                }
            }
            // Checked on every read, not only when a line ends: a client that never sends a
            // line end must not grow the buffer without bound.
            if side.buf.len() > MAX_HEADER_BYTES {
                return Poll::Ready(Next::Refuse(Refusal::TooLarge("request head too large")));
            }
            let waiting = side.buf.is_empty();
            match side.poll_fill_head(cx) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Next::Close),
                Poll::Ready(Ok(_)) => continue,
                Poll::Pending => {}
            }
            if waiting {
                // Between requests: the idle timeout, and a drain closes at once.
                if drain.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Next::Close);
                }
                let since = *idle_since.get_or_insert_with(Instant::now);
                if timers.poll_idle(since, cx).is_ready() {
                    return Poll::Ready(Next::Close);
                }
            } else {
                // Part of a head is in: the rest has the header-read timeout.
                let by = timers
                    .first_head_by
                    .unwrap_or_else(|| later(Instant::now(), timers.header_read));
                let timer =
                    header_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(by)));
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Next::Close);
                }
            }
            return Poll::Pending;
        }
    })
    .await
}

/// What the connection does after an exchange.
enum After {
    /// Read the next request.
    Next,
    /// Close, gracefully.
    Close,
    /// Drop the connection as it is (it broke, or a response could not be sent whole).
    Abort,
    /// A 101 was written: hand the connection over.
    Upgrade(oneshot::Sender<Upgraded>),
}

/// Serves HTTP/1.1 on one downstream connection until it closes, idles past `idle`, or
/// `shutdown` fires (then the request in flight is answered with `connection: close`).
///
/// The future of a connection keeps only what lives across requests (the two sides, the
/// timers, the drain signal); each exchange runs in a box of its own that exists only while
/// its request is in flight, so an idle keep-alive connection stays small.
pub(crate) fn serve<S: SplitIo>(
    io: S,
    accepted: Instant,
    service: ProxyService,
    opts: ServeOptions,
    idle: Option<Duration>,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> {
    // Set up outside the async block, which then captures only what it keeps.
    let (r, mut w) = io.split_io();
    let mut side = Some(ReadSide {
        io: r,
        buf: BytesMut::new(),
    });
    let mut timers = Timers {
        idle: None,
        idle_after: idle,
        header_read: opts.header_read_timeout,
        first_head_by: Some(later(accepted, opts.header_read_timeout)),
    };
    let drain = shutdown.clone().cancelled_owned();
    async move {
        let mut drain = pin!(drain);
        loop {
            let Some(rs) = side.as_mut() else {
                return;
            };
            // An idle connection holds no buffer (an empty one may still share the allocation
            // of the last head).
            if rs.buf.is_empty() {
                rs.buf = BytesMut::new();
            }
            // No await in these arms: what the head parsed into takes no room in this future
            // while the request is in flight.
            let (handling, mut ex) = match next_head(rs, &mut timers, drain.as_mut()).await {
                Next::Head(head) => {
                    timers.first_head_by = None;
                    let (req, ex) = Exchange::start(head, &mut side);
                    // The proxy's future is large: boxed, it takes room only while a request
                    // is in flight (and is moved once, into its box).
                    (Box::pin(service.handle(req)), ex)
                }
                Next::Refuse(refusal) => {
                    Box::pin(refuse(refusal, side, w)).await;
                    return;
                }
                Next::Close => return,
            };
            if ex.expect_continue && w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
                return;
            }
            let resp = handling.await;
            // The sender too lives only while its response is written.
            let mut sender = Box::new(ex.respond(resp, &mut side, &shutdown));
            let sent = poll_fn(|cx| sender.poll_send(&mut w, cx)).await;
            // The response body completes its access-log entry when dropped: before the
            // connection moves on.
            drop(sender);
            let after = match sent {
                Ok(()) => ex.finish(&mut side).await,
                Err(err) => {
                    tracing::debug!(error = ?err, "response not sent whole: closing");
                    After::Abort
                }
            };
            match after {
                After::Next => {}
                After::Close => {
                    Box::pin(close(side, w)).await;
                    return;
                }
                After::Abort => return,
                After::Upgrade(tx) => {
                    if let Some(read) = side.take() {
                        let _ = tx.send(Upgraded { read, write: w });
                    }
                    return;
                }
            }
        }
    }
}

/// Answers a request head that cannot be served (400 or 431) and closes the connection.
async fn refuse(refusal: Refusal, side: Option<ReadSide>, mut w: WriteIo) {
    tracing::debug!(?refusal, "refused request head");
    let answer: &[u8] = match refusal {
        Refusal::Bad(_) => {
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        }
        Refusal::TooLarge(_) => {
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        }
    };
    if w.write_all(answer).await.is_ok() {
        close(side, w).await;
    }
}

/// One request on its way through the connection: what its head said that the response and
/// the connection's next step depend on.
struct Exchange {
    version: Version,
    head_request: bool,
    /// After a CONNECT the client may speak anything: it gets no second request.
    connect: bool,
    keep_alive: bool,
    trailers: bool,
    expect_continue: bool,
    /// Where the upgraded connection goes once a 101 is written.
    upgrade: Option<oneshot::Sender<Upgraded>>,
    /// Where the request body gives the read side back at its end.
    back: Option<oneshot::Receiver<Returned>>,
    /// The connection may carry another request after this one.
    reuse: bool,
    /// A 101 answered an upgrade request.
    switching: bool,
}

impl Exchange {
    /// The request for the proxy; a request with a body takes the read side with it.
    fn start(head: Head, side: &mut Option<ReadSide>) -> (Request<DownBody>, Exchange) {
        let Head {
            req,
            framing,
            keep_alive,
            expect_continue,
            trailers,
        } = head;
        let (mut parts, ()) = req.into_parts();
        let version = parts.version;
        let upgrade = if version == Version::HTTP_11 && is_upgrade(&parts.headers) {
            let (tx, rx) = oneshot::channel();
            parts
                .extensions
                .insert(OnUpgrade(Arc::new(Mutex::new(Some(rx)))));
            Some(tx)
        } else {
            None
        };
        let (body, back) = match framing {
            ReqFraming::None => (DownBody::Empty, None),
            ReqFraming::Length(_) | ReqFraming::Chunked => {
                let (tx, rx) = oneshot::channel();
                let decoder = match framing {
                    ReqFraming::Length(n) => Decoder::length(n),
                    _ => Decoder::ChunkSize,
                };
                let body = H1ReqBody {
                    side: side.take(),
                    decoder,
                    back: Some(tx),
                };
                (DownBody::H1(body), Some(rx))
            }
        };
        let ex = Exchange {
            version,
            head_request: parts.method == Method::HEAD,
            connect: parts.method == Method::CONNECT,
            keep_alive,
            trailers,
            expect_continue,
            upgrade,
            back,
            reuse: false,
            switching: false,
        };
        (Request::from_parts(parts, body), ex)
    }

    /// The sender of the response: its head encoded, its body to follow.
    fn respond(
        &mut self,
        resp: http::Response<RespBody>,
        side: &mut Option<ReadSide>,
        shutdown: &CancellationToken,
    ) -> Sender<RespBody> {
        self.reuse = self.keep_alive && !self.connect && !shutdown.is_cancelled();
        if let Some(rx) = self.back.as_mut() {
            match rx.try_recv() {
                Ok((s, complete)) => {
                    *side = Some(s);
                    self.back = None;
                    // A body the proxy did not read to its end (an early answer): the rest
                    // is still on its way, so the connection closes after this response.
                    self.reuse &= complete;
                }
                Err(oneshot::error::TryRecvError::Closed) => {
                    // The body broke: nothing will come back (and a finished receiver must
                    // not be polled again).
                    self.back = None;
                    self.reuse = false;
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
        }
        let (parts, body) = resp.into_parts();
        self.switching = parts.status == StatusCode::SWITCHING_PROTOCOLS && self.upgrade.is_some();
        let mut out = Vec::with_capacity(256);
        let framing = encode_response_head(
            &parts,
            &body,
            self.version,
            self.head_request,
            &mut self.reuse,
            &mut out,
        );
        let sender = Sender::new(body, framing, Some(out.into()));
        if self.trailers {
            sender
        } else {
            sender.without_trailers()
        }
    }

    /// The connection's next step once the response is written whole.
    async fn finish(self, side: &mut Option<ReadSide>) -> After {
        if self.switching
            && let Some(tx) = self.upgrade
        {
            return After::Upgrade(tx);
        }
        if side.is_none()
            && let Some(rx) = self.back
        {
            // The proxy still holds the request body: it comes back once read to its end, or
            // unfinished when dropped (and then the connection cannot go on). Boxed: rare.
            match Box::pin(tokio::time::timeout(BODY_RETURN_WAIT, rx)).await {
                Ok(Ok((s, true))) => *side = Some(s),
                Ok(Ok((s, false))) => {
                    *side = Some(s);
                    return After::Close;
                }
                _ => return After::Abort,
            }
        }
        if self.reuse {
            After::Next
        } else {
            After::Close
        }
    }
}

/// Ends a connection after its last response: the write side is shut (the client sees the
/// end), then what the client still sends is read and dropped for a while.
async fn close(side: Option<ReadSide>, mut w: WriteIo) {
    let _ = w.shutdown().await;
    let Some(mut side) = side else {
        return;
    };
    let _ = tokio::time::timeout(LINGER, async {
        let mut total = 0;
        while total < LINGER_BYTES {
            side.buf.clear();
            match poll_fn(|cx| fill(&mut side.io, &mut side.buf, cx)).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

/// Encodes the status line and fields of a response into `out` and chooses its framing;
/// clears `reuse` when the connection cannot carry another request after it.
fn encode_response_head(
    parts: &http::response::Parts,
    body: &RespBody,
    version: Version,
    head_request: bool,
    reuse: &mut bool,
    out: &mut Vec<u8>,
) -> Framing {
    let status = parts.status;
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    out.extend_from_slice(if version == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut declared = None;
    let mut has_date = false;
    // 1xx and 204 have no content, and so no length to state.
    let contentless = status.is_informational() || status == StatusCode::NO_CONTENT;
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH {
            if contentless {
                continue;
            }
            declared = parse_content_length(value.as_bytes());
        } else if name == header::DATE {
            has_date = true;
        } else if !switching && name == header::CONNECTION {
            // The connection's own fate is said below.
            *reuse &= !connection_tokens(value.as_bytes()).0;
            continue;
        } else if name == header::TRANSFER_ENCODING {
            // The framing is chosen here.
            continue;
        }
        push_field(out, name, value);
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        push_date(out);
        out.extend_from_slice(b"\r\n");
    }
    let no_body = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if switching {
        Framing::None
    } else if no_body {
        if head_request
            && declared.is_none()
            && let Some(n) = body.size_hint().exact().filter(|n| *n > 0)
        {
            push_length(out, n);
        }
        Framing::None
    } else if let Some(n) = declared {
        Framing::Length(n)
    } else if let Some(n) = body.size_hint().exact() {
        push_length(out, n);
        Framing::Length(n)
    } else if version == Version::HTTP_11 {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    } else {
        *reuse = false;
        Framing::UntilClose
    };
    if !switching {
        if !*reuse {
            out.extend_from_slice(b"connection: close\r\n");
        } else if version == Version::HTTP_10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    framing
}

fn push_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    push_decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

/// Appends the current time as an IMF-fixdate, formatted once per second per thread.
fn push_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const {
            std::cell::RefCell::new((u64::MAX, String::new()))
        };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            *d = (secs, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(d.1.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Response;

    fn parse(bytes: &[u8]) -> Result<Option<Head>, Refusal> {
        let mut buf = BytesMut::from(bytes);
        parse_request(&mut buf)
    }

    #[test]
    fn request_framing_follows_rfc_9112() {
        let h = parse(b"POST /a?b HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, ReqFraming::Length(5));
        assert!(h.keep_alive);
        assert_eq!(h.req.uri().path(), "/a");
        let h = parse(b"POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, ReqFraming::Chunked);
        let h = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        assert_eq!(h.framing, ReqFraming::None);
        let h = parse(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        let h = parse(b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = parse(b"PUT / HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.expect_continue);
        assert!(!h.req.headers().contains_key(header::EXPECT));
        assert!(parse(b"GET / HTTP/1.1\r\nhost: a").unwrap().is_none());
    }

    #[test]
    fn bad_requests_are_refused() {
        for bad in [
            &b"POST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
            b"POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: +1\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nbad header: x\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET /\x7f HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(Refusal::Bad(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&many), Err(Refusal::TooLarge(_))));
    }

    #[test]
    fn values_share_the_head_and_keep_order() {
        let h = parse(b"GET / HTTP/1.1\r\nx-a: 1\r\nx-b: 2\r\nx-a: 3\r\n\r\nGET")
            .unwrap()
            .unwrap();
        let all: Vec<_> = h.req.headers().get_all("x-a").iter().collect();
        assert_eq!(all, ["1", "3"]);
    }

    #[test]
    fn response_heads_choose_their_framing() {
        let resp = |status: u16, headers: &[(&str, &str)], body: RespBody| {
            let mut r = Response::new(body);
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            for (n, v) in headers {
                r.headers_mut().append(
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            r.into_parts()
        };
        let encode = |parts: &http::response::Parts, body: &RespBody, v, head, reuse: bool| {
            let mut out = Vec::new();
            let mut reuse = reuse;
            let f = encode_response_head(parts, body, v, head, &mut reuse, &mut out);
            (f, String::from_utf8(out).unwrap(), reuse)
        };
        let (p, b) = resp(200, &[("date", "x")], RespBody::full("abc"));
        let (f, text, reuse) = encode(&p, &b, Version::HTTP_11, false, true);
        assert_eq!(f, Framing::Length(3));
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ndate: x\r\ncontent-length: 3\r\n\r\n"
        );
        assert!(reuse);
        let (f, text, _) = encode(&p, &b, Version::HTTP_11, false, false);
        assert_eq!(f, Framing::Length(3));
        assert!(text.ends_with("connection: close\r\n\r\n"), "{text}");
        let (f, text, _) = encode(&p, &b, Version::HTTP_10, false, true);
        assert_eq!(f, Framing::Length(3));
        assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
        assert!(text.ends_with("connection: keep-alive\r\n\r\n"), "{text}");
        let (f, text, _) = encode(&p, &b, Version::HTTP_11, true, true);
        assert_eq!(f, Framing::None);
        assert!(text.contains("content-length: 3\r\n"), "{text}");
        let (p, b) = resp(204, &[], RespBody::empty());
        let (f, text, _) = encode(&p, &b, Version::HTTP_11, false, true);
        assert_eq!(f, Framing::None);
        assert!(text.contains("date: "), "{text}");
        assert!(!text.contains("content-length"), "{text}");
        let (p, b) = resp(200, &[("connection", "close")], RespBody::empty());
        let (_, text, reuse) = encode(&p, &b, Version::HTTP_11, false, true);
        assert!(!reuse);
        assert_eq!(text.matches("connection").count(), 1, "{text}");
    }
}
