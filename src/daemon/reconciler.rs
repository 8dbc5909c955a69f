//! The reconciler: finds dead shares and heals them, restores pod binds that vanished
//! under a live record, and refreshes per-volume statistics. Every filesystem call it makes
//! is bounded (a dead export must not wedge it) and runs off the async runtime.
//!
//! Dead shares: a probe of each staged share — `statfs`, `open(O_DIRECTORY)`, a forced
//! attribute sync and one directory read on the stage, never a plain cached `stat`, which
//! FUSE's attribute cache keeps answering for a second after the client died — sees ENOTCONN/ESTALE/EIO/… , a stage that is no longer mounted
//! (a FUSE client with `auto_unmount` took it along), or no answer within the deadline. A
//! hung FUSE connection is aborted through fusectl first, which turns the stuck calls into
//! ENOTCONN. Then, under the volume's lock (taken only if free: kubelet's operations go
//! first), the share is mounted again and every pod directory bound again. A hung *NFS*
//! mount is only reported: with `hard` it resumes by itself when the server answers, and a
//! remount could not succeed before that. Failed heals back off exponentially.
//!
//! A heal stacks the share over the pod dirs whose containers receive propagation and
//! replaces the others ([`crate::daemon::deadmounts`] decides which, reports the pods that
//! still hold the dead mount afterwards, and evicts them where the operator opted in).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::{Notice, NoticeReason};
use crate::daemon::deadmounts::DeadMounts;
use crate::daemon::executor::Executor;
use crate::error::Error;
use crate::host::fusectl;
use crate::host::probe::{UsageError, fs_usage};
use crate::journal::record::PublishRecord;
use crate::lifecycle::{Lifecycle, RemoteStage};
use crate::metrics::{BoundClaim, ErrorLabels, HealLabels, Metrics, VolumeUse, volume_labels};

/// Deadline of one statvfs.
const STAT_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of one stale-mount probe: past it, the share counts as hung.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often shares are probed, at most (the statistics keep the configured interval).
const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// Longest wait between two heal attempts of one share.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

pub use crate::host::probe::Probe;

/// Probes a share's stage mount: bounded, off the caller's thread.
pub fn probe(lifecycle: &Lifecycle, stage: &Path, timeout: Duration) -> Probe {
    lifecycle.host().mounts.probe(stage, timeout)
}

/// Heal attempts that failed, per volume key.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    next: Option<Instant>,
}

/// The reconciler's state between passes.
pub struct Reconciler {
    lifecycle: Arc<Lifecycle>,
    metrics: Arc<Metrics>,
    exec: Arc<Executor>,
    backoff: HashMap<String, Backoff>,
    fusectl: PathBuf,
    labels: LabelSources,
    /// What follows a heal: pods still holding the dead mount, evictions.
    dead: DeadMounts,
    /// Shares reported dead (ShareDead once per death, not every probe).
    reported_dead: HashSet<String>,
}

impl Reconciler {
    /// A reconciler over the daemon's lifecycle, taking volume locks through `exec`.
    pub fn new(lifecycle: Arc<Lifecycle>, metrics: Arc<Metrics>, exec: Arc<Executor>) -> Self {
        let proc = lifecycle.host().paths.proc.clone();
        Reconciler {
            fusectl: lifecycle.host().paths.sys.join(fusectl::CONNECTIONS_IN_SYS),
            lifecycle,
            metrics,
            exec,
            backoff: HashMap::new(),
            labels: LabelSources::new(crate::host::podlogs::DEFAULT_POD_LOG_DIR.into()),
            dead: DeadMounts::new(proc, crate::config::HealConfig::default()),
            reported_dead: HashSet::new(),
        }
    }

    /// Evicts pods that keep a dead mount as `heal` says (`heal.evict-pods`).
    pub fn with_heal(mut self, heal: crate::config::HealConfig) -> Self {
        self.dead = DeadMounts::new(self.lifecycle.host().paths.proc.clone(), heal);
        self
    }

    /// Follows heals with `dead` (tests point it at a fixture `/proc` and shorten its waits).
    pub fn with_dead_mounts(mut self, dead: DeadMounts) -> Self {
        self.dead = dead;
        self
    }

    /// Reads pods' namespaces from `dir` instead of kubelet's `/var/log/pods`.
    pub fn with_pod_log_dir(mut self, dir: PathBuf) -> Self {
        self.labels.pod_log_dir = dir;
        self
    }

