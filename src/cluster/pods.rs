//! This node's pods: a watch (`fieldSelector spec.nodeName=<node>`) kept in a cache keyed
//! by UID, each pod's volume mounts with their propagation, whether a controller owns it,
//! and the PVs its claims are bound to (one GET per claim not seen before, kept while a pod
//! of this node uses it); and evictions through the Eviction subresource.
//!
//! Invariant: [`PodCache::state`] says [`PodState::Gone`] only when the watch has listed
//! since start-up, is connected now (its last list or watch succeeded), and the UID is not
//! in its view: a UID absent from a current, complete list of this node's pods. While the
//! API server is unreachable, or before the first list, every pod is
//! [`PodState::Unknown`]. A pod's DELETED event is the API server's own word.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};

use super::watch::{Change, Sink};
use super::{ContainerMount, Eviction, PodInfo, PodState, Propagation};

#[derive(Default)]
struct Inner {
    pods: HashMap<String, Cached>,
    synced: bool,
    healthy: bool,
}

#[derive(Clone)]
struct Cached {
    info: PodInfo,
    /// PV → claim name (the claim is in the pod's namespace).
    claims: BTreeMap<String, String>,
}

/// The cache the watch fills.
#[derive(Default)]
pub struct PodCache {
    inner: Mutex<Inner>,
}

impl PodCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the API server says of `uid` (see the module's invariant).
    pub fn state(&self, uid: &str) -> PodState {
        let i = self.lock();
        if !(i.synced && i.healthy) {
            return PodState::Unknown;
        }
        match i.pods.get(uid) {
            Some(c) => PodState::Present(c.info.clone()),
            None => PodState::Gone,
        }
    }

    /// The pod as last seen, whether or not the view is current (for naming an Event's
    /// object, never for a decision).
    pub fn lookup(&self, uid: &str) -> Option<PodInfo> {
        self.lock().pods.get(uid).map(|c| c.info.clone())
    }

    /// The claim through which pod `uid` uses PV `pv`: (namespace, claim).
    pub fn claim_of(&self, uid: &str, pv: &str) -> Option<(String, String)> {
        let i = self.lock();
        let c = i.pods.get(uid)?;
        c.claims
            .get(pv)
            .map(|claim| (c.info.namespace.clone(), claim.clone()))
    }

    /// Whether the watch has listed and is connected.
    pub fn is_current(&self) -> bool {
        let i = self.lock();
        i.synced && i.healthy
    }

    fn known_claims(&self) -> HashMap<(String, String), String> {
        let i = self.lock();
        i.pods
            .values()
            .flat_map(|c| {
                c.claims
                    .iter()
                    .map(|(pv, claim)| ((c.info.namespace.clone(), claim.clone()), pv.clone()))
            })
            .collect()
    }
}

fn propagation(p: Option<&str>) -> Propagation {
    match p {
        Some("HostToContainer") => Propagation::HostToContainer,
        Some("Bidirectional") => Propagation::Bidirectional,
        _ => Propagation::None,
    }
}

/// The facts moor needs of a pod (`claims`: (namespace, claim) → PV, as resolved so far).
pub fn pod_info(
    pod: &Pod,
    claims: &HashMap<(String, String), String>,
) -> Option<(PodInfo, BTreeMap<String, String>)> {
    let uid = pod.metadata.uid.clone()?;
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let controlled = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true));
    let mut mounts = Vec::new();
    let mut pvs = BTreeMap::new();
    let mut by_pv = BTreeMap::new();
    if let Some(spec) = &pod.spec {
        for c in spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
        {
            for m in c.volume_mounts.iter().flatten() {
                mounts.push(ContainerMount {
                    container: c.name.clone(),
                    volume: m.name.clone(),
                    propagation: propagation(m.mount_propagation.as_deref()),
                });
            }
        }
        for v in spec.volumes.iter().flatten() {
            if let Some(pvc) = &v.persistent_volume_claim
                && let Some(pv) = claims.get(&(namespace.clone(), pvc.claim_name.clone()))
            {
                pvs.insert(v.name.clone(), pv.clone());
                by_pv.insert(pv.clone(), pvc.claim_name.clone());
            }
        }
    }
    Some((
        PodInfo {
            namespace,
            name,
            uid,
            mounts,
            pvs,
            controlled,
        },
        by_pv,
    ))
}

