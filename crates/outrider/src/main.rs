//! `outrider`: the command line. Parses flags and environment, then hands over to the library
//! crates.

mod cmd_demo;
mod cmd_drain;
mod cmd_explain;
mod cmd_healthcheck;
mod cmd_iptables;
mod cmd_run;
mod cmd_upstream;
mod cmd_validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Outrider: an App Mesh-compatible sidecar proxy. It reads App Mesh resource specs offline and
/// routes a task's traffic as those specs say.
#[derive(Parser)]
#[command(name = "outrider", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up and consumed at once: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the proxy (without --config: a transparent pass-through sidecar).
    Run(cmd_run::RunArgs),
    /// Check App Mesh specs and show what the node would do.
    Validate(cmd_validate::ValidateArgs),
    /// A self-contained demo mesh: demo services, weighted routes and the proxy in one process.
    Demo(cmd_demo::DemoArgs),
    /// Install, remove, print or verify the iptables interception rules.
    Iptables(cmd_iptables::IptablesArgs),
    /// Exit 0 when the local proxy is ready (for container health checks).
    Healthcheck(cmd_healthcheck::HealthcheckArgs),
    /// Built-in upstream for demos and load tests.
    Upstream(cmd_upstream::UpstreamArgs),
    /// Show which listener, route, targets, timeouts and retries a request would get.
    Explain(cmd_explain::ExplainArgs),
    /// Ask the local proxy to drain (POST /drain_listeners), for preStop hooks.
    Drain(cmd_drain::DrainArgs),
}

/// Which App Mesh resources to load and which node this proxy is (shared by several commands).
#[derive(Args, Debug, Clone)]
pub struct SpecArgs {
    /// A file or directory of App Mesh resources (JSON or YAML); repeatable.
    #[arg(long = "config", short = 'c', value_name = "PATH")]
    pub config: Vec<PathBuf>,
    /// The virtual node this proxy is.
    #[arg(long, value_name = "NAME", conflicts_with = "gateway")]
    pub node: Option<String>,
    /// The virtual gateway this proxy is.
    #[arg(long, value_name = "NAME")]
    pub gateway: Option<String>,
    /// The mesh to use when the files hold several.
    #[arg(long, value_name = "MESH")]
    pub mesh: Option<String>,
    /// App Mesh's way of naming the node: arn:aws:appmesh:REGION:ACCOUNT:mesh/MESH/virtualNode/NAME.
    #[arg(
        long,
        env = "APPMESH_RESOURCE_ARN",
        value_name = "ARN",
        hide_env_values = false
    )]
    pub resource_arn: Option<String>,
}

impl SpecArgs {
    /// The selector from flags, with the ARN as a fallback (flags win).
    pub fn selector(&self) -> Result<outrider_config::Selector, String> {
        let mut sel = match &self.resource_arn {
            Some(arn) if self.node.is_none() && self.gateway.is_none() => {
                outrider_config::Selector::from_arn(arn).map_err(|p| p.to_string())?
            }
            _ => outrider_config::Selector::default(),
        };
        if self.node.is_some() {
            sel.node = self.node.clone();
        }
        if self.gateway.is_some() {
            sel.gateway = self.gateway.clone();
        }
        if self.mesh.is_some() {
            sel.mesh = self.mesh.clone();
        }
        Ok(sel)
    }
}

/// `malloc` with a per-thread cache of freed blocks on the runtime's threads: a proxied request
/// allocates and frees about 17 blocks, and glibc's own cache misses on most of them under load
/// (see the crate's documentation and docs/benchmarks.md).
#[global_allocator]
static ALLOC: outrider_alloc::CachingAlloc = outrider_alloc::CachingAlloc;

/// Lets every thread a runtime starts (workers and blocking threads) cache freed heap blocks,
/// and return them when it stops.
pub(crate) fn cache_on_runtime_threads(
    builder: &mut tokio::runtime::Builder,
) -> &mut tokio::runtime::Builder {
    builder
        .on_thread_start(outrider_alloc::enable_thread_cache)
        .on_thread_stop(outrider_alloc::flush_thread_cache)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => cmd_run::run(args),
        Command::Validate(args) => cmd_validate::run(args),
        Command::Demo(args) => cmd_demo::run(args),
        Command::Iptables(args) => cmd_iptables::run(args),
        Command::Healthcheck(args) => cmd_healthcheck::run(args),
        Command::Upstream(args) => cmd_upstream::run(args),
        Command::Explain(args) => cmd_explain::run(args),
        Command::Drain(args) => cmd_drain::run(args),
    }
}
