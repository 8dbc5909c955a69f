//! Where moor mounts and what it unmounts (tier 2: root, real binds and loop devices, a real
//! daemon driven through the real FlexVolume front end).
//!
//! What a user checks: a pod directory swapped for a symlink during the call never puts a
//! bind outside the kubelet dir nor removes a mount outside it; moor never unmounts a mount
//! it did not make, even one of the same filesystem stacked on its own, and keeps its record
//! so the volume can still be unmounted once the other mount is gone; after the state dir is
//! lost, a directory volume is adopted as a directory, never as the disk under it; mount
//! options are on the pod's mount or refused by name.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::host::{assert_failure, mkfs, mount_entries_at, mount_entries_under};
use common::{Daemon, LoopDev, is_mounted, require_privileged_sandbox, s, sh, source, write_errno};
use serde_json::json;

const NONE: Vec<PathBuf> = Vec::new();

fn pod_opts(pod: &str, vol: &str, opts: serde_json::Value) -> String {
    common::kubelet_options(pod, vol, opts).to_string()
}

/// The per-mount options (mountinfo field 6) of the topmost mount at `p`.
fn per_mount_options(p: &Path) -> Vec<String> {
    let m = mount_entries_at(p);
    let top = m
        .last()
        .unwrap_or_else(|| panic!("{} not mounted", p.display()));
    top.mount_options.split(',').map(str::to_owned).collect()
}

fn renameat2_exchange(a: &Path, b: &Path) {
    let (a, b) = (
        CString::new(a.as_os_str().as_bytes()).unwrap(),
        CString::new(b.as_os_str().as_bytes()).unwrap(),
    );
    // SAFETY: both paths are NUL-terminated and outlive the call.
    unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        );
    }
}

