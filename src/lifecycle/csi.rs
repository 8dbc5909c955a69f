//! The CSI calls on the one lifecycle: NodeStageVolume and NodeUnstageVolume are explicit
//! (moor stages at its own stage directory, as for FlexVolume, and only records kubelet's
//! `staging_target_path`), NodePublishVolume binds the stage onto kubelet's `target_path`,
//! NodeUnpublishVolume removes that bind and the target moor created, and never unstages.
//!
//! Invariants:
//! - one stage per volume key whatever the front end, and one key per `volume_id`: a second
//!   `volume_id` for a staged key, or a key staged by the other front end, is `key_in_use`;
//!   the same `volume_id` asked with other attributes, mode or access is `conflict`
//!   (the stage record's [`CsiStage`] is the identity compared);
//! - a CSI stage ends only by [`Lifecycle::csi_unstage`], refused (`still_published`) while
//!   a publish of it remains;
//! - access modes hold per node: `*_READER_ONLY` stages and publishes read-only, and
//!   `SINGLE_NODE_SINGLE_WRITER` has one publish target at a time;
//! - every unmount goes through the same ownership decision as FlexVolume's.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::*;
use crate::api::{AccessMode, VolumeMode};
use crate::error::CsiError;
use crate::host::{CsiStaging, CsiTarget, DevNum};
use crate::journal::{CsiStage, StagePhase, StageRecord, StageSource};
use owned::Place;

use crate::api::csi_driver_name;

/// The api's name of an access mode, as the stage record keeps it.
fn access_label(a: AccessMode) -> &'static str {
    match a {
        AccessMode::SingleNodeWriter => "single_node_writer",
        AccessMode::SingleNodeReaderOnly => "single_node_reader_only",
        AccessMode::MultiNodeReaderOnly => "multi_node_reader_only",
        AccessMode::MultiNodeSingleWriter => "multi_node_single_writer",
        AccessMode::MultiNodeMultiWriter => "multi_node_multi_writer",
        AccessMode::SingleNodeSingleWriter => "single_node_single_writer",
        AccessMode::SingleNodeMultiWriter => "single_node_multi_writer",
    }
}

fn reader_only(a: AccessMode) -> bool {
    matches!(
        a,
        AccessMode::SingleNodeReaderOnly | AccessMode::MultiNodeReaderOnly
    )
}

