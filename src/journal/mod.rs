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
//! directory, all in [`crate::host::records::Store`], the store the wipe journal uses too);
//! a reader sees the old record or the new one, never a torn one.

pub mod record;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::host::records::{Store, StoreError};

pub use record::{
    CsiStage, DeviceClaim, MountId, PublishPhase, PublishRecord, RemoteMount, StagePhase,
    StageRecord, StageSource,
};

/// Journal I/O failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A file operation failed.
    #[error("journal {op} {path}")]
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
    #[error("journal encode {path}")]
    Encode {
        /// The file.
        path: PathBuf,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
}

/// A record directory entry that could not be used; it is moved aside, never deleted.
pub use crate::host::records::SetAside as Problem;

/// Everything read back at start-up.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Stage records.
    pub stages: Vec<StageRecord>,
    /// Publish records.
    pub publishes: Vec<PublishRecord>,
    /// Entries that could not be used, set aside now or earlier.
    pub problems: Vec<Problem>,
}

/// The on-disk journal.
#[derive(Debug, Clone)]
pub struct Journal {
    stage_dir: RecordDir,
    publish_dir: RecordDir,
    /// A record directory found to be something else at open, and set aside.
    opened_over: Vec<Problem>,
}

/// A record directory ([`Store`]) and how its entries are read back.
#[derive(Debug, Clone)]
struct RecordDir(Store);

impl RecordDir {
    fn open(path: PathBuf) -> Result<(Self, Option<Problem>), JournalError> {
        let (store, aside) = Store::open(&path, 0o700).map_err(|source| JournalError::Io {
            op: "open",
            path: path.clone(),
            source,
        })?;
        Ok((RecordDir(store), aside))
    }

