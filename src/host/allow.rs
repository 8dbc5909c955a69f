//! The allow-list of local sources, and the resolver that turns a `path` option into an
//! object held open.
//!
//! Invariant: a [`Resolved`] source was resolved by the kernel once, never through a `/proc`
//! magic link (`RESOLVE_NO_MAGICLINKS`); a directory was resolved beneath an allowed root from
//! that root's fd (`RESOLVE_BENEATH`: neither `..` nor a symlink, absolute or relative, leaves
//! it), is not on a pseudo filesystem, and is neither inside nor around kubelet's or moor's
//! directories; a block device has the device number of an allowed device entry. What is
//! checked, and what the lifecycle mounts (through `/proc/self/fd/N`), is that held object —
//! the text is never looked up again.
//!
//! Why the directory check cannot be fooled: it compares (st_dev, st_ino) of the held object
//! and of each ancestor the kernel returns for `..` from it with those of the refused
//! directories. A bind mount of a refused directory has its root's (dev, ino), a second
//! mount of the same pseudo filesystem has its type, and a symlink or a rename cannot change
//! what an already open fd is.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::DevNum;

/// Which local sources this node serves (`local.allowed-directories`,
/// `local.allowed-devices` and the local PV classes' discovery dirs) and which it refuses
/// whatever the list says.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    /// Directory roots: a directory volume is the root or lies beneath it.
    pub directories: Vec<PathBuf>,
    /// Device entries: a device (or a link to one), or a directory of device links.
    pub devices: Vec<PathBuf>,
    /// Refused with everything under and above them: kubelet's dir, moor's state, run and
    /// socket dirs, `/proc`, `/sys`, `/dev`.
    pub refused: Vec<PathBuf>,
    /// procfs, for `/proc/self/fd/N`.
    pub proc: PathBuf,
}

/// What a `path` resolved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceObject {
    /// A directory, by (st_dev, st_ino).
    Directory {
        /// st_dev.
        dev: u64,
        /// st_ino.
        ino: u64,
    },
    /// A block device, by its device number.
    Block(DevNum),
}

/// A source resolved once and held open (`O_PATH`).
#[derive(Debug, Clone)]
pub struct Resolved {
    fd: Arc<OwnedFd>,
    /// The object's real path now (from the fd): what records and messages name.
    pub real: PathBuf,
    /// What it is.
    pub object: SourceObject,
}

impl PartialEq for Resolved {
    fn eq(&self, other: &Self) -> bool {
        self.object == other.object
    }
}

impl Eq for Resolved {}

impl Resolved {
    /// A second descriptor of the held object (for a bind through the new mount API).
    pub fn dup_fd(&self) -> std::io::Result<OwnedFd> {
        self.fd.try_clone()
    }

    /// `/proc/self/fd/N`: a path that names the held object itself, for mount(2).
    pub fn fd_path(&self, proc: &Path) -> PathBuf {
        proc.join("self/fd").join(self.fd.as_raw_fd().to_string())
    }
}

/// A `path` that is not served.
#[derive(Debug, thiserror::Error)]
pub enum AllowError {
    /// The node allows no source of this kind.
    #[error(
        "option path={path}: {kind} volumes are refused: this node allows none; list {what} under local.{key} in /etc/moor/config.yaml"
    )]
    NoneAllowed {
        /// The text.
        path: String,
        /// `directory` or `device`.
        kind: &'static str,
        /// What the operator lists to allow it.
        what: &'static str,
        /// The config key.
        key: &'static str,
    },
    /// Not in the allow-list.
    #[error(
        "option path={path}: {detail}; the {kind} roots and entries this node serves are listed under local.{key} in /etc/moor/config.yaml"
    )]
    NotAllowed {
        /// The text.
        path: String,
        /// `directory` or `device`.
        kind: &'static str,
        /// The config key.
        key: &'static str,
        /// Why.
        detail: String,
    },
    /// Refused whatever the allow-list says.
    #[error("option path={path}: {detail}")]
    Refused {
        /// The text.
        path: String,
        /// Why.
        detail: String,
    },
    /// Could not be resolved.
    #[error("option path={path}: cannot use it")]
    Open {
        /// The text.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl AllowError {
    /// Stable reason label: `not_allowed` (outside the allow-list) or `bad_source`.
    pub fn reason(&self) -> &'static str {
        match self {
            AllowError::NoneAllowed { .. } | AllowError::NotAllowed { .. } => "not_allowed",
            AllowError::Refused { .. } | AllowError::Open { .. } => "bad_source",
        }
    }
}

