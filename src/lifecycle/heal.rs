//! Healing: a vanished pod bind is bound again, a dead share is detached lazily (through the
//! ownership decision), mounted again and every pod directory bound again. The caller holds
//! the volume's lock.

use std::path::{Path, PathBuf};

use super::*;
use crate::error::Error;
use crate::journal::{MountId, PublishPhase, PublishRecord, RemoteMount, StagePhase, StageSource};
use owned::Place;

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

impl Lifecycle {
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
            tracing::error!(volume = %p.key, target = %p.target.display(), error = %crate::error::Chain(&e), "bind restored, but its new mount id is not recorded");
        }
        tracing::warn!(volume = %p.key, target = %p.target.display(), "bind had vanished; restored");
        self.state().put_publish(p);
        true
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
    pub(super) fn detach_dead(
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

    pub(super) fn stage_path_of(&self, key: &str) -> Option<PathBuf> {
        let st = self.state();
        st.stages.get(key).map(|r| self.stage_path(&r.driver, key))
    }
}
