//! The handler table: one [`Driver`] per protocol turns options into a volume (its key and
//! what to stage) and attaches/detaches it. Everything after the device — probe, format,
//! stage, publish, reconstruction, metrics — is the lifecycle's, the same for every driver.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::flexvolume::{OptionsError, VolumeOptions};
use crate::host::{ExecError, Host};
use crate::journal::{StageRecord, StageSource};

/// What a driver derived from the options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    /// Stable, path-safe key: two pods using the same volume share one stage.
    pub key: String,
    /// What to mount at the stage path.
    pub source: StageSource,
    /// Non-secret options persisted in the journal (to stage again or detach later).
    pub persist: BTreeMap<String, String>,
    /// Mount options for the stage mount (`mountOptions`).
    pub mount_options: String,
}

/// A driver's failure.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// Bad options.
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// The volume belongs to another node (local PV affinity, enforced on the node).
    #[error(
        "volume {volume} belongs to node {wanted}, this is node {this}; refusing to mount it here"
    )]
    WrongNode {
        /// Volume.
        volume: String,
        /// The node the volume names.
        wanted: String,
        /// This node.
        this: String,
    },
    /// A source path that cannot be used.
    #[error("option path={path}: {detail}")]
    BadSource {
        /// The path.
        path: String,
        /// Why.
        detail: String,
    },
    /// An external command a driver ran failed (the error names the redacted command).
    #[error("volume {volume}")]
    Command {
        /// Volume key.
        volume: String,
        /// The failure.
        #[source]
        source: ExecError,
    },
    /// An iSCSI or FC attach/detach failure.
    #[error(transparent)]
    Scsi(#[from] crate::attach::scsi::ScsiError),
    /// A credential file could not be written or removed.
    #[error("volume {volume}: secret file {path}")]
    SecretFile {
        /// Volume key.
        volume: String,
        /// The file (never its content).
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Ceph RBD.
    #[error(transparent)]
    Rbd(#[from] crate::attach::rbd::RbdError),
    /// A local `path` outside the allow-list, or refused whatever it says.
    #[error(transparent)]
    Source(#[from] crate::host::allow::AllowError),
    /// A local `path` now names another disk than the one moor staged under that name.
    #[error(
        "option path={path} now names another disk than the one moor staged under it: {detail}; refusing to use another disk under a known name"
    )]
    NameMoved {
        /// The text.
        path: String,
        /// Both disks, the volume, and how to proceed.
        detail: String,
    },
}

impl From<crate::flexvolume::PrecheckError> for DriverError {
    fn from(e: crate::flexvolume::PrecheckError) -> Self {
        match e {
            crate::flexvolume::PrecheckError::Options(o) => DriverError::Options(o),
            crate::flexvolume::PrecheckError::WrongNode {
                volume,
                wanted,
                this,
            } => DriverError::WrongNode {
                volume,
                wanted,
                this,
            },
        }
    }
}

impl DriverError {
    /// Stable reason label.
    pub fn reason(&self) -> &'static str {
        match self {
            DriverError::Options(_) => "bad_options",
            DriverError::WrongNode { .. } => "wrong_node",
            DriverError::BadSource { .. } => "bad_source",
            DriverError::Command { source, .. } => source.reason(),
            DriverError::SecretFile { .. } => "secret_file",
            DriverError::Rbd(e) => e.reason(),
            DriverError::Scsi(e) => e.reason(),
            DriverError::Source(e) => e.reason(),
            DriverError::NameMoved { .. } => "device_changed",
        }
    }
}

/// What a driver may know about this node.
#[derive(Debug, Clone)]
pub struct NodeContext {
    /// This node's name.
    pub node_name: String,
    /// kubelet's root directory (drivers refuse sources inside it).
    pub kubelet_dir: PathBuf,
    /// moor's tmpfs run directory: credential files live under `<run_dir>/secrets/<key>/`.
    pub run_dir: PathBuf,
}

