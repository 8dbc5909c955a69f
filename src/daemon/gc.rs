//! The orphan collector: periodically, each publish whose pod the API server confirms gone
//! for longer than `gc.grace-seconds` is cleaned ([`crate::lifecycle::orphans`]); and
//! `moor gc` ([`crate::api::Request::Gc`]): the list of every publish with what the API
//! server says of its pod, and the cleaning of the pods an operator names.
//!
//! Invariants:
//! - a volume is cleaned only under its lock (and a CSI publish's `volume_id` lock), taken
//!   only if free: kubelet's own call on that volume goes first, the next pass retries;
//! - on its own the daemon cleans only [`PodState::Gone`] pods past the grace, timed from
//!   when this daemon first saw them gone (memory only), and only with `gc.orphans` on;
//!   [`PodState::Unknown`] never (no credentials means no guess); and not while a process
//!   of the pod still runs here (deleted in the API server while kubelet was down, its
//!   containers keep running until kubelet returns and stops them);
//! - a named pod (`moor gc --pod`) is refused while the API server lists it or a process in
//!   its cgroup is alive on this node (read from [`crate::host::HostPaths::proc`]), and when
//!   that cannot be read;
//! - a cleaning that failed is retried with backoff (a foreign mount stays refused, and is
//!   logged, not once per pass but at a falling rate).

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::api::{GcVolume, Response};
use crate::cluster::{Notice, NoticeReason, PodState};
use crate::config::GcConfig;
use crate::error::{Chain, Error};
use crate::lifecycle::Lifecycle;
use crate::lifecycle::orphans::{
    GoneSince, OrphanCause, OrphanCleaning, PodVolume, Verdict, decide, decide_named,
};
use crate::metrics::{DriverLabels, Metrics};

/// Runs the closure under the volume's lock (and a CSI publish's `volume_id` lock), each
/// taken only if free; false when busy (the closure did not run).
pub type TryLocked<'a> = dyn Fn(&PodVolume, &mut dyn FnMut()) -> bool + Send + Sync + 'a;

/// First retry of a failed cleaning, doubled per failure up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(60);
/// Longest wait between two attempts at one failed cleaning.
const MAX_RETRY: Duration = Duration::from_secs(1800);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section is a map update that cannot panic half-way.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug, Default)]
struct Retry {
    failures: u32,
    next: Option<Instant>,
    /// What the last attempt ran into (`moor gc` shows it).
    last: String,
}

/// The collector's state: its config, when each pod was first seen gone, failed cleanings.
pub struct Orphans {
    lifecycle: Arc<Lifecycle>,
    metrics: Arc<Metrics>,
    cfg: GcConfig,
    gone: Mutex<GoneSince>,
    retry: Mutex<HashMap<PathBuf, Retry>>,
    /// This daemon sees the node's processes (not a container without `hostPID`): the
    /// live-process check of a named pod can be trusted.
    sees_node: bool,
    /// Where the node's processes are read (the host paths' procfs root).
    proc: PathBuf,
}

impl Orphans {
    /// A collector over the daemon's lifecycle with the `gc:` section `cfg`.
    pub fn new(lifecycle: Arc<Lifecycle>, metrics: Arc<Metrics>, cfg: GcConfig) -> Self {
        // Every driver's series exists from the start (at 0), so a rate() or an alert on it
        // sees the first cleaning.
        for d in crate::flexvolume::DRIVERS {
            let _ = metrics.orphans_cleaned.get_or_create(&DriverLabels {
                driver: (*d).into(),
            });
        }
        Orphans {
            metrics,
            cfg,
            gone: Mutex::new(GoneSince::default()),
            retry: Mutex::new(HashMap::new()),
            sees_node: true,
            proc: lifecycle.host().paths.proc.clone(),
            lifecycle,
        }
    }

    /// Whether this daemon sees the node's processes; when not (a container without
    /// `hostPID`), every named pod is refused: no process of it could be seen alive.
    pub fn seeing_node_processes(mut self, sees: bool) -> Self {
        self.sees_node = sees;
        self
    }

    /// How often the periodic pass runs: often enough that a cleaning comes within a fifth
    /// of the grace after it ends, never more than every second nor less than every 30 s.
    pub fn interval(&self) -> Duration {
        (self.cfg.grace / 5).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }

