//! Cleaning a released entry so it can be offered again.
//!
//! Invariants:
//! - the never-wipe rules live in ONE function, [`check_wipe`], fed by facts gathered just
//!   before (so it is pure and tested case by case): never outside a discovery directory,
//!   never an entry mounted anywhere else (pod directories, stages), used by a live volume,
//!   held by a device-mapper/md holder, opened exclusively by someone, or whose disk is not
//!   the one the PV was made for;
//! - a record `<state-dir>/wipe/<hash of stable id>.json` is written (atomically, fsync'd,
//!   through the record store the journal uses) before the first byte is touched, and says
//!   `done` only after the wipe finished; a PV is deleted (hence offered again) only after
//!   that, and discovery does not publish an entry whose wipe is unfinished — so a crash
//!   never leaves a PV Available over half-wiped data;
//! - a mount-point entry's contents are removed by [`crate::host::tree::remove_contents`],
//!   which checks device and mount id at every step: a nested mount is never crossed, only
//!   left in place;
//! - block wipes go through the command runner with deadlines and never pass a force flag
//!   (`wipefs` refuses a busy device by itself).

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::api::VolumeStatus;
use crate::host::mountinfo::MountInfo;
use crate::host::paths::is_clean_absolute;
use crate::host::records::Store;
use crate::host::{Cmd, DevNum, Host};

use super::classes::{ClassConfig, LocalConfig, WipeMethod};
use super::discover::{Entry, EntryKind, inspect};

/// Everything [`check_wipe`] needs to know, gathered just before the decision.
#[derive(Debug, Clone)]
pub struct WipeFacts {
    /// The entry path as asked.
    pub entry_path: PathBuf,
    /// The class whose discovery directory holds it (None: none does).
    pub class: Option<ClassConfig>,
    /// What the entry is now (or why it is no entry).
    pub entry: Result<Entry, String>,
    /// The stable id the PV (or the unfinished wipe record) was made for.
    pub expected_id: Option<String>,
    /// The live mount table.
    pub mounts: Vec<MountInfo>,
    /// The daemon's volumes: `Ok(None)` when no daemon runs, `Err` when one could not answer.
    pub live_volumes: Result<Option<Vec<VolumeStatus>>, String>,
    /// Block entries: device-mapper/md holders and the device numbers of its partitions.
    pub holders: Vec<String>,
    /// Block entries: partitions' device numbers.
    pub partitions: Vec<DevNum>,
    /// Block entries: an exclusive open (`O_EXCL`) failed with this.
    pub exclusive_open: Result<(), String>,
}

/// Why a wipe was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not an entry of a discovery directory.
    #[error("{0} is not an entry of any configured discovery directory; refusing to wipe")]
    OutsideDiscovery(PathBuf),
    /// The entry is no longer a mount point / block device symlink.
    #[error("{path}: {reason}; refusing to wipe")]
    NotAnEntry {
        /// Entry.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Another disk sits there now.
    #[error(
        "{path} now holds {found}, not {expected} (the disk the volume was made for); refusing to wipe"
    )]
    OtherDisk {
        /// Entry.
        path: PathBuf,
        /// Expected stable id.
        expected: String,
        /// Found stable id.
        found: String,
    },
    /// Mounted or held somewhere.
    #[error("{path} is in use: {detail}; refusing to wipe")]
    InUse {
        /// Entry.
        path: PathBuf,
        /// Where.
        detail: String,
    },
}

