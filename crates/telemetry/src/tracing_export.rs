//! Distributed tracing: sampling decisions, finished spans, and background exporters (OTLP over
//! HTTP/JSON, HTTP/protobuf or gRPC; X-Ray daemon over UDP) fed through bounded queues that never
//! block a request.

pub mod xray;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::trace_context::{
    B3, TRACEPARENT, TraceContext, TraceFormats, X_AMZN_TRACE_ID, X_B3_TRACE_ID, extract,
};
pub use xray::XrayDaemonOptions;

/// Counter of spans lost because the export queue was full or the collector failed.
pub const SPANS_DROPPED_TOTAL: &str = "outrider_tracing_spans_dropped_total";
/// Counter of spans the collector accepted.
pub const SPANS_EXPORTED_TOTAL: &str = "outrider_tracing_spans_exported_total";
/// Root sampling rate when OTLP export is configured (the OTel SDK's `parentbased_always_on`).
/// Default is 1.0.
pub const DEFAULT_OTLP_SAMPLE_RATE: f64 = 1.0;
/// Root sampling rate when only X-Ray is enabled (App Mesh's X-Ray default). Default is 0.05.
pub const DEFAULT_XRAY_SAMPLE_RATE: f64 = 0.05;
/// Spans the export queue holds before new ones are dropped. Default is 4096.
pub const DEFAULT_QUEUE_CAPACITY: usize = 4096;
/// Spans per export request. Default is 512.
pub const DEFAULT_BATCH_SIZE: usize = 512;
/// How long a partial batch waits before it is sent. Default is 1 s.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Upper bound on one export request, connect included. Default is 10 s.
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// OTLP/HTTP path appended to `OTEL_EXPORTER_OTLP_ENDPOINT`.
pub const OTLP_HTTP_TRACES_PATH: &str = "/v1/traces";
/// OTLP/gRPC method path.
pub const OTLP_GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// Service name when neither `OTEL_SERVICE_NAME` nor a virtual node name is known.
pub const DEFAULT_SERVICE_NAME: &str = "outrider";

/// Why the tracing configuration was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TracingError {
    #[error("{var}: {value:?} is not a valid {what}")]
    Invalid {
        var: &'static str,
        value: String,
        what: &'static str,
    },
}

/// OTLP transport (`OTEL_EXPORTER_OTLP_PROTOCOL`). Default is `http/protobuf`, as in the SDKs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OtlpProtocol {
    /// `http/protobuf`: POST of the binary `ExportTraceServiceRequest`.
    #[default]
    HttpProtobuf,
    /// `http/json`: POST of the protobuf-JSON `ExportTraceServiceRequest`.
    HttpJson,
    /// `grpc`: unary `TraceService/Export` over h2c.
    Grpc,
}

impl OtlpProtocol {
    /// Parses the SDK spelling: `http/protobuf`, `http/json` or `grpc`.
    pub fn parse(s: &str) -> Option<OtlpProtocol> {
        match s.trim() {
            "http/protobuf" => Some(OtlpProtocol::HttpProtobuf),
            "http/json" => Some(OtlpProtocol::HttpJson),
            "grpc" => Some(OtlpProtocol::Grpc),
            _ => None,
        }
    }
}

/// The sampler (`OTEL_TRACES_SAMPLER` / `_ARG`). Default is parent-based with ratio 1.0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    /// Follow an incoming sampled/unsampled decision. Default is true.
    pub parent_based: bool,
    /// Probability that a trace without a decision is sampled, 0..=1. Default is 1.0.
    pub rate: f64,
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler {
            parent_based: true,
            rate: DEFAULT_OTLP_SAMPLE_RATE,
        }
    }
}

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpOptions {
    /// Full URL requests go to (`http://host:port/v1/traces`; for gRPC the authority is used).
    /// Only `http://` is supported.
    pub endpoint: Uri,
    /// Default is `http/protobuf`.
    pub protocol: OtlpProtocol,
    /// Default is [`DEFAULT_QUEUE_CAPACITY`].
    pub queue_capacity: usize,
    /// Default is [`DEFAULT_BATCH_SIZE`].
    pub batch_size: usize,
    /// Default is [`DEFAULT_FLUSH_INTERVAL`].
    pub flush_interval: Duration,
}

impl OtlpOptions {
    /// Export to `endpoint` (a full traces URL) with default batching.
    pub fn new(endpoint: Uri, protocol: OtlpProtocol) -> Self {
        OtlpOptions {
            endpoint,
            protocol,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            batch_size: DEFAULT_BATCH_SIZE,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
        }
    }
}

