//! Envoy's `retry_budget`: retries in flight may not exceed a share of the requests in flight,
//! with a floor, so a failing upstream cannot turn every request into `1 + maxRetries` attempts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// Share of the requests in flight that may be retries. Default is 20 %.
pub const DEFAULT_BUDGET_PERCENT: f64 = 20.0;
/// Retries always allowed in flight, whatever the share. Default is 3.
pub const DEFAULT_MIN_RETRY_CONCURRENCY: u32 = 3;

/// Retry budget settings of one cluster.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetConfig {
    /// Percent of requests in flight that may be retries. Default is [`DEFAULT_BUDGET_PERCENT`].
    pub percent: f64,
    /// Floor of concurrent retries. Default is [`DEFAULT_MIN_RETRY_CONCURRENCY`].
    pub min_retry_concurrency: u32,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig {
            percent: DEFAULT_BUDGET_PERCENT,
            min_retry_concurrency: DEFAULT_MIN_RETRY_CONCURRENCY,
        }
    }
}

#[derive(Debug)]
struct Counts {
    requests: AtomicU32,
    retries: AtomicU32,
}

/// The budget of one cluster: two atomic counters, no lock.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    config: RetryBudgetConfig,
    counts: Arc<Counts>,
}

/// A request in flight toward the cluster; counts until dropped.
#[derive(Debug)]
#[must_use = "the request stops counting when dropped"]
pub struct InFlightRequest {
    counts: Arc<Counts>,
}

/// A retry in flight; counts against the budget until dropped.
#[derive(Debug)]
#[must_use = "the retry stops counting when dropped"]
pub struct InFlightRetry {
    counts: Arc<Counts>,
}

impl RetryBudget {
    /// A budget with nothing in flight.
    pub fn new(config: RetryBudgetConfig) -> Self {
        RetryBudget {
            config,
            counts: Arc::new(Counts {
                requests: AtomicU32::new(0),
                retries: AtomicU32::new(0),
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> RetryBudgetConfig {
        self.config
    }

    /// Counts one downstream request (all its attempts) as in flight.
    pub fn start_request(&self) -> InFlightRequest {
        self.counts.requests.fetch_add(1, Ordering::Relaxed);
        InFlightRequest {
            counts: self.counts.clone(),
        }
    }

    /// How many retries may be in flight right now.
    pub fn limit(&self) -> u32 {
        let requests = self.counts.requests.load(Ordering::Relaxed);
        let share = (f64::from(requests) * self.config.percent / 100.0) as u32;
        share.max(self.config.min_retry_concurrency)
    }

    /// Takes a retry slot, or `None` when the budget is spent (Envoy's `upstream_rq_retry_overflow`).
    pub fn try_retry(&self) -> Option<InFlightRetry> {
        let limit = self.limit();
        let taken = self
            .counts
            .retries
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            });
        taken.ok().map(|_| InFlightRetry {
            counts: self.counts.clone(),
        })
    }

    /// Requests in flight.
    pub fn requests(&self) -> u32 {
        self.counts.requests.load(Ordering::Relaxed)
    }

    /// Retries in flight.
    pub fn retries(&self) -> u32 {
        self.counts.retries.load(Ordering::Relaxed)
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget::new(RetryBudgetConfig::default())
    }
}

impl Drop for InFlightRequest {
    fn drop(&mut self) {
        self.counts.requests.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for InFlightRetry {
    fn drop(&mut self) {
        self.counts.retries.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_allows_three_retries_with_few_requests() {
        let b = RetryBudget::default();
        let _r = b.start_request();
        let held: Vec<_> = (0..3).map(|_| b.try_retry().unwrap()).collect();
        assert!(b.try_retry().is_none());
        drop(held);
        assert_eq!(b.retries(), 0);
        assert!(b.try_retry().is_some());
    }

    #[test]
    fn share_of_requests_in_flight() {
        let b = RetryBudget::default();
        let reqs: Vec<_> = (0..100).map(|_| b.start_request()).collect();
        assert_eq!(b.limit(), 20);
        let held: Vec<_> = (0..20).map(|_| b.try_retry().unwrap()).collect();
        assert!(b.try_retry().is_none());
        drop(reqs);
        assert_eq!(b.limit(), 3);
        drop(held);
        assert_eq!(b.requests(), 0);
    }

    #[test]
    fn tunable_percent() {
        let b = RetryBudget::new(RetryBudgetConfig {
            percent: 50.0,
            min_retry_concurrency: 0,
        });
        assert!(b.try_retry().is_none());
        let _reqs: Vec<_> = (0..10).map(|_| b.start_request()).collect();
        assert_eq!(b.limit(), 5);
    }
}
