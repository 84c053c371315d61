//! `outrider explain`: which listener, route, targets, timeouts and retry policy one request
//! would get, step by step, without running the proxy.

use std::net::ToSocketAddrs;
use std::process::ExitCode;

use clap::Args;
use outrider_http::{ExplainRequest, explain_snapshot};

use crate::SpecArgs;

#[derive(Args, Debug)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Explain an inbound request (ingress, listener 15000) redirected from app port --port.
    #[arg(long, requires = "port")]
    pub ingress: bool,
    /// With --ingress: the app port the request was sent to.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Do not look the endpoints up through the system resolver.
    #[arg(long)]
    pub no_resolve: bool,
    /// A request header, `Name: value`; repeatable.
    #[arg(short = 'H', long = "header", value_name = "'K: V'")]
    pub headers: Vec<String>,
    /// The request method (GET, POST, ...).
    #[arg(value_name = "METHOD")]
    pub method: String,
    /// The absolute URL, e.g. http://svc.local:8080/path (tcp://svc.local:5432 for TCP).
    #[arg(value_name = "URL")]
    pub url: String,
}

/// Exit 0 when the request would be forwarded, 1 when not, or on bad usage or configuration.
pub fn run(args: ExplainArgs) -> ExitCode {
    let fail = |msg: &str| {
        eprintln!("outrider explain: {msg}");
        ExitCode::from(1)
    };
    if args.spec.config.is_empty() {
        return fail("give at least one --config PATH");
    }
    if args.spec.gateway.is_some() {
        return fail("explain covers virtual nodes; give --node");
    }
    let selector = match args.spec.selector() {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let ingress_port = if args.ingress { args.port } else { None };
    let req = match ExplainRequest::parse(&args.method, &args.url, &args.headers, ingress_port) {
        Ok(r) => r,
        Err(e) => return fail(&e.to_string()),
    };
    let built = match outrider_config::build(&args.spec.config, &selector) {
        Ok(b) => b,
        Err(problems) => {
            for p in &problems {
                println!("{p}");
            }
            return fail("configuration refused");
        }
    };
    let mut ex = explain_snapshot(&built.snapshot, &req);
    if !args.no_resolve {
        ex.fill_resolved(|host, port| {
            (host, port)
                .to_socket_addrs()
                .map(Iterator::collect)
                .map_err(|e| e.to_string())
        });
    }
    print!("{ex}");
    if ex.found() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
