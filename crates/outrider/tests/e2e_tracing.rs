//! Distributed tracing end to end: two chained proxies (client → A egress → B ingress → app)
//! export spans to an in-process OTLP receiver over HTTP/JSON and HTTP/protobuf; incoming W3C,
//! B3 and X-Ray contexts continue; unsampled traces export nothing.

#![allow(clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{H1, client, h1_request, mesh, node, service_node, stream};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use outrider_app::{ProxyOptions, RunningProxy};
use outrider_config::Selector;
use outrider_telemetry::tracing_export::{
    OTLP_GRPC_PATH, OtlpOptions, OtlpProtocol, Sampler, TracingOptions,
};
use outrider_test_support::servers::TestServer;
use tokio::net::TcpListener;

const GRACE: Duration = Duration::from_millis(300);
const SERVICE: &str = "svc.local";

/// What the receiver decoded from one span.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    trace_id: String,
    span_id: String,
    parent: Option<String>,
    kind: u64,
}

/// An OTLP/HTTP collector on 127.0.0.1:0 keeping every POST /v1/traces body.
struct Receiver {
    addr: SocketAddr,
    posts: Arc<Mutex<Vec<(String, Bytes)>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let posts: Arc<Mutex<Vec<(String, Bytes)>>> = Arc::default();
        let store = posts.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let store = store.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let store = store.clone();
                        async move {
                            let grpc = req.uri().path() == OTLP_GRPC_PATH;
                            let ok = req.method() == Method::POST
                                && (req.uri().path() == "/v1/traces" || grpc);
                            let ct = req
                                .headers()
                                .get(http::header::CONTENT_TYPE)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            let mut body = req.into_body().collect().await.unwrap().to_bytes();
                            if grpc {
                                // One uncompressed length-prefixed message.
                                assert_eq!(body[0], 0);
                                body = body.slice(5..);
                            }
                            if ok {
                                store.lock().unwrap().push((ct, body));
                            }
                            let status = if ok {
                                StatusCode::OK
                            } else {
                                StatusCode::NOT_FOUND
                            };
                            let resp = Response::builder()
                                .status(status)
                                .header("grpc-status", "0")
                                .body(Full::new(Bytes::new()))
                                .unwrap();
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Receiver { addr, posts }
    }

    fn options(&self, protocol: OtlpProtocol) -> TracingOptions {
        let endpoint = format!("http://{}/v1/traces", self.addr).parse().unwrap();
        // gRPC uses only the authority of the endpoint.
        let mut otlp = OtlpOptions::new(endpoint, protocol);
        otlp.flush_interval = Duration::from_millis(50);
        TracingOptions {
            service_name: "test".into(),
            otlp: Some(otlp),
            sampler: Sampler {
                parent_based: true,
                rate: 1.0,
            },
            xray: false,
            xray_daemon: None,
        }
    }

    /// Every span received so far, decoded by content type.
    fn spans(&self) -> Vec<Seen> {
        let posts = self.posts.lock().unwrap();
        let mut out = Vec::new();
        for (ct, body) in posts.iter() {
            if ct == "application/json" {
                out.extend(json_spans(body));
            } else {
                assert!(
                    ct == "application/x-protobuf" || ct == "application/grpc",
                    "{ct}"
                );
                out.extend(proto_spans(body));
            }
        }
        out
    }
}

fn json_spans(body: &[u8]) -> Vec<Seen> {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    let mut out = Vec::new();
    for rs in v["resourceSpans"].as_array().unwrap() {
        assert_eq!(
            rs["resource"]["attributes"][0]["value"]["stringValue"],
            "test"
        );
        for ss in rs["scopeSpans"].as_array().unwrap() {
            for s in ss["spans"].as_array().unwrap() {
                out.push(Seen {
                    trace_id: s["traceId"].as_str().unwrap().into(),
                    span_id: s["spanId"].as_str().unwrap().into(),
                    parent: s["parentSpanId"].as_str().map(Into::into),
                    kind: s["kind"].as_u64().unwrap(),
                });
            }
        }
    }
    out
}

