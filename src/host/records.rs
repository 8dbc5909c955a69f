//! The one durable record store: the journal's stage and publish records and the wipe
//! journal are both a directory of `<stem>.json` files kept through a [`Store`].
//!
//! Invariants: a record is replaced atomically — `<stem>.tmp` written and fsync'd, renamed
//! over `<stem>.json`, then the directory fsync'd, all relative to the directory's descriptor
//! so no write walks the path again — and a reader sees the old record or the new one, never
//! a torn one. Reading a directory, whatever another party left in it, never blocks, never
//! follows a link, never reads without bound and never deletes: an entry that is not a
//! readable, regular record file of a name moor writes is renamed to `<name>.corrupt` (or
//! `<name>.<n>.corrupt`, never replacing anything) and reported, and every other entry is
//! still read. Only `*.tmp` files — moor's own writes that a crash interrupted before their
//! rename — are removed, and only once they are older than [`TEMP_GRACE`]: the daemon, the
//! command line (`moor local`, `moor bundle`) and a test may read a directory while another
//! process writes in it, and a reader must never take a write in flight from its writer.
//! Each write has a temp file of its own (`<stem>.<pid>.<n>.tmp`), so two writers of one
//! record never write into the same file either.

use std::ffi::{CString, OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How old a `*.tmp` file must be before a reader takes it for a crashed write and removes
/// it. A write holds its temp file for one write and one fsync of at most a MiB.
pub const TEMP_GRACE: std::time::Duration = std::time::Duration::from_secs(300);

/// A temp file name for one write of `name`, used by no other write of this process or any
/// other live one: `<name>.<pid>.<n>.tmp`.
fn unique_temp_name(name: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{name}.{}.{n}.tmp", std::process::id())
}

/// Replaces the file at `path` with `bytes` (mode 0600): written and fsync'd under a hidden
/// temp name of this write's own in the same directory, then renamed over `path`, so a
/// reader sees the old file or the new one and a second writer never truncates or removes
/// this one's. The temp file goes on any failure.
pub fn replace_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{}", unique_temp_name(&name)));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The largest record moor reads; a real one is a few hundred bytes.
pub const MAX_RECORD_BYTES: u64 = 1 << 20;

/// An entry that was (or already had been) moved out of the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    /// Where it is now.
    pub path: PathBuf,
    /// A stable label: `not_regular`, `symlink`, `too_large`, `unreadable`, `not_utf8`,
    /// `invalid_json`, `wrong_shape`, `unknown_name`, `not_a_directory`, `set_aside_earlier`.
    pub reason: &'static str,
    /// The detail (OS error, parse error).
    pub detail: String,
}

/// What a record directory held.
#[derive(Debug, Default)]
pub struct DirRead {
    /// `(stem, bytes)` of each regular `<stem>.json` whose stem the caller accepted.
    pub records: Vec<(String, Vec<u8>)>,
    /// Entries set aside now or earlier.
    pub set_aside: Vec<SetAside>,
}

