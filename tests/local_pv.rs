//! Local persistent volumes on the host (tier 2: root, real loop devices, real bind mounts, a
//! real daemon and the real `moor local` commands).
//!
//! What an operator checks: `moor local discover` prints one PV per discovery-directory entry
//! with the measured capacity, this node's affinity and the disk's stable id (filesystem UUID
//! plus bind root, a `/dev/disk/by-id` name — never `/dev/loopN`); `moor local wipe` refuses
//! an entry a pod uses (asked of the daemon and of the mount table), empties a released
//! directory entry without crossing a mount inside it, erases a released disk so `blkid` finds
//! nothing, and a wipe interrupted by a crash is resumed by the daemon before the entry is
//! offered again. With a (fake, HTTP) API server the daemon creates the PVs, publishes a new
//! entry on its inotify event, recycles a Released PV (wipe, delete, rediscover) but not one
//! whose disk is mounted, marks a vanished disk's PV without deleting it, and a recycled disk
//! is formatted afresh for the next claim.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::host::{mkfs, probe, read_at, write_at};
use common::{Daemon, LoopDev, require_privileged_sandbox, s, sh};
use serde_json::json;

/// A node with two classes: `fast` (Filesystem: a bind-mounted directory of an ext4 disk
/// and a blank disk moor would format) and `raw` (Block), a fake host `/dev` holding the
/// by-id links, and a config file for `moor local`.
struct Node {
    d: Daemon,
    backing: LoopDev,
    disk: LoopDev,
    raw: LoopDev,
    config: PathBuf,
}

impl Node {
    fn root(&self) -> &Path {
        self.d.root.path()
    }
    fn fast(&self) -> PathBuf {
        self.root().join("disks/fast")
    }
    fn rawdir(&self) -> PathBuf {
        self.root().join("disks/raw")
    }
    fn backing_mnt(&self) -> PathBuf {
        self.root().join("backing")
    }

