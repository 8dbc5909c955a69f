//! What a local `path` may name (tier 2: root, real daemon, real front end, real mounts).
//!
//! What a user checks: a directory or device is served only from the roots the operator
//! allowed in `config.yaml`; every way out of them — host directories, pseudo filesystems,
//! moor's and kubelet's own directories, `/proc` magic links, symlinks and bind mounts inside
//! an allowed root — is refused with nothing mounted and nothing chgrp'ed; a device nobody
//! allowed is neither formatted nor mounted; and one disk reached through several names at
//! once is staged exactly once, shared by every pod, never fsck'ed while mounted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::host::{assert_failure, digest, mkfs, mount_entries_under, probe};
use common::{Daemon, LoopDev, require_privileged_sandbox, s, sh};
use serde_json::json;

/// (gid, mode) of a path, not following a final symlink.
fn owner(p: &Path) -> (u32, u32) {
    let md = std::fs::symlink_metadata(p).unwrap();
    (md.gid(), md.mode())
}

/// The mounts under the daemon's kubelet dir (moor's stages and binds).
fn moor_mounts(d: &Daemon) -> Vec<PathBuf> {
    common::mounts_under(&d.kubelet_dir())
}

/// Every escape of the list, tried with fsGroup set: refused, nothing mounted, the
/// target's group and mode unchanged.
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn no_path_leads_out_of_the_allowed_roots() {
    require_privileged_sandbox();
    let d = Daemon::start();
    let root = d.allowed_root();
    std::fs::create_dir_all(&root).unwrap();
    // Another pod's secret volume inside the kubelet dir.
    let secret = d
        .kubelet_dir()
        .join("pods/other-pod/volumes/kubernetes.io~secret/token");
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(secret.join("token"), "s3cret").unwrap();
    let link = |name: &str, to: &Path| {
        let l = root.join(name);
        std::os::unix::fs::symlink(to, &l).unwrap();
        l
    };
    let to_root = link("to-root", Path::new("/"));
    let to_etc_rel = link("to-etc", Path::new("../../../../../../../../etc"));
    let to_state = link("to-state", &d.state_dir());
    let to_secret = link("to-secret", &secret);
    let via_proc = link("via-proc", Path::new("/proc/self/root"));
    // Mounts an attacker (or a careless operator) left inside the allowed root.
    let procfs = root.join("procfs");
    std::fs::create_dir_all(&procfs).unwrap();
    sh("mount", &["-t", "proc", "proc", s(&procfs)]);
    let kubelet_bind = root.join("kubelet-bind");
    std::fs::create_dir_all(&kubelet_bind).unwrap();
    sh("mount", &["--bind", s(&d.kubelet_dir()), s(&kubelet_bind)]);
    let own_mounts = [procfs.clone(), kubelet_bind.clone()];

    let socket_dir = d.socket().parent().unwrap().to_owned();
    let escapes: Vec<PathBuf> = vec![
        "/etc".into(),
        "/proc".into(),
        "/sys".into(),
        "/dev".into(),
        "/run".into(),
        "/proc/self/root".into(),
        "/proc/self/root/etc".into(),
        "/proc/1/cwd".into(),
        format!("/proc/self/root{}", s(&root)).into(),
        d.state_dir(),
        d.run_dir(),
        socket_dir,
        secret.clone(),
        to_root.clone(),
        to_root.join("etc"),
        to_etc_rel,
        to_state,
        to_secret,
        via_proc.join("etc"),
        procfs.clone(),
        procfs.join("self"),
        kubelet_bind.join("pods/other-pod/volumes/kubernetes.io~secret/token"),
        kubelet_bind.clone(),
    ];
    for (i, path) in escapes.iter().enumerate() {
        // What fsGroup would chgrp if the path were served.
        let target_owner = std::fs::canonicalize(path).ok().map(|p| (owner(&p), p));
        let pod = format!("pod-{i}");
        let r = d.mount(
            &pod,
            "vol",
            json!({"path": s(path), "kubernetes.io/mounterArgs.FsGroup": "4242"}),
        );
        assert_eq!(
            r.status(),
            "Failure",
            "{} was served: {}",
            path.display(),
            r.json
        );
        assert!(
            r.message().starts_with("not_allowed:") || r.message().starts_with("bad_source:"),
            "{}: {}",
            path.display(),
            r.message()
        );
        assert_eq!(moor_mounts(&d), Vec::<PathBuf>::new(), "{}", path.display());
        if let Some((before, p)) = target_owner {
            assert_eq!(owner(&p), before, "{} was chgrp'ed", p.display());
        }
        d.unmount(&pod, "vol").assert_ok();
    }
    for m in own_mounts.iter().rev() {
        sh("umount", &[s(m)]);
    }
    assert_eq!(moor_mounts(&d), Vec::<PathBuf>::new());
}

