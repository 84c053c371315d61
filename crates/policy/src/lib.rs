//! Pure resilience logic the proxy applies per cluster: retry budget, back-off, concurrency
//! limits (circuit breaking), health-check thresholds and `grpc-timeout` parsing.

mod backoff;
mod budget;
mod grpc;
mod health;
mod limiter;

pub use backoff::{RETRY_BACKOFF_BASE, RETRY_BACKOFF_MAX, backoff, backoff_cap};
pub use budget::{
    DEFAULT_BUDGET_PERCENT, DEFAULT_MIN_RETRY_CONCURRENCY, InFlightRequest, InFlightRetry,
    RetryBudget, RetryBudgetConfig,
};
pub use grpc::parse_grpc_timeout;
pub use health::HealthTracker;
pub use limiter::{Limiter, LimiterConfig, Overflow, Permit};
