//! Logging: one subscriber for both services, JSON for log shippers or pretty for a terminal.

use crate::config::LogFormat;

/// Starts `tracing` with the configured format and `RUST_LOG` (default `info`).
pub fn init(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,poem=warn,lapin=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init(),
        LogFormat::Pretty => builder.init(),
    }
}