    /// Observes every publish's pod now; the publishes with their pod's state and how long
    /// it has been gone.
    fn observe(&self) -> Vec<(PodVolume, PodState, Option<Duration>)> {
        let now = Instant::now();
        let pods = &self.lifecycle.cluster().pods;
        let volumes = self.lifecycle.pod_volumes();
        let mut states: HashMap<String, PodState> = HashMap::new();
        let mut gone = lock(&self.gone);
        let out = volumes
            .into_iter()
            .map(|v| {
                let state = states
                    .entry(v.pod_uid.clone())
                    .or_insert_with(|| pods.pod(&v.pod_uid))
                    .clone();
                let gone_for = gone.observe(&v.pod_uid, &state, now);
                (v, state, gone_for)
            })
            .collect::<Vec<_>>();
        gone.retain(&out.iter().map(|(v, _, _)| v.pod_uid.clone()).collect());
        out
    }

    /// One periodic pass: cleans the publishes of pods confirmed gone past the grace.
    /// Returns what was done to each one it tried (blocking: run it off the async runtime).
    pub fn pass(&self, locks: &TryLocked<'_>) -> Vec<GcVolume> {
        if !self.cfg.orphans {
            return Vec::new();
        }
        let mut done = Vec::new();
        for (v, state, gone_for) in self.observe() {
            if decide(&state, gone_for, self.cfg.grace) != Verdict::Clean || !self.due(&v) {
                continue;
            }
            let mut r = self.row(&v, &state, gone_for);
            if let Some(why) = self.running_here(&v.pod_uid) {
                // Deleted in the API server while kubelet is down, its containers still
                // run here: unstaging (a logout, an unmap) under them could lose writes.
                // kubelet stops them when it comes back, then unmounts by itself.
                let (wait, _) = self.back_off(&v, &why);
                tracing::warn!(volume = %v.key, pod_uid = %v.pod_uid, why = %why, retry_in = ?wait, "the API server says the pod is gone but it still runs here; its volume stays");
                r.action = "wait".into();
                r.detail = why;
            } else {
                self.clean(&v, OrphanCause::Confirmed, locks, &mut r);
            }
            done.push(r);
        }
        if done
            .iter()
            .any(|r| r.action == "cleaned" || r.action == "partial")
        {
            self.metrics.set_volume_counts(self.lifecycle.counts());
        }
        done
    }

    /// Why pod `uid` counts as still running on this node, if it does: a process in its
    /// cgroup, or processes that cannot be read. `None` when this daemon cannot see the
    /// node's processes at all (the API server's word stands then).
    fn running_here(&self, uid: &str) -> Option<String> {
        if !self.sees_node {
            return None;
        }
        let proc = &self.proc;
        match crate::host::podproc::pod_processes(proc, uid) {
            Ok(live) if live.is_empty() => None,
            Ok(live) => Some(format!(
                "a process of pod {uid} still runs here ({:?})",
                &live[..live.len().min(5)]
            )),
            Err(e) => Some(format!(
                "cannot tell whether pod {uid} still runs here ({}: {e})",
                proc.display()
            )),
        }
    }

    /// Schedules the next attempt at `v` after a failure (`why`); returns the wait.
    /// Schedules the next try of `v` and returns the wait, and whether `why` is new for it
    /// (its first failure, or another reason than the last one).
    fn back_off(&self, v: &PodVolume, why: &str) -> (Duration, bool) {
        let mut retry = lock(&self.retry);
        let b = retry.entry(v.target.clone()).or_default();
        b.failures = b.failures.saturating_add(1);
        let new = b.last != why;
        b.last = why.to_owned();
        let wait = FIRST_RETRY
            .saturating_mul(1 << b.failures.min(6).saturating_sub(1))
            .min(MAX_RETRY);
        b.next = Some(Instant::now() + wait);
        (wait, new)
    }

    fn due(&self, v: &PodVolume) -> bool {
        lock(&self.retry)
            .get(&v.target)
            .and_then(|r| r.next)
            .is_none_or(|n| Instant::now() >= n)
    }

