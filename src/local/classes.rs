//! The `local:` section of the config file: the storage classes whose discovery directories
//! become local PersistentVolumes, and how each is served and wiped.
//!
//! Invariant: a [`LocalConfig`] that exists is valid — class names are DNS-1123 and unique,
//! discovery directories are clean absolute paths that neither repeat nor nest nor lie in the
//! kubelet dir, a Block class is served raw through the in-tree `local` source, and every
//! error names the key (`local.classes[1].wipe`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::host::paths::is_clean_absolute;

/// The `local:` section as written in the YAML file.
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LocalFileConfig {
    /// The classes.
    #[serde(default)]
    pub classes: Vec<ClassFileConfig>,
    /// Full rescan period, seconds (default 60); inotify triggers scans in between.
    pub resync_seconds: Option<u64>,
    /// `auto` (use in-cluster credentials or `KUBECONFIG` when present) or `off`.
    pub kubernetes: Option<String>,
    /// Where the host's `/dev` is (default `/dev`): `/dev/disk/by-id` links are read here.
    pub dev_dir: Option<PathBuf>,
    /// Where udev keeps its device database (default `/run/udev/data`).
    pub udev_dir: Option<PathBuf>,
    /// Roots a directory volume (`moor~local`'s `path`) may be, or lie under.
    #[serde(default)]
    pub allowed_directories: Vec<PathBuf>,
    /// Devices (or links to them, `/dev/disk/by-id/…`), or directories of device links, that
    /// a block volume's `path` may name.
    #[serde(default)]
    pub allowed_devices: Vec<PathBuf>,
}

/// One class as written in the YAML file.
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClassFileConfig {
    /// The StorageClass name.
    pub name: Option<String>,
    /// The directory whose entries become PVs.
    pub discovery_dir: Option<PathBuf>,
    /// `Filesystem` (default) or `Block`.
    pub volume_mode: Option<String>,
    /// Filesystem created on a blank disk entry of a Filesystem class (default ext4).
    pub fs_type: Option<String>,
    /// How a released disk entry is wiped: `zero-ends` (default), `discard`, `zero`.
    pub wipe: Option<String>,
    /// `flex` (moor mounts it: default for Filesystem) or `local` (kubelet's in-tree local).
    pub source: Option<String>,
    /// `Delete` (default: wiped and offered again when released) or `Retain`.
    pub reclaim_policy: Option<String>,
    /// Extra node labels every PV of the class requires (node affinity), key → value.
    #[serde(default)]
    pub node_labels: BTreeMap<String, String>,
    /// Mount options for the PV (`noatime,discard`).
    pub mount_options: Option<String>,
    /// Deadline of one block wipe command, seconds (default 3600).
    pub wipe_timeout_seconds: Option<u64>,
}

/// What a PV's consumer sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum VolumeMode {
    /// A mounted filesystem (entries: mount points, or disks moor formats if blank).
    Filesystem,
    /// A raw block device (entries: symlinks to block devices).
    Block,
}

/// Which volume source the PV carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// `flexVolume` with driver `moor/local`: moor stages, formats if blank, reports metrics.
    Flex,
    /// The in-tree `local` source: kubelet mounts it itself.
    Local,
}

/// How a released disk entry is cleaned. Mount-point entries always have their contents
/// removed (without crossing a mount), whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WipeMethod {
    /// `wipefs -a` (every signature: filesystem, partition table, RAID, LVM), then zeroes over
    /// the first and the last MiB — what moor's never-format rule needs to call a disk blank.
    ZeroEnds,
    /// As `zero-ends`, with `blkdiscard` in between (the SSD forgets every block).
    Discard,
    /// `wipefs -a`, then `blkdiscard -z`: the whole device reads as zeroes.
    Zero,
}

impl WipeMethod {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            WipeMethod::Discard => "discard",
            WipeMethod::ZeroEnds => "zero-ends",
            WipeMethod::Zero => "zero",
        }
    }
}

/// `Delete` or `Retain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReclaimPolicy {
    /// Released volumes are wiped and offered again.
    Delete,
    /// Released volumes are left for the operator.
    Retain,
}

impl ReclaimPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ReclaimPolicy::Delete => "Delete",
            ReclaimPolicy::Retain => "Retain",
        }
    }
}

