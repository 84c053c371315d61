//! One upstream address and its lock-free load state.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Time constant of the latency estimate's exponential decay: a sample's weight falls to
/// 1/e after this long. Default is 10 s.
pub const DEFAULT_DECAY: Duration = Duration::from_secs(10);

/// Latency estimate of an endpoint that has no sample yet, so a new endpoint competes as a
/// fast-but-unproven one instead of looking free and taking every request. Default is 1 ms.
pub const DEFAULT_RTT: Duration = Duration::from_millis(1);

/// One upstream address with the state the balancer reads: requests in flight, a peak-EWMA
/// latency estimate, and health. All state is atomic; nothing here takes a lock.
#[derive(Debug)]
pub struct Endpoint {
    addr: SocketAddr,
    in_flight: AtomicU32,
    /// Latency estimate in nanoseconds, as of `updated_ns`.
    ewma_ns: AtomicU64,
    /// When `ewma_ns` was last written, in nanoseconds on [`now_ns`]'s clock.
    updated_ns: AtomicU64,
    decay_ns: f64,
    healthy: AtomicBool,
    /// Passive health (outlier detection), kept apart from the active check's verdict so
    /// `/clusters` can say which one failed.
    pub(crate) outlier: OutlierState,
}

/// Outlier-detection state of one endpoint, all atomic.
#[derive(Debug, Default)]
pub(crate) struct OutlierState {
    /// Errors seen in the current interval.
    pub(crate) errors: AtomicU32,
    /// How many times the endpoint was ejected (multiplies the ejection time).
    pub(crate) ejections: AtomicU32,
    /// Ejected until this many nanoseconds on the detector's clock; 0 when not ejected.
    pub(crate) ejected_until: AtomicU64,
}

/// A request in flight on an endpoint: counts toward the endpoint's load until dropped.
/// Holds the endpoint alive, so a request on an endpoint removed from the set finishes
/// normally.
#[derive(Debug)]
#[must_use = "the request stops counting as in flight when this is dropped"]
pub struct InFlight {
    endpoint: Arc<Endpoint>,
}

impl Endpoint {
    /// A healthy endpoint with no requests in flight, a latency estimate of [`DEFAULT_RTT`]
    /// and a decay of [`DEFAULT_DECAY`].
    pub fn new(addr: SocketAddr) -> Self {
        Self::with_decay(addr, DEFAULT_DECAY)
    }

    /// [`Endpoint::new`] with a custom decay time constant (a zero decay is treated as 1 ns).
    pub fn with_decay(addr: SocketAddr, decay: Duration) -> Self {
        Self {
            addr,
            in_flight: AtomicU32::new(0),
            ewma_ns: AtomicU64::new(duration_ns(DEFAULT_RTT)),
            updated_ns: AtomicU64::new(now_ns()),
            decay_ns: (duration_ns(decay).max(1)) as f64,
            healthy: AtomicBool::new(true),
            outlier: OutlierState::default(),
        }
    }

    /// The upstream address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Counts a request as in flight until the returned guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            endpoint: Arc::clone(self),
        }
    }

    /// Requests currently in flight.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Marks the endpoint healthy or not (health checks, outlier ejection). Default is healthy.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Whether the last health verdict was healthy. Default is true.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether outlier detection has ejected the endpoint. Default is false.
    pub fn is_ejected(&self) -> bool {
        self.outlier.ejected_until.load(Ordering::Relaxed) != 0
    }

    /// Whether the balancer may choose this endpoint outside panic mode: healthy by the active
    /// check and not ejected.
    pub fn is_available(&self) -> bool {
        self.is_healthy() && !self.is_ejected()
    }

    /// The current latency estimate, decayed for the time since the last sample.
    pub fn rtt_estimate(&self) -> Duration {
        Duration::from_nanos(self.estimate_at(now_ns()))
    }

    /// The balancer's cost: `(estimate_ns + 1) * (in_flight + 1)`; lower is better.
    pub fn load(&self) -> u64 {
        self.load_at(now_ns())
    }

    pub(crate) fn load_at(&self, now: u64) -> u64 {
        let in_flight = u64::from(self.in_flight()) + 1;
        self.estimate_at(now)
            .saturating_add(1)
            .saturating_mul(in_flight)
    }

    /// The estimate decays toward zero while no sample arrives, so an endpoint that lost
    /// every comparison after one slow response is eventually tried again.
    fn estimate_at(&self, now: u64) -> u64 {
        let ewma = self.ewma_ns.load(Ordering::Relaxed);
        let updated = self.updated_ns.load(Ordering::Relaxed);
        decayed(ewma, now.saturating_sub(updated), self.decay_ns)
    }

    /// Peak EWMA: a sample above the estimate replaces it at once (react to slowness fast);
    /// one below pulls the estimate down with weight growing with the time since the last.
    pub(crate) fn record_at(&self, rtt: Duration, now: u64) {
        let sample = duration_ns(rtt);
        let prev = self.ewma_ns.load(Ordering::Relaxed);
        let last = self.updated_ns.swap(now, Ordering::Relaxed);
        let next = if sample >= prev {
            sample
        } else {
            let keep = (-(now.saturating_sub(last) as f64) / self.decay_ns).exp();
            (prev as f64 * keep + sample as f64 * (1.0 - keep)) as u64
        };
        // Concurrent samples may interleave between the two atomics; the estimate is a
        // heuristic and a lost update only shifts it by one sample.
        self.ewma_ns.store(next, Ordering::Relaxed);
    }
}

