//! The journal: moor's record of what it staged and published, written before each side
//! effect so that a crash at any point can be finished or undone on restart.
//!
//! Two kinds of record, each in the place whose lifetime matches what it describes:
//! - stage records in `<state-dir>/stage/` (durable): a staged volume and the filesystem moor
//!   saw on it. They outlive a reboot so a volume that once held data is never taken for
//!   blank later;
//! - publish records in `<run-dir>/publish/` (tmpfs): one per pod volume directory. A bind
//!   mount dies with the boot, and so does its record — a reboot cannot leave a record that
//!   claims a mount that no longer exists, and the hot path never waits for a disk flush.
//!
//! Invariant: a record is replaced atomically (temp file, fsync, rename, fsync of the
//! directory); a reader sees the old record or the new one, never a torn one.

pub mod record;

use std::ffi::CString;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

pub use record::{
    MountId, PublishPhase, PublishRecord, RemoteMount, StagePhase, StageRecord, StageSource,
};

/// Journal I/O failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A file operation failed.
    #[error("journal {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A record could not be encoded.
    #[error("journal encode {path}: {source}")]
    Encode {
        /// The file.
        path: PathBuf,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
}

/// A record that could not be read back; it is moved aside, never deleted.
#[derive(Debug, Clone)]
pub struct Problem {
    /// Where it was moved to.
    pub path: PathBuf,
    /// Why it was unreadable.
    pub error: String,
}

/// Everything read back at start-up.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Stage records.
    pub stages: Vec<StageRecord>,
    /// Publish records.
    pub publishes: Vec<PublishRecord>,
    /// Records that could not be parsed.
    pub problems: Vec<Problem>,
}

/// The on-disk journal.
#[derive(Debug, Clone)]
pub struct Journal {
    stage_dir: RecordDir,
    publish_dir: RecordDir,
}

/// A record directory, kept open: records are written relative to its descriptor
/// (`openat`/`renameat`/`fsync(dirfd)`), so no write walks the path again.
#[derive(Debug, Clone)]
struct RecordDir {
    path: PathBuf,
    fd: Arc<OwnedFd>,
}

impl RecordDir {
    fn open(path: PathBuf) -> Result<Self, JournalError> {
        let fd = File::open(&path).map_err(|source| JournalError::Io {
            op: "open",
            path: path.clone(),
            source,
        })?;
        Ok(RecordDir {
            path,
            fd: Arc::new(fd.into()),
        })
    }
}

impl Journal {
    /// Opens (creating, mode 0700) the two record directories.
    pub fn open(state_dir: &Path, run_dir: &Path) -> Result<Self, JournalError> {
        let (stage_dir, publish_dir) = (state_dir.join("stage"), run_dir.join("publish"));
        for d in [&stage_dir, &publish_dir] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
                .map_err(|source| JournalError::Io {
                    op: "mkdir",
                    path: d.clone(),
                    source,
                })?;
        }
        Ok(Journal {
            stage_dir: RecordDir::open(stage_dir)?,
            publish_dir: RecordDir::open(publish_dir)?,
        })
    }

    fn stage_name(key: &str) -> String {
        key.to_owned()
    }

    fn publish_name(target: &Path) -> String {
        let digest = Sha256::digest(target.as_os_str().as_encoded_bytes());
        let mut hex = String::with_capacity(32);
        for b in digest.iter().take(16) {
            let _ = write!(hex, "{b:02x}");
        }
        hex
    }

    /// Writes (replaces) a stage record.
    pub fn put_stage(&self, rec: &StageRecord) -> Result<(), JournalError> {
        write_atomic(&self.stage_dir, &Self::stage_name(&rec.key), rec)
    }

    /// Removes a stage record.
    pub fn remove_stage(&self, key: &str) -> Result<(), JournalError> {
        remove_durable(&self.stage_dir, &Self::stage_name(key))
    }

    /// Writes (replaces) a publish record.
    pub fn put_publish(&self, rec: &PublishRecord) -> Result<(), JournalError> {
        write_atomic(&self.publish_dir, &Self::publish_name(&rec.target), rec)
    }

    /// Removes a publish record.
    pub fn remove_publish(&self, target: &Path) -> Result<(), JournalError> {
        remove_durable(&self.publish_dir, &Self::publish_name(target))
    }

    /// Reads every record back; unreadable ones are moved aside as `*.corrupt`.
    pub fn load(&self) -> Result<Loaded, JournalError> {
        let mut out = Loaded::default();
        for (path, text) in read_dir_json(&self.stage_dir.path)? {
            match serde_json::from_str::<StageRecord>(&text) {
                Ok(r) => out.stages.push(r),
                Err(e) => out.problems.push(set_aside(&path, e)),
            }
        }
        for (path, text) in read_dir_json(&self.publish_dir.path)? {
            match serde_json::from_str::<PublishRecord>(&text) {
                Ok(r) => out.publishes.push(r),
                Err(e) => out.problems.push(set_aside(&path, e)),
            }
        }
        Ok(out)
    }
}

fn set_aside(path: &Path, e: serde_json::Error) -> Problem {
    let aside = path.with_extension("corrupt");
    let _ = fs::rename(path, &aside);
    tracing::error!(path = %path.display(), moved_to = %aside.display(), error = %e, "unreadable journal record set aside");
    Problem {
        path: aside,
        error: e.to_string(),
    }
}

