//! The admin surface is safe by default: loopback only, mutations by POST only, and the
//! metrics-only listener serves nothing but `/ready` and `/stats/prometheus`.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::net::SocketAddr;
use std::time::Duration;

use outrider_app::ProxyOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn status(addr: SocketAddr, method: &str, path: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn admin_defaults_to_loopback() {
    let addr: SocketAddr = outrider_app::DEFAULT_ADMIN_ADDR.parse().unwrap();
    assert!(addr.ip().is_loopback(), "{addr}");
    assert_eq!(addr.port(), 9901);
}

#[tokio::test]
async fn mutations_need_post_and_metrics_listener_is_read_only() {
    let mut opts = ProxyOptions::local(None);
    opts.metrics_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let proxy = outrider_app::start(opts).await.unwrap();
    let admin = proxy.addrs().admin.unwrap();
    let metrics = proxy.addrs().metrics.unwrap();

    for path in [
        "/quitquitquit",
        "/drain_listeners",
        "/logging?level=debug",
        "/reload",
    ] {
        assert_eq!(status(admin, "GET", path).await, 405, "GET {path}");
    }
    assert_eq!(status(admin, "POST", "/ready").await, 405);
    // Still serving after the refused mutations.
    assert_eq!(status(admin, "GET", "/ready").await, 200);
    assert_eq!(status(admin, "POST", "/logging?level=debug").await, 200);
    assert_eq!(status(admin, "POST", "/logging?level=nonsense").await, 400);

    assert_eq!(status(metrics, "GET", "/ready").await, 200);
    assert_eq!(status(metrics, "GET", "/stats/prometheus").await, 200);
    for path in ["/config_dump", "/clusters", "/server_info", "/stats"] {
        assert_eq!(
            status(metrics, "GET", path).await,
            404,
            "metrics listener served {path}"
        );
    }
    assert_eq!(status(metrics, "POST", "/quitquitquit").await, 404);
    assert_eq!(
        status(admin, "GET", "/ready").await,
        200,
        "the metrics listener must not quit the proxy"
    );
    proxy.shutdown(Duration::from_secs(1)).await;
}
