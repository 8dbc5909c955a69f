//! Where moor runs and where its tools run: on the host itself (systemd unit), or in a
//! container (the DaemonSet) that can reach the host's PID 1 (`hostPID`).
//!
//! In a container, the tools bound to the host's own state run in the host's mount namespace
//! (`nsenter --mount=/proc/1/ns/mnt`): iscsiadm (it talks a version-coupled protocol to the
//! host's iscsid and keeps the host's node database), multipath (the host's multipathd), rbd
//! (the host's ceph configuration), the mount helpers of network filesystems (rpc.statd,
//! keyrings and FUSE clients are host state) and systemd-run, so a FUSE client is started in
//! a transient scope of the **host's** systemd: it is no process of the container (its
//! cgroup), and restarting or upgrading the pod never kills a live mount. The filesystem
//! tools (blkid, mkfs, fsck, resize, wipefs) stay in the image: they act on a device node and
//! the never-format probe must be the blkid moor was tested with.
//!
//! The paths moor hands those tools (the kubelet dir, `/run/moor`, `/var/lib/moor`) mean the
//! same on both sides, because the DaemonSet mounts each host directory at its own path.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::exec::{Cmd, CommandRunner, ExecError, Output};

/// The programs that run on the host when moor runs in a container.
pub const HOST_TOOLS: &[&str] = &[
    "iscsiadm",
    "multipath",
    "rbd",
    "mount",
    "systemd-run",
    "pkill",
];

/// Where this daemon runs, as seen at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// In the host's own mount namespace (a systemd unit, or by hand).
    Host {
        /// The host's systemd runs FUSE clients in scopes of their own.
        systemd: bool,
    },
    /// In a container that sees the host's PID 1: host tools go through `nsenter`.
    Container {
        /// The host's mount namespace (`<proc>/1/ns/mnt`).
        host_mnt_ns: PathBuf,
        /// The host's systemd is there to run FUSE clients in scopes.
        systemd: bool,
    },
    /// In a container that cannot reach the host's PID 1 (no `hostPID`): tools run in the
    /// container, and a FUSE client dies with it.
    Isolated,
}

impl Placement {
    /// Decides at start-up. `host_mnt_ns` is the operator's word that moor runs in a
    /// container and where the host's mount namespace is (config `host-mount-namespace`,
    /// `/proc/1/ns/mnt` with `hostPID`); a mount namespace of moor's own is not proof of a
    /// container (a test sandbox, a unit with mount namespacing), so it is never guessed.
    /// Without it, moor being PID 1 means a container of its own.
    pub fn detect(proc: &Path, host_mnt_ns: Option<&Path>) -> Placement {
        let self_is_init = std::fs::read_link(proc.join("self"))
            .ok()
            .is_some_and(|p| p == Path::new("1"));
        match host_mnt_ns {
            Some(ns) if !self_is_init && std::fs::read_link(ns).is_ok() => {
                // The host's root, as its PID 1 sees it: /proc/<pid>/root beside ns/mnt.
                let root = ns
                    .parent()
                    .and_then(Path::parent)
                    .map(|pid| pid.join("root/run/systemd/system"));
                Placement::Container {
                    host_mnt_ns: ns.to_owned(),
                    systemd: root.is_some_and(|r| r.is_dir()),
                }
            }
            _ if self_is_init => Placement::Isolated,
            // Named but unreachable (no hostPID): the container cannot reach the host.
            Some(_) => Placement::Isolated,
            None => Placement::Host {
                systemd: Path::new("/run/systemd/system").is_dir(),
            },
        }
    }

    /// FUSE clients are started in a systemd scope of the host's systemd.
    pub fn fuse_scope(&self) -> bool {
        matches!(
            self,
            Placement::Host { systemd: true } | Placement::Container { systemd: true, .. }
        )
    }

    /// Stable label for logs, `/readyz` and the `moor_placement` metric.
    pub fn label(&self) -> &'static str {
        match self {
            Placement::Host { .. } => "host",
            Placement::Container { .. } => "container",
            Placement::Isolated => "isolated",
        }
    }

    /// The risk an operator must know, or `None` when FUSE mounts outlive moor.
    pub fn risk(&self) -> Option<&'static str> {
        match self {
            _ if self.fuse_scope() => None,
            Placement::Isolated => Some(
                "moor runs in a container that cannot reach the host's PID 1 (no hostPID): FUSE clients (glusterfs, ceph-fuse) live in moor's container and die with it, and the host's iscsiadm/multipath/mount helpers are not used",
            ),
            _ => Some(
                "no host systemd: FUSE clients (glusterfs, ceph-fuse) are children of moor's service and die when it is killed as a group",
            ),
        }
    }

    /// The runner tools go through: `inner`, with the host tools wrapped in `nsenter` when in
    /// a container.
    pub fn runner(&self, inner: Arc<dyn CommandRunner>) -> Arc<dyn CommandRunner> {
        match self {
            Placement::Container { host_mnt_ns, .. } => Arc::new(OnHostRunner {
                inner,
                mnt_ns: host_mnt_ns.clone(),
            }),
            _ => inner,
        }
    }
}

/// Runs the host tools in the host's mount namespace; everything else as it is.
pub struct OnHostRunner {
    inner: Arc<dyn CommandRunner>,
    mnt_ns: PathBuf,
}

