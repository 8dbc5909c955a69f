//! What the lifecycle tells the rest of the daemon about its volumes: the status table, the
//! counts for gauges, the staged volumes for statistics, the set-aside records, `moor forget`.

use std::path::PathBuf;

use super::*;
use crate::api::{PodUse, VolumeStatus};
use crate::error::Error;
use crate::journal::{PublishRecord, StagePhase, StageRecord, StageSource};

impl Lifecycle {
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
