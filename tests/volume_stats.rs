//! Per-volume statistics on `/metrics` (tier 2: root, loop devices, a real daemon driven
//! through the real FlexVolume front end, `/metrics` scraped over HTTP).
//!
//! What a user checks: every volume has its own series, whatever the pods named it, with
//! that volume's capacity; the namespace shown is the pod's real one (kubelet's pod log
//! directory), never what a pod wrote into its volume options.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::{Daemon, LoopDev, http_get, require_privileged_sandbox};
use serde_json::json;

/// `moor_volume_stats_capacity_bytes` series: label text → value.
fn capacity_series(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("moor_volume_stats_capacity_bytes{"))
        .map(|l| {
            let (labels, value) = l.rsplit_once("} ").unwrap();
            (labels.to_owned(), value.trim().parse().unwrap())
        })
        .collect()
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn volumes_named_alike_get_a_series_each_and_a_forged_namespace_is_not_shown() {
    require_privileged_sandbox();
    let (d, port) = Daemon::start_with_metrics();
    // What kubelet creates for each pod, whatever the pod's spec says.
    for dir in [
        "team-a_web-0_pod-a",
        "team-a_web-1_pod-b",
        "team-b_intruder_pod-c",
    ] {
        std::fs::create_dir_all(d.pod_log_dir().join(dir)).unwrap();
    }
    let devs = [LoopDev::new(64), LoopDev::new(96), LoopDev::new(128)];
    // Three pods, each with a volume named `vol` on its own disk: two in one namespace, the
    // third claiming kube-system in its options (kubelet lets an inline volume's author
    // override kubernetes.io/pod.namespace).
    let pods = [
        ("pod-a", "team-a", &devs[0]),
        ("pod-b", "team-a", &devs[1]),
        ("pod-c", "kube-system", &devs[2]),
    ];
    for (pod, claimed, dev) in pods {
        d.mount(
            pod,
            "vol",
            json!({"path": dev.path_str(), "kubernetes.io/pod.namespace": claimed}),
        )
        .assert_ok();
    }
    let capacity = |pod: &str| {
        let s = nix::sys::statvfs::statvfs(&d.pod_dir(pod, "vol")).unwrap();
        s.blocks() * s.fragment_size()
    };
    let want: Vec<u64> = pods.iter().map(|(p, _, _)| capacity(p)).collect();
    assert!(want[0] < want[1] && want[1] < want[2], "{want:?}");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let series = loop {
        let s = capacity_series(&http_get(port, "/metrics"));
        if s.len() >= 3 || std::time::Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(series.len(), 3, "one series per volume: {series:#?}");
    for labels in series.keys() {
        assert!(
            !labels.contains("kube-system"),
            "a forged namespace is shown: {labels}"
        );
        assert!(labels.contains(r#"volume="vol""#), "{labels}");
        assert!(labels.contains(r#"driver="local""#), "{labels}");
    }
    let mut by_capacity: Vec<(&u64, &String)> = series.iter().map(|(l, v)| (v, l)).collect();
    by_capacity.sort();
    let got: Vec<u64> = by_capacity.iter().map(|(v, _)| **v).collect();
    assert_eq!(got, want, "each series has its own volume's capacity");
    for ((_, labels), ns) in by_capacity.iter().zip(["team-a", "team-a", "team-b"]) {
        assert!(
            labels.starts_with(&format!(r#"namespace="{ns}""#)),
            "want namespace {ns}: {labels}"
        );
    }
    for (pod, _, _) in pods {
        d.unmount(pod, "vol").assert_ok();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !capacity_series(&http_get(port, "/metrics")).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "series of unmounted volumes stay"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
