//! What the lifecycle tells the rest of the daemon about its volumes: the status table, the
//! counts for gauges, the staged volumes for statistics, the set-aside records, `moor forget`.
//! It answers in its own types (records and [`VolumeView`]); the daemon maps them to the
//! wire.

use std::path::PathBuf;

use super::*;
use crate::error::Error;
use crate::journal::{Problem, PublishRecord, StagePhase, StageRecord};

/// A volume as the lifecycle knows it: its stage record, where it is staged, and the
/// publishes using it (in target order). The daemon turns it into the status table's wire
/// type; the lifecycle builds no API type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeView {
    /// The stage record.
    pub stage: StageRecord,
    /// Where it is (or would be) staged.
    pub stage_path: PathBuf,
    /// The pods' publishes of it.
    pub publishes: Vec<PublishRecord>,
}

impl Lifecycle {
    /// Stage mounts with every publish of each (in target order), for volume statistics.
    pub fn staged_volumes(&self) -> Vec<(StageRecord, PathBuf, Vec<PublishRecord>)> {
        let st = self.state();
        st.stages
            .values()
            .filter(|s| s.phase == StagePhase::Staged)
            .map(|s| {
                let v = self.view(&st, s);
                (v.stage, v.stage_path, v.publishes)
            })
            .collect()
    }

    /// Stage `s` with its publishes, in target order.
    fn view(&self, st: &State, s: &StageRecord) -> VolumeView {
        VolumeView {
            stage: s.clone(),
            stage_path: self.stage_path(&s.driver, &s.key),
            publishes: st
                .users
                .get(&s.key)
                .into_iter()
                .flatten()
                .filter_map(|t| st.publishes.get(t))
                .cloned()
                .collect(),
        }
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
    pub fn set_aside(&self) -> Vec<Problem> {
        self.state().set_aside.clone()
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

    /// Every volume moor has a stage record of, whatever its phase, by driver and key.
    pub fn status(&self) -> Vec<VolumeView> {
        let st = self.state();
        let mut out: Vec<VolumeView> = st.stages.values().map(|s| self.view(&st, s)).collect();
        out.sort_by(|a, b| (&a.stage.driver, &a.stage.key).cmp(&(&b.stage.driver, &b.stage.key)));
        out
    }
}
