//! Watches publishing endpoint sets from the in-process DNS server.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use outrider_discovery::{
    DnsTarget, Endpoints, IpPreference, Resolver, ResolverConfig, ResponseType, watch,
};
use outrider_test_support::dns::DnsServer;

const REFRESH: Duration = Duration::from_millis(50);
const WAIT: Duration = Duration::from_secs(3);

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn eps(list: &[&str]) -> Endpoints {
    let mut v: Vec<SocketAddr> = list
        .iter()
        .map(|s| s.parse().expect("test address"))
        .collect();
    v.sort();
    v.into()
}

fn target(host: &str) -> DnsTarget {
    DnsTarget {
        refresh: REFRESH,
        ..DnsTarget::new(host, 8080)
    }
}

async fn start() -> (DnsServer, Resolver) {
    let server = DnsServer::start().await.expect("dns server");
    let resolver = Resolver::new(ResolverConfig::Server(server.addr()))
        .with_timeout(Duration::from_millis(100));
    (server, resolver)
}

/// Waits (bounded) until the receiver holds `want`.
async fn wait_for(rx: &mut tokio::sync::watch::Receiver<Endpoints>, want: Endpoints) {
    let seen = matches!(
        tokio::time::timeout(WAIT, rx.wait_for(|cur| *cur == want)).await,
        Ok(Ok(_))
    );
    assert!(seen, "never saw {want:?}; have {:?}", *rx.borrow());
}

#[tokio::test]
async fn publishes_changes() {
    let (server, resolver) = start().await;
    server.set("svc.local", &[ip("10.0.0.2"), ip("10.0.0.1")]);
    let mut w = watch(resolver, target("svc.local"));
    tokio::time::timeout(WAIT, w.ready()).await.unwrap();
    assert_eq!(w.current(), eps(&["10.0.0.1:8080", "10.0.0.2:8080"]));

    let mut rx = w.receiver();
    rx.mark_unchanged();
    server.set("svc.local", &[ip("10.0.0.3"), ip("fd00::1")]);
    wait_for(&mut rx, eps(&["10.0.0.3:8080", "[fd00::1]:8080"])).await;

    // Removing the name is an answer (NXDOMAIN): the set becomes empty.
    server.remove("svc.local");
    wait_for(&mut rx, eps(&[])).await;
}

#[tokio::test]
async fn publishes_only_on_change() {
    let (server, resolver) = start().await;
    server.set("svc.local", &[ip("10.0.0.1")]);
    let mut w = watch(resolver, target("svc.local"));
    tokio::time::timeout(WAIT, w.ready()).await.unwrap();
    let mut rx = w.receiver();
    rx.mark_unchanged();
    // Let several refreshes happen with the same answer.
    let before = server.queries();
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.queries() < before + 6 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(server.queries() >= before + 6, "watch did not refresh");
    assert!(
        !rx.has_changed().unwrap(),
        "an identical set was republished"
    );
}

#[tokio::test]
async fn keeps_last_good_set_when_server_stops_answering() {
    let (server, resolver) = start().await;
    server.set("svc.local", &[ip("10.0.0.1")]);
    let mut w = watch(resolver, target("svc.local"));
    tokio::time::timeout(WAIT, w.ready()).await.unwrap();
    let good = eps(&["10.0.0.1:8080"]);
    assert_eq!(w.current(), good);

    server.set_silent(true);
    let before = server.queries();
    // Several failed rounds (each two attempts of 100 ms) must leave the set alone.
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.queries() < before + 8 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(server.queries() >= before + 8);
    assert_eq!(w.current(), good);

    // Recovery publishes again.
    server.set("svc.local", &[ip("10.0.0.5")]);
    server.set_silent(false);
    let mut rx = w.receiver();
    wait_for(&mut rx, eps(&["10.0.0.5:8080"])).await;

    // A server that is gone entirely is also just a failure.
    drop(server);
    tokio::time::sleep(REFRESH * 4).await;
    assert_eq!(w.current(), eps(&["10.0.0.5:8080"]));
}

#[tokio::test]
async fn ready_fires_after_a_failed_first_attempt() {
    let (server, resolver) = start().await;
    server.set_silent(true);
    let mut w = watch(resolver, target("svc.local"));
    tokio::time::timeout(WAIT, w.ready()).await.unwrap();
    assert_eq!(w.current(), eps(&[]));
}

