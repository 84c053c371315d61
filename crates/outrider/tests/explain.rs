//! `outrider explain` and `GET /explain`: each route kind, weighted shares, the no-route and
//! unknown-host answers, the CLI's exit codes, and the admin endpoint of a running proxy.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns, unwrap here

mod common;

use std::path::Path;
use std::process::Command;

use common::{H1, client, local_node, mesh, route, router, service_router, stream};
use http::StatusCode;
use outrider_config::{EgressFilter, Selector, Snapshot};
use outrider_http::{
    ExplainDirection, ExplainRequest, Explanation, Outcome, explain_snapshot, explain_snapshot_with,
};

const BIN: &str = env!("CARGO_BIN_EXE_outrider");

fn tcp_route(router: &str, name: &str, target: &str) -> String {
    format!(
        "meshName: m\nvirtualRouterName: {router}\nrouteName: {name}\nspec:\n  tcpRoute:\n    action: {{weightedTargets: [{{virtualNode: {target}, weight: 1}}]}}\n"
    )
}

/// A client calling web.local (HTTP routes of every match kind), h2.local (http2), rpc.local
/// (gRPC) and db.local (TCP on 5432).
fn spec(egress: &str) -> String {
    stream(&[
        mesh(egress),
        client(
            &["web.local", "h2.local", "rpc.local", "db.local"],
            &[(8080, "http")],
        ),
        local_node("blue", 9000, "http"),
        local_node("green", 9000, "http"),
        local_node("h2node", 9001, "http2"),
        local_node("grpcnode", 9002, "grpc"),
        local_node("pgnode", 5432, "tcp"),
        router("web", &[(8080, "http")]),
        router("h2", &[(8081, "http2")]),
        router("rpc", &[(9090, "grpc")]),
        router("db", &[(5432, "tcp")]),
        service_router("web.local", "web"),
        service_router("h2.local", "h2"),
        service_router("rpc.local", "rpc"),
        service_router("db.local", "db"),
        route(
            "web",
            "exact",
            1,
            "httpRoute",
            "{path: {exact: /exact}}",
            &[("blue", 1)],
        ),
        route(
            "web",
            "hdr",
            2,
            "httpRoute",
            "{prefix: /, headers: [{name: x-canary, match: {exact: '1'}}]}",
            &[("green", 1)],
        ),
        route(
            "web",
            "query",
            3,
            "httpRoute",
            "{prefix: /q, queryParameters: [{name: v, match: {exact: '2'}}]}",
            &[("green", 1)],
        ),
        route(
            "web",
            "post",
            4,
            "httpRoute",
            "{prefix: /m, method: POST}",
            &[("green", 1)],
        ),
        route(
            "web",
            "api",
            5,
            "httpRoute",
            "{prefix: /api}",
            &[("blue", 3), ("green", 1)],
        ),
        route(
            "h2",
            "h2-all",
            0,
            "http2Route",
            "{prefix: /}",
            &[("h2node", 1)],
        ),
        route(
            "rpc",
            "get",
            0,
            "grpcRoute",
            "{serviceName: pkg.Store, methodName: Get}",
            &[("grpcnode", 1)],
        ),
        tcp_route("db", "pg", "pgnode"),
    ])
}

fn snapshot(egress: &str) -> Snapshot {
    let sel = Selector {
        mesh: None,
        node: Some(common::CLIENT.into()),
        gateway: None,
    };
    outrider_config::build_from_str("t.yaml", &spec(egress), &sel)
        .unwrap()
        .snapshot
}

fn explain(method: &str, url: &str, headers: &[&str]) -> Explanation {
    let req = ExplainRequest::parse(method, url, headers, None).unwrap();
    explain_snapshot(&snapshot("DROP_ALL"), &req)
}

fn route_name(ex: &Explanation) -> Option<&str> {
    ex.route.as_ref().map(|r| r.name.as_str())
}

fn target_nodes(ex: &Explanation) -> Vec<&str> {
    ex.targets.iter().map(|t| t.node.as_str()).collect()
}

