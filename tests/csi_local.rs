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

use common::{Daemon, LoopDev, is_mounted, require_privileged_sandbox, s, source, write_errno};
use moor::api::{AccessMode, CsiCall, Response, VolumeMode};
use moor::testkit::csi_call::{options, reason};
use serde_json::json;

const ID: &str = "pv-dir-1";

/// kubelet's staging path for `id` in `mode`.
fn staging(d: &Daemon, id: &str, mode: VolumeMode) -> String {
    let p = match mode {
        VolumeMode::Filesystem => d.csi_paths().staging("local", id),
        VolumeMode::Block => d.csi_paths().block_staging(id),
    };
    s(&p).into()
}

/// kubelet's target path for `id` in pod `pod`, in `mode`.
fn target(d: &Daemon, id: &str, pod: &str, mode: VolumeMode) -> PathBuf {
    match mode {
        VolumeMode::Filesystem => d.csi_paths().target(pod, id),
        VolumeMode::Block => d.csi_paths().block_target(pod, id),
    }
}

fn stage_as(
    d: &Daemon,
    id: &str,
    attrs: &[(&str, &str)],
    mode: VolumeMode,
    access: AccessMode,
) -> Response {
    let staging_path = staging(d, id, mode);
    let options = options(attrs).unwrap();
    let call = CsiCall::Stage {
        staging_path,
        mode,
        access,
        options,
    };
    d.csi_call("local", id, call)
}

fn stage(d: &Daemon, id: &str, attrs: &[(&str, &str)], access: AccessMode) -> Response {
    stage_as(d, id, attrs, VolumeMode::Filesystem, access)
}

fn publish_as(
    d: &Daemon,
    (id, pod): (&str, &str),
    attrs: &[(&str, &str)],
    (mode, access): (VolumeMode, AccessMode),
    ro: bool,
) -> Response {
    let mut options = options(attrs).unwrap();
    options.read_only = ro;
    let t = target(d, id, pod, mode);
    std::fs::create_dir_all(t.parent().unwrap()).unwrap();
    let call = CsiCall::Publish {
        staging_path: staging(d, id, mode),
        target: s(&t).into(),
        mode,
        access,
        options,
    };
    d.csi_call("local", id, call)
}

fn publish(d: &Daemon, id: &str, pod: &str, attrs: &[(&str, &str)], ro: bool) -> Response {
    let rw = AccessMode::SingleNodeWriter;
    publish_as(d, (id, pod), attrs, (VolumeMode::Filesystem, rw), ro)
}

fn unpublish_as(d: &Daemon, id: &str, pod: &str, mode: VolumeMode) -> Response {
    let target = s(&target(d, id, pod, mode)).into();
    d.csi_call("local", id, CsiCall::Unpublish { target })
}

fn unpublish(d: &Daemon, id: &str, pod: &str) -> Response {
    unpublish_as(d, id, pod, VolumeMode::Filesystem)
}

fn unstage_as(d: &Daemon, id: &str, mode: VolumeMode) -> Response {
    let staging_path = staging(d, id, mode);
    d.csi_call("local", id, CsiCall::Unstage { staging_path })
}

fn unstage(d: &Daemon, id: &str) -> Response {
    unstage_as(d, id, VolumeMode::Filesystem)
}

fn stats(d: &Daemon, id: &str, path: &Path) -> Response {
    let path = s(path).into();
    d.csi_call("local", id, CsiCall::Stats { path })
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

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0; len];
    let f = std::fs::File::open(path).unwrap();
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}

fn write_at(path: &Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, offset).unwrap();
    f.sync_all().unwrap();
}

/// A daemon and a writable loop device of `mib` MiB it may serve.
fn daemon_with_disk(mib: u64) -> (Daemon, LoopDev) {
    require_privileged_sandbox();
    let d = Daemon::start();
    let dev = LoopDev::new(mib);
    // A loop device keeps its read-only flag across detach: start from a writable one.
    common::sh("blockdev", &["--setrw", dev.path_str()]);
    (d, dev)
}

/// The claim grew to `mib` MiB: the disk grows, then kubelet's NodeExpandVolume of `path`.
fn grow_and_expand(d: &Daemon, dev: &LoopDev, (id, path): (&str, &Path), mib: u64) -> Response {
    dev.grow_backing_file(mib);
    let call = CsiCall::Expand {
        path: s(path).into(),
        required_bytes: mib << 20,
    };
    d.csi_call("local", id, call)
}

