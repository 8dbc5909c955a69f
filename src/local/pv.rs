//! PersistentVolume objects for discovered entries: the deterministic name, moor's labels and
//! annotations, node affinity, and the volume source.
//!
//! Invariant: the name is a pure function of (node, class, stable id) — a DNS-1123 label of at
//! most 63 characters — so the same disk always maps to the same PV and another disk (a
//! replaced drive, a recreated node) never inherits it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    FlexPersistentVolumeSource, LocalVolumeSource, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, PersistentVolume, PersistentVolumeSpec, VolumeNodeAffinity,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sha2::{Digest, Sha256};

use super::classes::{ClassConfig, SourceKind, VolumeMode, is_label_value};
use super::discover::{Entry, EntryKind};

/// Label on every PV moor creates.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "moor");
/// Label: the node (or `h-<hash>` when the name is no valid label value).
pub const LABEL_NODE: &str = "moor.io/node";
/// Label: the class.
pub const LABEL_CLASS: &str = "moor.io/class";
/// Annotation: the full stable id.
pub const ANN_STABLE_ID: &str = "moor.io/stable-id";
/// Annotation: the entry path.
pub const ANN_ENTRY: &str = "moor.io/entry";
/// Annotation: the node name, unabridged.
pub const ANN_NODE: &str = "moor.io/node";
/// Annotation set when the entry disappeared (RFC 3339 time); removed when it comes back.
pub const ANN_MISSING: &str = "moor.io/missing-since";
/// Annotation set when the entry path now holds another disk.
pub const ANN_PROBLEM: &str = "moor.io/problem";
/// The PV controller leaves deletion of Released PVs with this annotation to us.
pub const ANN_PROVISIONED_BY: (&str, &str) = ("pv.kubernetes.io/provisioned-by", "moor");

fn hex(bytes: &[u8], n: usize) -> String {
    bytes.iter().take(n).map(|b| format!("{b:02x}")).collect()
}

/// Lowercase alphanumerics and `-`, squeezed, trimmed.
fn dns_part(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_owned()
}

/// `moor-<node>-<class>-<hash8>`: the hash covers all three, so truncating the readable parts
/// to fit 63 characters never makes two PVs collide.
pub fn pv_name(node: &str, class: &str, stable_id: &str) -> String {
    let digest = Sha256::digest(format!("{node}\0{class}\0{stable_id}").as_bytes());
    let h = hex(&digest, 4);
    // "moor-" + node + "-" + class + "-" + 8 hex = 63 at most.
    let budget = 63 - 5 - 1 - 1 - h.len();
    let mut n = dns_part(node);
    let mut c = dns_part(class);
    if n.len() + c.len() > budget {
        let c_max = (budget / 2).max(budget.saturating_sub(n.len()));
        c.truncate(c_max.min(c.len()));
        n.truncate(budget - c.len());
    }
    let parts: Vec<&str> = [n.trim_end_matches('-'), c.trim_end_matches('-')]
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect();
    if parts.is_empty() {
        format!("moor-{h}")
    } else {
        format!("moor-{}-{h}", parts.join("-"))
    }
}

/// The node's label value: the name itself when valid, else `h-<hash>`.
pub fn node_label(node: &str) -> String {
    if is_label_value(node) && !node.is_empty() {
        node.to_owned()
    } else {
        format!("h-{}", hex(&Sha256::digest(node.as_bytes()), 8))
    }
}

/// The label selector for this node's PVs.
pub fn node_selector(node: &str) -> String {
    format!(
        "{}={},{LABEL_NODE}={}",
        MANAGED_BY.0,
        MANAGED_BY.1,
        node_label(node)
    )
}

/// Bytes as a quantity: a binary suffix when exact, else plain bytes.
pub fn quantity(bytes: u64) -> Quantity {
    for (shift, suffix) in [(40, "Ti"), (30, "Gi"), (20, "Mi"), (10, "Ki")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return Quantity(format!("{}{suffix}", bytes >> shift));
        }
    }
    Quantity(bytes.to_string())
}

/// The PersistentVolume for an entry of `class` on `node`, whose `kubernetes.io/hostname`
/// label is the node name (true unless kubelet runs with `--hostname-override`).
pub fn build(node: &str, class: &ClassConfig, e: &Entry) -> PersistentVolume {
    build_for(node, node, class, e)
}