/// Item 3: a thread exchanges `pods/<uid>/volumes` (and, in turn, `moor~local` below it)
/// with a symlink to a directory outside the kubelet tree whose `vol` holds a foreign
/// tmpfs, in a tight loop, while the front end runs `mount`/`unmount` hundreds of times.
/// No bind may ever appear outside the kubelet dir, the foreign tmpfs must never be
/// unmounted, and every call answers Success or a clean Failure (one JSON line).
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_pod_dir_swapped_for_a_symlink_during_the_call_never_leads_a_mount_out() {
    require_privileged_sandbox();
    let d = Daemon::start();
    let src = source(&d, "ssd1");
    let kubelet = d.kubelet_dir();
    let pod_root = kubelet.join("pods/pod-a");
    let volumes = pod_root.join("volumes");
    let driver_dir = volumes.join("moor~local");
    let target = driver_dir.join("vol");
    std::fs::create_dir_all(&target).unwrap();

    // Outside: the same layout, with a foreign tmpfs where the bind would land.
    let outside = d.root.path().join("outside");
    let outside_target = outside.join("volumes/moor~local/vol");
    std::fs::create_dir_all(&outside_target).unwrap();
    sh(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=1m",
            "foreign",
            s(&outside_target),
        ],
    );
    std::fs::write(outside_target.join("foreign-file"), "not moor's").unwrap();
    let outside_inner = outside.join("inner-moor~local");
    std::fs::create_dir_all(outside_inner.join("vol")).unwrap();
    std::os::unix::fs::symlink(outside.join("volumes"), pod_root.join("volumes.swap")).unwrap();
    std::os::unix::fs::symlink(&outside_inner, volumes.join("moor~local.swap")).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let stop = stop.clone();
        let (a1, b1) = (volumes.clone(), pod_root.join("volumes.swap"));
        let (a2, b2) = (driver_dir.clone(), volumes.join("moor~local.swap"));
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                renameat2_exchange(&a1, &b1);
                if n.is_multiple_of(2) {
                    renameat2_exchange(&a2, &b2);
                }
                n += 1;
            }
            n
        })
    };

    let opts = pod_opts("pod-a", "vol", json!({"path": s(&src)}));
    let (mut ok, mut refused) = (0, 0);
    let kubelet_real = std::fs::canonicalize(&kubelet).unwrap();
    for i in 0..300 {
        let r = if i % 2 == 0 {
            d.flex(&["mount", s(&target), &opts])
        } else {
            d.flex(&["unmount", s(&target)])
        };
        match r.status() {
            "Success" => ok += 1,
            "Failure" => refused += 1,
            other => panic!("call {i}: neither Success nor Failure: {other} {}", r.json),
        }
        for m in mount_entries_under(d.root.path()) {
            let moors = m.mount_point.starts_with(&kubelet_real);
            let foreign = m.mount_point == outside_target && m.fs_type == "tmpfs";
            assert!(
                moors || foreign,
                "call {i}: a mount outside the kubelet dir: {} ({} {})",
                m.mount_point.display(),
                m.fs_type,
                m.root.display()
            );
        }
        let foreign = mount_entries_at(&outside_target);
        assert_eq!(
            foreign.len(),
            1,
            "call {i}: the foreign tmpfs outside was unmounted or covered: {foreign:?}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    // Put the real directories back where kubelet expects them.
    if std::fs::symlink_metadata(&volumes)
        .unwrap()
        .file_type()
        .is_symlink()
    {
        renameat2_exchange(&volumes, &pod_root.join("volumes.swap"));
    }
    if std::fs::symlink_metadata(&driver_dir)
        .unwrap()
        .file_type()
        .is_symlink()
    {
        renameat2_exchange(&driver_dir, &volumes.join("moor~local.swap"));
    }
    eprintln!("{swaps} swaps, {ok} Success, {refused} clean refusals");
    assert!(swaps > 1000, "the swapper barely ran: {swaps}");
    assert!(ok > 0, "no call succeeded: the test proved nothing");

    // The volume is still moor's to unmount, and nothing is left but the foreign tmpfs.
    d.flex(&["unmount", s(&target)]).assert_ok();
    assert_eq!(d.mounts(), vec![outside_target.clone()]);
    assert_eq!(
        std::fs::read_to_string(outside_target.join("foreign-file")).unwrap(),
        "not moor's"
    );
    sh("umount", &[s(&outside_target)]);
}

/// Item 6 (a): a foreign bind of the *same filesystem* stacked on a published pod dir. moor
/// must answer `not_owned` naming both mount ids (not "no record"), leave the foreign
/// mount, keep its record; once the foreign mount is gone, unmount succeeds and nothing is
/// left.
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_foreign_bind_of_the_same_filesystem_on_a_pod_dir_is_not_unmounted() {
    require_privileged_sandbox();
    let d = Daemon::start();
    let src = source(&d, "ssd1");
    d.mount("pod-a", "vol", json!({"path": s(&src)}))
        .assert_ok();
    let pod = d.pod_dir("pod-a", "vol");
    let stage = d.stage_path(s(&src));
    sh("mount", &["--bind", s(&stage), s(&pod)]);
    assert_eq!(mount_entries_at(&pod).len(), 2);

    for _ in 0..2 {
        let r = d.unmount("pod-a", "vol");
        assert_failure(&r, "not_owned", &[s(&pod), "mount id"]);
        assert!(
            !r.message().contains("no record"),
            "moor has a record: {}",
            r.message()
        );
        assert_eq!(
            mount_entries_at(&pod).len(),
            2,
            "moor unmounted the foreign bind or its own"
        );
    }
    sh("umount", &[s(&pod)]);
    d.unmount("pod-a", "vol").assert_ok();
    assert_eq!(d.mounts(), NONE);
    assert_eq!(d.active_stage_records(), Vec::<serde_json::Value>::new());
}

/// Item 6 (b): the same on a stage: a foreign bind of the source stacked on the stage of a
/// volume whose last pod is unmounted. The unmount is refused as a whole (the pod keeps its
/// bind, so kubelet's retry finds the volume as it was), the foreign mount stays, and once
/// it is gone the retry unmounts and unstages everything.
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_foreign_bind_on_a_stage_is_not_unmounted() {
    require_privileged_sandbox();
    let d = Daemon::start();
    let src = source(&d, "ssd1");
    d.mount("pod-a", "vol", json!({"path": s(&src)}))
        .assert_ok();
    let pod = d.pod_dir("pod-a", "vol");
    let stage = d.stage_path(s(&src));
    sh("mount", &["--bind", s(&src), s(&stage)]);

    let r = d.unmount("pod-a", "vol");
    assert_failure(&r, "not_owned", &[s(&stage), "mount id"]);
    assert_eq!(
        mount_entries_at(&stage).len(),
        2,
        "a stage mount was removed"
    );
    assert!(
        is_mounted(&pod),
        "the pod lost its bind on a refused unmount"
    );

    sh("umount", &[s(&stage)]);
    d.unmount("pod-a", "vol").assert_ok();
    assert_eq!(d.mounts(), NONE);
    assert_eq!(d.active_stage_records(), Vec::<serde_json::Value>::new());
}

/// Item 6 (c): a publish that fails after its bind (fsGroup cannot change a read-only
/// source) while a foreign mount got stacked on the pod dir: the rollback must not unmount
/// the foreign mount; moor keeps its record and kubelet's unmount removes moor's bind once
/// the foreign mount is gone.
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_publish_rollback_never_unmounts_a_foreign_mount() {
    require_privileged_sandbox();
    let mut d = Daemon::start();
    d.stop();
    let pause = d.pause_and_resume_at("publish:bound-before-fsgroup");
    d.spawn();
    // A source on a read-only filesystem: the bind works, the fsGroup chgrp cannot.
    let src = d.root.path().join("disks/ro");
    std::fs::create_dir_all(&src).unwrap();
    sh("mount", &["-t", "tmpfs", "-o", "size=1m", "rosrc", s(&src)]);
    std::fs::write(src.join("existing"), "already here").unwrap();
    sh("mount", &["-o", "remount,ro", s(&src)]);

    let pod = d.pod_dir("pod-a", "vol");
    std::fs::create_dir_all(&pod).unwrap();
    let opts = pod_opts(
        "pod-a",
        "vol",
        json!({"path": s(&src), "kubernetes.io/mounterArgs.FsGroup": "2000"}),
    );
    let (link, socket, pod_arg) = (d.driver_link(), d.socket(), pod.clone());
    let call = std::thread::spawn(move || {
        Command::new(link)
            .args(["mount", s(&pod_arg), &opts])
            .env("MOOR_SOCKET", socket)
            .output()
    });
    pause.wait(&d);
    sh(
        "mount",
        &["-t", "tmpfs", "-o", "size=1m", "foreign", s(&pod)],
    );
    std::fs::write(pod.join("foreign-file"), "not moor's").unwrap();
    pause.resume();
    let out = call.join().unwrap().unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["status"], "Failure", "{reply}");
    assert_eq!(
        std::fs::read_to_string(pod.join("foreign-file")).unwrap(),
        "not moor's",
        "the rollback unmounted the foreign mount"
    );
    assert_eq!(mount_entries_at(&pod).len(), 2, "log:\n{}", d.log_text());

    sh("umount", &[s(&pod)]);
    d.unmount("pod-a", "vol").assert_ok();
    assert_eq!(d.mounts(), vec![src.clone()]);
    sh("umount", &[s(&src)]);
}

