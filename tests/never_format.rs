//! The never-format rule on real devices (tier 2: root, loop devices, real mkfs and mounts, a
//! real daemon driven through the real FlexVolume front end).
//!
//! The matrix puts each kind of signature on a loop device and asks moor to mount it with
//! each fsType. Whatever is asked, a device that carries anything is never formatted: either
//! the filesystem already there is mounted as it is (its marker file reads through the pod
//! directory, its signature and UUID are the same afterwards), or the mount fails with a
//! message naming what was found, every byte of the device is unchanged, nothing is left
//! mounted or recorded, and kubelet's follow-up unmount succeeds. In every case the daemon's
//! own log shows that no mkfs ran.
//!
//! Then the blank device: formatted exactly once, without a force flag, even when several pods
//! mount it at the same moment, and its data survives unmount, a daemon restart and a remount;
//! a read-only request or an fsType moor cannot create never formats, nor does a device that
//! reads as zero bytes. Devices that hold data the low-level probe does not name (an ext4
//! with a damaged primary superblock, a GPT with only its backup header) are not blank either,
//! and a failed mount is never a reason to format.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::host::{
    MARKER, MARKER_TEXT, RAW_MARKER_OFFSET, Signature, all_signatures, assert_failure, device_with,
    digest, kernel_has, mount_entries_at, probe, read_at, with_mounted, write_at,
};
use common::{Daemon, LoopDev, is_mounted, require_privileged_sandbox, sh};
use serde_json::json;

