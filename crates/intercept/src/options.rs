//! Interception options: App Mesh's knobs, their defaults, and parsing from `APPMESH_*` strings.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// Port of the proxy's ingress listener. Default is 15000 (App Mesh `ProxyIngressPort`).
pub const DEFAULT_INGRESS_PORT: u16 = 15000;
/// Port of the proxy's egress listener. Default is 15001 (App Mesh `ProxyEgressPort`).
pub const DEFAULT_EGRESS_PORT: u16 = 15001;
/// UID whose traffic is never redirected when neither a UID nor a GID is given. Default is 1337.
pub const DEFAULT_IGNORED_UID: u32 = 1337;
/// Egress port that is always ignored, as App Mesh does (SSH keeps working). Always 22.
pub const ALWAYS_IGNORED_PORT: u16 = 22;

/// Variable holding the app's ports (comma list) whose inbound TCP is redirected.
pub const ENV_APP_PORTS: &str = "APPMESH_APP_PORTS";
/// Variable holding the ingress port.
pub const ENV_INGRESS_PORT: &str = "APPMESH_ENVOY_INGRESS_PORT";
/// Variable holding the egress port.
pub const ENV_EGRESS_PORT: &str = "APPMESH_ENVOY_EGRESS_PORT";
/// Variable holding the ignored UID.
pub const ENV_IGNORE_UID: &str = "APPMESH_IGNORE_UID";
/// Variable holding the ignored GID.
pub const ENV_IGNORE_GID: &str = "APPMESH_IGNORE_GID";
/// Variable holding the ignored egress addresses (comma list of IPs or CIDRs).
pub const ENV_EGRESS_IGNORED_IP: &str = "APPMESH_EGRESS_IGNORED_IP";
/// Variable holding the ignored egress ports (comma list).
pub const ENV_EGRESS_IGNORED_PORTS: &str = "APPMESH_EGRESS_IGNORED_PORTS";

/// Which iptables back end runs the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// Pick the back end that already holds rules, else the one `iptables` points to.
    /// This is the default.
    #[default]
    Auto,
    /// `iptables-nft` / `ip6tables-nft`.
    Nft,
    /// `iptables-legacy` / `ip6tables-legacy`.
    Legacy,
}

/// Interception options, with App Mesh's semantics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Ports the app listens on; inbound TCP to them goes to `ingress_port`. Default is none
    /// (the ingress chain is then empty).
    pub app_ports: Vec<u16>,
    /// Ingress listener port. Default is [`DEFAULT_INGRESS_PORT`].
    pub ingress_port: u16,
    /// Egress listener port. Default is [`DEFAULT_EGRESS_PORT`].
    pub egress_port: u16,
    /// UID whose egress is not redirected (the proxy's own). Default is [`DEFAULT_IGNORED_UID`]
    /// when no GID is given either, else none.
    pub ignored_uid: Option<u32>,
    /// GID whose egress is not redirected. Default is none.
    pub ignored_gid: Option<u32>,
    /// Destinations whose egress is not redirected. Default is none.
    pub egress_ignored_ips: Vec<IpNet>,
    /// Destination ports whose egress is not redirected; [`ALWAYS_IGNORED_PORT`] is always
    /// first. Default is `[22]`.
    pub egress_ignored_ports: Vec<u16>,
    /// Also install the rules with ip6tables. Default is false.
    pub ipv6: bool,
    /// Back end choice. Default is [`Backend::Auto`].
    pub backend: Backend,
}

/// Every problem found in option values, one per offending variable or flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionsError {
    /// The problems, in the order the variables were read.
    pub problems: Vec<Problem>,
}

/// One bad option value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The `APPMESH_*` name of the option (the CLI maps it to its flag).
    pub var: &'static str,
    /// What is wrong, naming the offending value.
    pub reason: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            app_ports: Vec::new(),
            ingress_port: DEFAULT_INGRESS_PORT,
            egress_port: DEFAULT_EGRESS_PORT,
            ignored_uid: Some(DEFAULT_IGNORED_UID),
            ignored_gid: None,
            egress_ignored_ips: Vec::new(),
            egress_ignored_ports: vec![ALWAYS_IGNORED_PORT],
            ipv6: false,
            backend: Backend::Auto,
        }
    }
}

impl Options {
    /// Reads the `APPMESH_*` variables of the process environment; unset or empty variables
    /// keep their defaults. `ipv6` and `backend` keep their defaults.
    pub fn from_env() -> Result<Options, OptionsError> {
        Options::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`Options::from_env`], reading each `APPMESH_*` name through `lookup`, so that a
    /// CLI can hand in its flags (already merged with the environment).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Options, OptionsError> {
        let mut problems = Vec::new();
        let mut opts = Options::default();
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());

        if let Some(v) = get(ENV_APP_PORTS) {
            opts.app_ports = collect(ENV_APP_PORTS, parse_ports(&v), &mut problems);
        }
        if let Some(v) = get(ENV_INGRESS_PORT) {
            opts.ingress_port = collect(ENV_INGRESS_PORT, parse_port(&v), &mut problems);
        }
        if let Some(v) = get(ENV_EGRESS_PORT) {
            opts.egress_port = collect(ENV_EGRESS_PORT, parse_port(&v), &mut problems);
        }
        let uid = get(ENV_IGNORE_UID).map(|v| collect(ENV_IGNORE_UID, parse_id(&v), &mut problems));
        let gid = get(ENV_IGNORE_GID).map(|v| collect(ENV_IGNORE_GID, parse_id(&v), &mut problems));
        opts.ignored_gid = gid;
        opts.ignored_uid = match (uid, gid) {
            (None, None) => Some(DEFAULT_IGNORED_UID),
            (uid, _) => uid,
        };
        if let Some(v) = get(ENV_EGRESS_IGNORED_IP) {
            opts.egress_ignored_ips =
                collect(ENV_EGRESS_IGNORED_IP, parse_cidrs(&v), &mut problems);
        }
        if let Some(v) = get(ENV_EGRESS_IGNORED_PORTS) {
            let ports = collect(ENV_EGRESS_IGNORED_PORTS, parse_ports(&v), &mut problems);
            opts.egress_ignored_ports = with_always_ignored(ports);
        }
        if opts.ingress_port == opts.egress_port && opts.ingress_port != 0 {
            problems.push(Problem {
                var: ENV_EGRESS_PORT,
                reason: format!("egress port {} equals the ingress port", opts.egress_port),
            });
        }
        if problems.is_empty() {
            Ok(opts)
        } else {
            Err(OptionsError { problems })
        }
    }
}