fn related(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// THE never-wipe rules. `Ok` only when every rule holds.
pub fn check_wipe(f: &WipeFacts) -> Result<(), Refusal> {
    let path = &f.entry_path;
    let outside = || Refusal::OutsideDiscovery(path.clone());
    let class = f.class.as_ref().ok_or_else(outside)?;
    if !is_clean_absolute(path)
        || path.parent() != Some(class.discovery_dir.as_path())
        || path
            .file_name()
            .is_none_or(|n| n.as_bytes().starts_with(b"."))
    {
        return Err(outside());
    }
    let entry = f.entry.as_ref().map_err(|reason| Refusal::NotAnEntry {
        path: path.clone(),
        reason: reason.clone(),
    })?;
    if entry.path != *path {
        return Err(outside());
    }
    if let Some(exp) = &f.expected_id
        && *exp != entry.stable_id
    {
        return Err(Refusal::OtherDisk {
            path: path.clone(),
            expected: exp.clone(),
            found: entry.stable_id.clone(),
        });
    }
    let in_use = |detail: String| Refusal::InUse {
        path: path.clone(),
        detail,
    };
    match &entry.kind {
        EntryKind::MountPoint { dev, root, .. } => {
            // Another mount showing the entry's directory (or something inside it): a stage,
            // a pod's bind, a second mount of the same filesystem. Mounts of a parent
            // directory (the filesystem the entry was bound from) are not uses of it.
            if let Some(m) = f.mounts.iter().find(|m| {
                m.major == dev.major
                    && m.minor == dev.minor
                    && m.mount_point != *path
                    && m.root.starts_with(root)
            }) {
                return Err(in_use(format!(
                    "also mounted at {}",
                    m.mount_point.display()
                )));
            }
        }
        EntryKind::BlockDevice { device, dev } => {
            let devs: Vec<DevNum> = std::iter::once(*dev)
                .chain(f.partitions.iter().copied())
                .collect();
            // Also a bind mount of the device node itself (kubelet's raw block volumes map
            // it into `volumeDevices/`): a devtmpfs mount whose root is the node's name.
            let node_name = device.file_name();
            if let Some(m) = f.mounts.iter().find(|m| {
                devs.iter()
                    .any(|d| d.major == m.major && d.minor == m.minor)
                    || Path::new(&m.source) == device.as_path()
                    || Path::new(&m.source) == path.as_path()
                    || (m.fs_type == "devtmpfs"
                        && m.root != Path::new("/")
                        && m.root.file_name() == node_name)
            }) {
                return Err(in_use(format!(
                    "{} is mounted at {}",
                    device.display(),
                    m.mount_point.display()
                )));
            }
            if !f.holders.is_empty() {
                return Err(in_use(format!(
                    "{} is held by {}",
                    device.display(),
                    f.holders.join(", ")
                )));
            }
            if let Err(e) = &f.exclusive_open {
                return Err(in_use(format!(
                    "{} cannot be opened exclusively: {e}",
                    device.display()
                )));
            }
        }
    }
    match &f.live_volumes {
        Err(e) => {
            return Err(in_use(format!(
                "the daemon could not say which volumes are live ({e})"
            )));
        }
        Ok(Some(vols)) => {
            let device = match &entry.kind {
                EntryKind::BlockDevice { device, .. } => Some(device.as_path()),
                EntryKind::MountPoint { .. } => None,
            };
            if let Some(v) = vols.iter().find(|v| {
                v.state != "idle"
                    && (related(Path::new(&v.source), path)
                        || v.device.as_deref().is_some_and(|d| {
                            Path::new(d) == path.as_path() || Some(Path::new(d)) == device
                        }))
            }) {
                return Err(in_use(format!(
                    "live volume {} ({} pod(s), state {})",
                    v.key,
                    v.pods.len(),
                    v.state
                )));
            }
        }
        Ok(None) => {}
    }
    Ok(())
}

/// The volume key the `local` driver gives an entry used as a PV's `path`: after a wipe the
/// daemon forgets the filesystem it remembered there (else the blank disk would be refused
/// as `known_volume_blank` instead of formatted for the next claim).
pub fn volume_keys_of(entry: &Path, ids: &crate::local::discover::IdSources) -> Vec<String> {
    crate::local::driver::volume_keys_of(entry, ids)
}

/// A wipe's progress, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WipePhase {
    /// Recorded before the first byte was touched; not finished.
    Started,
    /// Finished: the entry may be offered again.
    Done,
    /// Stopped with an error; the entry stays unpublished until a wipe finishes.
    Failed,
}

/// `<state-dir>/wipe/<id>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WipeRecord {
    /// Entry path.
    pub entry: PathBuf,
    /// Class.
    pub class: String,
    /// The disk's stable id.
    pub stable_id: String,
    /// The PV being recycled, when there is one.
    pub pv: Option<String>,
    /// `contents` for mount points, else the block method.
    pub method: String,
    /// Progress.
    pub phase: WipePhase,
    /// Seconds since the epoch.
    pub started: u64,
    /// Seconds since the epoch.
    pub finished: Option<u64>,
    /// Error of a failed wipe.
    pub error: Option<String>,
    /// Mounts found inside the entry and left untouched.
    #[serde(default)]
    pub nested_mounts_left: Vec<PathBuf>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// The wipe records' directory.
