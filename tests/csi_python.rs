//! CSI through a client that shares no code with moor (tier 2: root, real bind mounts, a
//! real daemon with its CSI front end on).
//!
//! `tests/csi/moor_csi.py` compiles `proto/csi.proto` with Debian's `grpc_tools.protoc` at
//! run time and calls `local.csi.moor.io`'s socket with Python `grpcio`, as kubelet would:
//! kubelet's staging and target paths, kubelet's mkdirs, the pod keys of `podInfoOnMount`.
//! What a user checks: the directory's files appear at the target and a write through the
//! target lands in the directory; kubelet's staging path is never mounted on; a request
//! without a volume_id is `INVALID_ARGUMENT`; NodeGetVolumeStats gives the directory's
//! filesystem's bytes and inodes with a normal condition, and `NOT_FOUND` for a volume_id
//! moor does not have; unpublish and unstage (each twice: the spec's idempotency) leave no
//! mount and keep the data. A wire disagreement between
//! moor's Rust code and its `.proto` shows up here as a failed call.
//!
//! Without a python3 that imports `grpc` and `grpc_tools` (Debian's `python3-grpcio` and
//! `python3-grpc-tools`, which `run-tests` installs) the test says so on stderr and passes
//! without running: the only case it does not run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Daemon, is_mounted, require_privileged_sandbox, s, source};
use serde_json::Value;
use sha2::{Digest, Sha256};

const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/csi/moor_csi.py");

/// A python3 with grpcio and grpc_tools: `MOOR_TEST_PYTHON`, then `python3` on PATH, then
/// Debian's own (a pyenv or venv python on PATH lacks Debian's packages).
fn python() -> Option<String> {
    let candidates = std::env::var("MOOR_TEST_PYTHON")
        .into_iter()
        .chain(["python3".to_owned(), "/usr/bin/python3".to_owned()]);
    candidates.into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import grpc, grpc_tools"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// What one client run answered: the reply, or the gRPC code name and message.
#[derive(Debug)]
enum Answer {
    Ok(Value),
    Err { code: String, message: String },
}

struct Client {
    python: String,
    socket: PathBuf,
}

impl Client {
    fn run(&self, rpc: &str, args: &[&str]) -> Answer {
        let out = Command::new(&self.python)
            .arg(CLIENT)
            .arg("--socket")
            .arg(&self.socket)
            .args(["--timeout", "30", rpc])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        match out.status.code() {
            Some(0) => Answer::Ok(serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
                panic!(
                    "{rpc}: stdout is not one JSON object ({e}): {:?}",
                    out.stdout
                )
            })),
            Some(1) => {
                let (code, message) = stderr
                    .split_once(": ")
                    .unwrap_or_else(|| panic!("{rpc}: stderr not 'CODE: message': {stderr}"));
                Answer::Err {
                    code: code.to_owned(),
                    message: message.to_owned(),
                }
            }
            other => panic!("{rpc}: the client exited {other:?}: {stderr}"),
        }
    }

    #[track_caller]
    fn ok(&self, rpc: &str, args: &[&str]) -> Value {
        match self.run(rpc, args) {
            Answer::Ok(v) => v,
            e => panic!("{rpc} {args:?}: {e:?}"),
        }
    }
}

/// kubelet's staging path of a filesystem volume of `driver`.
fn kubelet_staging(kubelet: &Path, driver: &str, volume_id: &str) -> PathBuf {
    let sha = Sha256::digest(volume_id.as_bytes());
    let hex: String = sha.iter().map(|b| format!("{b:02x}")).collect();
    kubelet
        .join("plugins/kubernetes.io/csi")
        .join(driver)
        .join(hex)
        .join("globalmount")
}

/// A local directory volume staged and published through the client as kubelet does it.
struct Published {
    client: Client,
    src: PathBuf,
    volume_id: &'static str,
    staging: PathBuf,
    target: PathBuf,
    stage_args: Vec<String>,
}

/// Starts a daemon with CSI on and stages + publishes a local directory through the client.
/// A machine without python3-grpcio fails the test: run-tests installs it, and a skip would
/// pass without running.
fn stage_and_publish() -> (Daemon, Published) {
    require_privileged_sandbox();
    let python = python().unwrap_or_else(|| {
        panic!(
            "no python3 with grpcio and grpc_tools (apt-get install python3-grpcio \
             python3-grpc-tools; run-tests installs them)"
        )
    });
    let d = Daemon::start_with_csi();
    let kubelet = d.kubelet_dir();
    let client = Client {
        python,
        socket: d.csi_socket("local"),
    };
    let probe = client.ok("Probe", &[]);
    assert_eq!(probe["ready"]["value"], true, "Probe: {probe}");
    let info = client.ok("GetPluginInfo", &[]);
    assert_eq!(info["name"], "local.csi.moor.io", "{info}");

    let src = source(&d, "csi-dir");
    let volume_id = "local-pv-0001";
    let staging = kubelet_staging(&kubelet, "local.csi.moor.io", volume_id);
    std::fs::create_dir_all(&staging).unwrap(); // kubelet makes it
    let stage_args: Vec<String> = [
        "--volume-id",
        volume_id,
        "--attr",
        &format!("path={}", s(&src)),
        "--access-mode",
        "SINGLE_NODE_WRITER",
        "--staging",
        s(&staging),
    ]
    .map(String::from)
    .to_vec();
    let stage: Vec<&str> = stage_args.iter().map(String::as_str).collect();
    client.ok("NodeStageVolume", &stage);
    assert!(
        !is_mounted(&staging),
        "moor mounted on kubelet's staging path"
    );

    let uid = "c5000000-0000-4000-8000-000000000001";
    let target = kubelet.join(format!(
        "pods/{uid}/volumes/kubernetes.io~csi/pv-0001/mount"
    ));
    std::fs::create_dir_all(target.parent().unwrap()).unwrap(); // kubelet makes the parent
    let mut publish = stage.clone();
    publish.extend(["--target", s(&target), "--pod-uid", uid]);
    client.ok("NodePublishVolume", &publish);
    assert!(
        is_mounted(&target),
        "nothing mounted at {}",
        target.display()
    );
    let published = Published {
        client,
        src,
        volume_id,
        staging,
        target,
        stage_args,
    };
    (d, published)
}

