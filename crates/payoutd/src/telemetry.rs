//! Logging. RUST_LOG filters (default "info"); PAYOUTD_LOG_FORMAT=json for JSON lines.
//! OpenTelemetry export is a later issue; spans already carry payout id, account, state,
//! attempt and the caller's traceparent.

use tracing_subscriber::EnvFilter;

pub fn init(default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = std::env::var("PAYOUTD_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
