//! Stale-mount healing against a real FUSE filesystem on the host kernel. `bindfs` stands in
//! for a network client (glusterfs, ceph-fuse): a FUSE daemon serving a directory, which we
//! kill (ENOTCONN) or freeze (calls hang in the kernel until fusectl aborts them). The
//! share is mounted through moor's own remote-mount path (`mount -t fuse.bindfs`), staged
//! and published by the lifecycle, and healed by the reconciler — the same code the
//! GlusterFS/CephFS/NFS drivers use; their servers are exercised in the VM scenarios.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moor::daemon::executor::Executor;
use moor::daemon::reconciler::{Probe, Reconciler, probe};
use moor::host::{Host, HostPaths};
use moor::journal::{Journal, RemoteMount, StageSource};
use moor::lifecycle::{Lifecycle, Timeouts};
use moor::metrics::{ErrorLabels, HealLabels, Metrics};
use moor::volume::{
    Driver, DriverError, Drivers, MountOptions, NodeContext, VolumeOptions, VolumeSpec, volume_key,
};

/// A share served by a bindfs daemon: option `source` is the directory it serves.
struct BindfsShare;

impl Driver for BindfsShare {
    fn name(&self) -> &'static str {
        "fusetest"
    }

    fn volume(&self, _node: &NodeContext, opts: &VolumeOptions) -> Result<VolumeSpec, DriverError> {
        let src = opts.required(self.name(), "source")?.to_owned();
        Ok(VolumeSpec {
            key: volume_key("fusetest", &src),
            source: StageSource::Remote(RemoteMount {
                fs_type: "fuse.bindfs".into(),
                source: src.clone(),
                options: vec!["allow_other".into()],
                fuse: true,
                log_file: None,
                server: format!("bindfs:{src}"),
            }),
            // A stand-in with nothing to remember beyond the source.
            state: None,
            mount_options: MountOptions::default(),
        })
    }
}

struct Lab {
    _dir: tempfile::TempDir,
    root: PathBuf,
    src: PathBuf,
    lc: Arc<Lifecycle>,
    metrics: Arc<Metrics>,
    rec: Reconciler,
}

impl Lab {
    fn new() -> Self {
        common::require_privileged_sandbox();
        common::sh("which", &["bindfs"]);
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let src = root.join("export");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(root.join("kubelet")).unwrap();
        let paths = HostPaths::system(root.join("kubelet"), root.join("state"), root.join("run"));
        let journal = Journal::open(&paths.state_dir, &paths.run_dir).unwrap();
        let mut drivers = Drivers::default();
        drivers.add(Arc::new(BindfsShare));
        let timeouts = Timeouts {
            mount: Duration::from_secs(20),
            unmount: Duration::from_secs(10),
        };
        let lc = Arc::new(Lifecycle::new(
            Host::system(paths),
            journal,
            drivers,
            "node-a".into(),
            timeouts,
        ));
        let metrics = Arc::new(Metrics::new());
        let exec = Arc::new(Executor::new(
            lc.clone(),
            metrics.clone(),
            Duration::from_secs(60),
        ));
        let rec = Reconciler::new(lc.clone(), metrics.clone(), exec);
        Lab {
            _dir: dir,
            root,
            src,
            lc,
            metrics,
            rec,
        }
    }

    fn pod_dir(&self, pod: &str) -> PathBuf {
        self.root
            .join(format!("kubelet/pods/{pod}/volumes/moor~fusetest/vol"))
    }

    fn mount(&self, pod: &str, ro: bool) -> PathBuf {
        let target = self.pod_dir(pod);
        let mut opts = BTreeMap::new();
        opts.insert("source".into(), self.src.display().to_string());
        opts.insert(
            "kubernetes.io/readwrite".into(),
            if ro { "ro" } else { "rw" }.into(),
        );
        let opts = moor::volume::options::parse(&opts).unwrap();
        let plan = self
            .lc
            .plan_mount("fusetest", &target.display().to_string(), &opts)
            .unwrap();
        self.lc.mount(&plan).unwrap();
        target
    }

    fn unmount(&self, target: &Path) {
        self.lc
            .unmount(Some("fusetest"), &target.display().to_string())
            .unwrap();
    }

    fn stage(&self) -> PathBuf {
        let stages = self.lc.remote_stages();
        assert_eq!(stages.len(), 1, "one stage for the share");
        stages[0].stage_path.clone()
    }

    /// The bindfs daemon serving this lab's export.
    fn client_pid(&self) -> i32 {
        let want = self.src.display().to_string();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            for e in std::fs::read_dir("/proc").unwrap().flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                    continue;
                };
                let args: Vec<String> = cmd
                    .split(|b| *b == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                if args.first().is_some_and(|a| a.ends_with("bindfs")) && args.contains(&want) {
                    return pid;
                }
            }
            assert!(Instant::now() < deadline, "no bindfs process serves {want}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn mounted_under_root(&self) -> Vec<PathBuf> {
        common::mounts_under(&self.root)
    }

    fn detected(&self, reason: &str) -> u64 {
        self.metrics
            .stale_detected
            .get_or_create(&ErrorLabels {
                driver: "fusetest".into(),
                op: "probe".into(),
                reason: reason.into(),
            })
            .get()
    }

    fn heals(&self, result: &str) -> u64 {
        self.metrics
            .heals
            .get_or_create(&HealLabels {
                driver: "fusetest".into(),
                result: result.into(),
            })
            .get()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Whatever a failed assertion left: lazily, so a dead FUSE mount cannot hang us.
        common::unmount_all(&self.root);
    }
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
}

