//! The L7 proxy service: route a request, then forward it with timeouts and retries, and turn
//! every failure into one local reply at the edge.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version, header};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use outrider_config::{GatewayRewrite, Protocol, RetryPolicy, Timeouts, grpc_retry, http_retry};
use outrider_policy::{InFlightRetry, Limiter, Permit, backoff, parse_grpc_timeout};
use outrider_route::RequestParts;
use outrider_telemetry::ListenerStats;
use outrider_telemetry::trace_context::{TraceContext, inject};
use outrider_telemetry::tracing_export::{
    AttrValue, FinishedSpan, RequestTrace, SpanKind, Tracer, unix_nanos,
};
use tokio::time::timeout_at;

use crate::body::UpstreamBody;
use crate::body::{DownBody, ReqBody, RespBody};
use crate::h1client::H1Conn;
use crate::h1server::OnUpgrade;
use crate::headers::{add_forwarding, is_upgrade, split_authority, strip_hop_by_hop};
use crate::idle::Activity;
use crate::local::{LocalReason, local_reply};
use crate::pool::SendError;
use crate::runtime::{HttpDecision, NO_RETRY, Runtime};
use crate::upstream::Upstream;

/// Request bodies up to this size are buffered so they can be replayed on retry; larger ones
/// stream and are not retried. Default is 64 KiB.
pub const MAX_REPLAY_BODY: u64 = 64 * 1024;

/// Response extension: the request matched a retry policy and its attempt failed in a way the
/// policy retries, but its body was too large to replay (over [`MAX_REPLAY_BODY`]), so it was
/// not retried. The access log can flag such responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySkipped;

/// Which side of the sidecar a listener is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Traffic into the local app (port 15000).
    Ingress,
    /// Traffic from the local app to the mesh (port 15001).
    Egress,
}

impl Direction {
    /// `ingress` or `egress`, the stats prefix.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// What every connection of one listener shares.
pub struct ListenerCtx {
    pub direction: Direction,
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub stats: ListenerStats,
    /// The proxy's own listener addresses, never used as a destination (no loops).
    pub own_addrs: Vec<SocketAddr>,
    /// Distributed tracing; None (the default) touches no trace header and builds no span.
    pub tracer: Option<Arc<Tracer>>,
}

/// One downstream connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// Process-unique connection id (`%CONNECTION_ID%`).
    pub id: u64,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The original destination of a redirected connection.
    pub orig_dst: Option<SocketAddr>,
}

/// The hyper service of one downstream connection.
#[derive(Clone)]
pub struct ProxyService {
    ctx: Arc<ListenerCtx>,
    conn: ConnInfo,
    activity: Option<Arc<Activity>>,
}

impl ProxyService {
    pub fn new(ctx: Arc<ListenerCtx>, conn: ConnInfo) -> Self {
        ProxyService {
            ctx,
            conn,
            activity: None,
        }
    }

    /// Counts requests on the connection's idle tracker.
    pub(crate) fn with_activity(mut self, activity: Arc<Activity>) -> Self {
        self.activity = Some(activity);
        self
    }
}

impl hyper::service::Service<Request<Incoming>> for ProxyService {
    type Response = Response<RespBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RespBody>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        // A combinator, not an async block: a block that awaits the future it captured holds
        // it twice.
        Box::pin(futures_util::FutureExt::map(
            self.handle(req.map(DownBody::H2)),
            Ok,
        ))
    }
}

impl ProxyService {
    /// Proxies one request: the response, a local reply when it could not be proxied.
    pub(crate) fn handle(
        &self,
        req: Request<DownBody>,
    ) -> impl Future<Output = Response<RespBody>> + Send + 'static {
        let ctx = self.ctx.clone();
        let conn = self.conn;
        let active = self.activity.as_ref().map(|a| a.begin());
        async move {
            let _active = active;
            // The one clock read of the request's start, shared by the stats, the access log
            // and the request's deadlines. The tokio clock, so deadlines follow paused time in
            // tests; outside tests it is the monotonic clock itself.
            let start = tokio::time::Instant::now();
            ctx.stats.rq_total.increment(1);
            // The common case (no trace, no access log) awaits `handle_inner` directly: every
            // level of async nesting is one more copy of the inner future when it starts.
            let resp = match &ctx.tracer {
                None => {
                    let runtime = ctx.runtime.load_full();
                    match runtime.access_log().cloned() {
                        None => handle_inner(&ctx, conn, &runtime, req, None, None, start).await,
                        // The access-log state is large: boxed so requests without a log do
                        // not carry it.
                        Some(log) => {
                            Box::pin(handle_with_log(&ctx, conn, &runtime, req, None, log, start))
                                .await
                        }
                    }
                }
                // Rare and large: boxed so the common request future stays small.
                Some(tracer) => Box::pin(handle_traced(&ctx, tracer, conn, req, start)).await,
            };
            ctx.stats
                .record_response(resp.status().as_u16(), start.into_std());
            resp
        }
    }
}

/// Where the request goes, owned so the request can be taken apart afterwards.
struct Plan {
    upstream: Arc<Upstream>,
    /// A fixed destination (pass-through) instead of the cluster's balancer.
    fixed: Option<SocketAddr>,
    h2: bool,
    timeouts: Timeouts,
    retry: RetryPolicy,
    /// The matched route's name, for access logs.
    route: Option<Arc<str>>,
}

