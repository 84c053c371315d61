//! Circuit breaking: a bound on concurrent use of a cluster, with a bounded wait queue. Overflow
//! fails fast instead of queueing without limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Limits of one cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LimiterConfig {
    /// Concurrent uses (HTTP/1 connections in use, HTTP/2 requests, TCP connections).
    pub max_concurrent: u32,
    /// Requests allowed to wait for a free slot; 0 fails at once. Default is 0.
    pub max_pending: u32,
}

/// Why [`Limiter::acquire`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Every slot is taken and the wait queue is full (or not allowed).
    Pending,
}

/// A concurrency limit with a bounded queue.
#[derive(Debug)]
pub struct Limiter {
    config: LimiterConfig,
    slots: Arc<Semaphore>,
    pending: AtomicU32,
}

/// A slot of a [`Limiter`], released when dropped.
#[derive(Debug)]
pub struct Permit {
    _inner: OwnedSemaphorePermit,
}

impl Limiter {
    /// A limiter with every slot free.
    pub fn new(config: LimiterConfig) -> Self {
        Limiter {
            config,
            slots: Arc::new(Semaphore::new(config.max_concurrent as usize)),
            pending: AtomicU32::new(0),
        }
    }

    /// The settings.
    pub fn config(&self) -> LimiterConfig {
        self.config
    }

    /// Takes a slot at once, or waits in the queue while it has room; fails fast otherwise.
    /// The caller bounds the wait (the request's deadline) by dropping the future.
    pub async fn acquire(&self) -> Result<Permit, Overflow> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(Permit { _inner: p });
        }
        let max = self.config.max_pending;
        if self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            return Err(Overflow::Pending);
        }
        let _waiting = PendingGuard(&self.pending);
        match self.slots.clone().acquire_owned().await {
            Ok(p) => Ok(Permit { _inner: p }),
            // The semaphore is never closed; treat it as overflow rather than panic.
            Err(_) => Err(Overflow::Pending),
        }
    }

    /// Takes a slot only if one is free now.
    pub fn try_acquire(&self) -> Result<Permit, Overflow> {
        self.slots
            .clone()
            .try_acquire_owned()
            .map(|p| Permit { _inner: p })
            .map_err(|_| Overflow::Pending)
    }

    /// Slots in use.
    pub fn in_use(&self) -> u32 {
        self.config.max_concurrent - self.slots.available_permits() as u32
    }

    /// Requests waiting for a slot.
    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Relaxed)
    }
}

struct PendingGuard<'a>(&'a AtomicU32);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn overflow_is_immediate_without_queue() {
        let l = Limiter::new(LimiterConfig {
            max_concurrent: 2,
            max_pending: 0,
        });
        let a = l.acquire().await.unwrap();
        let _b = l.acquire().await.unwrap();
        assert_eq!(l.acquire().await.unwrap_err(), Overflow::Pending);
        drop(a);
        assert!(l.try_acquire().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn queue_is_bounded_and_served_in_turn() {
        let l = Arc::new(Limiter::new(LimiterConfig {
            max_concurrent: 1,
            max_pending: 1,
        }));
        let held = l.acquire().await.unwrap();
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move { l.acquire().await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(l.pending(), 1);
        assert_eq!(l.acquire().await.unwrap_err(), Overflow::Pending);
        drop(held);
        assert!(waiter.await.unwrap().is_ok());
        assert_eq!(l.pending(), 0);
        assert_eq!(l.in_use(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_wait_frees_its_queue_place() {
        let l = Limiter::new(LimiterConfig {
            max_concurrent: 1,
            max_pending: 1,
        });
        let _held = l.acquire().await.unwrap();
        let r = tokio::time::timeout(Duration::from_millis(10), l.acquire()).await;
        assert!(r.is_err());
        assert_eq!(l.pending(), 0);
    }
}
