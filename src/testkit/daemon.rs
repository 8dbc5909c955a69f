//! Spawning a `moor daemon` on a [`Tree`], waiting until it serves, and stopping it.
//!
//! Invariant: a [`DaemonProcess`] is stopped when dropped (SIGTERM, then reaped), so a
//! failing harness step never leaves a daemon holding the tree's locks and mounts.

use std::ffi::OsString;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{TestkitError, Tree};
use crate::host::sandbox;

/// How the harness knows the daemon serves.
#[derive(Debug, Clone, Copy)]
pub enum Ready {
    /// Its socket accepts a connection (polled at this interval).
    Socket {
        /// The polling interval.
        poll: Duration,
    },
    /// It sends `READY=1` over `NOTIFY_SOCKET`, as systemd would receive it.
    Notify,
}

/// How to run the daemon: the binary, its flags beyond the tree's and its environment.
#[derive(Debug, Clone)]
pub struct DaemonSpec {
    /// The moor binary.
    pub exe: PathBuf,
    /// `--node-name`.
    pub node_name: String,
    /// `--metrics-addr` (`off`, or `127.0.0.1:<port>`).
    pub metrics_addr: String,
    /// `MOOR_LOG` when set (e.g. `debug`, so a test can read the commands run).
    pub log_filter: Option<String>,
    /// The config file, passed as `MOOR_CONFIG` (a `--config` in `args` wins, as for an
    /// operator).
    pub config: Option<PathBuf>,
    /// Pass the tree's pod log directory as `--pod-log-dir` (else the daemon reads the
    /// host's `/var/log/pods`).
    pub pod_log_dir: bool,
    /// Flags after the tree's (later flags win).
    pub args: Vec<OsString>,
    /// Environment variables set for the daemon.
    pub env: Vec<(OsString, OsString)>,
    /// Environment variables removed from what the daemon inherits.
    pub env_remove: Vec<OsString>,
    /// Capabilities (`CAP_*` numbers) dropped from the daemon's bounding set.
    pub drop_caps: Vec<u32>,
    /// Run the daemon in a mount namespace of its own (as a DaemonSet's container).
    pub own_mount_namespace: bool,
    /// SIGTERM the daemon when the spawning thread dies.
    pub terminate_with_parent: bool,
    /// What "ready" means.
    pub ready: Ready,
    /// How long to wait for it.
    pub deadline: Duration,
}

impl DaemonSpec {
    /// The defaults every caller starts from: no metrics, JSON logs, ready when the socket
    /// answers (polled every 20 ms, for up to 20 s).
    pub fn new(exe: impl Into<PathBuf>, node_name: &str) -> Self {
        DaemonSpec {
            exe: exe.into(),
            node_name: node_name.to_owned(),
            metrics_addr: "off".into(),
            log_filter: None,
            config: None,
            pod_log_dir: false,
            args: Vec::new(),
            env: Vec::new(),
            env_remove: Vec::new(),
            drop_caps: Vec::new(),
            own_mount_namespace: false,
            terminate_with_parent: false,
            ready: Ready::Socket {
                poll: Duration::from_millis(20),
            },
            deadline: Duration::from_secs(20),
        }
    }

