//! Host paths: where kubelet, moor's state and the kernel's pseudo filesystems live, and
//! the validation of every path kubelet hands us.
//!
//! Invariant: a pod volume directory that passes [`HostPaths::pod_volume_dir`] is
//! `<kubelet-dir>/pods/<uid>/volumes/moor~<driver>/<name>`, has no `.`/`..` component, and no
//! existing component below the kubelet dir is a symlink — so a mount can never be
//! redirected outside the kubelet tree.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// The vendor part of moor's FlexVolume driver directories (`moor~<driver>`).
pub const VENDOR: &str = "moor";

/// Every host location moor uses, from one value so tests can point them at a temp tree.
#[derive(Debug, Clone)]
pub struct HostPaths {
    /// kubelet's root directory (`/var/lib/kubelet`), with symlinks resolved: the spelling
    /// the mount table uses.
    pub kubelet_dir: PathBuf,
    /// The configured spelling of the kubelet dir when it differs (a symlinked
    /// `/var/lib/kubelet` is common): paths kubelet passes in are accepted in either form
    /// and normalised to `kubelet_dir`.
    pub kubelet_alias: Option<PathBuf>,
    /// Durable state: stage records (`/var/lib/moor`).
    pub state_dir: PathBuf,
    /// State that lives exactly as long as the mounts do: publish records, socket (`/run/moor`).
    pub run_dir: PathBuf,
    /// sysfs root (`/sys`).
    pub sys: PathBuf,
    /// devtmpfs root (`/dev`).
    pub dev: PathBuf,
    /// procfs root (`/proc`).
    pub proc: PathBuf,
}

/// A path kubelet gave us that is not acceptable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    /// Not absolute, or has `.`/`..`/empty components.
    #[error("{path}: not a clean absolute path (no '.', '..' or relative parts allowed)")]
    NotClean {
        /// The path.
        path: String,
    },
    /// Not under the kubelet directory in kubelet's layout.
    #[error(
        "{path}: not a pod volume directory <kubelet-dir>/pods/<uid>/volumes/{VENDOR}~<driver>/<name> under {kubelet_dir}"
    )]
    NotPodVolumeDir {
        /// The path.
        path: String,
        /// The configured kubelet dir.
        kubelet_dir: String,
    },
    /// Not one of kubelet's CSI path shapes (see [`HostPaths::csi_target`] and
    /// [`HostPaths::csi_staging_path`]).
    #[error("{path}: not a CSI {what} under {kubelet_dir} (expected {shape})")]
    NotCsiPath {
        /// The path.
        path: String,
        /// Which path (`target_path`, `staging_target_path`).
        what: &'static str,
        /// The shapes accepted.
        shape: &'static str,
        /// The configured kubelet dir.
        kubelet_dir: String,
    },
    /// The directory belongs to another driver.
    #[error("{path}: belongs to driver {found}, not {VENDOR}~{expected}")]
    WrongDriver {
        /// The path.
        path: String,
        /// The driver dir found in the path.
        found: String,
        /// The driver that was invoked.
        expected: String,
    },
    /// A component is a symlink.
    #[error("{path}: {component} is a symlink; refusing to follow it out of the kubelet dir")]
    Symlink {
        /// The path.
        path: String,
        /// The offending component.
        component: String,
    },
    /// Could not be inspected.
    #[error("{path}: {error}")]
    Io {
        /// The path.
        path: String,
        /// The error text.
        error: String,
    },
}

/// A validated pod volume directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodVolumeDir {
    /// The full path.
    pub path: PathBuf,
    /// The pod's UID.
    pub pod_uid: String,
    /// The driver name (after `moor~`).
    pub driver: String,
    /// The volume name (PV or inline volume name).
    pub volume_name: String,
}

/// A validated CSI `target_path`: a filesystem volume's pod directory or a raw block
/// volume's device file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsiTarget {
    /// The path, the pod's UID and the PV name (`driver` is the CSI driver name given).
    pub dir: PodVolumeDir,
    /// `<kubelet>/plugins/kubernetes.io/csi/volumeDevices/publish/<pv>/<pod-uid>`.
    pub block: bool,
}

/// A validated CSI `staging_target_path` (moor mounts nothing there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsiStaging {
    /// The path, in the kubelet dir's canonical spelling.
    pub path: PathBuf,
    /// `<kubelet>/plugins/kubernetes.io/csi/volumeDevices/staging/<pv>`.
    pub block: bool,
}

