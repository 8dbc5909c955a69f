//! The tests' side of the harness (feature `testkit`): the always-compiled pieces wrapped in
//! the vocabulary of the host integration tests — `Daemon::start()`, `d.mount(…)
//! .assert_ok()`, `LoopDev::new(64)` — which panic with what went wrong (the daemon's log
//! included) instead of returning errors, plus the checks a user makes after moor acted:
//! the sandbox, the commands the daemon ran, its journal records, the live mount table.
//!
//! These tests need root and a private mount namespace (`unshare -m`, as `run-tests`
//! arranges). A missing capability FAILS the test with a message saying what is missing:
//! a green run must mean the tests really ran. Test code: panicking is how it reports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::flex::FlexReply;
use super::{DaemonProcess, DaemonSpec, LoopDevice, Tree};
use crate::host::sandbox;

/// A FlexVolume reply as kubelet sees it.
pub type FlexResult = FlexReply;

impl FlexReply {
    /// Panics unless the reply is a `Success` with exit code 0.
    #[track_caller]
    pub fn assert_ok(&self) {
        assert!(
            self.ok(),
            "expected Success, got {:?}: {}",
            self.code,
            self.json
        );
    }
}

/// Panics unless we are root in a mount namespace of our own where nothing we mount
/// propagates to the host. Every mount is made private only when one is still a peer of the
/// host's (or an ancestor's): all tests of a run share one namespace, and an unconditional
/// `--make-rprivate /` at each test's start would undo the shared kubelet dir another test
/// made on purpose, mid-run.
pub fn require_privileged_sandbox() {
    assert!(
        sandbox::is_root(),
        "host integration tests need root: run them through ./run-tests"
    );
    assert!(
        sandbox::in_private_mount_namespace().expect("read /proc/self/ns/mnt"),
        "host integration tests must run in a mount namespace of their own (unshare -m): run them through ./run-tests"
    );
    if sandbox::shares_mounts_with_ancestors().expect("read the mount tables") {
        sandbox::make_mounts_private().expect("mount --make-rprivate /");
    }
}

/// The moor binary the tests run: the one cargo built beside the test binary
/// (`target/<profile>/moor`; a test binary lives in `target/<profile>/deps/`), or the one
/// nextest names in `NEXTEST_BIN_EXE_moor`. `CARGO_BIN_EXE_moor` is the same path, but cargo
/// gives it only to the test crate, not to this library.
pub fn moor_exe() -> PathBuf {
    static EXE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    EXE.get_or_init(|| {
        let exe = std::env::var_os("NEXTEST_BIN_EXE_moor")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let me = std::env::current_exe().expect("the test binary's path");
                me.parent()
                    .and_then(Path::parent)
                    .expect("a test binary under target/<profile>/deps")
                    .join("moor")
            });
        assert!(
            exe.is_file(),
            "no moor binary at {} (build it with cargo, beside the tests)",
            exe.display()
        );
        exe
    })
    .clone()
}

/// Panics unless `exe` was built with the cargo feature `test-hooks` (its `moor version`
/// says so): without it, pause points and the front end's panic switch are compiled out and
/// a test that relies on them would wait for nothing.
pub fn require_test_hooks(exe: &Path) {
    static CHECKED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    let mut checked = CHECKED.lock().unwrap_or_else(|e| e.into_inner());
    if checked.iter().any(|p| p == exe) {
        return;
    }
    let out = Command::new(exe)
        .arg("version")
        .output()
        .expect("moor version");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(crate::testhook::FEATURE_TAG),
        "this test needs pause points, but {} was built without them ({:?}): build with `--features test-hooks` (run-tests does)",
        exe.display(),
        text.trim()
    );
    checked.push(exe.to_owned());
}

/// Runs a command, panicking with its output when it fails.
pub fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (is it installed?)"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loop device over a sparse file in /var/tmp, detached on drop.
#[derive(Debug)]
pub struct LoopDev {
    /// `/dev/loopN`.
    pub path: PathBuf,
    // Field order is drop order: the device goes before its backing file.
    device: LoopDevice,
    file: tempfile::NamedTempFile,
    /// Its link in [`allowed_device_dir`], when it is allowed.
    listed: Option<PathBuf>,
}

