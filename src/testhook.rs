//! Pause points for crash tests: with `MOOR_TEST_PAUSE_AT=<point>`, the daemon stops at that
//! point of a volume operation, touches `MOOR_TEST_PAUSE_MARKER` and waits to be SIGKILLed —
//! so a test can kill it exactly between two steps — or, with `MOOR_TEST_RESUME_MARKER`, waits
//! until that file exists and goes on (once), so a test can break the host between two steps.
//! Unset (always, in production), a point costs one load of a cached `None`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static PAUSE_AT: OnceLock<Option<String>> = OnceLock::new();
static HOLD_AT: OnceLock<Option<String>> = OnceLock::new();
static RESUMED: AtomicBool = AtomicBool::new(false);

/// Every lifecycle point, in the order a mount and an unmount pass them. Drivers add their
/// own inside attach: `rbd:mapped`, `iscsi:logged-in`.
pub const POINTS: &[&str] = &[
    "stage:intent",
    "stage:attached",
    "stage:mounted",
    "publish:intent",
    "publish:bound-before-fsgroup",
    "publish:bound",
    "unpublish:intent",
    "unpublish:unmounted",
    "unstage:intent",
    "unstage:unmounted",
];

/// Pauses forever at `point` when the test environment asks for it; with
/// `MOOR_TEST_HOLD_AT=<point>` it touches the marker and goes on once the test removed it
/// (at most a minute), so a test can change the machine between two steps.
pub fn pause_point(point: &str) {
    let hold = HOLD_AT.get_or_init(|| {
        std::env::var("MOOR_TEST_HOLD_AT")
            .ok()
            .filter(|s| !s.is_empty())
    });
    if hold.as_deref() == Some(point)
        && let Some(marker) = std::env::var_os("MOOR_TEST_PAUSE_MARKER")
    {
        tracing::warn!(
            point,
            "test hold point reached; waiting for the marker to go"
        );
        let _ = std::fs::write(&marker, point);
        for _ in 0..6000 {
            if !std::path::Path::new(&marker).exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        return;
    }
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

/// Panics when `MOOR_TEST_FRONTEND_PANIC` is set: lets a test prove the front end's panic
/// hook answers kubelet with one JSON line (kubelet gives a driver no environment, so this
/// never fires under kubelet).
pub fn frontend_panic_point() {
    if std::env::var_os("MOOR_TEST_FRONTEND_PANIC").is_some_and(|v| !v.is_empty()) {
        panic!("test panic point reached");
    }
}
