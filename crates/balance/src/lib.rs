//! Endpoint choice for one upstream cluster: P2C over peak-EWMA load, or round robin.

mod balancer;
mod endpoint;
mod outlier;

pub use balancer::{Algorithm, Balancer};
pub use endpoint::{DEFAULT_DECAY, DEFAULT_RTT, Endpoint, InFlight};
pub use outlier::{MAX_EJECTION_TIME, OutlierConfig, OutlierDetector};
