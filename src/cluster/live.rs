//! The cluster with an API server: notices are logged, kept and counted as offline, and
//! queued for an Events task; this node's pods come from a watch; evictions and PV
//! annotations are asked of the API server from blocking callers.
//!
//! Invariants: [`Notify::notify`] never blocks — the queue is bounded and a full queue
//! drops the Event (counted `dropped`), never the log line or the `moor status` entry;
//! with `kubernetes.events: false` no Event is queued at all; an answer about a PV is
//! reused for [`PV_TTL`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::PersistentVolume;

use super::events::{Involved, Sender, Tuning};
use super::offline::{self, Offline};
use super::pods::{PodCache, PodSink};
use super::watch::{self, Selector, Timings};
use super::{Cluster, Eviction, Notice, Notify, PodState, Pods, RecentNotice};
use crate::metrics::{ClusterMetrics, NoticeLabels};

/// How long an answer about a PV (served by moor? its annotations) is reused.
pub const PV_TTL: Duration = Duration::from_secs(3600);
/// Notices waiting for the Events task; more are dropped (and counted).
pub const QUEUE: usize = 256;
/// The longest a blocking caller waits for the API server.
pub const BLOCKING_LIMIT: Duration = Duration::from_secs(5);

/// What a PV answer holds.
#[derive(Debug, Clone, Default)]
struct PvFacts {
    uid: String,
    served: bool,
    annotations: std::collections::BTreeMap<String, String>,
}

/// PV answers, an hour each.
#[derive(Default)]
pub struct PvCache {
    known: Mutex<HashMap<String, (Instant, Option<PvFacts>)>>,
}

/// Whether moor serves the PV: FlexVolume driver `moor/<driver>` or CSI `<driver>.csi.moor.io`.
pub fn served_by_moor(pv: &PersistentVolume) -> bool {
    let Some(spec) = &pv.spec else {
        return false;
    };
    let flex = spec.flex_volume.as_ref().is_some_and(|f| {
        f.driver
            .starts_with(&format!("{}/", crate::host::paths::VENDOR))
    });
    let csi = spec
        .csi
        .as_ref()
        .is_some_and(|c| c.driver.ends_with(".csi.moor.io"));
    flex || csi
}

impl PvCache {
    async fn facts(&self, client: &kube::Client, name: &str) -> Option<PvFacts> {
        if let Ok(k) = self.known.lock()
            && let Some((at, f)) = k.get(name)
            && at.elapsed() < PV_TTL
        {
            return f.clone();
        }
        let api: kube::Api<PersistentVolume> = kube::Api::all(client.clone());
        let facts = match api.get_opt(name).await {
            Ok(found) => found.map(|pv| PvFacts {
                uid: pv.metadata.uid.clone().unwrap_or_default(),
                served: served_by_moor(&pv),
                annotations: pv.metadata.annotations.clone().unwrap_or_default(),
            }),
            Err(e) => {
                // Not cached: asked again next time.
                tracing::debug!(pv = %name, error = %e, "PV not read");
                return None;
            }
        };
        if let Ok(mut k) = self.known.lock() {
            k.retain(|_, (at, _)| at.elapsed() < PV_TTL);
            k.insert(name.to_owned(), (Instant::now(), facts.clone()));
        }
        facts
    }
}

/// The cluster through one client.
pub struct KubeCluster {
    kept: Offline,
    metrics: ClusterMetrics,
    queue: Option<tokio::sync::mpsc::Sender<Notice>>,
    pods: Arc<PodCache>,
    pvs: Arc<PvCache>,
    client: kube::Client,
    runtime: tokio::runtime::Handle,
}

/// How a [`KubeCluster`] is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// This node's name.
    pub node: String,
    /// Send Events (`kubernetes.events`).
    pub events: bool,
    /// The recorder's rules.
    pub tuning: Tuning,
    /// The pod watch's timings.
    pub timings: Timings,
}

