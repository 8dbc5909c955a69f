//! A daemon in another mount namespace than the one that mounted (tier 2: root, real binds
//! and loop devices, a real daemon driven through the real front end).
//!
//! What a user checks: as a DaemonSet, each new pod of moor is a new mount namespace, where
//! the mounts its predecessor made (propagated to the host through kubelet's shared dir)
//! carry other mount ids. After such a restart, kubelet's unmount of every volume still
//! succeeds and leaves nothing mounted — and moor still refuses a mount it did not make.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use common::host::assert_failure;
use common::{Daemon, LoopDev, require_privileged_sandbox, s, sh, source};
use serde_json::json;

const NONE: Vec<PathBuf> = Vec::new();

/// A daemon whose every start is a new mount namespace, as a DaemonSet's pods are.
fn daemonset_daemon() -> Daemon {
    let mut d = Daemon::unstarted(&[]);
    // kubelet's dir and moor's run dir are shared mounts, as kubelet's dir and the
    // DaemonSet's `/run/moor` (a peer of the host's `/run`) are: what a pod mounts there
    // reaches here and the next pod.
    for dir in [d.kubelet_dir(), d.run_dir()] {
        std::fs::create_dir_all(&dir).unwrap();
        sh("mount", &["--bind", s(&dir), s(&dir)]);
        sh("mount", &["--make-shared", s(&dir)]);
    }
    d.own_mount_namespace = true;
    d.spawn();
    d
}

/// The mounts under the tree, without kubelet's own dir.
fn volume_mounts(d: &Daemon) -> Vec<PathBuf> {
    let (kubelet, run) = (d.kubelet_dir(), d.run_dir());
    d.mounts()
        .into_iter()
        .filter(|m| *m != kubelet && *m != run)
        .collect()
}

/// The propagation field of the mount at `dir` in this namespace's table.
fn propagation_of(dir: &std::path::Path) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    moor::host::mountinfo::parse(&table)
        .unwrap()
        .into_iter()
        .rfind(|m| m.mount_point == dir)
        .map(|m| m.optional)
        .unwrap_or_default()
}

/// Every test of a run shares one mount namespace and starts with the same set-up: that
/// set-up must leave a shared kubelet dir another test made on purpose shared, or that
/// test's daemon (in a namespace of its own) and the test stop seeing each other's mounts.
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn another_tests_set_up_leaves_a_shared_kubelet_dir_shared() {
    require_privileged_sandbox();
    let d = Daemon::unstarted(&[]);
    let dir = d.kubelet_dir();
    std::fs::create_dir_all(&dir).unwrap();
    sh("mount", &["--bind", s(&dir), s(&dir)]);
    sh("mount", &["--make-shared", s(&dir)]);
    let shared = || {
        propagation_of(&dir)
            .iter()
            .any(|o| o.starts_with("shared:"))
    };
    assert!(shared(), "{:?}", propagation_of(&dir));
    // What the next test to start does, in this same namespace.
    require_privileged_sandbox();
    assert!(
        shared(),
        "the set-up made the kubelet dir private: {:?}",
        propagation_of(&dir)
    );
    sh("umount", &[s(&dir)]);
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_new_pod_of_the_daemon_unmounts_what_the_last_one_mounted() {
    require_privileged_sandbox();
    let mut d = daemonset_daemon();
    let src = source(&d, "ssd1");
    std::fs::write(src.join("seed"), "directory volume").unwrap();
    let dev = LoopDev::new(64);
    d.mount("pod-a", "dir", json!({"path": s(&src)}))
        .assert_ok();
    d.mount("pod-b", "blk", json!({"path": dev.path_str()}))
        .assert_ok();
    d.mount("pod-c", "blk", json!({"path": dev.path_str()}))
        .assert_ok();
    // The mounts the daemon made in its namespace are here too.
    assert_eq!(volume_mounts(&d).len(), 5, "{:?}", volume_mounts(&d));
    std::fs::write(d.pod_dir("pod-b", "blk").join("data"), "block volume").unwrap();

    // A crash, then an upgrade: two new pods, two new namespaces.
    d.kill9();
    d.spawn();
    d.stop();
    d.spawn();
    assert_eq!(
        std::fs::read_to_string(d.pod_dir("pod-c", "blk").join("data")).unwrap(),
        "block volume"
    );
    d.unmount("pod-a", "dir").assert_ok();
    d.unmount("pod-b", "blk").assert_ok();
    d.unmount("pod-c", "blk").assert_ok();
    assert_eq!(volume_mounts(&d), NONE, "mounts left after the unmounts");
    assert_eq!(d.active_stage_records(), Vec::<serde_json::Value>::new());
    assert_eq!(
        std::fs::read_to_string(src.join("seed")).unwrap(),
        "directory volume"
    );
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_foreign_mount_stacked_while_moor_was_away_is_still_refused_in_the_new_namespace() {
    require_privileged_sandbox();
    let mut d = daemonset_daemon();
    let src = source(&d, "ssd1");
    d.mount("pod-a", "dir", json!({"path": s(&src)}))
        .assert_ok();
    let pod = d.pod_dir("pod-a", "dir");
    d.kill9();
    // While no moor runs, someone stacks a bind of the same filesystem on the pod dir.
    sh("mount", &["--bind", s(&src), s(&pod)]);
    d.spawn();
    // Two mounts at the pod dir and ids from another namespace: moor cannot tell its own
    // apart, so it unmounts neither.
    assert_failure(&d.unmount("pod-a", "dir"), "not_owned", &[]);
    assert_eq!(volume_mounts(&d).iter().filter(|m| **m == pod).count(), 2);
    // The stage and the pod dir are peers (a bind of a shared mount): the foreign bind
    // stands on both, and both stay.
    let stage = d.stage_path(s(&src));
    assert_eq!(volume_mounts(&d).iter().filter(|m| **m == stage).count(), 2);
    assert!(
        d.log_text().contains("mounts are stacked there"),
        "the ambiguity is reported"
    );
    // The operator removes the foreign bind and restarts moor, as the report says: the ids
    // are learnt again and kubelet's unmount goes through.
    sh("umount", &[s(&pod)]);
    d.stop();
    d.spawn();
    d.unmount("pod-a", "dir").assert_ok();
    assert_eq!(volume_mounts(&d), NONE);
}
