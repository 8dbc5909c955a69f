//! The [`Driver`] trait and the table of drivers by name. A driver turns a request's typed
//! options into its typed volume once ([`Driver::volume`]), and attaches, detaches and
//! refreshes the capacity of that value; everything after the device — probe, format,
//! stage, publish, reconstruction, metrics — is the lifecycle's, the same for every driver.
//!
//! Invariant: this module names no driver implementation (the daemon's composition root,
//! `daemon::drivers`, builds the table), and a protocol's own error reaches the top through
//! [`ProtocolError`] with its reason label, never as a string.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::options::{MountOptions, OptionsError, VolumeOptions};
use super::state::{StageSource, VolumeState};
use crate::host::{ExecError, Host};

/// What a driver derived from the options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    /// Stable, path-safe key: two pods using the same volume share one stage.
    pub key: String,
    /// What to mount at the stage path.
    pub source: StageSource,
    /// The driver's typed volume, which the stage record keeps for detach; `None` for a
    /// driver with nothing to remember beyond the source.
    pub state: Option<VolumeState>,
    /// Options of the stage's own mount(2) (a block device's filesystem, a directory's
    /// bind); empty for a share, whose options travel in its [`StageSource::Remote`].
    pub mount_options: MountOptions,
}

/// A protocol's own failure (SCSI, RBD, …), carried typed behind [`DriverError::Protocol`].
pub trait ProtocolError: std::error::Error + Send + Sync + 'static {
    /// Stable reason label.
    fn reason(&self) -> &'static str;
}

/// A boxed [`ProtocolError`]: its message and its source chain are the protocol error's own.
#[derive(Debug)]
pub struct ProtocolFailure(Box<dyn ProtocolError>);

impl ProtocolFailure {
    /// The protocol error, when it is a `T`.
    pub fn downcast_ref<T: ProtocolError>(&self) -> Option<&T> {
        let e: &(dyn std::error::Error + 'static) = self.0.as_ref();
        e.downcast_ref::<T>()
    }

    /// Its reason label.
    pub fn reason(&self) -> &'static str {
        self.0.reason()
    }
}

impl std::fmt::Display for ProtocolFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ProtocolFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl<T: ProtocolError> From<T> for ProtocolFailure {
    fn from(e: T) -> Self {
        ProtocolFailure(Box::new(e))
    }
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
    /// A protocol's own failure (iSCSI/FC SCSI handling, Ceph RBD).
    #[error(transparent)]
    Protocol(ProtocolFailure),
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
    /// The volume's record (or plan) holds no volume of this driver: a stage adopted from
    /// the mount table, or a record a driver cannot read.
    #[error("volume {volume}: its record holds no {driver} volume to act on")]
    NoVolume {
        /// Volume key.
        volume: String,
        /// Driver.
        driver: &'static str,
    },
}

impl<T: ProtocolError> From<T> for DriverError {
    fn from(e: T) -> Self {
        DriverError::Protocol(e.into())
    }
}

impl DriverError {
    /// Stable reason label.
    pub fn reason(&self) -> &'static str {
        match self {
            DriverError::Options(_) | DriverError::NoVolume { .. } => "bad_options",
            DriverError::WrongNode { .. } => "wrong_node",
            DriverError::BadSource { .. } => "bad_source",
            DriverError::Command { source, .. } => source.reason(),
            DriverError::SecretFile { .. } => "secret_file",
            DriverError::Protocol(e) => e.reason(),
            DriverError::Source(e) => e.reason(),
            DriverError::NameMoved { .. } => "device_changed",
        }
    }

    /// The protocol error inside, when it is a `T`.
    pub fn protocol<T: ProtocolError>(&self) -> Option<&T> {
        match self {
            DriverError::Protocol(p) => p.downcast_ref(),
            _ => None,
        }
    }
}

/// Why a device's new size could not be read in.
#[derive(Debug, thiserror::Error)]
pub enum CapacityError {
    /// A sysfs or device operation failed.
    #[error("{what} {path}")]
    Io {
        /// What was done.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A tool failed (the error names the redacted command).
    #[error("refresh the capacity")]
    Command {
        /// The failure.
        #[source]
        source: ExecError,
    },
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
    /// The typed volume with what attach learnt (WWID, rbd device id), for the stage
    /// record, so detach finds it after a restart; `None`: nothing learnt.
    pub state: Option<VolumeState>,
}

/// What detach gets of a stage record: never a secret.
#[derive(Debug, Clone)]
pub struct Recorded<'a> {
    /// Volume key.
    pub key: &'a str,
    /// What is (or was) mounted at the stage.
    pub source: &'a StageSource,
    /// The driver's typed volume, when the record has one.
    pub state: Option<&'a VolumeState>,
    /// Why a record of an earlier moor has none: its options did not convert.
    pub unconverted: Option<OptionsError>,
}

impl Recorded<'_> {
    /// The error for a record without a typed volume of `driver`: the conversion's, naming
    /// the option, or [`DriverError::NoVolume`].
    pub fn missing(&self, driver: &'static str) -> DriverError {
        match &self.unconverted {
            Some(e) => DriverError::Options(e.clone()),
            None => DriverError::NoVolume {
                volume: self.key.into(),
                driver,
            },
        }
    }
}

/// One protocol.
pub trait Driver: Send + Sync {
    /// FlexVolume driver name (`moor~<name>/<name>`).
    fn name(&self) -> &'static str;
    /// Validates options and derives the typed volume, once.
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
    /// its mount needs), from the spec [`Driver::volume`] made and the request's secrets.
    /// Runs after the stage intent is journaled. Idempotent.
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
    fn detach(&self, _host: &Host, _rec: &Recorded<'_>) -> Result<(), DriverError> {
        Ok(())
    }
    /// Makes the kernel read the size of the block device `name` (its kernel name: `sdc`,
    /// `dm-3`, `rbd0`) again, before a grow: the protocol's rescan or refresh. Default:
    /// nothing to refresh (the device tells its new size by itself).
    fn refresh_capacity(&self, _host: &Host, _name: &str) -> Result<(), CapacityError> {
        Ok(())
    }
}

/// The drivers by name.
#[derive(Clone, Default)]
pub struct Drivers(BTreeMap<&'static str, Arc<dyn Driver>>);

impl Drivers {
    /// Registers a driver (replacing one of the same name).
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

    #[derive(Debug, thiserror::Error)]
    #[error("volume v: lun gone")]
    struct Gone {
        #[source]
        source: std::io::Error,
    }

    impl ProtocolError for Gone {
        fn reason(&self) -> &'static str {
            "gone"
        }
    }

    /// A protocol error keeps its reason, its message and its cause through the box, and
    /// can be told apart again (iSCSI stops at a CHAP failure by its variant).
    #[test]
    fn a_protocol_error_stays_typed() {
        let e: DriverError = Gone {
            source: std::io::Error::other("ENODEV"),
        }
        .into();
        assert_eq!(e.reason(), "gone");
        assert_eq!(e.to_string(), "volume v: lun gone");
        let cause = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(cause.as_deref(), Some("ENODEV"));
        assert!(e.protocol::<Gone>().is_some());
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