    fn new() -> Self {
        require_privileged_sandbox();
        let d = Daemon::start();
        let root = d.root.path().to_owned();
        let backing = LoopDev::new(64);
        mkfs(&backing.path, "ext4");
        let mnt = root.join("backing");
        std::fs::create_dir_all(&mnt).unwrap();
        sh("mount", &[backing.path_str(), s(&mnt)]);
        std::fs::create_dir_all(mnt.join("vol1/data")).unwrap();
        std::fs::write(mnt.join("vol1/data/file"), "old tenant's data").unwrap();
        std::fs::write(mnt.join("outside-entry"), "not in the entry").unwrap();
        let fast = root.join("disks/fast");
        let rawdir = root.join("disks/raw");
        std::fs::create_dir_all(fast.join("e1")).unwrap();
        std::fs::create_dir_all(fast.join("not-mounted")).unwrap();
        std::fs::create_dir_all(&rawdir).unwrap();
        sh(
            "mount",
            &["--bind", s(&mnt.join("vol1")), s(&fast.join("e1"))],
        );

        // A fake host /dev: by-id links and the nodes they name, as a DaemonSet sees the
        // host's /dev under another path.
        let disk = LoopDev::new(64);
        let raw = LoopDev::new(64);
        let hostdev = root.join("hostdev");
        std::fs::create_dir_all(hostdev.join("disk/by-id")).unwrap();
        std::fs::create_dir_all(root.join("udev")).unwrap();
        for (dev, id) in [(&backing, "backing"), (&disk, "disk"), (&raw, "raw")] {
            let name = dev.path.file_name().unwrap();
            std::os::unix::fs::symlink(&dev.path, hostdev.join(name)).unwrap();
            std::os::unix::fs::symlink(
                &dev.path,
                hostdev.join(format!(
                    "disk/by-id/moor-test-{id}-{}",
                    name.to_string_lossy()
                )),
            )
            .unwrap();
        }
        let by_id = |id: &str, dev: &LoopDev| {
            hostdev.join(format!(
                "disk/by-id/moor-test-{id}-{}",
                dev.path.file_name().unwrap().to_string_lossy()
            ))
        };
        std::os::unix::fs::symlink(by_id("disk", &disk), fast.join("d1")).unwrap();
        std::os::unix::fs::symlink(by_id("raw", &raw), rawdir.join("r1")).unwrap();

        let config = root.join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "kubelet-dir: {k}\nstate-dir: {st}\nrun-dir: {rn}\nnode-name: node-it\nlocal:\n  kubernetes: off\n  resync-seconds: 1\n  dev-dir: {hd}\n  udev-dir: {ud}\n  classes:\n    - name: fast\n      discovery-dir: {fast}\n      fs-type: ext4\n      node-labels: {{topology.kubernetes.io/zone: z1}}\n    - name: raw\n      discovery-dir: {raw}\n      volume-mode: Block\n      wipe: zero-ends\n",
                k = s(&d.kubelet_dir()),
                st = s(&d.state_dir()),
                rn = s(&d.run_dir()),
                hd = s(&hostdev),
                ud = s(&root.join("udev")),
                fast = s(&fast),
                raw = s(&rawdir),
            ),
        )
        .unwrap();
        Node {
            d,
            backing,
            disk,
            raw,
            config,
        }
    }

    /// Runs `moor local <args…>` with this node's config and the daemon's socket.
    fn local(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_moor"))
            .arg("local")
            .args(args)
            .args(["--config", s(&self.config), "--socket", s(&self.d.socket())])
            .env_remove("MOOR_CONFIG")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn discover_json(&self) -> (Vec<serde_json::Value>, String) {
        let (code, out, err) = self.local(&["discover", "-o", "json"]);
        assert_eq!(code, Some(0), "{out}{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        (v["items"].as_array().unwrap().clone(), err)
    }

    fn wipe(&self, entry: &Path) -> (Option<i32>, String, String) {
        self.local(&["wipe", s(entry)])
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        common::unmount_all(self.d.root.path());
    }
}

fn by_entry<'a>(pvs: &'a [serde_json::Value], entry: &Path) -> &'a serde_json::Value {
    pvs.iter()
        .find(|p| p["metadata"]["annotations"]["moor.io/entry"] == s(entry))
        .unwrap_or_else(|| panic!("no PV for {}: {pvs:#?}", entry.display()))
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn discover_prints_pvs_with_capacity_affinity_and_stable_ids() {
    let n = Node::new();
    let (pvs, stderr) = n.discover_json();
    assert_eq!(pvs.len(), 3, "{pvs:#?}\n{stderr}");
    assert!(
        stderr.contains("not-mounted") && stderr.contains("not a mount point"),
        "{stderr}"
    );

    // The bind-mounted directory: the filesystem UUID plus the bind root.
    let uuid = probe(&n.backing.path)["UUID"].clone();
    let e1 = by_entry(&pvs, &n.fast().join("e1"));
    assert_eq!(
        e1["metadata"]["annotations"]["moor.io/stable-id"],
        format!("fs-{uuid}:/vol1")
    );
    let vfs = nix::sys::statvfs::statvfs(&n.fast().join("e1")).unwrap();
    let bytes = vfs.blocks() as u64 * vfs.fragment_size() as u64;
    let cap = e1["spec"]["capacity"]["storage"].as_str().unwrap();
    let cap_bytes: u64 = if let Some(k) = cap.strip_suffix("Ki") {
        k.parse::<u64>().unwrap() << 10
    } else if let Some(m) = cap.strip_suffix("Mi") {
        m.parse::<u64>().unwrap() << 20
    } else {
        cap.parse().unwrap()
    };
    assert_eq!(cap_bytes, bytes, "{cap}");
    assert_eq!(e1["spec"]["storageClassName"], "fast");
    assert_eq!(e1["spec"]["volumeMode"], "Filesystem");
    assert_eq!(e1["spec"]["flexVolume"]["driver"], "moor/local");
    assert_eq!(
        e1["spec"]["flexVolume"]["options"],
        json!({"path": s(&n.fast().join("e1")), "node": "node-it"})
    );
    assert_eq!(
        e1["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"],
        json!([
            {"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-it"]},
            {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["z1"]}
        ])
    );
    let name = e1["metadata"]["name"].as_str().unwrap();
    assert!(
        name.starts_with("moor-node-it-fast-") && name.len() <= 63,
        "{name}"
    );
    assert_eq!(
        e1["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "moor"
    );

    // A disk in a Filesystem class: moor formats it if blank, with the class's fsType.
    let d1 = by_entry(&pvs, &n.fast().join("d1"));
    let loop_name = n
        .disk
        .path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(
        d1["metadata"]["annotations"]["moor.io/stable-id"],
        format!("by-id-moor-test-disk-{loop_name}")
    );
    assert_eq!(d1["spec"]["capacity"]["storage"], "64Mi");
    assert_eq!(d1["spec"]["flexVolume"]["fsType"], "ext4");

    // A Block class: the raw device through the in-tree local source.
    let r1 = by_entry(&pvs, &n.rawdir().join("r1"));
    assert_eq!(r1["spec"]["volumeMode"], "Block");
    assert_eq!(r1["spec"]["local"]["path"], s(&n.rawdir().join("r1")));
    assert!(r1["spec"].get("flexVolume").is_none());

    // Never a kernel name in an identity.
    for p in &pvs {
        let id = p["metadata"]["annotations"]["moor.io/stable-id"]
            .as_str()
            .unwrap();
        assert!(!id.contains("/dev/loop"), "{id}");
    }

    // The YAML form is what `kubectl apply -f -` takes: the same names, deterministic.
    let (code, yaml, _) = n.local(&["discover"]);
    assert_eq!(code, Some(0));
    assert_eq!(yaml.matches("kind: PersistentVolume").count(), 3, "{yaml}");
    assert!(yaml.contains(name), "{yaml}");
    assert_eq!(n.local(&["discover"]).1, yaml);
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn wipe_refuses_a_used_entry_and_never_crosses_a_nested_mount() {
    let mut n = Node::new();
    let e1 = n.fast().join("e1");
    // A pod uses the entry through moor~local/local.
    n.d.mount("pod-a", "vol", json!({"path": s(&e1), "node": "node-it"}))
        .assert_ok();
    let (code, _, err) = n.wipe(&e1);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("in_use") && err.contains("refusing to wipe"),
        "{err}"
    );
    // With the daemon down the mount table alone still says no.
    n.d.stop();
    let (code, _, err) = n.wipe(&e1);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("also mounted at"), "{err}");
    n.d.spawn();
    n.d.unmount("pod-a", "vol").assert_ok();

    // Something the wipe must not cross: a mount inside the entry.
    std::fs::create_dir_all(e1.join("nested")).unwrap();
    sh(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=1m",
            "nested",
            s(&e1.join("nested")),
        ],
    );
    std::fs::write(e1.join("nested/keep"), "another filesystem").unwrap();
    std::fs::create_dir_all(e1.join("a/b/c")).unwrap();
    std::fs::write(e1.join("a/b/c/deep"), "x").unwrap();
    std::os::unix::fs::symlink(n.backing_mnt().join("outside-entry"), e1.join("link-out")).unwrap();

    // Never outside a discovery directory, never a directory that is not a mount point.
    let (code, _, err) = n.wipe(&n.backing_mnt());
    assert_eq!(code, Some(1));
    assert!(err.contains("not an entry"), "{err}");
    let (code, _, err) = n.wipe(&n.fast().join("not-mounted"));
    assert_eq!(code, Some(1));
    assert!(err.contains("not a mount point"), "{err}");

    let (code, out, err) = n.wipe(&e1);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("left untouched") && out.contains("nested"),
        "{out}"
    );
    let mut left: Vec<String> = std::fs::read_dir(&e1)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["nested"]);
    assert_eq!(
        std::fs::read_to_string(e1.join("nested/keep")).unwrap(),
        "another filesystem"
    );
    assert_eq!(
        std::fs::read_to_string(n.backing_mnt().join("outside-entry")).unwrap(),
        "not in the entry"
    );
    assert!(!n.backing_mnt().join("vol1/data").exists());
    // The command-line wipe leaves no record behind.
    assert_eq!(
        std::fs::read_dir(n.d.state_dir().join("wipe"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_block_entry_is_wiped_so_blkid_finds_nothing() {
    let n = Node::new();
    let d1 = n.fast().join("d1");
    mkfs(&n.disk.path, "ext4");
    assert_eq!(probe(&n.disk.path)["TYPE"], "ext4");
    // Mounted somewhere: refused (mount table, and the kernel's exclusive open).
    let mnt = n.root().join("elsewhere");
    std::fs::create_dir_all(&mnt).unwrap();
    sh("mount", &[n.disk.path_str(), s(&mnt)]);
    let (code, _, err) = n.wipe(&d1);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("is mounted at"), "{err}");
    sh("umount", &[s(&mnt)]);
    let (code, out, err) = n.wipe(&d1);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(probe(&n.disk.path).is_empty(), "{:?}", probe(&n.disk.path));

    // zero-ends: the first and last MiB read as zeroes, the middle is untouched.
    write_at(&n.raw.path, 0, &[0xab; 4096]);
    write_at(&n.raw.path, (64 << 20) - 4096, &[0xcd; 4096]);
    write_at(&n.raw.path, 32 << 20, b"middle");
    let (code, out, err) = n.wipe(&n.rawdir().join("r1"));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(read_at(&n.raw.path, 0, 1 << 20).iter().all(|b| *b == 0));
    assert!(
        read_at(&n.raw.path, (63 << 20) as u64, 1 << 20)
            .iter()
            .all(|b| *b == 0)
    );
    assert_eq!(read_at(&n.raw.path, 32 << 20, 6), b"middle");
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn an_interrupted_wipe_holds_the_entry_back_and_the_daemon_resumes_it() {
    let mut n = Node::new();
    let e1 = n.fast().join("e1");
    let (pvs, _) = n.discover_json();
    let id = by_entry(&pvs, &e1)["metadata"]["annotations"]["moor.io/stable-id"]
        .as_str()
        .unwrap()
        .to_owned();
    // What a crash right after the record was written leaves behind.
    let rec = moor::local::wipe::WipeRecord {
        entry: e1.clone(),
        class: "fast".into(),
        stable_id: id.clone(),
        pv: None,
        method: "contents".into(),
        phase: moor::local::wipe::WipePhase::Started,
        started: 1,
        finished: None,
        error: None,
        nested_mounts_left: vec![],
    };
    moor::local::wipe::put_record(&n.d.state_dir(), &rec).unwrap();
    let (pvs, err) = n.discover_json();
    assert_eq!(pvs.len(), 2, "half-wiped entry published: {pvs:#?}");
    assert!(err.contains("unfinished"), "{err}");

    // The daemon, started with the local config, finishes it.
    n.d.stop();
    n.d.extra_args = vec!["--config".into(), s(&n.config).into()];
    n.d.spawn();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !moor::local::wipe::load_records(&n.d.state_dir())
        .0
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "wipe not resumed; log:\n{}",
            n.d.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!n.backing_mnt().join("vol1/data").exists());
    assert!(
        n.d.log_text().contains("resuming a wipe"),
        "{}",
        n.d.log_text()
    );
    let (pvs, err) = n.discover_json();
    assert_eq!(pvs.len(), 3, "{err}");
}

/// The fake API server of `moor::testkit::fakeapi` (list + watch, as the daemon now uses),
/// seen through the few questions this test asks.
mod fake_api {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use moor::testkit::fakeapi::FakeApi;

    pub struct Server(Arc<FakeApi>);

    /// Starts the server on its own runtime; returns it, its address and the runtime.
    pub fn start() -> (Arc<Server>, String, tokio::runtime::Runtime) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let api = rt.block_on(FakeApi::start());
        let addr = api.url.trim_start_matches("http://").to_owned();
        (Arc::new(Server(api)), addr, rt)
    }

    impl Server {
        /// The PVs by name.
        pub fn pvs(&self) -> BTreeMap<String, serde_json::Value> {
            self.0
                .all("persistentvolumes")
                .into_iter()
                .map(|o| (o["metadata"]["name"].as_str().unwrap().to_owned(), o))
                .collect()
        }
        /// The PVs moor deleted.
        pub fn deleted(&self) -> Vec<String> {
            self.0.deleted_by_requests("persistentvolumes")
        }
        pub fn by_entry(&self, entry: &std::path::Path) -> Option<serde_json::Value> {
            self.pvs()
                .into_values()
                .find(|o| o["metadata"]["annotations"]["moor.io/entry"] == entry.to_str().unwrap())
        }
        /// What the API server's PV controller does: a change the watch reports.
        pub fn set_phase(&self, name: &str, phase: &str) {
            let mut o = self.pvs()[name].clone();
            o["status"]["phase"] = phase.into();
            self.0.put("persistentvolumes", o);
        }
    }
}

impl Node {
    /// Restarts the daemon with the local config, `kubernetes: auto`, the given resync period
    /// and a kubeconfig that names a fake API server; returns the server and its runtime.
    fn restart_with_api(
        &mut self,
        resync_seconds: u64,
    ) -> (std::sync::Arc<fake_api::Server>, tokio::runtime::Runtime) {
        let (api, addr, rt) = fake_api::start();
        let kubeconfig = self.root().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: 'http://{addr}'}}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context: {{cluster: fake, user: u}}\ncurrent-context: c\n"
            ),
        )
        .unwrap();
        let text = std::fs::read_to_string(&self.config)
            .unwrap()
            .replace("kubernetes: off", "kubernetes: auto")
            .replace(
                "resync-seconds: 1\n",
                &format!("resync-seconds: {resync_seconds}\n"),
            );
        std::fs::write(&self.config, text).unwrap();
        self.d.stop();
        self.d.extra_args = vec!["--config".into(), s(&self.config).into()];
        self.d
            .extra_env
            .push(("KUBECONFIG".into(), s(&kubeconfig).into()));
        self.d.spawn();
        (api, rt)
    }
}

