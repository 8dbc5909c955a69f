//! The daemon's Unix-socket protocol: one JSON request line, one JSON response line, per
//! connection. The socket is mode 0600 and the server checks the peer's credentials.

pub mod client;
pub mod server;

use serde::{Deserialize, Serialize};

use crate::flexvolume::Reply;
use crate::volume::VolumeOptions;

/// A request to the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// FlexVolume `mount`: attach + stage + publish.
    Mount {
        /// Driver name.
        driver: String,
        /// Pod volume directory.
        target: String,
        /// The request's options as the front end parsed them (secrets included: the socket
        /// is root-only).
        #[serde(deserialize_with = "crate::volume::options::typed_or_kubelet")]
        options: VolumeOptions,
    },
    /// FlexVolume `unmount`: unpublish, then unstage + detach when no publish remains.
    Unmount {
        /// Driver name.
        driver: String,
        /// Pod volume directory.
        target: String,
    },
    /// FlexVolume `expandfs`: grow the staged filesystem of a PV to its device's new size.
    Expand {
        /// Driver name.
        driver: String,
        /// The PV's options as the front end parsed them (no secrets: kubelet sends none to
        /// expandfs).
        #[serde(deserialize_with = "crate::volume::options::typed_or_kubelet")]
        options: VolumeOptions,
        /// The claim's new size in bytes.
        new_size: u64,
    },
    /// The volume table.
    Status,
    /// Drop an idle volume's record (`moor forget`).
    Forget {
        /// Volume key.
        key: String,
    },
}

impl Request {
    /// The operation name, for logs and metrics.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Mount { .. } => "mount",
            Request::Unmount { .. } => "unmount",
            Request::Expand { .. } => "expandfs",
            Request::Status => "status",
            Request::Forget { .. } => "forget",
        }
    }
}

/// A publish as `moor status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodUse {
    /// Pod UID.
    pub pod_uid: String,
    /// Pod namespace.
    pub namespace: Option<String>,
    /// Pod volume directory.
    pub target: String,
    /// Read-only bind.
    pub read_only: bool,
    /// Publish phase.
    pub phase: String,
}

/// A volume as `moor status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeStatus {
    /// Driver.
    pub driver: String,
    /// Volume key.
    pub key: String,
    /// Stage phase.
    pub state: String,
    /// Block device, when there is one.
    pub device: Option<String>,
    /// Source directory, for directory volumes.
    pub source: String,
    /// Filesystem type.
    pub fs_type: Option<String>,
    /// Stage path.
    pub stage_path: String,
    /// Pods using it.
    pub pods: Vec<PodUse>,
}

/// A journal entry moor could not use and set aside (still on disk, renamed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAsideRecord {
    /// Where it is now.
    pub path: String,
    /// Stable label (`invalid_json`, `not_regular`, `set_aside_earlier`, …).
    pub reason: String,
    /// What was wrong with it.
    pub detail: String,
}

/// The daemon's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    /// Answer to a FlexVolume operation.
    Flex {
        /// The reply to print.
        reply: Reply,
    },
    /// Answer to `Status`.
    Status {
        /// Node name.
        node: String,
        /// Volumes.
        volumes: Vec<VolumeStatus>,
        /// Journal entries set aside at start-up.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        set_aside: Vec<SetAsideRecord>,
    },
}