#[test]
#[ignore = "tier 2: needs root, loop devices and a private mount namespace (run-tests)"]
fn a_filesystem_on_a_local_disk_is_formatted_once_and_reports_its_health() {
    // xfs: ext4's online grow needs CAP_SYS_RESOURCE, which this sandbox does not give
    // (tests/expand.rs says so; the VM scenarios grow ext4).
    let (d, dev) = daemon_with_disk(300);
    let attrs = [("path", dev.path_str()), ("kubernetes.io/fsType", "xfs")];
    let id = "pv-disk-1";
    assert_eq!(
        stage(&d, id, &attrs, AccessMode::SingleNodeWriter),
        Response::Done
    );
    assert_eq!(d.mkfs_commands().len(), 1, "a blank disk is formatted once");
    assert_eq!(publish(&d, id, "pod-a", &attrs, false), Response::Done);
    let t = target(&d, id, "pod-a", VolumeMode::Filesystem);
    std::fs::write(t.join("data"), "kept").unwrap();

    let Response::VolumeStats {
        mode,
        bytes: Some(bytes),
        inodes: Some(inodes),
        size: None,
        condition,
    } = stats(&d, id, &t)
    else {
        panic!("no filesystem stats: {:?}", stats(&d, id, &t))
    };
    assert_eq!(mode, VolumeMode::Filesystem);
    assert!(
        bytes.total > 200 << 20 && bytes.total <= 300 << 20,
        "{bytes:?}"
    );
    assert!(bytes.used > 0 && bytes.available < bytes.total, "{bytes:?}");
    assert!(inodes.total > 1000 && inodes.used >= 3, "{inodes:?}");
    assert!(!condition.abnormal, "{condition:?}");
    let staging_path = PathBuf::from(staging(&d, id, VolumeMode::Filesystem));
    assert!(matches!(
        stats(&d, id, &staging_path),
        Response::VolumeStats { .. }
    ));
    let r = stats(&d, id, &d.csi_paths().target("pod-z", id));
    assert_eq!(reason(&r), Some("unknown_volume"), "{r:?}");
    let r = stats(&d, "pv-unknown", &t);
    assert_eq!(reason(&r), Some("unknown_volume"), "{r:?}");

    // The claim grew: the device learns its size, the filesystem grows online.
    let r = grow_and_expand(&d, &dev, (id, &t), 600);
    assert_eq!(
        r,
        Response::Expanded {
            capacity_bytes: 600 << 20
        }
    );
    let Response::VolumeStats {
        bytes: Some(grown), ..
    } = stats(&d, id, &t)
    else {
        panic!("no stats")
    };
    assert!(grown.total > 500 << 20, "{grown:?}");

    // Someone unmounts the pod's bind behind moor's back: kubelet's health check sees it.
    common::sh("umount", &[s(&t)]);
    let Response::VolumeStats { condition, .. } = stats(&d, id, &t) else {
        panic!("no stats")
    };
    assert!(condition.abnormal, "{condition:?}");
    assert!(condition.message.contains("not mounted"), "{condition:?}");
    assert_eq!(unpublish(&d, id, "pod-a"), Response::Done);
    assert_eq!(unstage(&d, id), Response::Done);
    assert_eq!(d.mounts(), Vec::<PathBuf>::new());

    // Staged again: the filesystem moor made is found, never formatted again.
    assert_eq!(
        stage(&d, id, &attrs, AccessMode::SingleNodeWriter),
        Response::Done
    );
    assert_eq!(publish(&d, id, "pod-b", &attrs, false), Response::Done);
    let t = target(&d, id, "pod-b", VolumeMode::Filesystem);
    assert_eq!(std::fs::read_to_string(t.join("data")).unwrap(), "kept");
    assert_eq!(d.mkfs_commands().len(), 1);
    assert_eq!(unpublish(&d, id, "pod-b"), Response::Done);
    assert_eq!(unstage(&d, id), Response::Done);
    assert_eq!(d.mounts(), Vec::<PathBuf>::new());
}

