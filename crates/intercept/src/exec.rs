//! Running the plan: permission check, back-end detection, and the iptables commands.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::options::{Backend, Options};
use crate::plan::{Family, clean_commands, listing_has_chain, plan};

/// Bit of `CAP_NET_ADMIN` in the capability sets of `/proc/<pid>/status`.
const CAP_NET_ADMIN_BIT: u32 = 12;
/// Directories searched after `PATH`, since iptables lives in sbin, which `PATH` of a
/// non-login shell often lacks.
const SBIN_DIRS: [&str; 3] = ["/usr/sbin", "/sbin", "/usr/local/sbin"];
/// Where `ip netns add` puts named namespaces.
const NETNS_DIR: &str = "/run/netns";
/// Flag that makes iptables wait for the xtables lock instead of failing.
const WAIT_FLAG: &str = "-w";

/// A failure to set up or run iptables.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The process lacks `CAP_NET_ADMIN` (it is not root).
    #[error("not permitted: changing iptables needs root or CAP_NET_ADMIN")]
    NotPermitted,
    /// The capability sets could not be read.
    #[error("cannot read capabilities from /proc/self/status: {0}")]
    Capabilities(#[source] io::Error),
    /// No iptables binary of the wanted kind is installed.
    #[error("{0} not found: install iptables")]
    BinaryMissing(String),
    /// A command could not be started.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why it did not start.
        #[source]
        source: io::Error,
    },
    /// A command exited with a failure.
    #[error("`{command}` failed: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its standard error, trimmed to one line.
        stderr: String,
    },
    /// The named network namespace could not be entered.
    #[error("cannot enter network namespace {name}: {source}")]
    Netns {
        /// The namespace name.
        name: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The iptables flavour in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// nf_tables through the iptables-nft compatibility layer.
    Nft,
    /// The legacy x_tables kernel interface.
    Legacy,
}

/// The resolved binaries of one back end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tool {
    /// Which back end the binaries drive.
    pub kind: BackendKind,
    /// The IPv4 binary (full path).
    pub v4: PathBuf,
    /// The IPv6 binary (full path); it may not exist.
    pub v6: PathBuf,
}

/// What `apply` or `clean` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The back end used.
    pub backend: BackendKind,
    /// The families handled, in order.
    pub families: Vec<Family>,
    /// How many changing commands ran (checks and listings excluded).
    pub changes: usize,
}

/// Where iptables commands (and the verify probe) run: this network namespace or a named one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Runner {
    netns: Option<String>,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Nft => "nft",
            BackendKind::Legacy => "legacy",
        })
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let families: Vec<String> = self.families.iter().map(Family::to_string).collect();
        write!(
            f,
            "{} change(s) with the {} back end ({})",
            self.changes,
            self.backend,
            families.join(", ")
        )
    }
}

impl Tool {
    /// The binary for `family`, or [`Error::BinaryMissing`] when it is not installed.
    pub fn program(&self, family: Family) -> Result<&Path, Error> {
        let p = match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        };
        if p.is_file() {
            Ok(p)
        } else {
            Err(Error::BinaryMissing(p.display().to_string()))
        }
    }
}

impl Runner {
    /// Runs in the caller's network namespace.
    pub fn host() -> Runner {
        Runner { netns: None }
    }

    /// Runs in the namespace `ip netns add <name>` created (commands through `ip netns exec`).
    pub fn netns(name: impl Into<String>) -> Runner {
        Runner {
            netns: Some(name.into()),
        }
    }

