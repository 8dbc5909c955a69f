//! The attach → stage → publish state machine and its inverse, with reference counting
//! (one stage per volume key, one publish per pod directory) and reconstruction.
//!
//! Invariants:
//! - every side effect is preceded by a journal record of the intent, and every step is
//!   idempotent, so a crash anywhere is finished or undone by [`Lifecycle::reconstruct`];
//! - a failed mount leaves nothing behind that it created (rollback), and never formats;
//! - moor unmounts only what a record or the volume key says it owns;
//! - directories are removed with `rmdir` only, after checking they are not mount points.
//!
//! Callers serialise operations per volume key (the daemon's executor does); the methods
//! here only take the short internal state lock.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::errno::Errno;

use crate::api::{PodUse, VolumeStatus};
use crate::driver::{Driver, Drivers, NodeContext, VolumeSpec};
use crate::error::Error;
use crate::flexvolume::VolumeOptions;
use crate::fs::{self, Prepared, format::FormatRequest};
use crate::host::mounts::{is_dead_mount_error, split_options};
use crate::host::{FsMount, Host, PodVolumeDir};
use crate::journal::{
    Journal, PublishPhase, PublishRecord, RemoteMount, StagePhase, StageRecord, StageSource,
};
use crate::share;
use crate::testhook::pause_point;

/// A staged network filesystem, as the stale-mount probe sees it.
#[derive(Debug, Clone)]
pub struct RemoteStage {
    /// Volume key.
    pub key: String,
    /// Driver name.
    pub driver: String,
    /// The stage mount point.
    pub stage_path: PathBuf,
    /// How it was mounted.
    pub remote: RemoteMount,
}

/// Deadlines for the lifecycle's own syscalls.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// A filesystem mount.
    pub mount: Duration,
    /// An unmount.
    pub unmount: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            mount: Duration::from_secs(120),
            unmount: Duration::from_secs(60),
        }
    }
}

/// A validated mount request, ready to run under its volume's lock.
pub struct MountPlan {
    driver: Arc<dyn Driver>,
    target: PodVolumeDir,
    opts: VolumeOptions,
    spec: VolumeSpec,
}

impl MountPlan {
    /// The volume key (what the caller locks).
    pub fn key(&self) -> &str {
        &self.spec.key
    }

    /// The driver name.
    pub fn driver(&self) -> &'static str {
        self.driver.name()
    }

    /// The pod volume directory.
    pub fn target(&self) -> &Path {
        &self.target.path
    }
}

/// How a mount ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountOutcome {
    /// Newly published.
    Published,
    /// Already published there: nothing done.
    AlreadyPublished,
}

/// How an unmount ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnmountOutcome {
    /// Unpublished; the stage stays for other pods.
    Unpublished,
    /// Unpublished, and the last one: unstaged and detached.
    Unstaged,
    /// Nothing was mounted there.
    NotMounted,
}

/// What reconstruction did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconstruction {
    /// Volumes staged and in use, kept.
    pub kept_stages: usize,
    /// Publishes kept.
    pub kept_publishes: usize,
    /// Half-done publishes undone.
    pub rolled_back_publishes: usize,
    /// Half-done or unused stages undone.
    pub rolled_back_stages: usize,
    /// Unpublishes/unstages finished.
    pub finished: usize,
    /// Publishes whose bind had vanished and was restored.
    pub healed: usize,
    /// Mounts found in moor's directories with no record, adopted.
    pub adopted: usize,
    /// Records whose mounts are gone (reboot): kept idle, remembering the filesystem.
    pub idled: usize,
    /// Problems that need an operator.
    pub problems: Vec<String>,
}

#[derive(Default)]
struct State {
    stages: HashMap<String, StageRecord>,
    publishes: HashMap<PathBuf, PublishRecord>,
    users: HashMap<String, BTreeSet<PathBuf>>,
}

impl State {
    fn put_publish(&mut self, p: PublishRecord) {
        self.users
            .entry(p.key.clone())
            .or_default()
            .insert(p.target.clone());
        self.publishes.insert(p.target.clone(), p);
    }

    fn drop_publish(&mut self, target: &Path) {
        if let Some(p) = self.publishes.remove(target)
            && let Some(u) = self.users.get_mut(&p.key)
        {
            u.remove(target);
            if u.is_empty() {
                self.users.remove(&p.key);
            }
        }
    }

    fn user_count(&self, key: &str) -> usize {
        self.users.get(key).map_or(0, BTreeSet::len)
    }
}

/// The state machine over a [`Host`] and a [`Journal`].
pub struct Lifecycle {
    host: Host,
    journal: Journal,
    drivers: Drivers,
    node: NodeContext,
    timeouts: Timeouts,
    /// Run FUSE mount helpers in their own systemd scope (systemd is PID 1).
    fuse_scope: bool,
    state: Mutex<State>,
}

