//! The accept loop: HTTP/1.1 and h2c on one port, with a bounded graceful drain.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::UpstreamConfig;
use crate::service::Prepared;

/// How long in-flight connections get to finish after shutdown is requested; the rest are
/// aborted. Default is 5 s.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause after an accept error such as EMFILE, so a full fd table does not spin the loop.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Serves the built-in upstream on `listener` until `shutdown` is cancelled, then stops
/// accepting and lets in-flight connections finish for up to [`DRAIN_TIMEOUT`].
///
/// Accepts HTTP/1.1 and h2c with prior knowledge on the same port. Every response carries
/// `x-upstream: <name>`. After the configured latency, a request gets an injected failure with
/// probability `fail_rate`; otherwise:
/// - `content-type: application/grpc*`: the request's messages are echoed back with
///   `grpc-status: 0` trailers (an injected failure is a trailers-only `grpc-status: 14`);
/// - `POST /echo`, or any request with `x-echo: 1`: the body is streamed back;
/// - anything else: the request body is read and discarded, and the answer is 200 with the
///   configured body.
///
/// Returns `InvalidInput` at once if `cfg` does not [validate](UpstreamConfig::validate);
/// accept errors are logged and retried, never returned.
pub async fn serve(
    listener: TcpListener,
    cfg: Arc<UpstreamConfig>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let prepared =
        Arc::new(Prepared::new(&cfg).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?);
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Latency benchmarks must not wait on Nagle.
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(%peer, error = %e, "set TCP_NODELAY failed");
                    }
                    let prepared = Arc::clone(&prepared);
                    let service = service_fn(move |req| {
                        let prepared = Arc::clone(&prepared);
                        async move { prepared.handle(req).await }
                    });
                    let conn = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .into_owned();
                    let conn = graceful.watch(conn);
                    connections.spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(%peer, error = %e, "upstream connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "upstream accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = connections.len(),
            "upstream drain timed out; aborting connections"
        );
    }
    connections.shutdown().await;
    Ok(())
}

/// Validates `cfg`, binds `addr` and runs [`serve`] on it. A bind failure (a port in use, say)
/// is returned as is.
pub async fn bind_and_serve(
    addr: SocketAddr,
    cfg: Arc<UpstreamConfig>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    cfg.validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let listener = TcpListener::bind(addr).await?;
    serve(listener, cfg, shutdown).await
}
