//! The stale-mount probe and the filesystem usage question, both bounded and off the
//! caller's thread: a dead export must never wedge the reconciler.
//!
//! Invariant: the probe never trusts a cached answer. `statfs` and `opendir` can be
//! answered from a client's caches (an evicted ceph-fuse passes both; FUSE's attribute cache
//! keeps answering a plain `stat` for a second after the client died), so a forced attribute
//! sync (`AT_STATX_FORCE_SYNC`) and one directory read must reach the server too.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;

use super::bounded::{TimedOut, bounded};
use super::mounts::{is_dead_mount_error, statx_mount};

/// What a probe of a mount saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Answers.
    Alive,
    /// Answers with an error only a dead mount gives.
    Dead(Errno),
    /// The path is no longer a mount point.
    Gone,
    /// No answer within the deadline.
    Hung,
}

impl Probe {
    /// A label for logs and metrics (`alive`, `unmounted`, `hung`, or the errno's name).
    pub fn label(self) -> String {
        match self {
            Probe::Alive => "alive".into(),
            Probe::Dead(e) => format!("{e:?}"),
            Probe::Gone => "unmounted".into(),
            Probe::Hung => "hung".into(),
        }
    }
}

/// Probes the mount at `path` (see the module header), within `timeout`.
pub fn probe_mount(path: &Path, timeout: Duration) -> Probe {
    let p = path.to_path_buf();
    let answer = bounded(timeout, move || -> Result<bool, Errno> {
        let io_errno = |e: std::io::Error| e.raw_os_error().map_or(Errno::EIO, Errno::from_raw);
        match statx_mount(&p) {
            Ok(m) if m.is_mount_root => {}
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_errno(e)),
        }
        nix::sys::statfs::statfs(&p)?;
        let fd = nix::fcntl::open(
            &p,
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        // SAFETY: statx is a plain C struct; all-zero is a valid bit pattern.
        let mut stx: libc::statx = unsafe { std::mem::zeroed() };
        // SAFETY: a valid open fd, an empty NUL-terminated path with AT_EMPTY_PATH, and a
        // writable statx buffer.
        let r = unsafe {
            libc::statx(
                fd.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH | libc::AT_STATX_FORCE_SYNC,
                libc::STATX_BASIC_STATS,
                &mut stx,
            )
        };
        Errno::result(r)?;
        let mut buf = [0u8; 4096];
        // SAFETY: a valid open directory fd and a writable buffer of the given length.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                fd.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(Errno::last());
        }
        Ok(true)
    });
    match answer {
        Ok(Ok(true)) => Probe::Alive,
        Ok(Ok(false)) => Probe::Gone,
        Ok(Err(e)) if is_dead_mount_error(&std::io::Error::from(e)) => Probe::Dead(e),
        // Other errors (EACCES on a root-squashed export…) say the server answers.
        Ok(Err(_)) => Probe::Alive,
        Err(_) => Probe::Hung,
    }
}

/// What `statvfs` says about a mounted filesystem, in bytes and inodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FsUsage {
    /// Size.
    pub capacity_bytes: u64,
    /// Available to an unprivileged writer.
    pub available_bytes: u64,
    /// In use (size minus free, reserved blocks counted as used, as `df` does).
    pub used_bytes: u64,
    /// Inodes.
    pub inodes: u64,
    /// Free inodes.
    pub inodes_free: u64,
}

/// Why [`fs_usage`] has no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    /// `statvfs` failed.
    #[error("statvfs failed")]
    Failed(#[source] Errno),
    /// No answer in time.
    #[error("statvfs hung")]
    Hung(#[source] TimedOut),
}

/// `statvfs` of `path`, within `timeout`, off the caller's thread.
pub fn fs_usage(path: &Path, timeout: Duration) -> Result<FsUsage, UsageError> {
    let p = path.to_path_buf();
    match bounded(timeout, move || nix::sys::statvfs::statvfs(&p)) {
        Ok(Ok(s)) => {
            let frsize = s.fragment_size();
            Ok(FsUsage {
                capacity_bytes: s.blocks() * frsize,
                available_bytes: s.blocks_available() * frsize,
                used_bytes: s.blocks().saturating_sub(s.blocks_free()) * frsize,
                inodes: s.files(),
                inodes_free: s.files_free(),
            })
        }
        Ok(Err(e)) => Err(UsageError::Failed(e)),
        Err(t) => Err(UsageError::Hung(t)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_that_is_no_mount_point_is_gone_and_a_live_mount_answers() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(probe_mount(t.path(), Duration::from_secs(5)), Probe::Gone);
        assert_eq!(
            probe_mount(&t.path().join("missing"), Duration::from_secs(5)),
            Probe::Gone
        );
        assert_eq!(
            probe_mount(Path::new("/"), Duration::from_secs(5)),
            Probe::Alive
        );
    }

    #[test]
    fn usage_of_a_filesystem_adds_up() {
        let t = tempfile::tempdir().unwrap();
        let u = fs_usage(t.path(), Duration::from_secs(5)).unwrap();
        assert!(u.capacity_bytes > 0);
        assert!(u.available_bytes <= u.capacity_bytes);
        assert!(u.used_bytes <= u.capacity_bytes);
        assert!(u.inodes_free <= u.inodes);
        assert_eq!(
            fs_usage(&t.path().join("missing"), Duration::from_secs(5)),
            Err(UsageError::Failed(Errno::ENOENT))
        );
    }
}