/// A directory inside the allowed root is served, through its own name and through a
/// relative link inside the root: one directory, one stage, shared.
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_directory_inside_the_allowed_root_is_one_volume_under_every_name() {
    require_privileged_sandbox();
    let d = Daemon::start();
    let data = d.allowed_root().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let alias = d.allowed_root().join("alias");
    std::os::unix::fs::symlink("data", &alias).unwrap();
    d.mount("pod-a", "vol", json!({"path": s(&data)}))
        .assert_ok();
    d.mount("pod-b", "vol", json!({"path": s(&alias)}))
        .assert_ok();
    let stages = mount_entries_under(&d.kubelet_dir().join("plugins/moor"));
    assert_eq!(stages.len(), 1, "{stages:#?}");
    std::fs::write(d.pod_dir("pod-a", "vol").join("f"), "through a").unwrap();
    assert_eq!(
        std::fs::read_to_string(d.pod_dir("pod-b", "vol").join("f")).unwrap(),
        "through a"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("f")).unwrap(),
        "through a"
    );
    d.unmount("pod-a", "vol").assert_ok();
    d.unmount("pod-b", "vol").assert_ok();
    assert_eq!(moor_mounts(&d), Vec::<PathBuf>::new());
}

/// A node with no allow-list serves no directory and no device, and says how to allow one.
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn without_an_allow_list_directories_and_devices_are_refused() {
    require_privileged_sandbox();
    let dev = LoopDev::new(64);
    let d = Daemon::start_without_allow_list();
    let dir = d.root.path().join("disks/data");
    std::fs::create_dir_all(&dir).unwrap();
    let r = d.mount("pod-a", "vol", json!({"path": s(&dir)}));
    assert_failure(
        &r,
        "not_allowed",
        &["local.allowed-directories", "config.yaml"],
    );
    let before = digest(&dev.path);
    let r = d.mount("pod-b", "vol", json!({"path": dev.path_str()}));
    assert_failure(&r, "not_allowed", &["local.allowed-devices", "config.yaml"]);
    assert_eq!(digest(&dev.path), before, "the device was written");
    assert_eq!(moor_mounts(&d), Vec::<PathBuf>::new());
    d.unmount("pod-a", "vol").assert_ok();
    d.unmount("pod-b", "vol").assert_ok();
}

/// Another disk of the node (one nobody allowed) is neither formatted nor mounted, whatever
/// name reaches it; a listed one is.
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_device_nobody_allowed_is_neither_formatted_nor_mounted() {
    require_privileged_sandbox();
    let blank = LoopDev::unlisted(64);
    let with_fs = LoopDev::unlisted(64);
    mkfs(&with_fs.path, "ext4");
    let allowed = LoopDev::new(64);
    let d = Daemon::start();
    std::fs::create_dir_all(d.allowed_root()).unwrap();
    let (blank_bytes, fs_bytes) = (digest(&blank.path), digest(&with_fs.path));
    let in_root = d.allowed_root().join("dev-link");
    std::os::unix::fs::symlink(&blank.path, &in_root).unwrap();
    let names: Vec<String> = vec![
        blank.path_str().into(),
        with_fs.path_str().into(),
        s(&in_root).into(),
        format!("/proc/self/root{}", blank.path_str()),
    ];
    for (i, name) in names.iter().enumerate() {
        let pod = format!("pod-{i}");
        let r = d.mount(&pod, "vol", json!({"path": name}));
        assert_eq!(r.status(), "Failure", "{name} was served: {}", r.json);
        assert!(
            r.message().starts_with("not_allowed:") || r.message().starts_with("bad_source:"),
            "{name}: {}",
            r.message()
        );
        d.unmount(&pod, "vol").assert_ok();
    }
    assert_eq!(
        digest(&blank.path),
        blank_bytes,
        "the blank disk was written"
    );
    assert_eq!(
        digest(&with_fs.path),
        fs_bytes,
        "the other disk was written"
    );
    assert!(
        probe(&blank.path).is_empty(),
        "the blank disk was formatted"
    );
    assert_eq!(d.mkfs_commands(), Vec::<String>::new());
    assert_eq!(moor_mounts(&d), Vec::<PathBuf>::new());

    d.mount("pod-ok", "vol", json!({"path": allowed.path_str()}))
        .assert_ok();
    d.unmount("pod-ok", "vol").assert_ok();
    assert_eq!(moor_mounts(&d), Vec::<PathBuf>::new());
}

