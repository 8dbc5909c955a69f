//! Local PVs and the API server: create a PV for each new entry, mark the PVs whose entry
//! disappeared, recycle Released ones (wipe, then delete, so the entry is discovered afresh).
//!
//! Invariants:
//! - a PV is never deleted except after its entry's wipe record says `done`, and then only
//!   with a UID precondition (never a newer PV of the same name);
//! - a PV whose entry vanished is annotated (`moor.io/missing-since`), never deleted;
//! - an entry whose path now holds another disk than its PV records gets no new PV: the old PV
//!   is annotated (`moor.io/problem`) until an operator deletes it;
//! - the API server is reached through [`PvApi`], so [`reconcile`] is tested with a fake and
//!   [`KubePvApi`] against a fake API server speaking HTTP.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};

use crate::api::VolumeStatus;
use crate::host::Host;

use super::discover::Scan;
use super::pv::{self, ANN_ENTRY, ANN_MISSING, ANN_PROBLEM, ANN_STABLE_ID};
use super::wipe::{self, WipeCtx, WipePhase};

/// An API server failure.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No usable credentials.
    #[error("no Kubernetes credentials (in-cluster or KUBECONFIG): {0}")]
    Config(String),
    /// A request failed.
    #[error("API server: {op} {name}: {message}")]
    Api {
        /// `list`, `create`, `patch`, `delete`.
        op: &'static str,
        /// Object name or selector.
        name: String,
        /// HTTP code, when the server answered.
        code: Option<u16>,
        /// What it said.
        message: String,
    },
}

impl KubeError {
    fn code(&self) -> Option<u16> {
        match self {
            KubeError::Api { code, .. } => *code,
            KubeError::Config(_) => None,
        }
    }
}

/// The few PersistentVolume calls moor makes.
pub trait PvApi: Send + Sync {
    /// PVs matching a label selector.
    fn list(
        &self,
        selector: &str,
    ) -> impl Future<Output = Result<Vec<PersistentVolume>, KubeError>> + Send;
    /// Creates a PV (409 Conflict is an error the caller may tolerate).
    fn create(&self, pv: &PersistentVolume) -> impl Future<Output = Result<(), KubeError>> + Send;
    /// Sets (`Some`) or removes (`None`) annotations with a merge patch.
    fn annotate(
        &self,
        name: &str,
        ann: &BTreeMap<String, Option<String>>,
    ) -> impl Future<Output = Result<(), KubeError>> + Send;
    /// Deletes a PV, only if its UID is still `uid`.
    fn delete(&self, name: &str, uid: &str) -> impl Future<Output = Result<(), KubeError>> + Send;
    /// The node's `kubernetes.io/hostname` label (`None`: no such node or label).
    fn node_hostname(
        &self,
        node: &str,
    ) -> impl Future<Output = Result<Option<String>, KubeError>> + Send;
}

/// [`PvApi`] through the `kube` client.
#[derive(Clone)]
pub struct KubePvApi {
    api: kube::Api<PersistentVolume>,
    nodes: kube::Api<k8s_openapi::api::core::v1::Node>,
}

fn api_err(op: &'static str, name: &str, e: kube::Error) -> KubeError {
    let code = match &e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    };
    KubeError::Api {
        op,
        name: name.to_owned(),
        code,
        message: e.to_string(),
    }
}

impl KubePvApi {
    /// From a client.
    pub fn new(client: kube::Client) -> Self {
        KubePvApi {
            api: kube::Api::all(client.clone()),
            nodes: kube::Api::all(client),
        }
    }

    /// In-cluster credentials, else `KUBECONFIG`/`~/.kube/config`.
    pub async fn from_env() -> Result<Self, KubeError> {
        let cfg = kube::Config::infer()
            .await
            .map_err(|e| KubeError::Config(e.to_string()))?;
        Self::from_config(cfg)
    }

    /// A kubeconfig file.
    pub async fn from_kubeconfig(path: &std::path::Path) -> Result<Self, KubeError> {
        let kc = kube::config::Kubeconfig::read_from(path)
            .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?;
        Self::from_config(cfg)
    }

