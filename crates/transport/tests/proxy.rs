//! End-to-end L4 proxying over real loopback sockets.
#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns, unwrap here

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use outrider_transport::{DEFAULT_CONNECT_TIMEOUT, bind, connect, is_idle_timeout, proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;

const BOUND: Duration = Duration::from_secs(5);

/// Starts an upstream that runs `serve` on each accepted connection.
async fn upstream<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    addr
}

/// Connects a client through one proxied connection to `upstream`.
async fn through_proxy(
    upstream: SocketAddr,
    idle: Option<Duration>,
) -> (TcpStream, JoinHandle<io::Result<(u64, u64)>>) {
    let front = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let client = TcpStream::connect(front.local_addr().unwrap())
        .await
        .unwrap();
    let (accepted, _) = front.accept().await.unwrap();
    let back = connect(upstream, DEFAULT_CONNECT_TIMEOUT).await.unwrap();
    (client, tokio::spawn(proxy(accepted, back, idle)))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_megabytes_both_ways() {
    let echo = upstream(|mut s| async move {
        let (mut r, mut w) = s.split();
        tokio::io::copy(&mut r, &mut w).await.unwrap();
        w.shutdown().await.unwrap();
    })
    .await;
    let (client, task) = through_proxy(echo, None).await;
    let payload = pattern(8 << 20, 3);
    let (mut r, mut w) = client.into_split();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::with_capacity(payload.len());
    timeout(BOUND, r.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    assert!(got == payload, "echoed bytes differ");
    let counts = timeout(BOUND, task).await.unwrap().unwrap().unwrap();
    assert_eq!(counts, (8 << 20, 8 << 20));
}

#[tokio::test]
async fn half_close_keeps_response_direction_open() {
    // The upstream answers only after the request is complete (EOF), like a batch service.
    let server = upstream(|mut s| async move {
        let mut request = Vec::new();
        s.read_to_end(&mut request).await.unwrap();
        let reply = pattern(300_000, request.len() as u8);
        s.write_all(&reply).await.unwrap();
    })
    .await;
    let (mut client, task) = through_proxy(server, None).await;
    client.write_all(b"seven!!").await.unwrap();
    client.shutdown().await.unwrap();
    let mut reply = Vec::new();
    timeout(BOUND, client.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert!(reply == pattern(300_000, 7));
    let counts = timeout(BOUND, task).await.unwrap().unwrap().unwrap();
    assert_eq!(counts, (7, 300_000));
}

#[tokio::test]
async fn idle_connection_is_closed() {
    let silent = upstream(|mut s| async move {
        let mut buf = [0u8; 16];
        while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    let (mut client, task) = through_proxy(silent, Some(Duration::from_millis(200))).await;
    let started = tokio::time::Instant::now();
    client.write_all(b"x").await.unwrap();
    let err = timeout(BOUND, task).await.unwrap().unwrap().unwrap_err();
    assert!(is_idle_timeout(&err), "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(200));
    let mut buf = [0u8; 1];
    let n = timeout(BOUND, client.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "idle close is a clean FIN");
}

#[tokio::test]
async fn traffic_postpones_idle_timeout() {
    let echo = upstream(|mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await;
    let (mut client, task) = through_proxy(echo, Some(Duration::from_millis(200))).await;
    let started = tokio::time::Instant::now();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(80)).await;
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        client.read_exact(&mut buf).await.unwrap();
    }
    let err = timeout(BOUND, task).await.unwrap().unwrap().unwrap_err();
    assert!(is_idle_timeout(&err));
    assert!(started.elapsed() >= Duration::from_millis(600));
}

#[tokio::test]
async fn upstream_reset_resets_client() {
    let resetting = upstream(|mut s| async move {
        let mut buf = [0u8; 4];
        let _ = s.read_exact(&mut buf).await;
        s.set_zero_linger().unwrap();
        drop(s);
    })
    .await;
    let (mut client, task) = through_proxy(resetting, None).await;
    client.write_all(b"boom").await.unwrap();
    let err = timeout(BOUND, task).await.unwrap().unwrap().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err:?}");
    let mut buf = [0u8; 1];
    let read = timeout(BOUND, client.read(&mut buf)).await.unwrap();
    assert_eq!(
        read.unwrap_err().kind(),
        io::ErrorKind::ConnectionReset,
        "client sees the reset"
    );
}

#[tokio::test]
async fn client_reset_resets_upstream() {
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
    let seen_tx = std::sync::Mutex::new(Some(seen_tx));
    let server = upstream(move |mut s| {
        let tx = seen_tx.lock().unwrap().take();
        async move {
            let mut buf = [0u8; 16];
            let result = loop {
                match s.read(&mut buf).await {
                    Ok(0) => break Ok(0),
                    Ok(_) => continue,
                    Err(e) => break Err(e.kind()),
                }
            };
            if let Some(tx) = tx {
                let _ = tx.send(result);
            }
        }
    })
    .await;
    let (mut client, task) = through_proxy(server, None).await;
    client.write_all(b"hello").await.unwrap();
    client.set_zero_linger().unwrap();
    drop(client);
    let err = timeout(BOUND, task).await.unwrap().unwrap().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err:?}");
    let seen = timeout(BOUND, seen_rx).await.unwrap().unwrap();
    assert_eq!(seen, Err(io::ErrorKind::ConnectionReset));
}