const CSI_TARGET_SHAPES: &str = "<kubelet-dir>/pods/<uid>/volumes/kubernetes.io~csi/<pv>/mount or <kubelet-dir>/plugins/kubernetes.io/csi/volumeDevices/publish/<pv>/<pod-uid>";
const CSI_STAGING_SHAPES: &str = "<kubelet-dir>/plugins/kubernetes.io/csi/<driver>/<sha256>/globalmount, …/csi/pv/<pv>/globalmount or …/csi/volumeDevices/staging/<pv>";

impl HostPaths {
    /// The production layout.
    pub fn system(kubelet_dir: PathBuf, state_dir: PathBuf, run_dir: PathBuf) -> Self {
        let canonical = std::fs::canonicalize(&kubelet_dir).unwrap_or_else(|_| kubelet_dir.clone());
        HostPaths {
            kubelet_alias: (canonical != kubelet_dir).then_some(kubelet_dir),
            kubelet_dir: canonical,
            state_dir,
            run_dir,
            sys: "/sys".into(),
            dev: "/dev".into(),
            proc: "/proc".into(),
        }
    }

    /// Where a volume is staged: `<kubelet-dir>/plugins/moor/<driver>/<key>`.
    pub fn stage_dir(&self, driver: &str, key: &str) -> PathBuf {
        self.kubelet_dir
            .join("plugins")
            .join(VENDOR)
            .join(driver)
            .join(key)
    }

    /// The root of moor's stage directories.
    pub fn stage_root(&self) -> PathBuf {
        self.kubelet_dir.join("plugins").join(VENDOR)
    }

