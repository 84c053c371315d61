//! Route selection over a 100-route table, weighted target picks and header matchers.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use outrider_route::{
    HeaderMatch, HttpMatch, PathMatch, RequestParts, Route, RouteMatch, RouteTable, StringMatch,
    WeightedTargets,
};
use regex::Regex;

/// Routes in the table: App Mesh's default quota per virtual router is 50 per listener, so 100
/// is above what a real router holds.
const ROUTES: usize = 100;

/// Route `i` matches `/svc{i}/...` and, for every third route, also a header.
fn route(i: usize) -> Route<WeightedTargets<u32>> {
    let headers = if i.is_multiple_of(3) {
        vec![HeaderMatch {
            name: HeaderName::from_static("x-tenant"),
            matcher: Some(StringMatch::Exact(format!("tenant-{i}"))),
            invert: false,
        }]
    } else {
        Vec::new()
    };
    Route {
        name: Arc::from(format!("route-{i}")),
        priority: None,
        matcher: RouteMatch::Http(HttpMatch {
            path: Some(PathMatch::Prefix(format!("/svc{i:03}/"))),
            headers,
            ..HttpMatch::default()
        }),
        action: WeightedTargets::new(vec![(0, 90), (1, 10)]),
    }
}

fn table() -> RouteTable<WeightedTargets<u32>> {
    RouteTable::new((0..ROUTES).map(route).collect())
}

fn parts<'a>(path: &'a str, headers: &'a HeaderMap) -> RequestParts<'a> {
    RequestParts {
        method: &Method::GET,
        scheme: "http",
        host: "svc.bench.local",
        port: 8080,
        path,
        query: None,
        headers,
    }
}

fn route_match(c: &mut Criterion) {
    let table = table();
    let mut headers = HeaderMap::new();
    headers.insert("x-tenant", HeaderValue::from_static("tenant-99"));
    headers.insert("user-agent", HeaderValue::from_static("bench/1"));
    let mut group = c.benchmark_group("route_match_100");
    // Labels name the position in the config. All prefixes have the same length, so the 34
    // routes with a header matcher are scanned first: "last" (route 99, with a header) is hit
    // early, "first" (route 1, without) after those 34, "miss" scans all 100.
    for (label, path) in [
        ("first", "/svc001/items/1"),
        ("last", "/svc099/items/1"),
        ("miss", "/nothing/here"),
    ] {
        group.bench_function(label, |b| {
            b.iter(|| black_box(table.select(black_box(&parts(path, &headers)))).is_some())
        });
    }
    group.finish();
}

fn weighted_pick(c: &mut Criterion) {
    let two = WeightedTargets::new(vec![(0u32, 90), (1, 10)]);
    let ten = WeightedTargets::new((0u32..10).map(|i| (i, i + 1)).collect());
    let mut group = c.benchmark_group("weighted_pick");
    group.bench_function("2_targets", |b| b.iter(|| black_box(two.pick()).copied()));
    group.bench_function("10_targets", |b| b.iter(|| black_box(ten.pick()).copied()));
    group.finish();
}

fn header_matchers(c: &mut Criterion) {
    let mut headers = HeaderMap::new();
    for i in 0..10 {
        headers.insert(
            HeaderName::from_bytes(format!("x-extra-{i}").as_bytes()).expect("valid header name"),
            HeaderValue::from_static("some-value"),
        );
    }
    headers.insert("x-version", HeaderValue::from_static("v2-canary-20"));
    let matcher = |m: Option<StringMatch>| HeaderMatch {
        name: HeaderName::from_static("x-version"),
        matcher: m,
        invert: false,
    };
    let cases = [
        ("present", matcher(None)),
        (
            "exact",
            matcher(Some(StringMatch::Exact("v2-canary-20".into()))),
        ),
        ("prefix", matcher(Some(StringMatch::Prefix("v2-".into())))),
        ("suffix", matcher(Some(StringMatch::Suffix("-20".into())))),
        (
            "regex",
            matcher(Some(StringMatch::Regex(
                Regex::new(r"^(?:v[0-9]+-canary-[0-9]+)$").expect("valid regex"),
            ))),
        ),
        (
            "range",
            HeaderMatch {
                name: HeaderName::from_static("x-extra-3"),
                matcher: Some(StringMatch::Range { start: 0, end: 10 }),
                invert: false,
            },
        ),
    ];
    let mut group = c.benchmark_group("header_match");
    for (label, m) in &cases {
        group.bench_function(*label, |b| {
            b.iter(|| black_box(m).matches(black_box(&headers)))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Short windows: these are nanosecond-scale functions, so a second is plenty.
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(1));
    targets = route_match, weighted_pick, header_matchers
}
criterion_main!(benches);
