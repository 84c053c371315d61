//! One test per validation error kind, plus warnings and "all errors at once".

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::{BASE, errors, http_route, one_error, problems};
use outrider_config::{Severity, load_str, validate};

const OK_ACTION: &str = "action: {weightedTargets: [{virtualNode: v1, weight: 1}]}";

#[test]
fn base_is_valid() {
    let all = problems("");
    assert!(all.is_empty(), "{all:#?}");
}

#[test]
fn route_to_missing_router() {
    let doc = format!(
        "meshName: m\nvirtualRouterName: nope\nrouteName: x\nspec:\n  httpRoute: {{match: {{prefix: /}}, {OK_ACTION}}}\n"
    );
    one_error(
        &doc,
        "virtualRouterName",
        "virtual router \"nope\" does not exist",
    );
}

#[test]
fn weighted_target_to_missing_node() {
    let doc = http_route(
        "x",
        "{match: {prefix: /}, action: {weightedTargets: [{virtualNode: ghost, weight: 1}]}}",
    );
    one_error(
        &doc,
        "spec.httpRoute.action.weightedTargets[0].virtualNode",
        "\"ghost\" does not exist",
    );
}

#[test]
fn service_provider_missing_node() {
    let doc = "meshName: m\nvirtualServiceName: s2\nspec: {provider: {virtualNode: {virtualNodeName: ghost}}}\n";
    one_error(
        doc,
        "spec.provider.virtualNode.virtualNodeName",
        "\"ghost\" does not exist",
    );
}

#[test]
fn service_provider_missing_router() {
    let doc = "meshName: m\nvirtualServiceName: s2\nspec: {provider: {virtualRouter: {virtualRouterName: ghost}}}\n";
    one_error(
        doc,
        "spec.provider.virtualRouter.virtualRouterName",
        "\"ghost\" does not exist",
    );
}

#[test]
fn node_backend_missing_service() {
    let doc = "meshName: m\nvirtualNodeName: n2\nspec: {backends: [{virtualService: {virtualServiceName: nope.local}}]}\n";
    one_error(
        doc,
        "spec.backends[0].virtualService.virtualServiceName",
        "\"nope.local\" does not exist",
    );
}

#[test]
fn gateway_route_dangling_references() {
    let doc = "meshName: m\nvirtualGatewayName: gw\ngatewayRouteName: g\nspec:\n  httpRoute: {match: {prefix: /}, action: {target: {virtualService: {virtualServiceName: nope}}}}\n";
    let errs = errors(doc);
    let paths: Vec<&str> = errs.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "virtualGatewayName",
            "spec.httpRoute.action.target.virtualService.virtualServiceName"
        ]
    );
}

#[test]
fn duplicate_resource() {
    let doc = "meshName: m\nvirtualNodeName: v1\nspec: {}\n";
    one_error(doc, "virtualNodeName", "duplicate VirtualNode \"v1\"");
}

#[test]
fn weight_out_of_range() {
    let doc = http_route(
        "x",
        "{match: {prefix: /}, action: {weightedTargets: [{virtualNode: v1, weight: 101}]}}",
    );
    one_error(
        &doc,
        "spec.httpRoute.action.weightedTargets[0].weight",
        "must be 0–100",
    );
}

#[test]
fn priority_out_of_range() {
    let doc = format!(
        "meshName: m\nvirtualRouterName: r\nrouteName: x\nspec:\n  priority: 1001\n  httpRoute: {{match: {{prefix: /}}, {OK_ACTION}}}\n"
    );
    one_error(&doc, "spec.priority", "must be 0–1000");
}

#[test]
fn port_out_of_range() {
    let doc = "meshName: m\nvirtualNodeName: n2\nspec: {listeners: [{portMapping: {port: 70000, protocol: http}}]}\n";
    one_error(doc, "spec.listeners[0].portMapping.port", "must be 1–65535");
}

#[test]
fn negative_duration() {
    let doc = http_route(
        "x",
        &format!(
            "{{match: {{prefix: /}}, {OK_ACTION}, timeout: {{perRequest: {{unit: s, value: -1}}}}}}"
        ),
    );
    one_error(&doc, "spec.httpRoute.timeout.perRequest.value", "negative");
}

#[test]
fn duration_bad_unit_is_a_parse_error_with_path() {
    let doc = http_route(
        "x",
        &format!("{{match: {{prefix: /}}, {OK_ACTION}, timeout: {{idle: {{unit: m, value: 1}}}}}}"),
    );
    one_error(&doc, "spec.httpRoute.timeout.idle.unit", "unknown variant");
}

fn node_with_listener(extra: &str) -> String {
    format!(
        "meshName: m\nvirtualNodeName: n2\nspec:\n  listeners:\n    - portMapping: {{port: 8080, protocol: http}}\n      {extra}\n"
    )
}

