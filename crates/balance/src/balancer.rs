//! Choosing an endpoint from a lock-free, swappable endpoint set.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::endpoint::{DEFAULT_DECAY, Endpoint, now_ns};

/// How [`Balancer::pick`] chooses among endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algorithm {
    /// Least request by power of two choices: draw two distinct endpoints at random and take
    /// the one with the lower peak-EWMA load. Default.
    #[default]
    P2c,
    /// Each endpoint in turn.
    RoundRobin,
}

/// The endpoint set of one upstream cluster and the policy that picks from it.
///
/// `pick` takes no lock and allocates nothing: it reads the current set through an
/// [`ArcSwap`]. Unavailable endpoints are skipped unless every endpoint is unavailable, in
/// which case all are eligible again (Envoy's panic mode: better to try than to fail).
#[derive(Debug)]
pub struct Balancer {
    algorithm: Algorithm,
    decay: Duration,
    set: ArcSwap<EndpointSet>,
    next: AtomicUsize,
}

#[derive(Debug, Default)]
struct EndpointSet {
    endpoints: Arc<[Arc<Endpoint>]>,
}

impl Balancer {
    /// An empty balancer; endpoints created by [`update`](Self::update) use
    /// [`DEFAULT_DECAY`].
    pub fn new(algorithm: Algorithm) -> Self {
        Self::with_decay(algorithm, DEFAULT_DECAY)
    }

    /// [`Balancer::new`] with a custom latency decay for new endpoints.
    pub fn with_decay(algorithm: Algorithm, decay: Duration) -> Self {
        Self {
            algorithm,
            decay,
            set: ArcSwap::from_pointee(EndpointSet::default()),
            // Start round robin at a random place so that many proxies fed the same list do
            // not all hit its first endpoint together.
            next: AtomicUsize::new(fastrand::usize(..)),
        }
    }

    /// The configured algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Replaces the endpoint set with `addrs` (duplicates ignored, order kept). Endpoints
    /// that stay keep their state; removed ones are no longer picked, while requests already
    /// on them finish normally.
    pub fn update(&self, addrs: &[SocketAddr]) {
        self.set.rcu(|current| {
            let mut old: HashMap<SocketAddr, &Arc<Endpoint>> =
                current.endpoints.iter().map(|e| (e.addr(), e)).collect();
            let mut endpoints: Vec<Arc<Endpoint>> = Vec::with_capacity(addrs.len());
            for &addr in addrs {
                if endpoints.iter().any(|e| e.addr() == addr) {
                    continue;
                }
                let endpoint = match old.remove(&addr) {
                    Some(kept) => Arc::clone(kept),
                    None => Arc::new(Endpoint::with_decay(addr, self.decay)),
                };
                endpoints.push(endpoint);
            }
            EndpointSet {
                endpoints: endpoints.into(),
            }
        });
    }

    /// Picks an endpoint (see [`Algorithm`]). `None` only when the set is empty.
    pub fn pick(&self) -> Option<Arc<Endpoint>> {
        let set = self.set.load();
        let eps = &set.endpoints[..];
        let start = self.round_robin_start();
        self.choose(eps, start, |e| e.is_available())
            .or_else(|| self.choose(eps, start, |_| true))
            .map(|i| Arc::clone(&eps[i]))
    }

    /// Picks an endpoint other than `exclude` (the one a retry just failed on) when another
    /// exists. Order of preference: available others, available `exclude`, then (panic mode)
    /// unavailable others, then `exclude` itself. `None` only when the set is empty.
    pub fn pick_excluding(&self, exclude: SocketAddr) -> Option<Arc<Endpoint>> {
        let set = self.set.load();
        let eps = &set.endpoints[..];
        let start = self.round_robin_start();
        self.choose(eps, start, |e| e.is_available() && e.addr() != exclude)
            .or_else(|| self.choose(eps, start, |e| e.is_available()))
            .or_else(|| self.choose(eps, start, |e| e.addr() != exclude))
            .or_else(|| self.choose(eps, start, |_| true))
            .map(|i| Arc::clone(&eps[i]))
    }

    /// The current endpoint set, in update order.
    pub fn endpoints(&self) -> Arc<[Arc<Endpoint>]> {
        Arc::clone(&self.set.load().endpoints)
    }

    /// Number of endpoints in the set.
    pub fn len(&self) -> usize {
        self.set.load().endpoints.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One round-robin step per pick, however many eligibility tiers the pick tries, so
    /// fallbacks do not skip endpoints.
    fn round_robin_start(&self) -> usize {
        match self.algorithm {
            Algorithm::P2c => 0,
            Algorithm::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed),
        }
    }

    fn choose(
        &self,
        eps: &[Arc<Endpoint>],
        start: usize,
        eligible: impl Fn(&Endpoint) -> bool,
    ) -> Option<usize> {
        match self.algorithm {
            Algorithm::P2c => p2c(eps, eligible),
            Algorithm::RoundRobin => round_robin(eps, start, eligible),
        }
    }
}

