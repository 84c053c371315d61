//! Active health checks of one endpoint (the target listener's `healthCheck`): HTTP GET over
//! HTTP/1.1 or h2c expecting 200, `grpc.health.v1.Health/Check` expecting SERVING, or a TCP
//! connect. Verdicts flip after the configured consecutive results.

use std::net::SocketAddr;
use std::sync::Weak;

use bytes::{Buf, Bytes};
use http::{Method, Request, StatusCode, Version, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use outrider_config::{HealthCheck, Protocol};
use outrider_policy::HealthTracker;

use crate::upstream::Upstream;

/// Path checked when an HTTP health check names none.
pub const DEFAULT_HEALTH_PATH: &str = "/";
/// The gRPC health method.
const GRPC_HEALTH_PATH: &str = "/grpc.health.v1.Health/Check";
/// `HealthCheckResponse.ServingStatus.SERVING`.
const GRPC_SERVING: u64 = 1;
/// An empty `HealthCheckRequest` (service ""), framed: no compression, length 0.
const GRPC_EMPTY_REQUEST: [u8; 5] = [0, 0, 0, 0, 0];

/// Checks `addr` every `hc.interval` (the first check at once) until the cluster is gone or
/// the task is aborted (the endpoint left the set).
pub(crate) async fn run(upstream: Weak<Upstream>, addr: SocketAddr, hc: HealthCheck) {
    let target = SocketAddr::new(addr.ip(), hc.port.unwrap_or(addr.port()));
    let mut tracker = HealthTracker::new(hc.healthy_threshold, hc.unhealthy_threshold);
    loop {
        let ok = matches!(
            tokio::time::timeout(hc.timeout, check(&hc, target)).await,
            Ok(true)
        );
        let Some(up) = upstream.upgrade() else {
            return;
        };
        up.extra.hc_attempt.increment(1);
        if ok {
            up.extra.hc_success.increment(1);
        } else {
            up.extra.hc_failure.increment(1);
        }
        if let Some(healthy) = tracker.observe(ok)
            && let Some(ep) = up.endpoint(addr)
        {
            tracing::info!(cluster = up.name(), %addr, healthy, "health check verdict changed");
            ep.set_healthy(healthy);
            up.refresh_membership();
        }
        drop(up);
        tokio::time::sleep(hc.interval).await;
    }
}

/// One check; true when healthy.
pub(crate) async fn check(hc: &HealthCheck, target: SocketAddr) -> bool {
    let Ok(stream) = tokio::net::TcpStream::connect(target).await else {
        return false;
    };
    let path = hc.path.as_deref().unwrap_or(DEFAULT_HEALTH_PATH);
    match hc.protocol {
        Protocol::Tcp => true,
        Protocol::Http => http1_check(stream, target, path).await,
        Protocol::Http2 => h2_check(stream, target, path).await,
        Protocol::Grpc => grpc_check(stream, target).await,
    }
}

async fn http1_check(stream: tokio::net::TcpStream, target: SocketAddr, path: &str) -> bool {
    let Ok((mut tx, conn)) = http1::handshake(TokioIo::new(stream)).await else {
        return false;
    };
    let conn = tokio::spawn(conn);
    let Ok(req) = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(header::HOST, target.to_string())
        .header("user-agent", "outrider-health-check")
        .body(Full::new(Bytes::new()))
    else {
        conn.abort();
        return false;
    };
    let ok = matches!(tx.send_request(req).await, Ok(r) if r.status() == StatusCode::OK);
    conn.abort();
    ok
}

async fn h2_check(stream: tokio::net::TcpStream, target: SocketAddr, path: &str) -> bool {
    let Ok((mut tx, conn)) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await
    else {
        return false;
    };
    let conn = tokio::spawn(conn);
    let Ok(req) = Request::builder()
        .method(Method::GET)
        .uri(format!("http://{target}{path}"))
        .version(Version::HTTP_2)
        .header("user-agent", "outrider-health-check")
        .body(Full::new(Bytes::new()))
    else {
        conn.abort();
        return false;
    };
    let ok = matches!(tx.send_request(req).await, Ok(r) if r.status() == StatusCode::OK);
    conn.abort();
    ok
}

async fn grpc_check(stream: tokio::net::TcpStream, target: SocketAddr) -> bool {
    let Ok((mut tx, conn)) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await
    else {
        return false;
    };
    let conn = tokio::spawn(conn);
    let ok = async {
        let req = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{target}{GRPC_HEALTH_PATH}"))
            .version(Version::HTTP_2)
            .header(header::CONTENT_TYPE, "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(&GRPC_EMPTY_REQUEST)))
            .ok()?;
        let resp = tx.send_request(req).await.ok()?;
        if resp.status() != StatusCode::OK {
            return None;
        }
        let (head, body) = resp.into_parts();
        let collected = body.collect().await.ok()?;
        let status = collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| head.headers.get("grpc-status"))?;
        if status.as_bytes() != b"0" {
            return None;
        }
        grpc_serving_status(collected.to_bytes()).map(|s| s == GRPC_SERVING)
    }
    .await
    .unwrap_or(false);
    conn.abort();
    ok
}

/// Field 1 (`status`) of a framed `HealthCheckResponse`; `None` when malformed. An absent
/// field is the proto3 default, UNKNOWN (0).
pub(crate) fn grpc_serving_status(mut framed: Bytes) -> Option<u64> {
    if framed.len() < 5 || framed[0] != 0 {
        return None;
    }
    framed.advance(1);
    let len = framed.get_u32() as usize;
    if framed.len() < len {
        return None;
    }
    let mut msg = framed.split_to(len);
    let mut status = 0;
    while msg.has_remaining() {
        let key = varint(&mut msg)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = varint(&mut msg)?,
            (_, 0) => {
                varint(&mut msg)?;
            }
            (_, 2) => {
                let n = usize::try_from(varint(&mut msg)?).ok()?;
                if msg.len() < n {
                    return None;
                }
                msg.advance(n);
            }
            _ => return None,
        }
    }
    Some(status)
}

