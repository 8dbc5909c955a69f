//! The in-memory view of the journal: stage and publish records by key and pod dir, who
//! uses each stage, and the unstages decided but not finished. Each update is one insert or
//! remove, so a poisoned lock still holds a consistent state.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use crate::journal::{PublishRecord, StageRecord};

#[derive(Default)]
pub(super) struct State {
    pub(super) stages: HashMap<String, StageRecord>,
    pub(super) publishes: HashMap<PathBuf, PublishRecord>,
    pub(super) users: HashMap<String, BTreeSet<PathBuf>>,
    /// Journal entries set aside by the last reconstruction.
    pub(super) set_aside: Vec<crate::journal::Problem>,
    /// Stages the lifecycle decided to unstage and has not yet (a journal write or a step
    /// failed), with the pod dirs whose unmount led there. The reconciler finishes them, and
    /// kubelet's retry on one of those pod dirs retries the unstage (see `unmount`).
    pub(super) unstage_pending: HashMap<String, BTreeSet<PathBuf>>,
    /// What the reconciler's last stale-mount probe of a share's stage saw, when it was
    /// not alive: a stats call reports a hung share from it without hanging itself.
    pub(super) probes: HashMap<String, crate::host::probe::Probe>,
}

impl State {
    pub(super) fn put_publish(&mut self, p: PublishRecord) {
        self.users
            .entry(p.key.clone())
            .or_default()
            .insert(p.target.clone());
        self.publishes.insert(p.target.clone(), p);
    }

    pub(super) fn drop_publish(&mut self, target: &Path) {
        if let Some(p) = self.publishes.remove(target)
            && let Some(u) = self.users.get_mut(&p.key)
        {
            u.remove(target);
            if u.is_empty() {
                self.users.remove(&p.key);
            }
        }
    }

    pub(super) fn user_count(&self, key: &str) -> usize {
        self.users.get(key).map_or(0, BTreeSet::len)
    }

    pub(super) fn mark_unstage(&mut self, key: &str, target: Option<&Path>) {
        let t = self.unstage_pending.entry(key.to_owned()).or_default();
        if let Some(target) = target {
            t.insert(target.to_owned());
        }
    }

    pub(super) fn pending_key_of(&self, target: &Path) -> Option<String> {
        self.unstage_pending
            .iter()
            .find(|(_, t)| t.contains(target))
            .map(|(k, _)| k.clone())
    }
}