#[test]
fn http_matches_by_path_header_query_and_method() {
    let cases = [
        ("GET", "http://web.local:8080/exact", vec![], "exact"),
        ("GET", "http://web.local:8080/x", vec!["x-canary: 1"], "hdr"),
        ("GET", "http://web.local:8080/q?v=2", vec![], "query"),
        ("POST", "http://web.local:8080/m", vec![], "post"),
        ("GET", "http://web.local:8080/api/items", vec![], "api"),
    ];
    for (method, url, headers, want) in cases {
        let ex = explain(method, url, &headers);
        assert_eq!(ex.outcome, Outcome::Routed, "{method} {url}\n{ex}");
        assert_eq!(route_name(&ex), Some(want), "{method} {url}\n{ex}");
        assert_eq!(ex.virtual_service.as_deref(), Some("web.local"));
        assert_eq!(ex.provider.as_deref(), Some("virtual router web"));
        assert_eq!(ex.router_listener.as_deref(), Some("http 8080"));
        assert_eq!(ex.listener_reason.as_deref(), Some("authority port 8080"));
    }
    // Without a port in the URL the router's only HTTP listener is chosen.
    let ex = explain("GET", "http://web.local/exact", &[]);
    assert_eq!(ex.listener_reason.as_deref(), Some("only HTTP listener"));
    let ex = explain("GET", "http://web.local:8080/m", &[]);
    assert_eq!(
        ex.outcome,
        Outcome::NoRoute,
        "GET does not match the POST route"
    );
}

#[test]
fn weighted_route_shows_both_shares_with_timeouts_and_retries() {
    let ex = explain("GET", "http://web.local:8080/api", &[]);
    let shares: Vec<(&str, u32, f64)> = ex
        .targets
        .iter()
        .map(|t| (t.node.as_str(), t.weight, t.percent))
        .collect();
    assert_eq!(shares, vec![("blue", 3, 75.0), ("green", 1, 25.0)]);
    assert_eq!(ex.clusters.len(), 2);
    assert_eq!(ex.clusters[0].name, "cds_egress_m_blue_http_9000");
    let t = ex.timeouts.unwrap();
    assert_eq!(
        t.per_request,
        Some(outrider_config::DEFAULT_PER_REQUEST_TIMEOUT)
    );
    assert!(ex.retry.unwrap().implicit);
    let text = ex.to_string();
    for want in ["75.0%", "25.0%", "per request 15s, idle 300s", "implicit"] {
        assert!(text.contains(want), "{want:?} missing from\n{text}");
    }
}

#[test]
fn http2_grpc_and_tcp_routes() {
    let ex = explain("GET", "http://h2.local:8081/", &[]);
    assert_eq!(
        (route_name(&ex), target_nodes(&ex)),
        (Some("h2-all"), vec!["h2node"])
    );
    assert_eq!(ex.router_listener.as_deref(), Some("http2 8081"));

    let ex = explain("POST", "http://rpc.local:9090/pkg.Store/Get", &[]);
    assert_eq!(route_name(&ex), Some("get"), "{ex}");
    assert_eq!(ex.route.as_ref().unwrap().kind, "grpc");
    assert_eq!(target_nodes(&ex), vec!["grpcnode"]);
    let ex = explain("POST", "http://rpc.local:9090/pkg.Store/Put", &[]);
    assert_eq!(ex.outcome, Outcome::NoRoute);

    // TCP goes by the destination port alone.
    let ex = explain("GET", "tcp://db.local:5432", &[]);
    assert_eq!(ex.outcome, Outcome::Routed, "{ex}");
    assert_eq!(route_name(&ex), Some("pg"));
    assert_eq!(ex.route.as_ref().unwrap().kind, "tcp");
    assert_eq!(target_nodes(&ex), vec!["pgnode"]);
    assert!(ex.listener.contains("TCP"));
    assert_eq!(ex.retry, None, "TCP is never retried");
}

#[test]
fn no_route_lists_the_routes_tried_in_order() {
    let ex = explain("GET", "http://web.local:8080/nothing", &[]);
    assert_eq!(ex.outcome, Outcome::NoRoute);
    assert!(!ex.found());
    let tried: Vec<&str> = ex.tried.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(tried, vec!["exact", "hdr", "query", "post", "api"]);
    assert_eq!(ex.tried[2].summary, "prefix /q, query v = 2");
    assert!(ex.notes.iter().any(|n| n.starts_with("404")), "{ex}");
}

