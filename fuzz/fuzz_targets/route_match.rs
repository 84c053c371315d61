//! Arbitrary paths, queries and headers against a route table compiled from a fixed spec: no
//! panic, and a selected route's matcher accepts the request.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use outrider_config::{Provider, Snapshot};

const SPEC: &str = include_str!("../seeds/route_spec.yaml");

fn snapshot() -> &'static Snapshot {
    static SNAP: OnceLock<Snapshot> = OnceLock::new();
    SNAP.get_or_init(|| {
        let sel = outrider_config::Selector { mesh: None, node: Some("front".into()), gateway: None };
        match outrider_config::build_from_str("route_spec.yaml", SPEC, &sel) {
            Ok(b) => b.snapshot,
            Err(p) => panic!("seed spec must compile: {p:?}"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(4, '\n');
    let path = lines.next().unwrap_or("/");
    let query = lines.next();
    let header_value = lines.next().unwrap_or("");
    let cookie = lines.next().unwrap_or("");
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_str(header_value) {
        headers.insert("x-version", v.clone());
        headers.insert("x-num", v);
    }
    if let Ok(v) = http::HeaderValue::from_str(cookie) {
        headers.insert(http::header::COOKIE, v);
    }
    let parts = outrider_route::RequestParts {
        method: &http::Method::GET,
        scheme: "http",
        host: "svc-a.local",
        port: 8080,
        path,
        query,
        headers: &headers,
    };
    for vs in &snapshot().backends {
        if let Provider::Router(r) = &vs.provider {
            for l in &r.listeners {
                if let Some(route) = l.routes.select(&parts) {
                    assert!(route.matcher.matches(&parts));
                }
            }
        }
    }
});