    /// The daemon's command line on `tree`, without the wait.
    pub fn command(&self, tree: &Tree) -> Command {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("daemon")
            .arg("--kubelet-dir")
            .arg(tree.kubelet_dir())
            .arg("--state-dir")
            .arg(tree.state_dir())
            .arg("--run-dir")
            .arg(tree.run_dir())
            .arg("--socket")
            .arg(tree.socket());
        if self.pod_log_dir {
            cmd.arg("--pod-log-dir").arg(tree.pod_log_dir());
        }
        cmd.arg("--metrics-addr")
            .arg(&self.metrics_addr)
            .arg("--node-name")
            .arg(&self.node_name)
            .args(["--log-format", "json"])
            .stdin(Stdio::null());
        for k in &self.env_remove {
            cmd.env_remove(k);
        }
        if let Some(f) = &self.log_filter {
            cmd.env("MOOR_LOG", f);
        }
        if let Some(c) = &self.config {
            cmd.env("MOOR_CONFIG", c);
        }
        cmd.args(&self.args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if !self.drop_caps.is_empty() {
            sandbox::drop_capabilities_at_exec(&mut cmd, self.drop_caps.clone());
        }
        if self.own_mount_namespace {
            sandbox::new_mount_namespace_at_exec(&mut cmd);
        }
        if self.terminate_with_parent {
            sandbox::terminate_with_parent_at_exec(&mut cmd);
        }
        cmd
    }
}

/// A running daemon.
#[derive(Debug)]
pub struct DaemonProcess {
    child: Option<Child>,
    /// From the spawn to "ready".
    pub ready_after: Duration,
    /// The sd_notify message that said so (empty for [`Ready::Socket`]).
    pub notified: String,
}

impl DaemonProcess {
    /// Starts the daemon on `tree` (its output appended to [`Tree::log`]) and waits until it
    /// is ready. A stale socket from an earlier daemon on the tree is removed first.
    pub fn spawn(tree: &Tree, spec: &DaemonSpec) -> Result<Self, TestkitError> {
        let log_path = tree.log();
        let tree_err = |what, path: &PathBuf| {
            let path = path.clone();
            move |source| TestkitError::Tree { what, path, source }
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(tree_err("open daemon log", &log_path))?;
        let log2 = log
            .try_clone()
            .map_err(tree_err("open daemon log", &log_path))?;
        let mut cmd = spec.command(tree);
        cmd.stdout(log).stderr(log2);
        let notify = match spec.ready {
            Ready::Notify => {
                let path = tree.root().join("notify.sock");
                let _ = std::fs::remove_file(&path);
                let sock = UnixDatagram::bind(&path).map_err(tree_err("notify socket", &path))?;
                sock.set_read_timeout(Some(spec.deadline))
                    .map_err(tree_err("notify socket", &path))?;
                cmd.env("NOTIFY_SOCKET", &path);
                Some(sock)
            }
            Ready::Socket { .. } => None,
        };
        let _ = std::fs::remove_file(tree.socket());
        let started = Instant::now();
        let child = cmd.spawn().map_err(|source| TestkitError::Spawn {
            exe: spec.exe.clone(),
            source,
        })?;
        let mut d = DaemonProcess {
            child: Some(child),
            ready_after: Duration::ZERO,
            notified: String::new(),
        };
        let not_ready = |detail: String| TestkitError::NotReady {
            seconds: spec.deadline.as_secs(),
            detail,
            log: log_path.clone(),
        };
        if let Some(sock) = notify {
            let mut buf = [0u8; 256];
            let n = sock
                .recv(&mut buf)
                .map_err(|e| not_ready(format!("no READY=1: {e}")))?;
            let msg = String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned();
            if !msg.contains("READY=1") {
                return Err(not_ready(format!("unexpected notification {msg:?}")));
            }
            d.notified = msg;
        } else {
            let poll = match spec.ready {
                Ready::Socket { poll } => poll,
                Ready::Notify => Duration::from_millis(20),
            };
            let deadline = started + spec.deadline;
            while UnixStream::connect(tree.socket()).is_err() {
                if let Some(status) = d.try_wait() {
                    return Err(TestkitError::ExitedEarly {
                        status: status.to_string(),
                        log: log_path,
                    });
                }
                if Instant::now() > deadline {
                    return Err(not_ready(format!(
                        "{} does not answer",
                        tree.socket().display()
                    )));
                }
                std::thread::sleep(poll);
            }
        }
        d.ready_after = started.elapsed();
        Ok(d)
    }

    /// The daemon's pid (0 once it was stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Its exit status, when it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM and wait: a clean shutdown.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = sandbox::terminate(c.id());
            let _ = c.wait();
        }
    }

