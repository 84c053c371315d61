//! Hostname to addresses: the OS resolver, or our own DNS client over UDP with TCP fallback.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

use crate::error::ResolveError;
use crate::wire::{self, Answer, Name, QueryType, WireError};

/// How long one query attempt waits for its answer. Default is 2 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// UDP attempts per query: the first try and one retry.
const UDP_ATTEMPTS: usize = 2;
/// Receive buffer for UDP answers; larger than any plain (non-EDNS) answer, so nothing is cut.
const UDP_BUFFER: usize = 4096;

/// Where names are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolverConfig {
    /// The operating system resolver (`getaddrinfo` through `tokio::net::lookup_host`), which
    /// honours /etc/hosts and /etc/resolv.conf. It cannot tell a missing name from an outage,
    /// so every failure is reported as [`ResolveError::System`].
    System,
    /// Our own DNS client, sending A and AAAA queries to this server over UDP (TCP when the
    /// answer is truncated).
    Server(SocketAddr),
}

/// Which address families a lookup asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Families {
    pub(crate) v4: bool,
    pub(crate) v6: bool,
}

/// Resolves hostnames to IP addresses. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Resolver {
    config: ResolverConfig,
    timeout: Duration,
}

impl Families {
    pub(crate) const BOTH: Families = Families { v4: true, v6: true };

    fn admits(self, ip: &IpAddr) -> bool {
        match ip {
            IpAddr::V4(_) => self.v4,
            IpAddr::V6(_) => self.v6,
        }
    }
}

