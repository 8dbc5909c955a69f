//! Logging setup: human text on a TTY, JSON otherwise (journald and DaemonSet logs), level
//! from `MOOR_LOG` (default `info`). Only the daemon and the CLI log; the FlexVolume front
//! end never does, because kubelet parses its stdout and stderr as one JSON document.
//! Beside the log's own filter, [`crate::csi::oldkubelet`] watches h2's server events (at
//! debug, whatever the level) to warn about a kubelet too old for the CSI sockets.
//!
//! The daemon also keeps its last [`RING_LINES`] log lines in memory ([`ring`]), formatted as
//! JSON like the journald/DaemonSet log, for `Request::Logs` (`moor bundle`): an operator's
//! bug report carries what the daemon said even where its stderr went nowhere. The ring is
//! process-wide because the subscriber is; it holds exactly what the log holds (which never
//! carries a secret), and nothing is written anywhere by it.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::sync::{Mutex, OnceLock};

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
            .with(ring_layer())
            .with(OldKubelet::default().with_filter(OldKubelet::filter()))
            .try_init()
    } else {
        registry
            .with(fmt.with_filter(filter))
            .with(ring_layer())
            .with(OldKubelet::default().with_filter(OldKubelet::filter()))
            .try_init()
    };
}

/// The layer filling [`ring`]: the JSON format of the log, at the log's level.
fn ring_layer<S>() -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let filter = EnvFilter::try_from_env("MOOR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_target(false)
        .with_current_span(true)
        .with_span_list(false)
        .with_ansi(false)
        .with_writer(|| RingWriter {
            ring: ring(),
            buf: Vec::new(),
        })
        .with_filter(filter)
}

/// How many log lines the daemon keeps for `Request::Logs`.
pub const RING_LINES: usize = 2000;

/// The last log lines, oldest first, at most `cap`.
#[derive(Debug)]
pub struct LogRing {
    lines: Mutex<VecDeque<String>>,
    cap: usize,
}

impl LogRing {
    /// An empty ring of `cap` lines.
    pub fn new(cap: usize) -> Self {
        LogRing {
            lines: Mutex::new(VecDeque::with_capacity(cap.min(64))),
            cap,
        }
    }

    /// Appends one line, dropping the oldest when full.
    pub fn push(&self, line: String) {
        let mut l = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if l.len() == self.cap {
            l.pop_front();
        }
        l.push_back(line);
    }

    /// The newest `n` lines, oldest first.
    pub fn last(&self, n: usize) -> Vec<String> {
        let l = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        l.iter().skip(l.len().saturating_sub(n)).cloned().collect()
    }
}

/// The process's ring (empty in a process that did not call [`init`]).
pub fn ring() -> &'static LogRing {
    static RING: OnceLock<LogRing> = OnceLock::new();
    RING.get_or_init(|| LogRing::new(RING_LINES))
}

/// One event's formatted bytes; pushed as lines when the formatter is done with it.
struct RingWriter {
    ring: &'static LogRing,
    buf: Vec<u8>,
}

impl std::io::Write for RingWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for RingWriter {
    fn drop(&mut self) {
        for line in String::from_utf8_lossy(&self.buf).lines() {
            if !line.trim().is_empty() {
                self.ring.push(line.to_owned());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_lines_in_order() {
        let r = LogRing::new(3);
        for i in 0..5 {
            r.push(format!("l{i}"));
        }
        assert_eq!(r.last(10), ["l2", "l3", "l4"]);
        assert_eq!(r.last(1), ["l4"]);
        let mut w = RingWriter {
            ring: Box::leak(Box::new(LogRing::new(4))),
            buf: Vec::new(),
        };
        std::io::Write::write_all(&mut w, b"{\"a\":1}\n\n{\"b\":2}\n").unwrap();
        let ring = w.ring;
        drop(w);
        assert_eq!(ring.last(4), ["{\"a\":1}", "{\"b\":2}"]);
    }
}