    /// SIGKILL, no cleanup: what a crash looks like.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn the_callers_flags_come_after_the_trees_and_the_config_goes_in_the_environment() {
        let tree = Tree::new("/scratch/t");
        let mut spec = DaemonSpec::new("/bin/moor", "node-x");
        spec.config = Some("/scratch/t/allow.yaml".into());
        spec.log_filter = Some("debug".into());
        spec.pod_log_dir = true;
        spec.args = vec!["--socket".into(), "/elsewhere.sock".into()];
        spec.env_remove = vec!["MOOR_LOG_FORMAT".into()];
        let cmd = spec.command(&tree);
        let args: Vec<&OsStr> = cmd.get_args().collect();
        let pos = |a: &str| args.iter().position(|x| *x == a).unwrap();
        assert_eq!(args[0], "daemon");
        assert_eq!(args[pos("--kubelet-dir") + 1], "/scratch/t/kubelet");
        assert_eq!(args[pos("--pod-log-dir") + 1], "/scratch/t/pod-logs");
        assert_eq!(args[pos("--node-name") + 1], "node-x");
        assert_eq!(args[pos("--metrics-addr") + 1], "off");
        // Two --socket flags: the tree's first, the caller's last (the last one wins).
        let sockets: Vec<usize> = (0..args.len()).filter(|i| args[*i] == "--socket").collect();
        assert_eq!(sockets.len(), 2);
        assert_eq!(args[sockets[0] + 1], "/scratch/t/run/moor.sock");
        assert_eq!(args[sockets[1] + 1], "/elsewhere.sock");
        assert_eq!(sockets[1] + 2, args.len());
        let envs: Vec<(&OsStr, Option<&OsStr>)> = cmd.get_envs().collect();
        assert!(envs.contains(&(
            OsStr::new("MOOR_CONFIG"),
            Some(OsStr::new("/scratch/t/allow.yaml"))
        )));
        assert!(envs.contains(&(OsStr::new("MOOR_LOG"), Some(OsStr::new("debug")))));
        assert!(envs.contains(&(OsStr::new("MOOR_LOG_FORMAT"), None)));
        let bare = DaemonSpec::new("/bin/moor", "n").command(&tree);
        assert!(!bare.get_args().any(|a| a == "--pod-log-dir"));
        assert!(!bare.get_envs().any(|(k, _)| k == "MOOR_CONFIG"));
    }

    #[test]
    fn a_daemon_that_exits_before_it_serves_is_reported_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let tree = Tree::new(dir.path());
        let spec = DaemonSpec::new("/bin/false", "n");
        let e = DaemonProcess::spawn(&tree, &spec).unwrap_err();
        assert_eq!(e.reason(), "exited_early", "{e}");
        assert!(
            e.to_string().contains(&tree.log().display().to_string()),
            "{e}"
        );
        assert!(tree.log().exists());

        let e = DaemonProcess::spawn(&tree, &DaemonSpec::new(dir.path().join("none"), "n"))
            .unwrap_err();
        assert_eq!(e.reason(), "spawn", "{e}");
    }

    #[test]
    fn a_daemon_that_never_serves_is_given_up_at_the_deadline() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tree = Tree::new(dir.path());
        // A "daemon" that stays up and never listens nor notifies.
        let exe = dir.path().join("fake-moor");
        std::fs::write(&exe, "#!/bin/sh\nexec sleep 5\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut spec = DaemonSpec::new(&exe, "n");
        spec.deadline = Duration::from_millis(300);
        for ready in [
            Ready::Socket {
                poll: Duration::from_millis(10),
            },
            Ready::Notify,
        ] {
            spec.ready = ready;
            let mut started = Instant::now();
            let mut e = DaemonProcess::spawn(&tree, &spec).unwrap_err();
            // A thread of `cargo test` forking while the script was open for writing makes
            // its exec fail with ETXTBSY for a moment.
            for _ in 0..20 {
                let TestkitError::Spawn { source, .. } = &e else {
                    break;
                };
                assert_eq!(source.kind(), std::io::ErrorKind::ExecutableFileBusy, "{e}");
                std::thread::sleep(Duration::from_millis(50));
                started = Instant::now();
                e = DaemonProcess::spawn(&tree, &spec).unwrap_err();
            }
            assert_eq!(e.reason(), "not_ready", "{ready:?}: {e}");
            // Given up at the deadline, and the sleeper was not left running past it.
            assert!(started.elapsed() < Duration::from_secs(3), "{ready:?}");
        }
    }
}
