//! Mounting and asking the kernel about mounts.
//!
//! Invariants: the request path asks targeted questions (`statx` for "is this a mount
//! root, which device") and never reads the whole mount table; a full snapshot of
//! `/proc/self/mountinfo` is for start-up and the reconciler only. Unmount never follows a
//! symlink at the target (`UMOUNT_NOFOLLOW`); the lifecycle's mounts and unmounts go through
//! held [`Target`]s (see [`super::target`]), never a path walked again. Filesystem mounts run
//! with a deadline off the caller's thread, because a mount can block in the kernel.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

use super::bounded::{TimedOut, bounded};
use super::mountinfo::{self, MountInfo};
use super::target::{self, Target};

/// A filesystem mount: `mount -t <fs_type> -o <flags,data> <source> <target>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsMount {
    /// Device or export.
    pub source: PathBuf,
    /// Mount point.
    pub target: PathBuf,
    /// Filesystem type.
    pub fs_type: String,
    /// Generic flags (`ro`, `nosuid`, …) already split from `data`.
    pub flags: MsFlags,
    /// Filesystem-specific options, comma separated.
    pub data: String,
}

/// What went wrong with a mount operation.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The syscall failed.
    #[error("{op} {target}: {errno}")]
    Sys {
        /// `mount`, `bind`, `remount`, `unmount`.
        op: &'static str,
        /// Mount point.
        target: PathBuf,
        /// The kernel's answer.
        errno: Errno,
    },
    /// The syscall did not return within its deadline.
    #[error("{op} {target}: no answer within {:?}", .timeout.0)]
    Timeout {
        /// Operation.
        op: &'static str,
        /// Mount point.
        target: PathBuf,
        /// The deadline.
        timeout: TimedOut,
    },
    /// A path with an interior NUL byte.
    #[error("path {0} contains a NUL byte")]
    BadPath(PathBuf),
}

impl MountError {
    /// The kernel's errno, when there is one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            MountError::Sys { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// Changes the mount table.
pub trait Mounter: Send + Sync {
    /// Mounts a filesystem.
    fn mount(&self, m: &FsMount, timeout: Duration) -> Result<(), MountError>;
    /// Bind-mounts `source` on `target`, then makes it read-only when asked.
    fn bind(&self, source: &Path, target: &Path, read_only: bool) -> Result<(), MountError>;
    /// Changes a mounted filesystem between ro and rw (superblock level).
    fn remount(&self, target: &Path, read_only: bool) -> Result<(), MountError>;
    /// Unmounts `target`; `lazy` detaches it even when busy (MNT_DETACH).
    fn unmount(&self, target: &Path, lazy: bool, timeout: Duration) -> Result<(), MountError>;
    /// Unmounts a bind whose filesystem stays mounted elsewhere (its stage). Dropping one of
    /// several references to a superblock never reaches a filesystem's server (only the
    /// last one does, at kill_super), and the lookup of the target does not revalidate it,
    /// so this runs on the caller's thread with no deadline hand-off.
    fn unmount_bind(&self, target: &Path) -> Result<(), MountError> {
        self.unmount(target, false, Duration::from_secs(60))
    }
    /// Binds `source` onto the held `target` with `flags` (per-mount flags only: `ro`,
    /// `nosuid`, `nodev`, `noexec`, atime modes) set before the bind is visible; the
    /// source mount's own flags are kept. Returns the new mount.
    fn bind_target(
        &self,
        source: &Target,
        target: &Target,
        flags: MsFlags,
    ) -> Result<PathMount, MountError>;
    /// Binds block device `device` (checked to be numbered `dev` through the fd opened)
    /// onto the held regular file `target`, read-only when asked (before the bind is
    /// visible); returns the new mount.
    fn bind_device(
        &self,
        device: &Path,
        dev: super::DevNum,
        target: &Target,
        read_only: bool,
    ) -> Result<PathMount, MountError>;
    /// Mounts a filesystem on the held `target`; returns the new mount.
    fn mount_target(
        &self,
        m: &FsMount,
        target: &Target,
        timeout: Duration,
    ) -> Result<PathMount, MountError>;
    /// Unmounts the mount on top of the held `target` (never a path walked again).
    fn unmount_target(
        &self,
        target: &Target,
        lazy: bool,
        timeout: Duration,
    ) -> Result<(), MountError>;
}

/// What `statx` says about a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathMount {
    /// True when the path is the root of a mount.
    pub is_mount_root: bool,
    /// Kernel mount id of the mount the path is on: the never-reused 64-bit id
    /// (`STATX_MNT_ID_UNIQUE`, Linux 6.8+) when `id_unique`, else the 32-bit one, which
    /// the kernel hands to the next mount as soon as this one is gone.
    pub mount_id: u64,
    /// `mount_id` is the unique kind.
    pub id_unique: bool,
    /// Device (major, minor) of the filesystem.
    pub dev: (u32, u32),
}