/// Minimal protobuf reader: (field number, varint value, length-delimited bytes).
fn fields(mut b: &[u8]) -> Vec<(u64, u64, &[u8])> {
    fn varint(b: &mut &[u8]) -> u64 {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let byte = b[0];
            *b = &b[1..];
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return v;
            }
            shift += 7;
        }
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b);
        match key & 7 {
            0 => out.push((key >> 3, varint(&mut b), &[][..])),
            1 => {
                out.push((
                    key >> 3,
                    u64::from_le_bytes(b[..8].try_into().unwrap()),
                    &[][..],
                ));
                b = &b[8..];
            }
            2 => {
                let len = varint(&mut b) as usize;
                out.push((key >> 3, 0, &b[..len]));
                b = &b[len..];
            }
            w => panic!("unexpected wire type {w}"),
        }
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn proto_spans(body: &[u8]) -> Vec<Seen> {
    let mut out = Vec::new();
    for (_, _, rs) in fields(body).into_iter().filter(|f| f.0 == 1) {
        for (_, _, ss) in fields(rs).into_iter().filter(|f| f.0 == 2) {
            for (_, _, span) in fields(ss).into_iter().filter(|f| f.0 == 2) {
                let mut seen = Seen {
                    trace_id: String::new(),
                    span_id: String::new(),
                    parent: None,
                    kind: 0,
                };
                for (n, v, bytes) in fields(span) {
                    match n {
                        1 => seen.trace_id = hex(bytes),
                        2 => seen.span_id = hex(bytes),
                        4 => seen.parent = Some(hex(bytes)),
                        6 => seen.kind = v,
                        _ => {}
                    }
                }
                out.push(seen);
            }
        }
    }
    out
}

async fn start_node(spec: &str, node: &str, tracing: TracingOptions) -> RunningProxy {
    let sel = Selector {
        mesh: None,
        node: Some(node.to_string()),
        gateway: None,
    };
    let built = outrider_config::build_from_str("test.yaml", spec, &sel).unwrap();
    let mut opts = ProxyOptions::local(Some(built.snapshot));
    opts.watch_config = false;
    opts.tracing = Some(tracing);
    outrider_app::start(opts).await.unwrap()
}

/// The chain: A (client, egress) → B (node b, ingress) → app.
struct Chain {
    app: TestServer,
    a: RunningProxy,
    b: RunningProxy,
}

impl Chain {
    async fn start(tracing: TracingOptions) -> Chain {
        let app = TestServer::http("app");
        let b_spec = stream(&[
            mesh("DROP_ALL"),
            node("b", "127.0.0.1", app.addr().port(), "http"),
        ]);
        let b = start_node(&b_spec, "b", tracing.clone()).await;
        // A reaches b at B's ingress listener, as the iptables redirect would.
        let a_spec = stream(&[
            mesh("DROP_ALL"),
            client(&[SERVICE], &[]),
            node("b", "127.0.0.1", b.addrs().ingress.port(), "http"),
            service_node(SERVICE, "b"),
        ]);
        let a = start_node(&a_spec, common::CLIENT, tracing).await;
        Chain { app, a, b }
    }

    async fn get(&self, headers: &[(&str, &str)]) -> http::HeaderMap {
        let mut c = H1::connect(self.a.addrs().egress).await;
        let r = c
            .send(h1_request(Method::GET, SERVICE, "/x", headers))
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.served_by(), Some("app"));
        self.app.last_request().unwrap().headers
    }

    /// Shuts both proxies down, which flushes their spans.
    async fn finish(self) {
        self.a.shutdown(GRACE).await;
        self.b.shutdown(GRACE).await;
    }
}

fn header(h: &http::HeaderMap, name: &str) -> String {
    h.get(name).unwrap().to_str().unwrap().to_string()
}

