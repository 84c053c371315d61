//! The HTTP/1.1 client for upstream connections.
//!
//! hyper's HTTP/1.1 client runs every connection as a task of its own, fed through channels:
//! each proxied request hops from the request task to the connection task and back, and the
//! response body crosses one more channel. Here the request task writes the request and reads
//! the response head itself, and the response body reads straight from the socket when the
//! downstream connection pulls it, so an exchange takes no extra task, channel or wake-up.
//! A connection is plain data ([`H1Conn`]) kept idle in the endpoint's pool between exchanges.
//!
//! Framing follows RFC 9112: the response to HEAD and 1xx/204/304 responses have no body;
//! `Transfer-Encoding` with chunked last wins over `Content-Length` (and then the connection
//! is not reused); otherwise `Content-Length`; otherwise the body ends when the upstream closes.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use metrics::Gauge;
use outrider_tls::MaybeTls;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::body::ReqBody;
use crate::h1codec::{
    Decoder, FieldSpan, Framing, H1BodyError, READ_SIZE, SendError, Sender, chunked_last,
    connection_tokens, field_spans, parse_content_length, push_decimal, push_field,
};
use crate::pool::EndpointPool;

/// Most fields in an upstream response head (or trailer section); more is a protocol error.
/// Default is 100.
pub const MAX_RESPONSE_HEADERS: usize = 100;
/// Largest upstream response head (or trailer section); more is a protocol error. Default is
/// 64 KiB.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Interim (1xx) responses skipped before the final one; more is a protocol error.
const MAX_INTERIM: usize = 16;
/// Request bodies up to this size are copied behind the head so both leave in one write.
const COALESCE_BODY: usize = 16 * 1024;

/// An upstream HTTP/1.1 connection between exchanges: the stream and its read buffer.
pub(crate) struct H1Conn {
    io: MaybeTls<TcpStream>,
    /// Bytes read and not yet consumed.
    rbuf: BytesMut,
    /// The request head being written; kept to reuse its allocation.
    wbuf: Vec<u8>,
    /// The cluster's `upstream_cx_active`, decremented when the connection closes.
    active: Gauge,
}

impl Drop for H1Conn {
    fn drop(&mut self) {
        self.active.decrement(1.0);
    }
}

impl H1Conn {
    /// A connection just dialed; `active` was incremented for it.
    pub(crate) fn new(io: MaybeTls<TcpStream>, active: Gauge) -> Self {
        H1Conn {
            io,
            rbuf: BytesMut::new(),
            wbuf: Vec::new(),
            active,
        }
    }

    /// Whether an idle connection can carry another request: the upstream has not closed it
    /// and has sent nothing unasked. Checked without blocking and, for a plain socket whose
    /// readiness is already known, without a system call.
    pub(crate) fn is_reusable(&mut self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut probe = [0u8; 1];
        let mut buf = ReadBuf::new(&mut probe);
        // Pending: nothing to read and the stream is open. Anything else (end of stream,
        // an error, or bytes no request asked for) makes the connection unusable.
        Pin::new(&mut self.io)
            .poll_read(&mut cx, &mut buf)
            .is_pending()
    }

    /// Reads more bytes into the buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        fill(&mut self.io, &mut self.rbuf, cx)
    }

    /// The stream, for a connection that switched protocols, and the bytes already read from
    /// it.
    pub(crate) fn upgraded(&mut self) -> (&mut MaybeTls<TcpStream>, Bytes) {
        let early = self.rbuf.split().freeze();
        (&mut self.io, early)
    }
}