    /// `raw` relative to the kubelet dir (in either spelling) and in its canonical
    /// spelling; `Ok(None)` when it is outside, `NotClean` when it is not clean.
    fn under_kubelet<'a>(&self, raw: &'a str) -> Result<Option<(&'a Path, PathBuf)>, PathError> {
        let path = Path::new(raw);
        if !is_clean_absolute(path) {
            return Err(PathError::NotClean { path: raw.into() });
        }
        if let Ok(rel) = path.strip_prefix(&self.kubelet_dir) {
            return Ok(Some((rel, path.to_owned())));
        }
        Ok(self
            .kubelet_alias
            .as_deref()
            .and_then(|alias| path.strip_prefix(alias).ok())
            .map(|rel| (rel, self.kubelet_dir.join(rel))))
    }

    /// Validates a CSI `target_path` of CSI driver `csi_driver`: a filesystem volume's
    /// `<kubelet>/pods/<uid>/volumes/kubernetes.io~csi/<pv>/mount` or a raw block volume's
    /// `<kubelet>/plugins/kubernetes.io/csi/volumeDevices/publish/<pv>/<pod-uid>`; clean,
    /// under the kubelet dir (either spelling), no existing component a symlink.
    pub fn csi_target(&self, raw: &str, csi_driver: &str) -> Result<CsiTarget, PathError> {
        let not_csi = || PathError::NotCsiPath {
            path: raw.into(),
            what: "target_path",
            shape: CSI_TARGET_SHAPES,
            kubelet_dir: self.kubelet_dir.display().to_string(),
        };
        let (rel, path) = self.under_kubelet(raw)?.ok_or_else(not_csi)?;
        let parts: Vec<&OsStr> = rel.iter().collect();
        let (uid, pv, block) = match parts.as_slice() {
            [pods, uid, volumes, csi, pv, mount]
                if *pods == "pods"
                    && *volumes == "volumes"
                    && *csi == "kubernetes.io~csi"
                    && *mount == "mount" =>
            {
                (uid, pv, false)
            }
            [plugins, k8s, csi, devices, publish, pv, uid]
                if *plugins == "plugins"
                    && *k8s == "kubernetes.io"
                    && *csi == "csi"
                    && *devices == "volumeDevices"
                    && *publish == "publish" =>
            {
                (uid, pv, true)
            }
            _ => return Err(not_csi()),
        };
        if !is_name(uid) || !is_name(pv) {
            return Err(not_csi());
        }
        self.refuse_symlinks(&path, rel)?;
        Ok(CsiTarget {
            dir: PodVolumeDir {
                path,
                pod_uid: uid.to_string_lossy().into_owned(),
                driver: csi_driver.into(),
                volume_name: pv.to_string_lossy().into_owned(),
            },
            block,
        })
    }

    /// Validates a CSI `staging_target_path` of CSI driver `csi_driver`:
    /// `<kubelet>/plugins/kubernetes.io/csi/<csi_driver>/<64 hex>/globalmount` (kubelet
    /// ≥ 1.24), `…/csi/pv/<pv>/globalmount` (older kubelets' layout, still reconstructed) or
    /// a raw block volume's `…/csi/volumeDevices/staging/<pv>`.
    pub fn csi_staging_path(&self, raw: &str, csi_driver: &str) -> Result<CsiStaging, PathError> {
        let not_csi = || PathError::NotCsiPath {
            path: raw.into(),
            what: "staging_target_path",
            shape: CSI_STAGING_SHAPES,
            kubelet_dir: self.kubelet_dir.display().to_string(),
        };
        let (rel, path) = self.under_kubelet(raw)?.ok_or_else(not_csi)?;
        let parts: Vec<&OsStr> = rel.iter().collect();
        let [plugins, k8s, csi, rest @ ..] = parts.as_slice() else {
            return Err(not_csi());
        };
        if *plugins != "plugins" || *k8s != "kubernetes.io" || *csi != "csi" {
            return Err(not_csi());
        }
        let block = match rest {
            [driver, hash, global]
                if *driver == csi_driver && is_sha256_hex(hash) && *global == "globalmount" =>
            {
                false
            }
            [pv_dir, pv, global] if *pv_dir == "pv" && is_name(pv) && *global == "globalmount" => {
                false
            }
            [devices, staging, pv]
                if *devices == "volumeDevices" && *staging == "staging" && is_name(pv) =>
            {
                true
            }
            _ => return Err(not_csi()),
        };
        self.refuse_symlinks(&path, rel)?;
        Ok(CsiStaging { path, block })
    }

    /// Validates a pod volume directory for `driver` (None: any moor driver).
    pub fn pod_volume_dir(
        &self,
        raw: &str,
        driver: Option<&str>,
    ) -> Result<PodVolumeDir, PathError> {
        let not_pod = || PathError::NotPodVolumeDir {
            path: raw.into(),
            kubelet_dir: self.kubelet_dir.display().to_string(),
        };
        let (rel, path) = self.under_kubelet(raw)?.ok_or_else(not_pod)?;
        let parts: Vec<&OsStr> = rel.iter().collect();
        let [pods, uid, volumes, vendor_driver, name] = parts.as_slice() else {
            return Err(not_pod());
        };
        if *pods != "pods" || *volumes != "volumes" || !is_name(uid) || !is_name(name) {
            return Err(not_pod());
        }
        let vd = vendor_driver.to_string_lossy();
        let found_driver = match vd.split_once('~') {
            Some((VENDOR, d)) if !d.is_empty() && !d.contains('~') => d.to_owned(),
            _ => {
                return Err(PathError::WrongDriver {
                    path: raw.into(),
                    found: vd.into_owned(),
                    expected: driver.unwrap_or("<driver>").into(),
                });
            }
        };
        if let Some(d) = driver
            && d != found_driver
        {
            return Err(PathError::WrongDriver {
                path: raw.into(),
                found: vd.into_owned(),
                expected: d.into(),
            });
        }
        self.refuse_symlinks(&path, rel)?;
        Ok(PodVolumeDir {
            path,
            pod_uid: uid.to_string_lossy().into_owned(),
            driver: found_driver,
            volume_name: name.to_string_lossy().into_owned(),
        })
    }

    /// Fails when any existing component of `rel` below the kubelet dir is a symlink.
    ///
    /// Fast path: one `openat2(RESOLVE_NO_SYMLINKS)` of the whole (clean, absolute) path.
    /// The kernel walks left to right, so success means no component is a symlink, and
    /// ENOENT means every component before the missing one exists and is not a symlink —
    /// both imply the answer of the walk below. Any other answer (a symlink anywhere,
    /// above the kubelet dir included; a file in the middle; an old kernel) takes the
    /// component-by-component walk below the kubelet dir, which decides and names the
    /// offending component.
    fn refuse_symlinks(&self, full: &Path, rel: &Path) -> Result<(), PathError> {
        match open_no_symlinks(full) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(_) => {}
        }
        self.refuse_symlinks_walk(full, rel)
    }

    fn refuse_symlinks_walk(&self, full: &Path, rel: &Path) -> Result<(), PathError> {
        let mut cur = self.kubelet_dir.clone();
        for c in rel.iter() {
            cur.push(c);
            match std::fs::symlink_metadata(&cur) {
                Ok(md) if md.file_type().is_symlink() => {
                    return Err(PathError::Symlink {
                        path: full.display().to_string(),
                        component: cur.display().to_string(),
                    });
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => {
                    return Err(PathError::Io {
                        path: cur.display().to_string(),
                        error: e.to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Opens `path` with `O_PATH` through `openat2(RESOLVE_NO_SYMLINKS)` — the kernel refuses
/// any symlink on the way, the last component included — and closes it again. `path` is
/// clean (no `..`), so the walk cannot leave the directories it names.
fn open_no_symlinks(path: &Path) -> std::io::Result<()> {
    super::allow::openat2(
        libc::AT_FDCWD,
        path,
        libc::O_PATH,
        libc::RESOLVE_NO_SYMLINKS,
    )
    .map(drop)
}

/// Absolute, and made only of normal components (no `.`, `..`, `//` or trailing `/`), so
/// one directory has exactly one spelling.
pub fn is_clean_absolute(p: &Path) -> bool {
    let bytes = p.as_os_str().as_bytes();
    if bytes.contains(&0)
        || bytes.windows(2).any(|w| w == b"//")
        || (bytes.len() > 1 && bytes.ends_with(b"/"))
    {
        return false;
    }
    let mut comps = p.components();
    comps.next() == Some(Component::RootDir)
        && comps.all(|c| matches!(c, Component::Normal(_)))
        && !bytes
            .split(|b| *b == b'/')
            .any(|seg| seg == b"." || seg == b"..")
}

fn is_sha256_hex(s: &OsStr) -> bool {
    let b = s.as_bytes();
    b.len() == 64 && b.iter().all(u8::is_ascii_hexdigit)
}

fn is_name(s: &OsStr) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b != b"."
        && b != b".."
        && b.len() <= 253
        && !b.iter().any(|c| c.is_ascii_control())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn paths(root: &Path) -> HostPaths {
        HostPaths {
            kubelet_dir: root.join("kubelet"),
            kubelet_alias: None,
            state_dir: root.join("state"),
            run_dir: root.join("run"),
            sys: "/sys".into(),
            dev: "/dev".into(),
            proc: "/proc".into(),
        }
    }

    #[test]
    fn accepts_kubelets_layout() {
        let t = tempfile::tempdir().unwrap();
        let p = paths(t.path());
        let raw = format!(
            "{}/kubelet/pods/14e0/volumes/moor~local/pv-1",
            t.path().display()
        );
        let d = p.pod_volume_dir(&raw, Some("local")).unwrap();
        assert_eq!(d.pod_uid, "14e0");
        assert_eq!(d.driver, "local");
        assert_eq!(d.volume_name, "pv-1");
    }

    #[test]
    fn rejects_dotdot_other_layouts_and_drivers() {
        let t = tempfile::tempdir().unwrap();
        let p = paths(t.path());
        let k = format!("{}/kubelet", t.path().display());
        for bad in [
            format!("{k}/pods/u/volumes/moor~local/../../../../etc"),
            format!("{k}/pods/u/volumes/moor~local/./v"),
            format!("{k}/pods/u/volumes/moor~local/v/"),
            format!("{k}/pods//volumes/moor~local/v"),
            "relative/pods/u/volumes/moor~local/v".to_owned(),
        ] {
            assert!(
                matches!(
                    p.pod_volume_dir(&bad, Some("local")),
                    Err(PathError::NotClean { .. })
                ),
                "{bad}"
            );
        }
        for bad in [
            format!("{k}/pods/u/volumes/moor~local"),
            format!("{k}/pods/u/volume/moor~local/v"),
            "/etc/passwd".to_owned(),
            format!("{k}/pods/u/volumes/moor~local/v/extra"),
        ] {
            assert!(
                matches!(
                    p.pod_volume_dir(&bad, Some("local")),
                    Err(PathError::NotPodVolumeDir { .. })
                ),
                "{bad}"
            );
        }
        let other = format!("{k}/pods/u/volumes/kubernetes.io~nfs/v");
        assert!(matches!(
            p.pod_volume_dir(&other, Some("local")),
            Err(PathError::WrongDriver { .. })
        ));
        let other = format!("{k}/pods/u/volumes/moor~nfs/v");
        assert!(matches!(
            p.pod_volume_dir(&other, Some("local")),
            Err(PathError::WrongDriver { .. })
        ));
    }

    #[test]
    fn a_symlinked_kubelet_dir_is_accepted_in_both_spellings() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("data/kubelet")).unwrap();
        std::os::unix::fs::symlink(t.path().join("data/kubelet"), t.path().join("kubelet"))
            .unwrap();
        let p = HostPaths::system(t.path().join("kubelet"), "/s".into(), "/r".into());
        assert_eq!(
            p.kubelet_dir,
            std::fs::canonicalize(t.path().join("data/kubelet")).unwrap()
        );
        let alias = format!("{}/kubelet/pods/u/volumes/moor~local/v", t.path().display());
        let d = p.pod_volume_dir(&alias, Some("local")).unwrap();
        assert_eq!(d.path, p.kubelet_dir.join("pods/u/volumes/moor~local/v"));
        let canonical = d.path.display().to_string();
        assert_eq!(p.pod_volume_dir(&canonical, Some("local")).unwrap(), d);
    }

    #[test]
    fn rejects_a_symlinked_pod_dir() {
        let t = tempfile::tempdir().unwrap();
        let p = paths(t.path());
        std::fs::create_dir_all(t.path().join("kubelet/pods")).unwrap();
        std::fs::create_dir_all(t.path().join("outside/volumes/moor~local/v")).unwrap();
        std::os::unix::fs::symlink(t.path().join("outside"), t.path().join("kubelet/pods/evil"))
            .unwrap();
        let raw = format!(
            "{}/kubelet/pods/evil/volumes/moor~local/v",
            t.path().display()
        );
        let err = p.pod_volume_dir(&raw, Some("local")).unwrap_err();
        assert!(matches!(err, PathError::Symlink { .. }), "{err}");
    }

    #[test]
    fn accepts_kubelets_csi_shapes() {
        let t = tempfile::tempdir().unwrap();
        let p = paths(t.path());
        let k = format!("{}/kubelet", t.path().display());
        let name = "local.csi.moor.io";
        let fs = p
            .csi_target(
                &format!("{k}/pods/14e0/volumes/kubernetes.io~csi/pv-1/mount"),
                name,
            )
            .unwrap();
        assert_eq!(
            (
                fs.dir.pod_uid.as_str(),
                fs.dir.volume_name.as_str(),
                fs.block
            ),
            ("14e0", "pv-1", false)
        );
        let block = p
            .csi_target(
                &format!("{k}/plugins/kubernetes.io/csi/volumeDevices/publish/pv-1/14e0"),
                name,
            )
            .unwrap();
        assert_eq!(
            (
                block.dir.pod_uid.as_str(),
                block.dir.volume_name.as_str(),
                block.block
            ),
            ("14e0", "pv-1", true)
        );
        let hash = "a".repeat(63) + "F";
        for (raw, block) in [
            (
                format!("{k}/plugins/kubernetes.io/csi/{name}/{hash}/globalmount"),
                false,
            ),
            (
                format!("{k}/plugins/kubernetes.io/csi/pv/pv-1/globalmount"),
                false,
            ),
            (
                format!("{k}/plugins/kubernetes.io/csi/volumeDevices/staging/pv-1"),
                true,
            ),
        ] {
            let s = p.csi_staging_path(&raw, name).unwrap();
            assert_eq!((s.path, s.block), (PathBuf::from(&raw), block));
        }
    }

    #[test]
    fn rejects_hostile_csi_paths() {
        let t = tempfile::tempdir().unwrap();
        let p = paths(t.path());
        let k = format!("{}/kubelet", t.path().display());
        let name = "local.csi.moor.io";
        let hash = "0".repeat(64);
        for bad in [
            // Dot-dot, other roots, moor's own stage dir, FlexVolume's shape, other drivers.
            format!("{k}/pods/u/volumes/kubernetes.io~csi/pv/../../../../etc/mount"),
            format!("{k}/pods/u/volumes/kubernetes.io~csi/pv/mount/"),
            "/etc/pods/u/volumes/kubernetes.io~csi/pv/mount".to_owned(),
            format!("{k}/plugins/moor/local/key"),
            format!("{k}/pods/u/volumes/moor~local/pv"),
            format!("{k}/pods/u/volumes/kubernetes.io~nfs/pv/mount"),
            format!("{k}/pods/u/volumes/kubernetes.io~csi/pv/mount/deeper"),
            format!("{k}/plugins/kubernetes.io/csi/volumeDevices/publish/pv"),
            format!("{k}/plugins/kubernetes.io/csi/{name}/{hash}/globalmount"),
        ] {
            assert!(p.csi_target(&bad, name).is_err(), "target {bad}");
        }
        for bad in [
            format!("{k}/plugins/kubernetes.io/csi/nfs.csi.moor.io/{hash}/globalmount"),
            format!(
                "{k}/plugins/kubernetes.io/csi/{name}/{}/globalmount",
                &hash[1..]
            ),
            format!(
                "{k}/plugins/kubernetes.io/csi/{name}/{}g/globalmount",
                &hash[1..]
            ),
            format!("{k}/plugins/kubernetes.io/csi/pv/../globalmount"),
            format!("{k}/plugins/kubernetes.io/csi/pv/pv-1"),
            format!("{k}/plugins/moor/local/key"),
            format!("{k}/pods/u/volumes/kubernetes.io~csi/pv/mount"),
            "/var/lib/elsewhere/plugins/kubernetes.io/csi/pv/pv-1/globalmount".to_owned(),
            "relative/plugins/kubernetes.io/csi/pv/pv-1/globalmount".to_owned(),
        ] {
            assert!(p.csi_staging_path(&bad, name).is_err(), "staging {bad}");
        }
        // A symlinked component below the kubelet dir.
        std::fs::create_dir_all(t.path().join("kubelet/pods")).unwrap();
        std::fs::create_dir_all(t.path().join("outside/volumes/kubernetes.io~csi/pv")).unwrap();
        std::os::unix::fs::symlink(t.path().join("outside"), t.path().join("kubelet/pods/evil"))
            .unwrap();
        let err = p
            .csi_target(
                &format!("{k}/pods/evil/volumes/kubernetes.io~csi/pv/mount"),
                name,
            )
            .unwrap_err();
        assert!(matches!(err, PathError::Symlink { .. }), "{err}");
    }

    #[test]
    fn csi_paths_are_accepted_in_the_kubelet_alias_spelling() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("data/kubelet")).unwrap();
        std::os::unix::fs::symlink(t.path().join("data/kubelet"), t.path().join("kubelet"))
            .unwrap();
        let p = HostPaths::system(t.path().join("kubelet"), "/s".into(), "/r".into());
        let alias = format!("{}/kubelet", t.path().display());
        let d = p
            .csi_target(
                &format!("{alias}/pods/u/volumes/kubernetes.io~csi/pv/mount"),
                "x",
            )
            .unwrap();
        assert_eq!(
            d.dir.path,
            p.kubelet_dir
                .join("pods/u/volumes/kubernetes.io~csi/pv/mount")
        );
        let s = p
            .csi_staging_path(
                &format!("{alias}/plugins/kubernetes.io/csi/pv/pv/globalmount"),
                "x",
            )
            .unwrap();
        assert_eq!(
            s.path,
            p.kubelet_dir
                .join("plugins/kubernetes.io/csi/pv/pv/globalmount")
        );
    }

    proptest! {
        #[test]
        fn no_accepted_path_escapes(segs in proptest::collection::vec("(\\.\\.|\\.|[a-z~]{1,4}|)", 0..8)) {
            let t = Path::new("/k");
            let p = HostPaths { kubelet_dir: t.into(), kubelet_alias: None, state_dir: "/s".into(), run_dir: "/r".into(),
                sys: "/sys".into(), dev: "/dev".into(), proc: "/proc".into() };
            let raw = format!("/k/{}", segs.join("/"));
            if let Ok(d) = p.pod_volume_dir(&raw, None) {
                prop_assert!(d.path.starts_with("/k/pods"));
                prop_assert!(!raw.split('/').any(|s| s == ".." || s == "."));
            }
        }
    }
}