impl Lifecycle {
    /// A lifecycle with an empty in-memory state (call [`Lifecycle::reconstruct`] next).
    pub fn new(
        host: Host,
        journal: Journal,
        drivers: Drivers,
        node_name: String,
        timeouts: Timeouts,
    ) -> Self {
        let node = NodeContext {
            node_name,
            kubelet_dir: host.paths.kubelet_dir.clone(),
            run_dir: host.paths.run_dir.clone(),
        };
        Lifecycle {
            host,
            journal,
            drivers,
            node,
            timeouts,
            fuse_scope: false,
            state: Mutex::new(State::default()),
        }
    }

    /// Runs FUSE mount helpers under `systemd-run --scope`, so the FUSE daemon outlives a
    /// restart of moor's own unit.
    pub fn with_fuse_scope(mut self, on: bool) -> Self {
        self.fuse_scope = on;
        self
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated (each update
        // is a single insert/remove), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The host this lifecycle runs on.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.node.node_name
    }

    fn driver(&self, name: &str) -> Result<Arc<dyn Driver>, Error> {
        self.drivers
            .get(name)
            .ok_or_else(|| Error::UnknownDriver(name.into(), self.drivers.names().join(", ")))
    }

    /// Validates a mount request; no side effects.
    pub fn plan_mount(
        &self,
        driver: &str,
        target: &str,
        options: &std::collections::BTreeMap<String, String>,
    ) -> Result<MountPlan, Error> {
        let driver = self.driver(driver)?;
        let target = self
            .host
            .paths
            .pod_volume_dir(target, Some(driver.name()))?;
        let opts = VolumeOptions::from_map(options)?;
        let spec = driver.volume(&self.node, &opts)?;
        Ok(MountPlan {
            driver,
            target,
            opts,
            spec,
        })
    }

    /// The key a pod directory is published from, if moor has a record of it.
    pub fn key_of(&self, target: &Path) -> Option<String> {
        self.state().publishes.get(target).map(|p| p.key.clone())
    }

    /// attach + stage + publish. Idempotent; on failure undoes what it did.
    pub fn mount(&self, plan: &MountPlan) -> Result<MountOutcome, Error> {
        let target = &plan.target.path;
        let existing = self.state().publishes.get(target).cloned();
        match existing {
            Some(p) if p.key != plan.spec.key => {
                return Err(Error::TargetBusy {
                    target: target.clone(),
                    detail: format!("already publishes volume {}", p.key),
                });
            }
            Some(p) if p.phase == PublishPhase::Published && self.is_mount_point(target)? => {
                return Ok(MountOutcome::AlreadyPublished);
            }
            Some(mut p) if self.is_mount_point(target)? && self.is_bind_of_stage(target, &p) => {
                // Our bind is still there (an unmount that failed half-way, a crash before
                // the Published record): kubelet wants it mounted, so it simply is.
                p.phase = PublishPhase::Published;
                self.journal.put_publish(&p)?;
                self.state().put_publish(p);
                return Ok(MountOutcome::AlreadyPublished);
            }
            Some(_) => {}
            None => {
                if self.is_mount_point(target)? {
                    return Err(Error::TargetBusy {
                        target: target.clone(),
                        detail: "already a mount point that moor did not make".into(),
                    });
                }
            }
        }
        let stage = self.stage(plan)?;
        if let Err(e) = self.publish(plan, &stage) {
            if self.state().user_count(&plan.spec.key) == 0
                && let Err(u) = self.unstage(&plan.spec.key)
            {
                tracing::error!(volume = %plan.spec.key, error = %u, "rollback of the stage failed");
            }
            return Err(e);
        }
        Ok(MountOutcome::Published)
    }

    fn is_mount_point(&self, p: &Path) -> Result<bool, Error> {
        match self.host.mounts.is_mount_point(p) {
            Ok(b) => Ok(b),
            // Only a network or FUSE mount answers like this: a dead one is still a mount.
            Err(e) if is_dead_mount_error(&e) => Ok(true),
            Err(source) => Err(Error::Io {
                what: "statx",
                path: p.into(),
                source,
            }),
        }
    }

    fn mount_err(volume: &str) -> impl Fn(crate::host::MountError) -> Error + '_ {
        move |source| Error::Mount {
            volume: volume.into(),
            source,
        }
    }

    fn stage_path(&self, rec_driver: &str, key: &str) -> PathBuf {
        self.host.paths.stage_dir(rec_driver, key)
    }

