//! End to end: operating the proxy — hot reload (file write, SIGHUP, `POST /reload`), a bad
//! config refused while the old one serves, reload under load, graceful drain on SIGTERM and
//! `POST /drain_listeners`, and a second SIGTERM.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns, unwrap here

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{
    CLIENT, H1, H2, client, h1_request, h2_request, listening_line, local_node, mesh, node, route,
    router, service_node, service_router, stream,
};
use http::{Method, StatusCode};
use outrider_app::{ConfigSource, ProxyOptions, RunningProxy};
use outrider_config::Selector;
use outrider_discovery::ResolverConfig;
use outrider_test_support::dns::DnsServer;
use outrider_test_support::faults::FaultServer;
use outrider_test_support::servers::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_outrider");
/// How long a spawned proxy may take to start, or to exit after being told to.
const PROCESS_WAIT: Duration = Duration::from_secs(10);
const GRACE: Duration = Duration::from_millis(200);
/// A reload must take effect within this long of the write (the contract's bound).
const RELOAD_BOUND: Duration = Duration::from_secs(1);
/// Upper bound on polling for something that should happen soon.
const POLL_LIMIT: Duration = Duration::from_secs(5);
const SERVICE: &str = "svc.local";

/// Kills the child on drop, so a failing test leaves no proxy behind.
struct ChildGuard(Child);

/// A proxy process and its addresses.
struct Proc {
    child: ChildGuard,
    ingress: SocketAddr,
    egress: SocketAddr,
    admin: SocketAddr,
}

impl ChildGuard {
    /// Waits up to `limit` for the child to exit.
    async fn wait_for_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if let Some(status) = self.0.try_wait().unwrap() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.0.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} failed");
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The spec: `client` calls `svc.local`, a router whose one route splits between nodes `a`
/// and `b` by `weights`; the client's own app listens on `app_port`.
fn spec(a: u16, b: u16, weights: (u32, u32), app_port: u16) -> String {
    stream(&[
        mesh("DROP_ALL"),
        client(&[SERVICE], &[(app_port, "http")]),
        local_node("a", a, "http"),
        local_node("b", b, "http"),
        router("r", &[(8080, "http")]),
        service_router(SERVICE, "r"),
        route(
            "r",
            "split",
            10,
            "httpRoute",
            "{prefix: /}",
            &[("a", weights.0), ("b", weights.1)],
        ),
    ])
}

fn selector() -> Selector {
    Selector {
        mesh: None,
        node: Some(CLIENT.to_string()),
        gateway: None,
    }
}

/// Writes `text` as `mesh.yaml` in `dir` and returns the file's path.
fn write_spec(dir: &Path, text: &str) -> PathBuf {
    let file = dir.join("mesh.yaml");
    std::fs::write(&file, text).unwrap();
    file
}

/// Starts an in-process proxy from the files in `paths`, reloadable, watching them if `watch`.
async fn start_from_files(paths: &[PathBuf], watch: bool) -> RunningProxy {
    outrider_app::start(options(paths, watch)).await.unwrap()
}

/// Options for a reloadable in-process proxy on 127.0.0.1:0.
fn options(paths: &[PathBuf], watch: bool) -> ProxyOptions {
    let built = outrider_config::build(paths, &selector()).unwrap();
    let mut opts = ProxyOptions::local(Some(built.snapshot));
    opts.config_source = Some(ConfigSource {
        paths: paths.to_vec(),
        selector: selector(),
    });
    opts.watch_config = watch;
    opts
}

/// One HTTP/1.1 exchange over a fresh connection; the status (0 if none) and the body.
async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_string();
        Some((status, body))
    };
    tokio::time::timeout(POLL_LIMIT, exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or((0, String::new()))
}