pub fn wipe_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("wipe")
}

/// The record file for a stable id.
pub fn record_path(state_dir: &Path, stable_id: &str) -> PathBuf {
    wipe_dir(state_dir).join(format!("{}.json", record_stem(stable_id)))
}

/// The record stem (`<hash of stable id>`) of a stable id.
fn record_stem(stable_id: &str) -> String {
    Sha256::digest(stable_id.as_bytes())
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn is_record_stem(stem: &str) -> bool {
    stem.len() == 24 && stem.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The wipe journal's store (created, mode 0700, when missing).
fn store(state_dir: &Path) -> std::io::Result<Store> {
    let (store, aside) = Store::open(&wipe_dir(state_dir), 0o700)?;
    if let Some(p) = aside {
        tracing::error!(path = %p.path.display(), reason = p.reason, error = %p.detail, "wipe record directory set aside");
    }
    Ok(store)
}

/// Writes a record atomically and durably (the store the journal uses).
pub fn put_record(state_dir: &Path, rec: &WipeRecord) -> std::io::Result<()> {
    let body = serde_json::to_vec_pretty(rec).map_err(std::io::Error::other)?;
    store(state_dir)?
        .put(&record_stem(&rec.stable_id), &body)
        .map_err(|e| e.source)
}

/// Removes a record (after the PV was deleted, or after a finished command-line wipe).
pub fn remove_record(state_dir: &Path, stable_id: &str) -> std::io::Result<()> {
    if std::fs::symlink_metadata(wipe_dir(state_dir)).is_err() {
        return Ok(());
    }
    store(state_dir)?
        .remove(&record_stem(stable_id))
        .map_err(|e| e.source)
}

/// Every record; an entry that is not a readable, well-shaped record under its own name is
/// set aside as `*.corrupt` (never deleted) and reported, and the others still load.
pub fn load_records(state_dir: &Path) -> (Vec<WipeRecord>, Vec<String>) {
    let dir = wipe_dir(state_dir);
    if std::fs::symlink_metadata(&dir).is_err() {
        return (Vec::new(), Vec::new());
    }
    let (store, over) = match Store::open(&dir, 0o700) {
        Ok(x) => x,
        Err(e) => return (Vec::new(), vec![format!("{}: {e}", dir.display())]),
    };
    let mut problems: Vec<String> = over
        .into_iter()
        .map(|p| format!("{} ({}): {}", p.path.display(), p.reason, p.detail))
        .collect();
    let read = store.read(is_record_stem);
    problems.extend(
        read.set_aside
            .iter()
            .map(|p| format!("{} ({}): {}", p.path.display(), p.reason, p.detail)),
    );
    let mut recs = Vec::new();
    for (stem, bytes) in read.records {
        let parsed = std::str::from_utf8(&bytes)
            .map_err(|e| ("not_utf8", e.to_string()))
            .and_then(|t| {
                serde_json::from_str::<WipeRecord>(t).map_err(|e| ("invalid_json", e.to_string()))
            })
            .and_then(|r| {
                if record_stem(&r.stable_id) == stem {
                    Ok(r)
                } else {
                    Err((
                        "wrong_shape",
                        format!("holds {} under another name", r.stable_id),
                    ))
                }
            });
        match parsed {
            Ok(r) => recs.push(r),
            Err((reason, detail)) => {
                let p = store.reject(&stem, reason, detail);
                problems.push(format!("{} ({}): {}", p.path.display(), p.reason, p.detail));
            }
        }
    }
    recs.sort_by(|a, b| a.entry.cmp(&b.entry));
    (recs, problems)
}

/// True when the wipe record of `stable_id` was set aside as unusable: its wipe may not
/// have finished, so the entry is held back like an unfinished one until an operator
/// removes the `*.corrupt` file.
pub fn held_by_unusable_record(state_dir: &Path, stable_id: &str) -> bool {
    let own = record_path(state_dir, stable_id);
    let Some(name) = own.file_name().map(|n| n.as_bytes().to_vec()) else {
        return false;
    };
    let Ok(rd) = std::fs::read_dir(wipe_dir(state_dir)) else {
        return false;
    };
    rd.filter_map(Result::ok).any(|e| {
        let n = e.file_name();
        let n = n.as_bytes();
        n.starts_with(&name) && n.ends_with(b".corrupt")
    })
}

/// Stable ids with an unfinished (started or failed) wipe: never published.
pub fn unfinished_ids(state_dir: &Path) -> Vec<String> {
    load_records(state_dir)
        .0
        .into_iter()
        .filter(|r| r.phase != WipePhase::Done)
        .map(|r| r.stable_id)
        .collect()
}

/// [`unfinished_ids`], plus the scanned entries whose wipe record was set aside as unusable.
pub fn unfinished_among(state_dir: &Path, scans: &[super::discover::Scan]) -> Vec<String> {
    let mut ids = unfinished_ids(state_dir);
    for e in scans.iter().flat_map(|s| &s.entries) {
        if !ids.contains(&e.stable_id) && held_by_unusable_record(state_dir, &e.stable_id) {
            ids.push(e.stable_id.clone());
        }
    }
    ids
}

/// A wipe that did not happen or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum WipeError {
    /// A rule said no.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The record could not be written: nothing was touched.
    #[error("wipe record {path}")]
    Record {
        /// Path.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The wipe itself failed (the record says `failed`).
    #[error("wiping {entry} failed: {detail}")]
    Failed {
        /// Entry.
        entry: PathBuf,
        /// What failed.
        detail: String,
    },
}

impl WipeError {
    /// Stable reason label.
    pub fn reason(&self) -> &'static str {
        match self {
            WipeError::Refused(Refusal::InUse { .. }) => "in_use",
            WipeError::Refused(Refusal::OtherDisk { .. }) => "device_changed",
            WipeError::Refused(_) => "refused",
            WipeError::Record { .. } => "journal",
            WipeError::Failed { .. } => "wipe_failed",
        }
    }
}

/// What the wipe needs from its surroundings.
#[derive(Clone)]
pub struct WipeCtx<'a> {
    /// The host.
    pub host: &'a Host,
    /// The local config.
    pub cfg: &'a LocalConfig,
    /// Durable state (records).
    pub state_dir: &'a Path,
    /// The daemon's live volumes (see [`WipeFacts::live_volumes`]).
    pub live_volumes: Result<Option<Vec<VolumeStatus>>, String>,
}

