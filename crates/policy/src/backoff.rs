//! Fully jittered exponential back-off between retries.

use std::time::Duration;

/// First retry back-off bound (fully jittered, doubled per retry). Default is 25 ms.
pub const RETRY_BACKOFF_BASE: Duration = Duration::from_millis(25);
/// Largest retry back-off bound. Default is 250 ms.
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(250);

/// The upper bound of the back-off before retry `n` (1-based): `base × 2^(n-1)`, capped at
/// `max`.
pub fn backoff_cap(n: u32, base: Duration, max: Duration) -> Duration {
    base.saturating_mul(1u32 << n.saturating_sub(1).min(16))
        .min(max)
}

/// A uniformly random back-off in `[0, backoff_cap(n)]` with the default base and maximum.
/// Full jitter spreads retries of many clients failing together.
pub fn backoff(n: u32) -> Duration {
    let cap = backoff_cap(n, RETRY_BACKOFF_BASE, RETRY_BACKOFF_MAX);
    let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(0..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_doubles_then_saturates() {
        let ms = Duration::from_millis;
        let cap = |n| backoff_cap(n, RETRY_BACKOFF_BASE, RETRY_BACKOFF_MAX);
        assert_eq!(cap(1), ms(25));
        assert_eq!(cap(2), ms(50));
        assert_eq!(cap(3), ms(100));
        assert_eq!(cap(4), ms(200));
        assert_eq!(cap(5), ms(250));
        assert_eq!(cap(1000), ms(250));
    }

    #[test]
    fn jitter_stays_within_cap() {
        for n in 1..8 {
            for _ in 0..200 {
                assert!(backoff(n) <= backoff_cap(n, RETRY_BACKOFF_BASE, RETRY_BACKOFF_MAX));
            }
        }
    }
}