#[tokio::test]
async fn load_balancer_uses_one_address() {
    let (server, resolver) = start().await;
    server.set(
        "lb.local",
        &[ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3")],
    );
    let t = DnsTarget {
        response_type: ResponseType::LoadBalancer,
        ..target("lb.local")
    };
    let mut w = watch(resolver, t);
    tokio::time::timeout(WAIT, w.ready()).await.unwrap();
    assert_eq!(w.current(), eps(&["10.0.0.1:8080"]));

    // The server reorders: the address in use is still valid, so nothing changes.
    server.set("lb.local", &[ip("10.0.0.3"), ip("10.0.0.1")]);
    let mut rx = w.receiver();
    rx.mark_unchanged();
    tokio::time::sleep(REFRESH * 4).await;
    assert!(!rx.has_changed().unwrap());

    // The address in use disappears: move to the first one offered.
    server.set("lb.local", &[ip("10.0.0.3"), ip("10.0.0.2")]);
    wait_for(&mut rx, eps(&["10.0.0.3:8080"])).await;
}

#[tokio::test]
async fn ip_preference_filters_families() {
    let (server, resolver) = start().await;
    server.set("dual.local", &[ip("10.0.0.1"), ip("fd00::1")]);
    server.set("v4.local", &[ip("10.0.0.4")]);
    let cases = [
        (
            "dual.local",
            IpPreference::Any,
            eps(&["10.0.0.1:8080", "[fd00::1]:8080"]),
        ),
        (
            "dual.local",
            IpPreference::Ipv4Only,
            eps(&["10.0.0.1:8080"]),
        ),
        (
            "dual.local",
            IpPreference::Ipv6Only,
            eps(&["[fd00::1]:8080"]),
        ),
        (
            "dual.local",
            IpPreference::Ipv4Preferred,
            eps(&["10.0.0.1:8080"]),
        ),
        (
            "dual.local",
            IpPreference::Ipv6Preferred,
            eps(&["[fd00::1]:8080"]),
        ),
        (
            "v4.local",
            IpPreference::Ipv6Preferred,
            eps(&["10.0.0.4:8080"]),
        ),
        ("v4.local", IpPreference::Ipv6Only, eps(&[])),
    ];
    for (host, pref, want) in cases {
        let t = DnsTarget {
            ip_preference: pref,
            ..target(host)
        };
        let mut w = watch(resolver.clone(), t);
        tokio::time::timeout(WAIT, w.ready()).await.unwrap();
        assert_eq!(w.current(), want, "{host} {pref:?}");
    }
}

#[tokio::test]
async fn ip_only_preference_asks_one_family() {
    let (server, resolver) = start().await;
    server.set("svc.local", &[ip("10.0.0.1")]);
    let t = DnsTarget {
        ip_preference: IpPreference::Ipv4Only,
        refresh: Duration::from_secs(60),
        ..target("svc.local")
    };
    let mut w = watch(resolver, t);
    tokio::time::timeout(WAIT, w.ready()).await.unwrap();
    assert_eq!(server.queries(), 1);
}

#[tokio::test]
async fn dropping_the_watch_stops_queries() {
    let (server, resolver) = start().await;
    server.set("svc.local", &[ip("10.0.0.1")]);
    let mut w = watch(resolver, target("svc.local"));
    tokio::time::timeout(WAIT, w.ready()).await.unwrap();
    let rx = w.receiver();
    drop(w);
    tokio::time::sleep(REFRESH).await;
    let after_drop = server.queries();
    tokio::time::sleep(REFRESH * 4).await;
    assert_eq!(server.queries(), after_drop);
    // The receiver keeps the last set.
    assert_eq!(*rx.borrow(), eps(&["10.0.0.1:8080"]));
}

#[tokio::test]
async fn literal_target_needs_no_server() {
    let resolver = Resolver::new(ResolverConfig::System);
    let mut w = watch(resolver, target("127.0.0.1"));
    tokio::time::timeout(WAIT, w.ready()).await.unwrap();
    assert_eq!(w.current(), eps(&["127.0.0.1:8080"]));
}