    /// From a client config.
    pub fn from_config(cfg: kube::Config) -> Result<Self, KubeError> {
        let client = kube::Client::try_from(cfg).map_err(|e| KubeError::Config(e.to_string()))?;
        Ok(Self::new(client))
    }
}

impl PvApi for KubePvApi {
    async fn list(&self, selector: &str) -> Result<Vec<PersistentVolume>, KubeError> {
        self.api
            .list(&ListParams::default().labels(selector))
            .await
            .map(|l| l.items)
            .map_err(|e| api_err("list", selector, e))
    }

    async fn create(&self, pv: &PersistentVolume) -> Result<(), KubeError> {
        let name = pv.metadata.name.clone().unwrap_or_default();
        self.api
            .create(&PostParams::default(), pv)
            .await
            .map(drop)
            .map_err(|e| api_err("create", &name, e))
    }

    async fn annotate(
        &self,
        name: &str,
        ann: &BTreeMap<String, Option<String>>,
    ) -> Result<(), KubeError> {
        let patch = serde_json::json!({"metadata": {"annotations": ann}});
        self.api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(drop)
            .map_err(|e| api_err("patch", name, e))
    }

    async fn delete(&self, name: &str, uid: &str) -> Result<(), KubeError> {
        let dp = DeleteParams::default().preconditions(Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: None,
        });
        match self.api.delete(name, &dp).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(api_err("delete", name, e)),
        }
    }

    async fn node_hostname(&self, node: &str) -> Result<Option<String>, KubeError> {
        let n = self
            .nodes
            .get_opt(node)
            .await
            .map_err(|e| api_err("get node", node, e))?;
        Ok(n.and_then(|n| n.metadata.labels)
            .and_then(|mut l| l.remove("kubernetes.io/hostname")))
    }
}

/// This node's local PVs as a watch keeps them (label selector [`pv::node_selector`]), so
/// a reconcile pass reads them without a request.
#[derive(Default)]
pub struct PvView {
    inner: std::sync::Mutex<ViewInner>,
    /// Woken on every change the watch brings (a pass runs on it).
    pub changed: tokio::sync::Notify,
}

#[derive(Default)]
struct ViewInner {
    pvs: BTreeMap<String, PersistentVolume>,
    synced: bool,
    healthy: bool,
}

impl PvView {
    fn lock(&self) -> std::sync::MutexGuard<'_, ViewInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The PVs, when the watch has listed and is connected.
    pub fn current(&self) -> Option<Vec<PersistentVolume>> {
        let i = self.lock();
        (i.synced && i.healthy).then(|| i.pvs.values().cloned().collect())
    }
}

/// Feeds a [`PvView`] from the watch.
pub struct PvSink<'a>(pub &'a PvView);

impl crate::cluster::watch::Sink<PersistentVolume> for PvSink<'_> {
    async fn apply(&mut self, change: crate::cluster::watch::Change<PersistentVolume>) {
        use crate::cluster::watch::Change;
        {
            let mut i = self.0.lock();
            match change {
                Change::Reset(all) => {
                    i.pvs = all
                        .into_iter()
                        .filter_map(|p| Some((p.metadata.name.clone()?, p)))
                        .collect();
                    i.synced = true;
                }
                Change::Upsert(p) => {
                    if let Some(n) = p.metadata.name.clone() {
                        i.pvs.insert(n, p);
                    }
                }
                Change::Delete(p) => {
                    if let Some(n) = &p.metadata.name {
                        i.pvs.remove(n);
                    }
                }
            }
        }
        self.0.changed.notify_one();
    }

    fn healthy(&mut self, ok: bool) {
        self.0.lock().healthy = ok;
    }
}

/// [`PvApi`] whose `list` reads the watched [`PvView`] (an error while the view is not
/// current, so no pass acts on a stale view) and whose node hostname is read once; the
/// writes go to the API server.
pub struct WatchedPvApi {
    api: KubePvApi,
    view: std::sync::Arc<PvView>,
    hostname: tokio::sync::OnceCell<Option<String>>,
}