/// Returns (A's client span, B's server span) after checking they form one trace.
fn chained(spans: &[Seen]) -> (Seen, Seen) {
    let clients: Vec<&Seen> = spans.iter().filter(|s| s.kind == 3).collect();
    let servers: Vec<&Seen> = spans.iter().filter(|s| s.kind == 2).collect();
    assert_eq!((clients.len(), servers.len()), (1, 1), "{spans:?}");
    let (c, s) = (clients[0].clone(), servers[0].clone());
    assert_eq!(c.trace_id, s.trace_id);
    assert_eq!(s.parent.as_deref(), Some(c.span_id.as_str()));
    (c, s)
}

#[tokio::test]
async fn new_trace_over_json_links_both_proxies() {
    let recv = Receiver::start().await;
    let chain = Chain::start(recv.options(OtlpProtocol::HttpJson)).await;
    let seen = chain.get(&[]).await;
    chain.finish().await;
    let (c, s) = chained(&recv.spans());
    assert_eq!(c.parent, None, "the proxy started the trace");
    // The proxy started the trace: W3C, B3 and X-Ray all reach the app, naming B's span.
    let tp = header(&seen, "traceparent");
    assert_eq!(tp, format!("00-{}-{}-01", s.trace_id, s.span_id));
    assert_eq!(header(&seen, "x-b3-traceid"), s.trace_id);
    assert_eq!(header(&seen, "x-b3-spanid"), s.span_id);
    assert!(header(&seen, "x-amzn-trace-id").contains(&s.span_id));
    assert!(!recv.posts.lock().unwrap().is_empty());
}

#[tokio::test]
async fn w3c_context_continues_over_protobuf() {
    let recv = Receiver::start().await;
    let chain = Chain::start(recv.options(OtlpProtocol::HttpProtobuf)).await;
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let parent = "b7ad6b7169203331";
    let seen = chain
        .get(&[("traceparent", &format!("00-{trace}-{parent}-01"))])
        .await;
    chain.finish().await;
    let (c, s) = chained(&recv.spans());
    assert_eq!(c.trace_id, trace);
    assert_eq!(c.parent.as_deref(), Some(parent));
    assert_eq!(
        header(&seen, "traceparent"),
        format!("00-{trace}-{}-01", s.span_id)
    );
    assert_ne!(s.span_id, parent);
    // Only the format the request came with is written.
    assert!(seen.get("x-b3-traceid").is_none());
}

#[tokio::test]
async fn b3_and_xray_contexts_continue() {
    let recv = Receiver::start().await;
    let chain = Chain::start(recv.options(OtlpProtocol::HttpJson)).await;
    let b3_trace = "463ac35c9f6413ad48485a3953bb6124";
    let seen = chain
        .get(&[
            ("x-b3-traceid", b3_trace),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "1"),
        ])
        .await;
    assert_eq!(header(&seen, "x-b3-traceid"), b3_trace);
    let b3_span = header(&seen, "x-b3-spanid");
    assert_ne!(b3_span, "a2fb4a1d1a96d312");
    let seen = chain
        .get(&[(
            "x-amzn-trace-id",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
        )])
        .await;
    let xray = header(&seen, "x-amzn-trace-id");
    assert!(xray.starts_with("Root=1-5759e988-bd862e3fe1be46a994272793;Parent="));
    assert!(!xray.contains("53995c3f42cd8ad8"));
    chain.finish().await;
    let spans = recv.spans();
    assert_eq!(spans.len(), 4, "{spans:?}");
    let b3: Vec<Seen> = spans
        .iter()
        .filter(|s| s.trace_id == b3_trace)
        .cloned()
        .collect();
    let (c, s) = chained(&b3);
    assert_eq!(c.parent.as_deref(), Some("a2fb4a1d1a96d312"));
    assert_eq!(s.span_id, b3_span);
    let x: Vec<Seen> = spans
        .iter()
        .filter(|s| s.trace_id == "5759e988bd862e3fe1be46a994272793")
        .cloned()
        .collect();
    let (c, s) = chained(&x);
    assert_eq!(c.parent.as_deref(), Some("53995c3f42cd8ad8"));
    assert!(xray.contains(&s.span_id));
}