/// Tracing configuration. Tracing is off (no spans, headers untouched) unless built.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingOptions {
    /// `service.name` of exported spans. Default is `OTEL_SERVICE_NAME`, else the node name.
    pub service_name: String,
    /// None: spans are not exported (propagation only, e.g. X-Ray without a collector).
    pub otlp: Option<OtlpOptions>,
    /// Default is parent-based, 1.0 with OTLP, 0.05 with X-Ray only.
    pub sampler: Sampler,
    /// Also write `X-Amzn-Trace-Id` on every outgoing request. Default is false.
    pub xray: bool,
    /// Send spans as segments to the X-Ray daemon. Default is on (127.0.0.1:2000) with
    /// `ENABLE_ENVOY_XRAY_TRACING=1`, else off.
    pub xray_daemon: Option<XrayDaemonOptions>,
}

impl TracingOptions {
    /// Reads the process environment; see [`TracingOptions::from_lookup`].
    pub fn from_env(node: &str) -> Result<Option<TracingOptions>, TracingError> {
        Self::from_lookup(node, |k| std::env::var(k).ok())
    }

    /// Reads the process environment for a known mesh and node; see
    /// [`TracingOptions::from_lookup_in`].
    pub fn from_env_in(mesh: &str, node: &str) -> Result<Option<TracingOptions>, TracingError> {
        Self::from_lookup_in(mesh, node, |k| std::env::var(k).ok())
    }

    /// As [`TracingOptions::from_lookup_in`], with the mesh taken from `APPMESH_RESOURCE_ARN`
    /// (`...:mesh/<mesh>/virtualNode/<node>`) when it is set.
    pub fn from_lookup(
        node: &str,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<TracingOptions>, TracingError> {
        let mesh = var("APPMESH_RESOURCE_ARN")
            .and_then(|arn| mesh_from_arn(&arn).map(str::to_string))
            .unwrap_or_default();
        Self::from_lookup_in(&mesh, node, var)
    }

    /// Builds options from variables: on when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` or `ENABLE_ENVOY_XRAY_TRACING=1` is set, else `Ok(None)`.
    /// `OTEL_TRACES_SAMPLER_ARG` wins over `XRAY_SAMPLING_RATE` for the root rate. With X-Ray,
    /// segments named `XRAY_SEGMENT_NAME` (default `<mesh>/<node>`) go to
    /// `AWS_XRAY_DAEMON_ADDRESS`, else `127.0.0.1:XRAY_DAEMON_PORT` (default 2000).
    pub fn from_lookup_in(
        mesh: &str,
        node: &str,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<TracingOptions>, TracingError> {
        let get = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let xray = get("ENABLE_ENVOY_XRAY_TRACING").is_some_and(|v| v.trim() == "1");
        let protocol = match get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .map(|v| (v, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"))
            .or_else(|| {
                get("OTEL_EXPORTER_OTLP_PROTOCOL").map(|v| (v, "OTEL_EXPORTER_OTLP_PROTOCOL"))
            }) {
            None => OtlpProtocol::default(),
            Some((v, name)) => OtlpProtocol::parse(&v).ok_or(TracingError::Invalid {
                var: name,
                value: v,
                what: "OTLP protocol (http/protobuf, http/json, grpc)",
            })?,
        };
        let endpoint = match (
            get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(full), _) => Some(("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", full)),
            (None, Some(base)) if protocol == OtlpProtocol::Grpc => {
                Some(("OTEL_EXPORTER_OTLP_ENDPOINT", base))
            }
            (None, Some(base)) => Some((
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!(
                    "{}{OTLP_HTTP_TRACES_PATH}",
                    base.trim().trim_end_matches('/')
                ),
            )),
            (None, None) => None,
        };
        if endpoint.is_none() && !xray {
            return Ok(None);
        }
        let otlp = match endpoint {
            None => None,
            Some((name, url)) => {
                let uri = parse_endpoint(&url).ok_or(TracingError::Invalid {
                    var: name,
                    value: url,
                    what: "http:// URL",
                })?;
                Some(OtlpOptions::new(uri, protocol))
            }
        };
        let mut sampler = Sampler {
            parent_based: true,
            rate: if otlp.is_some() {
                DEFAULT_OTLP_SAMPLE_RATE
            } else {
                DEFAULT_XRAY_SAMPLE_RATE
            },
        };
        if xray && let Some(v) = get("XRAY_SAMPLING_RATE") {
            sampler.rate = parse_rate(&v).ok_or(TracingError::Invalid {
                var: "XRAY_SAMPLING_RATE",
                value: v,
                what: "rate between 0 and 1",
            })?;
        }
        if let Some(name) = get("OTEL_TRACES_SAMPLER") {
            let (parent_based, rate) = match name.trim() {
                "always_on" => (false, Some(1.0)),
                "always_off" => (false, Some(0.0)),
                "traceidratio" => (false, None),
                "parentbased_always_on" => (true, Some(1.0)),
                "parentbased_always_off" => (true, Some(0.0)),
                "parentbased_traceidratio" => (true, None),
                _ => {
                    return Err(TracingError::Invalid {
                        var: "OTEL_TRACES_SAMPLER",
                        value: name,
                        what: "sampler",
                    });
                }
            };
            sampler.parent_based = parent_based;
            match rate {
                Some(r) => sampler.rate = r,
                // The SDK's ratio default is 1.0 when no argument is given.
                None => sampler.rate = 1.0,
            }
        }
        if let Some(v) = get("OTEL_TRACES_SAMPLER_ARG") {
            sampler.rate = parse_rate(&v).ok_or(TracingError::Invalid {
                var: "OTEL_TRACES_SAMPLER_ARG",
                value: v,
                what: "rate between 0 and 1",
            })?;
        }
        let service_name = get("OTEL_SERVICE_NAME")
            .or_else(|| (!node.is_empty()).then(|| node.to_string()))
            .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_string());
        let xray_daemon = if xray {
            let port = match get("XRAY_DAEMON_PORT") {
                None => None,
                Some(v) => Some(v.trim().parse::<u16>().ok().filter(|p| *p != 0).ok_or(
                    TracingError::Invalid {
                        var: "XRAY_DAEMON_PORT",
                        value: v,
                        what: "port",
                    },
                )?),
            };
            let aws = get("AWS_XRAY_DAEMON_ADDRESS");
            let address = xray::daemon_address(aws.as_deref(), port).ok_or_else(|| {
                TracingError::Invalid {
                    var: "AWS_XRAY_DAEMON_ADDRESS",
                    value: aws.clone().unwrap_or_default(),
                    what: "host:port",
                }
            })?;
            Some(XrayDaemonOptions {
                address,
                segment_name: get("XRAY_SEGMENT_NAME")
                    .map(|n| n.trim().to_string())
                    .unwrap_or_else(|| xray::default_segment_name(mesh, node)),
                queue_capacity: DEFAULT_QUEUE_CAPACITY,
            })
        } else {
            None
        };
        Ok(Some(TracingOptions {
            service_name,
            otlp,
            sampler,
            xray,
            xray_daemon,
        }))
    }
}

/// The mesh of an App Mesh resource ARN (`arn:aws:appmesh:<region>:<account>:mesh/<mesh>/...`).
fn mesh_from_arn(arn: &str) -> Option<&str> {
    let (_, rest) = arn.trim().split_once(":mesh/")?;
    let mesh = rest.split('/').next()?;
    (!mesh.is_empty()).then_some(mesh)
}

fn parse_rate(s: &str) -> Option<f64> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|r| (0.0..=1.0).contains(r))
}

