//! The built-in upstream for demos and load tests: HTTP/1.1, h2c and gRPC echo with injected latency and failures.

mod body;
mod config;
mod grpc;
mod server;
mod service;

pub use config::{
    ConfigError, DEFAULT_ADDR, DEFAULT_FAIL_RATE, DEFAULT_FAIL_STATUS, DEFAULT_NAME, DurationError,
    Latency, LatencyParseError, MAX_BODY_SIZE, UpstreamConfig, parse_duration,
};
pub use server::{DRAIN_TIMEOUT, bind_and_serve, serve};
pub use service::{FAILURE_BODY, X_ECHO, X_UPSTREAM};
