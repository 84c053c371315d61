//! The rule plan: options to the exact, ordered iptables arguments of the nat table (pure).

use std::fmt;

use crate::options::Options;

/// Outrider's egress chain, jumped to from `OUTPUT`.
pub const EGRESS_CHAIN: &str = "OUTRIDER_EGRESS";
/// Outrider's ingress chain, jumped to from `PREROUTING`.
pub const INGRESS_CHAIN: &str = "OUTRIDER_INGRESS";
/// Comment on every rule Outrider puts in a built-in chain, so `clean` can find it.
pub const RULE_COMMENT: &str = "outrider";
/// The table every rule lives in.
pub const TABLE: &str = "nat";
/// Most ports one `-m multiport` rule takes (a kernel limit).
pub const MULTIPORT_MAX: usize = 15;

/// Address family, which picks `iptables` or `ip6tables`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4 (`iptables`).
    V4,
    /// IPv6 (`ip6tables`).
    V6,
}

/// Outrider's rules for one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The family these rules are for.
    pub family: Family,
    /// Outrider's own chains with their rules, in order.
    pub chains: Vec<ChainPlan>,
    /// The jumps from built-in chains into Outrider's chains, in order.
    pub jumps: Vec<Rule>,
}

/// One of Outrider's chains and its rules, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainPlan {
    /// The chain name.
    pub name: &'static str,
    /// The rule specs (what follows `-A <chain>`), in order.
    pub rules: Vec<Vec<String>>,
}

/// A rule in a named chain: `-A <chain> <spec..>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The chain the rule is in.
    pub chain: &'static str,
    /// The rule spec (what follows `-A <chain>`).
    pub spec: Vec<String>,
}

