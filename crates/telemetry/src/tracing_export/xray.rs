//! Span export to the AWS X-Ray daemon: one segment document per UDP datagram, sent by a
//! background task fed through the same kind of bounded queue as OTLP.

use std::net::SocketAddr;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::{
    AttrValue, FinishedSpan, Msg, SPANS_DROPPED_TOTAL, SPANS_EXPORTED_TOTAL, SpanKind, hex,
};

/// X-Ray daemon host when `AWS_XRAY_DAEMON_ADDRESS` is unset, as in App Mesh's Envoy image.
/// Default is 127.0.0.1.
pub const DEFAULT_XRAY_DAEMON_HOST: &str = "127.0.0.1";
/// X-Ray daemon UDP port when `XRAY_DAEMON_PORT` is unset. Default is 2000.
pub const DEFAULT_XRAY_DAEMON_PORT: u16 = 2000;
/// The header line the daemon expects before every segment document.
pub const XRAY_DATAGRAM_HEADER: &str = "{\"format\": \"json\", \"version\": 1}\n";
/// The `origin` App Mesh's Envoy gives its segments.
pub const XRAY_ORIGIN: &str = "AWS::AppMesh::Proxy";
/// Largest datagram the daemon reads; bigger segments are dropped and counted. 64 KiB.
const MAX_DATAGRAM: usize = 64 * 1024;

/// Where and under which name segments go to the X-Ray daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XrayDaemonOptions {
    /// `host:port` of the daemon's UDP listener, resolved when the exporter starts (and again
    /// after a failure). Default is `127.0.0.1:XRAY_DAEMON_PORT`, or `AWS_XRAY_DAEMON_ADDRESS`.
    pub address: String,
    /// Segment `name`. Default is `XRAY_SEGMENT_NAME`, else `<mesh>/<node>` as App Mesh names it.
    pub segment_name: String,
    /// Spans queued before new ones are dropped. Default is [`super::DEFAULT_QUEUE_CAPACITY`].
    pub queue_capacity: usize,
}

/// Sends segments of queued spans until the queue closes; answers flushes in order.
pub(super) async fn run(opts: XrayDaemonOptions, mut rx: mpsc::Receiver<Msg>) {
    let mut socket: Option<UdpSocket> = None;
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    while let Some(msg) = rx.recv().await {
        let span = match msg {
            Msg::Span(span) => span,
            Msg::Flush(done) => {
                // Datagrams already went out in order; nothing is buffered here.
                let _ = done.send(());
                continue;
            }
        };
        buf.clear();
        buf.extend_from_slice(XRAY_DATAGRAM_HEADER.as_bytes());
        if serde_json::to_writer(&mut buf, &segment(&opts.segment_name, &span)).is_err()
            || buf.len() > MAX_DATAGRAM
        {
            metrics::counter!(SPANS_DROPPED_TOTAL).increment(1);
            continue;
        }
        if socket.is_none() {
            match connect(&opts.address).await {
                Ok(s) => socket = Some(s),
                Err(e) => {
                    metrics::counter!(SPANS_DROPPED_TOTAL).increment(1);
                    tracing::warn!(error = %e, address = %opts.address, "X-Ray daemon unreachable");
                    continue;
                }
            }
        }
        let sent = match &socket {
            Some(s) => s.send(&buf).await,
            None => continue,
        };
        match sent {
            Ok(_) => metrics::counter!(SPANS_EXPORTED_TOTAL).increment(1),
            Err(e) => {
                // A refused datagram (no daemon yet) surfaces here; resolve again next time.
                socket = None;
                metrics::counter!(SPANS_DROPPED_TOTAL).increment(1);
                tracing::debug!(error = %e, "X-Ray segment not sent");
            }
        }
    }
}

async fn connect(address: &str) -> std::io::Result<UdpSocket> {
    let target = tokio::net::lookup_host(address)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let local: SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(target).await?;
    Ok(socket)
}

/// The daemon address from `AWS_XRAY_DAEMON_ADDRESS` (`host:port`, or the SDK's
/// `tcp:host:port udp:host:port` pair, of which the UDP one is used) or `XRAY_DAEMON_PORT`.
pub(super) fn daemon_address(aws_address: Option<&str>, port: Option<u16>) -> Option<String> {
    if let Some(a) = aws_address {
        let parts: Vec<&str> = a.split_whitespace().collect();
        let udp = parts
            .iter()
            .find_map(|p| p.strip_prefix("udp:"))
            .or_else(|| parts.iter().find(|p| !p.starts_with("tcp:")).copied())?;
        return valid_host_port(udp).then(|| udp.to_string());
    }
    Some(format!(
        "{DEFAULT_XRAY_DAEMON_HOST}:{}",
        port.unwrap_or(DEFAULT_XRAY_DAEMON_PORT)
    ))
}

