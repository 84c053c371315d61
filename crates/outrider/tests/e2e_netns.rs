//! End to end in network namespaces: the `outrider` binary runs as UID 1337 behind the
//! `outrider iptables` rules in an `app` namespace wired by a veth pair to a `remote` one, as a
//! sidecar does in an ECS task.
//!
//! Needs root (each test prints `skipped: needs root` otherwise), `ip`, `iptables`, `curl` and
//! `setpriv`. Every test builds its own namespaces, so the fixed ports inside them never clash
//! and the tests may run in parallel; on a 2-core machine prefer
//! `cargo test -p outrider --test e2e_netns -- --test-threads=1`.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns, unwrap here

use std::convert::Infallible;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use outrider_test_support::dns::DnsServer;
use outrider_test_support::netns::{Netns, is_root, veth_pair};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const BIN: &str = env!("CARGO_BIN_EXE_outrider");
/// The proxy's UID, as in ECS; the rules leave its own traffic alone.
const PROXY_UID: &str = "1337";
/// Admin endpoint inside the app namespace.
const ADMIN: &str = "127.0.0.1:9901";
/// The app's own HTTP port (an `--app-ports` entry).
const APP_PORT: u16 = 8080;
/// The remote HTTP server's port.
const HTTP_PORT: u16 = 80;
/// The remote TCP echo server's port.
const ECHO_PORT: u16 = 7000;
/// Port of the TCP virtual service in the `--config` test (not the echo node's own port, so a
/// working connection proves the proxy routed it).
const TCP_SERVICE_PORT: u16 = 9000;
/// Upper bound on one client exchange or connect.
const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a spawned server or proxy may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between readiness polls of the proxy.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// curl's exit code for "couldn't connect" (a refused redirect).
const CURL_CONNECT_FAILED: i32 = 7;

/// Series of the proxy's `/stats/prometheus`: egress HTTP requests, egress TCP connections,
/// ingress HTTP requests, and requests the transparent proxy forwarded unchanged.
const EGRESS_HTTP_RQ: &str =
    r#"envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="egress"}"#;
const EGRESS_TCP_CX: &str = r#"envoy_tcp_downstream_cx_total{envoy_tcp_prefix="egress"}"#;
const INGRESS_HTTP_RQ: &str =
    r#"envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="ingress"}"#;
const PASSTHROUGH_RQ: &str = r#"envoy_cluster_upstream_rq_total{envoy_cluster_name="passthrough"}"#;

/// Two namespaces joined by a veth pair: `app` (10.231.N.1, proxy and app server) and `remote`
/// (10.231.N.2, HTTP on port 80 and a TCP echo on port 7000). Servers stop before the
/// namespaces go.
struct Topology {
    remote_servers: Servers,
    _app_server: Servers,
    app: Netns,
    remote: Netns,
    app_ip: IpAddr,
    remote_ip: IpAddr,
    /// Config files and proxy logs; readable by the proxy's UID.
    dir: TempDir,
}

/// HTTP and TCP echo servers running on a tokio runtime inside a namespace; stopped on drop.
struct Servers {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<io::Result<io::Result<()>>>>,
    echo_connections: Arc<AtomicU64>,
}

/// An `outrider run` process in the app namespace, as UID 1337; killed on drop.
struct Proxy {
    child: Child,
    log: PathBuf,
}

/// A whole HTTP response as curl saw it.
#[derive(Debug)]
struct Reply {
    status: u16,
    body: String,
}

/// A curl failure: its exit code and message.
#[derive(Debug)]
struct CurlError {
    code: Option<i32>,
    stderr: String,
}

