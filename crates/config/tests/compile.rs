//! Compilation into a Snapshot: the realistic mesh, selection, naming, defaults, extensions.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::path::PathBuf;
use std::time::Duration;

use outrider_config::{
    Discovery, EgressFilter, Identity, Protocol, Provider, ResponseType, RetryPolicy, Selector,
    Severity, Snapshot, build, build_from_str, http_retry,
};
use outrider_route::{HostMatch, RouteMatch, StringMatch};

fn data(sub: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/mesh")
        .join(sub)
}

fn front(sub: &str) -> Snapshot {
    let built = build(&[data(sub)], &Selector::node("front")).unwrap();
    // Only the "not implemented yet" warnings of fields the realistic mesh uses are expected.
    let unexpected: Vec<_> = built
        .warnings
        .iter()
        .filter(|w| !w.reason.contains("not "))
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:#?}");
    built.snapshot
}

#[test]
fn realistic_mesh_compiles_from_both_shapes() {
    for sub in ["describe", "create"] {
        let s = front(sub);
        assert_eq!(&*s.mesh, "shop");
        assert_eq!(s.identity, Identity::VirtualNode("front".into()));
        assert_eq!(s.egress_filter, EgressFilter::DropAll);
        assert_eq!(s.listeners.len(), 1);
        assert_eq!(
            s.listeners[0].cluster_name,
            "cds_ingress_shop_front_http_8080"
        );
        assert_eq!(s.access_log.as_ref().unwrap().path, "/dev/stdout");

        let names: Vec<&str> = s.backends.iter().map(|b| &*b.name).collect();
        assert_eq!(names, ["svc-a.local", "svc-b.local"]);
        let Provider::Router(router) = &s.backends[0].provider else {
            panic!("router expected")
        };
        assert_eq!(router.name, "svc-a-router");
        let routes = router.listeners[0].routes.routes();
        let order: Vec<&str> = routes.iter().map(|r| &*r.name).collect();
        assert_eq!(order, ["canary-header", "v2-path", "split"]);
        let split = &routes[2].action;
        let weights: Vec<(&str, u32)> = split
            .targets
            .iter_all()
            .map(|(c, w)| (s.clusters[c.0].node.as_str(), w))
            .collect();
        assert_eq!(weights, [("svc-a-v1", 80), ("svc-a-v2", 20)]);
        assert_eq!(split.timeouts.per_request, Some(Duration::from_secs(5)));
        assert_eq!(split.timeouts.idle, Some(Duration::from_secs(300)));
        assert_eq!(split.retry.max_retries, 3);
        assert_eq!(
            split.retry.per_retry_timeout,
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            split.retry.http_events,
            http_retry::SERVER_ERROR | http_retry::GATEWAY_ERROR
        );
        assert!(split.retry.connection_error && !split.retry.implicit);
        let RouteMatch::Http(h) = &routes[0].matcher else {
            panic!("http match expected")
        };
        assert_eq!(h.headers[0].name, "x-canary");
        assert!(matches!(&h.headers[0].matcher, Some(StringMatch::Exact(v)) if v == "true"));

        let Provider::Node { node, clusters } = &s.backends[1].provider else {
            panic!("node expected")
        };
        assert_eq!(node, "svc-b");
        assert_eq!(
            s.clusters[clusters[0].0].name,
            "cds_egress_shop_svc-b_http_9090"
        );

        // svc-a-v2 is targeted by three routes but is one cluster; ids follow first use.
        let cluster_names: Vec<&str> = s.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            cluster_names,
            [
                "cds_egress_shop_svc-a-v1_http_8080",
                "cds_egress_shop_svc-a-v2_http_8080",
                "cds_egress_shop_svc-b_http_9090"
            ]
        );
        let v1 = &s.clusters[0];
        assert_eq!(
            v1.discovery,
            Discovery::Dns {
                hostname: "svc-a-v1.shop.local".into(),
                response_type: ResponseType::Endpoints,
                ip_preference: Default::default()
            }
        );
        assert_eq!(
            v1.health_check.as_ref().unwrap().interval,
            Duration::from_secs(5)
        );
        assert_eq!(
            v1.outlier_detection
                .as_ref()
                .unwrap()
                .base_ejection_duration,
            Duration::from_secs(30)
        );
        assert_eq!(v1.protocol, Protocol::Http);
    }
}