fn wait_gone(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() {
        // A zombie has no mounts and no FUSE connection: that is gone enough.
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if state.contains(") Z") {
            return;
        }
        assert!(Instant::now() < deadline, "process {pid} did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn killed_client_is_detected_and_healed_with_data_and_ro_intact() {
    let mut lab = Lab::new();
    let rw = lab.mount("pod-rw", false);
    let ro = lab.mount("pod-ro", true);
    std::fs::write(rw.join("data"), b"written before the crash").unwrap();
    let stage = lab.stage();
    assert_eq!(probe(&lab.lc, &stage, Duration::from_secs(3)), Probe::Alive);
    assert_eq!(lab.rec.heal_shares(), 0, "nothing to heal while alive");

    let pid = lab.client_pid();
    signal(pid, nix::sys::signal::Signal::SIGKILL);
    wait_gone(pid);
    let err = std::fs::read(rw.join("data")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
    assert_eq!(
        probe(&lab.lc, &stage, Duration::from_secs(3)),
        Probe::Dead(nix::errno::Errno::ENOTCONN)
    );

    assert_eq!(lab.rec.heal_shares(), 1);
    assert_eq!(lab.detected("ENOTCONN"), 1);
    assert_eq!(lab.heals("healed"), 1);
    assert_ne!(lab.client_pid(), pid, "a new client serves the share");
    for pod in [&rw, &ro] {
        assert_eq!(
            std::fs::read(pod.join("data")).unwrap(),
            b"written before the crash",
            "{} readable again with its data",
            pod.display()
        );
    }
    std::fs::write(rw.join("after"), b"x").unwrap();
    let e = std::fs::write(ro.join("after-ro"), b"x").unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EROFS),
        "the ro pod stays ro: {e}"
    );
    assert_eq!(lab.rec.heal_shares(), 0, "healthy again");

    lab.unmount(&rw);
    lab.unmount(&ro);
    assert_eq!(lab.mounted_under_root(), Vec::<PathBuf>::new());
    assert_eq!(
        std::fs::read(lab.src.join("after")).unwrap(),
        b"x",
        "writes after the heal reached the export"
    );
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn hung_client_is_aborted_through_fusectl_then_healed() {
    let mut lab = Lab::new();
    let pod = lab.mount("pod-a", false);
    std::fs::write(pod.join("data"), b"kept").unwrap();
    let pid = lab.client_pid();
    signal(pid, nix::sys::signal::Signal::SIGSTOP);
    // A reader that enters the frozen server sits in the kernel until the abort.
    let reader_path = pod.join("data");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read_dir(reader_path.parent().unwrap()).map(|_| ()));
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "a frozen FUSE server must block the reader (else this test proves nothing)"
    );

    let started = Instant::now();
    assert_eq!(lab.rec.heal_shares(), 1, "hung share aborted and healed");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "heal pass took {:?}",
        started.elapsed()
    );
    assert_eq!(lab.detected("hung"), 1);
    let stuck = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the abort released the stuck reader");
    // An aborted request answers ECONNABORTED; calls after the abort see ENOTCONN.
    let code = stuck.unwrap_err().raw_os_error();
    assert!(
        matches!(code, Some(libc::ECONNABORTED) | Some(libc::ENOTCONN)),
        "the stuck call returned {code:?}"
    );
    assert_eq!(std::fs::read(pod.join("data")).unwrap(), b"kept");
    signal(pid, nix::sys::signal::Signal::SIGKILL);
    wait_gone(pid);
    lab.unmount(&pod);
    assert_eq!(lab.mounted_under_root(), Vec::<PathBuf>::new());
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_dead_share_still_unmounts_cleanly() {
    let lab = Lab::new();
    let a = lab.mount("pod-a", false);
    let b = lab.mount("pod-b", false);
    let pid = lab.client_pid();
    signal(pid, nix::sys::signal::Signal::SIGKILL);
    wait_gone(pid);
    // kubelet tears the pods down while the client is dead: both calls succeed, nothing is
    // left mounted, and no heal is needed for that.
    lab.unmount(&a);
    lab.unmount(&b);
    assert_eq!(lab.mounted_under_root(), Vec::<PathBuf>::new());
    assert!(lab.lc.remote_stages().is_empty());
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_stage_unmounted_under_moor_is_mounted_and_bound_again() {
    let mut lab = Lab::new();
    let pod = lab.mount("pod-a", false);
    std::fs::write(pod.join("data"), b"v").unwrap();
    let stage = lab.stage();
    // What glusterfs's auto_unmount watcher does when its client dies: the stage goes,
    // the pod's bind stays on the dead connection.
    let pid = lab.client_pid();
    signal(pid, nix::sys::signal::Signal::SIGKILL);
    wait_gone(pid);
    nix::mount::umount2(&stage, nix::mount::MntFlags::MNT_DETACH).unwrap();
    assert_eq!(probe(&lab.lc, &stage, Duration::from_secs(3)), Probe::Gone);
    assert_eq!(lab.rec.heal_shares(), 1);
    assert_eq!(lab.detected("unmounted"), 1);
    assert_eq!(std::fs::read(pod.join("data")).unwrap(), b"v");
    match std::fs::read(stage.join("data")) {
        Ok(d) => assert_eq!(d, b"v"),
        Err(e) if e.kind() == ErrorKind::NotFound => panic!("stage not mounted again"),
        Err(e) => panic!("stage: {e}"),
    }
    lab.unmount(&pod);
    assert_eq!(lab.mounted_under_root(), Vec::<PathBuf>::new());
}
