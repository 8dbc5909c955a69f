//! CSI node calls on local volumes through the daemon's executor (tier 2: root, real bind
//! mounts, loop devices and mkfs; a real daemon, driven with `Request::Csi` as the CSI front
//! end hands it over).
//!
//! What a user checks: NodeStageVolume mounts once at moor's stage and nothing at kubelet's
//! staging path; NodePublishVolume makes the target and the pod's writes land in the volume
//! (read-only publishes cannot write); the stage stays when its last publish goes and only
//! NodeUnstageVolume ends it; calls repeat without side effects; a call on a volume with one
//! in flight answers `busy` at once while FlexVolume's waits its turn.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Daemon, is_mounted, require_privileged_sandbox, s, source, write_errno};
use moor::api::{AccessMode, CsiCall, Response, VolumeMode};
use moor::testkit::csi_call::{options, reason};
use serde_json::json;

const ID: &str = "pv-dir-1";

fn stage(d: &Daemon, id: &str, attrs: &[(&str, &str)], access: AccessMode) -> Response {
    d.csi_call(
        "local",
        id,
        CsiCall::Stage {
            staging_path: s(&d.csi_paths().staging("local", id)).into(),
            mode: VolumeMode::Filesystem,
            access,
            options: options(attrs).unwrap(),
        },
    )
}

fn publish(d: &Daemon, id: &str, pod: &str, attrs: &[(&str, &str)], ro: bool) -> Response {
    let mut opts = options(attrs).unwrap();
    opts.read_only = ro;
    d.csi_call(
        "local",
        id,
        CsiCall::Publish {
            staging_path: s(&d.csi_paths().staging("local", id)).into(),
            target: s(&d.csi_paths().target(pod, id)).into(),
            mode: VolumeMode::Filesystem,
            access: AccessMode::SingleNodeWriter,
            options: opts,
        },
    )
}

fn unpublish(d: &Daemon, id: &str, pod: &str) -> Response {
    d.csi_call(
        "local",
        id,
        CsiCall::Unpublish {
            target: s(&d.csi_paths().target(pod, id)).into(),
        },
    )
}

fn unstage(d: &Daemon, id: &str) -> Response {
    d.csi_call(
        "local",
        id,
        CsiCall::Unstage {
            staging_path: s(&d.csi_paths().staging("local", id)).into(),
        },
    )
}

/// kubelet makes the target's parent (`…/<pv>`) before NodePublishVolume; moor makes the rest.
fn kubelet_prepares(target: &Path) {
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
}

