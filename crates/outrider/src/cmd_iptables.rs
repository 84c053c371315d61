//! `outrider iptables apply|clean|print|verify`: the command line of traffic interception.

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use outrider_intercept::{
    Backend, ENV_APP_PORTS, ENV_EGRESS_IGNORED_IP, ENV_EGRESS_IGNORED_PORTS, ENV_EGRESS_PORT,
    ENV_IGNORE_GID, ENV_IGNORE_UID, ENV_INGRESS_PORT, Options, OptionsError, Runner,
};

/// Exit code for success.
const EXIT_OK: u8 = 0;
/// Exit code for bad usage or options, and for a failed verify.
const EXIT_BAD: u8 = 1;
/// Exit code for a runtime failure (not root, iptables missing, a command failing).
const EXIT_RUNTIME: u8 = 2;

/// `outrider iptables`: install, remove, show or check the interception rules.
#[derive(Debug, Args)]
pub struct IptablesArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: IptablesAction,
}

/// The iptables actions; each takes the same flags.
#[derive(Debug, Subcommand)]
pub enum IptablesAction {
    /// Install the rules (idempotent: Outrider's chains are flushed and rebuilt).
    Apply(InterceptFlags),
    /// Remove exactly what apply installed; other rules stay.
    Clean(InterceptFlags),
    /// Print the commands apply runs, without touching anything.
    Print(InterceptFlags),
    /// Check the rules are in place and a redirected connection reaches the egress port.
    Verify(InterceptFlags),
}

/// Interception flags; each falls back to its App Mesh variable, and a flag wins over it.
/// Values are parsed together so that every bad one is reported at once.
#[derive(Debug, Clone, Default, Args)]
pub struct InterceptFlags {
    /// Ports the app listens on; inbound TCP to them goes to the ingress port. Default is none.
    #[arg(long, value_name = "P,..", env = ENV_APP_PORTS)]
    pub app_ports: Option<String>,
    /// Ingress listener port. Default is 15000.
    #[arg(long, value_name = "PORT", env = ENV_INGRESS_PORT)]
    pub ingress_port: Option<String>,
    /// Egress listener port. Default is 15001.
    #[arg(long, value_name = "PORT", env = ENV_EGRESS_PORT)]
    pub egress_port: Option<String>,
    /// UID whose traffic is not redirected (the proxy's). Default is 1337 when no GID is given.
    #[arg(long, value_name = "U", env = ENV_IGNORE_UID)]
    pub ignored_uid: Option<String>,
    /// GID whose traffic is not redirected. Default is none.
    #[arg(long, value_name = "G", env = ENV_IGNORE_GID)]
    pub ignored_gid: Option<String>,
    /// Destinations (IPs or CIDRs) not redirected. Default is none.
    #[arg(long, value_name = "CIDR,..", env = ENV_EGRESS_IGNORED_IP)]
    pub egress_ignored_ips: Option<String>,
    /// Destination ports not redirected; 22 is always added. Default is 22.
    #[arg(long, value_name = "P,..", env = ENV_EGRESS_IGNORED_PORTS)]
    pub egress_ignored_ports: Option<String>,
    /// Also install the rules for IPv6 (ip6tables). Default is off.
    #[arg(long)]
    pub ipv6: bool,
    /// iptables back end. Default is auto (the one that already holds rules).
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,
    /// Run inside this named network namespace (`ip netns`). Default is the current one.
    #[arg(long, value_name = "NAME")]
    pub netns: Option<String>,
}

/// `--backend` values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// The back end that already holds rules, else the one `iptables` is.
    #[default]
    Auto,
    /// iptables-nft.
    Nft,
    /// iptables-legacy.
    Legacy,
}

impl InterceptFlags {
    /// The options these flags (already merged with the environment by clap) describe.
    pub fn options(&self) -> Result<Options, OptionsError> {
        let mut opts = Options::from_lookup(|var| {
            match var {
                v if v == ENV_APP_PORTS => &self.app_ports,
                v if v == ENV_INGRESS_PORT => &self.ingress_port,
                v if v == ENV_EGRESS_PORT => &self.egress_port,
                v if v == ENV_IGNORE_UID => &self.ignored_uid,
                v if v == ENV_IGNORE_GID => &self.ignored_gid,
                v if v == ENV_EGRESS_IGNORED_IP => &self.egress_ignored_ips,
                v if v == ENV_EGRESS_IGNORED_PORTS => &self.egress_ignored_ports,
                _ => &None,
            }
            .clone()
        })?;
        opts.ipv6 = self.ipv6;
        opts.backend = match self.backend {
            BackendArg::Auto => Backend::Auto,
            BackendArg::Nft => Backend::Nft,
            BackendArg::Legacy => Backend::Legacy,
        };
        Ok(opts)
    }
}

/// Runs `outrider iptables ...`: 0 on success, 1 for bad options or a failed verify, 2 for a
/// runtime failure; failures print one line on stderr.
pub fn run(args: IptablesArgs) -> ExitCode {
    ExitCode::from(execute(args, &mut std::io::stdout()))
}