    /// Ensures the volume is staged; returns its record.
    fn stage(&self, plan: &MountPlan) -> Result<StageRecord, Error> {
        let key = plan.spec.key.as_str();
        let stage_path = self.stage_path(plan.driver.name(), key);
        let previous = self.state().stages.get(key).cloned();
        if let Some(rec) = &previous
            && rec.phase == StagePhase::Staged
            && self.is_mount_point(&stage_path)?
        {
            // An attached device's path is the attach's to choose; the key names the volume.
            let attaching = matches!(plan.spec.source, StageSource::Attached { .. });
            if !attaching && rec.source != plan.spec.source {
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
            options: plan.spec.persist.clone(),
            fs_type: previous.as_ref().and_then(|r| r.fs_type.clone()),
            fs_uuid: previous.as_ref().and_then(|r| r.fs_uuid.clone()),
            read_only: is_block && plan.opts.read_only,
            phase: StagePhase::Staging,
            formatted_by_moor: previous.as_ref().is_some_and(|r| r.formatted_by_moor),
        };
        self.journal.put_stage(&rec)?;
        self.state().stages.insert(key.into(), rec.clone());
        pause_point("stage:intent");
        match self.stage_steps(plan, &stage_path, &mut rec) {
            Ok(()) => {
                pause_point("stage:mounted");
                rec.phase = StagePhase::Staged;
                self.journal.put_stage(&rec)?;
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

    fn stage_steps(
        &self,
        plan: &MountPlan,
        stage_path: &Path,
        rec: &mut StageRecord,
    ) -> Result<(), Error> {
        let key = plan.spec.key.as_str();
        let attached = plan.driver.attach(&self.host, &plan.spec, &plan.opts)?;
        if attached.device.is_some() || !attached.persist.is_empty() {
            if let Some(dev) = attached.device {
                rec.source = StageSource::Attached { device: Some(dev) };
            }
            rec.options.extend(attached.persist);
            // Detach after a crash needs what attach learnt (device, WWID, session).
            self.journal.put_stage(rec)?;
            self.state().stages.insert(key.into(), rec.clone());
        }
        pause_point("stage:attached");
        make_dir(stage_path, 0o750)?;
        if self.is_mount_point(stage_path)? {
            // A leftover of an interrupted stage of this same key: ours by the key's path.
            self.host
                .mounter
                .unmount(stage_path, false, self.timeouts.unmount)
                .map_err(Self::mount_err(key))?;
        }
        match rec.source.clone() {
            StageSource::Directory { path } => self
                .host
                .mounter
                .bind(&path, stage_path, false)
                .map_err(Self::mount_err(key)),
            StageSource::Block { device }
            | StageSource::Attached {
                device: Some(device),
            } => self.stage_block(plan, &device, stage_path, rec),
            StageSource::Attached { device: None } => Err(Error::NoDevice {
                volume: key.into(),
                driver: plan.driver.name(),
            }),
            StageSource::Remote(remote) => self.mount_remote(key, &remote, stage_path),
        }
    }

    fn stage_block(
        &self,
        plan: &MountPlan,
        device: &Path,
        stage_path: &Path,
        rec: &mut StageRecord,
    ) -> Result<(), Error> {
        let key = plan.spec.key.as_str();
        // One disk is staged once: not under a second path, not while mounted elsewhere.
        fs::check_exclusive(key, device)?;
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
        let (mut flags, data) = split_options(&plan.spec.mount_options);
        if plan.opts.read_only {
            flags |= nix::mount::MsFlags::MS_RDONLY;
        }
        let m = FsMount {
            source: device.into(),
            target: stage_path.into(),
            fs_type: prepared.fs_type().into(),
            flags,
            data,
        };
        self.host
            .mounter
            .mount(&m, self.timeouts.mount)
            .map_err(Self::mount_err(key))?;
        rec.fs_type = Some(prepared.fs_type().into());
        rec.fs_uuid = prepared.uuid().map(str::to_owned);
        rec.formatted_by_moor |= matches!(prepared, Prepared::Formatted { .. });
        Ok(())
    }

    /// Mounts a network filesystem at the stage through its mount helper, bounded by the
    /// mount deadline; a helper that reports success without a mount is a failure too.
    fn mount_remote(
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
        let failed = |detail: String| Error::RemoteMount {
            volume: key.into(),
            server: remote.server.clone(),
            detail,
            log_tail: remote.log_file.as_deref().and_then(share::log_tail),
        };
        match result {
            Ok(_) if self.is_mount_point(stage_path)? => Ok(()),
            Ok(_) => Err(failed(format!(
                "`{}` reported success but {} is not a mount point",
                cmd.display(),
                stage_path.display()
            ))),
            Err(e) => Err(failed(e.to_string())),
        }
    }

    /// A rw publish of a volume staged ro: remount the stage rw (read-only binds stay ro).
    fn upgrade_to_rw(
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
        self.host
            .mounter
            .remount(stage_path, false)
            .map_err(Self::mount_err(&rec.key))?;
        let mut rec = rec.clone();
        rec.read_only = false;
        self.journal.put_stage(&rec)?;
        self.state().stages.insert(rec.key.clone(), rec.clone());
        Ok(rec)
    }

    fn rollback_stage(
        &self,
        plan: &MountPlan,
        stage_path: &Path,
        rec: &StageRecord,
        previous: Option<StageRecord>,
    ) {
        let key = plan.spec.key.as_str();
        if self.is_mount_point(stage_path).unwrap_or(false)
            && let Err(e) = self
                .host
                .mounter
                .unmount(stage_path, false, self.timeouts.unmount)
        {
            tracing::error!(volume = key, error = %e, "rollback: cannot unmount the stage; record kept");
            return;
        }
        remove_empty_dir(stage_path);
        if let Err(e) = plan.driver.detach(&self.host, rec) {
            tracing::error!(volume = key, error = %e, "rollback: detach failed; record kept");
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
            tracing::error!(volume = key, error = %e, "rollback: journal update failed");
        }
        let mut st = self.state();
        match keep {
            Some(r) => st.stages.insert(key.into(), r),
            None => st.stages.remove(key),
        };
    }

    fn publish(&self, plan: &MountPlan, stage: &StageRecord) -> Result<(), Error> {
        let target = &plan.target.path;
        let stage_path = self.stage_path(&stage.driver, &stage.key);
        let mut rec = PublishRecord {
            target: target.clone(),
            key: stage.key.clone(),
            driver: stage.driver.clone(),
            pod_uid: plan.target.pod_uid.clone(),
            volume_name: plan.target.volume_name.clone(),
            namespace: plan.opts.pod_namespace.clone(),
            read_only: plan.opts.read_only,
            phase: PublishPhase::Publishing,
        };
        self.journal.put_publish(&rec)?;
        self.state().put_publish(rec.clone());
        pause_point("publish:intent");
        let steps = || -> Result<(), Error> {
            make_dir(target, 0o750)?;
            if self.is_mount_point(target)? {
                // Our own earlier, interrupted bind (the record says so): redo it cleanly.
                self.unmount_if_ours(target, &stage_path, &stage.key)?;
            }
            self.host
                .mounter
                .bind(&stage_path, target, plan.opts.read_only)
                .map_err(Self::mount_err(&stage.key))?;
            if let (Some(gid), false) = (plan.opts.fs_group, plan.opts.read_only) {
                apply_fs_group(&stage_path, gid).map_err(|source| Error::Io {
                    what: "apply fsGroup to",
                    path: stage_path.clone(),
                    source,
                })?;
            }
            Ok(())
        };
        if let Err(e) = steps() {
            let still_mounted = self.is_mount_point(target).unwrap_or(true)
                && self
                    .host
                    .mounter
                    .unmount(target, false, self.timeouts.unmount)
                    .is_err();
            if still_mounted {
                // Never forget a bind that is still there: the record keeps it owned, so
                // kubelet's next unmount can remove it (no orphaned pod directory).
                rec.phase = PublishPhase::Unpublishing;
                let _ = self.journal.put_publish(&rec);
                self.state().put_publish(rec);
            } else {
                let _ = self.journal.remove_publish(target);
                self.state().drop_publish(target);
            }
            return Err(e);
        }
        pause_point("publish:bound");
        rec.phase = PublishPhase::Published;
        self.journal.put_publish(&rec)?;
        self.state().put_publish(rec);
        tracing::info!(volume = %stage.key, target = %target.display(), pod_uid = %plan.target.pod_uid, read_only = plan.opts.read_only, "published");
        Ok(())
    }

    /// True when `target` is mounted from the same filesystem as `p`'s stage.
    fn is_bind_of_stage(&self, target: &Path, p: &PublishRecord) -> bool {
        let stage = self
            .host
            .mounts
            .path_mount(&self.stage_path(&p.driver, &p.key));
        let bind = self.host.mounts.path_mount(target);
        matches!((stage, bind), (Ok(s), Ok(t)) if s.is_mount_root && t.is_mount_root && s.dev == t.dev)
    }

    /// Unmounts `target` only if it is a bind of the stage (same device); refuses otherwise.
    fn unmount_if_ours(&self, target: &Path, stage_path: &Path, key: &str) -> Result<(), Error> {
        let t = match self.host.mounts.path_mount(target) {
            Ok(t) => t,
            // A dead share under a path moor's record owns: detach it without asking it.
            Err(e) if is_dead_mount_error(&e) => return self.detach_dead(target, key),
            Err(source) => {
                return Err(Error::Io {
                    what: "statx",
                    path: target.into(),
                    source,
                });
            }
        };
        let stage = self.host.mounts.path_mount(stage_path).ok();
        if let Some(s) = &stage
            && s.is_mount_root
            && s.dev != t.dev
        {
            return Err(Error::NotOwned {
                target: target.into(),
            });
        }
        // While the stage holds the same filesystem, this bind is not its last reference:
        // unmounting it cannot wait on a server, so no deadline thread is needed.
        let stage_holds_it = stage.is_some_and(|s| s.is_mount_root && s.dev == t.dev);
        let result = if stage_holds_it {
            self.host.mounter.unmount_bind(target)
        } else {
            self.host
                .mounter
                .unmount(target, false, self.timeouts.unmount)
        };
        result
            .or_else(|e| {
                if e.errno() == Some(Errno::EINVAL) {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(Self::mount_err(key))
    }

    /// unpublish, then unstage + detach when no publish remains. Idempotent: a directory
    /// that is not mounted is Success.
    pub fn unmount(&self, driver: Option<&str>, target: &str) -> Result<UnmountOutcome, Error> {
        let dir = self.host.paths.pod_volume_dir(target, driver)?;
        let target = dir.path;
        let Some(mut rec) = self.state().publishes.get(&target).cloned() else {
            if self.is_mount_point(&target)? {
                return Err(Error::NotOwned { target });
            }
            return Ok(UnmountOutcome::NotMounted);
        };
        rec.phase = PublishPhase::Unpublishing;
        self.journal.put_publish(&rec)?;
        self.state().put_publish(rec.clone());
        pause_point("unpublish:intent");
        if self.is_mount_point(&target)? {
            let stage_path = self.stage_path(&rec.driver, &rec.key);
            self.unmount_if_ours(&target, &stage_path, &rec.key)?;
        }
        pause_point("unpublish:unmounted");
        self.journal.remove_publish(&target)?;
        let remaining = {
            let mut st = self.state();
            st.drop_publish(&target);
            st.user_count(&rec.key)
        };
        tracing::info!(volume = %rec.key, target = %target.display(), remaining, "unpublished");
        if remaining > 0 {
            return Ok(UnmountOutcome::Unpublished);
        }
        self.unstage(&rec.key)?;
        Ok(UnmountOutcome::Unstaged)
    }

    /// Unmounts the stage and detaches; removes the record.
    fn unstage(&self, key: &str) -> Result<(), Error> {
        let Some(mut rec) = self.state().stages.get(key).cloned() else {
            return Ok(());
        };
        rec.phase = StagePhase::Unstaging;
        self.journal.put_stage(&rec)?;
        self.state().stages.insert(key.into(), rec.clone());
        pause_point("unstage:intent");
        let stage_path = self.stage_path(&rec.driver, key);
        if self.is_mount_point(&stage_path)? {
            let plain = self
                .host
                .mounter
                .unmount(&stage_path, false, self.timeouts.unmount);
            match plain {
                Ok(()) => {}
                // A share whose server is gone (or hangs) is detached lazily: nothing of it
                // is left to flush to a device, and kubelet must get its directory back.
                // A block stage is never detached lazily: its device is logged out next.
                Err(e) if matches!(rec.source, StageSource::Remote(_)) => {
                    tracing::warn!(volume = key, error = %e, "unmount of the share failed; detaching it lazily");
                    self.detach_dead(&stage_path, key)?;
                }
                Err(e) => return Err(Self::mount_err(key)(e)),
            }
        }
        pause_point("unstage:unmounted");
        remove_empty_dir(&stage_path);
        let driver = self.driver(&rec.driver)?;
        driver.detach(&self.host, &rec)?;
        if rec.fs_type.is_some() {
            // A block volume stays remembered (idle) with the filesystem moor saw, so if it
            // ever looks blank later it is refused, not formatted. `moor forget` ends that.
            rec.phase = StagePhase::Idle;
            self.journal.put_stage(&rec)?;
            self.state().stages.insert(key.into(), rec.clone());
        } else {
            self.journal.remove_stage(key)?;
            self.state().stages.remove(key);
        }
        tracing::info!(volume = key, driver = %rec.driver, "unstaged");
        Ok(())
    }

    /// Rebuilds the in-memory state from the journal and the live mount table together, and
    /// finishes or undoes whatever a crash interrupted.
    pub fn reconstruct(&self) -> Result<Reconstruction, Error> {
        let loaded = self.journal.load()?;
        let mut report = Reconstruction {
            problems: loaded
                .problems
                .iter()
                .map(|p| {
                    format!(
                        "unreadable record set aside at {}: {}",
                        p.path.display(),
                        p.error
                    )
                })
                .collect(),
            ..Reconstruction::default()
        };
        {
            let mut st = self.state();
            *st = State::default();
            for s in loaded.stages {
                st.stages.insert(s.key.clone(), s);
            }
            for p in loaded.publishes {
                st.put_publish(p);
            }
        }
        self.adopt_unrecorded(&mut report);
        let publishes: Vec<PublishRecord> = self.state().publishes.values().cloned().collect();
        for p in publishes {
            self.reconstruct_publish(p, &mut report);
        }
        let stages: Vec<StageRecord> = self.state().stages.values().cloned().collect();
        for s in stages {
            self.reconstruct_stage(s, &mut report);
        }
        for p in &report.problems {
            tracing::warn!(problem = %p, "reconstruction");
        }
        Ok(report)
    }

    fn reconstruct_publish(&self, mut p: PublishRecord, report: &mut Reconstruction) {
        let mounted = self.is_mount_point(&p.target).unwrap_or(false);
        let stage_path = self.stage_path(&p.driver, &p.key);
        match p.phase {
            PublishPhase::Published if mounted => report.kept_publishes += 1,
            PublishPhase::Published => {
                // The bind vanished under a live record (someone unmounted it): restore it
                // if the pod directory and the stage are still there.
                let stage_ok = self.is_mount_point(&stage_path).unwrap_or(false);
                if stage_ok
                    && p.target.is_dir()
                    && self
                        .host
                        .mounter
                        .bind(&stage_path, &p.target, p.read_only)
                        .is_ok()
                {
                    report.healed += 1;
                } else {
                    self.forget_publish(&p.target, report, "its bind is gone");
                }
            }
            PublishPhase::Publishing | PublishPhase::Unpublishing => {
                // kubelet never got Success for a Publishing record: undo it, kubelet retries.
                if mounted && let Err(e) = self.unmount_if_ours(&p.target, &stage_path, &p.key) {
                    report
                        .problems
                        .push(format!("{}: cannot undo: {e}", p.target.display()));
                    p.phase = PublishPhase::Unpublishing;
                    let _ = self.journal.put_publish(&p);
                    return;
                }
                if p.phase == PublishPhase::Publishing {
                    report.rolled_back_publishes += 1;
                } else {
                    report.finished += 1;
                }
                self.forget_publish(&p.target, report, "");
            }
        }
    }

    fn forget_publish(&self, target: &Path, report: &mut Reconstruction, why: &str) {
        if let Err(e) = self.journal.remove_publish(target) {
            report.problems.push(format!("{}: {e}", target.display()));
        }
        self.state().drop_publish(target);
        if !why.is_empty() {
            tracing::info!(target = %target.display(), why, "publish record dropped");
        }
    }

    fn reconstruct_stage(&self, mut s: StageRecord, report: &mut Reconstruction) {
        let stage_path = self.stage_path(&s.driver, &s.key);
        let mounted = self.is_mount_point(&stage_path).unwrap_or(false);
        let users = self.state().user_count(&s.key);
        match (s.phase, mounted, users) {
            (StagePhase::Staged, true, n) if n > 0 => report.kept_stages += 1,
            (StagePhase::Idle, false, 0) => {}
            (StagePhase::Staged, false, 0) => {
                // Mounts are gone (a reboot): keep the record idle so the filesystem moor saw
                // here is remembered when kubelet mounts the volume again.
                s.phase = StagePhase::Idle;
                if self.journal.put_stage(&s).is_ok() {
                    self.state().stages.insert(s.key.clone(), s);
                }
                remove_empty_dir(&stage_path);
                report.idled += 1;
            }
            (_, _, n) if n > 0 => {
                report.problems.push(format!(
                    "volume {}: stage is {:?} (mounted: {mounted}) but {n} pod(s) still use it",
                    s.key, s.phase
                ));
            }
            (phase, _, _) => {
                // Staging, Unstaging, or staged with no user left: finish the unstage.
                match self.unstage(&s.key) {
                    Ok(()) if phase == StagePhase::Unstaging => report.finished += 1,
                    Ok(()) => report.rolled_back_stages += 1,
                    Err(e) => report
                        .problems
                        .push(format!("volume {}: cannot unstage: {e}", s.key)),
                }
            }
        }
    }

    /// Mounts in moor's own directories that no record explains (the state dir was lost):
    /// adopt them so kubelet's unmount works, rather than trusting the journal alone.
    fn adopt_unrecorded(&self, report: &mut Reconstruction) {
        let table = match self.host.mounts.snapshot() {
            Ok(t) => t,
            Err(e) => {
                report
                    .problems
                    .push(format!("cannot read the mount table: {e}"));
                return;
            }
        };
        let stage_root = self.host.paths.stage_root();
        let pods_root = self.host.paths.kubelet_dir.join("pods");
        let mut stages = Vec::new();
        for m in table
            .iter()
            .filter(|m| m.mount_point.starts_with(&stage_root))
        {
            let Ok(rel) = m.mount_point.strip_prefix(&stage_root) else {
                continue;
            };
            let parts: Vec<String> = rel
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect();
            let [driver, key] = parts.as_slice() else {
                continue;
            };
            stages.push((m, driver.clone(), key.clone()));
            if self.state().stages.contains_key(key) || self.drivers.get(driver).is_none() {
                continue;
            }
            let source = if m.source.starts_with("/dev/") {
                StageSource::Block {
                    device: m.source.clone().into(),
                }
            } else {
                StageSource::Directory {
                    path: m.root.clone(),
                }
            };
            let rec = StageRecord {
                key: key.clone(),
                driver: driver.clone(),
                source,
                options: Default::default(),
                fs_type: Some(m.fs_type.clone()),
                fs_uuid: None,
                read_only: m.is_read_only(),
                phase: StagePhase::Staged,
                formatted_by_moor: false,
            };
            if self.journal.put_stage(&rec).is_ok() {
                self.state().stages.insert(key.clone(), rec);
                report.adopted += 1;
            }
        }
        for m in table
            .iter()
            .filter(|m| m.mount_point.starts_with(&pods_root))
        {
            if self.state().publishes.contains_key(&m.mount_point) {
                continue;
            }
            let Ok(dir) = self
                .host
                .paths
                .pod_volume_dir(&m.mount_point.to_string_lossy(), None)
            else {
                continue;
            };
            let Some((_, driver, key)) = stages.iter().find(|(s, d, _)| {
                (s.major, s.minor) == (m.major, m.minor) && s.root == m.root && *d == dir.driver
            }) else {
                continue;
            };
            let rec = PublishRecord {
                target: m.mount_point.clone(),
                key: key.clone(),
                driver: driver.clone(),
                pod_uid: dir.pod_uid,
                volume_name: dir.volume_name,
                namespace: None,
                read_only: m.is_read_only(),
                phase: PublishPhase::Published,
            };
            if self.journal.put_publish(&rec).is_ok() {
                self.state().put_publish(rec);
                report.adopted += 1;
            }
        }
    }

    /// Published pod dirs whose bind vanished while the stage is healthy: bind them again.
    /// Returns how many were restored. Callers that run beside kubelet's operations (the
    /// reconciler) must use [`Lifecycle::vanished_publishes`] and
    /// [`Lifecycle::restore_publish`] under the volume's lock instead.
    pub fn heal_publishes(&self) -> usize {
        self.vanished_publishes()
            .iter()
            .filter(|(_, target)| self.restore_publish(target))
            .count()
    }

    /// Candidates for [`Lifecycle::restore_publish`]: (volume key, pod dir) of published
    /// records whose pod dir is not a mount point now.
    pub fn vanished_publishes(&self) -> Vec<(String, PathBuf)> {
        let publishes: Vec<PublishRecord> = self
            .state()
            .publishes
            .values()
            .filter(|p| p.phase == PublishPhase::Published)
            .cloned()
            .collect();
        publishes
            .into_iter()
            .filter(|p| !self.is_mount_point(&p.target).unwrap_or(true))
            .map(|p| (p.key, p.target))
            .collect()
    }

    /// Binds a published pod dir again if, checked now, its record is still `Published`,
    /// the bind is gone, the directory exists and the stage is mounted. The caller holds
    /// the volume's lock, so an unpublish cannot be under way (it would be undone).
    pub fn restore_publish(&self, target: &Path) -> bool {
        let Some(p) = self.state().publishes.get(target).cloned() else {
            return false;
        };
        if p.phase != PublishPhase::Published
            || self.is_mount_point(&p.target).unwrap_or(true)
            || !p.target.is_dir()
        {
            return false;
        }
        let stage_path = self.stage_path(&p.driver, &p.key);
        if !self.is_mount_point(&stage_path).unwrap_or(false) {
            return false;
        }
        match self.host.mounter.bind(&stage_path, &p.target, p.read_only) {
            Ok(()) => {
                tracing::warn!(volume = %p.key, target = %p.target.display(), "bind had vanished; restored");
                true
            }
            Err(e) => {
                tracing::error!(volume = %p.key, target = %p.target.display(), error = %e, "cannot restore bind");
                false
            }
        }
    }

    /// Staged network filesystems, for the stale-mount probe: key, driver, stage path, mount.
    pub fn remote_stages(&self) -> Vec<RemoteStage> {
        self.state()
            .stages
            .values()
            .filter(|s| s.phase == StagePhase::Staged)
            .filter_map(|s| match &s.source {
                StageSource::Remote(r) => Some(RemoteStage {
                    key: s.key.clone(),
                    driver: s.driver.clone(),
                    stage_path: self.stage_path(&s.driver, &s.key),
                    remote: r.clone(),
                }),
                _ => None,
            })
            .collect()
    }

    /// Heals a staged share whose mount died (or vanished): lazily detaches every pod bind
    /// and the stage, mounts the export again and binds every pod directory again, ro where
    /// the pod asked. Returns the number of pod directories bound again. The caller holds the
    /// volume's lock. Lazy detaches never block on the dead server; processes still inside
    /// the old mount keep their (dead) view until they reopen.
    pub fn heal_remote(&self, key: &str) -> Result<usize, Error> {
        let Some(rec) = self.state().stages.get(key).cloned() else {
            return Ok(0);
        };
        let StageSource::Remote(remote) = &rec.source else {
            return Ok(0);
        };
        if rec.phase != StagePhase::Staged {
            return Ok(0);
        }
        let stage_path = self.stage_path(&rec.driver, key);
        let pods: Vec<PublishRecord> = {
            let st = self.state();
            st.users
                .get(key)
                .into_iter()
                .flatten()
                .filter_map(|t| st.publishes.get(t))
                .filter(|p| p.phase == PublishPhase::Published)
                .cloned()
                .collect()
        };
        for p in &pods {
            self.detach_dead(&p.target, key)?;
        }
        self.detach_dead(&stage_path, key)?;
        self.mount_remote(key, remote, &stage_path)?;
        let mut rebound = 0;
        for p in &pods {
            if !p.target.is_dir() {
                continue;
            }
            self.host
                .mounter
                .bind(&stage_path, &p.target, p.read_only)
                .map_err(Self::mount_err(key))?;
            rebound += 1;
        }
        tracing::warn!(volume = key, driver = %rec.driver, server = %remote.server, rebound, "stale mount healed: export mounted again and pod directories bound again");
        Ok(rebound)
    }

    /// Lazily unmounts every mount stacked on `path` (moor's own stage or bind, by record).
    fn detach_dead(&self, path: &Path, key: &str) -> Result<(), Error> {
        for _ in 0..8 {
            match self.host.mounts.path_mount(path) {
                Ok(m) if !m.is_mount_root => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) if !is_dead_mount_error(&e) => {
                    return Err(Error::Io {
                        what: "statx",
                        path: path.into(),
                        source: e,
                    });
                }
                _ => {}
            }
            match self.host.mounter.unmount(path, true, self.timeouts.unmount) {
                Ok(()) => {}
                Err(e) if e.errno() == Some(Errno::EINVAL) => return Ok(()),
                Err(e) => return Err(Self::mount_err(key)(e)),
            }
        }
        Ok(())
    }

    /// Stage mounts with every publish of each (in target order), for volume statistics.
    pub fn staged_volumes(&self) -> Vec<(StageRecord, PathBuf, Vec<PublishRecord>)> {
        let st = self.state();
        st.stages
            .values()
            .filter(|s| s.phase == StagePhase::Staged)
            .map(|s| {
                let users = st
                    .users
                    .get(&s.key)
                    .into_iter()
                    .flatten()
                    .filter_map(|t| st.publishes.get(t))
                    .cloned()
                    .collect();
                (s.clone(), self.stage_path(&s.driver, &s.key), users)
            })
            .collect()
    }

    /// Drops an idle volume's record: moor forgets the filesystem it saw there (an operator
    /// who wiped the disk on purpose and wants it formatted again). Refused while staged.
    pub fn forget(&self, key: &str) -> Result<bool, Error> {
        let Some(rec) = self.state().stages.get(key).cloned() else {
            return Ok(false);
        };
        if rec.phase != StagePhase::Idle || self.state().user_count(key) > 0 {
            return Err(Error::TargetBusy {
                target: self.stage_path(&rec.driver, key),
                detail: format!(
                    "volume {key} is {:?}, not idle: unmount it first",
                    rec.phase
                )
                .to_lowercase(),
            });
        }
        self.journal.remove_stage(key)?;
        self.state().stages.remove(key);
        tracing::warn!(volume = key, "forgotten on request");
        Ok(true)
    }

    /// Count of staged volumes and publishes, for gauges.
    pub fn counts(&self) -> (usize, usize) {
        let st = self.state();
        let staged = st
            .stages
            .values()
            .filter(|s| s.phase == StagePhase::Staged)
            .count();
        (staged, st.publishes.len())
    }

    /// The volume table for `moor status`.
    pub fn status(&self) -> Vec<VolumeStatus> {
        let st = self.state();
        let mut out: Vec<VolumeStatus> = st
            .stages
            .values()
            .map(|s| {
                let (device, source) = match &s.source {
                    StageSource::Block { device }
                    | StageSource::Attached {
                        device: Some(device),
                    } => (
                        Some(device.display().to_string()),
                        device.display().to_string(),
                    ),
                    StageSource::Attached { device: None } => (None, "(attaching)".into()),
                    StageSource::Directory { path } => (None, path.display().to_string()),
                    StageSource::Remote(r) => (None, format!("{} ({})", r.source, r.fs_type)),
                };
                let pods = st
                    .users
                    .get(&s.key)
                    .into_iter()
                    .flatten()
                    .filter_map(|t| st.publishes.get(t))
                    .map(|p| PodUse {
                        pod_uid: p.pod_uid.clone(),
                        namespace: p.namespace.clone(),
                        target: p.target.display().to_string(),
                        read_only: p.read_only,
                        phase: format!("{:?}", p.phase).to_lowercase(),
                    })
                    .collect();
                VolumeStatus {
                    driver: s.driver.clone(),
                    key: s.key.clone(),
                    state: format!("{:?}", s.phase).to_lowercase(),
                    device,
                    source,
                    fs_type: s.fs_type.clone(),
                    stage_path: self.stage_path(&s.driver, &s.key).display().to_string(),
                    pods,
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.driver, &a.key).cmp(&(&b.driver, &b.key)));
        out
    }
}

fn make_dir(p: &Path, mode: u32) -> Result<(), Error> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(p)
        .map_err(|source| Error::Io {
            what: "mkdir",
            path: p.into(),
            source,
        })
}

/// `rmdir`, never a recursive removal; a non-empty or mounted directory stays.
fn remove_empty_dir(p: &Path) {
    match std::fs::remove_dir(p) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::debug!(path = %p.display(), error = %e, "directory left in place"),
    }
}

/// Gives the volume root to `gid` (group rwx + setgid, as kubelet's fsGroup does) only when
/// it differs: one chown/chmod of the root, never a recursive walk. Returns whether it changed.
pub fn apply_fs_group(root: &Path, gid: u32) -> std::io::Result<bool> {
    let md = std::fs::symlink_metadata(root)?;
    let wanted_bits = 0o2070;
    if md.gid() == gid && md.mode() & wanted_bits == wanted_bits {
        return Ok(false);
    }
    std::os::unix::fs::lchown(root, None, Some(gid))?;
    let mode = (md.mode() & 0o7777) | wanted_bits;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(mode))?;
    Ok(true)
}

mod expand;
pub use expand::ExpandError;

#[cfg(test)]
mod tests;
