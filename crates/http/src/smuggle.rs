//! Refusing HTTP/1.1 requests that carry both `Content-Length` and `Transfer-Encoding` (a
//! request-smuggling vector) with 400, as Envoy does by default.
//!
//! hyper follows RFC 9112 §6.3 and silently drops `Content-Length` when `Transfer-Encoding` is
//! present, so no service above it can see both. The check therefore sits below hyper, on the
//! plaintext stream it reads: a byte-level framer follows the request stream (heads, then
//! fixed-length or chunked bodies) so that every head on a keep-alive or pipelined connection is
//! scanned. A signal from the service ("a request arrived, scan what follows") would not do:
//! hyper reads ahead, so the next pipelined head may already be in its buffer by then.
//!
//! The framer mirrors hyper's request framing and stops scanning (passes bytes through) where
//! it cannot follow the stream: h2c, `CONNECT`, `Upgrade`, or framing hyper itself rejects.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The answer to a request with both headers; the connection is closed after it.
const REJECT_RESPONSE: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// Header names the framer acts on, lower-case; indexes are bits in a candidate mask.
const FIELDS: [&[u8]; 3] = [b"content-length", b"transfer-encoding", b"upgrade"];
const FIELD_CL: u8 = 1 << 0;
const FIELD_TE: u8 = 1 << 1;
const FIELD_UPGRADE: u8 = 1 << 2;
const ALL_FIELDS: u8 = FIELD_CL | FIELD_TE | FIELD_UPGRADE;

/// Request methods after whose head the stream is no longer HTTP/1.1 messages.
const METHODS: [&[u8]; 2] = [b"connect", b"pri"];
const METHOD_CONNECT: u8 = 1 << 0;
const METHOD_PRI: u8 = 1 << 1;
const ALL_METHODS: u8 = METHOD_CONNECT | METHOD_PRI;

/// What the scanner says about the bytes fed so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Let the bytes through.
    Pass,
    /// A request head carries both `Content-Length` and `Transfer-Encoding`: answer 400.
    Reject,
}

/// Where the framer is in the request stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Inside a request head (or waiting for one).
    Head,
    /// Bytes left of a `Content-Length` body.
    Body(u64),
    /// Hex digits of a chunk-size line.
    ChunkSize { size: u64 },
    /// The rest of a chunk-size line (extensions) up to its LF.
    ChunkExt { size: u64 },
    /// Bytes left of a chunk's data.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkDataEnd,
    /// Trailer fields after the last chunk; `empty` while the current line has no byte yet.
    Trailers { empty: bool },
    /// No longer HTTP/1.1 messages, or framing hyper will refuse: pass everything.
    Opaque,
    /// A smuggling head was seen; nothing more is scanned.
    Rejected,
}

/// Where the head scanner is within the current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// The request-line method; `cands` are the `METHODS` still matching after `pos` bytes.
    Method { pos: u8, cands: u8 },
    /// A field name; `cands` are the `FIELDS` still matching after `pos` bytes.
    Name { pos: u8, cands: u8 },
    /// The value of the field with bit `field` (0 for any other field).
    Value { field: u8 },
    /// The rest of the line does not matter.
    Skip,
}

/// What the current request head has said so far. Fixed size: nothing is buffered.
#[derive(Debug, Clone, Copy)]
struct Head {
    request_line_done: bool,
    /// No byte other than CR on the current line yet.
    line_empty: bool,
    line: Line,
    method: u8,
    fields: u8,
    /// The value being parsed from a `Content-Length` element, if any digit was seen.
    cl_current: Option<u64>,
    cl: Option<u64>,
    /// A `Content-Length` value hyper will refuse (it answers 400 and closes).
    cl_bad: bool,
}

/// Follows the bytes of one downstream HTTP/1.1 connection and flags a request head that
/// carries both `Content-Length` and `Transfer-Encoding`. Bounded state, no allocation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scanner {
    state: State,
    head: Head,
}

/// Progress of writing the 400 answer on the raw stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reject {
    None,
    Writing(usize),
    Flushing,
    ShuttingDown,
    Done,
}