    /// Answers `moor gc`: every publish (or the named pods' ones) with what moor does about
    /// it; the named pods are cleaned unless `dry_run`.
    pub fn request(&self, named: &[String], dry_run: bool, locks: &TryLocked<'_>) -> Response {
        let named: BTreeSet<&str> = named.iter().map(String::as_str).collect();
        let mut rows = Vec::new();
        let mut seen = BTreeSet::new();
        for (v, state, gone_for) in self.observe() {
            if !named.is_empty() && !named.contains(v.pod_uid.as_str()) {
                continue;
            }
            seen.insert(v.pod_uid.clone());
            let mut r = self.row(&v, &state, gone_for);
            if named.is_empty() {
                self.explain(&mut r, &state, gone_for);
                self.last_attempt(&v, &mut r);
            } else {
                match self.named_refusal(&v.pod_uid, &state) {
                    Some(why) => {
                        r.action = "refused".into();
                        r.detail = why;
                    }
                    None if dry_run => {
                        r.action = "clean".into();
                        r.detail = "would be unpublished and its empty directories removed".into();
                    }
                    None => self.clean(&v, OrphanCause::Named, locks, &mut r),
                }
            }
            rows.push(r);
        }
        for uid in named.iter().filter(|u| !seen.contains(**u)) {
            rows.push(GcVolume {
                pod_uid: (*uid).into(),
                pod: pod_label(&self.lifecycle.cluster().pods.pod(uid)).into(),
                action: "none".into(),
                detail: "moor has no publish of this pod".into(),
                ..GcVolume::default()
            });
        }
        Response::Gc {
            volumes: rows,
            dry_run,
            orphans: self.cfg.orphans,
            connected: self.lifecycle.cluster().connected,
            grace_seconds: self.cfg.grace.as_secs(),
        }
    }

    /// Why a named pod is refused, if it is (see the module header).
    fn named_refusal(&self, uid: &str, state: &PodState) -> Option<String> {
        if !self.sees_node {
            return Some(format!(
                "cannot tell whether pod {uid} still runs here: this daemon does not see the node's processes (a container without hostPID)"
            ));
        }
        let proc = &self.proc;
        let live = match crate::host::podproc::pod_processes(proc, uid) {
            Ok(l) => l,
            Err(e) => {
                return Some(format!(
                    "cannot tell whether pod {uid} still runs here ({}: {e})",
                    proc.display()
                ));
            }
        };
        decide_named(uid, state, &live)
            .err()
            .map(|e| format!("{}: {e}", e.reason()))
    }

    /// What the daemon does on its own about a listed publish.
    fn explain(&self, r: &mut GcVolume, state: &PodState, gone_for: Option<Duration>) {
        let (action, detail) = match decide(state, gone_for, self.cfg.grace) {
            Verdict::Present => ("keep", "the pod exists".to_owned()),
            Verdict::Unknown => (
                "keep",
                "the API server cannot confirm the pod is gone (no credentials, or not synced); only moor gc --pod <uid> cleans it".to_owned(),
            ),
            Verdict::Wait(left) if self.cfg.orphans => (
                "wait",
                format!("gone; kubelet has {}s left to unmount it before moor does", left.as_secs()),
            ),
            Verdict::Clean if self.cfg.orphans => (
                "clean",
                "gone past the grace: the daemon cleans it on its next pass".to_owned(),
            ),
            _ => (
                "keep",
                "gone, but gc.orphans is off: moor gc --pod <uid> cleans it".to_owned(),
            ),
        };
        r.action = action.into();
        r.detail = detail;
    }

    /// A volume the daemon tried and could not clean: what stopped it, and when it tries
    /// again (an operator reads this rather than the log).
    fn last_attempt(&self, v: &PodVolume, r: &mut GcVolume) {
        let retry = lock(&self.retry);
        let Some(b) = retry
            .get(&v.target)
            .filter(|b| r.action == "clean" && b.failures > 0)
        else {
            return;
        };
        let left = b
            .next
            .map_or(0, |n| n.saturating_duration_since(Instant::now()).as_secs());
        r.action = "retrying".into();
        r.detail = format!("{} (attempt {}; next in {left}s)", b.last, b.failures);
    }

