//! Periodic re-resolution of one DNS target into an endpoint set on a `watch` channel.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::resolver::{Families, Resolver};

/// How often a target is re-resolved. Default is 5 s.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(5);
/// Shortest refresh interval honoured; smaller values (including zero) are raised to it.
pub const MIN_REFRESH: Duration = Duration::from_millis(10);

/// A sorted, deduplicated endpoint set, so equal sets compare equal.
pub type Endpoints = Arc<[SocketAddr]>;

/// How many of the resolved addresses become endpoints (App Mesh `responseType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResponseType {
    /// Every address is an endpoint. Default.
    #[default]
    Endpoints,
    /// Only one address is used (the name points at a load balancer). The current address is
    /// kept while the name still resolves to it, so a rotating answer order does not churn.
    LoadBalancer,
}

/// Which address families are used (App Mesh `ipPreference`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IpPreference {
    /// IPv4 and IPv6 addresses alike. Default.
    #[default]
    Any,
    /// IPv4 addresses only.
    Ipv4Only,
    /// IPv6 addresses only.
    Ipv6Only,
    /// IPv4 addresses if there are any, else IPv6.
    Ipv4Preferred,
    /// IPv6 addresses if there are any, else IPv4.
    Ipv6Preferred,
}

/// A hostname to keep resolved into endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsTarget {
    /// The name to resolve (a DNS name, a Cloud Map `service.namespace`, or an IP literal).
    pub hostname: String,
    /// The port every endpoint gets.
    pub port: u16,
    /// All addresses, or only one. Default is [`ResponseType::Endpoints`].
    pub response_type: ResponseType,
    /// Address family filter. Default is [`IpPreference::Any`].
    pub ip_preference: IpPreference,
    /// Re-resolution interval. Default is [`DEFAULT_REFRESH`] (5 s); at least [`MIN_REFRESH`].
    pub refresh: Duration,
}

/// A running watch on one [`DnsTarget`]. Dropping it stops the background task; receivers
/// taken from it then keep the last published set.
#[derive(Debug)]
pub struct Watch {
    endpoints: watch::Receiver<Endpoints>,
    ready: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl DnsTarget {
    /// A target for `hostname:port` with every other field at its default.
    pub fn new(hostname: impl Into<String>, port: u16) -> Self {
        DnsTarget {
            hostname: hostname.into(),
            port,
            response_type: ResponseType::default(),
            ip_preference: IpPreference::default(),
            refresh: DEFAULT_REFRESH,
        }
    }
}

impl IpPreference {
    fn families(self) -> Families {
        match self {
            IpPreference::Ipv4Only => Families {
                v4: true,
                v6: false,
            },
            IpPreference::Ipv6Only => Families {
                v4: false,
                v6: true,
            },
            IpPreference::Any | IpPreference::Ipv4Preferred | IpPreference::Ipv6Preferred => {
                Families::BOTH
            }
        }
    }

    /// Keeps the addresses this preference allows, in their original order.
    fn filter(self, ips: &[IpAddr]) -> Vec<IpAddr> {
        let v4 = || ips.iter().copied().filter(IpAddr::is_ipv4);
        let v6 = || ips.iter().copied().filter(IpAddr::is_ipv6);
        match self {
            IpPreference::Any => ips.to_vec(),
            IpPreference::Ipv4Only => v4().collect(),
            IpPreference::Ipv6Only => v6().collect(),
            IpPreference::Ipv4Preferred if v4().next().is_some() => v4().collect(),
            IpPreference::Ipv4Preferred => v6().collect(),
            IpPreference::Ipv6Preferred if v6().next().is_some() => v6().collect(),
            IpPreference::Ipv6Preferred => v4().collect(),
        }
    }
}

impl Watch {
    /// A new receiver of the endpoint set; it starts empty until the first successful resolution.
    pub fn receiver(&self) -> watch::Receiver<Endpoints> {
        self.endpoints.clone()
    }

    /// The endpoint set published last.
    pub fn current(&self) -> Endpoints {
        self.endpoints.borrow().clone()
    }

