//! Driver `moor~local/local` with a block device (tier 2: root, loop devices, real mkfs and
//! mounts, a real daemon driven through the real FlexVolume front end).
//!
//! What a user checks: one stage mount per node at `<kubelet>/plugins/moor/local/<key>`, shared
//! by every pod and removed only with the last one; read-only pods really cannot write; the
//! mount options and the filesystem type asked for are the ones in the mount table; fsGroup
//! touches the volume root only; another node's volume, a volume that now looks blank and a
//! different disk under the same path (or behind the same by-id style link) are refused
//! without writing a byte; one disk under two names is one volume, staged once; a disk
//! someone else mounted is refused as in use rather than mounted twice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::host::{
    MARKER, MARKER_TEXT, Signature, assert_failure, device_with, digest, mkfs, mount_entries_at,
    mount_entries_under, probe, with_mounted,
};
use common::{Daemon, LoopDev, is_mounted, require_privileged_sandbox, sh};
use serde_json::json;

const NONE: Vec<PathBuf> = Vec::new();

/// Writes a file, returning the OS error number on failure.
fn try_write(dir: &Path, name: &str, text: &str) -> Result<(), Option<i32>> {
    std::fs::write(dir.join(name), text).map_err(|e| e.raw_os_error())
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name))
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.join(name).display()))
}