#[test]
#[ignore = "tier 2: needs root, loop devices and a private mount namespace (run-tests)"]
fn a_raw_block_volume_binds_the_device_and_never_touches_its_data() {
    let (d, dev) = daemon_with_disk(64);
    let disk = Path::new(dev.path_str());
    write_at(disk, 0, b"raw data moor must not touch");
    let attrs = [("path", dev.path_str())];
    let id = "pv-raw-1";
    let block = VolumeMode::Block;
    let rw = AccessMode::SingleNodeWriter;
    assert_eq!(stage_as(&d, id, &attrs, block, rw), Response::Done);
    assert_eq!(
        stage_as(&d, id, &attrs, block, rw),
        Response::Done,
        "idempotent"
    );
    let touched: Vec<String> = d
        .commands()
        .into_iter()
        .filter(|c| {
            ["mkfs", "fsck", "e2fsck", "wipefs", "blkid", "mount"]
                .iter()
                .any(|p| c.starts_with(p))
        })
        .collect();
    assert_eq!(
        touched,
        Vec::<String>::new(),
        "a raw block stage runs no probe nor mkfs"
    );
    assert_eq!(
        d.mounts(),
        Vec::<PathBuf>::new(),
        "a raw block stage mounts nothing"
    );
    assert_eq!(read_at(disk, 0, 28), b"raw data moor must not touch");
    // A directory is no block device.
    let src = source(&d, "ssd1");
    let r = stage_as(&d, "pv-dir", &[("path", s(&src))], block, rw);
    assert_eq!(reason(&r), Some("unsupported_capability"), "{r:?}");

    let cap = (block, rw);
    assert_eq!(
        publish_as(&d, (id, "pod-a"), &attrs, cap, false),
        Response::Done
    );
    assert_eq!(
        publish_as(&d, (id, "pod-b"), &attrs, cap, false),
        Response::Done
    );
    assert_eq!(
        publish_as(&d, (id, "pod-a"), &attrs, cap, false),
        Response::Done
    );
    // A read-only bind of a device node still lets writes through: refused, not pretended.
    let r = publish_as(&d, (id, "pod-c"), &attrs, cap, true);
    assert_eq!(reason(&r), Some("unsupported_capability"), "{r:?}");
    let (a, b) = (
        target(&d, id, "pod-a", block),
        target(&d, id, "pod-b", block),
    );
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata(&a).unwrap().file_type().is_block_device());
    assert_eq!(read_at(&a, 0, 28), b"raw data moor must not touch");
    write_at(&a, 4096, b"the pod wrote");
    assert_eq!(read_at(disk, 4096, 13), b"the pod wrote");
    assert_eq!(read_at(&b, 4096, 13), b"the pod wrote");

    let Response::VolumeStats {
        mode,
        size,
        bytes,
        condition,
        ..
    } = stats(&d, id, &a)
    else {
        panic!("no stats")
    };
    assert_eq!((mode, size, bytes), (block, Some(64 << 20), None));
    assert!(!condition.abnormal, "{condition:?}");
    let r = grow_and_expand(&d, &dev, (id, &a), 80);
    assert_eq!(
        r,
        Response::Expanded {
            capacity_bytes: 80 << 20
        }
    );

    let r = unstage_as(&d, id, block);
    assert_eq!(reason(&r), Some("still_published"), "{r:?}");
    for (pod, t) in [("pod-a", &a), ("pod-b", &b)] {
        assert_eq!(unpublish_as(&d, id, pod, block), Response::Done);
        assert!(!t.exists(), "{} left behind", t.display());
        assert_eq!(unpublish_as(&d, id, pod, block), Response::Done);
    }
    assert_eq!(unstage_as(&d, id, block), Response::Done);
    assert_eq!(d.mounts(), Vec::<PathBuf>::new());
    assert_eq!(d.stage_records(), Vec::<serde_json::Value>::new());
    assert_eq!(read_at(disk, 0, 28), b"raw data moor must not touch");
    assert_eq!(d.mkfs_commands(), Vec::<String>::new());

    // Reader-only: the device itself is made read-only while staged, and writable after.
    let ro = (block, AccessMode::SingleNodeReaderOnly);
    let sys_ro = || {
        let name = disk.file_name().unwrap().to_str().unwrap();
        std::fs::read_to_string(format!("/sys/block/{name}/ro")).unwrap()
    };
    assert_eq!(stage_as(&d, id, &attrs, ro.0, ro.1), Response::Done);
    assert_eq!(sys_ro().trim(), "1");
    let r = publish_as(&d, (id, "pod-a"), &attrs, ro, false);
    assert_eq!(reason(&r), Some("read_only"), "{r:?}");
    assert_eq!(
        publish_as(&d, (id, "pod-a"), &attrs, ro, true),
        Response::Done
    );
    let written = std::fs::OpenOptions::new()
        .write(true)
        .open(&a)
        .and_then(|f| {
            use std::os::unix::fs::FileExt;
            f.write_all_at(b"must not land", 4096)?;
            f.sync_all()
        });
    assert!(
        written.is_err(),
        "a reader-only raw block volume took a write"
    );
    assert_eq!(read_at(&a, 4096, 13), b"the pod wrote");
    assert_eq!(unpublish_as(&d, id, "pod-a", block), Response::Done);
    assert_eq!(unstage_as(&d, id, block), Response::Done);
    assert_eq!(
        sys_ro().trim(),
        "0",
        "the device is writable again after unstage"
    );
    assert_eq!(d.stage_records(), Vec::<serde_json::Value>::new());
}