impl Plan {
    /// To a cluster's balancer, with the policies of the route that chose it.
    fn cluster(
        upstream: &Arc<Upstream>,
        timeouts: Timeouts,
        retry: RetryPolicy,
        route: Option<Arc<str>>,
    ) -> Plan {
        Plan {
            h2: upstream.protocol().is_h2(),
            upstream: upstream.clone(),
            fixed: None,
            timeouts,
            retry,
            route,
        }
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

fn request_authority(req: &Request<DownBody>) -> Option<Authority> {
    if let Some(a) = req.uri().authority() {
        return Some(a.clone());
    }
    let host = req.headers().get(header::HOST)?;
    Authority::try_from(host.as_bytes()).ok()
}

/// What the access log needs from the request path.
#[derive(Default)]
struct Trail {
    upstream_host: Option<SocketAddr>,
    cluster: Option<String>,
    route: Option<Arc<str>>,
    request_headers: Option<HeaderMap>,
}

/// The trace of one request while it is proxied.
struct Traced {
    tracer: Arc<Tracer>,
    request: RequestTrace,
    /// Whether spans are built and exported (sampled, and an exporter configured).
    record: bool,
    /// The ingress server span, whose id the local app sees as its parent.
    server: TraceContext,
    cluster: Option<String>,
}

/// What an upstream attempt needs to open a client span and propagate it.
struct AttemptTrace {
    tracer: Arc<Tracer>,
    request: RequestTrace,
    record: bool,
    cluster: String,
}

async fn handle_traced(
    ctx: &ListenerCtx,
    tracer: &Arc<Tracer>,
    conn: ConnInfo,
    req: Request<DownBody>,
    start: tokio::time::Instant,
) -> Response<RespBody> {
    let request = tracer.begin(req.headers());
    let record = request.sampled && tracer.exporting();
    let mut traced = Traced {
        tracer: tracer.clone(),
        server: request.child(),
        request,
        record,
        cluster: None,
    };
    // Egress emits client spans per attempt only, as Envoy's sidecar does.
    if !(record && ctx.direction == Direction::Ingress) {
        return handle_logged(ctx, conn, req, Some(&mut traced), start).await;
    }
    let start_nanos = unix_nanos();
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let authority = request_authority(&req).map(|a| a.host().to_string());
    let version = protocol_version(req.version());
    let resp = handle_logged(ctx, conn, req, Some(&mut traced), start).await;
    let status = resp.status().as_u16();
    let mut attributes = vec![
        ("http.request.method", AttrValue::Str(method.clone())),
        ("url.path", AttrValue::Str(path)),
        (
            "http.response.status_code",
            AttrValue::Int(i64::from(status)),
        ),
        ("network.protocol.version", AttrValue::Str(version.into())),
        (
            "network.peer.address",
            AttrValue::Str(conn.peer.ip().to_string()),
        ),
    ];
    if let Some(a) = authority {
        attributes.push(("server.address", AttrValue::Str(a)));
    }
    if let Some(c) = traced.cluster.take() {
        attributes.push(("upstream.cluster", AttrValue::Str(c)));
    }
    let error = match resp.extensions().get::<LocalReason>() {
        Some(r) => Some(r.flag().to_string()),
        None => (status >= 500).then(|| status.to_string()),
    };
    let failed = error.is_some();
    if let Some(e) = error {
        attributes.push(("error.type", AttrValue::Str(e)));
    }
    traced.tracer.record(FinishedSpan {
        trace_id: traced.server.trace_id,
        span_id: traced.server.span_id,
        parent_span_id: traced.request.parent_span_id(),
        name: method,
        kind: SpanKind::Server,
        start_unix_nanos: start_nanos,
        end_unix_nanos: unix_nanos(),
        attributes,
        error: failed,
    });
    resp
}

fn protocol_version(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        _ => "1.1",
    }
}

#[expect(
    clippy::manual_async_fn,
    reason = "an async block does not keep a second copy of its arguments in the future"
)]
fn handle_logged(
    ctx: &ListenerCtx,
    conn: ConnInfo,
    req: Request<DownBody>,
    traced: Option<&mut Traced>,
    start: tokio::time::Instant,
) -> impl Future<Output = Response<RespBody>> {
    async move {
        let runtime = ctx.runtime.load_full();
        match runtime.access_log().cloned() {
            None => handle_inner(ctx, conn, &runtime, req, None, traced, start).await,
            // The access-log state is large: boxed so requests without a log do not carry it.
            Some(log) => {
                Box::pin(handle_with_log(
                    ctx, conn, &runtime, req, traced, log, start,
                ))
                .await
            }
        }
    }
}

async fn handle_with_log(
    ctx: &ListenerCtx,
    conn: ConnInfo,
    runtime: &Runtime,
    req: Request<DownBody>,
    traced: Option<&mut Traced>,
    log: Arc<crate::access::AccessLog>,
    start: tokio::time::Instant,
) -> Response<RespBody> {
    let start_wall = std::time::SystemTime::now();
    let method = req.method().clone();
    let uri = req.uri().clone();
    let version = req.version();
    let authority = request_authority(&req).map(|a| a.as_str().to_string());
    let bytes_received = req.body().size_hint().exact().unwrap_or(0);
    let mut trail = Trail::default();
    let mut resp = handle_inner(ctx, conn, runtime, req, Some(&mut trail), traced, start).await;
    let local = resp
        .extensions()
        .get::<LocalReason>()
        .map_or("", |r| r.flag());
    // `NRB` (Outrider's own flag): a retry was due, but the body was too large to replay.
    let flags: std::borrow::Cow<'static, str> =
        match (local, resp.extensions().get::<RetrySkipped>()) {
            (l, None) => l.into(),
            ("", Some(_)) => "NRB".into(),
            (l, Some(_)) => format!("{l},NRB").into(),
        };
    let pending = crate::access::Pending {
        log,
        start_wall,
        start: start.into_std(),
        method,
        uri,
        authority,
        version,
        request_headers: trail.request_headers.unwrap_or_default(),
        bytes_received,
        response_headers: resp.headers().clone(),
        status: resp.status().as_u16(),
        flags,
        first_byte: start.elapsed(),
        upstream_host: trail.upstream_host,
        cluster: trail.cluster,
        route: trail.route,
        remote: conn.peer,
        local: conn.orig_dst.unwrap_or(conn.local),
        connection_id: conn.id,
    };
    resp.body_mut().attach_log(pending);
    resp
}