/// SHA-256 over what names the volume and how it is mounted (the driver's attributes,
/// fsType, mount options), never the secrets (they are not in `user`), nor what changes per
/// call (read-only, the pod).
fn options_digest(opts: &VolumeOptions) -> String {
    let mut h = Sha256::new();
    for (k, v) in &opts.user {
        h.update((k.len() as u64).to_le_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_le_bytes());
        h.update(v.as_bytes());
    }
    h.update([0xff]);
    h.update(opts.fs_type.as_bytes());
    h.update([0xff]);
    h.update(opts.mount_options.joined().as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// What a CSI call asks of a volume: its id and, for stage and publish, its capability.
#[derive(Debug, Clone)]
pub struct CsiVolume<'a> {
    /// moor's driver name.
    pub driver: &'a str,
    /// The CSI `volume_id`.
    pub volume_id: &'a str,
    /// kubelet's `staging_target_path`.
    pub staging_path: &'a str,
    /// Filesystem or raw block.
    pub mode: VolumeMode,
    /// The capability's access mode.
    pub access: AccessMode,
    /// The parsed volume context and secrets.
    pub options: &'a VolumeOptions,
}

impl Lifecycle {
    /// `raw` validated as a `staging_target_path` of moor driver `driver`.
    pub(super) fn csi_staging(&self, driver: &str, raw: &str) -> Result<CsiStaging, Error> {
        let driver = self.driver(driver)?;
        Ok(self
            .host
            .paths
            .csi_staging_path(raw, &csi_driver_name(driver.name()))?)
    }

    /// `raw` validated as a `target_path` of moor driver `driver`.
    pub(super) fn csi_target(&self, driver: &str, raw: &str) -> Result<CsiTarget, Error> {
        let driver = self.driver(driver)?;
        Ok(self
            .host
            .paths
            .csi_target(raw, &csi_driver_name(driver.name()))?)
    }

    /// The device of a raw block CSI stage and its number, checked now against the number
    /// claimed at stage (`device_changed` when the device is gone or the path names another
    /// one); `None` for any other stage.
    pub(super) fn raw_device(
        &self,
        stage: &StageRecord,
    ) -> Result<Option<(PathBuf, DevNum)>, Error> {
        let Some(csi) = stage.csi.as_ref().filter(|c| c.block) else {
            return Ok(None);
        };
        let device = match &stage.source {
            StageSource::Block { device }
            | StageSource::Attached {
                device: Some(device),
            } => device.clone(),
            other => {
                return Err(Error::Internal(format!(
                    "volume {}: a raw block stage of {other:?}",
                    stage.key
                )));
            }
        };
        let changed = |detail: String| CsiError::DeviceChanged {
            volume_id: csi.volume_id.clone(),
            device: device.clone(),
            detail,
        };
        let claimed = stage.device.as_ref().map(|c| c.number.as_str());
        match self.host.blockdev.dev_num(&device) {
            Ok(Some(n)) if claimed == Some(n.to_string().as_str()) => Ok(Some((device, n))),
            Ok(Some(n)) => Err(changed(format!(
                "is device {n} now, not {} as staged",
                claimed.unwrap_or("(unrecorded)")
            ))
            .into()),
            Ok(None) => Err(changed("is gone (no block device there)".into()).into()),
            Err(e) => Err(changed(format!("cannot be read ({e})")).into()),
        }
    }

    /// The key of the CSI stage (any phase but idle) of `volume_id`, if there is one.
    pub fn csi_key(&self, volume_id: &str) -> Option<String> {
        self.state()
            .stages
            .values()
            .find(|s| {
                s.phase != StagePhase::Idle
                    && s.csi.as_ref().is_some_and(|c| c.volume_id == volume_id)
            })
            .map(|s| s.key.clone())
    }

    /// CSI stages of `driver` on this node now (for its volume limit).
    fn csi_stage_count(&self, driver: &str, except: &str) -> usize {
        self.state()
            .stages
            .values()
            .filter(|s| {
                s.phase != StagePhase::Idle
                    && s.csi.is_some()
                    && s.driver == driver
                    && s.key != except
            })
            .count()
    }

    /// Validates a NodeStageVolume and resolves its volume key; no side effects.
    pub fn plan_csi_stage(&self, v: &CsiVolume<'_>) -> Result<StagePlan, Error> {
        let staging = self.csi_staging(v.driver, v.staging_path)?;
        let driver = self.driver(v.driver)?;
        let mut opts = v.options.clone();
        // A reader-only volume is staged read-only: no fsck, no mkfs, no journal replay.
        opts.read_only |= reader_only(v.access);
        let digest = options_digest(&opts);
        let mut plan = self.plan_stage(driver, &opts)?;
        if v.mode == VolumeMode::Block
            && matches!(
                plan.spec.source,
                StageSource::Directory { .. } | StageSource::Remote(_)
            )
        {
            return Err(CsiError::UnsupportedCapability {
                volume_id: v.volume_id.into(),
                detail: format!(
                    "volume {} is a directory or a share: filesystem mode only",
                    plan.spec.key
                ),
            }
            .into());
        }
        plan.csi = Some(CsiStage {
            volume_id: v.volume_id.into(),
            staging_path: staging.path,
            block: v.mode == VolumeMode::Block,
            access: access_label(v.access).into(),
            digest,
            set_read_only: false,
        });
        Ok(plan)
    }

    /// NodeStageVolume of a planned stage, under its key's lock: the stage FlexVolume's
    /// mount makes, recorded as CSI's. Idempotent; refused beyond `limit` CSI stages of the
    /// driver on this node.
    pub fn csi_stage(&self, plan: &StagePlan, limit: Option<usize>) -> Result<String, Error> {
        let Some(csi) = &plan.csi else {
            return Err(Error::Internal(
                "a CSI stage without its CSI identity".into(),
            ));
        };
        let key = plan.key();
        if let Some(other) = self.csi_key(&csi.volume_id)
            && other != key
        {
            return Err(CsiError::Conflict {
                volume_id: csi.volume_id.clone(),
                key: other,
                detail: "other volume attributes (they name another volume now)".into(),
            }
            .into());
        }
        let was_staged = self.state().stages.get(key).is_some_and(|s| {
            s.phase == StagePhase::Staged
                && s.csi.as_ref().is_some_and(|had| {
                    had.volume_id == csi.volume_id
                        && super::stage::csi_difference(had, csi).is_none()
                })
        });
        if !was_staged
            && let Some(limit) = limit
            && self.csi_stage_count(plan.driver.name(), key) >= limit
        {
            return Err(CsiError::TooManyVolumes {
                driver: plan.driver.name().into(),
                limit,
            }
            .into());
        }
        let rec = self.stage(plan)?;
        tracing::Span::current().record("volume", rec.key.as_str());
        Ok(if was_staged {
            "already staged"
        } else {
            "staged"
        }
        .into())
    }

    /// NodeUnstageVolume: unmount moor's stage and detach; OK when `volume_id` is not
    /// staged; refused while it is published.
    pub fn csi_unstage(
        &self,
        driver: &str,
        volume_id: &str,
        staging_path: &str,
    ) -> Result<String, Error> {
        let staging = self.csi_staging(driver, staging_path)?;
        let Some(key) = self.csi_key(volume_id) else {
            return Ok("not staged".into());
        };
        let rec = self.csi_stage_of(&key)?;
        check_staging_path(volume_id, &rec, &staging.path)?;
        let targets: Vec<String> = self
            .state()
            .users
            .get(&key)
            .map(|t| t.iter().map(|p| p.display().to_string()).collect())
            .unwrap_or_default();
        if !targets.is_empty() {
            return Err(CsiError::StillPublished {
                volume_id: volume_id.into(),
                targets: targets.join(", "),
            }
            .into());
        }
        self.unstage(&key)?;
        Ok("unstaged".into())
    }

    pub(super) fn csi_stage_of(&self, key: &str) -> Result<StageRecord, Error> {
        self.state()
            .stages
            .get(key)
            .cloned()
            .ok_or_else(|| Error::Internal(format!("volume {key}: stage record vanished")))
    }

    /// NodePublishVolume: bind the stage of `v.volume_id` onto `target` (made by moor),
    /// read-only per the call. Idempotent.
    pub fn csi_publish(&self, v: &CsiVolume<'_>, target: &str) -> Result<String, Error> {
        let staging = self.csi_staging(v.driver, v.staging_path)?;
        let CsiTarget { dir, block } = self.csi_target(v.driver, target)?;
        let not_staged = |detail: String| CsiError::NotStaged {
            volume_id: v.volume_id.into(),
            detail,
        };
        let key = self
            .csi_key(v.volume_id)
            .ok_or_else(|| not_staged(String::new()))?;
        let rec = self.csi_stage_of(&key)?;
        let Some(had) = rec.csi.clone().filter(|_| rec.phase == StagePhase::Staged) else {
            return Err(not_staged(format!(" (its stage is {:?})", rec.phase)).into());
        };
        check_staging_path(v.volume_id, &rec, &staging.path)?;
        let conflict = |detail: String| CsiError::Conflict {
            volume_id: v.volume_id.into(),
            key: key.clone(),
            detail,
        };
        let asked_block = v.mode == VolumeMode::Block;
        if block != asked_block {
            return Err(CsiError::UnsupportedCapability {
                volume_id: v.volume_id.into(),
                detail: format!(
                    "target {} is kubelet's {} path, but the call asks for a {} volume",
                    dir.path.display(),
                    if block { "raw block" } else { "filesystem" },
                    if asked_block {
                        "raw block"
                    } else {
                        "filesystem"
                    },
                ),
            }
            .into());
        }
        let mut opts = v.options.clone();
        let asked = CsiStage {
            volume_id: v.volume_id.into(),
            staging_path: staging.path.clone(),
            block: asked_block,
            access: access_label(v.access).into(),
            digest: String::new(),
            set_read_only: false,
        };
        if let Some(d) = super::stage::csi_difference(
            &had,
            &CsiStage {
                digest: had.digest.clone(),
                ..asked
            },
        ) {
            return Err(conflict(d).into());
        }
        // The stage's digest was taken of the options as staged (read-only folded in).
        opts.read_only |= reader_only(v.access);
        if options_digest(&opts) != had.digest {
            return Err(conflict("other volume attributes, fsType or mount options".into()).into());
        }
        if reader_only(v.access) && !v.options.read_only {
            return Err(CsiError::ReadOnly {
                volume_id: v.volume_id.into(),
                access: had.access,
            }
            .into());
        }
        if let Some(p) = self.state().publishes.get(&dir.path)
            && p.key == key
            && p.read_only != opts.read_only
        {
            return Err(conflict(format!(
                "a publish at {} with read-only={}",
                dir.path.display(),
                p.read_only
            ))
            .into());
        }
        if v.access == AccessMode::SingleNodeSingleWriter
            && let Some(other) = self
                .state()
                .users
                .get(&key)
                .and_then(|t| t.iter().find(|t| **t != dir.path).cloned())
        {
            return Err(CsiError::SingleWriter {
                volume_id: v.volume_id.into(),
                other,
            }
            .into());
        }
        let stage_path = self.stage_path(&rec.driver, &key);
        if !had.block && !self.is_mount_point(&stage_path)? {
            return Err(not_staged(format!(
                " (its stage {} is not mounted)",
                stage_path.display()
            ))
            .into());
        }
        let previous = match self.existing_publish(&dir.path, &key)? {
            Existing::Done => return Ok("already published".into()),
            Existing::Proceed(p) => p,
        };
        // A raw block volume's device is checked before its record is written; a read-only
        // bind of a device node does not stop writes through it, so a read-only publish
        // needs the device itself read-only (as a reader-only stage makes it).
        if let Some((device, dev)) = self.raw_device(&rec)?
            && opts.read_only
            && !self.host.blockdev.is_read_only(dev).unwrap_or(false)
        {
            return Err(CsiError::UnsupportedCapability {
                volume_id: v.volume_id.into(),
                detail: format!(
                    "a read-only publish of raw block device {} staged read-write cannot be \
                     enforced (writes through a read-only bind of a device node still reach \
                     it); stage it with a *_READER_ONLY access mode",
                    device.display()
                ),
            }
            .into());
        }
        self.publish(&dir, &opts, &rec, previous.and_then(|p| p.mount_id), true)?;
        Ok("published".into())
    }

    /// The key `target` publishes, if moor has a record of it.
    pub fn csi_key_of_target(&self, driver: &str, target: &str) -> Option<String> {
        let dir = self.csi_target(driver, target).ok()?;
        self.key_of(&dir.dir.path)
    }

    /// NodeUnpublishVolume: remove moor's bind at `target` and the target directory
    /// (`rmdir` only). OK when moor has no publish there; a mount moor did not make there is
    /// `not_owned` and stays. The stage stays, whatever is left publishing it.
    pub fn csi_unpublish(
        &self,
        driver: &str,
        volume_id: &str,
        target: &str,
    ) -> Result<String, Error> {
        let CsiTarget { dir, block } = self.csi_target(driver, target)?;
        let held = self.open_target(&dir.path, false)?;
        let rec = self.state().publishes.get(&dir.path).cloned();
        let Some(rec) = rec else {
            if let Some(t) = &held {
                // Refuses (not_owned) anything mounted there: moor has no record of it.
                self.unmount_guarded(t, Place::PodDir, "", false, None, None, false)?;
                remove_target(t, block);
            }
            return Ok("not published".into());
        };
        let owner = self
            .state()
            .stages
            .get(&rec.key)
            .and_then(|s| s.csi.as_ref().map(|c| c.volume_id.clone()));
        if !rec.csi || owner.as_deref() != Some(volume_id) {
            return Err(CsiError::UnknownVolume {
                volume_id: volume_id.into(),
                detail: format!(
                    "{} publishes another volume ({})",
                    dir.path.display(),
                    owner.map_or_else(|| "FlexVolume's".into(), |o| format!("volume_id {o}"))
                ),
            }
            .into());
        }
        let block = rec.block;
        self.unpublish(rec, held.as_ref())?;
        if let Some(t) = &held {
            remove_target(t, block);
        }
        Ok("unpublished".into())
    }
}

/// Removes what moor made at a CSI target that nothing is mounted on: the directory
/// (`rmdir`) or a raw block volume's device file (a regular file only).
fn remove_target(t: &Target, block: bool) {
    if block {
        super::publish::remove_device_file(t);
    } else {
        crate::host::dirs::remove_empty(t);
    }
}

fn check_staging_path(volume_id: &str, rec: &StageRecord, asked: &Path) -> Result<(), Error> {
    let recorded: Option<&PathBuf> = rec.csi.as_ref().map(|c| &c.staging_path);
    if recorded.is_some_and(|r| r != asked) {
        return Err(CsiError::NotStaged {
            volume_id: volume_id.into(),
            detail: format!(
                " at {} (it is staged at {})",
                asked.display(),
                recorded
                    .map(|r| r.display().to_string())
                    .unwrap_or_default()
            ),
        }
        .into());
    }
    Ok(())
}