    /// Labels PVs' statistics with their claims from `cache`.
    pub fn with_claims(mut self, cache: Arc<ClaimCache>) -> Self {
        self.labels.claims = Some(cache);
        self
    }

    /// Probes every staged share and heals the dead ones. Returns how many were healed.
    pub fn heal_shares(&mut self) -> usize {
        let mut healed = 0;
        for rs in self.lifecycle.remote_stages() {
            let seen = probe(&self.lifecycle, &rs.stage_path, PROBE_TIMEOUT);
            // CSI's volume condition reads it (NodeGetVolumeStats).
            self.lifecycle.note_probe(&rs.key, seen);
            if seen == Probe::Alive {
                self.backoff.remove(&rs.key);
                self.reported_dead.remove(&rs.key);
                continue;
            }
            self.metrics
                .stale_detected
                .get_or_create(&ErrorLabels {
                    driver: rs.driver.clone(),
                    op: "probe".into(),
                    reason: seen.label(),
                })
                .inc();
            tracing::warn!(volume = %rs.key, driver = %rs.driver, server = %rs.remote.server, target = %rs.stage_path.display(), seen = %seen.label(), "share is dead");
            if self.reported_dead.insert(rs.key.clone()) {
                self.notice(
                    &rs.key,
                    NoticeReason::ShareDead,
                    format!(
                        "share {} (server {}) is dead ({}); moor mounts it again",
                        rs.key,
                        rs.remote.server,
                        seen.label()
                    ),
                );
            }
            if self
                .backoff
                .get(&rs.key)
                .and_then(|b| b.next)
                .is_some_and(|n| Instant::now() < n)
            {
                continue;
            }
            // A hung FUSE client is aborted by heal_one: under the volume's lock, or, when a
            // call holds the lock, without it (only moor's own connection either way).
            if seen == Probe::Hung && !rs.remote.fuse {
                tracing::warn!(volume = %rs.key, server = %rs.remote.server, "server does not answer; a hard mount resumes when it does, so it is left mounted");
                continue;
            }
            if self.heal_one(&rs, seen == Probe::Hung) {
                healed += 1;
            }
        }
        if self.dead.due() {
            self.dead.scan(&self.lifecycle, &self.metrics);
        }
        healed
    }

    /// Sends a notice about volume `key` naming its driver, the pods of its publishes and,
    /// for CSI publishes, the PV.
    fn notice(&self, key: &str, reason: NoticeReason, message: String) {
        let publishes = self.lifecycle.publishes_of(key);
        let driver = self
            .lifecycle
            .remote_stages()
            .into_iter()
            .find(|s| s.key == key)
            .map(|s| s.driver)
            .unwrap_or_default();
        let mut n = Notice::new(reason, message)
            .volume(key, driver)
            .pods(publishes.iter().map(|p| p.pod_uid.clone()));
        if let Some(p) = publishes.iter().find(|p| p.csi) {
            n = n.pv(p.volume_name.clone());
        }
        self.lifecycle.cluster().notify.notify(n);
    }

    /// Aborts the hung FUSE connection of `rs`'s stage, only when the mount on the stage dir
    /// is of the superblock moor recorded: a FUSE connection is one per superblock, so the
    /// one aborted is moor's client, never a mount someone else put over the stage dir
    /// (refused: `not_owned`). The device aborted is the one checked, from one reading of
    /// the mount table; fusectl names connections of anonymous devices (major 0) only.
    fn abort_fuse(&self, rs: &RemoteStage) -> Result<(), Error> {
        let Some((major, minor)) = self.lifecycle.check_stage_top(&rs.key)? else {
            tracing::warn!(volume = %rs.key, "hung FUSE stage has no recorded device in the mount table; cannot abort it");
            return Ok(());
        };
        if major != 0 {
            tracing::warn!(volume = %rs.key, major, minor, "hung stage is not a FUSE connection fusectl names; not aborted");
            return Ok(());
        }
        let host = self.lifecycle.host();
        match fusectl::abort(host.mounter.as_ref(), &self.fusectl, minor) {
            Ok(()) => {
                tracing::warn!(volume = %rs.key, connection = minor, "hung FUSE connection aborted")
            }
            Err(e) => {
                tracing::error!(volume = %rs.key, connection = minor, error = %e, "cannot abort the hung FUSE connection")
            }
        }
        Ok(())
    }

