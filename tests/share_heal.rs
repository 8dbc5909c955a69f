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
    exec: Arc<Executor>,
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
        let rec = Reconciler::new(lc.clone(), metrics.clone(), exec.clone());
        Lab {
            _dir: dir,
            root,
            src,
            lc,
            metrics,
            exec,
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
        bindfs_serving(&self.src)
    }

    /// Mounts a bindfs of another directory over moor's stage dir, as someone else would:
    /// returns the directory it serves (holding a file `theirs`) and its daemon's pid.
    fn foreign_share_over_the_stage(&self) -> (PathBuf, i32) {
        let theirs = self.root.join("theirs");
        std::fs::create_dir_all(&theirs).unwrap();
        std::fs::write(theirs.join("theirs"), b"not moor's").unwrap();
        let stage = self.stage();
        common::sh(
            "bindfs",
            &[
                "-o",
                "nonempty",
                &theirs.display().to_string(),
                &stage.display().to_string(),
            ],
        );
        (theirs.clone(), bindfs_serving(&theirs))
    }

    /// How many mounts stand on `path` (the mount table, which also lists dead ones).
    fn stacked_on(&self, path: &Path) -> usize {
        self.mounted_under_root()
            .iter()
            .filter(|m| m.as_path() == path)
            .count()
    }
}

/// The bindfs daemon serving `dir`.
fn bindfs_serving(dir: &Path) -> i32 {
    let want = dir.display().to_string();
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

impl Lab {
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

/// A share someone else mounted over moor's stage dir, frozen: the heal neither aborts its
/// FUSE connection (one per superblock: aborting it would break their share) nor detaches
/// anything, and the pods keep their binds of moor's live share under it.
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_hung_share_over_moors_stage_is_not_aborted_nor_detached() {
    let mut lab = Lab::new();
    let pod = lab.mount("pod-a", false);
    std::fs::write(pod.join("data"), b"kept").unwrap();
    let stage = lab.stage();
    let (_theirs, pid) = lab.foreign_share_over_the_stage();
    signal(pid, nix::sys::signal::Signal::SIGSTOP);
    // If moor blocked on their frozen share, this lets the test end (and fail) rather than hang.
    let thaw = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGCONT,
        );
    });

    let started = Instant::now();
    assert_eq!(lab.rec.heal_shares(), 0, "not moor's share: nothing healed");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the heal pass blocked on a frozen share that is not moor's ({:?})",
        started.elapsed()
    );
    assert_eq!(lab.detected("hung"), 1, "the probe saw the stage dir hang");
    assert_eq!((lab.heals("healed"), lab.heals("failed")), (0, 1));
    signal(pid, nix::sys::signal::Signal::SIGCONT);
    assert_eq!(
        std::fs::read(stage.join("theirs")).unwrap(),
        b"not moor's",
        "their FUSE connection was aborted"
    );
    assert_eq!(lab.stacked_on(&stage), 2, "moor's stage and theirs on it");
    assert_eq!(
        std::fs::read(pod.join("data")).unwrap(),
        b"kept",
        "the pod kept its bind of moor's share"
    );
    signal(pid, nix::sys::signal::Signal::SIGKILL);
    wait_gone(pid);
    drop(thaw);
}

