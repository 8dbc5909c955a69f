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

use common::{Daemon, is_mounted, require_privileged_sandbox};
use serde_json::json;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A source directory outside the kubelet dir with one file in it.
fn source(d: &Daemon, name: &str) -> PathBuf {
    let dir = d.root.path().join("disks").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("existing"), "already here").unwrap();
    dir
}

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

/// A free local TCP port for the daemon's metrics.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn metrics(port: u16) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    c.read_to_string(&mut body).unwrap();
    body
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
    let text = metrics(port);
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
fn a_second_daemon_on_the_same_state_dir_is_refused() {
    require_privileged_sandbox();
    let d = Daemon::start();
    let src = source(&d, "ssd");
    d.mount("pod-a", "vol", json!({"path": s(&src)}))
        .assert_ok();
    let first_pid = d.child.as_ref().unwrap().id();
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