    fn heal_one(&mut self, rs: &RemoteStage, hung: bool) -> bool {
        let lc = self.lifecycle.clone();
        let dead_dev = lc.stage_dev(&rs.key);
        let stack = self.dead.stack_targets(&lc, &rs.key, dead_dev);
        let attempt = self.exec.try_locked(&rs.key, || {
            // Checked again under the lock: kubelet may have just unstaged or remounted it.
            match probe(&lc, &rs.stage_path, PROBE_TIMEOUT) {
                Probe::Alive => Ok(None),
                // A hard NFS mount that hangs resumes when its server does.
                Probe::Hung if !rs.remote.fuse => Ok(None),
                seen => {
                    if seen == Probe::Hung {
                        self.abort_fuse(rs)?;
                    }
                    lc.heal_remote(&rs.key, &stack).map(Some)
                }
            }
        });
        let result = match attempt {
            // A kubelet call holding the lock may itself be stuck on the hung client: the
            // abort (of moor's own connection only) is what frees it, so it does not wait.
            None if hung && rs.remote.fuse => {
                if let Err(e) = self.abort_fuse(rs) {
                    tracing::warn!(volume = %rs.key, error = %crate::error::Chain(&e), "hung FUSE connection not aborted");
                }
                "busy"
            }
            None => "busy",
            Some(Ok(None)) => return false,
            Some(Ok(Some(healed))) => {
                self.backoff.remove(&rs.key);
                self.reported_dead.remove(&rs.key);
                self.dead.healed(rs, dead_dev, healed);
                "healed"
            }
            Some(Err(e)) => {
                let b = self.backoff.entry(rs.key.clone()).or_default();
                b.failures += 1;
                let wait = PROBE_INTERVAL
                    .saturating_mul(1 << b.failures.min(8))
                    .min(MAX_BACKOFF);
                b.next = Some(Instant::now() + wait);
                tracing::error!(volume = %rs.key, driver = %rs.driver, error = %crate::error::Chain(&e), retry_in = ?wait, "heal failed");
                self.notice(
                    &rs.key,
                    NoticeReason::ShareHealFailed,
                    format!(
                        "share {} (server {}) could not be mounted again ({}); retried in {} s",
                        rs.key,
                        rs.remote.server,
                        e.reason(),
                        wait.as_secs()
                    ),
                );
                "failed"
            }
        };
        self.metrics
            .heals
            .get_or_create(&HealLabels {
                driver: rs.driver.clone(),
                result: result.into(),
            })
            .inc();
        result == "healed"
    }
}

impl Reconciler {
    /// Finishes or undoes the transitions a failed journal write or rollback step left
    /// behind (a stage still mounted after its last pod's unmount, a half-made stage after a
    /// failed mount), each under its volume's lock taken only if free: kubelet's own call on
    /// that volume goes first, and this is tried again next pass. Returns how many volumes
    /// now have nothing left to finish.
    pub fn finish_pending(&self) -> usize {
        let mut done = 0;
        for key in self.lifecycle.pending_transitions() {
            let lc = &self.lifecycle;
            let Some(report) = self.exec.try_locked(&key, || lc.finish_pending(&key)) else {
                continue;
            };
            if report.problems.is_empty() {
                done += 1;
                tracing::warn!(volume = %key, ?report, "interrupted transition finished");
            } else {
                tracing::warn!(volume = %key, problems = ?report.problems, "interrupted transition not finished yet; retried next pass");
            }
        }
        done
    }

    /// Binds again the pod directories whose bind vanished under a live record, each under
    /// its volume's lock (an unpublish in progress is never undone). Returns how many.
    pub fn restore_publishes(&self) -> usize {
        let mut restored = 0;
        for (key, target) in self.lifecycle.vanished_publishes() {
            let lc = &self.lifecycle;
            if self.exec.try_locked(&key, || lc.restore_publish(&target)) == Some(true) {
                restored += 1;
            }
        }
        // A stacked layer that went (a peer's unpublish takes its copies along) is put back.
        for key in self.lifecycle.stacked_volumes() {
            let lc = &self.lifecycle;
            if let Some(n) = self.exec.try_locked(&key, || lc.restack(&key)) {
                restored += n;
            }
        }
        self.metrics.healed_publishes.inc_by(restored as u64);
        restored
    }
}