/// Filesystems whose directories are kernel interfaces, never data: refused as sources.
/// tmpfs is not in the list although devtmpfs reports its magic: `/dev` is refused by
/// identity (it is in [`AllowList::refused`]), and an operator may serve a real tmpfs.
const PSEUDO_FS: &[(i64, &str)] = &[
    (0x9fa0, "proc"),
    (0x6265_6572, "sysfs"),
    (0x0027_e0eb, "cgroup"),
    (0x6367_7270, "cgroup2"),
    (0x6462_6720, "debugfs"),
    (0x7472_6163, "tracefs"),
    (0x7363_6673, "securityfs"),
    (0xcafe_4a11, "bpf"),
    (0x6265_6570, "configfs"),
    (0x6573_5543, "fusectl"),
    (0x6165_676c, "pstore"),
    (0xde5e_81e4, "efivarfs"),
    (0xf97c_ff8c, "selinuxfs"),
    (0x4341_5d53, "smackfs"),
    (0x1cd1, "devpts"),
    (0x1980_0202, "mqueue"),
    (0x4249_4e4d, "binfmt_misc"),
    (0x6e73_6673, "nsfs"),
    (0x6759_6969, "rpc_pipefs"),
];

/// The pseudo filesystem `f_type` names, if it is one.
pub fn pseudo_fs_name(f_type: i64) -> Option<&'static str> {
    PSEUDO_FS
        .iter()
        .find(|(m, _)| *m == f_type)
        .map(|(_, n)| *n)
}

/// The pseudo filesystem `path` is on now, if it exists and is on one (config checks).
pub fn pseudo_fs_of(path: &Path) -> Option<&'static str> {
    let fd = open_path(path).ok()?;
    pseudo_fs_name(fstatfs_type(&fd).ok()?)
}

