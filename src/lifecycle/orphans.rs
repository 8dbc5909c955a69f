//! Orphaned pod volumes: which of moor's publishes belong to a pod that is gone, and the
//! cleaning of one — kubelet's "orphaned pod … but volume paths are still present on disk"
//! class, where a pod deleted while kubelet was down (or whose unmount failed) leaves moor's
//! bind behind and kubelet refuses to remove the pod directory forever.
//!
//! The decision is pure ([`decide`], [`decide_named`]): a publish is cleaned on the
//! daemon's own only when the API server confirmed its pod gone ([`PodState::Gone`]) and it
//! stayed so for the grace (kubelet's own unmount goes first); an unknown pod (no
//! credentials, cache not synced) never; an operator's explicit `moor gc --pod` cleans an
//! unknown pod too, but never one the API server still lists or one with a process alive.
//!
//! Invariants of the cleaning ([`Lifecycle::clean_orphan`], run under the volume's lock):
//! - the bind goes through the front end's own unpublish path (FlexVolume: `unmount`, so
//!   the last one unstages and detaches as kubelet's would; CSI: NodeUnpublishVolume, the
//!   stage stays for kubelet's NodeUnstageVolume), so every unmount passes
//!   [`super::owned::may_unmount`] — a mount moor did not make is refused and stays;
//! - a mount on any directory between `pods/<uid>` and the volume dir refuses the whole
//!   cleaning of that volume (the bind under it cannot be reached safely);
//! - directories are removed with `rmdir` only, through a held parent fd, each after a
//!   not-a-mount-point check, from the volume dir up to but never including
//!   `pods/<uid>/volumes` (kubelet removes the pod dir once no volume path remains); a
//!   non-empty directory stops the walk and is named, never emptied.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::*;
use crate::cluster::{Notice, NoticeReason, PodState};
use crate::error::Error;
use crate::journal::PublishRecord;
use owned::Found;

/// One publish of a pod volume, as the orphan collector sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodVolume {
    /// The pod's UID (from kubelet's path, never from options).
    pub pod_uid: String,
    /// The volume key (what the caller locks).
    pub key: String,
    /// moor's driver name.
    pub driver: String,
    /// The pod volume dir (or a raw block publish's device file).
    pub target: PathBuf,
    /// The CSI `volume_id` of a CSI publish (its lock too); `None` for FlexVolume.
    pub csi_volume_id: Option<String>,
}

/// Why an orphan is cleaned (it goes into the notice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrphanCause {
    /// The API server confirmed the pod gone, past the grace.
    Confirmed,
    /// An operator named the pod (`moor gc --pod`).
    Named,
}

impl OrphanCause {
    fn says(self) -> &'static str {
        match self {
            OrphanCause::Confirmed => "confirmed gone by the API server",
            OrphanCause::Named => "named by moor gc --pod",
        }
    }
}

/// What cleaning one orphaned publish did (the caller knows which one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrphanCleaning {
    /// moor's publish record was there and is gone now (the bind with it, if it was there).
    pub unpublished: bool,
    /// It was the last publish of a FlexVolume stage: unstaged and detached.
    pub unstaged: bool,
    /// A CSI stage that stays for kubelet's NodeUnstageVolume (its staging path).
    pub stage_kept: Option<PathBuf>,
    /// The last publish went but its unstage failed (the reconciler retries it): why.
    pub stage_error: Option<String>,
    /// Empty directories removed, deepest first.
    pub removed: Vec<PathBuf>,
    /// Directories left in place, and why (not empty: its entries; a mount point): what an
    /// operator must look at.
    pub left: Vec<(PathBuf, String)>,
    /// Directories left only for the file kubelet itself keeps there (CSI's
    /// `vol_data.json`, which kubelet reads to reconstruct the volume and removes itself).
    pub kubelet_files: Vec<PathBuf>,
}

/// Why a volume is not cleaned now, or that it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The API server lists the pod.
    Present,
    /// Nobody can say (no credentials, cache not synced, API server unreachable).
    Unknown,
    /// Gone, but kubelet still has this long to unmount it itself.
    Wait(Duration),
    /// Gone for longer than the grace: clean it.
    Clean,
}

/// The daemon's own decision for a publish of a pod in `state`, gone for `gone_for` (as this
/// daemon saw it: a restart starts the grace again).
pub fn decide(state: &PodState, gone_for: Option<Duration>, grace: Duration) -> Verdict {
    match (state, gone_for) {
        (PodState::Present(_), _) => Verdict::Present,
        (PodState::Unknown, _) => Verdict::Unknown,
        (PodState::Gone, Some(d)) if d >= grace => Verdict::Clean,
        (PodState::Gone, d) => Verdict::Wait(grace.saturating_sub(d.unwrap_or_default())),
    }
}