/// Reads the mount table.
pub trait MountTable: Send + Sync {
    /// Targeted question about one path (`statx`): cheap at any table size.
    fn path_mount(&self, path: &Path) -> std::io::Result<PathMount>;
    /// The whole table (start-up and reconciler only: costs ~19 ms at 10,000 mounts).
    fn snapshot(&self) -> std::io::Result<Vec<MountInfo>>;
    /// Opens a directory under the kubelet dir as a [`Target`] (see [`super::target`]),
    /// creating missing components (0750) when `create`.
    fn open_target(&self, path: &Path, create: bool) -> std::io::Result<Target>;
    /// What `statx` says about a held target now.
    fn target_mount(&self, t: &Target) -> std::io::Result<PathMount> {
        self.path_mount(t.path())
    }

    /// True when `path` is the root of a mount; false when it is not or does not exist.
    fn is_mount_point(&self, path: &Path) -> std::io::Result<bool> {
        match self.path_mount(path) {
            Ok(m) => Ok(m.is_mount_root),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The stale-mount probe of the mount at `path` ([`super::probe::probe_mount`]): bounded
    /// by `timeout`, off the caller's thread.
    fn probe(&self, path: &Path, timeout: Duration) -> super::probe::Probe {
        super::probe::probe_mount(path, timeout)
    }
}

fn cpath(p: &Path) -> Result<CString, MountError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| MountError::BadPath(p.to_owned()))
}

/// The kernel's mount table, through syscalls.
#[derive(Debug)]
pub struct KernelMounts {
    /// Path of the mountinfo file to snapshot (normally `/proc/self/mountinfo`).
    pub mountinfo: PathBuf,
    /// The kubelet dir: every target is opened beneath it.
    pub kubelet_dir: PathBuf,
}

impl KernelMounts {
    /// The kubelet dir, opened for one operation. Not held across operations: an open fd
    /// pins its mount (the operator's `umount /var/lib/kubelet` would answer EBUSY) and
    /// would keep pointing into a directory a later mount hid. The kubelet dir's own path is
    /// root's configuration; what a swap can attack is below it, and that is walked from
    /// this fd.
    fn root(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        target::open_dir_path(&self.kubelet_dir)
    }
}

