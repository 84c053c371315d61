//! Route tables and request matchers: which route, and which weighted target, a request gets.
//!
//! Everything here is pure: no I/O, no clock, no global state. Tables are built once per config
//! snapshot (patterns compiled, routes sorted) and then only read on the request path.

// NOTE(skeleton): the public types below are the contract that `outrider-config` compiles into
// and `outrider-http` reads. Implementation lives in the modules.

mod matcher;
mod table;
mod weighted;

pub use matcher::{
    CookieMatch, GrpcMatch, HeaderMatch, HostMatch, HttpMatch, PathMatch, QueryMatch, RouteMatch,
    StringMatch, TcpMatch,
};
pub use table::{RequestParts, Route, RouteTable};
pub use weighted::WeightedTargets;