/// A validated class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassConfig {
    /// StorageClass name.
    pub name: String,
    /// Discovery directory.
    pub discovery_dir: PathBuf,
    /// Volume mode.
    pub volume_mode: VolumeMode,
    /// fsType for disk entries of a Filesystem class.
    pub fs_type: Option<String>,
    /// Wipe method for disk entries.
    pub wipe: WipeMethod,
    /// PV source.
    pub source: SourceKind,
    /// Reclaim policy.
    pub reclaim_policy: ReclaimPolicy,
    /// Extra required node labels.
    pub node_labels: BTreeMap<String, String>,
    /// Mount options.
    pub mount_options: Option<String>,
    /// Deadline of one block wipe command.
    pub wipe_timeout: Duration,
}

/// Whether moor talks to the API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KubeMode {
    /// When credentials are found (in-cluster or `KUBECONFIG`).
    Auto,
    /// Never: `moor local discover` prints manifests, `moor local wipe` cleans on command.
    Off,
}

/// The validated `local:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalConfig {
    /// Classes, in file order.
    pub classes: Vec<ClassConfig>,
    /// Full rescan period.
    pub resync: Duration,
    /// API server use.
    pub kubernetes: KubeMode,
    /// The host's `/dev`.
    pub dev_dir: PathBuf,
    /// udev's database.
    pub udev_dir: PathBuf,
    /// `allowed-directories`, validated.
    pub allowed_directories: Vec<PathBuf>,
    /// `allowed-devices`, validated.
    pub allowed_devices: Vec<PathBuf>,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            classes: Vec::new(),
            resync: Duration::from_secs(60),
            kubernetes: KubeMode::Auto,
            dev_dir: "/dev".into(),
            udev_dir: "/run/udev/data".into(),
            allowed_directories: Vec::new(),
            allowed_devices: Vec::new(),
        }
    }
}

impl LocalConfig {
    /// What `moor~local` serves: the allowed directories and the Filesystem classes'
    /// discovery dirs as directory roots; the allowed devices and every class's discovery
    /// dir as device entries.
    pub fn allow_list(&self) -> crate::host::allow::AllowList {
        let mut directories = self.allowed_directories.clone();
        let mut devices = self.allowed_devices.clone();
        for c in &self.classes {
            if c.volume_mode == VolumeMode::Filesystem {
                directories.push(c.discovery_dir.clone());
            }
            devices.push(c.discovery_dir.clone());
        }
        crate::host::allow::AllowList {
            directories,
            devices,
            refused: Vec::new(),
            proc: "/proc".into(),
        }
    }

    /// Refuses an allowed root that is one of `dirs` (moor's state, run and socket dirs),
    /// lies inside one, or contains one.
    pub fn refuse_roots_around(&self, dirs: &[&Path]) -> Result<(), ClassError> {
        for (i, r) in self.allowed_directories.iter().enumerate() {
            if let Some(d) = dirs.iter().find(|d| d.starts_with(r) || r.starts_with(d)) {
                return Err(ClassError {
                    key: format!("local.allowed-directories[{i}]"),
                    message: format!(
                        "{}: must not contain or lie inside moor's directory {}",
                        r.display(),
                        d.display()
                    ),
                });
            }
        }
        Ok(())
    }

    /// The class whose discovery directory is `dir`.
    pub fn class_of_dir(&self, dir: &Path) -> Option<&ClassConfig> {
        self.classes.iter().find(|c| c.discovery_dir == dir)
    }

    /// The class by name.
    pub fn class(&self, name: &str) -> Option<&ClassConfig> {
        self.classes.iter().find(|c| c.name == name)
    }
}

/// A `local:` section that cannot be used; `key` is the full key path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ClassError {
    /// `local.classes[1].wipe` …
    pub key: String,
    /// Why.
    pub message: String,
}

/// True for a DNS-1123 label: lowercase alphanumerics and `-`, alphanumeric at both ends.
pub fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_label_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// A label key: `[prefix/]name`, prefix a DNS subdomain.
pub fn is_label_key(k: &str) -> bool {
    match k.split_once('/') {
        Some((prefix, name)) => {
            prefix.len() <= 253
                && prefix.split('.').all(|p| is_dns_label(p, 63))
                && is_label_name(name)
        }
        None => is_label_name(k),
    }
}

