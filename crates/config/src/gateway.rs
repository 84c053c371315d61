//! Compilation of one virtual gateway: its listeners, and its gateway routes as one route
//! table per listener whose actions name a target virtual service and the rewrites to apply.

use std::collections::HashMap;
use std::sync::Arc;

use outrider_route::{GrpcMatch, HttpMatch, Route, RouteMatch, RouteTable};

use super::{
    Compiler, access_log, client_tls, count, headers, host_match, http_method, http_timeouts,
    listener_tls, path_match, port, query_matches,
};
use crate::load::{Kind, Resource, Spec};
use crate::model::{
    self, GatewayConnectionPool, GatewayRouteSpec, GatewayRouteTarget, HttpGatewayRoute, Toggle,
};
use crate::validate::protocol;
use crate::{
    ConnectionPool, EgressFilter, Gateway, GatewayAction, GatewayListener, GatewayRewrite,
    Identity, NodeListener, Problem, Protocol, Snapshot,
};

/// The path a prefix is rewritten to when `defaultPrefix` is `ENABLED` (App Mesh's default).
const DEFAULT_PREFIX_REWRITE: &str = "/";

/// One gateway route compiled once, then copied into the table of every listener it serves.
struct Compiled {
    protocol: Protocol,
    /// `match.port`: only the listener on this port. Default is none (every listener).
    port: Option<u16>,
    route: Route<GatewayAction>,
}

/// Builds the snapshot of the virtual gateway `name`.
pub(super) fn compile(
    mut c: Compiler<'_>,
    name: &str,
    egress_filter: EgressFilter,
) -> Result<Snapshot, Vec<Problem>> {
    let Some(gw) = c.find(Kind::VirtualGateway, None, name) else {
        let known: Vec<&str> = c
            .in_mesh(Kind::VirtualGateway)
            .map(|r| r.name.as_str())
            .collect();
        return Err(vec![Problem::error(
            "-",
            "-",
            "-",
            "--gateway",
            format!(
                "virtual gateway \"{name}\" is not in mesh \"{}\" (known: {})",
                c.mesh,
                known.join(", ")
            ),
        )]);
    };
    let Spec::VirtualGateway(spec) = &gw.spec else {
        return Err(vec![gw.error(
            "spec",
            "internal: a virtual gateway without a gateway spec",
        )]);
    };
    let listeners: Vec<NodeListener> = spec
        .listeners
        .iter()
        .map(|l| {
            let proto = protocol(l.port_mapping.protocol);
            let lport = port(l.port_mapping.port);
            NodeListener {
                port: lport,
                protocol: proto,
                // A gateway listener has no `timeout` field: App Mesh's defaults apply.
                timeouts: http_timeouts(None),
                connection_pool: gateway_pool(l.connection_pool),
                cluster_name: format!("cds_ingress_{}_{name}_{}_{lport}", c.mesh, proto.as_str()),
                tls: l.tls.as_ref().and_then(listener_tls),
            }
        })
        .collect();

    let default_tls = spec
        .backend_defaults
        .as_ref()
        .and_then(|d| d.client_policy.as_ref())
        .and_then(|p| p.tls.as_ref());
    let routes: Vec<&Resource> = c
        .in_mesh(Kind::GatewayRoute)
        .filter(|r| r.parent.as_deref() == Some(name))
        .collect();
    let mut backends = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    let mut compiled = Vec::with_capacity(routes.len());
    for r in routes {
        let Spec::GatewayRoute(rs) = &r.spec else {
            continue;
        };
        let Some(target) = target(rs) else {
            continue;
        };
        let vs = &target.virtual_service.virtual_service_name;
        let service = match by_name.get(vs) {
            Some(i) => *i,
            None => {
                let first_new = c.clusters.len();
                let Some(svc) = c.backend(r, vs) else {
                    continue;
                };
                if let Some(tls) = default_tls {
                    for cluster in &mut c.clusters[first_new..] {
                        cluster.tls = client_tls(tls, vs, cluster.port);
                    }
                }
                backends.push(svc);
                by_name.insert(vs.clone(), backends.len() - 1);
                backends.len() - 1
            }
        };
        match gateway_route(r, rs, service) {
            Ok(Some(route)) => compiled.push(route),
            Ok(None) => {}
            Err(p) => c.problems.push(p),
        }
    }
    let gateway_listeners = listeners
        .iter()
        .map(|l| GatewayListener {
            port: l.port,
            protocol: l.protocol,
            routes: RouteTable::new(
                compiled
                    .iter()
                    .filter(|g| g.protocol == l.protocol && g.port.is_none_or(|p| p == l.port))
                    .map(|g| g.route.clone())
                    .collect(),
            ),
        })
        .collect();
    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    Ok(Snapshot {
        hash: c.res.digest(),
        mesh: Arc::from(c.mesh),
        identity: Identity::VirtualGateway(name.to_owned()),
        egress_filter,
        listeners,
        backends,
        clusters: c.clusters,
        access_log: access_log(spec.logging.as_ref()),
        gateway: Some(Gateway {
            name: name.to_owned(),
            listeners: gateway_listeners,
        }),
    })
}