/// As [`build`], with the node's actual `kubernetes.io/hostname` label value.
pub fn build_for(node: &str, hostname: &str, class: &ClassConfig, e: &Entry) -> PersistentVolume {
    let name = pv_name(node, &class.name, &e.stable_id);
    let path = e.path.display().to_string();
    let mut labels = BTreeMap::new();
    labels.insert(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned());
    labels.insert(LABEL_NODE.to_owned(), node_label(node));
    if is_label_value(&class.name) {
        labels.insert(LABEL_CLASS.to_owned(), class.name.clone());
    }
    let mut ann = BTreeMap::new();
    ann.insert(ANN_STABLE_ID.to_owned(), e.stable_id.clone());
    ann.insert(ANN_ENTRY.to_owned(), path.clone());
    ann.insert(ANN_NODE.to_owned(), node.to_owned());
    ann.insert(
        ANN_PROVISIONED_BY.0.to_owned(),
        ANN_PROVISIONED_BY.1.to_owned(),
    );
    let mut exprs = vec![NodeSelectorRequirement {
        key: "kubernetes.io/hostname".into(),
        operator: "In".into(),
        values: Some(vec![hostname.to_owned()]),
    }];
    for (k, v) in &class.node_labels {
        exprs.push(NodeSelectorRequirement {
            key: k.clone(),
            operator: "In".into(),
            values: Some(vec![v.clone()]),
        });
    }
    let is_block_entry = matches!(e.kind, EntryKind::BlockDevice { .. });
    let mut spec = PersistentVolumeSpec {
        capacity: Some(BTreeMap::from([(
            "storage".to_owned(),
            quantity(e.capacity_bytes),
        )])),
        access_modes: Some(vec!["ReadWriteOnce".into()]),
        persistent_volume_reclaim_policy: Some(class.reclaim_policy.as_str().into()),
        storage_class_name: Some(class.name.clone()),
        volume_mode: Some(
            match class.volume_mode {
                VolumeMode::Filesystem => "Filesystem",
                VolumeMode::Block => "Block",
            }
            .into(),
        ),
        node_affinity: Some(VolumeNodeAffinity {
            required: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(exprs),
                    match_fields: None,
                }],
            }),
        }),
        ..Default::default()
    };
    let fs_type = (is_block_entry && class.volume_mode == VolumeMode::Filesystem)
        .then(|| class.fs_type.clone().unwrap_or_else(|| "ext4".into()));
    match class.source {
        SourceKind::Flex => {
            let mut options = BTreeMap::from([
                ("path".to_owned(), path),
                ("node".to_owned(), node.to_owned()),
            ]);
            if let Some(m) = &class.mount_options {
                options.insert("mountOptions".into(), m.clone());
            }
            spec.flex_volume = Some(FlexPersistentVolumeSource {
                driver: "moor/local".into(),
                fs_type,
                options: Some(options),
                ..Default::default()
            });
        }
        SourceKind::Local => {
            spec.local = Some(LocalVolumeSource { path, fs_type });
            spec.mount_options = class
                .mount_options
                .as_ref()
                .filter(|_| class.volume_mode == VolumeMode::Filesystem)
                .map(|m| m.split(',').map(|s| s.trim().to_owned()).collect());
        }
    }
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name),
            labels: Some(labels),
            annotations: Some(ann),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// PVs as a multi-document YAML stream (`kubectl apply -f -`).
