//! The state and run dirs against what others leave in them (issue 12, items 4, 5, 7), tier 2:
//! a real daemon on a temp kubelet tree, real bind mounts and loop devices.
//!
//! What an operator checks: a daemon starts whatever the record directories hold, keeps
//! serving the good volumes, says which entries it set aside (status, metric) and deletes
//! none; a failed journal write (a full or read-only state or run dir) never leaves a mount
//! behind once the dir is healthy again; a second daemon on the same state dir is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Daemon, free_port, http_get, is_mounted, require_privileged_sandbox, s, source};
use serde_json::json;

/// `moor status -o json` against the daemon.
fn status(d: &Daemon) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_moor"))
        .args(["status", "-o", "json"])
        .env("MOOR_SOCKET", d.socket())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "moor status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every file name (as bytes, relative) under `dir`, with its size, without following links.
fn tree(dir: &Path) -> BTreeMap<Vec<u8>, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            out.insert(
                p.strip_prefix(dir).unwrap().as_os_str().as_bytes().to_vec(),
                md.len(),
            );
            if md.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

/// Runs a second `moor daemon` on the given dirs; it must exit by itself within 10 s (a
/// daemon that starts is killed and reported).
fn second_daemon(d: &Daemon, state: &Path, run: &Path) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_moor"))
        .arg("daemon")
        .arg("--kubelet-dir")
        .arg(d.kubelet_dir())
        .arg("--state-dir")
        .arg(state)
        .arg("--run-dir")
        .arg(run)
        .arg("--socket")
        .arg(run.join("second.sock"))
        .args(["--metrics-addr", "off", "--node-name", "node-it"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return (st.success(), err);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a second daemon on the same dirs started and kept running");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_DAC_READ_SEARCH: u32 = 2;

/// Item 4: each kind of bad entry, in the stage records (state dir) and in the publish
/// records (run dir), beside a live volume.
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_daemon_starts_whatever_the_record_dirs_hold_and_sets_bad_entries_aside() {
    require_privileged_sandbox();
    let mut d = Daemon::start();
    let src = source(&d, "good");
    d.mount("pod-a", "vol", json!({"path": s(&src)}))
        .assert_ok();
    d.stop();

    let sd = d.state_dir().join("stage");
    let pd = d.run_dir().join("publish");
    let outside = d.root.path().join("outside.json");
    std::fs::write(&outside, "{}").unwrap();
    let mut bad: Vec<PathBuf> = Vec::new();
    for dir in [&sd, &pd] {
        // Names each directory's records really use, so only the content is wrong.
        let name = |n: u32| -> PathBuf {
            if dir == &sd {
                dir.join(format!("local-bad{n}-0123456789ab.json"))
            } else {
                dir.join(format!("{n:032x}.json"))
            }
        };
        let p = name(1);
        std::fs::write(&p, b"{\"key\": \"\xff\xfe\"}").unwrap();
        bad.push(p);
        let p = name(2);
        std::fs::write(&p, "{ not json").unwrap();
        bad.push(p);
        let p = name(3);
        std::fs::write(&p, r#"{"key": 7, "phase": ["staged"]}"#).unwrap();
        bad.push(p);
        let p = name(4);
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("inside"), "x").unwrap();
        bad.push(p);
        let p = name(5);
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::S_IRWXU).unwrap();
        bad.push(p);
        let p = name(6);
        std::os::unix::fs::symlink(&outside, &p).unwrap();
        bad.push(p);
        let p = name(7);
        std::fs::File::create(&p)
            .unwrap()
            .set_len(256 << 20)
            .unwrap();
        bad.push(p);
        let p = name(8);
        std::fs::write(&p, "{}").unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
        bad.push(p);
        let p = dir.join("notes.txt");
        std::fs::write(&p, "an operator's note").unwrap();
        bad.push(p);
        let p = dir.join(std::ffi::OsStr::from_bytes(b"\xff\xfe.json"));
        std::fs::write(&p, "{}").unwrap();
        bad.push(p);
    }

    // Without these two capabilities root meets EACCES on a mode-0 file, as a daemon in a
    // container with a dropped capability would.
    d.drop_caps = vec![CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH];
    let port = free_port();
    d.extra_args = vec!["--metrics-addr".into(), format!("127.0.0.1:{port}")];
    d.spawn();

    let st = status(&d);
    let aside = st["set_aside"].as_array().cloned().unwrap_or_default();
    for p in &bad {
        let mut moved = p.as_os_str().to_owned();
        moved.push(".corrupt");
        let moved = PathBuf::from(moved);
        assert!(
            std::fs::symlink_metadata(&moved).is_ok(),
            "{} was not kept as {}",
            p.display(),
            moved.display()
        );
        assert!(
            std::fs::symlink_metadata(p).is_err(),
            "{} is still under its old name",
            p.display()
        );
        let shown = moved.to_string_lossy().into_owned();
        assert!(
            aside.iter().any(|a| a["path"] == shown.as_str()),
            "moor status does not list {shown}: {aside:?}"
        );
    }
    assert_eq!(aside.len(), bad.len(), "{aside:?}");
    for reason in [
        "not_utf8",
        "invalid_json",
        "wrong_shape",
        "not_regular",
        "symlink",
        "too_large",
        "unreadable",
        "unknown_name",
    ] {
        assert!(
            aside.iter().any(|a| a["reason"] == reason),
            "no entry set aside as {reason}: {aside:?}"
        );
    }
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "{}");
    let text = http_get(port, "/metrics");
    let total: f64 = text
        .lines()
        .filter(|l| l.starts_with("moor_journal_records_set_aside{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(total as usize, bad.len(), "metric:\n{text}");

    // The good volume is still served: its stage is known and its unmount works.
    let vols = st["volumes"].as_array().unwrap();
    assert_eq!(vols.len(), 1, "{st}");
    d.unmount("pod-a", "vol").assert_ok();
    assert_eq!(d.mounts(), Vec::<PathBuf>::new());
    assert_eq!(
        std::fs::read_to_string(src.join("existing")).unwrap(),
        "already here"
    );
    // And a new mount works beside the set-aside entries.
    d.mount("pod-b", "vol", json!({"path": s(&src)}))
        .assert_ok();
    d.unmount("pod-b", "vol").assert_ok();
}

/// Item 4: the record directories themselves replaced by a file and by a symlink.
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_daemon_starts_when_a_record_dir_is_a_file_or_a_symlink() {
    require_privileged_sandbox();
    let mut d = Daemon::start();
    d.stop();
    let sd = d.state_dir().join("stage");
    let pd = d.run_dir().join("publish");
    std::fs::remove_dir(&sd).unwrap();
    std::fs::remove_dir(&pd).unwrap();
    std::fs::write(&sd, "not a directory").unwrap();
    let elsewhere = d.root.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &pd).unwrap();
    d.spawn();
    let st = status(&d);
    let aside = st["set_aside"].as_array().cloned().unwrap_or_default();
    assert_eq!(aside.len(), 2, "{st}");
    assert_eq!(
        std::fs::read_to_string(d.state_dir().join("stage.corrupt")).unwrap(),
        "not a directory"
    );
    assert!(
        std::fs::symlink_metadata(d.run_dir().join("publish.corrupt"))
            .unwrap()
            .is_symlink()
    );
    let src = source(&d, "ssd");
    d.mount("pod-a", "vol", json!({"path": s(&src)}))
        .assert_ok();
    assert!(sd.is_dir() && pd.is_dir());
    assert_eq!(
        std::fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "nothing written through the symlink"
    );
    d.unmount("pod-a", "vol").assert_ok();
}

/// Item 7: a second daemon on the same state dir, with its own run dir and socket, is
/// refused with the first one's pid and touches nothing; the first keeps serving.
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_second_daemon_on_the_same_state_dir_is_refused() {
    require_privileged_sandbox();
    let d = Daemon::start();
    let src = source(&d, "ssd");
    d.mount("pod-a", "vol", json!({"path": s(&src)}))
        .assert_ok();
    let first_pid = d.pid();
    let before = tree(&d.state_dir());
    let mounts_before = d.mounts();

    let other = d.root.path().join("other-run");
    let (ok, stderr) = second_daemon(&d, &d.state_dir(), &other);
    assert!(!ok, "second daemon succeeded: {stderr}");
    assert!(
        stderr.contains(&format!("pid {first_pid}")) && stderr.contains(s(&d.state_dir())),
        "the refusal names the other daemon's pid and the state dir: {stderr}"
    );
    assert_eq!(tree(&d.state_dir()), before, "the state dir was touched");
    assert_eq!(d.mounts(), mounts_before);
    assert!(!other.join("second.sock").exists());

    // The same for a second daemon on the same run dir with another state dir.
    let other_state = d.root.path().join("other-state");
    let (ok, stderr) = second_daemon(&d, &other_state, &d.run_dir());
    assert!(!ok, "second daemon succeeded: {stderr}");
    assert!(
        stderr.contains(&format!("pid {first_pid}")) && stderr.contains(s(&d.run_dir())),
        "the refusal names the other daemon's pid and the run dir: {stderr}"
    );

    // The first daemon still serves.
    assert!(is_mounted(&d.pod_dir("pod-a", "vol")));
    d.unmount("pod-a", "vol").assert_ok();
    d.mount("pod-b", "vol", json!({"path": s(&src)}))
        .assert_ok();
    d.unmount("pod-b", "vol").assert_ok();
}

// ---- Item 5: a failed journal write never strands a mount --------------------------------

#[derive(Clone, Copy, Debug)]
enum Break {
    /// The filesystem is full.
    Enospc,
    /// The filesystem is remounted read-only.
    Erofs,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Dir {
    State,
    Run,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Mount,
    Unmount,
}

/// A volume for the case: a plain directory or a blank loop device moor formats.
enum Vol {
    Directory(PathBuf),
    Block(common::LoopDev),
}

impl Vol {
    fn opts(&self) -> serde_json::Value {
        match self {
            Vol::Directory(p) => json!({"path": s(p)}),
            Vol::Block(l) => json!({"path": l.path_str(), "kubernetes.io/fsType": "ext4"}),
        }
    }
    fn path(&self) -> &str {
        match self {
            Vol::Directory(p) => s(p),
            Vol::Block(l) => l.path_str(),
        }
    }
    /// A loop device no mount holds can be opened exclusively.
    fn assert_device_free(&self) {
        if let Vol::Block(l) = self {
            use std::os::unix::fs::OpenOptionsExt;
            let r = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_EXCL)
                .open(&l.path);
            assert!(r.is_ok(), "{} is still held: {r:?}", l.path.display());
        }
    }
}

fn filler(dir: &Path) -> PathBuf {
    dir.join("filler")
}

fn break_dir(dir: &Path, how: Break) {
    match how {
        Break::Enospc => {
            use std::io::Write;
            let mut f = std::fs::File::create(filler(dir)).unwrap();
            let block = vec![0u8; 64 << 10];
            while f.write_all(&block).is_ok() {}
            let _ = f.sync_all();
            // What is left of the last block is taken too.
            while f.write_all(&[0u8]).is_ok() {}
        }
        Break::Erofs => {
            common::sh("mount", &["-o", "remount,ro", s(dir)]);
        }
    }
}

fn heal_dir(dir: &Path, how: Break) {
    match how {
        Break::Enospc => std::fs::remove_file(filler(dir)).unwrap(),
        Break::Erofs => {
            common::sh("mount", &["-o", "remount,rw", s(dir)]);
        }
    }
}

fn publish_records(d: &Daemon) -> usize {
    std::fs::read_dir(d.run_dir().join("publish"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "json")
        })
        .count()
}