impl Published {
    /// Unpublish, then unstage: no mount left, the data kept.
    fn tear_down(&self, d: &Daemon) {
        let (c, vol) = (&self.client, self.volume_id);
        c.ok(
            "NodeUnpublishVolume",
            &["--volume-id", vol, "--target", s(&self.target)],
        );
        assert!(!is_mounted(&self.target));
        assert!(
            !self.target.exists(),
            "unpublish left {}",
            self.target.display()
        );
        c.ok(
            "NodeUnstageVolume",
            &["--volume-id", vol, "--staging", s(&self.staging)],
        );
        assert_eq!(
            d.mounts(),
            Vec::<PathBuf>::new(),
            "mounts left after unstage"
        );
        assert_eq!(
            std::fs::read_to_string(self.src.join("existing")).unwrap(),
            "already here"
        );
    }
}

#[test]
#[ignore = "tier 2: needs root, a private mount namespace and python3-grpcio (run-tests)"]
fn python_client_stages_publishes_and_unstages_a_local_directory() {
    let (d, v) = stage_and_publish();
    assert_eq!(
        std::fs::read_to_string(v.target.join("existing")).unwrap(),
        "already here"
    );
    std::fs::write(v.target.join("from-pod"), "written through the CSI target").unwrap();
    assert_eq!(
        std::fs::read_to_string(v.src.join("from-pod")).unwrap(),
        "written through the CSI target"
    );

    // kubelet never sends this, a broken CO might: the spec's code, naming the field.
    let no_id: Vec<&str> = v.stage_args[2..].iter().map(String::as_str).collect();
    match v.client.run("NodeStageVolume", &no_id) {
        Answer::Err { code, message } => {
            assert_eq!(code, "INVALID_ARGUMENT", "{message}");
            assert!(message.contains("volume_id"), "{message}");
        }
        other => panic!("a stage without volume_id answered {other:?}"),
    }

    v.tear_down(&d);
    assert_eq!(
        std::fs::read_to_string(v.src.join("from-pod")).unwrap(),
        "written through the CSI target"
    );
    // Idempotent per the spec: both again answer OK.
    v.tear_down(&d);
}

/// `stat -f` of `dir`: (bytes, inodes) of its filesystem.
fn fs_size(dir: &Path) -> (u64, u64) {
    let out = common::sh("stat", &["-f", "-c", "%b %S %c", s(dir)]);
    let n: Vec<u64> = out.split_whitespace().map(|w| w.parse().unwrap()).collect();
    (n[0] * n[1], n[2])
}

fn usage(stats: &Value, unit: &str, field: &str) -> u64 {
    stats["usage"]
        .as_array()
        .and_then(|u| u.iter().find(|x| x["unit"] == unit))
        .and_then(|x| x[field].as_u64())
        .unwrap_or_else(|| panic!("no {unit} {field} in {stats}"))
}

#[test]
#[ignore = "tier 2: needs root, a private mount namespace and python3-grpcio (run-tests)"]
fn python_client_reads_the_stats_of_a_published_local_directory() {
    let (d, v) = stage_and_publish();
    let stats = v.client.ok(
        "NodeGetVolumeStats",
        &["--volume-id", v.volume_id, "--volume-path", s(&v.target)],
    );
    let (bytes, inodes) = fs_size(&v.src);
    assert_eq!(usage(&stats, "BYTES", "total"), bytes, "{stats}");
    assert_eq!(usage(&stats, "INODES", "total"), inodes, "{stats}");
    let used = usage(&stats, "BYTES", "used");
    assert!(used > 0 && used <= bytes, "{stats}");
    assert_eq!(
        stats["volume_condition"]["abnormal"], false,
        "a healthy directory reported abnormal: {stats}"
    );
    match v.client.run(
        "NodeGetVolumeStats",
        &[
            "--volume-id",
            "local-pv-none",
            "--volume-path",
            s(&v.target),
        ],
    ) {
        Answer::Err { code, message } => {
            assert_eq!(code, "NOT_FOUND", "{message}");
            assert!(message.starts_with("unknown_volume"), "{message}");
        }
        other => panic!("stats of an unknown volume_id answered {other:?}"),
    }
    v.tear_down(&d);
}
