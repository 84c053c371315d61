//! Route tables and request matchers: which route, and which weighted target, a request gets.
//!
//! Everything here is pure: no I/O, no clock, no global state. Tables are built once per config
//! snapshot (routes sorted, patterns already compiled by the caller) and then only read on the
//! request path, where matching allocates nothing.
//!
//! ```
//! use http::{HeaderMap, Method};
//! use outrider_route::{
//!     HttpMatch, PathMatch, RequestParts, Route, RouteMatch, RouteTable, WeightedTargets,
//! };
//!
//! let route = |name: &str, prefix: &str| Route {
//!     name: name.into(),
//!     priority: None,
//!     matcher: RouteMatch::Http(HttpMatch {
//!         path: Some(PathMatch::Prefix(prefix.into())),
//!         ..HttpMatch::default()
//!     }),
//!     action: WeightedTargets::new(vec![("blue", 90), ("green", 10)]),
//! };
//! // The longer prefix is tried first, whatever the input order.
//! let table = RouteTable::new(vec![route("all", "/"), route("api", "/api")]);
//! let headers = HeaderMap::new();
//! let req = RequestParts {
//!     method: &Method::GET,
//!     scheme: "http",
//!     host: "svc.local",
//!     port: 8080,
//!     path: "/api/users",
//!     query: None,
//!     headers: &headers,
//! };
//! let chosen = table.select(&req).map(|r| &*r.name);
//! assert_eq!(chosen, Some("api"));
//! assert_eq!(table.routes()[0].action.pick_with(95), Some(&"green"));
//! ```

#![warn(missing_docs)]

mod matcher;
mod table;
mod weighted;

pub use matcher::{
    CookieMatch, GrpcMatch, HeaderMatch, HostMatch, HttpMatch, PathMatch, QueryMatch, RouteMatch,
    StringMatch, TcpMatch,
};
pub use table::{RequestParts, Route, RouteTable};
pub use weighted::WeightedTargets;
