//! HTTP/1.1 message bodies on the wire, shared by the upstream client ([`crate::h1client`])
//! and the downstream server ([`crate::h1server`]): [`Decoder`] turns the bytes of a
//! `Content-Length`, chunked or close-delimited body into frames as they are read, and
//! [`Sender`] writes a body's frames with the framing its head announced.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame};
use tokio::io::AsyncWrite;

/// Most fields in a head or trailer section; more is refused. Default is 100.
pub const MAX_FIELDS: usize = 100;
/// Longest chunk-size line, extensions included.
pub(crate) const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Largest trailer section.
pub(crate) const MAX_TRAILERS: usize = 64 * 1024;
/// Bytes asked of the socket per read.
pub(crate) const READ_SIZE: usize = 8 * 1024;
/// Encoded bytes a [`Sender`] gathers from a ready body before it writes, so a head and the
/// first data (or several small frames) leave in one write.
const GATHER: usize = 64 * 1024;
/// Buffers handed to one vectored write.
const MAX_IOV: usize = 16;

/// Why a body read from an HTTP/1.1 connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum H1BodyError {
    #[error("body: {0}")]
    Io(#[from] io::Error),
    #[error("connection closed before the body's end")]
    Truncated,
    #[error("invalid body: {0}")]
    Protocol(&'static str),
}

/// Where reading a body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decoder {
    /// Bytes of a sized body still to come.
    Length(u64),
    /// Expecting a chunk-size line.
    ChunkSize,
    /// Bytes of the current chunk still to come.
    ChunkData(u64),
    /// Expecting the CRLF after a chunk's data.
    ChunkEnd,
    /// Expecting the trailer section (possibly empty) after the last chunk.
    Trailers,
    /// Everything until the peer closes.
    UntilClose,
    Done,
}

impl Decoder {
    /// The decoder of a sized body: `Done` at once when it is empty.
    pub(crate) fn length(n: u64) -> Decoder {
        if n == 0 {
            Decoder::Done
        } else {
            Decoder::Length(n)
        }
    }

    /// The next frame of the body from `buf`, calling `fill` to read more into it (`Ok(0)` at
    /// the end of the stream). `Ready(None)` once the body has ended; the decoder is then
    /// [`Decoder::Done`], as it is right after the frame that ends a body and after an error.
    pub(crate) fn poll_frame<F>(
        &mut self,
        buf: &mut BytesMut,
        cx: &mut Context<'_>,
        mut fill: F,
    ) -> Poll<Option<Result<Frame<Bytes>, H1BodyError>>>
    where
        F: FnMut(&mut BytesMut, &mut Context<'_>) -> Poll<io::Result<usize>>,
    {
        let mut more = |buf: &mut BytesMut, cx: &mut Context<'_>, eof_ends: bool| match ready!(
            fill(buf, cx)
        ) {
            Ok(0) if eof_ends => Poll::Ready(Ok(false)),
            Ok(0) => Poll::Ready(Err(H1BodyError::Truncated)),
            Ok(_) => Poll::Ready(Ok(true)),
            Err(e) => Poll::Ready(Err(H1BodyError::Io(e))),
        };
        let err = loop {
            match *self {
                Decoder::Done => return Poll::Ready(None),
                Decoder::Length(rem) | Decoder::ChunkData(rem) => {
                    if buf.is_empty()
                        && let Err(e) = ready!(more(buf, cx, false))
                    {
                        break e;
                    }
                    let n = rem.min(buf.len() as u64);
                    let data = buf.split_to(n as usize).freeze();
                    let rem = rem - n;
                    *self = match *self {
                        Decoder::Length(_) if rem == 0 => Decoder::Done,
                        Decoder::Length(_) => Decoder::Length(rem),
                        _ if rem == 0 => Decoder::ChunkEnd,
                        _ => Decoder::ChunkData(rem),
                    };
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decoder::UntilClose => {
                    if buf.is_empty() {
                        match ready!(more(buf, cx, true)) {
                            Ok(true) => {}
                            Ok(false) => {
                                *self = Decoder::Done;
                                return Poll::Ready(None);
                            }
                            Err(e) => break e,
                        }
                    }
                    return Poll::Ready(Some(Ok(Frame::data(buf.split().freeze()))));
                }
                Decoder::ChunkSize => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        *self = if size == 0 {
                            Decoder::Trailers
                        } else {
                            Decoder::ChunkData(size)
                        };
                    }
                    Ok(httparse::Status::Partial) => {
                        if buf.len() > MAX_CHUNK_LINE {
                            break H1BodyError::Protocol("chunk-size line too long");
                        }
                        if let Err(e) = ready!(more(buf, cx, false)) {
                            break e;
                        }
                    }
                    Err(_) => break H1BodyError::Protocol("invalid chunk size"),
                },
                Decoder::ChunkEnd => {
                    if buf.len() < 2 {
                        if let Err(e) = ready!(more(buf, cx, false)) {
                            break e;
                        }
                        continue;
                    }
                    if &buf[..2] != b"\r\n" {
                        break H1BodyError::Protocol("chunk data not followed by CRLF");
                    }
                    buf.advance(2);
                    *self = Decoder::ChunkSize;
                }
                Decoder::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        *self = Decoder::Done;
                        return Poll::Ready(None);
                    }
                    match parse_trailers(buf) {
                        Ok(Some(trailers)) => {
                            *self = Decoder::Done;
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        Ok(None) => {
                            if buf.len() > MAX_TRAILERS {
                                break H1BodyError::Protocol("trailer section too large");
                            }
                            if let Err(e) = ready!(more(buf, cx, false)) {
                                break e;
                            }
                        }
                        Err(e) => break e,
                    }
                }
            }
        };
        *self = Decoder::Done;
        Poll::Ready(Some(Err(err)))
    }

    /// The bytes of the body still to come, when known.
    pub(crate) fn remaining(&self) -> Option<u64> {
        match *self {
            Decoder::Length(n) => Some(n),
            Decoder::Done => Some(0),
            _ => None,
        }
    }
}

