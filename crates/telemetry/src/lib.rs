//! Telemetry: Envoy-named metrics (Prometheus through the `metrics` facade) and log setup.

mod logging;
mod stats;

pub use logging::{LogFormat, LogLevelError, init_logging, parse_level, set_level};
pub use stats::{
    ClusterStats, ListenerStats, ServerStats, install_metrics, prometheus_text, response_class,
};
