//! End to end: virtual gateway mode. Gateway listeners on their own ports, gateway routes by
//! prefix, path, header, query, method, hostname and gRPC service, priority, the prefix, path
//! and hostname rewrites, and `validate --gateway`.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns, unwrap here

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::{
    H1, H2, h1_request, local_node, mesh, route, router, service_node, service_router, stream,
};
use http::{Method, StatusCode};
use outrider_app::{ProxyOptions, RunningProxy};
use outrider_config::Selector;
use outrider_test_support::servers::{GRPC_UNARY, TestServer, grpc_decode, grpc_frame};

const GRACE: Duration = Duration::from_millis(200);
const BIN: &str = env!("CARGO_BIN_EXE_outrider");

/// A port free at the time of asking (the gateway binds it right after).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn gateway(http_port: u16, grpc_port: u16) -> String {
    format!(
        "meshName: m\nvirtualGatewayName: gw\nspec:\n  listeners:\n    - portMapping: {{port: {http_port}, protocol: http}}\n    - portMapping: {{port: {grpc_port}, protocol: grpc}}\n"
    )
}

/// An HTTP gateway route: `matcher` and `rewrite` in flow style (`rewrite` may be empty).
fn http_route(name: &str, priority: Option<u32>, matcher: &str, service: &str, rw: &str) -> String {
    let prio = priority
        .map(|p| format!("  priority: {p}\n"))
        .unwrap_or_default();
    let rewrite = if rw.is_empty() {
        String::new()
    } else {
        format!(", rewrite: {rw}")
    };
    format!(
        "meshName: m\nvirtualGatewayName: gw\ngatewayRouteName: {name}\nspec:\n{prio}  httpRoute:\n    match: {matcher}\n    action: {{target: {{virtualService: {{virtualServiceName: {service}}}}}{rewrite}}}\n"
    )
}

fn grpc_route(name: &str, service_name: &str, service: &str) -> String {
    format!(
        "meshName: m\nvirtualGatewayName: gw\ngatewayRouteName: {name}\nspec:\n  grpcRoute:\n    match: {{serviceName: {service_name}}}\n    action: {{target: {{virtualService: {{virtualServiceName: {service}}}}}}}\n"
    )
}

/// The mesh: `red.svc` on a node, `blue.svc` behind a router, `grpc.svc` on a gRPC node.
fn mesh_docs(red: u16, blue: u16, grpc: u16) -> Vec<String> {
    vec![
        mesh("DROP_ALL"),
        local_node("red", red, "http"),
        local_node("blue", blue, "http"),
        local_node("grpcnode", grpc, "grpc"),
        service_node("red.svc", "red"),
        service_node("grpc.svc", "grpcnode"),
        router("rt", &[(blue, "http")]),
        route("rt", "all", 10, "httpRoute", "{prefix: /}", &[("blue", 1)]),
        service_router("blue.svc", "rt"),
    ]
}

fn gateway_routes() -> Vec<String> {
    vec![
        http_route("pfx", None, "{prefix: /red/}", "red.svc", ""),
        http_route(
            "pfx-keep",
            None,
            "{prefix: /keep/}",
            "red.svc",
            "{prefix: {defaultPrefix: DISABLED}}",
        ),
        http_route(
            "pfx-value",
            None,
            "{prefix: /v/}",
            "red.svc",
            "{prefix: {value: /new/}}",
        ),
        http_route(
            "exact",
            None,
            "{path: {exact: /exact}}",
            "blue.svc",
            "{path: {exact: /rewritten}}",
        ),
        http_route(
            "header",
            None,
            "{prefix: /h, headers: [{name: x-color, match: {exact: blue}}]}",
            "blue.svc",
            "",
        ),
        http_route(
            "query",
            None,
            "{prefix: /q, queryParameters: [{name: color, match: {exact: blue}}]}",
            "blue.svc",
            "",
        ),
        http_route("method", None, "{prefix: /m, method: POST}", "blue.svc", ""),
        http_route(
            "host-exact",
            None,
            "{prefix: /host, hostname: {exact: shop.example.com}}",
            "blue.svc",
            "",
        ),
        http_route(
            "host-suffix",
            None,
            "{prefix: /host, hostname: {suffix: .red.example}}",
            "red.svc",
            "{hostname: {defaultTargetHostname: DISABLED}}",
        ),
        http_route("prio-low", Some(1), "{prefix: /p}", "blue.svc", ""),
        http_route("prio-high", Some(5), "{prefix: /pri}", "red.svc", ""),
        grpc_route("grpc", "test.Echo", "grpc.svc"),
    ]
}