/// One disk, several names (the node, a link in the allowed device dir, a second link), many
/// pods mounting at once, many rounds: exactly one stage of the device, every pod sees the
/// same filesystem, e2fsck runs once per stage (never on the mounted disk), and the last
/// unmount leaves nothing.
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn one_disk_under_many_names_is_staged_once() {
    require_privileged_sandbox();
    const ROUNDS: usize = 20;
    for fs_type in ["xfs", "ext4"] {
        let dev = LoopDev::new(if fs_type == "xfs" { 300 } else { 64 });
        mkfs(&dev.path, fs_type);
        let d = Daemon::start();
        let second = d.root.path().join("second-link");
        std::os::unix::fs::symlink(&dev.path, &second).unwrap();
        let listed = common::allowed_device_dir().join(dev.path.file_name().unwrap());
        let names = [
            dev.path_str().to_owned(),
            s(&listed).to_owned(),
            s(&second).to_owned(),
        ];
        for round in 0..ROUNDS {
            let results: Vec<_> = std::thread::scope(|sc| {
                let hs: Vec<_> = names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        let d = &d;
                        sc.spawn(move || {
                            d.mount(
                                &format!("pod-{i}"),
                                "vol",
                                json!({"path": n, "kubernetes.io/fsType": fs_type}),
                            )
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for r in &results {
                r.assert_ok();
            }
            let stages = mount_entries_under(&d.kubelet_dir().join("plugins/moor"));
            assert_eq!(
                stages.len(),
                1,
                "{fs_type} round {round}: the disk is staged {} times: {stages:#?}",
                stages.len()
            );
            let text = format!("round {round}");
            std::fs::write(d.pod_dir("pod-0", "vol").join("f"), &text).unwrap();
            for i in 1..names.len() {
                let seen = std::fs::read_to_string(d.pod_dir(&format!("pod-{i}"), "vol").join("f"))
                    .unwrap();
                assert_eq!(
                    seen, text,
                    "{fs_type} round {round}: pod-{i} sees another fs"
                );
            }
            std::thread::scope(|sc| {
                for i in 0..names.len() {
                    let d = &d;
                    sc.spawn(move || d.unmount(&format!("pod-{i}"), "vol").assert_ok());
                }
            });
            assert_eq!(moor_mounts(&d), Vec::<PathBuf>::new(), "round {round}");
        }
        let fscks = d
            .commands()
            .into_iter()
            .filter(|c| c.starts_with("e2fsck"))
            .count();
        let expected = if fs_type == "ext4" { ROUNDS } else { 0 };
        assert_eq!(fscks, expected, "{fs_type}: e2fsck runs per stage");
        assert!(
            !d.log_text().contains("run fsck by hand"),
            "{fs_type}: an operator was sent to fsck a healthy disk"
        );
    }
}

/// Records of the previous version keyed a local volume by its path text. After an upgrade
/// they are kept by reconstruction, kubelet's repeated `mount` of a published pod answers
/// Success from them, and another name of the same disk shares their stage.
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn records_keyed_by_the_path_text_keep_serving_after_an_upgrade() {
    require_privileged_sandbox();
    let dev = LoopDev::new(64);
    let mut d = Daemon::start();
    let link = d.root.path().join("by-id-disk");
    std::os::unix::fs::symlink(&dev.path, &link).unwrap();
    let opts = json!({"path": s(&link), "kubernetes.io/fsType": "ext4"});
    d.mount("pod-a", "vol", opts.clone()).assert_ok();
    std::fs::write(d.pod_dir("pod-a", "vol").join("f"), "before the upgrade").unwrap();
    d.kill9();

    // Rewrite the state as the previous version left it: key = the path text, the stage
    // mounted at that key's directory, the options as a string map, no device identity.
    let old_key = moor::volume::volume_key("local", s(&link));
    let [rec] = d.stage_records().try_into().unwrap();
    let new_key = rec["key"].as_str().unwrap().to_owned();
    let stage_root = d.kubelet_dir().join("plugins/moor/local");
    std::fs::create_dir_all(stage_root.join(&old_key)).unwrap();
    sh(
        "mount",
        &[
            "--move",
            s(&stage_root.join(&new_key)),
            s(&stage_root.join(&old_key)),
        ],
    );
    std::fs::remove_dir(stage_root.join(&new_key)).unwrap();
    let mut legacy = rec.clone();
    legacy["key"] = old_key.clone().into();
    legacy["source"] = json!({"kind": "block", "device": s(&link)});
    let fields = legacy.as_object_mut().unwrap();
    fields.remove("device");
    let volume = fields.remove("volume").unwrap();
    fields.insert("options".into(), json!({"path": volume["path"]}));
    let stage_dir = d.state_dir().join("stage");
    std::fs::remove_file(stage_dir.join(format!("{new_key}.json"))).unwrap();
    std::fs::write(
        stage_dir.join(format!("{old_key}.json")),
        legacy.to_string(),
    )
    .unwrap();
    for e in std::fs::read_dir(d.run_dir().join("publish")).unwrap() {
        let p = e.unwrap().path();
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        v["key"] = old_key.clone().into();
        std::fs::write(&p, v.to_string()).unwrap();
    }

    d.spawn();
    let kept = d.stage_records();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0]["key"], old_key.as_str(), "{kept:?}");
    assert_eq!(kept[0]["phase"], "staged", "{kept:?}");
    // kubelet's mount again after its own restart: answered from the records.
    d.mount("pod-a", "vol", opts).assert_ok();
    // The disk under its kernel name, for a second pod: the same stage.
    d.mount("pod-b", "vol", json!({"path": dev.path_str()}))
        .assert_ok();
    let stages = mount_entries_under(&d.kubelet_dir().join("plugins/moor"));
    assert_eq!(stages.len(), 1, "{stages:#?}");
    assert_eq!(
        std::fs::read_to_string(d.pod_dir("pod-b", "vol").join("f")).unwrap(),
        "before the upgrade"
    );
    d.unmount("pod-a", "vol").assert_ok();
    d.unmount("pod-b", "vol").assert_ok();
    assert_eq!(moor_mounts(&d), Vec::<PathBuf>::new());
}

/// A directory inside the allowed root exchanged with a symlink to `/` in a loop while pods
/// mount it: the path is resolved once and the held directory is what is bound, so every
/// mount either binds the real directory or is refused — never the host's root.
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_symlink_swapped_in_during_the_call_never_redirects_the_bind() {
    require_privileged_sandbox();
    let d = Daemon::start();
    let root = d.allowed_root();
    std::fs::create_dir_all(root.join("swap")).unwrap();
    std::fs::write(root.join("swap/inside"), "the real directory").unwrap();
    std::os::unix::fs::symlink("/", root.join("evil")).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (mut served, mut refused) = (0, 0);
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let a = std::ffi::CString::new(s(&root.join("swap"))).unwrap();
            let b = std::ffi::CString::new(s(&root.join("evil"))).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // SAFETY: both paths are NUL-terminated C strings that outlive the call.
                let rc = unsafe {
                    libc::renameat2(
                        libc::AT_FDCWD,
                        a.as_ptr(),
                        libc::AT_FDCWD,
                        b.as_ptr(),
                        libc::RENAME_EXCHANGE,
                    )
                };
                assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
            }
        });
        // Stops the swapper on every way out of the loop, a failed assertion included (the
        // scope would otherwise wait for it forever).
        struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let _stop = StopOnDrop(&stop);
        for i in 0..60 {
            let pod = format!("pod-{i}");
            let r = d.mount(&pod, "vol", json!({"path": s(&root.join("swap"))}));
            if r.ok() {
                served += 1;
                let dir = d.pod_dir(&pod, "vol");
                assert_eq!(
                    std::fs::read_to_string(dir.join("inside")).ok().as_deref(),
                    Some("the real directory"),
                    "round {i}: the bind is not the allowed directory"
                );
                assert!(
                    !dir.join("etc").exists(),
                    "round {i}: the host root was bound"
                );
            } else {
                refused += 1;
                assert!(r.message().starts_with("not_allowed:"), "{}", r.json);
            }
            d.unmount(&pod, "vol").assert_ok();
        }
    });
    assert!(
        served > 0 && refused > 0,
        "the race did not happen: {served} served, {refused} refused"
    );
    assert_eq!(moor_mounts(&d), Vec::<PathBuf>::new());
}