/// PVs and their claims as the API server says, for the statistics' labels: the pod cache
/// (a watch of this node's pods) knows each pod's claims and the PV each is bound to (one
/// GET per claim it had not seen), so no PV is asked for on an interval.
#[derive(Default)]
pub struct ClaimCache {
    pods: Option<Arc<crate::cluster::pods::PodCache>>,
}

impl ClaimCache {
    /// Claims as this node's pod cache knows them.
    pub fn from_pods(pods: Arc<crate::cluster::pods::PodCache>) -> Self {
        ClaimCache { pods: Some(pods) }
    }

    /// The claim through which pod `pod_uid` uses PV `pv` (its directory name), when the
    /// API server says that pod has a claim bound to that PV.
    fn claim(&self, pod_uid: &str, pv: &str) -> Option<BoundClaim> {
        let (namespace, name) = self.pods.as_ref()?.claim_of(pod_uid, pv)?;
        Some(BoundClaim {
            persistent_volume: pv.to_owned(),
            namespace,
            name,
        })
    }
}

/// Where the statistics' labels come from: only sources a pod author cannot write. A pod's
/// namespace is read from kubelet's pod log directory, cached by pod UID (a UID never
/// changes namespace) and looked up again at most once per pass; a PV and its claim come
/// from the pod cache when the daemon has credentials.
pub struct LabelSources {
    pod_log_dir: PathBuf,
    namespaces: HashMap<String, String>,
    claims: Option<Arc<ClaimCache>>,
}

impl LabelSources {
    /// Sources reading pod namespaces under `pod_log_dir`.
    pub fn new(pod_log_dir: PathBuf) -> Self {
        LabelSources {
            pod_log_dir,
            namespaces: HashMap::new(),
            claims: None,
        }
    }

    /// Also takes PVs' claims from `cache`.
    pub fn with_claims(mut self, cache: Arc<ClaimCache>) -> Self {
        self.claims = Some(cache);
        self
    }

    /// The uses of each volume, the namespace of each from the trusted sources. The
    /// namespace kubelet passed in the options (`PublishRecord::namespace`) is never read:
    /// an inline volume's author writes it.
    pub fn uses(&mut self, volumes: &[Vec<PublishRecord>]) -> Vec<Vec<VolumeUse>> {
        let all = || volumes.iter().flatten();
        if all().any(|p| !self.namespaces.contains_key(&p.pod_uid)) {
            match crate::host::podlogs::namespaces(&self.pod_log_dir) {
                Ok(found) => self.namespaces = found,
                Err(e) => {
                    tracing::warn!(dir = %self.pod_log_dir.display(), error = %e, "cannot read pod log directories; volume statistics get no namespace")
                }
            }
        }
        self.namespaces
            .retain(|uid, _| all().any(|p| p.pod_uid == *uid));
        volumes
            .iter()
            .map(|pubs| {
                pubs.iter()
                    .map(|p| {
                        let namespace = self.namespaces.get(&p.pod_uid).cloned();
                        // An inline volume may be named like a PV of another namespace: the
                        // claim counts only when it is in the pod's own (trusted) namespace.
                        let claim = self
                            .claims
                            .as_ref()
                            .and_then(|c| c.claim(&p.pod_uid, &p.volume_name))
                            .filter(|c| namespace.as_deref() == Some(c.namespace.as_str()));
                        VolumeUse {
                            volume_name: p.volume_name.clone(),
                            namespace,
                            claim,
                        }
                    })
                    .collect()
            })
            .collect()
    }
}