fn build(spec: &str) -> Result<outrider_config::Built, Vec<outrider_config::Problem>> {
    let sel = Selector {
        gateway: Some("gw".to_owned()),
        ..Selector::default()
    };
    outrider_config::build_from_str("gw.yaml", spec, &sel)
}

async fn start_gateway(spec: &str) -> Result<RunningProxy, outrider_app::StartError> {
    let built = match build(spec) {
        Ok(b) => b,
        Err(p) => panic!("spec refused: {p:?}\n{spec}"),
    };
    outrider_app::start(ProxyOptions::local(Some(built.snapshot))).await
}

struct World {
    red: TestServer,
    blue: TestServer,
    grpc: TestServer,
    proxy: RunningProxy,
    http: SocketAddr,
    grpc_addr: SocketAddr,
}

async fn world() -> World {
    let red = TestServer::http("red");
    let blue = TestServer::http("blue");
    let grpc = TestServer::grpc("grpc");
    // A port free when asked can be taken (by another test's outgoing connection, say)
    // before the gateway binds it: a few tries with fresh ports.
    let mut tries = 0;
    let (proxy, hp, gp) = loop {
        let (hp, gp) = (free_port(), free_port());
        let mut docs = mesh_docs(red.addr().port(), blue.addr().port(), grpc.addr().port());
        docs.push(gateway(hp, gp));
        docs.extend(gateway_routes());
        match start_gateway(&stream(&docs)).await {
            Ok(proxy) => break (proxy, hp, gp),
            Err(outrider_app::StartError::Bind { .. }) if tries < 5 => tries += 1,
            Err(e) => panic!("gateway did not start: {e}"),
        }
    };
    World {
        red,
        blue,
        grpc,
        proxy,
        http: SocketAddr::from(([127, 0, 0, 1], hp)),
        grpc_addr: SocketAddr::from(([127, 0, 0, 1], gp)),
    }
}

fn seen_path(s: &TestServer) -> String {
    s.last_request()
        .unwrap()
        .uri
        .path_and_query()
        .unwrap()
        .to_string()
}

