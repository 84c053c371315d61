//! Network namespaces for tests that need root: create, wire with veth pairs, run commands and
//! Rust closures inside, delete on drop.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;

/// Where `ip netns add` puts named namespaces.
const NETNS_DIR: &str = "/run/netns";

/// Counter that makes namespace and interface names unique within the process.
static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A named network namespace (`outrider-<pid>-<n>`) with `lo` up; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

/// The two ends of a veth pair made by [`veth_pair`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Veth {
    /// Interface name in the first namespace.
    pub a_dev: String,
    /// Interface name in the second namespace.
    pub b_dev: String,
}

impl Netns {
    /// Creates a fresh namespace and brings its loopback up.
    pub fn new() -> io::Result<Netns> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = format!("outrider-{}-{id}", std::process::id());
        run_ok(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name };
        ns.try_exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, for `ip netns exec` or an `outrider iptables --netns` flag.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `cmd` inside the namespace (`ip netns exec`) and returns its output, whatever the
    /// exit status. Panics if `ip` cannot be started at all.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        self.command(cmd)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ip netns exec {} {cmd:?}: {e}", self.name))
    }

    /// Runs `cmd` inside the namespace; a failing exit status is an error carrying its stderr.
    /// Returns standard output.
    pub fn try_exec(&self, cmd: &[&str]) -> io::Result<String> {
        run_ok(&mut self.command(cmd))
    }

    /// A `Command` that runs `cmd` inside the namespace, for callers that need to spawn it
    /// (a long-running proxy binary, say).
    pub fn command(&self, cmd: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(cmd);
        c
    }

    /// Adds an address (`10.0.0.1/24`, `fd00::1/64`) to `dev`; IPv6 skips duplicate detection
    /// so the address is usable at once.
    pub fn add_addr(&self, dev: &str, addr: &str) -> io::Result<()> {
        let mut cmd = vec!["ip", "addr", "add", addr, "dev", dev];
        if addr.contains(':') {
            cmd.push("nodad");
        }
        self.try_exec(&cmd).map(drop)
    }

    /// Adds a default route through `dev` (IPv4, or IPv6 with `ipv6`), so that outside
    /// addresses are routable and iptables sees connections to them.
    pub fn default_route(&self, dev: &str, ipv6: bool) -> io::Result<()> {
        let family = if ipv6 { "-6" } else { "-4" };
        self.try_exec(&["ip", family, "route", "add", "default", "dev", dev])
            .map(drop)
    }

    /// Runs `f` on a new thread inside the namespace and returns its value: sockets it opens
    /// belong to the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        let file = self.open()?;
        std::thread::scope(|s| {
            s.spawn(move || {
                enter(&file)?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Starts `f` on a new thread inside the namespace (for servers that outlive the call,
    /// such as a tokio runtime running the proxy). The namespace must outlive the thread.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<JoinHandle<io::Result<T>>> {
        let file = self.open()?;
        Ok(std::thread::spawn(move || {
            enter(&file)?;
            Ok(f())
        }))
    }

    fn open(&self) -> io::Result<File> {
        File::open(PathBuf::from(NETNS_DIR).join(&self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Best effort: a leftover namespace only costs a name, and Drop cannot report.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Whether the process runs as root (tests that need namespaces skip otherwise).
pub fn is_root() -> bool {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Connects `a` and `b` with a veth pair, gives the ends `a_addr` and `b_addr` (CIDR
/// notation, IPv4 or IPv6) and brings both up.
pub fn veth_pair(a: &Netns, b: &Netns, a_addr: &str, b_addr: &str) -> io::Result<Veth> {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    // Names are created inside `a` and moved to `b`, so they only need to be unique there;
    // the counter keeps several pairs per namespace apart (15 characters at most).
    let veth = Veth {
        a_dev: format!("orv{id}a"),
        b_dev: format!("orv{id}b"),
    };
    a.try_exec(&[
        "ip",
        "link",
        "add",
        &veth.a_dev,
        "type",
        "veth",
        "peer",
        "name",
        &veth.b_dev,
    ])?;
    a.try_exec(&["ip", "link", "set", &veth.b_dev, "netns", b.name()])?;
    a.add_addr(&veth.a_dev, a_addr)?;
    b.add_addr(&veth.b_dev, b_addr)?;
    for (ns, dev) in [(a, &veth.a_dev), (b, &veth.b_dev)] {
        ns.try_exec(&["ip", "link", "set", dev, "up"])?;
        ns.try_exec(&["ip", "link", "set", "lo", "up"])?;
    }
    Ok(veth)
}

/// Moves the calling thread into the namespace `file` refers to.
fn enter(file: &File) -> io::Result<()> {
    // SAFETY: setns only reads the descriptor, which `file` keeps open.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn run_ok(cmd: &mut Command) -> io::Result<String> {
    let out = cmd.output()?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(io::Error::other(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_isolated_and_wired() {
        if !is_root() {
            println!("skipped: needs root");
            return;
        }
        let a = Netns::new().unwrap();
        let b = Netns::new().unwrap();
        assert_ne!(a.name(), b.name());
        let veth = veth_pair(&a, &b, "10.250.0.1/24", "10.250.0.2/24").unwrap();
        let listener = b
            .run(|| std::net::TcpListener::bind("10.250.0.2:0").unwrap())
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let connected = a
            .run(move || std::net::TcpStream::connect(addr).is_ok())
            .unwrap();
        assert!(connected);
        // The host does not see the namespace's interfaces.
        let host = Command::new("ip")
            .args(["link", "show", &veth.a_dev])
            .output()
            .unwrap();
        assert!(!host.status.success());
        let name = a.name().to_string();
        drop(a);
        let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
        let list = String::from_utf8_lossy(&list.stdout);
        assert!(
            !list
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name.as_str()))
        );
    }
}
