//! Mount targets (pod volume directories, stage directories) held by directory fds.
//!
//! Invariant: a target's parent directory is opened once, component by component from the
//! kubelet dir's fd with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS)`, missing components made with `mkdirat` 0750 on the way; every
//! later step (statx, bind, mount, remount, unmount) reaches the target as
//! `/proc/self/fd/<parent>/<name>` or through an fd opened from that parent, so a directory
//! swapped for a symlink during the call cannot redirect any of them. The last component is
//! a plain name: a name that is a mount point cannot be renamed or exchanged in this mount
//! namespace (the kernel answers EBUSY), so the mount found there stays the one checked.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::mount::MsFlags;

use super::mounts::PathMount;

/// A directory moor mounts on or unmounts, reached through its parent's fd.
#[derive(Debug)]
pub struct Target {
    path: PathBuf,
    /// `None` for the in-memory fake, which works by path.
    parent: Option<OwnedFd>,
    name: OsString,
    /// The directory itself, already resolved and held (a bind source the allow-list
    /// resolved once): used as it is, never looked up again.
    dir: Option<OwnedFd>,
}

impl Target {
    /// A target known only by its path (the fake mount table).
    pub fn by_path(path: &Path) -> Self {
        Target {
            path: path.into(),
            parent: None,
            name: path.file_name().map(OsStr::to_owned).unwrap_or_default(),
            dir: None,
        }
    }

    /// A directory already opened and checked (`path` names it in messages only).
    pub fn held_dir(path: &Path, dir: OwnedFd) -> Self {
        Target {
            dir: Some(dir),
            ..Target::by_path(path)
        }
    }

    /// True for a [`Target::held_dir`].
    pub fn is_held_dir(&self) -> bool {
        self.dir.is_some()
    }

