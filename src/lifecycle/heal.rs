//! Healing: a vanished pod bind is bound again; a dead share is detached lazily (through the
//! ownership decision), mounted again, and every pod directory bound again — or, for pods
//! whose containers receive propagation, the healed share is stacked on top of the dead
//! bind so the running containers see it. The caller holds the volume's lock.
//!
//! Invariant: every layer stacked is recorded (`PublishRecord::layers`) before the heal
//! returns, and every one is removed top down through the ownership decision before the
//! bind under it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::*;
use crate::error::Error;
use crate::journal::{MountId, PublishPhase, PublishRecord, RemoteMount, StagePhase, StageSource};
use owned::{Found, Place};

/// What a heal did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Healed {
    /// Pod directories whose dead bind was replaced by a new one.
    pub rebound: usize,
    /// Pod directories that got the healed share stacked on their dead bind.
    pub stacked: usize,
}

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

    /// The publishes of volume `key` that are `Published`.
    pub fn publishes_of(&self, key: &str) -> Vec<PublishRecord> {
        let st = self.state();
        st.users
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|t| st.publishes.get(t))
            .filter(|p| p.phase == PublishPhase::Published)
            .cloned()
            .collect()
    }

    /// The device of the stage's mount as recorded (for a dead share: the dead superblock
    /// that running containers may still hold after the heal).
    pub fn stage_dev(&self, key: &str) -> Option<(u32, u32)> {
        self.state()
            .stages
            .get(key)
            .and_then(|s| s.mount_id)
            .map(|m| m.dev)
    }

    /// Refuses (`not_owned`) when the mount on top of `key`'s stage dir now is of another
    /// filesystem than the one moor recorded there. The mount table answers for a dead or
    /// hung mount, which statx cannot: a share someone mounted over moor's stage dir is
    /// neither detached nor aborted by a heal, however dead it is. Returns the device of
    /// the mount checked (`None`: nothing mounted there, a record without a device, or a
    /// mount table that cannot be read, where the heal goes on as the ownership decision
    /// alone allows).
    pub fn check_stage_top(&self, key: &str) -> Result<Option<(u32, u32)>, Error> {
        let Some(rec) = self.state().stages.get(key).cloned() else {
            return Ok(None);
        };
        let Some(ours) = rec.mount_id.map(|m| m.dev) else {
            return Ok(None);
        };
        let path = self.stage_path(&rec.driver, key);
        let table = match self.host.mounts.snapshot() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(volume = key, error = %e, "cannot read the mount table; the stage's top mount is not checked");
                return Ok(None);
            }
        };
        let top = table.iter().rev().find(|m| m.mount_point == path);
        match top {
            Some(m) if (m.major, m.minor) != ours => Err(Error::NotOwned {
                target: path,
                detail: format!(
                    "the mount on the stage dir now (device {}:{}, {}) is not the share moor mounted there (device {}:{}); remove the other mount first",
                    m.major, m.minor, m.fs_type, ours.0, ours.1
                ),
            }),
            Some(m) => Ok(Some((m.major, m.minor))),
            None => Ok(None),
        }
    }

    /// Pods still holding a healed share's dead mount, as the reconciler last found them.
    pub fn dead_mounts(&self) -> Vec<crate::api::DeadMount> {
        self.dead_mounts
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default()
    }

    /// Replaces the dead-mount report (`moor status`).
    pub fn set_dead_mounts(&self, now: Vec<crate::api::DeadMount>) {
        if let Ok(mut d) = self.dead_mounts.lock() {
            *d = now;
        }
    }

    /// Heals a staged share whose mount died (or vanished). Pod directories in `stack`
    /// (pods whose containers' copies receive propagation: `HostToContainer`,
    /// `Bidirectional`) keep their dead bind and get the healed share mounted on top of it,
    /// which propagates into the running containers; every other pod bind is detached
    /// lazily and bound again, ro where the pod asked (a running container with a private
    /// copy keeps its dead view: see the reconciler's dead-mount report). The stage is
    /// detached lazily (through the ownership decision) and mounted again. The caller holds
    /// the volume's lock. Lazy detaches never block on the dead server.
    ///
    /// Order matters: a pod bind is a peer of the stage and of the other pod binds (one
    /// propagation group, measured), so a mount on top of one stacked pod dir is copied onto
    /// every other member still in the group. Binds that are replaced and the stage leave
    /// the group first (a detached mount is taken out of it); the copies a stacking makes on
    /// the other stacked pod dirs are moor's (made by its mount, on its own dead binds, of
    /// the share it just mounted) and are recorded as their layers.
    pub fn heal_remote(&self, key: &str, stack: &HashSet<PathBuf>) -> Result<Healed, Error> {
        let Some(rec) = self.state().stages.get(key).cloned() else {
            return Ok(Healed::default());
        };
        let StageSource::Remote(remote) = &rec.source else {
            return Ok(Healed::default());
        };
        if rec.phase != StagePhase::Staged {
            return Ok(Healed::default());
        }
        // Before any pod bind goes: a refused heal leaves the volume as it was.
        self.check_stage_top(key)?;
        let stage_path = self.stage_path(&rec.driver, key);
        let (stacked, replaced): (Vec<PublishRecord>, Vec<PublishRecord>) = self
            .publishes_of(key)
            .into_iter()
            .partition(|p| !p.block && stack.contains(&p.target));
        for p in &replaced {
            self.remove_layers(p)?;
            self.detach_dead(&p.target, Place::PodDir, key, p.mount_id)?;
        }
        self.detach_dead(&stage_path, Place::Stage, key, rec.mount_id)?;
        // The detached mount's id is forgotten before the new mount is made: a crash or a
        // failed record between the two must not leave moor's own new mount looking foreign
        // to the next heal (with no id, what is on moor's stage dir is moor's).
        if rec.mount_id.is_some() {
            let mut cleared = rec.clone();
            cleared.mount_id = None;
            self.journal.put_stage(&cleared)?;
            self.state().stages.insert(key.into(), cleared);
        }
        self.mount_remote(key, remote, &stage_path)?;
        let mut stage_dev = None;
        if let Some(t) = self.open_target(&stage_path, false)? {
            let mut rec = rec.clone();
            rec.mount_id = self.mount_id_at(&t);
            stage_dev = rec.mount_id.map(|m| m.dev);
            self.journal.put_stage(&rec)?;
            self.state().stages.insert(key.into(), rec);
        }
        let mut healed = Healed::default();
        for p in replaced {
            if !p.target.is_dir() {
                continue;
            }
            let id = self.bind_again(&p, &stage_path).ok_or_else(|| {
                Error::Internal(format!("cannot bind {} again", p.target.display()))
            })?;
            let mut p = p;
            p.mount_id = Some(id);
            p.layers.clear();
            self.journal.put_publish(&p)?;
            self.state().put_publish(p);
            healed.rebound += 1;
        }
        let mut bound = false;
        for p in stacked {
            // Only once moor has stacked one pod dir in this call can a copy on another be
            // propagation's doing: before that, an unrecorded mount there is someone else's.
            bound |= self.stack_layer(p, &stage_path, stage_dev, bound)?;
            healed.stacked += 1;
        }
        tracing::warn!(volume = key, driver = %rec.driver, server = %remote.server, rebound = healed.rebound, stacked = healed.stacked, "stale mount healed: export mounted again, pod directories bound again or stacked over");
        Ok(healed)
    }

    /// Puts the live stage on top of `p`'s pod dir: adopts the copy propagation already put
    /// there (of the stage's device, unrecorded, and only when `adopt`: moor itself stacked
    /// a peer pod dir earlier in the same call, under the volume's lock), or binds it.
    /// Returns whether it bound (false: adopted).
    fn stack_layer(
        &self,
        mut p: PublishRecord,
        stage_path: &Path,
        stage_dev: Option<(u32, u32)>,
        adopt: bool,
    ) -> Result<bool, Error> {
        let cannot = || Error::Internal(format!("cannot stack over {}", p.target.display()));
        let t = self.open_target(&p.target, false)?.ok_or_else(cannot)?;
        let top = match self.found_at(&t)? {
            Found::Mount(m) => Some(MountId::from(m)),
            _ => None,
        };
        let same = |a: &MountId, b: &MountId| (a.id, a.unique, a.dev) == (b.id, b.unique, b.dev);
        let recorded = |id: &MountId| p.mount_id.iter().chain(&p.layers).any(|r| same(r, id));
        let (layer, bound) = match top {
            Some(m) if adopt && stage_dev == Some(m.dev) && !recorded(&m) => {
                tracing::info!(volume = %p.key, target = %p.target.display(), mount_id = m.id, "the healed share reached this pod dir through propagation; recorded as moor's layer");
                (m, false)
            }
            Some(m) if !recorded(&m) => {
                return Err(Error::Internal(format!(
                    "{}: a mount moor did not make (id {}) covers the pod dir; not stacked over",
                    p.target.display(),
                    m.id
                )));
            }
            _ => (self.bind_again(&p, stage_path).ok_or_else(cannot)?, true),
        };
        p.layers.push(layer);
        self.journal.put_publish(&p)?;
        self.state().put_publish(p);
        Ok(bound)
    }

    /// Removes every layer a heal stacked on `p`'s pod dir, top down, each through the
    /// ownership decision (a layer that is gone already is skipped), leaving the bind under
    /// them; the record is rewritten after each one.
    pub(super) fn remove_layers(&self, p: &PublishRecord) -> Result<(), Error> {
        let mut p = p.clone();
        let stage_path = self.bind_source(&p);
        while let Some(top) = p.layers.last().copied() {
            let top = self.learn_layer(&p.target, top, p.layers.len(), &p.key)?;
            if let Some(t) = self.open_target(&p.target, false)?
                && self.owns(&t, Place::PodDir, Some(top), None)
            {
                self.unmount_guarded(
                    &t,
                    Place::PodDir,
                    &p.key,
                    true,
                    Some(top),
                    Some(&stage_path),
                    false,
                )?;
            } else {
                tracing::info!(volume = %p.key, target = %p.target.display(), mount_id = top.id, "stacked layer already gone");
            }
            p.layers.pop();
            self.journal.put_publish(&p)?;
            self.state().put_publish(p.clone());
        }
        Ok(())
    }

    /// A layer recorded in another mount namespace (a DaemonSet's earlier pod) has another
    /// id here: it is the mount on top now when exactly `below` mounts (moor's bind and its
    /// lower layers) are under it and its device is the recorded one ([`owned::rekey`]);
    /// anything else is refused, as for any mount moor cannot tell apart.
    fn learn_layer(
        &self,
        target: &Path,
        layer: MountId,
        below: usize,
        key: &str,
    ) -> Result<MountId, Error> {
        let here = crate::host::process::mount_namespace();
        if layer.ns.is_none() || layer.ns == here || here.is_none() {
            return Ok(layer);
        }
        let stacked = self
            .host
            .mounts
            .snapshot()
            .map(|t| t.iter().filter(|m| m.mount_point == target).count())
            .unwrap_or(0);
        let now = self.mount_id_of_path(target);
        match owned::rekey(layer, here, stacked.saturating_sub(below), now) {
            owned::Rekey::Keep => Ok(layer),
            owned::Rekey::Replace(m) => Ok(m),
            owned::Rekey::Ambiguous(why) => Err(Error::NotOwned {
                target: target.into(),
                detail: format!("volume {key}: a layer a heal stacked: {why}"),
            }),
        }
    }

    /// Volumes with a pod dir a heal stacked over (for [`Lifecycle::restack`]).
    pub fn stacked_volumes(&self) -> Vec<String> {
        let st = self.state();
        let mut keys: Vec<String> = st
            .publishes
            .values()
            .filter(|p| p.phase == PublishPhase::Published && !p.layers.is_empty())
            .map(|p| p.key.clone())
            .collect();
        keys.dedup();
        keys
    }

    /// After a layer went (an unpublish of a peer pod dir takes the copies of its layer off
    /// the others: the kernel propagates the unmount), stacks the live stage again on the
    /// pod dirs of `key` whose recorded top layer is no longer on top. Returns how many.
    pub fn restack(&self, key: &str) -> usize {
        let Some(stage) = self.state().stages.get(key).cloned() else {
            return 0;
        };
        let stage_path = self.stage_path(&stage.driver, key);
        let stage_dev = stage.mount_id.map(|m| m.dev);
        let mut done = 0;
        let mut bound = false;
        for mut p in self.publishes_of(key) {
            let Some(&top) = p.layers.last() else {
                continue;
            };
            let Ok(top) = self.learn_layer(&p.target, top, p.layers.len(), key) else {
                continue;
            };
            let Ok(Some(t)) = self.open_target(&p.target, false) else {
                continue;
            };
            if self.owns(&t, Place::PodDir, Some(top), None) {
                continue;
            }
            // A mount moor did not make on top (not propagation's copy of a bind this call
            // made): moor's layers under it stay recorded, and nothing is stacked over it.
            if let Ok(Found::Mount(m)) = self.found_at(&t) {
                let m = MountId::from(m);
                let same = |r: &MountId| (r.id, r.unique, r.dev) == (m.id, m.unique, m.dev);
                let recorded = p.mount_id.iter().chain(&p.layers).any(same);
                let propagated = bound && stage_dev == Some(m.dev);
                if !(recorded || propagated) {
                    tracing::warn!(volume = key, target = %p.target.display(), mount_id = m.id, "a mount moor did not make covers the pod dir; not stacked over, moor's layers under it stay recorded");
                    continue;
                }
            }
            // Keep the layers still there (the highest one moor still owns and those under it).
            let keep = (0..p.layers.len())
                .rev()
                .find(|&i| self.owns(&t, Place::PodDir, Some(p.layers[i]), None))
                .map_or(0, |i| i + 1);
            p.layers.truncate(keep);
            drop(t);
            if !self.is_mount_point(&stage_path).unwrap_or(false) {
                continue;
            }
            match self.stack_layer(p.clone(), &stage_path, stage_dev, bound) {
                Ok(b) => {
                    bound |= b;
                    done += 1;
                }
                Err(e) => {
                    tracing::error!(volume = key, target = %p.target.display(), error = %crate::error::Chain(&e), "cannot stack the share over the pod dir again");
                    let _ = self.journal.put_publish(&p);
                    self.state().put_publish(p);
                }
            }
        }
        done
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
