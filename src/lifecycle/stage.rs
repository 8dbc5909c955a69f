//! attach → stage and unstage → detach: the intent is journaled before the first side
//! effect, a failed stage is rolled back (never formatted after a mount failure), and a block
//! volume's device goes through the never-format rule in `fs`.

use std::path::Path;

use super::*;
use crate::error::{Error, RemoteMountError};
use crate::fs::{self, Prepared, format::FormatRequest};
use crate::host::mounts::split_options;
use crate::host::{FsMount, MsFlags, Target};
use crate::journal::{RemoteMount, StagePhase, StageRecord, StageSource};
use crate::share;
use crate::testhook::pause_point;
use owned::Place;

impl Lifecycle {
    /// Ensures the volume is staged; returns its record.
    pub(super) fn stage(&self, plan: &StagePlan) -> Result<StageRecord, Error> {
        let key = plan.spec.key.as_str();
        let stage_path = self.stage_path(plan.driver.name(), key);
        let previous = self.state().stages.get(key).cloned();
        if let Some(rec) = &previous {
            self.check_stage_identity(rec, plan)?;
            // A raw block stage asked again: the same stage while its device is the one
            // claimed (nothing is mounted for it to check).
            if rec.phase == StagePhase::Staged
                && rec.csi.as_ref().is_some_and(|c| c.block)
                && self.raw_device(rec).is_ok()
            {
                return Ok(rec.clone());
            }
        }
        if let Some(rec) = &previous
            && rec.phase == StagePhase::Staged
            && self.is_mount_point(&stage_path)?
        {
            let held = self.open_target(&stage_path, false)?;
            if !held
                .as_ref()
                .is_some_and(|t| self.owns(t, Place::Stage, rec.mount_id, None))
            {
                return Err(Error::TargetBusy {
                    target: stage_path,
                    detail: "the mount on the stage is not the one moor made; remove the other mount first".into(),
                });
            }
            // An attached device's path is the attach's to choose; the key names the volume.
            let attaching = matches!(plan.spec.source, StageSource::Attached { .. });
            let same = rec.source == plan.spec.source
                || plan.held.as_ref().is_some_and(|h| {
                    // Staged now: its recorded number is the device's number now.
                    self.same_object(rec, h.object, None)
                });
            if !attaching && !same {
                return Err(Error::TargetBusy {
                    target: stage_path,
                    detail: "volume key already staged from another source".into(),
                });
            }
            return self.upgrade_to_rw(rec, &stage_path, &plan.opts);
        }
        let is_block = matches!(
            plan.spec.source,
            StageSource::Block { .. } | StageSource::Attached { .. }
        );
        let mut rec = StageRecord {
            key: key.into(),
            driver: plan.driver.name().into(),
            source: plan.spec.source.clone(),
            volume: plan.spec.state.clone(),
            unconverted: Default::default(),
            device: None,
            fs_type: previous.as_ref().and_then(|r| r.fs_type.clone()),
            fs_uuid: previous.as_ref().and_then(|r| r.fs_uuid.clone()),
            read_only: is_block && plan.opts.read_only,
            phase: StagePhase::Staging,
            formatted_by_moor: previous.as_ref().is_some_and(|r| r.formatted_by_moor),
            mount_id: None,
            adopted: false,
            csi: plan.csi.clone(),
        };
        self.journal.put_stage(&rec)?;
        self.state().stages.insert(key.into(), rec.clone());
        pause_point("stage:intent");
        // The Staged write is part of the steps: when it fails, the mount is rolled back
        // like any other failure, never left behind a Staging record.
        let steps = self
            .stage_steps(plan, &stage_path, &mut rec)
            .and_then(|()| {
                pause_point("stage:mounted");
                let mut staged = rec.clone();
                staged.phase = StagePhase::Staged;
                self.journal.put_stage(&staged)?;
                Ok(staged)
            });
        match steps {
            Ok(staged) => {
                rec = staged;
                self.state().stages.insert(key.into(), rec.clone());
                tracing::info!(volume = key, driver = plan.driver.name(), target = %stage_path.display(), "staged");
                Ok(rec)
            }
            Err(e) => {
                self.rollback_stage(plan, &stage_path, &rec, previous);
                Err(e)
            }
        }
    }