/// Parses and consumes a complete trailer section; `None` while incomplete. A field that is
/// not valid is dropped rather than failing a body already delivered.
fn parse_trailers(buf: &mut BytesMut) -> Result<Option<HeaderMap>, H1BodyError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    match httparse::parse_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete((used, fields))) => {
            let mut trailers = HeaderMap::with_capacity(fields.len());
            for f in fields {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(f.name.as_bytes()),
                    HeaderValue::from_bytes(f.value),
                ) {
                    trailers.append(n, v);
                }
            }
            buf.advance(used);
            Ok(Some(trailers))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(H1BodyError::Protocol("invalid trailer section")),
    }
}

/// How a body goes on the wire, as its head announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body (the body, if any, is not read).
    None,
    Length(u64),
    Chunked,
    /// Raw bytes, ended by closing the connection (a response to an HTTP/1.0 client).
    UntilClose,
}

/// Why sending a body failed.
#[derive(Debug)]
pub(crate) enum SendError<E> {
    /// Writing to the peer failed.
    Io(io::Error),
    /// The body being sent failed.
    Body(E),
    /// The body does not match its announced length.
    Protocol(&'static str),
}

/// Writes a body frame by frame as it becomes ready, with the framing its head announced;
/// bytes queued before it (a head) leave with the first data.
pub(crate) struct Sender<B> {
    body: B,
    framing: Framing,
    /// Body bytes taken so far (checked against a declared length).
    sent: u64,
    /// Encoded bytes not yet written.
    out: VecDeque<Bytes>,
    queued: usize,
    /// The body has ended; what is left is to write `out` and flush.
    ended: bool,
    /// Whether trailers are written (chunked only); otherwise they are dropped.
    trailers: bool,
}

impl<B> Sender<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    /// A sender of `body` framed as `framing`, writing `head` first when given.
    pub(crate) fn new(body: B, framing: Framing, head: Option<Bytes>) -> Self {
        let mut out = VecDeque::new();
        let queued = head.as_ref().map_or(0, Bytes::len);
        if let Some(h) = head.filter(|h| !h.is_empty()) {
            out.push_back(h);
        }
        Sender {
            body,
            framing,
            sent: 0,
            out,
            queued,
            ended: framing == Framing::None,
            trailers: true,
        }
    }

    /// Drops trailers instead of writing them (an HTTP/1.1 client that did not send
    /// `TE: trailers`).
    pub(crate) fn without_trailers(mut self) -> Self {
        self.trailers = false;
        self
    }

