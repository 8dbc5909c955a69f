//! Pause points for crash tests: with `MOOR_TEST_PAUSE_AT=<point>`, the daemon stops at that
//! point of a volume operation, touches `MOOR_TEST_PAUSE_MARKER` and waits to be SIGKILLed —
//! so a test can kill it exactly between two steps — or, with `MOOR_TEST_RESUME_MARKER`, waits
//! until that file exists and goes on (once), so a test can break the host between two steps.
//! Unset (always, in production), a point costs one load of a cached `None`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static PAUSE_AT: OnceLock<Option<String>> = OnceLock::new();
static RESUMED: AtomicBool = AtomicBool::new(false);

/// Every lifecycle point, in the order a mount and an unmount pass them. Drivers add their
/// own inside attach: `rbd:mapped`, `iscsi:logged-in`.
pub const POINTS: &[&str] = &[
    "stage:intent",
    "stage:attached",
    "stage:mounted",
    "publish:intent",
    "publish:bound",
    "unpublish:intent",
    "unpublish:unmounted",
    "unstage:intent",
    "unstage:unmounted",
];

/// Pauses forever at `point` when the test environment asks for it.
pub fn pause_point(point: &str) {
    let want = PAUSE_AT.get_or_init(|| {
        std::env::var("MOOR_TEST_PAUSE_AT")
            .ok()
            .filter(|s| !s.is_empty())
    });
    if want.as_deref() != Some(point) {
        return;
    }
    let resume = std::env::var_os("MOOR_TEST_RESUME_MARKER");
    if resume.is_some() && RESUMED.load(Ordering::SeqCst) {
        return;
    }
    tracing::warn!(point, "test pause point reached; waiting to be killed");
    if let Some(marker) = std::env::var_os("MOOR_TEST_PAUSE_MARKER") {
        let _ = std::fs::write(marker, point);
    }
    if let Some(resume) = resume {
        while !std::path::Path::new(&resume).exists() {
            std::thread::sleep(Duration::from_millis(10));
        }
        RESUMED.store(true, Ordering::SeqCst);
        tracing::warn!(point, "test pause point resumed");
        return;
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
