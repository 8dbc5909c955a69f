//! From CSI's messages to moor's request vocabulary: a capability's mode and access mode,
//! which access modes each driver can honour, and the volume context turned into the same
//! [`VolumeOptions`] FlexVolume's options become, through the one parser
//! [`crate::volume::options::parse`].
//!
//! Invariants: the volume context's keys are FlexVolume's option names and nothing else of
//! Kubernetes' reaches the driver (a `kubernetes.io/` attribute is refused: kubelet's own
//! keys are built here; `csi.storage.k8s.io/` keys are the CO's and are taken out, the pod's
//! details kept); secrets go into [`VolumeOptions::secrets`] only.

use std::collections::{BTreeMap, HashMap};

use super::proto::csi::v1::VolumeCapability;
use super::proto::csi::v1::volume_capability::access_mode::Mode;
use super::proto::csi::v1::volume_capability::{AccessType, MountVolume};
use crate::api::{AccessMode, Failure, VolumeMode};
use crate::volume::VolumeOptions;
use crate::volume::options::Secret;

/// The prefix of kubelet's own option keys (reserved in a volume context).
const KUBELET_PREFIX: &str = "kubernetes.io/";
/// The prefix of the keys the CO adds to a volume context (podInfoOnMount and others).
const CO_PREFIX: &str = "csi.storage.k8s.io/";

/// A capability's volume mode and access mode; a capability without either is
/// `unsupported_capability`.
pub fn capability(cap: &VolumeCapability) -> Result<(VolumeMode, AccessMode), Failure> {
    let mode = match &cap.access_type {
        Some(AccessType::Block(_)) => VolumeMode::Block,
        Some(AccessType::Mount(_)) => VolumeMode::Filesystem,
        None => {
            return Err(Failure::labelled(
                "unsupported_capability",
                "volume_capability has neither mount nor block access type",
            ));
        }
    };
    let raw = cap.access_mode.as_ref().map_or(0, |a| a.mode);
    let access = match Mode::try_from(raw) {
        Ok(Mode::SingleNodeWriter) => AccessMode::SingleNodeWriter,
        Ok(Mode::SingleNodeReaderOnly) => AccessMode::SingleNodeReaderOnly,
        Ok(Mode::MultiNodeReaderOnly) => AccessMode::MultiNodeReaderOnly,
        Ok(Mode::MultiNodeSingleWriter) => AccessMode::MultiNodeSingleWriter,
        Ok(Mode::MultiNodeMultiWriter) => AccessMode::MultiNodeMultiWriter,
        Ok(Mode::SingleNodeSingleWriter) => AccessMode::SingleNodeSingleWriter,
        Ok(Mode::SingleNodeMultiWriter) => AccessMode::SingleNodeMultiWriter,
        Ok(Mode::Unknown) | Err(_) => {
            return Err(Failure::labelled(
                "unsupported_capability",
                format!("volume_capability access mode {raw} is unknown or unset"),
            ));
        }
    };
    Ok((mode, access))
}

/// Whether `driver` can honour `access` in `mode` on this node; refused with
/// `unsupported_capability` otherwise. Block devices (iscsi, rbd, fc) take no filesystem
/// writer from several nodes (a local filesystem would be corrupted); iSCSI and FC hand the
/// raw device to writers on several nodes (a cluster-aware workload coordinates them), but an
/// RBD image is fenced to one read-write mapping (`attach/rbd.rs`), so the second node's
/// stage could only fail: refused here instead. Local volumes never leave the node; shares
/// take any mode but have no block device.
pub fn check_access(driver: &str, mode: VolumeMode, access: AccessMode) -> Result<(), Failure> {
    use AccessMode::*;
    let single_node = matches!(
        access,
        SingleNodeWriter | SingleNodeReaderOnly | SingleNodeSingleWriter | SingleNodeMultiWriter
    );
    let ok = match driver {
        "iscsi" | "rbd" | "fc" => match mode {
            VolumeMode::Filesystem => single_node || access == MultiNodeReaderOnly,
            VolumeMode::Block => {
                single_node
                    || access == MultiNodeReaderOnly
                    || (access == MultiNodeMultiWriter && driver != "rbd")
            }
        },
        "local" => single_node,
        "nfs" | "glusterfs" | "cephfs" => mode == VolumeMode::Filesystem,
        other => {
            return Err(Failure::labelled(
                "unknown_driver",
                format!("{other} is not a moor CSI driver"),
            ));
        }
    };
    if ok {
        Ok(())
    } else {
        Err(Failure::labelled(
            "unsupported_capability",
            format!("driver {driver} cannot honour access mode {access:?} for a {mode:?} volume"),
        ))
    }
}