impl InFlight {
    /// The endpoint this request runs on.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// Ends the request and records its latency (time to response headers or connect) in
    /// the endpoint's estimate. Dropping without `finish` (for example on error) records
    /// nothing.
    pub fn finish(self, rtt: Duration) {
        self.endpoint.record_at(rtt, now_ns());
    }

    /// [`InFlight::finish`] with the caller's own reading of the clock at the end of the
    /// request (`at`), so a caller that already read it for its own stats reads it once.
    pub fn finish_at(self, rtt: Duration, at: Instant) {
        self.endpoint.record_at(rtt, ns_at(at));
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn decayed(ewma: u64, elapsed: u64, decay_ns: f64) -> u64 {
    if elapsed == 0 {
        return ewma;
    }
    (ewma as f64 * (-(elapsed as f64) / decay_ns).exp()) as u64
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Nanoseconds on a process-wide monotonic clock; fits one atomic word (584 years).
pub(crate) fn now_ns() -> u64 {
    ns_at(Instant::now())
}

/// `at` in nanoseconds on [`now_ns`]'s clock (0 for an instant before the clock's epoch).
fn ns_at(at: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    duration_ns(at.saturating_duration_since(*EPOCH.get_or_init(Instant::now)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep() -> Arc<Endpoint> {
        Arc::new(Endpoint::new("10.0.0.1:80".parse().unwrap()))
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn new_endpoint_starts_at_default_rtt() {
        let e = ep();
        let now = e.updated_ns.load(Ordering::Relaxed);
        assert_eq!(e.estimate_at(now), duration_ns(DEFAULT_RTT));
        assert_eq!(e.load_at(now), duration_ns(DEFAULT_RTT) + 1);
        assert!(e.is_available());
    }

    #[test]
    fn in_flight_guard_counts_and_releases() {
        let e = ep();
        let a = e.start();
        let b = e.start();
        assert_eq!(e.in_flight(), 2);
        let now = e.updated_ns.load(Ordering::Relaxed);
        assert_eq!(e.load_at(now), (duration_ns(DEFAULT_RTT) + 1) * 3);
        drop(a);
        b.finish(Duration::from_millis(3));
        assert_eq!(e.in_flight(), 0);
    }

    #[test]
    fn peak_replaces_and_lower_samples_decay() {
        let e = ep();
        let t0 = e.updated_ns.load(Ordering::Relaxed);
        e.record_at(Duration::from_millis(100), t0);
        assert_eq!(e.estimate_at(t0), 100 * MS);
        // One decay constant later a 0 ms sample keeps 1/e of the old estimate.
        let t1 = t0 + duration_ns(DEFAULT_DECAY);
        e.record_at(Duration::ZERO, t1);
        let est = e.estimate_at(t1);
        assert!((36 * MS..38 * MS).contains(&est), "{est}");
        // A quick follow-up sample barely moves it.
        e.record_at(Duration::from_millis(1), t1 + MS);
        let est = e.estimate_at(t1 + MS);
        assert!((36 * MS..38 * MS).contains(&est), "{est}");
    }

    #[test]
    fn estimate_decays_without_samples() {
        let e = ep();
        let t0 = e.updated_ns.load(Ordering::Relaxed);
        e.record_at(Duration::from_millis(500), t0);
        let later = e.estimate_at(t0 + 5 * duration_ns(DEFAULT_DECAY));
        assert!(later < 4 * MS, "{later}");
    }

    #[test]
    fn health_flag_drives_availability() {
        let e = ep();
        e.set_healthy(false);
        assert!(!e.is_available() && !e.is_healthy());
        e.set_healthy(true);
        assert!(e.is_available());
    }
}
