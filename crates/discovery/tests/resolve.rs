//! The DNS client against the in-process test server, and the system resolver.

use std::net::IpAddr;
use std::time::Duration;

use outrider_discovery::{ResolveError, Resolver, ResolverConfig};
use outrider_test_support::dns::DnsServer;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

async fn server_and_resolver() -> (DnsServer, Resolver) {
    let server = DnsServer::start().await.expect("dns server");
    let resolver = Resolver::new(ResolverConfig::Server(server.addr()))
        .with_timeout(Duration::from_millis(300));
    (server, resolver)
}

#[tokio::test]
async fn resolves_a_and_aaaa() {
    let (server, resolver) = server_and_resolver().await;
    server.set("svc.local", &[ip("10.0.0.1"), ip("fd00::1")]);
    let got = resolver.resolve("svc.local").await.unwrap();
    assert_eq!(got, vec![ip("10.0.0.1"), ip("fd00::1")]);
    // Case and a trailing dot do not matter.
    let got = resolver.resolve("SVC.Local.").await.unwrap();
    assert_eq!(got, vec![ip("10.0.0.1"), ip("fd00::1")]);
    // One A query and one AAAA query per resolution.
    assert_eq!(server.queries(), 4);
}

#[tokio::test]
async fn resolves_aaaa_only_and_multiple_addresses() {
    let (server, resolver) = server_and_resolver().await;
    server.set("v6.local", &[ip("fd00::2")]);
    assert_eq!(
        resolver.resolve("v6.local").await.unwrap(),
        vec![ip("fd00::2")]
    );
    let many: Vec<IpAddr> = (1..=5).map(|i| ip(&format!("10.0.1.{i}"))).collect();
    server.set("many.local", &many);
    assert_eq!(resolver.resolve("many.local").await.unwrap(), many);
}

#[tokio::test]
async fn nxdomain_and_empty_answers_are_empty_lists() {
    let (server, resolver) = server_and_resolver().await;
    assert_eq!(
        resolver.resolve("missing.local").await.unwrap(),
        Vec::<IpAddr>::new()
    );
    server.set("none.local", &[]);
    assert_eq!(
        resolver.resolve("none.local").await.unwrap(),
        Vec::<IpAddr>::new()
    );
}

#[tokio::test]
async fn follows_cname_chain() {
    let (server, resolver) = server_and_resolver().await;
    server.set_cname("alias.local", "mid.local");
    server.set_cname("mid.local", "real.local");
    server.set("real.local", &[ip("10.9.9.9")]);
    assert_eq!(
        resolver.resolve("alias.local").await.unwrap(),
        vec![ip("10.9.9.9")]
    );
}

#[tokio::test]
async fn truncation_falls_back_to_tcp() {
    let (server, resolver) = server_and_resolver().await;
    server.set("big.local", &[ip("10.0.0.7")]);
    server.set_truncated("big.local", true);
    assert_eq!(
        resolver.resolve("big.local").await.unwrap(),
        vec![ip("10.0.0.7")]
    );
    // Each family: one UDP query answered with TC, then one TCP query.
    assert_eq!(server.queries(), 4);

    // An answer too large for 512 octets is truncated by the server on its own.
    let many: Vec<IpAddr> = (1..=60).map(|i| ip(&format!("10.2.0.{i}"))).collect();
    server.set("huge.local", &many);
    assert_eq!(resolver.resolve("huge.local").await.unwrap(), many);
}

#[tokio::test]
async fn silent_server_times_out_after_one_retry() {
    let (server, resolver) = server_and_resolver().await;
    server.set("svc.local", &[ip("10.0.0.1")]);
    server.set_silent(true);
    let err = resolver.resolve("svc.local").await.unwrap_err();
    assert!(matches!(err, ResolveError::Timeout), "{err:?}");
    assert!(err.is_transport());
    // Two attempts for each of A and AAAA.
    assert_eq!(server.queries(), 4);
}

#[tokio::test]
async fn stopped_server_is_a_transport_error() {
    let (server, resolver) = server_and_resolver().await;
    drop(server);
    let err = tokio::time::timeout(Duration::from_secs(3), resolver.resolve("svc.local"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.is_transport(), "{err:?}");
}

#[tokio::test]
async fn ip_literals_need_no_query() {
    let (server, resolver) = server_and_resolver().await;
    assert_eq!(
        resolver.resolve("10.1.2.3").await.unwrap(),
        vec![ip("10.1.2.3")]
    );
    assert_eq!(
        resolver.resolve("fd00::9").await.unwrap(),
        vec![ip("fd00::9")]
    );
    assert_eq!(
        resolver.resolve("[fd00::9]").await.unwrap(),
        vec![ip("fd00::9")]
    );
    assert_eq!(server.queries(), 0);
    let system = Resolver::new(ResolverConfig::System);
    assert_eq!(system.resolve("[::1]").await.unwrap(), vec![ip("::1")]);
}

#[tokio::test]
async fn invalid_names_are_rejected_without_a_query() {
    let (server, resolver) = server_and_resolver().await;
    for bad in ["", "a..b", "has space.local", &"x".repeat(64)] {
        let err = resolver.resolve(bad).await.unwrap_err();
        assert!(
            matches!(err, ResolveError::InvalidHost(_)),
            "{bad:?}: {err:?}"
        );
    }
    assert_eq!(server.queries(), 0);
}

#[tokio::test]
async fn system_resolver_knows_localhost() {
    let system = Resolver::new(ResolverConfig::System);
    let got = system.resolve("localhost").await.unwrap();
    assert!(!got.is_empty());
    assert!(got.iter().all(IpAddr::is_loopback), "{got:?}");
}