pin_project_lite::pin_project! {
    /// The plaintext stream hyper reads from, with the scanner on the read side. When a
    /// smuggling head is seen, hyper is given no byte of that read, the 400 answer is written
    /// here, the stream is shut down, and hyper reads end-of-stream; what hyper writes after
    /// that is discarded so it cannot interleave with the answer.
    pub(crate) struct SmuggleGuard<T> {
        #[pin]
        inner: T,
        scanner: Scanner,
        reject: Reject,
    }
}

impl Head {
    fn new() -> Self {
        Head {
            request_line_done: false,
            line_empty: true,
            line: Line::Method {
                pos: 0,
                cands: ALL_METHODS,
            },
            method: 0,
            fields: 0,
            cl_current: None,
            cl: None,
            cl_bad: false,
        }
    }

    /// Whether the bytes up to the next LF cannot change what the head says: a line whose
    /// method or field name has matched none of the words the framer acts on, or a value
    /// other than `Content-Length`'s. CR is ignored in a head, so only LF matters.
    fn rest_of_line_is_irrelevant(&self) -> bool {
        match self.line {
            Line::Skip => true,
            Line::Value { field } => field != FIELD_CL,
            // The method is read at the first space; 0 candidates means `complete` gives 0.
            Line::Method { pos, cands } => cands == 0 && pos > 0,
            // An obsolete fold is decided at position 0; after that only the LF matters.
            Line::Name { pos, cands } => cands == 0 && pos > 0,
        }
    }

    /// Ends one `Content-Length` element; differing values are refused by hyper.
    fn commit_cl(&mut self) {
        if let Some(v) = self.cl_current.take() {
            match self.cl {
                Some(prev) if prev != v => self.cl_bad = true,
                _ => self.cl = Some(v),
            }
        }
    }

    fn start_line(&mut self) {
        self.line_empty = true;
        self.line = if self.request_line_done {
            Line::Name {
                pos: 0,
                cands: ALL_FIELDS,
            }
        } else {
            Line::Method {
                pos: 0,
                cands: ALL_METHODS,
            }
        };
    }

    /// One byte of the current line (not CR or LF).
    fn byte(&mut self, b: u8) {
        self.line_empty = false;
        self.line = match self.line {
            Line::Method { pos, cands } => {
                if b == b' ' {
                    self.method = complete(&METHODS, pos, cands);
                    Line::Skip
                } else {
                    Line::Method {
                        pos: pos.saturating_add(1),
                        cands: narrow(&METHODS, pos, cands, b),
                    }
                }
            }
            Line::Name { pos, cands } => match b {
                b':' => {
                    let field = complete(&FIELDS, pos, cands);
                    self.fields |= field;
                    Line::Value { field }
                }
                // A line starting with whitespace is an obsolete fold, which hyper refuses.
                b' ' | b'\t' if pos == 0 => Line::Skip,
                _ => Line::Name {
                    pos: pos.saturating_add(1),
                    cands: narrow(&FIELDS, pos, cands, b),
                },
            },
            Line::Value { field } if field == FIELD_CL => {
                match b {
                    b'0'..=b'9' => {
                        let digit = u64::from(b - b'0');
                        match self
                            .cl_current
                            .unwrap_or(0)
                            .checked_mul(10)
                            .and_then(|v| v.checked_add(digit))
                        {
                            Some(v) => self.cl_current = Some(v),
                            None => self.cl_bad = true,
                        }
                    }
                    b',' => self.commit_cl(),
                    b' ' | b'\t' => {}
                    _ => self.cl_bad = true,
                }
                Line::Value { field }
            }
            other => other,
        };
    }
}

/// The candidates among `words` that still match once byte `b` is at position `pos`.
fn narrow(words: &[&[u8]], pos: u8, cands: u8, b: u8) -> u8 {
    let mut out = 0;
    for (i, w) in words.iter().enumerate() {
        let bit = 1 << i;
        if cands & bit != 0 && w.get(usize::from(pos)) == Some(&b.to_ascii_lowercase()) {
            out |= bit;
        }
    }
    out
}

/// The candidate among `words` matched in full by `pos` bytes, or 0.
fn complete(words: &[&[u8]], pos: u8, cands: u8) -> u8 {
    let mut out = 0;
    for (i, w) in words.iter().enumerate() {
        let bit = 1 << i;
        if cands & bit != 0 && w.len() == usize::from(pos) {
            out |= bit;
        }
    }
    out
}

