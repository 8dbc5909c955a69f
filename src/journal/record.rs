//! Record types. Secrets are never part of a record: a stage record keeps the driver's typed
//! volume (portal, image, path: what detach needs), never credentials.
//!
//! Invariant: a stage record written by an earlier moor (up to ef677bd: the driver's options
//! as a string map under `options`, the claimed device's number and stable id among them)
//! loads into the same typed record; one whose options do not convert keeps them as written,
//! so rewriting it loses nothing, and its detach is refused naming the option.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use crate::volume::state::{RemoteMount, StageSource};
use crate::volume::{Recorded, VolumeState};

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
#[serde(from = "StageRecordFile")]
pub struct StageRecord {
    /// Volume key (path-safe).
    pub key: String,
    /// Driver name.
    pub driver: String,
    /// What is mounted at the stage path.
    pub source: StageSource,
    /// The driver's typed volume (what detach needs, what attach learnt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeState>,
    /// The options of a record of an earlier moor that did not convert into a typed volume,
    /// as written (see the module header). Always written, empty for a typed record: moor up
    /// to ef677bd requires the field, so after a downgrade it still loads the record (and
    /// what it remembers of the filesystem) instead of setting it aside.
    #[serde(default, rename = "options")]
    pub unconverted: BTreeMap<String, String>,
    /// The block device this stage holds, claimed before its probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceClaim>,
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
    /// Staged by a CSI NodeStageVolume: only NodeUnstageVolume ends it (no implicit unstage
    /// when its last publish goes, none by the reconciler). `None` for FlexVolume's stages
    /// and for every record written before CSI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csi: Option<CsiStage>,
}

/// What a CSI stage was asked with: the identity a later call must match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsiStage {
    /// The CSI `volume_id`.
    pub volume_id: String,
    /// kubelet's `staging_target_path` (validated; nothing is mounted there).
    pub staging_path: PathBuf,
    /// Raw block (`volumeMode: Block`): attached, never formatted nor mounted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub block: bool,
    /// The access mode, as the api names it (`single_node_writer`, …).
    pub access: String,
    /// SHA-256 of the non-secret attributes, fsType and mount options.
    pub digest: String,
    /// moor made the raw block device read-only for a reader-only access mode (`BLKROSET`):
    /// unstage makes it writable again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub set_read_only: bool,
}

/// The block device a stage holds: its number when claimed and its stable id, so two volume
/// keys (two portals of one LUN, two spellings of one disk) cannot stage one device twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceClaim {
    /// `major:minor`.
    pub number: String,
    /// The device's stable id (WWN, by-id name, WWID, dm UUID, backing file, or
    /// `devnum-…`).
    pub stable_id: String,
}

/// The option names under which moor up to ef677bd kept a [`DeviceClaim`].
const LEGACY_DEVICE_NUMBER: &str = "device-number";
/// See [`LEGACY_DEVICE_NUMBER`].
const LEGACY_DEVICE_STABLE_ID: &str = "device-stable-id";

/// A stage record as a file holds it, this version's or an earlier one's.
#[derive(Deserialize)]
struct StageRecordFile {
    key: String,
    driver: String,
    source: StageSource,
    #[serde(default)]
    volume: Option<VolumeState>,
    #[serde(default)]
    options: BTreeMap<String, String>,
    #[serde(default)]
    device: Option<DeviceClaim>,
    fs_type: Option<String>,
    fs_uuid: Option<String>,
    read_only: bool,
    phase: StagePhase,
    #[serde(default)]
    formatted_by_moor: bool,
    #[serde(default)]
    mount_id: Option<MountId>,
    #[serde(default)]
    adopted: bool,
    #[serde(default)]
    csi: Option<CsiStage>,
}

impl From<StageRecordFile> for StageRecord {
    fn from(f: StageRecordFile) -> Self {
        let mut options = f.options;
        let legacy_claim = match (
            options.remove(LEGACY_DEVICE_NUMBER),
            options.remove(LEGACY_DEVICE_STABLE_ID),
        ) {
            (Some(number), Some(stable_id)) => Some(DeviceClaim { number, stable_id }),
            _ => None,
        };
        let mut volume = f.volume;
        if volume.is_none()
            && !options.is_empty()
            && let Ok(v) = VolumeState::from_legacy(&f.driver, &options)
        {
            volume = Some(v);
            options.clear();
        }
        StageRecord {
            key: f.key,
            driver: f.driver,
            source: f.source,
            volume,
            unconverted: options,
            device: f.device.or(legacy_claim),
            fs_type: f.fs_type,
            fs_uuid: f.fs_uuid,
            read_only: f.read_only,
            phase: f.phase,
            formatted_by_moor: f.formatted_by_moor,
            mount_id: f.mount_id,
            adopted: f.adopted,
            csi: f.csi,
        }
    }
}

impl StageRecord {
    /// A new record of `key` in phase `phase`, with nothing learnt yet.
    pub fn new(
        key: &str,
        driver: &str,
        source: StageSource,
        volume: Option<VolumeState>,
        phase: StagePhase,
    ) -> Self {
        StageRecord {
            key: key.into(),
            driver: driver.into(),
            source,
            volume,
            unconverted: BTreeMap::new(),
            device: None,
            fs_type: None,
            fs_uuid: None,
            read_only: false,
            phase,
            formatted_by_moor: false,
            mount_id: None,
            adopted: false,
            csi: None,
        }
    }

