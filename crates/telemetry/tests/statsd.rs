#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns unwrap too

use std::collections::HashMap;
use std::net::UdpSocket;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use outrider_telemetry::{
    ClusterStats, StatsdOptions, StatsdRecorder, StatsdTarget, TelemetryError, TelemetryOptions,
    install_metrics, install_metrics_with,
};

const NEVER: Duration = Duration::from_secs(3600);

fn labels() -> Vec<(String, String)> {
    vec![
        ("appmesh_mesh".into(), "m".into()),
        ("appmesh_virtual_node".into(), "vn".into()),
    ]
}

/// Reads datagrams until `want` lines arrived (or a few seconds passed).
fn recv_lines(
    mut recv: impl FnMut(&mut [u8]) -> std::io::Result<usize>,
    want: usize,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut lines = Vec::new();
    let mut buf = [0u8; 9000];
    while lines.len() < want && Instant::now() < deadline {
        match recv(&mut buf) {
            Ok(n) => {
                let text = std::str::from_utf8(&buf[..n]).unwrap();
                lines.extend(text.lines().map(String::from));
            }
            // Nothing more is coming once a read times out after some lines arrived.
            Err(_) if !lines.is_empty() => break,
            Err(_) => {}
        }
    }
    lines
}

fn by_name(lines: &[String]) -> HashMap<String, String> {
    lines
        .iter()
        .map(|l| {
            let (name, rest) = l.split_once(':').unwrap();
            (name.to_string(), rest.to_string())
        })
        .collect()
}

#[test]
fn dogstatsd_over_udp_names_tags_values() {
    let agent = UdpSocket::bind("127.0.0.1:0").unwrap();
    agent
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let opts = StatsdOptions {
        target: StatsdTarget::Udp(agent.local_addr().unwrap()),
        tags: true,
        flush_interval: NEVER,
    };
    let rec = StatsdRecorder::new(&opts, &labels()).unwrap();
    let stats = metrics::with_local_recorder(&rec, || ClusterStats::new("cds_egress_a"));
    stats.rq_total.increment(3);
    stats.record_response(503, Instant::now());
    stats.cx_active.set(2.0);
    rec.flush().unwrap();
    let tags = "|#appmesh.mesh:m,appmesh.virtual_node:vn";
    let lines = recv_lines(|b| agent.recv(b), 3);
    let got = by_name(&lines);
    assert_eq!(
        got["envoy.cluster.upstream_rq_total"],
        format!("3|c{tags},envoy.cluster_name:cds_egress_a")
    );
    assert_eq!(
        got["envoy.cluster.upstream_rq_xx"],
        format!("1|c{tags},envoy.response_code_class:5,envoy.cluster_name:cds_egress_a")
    );
    assert_eq!(
        got["envoy.cluster.upstream_cx_active"],
        format!("2|g{tags},envoy.cluster_name:cds_egress_a")
    );
    let time = &got["envoy.cluster.upstream_rq_time"];
    assert!(time.contains("|ms|#appmesh.mesh:m"), "{time}");
    time.split('|').next().unwrap().parse::<f64>().unwrap();

    // The next flush sends counter deltas only, and gauges again.
    stats.rq_total.increment(2);
    rec.flush().unwrap();
    let lines = recv_lines(|b| agent.recv(b), usize::MAX);
    let got = by_name(&lines);
    assert_eq!(
        got["envoy.cluster.upstream_rq_total"],
        format!("2|c{tags},envoy.cluster_name:cds_egress_a")
    );
    assert!(!got.contains_key("envoy.cluster.upstream_rq_xx"));
    assert!(!got.contains_key("envoy.cluster.upstream_rq_time"));
    assert!(got.contains_key("envoy.cluster.upstream_cx_active"));
}

#[test]
fn plain_statsd_encodes_cluster_in_name() {
    let agent = UdpSocket::bind("127.0.0.1:0").unwrap();
    agent
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let opts = StatsdOptions {
        target: StatsdTarget::Udp(agent.local_addr().unwrap()),
        tags: false,
        flush_interval: NEVER,
    };
    let rec = StatsdRecorder::new(&opts, &labels()).unwrap();
    let stats = metrics::with_local_recorder(&rec, || ClusterStats::new("cds_b"));
    stats.rq_total.increment(1);
    stats.record_response(200, Instant::now());
    rec.flush().unwrap();
    let lines = recv_lines(|b| agent.recv(b), 3);
    assert!(
        lines.contains(&"envoy.cluster.cds_b.upstream_rq_total:1|c".to_string()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"envoy.cluster.cds_b.upstream_rq_2xx:1|c".to_string()),
        "{lines:?}"
    );
    assert!(lines.iter().all(|l| !l.contains('#')), "{lines:?}");
}