#[expect(
    clippy::manual_async_fn,
    reason = "an async block does not keep a second copy of its arguments in the future"
)]
fn handle_inner(
    ctx: &ListenerCtx,
    conn: ConnInfo,
    runtime: &Runtime,
    mut req: Request<DownBody>,
    mut trail: Option<&mut Trail>,
    mut traced: Option<&mut Traced>,
    start: tokio::time::Instant,
) -> impl Future<Output = Response<RespBody>> {
    async move {
        let grpc = is_grpc(req.headers());
        let mut authority = request_authority(&req);
        let gateway = ctx.direction == Direction::Ingress && runtime.snapshot().gateway.is_some();
        // Matched directly (no `decided` local): every local alive across an await takes room
        // in this future.
        let plan = match if gateway {
            decide_gateway(conn, runtime, &mut req, &mut authority)
        } else {
            decide(ctx, conn, runtime, &req, authority.as_ref()).await
        } {
            Ok(plan) => plan,
            Err(reason) => {
                if let Some(t) = trail.as_deref_mut() {
                    t.request_headers = Some(req.headers().clone());
                }
                return local_reply(reason, grpc);
            }
        };
        if let Some(t) = trail.as_deref_mut() {
            t.cluster = Some(plan.upstream.name().to_string());
            t.route = plan.route.clone();
        }
        if let Some(t) = traced.as_deref_mut()
            && t.record
        {
            t.cluster = Some(plan.upstream.name().to_string());
        }
        let upgrade = req.version() == Version::HTTP_11 && is_upgrade(req.headers());
        let on_upgrade = if upgrade {
            req.extensions_mut().remove::<OnUpgrade>()
        } else {
            None
        };
        let downstream_version = req.version();
        // The request head is rewritten in a block without awaits so that it takes no room in
        // this future once it has become the attempt template.
        let (template, body) = {
            let (mut parts, body) = req.into_parts();
            strip_hop_by_hop(&mut parts.headers, upgrade);
            add_forwarding(&mut parts.headers, conn.peer.ip(), "http");
            // Ingress hands the app the server span; egress writes a new span per attempt.
            let attempt_trace = match traced {
                Some(t) if ctx.direction == Direction::Ingress => {
                    inject(&t.server, &mut parts.headers, t.request.formats);
                    None
                }
                Some(t) => Some(AttemptTrace {
                    tracer: t.tracer.clone(),
                    request: t.request.clone(),
                    record: t.record,
                    cluster: plan.upstream.name().to_string(),
                }),
                None => None,
            };
            if let Some(t) = trail.as_deref_mut() {
                t.request_headers = Some(parts.headers.clone());
            }
            let uri =
                match upstream_uri(std::mem::take(&mut parts.uri), authority.as_ref(), plan.h2) {
                    Some(u) => u,
                    None => return local_reply(LocalReason::BadRequest, grpc),
                };
            if plan.h2 {
                parts.headers.remove(header::HOST);
            } else if !parts.headers.contains_key(header::HOST)
                && let Some(a) = &authority
                && let Ok(v) = http::HeaderValue::from_str(a.as_str())
            {
                parts.headers.insert(header::HOST, v);
            }
            let template = Template {
                method: parts.method,
                uri,
                headers: parts.headers,
                grpc,
                trace: attempt_trace,
            };
            (template, body)
        };
        let retries_possible = plan.retry.max_retries > 0 && !upgrade;
        // The request's start is "now" for the upstream side too (the route lookup since is
        // a few microseconds), unless the body was waited for: then the clock is read again.
        let (body, clock) = match prepare_body(body, retries_possible) {
            Prepared::Ready(b) => (b, Some(start)),
            // Buffering for replay waits on the client: boxed, off the common bodiless path.
            Prepared::Buffer(body) => match Box::pin(buffer_body(body)).await {
                Ok(b) => (b, None),
                Err(reason) => return local_reply(reason, grpc),
            },
        };

        let mut skipped = false;
        let mut host = None;
        // Boxed: the attempt's future is most of a request's state, and a box keeps this
        // future (and the ones around it, each moved whole into its parent when it starts)
        // small; starting it costs one copy into the box instead of one per level.
        let forwarded = Box::pin(forward(
            &plan,
            template,
            body,
            clock,
            &mut skipped,
            &mut host,
        ))
        .await;
        if let Some(t) = trail {
            t.upstream_host = host;
        }
        let mut resp = match forwarded {
            Ok((resp, permit)) => {
                let (mut head, mut body) = resp.into_parts();
                if head.status == StatusCode::SWITCHING_PROTOCOLS {
                    // The upstream connection leaves the pool for good: it becomes one end of
                    // a byte pipe.
                    if let (Some(down), UpstreamBody::H1(b)) = (on_upgrade, &mut body)
                        && let Some(up) = b.take_upgraded()
                    {
                        splice_upgrade(down, up);
                    }
                } else {
                    strip_hop_by_hop(&mut head.headers, false);
                }
                head.version = downstream_version;
                Response::from_parts(head, RespBody::upstream(body, permit))
            }
            Err(reason) => local_reply(reason, grpc),
        };
        if skipped {
            resp.extensions_mut().insert(RetrySkipped);
        }
        resp
    }
}

