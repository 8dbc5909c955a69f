//! Logging setup: human text on a TTY, JSON otherwise (journald and DaemonSet logs), level
//! from `MOOR_LOG` (default `info`). Only the daemon and the CLI log; the FlexVolume front
//! end never does, because kubelet parses its stdout and stderr as one JSON document.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber, writing to stderr.
pub fn init(format: Option<&str>) {
    let filter = EnvFilter::try_from_env("MOOR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        Some("json") => true,
        Some(_) => false,
        None => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        // The module path is dropped: `target` is one of moor's own field names.
        builder
            .json()
            .flatten_event(true)
            .with_target(false)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
}
