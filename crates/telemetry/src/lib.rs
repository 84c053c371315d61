//! Telemetry: Envoy-named metrics (Prometheus and StatsD/DogStatsD through the `metrics` facade),
//! process log setup, and trace context propagation.

mod logging;
mod stats;
mod statsd;
pub mod trace_context;

pub use logging::{LogFormat, LogLevelError, init_logging, parse_level, set_level};
pub use stats::{
    ClusterStats, ListenerStats, ServerStats, StatsTags, TelemetryError, TelemetryOptions,
    install_metrics, install_metrics_with, prometheus_text, response_class,
};
pub use statsd::{
    DEFAULT_FLUSH_INTERVAL, DEFAULT_STATSD_ADDRESS, DEFAULT_STATSD_PORT, StatsdOptions,
    StatsdRecorder, StatsdTarget,
};
