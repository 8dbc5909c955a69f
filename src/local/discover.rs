//! Discovery: the entries of a class's discovery directory, each with a stable identity and a
//! measured capacity.
//!
//! Invariants: an entry is a mount point (a directory that is the root of a mount) or a
//! symlink to a block device — anything else is skipped with a reason. Every entry carries a
//! stable id taken from the hardware or the filesystem (WWN/WWID, a `/dev/disk/by-id` name,
//! a device-mapper UUID, a filesystem UUID plus the bind root), never from a kernel name such
//! as `/dev/sdb` or `8:16`; an entry without one is skipped, never published.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::fs::probe;
pub use crate::host::devid::{
    IdSources, UdevRecord, block_id_from_udev, block_stable_id, clean_id, dev_of, parse_udev,
};
use crate::host::probe::{UsageError, fs_usage};
use crate::host::{Cmd, DevNum, Host};

/// Deadline of the `statvfs` that sizes a mount-point entry (a dead mount must not stall
/// discovery).
const STATVFS_TIMEOUT: Duration = Duration::from_secs(10);

use super::classes::{ClassConfig, LocalConfig};

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum EntryKind {
    /// A directory that is a mount root.
    MountPoint {
        /// Filesystem device.
        dev: DevNum,
        /// Path inside the filesystem that the mount shows (`/` for a whole filesystem).
        root: PathBuf,
        /// Filesystem type.
        fs_type: String,
    },
    /// A symlink to a block device.
    BlockDevice {
        /// The device node the link resolves to (today's kernel name: for messages only).
        device: PathBuf,
        /// Its number.
        dev: DevNum,
    },
}

/// One discovered entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    /// The class.
    pub class: String,
    /// The entry's path in the discovery directory (what the PV names).
    pub path: PathBuf,
    /// What it is.
    pub kind: EntryKind,
    /// Stable identity (`wwn-…`, `by-id-…`, `fs-<uuid>` …).
    pub stable_id: String,
    /// Size in bytes.
    pub capacity_bytes: u64,
}

/// An entry that is not published, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    /// The entry.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

/// One scan of one class.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Scan {
    /// Usable entries, sorted by path.
    pub entries: Vec<Entry>,
    /// The rest.
    pub skipped: Vec<Skipped>,
}

/// Where this node's block device identities are read, from the local PV config.
pub fn id_sources(cfg: &LocalConfig, host: &Host) -> IdSources {
    IdSources {
        dev_dir: cfg.dev_dir.clone(),
        udev_dir: cfg.udev_dir.clone(),
        sys: host.paths.sys.clone(),
    }
}

/// The device node of `dev` under the dev dir, from sysfs `uevent` (`DEVNAME=`).
pub fn dev_node(src: &IdSources, dev: DevNum) -> Option<PathBuf> {
    let uevent = std::fs::read_to_string(
        src.sys
            .join("dev/block")
            .join(dev.to_string())
            .join("uevent"),
    )
    .ok()?;
    uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .map(|n| src.dev_dir.join(n.trim()))
}

/// The filesystem UUID of `dev`: udev's `ID_FS_UUID`, else a `blkid -p` probe.
pub fn fs_uuid(host: &Host, src: &IdSources, dev: DevNum) -> Option<String> {
    if let Some(u) = std::fs::read_to_string(src.udev_dir.join(format!("b{dev}")))
        .ok()
        .and_then(|t| parse_udev(&t).props.get("ID_FS_UUID").cloned())
        .filter(|u| !u.is_empty())
    {
        return Some(u);
    }
    let node = dev_node(src, dev)?;
    // A mounted filesystem rewrites its superblock while it works; a probe that reads it
    // mid-write fails its checksum and finds nothing. Such a miss is retried, not believed.
    for attempt in 0..3 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
        let Ok(out) = host.runner.run(
            &Cmd::new("blkid")
                .args(probe::probe_args(&node))
                .timeout(Duration::from_secs(30)),
        ) else {
            continue;
        };
        if let Some(u) = out
            .success()
            .then(|| probe::parse_export(&out.stdout_text()).remove("UUID"))
            .flatten()
            .filter(|u| !u.is_empty())
        {
            return Some(u);
        }
    }
    None
}

/// The stable id of a mounted filesystem entry: its UUID, plus the bind root when the mount
/// shows a subdirectory.
pub fn mount_stable_id(uuid: &str, root: &Path) -> String {
    if root == Path::new("/") || root.as_os_str().is_empty() {
        format!("fs-{}", clean_id(uuid))
    } else {
        format!(
            "fs-{}:{}",
            clean_id(uuid),
            clean_id(&root.to_string_lossy())
        )
    }
}