/// Reads more bytes from `io` into `buf`; `Ok(0)` at the end of the stream.
fn fill(
    io: &mut MaybeTls<TcpStream>,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_SIZE / 4 {
        buf.reserve(READ_SIZE);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// Why an exchange failed before a usable response head.
#[derive(Debug)]
pub(crate) struct ExchangeError {
    pub(crate) kind: ExchangeErrorKind,
    /// No byte of a response arrived and the connection ended or broke: on a reused
    /// connection this is an upstream that closed it while idle.
    pub(crate) nothing_received: bool,
}

/// What went wrong in an exchange.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeErrorKind {
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    #[error("upstream closed the connection before a response head")]
    Closed,
    #[error("invalid upstream response: {0}")]
    Protocol(&'static str),
    #[error("request body: {0}")]
    RequestBody(#[source] crate::body::BodyError),
}

/// How the request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqFraming {
    None,
    Length(u64),
    Chunked,
}

/// A response head and what it says about the body and the connection.
pub(crate) struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    /// Where reading the body starts.
    body: Decoder,
    /// A 101: the connection switches protocols after this head.
    upgrade: bool,
    keep_alive: bool,
}

/// Writes `req` on `conn` and reads the response head. A request body streaming from
/// downstream is taken from `req` and sent as it comes, while the answer is awaited: when the
/// head arrives before the body is all sent, the rest goes on from the response body
/// ([`H1Body`]), as an upstream that answers while it reads (an echo, say) expects. A bodiless
/// or buffered request stays in `req`, so it can be sent again on another connection.
pub(crate) async fn exchange(
    conn: &mut H1Conn,
    req: &mut Request<ReqBody>,
) -> Result<(Head, Option<Box<Upload>>), ExchangeError> {
    let framing = encode_head(req, &mut conn.wbuf);
    let head_request = req.method() == Method::HEAD;
    let upgrade = req.headers().contains_key(http::header::UPGRADE);
    let mut upload = None;
    let written = match req.body_mut() {
        ReqBody::Empty | ReqBody::Full(None) => write_all(conn, None).await,
        ReqBody::Full(Some(bytes)) => {
            let bytes = bytes.clone();
            write_all(conn, Some(bytes)).await
        }
        ReqBody::Stream(_) => {
            let body = std::mem::replace(req.body_mut(), ReqBody::Empty);
            upload = Some(Box::new(Upload::new(body, framing)));
            write_all(conn, None).await
        }
    };
    let mut write_error = written.err();
    let mut reading = HeadRead::default();
    let result = std::future::poll_fn(|cx| {
        if write_error.is_none()
            && let Some(up) = upload.as_mut()
        {
            match up.poll_send(&mut conn.io, cx) {
                Poll::Ready(Ok(())) => upload = None,
                Poll::Ready(Err(e)) => {
                    upload = None;
                    // A body that broke on the client's side ends the exchange; a write the
                    // upstream refused may still come with an answer (an early 413, say),
                    // which is worth more than the write error.
                    if !matches!(e, ExchangeErrorKind::Io(_)) {
                        return Poll::Ready(Err(ExchangeError {
                            kind: e,
                            nothing_received: true,
                        }));
                    }
                    write_error = Some(e);
                }
                Poll::Pending => {}
            }
        }
        reading.poll(conn, cx, head_request, upgrade)
    })
    .await;
    match result {
        Ok(mut head) => {
            if write_error.is_some() {
                head.keep_alive = false;
            }
            if upload.is_some() {
                // The upstream answered before taking the whole body: it may never read the
                // rest, so the connection is not reused.
                head.keep_alive = false;
            }
            Ok((head, upload))
        }
        Err(err) => match write_error {
            Some(kind) => Err(ExchangeError {
                kind,
                nothing_received: err.nothing_received,
            }),
            None => Err(err),
        },
    }
}

/// Writes the encoded head, and a buffered body after it.
async fn write_all(conn: &mut H1Conn, body: Option<Bytes>) -> Result<(), ExchangeErrorKind> {
    match body {
        Some(b) if b.len() <= COALESCE_BODY => {
            conn.wbuf.extend_from_slice(&b);
            conn.io.write_all(&conn.wbuf).await?;
        }
        Some(b) => {
            conn.io.write_all(&conn.wbuf).await?;
            conn.io.write_all(&b).await?;
        }
        None => conn.io.write_all(&conn.wbuf).await?,
    }
    conn.io.flush().await?;
    Ok(())
}

/// A request body on its way upstream, frame by frame as the client sends it.
pub(crate) struct Upload(Sender<ReqBody>);

impl Upload {
    fn new(body: ReqBody, framing: ReqFraming) -> Self {
        let framing = match framing {
            ReqFraming::None => Framing::None,
            ReqFraming::Length(n) => Framing::Length(n),
            ReqFraming::Chunked => Framing::Chunked,
        };
        Upload(Sender::new(body, framing, None))
    }

    /// Writes as much of the body as the client has sent and the socket takes; ready once the
    /// whole body is written and flushed.
    pub(crate) fn poll_send(
        &mut self,
        io: &mut MaybeTls<TcpStream>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), ExchangeErrorKind>> {
        self.0.poll_send(io, cx).map_err(|e| match e {
            SendError::Io(e) => ExchangeErrorKind::Io(e),
            SendError::Body(e) => ExchangeErrorKind::RequestBody(e),
            SendError::Protocol(r) => ExchangeErrorKind::Protocol(r),
        })
    }
}

/// Encodes the request line and fields into `out`, with framing from the body; the request's
/// own `Content-Length` and `Transfer-Encoding` give way to it.
fn encode_head(req: &Request<ReqBody>, out: &mut Vec<u8>) -> ReqFraming {
    let framing = match req.body() {
        ReqBody::Full(Some(b)) => ReqFraming::Length(b.len() as u64),
        ReqBody::Stream(s) => match s.size_hint().exact() {
            Some(n) => ReqFraming::Length(n),
            None => ReqFraming::Chunked,
        },
        // Settled below, once the fields show whether the client declared a length.
        ReqBody::Empty | ReqBody::Full(None) => ReqFraming::None,
    };
    let mut declared_length = false;
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    match req.uri().path_and_query() {
        Some(pq) if req.uri().scheme().is_none() => out.extend_from_slice(pq.as_str().as_bytes()),
        _ if *req.method() == Method::CONNECT => {
            if let Some(a) = req.uri().authority() {
                out.extend_from_slice(a.as_str().as_bytes());
            }
        }
        Some(pq) => out.extend_from_slice(pq.as_str().as_bytes()),
        None => out.push(b'/'),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        if name == http::header::CONTENT_LENGTH {
            declared_length = true;
        } else if name != http::header::TRANSFER_ENCODING {
            push_field(out, name, value);
        }
    }
    // A bodiless request states an empty body where a body is expected or was declared.
    let framing = if framing == ReqFraming::None
        && (declared_length || matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH))
    {
        ReqFraming::Length(0)
    } else {
        framing
    };
    match framing {
        ReqFraming::None => {}
        ReqFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        ReqFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// Progress of reading a response head.
#[derive(Default)]
struct HeadRead {
    /// Some response byte arrived.
    received: bool,
    /// Interim (1xx) responses skipped.
    interim: usize,
    /// Bytes at the front of the buffer already parsed without a complete head. The head is
    /// parsed again only once a new line has ended, so an upstream that trickles its head a
    /// byte at a time costs one parse per line, not one per read.
    parsed: usize,
}

impl HeadRead {
    /// Reads until a final response head is complete.
    fn poll(
        &mut self,
        conn: &mut H1Conn,
        cx: &mut Context<'_>,
        head_request: bool,
        upgrade: bool,
    ) -> Poll<Result<Head, ExchangeError>> {
        self.received |= !conn.rbuf.is_empty();
        loop {
            let new_line = self.parsed == 0
                || memchr::memchr(b'\n', conn.rbuf.get(self.parsed..).unwrap_or_default())
                    .is_some();
            if !conn.rbuf.is_empty() && new_line {
                match parse_head(&mut conn.rbuf, head_request, upgrade) {
                    Ok(Some(head))
                        if head.status.is_informational()
                            && head.status != StatusCode::SWITCHING_PROTOCOLS =>
                    {
                        self.interim += 1;
                        self.parsed = 0;
                        if self.interim > MAX_INTERIM {
                            return Poll::Ready(Err(protocol("too many interim responses")));
                        }
                        continue;
                    }
                    Ok(Some(head)) => return Poll::Ready(Ok(head)),
                    Ok(None) => self.parsed = conn.rbuf.len(),
                    Err(reason) => return Poll::Ready(Err(protocol(reason))),
                }
            }
            if conn.rbuf.len() > MAX_RESPONSE_HEAD {
                return Poll::Ready(Err(protocol("response head too large")));
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) => {
                    return Poll::Ready(Err(ExchangeError {
                        kind: ExchangeErrorKind::Closed,
                        nothing_received: !self.received,
                    }));
                }
                Ok(_) => self.received = true,
                Err(e) => {
                    return Poll::Ready(Err(ExchangeError {
                        kind: ExchangeErrorKind::Io(e),
                        nothing_received: !self.received,
                    }));
                }
            }
        }
    }
}

fn protocol(reason: &'static str) -> ExchangeError {
    ExchangeError {
        kind: ExchangeErrorKind::Protocol(reason),
        nothing_received: false,
    }
}

/// Parses a response head at the front of `buf` and consumes it; `None` while incomplete.
/// Interim (1xx) heads other than 101 are returned too, for the caller to skip.
fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
    upgrade: bool,
) -> Result<Option<Head>, &'static str> {
    // Field positions, as offsets into the head, so the values can share the head's bytes
    // once it is split off the read buffer.
    let mut spans: [FieldSpan; MAX_RESPONSE_HEADERS] = [(0, 0, 0, 0); MAX_RESPONSE_HEADERS];
    let (len, code, minor, count) = {
        let mut fields =
            [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            buf,
            &mut fields,
        );
        let len = match parsed {
            // Checked here too, not only while incomplete: a large head that arrives in one
            // read is held to the same limit.
            Ok(httparse::Status::Complete(len)) if len > MAX_RESPONSE_HEAD => {
                return Err("response head too large");
            }
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err("too many header fields"),
            Err(_) => return Err("malformed response head"),
        };
        field_spans(buf.as_ptr(), resp.headers, &mut spans);
        (
            len,
            resp.code.unwrap_or(0),
            resp.version.unwrap_or(1),
            resp.headers.len(),
        )
    };
    let status = StatusCode::from_u16(code).map_err(|_| "invalid status code")?;
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        buf.advance(len);
        return Ok(Some(Head {
            status,
            version: Version::HTTP_11,
            headers: HeaderMap::new(),
            body: Decoder::Done,
            upgrade: false,
            keep_alive: true,
        }));
    }
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut has_te = false;
    let mut close = false;
    let mut keep_alive_token = false;
    for &(ns, ne, vs, ve) in &spans[..count] {
        let name = HeaderName::from_bytes(&head[ns as usize..ne as usize])
            .map_err(|_| "invalid header name")?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize))
            .map_err(|_| "invalid header value")?;
        if name == http::header::CONTENT_LENGTH {
            let n = parse_content_length(value.as_bytes()).ok_or("invalid content-length")?;
            if content_length.is_some_and(|c| c != n) {
                return Err("conflicting content-length");
            }
            content_length = Some(n);
        } else if name == http::header::TRANSFER_ENCODING {
            has_te = true;
            // Only the last coding counts: chunked must be last to frame the body.
            chunked = chunked_last(value.as_bytes());
        } else if name == http::header::CONNECTION {
            let (c, k) = connection_tokens(value.as_bytes());
            close |= c;
            keep_alive_token |= k;
        }
        headers.append(name, value);
    }
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut keep_alive = if version == Version::HTTP_10 {
        keep_alive_token && !close
    } else {
        !close
    };
    let body = if status == StatusCode::SWITCHING_PROTOCOLS {
        if !upgrade {
            return Err("101 to a request that asked for no upgrade");
        }
        keep_alive = false;
        Decoder::Done
    } else if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED
    {
        Decoder::Done
    } else if has_te {
        // A message with both is a smuggling vector: the length goes, and so does the
        // connection once this response is read.
        if content_length.is_some() {
            headers.remove(http::header::CONTENT_LENGTH);
            keep_alive = false;
        }
        if chunked {
            Decoder::ChunkSize
        } else {
            keep_alive = false;
            Decoder::UntilClose
        }
    } else if let Some(n) = content_length {
        if n == 0 {
            Decoder::Done
        } else {
            Decoder::Length(n)
        }
    } else {
        keep_alive = false;
        Decoder::UntilClose
    };
    Ok(Some(Head {
        upgrade: status == StatusCode::SWITCHING_PROTOCOLS,
        status,
        version,
        headers,
        body,
        keep_alive,
    }))
}

