//! Local replies: the responses the proxy makes itself, in Envoy's words, shaped as gRPC
//! trailers-only responses when the request was gRPC.

use http::{HeaderValue, Response, StatusCode, header};

use crate::body::RespBody;

/// Why the proxy answered on its own. Carries Envoy's response flag for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalReason {
    /// No route matched (NR), or DROP_ALL refused an unknown destination.
    NoRoute,
    /// No endpoint to send to (UH).
    NoHealthyUpstream,
    /// Connecting to the upstream failed (UF).
    ConnectFailure,
    /// The upstream reset or closed before response headers (UR).
    UpstreamReset,
    /// The per-request timeout fired (UT).
    Timeout,
    /// A circuit breaker (`connectionPool` limit) refused the request (UO).
    Overflow,
    /// The request could not be forwarded as sent (bad authority, body larger than announced).
    BadRequest,
}

impl LocalReason {
    /// Envoy's `%RESPONSE_FLAGS%` short code.
    pub fn flag(self) -> &'static str {
        match self {
            LocalReason::NoRoute => "NR",
            LocalReason::NoHealthyUpstream => "UH",
            LocalReason::ConnectFailure => "UF",
            LocalReason::UpstreamReset => "UR",
            LocalReason::Timeout => "UT",
            LocalReason::Overflow => "UO",
            LocalReason::BadRequest => "DPE",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            LocalReason::NoRoute => StatusCode::NOT_FOUND,
            LocalReason::NoHealthyUpstream
            | LocalReason::ConnectFailure
            | LocalReason::UpstreamReset
            | LocalReason::Overflow => StatusCode::SERVICE_UNAVAILABLE,
            LocalReason::Timeout => StatusCode::GATEWAY_TIMEOUT,
            LocalReason::BadRequest => StatusCode::BAD_REQUEST,
        }
    }

    fn body(self) -> &'static str {
        match self {
            LocalReason::NoRoute => "",
            LocalReason::NoHealthyUpstream => "no healthy upstream",
            LocalReason::ConnectFailure => {
                "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
            }
            LocalReason::UpstreamReset => {
                "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
            }
            LocalReason::Timeout => "upstream request timeout",
            LocalReason::Overflow => {
                "upstream connect error or disconnect/reset before headers. reset reason: overflow"
            }
            LocalReason::BadRequest => "bad request",
        }
    }

    /// gRPC status code for the same failure (as Envoy maps HTTP status to gRPC).
    fn grpc_status(self) -> &'static str {
        match self {
            LocalReason::NoRoute => "12",
            LocalReason::NoHealthyUpstream
            | LocalReason::ConnectFailure
            | LocalReason::UpstreamReset
            | LocalReason::Overflow => "14",
            LocalReason::Timeout => "4",
            LocalReason::BadRequest => "13",
        }
    }
}

/// Builds the local reply for `reason`.
pub fn local_reply(reason: LocalReason, grpc: bool) -> Response<RespBody> {
    let mut resp = if grpc {
        let mut r = Response::new(RespBody::empty());
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(
            "grpc-status",
            HeaderValue::from_static(reason.grpc_status()),
        );
        if let Ok(msg) = HeaderValue::from_str(reason.body()) {
            h.insert("grpc-message", msg);
        }
        r
    } else {
        let body = reason.body();
        let mut r = Response::new(RespBody::full(body));
        *r.status_mut() = reason.status();
        if !body.is_empty() {
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        r
    };
    resp.extensions_mut().insert(reason);
    resp
}
