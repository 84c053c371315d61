//! Upstream connects with a deadline, and socket options for accepted connections.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

/// Upper bound on establishing an upstream TCP connection. Default is 5 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle time before the first TCP keepalive probe on accepted connections. Default is 60 s.
pub const KEEPALIVE_TIME: Duration = Duration::from_secs(60);

/// Interval between unanswered TCP keepalive probes. Default is 10 s.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Unanswered keepalive probes before the kernel drops the connection. Default is 3.
pub const KEEPALIVE_RETRIES: u32 = 3;

/// Why an upstream connect failed; callers branch on [`is_timeout`](Self::is_timeout) and
/// [`is_refused`](Self::is_refused) rather than on the message.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No connection within the deadline (ours, or the kernel's SYN retries).
    #[error("connect timed out")]
    Timeout,
    /// The peer answered with a reset: nothing listens on that port.
    #[error("connection refused")]
    Refused,
    /// Any other failure (unreachable network, no local ports, socket option failure...).
    #[error("connect failed")]
    Other(#[source] io::Error),
}

impl ConnectError {
    /// True when the connect ran out of time.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout)
    }

    /// True when the peer refused the connection.
    pub fn is_refused(&self) -> bool {
        matches!(self, Self::Refused)
    }
}

impl From<io::Error> for ConnectError {
    /// Classifies an I/O error from `connect(2)`.
    fn from(err: io::Error) -> Self {
        match err.kind() {
            io::ErrorKind::ConnectionRefused => Self::Refused,
            io::ErrorKind::TimedOut => Self::Timeout,
            _ => Self::Other(err),
        }
    }
}

/// Connects to `addr`, giving up after `timeout`, and enables `TCP_NODELAY` on the new socket
/// (proxied bytes are already coalesced by the peers, so Nagle only adds latency).
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(result) => result?,
        Err(_elapsed) => return Err(ConnectError::Timeout),
    };
    stream.set_nodelay(true).map_err(ConnectError::Other)?;
    Ok(stream)
}

/// Enables `TCP_NODELAY` and TCP keepalive ([`KEEPALIVE_TIME`], [`KEEPALIVE_INTERVAL`],
/// [`KEEPALIVE_RETRIES`]) on an accepted connection, so dead peers of long idle connections
/// are eventually noticed.
pub fn set_nodelay_keepalive(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_TIME)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn localhost() -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)
    }

    #[tokio::test]
    async fn connects_with_nodelay() {
        let listener = tokio::net::TcpListener::bind(localhost()).await.unwrap();
        let stream = connect(listener.local_addr().unwrap(), DEFAULT_CONNECT_TIMEOUT)
            .await
            .unwrap();
        assert!(stream.nodelay().unwrap());
    }

    #[tokio::test]
    async fn closed_port_is_refused() {
        let listener = tokio::net::TcpListener::bind(localhost()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = connect(addr, DEFAULT_CONNECT_TIMEOUT).await.unwrap_err();
        assert!(err.is_refused(), "{err:?}");
        assert!(!err.is_timeout());
    }

    #[tokio::test]
    async fn full_backlog_times_out() {
        // A listener that never accepts and has a full accept queue drops further SYNs, so
        // the connect hangs until our deadline.
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&localhost().into()).unwrap();
        socket.listen(0).unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        let short = Duration::from_millis(100);
        let mut held = Vec::new();
        let mut timed_out = false;
        for _ in 0..8 {
            match connect(addr, short).await {
                Ok(stream) => held.push(stream),
                Err(err) => {
                    assert!(err.is_timeout(), "{err:?}");
                    timed_out = true;
                    break;
                }
            }
        }
        assert!(timed_out, "{} connects succeeded", held.len());
    }

    #[test]
    fn io_errors_are_classified() {
        let refused = ConnectError::from(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert!(refused.is_refused());
        let timed_out = ConnectError::from(io::Error::from(io::ErrorKind::TimedOut));
        assert!(timed_out.is_timeout());
        let other = ConnectError::from(io::Error::from(io::ErrorKind::AddrNotAvailable));
        assert!(!other.is_refused() && !other.is_timeout());
        assert!(std::error::Error::source(&other).is_some());
    }

    #[tokio::test]
    async fn accepted_socket_gets_options() {
        let listener = tokio::net::TcpListener::bind(localhost()).await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        set_nodelay_keepalive(&server).unwrap();
        assert!(server.nodelay().unwrap());
        let sock = SockRef::from(&server);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), KEEPALIVE_TIME);
    }
}