impl Topology {
    /// Namespaces for test number `n` (the third octet of the addresses), with an IPv6 pair
    /// `fd00:231:n::1/64` and `::2` when `ipv6` is set.
    fn new(n: u8, ipv6: bool) -> io::Result<Topology> {
        let app = Netns::new()?;
        let remote = Netns::new()?;
        let app_ip: IpAddr = format!("10.231.{n}.1").parse().map_err(io::Error::other)?;
        let remote_ip: IpAddr = format!("10.231.{n}.2").parse().map_err(io::Error::other)?;
        let veth = veth_pair(
            &app,
            &remote,
            &format!("{app_ip}/24"),
            &format!("{remote_ip}/24"),
        )?;
        // Outside addresses must be routable for the OUTPUT chain to see connections to them
        // (verify's probe dials documentation addresses).
        app.default_route(&veth.a_dev, false)?;
        let mut http = vec![SocketAddr::new(remote_ip, HTTP_PORT)];
        if ipv6 {
            app.add_addr(&veth.a_dev, &format!("{}/64", v6(n, 1)))?;
            remote.add_addr(&veth.b_dev, &format!("{}/64", v6(n, 2)))?;
            http.push(SocketAddr::new(v6(n, 2), HTTP_PORT));
        }
        let remote_servers = Servers::start(
            &remote,
            "remote",
            http,
            vec![SocketAddr::new(remote_ip, ECHO_PORT)],
        )?;
        let app_server = Servers::start(
            &app,
            "app",
            vec![SocketAddr::from(([0, 0, 0, 0], APP_PORT))],
            Vec::new(),
        )?;
        let dir = TempDir::new()?;
        // The proxy runs as UID 1337 and must read its config from here.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        Ok(Topology {
            remote_servers,
            _app_server: app_server,
            app,
            remote,
            app_ip,
            remote_ip,
            dir,
        })
    }

    fn remote_http_url(&self) -> String {
        format!("http://{}:{HTTP_PORT}/", self.remote_ip)
    }

    fn remote_echo(&self) -> SocketAddr {
        SocketAddr::new(self.remote_ip, ECHO_PORT)
    }

    /// `outrider iptables <action> --netns app <flags>`; returns the exit code and stderr.
    fn iptables(&self, action: &str, flags: &[&str]) -> (i32, String) {
        let out = Command::new(BIN)
            .args(["iptables", action, "--netns", self.app.name()])
            .args(flags)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Like [`Topology::iptables`], failing the test unless it exits 0.
    fn iptables_ok(&self, action: &str, flags: &[&str]) {
        let (code, stderr) = self.iptables(action, flags);
        assert_eq!(code, 0, "outrider iptables {action} {flags:?}: {stderr}");
    }

    /// Starts the proxy with `args` after the listener flags and waits until it is ready.
    fn proxy(&self, args: &[&str]) -> Proxy {
        Proxy::start(&self.app, &self.dir.path().join("proxy.log"), args)
    }

    /// Writes `spec` as the proxy's config file and returns its path.
    fn write_config(&self, spec: &str) -> String {
        let path = self.dir.path().join("mesh.yaml");
        fs::write(&path, spec).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        path.to_string_lossy().into_owned()
    }

    /// `iptables-save -t nat` in the app namespace.
    fn nat_rules(&self) -> String {
        self.app.try_exec(&["iptables-save", "-t", "nat"]).unwrap()
    }
}

