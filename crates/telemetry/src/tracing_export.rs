//! Distributed tracing: sampling decisions, finished spans, and background exporters (OTLP over
//! HTTP/JSON, HTTP/protobuf or gRPC; X-Ray daemon over UDP) fed through bounded queues that never
//! block a request.

pub mod xray;

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{Notify, mpsc, oneshot};

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
/// Name of the OTLP exporter's thread.
const OTLP_THREAD_NAME: &str = "otlp-export";
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
    /// A constant string (method, protocol version): recorded without an allocation.
    Static(&'static str),
    Int(i64),
}

impl AttrValue {
    /// The string of a `Str` or `Static` value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::Str(s) => Some(s),
            AttrValue::Static(s) => Some(s),
            AttrValue::Int(_) => None,
        }
    }
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
    Span(FinishedSpan),
    Flush(oneshot::Sender<()>),
}

/// The request side of the OTLP exporter. The exporter runs on its own thread and is not woken
/// per span: it drains the queue every flush interval, or early when a full batch is waiting or
/// a flush was asked for, so recording a span costs a queue push and an atomic add.
struct OtlpQueue {
    /// None once the tracer is dropped, which tells the exporter to drain and stop.
    tx: Option<mpsc::Sender<Msg>>,
    signal: Arc<Signal>,
    batch_size: usize,
}

/// Shared between the recording side and the exporter thread.
struct Signal {
    /// Spans pushed and not yet taken by the exporter (counted before the push, so never below
    /// the queue's length).
    pending: AtomicUsize,
    wake: Notify,
}

/// The per-process tracer: sampling, header formats, and the export queues.
pub struct Tracer {
    sampler: Sampler,
    xray: bool,
    /// OTLP exporter.
    queue: Option<OtlpQueue>,
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
    /// Starts the tracer. With OTLP configured, the exporter (batch encoding and HTTP) runs on
    /// its own thread with a small current-thread runtime, so it never shares a worker's thread.
    /// With an X-Ray daemon configured, its exporter task is spawned on the current Tokio
    /// runtime (so call it from inside one).
    pub fn start(opts: &TracingOptions) -> Arc<Tracer> {
        let queue = opts.otlp.as_ref().map(|otlp| {
            let (tx, rx) = mpsc::channel(otlp.queue_capacity.max(1));
            let signal = Arc::new(Signal {
                pending: AtomicUsize::new(0),
                wake: Notify::new(),
            });
            let exporter = Exporter::new(otlp.clone(), &opts.service_name);
            spawn_exporter(exporter.run(rx, signal.clone()));
            OtlpQueue {
                tx: Some(tx),
                signal,
                batch_size: otlp.batch_size.max(1),
            }
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
                otlp.push(span);
            }
            (Some(otlp), None) => otlp.push(span),
            (None, Some(xray)) => enqueue(xray, span),
            (None, None) => {}
        }
    }

    /// Exports every span queued so far; returns when the collector and the X-Ray daemon
    /// exporter are done, or `timeout` passed.
    pub async fn flush(&self, timeout: Duration) {
        let otlp = self
            .queue
            .as_ref()
            .and_then(|q| q.tx.as_ref().map(|tx| (tx, &q.signal)));
        let _ = tokio::time::timeout(timeout, async {
            if let Some((tx, signal)) = otlp {
                let (done, rx) = oneshot::channel();
                if tx.send(Msg::Flush(done)).await.is_ok() {
                    signal.wake.notify_one();
                    let _ = rx.await;
                }
            }
            if let Some(queue) = &self.xray_queue {
                let (done, rx) = oneshot::channel();
                if queue.send(Msg::Flush(done)).await.is_ok() {
                    let _ = rx.await;
                }
            }
        })
        .await;
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Some(q) = &mut self.queue {
            // Closing the queue first, then waking, lets the exporter drain, send and stop.
            q.tx.take();
            q.signal.wake.notify_one();
        }
    }
}

impl OtlpQueue {
    /// Never waits; wakes the exporter only when a full batch is waiting.
    fn push(&self, span: FinishedSpan) {
        let Some(tx) = &self.tx else { return };
        let before = self.signal.pending.fetch_add(1, Ordering::Relaxed);
        if tx.try_send(Msg::Span(span)).is_err() {
            self.signal.pending.fetch_sub(1, Ordering::Relaxed);
            metrics::counter!(SPANS_DROPPED_TOTAL).increment(1);
        } else if before + 1 == self.batch_size {
            self.signal.wake.notify_one();
        }
    }
}