/// Resolves an entry symlink. An absolute target under `/dev` is read under the configured
/// dev dir (a container that mounts the host's `/dev` elsewhere).
pub fn resolve_link(src: &IdSources, entry: &Path) -> std::io::Result<PathBuf> {
    let target = std::fs::read_link(entry)?;
    let target = match target.strip_prefix("/dev") {
        Ok(rest) if src.dev_dir != Path::new("/dev") => src.dev_dir.join(rest),
        _ if target.is_relative() => entry.parent().unwrap_or(Path::new("/")).join(target),
        _ => target,
    };
    std::fs::canonicalize(target)
}

/// Inspects one entry.
pub fn inspect(
    host: &Host,
    src: &IdSources,
    class: &ClassConfig,
    path: &Path,
) -> Result<Entry, String> {
    let md = std::fs::symlink_metadata(path).map_err(|e| format!("cannot stat: {e}"))?;
    let ft = md.file_type();
    let (kind, stable_id, capacity_bytes) = if ft.is_symlink() {
        let device = resolve_link(src, path).map_err(|e| format!("dangling symlink: {e}"))?;
        let dmd = std::fs::metadata(&device).map_err(|e| format!("{}: {e}", device.display()))?;
        if !dmd.file_type().is_block_device() {
            return Err(format!(
                "links to {}, which is not a block device",
                device.display()
            ));
        }
        let dev = dev_of(&dmd);
        let id = block_stable_id(src, dev).ok_or_else(|| {
            format!(
                "{} ({dev}) has no stable identity (no WWN, WWID, /dev/disk/by-id link or dm UUID); not published",
                device.display()
            )
        })?;
        let size = host
            .blockdev
            .size_bytes(dev)
            .map_err(|e| format!("size of {dev}: {e}"))?;
        (EntryKind::BlockDevice { device, dev }, id, size)
    } else if ft.is_dir() {
        let pm = host
            .mounts
            .path_mount(path)
            .map_err(|e| format!("statx: {e}"))?;
        if !pm.is_mount_root {
            return Err(
                "a directory that is not a mount point (mount a disk or bind-mount a directory here)"
                    .into(),
            );
        }
        let table = host
            .mounts
            .snapshot()
            .map_err(|e| format!("mount table: {e}"))?;
        let m = table
            .iter()
            .find(|m| m.mount_id == pm.mount_id)
            .or_else(|| table.iter().rev().find(|m| m.mount_point == path))
            .ok_or("mount not found in the mount table")?;
        let mut dev = DevNum {
            major: m.major,
            minor: m.minor,
        };
        if dev.major == 0 && m.source.starts_with('/') {
            // btrfs and other anonymous-device filesystems: the source names the disk.
            if let Ok(Some(d)) = host.blockdev.dev_num(Path::new(&m.source)) {
                dev = d;
            }
        }
        let uuid = fs_uuid(host, src, dev).ok_or_else(|| {
            format!(
                "{} filesystem on {} has no UUID; not published",
                m.fs_type, m.source
            )
        })?;
        let size = fs_usage(path, STATVFS_TIMEOUT)
            .map_err(|e| match e {
                UsageError::Failed(e) => format!("statvfs: {e}"),
                UsageError::Hung(t) => format!("statvfs: {t}"),
            })?
            .capacity_bytes;
        (
            EntryKind::MountPoint {
                dev,
                root: m.root.clone(),
                fs_type: m.fs_type.clone(),
            },
            mount_stable_id(&uuid, &m.root),
            size,
        )
    } else {
        return Err("neither a mount point nor a symlink to a block device".into());
    };
    Ok(Entry {
        class: class.name.clone(),
        path: path.to_owned(),
        kind,
        stable_id,
        capacity_bytes,
    })
}