#[tokio::test]
async fn unsampled_trace_exports_nothing_but_propagates() {
    let recv = Receiver::start().await;
    let chain = Chain::start(recv.options(OtlpProtocol::HttpJson)).await;
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let seen = chain
        .get(&[("traceparent", &format!("00-{trace}-b7ad6b7169203331-00"))])
        .await;
    chain.finish().await;
    assert!(recv.spans().is_empty());
    let tp = header(&seen, "traceparent");
    assert!(
        tp.starts_with(&format!("00-{trace}-")) && tp.ends_with("-00"),
        "{tp}"
    );
    assert!(!tp.contains("b7ad6b7169203331"));
}

#[tokio::test]
async fn grpc_export_links_both_proxies() {
    let recv = Receiver::start().await;
    let chain = Chain::start(recv.options(OtlpProtocol::Grpc)).await;
    chain.get(&[]).await;
    chain.finish().await;
    chained(&recv.spans());
    assert_eq!(recv.posts.lock().unwrap()[0].0, "application/grpc");
}

#[tokio::test]
async fn xray_daemon_receives_linked_segments() {
    use outrider_telemetry::tracing_export::XrayDaemonOptions;
    use outrider_telemetry::tracing_export::xray::XRAY_DATAGRAM_HEADER;

    let daemon = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tracing = TracingOptions {
        service_name: "test".into(),
        otlp: None,
        sampler: Sampler {
            parent_based: true,
            rate: 1.0,
        },
        xray: true,
        xray_daemon: Some(XrayDaemonOptions {
            address: daemon.local_addr().unwrap().to_string(),
            segment_name: "shop/b".into(),
            queue_capacity: 16,
        }),
    };
    let chain = Chain::start(tracing).await;
    let seen = chain.get(&[]).await;
    chain.finish().await;
    let mut buf = vec![0u8; 65536];
    let mut segments = Vec::new();
    for _ in 0..2 {
        let n = tokio::time::timeout(Duration::from_secs(2), daemon.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let text = std::str::from_utf8(&buf[..n]).unwrap();
        let doc = text.strip_prefix(XRAY_DATAGRAM_HEADER).unwrap();
        segments.push(serde_json::from_str::<serde_json::Value>(doc).unwrap());
    }
    let client = segments
        .iter()
        .find(|s| s["namespace"] == "remote")
        .unwrap();
    let server = segments
        .iter()
        .find(|s| s.get("namespace").is_none())
        .unwrap();
    assert_eq!(client["trace_id"], server["trace_id"]);
    assert_eq!(server["parent_id"], client["id"]);
    assert!(
        client.get("parent_id").is_none(),
        "the proxy started the trace"
    );
    assert_eq!(server["name"], "shop/b");
    assert_eq!(server["http"]["request"]["method"], "GET");
    assert_eq!(server["http"]["response"]["status"], 200);
    assert_eq!(
        (server["error"].as_bool(), server["fault"].as_bool()),
        (Some(false), Some(false))
    );
    let trace_id = server["trace_id"].as_str().unwrap();
    assert!(
        trace_id.starts_with("1-") && trace_id.len() == 35,
        "{trace_id}"
    );
    assert!(server["end_time"].as_f64().unwrap() >= server["start_time"].as_f64().unwrap());
    // The app sees B's segment as its parent.
    let xray = header(&seen, "x-amzn-trace-id");
    let id = server["id"].as_str().unwrap();
    assert!(
        xray.contains(&format!("Root={trace_id};Parent={id}")),
        "{xray}"
    );
}