/// What moor must do with a device.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Mount the filesystem that is there, untouched.
    Mounted,
    /// Mounted when the kernel has this filesystem; otherwise the kernel refuses the mount
    /// (`mount_failed`) and the device is untouched all the same.
    MountedIfKernelHas(&'static str),
    /// Refuse with this reason, without writing a byte.
    Refused(&'static str),
}

use Expect::{Mounted, MountedIfKernelHas, Refused};

/// Runs one cell of the matrix.
fn check(sig: Signature, fs_type: &str, expect: Expect) {
    require_privileged_sandbox();
    let dev = device_with(sig);
    let signature_before = probe(&dev.path);
    let bytes_before = digest(&dev.path);
    let d = Daemon::start();
    let opts = json!({"path": dev.path_str(), "kubernetes.io/fsType": fs_type});
    let r = d.mount("pod-a", "vol", opts);

    let expect = match expect {
        MountedIfKernelHas(fs) if kernel_has(fs) => Mounted,
        MountedIfKernelHas(_) => Refused("mount_failed"),
        e => e,
    };
    match expect {
        Mounted => {
            r.assert_ok();
            let fs = sig.filesystem().unwrap();
            let pod = d.pod_dir("pod-a", "vol");
            assert!(is_mounted(&pod), "pod dir not mounted");
            let stage = mount_entries_at(&d.stage_path(dev.path_str()));
            assert_eq!(stage.len(), 1, "one stage mount: {stage:?}");
            assert_eq!(stage[0].fs_type, fs, "mounted as the filesystem found");
            let has_marker_file = sig != Signature::Vfat;
            if has_marker_file {
                let text = std::fs::read_to_string(pod.join(MARKER)).unwrap();
                assert_eq!(
                    text, MARKER_TEXT,
                    "the existing data reads through the pod dir"
                );
            }
            d.unmount("pod-a", "vol").assert_ok();
            assert_eq!(
                d.mounts(),
                Vec::<std::path::PathBuf>::new(),
                "unmount leaves nothing mounted"
            );
            // A mount may bump the superblock's mount count: compare what identifies the
            // filesystem, and the data, rather than raw bytes.
            assert_eq!(
                probe(&dev.path),
                signature_before,
                "signature or UUID changed"
            );
            if has_marker_file {
                let text = with_mounted(&dev.path, fs, true, |root| {
                    std::fs::read_to_string(root.join(MARKER)).unwrap()
                });
                assert_eq!(text, MARKER_TEXT);
            }
        }
        Refused(reason) => {
            let found = sig.blkid().map(|(_, v)| v).unwrap();
            let words: &[&str] = match reason {
                "mount_failed" => &[],
                "fs_type_mismatch" => &[found, fs_type],
                _ => &[found],
            };
            assert_failure(&r, reason, words);
            assert_eq!(
                digest(&dev.path),
                bytes_before,
                "the device's bytes changed"
            );
            d.assert_nothing_left("pod-a", "vol");
        }
        MountedIfKernelHas(_) => unreachable!(),
    }
    assert_eq!(
        d.mkfs_commands(),
        Vec::<String>::new(),
        "mkfs ran on a device that was not blank"
    );
}

macro_rules! matrix {
    ($($name:ident: $sig:ident, $fs:literal => $expect:expr;)*) => {
        $(
            #[test]
            #[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
            fn $name() {
                check(Signature::$sig, $fs, $expect);
            }
        )*
    };
}

/// Signature × asked fsType. An empty fsType means "whatever is there" (ext4 when blank).
mod matrix {
    use super::*;

    matrix! {
        ext2_asked_ext4: Ext2, "ext4" => Mounted;
        ext2_asked_xfs: Ext2, "xfs" => Refused("fs_type_mismatch");
        ext2_asked_btrfs: Ext2, "btrfs" => Refused("fs_type_mismatch");
        ext2_asked_nothing: Ext2, "" => Mounted;

        ext4_asked_ext4: Ext4, "ext4" => Mounted;
        ext4_asked_xfs: Ext4, "xfs" => Refused("fs_type_mismatch");
        ext4_asked_btrfs: Ext4, "btrfs" => Refused("fs_type_mismatch");
        ext4_asked_nothing: Ext4, "" => Mounted;

        xfs_asked_ext4: Xfs, "ext4" => Refused("fs_type_mismatch");
        xfs_asked_xfs: Xfs, "xfs" => Mounted;
        xfs_asked_btrfs: Xfs, "btrfs" => Refused("fs_type_mismatch");
        xfs_asked_nothing: Xfs, "" => Mounted;

        btrfs_asked_ext4: Btrfs, "ext4" => Refused("fs_type_mismatch");
        btrfs_asked_xfs: Btrfs, "xfs" => Refused("fs_type_mismatch");
        btrfs_asked_btrfs: Btrfs, "btrfs" => Mounted;
        btrfs_asked_nothing: Btrfs, "" => Mounted;

        vfat_asked_ext4: Vfat, "ext4" => Refused("fs_type_mismatch");
        vfat_asked_xfs: Vfat, "xfs" => Refused("fs_type_mismatch");
        vfat_asked_btrfs: Vfat, "btrfs" => Refused("fs_type_mismatch");
        vfat_asked_nothing: Vfat, "" => MountedIfKernelHas("vfat");

        swap_asked_ext4: Swap, "ext4" => Refused("signature_present");
        swap_asked_xfs: Swap, "xfs" => Refused("signature_present");
        swap_asked_btrfs: Swap, "btrfs" => Refused("signature_present");
        swap_asked_nothing: Swap, "" => Refused("signature_present");

        lvm2_asked_ext4: Lvm2, "ext4" => Refused("signature_present");
        lvm2_asked_xfs: Lvm2, "xfs" => Refused("signature_present");
        lvm2_asked_btrfs: Lvm2, "btrfs" => Refused("signature_present");
        lvm2_asked_nothing: Lvm2, "" => Refused("signature_present");

        luks_asked_ext4: Luks, "ext4" => Refused("signature_present");
        luks_asked_xfs: Luks, "xfs" => Refused("signature_present");
        luks_asked_btrfs: Luks, "btrfs" => Refused("signature_present");
        luks_asked_nothing: Luks, "" => Refused("signature_present");

        gpt_asked_ext4: Gpt, "ext4" => Refused("signature_present");
        gpt_asked_xfs: Gpt, "xfs" => Refused("signature_present");
        gpt_asked_btrfs: Gpt, "btrfs" => Refused("signature_present");
        gpt_asked_nothing: Gpt, "" => Refused("signature_present");

        dos_asked_ext4: Dos, "ext4" => Refused("signature_present");
        dos_asked_xfs: Dos, "xfs" => Refused("signature_present");
        dos_asked_btrfs: Dos, "btrfs" => Refused("signature_present");
        dos_asked_nothing: Dos, "" => Refused("signature_present");
    }
}

/// A blank device asked `fs_type` is formatted as `created`, exactly once, without a force
/// flag; data written through the pod dir survives unmount, a daemon restart and a remount
/// by another pod, and the filesystem UUID never changes.
fn formatted_once(fs_type: &str, created: &str, size_mib: u64) {
    require_privileged_sandbox();
    let dev = LoopDev::new(size_mib);
    assert!(
        probe(&dev.path).is_empty(),
        "test setup: the device must be blank"
    );
    let mut d = Daemon::start();
    let opts = json!({"path": dev.path_str(), "kubernetes.io/fsType": fs_type});

    d.mount("pod-a", "vol", opts.clone()).assert_ok();
    let sig = probe(&dev.path);
    assert_eq!(
        sig.get("TYPE").map(String::as_str),
        Some(created),
        "{sig:?}"
    );
    let uuid = sig["UUID"].clone();
    std::fs::write(d.pod_dir("pod-a", "vol").join("written-by-pod-a"), "hello").unwrap();
    d.unmount("pod-a", "vol").assert_ok();
    assert_eq!(d.mounts(), Vec::<std::path::PathBuf>::new());
    assert_eq!(
        probe(&dev.path).get("UUID"),
        Some(&uuid),
        "UUID changed after unmount"
    );

    d.stop();
    d.spawn();
    d.mount("pod-b", "vol", opts).assert_ok();
    let back = std::fs::read_to_string(d.pod_dir("pod-b", "vol").join("written-by-pod-a")).unwrap();
    assert_eq!(back, "hello", "data did not survive unmount + remount");
    assert_eq!(
        probe(&dev.path).get("UUID"),
        Some(&uuid),
        "the device was formatted again"
    );
    let mkfs = d.mkfs_commands();
    assert_eq!(mkfs.len(), 1, "formatted exactly once: {mkfs:?}");
    assert!(mkfs[0].starts_with(&format!("mkfs.{created} ")), "{mkfs:?}");
    // moor chose the UUID, handed it to mkfs and checked it in the superblock: the one blkid
    // reads must be that one (the remount above would have failed as `device_changed` too).
    assert!(mkfs[0].contains(&uuid), "{mkfs:?} vs {uuid}");
    d.unmount("pod-b", "vol").assert_ok();
    assert_eq!(d.mounts(), Vec::<std::path::PathBuf>::new());
}

mod blank {
    use super::*;

    #[test]
    #[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
    fn no_fs_type_formats_ext4_once() {
        formatted_once("", "ext4", 64);
    }

    #[test]
    #[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
    fn ext4_is_formatted_once() {
        formatted_once("ext4", "ext4", 64);
    }

    #[test]
    #[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
    fn xfs_is_formatted_once() {
        formatted_once("xfs", "xfs", 300);
    }

    #[test]
    #[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
    fn btrfs_is_formatted_once() {
        formatted_once("btrfs", "btrfs", 128);
    }

    #[test]
    #[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
    fn read_only_request_never_formats() {
        require_privileged_sandbox();
        let dev = LoopDev::new(64);
        let d = Daemon::start();
        let r = d.mount(
            "pod-a",
            "vol",
            json!({"path": dev.path_str(), "kubernetes.io/readwrite": "ro"}),
        );
        assert_failure(&r, "blank_read_only", &[dev.path_str()]);
        assert!(probe(&dev.path).is_empty(), "the device is no longer blank");
        assert_eq!(
            all_signatures(&dev.path),
            "",
            "the device is no longer blank"
        );
        d.assert_nothing_left("pod-a", "vol");
        assert_eq!(d.mkfs_commands(), Vec::<String>::new());
    }

    #[test]
    #[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
    fn unsupported_fs_type_is_refused_and_the_device_stays_blank() {
        require_privileged_sandbox();
        let dev = LoopDev::new(64);
        let d = Daemon::start();
        let r = d.mount(
            "pod-a",
            "vol",
            json!({"path": dev.path_str(), "kubernetes.io/fsType": "vfat"}),
        );
        assert_failure(&r, "unsupported_fs_type", &["vfat"]);
        assert!(probe(&dev.path).is_empty());
        d.assert_nothing_left("pod-a", "vol");
        assert_eq!(d.mkfs_commands(), Vec::<String>::new());
    }

    /// A disk that vanished under its device node (a flapping FC path, a LUN not ready)
    /// reads as zero bytes: blkid finds nothing, which proves nothing. kubernetes #95183.
    #[test]
    #[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
    fn zero_size_device_is_not_taken_for_blank() {
        require_privileged_sandbox();
        let dev = LoopDev::new(0);
        let d = Daemon::start();
        let r = d.mount("pod-a", "vol", json!({"path": dev.path_str()}));
        assert_eq!(r.status(), "Failure", "{}", r.json);
        assert_eq!(
            d.mkfs_commands(),
            Vec::<String>::new(),
            "mkfs ran on a device that could not be read"
        );
        assert_failure(&r, "device_unreadable", &[dev.path_str()]);
        d.assert_nothing_left("pod-a", "vol");
    }
}

/// Devices that hold data blkid's low-level probe does not name. Each is recoverable, so
/// none may be formatted (pain points: kubernetes #140376, #43291).
mod hidden_data {
    use super::*;

    /// An ext4 whose primary superblock was zeroed (a torn write, a killed tool): `blkid -p`
    /// sees nothing, yet `e2fsck -b 8193` recovers every file from a backup superblock.
    #[test]
    #[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
    fn ext4_with_a_damaged_primary_superblock_is_not_formatted() {
        require_privileged_sandbox();
        let dev = device_with(Signature::Ext4);
        write_at(&dev.path, 1024, &[0; 1024]);
        assert!(
            probe(&dev.path).is_empty(),
            "test setup: blkid should see nothing"
        );
        let before = digest(&dev.path);
        let d = Daemon::start();
        let r = d.mount(
            "pod-a",
            "vol",
            json!({"path": dev.path_str(), "kubernetes.io/fsType": "ext4"}),
        );
        assert_eq!(
            d.mkfs_commands(),
            Vec::<String>::new(),
            "a recoverable ext4 was formatted"
        );
        assert_eq!(r.status(), "Failure", "{}", r.json);
        assert_eq!(digest(&dev.path), before);
        d.assert_nothing_left("pod-a", "vol");
        // Still recoverable: the backup superblock is intact and names the filesystem.
        let backup = sh(
            "dumpe2fs",
            &[
                "-h",
                "-o",
                "superblock=8193",
                "-o",
                "blocksize=1024",
                dev.path_str(),
            ],
        );
        assert!(backup.contains("Filesystem UUID"), "{backup}");
    }

    /// A GPT disk whose first sectors were zeroed keeps its backup table at the end; `wipefs`
    /// sees it, `blkid -p` does not.
    #[test]
    #[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
    fn gpt_with_only_its_backup_header_left_is_not_formatted() {
        require_privileged_sandbox();
        let dev = device_with(Signature::Gpt);
        write_at(&dev.path, 0, &[0; 34 * 512]);
        assert!(
            probe(&dev.path).is_empty(),
            "test setup: blkid should see nothing"
        );
        assert!(
            all_signatures(&dev.path).contains("gpt"),
            "test setup: wipefs should see the backup GPT"
        );
        let before = digest(&dev.path);
        let d = Daemon::start();
        let r = d.mount("pod-a", "vol", json!({"path": dev.path_str()}));
        assert_eq!(
            d.mkfs_commands(),
            Vec::<String>::new(),
            "a disk with a backup GPT was formatted"
        );
        assert_eq!(r.status(), "Failure", "{}", r.json);
        assert_eq!(digest(&dev.path), before);
        d.assert_nothing_left("pod-a", "vol");
    }
}

/// A failed mount is never a reason to format (k3s #1902, kubernetes #142243).
mod mount_failure {
    use super::*;

    #[test]
    #[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
    fn a_failed_mount_of_an_existing_filesystem_changes_nothing() {
        require_privileged_sandbox();
        let dev = device_with(Signature::Ext4);
        let sig = probe(&dev.path);
        let d = Daemon::start();
        let bad = json!({"path": dev.path_str(), "mountOptions": "moor_no_such_option"});
        let r = d.mount("pod-a", "vol", bad);
        assert_failure(&r, "mount_failed", &[]);
        assert_eq!(probe(&dev.path), sig);
        d.assert_nothing_left("pod-a", "vol");
        // The next, correct request mounts the same data.
        d.mount("pod-a", "vol", json!({"path": dev.path_str()}))
            .assert_ok();
        let text = std::fs::read_to_string(d.pod_dir("pod-a", "vol").join(MARKER)).unwrap();
        assert_eq!(text, MARKER_TEXT);
        d.unmount("pod-a", "vol").assert_ok();
        assert_eq!(probe(&dev.path), sig);
        assert_eq!(d.mkfs_commands(), Vec::<String>::new());
    }

    #[test]
    #[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
    fn a_mount_failure_after_formatting_never_formats_again() {
        require_privileged_sandbox();
        let dev = LoopDev::new(64);
        let d = Daemon::start();
        let bad = json!({"path": dev.path_str(), "mountOptions": "moor_no_such_option"});
        assert_failure(&d.mount("pod-a", "vol", bad.clone()), "mount_failed", &[]);
        let uuid = probe(&dev.path)
            .get("UUID")
            .cloned()
            .expect("formatted before the mount failed");
        assert_eq!(d.mounts(), Vec::<std::path::PathBuf>::new());
        assert_failure(&d.mount("pod-a", "vol", bad), "mount_failed", &[]);
        d.mount("pod-a", "vol", json!({"path": dev.path_str()}))
            .assert_ok();
        assert_eq!(probe(&dev.path).get("UUID"), Some(&uuid), "formatted again");
        assert_eq!(d.mkfs_commands().len(), 1, "{:?}", d.mkfs_commands());
        d.unmount("pod-a", "vol").assert_ok();
    }

    #[test]
    #[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
    fn raw_data_behind_a_signature_survives_a_refusal() {
        // The matrix checks whole-device checksums; this spells out the user's view.
        require_privileged_sandbox();
        let dev = device_with(Signature::Lvm2);
        let d = Daemon::start();
        let r = d.mount("pod-a", "vol", json!({"path": dev.path_str()}));
        assert_failure(&r, "signature_present", &["LVM2_member"]);
        let marker = read_at(&dev.path, RAW_MARKER_OFFSET, MARKER_TEXT.len());
        assert_eq!(marker, MARKER_TEXT.as_bytes());
        assert_eq!(d.mkfs_commands(), Vec::<String>::new());
    }
}

/// Two pods of one volume mounted at the same moment (a Deployment scaling up): the blank
/// disk is formatted once, both pods see the same filesystem.
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn concurrent_first_mounts_format_once() {
    require_privileged_sandbox();
    let dev = LoopDev::new(64);
    let d = Daemon::start();
    let opts = json!({"path": dev.path_str()});
    let pods = ["pod-a", "pod-b", "pod-c", "pod-d"];
    std::thread::scope(|s| {
        let runs: Vec<_> = pods
            .iter()
            .map(|p| s.spawn(|| d.mount(p, "vol", opts.clone())))
            .collect();
        for r in runs {
            r.join().unwrap().assert_ok();
        }
    });
    assert_eq!(d.mkfs_commands().len(), 1, "{:?}", d.mkfs_commands());
    std::fs::write(d.pod_dir("pod-a", "vol").join("f"), "shared").unwrap();
    for p in pods {
        assert_eq!(
            std::fs::read_to_string(d.pod_dir(p, "vol").join("f")).unwrap(),
            "shared"
        );
        d.unmount(p, "vol").assert_ok();
    }
    assert_eq!(d.mounts(), Vec::<std::path::PathBuf>::new());
}