fn c_name(name: &OsStr) -> std::io::Result<CString> {
    CString::new(name.as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

/// Opens `path` as a directory (created with `mode` when missing), never through a symlink.
/// A file, symlink or anything else in its place is set aside first, so the daemon can
/// start with an empty directory there instead of refusing to start.
pub fn open_dir(path: &Path, mode: u32) -> std::io::Result<(OwnedFd, Option<SetAside>)> {
    let mut aside = None;
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_dir() => {}
        Ok(md) => {
            let parent = path.parent().unwrap_or(Path::new("/"));
            let name = path.file_name().unwrap_or_default();
            let pfd = open_dir_fd(parent)?;
            let kind = if md.file_type().is_symlink() {
                "a symlink"
            } else {
                "not a directory"
            };
            aside = Some(set_aside_at(
                pfd.as_fd(),
                parent,
                name,
                "not_a_directory",
                format!("the record directory was {kind}"),
            )?);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)?;
    Ok((open_dir_fd(path)?, aside))
}

fn open_dir_fd(path: &Path) -> std::io::Result<OwnedFd> {
    let c = c_name(path.as_os_str())?;
    // SAFETY: `c` is NUL-terminated; the flags open a directory without following a link.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by open and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Renames `name` in `dir` to `<name>.corrupt` (or `<name>.<n>.corrupt`), never replacing
/// an entry, and logs it. Fails only when no name could be taken (a read-only directory).
pub fn set_aside_at(
    dir: BorrowedFd<'_>,
    dir_path: &Path,
    name: &OsStr,
    reason: &'static str,
    detail: String,
) -> std::io::Result<SetAside> {
    let from = c_name(name)?;
    let mut last = std::io::Error::from(std::io::ErrorKind::AlreadyExists);
    for n in 0..100u32 {
        let mut to = name.as_bytes().to_vec();
        if n > 0 {
            to.extend_from_slice(format!(".{n}").as_bytes());
        }
        to.extend_from_slice(b".corrupt");
        let to_os = OsString::from_vec(to);
        let to_c = c_name(&to_os)?;
        // SAFETY: both names are NUL-terminated; `dir` is an open directory.
        let r = unsafe {
            libc::renameat2(
                dir.as_raw_fd(),
                from.as_ptr(),
                dir.as_raw_fd(),
                to_c.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if r == 0 {
            let path = dir_path.join(&to_os);
            tracing::error!(path = %dir_path.join(name).display(), moved_to = %path.display(), reason, error = %detail, "unusable record set aside");
            return Ok(SetAside {
                path,
                reason,
                detail,
            });
        }
        last = std::io::Error::last_os_error();
        if last.raw_os_error() != Some(libc::EEXIST) {
            break;
        }
    }
    tracing::error!(path = %dir_path.join(name).display(), reason, error = %detail, rename_error = %last, "unusable record cannot be set aside; ignored");
    Err(last)
}

fn stat_at(dir: BorrowedFd<'_>, name: &CString) -> std::io::Result<libc::stat> {
    // SAFETY: libc::stat is plain data; all-zero is a valid bit pattern.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid directory fd, a NUL-terminated name, a writable stat buffer.
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

/// Why an entry cannot be read as a record (reason label, detail).
type Unusable = (&'static str, String);

/// What [`read_entry`] says of an entry that went between the listing and the read.
const GONE: &str = "gone";

/// Reads one entry as a regular file of at most [`MAX_RECORD_BYTES`]: looked at with
/// `fstatat` before it is opened (a FIFO or a device node is never opened), then opened
/// non-blocking without following a link and checked again on the descriptor.
fn read_entry(dir: BorrowedFd<'_>, name: &CString) -> Result<Vec<u8>, Unusable> {
    // Removed or replaced by its writer since the listing: nothing to read, nothing to report.
    let unreadable = |e: std::io::Error| {
        let reason = if e.kind() == std::io::ErrorKind::NotFound {
            GONE
        } else {
            "unreadable"
        };
        (reason, e.to_string())
    };
    let kind = |mode: libc::mode_t| -> Result<(), Unusable> {
        match mode & libc::S_IFMT {
            libc::S_IFREG => Ok(()),
            libc::S_IFLNK => Err(("symlink", "a symlink (never followed)".into())),
            libc::S_IFDIR => Err(("not_regular", "a directory".into())),
            libc::S_IFIFO => Err(("not_regular", "a FIFO".into())),
            libc::S_IFSOCK => Err(("not_regular", "a socket".into())),
            _ => Err(("not_regular", "a device node".into())),
        }
    };
    let st = stat_at(dir, name).map_err(unreadable)?;
    kind(st.st_mode)?;
    // SAFETY: a valid directory fd and a NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ELOOP) {
            return Err(("symlink", "a symlink (never followed)".into()));
        }
        return Err(unreadable(e));
    }
    // SAFETY: `fd` was just returned by openat and is owned by nothing else.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let md = file.metadata().map_err(unreadable)?;
    if !md.file_type().is_file() {
        return Err(("not_regular", "replaced while being read".into()));
    }
    if md.len() > MAX_RECORD_BYTES {
        return Err((
            "too_large",
            format!("{} bytes, more than {MAX_RECORD_BYTES}", md.len()),
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_RECORD_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_RECORD_BYTES {
        return Err(("too_large", format!("more than {MAX_RECORD_BYTES} bytes")));
    }
    Ok(bytes)
}

/// Reads every entry of the open record directory `dir` (at `dir_path`, for messages).
/// `valid_stem` says which `<stem>.json` names moor writes there. Never fails: an entry
/// that cannot be listed, read or accepted is set aside (or, when even that fails, only
/// reported), so one bad entry never hides the others.
pub fn read_records(
    dir: BorrowedFd<'_>,
    dir_path: &Path,
    valid_stem: impl Fn(&str) -> bool,
) -> DirRead {
    let mut out = DirRead::default();
    let report = |out: &mut DirRead, name: &OsStr, reason: &'static str, detail: String| {
        let entry = match set_aside_at(dir, dir_path, name, reason, detail.clone()) {
            Ok(s) => s,
            Err(e) => SetAside {
                path: dir_path.join(name),
                reason,
                detail: format!("{detail}; cannot be set aside: {e}"),
            },
        };
        out.set_aside.push(entry);
    };
    let names = match list(dir) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(path = %dir_path.display(), error = %e, "record directory cannot be listed");
            out.set_aside.push(SetAside {
                path: dir_path.into(),
                reason: "unreadable",
                detail: format!("cannot list the directory: {e}"),
            });
            return out;
        }
    };
    for name in names {
        let bytes = name.as_bytes();
        if bytes.ends_with(b".corrupt") {
            out.set_aside.push(SetAside {
                path: dir_path.join(&name),
                reason: "set_aside_earlier",
                detail: "set aside by an earlier start; inspect it, then remove it".into(),
            });
            continue;
        }
        let Ok(c) = c_name(&name) else { continue };
        if bytes.ends_with(b".tmp") {
            // A write in flight, or one that crashed before its rename (the old record, if
            // any, is intact): only an old one is removed.
            match stat_at(dir, &c) {
                // Renamed by its writer since the listing.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => {
                    if older_than(&st, TEMP_GRACE) {
                        // SAFETY: a valid directory fd and a NUL-terminated name.
                        unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) };
                    }
                }
                _ => report(
                    &mut out,
                    &name,
                    "not_regular",
                    "a .tmp entry that is not a file".into(),
                ),
            }
            continue;
        }
        let Some(stem) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".json"))
            .filter(|s| valid_stem(s))
        else {
            let reason = if name.to_str().is_none() {
                "not a UTF-8 name"
            } else {
                "not a record name moor writes here"
            };
            report(&mut out, &name, "unknown_name", reason.into());
            continue;
        };
        match read_entry(dir, &c) {
            Ok(b) => out.records.push((stem.to_owned(), b)),
            Err((GONE, _)) => {}
            Err((reason, detail)) => report(&mut out, &name, reason, detail),
        }
    }
    out.records.sort();
    out
}

