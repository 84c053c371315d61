//! Request and response bodies as plain enums, so the proxy path names concrete types and boxes
//! nothing per request.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use outrider_policy::Permit;

use crate::h1client::H1Body;
use crate::h1codec::H1BodyError;
use crate::h1server::H1ReqBody;

/// A request body as it arrives from downstream: none, hyper's HTTP/2 stream, or read from an
/// HTTP/1.1 connection by the server of our own.
#[derive(Debug)]
pub enum DownBody {
    Empty,
    H2(Incoming),
    H1(H1ReqBody),
}

impl Body for DownBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            DownBody::Empty => Poll::Ready(None),
            DownBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(BodyError::H1),
            DownBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(BodyError::H2),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            DownBody::Empty => true,
            DownBody::H1(b) => b.is_end_stream(),
            DownBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            DownBody::Empty => SizeHint::with_exact(0),
            DownBody::H1(b) => b.size_hint(),
            DownBody::H2(b) => b.size_hint(),
        }
    }
}

/// A body sent upstream: nothing, bytes kept for replay (retries), or the downstream stream.
#[derive(Debug)]
pub enum ReqBody {
    Empty,
    /// Taken once per attempt from a clone of the buffered bytes.
    Full(Option<Bytes>),
    Stream(DownBody),
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Full(data) => Poll::Ready(data.take().map(|b| Ok(Frame::data(b)))),
            ReqBody::Stream(inner) => Pin::new(inner).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Full(data) => data.is_none(),
            ReqBody::Stream(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |b| b.len() as u64))
            }
            ReqBody::Stream(inner) => inner.size_hint(),
        }
    }
}

/// A body sent downstream: an upstream stream (which gives its HTTP/1 connection back to the
/// pool once fully read), or a local reply.
pub struct RespBody {
    kind: RespKind,
    /// The access-log entry this response completes, with the body bytes sent so far.
    log: Option<Box<LogState>>,
}

struct LogState {
    pending: Option<crate::access::Pending>,
    sent: u64,
    trailers: Option<http::HeaderMap>,
    complete: bool,
}

impl Drop for RespBody {
    fn drop(&mut self) {
        let at_end = self.kind_is_end();
        if let Some(state) = self.log.as_mut()
            && let Some(p) = state.pending.take()
        {
            p.finish(
                state.sent,
                state.trailers.as_ref(),
                state.complete || at_end,
            );
        }
    }
}

enum RespKind {
    Upstream {
        inner: UpstreamBody,
        /// The circuit-breaker slot this exchange holds until its body ends.
        permit: Option<Permit>,
    },
    Full(Option<Bytes>),
}

/// A response body from upstream: hyper's HTTP/2 stream, or an HTTP/1.1 body read from the
/// connection (which goes back to its pool once the body is read to the end).
#[derive(Debug)]
pub enum UpstreamBody {
    H2(Incoming),
    H1(H1Body),
}

/// Why a body ended early: from upstream, or from downstream on its way up.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    H2(#[from] hyper::Error),
    #[error(transparent)]
    H1(#[from] H1BodyError),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            UpstreamBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(BodyError::H1),
            UpstreamBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(BodyError::H2),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::H1(b) => b.is_end_stream(),
            UpstreamBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::H1(b) => b.size_hint(),
            UpstreamBody::H2(b) => b.size_hint(),
        }
    }
}

impl RespBody {
    /// A body streamed from upstream.
    pub(crate) fn upstream(inner: UpstreamBody, permit: Option<Permit>) -> Self {
        let mut body = RespBody {
            kind: RespKind::Upstream { inner, permit },
            log: None,
        };
        body.release_if_done();
        body
    }

    /// A body of known bytes (local replies).
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        RespBody {
            kind: RespKind::Full(if bytes.is_empty() { None } else { Some(bytes) }),
            log: None,
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        RespBody {
            kind: RespKind::Full(None),
            log: None,
        }
    }

    /// Attaches the access-log entry that this body completes.
    pub(crate) fn attach_log(&mut self, pending: crate::access::Pending) {
        self.log = Some(Box::new(LogState {
            pending: Some(pending),
            sent: 0,
            trailers: None,
            complete: false,
        }));
    }

    fn kind_is_end(&self) -> bool {
        match &self.kind {
            RespKind::Full(data) => data.is_none(),
            RespKind::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn observe(&mut self, polled: &Poll<Option<Result<Frame<Bytes>, BodyError>>>) {
        let Some(state) = self.log.as_mut() else {
            return;
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    state.sent += data.len() as u64;
                } else if let Some(t) = frame.trailers_ref() {
                    state.trailers = Some(t.clone());
                }
            }
            Poll::Ready(None) => state.complete = true,
            _ => {}
        }
    }

    /// Frees the circuit-breaker slot of an exchange whose body is already complete.
    fn release_if_done(&mut self) {
        if let RespKind::Upstream { inner, permit } = &mut self.kind
            && inner.is_end_stream()
        {
            permit.take();
        }
    }
}

impl std::fmt::Debug for RespBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RespBody")
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            RespKind::Full(data) => Poll::Ready(data.take().map(|b| Ok(Frame::data(b)))),
            RespKind::Upstream { inner, permit } => {
                let polled = Pin::new(&mut *inner).poll_frame(cx);
                if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_))))
                    || inner.is_end_stream()
                {
                    permit.take();
                }
                polled
            }
        };
        if this.log.is_some() {
            this.observe(&polled);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            RespKind::Full(data) => data.is_none(),
            RespKind::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            RespKind::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |b| b.len() as u64))
            }
            RespKind::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}
