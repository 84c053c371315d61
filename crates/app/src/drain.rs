//! Graceful drain: one gate per listener (stop accepting, then close connections gracefully)
//! and the SIGTERM sequence — ingress closes at once, egress stays open for the app's own calls
//! until the drain wait passes or the proxy has been quiet for a while.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long the proxy must have had no connection at all before a drain ends early.
/// Default is 1 s.
pub const DEFAULT_DRAIN_QUIET: Duration = Duration::from_secs(1);
/// After the egress listener closes, how long connections still get to finish when the drain
/// wait is already over (time for GOAWAY and `Connection: close` to reach clients). Default is 1 s.
pub const DRAIN_FINAL_GRACE: Duration = Duration::from_secs(1);
/// How often the drain looks at the connection counts. Default is 50 ms.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// One listener's stop switch and its connections.
#[derive(Clone, Default)]
pub(crate) struct Gate {
    /// Fired: the accept loop returns (closing the socket) and every connection shuts down
    /// gracefully (hyper sends GOAWAY or `Connection: close`).
    pub(crate) stop: CancellationToken,
    /// Every connection accepted on this listener.
    pub(crate) conns: TaskTracker,
}

impl Gate {
    /// Stops the listener and waits up to `grace` for its connections.
    pub(crate) async fn close(&self, grace: Duration) {
        self.stop.cancel();
        self.conns.close();
        let _ = tokio::time::timeout(grace, self.conns.wait()).await;
    }
}

/// The SIGTERM sequence. Ingress stops accepting at once and its connections close gracefully;
/// egress stays open until `wait` has passed or no connection has been open for `quiet`; then
/// egress closes too and connections get what is left of `wait` (at least
/// [`DRAIN_FINAL_GRACE`]) to finish.
pub(crate) async fn drain(ingress: &Gate, egress: &Gate, wait: Duration, quiet: Duration) {
    let deadline = Instant::now() + wait;
    ingress.stop.cancel();
    let mut quiet_since: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if ingress.conns.is_empty() && egress.conns.is_empty() {
            let since = *quiet_since.get_or_insert(now);
            if now.duration_since(since) >= quiet {
                break;
            }
        } else {
            quiet_since = None;
        }
        tokio::time::sleep(DRAIN_POLL.min(deadline - now)).await;
    }
    egress.stop.cancel();
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(DRAIN_FINAL_GRACE);
    ingress.conns.close();
    egress.conns.close();
    let _ = tokio::time::timeout(left, async {
        ingress.conns.wait().await;
        egress.conns.wait().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(20);

    #[tokio::test(start_paused = true)]
    async fn quiet_proxy_drains_after_the_quiet_period() {
        let (i, e) = (Gate::default(), Gate::default());
        let start = Instant::now();
        drain(&i, &e, WAIT, DEFAULT_DRAIN_QUIET).await;
        let took = start.elapsed();
        assert!(
            took >= DEFAULT_DRAIN_QUIET && took < DEFAULT_DRAIN_QUIET * 2,
            "{took:?}"
        );
        assert!(i.stop.is_cancelled() && e.stop.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn egress_stays_open_while_the_app_calls_out() {
        let (i, e) = (Gate::default(), Gate::default());
        let call = Duration::from_secs(3);
        e.conns.spawn(tokio::time::sleep(call));
        let egress = e.clone();
        let watcher = tokio::spawn(async move {
            tokio::time::sleep(call / 2).await;
            // Half-way through the app's call: ingress is closed, egress is not.
            !egress.stop.is_cancelled()
        });
        let start = Instant::now();
        drain(&i, &e, WAIT, DEFAULT_DRAIN_QUIET).await;
        let took = start.elapsed();
        assert!(i.stop.is_cancelled());
        assert!(
            watcher.await.unwrap(),
            "egress closed during the app's call"
        );
        assert!(took >= call + DEFAULT_DRAIN_QUIET, "{took:?}");
        assert!(took < call + DEFAULT_DRAIN_QUIET * 2, "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_never_ends_is_bounded_by_the_wait() {
        let (i, e) = (Gate::default(), Gate::default());
        e.conns.spawn(std::future::pending::<()>());
        let start = Instant::now();
        drain(&i, &e, WAIT, DEFAULT_DRAIN_QUIET).await;
        let took = start.elapsed();
        assert!(
            took >= WAIT && took <= WAIT + DRAIN_FINAL_GRACE * 2,
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_ingress_finishes_before_exit() {
        let (i, e) = (Gate::default(), Gate::default());
        let stop = i.stop.clone();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = done.clone();
        i.conns.spawn(async move {
            stop.cancelled().await;
            // The graceful shutdown of a connection lets its request finish.
            tokio::time::sleep(Duration::from_secs(2)).await;
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        drain(&i, &e, WAIT, DEFAULT_DRAIN_QUIET).await;
        assert!(done.load(std::sync::atomic::Ordering::SeqCst));
    }
}