fn seen_host(s: &TestServer) -> String {
    let req = s.last_request().unwrap();
    req.headers
        .get("host")
        .map(|h| h.to_str().unwrap().to_owned())
        .or_else(|| req.uri.authority().map(ToString::to_string))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_routes_and_prefix_rewrites() {
    let w = world().await;
    let mut c = H1::connect(w.http).await;

    // App Mesh's default: the matched prefix becomes `/`; the query string stays.
    let r = c.get("gw.example", "/red/items?id=7").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.served_by(), Some("red"));
    assert_eq!(seen_path(&w.red), "/items?id=7");
    // Default hostname rewrite: the upstream sees the target virtual service's name.
    assert_eq!(seen_host(&w.red), "red.svc");

    let r = c.get("gw.example", "/keep/items").await;
    assert_eq!(r.served_by(), Some("red"));
    assert_eq!(seen_path(&w.red), "/keep/items");

    let r = c.get("gw.example", "/v/items").await;
    assert_eq!(r.served_by(), Some("red"));
    assert_eq!(seen_path(&w.red), "/new/items");
    w.proxy.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_header_query_and_method_routes() {
    let w = world().await;
    let mut c = H1::connect(w.http).await;

    // Exact path, rewritten, through the router of blue.svc.
    let r = c.get("gw.example", "/exact?x=1").await;
    assert_eq!(r.served_by(), Some("blue"));
    assert_eq!(seen_path(&w.blue), "/rewritten?x=1");
    assert_eq!(seen_host(&w.blue), "blue.svc");

    let r = c
        .send(h1_request(
            Method::GET,
            "gw.example",
            "/h",
            &[("x-color", "blue")],
        ))
        .await;
    assert_eq!(r.served_by(), Some("blue"));
    let r = c
        .send(h1_request(
            Method::GET,
            "gw.example",
            "/h",
            &[("x-color", "red")],
        ))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let r = c.get("gw.example", "/q?color=blue").await;
    assert_eq!(r.served_by(), Some("blue"));
    let r = c.get("gw.example", "/q?color=green").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let r = c
        .send(h1_request(Method::POST, "gw.example", "/m", &[]))
        .await;
    assert_eq!(r.served_by(), Some("blue"));
    let r = c.get("gw.example", "/m").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Nothing matches: 404 from the gateway itself.
    let before = w.red.hits() + w.blue.hits();
    let r = c.get("gw.example", "/nothing").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(w.red.hits() + w.blue.hits(), before);
    w.proxy.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostname_matches_priority_and_hostname_rewrite() {
    let w = world().await;
    let mut c = H1::connect(w.http).await;

    let r = c.get("shop.example.com", "/host").await;
    assert_eq!(r.served_by(), Some("blue"));
    assert_eq!(seen_host(&w.blue), "blue.svc");

    // Suffix match, with `defaultTargetHostname: DISABLED`: the client's Host is kept.
    let r = c.get("a.red.example", "/host").await;
    assert_eq!(r.served_by(), Some("red"));
    assert_eq!(seen_host(&w.red), "a.red.example");

    let r = c.get("other.example", "/host").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Priority 1 wins over priority 5, although `/pri` is the longer prefix.
    let r = c.get("gw.example", "/pri/x").await;
    assert_eq!(r.served_by(), Some("blue"));
    w.proxy.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_route_by_service_name_on_the_second_listener() {
    let w = world().await;
    let mut c = H2::connect(w.grpc_addr).await;
    let r = c
        .grpc("gw.example", GRPC_UNARY, grpc_frame(b"hi"), &[])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.trailer("grpc-status"), Some("0"));
    assert_eq!(grpc_decode(&r.body), vec![Bytes::from_static(b"hi")]);
    assert_eq!(seen_host(&w.grpc), "grpc.svc");

    // Another service: no gateway route.
    let r = c
        .grpc("gw.example", "/other.Svc/Call", grpc_frame(b"hi"), &[])
        .await;
    assert_ne!(r.header("grpc-status"), Some("0"));
    assert_eq!(w.grpc.hits(), 1);

    // HTTP routes are not served on the gRPC listener.
    let mut h = H1::connect(w.grpc_addr).await;
    let r = h.get("gw.example", "/red/x").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let _ = (&w.red, &w.blue);
    w.proxy.shutdown(GRACE).await;
}

#[test]
fn unknown_virtual_service_is_refused() {
    let mut docs = mesh_docs(1, 2, 3);
    docs.push(gateway(4, 5));
    docs.push(http_route("bad", None, "{prefix: /}", "nope.svc", ""));
    let problems = build(&stream(&docs)).unwrap_err();
    assert!(
        problems.iter().any(|p| p
            .to_string()
            .contains("virtual service \"nope.svc\" does not exist")),
        "{problems:?}"
    );
}

#[test]
fn rewrite_rules_are_checked() {
    let mut docs = mesh_docs(1, 2, 3);
    docs.push(gateway(4, 5));
    docs.push(http_route(
        "bad",
        None,
        "{path: {exact: /a}}",
        "red.svc",
        "{prefix: {value: /b/}}",
    ));
    let problems = build(&stream(&docs)).unwrap_err();
    assert!(
        problems.iter().any(|p| p
            .to_string()
            .contains("a prefix rewrite needs a match on prefix")),
        "{problems:?}"
    );
}

#[test]
fn validate_gateway_prints_the_gateway_summary() {
    let dir = tempfile::tempdir().unwrap();
    let mut docs = mesh_docs(8081, 8082, 8083);
    docs.push(gateway(8443, 8444));
    docs.extend(gateway_routes());
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, stream(&docs)).unwrap();
    let out = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(&path)
        .args(["--gateway", "gw"])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("virtual gateway gw in mesh m"), "{text}");
    assert!(text.contains("8443/http (gateway)"), "{text}");
    assert!(text.contains("8444/grpc (gateway)"), "{text}");
    assert!(
        text.contains("-> virtual service red.svc (rewrite prefix /red/ => /, host => target)"),
        "{text}"
    );
    assert!(text.contains("grpc test.Echo/*"), "{text}");
    assert!(!text.contains("not implemented"), "{text}");
}
