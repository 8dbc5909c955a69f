//! Crash safety (issue: journal and reconstruction): the daemon is SIGKILLed between every
//! two steps of mount and of unmount; after a restart each volume is either fully published
//! or fully gone, no mount leaked, no record lost, and kubelet's next call converges. Also
//! what kubelet does after its own restart: only `init`, no new `mount`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{Daemon, LoopDev, is_mounted, mounts_under, require_privileged_sandbox};
use serde_json::json;

/// Pauses the daemon at `point`, starts the FlexVolume call `args` in the background, waits
/// until the daemon reached the point, SIGKILLs it, and returns the front end's answer.
fn kill_at(d: &mut Daemon, point: &str, args: &[String]) -> serde_json::Value {
    d.stop();
    let pause = d.pause_at(point);
    d.spawn();
    let call = Command::new(d.driver_link())
        .args(args)
        .env("MOOR_SOCKET", d.socket())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("front end");
    pause.wait(d);
    d.kill9();
    let out = call.wait_with_output().unwrap();
    assert!(out.stderr.is_empty());
    let reply: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("one JSON object even when the daemon dies");
    d.extra_env.clear();
    d.spawn();
    reply
}

fn opts(dev: &str) -> serde_json::Value {
    json!({"path": dev, "kubernetes.io/fsType": "ext4"})
}

fn mount_args(d: &Daemon, pod: &str, dev: &str) -> Vec<String> {
    let dir = d.pod_dir(pod, "vol");
    std::fs::create_dir_all(&dir).unwrap();
    let mut o = opts(dev);
    let m = o.as_object_mut().unwrap();
    m.insert("kubernetes.io/pod.uid".into(), pod.into());
    m.insert("kubernetes.io/readwrite".into(), "rw".into());
    vec!["mount".into(), dir.display().to_string(), o.to_string()]
}

/// Fully published (pod dir mounted, data readable) or fully gone (nothing mounted, no record).
fn assert_whole(d: &Daemon, pod: &str) -> bool {
    let dir = d.pod_dir(pod, "vol");
    let published = is_mounted(&dir);
    let records = count_records(d);
    if published {
        assert!(
            dir.join("lost+found").exists(),
            "published but the filesystem is not visible"
        );
        assert!(records.1 >= 1, "published without a publish record");
    } else {
        assert!(
            mounts_under(&d.kubelet_dir()).is_empty(),
            "not published, yet mounts remain: {:?}",
            mounts_under(&d.kubelet_dir())
        );
        assert_eq!(
            records.1, 0,
            "no publish record may survive a rolled-back mount"
        );
    }
    published
}

