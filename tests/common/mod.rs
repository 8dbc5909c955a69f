//! Helpers for host integration tests (tier 2): real loop devices, real mkfs, real mounts,
//! a real `moor daemon` process driven through the real `moor flex` front end.
//!
//! These tests need root and a private mount namespace (`unshare -m`, as `run-tests`
//! arranges). A missing capability FAILS the test with a message saying what is missing:
//! a green run must mean the tests really ran.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Panics unless we are root in a mount namespace of our own, with `/` made private so
/// nothing we mount propagates to the host.
pub fn require_privileged_sandbox() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "host integration tests need root: run them through ./run-tests"
    );
    assert!(
        in_private_mount_namespace(),
        "host integration tests must run in a mount namespace of their own (unshare -m): run them through ./run-tests"
    );
    let status = Command::new("mount")
        .args(["--make-rprivate", "/"])
        .status()
        .expect("run mount");
    assert!(status.success(), "mount --make-rprivate / failed");
}

/// True when an ancestor process lives in another mount namespace than we do: proof that
/// someone between it and us ran `unshare -m`. (PID 1's namespace may be unreadable in a
/// sandbox, so the chain of parents is walked instead.)
fn in_private_mount_namespace() -> bool {
    let ours = std::fs::read_link("/proc/self/ns/mnt").expect("read /proc/self/ns/mnt");
    let mut pid = std::process::id();
    for _ in 0..64 {
        let Some(ppid) = parent_of(pid) else {
            return false;
        };
        if ppid == 0 {
            return false;
        }
        if let Ok(ns) = std::fs::read_link(format!("/proc/{ppid}/ns/mnt"))
            && ns != ours
        {
            return true;
        }
        pid = ppid;
    }
    false
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: the fields after the last ')' are fixed.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
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

/// A loop device over a sparse file, detached on drop.
pub struct LoopDev {
    pub path: PathBuf,
    _file: tempfile::NamedTempFile,
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
        let dev = sh(
            "losetup",
            &["--find", "--show", file.path().to_str().unwrap()],
        );
        LoopDev {
            path: PathBuf::from(dev.trim()),
            _file: file,
            listed: None,
        }
    }

    pub fn path_str(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// Grows the backing file (as an array grows a LUN); the loop device keeps its old
    /// size until someone sets its capacity again.
    pub fn grow_backing_file(&self, size_mib: u64) {
        self._file
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
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

/// A running `moor daemon` on a temporary kubelet/state/run tree.
pub struct Daemon {
    pub root: tempfile::TempDir,
    pub child: Option<Child>,
    pub node: String,
    pub extra_env: Vec<(String, String)>,
    /// Flags appended to the daemon's command line (later flags win).
    pub extra_args: Vec<String>,
    /// Capabilities removed from the daemon's bounding set (so from it and its children),
    /// as a unit's `CapabilityBoundingSet=` or a container's `drop` would.
    pub drop_caps: Vec<u32>,
    /// Extra allow-list entries beside the defaults; None: no allow-list at all.
    pub allow: Option<Allow>,
}

/// Allow-list entries a test adds to its daemon's config.
#[derive(Debug, Default, Clone)]
pub struct Allow {
    pub directories: Vec<PathBuf>,
    pub devices: Vec<PathBuf>,
}

impl Daemon {
    pub fn kubelet_dir(&self) -> PathBuf {
        self.root.path().join("kubelet")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.root.path().join("state")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.root.path().join("run")
    }
    pub fn socket(&self) -> PathBuf {
        self.run_dir().join("moor.sock")
    }
    pub fn log(&self) -> PathBuf {
        self.root.path().join("daemon.log")
    }
    /// The directory roots this daemon allows (`local.allowed-directories`): `disks` and
    /// `src` under its tree; a test may change the list before `spawn`.
    pub fn allowed_root(&self) -> PathBuf {
        self.root.path().join("disks")
    }
    /// kubelet's pod log directory (`<namespace>_<pod>_<uid>`) for this daemon.
    pub fn pod_log_dir(&self) -> PathBuf {
        self.root.path().join("pod-logs")
    }

    /// Starts a daemon on a fresh tree.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a daemon with extra environment (e.g. a pause point).
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

    fn unstarted(env: &[(&str, &str)]) -> Self {
        let root = tempfile::Builder::new()
            .prefix("moor-it")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        Daemon {
            root,
            child: None,
            node: "node-it".into(),
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            extra_args: Vec::new(),
            drop_caps: Vec::new(),
            allow: Some(Allow::default()),
        }
    }

    /// A daemon whose config allows no directory and no device (the default of a node).
    pub fn start_without_allow_list() -> Self {
        let mut d = Self::unstarted(&[]);
        d.allow = None;
        d.spawn();
        d
    }

    /// Writes the allow-list config and names it in `MOOR_CONFIG` (a `--config` flag in
    /// `extra_args` wins over it, as for an operator).
    fn write_allow_config(&self, cmd: &mut Command) {
        let Some(a) = &self.allow else {
            return;
        };
        let list = |v: &[PathBuf]| {
            v.iter()
                .map(|p| format!("\n    - {}", p.display()))
                .collect::<String>()
        };
        let mut dirs = vec![self.allowed_root(), self.root.path().join("src")];
        dirs.extend(a.directories.iter().cloned());
        let mut devs = vec![allowed_device_dir()];
        devs.extend(a.devices.iter().cloned());
        std::fs::create_dir_all(self.allowed_root()).unwrap();
        let config = self.root.path().join("allow.yaml");
        std::fs::write(
            &config,
            format!(
                "local:\n  kubernetes: off\n  allowed-directories:{}\n  allowed-devices:{}\n",
                list(&dirs),
                list(&devs)
            ),
        )
        .unwrap();
        cmd.env("MOOR_CONFIG", &config);
    }

    /// (Re)starts the daemon process on the same tree.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_moor"));
        cmd.arg("daemon")
            .arg("--kubelet-dir")
            .arg(self.kubelet_dir())
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--run-dir")
            .arg(self.run_dir())
            .arg("--socket")
            .arg(self.socket())
            .arg("--pod-log-dir")
            .arg(self.pod_log_dir())
            .args([
                "--metrics-addr",
                "off",
                "--node-name",
                &self.node,
                "--log-format",
                "json",
            ])
            .env("MOOR_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.write_allow_config(&mut cmd);
        cmd.args(&self.extra_args);
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        if !self.drop_caps.is_empty() {
            use std::os::unix::process::CommandExt;
            let caps = self.drop_caps.clone();
            // SAFETY: the closure runs between fork and exec and only calls prctl, which is
            // async-signal-safe; it allocates nothing.
            unsafe {
                cmd.pre_exec(move || {
                    for c in &caps {
                        if libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(*c), 0, 0, 0) != 0
                        {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        let _ = std::fs::remove_file(self.socket());
        self.child = Some(cmd.spawn().expect("spawn moor daemon"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited early ({st}); log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "daemon did not listen within 20 s; log:\n{}",
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// SIGKILL, no cleanup: what a crash looks like.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait: a clean shutdown.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }

    /// The pod volume directory kubelet would use.
    pub fn pod_dir(&self, pod_uid: &str, volume: &str) -> PathBuf {
        self.kubelet_dir()
            .join(format!("pods/{pod_uid}/volumes/moor~local/{volume}"))
    }

    /// kubelet's view of the driver: `<plugin-dir>/moor~local/local`, a symlink to moor.
    pub fn driver_link(&self) -> PathBuf {
        let plugin = self.root.path().join("plugins/moor~local");
        std::fs::create_dir_all(&plugin).unwrap();
        let link = plugin.join("local");
        // Several test threads may race to create it: the first one wins, the others find it.
        match std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_moor"), &link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => panic!("driver symlink {}: {e}", link.display()),
        }
        link
    }

    /// Runs the real front end as kubelet does (through a `moor~local/local` symlink).
    pub fn flex(&self, args: &[&str]) -> FlexResult {
        let out = Command::new(self.driver_link())
            .args(args)
            .env("MOOR_SOCKET", self.socket())
            .output()
            .expect("exec moor front end");
        assert!(
            out.stderr.is_empty(),
            "front end wrote to stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).expect("utf-8 stdout");
        let json: serde_json::Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("front end printed non-JSON {stdout:?}: {e}"));
        assert_eq!(
            stdout.trim().lines().count(),
            1,
            "exactly one JSON line: {stdout:?}"
        );
        FlexResult {
            code: out.status.code(),
            json,
        }
    }

    /// `mount` with options, as kubelet would (it creates the directory first).
    pub fn mount(&self, pod_uid: &str, volume: &str, opts: serde_json::Value) -> FlexResult {
        let dir = self.pod_dir(pod_uid, volume);
        std::fs::create_dir_all(&dir).unwrap();
        let mut opts = opts;
        let o = opts.as_object_mut().unwrap();
        o.entry("kubernetes.io/pod.uid").or_insert(pod_uid.into());
        o.entry("kubernetes.io/pod.namespace")
            .or_insert("default".into());
        o.entry("kubernetes.io/pvOrVolumeName")
            .or_insert(volume.into());
        o.entry("kubernetes.io/readwrite").or_insert("rw".into());
        self.flex(&["mount", dir.to_str().unwrap(), &opts.to_string()])
    }

    /// `unmount`, then kubelet's rmdir on success.
    pub fn unmount(&self, pod_uid: &str, volume: &str) -> FlexResult {
        let dir = self.pod_dir(pod_uid, volume);
        let r = self.flex(&["unmount", dir.to_str().unwrap()]);
        if r.ok() {
            let _ = std::fs::remove_dir(&dir);
        }
        r
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        // Leave nothing mounted under the tree before the tempdir is removed (rmdir-safe).
        for m in mounts_under(self.root.path()).into_iter().rev() {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        tidy_device_dir();
    }
}

/// A FlexVolume reply as kubelet sees it.
#[derive(Debug)]
pub struct FlexResult {
    pub code: Option<i32>,
    pub json: serde_json::Value,
}

impl FlexResult {
    pub fn ok(&self) -> bool {
        self.code == Some(0) && self.json["status"] == "Success"
    }
    pub fn status(&self) -> &str {
        self.json["status"].as_str().unwrap_or("")
    }
    pub fn message(&self) -> &str {
        self.json["message"].as_str().unwrap_or("")
    }
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

/// Mount points under `root`, from the live table.
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    moor::host::mountinfo::parse(&text)
        .unwrap()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(root))
        .collect()
}

/// True when `p` is a mount point (from the live table).
pub fn is_mounted(p: &Path) -> bool {
    mounts_under(p).iter().any(|m| m == p)
}

/// Host-side checks (signatures, checksums, mount table, daemon log) and device setup.
pub mod host;

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
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET <path>` from the daemon's HTTP endpoint on loopback: the whole response, headers
/// included.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}