fn valid_host_port(s: &str) -> bool {
    s.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0))
}

/// The segment name App Mesh uses: `<mesh>/<node>`, or whichever part is known.
pub(super) fn default_segment_name(mesh: &str, node: &str) -> String {
    match (mesh.is_empty(), node.is_empty()) {
        (false, false) => format!("{mesh}/{node}"),
        (true, false) => node.to_string(),
        (false, true) => mesh.to_string(),
        (true, true) => super::DEFAULT_SERVICE_NAME.to_string(),
    }
}

fn attr<'a>(span: &'a FinishedSpan, key: &str) -> Option<&'a AttrValue> {
    span.attributes
        .iter()
        .find_map(|(k, v)| (*k == key).then_some(v))
}

fn attr_str<'a>(span: &'a FinishedSpan, key: &str) -> Option<&'a str> {
    attr(span, key).and_then(AttrValue::as_str)
}

/// `1-<8 hex epoch seconds>-<24 hex>` from a 16-byte trace id.
pub fn xray_trace_id(trace_id: &[u8; 16]) -> String {
    format!("1-{}-{}", hex(&trace_id[..4]), hex(&trace_id[4..]))
}

/// Epoch seconds with fractions; whole seconds and the fraction are converted apart so the
/// fraction keeps microsecond precision.
fn seconds(nanos: u64) -> f64 {
    (nanos / 1_000_000_000) as f64 + (nanos % 1_000_000_000) as f64 / 1e9
}

