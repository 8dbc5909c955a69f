//! Publish and unpublish. Publish binds the stage into the pod directory (ro where asked),
//! applies fsGroup through the stage moor checked, and undoes only the bind this call made
//! when a later step fails. Unpublish (`unmount`) removes the pod's bind through the
//! ownership decision, then unstages when it was the last.

use std::path::{Path, PathBuf};

use super::*;
use crate::error::Error;
use crate::host::mounts::split_options;
use crate::host::{MsFlags, Target};
use crate::journal::{MountId, PublishPhase, PublishRecord, StageRecord};
use crate::testhook::pause_point;
use owned::{Found, Place};

impl Lifecycle {
    /// unpublish, then unstage + detach when no publish remains. Idempotent: a directory
    /// that is not mounted is Success.
    pub fn unmount(&self, driver: Option<&str>, target: &str) -> Result<UnmountOutcome, Error> {
        let dir = self.host.paths.pod_volume_dir(target, driver)?;
        let target = dir.path;
        let held = self.open_target(&target, false)?;
        let Some(rec) = self.state().publishes.get(&target).cloned() else {
            if let Some(t) = &held {
                self.unmount_guarded(t, Place::PodDir, "", false, None, None, false)?;
            }
            // This pod dir's bind and record are gone but the unstage its unmount started
            // did not finish (a journal write failed). The retry retries the unstage and
            // answers its result: "not mounted" would let kubelet forget the pod while the
            // volume stays mounted (a disk still held) with nothing reporting it, whereas a
            // failure stays visible on the pod until the node's journal is writable again —
            // and the reconciler finishes the same unstage by itself meanwhile.
            let pending = self.state().pending_key_of(&target);
            if let Some(key) = pending {
                if self.state().user_count(&key) > 0 {
                    // Another pod uses the stage now: it stays, and this pod is done.
                    if let Some(t) = self.state().unstage_pending.get_mut(&key) {
                        t.remove(&target);
                    }
                    return Ok(UnmountOutcome::Unpublished);
                }
                self.unstage(&key)?;
                return Ok(UnmountOutcome::Unstaged);
            }
            return Ok(UnmountOutcome::NotMounted);
        };
        let last = self.state().user_count(&rec.key) <= 1;
        if last {
            self.check_stage_owned(&rec.key)?;
        }
        let remaining = self.unpublish(rec.clone(), held.as_ref())?;
        if remaining > 0 {
            return Ok(UnmountOutcome::Unpublished);
        }
        self.state().mark_unstage(&rec.key, Some(&target));
        self.unstage(&rec.key)?;
        Ok(UnmountOutcome::Unstaged)
    }

    /// Removes moor's bind at `rec.target` (held as `held`: `None` when the directory is
    /// gone) and its record; returns how many publishes of the volume remain.
    pub(super) fn unpublish(
        &self,
        mut rec: PublishRecord,
        held: Option<&Target>,
    ) -> Result<usize, Error> {
        let target = rec.target.clone();
        let stage_path = self.bind_source(&rec);
        // A healed pod dir carries layers over its bind: the top one is what is there now.
        let top = rec.layers.last().copied().or(rec.mount_id);
        if let Some(t) = held {
            let facts = self.unmount_facts(t, Place::PodDir, true, top, Some(&stage_path))?;
            if let Err(refusal) = owned::may_unmount(&facts) {
                return Err(Error::NotOwned {
                    target: target.clone(),
                    detail: refusal.to_string(),
                });
            }
        }
        rec.phase = PublishPhase::Unpublishing;
        self.journal.put_publish(&rec)?;
        self.state().put_publish(rec.clone());
        pause_point("unpublish:intent");
        let stacked = !rec.layers.is_empty();
        let reopened;
        let held = match (held, stacked) {
            (Some(_), true) => {
                self.remove_layers(&rec)?;
                rec.layers.clear();
                reopened = self.open_target(&target, false)?;
                reopened.as_ref()
            }
            (held, _) => held,
        };
        if let Some(t) = held {
            self.unmount_guarded(
                t,
                Place::PodDir,
                &rec.key,
                true,
                rec.mount_id,
                Some(&stage_path),
                false,
            )?;
        }
        pause_point("unpublish:unmounted");
        self.journal.remove_publish(&target)?;
        let remaining = {
            let mut st = self.state();
            st.drop_publish(&target);
            st.user_count(&rec.key)
        };
        tracing::info!(volume = %rec.key, target = %target.display(), remaining, "unpublished");
        if stacked && remaining > 0 {
            // The kernel propagated the removal of this pod dir's layer to its peers'.
            let restacked = self.restack(&rec.key);
            tracing::info!(volume = %rec.key, restacked, "healed share stacked again over the other pod dirs");
        }
        Ok(remaining)
    }