#[test]
fn unknown_host_is_up_to_the_egress_filter() {
    let req = ExplainRequest::parse::<&str>("GET", "http://example.com/", &[], None).unwrap();
    let ex = explain_snapshot(&snapshot("DROP_ALL"), &req);
    assert_eq!(ex.outcome, Outcome::NotABackend(EgressFilter::DropAll));
    assert!(!ex.found());
    let ex = explain_snapshot(&snapshot("ALLOW_ALL"), &req);
    assert_eq!(ex.outcome, Outcome::NotABackend(EgressFilter::AllowAll));
    assert!(ex.found(), "ALLOW_ALL passes it through");
}

fn write_spec(dir: &Path) -> std::path::PathBuf {
    let file = dir.join("mesh.yaml");
    std::fs::write(&file, spec("DROP_ALL")).unwrap();
    file
}

fn cli(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .arg("explain")
        .args(args)
        .env_remove("APPMESH_RESOURCE_ARN")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap(), text)
}

#[test]
fn cli_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let file = write_spec(tmp.path());
    let cfg = file.to_str().unwrap();
    let base = ["--config", cfg, "--node", "client"];

    let (code, out) = cli(&[&base[..], &["GET", "http://web.local:8080/api/x"]].concat());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("route:           api"), "{out}");
    assert!(out.contains("endpoint 127.0.0.1:9000 resolved"), "{out}");

    let (code, out) = cli(&[
        &base[..],
        &[
            "--no-resolve",
            "-H",
            "x-canary: 1",
            "GET",
            "http://web.local:8080/x",
        ],
    ]
    .concat());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("hdr"), "{out}");
    assert!(
        !out.contains("endpoint "),
        "--no-resolve looks nothing up\n{out}"
    );

    let (code, out) = cli(&[&base[..], &["GET", "http://web.local:8080/none"]].concat());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("routes tried"), "{out}");

    let (code, _) = cli(&[&base[..], &["GET", "http://unknown.local/"]].concat());
    assert_eq!(code, 1);

    let (code, out) = cli(&[
        &base[..],
        &["--ingress", "--port", "8080", "GET", "http://x/"],
    ]
    .concat());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("direction:       ingress"), "{out}");

    let (code, out) = cli(&[&base[..], &["-H", "no colon", "GET", "http://web.local/"]].concat());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("bad header"), "{out}");

    let bad = tmp.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "meshName: m\nvirtualNodeName: client\nspec: {listeners: 7}\n",
    )
    .unwrap();
    let (code, out) = cli(&[
        "--config",
        bad.to_str().unwrap(),
        "--node",
        "client",
        "GET",
        "http://web.local/",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("configuration refused"), "{out}");
}