#[test]
fn summary_and_dump_describe_the_node() {
    let s = front("describe");
    let summary = s.summary();
    for needle in [
        "virtual node front in mesh shop",
        "8080/http",
        "svc-a.local: virtual router svc-a-router",
        "1. canary-header priority 10: prefix /, header x-canary = \"true\"",
        "cds_egress_shop_svc-a-v1_http_8080 80%, cds_egress_shop_svc-a-v2_http_8080 20%",
        "svc-b.local: virtual node svc-b -> cds_egress_shop_svc-b_http_9090",
        "dns svc-b.shop.local:9090",
    ] {
        assert!(summary.contains(needle), "{needle:?} not in\n{summary}");
    }
    let dump = s.dump();
    assert_eq!(dump["mesh"], "shop");
    assert_eq!(
        dump["backends"][0]["listeners"][0]["routes"][2]["targets"][0]["weight"],
        80
    );
    assert_eq!(dump["clusters"].as_array().unwrap().len(), 3);
}

#[test]
fn defaults_without_timeouts_or_retry() {
    let s = front("describe");
    let Provider::Router(router) = &s.backends[0].provider else {
        panic!()
    };
    let canary = &router.listeners[0].routes.routes()[0].action;
    assert_eq!(canary.retry, RetryPolicy::IMPLICIT);
    assert_eq!(canary.timeouts.per_request, Some(Duration::from_secs(15)));
    assert_eq!(canary.timeouts.idle, Some(Duration::from_secs(300)));
    assert_eq!(
        s.listeners[0].timeouts.per_request,
        Some(Duration::from_secs(15))
    );
    assert_eq!(s.listeners[0].timeouts.idle, Some(Duration::from_secs(300)));
    assert_eq!(s.listeners[0].connection_pool, Default::default());
}

#[test]
fn zero_timeout_disables_and_listener_pool_compiles() {
    let text = "virtualNodeName: n\nspec:\n  listeners:\n    - portMapping: {port: 80, protocol: http}\n      timeout: {http: {perRequest: {unit: s, value: 0}, idle: {unit: ms, value: 1500}}}\n      connectionPool: {http: {maxConnections: 7, maxPendingRequests: 3}}\n";
    let s = build_from_str("n.yaml", text, &Selector::node("n"))
        .unwrap()
        .snapshot;
    assert_eq!(&*s.mesh, "");
    assert_eq!(s.listeners[0].timeouts.per_request, None);
    assert_eq!(
        s.listeners[0].timeouts.idle,
        Some(Duration::from_millis(1500))
    );
    assert_eq!(s.listeners[0].connection_pool.max_connections, Some(7));
    assert_eq!(s.listeners[0].connection_pool.max_pending_requests, Some(3));
}