/// A share someone else mounted over moor's stage dir, dead: a dead mount cannot say its
/// mount id, but the mount table still names its device, so the heal refuses before any
/// pod bind goes, and their dead mount stays for them to remove.
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_dead_share_over_moors_stage_is_left_and_the_pods_keep_their_binds() {
    let mut lab = Lab::new();
    let pod = lab.mount("pod-a", false);
    std::fs::write(pod.join("data"), b"kept").unwrap();
    let stage = lab.stage();
    let (_theirs, pid) = lab.foreign_share_over_the_stage();
    signal(pid, nix::sys::signal::Signal::SIGKILL);
    wait_gone(pid);
    assert_eq!(
        probe(&lab.lc, &stage, Duration::from_secs(3)),
        Probe::Dead(nix::errno::Errno::ENOTCONN)
    );

    assert_eq!(lab.rec.heal_shares(), 0, "not moor's share: nothing healed");
    assert_eq!((lab.heals("healed"), lab.heals("failed")), (0, 1));
    assert_eq!(lab.stacked_on(&stage), 2, "their dead mount is still there");
    assert_eq!(
        std::fs::read(pod.join("data")).unwrap(),
        b"kept",
        "the pod kept its bind of moor's share"
    );
    // Once they remove their mount, moor's share is alive under it: nothing to heal.
    nix::mount::umount2(&stage, nix::mount::MntFlags::MNT_DETACH).unwrap();
    assert_eq!(probe(&lab.lc, &stage, Duration::from_secs(3)), Probe::Alive);
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

/// A stand-in container: a process in its own mount namespace made with
/// `unshare --propagation slave` (as a runtime's), holding a recursive bind of a pod dir
/// at `dir`, made `rslave` (HostToContainer) or `rprivate` (None) as containerd does. It
/// reads `dir/data` every 50 ms and writes what it saw (or `ERR …`) to `out`.
struct Container {
    child: std::process::Child,
    dir: PathBuf,
    out: PathBuf,
}

impl Container {
    fn start(root: &Path, name: &str, pod_dir: &Path, propagation: &str) -> Self {
        let kubelet = root.join("kubelet");
        let dir = root.join(format!("ctr-{name}"));
        let out = root.join(format!("ctr-{name}.seen"));
        std::fs::create_dir_all(&dir).unwrap();
        // Like runc after pivot_root, the container keeps only its volume: the copy of the
        // host's kubelet tree goes (in this namespace only: a slave passes nothing back).
        let script = r#"mount --rbind "$1" "$2" && mount --make-r$3 "$2" && umount -l "$5" || exit 1
while :; do
  if v=$(cat "$2/data" 2>&1); then echo "$v"; else echo "ERR $v"; fi > "$4.new"; mv "$4.new" "$4"
  sleep 0.05
done"#;
        let child = std::process::Command::new("unshare")
            .args(["-m", "--propagation", "slave", "sh", "-c", script, "sh"])
            .arg(pod_dir)
            .arg(&dir)
            .arg(propagation)
            .arg(&out)
            .arg(&kubelet)
            .spawn()
            .expect("unshare (util-linux)");
        let c = Container { child, dir, out };
        c.wait_seen(|s| !s.is_empty(), "the container's first read");
        c
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the container's reader saw last.
    fn seen(&self) -> String {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    fn wait_seen(&self, ok: impl Fn(&str) -> bool, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let s = self.seen();
            if ok(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: the container saw {s:?}; a fresh read there: {:?}; mounts at its volume: {:?}",
                self.read_now(),
                self.stack()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The container's own view of its volume: a fresh open inside its namespace.
    fn read_now(&self) -> Result<String, String> {
        let out = std::process::Command::new("nsenter")
            .args(["-t", &self.pid().to_string(), "-m", "cat"])
            .arg(self.dir.join("data"))
            .output()
            .unwrap();
        match out.status.success() {
            true => Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned()),
            false => Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        }
    }

    /// Mount ids stacked at the container's volume, bottom first, from its own mountinfo.
    fn stack(&self) -> Vec<String> {
        let mi = std::fs::read_to_string(format!("/proc/{}/mountinfo", self.pid())).unwrap();
        let want = self.dir.display().to_string();
        mi.lines()
            .filter(|l| l.split(' ').nth(4) == Some(want.as_str()))
            .map(|l| l.split(' ').nth(2).unwrap().to_owned())
            .collect()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `/proc` for the dead-mount scan: each container's real namespace and mountinfo (links
/// into the real /proc), with a cgroup file naming its pod as kubelet's cgroupfs driver
/// does (a real cgroup of this machine would be the host's business, not the test's).
fn proc_overlay(root: &Path, containers: &[(&Container, &str)]) -> PathBuf {
    let dir = root.join("proc-overlay");
    std::fs::create_dir_all(dir.join("self")).unwrap();
    let _ = std::os::unix::fs::symlink("/proc/self/ns", dir.join("self/ns"));
    for (c, uid) in containers {
        let d = dir.join(c.pid().to_string());
        std::fs::create_dir_all(&d).unwrap();
        std::os::unix::fs::symlink(format!("/proc/{}/ns", c.pid()), d.join("ns")).unwrap();
        std::os::unix::fs::symlink(format!("/proc/{}/mountinfo", c.pid()), d.join("mountinfo"))
            .unwrap();
        std::fs::write(
            d.join("cgroup"),
            format!("0::/kubepods/besteffort/pod{uid}/ctr\n"),
        )
        .unwrap();
    }
    dir
}

const UID_H1: &str = "11111111-0000-4000-8000-000000000001";
const UID_H2: &str = "11111111-0000-4000-8000-000000000002";
const UID_N: &str = "11111111-0000-4000-8000-000000000003";

/// The heal reaches running containers whose mount propagates (HostToContainer): their
/// next read sees the healed share, stacked on the dead one in their own mount table; a
/// container with a private copy (None) keeps the dead view and is reported. Unpublishing
/// one stacked pod (the kernel takes its peers' copies of the layer along) leaves the other
/// stacked pod's container on the healed share, and every layer moor made is gone.
#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_heal_reaches_host_to_container_pods_and_reports_the_private_ones() {
    // A mount namespace of this test's own: its shared kubelet dir, and the stand-in
    // containers' namespaces that copy it, stay out of the other tests' mount tables.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS)");
    let mut lab = Lab::new();
    common::sh("which", &["unshare"]);
    common::sh("which", &["nsenter"]);
    // kubelet's dir is a shared mount on a real node (moor doctor checks it).
    let kubelet = lab.root.join("kubelet");
    common::sh(
        "mount",
        &[
            "--bind",
            kubelet.to_str().unwrap(),
            kubelet.to_str().unwrap(),
        ],
    );
    common::sh("mount", &["--make-rshared", kubelet.to_str().unwrap()]);
    let h1 = lab.mount(UID_H1, false);
    let h2 = lab.mount(UID_H2, false);
    let n = lab.mount(UID_N, false);
    std::fs::write(h1.join("data"), b"before").unwrap();
    let mut c1 = Container::start(&lab.root, "h1", &h1, "slave");
    let mut c2 = Container::start(&lab.root, "h2", &h2, "slave");
    let mut cn = Container::start(&lab.root, "n", &n, "private");
    for c in [&c1, &c2, &cn] {
        assert_eq!(c.seen(), "before");
    }
    let proc = proc_overlay(&lab.root, &[(&c1, UID_H1), (&c2, UID_H2), (&cn, UID_N)]);
    let dead = moor::daemon::deadmounts::DeadMounts::new(proc.clone(), Default::default())
        .with_scan_interval(Duration::ZERO);
    let key = lab.lc.remote_stages()[0].key.clone();
    let seen = moor::daemon::deadmounts::DeadMounts::new(proc, Default::default()).stack_targets(
        &lab.lc,
        &key,
        lab.lc.stage_dev(&key),
    );
    assert_eq!(
        seen,
        [h1.clone(), h2.clone()].into_iter().collect(),
        "stacked: the pods whose container copy is a slave (no API server here)"
    );
    lab.rec = Reconciler::new(lab.lc.clone(), lab.metrics.clone(), lab.exec.clone())
        .with_dead_mounts(dead);

    let pid = lab.client_pid();
    signal(pid, nix::sys::signal::Signal::SIGKILL);
    wait_gone(pid);
    for c in [&c1, &c2, &cn] {
        c.wait_seen(|s| s.starts_with("ERR"), "the share died");
    }
    std::fs::write(lab.src.join("data"), b"after the heal").unwrap();
    let started = Instant::now();
    assert_eq!(lab.rec.heal_shares(), 1);
    let took = started.elapsed();

    // The readers that kept reading see the healed share; the private one does not.
    for c in [&c1, &c2] {
        c.wait_seen(
            |s| s == "after the heal",
            "a HostToContainer container after the heal",
        );
        assert_eq!(c.read_now().as_deref(), Ok("after the heal"));
        assert_eq!(
            c.stack().len(),
            2,
            "the healed share stacked on the dead one: {:?}",
            c.stack()
        );
    }
    let err = cn.read_now().unwrap_err();
    assert!(err.contains("Transport endpoint is not connected"), "{err}");
    assert!(cn.seen().starts_with("ERR"), "{}", cn.seen());
    // The host's pod dirs all serve the healed share.
    for p in [&h1, &h2, &n] {
        assert_eq!(std::fs::read(p.join("data")).unwrap(), b"after the heal");
    }
    let rows = lab.lc.dead_mounts();
    let uids: Vec<&str> = rows.iter().map(|r| r.pod_uid.as_str()).collect();
    assert_eq!(
        uids,
        vec![UID_N],
        "only the private container holds the dead mount"
    );
    let text = lab.metrics.encode();
    assert!(
        text.contains(&format!(
            r#"moor_dead_mount_pods{{driver="fusetest",namespace="",pod="{UID_N}"}} 1"#
        )),
        "{text}"
    );
    eprintln!("heal pass with stacking: {took:?}");

    // Pod h1 ends: kubelet unmounts it once its container is gone.
    c1.stop();
    lab.unmount(&h1);
    c2.wait_seen(|s| s == "after the heal", "h2 after h1's layer went");
    assert_eq!(
        c2.read_now().as_deref(),
        Ok("after the heal"),
        "h2 stacked again"
    );
    // Pod n restarts: the old container goes, so does the report.
    cn.stop();
    lab.rec.heal_shares();
    assert!(lab.lc.dead_mounts().is_empty());
    c2.stop();
    lab.unmount(&h2);
    lab.unmount(&n);
    let left: Vec<PathBuf> = lab
        .mounted_under_root()
        .into_iter()
        .filter(|m| m.starts_with(kubelet.join("pods")) || m.starts_with(kubelet.join("plugins")))
        .collect();
    assert_eq!(
        left,
        Vec::<PathBuf>::new(),
        "every layer and bind moor made is gone"
    );
}