/// Feeds the cache from the watch, resolving new claims with one GET each.
pub struct PodSink<'a> {
    cache: &'a PodCache,
    client: kube::Client,
}

impl<'a> PodSink<'a> {
    /// A sink into `cache`, reading claims through `client`.
    pub fn new(cache: &'a PodCache, client: kube::Client) -> Self {
        PodSink { cache, client }
    }

    /// Resolves the claims of `pods` not known yet (bound ones only: an unbound claim is
    /// asked again on the pod's next change).
    async fn resolve(&self, pods: &[&Pod], known: &mut HashMap<(String, String), String>) {
        for p in pods {
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            let vols = p.spec.as_ref().and_then(|s| s.volumes.as_ref());
            for v in vols.into_iter().flatten() {
                let Some(pvc) = &v.persistent_volume_claim else {
                    continue;
                };
                let key = (ns.clone(), pvc.claim_name.clone());
                if known.contains_key(&key) {
                    continue;
                }
                let api: kube::Api<PersistentVolumeClaim> =
                    kube::Api::namespaced(self.client.clone(), &ns);
                match api.get_opt(&pvc.claim_name).await {
                    Ok(Some(c)) => {
                        if let Some(pv) =
                            c.spec.and_then(|s| s.volume_name).filter(|v| !v.is_empty())
                        {
                            known.insert(key, pv);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::debug!(namespace = %ns, claim = %pvc.claim_name, error = %e, "claim not read")
                    }
                }
            }
        }
    }
}

impl Sink<Pod> for PodSink<'_> {
    async fn apply(&mut self, change: Change<Pod>) {
        let mut known = self.cache.known_claims();
        match change {
            Change::Reset(pods) => {
                let refs: Vec<&Pod> = pods.iter().collect();
                self.resolve(&refs, &mut known).await;
                let fresh: HashMap<String, Cached> = pods
                    .iter()
                    .filter_map(|p| pod_info(p, &known))
                    .map(|(info, claims)| (info.uid.clone(), Cached { info, claims }))
                    .collect();
                let mut i = self.cache.lock();
                i.pods = fresh;
                i.synced = true;
            }
            Change::Upsert(p) => {
                self.resolve(&[&p], &mut known).await;
                if let Some((info, claims)) = pod_info(&p, &known) {
                    self.cache
                        .lock()
                        .pods
                        .insert(info.uid.clone(), Cached { info, claims });
                }
            }
            Change::Delete(p) => {
                if let Some(uid) = &p.metadata.uid {
                    self.cache.lock().pods.remove(uid);
                }
            }
        }
    }

    fn healthy(&mut self, ok: bool) {
        self.cache.lock().healthy = ok;
    }
}

/// Evicts `namespace/name` if its UID is still `uid` (policy/v1 Eviction, the UID as a
/// delete precondition): 201 → evicted, 429 → blocked (a PodDisruptionBudget), 404 → gone
/// (a 409 on the precondition: another pod of that name now, so the one meant is gone).
pub async fn evict(client: &kube::Client, namespace: &str, name: &str, uid: &str) -> Eviction {
    let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), namespace);
    let body = serde_json::json!({
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": name, "namespace": namespace},
        "deleteOptions": {"preconditions": {"uid": uid}},
    });
    match api
        .create_subresource::<_, serde_json::Value>("eviction", name, &Default::default(), &body)
        .await
    {
        Ok(_) => Eviction::Evicted,
        Err(kube::Error::Api(s)) if s.code == 429 => Eviction::Blocked(s.message),
        Err(kube::Error::Api(s)) if s.code == 404 => Eviction::Gone,
        Err(kube::Error::Api(s)) if s.code == 409 && s.message.contains("recondition") => {
            Eviction::Gone
        }
        Err(kube::Error::Api(s)) => Eviction::Failed(format!("{} ({})", s.message, s.code)),
        Err(e) => Eviction::Failed(e.to_string()),
    }
}