fn parse_endpoint(s: &str) -> Option<Uri> {
    let uri: Uri = s.trim().parse().ok()?;
    (uri.scheme_str() == Some("http") && uri.authority().is_some()).then_some(uri)
}

/// OTLP span kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// A request the proxy received (ingress).
    Server,
    /// A request the proxy sent upstream (one per attempt).
    Client,
}

impl SpanKind {
    fn otlp(self) -> u64 {
        match self {
            SpanKind::Server => 2,
            SpanKind::Client => 3,
        }
    }
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
}

/// A span that has ended, ready to export.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedSpan {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<(&'static str, AttrValue)>,
    /// Sets the OTLP status to ERROR.
    pub error: bool,
}

/// The current time in Unix nanoseconds (0 before 1970).
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

enum Msg {
    Span(Box<FinishedSpan>),
    Flush(oneshot::Sender<()>),
}

/// The per-process tracer: sampling, header formats, and the export queues.
pub struct Tracer {
    sampler: Sampler,
    xray: bool,
    /// OTLP exporter.
    queue: Option<mpsc::Sender<Msg>>,
    /// X-Ray daemon exporter.
    xray_queue: Option<mpsc::Sender<Msg>>,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("sampler", &self.sampler)
            .field("xray", &self.xray)
            .field("otlp", &self.queue.is_some())
            .field("xray_daemon", &self.xray_queue.is_some())
            .finish()
    }
}

/// The trace decision of one incoming request.
#[derive(Debug, Clone)]
pub struct RequestTrace {
    /// The context the request came with, or a new root (whose span is never exported).
    pub parent: TraceContext,
    /// False when the request arrived without a context and the proxy started the trace.
    pub continued: bool,
    /// Formats to write on outgoing requests.
    pub formats: TraceFormats,
    /// Whether spans of this request are recorded.
    pub sampled: bool,
}