    /// Binds the stage (or, for a raw block volume, its device node) onto `dir` (a
    /// directory, or for a device a regular file, created if missing), read-only per
    /// `opts`; `csi` marks the record as CSI's.
    pub(super) fn publish(
        &self,
        dir: &PodVolumeDir,
        opts: &VolumeOptions,
        stage: &StageRecord,
        earlier: Option<MountId>,
        csi: bool,
    ) -> Result<(), Error> {
        let device = match csi {
            true => self.raw_device(stage)?,
            false => None,
        };
        let target = &dir.path;
        let stage_path = self.stage_path(&stage.driver, &stage.key);
        let mut rec = PublishRecord {
            target: target.clone(),
            key: stage.key.clone(),
            driver: stage.driver.clone(),
            pod_uid: dir.pod_uid.clone(),
            volume_name: dir.volume_name.clone(),
            namespace: opts.pod_namespace.clone(),
            read_only: opts.read_only,
            phase: PublishPhase::Publishing,
            mount_id: earlier,
            csi,
            block: device.is_some(),
            layers: Vec::new(),
        };
        self.journal.put_publish(&rec)?;
        self.state().put_publish(rec.clone());
        pause_point("publish:intent");
        let mut made: Option<MountId> = None;
        let mut held: Option<Target> = None;
        let vanished = |p: &Path| Error::Internal(format!("{} vanished", p.display()));
        let mut steps = || -> Result<(), Error> {
            let t = match (&device, target.parent()) {
                // kubelet makes the file's directory; moor makes it too if it did not.
                (Some(_), Some(parent)) => {
                    self.open_target(parent, true)?;
                    self.open_target(target, false)?
                }
                _ => self.open_target(target, true)?,
            };
            let t = held.insert(t.ok_or_else(|| vanished(target))?);
            // Our own earlier, interrupted bind (the record says so): redo it cleanly.
            let source = device
                .as_ref()
                .map_or(stage_path.as_path(), |(p, _)| p.as_path());
            self.unmount_guarded(
                t,
                Place::PodDir,
                &stage.key,
                true,
                earlier,
                Some(source),
                false,
            )?;
            if let Some((path, number)) = &device {
                t.create_file().map_err(|source| Error::Io {
                    what: "create the device file",
                    path: target.clone(),
                    source,
                })?;
                let m = self
                    .host
                    .mounter
                    .bind_device(path, *number, t, opts.read_only)
                    .map_err(Self::mount_err(&stage.key))?;
                made = Some(m.into());
            } else {
                self.bind_stage(t, &stage_path, opts, &stage.key, &mut made)?;
            }
            pause_point("publish:bound");
            // Part of the steps: a Published record that cannot be written undoes the bind.
            let mut published = rec.clone();
            published.phase = PublishPhase::Published;
            published.mount_id = made;
            self.journal.put_publish(&published)?;
            Ok(())
        };
        if let Err(e) = steps() {
            // Only the bind this call made may go; a refusal (something else stacked on it
            // now) keeps the record, so kubelet's next unmount can still remove ours.
            let still_mounted = match (&held, made) {
                (Some(t), Some(id)) => self
                    .unmount_guarded(t, Place::PodDir, &stage.key, true, Some(id), None, false)
                    .is_err(),
                // Nothing made, but something is still there (the earlier step refused it):
                // moor's own earlier bind may be under it, so its record must stay.
                (Some(t), None) => !matches!(self.found_at(t), Ok(Found::Nothing)),
                (None, _) => false,
            };
            if let (false, Some(_), Some(t)) = (still_mounted, &device, &held) {
                remove_device_file(t);
            }
            if still_mounted {
                rec.phase = PublishPhase::Unpublishing;
                rec.mount_id = made.or(earlier);
                let _ = self.journal.put_publish(&rec);
                self.state().put_publish(rec);
            } else if let Err(j) = self.journal.remove_publish(target) {
                // Nothing is bound, but the record stays until it can be removed (the
                // reconciler does it): memory keeps saying Publishing, as the journal does.
                tracing::error!(volume = %stage.key, target = %target.display(), error = %crate::error::Chain(&j), "rollback: publish record not removed; the reconciler retries it");
            } else {
                self.state().drop_publish(target);
            }
            return Err(e);
        }
        rec.phase = PublishPhase::Published;
        rec.mount_id = made;
        self.state().put_publish(rec);
        tracing::info!(volume = %stage.key, target = %target.display(), pod_uid = %dir.pod_uid, read_only = opts.read_only, "published");
        Ok(())
    }

