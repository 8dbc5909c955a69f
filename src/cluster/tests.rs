//! The real client against the fake API server: Events on the right objects, aggregated
//! and throttled, no secret in any request; the pod cache; evictions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::metrics::ClusterMetrics;
use crate::testkit::fakeapi::FakeApi;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn pod(ns: &str, name: &str, node: &str) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"namespace": ns, "name": name, "uid": format!("uid-{name}"),
            "ownerReferences": [{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"rs","uid":"rs-1","controller":true}]},
        "spec": {"nodeName": node,
            "containers": [{"name": "app", "image": "x",
                "volumeMounts": [{"name": "data", "mountPath": "/data", "mountPropagation": "HostToContainer"},
                                 {"name": "scratch", "mountPath": "/s"}]}],
            "initContainers": [{"name": "init", "image": "x", "volumeMounts": [{"name": "data", "mountPath": "/d"}]}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data-claim"}},
                        {"name": "scratch", "emptyDir": {}}]}
    })
}

fn fast() -> watch::Timings {
    watch::Timings {
        timeout: Duration::from_secs(2),
        jitter_permille: 0,
        resync: Duration::from_secs(3600),
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_millis(400),
    }
}

async fn start(api: &FakeApi, events: bool) -> (Cluster, Arc<pods::PodCache>, ClusterMetrics) {
    let metrics = ClusterMetrics::default();
    let client = client::client_from(api.config(), &metrics.api_requests).unwrap();
    let (c, pods) = live::KubeCluster::start(
        client,
        live::Options {
            node: "node-a".into(),
            events,
            tuning: events::Tuning::default(),
            timings: fast(),
        },
        metrics.clone(),
    );
    (c, pods, metrics)
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn events_of(api: &FakeApi) -> Vec<serde_json::Value> {
    api.all("events")
}

#[test]
fn events_land_on_the_pod_the_pv_and_the_node_with_reason_type_and_message() {
    rt().block_on(async {
        let api = FakeApi::start().await;
        api.put("pods", pod("team-a", "web-0", "node-a"));
        api.put("pods", pod("team-b", "other-node-pod", "node-b"));
        api.put(
            "persistentvolumes",
            serde_json::json!({"metadata":{"name":"pv-moor","uid":"pv-uid-1"},"spec":{"flexVolume":{"driver":"moor/nfs"}}}),
        );
        api.put(
            "persistentvolumes",
            serde_json::json!({"metadata":{"name":"pv-csi","uid":"pv-uid-2"},"spec":{"csi":{"driver":"nfs.csi.moor.io","volumeHandle":"h"}}}),
        );
        api.put(
            "persistentvolumes",
            serde_json::json!({"metadata":{"name":"pv-foreign"},"spec":{"csi":{"driver":"ebs.csi.aws.com","volumeHandle":"h"}}}),
        );
        let (c, pods, metrics) = start(&api, true).await;
        assert!(c.connected);
        until("pod cache", || pods.is_current()).await;
        c.notify.notify(
            Notice::new(NoticeReason::ShareDead, "nfs share 10.0.0.1:/export is dead")
                .volume("nfs-key", "nfs")
                .pods(["uid-web-0".to_owned()])
                .pv("pv-moor"),
        );
        c.notify.notify(
            Notice::new(NoticeReason::RecordSetAside, "journal record x set aside"),
        );
        c.notify.notify(
            Notice::new(NoticeReason::ShareHealed, "healed")
                .pods(["uid-unknown".to_owned()])
                .pv("pv-foreign"),
        );
        c.notify
            .notify(Notice::new(NoticeReason::ShareHealFailed, "csi heal failed").pv("pv-csi"));
        until("5 events", || events_of(&api).len() >= 5).await;
        let evs = events_of(&api);
        let on = |kind: &str, name: &str, reason: &str| {
            evs.iter()
                .filter(|e| {
                    e["involvedObject"]["kind"] == kind
                        && e["involvedObject"]["name"] == name
                        && e["reason"] == reason
                })
                .cloned()
                .collect::<Vec<_>>()
        };
        let p = on("Pod", "web-0", "ShareDead");
        assert_eq!(p.len(), 1, "{evs:#?}");
        assert_eq!(p[0]["metadata"]["namespace"], "team-a");
        assert_eq!(p[0]["involvedObject"]["uid"], "uid-web-0");
        assert_eq!(p[0]["type"], "Warning");
        assert_eq!(p[0]["message"], "nfs share 10.0.0.1:/export is dead");
        assert_eq!(p[0]["source"]["component"], "moor");
        assert_eq!(p[0]["source"]["host"], "node-a");
        assert_eq!(p[0]["count"], 1);
        let v = on("PersistentVolume", "pv-moor", "ShareDead");
        assert_eq!(v.len(), 1, "{evs:#?}");
        assert_eq!(v[0]["metadata"]["namespace"], "default");
        assert_eq!(v[0]["involvedObject"]["uid"], "pv-uid-1");
        assert_eq!(on("PersistentVolume", "pv-csi", "ShareHealFailed").len(), 1);
        assert_eq!(on("Node", "node-a", "RecordSetAside").len(), 1);
        // An unknown pod → the node; a PV moor does not serve gets none.
        let h = on("Node", "node-a", "ShareHealed");
        assert_eq!(h.len(), 1, "{evs:#?}");
        assert_eq!(h[0]["type"], "Normal");
        assert!(on("PersistentVolume", "pv-foreign", "ShareHealed").is_empty());
        assert_eq!(evs.len(), 5, "{evs:#?}");
        assert_eq!(metrics.events_with("sent"), 5);
        // Every notice is kept for `moor status` and counted.
        assert_eq!(c.notify.recent().len(), 4);
        assert_eq!(metrics.notices_with("share_dead"), 1);
    });
}

#[test]
fn the_same_notice_twenty_times_is_one_event_patched_to_count_twenty() {
    rt().block_on(async {
        let api = FakeApi::start().await;
        api.put("pods", pod("team-a", "web-0", "node-a"));
        let (c, pods, metrics) = start(&api, true).await;
        until("pod cache", || pods.is_current()).await;
        api.clear_seen();
        let n = Notice::new(NoticeReason::ShareDead, "glusterfs volume gv0 is dead")
            .volume("k", "glusterfs")
            .pods(["uid-web-0".to_owned()]);
        for _ in 0..20 {
            c.notify.notify(n.clone());
        }
        until("count 20", || {
            events_of(&api).first().is_some_and(|e| e["count"] == 20)
        })
        .await;
        assert_eq!(events_of(&api).len(), 1);
        let counts = api.counts();
        assert_eq!(counts.get("create events"), Some(&1), "{counts:?}");
        assert_eq!(counts.get("patch events"), Some(&19), "{counts:?}");
        assert_eq!(metrics.events_with("sent"), 1);
        assert_eq!(metrics.events_with("aggregated"), 19);
        assert!(events_of(&api)[0]["lastTimestamp"].is_string());
        // The client counted what the server saw.
        assert_eq!(metrics.requests_with("patch", "events"), 19);
        assert_eq!(c.notify.recent()[0].count, 20);
    });
}

#[test]
fn a_flapping_object_is_throttled_after_its_burst_and_counted() {
    rt().block_on(async {
        let api = FakeApi::start().await;
        let (c, _pods, metrics) = start(&api, true).await;
        for i in 0..40 {
            c.notify.notify(Notice::new(
                NoticeReason::ShareDead,
                format!("share {i} is dead"),
            ));
        }
        until("40 outcomes", || {
            metrics.events_with("sent")
                + metrics.events_with("aggregated")
                + metrics.events_with("throttled")
                >= 40
        })
        .await;
        assert_eq!(metrics.events_with("throttled"), 15);
        let counts = api.counts();
        let sent = counts.get("create events").copied().unwrap_or(0)
            + counts.get("patch events").copied().unwrap_or(0);
        assert_eq!(sent, 25, "{counts:?}");
        // 10 distinct messages, then one combined Event patched.
        let evs = events_of(&api);
        assert_eq!(evs.len(), 11, "{evs:#?}");
        let combined: Vec<_> = evs
            .iter()
            .filter(|e| e["message"].as_str().unwrap().starts_with(events::COMBINED))
            .collect();
        assert_eq!(combined.len(), 1);
        assert_eq!(combined[0]["count"], 15);
    });
}

#[test]
fn without_events_nothing_is_sent_but_the_notice_is_kept() {
    rt().block_on(async {
        let api = FakeApi::start().await;
        let (c, pods, _m) = start(&api, false).await;
        until("pod cache", || pods.is_current()).await;
        c.notify
            .notify(Notice::new(NoticeReason::FormatRefused, "not formatted"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(events_of(&api).is_empty());
        assert!(
            !api.seen().iter().any(|s| s.path.contains("/events")),
            "{:?}",
            api.seen()
        );
        assert_eq!(c.notify.recent().len(), 1);
    });
}

#[test]
fn without_credentials_nothing_is_sent_and_the_notice_is_kept_and_counted() {
    rt().block_on(async {
        let metrics = ClusterMetrics::default();
        let cfg = crate::config::KubernetesConfig {
            enabled: true,
            kubeconfig: Some("/nonexistent/moor-kubeconfig".into()),
            events: true,
        };
        let s = Cluster::start(&cfg, "node-a", metrics.clone()).await;
        assert!(!s.cluster.connected && s.client.is_none());
        s.cluster.notify.notify(Notice::new(
            NoticeReason::WrongNode,
            "local volume x belongs to node b",
        ));
        assert_eq!(s.cluster.notify.recent().len(), 1);
        assert_eq!(s.cluster.pods.pod("uid-x"), PodState::Unknown);
        assert_eq!(metrics.notices_with("wrong_node"), 1);
        let sent: u64 = ["sent", "aggregated", "failed"]
            .iter()
            .map(|r| metrics.events_with(r))
            .sum();
        assert_eq!(sent, 0);
        let off = crate::config::KubernetesConfig {
            enabled: false,
            ..cfg
        };
        assert!(
            !Cluster::start(&off, "node-a", metrics)
                .await
                .cluster
                .connected
        );
    });
}