/// The scalar value of the first `"key": value` in a JSON text, without quotes.
fn field(json: &str, key: &str) -> Option<String> {
    let rest = json.split(&format!("\"{key}\":")).nth(1)?.trim_start();
    let value = match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next()?,
        None => rest.split([',', '\n', '}']).next()?.trim(),
    };
    Some(value.to_string())
}

/// A counter's value in the Prometheus text of the admin endpoint (0 when absent).
async fn counter(admin: SocketAddr, name: &str) -> u64 {
    let (_, text) = http(admin, "GET", "/stats/prometheus").await;
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// `x-served-by` of one request to `svc.local` through `egress` on a fresh connection.
async fn served_by(egress: SocketAddr) -> Option<String> {
    let mut c = H1::connect(egress).await;
    let r = c.get(SERVICE, "/").await;
    (r.status == StatusCode::OK).then(|| r.served_by().unwrap_or_default().to_string())
}

/// Polls until requests are served by `name`; returns how long that took.
async fn wait_served_by(egress: SocketAddr, name: &str) -> Duration {
    let start = Instant::now();
    while start.elapsed() < POLL_LIMIT {
        if served_by(egress).await.as_deref() == Some(name) {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{name} never served within {POLL_LIMIT:?}");
}

/// Starts the binary on 127.0.0.1:0 listeners with `extra` flags and waits for its start-up line.
async fn spawn_proxy(config: &Path, extra: &[&str]) -> Proc {
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--config",
            config.to_str().unwrap(),
            "--node",
            CLIENT,
        ])
        .args([
            "--ingress-addr",
            "127.0.0.1:0",
            "--egress-addr",
            "127.0.0.1:0",
        ])
        .args(["--admin-addr", "127.0.0.1:0", "--log-level", "warning"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let guard = ChildGuard(child);
    // Keep draining stderr so the proxy never blocks on a full pipe.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let (ingress, egress, admin) = tokio::time::timeout(PROCESS_WAIT, async {
        loop {
            let line = rx
                .recv()
                .await
                .expect("proxy exited before its start-up line");
            if let Some(addrs) = listening_line(&line) {
                break addrs;
            }
        }
    })
    .await
    .expect("no start-up line");
    // Keep the pipe drained for the rest of the test.
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    Proc {
        child: guard,
        ingress,
        egress,
        admin,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_by_file_write_takes_effect_within_a_second() {
    let (a, b) = (TestServer::http("a"), TestServer::http("b"));
    let (pa, pb) = (a.addr().port(), b.addr().port());
    let dir = tempfile::tempdir().unwrap();
    let file = write_spec(dir.path(), &spec(pa, pb, (100, 0), 9));
    // A directory config, as a ConfigMap mount is.
    let proxy = start_from_files(&[dir.path().to_path_buf()], true).await;
    let egress = proxy.addrs().egress;
    assert_eq!(served_by(egress).await.as_deref(), Some("a"));
    assert_eq!(proxy.config_version(), 1);

    std::fs::write(&file, spec(pa, pb, (0, 100), 9)).unwrap();
    let took = wait_served_by(egress, "b").await;
    assert!(took < RELOAD_BOUND, "reload took {took:?}");
    assert_eq!(proxy.config_version(), 2);
    let admin = proxy.addrs().admin.unwrap();
    let (_, info) = http(admin, "GET", "/server_info").await;
    assert_eq!(
        field(&info, "config_version").as_deref(),
        Some("2"),
        "{info}"
    );
    assert_eq!(field(&info, "trigger").as_deref(), Some("files"), "{info}");
    let (_, dump) = http(admin, "GET", "/config_dump").await;
    assert_eq!(field(&dump, "config_version").as_deref(), Some("2"));
    assert!(field(&info, "config_hash").is_some_and(|h| !h.is_empty()));
    assert_eq!(field(&dump, "config_hash"), field(&info, "config_hash"));
    proxy.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_is_refused_counted_and_the_old_one_serves() {
    let (a, b) = (TestServer::http("a"), TestServer::http("b"));
    let (pa, pb) = (a.addr().port(), b.addr().port());
    let dir = tempfile::tempdir().unwrap();
    let file = write_spec(dir.path(), &spec(pa, pb, (100, 0), 9));
    let proxy = start_from_files(std::slice::from_ref(&file), false).await;
    let (egress, admin) = (proxy.addrs().egress, proxy.addrs().admin.unwrap());
    let failures = counter(admin, "outrider_config_reload_failures_total").await;

    // A route to a node that does not exist.
    let broken = spec(pa, pb, (0, 100), 9).replace("virtualNode: b,", "virtualNode: ghost,");
    std::fs::write(&file, broken).unwrap();
    let (status, body) = http(admin, "POST", "/reload").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("ghost"), "{body}");
    assert!(counter(admin, "outrider_config_reload_failures_total").await > failures);
    assert_eq!(proxy.config_version(), 1);
    assert_eq!(served_by(egress).await.as_deref(), Some("a"));
    let (ready, _) = http(admin, "GET", "/ready").await;
    assert_eq!(ready, 200);

    // Fixed: the same endpoint applies it.
    let reloads = counter(admin, "outrider_config_reload_total").await;
    std::fs::write(&file, spec(pa, pb, (0, 100), 9)).unwrap();
    let (status, body) = http(admin, "POST", "/reload").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(field(&body, "changed").as_deref(), Some("true"), "{body}");
    assert_eq!(
        field(&body, "config_version").as_deref(),
        Some("2"),
        "{body}"
    );
    assert_eq!(served_by(egress).await.as_deref(), Some("b"));
    assert!(counter(admin, "outrider_config_reload_total").await > reloads);
    // Nothing changed: nothing swapped.
    let (_, body) = http(admin, "POST", "/reload").await;
    assert_eq!(field(&body, "changed").as_deref(), Some("false"), "{body}");
    assert_eq!(
        field(&body, "config_version").as_deref(),
        Some("2"),
        "{body}"
    );
    proxy.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_without_config_files_is_a_conflict() {
    let proxy = outrider_app::start(ProxyOptions::local(None))
        .await
        .unwrap();
    let (status, _) = http(proxy.addrs().admin.unwrap(), "POST", "/reload").await;
    assert_eq!(status, 409);
    let (status, _) = http(proxy.addrs().admin.unwrap(), "GET", "/reload").await;
    assert_eq!(status, 405);
    proxy.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_loses_no_request() {
    let (a, b) = (TestServer::http("a"), TestServer::http("b"));
    let (pa, pb) = (a.addr().port(), b.addr().port());
    let dir = tempfile::tempdir().unwrap();
    let file = write_spec(dir.path(), &spec(pa, pb, (100, 0), 9));
    let proxy = start_from_files(std::slice::from_ref(&file), true).await;
    let egress = proxy.addrs().egress;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let first_b: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, first_b) =
            (stop.clone(), ok.clone(), failed.clone(), first_b.clone());
        clients.push(tokio::spawn(async move {
            // Keep-alive connections: the swap must not break the ones already open.
            let mut c = H1::connect(egress).await;
            for _ in 0..100_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let r = c.send(h1_request(Method::GET, SERVICE, "/", &[])).await;
                if r.status != StatusCode::OK {
                    failed.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                ok.fetch_add(1, Ordering::SeqCst);
                if r.served_by() == Some("b") {
                    first_b.lock().unwrap().get_or_insert_with(Instant::now);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(b.hits() == 0 && a.hits() > 0);
    let written = Instant::now();
    std::fs::write(&file, spec(pa, pb, (0, 100), 9)).unwrap();
    let limit = written + POLL_LIMIT;
    while first_b.lock().unwrap().is_none() && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let hits_a = a.hits();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let first_b = first_b.lock().unwrap().expect("b never served");
    let took = first_b.duration_since(written);
    assert!(took < RELOAD_BOUND, "reload took {took:?}");
    assert_eq!(failed.load(Ordering::SeqCst), 0, "failed requests");
    assert!(
        ok.load(Ordering::SeqCst) > 100,
        "too few requests to mean anything"
    );
    // Once b served, a got at most the requests already in flight.
    assert!(a.hits() <= hits_a + 4, "a kept serving after the reload");
    proxy.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_listeners_closes_ingress_and_keeps_egress() {
    let (a, b) = (TestServer::http("a"), TestServer::http("b"));
    let app = TestServer::http("app");
    let dir = tempfile::tempdir().unwrap();
    let file = write_spec(
        dir.path(),
        &spec(
            a.addr().port(),
            b.addr().port(),
            (100, 0),
            app.addr().port(),
        ),
    );
    let proxy = start_from_files(&[file], false).await;
    let addrs = proxy.addrs();
    let admin = addrs.admin.unwrap();
    assert_eq!(http(addrs.ingress, "GET", "/").await.0, 200);
    assert_eq!(http(admin, "GET", "/ready").await.0, 200);

    assert_eq!(http(admin, "POST", "/drain_listeners").await.0, 200);
    assert_eq!(http(admin, "GET", "/ready").await.0, 503);
    tokio::time::timeout(POLL_LIMIT, proxy.drain_requested())
        .await
        .unwrap();
    let refused = wait_refused(addrs.ingress).await;
    assert!(refused, "ingress still accepts after /drain_listeners");
    assert_eq!(served_by(addrs.egress).await.as_deref(), Some("a"));
    proxy.shutdown(GRACE).await;
}

/// Polls until a connection to `addr` is refused.
async fn wait_refused(addr: SocketAddr) -> bool {
    let start = Instant::now();
    while start.elapsed() < POLL_LIMIT {
        if TcpStream::connect(addr).await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_binary() {
    let (a, b) = (TestServer::http("a"), TestServer::http("b"));
    let (pa, pb) = (a.addr().port(), b.addr().port());
    let dir = tempfile::tempdir().unwrap();
    let file = write_spec(dir.path(), &spec(pa, pb, (100, 0), 9));
    let proc = spawn_proxy(&file, &["--no-watch"]).await;
    assert_eq!(served_by(proc.egress).await.as_deref(), Some("a"));

    std::fs::write(&file, spec(pa, pb, (0, 100), 9)).unwrap();
    // Not watching: the write alone changes nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(served_by(proc.egress).await.as_deref(), Some("a"));

    proc.child.signal("HUP");
    let took = wait_served_by(proc.egress, "b").await;
    assert!(took < RELOAD_BOUND, "reload took {took:?}");
    assert_eq!(counter(proc.admin, "outrider_config_reload_total").await, 1);
    let (_, info) = http(proc.admin, "GET", "/server_info").await;
    assert_eq!(
        field(&info, "config_version").as_deref(),
        Some("2"),
        "{info}"
    );
    assert_eq!(field(&info, "trigger").as_deref(), Some("signal"), "{info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_watch_and_refusal_in_the_binary() {
    let (a, b) = (TestServer::http("a"), TestServer::http("b"));
    let (pa, pb) = (a.addr().port(), b.addr().port());
    let dir = tempfile::tempdir().unwrap();
    let file = write_spec(dir.path(), &spec(pa, pb, (100, 0), 9));
    let proc = spawn_proxy(dir.path(), &[]).await;
    assert_eq!(served_by(proc.egress).await.as_deref(), Some("a"));

    std::fs::write(&file, "meshName: m\nthis is: [not valid").unwrap();
    let start = Instant::now();
    while counter(proc.admin, "outrider_config_reload_failures_total").await == 0 {
        assert!(
            start.elapsed() < POLL_LIMIT,
            "the bad write was never counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(served_by(proc.egress).await.as_deref(), Some("a"));

    std::fs::write(&file, spec(pa, pb, (0, 100), 9)).unwrap();
    let took = wait_served_by(proc.egress, "b").await;
    assert!(took < RELOAD_BOUND, "reload took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_gracefully_and_exits_zero() {
    let (a, b) = (TestServer::http("a"), TestServer::http("b"));
    let app = FaultServer::start("app").await.unwrap();
    let slow = Duration::from_millis(1500);
    app.faults()
        .delay_ms
        .store(slow.as_millis() as u64, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let file = write_spec(
        dir.path(),
        &spec(
            a.addr().port(),
            b.addr().port(),
            (100, 0),
            app.addr().port(),
        ),
    );
    let mut proc = spawn_proxy(&file, &["--drain-wait-s", "8"]).await;
    assert_eq!(http(proc.admin, "GET", "/ready").await.0, 200);

    // A keep-alive client with a slow request in flight on ingress.
    let mut keep_alive = H1::connect(proc.ingress).await;
    let in_flight = tokio::spawn(async move {
        keep_alive
            .send(h1_request(Method::GET, "app", "/", &[]))
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let signalled = Instant::now();
    proc.child.signal("TERM");

    let start = Instant::now();
    while http(proc.admin, "GET", "/ready").await.0 != 503 {
        assert!(start.elapsed() < POLL_LIMIT, "/ready never turned 503");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        wait_refused(proc.ingress).await,
        "ingress accepts during the drain"
    );
    // The app's own calls still work.
    assert_eq!(served_by(proc.egress).await.as_deref(), Some("a"));
    assert!(
        signalled.elapsed() < slow,
        "checks ran after the slow request"
    );

    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("connection"), Some("close"));
    let exit = proc
        .child
        .wait_for_exit(PROCESS_WAIT)
        .await
        .expect("proxy did not exit after the drain");
    assert!(exit.success(), "{exit:?}");
    // The quiet period ended the drain, well before the 8 s wait.
    assert!(signalled.elapsed() < Duration::from_secs(6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_sigterm_exits_at_once() {
    let (a, b) = (TestServer::http("a"), TestServer::http("b"));
    let dir = tempfile::tempdir().unwrap();
    let file = write_spec(
        dir.path(),
        &spec(a.addr().port(), b.addr().port(), (100, 0), 9),
    );
    let mut proc = spawn_proxy(&file, &["--drain-wait-s", "60"]).await;
    // An open egress connection keeps the drain from ending early.
    let mut held = H1::connect(proc.egress).await;
    assert_eq!(held.get(SERVICE, "/").await.status, StatusCode::OK);

    proc.child.signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        proc.child.0.try_wait().unwrap().is_none(),
        "exited before the drain wait"
    );
    let second = Instant::now();
    proc.child.signal("TERM");
    let exit = proc
        .child
        .wait_for_exit(PROCESS_WAIT)
        .await
        .expect("no exit after a second SIGTERM");
    assert!(exit.success(), "{exit:?}");
    assert!(second.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_starts_discovery_for_new_clusters() {
    let (a, b, c) = (
        TestServer::http("a"),
        TestServer::http("b"),
        TestServer::http("c"),
    );
    let dns = DnsServer::start().await.unwrap();
    dns.set("c.test.local", &["127.0.0.1".parse().unwrap()]);
    let (pa, pb) = (a.addr().port(), b.addr().port());
    let dir = tempfile::tempdir().unwrap();
    let file = write_spec(dir.path(), &spec(pa, pb, (100, 0), 9));
    let mut opts = options(std::slice::from_ref(&file), false);
    opts.resolver = ResolverConfig::Server(dns.addr());
    let proxy = outrider_app::start(opts).await.unwrap();
    assert_eq!(served_by(proxy.addrs().egress).await.as_deref(), Some("a"));

    // Node `b` becomes `c`, found by DNS: the reload resolves it before swapping.
    let next = stream(&[
        spec(pa, pb, (0, 100), 9).replace("virtualNode: b,", "virtualNode: c,"),
        node("c", "c.test.local", c.addr().port(), "http"),
    ]);
    std::fs::write(&file, next).unwrap();
    let report = proxy.reload(outrider_app::Trigger::Admin).await.unwrap();
    assert!(report.changed);
    // The very first request after the reload finds c's endpoints.
    assert_eq!(served_by(proxy.addrs().egress).await.as_deref(), Some("c"));
    assert!(dns.queries() > 0);
    proxy.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_discovery_answers_or_the_wait_passes() {
    let a = TestServer::http("a");
    let dns = DnsServer::start().await.unwrap();
    dns.set_silent(true);
    let dir = tempfile::tempdir().unwrap();
    let file = write_spec(
        dir.path(),
        &stream(&[
            mesh("DROP_ALL"),
            client(&["a.svc"], &[]),
            node("a", "a.test.local", a.addr().port(), "http"),
            service_node("a.svc", "a"),
        ]),
    );
    // The admin address must be known before start() returns: borrow a free port.
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut opts = options(&[file], false);
    opts.resolver = ResolverConfig::Server(dns.addr());
    opts.admin_addr = Some(admin);
    let started = Instant::now();
    let starting = tokio::spawn(outrider_app::start(opts));
    let mut saw_not_ready = false;
    while !starting.is_finished() && started.elapsed() < POLL_LIMIT {
        if http(admin, "GET", "/ready").await.0 == 503 {
            saw_not_ready = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let proxy = starting.await.unwrap().unwrap();
    assert!(
        saw_not_ready,
        "/ready never answered 503 while discovery was pending"
    );
    assert!(started.elapsed() >= outrider_app::STARTUP_DISCOVERY_WAIT);
    assert_eq!(http(admin, "GET", "/ready").await.0, 200);
    assert!(proxy.is_ready());
    proxy.shutdown(GRACE).await;
}

/// Idle connections opened in the burst of the memory test: HTTP/2, whose per-connection
/// state (hyper's) is large enough for the burst to cross the trimmer's threshold; an idle
/// HTTP/1.1 connection holds about 2 KiB.
const BURST_CONNECTIONS: usize = 800;
/// How long the heap trimmer may take to give a closed burst's memory back (a few intervals).
const TRIM_WAIT: Duration = Duration::from_secs(20);

/// `VmRSS` of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_of_a_connection_burst_goes_back_once_it_closes() {
    let a = TestServer::http("a");
    let port = a.addr().port();
    let dir = tempfile::tempdir().unwrap();
    let file = write_spec(dir.path(), &spec(port, port, (100, 0), 9));
    let proc = spawn_proxy(&file, &["--no-watch", "--workers", "1"]).await;
    let pid = proc.child.0.id();
    assert_eq!(served_by(proc.egress).await.as_deref(), Some("a"));
    let before = rss_kib(pid);

    let mut burst = Vec::with_capacity(BURST_CONNECTIONS);
    for _ in 0..BURST_CONNECTIONS {
        let mut c = H2::connect(proc.egress).await;
        let r = c.send(h2_request(SERVICE, "/", &[])).await;
        assert_eq!(r.status, StatusCode::OK);
        burst.push(c);
    }
    let during = rss_kib(pid);
    assert!(
        during > before + 8 * 1024,
        "the burst should have grown the heap: {before} -> {during} KiB"
    );
    drop(burst);

    // glibc keeps memory freed in the middle of its heap; the trimmer must give it back.
    let limit = before + (during - before) / 4;
    let until = Instant::now() + TRIM_WAIT;
    loop {
        let now = rss_kib(pid);
        if now <= limit {
            break;
        }
        assert!(
            Instant::now() < until,
            "RSS still {now} KiB {TRIM_WAIT:?} after the burst closed (idle {before}, burst {during})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