    /// The path, for messages and records.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parent directory's fd, when the target was opened from the kernel.
    pub fn parent(&self) -> Option<BorrowedFd<'_>> {
        self.parent.as_ref().map(AsFd::as_fd)
    }

    /// `/proc/self/fd/<parent>/<name>`: a path the kernel resolves through the held parent
    /// directory, never through the text of the target's path.
    pub fn proc_path(&self) -> PathBuf {
        match &self.parent {
            Some(fd) => {
                let mut p = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
                p.push(&self.name);
                p
            }
            None => self.path.clone(),
        }
    }

    /// A copy holding its own parent fd, for a call that may outlive this one (a deadline
    /// thread keeps running after the caller gave up).
    pub fn try_clone(&self) -> std::io::Result<Target> {
        Ok(Target {
            path: self.path.clone(),
            parent: self.parent.as_ref().map(OwnedFd::try_clone).transpose()?,
            name: self.name.clone(),
            dir: self.dir.as_ref().map(OwnedFd::try_clone).transpose()?,
        })
    }

    /// What `statx` says about the target now (the mount on top of it, if any).
    pub fn statx(&self) -> std::io::Result<PathMount> {
        match &self.parent {
            Some(fd) => statx_at(fd.as_fd(), &self.name),
            None => super::mounts::statx_mount(&self.path),
        }
    }

    /// Removes the target directory if it is empty (`rmdir` through the held parent: never
    /// a recursive removal, never a directory elsewhere).
    pub fn remove_dir(&self) -> std::io::Result<()> {
        match &self.parent {
            Some(fd) => {
                let c = cstr(&self.name)?;
                // SAFETY: `c` is NUL-terminated and `fd` a valid directory fd.
                let r = unsafe { libc::unlinkat(fd.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) };
                if r != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            }
            None => std::fs::remove_dir(&self.path),
        }
    }

    /// Creates the target as an empty regular file (mode 0600) through the held parent,
    /// with `O_EXCL | O_NOFOLLOW`: true when it made it; false when a regular file is
    /// already there (moor's own, from an interrupted publish the caller has a record of).
    /// Anything else there (a symlink, a directory, a device) is an error.
    pub fn create_file(&self) -> std::io::Result<bool> {
        let made = match &self.parent {
            Some(fd) => {
                let c = cstr(&self.name)?;
                let flags = libc::O_CREAT
                    | libc::O_EXCL
                    | libc::O_NOFOLLOW
                    | libc::O_WRONLY
                    | libc::O_CLOEXEC;
                // SAFETY: `c` is NUL-terminated and `fd` a valid directory fd.
                let r = unsafe { libc::openat(fd.as_raw_fd(), c.as_ptr(), flags, 0o600) };
                owned(libc::c_long::from(r)).map(drop)
            }
            None => std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&self.path)
                .map(drop),
        };
        match made {
            Ok(()) => Ok(true),
            Err(e)
                if e.kind() == std::io::ErrorKind::AlreadyExists && self.is_regular_file()? =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// True when the target is a regular file (a symlink is not followed).
    pub fn is_regular_file(&self) -> std::io::Result<bool> {
        use std::os::unix::fs::FileTypeExt;
        let md = match &self.parent {
            Some(fd) => {
                let c = cstr(&self.name)?;
                // SAFETY: stat is a plain C struct; all-zero is valid.
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                // SAFETY: `c` is NUL-terminated, `fd` a valid directory fd, `st` writable.
                let r = unsafe {
                    libc::fstatat(
                        fd.as_raw_fd(),
                        c.as_ptr(),
                        &mut st,
                        libc::AT_SYMLINK_NOFOLLOW,
                    )
                };
                if r != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                return Ok(st.st_mode & libc::S_IFMT == libc::S_IFREG);
            }
            None => std::fs::symlink_metadata(&self.path)?,
        };
        let t = md.file_type();
        Ok(t.is_file() && !t.is_block_device())
    }

    /// Unlinks the target if it is a regular file (never a directory, never through a
    /// symlink); the caller checked it is not a mount point (the kernel refuses that too).
    pub fn remove_file(&self) -> std::io::Result<()> {
        if !self.is_regular_file()? {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        match &self.parent {
            Some(fd) => {
                let c = cstr(&self.name)?;
                // SAFETY: `c` is NUL-terminated and `fd` a valid directory fd.
                let r = unsafe { libc::unlinkat(fd.as_raw_fd(), c.as_ptr(), 0) };
                if r != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            }
            None => std::fs::remove_file(&self.path),
        }
    }

    /// Opens the target itself (`O_PATH`), a directory or a file, refusing a symlink.
    pub fn open_node(&self) -> std::io::Result<OwnedFd> {
        if let Some(d) = &self.dir {
            return d.try_clone();
        }
        match &self.parent {
            Some(fd) => super::allow::openat2(
                fd.as_raw_fd(),
                Path::new(&self.name),
                libc::O_PATH,
                libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
            ),
            None => Err(std::io::Error::from(std::io::ErrorKind::Unsupported)),
        }
    }

    /// Opens the target directory itself (`O_PATH`), refusing a symlink in its place.
    pub fn open_dir(&self) -> std::io::Result<OwnedFd> {
        if let Some(d) = &self.dir {
            return d.try_clone();
        }
        match &self.parent {
            Some(fd) => open_beneath(fd.as_fd(), &self.name),
            None => Err(std::io::Error::from(std::io::ErrorKind::Unsupported)),
        }
    }
}

/// Gives the root of what is mounted on `t` to group `gid` with group rwx + setgid (what
/// kubelet's fsGroup does), only when it differs, through an fd opened beneath the held
/// parent: one chown/chmod of the root, never a walk. Returns whether it changed.
pub fn fs_group(t: &Target, gid: u32) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let Some(parent) = t.parent() else {
        return Err(std::io::Error::from(std::io::ErrorKind::Unsupported));
    };
    let c = cstr(&t.name)?;
    // SAFETY: open_how is a plain C struct; all-zero is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `c` is NUL-terminated, `how` is a valid open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            parent.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    let dir = std::fs::File::from(owned(fd)?);
    let md = dir.metadata()?;
    let wanted_bits = 0o2070;
    if md.gid() == gid && md.mode() & wanted_bits == wanted_bits {
        return Ok(false);
    }
    std::os::unix::fs::fchown(&dir, None, Some(gid))?;
    let mode = (md.mode() & 0o7777) | wanted_bits;
    dir.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    Ok(true)
}

