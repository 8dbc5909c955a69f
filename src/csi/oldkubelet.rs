//! Makes an old kubelet's failure visible. kubelet before 1.26 dials a CSI socket with the
//! socket's path as HTTP/2 `:authority`; Rust's HTTP/2 server (h2) refuses such a request
//! as malformed and resets the stream (PROTOCOL_ERROR) inside h2 itself — the request never
//! reaches hyper, tonic or moor, and h2 says so only in a debug line of its own. This
//! tracing layer watches for exactly that line and turns it into a warning that names the
//! minimum kubelet version; h2 offers no hook or setting for it, and will not relax the
//! check (it is the spec's).
//!
//! Invariant: at most one warning per [`WARN_EVERY`] (kubelet retries every few seconds),
//! and only h2's own malformed-authority events are looked at.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, Layer};

/// The oldest kubelet that dials a Rust CSI server in a way it accepts.
pub const MINIMUM_KUBELET: &str = "1.26";
/// How often the warning may repeat.
pub const WARN_EVERY: Duration = Duration::from_secs(60);
/// h2's module that reports a malformed request.
const H2_SERVER: &str = "h2::server";
/// What h2's line says about a refused authority.
const MALFORMED_AUTHORITY: &str = "malformed authority";

/// The layer (install it with [`OldKubelet::filter`]).
#[derive(Debug, Default)]
pub struct OldKubelet {
    last_warned: AtomicU64,
}

impl OldKubelet {
    /// Only h2's server events at debug, whatever the log level of the rest.
    pub fn filter() -> Targets {
        Targets::new().with_target(H2_SERVER, Level::DEBUG)
    }
}

/// The event's formatted message.
#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        }
    }
}

/// The authority h2 quoted (`… malformed authority ("/var/…/csi.sock"): …`), if any.
fn quoted_authority(message: &str) -> Option<&str> {
    let rest = &message[message.find(MALFORMED_AUTHORITY)? + MALFORMED_AUTHORITY.len()..];
    let start = rest.find('"')? + 1;
    let len = rest[start..].find('"')?;
    Some(&rest[start..start + len])
}

impl<S: Subscriber> Layer<S> for OldKubelet {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != H2_SERVER {
            return;
        }
        let mut m = Message::default();
        event.record(&mut m);
        if !m.0.contains(MALFORMED_AUTHORITY) {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_warned.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < WARN_EVERY.as_secs() {
            return;
        }
        self.last_warned.store(now.max(1), Ordering::Relaxed);
        let authority = quoted_authority(&m.0).unwrap_or("");
        tracing::warn!(
            authority,
            minimum_kubelet = MINIMUM_KUBELET,
            "a client sent a CSI call with a socket path as HTTP/2 :authority, which moor's HTTP/2 server refuses (stream reset, PROTOCOL_ERROR): kubelet older than {MINIMUM_KUBELET} does this; moor's CSI drivers need kubelet {MINIMUM_KUBELET} or newer"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authority_is_read_from_h2s_line() {
        let line = r#"malformed headers: malformed authority (BytesStr("/var/lib/kubelet/plugins/nfs.csi.moor.io/csi.sock")): invalid uri character"#;
        assert_eq!(
            quoted_authority(line),
            Some("/var/lib/kubelet/plugins/nfs.csi.moor.io/csi.sock")
        );
        assert_eq!(quoted_authority("malformed headers: missing method"), None);
    }
}