/// Gathers the facts about `entry_path`.
pub fn gather(ctx: &WipeCtx<'_>, entry_path: &Path, expected_id: Option<&str>) -> WipeFacts {
    let src = crate::local::discover::id_sources(ctx.cfg, ctx.host);
    let class = entry_path
        .parent()
        .and_then(|d| ctx.cfg.class_of_dir(d))
        .cloned();
    let entry = match &class {
        Some(c) => inspect(ctx.host, &src, c, entry_path),
        None => Err("not in a discovery directory".into()),
    };
    let mounts = ctx.host.mounts.snapshot().unwrap_or_default();
    let (mut holders, mut partitions, mut exclusive_open) = (Vec::new(), Vec::new(), Ok(()));
    if let Ok(Entry {
        kind: EntryKind::BlockDevice { device, dev },
        ..
    }) = &entry
    {
        holders = ctx
            .host
            .blockdev
            .holders(*dev)
            .unwrap_or_else(|e| vec![format!("(holders unreadable: {e})")]);
        for p in ctx.host.blockdev.partitions(*dev).unwrap_or_default() {
            let f = ctx
                .host
                .paths
                .sys
                .join("dev/block")
                .join(dev.to_string())
                .join(&p)
                .join("dev");
            if let Some((a, b)) = std::fs::read_to_string(f).ok().and_then(|s| {
                s.trim()
                    .split_once(':')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
            }) && let (Ok(major), Ok(minor)) = (a.parse(), b.parse())
            {
                partitions.push(DevNum { major, minor });
            }
        }
        // The kernel's own answer: O_EXCL on a block device fails with EBUSY while it is
        // mounted or claimed by a holder.
        exclusive_open = ctx
            .host
            .blockdev
            .claim_exclusive(device)
            .map_err(|e| e.to_string());
    }
    WipeFacts {
        entry_path: entry_path.to_owned(),
        class,
        entry,
        expected_id: expected_id.map(str::to_owned),
        mounts,
        live_volumes: ctx.live_volumes.clone(),
        holders,
        partitions,
        exclusive_open,
    }
}

