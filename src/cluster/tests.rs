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
    api.cluster(events, fast())
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

/// A fake API server holding `web-0` (on this node, with a bound claim `data-claim`) and
/// `pod_b` on node-b.
async fn with_pods(pod_b: &str) -> Arc<FakeApi> {
    let api = FakeApi::start().await;
    api.put("pods", pod("team-a", "web-0", "node-a"));
    api.put("pods", pod("team-b", pod_b, "node-b"));
    api.put(
        "persistentvolumeclaims",
        serde_json::json!({"metadata":{"namespace":"team-a","name":"data-claim"},"spec":{"volumeName":"pv-data"}}),
    );
    api
}

#[test]
fn events_land_on_the_pod_the_pv_and_the_node_with_reason_type_and_message() {
    rt().block_on(async {
        let api = with_pods("other-node-pod").await;
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
        // The server holds an Event before the client has counted its answer: wait for both.
        until("5 events sent", || {
            events_of(&api).len() >= 5 && metrics.events_with("sent") >= 5
        })
        .await;
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
        // The server shows count 20 before the client has counted the last answer: wait
        // for the client's own tally too.
        until("count 20", || {
            events_of(&api).first().is_some_and(|e| e["count"] == 20)
                && metrics.events_with("sent") + metrics.events_with("aggregated") >= 20
                && metrics.requests_with("patch", "events") >= 19
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
        let cfg = client::Settings {
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
        let off = client::Settings {
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

#[test]
fn the_pod_cache_says_gone_only_when_the_api_server_is_current_and_lacks_the_uid() {
    rt().block_on(async {
        let api = with_pods("db-0").await;
        // Before the first list nothing is known, not even "gone".
        api.set_down(true);
        let (c, pods, _m) = start(&api, true).await;
        until("a failed list", || api.counts().contains_key("list pods")).await;
        assert_eq!(c.pods.pod("uid-nothing"), PodState::Unknown);
        assert_eq!(c.pods.pod("uid-web-0"), PodState::Unknown);
        api.set_down(false);
        until("pod cache", || pods.is_current()).await;
        let PodState::Present(p) = c.pods.pod("uid-web-0") else {
            panic!("web-0 is on this node")
        };
        assert_eq!((p.namespace.as_str(), p.name.as_str()), ("team-a", "web-0"));
        assert!(p.controlled);
        assert_eq!(p.pvs.get("data").map(String::as_str), Some("pv-data"));
        assert!(p.mounts.contains(&ContainerMount {
            container: "app".into(),
            volume: "data".into(),
            propagation: Propagation::HostToContainer,
        }));
        assert!(p.mounts.contains(&ContainerMount {
            container: "init".into(),
            volume: "data".into(),
            propagation: Propagation::None,
        }));
        assert_eq!(p.mounts.len(), 3);
        assert_eq!(
            pods.claim_of("uid-web-0", "pv-data"),
            Some(("team-a".into(), "data-claim".into()))
        );
        // Another node's pod is not watched: from here it is gone.
        assert_eq!(c.pods.pod("uid-db-0"), PodState::Gone);
        // A new pod arrives through the watch; a deleted one leaves.
        api.put("pods", pod("team-a", "web-1", "node-a"));
        until("web-1", || {
            matches!(c.pods.pod("uid-web-1"), PodState::Present(_))
        })
        .await;
        api.delete("pods", "team-a/web-0");
        until("web-0 gone", || c.pods.pod("uid-web-0") == PodState::Gone).await;
        // One GET per claim, not per pod event.
        let claims = api.counts().get("get persistentvolumeclaims").copied();
        assert_eq!(claims, Some(1), "{:?}", api.counts());
        // The API server goes away: nothing is gone any more, everything unknown.
        api.set_down(true);
        until("unknown while down", || {
            c.pods.pod("uid-web-0") == PodState::Unknown
        })
        .await;
        assert_eq!(c.pods.pod("uid-web-1"), PodState::Unknown);
        api.put("pods", pod("team-a", "web-2", "node-a"));
        api.delete("pods", "team-a/web-1");
        api.set_down(false);
        until("gone after it is back", || {
            c.pods.pod("uid-web-1") == PodState::Gone
        })
        .await;
        // No pod at all on "this node" is a watch of the wrong node (moor's node name is not
        // kubelet's), never a reason to call every pod gone.
        api.delete("pods", "team-a/web-2");
        until("web-2 left the view", || {
            !matches!(c.pods.pod("uid-web-2"), PodState::Present(_))
        })
        .await;
        assert_eq!(c.pods.pod("uid-web-2"), PodState::Unknown);
        assert_eq!(c.pods.pod("uid-web-1"), PodState::Unknown);
    });
}

#[test]
fn evictions_answer_evicted_blocked_gone_or_failed() {
    let rt = rt();
    let (api, c) = rt.block_on(async {
        let api = FakeApi::start().await;
        for n in ["ok", "pdb", "forbidden"] {
            api.put("pods", pod("team-a", n, "node-a"));
        }
        api.answer_eviction("team-a/pdb", 429);
        api.answer_eviction("team-a/forbidden", 403);
        let (c, _pods, _m) = start(&api, true).await;
        (api, c)
    });
    // Blocking calls, from a thread that is not an async worker (as heal calls them).
    let pods = c.pods.clone();
    let r = std::thread::spawn(move || {
        [
            pods.evict("team-a", "ok", "uid-ok"),
            pods.evict("team-a", "pdb", "uid-pdb"),
            pods.evict("team-a", "gone", "uid-gone"),
            pods.evict("team-a", "forbidden", "uid-forbidden"),
            // The UID precondition: another pod now has that name.
            pods.evict("team-a", "pdb", "uid-older-pdb"),
        ]
    })
    .join()
    .unwrap();
    assert_eq!(r[0], Eviction::Evicted);
    assert!(
        matches!(&r[1], Eviction::Blocked(m) if m.contains("disruption budget")),
        "{:?}",
        r[1]
    );
    assert_eq!(r[2], Eviction::Gone);
    assert!(
        matches!(&r[3], Eviction::Failed(m) if m.contains("403")),
        "{:?}",
        r[3]
    );
    assert_eq!(r[4], Eviction::Gone);
    assert!(api.get("pods", "team-a/ok").is_none());
    assert!(api.get("pods", "team-a/pdb").is_some());
    let bodies: Vec<serde_json::Value> = api
        .seen()
        .iter()
        .filter(|s| s.path.ends_with("/eviction"))
        .map(|s| serde_json::from_str(&s.body).unwrap())
        .collect();
    assert_eq!(bodies.len(), 5);
    assert_eq!(bodies[0]["kind"], "Eviction");
    assert_eq!(bodies[0]["apiVersion"], "policy/v1");
    assert_eq!(bodies[0]["deleteOptions"]["preconditions"]["uid"], "uid-ok");
}

#[test]
fn a_pv_annotation_is_read_once_and_reused() {
    let rt = rt();
    let (api, c) = rt.block_on(async {
        let api = FakeApi::start().await;
        api.put(
            "persistentvolumes",
            serde_json::json!({"metadata":{"name":"pv-g","annotations":{"moor.io/evict-pods":"true"}},"spec":{"flexVolume":{"driver":"moor/glusterfs"}}}),
        );
        let (c, _pods, _m) = start(&api, true).await;
        (api, c)
    });
    let pods = c.pods.clone();
    let r = std::thread::spawn(move || {
        (
            pods.pv_annotation("pv-g", "moor.io/evict-pods"),
            pods.pv_annotation("pv-g", "moor.io/other"),
            pods.pv_annotation("pv-none", "moor.io/evict-pods"),
            pods.pv_annotation("pv-none", "moor.io/evict-pods"),
        )
    })
    .join()
    .unwrap();
    assert_eq!(r, (Some("true".into()), None, None, None));
    let gets = api.counts().get("get persistentvolumes").copied();
    assert_eq!(gets, Some(2), "{:?}", api.counts());
}

/// Requests per resource counted by the client during `f`.
fn window(metrics: &ClusterMetrics) -> impl Fn(&str, &str) -> u64 + '_ {
    move |verb, res| metrics.requests_with(verb, res)
}

#[test]
#[ignore = "tier 2: runs the watches for ~15 s of wall time"]
fn api_requests_per_node_per_hour() {
    rt().block_on(async {
        let api = FakeApi::start().await;
        api.put("pods", pod("team-a", "web-0", "node-a"));
        api.put(
            "persistentvolumeclaims",
            serde_json::json!({"metadata":{"namespace":"team-a","name":"data-claim"},"spec":{"volumeName":"pv-data"}}),
        );
        // A local PV of this node: the labels its watch selects on.
        let labels: serde_json::Map<String, serde_json::Value> =
            crate::local::pv::node_selector("node-a")
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.into()))
                .collect();
        let local = serde_json::json!({"metadata":{"name":"local-pv-0","labels":labels},"spec":{"flexVolume":{"driver":"moor/local"}}});
        api.put("persistentvolumes", local);
        // Short timings: the same loop, in seconds instead of hours.
        let t = watch::Timings {
            timeout: Duration::from_secs(1),
            jitter_permille: 0,
            resync: Duration::from_secs(4),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_millis(800),
        };
        let metrics = ClusterMetrics::default();
        let client = client::client_from(api.config(), &metrics.api_requests).unwrap();
        let (_c, pods) = live::KubeCluster::start(
            client.clone(),
            live::Options {
                node: "node-a".into(),
                events: true,
                tuning: events::Tuning::default(),
                timings: t,
            },
            metrics.clone(),
        );
        let view = Arc::new(crate::local::kube::PvView::default());
        tokio::spawn(crate::local::kube::WatchedPvApi::watch(
            client,
            "node-a".into(),
            view.clone(),
            t,
        ));
        until("both watches", || pods.is_current() && view.current().is_some()).await;
        let count = window(&metrics);
        let resources = ["pods", "persistentvolumes"];
        // Steady state: nothing changes. Measured over exactly two resync periods per
        // resource: from just after one relist to just after the second one after it.
        let total_before = api.seen().len();
        let prod = watch::Timings::PRODUCTION;
        let watches_per_period_test = (t.resync.as_secs_f64() / t.timeout.as_secs_f64()).ceil();
        let watches_per_period_prod =
            (prod.resync.as_secs_f64() / prod.shortest_watch().as_secs_f64()).ceil();
        let mut per_hour = 0.0;
        let mut steady_lines = Vec::new();
        let mut before = Vec::new();
        let mut after = Vec::new();
        for r in resources {
            let l0 = count("list", r);
            until("a relist", || count("list", r) > l0).await;
            let (l1, w1) = (count("list", r), count("watch", r));
            until("two more relists", || count("list", r) >= l1 + 2).await;
            let (l2, w2) = (count("list", r), count("watch", r));
            before.push((l1, w1));
            after.push((l2, w2));
            let lists = (l2 - l1) as f64 / 2.0;
            // The watch that follows the second relist may or may not have started.
            let watches = (w2 - w1) as f64 / 2.0;
            assert!(
                watches <= watches_per_period_test + 0.5,
                "{r}: {watches} watches per 4 s resync period of 1 s watches"
            );
            let h = (lists + watches * watches_per_period_prod / watches_per_period_test)
                * 3600.0
                / prod.resync.as_secs_f64();
            per_hour += h;
            steady_lines.push(format!(
                "{r}: per resync period {lists} list + {watches} watches (test: 4 s resync, 1 s watches) → at production timings {lists} list + {:.1} watches per {} h → {h:.2} per hour",
                watches * watches_per_period_prod / watches_per_period_test,
                prod.resync.as_secs() / 3600
            ));
        }
        // Nothing but the watches and their relists in steady state (no Events, no GETs).
        assert!(
            !api.seen()[total_before..]
                .iter()
                .any(|s| !s.verb_resource.starts_with("list ")
                    && !s.verb_resource.starts_with("watch ")),
            "only watches and relists in steady state: {:?}",
            api.counts()
        );
        // An API-server restart: every watch dropped, the history compacted (410 once).
        let snapshot = || {
            resources
                .iter()
                .map(|r| (count("list", r), count("watch", r)))
                .collect::<Vec<_>>()
        };
        let before = snapshot();
        let mark = api.seen().len();
        api.restart(true);
        tokio::time::sleep(Duration::from_millis(900)).await;
        until("both watches again", || pods.is_current() && view.current().is_some()).await;
        let after_restart = snapshot();
        let restart_total = api.seen().len() - mark;
        let restart: Vec<String> = resources
            .iter()
            .enumerate()
            .map(|(i, r)| {
                format!(
                    "{r}: {} list(s), {} watch(es)",
                    after_restart[i].0 - before[i].0,
                    after_restart[i].1 - before[i].1
                )
            })
            .collect();
        for (i, r) in resources.iter().enumerate() {
            assert!(
                after_restart[i].0 - before[i].0 <= 2,
                "{r}: relisted more than once per restart"
            );
        }
        // Down for 3 s: backoff, not a spin.
        let mark_down = api.seen().len();
        api.set_down(true);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let down_total = api.seen().len() - mark_down;
        api.set_down(false);
        until("back after the outage", || pods.is_current() && view.current().is_some()).await;
        assert!(
            down_total <= 2 * 8,
            "{down_total} requests in a 3 s outage with a 100 ms … 800 ms backoff"
        );
        println!("API requests per node per hour (fake API server, real client):");
        for l in &steady_lines {
            println!("  steady state  {l}");
        }
        println!(
            "  steady state  total {per_hour:.2} requests per node per hour at production timings (watch {} s ±{} %, resync {} s; target ≤ 10)",
            prod.timeout.as_secs(),
            prod.jitter_permille / 10,
            prod.resync.as_secs()
        );
        println!(
            "  after a restart with 410 Gone  {restart_total} requests to recover ({})",
            restart.join("; ")
        );
        println!(
            "  3 s outage  {down_total} requests (backoff 100 ms … 800 ms; production 1 s … 300 s)"
        );
        assert!(
            per_hour <= 10.0,
            "{per_hour:.2} requests per node per hour in steady state"
        );
    });
}