impl Scanner {
    /// A scanner at the start of a connection.
    pub(crate) fn new() -> Self {
        Scanner {
            state: State::Head,
            head: Head::new(),
        }
    }

    /// Follows `bytes`, the next bytes read from the client. Once it says
    /// [`Verdict::Reject`] it keeps saying so.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Verdict {
        let mut rest = bytes;
        while !rest.is_empty() {
            match self.state {
                State::Opaque => return Verdict::Pass,
                State::Rejected => return Verdict::Reject,
                State::Body(left) | State::ChunkData(left) => {
                    let take = usize::try_from(left).map_or(rest.len(), |l| l.min(rest.len()));
                    // `take` is at most `left`, so it fits.
                    let left = left - u64::try_from(take).unwrap_or(left);
                    rest = &rest[take..];
                    self.state = match self.state {
                        State::Body(_) if left == 0 => self.next_head(),
                        State::Body(_) => State::Body(left),
                        _ if left == 0 => State::ChunkDataEnd,
                        _ => State::ChunkData(left),
                    };
                }
                State::Head if self.head.rest_of_line_is_irrelevant() => {
                    // Most of a head is field values and names the framer ignores: jump to the
                    // line's end instead of stepping byte by byte.
                    match memchr::memchr(b'\n', rest) {
                        Some(at) => {
                            rest = &rest[at..];
                            // Marks the line as non-empty, as the skipped bytes would have.
                            self.head.line_empty = false;
                        }
                        None => {
                            self.head.line_empty = false;
                            break;
                        }
                    }
                    let (&b, tail) = match rest.split_first() {
                        Some(split) => split,
                        None => break,
                    };
                    rest = tail;
                    self.state = self.step(b);
                }
                _ => {
                    let (&b, tail) = match rest.split_first() {
                        Some(split) => split,
                        None => break,
                    };
                    rest = tail;
                    self.state = self.step(b);
                }
            }
        }
        if self.state == State::Rejected {
            Verdict::Reject
        } else {
            Verdict::Pass
        }
    }

    fn next_head(&mut self) -> State {
        self.head = Head::new();
        State::Head
    }

    /// One byte in a state that reads byte by byte.
    fn step(&mut self, b: u8) -> State {
        match self.state {
            State::Head => self.head_byte(b),
            State::ChunkSize { size } => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    let digit = match b {
                        b'0'..=b'9' => b - b'0',
                        _ => (b | 0x20) - b'a' + 10,
                    };
                    match size.checked_mul(16) {
                        Some(v) => State::ChunkSize {
                            size: v + u64::from(digit),
                        },
                        // hyper refuses a chunk size this large and closes.
                        None => State::Opaque,
                    }
                }
                b'\n' => self.chunk_line_end(size),
                _ => State::ChunkExt { size },
            },
            State::ChunkExt { size } => match b {
                b'\n' => self.chunk_line_end(size),
                _ => State::ChunkExt { size },
            },
            State::ChunkDataEnd => match b {
                b'\n' => State::ChunkSize { size: 0 },
                _ => State::ChunkDataEnd,
            },
            State::Trailers { empty } => match b {
                b'\n' if empty => self.next_head(),
                b'\n' => State::Trailers { empty: true },
                b'\r' => State::Trailers { empty },
                _ => State::Trailers { empty: false },
            },
            other => other,
        }
    }

    fn chunk_line_end(&mut self, size: u64) -> State {
        if size == 0 {
            State::Trailers { empty: true }
        } else {
            State::ChunkData(size)
        }
    }

    fn head_byte(&mut self, b: u8) -> State {
        let head = &mut self.head;
        match b {
            b'\r' => State::Head,
            b'\n' => {
                if !head.request_line_done {
                    if head.line_empty {
                        // Empty lines before a request line are ignored, as hyper does.
                        return State::Head;
                    }
                    if let Line::Method { pos, cands } = head.line {
                        head.method = complete(&METHODS, pos, cands);
                    }
                    head.request_line_done = true;
                    if head.method & METHOD_PRI != 0 {
                        // The HTTP/2 connection preface: h2c from here on.
                        return State::Opaque;
                    }
                } else if head.line_empty {
                    return self.head_end();
                } else if head.line == (Line::Value { field: FIELD_CL }) {
                    head.commit_cl();
                }
                head.start_line();
                State::Head
            }
            _ => {
                head.byte(b);
                State::Head
            }
        }
    }

    /// The blank line ending a head: decide, then frame the body as hyper will.
    fn head_end(&mut self) -> State {
        let head = self.head;
        let has_cl = head.fields & FIELD_CL != 0;
        let has_te = head.fields & FIELD_TE != 0;
        if has_cl && has_te {
            return State::Rejected;
        }
        if head.method & METHOD_CONNECT != 0 || head.fields & FIELD_UPGRADE != 0 {
            return State::Opaque;
        }
        if has_te {
            // A non-chunked final coding is refused by hyper, which then closes.
            return State::ChunkSize { size: 0 };
        }
        if head.cl_bad {
            return State::Opaque;
        }
        match head.cl {
            Some(n) if n > 0 => State::Body(n),
            _ => self.next_head(),
        }
    }
}