/// Whether the file was last modified more than `age` ago (a clock set back: not old).
fn older_than(st: &libc::stat, age: std::time::Duration) -> bool {
    let modified = std::time::UNIX_EPOCH
        + std::time::Duration::new(
            u64::try_from(st.st_mtime).unwrap_or(0),
            u32::try_from(st.st_mtime_nsec).unwrap_or(0),
        );
    std::time::SystemTime::now()
        .duration_since(modified)
        .is_ok_and(|d| d > age)
}

/// The names in `dir`, without `.` and `..`.
fn list(dir: BorrowedFd<'_>) -> std::io::Result<Vec<OsString>> {
    // A fresh open of "." (not a dup, which would share the offset): every listing starts
    // at the beginning and the caller's descriptor is left as it was.
    let mut d = nix::dir::Dir::openat(
        dir,
        ".",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(std::io::Error::from)?;
    let mut names = Vec::new();
    for e in d.iter() {
        let e = e.map_err(std::io::Error::from)?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(OsString::from_vec(n.to_vec()));
        }
    }
    Ok(names)
}

/// Sets aside a record whose content the caller could not accept (bad JSON, wrong shape).
pub fn reject(
    dir: BorrowedFd<'_>,
    dir_path: &Path,
    stem: &str,
    reason: &'static str,
    detail: String,
) -> SetAside {
    let name = OsString::from(format!("{stem}.json"));
    match set_aside_at(dir, dir_path, &name, reason, detail.clone()) {
        Ok(s) => s,
        Err(e) => SetAside {
            path: dir_path.join(&name),
            reason,
            detail: format!("{detail}; cannot be set aside: {e}"),
        },
    }
}