/// Why `moor gc --pod` leaves a named pod alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamedRefusal {
    /// The API server still lists the pod.
    #[error(
        "pod {uid} still exists ({namespace}/{name}, says the API server): kubelet unmounts its volumes when it is deleted"
    )]
    PodExists {
        /// UID.
        uid: String,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// A process in the pod's cgroup is alive on this node.
    #[error(
        "pod {uid} still runs on this node (process {pids:?} in its cgroup): its containers may use the volume"
    )]
    Running {
        /// UID.
        uid: String,
        /// Some of the live processes.
        pids: Vec<u32>,
    },
}

impl NamedRefusal {
    /// Stable label.
    pub fn reason(&self) -> &'static str {
        match self {
            NamedRefusal::PodExists { .. } => "pod_exists",
            NamedRefusal::Running { .. } => "pod_running",
        }
    }
}

/// The decision for a pod an operator named: refused while the API server lists it or a
/// process of it is alive here (`live`: their pids); an unknown pod is the operator's call.
pub fn decide_named(uid: &str, state: &PodState, live: &[u32]) -> Result<(), NamedRefusal> {
    if let PodState::Present(p) = state {
        return Err(NamedRefusal::PodExists {
            uid: uid.into(),
            namespace: p.namespace.clone(),
            name: p.name.clone(),
        });
    }
    if !live.is_empty() {
        return Err(NamedRefusal::Running {
            uid: uid.into(),
            pids: live.iter().copied().take(5).collect(),
        });
    }
    Ok(())
}

/// When this daemon first saw each pod confirmed gone (memory only: a restart starts every
/// grace again, so kubelet always gets the whole grace after moor comes up).
#[derive(Debug, Default)]
pub struct GoneSince {
    first: HashMap<String, Instant>,
}

impl GoneSince {
    /// Records what the API server says of `uid` at `now`; how long it has been gone.
    pub fn observe(&mut self, uid: &str, state: &PodState, now: Instant) -> Option<Duration> {
        match state {
            PodState::Gone => {
                let at = *self.first.entry(uid.to_owned()).or_insert(now);
                Some(now.saturating_duration_since(at))
            }
            // Present again (or unknown): the clock starts over next time it is gone.
            _ => {
                self.first.remove(uid);
                None
            }
        }
    }

    /// How long `uid` has been seen gone, without observing.
    pub fn gone_for(&self, uid: &str, now: Instant) -> Option<Duration> {
        self.first
            .get(uid)
            .map(|at| now.saturating_duration_since(*at))
    }

    /// Forgets the pods that no publish names any more.
    pub fn retain(&mut self, uids: &BTreeSet<String>) {
        self.first.retain(|u, _| uids.contains(u));
    }
}

/// What [`Lifecycle::remove_empty_dir`] did.
enum DirStep {
    Removed,
    Missing,
    Left(String),
    /// Not empty, but only for kubelet's own [`KUBELET_FILES`].
    Kubelets,
}

/// What kubelet itself writes into a pod volume dir (the CSI plugin's record of the volume).
const KUBELET_FILES: &[&str] = &["vol_data.json"];

impl Lifecycle {
    /// Every publish moor has a record of, by pod (sorted by pod UID, then target).
    pub fn pod_volumes(&self) -> Vec<PodVolume> {
        let st = self.state();
        let mut out: Vec<PodVolume> = st
            .publishes
            .values()
            .map(|p| PodVolume {
                pod_uid: p.pod_uid.clone(),
                key: p.key.clone(),
                driver: p.driver.clone(),
                target: p.target.clone(),
                csi_volume_id: p
                    .csi
                    .then(|| st.stages.get(&p.key))
                    .flatten()
                    .and_then(|s| s.csi.as_ref())
                    .map(|c| c.volume_id.clone()),
            })
            .collect();
        out.sort_by(|a, b| (&a.pod_uid, &a.target).cmp(&(&b.pod_uid, &b.target)));
        out
    }