    fn row(&self, v: &PodVolume, state: &PodState, gone_for: Option<Duration>) -> GcVolume {
        GcVolume {
            pod_uid: v.pod_uid.clone(),
            driver: v.driver.clone(),
            key: v.key.clone(),
            target: v.target.display().to_string(),
            csi: v.csi_volume_id.is_some(),
            pod: pod_label(state).into(),
            gone_seconds: gone_for.map(|d| d.as_secs()),
            ..GcVolume::default()
        }
    }

    /// Cleans `v` under its locks; fills `r` with the outcome and counts it.
    fn clean(&self, v: &PodVolume, cause: OrphanCause, locks: &TryLocked<'_>, r: &mut GcVolume) {
        let mut out: Option<Result<OrphanCleaning, Error>> = None;
        let ran = locks(v, &mut || {
            out = Some(self.lifecycle.clean_orphan(&v.target, cause));
        });
        match out {
            None => {
                debug_assert!(!ran);
                r.action = "busy".into();
                r.detail = "an operation on the volume is in progress; try again".into();
            }
            Some(Ok(c)) => {
                lock(&self.retry).remove(&v.target);
                r.unstaged = c.unstaged;
                r.removed = c.removed.iter().map(|d| d.display().to_string()).collect();
                r.left = c
                    .left
                    .iter()
                    .map(|(d, why)| format!("{}: {why}", d.display()))
                    .chain(c.kubelet_files.iter().map(|d| {
                        format!(
                            "{}: kubelet's vol_data.json (kubelet removes it)",
                            d.display()
                        )
                    }))
                    .collect();
                if c.unpublished {
                    self.metrics
                        .orphans_cleaned
                        .get_or_create(&DriverLabels {
                            driver: v.driver.clone(),
                        })
                        .inc();
                    // Content moor did not expect in a pod volume dir: the pod's data, or
                    // kubelet still there. An operator looks; kubelet keeps complaining.
                    r.action = if c.left.is_empty() && c.stage_error.is_none() {
                        "cleaned"
                    } else {
                        "partial"
                    }
                    .into();
                    r.detail = match &c.stage_kept {
                        _ if c.stage_error.is_some() => format!(
                            "unpublished; its unstage failed and the reconciler retries it ({})",
                            c.stage_error.as_deref().unwrap_or_default()
                        ),
                        Some(s) => format!(
                            "unpublished; the CSI stage {} stays for kubelet's NodeUnstageVolume",
                            s.display()
                        ),
                        None if c.unstaged => "unpublished, unstaged and detached".into(),
                        None => "unpublished; the stage stays for its other pods".into(),
                    };
                } else {
                    r.action = "none".into();
                    r.detail = "kubelet unmounted it meanwhile".into();
                }
            }
            Some(Err(e)) => {
                let why = format!("{}: {}", e.reason(), Chain(&e));
                let (wait, new) = self.back_off(v, &why);
                tracing::warn!(volume = %v.key, driver = %v.driver, pod_uid = %v.pod_uid, target = %v.target.display(),
                    reason = e.reason(), error = %Chain(&e), retry_in = ?wait, "orphaned pod volume not cleaned");
                // On the node (the pod is gone); once per reason, not on every retry.
                if new {
                    let msg = format!(
                        "volume {} of gone pod {} at {} not cleaned ({why}); retried in {} s",
                        v.key,
                        v.pod_uid,
                        v.target.display(),
                        wait.as_secs()
                    );
                    self.lifecycle.cluster().notify.notify(
                        Notice::new(NoticeReason::OrphanNotCleaned, msg)
                            .volume(v.key.clone(), v.driver.clone()),
                    );
                }
                r.action = if e.reason() == "not_owned" {
                    "refused"
                } else {
                    "failed"
                }
                .into();
                r.detail = why;
            }
        }
    }
}

fn pod_label(s: &PodState) -> &'static str {
    match s {
        PodState::Present(_) => "present",
        PodState::Gone => "gone",
        PodState::Unknown => "unknown",
    }
}

