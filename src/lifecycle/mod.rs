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
//! - directories are removed with `rmdir` only, after checking they are not mount points;
//! - no protocol is named here: the driver's typed volume passes through opaque (the stage
//!   record keeps it), and attach, detach and capacity refresh are the driver's.
//!
//! Callers serialise operations per volume key (the daemon's executor does); the methods
//! here only take the short internal state lock.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::error::Error;
use crate::host::allow::Resolved;
use crate::host::devid::IdSources;
use crate::host::mounts::is_dead_mount_error;
use crate::host::{Errno, Host, PathError, PodVolumeDir, Target};
use crate::journal::{Journal, PublishPhase, PublishRecord, StageSource};
use crate::volume::{Driver, Drivers, NodeContext, VolumeOptions, VolumeSpec};
pub use csi::CsiVolume;

pub mod csi;
mod devices;
mod expand;
mod guard;
mod heal;
mod health;
pub mod orphans;
pub mod owned;
mod publish;
mod reconstruct;
mod stage;
mod state;
mod status;

pub use crate::error::ExpandError;
pub use heal::{Healed, RemoteStage};

use publish::bind_flags;
pub use reconstruct::Reconstruction;
use state::State;
pub use status::VolumeView;

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

/// A validated stage request (FlexVolume's mount, or a CSI NodeStageVolume), ready to run
/// under its volume's lock.
pub struct StagePlan {
    driver: Arc<dyn Driver>,
    opts: VolumeOptions,
    spec: VolumeSpec,
    /// The local source the driver resolved, held open: the stage mounts this object.
    held: Option<Resolved>,
    /// What a CSI stage was asked with (recorded on the stage); `None` for FlexVolume.
    csi: Option<crate::journal::CsiStage>,
}

impl StagePlan {
    /// The volume key (what the caller locks).
    pub fn key(&self) -> &str {
        &self.spec.key
    }
}

/// A validated mount request, ready to run under its volume's lock.
pub struct MountPlan {
    stage: StagePlan,
    target: PodVolumeDir,
}