/// The response for `head`, whose body reads from `conn` and gives it back to `pool` once
/// read to the end (when the connection can carry another request).
pub(crate) fn response(
    conn: H1Conn,
    head: Head,
    upload: Option<Box<Upload>>,
    pool: &Arc<EndpointPool>,
) -> Response<H1Body> {
    let mut body = H1Body {
        conn: Some(conn),
        state: head.body,
        upgrade: head.upgrade,
        pool: head.keep_alive.then(|| pool.clone()),
        upload,
    };
    if body.state == Decoder::Done && !body.upgrade {
        body.release();
    }
    let mut resp = Response::new(body);
    *resp.status_mut() = head.status;
    *resp.version_mut() = head.version;
    *resp.headers_mut() = head.headers;
    resp
}

/// A response body read from an upstream HTTP/1.1 connection as it is polled.
pub struct H1Body {
    conn: Option<H1Conn>,
    state: Decoder,
    /// A 101: the connection now carries another protocol, taken by
    /// [`H1Body::take_upgraded`].
    upgrade: bool,
    /// Where the connection goes once the body is read; `None` when it cannot be reused.
    pool: Option<Arc<EndpointPool>>,
    /// The rest of a request body the upstream began answering before it was all sent.
    upload: Option<Box<Upload>>,
}

