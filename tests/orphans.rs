//! Orphaned pod volumes (tier 2: root, real bind mounts, a real daemon driven through the
//! real FlexVolume front end and the CSI calls, `moor gc` run as an operator runs it).
//!
//! What a user checks: a pod deleted while kubelet was down — its bind still there, kubelet
//! logging "orphaned pod … volume paths are still present on disk" — is unpublished once the
//! API server confirms it gone past the grace, its stage unstaged when it was the last, its
//! empty directories removed up to `pods/<uid>/volumes` and kubelet's own files left, with a
//! metric and a notice; a pod nobody can confirm gone (no credentials) is never touched
//! until an operator names it, and not even then while a process of it still runs; a mount
//! moor did not make, or a file in the volume dir, is never removed; a CSI publish is
//! unpublished and its stage kept for kubelet's NodeUnstageVolume.
//!
//! The API server is the daemon's test seam `MOOR_TEST_PODS` (feature `test-hooks`): a file
//! of `<uid> present|gone` lines the test rewrites.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::host::mount_entries_at;
use common::{
    Daemon, free_port, http_get, is_mounted, moor_exe, require_privileged_sandbox,
    require_test_hooks, s, sh, source,
};
use moor::api::{AccessMode, CsiCall, Response, VolumeMode};
use moor::testkit::csi_call::options;
use serde_json::{Value, json};

/// The shortest grace the config accepts.
const GRACE: &str = "gc:\n  grace-seconds: 10\n";

/// `moor gc <args> -o json` against `d`: its exit code and its JSON.
fn gc(d: &Daemon, args: &[&str]) -> (i32, Value) {
    let out = Command::new(moor_exe())
        .arg("gc")
        .args(args)
        .args(["-o", "json"])
        .env("MOOR_SOCKET", d.socket())
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "moor gc {args:?}: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap(), v)
}

/// The row of `moor gc`'s answer for pod `uid`.
fn row<'a>(v: &'a Value, uid: &str) -> &'a Value {
    v["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["pod_uid"] == uid)
        .unwrap_or_else(|| panic!("no row for {uid}: {v}"))
}

/// The notices of `moor status -o json`.
fn notices(d: &Daemon) -> Vec<Value> {
    let out = Command::new(moor_exe())
        .args(["status", "-o", "json"])
        .env("MOOR_SOCKET", d.socket())
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["notices"].as_array().cloned().unwrap_or_default()
}

/// The API server's view, as the daemon's test seam reads it.
fn pods_say(file: &Path, lines: &str) {
    std::fs::write(file, lines).unwrap();
}

/// What kubelet itself keeps in a pod dir beside the volumes.
fn kubelet_files(d: &Daemon, uid: &str) -> Vec<PathBuf> {
    let pod = d.kubelet_dir().join("pods").join(uid);
    let files = vec![pod.join("etc-hosts"), pod.join("containers/app/0a1b2c3d")];
    for f in &files {
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, "kubelet's").unwrap();
    }
    files
}

/// Polls `f` every 200 ms for up to `secs`.
fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    f()
}

/// Directory `name` (under the allowed root) published into pod `uid` as FlexVolume `vol`:
/// the source and the pod volume dir.
fn published(d: &Daemon, name: &str, uid: &str) -> (PathBuf, PathBuf) {
    let src = source(d, name);
    d.mount(uid, "vol", json!({"path": s(&src)})).assert_ok();
    (src, d.pod_dir(uid, "vol"))
}