/// Runs [`Orphans::pass`] every [`Orphans::interval`] until aborted.
pub async fn run(orphans: Arc<Orphans>, locks: Arc<TryLocked<'static>>) {
    let mut tick = tokio::time::interval(orphans.interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (o, l) = (orphans.clone(), locks.clone());
        match tokio::task::spawn_blocking(move || o.pass(&*l)).await {
            Ok(done) => {
                for r in done.iter().filter(|r| r.action == "cleaned") {
                    tracing::info!(pod_uid = %r.pod_uid, volume = %r.key, driver = %r.driver, "orphan collector cleaned a gone pod's volume");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "orphan collector pass panicked; collector stopped");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{Cluster, Eviction, NoticeReason, Notify, Offline, PodInfo, Pods};
    use crate::host::fake::FakeHost;
    use crate::journal::Journal;
    use crate::lifecycle::{MountOutcome, Timeouts};

    /// The API server's view, as a test sets it.
    #[derive(Default)]
    struct SetPods(Mutex<HashMap<String, PodState>>);

    impl Pods for SetPods {
        fn pod(&self, uid: &str) -> PodState {
            lock(&self.0).get(uid).cloned().unwrap_or(PodState::Unknown)
        }
        fn evict(&self, _: &str, _: &str, _: &str) -> Eviction {
            Eviction::Failed("test".into())
        }
    }

    fn present(uid: &str) -> PodState {
        PodState::Present(PodInfo {
            namespace: "ns".into(),
            name: format!("{uid}-name"),
            uid: uid.into(),
            mounts: vec![],
            pvs: Default::default(),
            controlled: true,
        })
    }

    /// A node over the fake host with one local directory published to pods p1 (gone),
    /// p2 (present) and p3 (unknown).
    struct Node {
        tmp: tempfile::TempDir,
        fake: FakeHost,
        pods: Arc<SetPods>,
        lc: Arc<Lifecycle>,
        metrics: Arc<Metrics>,
        notices: Arc<Offline>,
    }

    impl Node {
        fn new() -> Self {
            let tmp = tempfile::tempdir().unwrap();
            let fake = FakeHost::new(tmp.path());
            std::fs::create_dir_all(tmp.path().join("proc")).unwrap();
            let src = tmp.path().join("data");
            std::fs::create_dir_all(&src).unwrap();
            let paths = fake.host.paths.clone();
            let ids = crate::host::devid::IdSources {
                dev_dir: paths.dev.clone(),
                udev_dir: tmp.path().join("udev"),
                sys: paths.sys.clone(),
            };
            let drivers = crate::daemon::drivers::with_local_sources(
                crate::daemon::drivers::builtin(),
                &paths,
                crate::host::allow::AllowList {
                    directories: vec![src.clone()],
                    ..Default::default()
                },
                ids,
            );
            let pods = Arc::new(SetPods::default());
            lock(&pods.0).insert("p1".into(), PodState::Gone);
            lock(&pods.0).insert("p2".into(), present("p2"));
            let notices = Arc::new(Offline::default());
            let journal = Journal::open(&paths.state_dir, &paths.run_dir).unwrap();
            let lc = Lifecycle::new(
                fake.host.clone(),
                journal,
                drivers,
                "n".into(),
                Timeouts::default(),
            )
            .with_cluster(Cluster {
                notify: notices.clone(),
                pods: pods.clone(),
                connected: true,
            });
            let opts =
                std::collections::BTreeMap::from([("path".to_owned(), src.display().to_string())]);
            let opts = crate::volume::options::parse(&opts).unwrap();
            let node = Node {
                tmp,
                fake,
                pods,
                lc: Arc::new(lc),
                metrics: Arc::new(Metrics::new()),
                notices,
            };
            for pod in ["p1", "p2", "p3"] {
                let plan = node
                    .lc
                    .plan_mount("local", &node.target(pod), &opts)
                    .unwrap();
                assert_eq!(node.lc.mount(&plan).unwrap(), MountOutcome::Published);
            }
            node
        }

        fn target(&self, pod: &str) -> String {
            self.tmp
                .path()
                .join(format!("kubelet/pods/{pod}/volumes/moor~local/vol"))
                .display()
                .to_string()
        }

        fn orphans(&self, grace: Duration, on: bool) -> Orphans {
            let cfg = GcConfig { orphans: on, grace };
            let mut o = Orphans::new(self.lc.clone(), self.metrics.clone(), cfg);
            // The node's processes, as a test writes them (`<pid>/cgroup`).
            o.proc = self.tmp.path().join("proc");
            o
        }

        fn published(&self) -> Vec<String> {
            self.lc
                .pod_volumes()
                .into_iter()
                .map(|v| v.pod_uid)
                .collect()
        }

        fn cleaned(&self) -> u64 {
            self.metrics
                .orphans_cleaned
                .get_or_create(&DriverLabels {
                    driver: "local".into(),
                })
                .get()
        }
    }

    fn free(_: &PodVolume, f: &mut dyn FnMut()) -> bool {
        f();
        true
    }

    fn busy(_: &PodVolume, _: &mut dyn FnMut()) -> bool {
        false
    }

    #[test]
    fn a_pass_cleans_only_the_pods_confirmed_gone_past_the_grace() {
        let n = Node::new();
        let o = n.orphans(Duration::ZERO, true);
        let done = o.pass(&free);
        assert_eq!(done.len(), 1, "{done:?}");
        assert_eq!(
            (done[0].pod_uid.as_str(), done[0].action.as_str()),
            ("p1", "cleaned")
        );
        assert_eq!(n.published(), ["p2", "p3"]);
        let p1 = PathBuf::from(n.target("p1"));
        assert!(!p1.exists() && !p1.parent().unwrap().exists());
        assert!(
            p1.parent().unwrap().parent().unwrap().is_dir(),
            "volumes/ stays"
        );
        assert!(PathBuf::from(n.target("p2")).is_dir());
        assert_eq!(n.cleaned(), 1);
        let notices = n.notices.recent();
        assert_eq!(notices.len(), 1);
        assert_eq!(notices[0].notice.reason, NoticeReason::OrphanCleaned);
        assert!(notices[0].notice.pod_uids.is_empty(), "on the node");
        // Nothing left to do.
        assert!(o.pass(&free).is_empty());
        assert_eq!(n.cleaned(), 1);
    }

    #[test]
    fn a_gone_pod_whose_process_still_runs_here_is_left_until_it_ends() {
        let n = Node::new();
        let pid = n.tmp.path().join("proc/4242");
        std::fs::create_dir_all(&pid).unwrap();
        std::fs::write(pid.join("cgroup"), "0::/kubepods/besteffort/podp1/c0ffee\n").unwrap();
        let o = n.orphans(Duration::ZERO, true);
        let done = o.pass(&free);
        assert_eq!(done[0].action, "wait", "{done:?}");
        assert!(done[0].detail.contains("4242"), "{done:?}");
        assert_eq!(n.published(), ["p1", "p2", "p3"]);
        // Retried later (backoff), not every pass, and the list says why; once it ended,
        // cleaned.
        assert!(o.pass(&free).is_empty());
        let Response::Gc { volumes, .. } = o.request(&[], false, &free) else {
            panic!("not a gc answer");
        };
        assert_eq!(volumes[0].action, "retrying", "{volumes:?}");
        assert!(volumes[0].detail.contains("4242"), "{volumes:?}");
        std::fs::remove_dir_all(&pid).unwrap();
        lock(&o.retry).clear();
        assert_eq!(o.pass(&free)[0].action, "cleaned");
    }

    #[test]
    fn a_last_publish_whose_unstage_fails_is_still_the_pods_part_done() {
        use crate::host::{Errno, Mounter, Target};
        let n = Node::new();
        lock(&n.pods.0).remove("p2");
        let o = n.orphans(Duration::ZERO, true);
        let Response::Gc { volumes, .. } = o.request(&["p2".into(), "p3".into()], false, &free)
        else {
            panic!("not a gc answer");
        };
        assert!(volumes.iter().all(|v| v.action == "cleaned"), "{volumes:?}");
        // p1's bind is already gone, and the stage's unmount fails.
        let p1 = PathBuf::from(n.target("p1"));
        n.fake
            .mounts
            .unmount_target(&Target::by_path(&p1), false, Duration::from_secs(1))
            .unwrap();
        n.fake.mounts.fail_next("unmount", Errno::EIO);
        let done = o.pass(&free);
        assert_eq!(done[0].action, "partial", "{done:?}");
        assert!(done[0].detail.contains("unstage failed"), "{done:?}");
        assert!(n.published().is_empty());
        assert!(!p1.exists(), "the pod's directories go with its publish");
        assert_eq!(n.cleaned(), 3, "p1, and p2 and p3 named");
        // The stage is left for the reconciler's finish_pending.
        assert_eq!(n.lc.pending_transitions().len(), 1);
    }

    #[test]
    fn a_volume_not_cleaned_is_reported_once_per_reason_on_the_node() {
        use crate::host::Errno;
        let n = Node::new();
        let o = n.orphans(Duration::ZERO, true);
        let not_cleaned = || {
            n.notices
                .recent()
                .into_iter()
                .filter(|r| r.notice.reason == NoticeReason::OrphanNotCleaned)
                .map(|r| r.notice)
                .collect::<Vec<_>>()
        };
        let again = |o: &Orphans| {
            for b in lock(&o.retry).values_mut() {
                b.next = None;
            }
        };
        n.fake.mounts.fail_next("unmount", Errno::EIO);
        let done = o.pass(&free);
        assert_eq!(done[0].action, "failed", "{done:?}");
        let first = not_cleaned();
        assert_eq!(first.len(), 1, "{first:?}");
        assert!(first[0].pod_uids.is_empty(), "on the node: the pod is gone");
        assert!(
            first[0].message.contains("p1") && first[0].message.contains("retried in"),
            "{}",
            first[0].message
        );
        assert_eq!(first[0].driver.as_deref(), Some("local"));
        // The same failure on the retry: no second notice.
        again(&o);
        n.fake.mounts.fail_next("unmount", Errno::EIO);
        assert_eq!(o.pass(&free)[0].action, "failed");
        assert_eq!(not_cleaned().len(), 1);
        // Another reason is news.
        again(&o);
        n.fake.mounts.fail_next("unmount", Errno::EBUSY);
        assert_eq!(o.pass(&free)[0].action, "failed");
        assert_eq!(not_cleaned().len(), 2);
        again(&o);
        assert_eq!(o.pass(&free)[0].action, "cleaned");
    }

    #[test]
    fn within_the_grace_or_with_gc_off_nothing_is_cleaned_and_the_list_says_why() {
        let n = Node::new();
        for o in [
            n.orphans(Duration::from_secs(3600), true),
            n.orphans(Duration::ZERO, false),
        ] {
            assert!(o.pass(&free).is_empty());
            let Response::Gc { volumes, .. } = o.request(&[], false, &free) else {
                panic!("not a gc answer");
            };
            let actions: Vec<(&str, &str, &str)> = volumes
                .iter()
                .map(|v| (v.pod_uid.as_str(), v.pod.as_str(), v.action.as_str()))
                .collect();
            let p1 = if o.cfg.orphans { "wait" } else { "keep" };
            assert_eq!(
                actions,
                [
                    ("p1", "gone", p1),
                    ("p2", "present", "keep"),
                    ("p3", "unknown", "keep")
                ]
            );
        }
        assert_eq!(n.published(), ["p1", "p2", "p3"]);
        assert_eq!(n.cleaned(), 0);
    }

    #[test]
    fn a_busy_volume_waits_for_the_next_pass_and_a_named_present_pod_is_refused() {
        let n = Node::new();
        let o = n.orphans(Duration::ZERO, true);
        let done = o.pass(&busy);
        assert_eq!(done[0].action, "busy");
        assert_eq!(n.published(), ["p1", "p2", "p3"]);
        assert_eq!(o.pass(&free)[0].action, "cleaned");

        let Response::Gc { volumes, .. } = o.request(&["p2".into()], false, &free) else {
            panic!("not a gc answer");
        };
        assert_eq!(volumes[0].action, "refused");
        assert!(volumes[0].detail.starts_with("pod_exists"), "{volumes:?}");
        assert!(volumes[0].failed());
        // Unknown to the API server, named by the operator: cleaned, unless the daemon
        // cannot see the node's processes.
        let blind = n.orphans(Duration::ZERO, true).seeing_node_processes(false);
        let Response::Gc { volumes, .. } = blind.request(&["p3".into()], false, &free) else {
            panic!("not a gc answer");
        };
        assert_eq!(volumes[0].action, "refused", "{volumes:?}");
        let Response::Gc { volumes, .. } = o.request(&["p3".into()], false, &free) else {
            panic!("not a gc answer");
        };
        assert_eq!(volumes[0].action, "cleaned", "{volumes:?}");
        assert_eq!(n.published(), ["p2"]);
    }
}