fn enqueue(queue: &mpsc::Sender<Msg>, span: FinishedSpan) {
    if queue.try_send(Msg::Span(span)).is_err() {
        metrics::counter!(SPANS_DROPPED_TOTAL).increment(1);
    }
}

/// Runs the exporter on a thread of its own. Should the thread or its runtime not be had, it
/// runs on the caller's runtime instead (as a task sharing the workers' threads).
fn spawn_exporter(fut: impl Future<Output = ()> + Send + 'static) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!(error = %e, "no runtime for the OTLP exporter thread; using a task");
            tokio::spawn(fut);
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name(OTLP_THREAD_NAME.into())
        .spawn(move || rt.block_on(fut));
    if let Err(e) = spawned {
        // The future went with the closure; without an exporter every span is dropped.
        tracing::warn!(error = %e, "OTLP exporter thread not started; spans are not exported");
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

    /// Drains the queue when woken (a full batch, a flush, the tracer dropped) or every flush
    /// interval, and sends what it took; returns once the queue is closed and empty.
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>, signal: Arc<Signal>) {
        let batch_size = self.opts.batch_size.max(1);
        let mut batch: Vec<FinishedSpan> = Vec::with_capacity(batch_size);
        let mut tick = tokio::time::interval(self.opts.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; nothing is queued yet.
        tick.tick().await;
        loop {
            let ticked = tokio::select! {
                _ = signal.wake.notified() => false,
                _ = tick.tick() => true,
            };
            let mut taken = 0;
            let closed = loop {
                match rx.try_recv() {
                    Ok(Msg::Span(span)) => {
                        taken += 1;
                        batch.push(span);
                        if batch.len() >= batch_size {
                            self.send(&mut batch).await;
                        }
                    }
                    Ok(Msg::Flush(done)) => {
                        self.send(&mut batch).await;
                        let _ = done.send(());
                    }
                    Err(TryRecvError::Empty) => break false,
                    Err(TryRecvError::Disconnected) => break true,
                }
            };
            signal.pending.fetch_sub(taken, Ordering::Relaxed);
            if ticked || closed {
                self.send(&mut batch).await;
            }
            if closed {
                return;
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
                        AttrValue::Static(x) => serde_json::json!({"stringValue": x}),
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

fn varint_len(v: u64) -> usize {
    // 7 payload bits per byte; zero still takes one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn tag(field: u32, wire: u8) -> u64 {
    (u64::from(field) << 3) | u64::from(wire)
}

fn put_tag(buf: &mut BytesMut, field: u32, wire: u8) {
    put_varint(buf, tag(field, wire));
}

/// Encoded size of a length-delimited field whose payload is `n` bytes.
fn len_field(field: u32, n: usize) -> usize {
    varint_len(tag(field, LEN)) + varint_len(n as u64) + n
}

/// Encoded size of a varint field.
fn varint_field(field: u32, v: u64) -> usize {
    varint_len(tag(field, VARINT)) + varint_len(v)
}

/// Encoded size of a fixed64 field.
fn fixed64_field(field: u32) -> usize {
    varint_len(tag(field, FIXED64)) + 8
}

/// The header of a length-delimited field; the caller writes exactly `n` payload bytes next.
fn put_len(buf: &mut BytesMut, field: u32, n: usize) {
    put_tag(buf, field, LEN);
    put_varint(buf, n as u64);
}

fn put_bytes(buf: &mut BytesMut, field: u32, data: &[u8]) {
    put_len(buf, field, data.len());
    buf.extend_from_slice(data);
}

/// `AnyValue`: `string_value` (1) or `int_value` (3).
fn any_len(value: &AttrValue) -> usize {
    match value {
        AttrValue::Int(i) => varint_field(3, *i as u64),
        AttrValue::Str(s) => len_field(1, s.len()),
        AttrValue::Static(s) => len_field(1, s.len()),
    }
}

fn put_any(buf: &mut BytesMut, value: &AttrValue) {
    match value {
        AttrValue::Int(i) => {
            put_tag(buf, 3, VARINT);
            put_varint(buf, *i as u64);
        }
        AttrValue::Str(s) => put_bytes(buf, 1, s.as_bytes()),
        AttrValue::Static(s) => put_bytes(buf, 1, s.as_bytes()),
    }
}

/// `KeyValue` payload: `key` (1), `value` (2).
fn key_value_len(key: &str, value: &AttrValue) -> usize {
    len_field(1, key.len()) + len_field(2, any_len(value))
}

fn put_key_value(buf: &mut BytesMut, field: u32, key: &str, value: &AttrValue) {
    put_len(buf, field, key_value_len(key, value));
    put_bytes(buf, 1, key.as_bytes());
    put_len(buf, 2, any_len(value));
    put_any(buf, value);
}

/// `Status` payload with code ERROR (2).
const STATUS_ERROR_LEN: usize = 2;

/// `Span` payload size.
fn span_len(s: &FinishedSpan) -> usize {
    let mut n = len_field(1, s.trace_id.len()) + len_field(2, s.span_id.len());
    if let Some(p) = &s.parent_span_id {
        n += len_field(4, p.len());
    }
    n += len_field(5, s.name.len());
    n += varint_field(6, s.kind.otlp()) + fixed64_field(7) + fixed64_field(8);
    for (k, v) in &s.attributes {
        n += len_field(9, key_value_len(k, v));
    }
    if s.error {
        n += len_field(15, STATUS_ERROR_LEN);
    }
    n
}

fn put_span(buf: &mut BytesMut, s: &FinishedSpan, len: usize) {
    put_len(buf, 2, len);
    put_bytes(buf, 1, &s.trace_id);
    put_bytes(buf, 2, &s.span_id);
    if let Some(p) = &s.parent_span_id {
        put_bytes(buf, 4, p);
    }
    put_bytes(buf, 5, s.name.as_bytes());
    put_tag(buf, 6, VARINT);
    put_varint(buf, s.kind.otlp());
    put_tag(buf, 7, FIXED64);
    buf.put_u64_le(s.start_unix_nanos);
    put_tag(buf, 8, FIXED64);
    buf.put_u64_le(s.end_unix_nanos);
    for (k, v) in &s.attributes {
        put_key_value(buf, 9, k, v);
    }
    if s.error {
        put_len(buf, 15, STATUS_ERROR_LEN);
        put_tag(buf, 3, VARINT);
        put_varint(buf, 2);
    }
}

/// The binary `ExportTraceServiceRequest` (opentelemetry/proto/collector/trace/v1), written
/// in one pass into a buffer sized up front: every message's length is computed before its
/// bytes, so nothing is encoded twice or copied.
pub fn encode_protobuf(service_name: &str, spans: &[FinishedSpan]) -> BytesMut {
    const SERVICE_NAME: &str = "service.name";
    const SCOPE_NAME: &[u8] = b"outrider";
    const SCOPE_VERSION: &[u8] = env!("CARGO_PKG_VERSION").as_bytes();
    // A borrowed service name would need its own variant; one small copy per batch is fine.
    let service = AttrValue::Str(service_name.to_string());
    let resource_len = len_field(1, key_value_len(SERVICE_NAME, &service));
    let scope_len = len_field(1, SCOPE_NAME.len()) + len_field(2, SCOPE_VERSION.len());
    let mut scope_spans_len = len_field(1, scope_len);
    for s in spans {
        scope_spans_len += len_field(2, span_len(s));
    }
    let resource_spans_len = len_field(1, resource_len) + len_field(2, scope_spans_len);
    let mut out = BytesMut::with_capacity(len_field(1, resource_spans_len));
    put_len(&mut out, 1, resource_spans_len);
    put_len(&mut out, 1, resource_len);
    put_key_value(&mut out, 1, SERVICE_NAME, &service);
    put_len(&mut out, 2, scope_spans_len);
    put_len(&mut out, 1, scope_len);
    put_bytes(&mut out, 1, SCOPE_NAME);
    put_bytes(&mut out, 2, SCOPE_VERSION);
    for s in spans {
        put_span(&mut out, s, span_len(s));
    }
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

    /// The straightforward nested encoding (each message built apart, then copied in).
    fn nested(service: &str, spans: &[FinishedSpan]) -> Vec<u8> {
        fn msg(buf: &mut BytesMut, field: u32, f: impl FnOnce(&mut BytesMut)) {
            let mut inner = BytesMut::new();
            f(&mut inner);
            put_bytes(buf, field, &inner);
        }
        fn kv(buf: &mut BytesMut, field: u32, k: &str, v: &AttrValue) {
            msg(buf, field, |b| {
                put_bytes(b, 1, k.as_bytes());
                msg(b, 2, |b| put_any(b, v));
            });
        }
        let mut out = BytesMut::new();
        msg(&mut out, 1, |rs| {
            msg(rs, 1, |r| {
                kv(r, 1, "service.name", &AttrValue::Str(service.to_string()))
            });
            msg(rs, 2, |ss| {
                msg(ss, 1, |sc| {
                    put_bytes(sc, 1, b"outrider");
                    put_bytes(sc, 2, env!("CARGO_PKG_VERSION").as_bytes());
                });
                for s in spans {
                    msg(ss, 2, |sp| {
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
                            kv(sp, 9, k, v);
                        }
                        if s.error {
                            msg(sp, 15, |st| {
                                put_tag(st, 3, VARINT);
                                put_varint(st, 2);
                            });
                        }
                    });
                }
            });
        });
        out.to_vec()
    }

    #[test]
    fn protobuf_sized_encoding_matches_nested() {
        let mut big = span();
        big.parent_span_id = None;
        big.error = false;
        big.name = "x".repeat(300);
        big.attributes
            .push(("long", AttrValue::Str("v".repeat(200))));
        big.attributes.push(("neg", AttrValue::Int(-1)));
        big.attributes.push(("static", AttrValue::Static("1.1")));
        for spans in [
            vec![],
            vec![span()],
            vec![span(), big.clone()],
            vec![big; 600],
        ] {
            let got = encode_protobuf("svc", &spans);
            assert_eq!(got.to_vec(), nested("svc", &spans), "{} spans", spans.len());
        }
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u64::MAX] {
            let mut b = BytesMut::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
        }
    }

    #[tokio::test]
    async fn full_queue_drops_without_waiting() {
        let (tx, _rx) = mpsc::channel(1);
        let t = Tracer {
            sampler: Sampler::default(),
            xray: false,
            queue: Some(OtlpQueue {
                tx: Some(tx),
                signal: Arc::new(Signal {
                    pending: AtomicUsize::new(0),
                    wake: Notify::new(),
                }),
                batch_size: DEFAULT_BATCH_SIZE,
            }),
            xray_queue: None,
        };
        t.record(span());
        t.record(span());
        // The failed push is not counted as pending.
        let pending = t
            .queue
            .as_ref()
            .map(|q| q.signal.pending.load(Ordering::Relaxed));
        assert_eq!(pending, Some(1));
        // Nothing drains the queue: flush gives up at its timeout instead of hanging.
        t.flush(Duration::from_millis(10)).await;
    }

    /// A collector answering 200 to every POST; yields each request's body size.
    async fn collector() -> (String, mpsc::UnboundedReceiver<usize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            loop {
                let n = sock.read(&mut chunk).await.unwrap();
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    if buf.len() < end + 4 + len {
                        break;
                    }
                    buf.drain(..end + 4 + len);
                    tx.send(len).unwrap();
                    sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await
                        .unwrap();
                }
            }
        });
        (addr, rx)
    }

    #[tokio::test]
    async fn exporter_thread_sends_full_batches_and_flushes() {
        let (addr, mut bodies) = collector().await;
        let mut otlp = OtlpOptions::new(
            format!("http://{addr}/v1/traces").parse().unwrap(),
            OtlpProtocol::HttpProtobuf,
        );
        otlp.batch_size = 4;
        // Long enough that only a full batch or a flush can send.
        otlp.flush_interval = Duration::from_secs(60);
        let opts = TracingOptions {
            service_name: "svc".into(),
            otlp: Some(otlp),
            sampler: Sampler::default(),
            xray: false,
            xray_daemon: None,
        };
        let tracer = Tracer::start(&opts);
        let one = encode_protobuf("svc", &[span()]).len();
        for _ in 0..4 {
            tracer.record(span());
        }
        let full = tokio::time::timeout(Duration::from_secs(5), bodies.recv()).await;
        assert_eq!(
            full.unwrap(),
            Some(encode_protobuf("svc", &vec![span(); 4]).len())
        );
        tracer.record(span());
        tracer.flush(Duration::from_secs(5)).await;
        assert_eq!(bodies.try_recv().ok(), Some(one));
        // Dropping the tracer sends what is left and stops the thread.
        tracer.record(span());
        drop(tracer);
        let last = tokio::time::timeout(Duration::from_secs(5), bodies.recv()).await;
        assert_eq!(last.unwrap(), Some(one));
    }
}