async fn decide(
    ctx: &ListenerCtx,
    conn: ConnInfo,
    runtime: &Runtime,
    req: &Request<DownBody>,
    authority: Option<&Authority>,
) -> Result<Plan, LocalReason> {
    let downstream_h2 = req.version() == Version::HTTP_2;
    let orig_port = conn.orig_dst.map(|a| a.port());
    if ctx.direction == Direction::Ingress {
        if runtime.is_transparent() {
            let port = orig_port.unwrap_or(conn.local.port());
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            if outrider_transport::is_self(addr, &ctx.own_addrs) {
                return Err(LocalReason::NoRoute);
            }
            return Ok(Plan {
                upstream: runtime.passthrough().clone(),
                fixed: Some(addr),
                h2: downstream_h2,
                timeouts: Timeouts::default(),
                retry: NO_RETRY,
                route: None,
            });
        }
        let index = runtime
            .ingress_listener(orig_port)
            .ok_or(LocalReason::NoHealthyUpstream)?;
        let listener = &runtime.snapshot().listeners[index];
        let upstream = runtime
            .locals()
            .get(index)
            .ok_or(LocalReason::NoHealthyUpstream)?
            .clone();
        return Ok(Plan {
            h2: listener.protocol.is_h2(),
            upstream,
            fixed: None,
            timeouts: listener.timeouts,
            retry: NO_RETRY,
            route: None,
        });
    }

    let (host, authority_port) = match authority {
        Some(a) => split_authority(a.as_str()),
        None => ("", None),
    };
    let path = req.uri().path();
    let parts = RequestParts {
        method: req.method(),
        scheme: "http",
        host,
        port: authority_port.or(orig_port).unwrap_or(80),
        path,
        query: req.uri().query(),
        headers: req.headers(),
    };
    match runtime.route_http(&parts, authority_port, orig_port) {
        HttpDecision::Cluster {
            upstream,
            timeouts,
            retry,
            route,
        } => Ok(Plan::cluster(
            upstream,
            timeouts,
            retry,
            route.map(Arc::from),
        )),
        HttpDecision::NoRoute => Err(LocalReason::NoRoute),
        HttpDecision::NoCluster => Err(LocalReason::NoHealthyUpstream),
        HttpDecision::Unknown(outrider_config::EgressFilter::DropAll) => Err(LocalReason::NoRoute),
        HttpDecision::Unknown(outrider_config::EgressFilter::AllowAll) => {
            let dst = match conn.orig_dst {
                Some(d) => d,
                // DNS is rare (explicit-proxy clients): boxed to keep it out of the request future.
                None => Box::pin(resolve_authority(host, authority_port.unwrap_or(80))).await?,
            };
            if outrider_transport::is_self(dst, &ctx.own_addrs) {
                return Err(LocalReason::NoRoute);
            }
            Ok(Plan {
                upstream: runtime.passthrough().clone(),
                fixed: Some(dst),
                h2: downstream_h2,
                timeouts: Timeouts::default(),
                retry: NO_RETRY,
                route: None,
            })
        }
    }
}

/// Gateway mode: the gateway listener the connection arrived on picks its route table, the
/// first matching gateway route rewrites the request (path, Host), and the request then goes
/// to the route's virtual service exactly as a sidecar's egress would send it there.
fn decide_gateway(
    conn: ConnInfo,
    runtime: &Runtime,
    req: &mut Request<DownBody>,
    authority: &mut Option<Authority>,
) -> Result<Plan, LocalReason> {
    let snapshot = runtime.snapshot();
    let gateway = snapshot.gateway.as_ref().ok_or(LocalReason::NoRoute)?;
    let index = runtime
        .ingress_listener(conn.orig_dst.map(|a| a.port()))
        .ok_or(LocalReason::NoRoute)?;
    let listener = gateway.listeners.get(index).ok_or(LocalReason::NoRoute)?;
    let route = {
        let host = authority
            .as_ref()
            .map_or("", |a| split_authority(a.as_str()).0);
        let parts = RequestParts {
            method: req.method(),
            scheme: "http",
            host,
            port: listener.port,
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
        };
        listener.routes.select(&parts).ok_or(LocalReason::NoRoute)?
    };
    let action = &route.action;
    let service = snapshot
        .backends
        .get(action.service)
        .ok_or(LocalReason::NoHealthyUpstream)?;
    rewrite_request(req, authority, &action.rewrite, &service.name)?;
    let (host, _) = authority
        .as_ref()
        .map_or(("", None), |a| split_authority(a.as_str()));
    let parts = RequestParts {
        method: req.method(),
        scheme: "http",
        host,
        port: action.port.unwrap_or(listener.port),
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
    };
    match runtime.route_service(action.service, &parts, action.port, None) {
        HttpDecision::Cluster {
            upstream,
            timeouts,
            retry,
            route: mesh_route,
        } => Ok(Plan::cluster(
            upstream,
            timeouts,
            retry,
            // The mesh route says more about where the request went; else the gateway route.
            Some(mesh_route.map_or_else(|| route.name.clone(), Arc::from)),
        )),
        HttpDecision::NoRoute | HttpDecision::Unknown(_) => Err(LocalReason::NoRoute),
        HttpDecision::NoCluster => Err(LocalReason::NoHealthyUpstream),
    }
}