    /// One stage per volume key, whichever front end asks: a key staged by CSI is refused
    /// to FlexVolume and to another `volume_id`, and a key staged by FlexVolume to CSI
    /// (`key_in_use`); the same `volume_id` asked with other attributes, mode or access is
    /// a `conflict`. An idle record (nothing mounted) stands in nobody's way.
    fn check_stage_identity(&self, rec: &StageRecord, plan: &StagePlan) -> Result<(), Error> {
        if rec.phase == StagePhase::Idle {
            return Ok(());
        }
        let key = rec.key.clone();
        let err: crate::error::CsiError = match (&rec.csi, &plan.csi) {
            (None, None) => return Ok(()),
            (Some(had), None) => crate::error::CsiError::KeyInUse {
                key,
                by: format!("by CSI (volume_id {})", had.volume_id),
            },
            (None, Some(_)) => crate::error::CsiError::KeyInUse {
                key,
                by: "by FlexVolume".into(),
            },
            (Some(had), Some(asked)) if had.volume_id != asked.volume_id => {
                crate::error::CsiError::KeyInUse {
                    key,
                    by: format!("by CSI (volume_id {})", had.volume_id),
                }
            }
            (Some(had), Some(asked)) => match csi_difference(had, asked) {
                None => return Ok(()),
                Some(detail) => crate::error::CsiError::Conflict {
                    volume_id: had.volume_id.clone(),
                    key,
                    detail,
                },
            },
        };
        Err(err.into())
    }

    pub(super) fn stage_steps(
        &self,
        plan: &StagePlan,
        stage_path: &Path,
        rec: &mut StageRecord,
    ) -> Result<(), Error> {
        let key = plan.spec.key.as_str();
        let attached = plan.driver.attach(&self.host, &plan.spec, &plan.opts)?;
        if attached.device.is_some() || attached.state.is_some() {
            if let Some(dev) = attached.device {
                rec.source = StageSource::Attached { device: Some(dev) };
            }
            if let Some(state) = attached.state {
                rec.volume = Some(state);
            }
            // Detach after a crash needs what attach learnt (device, WWID, session).
            self.journal.put_stage(rec)?;
            self.state().stages.insert(key.into(), rec.clone());
        }
        pause_point("stage:attached");
        if plan.csi.as_ref().is_some_and(|c| c.block) {
            return self.stage_raw(key, rec);
        }
        let held = self.open_target(stage_path, true)?.ok_or_else(|| {
            Error::Internal(format!("stage dir {} vanished", stage_path.display()))
        })?;
        // A leftover of an interrupted stage of this same key (its record has no mount id).
        let recorded = self.state().stages.contains_key(key);
        self.unmount_guarded(&held, Place::Stage, key, recorded, None, None, false)?;
        match rec.source.clone() {
            // The object resolved at plan time, through its fd: a path swapped since cannot
            // redirect the bind.
            StageSource::Directory { path } => {
                let flags = bind_flags(key, &plan.spec.mount_options.joined())?;
                let source = match &plan.held {
                    Some(h) => Target::held_dir(
                        &path,
                        h.dup_fd().map_err(|source| Error::Io {
                            what: "hold the source directory",
                            path: path.clone(),
                            source,
                        })?,
                    ),
                    None => Target::by_path(&path),
                };
                let m = self
                    .host
                    .mounter
                    .bind_target(&source, &held, flags)
                    .map_err(Self::mount_err(key))?;
                rec.mount_id = Some(m.into());
                Ok(())
            }
            StageSource::Block { device }
            | StageSource::Attached {
                device: Some(device),
            } => self.stage_block(plan, &device, &held, rec),
            StageSource::Attached { device: None } => Err(Error::NoDevice {
                volume: key.into(),
                driver: plan.driver.name(),
            }),
            StageSource::Remote(remote) => {
                self.mount_remote(key, &remote, stage_path)?;
                rec.mount_id = self.mount_id_at(&held);
                Ok(())
            }
        }
    }

