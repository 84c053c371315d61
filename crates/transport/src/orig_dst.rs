//! The destination a connection had before iptables `REDIRECT` rewrote it.

use std::net::SocketAddr;

use socket2::SockRef;
use tokio::net::TcpStream;

/// Returns the pre-`REDIRECT` destination of an accepted connection (`SO_ORIGINAL_DST` for
/// IPv4, `IP6T_SO_ORIGINAL_DST` for IPv6), with IPv4-mapped IPv6 addresses turned into IPv4.
///
/// Returns `None` when the connection was not redirected: the kernel has no conntrack entry
/// (the lookup fails) or the original destination is our own local address.
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let local = canonical(stream.local_addr().ok()?);
    let sock = SockRef::from(stream);
    let found = match local {
        SocketAddr::V4(_) => sock.original_dst_v4(),
        // A dual-stack listener sees IPv4 peers as mapped addresses; their conntrack entry is
        // IPv4, so the IPv6 lookup can miss where the IPv4 one succeeds.
        SocketAddr::V6(_) => sock.original_dst_v6().or_else(|_| sock.original_dst_v4()),
    };
    let dst = canonical(found.ok()?.as_socket()?);
    (dst != local).then_some(dst)
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    #[tokio::test]
    async fn plain_connection_has_no_original_dst() {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(original_dst(&server), None);
        assert_eq!(original_dst(&client), None);
    }

    #[tokio::test]
    async fn plain_ipv6_connection_has_no_original_dst() {
        let Ok(listener) = tokio::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).await else {
            return;
        };
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(original_dst(&server), None);
    }

    #[test]
    fn mapped_addresses_become_ipv4() {
        let mapped = SocketAddr::new(IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped()), 80);
        assert_eq!(canonical(mapped), SocketAddr::from(([10, 0, 0, 1], 80)));
    }
}