/// Applies a gateway route's rewrites: the path (exact, else the matched prefix replaced; the
/// query string is kept), then the Host and `:authority` (the target virtual service's name).
fn rewrite_request(
    req: &mut Request<DownBody>,
    authority: &mut Option<Authority>,
    rewrite: &GatewayRewrite,
    service: &str,
) -> Result<(), LocalReason> {
    let path = req.uri().path();
    let new_path = match (&rewrite.path, &rewrite.prefix) {
        (Some(exact), _) => Some(exact.clone()),
        (None, Some((matched, to))) => path
            .strip_prefix(matched.as_str())
            .map(|rest| replace_prefix(to, rest)),
        (None, None) => None,
    };
    if let Some(new_path) = new_path {
        let pq = match req.uri().query() {
            Some(q) => format!("{new_path}?{q}"),
            None => new_path,
        };
        let mut uri = req.uri().clone().into_parts();
        uri.path_and_query = Some(PathAndQuery::try_from(pq).map_err(|_| LocalReason::BadRequest)?);
        *req.uri_mut() = Uri::from_parts(uri).map_err(|_| LocalReason::BadRequest)?;
    }
    if rewrite.hostname {
        let target = Authority::try_from(service).map_err(|_| LocalReason::BadRequest)?;
        let value = http::HeaderValue::from_str(service).map_err(|_| LocalReason::BadRequest)?;
        req.headers_mut().insert(header::HOST, value);
        if req.uri().authority().is_some() {
            let mut uri = req.uri().clone().into_parts();
            uri.authority = Some(target.clone());
            *req.uri_mut() = Uri::from_parts(uri).map_err(|_| LocalReason::BadRequest)?;
        }
        *authority = Some(target);
    }
    Ok(())
}

/// `to` followed by what came after the matched prefix, without doubling the `/` between them
/// (App Mesh's default `/` replacing `/red` in `/red/x` gives `/x`, not `//x`).
fn replace_prefix(to: &str, rest: &str) -> String {
    let rest = if to.ends_with('/') {
        rest.strip_prefix('/').unwrap_or(rest)
    } else {
        rest
    };
    let mut out = String::with_capacity(to.len() + rest.len() + 1);
    out.push_str(to);
    out.push_str(rest);
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// A client used the egress port as an explicit proxy toward a host the mesh does not know.
async fn resolve_authority(host: &str, port: u16) -> Result<SocketAddr, LocalReason> {
    if host.is_empty() {
        return Err(LocalReason::NoRoute);
    }
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    match tokio::net::lookup_host((host, port)).await {
        Ok(mut addrs) => addrs.next().ok_or(LocalReason::NoHealthyUpstream),
        Err(_) => Err(LocalReason::NoHealthyUpstream),
    }
}

/// Whether a request body is ready to send or must first be buffered for replay.
enum Prepared {
    Ready(ReqBody),
    Buffer(DownBody),
}

fn prepare_body(body: DownBody, retries_possible: bool) -> Prepared {
    if body.is_end_stream() {
        return Prepared::Ready(ReqBody::Empty);
    }
    let small = body
        .size_hint()
        .exact()
        .is_some_and(|n| n <= MAX_REPLAY_BODY);
    if !(retries_possible && small) {
        return Prepared::Ready(ReqBody::Stream(body));
    }
    Prepared::Buffer(body)
}

/// Reads a small sized body whole so that retries can replay it.
async fn buffer_body(body: DownBody) -> Result<ReqBody, LocalReason> {
    match Limited::new(body, MAX_REPLAY_BODY as usize).collect().await {
        Ok(collected) => {
            // Trailers on a small unary body are rare; such a request is simply not replayed
            // with them, which matches what was announced (a sized body).
            Ok(ReqBody::Full(Some(collected.to_bytes())))
        }
        Err(_) => Err(LocalReason::BadRequest),
    }
}

fn upstream_uri(uri: Uri, authority: Option<&Authority>, h2: bool) -> Option<Uri> {
    // An HTTP/1.1 origin-form target (the common case) is already what goes upstream.
    if !h2 && uri.scheme().is_none() && uri.authority().is_none() && uri.path_and_query().is_some()
    {
        return Some(uri);
    }
    let pq = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if h2 {
        let authority = authority?.clone();
        Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(authority)
            .path_and_query(pq)
            .build()
            .ok()
    } else {
        Uri::builder().path_and_query(pq).build().ok()
    }
}

/// The parts of a request kept to build each attempt.
struct Template {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    grpc: bool,
    trace: Option<AttemptTrace>,
}

impl Template {
    /// The request of one attempt. With `keep`, the headers are copied because another attempt
    /// may follow; without it they are moved out (the last possible attempt), saving a
    /// header-map copy per request that cannot be retried.
    fn request(&mut self, body: ReqBody, h2: bool, keep: bool) -> Request<ReqBody> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = if keep {
            self.headers.clone()
        } else {
            std::mem::take(&mut self.headers)
        };
        *req.version_mut() = if h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        req
    }

    fn idempotent(&self) -> bool {
        crate::pool::idempotent(&self.method)
    }
}

