//! CSI's NodeGetVolumeStats and NodeExpandVolume on a staged volume: usage from moor's own
//! mount (a bounded `statvfs`, so a dead share cannot hang the call), a raw block volume's
//! device size, and the volume's condition — what is wrong with it as moor sees it now.
//!
//! Invariant: a `volume_path` is served only when it is the volume's recorded staging path
//! or one of its publish targets (`unknown_volume` otherwise); every question to a mount is
//! bounded (the stale-mount probe, `statvfs` with a deadline).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::api::{Condition, Response, Usage, VolumeMode};
use crate::error::CsiError;
use crate::host::probe::{Probe, UsageError, fs_usage};
use crate::journal::{StagePhase, StageRecord};

/// Deadline of the probe and the `statvfs` a stats call makes.
const STAT_TIMEOUT: Duration = Duration::from_secs(3);

/// A CSI volume resolved from its `volume_id` and a `volume_path` of it.
struct Served {
    rec: StageRecord,
    block: bool,
    /// moor's stage directory.
    stage_path: PathBuf,
    /// The publish target asked about, when `volume_path` is one.
    target: Option<PathBuf>,
}

impl Lifecycle {
    fn served(&self, driver: &str, volume_id: &str, path: &str) -> Result<Served, Error> {
        let unknown = |detail: String| CsiError::UnknownVolume {
            volume_id: volume_id.into(),
            detail,
        };
        let key = self
            .csi_key(volume_id)
            .ok_or_else(|| unknown("not staged on this node".into()))?;
        let rec = self.csi_stage_of(&key)?;
        let csi = rec.csi.clone().filter(|_| rec.phase == StagePhase::Staged);
        let Some(csi) = csi else {
            return Err(unknown(format!("its stage is {:?}", rec.phase)).into());
        };
        let target = match self.csi_target(driver, path) {
            Ok(t)
                if self
                    .state()
                    .publishes
                    .get(&t.dir.path)
                    .is_some_and(|p| p.key == key) =>
            {
                Some(t.dir.path)
            }
            _ => match self.csi_staging(driver, path) {
                Ok(s) if s.path == csi.staging_path => None,
                _ => {
                    return Err(unknown(format!(
                        "{path} is neither its staging path nor one of its publish targets"
                    ))
                    .into());
                }
            },
        };
        Ok(Served {
            stage_path: self.stage_path(&rec.driver, &key),
            block: csi.block,
            rec,
            target,
        })
    }

    /// NodeGetVolumeStats of `path` (the staging path or a target of `volume_id`).
    pub fn csi_stats(&self, driver: &str, volume_id: &str, path: &str) -> Result<Response, Error> {
        let v = self.served(driver, volume_id, path)?;
        let mut problems = Vec::new();
        if let Some(t) = &v.target
            && !self.is_mount_point(t).unwrap_or(false)
        {
            problems.push(format!("the publish at {} is not mounted", t.display()));
        }
        if v.block {
            let size = match self.raw_device(&v.rec) {
                Ok(Some((_, dev))) => self.host.blockdev.size_bytes(dev).ok(),
                Ok(None) => None,
                Err(e) => {
                    problems.push(e.to_string());
                    None
                }
            };
            return Ok(Response::VolumeStats {
                mode: VolumeMode::Block,
                bytes: None,
                inodes: None,
                size,
                condition: condition(problems),
            });
        }
        let (bytes, inodes) = match self.stage_health(&v, &mut problems) {
            Some(u) => (
                Some(Usage {
                    total: u.capacity_bytes,
                    available: u.available_bytes,
                    used: u.used_bytes,
                }),
                Some(Usage {
                    total: u.inodes,
                    available: u.inodes_free,
                    used: u.inodes.saturating_sub(u.inodes_free),
                }),
            ),
            None => (None, None),
        };
        Ok(Response::VolumeStats {
            mode: VolumeMode::Filesystem,
            bytes,
            inodes,
            size: None,
            condition: condition(problems),
        })
    }

