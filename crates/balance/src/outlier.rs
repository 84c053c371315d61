//! Passive health: eject an endpoint that returned `max_errors` server errors (or connect
//! failures) within one interval, for `base × ejection count`, never ejecting more than a share
//! of the cluster. Pure logic: the caller passes the clock and runs [`OutlierDetector::sweep`]
//! once per interval.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::endpoint::Endpoint;

/// Longest single ejection, whatever the multiplier (Envoy's `max_ejection_time`). Default is
/// 300 s.
pub const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

/// App Mesh's `outlierDetection`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Errors within one interval that eject an endpoint (`maxServerErrors`).
    pub max_errors: u32,
    /// Counting window and sweep period (`interval`).
    pub interval: Duration,
    /// Ejection time for the first ejection (`baseEjectionDuration`).
    pub base_ejection: Duration,
    /// Most of the cluster's endpoints ejected at once, in percent (`maxEjectionPercent`).
    pub max_ejection_percent: u32,
}

/// The detector of one cluster. Its state lives in the endpoints; this holds the settings and
/// the clock origin.
#[derive(Debug)]
pub struct OutlierDetector {
    config: OutlierConfig,
    epoch: Instant,
}

impl OutlierDetector {
    /// A detector whose clock starts at `epoch` (pass the current time).
    pub fn new(config: OutlierConfig, epoch: Instant) -> Self {
        OutlierDetector { config, epoch }
    }

    /// The settings.
    pub fn config(&self) -> OutlierConfig {
        self.config
    }

    fn ns(&self, now: Instant) -> u64 {
        // Shifted by one so no instant maps to 0, which means "not ejected".
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    /// Records a server error or connect failure on `ep`, a member of `set`. Returns true when
    /// this error ejected the endpoint.
    pub fn record_error(&self, ep: &Endpoint, set: &[Arc<Endpoint>], now: Instant) -> bool {
        let errors = ep.outlier.errors.fetch_add(1, Ordering::Relaxed) + 1;
        if errors < self.config.max_errors.max(1) || ep.is_ejected() {
            return false;
        }
        let ejected = set.iter().filter(|e| e.is_ejected()).count() as u64;
        let total = set.len().max(1) as u64;
        if ejected * 100 >= u64::from(self.config.max_ejection_percent) * total {
            return false;
        }
        let count = ep.outlier.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let time = self
            .config
            .base_ejection
            .saturating_mul(count)
            .min(MAX_EJECTION_TIME.max(self.config.base_ejection));
        let until = self
            .ns(now)
            .saturating_add(u64::try_from(time.as_nanos()).unwrap_or(u64::MAX));
        // Only one concurrent error wins the ejection.
        ep.outlier
            .ejected_until
            .compare_exchange(0, until, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Ends the current interval: error counts restart, endpoints whose ejection is over come
    /// back, and an endpoint that stayed clean for a whole interval earns one ejection off its
    /// multiplier. Returns how many endpoints came back.
    pub fn sweep(&self, set: &[Arc<Endpoint>], now: Instant) -> usize {
        let now = self.ns(now);
        let mut restored = 0;
        for ep in set {
            let errors = ep.outlier.errors.swap(0, Ordering::Relaxed);
            let until = ep.outlier.ejected_until.load(Ordering::Relaxed);
            if until != 0 {
                if now >= until {
                    ep.outlier.ejected_until.store(0, Ordering::Relaxed);
                    restored += 1;
                }
            } else if errors == 0 {
                let _ =
                    ep.outlier
                        .ejections
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            }
        }
        restored
    }

    /// Endpoints of `set` ejected right now.
    pub fn active(set: &[Arc<Endpoint>]) -> usize {
        set.iter().filter(|e| e.is_ejected()).count()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::{Algorithm, Balancer};

    const S: Duration = Duration::from_secs(1);

    fn cfg(percent: u32) -> OutlierConfig {
        OutlierConfig {
            max_errors: 3,
            interval: 10 * S,
            base_ejection: 30 * S,
            max_ejection_percent: percent,
        }
    }

    fn set(n: u16) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| Arc::new(Endpoint::new(SocketAddr::from(([10, 0, 0, 1], 80 + i)))))
            .collect()
    }

    #[test]
    fn ejects_after_max_errors_in_one_interval() {
        let t0 = Instant::now();
        let d = OutlierDetector::new(cfg(100), t0);
        let eps = set(2);
        assert!(!d.record_error(&eps[0], &eps, t0));
        assert!(!d.record_error(&eps[0], &eps, t0));
        assert!(d.record_error(&eps[0], &eps, t0));
        assert!(eps[0].is_ejected() && !eps[0].is_available());
        assert_eq!(OutlierDetector::active(&eps), 1);
    }

    #[test]
    fn errors_spread_over_intervals_do_not_eject() {
        let t0 = Instant::now();
        let d = OutlierDetector::new(cfg(100), t0);
        let eps = set(2);
        for k in 0..5u32 {
            let now = t0 + 10 * S * k;
            d.record_error(&eps[0], &eps, now);
            d.record_error(&eps[0], &eps, now);
            d.sweep(&eps, now + 10 * S);
        }
        assert!(!eps[0].is_ejected());
    }

    #[test]
    fn comes_back_after_base_times_count() {
        let t0 = Instant::now();
        let d = OutlierDetector::new(cfg(100), t0);
        let eps = set(2);
        let eject = |now| (0..3).any(|_| d.record_error(&eps[0], &eps, now));
        assert!(eject(t0));
        assert_eq!(d.sweep(&eps, t0 + 20 * S), 0);
        assert_eq!(d.sweep(&eps, t0 + 30 * S), 1);
        assert!(eps[0].is_available());
        // Second ejection lasts twice as long.
        let t1 = t0 + 40 * S;
        assert!(eject(t1));
        assert_eq!(d.sweep(&eps, t1 + 50 * S), 0);
        assert_eq!(d.sweep(&eps, t1 + 60 * S), 1);
    }

    #[test]
    fn max_ejection_percent_caps_ejections() {
        let t0 = Instant::now();
        let d = OutlierDetector::new(cfg(50), t0);
        let eps = set(4);
        for ep in &eps {
            for _ in 0..3 {
                d.record_error(ep, &eps, t0);
            }
        }
        assert_eq!(OutlierDetector::active(&eps), 2);
        let none = OutlierDetector::new(cfg(0), t0);
        let eps = set(2);
        for _ in 0..5 {
            none.record_error(&eps[0], &eps, t0);
        }
        assert_eq!(OutlierDetector::active(&eps), 0);
    }

    #[test]
    fn balancer_skips_ejected_until_all_are_out() {
        let t0 = Instant::now();
        let d = OutlierDetector::new(cfg(100), t0);
        let b = Balancer::new(Algorithm::RoundRobin);
        let addrs: Vec<SocketAddr> = (0..2)
            .map(|i| SocketAddr::from(([10, 0, 0, 2], 80 + i)))
            .collect();
        b.update(&addrs);
        let eps = b.endpoints();
        for _ in 0..3 {
            d.record_error(&eps[0], &eps, t0);
        }
        for _ in 0..10 {
            assert_eq!(b.pick().unwrap().addr(), addrs[1]);
        }
        for _ in 0..3 {
            d.record_error(&eps[1], &eps, t0);
        }
        // Every endpoint ejected: panic mode spreads over all of them.
        assert!(b.pick().is_some());
    }
}