/// The directory of device links that every test daemon allows (`local.allowed-devices`):
/// a [`LoopDev::new`] is listed there, a [`LoopDev::unlisted`] is not.
pub fn allowed_device_dir() -> PathBuf {
    let dir = device_dir_path();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn device_dir_path() -> PathBuf {
    PathBuf::from(format!("/var/tmp/moor-it-devices-{}", std::process::id()))
}

/// Removes this process's device-link directory once nothing is listed in it (rmdir only:
/// a directory still holding a live loop device's link stays).
fn tidy_device_dir() {
    let _ = std::fs::remove_dir(device_dir_path());
}

impl LoopDev {
    /// A loop device the test daemons are allowed to serve.
    pub fn new(size_mib: u64) -> Self {
        let mut d = Self::unlisted(size_mib);
        let link = allowed_device_dir().join(d.path.file_name().unwrap());
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&d.path, &link).unwrap();
        d.listed = Some(link);
        d
    }

    /// A loop device that no allow-list names (another tenant's disk).
    pub fn unlisted(size_mib: u64) -> Self {
        let file = tempfile::Builder::new()
            .prefix("moor-loop")
            .tempfile_in("/var/tmp")
            .expect("backing file");
        file.as_file()
            .set_len(size_mib << 20)
            .expect("size backing file");
        let device = LoopDevice::attach(file.path()).unwrap_or_else(|e| panic!("{e}"));
        LoopDev {
            path: device.path.clone(),
            device,
            file,
            listed: None,
        }
    }

    /// The device path as text.
    pub fn path_str(&self) -> &str {
        self.device.path_str()
    }

    /// Grows the backing file (as an array grows a LUN); the loop device keeps its old
    /// size until someone sets its capacity again.
    pub fn grow_backing_file(&self, size_mib: u64) {
        self.file
            .as_file()
            .set_len(size_mib << 20)
            .expect("grow backing file");
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        if let Some(l) = &self.listed {
            let _ = std::fs::remove_file(l);
            tidy_device_dir();
        }
    }
}

/// A running `moor daemon` on a temporary kubelet/state/run tree.
#[derive(Debug)]
pub struct Daemon {
    /// The scratch root (removed on drop, after every mount under it is gone).
    pub root: tempfile::TempDir,
    process: Option<DaemonProcess>,
    /// `--node-name`.
    pub node: String,
    /// Environment set for the daemon (e.g. a pause point).
    pub extra_env: Vec<(String, String)>,
    /// Flags appended to the daemon's command line (later flags win).
    pub extra_args: Vec<String>,
    /// Capabilities removed from the daemon's bounding set (so from it and its children),
    /// as a unit's `CapabilityBoundingSet=` or a container's `drop` would.
    pub drop_caps: Vec<u32>,
    /// Each spawn in a mount namespace of its own (a DaemonSet's pods).
    pub own_mount_namespace: bool,
    /// Extra allow-list entries beside the defaults; None: no allow-list at all.
    pub allow: Option<Allow>,
    /// YAML appended to the daemon's config file (e.g. a `csi:` section).
    pub config_extra: String,
}

/// Allow-list entries a test adds to its daemon's config.
#[derive(Debug, Default, Clone)]
pub struct Allow {
    /// More directory roots.
    pub directories: Vec<PathBuf>,
    /// More devices or directories of device links.
    pub devices: Vec<PathBuf>,
}

/// Where a paused daemon says it arrived, and the file that lets it go on.
#[derive(Debug, Clone)]
pub struct Pause {
    /// The point.
    pub point: String,
    /// The file the daemon writes when it reaches the point.
    pub reached: PathBuf,
    /// The file the test creates to let it go on (None: it waits to be killed).
    pub resume: Option<PathBuf>,
}