fn varint(buf: &mut Bytes) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        if !buf.has_remaining() {
            return None;
        }
        let b = buf.get_u8();
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_serving_status() {
        let framed = |msg: &[u8]| {
            let mut v = vec![0, 0, 0, 0, msg.len() as u8];
            v.extend_from_slice(msg);
            Bytes::from(v)
        };
        assert_eq!(grpc_serving_status(framed(&[0x08, 0x01])), Some(1));
        assert_eq!(grpc_serving_status(framed(&[0x08, 0x02])), Some(2));
        assert_eq!(grpc_serving_status(framed(&[])), Some(0));
        // An unknown length-delimited field is skipped.
        assert_eq!(
            grpc_serving_status(framed(&[0x12, 0x01, 0x41, 0x08, 0x01])),
            Some(1)
        );
        assert_eq!(grpc_serving_status(framed(&[0x08])), None);
        assert_eq!(
            grpc_serving_status(Bytes::from_static(&[1, 0, 0, 0, 0])),
            None
        );
        assert_eq!(
            grpc_serving_status(Bytes::from_static(&[0, 0, 0, 0, 9, 8])),
            None
        );
    }
}

#[cfg(test)]
mod live_tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use outrider_balance::Algorithm;
    use outrider_test_support::faults::{FaultServer, refusing_addr};

    use super::*;
    use crate::upstream::UpstreamPolicy;

    fn hc(protocol: Protocol) -> HealthCheck {
        HealthCheck {
            protocol,
            port: None,
            path: Some("/health".into()),
            interval: Duration::from_millis(20),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
        }
    }

    #[tokio::test]
    async fn each_protocol_checks_health() {
        let s = FaultServer::start("hc").await.unwrap();
        for p in [
            Protocol::Http,
            Protocol::Http2,
            Protocol::Grpc,
            Protocol::Tcp,
        ] {
            assert!(check(&hc(p), s.addr()).await, "{p:?}");
        }
        s.faults().unhealthy.store(true, Ordering::SeqCst);
        for p in [Protocol::Http, Protocol::Http2, Protocol::Grpc] {
            assert!(!check(&hc(p), s.addr()).await, "{p:?}");
        }
        let dead = refusing_addr().await.unwrap();
        assert!(!check(&hc(Protocol::Tcp), dead).await);
    }

    async fn until(mut f: impl FnMut() -> bool) {
        for _ in 0..200 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition not reached in 2 s");
    }

    #[tokio::test]
    async fn checker_follows_endpoint_and_flips_verdict() {
        let s = FaultServer::start("hc").await.unwrap();
        let policy = UpstreamPolicy {
            health_check: Some(hc(Protocol::Http)),
            ..UpstreamPolicy::default()
        };
        let up = Arc::new(Upstream::with_policy(
            "cds_hc_test",
            Protocol::Http,
            Algorithm::RoundRobin,
            Duration::from_secs(1),
            policy,
        ));
        up.set_endpoints(&[s.addr()]);
        until(|| s.hits() >= 2).await;
        assert!(!up.endpoint_report()[0].failed_active_hc);
        s.faults().unhealthy.store(true, Ordering::SeqCst);
        until(|| up.endpoint_report()[0].failed_active_hc).await;
        s.faults().unhealthy.store(false, Ordering::SeqCst);
        until(|| !up.endpoint_report()[0].failed_active_hc).await;
        // The endpoint leaves: its checker stops.
        up.set_endpoints(&[]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let hits = s.hits();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(s.hits(), hits);
    }
}
