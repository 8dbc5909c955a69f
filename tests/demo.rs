//! `moor demo` as an operator runs it (tier 2: root, a loop device, mounts in the demo's own
//! private mount namespace): it passes, prints every step, the status table and the
//! metrics, and leaves nothing behind — no scratch tree, no loop device, no mount.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{moor_exe, mounts_under, require_privileged_sandbox, sh};

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn the_demo_passes_and_leaves_nothing_behind() {
    require_privileged_sandbox();
    let tmp = tempfile::Builder::new()
        .prefix("moor-demo-it")
        .tempdir_in("/var/tmp")
        .unwrap();
    let out = Command::new(moor_exe())
        .arg("demo")
        .env("TMPDIR", tmp.path())
        .output()
        .expect("run moor demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "moor demo failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "create a loop-backed disk",
        "READY=1 received over sd_notify",
        "B's write: EROFS",
        "same UUID: not formatted again",
        "stop daemon (SIGTERM)",
        "demo passed",
    ] {
        assert!(stdout.contains(step), "no {step:?} in:\n{stdout}");
    }
    assert!(
        stdout.contains("DRIVER  VOLUME"),
        "no status table:\n{stdout}"
    );
    assert!(
        stdout.contains("moor_volume_stats_capacity_bytes{"),
        "no volume statistics:\n{stdout}"
    );
    // Its scratch tree is gone, and with it every loop device over its disk image.
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "scratch left behind: {left:?}");
    let loops = sh(
        "losetup",
        &["--list", "--noheadings", "--output", "BACK-FILE"],
    );
    let ours = tmp.path().to_str().unwrap();
    assert!(
        !loops.lines().any(|l| l.contains(ours)),
        "loop device left: {loops}"
    );
    assert_eq!(mounts_under(tmp.path()), Vec::<std::path::PathBuf>::new());
}
