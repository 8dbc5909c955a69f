//! Test hooks, compiled in only with the cargo feature `test-hooks` (`run-tests` and
//! `vm-tests/run` build with it; `packaging/build-release` does not):
//!
//! - pause points: with `MOOR_TEST_PAUSE_AT=<point>`, the daemon stops at that point of a
//!   volume operation and touches `MOOR_TEST_PAUSE_MARKER`; then it waits to be SIGKILLed —
//!   so a test can kill it exactly between two steps — or, with `MOOR_TEST_RESUME_MARKER`,
//!   until that file exists, and goes on (once), so a test can change the machine between
//!   two steps;
//! - the front end's panic switch, `MOOR_TEST_FRONTEND_PANIC`;
//! - a fake API server's pod view, `MOOR_TEST_PODS=<file>`: see `cluster::testpods` (it
//!   lives beside the cluster it replaces, so this floor imports nothing above it).
//!
//! Invariant: without the feature every hook is an empty function — a release binary never
//! reads these variables, so nothing in a node's environment can pause or crash it — and
//! `moor version` does not name [`FEATURE_TAG`]. With it, an unset point costs one load of a
//! cached `None`.

/// What `moor version` adds when the hooks are compiled in (the harness checks it before a
/// test relies on a pause point).
pub const FEATURE_TAG: &str = "test-hooks";

/// True when this build carries the hooks.
pub const COMPILED_IN: bool = cfg!(feature = "test-hooks");

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

/// Pauses at `point` when the test environment asks for it (see the module header).
#[cfg(feature = "test-hooks")]
pub fn pause_point(point: &str) {
    armed::pause_point(point);
}

/// Compiled out: this build has no test hooks.
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn pause_point(_point: &str) {}

/// Panics when `MOOR_TEST_FRONTEND_PANIC` is set: lets a test prove the front end's panic
/// hook answers kubelet with one JSON line (kubelet gives a driver no environment, so this
/// would never fire under kubelet anyway).
#[cfg(feature = "test-hooks")]
pub fn frontend_panic_point() {
    if std::env::var_os("MOOR_TEST_FRONTEND_PANIC").is_some_and(|v| !v.is_empty()) {
        panic!("test panic point reached");
    }
}

/// Compiled out: this build has no test hooks.
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn frontend_panic_point() {}

#[cfg(feature = "test-hooks")]
mod armed {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    static PAUSE_AT: OnceLock<Option<String>> = OnceLock::new();
    static RESUMED: AtomicBool = AtomicBool::new(false);

    pub(super) fn pause_point(point: &str) {
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
        tracing::warn!(point, "test pause point reached");
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::{Child, Command, ExitStatus, Stdio};
    use std::time::{Duration, Instant};

    const CHILD: &str = "MOOR_TESTHOOK_CHILD";

    /// Re-runs the test `name` of this binary as a child with the pause environment set: the
    /// environment of a process is only safe to set before it starts.
    fn child(name: &str, marker: &Path, resume: Option<&Path>) -> Child {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", name, "--nocapture", "--test-threads", "1"])
            .env(CHILD, "1")
            .env("MOOR_TESTHOOK_RAN", marker.with_extension("ran"))
            .env("MOOR_TEST_PAUSE_AT", "stage:mounted")
            .env("MOOR_TEST_PAUSE_MARKER", marker)
            .env_remove("MOOR_TEST_RESUME_MARKER")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(r) = resume {
            cmd.env("MOOR_TEST_RESUME_MARKER", r);
        }
        cmd.spawn().unwrap()
    }

    /// Waits up to 20 s until the child exits (Some) or the marker appears (None).
    fn exit_or_marker(c: &mut Child, marker: &Path) -> Option<ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return Some(st);
            }
            if marker.exists() || Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The child's side: pass the point twice, as a mount and a retry would, then end.
    fn pass_the_point_twice() -> bool {
        if std::env::var_os(CHILD).is_none() {
            return false;
        }
        pause_point("stage:intent");
        pause_point("stage:mounted");
        pause_point("stage:mounted");
        // Proof that the child really ran this test (a wrong name would run none).
        if let Some(ran) = std::env::var_os("MOOR_TESTHOOK_RAN") {
            std::fs::write(ran, "went past every point").unwrap();
        }
        true
    }

    #[test]
    fn a_pause_point_stops_the_process_only_in_a_build_with_test_hooks() {
        if pass_the_point_twice() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("paused");
        let mut c = child(
            "testhook::tests::a_pause_point_stops_the_process_only_in_a_build_with_test_hooks",
            &marker,
            None,
        );
        let exited = exit_or_marker(&mut c, &marker);
        if COMPILED_IN {
            assert!(exited.is_none(), "it went past the point: {exited:?}");
            std::thread::sleep(Duration::from_millis(200));
            assert!(c.try_wait().unwrap().is_none(), "it did not stay paused");
            assert_eq!(std::fs::read_to_string(&marker).unwrap(), "stage:mounted");
            c.kill().unwrap();
            c.wait().unwrap();
        } else {
            // What a release binary does with MOOR_TEST_PAUSE_AT in its environment: nothing.
            let _ = c.kill();
            assert!(
                exited.is_some_and(|s| s.success()),
                "a build without test hooks paused: {exited:?}"
            );
            assert!(
                !marker.exists(),
                "a build without test hooks wrote the marker"
            );
        }
    }

    #[cfg(feature = "test-hooks")]
    #[test]
    fn a_resumable_pause_goes_on_once_the_resume_file_exists_and_pauses_only_once() {
        if pass_the_point_twice() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (marker, resume) = (dir.path().join("paused"), dir.path().join("resume"));
        let mut c = child(
            "testhook::tests::a_resumable_pause_goes_on_once_the_resume_file_exists_and_pauses_only_once",
            &marker,
            Some(&resume),
        );
        assert!(exit_or_marker(&mut c, &marker).is_none(), "no pause");
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            c.try_wait().unwrap().is_none(),
            "it went on before the resume"
        );
        std::fs::remove_file(&marker).unwrap();
        std::fs::write(&resume, "go").unwrap();
        let st = exit_or_marker(&mut c, &marker);
        // The second pass of the same point did not pause again (no new marker).
        assert!(st.is_some_and(|s| s.success()), "{st:?}");
        assert!(!marker.exists());
        assert!(marker.with_extension("ran").exists());
    }

    #[test]
    fn the_points_are_named_once() {
        let mut seen = std::collections::BTreeSet::new();
        for p in POINTS {
            assert!(seen.insert(*p), "{p} twice");
            assert!(p.contains(':'), "{p}");
        }
    }
}