    /// The stage mount's usage, after the stale-mount probe said it answers; what is wrong
    /// with it goes to `problems`.
    fn stage_health(
        &self,
        v: &Served,
        problems: &mut Vec<String>,
    ) -> Option<crate::host::probe::FsUsage> {
        let stage = v.stage_path.display();
        match self.host.mounts.probe(&v.stage_path, STAT_TIMEOUT) {
            Probe::Alive => {}
            Probe::Gone => {
                problems.push(format!("its stage {stage} is not mounted"));
                return None;
            }
            Probe::Hung => {
                problems.push(format!(
                    "its stage {stage} does not answer (hung for {STAT_TIMEOUT:?})"
                ));
                return None;
            }
            Probe::Dead(e) => {
                problems.push(format!(
                    "its stage {stage} is dead ({e}): the server or the client is gone"
                ));
                return None;
            }
        }
        if let Some(n) = self.fs_errors(&v.rec) {
            problems.push(format!(
                "the {} filesystem has recorded {n} error(s) (errors_count); check it with fsck",
                v.rec.fs_type.as_deref().unwrap_or("ext4")
            ));
        }
        match fs_usage(&v.stage_path, STAT_TIMEOUT) {
            Ok(u) => Some(u),
            Err(e @ UsageError::Hung(_)) | Err(e @ UsageError::Failed(_)) => {
                problems.push(format!("statvfs of {stage}: {}", crate::error::Chain(&e)));
                None
            }
        }
    }

    /// The errors an ext4 filesystem has counted (`/sys/fs/ext4/<dev>/errors_count`), when
    /// more than none.
    fn fs_errors(&self, rec: &StageRecord) -> Option<u64> {
        if !rec.fs_type.as_deref().is_some_and(crate::fs::mkfs::is_ext) {
            return None;
        }
        let device = match &rec.source {
            StageSource::Block { device }
            | StageSource::Attached {
                device: Some(device),
            } => device,
            _ => return None,
        };
        let dev = self.host.blockdev.dev_num(device).ok().flatten()?;
        let name = self.host.blockdev.kernel_name(dev)?;
        let text = std::fs::read_to_string(
            self.host
                .paths
                .sys
                .join("fs/ext4")
                .join(name)
                .join("errors_count"),
        )
        .ok()?;
        text.trim().parse().ok().filter(|n: &u64| *n > 0)
    }

    /// NodeExpandVolume of `path` of `volume_id`: a filesystem volume is grown as
    /// FlexVolume's `expandfs` grows it (the device's size refreshed, then the filesystem);
    /// a raw block volume has its size refreshed only. Answers the capacity now.
    pub fn csi_expand(
        &self,
        driver: &str,
        volume_id: &str,
        path: &str,
        required_bytes: u64,
    ) -> Result<(String, Response), Error> {
        let v = self.served(driver, volume_id, path)?;
        let key = v.rec.key.clone();
        let (what, capacity) = if v.block {
            let (device, _) = self.raw_device(&v.rec)?.ok_or_else(|| {
                Error::Internal(format!("volume {key}: a raw block stage without a device"))
            })?;
            let (before, size) = self.refresh_size(&key, &v.rec.driver, &device)?;
            if size < required_bytes {
                return Err(crate::error::ExpandError::DeviceTooSmall {
                    volume: key,
                    device,
                    size,
                    want: required_bytes,
                }
                .into());
            }
            (
                format!("raw block device is {size} bytes (was {before})"),
                size,
            )
        } else {
            let what = self.expand(&key, required_bytes)?;
            (what, self.capacity_of(&v.rec, &v.stage_path)?)
        };
        Ok((
            what,
            Response::Expanded {
                capacity_bytes: capacity,
            },
        ))
    }

    /// A staged filesystem volume's capacity: its device's size, or for a directory or a
    /// share what `statvfs` of the stage says.
    fn capacity_of(&self, rec: &StageRecord, stage_path: &Path) -> Result<u64, Error> {
        if let StageSource::Block { device }
        | StageSource::Attached {
            device: Some(device),
        } = &rec.source
            && let Ok(Some(dev)) = self.host.blockdev.dev_num(device)
            && let Ok(size) = self.host.blockdev.size_bytes(dev)
        {
            return Ok(size);
        }
        fs_usage(stage_path, STAT_TIMEOUT)
            .map(|u| u.capacity_bytes)
            .map_err(|e| {
                Error::Internal(format!(
                    "volume {}: statvfs of {}: {}",
                    rec.key,
                    stage_path.display(),
                    crate::error::Chain(&e)
                ))
            })
    }
}

fn condition(problems: Vec<String>) -> Condition {
    Condition {
        abnormal: !problems.is_empty(),
        message: problems.join("; "),
    }
}