pub fn to_yaml(pvs: &[PersistentVolume]) -> Result<String, String> {
    let mut out = String::new();
    for pv in pvs {
        // Through serde_json: k8s-openapi writes apiVersion/kind and omits unset fields.
        let v = serde_json::to_value(pv).map_err(|e| e.to_string())?;
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&v).map_err(|e| e.to_string())?);
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::DevNum;
    use crate::local::classes::{ReclaimPolicy, WipeMethod};
    use proptest::prelude::*;
    use std::time::Duration;

    fn class(source: SourceKind, mode: VolumeMode) -> ClassConfig {
        ClassConfig {
            name: "local-nvme".into(),
            discovery_dir: "/mnt/disks/nvme".into(),
            volume_mode: mode,
            fs_type: Some("xfs".into()),
            wipe: WipeMethod::ZeroEnds,
            source,
            reclaim_policy: ReclaimPolicy::Delete,
            node_labels: BTreeMap::from([("topology.kubernetes.io/zone".into(), "z1".into())]),
            mount_options: Some("noatime".into()),
            wipe_timeout: Duration::from_secs(1),
        }
    }

    fn disk() -> Entry {
        Entry {
            class: "local-nvme".into(),
            path: "/mnt/disks/nvme/disk0".into(),
            kind: EntryKind::BlockDevice {
                device: "/dev/nvme0n1".into(),
                dev: DevNum {
                    major: 259,
                    minor: 0,
                },
            },
            stable_id: "wwn-eui.0025".into(),
            capacity_bytes: 1 << 40,
        }
    }

    #[test]
    fn names_are_deterministic_and_distinct() {
        let a = pv_name("node-a", "local-nvme", "wwn-1");
        assert_eq!(a, pv_name("node-a", "local-nvme", "wwn-1"));
        assert!(a.starts_with("moor-node-a-local-nvme-"), "{a}");
        assert_ne!(a, pv_name("node-a", "local-nvme", "wwn-2"));
        assert_ne!(a, pv_name("node-b", "local-nvme", "wwn-1"));
        let long = pv_name(&"n".repeat(100), &"c".repeat(100), "x");
        assert!(long.len() <= 63, "{long}");
        assert!(long.contains("nnn") && long.contains("ccc"), "{long}");
    }

    proptest! {
        #[test]
        fn names_are_dns_labels(node in ".{0,80}", class in "[a-z0-9.-]{1,80}", id in ".{0,40}") {
            let n = pv_name(&node, &class, &id);
            prop_assert!(crate::local::classes::is_dns_label(&n, 63), "{}", n);
        }
    }

    #[test]
    fn a_flex_pv_for_a_disk() {
        let pv = build(
            "node-a",
            &class(SourceKind::Flex, VolumeMode::Filesystem),
            &disk(),
        );
        let v = serde_json::to_value(&pv).unwrap();
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["kind"], "PersistentVolume");
        let spec = &v["spec"];
        assert_eq!(spec["capacity"]["storage"], "1Ti");
        assert_eq!(spec["storageClassName"], "local-nvme");
        assert_eq!(spec["volumeMode"], "Filesystem");
        assert_eq!(spec["persistentVolumeReclaimPolicy"], "Delete");
        assert_eq!(spec["flexVolume"]["driver"], "moor/local");
        assert_eq!(spec["flexVolume"]["fsType"], "xfs");
        assert_eq!(
            spec["flexVolume"]["options"],
            serde_json::json!({"path": "/mnt/disks/nvme/disk0", "node": "node-a", "mountOptions": "noatime"})
        );
        let terms = &spec["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"];
        assert_eq!(
            terms[0],
            serde_json::json!({"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-a"]})
        );
        assert_eq!(terms[1]["key"], "topology.kubernetes.io/zone");
        let md = &v["metadata"];
        assert_eq!(md["labels"]["app.kubernetes.io/managed-by"], "moor");
        assert_eq!(md["labels"]["moor.io/node"], "node-a");
        assert_eq!(md["annotations"]["moor.io/stable-id"], "wwn-eui.0025");
        assert_eq!(md["annotations"]["pv.kubernetes.io/provisioned-by"], "moor");
        let yaml = to_yaml(&[pv.clone(), pv]).unwrap();
        assert_eq!(yaml.matches("---\n").count(), 2);
        assert!(yaml.contains("kind: PersistentVolume"), "{yaml}");
        assert!(yaml.contains("driver: moor/local"), "{yaml}");
    }

    #[test]
    fn a_raw_block_pv_uses_the_local_source() {
        let mut c = class(SourceKind::Local, VolumeMode::Block);
        c.fs_type = None;
        let v = serde_json::to_value(build("node-a", &c, &disk())).unwrap();
        assert_eq!(v["spec"]["volumeMode"], "Block");
        assert_eq!(
            v["spec"]["local"],
            serde_json::json!({"path": "/mnt/disks/nvme/disk0"})
        );
        assert!(v["spec"].get("flexVolume").is_none());
        assert!(v["spec"].get("mountOptions").is_none());
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity(100 << 30).0, "100Gi");
        assert_eq!(quantity((1 << 30) + 512).0, "1073742336");
        assert_eq!(quantity(0).0, "0");
        assert_eq!(node_label("node-a"), "node-a");
        assert!(node_label(&"x".repeat(100)).starts_with("h-"));
    }
}