impl KubeCluster {
    /// Starts the pod watch and the Events task on the current runtime, and returns the
    /// cluster (`connected: true`) and the shared pod cache.
    pub fn start(
        client: kube::Client,
        opts: Options,
        metrics: ClusterMetrics,
    ) -> (Cluster, Arc<PodCache>) {
        let pods = Arc::new(PodCache::default());
        let pvs = Arc::new(PvCache::default());
        let runtime = tokio::runtime::Handle::current();
        let queue = opts.events.then(|| {
            let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
            let sender = Sender::new(client.clone(), &opts.node, opts.tuning, metrics.clone());
            runtime.spawn(send_events(
                rx,
                sender,
                pods.clone(),
                pvs.clone(),
                client.clone(),
                opts.node.clone(),
            ));
            tx
        });
        {
            let (cache, client, node, timings) = (
                pods.clone(),
                client.clone(),
                opts.node.clone(),
                opts.timings,
            );
            runtime.spawn(async move {
                let api: kube::Api<k8s_openapi::api::core::v1::Pod> =
                    kube::Api::all(client.clone());
                let sel = Selector {
                    fields: Some(format!("spec.nodeName={node}")),
                    labels: None,
                };
                let mut sink = PodSink::new(&cache, client);
                watch::run(api, sel, timings, "pods", &mut sink).await;
            });
        }
        let me = Arc::new(KubeCluster {
            kept: Offline::default(),
            metrics,
            queue,
            pods: pods.clone(),
            pvs,
            client,
            runtime,
        });
        (
            Cluster {
                notify: me.clone(),
                pods: me,
                connected: true,
            },
            pods,
        )
    }

    /// Runs `fut` on the runtime and waits at most [`BLOCKING_LIMIT`] (never panics, even
    /// on an async worker, where it would only block that worker).
    fn wait<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv_timeout(BLOCKING_LIMIT).ok()
    }
}

/// Counts, logs and keeps a notice: what every [`Notify`] does first.
pub fn note(kept: &Offline, metrics: &ClusterMetrics, notice: &Notice) {
    metrics
        .notices
        .get_or_create(&NoticeLabels {
            reason: notice.reason.label().into(),
        })
        .inc();
    offline::log(notice);
    kept.keep(notice.clone());
}

impl Notify for KubeCluster {
    fn notify(&self, notice: Notice) {
        note(&self.kept, &self.metrics, &notice);
        if let Some(q) = &self.queue
            && q.try_send(notice).is_err()
        {
            self.metrics.event("dropped");
        }
    }

    fn recent(&self) -> Vec<RecentNotice> {
        self.kept.recent()
    }
}

impl Pods for KubeCluster {
    fn pod(&self, uid: &str) -> PodState {
        self.pods.state(uid)
    }

    fn evict(&self, namespace: &str, name: &str, uid: &str) -> Eviction {
        let (client, ns, n, u) = (
            self.client.clone(),
            namespace.to_owned(),
            name.to_owned(),
            uid.to_owned(),
        );
        self.wait(async move { super::pods::evict(&client, &ns, &n, &u).await })
            .unwrap_or_else(|| Eviction::Failed("the API server did not answer in time".into()))
    }

    fn pv_annotation(&self, pv: &str, key: &str) -> Option<String> {
        let (client, pvs, name) = (self.client.clone(), self.pvs.clone(), pv.to_owned());
        let facts = self.wait(async move { pvs.facts(&client, &name).await })??;
        facts.annotations.get(key).cloned()
    }
}

/// The objects a notice's Events go on: each pod the cache knows (an unknown one → the
/// node), the PV when moor serves it, else the node.
async fn targets(
    n: &Notice,
    pods: &PodCache,
    pvs: &PvCache,
    client: &kube::Client,
    node: &str,
) -> Vec<Involved> {
    let mut out: Vec<Involved> = Vec::new();
    let mut push = |i: Involved| {
        if !out.contains(&i) {
            out.push(i);
        }
    };
    for uid in &n.pod_uids {
        match pods.lookup(uid) {
            Some(p) => push(Involved {
                kind: "Pod",
                namespace: p.namespace,
                name: p.name,
                uid: p.uid,
            }),
            None => push(Involved::node(node)),
        }
    }
    if let Some(pv) = &n.pv
        && let Some(f) = pvs.facts(client, pv).await
        && f.served
    {
        push(Involved {
            kind: "PersistentVolume",
            namespace: String::new(),
            name: pv.clone(),
            uid: f.uid,
        });
    }
    if out.is_empty() {
        out.push(Involved::node(node));
    }
    out
}

async fn send_events(
    mut rx: tokio::sync::mpsc::Receiver<Notice>,
    mut sender: Sender,
    pods: Arc<PodCache>,
    pvs: Arc<PvCache>,
    client: kube::Client,
    node: String,
) {
    while let Some(n) = rx.recv().await {
        let kind = n.reason.severity().event_type();
        for obj in targets(&n, &pods, &pvs, &client, &node).await {
            sender
                .record(&obj, n.reason.event_reason(), kind, &n.message)
                .await;
        }
    }
}
