//! Real iptables in fresh network namespaces (needs root; prints a skip line otherwise).

use outrider_intercept::{
    Backend, Options, Runner, VerifyError, apply_with, clean_with, print, verify_with,
};
use outrider_test_support::netns::{Netns, is_root, veth_pair};

const BACKENDS: [Backend; 2] = [Backend::Nft, Backend::Legacy];

fn options(backend: Backend) -> Options {
    Options {
        app_ports: (9001..=9020).collect(),
        ignored_gid: Some(1338),
        egress_ignored_ips: ["169.254.169.254", "10.0.0.0/8", "fd00::/8"]
            .iter()
            .map(|s| {
                s.parse()
                    .unwrap_or_else(|_| format!("{s}/32").parse().expect("valid test CIDR"))
            })
            .collect(),
        egress_ignored_ports: vec![22, 443],
        ipv6: true,
        backend,
        ..Options::default()
    }
}

fn save_program(backend: Backend, v6: bool) -> &'static str {
    match (backend, v6) {
        (Backend::Legacy, false) => "iptables-legacy-save",
        (Backend::Legacy, true) => "ip6tables-legacy-save",
        (_, false) => "iptables-nft-save",
        (_, true) => "ip6tables-nft-save",
    }
}

/// `iptables-save -t nat` for both families, without comment lines and counters.
fn saved(ns: &Netns, backend: Backend) -> String {
    let mut text = String::new();
    for v6 in [false, true] {
        let out = ns
            .try_exec(&[save_program(backend, v6), "-t", "nat"])
            .expect("iptables-save in test namespace");
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            let line = match line.find(" [") {
                Some(i) if line.starts_with(':') => &line[..i],
                _ => line,
            };
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

fn ipt(ns: &Netns, backend: Backend, v6: bool, args: &[&str]) {
    let program = match (backend, v6) {
        (Backend::Legacy, false) => "iptables-legacy",
        (Backend::Legacy, true) => "ip6tables-legacy",
        (_, false) => "iptables-nft",
        (_, true) => "ip6tables-nft",
    };
    let mut cmd = vec![program, "-w"];
    cmd.extend_from_slice(args);
    ns.try_exec(&cmd)
        .expect("iptables command in test namespace");
}

#[test]
fn apply_installs_chains_and_jumps_and_is_idempotent() {
    if !is_root() {
        println!("skipped: needs root");
        return;
    }
    for backend in BACKENDS {
        let ns = Netns::new().unwrap();
        let runner = Runner::netns(ns.name());
        let opts = options(backend);
        apply_with(&opts, &runner).unwrap();
        let first = saved(&ns, backend);
        for needle in [
            ":OUTRIDER_EGRESS",
            ":OUTRIDER_INGRESS",
            "-A OUTPUT -p tcp -m addrtype ! --dst-type LOCAL -m comment --comment outrider -j OUTRIDER_EGRESS",
            "-A PREROUTING -p tcp -m addrtype ! --src-type LOCAL -m comment --comment outrider -j OUTRIDER_INGRESS",
            "-A OUTRIDER_EGRESS -m owner --gid-owner 1338 -j RETURN",
            "-A OUTRIDER_EGRESS -d 10.0.0.0/8 -p tcp -j RETURN",
            "-A OUTRIDER_EGRESS -d fd00::/8 -p tcp -j RETURN",
            "-A OUTRIDER_INGRESS -p tcp -m multiport --dports 9016,9017,9018,9019,9020 -j REDIRECT --to-ports 15000",
        ] {
            assert!(
                first.contains(needle),
                "{backend:?}: no `{needle}` in\n{first}"
            );
        }
        let report = apply_with(&opts, &runner).unwrap();
        assert_eq!(
            saved(&ns, backend),
            first,
            "{backend:?}: second apply changed rules"
        );
        assert!(report.changes > 0);
        // Verify compares `-S` with the plan, so this also proves the plan's canonical form.
        verify_rules_only(&opts, &runner);
    }
}

/// verify fails only at the probe (no route here), never at the rule comparison.
fn verify_rules_only(opts: &Options, runner: &Runner) {
    match verify_with(opts, runner) {
        Ok(()) | Err(VerifyError::NotRedirected { .. }) => {}
        Err(e) => panic!("rules differ from the plan: {e}"),
    }
}

#[test]
fn clean_restores_the_ruleset_and_keeps_foreign_rules() {
    if !is_root() {
        println!("skipped: needs root");
        return;
    }
    for backend in BACKENDS {
        let ns = Netns::new().unwrap();
        let runner = Runner::netns(ns.name());
        for v6 in [false, true] {
            ipt(&ns, backend, v6, &["-t", "nat", "-N", "FOREIGN"]);
            ipt(
                &ns,
                backend,
                v6,
                &["-t", "nat", "-A", "FOREIGN", "-p", "udp", "-j", "RETURN"],
            );
            ipt(
                &ns,
                backend,
                v6,
                &["-t", "nat", "-A", "OUTPUT", "-p", "udp", "-j", "FOREIGN"],
            );
        }
        let before = saved(&ns, backend);
        let opts = options(backend);

        assert!(!print(&opts).is_empty());
        assert_eq!(
            saved(&ns, backend),
            before,
            "{backend:?}: print changed rules"
        );

        apply_with(&opts, &runner).unwrap();
        apply_with(&opts, &runner).unwrap();
        let applied = saved(&ns, backend);
        assert!(applied.contains("-A OUTPUT -p udp -j FOREIGN"), "{applied}");
        assert!(applied.contains(":OUTRIDER_EGRESS"), "{applied}");

        clean_with(&opts, &runner).unwrap();
        assert_eq!(
            saved(&ns, backend),
            before,
            "{backend:?}: clean left changes"
        );
        let again = clean_with(&opts, &runner).unwrap();
        assert_eq!(again.changes, 0);
        assert_eq!(saved(&ns, backend), before);
    }
}

#[test]
fn clean_removes_duplicated_jumps() {
    if !is_root() {
        println!("skipped: needs root");
        return;
    }
    let ns = Netns::new().unwrap();
    let runner = Runner::netns(ns.name());
    let opts = Options {
        backend: Backend::Nft,
        ..Options::default()
    };
    let before = saved(&ns, Backend::Nft);
    apply_with(&opts, &runner).unwrap();
    let jump = [
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "-m",
        "addrtype",
        "!",
        "--dst-type",
        "LOCAL",
        "-m",
        "comment",
        "--comment",
        "outrider",
        "-j",
        "OUTRIDER_EGRESS",
    ];
    ipt(&ns, Backend::Nft, false, &jump);
    clean_with(&opts, &runner).unwrap();
    assert_eq!(saved(&ns, Backend::Nft), before);
}

#[test]
fn verify_fails_without_rules_and_succeeds_with_them() {
    if !is_root() {
        println!("skipped: needs root");
        return;
    }
    for backend in BACKENDS {
        let ns = Netns::new().unwrap();
        let peer = Netns::new().unwrap();
        let veth = veth_pair(&ns, &peer, "10.251.0.1/24", "10.251.0.2/24").unwrap();
        ns.default_route(&veth.a_dev, false).unwrap();
        let runner = Runner::netns(ns.name());
        let opts = Options {
            app_ports: vec![8080],
            backend,
            ..Options::default()
        };

        let err = verify_with(&opts, &runner).unwrap_err();
        assert!(matches!(err, VerifyError::MissingChain { .. }), "{err}");
        assert!(!err.to_string().contains('\n'));

        apply_with(&opts, &runner).unwrap();
        verify_with(&opts, &runner).unwrap();

        // The probe leaves an ignored root identity on its own thread.
        let root_ignored = Options {
            ignored_uid: Some(0),
            ignored_gid: Some(0),
            ..opts.clone()
        };
        apply_with(&root_ignored, &runner).unwrap();
        verify_with(&root_ignored, &runner).unwrap();

        // A missing jump is named.
        ipt(
            &ns,
            backend,
            false,
            &[
                "-t",
                "nat",
                "-D",
                "OUTPUT",
                "-p",
                "tcp",
                "-m",
                "addrtype",
                "!",
                "--dst-type",
                "LOCAL",
                "-m",
                "comment",
                "--comment",
                "outrider",
                "-j",
                "OUTRIDER_EGRESS",
            ],
        );
        let err = verify_with(&root_ignored, &runner).unwrap_err();
        assert!(matches!(err, VerifyError::MissingJump { .. }), "{err}");

        // Rules in place but the egress chain tampered with: a mismatch names the line.
        apply_with(&opts, &runner).unwrap();
        ipt(
            &ns,
            backend,
            false,
            &[
                "-t",
                "nat",
                "-I",
                "OUTRIDER_EGRESS",
                "-p",
                "tcp",
                "-j",
                "RETURN",
            ],
        );
        let err = verify_with(&opts, &runner).unwrap_err();
        assert!(matches!(err, VerifyError::RuleMismatch { .. }), "{err}");
    }
}

#[test]
fn verify_accepts_a_proxy_already_listening() {
    if !is_root() {
        println!("skipped: needs root");
        return;
    }
    let ns = Netns::new().unwrap();
    let peer = Netns::new().unwrap();
    let veth = veth_pair(&ns, &peer, "10.252.0.1/24", "10.252.0.2/24").unwrap();
    ns.default_route(&veth.a_dev, false).unwrap();
    let runner = Runner::netns(ns.name());
    let opts = Options {
        backend: Backend::Nft,
        ..Options::default()
    };
    apply_with(&opts, &runner).unwrap();
    let listener = ns
        .run(|| std::net::TcpListener::bind(("0.0.0.0", opts.egress_port)).unwrap())
        .unwrap();
    verify_with(&opts, &runner).unwrap();
    drop(listener);
    // Without anything listening on the egress port the redirected probe is refused... unless
    // verify binds it itself, which it does when the port is free.
    verify_with(&opts, &runner).unwrap();
}

#[test]
fn probe_reports_traffic_that_escapes_the_redirect() {
    if !is_root() {
        println!("skipped: needs root");
        return;
    }
    let ns = Netns::new().unwrap();
    let peer = Netns::new().unwrap();
    let veth = veth_pair(&ns, &peer, "10.253.0.1/24", "10.253.0.2/24").unwrap();
    ns.default_route(&veth.a_dev, false).unwrap();
    let runner = Runner::netns(ns.name());
    let opts = Options {
        backend: Backend::Nft,
        ..Options::default()
    };
    apply_with(&opts, &runner).unwrap();
    // Our rules are intact, but a foreign rule ahead of our jump lets the probe escape.
    ipt(
        &ns,
        Backend::Nft,
        false,
        &[
            "-t", "nat", "-I", "OUTPUT", "1", "-p", "tcp", "-j", "RETURN",
        ],
    );
    let err = verify_with(&opts, &runner).unwrap_err();
    assert!(matches!(err, VerifyError::NotRedirected { .. }), "{err}");
}
