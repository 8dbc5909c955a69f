//! Record types. Secrets are never part of a record: drivers persist only what they need
//! to find the volume again (portal, image, path), never credentials.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where a stage mount comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StageSource {
    /// A directory bind-mounted as the stage.
    Directory {
        /// The directory.
        path: PathBuf,
    },
    /// A block device with a filesystem.
    Block {
        /// The device path.
        device: PathBuf,
    },
    /// A block device that the driver's attach makes appear (iSCSI, RBD, FC). `None` until
    /// attach has returned it: a crash before that leaves only the options to detach with.
    Attached {
        /// The device attach returned.
        device: Option<PathBuf>,
    },
    /// A network or FUSE filesystem mounted by its mount helper (NFS, GlusterFS, CephFS).
    Remote(RemoteMount),
}

impl StageSource {
    /// The block device to format and mount, when the source is one.
    pub fn block_device(&self) -> Option<&PathBuf> {
        match self {
            StageSource::Block { device } => Some(device),
            StageSource::Attached { device } => device.as_ref(),
            _ => None,
        }
    }
}

/// How to mount a network filesystem: `mount -t <fs_type> -o <options> <source> <stage>`.
/// Never holds a secret: credentials reach the helper through files named in `options`
/// (`secretfile=`, `ceph.keyring=`), which live in a 0700 directory until unstage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteMount {
    /// Filesystem type for `mount -t` (`nfs`, `nfs4`, `glusterfs`, `ceph`, `fuse.ceph`).
    pub fs_type: String,
    /// What to mount (`server:/path`, `host:/volume`, `mon1,mon2:/path`, `none`).
    pub source: String,
    /// `-o` items, in order.
    pub options: Vec<String>,
    /// The helper leaves a FUSE daemon behind: it runs in its own systemd scope, with no
    /// inherited stdio, and a hung connection is aborted through fusectl.
    pub fuse: bool,
    /// A log the client writes; its tail goes into a failure message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_file: Option<PathBuf>,
    /// The server(s) to name in messages.
    pub server: String,
}

/// Progress of a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StagePhase {
    /// Intent recorded; attach/format/mount under way.
    Staging,
    /// Mounted at the stage path.
    Staged,
    /// Intent to unmount and detach recorded.
    Unstaging,
    /// Nothing mounted (e.g. after a reboot); kept so moor remembers the filesystem it saw.
    Idle,
}

/// A staged volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRecord {
    /// Volume key (path-safe).
    pub key: String,
    /// Driver name.
    pub driver: String,
    /// What is mounted at the stage path.
    pub source: StageSource,
    /// Non-secret driver options needed to stage again or detach.
    pub options: BTreeMap<String, String>,
    /// Filesystem type mounted (block volumes).
    pub fs_type: Option<String>,
    /// Filesystem UUID seen (block volumes).
    pub fs_uuid: Option<String>,
    /// Stage mounted read-only.
    pub read_only: bool,
    /// Progress.
    pub phase: StagePhase,
    /// moor created the filesystem.
    #[serde(default)]
    pub formatted_by_moor: bool,
    /// The stage mount moor made (what it may unmount later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_id: Option<MountId>,
    /// Rebuilt from the mount table after the record was lost: moor never formats, checks or
    /// grows it (it may only be unpublished and unstaged).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopted: bool,
}

/// The identity of a mount moor made, as `statx` gave it right after the mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountId {
    /// The kernel's mount id.
    pub id: u64,
    /// `id` is the never-reused 64-bit id (Linux 6.8+), not the 32-bit one.
    pub unique: bool,
    /// Device (major, minor) of the mounted filesystem.
    pub dev: (u32, u32),
}

impl From<crate::host::PathMount> for MountId {
    fn from(m: crate::host::PathMount) -> Self {
        MountId {
            id: m.mount_id,
            unique: m.id_unique,
            dev: m.dev,
        }
    }
}

impl StageRecord {
    /// The filesystem moor saw on this volume, as text for messages.
    pub fn known_filesystem(&self) -> Option<String> {
        self.fs_type.as_ref().map(|t| match &self.fs_uuid {
            Some(u) => format!("{t} (UUID {u})"),
            None => t.clone(),
        })
    }
}

/// Progress of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishPhase {
    /// Intent recorded; bind under way.
    Publishing,
    /// Bound into the pod directory.
    Published,
    /// Intent to unbind recorded.
    Unpublishing,
}

/// One pod's use of a staged volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishRecord {
    /// The pod volume directory.
    pub target: PathBuf,
    /// The stage it binds.
    pub key: String,
    /// Driver name.
    pub driver: String,
    /// Pod UID.
    pub pod_uid: String,
    /// PV or inline volume name.
    pub volume_name: String,
    /// Pod namespace, when kubelet said.
    pub namespace: Option<String>,
    /// Bound read-only.
    pub read_only: bool,
    /// Progress.
    pub phase: PublishPhase,
    /// The bind moor made (what it may unmount later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_id: Option<MountId>,
}