impl std::fmt::Debug for H1Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Body")
            .field("state", &self.state)
            .finish()
    }
}

impl H1Body {
    /// The connection of a 101 response, for the caller to splice.
    pub(crate) fn take_upgraded(&mut self) -> Option<H1Conn> {
        if !self.upgrade {
            return None;
        }
        self.upgrade = false;
        self.conn.take()
    }

    /// The body is complete: the connection goes back to its pool when it is in step (no
    /// bytes beyond this response) and may be reused, else it closes.
    fn release(&mut self) {
        self.state = Decoder::Done;
        self.upload = None;
        if let Some(conn) = self.conn.take()
            && let Some(pool) = self.pool.take()
            && conn.rbuf.is_empty()
        {
            pool.put_idle(conn);
        }
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = H1BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1BodyError>>> {
        let this = self.get_mut();
        if this.upgrade {
            return Poll::Ready(None);
        }
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(up) = this.upload.as_mut() {
            // Sent alongside: the upstream may wait for more of the request before it answers
            // more. A failed upload ends only the upload; the response may still complete.
            match up.poll_send(&mut conn.io, cx) {
                Poll::Ready(_) => this.upload = None,
                Poll::Pending => {}
            }
        }
        let until_close = this.state == Decoder::UntilClose;
        let H1Conn { io, rbuf, .. } = conn;
        let polled = this.state.poll_frame(rbuf, cx, |buf, cx| fill(io, buf, cx));
        match polled {
            Poll::Ready(Some(Ok(_))) | Poll::Ready(None) if this.state == Decoder::Done => {
                if until_close {
                    // Ended by the close: nothing to give back.
                    this.conn = None;
                }
                this.release();
            }
            Poll::Ready(Some(Err(_))) => {
                this.upload = None;
                this.conn = None;
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.state == Decoder::Done || self.upgrade || self.conn.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.upgrade {
            return SizeHint::with_exact(0);
        }
        match self.state.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8], head_request: bool) -> Result<Option<Head>, &'static str> {
        let mut buf = BytesMut::from(bytes);
        parse_head(&mut buf, head_request, false)
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let h = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!(h.body, Decoder::Length(5));
        assert!(h.keep_alive);
        let h = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(h.body, Decoder::Done);
        let h = parse(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 5\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.body, Decoder::ChunkSize);
        assert!(!h.keep_alive);
        assert!(!h.headers.contains_key(http::header::CONTENT_LENGTH));
        let h = parse(b"HTTP/1.1 200 OK\r\n\r\n", false).unwrap().unwrap();
        assert_eq!(h.body, Decoder::UntilClose);
        assert!(!h.keep_alive);
        let h = parse(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = parse(b"HTTP/1.1 204 No Content\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!(h.body, Decoder::Done);
        assert!(h.keep_alive);
        let h = parse(
            b"HTTP/1.1 200 OK\r\nConnection: Close\r\ncontent-length: 1\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(!h.keep_alive);
    }

    #[test]
    fn bad_heads_are_refused() {
        assert!(parse(b"HTTP/1.1 abc OK\r\n\r\n", false).is_err());
        assert!(parse(b"garbage\r\n\r\n", false).is_err());
        assert!(
            parse(
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
                false
            )
            .is_err()
        );
        assert!(parse(b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", false).is_err());
        assert!(parse(b"HTTP/1.1 101 Switching\r\n\r\n", false).is_err());
        assert!(
            parse(b"HTTP/1.1 200 OK\r\ncontent-le", false)
                .unwrap()
                .is_none()
        );
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_RESPONSE_HEADERS {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(parse(&many, false).is_err());
    }

    #[test]
    fn values_share_the_head_and_keep_order() {
        let h = parse(
            b"HTTP/1.1 200 OK\r\nx-a: 1\r\nx-b: 2\r\nx-a: 3\r\ncontent-length: 0\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        let all: Vec<_> = h.headers.get_all("x-a").iter().collect();
        assert_eq!(all, ["1", "3"]);
        assert_eq!(h.headers["x-b"], "2");
        assert_eq!(h.body, Decoder::Done);
    }

    #[test]
    fn interim_heads_are_consumed() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"[..]);
        let h = parse_head(&mut buf, false, false).unwrap().unwrap();
        assert_eq!(h.status, StatusCode::CONTINUE);
        let h = parse_head(&mut buf, false, false).unwrap().unwrap();
        assert_eq!(h.status, StatusCode::OK);
        assert!(buf.is_empty());
    }

    #[test]
    fn request_heads_carry_framing_of_the_body() {
        let mut out = Vec::new();
        let req = Request::builder()
            .method(Method::POST)
            .uri("/p?q=1")
            .header("host", "a")
            .header("content-length", "99")
            .body(ReqBody::Full(Some(Bytes::from_static(b"abc"))))
            .unwrap();
        assert_eq!(encode_head(&req, &mut out), ReqFraming::Length(3));
        assert_eq!(
            out,
            b"POST /p?q=1 HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\n"
        );
        let req = Request::builder()
            .uri("/")
            .header("host", "a")
            .body(ReqBody::Empty)
            .unwrap();
        assert_eq!(encode_head(&req, &mut out), ReqFraming::None);
        assert_eq!(out, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n");
        // A bodiless POST, or a request that declared a length, states an empty body.
        let req = Request::builder()
            .method(Method::POST)
            .uri("/")
            .body(ReqBody::Empty)
            .unwrap();
        assert_eq!(encode_head(&req, &mut out), ReqFraming::Length(0));
        assert_eq!(out, b"POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
        let req = Request::builder()
            .method(Method::DELETE)
            .uri("/")
            .header("content-length", "0")
            .header("transfer-encoding", "chunked")
            .body(ReqBody::Empty)
            .unwrap();
        assert_eq!(encode_head(&req, &mut out), ReqFraming::Length(0));
        assert_eq!(out, b"DELETE / HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
    }
}