    /// Reads the directory; `parse` turns `(stem, bytes)` into a record or says why not
    /// (reason label, detail), and a rejected entry is set aside.
    fn load<T>(
        &self,
        valid_stem: impl Fn(&str) -> bool,
        parse: impl Fn(&str, &[u8]) -> Result<T, (&'static str, String)>,
        problems: &mut Vec<Problem>,
    ) -> Vec<T> {
        let read = self.0.read(valid_stem);
        problems.extend(read.set_aside);
        let mut out = Vec::new();
        for (stem, bytes) in read.records {
            match parse(&stem, &bytes) {
                Ok(r) => out.push(r),
                Err((reason, detail)) => problems.push(self.0.reject(&stem, reason, detail)),
            }
        }
        out
    }

    fn put<T: serde::Serialize>(&self, stem: &str, value: &T) -> Result<(), JournalError> {
        let body = serde_json::to_vec_pretty(value).map_err(|source| JournalError::Encode {
            path: self.0.record_path(stem),
            source,
        })?;
        self.0.put(stem, &body).map_err(JournalError::from)
    }

    fn remove(&self, stem: &str) -> Result<(), JournalError> {
        self.0.remove(stem).map_err(JournalError::from)
    }
}

impl From<StoreError> for JournalError {
    fn from(e: StoreError) -> Self {
        JournalError::Io {
            op: e.op,
            path: e.path,
            source: e.source,
        }
    }
}

/// Decodes a record: UTF-8, then JSON, then the record's shape (reason label on failure).
fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, (&'static str, String)> {
    let text = std::str::from_utf8(bytes).map_err(|e| ("not_utf8", e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| ("invalid_json", e.to_string()))?;
    serde_json::from_value(value).map_err(|e| ("wrong_shape", e.to_string()))
}

/// The characters [`crate::volume::volume_key`] produces.
fn is_stage_stem(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255 - ".json".len()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        && !s.starts_with('.')
}

fn is_publish_stem(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Journal {
    /// Opens (creating, mode 0700) the two record directories; one that is a file or a
    /// symlink is set aside and created anew.
    pub fn open(state_dir: &Path, run_dir: &Path) -> Result<Self, JournalError> {
        let (stage_dir, publish_dir) = (state_dir.join("stage"), run_dir.join("publish"));
        let (stage_dir, a) = RecordDir::open(stage_dir)?;
        let (publish_dir, b) = RecordDir::open(publish_dir)?;
        Ok(Journal {
            stage_dir,
            publish_dir,
            opened_over: a.into_iter().chain(b).collect(),
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
        self.stage_dir.put(&Self::stage_name(&rec.key), rec)
    }

    /// Removes a stage record.
    pub fn remove_stage(&self, key: &str) -> Result<(), JournalError> {
        self.stage_dir.remove(&Self::stage_name(key))
    }

    /// Writes (replaces) a publish record.
    pub fn put_publish(&self, rec: &PublishRecord) -> Result<(), JournalError> {
        self.publish_dir.put(&Self::publish_name(&rec.target), rec)
    }

    /// Removes a publish record.
    pub fn remove_publish(&self, target: &Path) -> Result<(), JournalError> {
        self.publish_dir.remove(&Self::publish_name(target))
    }

    /// Reads every record back. Never fails on content: whatever entry cannot be used (not
    /// a regular file, unreadable, too large, not UTF-8, not JSON, the wrong shape, a record
    /// under a name it does not belong to, a name moor does not write) is set aside as
    /// `*.corrupt` and reported in [`Loaded::problems`], and everything else is loaded.
    pub fn load(&self) -> Result<Loaded, JournalError> {
        let mut problems = self.opened_over.clone();
        let stages = self.stage_dir.load(
            is_stage_stem,
            |stem, bytes| {
                let r: StageRecord = decode(bytes)?;
                if Self::stage_name(&r.key) != stem {
                    return Err((
                        "wrong_shape",
                        format!("holds volume {} under another name", r.key),
                    ));
                }
                Ok(r)
            },
            &mut problems,
        );
        let publishes = self.publish_dir.load(
            is_publish_stem,
            |stem, bytes| {
                let r: PublishRecord = decode(bytes)?;
                if Self::publish_name(&r.target) != stem {
                    return Err((
                        "wrong_shape",
                        format!("holds {} under another name", r.target.display()),
                    ));
                }
                Ok(r)
            },
            &mut problems,
        );
        Ok(Loaded {
            stages,
            publishes,
            problems,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::fs;

    fn stage(key: &str) -> StageRecord {
        StageRecord {
            key: key.into(),
            driver: "local".into(),
            source: StageSource::Directory {
                path: "/srv/a".into(),
            },
            volume: None,
            unconverted: BTreeMap::new(),
            device: None,
            fs_type: None,
            fs_uuid: None,
            read_only: false,
            phase: StagePhase::Staging,
            formatted_by_moor: false,
            mount_id: None,
            adopted: false,
            csi: None,
        }
    }

    #[test]
    fn records_round_trip_and_replace_atomically() {
        let t = tempfile::tempdir().unwrap();
        let j = Journal::open(&t.path().join("s"), &t.path().join("r")).unwrap();
        let mut s = stage("k1");
        j.put_stage(&s).unwrap();
        s.phase = StagePhase::Staged;
        s.csi = Some(CsiStage {
            volume_id: "vol-1".into(),
            staging_path: "/k/plugins/kubernetes.io/csi/pv/vol-1/globalmount".into(),
            block: false,
            access: "single_node_writer".into(),
            digest: "ab".into(),
            set_read_only: true,
        });
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
            csi: true,
            block: true,
            layers: Vec::new(),
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
        // A crashed write's temp file, old enough not to be a write in flight.
        let old = std::time::SystemTime::now() - crate::host::records::TEMP_GRACE * 2;
        fs::File::options()
            .write(true)
            .open(t.path().join("s/stage/half.tmp"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let l = j.load().unwrap();
        assert_eq!(l.problems.len(), 1);
        assert!(t.path().join("s/stage/bad.json.corrupt").exists());
        assert!(!t.path().join("s/stage/half.tmp").exists());
    }

    /// Every kind of entry another party can leave in a record directory: the good record
    /// is loaded, each bad one is set aside under a new name (never deleted) with its reason.
    #[test]
    fn any_bad_entry_is_set_aside_and_the_good_ones_still_load() {
        use std::os::unix::ffi::OsStrExt;
        let t = tempfile::tempdir().unwrap();
        let j = Journal::open(&t.path().join("s"), &t.path().join("r")).unwrap();
        let good = stage("local-good-0123456789ab");
        j.put_stage(&good).unwrap();
        let sd = t.path().join("s/stage");
        let pd = t.path().join("r/publish");
        let mut bad: Vec<(std::path::PathBuf, &str)> = Vec::new();
        let mut add = |p: std::path::PathBuf, reason: &'static str| bad.push((p, reason));
        fs::write(sd.join("local-nonutf8.json"), b"{\"key\": \"\xff\xfe\"}").unwrap();
        add(sd.join("local-nonutf8.json"), "not_utf8");
        fs::write(sd.join("local-notjson.json"), "{ not json").unwrap();
        add(sd.join("local-notjson.json"), "invalid_json");
        fs::write(sd.join("local-shape.json"), r#"{"key": 1, "phase": []}"#).unwrap();
        add(sd.join("local-shape.json"), "wrong_shape");
        let mut other = stage("local-someone-else");
        other.phase = StagePhase::Staged;
        fs::write(
            sd.join("local-misnamed.json"),
            serde_json::to_vec(&other).unwrap(),
        )
        .unwrap();
        add(sd.join("local-misnamed.json"), "wrong_shape");
        fs::create_dir(sd.join("local-dir.json")).unwrap();
        add(sd.join("local-dir.json"), "not_regular");
        nix::unistd::mkfifo(&sd.join("local-fifo.json"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        add(sd.join("local-fifo.json"), "not_regular");
        fs::write(
            t.path().join("outside"),
            serde_json::to_vec(&stage("local-link")).unwrap(),
        )
        .unwrap();
        std::os::unix::fs::symlink(t.path().join("outside"), sd.join("local-link.json")).unwrap();
        add(sd.join("local-link.json"), "symlink");
        let huge = fs::File::create(sd.join("local-huge.json")).unwrap();
        huge.set_len(64 << 20).unwrap();
        add(sd.join("local-huge.json"), "too_large");
        fs::write(sd.join("README"), "notes").unwrap();
        add(sd.join("README"), "unknown_name");
        let weird = std::ffi::OsStr::from_bytes(b"\xff\xfe.json");
        fs::write(sd.join(weird), "{}").unwrap();
        add(sd.join(weird), "unknown_name");
        fs::write(pd.join("0123456789abcdef0123456789abcdef.json"), "[]").unwrap();
        add(
            pd.join("0123456789abcdef0123456789abcdef.json"),
            "wrong_shape",
        );
        fs::write(pd.join("nothex.json"), "{}").unwrap();
        add(pd.join("nothex.json"), "unknown_name");

        let l = j.load().unwrap();
        assert_eq!(l.stages, vec![good.clone()], "the good record loads");
        assert!(l.publishes.is_empty());
        for (p, reason) in &bad {
            let mut aside = p.as_os_str().to_owned();
            aside.push(".corrupt");
            let found = l
                .problems
                .iter()
                .find(|x| x.path.as_os_str() == aside)
                .unwrap_or_else(|| panic!("{} not reported: {:?}", p.display(), l.problems));
            assert_eq!(found.reason, *reason, "{}", p.display());
            assert!(
                fs::symlink_metadata(&aside).is_ok(),
                "{} was not kept",
                p.display()
            );
            assert!(
                fs::symlink_metadata(p).is_err(),
                "{} still in place",
                p.display()
            );
        }
        assert_eq!(l.problems.len(), bad.len(), "{:?}", l.problems);
        assert!(
            t.path().join("outside").exists(),
            "a symlink's target is never touched"
        );

        // A second start lists them again (still there for the operator), sets nothing new
        // aside, and a record that goes bad under a name already taken gets its own name.
        fs::write(sd.join("local-notjson.json"), "{ again").unwrap();
        let l = j.load().unwrap();
        assert_eq!(l.stages, vec![good]);
        assert!(sd.join("local-notjson.json.1.corrupt").exists());
        assert_eq!(
            l.problems
                .iter()
                .filter(|p| p.reason == "set_aside_earlier")
                .count(),
            bad.len()
        );
    }

    /// The record directory itself replaced by a file or a symlink: set aside, made anew.
    #[test]
    fn a_record_directory_that_is_not_a_directory_is_set_aside() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("s")).unwrap();
        fs::create_dir_all(t.path().join("r")).unwrap();
        fs::create_dir_all(t.path().join("elsewhere")).unwrap();
        fs::write(t.path().join("s/stage"), "a file").unwrap();
        std::os::unix::fs::symlink(t.path().join("elsewhere"), t.path().join("r/publish")).unwrap();
        let j = Journal::open(&t.path().join("s"), &t.path().join("r")).unwrap();
        let l = j.load().unwrap();
        let mut reasons: Vec<_> = l.problems.iter().map(|p| p.reason).collect();
        reasons.sort();
        assert_eq!(reasons, ["not_a_directory", "not_a_directory"]);
        assert!(t.path().join("s/stage.corrupt").is_file());
        assert!(
            fs::symlink_metadata(t.path().join("r/publish.corrupt"))
                .unwrap()
                .is_symlink()
        );
        j.put_stage(&stage("k")).unwrap();
        assert!(t.path().join("s/stage/k.json").is_file());
        assert_eq!(fs::read_dir(t.path().join("elsewhere")).unwrap().count(), 0);
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
