//! Endpoint picks: P2C over peak-EWMA and round robin, at several endpoint-set sizes.

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use outrider_balance::{Algorithm, Balancer};

fn addrs(n: u16) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 8080)))
        .collect()
}

fn picks(c: &mut Criterion) {
    let mut group = c.benchmark_group("balancer_pick");
    for n in [2u16, 10, 100] {
        for (label, algorithm) in [
            ("p2c", Algorithm::P2c),
            ("round_robin", Algorithm::RoundRobin),
        ] {
            let balancer = Balancer::new(algorithm);
            balancer.update(&addrs(n));
            group.bench_function(format!("{label}/{n}"), |b| {
                b.iter(|| black_box(balancer.pick()).map(|e| e.addr()))
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(1));
    targets = picks
}
criterion_main!(benches);