/// A daemon with directory `ssd1` staged as volume [`ID`].
fn staged_directory() -> (Daemon, PathBuf) {
    require_privileged_sandbox();
    let d = Daemon::start();
    let src = source(&d, "ssd1");
    let r = stage(&d, ID, &[("path", s(&src))], AccessMode::SingleNodeWriter);
    assert_eq!(r, Response::Done);
    (d, src)
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_csi_directory_volume_is_staged_published_and_unstaged_explicitly() {
    let (d, src) = staged_directory();
    let attrs = [("path", s(&src))];
    let moor_stage = d.stage_path(s(&src));
    assert!(
        is_mounted(&moor_stage),
        "not staged at {}",
        moor_stage.display()
    );
    let kubelet_staging = d.csi_paths().staging("local", ID);
    assert!(
        !is_mounted(&kubelet_staging),
        "moor mounts nothing at kubelet's staging path"
    );
    let recs = d.stage_records();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["csi"]["volume_id"], ID, "{recs:?}");
    assert_eq!(recs[0]["csi"]["staging_path"], s(&kubelet_staging));
    // Again: OK, nothing new mounted.
    let before = d.mounts();
    assert_eq!(
        stage(&d, ID, &attrs, AccessMode::SingleNodeWriter),
        Response::Done
    );
    assert_eq!(d.mounts(), before);

    let (a, b) = (
        d.csi_paths().target("pod-a", ID),
        d.csi_paths().target("pod-b", ID),
    );
    kubelet_prepares(&a);
    kubelet_prepares(&b);
    assert_eq!(publish(&d, ID, "pod-a", &attrs, false), Response::Done);
    assert_eq!(publish(&d, ID, "pod-b", &attrs, true), Response::Done);
    assert_eq!(
        publish(&d, ID, "pod-a", &attrs, false),
        Response::Done,
        "idempotent"
    );
    assert_eq!(
        std::fs::read_to_string(a.join("existing")).unwrap(),
        "already here"
    );
    std::fs::write(a.join("from-pod"), "written in the pod").unwrap();
    assert_eq!(
        std::fs::read_to_string(src.join("from-pod")).unwrap(),
        "written in the pod"
    );
    assert_eq!(
        write_errno(&b, "nope"),
        Some(libc::EROFS),
        "read-only publish wrote"
    );

    let r = unstage(&d, ID);
    assert_eq!(reason(&r), Some("still_published"), "{r:?}");
    for (pod, dir) in [("pod-a", &a), ("pod-b", &b)] {
        assert_eq!(unpublish(&d, ID, pod), Response::Done);
        assert!(
            !dir.exists(),
            "{} left behind: kubelet expects it gone",
            dir.display()
        );
        assert_eq!(unpublish(&d, ID, pod), Response::Done, "idempotent");
    }
    assert!(
        is_mounted(&moor_stage),
        "the last unpublish does not unstage a CSI volume"
    );
    assert_eq!(unstage(&d, ID), Response::Done);
    assert_eq!(d.mounts(), Vec::<PathBuf>::new());
    assert_eq!(d.stage_records(), Vec::<serde_json::Value>::new());
    assert_eq!(
        unstage(&d, ID),
        Response::Done,
        "unstage of a volume not staged is OK"
    );
    // The data is still there.
    assert_eq!(
        std::fs::read_to_string(src.join("from-pod")).unwrap(),
        "written in the pod"
    );
    let r = publish(&d, ID, "pod-a", &attrs, false);
    assert_eq!(reason(&r), Some("not_staged"), "{r:?}");
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn csi_and_flexvolume_never_share_a_stage() {
    let (d, src) = staged_directory();
    let attrs = [("path", s(&src))];
    let r = stage(&d, "pv-other", &attrs, AccessMode::SingleNodeWriter);
    assert_eq!(reason(&r), Some("key_in_use"), "{r:?}");
    let r = stage(&d, ID, &attrs, AccessMode::SingleNodeMultiWriter);
    assert_eq!(reason(&r), Some("conflict"), "{r:?}");
    let flex = d.mount("pod-f", "vol", json!({"path": s(&src)}));
    assert!(!flex.ok());
    assert!(
        flex.message().starts_with("key_in_use: "),
        "{}",
        flex.message()
    );
    // A foreign mount at a CSI target is neither covered nor removed.
    let t = d.csi_paths().target("pod-x", ID);
    std::fs::create_dir_all(&t).unwrap();
    common::sh("mount", &["-t", "tmpfs", "-o", "size=1m", "foreign", s(&t)]);
    let r = unpublish(&d, ID, "pod-x");
    assert_eq!(reason(&r), Some("not_owned"), "{r:?}");
    let r = publish(&d, ID, "pod-x", &attrs, false);
    assert_eq!(reason(&r), Some("target_busy"), "{r:?}");
    assert!(is_mounted(&t));
    common::sh("umount", &[s(&t)]);
    assert_eq!(unstage(&d, ID), Response::Done);
    assert!(d.mount("pod-f", "vol", json!({"path": s(&src)})).ok());
    assert!(d.unmount("pod-f", "vol").ok());
    assert_eq!(d.mounts(), Vec::<PathBuf>::new());
}

#[test]
#[ignore = "tier 2: needs root, a private mount namespace and --features test-hooks (run-tests)"]
fn a_csi_call_on_a_volume_in_flight_is_busy_and_flexvolume_waits() {
    require_privileged_sandbox();
    let mut d = Daemon::start();
    let src = source(&d, "ssd1");
    d.stop();
    let pause = d.pause_and_resume_at("stage:intent");
    d.spawn();
    let path = src.display().to_string();
    let first = std::thread::scope(|scope| {
        let first = scope.spawn(|| stage(&d, ID, &[("path", &path)], AccessMode::SingleNodeWriter));
        pause.wait(&d);
        let started = Instant::now();
        for r in [
            stage(&d, ID, &[("path", &path)], AccessMode::SingleNodeWriter),
            unstage(&d, ID),
            stage(
                &d,
                "pv-other",
                &[("path", &path)],
                AccessMode::SingleNodeWriter,
            ),
        ] {
            assert_eq!(reason(&r), Some("busy"), "{r:?}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "busy answers at once"
        );
        // FlexVolume's mount of the same directory waits for the lock, then is refused.
        let flex = scope.spawn(|| d.mount("pod-f", "vol", json!({"path": &path})));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!flex.is_finished(), "FlexVolume's call waits its turn");
        pause.resume();
        let flex = flex.join().unwrap();
        assert!(
            flex.message().starts_with("key_in_use: "),
            "{}",
            flex.message()
        );
        first.join().unwrap()
    });
    assert_eq!(first, Response::Done);
    assert!(is_mounted(&d.stage_path(s(&src))));
    assert_eq!(unstage(&d, ID), Response::Done);
    assert_eq!(d.mounts(), Vec::<PathBuf>::new());
}