impl WatchedPvApi {
    /// Writes through `api`, reads from `view`.
    pub fn new(api: KubePvApi, view: std::sync::Arc<PvView>) -> Self {
        WatchedPvApi {
            api,
            view,
            hostname: tokio::sync::OnceCell::new(),
        }
    }

    /// Runs the watch that fills the view, forever (abort the task to stop).
    pub async fn watch(
        client: kube::Client,
        node: String,
        view: std::sync::Arc<PvView>,
        timings: crate::cluster::watch::Timings,
    ) {
        let sel = crate::cluster::watch::Selector {
            fields: None,
            labels: Some(pv::node_selector(&node)),
        };
        let mut sink = PvSink(&view);
        crate::cluster::watch::run(
            kube::Api::<PersistentVolume>::all(client),
            sel,
            timings,
            "persistentvolumes",
            &mut sink,
        )
        .await;
    }
}

impl WatchedPvApi {
    /// The view the watch fills.
    pub fn view(&self) -> &PvView {
        &self.view
    }
}

impl PvApi for WatchedPvApi {
    async fn list(&self, selector: &str) -> Result<Vec<PersistentVolume>, KubeError> {
        let all = self.view.current().ok_or_else(|| KubeError::Api {
            op: "list",
            name: selector.to_owned(),
            code: None,
            message: "the PV watch has not listed yet or is reconnecting".into(),
        })?;
        let want: Vec<(&str, &str)> = selector
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        Ok(all
            .into_iter()
            .filter(|p| {
                let l = p.metadata.labels.as_ref();
                want.iter()
                    .all(|(k, v)| l.and_then(|l| l.get(*k)).map(String::as_str) == Some(*v))
            })
            .collect())
    }

    async fn create(&self, pv: &PersistentVolume) -> Result<(), KubeError> {
        self.api.create(pv).await
    }

    async fn annotate(
        &self,
        name: &str,
        ann: &BTreeMap<String, Option<String>>,
    ) -> Result<(), KubeError> {
        self.api.annotate(name, ann).await
    }

    async fn delete(&self, name: &str, uid: &str) -> Result<(), KubeError> {
        self.api.delete(name, uid).await
    }

    async fn node_hostname(&self, node: &str) -> Result<Option<String>, KubeError> {
        // A node's hostname label does not change while kubelet runs: once per daemon.
        self.hostname
            .get_or_try_init(|| self.api.node_hostname(node))
            .await
            .cloned()
    }
}

/// A Released PV to recycle: wipe its entry, then delete it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WipeJob {
    /// PV name.
    pub pv: String,
    /// PV UID (delete precondition).
    pub uid: String,
    /// Entry path.
    pub entry: std::path::PathBuf,
    /// The disk the PV was made for.
    pub stable_id: String,
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// PVs created.
    pub created: Vec<String>,
    /// Entries that already had their PV.
    pub present: usize,
    /// PVs newly marked missing.
    pub marked_missing: Vec<String>,
    /// PVs whose entry came back (mark removed).
    pub back: Vec<String>,
    /// PVs whose entry now holds another disk.
    pub conflicts: Vec<String>,
    /// Released PVs to wipe and delete.
    pub wipe_jobs: Vec<WipeJob>,
    /// PVs deleted after their wipe.
    pub deleted: Vec<String>,
    /// Errors (the pass goes on).
    pub errors: Vec<String>,
}

impl std::fmt::Display for SyncReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "created {}, present {}, marked missing {}, back {}, conflicts {}, released to recycle {}, deleted {}, errors {}",
            self.created.len(),
            self.present,
            self.marked_missing.len(),
            self.back.len(),
            self.conflicts.len(),
            self.wipe_jobs.len(),
            self.deleted.len(),
            self.errors.len()
        )?;
        for e in &self.errors {
            write!(f, "\n  error: {e}")?;
        }
        for c in &self.conflicts {
            write!(f, "\n  conflict: {c}")?;
        }
        Ok(())
    }
}