fn status_json(d: &Daemon) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_moor"))
        .args(["status", "-o", "json"])
        .env("MOOR_SOCKET", d.socket())
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Item 8: the stage records are lost; a directory volume on the host's own filesystem and
/// a loop-device volume are adopted on restart — the directory as a directory (never as
/// the disk under it), the disk as a disk; `expandfs` on the directory touches no disk;
/// unmount works for both and nothing else is unmounted.
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn adoption_tells_a_directory_from_a_disk() {
    require_privileged_sandbox();
    let dev = LoopDev::new(64);
    mkfs(&dev.path, "ext4");
    let mut d = Daemon::start();
    let dir = source(&d, "on-the-root-disk");
    let dir_opts = json!({"path": s(&dir)});
    let dev_opts = json!({"path": dev.path_str()});
    d.mount("pod-a", "dirvol", dir_opts.clone()).assert_ok();
    d.mount("pod-b", "devvol", dev_opts).assert_ok();
    let before = common::mounts_under(Path::new("/"));
    d.stop();
    for e in std::fs::read_dir(d.state_dir().join("stage")).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    d.spawn();

    let v = status_json(&d);
    let vols = v["volumes"].as_array().unwrap();
    assert_eq!(vols.len(), 2, "{v}");
    let dirvol = vols
        .iter()
        .find(|x| {
            x["pods"][0]["target"]
                .as_str()
                .unwrap()
                .ends_with("/dirvol")
        })
        .unwrap_or_else(|| panic!("{v}"));
    assert!(
        dirvol["device"].is_null(),
        "a directory volume was adopted as a disk: {dirvol}"
    );
    let devvol = vols
        .iter()
        .find(|x| {
            x["pods"][0]["target"]
                .as_str()
                .unwrap()
                .ends_with("/devvol")
        })
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(devvol["device"], dev.path_str(), "{devvol}");

    let mut pv = dir_opts;
    pv["kubernetes.io/pvOrVolumeName"] = "dirvol".into();
    let r = d.flex(&["expandfs", &pv.to_string(), "not-used", "", "1048576", "0"]);
    assert!(
        r.ok() || r.status() == "Failure",
        "expandfs answered neither: {}",
        r.json
    );
    let grow: Vec<String> = d
        .commands()
        .into_iter()
        .filter(|c| c.contains("resize2fs") || c.contains("xfs_growfs") || c.contains("btrfs"))
        .collect();
    assert_eq!(grow, Vec::<String>::new(), "a grow tool ran");

    d.unmount("pod-a", "dirvol").assert_ok();
    d.unmount("pod-b", "devvol").assert_ok();
    assert_eq!(d.mounts(), NONE);
    let after = common::mounts_under(Path::new("/"));
    let lost: Vec<&PathBuf> = before
        .iter()
        // Other tests' daemons run beside this one, each in its own tree.
        .filter(|m| !m.starts_with("/var/tmp") && !after.contains(m))
        .collect();
    assert_eq!(
        lost,
        Vec::<&PathBuf>::new(),
        "mounts outside moor's were removed"
    );
}