#[test]
fn health_check_interval_out_of_range() {
    let doc = node_with_listener(
        "healthCheck: {protocol: http, path: /h, intervalMillis: 1000, timeoutMillis: 2000, healthyThreshold: 2, unhealthyThreshold: 2}",
    );
    one_error(
        &doc,
        "spec.listeners[0].healthCheck.intervalMillis",
        "must be 5000–300000",
    );
}

#[test]
fn health_check_timeout_out_of_range() {
    let doc = node_with_listener(
        "healthCheck: {protocol: http, path: /h, intervalMillis: 5000, timeoutMillis: 61000, healthyThreshold: 2, unhealthyThreshold: 2}",
    );
    one_error(
        &doc,
        "spec.listeners[0].healthCheck.timeoutMillis",
        "must be 2000–60000",
    );
}

#[test]
fn health_check_threshold_out_of_range() {
    let doc = node_with_listener(
        "healthCheck: {protocol: http, path: /h, intervalMillis: 5000, timeoutMillis: 2000, healthyThreshold: 1, unhealthyThreshold: 2}",
    );
    one_error(
        &doc,
        "spec.listeners[0].healthCheck.healthyThreshold",
        "must be 2–10",
    );
}

#[test]
fn max_ejection_percent_out_of_range() {
    let doc = node_with_listener(
        "outlierDetection: {maxServerErrors: 1, maxEjectionPercent: 101, interval: {unit: s, value: 1}, baseEjectionDuration: {unit: s, value: 1}}",
    );
    one_error(
        &doc,
        "spec.listeners[0].outlierDetection.maxEjectionPercent",
        "must be 0–100",
    );
}

#[test]
fn max_server_errors_zero() {
    let doc = node_with_listener(
        "outlierDetection: {maxServerErrors: 0, maxEjectionPercent: 10, interval: {unit: s, value: 1}, baseEjectionDuration: {unit: s, value: 1}}",
    );
    one_error(
        &doc,
        "spec.listeners[0].outlierDetection.maxServerErrors",
        "at least 1",
    );
}

#[test]
fn connection_pool_value_zero() {
    let doc = node_with_listener("connectionPool: {http: {maxConnections: 0}}");
    one_error(
        &doc,
        "spec.listeners[0].connectionPool.http.maxConnections",
        "at least 1",
    );
}

#[test]
fn connection_pool_kind_mismatch() {
    let doc = node_with_listener("connectionPool: {tcp: {maxConnections: 5}}");
    one_error(&doc, "spec.listeners[0].connectionPool.tcp", "must match");
}

#[test]
fn timeout_kind_mismatch() {
    let doc = node_with_listener("timeout: {grpc: {perRequest: {unit: s, value: 1}}}");
    one_error(&doc, "spec.listeners[0].timeout.grpc", "must match");
}

#[test]
fn too_many_weighted_targets() {
    let targets: Vec<String> = (0..11)
        .map(|_| "{virtualNode: v1, weight: 1}".to_owned())
        .collect();
    let doc = http_route(
        "x",
        &format!(
            "{{match: {{prefix: /}}, action: {{weightedTargets: [{}]}}}}",
            targets.join(", ")
        ),
    );
    one_error(
        &doc,
        "spec.httpRoute.action.weightedTargets",
        "must be 1–10",
    );
}

#[test]
fn no_weighted_targets() {
    let doc = http_route("x", "{match: {prefix: /}, action: {weightedTargets: []}}");
    one_error(
        &doc,
        "spec.httpRoute.action.weightedTargets",
        "must be 1–10",
    );
}

#[test]
fn too_many_headers() {
    let headers: Vec<String> = (0..11).map(|i| format!("{{name: h{i}}}")).collect();
    let doc = http_route(
        "x",
        &format!(
            "{{match: {{prefix: /, headers: [{}]}}, {OK_ACTION}}}",
            headers.join(", ")
        ),
    );
    one_error(&doc, "spec.httpRoute.match.headers", "at most 10");
}

#[test]
fn too_many_query_parameters() {
    let q: Vec<String> = (0..11).map(|i| format!("{{name: q{i}}}")).collect();
    let doc = http_route(
        "x",
        &format!(
            "{{match: {{prefix: /, queryParameters: [{}]}}, {OK_ACTION}}}",
            q.join(", ")
        ),
    );
    one_error(&doc, "spec.httpRoute.match.queryParameters", "at most 10");
}

#[test]
fn path_too_long() {
    let long = format!("/{}", "a".repeat(300));
    let doc = http_route(
        "x",
        &format!("{{match: {{path: {{exact: {long}}}}}, {OK_ACTION}}}"),
    );
    one_error(&doc, "spec.httpRoute.match.path.exact", "longer than 255");
}