#[test]
fn unix_datagram_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dsd.socket");
    let agent = UnixDatagram::bind(&path).unwrap();
    agent
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let opts = StatsdOptions {
        target: StatsdTarget::Unix(path),
        tags: true,
        flush_interval: NEVER,
    };
    let rec = StatsdRecorder::new(&opts, &[]).unwrap();
    let c = metrics::with_local_recorder(
        &rec,
        || metrics::counter!("envoy_http_downstream_rq_total", "envoy_http_conn_manager_prefix" => "ingress"),
    );
    c.increment(7);
    rec.flush().unwrap();
    let lines = recv_lines(|b| agent.recv(b), 1);
    assert_eq!(
        lines,
        ["envoy.http.downstream_rq_total:7|c|#envoy.http_conn_manager_prefix:ingress"]
    );
}

#[test]
fn many_series_split_into_bounded_datagrams() {
    let agent = UdpSocket::bind("127.0.0.1:0").unwrap();
    agent
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let opts = StatsdOptions {
        target: StatsdTarget::Udp(agent.local_addr().unwrap()),
        tags: true,
        flush_interval: NEVER,
    };
    let rec = StatsdRecorder::new(&opts, &[]).unwrap();
    metrics::with_local_recorder(&rec, || {
        for i in 0..200 {
            metrics::counter!("envoy_cluster_upstream_cx_total", "envoy_cluster_name" => format!("cluster_{i}")).increment(1);
        }
    });
    rec.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 65536];
    let mut lines = 0;
    while lines < 200 && Instant::now() < deadline {
        if let Ok(n) = agent.recv(&mut buf) {
            assert!(n <= 1432, "datagram of {n} bytes");
            lines += std::str::from_utf8(&buf[..n]).unwrap().lines().count();
        }
    }
    assert_eq!(lines, 200);
}

#[test]
fn flush_thread_sends_on_its_interval() {
    let agent = UdpSocket::bind("127.0.0.1:0").unwrap();
    agent
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let opts = StatsdOptions {
        target: StatsdTarget::Udp(agent.local_addr().unwrap()),
        tags: true,
        flush_interval: Duration::from_millis(20),
    };
    let rec = StatsdRecorder::new(&opts, &[]).unwrap();
    let g = metrics::with_local_recorder(&rec, || metrics::gauge!("envoy_server_live"));
    g.set(1.0);
    let lines = recv_lines(|b| agent.recv(b), 1);
    assert_eq!(lines[0], "envoy.server.live:1|g");
}

#[test]
fn options_from_environment() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    };
    let none = TelemetryOptions::from_lookup(env(&[]), "m", "n").unwrap();
    assert_eq!(none, TelemetryOptions::default());
    let dsd =
        TelemetryOptions::from_lookup(env(&[("ENABLE_ENVOY_DOG_STATSD", "1")]), "m", "n").unwrap();
    let s = dsd.statsd.unwrap();
    assert_eq!(
        s.target,
        StatsdTarget::Udp("127.0.0.1:8125".parse().unwrap())
    );
    assert!(s.tags);
    let custom = TelemetryOptions::from_lookup(
        env(&[
            ("ENABLE_ENVOY_DOG_STATSD", "1"),
            ("STATSD_ADDRESS", "10.1.2.3"),
            ("STATSD_PORT", "9125"),
            ("STATSD_TAGS", "0"),
            ("ENABLE_ENVOY_STATS_TAGS", "1"),
        ]),
        "mesh-a",
        "node-b",
    )
    .unwrap();
    let s = custom.statsd.unwrap();
    assert_eq!(
        s.target,
        StatsdTarget::Udp("10.1.2.3:9125".parse().unwrap())
    );
    assert!(!s.tags);
    let tags = custom.stats_tags.unwrap();
    assert_eq!(
        (tags.mesh.as_str(), tags.virtual_node.as_str()),
        ("mesh-a", "node-b")
    );
    let uds = TelemetryOptions::from_lookup(
        env(&[
            ("ENABLE_ENVOY_DOG_STATSD", "1"),
            ("STATSD_SOCKET_PATH", "/var/run/dsd.socket"),
        ]),
        "m",
        "n",
    )
    .unwrap();
    assert_eq!(
        uds.statsd.unwrap().target,
        StatsdTarget::Unix("/var/run/dsd.socket".into())
    );
    for bad in [
        &[("ENABLE_ENVOY_DOG_STATSD", "1"), ("STATSD_PORT", "99999")][..],
        &[
            ("ENABLE_ENVOY_DOG_STATSD", "1"),
            ("STATSD_ADDRESS", "not an ip"),
        ][..],
        &[("ENABLE_ENVOY_DOG_STATSD", "yes")][..],
    ] {
        let owned: Vec<(String, String)> = bad
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let r = TelemetryOptions::from_lookup(
            |k| owned.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()),
            "m",
            "n",
        );
        assert!(
            matches!(r, Err(TelemetryError::InvalidEnv { .. })),
            "{bad:?}"
        );
    }
}

#[test]
fn late_install_with_options_is_refused() {
    install_metrics();
    assert!(install_metrics_with(&TelemetryOptions::default()).is_ok());
    let opts = TelemetryOptions {
        statsd: Some(StatsdOptions::default()),
        stats_tags: None,
    };
    assert!(matches!(
        install_metrics_with(&opts),
        Err(TelemetryError::AlreadyInstalled)
    ));
}