/// Checks, records, wipes, records the outcome. `pv`: the PV being recycled.
pub fn wipe_entry(
    ctx: &WipeCtx<'_>,
    entry_path: &Path,
    expected_id: Option<&str>,
    pv: Option<&str>,
) -> Result<WipeRecord, WipeError> {
    let facts = gather(ctx, entry_path, expected_id);
    check_wipe(&facts)?;
    let (Ok(entry), Some(class)) = (facts.entry, facts.class) else {
        return Err(WipeError::Refused(Refusal::OutsideDiscovery(
            entry_path.into(),
        )));
    };
    let method = match entry.kind {
        EntryKind::MountPoint { .. } => "contents".to_owned(),
        EntryKind::BlockDevice { .. } => class.wipe.as_str().to_owned(),
    };
    let mut rec = WipeRecord {
        entry: entry.path.clone(),
        class: class.name.clone(),
        stable_id: entry.stable_id.clone(),
        pv: pv.map(str::to_owned),
        method,
        phase: WipePhase::Started,
        started: now(),
        finished: None,
        error: None,
        nested_mounts_left: Vec::new(),
    };
    let record_err = |source| WipeError::Record {
        path: record_path(ctx.state_dir, &entry.stable_id),
        source,
    };
    put_record(ctx.state_dir, &rec).map_err(record_err)?;
    tracing::info!(entry = %entry.path.display(), stable_id = %entry.stable_id, method = %rec.method, "wipe started");
    let result = match &entry.kind {
        EntryKind::MountPoint { .. } => {
            crate::host::tree::remove_contents(&entry.path).map(|r| r.nested_mounts)
        }
        EntryKind::BlockDevice { device, dev } => {
            wipe_block(ctx.host, device, *dev, class.wipe, class.wipe_timeout).map(|()| Vec::new())
        }
    };
    rec.finished = Some(now());
    match result {
        Ok(nested) => {
            if !nested.is_empty() {
                tracing::warn!(entry = %entry.path.display(), nested = ?nested, "mounts inside the entry were left untouched");
            }
            rec.nested_mounts_left = nested;
            rec.phase = WipePhase::Done;
            put_record(ctx.state_dir, &rec).map_err(record_err)?;
            tracing::info!(entry = %entry.path.display(), "wipe done");
            Ok(rec)
        }
        Err(detail) => {
            rec.phase = WipePhase::Failed;
            rec.error = Some(detail.clone());
            let _ = put_record(ctx.state_dir, &rec);
            tracing::error!(entry = %entry.path.display(), error = %detail, "wipe failed");
            Err(WipeError::Failed {
                entry: entry.path,
                detail,
            })
        }
    }
}

/// The commands a block wipe runs, in order.
pub fn block_commands(device: &Path, size: u64, method: WipeMethod, timeout: Duration) -> Vec<Cmd> {
    let mut v = vec![
        Cmd::new("wipefs")
            .arg("-a")
            .arg(device)
            .timeout(Duration::from_secs(120)),
    ];
    if method == WipeMethod::Discard {
        v.push(Cmd::new("blkdiscard").arg(device).timeout(timeout));
    }
    match method {
        WipeMethod::Zero => v.push(
            Cmd::new("blkdiscard")
                .arg("-z")
                .arg(device)
                .timeout(timeout),
        ),
        WipeMethod::ZeroEnds | WipeMethod::Discard => {
            let mib = 1u64 << 20;
            let mut of = std::ffi::OsString::from("of=");
            of.push(device);
            let dd = |seek: u64| {
                Cmd::new("dd")
                    .args([
                        "if=/dev/zero",
                        "bs=1M",
                        "count=1",
                        "conv=notrunc,fsync",
                        "oflag=seek_bytes",
                    ])
                    .arg(&of)
                    .arg(format!("seek={seek}"))
                    .timeout(Duration::from_secs(120))
            };
            v.push(dd(0));
            if size > mib {
                v.push(dd(size - mib));
            }
        }
    }
    v
}

