//! `outrider explain` and `GET /explain`: each route kind, weighted shares, the no-route and
//! unknown-host answers, the CLI's exit codes, and the admin endpoint of a running proxy.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns, unwrap here

mod common;

use std::path::Path;
use std::process::Command;

use common::{H1, client, local_node, mesh, route, router, service_router, stream};
use http::StatusCode;
use outrider_config::{EgressFilter, Selector, Snapshot};
use outrider_http::{ExplainRequest, Explanation, Outcome, explain_snapshot};

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