    /// The namespace name, if not the host's.
    pub fn netns_name(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// Runs `f` on a fresh thread that is in this runner's namespace, and returns its value.
    /// The thread may change its own credentials; nothing leaks to the caller's thread.
    pub fn on_thread<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
        let ns = match &self.netns {
            Some(name) => Some((name.clone(), open_netns(name)?)),
            None => None,
        };
        std::thread::scope(|s| {
            s.spawn(move || {
                if let Some((name, file)) = ns {
                    // SAFETY: setns only reads the descriptor, which `file` keeps open.
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    if rc != 0 {
                        let source = io::Error::last_os_error();
                        return Err(Error::Netns { name, source });
                    }
                }
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Runs `program args..`, returning its output whatever the exit status.
    fn output(&self, program: &Path, args: &[String]) -> Result<Output, Error> {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.args(args);
        cmd.output().map_err(|source| Error::Spawn {
            command: self.describe(program, args),
            source,
        })
    }

    /// Runs an iptables command with the lock-wait flag; a failure is an error.
    fn iptables(&self, program: &Path, args: &[String]) -> Result<String, Error> {
        let out = self.iptables_status(program, args)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(failed(self.describe(program, &with_wait(args)), &out))
        }
    }

    /// Runs an iptables command with the lock-wait flag, returning the raw output.
    pub(crate) fn iptables_status(&self, program: &Path, args: &[String]) -> Result<Output, Error> {
        self.output(program, &with_wait(args))
    }

    fn describe(&self, program: &Path, args: &[String]) -> String {
        let prefix = match &self.netns {
            Some(ns) => format!("ip netns exec {ns} "),
            None => String::new(),
        };
        format!("{prefix}{} {}", program.display(), args.join(" "))
    }
}

/// Installs the plan in the host namespace (see [`apply_with`]).
pub fn apply(opts: &Options) -> Result<Report, Error> {
    apply_with(opts, &Runner::host())
}

/// Installs the rules: creates Outrider's chains (flushes them if they exist), fills them, and
/// adds each jump unless `-C` finds it already. Running it twice gives the same ruleset.
pub fn apply_with(opts: &Options, runner: &Runner) -> Result<Report, Error> {
    ensure_permitted()?;
    let tool = resolve(opts.backend, runner)?;
    let mut report = Report {
        backend: tool.kind,
        families: families(opts),
        changes: 0,
    };
    for family in families(opts) {
        let program = tool.program(family)?;
        let plan = plan(opts, family);
        let listing = runner.iptables(program, &nat(&["-S"]))?;
        for chain in &plan.chains {
            let op = if listing_has_chain(&listing, chain.name) {
                "-F"
            } else {
                "-N"
            };
            runner.iptables(program, &nat(&[op, chain.name]))?;
            report.changes += 1;
        }
        for chain in &plan.chains {
            for rule in chain.rules() {
                runner.iptables(program, &rule.args("-A"))?;
                report.changes += 1;
            }
        }
        for jump in &plan.jumps {
            if !runner
                .iptables_status(program, &jump.args("-C"))?
                .status
                .success()
            {
                runner.iptables(program, &jump.args("-A"))?;
                report.changes += 1;
            }
        }
    }
    Ok(report)
}

/// Removes the rules from the host namespace (see [`clean_with`]).
pub fn clean(opts: &Options) -> Result<Report, Error> {
    clean_with(opts, &Runner::host())
}

/// Removes exactly what `apply` made: every jump into Outrider's chains, then the chains.
/// IPv6 is cleaned when `opts.ipv6` is set, and also otherwise when ip6tables works and holds
/// Outrider's chains, so that a forgotten `--ipv6` leaves nothing behind.
pub fn clean_with(opts: &Options, runner: &Runner) -> Result<Report, Error> {
    ensure_permitted()?;
    let tool = resolve(opts.backend, runner)?;
    let mut report = Report {
        backend: tool.kind,
        families: Vec::new(),
        changes: 0,
    };
    for family in [Family::V4, Family::V6] {
        let required = family == Family::V4 || opts.ipv6;
        let listing = match tool
            .program(family)
            .and_then(|p| runner.iptables(p, &nat(&["-S"])))
        {
            Ok(l) => l,
            Err(e) if required => return Err(e),
            Err(_) => continue,
        };
        let program = tool.program(family)?;
        let commands = clean_commands(&listing);
        if !required && commands.is_empty() {
            continue;
        }
        for args in &commands {
            runner.iptables(program, args)?;
            report.changes += 1;
        }
        report.families.push(family);
    }
    Ok(report)
}

/// The commands `apply` runs on a table without Outrider's chains, one shell line each
/// (`iptables -t nat ...`, then `ip6tables -t nat ...` with `ipv6`), newline-terminated.
/// Touches nothing.
pub fn print(opts: &Options) -> String {
    let mut out = String::new();
    for family in families(opts) {
        for line in plan(opts, family).print_lines() {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// The families `opts` asks for: IPv4, then IPv6 with `ipv6`.
pub fn families(opts: &Options) -> Vec<Family> {
    if opts.ipv6 {
        vec![Family::V4, Family::V6]
    } else {
        vec![Family::V4]
    }
}

/// Fails with [`Error::NotPermitted`] unless the effective capabilities include
/// `CAP_NET_ADMIN`; checked before anything runs.
pub fn ensure_permitted() -> Result<(), Error> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(Error::Capabilities)?;
    if has_net_admin(&status) {
        Ok(())
    } else {
        Err(Error::NotPermitted)
    }
}

/// Picks the binaries for `backend`. `Auto` prefers the back end that already holds rules, then
/// the one plain `iptables` is (by its `-V` string), then nft.
pub fn resolve(backend: Backend, runner: &Runner) -> Result<Tool, Error> {
    if let Some(name) = runner.netns_name() {
        open_netns(name)?;
    }
    let nft = find_program("iptables-nft");
    let legacy = find_program("iptables-legacy");
    let plain = find_program("iptables");
    let plain_kind = plain.as_deref().map(version_kind);
    let pick = |kind: BackendKind, own: Option<PathBuf>| -> Option<Tool> {
        own.or_else(|| plain.clone().filter(|_| plain_kind == Some(kind)))
            .map(|v4| tool(kind, v4))
    };
    let found = match backend {
        Backend::Nft => pick(BackendKind::Nft, nft),
        Backend::Legacy => pick(BackendKind::Legacy, legacy),
        Backend::Auto => match (nft, legacy) {
            (Some(n), Some(l)) => {
                let (n_rules, l_rules) = (rule_count(runner, &n), rule_count(runner, &l));
                let kind = if n_rules > 0 && l_rules == 0 {
                    BackendKind::Nft
                } else if l_rules > 0 && n_rules == 0 {
                    BackendKind::Legacy
                } else {
                    plain_kind.unwrap_or(BackendKind::Nft)
                };
                Some(match kind {
                    BackendKind::Nft => tool(kind, n),
                    BackendKind::Legacy => tool(kind, l),
                })
            }
            (Some(n), None) => Some(tool(BackendKind::Nft, n)),
            (None, Some(l)) => Some(tool(BackendKind::Legacy, l)),
            (None, None) => plain.map(|p| tool(plain_kind.unwrap_or(BackendKind::Legacy), p)),
        },
    };
    found.ok_or_else(|| {
        Error::BinaryMissing(
            match backend {
                Backend::Auto => "iptables",
                Backend::Nft => "iptables-nft",
                Backend::Legacy => "iptables-legacy",
            }
            .to_string(),
        )
    })
}

/// Whether a `/proc/<pid>/status` text grants `CAP_NET_ADMIN` in `CapEff`.
fn has_net_admin(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN_BIT) != 0)
}

/// The kind a binary reports in `-V`: `(nf_tables)` or `(legacy)`; versions before 1.8 print
/// neither and are legacy.
fn version_kind(program: &Path) -> BackendKind {
    // The binary is the same in every namespace, so ask it here.
    match Command::new(program).arg("-V").output() {
        Ok(out) if String::from_utf8_lossy(&out.stdout).contains("nf_tables") => BackendKind::Nft,
        _ => BackendKind::Legacy,
    }
}

/// Rules (`-A` lines) in the filter and nat tables; a failing binary counts as empty.
fn rule_count(runner: &Runner, program: &Path) -> usize {
    [vec!["-S".to_string()], nat(&["-S"])]
        .iter()
        .filter_map(|args| runner.iptables(program, args).ok())
        .map(|listing| listing.lines().filter(|l| l.starts_with("-A ")).count())
        .sum()
}

fn tool(kind: BackendKind, v4: PathBuf) -> Tool {
    let name = v4
        .file_name()
        .map(|n| n.to_string_lossy().replacen("iptables", "ip6tables", 1))
        .unwrap_or_else(|| "ip6tables".to_string());
    let v6 = v4.with_file_name(name);
    Tool { kind, v4, v6 }
}

/// The first executable file named `name` in `PATH`, then in the sbin directories.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn open_netns(name: &str) -> Result<File, Error> {
    File::open(Path::new(NETNS_DIR).join(name)).map_err(|source| Error::Netns {
        name: name.to_string(),
        source,
    })
}

fn failed(command: String, out: &Output) -> Error {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stderr = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" / ");
    let stderr = if stderr.is_empty() {
        format!("exit status {}", out.status)
    } else {
        stderr
    };
    Error::Failed { command, stderr }
}

fn with_wait(args: &[String]) -> Vec<String> {
    let mut a = Vec::with_capacity(args.len() + 1);
    a.push(WAIT_FLAG.to_string());
    a.extend(args.iter().cloned());
    a
}

pub(crate) fn nat(parts: &[&str]) -> Vec<String> {
    let mut a = vec!["-t".to_string(), crate::plan::TABLE.to_string()];
    a.extend(parts.iter().map(|s| s.to_string()));
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_admin_bit_is_read_from_cap_eff() {
        assert!(has_net_admin("Name:\tx\nCapEff:\t000001fffeffffff\n"));
        assert!(has_net_admin("CapEff:\t0000000000001000\n"));
        assert!(!has_net_admin("CapEff:\t0000000000000fff\n"));
        assert!(!has_net_admin("CapPrm:\t000001ffffffffff\n"));
        assert!(!has_net_admin("CapEff:\tzz\n"));
    }

    #[test]
    fn ip6tables_binary_sits_next_to_iptables() {
        let t = tool(BackendKind::Nft, PathBuf::from("/usr/sbin/iptables-nft"));
        assert_eq!(t.v6, PathBuf::from("/usr/sbin/ip6tables-nft"));
    }

    #[test]
    fn print_has_both_families_with_ipv6() {
        let opts = Options {
            ipv6: true,
            ..Options::default()
        };
        let text = print(&opts);
        assert!(text.starts_with("iptables -t nat -N OUTRIDER_EGRESS\n"));
        assert!(text.contains("\nip6tables -t nat -N OUTRIDER_EGRESS\n"));
        assert!(text.ends_with("-j OUTRIDER_INGRESS\n"));
    }

    #[test]
    fn failed_command_error_is_one_line() {
        let out = Command::new("sh")
            .args(["-c", "echo 'bad thing\nmore' >&2; exit 3"])
            .output()
            .unwrap();
        let e = failed("iptables -t nat -A X".into(), &out).to_string();
        assert_eq!(e, "`iptables -t nat -A X` failed: bad thing / more");
    }
}
