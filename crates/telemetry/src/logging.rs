//! Process logs through `tracing`, with Envoy's level names and a runtime level switch.

use std::sync::OnceLock;

use tracing_subscriber::{
    EnvFilter, Registry, layer::SubscriberExt, reload, util::SubscriberInitExt,
};

/// Log output format (`--log-format`). Default is `Text`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A level name that neither Envoy nor `tracing` knows.
#[derive(Debug, thiserror::Error)]
#[error("unknown log level {0:?} (trace, debug, info, warning, error, critical, off)")]
pub struct LogLevelError(pub String);

static RELOAD: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Maps Envoy's level names (`ENVOY_LOG_LEVEL`) to a `tracing` filter directive.
pub fn parse_level(level: &str) -> Result<&'static str, LogLevelError> {
    Ok(match level.trim().to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warn" | "warning" => "warn",
        "error" | "critical" => "error",
        "off" => "off",
        _ => return Err(LogLevelError(level.to_string())),
    })
}

/// Installs the global subscriber on stderr. Later calls do nothing (tests start many proxies
/// in one process).
pub fn init_logging(level: &str, format: LogFormat) -> Result<(), LogLevelError> {
    let directive = parse_level(level)?;
    if RELOAD.get().is_some() {
        return Ok(());
    }
    let (filter, handle) = reload::Layer::new(EnvFilter::new(directive));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    let result = match format {
        LogFormat::Text => tracing_subscriber::registry()
            .with(filter)
            .with(fmt)
            .try_init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(filter)
            .with(fmt.json())
            .try_init(),
    };
    if result.is_ok() {
        let _ = RELOAD.set(handle);
    }
    Ok(())
}

/// Changes the log level at run time (admin `POST /logging?level=L`).
pub fn set_level(level: &str) -> Result<(), LogLevelError> {
    let directive = parse_level(level)?;
    if let Some(handle) = RELOAD.get() {
        let _ = handle.modify(|f| *f = EnvFilter::new(directive));
    }
    Ok(())
}