/// Pauses the daemon at `point`, sends `call` for `id` from a thread, SIGKILLs the daemon
/// once it is there and starts it again; the call's answer is never `Done`.
fn kill_during(d: &mut Daemon, point: &str, id: &str, call: CsiCall) {
    d.stop();
    let pause = d.pause_at(point);
    d.spawn();
    let socket = d.socket();
    let id = id.to_owned();
    let caller = std::thread::spawn(move || {
        moor::testkit::csi_call::call(&socket, "local", &id, call, Duration::from_secs(60))
    });
    pause.wait(d);
    d.kill9();
    let answer = caller.join().unwrap();
    assert!(
        !matches!(answer, Ok(Response::Done)),
        "{point}: kubelet must not see OK from a killed daemon: {answer:?}"
    );
    d.extra_env.clear();
    d.spawn();
}

fn stage_call(d: &Daemon, id: &str, attrs: &[(&str, &str)], mode: VolumeMode) -> CsiCall {
    CsiCall::Stage {
        staging_path: staging(d, id, mode),
        mode,
        access: AccessMode::SingleNodeWriter,
        options: options(attrs).unwrap(),
    }
}

fn publish_call(
    d: &Daemon,
    (id, pod): (&str, &str),
    attrs: &[(&str, &str)],
    mode: VolumeMode,
) -> CsiCall {
    let t = target(d, id, pod, mode);
    std::fs::create_dir_all(t.parent().unwrap()).unwrap();
    CsiCall::Publish {
        staging_path: staging(d, id, mode),
        target: s(&t).into(),
        mode,
        access: AccessMode::SingleNodeWriter,
        options: options(attrs).unwrap(),
    }
}

/// What a user checks after a crash: the volume is staged (or not) as kubelet last saw it
/// succeed, nothing half-made is left, and kubelet's retries converge to a clean node.
#[test]
#[ignore = "tier 2: needs root, loop devices, a private mount namespace and --features test-hooks (run-tests)"]
fn sigkill_during_a_csi_stage_or_publish_converges() {
    let (mut d, dev) = daemon_with_disk(64);
    let id = "pv-crash";
    for (mode, attrs) in [
        (
            VolumeMode::Filesystem,
            vec![("path", dev.path_str()), ("kubernetes.io/fsType", "ext4")],
        ),
        (VolumeMode::Block, vec![("path", dev.path_str())]),
    ] {
        for point in ["stage:intent", "stage:attached", "stage:mounted"] {
            let call = stage_call(&d, id, &attrs, mode);
            kill_during(&mut d, point, id, call);
            assert_eq!(
                d.mounts(),
                Vec::<PathBuf>::new(),
                "{mode:?} {point}: left mounted"
            );
            assert_eq!(
                d.active_stage_records(),
                Vec::<serde_json::Value>::new(),
                "{mode:?} {point}"
            );
            assert_eq!(
                d.csi_call("local", id, stage_call(&d, id, &attrs, mode)),
                Response::Done
            );
            assert_eq!(unstage_as(&d, id, mode), Response::Done);
        }
        assert_eq!(
            d.csi_call("local", id, stage_call(&d, id, &attrs, mode)),
            Response::Done
        );
        let staged = d.mounts();
        let t = target(&d, id, "pod-a", mode);
        for point in ["publish:intent", "publish:bound"] {
            let call = publish_call(&d, (id, "pod-a"), &attrs, mode);
            kill_during(&mut d, point, id, call);
            assert!(
                !is_mounted(&t),
                "{mode:?} {point}: a publish kubelet never saw is undone"
            );
            assert!(
                !t.exists() || mode == VolumeMode::Filesystem,
                "{mode:?} {point}: device file left"
            );
            assert_eq!(
                d.mounts(),
                staged,
                "{mode:?} {point}: the CSI stage stays as it was"
            );
            let again = d.csi_call("local", id, publish_call(&d, (id, "pod-a"), &attrs, mode));
            assert_eq!(again, Response::Done, "{mode:?} {point}");
            assert!(is_mounted(&t));
            assert_eq!(unpublish_as(&d, id, "pod-a", mode), Response::Done);
        }
        assert_eq!(unstage_as(&d, id, mode), Response::Done);
        assert_eq!(d.mounts(), Vec::<PathBuf>::new());
        assert_eq!(d.active_stage_records(), Vec::<serde_json::Value>::new());
    }
}

