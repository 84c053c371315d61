//! The `outrider` binary as a user runs it: validate, run, healthcheck, quitquitquit, demo.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns, unwrap here

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::listening_line;

const BIN: &str = env!("CARGO_BIN_EXE_outrider");
/// How long a spawned proxy may take to start, or to exit after being told to.
const PROCESS_WAIT: Duration = Duration::from_secs(10);

const GOOD: &str = r#"
meshName: m
spec: {egressFilter: {type: DROP_ALL}}
---
meshName: m
virtualNodeName: client
spec:
  backends: [{virtualService: {virtualServiceName: svc.local}}]
  listeners: [{portMapping: {port: 8080, protocol: http}}]
  serviceDiscovery: {dns: {hostname: 127.0.0.1}}
---
meshName: m
virtualNodeName: target
spec:
  listeners: [{portMapping: {port: 9090, protocol: http}}]
  serviceDiscovery: {dns: {hostname: 127.0.0.1}}
---
meshName: m
virtualServiceName: svc.local
spec: {provider: {virtualNode: {virtualNodeName: target}}}
"#;

/// GOOD plus a route to a node that does not exist and a router it hangs off.
const BROKEN: &str = r#"
meshName: m
virtualRouterName: r
spec:
  listeners: [{portMapping: {port: 8080, protocol: http}}]
---
meshName: m
virtualRouterName: r
routeName: bad
spec:
  priority: 1
  httpRoute:
    match: {prefix: /}
    action: {weightedTargets: [{virtualNode: ghost, weight: 1}]}
"#;

/// Kills the child on drop, so a failing test leaves no proxy behind.
struct ChildGuard(Child);

impl ChildGuard {
    /// Waits up to `limit` for the child to exit.
    fn wait_for_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if let Some(status) = self.0.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
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

fn spec_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

/// Runs the binary to completion, killing it if it takes longer than [`PROCESS_WAIT`].
fn outrider(args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let mut guard = ChildGuard(child);
    let status = guard
        .wait_for_exit(PROCESS_WAIT)
        .unwrap_or_else(|| panic!("outrider {args:?} did not finish"));
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path_arg(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// One HTTP/1.1 exchange over a fresh connection; returns the status and the whole response.
fn http(addr: SocketAddr, method: &str, path: &str, host: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, out)
}

#[test]
fn validate_good_spec_prints_a_summary() {
    let dir = spec_dir(&[("mesh.yaml", GOOD)]);
    let out = outrider(&[
        "validate",
        "--config",
        &path_arg(dir.path()),
        "--node",
        "client",
    ]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}: {stdout}{}",
        out.status,
        text(&out.stderr)
    );
    assert!(stdout.contains("svc.local"), "summary: {stdout}");
}

#[test]
fn validate_broken_spec_lists_problems_and_exits_1() {
    let dir = spec_dir(&[("mesh.yaml", GOOD), ("broken.yaml", BROKEN)]);
    let out = outrider(&[
        "validate",
        "--config",
        &path_arg(dir.path()),
        "--node",
        "client",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("ghost"))
        .unwrap_or_else(|| panic!("no problem names the missing node: {stdout}"));
    // FILE: KIND/NAME: path: reason
    let fields: Vec<&str> = line.splitn(4, ": ").collect();
    assert_eq!(fields.len(), 4, "{line}");
    assert!(fields[0].ends_with("broken.yaml"), "{line}");
    assert!(fields[1].starts_with("Route/"), "{line}");
    assert!(fields[2].starts_with("spec.httpRoute"), "{line}");
    assert!(!fields[3].is_empty(), "{line}");
}

#[test]
fn run_refuses_a_broken_spec() {
    let dir = spec_dir(&[("mesh.yaml", GOOD), ("broken.yaml", BROKEN)]);
    let out = outrider(&[
        "run",
        "--config",
        &path_arg(dir.path()),
        "--node",
        "client",
        "--ingress-addr",
        "127.0.0.1:0",
        "--egress-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("ghost"));
}

#[test]
fn run_serves_answers_healthcheck_and_quits_on_request() {
    let dir = spec_dir(&[("mesh.yaml", GOOD)]);
    let child = Command::new(BIN)
        .args([
            "run",
            "--config",
            &path_arg(dir.path()),
            "--node",
            "client",
            "--ingress-addr",
            "127.0.0.1:0",
            "--egress-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--log-level",
            "warning",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let stderr = child.0.stderr.take().unwrap();
    // Keep draining stderr so the proxy never blocks on a full pipe.
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + PROCESS_WAIT;
    let mut seen = Vec::new();
    let (_ingress, egress, admin) = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => match listening_line(&line) {
                Some(addrs) => break addrs,
                None => seen.push(line),
            },
            Err(_) => panic!("no start-up line; stderr so far: {seen:?}"),
        }
    };

    let health = outrider(&["healthcheck", "--admin-addr", &admin.to_string()]);
    assert!(health.status.success(), "{}", text(&health.stderr));
    // It routes: an unknown host under DROP_ALL is refused with 404.
    let (status, _) = http(egress, "GET", "/", "unknown.example");
    assert_eq!(status, 404);

    let (status, body) = http(admin, "POST", "/quitquitquit", "localhost");
    assert_eq!(status, 200, "{body}");
    let exit = child
        .wait_for_exit(PROCESS_WAIT)
        .expect("proxy did not exit after /quitquitquit");
    assert!(exit.success(), "{exit:?}");
    // Nobody answers any more.
    let after = outrider(&["healthcheck", "--admin-addr", &admin.to_string()]);
    assert_eq!(after.status.code(), Some(1));
}

#[test]
fn demo_check_passes() {
    let out = outrider(&[
        "demo",
        "--check",
        "--egress-addr",
        "127.0.0.1:0",
        "--ingress-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
    ]);
    assert!(
        out.status.success(),
        "exit {:?}\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("demo check: ok"));
}