/// Scans one class's discovery directory. Names starting with `.` are ignored.
pub fn scan_class(host: &Host, src: &IdSources, class: &ClassConfig) -> Scan {
    let mut scan = Scan::default();
    let rd = match std::fs::read_dir(&class.discovery_dir) {
        Ok(rd) => rd,
        Err(e) => {
            scan.skipped.push(Skipped {
                path: class.discovery_dir.clone(),
                reason: format!("cannot read the discovery directory: {e}"),
            });
            return scan;
        }
    };
    let mut paths: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .collect();
    paths.sort();
    for p in paths {
        match inspect(host, src, class, &p) {
            Ok(e) => {
                if let Some(other) = scan.entries.iter().find(|o| o.stable_id == e.stable_id) {
                    scan.skipped.push(Skipped {
                        reason: format!(
                            "same disk as {} (stable id {}); published once",
                            other.path.display(),
                            e.stable_id
                        ),
                        path: p,
                    });
                } else {
                    scan.entries.push(e);
                }
            }
            Err(reason) => scan.skipped.push(Skipped { path: p, reason }),
        }
    }
    scan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;
    use std::collections::BTreeMap;

    const NVME: &str = "S:disk/by-id/nvme-eui.002538b471b2b7a1\nS:disk/by-id/nvme-Samsung_SSD_980_PRO_1TB_S5GXNF0R123456\nS:disk/by-path/pci-0000:01:00.0-nvme-1\nE:ID_SERIAL=Samsung_SSD_980_PRO_1TB_S5GXNF0R123456_1\nE:ID_WWN=eui.002538b471b2b7a1\nE:ID_MODEL=Samsung SSD 980 PRO 1TB\nE:ID_FS_UUID=0b1c-aa\n";

    #[test]
    fn udev_records_give_the_wwn_first_then_a_by_id_name() {
        let r = parse_udev(NVME);
        assert_eq!(
            block_id_from_udev(&r).as_deref(),
            Some("wwn-eui.002538b471b2b7a1")
        );
        let no_wwn = parse_udev(
            "S:disk/by-id/wwn-0x5000c500a1b2c3d4\nS:disk/by-id/ata-ST4000_ZC1234\nS:disk/by-uuid/x\n",
        );
        assert_eq!(
            block_id_from_udev(&no_wwn).as_deref(),
            Some("by-id-ata-ST4000_ZC1234")
        );
        let part = parse_udev("E:ID_WWN=0x5000c5\nE:ID_PART_ENTRY_NUMBER=2\n");
        assert_eq!(
            block_id_from_udev(&part).as_deref(),
            Some("wwn-0x5000c5-part2")
        );
        assert_eq!(
            block_id_from_udev(&parse_udev("E:DEVNAME=/dev/sdb\n")),
            None
        );
    }

    #[test]
    fn mount_ids_carry_the_bind_root() {
        assert_eq!(mount_stable_id("abc", Path::new("/")), "fs-abc");
        assert_eq!(
            mount_stable_id("abc", Path::new("/vols/a b")),
            "fs-abc:/vols/a_b"
        );
    }

    fn host_at(root: &Path) -> Host {
        FakeHost::new(root).with_sysfs_fixture().host
    }

    #[test]
    fn sysfs_and_dev_fallbacks_and_skips() {
        let t = tempfile::tempdir().unwrap();
        let host = host_at(t.path());
        let src = IdSources {
            dev_dir: t.path().join("dev"),
            udev_dir: t.path().join("udev"),
            sys: t.path().join("sys"),
        };
        let d = |major, minor| DevNum { major, minor };
        std::fs::create_dir_all(t.path().join("sys/dev/block/8:0/device")).unwrap();
        std::fs::write(
            t.path().join("sys/dev/block/8:0/device/wwid"),
            "naa.5000c500a1b2c3d4\n",
        )
        .unwrap();
        assert_eq!(
            block_stable_id(&src, d(8, 0)).as_deref(),
            Some("wwid-naa.5000c500a1b2c3d4")
        );
        std::fs::create_dir_all(t.path().join("sys/dev/block/253:1/dm")).unwrap();
        std::fs::write(t.path().join("sys/dev/block/253:1/dm/uuid"), "LVM-abc\n").unwrap();
        assert_eq!(
            block_stable_id(&src, d(253, 1)).as_deref(),
            Some("dm-LVM-abc")
        );
        std::fs::create_dir_all(t.path().join("udev")).unwrap();
        std::fs::write(t.path().join("udev/b259:0"), NVME).unwrap();
        assert_eq!(
            block_stable_id(&src, d(259, 0)).as_deref(),
            Some("wwn-eui.002538b471b2b7a1")
        );
        assert_eq!(block_stable_id(&src, d(7, 9)), None);

        // A discovery dir with junk in it: every entry skipped with a reason.
        let disc = t.path().join("disks");
        std::fs::create_dir_all(disc.join("plain-dir")).unwrap();
        std::fs::write(disc.join("file"), "x").unwrap();
        std::os::unix::fs::symlink("/nonexistent", disc.join("dangling")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", disc.join("not-a-device")).unwrap();
        std::fs::write(disc.join(".hidden"), "x").unwrap();
        let class = ClassConfig {
            name: "c".into(),
            discovery_dir: disc.clone(),
            volume_mode: super::super::classes::VolumeMode::Filesystem,
            fs_type: None,
            wipe: super::super::classes::WipeMethod::ZeroEnds,
            source: super::super::classes::SourceKind::Flex,
            reclaim_policy: super::super::classes::ReclaimPolicy::Delete,
            node_labels: BTreeMap::new(),
            mount_options: None,
            wipe_timeout: Duration::from_secs(1),
        };
        let scan = scan_class(&host, &src, &class);
        assert!(scan.entries.is_empty());
        let reasons: BTreeMap<String, String> = scan
            .skipped
            .iter()
            .map(|s| {
                (
                    s.path.file_name().unwrap().to_string_lossy().into_owned(),
                    s.reason.clone(),
                )
            })
            .collect();
        assert_eq!(reasons.len(), 4, "{reasons:?}");
        assert!(reasons["plain-dir"].contains("not a mount point"));
        assert!(reasons["file"].contains("neither"));
        assert!(reasons["dangling"].contains("dangling"));
        assert!(reasons["not-a-device"].contains("not a block device"));
    }
}
