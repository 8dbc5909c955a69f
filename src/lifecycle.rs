//! The attach → stage → publish state machine and its inverse, with reference counting
//! (one stage per volume key, one publish per pod directory) and reconstruction.
//!
//! Invariants:
//! - every side effect is preceded by a journal record of the intent, and every step is
//!   idempotent, so a crash anywhere is finished or undone by [`Lifecycle::reconstruct`];
//! - a failed mount leaves nothing behind that it created (rollback), and never formats;
//! - moor unmounts only what [`owned::may_unmount`] says it made (by recorded mount id);
//! - pod and stage directories are reached through fds opened once beneath the kubelet dir
//!   (`host::target`), never through a path walked again;
//! - directories are removed with `rmdir` only, after checking they are not mount points.
//!
//! Callers serialise operations per volume key (the daemon's executor does); the methods
//! here only take the short internal state lock.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::errno::Errno;

use crate::api::{PodUse, VolumeStatus};
use crate::driver::{Driver, Drivers, NodeContext, VolumeSpec};
use crate::error::Error;
use crate::flexvolume::VolumeOptions;
use crate::fs::{self, Prepared, format::FormatRequest};
use crate::host::allow::{AllowList, Resolved, SourceObject};
use crate::host::mounts::{is_dead_mount_error, split_options};
use crate::host::{FsMount, Host, PathError, PodVolumeDir, Target};
use crate::journal::{
    Journal, MountId, PublishPhase, PublishRecord, RemoteMount, StagePhase, StageRecord,
    StageSource,
};
use crate::local::discover::IdSources;
use crate::share;
use crate::testhook::pause_point;
use owned::{Found, Place, UnmountFacts, Verdict};

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
    /// The local source the driver resolved, held open: the stage mounts this object.
    held: Option<Resolved>,
}

