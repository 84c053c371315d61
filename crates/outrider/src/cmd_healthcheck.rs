//! `outrider healthcheck`: exit 0 when the local proxy answers `/ready` with 200, for container
//! health checks in images without curl.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

/// How long the probe may take in all. Default is 2 s (ECS's health check timeout).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Args, Debug)]
pub struct HealthcheckArgs {
    /// The admin address of the proxy to probe.
    #[arg(long, default_value = outrider_app::DEFAULT_ADMIN_ADDR)]
    pub admin_addr: SocketAddr,
}

fn probe(addr: SocketAddr) -> Result<u16, String> {
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(PROBE_TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(PROBE_TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).map_err(|e| format!("read: {e}"))?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| "not an HTTP answer".to_string())
}

pub fn run(args: HealthcheckArgs) -> ExitCode {
    match probe(args.admin_addr) {
        Ok(200) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("outrider is not ready ({status})");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("outrider is not reachable: {e}");
            ExitCode::from(1)
        }
    }
}