    /// Waits until the first resolution attempt finished, whether it succeeded or not.
    pub async fn ready(&mut self) {
        // An error means the task is gone, so there is nothing left to wait for.
        let _ = self.ready.wait_for(|done| *done).await;
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts resolving `target` now and every `target.refresh` after, on the current tokio runtime.
///
/// A new set is published only when it differs from the last one. On a resolution error the last
/// good set is kept and a warning is logged once per failure streak; an empty set is published
/// only when the name resolved to nothing.
pub fn watch(resolver: Resolver, target: DnsTarget) -> Watch {
    let empty: Endpoints = Arc::from(Vec::new());
    let (tx, endpoints) = watch::channel(empty);
    let (ready_tx, ready) = watch::channel(false);
    let task = tokio::spawn(run(resolver, target, tx, ready_tx));
    Watch {
        endpoints,
        ready,
        task,
    }
}

async fn run(
    resolver: Resolver,
    target: DnsTarget,
    tx: watch::Sender<Endpoints>,
    ready: watch::Sender<bool>,
) {
    let mut ticks = tokio::time::interval(target.refresh.max(MIN_REFRESH));
    // A slow resolution must not be followed by a burst of catch-up queries.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let families = target.ip_preference.families();
    let mut failing = false;
    loop {
        ticks.tick().await;
        match resolver.resolve_families(&target.hostname, families).await {
            Ok(ips) => {
                if failing {
                    tracing::info!(host = %target.hostname, "DNS resolution recovered");
                    failing = false;
                }
                tx.send_if_modified(|current| {
                    let next = select(&ips, &target, current);
                    let changed = next != *current;
                    if changed {
                        tracing::debug!(host = %target.hostname, endpoints = next.len(), "endpoints changed");
                        *current = next;
                    }
                    changed
                });
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(
                        host = %target.hostname,
                        error = %error,
                        cause = ?std::error::Error::source(&error),
                        "DNS resolution failed; keeping the last endpoints",
                    );
                    failing = true;
                }
            }
        }
        ready.send_if_modified(|done| !std::mem::replace(done, true));
    }
}

/// Turns resolved addresses into the endpoint set for `target`, given the set published now.
fn select(ips: &[IpAddr], target: &DnsTarget, current: &Endpoints) -> Endpoints {
    let ips = target.ip_preference.filter(ips);
    let mut eps: Vec<SocketAddr> = match target.response_type {
        ResponseType::Endpoints => ips
            .iter()
            .map(|ip| SocketAddr::new(*ip, target.port))
            .collect(),
        ResponseType::LoadBalancer => {
            let still_there = current.first().filter(|ep| {
                current.len() == 1 && ep.port() == target.port && ips.contains(&ep.ip())
            });
            still_there
                .copied()
                .or_else(|| ips.first().map(|ip| SocketAddr::new(*ip, target.port)))
                .into_iter()
                .collect()
        }
    };
    eps.sort_unstable();
    eps.dedup();
    Arc::from(eps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn eps(list: &[&str]) -> Endpoints {
        list.iter()
            .map(|s| s.parse().unwrap())
            .collect::<Vec<_>>()
            .into()
    }

    #[test]
    fn endpoints_are_sorted_and_deduplicated() {
        let t = DnsTarget::new("x", 80);
        let got = select(&ips(&["10.0.0.2", "10.0.0.1", "10.0.0.2"]), &t, &eps(&[]));
        assert_eq!(got, eps(&["10.0.0.1:80", "10.0.0.2:80"]));
    }

    #[test]
    fn preferences_filter() {
        let both = ips(&["10.0.0.1", "::1"]);
        let v4 = ips(&["10.0.0.1"]);
        let cases = [
            (IpPreference::Any, &both, vec!["10.0.0.1:1", "[::1]:1"]),
            (IpPreference::Ipv4Only, &both, vec!["10.0.0.1:1"]),
            (IpPreference::Ipv6Only, &both, vec!["[::1]:1"]),
            (IpPreference::Ipv4Preferred, &both, vec!["10.0.0.1:1"]),
            (IpPreference::Ipv6Preferred, &both, vec!["[::1]:1"]),
            (IpPreference::Ipv6Preferred, &v4, vec!["10.0.0.1:1"]),
            (IpPreference::Ipv6Only, &v4, vec![]),
        ];
        for (pref, input, want) in cases {
            let mut t = DnsTarget::new("x", 1);
            t.ip_preference = pref;
            assert_eq!(select(input, &t, &eps(&[])), eps(&want), "{pref:?}");
        }
    }

    #[test]
    fn load_balancer_is_sticky() {
        let mut t = DnsTarget::new("x", 80);
        t.response_type = ResponseType::LoadBalancer;
        let first = select(&ips(&["10.0.0.2", "10.0.0.1"]), &t, &eps(&[]));
        assert_eq!(first, eps(&["10.0.0.2:80"]));
        let again = select(&ips(&["10.0.0.1", "10.0.0.2"]), &t, &first);
        assert_eq!(again, first);
        let moved = select(&ips(&["10.0.0.3"]), &t, &first);
        assert_eq!(moved, eps(&["10.0.0.3:80"]));
        assert_eq!(select(&[], &t, &moved), eps(&[]));
    }
}