/// Power of two choices among the eligible endpoints. An ineligible draw counts as infinite
/// load, so the common case (everything eligible) costs two random numbers and two loads.
fn p2c(eps: &[Arc<Endpoint>], eligible: impl Fn(&Endpoint) -> bool) -> Option<usize> {
    let n = eps.len();
    if n == 0 {
        return None;
    }
    if n == 1 {
        return eligible(&eps[0]).then_some(0);
    }
    let (i, j) = distinct_pair(n);
    let pair = match (eligible(&eps[i]), eligible(&eps[j])) {
        (true, true) => Some((i, j)),
        (true, false) => return Some(i),
        (false, true) => return Some(j),
        // Both draws missed: draw again among the eligible ones only (rare, so a scan is fine).
        (false, false) => {
            let count = eps.iter().filter(|e| eligible(e)).count();
            match count {
                0 => return None,
                1 => return eps.iter().position(|e| eligible(e)),
                _ => {
                    let (ri, rj) = distinct_pair(count);
                    let nth_eligible = |r: usize| {
                        eps.iter()
                            .enumerate()
                            .filter(|(_, e)| eligible(e))
                            .nth(r)
                            .map(|(k, _)| k)
                    };
                    nth_eligible(ri).zip(nth_eligible(rj))
                }
            }
        }
    };
    let (i, j) = pair?;
    let now = now_ns();
    // (i, j) is a uniformly random ordered pair, so taking `i` on a tie is a fair coin.
    if eps[j].load_at(now) < eps[i].load_at(now) {
        Some(j)
    } else {
        Some(i)
    }
}

/// Two distinct uniform indexes below `n` (which must be at least 2).
fn distinct_pair(n: usize) -> (usize, usize) {
    let i = fastrand::usize(..n);
    let mut j = fastrand::usize(..n - 1);
    if j >= i {
        j += 1;
    }
    (i, j)
}