/// Waits (at most 15 s: the reconciler runs every second) until nothing of the volume is
/// left: no mount under the tree, no stage record claiming a mount, no publish record.
#[track_caller]
fn assert_converges_to_nothing(d: &Daemon, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        // The test's own tmpfs under the state or run dir is not the volume's.
        let mounts: Vec<PathBuf> = d
            .mounts()
            .into_iter()
            .filter(|m| *m != d.state_dir() && *m != d.run_dir())
            .collect();
        let active = d.active_stage_records();
        let publishes = publish_records(d);
        if mounts.is_empty() && active.is_empty() && publishes == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: still mounted {mounts:?}, active stage records {active:?}, {publishes} publish record(s); log:\n{}",
            d.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A daemon whose state or run dir is a small tmpfs of its own, reconciling every second,
/// paused once at `pause` (when given) until the test says go on.
fn daemon_on_tmpfs(dir: Dir, pause: Option<&str>) -> Daemon {
    let mut d = Daemon::start();
    d.stop();
    let at = match dir {
        Dir::State => d.state_dir(),
        Dir::Run => d.run_dir(),
    };
    common::sh(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=2m,mode=0700",
            "journal-it",
            s(&at),
        ],
    );
    d.extra_args = vec!["--reconcile-interval-seconds".into(), "1".into()];
    if let Some(point) = pause {
        d.pause_and_resume_at(point);
    }
    d.spawn();
    d
}