fn volumes_dir(d: &Daemon, uid: &str) -> PathBuf {
    d.kubelet_dir().join("pods").join(uid).join("volumes")
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn the_daemon_cleans_a_pod_deleted_while_kubelet_was_down_and_only_that_one() {
    require_privileged_sandbox();
    require_test_hooks(&moor_exe());
    let port = free_port();
    let mut d = Daemon::unstarted(&[]);
    let pods = d.root.path().join("api-pods");
    pods_say(&pods, "pod-a present\npod-b present\n");
    d.extra_env
        .push(("MOOR_TEST_PODS".into(), pods.display().to_string()));
    d.extra_args = vec!["--metrics-addr".into(), format!("127.0.0.1:{port}")];
    d.config_extra = GRACE.into();
    d.spawn();
    let (src_a, _) = published(&d, "ssd1", "pod-a");
    let (src_b, _) = published(&d, "ssd2", "pod-b");
    std::fs::write(d.pod_dir("pod-a", "vol").join("from-pod"), "pod data").unwrap();
    let kubelets = kubelet_files(&d, "pod-a");
    let (stage_a, stage_b) = (d.stage_path(s(&src_a)), d.stage_path(s(&src_b)));
    assert!(is_mounted(&stage_a) && is_mounted(&stage_b));

    // pod-a is deleted while kubelet is down: the API server no longer has it.
    pods_say(&pods, "pod-a gone\npod-b present\n");
    let (code, v) = gc(&d, &[]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(row(&v, "pod-a")["pod"], "gone", "{v}");
    assert_eq!(row(&v, "pod-b")["action"], "keep", "{v}");
    // Within the grace kubelet still may unmount it itself: moor leaves it.
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        is_mounted(&d.pod_dir("pod-a", "vol")),
        "cleaned before the grace ended"
    );
    let (_, v) = gc(&d, &[]);
    assert_eq!(row(&v, "pod-a")["action"], "wait", "{v}");

    assert!(
        eventually(30, || !is_mounted(&d.pod_dir("pod-a", "vol"))),
        "the gone pod's bind is still there; log:\n{}",
        d.log_text()
    );
    // Its stage was the last user's: unstaged; its directories up to volumes/ removed.
    assert!(
        eventually(5, || !is_mounted(&stage_a)),
        "stage still mounted"
    );
    assert!(!d.pod_dir("pod-a", "vol").exists());
    assert!(!volumes_dir(&d, "pod-a").join("moor~local").exists());
    assert!(
        volumes_dir(&d, "pod-a").is_dir(),
        "pods/<uid>/volumes is kubelet's"
    );
    for f in &kubelets {
        assert_eq!(
            std::fs::read_to_string(f).unwrap(),
            "kubelet's",
            "{}",
            f.display()
        );
    }
    // The data is in the source, untouched.
    for (name, text) in [("from-pod", "pod data"), ("existing", "already here")] {
        assert_eq!(std::fs::read_to_string(src_a.join(name)).unwrap(), text);
    }
    // The present pod is untouched.
    assert!(is_mounted(&d.pod_dir("pod-b", "vol")));
    assert!(is_mounted(&stage_b));

    let metrics = http_get(port, "/metrics");
    assert!(
        metrics.contains(r#"moor_orphans_cleaned_total{driver="local"} 1"#),
        "{metrics}"
    );
    let n = notices(&d);
    let cleaned: Vec<&Value> = n
        .iter()
        .filter(|x| x["reason"] == "orphan_cleaned")
        .collect();
    assert_eq!(cleaned.len(), 1, "{n:?}");
    let msg = cleaned[0]["message"].as_str().unwrap();
    assert!(msg.contains("pod pod-a is gone"), "{msg}");
    assert!(msg.contains("unstaged"), "{msg}");
    assert!(msg.contains(s(&d.pod_dir("pod-a", "vol"))), "{msg}");
    assert!(
        cleaned[0].get("pod_uids").is_none(),
        "on the node, not the gone pod: {n:?}"
    );
    // kubelet's own later unmount (it came back) is a no-op success.
    d.unmount("pod-a", "vol").assert_ok();
    d.unmount("pod-b", "vol").assert_ok();
    assert_eq!(d.mounts(), Vec::<PathBuf>::new());
}

/// A cgroup (v2) of this machine named as kubelet names pod `uid`'s, with a child process
/// in it; the process is killed and the cgroup removed on drop.
struct PodCgroup {
    dir: PathBuf,
    child: std::process::Child,
}

impl PodCgroup {
    fn new(uid: &str) -> Self {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = moor::host::mountinfo::parse(&text)
            .unwrap()
            .into_iter()
            .find(|m| m.fs_type == "cgroup2")
            .map(|m| m.mount_point)
            .expect("a cgroup2 hierarchy mounted (the test places a process in a pod's cgroup)");
        let dir = root
            .join(format!("moor-it-{}", std::process::id()))
            .join(format!(
                "kubepods-besteffort-pod{}.slice",
                uid.replace('-', "_")
            ));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("sleep").arg("300").spawn().unwrap();
        std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).unwrap();
        PodCgroup { dir, child }
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir(&self.dir);
        if let Some(p) = self.dir.parent() {
            let _ = std::fs::remove_dir(p);
        }
    }
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn an_unknown_pod_is_left_until_named_and_a_running_one_is_refused() {
    require_privileged_sandbox();
    // No credentials: every pod is unknown.
    let mut d = Daemon::unstarted(&[]);
    d.config_extra = GRACE.into();
    d.spawn();
    let (src, _) = published(&d, "ssd1", "pod-a");
    d.mount("pod-b", "vol", json!({"path": s(&src)}))
        .assert_ok();
    // Past the grace and several passes: nothing happens on a guess.
    std::thread::sleep(Duration::from_secs(13));
    assert!(is_mounted(&d.pod_dir("pod-a", "vol")));
    let (code, v) = gc(&d, &[]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["connected"], false, "{v}");
    for uid in ["pod-a", "pod-b"] {
        assert_eq!(row(&v, uid)["pod"], "unknown", "{v}");
        assert_eq!(row(&v, uid)["action"], "keep", "{v}");
    }
    assert!(is_mounted(&d.pod_dir("pod-a", "vol")));

    // A process of pod-b still runs on the node: refused, nothing touched.
    let cg = PodCgroup::new("pod-b");
    let (code, v) = gc(&d, &["--pod", "pod-b"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(row(&v, "pod-b")["action"], "refused", "{v}");
    let detail = row(&v, "pod-b")["detail"].as_str().unwrap();
    assert!(detail.starts_with("pod_running"), "{detail}");
    assert!(detail.contains(&cg.child.id().to_string()), "{detail}");
    assert!(is_mounted(&d.pod_dir("pod-b", "vol")));

    // A dry run says what it would do and does nothing.
    let (code, v) = gc(&d, &["--pod", "pod-a", "--dry-run"]);
    assert_eq!(
        (code, &row(&v, "pod-a")["action"]),
        (0, &json!("clean")),
        "{v}"
    );
    assert!(is_mounted(&d.pod_dir("pod-a", "vol")));

    // Named by the operator: cleaned without credentials. pod-b still uses the stage.
    let (code, v) = gc(&d, &["--pod", "pod-a"]);
    assert_eq!(code, 0, "{v}");
    let r = row(&v, "pod-a");
    assert_eq!(r["action"], "cleaned", "{v}");
    assert!(
        r.get("unstaged").is_none(),
        "pod-b still uses the stage: {v}"
    );
    assert!(!is_mounted(&d.pod_dir("pod-a", "vol")));
    assert!(!d.pod_dir("pod-a", "vol").exists());
    assert!(is_mounted(&d.stage_path(s(&src))));
    assert!(is_mounted(&d.pod_dir("pod-b", "vol")));

    // Once its last process is gone, pod-b is cleaned too, and the stage with it.
    drop(cg);
    let (code, v) = gc(&d, &["--pod", "pod-b", "--pod", "pod-x"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(row(&v, "pod-b")["action"], "cleaned", "{v}");
    assert_eq!(row(&v, "pod-b")["unstaged"], true, "{v}");
    assert_eq!(row(&v, "pod-x")["action"], "none", "{v}");
    assert_eq!(d.mounts(), Vec::<PathBuf>::new());
    assert_eq!(
        std::fs::read_to_string(src.join("existing")).unwrap(),
        "already here"
    );
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_foreign_mount_or_a_file_in_the_pod_volume_dir_is_never_removed() {
    require_privileged_sandbox();
    let d = Daemon::start();
    let (_, dir) = published(&d, "ssd1", "pod-a");
    // Someone stacked a mount of their own on the pod volume dir.
    sh("mount", &["-t", "tmpfs", "someone-else", s(&dir)]);
    std::fs::write(dir.join("their-file"), "not moor's").unwrap();
    let (code, v) = gc(&d, &["--pod", "pod-a"]);
    assert_eq!(code, 1, "{v}");
    let r = row(&v, "pod-a");
    assert_eq!(r["action"], "refused", "{v}");
    assert!(
        r["detail"].as_str().unwrap().starts_with("not_owned"),
        "{v}"
    );
    assert_eq!(mount_entries_at(&dir).len(), 2, "both mounts stay");
    assert_eq!(
        std::fs::read_to_string(dir.join("their-file")).unwrap(),
        "not moor's"
    );

    // A foreign mount above the volume dir refuses the pod's cleaning as a whole.
    sh("umount", &[s(&dir)]);
    let above = volumes_dir(&d, "pod-a");
    sh("mount", &["--bind", s(&above), s(&above)]);
    let (code, v) = gc(&d, &["--pod", "pod-a"]);
    assert_eq!(code, 1, "{v}");
    let detail = row(&v, "pod-a")["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("not_owned") && detail.contains(s(&above)),
        "{detail}"
    );
    sh("umount", &[s(&above)]);
    assert!(is_mounted(&dir), "moor's bind stays");

    // moor's bind gone (someone unmounted it) and data-looking files in the directory:
    // the record goes, the directory and its files stay, and the operator hears of it.
    sh("umount", &[s(&dir)]);
    std::fs::write(dir.join("data.db"), "precious").unwrap();
    let (code, v) = gc(&d, &["--pod", "pod-a"]);
    assert_eq!(code, 1, "{v}");
    let r = row(&v, "pod-a");
    assert_eq!(r["action"], "partial", "{v}");
    let left = r["left"][0].as_str().unwrap();
    assert!(
        left.starts_with(s(&dir)) && left.contains("data.db"),
        "{left}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("data.db")).unwrap(),
        "precious"
    );
    assert_eq!(
        d.mounts(),
        Vec::<PathBuf>::new(),
        "the stage went with its last pod"
    );
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_gone_pods_csi_publish_is_unpublished_and_its_stage_kept_for_kubelet() {
    require_privileged_sandbox();
    require_test_hooks(&moor_exe());
    let mut d = Daemon::unstarted(&[]);
    let pods = d.root.path().join("api-pods");
    pods_say(&pods, "pod-c present\n");
    d.extra_env
        .push(("MOOR_TEST_PODS".into(), pods.display().to_string()));
    d.config_extra = GRACE.into();
    d.spawn();
    let src = source(&d, "ssd1");
    let id = "pv-orphan";
    let paths = d.csi_paths();
    let staging = s(&paths.staging("local", id)).to_owned();
    let attrs = [("path", s(&src))];
    let rw = AccessMode::SingleNodeWriter;
    let r = d.csi_call(
        "local",
        id,
        CsiCall::Stage {
            staging_path: staging.clone(),
            mode: VolumeMode::Filesystem,
            access: rw,
            options: options(&attrs).unwrap(),
        },
    );
    assert_eq!(r, Response::Done);
    let target = paths.target("pod-c", id);
    // kubelet makes `<pv>/` and writes its vol_data.json there before NodePublishVolume.
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let vol_data = target.parent().unwrap().join("vol_data.json");
    std::fs::write(&vol_data, r#"{"driverName":"local.csi.moor.io"}"#).unwrap();
    let r = d.csi_call(
        "local",
        id,
        CsiCall::Publish {
            staging_path: staging.clone(),
            target: s(&target).into(),
            mode: VolumeMode::Filesystem,
            access: rw,
            options: options(&attrs).unwrap(),
        },
    );
    assert_eq!(r, Response::Done);
    assert!(is_mounted(&target));

    pods_say(&pods, "pod-c gone\n");
    // The bind goes first, the target moor made right after it.
    assert!(
        eventually(30, || !is_mounted(&target) && !target.exists()),
        "the gone pod's CSI bind is still there; log:\n{}",
        d.log_text()
    );
    // The target moor made is removed; kubelet's vol_data.json and its directory stay (kubelet
    // reads it to reconstruct the volume and send NodeUnstageVolume), and the stage with it.
    assert!(!target.exists());
    assert!(vol_data.exists());
    let stage = d.stage_path(s(&src));
    assert!(is_mounted(&stage), "the CSI stage is kubelet's to end");
    // The notice follows the cleaning.
    eventually(10, || {
        notices(&d).iter().any(|x| x["reason"] == "orphan_cleaned")
    });
    let n = notices(&d);
    let msg = n
        .iter()
        .find(|x| x["reason"] == "orphan_cleaned")
        .and_then(|x| x["message"].as_str())
        .unwrap_or_else(|| panic!("no notice: {n:?}"))
        .to_owned();
    assert!(
        msg.contains("stays for kubelet's NodeUnstageVolume"),
        "{msg}"
    );
    assert!(msg.contains("vol_data.json"), "{msg}");
    // kubelet's own calls still work: unpublish is a no-op, unstage ends the stage.
    let r = d.csi_call(
        "local",
        id,
        CsiCall::Unpublish {
            target: s(&target).into(),
        },
    );
    assert_eq!(r, Response::Done);
    let r = d.csi_call(
        "local",
        id,
        CsiCall::Unstage {
            staging_path: staging,
        },
    );
    assert_eq!(r, Response::Done);
    assert_eq!(d.mounts(), Vec::<PathBuf>::new());
}
