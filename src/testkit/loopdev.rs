//! A loop device over a (sparse) backing file: the disk a harness daemon is given.
//!
//! Invariant: a [`LoopDevice`] detaches its device when dropped (`losetup -d`), whatever
//! happened; the backing file stays the caller's. A loop device keeps a read-only flag set by
//! `BLKROSET` (moor's reader-only raw block stage) across detach and the next attach, so a
//! test that died while its device was read-only would hand the next test a read-only disk:
//! every device is made writable when attached and again before it is detached.

use std::path::{Path, PathBuf};

use super::TestkitError;
use crate::host::{Cmd, CommandRunner, SystemRunner};

/// An attached loop device.
#[derive(Debug)]
pub struct LoopDevice {
    /// `/dev/loopN`.
    pub path: PathBuf,
}

impl LoopDevice {
    /// Creates (or truncates) `backing` as a sparse file of `size_mib` MiB and attaches it.
    pub fn create(backing: &Path, size_mib: u64) -> Result<Self, TestkitError> {
        let tree_err = |source| TestkitError::Tree {
            what: "create backing file",
            path: backing.to_owned(),
            source,
        };
        let f = std::fs::File::create(backing).map_err(tree_err)?;
        f.set_len(size_mib << 20).map_err(tree_err)?;
        Self::attach(backing)
    }

    /// Attaches the first free loop device to `backing`.
    pub fn attach(backing: &Path) -> Result<Self, TestkitError> {
        let loop_err = |detail: String| TestkitError::Loop {
            backing: backing.to_owned(),
            detail,
        };
        let out = SystemRunner
            .run(&Cmd::new("losetup").args(["--find", "--show"]).arg(backing))
            .map_err(|e| loop_err(e.to_string()))?;
        if !out.success() {
            return Err(loop_err(out.stderr_tail()));
        }
        let dev = out.stdout_text().trim().to_owned();
        if dev.is_empty() {
            return Err(loop_err("losetup printed no device".into()));
        }
        let device = LoopDevice { path: dev.into() };
        device.set_writable();
        Ok(device)
    }

    fn set_writable(&self) {
        let _ = SystemRunner.run(&Cmd::new("blockdev").arg("--setrw").arg(&self.path));
    }

    /// The device path as text (what a volume's `path` option carries).
    pub fn path_str(&self) -> &str {
        self.path.to_str().unwrap_or_default()
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        self.set_writable();
        let _ = SystemRunner.run(&Cmd::new("losetup").arg("-d").arg(&self.path));
    }
}
