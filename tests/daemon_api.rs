//! The daemon as an operator and kubelet meet it: the socket's protection, one daemon per
//! node, concurrency, metrics and health endpoints, config errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{Daemon, http_get, mounts_under, require_privileged_sandbox};
use serde_json::json;

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn socket_is_root_only_and_checks_the_peer() {
    require_privileged_sandbox();
    let d = Daemon::start();
    let mode = std::fs::metadata(d.socket()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode");
    let dir_mode = std::fs::metadata(d.run_dir()).unwrap().permissions().mode();
    assert_eq!(dir_mode & 0o777, 0o700, "run dir mode");
    // Even if someone loosens the modes, a non-root peer is refused by SO_PEERCRED.
    std::fs::set_permissions(d.run_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(d.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let dir = d.pod_dir("p", "v");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(d.driver_link())
        .args(["unmount", dir.to_str().unwrap()])
        .env("MOOR_SOCKET", d.socket())
        .output()
        .expect("setpriv (util-linux)");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "Failure");
    assert!(v["message"].as_str().unwrap().contains("only root"), "{v}");
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_second_daemon_on_the_same_node_refuses_to_start() {
    require_privileged_sandbox();
    let d = Daemon::start();
    // Without the allow-list: it names dirs under the tree, where this daemon's socket is.
    let out = d
        .command()
        .env_remove("MOOR_CONFIG")
        .arg("--socket")
        .arg(d.root.path().join("other.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another moor daemon is running"));
    // The first one still serves.
    assert!(d.flex(&["init"]).ok());
    assert!(d.unmount("p", "v").ok());
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn concurrent_calls_on_one_volume_are_serialised_and_all_succeed() {
    require_privileged_sandbox();
    let d = Daemon::start();
    let src = d.root.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let pods: Vec<String> = (0..8).map(|i| format!("pod{i}")).collect();
    std::thread::scope(|s| {
        for p in &pods {
            let d = &d;
            let src = &src;
            s.spawn(move || d.mount(p, "v", json!({"path": src})).assert_ok());
        }
    });
    assert_eq!(
        mounts_under(&d.kubelet_dir()).len(),
        9,
        "one stage + 8 binds"
    );
    // kubelet was seen running two unmounts of one volume in the same millisecond.
    std::thread::scope(|s| {
        for p in &pods {
            let d = &d;
            s.spawn(move || d.unmount(p, "v").assert_ok());
        }
    });
    assert!(mounts_under(&d.kubelet_dir()).is_empty());
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn metrics_and_health_endpoints() {
    require_privileged_sandbox();
    let (d, port) = Daemon::start_with_metrics();
    assert!(http_get(port, "/healthz").contains("200 OK"));
    let ready = http_get(port, "/readyz");
    assert!(ready.contains("ready"), "{ready}");
    // Where moor runs, said where an operator looks (no host-mount-namespace configured:
    // the host's own namespace, whatever the test sandbox's mount namespace is).
    assert!(ready.contains("placement: host"), "{ready}");
    let src = d.root.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    d.mount(
        "pod1",
        "pv-a",
        json!({"path": src, "kubernetes.io/pod.namespace": "team-a"}),
    )
    .assert_ok();
    let bad = d.mount("pod2", "pv-b", json!({"path": src, "node": "elsewhere"}));
    assert!(
        bad.message().starts_with("wrong_node:"),
        "{}",
        bad.message()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        let t = http_get(port, "/metrics");
        if t.contains("moor_volume_stats_capacity_bytes{") || std::time::Instant::now() > deadline {
            break t;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    for want in [
        r#"moor_operations_total{driver="local",op="mount"} 2"#,
        r#"moor_operation_errors_total{driver="local",op="mount",reason="wrong_node"} 1"#,
        r#"moor_operation_duration_seconds_count{driver="local",op="mount"} 2"#,
        // No pod log directory for pod1: the namespace its options claim is not shown.
        r#"moor_volume_stats_capacity_bytes{namespace="",persistentvolumeclaim="",persistentvolume="",volume="pv-a",volume_key="#,
        r#"moor_volume_stats_inodes_used{namespace="",persistentvolumeclaim="",persistentvolume="",volume="pv-a",volume_key="#,
        "moor_published_volumes 1",
        r#"moor_placement_info{placement="host",fuse_outlives_moor="#,
        // Present at 0 before the first one, so increase() over it sees that first one.
        r#"moor_notices_total{reason="orphan_not_cleaned"} 0"#,
    ] {
        assert!(text.contains(want), "missing {want} in:\n{text}");
    }
    // The last start-up reconstruction: how long it took, and when it ended (this start).
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    let took = value("moor_reconstruction_duration_seconds");
    assert!((0.0..60.0).contains(&took), "reconstruction took {took} s");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let ended = value("moor_reconstruction_finished_time_seconds");
    assert!(
        (now - 120.0..=now).contains(&ended),
        "reconstruction ended at {ended}, now is {now}"
    );
    d.unmount("pod1", "pv-a").assert_ok();
}

#[test]
fn a_bad_config_is_refused_with_the_key_named() {
    let t = tempfile::tempdir().unwrap();
    let cfg = t.path().join("config.yaml");
    std::fs::write(
        &cfg,
        "kubelet-dir: /var/lib/kubelet\nmetrics-adr: 127.0.0.1:1\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_moor"))
        .args(["daemon", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("metrics-adr"), "{err}");
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_hung_operation_is_answered_at_its_deadline_and_keeps_its_volume_locked() {
    require_privileged_sandbox();
    let mut d = Daemon::start();
    d.stop();
    let marker = d.pause_at("publish:intent").reached;
    d.extra_args = vec!["--operation-timeout-seconds".into(), "1".into()];
    d.spawn();
    let src = d.root.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let started = std::time::Instant::now();
    let r = d.mount("pod1", "v", json!({"path": src}));
    assert!(
        !r.ok() && r.message().contains("did not finish within"),
        "{}",
        r.message()
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert!(marker.exists(), "the operation is still running, paused");
    // The same volume waits for the lock the paused operation still holds, and gives up at
    // its own deadline without running: no second publish record, no bind.
    let r = d.mount("pod2", "v", json!({"path": src}));
    assert!(
        !r.ok() && r.message().contains("did not finish within"),
        "{}",
        r.message()
    );
    let records = std::fs::read_dir(d.run_dir().join("publish"))
        .unwrap()
        .count();
    assert_eq!(records, 1, "only the paused publish has a record");
    assert!(mounts_under(&d.kubelet_dir().join("pods")).is_empty());
    // Other requests are still served while that thread is stuck.
    assert!(d.unmount("pod3", "w").ok());
    assert!(d.flex(&["init"]).ok());
    d.kill9();
}