    /// Writes as much of the body as is ready and the writer takes; ready once the whole body
    /// is written and flushed.
    pub(crate) fn poll_send<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SendError<B::Error>>> {
        let mut body_pending = false;
        loop {
            while !self.ended && !body_pending && self.queued < GATHER {
                match Pin::new(&mut self.body).poll_frame(cx) {
                    Poll::Pending => body_pending = true,
                    Poll::Ready(None) => self.finish()?,
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(SendError::Body(e))),
                    Poll::Ready(Some(Ok(frame))) => self.encode(frame)?,
                }
            }
            if self.out.is_empty() {
                // Flushed before waiting on the body, so that what was written does not sit
                // in a TLS buffer meanwhile.
                ready!(Pin::new(&mut *io).poll_flush(cx)).map_err(SendError::Io)?;
                return if self.ended {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            }
            let n = if self.out.len() > 1 && io.is_write_vectored() {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let mut k = 0;
                for (slot, b) in iov.iter_mut().zip(self.out.iter()) {
                    *slot = IoSlice::new(b);
                    k += 1;
                }
                ready!(Pin::new(&mut *io).poll_write_vectored(cx, &iov[..k]))
            } else {
                let front = self.out.front().map_or(&[][..], |b| &b[..]);
                ready!(Pin::new(&mut *io).poll_write(cx, front))
            }
            .map_err(SendError::Io)?;
            if n == 0 {
                return Poll::Ready(Err(SendError::Io(io::ErrorKind::WriteZero.into())));
            }
            self.consume(n);
        }
    }

    fn consume(&mut self, mut n: usize) {
        self.queued = self.queued.saturating_sub(n);
        while n > 0 {
            let Some(front) = self.out.front_mut() else {
                return;
            };
            if n >= front.len() {
                n -= front.len();
                self.out.pop_front();
            } else {
                front.advance(n);
                return;
            }
        }
    }

    fn push(&mut self, b: Bytes) {
        self.queued += b.len();
        self.out.push_back(b);
    }

    fn finish(&mut self) -> Result<(), SendError<B::Error>> {
        match self.framing {
            Framing::Length(n) if self.sent != n => {
                return Err(SendError::Protocol("body shorter than declared"));
            }
            Framing::Chunked => self.push(Bytes::from_static(b"0\r\n\r\n")),
            _ => {}
        }
        self.ended = true;
        Ok(())
    }

    fn encode(&mut self, frame: Frame<Bytes>) -> Result<(), SendError<B::Error>> {
        match frame.into_data() {
            Ok(data) if data.is_empty() => {}
            Ok(data) => {
                self.sent += data.len() as u64;
                match self.framing {
                    Framing::Length(n) if self.sent > n => {
                        return Err(SendError::Protocol("body longer than declared"));
                    }
                    Framing::Chunked => {
                        let mut size = Vec::with_capacity(18);
                        push_hex(&mut size, data.len());
                        size.extend_from_slice(b"\r\n");
                        self.push(size.into());
                        self.push(data);
                        self.push(Bytes::from_static(b"\r\n"));
                    }
                    _ => self.push(data),
                }
            }
            Err(frame) => {
                // Trailers end a chunked body; other framings have no place for them.
                if let (Ok(trailers), Framing::Chunked) = (frame.into_trailers(), self.framing) {
                    let mut last = b"0\r\n".to_vec();
                    for (name, value) in trailers.iter().filter(|_| self.trailers) {
                        push_field(&mut last, name, value);
                    }
                    last.extend_from_slice(b"\r\n");
                    self.push(last.into());
                    self.ended = true;
                }
            }
        }
        Ok(())
    }
}

/// Where a field's name and value sit in a head: byte offsets (name start, name end, value
/// start, value end), so the values can share the head's bytes once it is split off the read
/// buffer.
pub(crate) type FieldSpan = (u32, u32, u32, u32);

