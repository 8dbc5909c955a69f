//! Logging setup: human text on a TTY, JSON otherwise (journald and DaemonSet logs), level
//! from `MOOR_LOG` (default `info`). Only the daemon and the CLI log; the FlexVolume front
//! end never does, because kubelet parses its stdout and stderr as one JSON document.
//! Beside the log's own filter, [`crate::csi::oldkubelet`] watches h2's server events (at
//! debug, whatever the level) to warn about a kubelet too old for the CSI sockets.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::csi::oldkubelet::OldKubelet;

/// Installs the global subscriber, writing to stderr.
pub fn init(format: Option<&str>) {
    let filter = EnvFilter::try_from_env("MOOR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        Some("json") => true,
        Some(_) => false,
        None => !std::io::stderr().is_terminal(),
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    // Last, so the event h2 logged is written (or not) before the warning follows it.
    let registry = tracing_subscriber::registry();
    let _ = if json {
        // The module path is dropped: `target` is one of moor's own field names.
        let fmt = fmt
            .json()
            .flatten_event(true)
            .with_target(false)
            .with_current_span(true)
            .with_span_list(false);
        registry
            .with(fmt.with_filter(filter))
            .with(OldKubelet::default().with_filter(OldKubelet::filter()))
            .try_init()
    } else {
        registry
            .with(fmt.with_filter(filter))
            .with(OldKubelet::default().with_filter(OldKubelet::filter()))
            .try_init()
    };
}