#[test]
fn extensions_compile_and_warn() {
    let extra = common::http_route(
        "ext",
        "{match: {prefix: /, hostname: {suffix: .Example.com}, cookies: [{name: user, match: {regex: \"b.b\"}, invert: true}]}, action: {weightedTargets: [{virtualNode: v1, weight: 1}]}}",
    );
    let grpc = "meshName: m\nvirtualRouterName: g\nspec: {listeners: [{portMapping: {port: 50051, protocol: grpc}}]}\n---\nmeshName: m\nvirtualRouterName: g\nrouteName: gr\nspec:\n  grpcRoute: {match: {serviceName: pkg.Svc, hostname: {exact: api.local}, cookies: [{name: c}]}, action: {weightedTargets: [{virtualNode: v2, port: 9090, weight: 1}]}}\n---\nmeshName: m\nvirtualServiceName: grpc.local\nspec: {provider: {virtualRouter: {virtualRouterName: g}}}\n---\nmeshName: m\nvirtualNodeName: caller\nspec: {backends: [{virtualService: {virtualServiceName: svc.local}}, {virtualService: {virtualServiceName: grpc.local}}]}\n";
    let text = format!("{}\n---\n{extra}\n---\n{grpc}", common::BASE);
    let built = build_from_str("ext.yaml", &text, &Selector::node("caller")).unwrap();
    assert_eq!(built.warnings.len(), 4, "{:#?}", built.warnings);
    assert!(
        built
            .warnings
            .iter()
            .all(|w| w.severity == Severity::Warning)
    );
    let s = built.snapshot;
    let Provider::Router(r) = &s.backends[0].provider else {
        panic!()
    };
    let RouteMatch::Http(h) = &r.listeners[0].routes.routes()[0].matcher else {
        panic!()
    };
    assert!(matches!(&h.hostname, Some(HostMatch::Suffix(x)) if x == ".example.com"));
    assert_eq!(h.cookies[0].name, "user");
    assert!(h.cookies[0].invert);
    assert!(
        matches!(&h.cookies[0].matcher, Some(StringMatch::Regex(re)) if re.is_match("bob") && !re.is_match("xbob"))
    );
    let Provider::Router(g) = &s.backends[1].provider else {
        panic!()
    };
    let RouteMatch::Grpc(m) = &g.listeners[0].routes.routes()[0].matcher else {
        panic!()
    };
    assert!(matches!(&m.hostname, Some(HostMatch::Exact(x)) if x == "api.local"));
    assert_eq!(m.cookies.len(), 1);
    let cid = g.listeners[0].routes.routes()[0]
        .action
        .targets
        .iter_all()
        .next()
        .unwrap()
        .0;
    assert_eq!(s.clusters[cid.0].name, "cds_egress_m_v2_grpc_9090");
}

#[test]
fn routes_are_split_by_router_listener() {
    let text = format!(
        "{}\n---\nmeshName: m\nvirtualRouterName: r2\nspec: {{listeners: [{{portMapping: {{port: 80, protocol: http}}}}, {{portMapping: {{port: 81, protocol: tcp}}}}]}}\n---\nmeshName: m\nvirtualRouterName: r2\nrouteName: web\nspec: {{httpRoute: {{match: {{prefix: /, port: 80}}, action: {{weightedTargets: [{{virtualNode: v1, weight: 1}}]}}}}}}\n---\nmeshName: m\nvirtualRouterName: r2\nrouteName: raw\nspec: {{tcpRoute: {{match: {{port: 81}}, action: {{weightedTargets: [{{virtualNode: v1, weight: 1}}]}}}}}}\n---\nmeshName: m\nvirtualServiceName: two.local\nspec: {{provider: {{virtualRouter: {{virtualRouterName: r2}}}}}}\n---\nmeshName: m\nvirtualNodeName: c\nspec: {{backends: [{{virtualService: {{virtualServiceName: two.local}}}}]}}\n",
        common::BASE
    );
    let s = build_from_str("two.yaml", &text, &Selector::node("c"))
        .unwrap()
        .snapshot;
    let Provider::Router(r) = &s.backends[0].provider else {
        panic!()
    };
    let per: Vec<(u16, Vec<&str>)> = r
        .listeners
        .iter()
        .map(|l| (l.port, l.routes.routes().iter().map(|x| &*x.name).collect()))
        .collect();
    assert_eq!(per, [(80, vec!["web"]), (81, vec!["raw"])]);
    assert_eq!(
        r.listeners[1].routes.routes()[0]
            .action
            .timeouts
            .per_request,
        None
    );
}

#[test]
fn arn_selects_node_or_gateway() {
    let sel =
        Selector::from_arn("arn:aws:appmesh:us-east-1:111122223333:mesh/shop/virtualNode/front")
            .unwrap();
    assert_eq!(
        sel,
        Selector {
            mesh: Some("shop".into()),
            node: Some("front".into()),
            gateway: None
        }
    );
    let sel =
        Selector::from_arn("arn:aws:appmesh:eu-west-1:1:mesh/shop/virtualGateway/gw").unwrap();
    assert_eq!(sel.gateway.as_deref(), Some("gw"));
    for bad in [
        "",
        "arn:aws:s3:us-east-1:1:mesh/shop/virtualNode/front",
        "arn:aws:appmesh:us-east-1:1:mesh/shop/virtualRouter/r",
        "arn:aws:appmesh:us-east-1:1:mesh/shop",
        "arn:aws:appmesh:us-east-1:1:mesh//virtualNode/x",
    ] {
        let p = Selector::from_arn(bad).unwrap_err();
        assert_eq!(p.path, "APPMESH_RESOURCE_ARN", "{bad}");
    }
}

