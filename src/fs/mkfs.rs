//! Per-filesystem commands: mkfs (never with a force flag) and fsck, as pure argv builders,
//! with each tool's exit codes interpreted here.

use std::ffi::OsString;
use std::path::Path;

/// Filesystems moor creates.
pub const FORMATTABLE: &[&str] = &["ext4", "ext3", "ext2", "xfs", "btrfs"];

/// The default when the volume asks for none (kubelet's choice too).
pub const DEFAULT_FS: &str = "ext4";

/// The ext family, which the ext4 driver mounts whatever the on-disk generation.
pub fn is_ext(fs: &str) -> bool {
    matches!(fs, "ext2" | "ext3" | "ext4")
}

/// mkfs program and argv for `fs`, writing filesystem UUID `uuid`. No `-F`/`-f`: mke2fs,
/// mkfs.xfs and mkfs.btrfs then refuse a device with an existing signature on their own, a
/// second guard behind the probe.
pub fn mkfs_command(fs: &str, device: &Path, uuid: &str) -> Option<(String, Vec<OsString>)> {
    let mut args: Vec<OsString> = match fs {
        // -m0: a PV is not a system disk; root-reserved blocks only waste the user's space.
        "ext4" | "ext3" | "ext2" => vec!["-q".into(), "-m0".into(), "-U".into(), uuid.into()],
        "xfs" => vec!["-q".into(), "-m".into(), format!("uuid={uuid}").into()],
        "btrfs" => vec!["-q".into(), "-U".into(), uuid.into()],
        _ => return None,
    };
    args.push(device.into());
    Some((format!("mkfs.{fs}"), args))
}

/// fsck argv for `fs`, when moor checks that filesystem before mounting it rw.
/// xfs and btrfs check themselves at mount time (their repair tools are not for boot-time use).
pub fn fsck_command(fs: &str, device: &Path) -> Option<(String, Vec<OsString>)> {
    is_ext(fs).then(|| ("e2fsck".to_owned(), vec!["-p".into(), device.into()]))
}

/// The online grow of a mounted filesystem to its device's full size: resize2fs takes the
/// device, xfs_growfs and btrfs take the mount point. None for a filesystem moor does not
/// grow. None of them shrinks: a device smaller than the filesystem is their error.
pub fn grow_command(fs: &str, device: &Path, mount: &Path) -> Option<(String, Vec<OsString>)> {
    match fs {
        _ if is_ext(fs) => Some(("resize2fs".into(), vec![device.into()])),
        "xfs" => Some(("xfs_growfs".into(), vec!["-d".into(), mount.into()])),
        "btrfs" => Some((
            "btrfs".into(),
            vec![
                "filesystem".into(),
                "resize".into(),
                "max".into(),
                mount.into(),
            ],
        )),
        _ => None,
    }
}

/// e2fsck exit codes (e2fsck(8)): 0 clean, 1 errors corrected, 2 corrected and reboot
/// advised (only meaningful for a mounted root); 4 and up: left uncorrected or failed.
pub fn fsck_ok(code: Option<i32>) -> bool {
    matches!(code, Some(0..=2))
}
