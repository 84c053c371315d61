//! Per-request behaviour: classify, delay, maybe fail, and answer from pre-built parts.

use std::convert::Infallible;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::body::{ReplyBody, status_trailers};
use crate::config::{ConfigError, Latency, UpstreamConfig};
use crate::grpc::GRPC_UNAVAILABLE;

/// Header naming the upstream on every response.
pub const X_UPSTREAM: HeaderName = HeaderName::from_static("x-upstream");

/// Request header that asks for an echo of the body on any path, when its value is `1`.
pub const X_ECHO: HeaderName = HeaderName::from_static("x-echo");

/// Body of an injected HTTP failure.
pub const FAILURE_BODY: &str = "injected failure\n";

/// `grpc-message` of an injected gRPC failure.
const GRPC_FAILURE_MESSAGE: &str = "injected failure";

const GRPC_ENCODING: HeaderName = HeaderName::from_static("grpc-encoding");

/// Path that echoes a POSTed body.
const ECHO_PATH: &str = "/echo";

const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
const OCTET_STREAM: HeaderValue = HeaderValue::from_static("application/octet-stream");
const APPLICATION_GRPC: HeaderValue = HeaderValue::from_static("application/grpc");

/// Filler byte of a configured-size body.
const FILLER: u8 = b'x';

/// Everything a response needs, built once per server so that requests only clone `Bytes`.
#[derive(Debug)]
pub(crate) struct Prepared {
    name: HeaderValue,
    latency: Latency,
    fail_rate: f64,
    fail_status: StatusCode,
    ok_body: Bytes,
    ok_content_type: HeaderValue,
    fail_body: Bytes,
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    Echo,
    Grpc,
}

impl Prepared {
    pub(crate) fn new(cfg: &UpstreamConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let (ok_body, ok_content_type) = match cfg.body_size {
            None => (
                Bytes::from(format!("hello from {}\n", cfg.name)),
                TEXT_PLAIN,
            ),
            Some(n) => (Bytes::from(vec![FILLER; n]), OCTET_STREAM),
        };
        Ok(Self {
            name: cfg.name_header()?,
            latency: cfg.latency,
            fail_rate: cfg.fail_rate,
            fail_status: cfg.fail_status_code()?,
            ok_body,
            ok_content_type,
            fail_body: Bytes::from_static(FAILURE_BODY.as_bytes()),
        })
    }

    /// Answers one request. Never fails: any trouble reading the request only ends its body.
    pub(crate) async fn handle(
        &self,
        req: Request<Incoming>,
    ) -> Result<Response<ReplyBody>, Infallible> {
        let kind = classify(&req);
        if kind == Kind::Plain {
            // The response waits for the whole request, as an application reading it would.
            drain(req.into_body()).await;
            self.delay().await;
            return Ok(if self.should_fail() {
                self.http_failure()
            } else {
                self.reply(
                    StatusCode::OK,
                    self.ok_content_type.clone(),
                    ReplyBody::full(self.ok_body.clone()),
                )
            });
        }
        self.delay().await;
        if self.should_fail() {
            drain(req.into_body()).await;
            return Ok(match kind {
                Kind::Grpc => self.grpc_failure(),
                _ => self.http_failure(),
            });
        }
        let (parts, body) = req.into_parts();
        Ok(match kind {
            Kind::Grpc => {
                let mut resp =
                    self.reply(StatusCode::OK, APPLICATION_GRPC, ReplyBody::grpc_echo(body));
                // Echoed messages keep their compression, so the encoding must be announced.
                if let Some(encoding) = parts.headers.get(GRPC_ENCODING) {
                    resp.headers_mut().insert(GRPC_ENCODING, encoding.clone());
                }
                resp
            }
            _ => {
                let content_type = parts
                    .headers
                    .get(CONTENT_TYPE)
                    .cloned()
                    .unwrap_or(OCTET_STREAM);
                let mut resp = self.reply(StatusCode::OK, content_type, ReplyBody::echo(body));
                // An exact length lets HTTP/1.1 skip chunked encoding.
                if let Some(len) = parts.headers.get(CONTENT_LENGTH) {
                    resp.headers_mut().insert(CONTENT_LENGTH, len.clone());
                }
                resp
            }
        })
    }

    async fn delay(&self) {
        let d = self.latency.sample();
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }

    fn should_fail(&self) -> bool {
        // Avoid drawing a random number on the common no-fault path.
        self.fail_rate > 0.0 && fastrand::f64() < self.fail_rate
    }

    fn reply(
        &self,
        status: StatusCode,
        content_type: HeaderValue,
        body: ReplyBody,
    ) -> Response<ReplyBody> {
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(CONTENT_TYPE, content_type);
        headers.insert(X_UPSTREAM, self.name.clone());
        resp
    }

    fn http_failure(&self) -> Response<ReplyBody> {
        self.reply(
            self.fail_status,
            TEXT_PLAIN,
            ReplyBody::full(self.fail_body.clone()),
        )
    }

    /// A trailers-only response: status in the headers and an empty body, as gRPC servers send
    /// when a call fails before any message.
    fn grpc_failure(&self) -> Response<ReplyBody> {
        let mut resp = self.reply(StatusCode::OK, APPLICATION_GRPC, ReplyBody::empty());
        extend(
            resp.headers_mut(),
            status_trailers((GRPC_UNAVAILABLE, Some(GRPC_FAILURE_MESSAGE))),
        );
        resp
    }
}

fn classify(req: &Request<Incoming>) -> Kind {
    let headers = req.headers();
    let is_grpc = headers
        .get(CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
    if is_grpc {
        Kind::Grpc
    } else if (req.method() == Method::POST && req.uri().path() == ECHO_PATH)
        || headers.get(X_ECHO).is_some_and(|v| v.as_bytes() == b"1")
    {
        Kind::Echo
    } else {
        Kind::Plain
    }
}

fn extend(headers: &mut HeaderMap, more: HeaderMap) {
    for (name, value) in more {
        if let Some(name) = name {
            headers.insert(name, value);
        }
    }
}

/// Reads a body to its end and drops it. A read error ends it early: the connection is then
/// broken and hyper reports it.
async fn drain(mut body: Incoming) {
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            break;
        }
    }
}