/// A label value: empty or a label name.
pub fn is_label_value(v: &str) -> bool {
    v.is_empty() || is_label_name(v)
}

/// Filesystems moor can create on a blank disk.
const FS_TYPES: &[&str] = &["ext4", "ext3", "ext2", "xfs", "btrfs"];

/// Validates the section. `kubelet_dir`: discovery directories must lie outside it.
pub fn validate(raw: &LocalFileConfig, kubelet_dir: &Path) -> Result<LocalConfig, ClassError> {
    let err = |key: String, message: String| ClassError { key, message };
    let mut out = LocalConfig::default();
    if let Some(s) = raw.resync_seconds {
        if s == 0 {
            return Err(err(
                "local.resync-seconds".into(),
                "must be at least 1".into(),
            ));
        }
        out.resync = Duration::from_secs(s);
    }
    out.kubernetes = match raw.kubernetes.as_deref() {
        None | Some("auto") => KubeMode::Auto,
        Some("off") => KubeMode::Off,
        Some(o) => {
            return Err(err(
                "local.kubernetes".into(),
                format!("{o}: expected auto or off"),
            ));
        }
    };
    for (key, v, slot) in [
        ("local.dev-dir", &raw.dev_dir, &mut out.dev_dir),
        ("local.udev-dir", &raw.udev_dir, &mut out.udev_dir),
    ] {
        if let Some(p) = v {
            if !is_clean_absolute(p) {
                return Err(err(
                    key.into(),
                    format!("{} must be a clean absolute path", p.display()),
                ));
            }
            *slot = p.clone();
        }
    }
    out.allowed_directories = validate_roots(&raw.allowed_directories, kubelet_dir)?;
    for (i, p) in raw.allowed_devices.iter().enumerate() {
        let key = format!("local.allowed-devices[{i}]");
        if !is_clean_absolute(p) || p == Path::new("/") || p == Path::new("/dev") {
            return Err(err(
                key,
                format!(
                    "{}: must be a clean absolute path to a device, a link to one or a directory of device links (not / or /dev: that would be every disk of the node)",
                    p.display()
                ),
            ));
        }
        out.allowed_devices.push(p.clone());
    }
    for (i, c) in raw.classes.iter().enumerate() {
        let k = |field: &str| format!("local.classes[{i}].{field}");
        let name = c
            .name
            .clone()
            .ok_or_else(|| err(k("name"), "is required".into()))?;
        if !is_dns_label(&name, 63) && !name.split('.').all(|p| is_dns_label(p, 63)) {
            return Err(err(
                k("name"),
                format!("{name}: must be a DNS-1123 name (lowercase letters, digits, '-', '.')"),
            ));
        }
        if out.classes.iter().any(|o: &ClassConfig| o.name == name) {
            return Err(err(k("name"), format!("{name}: named twice")));
        }
        let dir = c
            .discovery_dir
            .clone()
            .ok_or_else(|| err(k("discovery-dir"), "is required".into()))?;
        if !is_clean_absolute(&dir) || dir == Path::new("/") {
            return Err(err(
                k("discovery-dir"),
                format!("{}: must be a clean absolute path, not /", dir.display()),
            ));
        }
        if dir.starts_with(kubelet_dir) || kubelet_dir.starts_with(&dir) {
            return Err(err(
                k("discovery-dir"),
                format!(
                    "{}: must not contain or lie inside the kubelet dir {}",
                    dir.display(),
                    kubelet_dir.display()
                ),
            ));
        }
        if let Some(o) = out
            .classes
            .iter()
            .find(|o| o.discovery_dir.starts_with(&dir) || dir.starts_with(&o.discovery_dir))
        {
            return Err(err(
                k("discovery-dir"),
                format!(
                    "{}: overlaps class {}'s {}",
                    dir.display(),
                    o.name,
                    o.discovery_dir.display()
                ),
            ));
        }
        let volume_mode = match c.volume_mode.as_deref() {
            None | Some("Filesystem") => VolumeMode::Filesystem,
            Some("Block") => VolumeMode::Block,
            Some(o) => {
                return Err(err(
                    k("volume-mode"),
                    format!("{o}: expected Filesystem or Block"),
                ));
            }
        };
        let fs_type = match (&c.fs_type, volume_mode) {
            (Some(_), VolumeMode::Block) => {
                return Err(err(
                    k("fs-type"),
                    "a Block class hands the raw device to the pod; remove fs-type".into(),
                ));
            }
            (Some(f), _) if !FS_TYPES.contains(&f.as_str()) => {
                return Err(err(
                    k("fs-type"),
                    format!("{f}: expected one of {}", FS_TYPES.join(", ")),
                ));
            }
            (f, _) => f.clone(),
        };
        let wipe = match c.wipe.as_deref() {
            None | Some("zero-ends") => WipeMethod::ZeroEnds,
            Some("discard") => WipeMethod::Discard,
            Some("zero") => WipeMethod::Zero,
            Some(o) => {
                return Err(err(
                    k("wipe"),
                    format!("{o}: expected zero-ends, discard or zero"),
                ));
            }
        };
        let source = match (c.source.as_deref(), volume_mode) {
            (None, VolumeMode::Filesystem) | (Some("flex"), VolumeMode::Filesystem) => {
                SourceKind::Flex
            }
            (None, VolumeMode::Block) | (Some("local"), _) => SourceKind::Local,
            (Some("flex"), VolumeMode::Block) => {
                return Err(err(
                    k("source"),
                    "flex: FlexVolume cannot hand a raw block device to a pod; use local (the default for Block)".into(),
                ));
            }
            (Some(o), _) => {
                return Err(err(k("source"), format!("{o}: expected flex or local")));
            }
        };
        let reclaim_policy = match c.reclaim_policy.as_deref() {
            None | Some("Delete") => ReclaimPolicy::Delete,
            Some("Retain") => ReclaimPolicy::Retain,
            Some(o) => {
                return Err(err(
                    k("reclaim-policy"),
                    format!("{o}: expected Delete or Retain"),
                ));
            }
        };
        for (lk, lv) in &c.node_labels {
            if !is_label_key(lk) || !is_label_value(lv) {
                return Err(err(
                    k("node-labels"),
                    format!("{lk}={lv}: not a valid label key/value"),
                ));
            }
            if lk == "kubernetes.io/hostname" {
                return Err(err(
                    k("node-labels"),
                    "kubernetes.io/hostname is always required for this node; do not list it"
                        .into(),
                ));
            }
        }
        let wipe_timeout = match c.wipe_timeout_seconds {
            Some(0) => return Err(err(k("wipe-timeout-seconds"), "must be at least 1".into())),
            Some(s) => Duration::from_secs(s),
            None => Duration::from_secs(3600),
        };
        out.classes.push(ClassConfig {
            name,
            discovery_dir: dir,
            volume_mode,
            fs_type,
            wipe,
            source,
            reclaim_policy,
            node_labels: c.node_labels.clone(),
            mount_options: c.mount_options.clone().filter(|m| !m.is_empty()),
            wipe_timeout,
        });
    }
    Ok(out)
}