impl NodeContext {
    /// The node the drivers' unit tests run on.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        NodeContext {
            node_name: "node-a".into(),
            kubelet_dir: "/var/lib/kubelet".into(),
            run_dir: "/run/moor".into(),
        }
    }
}

/// What an attach produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attached {
    /// The block device the attach made appear (iSCSI, RBD, FC); `None` for the others.
    pub device: Option<PathBuf>,
    /// Non-secret facts learnt while attaching (WWID, session, rbd device id), merged into
    /// the stage record's options so detach finds them after a restart.
    pub persist: BTreeMap<String, String>,
}

/// One protocol.
pub trait Driver: Send + Sync {
    /// FlexVolume driver name (`moor~<name>/<name>`).
    fn name(&self) -> &'static str;
    /// Validates options and derives the volume.
    fn volume(&self, node: &NodeContext, opts: &VolumeOptions) -> Result<VolumeSpec, DriverError>;
    /// [`Driver::volume`], plus the source object the driver resolved and holds open (a local
    /// `path`), which the stage mounts instead of looking the text up again.
    fn resolve_volume(
        &self,
        node: &NodeContext,
        opts: &VolumeOptions,
    ) -> Result<(VolumeSpec, Option<crate::host::allow::Resolved>), DriverError> {
        Ok((self.volume(node, opts)?, None))
    }
    /// Makes the device appear on this node (or, for a share, writes the credential files
    /// its mount needs). Runs after the stage intent is journaled. Idempotent.
    fn attach(
        &self,
        _host: &Host,
        _spec: &VolumeSpec,
        _opts: &VolumeOptions,
    ) -> Result<Attached, DriverError> {
        Ok(Attached::default())
    }
    /// Makes the device go away (and removes credential files). Idempotent; gets only the
    /// persisted record (no secrets) and must also work for an attach that a crash cut short.
    fn detach(&self, _host: &Host, _rec: &StageRecord) -> Result<(), DriverError> {
        Ok(())
    }
}

/// The drivers by name.
#[derive(Clone, Default)]
pub struct Drivers(BTreeMap<&'static str, Arc<dyn Driver>>);

impl Drivers {
    /// Every driver moor ships.
    pub fn builtin() -> Self {
        let mut d = Drivers::default();
        d.add(Arc::new(crate::local::LocalDriver::default()));
        d.add(Arc::new(crate::attach::rbd::RbdDriver));
        d.add(Arc::new(crate::share::NfsDriver));
        d.add(Arc::new(crate::share::GlusterFsDriver));
        d.add(Arc::new(crate::share::CephFsDriver));
        d.add(Arc::new(crate::attach::iscsi::IscsiDriver::default()));
        d.add(Arc::new(crate::attach::fc::FcDriver));
        d
    }

    /// Registers a driver.
    pub fn add(&mut self, d: Arc<dyn Driver>) {
        self.0.insert(d.name(), d);
    }

    /// Looks a driver up.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Driver>> {
        self.0.get(name).cloned()
    }

    /// Names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        self.0.keys().copied().collect()
    }
}

/// A readable, path-safe key from an identity string: a sanitised prefix for humans plus a
/// hash of the whole identity, so distinct identities never share a key.
pub fn volume_key(driver: &str, identity: &str) -> String {
    let mut readable: String = identity
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    readable = readable.trim_matches('_').chars().take(60).collect();
    let digest = Sha256::digest(format!("{driver}\0{identity}").as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    if readable.is_empty() {
        format!("{driver}-{hex}")
    } else {
        format!("{driver}-{readable}-{hex}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_are_readable_and_distinct() {
        let a = volume_key("local", "/mnt/disks/ssd 1");
        assert!(a.starts_with("local-mnt_disks_ssd_1-"), "{a}");
        assert_ne!(a, volume_key("local", "/mnt/disks/ssd_1"));
    }

    proptest! {
        #[test]
        fn keys_are_path_safe(id in ".{0,200}") {
            let k = volume_key("local", &id);
            prop_assert!(k.len() <= 90);
            prop_assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)));
            prop_assert!(k != "." && k != "..");
        }
    }
}