impl<T> SmuggleGuard<T> {
    /// Wraps the plaintext stream of one downstream connection.
    pub(crate) fn new(inner: T) -> Self {
        SmuggleGuard {
            inner,
            scanner: Scanner::new(),
            reject: Reject::None,
        }
    }
}

/// Writes the 400 answer, flushes and shuts the stream down; resolves when done (or failed).
fn poll_reject<T: AsyncWrite>(
    mut inner: Pin<&mut T>,
    state: &mut Reject,
    cx: &mut Context<'_>,
) -> Poll<()> {
    loop {
        *state = match *state {
            Reject::None | Reject::Done => return Poll::Ready(()),
            Reject::Writing(done) if done >= REJECT_RESPONSE.len() => Reject::Flushing,
            Reject::Writing(done) => {
                match ready!(inner.as_mut().poll_write(cx, &REJECT_RESPONSE[done..])) {
                    Ok(0) | Err(_) => Reject::Done,
                    Ok(n) => Reject::Writing(done + n),
                }
            }
            Reject::Flushing => match ready!(inner.as_mut().poll_flush(cx)) {
                Ok(()) => Reject::ShuttingDown,
                Err(_) => Reject::Done,
            },
            Reject::ShuttingDown => {
                let _ = ready!(inner.as_mut().poll_shutdown(cx));
                Reject::Done
            }
        };
    }
}