/// A mount is a stage and a target: the stage steps read the stage's part of it directly.
impl std::ops::Deref for MountPlan {
    type Target = StagePlan;
    fn deref(&self) -> &StagePlan {
        &self.stage
    }
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

/// What [`Lifecycle::existing_publish`] found at a pod directory.
enum Existing {
    /// moor's own bind of the volume is there.
    Done,
    /// Publish, over this earlier record if any.
    Proceed(Option<Box<PublishRecord>>),
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
    /// Notices and this node's pods (offline until the daemon finds credentials).
    cluster: crate::cluster::Cluster,
    /// Pods still holding a healed share's dead mount, as the reconciler last found them.
    dead_mounts: Mutex<Vec<crate::api::DeadMount>>,
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
            cluster: crate::cluster::Cluster::offline(),
            dead_mounts: Mutex::new(Vec::new()),
        }
    }

    /// A lifecycle on node `node-a` over a fake host and its journal, serving `drivers`
    /// (for the daemon's unit tests).
    #[cfg(test)]
    pub(crate) fn over_fake(fake: &crate::host::fake::FakeHost, drivers: Drivers) -> Self {
        let paths = &fake.host.paths;
        let journal = Journal::open(&paths.state_dir, &paths.run_dir).unwrap();
        Lifecycle::new(
            fake.host.clone(),
            journal,
            drivers,
            "node-a".into(),
            Timeouts::default(),
        )
    }

    /// Reads block device identities (for the device claims of block stages) from `ids`:
    /// the same sources the local driver serving them reads.
    pub fn with_id_sources(mut self, ids: IdSources) -> Self {
        self.ids = ids;
        self
    }

    /// Runs FUSE mount helpers under `systemd-run --scope`, so the FUSE daemon outlives a
    /// restart of moor's own unit.
    pub fn with_fuse_scope(mut self, on: bool) -> Self {
        self.fuse_scope = on;
        self
    }

    /// Reports notices to, and asks about pods through, `cluster`.
    pub fn with_cluster(mut self, cluster: crate::cluster::Cluster) -> Self {
        self.cluster = cluster;
        self
    }

    /// Notices and this node's pods.
    pub fn cluster(&self) -> &crate::cluster::Cluster {
        &self.cluster
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
        options: &VolumeOptions,
    ) -> Result<MountPlan, Error> {
        let driver = self.driver(driver)?;
        let target = self
            .host
            .paths
            .pod_volume_dir(target, Some(driver.name()))?;
        let stage = self.plan_stage(driver, options)?;
        Ok(MountPlan { stage, target })
    }

    /// Resolves `options` into the driver's typed volume (and, for a local source, the
    /// object held open); no side effects.
    fn plan_stage(
        &self,
        driver: Arc<dyn Driver>,
        options: &VolumeOptions,
    ) -> Result<StagePlan, Error> {
        // Typed by the front end's parse; the driver checks its own keys in `volume()`.
        let opts = options.clone();
        let (mut spec, held) = driver.resolve_volume(&self.node, &opts)?;
        if let Some(h) = &held {
            self.known_local_source(driver.name(), &mut spec, h)?;
        }
        if matches!(spec.source, StageSource::Directory { .. }) {
            bind_flags(&spec.key, &spec.mount_options.joined())?;
        }
        Ok(StagePlan {
            driver,
            opts,
            spec,
            held,
            csi: None,
        })
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
        let previous = match self.existing_publish(target, &plan.spec.key)? {
            Existing::Done => return Ok(MountOutcome::AlreadyPublished),
            Existing::Proceed(p) => p,
        };
        let stage = self.stage(plan)?;
        let earlier = previous.and_then(|p| p.mount_id);
        if let Err(e) = self.publish(&plan.target, &plan.opts, &stage, earlier, false) {
            // Marked before trying: if the unstage cannot run now (a publish record that
            // could not be removed still counts as a user, a journal write fails), the
            // reconciler finishes it once the pod dir's record is gone.
            self.state().mark_unstage(&plan.spec.key, None);
            if self.state().user_count(&plan.spec.key) == 0
                && let Err(u) = self.unstage(&plan.spec.key)
            {
                tracing::error!(volume = %plan.spec.key, error = %crate::error::Chain(&u), "rollback of the stage failed; the reconciler retries it");
            }
            return Err(e);
        }
        Ok(MountOutcome::Published)
    }

    /// What is at a pod directory before a publish of volume `key` there: moor's own bind
    /// of it already (done: nothing to do), or nothing in the way (go ahead, with the earlier
    /// record if there is one); another volume's publish or a mount moor did not make is
    /// refused.
    fn existing_publish(&self, target: &Path, key: &str) -> Result<Existing, Error> {
        let existing = self.state().publishes.get(target).cloned();
        let previous = existing.clone();
        match existing {
            Some(p) if p.key != key => {
                return Err(Error::TargetBusy {
                    target: target.into(),
                    detail: format!("already publishes volume {}", p.key),
                });
            }
            Some(p) if p.phase == PublishPhase::Published && self.is_mount_point(target)? => {
                // Success only for moor's own bind: under a mount stacked on it (or put in
                // its place) the pod would see someone else's filesystem. Both stay as they
                // are; kubelet's retry succeeds once the other mount is gone.
                if !self.is_our_bind(&p) {
                    tracing::warn!(volume = %p.key, target = %target.display(), "a mount moor did not make is on a published pod directory");
                    return Err(Error::NotOwned {
                        target: target.into(),
                        detail: "the mount on the pod directory is not the bind moor made; remove the other mount and retry".into(),
                    });
                }
                return Ok(Existing::Done);
            }
            Some(mut p) if self.is_mount_point(target)? && self.is_our_bind(&p) => {
                // Our bind is still there (an unmount that failed half-way, a crash before
                // the Published record): kubelet wants it mounted, so it simply is.
                p.phase = PublishPhase::Published;
                self.journal.put_publish(&p)?;
                self.state().put_publish(p);
                return Ok(Existing::Done);
            }
            Some(_) => {}
            None => {
                if self.is_mount_point(target)? {
                    return Err(Error::TargetBusy {
                        target: target.into(),
                        detail: "already a mount point that moor did not make".into(),
                    });
                }
            }
        }
        Ok(Existing::Proceed(previous.map(Box::new)))
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
                    e.raw_os_error().map(Errno::from_raw),
                    Some(Errno::ELOOP | Errno::ENOTDIR | Errno::EXDEV)
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

    fn mount_err(volume: &str) -> impl Fn(crate::host::MountError) -> Error + '_ {
        move |source| Error::Mount {
            volume: volume.into(),
            source,
        }
    }

    fn stage_path(&self, rec_driver: &str, key: &str) -> PathBuf {
        self.host.paths.stage_dir(rec_driver, key)
    }
}

#[cfg(test)]
mod tests;
