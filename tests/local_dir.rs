//! Driver `moor~local/local` with a directory (tier 2: root, real bind mounts, a real daemon
//! driven through the real FlexVolume front end).
//!
//! What a user checks: the directory's files appear in the pod and the pod's writes land in
//! the directory; read-only pods cannot write; the data is still there after unmount (moor
//! never deletes through a mount); paths kubelet or a PV hands over are validated, so a
//! symlinked pod directory or a `..` cannot lead a mount — or an unmount — outside the kubelet
//! directory; mounts moor did not make are neither covered nor removed; every bad request is
//! one JSON line with a reason.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::host::{assert_failure, mount_entries_at};
use common::{
    Daemon, is_mounted, mounts_under, require_privileged_sandbox, s, sh, source, write_errno,
};
use serde_json::json;

const NONE: Vec<PathBuf> = Vec::new();

/// A tmpfs the test mounts itself (a mount moor did not make), with a file in it.
fn foreign_mount(at: &Path) {
    std::fs::create_dir_all(at).unwrap();
    sh("mount", &["-t", "tmpfs", "-o", "size=1m", "foreign", s(at)]);
    std::fs::write(at.join("foreign-file"), "not moor's").unwrap();
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_directory_is_bind_mounted_and_kept_after_unmount() {
    require_privileged_sandbox();
    let d = Daemon::start();
    let src = source(&d, "ssd1");
    d.mount("pod-a", "vol", json!({"path": s(&src)}))
        .assert_ok();
    let pod = d.pod_dir("pod-a", "vol");
    assert_eq!(
        std::fs::read_to_string(pod.join("existing")).unwrap(),
        "already here"
    );
    std::fs::write(pod.join("from-pod"), "written in the pod").unwrap();
    assert_eq!(
        std::fs::read_to_string(src.join("from-pod")).unwrap(),
        "written in the pod"
    );
    let stage = d.stage_path(s(&src));
    assert!(is_mounted(&stage), "not staged at {}", stage.display());

    d.unmount("pod-a", "vol").assert_ok();
    assert_eq!(d.mounts(), NONE);
    assert!(!stage.exists(), "stage directory left behind");
    assert!(!pod.exists(), "pod directory left behind");
    // Nothing deleted through the mount.
    assert_eq!(
        std::fs::read_to_string(src.join("existing")).unwrap(),
        "already here"
    );
    assert_eq!(
        std::fs::read_to_string(src.join("from-pod")).unwrap(),
        "written in the pod"
    );
    assert_eq!(d.stage_records(), Vec::<serde_json::Value>::new());
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn read_only_directory_volumes_cannot_be_written() {
    require_privileged_sandbox();
    let d = Daemon::start();
    let src = source(&d, "ssd1");
    // kubelet's readwrite=ro, and the user's readOnly option.
    d.mount(
        "pod-a",
        "vol",
        json!({"path": s(&src), "kubernetes.io/readwrite": "ro"}),
    )
    .assert_ok();
    d.mount("pod-b", "vol", json!({"path": s(&src), "readOnly": "true"}))
        .assert_ok();
    for pod in ["pod-a", "pod-b"] {
        let dir = d.pod_dir(pod, "vol");
        assert_eq!(
            std::fs::read_to_string(dir.join("existing")).unwrap(),
            "already here"
        );
        assert_eq!(
            write_errno(&dir, "nope"),
            Some(libc::EROFS),
            "{pod} could write"
        );
        assert!(mount_entries_at(&dir)[0].is_read_only());
    }
    // The directory itself stays writable for its owner.
    std::fs::write(src.join("still-writable"), "yes").unwrap();
    d.unmount("pod-a", "vol").assert_ok();
    d.unmount("pod-b", "vol").assert_ok();
    assert_eq!(d.mounts(), NONE);
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn two_pods_share_one_directory_stage() {
    require_privileged_sandbox();
    let d = Daemon::start();
    let src = source(&d, "ssd1");
    d.mount("pod-a", "vol", json!({"path": s(&src)}))
        .assert_ok();
    d.mount(
        "pod-b",
        "vol",
        json!({"path": s(&src), "kubernetes.io/readwrite": "ro"}),
    )
    .assert_ok();
    let (a, b) = (d.pod_dir("pod-a", "vol"), d.pod_dir("pod-b", "vol"));
    let stage = d.stage_path(s(&src));
    assert_eq!(mount_entries_at(&stage).len(), 1);
    std::fs::write(a.join("shared"), "from a").unwrap();
    assert_eq!(std::fs::read_to_string(b.join("shared")).unwrap(), "from a");
    assert_eq!(write_errno(&b, "nope"), Some(libc::EROFS));

    d.unmount("pod-a", "vol").assert_ok();
    assert!(is_mounted(&stage), "unstaged while pod-b still uses it");
    assert_eq!(std::fs::read_to_string(b.join("shared")).unwrap(), "from a");
    d.unmount("pod-b", "vol").assert_ok();
    assert_eq!(d.mounts(), NONE);
    assert_eq!(
        std::fs::read_to_string(src.join("shared")).unwrap(),
        "from a"
    );
}

/// `pods/evil -> <outside>`: a mount through it would land outside the kubelet dir.
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_symlinked_pod_directory_is_refused() {
    require_privileged_sandbox();
    let d = Daemon::start();
    let src = source(&d, "ssd1");
    let outside = d.root.path().join("outside");
    std::fs::create_dir_all(outside.join("volumes/moor~local/v")).unwrap();
    std::fs::create_dir_all(d.kubelet_dir().join("pods")).unwrap();
    std::os::unix::fs::symlink(&outside, d.kubelet_dir().join("pods/evil")).unwrap();
    let target = d.pod_dir("evil", "v");

    let r = d.flex(&["mount", s(&target), &json!({"path": s(&src)}).to_string()]);
    assert_failure(&r, "bad_path", &["symlink"]);
    assert_eq!(
        mounts_under(&outside),
        NONE,
        "mounted outside the kubelet dir"
    );
    assert_eq!(d.mounts(), NONE);

    // The last component a symlink to a directory outside.
    let last = d.pod_dir("pod-a", "v");
    std::fs::create_dir_all(last.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&outside, &last).unwrap();
    let r = d.flex(&["mount", s(&last), &json!({"path": s(&src)}).to_string()]);
    assert_failure(&r, "bad_path", &["symlink"]);
    assert_eq!(d.mounts(), NONE);

    // Nor can an unmount through the symlink reach a mount outside.
    foreign_mount(&outside.join("volumes/moor~local/v"));
    let r = d.flex(&["unmount", s(&target)]);
    assert_failure(&r, "bad_path", &["symlink"]);
    assert!(
        is_mounted(&outside.join("volumes/moor~local/v")),
        "moor unmounted a mount outside the kubelet dir"
    );
    assert_eq!(d.stage_records(), Vec::<serde_json::Value>::new());
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn dot_dot_in_the_target_or_the_path_is_refused() {
    require_privileged_sandbox();
    let d = Daemon::start();
    let src = source(&d, "ssd1");
    let escape = format!(
        "{}/pods/u/volumes/moor~local/../../../../../etc",
        s(&d.kubelet_dir())
    );
    let r = d.flex(&["mount", &escape, &json!({"path": s(&src)}).to_string()]);
    assert_failure(&r, "bad_path", &["not a clean absolute path"]);
    let r = d.flex(&["unmount", &escape]);
    assert_failure(&r, "bad_path", &["not a clean absolute path"]);

    let dotdot = format!("{}/../disks/ssd1", s(&src));
    let r = d.mount("pod-a", "vol", json!({"path": dotdot}));
    assert_failure(&r, "bad_source", &["clean absolute path"]);
    d.assert_nothing_left("pod-a", "vol");
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn unusable_source_paths_are_refused() {
    require_privileged_sandbox();
    let d = Daemon::start();
    let file = d.root.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let inside = d.kubelet_dir().join("pods");
    std::fs::create_dir_all(&inside).unwrap();
    let missing = d.root.path().join("missing");
    for (path, why) in [
        (s(&file), "neither a directory nor a block device"),
        (s(&inside), "inside the kubelet directory"),
        (s(&missing), "cannot use it"),
        ("relative/dir", "clean absolute path"),
        ("/", "must not be /"),
    ] {
        let r = d.mount("pod-a", "vol", json!({"path": path}));
        assert_failure(&r, "bad_source", &[why]);
        d.assert_nothing_left("pod-a", "vol");
    }
}

/// Malformed requests: exactly one JSON line (checked by `flex`), exit 1, a reason first, and
/// nothing mounted or recorded.
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn malformed_requests_fail_with_a_clear_message() {
    require_privileged_sandbox();
    let d = Daemon::start();
    let src = source(&d, "ssd1");
    let dir = d.pod_dir("pod-a", "vol");
    std::fs::create_dir_all(&dir).unwrap();
    let path = s(&src);
    let cases: Vec<(String, &str, Vec<&str>)> = vec![
        ("{not json".into(), "bad_options", vec!["JSON"]),
        ("[]".into(), "bad_options", vec!["JSON"]),
        (
            r#"{"path": 3}"#.into(),
            "bad_options",
            vec!["JSON object of strings"],
        ),
        (
            json!({"pth": path}).to_string(),
            "bad_options",
            vec!["unknown option pth", "driver local"],
        ),
        (
            json!({"kubernetes.io/fsType": "ext4"}).to_string(),
            "bad_options",
            vec!["option path is required"],
        ),
        (
            json!({"path": path, "kubernetes.io/readwrite": "maybe"}).to_string(),
            "bad_options",
            vec!["readwrite=maybe"],
        ),
        (
            json!({"path": path, "kubernetes.io/mounterArgs.FsGroup": "-1"}).to_string(),
            "bad_options",
            vec!["FsGroup"],
        ),
        (
            json!({"path": path, "readOnly": "yes"}).to_string(),
            "bad_options",
            vec!["readOnly=yes"],
        ),
    ];
    for (json, reason, words) in cases {
        let r = d.flex(&["mount", s(&dir), &json]);
        assert_failure(&r, reason, &words);
        assert_eq!(d.mounts(), NONE, "{json}");
    }
    // Wrong argv and a directory of another driver.
    assert_eq!(d.flex(&["mount", s(&dir)]).status(), "Failure");
    let nfs = d
        .kubelet_dir()
        .join("pods/pod-a/volumes/kubernetes.io~nfs/vol");
    let r = d.flex(&["mount", s(&nfs), &json!({"path": path}).to_string()]);
    assert_failure(&r, "bad_path", &[]);
    assert_eq!(d.stage_records(), Vec::<serde_json::Value>::new());
    d.unmount("pod-a", "vol").assert_ok();
}

/// A pod directory that already holds a mount moor did not make: not covered by a mount,
/// and never unmounted by moor.
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_foreign_mount_on_the_target_is_left_alone() {
    require_privileged_sandbox();
    let d = Daemon::start();
    let src = source(&d, "ssd1");
    let pod = d.pod_dir("pod-a", "vol");
    foreign_mount(&pod);

    let r = d.mount("pod-a", "vol", json!({"path": s(&src)}));
    assert_failure(&r, "target_busy", &[s(&pod)]);
    assert_eq!(
        mount_entries_at(&pod).len(),
        1,
        "moor mounted over a foreign mount"
    );
    assert_eq!(d.active_stage_records(), Vec::<serde_json::Value>::new());
    assert!(
        !is_mounted(&d.stage_path(s(&src))),
        "staged for a mount that failed"
    );

    let r = d.unmount("pod-a", "vol");
    assert_failure(&r, "not_owned", &[s(&pod)]);
    assert!(is_mounted(&pod), "moor unmounted a mount it did not make");
    assert_eq!(
        std::fs::read_to_string(pod.join("foreign-file")).unwrap(),
        "not moor's"
    );
}

/// Someone mounts over a pod directory moor published: moor's unmount must not remove the
/// foreign mount on top; once it is gone, the unmount completes.
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_mount_stacked_on_a_published_directory_is_not_removed() {
    require_privileged_sandbox();
    let d = Daemon::start();
    let src = source(&d, "ssd1");
    d.mount("pod-a", "vol", json!({"path": s(&src)}))
        .assert_ok();
    let pod = d.pod_dir("pod-a", "vol");
    sh(
        "mount",
        &["-t", "tmpfs", "-o", "size=1m", "foreign", s(&pod)],
    );
    std::fs::write(pod.join("foreign-file"), "not moor's").unwrap();

    let r = d.unmount("pod-a", "vol");
    assert_failure(&r, "not_owned", &[s(&pod)]);
    assert_eq!(
        std::fs::read_to_string(pod.join("foreign-file")).unwrap(),
        "not moor's"
    );

    sh("umount", &[s(&pod)]);
    d.unmount("pod-a", "vol").assert_ok();
    assert_eq!(d.mounts(), NONE);
    assert_eq!(
        std::fs::read_to_string(src.join("existing")).unwrap(),
        "already here"
    );
}

/// A process still holds the volume (an open file): unmount fails with `mount_busy` instead of
/// detaching lazily and hiding the busy mount, the data stays reachable, and kubelet's retry
/// succeeds once the process lets go.
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_busy_volume_unmounts_once_released() {
    require_privileged_sandbox();
    let d = Daemon::start();
    let src = source(&d, "ssd1");
    d.mount("pod-a", "vol", json!({"path": s(&src)}))
        .assert_ok();
    let pod = d.pod_dir("pod-a", "vol");
    let held = std::fs::File::create(pod.join("open-file")).unwrap();
    for _ in 0..2 {
        assert_failure(&d.unmount("pod-a", "vol"), "mount_busy", &[s(&pod)]);
        assert!(is_mounted(&pod));
        assert_eq!(
            std::fs::read_to_string(pod.join("existing")).unwrap(),
            "already here"
        );
    }
    drop(held);
    d.unmount("pod-a", "vol").assert_ok();
    assert_eq!(d.mounts(), NONE);
    assert!(src.join("open-file").exists());
}

/// While an unmount is stuck on a busy volume, a mount of the same pod directory comes in
/// (kubelet's reconciler, an operator): whatever it answers, moor must not drop its record of
/// a bind that is still mounted, or the later unmount is refused as `not_owned` forever and
/// the pod directory is orphaned (pain point 3).
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_mount_retry_during_a_busy_unmount_keeps_the_volume_owned() {
    require_privileged_sandbox();
    let d = Daemon::start();
    let src = source(&d, "ssd1");
    let opts = json!({"path": s(&src)});
    d.mount("pod-a", "vol", opts.clone()).assert_ok();
    let pod = d.pod_dir("pod-a", "vol");
    let held = std::fs::File::create(pod.join("open-file")).unwrap();
    assert_failure(&d.unmount("pod-a", "vol"), "mount_busy", &[]);
    let _ = d.mount("pod-a", "vol", opts);
    assert!(is_mounted(&pod));
    drop(held);
    let r = d.unmount("pod-a", "vol");
    r.assert_ok();
    assert_eq!(d.mounts(), NONE, "mounts left behind");
}