    /// Cleans one orphaned publish at `target` (see the module header); the caller holds
    /// the volume's lock (and a CSI publish's `volume_id` lock) and decided the pod is
    /// gone. A publish no longer recorded (kubelet's own unmount came first) is nothing to
    /// do. Reports an [`NoticeReason::OrphanCleaned`] notice when it unpublished something.
    pub fn clean_orphan(&self, target: &Path, cause: OrphanCause) -> Result<OrphanCleaning, Error> {
        let Some(rec) = self.state().publishes.get(target).cloned() else {
            return Ok(OrphanCleaning::default());
        };
        let mut done = OrphanCleaning::default();
        let volumes = self
            .host
            .paths
            .kubelet_dir
            .join("pods")
            .join(&rec.pod_uid)
            .join("volumes");
        let in_pod_dir = target.starts_with(&volumes);
        if in_pod_dir {
            self.refuse_mounts_above(&rec, &volumes)?;
        }
        let raw = target.display().to_string();
        if rec.csi {
            let volume_id = self
                .state()
                .stages
                .get(&rec.key)
                .and_then(|s| s.csi.as_ref())
                .map(|c| (c.volume_id.clone(), c.staging_path.clone()));
            let Some((volume_id, staging)) = volume_id else {
                return Err(Error::Internal(format!(
                    "volume {}: CSI publish at {raw} without its CSI stage",
                    rec.key
                )));
            };
            self.csi_unpublish(&rec.driver, &volume_id, &raw)?;
            done.stage_kept = Some(staging);
        } else {
            match self.unmount(Some(&rec.driver), &raw) {
                Ok(outcome) => done.unstaged = outcome == UnmountOutcome::Unstaged,
                // The bind and its record went, the unstage after it did not (a journal
                // write, a detach): the reconciler finishes that unstage; the pod's part is
                // done, so its directories go now.
                Err(e) if !self.state().publishes.contains_key(target) => {
                    tracing::warn!(volume = %rec.key, error = %crate::error::Chain(&e), "orphan unpublished, its unstage failed; the reconciler retries it");
                    done.stage_error = Some(format!("{}: {}", e.reason(), crate::error::Chain(&e)));
                }
                Err(e) => return Err(e),
            }
        }
        done.unpublished = true;
        if in_pod_dir {
            self.remove_empty_up_to(target, &volumes, &mut done);
        }
        self.cluster
            .notify
            .notify(orphan_notice(&rec, cause, &done));
        tracing::info!(volume = %rec.key, driver = %rec.driver, pod_uid = %rec.pod_uid, target = %target.display(),
            unstaged = done.unstaged, removed = done.removed.len(), left = done.left.len(), cause = cause.says(), "orphaned pod volume cleaned");
        Ok(done)
    }

    /// Refuses (`not_owned`) when anything is mounted on `pods/<uid>` or a directory between
    /// it and the volume dir: moor's bind below such a mount is not what the path reaches.
    fn refuse_mounts_above(&self, rec: &PublishRecord, volumes: &Path) -> Result<(), Error> {
        let pod_dir = volumes.parent().unwrap_or(volumes);
        let mut dirs: Vec<&Path> = rec
            .target
            .ancestors()
            .skip(1)
            .take_while(|a| a.starts_with(pod_dir))
            .collect();
        dirs.reverse();
        for d in dirs {
            if self.is_mount_point(d)? {
                tracing::warn!(volume = %rec.key, pod_uid = %rec.pod_uid, dir = %d.display(), "a mount moor did not make is above an orphaned pod volume; left alone");
                return Err(Error::NotOwned {
                    target: d.into(),
                    detail: format!(
                        "a mount moor did not make is on this directory of pod {}, above its volume {}; unmount it first",
                        rec.pod_uid,
                        rec.target.display()
                    ),
                });
            }
        }
        Ok(())
    }

    /// `rmdir` of `from` and its parents while they are empty, up to but not including
    /// `stop`; the first one left ends the walk.
    fn remove_empty_up_to(&self, from: &Path, stop: &Path, done: &mut OrphanCleaning) {
        for dir in from
            .ancestors()
            .take_while(|d| *d != stop && d.starts_with(stop))
        {
            match self.remove_empty_dir(dir) {
                DirStep::Removed => done.removed.push(dir.into()),
                DirStep::Missing => {}
                DirStep::Kubelets => {
                    done.kubelet_files.push(dir.into());
                    return;
                }
                DirStep::Left(why) => {
                    tracing::info!(dir = %dir.display(), why = %why, "directory of an orphaned pod volume left in place");
                    done.left.push((dir.into(), why));
                    return;
                }
            }
        }
    }

    /// One `rmdir` through the held parent, after checking that nothing is mounted there.
    fn remove_empty_dir(&self, dir: &Path) -> DirStep {
        let t = match self.open_target(dir, false) {
            Ok(Some(t)) => t,
            Ok(None) => return DirStep::Missing,
            Err(e) => return DirStep::Left(crate::error::Chain(&e).to_string()),
        };
        match self.found_at(&t) {
            Ok(Found::Nothing) => {}
            Ok(_) => return DirStep::Left("a mount point".into()),
            Err(e) => return DirStep::Left(crate::error::Chain(&e).to_string()),
        }
        match t.remove_dir() {
            Ok(()) => DirStep::Removed,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => DirStep::Missing,
            Err(e)
                if matches!(
                    e.raw_os_error().map(Errno::from_raw),
                    Some(Errno::ENOTEMPTY | Errno::EEXIST)
                ) =>
            {
                let names = entry_names(dir);
                if names.iter().all(|n| KUBELET_FILES.contains(&n.as_str())) && !names.is_empty() {
                    return DirStep::Kubelets;
                }
                DirStep::Left(format!("not empty ({})", summary(&names)))
            }
            Err(e) if e.raw_os_error() == Some(Errno::EBUSY as i32) => {
                DirStep::Left("a mount point".into())
            }
            Err(e) => DirStep::Left(e.to_string()),
        }
    }
}