/// What a node reboot leaves: no mounts, no tmpfs run dir (publish records), the durable
/// state dir intact. The daemon is stopped; the caller starts it again with `spawn`.
fn reboot(d: &mut Daemon) {
    d.kill9();
    for m in d.mounts().into_iter().rev() {
        nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH).unwrap();
    }
    let publish = d.run_dir().join("publish");
    for e in std::fs::read_dir(&publish).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn two_pods_share_one_stage_and_unstage_after_the_last() {
    require_privileged_sandbox();
    let dev = LoopDev::new(64);
    let d = Daemon::start();
    let rw = json!({"path": dev.path_str()});
    let ro = json!({"path": dev.path_str(), "kubernetes.io/readwrite": "ro"});
    d.mount("pod-a", "vol", rw).assert_ok();
    d.mount("pod-b", "vol", ro).assert_ok();
    let (a, b) = (d.pod_dir("pod-a", "vol"), d.pod_dir("pod-b", "vol"));
    let stage = d.stage_path(dev.path_str());

    // One filesystem mount (the stage), two binds of it.
    let stage_root = d.kubelet_dir().join("plugins/moor");
    let stages: Vec<_> = mount_entries_under(&stage_root)
        .into_iter()
        .map(|m| m.mount_point)
        .collect();
    assert_eq!(stages, vec![stage.clone()], "exactly one stage mount");
    assert_eq!(mount_entries_at(&a).len(), 1);
    assert_eq!(mount_entries_at(&b).len(), 1);
    assert!(
        mount_entries_at(&b)[0].is_read_only(),
        "pod-b's bind must be read-only"
    );
    assert!(!mount_entries_at(&a)[0].is_read_only());

    try_write(&a, "from-a", "written by pod-a").unwrap();
    assert_eq!(
        read(&b, "from-a"),
        "written by pod-a",
        "data written by pod-a is visible to pod-b"
    );
    assert_eq!(
        try_write(&b, "from-b", "x"),
        Err(Some(libc::EROFS)),
        "a read-only pod could write"
    );

    // pod-a goes: the stage stays for pod-b.
    d.unmount("pod-a", "vol").assert_ok();
    assert!(
        is_mounted(&stage),
        "unstaged while pod-b still uses the volume"
    );
    assert_eq!(read(&b, "from-a"), "written by pod-a");
    assert_eq!(d.active_stage_records().len(), 1);

    // pod-b goes: unstaged, the stage directory removed, nothing mounted anywhere.
    d.unmount("pod-b", "vol").assert_ok();
    assert_eq!(d.mounts(), NONE, "something is still mounted");
    assert!(
        !stage.exists(),
        "stage directory left behind: {}",
        stage.display()
    );
    assert_eq!(d.active_stage_records(), Vec::<serde_json::Value>::new());
    // The volume stays remembered, idle, with the filesystem moor saw on it.
    let idle = d.stage_records();
    assert_eq!(idle.len(), 1);
    assert_eq!(idle[0]["phase"], "idle");
    assert_eq!(idle[0]["fs_type"], "ext4");
    let text = with_mounted(&dev.path, "ext4", true, |root| {
        std::fs::read_to_string(root.join("from-a")).unwrap()
    });
    assert_eq!(text, "written by pod-a");
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_read_only_pod_first_then_a_read_write_one() {
    require_privileged_sandbox();
    let dev = device_with(Signature::Ext4);
    let d = Daemon::start();
    d.mount(
        "pod-ro",
        "vol",
        json!({"path": dev.path_str(), "kubernetes.io/readwrite": "ro"}),
    )
    .assert_ok();
    let (ro, rw) = (d.pod_dir("pod-ro", "vol"), d.pod_dir("pod-rw", "vol"));
    assert_eq!(read(&ro, MARKER), MARKER_TEXT);
    assert_eq!(try_write(&ro, "x", "x"), Err(Some(libc::EROFS)));

    d.mount("pod-rw", "vol", json!({"path": dev.path_str()}))
        .assert_ok();
    try_write(&rw, "from-rw", "hello").expect("the read-write pod cannot write");
    assert_eq!(read(&ro, "from-rw"), "hello");
    assert_eq!(
        try_write(&ro, "x", "x"),
        Err(Some(libc::EROFS)),
        "the read-only pod became writable"
    );
    let stage = mount_entries_at(&d.stage_path(dev.path_str()));
    assert_eq!(stage.len(), 1, "{stage:?}");

    d.unmount("pod-ro", "vol").assert_ok();
    d.unmount("pod-rw", "vol").assert_ok();
    assert_eq!(d.mounts(), NONE);
    assert_eq!(d.mkfs_commands(), Vec::<String>::new());
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn mount_options_reach_the_stage_mount() {
    require_privileged_sandbox();
    let dev = LoopDev::new(64);
    let d = Daemon::start();
    let opts = json!({"path": dev.path_str(), "mountOptions": "noatime,nodev,errors=remount-ro"});
    d.mount("pod-a", "vol", opts).assert_ok();
    let stage = mount_entries_at(&d.stage_path(dev.path_str()));
    assert_eq!(stage.len(), 1);
    let flags: Vec<&str> = stage[0].mount_options.split(',').collect();
    assert!(
        flags.contains(&"noatime") && flags.contains(&"nodev"),
        "stage mount options: {}",
        stage[0].mount_options
    );
    assert!(
        stage[0]
            .super_options
            .split(',')
            .any(|o| o == "errors=remount-ro"),
        "{}",
        stage[0].super_options
    );
    // The pod sees the same flags through its bind.
    let pod = mount_entries_at(&d.pod_dir("pod-a", "vol"));
    let flags: Vec<&str> = pod[0].mount_options.split(',').collect();
    assert!(
        flags.contains(&"noatime") && flags.contains(&"nodev"),
        "pod mount options: {}",
        pod[0].mount_options
    );
    d.unmount("pod-a", "vol").assert_ok();
    assert_eq!(d.mounts(), NONE);
}

/// A blank device asked `fs_type`: created without force, mounted with it and `noatime`,
/// and the data written through the pod is on the device afterwards.
fn fs_type_volume(fs_type: &str, size_mib: u64) {
    require_privileged_sandbox();
    let dev = LoopDev::new(size_mib);
    let d = Daemon::start();
    let opts =
        json!({"path": dev.path_str(), "kubernetes.io/fsType": fs_type, "mountOptions": "noatime"});
    d.mount("pod-a", "vol", opts).assert_ok();
    let stage = mount_entries_at(&d.stage_path(dev.path_str()));
    assert_eq!(stage.len(), 1);
    assert_eq!(stage[0].fs_type, fs_type);
    assert!(
        stage[0].mount_options.split(',').any(|o| o == "noatime"),
        "{}",
        stage[0].mount_options
    );
    try_write(&d.pod_dir("pod-a", "vol"), "data", fs_type).unwrap();
    d.unmount("pod-a", "vol").assert_ok();
    assert_eq!(d.mounts(), NONE);
    assert_eq!(
        probe(&dev.path).get("TYPE").map(String::as_str),
        Some(fs_type)
    );
    let text = with_mounted(&dev.path, fs_type, true, |root| {
        std::fs::read_to_string(root.join("data")).unwrap()
    });
    assert_eq!(text, fs_type);
    let mkfs = d.mkfs_commands();
    assert_eq!(mkfs.len(), 1, "{mkfs:?}");
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn xfs_volume() {
    fs_type_volume("xfs", 300);
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn btrfs_volume() {
    fs_type_volume("btrfs", 128);
}

/// kubelet's fsGroup, done by moor on the volume root only (kubernetes #69699: never a
/// recursive walk on every mount), and only when it differs.
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn fs_group_is_applied_to_the_root_only() {
    require_privileged_sandbox();
    let dev = LoopDev::new(64);
    mkfs(&dev.path, "ext4");
    with_mounted(&dev.path, "ext4", false, |root| {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let sub = root.join("owned-by-4242");
        std::fs::create_dir(&sub).unwrap();
        std::os::unix::fs::chown(&sub, Some(0), Some(4242)).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o750)).unwrap();
        std::fs::write(sub.join("file"), "x").unwrap();
    });
    let d = Daemon::start();
    let opts = json!({"path": dev.path_str(), "kubernetes.io/mounterArgs.FsGroup": "2000"});
    d.mount("pod-a", "vol", opts.clone()).assert_ok();
    let pod = d.pod_dir("pod-a", "vol");
    let root = std::fs::metadata(&pod).unwrap();
    assert_eq!(root.gid(), 2000, "the volume root's group");
    assert_eq!(
        root.mode() & 0o7777,
        0o2775,
        "group rwx + setgid on the root, the rest kept"
    );
    let sub = std::fs::metadata(pod.join("owned-by-4242")).unwrap();
    assert_eq!(
        (sub.gid(), sub.mode() & 0o7777),
        (4242, 0o750),
        "a subdirectory was changed"
    );
    let file = std::fs::metadata(pod.join("owned-by-4242/file")).unwrap();
    assert_eq!(file.gid(), 0, "a file below the root was changed");

    // A second pod with the same fsGroup: the root already matches, nothing is written
    // (a chown or chmod would move the root's ctime).
    d.mount("pod-b", "vol", opts).assert_ok();
    let again = std::fs::metadata(d.pod_dir("pod-b", "vol")).unwrap();
    assert_eq!(
        (again.ctime(), again.ctime_nsec()),
        (root.ctime(), root.ctime_nsec()),
        "root touched again"
    );

    d.unmount("pod-a", "vol").assert_ok();
    d.unmount("pod-b", "vol").assert_ok();
    assert_eq!(d.mounts(), NONE);
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_repeated_mount_is_idempotent() {
    require_privileged_sandbox();
    let dev = LoopDev::new(64);
    let d = Daemon::start();
    let opts = json!({"path": dev.path_str()});
    d.mount("pod-a", "vol", opts.clone()).assert_ok();
    try_write(&d.pod_dir("pod-a", "vol"), "f", "1").unwrap();
    d.mount("pod-a", "vol", opts).assert_ok();
    assert_eq!(
        mount_entries_at(&d.pod_dir("pod-a", "vol")).len(),
        1,
        "bound twice"
    );
    assert_eq!(
        mount_entries_at(&d.stage_path(dev.path_str())).len(),
        1,
        "staged twice"
    );
    assert_eq!(read(&d.pod_dir("pod-a", "vol"), "f"), "1");
    assert_eq!(d.mkfs_commands().len(), 1);
    d.unmount("pod-a", "vol").assert_ok();
    assert_eq!(d.mounts(), NONE);
    // And a repeated unmount too.
    d.unmount("pod-a", "vol").assert_ok();
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn unmount_of_what_is_not_mounted_succeeds() {
    require_privileged_sandbox();
    let d = Daemon::start();
    // The directory exists but nothing is mounted on it.
    std::fs::create_dir_all(d.pod_dir("pod-a", "vol")).unwrap();
    d.unmount("pod-a", "vol").assert_ok();
    // The directory does not even exist (kubelet retrying after a reboot).
    d.unmount("pod-b", "vol").assert_ok();
    assert_eq!(d.mounts(), NONE);
}

/// Local PV affinity enforced on the node itself: another node's disk is never touched here.
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn another_nodes_volume_is_refused() {
    require_privileged_sandbox();
    let dev = LoopDev::new(64);
    let d = Daemon::start();
    let r = d.mount(
        "pod-a",
        "pv-1",
        json!({"path": dev.path_str(), "node": "node-other"}),
    );
    assert_failure(
        &r,
        "wrong_node",
        &["pv-1", "belongs to node node-other", "this is node node-it"],
    );
    assert!(
        probe(&dev.path).is_empty(),
        "another node's blank disk was formatted"
    );
    d.assert_nothing_left("pod-a", "pv-1");
    assert_eq!(d.mkfs_commands(), Vec::<String>::new());

    // This node's name is accepted.
    d.mount(
        "pod-a",
        "pv-1",
        json!({"path": dev.path_str(), "node": "node-it"}),
    )
    .assert_ok();
    d.unmount("pod-a", "pv-1").assert_ok();
}

/// moor remembers the filesystem it staged (durable stage record). After a reboot, the same
/// device path reading as blank is a broken data path, not an empty disk: refused, never
/// formatted (hetznercloud/csi-driver #1346, kubernetes #95183).
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_known_volume_that_now_looks_blank_is_refused() {
    require_privileged_sandbox();
    let dev = LoopDev::new(64);
    let mut d = Daemon::start();
    let opts = json!({"path": dev.path_str()});
    d.mount("pod-a", "vol", opts.clone()).assert_ok();
    let uuid = probe(&dev.path)["UUID"].clone();

    reboot(&mut d);
    common::sh("wipefs", &["-a", "-q", dev.path_str()]);
    assert!(probe(&dev.path).is_empty());
    let wiped = digest(&dev.path);
    d.spawn();
    let idle = d.stage_records();
    assert_eq!(idle.len(), 1, "{idle:?}");
    assert_eq!(idle[0]["phase"], "idle", "{idle:?}");
    assert_eq!(idle[0]["fs_uuid"], uuid.as_str(), "{idle:?}");

    // kubelet mounts the pod's volume again after the reboot, twice.
    for _ in 0..2 {
        let r = d.mount("pod-a", "vol", opts.clone());
        assert_failure(&r, "known_volume_blank", &[dev.path_str(), "ext4", &uuid]);
        assert_eq!(digest(&dev.path), wiped, "the device was written");
        assert_eq!(d.mounts(), NONE);
    }
    assert_eq!(
        d.mkfs_commands().len(),
        1,
        "formatted again: {:?}",
        d.mkfs_commands()
    );
    assert_eq!(
        d.stage_records()[0]["fs_uuid"],
        uuid.as_str(),
        "moor forgot what it saw"
    );
    d.unmount("pod-a", "vol").assert_ok();
}

/// The same device path now holds another filesystem (the path points at another disk after
/// a reboot): refused, the other disk untouched (kubernetes #55314, local PV identity #51431).
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_different_filesystem_under_the_same_path_is_refused() {
    require_privileged_sandbox();
    let dev = LoopDev::new(64);
    let mut d = Daemon::start();
    let opts = json!({"path": dev.path_str()});
    d.mount("pod-a", "vol", opts.clone()).assert_ok();
    let old = probe(&dev.path)["UUID"].clone();

    reboot(&mut d);
    mkfs(&dev.path, "ext4");
    let other = probe(&dev.path);
    assert_ne!(other["UUID"], old);
    d.spawn();

    let r = d.mount("pod-a", "vol", opts);
    assert_failure(
        &r,
        "device_changed",
        &[dev.path_str(), &other["UUID"], &old],
    );
    assert_eq!(probe(&dev.path), other, "the other disk was changed");
    assert_eq!(d.mounts(), NONE);
    assert_eq!(d.mkfs_commands().len(), 1, "{:?}", d.mkfs_commands());
    d.unmount("pod-a", "vol").assert_ok();
}

/// Local PVs name their disk through a stable link (`/dev/disk/by-id/…`); the link may point
/// at another disk after a reboot (hwameistor #982, kubernetes #51431). moor follows the link,
/// and a name it staged one disk under that now names another disk is refused before that
/// disk is probed, formatted or mounted.
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_device_link_that_now_points_at_another_disk_is_refused() {
    require_privileged_sandbox();
    let (first, second, blank) = (
        LoopDev::new(64),
        device_with(Signature::Ext4),
        LoopDev::new(64),
    );
    let mut d = Daemon::start();
    let link = d.root.path().join("by-id-disk");
    std::os::unix::fs::symlink(&first.path, &link).unwrap();
    let opts = json!({"path": link.to_str().unwrap()});
    d.mount("pod-a", "vol", opts.clone()).assert_ok();
    assert_eq!(
        mount_entries_at(&d.stage_path(link.to_str().unwrap())).len(),
        1
    );
    let staged = probe(&first.path)["UUID"].clone();

    reboot(&mut d);
    let retarget = |to: &Path| {
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(to, &link).unwrap();
    };
    retarget(&second.path);
    d.spawn();
    let other = probe(&second.path);
    let r = d.mount("pod-a", "vol", opts.clone());
    assert_failure(&r, "device_changed", &[link.to_str().unwrap(), &staged]);
    assert_eq!(probe(&second.path), other);

    retarget(&blank.path);
    let r = d.mount("pod-a", "vol", opts.clone());
    assert_failure(&r, "device_changed", &[link.to_str().unwrap(), &staged]);
    assert!(
        probe(&blank.path).is_empty(),
        "the other disk was formatted"
    );

    retarget(&first.path);
    d.mount("pod-a", "vol", opts).assert_ok();
    assert_eq!(d.mkfs_commands().len(), 1, "{:?}", d.mkfs_commands());
    d.unmount("pod-a", "vol").assert_ok();
    assert_eq!(d.mounts(), NONE);
}

/// One disk named by two paths (the node and a link, or two PVs by mistake) is one volume:
/// "one stage per volume per node" holds for the disk, not only for the string. The second
/// name shares the first one's stage — no second mount, no fsck of the mounted disk.
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn one_disk_under_two_paths_is_one_volume_staged_once() {
    require_privileged_sandbox();
    for (fs_type, size_mib) in [("btrfs", 128), ("ext4", 64)] {
        let dev = LoopDev::new(size_mib);
        let d = Daemon::start();
        let link = d.root.path().join("by-id-disk");
        std::os::unix::fs::symlink(&dev.path, &link).unwrap();
        let first = json!({"path": dev.path_str(), "kubernetes.io/fsType": fs_type});
        d.mount("pod-a", "vol", first).assert_ok();
        let second = json!({"path": link.to_str().unwrap(), "kubernetes.io/fsType": fs_type});
        d.mount("pod-b", "vol", second).assert_ok();
        let stages: Vec<_> = mount_entries_under(&d.kubelet_dir().join("plugins/moor"))
            .into_iter()
            .map(|m| m.mount_point)
            .collect();
        assert_eq!(
            stages.len(),
            1,
            "{fs_type}: the disk is staged twice: {stages:#?}"
        );
        std::fs::write(d.pod_dir("pod-a", "vol").join("f"), fs_type).unwrap();
        assert_eq!(read(&d.pod_dir("pod-b", "vol"), "f"), fs_type);
        let fscks = d
            .commands()
            .iter()
            .filter(|c| c.starts_with("e2fsck"))
            .count();
        assert_eq!(
            fscks, 0,
            "{fs_type}: fsck ran on a disk moor had just formatted"
        );
        d.unmount("pod-b", "vol").assert_ok();
        d.unmount("pod-a", "vol").assert_ok();
        assert_eq!(d.mounts(), NONE);
    }
}

/// A disk someone else has mounted (an operator, the host's fstab) is in use: moor neither
/// stages it a second time nor runs fsck on it.
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_disk_mounted_elsewhere_is_refused_as_in_use() {
    require_privileged_sandbox();
    let dev = device_with(Signature::Btrfs);
    let d = Daemon::start();
    let elsewhere = d.root.path().join("operator-mount");
    std::fs::create_dir_all(&elsewhere).unwrap();
    common::sh("mount", &[dev.path_str(), elsewhere.to_str().unwrap()]);
    let r = d.mount("pod-a", "vol", json!({"path": dev.path_str()}));
    let stage = d.stage_path(dev.path_str());
    assert!(
        !is_mounted(&stage),
        "a disk mounted elsewhere was staged as well"
    );
    assert_failure(&r, "device_in_use", &[dev.path_str()]);
    assert_eq!(d.mounts(), vec![elsewhere]);
    d.unmount("pod-a", "vol").assert_ok();
}

/// After the last unmount a block volume stays remembered: if its disk later looks blank
/// (a broken data path, a wipe), moor refuses to format it until an operator runs
/// `moor forget <key>`.
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_remembered_volume_that_looks_blank_needs_forget_before_format() {
    require_privileged_sandbox();
    let dev = LoopDev::new(64);
    let d = Daemon::start();
    let opts = json!({"path": dev.path_str(), "kubernetes.io/fsType": "ext4"});
    d.mount("pod-a", "vol", opts.clone()).assert_ok();
    d.unmount("pod-a", "vol").assert_ok();
    // Wipe it the thorough way: no signature, zeroed ends.
    sh("wipefs", &["-a", dev.path_str()]);
    sh(
        "dd",
        &[
            "if=/dev/zero",
            &format!("of={}", dev.path_str()),
            "bs=1M",
            "count=2",
            "conv=fsync",
            "status=none",
        ],
    );
    let r = d.mount("pod-a", "vol", opts.clone());
    assert!(r.message().starts_with("known_volume_blank:"), "{}", r.json);
    assert_eq!(
        d.mkfs_commands().len(),
        1,
        "only the first, blank-disk format ran"
    );
    let key = d.stage_records()[0]["key"].as_str().unwrap().to_owned();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_moor"))
        .args(["forget", &key])
        .env("MOOR_SOCKET", d.socket())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.mount("pod-a", "vol", opts).assert_ok();
    assert_eq!(d.mkfs_commands().len(), 2);
    d.unmount("pod-a", "vol").assert_ok();
}