/// `openat2(dirfd, path, flags | O_CLOEXEC, resolve)`.
pub fn openat2(
    dirfd: RawFd,
    path: &Path,
    flags: libc::c_int,
    resolve: u64,
) -> std::io::Result<OwnedFd> {
    let p = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: open_how is a plain C struct; all-zero is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = resolve;
    // SAFETY: `p` is NUL-terminated and `how` is a valid open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            p.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::from(std::io::ErrorKind::Other))?;
    // SAFETY: `fd` was just returned by openat2 and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstat(fd: &OwnedFd) -> std::io::Result<libc::stat> {
    // SAFETY: an all-zero stat is valid storage for fstat to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `st` is valid for writes.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

fn fstatfs_type(fd: &OwnedFd) -> std::io::Result<i64> {
    // SAFETY: an all-zero statfs is valid storage for fstatfs to fill.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `st` is valid for writes.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as i64)
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn is_blk(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFBLK
}

fn dev_num(rdev: libc::dev_t) -> DevNum {
    DevNum {
        major: libc::major(rdev),
        minor: libc::minor(rdev),
    }
}

/// Opens `path` (`O_PATH`), following symlinks but no magic link.
fn open_path(path: &Path) -> std::io::Result<OwnedFd> {
    openat2(
        libc::AT_FDCWD,
        path,
        libc::O_PATH,
        libc::RESOLVE_NO_MAGICLINKS,
    )
}

/// (dev, ino) of `fd` and of every directory above it up to `/`, through `..` from the fd.
fn ancestry(fd: &OwnedFd) -> std::io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let st = fstat(fd)?;
    out.push((st.st_dev, st.st_ino));
    let mut cur = openat2(fd.as_raw_fd(), Path::new("."), libc::O_PATH, 0)?;
    // Deeper than PATH_MAX allows in practice; a bound, not a limit anyone meets.
    for _ in 0..4096 {
        let parent = openat2(
            cur.as_raw_fd(),
            Path::new(".."),
            libc::O_PATH | libc::O_DIRECTORY,
            libc::RESOLVE_NO_MAGICLINKS,
        )?;
        let pst = fstat(&parent)?;
        let id = (pst.st_dev, pst.st_ino);
        if out.last() == Some(&id) {
            return Ok(out);
        }
        out.push(id);
        cur = parent;
    }
    Err(std::io::Error::other(
        "directory tree deeper than 4096 levels",
    ))
}

/// The path the kernel gives the object behind `fd`.
fn real_path(fd: &OwnedFd, proc: &Path) -> std::io::Result<PathBuf> {
    std::fs::read_link(proc.join("self/fd").join(fd.as_raw_fd().to_string()))
}

impl AllowList {
    /// Resolves `text` (a clean absolute path) once and checks the object.
    pub fn resolve(&self, text: &Path) -> Result<Resolved, AllowError> {
        let path = text.display().to_string();
        let open_err = |source: std::io::Error| -> AllowError {
            match source.raw_os_error() {
                Some(libc::ELOOP) => AllowError::Refused {
                    path: path.clone(),
                    detail: "it goes through a /proc magic link (or a symlink loop); name the \
                             directory or device itself"
                        .into(),
                },
                _ => AllowError::Open {
                    path: path.clone(),
                    source,
                },
            }
        };
        let root = self
            .directories
            .iter()
            .filter(|r| text.starts_with(r))
            .max_by_key(|r| r.as_os_str().len());
        let fd = match root {
            Some(r) => {
                let rfd = open_path(r).map_err(open_err)?;
                let rel = text.strip_prefix(r).unwrap_or(Path::new(""));
                let rel = if rel.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    rel
                };
                openat2(
                    rfd.as_raw_fd(),
                    rel,
                    libc::O_PATH,
                    libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS,
                )
                .or_else(|e| match e.raw_os_error() {
                    // A link under a directory root may name a device (a discovery dir's
                    // entry): only a device is taken from outside the root, and it is
                    // checked against the device entries below like any other.
                    Some(libc::EXDEV) => match open_path(text) {
                        Ok(fd) if fstat(&fd).is_ok_and(|st| is_blk(&st)) => Ok(fd),
                        _ => Err(AllowError::NotAllowed {
                            path: path.clone(),
                            kind: "directory",
                            key: "allowed-directories",
                            detail: format!(
                                "it leads out of the allowed root {} (through '..' or a symlink)",
                                r.display()
                            ),
                        }),
                    },
                    _ => Err(open_err(e)),
                })?
            }
            None => open_path(text).map_err(open_err)?,
        };
        let st = fstat(&fd).map_err(open_err)?;
        let real = real_path(&fd, &self.proc).map_err(open_err)?;
        if is_dir(&st) {
            if root.is_none() {
                return Err(self.not_allowed_dir(&path));
            }
            self.check_directory(&path, &fd)?;
            Ok(Resolved {
                fd: Arc::new(fd),
                real,
                object: SourceObject::Directory {
                    dev: st.st_dev,
                    ino: st.st_ino,
                },
            })
        } else if is_blk(&st) {
            let dev = dev_num(st.st_rdev);
            if !self.device_allowed(dev) {
                return Err(if self.devices.is_empty() {
                    AllowError::NoneAllowed {
                        path,
                        kind: "device",
                        what: "the device (or a directory of links to it)",
                        key: "allowed-devices",
                    }
                } else {
                    AllowError::NotAllowed {
                        path,
                        kind: "device",
                        key: "allowed-devices",
                        detail: format!(
                            "device {dev} ({}) is not an allowed device",
                            real.display()
                        ),
                    }
                });
            }
            Ok(Resolved {
                fd: Arc::new(fd),
                real,
                object: SourceObject::Block(dev),
            })
        } else {
            Err(AllowError::Refused {
                path,
                detail: "neither a directory nor a block device".into(),
            })
        }
    }

    fn not_allowed_dir(&self, path: &str) -> AllowError {
        if self.directories.is_empty() {
            AllowError::NoneAllowed {
                path: path.into(),
                kind: "directory",
                what: "the directory or a root above it",
                key: "allowed-directories",
            }
        } else {
            AllowError::NotAllowed {
                path: path.into(),
                kind: "directory",
                key: "allowed-directories",
                detail: "not under an allowed directory root".into(),
            }
        }
    }

    fn check_directory(&self, path: &str, fd: &OwnedFd) -> Result<(), AllowError> {
        let refused = |detail: String| AllowError::Refused {
            path: path.into(),
            detail,
        };
        let io = |e: std::io::Error| refused(format!("cannot inspect it: {e}"));
        let f_type = fstatfs_type(fd).map_err(io)?;
        if let Some(name) = pseudo_fs_name(f_type) {
            return Err(refused(format!(
                "it is on a {name} filesystem (a kernel interface, never a volume)"
            )));
        }
        let ours = ancestry(fd).map_err(io)?;
        for r in &self.refused {
            let Ok(rfd) = open_path(r) else {
                continue;
            };
            let Ok(theirs) = ancestry(&rfd) else {
                continue;
            };
            if ours.contains(&theirs[0]) {
                return Err(refused(format!(
                    "it is {} or lies inside it; moor never serves that",
                    r.display()
                )));
            }
            if theirs.contains(&ours[0]) {
                return Err(refused(format!(
                    "it contains {}; moor never serves that",
                    r.display()
                )));
            }
        }
        Ok(())
    }

    /// True when `dev` is an allowed device entry or one in an allowed directory of links.
    pub fn device_allowed(&self, dev: DevNum) -> bool {
        let is = |p: &Path| {
            open_path(p)
                .and_then(|fd| fstat(&fd))
                .is_ok_and(|st| is_blk(&st) && dev_num(st.st_rdev) == dev)
        };
        self.devices.iter().any(|entry| {
            if is(entry) {
                return true;
            }
            match std::fs::read_dir(entry) {
                Ok(rd) => rd.filter_map(Result::ok).any(|e| is(&e.path())),
                Err(_) => false,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Tree {
        t: tempfile::TempDir,
        list: AllowList,
    }

    impl Tree {
        fn new() -> Self {
            let t = tempfile::tempdir().unwrap();
            let root = std::fs::canonicalize(t.path()).unwrap();
            for d in [
                "allowed/data/sub",
                "kubelet/pods/p/volumes",
                "state",
                "run",
                "outside",
            ] {
                std::fs::create_dir_all(root.join(d)).unwrap();
            }
            let list = AllowList {
                directories: vec![root.join("allowed")],
                devices: vec![],
                refused: vec![
                    root.join("kubelet"),
                    root.join("state"),
                    root.join("run"),
                    "/proc".into(),
                    "/sys".into(),
                    "/dev".into(),
                ],
                proc: "/proc".into(),
            };
            Tree { t, list }
        }
        fn p(&self, rel: &str) -> PathBuf {
            std::fs::canonicalize(self.t.path()).unwrap().join(rel)
        }
    }

    #[test]
    fn a_directory_beneath_the_root_is_resolved_to_itself() {
        let t = Tree::new();
        let r = t.list.resolve(&t.p("allowed/data/sub")).unwrap();
        assert_eq!(r.real, t.p("allowed/data/sub"));
        symlink("data/sub", t.p("allowed/alias")).unwrap();
        let a = t.list.resolve(&t.p("allowed/alias")).unwrap();
        assert_eq!(a, r, "two spellings, one object");
        assert_eq!(a.real, t.p("allowed/data/sub"));
        assert!(t.list.resolve(&t.p("allowed")).is_ok());
    }

    #[test]
    fn links_and_dotdot_out_of_the_root_are_refused() {
        let t = Tree::new();
        symlink("/", t.p("allowed/abs")).unwrap();
        symlink("../../outside", t.p("allowed/data/rel")).unwrap();
        symlink(t.p("kubelet"), t.p("allowed/kube")).unwrap();
        symlink("/proc/self/root", t.p("allowed/magic")).unwrap();
        for (p, reason) in [
            ("allowed/abs", "not_allowed"),
            ("allowed/abs/etc", "not_allowed"),
            ("allowed/data/rel", "not_allowed"),
            ("allowed/kube/pods", "not_allowed"),
            ("allowed/magic", "not_allowed"),
        ] {
            let e = t.list.resolve(&t.p(p)).unwrap_err();
            assert_eq!(e.reason(), reason, "{p}: {e}");
        }
        // The text has no '..' (the driver refuses it), but a component may still be one.
        let e = t
            .list
            .resolve(&t.p("allowed/data/../../outside"))
            .unwrap_err();
        assert_eq!(e.reason(), "not_allowed", "{e}");
    }

    #[test]
    fn proc_magic_links_are_refused() {
        let t = Tree::new();
        for p in ["/proc/self/root", "/proc/self/cwd", "/proc/self/root/etc"] {
            let e = t.list.resolve(Path::new(p)).unwrap_err();
            assert_eq!(e.reason(), "bad_source", "{p}: {e}");
            assert!(e.to_string().contains("magic link"), "{p}: {e}");
        }
        // Under an allowed root, through its fd: refused as well.
        let mut list = t.list.clone();
        list.directories.push("/proc".into());
        let e = list.resolve(Path::new("/proc/self/root")).unwrap_err();
        assert!(e.to_string().contains("magic link"), "{e}");
    }

    #[test]
    fn pseudo_filesystems_and_moors_dirs_are_refused_even_when_allowed() {
        let t = Tree::new();
        let mut list = t.list.clone();
        list.directories
            .extend(["/proc", "/sys"].map(PathBuf::from));
        list.directories.push(t.p("kubelet"));
        list.directories.push(t.p("state"));
        let top = std::fs::canonicalize(t.t.path()).unwrap();
        list.directories.push(top.clone());
        for p in [
            PathBuf::from("/proc"),
            "/proc/sys".into(),
            "/sys/kernel".into(),
            t.p("kubelet/pods/p/volumes"),
            t.p("state"),
            top,
        ] {
            let e = list.resolve(&p).unwrap_err();
            assert_eq!(e.reason(), "bad_source", "{}: {e}", p.display());
        }
        assert!(pseudo_fs_name(0x9fa0).is_some());
        assert!(pseudo_fs_name(0xef53).is_none(), "ext4 is data");
    }

    #[test]
    fn nothing_allowed_says_how_to_allow() {
        let t = Tree::new();
        let list = AllowList {
            proc: "/proc".into(),
            ..AllowList::default()
        };
        let e = list.resolve(&t.p("allowed/data")).unwrap_err();
        assert_eq!(e.reason(), "not_allowed");
        assert!(e.to_string().contains("local.allowed-directories"), "{e}");
        let e = t.list.resolve(&t.p("outside")).unwrap_err();
        assert_eq!(e.reason(), "not_allowed");
        let e = t.list.resolve(Path::new("/etc")).unwrap_err();
        assert_eq!(e.reason(), "not_allowed", "{e}");
    }

    #[test]
    fn a_file_is_neither_directory_nor_device() {
        let t = Tree::new();
        std::fs::write(t.p("allowed/file"), "x").unwrap();
        let e = t.list.resolve(&t.p("allowed/file")).unwrap_err();
        assert!(
            e.to_string()
                .contains("neither a directory nor a block device")
        );
        let e = t.list.resolve(&t.p("allowed/missing")).unwrap_err();
        assert!(e.to_string().contains("cannot use it"), "{e}");
    }
}
