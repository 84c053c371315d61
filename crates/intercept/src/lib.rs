//! Traffic interception with iptables: App Mesh options to a rule plan (pure), and apply, clean,
//! print and verify of that plan.

mod exec;
mod options;
mod plan;
mod verify;

pub use exec::{
    BackendKind, Error, Report, Runner, Tool, apply, apply_with, clean, clean_with,
    ensure_permitted, families, print, resolve,
};
pub use options::{
    ALWAYS_IGNORED_PORT, Backend, DEFAULT_EGRESS_PORT, DEFAULT_IGNORED_UID, DEFAULT_INGRESS_PORT,
    ENV_APP_PORTS, ENV_EGRESS_IGNORED_IP, ENV_EGRESS_IGNORED_PORTS, ENV_EGRESS_PORT,
    ENV_IGNORE_GID, ENV_IGNORE_UID, ENV_INGRESS_PORT, Options, OptionsError, Problem,
};
pub use plan::{
    ChainPlan, EGRESS_CHAIN, Family, INGRESS_CHAIN, MULTIPORT_MAX, Plan, RULE_COMMENT, Rule, TABLE,
    clean_commands, listing_has_chain, plan,
};
pub use verify::{
    PROBE_ADDRS, PROBE_PORTS, PROBE_TIMEOUT, VerifyError, probe_target, verify, verify_with,
};