impl RequestTrace {
    /// The span id the proxy's span for this request has as parent (none for a new root).
    pub fn parent_span_id(&self) -> Option<[u8; 8]> {
        self.continued.then_some(self.parent.span_id)
    }

    /// A child context of the incoming one, with the sampling decision made.
    pub fn child(&self) -> TraceContext {
        let mut c = self.parent.child();
        c.sampled = Some(self.sampled);
        if !self.continued {
            c.parent_span_id = None;
        }
        c
    }
}

impl Tracer {
    /// Starts the tracer; with OTLP or an X-Ray daemon configured, spawns their exporter tasks
    /// on the current Tokio runtime (so call it from inside one).
    pub fn start(opts: &TracingOptions) -> Arc<Tracer> {
        let queue = opts.otlp.as_ref().map(|otlp| {
            let (tx, rx) = mpsc::channel(otlp.queue_capacity.max(1));
            let exporter = Exporter::new(otlp.clone(), &opts.service_name);
            tokio::spawn(exporter.run(rx));
            tx
        });
        let xray_queue = opts.xray_daemon.as_ref().map(|daemon| {
            let (tx, rx) = mpsc::channel(daemon.queue_capacity.max(1));
            tokio::spawn(xray::run(daemon.clone(), rx));
            tx
        });
        Arc::new(Tracer {
            sampler: opts.sampler,
            xray: opts.xray,
            queue,
            xray_queue,
        })
    }

    /// Decides the trace of an incoming request: its context is continued (parent-based
    /// sampling follows its decision) or a new root is started at the sampler's rate.
    pub fn begin(&self, headers: &HeaderMap) -> RequestTrace {
        let incoming = extract(headers);
        let (parent, continued) = match incoming {
            Some(ctx) => (ctx, true),
            None => (TraceContext::new_root(self.sampler.rate), false),
        };
        let sampled = match (continued, self.sampler.parent_based, parent.sampled) {
            (false, _, s) => s == Some(true),
            (true, true, Some(s)) => s,
            _ => {
                let r = self.sampler.rate;
                r >= 1.0 || (r > 0.0 && fastrand::f64() < r)
            }
        };
        let mut formats = if continued {
            formats_present(headers)
        } else {
            TraceFormats::default()
        };
        formats.xray |= self.xray;
        RequestTrace {
            parent,
            continued,
            formats,
            sampled,
        }
    }

    /// True when spans are exported (so building them is worth it).
    pub fn exporting(&self) -> bool {
        self.queue.is_some() || self.xray_queue.is_some()
    }

    /// Queues a finished span for every exporter; never waits. A full queue drops it and
    /// counts [`SPANS_DROPPED_TOTAL`].
    pub fn record(&self, span: FinishedSpan) {
        match (&self.queue, &self.xray_queue) {
            (Some(otlp), Some(xray)) => {
                enqueue(xray, span.clone());
                enqueue(otlp, span);
            }
            (Some(q), None) | (None, Some(q)) => enqueue(q, span),
            (None, None) => {}
        }
    }

    /// Exports every span queued so far; returns when the collector and the X-Ray daemon
    /// exporter are done, or `timeout` passed.
    pub async fn flush(&self, timeout: Duration) {
        let queues = [&self.queue, &self.xray_queue];
        let _ = tokio::time::timeout(timeout, async {
            for queue in queues.into_iter().flatten() {
                let (tx, rx) = oneshot::channel();
                if queue.send(Msg::Flush(tx)).await.is_ok() {
                    let _ = rx.await;
                }
            }
        })
        .await;
    }
}

fn enqueue(queue: &mpsc::Sender<Msg>, span: FinishedSpan) {
    if queue.try_send(Msg::Span(Box::new(span))).is_err() {
        metrics::counter!(SPANS_DROPPED_TOTAL).increment(1);
    }
}

/// Which formats the request carried, so the reply continues in the same dialects.
fn formats_present(headers: &HeaderMap) -> TraceFormats {
    let f = TraceFormats {
        w3c: headers.contains_key(TRACEPARENT),
        b3_multi: headers.contains_key(X_B3_TRACE_ID),
        b3_single: headers.contains_key(B3),
        xray: headers.contains_key(X_AMZN_TRACE_ID),
    };
    if f == (TraceFormats {
        w3c: false,
        b3_multi: false,
        b3_single: false,
        xray: false,
    }) {
        TraceFormats::default()
    } else {
        f
    }
}

type H1Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;
type H2Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

