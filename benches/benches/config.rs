//! Loading, validating and compiling a 1000-resource mesh from one YAML stream.

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use outrider_config::{Selector, build_from_str};

/// Services in the generated mesh. Each adds 4 resources (node, router, route, service), so
/// 249 services plus the client node and the mesh make 998 resources, then 2 more routes.
const SERVICES: usize = 249;

/// A mesh of `SERVICES` router-backed services, all backends of the node `client`.
fn mesh_yaml() -> String {
    let mut y = String::with_capacity(SERVICES * 700);
    y.push_str("meshName: bench\nspec:\n  egressFilter:\n    type: DROP_ALL\n");
    y.push_str(
        "---\nmeshName: bench\nvirtualNodeName: client\nspec:\n  listeners: []\n  backends:\n",
    );
    for i in 0..SERVICES {
        let _ = writeln!(
            y,
            "    - virtualService: {{ virtualServiceName: svc{i}.bench.local }}"
        );
    }
    for i in 0..SERVICES {
        let port = 9000 + i;
        let _ = write!(
            y,
            "---\nmeshName: bench\nvirtualNodeName: node{i}\nspec:\n  listeners:\n    - portMapping: {{ port: {port}, protocol: http }}\n  serviceDiscovery:\n    dns: {{ hostname: node{i}.bench.local }}\n\
             ---\nmeshName: bench\nvirtualRouterName: router{i}\nspec:\n  listeners:\n    - portMapping: {{ port: 8080, protocol: http }}\n\
             ---\nmeshName: bench\nvirtualServiceName: svc{i}.bench.local\nspec:\n  provider:\n    virtualRouter: {{ virtualRouterName: router{i} }}\n\
             ---\nmeshName: bench\nvirtualRouterName: router{i}\nrouteName: route{i}\nspec:\n  priority: 1\n  httpRoute:\n    match:\n      prefix: /api/\n      headers:\n        - name: x-canary\n          match: {{ exact: \"false\" }}\n    retryPolicy:\n      maxRetries: 2\n      perRetryTimeout: {{ unit: ms, value: 500 }}\n      httpRetryEvents: [server-error]\n    timeout:\n      perRequest: {{ unit: s, value: 5 }}\n    action:\n      weightedTargets:\n        - {{ virtualNode: node{i}, weight: 1 }}\n"
        );
    }
    for r in 0..2 {
        let _ = write!(
            y,
            "---\nmeshName: bench\nvirtualRouterName: router0\nrouteName: extra{r}\nspec:\n  priority: {}\n  httpRoute:\n    match:\n      prefix: /extra{r}\n    action:\n      weightedTargets:\n        - {{ virtualNode: node0, weight: 1 }}\n",
            10 + r
        );
    }
    y
}

fn compile(c: &mut Criterion) {
    let yaml = mesh_yaml();
    let sel = Selector {
        node: Some("client".into()),
        ..Selector::default()
    };
    // Fail loudly once, outside the timing loop, if the generated mesh stops being valid.
    if let Err(problems) = build_from_str("bench.yaml", &yaml, &sel) {
        panic!("generated mesh refused: {problems:?}");
    }
    let mut group = c.benchmark_group("config");
    group.sample_size(10);
    group.bench_function("build_1000_resources", |b| {
        b.iter(|| build_from_str("bench.yaml", black_box(&yaml), &sel).is_ok())
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = compile
}
criterion_main!(benches);