/// Whether kubelet marked the call as an inline ephemeral volume's (podInfoOnMount).
pub fn is_ephemeral(volume_context: &HashMap<String, String>) -> bool {
    volume_context
        .get(&format!("{CO_PREFIX}ephemeral"))
        .is_some_and(|v| v == "true")
}

/// The volume's options as the driver gets them: `volume_context` with FlexVolume's names,
/// the capability's fsType and mount flags (appended to `mountOptions`), `readonly`, the
/// pod's details from podInfoOnMount, and `secrets`.
pub fn options(
    volume_context: &HashMap<String, String>,
    mount: Option<&MountVolume>,
    readonly: bool,
    secrets: &HashMap<String, String>,
) -> Result<VolumeOptions, Failure> {
    let mut map = BTreeMap::new();
    for (k, v) in volume_context {
        if k.starts_with(KUBELET_PREFIX) {
            return Err(Failure::labelled(
                "bad_options",
                format!(
                    "volume attribute {k}: the {KUBELET_PREFIX} prefix is reserved for kubelet's own keys"
                ),
            ));
        }
        match k.strip_prefix(CO_PREFIX) {
            Some(co) => {
                // The pod's details feed the same fields as FlexVolume's; every other key of
                // the CO's (service account, ephemeral, pv/pvc names) is informational.
                if let Some(field) = co.strip_prefix("pod.")
                    && ["name", "namespace", "uid"].contains(&field)
                {
                    map.insert(format!("{KUBELET_PREFIX}pod.{field}"), v.clone());
                }
            }
            None => {
                map.insert(k.clone(), v.clone());
            }
        }
    }
    if let Some(m) = mount {
        if !m.fs_type.is_empty() {
            map.insert(format!("{KUBELET_PREFIX}fsType"), m.fs_type.clone());
        }
        if !m.volume_mount_group.is_empty() {
            return Err(Failure::labelled(
                "unsupported_capability",
                "volume_mount_group is set, but moor does not offer VOLUME_MOUNT_GROUP (kubelet applies fsGroup itself)",
            ));
        }
        if !m.mount_flags.is_empty() {
            let flags = m.mount_flags.join(",");
            let joined = match map.get("mountOptions").filter(|o| !o.is_empty()) {
                Some(o) => format!("{o},{flags}"),
                None => flags,
            };
            map.insert("mountOptions".into(), joined);
        }
    }
    if readonly {
        map.insert(format!("{KUBELET_PREFIX}readwrite"), "ro".into());
    }
    let mut o = crate::volume::options::parse(&map).map_err(|e| Failure::of("bad_options", &e))?;
    for (k, v) in secrets {
        o.secrets.insert(k.clone(), Secret(v.clone().into_bytes()));
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::super::proto::csi::v1::volume_capability::{AccessMode as Am, BlockVolume};
    use super::*;

    fn cap(block: bool, mode: Mode) -> VolumeCapability {
        VolumeCapability {
            access_type: Some(if block {
                AccessType::Block(BlockVolume {})
            } else {
                AccessType::Mount(MountVolume::default())
            }),
            access_mode: Some(Am { mode: mode as i32 }),
        }
    }

    fn ctx(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn a_capability_gives_its_mode_and_access_or_is_refused() {
        assert_eq!(
            capability(&cap(true, Mode::SingleNodeSingleWriter)).unwrap(),
            (VolumeMode::Block, AccessMode::SingleNodeSingleWriter)
        );
        assert_eq!(
            capability(&cap(false, Mode::MultiNodeMultiWriter)).unwrap(),
            (VolumeMode::Filesystem, AccessMode::MultiNodeMultiWriter)
        );
        let unknown = capability(&cap(false, Mode::Unknown)).unwrap_err();
        assert_eq!(unknown.reason.as_deref(), Some("unsupported_capability"));
        let mut none = cap(false, Mode::SingleNodeWriter);
        none.access_type = None;
        assert_eq!(
            capability(&none).unwrap_err().reason.as_deref(),
            Some("unsupported_capability")
        );
        let mut bogus = cap(false, Mode::SingleNodeWriter);
        bogus.access_mode = Some(Am { mode: 42 });
        assert!(capability(&bogus).is_err());
    }

    #[test]
    fn each_driver_takes_only_the_access_modes_it_can_keep() {
        use AccessMode::*;
        use VolumeMode::*;
        for (driver, mode, access, ok) in [
            ("iscsi", Filesystem, SingleNodeWriter, true),
            ("iscsi", Filesystem, MultiNodeReaderOnly, true),
            ("iscsi", Filesystem, MultiNodeMultiWriter, false),
            ("iscsi", Filesystem, MultiNodeSingleWriter, false),
            ("rbd", Block, MultiNodeMultiWriter, false),
            ("rbd", Block, MultiNodeReaderOnly, true),
            ("iscsi", Block, MultiNodeMultiWriter, true),
            ("fc", Block, SingleNodeSingleWriter, true),
            ("fc", Block, MultiNodeSingleWriter, false),
            ("local", Filesystem, SingleNodeMultiWriter, true),
            ("local", Block, SingleNodeWriter, true),
            ("local", Filesystem, MultiNodeReaderOnly, false),
            ("nfs", Filesystem, MultiNodeMultiWriter, true),
            ("cephfs", Filesystem, MultiNodeSingleWriter, true),
            ("glusterfs", Block, SingleNodeWriter, false),
        ] {
            let got = check_access(driver, mode, access);
            assert_eq!(got.is_ok(), ok, "{driver} {mode:?} {access:?}: {got:?}");
            if let Err(f) = got {
                assert_eq!(f.reason.as_deref(), Some("unsupported_capability"));
            }
        }
        assert_eq!(
            check_access("ceph", Filesystem, SingleNodeWriter)
                .unwrap_err()
                .reason
                .as_deref(),
            Some("unknown_driver")
        );
    }

    #[test]
    fn the_volume_context_becomes_flexvolumes_options() {
        let mount = MountVolume {
            fs_type: "xfs".into(),
            mount_flags: vec!["noatime".into(), "nodiratime".into()],
            volume_mount_group: String::new(),
        };
        let o = options(
            &ctx(&[
                ("targetPortal", "10.0.0.1:3260"),
                ("iqn", "iqn.2001-04.com.example:disk"),
                ("lun", "0"),
                ("mountOptions", "discard"),
                ("csi.storage.k8s.io/pod.name", "web-0"),
                ("csi.storage.k8s.io/pod.namespace", "shop"),
                ("csi.storage.k8s.io/pod.uid", "u-1"),
                ("csi.storage.k8s.io/serviceAccount.name", "default"),
                ("csi.storage.k8s.io/ephemeral", "false"),
            ]),
            Some(&mount),
            true,
            &ctx(&[("chapPassword", "s3cret")]),
        )
        .unwrap();
        assert_eq!(o.fs_type, "xfs");
        assert!(o.read_only);
        assert_eq!(
            o.mount_options.words(),
            ["discard", "noatime", "nodiratime"]
        );
        assert_eq!(o.pod_name.as_deref(), Some("web-0"));
        assert_eq!(o.pod_namespace.as_deref(), Some("shop"));
        assert_eq!(o.pod_uid.as_deref(), Some("u-1"));
        assert_eq!(
            o.user.keys().map(String::as_str).collect::<Vec<_>>(),
            ["iqn", "lun", "targetPortal"]
        );
        assert_eq!(
            o.secrets.get("chapPassword"),
            Some(&Secret(b"s3cret".to_vec()))
        );
        let plain = options(
            &ctx(&[("server", "nfs1"), ("readOnly", "true")]),
            None,
            false,
            &HashMap::new(),
        )
        .unwrap();
        assert!(plain.read_only, "readOnly attribute");
        assert!(plain.fs_type.is_empty());
    }

    #[test]
    fn reserved_or_bad_attributes_are_bad_options() {
        for bad in [
            ctx(&[("kubernetes.io/fsType", "ext4")]),
            ctx(&[("kubernetes.io/secret/password", "eA==")]),
            ctx(&[("mountOptions", "--bind")]),
            ctx(&[("readOnly", "yes")]),
        ] {
            let f = options(&bad, None, false, &HashMap::new()).unwrap_err();
            assert_eq!(f.reason.as_deref(), Some("bad_options"), "{bad:?}: {f}");
        }
        let flags = MountVolume {
            mount_flags: vec!["ro".into(), "--make-shared".into()],
            ..MountVolume::default()
        };
        let f = options(&HashMap::new(), Some(&flags), false, &HashMap::new()).unwrap_err();
        assert_eq!(f.reason.as_deref(), Some("bad_options"), "{f}");
        let group = MountVolume {
            volume_mount_group: "1000".into(),
            ..MountVolume::default()
        };
        let f = options(&HashMap::new(), Some(&group), false, &HashMap::new()).unwrap_err();
        assert_eq!(f.reason.as_deref(), Some("unsupported_capability"));
    }
}