    /// A raw block stage: the device claimed and checked unused, nothing probed, formatted
    /// or mounted (and no stage directory made).
    fn stage_raw(&self, key: &str, rec: &mut StageRecord) -> Result<(), Error> {
        let device = match &rec.source {
            StageSource::Block { device }
            | StageSource::Attached {
                device: Some(device),
            } => device.clone(),
            _ => {
                return Err(Error::NoDevice {
                    volume: key.into(),
                    driver: "raw block",
                });
            }
        };
        self.claim_device(key, &device, rec)?;
        fs::check_exclusive(&self.host, key, &device)?;
        let Some(dev) = self.host.blockdev.dev_num(&device).ok().flatten() else {
            return Err(Error::NoDevice {
                volume: key.into(),
                driver: "raw block",
            });
        };
        if rec.read_only && !self.host.blockdev.is_read_only(dev).unwrap_or(false) {
            // Recorded first: a crash right after still makes it writable again at unstage.
            if let Some(c) = rec.csi.as_mut() {
                c.set_read_only = true;
            }
            self.journal.put_stage(rec)?;
            self.state().stages.insert(key.into(), rec.clone());
            self.host
                .blockdev
                .set_read_only(&device, true)
                .map_err(|source| Error::Io {
                    what: "make read-only (BLKROSET)",
                    path: device.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Makes a raw block device moor made read-only at stage writable again.
    fn restore_writable(&self, rec: &StageRecord) -> Result<(), Error> {
        if !rec.csi.as_ref().is_some_and(|c| c.set_read_only) {
            return Ok(());
        }
        let (StageSource::Block { device }
        | StageSource::Attached {
            device: Some(device),
        }) = &rec.source
        else {
            return Ok(());
        };
        match self.host.blockdev.set_read_only(device, false) {
            Ok(()) => Ok(()),
            // Gone with its attachment: nothing left to make writable.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Io {
                what: "make writable again (BLKROSET)",
                path: device.clone(),
                source,
            }),
        }
    }

    pub(super) fn stage_block(
        &self,
        plan: &StagePlan,
        device: &Path,
        held: &Target,
        rec: &mut StageRecord,
    ) -> Result<(), Error> {
        let key = plan.spec.key.as_str();
        self.claim_device(key, device, rec)?;
        let stage_path = held.path();
        // One disk is staged once: not under a second path, not while mounted elsewhere.
        fs::check_exclusive(&self.host, key, device)?;
        let known = rec.known_filesystem();
        let prepared = fs::ensure_filesystem(
            &self.host,
            &FormatRequest {
                volume: key,
                device,
                fs_type: &plan.opts.fs_type,
                read_only: plan.opts.read_only,
                known: known.as_deref(),
            },
        )?;
        if let (Some(known), Some(found)) = (&rec.fs_uuid, prepared.uuid())
            && known != found
        {
            return Err(Error::DeviceChanged {
                volume: key.into(),
                device: device.into(),
                found: found.into(),
                known: known.clone(),
            });
        }
        // A filesystem mkfs wrote a moment ago has nothing to repair: fsck only what was there.
        if !plan.opts.read_only && matches!(prepared, Prepared::Existing { .. }) {
            fs::fsck(&self.host, key, device, prepared.fs_type())?;
        }
        let (mut flags, data) = split_options(&plan.spec.mount_options.joined());
        if plan.opts.read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        let m = FsMount {
            source: device.into(),
            target: stage_path.into(),
            fs_type: prepared.fs_type().into(),
            flags,
            data,
        };
        let made = self
            .host
            .mounter
            .mount_target(&m, held, self.timeouts.mount)
            .map_err(Self::mount_err(key))?;
        rec.mount_id = Some(made.into());
        rec.fs_type = Some(prepared.fs_type().into());
        rec.fs_uuid = prepared.uuid().map(str::to_owned);
        rec.formatted_by_moor |= matches!(prepared, Prepared::Formatted { .. });
        Ok(())
    }

    /// Mounts a network filesystem at the stage through its mount helper, bounded by the
    /// mount deadline; a helper that reports success without a mount is a failure too.
    pub(super) fn mount_remote(
        &self,
        key: &str,
        remote: &RemoteMount,
        stage_path: &Path,
    ) -> Result<(), Error> {
        let output_file = remote
            .fuse
            .then(|| self.host.paths.run_dir.join(format!("mount-{key}.log")));
        let cmd = share::mount_command(
            remote,
            stage_path,
            self.fuse_scope && remote.fuse,
            output_file.as_deref(),
        )
        .timeout(self.timeouts.mount);
        let result = self.host.runner.run_ok(&cmd);
        if let Some(f) = &output_file {
            let _ = std::fs::remove_file(f);
        }
        let failed = |source: RemoteMountError| Error::RemoteMount {
            volume: key.into(),
            server: remote.server.clone(),
            source: Box::new(source),
            log_tail: remote.log_file.as_deref().and_then(share::log_tail),
        };
        match result {
            Ok(_) if self.is_mount_point(stage_path)? => Ok(()),
            Ok(_) => Err(failed(RemoteMountError::NoMount {
                cmdline: cmd.display(),
                stage: stage_path.into(),
            })),
            Err(e) => Err(failed(e.into())),
        }
    }

    /// A rw publish of a volume staged ro: remount the stage rw (read-only binds stay ro).
    pub(super) fn upgrade_to_rw(
        &self,
        rec: &StageRecord,
        stage_path: &Path,
        opts: &VolumeOptions,
    ) -> Result<StageRecord, Error> {
        if !rec.read_only || opts.read_only {
            return Ok(rec.clone());
        }
        if matches!(rec.source, StageSource::Attached { .. }) {
            // The device itself was attached read-only (`rbd map --read-only`, a ro LUN):
            // a remount cannot make it writable, and it cannot be re-attached while the
            // read-only pods use it.
            return Err(Error::TargetBusy {
                target: stage_path.into(),
                detail: format!(
                    "volume {} is attached read-only for the pods using it now; a read-write \
                     mount is possible once they are gone",
                    rec.key
                ),
            });
        }
        let held = self.open_target(stage_path, false)?.ok_or_else(|| {
            Error::Internal(format!("stage dir {} vanished", stage_path.display()))
        })?;
        self.host
            .mounter
            .remount(&held.proc_path(), false)
            .map_err(Self::mount_err(&rec.key))?;
        let mut rec = rec.clone();
        rec.read_only = false;
        self.journal.put_stage(&rec)?;
        self.state().stages.insert(rec.key.clone(), rec.clone());
        Ok(rec)
    }

    pub(super) fn rollback_stage(
        &self,
        plan: &StagePlan,
        stage_path: &Path,
        rec: &StageRecord,
        previous: Option<StageRecord>,
    ) {
        let key = plan.spec.key.as_str();
        let unmounted = self.open_target(stage_path, false).and_then(|held| {
            if let Some(t) = &held {
                self.unmount_guarded(t, Place::Stage, key, true, rec.mount_id, None, false)?;
            }
            Ok(held)
        });
        match unmounted {
            Ok(held) => {
                if let Some(t) = &held {
                    crate::host::dirs::remove_empty(t);
                }
            }
            Err(e) => {
                tracing::error!(volume = key, error = %crate::error::Chain(&e), "rollback: cannot unmount the stage; record kept");
                return;
            }
        }
        if let Err(e) = self.restore_writable(rec) {
            tracing::error!(volume = key, error = %crate::error::Chain(&e), "rollback: the device stays read-only; record kept");
            return;
        }
        if let Err(e) = plan.driver.detach(&self.host, &rec.recorded()) {
            tracing::error!(volume = key, error = %crate::error::Chain(&e), "rollback: detach failed; record kept");
            return;
        }
        // Keep what moor learnt (a filesystem it saw or made) as an idle record.
        let keep = match previous {
            Some(mut p) => {
                p.phase = StagePhase::Idle;
                Some(p)
            }
            None if rec.fs_type.is_some() => Some(StageRecord {
                phase: StagePhase::Idle,
                ..rec.clone()
            }),
            None => None,
        };
        let result = match &keep {
            Some(r) => self.journal.put_stage(r),
            None => self.journal.remove_stage(key),
        };
        if let Err(e) = result {
            // The journal still says Staging: so does memory, and the reconciler finishes
            // this undo (unmount and detach are idempotent) once the journal is writable.
            tracing::error!(volume = key, error = %crate::error::Chain(&e), "rollback: journal update failed; the reconciler retries it");
            self.state().stages.insert(key.into(), rec.clone());
            return;
        }
        let mut st = self.state();
        match keep {
            Some(r) => st.stages.insert(key.into(), r),
            None => st.stages.remove(key),
        };
    }

    /// Unmounts the stage and detaches; removes the record.
    pub(super) fn unstage(&self, key: &str) -> Result<(), Error> {
        self.state().mark_unstage(key, None);
        let Some(mut rec) = self.state().stages.get(key).cloned() else {
            self.state().unstage_pending.remove(key);
            return Ok(());
        };
        rec.phase = StagePhase::Unstaging;
        self.journal.put_stage(&rec)?;
        self.state().stages.insert(key.into(), rec.clone());
        pause_point("unstage:intent");
        let stage_path = self.stage_path(&rec.driver, key);
        let held = self.open_target(&stage_path, false)?;
        if let Some(t) = &held {
            let plain = self.unmount_guarded(t, Place::Stage, key, true, rec.mount_id, None, false);
            match plain {
                Ok(_) => {}
                // A share whose server is gone (or hangs) is detached lazily: nothing of it
                // is left to flush to a device, and kubelet must get its directory back.
                // A block stage is never detached lazily: its device is logged out next.
                Err(e @ Error::Mount { .. }) if matches!(rec.source, StageSource::Remote(_)) => {
                    tracing::warn!(volume = key, error = %crate::error::Chain(&e), "unmount of the share failed; detaching it lazily");
                    self.unmount_guarded(t, Place::Stage, key, true, rec.mount_id, None, true)?;
                }
                Err(e) => return Err(e),
            }
        }
        pause_point("unstage:unmounted");
        if let Some(t) = &held {
            crate::host::dirs::remove_empty(t);
        }
        self.restore_writable(&rec)?;
        let driver = self.driver(&rec.driver)?;
        driver.detach(&self.host, &rec.recorded())?;
        if rec.fs_type.is_some() {
            // A block volume stays remembered (idle) with the filesystem moor saw, so if it
            // ever looks blank later it is refused, not formatted. `moor forget` ends that.
            rec.phase = StagePhase::Idle;
            rec.mount_id = None;
            // Unstaged: the next stage, by either front end, is a new one.
            rec.csi = None;
            self.journal.put_stage(&rec)?;
            self.state().stages.insert(key.into(), rec.clone());
        } else {
            self.journal.remove_stage(key)?;
            self.state().stages.remove(key);
        }
        self.state().unstage_pending.remove(key);
        tracing::info!(volume = key, driver = %rec.driver, "unstaged");
        Ok(())
    }
}

/// What differs between a CSI stage as recorded and as asked again, if anything.
pub(super) fn csi_difference(
    had: &crate::journal::CsiStage,
    asked: &crate::journal::CsiStage,
) -> Option<String> {
    if had.block != asked.block {
        let mode = |b: bool| if b { "block" } else { "filesystem" };
        Some(format!(
            "volume mode {} (asked: {})",
            mode(had.block),
            mode(asked.block)
        ))
    } else if had.access != asked.access {
        Some(format!(
            "access mode {} (asked: {})",
            had.access, asked.access
        ))
    } else if had.digest != asked.digest {
        Some("other volume attributes, fsType or mount options".into())
    } else if had.staging_path != asked.staging_path {
        Some(format!(
            "staging path {} (asked: {})",
            had.staging_path.display(),
            asked.staging_path.display()
        ))
    } else {
        None
    }
}
