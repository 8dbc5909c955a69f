//! What follows a heal: which pods' containers still hold the dead share's old mount (their
//! volume mounts do not propagate, so the heal cannot reach them), reported as a notice, a
//! metric and a `moor status` row, and — where the operator opted in — evicted so their
//! controllers recreate them on the healed mount. Also the heal's own notices, and which
//! pod directories a heal stacks over instead of replacing.
//!
//! Invariants: the scan reads only procfs (never the dead mount) and runs on the
//! reconciler's blocking thread, once right after a heal and then every
//! [`SCAN_INTERVAL`] while any pod still holds a dead mount; a dead device is watched only
//! while some namespace holds it (its number is free for reuse once nothing does). A pod is
//! evicted only when the operator enabled it for its driver (`heal.evict-pods`) or its PV
//! (`moor.io/evict-pods`, an operator-owned annotation — never a pod's inline options),
//! the API server knows it and a controller owns it; a refusal (PodDisruptionBudget) is
//! retried with backoff.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::api::DeadMount;
use crate::cluster::{Eviction, Notice, NoticeReason, PodInfo, PodState, Propagation};
use crate::config::HealConfig;
use crate::host::nsmounts::{self, Holder};
use crate::journal::PublishRecord;
use crate::lifecycle::Lifecycle;
use crate::metrics::{DeadPodLabels, EvictionLabels, Metrics};

/// How often namespaces are scanned again while pods still hold a dead mount.
pub const SCAN_INTERVAL: Duration = Duration::from_secs(30);
/// First wait before an eviction refused (PodDisruptionBudget) is tried again.
const EVICT_RETRY: Duration = Duration::from_secs(10);
/// Longest wait between two eviction attempts of one pod.
const EVICT_RETRY_MAX: Duration = Duration::from_secs(300);
/// The PV annotation that overrides `heal.evict-pods` for one volume.
pub const EVICT_ANNOTATION: &str = "moor.io/evict-pods";

/// Whether a pod volume mount of `info` uses the pod directory of `p` with propagation.
fn receives(info: &PodInfo, p: &PublishRecord) -> bool {
    info.mounts.iter().any(|m| {
        m.propagation != Propagation::None
            && (m.volume == p.volume_name || info.pvs.get(&m.volume) == Some(&p.volume_name))
    })
}

/// The PV behind a publish: a CSI publish's volume name is its PV; a FlexVolume pod dir is
/// named after the PV when the API server says the pod uses that PV.
fn pv_of(p: &PublishRecord, info: Option<&PodInfo>) -> Option<String> {
    if p.csi {
        return Some(p.volume_name.clone());
    }
    info.filter(|i| i.pvs.values().any(|v| *v == p.volume_name))
        .map(|_| p.volume_name.clone())
}

/// What moor does about one pod holding a dead mount.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    /// Reported; eviction not enabled (or not yet due).
    Reported,
    /// Eviction refused or failed; tried again at `next`.
    Retry {
        failures: u32,
        next: Instant,
        why: String,
    },
    /// Evicted.
    Evicted,
    /// Not evicted, and not tried again.
    NotEvicted(&'static str),
}

impl Action {
    fn label(&self) -> String {
        match self {
            Action::Reported => "reported".into(),
            Action::Retry { why, .. } => format!("eviction refused ({why}); retrying"),
            Action::Evicted => "evicted".into(),
            Action::NotEvicted(why) => format!("not evicted: {why}"),
        }
    }
}

#[derive(Debug)]
struct Held {
    namespace: String,
    name: String,
    action: Action,
}

/// A healed share whose old mount running containers may still hold.
#[derive(Debug)]
struct Watch {
    key: String,
    driver: String,
    server: String,
    dev: (u32, u32),
    healed_at: Instant,
    rebound: usize,
    stacked: usize,
    announced: bool,
    pods: BTreeMap<String, Held>,
}

/// The dead-mount report and the evictions, between reconciler passes.
pub struct DeadMounts {
    proc: PathBuf,
    heal: HealConfig,
    scan_every: Duration,
    evict_retry: Duration,
    watches: Vec<Watch>,
    next_scan: Option<Instant>,
}

