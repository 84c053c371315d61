//! Shared pieces of the end-to-end tests: spec snippets, starting the proxy, HTTP/1.1 and h2c
//! clients that talk to it, and a counting upstream that can fail on purpose.

#![allow(dead_code, clippy::unwrap_used)] // shared by several test binaries; helpers unwrap

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use outrider_app::{ProxyOptions, RunningProxy};
use outrider_config::Selector;
use outrider_discovery::ResolverConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The virtual node every test proxy runs as.
pub const CLIENT: &str = "client";
/// Upper bound on any single exchange, so a broken proxy fails a test instead of hanging it.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// DNS re-resolution period for tests that change DNS answers.
pub const TEST_DNS_REFRESH: Duration = Duration::from_millis(100);
/// Header the counting upstream names itself in.
pub const X_UPSTREAM: &str = "x-upstream";

/// A whole response, body and trailers read.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Reply {
    /// A response header as text, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A trailer as text, if present.
    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get(name))
            .and_then(|v| v.to_str().ok())
    }

    /// `x-served-by` of the test servers in `outrider-test-support`.
    pub fn served_by(&self) -> Option<&str> {
        self.header("x-served-by")
    }
}

/// An HTTP/1.1 keep-alive connection to one address.
pub struct H1 {
    sender: http1::SendRequest<Full<Bytes>>,
}

/// An h2c (prior knowledge) connection to one address.
pub struct H2 {
    sender: http2::SendRequest<Full<Bytes>>,
}

