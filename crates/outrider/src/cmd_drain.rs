//! `outrider drain`: asks the local proxy to start draining (`POST /drain_listeners`), for a
//! Kubernetes `preStop` hook in an image without curl.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

/// How long the admin call may take. Default is 2 s.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Args, Debug)]
pub struct DrainArgs {
    /// The admin address of the proxy to drain.
    #[arg(long, default_value = outrider_app::DEFAULT_ADMIN_ADDR)]
    pub admin_addr: SocketAddr,
    /// Seconds to stay after asking, so that `preStop` holds the pod while in-flight requests
    /// finish before the kubelet sends SIGTERM. Default is 0.
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    pub wait: u64,
}

fn post_drain(addr: SocketAddr) -> Result<u16, String> {
    let mut stream = TcpStream::connect_timeout(&addr, CALL_TIMEOUT)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(CALL_TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(CALL_TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(
            b"POST /drain_listeners HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .map_err(|e| format!("write: {e}"))?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).map_err(|e| format!("read: {e}"))?;
    String::from_utf8_lossy(&head[..n])
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| "not an HTTP answer".to_string())
}

pub fn run(args: DrainArgs) -> ExitCode {
    let code = match post_drain(args.admin_addr) {
        Ok(200) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("outrider refused to drain ({status})");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("outrider is not reachable: {e}");
            ExitCode::from(1)
        }
    };
    std::thread::sleep(Duration::from_secs(args.wait));
    code
}
