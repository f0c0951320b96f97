//! Structured logs and the Prometheus registry shared by every part of the exporter.

use std::io::IsTerminal;

use clap::ValueEnum;
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log pipelines.
    Json,
    /// Human-readable lines.
    Text,
}

/// Installs the global subscriber: `RUST_LOG` filters (default `info`), logs go to stderr so
/// that stdout stays free for command output.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// The exporter's registry; metric names get the `kinesis_exporter` prefix.
pub fn new_registry() -> Registry {
    Registry::with_prefix("kinesis_exporter")
}
