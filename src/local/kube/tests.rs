//! Reconcile logic over an in-memory [`PvApi`], and the real `kube` client against a fake API
//! server speaking HTTP on 127.0.0.1 (the endpoints moor uses, with the status codes a real
//! server gives: 201, 409 AlreadyExists, 404, 409 on a failed UID precondition).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as AxPath, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::routing::get;

use super::*;
use crate::host::DevNum;
use crate::local::classes::{ClassConfig, LocalConfig};
use crate::local::discover::{Entry, EntryKind};

fn class() -> ClassConfig {
    crate::local::classes::test_class("nvme", Duration::from_secs(5))
}

fn cfg() -> LocalConfig {
    LocalConfig {
        classes: vec![class()],
        ..LocalConfig::default()
    }
}

fn entry(name: &str, id: &str) -> Entry {
    Entry {
        class: "nvme".into(),
        path: format!("/mnt/disks/{name}").into(),
        kind: EntryKind::BlockDevice {
            device: "/dev/nvme0n1".into(),
            dev: DevNum {
                major: 259,
                minor: 0,
            },
        },
        stable_id: id.into(),
        capacity_bytes: 1 << 30,
    }
}

fn scan(entries: Vec<Entry>) -> Vec<Scan> {
    vec![Scan {
        entries,
        skipped: vec![],
    }]
}

/// An in-memory API server at the object level.
#[derive(Default)]
struct FakeApi {
    pvs: Mutex<BTreeMap<String, PersistentVolume>>,
    deleted: Mutex<Vec<String>>,
}

impl FakeApi {
    fn get(&self, name: &str) -> Option<PersistentVolume> {
        self.pvs.lock().unwrap().get(name).cloned()
    }
    fn set_phase(&self, name: &str, phase: &str) {
        let mut m = self.pvs.lock().unwrap();
        let p = m.get_mut(name).unwrap();
        p.status = Some(k8s_openapi::api::core::v1::PersistentVolumeStatus {
            phase: Some(phase.into()),
            ..Default::default()
        });
    }
}

