//! `verify`: the rules match the plan, and a connection to an outside address really lands
//! on the egress port.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use crate::exec::{Error, Runner, ensure_permitted, families, nat, resolve};
use crate::options::Options;
use crate::plan::{Family, plan};

/// How long the probe waits for its redirected connection. Default is 1 s.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Documentation-only addresses (RFC 5737) the probe dials; never reached when the redirect
/// works. The first one no ignored range covers is used.
pub const PROBE_ADDRS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(192, 0, 2, 1),
    Ipv4Addr::new(198, 51, 100, 1),
    Ipv4Addr::new(203, 0, 113, 1),
];
/// Ports the probe dials; the first one that is not ignored is used.
pub const PROBE_PORTS: [u16; 4] = [80, 443, 8080, 9];
/// Identity the probe thread takes when the caller's own UID or GID is the ignored one
/// (`nobody`), and the fallback when that one is ignored too.
const PROBE_IDS: [u32; 2] = [65534, 65533];
/// How many times the probe polls its listener for the redirected connection.
const ACCEPT_POLLS: u32 = 50;
/// Pause between accept polls.
const ACCEPT_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Why `verify` failed; each displays as one line naming the reason.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The check could not run.
    #[error(transparent)]
    Setup(#[from] Error),
    /// One of Outrider's chains does not exist.
    #[error("{family}: chain {chain} is missing (run `outrider iptables apply`)")]
    MissingChain {
        /// The family checked.
        family: Family,
        /// The chain name.
        chain: &'static str,
    },
    /// A chain differs from the plan; the first differing line is shown.
    #[error(
        "{family}: chain {chain} differs from the plan: expected `{expected}`, found `{found}`"
    )]
    RuleMismatch {
        /// The family checked.
        family: Family,
        /// The chain name.
        chain: &'static str,
        /// The planned line, or `(nothing)`.
        expected: String,
        /// The installed line, or `(nothing)`.
        found: String,
    },
    /// A jump into Outrider's chains is missing from a built-in chain.
    #[error("{family}: the jump `{rule}` is missing")]
    MissingJump {
        /// The family checked.
        family: Family,
        /// The rule as `iptables -S` prints it.
        rule: String,
    },
    /// Every probe address or port is ignored, so no probe can be redirected.
    #[error("no probe target: every documentation address or probe port is ignored")]
    NoProbeTarget,
    /// The probe could not bind its listener on the egress port.
    #[error("probe cannot listen on {addr}: {source}")]
    Listen {
        /// The listen address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The probe could not take an identity whose traffic is redirected.
    #[error("probe cannot leave the ignored uid/gid: {0}")]
    Identity(#[source] io::Error),
    /// The probe connection failed or timed out: traffic is not redirected.
    #[error("probe connection to {target} was not redirected to port {port}: {source}")]
    NotRedirected {
        /// The outside address dialled.
        target: SocketAddr,
        /// The egress port.
        port: u16,
        /// How the connection failed.
        #[source]
        source: io::Error,
    },
    /// The probe connected, but not to its own listener.
    #[error("probe connection to {target} succeeded but never reached port {port}")]
    Missed {
        /// The outside address dialled.
        target: SocketAddr,
        /// The egress port.
        port: u16,
    },
}

/// Verifies in the host namespace (see [`verify_with`]).
pub fn verify(opts: &Options) -> Result<(), VerifyError> {
    verify_with(opts, &Runner::host())
}

/// Checks that every chain lists exactly the plan's rules and every jump is in place (per
/// family), then probes IPv4: listens on the egress port (or, when the proxy already holds it,
/// relies on it), connects to an outside documentation address as an identity that is not
/// ignored, and expects the connection to land there.
pub fn verify_with(opts: &Options, runner: &Runner) -> Result<(), VerifyError> {
    ensure_permitted()?;
    let tool = resolve(opts.backend, runner)?;
    for family in families(opts) {
        let program = tool.program(family)?;
        let plan = plan(opts, family);
        for chain in &plan.chains {
            let out = runner.iptables_status(program, &nat(&["-S", chain.name]))?;
            if !out.status.success() {
                return Err(VerifyError::MissingChain {
                    family,
                    chain: chain.name,
                });
            }
            let listing = String::from_utf8_lossy(&out.stdout);
            let found: Vec<&str> = listing
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            let expected = chain.listing();
            if let Some((e, f)) = first_difference(&expected, &found) {
                return Err(VerifyError::RuleMismatch {
                    family,
                    chain: chain.name,
                    expected: e,
                    found: f,
                });
            }
        }
        for jump in &plan.jumps {
            if !runner
                .iptables_status(program, &jump.args("-C"))?
                .status
                .success()
            {
                return Err(VerifyError::MissingJump {
                    family,
                    rule: jump.listing(),
                });
            }
        }
    }
    let target = probe_target(opts).ok_or(VerifyError::NoProbeTarget)?;
    runner.on_thread(|| probe(opts, target))?
}

/// The first documentation address and probe port that `opts` does not ignore.
pub fn probe_target(opts: &Options) -> Option<SocketAddr> {
    let ip = PROBE_ADDRS.into_iter().find(|a| {
        !opts
            .egress_ignored_ips
            .iter()
            .any(|n| n.contains(&IpAddr::V4(*a)))
    })?;
    let port = PROBE_PORTS
        .into_iter()
        .find(|p| !opts.egress_ignored_ports.contains(p))?;
    Some(SocketAddr::new(IpAddr::V4(ip), port))
}

/// Runs on a dedicated thread: it may drop its own credentials.
fn probe(opts: &Options, target: SocketAddr) -> Result<(), VerifyError> {
    let port = opts.egress_port;
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
    let listener = match TcpListener::bind(addr) {
        Ok(l) => Some(l),
        // The proxy holds the port: a completed connection is evidence enough.
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => None,
        Err(source) => return Err(VerifyError::Listen { addr, source }),
    };
    leave_ignored_identity(opts).map_err(VerifyError::Identity)?;
    let stream = TcpStream::connect_timeout(&target, PROBE_TIMEOUT).map_err(|source| {
        VerifyError::NotRedirected {
            target,
            port,
            source,
        }
    })?;
    let Some(listener) = listener else {
        return Ok(());
    };
    let local = stream
        .local_addr()
        .map_err(|source| VerifyError::Listen { addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| VerifyError::Listen { addr, source })?;
    for _ in 0..ACCEPT_POLLS {
        match listener.accept() {
            Ok((_, peer)) if peer == local => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(ACCEPT_POLL_INTERVAL)
            }
            Err(source) => return Err(VerifyError::Listen { addr, source }),
        }
    }
    Err(VerifyError::Missed { target, port })
}

/// Switches this thread (only: raw syscalls, not the libc wrappers that change every thread)
/// to an identity that is not ignored, when the current one is.
fn leave_ignored_identity(opts: &Options) -> io::Result<()> {
    // SAFETY: plain getters without arguments.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let uid_ignored = opts.ignored_uid == Some(uid);
    let gid_ignored = opts.ignored_gid == Some(gid);
    if !uid_ignored && !gid_ignored {
        return Ok(());
    }
    let pick = |ignored: Option<u32>| {
        PROBE_IDS
            .into_iter()
            .find(|id| Some(*id) != ignored)
            .unwrap_or(PROBE_IDS[0])
    };
    if gid_ignored {
        let g = pick(opts.ignored_gid);
        // SAFETY: setresgid takes plain integers and affects only the calling thread here.
        if unsafe { libc::syscall(libc::SYS_setresgid, g, g, g) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    if uid_ignored {
        let u = pick(opts.ignored_uid);
        // SAFETY: setresuid takes plain integers and affects only the calling thread here.
        if unsafe { libc::syscall(libc::SYS_setresuid, u, u, u) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The first line where `expected` and `found` differ, as (expected, found); `(nothing)` marks
/// a missing line.
fn first_difference(expected: &[String], found: &[&str]) -> Option<(String, String)> {
    let n = expected.len().max(found.len());
    (0..n).find_map(|i| {
        let e = expected.get(i).map(String::as_str);
        let f = found.get(i).copied();
        (e != f).then(|| {
            (
                e.unwrap_or("(nothing)").to_string(),
                f.unwrap_or("(nothing)").to_string(),
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_target_skips_ignored_addresses_and_ports() {
        let mut opts = Options::default();
        assert_eq!(probe_target(&opts), Some("192.0.2.1:80".parse().unwrap()));
        opts.egress_ignored_ips = vec!["192.0.2.0/24".parse().unwrap()];
        opts.egress_ignored_ports = vec![22, 80];
        assert_eq!(
            probe_target(&opts),
            Some("198.51.100.1:443".parse().unwrap())
        );
        opts.egress_ignored_ips = vec!["0.0.0.0/0".parse().unwrap()];
        assert_eq!(probe_target(&opts), None);
    }

    #[test]
    fn first_difference_names_the_line() {
        let expected = vec!["-N A".to_string(), "-A A -j RETURN".to_string()];
        assert_eq!(
            first_difference(&expected, &["-N A", "-A A -j RETURN"]),
            None
        );
        assert_eq!(
            first_difference(&expected, &["-N A"]),
            Some(("-A A -j RETURN".into(), "(nothing)".into()))
        );
        assert_eq!(
            first_difference(&expected, &["-N A", "-A A -j RETURN", "-A A -j X"]),
            Some(("(nothing)".into(), "-A A -j X".into()))
        );
    }
}