#[test]
fn unknown_gateway_is_a_problem() {
    let sel = Selector {
        gateway: Some("gw".into()),
        ..Selector::default()
    };
    let errs = build(&[data("describe")], &sel).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].path, "--gateway");
    assert!(
        errs[0]
            .reason
            .contains("virtual gateway \"gw\" is not in mesh")
    );
}

#[test]
fn unknown_node_and_missing_selection_are_problems() {
    let errs = build(&[data("describe")], &Selector::node("nope")).unwrap_err();
    assert!(
        errs[0]
            .reason
            .contains("virtual node \"nope\" is not in mesh \"shop\""),
        "{}",
        errs[0]
    );
    let errs = build(&[data("describe")], &Selector::default()).unwrap_err();
    assert!(errs[0].reason.contains("--node"));
}

#[test]
fn build_reports_errors_sorted_by_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b.yaml"), "meshName: m\nvirtualNodeName: b\nspec: {listeners: [{portMapping: {port: 0, protocol: http}}]}\n").unwrap();
    std::fs::write(dir.path().join("a.yaml"), "meshName: m\nvirtualNodeName: a\nspec: {backends: [{virtualService: {virtualServiceName: x}}], bogus: 1}\n---\nmeshName: m\nvirtualNodeName: a2\nspec: {backends: [{virtualService: {virtualServiceName: x}}]}\n").unwrap();
    let errs = build(
        &[dir.path().join("b.yaml"), dir.path().join("a.yaml")],
        &Selector::node("a"),
    )
    .unwrap_err();
    let files: Vec<bool> = errs.iter().map(|e| e.file.ends_with("a.yaml")).collect();
    assert_eq!(files, [true, true, false], "{errs:#?}");
    assert!(errs[0].path.contains("bogus"));
    assert_eq!(errs[1].name, "a2");
}

#[test]
fn several_meshes_need_a_choice() {
    let text = "meshName: one\nvirtualNodeName: n\nspec: {}\n---\nmeshName: two\nvirtualNodeName: n\nspec: {}\n";
    let errs = build_from_str("m.yaml", text, &Selector::node("n")).unwrap_err();
    assert!(errs[0].reason.contains("several meshes"));
    let sel = Selector {
        mesh: Some("two".into()),
        ..Selector::node("n")
    };
    let s = build_from_str("m.yaml", text, &sel).unwrap().snapshot;
    assert_eq!(&*s.mesh, "two");
}

#[test]
fn cloud_map_and_mesh_ip_preference() {
    let text = "mesh: {meshName: m, spec: {egressFilter: {type: ALLOW_ALL}, serviceDiscovery: {ipPreference: IPv6_PREFERRED}}}\n---\nvirtualNodeName: t\nspec: {listeners: [{portMapping: {port: 7000, protocol: tcp}}], serviceDiscovery: {awsCloudMap: {namespaceName: ns.local, serviceName: db}}}\n---\nvirtualServiceName: db.local\nspec: {provider: {virtualNode: {virtualNodeName: t}}}\n---\nvirtualNodeName: c\nspec: {backends: [{virtualService: {virtualServiceName: db.local}}]}\n";
    let s = build_from_str("cm.yaml", text, &Selector::node("c"))
        .unwrap()
        .snapshot;
    assert_eq!(s.egress_filter, EgressFilter::AllowAll);
    assert_eq!(s.clusters[0].name, "cds_egress_m_t_tcp_7000");
    assert_eq!(
        s.clusters[0].discovery,
        Discovery::Dns {
            hostname: "db.ns.local".into(),
            response_type: ResponseType::Endpoints,
            ip_preference: outrider_config::IpPreference::Ipv6Preferred
        }
    );
}