impl Servers {
    /// Binds every address inside `ns`, then serves until dropped: HTTP/1.1 answering 200
    /// with body `<name>\n`, and a TCP echo that first writes `<name>\n`.
    fn start(
        ns: &Netns,
        name: &'static str,
        http: Vec<SocketAddr>,
        echo: Vec<SocketAddr>,
    ) -> io::Result<Servers> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let echo_connections = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&echo_connections);
        let thread = ns.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let mut tasks = tokio::task::JoinSet::new();
                for addr in http {
                    tasks.spawn(serve_http(TcpListener::bind(addr).await?, name));
                }
                for addr in echo {
                    let listener = TcpListener::bind(addr).await?;
                    tasks.spawn(serve_echo(listener, name, Arc::clone(&counter)));
                }
                let _ = ready_tx.send(());
                let _ = stop_rx.await;
                Ok(())
            })
        })?;
        let mut servers = Servers {
            stop: Some(stop_tx),
            thread: Some(thread),
            echo_connections,
        };
        if ready_rx.recv_timeout(START_TIMEOUT).is_err() {
            // The thread ended (a bind failed) or hung; its error says which.
            let result = servers.thread.take().map(JoinHandle::join);
            return Err(io::Error::other(format!(
                "{name} servers did not start: {result:?}"
            )));
        }
        Ok(servers)
    }

    fn echo_connections(&self) -> u64 {
        self.echo_connections.load(Ordering::SeqCst)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Proxy {
    fn start(ns: &Netns, log: &Path, args: &[&str]) -> Proxy {
        let mut argv = vec![
            "setpriv",
            "--reuid",
            PROXY_UID,
            "--regid",
            PROXY_UID,
            "--clear-groups",
            BIN,
            "run",
            "--admin-addr",
            ADMIN,
            "--workers",
            "1",
            "--drain-wait-s",
            "0",
            "--log-level",
            "warning",
        ];
        if !args.contains(&"--egress-addr") {
            argv.extend([
                "--ingress-addr",
                "0.0.0.0:15000",
                "--egress-addr",
                "0.0.0.0:15001",
            ]);
        }
        argv.extend(args);
        let child = ns
            .command(&argv)
            .env_remove("APPMESH_RESOURCE_ARN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(log).unwrap())
            .spawn()
            .unwrap();
        let mut proxy = Proxy {
            child,
            log: log.to_path_buf(),
        };
        proxy.wait_ready(ns);
        proxy
    }

    fn wait_ready(&mut self, ns: &Netns) {
        let polls = START_TIMEOUT.as_millis() / POLL_INTERVAL.as_millis();
        for _ in 0..polls {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("proxy exited early ({status}): {}", self.log_text());
            }
            if curl(ns, &format!("http://{ADMIN}/ready")).is_ok_and(|r| r.status == 200) {
                return;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        panic!(
            "proxy not ready within {START_TIMEOUT:?}: {}",
            self.log_text()
        );
    }

    /// The real, effective, saved and filesystem UIDs of the running proxy.
    fn uids(&self) -> Vec<String> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .map(|ids| ids.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default()
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // `ip netns exec` and setpriv both exec, so this is the proxy itself.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the test can run: root, and setpriv to drop to the proxy's UID. Prints why not.
fn can_run() -> bool {
    if !is_root() {
        println!("skipped: needs root");
        return false;
    }
    let setpriv = Command::new("setpriv").arg("--version").output();
    if !setpriv.is_ok_and(|o| o.status.success()) {
        println!("skipped: setpriv (util-linux) not found");
        return false;
    }
    true
}

/// `fd00:231:<n>::<host>`.
fn v6(n: u8, host: u16) -> IpAddr {
    IpAddr::V6(std::net::Ipv6Addr::new(
        0xfd00,
        0x231,
        u16::from(n),
        0,
        0,
        0,
        0,
        host,
    ))
}

/// `GET url` with curl inside `ns` (as root, so egress rules apply to it).
fn curl(ns: &Netns, url: &str) -> Result<Reply, CurlError> {
    let timeout = IO_TIMEOUT.as_secs().to_string();
    let out = ns.exec(&[
        "curl",
        "-sS",
        "-g",
        "--noproxy",
        "*",
        "--max-time",
        &timeout,
        "-w",
        "\n%{http_code}",
        url,
    ]);
    if !out.status.success() {
        return Err(CurlError {
            code: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    Ok(Reply {
        status: status.trim().parse().unwrap_or(0),
        body: body.to_string(),
    })
}

/// `GET url` expecting 200; returns the body.
fn get_ok(ns: &Netns, url: &str) -> String {
    match curl(ns, url) {
        Ok(r) if r.status == 200 => r.body,
        Ok(r) => panic!("GET {url}: expected 200, got {} {:?}", r.status, r.body),
        Err(e) => panic!("GET {url}: curl exit {:?}: {}", e.code, e.stderr),
    }
}

/// `GET url` expecting a refused connection (a redirect to a port nobody listens on).
fn assert_refused(ns: &Netns, url: &str) {
    match curl(ns, url) {
        Err(e) if e.code == Some(CURL_CONNECT_FAILED) => {}
        Err(e) => panic!(
            "GET {url}: expected refused, curl exit {:?}: {}",
            e.code, e.stderr
        ),
        Ok(r) => panic!("GET {url}: expected refused, got {} {:?}", r.status, r.body),
    }
}

/// Connects to `addr` from inside `ns`, reads the echo server's greeting line, sends a line
/// and expects it back. Returns the greeting.
fn tcp_exchange(ns: &Netns, addr: SocketAddr) -> io::Result<String> {
    ns.run(move || {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        let mut writer = stream.try_clone()?;
        let mut reader = BufReader::new(stream);
        let mut greeting = String::new();
        if reader.read_line(&mut greeting)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        writer.write_all(b"ping\n")?;
        let mut echo = String::new();
        reader.read_line(&mut echo)?;
        if echo != "ping\n" {
            return Err(io::Error::other(format!("echo was {echo:?}")));
        }
        Ok(greeting.trim_end().to_string())
    })?
}

/// One series of the proxy's Prometheus text; 0 when absent.
fn metric(ns: &Netns, series: &str) -> u64 {
    let text = get_ok(ns, &format!("http://{ADMIN}/stats/prometheus"));
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        // Counters are whole numbers printed as floats.
        .map_or(0, |v| v as u64)
}

/// `iptables-save` output without its timestamped comment lines.
fn rules_only(saved: &str) -> Vec<String> {
    saved
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

async fn serve_http(listener: TcpListener, name: &'static str) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let svc = service_fn(move |_req| async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("x-served-by", name)
                    .body(Full::new(Bytes::from(format!("{name}\n"))))
                    .unwrap(),
            )
        });
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn serve_echo(listener: TcpListener, name: &'static str, connections: Arc<AtomicU64>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        connections.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            if stream
                .write_all(format!("{name}\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
            let mut buf = [0u8; 1024];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// The `--config` mesh: the app node calls `echo.local`, a router on TCP port 9000 whose route
/// sends everything to the echo node at the remote address, port 7000.
fn tcp_service_spec(egress_filter: &str, app_ip: IpAddr, remote_ip: IpAddr) -> String {
    format!(
        r"meshName: m
spec: {{egressFilter: {{type: {egress_filter}}}}}
---
meshName: m
virtualNodeName: app
spec:
  backends: [{{virtualService: {{virtualServiceName: echo.local}}}}]
  listeners: [{{portMapping: {{port: {APP_PORT}, protocol: http}}}}]
  serviceDiscovery: {{dns: {{hostname: {app_ip}}}}}
---
meshName: m
virtualNodeName: echo
spec:
  listeners: [{{portMapping: {{port: {ECHO_PORT}, protocol: tcp}}}}]
  serviceDiscovery: {{dns: {{hostname: {remote_ip}}}}}
---
meshName: m
virtualRouterName: echo-router
spec:
  listeners: [{{portMapping: {{port: {TCP_SERVICE_PORT}, protocol: tcp}}}}]
---
meshName: m
virtualRouterName: echo-router
routeName: to-echo
spec:
  tcpRoute:
    action: {{weightedTargets: [{{virtualNode: echo, weight: 1}}]}}
---
meshName: m
virtualServiceName: echo.local
spec: {{provider: {{virtualRouter: {{virtualRouterName: echo-router}}}}}}
"
    )
}

#[test]
fn transparent_sidecar_intercepts_both_directions() {
    if !can_run() {
        return;
    }
    let t = Topology::new(1, false).unwrap();
    let url = t.remote_http_url();
    let echo = t.remote_echo();
    let rules = ["--app-ports", "8080", "--ignored-uid", PROXY_UID];
    // Someone else's rule in the same table and chain; clean must leave it.
    t.app
        .try_exec(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "udp",
            "--dport",
            "9999",
            "-m",
            "comment",
            "--comment",
            "foreign-rule",
            "-j",
            "RETURN",
        ])
        .unwrap();
    t.iptables_ok("apply", &rules);

    let proxy = t.proxy(&[]);
    assert_eq!(proxy.uids(), [PROXY_UID; 4]);
    assert_eq!(get_ok(&t.app, &url), "remote\n");
    assert_eq!(tcp_exchange(&t.app, echo).unwrap(), "remote");
    // Exactly what the app sent: the proxy's own upstream connections were not redirected
    // back into it (a loop would fail the calls or multiply the counters).
    assert_eq!(metric(&t.app, EGRESS_HTTP_RQ), 1);
    assert_eq!(metric(&t.app, PASSTHROUGH_RQ), 1);
    assert_eq!(metric(&t.app, EGRESS_TCP_CX), 1);
    assert_eq!(t.remote_servers.echo_connections(), 1);

    // Inbound to the app port goes through the ingress listener to the app server.
    let app_url = format!("http://{}:{APP_PORT}/", t.app_ip);
    assert_eq!(get_ok(&t.remote, &app_url), "app\n");
    assert_eq!(metric(&t.app, INGRESS_HTTP_RQ), 1);
    assert_eq!(metric(&t.app, EGRESS_HTTP_RQ), 1);

    // Without the proxy the redirect lands on a closed port.
    drop(proxy);
    assert_refused(&t.app, &url);
    let err = tcp_exchange(&t.app, echo).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    assert!(curl(&t.remote, &app_url).is_err());

    let proxy = t.proxy(&[]);
    assert_eq!(get_ok(&t.app, &url), "remote\n");
    assert_eq!(tcp_exchange(&t.app, echo).unwrap(), "remote");
    assert_eq!(get_ok(&t.remote, &app_url), "app\n");
    assert_eq!(metric(&t.app, EGRESS_HTTP_RQ), 1);
    assert_eq!(metric(&t.app, EGRESS_TCP_CX), 1);
    assert_eq!(metric(&t.app, INGRESS_HTTP_RQ), 1);
    drop(proxy);

    // An ignored port bypasses the proxy; other ports are still redirected. Apply rebuilds.
    t.iptables_ok(
        "apply",
        &[&rules[..], &["--egress-ignored-ports", "7000"]].concat(),
    );
    assert_eq!(tcp_exchange(&t.app, echo).unwrap(), "remote");
    assert_refused(&t.app, &url);

    // An ignored address bypasses the proxy for every port.
    let ignored_ip = format!("{}/32", t.remote_ip);
    t.iptables_ok(
        "apply",
        &[&rules[..], &["--egress-ignored-ips", &ignored_ip]].concat(),
    );
    assert_eq!(get_ok(&t.app, &url), "remote\n");
    assert_eq!(tcp_exchange(&t.app, echo).unwrap(), "remote");

    // Clean restores direct connectivity and keeps the foreign rule.
    t.iptables_ok("apply", &rules);
    assert_refused(&t.app, &url);
    t.iptables_ok("clean", &rules);
    assert_eq!(get_ok(&t.app, &url), "remote\n");
    assert_eq!(tcp_exchange(&t.app, echo).unwrap(), "remote");
    assert_eq!(get_ok(&t.remote, &app_url), "app\n");
    let saved = t.nat_rules();
    assert!(saved.contains("foreign-rule"), "{saved}");
    assert!(!saved.contains("OUTRIDER"), "{saved}");
}

#[test]
fn configured_sidecar_routes_tcp_by_port_and_filters_egress() {
    if !can_run() {
        return;
    }
    let t = Topology::new(2, false).unwrap();
    let url = t.remote_http_url();
    t.iptables_ok(
        "apply",
        &["--app-ports", "8080", "--ignored-uid", PROXY_UID],
    );
    // Nothing listens on .99; only the proxy can turn it into the echo node's endpoint.
    let service = SocketAddr::new("10.231.2.99".parse().unwrap(), TCP_SERVICE_PORT);

    let config = t.write_config(&tcp_service_spec("DROP_ALL", t.app_ip, t.remote_ip));
    let proxy = t.proxy(&["--config", &config, "--node", "app"]);
    assert_eq!(tcp_exchange(&t.app, service).unwrap(), "remote");
    assert_eq!(t.remote_servers.echo_connections(), 1);
    // Unknown destinations are refused: 404 for HTTP, a closed connection for TCP.
    match curl(&t.app, &url) {
        Ok(r) => assert_eq!(r.status, 404, "{r:?}"),
        Err(e) => panic!(
            "DROP_ALL: expected 404, curl exit {:?}: {}",
            e.code, e.stderr
        ),
    }
    assert!(tcp_exchange(&t.app, t.remote_echo()).is_err());
    assert_eq!(t.remote_servers.echo_connections(), 1);
    // Inbound still reaches the app through its listener.
    let app_url = format!("http://{}:{APP_PORT}/", t.app_ip);
    assert_eq!(get_ok(&t.remote, &app_url), "app\n");
    drop(proxy);

    let config = t.write_config(&tcp_service_spec("ALLOW_ALL", t.app_ip, t.remote_ip));
    let _proxy = t.proxy(&["--config", &config, "--node", "app"]);
    assert_eq!(tcp_exchange(&t.app, service).unwrap(), "remote");
    assert_eq!(get_ok(&t.app, &url), "remote\n");
    assert_eq!(tcp_exchange(&t.app, t.remote_echo()).unwrap(), "remote");
    assert_eq!(t.remote_servers.echo_connections(), 3);
}

#[test]
fn ipv6_egress_goes_through_the_proxy() {
    if !can_run() {
        return;
    }
    let disabled = fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6");
    if !disabled.is_ok_and(|v| v.trim() == "0") {
        println!("skipped: IPv6 is disabled in this kernel");
        return;
    }
    let t = match Topology::new(3, true) {
        Ok(t) => t,
        Err(e) => {
            println!("skipped: cannot set up IPv6 namespaces: {e}");
            return;
        }
    };
    let url = format!("http://[{}]:{HTTP_PORT}/", v6(3, 2));
    t.iptables_ok(
        "apply",
        &["--app-ports", "8080", "--ignored-uid", PROXY_UID, "--ipv6"],
    );
    assert!(t.nat_rules().contains("OUTRIDER_EGRESS"));
    assert!(
        t.app
            .try_exec(&["ip6tables-save", "-t", "nat"])
            .unwrap()
            .contains("OUTRIDER_EGRESS")
    );
    assert_refused(&t.app, &url);

    let _proxy = t.proxy(&[
        "--ingress-addr",
        "[::]:15000",
        "--egress-addr",
        "[::]:15001",
    ]);
    assert_eq!(get_ok(&t.app, &url), "remote\n");
    assert_eq!(metric(&t.app, EGRESS_HTTP_RQ), 1);
    assert_eq!(metric(&t.app, PASSTHROUGH_RQ), 1);

    t.iptables_ok("clean", &["--ipv6"]);
    assert!(
        !t.app
            .try_exec(&["ip6tables-save", "-t", "nat"])
            .unwrap()
            .contains("OUTRIDER")
    );
    assert_eq!(get_ok(&t.app, &url), "remote\n");
    assert_eq!(metric(&t.app, EGRESS_HTTP_RQ), 1);
}

#[test]
fn verify_reports_whether_rules_are_in_place() {
    if !can_run() {
        return;
    }
    let t = Topology::new(4, false).unwrap();
    let rules = ["--app-ports", "8080", "--ignored-uid", PROXY_UID];
    let (code, stderr) = t.iptables("verify", &rules);
    assert_eq!(code, 1, "verify without rules: {stderr}");
    t.iptables_ok("apply", &rules);
    let (code, stderr) = t.iptables("verify", &rules);
    assert_eq!(code, 0, "verify with rules: {stderr}");
    // Apply is idempotent: a second run leaves the same table and still verifies.
    let first = rules_only(&t.nat_rules());
    t.iptables_ok("apply", &rules);
    assert_eq!(rules_only(&t.nat_rules()), first);
    let (code, stderr) = t.iptables("verify", &rules);
    assert_eq!(code, 0, "verify after a second apply: {stderr}");
    // Different options are a different plan.
    let (code, _) = t.iptables(
        "verify",
        &["--app-ports", "9090", "--ignored-uid", PROXY_UID],
    );
    assert_eq!(code, 1, "verify of another plan");
    t.iptables_ok("clean", &rules);
    let (code, stderr) = t.iptables("verify", &rules);
    assert_eq!(code, 1, "verify after clean: {stderr}");
}

/// Port of the second remote TCP echo server (the shared-port test's `b` service).
const SECOND_ECHO_PORT: u16 = 7001;
/// DNS re-resolution period of the shared-port test's proxy, so an answer change lands fast.
const FAST_DNS_REFRESH: &str = "100ms";
/// Polls for a DNS change to reach the proxy (each at most one short exchange plus a pause).
const DNS_CHANGE_POLLS: usize = 50;

/// The test DNS server on a loopback port of a namespace, served by its own runtime so the
/// test thread can change its answers; stops on drop, before the namespace goes.
struct NsDns {
    server: Option<DnsServer>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl NsDns {
    fn start(ns: &Netns) -> NsDns {
        let (runtime, server) = ns
            .run(|| {
                // Sockets belong to the namespace they were opened in, whichever thread serves
                // them later; the worker thread keeps answering after `run` returns.
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .unwrap();
                let server = rt.block_on(DnsServer::start()).unwrap();
                (rt, server)
            })
            .unwrap();
        NsDns {
            server: Some(server),
            runtime: Some(runtime),
        }
    }

    fn server(&self) -> &DnsServer {
        self.server.as_ref().unwrap()
    }
}

impl Drop for NsDns {
    fn drop(&mut self) {
        // The server's tasks are aborted on the runtime that runs them.
        drop(self.server.take());
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Two TCP virtual services on the same port 9000, `a.local` (to the echo on port 7000) and
/// `b.local` (to the echo on port 7001), each behind a router, with a DROP_ALL mesh.
fn shared_port_spec(app_ip: IpAddr, remote_ip: IpAddr) -> String {
    let mut spec = format!(
        r"meshName: m
spec: {{egressFilter: {{type: DROP_ALL}}}}
---
meshName: m
virtualNodeName: app
spec:
  backends:
    - {{virtualService: {{virtualServiceName: a.local}}}}
    - {{virtualService: {{virtualServiceName: b.local}}}}
  listeners: [{{portMapping: {{port: {APP_PORT}, protocol: http}}}}]
  serviceDiscovery: {{dns: {{hostname: {app_ip}}}}}
"
    );
    for (svc, echo_port) in [("a", ECHO_PORT), ("b", SECOND_ECHO_PORT)] {
        spec.push_str(&format!(
            r"---
meshName: m
virtualNodeName: echo-{svc}
spec:
  listeners: [{{portMapping: {{port: {echo_port}, protocol: tcp}}}}]
  serviceDiscovery: {{dns: {{hostname: {remote_ip}}}}}
---
meshName: m
virtualRouterName: router-{svc}
spec:
  listeners: [{{portMapping: {{port: {TCP_SERVICE_PORT}, protocol: tcp}}}}]
---
meshName: m
virtualRouterName: router-{svc}
routeName: to-{svc}
spec:
  tcpRoute:
    action: {{weightedTargets: [{{virtualNode: echo-{svc}, weight: 1}}]}}
---
meshName: m
virtualServiceName: {svc}.local
spec: {{provider: {{virtualRouter: {{virtualRouterName: router-{svc}}}}}}}
"
        ));
    }
    spec
}

#[test]
fn tcp_services_sharing_a_port_are_told_apart_by_address() {
    if !can_run() {
        return;
    }
    let t = Topology::new(5, false).unwrap();
    let second = Servers::start(
        &t.remote,
        "second",
        Vec::new(),
        vec![SocketAddr::new(t.remote_ip, SECOND_ECHO_PORT)],
    )
    .unwrap();
    t.iptables_ok(
        "apply",
        &["--app-ports", "8080", "--ignored-uid", PROXY_UID],
    );
    // Nothing listens on these on-link addresses: only the proxy can reach an echo through them.
    let ip_a: IpAddr = "10.231.5.98".parse().unwrap();
    let ip_b: IpAddr = "10.231.5.99".parse().unwrap();
    let unnamed = SocketAddr::new("10.231.5.97".parse().unwrap(), TCP_SERVICE_PORT);
    let dns = NsDns::start(&t.app);
    dns.server().set("a.local", &[ip_a]);
    dns.server().set("b.local", &[ip_b]);
    let resolver = dns.server().addr().to_string();

    let config = t.write_config(&shared_port_spec(t.app_ip, t.remote_ip));
    let proxy = t.proxy(&[
        "--config",
        &config,
        "--node",
        "app",
        "--dns-resolver",
        &resolver,
        "--dns-refresh",
        FAST_DNS_REFRESH,
    ]);
    let to_a = SocketAddr::new(ip_a, TCP_SERVICE_PORT);
    let to_b = SocketAddr::new(ip_b, TCP_SERVICE_PORT);
    let exchange = |addr| {
        tcp_exchange(&t.app, addr)
            .unwrap_or_else(|e| panic!("{addr}: {e}; proxy log: {}", proxy.log_text()))
    };
    assert_eq!(exchange(to_a), "remote");
    assert_eq!(exchange(to_b), "second");
    assert_eq!(exchange(to_a), "remote");
    assert_eq!(t.remote_servers.echo_connections(), 2);
    assert_eq!(second.echo_connections(), 1);
    // An address neither name resolves to, on the shared port: DROP_ALL refuses it.
    assert!(tcp_exchange(&t.app, unnamed).is_err());

    // The names swap addresses; the proxy follows the new answers.
    dns.server().set("a.local", &[ip_b]);
    dns.server().set("b.local", &[ip_a]);
    let moved = (0..DNS_CHANGE_POLLS).any(|_| {
        if tcp_exchange(&t.app, to_a).is_ok_and(|g| g == "second") {
            return true;
        }
        std::thread::sleep(POLL_INTERVAL);
        false
    });
    assert!(moved, "a.local's new address never reached the proxy");
    assert_eq!(exchange(to_b), "remote");
    // Each exchange above that reached an echo went through the egress listener.
    assert!(metric(&t.app, EGRESS_TCP_CX) >= 5);
}