/// Kernel interfaces: never a directory root, whatever is mounted there today.
const PSEUDO_ROOTS: &[&str] = &["/proc", "/sys", "/dev", "/run"];

/// Validates `allowed-directories`: clean absolute roots that are not `/`, not on or under
/// a kernel interface (`/proc`, `/sys`, `/dev`, `/run`, or any pseudo filesystem found
/// there now), and that neither lie inside nor contain the kubelet dir.
fn validate_roots(roots: &[PathBuf], kubelet_dir: &Path) -> Result<Vec<PathBuf>, ClassError> {
    let mut out = Vec::new();
    for (i, r) in roots.iter().enumerate() {
        let err = |message: String| ClassError {
            key: format!("local.allowed-directories[{i}]"),
            message: format!("{}: {message}", r.display()),
        };
        if !is_clean_absolute(r) || r == Path::new("/") {
            return Err(err("must be a clean absolute path, not /".into()));
        }
        if let Some(p) = PSEUDO_ROOTS.iter().find(|p| r.starts_with(p)) {
            return Err(err(format!("{p} holds kernel interfaces, never volumes")));
        }
        if r.starts_with(kubelet_dir) || kubelet_dir.starts_with(r) {
            return Err(err(format!(
                "must not contain or lie inside the kubelet dir {}",
                kubelet_dir.display()
            )));
        }
        if let Some(fs) = crate::host::allow::pseudo_fs_of(r) {
            return Err(err(format!("is on a {fs} filesystem, a kernel interface")));
        }
        out.push(r.clone());
    }
    Ok(out)
}

