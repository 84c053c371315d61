//! Access logs: the node's `logging.accessLog.file`, written off the request path.
//!
//! A request that is logged carries a [`Pending`] entry on its response body; the line is
//! formatted and queued when the body is done (or dropped early: Envoy's `DC` flag). Requests
//! are never slowed by the writer: its queue is bounded and drops are counted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, Method, Uri, Version};
use outrider_accesslog::{Format, Record, Writer};
use outrider_config::{AccessLog as AccessLogConfig, AccessLogFormat};

static CONNECTION_IDS: AtomicU64 = AtomicU64::new(1);

/// A process-unique id for a downstream connection (`%CONNECTION_ID%`).
pub fn next_connection_id() -> u64 {
    CONNECTION_IDS.fetch_add(1, Ordering::Relaxed)
}

/// An open access log: a compiled format and its writer.
pub struct AccessLog {
    config: AccessLogConfig,
    format: Format,
    writer: Writer,
}

impl AccessLog {
    /// Opens the log a node's spec asks for.
    pub fn open(config: &AccessLogConfig) -> Result<Self, String> {
        let format = match &config.format {
            AccessLogFormat::Default => Format::envoy_default(),
            AccessLogFormat::Text(t) => Format::text(t).map_err(|e| e.to_string())?,
            AccessLogFormat::Json(kv) => Format::json(kv).map_err(|e| e.to_string())?,
        };
        let writer = Writer::open(&config.path).map_err(|e| format!("{}: {e}", config.path))?;
        Ok(AccessLog {
            config: config.clone(),
            format,
            writer,
        })
    }

    /// The configuration this log was opened with (a reload keeps the log when it is equal).
    pub fn config(&self) -> &AccessLogConfig {
        &self.config
    }

    /// Lines dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.writer.dropped()
    }

    fn emit(&self, rec: &Record<'_>) {
        let mut line = String::with_capacity(256);
        self.format.write(rec, &mut line);
        self.writer.log(line);
    }

    /// Logs one TCP connection.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn log_tcp(
        &self,
        start: SystemTime,
        duration: Duration,
        received: u64,
        sent: u64,
        upstream: Option<SocketAddr>,
        cluster: &str,
        remote: SocketAddr,
        local: SocketAddr,
        flags: &str,
        connection_id: u64,
    ) {
        let empty = HeaderMap::new();
        let mut rec = Record::new(start, &empty);
        rec.bytes_received = received;
        rec.bytes_sent = sent;
        rec.duration = duration;
        rec.upstream_host = upstream;
        rec.upstream_cluster = Some(cluster);
        rec.downstream_remote = Some(remote);
        rec.downstream_local = Some(local);
        rec.response_flags = flags;
        rec.connection_id = connection_id;
        self.emit(&rec);
    }
}

/// What is known about a request when its response starts; completed by the response body.
pub(crate) struct Pending {
    pub log: Arc<AccessLog>,
    pub start_wall: SystemTime,
    pub start: Instant,
    pub method: Method,
    pub uri: Uri,
    pub authority: Option<String>,
    pub version: Version,
    pub request_headers: HeaderMap,
    pub bytes_received: u64,
    pub response_headers: HeaderMap,
    pub status: u16,
    pub flags: std::borrow::Cow<'static, str>,
    pub first_byte: Duration,
    pub upstream_host: Option<SocketAddr>,
    pub cluster: Option<String>,
    pub route: Option<Arc<str>>,
    pub remote: SocketAddr,
    pub local: SocketAddr,
    pub connection_id: u64,
}

impl Pending {
    /// Formats and queues the line. `complete` is false when the body was dropped before its end.
    pub(crate) fn finish(self, bytes_sent: u64, trailers: Option<&HeaderMap>, complete: bool) {
        let protocol = match self.version {
            Version::HTTP_10 => "HTTP/1.0",
            Version::HTTP_2 => "HTTP/2",
            Version::HTTP_3 => "HTTP/3",
            _ => "HTTP/1.1",
        };
        let path = self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let flags: &str = match (self.flags.is_empty(), complete) {
            (true, true) => "",
            (true, false) => "DC",
            (false, _) => &self.flags,
        };
        let mut rec = Record::new(self.start_wall, &self.request_headers);
        rec.method = Some(self.method.as_str());
        rec.path = Some(path);
        rec.authority = self.authority.as_deref();
        rec.scheme = Some("http");
        rec.protocol = Some(protocol);
        rec.response_headers = Some(&self.response_headers);
        rec.response_trailers = trailers;
        rec.response_code = self.status;
        rec.response_flags = flags;
        rec.bytes_received = self.bytes_received;
        rec.bytes_sent = bytes_sent;
        rec.duration = self.start.elapsed();
        rec.request_duration = None;
        rec.response_duration = Some(self.first_byte);
        rec.upstream_host = self.upstream_host;
        rec.upstream_cluster = self.cluster.as_deref();
        rec.downstream_remote = Some(self.remote);
        rec.downstream_local = Some(self.local);
        rec.route_name = self.route.as_deref();
        rec.connection_id = self.connection_id;
        self.log.emit(&rec);
    }
}