    /// What the driver's detach gets of this record.
    pub fn recorded(&self) -> Recorded<'_> {
        Recorded {
            key: &self.key,
            source: &self.source,
            state: self.volume.as_ref(),
            unconverted: (!self.unconverted.is_empty())
                .then(|| VolumeState::from_legacy(&self.driver, &self.unconverted).err())
                .flatten(),
        }
    }
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
    /// The mount namespace `id` was read in (its `/proc/self/ns/mnt` inode): the same mount
    /// seen from another namespace (a DaemonSet's next pod) has another id. `None` in
    /// records of earlier versions, which ran in one namespace (a systemd unit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ns: Option<u64>,
}

impl From<crate::host::PathMount> for MountId {
    fn from(m: crate::host::PathMount) -> Self {
        MountId {
            id: m.mount_id,
            unique: m.id_unique,
            dev: m.dev,
            ns: crate::host::process::mount_namespace(),
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
    /// A CSI NodePublishVolume made it: its unpublish never unstages, and removes the target
    /// moor created.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub csi: bool,
    /// A raw block publish: the device node bound onto a regular file moor created.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub block: bool,
    /// Mounts a heal stacked on top of `mount_id` (bottom first), so that the pod's
    /// running containers, whose copies receive propagation, see the healed share: every
    /// one is moor's and is removed, top down, before the bind under it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<MountId>,
}

/// A stage record as main ef677bd wrote it, loaded: it must convert into a typed volume and
/// round-trip in this version's form (the `options` map empty). For the drivers' tests.
#[cfg(test)]
pub(crate) fn old_record(json: &str) -> StageRecord {
    let rec: StageRecord = serde_json::from_str(json).unwrap();
    assert!(rec.unconverted.is_empty(), "not converted: {rec:?}");
    assert!(rec.volume.is_some(), "no typed volume: {rec:?}");
    let text = serde_json::to_string_pretty(&rec).unwrap();
    assert!(text.contains("\"options\": {}"), "{text}");
    let again: StageRecord = serde_json::from_str(&text).unwrap();
    assert_eq!(again, rec);
    rec
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The claim an earlier moor kept among the options becomes the typed claim; a record
    /// whose options do not convert keeps them as written, and says why at detach.
    #[test]
    fn old_records_convert_or_keep_their_options() {
        let rec = old_record(include_str!("../volume/fixtures/local-ef677bd.json"));
        assert_eq!(
            rec.device,
            Some(DeviceClaim {
                number: "8:16".into(),
                stable_id: "wwn-0x5000c500a1b2c3d4".into(),
            })
        );
        let hostile = r#"{"key":"k","driver":"iscsi","source":{"kind":"attached","device":null},
            "options":{"targetPortal":"-u","iqn":"iqn.2024-01.x:y","device-number":"8:1",
            "device-stable-id":"s"},"fs_type":null,"fs_uuid":null,"read_only":false,
            "phase":"staging"}"#;
        let rec: StageRecord = serde_json::from_str(hostile).unwrap();
        assert_eq!(rec.volume, None);
        assert_eq!(rec.unconverted["targetPortal"], "-u");
        assert!(rec.device.is_some());
        let e = rec.recorded().missing("iscsi");
        assert_eq!(e.reason(), "bad_options");
        assert!(e.to_string().starts_with("option targetPortal=-u"), "{e}");
        // Rewritten, it keeps what it had.
        let again: StageRecord =
            serde_json::from_str(&serde_json::to_string(&rec).unwrap()).unwrap();
        assert_eq!(again, rec);
    }

    /// After a downgrade, moor up to ef677bd still loads a record this version wrote (its
    /// stage record has these required fields), so it keeps what it knew of the volume.
    #[test]
    fn an_earlier_moor_still_loads_a_typed_record() {
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct Ef677bdStageRecord {
            key: String,
            driver: String,
            source: StageSource,
            options: BTreeMap<String, String>,
            fs_type: Option<String>,
            fs_uuid: Option<String>,
            read_only: bool,
            phase: StagePhase,
        }
        let rec = old_record(include_str!("../volume/fixtures/iscsi-ef677bd.json"));
        let text = serde_json::to_string(&rec).unwrap();
        let old: Ef677bdStageRecord = serde_json::from_str(&text).unwrap();
        assert_eq!((old.key, old.phase), (rec.key, rec.phase));
        assert!(old.options.is_empty());
    }

    /// A publish record as main 613d3bf wrote it loads with no layers and is written back
    /// without the field; a healed one round-trips its layers, bottom first.
    #[test]
    fn publish_records_without_layers_load_and_layers_round_trip() {
        let old = r#"{"target":"/var/lib/kubelet/pods/u/volumes/moor~glusterfs/v","key":"glusterfs-k","driver":"glusterfs","pod_uid":"u","volume_name":"v","namespace":null,"read_only":false,"phase":"published","mount_id":{"id":7,"unique":true,"dev":[0,61]}}"#;
        let mut rec: PublishRecord = serde_json::from_str(old).unwrap();
        assert!(rec.layers.is_empty());
        assert!(!serde_json::to_string(&rec).unwrap().contains("layers"));
        let layer = |id| MountId {
            id,
            unique: true,
            dev: (0, 62),
            ns: Some(4026531841),
        };
        rec.layers = vec![layer(9), layer(11)];
        let again: PublishRecord =
            serde_json::from_str(&serde_json::to_string(&rec).unwrap()).unwrap();
        assert_eq!(again, rec);
        assert_eq!(again.layers[1].id, 11, "top last");
    }
}
