//! Listening sockets for the ingress, egress and admin ports.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

/// Accept queue length requested from the kernel (capped by `net.core.somaxconn`).
/// Default is 1024.
pub const LISTEN_BACKLOG: i32 = 1024;

/// Binds a nonblocking TCP listener on `addr` with `SO_REUSEADDR` and a backlog of
/// [`LISTEN_BACKLOG`].
///
/// An IPv6 address is IPv6-only, except the unspecified `[::]`, which is dual-stack so one
/// listener takes both families.
///
/// # Panics
/// Outside a Tokio runtime with I/O enabled (the listener registers with its reactor).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Lets a restarted proxy rebind while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    if let SocketAddr::V6(v6) = addr {
        socket.set_only_v6(!v6.ip().is_unspecified())?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    #[tokio::test]
    async fn binds_ephemeral_port_and_accepts() {
        let listener = bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (_server, peer) = listener.accept().await.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
    }

    #[tokio::test]
    async fn ipv6_loopback_is_v6_only() {
        // Hosts without IPv6 cannot run this check; binding is the capability probe.
        let Ok(listener) = bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 0)) else {
            return;
        };
        let only_v6 = socket2::SockRef::from(&listener).only_v6().unwrap();
        assert!(only_v6);
    }

    #[tokio::test]
    async fn ipv6_unspecified_is_dual_stack() {
        let Ok(listener) = bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)) else {
            return;
        };
        let only_v6 = socket2::SockRef::from(&listener).only_v6().unwrap();
        assert!(!only_v6);
        let port = listener.local_addr().unwrap().port();
        let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        let _client = tokio::net::TcpStream::connect(v4).await.unwrap();
        let (_server, peer) = listener.accept().await.unwrap();
        assert_eq!(peer.ip().to_canonical(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    }

    #[tokio::test]
    async fn second_bind_on_same_port_fails() {
        let first = bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)).unwrap();
        let err = bind(first.local_addr().unwrap()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
