//! End to end: egress routing through a real proxy to real upstream servers — weighted splits,
//! every match kind, priorities, no-route replies and the egress filter.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns, unwrap here

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{
    H1, H2, client, h1_request, h2_request, local_node, mesh, route, router, service_node,
    service_router, start, stream,
};
use http::{Method, StatusCode};
use outrider_test_support::servers::{TestServer, grpc_frame};

const GRACE: Duration = Duration::from_millis(200);

/// Extra request headers.
type Headers = &'static [(&'static str, &'static str)];
/// Method, path, headers, and the server expected to answer (None: 404).
type MatchCase = (Method, &'static str, Headers, Option<&'static str>);
/// gRPC path, metadata, and the server expected to answer.
type GrpcCase = (&'static str, Headers, &'static str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_80_20_over_1000_requests() {
    let v1 = TestServer::http("v1");
    let v2 = TestServer::http("v2");
    let spec = stream(&[
        mesh("DROP_ALL"),
        client(&["svc.local"], &[]),
        local_node("v1", v1.addr().port(), "http"),
        local_node("v2", v2.addr().port(), "http"),
        router("r", &[(8080, "http")]),
        service_router("svc.local", "r"),
        route(
            "r",
            "split",
            10,
            "httpRoute",
            "{prefix: /}",
            &[("v1", 80), ("v2", 20)],
        ),
    ]);
    let proxy = start(&spec).await;
    let mut c = H1::connect(proxy.addrs().egress).await;
    const N: u64 = 1000;
    for i in 0..N {
        let r = c.get("svc.local", &format!("/item/{i}")).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}");
    }
    assert_eq!(v1.hits() + v2.hits(), N);
    let share = v2.hits() as f64 / N as f64;
    // Binomial sd is ~1.3 points at n=1000; 5 points is about four sd.
    assert!(
        (0.15..=0.25).contains(&share),
        "v2 got {share} of the traffic, want 0.20 ± 0.05"
    );
    proxy.shutdown(GRACE).await;
}

/// One router (`svc.local`) with a route per match kind, each to its own server; no catch-all.
struct MatchMesh {
    servers: Vec<TestServer>,
    spec: String,
}