impl Family {
    /// The generic program name, as printed by `print`.
    pub fn program(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

impl Rule {
    /// Arguments with `op` (`-A`, `-C`, `-D`), table first: `-t nat <op> <chain> <spec..>`.
    pub fn args(&self, op: &str) -> Vec<String> {
        let mut a = nat_args(&[op, self.chain]);
        a.extend(self.spec.iter().cloned());
        a
    }

    /// The line `iptables -S` prints for this rule.
    pub fn listing(&self) -> String {
        format!("-A {} {}", self.chain, self.spec.join(" "))
    }
}

impl Plan {
    /// The commands that install the plan on a table without Outrider's chains, table first:
    /// create the chains, fill the egress chain, jump from `OUTPUT`, fill the ingress chain,
    /// jump from `PREROUTING`. `apply` flushes instead of creating when a chain exists and
    /// adds a jump only when `-C` does not find it.
    pub fn apply_commands(&self) -> Vec<Vec<String>> {
        let mut out: Vec<Vec<String>> = self
            .chains
            .iter()
            .map(|c| nat_args(&["-N", c.name]))
            .collect();
        for chain in &self.chains {
            out.extend(chain.rules().map(|r| r.args("-A")));
            out.extend(
                self.jumps
                    .iter()
                    .filter(|j| j.spec.last().map(String::as_str) == Some(chain.name))
                    .map(|j| j.args("-A")),
            );
        }
        out
    }

    /// [`Plan::apply_commands`] as shell lines: `iptables -t nat ...` (or `ip6tables`).
    pub fn print_lines(&self) -> Vec<String> {
        let program = self.family.program();
        self.apply_commands()
            .iter()
            .map(|args| format!("{program} {}", args.join(" ")))
            .collect()
    }

    /// The chain named `name`, if it is one of the plan's.
    pub fn chain(&self, name: &str) -> Option<&ChainPlan> {
        self.chains.iter().find(|c| c.name == name)
    }
}

impl ChainPlan {
    /// The chain's rules as [`Rule`]s.
    pub fn rules(&self) -> impl Iterator<Item = Rule> + '_ {
        self.rules.iter().map(|spec| Rule {
            chain: self.name,
            spec: spec.clone(),
        })
    }

    /// What `iptables -t nat -S <chain>` prints once the chain is in place.
    pub fn listing(&self) -> Vec<String> {
        let mut out = vec![format!("-N {}", self.name)];
        out.extend(self.rules().map(|r| r.listing()));
        out
    }
}

/// Builds the rules for `family` from `opts`: only the ignored addresses of that family are used.
pub fn plan(opts: &Options, family: Family) -> Plan {
    let mut egress = Vec::new();
    if let Some(uid) = opts.ignored_uid {
        egress.push(spec(&[
            "-m",
            "owner",
            "--uid-owner",
            &uid.to_string(),
            "-j",
            "RETURN",
        ]));
    }
    if let Some(gid) = opts.ignored_gid {
        egress.push(spec(&[
            "-m",
            "owner",
            "--gid-owner",
            &gid.to_string(),
            "-j",
            "RETURN",
        ]));
    }
    for ports in multiport_lists(&opts.egress_ignored_ports) {
        egress.push(spec(&[
            "-p",
            "tcp",
            "-m",
            "multiport",
            "--dports",
            &ports,
            "-j",
            "RETURN",
        ]));
    }
    let of_family = |n: &&ipnet::IpNet| match family {
        Family::V4 => matches!(n, ipnet::IpNet::V4(_)),
        Family::V6 => matches!(n, ipnet::IpNet::V6(_)),
    };
    for net in opts.egress_ignored_ips.iter().filter(of_family) {
        // iptables lists the address before the protocol; keeping its order lets verify
        // compare `-S` output with the plan line by line.
        egress.push(spec(&["-d", &net.to_string(), "-p", "tcp", "-j", "RETURN"]));
    }
    let egress_port = opts.egress_port.to_string();
    egress.push(spec(&[
        "-p",
        "tcp",
        "-j",
        "REDIRECT",
        "--to-ports",
        &egress_port,
    ]));

    let ingress_port = opts.ingress_port.to_string();
    let ingress = multiport_lists(&opts.app_ports)
        .map(|ports| {
            spec(&[
                "-p",
                "tcp",
                "-m",
                "multiport",
                "--dports",
                &ports,
                "-j",
                "REDIRECT",
                "--to-ports",
                &ingress_port,
            ])
        })
        .collect();

    Plan {
        family,
        chains: vec![
            ChainPlan {
                name: EGRESS_CHAIN,
                rules: egress,
            },
            ChainPlan {
                name: INGRESS_CHAIN,
                rules: ingress,
            },
        ],
        jumps: vec![
            jump("OUTPUT", "--dst-type", EGRESS_CHAIN),
            jump("PREROUTING", "--src-type", INGRESS_CHAIN),
        ],
    }
}

/// The commands that remove what `apply` made, given the table as `iptables -t nat -S`
/// prints it: every rule outside Outrider's chains that jumps into them (all copies), then
/// flush and delete each of Outrider's chains that exists. Nothing else is touched.
pub fn clean_commands(listing: &str) -> Vec<Vec<String>> {
    let ours = [EGRESS_CHAIN, INGRESS_CHAIN];
    let mut out = Vec::new();
    for line in listing.lines() {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        let [op, chain, rest @ ..] = tokens.as_slice() else {
            continue;
        };
        let jumps_to_ours = rest
            .windows(2)
            .any(|w| matches!(w[0], "-j" | "-g") && ours.contains(&w[1]));
        if *op == "-A" && !ours.contains(chain) && jumps_to_ours {
            let mut args = nat_args(&["-D", chain]);
            args.extend(rest.iter().map(|s| s.to_string()));
            out.push(args);
        }
    }
    let existing: Vec<&str> = ours
        .into_iter()
        .filter(|c| listing_has_chain(listing, c))
        .collect();
    out.extend(existing.iter().map(|c| nat_args(&["-F", c])));
    out.extend(existing.iter().map(|c| nat_args(&["-X", c])));
    out
}

/// Whether the `iptables -t nat -S` listing declares `chain`.
pub fn listing_has_chain(listing: &str, chain: &str) -> bool {
    listing
        .lines()
        .any(|l| l.strip_prefix("-N ").map(str::trim) == Some(chain))
}

/// Comma lists of at most [`MULTIPORT_MAX`] ports.
fn multiport_lists(ports: &[u16]) -> impl Iterator<Item = String> + '_ {
    ports.chunks(MULTIPORT_MAX).map(|chunk| {
        chunk
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",")
    })
}

