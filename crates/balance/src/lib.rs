//! Endpoint choice for one upstream cluster: P2C over peak-EWMA load, or round robin.

mod balancer;
mod endpoint;

pub use balancer::{Algorithm, Balancer};
pub use endpoint::{DEFAULT_DECAY, DEFAULT_RTT, Endpoint, InFlight};
