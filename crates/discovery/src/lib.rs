//! Resolves DNS (and Cloud Map-by-DNS) names into endpoint sets published on `watch` channels.

mod error;
mod resolver;
mod watch;
mod wire;

pub use error::ResolveError;
pub use resolver::{DEFAULT_TIMEOUT, Resolver, ResolverConfig};
pub use watch::{
    DEFAULT_REFRESH, DnsTarget, Endpoints, IpPreference, MIN_REFRESH, ResponseType, Watch, watch,
};
pub use wire::WireError;
