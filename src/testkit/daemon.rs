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
        match (spec.ready, notify) {
            (Ready::Notify, Some(sock)) => {
                let mut buf = [0u8; 256];
                let n = sock
                    .recv(&mut buf)
                    .map_err(|e| not_ready(format!("no READY=1: {e}")))?;
                let msg = String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned();
                if !msg.contains("READY=1") {
                    return Err(not_ready(format!("unexpected notification {msg:?}")));
                }
                d.notified = msg;
            }
            (ready, _) => {
                let poll = match ready {
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