#[test]
fn invalid_regex() {
    let doc = http_route(
        "x",
        &format!("{{match: {{path: {{regex: \"/a(\"}}}}, {OK_ACTION}}}"),
    );
    one_error(&doc, "spec.httpRoute.match.path.regex", "invalid regex");
}

#[test]
fn invalid_header_regex() {
    let doc = http_route(
        "x",
        &format!(
            "{{match: {{prefix: /, headers: [{{name: x, match: {{regex: \"[\"}}}}]}}, {OK_ACTION}}}"
        ),
    );
    one_error(
        &doc,
        "spec.httpRoute.match.headers[0].match.regex",
        "invalid regex",
    );
}

#[test]
fn prefix_and_path_together() {
    let doc = http_route(
        "x",
        &format!("{{match: {{prefix: /, path: {{exact: /a}}}}, {OK_ACTION}}}"),
    );
    one_error(
        &doc,
        "spec.httpRoute.match",
        "exactly one of prefix and path",
    );
}

#[test]
fn neither_prefix_nor_path() {
    let doc = http_route("x", &format!("{{match: {{method: GET}}, {OK_ACTION}}}"));
    one_error(
        &doc,
        "spec.httpRoute.match",
        "exactly one of prefix and path",
    );
}

#[test]
fn route_kind_disagrees_with_router_listener() {
    let doc = "meshName: m\nvirtualRouterName: r\nrouteName: x\nspec:\n  grpcRoute: {match: {serviceName: s}, action: {weightedTargets: [{virtualNode: v1, weight: 1}]}}\n";
    one_error(doc, "spec.grpcRoute", "needs a grpc listener");
}

#[test]
fn match_port_not_a_router_port() {
    let doc = http_route(
        "x",
        &format!("{{match: {{prefix: /, port: 9999}}, {OK_ACTION}}}"),
    );
    one_error(
        &doc,
        "spec.httpRoute.match.port",
        "not a listener port of virtual router \"r\"",
    );
}

#[test]
fn match_port_required_with_several_router_listeners() {
    let doc = format!(
        "meshName: m\nvirtualRouterName: r2\nspec:\n  listeners: [{{portMapping: {{port: 80, protocol: http}}}}, {{portMapping: {{port: 81, protocol: http}}}}]\n---\nmeshName: m\nvirtualRouterName: r2\nrouteName: x\nspec:\n  httpRoute: {{match: {{prefix: /}}, {OK_ACTION}}}\n"
    );
    one_error(&doc, "spec.httpRoute.match.port", "match.port is required");
}

#[test]
fn target_port_not_a_node_port() {
    let doc = http_route(
        "x",
        "{match: {prefix: /}, action: {weightedTargets: [{virtualNode: v1, weight: 1, port: 1234}]}}",
    );
    one_error(
        &doc,
        "spec.httpRoute.action.weightedTargets[0].port",
        "not a listener port of virtual node \"v1\"",
    );
}

#[test]
fn target_port_required_when_node_has_several_listeners() {
    let doc = http_route(
        "x",
        "{match: {prefix: /}, action: {weightedTargets: [{virtualNode: v2, weight: 1}]}}",
    );
    one_error(
        &doc,
        "spec.httpRoute.action.weightedTargets[0].port",
        "port is required",
    );
}

#[test]
fn retry_events_need_max_retries_and_per_retry_timeout() {
    let doc = http_route(
        "x",
        &format!(
            "{{match: {{prefix: /}}, {OK_ACTION}, retryPolicy: {{httpRetryEvents: [server-error]}}}}"
        ),
    );
    let errs = errors(&doc);
    let paths: Vec<&str> = errs.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "spec.httpRoute.retryPolicy.maxRetries",
            "spec.httpRoute.retryPolicy.perRetryTimeout"
        ]
    );
}

#[test]
fn exactly_one_route_kind() {
    let doc = format!(
        "meshName: m\nvirtualRouterName: r\nrouteName: x\nspec:\n  httpRoute: {{match: {{prefix: /}}, {OK_ACTION}}}\n  http2Route: {{match: {{prefix: /}}, {OK_ACTION}}}\n"
    );
    one_error(&doc, "spec", "exactly one of httpRoute");
}

#[test]
fn unknown_field_reports_its_path() {
    let doc = "meshName: m\nvirtualNodeName: n2\nspec:\n  listeners: [{portMapping: {port: 80, protocol: http, bogus: 1}}]\n";
    one_error(
        doc,
        "spec.listeners[0].portMapping.bogus",
        "unknown field `bogus`",
    );
}

#[test]
fn unknown_enum_variant_reports_its_path() {
    let doc = "meshName: m\nvirtualNodeName: n2\nspec:\n  listeners: [{portMapping: {port: 80, protocol: udp}}]\n";
    one_error(
        doc,
        "spec.listeners[0].portMapping.protocol",
        "unknown variant `udp`",
    );
}

