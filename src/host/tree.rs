//! The fd tree walk behind a local-PV wipe: removes everything inside a directory without
//! ever crossing into another filesystem.
//!
//! Invariant: each name is examined with `statx` relative to its directory's descriptor (no
//! path is resolved twice, no symlink is followed); a mount root or an object on another
//! device is left in place and reported, a directory is checked again after it is opened,
//! and a directory that still holds a mount is not removed.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;

/// What a contents wipe did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TreeReport {
    /// Files, links and directories removed.
    pub removed: u64,
    /// Mount points found inside and left untouched (with their parents).
    pub nested_mounts: Vec<PathBuf>,
}

const MAX_DEPTH: usize = 2048;

fn statx_at(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> std::io::Result<libc::statx> {
    // SAFETY: statx is a plain C struct; all-zero is a valid bit pattern.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `dir` is an open fd, `name` NUL-terminated, `stx` a writable statx buffer.
    let r = unsafe {
        libc::statx(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT,
            libc::STATX_TYPE | libc::STATX_MNT_ID,
            &mut stx,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stx)
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Where {
    dev: (u32, u32),
    mnt: u64,
}

fn where_of(s: &libc::statx) -> (Where, bool) {
    let attr = libc::STATX_ATTR_MOUNT_ROOT as u64;
    (
        Where {
            dev: (s.stx_dev_major, s.stx_dev_minor),
            mnt: s.stx_mnt_id,
        },
        s.stx_attributes & attr != 0,
    )
}

/// Removes everything inside `dir` without crossing into another mount: each name is
/// examined with `statx` relative to its directory's fd (no path is resolved twice), a mount
/// root or another device is left alone, a directory is re-checked after it is opened, and a
/// directory that still holds a mount is simply not removed.
pub fn remove_contents(dir: &Path) -> Result<TreeReport, String> {
    let fd = nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("open {}: {e}", dir.display()))?;
    let (root, _) =
        where_of(&statx_at(fd.as_fd(), c"", libc::AT_EMPTY_PATH).map_err(|e| e.to_string())?);
    let mut report = TreeReport::default();
    walk(fd, dir, root, &mut report, 0)?;
    Ok(report)
}

fn walk(
    fd: OwnedFd,
    path: &Path,
    root: Where,
    report: &mut TreeReport,
    depth: usize,
) -> Result<bool, String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "{}: deeper than {MAX_DEPTH} levels",
            path.display()
        ));
    }
    let err =
        |what: &str, p: &Path, e: &dyn std::fmt::Display| format!("{what} {}: {e}", p.display());
    let dirfd = fd.try_clone().map_err(|e| err("dup", path, &e))?;
    let mut d = nix::dir::Dir::from_fd(dirfd).map_err(|e| err("opendir", path, &e))?;
    let names: Vec<CString> = d
        .iter()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_owned())
        .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
        .collect();
    drop(d);
    let mut all_gone = true;
    for name in names {
        let child = path.join(std::ffi::OsStr::from_bytes(name.as_bytes()));
        let stx = match statx_at(fd.as_fd(), &name, 0) {
            Ok(s) => s,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(err("statx", &child, &e)),
        };
        let (w, is_mount_root) = where_of(&stx);
        if is_mount_root || w != root {
            report.nested_mounts.push(child);
            all_gone = false;
            continue;
        }
        let is_dir = u32::from(stx.stx_mode) & libc::S_IFMT == libc::S_IFDIR;
        if is_dir {
            let sub = match nix::fcntl::openat(
                fd.as_fd(),
                name.as_c_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) {
                Ok(s) => s,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(err("open", &child, &e)),
            };
            // Re-check what we opened: something may have been mounted there meanwhile.
            let (w2, root2) = where_of(
                &statx_at(sub.as_fd(), c"", libc::AT_EMPTY_PATH)
                    .map_err(|e| err("statx", &child, &e))?,
            );
            if w2 != root || root2 {
                report.nested_mounts.push(child);
                all_gone = false;
                continue;
            }
            if !walk(sub, &child, root, report, depth + 1)? {
                all_gone = false;
                continue;
            }
            match nix::unistd::unlinkat(fd.as_fd(), name.as_c_str(), UnlinkatFlags::RemoveDir) {
                Ok(()) => report.removed += 1,
                Err(Errno::ENOENT) => {}
                Err(Errno::EBUSY) | Err(Errno::ENOTEMPTY) => all_gone = false,
                Err(e) => return Err(err("rmdir", &child, &e)),
            }
        } else {
            match nix::unistd::unlinkat(fd.as_fd(), name.as_c_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) => report.removed += 1,
                Err(Errno::ENOENT) => {}
                Err(Errno::EBUSY) => {
                    report.nested_mounts.push(child);
                    all_gone = false;
                }
                Err(e) => return Err(err("unlink", &child, &e)),
            }
        }
    }
    Ok(all_gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_go_the_entry_stays() {
        let t = tempfile::tempdir().unwrap();
        let e = t.path().join("entry");
        std::fs::create_dir_all(e.join("a/b/c")).unwrap();
        std::fs::write(e.join("a/b/c/f"), "x").unwrap();
        std::fs::write(e.join("top"), "x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", e.join("link")).unwrap();
        std::os::unix::fs::symlink(t.path(), e.join("dirlink")).unwrap();
        std::fs::write(t.path().join("outside"), "keep").unwrap();
        let r = remove_contents(&e).unwrap();
        assert_eq!(r.nested_mounts, Vec::<PathBuf>::new());
        assert_eq!(r.removed, 7);
        assert!(e.is_dir());
        assert_eq!(std::fs::read_dir(&e).unwrap().count(), 0);
        // Symlinks were removed, not followed.
        assert_eq!(
            std::fs::read_to_string(t.path().join("outside")).unwrap(),
            "keep"
        );
        assert!(Path::new("/etc/passwd").exists());
    }
}