#[expect(
    clippy::large_enum_variant,
    reason = "returned once per attempt and unpacked at once: boxing would allocate per request"
)]
enum Attempt {
    Response(Response<UpstreamBody>),
    Failed(LocalReason, bool),
}

/// What [`forward`] hands back: the response, and the circuit-breaker slot held until its body
/// is read.
type Forwarded = (Response<UpstreamBody>, Option<Permit>);

/// Sends the request with retries. Sets `skipped` when a retry was due but the body could not
/// be replayed. `clock` is the caller's reading of the tokio clock when it has just taken one
/// (the deadlines and the first attempt count from it); None reads it here.
#[expect(
    clippy::manual_async_fn,
    reason = "an async block does not keep a second copy of its arguments in the future"
)]
fn forward(
    plan: &Plan,
    mut template: Template,
    body: ReqBody,
    clock: Option<tokio::time::Instant>,
    skipped: &mut bool,
    last_addr: &mut Option<SocketAddr>,
) -> impl Future<Output = Result<Forwarded, LocalReason>> {
    async move {
        // "Now" on the tokio clock (so deadlines follow paused time in tests): the caller's
        // reading when it has a fresh one.
        let started = clock.unwrap_or_else(tokio::time::Instant::now);
        let mut deadline = plan.timeouts.per_request.map(|t| started + t);
        // A gRPC client's own deadline caps the route's.
        if template.grpc
            && let Some(t) = template
                .headers
                .get("grpc-timeout")
                .and_then(|v| parse_grpc_timeout(v.as_bytes()))
        {
            let d = started + t;
            deadline = Some(deadline.map_or(d, |x| x.min(d)));
        }
        let upstream = &plan.upstream;
        let stats = &upstream.stats;
        let _request = upstream.budget.start_request();
        let permit = match &upstream.limiter {
            Some(limiter) => match limiter.try_acquire() {
                Ok(p) => Some(p),
                // Waiting for a slot is rare and its future large: boxed.
                Err(_) => Some(Box::pin(admit(upstream, limiter, deadline)).await?),
            },
            None => None,
        };
        let replay = match &body {
            ReqBody::Empty => Some(None),
            ReqBody::Full(Some(b)) => Some(Some(b.clone())),
            _ => None,
        };
        let mut body = Some(body);
        let mut attempt: u32 = 0;
        // The retry slot of the attempt in flight, held until the request ends.
        let mut _retry: Option<InFlightRetry> = None;
        loop {
            let allowed = attempt < plan.retry.max_retries;
            let can_retry = allowed && replay.is_some();
            let attempt_body = match (&replay, body.take()) {
                (_, Some(b)) => b,
                (Some(None), None) => ReqBody::Empty,
                (Some(Some(bytes)), None) => ReqBody::Full(Some(bytes.clone())),
                (None, None) => return Err(LocalReason::UpstreamReset),
            };
            // The first attempt's per-try deadline counts from the request's clock read.
            let clock = (attempt == 0).then_some(started);
            let outcome = one_attempt(
                plan,
                &mut template,
                AttemptInput {
                    body: attempt_body,
                    keep_headers: can_retry,
                    deadline,
                    clock,
                },
                *last_addr,
                last_addr,
            )
            .await;
            match outcome {
                Attempt::Response(resp) => {
                    let status = resp.status().as_u16();
                    let retriable = retry_on_response(&plan.retry, &template, &resp);
                    *skipped |= retriable && allowed && replay.is_none();
                    let slot = if can_retry && retriable {
                        // A request retries one attempt at a time: it keeps its slot.
                        _retry.take().or_else(|| retry_slot(upstream))
                    } else {
                        None
                    };
                    match slot {
                        Some(slot) => {
                            _retry = Some(slot);
                            stats.rq_retry.increment(1);
                            drop(resp);
                        }
                        None => {
                            if attempt > 0 && status < 500 {
                                stats.rq_retry_success.increment(1);
                            }
                            return Ok((resp, permit));
                        }
                    }
                }
                Attempt::Failed(reason, retriable) => {
                    if reason == LocalReason::Timeout
                        && deadline.is_some_and(|d| tokio::time::Instant::now() >= d)
                    {
                        stats.rq_timeout.increment(1);
                        return Err(LocalReason::Timeout);
                    }
                    *skipped |= retriable && allowed && replay.is_none();
                    let slot = if can_retry && retriable {
                        // A request retries one attempt at a time: it keeps its slot.
                        _retry.take().or_else(|| retry_slot(upstream))
                    } else {
                        None
                    };
                    let Some(slot) = slot else {
                        if reason == LocalReason::Timeout {
                            stats.rq_timeout.increment(1);
                        }
                        return Err(reason);
                    };
                    _retry = Some(slot);
                    stats.rq_retry.increment(1);
                }
            }
            attempt += 1;
            let backoff = backoff(attempt);
            match deadline {
                Some(d) if tokio::time::Instant::now() + backoff >= d => {
                    stats.rq_timeout.increment(1);
                    return Err(LocalReason::Timeout);
                }
                // Only retries sleep: boxed so the timer is not part of every request's future.
                _ => Box::pin(tokio::time::sleep(backoff)).await,
            }
        }
    }
}

/// A retry slot from the cluster's budget; counts `upstream_rq_retry_overflow` when spent.
fn retry_slot(upstream: &Upstream) -> Option<InFlightRetry> {
    let slot = upstream.budget.try_retry();
    if slot.is_none() {
        upstream.extra.rq_retry_overflow.increment(1);
    }
    slot
}