/// A counting HTTP/1.1 + h2c upstream: answers `fail_first` requests with 503, then 200 with
/// `x-upstream: <name>` and body `<name>`.
pub struct Counting {
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl H1 {
    pub async fn connect(addr: SocketAddr) -> H1 {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn.with_upgrades());
        H1 { sender }
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Reply {
        tokio::time::timeout(EXCHANGE_TIMEOUT, async {
            self.sender.ready().await.unwrap();
            let resp = self.sender.send_request(req).await.unwrap();
            collect(resp).await
        })
        .await
        .expect("HTTP/1.1 exchange timed out")
    }

    /// `GET path` with `Host: host`.
    pub async fn get(&mut self, host: &str, path: &str) -> Reply {
        self.send(h1_request(Method::GET, host, path, &[])).await
    }
}

impl H2 {
    pub async fn connect(addr: SocketAddr) -> H2 {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        H2 { sender }
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Reply {
        tokio::time::timeout(EXCHANGE_TIMEOUT, async {
            self.sender.ready().await.unwrap();
            let resp = self.sender.send_request(req).await.unwrap();
            collect(resp).await
        })
        .await
        .expect("h2c exchange timed out")
    }

    /// A gRPC call of `path` on `authority` carrying `body` (already framed) and `metadata`.
    pub async fn grpc(
        &mut self,
        authority: &str,
        path: &str,
        body: Bytes,
        metadata: &[(&str, &str)],
    ) -> Reply {
        let mut b = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{authority}{path}"))
            .version(Version::HTTP_2)
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (k, v) in metadata {
            b = b.header(*k, *v);
        }
        self.send(b.body(Full::new(body)).unwrap()).await
    }
}

impl Counting {
    /// Binds `addr` (a port 0 picks one) and serves.
    pub async fn start(addr: SocketAddr, name: &str, fail_first: u64) -> std::io::Result<Counting> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let hits = Arc::new(AtomicU64::new(0));
        let name = HeaderValue::from_str(name).unwrap();
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let counter = counter.clone();
                let name = name.clone();
                let svc = service_fn(move |req: Request<Incoming>| {
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    let name = name.clone();
                    async move {
                        let _ = req.into_body().collect().await;
                        let mut resp =
                            Response::new(Full::new(Bytes::copy_from_slice(name.as_bytes())));
                        if n < fail_first {
                            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        }
                        resp.headers_mut().insert(X_UPSTREAM, name);
                        Ok::<_, Infallible>(resp)
                    }
                });
                conns.spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Counting { addr, hits, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        // Aborting the accept loop drops the JoinSet, which aborts every connection.
        self.task.abort();
    }
}

async fn collect(resp: Response<Incoming>) -> Reply {
    let (head, body) = resp.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    Reply {
        status: head.status,
        version: head.version,
        headers: head.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

/// An origin-form HTTP/1.1 request with `Host: host` and extra headers.
pub fn h1_request(
    method: Method,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

/// An HTTP/2 request whose `:authority` is `authority`.
pub fn h2_request(authority: &str, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(Method::GET)
        .uri(format!("http://{authority}{path}"))
        .version(Version::HTTP_2);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

/// Compiles `spec` as the virtual node `node` and starts a proxy on 127.0.0.1:0 listeners.
pub async fn start_as(spec: &str, node: &str, dns: Option<SocketAddr>) -> RunningProxy {
    let sel = Selector {
        mesh: None,
        node: Some(node.to_string()),
        gateway: None,
    };
    let built = match outrider_config::build_from_str("test.yaml", spec, &sel) {
        Ok(b) => b,
        Err(problems) => {
            let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
            panic!("spec refused:\n{}\n--- spec ---\n{spec}", lines.join("\n"));
        }
    };
    let mut opts = ProxyOptions::local(Some(built.snapshot));
    opts.dns_refresh = TEST_DNS_REFRESH;
    if let Some(dns) = dns {
        opts.resolver = ResolverConfig::Server(dns);
    }
    outrider_app::start(opts).await.unwrap()
}

/// The [`CLIENT`] node serving one local HTTP app on `app_port` (ingress, no backends), with
/// options changed by `tune` before it starts.
pub async fn start_in_front(app_port: u16, tune: impl FnOnce(&mut ProxyOptions)) -> RunningProxy {
    let spec = stream(&[mesh("DROP_ALL"), client(&[], &[(app_port, "http")])]);
    let sel = Selector {
        mesh: None,
        node: Some(CLIENT.to_string()),
        gateway: None,
    };
    let built = outrider_config::build_from_str("test.yaml", &spec, &sel).unwrap();
    let mut opts = ProxyOptions::local(Some(built.snapshot));
    tune(&mut opts);
    outrider_app::start(opts).await.unwrap()
}

/// [`start_as`] the [`CLIENT`] node with the system resolver.
pub async fn start(spec: &str) -> RunningProxy {
    start_as(spec, CLIENT, None).await
}

// ---- spec snippets (App Mesh create-input shape, YAML documents joined by `---`) ----

/// Joins YAML documents into one stream.
pub fn stream(docs: &[String]) -> String {
    docs.join("\n---\n")
}

/// The mesh `m` with an egress filter (`DROP_ALL` or `ALLOW_ALL`).
pub fn mesh(egress: &str) -> String {
    format!("meshName: m\nspec: {{egressFilter: {{type: {egress}}}}}\n")
}

/// The [`CLIENT`] node: calls `backends`, serves its local app on `listeners`.
pub fn client(backends: &[&str], listeners: &[(u16, &str)]) -> String {
    let backends: Vec<String> = backends
        .iter()
        .map(|b| format!("{{virtualService: {{virtualServiceName: {b}}}}}"))
        .collect();
    format!(
        "meshName: m\nvirtualNodeName: {CLIENT}\nspec:\n  backends: [{}]\n  listeners: [{}]\n  serviceDiscovery: {{dns: {{hostname: 127.0.0.1}}}}\n",
        backends.join(", "),
        port_mappings(listeners)
    )
}

/// A node found at `hostname` (an IP literal or a DNS name) on one listener.
pub fn node(name: &str, hostname: &str, port: u16, protocol: &str) -> String {
    format!(
        "meshName: m\nvirtualNodeName: {name}\nspec:\n  listeners: [{}]\n  serviceDiscovery: {{dns: {{hostname: {hostname}}}}}\n",
        port_mappings(&[(port, protocol)])
    )
}

/// A node on 127.0.0.1 at `port`.
pub fn local_node(name: &str, port: u16, protocol: &str) -> String {
    node(name, "127.0.0.1", port, protocol)
}

/// A virtual router with listeners.
pub fn router(name: &str, listeners: &[(u16, &str)]) -> String {
    format!(
        "meshName: m\nvirtualRouterName: {name}\nspec:\n  listeners: [{}]\n",
        port_mappings(listeners)
    )
}

/// A virtual service provided by a router.
pub fn service_router(service: &str, router: &str) -> String {
    format!(
        "meshName: m\nvirtualServiceName: {service}\nspec: {{provider: {{virtualRouter: {{virtualRouterName: {router}}}}}}}\n"
    )
}

/// A virtual service provided by a node.
pub fn service_node(service: &str, node: &str) -> String {
    format!(
        "meshName: m\nvirtualServiceName: {service}\nspec: {{provider: {{virtualNode: {{virtualNodeName: {node}}}}}}}\n"
    )
}

/// A route of `kind` (`httpRoute`, `http2Route`, `grpcRoute`) with a flow-style `match`.
pub fn route(
    router: &str,
    name: &str,
    priority: u32,
    kind: &str,
    matcher: &str,
    targets: &[(&str, u32)],
) -> String {
    let targets: Vec<String> = targets
        .iter()
        .map(|(n, w)| format!("{{virtualNode: {n}, weight: {w}}}"))
        .collect();
    format!(
        "meshName: m\nvirtualRouterName: {router}\nrouteName: {name}\nspec:\n  priority: {priority}\n  {kind}:\n    match: {matcher}\n    action: {{weightedTargets: [{}]}}\n",
        targets.join(", ")
    )
}

fn port_mappings(listeners: &[(u16, &str)]) -> String {
    listeners
        .iter()
        .map(|(p, proto)| format!("{{portMapping: {{port: {p}, protocol: {proto}}}}}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses `outrider: ingress A egress B admin C` from the proxy's start-up line.
pub fn listening_line(line: &str) -> Option<(SocketAddr, SocketAddr, SocketAddr)> {
    let rest = line.split("outrider: ingress ").nth(1)?;
    let words: Vec<&str> = rest.split_whitespace().collect();
    match words.as_slice() {
        [ingress, "egress", egress, "admin", admin, ..] => Some((
            ingress.parse().ok()?,
            egress.parse().ok()?,
            admin.parse().ok()?,
        )),
        _ => None,
    }
}