/// A Filesystem class over `/mnt/disks` with the defaults, for unit tests of the modules
/// that consume classes.
#[cfg(test)]
pub(crate) fn test_class(name: &str, wipe_timeout: Duration) -> ClassConfig {
    ClassConfig {
        name: name.into(),
        discovery_dir: "/mnt/disks".into(),
        volume_mode: VolumeMode::Filesystem,
        fs_type: None,
        wipe: WipeMethod::ZeroEnds,
        source: SourceKind::Flex,
        reclaim_policy: ReclaimPolicy::Delete,
        node_labels: BTreeMap::new(),
        mount_options: None,
        wipe_timeout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<LocalConfig, ClassError> {
        let raw: LocalFileConfig = serde_saphyr::from_str(yaml).unwrap();
        validate(&raw, Path::new("/var/lib/kubelet"))
    }

    #[test]
    fn a_full_class_parses_with_defaults() {
        let c = parse(
            "classes:\n  - name: local-nvme\n    discovery-dir: /mnt/disks/nvme\n    fs-type: xfs\n    node-labels: {topology.kubernetes.io/zone: eu-1a}\n  - name: raw\n    discovery-dir: /mnt/disks/raw\n    volume-mode: Block\n    wipe: discard\nresync-seconds: 30\n",
        )
        .unwrap();
        assert_eq!(c.resync, Duration::from_secs(30));
        assert_eq!(c.kubernetes, KubeMode::Auto);
        let n = &c.classes[0];
        assert_eq!(n.volume_mode, VolumeMode::Filesystem);
        assert_eq!(n.source, SourceKind::Flex);
        assert_eq!(n.wipe, WipeMethod::ZeroEnds);
        assert_eq!(n.reclaim_policy, ReclaimPolicy::Delete);
        assert_eq!(n.fs_type.as_deref(), Some("xfs"));
        let r = &c.classes[1];
        assert_eq!(r.source, SourceKind::Local);
        assert_eq!(r.wipe, WipeMethod::Discard);
        assert_eq!(
            c.class_of_dir(Path::new("/mnt/disks/raw")).unwrap().name,
            "raw"
        );
    }

    #[test]
    fn errors_name_the_key() {
        for (yaml, key) in [
            ("classes: [{discovery-dir: /a}]", "local.classes[0].name"),
            ("classes: [{name: a}]", "local.classes[0].discovery-dir"),
            (
                "classes: [{name: a, discovery-dir: /a}, {name: b, discovery-dir: /a/b}]",
                "local.classes[1].discovery-dir",
            ),
            (
                "classes: [{name: a, discovery-dir: /a}, {name: a, discovery-dir: /b}]",
                "local.classes[1].name",
            ),
            (
                "classes: [{name: a, discovery-dir: /a/../etc}]",
                "local.classes[0].discovery-dir",
            ),
            (
                "classes: [{name: a, discovery-dir: /var/lib/kubelet/x}]",
                "local.classes[0].discovery-dir",
            ),
            (
                "classes: [{name: a, discovery-dir: /a, wipe: shred}]",
                "local.classes[0].wipe",
            ),
            (
                "classes: [{name: a, discovery-dir: /a, volume-mode: Block, source: flex}]",
                "local.classes[0].source",
            ),
            (
                "classes: [{name: a, discovery-dir: /a, volume-mode: Block, fs-type: xfs}]",
                "local.classes[0].fs-type",
            ),
            (
                "classes: [{name: a, discovery-dir: /a, fs-type: ntfs}]",
                "local.classes[0].fs-type",
            ),
            (
                "classes: [{name: A_b, discovery-dir: /a}]",
                "local.classes[0].name",
            ),
            (
                "classes: [{name: a, discovery-dir: /a, node-labels: {'bad key!': x}}]",
                "local.classes[0].node-labels",
            ),
            (
                "classes: [{name: a, discovery-dir: /a, reclaim-policy: Recycle}]",
                "local.classes[0].reclaim-policy",
            ),
            ("kubernetes: maybe", "local.kubernetes"),
            ("resync-seconds: 0", "local.resync-seconds"),
        ] {
            let e = parse(yaml).unwrap_err();
            assert_eq!(e.key, key, "{yaml}: {e}");
        }
        let e =
            serde_saphyr::from_str::<LocalFileConfig>("classes: [{name: a, discovery-dirr: /a}]")
                .unwrap_err();
        assert!(e.to_string().contains("discovery-dirr"), "{e}");
    }

    #[test]
    fn the_packaged_example_is_valid() {
        let text = include_str!("../../packaging/examples/config.yaml");
        let file: crate::config::FileConfig = serde_saphyr::from_str(text).unwrap();
        let c = validate(&file.local.unwrap(), Path::new("/var/lib/kubelet")).unwrap();
        assert_eq!(c.classes.len(), 2);
        assert_eq!(c.classes[1].source, SourceKind::Local);
    }

    #[test]
    fn label_syntax() {
        assert!(is_label_key("topology.kubernetes.io/zone"));
        assert!(is_label_key("rack"));
        assert!(!is_label_key("/x"));
        assert!(!is_label_key("a/b/c"));
        assert!(is_label_value(""));
        assert!(!is_label_value("-x"));
    }

    #[test]
    fn allow_lists_are_validated_and_name_the_key() {
        let ok: LocalFileConfig = serde_saphyr::from_str(
            "allowed-directories: [/srv/volumes]\nallowed-devices: [/dev/disk/by-id/wwn-0x5000, /srv/devlinks]\nclasses: [{name: fast, discovery-dir: /mnt/fast}, {name: raw, discovery-dir: /mnt/raw, volume-mode: Block}]\n",
        )
        .unwrap();
        let c = validate(&ok, Path::new("/var/lib/kubelet")).unwrap();
        let a = c.allow_list();
        assert_eq!(
            a.directories,
            [PathBuf::from("/srv/volumes"), "/mnt/fast".into()],
            "a Filesystem class's discovery dir is a directory root"
        );
        assert_eq!(
            a.devices,
            [
                PathBuf::from("/dev/disk/by-id/wwn-0x5000"),
                "/srv/devlinks".into(),
                "/mnt/fast".into(),
                "/mnt/raw".into()
            ]
        );
        for (yaml, key) in [
            ("allowed-directories: [/]", "local.allowed-directories[0]"),
            (
                "allowed-directories: [/srv, /etc/../]",
                "local.allowed-directories[1]",
            ),
            (
                "allowed-directories: [/proc/sys]",
                "local.allowed-directories[0]",
            ),
            (
                "allowed-directories: [/sys]",
                "local.allowed-directories[0]",
            ),
            (
                "allowed-directories: [/dev/shm]",
                "local.allowed-directories[0]",
            ),
            (
                "allowed-directories: [/run]",
                "local.allowed-directories[0]",
            ),
            (
                "allowed-directories: [/var/lib]",
                "local.allowed-directories[0]",
            ),
            (
                "allowed-directories: [/var/lib/kubelet/pods]",
                "local.allowed-directories[0]",
            ),
            ("allowed-devices: [/dev]", "local.allowed-devices[0]"),
            ("allowed-devices: [relative]", "local.allowed-devices[0]"),
        ] {
            let raw: LocalFileConfig = serde_saphyr::from_str(yaml).unwrap();
            let e = validate(&raw, Path::new("/var/lib/kubelet")).unwrap_err();
            assert_eq!(e.key, key, "{yaml}: {e}");
        }
        let raw: LocalFileConfig =
            serde_saphyr::from_str("allowed-directories: [/srv/moor, /var/lib/moor/x]").unwrap();
        let c = validate(&raw, Path::new("/var/lib/kubelet")).unwrap();
        let e = c
            .refuse_roots_around(&[Path::new("/var/lib/moor"), Path::new("/srv/moor/run")])
            .unwrap_err();
        assert_eq!(e.key, "local.allowed-directories[0]", "{e}");
        let e = c
            .refuse_roots_around(&[Path::new("/var/lib/moor")])
            .unwrap_err();
        assert_eq!(e.key, "local.allowed-directories[1]", "{e}");
    }
}