/// Item 9 (directory): `mountOptions` reach the pod's mount or are refused by name.
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn directory_mount_options_are_applied_to_the_pod_mount() {
    require_privileged_sandbox();
    let d = Daemon::start();
    let src = source(&d, "ssd1");

    d.mount(
        "pod-a",
        "vol",
        json!({"path": s(&src), "mountOptions": "ro"}),
    )
    .assert_ok();
    let pod = d.pod_dir("pod-a", "vol");
    assert!(
        per_mount_options(&pod).contains(&"ro".to_owned()),
        "{:?}",
        per_mount_options(&pod)
    );
    assert_eq!(write_errno(&pod, "f"), Some(libc::EROFS));
    d.unmount("pod-a", "vol").assert_ok();

    let hardened = json!({"path": s(&src), "mountOptions": "noexec,nosuid,nodev"});
    d.mount("pod-b", "vol", hardened.clone()).assert_ok();
    let mut ro = hardened;
    ro["kubernetes.io/readwrite"] = "ro".into();
    d.mount("pod-c", "vol", ro).assert_ok();
    for (pod, want_ro) in [("pod-b", false), ("pod-c", true)] {
        let dir = d.pod_dir(pod, "vol");
        let o = per_mount_options(&dir);
        for f in ["noexec", "nosuid", "nodev"] {
            assert!(o.contains(&f.to_owned()), "{pod}: {f} missing from {o:?}");
        }
        assert_eq!(o.contains(&"ro".to_owned()), want_ro, "{pod}: {o:?}");
    }
    assert_eq!(
        write_errno(&d.pod_dir("pod-c", "vol"), "f"),
        Some(libc::EROFS)
    );
    d.unmount("pod-b", "vol").assert_ok();
    d.unmount("pod-c", "vol").assert_ok();

    for bad in ["discard", "data=ordered", "sync"] {
        let r = d.mount(
            "pod-d",
            "vol",
            json!({"path": s(&src), "mountOptions": bad}),
        );
        assert_failure(&r, "bad_options", &[bad]);
        d.assert_nothing_left("pod-d", "vol");
    }
}