    /// Binds the stage onto the held pod dir `t` (ro per `opts`) and applies fsGroup; the
    /// bind's identity goes to `made` as soon as it exists, so a later failure undoes it.
    fn bind_stage(
        &self,
        t: &Target,
        stage_path: &Path,
        opts: &VolumeOptions,
        key: &str,
        made: &mut Option<MountId>,
    ) -> Result<(), Error> {
        let source = self
            .open_target(stage_path, false)?
            .ok_or_else(|| Error::Internal(format!("{} vanished", stage_path.display())))?;
        let flags = read_only_flag(opts.read_only);
        let m = self
            .host
            .mounter
            .bind_target(&source, t, flags)
            .map_err(Self::mount_err(key))?;
        *made = Some(m.into());
        pause_point("publish:bound-before-fsgroup");
        if let (Some(gid), false) = (opts.fs_group, opts.read_only) {
            // Through the stage moor checked, not the pod dir: whatever got stacked on
            // the pod dir since the bind is not moor's to chgrp.
            let changed = if source.parent().is_some() {
                crate::host::target::fs_group(&source, gid)
            } else {
                crate::host::dirs::give_root_to_group(stage_path, gid)
            };
            changed.map_err(|source| Error::Io {
                what: "apply fsGroup to",
                path: t.path().into(),
                source,
            })?;
        }
        Ok(())
    }

    /// What `p`'s bind is a bind of: the stage directory, or a raw block publish's device
    /// node (the ownership decision compares a bind with no recorded id against it).
    pub(super) fn bind_source(&self, p: &PublishRecord) -> PathBuf {
        let device = p
            .block
            .then(|| self.state().stages.get(&p.key).cloned())
            .flatten()
            .and_then(|s| match s.source {
                StageSource::Block { device }
                | StageSource::Attached {
                    device: Some(device),
                } => Some(device),
                _ => None,
            });
        device.unwrap_or_else(|| self.stage_path(&p.driver, &p.key))
    }

    /// True when the mount on `p`'s pod dir is the bind moor recorded for it.
    pub(super) fn is_our_bind(&self, p: &PublishRecord) -> bool {
        let stage_path = self.bind_source(p);
        matches!(self.open_target(&p.target, false), Ok(Some(t))
            if self.owns(&t, Place::PodDir, p.mount_id, Some(&stage_path)))
    }

    /// Binds the stage onto an existing pod dir again (ro where the pod asked), through the
    /// held directories; returns the new bind's identity.
    pub(super) fn bind_again(&self, p: &PublishRecord, stage_path: &Path) -> Option<MountId> {
        let run = || -> Result<MountId, Error> {
            let none = || Error::Internal("directory vanished".into());
            let t = self.open_target(&p.target, false)?.ok_or_else(none)?;
            if p.block {
                // A raw block publish: the device node again, onto the file that is still
                // there, if the device is still the one staged.
                let stage = self.state().stages.get(&p.key).cloned().ok_or_else(none)?;
                let (device, number) = self.raw_device(&stage)?.ok_or_else(none)?;
                let m = self
                    .host
                    .mounter
                    .bind_device(&device, number, &t, p.read_only)
                    .map_err(Self::mount_err(&p.key))?;
                return Ok(m.into());
            }
            let source = self.open_target(stage_path, false)?.ok_or_else(none)?;
            let flags = read_only_flag(p.read_only);
            let m = self
                .host
                .mounter
                .bind_target(&source, &t, flags)
                .map_err(Self::mount_err(&p.key))?;
            Ok(m.into())
        };
        match run() {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::error!(volume = %p.key, target = %p.target.display(), error = %crate::error::Chain(&e), "cannot bind the pod directory again");
                None
            }
        }
    }
}

/// Unlinks a raw block target moor created, when it is a regular file that is not a mount
/// point (the kernel refuses to unlink a mount point; anything else stays).
pub(super) fn remove_device_file(t: &Target) {
    match t.remove_file() {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(target = %t.path().display(), error = %e, "device file left in place")
        }
    }
}

/// A pod bind's flags: read-only where the pod asked.
fn read_only_flag(read_only: bool) -> MsFlags {
    if read_only {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    }
}

/// The generic flags of a directory volume's `mountOptions`, applied to its bind; anything
/// a bind cannot carry (filesystem options, `sync`, …) is refused by name, never dropped.
pub(super) fn bind_flags(key: &str, options: &str) -> Result<MsFlags, Error> {
    let (flags, data) = split_options(options);
    let refused = |options: String| Error::BindOptions {
        volume: key.into(),
        options,
    };
    if !data.is_empty() {
        return Err(refused(data));
    }
    crate::host::target::bind_attrs(flags).map_err(|rest| {
        let names: Vec<&str> = options
            .split(',')
            .map(str::trim)
            .filter(|o| {
                let (f, _) = split_options(o);
                !f.is_empty() && rest.contains(f)
            })
            .collect();
        refused(names.join(","))
    })?;
    Ok(flags)
}