/// A write or a removal in a record directory failed.
#[derive(Debug, thiserror::Error)]
#[error("record {op} {path}")]
pub struct StoreError {
    /// What was being done (`create`, `write`, `fsync`, `rename`, `remove`, `fsync dir`).
    pub op: &'static str,
    /// The record file.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

/// A record directory, kept open: every write, removal and read goes through its descriptor.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
    fd: Arc<OwnedFd>,
}

impl Store {
    /// Opens (creating, with `mode`) the record directory at `path`; a file or a symlink in
    /// its place is set aside first and reported.
    pub fn open(path: &Path, mode: u32) -> std::io::Result<(Self, Option<SetAside>)> {
        let (fd, aside) = open_dir(path, mode)?;
        Ok((
            Store {
                path: path.to_owned(),
                fd: Arc::new(fd),
            },
            aside,
        ))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the record `stem` lives.
    pub fn record_path(&self, stem: &str) -> PathBuf {
        self.path.join(format!("{stem}.json"))
    }

    /// Replaces `<stem>.json` with `body` (mode 0600) atomically and durably.
    pub fn put(&self, stem: &str, body: &[u8]) -> Result<(), StoreError> {
        let err = |op, source| StoreError {
            op,
            path: self.record_path(stem),
            source,
        };
        let tmp = c_name(OsStr::new(&unique_temp_name(stem))).map_err(|e| err("create", e))?;
        let name = c_name(OsStr::new(&format!("{stem}.json"))).map_err(|e| err("create", e))?;
        let dfd = self.fd.as_raw_fd();
        // SAFETY: `tmp` is NUL-terminated and `dfd` is an open directory owned by `self`.
        let fd = unsafe {
            libc::openat(
                dfd,
                tmp.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                0o600 as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(err("create", std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by openat and is owned by nothing else.
        let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        if let Err(e) = f
            .write_all(body)
            .map_err(|e| err("write", e))
            .and_then(|()| f.sync_all().map_err(|e| err("fsync", e)))
        {
            // A full state dir must not stay full because of our own half-written temp file.
            // SAFETY: `tmp` is NUL-terminated and `dfd` is open.
            unsafe { libc::unlinkat(dfd, tmp.as_ptr(), 0) };
            return Err(e);
        }
        drop(f);
        // SAFETY: both names are NUL-terminated; `dfd` is open.
        if unsafe { libc::renameat(dfd, tmp.as_ptr(), dfd, name.as_ptr()) } != 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: `tmp` is NUL-terminated and `dfd` is open.
            unsafe { libc::unlinkat(dfd, tmp.as_ptr(), 0) };
            return Err(err("rename", e));
        }
        self.sync().map_err(|e| err("fsync dir", e))
    }

    /// Removes `<stem>.json` durably; a record already gone is no error.
    pub fn remove(&self, stem: &str) -> Result<(), StoreError> {
        let err = |op, source| StoreError {
            op,
            path: self.record_path(stem),
            source,
        };
        let name = c_name(OsStr::new(&format!("{stem}.json"))).map_err(|e| err("remove", e))?;
        // SAFETY: `name` is NUL-terminated; the descriptor is an open directory.
        if unsafe { libc::unlinkat(self.fd.as_raw_fd(), name.as_ptr(), 0) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::NotFound {
                return Ok(());
            }
            return Err(err("remove", e));
        }
        self.sync().map_err(|e| err("fsync dir", e))
    }

    /// Reads every record ([`read_records`]).
    pub fn read(&self, valid_stem: impl Fn(&str) -> bool) -> DirRead {
        read_records(self.fd.as_fd(), &self.path, valid_stem)
    }

    /// Sets aside a record whose content the caller could not accept ([`reject`]).
    pub fn reject(&self, stem: &str, reason: &'static str, detail: String) -> SetAside {
        reject(self.fd.as_fd(), &self.path, stem, reason, detail)
    }

    fn sync(&self) -> std::io::Result<()> {
        // SAFETY: fsync on a descriptor `self` keeps open.
        if unsafe { libc::fsync(self.fd.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_put_replaces_the_record_whole_and_leaves_no_temp_file() {
        let t = tempfile::tempdir().unwrap();
        let (store, aside) = Store::open(&t.path().join("d"), 0o700).unwrap();
        assert!(aside.is_none());
        store.put("a", b"first").unwrap();
        store.put("a", b"second, longer").unwrap();
        store.put("b", b"other").unwrap();
        let read = store.read(|s| s == "a" || s == "b");
        assert_eq!(
            read.records,
            vec![
                ("a".to_owned(), b"second, longer".to_vec()),
                ("b".to_owned(), b"other".to_vec())
            ]
        );
        let mut names: Vec<_> = std::fs::read_dir(store.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["a.json", "b.json"]);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&store.record_path("a")), 0o600);
        assert_eq!(mode(store.path()), 0o700);
    }

    #[test]
    fn a_removal_is_idempotent_and_a_bad_stem_is_an_error_naming_the_record() {
        let t = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&t.path().join("d"), 0o700).unwrap();
        store.put("a", b"x").unwrap();
        store.remove("a").unwrap();
        store.remove("a").unwrap();
        assert!(store.read(|_| true).records.is_empty());
        let e = store.put("nul\0inside", b"x").unwrap_err();
        assert_eq!(e.op, "create");
        assert_eq!(e.path, t.path().join("d/nul\0inside.json"));
    }

    fn age(path: &Path, by: std::time::Duration) {
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(std::time::SystemTime::now() - by).unwrap();
    }

    /// A write the process did not finish (its `.tmp` left behind) is dropped on read once it
    /// is old; the record it was replacing is still the old one.
    #[test]
    fn an_interrupted_write_leaves_the_old_record() {
        let t = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&t.path().join("d"), 0o700).unwrap();
        store.put("a", b"old").unwrap();
        for tmp in ["a.tmp", "a.4242.0.tmp"] {
            let tmp = store.path().join(tmp);
            std::fs::write(&tmp, b"half").unwrap();
            age(&tmp, TEMP_GRACE + std::time::Duration::from_secs(1));
            let read = store.read(|s| s == "a");
            assert_eq!(read.records, vec![("a".to_owned(), b"old".to_vec())]);
            assert!(read.set_aside.is_empty());
            assert!(!tmp.exists());
        }
    }

    /// A young temp file may be another process's write in flight: a reader leaves it.
    #[test]
    fn a_reader_leaves_a_write_in_flight_to_its_writer() {
        let t = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&t.path().join("d"), 0o700).unwrap();
        let tmp = store.path().join("a.4242.0.tmp");
        std::fs::write(&tmp, b"being written").unwrap();
        let read = store.read(|s| s == "a");
        assert!(read.records.is_empty() && read.set_aside.is_empty());
        assert_eq!(std::fs::read(&tmp).unwrap(), b"being written");
    }

    /// Writers of one record and readers of its directory, at once (as the daemon, `moor
    /// local wipe` and `moor bundle` can be): every write lands whole, no reader sees a torn
    /// record or sets one aside, and no temp file is left.
    #[test]
    fn writers_and_readers_at_once_never_disturb_each_other() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("d");
        let (store, _) = Store::open(&dir, 0o700).unwrap();
        let bodies: Vec<Vec<u8>> = (0..4)
            .map(|w| vec![b'a' + w; 4096 * (w as usize + 1)])
            .collect();
        std::thread::scope(|s| {
            for body in &bodies {
                let dir = &dir;
                s.spawn(move || {
                    let (w, _) = Store::open(dir, 0o700).unwrap();
                    for _ in 0..200 {
                        w.put("a", body).unwrap();
                    }
                });
            }
            for _ in 0..2 {
                let dir = &dir;
                let bodies = &bodies;
                s.spawn(move || {
                    let (r, _) = Store::open(dir, 0o700).unwrap();
                    for _ in 0..200 {
                        let read = r.read(|s| s == "a");
                        assert!(read.set_aside.is_empty(), "{:?}", read.set_aside);
                        for (_, b) in read.records {
                            assert!(bodies.contains(&b), "a torn record of {} bytes", b.len());
                        }
                    }
                });
            }
        });
        let read = store.read(|s| s == "a");
        assert_eq!(read.records.len(), 1);
        assert!(bodies.contains(&read.records[0].1));
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["a.json"]);
    }
}