/// [`run`] writing its normal output to `out`, returning the exit code.
fn execute(args: IptablesArgs, out: &mut impl Write) -> u8 {
    let (name, flags) = match &args.action {
        IptablesAction::Apply(f) => ("apply", f),
        IptablesAction::Clean(f) => ("clean", f),
        IptablesAction::Print(f) => ("print", f),
        IptablesAction::Verify(f) => ("verify", f),
    };
    let opts = match flags.options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("outrider iptables {name}: {}", describe_problems(&e));
            return EXIT_BAD;
        }
    };
    let runner = flags.netns.clone().map_or_else(Runner::host, Runner::netns);
    let (line, code) = match args.action {
        IptablesAction::Print(_) => (outrider_intercept::print(&opts), EXIT_OK),
        IptablesAction::Apply(_) => match outrider_intercept::apply_with(&opts, &runner) {
            Ok(r) => (format!("iptables rules applied: {r}\n"), EXIT_OK),
            Err(e) => return fail(name, &e, EXIT_RUNTIME),
        },
        IptablesAction::Clean(_) => match outrider_intercept::clean_with(&opts, &runner) {
            Ok(r) => (format!("iptables rules removed: {r}\n"), EXIT_OK),
            Err(e) => return fail(name, &e, EXIT_RUNTIME),
        },
        IptablesAction::Verify(_) => match outrider_intercept::verify_with(&opts, &runner) {
            Ok(()) => (
                format!(
                    "interception verified: rules in place, egress reaches port {}\n",
                    opts.egress_port
                ),
                EXIT_OK,
            ),
            Err(e) => return fail(name, &e, EXIT_BAD),
        },
    };
    // A closed stdout (`| head`) is not a failure of the command itself.
    let _ = out.write_all(line.as_bytes()).and_then(|()| out.flush());
    code
}

fn fail(action: &str, err: &dyn std::fmt::Display, code: u8) -> u8 {
    eprintln!("outrider iptables {action}: {err}");
    code
}

/// The problems on one line, each named by its flag and variable.
fn describe_problems(err: &OptionsError) -> String {
    err.problems
        .iter()
        .map(|p| format!("{} ({}): {}", flag_of(p.var), p.var, p.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

fn flag_of(var: &str) -> &'static str {
    match var {
        v if v == ENV_APP_PORTS => "--app-ports",
        v if v == ENV_INGRESS_PORT => "--ingress-port",
        v if v == ENV_EGRESS_PORT => "--egress-port",
        v if v == ENV_IGNORE_UID => "--ignored-uid",
        v if v == ENV_IGNORE_GID => "--ignored-gid",
        v if v == ENV_EGRESS_IGNORED_IP => "--egress-ignored-ips",
        v if v == ENV_EGRESS_IGNORED_PORTS => "--egress-ignored-ports",
        _ => "option",
    }
}

#[cfg(test)]
mod tests {
    use clap::{Parser, Subcommand};

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Top,
    }

    #[derive(Subcommand)]
    enum Top {
        Iptables(IptablesArgs),
    }

    fn parse(args: &[&str]) -> IptablesArgs {
        let mut argv = vec!["outrider", "iptables"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().cmd {
            Top::Iptables(a) => a,
        }
    }

    #[test]
    fn flags_become_options() {
        let args = parse(&[
            "print",
            "--app-ports",
            "8080,9090",
            "--ingress-port",
            "16000",
            "--ignored-gid",
            "1338",
            "--egress-ignored-ips",
            "169.254.169.254,10.0.0.0/8",
            "--egress-ignored-ports",
            "443",
            "--ipv6",
            "--backend",
            "legacy",
        ]);
        let IptablesAction::Print(flags) = &args.action else {
            panic!("not print");
        };
        let o = flags.options().unwrap();
        assert_eq!(o.app_ports, vec![8080, 9090]);
        assert_eq!(o.ingress_port, 16000);
        assert_eq!((o.ignored_uid, o.ignored_gid), (None, Some(1338)));
        assert_eq!(o.egress_ignored_ips.len(), 2);
        assert_eq!(o.egress_ignored_ports, vec![22, 443]);
        assert!(o.ipv6);
        assert_eq!(o.backend, Backend::Legacy);
    }

    #[test]
    fn print_writes_the_plan_and_exits_zero() {
        let mut out = Vec::new();
        let code = execute(parse(&["print", "--app-ports", "8080"]), &mut out);
        assert_eq!(code, EXIT_OK);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("iptables -t nat -N OUTRIDER_EGRESS\n"),
            "{text}"
        );
        assert!(
            text.contains("--dports 8080 -j REDIRECT --to-ports 15000"),
            "{text}"
        );
    }

    #[test]
    fn bad_values_exit_one_and_name_every_flag() {
        let args = parse(&["apply", "--app-ports", "x", "--egress-ignored-ips", "bad"]);
        let IptablesAction::Apply(flags) = &args.action else {
            panic!("not apply");
        };
        let line = describe_problems(&flags.options().unwrap_err());
        assert!(
            line.contains("--app-ports (APPMESH_APP_PORTS): `x` is not a port"),
            "{line}"
        );
        assert!(
            line.contains("--egress-ignored-ips (APPMESH_EGRESS_IGNORED_IP)"),
            "{line}"
        );
        assert_eq!(execute(args, &mut Vec::new()), EXIT_BAD);
    }

    #[test]
    fn unknown_backend_is_a_usage_error() {
        let argv = ["outrider", "iptables", "apply", "--backend", "ebpf"];
        assert!(Cli::try_parse_from(argv).is_err());
    }
}