/// The first eligible endpoint at or after `start` (modulo the set size).
fn round_robin(
    eps: &[Arc<Endpoint>],
    start: usize,
    eligible: impl Fn(&Endpoint) -> bool,
) -> Option<usize> {
    let n = eps.len();
    (0..n)
        .map(|k| (start.wrapping_add(k)) % n)
        .find(|&i| eligible(&eps[i]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([10, 0, 0, 1], 8000 + i)))
            .collect()
    }

    fn counts(
        b: &Balancer,
        picks: usize,
        pick: impl Fn(&Balancer) -> Option<Arc<Endpoint>>,
    ) -> HashMap<SocketAddr, usize> {
        let mut seen = HashMap::new();
        for _ in 0..picks {
            *seen.entry(pick(b).unwrap().addr()).or_default() += 1;
        }
        seen
    }

    #[test]
    fn empty_set_picks_nothing() {
        for algo in [Algorithm::P2c, Algorithm::RoundRobin] {
            let b = Balancer::new(algo);
            assert!(b.pick().is_none());
            assert!(b.pick_excluding(addrs(1)[0]).is_none());
            assert!(b.is_empty());
        }
    }

    #[test]
    fn single_endpoint_is_always_picked() {
        for algo in [Algorithm::P2c, Algorithm::RoundRobin] {
            let b = Balancer::new(algo);
            let a = addrs(1);
            b.update(&a);
            assert_eq!(b.pick().unwrap().addr(), a[0]);
            assert_eq!(b.pick_excluding(a[0]).unwrap().addr(), a[0]);
            b.endpoints()[0].set_healthy(false);
            assert_eq!(b.pick().unwrap().addr(), a[0], "panic mode");
        }
    }

    #[test]
    fn p2c_avoids_the_busy_endpoint() {
        let b = Balancer::new(Algorithm::P2c);
        let a = addrs(2);
        b.update(&a);
        let busy = Arc::clone(&b.endpoints()[0]);
        let _held: Vec<_> = (0..10).map(|_| busy.start()).collect();
        let seen = counts(&b, 200, Balancer::pick);
        assert_eq!(seen.get(&a[1]), Some(&200));
    }

    #[test]
    fn p2c_spreads_over_three_busy_and_idle() {
        let b = Balancer::new(Algorithm::P2c);
        let a = addrs(3);
        b.update(&a);
        let busy = Arc::clone(&b.endpoints()[0]);
        let _held: Vec<_> = (0..10).map(|_| busy.start()).collect();
        let seen = counts(&b, 3000, Balancer::pick);
        // Distinct draws always pair the busy endpoint with an idle one, so it never wins.
        assert_eq!(seen.get(&a[0]), None);
        assert!(seen[&a[1]] > 1200 && seen[&a[2]] > 1200, "{seen:?}");
    }

    #[test]
    fn peak_ewma_makes_slow_endpoint_lose() {
        let b = Balancer::new(Algorithm::P2c);
        let a = addrs(2);
        b.update(&a);
        let eps = b.endpoints();
        eps[0].start().finish(Duration::from_millis(250));
        eps[1].start().finish(Duration::from_millis(2));
        let seen = counts(&b, 200, Balancer::pick);
        assert_eq!(seen.get(&a[1]), Some(&200));
        // A fast sample does not erase the slow peak at once.
        eps[0].start().finish(Duration::from_millis(1));
        assert!(eps[0].rtt_estimate() > Duration::from_millis(200));
    }

    #[test]
    fn round_robin_cycles_evenly() {
        let b = Balancer::new(Algorithm::RoundRobin);
        let a = addrs(4);
        b.update(&a);
        let first = b.pick().unwrap().addr();
        let start = a.iter().position(|x| *x == first).unwrap();
        for k in 1..12 {
            assert_eq!(b.pick().unwrap().addr(), a[(start + k) % 4]);
        }
        let seen = counts(&b, 400, Balancer::pick);
        assert!(seen.values().all(|&c| c == 100), "{seen:?}");
    }

    #[test]
    fn update_keeps_state_of_retained_endpoints() {
        let b = Balancer::new(Algorithm::P2c);
        let a = addrs(3);
        b.update(&a);
        let kept = Arc::clone(&b.endpoints()[1]);
        let removed = Arc::clone(&b.endpoints()[0]);
        let guard = kept.start();
        let on_removed = removed.start();
        b.update(&[a[1], a[2], a[1]]);
        let eps = b.endpoints();
        assert_eq!(b.len(), 2, "duplicates collapse");
        assert!(Arc::ptr_eq(&eps[0], &kept));
        assert_eq!(eps[0].in_flight(), 1);
        assert!(!eps.iter().any(|e| e.addr() == a[0]));
        for _ in 0..100 {
            assert_ne!(b.pick().unwrap().addr(), a[0]);
        }
        drop(guard);
        // The request on the removed endpoint still completes and records normally.
        on_removed.finish(Duration::from_millis(5));
        assert_eq!(removed.in_flight(), 0);
        assert_eq!(kept.in_flight(), 0);
    }

    #[test]
    fn unhealthy_endpoints_are_skipped_until_all_are() {
        for algo in [Algorithm::P2c, Algorithm::RoundRobin] {
            let b = Balancer::new(algo);
            let a = addrs(4);
            b.update(&a);
            let eps = b.endpoints();
            for e in &eps[..3] {
                e.set_healthy(false);
            }
            let seen = counts(&b, 100, Balancer::pick);
            assert_eq!(seen.get(&a[3]), Some(&100), "{algo:?}");
            eps[3].set_healthy(false);
            let seen = counts(&b, 400, Balancer::pick);
            assert_eq!(seen.len(), 4, "panic mode uses all: {algo:?} {seen:?}");
        }
    }

    #[test]
    fn p2c_with_two_healthy_among_many_balances_between_them() {
        let b = Balancer::new(Algorithm::P2c);
        let a = addrs(10);
        b.update(&a);
        for e in &b.endpoints()[2..] {
            e.set_healthy(false);
        }
        let seen = counts(&b, 1000, Balancer::pick);
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(seen[&a[0]] > 300 && seen[&a[1]] > 300, "{seen:?}");
    }

    #[test]
    fn pick_excluding_prefers_another_endpoint() {
        for algo in [Algorithm::P2c, Algorithm::RoundRobin] {
            let b = Balancer::new(algo);
            let a = addrs(3);
            b.update(&a);
            for _ in 0..100 {
                assert_ne!(b.pick_excluding(a[0]).unwrap().addr(), a[0]);
            }
            let eps = b.endpoints();
            eps[1].set_healthy(false);
            eps[2].set_healthy(false);
            // The only available endpoint beats unavailable others.
            assert_eq!(b.pick_excluding(a[0]).unwrap().addr(), a[0]);
            eps[0].set_healthy(false);
            for _ in 0..100 {
                assert_ne!(b.pick_excluding(a[0]).unwrap().addr(), a[0]);
            }
        }
    }

    proptest! {
        #[test]
        fn pick_stays_inside_the_set(
            ports in proptest::collection::vec(1u16..40, 0..12),
            unhealthy in proptest::collection::vec(any::<bool>(), 12),
            round_robin in any::<bool>(),
            exclude in 1u16..40,
        ) {
            let algo = if round_robin { Algorithm::RoundRobin } else { Algorithm::P2c };
            let b = Balancer::new(algo);
            let set: Vec<SocketAddr> =
                ports.iter().map(|&p| SocketAddr::from(([127, 0, 0, 1], p))).collect();
            b.update(&set);
            for (e, &down) in b.endpoints().iter().zip(&unhealthy) {
                e.set_healthy(!down);
            }
            let exclude = SocketAddr::from(([127, 0, 0, 1], exclude));
            for _ in 0..20 {
                let picked = b.pick();
                let other = b.pick_excluding(exclude);
                prop_assert_eq!(picked.is_none(), set.is_empty());
                prop_assert_eq!(other.is_none(), set.is_empty());
                for e in picked.iter().chain(other.iter()) {
                    prop_assert!(set.contains(&e.addr()));
                }
            }
        }
    }
}