impl PvApi for FakeApi {
    async fn list(&self, selector: &str) -> Result<Vec<PersistentVolume>, KubeError> {
        let want: Vec<(&str, &str)> = selector
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        Ok(self
            .pvs
            .lock()
            .unwrap()
            .values()
            .filter(|p| {
                let l = p.metadata.labels.clone().unwrap_or_default();
                want.iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .cloned()
            .collect())
    }
    async fn create(&self, pv: &PersistentVolume) -> Result<(), KubeError> {
        let name = pv.metadata.name.clone().unwrap();
        let mut m = self.pvs.lock().unwrap();
        if m.contains_key(&name) {
            return Err(KubeError::Api {
                op: "create",
                name,
                code: Some(409),
                message: "exists".into(),
            });
        }
        let mut pv = pv.clone();
        pv.metadata.uid = Some(format!("uid-{name}"));
        m.insert(name, pv);
        Ok(())
    }
    async fn annotate(
        &self,
        name: &str,
        ann: &BTreeMap<String, Option<String>>,
    ) -> Result<(), KubeError> {
        let mut m = self.pvs.lock().unwrap();
        let p = m.get_mut(name).unwrap();
        let a = p.metadata.annotations.get_or_insert_with(BTreeMap::new);
        for (k, v) in ann {
            match v {
                Some(v) => a.insert(k.clone(), v.clone()),
                None => a.remove(k),
            };
        }
        Ok(())
    }
    async fn node_hostname(&self, node: &str) -> Result<Option<String>, KubeError> {
        Ok((node == "node-h").then(|| "host-h".to_owned()))
    }
    async fn delete(&self, name: &str, uid: &str) -> Result<(), KubeError> {
        let mut m = self.pvs.lock().unwrap();
        if m.get(name).and_then(|p| p.metadata.uid.as_deref()) == Some(uid) {
            m.remove(name);
            self.deleted.lock().unwrap().push(name.into());
        }
        Ok(())
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn new_entries_get_pvs_once_and_vanished_ones_are_marked_not_deleted() {
    let api = FakeApi::default();
    let c = cfg();
    rt().block_on(async {
        let r = reconcile(
            &api,
            "node-a",
            &c,
            &scan(vec![entry("d0", "wwn-0"), entry("d1", "wwn-1")]),
            &[],
        )
        .await
        .unwrap();
        assert_eq!(r.created.len(), 2);
        // Again: nothing new (no recreate loop, lsp #209).
        let r = reconcile(
            &api,
            "node-a",
            &c,
            &scan(vec![entry("d0", "wwn-0"), entry("d1", "wwn-1")]),
            &[],
        )
        .await
        .unwrap();
        assert_eq!((r.created.len(), r.present), (0, 2));
        // d1 vanishes: marked, kept.
        let r = reconcile(&api, "node-a", &c, &scan(vec![entry("d0", "wwn-0")]), &[])
            .await
            .unwrap();
        let name1 = pv::pv_name("node-a", "nvme", "wwn-1");
        assert_eq!(r.marked_missing, vec![name1.clone()]);
        let p = api.get(&name1).unwrap();
        assert!(ann(&p, ANN_MISSING).unwrap().ends_with('Z'));
        // Even Released, a missing PV is not recycled.
        api.set_phase(&name1, "Released");
        let r = reconcile(&api, "node-a", &c, &scan(vec![entry("d0", "wwn-0")]), &[])
            .await
            .unwrap();
        assert!(r.wipe_jobs.is_empty() && r.marked_missing.is_empty());
        // It comes back: the mark goes.
        let r = reconcile(
            &api,
            "node-a",
            &c,
            &scan(vec![entry("d0", "wwn-0"), entry("d1", "wwn-1")]),
            &[],
        )
        .await
        .unwrap();
        assert_eq!(r.back, vec![name1.clone()]);
        assert!(ann(&api.get(&name1).unwrap(), ANN_MISSING).is_none());
        // Another node's PVs are not ours to touch.
        let r = reconcile(&api, "node-b", &c, &scan(vec![]), &[])
            .await
            .unwrap();
        assert!(r.marked_missing.is_empty());
    });
}

#[test]
fn a_replaced_disk_never_inherits_or_recreates_the_pv() {
    let api = FakeApi::default();
    let c = cfg();
    rt().block_on(async {
        reconcile(&api, "node-a", &c, &scan(vec![entry("d0", "wwn-old")]), &[])
            .await
            .unwrap();
        let r = reconcile(&api, "node-a", &c, &scan(vec![entry("d0", "wwn-new")]), &[])
            .await
            .unwrap();
        assert!(r.created.is_empty(), "{r:?}");
        assert_eq!(r.conflicts.len(), 1);
        let old = api.get(&pv::pv_name("node-a", "nvme", "wwn-old")).unwrap();
        assert!(ann(&old, ANN_PROBLEM).unwrap().contains("wwn-new"));
        assert!(ann(&old, ANN_MISSING).is_some(), "the old disk is gone");
    });
}

#[test]
fn released_pvs_become_wipe_jobs_and_unfinished_wipes_are_not_republished() {
    let api = FakeApi::default();
    let c = cfg();
    let t = tempfile::tempdir().unwrap();
    rt().block_on(async {
        reconcile(&api, "node-a", &c, &scan(vec![entry("d0", "wwn-0")]), &[])
            .await
            .unwrap();
        let name = pv::pv_name("node-a", "nvme", "wwn-0");
        api.set_phase(&name, "Bound");
        let r = reconcile(&api, "node-a", &c, &scan(vec![entry("d0", "wwn-0")]), &[])
            .await
            .unwrap();
        assert!(r.wipe_jobs.is_empty());
        api.set_phase(&name, "Released");
        let r = reconcile(&api, "node-a", &c, &scan(vec![entry("d0", "wwn-0")]), &[])
            .await
            .unwrap();
        assert_eq!(
            r.wipe_jobs,
            vec![WipeJob {
                pv: name.clone(),
                uid: format!("uid-{name}"),
                entry: "/mnt/disks/d0".into(),
                stable_id: "wwn-0".into()
            }]
        );
        // The wipe finished (record done): the PV is deleted, then the record.
        wipe::put_record(
            t.path(),
            &wipe::WipeRecord {
                entry: "/mnt/disks/d0".into(),
                class: "nvme".into(),
                stable_id: "wwn-0".into(),
                pv: Some(name.clone()),
                method: "zero-ends".into(),
                phase: WipePhase::Started,
                started: 1,
                finished: None,
                error: None,
                nested_mounts_left: vec![],
            },
        )
        .unwrap();
        // While the record says started, the entry is held back from publication.
        let unfinished = wipe::unfinished_ids(t.path());
        finish_job(&api, t.path(), &r.wipe_jobs[0]).await.unwrap();
        assert!(api.get(&name).is_none());
        let r = reconcile(
            &api,
            "node-a",
            &c,
            &scan(vec![entry("d0", "wwn-0")]),
            &unfinished,
        )
        .await
        .unwrap();
        assert!(
            r.created.is_empty(),
            "not republished over a half-wiped disk"
        );
        assert!(wipe::load_records(t.path()).0.is_empty());
        let r = reconcile(&api, "node-a", &c, &scan(vec![entry("d0", "wwn-0")]), &[])
            .await
            .unwrap();
        assert_eq!(r.created, vec![name]);
    });
}

#[test]
fn affinity_names_the_nodes_hostname_label() {
    let api = FakeApi::default();
    rt().block_on(async {
        reconcile(
            &api,
            "node-h",
            &cfg(),
            &scan(vec![entry("d0", "wwn-0")]),
            &[],
        )
        .await
        .unwrap();
    });
    let p = api.get(&pv::pv_name("node-h", "nvme", "wwn-0")).unwrap();
    let spec = p.spec.unwrap();
    let term = &spec
        .node_affinity
        .unwrap()
        .required
        .unwrap()
        .node_selector_terms[0];
    let expr = &term.match_expressions.as_ref().unwrap()[0];
    assert_eq!(expr.values.as_deref(), Some(&["host-h".to_owned()][..]));
    // The flex option still names the node (what the daemon compares with its own name).
    let flex = spec.flex_volume.unwrap();
    assert_eq!(flex.options.unwrap()["node"], "node-h");
}

#[test]
fn timestamps_are_rfc3339() {
    let t = rfc3339_now();
    assert_eq!(t.len(), 20, "{t}");
    assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
}

// ---- the real kube client against a fake API server at the HTTP layer ----

#[derive(Default)]
struct Server {
    objs: Mutex<BTreeMap<String, serde_json::Value>>,
    log: Mutex<Vec<String>>,
}

type Reply = (
    StatusCode,
    [(axum::http::HeaderName, &'static str); 1],
    String,
);

fn reply(code: StatusCode, v: serde_json::Value) -> Reply {
    (
        code,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
}

fn status(code: u16, reason: &str, msg: &str) -> Reply {
    reply(
        StatusCode::from_u16(code).unwrap(),
        serde_json::json!({"apiVersion":"v1","kind":"Status","status":"Failure","code":code,"reason":reason,"message":msg}),
    )
}

async fn collection(State(s): State<Arc<Server>>, method: Method, uri: Uri, body: String) -> Reply {
    s.log.lock().unwrap().push(format!("{method} {}", uri));
    if method == Method::POST {
        let mut v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let name = v["metadata"]["name"].as_str().unwrap().to_owned();
        let mut m = s.objs.lock().unwrap();
        if m.contains_key(&name) {
            return status(
                409,
                "AlreadyExists",
                &format!("persistentvolumes \"{name}\" already exists"),
            );
        }
        v["metadata"]["uid"] = format!("uid-{name}").into();
        v["metadata"]["resourceVersion"] = "1".into();
        m.insert(name, v.clone());
        return reply(StatusCode::CREATED, v);
    }
    let q = uri
        .query()
        .unwrap_or_default()
        .replace("%3D", "=")
        .replace("%2C", ",")
        .replace("%2F", "/");
    let sel = q
        .split('&')
        .find_map(|kv| kv.strip_prefix("labelSelector="))
        .unwrap_or_default()
        .to_owned();
    let want: Vec<(String, String)> = sel
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
    let items: Vec<serde_json::Value> = s
        .objs
        .lock()
        .unwrap()
        .values()
        .filter(|o| {
            want.iter()
                .all(|(k, v)| o["metadata"]["labels"][k] == v.as_str())
        })
        .cloned()
        .collect();
    reply(
        StatusCode::OK,
        serde_json::json!({"apiVersion":"v1","kind":"PersistentVolumeList","metadata":{"resourceVersion":"7"},"items":items}),
    )
}

async fn object(
    State(s): State<Arc<Server>>,
    AxPath(name): AxPath<String>,
    method: Method,
    headers: HeaderMap,
    body: String,
) -> Reply {
    let ct = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    s.log.lock().unwrap().push(format!("{method} {name} {ct}"));
    let mut m = s.objs.lock().unwrap();
    let Some(obj) = m.get_mut(&name) else {
        return status(
            404,
            "NotFound",
            &format!("persistentvolumes \"{name}\" not found"),
        );
    };
    match method {
        Method::PATCH => {
            assert_eq!(ct, "application/merge-patch+json");
            let p: serde_json::Value = serde_json::from_str(&body).unwrap();
            let anns = obj["metadata"]
                .as_object_mut()
                .unwrap()
                .entry("annotations")
                .or_insert(serde_json::json!({}));
            for (k, v) in p["metadata"]["annotations"].as_object().unwrap() {
                if v.is_null() {
                    anns.as_object_mut().unwrap().remove(k);
                } else {
                    anns[k] = v.clone();
                }
            }
            reply(StatusCode::OK, obj.clone())
        }
        Method::DELETE => {
            let d: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let want = d["preconditions"]["uid"].as_str().unwrap_or_default();
            if obj["metadata"]["uid"] != want {
                return status(409, "Conflict", "Precondition failed: UID in precondition");
            }
            let o = m.remove(&name).unwrap();
            reply(StatusCode::OK, o)
        }
        _ => reply(StatusCode::OK, obj.clone()),
    }
}

async fn node(AxPath(name): AxPath<String>) -> Reply {
    if name != "node-a" {
        return status(404, "NotFound", &format!("nodes \"{name}\" not found"));
    }
    reply(
        StatusCode::OK,
        serde_json::json!({"apiVersion":"v1","kind":"Node","metadata":{"name":"node-a","labels":{"kubernetes.io/hostname":"node-a.example"}}}),
    )
}

async fn fake_server() -> (Arc<Server>, KubePvApi) {
    let s = Arc::new(Server::default());
    let app = axum::Router::new()
        .route(
            "/api/v1/persistentvolumes",
            get(collection).post(collection),
        )
        .route(
            "/api/v1/persistentvolumes/{name}",
            get(object).patch(object).delete(object),
        )
        .route("/api/v1/nodes/{name}", get(node))
        .with_state(s.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    let cfg = kube::Config::new(format!("http://{addr}").parse().unwrap());
    (s, KubePvApi::from_config(cfg).unwrap())
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_kube_client_speaks_the_api_servers_http() {
    multi_thread().block_on(async {
        let (srv, api) = fake_server().await;
        let c = cfg();
        let r = reconcile(
            &api,
            "node-a",
            &c,
            &scan(vec![entry("d0", "wwn-0"), entry("d1", "wwn-1")]),
            &[],
        )
        .await
        .unwrap();
        assert_eq!(r.created.len(), 2, "{r}");
        let name0 = pv::pv_name("node-a", "nvme", "wwn-0");
        let stored = srv.objs.lock().unwrap()[&name0].clone();
        assert_eq!(stored["kind"], "PersistentVolume");
        assert_eq!(stored["spec"]["flexVolume"]["driver"], "moor/local");
        assert_eq!(
            stored["spec"]["flexVolume"]["options"]["path"],
            "/mnt/disks/d0"
        );
        assert_eq!(
            stored["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"]
                [0]["values"][0],
            "node-a.example"
        );
        assert_eq!(api.node_hostname("node-z").await.unwrap(), None);
        // Creating again is a 409 the reconcile treats as present.
        let e = api
            .create(&pv::build("node-a", &class(), &entry("d0", "wwn-0")))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(409), "{e}");
        // The list is filtered by this node's selector.
        assert_eq!(
            api.list(&pv::node_selector("node-a")).await.unwrap().len(),
            2
        );
        assert!(
            api.list(&pv::node_selector("node-b"))
                .await
                .unwrap()
                .is_empty()
        );
        // d1 vanishes: a merge patch marks it.
        let r = reconcile(&api, "node-a", &c, &scan(vec![entry("d0", "wwn-0")]), &[])
            .await
            .unwrap();
        assert_eq!(r.marked_missing.len(), 1, "{r}");
        let name1 = pv::pv_name("node-a", "nvme", "wwn-1");
        assert!(
            srv.objs.lock().unwrap()[&name1]["metadata"]["annotations"][ANN_MISSING].is_string()
        );
        // Released → job → delete with the UID precondition; a wrong UID is refused.
        srv.objs.lock().unwrap().get_mut(&name0).unwrap()["status"] =
            serde_json::json!({"phase": "Released"});
        let r = reconcile(&api, "node-a", &c, &scan(vec![entry("d0", "wwn-0")]), &[])
            .await
            .unwrap();
        assert_eq!(r.wipe_jobs.len(), 1, "{r}");
        assert!(api.delete(&name0, "uid-someone-else").await.is_err());
        assert!(srv.objs.lock().unwrap().contains_key(&name0));
        api.delete(&name0, &r.wipe_jobs[0].uid).await.unwrap();
        assert!(!srv.objs.lock().unwrap().contains_key(&name0));
        // Deleting what is gone is fine.
        api.delete(&name0, "uid-x").await.unwrap();
        let log = srv.log.lock().unwrap().clone();
        assert!(
            log.iter()
                .any(|l| l.starts_with("GET /api/v1/persistentvolumes?")
                    && l.contains("labelSelector")),
            "{log:?}"
        );
        assert!(log.iter().any(|l| l.starts_with("PATCH ")), "{log:?}");
        assert!(log.iter().any(|l| l.starts_with("DELETE ")), "{log:?}");
    });
}

/// The daemon's path: reads from the watched view, writes to the API server; the passes
/// list nothing.
#[test]
fn the_watch_based_controller_reconciles_without_listing_per_pass() {
    use crate::cluster::watch::Timings;
    use crate::testkit::fakeapi::FakeApi;
    multi_thread().block_on(async {
        let srv = FakeApi::start().await;
        srv.put(
            "nodes",
            serde_json::json!({"metadata":{"name":"node-a","labels":{"kubernetes.io/hostname":"node-a.example"}}}),
        );
        // Another node's PV: never in this node's view.
        let other = pv::build("node-b", &class(), &entry("d9", "wwn-9"));
        srv.put("persistentvolumes", serde_json::to_value(&other).unwrap());
        let metrics = crate::metrics::ClusterMetrics::default();
        let client =
            crate::cluster::client::client_from(srv.config(), &metrics.api_requests).unwrap();
        let view = Arc::new(PvView::default());
        let timings = Timings {
            timeout: Duration::from_secs(30),
            jitter_permille: 0,
            resync: Duration::from_secs(3600),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_millis(400),
        };
        let watch = tokio::spawn(WatchedPvApi::watch(
            client.clone(),
            "node-a".into(),
            view.clone(),
            timings,
        ));
        let api = WatchedPvApi::new(KubePvApi::new(client), view.clone());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let c = cfg();
        let pass = |entries: Vec<Entry>| {
            let (api, c) = (&api, &c);
            async move { reconcile(api, "node-a", c, &scan(entries), &[]).await.unwrap() }
        };
        let settle = |want: usize| {
            let view = view.clone();
            async move {
                while view.current().map(|v| v.len()) != Some(want) {
                    assert!(std::time::Instant::now() < deadline, "view never held {want}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        settle(0).await;
        let r = pass(vec![entry("d0", "wwn-0"), entry("d1", "wwn-1")]).await;
        assert_eq!(r.created.len(), 2, "{r}");
        settle(2).await;
        let name0 = pv::pv_name("node-a", "nvme", "wwn-0");
        let name1 = pv::pv_name("node-a", "nvme", "wwn-1");
        assert_eq!(
            srv.get("persistentvolumes", &name0).unwrap()["spec"]["nodeAffinity"]["required"]
                ["nodeSelectorTerms"][0]["matchExpressions"][0]["values"][0],
            "node-a.example"
        );
        // Again: nothing new, as before.
        let r = pass(vec![entry("d0", "wwn-0"), entry("d1", "wwn-1")]).await;
        assert_eq!((r.created.len(), r.present), (0, 2), "{r}");
        // d1 vanishes: marked through a patch, seen through the watch.
        let r = pass(vec![entry("d0", "wwn-0")]).await;
        assert_eq!(r.marked_missing, vec![name1.clone()], "{r}");
        while view
            .current()
            .unwrap()
            .iter()
            .all(|p| ann(p, ANN_MISSING).is_none())
        {
            assert!(std::time::Instant::now() < deadline, "patch not watched");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Released (as the API server's binder would set it) → a wipe job, from the view.
        let mut p0 = srv.get("persistentvolumes", &name0).unwrap();
        p0["status"] = serde_json::json!({"phase": "Released"});
        srv.put("persistentvolumes", p0);
        let mut jobs = vec![];
        while jobs.is_empty() {
            assert!(std::time::Instant::now() < deadline, "Released never seen");
            tokio::time::sleep(Duration::from_millis(20)).await;
            jobs = pass(vec![entry("d0", "wwn-0")]).await.wipe_jobs;
        }
        api.delete(&name0, &jobs[0].uid).await.unwrap();
        assert!(srv.get("persistentvolumes", &name0).is_none());
        watch.abort();
        // The passes listed nothing: one list (the watch's), one node GET.
        let counts = srv.counts();
        assert_eq!(counts.get("list persistentvolumes"), Some(&1), "{counts:?}");
        assert_eq!(counts.get("get nodes"), Some(&1), "{counts:?}");
        assert_eq!(counts.get("create persistentvolumes"), Some(&2), "{counts:?}");
        let watches = counts.get("watch persistentvolumes").copied().unwrap_or(0);
        assert_eq!(watches, 1, "{counts:?}");
        // And the client counted the same.
        assert_eq!(metrics.requests_with("list", "persistentvolumes"), 1);
    });
}