impl DeadMounts {
    /// Scans processes under `proc` (the host paths' `/proc`), evicting per `heal`.
    pub fn new(proc: PathBuf, heal: HealConfig) -> Self {
        DeadMounts {
            proc,
            heal,
            scan_every: SCAN_INTERVAL,
            evict_retry: EVICT_RETRY,
            watches: Vec::new(),
            next_scan: None,
        }
    }

    /// Scans again every `every` while pods hold a dead mount (tests shorten it).
    pub fn with_scan_interval(mut self, every: Duration) -> Self {
        self.scan_every = every;
        self
    }

    /// Waits `first` (doubling, up to 5 minutes) before an eviction refused is tried again.
    pub fn with_evict_retry(mut self, first: Duration) -> Self {
        self.evict_retry = first;
        self
    }

    /// The daemon's own mount namespace: its pod directories are moor's, not a container's.
    fn own_namespaces(&self) -> HashSet<u64> {
        nsmounts::mount_ns(&self.proc, "self").into_iter().collect()
    }

    /// The pod directories of `key` whose heal should stack the share over the dead bind:
    /// the pod's container mount of that volume propagates (`HostToContainer`,
    /// `Bidirectional`) as the API server says; for a pod it does not know, a container
    /// copy of the dead mount (`dead`) that is a slave of the host's.
    pub fn stack_targets(
        &self,
        lc: &Lifecycle,
        key: &str,
        dead: Option<(u32, u32)>,
    ) -> HashSet<PathBuf> {
        let pods = &lc.cluster().pods;
        let mut holders: Option<Vec<Holder>> = None;
        let mut out = HashSet::new();
        for p in lc.publishes_of(key) {
            let stack = match pods.pod(&p.pod_uid) {
                PodState::Present(info) => receives(&info, &p),
                PodState::Gone => false,
                PodState::Unknown => {
                    let Some(dev) = dead else { continue };
                    let hs = holders.get_or_insert_with(|| {
                        nsmounts::holders(&self.proc, &HashSet::from([dev]), &self.own_namespaces())
                    });
                    hs.iter().any(|h| {
                        h.pod_uid.as_deref() == Some(p.pod_uid.as_str())
                            && h.held.iter().any(|m| m.receives_propagation)
                    })
                }
            };
            if stack {
                out.insert(p.target);
            }
        }
        out
    }

    /// A heal of `key` just finished: watch its dead device `dev` and scan now.
    pub fn healed(
        &mut self,
        rs: &crate::lifecycle::RemoteStage,
        dev: Option<(u32, u32)>,
        healed: crate::lifecycle::Healed,
    ) {
        let Some(dev) = dev else {
            tracing::warn!(volume = %rs.key, "the dead mount's device is not recorded; pods holding it cannot be found");
            return;
        };
        // A watch of an earlier death of the same share stays: its holders hold that device.
        self.watches.retain(|w| !(w.key == rs.key && w.dev == dev));
        self.watches.push(Watch {
            key: rs.key.clone(),
            driver: rs.driver.clone(),
            server: rs.remote.server.clone(),
            dev,
            healed_at: Instant::now(),
            rebound: healed.rebound,
            stacked: healed.stacked,
            announced: false,
            pods: BTreeMap::new(),
        });
        self.next_scan = Some(Instant::now());
    }

    /// Whether a scan is due.
    pub fn due(&self) -> bool {
        !self.watches.is_empty() && self.next_scan.is_none_or(|t| Instant::now() >= t)
    }