impl fmt::Display for OptionsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for OptionsError {}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.var, self.reason)
    }
}

/// Puts [`ALWAYS_IGNORED_PORT`] first and drops duplicates, keeping the given order.
fn with_always_ignored(ports: Vec<u16>) -> Vec<u16> {
    let mut out = vec![ALWAYS_IGNORED_PORT];
    for p in ports {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// Records a parse failure and yields a default, so that every variable gets checked.
fn collect<T: Default>(var: &'static str, r: Result<T, String>, problems: &mut Vec<Problem>) -> T {
    r.unwrap_or_else(|reason| {
        problems.push(Problem { var, reason });
        T::default()
    })
}

fn parse_port(s: &str) -> Result<u16, String> {
    let s = s.trim();
    match u16::from_str(s) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(format!("`{s}` is not a port (1-65535)")),
    }
}

fn parse_id(s: &str) -> Result<u32, String> {
    let s = s.trim();
    u32::from_str(s).map_err(|_| format!("`{s}` is not a numeric id"))
}

/// Parses a comma list of ports, skipping empty items and duplicates; reports every bad item.
fn parse_ports(s: &str) -> Result<Vec<u16>, String> {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        match parse_port(item) {
            Ok(p) if !out.contains(&p) => out.push(p),
            Ok(_) => {}
            Err(e) => bad.push(e),
        }
    }
    if bad.is_empty() {
        Ok(out)
    } else {
        Err(bad.join(", "))
    }
}

/// Parses a comma list of CIDRs or bare addresses (a host prefix); host bits are cleared the
/// way iptables prints them.
fn parse_cidrs(s: &str) -> Result<Vec<IpNet>, String> {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let net = IpNet::from_str(item)
            .ok()
            .or_else(|| IpAddr::from_str(item).ok().map(IpNet::from));
        match net.map(|n| n.trunc()) {
            Some(n) if !out.contains(&n) => out.push(n),
            Some(_) => {}
            None => bad.push(format!("`{item}` is not an IP address or CIDR")),
        }
    }
    if bad.is_empty() {
        Ok(out)
    } else {
        Err(bad.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<Options, OptionsError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Options::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_when_nothing_is_set() {
        let o = from(&[]).unwrap();
        assert_eq!(o, Options::default());
        assert_eq!(o.ignored_uid, Some(1337));
        assert_eq!(o.egress_ignored_ports, vec![22]);
    }

    #[test]
    fn parses_every_variable() {
        let o = from(&[
            (ENV_APP_PORTS, "8080, 9090,8080"),
            (ENV_INGRESS_PORT, "16000"),
            (ENV_EGRESS_PORT, "16001"),
            (ENV_IGNORE_GID, "1338"),
            (
                ENV_EGRESS_IGNORED_IP,
                "169.254.170.2,10.1.2.3/8,2001:db8::1",
            ),
            (ENV_EGRESS_IGNORED_PORTS, "443,22,"),
        ])
        .unwrap();
        assert_eq!(o.app_ports, vec![8080, 9090]);
        assert_eq!((o.ingress_port, o.egress_port), (16000, 16001));
        assert_eq!((o.ignored_uid, o.ignored_gid), (None, Some(1338)));
        let ips: Vec<String> = o.egress_ignored_ips.iter().map(|n| n.to_string()).collect();
        assert_eq!(ips, ["169.254.170.2/32", "10.0.0.0/8", "2001:db8::1/128"]);
        assert_eq!(o.egress_ignored_ports, vec![22, 443]);
    }

    #[test]
    fn collects_every_problem() {
        let e = from(&[
            (ENV_APP_PORTS, "80,x,70000"),
            (ENV_EGRESS_PORT, "0"),
            (ENV_IGNORE_UID, "-1"),
            (ENV_EGRESS_IGNORED_IP, "10.0.0.0/33,ok"),
        ])
        .unwrap_err();
        let vars: Vec<&str> = e.problems.iter().map(|p| p.var).collect();
        assert_eq!(
            vars,
            [
                ENV_APP_PORTS,
                ENV_EGRESS_PORT,
                ENV_IGNORE_UID,
                ENV_EGRESS_IGNORED_IP
            ]
        );
        let line = e.to_string();
        assert!(line.contains("`x` is not a port"), "{line}");
        assert!(line.contains("`70000` is not a port"), "{line}");
        assert!(line.contains("`10.0.0.0/33` is not an IP"), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn same_ingress_and_egress_port_is_rejected() {
        let e = from(&[(ENV_INGRESS_PORT, "15001")]).unwrap_err();
        assert_eq!(e.problems[0].var, ENV_EGRESS_PORT);
    }
}