impl OnHostRunner {
    /// The command as it is run: `nsenter --mount=<ns> -- <program> <args>` for a host tool
    /// (redaction follows its arguments), unchanged otherwise.
    pub fn wrap(&self, cmd: &Cmd) -> Option<Cmd> {
        let name = Path::new(&cmd.program)
            .file_name()
            .unwrap_or(OsStr::new(""));
        if !HOST_TOOLS.iter().any(|t| OsStr::new(t) == name) {
            return None;
        }
        let mut mount = OsString::from("--mount=");
        mount.push(&self.mnt_ns);
        let prefix = [mount, "--".into(), cmd.program.clone()];
        let mut wrapped = cmd.clone();
        wrapped.program = "nsenter".into();
        wrapped.args = prefix
            .iter()
            .cloned()
            .chain(cmd.args.iter().cloned())
            .collect();
        wrapped.redact = cmd.redact.iter().map(|i| i + prefix.len()).collect();
        Some(wrapped)
    }
}

impl CommandRunner for OnHostRunner {
    fn run(&self, cmd: &Cmd) -> Result<Output, ExecError> {
        match self.wrap(cmd) {
            Some(w) => self.inner.run(&w),
            None => self.inner.run(cmd),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::host::fake::ScriptRunner;

    fn container() -> Placement {
        Placement::Container {
            host_mnt_ns: "/proc/1/ns/mnt".into(),
            systemd: true,
        }
    }

    #[test]
    fn in_a_container_host_tools_enter_the_hosts_mount_namespace_and_the_rest_stay() {
        let script = Arc::new(ScriptRunner::default());
        script.expect(
            "nsenter --mount=/proc/1/ns/mnt -- iscsiadm -m node --login",
            0,
            "",
        );
        script.expect(
            "nsenter --mount=/proc/1/ns/mnt -- systemd-run --scope -- mount -t glusterfs s:/v /x",
            0,
            "",
        );
        script.expect("blkid -p /dev/sdb", 2, "");
        let runner = container().runner(script.clone());
        runner
            .run(&Cmd::new("iscsiadm").args(["-m", "node", "--login"]))
            .unwrap();
        runner
            .run(&Cmd::new("systemd-run").args([
                "--scope",
                "--",
                "mount",
                "-t",
                "glusterfs",
                "s:/v",
                "/x",
            ]))
            .unwrap();
        runner
            .run(&Cmd::new("blkid").args(["-p", "/dev/sdb"]))
            .unwrap();
        assert!(script.remaining().is_empty(), "{:?}", script.remaining());
    }

    #[test]
    fn a_secret_stays_redacted_when_wrapped() {
        let r = OnHostRunner {
            inner: Arc::new(ScriptRunner::default()),
            mnt_ns: "/proc/1/ns/mnt".into(),
        };
        let cmd = Cmd::new("iscsiadm")
            .args(["-m", "node", "-v"])
            .secret_arg("chap-secret");
        let w = r.wrap(&cmd).unwrap();
        assert_eq!(
            w.display(),
            "nsenter --mount=/proc/1/ns/mnt -- iscsiadm -m node -v <redacted>"
        );
        assert!(r.wrap(&Cmd::new("/usr/sbin/mkfs.xfs")).is_none());
        assert!(r.wrap(&Cmd::new("/usr/sbin/multipath")).is_some());
    }

    #[test]
    fn on_the_host_and_isolated_nothing_is_wrapped() {
        for p in [Placement::Host { systemd: true }, Placement::Isolated] {
            let script = Arc::new(ScriptRunner::default());
            script.expect("iscsiadm -m session", 0, "");
            p.runner(script.clone())
                .run(&Cmd::new("iscsiadm").args(["-m", "session"]))
                .unwrap();
            assert!(script.remaining().is_empty());
        }
    }

    #[test]
    fn the_placement_names_its_risk() {
        assert_eq!(container().risk(), None);
        assert!(container().fuse_scope());
        assert!(Placement::Isolated.risk().unwrap().contains("die with it"));
        assert!(!Placement::Isolated.fuse_scope());
        let no_systemd = Placement::Container {
            host_mnt_ns: "/proc/1/ns/mnt".into(),
            systemd: false,
        };
        assert!(no_systemd.risk().unwrap().contains("no host systemd"));
    }

    #[test]
    fn detection_follows_the_configured_host_namespace() {
        // A fake /proc: PID 1 is the host's init, its systemd there.
        let t = tempfile::tempdir().unwrap();
        let proc = t.path();
        std::fs::create_dir_all(proc.join("1/ns")).unwrap();
        std::os::unix::fs::symlink("mnt:[2]", proc.join("1/ns/mnt")).unwrap();
        std::os::unix::fs::symlink("4242", proc.join("self")).unwrap();
        std::fs::create_dir_all(proc.join("1/root/run/systemd/system")).unwrap();
        let ns = proc.join("1/ns/mnt");
        assert_eq!(
            Placement::detect(proc, Some(&ns)),
            Placement::Container {
                host_mnt_ns: ns.clone(),
                systemd: true
            }
        );
        // Not configured: never guessed from namespaces, tools run where moor runs.
        assert!(matches!(
            Placement::detect(proc, None),
            Placement::Host { .. }
        ));
        // Configured but unreachable (no hostPID): isolated, with the risk named.
        assert_eq!(
            Placement::detect(proc, Some(&proc.join("9/ns/mnt"))),
            Placement::Isolated
        );
        // PID 1 is this process: a container of its own, whatever the config says.
        std::fs::remove_file(proc.join("self")).unwrap();
        std::os::unix::fs::symlink("1", proc.join("self")).unwrap();
        assert_eq!(Placement::detect(proc, Some(&ns)), Placement::Isolated);
        assert_eq!(Placement::detect(proc, None), Placement::Isolated);
    }
}