/// Opens `path` (under `root_path`, whose fd is `root`) as a [`Target`]: the parent is
/// walked component by component, creating missing directories with mode 0750 when
/// `create`; the target itself is created too when `create`.
pub fn open_target(
    root: BorrowedFd<'_>,
    root_path: &Path,
    path: &Path,
    create: bool,
) -> std::io::Result<Target> {
    let invalid = || std::io::Error::new(std::io::ErrorKind::InvalidInput, "not under the root");
    let rel = path.strip_prefix(root_path).map_err(|_| invalid())?;
    let comps: Vec<&OsStr> = rel
        .components()
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(invalid()),
        })
        .collect::<Result<_, _>>()?;
    let Some((name, dirs)) = comps.split_last() else {
        return Err(invalid());
    };
    let mut cur = dup(root)?;
    for c in dirs {
        cur = open_or_make(cur.as_fd(), c, create)?;
    }
    if create {
        // The target too: kubelet makes pod dirs, moor makes stage dirs; either may be missing.
        drop(open_or_make(cur.as_fd(), name, true)?);
    }
    Ok(Target {
        path: path.into(),
        parent: Some(cur),
        dir: None,
        name: (*name).to_owned(),
    })
}

fn dup(fd: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    fd.try_clone_to_owned()
}

fn open_or_make(dir: BorrowedFd<'_>, name: &OsStr, create: bool) -> std::io::Result<OwnedFd> {
    match open_beneath(dir, name) {
        Err(e) if create && e.kind() == std::io::ErrorKind::NotFound => {
            let c = cstr(name)?;
            // SAFETY: `c` is NUL-terminated; `dir` is a valid directory fd.
            let r = unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o750) };
            if r != 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::AlreadyExists {
                    return Err(e);
                }
            }
            open_beneath(dir, name)
        }
        other => other,
    }
}

fn cstr(name: &OsStr) -> std::io::Result<CString> {
    CString::new(name.as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

/// `openat2(dir, name, O_PATH | O_DIRECTORY)` confined beneath `dir`, with no symlink and
/// no magic link anywhere (a symlink answers ELOOP, a file ENOTDIR).
pub fn open_beneath(dir: BorrowedFd<'_>, name: &OsStr) -> std::io::Result<OwnedFd> {
    super::allow::openat2(
        dir.as_raw_fd(),
        Path::new(name),
        libc::O_PATH | libc::O_DIRECTORY,
        libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    )
}

/// Opens the block device node at `path` (`O_PATH`; its links followed, as `/dev/disk/by-id`
/// names are links) and checks the object opened is the block device numbered `dev`: the
/// checked fd, never the path's text, is what a bind then uses.
pub fn open_block_device(path: &Path, dev: super::DevNum) -> std::io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is NUL-terminated.
    let fd = owned(libc::c_long::from(unsafe {
        libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC)
    }))?;
    // SAFETY: stat is a plain C struct; all-zero is valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is valid and `st` writable.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFBLK || super::DevNum::from_rdev(st.st_rdev) != dev {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is not block device {dev} now", path.display()),
        ));
    }
    Ok(fd)
}

/// Opens a directory by its path (`O_PATH`, no final symlink): the kubelet dir's own fd.
pub fn open_dir_path(path: &Path) -> std::io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is NUL-terminated.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        )
    };
    owned(libc::c_long::from(fd))
}

fn owned(fd: libc::c_long) -> std::io::Result<OwnedFd> {
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::from(std::io::ErrorKind::Other))?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `STATX_MNT_ID_UNIQUE` (Linux 6.8): a 64-bit mount id that is never reused.
const STATX_MNT_ID_UNIQUE: u32 = 0x4000;