/// Item 9 (block): the stage's `nosuid,nodev,noexec` survive on every pod bind, the
/// read-only one included (a remount of a bind replaces its flags), and `ro` makes the pod
/// dir read-only.
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn block_mount_options_survive_on_every_pod_bind() {
    require_privileged_sandbox();
    let dev = LoopDev::new(64);
    let d = Daemon::start();
    let hardened = json!({"path": dev.path_str(), "mountOptions": "noexec,nosuid,nodev"});
    d.mount("pod-a", "vol", hardened.clone()).assert_ok();
    let mut ro = hardened;
    ro["kubernetes.io/readwrite"] = "ro".into();
    d.mount("pod-b", "vol", ro).assert_ok();
    for (pod, want_ro) in [("pod-a", false), ("pod-b", true)] {
        let o = per_mount_options(&d.pod_dir(pod, "vol"));
        for f in ["noexec", "nosuid", "nodev"] {
            assert!(o.contains(&f.to_owned()), "{pod}: {f} missing from {o:?}");
        }
        assert_eq!(o.contains(&"ro".to_owned()), want_ro, "{pod}: {o:?}");
    }
    assert_eq!(
        write_errno(&d.pod_dir("pod-b", "vol"), "f"),
        Some(libc::EROFS)
    );
    d.unmount("pod-a", "vol").assert_ok();
    d.unmount("pod-b", "vol").assert_ok();

    d.mount(
        "pod-c",
        "vol",
        json!({"path": dev.path_str(), "mountOptions": "ro"}),
    )
    .assert_ok();
    let pod = d.pod_dir("pod-c", "vol");
    assert!(per_mount_options(&pod).contains(&"ro".to_owned()));
    assert_eq!(write_errno(&pod, "f"), Some(libc::EROFS));
    d.unmount("pod-c", "vol").assert_ok();
    assert_eq!(d.mounts(), NONE);
}

/// The kubelet dir gets a filesystem mounted on it after the daemon started (a node whose
/// `/var/lib/kubelet` mount comes up late): moor's held fd must follow, so the pod sees its
/// volume at the path kubelet uses, not in the directory now hidden under the mount.
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_kubelet_dir_mounted_after_start_is_followed() {
    require_privileged_sandbox();
    let d = Daemon::start();
    let src = source(&d, "ssd1");
    d.mount("pod-a", "vol", json!({"path": s(&src)}))
        .assert_ok();
    d.unmount("pod-a", "vol").assert_ok();
    sh(
        "mount",
        &["-t", "tmpfs", "-o", "size=4m", "late", s(&d.kubelet_dir())],
    );
    d.mount("pod-b", "vol", json!({"path": s(&src)}))
        .assert_ok();
    let pod = d.pod_dir("pod-b", "vol");
    assert_eq!(
        std::fs::read_to_string(pod.join("existing")).unwrap(),
        "already here",
        "the bind is not where kubelet looks"
    );
    d.unmount("pod-b", "vol").assert_ok();
    sh("umount", &[s(&d.kubelet_dir())]);
    assert_eq!(d.mounts(), NONE);
}

