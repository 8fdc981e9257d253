//! The one logging setup every Platter binary uses: `RUST_LOG`-style filtering (default `info`),
//! written to stderr so stdout stays free for user-facing output.

/// Installs the global `tracing` subscriber. Call once, first thing in `main`.
pub fn init_logging() {
    init_logging_with_default("info");
}

/// [`init_logging`] with another default filter when `RUST_LOG` is unset (e.g. `"warn"` for a
/// command whose stdout is the progress report).
pub fn init_logging_with_default(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
}