/// (stage records that are not idle, publish records). A block volume stays remembered as
/// an idle record after its last unmount, by design.
fn count_records(d: &Daemon) -> (usize, usize) {
    let json_files = |p: &Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(p)
            .map(|r| {
                r.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "json"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let active_stages = json_files(&d.state_dir().join("stage"))
        .iter()
        .filter(|p| {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
            v["phase"] != "idle"
        })
        .count();
    (
        active_stages,
        json_files(&d.run_dir().join("publish")).len(),
    )
}

fn assert_clean(d: &Daemon) {
    assert!(
        mounts_under(d.root.path()).is_empty(),
        "leaked mounts: {:?}",
        mounts_under(d.root.path())
    );
    assert_eq!(count_records(d), (0, 0), "records left behind");
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn sigkill_during_mount_converges() {
    require_privileged_sandbox();
    let dev = LoopDev::new(64);
    for point in [
        "stage:intent",
        "stage:attached",
        "stage:mounted",
        "publish:intent",
        "publish:bound",
    ] {
        let mut d = Daemon::start();
        let args = mount_args(&d, "pod1", dev.path_str());
        let reply = kill_at(&mut d, point, &args);
        assert_eq!(
            reply["status"], "Failure",
            "{point}: kubelet must not see Success from a killed daemon"
        );
        assert!(
            !assert_whole(&d, "pod1"),
            "{point}: a mount kubelet never saw succeed is rolled back"
        );
        // kubelet retries the mount, then later unmounts: both converge.
        d.mount("pod1", "vol", opts(dev.path_str())).assert_ok();
        assert!(assert_whole(&d, "pod1"));
        d.unmount("pod1", "vol").assert_ok();
        assert_clean(&d);
    }
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn sigkill_during_unmount_converges() {
    require_privileged_sandbox();
    let dev = LoopDev::new(64);
    for point in [
        "unpublish:intent",
        "unpublish:unmounted",
        "unstage:intent",
        "unstage:unmounted",
    ] {
        let mut d = Daemon::start();
        d.mount("pod1", "vol", opts(dev.path_str())).assert_ok();
        std::fs::write(d.pod_dir("pod1", "vol").join("data"), point).unwrap();
        let dir = d.pod_dir("pod1", "vol").display().to_string();
        let reply = kill_at(&mut d, point, &["unmount".into(), dir]);
        assert_eq!(reply["status"], "Failure", "{point}");
        let still = assert_whole(&d, "pod1");
        if still {
            assert_eq!(
                std::fs::read_to_string(d.pod_dir("pod1", "vol").join("data")).unwrap(),
                point
            );
        }
        // kubelet retries the unmount: Success, and nothing is left.
        d.unmount("pod1", "vol").assert_ok();
        assert_clean(&d);
        // The data survived the crash: mount again and read it.
        d.mount("pod1", "vol", opts(dev.path_str())).assert_ok();
        assert_eq!(
            std::fs::read_to_string(d.pod_dir("pod1", "vol").join("data")).unwrap(),
            point
        );
        d.unmount("pod1", "vol").assert_ok();
        assert_clean(&d);
    }
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_restart_keeps_volumes_and_kubelet_only_calls_init() {
    require_privileged_sandbox();
    let dev = LoopDev::new(64);
    let mut d = Daemon::start();
    d.mount("pod1", "vol", opts(dev.path_str())).assert_ok();
    d.mount(
        "pod2",
        "vol",
        json!({"path": dev.path_str(), "kubernetes.io/readwrite": "ro"}),
    )
    .assert_ok();
    std::fs::write(d.pod_dir("pod1", "vol").join("f"), "x").unwrap();
    // Both a crash and a clean restart leave the volumes in place.
    d.kill9();
    d.spawn();
    d.stop();
    d.spawn();
    assert!(d.flex(&["init"]).ok());
    assert!(is_mounted(&d.pod_dir("pod1", "vol")));
    assert!(is_mounted(&d.pod_dir("pod2", "vol")));
    let status = Command::new(env!("CARGO_BIN_EXE_moor"))
        .args(["status", "-o", "json"])
        .env("MOOR_SOCKET", d.socket())
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["volumes"][0]["pods"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["volumes"][0]["state"], "staged");
    d.unmount("pod1", "vol").assert_ok();
    d.unmount("pod2", "vol").assert_ok();
    assert_clean(&d);
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn front_end_answers_json_when_the_daemon_is_down() {
    require_privileged_sandbox();
    let mut d = Daemon::start();
    d.stop();
    let dir = d.pod_dir("p", "vol");
    std::fs::create_dir_all(&dir).unwrap();
    let r = d.flex(&["mount", dir.to_str().unwrap(), r#"{"path":"/tmp"}"#]);
    assert_eq!(r.status(), "Failure");
    assert!(
        r.message().starts_with("daemon_unreachable:"),
        "{}",
        r.message()
    );
    let r = d.flex(&["unmount", dir.to_str().unwrap()]);
    assert_eq!(r.status(), "Failure");
    assert_eq!(r.code, Some(1));
    // init does not need the daemon: a failing init would unregister the driver in kubelet.
    assert!(d.flex(&["init"]).ok());
}