impl Resolver {
    /// A resolver using `config`, with a per-attempt timeout of [`DEFAULT_TIMEOUT`].
    pub fn new(config: ResolverConfig) -> Self {
        Resolver {
            config,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Sets how long each query attempt waits for an answer (UDP try, UDP retry, TCP).
    /// Applies to [`ResolverConfig::Server`] only. Default is [`DEFAULT_TIMEOUT`] (2 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The configuration this resolver was built with.
    pub fn config(&self) -> ResolverConfig {
        self.config
    }

    /// Resolves `host` to its IPv4 then IPv6 addresses, in the server's order.
    ///
    /// IP literals (`10.0.0.1`, `::1`, `[::1]`) are returned at once without a query. A name that
    /// does not exist or has no address records resolves to an empty list.
    pub async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
        self.resolve_families(host, Families::BOTH).await
    }

    /// Like [`Resolver::resolve`], asking only for the families wanted.
    pub(crate) async fn resolve_families(
        &self,
        host: &str,
        families: Families,
    ) -> Result<Vec<IpAddr>, ResolveError> {
        if let Some(ip) = ip_literal(host) {
            return Ok(if families.admits(&ip) {
                vec![ip]
            } else {
                Vec::new()
            });
        }
        match self.config {
            ResolverConfig::System => {
                let addrs = tokio::net::lookup_host((host, 0))
                    .await
                    .map_err(ResolveError::System)?;
                let mut ips: Vec<IpAddr> = Vec::new();
                for ip in addrs.map(|a| a.ip()).filter(|ip| families.admits(ip)) {
                    // getaddrinfo repeats an address once per socket type.
                    if !ips.contains(&ip) {
                        ips.push(ip);
                    }
                }
                // Match the DNS client's order: IPv4 first.
                ips.sort_by_key(|ip| ip.is_ipv6());
                Ok(ips)
            }
            ResolverConfig::Server(server) => {
                let name =
                    Name::parse(host).ok_or_else(|| ResolveError::InvalidHost(host.to_owned()))?;
                let (v4, v6) = tokio::join!(
                    async {
                        if families.v4 {
                            self.query(server, &name, QueryType::A).await
                        } else {
                            Ok(Vec::new())
                        }
                    },
                    async {
                        if families.v6 {
                            self.query(server, &name, QueryType::Aaaa).await
                        } else {
                            Ok(Vec::new())
                        }
                    }
                );
                let mut ips = v4?;
                ips.extend(v6?);
                Ok(ips)
            }
        }
    }

    /// One question, with a UDP retry and a TCP fallback on truncation.
    async fn query(
        &self,
        server: SocketAddr,
        name: &Name,
        qtype: QueryType,
    ) -> Result<Vec<IpAddr>, ResolveError> {
        let mut last = ResolveError::Timeout;
        for _ in 0..UDP_ATTEMPTS {
            match self.udp_exchange(server, name, qtype).await {
                Ok(Answer::Addresses(ips)) => return Ok(ips),
                Ok(Answer::Truncated) => {
                    return match self.tcp_exchange(server, name, qtype).await? {
                        Answer::Addresses(ips) => Ok(ips),
                        Answer::Truncated => Err(ResolveError::TruncatedOverTcp),
                        Answer::ServerError(rcode) => Err(ResolveError::Server { rcode }),
                    };
                }
                // SERVFAIL and friends are often transient, so they get the retry too.
                Ok(Answer::ServerError(rcode)) => last = ResolveError::Server { rcode },
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn udp_exchange(
        &self,
        server: SocketAddr,
        name: &Name,
        qtype: QueryType,
    ) -> Result<Answer, ResolveError> {
        let id = fastrand::u16(..);
        let query = wire::encode_query(id, name, qtype);
        let deadline = Instant::now() + self.timeout;
        let bind: SocketAddr = if server.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(bind).await.map_err(ResolveError::Io)?;
        // A connected socket only receives datagrams from the server's address.
        socket.connect(server).await.map_err(ResolveError::Io)?;
        socket.send(&query).await.map_err(ResolveError::Io)?;
        let mut buf = vec![0u8; UDP_BUFFER];
        let mut malformed: Option<WireError> = None;
        loop {
            let n = match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(ResolveError::Io(e)),
                Err(_) => {
                    return Err(malformed.map_or(ResolveError::Timeout, ResolveError::Malformed));
                }
            };
            match wire::parse_response(&buf[..n], id, name, qtype) {
                Ok(answer) => return Ok(answer),
                // A stray or forged datagram must not cost us the real answer: keep listening
                // until the deadline.
                Err(e) => malformed = Some(e),
            }
        }
    }

    async fn tcp_exchange(
        &self,
        server: SocketAddr,
        name: &Name,
        qtype: QueryType,
    ) -> Result<Answer, ResolveError> {
        let id = fastrand::u16(..);
        let query = wire::encode_query(id, name, qtype);
        let exchange = async {
            let mut stream = TcpStream::connect(server).await?;
            // Name::parse caps names at 255 octets, so a query always fits the length prefix.
            let len = u16::try_from(query.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
            let mut framed = Vec::with_capacity(query.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(&query);
            stream.write_all(&framed).await?;
            let len = usize::from(stream.read_u16().await?);
            let mut buf = vec![0u8; len];
            stream.read_exact(&mut buf).await?;
            Ok::<_, io::Error>(buf)
        };
        let buf = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ResolveError::Timeout)?
            .map_err(ResolveError::Io)?;
        wire::parse_response(&buf, id, name, qtype).map_err(ResolveError::Malformed)
    }
}

/// Parses `10.0.0.1`, `::1` and `[::1]`.
fn ip_literal(host: &str) -> Option<IpAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(ip);
    }
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .and_then(|h| h.parse::<Ipv6Addr>().ok())
        .map(IpAddr::V6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals() {
        assert_eq!(ip_literal("10.1.2.3"), Some("10.1.2.3".parse().unwrap()));
        assert_eq!(ip_literal("::1"), Some("::1".parse().unwrap()));
        assert_eq!(ip_literal("[fe80::1]"), Some("fe80::1".parse().unwrap()));
        assert_eq!(ip_literal("[10.0.0.1]"), None);
        assert_eq!(ip_literal("example.com"), None);
    }
}