enum Conn {
    None,
    H1(H1Sender),
    H2(H2Sender),
}

/// Why one export failed.
#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error("connect: {0}")]
    Connect(#[from] std::io::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("request: {0}")]
    Request(#[from] http::Error),
    #[error("collector answered {0}")]
    Status(u16),
    #[error("timed out")]
    Timeout,
}

struct Exporter {
    opts: OtlpOptions,
    resource: Resource,
    conn: Conn,
}

struct Resource {
    service_name: String,
}

impl Exporter {
    fn new(opts: OtlpOptions, service_name: &str) -> Self {
        Exporter {
            opts,
            resource: Resource {
                service_name: service_name.to_string(),
            },
            conn: Conn::None,
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let batch_size = self.opts.batch_size.max(1);
        let mut batch: Vec<FinishedSpan> = Vec::with_capacity(batch_size);
        let mut tick = tokio::time::interval(self.opts.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Span(span)) => {
                        batch.push(*span);
                        if batch.len() >= batch_size {
                            self.send(&mut batch).await;
                        }
                    }
                    Some(Msg::Flush(done)) => {
                        self.send(&mut batch).await;
                        let _ = done.send(());
                    }
                    None => {
                        self.send(&mut batch).await;
                        return;
                    }
                },
                _ = tick.tick() => self.send(&mut batch).await,
            }
        }
    }

    async fn send(&mut self, batch: &mut Vec<FinishedSpan>) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        let result = tokio::time::timeout(DEFAULT_EXPORT_TIMEOUT, self.export(batch))
            .await
            .unwrap_or(Err(ExportError::Timeout));
        batch.clear();
        match result {
            Ok(()) => metrics::counter!(SPANS_EXPORTED_TOTAL).increment(n),
            Err(e) => {
                // The next batch reconnects.
                self.conn = Conn::None;
                metrics::counter!(SPANS_DROPPED_TOTAL).increment(n);
                tracing::warn!(error = %e, spans = n, "span export failed");
            }
        }
    }

    async fn export(&mut self, spans: &[FinishedSpan]) -> Result<(), ExportError> {
        let (body, content_type, path) = match self.opts.protocol {
            OtlpProtocol::HttpJson => (
                Bytes::from(encode_json(&self.resource.service_name, spans)),
                "application/json",
                None,
            ),
            OtlpProtocol::HttpProtobuf => (
                encode_protobuf(&self.resource.service_name, spans).freeze(),
                "application/x-protobuf",
                None,
            ),
            OtlpProtocol::Grpc => {
                let msg = encode_protobuf(&self.resource.service_name, spans);
                let mut framed = BytesMut::with_capacity(msg.len() + 5);
                framed.put_u8(0);
                framed.put_u32(msg.len() as u32);
                framed.extend_from_slice(&msg);
                (framed.freeze(), "application/grpc", Some(OTLP_GRPC_PATH))
            }
        };
        let endpoint = &self.opts.endpoint;
        let authority = endpoint
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default();
        let grpc = self.opts.protocol == OtlpProtocol::Grpc;
        let mut b = Request::post(match path {
            Some(p) => format!("http://{authority}{p}"),
            None => endpoint.to_string(),
        })
        .header(http::header::CONTENT_TYPE, content_type);
        if grpc {
            b = b.header(http::header::TE, "trailers");
        } else {
            b = b.header(http::header::HOST, &authority);
        }
        let req = b.body(Full::new(body))?;
        let resp = if grpc {
            let sender = self.h2(&authority).await?;
            sender.send_request(req).await?
        } else {
            let sender = self.h1(&authority).await?;
            sender.send_request(req).await?
        };
        let status = resp.status();
        let (head, body) = resp.into_parts();
        let collected = body.collect().await?;
        if !status.is_success() {
            return Err(ExportError::Status(status.as_u16()));
        }
        if grpc {
            let code = collected
                .trailers()
                .and_then(|t| t.get("grpc-status"))
                .or_else(|| head.headers.get("grpc-status"))
                .map(|v| v.as_bytes().to_vec());
            if code.as_deref().is_some_and(|c| c != b"0") {
                return Err(ExportError::Status(status.as_u16()));
            }
        }
        Ok(())
    }

    async fn h1(&mut self, authority: &str) -> Result<&mut H1Sender, ExportError> {
        if let Conn::H1(s) = &mut self.conn
            && s.ready().await.is_err()
        {
            self.conn = Conn::None;
        }
        if !matches!(self.conn, Conn::H1(_)) {
            let io = TokioIo::new(TcpStream::connect(authority).await?);
            let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            self.conn = Conn::H1(sender);
        }
        match &mut self.conn {
            Conn::H1(s) => Ok(s),
            _ => Err(ExportError::Timeout),
        }
    }

    async fn h2(&mut self, authority: &str) -> Result<&mut H2Sender, ExportError> {
        if let Conn::H2(s) = &mut self.conn
            && s.ready().await.is_err()
        {
            self.conn = Conn::None;
        }
        if !matches!(self.conn, Conn::H2(_)) {
            let io = TokioIo::new(TcpStream::connect(authority).await?);
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            self.conn = Conn::H2(sender);
        }
        match &mut self.conn {
            Conn::H2(s) => Ok(s),
            _ => Err(ExportError::Timeout),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The OTLP/JSON `ExportTraceServiceRequest` (ids as hex, 64-bit integers as strings).
pub fn encode_json(service_name: &str, spans: &[FinishedSpan]) -> Vec<u8> {
    let spans: Vec<serde_json::Value> = spans
        .iter()
        .map(|s| {
            let attrs: Vec<serde_json::Value> = s
                .attributes
                .iter()
                .map(|(k, v)| {
                    let value = match v {
                        AttrValue::Str(x) => serde_json::json!({"stringValue": x}),
                        AttrValue::Int(i) => serde_json::json!({"intValue": i.to_string()}),
                    };
                    serde_json::json!({"key": k, "value": value})
                })
                .collect();
            let mut span = serde_json::json!({
                "traceId": hex(&s.trace_id),
                "spanId": hex(&s.span_id),
                "name": s.name,
                "kind": s.kind.otlp(),
                "startTimeUnixNano": s.start_unix_nanos.to_string(),
                "endTimeUnixNano": s.end_unix_nanos.to_string(),
                "attributes": attrs,
                "status": {"code": if s.error { 2 } else { 0 }},
            });
            if let (Some(p), Some(obj)) = (s.parent_span_id, span.as_object_mut()) {
                obj.insert("parentSpanId".into(), hex(&p).into());
            }
            span
        })
        .collect();
    let doc = serde_json::json!({
        "resourceSpans": [{
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": service_name}},
            ]},
            "scopeSpans": [{
                "scope": {"name": "outrider", "version": env!("CARGO_PKG_VERSION")},
                "spans": spans,
            }],
        }],
    });
    serde_json::to_vec(&doc).unwrap_or_default()
}

// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;

fn put_varint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

fn put_tag(buf: &mut BytesMut, field: u32, wire: u8) {
    put_varint(buf, (u64::from(field) << 3) | u64::from(wire));
}

fn put_bytes(buf: &mut BytesMut, field: u32, data: &[u8]) {
    put_tag(buf, field, LEN);
    put_varint(buf, data.len() as u64);
    buf.extend_from_slice(data);
}

fn put_message(buf: &mut BytesMut, field: u32, f: impl FnOnce(&mut BytesMut)) {
    let mut inner = BytesMut::new();
    f(&mut inner);
    put_bytes(buf, field, &inner);
}

fn put_key_value(buf: &mut BytesMut, field: u32, key: &str, value: &AttrValue) {
    put_message(buf, field, |kv| {
        put_bytes(kv, 1, key.as_bytes());
        put_message(kv, 2, |any| match value {
            AttrValue::Str(s) => put_bytes(any, 1, s.as_bytes()),
            AttrValue::Int(i) => {
                put_tag(any, 3, VARINT);
                put_varint(any, *i as u64);
            }
        });
    });
}

/// The binary `ExportTraceServiceRequest` (opentelemetry/proto/collector/trace/v1).
pub fn encode_protobuf(service_name: &str, spans: &[FinishedSpan]) -> BytesMut {
    let mut out = BytesMut::new();
    put_message(&mut out, 1, |rs| {
        put_message(rs, 1, |res| {
            put_key_value(res, 1, "service.name", &AttrValue::Str(service_name.into()));
        });
        put_message(rs, 2, |ss| {
            put_message(ss, 1, |scope| {
                put_bytes(scope, 1, b"outrider");
                put_bytes(scope, 2, env!("CARGO_PKG_VERSION").as_bytes());
            });
            for s in spans {
                put_message(ss, 2, |sp| {
                    put_bytes(sp, 1, &s.trace_id);
                    put_bytes(sp, 2, &s.span_id);
                    if let Some(p) = &s.parent_span_id {
                        put_bytes(sp, 4, p);
                    }
                    put_bytes(sp, 5, s.name.as_bytes());
                    put_tag(sp, 6, VARINT);
                    put_varint(sp, s.kind.otlp());
                    put_tag(sp, 7, FIXED64);
                    sp.put_u64_le(s.start_unix_nanos);
                    put_tag(sp, 8, FIXED64);
                    sp.put_u64_le(s.end_unix_nanos);
                    for (k, v) in &s.attributes {
                        put_key_value(sp, 9, k, v);
                    }
                    if s.error {
                        put_message(sp, 15, |st| {
                            put_tag(st, 3, VARINT);
                            put_varint(st, 2);
                        });
                    }
                });
            }
        });
    });
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    fn span() -> FinishedSpan {
        FinishedSpan {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: Some([3; 8]),
            name: "ingress".into(),
            kind: SpanKind::Server,
            start_unix_nanos: 10,
            end_unix_nanos: 20,
            attributes: vec![
                ("http.request.method", AttrValue::Str("GET".into())),
                ("http.response.status_code", AttrValue::Int(200)),
            ],
            error: true,
        }
    }

    #[test]
    fn off_without_variables() {
        assert_eq!(TracingOptions::from_lookup("n", env(&[])).unwrap(), None);
        let only_name = [("OTEL_SERVICE_NAME", "x")];
        assert_eq!(
            TracingOptions::from_lookup("n", env(&only_name)).unwrap(),
            None
        );
    }

    #[test]
    fn otlp_endpoint_and_defaults() {
        let vars = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")];
        let o = TracingOptions::from_lookup("node-a", env(&vars))
            .unwrap()
            .unwrap();
        let otlp = o.otlp.unwrap();
        assert_eq!(otlp.endpoint.to_string(), "http://c:4318/v1/traces");
        assert_eq!(otlp.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(o.service_name, "node-a");
        assert_eq!(o.sampler, Sampler::default());
        assert!(!o.xray);
    }

    #[test]
    fn traces_endpoint_wins_and_protocol_parsed() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:9/x"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_SERVICE_NAME", "svc"),
        ];
        let o = TracingOptions::from_lookup("n", env(&vars))
            .unwrap()
            .unwrap();
        let otlp = o.otlp.unwrap();
        assert_eq!(otlp.endpoint.to_string(), "http://t:9/x");
        assert_eq!(otlp.protocol, OtlpProtocol::HttpJson);
        assert_eq!(o.service_name, "svc");
    }

    #[test]
    fn xray_only_samples_five_percent_or_its_rate() {
        let vars = [("ENABLE_ENVOY_XRAY_TRACING", "1")];
        let o = TracingOptions::from_lookup("n", env(&vars))
            .unwrap()
            .unwrap();
        assert!(o.xray && o.otlp.is_none());
        assert_eq!(o.sampler.rate, DEFAULT_XRAY_SAMPLE_RATE);
        let vars = [
            ("ENABLE_ENVOY_XRAY_TRACING", "1"),
            ("XRAY_SAMPLING_RATE", "0.5"),
        ];
        let o = TracingOptions::from_lookup("n", env(&vars))
            .unwrap()
            .unwrap();
        assert_eq!(o.sampler.rate, 0.5);
    }

    #[test]
    fn xray_daemon_from_variables() {
        let vars = [
            ("ENABLE_ENVOY_XRAY_TRACING", "1"),
            (
                "APPMESH_RESOURCE_ARN",
                "arn:aws:appmesh:us-west-2:111:mesh/shop/virtualNode/cart",
            ),
        ];
        let d = TracingOptions::from_lookup("cart", env(&vars))
            .unwrap()
            .unwrap()
            .xray_daemon
            .unwrap();
        assert_eq!(d.address, "127.0.0.1:2000");
        assert_eq!(d.segment_name, "shop/cart");
        let vars = [
            ("ENABLE_ENVOY_XRAY_TRACING", "1"),
            ("XRAY_DAEMON_PORT", "2100"),
            ("XRAY_SEGMENT_NAME", "custom"),
        ];
        let d = TracingOptions::from_lookup_in("m", "n", env(&vars))
            .unwrap()
            .unwrap()
            .xray_daemon
            .unwrap();
        assert_eq!(
            (d.address.as_str(), d.segment_name.as_str()),
            ("127.0.0.1:2100", "custom")
        );
        let vars = [
            ("ENABLE_ENVOY_XRAY_TRACING", "1"),
            ("XRAY_DAEMON_PORT", "2100"),
            ("AWS_XRAY_DAEMON_ADDRESS", "daemon.local:2200"),
        ];
        let o = TracingOptions::from_lookup_in("m", "n", env(&vars))
            .unwrap()
            .unwrap();
        let d = o.xray_daemon.unwrap();
        assert_eq!(
            (d.address.as_str(), d.segment_name.as_str()),
            ("daemon.local:2200", "m/n")
        );
        let otlp_only = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")];
        let o = TracingOptions::from_lookup_in("m", "n", env(&otlp_only))
            .unwrap()
            .unwrap();
        assert_eq!(o.xray_daemon, None);
        for bad in [
            [
                ("ENABLE_ENVOY_XRAY_TRACING", "1"),
                ("XRAY_DAEMON_PORT", "x"),
            ],
            [
                ("ENABLE_ENVOY_XRAY_TRACING", "1"),
                ("AWS_XRAY_DAEMON_ADDRESS", "nohost"),
            ],
        ] {
            assert!(
                TracingOptions::from_lookup("n", env(&bad)).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn sampler_variables() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ];
        let o = TracingOptions::from_lookup("n", env(&vars))
            .unwrap()
            .unwrap();
        assert_eq!(
            o.sampler,
            Sampler {
                parent_based: false,
                rate: 0.25
            }
        );
    }

    #[test]
    fn bad_values_are_refused() {
        for vars in [
            [("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318"), ("", "")],
            [
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "udp"),
            ],
            [
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                ("OTEL_TRACES_SAMPLER_ARG", "2"),
            ],
            [
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                ("OTEL_TRACES_SAMPLER", "nope"),
            ],
        ] {
            assert!(
                TracingOptions::from_lookup("n", env(&vars)).is_err(),
                "{vars:?}"
            );
        }
    }

    fn tracer(rate: f64, parent_based: bool) -> Tracer {
        Tracer {
            sampler: Sampler { parent_based, rate },
            xray: false,
            queue: None,
            xray_queue: None,
        }
    }

    #[test]
    fn parent_decision_is_followed() {
        let t = tracer(1.0, true);
        let mut h = HeaderMap::new();
        h.insert(
            TRACEPARENT,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
                .parse()
                .unwrap(),
        );
        let rt = t.begin(&h);
        assert!(rt.continued && !rt.sampled);
        assert!(rt.formats.w3c && !rt.formats.b3_multi && !rt.formats.xray);
        let child = rt.child();
        assert_eq!(child.trace_id, rt.parent.trace_id);
        assert_ne!(child.span_id, rt.parent.span_id);
        assert_eq!(child.sampled, Some(false));
        let t0 = tracer(0.0, true);
        h.insert(
            TRACEPARENT,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .unwrap(),
        );
        assert!(t0.begin(&h).sampled);
    }

    #[test]
    fn new_root_uses_rate_and_all_formats() {
        let h = HeaderMap::new();
        let rt = tracer(1.0, true).begin(&h);
        assert!(!rt.continued && rt.sampled);
        assert_eq!(rt.formats, TraceFormats::default());
        assert_eq!(rt.parent_span_id(), None);
        assert_eq!(rt.child().parent_span_id, None);
        assert!(!tracer(0.0, true).begin(&h).sampled);
    }

    #[test]
    fn json_shape() {
        let v: serde_json::Value = serde_json::from_slice(&encode_json("svc", &[span()])).unwrap();
        let rs = &v["resourceSpans"][0];
        assert_eq!(
            rs["resource"]["attributes"][0]["value"]["stringValue"],
            "svc"
        );
        let s = &rs["scopeSpans"][0]["spans"][0];
        assert_eq!(s["traceId"], "01".repeat(16));
        assert_eq!(s["parentSpanId"], "03".repeat(8));
        assert_eq!(s["kind"], 2);
        assert_eq!(s["startTimeUnixNano"], "10");
        assert_eq!(s["attributes"][1]["value"]["intValue"], "200");
        assert_eq!(s["status"]["code"], 2);
    }

    #[test]
    fn protobuf_bytes() {
        let b = encode_protobuf("s", &[span()]);
        // resource_spans (field 1, LEN) then its length.
        assert_eq!(b[0], 0x0a);
        let needle_trace = [&[0x0a, 16][..], &[1u8; 16]].concat();
        assert!(b.windows(18).any(|w| w == needle_trace.as_slice()));
        let needle_start = [&[0x39][..], &10u64.to_le_bytes()].concat();
        assert!(b.windows(9).any(|w| w == needle_start.as_slice()));
        let status = [0x7a, 2, 0x18, 2];
        assert!(b.windows(4).any(|w| w == status));
    }

    #[tokio::test]
    async fn full_queue_drops_without_waiting() {
        let (tx, _rx) = mpsc::channel(1);
        let t = Tracer {
            sampler: Sampler::default(),
            xray: false,
            queue: Some(tx),
            xray_queue: None,
        };
        t.record(span());
        t.record(span());
        // Nothing drains the queue: flush gives up at its timeout instead of hanging.
        t.flush(Duration::from_millis(10)).await;
    }
}
