//! The one response body type: a pre-built buffer, a streamed echo, or a gRPC echo with trailers.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::grpc::FrameTracker;

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// A response body of the built-in upstream; a concrete type keeps boxing off the hot path.
#[derive(Debug)]
pub(crate) struct ReplyBody {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// A pre-built buffer, taken on the first poll; `None` once sent or when empty.
    Full(Option<Bytes>),
    /// The request's data frames, sent back as they arrive; its trailers are dropped.
    Echo(Incoming),
    /// The request's gRPC messages, sent back as they arrive, then status trailers.
    Grpc {
        incoming: Incoming,
        tracker: FrameTracker,
        done: bool,
    },
}

impl ReplyBody {
    pub(crate) fn full(data: Bytes) -> Self {
        let data = (!data.is_empty()).then_some(data);
        Self {
            kind: Kind::Full(data),
        }
    }

    pub(crate) fn empty() -> Self {
        Self {
            kind: Kind::Full(None),
        }
    }

    pub(crate) fn echo(incoming: Incoming) -> Self {
        Self {
            kind: Kind::Echo(incoming),
        }
    }

    pub(crate) fn grpc_echo(incoming: Incoming) -> Self {
        Self {
            kind: Kind::Grpc {
                incoming,
                tracker: FrameTracker::default(),
                done: false,
            },
        }
    }
}

impl Body for ReplyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Echo(incoming) => loop {
                match ready!(Pin::new(&mut *incoming).poll_frame(cx)) {
                    Some(Ok(frame)) if frame.is_data() => return Poll::Ready(Some(Ok(frame))),
                    // Request trailers are not part of the echoed content.
                    Some(Ok(_)) => continue,
                    other => return Poll::Ready(other),
                }
            },
            Kind::Grpc {
                incoming,
                tracker,
                done,
            } => {
                if *done {
                    return Poll::Ready(None);
                }
                loop {
                    match ready!(Pin::new(&mut *incoming).poll_frame(cx)) {
                        Some(Ok(frame)) => match frame.into_data() {
                            Ok(data) => {
                                tracker.feed(&data);
                                return Poll::Ready(Some(Ok(Frame::data(data))));
                            }
                            Err(_trailers) => continue,
                        },
                        Some(Err(e)) => {
                            *done = true;
                            return Poll::Ready(Some(Err(e)));
                        }
                        None => {
                            *done = true;
                            let trailers = status_trailers(tracker.outcome().status());
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(data) => data.is_none(),
            Kind::Echo(incoming) => incoming.is_end_stream(),
            Kind::Grpc { done, .. } => *done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Echo(incoming) => incoming.size_hint(),
            Kind::Grpc { .. } => SizeHint::default(),
        }
    }
}

/// Builds `grpc-status` (and `grpc-message` when not OK) headers or trailers.
pub(crate) fn status_trailers((code, message): (&'static str, Option<&'static str>)) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(2);
    map.insert(GRPC_STATUS, HeaderValue::from_static(code));
    if let Some(message) = message {
        map.insert(GRPC_MESSAGE, HeaderValue::from_static(message));
    }
    map
}
