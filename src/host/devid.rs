//! A block device's stable identity as the host records it: udev's database (WWN, by-id
//! names), sysfs (`wwid`, device-mapper UUID, a loop device's backing file) and the
//! `/dev/disk/by-id` links — never a kernel name such as `/dev/sdb`, which a reboot may give
//! another disk. The lifecycle keys block volumes by it and local discovery names PVs by it.
//!
//! Invariant: only read; an unreadable source is "no id from it", and the caller decides what
//! no id at all means (the device number, with a warning).

use std::collections::BTreeMap;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use super::DevNum;

/// Where identities are read from.
#[derive(Debug, Clone)]
pub struct IdSources {
    /// The host's `/dev`.
    pub dev_dir: PathBuf,
    /// udev's database (`/run/udev/data`).
    pub udev_dir: PathBuf,
    /// sysfs root.
    pub sys: PathBuf,
}

/// A udev database record (`/run/udev/data/b<major>:<minor>`): `E:` properties and `S:` links.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UdevRecord {
    /// Properties (`ID_WWN`, `ID_SERIAL`, `ID_FS_UUID` …).
    pub props: BTreeMap<String, String>,
    /// Symlinks relative to `/dev` (`disk/by-id/…`).
    pub links: Vec<String>,
}

/// Parses a udev database record.
pub fn parse_udev(text: &str) -> UdevRecord {
    let mut r = UdevRecord::default();
    for line in text.lines() {
        if let Some(kv) = line.strip_prefix("E:") {
            if let Some((k, v)) = kv.split_once('=') {
                r.props.insert(k.to_owned(), v.to_owned());
            }
        } else if let Some(l) = line.strip_prefix("S:") {
            r.links.push(l.to_owned());
        }
    }
    r
}

/// Characters allowed in a stable id (the id goes into an annotation, and its hash into names).
pub fn clean_id(s: &str) -> String {
    s.trim()
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect()
}

/// The best `by-id` name among links: not `wwn-` (covered by the WWN), lexically first so
/// the choice is deterministic.
fn best_by_id<'a>(names: impl Iterator<Item = &'a str>) -> Option<String> {
    let mut v: Vec<&str> = names.filter(|n| !n.is_empty()).collect();
    v.sort_by_key(|n| (n.starts_with("wwn-"), *n));
    v.first().map(|n| format!("by-id-{}", clean_id(n)))
}

/// The stable id of a block device from what udev recorded, in order of preference:
/// the WWN, then a `/dev/disk/by-id` name.
pub fn block_id_from_udev(r: &UdevRecord) -> Option<String> {
    for k in ["ID_WWN_WITH_EXTENSION", "ID_WWN"] {
        if let Some(v) = r.props.get(k).filter(|v| !v.trim().is_empty()) {
            let mut id = format!("wwn-{}", clean_id(v));
            // Partitions share the disk's WWN.
            if let Some(p) = r.props.get("ID_PART_ENTRY_NUMBER") {
                id.push_str(&format!("-part{}", clean_id(p)));
            }
            return Some(id);
        }
    }
    best_by_id(r.links.iter().filter_map(|l| l.strip_prefix("disk/by-id/")))
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The stable id of a block device: udev's WWN or by-id name, sysfs `wwid`, a device-mapper
/// UUID, a by-id link found under the dev dir, or a loop device's backing file.
pub fn block_stable_id(src: &IdSources, dev: DevNum) -> Option<String> {
    if let Some(id) = std::fs::read_to_string(src.udev_dir.join(format!("b{dev}")))
        .ok()
        .and_then(|t| block_id_from_udev(&parse_udev(&t)))
    {
        return Some(id);
    }
    let sysdev = src.sys.join("dev/block").join(dev.to_string());
    for f in ["wwid", "device/wwid"] {
        if let Some(w) = read_trim(&sysdev.join(f)) {
            return Some(format!("wwid-{}", clean_id(&w)));
        }
    }
    if let Some(u) = read_trim(&sysdev.join("dm/uuid")) {
        return Some(format!("dm-{}", clean_id(&u)));
    }
    let by_id = src.dev_dir.join("disk/by-id");
    if let Ok(rd) = std::fs::read_dir(&by_id) {
        let names: Vec<String> = rd
            .filter_map(Result::ok)
            .filter(|e| {
                std::fs::metadata(e.path())
                    .is_ok_and(|m| m.file_type().is_block_device() && dev_of(&m) == dev)
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if let Some(id) = best_by_id(names.iter().map(String::as_str)) {
            return Some(id);
        }
    }
    read_trim(&sysdev.join("loop/backing_file")).map(|f| format!("loop-{}", clean_id(&f)))
}

/// The device number a device node stands for.
pub fn dev_of(m: &std::fs::Metadata) -> DevNum {
    use std::os::unix::fs::MetadataExt;
    DevNum::from_rdev(m.rdev())
}

/// The identity of a block device: its stable id (WWN, by-id, WWID, dm UUID, loop backing
/// file) or, when it has none, its device number — which a reboot may give another disk,
/// hence the warning.
pub fn device_stable_id(ids: &IdSources, dev: DevNum) -> String {
    match block_stable_id(ids, dev) {
        Some(id) => id,
        None => {
            tracing::warn!(device = %dev, "block device has no stable id (no WWN, by-id link, WWID, dm UUID or backing file); its identity is its device number");
            format!("devnum-{dev}")
        }
    }
}
