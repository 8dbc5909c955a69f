//! Fakes for unit tests: a scripted command runner and an in-memory mount table.
//!
//! The script fails the test on any command it did not expect (kubernetes mount-utils'
//! FakeExec shape), and keeps the call log so tests can assert no secret reached argv.
//! The mount fake applies mounts to its table, so later questions see them.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use nix::errno::Errno;

use super::exec::{Cmd, CommandRunner, ExecError, Output};
use super::mountinfo::MountInfo;
use super::mounts::{FsMount, MountError, MountTable, Mounter, PathMount};
use super::probe::Probe;
use super::target::Target;

/// One expected command and its canned answer.
#[derive(Debug, Clone)]
pub struct Expect {
    /// The full command line as [`Cmd::display`] renders it.
    pub cmdline: String,
    /// What it returns.
    pub output: Output,
}

/// A runner that plays a script.
#[derive(Debug, Default)]
pub struct ScriptRunner {
    script: Mutex<VecDeque<Expect>>,
    log: Mutex<Vec<Cmd>>,
}

impl ScriptRunner {
    /// Expects `cmdline` next and answers with exit `code` and `stdout`.
    pub fn expect(&self, cmdline: &str, code: i32, stdout: &str) -> &Self {
        if let Ok(mut s) = self.script.lock() {
            s.push_back(Expect {
                cmdline: cmdline.into(),
                output: Output {
                    code: Some(code),
                    stdout: stdout.as_bytes().to_vec(),
                    stderr: Vec::new(),
                },
            });
        }
        self
    }

    /// Every command run so far.
    pub fn calls(&self) -> Vec<Cmd> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Commands expected but never run.
    pub fn remaining(&self) -> Vec<String> {
        self.script
            .lock()
            .map(|s| s.iter().map(|e| e.cmdline.clone()).collect())
            .unwrap_or_default()
    }
}

impl CommandRunner for ScriptRunner {
    fn run(&self, cmd: &Cmd) -> Result<Output, ExecError> {
        if let Ok(mut l) = self.log.lock() {
            l.push(cmd.clone());
        }
        let next = self.script.lock().ok().and_then(|mut s| s.pop_front());
        match next {
            Some(e) if e.cmdline == cmd.display() => Ok(e.output),
            Some(e) => panic!(
                "unexpected command `{}`; the script expected `{}`",
                cmd.display(),
                e.cmdline
            ),
            None => panic!(
                "unexpected command `{}`; the script is empty",
                cmd.display()
            ),
        }
    }
}

/// An in-memory mount table.
#[derive(Debug, Default)]
pub struct FakeMounts {
    table: Mutex<BTreeMap<PathBuf, MountInfo>>,
    next_id: Mutex<u64>,
    fail_next: Mutex<Vec<(&'static str, Errno)>>,
    probes: Mutex<BTreeMap<PathBuf, Probe>>,
}

impl FakeMounts {
    /// Makes the next operation named `op` (`mount`, `bind`, `unmount`) fail with `errno`.
    pub fn fail_next(&self, op: &'static str, errno: Errno) {
        if let Ok(mut f) = self.fail_next.lock() {
            f.push((op, errno));
        }
    }

    /// Makes the stale-mount probe of the mount at `target` answer `seen` (a dead export,
    /// a hung server) while it is mounted; unmounting or mounting there again forgets it.
    pub fn set_probe(&self, target: &Path, seen: Probe) {
        if let Ok(mut p) = self.probes.lock() {
            p.insert(target.to_owned(), seen);
        }
    }

    /// The mount points, sorted.
    pub fn mount_points(&self) -> Vec<PathBuf> {
        self.table
            .lock()
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The entry at `target`.
    pub fn get(&self, target: &Path) -> Option<MountInfo> {
        self.table.lock().ok().and_then(|t| t.get(target).cloned())
    }

    fn injected(&self, op: &'static str, target: &Path) -> Result<(), MountError> {
        let mut f = self
            .fail_next
            .lock()
            .map_err(|_| MountError::BadPath(target.into()))?;
        if let Some(i) = f.iter().position(|(o, _)| *o == op) {
            let (_, errno) = f.remove(i);
            return Err(MountError::Sys {
                op,
                target: target.into(),
                errno,
            });
        }
        Ok(())
    }

    fn insert(&self, mut m: MountInfo) {
        if let Ok(mut p) = self.probes.lock() {
            p.remove(&m.mount_point);
        }
        if let (Ok(mut t), Ok(mut id)) = (self.table.lock(), self.next_id.lock()) {
            *id += 1;
            m.mount_id = 1000 + *id;
            t.insert(m.mount_point.clone(), m);
        }
    }
}

impl Mounter for FakeMounts {
    fn mount(&self, m: &FsMount, _timeout: Duration) -> Result<(), MountError> {
        self.injected("mount", &m.target)?;
        let ro = m.flags.contains(nix::mount::MsFlags::MS_RDONLY);
        self.insert(MountInfo {
            mount_id: 0,
            parent_id: 1,
            major: 7,
            minor: 0,
            root: "/".into(),
            mount_point: m.target.clone(),
            mount_options: if ro { "ro".into() } else { "rw".into() },
            optional: vec![],
            fs_type: m.fs_type.clone(),
            source: m.source.display().to_string(),
            super_options: m.data.clone(),
        });
        Ok(())
    }