/// Passes the cluster's circuit breaker once no slot was free at once: a bounded wait (HTTP/1
/// `maxPendingRequests`) within the request's deadline, else a fast overflow.
async fn admit(
    upstream: &Upstream,
    limiter: &Limiter,
    deadline: Option<tokio::time::Instant>,
) -> Result<Permit, LocalReason> {
    if upstream.protocol() == Protocol::Http {
        // Every connection allowed is in use.
        upstream.extra.cx_overflow.increment(1);
    }
    let waited = match deadline {
        Some(d) => match timeout_at(d, limiter.acquire()).await {
            Ok(r) => r,
            Err(_) => {
                upstream.stats.rq_timeout.increment(1);
                return Err(LocalReason::Timeout);
            }
        },
        None => limiter.acquire().await,
    };
    waited.map_err(|_| {
        upstream.stats.rq_pending_overflow.increment(1);
        LocalReason::Overflow
    })
}

/// What one attempt sends and when.
struct AttemptInput {
    body: ReqBody,
    /// Another attempt may follow: copy the template's headers instead of moving them.
    keep_headers: bool,
    deadline: Option<tokio::time::Instant>,
    /// "Now" on the tokio clock when the caller has just read it.
    clock: Option<tokio::time::Instant>,
}

#[expect(
    clippy::manual_async_fn,
    reason = "an async block does not keep a second copy of its arguments in the future"
)]
fn one_attempt(
    plan: &Plan,
    template: &mut Template,
    input: AttemptInput,
    avoid: Option<SocketAddr>,
    used: &mut Option<SocketAddr>,
) -> impl Future<Output = Attempt> {
    async move {
        let AttemptInput {
            body,
            keep_headers,
            deadline,
            clock,
        } = input;
        let upstream = &plan.upstream;
        let (addr, guard) = match plan.fixed {
            Some(addr) => (addr, None),
            None => {
                let picked = match avoid {
                    Some(prev) => upstream.balancer.pick_excluding(prev),
                    None => upstream.balancer.pick(),
                };
                match picked {
                    Some(ep) => (ep.addr(), Some(ep.start())),
                    None => return Attempt::Failed(LocalReason::NoHealthyUpstream, false),
                }
            }
        };
        *used = Some(addr);
        let pool = upstream.pools.get(addr);
        // HTTP/1.1 sends the request by reference and hands its headers back to the template
        // afterwards, so only HTTP/2 (which takes the request) copies them for a retry.
        let (mut req, span) = {
            let mut req = template.request(body, plan.h2, keep_headers && plan.h2);
            let span = template.trace.as_ref().map(|t| {
                let child = t.request.child();
                inject(&child, req.headers_mut(), t.request.formats);
                // Read before the request (and its headers) goes to the pool.
                let host = if t.record {
                    span_host(template, req.headers())
                } else {
                    None
                };
                (t, child, unix_nanos(), host)
            });
            (req, span)
        };
        let now = clock.unwrap_or_else(tokio::time::Instant::now);
        let try_deadline = match (plan.retry.per_retry_timeout, deadline) {
            (Some(t), Some(d)) => Some(d.min(now + t)),
            (Some(t), None) => Some(now + t),
            (None, d) => d,
        };
        upstream.stats.rq_total.increment(1);
        // The upstream time (stats, balancer latency) starts at this attempt's clock read: for
        // a first attempt usually the request's start, earlier by the route lookup only (a
        // few microseconds), which saves a clock read per request.
        let started = now.into_std();
        let send = pool.send(plan.h2, &mut req, upstream.connect_timeout(), started);
        let result = match try_deadline {
            Some(d) => timeout_at(d, send).await.ok(),
            None => Some(send.await),
        };
        if keep_headers && !plan.h2 {
            template.headers = std::mem::take(req.headers_mut());
        }
        drop(req);
        let Some(result) = result else {
            if let Some((t, child, start, host)) = span {
                client_span(
                    template,
                    plan.h2,
                    t,
                    child,
                    (start, host),
                    addr,
                    Err("timeout"),
                );
            }
            // Dropping the future cancelled the upstream attempt.
            return Attempt::Failed(LocalReason::Timeout, true);
        };
        match result {
            Ok((resp, dialed)) => {
                let status = resp.status().as_u16();
                if let Some((t, child, start, host)) = span {
                    client_span(template, plan.h2, t, child, (start, host), addr, Ok(status));
                }
                // One clock read for both the stats and the balancer's latency sample.
                let end = Instant::now();
                let elapsed = end.saturating_duration_since(started);
                upstream.stats.record_response_elapsed(status, elapsed);
                if let Some(g) = guard {
                    if status >= 500 {
                        upstream.record_outlier_error(g.endpoint());
                    }
                    // A sample that includes dialing would make the latency-aware balancer
                    // shun the endpoint for as long as the sample takes to decay, for a cost
                    // paid once per connection.
                    if !dialed {
                        g.finish_at(elapsed, end);
                    }
                }
                Attempt::Response(resp)
            }
            Err(err) => {
                tracing::debug!(cluster = upstream.name(), %addr, error = %err, "upstream attempt failed");
                if let Some(g) = &guard {
                    upstream.record_outlier_error(g.endpoint());
                }
                let retriable = retry_on_error(&plan.retry, &err);
                let reason = if err.is_connect_failure() {
                    LocalReason::ConnectFailure
                } else {
                    LocalReason::UpstreamReset
                };
                if let Some((t, child, start, host)) = span {
                    let kind = if reason == LocalReason::ConnectFailure {
                        "connect_failure"
                    } else {
                        "upstream_reset"
                    };
                    client_span(template, plan.h2, t, child, (start, host), addr, Err(kind));
                }
                Attempt::Failed(reason, retriable)
            }
        }
    }
}