fn target(spec: &GatewayRouteSpec) -> Option<&GatewayRouteTarget> {
    spec.http_route
        .as_ref()
        .or(spec.http2_route.as_ref())
        .map(|h| &h.action.target)
        .or(spec.grpc_route.as_ref().map(|g| &g.action.target))
}

/// One gateway route, or `None` when it has no route kind (refused by validation).
fn gateway_route(
    r: &Resource,
    spec: &GatewayRouteSpec,
    service: usize,
) -> Result<Option<Compiled>, Problem> {
    let priority = spec.priority.and_then(|p| u16::try_from(p).ok());
    let name: Arc<str> = Arc::from(r.name.as_str());
    let http = spec
        .http_route
        .as_ref()
        .map(|h| (Protocol::Http, "spec.httpRoute.match", h))
        .or(spec
            .http2_route
            .as_ref()
            .map(|h| (Protocol::Http2, "spec.http2Route.match", h)));
    if let Some((proto, base, h)) = http {
        let (matcher, rewrite) = http_route(r, base, h)?;
        return Ok(Some(Compiled {
            protocol: proto,
            port: h.match_.port.map(port),
            route: Route {
                name,
                priority,
                matcher,
                action: GatewayAction {
                    service,
                    port: h.action.target.port.map(port),
                    rewrite,
                },
            },
        }));
    }
    let Some(g) = &spec.grpc_route else {
        return Ok(None);
    };
    let m = &g.match_;
    let matcher = RouteMatch::Grpc(GrpcMatch {
        service_name: m.service_name.clone(),
        metadata: headers(r, "spec.grpcRoute.match.metadata", &m.metadata)?,
        port: m.port.map(port),
        hostname: m.hostname.as_ref().and_then(host_match),
        ..GrpcMatch::default()
    });
    let hostname = g.action.rewrite.as_ref().and_then(|w| w.hostname);
    Ok(Some(Compiled {
        protocol: Protocol::Grpc,
        port: m.port.map(port),
        route: Route {
            name,
            priority,
            matcher,
            action: GatewayAction {
                service,
                port: g.action.target.port.map(port),
                rewrite: GatewayRewrite {
                    prefix: None,
                    path: None,
                    hostname: rewrite_host(hostname),
                },
            },
        },
    }))
}

fn http_route(
    r: &Resource,
    base: &str,
    h: &HttpGatewayRoute,
) -> Result<(RouteMatch, GatewayRewrite), Problem> {
    let m = &h.match_;
    let path = path_match(r, base, m.prefix.as_deref(), m.path.as_ref())?;
    let method = http_method(r, base, m.method)?;
    let matcher = RouteMatch::Http(HttpMatch {
        path,
        method,
        headers: headers(r, &format!("{base}.headers"), &m.headers)?,
        query: query_matches(&m.query_parameters),
        port: m.port.map(port),
        hostname: m.hostname.as_ref().and_then(host_match),
        ..HttpMatch::default()
    });
    let rw = h.action.rewrite.as_ref();
    let prefix = m.prefix.as_ref().and_then(|matched| {
        let replacement = match rw.and_then(|w| w.prefix.as_ref()) {
            Some(model::PrefixRewrite { value: Some(v), .. }) => v.clone(),
            Some(model::PrefixRewrite {
                default_prefix: Some(Toggle::Disabled),
                ..
            }) => return None,
            _ => DEFAULT_PREFIX_REWRITE.to_owned(),
        };
        // Replacing a prefix with itself is no rewrite at all; skip the work per request.
        (*matched != replacement).then(|| (matched.clone(), replacement))
    });
    let path = rw
        .and_then(|w| w.path.as_ref())
        .and_then(|p| p.exact.clone());
    let hostname = rewrite_host(rw.and_then(|w| w.hostname));
    Ok((
        matcher,
        GatewayRewrite {
            prefix,
            path,
            hostname,
        },
    ))
}

/// `defaultTargetHostname`: only `DISABLED` keeps the client's Host.
fn rewrite_host(h: Option<model::HostnameRewrite>) -> bool {
    h.and_then(|h| h.default_target_hostname) != Some(Toggle::Disabled)
}

/// A gateway listener's `connectionPool`, by protocol (recorded; validation warns it is not
/// enforced).
fn gateway_pool(spec: Option<GatewayConnectionPool>) -> ConnectionPool {
    match spec {
        Some(GatewayConnectionPool::Http(h)) => ConnectionPool {
            max_connections: Some(count(h.max_connections)),
            max_pending_requests: h.max_pending_requests.map(count),
            max_requests: None,
        },
        Some(GatewayConnectionPool::Http2(h) | GatewayConnectionPool::Grpc(h)) => ConnectionPool {
            max_requests: Some(count(h.max_requests)),
            ..ConnectionPool::default()
        },
        None => ConnectionPool::default(),
    }
}
