//! Telemetry: Envoy-named metrics (Prometheus and StatsD/DogStatsD through the `metrics` facade),
//! process log setup, trace context propagation, and span export over OTLP.

mod logging;
mod stats;
mod statsd;
pub mod trace_context;
pub mod tracing_export;

pub use logging::{LogFormat, LogLevelError, init_logging, parse_level, set_level};
pub use stats::{
    ClusterStats, ListenerStats, ServerStats, StatsTags, TelemetryError, TelemetryOptions,
    install_metrics, install_metrics_with, prometheus_text, response_class,
};
pub use statsd::{
    DEFAULT_FLUSH_INTERVAL, DEFAULT_STATSD_ADDRESS, DEFAULT_STATSD_PORT, StatsdOptions,
    StatsdRecorder, StatsdTarget,
};
pub use tracing_export::{
    OtlpOptions, OtlpProtocol, RequestTrace, Sampler, Tracer, TracingError, TracingOptions,
};