fn wait_until(what: &str, d: &Daemon, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; daemon log:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn the_daemon_publishes_recycles_and_marks_pvs_through_the_api_server() {
    let mut n = Node::new();
    let (api, _rt) = n.restart_with_api(1);

    let e1 = n.fast().join("e1");
    let d1 = n.fast().join("d1");
    let r1 = n.rawdir().join("r1");
    wait_until("3 PVs", &n.d, || api.pvs().len() == 3);
    let pv_e1 = api.by_entry(&e1).unwrap();
    let name_e1 = pv_e1["metadata"]["name"].as_str().unwrap().to_owned();
    let uid_e1 = pv_e1["metadata"]["uid"].as_str().unwrap().to_owned();

    // A claim used e1 and was deleted: Released. moor wipes it, deletes the PV, and
    // discovers the entry afresh: the same name, a new object.
    std::fs::write(e1.join("tenant-file"), "x").unwrap();
    api.set_phase(&name_e1, "Released");
    wait_until("e1 recycled", &n.d, || {
        api.by_entry(&e1)
            .is_some_and(|p| p["metadata"]["uid"] != uid_e1.as_str())
    });
    assert_eq!(api.deleted(), vec![name_e1.clone()]);
    assert!(!e1.join("tenant-file").exists());
    assert!(!n.backing_mnt().join("vol1/data").exists());
    assert!(
        moor::local::wipe::load_records(&n.d.state_dir())
            .0
            .is_empty()
    );

    // A Released disk that is mounted somewhere is not wiped and its PV stays.
    let pv_d1 = api.by_entry(&d1).unwrap();
    let name_d1 = pv_d1["metadata"]["name"].as_str().unwrap().to_owned();
    mkfs(&n.disk.path, "ext4");
    let mnt = n.root().join("busy");
    std::fs::create_dir_all(&mnt).unwrap();
    sh("mount", &[n.disk.path_str(), s(&mnt)]);
    api.set_phase(&name_d1, "Released");
    wait_until("a refusal in the log", &n.d, || {
        n.d.log_text().contains("released local PV not recycled")
    });
    assert!(api.pvs().contains_key(&name_d1));
    assert_eq!(probe(&n.disk.path)["TYPE"], "ext4");
    sh("umount", &[s(&mnt)]);
    wait_until("d1 recycled", &n.d, || api.deleted().contains(&name_d1));
    assert!(probe(&n.disk.path).is_empty());

    // The raw disk disappears: its PV is marked, never deleted.
    let name_r1 = api.by_entry(&r1).unwrap()["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    std::fs::remove_file(&r1).unwrap();
    wait_until("r1 marked missing", &n.d, || {
        api.pvs()[&name_r1]["metadata"]["annotations"]["moor.io/missing-since"].is_string()
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(api.pvs().contains_key(&name_r1));
    assert!(!api.deleted().contains(&name_r1));
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_recycled_disk_is_formatted_again_for_the_next_claim() {
    let n = Node::new();
    let d1 = n.fast().join("d1");
    let opts = json!({"path": s(&d1), "node": "node-it", "kubernetes.io/fsType": "ext4"});
    // The first tenant: moor formats the blank disk and remembers its filesystem.
    n.d.mount("pod-a", "vol", opts.clone()).assert_ok();
    std::fs::write(n.d.pod_dir("pod-a", "vol").join("tenant"), "a").unwrap();
    let first_uuid = probe(&n.disk.path)["UUID"].clone();
    let (code, _, err) = n.wipe(&d1);
    assert_eq!(code, Some(1), "{err}");
    n.d.unmount("pod-a", "vol").assert_ok();
    let (code, out, err) = n.wipe(&d1);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(probe(&n.disk.path).is_empty());
    // The next tenant gets a fresh filesystem, not `known_volume_blank`.
    n.d.mount("pod-b", "vol", opts).assert_ok();
    assert!(!n.d.pod_dir("pod-b", "vol").join("tenant").exists());
    assert_ne!(probe(&n.disk.path)["UUID"], first_uuid);
    n.d.unmount("pod-b", "vol").assert_ok();
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_new_entry_is_published_on_its_inotify_event_not_the_resync() {
    let mut n = Node::new();
    // Start with the raw disk's link absent.
    let r1 = n.rawdir().join("r1");
    let target = std::fs::read_link(&r1).unwrap();
    std::fs::remove_file(&r1).unwrap();
    let (api, _rt) = n.restart_with_api(3600);
    wait_until("the first pass", &n.d, || api.pvs().len() == 2);
    std::os::unix::fs::symlink(&target, &r1).unwrap();
    let t0 = Instant::now();
    wait_until("r1 published", &n.d, || api.by_entry(&r1).is_some());
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
}