/// A directory's entry names, sorted (read-only: nothing is removed).
fn entry_names(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = rd
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The first few names, for a report.
fn summary(names: &[String]) -> String {
    let mut s = names.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > 3 {
        s.push_str(&format!(" and {} more", names.len() - 3));
    }
    if s.is_empty() {
        s.push_str("unreadable");
    }
    s
}

/// The notice of a cleaned orphan: on the node (the pod is gone, an Event on it would be
/// lost), from typed facts only.
fn orphan_notice(rec: &PublishRecord, cause: OrphanCause, done: &OrphanCleaning) -> Notice {
    let mut msg = format!(
        "pod {} is gone ({}): moor unpublished volume {} from {}",
        rec.pod_uid,
        cause.says(),
        rec.key,
        rec.target.display()
    );
    if done.unstaged {
        msg.push_str(", unstaged it (its last pod)");
    }
    if done.stage_error.is_some() {
        msg.push_str(", its unstage failed and is retried");
    }
    if let Some(s) = &done.stage_kept {
        msg.push_str(&format!(
            ", its CSI stage {} stays for kubelet's NodeUnstageVolume",
            s.display()
        ));
    }
    if !done.removed.is_empty() {
        let dirs: Vec<String> = done
            .removed
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        msg.push_str(&format!(", removed {}", dirs.join(" ")));
    }
    for (d, why) in &done.left {
        msg.push_str(&format!(", left {} ({why})", d.display()));
    }
    for d in &done.kubelet_files {
        msg.push_str(&format!(
            ", left {} to kubelet (its vol_data.json)",
            d.display()
        ));
    }
    Notice::new(NoticeReason::OrphanCleaned, msg).volume(rec.key.clone(), rec.driver.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::PodInfo;

    fn present() -> PodState {
        PodState::Present(PodInfo {
            namespace: "ns".into(),
            name: "web-0".into(),
            uid: "u1".into(),
            mounts: vec![],
            pvs: Default::default(),
            controlled: true,
        })
    }

    #[test]
    fn only_a_confirmed_gone_pod_past_the_grace_is_cleaned() {
        let grace = Duration::from_secs(120);
        let long = Some(Duration::from_secs(10_000));
        assert_eq!(decide(&present(), long, grace), Verdict::Present);
        assert_eq!(decide(&PodState::Unknown, long, grace), Verdict::Unknown);
        assert_eq!(
            decide(&PodState::Gone, Some(Duration::from_secs(20)), grace),
            Verdict::Wait(Duration::from_secs(100))
        );
        assert_eq!(decide(&PodState::Gone, None, grace), Verdict::Wait(grace));
        assert_eq!(decide(&PodState::Gone, Some(grace), grace), Verdict::Clean);
        assert_eq!(decide(&PodState::Gone, long, grace), Verdict::Clean);
    }

    #[test]
    fn the_grace_starts_when_first_seen_gone_and_again_after_the_pod_was_seen() {
        let mut g = GoneSince::default();
        let t0 = Instant::now();
        assert_eq!(g.observe("u", &PodState::Gone, t0), Some(Duration::ZERO));
        let t1 = t0 + Duration::from_secs(50);
        assert_eq!(
            g.observe("u", &PodState::Gone, t1),
            Some(Duration::from_secs(50))
        );
        assert_eq!(g.gone_for("u", t1), Some(Duration::from_secs(50)));
        // Unknown for a moment (the API server restarted): the clock starts over.
        assert_eq!(g.observe("u", &PodState::Unknown, t1), None);
        assert_eq!(g.observe("u", &PodState::Gone, t1), Some(Duration::ZERO));
        g.retain(&BTreeSet::new());
        assert_eq!(g.gone_for("u", t1), None);
    }

    #[test]
    fn a_named_pod_is_refused_while_listed_or_running() {
        let e = decide_named("u1", &present(), &[]).unwrap_err();
        assert_eq!(e.reason(), "pod_exists");
        assert!(e.to_string().contains("ns/web-0"), "{e}");
        let e = decide_named("u1", &PodState::Unknown, &[42, 43]).unwrap_err();
        assert_eq!(e.reason(), "pod_running");
        assert!(e.to_string().contains("42"), "{e}");
        assert_eq!(decide_named("u1", &PodState::Unknown, &[]), Ok(()));
        assert_eq!(decide_named("u1", &PodState::Gone, &[]), Ok(()));
    }
}