/// Stage record options that name the staged block device: its number now and its stable
/// id, so two volume keys (two portals of one LUN, two spellings of one disk) cannot stage
/// one device twice.
const DEVICE_NUMBER: &str = "device-number";
/// See [`DEVICE_NUMBER`].
const DEVICE_STABLE_ID: &str = "device-stable-id";

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
    /// Journal entries set aside by the last reconstruction.
    set_aside: Vec<crate::journal::Problem>,
    /// Stages the lifecycle decided to unstage and has not yet (a journal write or a step
    /// failed), with the pod dirs whose unmount led there. The reconciler finishes them, and
    /// kubelet's retry on one of those pod dirs retries the unstage (see `unmount`).
    unstage_pending: HashMap<String, BTreeSet<PathBuf>>,
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

    fn mark_unstage(&mut self, key: &str, target: Option<&Path>) {
        let t = self.unstage_pending.entry(key.to_owned()).or_default();
        if let Some(target) = target {
            t.insert(target.to_owned());
        }
    }

    fn pending_key_of(&self, target: &Path) -> Option<String> {
        self.unstage_pending
            .iter()
            .find(|(_, t)| t.contains(target))
            .map(|(k, _)| k.clone())
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
    /// Held while a stage checks that no other volume holds its device and records that it
    /// does, so two stages of one device under two keys cannot both pass the check.
    device_claims: Mutex<()>,
    /// Where block device identities are read.
    ids: IdSources,
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
        let ids = IdSources {
            dev_dir: host.paths.dev.clone(),
            udev_dir: "/run/udev/data".into(),
            sys: host.paths.sys.clone(),
        };
        Lifecycle {
            host,
            journal,
            drivers,
            node,
            timeouts,
            fuse_scope: false,
            state: Mutex::new(State::default()),
            device_claims: Mutex::new(()),
            ids,
        }
    }

    /// Serves local sources from `allow` (its directories and devices), reading device
    /// identities from `ids`. kubelet's dir, moor's state and run dirs and the kernel's
    /// `/proc`, `/sys` and `/dev` are refused whatever `allow` says.
    pub fn with_local_sources(mut self, mut allow: AllowList, ids: IdSources) -> Self {
        let p = &self.host.paths;
        allow.refused.extend(
            [
                Some(&p.kubelet_dir),
                p.kubelet_alias.as_ref(),
                Some(&p.state_dir),
                Some(&p.run_dir),
                Some(&p.proc),
                Some(&p.sys),
                Some(&p.dev),
            ]
            .into_iter()
            .flatten()
            .cloned(),
        );
        allow.proc = p.proc.clone();
        self.ids = ids.clone();
        self.drivers.add(Arc::new(crate::local::LocalDriver {
            sources: crate::local::driver::LocalSources {
                allow: Arc::new(allow),
                ids,
            },
        }));
        self
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

    /// Where block device identities are read.
    pub fn id_sources(&self) -> &IdSources {
        &self.ids
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
        // The front end ran the same check; running it here too keeps one answer for
        // callers that skip the front end (CSI, a hand-made request).
        let opts = crate::flexvolume::precheck(driver.name(), options, &self.node.node_name)
            .map_err(crate::driver::DriverError::from)?;
        let (mut spec, held) = driver.resolve_volume(&self.node, &opts)?;
        if let Some(h) = &held {
            self.known_local_source(driver.name(), &mut spec, h)?;
        }
        if matches!(spec.source, StageSource::Directory { .. }) {
            bind_flags(&spec.key, &spec.mount_options)?;
        }
        Ok(MountPlan {
            driver,
            target,
            opts,
            spec,
            held,
        })
    }

    /// Reconciles a resolved local source with the records: a record of the same object
    /// under another key (written by a version that keyed local volumes by the path text)
    /// keeps serving it, so its stage is shared and what moor remembers of it still counts;
    /// a name moor staged one disk under that now names another disk is refused.
    fn known_local_source(
        &self,
        driver: &str,
        spec: &mut VolumeSpec,
        held: &Resolved,
    ) -> Result<(), Error> {
        let ours = match held.object {
            SourceObject::Block(dev) => {
                Some(crate::local::driver::device_stable_id(&self.ids, dev))
            }
            SourceObject::Directory { .. } => None,
        };
        let text = spec.persist.get("path").cloned().unwrap_or_default();
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
            let named_here = r.options.get("path") == Some(&text)
                || r.source
                    .block_device()
                    .is_some_and(|d| d.as_os_str() == text.as_str());
            if let (Some(now), true, Some(_)) = (&ours, named_here, &r.fs_type) {
                let before = r
                    .options
                    .get(DEVICE_STABLE_ID)
                    .map_or("(recorded by an earlier moor)", String::as_str);
                let known = r
                    .known_filesystem()
                    .map(|f| format!(", filesystem {f}"))
                    .unwrap_or_default();
                return Err(crate::driver::DriverError::NameMoved {
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
    fn same_object(&self, r: &StageRecord, held: SourceObject, ours: Option<&str>) -> bool {
        match (&r.source, held) {
            (StageSource::Directory { path }, SourceObject::Directory { dev, ino }) => {
                std::fs::metadata(path).is_ok_and(|m| m.dev() == dev && m.ino() == ino)
            }
            (StageSource::Block { device }, SourceObject::Block(d)) => {
                match (
                    r.options.get(DEVICE_STABLE_ID),
                    ours,
                    r.options.get(DEVICE_NUMBER),
                ) {
                    (Some(id), Some(o), _) => id == o,
                    (_, _, Some(n)) => *n == d.to_string(),
                    _ => self.host.blockdev.dev_num(device).ok().flatten() == Some(d),
                }
            }
            _ => false,
        }
    }

    /// The key a pod directory is published from, if moor has a record of it.
    pub fn key_of(&self, target: &Path) -> Option<String> {
        let st = self.state();
        st.publishes
            .get(target)
            .map(|p| p.key.clone())
            .or_else(|| st.pending_key_of(target))
    }

    /// attach + stage + publish. Idempotent; on failure undoes what it did.
    pub fn mount(&self, plan: &MountPlan) -> Result<MountOutcome, Error> {
        let target = &plan.target.path;
        let existing = self.state().publishes.get(target).cloned();
        let previous = existing.clone();
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
            Some(mut p) if self.is_mount_point(target)? && self.is_our_bind(&p) => {
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
        if let Err(e) = self.publish(plan, &stage, previous.and_then(|p| p.mount_id)) {
            // Marked before trying: if the unstage cannot run now (a publish record that
            // could not be removed still counts as a user, a journal write fails), the
            // reconciler finishes it once the pod dir's record is gone.
            self.state().mark_unstage(&plan.spec.key, None);
            if self.state().user_count(&plan.spec.key) == 0
                && let Err(u) = self.unstage(&plan.spec.key)
            {
                tracing::error!(volume = %plan.spec.key, error = %u, "rollback of the stage failed; the reconciler retries it");
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

    /// Opens a pod or stage directory once, beneath the kubelet dir with no symlink on the
    /// way (see [`crate::host::target`]); `None` when it (or a parent) does not exist.
    fn open_target(&self, path: &Path, create: bool) -> Result<Option<Target>, Error> {
        match self.host.mounts.open_target(path, create) {
            Ok(t) => Ok(Some(t)),
            Err(e) if !create && e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ELOOP | libc::ENOTDIR | libc::EXDEV)
                ) =>
            {
                Err(Error::Path(PathError::Symlink {
                    path: path.display().to_string(),
                    component: format!("a component of it ({e})"),
                }))
            }
            Err(source) => Err(Error::Io {
                what: "open",
                path: path.into(),
                source,
            }),
        }
    }

    /// What is mounted on a held target now.
    fn found_at(&self, t: &Target) -> Result<Found, Error> {
        match self.host.mounts.target_mount(t) {
            Ok(m) if m.is_mount_root => Ok(Found::Mount(m)),
            Ok(_) => Ok(Found::Nothing),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Found::Nothing),
            Err(e) if is_dead_mount_error(&e) => Ok(Found::Dead),
            Err(source) => Err(Error::Io {
                what: "statx",
                path: t.path().into(),
                source,
            }),
        }
    }

    /// The facts [`owned::may_unmount`] decides on, gathered now.
    fn unmount_facts<'a>(
        &self,
        t: &'a Target,
        place: Place,
        recorded: bool,
        mount_id: Option<MountId>,
        stage_path: Option<&Path>,
    ) -> Result<UnmountFacts<'a>, Error> {
        let found = self.found_at(t)?;
        let stage_now = match (place, mount_id, stage_path) {
            (Place::PodDir, None, Some(sp)) => self.host.mounts.path_mount(sp).ok(),
            _ => None,
        };
        Ok(UnmountFacts {
            path: t.path(),
            place,
            recorded,
            mount_id,
            found,
            stage_now,
        })
    }

    /// Every unmount moor does goes through here: it unmounts what is on `t` only when the
    /// ownership decision says it is moor's, and answers `not_owned` otherwise (the record
    /// stays). Returns whether something was unmounted.
    #[allow(clippy::too_many_arguments)]
    fn unmount_guarded(
        &self,
        t: &Target,
        place: Place,
        key: &str,
        recorded: bool,
        mount_id: Option<MountId>,
        stage_path: Option<&Path>,
        lazy: bool,
    ) -> Result<bool, Error> {
        let facts = self.unmount_facts(t, place, recorded, mount_id, stage_path)?;
        match owned::may_unmount(&facts) {
            Ok(Verdict::NothingMounted) => Ok(false),
            Ok(Verdict::Unmount) => {
                let lazy = lazy || facts.found == Found::Dead;
                match self
                    .host
                    .mounter
                    .unmount_target(t, lazy, self.timeouts.unmount)
                {
                    Ok(()) => Ok(true),
                    Err(e) if e.errno() == Some(Errno::EINVAL) => Ok(false),
                    Err(e) => Err(Self::mount_err(key)(e)),
                }
            }
            Err(refusal) => {
                tracing::warn!(volume = key, target = %t.path().display(), refusal = %refusal, "not unmounting a mount moor did not make");
                Err(Error::NotOwned {
                    target: t.path().into(),
                    detail: refusal.to_string(),
                })
            }
        }
    }

    /// True when the ownership decision would let moor unmount what is on `t`: the mount
    /// there is the one moor recorded.
    fn owns(
        &self,
        t: &Target,
        place: Place,
        mount_id: Option<MountId>,
        stage_path: Option<&Path>,
    ) -> bool {
        self.unmount_facts(t, place, true, mount_id, stage_path)
            .is_ok_and(|f| owned::may_unmount(&f) == Ok(Verdict::Unmount))
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
            options: plan.spec.persist.clone(),
            fs_type: previous.as_ref().and_then(|r| r.fs_type.clone()),
            fs_uuid: previous.as_ref().and_then(|r| r.fs_uuid.clone()),
            read_only: is_block && plan.opts.read_only,
            phase: StagePhase::Staging,
            formatted_by_moor: previous.as_ref().is_some_and(|r| r.formatted_by_moor),
            mount_id: None,
            adopted: false,
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
                let flags = bind_flags(key, &plan.spec.mount_options)?;
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

    /// The identity of the mount on a held target now (right after moor made it).
    fn mount_id_at(&self, t: &Target) -> Option<MountId> {
        match self.found_at(t) {
            Ok(Found::Mount(m)) => Some(m.into()),
            _ => None,
        }
    }

    fn stage_block(
        &self,
        plan: &MountPlan,
        device: &Path,
        held: &Target,
        rec: &mut StageRecord,
    ) -> Result<(), Error> {
        let key = plan.spec.key.as_str();
        self.claim_device(key, device, rec)?;
        let stage_path = held.path();
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

    /// Records in `rec` (journal first) that this stage holds `device`, unless another
    /// volume's stage record (staging or staged) already holds it: then `device_in_use`,
    /// naming that volume. Check and record happen under one lock, and the record is the
    /// claim from then on, until the unstage or the rollback moves it out of those phases.
    fn claim_device(&self, key: &str, device: &Path, rec: &mut StageRecord) -> Result<(), Error> {
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
        let stable = crate::local::driver::device_stable_id(&self.ids, dev);
        let _claims = self.device_claims.lock().unwrap_or_else(|p| p.into_inner());
        let holder = device_holder(self.state().stages.values(), key, dev, &stable, |d| {
            self.host.blockdev.dev_num(d).ok().flatten()
        });
        if let Some(other) = holder {
            return Err(in_use(format!(
                "device {dev} ({stable}) is staged by volume {other}"
            )));
        }
        rec.options.insert(DEVICE_NUMBER.into(), dev.to_string());
        rec.options.insert(DEVICE_STABLE_ID.into(), stable);
        self.journal.put_stage(rec)?;
        self.state().stages.insert(key.into(), rec.clone());
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

    fn rollback_stage(
        &self,
        plan: &MountPlan,
        stage_path: &Path,
        rec: &StageRecord,
        previous: Option<StageRecord>,
    ) {
        let key = plan.spec.key.as_str();
        let held = self.open_target(stage_path, false);
        let unmounted = match &held {
            Ok(Some(t)) => {
                self.unmount_guarded(t, Place::Stage, key, true, rec.mount_id, None, false)
            }
            Ok(None) => Ok(false),
            Err(e) => Err(Error::Internal(e.to_string())),
        };
        if let Err(e) = unmounted {
            tracing::error!(volume = key, error = %e, "rollback: cannot unmount the stage; record kept");
            return;
        }
        if let Ok(Some(t)) = &held {
            remove_empty_target(t);
        }
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
            // The journal still says Staging: so does memory, and the reconciler finishes
            // this undo (unmount and detach are idempotent) once the journal is writable.
            tracing::error!(volume = key, error = %e, "rollback: journal update failed; the reconciler retries it");
            self.state().stages.insert(key.into(), rec.clone());
            return;
        }
        let mut st = self.state();
        match keep {
            Some(r) => st.stages.insert(key.into(), r),
            None => st.stages.remove(key),
        };
    }

    fn publish(
        &self,
        plan: &MountPlan,
        stage: &StageRecord,
        earlier: Option<MountId>,
    ) -> Result<(), Error> {
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
            mount_id: earlier,
        };
        self.journal.put_publish(&rec)?;
        self.state().put_publish(rec.clone());
        pause_point("publish:intent");
        let mut made: Option<MountId> = None;
        let mut held: Option<Target> = None;
        let mut steps = || -> Result<(), Error> {
            let t = self
                .open_target(target, true)?
                .ok_or_else(|| Error::Internal(format!("{} vanished", target.display())))?;
            let t = held.insert(t);
            // Our own earlier, interrupted bind (the record says so): redo it cleanly.
            self.unmount_guarded(
                t,
                Place::PodDir,
                &stage.key,
                true,
                earlier,
                Some(&stage_path),
                false,
            )?;
            let source = self
                .open_target(&stage_path, false)?
                .ok_or_else(|| Error::Internal(format!("{} vanished", stage_path.display())))?;
            let flags = if plan.opts.read_only {
                nix::mount::MsFlags::MS_RDONLY
            } else {
                nix::mount::MsFlags::empty()
            };
            let m = self
                .host
                .mounter
                .bind_target(&source, t, flags)
                .map_err(Self::mount_err(&stage.key))?;
            made = Some(m.into());
            pause_point("publish:bound-before-fsgroup");
            if let (Some(gid), false) = (plan.opts.fs_group, plan.opts.read_only) {
                // Through the stage moor checked, not the pod dir: whatever got stacked on
                // the pod dir since the bind is not moor's to chgrp.
                let changed = if source.parent().is_some() {
                    crate::host::target::fs_group(&source, gid)
                } else {
                    apply_fs_group(&stage_path, gid)
                };
                changed.map_err(|source| Error::Io {
                    what: "apply fsGroup to",
                    path: target.clone(),
                    source,
                })?;
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
            if still_mounted {
                rec.phase = PublishPhase::Unpublishing;
                rec.mount_id = made.or(earlier);
                let _ = self.journal.put_publish(&rec);
                self.state().put_publish(rec);
            } else if let Err(j) = self.journal.remove_publish(target) {
                // Nothing is bound, but the record stays until it can be removed (the
                // reconciler does it): memory keeps saying Publishing, as the journal does.
                tracing::error!(volume = %stage.key, target = %target.display(), error = %j, "rollback: publish record not removed; the reconciler retries it");
            } else {
                self.state().drop_publish(target);
            }
            return Err(e);
        }
        rec.phase = PublishPhase::Published;
        rec.mount_id = made;
        self.state().put_publish(rec);
        tracing::info!(volume = %stage.key, target = %target.display(), pod_uid = %plan.target.pod_uid, read_only = plan.opts.read_only, "published");
        Ok(())
    }

    /// True when the mount on `p`'s pod dir is the bind moor recorded for it.
    fn is_our_bind(&self, p: &PublishRecord) -> bool {
        let stage_path = self.stage_path(&p.driver, &p.key);
        matches!(self.open_target(&p.target, false), Ok(Some(t))
            if self.owns(&t, Place::PodDir, p.mount_id, Some(&stage_path)))
    }

    /// Refuses with `not_owned` when the stage's mount is not the one moor made: checked
    /// before the last pod's bind goes, so a refused unstage leaves the whole volume as it
    /// was and kubelet's retry can finish it once the other mount is gone.
    fn check_stage_owned(&self, key: &str) -> Result<(), Error> {
        let Some(rec) = self.state().stages.get(key).cloned() else {
            return Ok(());
        };
        let Some(t) = self.open_target(&self.stage_path(&rec.driver, key), false)? else {
            return Ok(());
        };
        let facts = self.unmount_facts(&t, Place::Stage, true, rec.mount_id, None)?;
        owned::may_unmount(&facts)
            .map(drop)
            .map_err(|refusal| Error::NotOwned {
                target: t.path().into(),
                detail: refusal.to_string(),
            })
    }

    /// unpublish, then unstage + detach when no publish remains. Idempotent: a directory
    /// that is not mounted is Success.
    pub fn unmount(&self, driver: Option<&str>, target: &str) -> Result<UnmountOutcome, Error> {
        let dir = self.host.paths.pod_volume_dir(target, driver)?;
        let target = dir.path;
        let held = self.open_target(&target, false)?;
        let Some(mut rec) = self.state().publishes.get(&target).cloned() else {
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
        let stage_path = self.stage_path(&rec.driver, &rec.key);
        if self.state().user_count(&rec.key) <= 1 {
            self.check_stage_owned(&rec.key)?;
        }
        if let Some(t) = &held {
            let facts =
                self.unmount_facts(t, Place::PodDir, true, rec.mount_id, Some(&stage_path))?;
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
        if let Some(t) = &held {
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
        if remaining > 0 {
            return Ok(UnmountOutcome::Unpublished);
        }
        self.state().mark_unstage(&rec.key, Some(&target));
        self.unstage(&rec.key)?;
        Ok(UnmountOutcome::Unstaged)
    }

    /// Unmounts the stage and detaches; removes the record.
    fn unstage(&self, key: &str) -> Result<(), Error> {
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
                    tracing::warn!(volume = key, error = %e, "unmount of the share failed; detaching it lazily");
                    self.unmount_guarded(t, Place::Stage, key, true, rec.mount_id, None, true)?;
                }
                Err(e) => return Err(e),
            }
        }
        pause_point("unstage:unmounted");
        if let Some(t) = &held {
            remove_empty_target(t);
        }
        let driver = self.driver(&rec.driver)?;
        driver.detach(&self.host, &rec)?;
        if rec.fs_type.is_some() {
            // A block volume stays remembered (idle) with the filesystem moor saw, so if it
            // ever looks blank later it is refused, not formatted. `moor forget` ends that.
            rec.phase = StagePhase::Idle;
            rec.mount_id = None;
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
                        "unusable record ({}) set aside at {}: {}",
                        p.reason,
                        p.path.display(),
                        p.detail
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
            st.set_aside = loaded.problems;
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
                if stage_ok && let Some(id) = self.bind_again(&p, &stage_path) {
                    p.mount_id = Some(id);
                    let _ = self.journal.put_publish(&p);
                    self.state().put_publish(p);
                    report.healed += 1;
                } else {
                    self.forget_publish(&p.target, report, "its bind is gone");
                }
            }
            PublishPhase::Publishing | PublishPhase::Unpublishing => {
                // kubelet never got Success for a Publishing record: undo it, kubelet retries.
                let undone = match self.open_target(&p.target, false) {
                    Ok(Some(t)) if mounted => self
                        .unmount_guarded(
                            &t,
                            Place::PodDir,
                            &p.key,
                            true,
                            p.mount_id,
                            Some(&stage_path),
                            false,
                        )
                        .map(drop),
                    Ok(_) => Ok(()),
                    Err(e) => Err(e),
                };
                if let Err(e) = undone {
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
            // Still on disk: kept in memory as Unpublishing, so the reconciler removes it
            // once the journal is writable (and the stage's user count stays true).
            let mut st = self.state();
            if let Some(p) = st.publishes.get(target).cloned() {
                st.put_publish(PublishRecord {
                    phase: PublishPhase::Unpublishing,
                    ..p
                });
            }
            return;
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
                if let Ok(Some(t)) = self.open_target(&stage_path, false) {
                    remove_empty_target(&t);
                }
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

    /// Volumes with a transition to finish: a stage or publish record in a transitional
    /// phase, or a stage the lifecycle decided to unstage and has not. A Staged stage with
    /// no pod is not one by itself (a publish under way holds it by the lock; CSI stages
    /// without publishing). The caller finishes each under its volume's lock.
    pub fn pending_transitions(&self) -> Vec<String> {
        let st = self.state();
        let mut keys: BTreeSet<String> = st
            .stages
            .values()
            .filter(|s| matches!(s.phase, StagePhase::Staging | StagePhase::Unstaging))
            .map(|s| s.key.clone())
            .collect();
        keys.extend(
            st.publishes
                .values()
                .filter(|p| p.phase != PublishPhase::Published)
                .map(|p| p.key.clone()),
        );
        keys.extend(
            st.unstage_pending
                .keys()
                .filter(|k| st.user_count(k) == 0)
                .cloned(),
        );
        keys.into_iter().collect()
    }

    /// Finishes or undoes `key`'s interrupted transitions exactly as start-up reconstruction
    /// does (the same code): half-done publishes are undone or finished, then a stage left
    /// with no pod in a transitional phase, or marked for unstage, is unstaged. The caller
    /// holds the volume's lock, so no kubelet call on it is under way.
    pub fn finish_pending(&self, key: &str) -> Reconstruction {
        let mut report = Reconstruction::default();
        let publishes: Vec<PublishRecord> = self
            .state()
            .publishes
            .values()
            .filter(|p| p.key == key && p.phase != PublishPhase::Published)
            .cloned()
            .collect();
        for p in publishes {
            // kubelet never got Success for it, or asked for its removal: once undone, the
            // stage it was the last user of goes too (as FlexVolume's unmount would).
            self.state().mark_unstage(key, Some(&p.target));
            self.reconstruct_publish(p, &mut report);
        }
        let (stage, marked, users) = {
            let st = self.state();
            (
                st.stages.get(key).cloned(),
                st.unstage_pending.contains_key(key),
                st.user_count(key),
            )
        };
        match stage {
            None => {
                self.state().unstage_pending.remove(key);
            }
            Some(s)
                if users == 0
                    && (matches!(s.phase, StagePhase::Staging | StagePhase::Unstaging)
                        || (marked && s.phase == StagePhase::Staged)) =>
            {
                self.reconstruct_stage(s, &mut report);
            }
            Some(s) if s.phase == StagePhase::Idle => {
                self.state().unstage_pending.remove(key);
            }
            Some(_) => {}
        }
        report
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
            // A bind of a directory has a mount root below its filesystem's root; a
            // filesystem that is also mounted anywhere moor did not make (the host's root
            // disk, above all) is not a disk moor staged either. Both are adopted as
            // directories, so expandfs, fsck and mkfs never touch their device.
            let foreign_too = table.iter().any(|o| {
                (o.major, o.minor) == (m.major, m.minor)
                    && !o.mount_point.starts_with(&stage_root)
                    && !o.mount_point.starts_with(&pods_root)
            });
            let source =
                if m.source.starts_with("/dev/") && m.root == Path::new("/") && !foreign_too {
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
                mount_id: self.mount_id_of_path(&m.mount_point),
                adopted: true,
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
                mount_id: self.mount_id_of_path(&m.mount_point),
            };
            if self.journal.put_publish(&rec).is_ok() {
                self.state().put_publish(rec);
                report.adopted += 1;
            }
        }
    }

    fn mount_id_of_path(&self, path: &Path) -> Option<MountId> {
        let t = self.open_target(path, false).ok().flatten()?;
        self.mount_id_at(&t)
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
        let Some(id) = self.bind_again(&p, &stage_path) else {
            return false;
        };
        let mut p = p;
        p.mount_id = Some(id);
        if let Err(e) = self.journal.put_publish(&p) {
            tracing::error!(volume = %p.key, target = %p.target.display(), error = %e, "bind restored, but its new mount id is not recorded");
        }
        tracing::warn!(volume = %p.key, target = %p.target.display(), "bind had vanished; restored");
        self.state().put_publish(p);
        true
    }

    /// Binds the stage onto an existing pod dir again (ro where the pod asked), through the
    /// held directories; returns the new bind's identity.
    fn bind_again(&self, p: &PublishRecord, stage_path: &Path) -> Option<MountId> {
        let run = || -> Result<MountId, Error> {
            let none = || Error::Internal("directory vanished".into());
            let t = self.open_target(&p.target, false)?.ok_or_else(none)?;
            let source = self.open_target(stage_path, false)?.ok_or_else(none)?;
            let flags = if p.read_only {
                nix::mount::MsFlags::MS_RDONLY
            } else {
                nix::mount::MsFlags::empty()
            };
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
                tracing::error!(volume = %p.key, target = %p.target.display(), error = %e, "cannot bind the pod directory again");
                None
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
            self.detach_dead(&p.target, Place::PodDir, key, p.mount_id)?;
        }
        self.detach_dead(&stage_path, Place::Stage, key, rec.mount_id)?;
        self.mount_remote(key, remote, &stage_path)?;
        if let Some(t) = self.open_target(&stage_path, false)? {
            let mut rec = rec.clone();
            rec.mount_id = self.mount_id_at(&t);
            self.journal.put_stage(&rec)?;
            self.state().stages.insert(key.into(), rec);
        }
        let mut rebound = 0;
        for p in pods {
            if !p.target.is_dir() {
                continue;
            }
            let id = self.bind_again(&p, &stage_path).ok_or_else(|| {
                Error::Internal(format!("cannot bind {} again", p.target.display()))
            })?;
            let mut p = p;
            p.mount_id = Some(id);
            self.journal.put_publish(&p)?;
            self.state().put_publish(p);
            rebound += 1;
        }
        tracing::warn!(volume = key, driver = %rec.driver, server = %remote.server, rebound, "stale mount healed: export mounted again and pod directories bound again");
        Ok(rebound)
    }

    /// Lazily detaches moor's own (dead) stage or bind at `path`, through the ownership
    /// decision: a mount stacked on it by someone else is refused, not removed.
    fn detach_dead(
        &self,
        path: &Path,
        place: Place,
        key: &str,
        mount_id: Option<MountId>,
    ) -> Result<(), Error> {
        let Some(t) = self.open_target(path, false)? else {
            return Ok(());
        };
        let stage = self.stage_path_of(key);
        self.unmount_guarded(&t, place, key, true, mount_id, stage.as_deref(), true)
            .map(drop)
    }

    fn stage_path_of(&self, key: &str) -> Option<PathBuf> {
        let st = self.state();
        st.stages.get(key).map(|r| self.stage_path(&r.driver, key))
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

    /// Journal entries the last reconstruction set aside, for `moor status`.
    pub fn set_aside(&self) -> Vec<crate::api::SetAsideRecord> {
        self.state()
            .set_aside
            .iter()
            .map(|p| crate::api::SetAsideRecord {
                path: p.path.display().to_string(),
                reason: p.reason.into(),
                detail: p.detail.clone(),
            })
            .collect()
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
        .find(|s| match s.options.get(DEVICE_NUMBER) {
            Some(n) => {
                *n == dev.to_string()
                    || s.options.get(DEVICE_STABLE_ID).map(String::as_str) == Some(stable)
            }
            None => s
                .source
                .block_device()
                .is_some_and(|d| dev_of(d) == Some(dev)),
        })
        .map(|s| s.key.clone())
}

/// `rmdir` through the held parent, never a recursive removal; a non-empty or mounted
/// directory stays.
fn remove_empty_target(t: &Target) {
    match t.remove_dir() {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::debug!(path = %t.path().display(), error = %e, "directory left in place")
        }
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

/// The generic flags of a directory volume's `mountOptions`, applied to its bind; anything
/// a bind cannot carry (filesystem options, `sync`, …) is refused by name, never dropped.
fn bind_flags(key: &str, options: &str) -> Result<nix::mount::MsFlags, Error> {
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

mod expand;
pub mod owned;
pub use expand::ExpandError;

#[cfg(test)]
mod tests;