/// The `server.address` of a client span: the URI's host, else the `Host` header's.
fn span_host(template: &Template, headers: &HeaderMap) -> Option<String> {
    template.uri.host().map(str::to_string).or_else(|| {
        let h = headers.get(header::HOST)?.to_str().ok()?;
        Some(split_authority(h).0.to_string())
    })
}

/// Records the client span of one attempt: `Ok(status)` or `Err(error.type)`.
fn client_span(
    template: &Template,
    h2: bool,
    t: &AttemptTrace,
    child: TraceContext,
    (start, host): (u64, Option<String>),
    addr: SocketAddr,
    outcome: Result<u16, &'static str>,
) {
    if !t.record {
        return;
    }
    let mut attributes = vec![
        (
            "http.request.method",
            AttrValue::Str(template.method.to_string()),
        ),
        ("url.path", AttrValue::Str(template.uri.path().to_string())),
        ("upstream.cluster", AttrValue::Str(t.cluster.clone())),
        (
            "network.protocol.version",
            AttrValue::Str(if h2 { "2" } else { "1.1" }.into()),
        ),
        (
            "network.peer.address",
            AttrValue::Str(addr.ip().to_string()),
        ),
        ("network.peer.port", AttrValue::Int(i64::from(addr.port()))),
    ];
    if let Some(h) = host {
        attributes.push(("server.address", AttrValue::Str(h)));
    }
    let error = match outcome {
        Ok(status) => {
            attributes.push((
                "http.response.status_code",
                AttrValue::Int(i64::from(status)),
            ));
            (status >= 500).then(|| status.to_string())
        }
        Err(kind) => Some(kind.to_string()),
    };
    let failed = error.is_some();
    if let Some(e) = error {
        attributes.push(("error.type", AttrValue::Str(e)));
    }
    t.tracer.record(FinishedSpan {
        trace_id: child.trace_id,
        span_id: child.span_id,
        parent_span_id: t.request.parent_span_id(),
        name: template.method.to_string(),
        kind: SpanKind::Client,
        start_unix_nanos: start,
        end_unix_nanos: unix_nanos(),
        attributes,
        error: failed,
    });
}

fn retry_on_error(policy: &RetryPolicy, err: &SendError) -> bool {
    match err {
        SendError::Connect(_) | SendError::Handshake(_) => policy.connection_error,
        SendError::Refused(_) => policy.http_events & http_retry::STREAM_ERROR != 0,
        // A reset after sending may have been processed: only an explicit stream-error
        // policy retries it, never App Mesh's implicit default.
        SendError::Reset(_) | SendError::Http1(_) => {
            policy.http_events & http_retry::STREAM_ERROR != 0 && !policy.implicit
        }
    }
}

fn retry_on_response<B>(policy: &RetryPolicy, template: &Template, resp: &Response<B>) -> bool {
    if policy.implicit && !template.idempotent() {
        return false;
    }
    let status = resp.status().as_u16();
    let e = policy.http_events;
    let by_status = (e & http_retry::SERVER_ERROR != 0 && (500..=511).contains(&status))
        || (e & http_retry::GATEWAY_ERROR != 0 && (502..=504).contains(&status))
        || (e & http_retry::CLIENT_ERROR != 0 && status == 409)
        || (e & http_retry::STATUS_503 != 0 && status == 503);
    if by_status {
        return true;
    }
    if template.grpc && policy.grpc_events != 0 {
        let code = resp
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<u32>().ok());
        let g = policy.grpc_events;
        return match code {
            Some(1) => g & grpc_retry::CANCELLED != 0,
            Some(4) => g & grpc_retry::DEADLINE_EXCEEDED != 0,
            Some(8) => g & grpc_retry::RESOURCE_EXHAUSTED != 0,
            Some(13) => g & grpc_retry::INTERNAL != 0,
            Some(14) => g & grpc_retry::UNAVAILABLE != 0,
            _ => false,
        };
    }
    false
}

/// After a 101, both connections become a byte pipe. Bytes the upstream sent right behind its
/// 101 (already read with the head) go downstream first.
fn splice_upgrade(down: OnUpgrade, mut up: H1Conn) {
    tokio::spawn(async move {
        let Some(mut down) = down.upgraded().await else {
            tracing::debug!("upgrade failed: the 101 did not reach the client");
            return;
        };
        let (up, early) = up.upgraded();
        if !early.is_empty()
            && tokio::io::AsyncWriteExt::write_all(&mut down, &early)
                .await
                .is_err()
        {
            return;
        }
        let _ = tokio::io::copy_bidirectional(&mut down, up).await;
    });
}

#[cfg(test)]
mod tests {
    use super::replace_prefix;

    #[test]
    fn prefix_replacement_never_doubles_the_slash() {
        assert_eq!(replace_prefix("/", "items"), "/items");
        assert_eq!(replace_prefix("/", "/items"), "/items");
        assert_eq!(replace_prefix("/", ""), "/");
        assert_eq!(replace_prefix("/new/", "a/b"), "/new/a/b");
        assert_eq!(replace_prefix("/new", "/a"), "/new/a");
        assert_eq!(replace_prefix("", ""), "/");
    }
}
