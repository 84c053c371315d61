//! Arbitrary `APPMESH_*` values (one per input line) through option parsing and, when they
//! parse, the iptables rule planner for both families: no panic, no empty argument, multiport
//! lists within iptables' limit, and every jump targets a chain the plan creates.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outrider_intercept::{Family, MULTIPORT_MAX, Options, plan};

const VARS: [&str; 7] = [
    outrider_intercept::ENV_APP_PORTS,
    outrider_intercept::ENV_INGRESS_PORT,
    outrider_intercept::ENV_EGRESS_PORT,
    outrider_intercept::ENV_IGNORE_UID,
    outrider_intercept::ENV_IGNORE_GID,
    outrider_intercept::ENV_EGRESS_IGNORED_IP,
    outrider_intercept::ENV_EGRESS_IGNORED_PORTS,
];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let values: Vec<&str> = text.split('\n').collect();
    let lookup = |name: &str| {
        let i = VARS.iter().position(|v| *v == name)?;
        values.get(i).map(|v| v.to_string())
    };
    let Ok(opts) = Options::from_lookup(lookup) else { return };
    for family in [Family::V4, Family::V6] {
        let p = plan(&opts, family);
        for spec in p.chains.iter().flat_map(|c| &c.rules).chain(p.jumps.iter().map(|j| &j.spec)) {
            assert!(spec.iter().all(|a| !a.is_empty()), "empty argument in {spec:?}");
            if let Some(i) = spec.iter().position(|a| a == "--dports") {
                let ports = spec.get(i + 1).map_or(0, |l| l.split(',').count());
                assert!((1..=MULTIPORT_MAX).contains(&ports), "{spec:?}");
            }
        }
        for jump in &p.jumps {
            assert!(p.chains.iter().any(|c| jump.spec.iter().any(|a| a == c.name)), "{jump:?}");
        }
    }
});