impl Pause {
    /// Waits (at most 30 s) until the daemon reached the point.
    #[track_caller]
    pub fn wait(&self, d: &Daemon) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.reached.exists() {
            assert!(
                Instant::now() < deadline,
                "the daemon never reached pause point {}; log:\n{}",
                self.point,
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Lets a resumable pause go on.
    pub fn resume(&self) {
        let resume = self.resume.as_ref().expect("a resumable pause");
        std::fs::write(resume, "go").unwrap();
    }
}

impl Daemon {
    /// The tree's layout.
    pub fn tree(&self) -> Tree {
        Tree::new(self.root.path())
    }
    /// `--kubelet-dir`.
    pub fn kubelet_dir(&self) -> PathBuf {
        self.tree().kubelet_dir()
    }
    /// `--state-dir`.
    pub fn state_dir(&self) -> PathBuf {
        self.tree().state_dir()
    }
    /// `--run-dir`.
    pub fn run_dir(&self) -> PathBuf {
        self.tree().run_dir()
    }
    /// `--socket`.
    pub fn socket(&self) -> PathBuf {
        self.tree().socket()
    }
    /// The daemon's log.
    pub fn log(&self) -> PathBuf {
        self.tree().log()
    }
    /// The directory roots this daemon allows (`local.allowed-directories`): `disks` and
    /// `src` under its tree; a test may change the list before `spawn`.
    pub fn allowed_root(&self) -> PathBuf {
        self.root.path().join("disks")
    }
    /// kubelet's pod log directory (`<namespace>_<pod>_<uid>`) for this daemon.
    pub fn pod_log_dir(&self) -> PathBuf {
        self.tree().pod_log_dir()
    }

    /// Starts a daemon on a fresh tree.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a daemon with extra environment.
    pub fn start_with(env: &[(&str, &str)]) -> Self {
        let mut d = Self::unstarted(env);
        d.spawn();
        d
    }

    /// Starts a daemon without capability `cap` (a `CAP_*` number).
    pub fn start_without_cap(cap: u32) -> Self {
        let mut d = Self::unstarted(&[]);
        d.drop_caps = vec![cap];
        d.spawn();
        d
    }

    /// A daemon whose config allows no directory and no device (the default of a node).
    pub fn start_without_allow_list() -> Self {
        let mut d = Self::unstarted(&[]);
        d.allow = None;
        d.spawn();
        d
    }

    /// Starts a daemon serving `/metrics` on a free loopback port, reconciling every second
    /// (so volume statistics appear quickly); returns it and the port.
    pub fn start_with_metrics() -> (Self, u16) {
        let port = free_port();
        let mut d = Self::unstarted(&[]);
        d.extra_args = vec![
            "--metrics-addr".into(),
            format!("127.0.0.1:{port}"),
            "--reconcile-interval-seconds".into(),
            "1".into(),
        ];
        d.spawn();
        (d, port)
    }

    /// Starts a daemon serving every driver's CSI socket and registration socket.
    pub fn start_with_csi() -> Self {
        Self::start_with_csi_config("csi:\n  enabled: true\n")
    }

    /// Starts a daemon with `csi_yaml` (a whole `csi:` section) in its config.
    pub fn start_with_csi_config(csi_yaml: &str) -> Self {
        let mut d = Self::unstarted(&[]);
        d.config_extra = csi_yaml.to_owned();
        d.spawn();
        d.wait_until_serving();
        d
    }

    /// Waits (at most 20 s) for the daemon's "ready" line: its socket may answer a moment
    /// before the CSI sockets are bound, the line comes after them.
    #[track_caller]
    pub fn wait_until_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.log_text().contains("moor daemon ready") {
            assert!(
                Instant::now() < deadline,
                "the daemon never said it was ready; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The CSI socket of `driver` (`iscsi`, …).
    pub fn csi_socket(&self, driver: &str) -> PathBuf {
        crate::csi::socket_path(&self.kubelet_dir(), driver)
    }

    /// The registration socket of `driver`.
    pub fn registration_socket(&self, driver: &str) -> PathBuf {
        crate::csi::registration_path(&self.kubelet_dir(), driver)
    }

    /// A client on `driver`'s CSI socket (waits up to 10 s for it).
    #[track_caller]
    pub fn csi(&self, driver: &str) -> super::csi::CsiClient {
        super::csi::CsiClient::connect(&self.csi_socket(driver), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}; log:\n{}", self.log_text()))
    }

    /// A client on `driver`'s registration socket, as kubelet's plugin watcher dials it.
    #[track_caller]
    pub fn registration(&self, driver: &str) -> super::csi::CsiClient {
        super::csi::CsiClient::connect(&self.registration_socket(driver), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}; log:\n{}", self.log_text()))
    }

    /// A fresh tree, no daemon yet: set fields, then [`Daemon::spawn`].
    pub fn unstarted(env: &[(&str, &str)]) -> Self {
        let root = tempfile::Builder::new()
            .prefix("moor-it")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        Daemon {
            root,
            process: None,
            node: "node-it".into(),
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            extra_args: Vec::new(),
            drop_caps: Vec::new(),
            own_mount_namespace: false,
            allow: Some(Allow::default()),
            config_extra: String::new(),
        }
    }

    /// Has the next [`Daemon::spawn`] stop at `point` and wait there to be killed.
    pub fn pause_at(&mut self, point: &str) -> Pause {
        self.arm_pause(point, false)
    }

    /// Has the next [`Daemon::spawn`] stop at `point` (the first time it passes it) until
    /// the test calls [`Pause::resume`].
    pub fn pause_and_resume_at(&mut self, point: &str) -> Pause {
        self.arm_pause(point, true)
    }

    fn arm_pause(&mut self, point: &str, resumable: bool) -> Pause {
        let p = Pause {
            point: point.to_owned(),
            reached: self.root.path().join("paused"),
            resume: resumable.then(|| self.root.path().join("resume")),
        };
        let _ = std::fs::remove_file(&p.reached);
        self.extra_env
            .retain(|(k, _)| !k.starts_with("MOOR_TEST_PAUSE_") && k != "MOOR_TEST_RESUME_MARKER");
        self.extra_env
            .push(("MOOR_TEST_PAUSE_AT".into(), point.to_owned()));
        self.extra_env.push((
            "MOOR_TEST_PAUSE_MARKER".into(),
            p.reached.display().to_string(),
        ));
        if let Some(r) = &p.resume {
            let _ = std::fs::remove_file(r);
            self.extra_env
                .push(("MOOR_TEST_RESUME_MARKER".into(), r.display().to_string()));
        }
        p
    }

    /// The allow-list config: `disks` and `src` under the tree, this process's device-link
    /// directory, and the test's extra entries.
    fn allow_list(&self) -> Option<super::AllowList> {
        let a = self.allow.as_ref()?;
        let mut directories = vec![self.allowed_root(), self.root.path().join("src")];
        directories.extend(a.directories.iter().cloned());
        let mut devices = vec![allowed_device_dir()];
        devices.extend(a.devices.iter().cloned());
        std::fs::create_dir_all(self.allowed_root()).unwrap();
        Some(super::AllowList {
            directories,
            devices,
        })
    }

    /// How [`Daemon::spawn`] runs the daemon on this tree.
    fn spec(&self) -> DaemonSpec {
        let tree = self.tree();
        let mut spec = DaemonSpec::new(moor_exe(), &self.node);
        if self
            .extra_env
            .iter()
            .any(|(k, _)| k == "MOOR_TEST_PAUSE_AT")
        {
            require_test_hooks(&spec.exe);
        }
        spec.log_filter = Some("debug".into());
        spec.pod_log_dir = true;
        spec.config = match self.allow_list() {
            Some(a) if self.config_extra.is_empty() => {
                Some(tree.write_config(&a).unwrap_or_else(|e| panic!("{e}")))
            }
            a => {
                let mut yaml = a.map(|a| a.to_yaml()).unwrap_or_default();
                yaml.push_str(&self.config_extra);
                (!yaml.is_empty()).then(|| {
                    std::fs::write(tree.config(), yaml).unwrap();
                    tree.config()
                })
            }
        };
        spec.args = self.extra_args.iter().map(Into::into).collect();
        spec.env = self
            .extra_env
            .iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        spec.drop_caps = self.drop_caps.clone();
        spec.own_mount_namespace = self.own_mount_namespace;
        spec
    }

    /// The command line [`Daemon::spawn`] runs, for a test that runs a second daemon on the
    /// same tree itself (its output is the caller's).
    pub fn command(&self) -> Command {
        let mut cmd = self.spec().command(&self.tree());
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd
    }

    /// (Re)starts the daemon process on the same tree.
    #[track_caller]
    pub fn spawn(&mut self) {
        let spec = self.spec();
        match DaemonProcess::spawn(&self.tree(), &spec) {
            Ok(p) => self.process = Some(p),
            Err(e) => panic!("{e}; log:\n{}", self.log_text()),
        }
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.process.as_ref().map_or(0, DaemonProcess::pid)
    }

    /// Everything the daemon logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// SIGKILL, no cleanup: what a crash looks like.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// SIGTERM and wait: a clean shutdown.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop();
        }
    }

    /// The pod volume directory kubelet would use.
    pub fn pod_dir(&self, pod_uid: &str, volume: &str) -> PathBuf {
        self.tree().pod_dir(pod_uid, volume)
    }

    /// kubelet's view of the driver: `<plugin-dir>/moor~local/local`, a symlink to moor.
    pub fn driver_link(&self) -> PathBuf {
        self.tree()
            .install_driver_link(&moor_exe())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs the real front end as kubelet does (through a `moor~local/local` symlink),
    /// asserting kubelet's contract: one JSON line on stdout, nothing on stderr.
    #[track_caller]
    pub fn flex(&self, args: &[&str]) -> FlexResult {
        super::flex::call(&self.driver_link(), &self.socket(), args)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `mount` with options, as kubelet would (it creates the directory first).
    #[track_caller]
    pub fn mount(&self, pod_uid: &str, volume: &str, opts: serde_json::Value) -> FlexResult {
        let dir = self.pod_dir(pod_uid, volume);
        std::fs::create_dir_all(&dir).unwrap();
        let opts = kubelet_options(pod_uid, volume, opts);
        self.flex(&["mount", dir.to_str().unwrap(), &opts.to_string()])
    }

    /// `unmount`, then kubelet's rmdir on success.
    #[track_caller]
    pub fn unmount(&self, pod_uid: &str, volume: &str) -> FlexResult {
        let dir = self.pod_dir(pod_uid, volume);
        let r = self.flex(&["unmount", dir.to_str().unwrap()]);
        if r.ok() {
            let _ = std::fs::remove_dir(&dir);
        }
        r
    }

    /// kubelet's CSI paths on this tree.
    pub fn csi_paths(&self) -> super::csi_call::CsiPaths {
        super::csi_call::CsiPaths {
            kubelet_dir: self.kubelet_dir(),
        }
    }

    /// One CSI call for `volume_id` of moor driver `driver`, as the CSI front end hands it
    /// to the daemon; the daemon's typed answer.
    #[track_caller]
    pub fn csi_call(
        &self,
        driver: &str,
        volume_id: &str,
        call: crate::api::CsiCall,
    ) -> crate::api::Response {
        super::csi_call::call(
            &self.socket(),
            driver,
            volume_id,
            call,
            Duration::from_secs(150),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The commands the daemon ran so far (from `command finished` debug lines), in order.
    pub fn commands(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == "command finished")
            .filter_map(|v| v["cmd"].as_str().map(str::to_owned))
            .collect()
    }

    /// The mkfs commands the daemon ran, asserting none carried a force flag.
    #[track_caller]
    pub fn mkfs_commands(&self) -> Vec<String> {
        let mkfs: Vec<String> = self
            .commands()
            .into_iter()
            .filter(|c| c.starts_with("mkfs"))
            .collect();
        for c in &mkfs {
            let forced = c
                .split_whitespace()
                .any(|a| matches!(a, "-f" | "-F" | "--force" | "-FF"));
            assert!(!forced, "mkfs ran with a force flag: {c}");
        }
        mkfs
    }

    /// The stage records in the journal.
    pub fn stage_records(&self) -> Vec<serde_json::Value> {
        let dir = self.state_dir().join("stage");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut out: Vec<(PathBuf, serde_json::Value)> = rd
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .map(|p| {
                let v = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
                (p, v)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.into_iter().map(|(_, v)| v).collect()
    }

    /// Stage records that still claim a mount (anything but `idle`).
    pub fn active_stage_records(&self) -> Vec<serde_json::Value> {
        self.stage_records()
            .into_iter()
            .filter(|r| r["phase"] != "idle")
            .collect()
    }

    /// The stage directory of the local volume at `path`: the key of the record that names
    /// `path` (a device's key is its stable id), else the key of the directory itself.
    pub fn stage_path(&self, path: &str) -> PathBuf {
        let key = self
            .stage_records()
            .into_iter()
            .find(|r| r["volume"]["path"] == path)
            .and_then(|r| r["key"].as_str().map(str::to_owned))
            .unwrap_or_else(|| crate::volume::volume_key("local", path));
        self.kubelet_dir().join("plugins/moor/local").join(key)
    }

    /// Mount points under the daemon's tree.
    pub fn mounts(&self) -> Vec<PathBuf> {
        mounts_under(self.root.path())
    }

    /// Asserts that a failed mount left nothing behind: nothing mounted under the tree, no
    /// stage record claiming a mount, and that kubelet's follow-up unmount succeeds.
    #[track_caller]
    pub fn assert_nothing_left(&self, pod: &str, vol: &str) {
        assert_eq!(self.mounts(), Vec::<PathBuf>::new(), "mounts left behind");
        assert_eq!(
            self.active_stage_records(),
            Vec::<serde_json::Value>::new(),
            "stage records left behind"
        );
        let u = self.unmount(pod, vol);
        u.assert_ok();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        // A failed test shows what the daemon said: CI keeps only the test's output.
        if std::thread::panicking() {
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(DAEMON_LOG_TAIL)..];
            eprintln!(
                "---- the daemon's last {} log lines ({}):\n{}",
                tail.len(),
                self.log().display(),
                tail.join("\n")
            );
        }
        // Leave nothing mounted under the tree before the tempdir is removed (rmdir-safe).
        self.tree().unmount_all();
        tidy_device_dir();
    }
}

/// How much of the daemon's log a failed test prints.
const DAEMON_LOG_TAIL: usize = 80;

/// A volume's options with the keys kubelet adds to every `mount` (pod uid, namespace
/// `default`, volume name, `rw`) where the test did not set them.
pub fn kubelet_options(
    pod_uid: &str,
    volume: &str,
    mut opts: serde_json::Value,
) -> serde_json::Value {
    let o = opts
        .as_object_mut()
        .expect("volume options are a JSON object");
    o.entry("kubernetes.io/pod.uid").or_insert(pod_uid.into());
    o.entry("kubernetes.io/pod.namespace")
        .or_insert("default".into());
    o.entry("kubernetes.io/pvOrVolumeName")
        .or_insert(volume.into());
    o.entry("kubernetes.io/readwrite").or_insert("rw".into());
    opts
}

/// Mount points under `root`, from the live table.
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    super::tree::volume_mounts_under(root).expect("read /proc/self/mountinfo")
}

/// Detaches every mount under `root`, deepest first (a test's last-resort teardown: lazily,
/// so a dead FUSE mount cannot hang it).
pub fn unmount_all(root: &Path) {
    Tree::new(root).unmount_all();
}

/// True when `p` is a mount point (from the live table).
pub fn is_mounted(p: &Path) -> bool {
    mounts_under(p).iter().any(|m| m == p)
}

/// A path as the `&str` the front end's JSON options carry.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A source directory under the daemon's allowed root, with one file in it.
pub fn source(d: &Daemon, name: &str) -> PathBuf {
    let dir = d.allowed_root().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("existing"), "already here").unwrap();
    dir
}

/// The errno of writing a file `name` into `dir` (None: the write worked).
pub fn write_errno(dir: &Path, name: &str) -> Option<i32> {
    std::fs::write(dir.join(name), "x")
        .err()
        .and_then(|e| e.raw_os_error())
}

/// A TCP port on loopback that nothing listens on now (for a daemon's `--metrics-addr`).
pub fn free_port() -> u16 {
    super::free_port().unwrap()
}

/// `GET <path>` from the daemon's HTTP endpoint on loopback: the whole response, headers
/// included.
pub fn http_get(port: u16, path: &str) -> String {
    super::http_get(port, path).unwrap_or_else(|e| panic!("{e}"))
}