fn ann<'a>(p: &'a PersistentVolume, k: &str) -> Option<&'a str> {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(k))
        .map(String::as_str)
}

/// RFC 3339 UTC time, for annotations.
pub fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// One pass: compares the scans with this node's PVs and acts on the difference.
/// `unfinished`: stable ids whose wipe has not finished (never published afresh).
pub async fn reconcile<A: PvApi>(
    api: &A,
    node: &str,
    cfg: &super::classes::LocalConfig,
    scans: &[Scan],
    unfinished: &[String],
) -> Result<SyncReport, KubeError> {
    let mut r = SyncReport::default();
    let existing = api.list(&pv::node_selector(node)).await?;
    // lsp's rule: affinity names the node's hostname label, which differs from the node name
    // when kubelet runs with --hostname-override. Unknown (no Node, no permission): the name.
    let hostname = match api.node_hostname(node).await {
        Ok(Some(h)) => h,
        Ok(None) => node.to_owned(),
        Err(e) => {
            tracing::debug!(error = %e, "node's hostname label unknown; using the node name");
            node.to_owned()
        }
    };
    let by_name: BTreeMap<&str, &PersistentVolume> = existing
        .iter()
        .filter_map(|p| p.metadata.name.as_deref().map(|n| (n, p)))
        .collect();
    let mut present: BTreeSet<String> = BTreeSet::new();
    for (class, scan) in cfg.classes.iter().zip(scans) {
        for e in &scan.entries {
            let name = pv::pv_name(node, &class.name, &e.stable_id);
            present.insert(name.clone());
            if let Some(p) = by_name.get(name.as_str()) {
                r.present += 1;
                if ann(p, ANN_MISSING).is_some() {
                    let patch = BTreeMap::from([(ANN_MISSING.to_owned(), None)]);
                    match api.annotate(&name, &patch).await {
                        Ok(()) => r.back.push(name),
                        Err(err) => r.errors.push(err.to_string()),
                    }
                }
                continue;
            }
            if unfinished.contains(&e.stable_id) {
                continue;
            }
            let path = e.path.display().to_string();
            if let Some(old) = existing.iter().find(|p| {
                ann(p, ANN_ENTRY) == Some(path.as_str())
                    && ann(p, ANN_STABLE_ID).is_some_and(|id| id != e.stable_id)
            }) {
                let old_name = old.metadata.name.clone().unwrap_or_default();
                let msg = format!(
                    "entry {path} now holds {} instead of {}; no PV is created for it while this PV exists",
                    e.stable_id,
                    ann(old, ANN_STABLE_ID).unwrap_or_default()
                );
                if ann(old, ANN_PROBLEM) != Some(msg.as_str()) {
                    let patch = BTreeMap::from([(ANN_PROBLEM.to_owned(), Some(msg.clone()))]);
                    if let Err(err) = api.annotate(&old_name, &patch).await {
                        r.errors.push(err.to_string());
                    }
                }
                tracing::warn!(pv = %old_name, entry = %path, new_id = %e.stable_id, "entry holds another disk; not recreating");
                r.conflicts.push(format!("{old_name}: {msg}"));
                continue;
            }
            match api.create(&pv::build_for(node, &hostname, class, e)).await {
                Ok(()) => {
                    tracing::info!(pv = %name, entry = %path, stable_id = %e.stable_id, "local PV created");
                    r.created.push(name);
                }
                Err(err) if err.code() == Some(409) => r.present += 1,
                Err(err) => r.errors.push(err.to_string()),
            }
        }
    }
    for p in &existing {
        let Some(name) = p.metadata.name.as_deref() else {
            continue;
        };
        let entry = ann(p, ANN_ENTRY).map(std::path::PathBuf::from);
        let id = ann(p, ANN_STABLE_ID).unwrap_or_default().to_owned();
        let held = unfinished.contains(&id);
        if !present.contains(name) && !held {
            if ann(p, ANN_MISSING).is_none() {
                let patch = BTreeMap::from([(ANN_MISSING.to_owned(), Some(rfc3339_now()))]);
                match api.annotate(name, &patch).await {
                    Ok(()) => {
                        tracing::warn!(pv = %name, entry = ?entry, "entry of a local PV disappeared; PV marked, not deleted");
                        r.marked_missing.push(name.to_owned());
                    }
                    Err(err) => r.errors.push(err.to_string()),
                }
            }
            continue;
        }
        let spec = p.spec.as_ref();
        let released = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
        let delete_policy =
            spec.and_then(|s| s.persistent_volume_reclaim_policy.as_deref()) == Some("Delete");
        let in_dir = entry
            .as_ref()
            .and_then(|e| e.parent())
            .is_some_and(|d| cfg.class_of_dir(d).is_some());
        if released && delete_policy && in_dir {
            r.wipe_jobs.push(WipeJob {
                pv: name.to_owned(),
                uid: p.metadata.uid.clone().unwrap_or_default(),
                entry: entry.unwrap_or_default(),
                stable_id: id,
            });
        }
    }
    Ok(r)
}