fn sys_err<'a>(op: &'static str, target: &'a Target) -> impl Fn(Errno) -> MountError + 'a {
    move |errno| MountError::Sys {
        op,
        target: target.path().to_owned(),
        errno,
    }
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

impl Mounter for KernelMounts {
    fn mount(&self, m: &FsMount, timeout: Duration) -> Result<(), MountError> {
        let m2 = m.clone();
        let run = move || {
            nix::mount::mount(
                Some(&m2.source),
                &m2.target,
                Some(m2.fs_type.as_str()),
                m2.flags,
                (!m2.data.is_empty()).then_some(m2.data.as_str()),
            )
        };
        bounded(timeout, run)
            .map_err(|timeout| MountError::Timeout {
                op: "mount",
                target: m.target.clone(),
                timeout,
            })?
            .map_err(|errno| MountError::Sys {
                op: "mount",
                target: m.target.clone(),
                errno,
            })
    }

    fn bind(&self, source: &Path, target: &Path, read_only: bool) -> Result<(), MountError> {
        let sys = |op, errno| MountError::Sys {
            op,
            target: target.to_owned(),
            errno,
        };
        nix::mount::mount(
            Some(source),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| sys("bind", e))?;
        if read_only {
            // A bind mount ignores MS_RDONLY on creation; it takes a second, remount call.
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            if let Err(e) =
                nix::mount::mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
            {
                // Never leave a writable bind behind a read-only request.
                let _ =
                    nix::mount::umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW);
                return Err(sys("remount-ro", e));
            }
        }
        Ok(())
    }

    fn remount(&self, target: &Path, read_only: bool) -> Result<(), MountError> {
        let mut flags = MsFlags::MS_REMOUNT;
        if read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        nix::mount::mount(None::<&str>, target, None::<&str>, flags, None::<&str>).map_err(
            |errno| MountError::Sys {
                op: "remount",
                target: target.to_owned(),
                errno,
            },
        )
    }

    fn unmount(&self, target: &Path, lazy: bool, timeout: Duration) -> Result<(), MountError> {
        let mut flags = MntFlags::UMOUNT_NOFOLLOW;
        if lazy {
            flags |= MntFlags::MNT_DETACH;
        }
        let t = cpath(target)?;
        let run = move || {
            // SAFETY: `t` is a valid NUL-terminated path that outlives the call.
            let r = unsafe { libc::umount2(t.as_ptr(), flags.bits()) };
            Errno::result(r).map(drop)
        };
        bounded(timeout, run)
            .map_err(|timeout| MountError::Timeout {
                op: "unmount",
                target: target.to_owned(),
                timeout,
            })?
            .map_err(|errno| MountError::Sys {
                op: "unmount",
                target: target.to_owned(),
                errno,
            })
    }

    fn unmount_bind(&self, target: &Path) -> Result<(), MountError> {
        Self::umount_now(target, MntFlags::UMOUNT_NOFOLLOW)
    }

    fn bind_target(
        &self,
        source: &Target,
        target: &Target,
        flags: MsFlags,
    ) -> Result<PathMount, MountError> {
        let (set, clr) = target::bind_attrs(flags).map_err(|_| MountError::Sys {
            op: "bind",
            target: target.path().into(),
            errno: Errno::EINVAL,
        })?;
        let src = match source.parent() {
            _ if source.is_held_dir() => source.open_dir(),
            Some(_) => source.open_dir(),
            // A source outside the kubelet dir (a directory volume), not following a final symlink.
            None => target::open_dir_path(source.path()),
        }
        .map_err(|e| sys_err("open bind source", source)(io_errno(&e)))?;
        let dst = target
            .open_dir()
            .map_err(|e| sys_err("open bind target", target)(io_errno(&e)))?;
        use std::os::fd::AsFd;
        target::bind_fd(src.as_fd(), dst.as_fd(), set, clr).map_err(sys_err("bind", target))
    }

    fn bind_device(
        &self,
        device: &Path,
        dev: super::DevNum,
        target: &Target,
        read_only: bool,
    ) -> Result<PathMount, MountError> {
        let src = target::open_block_device(device, dev).map_err(|e| MountError::Sys {
            op: "open bind source",
            target: device.into(),
            errno: io_errno(&e),
        })?;
        let dst = target
            .open_node()
            .map_err(|e| sys_err("open bind target", target)(io_errno(&e)))?;
        let (set, clr) = if read_only {
            target::bind_attrs(MsFlags::MS_RDONLY).unwrap_or_default()
        } else {
            (0, 0)
        };
        use std::os::fd::AsFd;
        target::bind_fd(src.as_fd(), dst.as_fd(), set, clr).map_err(sys_err("bind", target))
    }

    fn mount_target(
        &self,
        m: &FsMount,
        target: &Target,
        timeout: Duration,
    ) -> Result<PathMount, MountError> {
        use std::os::fd::AsRawFd;
        let dst = target
            .open_dir()
            .map_err(|e| sys_err("open mount target", target)(io_errno(&e)))?;
        let m2 = m.clone();
        let run = move || {
            // The mount lands on the directory the fd holds, whatever its path says now.
            let at = PathBuf::from(format!("/proc/self/fd/{}", dst.as_raw_fd()));
            let r = nix::mount::mount(
                Some(&m2.source),
                &at,
                Some(m2.fs_type.as_str()),
                m2.flags,
                (!m2.data.is_empty()).then_some(m2.data.as_str()),
            );
            drop(dst);
            r
        };
        bounded(timeout, run)
            .map_err(|timeout| MountError::Timeout {
                op: "mount",
                target: target.path().into(),
                timeout,
            })?
            .map_err(sys_err("mount", target))?;
        target
            .statx()
            .map_err(|e| sys_err("statx", target)(io_errno(&e)))
    }

    fn unmount_target(
        &self,
        target: &Target,
        lazy: bool,
        timeout: Duration,
    ) -> Result<(), MountError> {
        let mut flags = MntFlags::UMOUNT_NOFOLLOW;
        if lazy {
            flags |= MntFlags::MNT_DETACH;
        }
        // The deadline thread may outlive this call: it holds its own parent fd.
        let held = target
            .try_clone()
            .map_err(|e| sys_err("unmount", target)(io_errno(&e)))?;
        let run = move || {
            let t = cpath(&held.proc_path()).map_err(|_| Errno::EINVAL)?;
            // SAFETY: `t` is a valid NUL-terminated path that outlives the call.
            let r = unsafe { libc::umount2(t.as_ptr(), flags.bits()) };
            drop(held);
            Errno::result(r).map(drop)
        };
        bounded(timeout, run)
            .map_err(|timeout| MountError::Timeout {
                op: "unmount",
                target: target.path().into(),
                timeout,
            })?
            .map_err(sys_err("unmount", target))
    }
}

impl KernelMounts {
    fn umount_now(target: &Path, flags: MntFlags) -> Result<(), MountError> {
        let t = cpath(target)?;
        // SAFETY: `t` is a valid NUL-terminated path that outlives the call.
        let r = unsafe { libc::umount2(t.as_ptr(), flags.bits()) };
        Errno::result(r).map(drop).map_err(|errno| MountError::Sys {
            op: "unmount",
            target: target.to_owned(),
            errno,
        })
    }
}