fn jump(from: &'static str, type_flag: &str, to: &str) -> Rule {
    Rule {
        chain: from,
        spec: spec(&[
            "-p",
            "tcp",
            "-m",
            "addrtype",
            "!",
            type_flag,
            "LOCAL",
            "-m",
            "comment",
            "--comment",
            RULE_COMMENT,
            "-j",
            to,
        ]),
    }
}

fn spec(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

fn nat_args(parts: &[&str]) -> Vec<String> {
    let mut a = spec(&["-t", TABLE]);
    a.extend(parts.iter().map(|s| s.to_string()));
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Options;

    fn lines(opts: &Options, family: Family) -> Vec<String> {
        plan(opts, family).print_lines()
    }

    #[test]
    fn golden_defaults_with_one_app_port() {
        let opts = Options {
            app_ports: vec![8080],
            ..Options::default()
        };
        let expected = [
            "iptables -t nat -N OUTRIDER_EGRESS",
            "iptables -t nat -N OUTRIDER_INGRESS",
            "iptables -t nat -A OUTRIDER_EGRESS -m owner --uid-owner 1337 -j RETURN",
            "iptables -t nat -A OUTRIDER_EGRESS -p tcp -m multiport --dports 22 -j RETURN",
            "iptables -t nat -A OUTRIDER_EGRESS -p tcp -j REDIRECT --to-ports 15001",
            "iptables -t nat -A OUTPUT -p tcp -m addrtype ! --dst-type LOCAL -m comment --comment outrider -j OUTRIDER_EGRESS",
            "iptables -t nat -A OUTRIDER_INGRESS -p tcp -m multiport --dports 8080 -j REDIRECT --to-ports 15000",
            "iptables -t nat -A PREROUTING -p tcp -m addrtype ! --src-type LOCAL -m comment --comment outrider -j OUTRIDER_INGRESS",
        ];
        assert_eq!(lines(&opts, Family::V4), expected);
    }

    #[test]
    fn golden_twenty_ports_chunk_into_fifteen_and_five_with_uid_and_gid() {
        let ports: Vec<u16> = (9001..=9020).collect();
        let opts = Options {
            app_ports: ports.clone(),
            ingress_port: 16000,
            egress_port: 16001,
            ignored_uid: Some(1337),
            ignored_gid: Some(1338),
            egress_ignored_ports: ports,
            ..Options::default()
        };
        let p = plan(&opts, Family::V4);
        let egress = &p.chain(EGRESS_CHAIN).unwrap().listing();
        assert_eq!(
            egress,
            &[
                "-N OUTRIDER_EGRESS",
                "-A OUTRIDER_EGRESS -m owner --uid-owner 1337 -j RETURN",
                "-A OUTRIDER_EGRESS -m owner --gid-owner 1338 -j RETURN",
                "-A OUTRIDER_EGRESS -p tcp -m multiport --dports 9001,9002,9003,9004,9005,9006,9007,9008,9009,9010,9011,9012,9013,9014,9015 -j RETURN",
                "-A OUTRIDER_EGRESS -p tcp -m multiport --dports 9016,9017,9018,9019,9020 -j RETURN",
                "-A OUTRIDER_EGRESS -p tcp -j REDIRECT --to-ports 16001",
            ]
        );
        let ingress = &p.chain(INGRESS_CHAIN).unwrap().listing();
        assert_eq!(
            ingress,
            &[
                "-N OUTRIDER_INGRESS",
                "-A OUTRIDER_INGRESS -p tcp -m multiport --dports 9001,9002,9003,9004,9005,9006,9007,9008,9009,9010,9011,9012,9013,9014,9015 -j REDIRECT --to-ports 16000",
                "-A OUTRIDER_INGRESS -p tcp -m multiport --dports 9016,9017,9018,9019,9020 -j REDIRECT --to-ports 16000",
            ]
        );
    }

    #[test]
    fn golden_addresses_split_by_family() {
        let opts = Options {
            app_ports: vec![80],
            ignored_uid: None,
            ignored_gid: Some(1337),
            egress_ignored_ips: [
                "169.254.169.254/32",
                "2001:db8::/32",
                "10.0.0.0/8",
                "fd00::1/128",
            ]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect(),
            ipv6: true,
            ..Options::default()
        };
        let v4 = plan(&opts, Family::V4)
            .chain(EGRESS_CHAIN)
            .unwrap()
            .listing();
        assert_eq!(
            v4,
            [
                "-N OUTRIDER_EGRESS",
                "-A OUTRIDER_EGRESS -m owner --gid-owner 1337 -j RETURN",
                "-A OUTRIDER_EGRESS -p tcp -m multiport --dports 22 -j RETURN",
                "-A OUTRIDER_EGRESS -d 169.254.169.254/32 -p tcp -j RETURN",
                "-A OUTRIDER_EGRESS -d 10.0.0.0/8 -p tcp -j RETURN",
                "-A OUTRIDER_EGRESS -p tcp -j REDIRECT --to-ports 15001",
            ]
        );
        let v6 = lines(&opts, Family::V6);
        assert_eq!(
            &v6[2..6],
            [
                "ip6tables -t nat -A OUTRIDER_EGRESS -m owner --gid-owner 1337 -j RETURN",
                "ip6tables -t nat -A OUTRIDER_EGRESS -p tcp -m multiport --dports 22 -j RETURN",
                "ip6tables -t nat -A OUTRIDER_EGRESS -d 2001:db8::/32 -p tcp -j RETURN",
                "ip6tables -t nat -A OUTRIDER_EGRESS -d fd00::1/128 -p tcp -j RETURN",
            ]
        );
        assert_eq!(v6.len(), 10);
    }

    #[test]
    fn no_app_ports_leaves_the_ingress_chain_empty() {
        let p = plan(&Options::default(), Family::V4);
        assert!(p.chain(INGRESS_CHAIN).unwrap().rules.is_empty());
        assert_eq!(p.jumps.len(), 2);
    }

    #[test]
    fn jump_args_check_and_delete() {
        let p = plan(&Options::default(), Family::V4);
        assert_eq!(
            p.jumps[0].args("-C").join(" "),
            "-t nat -C OUTPUT -p tcp -m addrtype ! --dst-type LOCAL -m comment --comment outrider -j OUTRIDER_EGRESS"
        );
    }

    #[test]
    fn clean_deletes_only_our_jumps_and_chains() {
        let listing = "\
-P PREROUTING ACCEPT
-P OUTPUT ACCEPT
-N FOREIGN
-N OUTRIDER_EGRESS
-N OUTRIDER_INGRESS
-A PREROUTING -p tcp -m addrtype ! --src-type LOCAL -m comment --comment outrider -j OUTRIDER_INGRESS
-A OUTPUT -p udp -j FOREIGN
-A OUTPUT -p tcp -m addrtype ! --dst-type LOCAL -m comment --comment outrider -j OUTRIDER_EGRESS
-A OUTPUT -p tcp -m addrtype ! --dst-type LOCAL -m comment --comment outrider -j OUTRIDER_EGRESS
-A OUTRIDER_EGRESS -p tcp -j REDIRECT --to-ports 15001
-A FOREIGN -p udp -j RETURN
";
        let got: Vec<String> = clean_commands(listing)
            .iter()
            .map(|a| a.join(" "))
            .collect();
        assert_eq!(
            got,
            [
                "-t nat -D PREROUTING -p tcp -m addrtype ! --src-type LOCAL -m comment --comment outrider -j OUTRIDER_INGRESS",
                "-t nat -D OUTPUT -p tcp -m addrtype ! --dst-type LOCAL -m comment --comment outrider -j OUTRIDER_EGRESS",
                "-t nat -D OUTPUT -p tcp -m addrtype ! --dst-type LOCAL -m comment --comment outrider -j OUTRIDER_EGRESS",
                "-t nat -F OUTRIDER_EGRESS",
                "-t nat -F OUTRIDER_INGRESS",
                "-t nat -X OUTRIDER_EGRESS",
                "-t nat -X OUTRIDER_INGRESS",
            ]
        );
    }

    #[test]
    fn clean_of_a_clean_table_does_nothing() {
        assert!(clean_commands("-P OUTPUT ACCEPT\n-N FOREIGN\n").is_empty());
        assert!(listing_has_chain("-N FOREIGN\n", "FOREIGN"));
        assert!(!listing_has_chain("-N FOREIGN2\n", "FOREIGN"));
    }
}