/// The X-Ray segment document of one span (without the datagram header line).
pub fn segment(name: &str, span: &FinishedSpan) -> serde_json::Value {
    let status = match attr(span, "http.response.status_code") {
        Some(AttrValue::Int(s)) => Some(*s),
        _ => None,
    };
    let mut request = serde_json::Map::new();
    if let Some(m) = attr_str(span, "http.request.method") {
        request.insert("method".into(), m.into());
    }
    let path = attr_str(span, "url.path").unwrap_or("/");
    let url = match attr_str(span, "server.address") {
        Some(host) => format!("http://{host}{path}"),
        None => path.to_string(),
    };
    request.insert("url".into(), url.into());
    if let Some(ip) = attr_str(span, "network.peer.address")
        && span.kind == SpanKind::Server
    {
        request.insert("client_ip".into(), ip.into());
    }
    let mut http = serde_json::json!({ "request": request });
    if let (Some(s), Some(obj)) = (status, http.as_object_mut()) {
        obj.insert("response".into(), serde_json::json!({ "status": s }));
    }
    // 4xx is the caller's error; 5xx, or no response at all, is a fault.
    let error = status.is_some_and(|s| (400..500).contains(&s));
    let fault = status.is_some_and(|s| s >= 500) || (span.error && status.is_none());
    let mut doc = serde_json::json!({
        "name": name,
        "id": hex(&span.span_id),
        "trace_id": xray_trace_id(&span.trace_id),
        "start_time": seconds(span.start_unix_nanos),
        "end_time": seconds(span.end_unix_nanos),
        "origin": XRAY_ORIGIN,
        "http": http,
        "error": error,
        "fault": fault,
    });
    if let Some(obj) = doc.as_object_mut() {
        if let Some(p) = &span.parent_span_id {
            obj.insert("parent_id".into(), hex(p).into());
        }
        if span.kind == SpanKind::Client {
            obj.insert("namespace".into(), "remote".into());
        }
        if let Some(c) = attr_str(span, "upstream.cluster") {
            obj.insert(
                "annotations".into(),
                serde_json::json!({ "upstream_cluster": c }),
            );
        }
    }
    doc
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;
    use crate::tracing_export::{DEFAULT_QUEUE_CAPACITY, Sampler, Tracer, TracingOptions};

    fn span(kind: SpanKind, status: Option<i64>, error: bool) -> FinishedSpan {
        let mut trace_id = [0xab; 16];
        trace_id[..4].copy_from_slice(&0x5759_e988u32.to_be_bytes());
        let mut attributes = vec![
            ("http.request.method", AttrValue::Str("GET".into())),
            ("url.path", AttrValue::Str("/x".into())),
            ("server.address", AttrValue::Str("svc.local".into())),
            ("network.peer.address", AttrValue::Str("10.0.0.1".into())),
            (
                "upstream.cluster",
                AttrValue::Str("cds_egress_m_b_http_80".into()),
            ),
        ];
        if let Some(s) = status {
            attributes.push(("http.response.status_code", AttrValue::Int(s)));
        }
        FinishedSpan {
            trace_id,
            span_id: [0x12; 8],
            parent_span_id: Some([0x34; 8]),
            name: "GET".into(),
            kind,
            start_unix_nanos: 1_700_000_000_250_000_000,
            end_unix_nanos: 1_700_000_000_500_000_000,
            attributes,
            error,
        }
    }

    #[test]
    fn segment_fields() {
        let s = segment("m/n", &span(SpanKind::Server, Some(200), false));
        assert_eq!(s["name"], "m/n");
        assert_eq!(s["id"], "1212121212121212");
        assert_eq!(s["parent_id"], "3434343434343434");
        assert_eq!(s["trace_id"], format!("1-5759e988-{}", "ab".repeat(12)));
        assert_eq!(s["start_time"].as_f64().unwrap(), 1_700_000_000.25);
        assert_eq!(s["end_time"].as_f64().unwrap(), 1_700_000_000.5);
        assert_eq!(s["http"]["request"]["method"], "GET");
        assert_eq!(s["http"]["request"]["url"], "http://svc.local/x");
        assert_eq!(s["http"]["request"]["client_ip"], "10.0.0.1");
        assert_eq!(s["http"]["response"]["status"], 200);
        assert_eq!(s["error"], false);
        assert_eq!(s["fault"], false);
        assert!(s.get("namespace").is_none());
        assert_eq!(s["origin"], XRAY_ORIGIN);
    }

    #[test]
    fn error_and_fault_flags() {
        let c = segment("n", &span(SpanKind::Client, Some(404), false));
        assert_eq!(
            (c["error"].as_bool(), c["fault"].as_bool()),
            (Some(true), Some(false))
        );
        assert_eq!(c["namespace"], "remote");
        assert!(c["http"]["request"].get("client_ip").is_none());
        let f = segment("n", &span(SpanKind::Client, Some(503), true));
        assert_eq!(
            (f["error"].as_bool(), f["fault"].as_bool()),
            (Some(false), Some(true))
        );
        let reset = segment("n", &span(SpanKind::Client, None, true));
        assert_eq!(reset["fault"], true);
        assert!(reset["http"].get("response").is_none());
    }

    #[test]
    fn root_span_has_no_parent_id() {
        let mut s = span(SpanKind::Server, Some(200), false);
        s.parent_span_id = None;
        assert!(segment("n", &s).get("parent_id").is_none());
    }

    #[test]
    fn daemon_address_forms() {
        assert_eq!(daemon_address(None, None).unwrap(), "127.0.0.1:2000");
        assert_eq!(daemon_address(None, Some(3000)).unwrap(), "127.0.0.1:3000");
        assert_eq!(
            daemon_address(Some("xray:2001"), Some(3000)).unwrap(),
            "xray:2001"
        );
        assert_eq!(
            daemon_address(Some("tcp:a:2000 udp:b:2002"), None).unwrap(),
            "b:2002"
        );
        assert_eq!(daemon_address(Some("nope"), None), None);
        assert_eq!(daemon_address(Some("h:0"), None), None);
    }

    #[test]
    fn segment_names() {
        assert_eq!(default_segment_name("m", "n"), "m/n");
        assert_eq!(default_segment_name("", "n"), "n");
        assert_eq!(default_segment_name("", ""), "outrider");
    }

    #[tokio::test]
    async fn segments_reach_a_udp_daemon() {
        let daemon = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let opts = TracingOptions {
            service_name: "svc".into(),
            otlp: None,
            sampler: Sampler::default(),
            xray: true,
            xray_daemon: Some(XrayDaemonOptions {
                address: daemon.local_addr().unwrap().to_string(),
                segment_name: "m/n".into(),
                queue_capacity: DEFAULT_QUEUE_CAPACITY,
            }),
        };
        let tracer = Tracer::start(&opts);
        assert!(tracer.exporting());
        tracer.record(span(SpanKind::Server, Some(502), true));
        tracer.record(span(SpanKind::Client, Some(200), false));
        tracer.flush(Duration::from_secs(2)).await;
        let mut buf = vec![0u8; 65536];
        let mut docs = Vec::new();
        for _ in 0..2 {
            let n = tokio::time::timeout(Duration::from_secs(2), daemon.recv(&mut buf))
                .await
                .unwrap()
                .unwrap();
            let text = std::str::from_utf8(&buf[..n]).unwrap();
            let body = text.strip_prefix(XRAY_DATAGRAM_HEADER).unwrap();
            docs.push(serde_json::from_str::<serde_json::Value>(body).unwrap());
        }
        assert_eq!(docs[0]["name"], "m/n");
        assert_eq!(docs[0]["fault"], true);
        assert_eq!(docs[1]["namespace"], "remote");
    }
}