#[test]
fn all_errors_of_a_file_are_reported_together() {
    let text = format!(
        "{BASE}\n---\nmeshName: m\nvirtualNodeName: bad1\nspec: {{listeners: [{{portMapping: {{port: 0, protocol: http}}}}]}}\n---\nmeshName: m\nvirtualNodeName: bad2\nspec: {{nope: 1}}\n---\n{}\n---\n{}",
        common::http_route(
            "bad3",
            "{match: {prefix: /}, action: {weightedTargets: [{virtualNode: ghost, weight: 500}]}}"
        ),
        "meshName: m\nvirtualServiceName: bad4\nspec: {provider: {virtualRouter: {virtualRouterName: ghost}}}\n"
    );
    let loaded = load_str("several.yaml", &text);
    let mut all = loaded.problems.clone();
    all.extend(validate(&loaded.resources));
    let errs: Vec<String> = all
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .map(ToString::to_string)
        .collect();
    assert_eq!(errs.len(), 5, "{errs:#?}");
    for needle in [
        "bad1",
        "bad2",
        "bad3: spec.httpRoute.action.weightedTargets[0].weight",
        "ghost",
        "bad4",
    ] {
        assert!(
            errs.iter().any(|e| e.contains(needle)),
            "{needle} missing in {errs:#?}"
        );
    }
    assert!(errs.iter().all(|e| e.starts_with("several.yaml: ")));
}

#[test]
fn unsupported_fields_warn() {
    let doc = "meshName: m\nvirtualNodeName: n2\nspec:\n  listeners:\n    - portMapping: {port: 80, protocol: http}\n      tls: {mode: STRICT, certificate: {acm: {certificateArn: arn}}}\n  backendDefaults: {clientPolicy: {}}\n  serviceDiscovery: {awsCloudMap: {namespaceName: ns, serviceName: s, attributes: [{key: k, value: v}]}}\n";
    let all = problems(doc);
    assert!(
        all.iter().all(|p| p.severity == Severity::Warning),
        "{all:#?}"
    );
    let paths: Vec<&str> = all.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "spec.backendDefaults.clientPolicy",
            "spec.listeners[0].tls",
            "spec.listeners[0].tls.certificate.acm",
            "spec.serviceDiscovery.awsCloudMap.attributes"
        ]
    );
    assert!(all[2].reason.contains("use certificate.file offline"));
}

#[test]
fn gateway_resources_validate() {
    let gw = "meshName: m\nvirtualGatewayName: gw\nspec: {listeners: [{portMapping: {port: 80, protocol: http}}]}\n---\nmeshName: m\nvirtualGatewayName: gw\ngatewayRouteName: g\nspec:\n  httpRoute: {match: {prefix: /, hostname: {suffix: .example.com}}, action: {target: {virtualService: {virtualServiceName: svc.local}}, rewrite: ";
    let good = problems(&format!("{gw}{{prefix: {{value: /x/}}}}}}}}\n"));
    assert!(good.is_empty(), "{good:#?}");
    let both = problems(&format!(
        "{gw}{{prefix: {{defaultPrefix: DISABLED, value: /x/}}, path: {{exact: /y}}}}}}}}\n"
    ));
    let reasons: Vec<&str> = both.iter().map(|p| p.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "set defaultPrefix or value, not both",
            "a path rewrite needs a match on path.exact"
        ],
        "{both:#?}"
    );
    let tcp = problems(
        "meshName: m\nvirtualGatewayName: gw\nspec: {listeners: [{portMapping: {port: 80, protocol: tcp}}]}\n",
    );
    assert_eq!(tcp.len(), 1, "{tcp:#?}");
    assert_eq!(tcp[0].path, "spec.listeners[0].portMapping.protocol");
}

#[test]
fn extensions_warn() {
    let doc = http_route(
        "x",
        &format!(
            "{{match: {{prefix: /, hostname: {{exact: a.example}}, cookies: [{{name: user, match: {{exact: bob}}}}]}}, {OK_ACTION}}}"
        ),
    );
    let all = problems(&doc);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(all.iter().all(
        |p| p.severity == Severity::Warning && p.reason.starts_with("extension (not App Mesh)")
    ));
    assert_eq!(all[0].path, "spec.httpRoute.match.hostname");
    assert_eq!(all[1].path, "spec.httpRoute.match.cookies");
}

#[test]
fn hostname_extension_needs_exactly_one_matcher() {
    let doc = http_route(
        "x",
        &format!("{{match: {{prefix: /, hostname: {{}}}}, {OK_ACTION}}}"),
    );
    one_error(
        &doc,
        "spec.httpRoute.match.hostname",
        "exactly one of exact and suffix",
    );
}
