//! The L4 floor for the load harness: accept, connect to one upstream, copy both ways.
//!
//! Usage: `splice LISTEN_ADDR UPSTREAM_ADDR`. One current-thread runtime, no parsing, no
//! buffering beyond tokio's copy buffers, so any proxy is measured against the cheapest
//! possible tokio relay on the same core.

use std::net::SocketAddr;
use std::process::ExitCode;

use tokio::net::{TcpListener, TcpStream};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: splice LISTEN_ADDR UPSTREAM_ADDR");
        return ExitCode::from(2);
    };
    let (listen, upstream): (SocketAddr, SocketAddr) = match (listen.parse(), upstream.parse()) {
        (Ok(l), Ok(u)) => (l, u),
        _ => {
            eprintln!("splice: both arguments must be IP:PORT");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("splice: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(serve(listen, upstream))
}

async fn serve(listen: SocketAddr, upstream: SocketAddr) -> ExitCode {
    let listener = match TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("splice: cannot listen on {listen}: {e}");
            return ExitCode::from(1);
        }
    };
    loop {
        let Ok((mut down, _)) = listener.accept().await else {
            // EMFILE and the like: the harness notices the missing replies; keep accepting.
            tokio::task::yield_now().await;
            continue;
        };
        tokio::spawn(async move {
            let Ok(mut up) = TcpStream::connect(upstream).await else {
                return;
            };
            // Request/response traffic: Nagle would add up to 40 ms per small write.
            let _ = down.set_nodelay(true);
            let _ = up.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
        });
    }
}
