//! `outrider explain`: which listener, route, targets, timeouts and retry policy one request
//! would get, step by step, without running the proxy. With `--gateway`, a request arriving on
//! the virtual gateway's listener.

use std::net::{IpAddr, ToSocketAddrs};
use std::process::ExitCode;

use clap::Args;
use outrider_http::{ExplainRequest, explain_snapshot_with};

use crate::SpecArgs;

#[derive(Args, Debug)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Explain an inbound request (ingress, listener 15000) redirected from app port --port.
    #[arg(long, requires = "port")]
    pub ingress: bool,
    /// With --ingress: the app port the request was sent to. With --gateway: the gateway
    /// listener's port (default: the URL's port).
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Do not look the endpoints up through the system resolver.
    #[arg(long)]
    pub no_resolve: bool,
    /// The connection's original destination address: picks among TCP virtual services that
    /// share the URL's port, as the proxy does. Default: the URL's host when it is an address.
    #[arg(long, value_name = "IP")]
    pub dst: Option<IpAddr>,
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
    let selector = match args.spec.selector() {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    // A gateway's listener port needs no --ingress: every request to a gateway is inbound.
    let ingress_port = if args.ingress || args.spec.gateway.is_some() {
        args.port
    } else {
        None
    };
    let mut req = match ExplainRequest::parse(&args.method, &args.url, &args.headers, ingress_port)
    {
        Ok(r) => r,
        Err(e) => return fail(&e.to_string()),
    };
    req.dst = args.dst;
    let built = match outrider_config::build(&args.spec.config, &selector) {
        Ok(b) => b,
        Err(problems) => {
            for p in &problems {
                println!("{p}");
            }
            return fail("configuration refused");
        }
    };
    // TCP services sharing a port are told apart by the addresses their names resolve to,
    // which the proxy keeps watching; here they are resolved once.
    let no_resolve = args.no_resolve;
    let mut ex = explain_snapshot_with(&built.snapshot, &req, |name| {
        if no_resolve {
            return None;
        }
        (name, 0)
            .to_socket_addrs()
            .ok()
            .map(|addrs| addrs.map(|a| a.ip()).collect())
    });
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