#[tokio::test]
async fn admin_explain_on_a_running_proxy() {
    let proxy = common::start(&spec("DROP_ALL")).await;
    let admin = proxy.addrs().admin.unwrap();
    let mut c = H1::connect(admin).await;

    let reply = c
        .get(
            "localhost",
            "/explain?method=GET&url=http%3A%2F%2Fweb.local%3A8080%2Fapi%2Fx",
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(v["found"], true, "{v}");
    assert_eq!(v["route"]["name"], "api");
    assert_eq!(v["targets"][0]["percent"], 75.0);
    assert_eq!(v["targets"][1]["percent"], 25.0);
    // Live endpoints: the DNS answer for 127.0.0.1, with health.
    assert_eq!(
        v["clusters"][0]["endpoints"][0]["address"], "127.0.0.1:9000",
        "{v}"
    );
    assert_eq!(v["clusters"][0]["endpoints"][0]["health"], "healthy");

    let reply = c
        .get(
            "localhost",
            "/explain?url=http://web.local:8080/x&header=x-canary:1",
        )
        .await;
    let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(v["route"]["name"], "hdr", "{v}");

    let reply = c
        .get("localhost", "/explain?url=http://web.local:8080/none")
        .await;
    let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(
        (v["found"].clone(), v["outcome"].clone()),
        (false.into(), "no_route".into())
    );
    assert_eq!(v["routes_tried"].as_array().unwrap().len(), 5);

    let reply = c.get("localhost", "/explain?url=http://nope.local/").await;
    let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(v["egress_filter"], "DROP_ALL", "{v}");

    let reply = c.get("localhost", "/explain?method=GET").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = c
        .get("localhost", "/explain?url=http://web.local/&header=bad")
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

// ---- gateway mode ----

/// A port free at the time of asking (the gateway proxy binds it right after).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Virtual gateway `gw` on `port`: `/red/` to a node service with the default prefix
/// rewrite, `/exact` to the `web` router (path rewritten to `/api/x`), `/keep/` without a
/// Host rewrite.
fn gateway_spec(port: u16) -> String {
    let gw_route = |name: &str, matcher: &str, service: &str, rewrite: &str| {
        format!(
            "meshName: m\nvirtualGatewayName: gw\ngatewayRouteName: {name}\nspec:\n  httpRoute:\n    match: {matcher}\n    action: {{target: {{virtualService: {{virtualServiceName: {service}}}}}{rewrite}}}\n"
        )
    };
    stream(&[
        mesh("DROP_ALL"),
        format!(
            "meshName: m\nvirtualGatewayName: gw\nspec:\n  listeners: [{{portMapping: {{port: {port}, protocol: http}}}}]\n"
        ),
        local_node("blue", 9000, "http"),
        local_node("green", 9000, "http"),
        local_node("red", 9100, "http"),
        common::service_node("red.local", "red"),
        router("web", &[(8080, "http")]),
        service_router("web.local", "web"),
        route(
            "web",
            "api",
            5,
            "httpRoute",
            "{prefix: /api}",
            &[("blue", 3), ("green", 1)],
        ),
        gw_route("to-red", "{prefix: /red/}", "red.local", ""),
        gw_route(
            "to-web",
            "{path: {exact: /exact}}",
            "web.local",
            ", rewrite: {path: {exact: /api/x}}",
        ),
        gw_route(
            "keep-host",
            "{prefix: /keep/}",
            "red.local",
            ", rewrite: {hostname: {defaultTargetHostname: DISABLED}}",
        ),
    ])
}

fn gateway_snapshot(port: u16) -> Snapshot {
    let sel = Selector {
        gateway: Some("gw".into()),
        ..Selector::default()
    };
    outrider_config::build_from_str("gw.yaml", &gateway_spec(port), &sel)
        .unwrap()
        .snapshot
}

#[test]
fn gateway_route_rewrite_then_the_service_route() {
    let snap = gateway_snapshot(8443);
    let req =
        ExplainRequest::parse::<&str>("GET", "http://shop.example:8443/exact", &[], None).unwrap();
    let ex = explain_snapshot(&snap, &req);
    assert_eq!(ex.outcome, Outcome::Routed, "{ex}");
    assert_eq!(ex.direction, ExplainDirection::Gateway);
    assert_eq!(ex.gateway_route.as_ref().unwrap().name, "to-web");
    assert_eq!(
        ex.rewrites,
        vec!["path /exact -> /api/x", "host shop.example -> web.local"]
    );
    // The rewritten request then takes the service's own route, weighted as usual.
    assert_eq!(ex.virtual_service.as_deref(), Some("web.local"));
    assert_eq!(route_name(&ex), Some("api"));
    assert_eq!(target_nodes(&ex), vec!["blue", "green"]);
    let text = ex.to_string();
    for want in [
        "direction:       gateway",
        "listener:        virtual gateway gw listener http 8443 (port 8443)",
        "gateway route:   to-web (http route): path = /exact",
        "rewrite:         path /exact -> /api/x; host shop.example -> web.local",
        "route:           api",
    ] {
        assert!(text.contains(want), "{want:?} missing from\n{text}");
    }

    // The default prefix rewrite drops the matched prefix; a node provider has no route.
    let req = ExplainRequest::parse::<&str>("GET", "http://gw:8443/red/a/b", &[], None).unwrap();
    let ex = explain_snapshot(&snap, &req);
    assert_eq!(ex.outcome, Outcome::Routed, "{ex}");
    assert_eq!(
        ex.rewrites,
        vec!["path /red/a/b -> /a/b", "host gw -> red.local"]
    );
    assert_eq!(ex.provider.as_deref(), Some("virtual node red"));
    assert_eq!(ex.clusters[0].name, "cds_egress_m_red_http_9100");

    // Host kept: only the path would change, and it does not here.
    let req = ExplainRequest::parse::<&str>("GET", "http://gw:8443/keep/x", &[], None).unwrap();
    let ex = explain_snapshot(&snap, &req);
    assert_eq!(ex.gateway_route.as_ref().unwrap().name, "keep-host");
    assert_eq!(ex.rewrites, vec!["path /keep/x -> /x"]);

    // No gateway route: 404 with the gateway routes tried.
    let req = ExplainRequest::parse::<&str>("GET", "http://gw:8443/nothing", &[], None).unwrap();
    let ex = explain_snapshot(&snap, &req);
    assert_eq!(ex.outcome, Outcome::NoRoute);
    let tried: Vec<&str> = ex.tried.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(tried.len(), 3, "{tried:?}");
    assert!(tried.contains(&"to-red"), "{tried:?}");
    assert!(
        ex.notes.iter().any(|n| n.contains("no gateway route")),
        "{ex}"
    );
}

#[test]
fn cli_explains_a_gateway() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("gw.yaml");
    std::fs::write(&file, gateway_spec(8443)).unwrap();
    let cfg = file.to_str().unwrap();
    let (code, out) = cli(&[
        "--config",
        cfg,
        "--gateway",
        "gw",
        "--no-resolve",
        "GET",
        "http://shop.example:8443/exact",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("gateway route:   to-web"), "{out}");
    assert!(
        out.contains("rewrite:         path /exact -> /api/x"),
        "{out}"
    );
    // --port names the listener when the URL has another port.
    let (code, out) = cli(&[
        "--config",
        cfg,
        "--gateway",
        "gw",
        "--no-resolve",
        "--port",
        "8443",
        "GET",
        "http://shop.example/nothing",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no gateway route"), "{out}");
}

#[tokio::test]
async fn admin_explain_on_a_gateway_proxy() {
    // A port free when asked can be taken before the gateway binds it: a few tries.
    let mut tries = 0;
    let (proxy, port) = loop {
        let port = free_port();
        let opts = outrider_app::ProxyOptions::local(Some(gateway_snapshot(port)));
        match outrider_app::start(opts).await {
            Ok(proxy) => break (proxy, port),
            Err(outrider_app::StartError::Bind { .. }) if tries < 5 => tries += 1,
            Err(e) => panic!("gateway did not start: {e}"),
        }
    };
    let admin = proxy.addrs().admin.unwrap();
    let mut c = H1::connect(admin).await;
    let reply = c
        .get(
            "localhost",
            &format!("/explain?url=http://shop.example:{port}/exact"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(v["direction"], "gateway", "{v}");
    assert_eq!(v["gateway_route"]["name"], "to-web", "{v}");
    assert_eq!(v["rewrites"][0], "path /exact -> /api/x", "{v}");
    assert_eq!(v["route"]["name"], "api", "{v}");
    assert_eq!(v["found"], true, "{v}");
    proxy.shutdown(std::time::Duration::from_millis(100)).await;
}

// ---- TCP services sharing a port ----

/// `a.local` (a node) and `b.local` (a router) both on TCP 9000.
fn shared_tcp_spec() -> String {
    stream(&[
        mesh("DROP_ALL"),
        client(&["a.local", "b.local"], &[(8080, "http")]),
        common::node("db-a", "db-a.internal", 9000, "tcp"),
        common::node("db-b", "db-b.internal", 7000, "tcp"),
        common::service_node("a.local", "db-a"),
        router("b-router", &[(9000, "tcp")]),
        tcp_route("b-router", "to-b", "db-b"),
        service_router("b.local", "b-router"),
    ])
}

fn shared_snapshot() -> Snapshot {
    let sel = Selector {
        mesh: None,
        node: Some(common::CLIENT.into()),
        gateway: None,
    };
    outrider_config::build_from_str("t.yaml", &shared_tcp_spec(), &sel)
        .unwrap()
        .snapshot
}

#[test]
fn shared_tcp_port_is_decided_by_the_destination_address() {
    let snap = shared_snapshot();
    let addrs = |name: &str| -> Option<Vec<std::net::IpAddr>> {
        match name {
            "a.local" => Some(vec!["10.0.0.1".parse().unwrap()]),
            "b.local" => Some(vec!["10.0.1.1".parse().unwrap()]),
            _ => None,
        }
    };
    let mut req = ExplainRequest::parse::<&str>("GET", "tcp://b.local:9000", &[], None).unwrap();
    req.dst = Some("10.0.0.1".parse().unwrap());
    let ex = explain_snapshot_with(&snap, &req, addrs);
    assert_eq!(ex.outcome, Outcome::Routed, "{ex}");
    assert_eq!(ex.virtual_service.as_deref(), Some("a.local"), "{ex}");
    assert_eq!(target_nodes(&ex), vec!["db-a"]);
    let chosen: Vec<(&str, bool)> = ex
        .tcp_candidates
        .iter()
        .map(|c| (c.service.as_str(), c.chosen))
        .collect();
    assert_eq!(chosen, vec![("a.local", true), ("b.local", false)]);
    let text = ex.to_string();
    assert!(text.contains("a.local (10.0.0.1) <- chosen"), "{text}");
    assert!(
        text.contains("destination 10.0.0.1 is an address of a.local"),
        "{text}"
    );

    // An IP literal in the URL is the destination; the router's TCP route applies.
    let req = ExplainRequest::parse::<&str>("GET", "tcp://10.0.1.1:9000", &[], None).unwrap();
    let ex = explain_snapshot_with(&snap, &req, addrs);
    assert_eq!(route_name(&ex), Some("to-b"), "{ex}");

    // An address of neither: the egress filter decides.
    let req = ExplainRequest::parse::<&str>("GET", "tcp://10.9.9.9:9000", &[], None).unwrap();
    let ex = explain_snapshot_with(&snap, &req, addrs);
    assert_eq!(
        ex.outcome,
        Outcome::NotABackend(EgressFilter::DropAll),
        "{ex}"
    );
    assert_eq!(ex.tcp_candidates.len(), 2);

    // No address at all: the named service is explained, the candidates listed.
    let req = ExplainRequest::parse::<&str>("GET", "tcp://b.local:9000", &[], None).unwrap();
    let ex = explain_snapshot(&snap, &req);
    assert_eq!(ex.virtual_service.as_deref(), Some("b.local"), "{ex}");
    assert!(ex.notes[0].contains("give --dst"), "{ex}");
    assert!(
        ex.to_string().contains("a.local (addresses unknown)"),
        "{ex}"
    );
}

#[test]
fn cli_dst_flag_picks_a_shared_tcp_service() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("mesh.yaml");
    std::fs::write(&file, shared_tcp_spec()).unwrap();
    let cfg = file.to_str().unwrap();
    // --no-resolve: the names' addresses are unknown, so no address matches.
    let (code, out) = cli(&[
        "--config",
        cfg,
        "--node",
        "client",
        "--no-resolve",
        "--dst",
        "10.0.0.1",
        "GET",
        "tcp://a.local:9000",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("tcp services on this port:"), "{out}");
    assert!(
        out.contains("addresses of a.local, b.local unknown"),
        "{out}"
    );
    let (code, out) = cli(&[
        "--config",
        cfg,
        "--node",
        "client",
        "--dst",
        "nope",
        "GET",
        "tcp://a.local:9000",
    ]);
    assert_eq!(code, 2, "clap refuses a bad address\n{out}");
}

#[tokio::test]
async fn admin_explain_dst_uses_the_live_address_sets() {
    let proxy = common::start(&shared_tcp_spec()).await;
    let rt = proxy.runtime();
    for set in rt.tcp_service_addrs() {
        let ip = if set.name() == "a.local" {
            "10.0.0.1"
        } else {
            "10.0.1.1"
        };
        set.set([ip.parse().unwrap()]);
    }
    let admin = proxy.addrs().admin.unwrap();
    let mut c = H1::connect(admin).await;
    let reply = c
        .get("localhost", "/explain?url=tcp://b.local:9000&dst=10.0.0.1")
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(v["virtual_service"], "a.local", "{v}");
    assert_eq!(v["tcp_candidates"][0]["chosen"], true, "{v}");
    assert_eq!(v["tcp_candidates"][0]["addresses"][0], "10.0.0.1", "{v}");
    let reply = c
        .get("localhost", "/explain?url=tcp://b.local:9000&dst=bad")
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}
