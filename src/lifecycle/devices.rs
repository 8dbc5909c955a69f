//! One disk is staged once, whatever its names: the device a stage holds is recorded (its
//! number and stable id) under one lock before anything touches it, and a local source is
//! matched against the records by the object it resolved to, never by its text.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::*;
use crate::error::Error;
use crate::fs::{self};
use crate::host::allow::{Resolved, SourceObject};
use crate::journal::{StagePhase, StageRecord, StageSource};
use crate::volume::{VolumeSpec, VolumeState};

impl Lifecycle {
    /// Reconciles a resolved local source with the records: a record of the same object
    /// under another key (written by a version that keyed local volumes by the path text)
    /// keeps serving it, so its stage is shared and what moor remembers of it still counts;
    /// a name moor staged one disk under that now names another disk is refused.
    pub(super) fn known_local_source(
        &self,
        driver: &str,
        spec: &mut VolumeSpec,
        held: &Resolved,
    ) -> Result<(), Error> {
        let ours = match held.object {
            SourceObject::Block(dev) => Some(crate::host::devid::device_stable_id(&self.ids, dev)),
            SourceObject::Directory { .. } => None,
        };
        let text = spec
            .state
            .as_ref()
            .and_then(VolumeState::named_path)
            .unwrap_or_default()
            .to_owned();
        let st = self.state();
        for r in st
            .stages
            .values()
            .filter(|r| r.driver == driver && r.key != spec.key)
        {
            if self.same_object(r, held.object, ours.as_deref()) {
                tracing::info!(volume = %r.key, new_key = %spec.key, "serving a local source under the key it was recorded with");
                spec.key = r.key.clone();
                return Ok(());
            }
            let named_here = r.volume.as_ref().and_then(VolumeState::named_path)
                == Some(text.as_str())
                || r.source
                    .block_device()
                    .is_some_and(|d| d.as_os_str() == text.as_str());
            if let (Some(now), true, Some(_)) = (&ours, named_here, &r.fs_type) {
                let before = r
                    .device
                    .as_ref()
                    .map_or("(recorded by an earlier moor)", |c| c.stable_id.as_str());
                let known = r
                    .known_filesystem()
                    .map(|f| format!(", filesystem {f}"))
                    .unwrap_or_default();
                return Err(crate::volume::DriverError::NameMoved {
                    path: text.clone(),
                    detail: format!(
                        "now disk {now}, before disk {before} (volume {}{known}); run `moor forget {}` if the disk was replaced on purpose",
                        r.key, r.key
                    ),
                }
                .into());
            }
        }
        Ok(())
    }

    /// True when a record's source is the object `held` resolved to: the same directory
    /// (dev, ino), or the same block device — by the stable id recorded when both sides have
    /// one (a device number may name another disk after a reboot), else by the number
    /// recorded, else by the number its recorded path names now (a record of an earlier
    /// version).
    pub(super) fn same_object(
        &self,
        r: &StageRecord,
        held: SourceObject,
        ours: Option<&str>,
    ) -> bool {
        match (&r.source, held) {
            (StageSource::Directory { path }, SourceObject::Directory { dev, ino }) => {
                std::fs::metadata(path).is_ok_and(|m| m.dev() == dev && m.ino() == ino)
            }
            (StageSource::Block { device }, SourceObject::Block(d)) => {
                let claim = r.device.as_ref();
                match (claim.map(|c| &c.stable_id), ours, claim.map(|c| &c.number)) {
                    (Some(id), Some(o), _) => id == o,
                    (_, _, Some(n)) => *n == d.to_string(),
                    _ => self.host.blockdev.dev_num(device).ok().flatten() == Some(d),
                }
            }
            _ => false,
        }
    }

    /// Records in `rec` (journal first) that this stage holds `device`, unless another
    /// volume's stage record (staging or staged) already holds it: then `device_in_use`,
    /// naming that volume. Check and record happen under one lock, and the record is the
    /// claim from then on, until the unstage or the rollback moves it out of those phases.
    pub(super) fn claim_device(
        &self,
        key: &str,
        device: &Path,
        rec: &mut StageRecord,
    ) -> Result<(), Error> {
        let in_use = |detail: String| {
            Error::Fs(fs::FsError::InUse {
                volume: key.into(),
                device: device.into(),
                detail,
            })
        };
        let dev = self
            .host
            .blockdev
            .dev_num(device)
            .map_err(|e| in_use(format!("cannot read its device number: {e}")))?
            .ok_or_else(|| in_use("not a block device".into()))?;
        let stable = crate::host::devid::device_stable_id(&self.ids, dev);
        let _claims = self.device_claims.lock().unwrap_or_else(|p| p.into_inner());
        let holder = device_holder(self.state().stages.values(), key, dev, &stable, |d| {
            self.host.blockdev.dev_num(d).ok().flatten()
        });
        if let Some(other) = holder {
            return Err(in_use(format!(
                "device {dev} ({stable}) is staged by volume {other}"
            )));
        }
        rec.device = Some(crate::journal::DeviceClaim {
            number: dev.to_string(),
            stable_id: stable,
        });
        self.journal.put_stage(rec)?;
        self.state().stages.insert(key.into(), rec.clone());
        Ok(())
    }
}

/// The volume (other than `key`) whose stage record — staging or staged — holds the device
/// `dev` (stable id `stable`): by the number or the stable id it recorded, or, for a record
/// of an earlier version that recorded neither, by the number its device path has now
/// (`dev_of`).
pub(crate) fn device_holder<'a>(
    stages: impl IntoIterator<Item = &'a StageRecord>,
    key: &str,
    dev: crate::host::DevNum,
    stable: &str,
    dev_of: impl Fn(&Path) -> Option<crate::host::DevNum>,
) -> Option<String> {
    stages
        .into_iter()
        .filter(|s| s.key != key && matches!(s.phase, StagePhase::Staging | StagePhase::Staged))
        .find(|s| match &s.device {
            Some(c) => c.number == dev.to_string() || c.stable_id == stable,
            None => s
                .source
                .block_device()
                .is_some_and(|d| dev_of(d) == Some(dev)),
        })
        .map(|s| s.key.clone())
}
