//! Host interface addresses and the "is this our own listener?" loop guard.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;

/// Returns every IPv4 and IPv6 address assigned to this host's interfaces (via
/// `getifaddrs(3)`), loopback included, without duplicates. Returns an empty list if the
/// kernel cannot be asked.
pub fn host_addrs() -> Vec<IpAddr> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `head` is a valid out-pointer; on success the list is freed below exactly once.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Vec::new();
    }
    let mut addrs = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, which is still allocated.
        let ifa = unsafe { &*cur };
        // SAFETY: a non-null `ifa_addr` points to a sockaddr whose family tag says which
        // concrete struct it is, as getifaddrs(3) guarantees.
        if let Some(ip) = unsafe { sockaddr_ip(ifa.ifa_addr) }
            && !addrs.contains(&ip)
        {
            addrs.push(ip);
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from a successful getifaddrs and is not used afterwards.
    unsafe { libc::freeifaddrs(head) };
    addrs
}

/// Reads the IP out of a sockaddr of family `AF_INET` or `AF_INET6`; other families (and
/// null, which getifaddrs gives for some interfaces) yield `None`.
///
/// # Safety
/// `sa` must be null or point to a readable sockaddr as large as its family requires.
unsafe fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: non-null and readable per the caller's contract; the family tag is at the
    // same offset in every sockaddr.
    match i32::from(unsafe { (*sa).sa_family }) {
        libc::AF_INET => {
            // SAFETY: the family tag says this is a sockaddr_in.
            let sin = unsafe { &*sa.cast::<libc::sockaddr_in>() };
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                sin.sin_addr.s_addr,
            ))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family tag says this is a sockaddr_in6.
            let sin6 = unsafe { &*sa.cast::<libc::sockaddr_in6>() };
            Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

/// True when a connection to `dst` would land on one of `own_listeners`, i.e. forwarding it
/// would loop back into this proxy.
///
/// A listener on a specific IP matches that IP and port. A listener on an unspecified IP
/// (`0.0.0.0`, or dual-stack `[::]`) matches its port on loopback and on any address of this
/// host. Host addresses are read once per process (pod addresses do not change while it lives).
pub fn is_self(dst: SocketAddr, own_listeners: &[SocketAddr]) -> bool {
    static HOST: OnceLock<Vec<IpAddr>> = OnceLock::new();
    let wildcard_port = own_listeners
        .iter()
        .any(|l| l.ip().is_unspecified() && l.port() == dst.port());
    // Only pay for the interface list when a wildcard listener could match.
    let host: &[IpAddr] = if wildcard_port {
        HOST.get_or_init(host_addrs)
    } else {
        &[]
    };
    is_self_with(dst, own_listeners, host)
}

/// [`is_self`] with the host's addresses given explicitly (pure; `host` is what
/// [`host_addrs`] returns).
pub fn is_self_with(dst: SocketAddr, own_listeners: &[SocketAddr], host: &[IpAddr]) -> bool {
    let ip = dst.ip().to_canonical();
    own_listeners.iter().any(|listener| {
        if listener.port() != dst.port() {
            return false;
        }
        let lip = listener.ip().to_canonical();
        if !lip.is_unspecified() {
            return lip == ip;
        }
        // 0.0.0.0 takes only IPv4; [::] is bound dual-stack and takes both families.
        let family_ok = matches!(lip, IpAddr::V6(_)) || ip.is_ipv4();
        family_ok
            && (ip.is_loopback()
                || ip.is_unspecified()
                || host.iter().any(|h| h.to_canonical() == ip))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn host_addrs_include_loopback() {
        let addrs = host_addrs();
        assert!(
            addrs.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "{addrs:?}"
        );
    }

    #[test]
    fn specific_listener_matches_exactly() {
        let own = [sa("127.0.0.1:15001")];
        assert!(is_self_with(sa("127.0.0.1:15001"), &own, &[]));
        assert!(is_self_with(sa("[::ffff:127.0.0.1]:15001"), &own, &[]));
        assert!(!is_self_with(sa("127.0.0.1:15000"), &own, &[]));
        assert!(!is_self_with(sa("127.0.0.2:15001"), &own, &[]));
    }

    #[test]
    fn wildcard_listener_matches_loopback_and_host_addresses() {
        let own = [sa("0.0.0.0:15001")];
        let host = [IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))];
        assert!(is_self_with(sa("127.0.0.1:15001"), &own, &host));
        assert!(is_self_with(sa("127.9.9.9:15001"), &own, &host));
        assert!(is_self_with(sa("10.1.2.3:15001"), &own, &host));
        assert!(!is_self_with(sa("10.1.2.4:15001"), &own, &host));
        assert!(!is_self_with(sa("10.1.2.3:8080"), &own, &host));
        assert!(!is_self_with(sa("[::1]:15001"), &own, &host));
    }

    #[test]
    fn dual_stack_wildcard_matches_both_families() {
        let own = [sa("[::]:15000")];
        let host = [IpAddr::V6("fd00::5".parse().unwrap())];
        assert!(is_self_with(sa("[::1]:15000"), &own, &host));
        assert!(is_self_with(sa("127.0.0.1:15000"), &own, &host));
        assert!(is_self_with(sa("[fd00::5]:15000"), &own, &host));
        assert!(!is_self_with(sa("[fd00::6]:15000"), &own, &host));
    }

    #[test]
    fn is_self_uses_real_host_addresses() {
        let own = [sa("0.0.0.0:15001"), sa("127.0.0.1:15000")];
        assert!(is_self(sa("127.0.0.1:15001"), &own));
        assert!(is_self(sa("127.0.0.1:15000"), &own));
        assert!(!is_self(sa("192.0.2.1:15001"), &own));
        assert!(!is_self(sa("127.0.0.1:80"), &own));
        for ip in host_addrs() {
            assert!(
                is_self(SocketAddr::new(ip, 15001), &own) == ip.is_ipv4(),
                "{ip}"
            );
        }
    }
}