/// FlexVolume and CSI volumes on one node, the daemon SIGKILLed in between: both are
/// reconstructed, both unmount clean, and neither's records are taken for the other's.
#[test]
#[ignore = "tier 2: needs root, loop devices and a private mount namespace (run-tests)"]
fn flexvolume_and_csi_volumes_survive_a_sigkill_side_by_side() {
    let (mut d, dev) = daemon_with_disk(64);
    let src = source(&d, "ssd1");
    assert!(d.mount("flex-pod", "vol", json!({"path": s(&src)})).ok());
    let attrs = [("path", dev.path_str()), ("kubernetes.io/fsType", "ext4")];
    let id = "pv-mixed";
    assert_eq!(
        stage(&d, id, &attrs, AccessMode::SingleNodeWriter),
        Response::Done
    );
    assert_eq!(publish(&d, id, "csi-pod", &attrs, false), Response::Done);
    let raw_attrs = [("path", src.to_str().unwrap())];
    let r = stage(&d, "pv-dir", &raw_attrs, AccessMode::SingleNodeWriter);
    assert_eq!(
        reason(&r),
        Some("key_in_use"),
        "FlexVolume's stage is not CSI's: {r:?}"
    );
    let (flex_dir, csi_target) = (
        d.pod_dir("flex-pod", "vol"),
        target(&d, id, "csi-pod", VolumeMode::Filesystem),
    );
    std::fs::write(flex_dir.join("f"), "flex").unwrap();
    std::fs::write(csi_target.join("c"), "csi").unwrap();
    let before = d.mounts();

    d.kill9();
    d.spawn();
    assert_eq!(d.mounts(), before, "both kept as they were");
    assert_eq!(std::fs::read_to_string(flex_dir.join("f")).unwrap(), "flex");
    assert_eq!(
        std::fs::read_to_string(csi_target.join("c")).unwrap(),
        "csi"
    );
    let recs = d.active_stage_records();
    assert_eq!(recs.len(), 2, "{recs:?}");
    let csi_recs: Vec<_> = recs
        .iter()
        .filter(|r| r["csi"]["volume_id"] == id)
        .collect();
    assert_eq!(csi_recs.len(), 1, "{recs:?}");
    assert!(
        recs.iter()
            .any(|r| r["csi"].is_null() && r["source"]["path"] == s(&src)),
        "{recs:?}"
    );
    // Each front end still refuses the other's stage, and kubelet's calls are idempotent.
    assert!(
        d.mount(
            "flex-pod-2",
            "vol",
            json!({"path": dev.path_str(), "kubernetes.io/fsType": "ext4"})
        )
        .message()
        .starts_with("key_in_use: ")
    );
    assert_eq!(
        stage(&d, id, &attrs, AccessMode::SingleNodeWriter),
        Response::Done
    );
    assert_eq!(publish(&d, id, "csi-pod", &attrs, false), Response::Done);

    assert!(d.unmount("flex-pod", "vol").ok());
    assert!(d.unmount("flex-pod-2", "vol").ok());
    assert!(
        is_mounted(&csi_target),
        "FlexVolume's unmount leaves the CSI volume alone"
    );
    assert_eq!(unpublish(&d, id, "csi-pod"), Response::Done);
    assert_eq!(unstage(&d, id), Response::Done);
    assert_eq!(d.mounts(), Vec::<PathBuf>::new());
    assert_eq!(d.active_stage_records(), Vec::<serde_json::Value>::new());
}