fn wipe_block(
    host: &Host,
    device: &Path,
    dev: DevNum,
    method: WipeMethod,
    timeout: Duration,
) -> Result<(), String> {
    let size = host
        .blockdev
        .size_bytes(dev)
        .map_err(|e| format!("size of {dev}: {e}"))?;
    for cmd in block_commands(device, size, method, timeout) {
        let out = host.runner.run(&cmd).map_err(|e| e.to_string())?;
        if !out.success() {
            return Err(format!(
                "`{}` failed ({}): {}",
                cmd.display(),
                crate::host::exec::exit_text(out.code),
                out.stderr_tail()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class() -> ClassConfig {
        crate::local::classes::test_class("c", Duration::from_secs(60))
    }

    fn mount(id: u64, dev: (u32, u32), root: &str, at: &str) -> MountInfo {
        MountInfo {
            mount_id: id,
            parent_id: 1,
            major: dev.0,
            minor: dev.1,
            root: root.into(),
            mount_point: at.into(),
            mount_options: "rw".into(),
            optional: vec![],
            fs_type: "ext4".into(),
            source: "/dev/vdb".into(),
            super_options: String::new(),
        }
    }

    fn facts(kind: EntryKind) -> WipeFacts {
        WipeFacts {
            entry_path: "/mnt/disks/e1".into(),
            class: Some(class()),
            entry: Ok(Entry {
                class: "c".into(),
                path: "/mnt/disks/e1".into(),
                kind,
                stable_id: "fs-u:/vol1".into(),
                capacity_bytes: 1,
            }),
            expected_id: None,
            mounts: vec![
                mount(1, (253, 0), "/", "/"),
                mount(2, (8, 16), "/", "/data"),
                mount(3, (8, 16), "/vol1", "/mnt/disks/e1"),
            ],
            live_volumes: Ok(None),
            holders: vec![],
            partitions: vec![],
            exclusive_open: Ok(()),
        }
    }

    fn fs_entry() -> EntryKind {
        EntryKind::MountPoint {
            dev: DevNum {
                major: 8,
                minor: 16,
            },
            root: "/vol1".into(),
            fs_type: "ext4".into(),
        }
    }

    fn blk_entry() -> EntryKind {
        EntryKind::BlockDevice {
            device: "/dev/sdc".into(),
            dev: DevNum {
                major: 8,
                minor: 32,
            },
        }
    }

    fn refused(f: &WipeFacts) -> String {
        check_wipe(f).unwrap_err().to_string()
    }

    #[test]
    fn a_quiet_entry_may_be_wiped() {
        check_wipe(&facts(fs_entry())).unwrap();
        check_wipe(&facts(blk_entry())).unwrap();
    }

    #[test]
    fn never_outside_a_discovery_directory() {
        for p in [
            "/mnt/disks",
            "/mnt/disks/a/b",
            "/etc",
            "/mnt/disks/../etc",
            "/mnt/disks/.x",
        ] {
            let mut f = facts(fs_entry());
            f.entry_path = p.into();
            assert!(
                matches!(check_wipe(&f), Err(Refusal::OutsideDiscovery(_))),
                "{p}"
            );
        }
        let mut f = facts(fs_entry());
        f.class = None;
        assert!(matches!(check_wipe(&f), Err(Refusal::OutsideDiscovery(_))));
        let mut f = facts(fs_entry());
        f.entry = Err("a directory that is not a mount point".into());
        assert!(refused(&f).contains("not a mount point"));
    }

    #[test]
    fn never_a_mounted_or_used_entry() {
        // A stage bind and a pod bind of the entry.
        let mut f = facts(fs_entry());
        f.mounts.push(mount(
            4,
            (8, 16),
            "/vol1",
            "/var/lib/kubelet/pods/u/volumes/moor~local/v",
        ));
        assert!(
            refused(&f).contains("also mounted at /var/lib/kubelet/pods/u"),
            "{}",
            refused(&f)
        );
        // A subdirectory of the entry mounted somewhere.
        let mut f = facts(fs_entry());
        f.mounts.push(mount(4, (8, 16), "/vol1/sub", "/elsewhere"));
        assert!(refused(&f).contains("/elsewhere"));
        // The daemon has a live volume on it.
        let mut f = facts(fs_entry());
        f.live_volumes = Ok(Some(vec![VolumeStatus {
            driver: "local".into(),
            key: "local-mnt_disks_e1-abc".into(),
            state: "staged".into(),
            device: None,
            source: "/mnt/disks/e1".into(),
            fs_type: None,
            stage_path: "/s".into(),
            pods: vec![],
        }]));
        assert!(refused(&f).contains("live volume local-mnt_disks_e1-abc"));
        // An idle record (after a reboot) is no live use.
        if let Ok(Some(v)) = &mut f.live_volumes {
            v[0].state = "idle".into();
        }
        check_wipe(&f).unwrap();
        // A daemon that cannot answer means "unknown", which means no.
        f.live_volumes = Err("timeout".into());
        assert!(refused(&f).contains("could not say"));
        // Another disk at the entry.
        let mut f = facts(fs_entry());
        f.expected_id = Some("fs-other".into());
        assert!(matches!(check_wipe(&f), Err(Refusal::OtherDisk { .. })));
    }

    #[test]
    fn never_a_busy_block_device() {
        let mut f = facts(blk_entry());
        f.mounts.push(mount(5, (8, 33), "/", "/somewhere"));
        f.partitions = vec![DevNum {
            major: 8,
            minor: 33,
        }];
        assert!(refused(&f).contains("mounted at /somewhere"));
        let mut f = facts(blk_entry());
        let mut node_bind = mount(
            6,
            (0, 5),
            "/sdc",
            "/var/lib/kubelet/plugins/kubernetes.io~local-volume/volumeDevices/pv/dev/uid",
        );
        node_bind.fs_type = "devtmpfs".into();
        f.mounts.push(node_bind);
        assert!(refused(&f).contains("volumeDevices"), "{}", refused(&f));
        let mut f = facts(blk_entry());
        f.holders = vec!["dm-3".into()];
        assert!(refused(&f).contains("held by dm-3"));
        let mut f = facts(blk_entry());
        f.exclusive_open = Err("Device or resource busy".into());
        assert!(refused(&f).contains("exclusively"));
        let mut f = facts(blk_entry());
        f.live_volumes = Ok(Some(vec![VolumeStatus {
            driver: "local".into(),
            key: "k".into(),
            state: "staged".into(),
            device: Some("/mnt/disks/e1".into()),
            source: "/mnt/disks/e1".into(),
            fs_type: Some("ext4".into()),
            stage_path: "/s".into(),
            pods: vec![],
        }]));
        assert!(refused(&f).contains("live volume k"));
    }

    #[test]
    fn block_commands_per_method() {
        let d = Path::new("/mnt/disks/e1");
        let show = |m| {
            block_commands(d, 64 << 20, m, Duration::from_secs(9))
                .iter()
                .map(Cmd::display)
                .collect::<Vec<_>>()
        };
        let z = show(WipeMethod::ZeroEnds);
        assert_eq!(z.len(), 3, "{z:?}");
        assert_eq!(z[0], "wipefs -a /mnt/disks/e1");
        assert!(
            z[1].starts_with("dd if=/dev/zero") && z[1].ends_with("seek=0"),
            "{z:?}"
        );
        assert!(z[2].ends_with(&format!("seek={}", 63u64 << 20)), "{z:?}");
        let dz = show(WipeMethod::Discard);
        assert_eq!(dz[1], "blkdiscard /mnt/disks/e1");
        assert_eq!(&dz[2..], &z[1..]);
        assert_eq!(
            show(WipeMethod::Zero),
            ["wipefs -a /mnt/disks/e1", "blkdiscard -z /mnt/disks/e1"]
        );
        for m in [WipeMethod::ZeroEnds, WipeMethod::Discard, WipeMethod::Zero] {
            assert!(
                show(m)
                    .iter()
                    .all(|c| !c.contains(" -f") && !c.contains("--force"))
            );
        }
    }

    /// A record as the previous release wrote it (its own name: the first 12 bytes of the
    /// stable id's SHA-256, pretty JSON, no `nested_mounts_left`) still loads and still
    /// holds its entry back, and a new write replaces that same file.
    #[test]
    fn a_record_written_before_the_shared_store_still_loads() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(wipe_dir(t.path())).unwrap();
        let old = wipe_dir(t.path()).join("73d855316e54f8258dc8da15.json");
        std::fs::write(
            &old,
            r#"{
  "entry": "/mnt/disks/sdb",
  "class": "c",
  "stable_id": "wwn-0x5000c500a1b2c3d4",
  "pv": "moor-n-c-2",
  "method": "zero-ends",
  "phase": "started",
  "started": 7,
  "finished": null,
  "error": null
}"#,
        )
        .unwrap();
        let (recs, problems) = load_records(t.path());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].stable_id, "wwn-0x5000c500a1b2c3d4");
        assert_eq!(
            unfinished_ids(t.path()),
            vec!["wwn-0x5000c500a1b2c3d4".to_owned()]
        );
        let mut r = recs[0].clone();
        r.phase = WipePhase::Done;
        put_record(t.path(), &r).unwrap();
        assert_eq!(record_path(t.path(), &r.stable_id), old);
        assert_eq!(std::fs::read_dir(wipe_dir(t.path())).unwrap().count(), 1);
        assert!(unfinished_ids(t.path()).is_empty());
    }

    #[test]
    fn records_round_trip_and_unfinished_ones_are_listed() {
        let t = tempfile::tempdir().unwrap();
        let mut r = WipeRecord {
            entry: "/mnt/disks/e1".into(),
            class: "c".into(),
            stable_id: "fs-u:/vol1".into(),
            pv: Some("moor-n-c-1".into()),
            method: "contents".into(),
            phase: WipePhase::Started,
            started: 1,
            finished: None,
            error: None,
            nested_mounts_left: vec![],
        };
        put_record(t.path(), &r).unwrap();
        assert_eq!(unfinished_ids(t.path()), vec!["fs-u:/vol1".to_owned()]);
        r.phase = WipePhase::Done;
        put_record(t.path(), &r).unwrap();
        assert!(unfinished_ids(t.path()).is_empty());
        assert_eq!(load_records(t.path()).0, vec![r.clone()]);
        std::fs::write(wipe_dir(t.path()).join("bad.json"), "{").unwrap();
        assert_eq!(load_records(t.path()).1.len(), 1);
        assert!(wipe_dir(t.path()).join("bad.json.corrupt").exists());
        remove_record(t.path(), &r.stable_id).unwrap();
        remove_record(t.path(), &r.stable_id).unwrap();
        assert!(load_records(t.path()).0.is_empty());
    }

    /// A wipe record that cannot be read (garbage, a FIFO, a directory, another id's record
    /// under its name) is set aside, never deleted, never blocks the reader, and holds its
    /// entry back as an unfinished wipe would: a half-wiped entry is never offered again.
    #[test]
    fn an_unusable_wipe_record_is_set_aside_and_holds_its_entry() {
        let t = tempfile::tempdir().unwrap();
        let mut good = WipeRecord {
            entry: "/mnt/disks/ok".into(),
            class: "c".into(),
            stable_id: "fs-ok".into(),
            pv: None,
            method: "contents".into(),
            phase: WipePhase::Done,
            started: 1,
            finished: Some(2),
            error: None,
            nested_mounts_left: vec![],
        };
        put_record(t.path(), &good).unwrap();
        let ids = ["fs-garbage", "fs-fifo", "fs-dir", "fs-other", "fs-nonutf8"];
        let path = |id: &str| record_path(t.path(), id);
        std::fs::write(path(ids[0]), "{ half").unwrap();
        nix::unistd::mkfifo(&path(ids[1]), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::fs::create_dir(path(ids[2])).unwrap();
        good.stable_id = "fs-elsewhere".into();
        std::fs::write(path(ids[3]), serde_json::to_vec(&good).unwrap()).unwrap();
        std::fs::write(path(ids[4]), b"{\"entry\": \"\xff\"}").unwrap();
        let (recs, problems) = load_records(t.path());
        assert_eq!(recs.len(), 1, "{problems:?}");
        assert_eq!(problems.len(), ids.len(), "{problems:?}");
        for id in ids {
            let mut aside = path(id).into_os_string();
            aside.push(".corrupt");
            assert!(std::fs::symlink_metadata(&aside).is_ok(), "{id} not kept");
            assert!(held_by_unusable_record(t.path(), id), "{id} not held");
        }
        assert!(!held_by_unusable_record(t.path(), "fs-ok"));
    }
}
