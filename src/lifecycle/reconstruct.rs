//! Start-up reconstruction from the journal and the live mount table together (never trusting
//! either alone), and the same code finishing an interrupted transition later under the
//! volume's lock (the reconciler's sweep).

use std::collections::BTreeSet;
use std::path::Path;

use super::*;
use crate::error::{Chain, Error};
use crate::journal::MountId;
use crate::journal::{PublishPhase, PublishRecord, StagePhase, StageRecord, StageSource};
use owned::Place;

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
    /// Mount ids recorded in another mount namespace (a DaemonSet's previous pod) and
    /// learnt again here.
    pub rekeyed: usize,
    /// Problems that need an operator.
    pub problems: Vec<String>,
}

impl Lifecycle {
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
            st.set_aside = loaded.problems.clone();
        }
        for p in &loaded.problems {
            // The reason label and the file, never the detail: a parse error may quote it.
            self.cluster().notify.notify(crate::cluster::Notice::new(
                crate::cluster::NoticeReason::RecordSetAside,
                format!(
                    "journal record {} was set aside at start-up ({}); moor does not manage what it described until an operator inspects it",
                    p.path.display(),
                    p.reason
                ),
            ));
        }
        self.rekey_records(&mut report);
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

    pub(super) fn reconstruct_publish(&self, mut p: PublishRecord, report: &mut Reconstruction) {
        let mounted = self.is_mount_point(&p.target).unwrap_or(false);
        let stage_path = self.bind_source(&p);
        match p.phase {
            PublishPhase::Published if mounted => report.kept_publishes += 1,
            PublishPhase::Published => {
                // The bind vanished under a live record (someone unmounted it): restore it
                // if the pod directory and the stage are still there.
                let stage_ok = p.block || self.is_mount_point(&stage_path).unwrap_or(false);
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
                // An unpublish of a healed pod dir stopped part way: its layers go first.
                if !p.layers.is_empty() {
                    if let Err(e) = self.remove_layers(&p) {
                        report.problems.push(format!(
                            "{}: cannot remove the layers a heal stacked: {}",
                            p.target.display(),
                            Chain(&e)
                        ));
                        return;
                    }
                    p.layers.clear();
                }
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
                    report.problems.push(format!(
                        "{}: cannot undo: {}",
                        p.target.display(),
                        Chain(&e)
                    ));
                    p.phase = PublishPhase::Unpublishing;
                    let _ = self.journal.put_publish(&p);
                    return;
                }
                if p.block
                    && let Ok(Some(t)) = self.open_target(&p.target, false)
                {
                    super::publish::remove_device_file(&t);
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

    pub(super) fn forget_publish(&self, target: &Path, report: &mut Reconstruction, why: &str) {
        if let Err(e) = self.journal.remove_publish(target) {
            report
                .problems
                .push(format!("{}: {}", target.display(), Chain(&e)));
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

    pub(super) fn reconstruct_stage(&self, mut s: StageRecord, report: &mut Reconstruction) {
        let stage_path = self.stage_path(&s.driver, &s.key);
        // A raw block stage mounts nothing: it is there while its device is.
        let mounted = match s.csi.as_ref().is_some_and(|c| c.block) {
            true => self.raw_device(&s).is_ok(),
            false => self.is_mount_point(&stage_path).unwrap_or(false),
        };
        let users = self.state().user_count(&s.key);
        match (s.phase, mounted, users) {
            (StagePhase::Staged, true, n) if n > 0 => report.kept_stages += 1,
            // Only NodeUnstageVolume ends a CSI stage: no publish left is normal.
            (StagePhase::Staged, true, 0) if s.csi.is_some() => report.kept_stages += 1,
            (StagePhase::Idle, false, 0) => {}
            (StagePhase::Staged, false, 0) => {
                // Mounts are gone (a reboot): keep the record idle so the filesystem moor saw
                // here is remembered when kubelet mounts the volume again.
                s.phase = StagePhase::Idle;
                if self.journal.put_stage(&s).is_ok() {
                    self.state().stages.insert(s.key.clone(), s);
                }
                if let Ok(Some(t)) = self.open_target(&stage_path, false) {
                    crate::host::dirs::remove_empty(&t);
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
                    Err(e) => report.problems.push(format!(
                        "volume {}: cannot unstage: {}",
                        s.key,
                        Chain(&e)
                    )),
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
            // stage it was the last user of goes too (as FlexVolume's unmount would) —
            // but a CSI stage waits for its NodeUnstageVolume.
            if !p.csi {
                self.state().mark_unstage(key, Some(&p.target));
            }
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

    /// Mount ids recorded in another mount namespace name nothing here (a DaemonSet's new
    /// pod is a new namespace): learn each again where [`owned::rekey`] says the mount is
    /// unambiguous, and report the others (their unmounts stay refused).
    fn rekey_records(&self, report: &mut Reconstruction) {
        let here = crate::host::process::mount_namespace();
        let foreign = |m: &Option<MountId>| matches!((m.and_then(|m| m.ns), here), (Some(a), Some(b)) if a != b);
        let (stages, publishes): (Vec<StageRecord>, Vec<PublishRecord>) = {
            let st = self.state();
            (
                st.stages
                    .values()
                    .filter(|s| foreign(&s.mount_id))
                    .cloned()
                    .collect(),
                // A healed pod dir's stack is learnt again layer by layer as it is removed
                // (`remove_layers`): only its top is reachable to compare.
                st.publishes
                    .values()
                    .filter(|p| foreign(&p.mount_id) && p.layers.is_empty())
                    .cloned()
                    .collect(),
            )
        };
        if stages.is_empty() && publishes.is_empty() {
            return;
        }
        let table = match self.host.mounts.snapshot() {
            Ok(t) => t,
            Err(e) => {
                report.problems.push(format!(
                    "cannot read the mount table to learn mount ids again: {e}"
                ));
                return;
            }
        };
        let stacked = |p: &Path| table.iter().filter(|m| m.mount_point == p).count();
        // The id to record now, or none; an ambiguity is reported and the record kept.
        let learn =
            |path: &Path, recorded: Option<MountId>, key: &str, report: &mut Reconstruction| {
                let recorded = recorded?;
                match owned::rekey(recorded, here, stacked(path), self.mount_id_of_path(path)) {
                    owned::Rekey::Keep => None,
                    owned::Rekey::Replace(m) => Some(m),
                    owned::Rekey::Ambiguous(why) => {
                        report
                            .problems
                            .push(format!("volume {key}: {}: {why}", path.display()));
                        None
                    }
                }
            };
        let recorded = |written: Result<(), crate::journal::JournalError>,
                        report: &mut Reconstruction| {
            match written {
                Ok(()) => {
                    report.rekeyed += 1;
                    true
                }
                Err(e) => {
                    report
                        .problems
                        .push(format!("cannot record a mount id learnt again: {e}"));
                    false
                }
            }
        };
        for mut s in stages {
            let path = self.stage_path(&s.driver, &s.key);
            if let Some(m) = learn(&path, s.mount_id, &s.key, report) {
                s.mount_id = Some(m);
                if recorded(self.journal.put_stage(&s), report) {
                    self.state().stages.insert(s.key.clone(), s);
                }
            }
        }
        for mut p in publishes {
            if let Some(m) = learn(&p.target, p.mount_id, &p.key, report) {
                p.mount_id = Some(m);
                if recorded(self.journal.put_publish(&p), report) {
                    self.state().put_publish(p);
                }
            }
        }
        if report.rekeyed > 0 {
            tracing::info!(
                rekeyed = report.rekeyed,
                "mount ids recorded in another mount namespace learnt again"
            );
        }
    }

    /// Mounts in moor's own directories that no record explains (the state dir was lost):
    /// adopt them so kubelet's unmount works, rather than trusting the journal alone.
    pub(super) fn adopt_unrecorded(&self, report: &mut Reconstruction) {
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
                volume: None,
                unconverted: Default::default(),
                device: None,
                fs_type: Some(m.fs_type.clone()),
                fs_uuid: None,
                read_only: m.is_read_only(),
                phase: StagePhase::Staged,
                formatted_by_moor: false,
                mount_id: self.mount_id_of_path(&m.mount_point),
                adopted: true,
                csi: None,
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
                csi: false,
                block: false,
                layers: Vec::new(),
            };
            if self.journal.put_publish(&rec).is_ok() {
                self.state().put_publish(rec);
                report.adopted += 1;
            }
        }
    }
}