fn read_dir_json(dir: &Path) -> Result<Vec<(PathBuf, String)>, JournalError> {
    let io = |op, path: &Path, source| JournalError::Io {
        op,
        path: path.to_owned(),
        source,
    };
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io("read", dir, e))? {
        let entry = entry.map_err(|e| io("read", dir, e))?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = fs::read_to_string(&path).map_err(|e| io("read", &path, e))?;
            out.push((path, text));
        } else if path.extension().is_some_and(|e| e == "tmp") {
            // A write that crashed before its rename: the old record (if any) is intact.
            let _ = fs::remove_file(&path);
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn c_name(name: &str) -> std::io::Result<CString> {
    CString::new(name).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

/// Replaces `<dir>/<stem>.json` atomically: `<stem>.tmp` written and fsync'd, renamed over
/// the record, then the directory fsync'd — all relative to the open directory.
fn write_atomic<T: serde::Serialize>(
    dir: &RecordDir,
    stem: &str,
    value: &T,
) -> Result<(), JournalError> {
    let path = || dir.path.join(format!("{stem}.json"));
    let io = |op, source| JournalError::Io {
        op,
        path: path(),
        source,
    };
    let body = serde_json::to_vec_pretty(value).map_err(|source| JournalError::Encode {
        path: path(),
        source,
    })?;
    let tmp = c_name(&format!("{stem}.tmp")).map_err(|e| io("create", e))?;
    let name = c_name(&format!("{stem}.json")).map_err(|e| io("create", e))?;
    let dfd = dir.fd.as_raw_fd();
    // SAFETY: `tmp` is NUL-terminated and `dfd` is an open directory owned by `dir`.
    let fd = unsafe {
        libc::openat(
            dfd,
            tmp.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            0o600 as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io("create", std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by openat and is owned by nothing else.
    let mut f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    f.write_all(&body).map_err(|e| io("write", e))?;
    f.sync_all().map_err(|e| io("fsync", e))?;
    drop(f);
    // SAFETY: both names are NUL-terminated; `dfd` is open.
    if unsafe { libc::renameat(dfd, tmp.as_ptr(), dfd, name.as_ptr()) } != 0 {
        return Err(io("rename", std::io::Error::last_os_error()));
    }
    sync_dir(dir).map_err(|e| io("fsync dir", e))
}

fn remove_durable(dir: &RecordDir, stem: &str) -> Result<(), JournalError> {
    let path = || dir.path.join(format!("{stem}.json"));
    let name = c_name(&format!("{stem}.json")).map_err(|source| JournalError::Io {
        op: "remove",
        path: path(),
        source,
    })?;
    // SAFETY: `name` is NUL-terminated; the descriptor is an open directory.
    if unsafe { libc::unlinkat(dir.fd.as_raw_fd(), name.as_ptr(), 0) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::NotFound {
            return Ok(());
        }
        return Err(JournalError::Io {
            op: "remove",
            path: path(),
            source: e,
        });
    }
    sync_dir(dir).map_err(|source| JournalError::Io {
        op: "fsync dir",
        path: path(),
        source,
    })
}

fn sync_dir(dir: &RecordDir) -> std::io::Result<()> {
    // SAFETY: fsync on a descriptor `dir` keeps open.
    if unsafe { libc::fsync(dir.fd.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn stage(key: &str) -> StageRecord {
        StageRecord {
            key: key.into(),
            driver: "local".into(),
            source: StageSource::Directory {
                path: "/srv/a".into(),
            },
            options: BTreeMap::new(),
            fs_type: None,
            fs_uuid: None,
            read_only: false,
            phase: StagePhase::Staging,
            formatted_by_moor: false,
            mount_id: None,
            adopted: false,
        }
    }

    #[test]
    fn records_round_trip_and_replace_atomically() {
        let t = tempfile::tempdir().unwrap();
        let j = Journal::open(&t.path().join("s"), &t.path().join("r")).unwrap();
        let mut s = stage("k1");
        j.put_stage(&s).unwrap();
        s.phase = StagePhase::Staged;
        j.put_stage(&s).unwrap();
        let p = PublishRecord {
            target: "/k/pods/u/volumes/moor~local/v".into(),
            key: "k1".into(),
            driver: "local".into(),
            pod_uid: "u".into(),
            volume_name: "v".into(),
            namespace: Some("ns".into()),
            read_only: true,
            phase: PublishPhase::Published,
            mount_id: None,
        };
        j.put_publish(&p).unwrap();
        let l = j.load().unwrap();
        assert_eq!(l.stages, vec![s]);
        assert_eq!(l.publishes, vec![p.clone()]);
        j.remove_publish(&p.target).unwrap();
        j.remove_publish(&p.target).unwrap();
        assert!(j.load().unwrap().publishes.is_empty());
    }

    #[test]
    fn corrupt_records_are_set_aside_not_lost() {
        let t = tempfile::tempdir().unwrap();
        let j = Journal::open(&t.path().join("s"), &t.path().join("r")).unwrap();
        fs::write(t.path().join("s/stage/bad.json"), "{ not json").unwrap();
        fs::write(t.path().join("s/stage/half.tmp"), "{").unwrap();
        let l = j.load().unwrap();
        assert_eq!(l.problems.len(), 1);
        assert!(t.path().join("s/stage/bad.corrupt").exists());
        assert!(!t.path().join("s/stage/half.tmp").exists());
    }

    #[test]
    fn records_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let j = Journal::open(&t.path().join("s"), &t.path().join("r")).unwrap();
        j.put_stage(&stage("k")).unwrap();
        let mode = fs::metadata(t.path().join("s/stage/k.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dmode = fs::metadata(t.path().join("s/stage"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dmode & 0o777, 0o700);
    }
}