    /// Scans the namespaces for the watched dead devices; reports new holders, evicts where
    /// enabled and due, refreshes the metric and `moor status`, announces fresh heals.
    pub fn scan(&mut self, lc: &Lifecycle, metrics: &Metrics) {
        // A device that is the live mount of a stage now is no dead one any more.
        let live: HashSet<(u32, u32)> = lc
            .remote_stages()
            .iter()
            .filter_map(|s| lc.stage_dev(&s.key))
            .collect();
        let devs: HashSet<(u32, u32)> = self
            .watches
            .iter()
            .map(|w| w.dev)
            .filter(|d| !live.contains(d))
            .collect();
        let holders = nsmounts::holders(&self.proc, &devs, &self.own_namespaces());
        let now = Instant::now();
        for w in &mut self.watches {
            let uids: HashSet<&str> = holders
                .iter()
                .filter(|h| h.held.iter().any(|m| m.dev == w.dev) && devs.contains(&w.dev))
                .filter_map(|h| h.pod_uid.as_deref())
                .collect();
            w.pods.retain(|uid, _| uids.contains(uid.as_str()));
            let publishes = lc.publishes_of(&w.key);
            for uid in uids {
                if w.pods.contains_key(uid) {
                    continue;
                }
                let info = match lc.cluster().pods.pod(uid) {
                    PodState::Present(i) => Some(i),
                    _ => None,
                };
                let publish = publishes.iter().find(|p| p.pod_uid == uid);
                let mut n = Notice::new(
                    NoticeReason::DeadMountInPod,
                    format!(
                        "a container of pod {uid} still holds the dead mount of {} (server {}) after its heal: its volume mount does not propagate (mountPropagation None), so only a restart of the pod sees the healed share",
                        w.key, w.server
                    ),
                )
                .volume(&w.key, &w.driver)
                .pods([uid.to_owned()]);
                if let Some(pv) = publish.and_then(|p| pv_of(p, info.as_ref())) {
                    n = n.pv(pv);
                }
                lc.cluster().notify.notify(n);
                w.pods.insert(
                    uid.to_owned(),
                    Held {
                        namespace: info
                            .as_ref()
                            .map(|i| i.namespace.clone())
                            .unwrap_or_default(),
                        name: info.as_ref().map(|i| i.name.clone()).unwrap_or_default(),
                        action: Action::Reported,
                    },
                );
            }
            if !w.announced {
                w.announced = true;
                announce_heal(lc, w, &publishes);
            }
            if now.duration_since(w.healed_at) >= self.heal.evict_after {
                let enabled = self.heal.evict_pods.contains(&w.driver);
                let vol = (w.key.as_str(), w.driver.as_str());
                for (uid, held) in w.pods.iter_mut() {
                    let when = (now, self.evict_retry);
                    evict_if_due(lc, metrics, vol, uid, held, &publishes, enabled, when);
                }
            }
        }
        self.watches.retain(|w| !w.pods.is_empty());
        metrics.dead_mount_pods.clear();
        let mut view = Vec::new();
        for w in &self.watches {
            for (uid, h) in &w.pods {
                let (namespace, pod) = match h.name.is_empty() {
                    true => (String::new(), uid.clone()),
                    false => (h.namespace.clone(), h.name.clone()),
                };
                metrics
                    .dead_mount_pods
                    .get_or_create(&DeadPodLabels {
                        driver: w.driver.clone(),
                        namespace,
                        pod,
                    })
                    .set(1);
                view.push(DeadMount {
                    volume: w.key.clone(),
                    driver: w.driver.clone(),
                    pod_uid: uid.clone(),
                    namespace: h.namespace.clone(),
                    pod: h.name.clone(),
                    since_heal_secs: now.duration_since(w.healed_at).as_secs(),
                    action: h.action.label(),
                });
            }
        }
        lc.set_dead_mounts(view);
        // The next eviction due sooner than the next regular scan brings the scan forward.
        let next_evict = self
            .watches
            .iter()
            .flat_map(|w| {
                let due = w.healed_at + self.heal.evict_after;
                w.pods.values().filter_map(move |h| match &h.action {
                    Action::Reported if due > now => Some(due),
                    Action::Retry { next, .. } => Some(*next),
                    _ => None,
                })
            })
            .min();
        let regular = now + self.scan_every;
        self.next_scan = Some(next_evict.map_or(regular, |e| e.min(regular)));
    }
}

/// ShareHealed, once per heal, after the first scan (so it can say how many pods still hold
/// the old view).
fn announce_heal(lc: &Lifecycle, w: &Watch, publishes: &[PublishRecord]) {
    let mut n = Notice::new(
        NoticeReason::ShareHealed,
        format!(
            "share {} (server {}) was dead and is mounted again: {} pod directories bound again, {} stacked over for running containers; {} pods still hold the old view",
            w.key,
            w.server,
            w.rebound,
            w.stacked,
            w.pods.len()
        ),
    )
    .volume(&w.key, &w.driver)
    .pods(publishes.iter().map(|p| p.pod_uid.clone()));
    if let Some(pv) = publishes.iter().find(|p| p.csi) {
        n = n.pv(pv.volume_name.clone());
    }
    lc.cluster().notify.notify(n);
}

