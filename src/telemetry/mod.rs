//! Logs (JSON or pretty, via `tracing`) and Prometheus metrics.
//!
//! Log targets: `access` (one event per request), `audit` (security decisions), everything else is operational.

pub mod audit;
pub mod metrics;

use thiserror::Error;
use tracing_subscriber::EnvFilter;

use crate::config::{Log, LogFormat};

/// Logging could not be set up.
#[derive(Debug, Error)]
pub enum TelemetryError {
    #[error(
        "invalid log filter (log.level or RUST_LOG): {0}; use a level such as \"info\" or a filter such as \"info,bbsso=debug\""
    )]
    Filter(String),
    #[error("a global logger is already installed: {0}")]
    Install(String),
}

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `log.level`.
pub fn init(log: &Log) -> Result<(), TelemetryError> {
    let filter_text = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| log.level.clone());
    let filter = EnvFilter::builder()
        .parse(&filter_text)
        .map_err(|e| TelemetryError::Filter(e.to_string()))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let result = match log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    result.map_err(|e| TelemetryError::Install(e.to_string()))
}