/// `statx` of `name` in `dir` (or of `dir` itself when `name` is empty), without following
/// a final symlink or triggering an automount, asking for the unique mount id.
pub fn statx_at(dir: BorrowedFd<'_>, name: &OsStr) -> std::io::Result<PathMount> {
    let c = cstr(name)?;
    let mut flags = libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT | libc::AT_STATX_DONT_SYNC;
    if name.is_empty() {
        flags |= libc::AT_EMPTY_PATH;
    }
    // SAFETY: statx is a plain C struct; all-zero is a valid bit pattern.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `stx` is a valid, writable statx buffer.
    let r = unsafe {
        libc::statx(
            dir.as_raw_fd(),
            c.as_ptr(),
            flags,
            libc::STATX_TYPE | libc::STATX_MNT_ID | STATX_MNT_ID_UNIQUE,
            &mut stx,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    super::mounts::path_mount_of(&stx)
}

// The new mount API (open_tree 5.2, move_mount 5.2, mount_setattr 5.12); libc has the
// syscall numbers but not every flag.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const MOUNT_ATTR_NOATIME: u64 = 0x10;
const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
const MOUNT_ATTR__ATIME: u64 = 0x70;
const MOUNT_ATTR_NODIRATIME: u64 = 0x80;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// The per-mount flags a bind can carry, as `mount_setattr` bits; anything else in `flags`
/// is returned as not applicable to a bind.
pub fn bind_attrs(flags: MsFlags) -> Result<(u64, u64), MsFlags> {
    let mut set = 0;
    let mut clr = 0;
    let mut rest = flags;
    for (ms, attr) in [
        (MsFlags::MS_RDONLY, MOUNT_ATTR_RDONLY),
        (MsFlags::MS_NOSUID, MOUNT_ATTR_NOSUID),
        (MsFlags::MS_NODEV, MOUNT_ATTR_NODEV),
        (MsFlags::MS_NOEXEC, MOUNT_ATTR_NOEXEC),
        (MsFlags::MS_NODIRATIME, MOUNT_ATTR_NODIRATIME),
    ] {
        if flags.contains(ms) {
            set |= attr;
            rest.remove(ms);
        }
    }
    // The atime mode is one field: setting one mode clears the others.
    for (ms, attr) in [
        (MsFlags::MS_NOATIME, MOUNT_ATTR_NOATIME),
        (MsFlags::MS_STRICTATIME, MOUNT_ATTR_STRICTATIME),
        (MsFlags::MS_RELATIME, 0),
    ] {
        if flags.contains(ms) {
            set |= attr;
            clr |= MOUNT_ATTR__ATIME;
            rest.remove(ms);
        }
    }
    if rest.is_empty() {
        Ok((set, clr))
    } else {
        Err(rest)
    }
}

/// Binds the mount tree at `source` (the root of a mount or a directory) onto the
/// directory `target`, with `attr_set`/`attr_clr` applied before the bind becomes visible
/// (so a read-only bind is never writable, not even for a moment). The clone keeps the
/// source mount's own flags (a `nosuid,nodev` stage stays so in every pod). Returns the new
/// mount's identity.
pub fn bind_fd(
    source: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    attr_set: u64,
    attr_clr: u64,
) -> Result<PathMount, Errno> {
    let empty = c"";
    // SAFETY: the path is a NUL-terminated empty string and `source` a valid fd.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            source.as_raw_fd(),
            empty.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint,
        )
    };
    let tree = owned(tree).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    if attr_set != 0 || attr_clr != 0 {
        let attr = MountAttr {
            attr_set,
            attr_clr,
            propagation: 0,
            userns_fd: 0,
        };
        // SAFETY: `attr` is a valid mount_attr of the size passed; the path is empty.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_EMPTY_PATH as libc::c_uint,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        Errno::result(r)?;
    }
    // SAFETY: both fds are valid and both paths are NUL-terminated empty strings.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            target.as_raw_fd(),
            empty.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    Errno::result(r)?;
    // `tree` is the attached mount now; it is closed on return, so it never pins the mount
    // (a held fd would make a later unmount answer EBUSY).
    statx_at(tree.as_fd(), OsStr::new(""))
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_flags_map_to_mount_attrs_and_others_are_named() {
        let (set, clr) =
            bind_attrs(MsFlags::MS_RDONLY | MsFlags::MS_NOEXEC | MsFlags::MS_NOATIME).unwrap();
        assert_eq!(
            set,
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOEXEC | MOUNT_ATTR_NOATIME
        );
        assert_eq!(clr, MOUNT_ATTR__ATIME);
        assert_eq!(bind_attrs(MsFlags::empty()).unwrap(), (0, 0));
        assert_eq!(
            bind_attrs(MsFlags::MS_SYNCHRONOUS | MsFlags::MS_NODEV).unwrap_err(),
            MsFlags::MS_SYNCHRONOUS
        );
    }

    #[test]
    fn a_symlinked_component_is_refused() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("k/pods")).unwrap();
        std::fs::create_dir_all(t.path().join("outside/v")).unwrap();
        std::os::unix::fs::symlink(t.path().join("outside"), t.path().join("k/pods/x")).unwrap();
        let root = open_dir_path(&t.path().join("k")).unwrap();
        let err = open_target(
            root.as_fd(),
            &t.path().join("k"),
            &t.path().join("k/pods/x/v/name"),
            true,
        )
        .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{err}");
        assert!(!t.path().join("outside/v/name").exists());
        let ok = open_target(
            root.as_fd(),
            &t.path().join("k"),
            &t.path().join("k/pods/y/v/name"),
            true,
        )
        .unwrap();
        assert!(t.path().join("k/pods/y/v/name").is_dir());
        assert!(!ok.statx().unwrap().is_mount_root);
    }
}
