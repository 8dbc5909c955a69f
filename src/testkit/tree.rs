//! The scratch tree a harness daemon runs on, laid out as on a node:
//!
//! ```text
//! <root>/kubelet/                       --kubelet-dir (pods/<uid>/volumes/moor~local/<vol>)
//! <root>/state/                         --state-dir
//! <root>/run/moor.sock                  --run-dir, --socket
//! <root>/pod-logs/                      --pod-log-dir (kubelet's <ns>_<pod>_<uid> dirs)
//! <root>/plugins/moor~local/local       the driver symlink kubelet execs
//! <root>/allow.yaml                     the config: the allow-list, no Kubernetes client
//! <root>/daemon.log                     the daemon's stdout and stderr
//! ```
//!
//! Invariant: every path the harness hands out is under `root`; teardown detaches every
//! mount under it, deepest first, and removes nothing that is still mounted.

use std::path::{Path, PathBuf};

use super::TestkitError;
use crate::host::sandbox;

/// The paths of one scratch tree (nothing is created until asked).
#[derive(Debug, Clone)]
pub struct Tree {
    root: PathBuf,
}

impl Tree {
    /// The tree rooted at `root` (the caller owns and removes `root`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Tree { root: root.into() }
    }

    /// The scratch root.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `--kubelet-dir`.
    pub fn kubelet_dir(&self) -> PathBuf {
        self.root.join("kubelet")
    }
    /// `--state-dir`.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }
    /// `--run-dir`.
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }
    /// `--socket`.
    pub fn socket(&self) -> PathBuf {
        self.run_dir().join("moor.sock")
    }
    /// The daemon's log (stdout and stderr, appended across restarts).
    pub fn log(&self) -> PathBuf {
        self.root.join("daemon.log")
    }
    /// kubelet's pod log directory (`<namespace>_<pod>_<uid>`): where the daemon learns a
    /// pod's real namespace.
    pub fn pod_log_dir(&self) -> PathBuf {
        self.root.join("pod-logs")
    }
    /// The config file [`Tree::write_config`] writes.
    pub fn config(&self) -> PathBuf {
        self.root.join("allow.yaml")
    }
    /// kubelet's plugin directory of the `local` driver.
    pub fn plugin_dir(&self) -> PathBuf {
        self.root.join("plugins/moor~local")
    }
    /// kubelet's view of the driver: `<plugin-dir>/moor~local/local`, a symlink to moor.
    pub fn driver_link(&self) -> PathBuf {
        self.plugin_dir().join("local")
    }
    /// The pod volume directory kubelet would use for `volume` of pod `pod_uid`.
    pub fn pod_dir(&self, pod_uid: &str, volume: &str) -> PathBuf {
        self.kubelet_dir()
            .join(format!("pods/{pod_uid}/volumes/moor~local/{volume}"))
    }

    /// Creates the directories a node has before the daemon starts: kubelet's dir and
    /// plugin dir, moor's state and run dirs.
    pub fn create_node_dirs(&self) -> Result<(), TestkitError> {
        for d in [
            self.kubelet_dir(),
            self.state_dir(),
            self.run_dir(),
            self.plugin_dir(),
        ] {
            create_dir(&d)?;
        }
        Ok(())
    }

    /// Installs the driver symlink to `exe`, as install.sh does. Several callers may race to
    /// create it: the first one wins, the others find it.
    pub fn install_driver_link(&self, exe: &Path) -> Result<PathBuf, TestkitError> {
        create_dir(&self.plugin_dir())?;
        let link = self.driver_link();
        match std::os::unix::fs::symlink(exe, &link) {
            Ok(()) => Ok(link),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(link),
            Err(source) => Err(TestkitError::Tree {
                what: "install driver symlink",
                path: link,
                source,
            }),
        }
    }

    /// Writes the daemon's config: no Kubernetes client, and the allow-list (a node serves
    /// only the directories and disks its operator lists).
    pub fn write_config(&self, allow: &AllowList) -> Result<PathBuf, TestkitError> {
        let path = self.config();
        std::fs::write(&path, allow.to_yaml()).map_err(|source| TestkitError::Tree {
            what: "write config",
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    /// Volume mount points under the tree, from the live table.
    pub fn mounts(&self) -> std::io::Result<Vec<PathBuf>> {
        volume_mounts_under(&self.root)
    }

    /// Detaches every mount under the tree (the marker too), deepest first; returns what
    /// volume mount is still mounted afterwards (empty when the teardown worked).
    pub fn unmount_all(&self) -> Vec<PathBuf> {
        let mut left = sandbox::mounts_under(&self.root).unwrap_or_default();
        // Table order puts a parent first; of the deepest paths, the last mounted goes first.
        left.reverse();
        left.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for m in left {
            let _ = sandbox::detach_mount(&m);
        }
        self.mounts().unwrap_or_default()
    }
}

fn create_dir(d: &Path) -> Result<(), TestkitError> {
    std::fs::create_dir_all(d).map_err(|source| TestkitError::Tree {
        what: "create directory",
        path: d.to_owned(),
        source,
    })
}

/// The allow-list of a harness daemon (`local.allowed-directories`, `local.allowed-devices`).
#[derive(Debug, Default, Clone)]
pub struct AllowList {
    /// Directory roots whose subdirectories may be served.
    pub directories: Vec<PathBuf>,
    /// Devices, or directories of device links, that may be served.
    pub devices: Vec<PathBuf>,
}

impl AllowList {
    /// The config file's text; an empty list is left out (the daemon's default: nothing).
    pub fn to_yaml(&self) -> String {
        let list = |key: &str, v: &[PathBuf]| {
            if v.is_empty() {
                return String::new();
            }
            let items: String = v
                .iter()
                .map(|p| format!("\n    - {}", p.display()))
                .collect();
            format!("  {key}:{items}\n")
        };
        format!(
            "local:\n  kubernetes: off\n{}{}",
            list("allowed-directories", &self.directories),
            list("allowed-devices", &self.devices)
        )
    }
}

/// Mount points under `root` from the live table, without the daemon's own mount-namespace
/// marker (`host::nsmark`), which is no volume.
pub fn volume_mounts_under(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut m = sandbox::mounts_under(root)?;
    m.retain(|p| !crate::host::nsmark::is_marker(p));
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allow_list_config_is_the_yaml_the_daemon_reads() {
        let a = AllowList {
            directories: vec!["/t/disks".into(), "/t/src".into()],
            devices: vec!["/dev/loop7".into()],
        };
        let file: crate::config::FileConfig = serde_saphyr::from_str(&a.to_yaml()).unwrap();
        let local = file.local.unwrap();
        assert_eq!(local.kubernetes.as_deref(), Some("off"));
        assert_eq!(local.allowed_directories, a.directories);
        assert_eq!(local.allowed_devices, a.devices);
        let none: crate::config::FileConfig =
            serde_saphyr::from_str(&AllowList::default().to_yaml()).unwrap();
        assert!(none.local.unwrap().allowed_devices.is_empty());
        assert_eq!(
            AllowList::default().to_yaml(),
            "local:\n  kubernetes: off\n"
        );
    }

    #[test]
    fn every_path_of_the_tree_is_under_its_root() {
        let t = Tree::new("/scratch/x");
        for p in [
            t.kubelet_dir(),
            t.state_dir(),
            t.run_dir(),
            t.socket(),
            t.log(),
            t.pod_log_dir(),
            t.config(),
            t.driver_link(),
            t.pod_dir("uid", "vol"),
        ] {
            assert!(p.starts_with("/scratch/x"), "{}", p.display());
        }
        assert_eq!(
            t.pod_dir("u1", "data"),
            Path::new("/scratch/x/kubelet/pods/u1/volumes/moor~local/data")
        );
        assert_eq!(
            t.driver_link(),
            Path::new("/scratch/x/plugins/moor~local/local")
        );
    }
}