impl MountTable for KernelMounts {
    fn path_mount(&self, path: &Path) -> std::io::Result<PathMount> {
        statx_mount(path)
    }

    fn snapshot(&self) -> std::io::Result<Vec<MountInfo>> {
        let text = std::fs::read_to_string(&self.mountinfo)?;
        mountinfo::parse(&text).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    fn open_target(&self, path: &Path, create: bool) -> std::io::Result<Target> {
        use std::os::fd::AsFd;
        let root = self.root()?;
        target::open_target(root.as_fd(), &self.kubelet_dir, path, create)
    }

    fn target_mount(&self, t: &Target) -> std::io::Result<PathMount> {
        t.statx()
    }
}

/// `statx` with the mount-root attribute and the mount id, without following a final
/// symlink or triggering an automount.
pub fn statx_mount(path: &Path) -> std::io::Result<PathMount> {
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(d), Some(n)) => (d, n),
        _ => (path, std::ffi::OsStr::new("")),
    };
    let c = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is NUL-terminated.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by open and is owned by nothing else.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    super::target::statx_at(std::os::fd::AsFd::as_fd(&fd), name)
}

/// The mount facts of a `statx` answer.
pub(crate) fn path_mount_of(stx: &libc::statx) -> std::io::Result<PathMount> {
    let attr = libc::STATX_ATTR_MOUNT_ROOT as u64;
    if stx.stx_attributes_mask & attr == 0 {
        // Kernels before 5.8 cannot say; moor needs 5.8+ (documented in the README).
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "kernel does not report STATX_ATTR_MOUNT_ROOT (needs Linux 5.8+)",
        ));
    }
    Ok(PathMount {
        is_mount_root: stx.stx_attributes & attr != 0,
        mount_id: stx.stx_mnt_id,
        // 0x4000 is STATX_MNT_ID_UNIQUE: the kernel says which of the two ids it gave.
        id_unique: stx.stx_mask & 0x4000 != 0,
        dev: (stx.stx_dev_major, stx.stx_dev_minor),
    })
}

/// Errors a dead network or FUSE mount answers with: the path is inside a remote
/// filesystem whose server or client is gone (a local filesystem never says these).
pub fn is_dead_mount_error(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(
            Errno::ENOTCONN
                | Errno::ESHUTDOWN
                | Errno::ESTALE
                | Errno::EIO
                | Errno::EHOSTDOWN
                | Errno::EHOSTUNREACH
                | Errno::ECONNABORTED
                | Errno::ECONNREFUSED
                | Errno::ECONNRESET
                | Errno::ETIMEDOUT
                | Errno::ENODEV
        )
    )
}

/// Splits a comma-separated option list into generic mount flags and filesystem data.
/// Unknown words pass through to the filesystem, which rejects what it does not know.
pub fn split_options(opts: &str) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in opts.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let f = match o {
            "ro" => MsFlags::MS_RDONLY,
            "rw" | "defaults" | "async" | "auto" | "nouser" | "atime" | "diratime" | "suid"
            | "dev" | "exec" => MsFlags::empty(),
            "nosuid" => MsFlags::MS_NOSUID,
            "nodev" => MsFlags::MS_NODEV,
            "noexec" => MsFlags::MS_NOEXEC,
            "sync" => MsFlags::MS_SYNCHRONOUS,
            "dirsync" => MsFlags::MS_DIRSYNC,
            "noatime" => MsFlags::MS_NOATIME,
            "nodiratime" => MsFlags::MS_NODIRATIME,
            "relatime" => MsFlags::MS_RELATIME,
            "strictatime" => MsFlags::MS_STRICTATIME,
            "lazytime" => MsFlags::MS_LAZYTIME,
            "silent" => MsFlags::MS_SILENT,
            other => {
                data.push(other);
                continue;
            }
        };
        flags |= f;
    }
    (flags, data.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let (f, d) = split_options("noatime, nodev,discard,rw,errors=remount-ro");
        assert_eq!(f, MsFlags::MS_NOATIME | MsFlags::MS_NODEV);
        assert_eq!(d, "discard,errors=remount-ro");
        let (f, d) = split_options("");
        assert!(f.is_empty() && d.is_empty());
    }

    #[test]
    fn statx_sees_the_root_mount() {
        let root = statx_mount(Path::new("/")).unwrap();
        assert!(root.is_mount_root);
        let etc = statx_mount(Path::new("/etc")).unwrap();
        assert!(!etc.is_mount_root || etc.mount_id != root.mount_id);
    }
}