/// One statistics pass: refresh volume statistics, one series per volume key.
pub fn pass(lifecycle: &Lifecycle, metrics: &Metrics, sources: &mut LabelSources) {
    metrics.reconcile_runs.inc();
    let volumes = lifecycle.staged_volumes();
    let publishes: Vec<Vec<PublishRecord>> = volumes.iter().map(|(_, _, p)| p.clone()).collect();
    let uses = sources.uses(&publishes);
    let families = [
        &metrics.capacity_bytes,
        &metrics.available_bytes,
        &metrics.used_bytes,
        &metrics.inodes,
        &metrics.inodes_free,
        &metrics.inodes_used,
    ];
    let mut fresh = Vec::new();
    for ((stage, path, _), uses) in volumes.into_iter().zip(uses) {
        let stats = match fs_usage(&path, STAT_TIMEOUT) {
            Ok(s) => s,
            Err(UsageError::Failed(e)) => {
                tracing::warn!(volume = %stage.key, target = %path.display(), error = %e, "statvfs failed");
                continue;
            }
            Err(UsageError::Hung(t)) => {
                tracing::warn!(volume = %stage.key, target = %path.display(), error = %t, "statvfs hung");
                continue;
            }
        };
        let labels = volume_labels(&stage.key, &stage.driver, &uses);
        let values = [
            stats.capacity_bytes,
            stats.available_bytes,
            stats.used_bytes,
            stats.inodes,
            stats.inodes_free,
            stats.inodes.saturating_sub(stats.inodes_free),
        ];
        fresh.push((labels, values));
    }
    // Volumes that went away must not keep exporting their last value.
    for f in families {
        f.clear();
    }
    for (labels, values) in fresh {
        for (f, v) in families.iter().zip(values) {
            f.get_or_create(&labels).set(v);
        }
    }
}

/// Probes shares every few seconds — and soon after any mount-table change, so a FUSE
/// client whose `auto_unmount` took its mount along is healed at once — and runs [`pass`]
/// every `interval`, until dropped.
pub async fn run(mut rec: Reconciler, interval: Duration) {
    let changed = Arc::new(tokio::sync::Notify::new());
    watch_mount_table(
        &rec.lifecycle.host().paths.proc.join("self/mountinfo"),
        changed.clone(),
    );
    let mut tick = tokio::time::interval(interval.min(PROBE_INTERVAL));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_stats: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = changed.notified() => {
                // Coalesce a burst (a pod's volumes mount together) into one probe pass.
                tokio::time::sleep(MOUNT_CHANGE_SETTLE).await;
            }
        }
        let stats_due = last_stats.is_none_or(|t| t.elapsed() >= interval);
        if stats_due {
            last_stats = Some(Instant::now());
        }
        let done = tokio::task::spawn_blocking(move || {
            rec.finish_pending();
            rec.heal_shares();
            if stats_due {
                rec.restore_publishes();
                pass(&rec.lifecycle, &rec.metrics, &mut rec.labels);
            }
            rec
        })
        .await;
        match done {
            Ok(r) => rec = r,
            Err(e) => {
                tracing::error!(error = %e, "reconciler pass panicked; reconciler stopped");
                return;
            }
        }
    }
}

/// Wait after a mount-table change before probing, to coalesce bursts.
const MOUNT_CHANGE_SETTLE: Duration = Duration::from_millis(500);

