//! The API server, as the rest of the daemon sees it: a [`Notify`] sink for notices (Events
//! with credentials, log + metric + `moor status` always) and a [`Pods`] view of this node's
//! pods (does a UID still exist, which volume mounts propagate, evict one).
//!
//! Invariants: nothing here blocks an async worker — [`Notify::notify`] only queues, and the
//! blocking calls say so; a pod is [`PodState::Gone`] only when the API server confirmed it
//! (never because it could not be asked): without credentials every pod is
//! [`PodState::Unknown`], so nothing is cleaned or evicted on a guess.

pub mod client;
pub mod events;
pub mod live;
pub mod offline;
pub mod pods;
pub mod testpods;
pub mod watch;

use std::sync::Arc;

pub use crate::api::notice::{Notice, NoticeReason, RecentNotice, Severity};
pub use offline::Offline;

/// Where notices go. Implementations aggregate and rate-limit; `notify` never blocks.
pub trait Notify: Send + Sync {
    /// Reports one fact (logs it, counts it, keeps it for `moor status`, sends an Event when
    /// credentials allow).
    fn notify(&self, notice: Notice);
    /// The recent notices, aggregated, newest last (for `moor status`).
    fn recent(&self) -> Vec<RecentNotice>;
}

/// A container volume mount's propagation (`volumeMounts[].mountPropagation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Propagation {
    /// The default: a private copy; nothing mounted later on the host reaches it.
    None,
    /// rslave: mounts made later on the host under the volume reach the container.
    HostToContainer,
    /// rshared (privileged containers only).
    Bidirectional,
}

/// One container's mount of one pod volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerMount {
    /// Container name.
    pub container: String,
    /// The pod volume's name (`spec.volumes[].name`).
    pub volume: String,
    /// Its propagation.
    pub propagation: Propagation,
}

/// A pod on this node, as the API server describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// Every container's volume mounts (init containers included).
    pub mounts: Vec<ContainerMount>,
    /// The pod volume name → the PV it uses through a claim, when the claim is bound.
    pub pvs: std::collections::BTreeMap<String, String>,
    /// A controller owns it (an `ownerReferences` entry with `controller: true`), so an
    /// eviction gets it recreated; a bare pod evicted would just be gone.
    pub controlled: bool,
}

/// What the API server says of a pod UID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodState {
    /// It exists (on this node).
    Present(PodInfo),
    /// Confirmed gone: the API server's view is current and has no pod with this UID.
    Gone,
    /// Not known: no credentials, the pod cache not synced yet, or the API server
    /// unreachable. Nothing may be cleaned or evicted on this answer.
    Unknown,
}

/// The result of one eviction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Eviction {
    /// The API server accepted it (the pod is terminating).
    Evicted,
    /// Refused for now: a PodDisruptionBudget (429) or a conflict; retry later.
    Blocked(String),
    /// The pod no longer exists.
    Gone,
    /// Failed (no credentials, forbidden, unreachable …).
    Failed(String),
}

/// This node's pods.
pub trait Pods: Send + Sync {
    /// What the API server says of `uid` (from a cache kept by a watch: cheap, no request).
    fn pod(&self, uid: &str) -> PodState;
    /// Evicts a pod through the Eviction API (PodDisruptionBudgets apply). Blocks for at
    /// most a few seconds: call it off the async workers.
    fn evict(&self, namespace: &str, name: &str, uid: &str) -> Eviction;
    /// A PersistentVolume's annotation (operator-owned, unlike a pod's inline options), e.g.
    /// `moor.io/evict-pods`. Cached; `None` when unknown or absent. May block briefly the
    /// first time a PV is asked about: call it off the async workers.
    fn pv_annotation(&self, _pv: &str, _key: &str) -> Option<String> {
        None
    }
}

/// The daemon's handle on the API server (cheap to clone).
#[derive(Clone)]
pub struct Cluster {
    /// Notices.
    pub notify: Arc<dyn Notify>,
    /// Pods.
    pub pods: Arc<dyn Pods>,
    /// Whether API credentials were found (Events are sent, pods are known).
    pub connected: bool,
}

impl Cluster {
    /// No API server: notices are logged, counted and kept; every pod is unknown.
    pub fn offline() -> Self {
        let o = Arc::new(Offline::default());
        Cluster {
            notify: o.clone(),
            pods: o,
            connected: false,
        }
    }
}

/// Without an API server, but counted: notices are logged, kept and counted in
/// `moor_notices_total` (what the daemon uses when it has no credentials).
struct Counted {
    kept: Offline,
    metrics: crate::metrics::ClusterMetrics,
}

impl Notify for Counted {
    fn notify(&self, notice: Notice) {
        live::note(&self.kept, &self.metrics, &notice);
    }

    fn recent(&self) -> Vec<RecentNotice> {
        self.kept.recent()
    }
}

/// What the daemon built at start-up: the cluster, and with credentials the client and the
/// pod cache the other API users share.
pub struct Started {
    /// The cluster every room reports through.
    pub cluster: Cluster,
    /// The counted client (`None`: no credentials).
    pub client: Option<kube::Client>,
    /// This node's pods (`None`: no credentials).
    pub pods: Option<Arc<pods::PodCache>>,
}

impl Cluster {
    /// Without an API server, counting notices into `metrics`.
    pub fn offline_counted(metrics: crate::metrics::ClusterMetrics) -> Self {
        let o = Arc::new(Counted {
            kept: Offline::default(),
            metrics,
        });
        Cluster {
            notify: o.clone(),
            pods: Arc::new(Offline::default()),
            connected: false,
        }
    }

    /// Finds credentials once (`cfg`) and starts the pod watch and the Events task on the
    /// current runtime; without credentials, one log line and [`Cluster::offline_counted`].
    pub async fn start(
        cfg: &crate::config::KubernetesConfig,
        node: &str,
        metrics: crate::metrics::ClusterMetrics,
    ) -> Started {
        match client::connect(cfg, &metrics.api_requests).await {
            Ok(c) => {
                let opts = live::Options {
                    node: node.to_owned(),
                    events: cfg.events,
                    tuning: events::Tuning::default(),
                    timings: watch::Timings::PRODUCTION,
                };
                let (cluster, pods) = live::KubeCluster::start(c.clone(), opts, metrics);
                tracing::info!(
                    node,
                    events = cfg.events,
                    "Kubernetes API: Events on pods, PVs and the node; this node's pods watched"
                );
                Started {
                    cluster,
                    client: Some(c),
                    pods: Some(pods),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "no Kubernetes API: notices go to the log, the metrics and `moor status` only; no pod is known, so nothing is evicted or cleaned automatically");
                Started {
                    cluster: Cluster::offline_counted(metrics),
                    client: None,
                    pods: None,
                }
            }
        }
    }
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster::offline()
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("connected", &self.connected)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