impl<T: AsyncRead + AsyncWrite> AsyncRead for SmuggleGuard<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut this = self.project();
        if *this.reject == Reject::None {
            let before = buf.filled().len();
            ready!(this.inner.as_mut().poll_read(cx, buf))?;
            if this.scanner.feed(&buf.filled()[before..]) == Verdict::Pass {
                return Poll::Ready(Ok(()));
            }
            // hyper must not see the end of this head; the rest of the read goes with it.
            buf.set_filled(before);
            tracing::debug!("request with both Content-Length and Transfer-Encoding: 400");
            *this.reject = Reject::Writing(0);
        }
        ready!(poll_reject(this.inner, this.reject, cx));
        // End of stream: hyper closes the connection.
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite> AsyncWrite for SmuggleGuard<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        if *this.reject != Reject::None {
            return Poll::Ready(Ok(buf.len()));
        }
        this.inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        if *this.reject != Reject::None {
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        this.inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        if *this.reject != Reject::None {
            return Poll::Ready(Ok(()));
        }
        this.inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        if *this.reject != Reject::None {
            ready!(poll_reject(this.inner, this.reject, cx));
            return Poll::Ready(Ok(()));
        }
        this.inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `stream` split at every byte boundary (and whole) and checks all agree.
    fn verdict_split_everywhere(stream: &[u8]) -> Verdict {
        let mut whole = Scanner::new();
        let expected = whole.feed(stream);
        for at in 0..=stream.len() {
            let mut s = Scanner::new();
            let first = s.feed(&stream[..at]);
            let second = s.feed(&stream[at..]);
            let got = if first == Verdict::Reject || second == Verdict::Reject {
                Verdict::Reject
            } else {
                Verdict::Pass
            };
            assert_eq!(got, expected, "split at {at}");
        }
        let mut bytewise = Scanner::new();
        let mut got = Verdict::Pass;
        for b in stream {
            if bytewise.feed(std::slice::from_ref(b)) == Verdict::Reject {
                got = Verdict::Reject;
            }
        }
        assert_eq!(got, expected, "byte by byte");
        expected
    }

    #[test]
    fn both_headers_in_the_first_head_are_rejected() {
        for req in [
            &b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nhost: a\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\nCONTENT-LENGTH:5\nTRANSFER-ENCODING:chunked\n\n",
            b"\r\nPOST / HTTP/1.1\r\ncontent-length: 0\r\ntransfer-encoding: gzip\r\n\r\n",
        ] {
            assert_eq!(verdict_split_everywhere(req), Verdict::Reject);
        }
    }

    #[test]
    fn plain_requests_pass() {
        for req in [
            &b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            // Look-alike names are other fields.
            b"GET / HTTP/1.1\r\ncontent-length-x: 1\r\nx-transfer-encoding: chunked\r\ncontent-lengt: 1\r\n\r\n",
            // Names in values do not count.
            b"GET / HTTP/1.1\r\nx: content-length: 1\r\ny: transfer-encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(verdict_split_everywhere(req), Verdict::Pass);
        }
    }

    #[test]
    fn bodies_are_skipped_and_the_next_head_is_scanned() {
        // The bodies hold header-like lines that must not count.
        let body = b"content-length: 1\r\ntransfer-encoding: chunked\r\n\r\n";
        let mut keepalive =
            format!("POST /a HTTP/1.1\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
        keepalive.extend_from_slice(body);
        keepalive.extend_from_slice(
            b"POST /b HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n30\r\n",
        );
        keepalive.extend_from_slice(body);
        keepalive.extend_from_slice(b"\r\n0\r\nx-trailer: content-length\r\n\r\n");
        keepalive.extend_from_slice(b"GET /c HTTP/1.1\r\nhost: a\r\n\r\n");
        assert_eq!(verdict_split_everywhere(&keepalive), Verdict::Pass);

        let mut smuggled = keepalive.clone();
        smuggled.extend_from_slice(
            b"POST /d HTTP/1.1\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        );
        assert_eq!(verdict_split_everywhere(&smuggled), Verdict::Reject);
    }

    #[test]
    fn scanning_stops_where_the_stream_is_not_http1_messages() {
        let mut upgraded =
            b"GET / HTTP/1.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n".to_vec();
        upgraded.extend_from_slice(
            b"POST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
        );
        assert_eq!(verdict_split_everywhere(&upgraded), Verdict::Pass);
        let mut connect = b"CONNECT a:443 HTTP/1.1\r\nhost: a:443\r\n\r\n".to_vec();
        connect.extend_from_slice(b"content-length: 1\r\ntransfer-encoding: chunked\r\n\r\n");
        assert_eq!(verdict_split_everywhere(&connect), Verdict::Pass);
        let preface =
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\ncontent-length: 1\r\ntransfer-encoding: x\r\n\r\n";
        assert_eq!(verdict_split_everywhere(preface), Verdict::Pass);
    }

    #[test]
    fn oversized_chunk_size_stops_scanning() {
        let req = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nfffffffffffffffff\r\n";
        let mut s = Scanner::new();
        assert_eq!(s.feed(req), Verdict::Pass);
        assert_eq!(s.state, State::Opaque);
    }

    #[tokio::test]
    async fn guard_answers_400_and_hides_the_head() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(1024);
        let mut guard = SmuggleGuard::new(server);
        let (mut client_rd, mut client_wr) = tokio::io::split(client);
        client_wr
            .write_all(b"GET /ok HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = guard.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET /ok HTTP/1.1\r\n\r\n");
        client_wr
            .write_all(
                b"POST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
            )
            .await
            .unwrap();
        assert_eq!(guard.read(&mut buf).await.unwrap(), 0);
        // Writes after the rejection are discarded.
        guard.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        drop(guard);
        let mut answer = Vec::new();
        client_rd.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, REJECT_RESPONSE);
    }
}