/// Item 6, the rollback that unmounted what the check three lines earlier refused: a busy
/// unmount leaves moor's bind (record `unpublishing`), someone stacks a tmpfs on the pod
/// dir, kubelet retries `mount`. moor must refuse, leave the tmpfs, and keep owning its own
/// bind underneath, so the unmount completes once the tmpfs and the open file are gone.
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_mount_retry_over_a_foreign_mount_keeps_moors_bind_owned() {
    require_privileged_sandbox();
    let d = Daemon::start();
    let src = source(&d, "ssd1");
    let opts = json!({"path": s(&src)});
    d.mount("pod-a", "vol", opts.clone()).assert_ok();
    let pod = d.pod_dir("pod-a", "vol");
    let held = std::fs::File::create(pod.join("open-file")).unwrap();
    assert_failure(&d.unmount("pod-a", "vol"), "mount_busy", &[]);
    sh(
        "mount",
        &["-t", "tmpfs", "-o", "size=1m", "foreign", s(&pod)],
    );
    std::fs::write(pod.join("foreign-file"), "not moor's").unwrap();

    let r = d.mount("pod-a", "vol", opts);
    assert_eq!(r.status(), "Failure", "{}", r.json);
    assert_eq!(
        std::fs::read_to_string(pod.join("foreign-file")).unwrap(),
        "not moor's",
        "the rollback unmounted the foreign mount"
    );
    assert_eq!(mount_entries_at(&pod).len(), 2);

    sh("umount", &[s(&pod)]);
    drop(held);
    d.unmount("pod-a", "vol").assert_ok();
    assert_eq!(d.mounts(), NONE, "moor's own bind was orphaned");
    assert_eq!(d.active_stage_records(), Vec::<serde_json::Value>::new());
}

/// A `mount` of a volume moor published answers Success only while moor's own bind is the
/// mount on the pod directory: with a foreign mount stacked on it (or in its place), the
/// pod would get the foreign filesystem, so moor refuses and leaves both alone; once the
/// foreign mount is gone the same call is Success again and the volume unmounts cleanly.
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_mount_of_a_published_volume_under_a_foreign_mount_is_not_success() {
    require_privileged_sandbox();
    let d = Daemon::start();
    let src = source(&d, "ssd1");
    std::fs::write(src.join("moor-file"), "the volume").unwrap();
    let opts = json!({"path": s(&src)});
    d.mount("pod-a", "vol", opts.clone()).assert_ok();
    let pod = d.pod_dir("pod-a", "vol");

    // Stacked on moor's bind, then in its place (moor's bind lazily gone underneath).
    for replace in [false, true] {
        sh(
            "mount",
            &["-t", "tmpfs", "-o", "size=1m", "foreign", s(&pod)],
        );
        std::fs::write(pod.join("foreign-file"), "not moor's").unwrap();
        if replace {
            // Detach moor's bind from under the tmpfs: move the tmpfs away, drop the bind,
            // move the tmpfs back.
            let aside = d.root.path().join("aside");
            std::fs::create_dir_all(&aside).unwrap();
            sh("mount", &["--move", s(&pod), s(&aside)]);
            sh("umount", &[s(&pod)]);
            sh("mount", &["--move", s(&aside), s(&pod)]);
        }
        assert_failure(&d.mount("pod-a", "vol", opts.clone()), "not_owned", &[]);
        assert_eq!(
            std::fs::read_to_string(pod.join("foreign-file")).unwrap(),
            "not moor's",
            "the foreign mount was touched"
        );
        sh("umount", &[s(&pod)]);
        if replace {
            // moor's bind is gone too: kubelet's retry gets the volume back.
            assert_eq!(mount_entries_at(&pod).len(), 0);
        }
    }
    d.mount("pod-a", "vol", opts).assert_ok();
    assert_eq!(
        std::fs::read_to_string(pod.join("moor-file")).unwrap(),
        "the volume"
    );
    d.unmount("pod-a", "vol").assert_ok();
    assert_eq!(d.mounts(), NONE);
}