    fn bind(&self, source: &Path, target: &Path, read_only: bool) -> Result<(), MountError> {
        self.injected("bind", target)?;
        let base = self.get(source);
        let mut m = base.unwrap_or(MountInfo {
            mount_id: 0,
            parent_id: 1,
            major: 0,
            minor: 99,
            root: source.into(),
            mount_point: PathBuf::new(),
            mount_options: String::new(),
            optional: vec![],
            fs_type: "none".into(),
            source: source.display().to_string(),
            super_options: String::new(),
        });
        m.mount_point = target.into();
        m.mount_options = if read_only { "ro".into() } else { "rw".into() };
        self.insert(m);
        Ok(())
    }

    fn remount(&self, target: &Path, read_only: bool) -> Result<(), MountError> {
        self.injected("remount", target)?;
        let mut t = self
            .table
            .lock()
            .map_err(|_| MountError::BadPath(target.into()))?;
        match t.get_mut(target) {
            Some(m) => {
                m.mount_options = if read_only { "ro".into() } else { "rw".into() };
                Ok(())
            }
            None => Err(MountError::Sys {
                op: "remount",
                target: target.into(),
                errno: Errno::EINVAL,
            }),
        }
    }

    fn unmount(&self, target: &Path, _lazy: bool, _timeout: Duration) -> Result<(), MountError> {
        self.injected("unmount", target)?;
        let mut t = self
            .table
            .lock()
            .map_err(|_| MountError::BadPath(target.into()))?;
        if let Ok(mut p) = self.probes.lock() {
            p.remove(target);
        }
        t.remove(target).map(drop).ok_or(MountError::Sys {
            op: "unmount",
            target: target.into(),
            errno: Errno::EINVAL,
        })
    }

    fn bind_target(
        &self,
        source: &Target,
        target: &Target,
        flags: nix::mount::MsFlags,
    ) -> Result<PathMount, MountError> {
        let ro = flags.contains(nix::mount::MsFlags::MS_RDONLY);
        self.bind(source.path(), target.path(), ro)?;
        self.path_mount(target.path())
            .map_err(|_| MountError::BadPath(target.path().into()))
    }

    fn mount_target(
        &self,
        m: &FsMount,
        target: &Target,
        timeout: Duration,
    ) -> Result<PathMount, MountError> {
        let mut m = m.clone();
        m.target = target.path().into();
        self.mount(&m, timeout)?;
        self.path_mount(target.path())
            .map_err(|_| MountError::BadPath(target.path().into()))
    }

    fn unmount_target(
        &self,
        target: &Target,
        lazy: bool,
        timeout: Duration,
    ) -> Result<(), MountError> {
        self.unmount(target.path(), lazy, timeout)
    }
}

impl MountTable for FakeMounts {
    fn path_mount(&self, path: &Path) -> std::io::Result<PathMount> {
        if let Some(m) = self.get(path) {
            return Ok(PathMount {
                is_mount_root: true,
                mount_id: m.mount_id,
                id_unique: true,
                dev: (m.major, m.minor),
            });
        }
        std::fs::symlink_metadata(path)?;
        Ok(PathMount {
            is_mount_root: false,
            mount_id: 1,
            id_unique: true,
            dev: (0, 0),
        })
    }

    fn open_target(&self, path: &Path, create: bool) -> std::io::Result<Target> {
        if create {
            std::fs::create_dir_all(path)?;
        }
        Ok(Target::by_path(path))
    }

    /// Not mounted: gone; else what [`FakeMounts::set_probe`] said, or alive.
    fn probe(&self, path: &Path, _timeout: Duration) -> Probe {
        if self.get(path).is_none() {
            return Probe::Gone;
        }
        self.probes
            .lock()
            .ok()
            .and_then(|p| p.get(path).copied())
            .unwrap_or(Probe::Alive)
    }

    fn snapshot(&self) -> std::io::Result<Vec<MountInfo>> {
        Ok(self
            .table
            .lock()
            .map(|t| t.values().cloned().collect())
            .unwrap_or_default())
    }
}