/// Wakes `changed` whenever this mount namespace's table changes (see
/// [`crate::host::mountwatch`]); the table is the host paths' own, so a test points it
/// elsewhere.
fn watch_mount_table(mountinfo: &Path, changed: Arc<tokio::sync::Notify>) {
    if let Err(e) = crate::host::mountwatch::watch(mountinfo, move || changed.notify_one()) {
        tracing::warn!(path = %mountinfo.display(), error = %e, "cannot watch the mount table; probing on the timer only");
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::host::fake::{FakeHost, FakeMounts};
    use crate::host::{Errno, FsMount, MountTable, Mounter, MsFlags, Output};
    use crate::journal::record::PublishPhase;
    use crate::lifecycle::MountOutcome;
    use std::collections::BTreeMap;

    /// A daemon's reconciler over a fake host with one NFS volume published to two pods;
    /// every `mount -t nfs` the script sees is applied to the fake table, as mount(8) would.
    pub(crate) struct Node {
        pub(crate) _tmp: tempfile::TempDir,
        pub(crate) fake: FakeHost,
        pub(crate) lc: Arc<Lifecycle>,
        pub(crate) metrics: Arc<Metrics>,
        pub(crate) rec: Reconciler,
    }

    const EXPORT: &str = "10.0.0.5:/exports/a";

    pub(crate) fn expect_nfs_mount(fake: &FakeHost) {
        expect_nfs_mount_from(fake, EXPORT);
    }

    /// As [`expect_nfs_mount`], the mount's source (and so its fake device) being `source`.
    pub(crate) fn expect_nfs_mount_from(fake: &FakeHost, source: &'static str) {
        let mounts: Arc<FakeMounts> = fake.mounts.clone();
        fake.runner.expect_program("mount", move |cmd| {
            let target = PathBuf::from(cmd.args.last().unwrap());
            mounts
                .mount(
                    &FsMount {
                        source: source.into(),
                        target,
                        fs_type: "nfs".into(),
                        flags: MsFlags::empty(),
                        data: String::new(),
                    },
                    Duration::from_secs(1),
                )
                .unwrap();
            Output {
                code: Some(0),
                stdout: vec![],
                stderr: vec![],
            }
        });
    }

    impl Node {
        fn new() -> Self {
            Node::with(&["p1", "p2"], crate::cluster::Cluster::offline())
        }

        /// One NFS volume published to `pods` (their UIDs), reporting to `cluster`.
        pub(crate) fn with(pods: &[&str], cluster: crate::cluster::Cluster) -> Self {
            let tmp = tempfile::tempdir().unwrap();
            let fake = FakeHost::new(tmp.path());
            let lc = Arc::new(
                Lifecycle::over_fake(&fake, crate::daemon::drivers::builtin())
                    .with_cluster(cluster),
            );
            let metrics = Arc::new(Metrics::new());
            let exec = Arc::new(Executor::new(
                lc.clone(),
                metrics.clone(),
                Duration::from_secs(30),
            ));
            let rec = Reconciler::new(lc.clone(), metrics.clone(), exec)
                .with_pod_log_dir(tmp.path().join("pod-logs"));
            let node = Node {
                _tmp: tmp,
                fake,
                lc,
                metrics,
                rec,
            };
            expect_nfs_mount(&node.fake);
            for pod in pods {
                let opts = BTreeMap::from([
                    ("server".to_owned(), "10.0.0.5".to_owned()),
                    ("path".to_owned(), "/exports/a".to_owned()),
                ]);
                let opts = crate::volume::options::parse(&opts).unwrap();
                let plan = node.lc.plan_mount("nfs", &node.target(pod), &opts).unwrap();
                assert_eq!(node.lc.mount(&plan).unwrap(), MountOutcome::Published);
            }
            assert!(node.fake.runner.remaining().is_empty());
            node
        }

        pub(crate) fn target(&self, pod: &str) -> String {
            self.fake
                .host
                .paths
                .kubelet_dir
                .join(format!("pods/{pod}/volumes/moor~nfs/data"))
                .display()
                .to_string()
        }

        pub(crate) fn stage(&self) -> PathBuf {
            self.lc.remote_stages()[0].stage_path.clone()
        }

        pub(crate) fn mount_id(&self, p: &Path) -> Option<u64> {
            self.fake.mounts.get(p).map(|m| m.mount_id)
        }

        pub(crate) fn heals(&self, result: &str) -> u64 {
            self.metrics
                .heals
                .get_or_create(&HealLabels {
                    driver: "nfs".into(),
                    result: result.into(),
                })
                .get()
        }
    }

    /// A share that answers ESTALE is detected, and moor's own stage is mounted again and
    /// every pod directory bound again onto the new mount.
    #[test]
    fn a_stale_share_moor_staged_is_healed_and_its_pods_bound_again() {
        let mut n = Node::new();
        let stage = n.stage();
        let (t1, t2) = (PathBuf::from(n.target("p1")), PathBuf::from(n.target("p2")));
        let before = n.mount_id(&stage).unwrap();
        assert_eq!(n.rec.heal_shares(), 0, "a live share is left alone");
        n.fake.mounts.set_probe(&stage, Probe::Dead(Errno::ESTALE));
        expect_nfs_mount(&n.fake);
        assert_eq!(n.rec.heal_shares(), 1);
        assert!(
            n.fake.runner.remaining().is_empty(),
            "the export was mounted again"
        );
        let after = n.mount_id(&stage).expect("stage mounted again");
        assert_ne!(after, before, "a new mount, not the dead one");
        let stage_dev = n.fake.mounts.get(&stage).map(|m| (m.major, m.minor));
        for t in [&t1, &t2] {
            let m = n.fake.mounts.get(t).expect("pod bound again");
            assert_eq!(Some((m.major, m.minor)), stage_dev, "{}", t.display());
        }
        assert_eq!(n.heals("healed"), 1);
        assert_eq!(
            n.metrics
                .stale_detected
                .get_or_create(&ErrorLabels {
                    driver: "nfs".into(),
                    op: "probe".into(),
                    reason: "ESTALE".into(),
                })
                .get(),
            1
        );
        assert_eq!(n.rec.heal_shares(), 0, "healed: alive again");
    }

    /// A dead mount on the stage that moor did not make (stacked over its own) is never
    /// taken down: the heal fails, the mount stays, and the next try waits for the backoff.
    #[test]
    fn a_dead_mount_moor_did_not_make_is_left_alone() {
        let mut n = Node::new();
        let stage = n.stage();
        n.fake
            .mounts
            .mount(
                &FsMount {
                    source: "192.0.2.9:/theirs".into(),
                    target: stage.clone(),
                    fs_type: "nfs".into(),
                    flags: MsFlags::empty(),
                    data: String::new(),
                },
                Duration::from_secs(1),
            )
            .unwrap();
        let theirs = n.mount_id(&stage).unwrap();
        n.fake.mounts.set_probe(&stage, Probe::Dead(Errno::EIO));
        assert_eq!(n.rec.heal_shares(), 0);
        assert_eq!(
            n.mount_id(&stage),
            Some(theirs),
            "their mount is still there"
        );
        assert_eq!(
            n.fake.mounts.get(&stage).unwrap().source,
            "192.0.2.9:/theirs"
        );
        assert_eq!(n.heals("failed"), 1);
        assert!(
            n.fake
                .runner
                .calls()
                .iter()
                .filter(|c| c.program_name() == "mount")
                .count()
                == 1,
            "only the stage's first mount ran: none was attempted over theirs"
        );
        assert_eq!(n.rec.heal_shares(), 0);
        assert_eq!(n.heals("failed"), 1, "backing off: not tried again at once");
    }

    /// A pod's bind that vanished under a live record is bound again onto the stage; a
    /// pod directory that holds someone else's mount now is not touched.
    #[test]
    fn a_vanished_publish_is_restored_and_a_foreign_one_is_not() {
        let n = Node::new();
        let stage = n.stage();
        let (t1, t2) = (PathBuf::from(n.target("p1")), PathBuf::from(n.target("p2")));
        assert_eq!(n.rec.restore_publishes(), 0, "nothing vanished");
        n.fake
            .mounts
            .unmount(&t1, false, Duration::from_secs(1))
            .unwrap();
        n.fake
            .mounts
            .unmount(&t2, false, Duration::from_secs(1))
            .unwrap();
        n.fake
            .mounts
            .bind(Path::new("/elsewhere"), &t2, false)
            .unwrap();
        let foreign = n.fake.mounts.get(&t2).unwrap();
        assert_eq!(n.rec.restore_publishes(), 1);
        let stage_dev = n.fake.mounts.get(&stage).map(|m| (m.major, m.minor));
        let m = n.fake.mounts.get(&t1).expect("p1 bound again");
        assert_eq!(Some((m.major, m.minor)), stage_dev);
        assert_eq!(
            n.fake.mounts.get(&t2),
            Some(foreign),
            "p2's mount is not moor's"
        );
        assert_eq!(n.metrics.healed_publishes.get(), 1);
        assert!(n.fake.mounts.is_mount_point(&t1).unwrap());
    }

    fn publish(uid: &str, volume: &str, claimed_ns: Option<&str>) -> PublishRecord {
        PublishRecord {
            target: format!("/var/lib/kubelet/pods/{uid}/volumes/moor~local/{volume}").into(),
            key: format!("local-{uid}"),
            driver: "local".into(),
            pod_uid: uid.into(),
            volume_name: volume.into(),
            namespace: claimed_ns.map(Into::into),
            read_only: false,
            phase: PublishPhase::Published,
            mount_id: None,
            csi: false,
            block: false,
            layers: Vec::new(),
        }
    }

    #[test]
    fn a_namespace_in_the_options_is_never_a_label() {
        let logs = tempfile::tempdir().unwrap();
        std::fs::create_dir(logs.path().join("team-a_web-0_uid-a")).unwrap();
        std::fs::create_dir(logs.path().join("team-b_db-0_uid-b")).unwrap();
        let mut src = LabelSources::new(logs.path().into());
        let vols = vec![
            vec![publish("uid-a", "vol", Some("kube-system"))],
            vec![publish("uid-b", "vol", Some("kube-system"))],
            // A pod kubelet made no log directory for: its own claim is still not taken.
            vec![publish("uid-c", "vol", Some("kube-system"))],
        ];
        let uses = src.uses(&vols);
        let labels: Vec<_> = vols
            .iter()
            .zip(&uses)
            .map(|(v, u)| volume_labels(&v[0].key, "local", u))
            .collect();
        assert_eq!(labels[0].namespace, "team-a");
        assert_eq!(labels[1].namespace, "team-b");
        assert_eq!(labels[2].namespace, "");
        assert!(labels.iter().all(|l| l.volume == "vol"));
        assert_ne!(labels[0], labels[1]);
        // A pod whose log directory appears later is found on a later pass.
        std::fs::create_dir(logs.path().join("team-c_job-0_uid-c")).unwrap();
        assert_eq!(src.uses(&vols)[2][0].namespace.as_deref(), Some("team-c"));
    }

    #[test]
    fn a_claim_label_comes_from_the_pods_own_bound_claim_in_its_own_namespace() {
        use crate::testkit::fakeapi::FakeApi;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let logs = tempfile::tempdir().unwrap();
        std::fs::create_dir(logs.path().join("team-a_web-0_uid-a")).unwrap();
        std::fs::create_dir(logs.path().join("team-b_evil-0_uid-b")).unwrap();
        let (api, pods) = rt.block_on(async {
            let api = FakeApi::start().await;
            let pod = |ns: &str, name: &str, uid: &str, vols: serde_json::Value| {
                serde_json::json!({"metadata":{"namespace":ns,"name":name,"uid":uid},
                    "spec":{"nodeName":"node-a","containers":[{"name":"c","image":"x"}],"volumes":vols}})
            };
            api.put(
                "pods",
                pod("team-a", "web-0", "uid-a", serde_json::json!([{"name":"data","persistentVolumeClaim":{"claimName":"data"}}])),
            );
            // An inline volume in team-b named like team-a's PV.
            api.put(
                "pods",
                pod("team-b", "evil-0", "uid-b", serde_json::json!([{"name":"pv-1","flexVolume":{"driver":"moor/local"}}])),
            );
            api.put(
                "persistentvolumeclaims",
                serde_json::json!({"metadata":{"namespace":"team-a","name":"data"},"spec":{"volumeName":"pv-1"}}),
            );
            let (_c, pods, _m) = api.cluster(false, crate::cluster::watch::Timings::PRODUCTION);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !pods.is_current() {
                assert!(Instant::now() < deadline, "pod cache never synced");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (api, pods)
        });
        let cache = Arc::new(ClaimCache::from_pods(pods));
        let mut src = LabelSources::new(logs.path().into()).with_claims(cache);
        let vols = [
            vec![publish("uid-a", "pv-1", None)],
            vec![publish("uid-b", "pv-1", Some("team-a"))],
        ];
        for _ in 0..3 {
            let uses = src.uses(&vols);
            let a = volume_labels("k-a", "local", &uses[0]);
            assert_eq!(
                (
                    a.namespace.as_str(),
                    a.persistentvolumeclaim.as_str(),
                    a.persistentvolume.as_str()
                ),
                ("team-a", "data", "pv-1")
            );
            let b = volume_labels("k-b", "local", &uses[1]);
            assert_eq!(
                (
                    b.namespace.as_str(),
                    b.persistentvolumeclaim.as_str(),
                    b.persistentvolume.as_str()
                ),
                ("team-b", "", "")
            );
        }
        // Passes ask nothing: one GET for the claim, no PV read at all.
        let counts = api.counts();
        assert_eq!(
            counts.get("get persistentvolumeclaims"),
            Some(&1),
            "{counts:?}"
        );
        assert!(
            !counts.keys().any(|k| k.contains("persistentvolumes")),
            "{counts:?}"
        );
        drop(rt);
    }

    #[test]
    fn without_a_pod_log_dir_the_namespace_is_empty() {
        let mut src = LabelSources::new("/nonexistent/moor-pod-logs".into());
        let uses = src.uses(&[vec![publish("uid-a", "vol", Some("kube-system"))]]);
        assert_eq!(uses[0][0].namespace, None);
    }
}