fn run_case(dir: Dir, how: Break, op: Op, block: bool) {
    require_privileged_sandbox();
    // Where the write that fails comes: the Staged record after the stage was mounted, the
    // Published record after the bind, the removal of the publish record after the unbind;
    // for the state dir's unmount, the unstage's first write (no pause needed).
    let pause = match (dir, op) {
        (Dir::State, Op::Mount) => Some("stage:mounted"),
        (Dir::Run, Op::Mount) => Some("publish:bound"),
        (Dir::Run, Op::Unmount) => Some("unpublish:unmounted"),
        (Dir::State, Op::Unmount) => None,
    };
    let d = daemon_on_tmpfs(dir, pause);
    let broken = match dir {
        Dir::State => d.state_dir(),
        Dir::Run => d.run_dir(),
    };
    let vol = if block {
        Vol::Block(common::LoopDev::new(64))
    } else {
        Vol::Directory(source(&d, "ssd"))
    };
    let pod_dir = d.pod_dir("pod-a", "vol");
    let stage = d.stage_path(vol.path());

    match op {
        Op::Mount => {
            std::fs::create_dir_all(&pod_dir).unwrap();
            let mut o = vol.opts();
            let m = o.as_object_mut().unwrap();
            m.insert("kubernetes.io/pod.uid".into(), "pod-a".into());
            m.insert("kubernetes.io/readwrite".into(), "rw".into());
            let call = Command::new(d.driver_link())
                .args(["mount", s(&pod_dir), &o.to_string()])
                .env("MOOR_SOCKET", d.socket())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let marker = d.root.path().join("paused");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while !marker.exists() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "never paused; log:\n{}",
                    d.log_text()
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            break_dir(&broken, how);
            std::fs::write(d.root.path().join("resume"), "").unwrap();
            let out = call.wait_with_output().unwrap();
            let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(reply["status"], "Failure", "{reply}");
            // kubelet was told it failed: the pod dir is not left mounted.
            assert!(
                !is_mounted(&pod_dir),
                "pod dir left mounted after a failed mount"
            );
            if dir == Dir::State {
                // The stage was rolled back at once (only its record waits for the journal).
                assert!(
                    !is_mounted(&stage),
                    "stage left mounted after a failed mount"
                );
                vol.assert_device_free();
            }
        }
        Op::Unmount => {
            d.mount("pod-a", "vol", vol.opts()).assert_ok();
            if dir == Dir::Run {
                let marker = d.root.path().join("paused");
                let unmount = {
                    let (link, sock, pd) = (d.driver_link(), d.socket(), pod_dir.clone());
                    std::thread::spawn(move || {
                        Command::new(link)
                            .args(["unmount", s(&pd)])
                            .env("MOOR_SOCKET", sock)
                            .output()
                            .unwrap()
                    })
                };
                while !marker.exists() {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                break_dir(&broken, how);
                std::fs::write(d.root.path().join("resume"), "").unwrap();
                let out = unmount.join().unwrap();
                let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                assert_eq!(reply["status"], "Failure", "{reply}");
            } else {
                break_dir(&broken, how);
                let r = d.flex(&["unmount", s(&pod_dir)]);
                assert_eq!(r.status(), "Failure", "{}", r.json);
            }
            assert!(!is_mounted(&pod_dir), "the pod's bind is gone");
            // kubelet's retry while the journal is still broken must not hear "not mounted"
            // while the stage is still there.
            let retry = d.flex(&["unmount", s(&pod_dir)]);
            assert!(
                !retry.ok() || !is_mounted(&stage),
                "retry answered Success with the stage still mounted: {}",
                retry.json
            );
        }
    }

    heal_dir(&broken, how);
    assert_converges_to_nothing(&d, &format!("{dir:?} {how:?} {op:?}"));
    vol.assert_device_free();
    // kubelet's retry (mount: it retries, then the pod goes; unmount: its retry) converges.
    if op == Op::Unmount {
        d.unmount("pod-a", "vol").assert_ok();
    }
    // The same volume works again, through a full mount and unmount.
    d.mount("pod-b", "vol", vol.opts()).assert_ok();
    assert!(is_mounted(&d.pod_dir("pod-b", "vol")));
    d.unmount("pod-b", "vol").assert_ok();
    let _ = std::fs::remove_dir(&pod_dir);
    assert_converges_to_nothing(&d, "after a later mount and unmount");
    vol.assert_device_free();
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn state_dir_full_during_mount_of_a_directory() {
    run_case(Dir::State, Break::Enospc, Op::Mount, false);
}
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn state_dir_full_during_mount_of_a_block_volume() {
    run_case(Dir::State, Break::Enospc, Op::Mount, true);
}
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn state_dir_read_only_during_mount_of_a_directory() {
    run_case(Dir::State, Break::Erofs, Op::Mount, false);
}
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn state_dir_read_only_during_mount_of_a_block_volume() {
    run_case(Dir::State, Break::Erofs, Op::Mount, true);
}
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn state_dir_full_during_unmount_of_a_directory() {
    run_case(Dir::State, Break::Enospc, Op::Unmount, false);
}
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn state_dir_full_during_unmount_of_a_block_volume() {
    run_case(Dir::State, Break::Enospc, Op::Unmount, true);
}
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn state_dir_read_only_during_unmount_of_a_directory() {
    run_case(Dir::State, Break::Erofs, Op::Unmount, false);
}
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn state_dir_read_only_during_unmount_of_a_block_volume() {
    run_case(Dir::State, Break::Erofs, Op::Unmount, true);
}
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn run_dir_full_during_mount_of_a_block_volume() {
    run_case(Dir::Run, Break::Enospc, Op::Mount, true);
}
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn run_dir_read_only_during_unmount_of_a_block_volume() {
    run_case(Dir::Run, Break::Erofs, Op::Unmount, true);
}