/// Records in `spans` where each parsed field of a head starting at `base` sits. Heads are
/// bounded well below 4 GiB (their limits plus one read), so the offsets fit in u32.
pub(crate) fn field_spans(
    base: *const u8,
    fields: &[httparse::Header<'_>],
    spans: &mut [FieldSpan],
) {
    let base = base as usize;
    for (span, h) in spans.iter_mut().zip(fields) {
        let name = h.name.as_ptr() as usize - base;
        let value = h.value.as_ptr() as usize - base;
        *span = (
            name as u32,
            (name + h.name.len()) as u32,
            value as u32,
            (value + h.value.len()) as u32,
        );
    }
}

/// Appends `name: value\r\n`.
pub(crate) fn push_field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal.
pub(crate) fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

/// Appends `n` in lower-case hex (a chunk size).
pub(crate) fn push_hex(out: &mut Vec<u8>, mut n: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut tmp = [0u8; 16];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = DIGITS[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

/// A `Content-Length` value: digits only, at most 19 of them.
pub(crate) fn parse_content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    v.iter().try_fold(0u64, |n, b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// Whether the last transfer coding of a `Transfer-Encoding` value is chunked (only then does
/// chunked frame the body).
pub(crate) fn chunked_last(v: &[u8]) -> bool {
    v.rsplit(|b| *b == b',')
        .next()
        .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// The `close` and `keep-alive` tokens of a `Connection` value.
pub(crate) fn connection_tokens(v: &[u8]) -> (bool, bool) {
    let (mut close, mut keep_alive) = (false, false);
    for token in v.split(|b| *b == b',') {
        let token = token.trim_ascii();
        close |= token.eq_ignore_ascii_case(b"close");
        keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
    }
    (close, keep_alive)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(mut d: Decoder, wire: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>), String> {
        let mut buf = BytesMut::new();
        let mut rest = wire;
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut data = Vec::new();
        let mut trailers = None;
        loop {
            // One byte per read: every state must cope with a split anywhere.
            let polled = d.poll_frame(&mut buf, &mut cx, |b, _| {
                let n = rest.len().min(1);
                b.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                Poll::Ready(Ok(n))
            });
            match polled {
                Poll::Ready(None) => return Ok((data, trailers)),
                Poll::Ready(Some(Ok(f))) => match f.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(f) => trailers = f.into_trailers().ok(),
                },
                Poll::Ready(Some(Err(e))) => return Err(e.to_string()),
                Poll::Pending => return Err("pending".into()),
            }
        }
    }

    #[test]
    fn decodes_every_framing_split_anywhere() {
        let (d, _) = decode_all(Decoder::length(5), b"hello").unwrap();
        assert_eq!(d, b"hello");
        let (d, t) = decode_all(
            Decoder::ChunkSize,
            b"3;ext=1\r\nabc\r\nA\r\n0123456789\r\n0\r\nx-t: 1\r\n\r\n",
        )
        .unwrap();
        assert_eq!(d, b"abc0123456789");
        assert_eq!(t.unwrap()["x-t"], "1");
        let (d, t) = decode_all(Decoder::ChunkSize, b"1\r\na\r\n0\r\n\r\n").unwrap();
        assert_eq!((d.as_slice(), t), (&b"a"[..], None));
        let (d, _) = decode_all(Decoder::UntilClose, b"to the end").unwrap();
        assert_eq!(d, b"to the end");
        assert!(decode_all(Decoder::length(5), b"hel").is_err());
        assert!(decode_all(Decoder::ChunkSize, b"zz\r\n").is_err());
        assert!(decode_all(Decoder::ChunkSize, b"1\r\nab\r\n").is_err());
        assert!(decode_all(Decoder::ChunkSize, b"3\r\nab").is_err());
    }

    #[test]
    fn senders_frame_and_check_lengths() {
        use http_body_util::{BodyExt, Full, StreamBody};
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut out = Vec::new();
        let mut s = Sender::new(
            Full::new(Bytes::from_static(b"abc")),
            Framing::Chunked,
            Some(Bytes::from_static(b"HEAD\r\n")),
        );
        assert!(matches!(
            s.poll_send(&mut out, &mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(out, b"HEAD\r\n3\r\nabc\r\n0\r\n\r\n");
        let mut out = Vec::new();
        let mut s = Sender::new(
            Full::new(Bytes::from_static(b"abc")),
            Framing::Length(4),
            None,
        );
        assert!(matches!(
            s.poll_send(&mut out, &mut cx),
            Poll::Ready(Err(SendError::Protocol(_)))
        ));
        let frames = vec![
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"ab"))),
            Ok(Frame::trailers(HeaderMap::from_iter([(
                HeaderName::from_static("grpc-status"),
                HeaderValue::from_static("0"),
            )]))),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames)).boxed();
        let mut out = Vec::new();
        let mut s = Sender::new(body, Framing::Chunked, None);
        assert!(matches!(
            s.poll_send(&mut out, &mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(out, b"2\r\nab\r\n0\r\ngrpc-status: 0\r\n\r\n");
        let mut hex = Vec::new();
        push_hex(&mut hex, 0x1f40);
        assert_eq!(hex, b"1f40");
    }
}
