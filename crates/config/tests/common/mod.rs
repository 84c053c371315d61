//! Shared spec snippets for the integration tests.

#![allow(dead_code)]

use outrider_config::{Problem, Severity, load_str, validate};

/// A small valid mesh in create shape: `front` calls `svc.local` through router `r` (http 8080)
/// to nodes `v1` and `v2`.
pub const BASE: &str = r#"
meshName: m
spec: {}
---
meshName: m
virtualNodeName: front
spec:
  listeners: [{portMapping: {port: 8080, protocol: http}}]
  serviceDiscovery: {dns: {hostname: front.local}}
  backends: [{virtualService: {virtualServiceName: svc.local}}]
---
meshName: m
virtualNodeName: v1
spec:
  listeners: [{portMapping: {port: 8080, protocol: http}}]
  serviceDiscovery: {dns: {hostname: v1.local}}
---
meshName: m
virtualNodeName: v2
spec:
  listeners:
    - portMapping: {port: 8080, protocol: http}
    - portMapping: {port: 9090, protocol: grpc}
  serviceDiscovery: {dns: {hostname: v2.local}}
---
meshName: m
virtualRouterName: r
spec:
  listeners: [{portMapping: {port: 8080, protocol: http}}]
---
meshName: m
virtualServiceName: svc.local
spec: {provider: {virtualRouter: {virtualRouterName: r}}}
"#;

/// Every problem (load and validation) of BASE plus `extra` YAML documents.
pub fn problems(extra: &str) -> Vec<Problem> {
    let text = format!("{BASE}\n---\n{extra}");
    let loaded = load_str("t.yaml", &text);
    let mut all = loaded.problems;
    all.extend(validate(&loaded.resources));
    all
}

/// Only the errors.
pub fn errors(extra: &str) -> Vec<Problem> {
    problems(extra)
        .into_iter()
        .filter(|p| p.severity == Severity::Error)
        .collect()
}

/// Asserts exactly one error, at `path`, whose reason contains `needle`.
pub fn one_error(extra: &str, path: &str, needle: &str) {
    let errs = errors(extra);
    assert_eq!(errs.len(), 1, "expected one error, got {errs:#?}");
    assert_eq!(errs[0].path, path, "{}", errs[0]);
    assert!(
        errs[0].reason.contains(needle),
        "reason {:?} lacks {needle:?}",
        errs[0].reason
    );
}

/// A route on router `r` with the given `httpRoute` body (YAML flow).
pub fn http_route(name: &str, body: &str) -> String {
    format!("meshName: m\nvirtualRouterName: r\nrouteName: {name}\nspec:\n  httpRoute: {body}\n")
}