/// Whether `held` is evicted by the operator's choice: the PV's annotation, else the
/// driver's entry in `heal.evict-pods`.
fn eviction_enabled(lc: &Lifecycle, pv: Option<&str>, driver_enabled: bool) -> bool {
    let Some(pv) = pv else {
        return driver_enabled;
    };
    match lc
        .cluster()
        .pods
        .pv_annotation(pv, EVICT_ANNOTATION)
        .as_deref()
    {
        Some("true") => true,
        Some("false") => false,
        Some(other) => {
            tracing::warn!(
                pv,
                annotation = EVICT_ANNOTATION,
                value = other,
                "annotation is neither \"true\" nor \"false\"; heal.evict-pods decides"
            );
            driver_enabled
        }
        None => driver_enabled,
    }
}

#[allow(clippy::too_many_arguments)]
fn evict_if_due(
    lc: &Lifecycle,
    metrics: &Metrics,
    (key, driver): (&str, &str),
    uid: &str,
    held: &mut Held,
    publishes: &[PublishRecord],
    driver_enabled: bool,
    (now, first_retry): (Instant, Duration),
) {
    let failures = match &held.action {
        Action::Reported => 0,
        Action::Retry { failures, next, .. } if *next <= now => *failures,
        _ => return,
    };
    let count = |result: &str| {
        metrics
            .evictions
            .get_or_create(&EvictionLabels {
                driver: driver.to_owned(),
                result: result.into(),
            })
            .inc();
    };
    let info = match lc.cluster().pods.pod(uid) {
        PodState::Present(i) => Some(i),
        PodState::Gone => None,
        PodState::Unknown => None,
    };
    let publish = publishes.iter().find(|p| p.pod_uid == uid);
    let pv = publish.and_then(|p| pv_of(p, info.as_ref()));
    if failures == 0 && !eviction_enabled(lc, pv.as_deref(), driver_enabled) {
        held.action = Action::NotEvicted("not enabled (heal.evict-pods, moor.io/evict-pods)");
        return;
    }
    let refused = |why: String| {
        let mut n = Notice::new(
            NoticeReason::EvictionRefused,
            format!(
                "pod {uid} still holds the dead mount of {} but was not evicted: {why}",
                key
            ),
        )
        .volume(key, driver)
        .pods([uid.to_owned()]);
        if let Some(pv) = &pv {
            n = n.pv(pv.clone());
        }
        lc.cluster().notify.notify(n);
    };
    let Some(info) = info else {
        count("skipped");
        let why = "the API server does not know the pod (no credentials, or not synced)";
        refused(why.into());
        held.action = Action::NotEvicted(why);
        return;
    };
    if !info.controlled {
        count("skipped");
        let why = "a bare pod (no controller would recreate it); delete and recreate it yourself";
        refused(why.into());
        held.action = Action::NotEvicted(why);
        return;
    }
    let retry = |why: String| Action::Retry {
        failures: failures + 1,
        next: now
            + first_retry
                .saturating_mul(1 << failures.min(5))
                .min(EVICT_RETRY_MAX),
        why,
    };
    match lc.cluster().pods.evict(&info.namespace, &info.name, uid) {
        Eviction::Evicted => {
            count("evicted");
            let mut n = Notice::new(
                NoticeReason::PodEvicted,
                format!(
                    "pod {}/{} was evicted: its container held the dead mount of {} after the heal; its controller recreates it on the healed share",
                    info.namespace, info.name, key
                ),
            )
            .volume(key, driver)
            .pods([uid.to_owned()]);
            if let Some(pv) = &pv {
                n = n.pv(pv.clone());
            }
            lc.cluster().notify.notify(n);
            held.action = Action::Evicted;
        }
        Eviction::Gone => held.action = Action::NotEvicted("the pod is gone"),
        Eviction::Blocked(why) => {
            count("blocked");
            refused(format!("the eviction was refused ({why}); retried later"));
            held.action = retry(why);
        }
        Eviction::Failed(why) => {
            count("failed");
            refused(format!("the eviction failed ({why}); retried later"));
            held.action = retry(why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{Cluster, ContainerMount, Notify, Pods, RecentNotice};
    use crate::daemon::reconciler::Probe;
    use crate::daemon::reconciler::tests::{Node, expect_nfs_mount_from};
    use crate::host::Errno;
    use std::collections::{HashMap, VecDeque};
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    const U1: &str = "11111111-2222-4333-8444-555555555555";
    const U2: &str = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";

    /// An API server as the heal sees it: pods, scripted eviction answers, PV annotations,
    /// and every notice sent.
    #[derive(Default)]
    struct FakeCluster {
        pods: Mutex<HashMap<String, PodState>>,
        answers: Mutex<VecDeque<Eviction>>,
        evicted: Mutex<Vec<String>>,
        annotations: Mutex<HashMap<String, String>>,
        notices: Mutex<Vec<Notice>>,
    }

    impl Notify for FakeCluster {
        fn notify(&self, n: Notice) {
            self.notices.lock().unwrap().push(n);
        }
        fn recent(&self) -> Vec<RecentNotice> {
            Vec::new()
        }
    }

    impl Pods for FakeCluster {
        fn pod(&self, uid: &str) -> PodState {
            self.pods
                .lock()
                .unwrap()
                .get(uid)
                .cloned()
                .unwrap_or(PodState::Unknown)
        }
        fn evict(&self, _ns: &str, _name: &str, uid: &str) -> Eviction {
            self.evicted.lock().unwrap().push(uid.into());
            self.answers
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Eviction::Evicted)
        }
        fn pv_annotation(&self, pv: &str, key: &str) -> Option<String> {
            assert_eq!(key, EVICT_ANNOTATION);
            self.annotations.lock().unwrap().get(pv).cloned()
        }
    }

    impl FakeCluster {
        fn reasons(&self, r: NoticeReason) -> Vec<Notice> {
            self.notices
                .lock()
                .unwrap()
                .iter()
                .filter(|n| n.reason == r)
                .cloned()
                .collect()
        }
        fn present(&self, uid: &str, controlled: bool, propagation: Propagation) {
            let info = PodInfo {
                namespace: "team-a".into(),
                name: format!("web-{}", &uid[..4]),
                uid: uid.into(),
                mounts: vec![ContainerMount {
                    container: "app".into(),
                    volume: "vol".into(),
                    propagation,
                }],
                pvs: [("vol".to_owned(), "data".to_owned())].into(),
                controlled,
            };
            self.pods
                .lock()
                .unwrap()
                .insert(uid.into(), PodState::Present(info));
        }
    }

    /// A fixture `/proc`: the daemon (`self`, namespace 1) and one container process per
    /// `(pid, namespace, pod uid, mountinfo)`.
    fn write_proc(root: &Path, containers: &[(u32, u64, &str, String)]) {
        let _ = std::fs::remove_dir_all(root);
        for (name, ns, cg, mi) in std::iter::once((
            "self".to_owned(),
            1,
            "0::/system.slice/moor.service\n".to_owned(),
            String::new(),
        ))
        .chain(containers.iter().map(|(pid, ns, uid, mi)| {
            (
                pid.to_string(),
                *ns,
                format!("0::/kubepods/besteffort/pod{uid}/ctr\n"),
                mi.clone(),
            )
        })) {
            let d = root.join(name);
            std::fs::create_dir_all(d.join("ns")).unwrap();
            std::os::unix::fs::symlink(format!("mnt:[{ns}]"), d.join("ns/mnt")).unwrap();
            std::fs::write(d.join("mountinfo"), mi).unwrap();
            std::fs::write(d.join("cgroup"), cg).unwrap();
        }
    }

    fn holding((major, minor): (u32, u32), master: bool) -> String {
        let opt = if master { "master:7 " } else { "" };
        format!("500 400 {major}:{minor} / /data rw,relatime {opt}- nfs4 10.0.0.5:/exports/a rw\n")
    }

    struct Lab {
        n: Node,
        cluster: Arc<FakeCluster>,
        proc: PathBuf,
    }

    fn lab(heal: HealConfig) -> Lab {
        let cluster = Arc::new(FakeCluster::default());
        let c = Cluster {
            notify: cluster.clone(),
            pods: cluster.clone(),
            connected: true,
        };
        let mut n = Node::with(&[U1, U2], c);
        let proc = n._tmp.path().join("proc");
        write_proc(&proc, &[]);
        let dead = DeadMounts::new(proc.clone(), heal)
            .with_scan_interval(Duration::ZERO)
            .with_evict_retry(Duration::ZERO);
        let spare = placeholder(&n);
        n.rec = std::mem::replace(&mut n.rec, spare).with_dead_mounts(dead);
        Lab { n, cluster, proc }
    }

    fn placeholder(n: &Node) -> crate::daemon::reconciler::Reconciler {
        let exec = Arc::new(crate::daemon::executor::Executor::new(
            n.lc.clone(),
            n.metrics.clone(),
            Duration::from_secs(1),
        ));
        crate::daemon::reconciler::Reconciler::new(n.lc.clone(), n.metrics.clone(), exec)
    }

    impl Lab {
        /// Kills the share and heals it; returns the dead device.
        fn kill_and_heal(
            &mut self,
            containers: impl Fn((u32, u32)) -> Vec<(u32, u64, &'static str, String)>,
        ) -> (u32, u32) {
            let stage = self.n.stage();
            let m = self.n.fake.mounts.get(&stage).unwrap();
            let dead = (m.major, m.minor);
            write_proc(&self.proc, &containers(dead));
            self.n
                .fake
                .mounts
                .set_probe(&stage, Probe::Dead(Errno::ESTALE));
            // A new superblock, as a FUSE client's remount makes.
            expect_nfs_mount_from(&self.n.fake, "10.0.0.5:/exports/a#new");
            assert_eq!(self.n.rec.heal_shares(), 1);
            dead
        }

        fn gauge(&self, namespace: &str, pod: &str) -> i64 {
            self.n
                .metrics
                .dead_mount_pods
                .get_or_create(&DeadPodLabels {
                    driver: "nfs".into(),
                    namespace: namespace.into(),
                    pod: pod.into(),
                })
                .get()
        }

        fn evictions(&self, result: &str) -> u64 {
            self.n
                .metrics
                .evictions
                .get_or_create(&EvictionLabels {
                    driver: "nfs".into(),
                    result: result.into(),
                })
                .get()
        }
    }

    /// After a heal, the pod whose container still holds the dead device is reported
    /// (notice, metric, status row) until its container lets go; the pod whose container
    /// holds something else is not; the heal's own notices name the share's pods.
    #[test]
    fn pods_still_holding_the_dead_mount_are_reported_until_they_let_go() {
        let mut l = lab(HealConfig::default());
        let dead = l.kill_and_heal(|dead| {
            vec![
                (40, 200, U1, holding(dead, false)),
                (41, 200, U1, holding(dead, false)),
                (50, 300, U2, holding((8, 1), false)),
            ]
        });
        let c = &l.cluster;
        assert_eq!(c.reasons(NoticeReason::ShareDead).len(), 1);
        let dm = c.reasons(NoticeReason::DeadMountInPod);
        assert_eq!(dm.len(), 1, "{dm:?}");
        assert_eq!(dm[0].pod_uids, vec![U1.to_owned()]);
        assert_eq!(dm[0].driver.as_deref(), Some("nfs"));
        let healed = c.reasons(NoticeReason::ShareHealed);
        assert_eq!(healed.len(), 1);
        assert!(
            healed[0].message.contains("2 pod directories bound again"),
            "{}",
            healed[0].message
        );
        assert!(
            healed[0].message.contains("1 pods still hold the old view"),
            "{}",
            healed[0].message
        );
        let mut uids = healed[0].pod_uids.clone();
        uids.sort();
        assert_eq!(uids, vec![U1.to_owned(), U2.to_owned()]);
        assert_eq!(l.gauge("", U1), 1, "unknown pod: its UID, namespace empty");
        assert_eq!(l.gauge("", U2), 0);
        let rows = l.n.lc.dead_mounts();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].pod_uid.as_str(), rows[0].driver.as_str()),
            (U1, "nfs")
        );
        assert_eq!(rows[0].action, "reported");
        // Still held on the next pass: no second notice, still reported.
        l.n.rec.heal_shares();
        assert_eq!(c.reasons(NoticeReason::DeadMountInPod).len(), 1);
        assert_eq!(
            c.reasons(NoticeReason::ShareDead).len(),
            1,
            "once per death"
        );
        assert_eq!(l.gauge("", U1), 1);
        // The container exits: the report clears, and the device is no longer watched.
        write_proc(&l.proc, &[(40, 200, U2, holding((8, 1), false))]);
        l.n.rec.heal_shares();
        assert_eq!(l.gauge("", U1), 0);
        assert!(l.n.lc.dead_mounts().is_empty());
        write_proc(&l.proc, &[(40, 200, U1, holding(dead, false))]);
        l.n.rec.heal_shares();
        assert!(
            l.n.lc.dead_mounts().is_empty(),
            "no longer watched: the number may be reused"
        );
        assert_eq!(
            l.evictions("skipped") + l.evictions("evicted"),
            0,
            "evictions are opt-in"
        );
    }

    /// With `heal.evict-pods: [nfs]`, a controlled pod is evicted once a
    /// PodDisruptionBudget lets it (refused first, retried), a bare pod is never evicted and
    /// the notice says why.
    #[test]
    fn evictions_are_retried_past_a_budget_and_bare_pods_are_left() {
        let heal = HealConfig {
            evict_pods: vec!["nfs".into()],
            evict_after: Duration::ZERO,
        };
        let mut l = lab(heal);
        l.cluster.present(U1, true, Propagation::None);
        l.cluster.present(U2, false, Propagation::None);
        l.cluster
            .answers
            .lock()
            .unwrap()
            .push_back(Eviction::Blocked(
                "Cannot evict pod as it would violate the pod's disruption budget".into(),
            ));
        l.kill_and_heal(|dead| {
            vec![
                (40, 200, U1, holding(dead, false)),
                (50, 300, U2, holding(dead, false)),
            ]
        });
        let c = &l.cluster;
        assert_eq!(
            *c.evicted.lock().unwrap(),
            vec![U1.to_owned()],
            "the bare pod is not evicted"
        );
        assert_eq!(l.evictions("blocked"), 1);
        assert_eq!(l.evictions("skipped"), 1);
        let refused = c.reasons(NoticeReason::EvictionRefused);
        assert!(
            refused
                .iter()
                .any(|n| n.pod_uids == [U2] && n.message.contains("bare pod")),
            "{refused:?}"
        );
        assert!(
            refused
                .iter()
                .any(|n| n.pod_uids == [U1] && n.message.contains("disruption budget")),
            "{refused:?}"
        );
        assert_eq!(
            refused[0].pv.as_deref(),
            Some("data"),
            "the PV the pod uses"
        );
        assert_eq!(
            l.gauge("team-a", &format!("web-{}", &U1[..4])),
            1,
            "a known pod: its name"
        );
        // The retry: the budget allows it now.
        l.n.rec.heal_shares();
        assert_eq!(c.evicted.lock().unwrap().len(), 2);
        assert_eq!(l.evictions("evicted"), 1);
        let ev = c.reasons(NoticeReason::PodEvicted);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].pod_uids, vec![U1.to_owned()]);
        let rows = l.n.lc.dead_mounts();
        let action = |u: &str| rows.iter().find(|r| r.pod_uid == u).unwrap().action.clone();
        assert_eq!(action(U1), "evicted");
        assert!(
            action(U2).starts_with("not evicted: a bare pod"),
            "{}",
            action(U2)
        );
        l.n.rec.heal_shares();
        assert_eq!(
            c.evicted.lock().unwrap().len(),
            2,
            "evicted once, bare pod never"
        );
    }

    /// The PV's `moor.io/evict-pods` annotation overrides the driver's entry, both ways.
    #[test]
    fn the_pv_annotation_overrides_the_driver_choice() {
        for (drivers, annotation, evicted) in [
            (vec![], Some("true"), true),
            (vec!["nfs".to_owned()], Some("false"), false),
            (vec!["nfs".to_owned()], None, true),
            (vec![], None, false),
        ] {
            let mut l = lab(HealConfig {
                evict_pods: drivers.clone(),
                evict_after: Duration::ZERO,
            });
            l.cluster.present(U1, true, Propagation::None);
            if let Some(a) = annotation {
                l.cluster
                    .annotations
                    .lock()
                    .unwrap()
                    .insert("data".into(), a.into());
            }
            l.kill_and_heal(|dead| vec![(40, 200, U1, holding(dead, false))]);
            assert_eq!(
                !l.cluster.evicted.lock().unwrap().is_empty(),
                evicted,
                "drivers {drivers:?}, annotation {annotation:?}"
            );
        }
    }

    /// No eviction before `heal.evict-after`: the pod is reported, not evicted.
    #[test]
    fn no_eviction_before_the_grace() {
        let heal = HealConfig {
            evict_pods: vec!["nfs".into()],
            evict_after: Duration::from_secs(3600),
        };
        let mut l = lab(heal);
        l.cluster.present(U1, true, Propagation::None);
        l.kill_and_heal(|dead| vec![(40, 200, U1, holding(dead, false))]);
        l.n.rec.heal_shares();
        assert!(l.cluster.evicted.lock().unwrap().is_empty());
        assert_eq!(l.n.lc.dead_mounts()[0].action, "reported");
    }

    /// Which pod dirs a heal stacks over: the API server's HostToContainer / Bidirectional
    /// mounts; for a pod it does not know, a container copy that is a slave of the host's.
    #[test]
    fn stack_targets_follow_the_pods_propagation() {
        let l = lab(HealConfig::default());
        let dead = (0, 99);
        let dm = DeadMounts::new(l.proc.clone(), HealConfig::default());
        let t = |u: &str| PathBuf::from(l.n.target(u));
        l.cluster.present(U1, true, Propagation::HostToContainer);
        l.cluster.present(U2, true, Propagation::None);
        assert_eq!(
            dm.stack_targets(&l.n.lc, &l.n.lc.remote_stages()[0].key, Some(dead)),
            HashSet::from([t(U1)])
        );
        l.cluster.present(U2, true, Propagation::Bidirectional);
        assert_eq!(
            dm.stack_targets(&l.n.lc, &l.n.lc.remote_stages()[0].key, Some(dead))
                .len(),
            2
        );
        l.cluster.pods.lock().unwrap().clear();
        write_proc(
            &l.proc,
            &[
                (40, 200, U1, holding(dead, true)),
                (50, 300, U2, holding(dead, false)),
            ],
        );
        assert_eq!(
            dm.stack_targets(&l.n.lc, &l.n.lc.remote_stages()[0].key, Some(dead)),
            HashSet::from([t(U1)])
        );
        l.cluster
            .pods
            .lock()
            .unwrap()
            .insert(U1.into(), PodState::Gone);
        assert!(
            dm.stack_targets(&l.n.lc, &l.n.lc.remote_stages()[0].key, Some(dead))
                .is_empty()
        );
    }

    /// A heal stacks over the HostToContainer pod's dir (its record carries the layer) and
    /// replaces the other; unmounting the stacked pod takes every layer and the bind.
    #[test]
    fn a_stacked_layer_is_recorded_and_unpublished() {
        let mut l = lab(HealConfig::default());
        l.cluster.present(U1, true, Propagation::HostToContainer);
        l.cluster.present(U2, true, Propagation::None);
        l.kill_and_heal(|_| vec![]);
        let p1 = l.n.lc.publishes_of(&l.n.lc.remote_stages()[0].key);
        let layers = |u: &str| p1.iter().find(|p| p.pod_uid == u).unwrap().layers.len();
        assert_eq!((layers(U1), layers(U2)), (1, 0));
        let top = p1.iter().find(|p| p.pod_uid == U1).unwrap().layers[0];
        let m = l.n.fake.mounts.get(Path::new(&l.n.target(U1))).unwrap();
        assert_eq!(m.mount_id, top.id, "the layer recorded is the mount on top");
        let healed = l.cluster.reasons(NoticeReason::ShareHealed);
        assert!(
            healed[0]
                .message
                .contains("1 pod directories bound again, 1 stacked over"),
            "{}",
            healed[0].message
        );
        l.n.lc.unmount(Some("nfs"), &l.n.target(U1)).unwrap();
        assert!(l.n.fake.mounts.get(Path::new(&l.n.target(U1))).is_none());
        assert!(l.n.fake.mounts.get(Path::new(&l.n.target(U2))).is_some());
    }
}