impl MatchMesh {
    fn new() -> MatchMesh {
        // (route and server name, match)
        let routes: &[(&str, &str)] = &[
            ("first", "{prefix: /prio}"),
            ("specific", "{path: {exact: /prio/exact}}"),
            ("prefix", "{prefix: /pre}"),
            ("exact", "{path: {exact: /exact}}"),
            ("regex", "{path: {regex: '^/re+gex/[0-9]+$'}}"),
            (
                "hexact",
                "{prefix: /h, headers: [{name: x-exact, match: {exact: yes}}]}",
            ),
            (
                "hprefix",
                "{prefix: /h, headers: [{name: x-prefix, match: {prefix: ab}}]}",
            ),
            (
                "hsuffix",
                "{prefix: /h, headers: [{name: x-suffix, match: {suffix: yz}}]}",
            ),
            (
                "hregex",
                "{prefix: /h, headers: [{name: x-regex, match: {regex: '^v[0-9]+$'}}]}",
            ),
            (
                "hrange",
                "{prefix: /h, headers: [{name: x-range, match: {range: {start: 10, end: 20}}}]}",
            ),
            (
                "hinvert",
                "{prefix: /inv, headers: [{name: x-env, match: {exact: prod}, invert: true}]}",
            ),
            ("method", "{prefix: /m, method: POST}"),
            ("schemehttps", "{prefix: /s/tls, scheme: https}"),
            ("scheme", "{prefix: /s, scheme: http}"),
            (
                "query",
                "{prefix: /q, queryParameters: [{name: v, match: {exact: '2'}}]}",
            ),
            (
                "cookie",
                "{prefix: /c, cookies: [{name: session, match: {exact: abc}}]}",
            ),
        ];
        let servers: Vec<TestServer> = routes.iter().map(|(n, _)| TestServer::http(n)).collect();
        let mut docs = vec![
            mesh("DROP_ALL"),
            client(&["svc.local"], &[]),
            router("r", &[(8080, "http")]),
            service_router("svc.local", "r"),
        ];
        for (i, ((name, matcher), server)) in routes.iter().zip(&servers).enumerate() {
            docs.push(local_node(name, server.addr().port(), "http"));
            let priority = u32::try_from(i).unwrap() * 10;
            docs.push(route(
                "r",
                name,
                priority,
                "httpRoute",
                matcher,
                &[(name, 1)],
            ));
        }
        MatchMesh {
            servers,
            spec: stream(&docs),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_http_match_kind_routes_as_specified() {
    let m = MatchMesh::new();
    let proxy = start(&m.spec).await;
    let mut c = H1::connect(proxy.addrs().egress).await;
    // (method, path, headers, expected server or None for 404)
    let cases: &[MatchCase] = &[
        (Method::GET, "/prefix/a", &[], Some("prefix")),
        (Method::GET, "/exact", &[], Some("exact")),
        (Method::GET, "/exact/more", &[], None),
        (Method::GET, "/reeegex/42", &[], Some("regex")),
        (Method::GET, "/regex/ab", &[], None),
        (Method::GET, "/h", &[("x-exact", "yes")], Some("hexact")),
        (Method::GET, "/h", &[("x-exact", "no")], None),
        (Method::GET, "/h", &[("x-prefix", "abc")], Some("hprefix")),
        (Method::GET, "/h", &[("x-prefix", "cab")], None),
        (Method::GET, "/h", &[("x-suffix", "xyz")], Some("hsuffix")),
        (Method::GET, "/h", &[("x-suffix", "yzx")], None),
        (Method::GET, "/h", &[("x-regex", "v12")], Some("hregex")),
        (Method::GET, "/h", &[("x-regex", "v12a")], None),
        (Method::GET, "/h", &[("x-range", "15")], Some("hrange")),
        (Method::GET, "/h", &[("x-range", "10")], Some("hrange")),
        (Method::GET, "/h", &[("x-range", "20")], None),
        (Method::GET, "/h", &[("x-range", "abc")], None),
        (Method::GET, "/inv", &[("x-env", "dev")], Some("hinvert")),
        (Method::GET, "/inv", &[("x-env", "prod")], None),
        (Method::POST, "/m", &[], Some("method")),
        (Method::GET, "/m", &[], None),
        (Method::GET, "/s/plain", &[], Some("scheme")),
        // The https-only route never matches plain-text egress; the http one behind it does.
        (Method::GET, "/s/tls", &[], Some("scheme")),
        (Method::GET, "/q?a=1&v=2", &[], Some("query")),
        (Method::GET, "/q?v=3", &[], None),
        (Method::GET, "/q", &[], None),
        (
            Method::GET,
            "/c",
            &[("cookie", "theme=dark; session=abc")],
            Some("cookie"),
        ),
        (Method::GET, "/c", &[("cookie", "session=abcd")], None),
        (Method::GET, "/c", &[], None),
        // Priority order beats specificity: /prio (priority 0) wins over the exact path.
        (Method::GET, "/prio/exact", &[], Some("first")),
        (Method::GET, "/nothing/here", &[], None),
    ];
    for (method, path, headers, want) in cases {
        let r = c
            .send(h1_request(method.clone(), "svc.local", path, headers))
            .await;
        match want {
            Some(name) => {
                assert_eq!(r.status, StatusCode::OK, "{method} {path} {headers:?}");
                assert_eq!(r.served_by(), Some(*name), "{method} {path} {headers:?}");
            }
            None => assert_eq!(
                r.status,
                StatusCode::NOT_FOUND,
                "{method} {path} {headers:?} went to {:?}",
                r.served_by()
            ),
        }
    }
    // The "specific" route is shadowed by priority: never reached.
    let specific = m.servers.iter().find(|s| s.name() == "specific").unwrap();
    assert_eq!(specific.hits(), 0);
    proxy.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_for_grpc_is_unimplemented() {
    let m = MatchMesh::new();
    let proxy = start(&m.spec).await;
    let mut c = H2::connect(proxy.addrs().egress).await;
    let r = c
        .grpc("svc.local", "/nothing.Svc/Call", grpc_frame(b"x"), &[])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("grpc-status"), Some("12"));
    assert_eq!(r.header("content-type"), Some("application/grpc"));
    proxy.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn match_port_picks_the_router_listener_by_authority_port() {
    let a = TestServer::http("a");
    let b = TestServer::http("b");
    let spec = stream(&[
        mesh("DROP_ALL"),
        client(&["svc.local"], &[]),
        local_node("a", a.addr().port(), "http"),
        local_node("b", b.addr().port(), "http"),
        router("r", &[(8080, "http"), (9090, "http")]),
        service_router("svc.local", "r"),
        route(
            "r",
            "on8080",
            1,
            "httpRoute",
            "{prefix: /, port: 8080}",
            &[("a", 1)],
        ),
        route(
            "r",
            "on9090",
            2,
            "httpRoute",
            "{prefix: /, port: 9090}",
            &[("b", 1)],
        ),
    ]);
    let proxy = start(&spec).await;
    let mut c = H1::connect(proxy.addrs().egress).await;
    let r = c.get("svc.local:9090", "/").await;
    assert_eq!((r.status, r.served_by()), (StatusCode::OK, Some("b")));
    let r = c.get("svc.local:8080", "/").await;
    assert_eq!((r.status, r.served_by()), (StatusCode::OK, Some("a")));
    proxy.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostname_extension_splits_one_router_between_two_services() {
    let api = TestServer::http("api");
    let web = TestServer::http("web");
    let spec = stream(&[
        mesh("DROP_ALL"),
        client(&["api.example.local", "web.example.local"], &[]),
        local_node("api", api.addr().port(), "http"),
        local_node("web", web.addr().port(), "http"),
        router("r", &[(8080, "http")]),
        service_router("api.example.local", "r"),
        service_router("web.example.local", "r"),
        route(
            "r",
            "api",
            1,
            "httpRoute",
            "{prefix: /, hostname: {exact: api.example.local}}",
            &[("api", 1)],
        ),
        route(
            "r",
            "web",
            2,
            "httpRoute",
            "{prefix: /, hostname: {suffix: example.local}}",
            &[("web", 1)],
        ),
    ]);
    let proxy = start(&spec).await;
    let mut c = H1::connect(proxy.addrs().egress).await;
    let r = c.get("api.example.local", "/").await;
    assert_eq!((r.status, r.served_by()), (StatusCode::OK, Some("api")));
    let r = c.get("WEB.example.local:8080", "/").await;
    assert_eq!((r.status, r.served_by()), (StatusCode::OK, Some("web")));
    let r = c.get("api.example.local:8080", "/x").await;
    assert_eq!((r.status, r.served_by()), (StatusCode::OK, Some("api")));
    proxy.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_service_method_and_metadata_matches() {
    let unary = TestServer::grpc("unary");
    let gold = TestServer::grpc("gold");
    let echo = TestServer::grpc("echo");
    let spec = stream(&[
        mesh("DROP_ALL"),
        client(&["grpc.local"], &[]),
        local_node("unary", unary.addr().port(), "grpc"),
        local_node("gold", gold.addr().port(), "grpc"),
        local_node("echo", echo.addr().port(), "grpc"),
        router("r", &[(50051, "grpc")]),
        service_router("grpc.local", "r"),
        route(
            "r",
            "unary",
            1,
            "grpcRoute",
            "{serviceName: test.Echo, methodName: Unary}",
            &[("unary", 1)],
        ),
        route(
            "r",
            "gold",
            2,
            "grpcRoute",
            "{serviceName: test.Echo, metadata: [{name: x-tenant, match: {exact: gold}}]}",
            &[("gold", 1)],
        ),
        route(
            "r",
            "echo",
            3,
            "grpcRoute",
            "{serviceName: test.Echo}",
            &[("echo", 1)],
        ),
    ]);
    let proxy = start(&spec).await;
    let mut c = H2::connect(proxy.addrs().egress).await;
    let cases: &[GrpcCase] = &[
        ("/test.Echo/Unary", &[], "unary"),
        ("/test.Echo/Unary", &[("x-tenant", "gold")], "unary"),
        ("/test.Echo/Stream", &[("x-tenant", "gold")], "gold"),
        ("/test.Echo/Stream", &[("x-tenant", "silver")], "echo"),
        ("/test.Echo/Stream", &[], "echo"),
    ];
    for (path, md, want) in cases {
        let r = c.grpc("grpc.local:50051", path, grpc_frame(&[1]), md).await;
        assert_eq!(r.status, StatusCode::OK, "{path} {md:?}");
        assert_eq!(r.served_by(), Some(*want), "{path} {md:?}");
        assert_eq!(r.trailer("grpc-status"), Some("0"), "{path} {md:?}");
    }
    let r = c
        .grpc("grpc.local:50051", "/other.Svc/Call", grpc_frame(&[1]), &[])
        .await;
    assert_eq!(r.header("grpc-status"), Some("12"));
    assert_eq!(r.served_by(), None);
    proxy.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_all_refuses_unknown_hosts() {
    let known = TestServer::http("known");
    let outside = TestServer::http("outside");
    let spec = stream(&[
        mesh("DROP_ALL"),
        client(&["known.local"], &[]),
        local_node("known", known.addr().port(), "http"),
        service_node("known.local", "known"),
    ]);
    let proxy = start(&spec).await;
    let mut c = H1::connect(proxy.addrs().egress).await;
    let r = c.get("unknown.example", "/").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = c
        .get(&format!("127.0.0.1:{}", outside.addr().port()), "/")
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(outside.hits(), 0);
    let r = c.get("known.local", "/").await;
    assert_eq!((r.status, r.served_by()), (StatusCode::OK, Some("known")));
    proxy.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_all_forwards_unknown_hosts_as_an_explicit_proxy() {
    let outside = TestServer::http("outside");
    let spec = stream(&[mesh("ALLOW_ALL"), client(&[], &[])]);
    let proxy = start(&spec).await;
    let mut c = H1::connect(proxy.addrs().egress).await;
    let host = format!("127.0.0.1:{}", outside.addr().port());
    let r = c.get(&host, "/out").await;
    assert_eq!((r.status, r.served_by()), (StatusCode::OK, Some("outside")));
    assert_eq!(r.body, Bytes::from_static(b"outside\n"));
    let seen = outside.last_request().unwrap();
    assert_eq!(seen.uri.path(), "/out");
    assert_eq!(seen.headers.get("host").unwrap(), host.as_str());
    // The proxy never forwards to itself.
    let own = format!("{}", proxy.addrs().egress);
    let r = c.get(&own, "/").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let mut c2 = H2::connect(proxy.addrs().egress).await;
    let r = c2.send(h2_request(&host, "/h2", &[])).await;
    assert_eq!((r.status, r.served_by()), (StatusCode::OK, Some("outside")));
    proxy.shutdown(GRACE).await;
}