/// Wipes a Released PV's entry (unless its record already says done), then deletes the PV
/// and the record. Blocking: call it off the async runtime's workers.
pub fn wipe_for_job(ctx: &WipeCtx<'_>, job: &WipeJob) -> Result<(), String> {
    let (recs, _) = wipe::load_records(ctx.state_dir);
    let done = recs.iter().any(|r| {
        r.stable_id == job.stable_id
            && r.phase == WipePhase::Done
            && r.pv.as_deref() == Some(job.pv.as_str())
    });
    if done {
        return Ok(());
    }
    wipe::wipe_entry(ctx, &job.entry, Some(&job.stable_id), Some(&job.pv))
        .map(drop)
        .map_err(|e| format!("{}: {}", e.reason(), crate::error::Chain(&e)))
}

/// After [`wipe_for_job`]: deletes the PV (UID precondition) and then the record.
pub async fn finish_job<A: PvApi>(
    api: &A,
    state_dir: &std::path::Path,
    job: &WipeJob,
) -> Result<(), String> {
    if job.uid.is_empty() {
        return Err(format!("PV {} has no UID; not deleted", job.pv));
    }
    api.delete(&job.pv, &job.uid)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(pv = %job.pv, entry = %job.entry.display(), "released local PV wiped and deleted; its entry will be offered again");
    wipe::remove_record(state_dir, &job.stable_id).map_err(|e| crate::error::Chain(&e).to_string())
}

/// What one node's pass works on: its name, its local PV classes, moor's state dir (the
/// wipe journal).
#[derive(Debug, Clone, Copy)]
pub struct NodeSync<'a> {
    /// This node.
    pub node_name: &'a str,
    /// The local PV classes.
    pub local: &'a super::classes::LocalConfig,
    /// moor's durable state dir.
    pub state_dir: &'a std::path::Path,
}

/// One full pass from the command line (`moor local sync`): scan, reconcile, recycle.
pub async fn sync_once<A: PvApi>(
    api: &A,
    node: &NodeSync<'_>,
    host: &Host,
    live: Result<Option<Vec<VolumeStatus>>, String>,
) -> Result<SyncReport, KubeError> {
    let src = super::discover::id_sources(node.local, host);
    let scans: Vec<Scan> = node
        .local
        .classes
        .iter()
        .map(|c| super::discover::scan_class(host, &src, c))
        .collect();
    let unfinished = wipe::unfinished_among(node.state_dir, &scans);
    let mut report = reconcile(api, node.node_name, node.local, &scans, &unfinished).await?;
    let ctx = WipeCtx {
        host,
        cfg: node.local,
        state_dir: node.state_dir,
        live_volumes: live,
    };
    for job in report.wipe_jobs.clone() {
        let done = wipe_for_job(&ctx, &job);
        match done {
            Ok(()) => match finish_job(api, node.state_dir, &job).await {
                Ok(()) => report.deleted.push(job.pv.clone()),
                Err(e) => report.errors.push(e),
            },
            Err(e) => report.errors.push(format!("{}: {e}", job.pv)),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests;
