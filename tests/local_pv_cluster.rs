//! Local PVs against a REAL API server: `#[ignore]`d, so every summary shows it as not run;
//! run it with `MOOR_TEST_KUBECONFIG=/path/to/kubeconfig cargo nextest run --run-ignored all
//! --test local_pv_cluster` (a kind/k3s/minikube cluster you may create PVs in). Run without
//! that variable it fails, saying what it needs: it never passes without running.
//!
//! It creates this test's PVs through moor's reconcile (node `moor-it-<pid>`, so it never
//! touches another node's volumes), checks the server accepted moor's objects (names, labels,
//! affinity, flexVolume source), marks one missing, and deletes them all with the UID
//! precondition.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use moor::host::DevNum;
use moor::local::classes::{
    ClassConfig, LocalConfig, ReclaimPolicy, SourceKind, VolumeMode, WipeMethod,
};
use moor::local::discover::{Entry, EntryKind, Scan};
use moor::local::kube::{KubePvApi, PvApi, reconcile};
use moor::local::pv;

#[test]
#[ignore = "needs a real API server: set MOOR_TEST_KUBECONFIG and run with --run-ignored all"]
fn real_api_server_gated_on_moor_test_kubeconfig() {
    let path = std::env::var_os("MOOR_TEST_KUBECONFIG")
        .filter(|v| !v.is_empty())
        .expect("set MOOR_TEST_KUBECONFIG=/path/to/kubeconfig to test local PVs against a real API server");
    let node = format!("moor-it-{}", std::process::id());
    let class = ClassConfig {
        name: "moor-it".into(),
        discovery_dir: "/mnt/moor-it".into(),
        volume_mode: VolumeMode::Filesystem,
        fs_type: Some("ext4".into()),
        wipe: WipeMethod::ZeroEnds,
        source: SourceKind::Flex,
        reclaim_policy: ReclaimPolicy::Delete,
        node_labels: BTreeMap::new(),
        mount_options: None,
        wipe_timeout: Duration::from_secs(60),
    };
    let cfg = LocalConfig {
        classes: vec![class],
        ..LocalConfig::default()
    };
    let entry = |n: &str| Entry {
        class: "moor-it".into(),
        path: format!("/mnt/moor-it/{n}").into(),
        kind: EntryKind::BlockDevice {
            device: "/dev/null".into(),
            dev: DevNum { major: 1, minor: 3 },
        },
        stable_id: format!("by-id-moor-it-{n}"),
        capacity_bytes: 1 << 30,
    };
    let scan = |names: &[&str]| {
        vec![Scan {
            entries: names.iter().map(|n| entry(n)).collect(),
            skipped: vec![],
        }]
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let api = KubePvApi::from_kubeconfig(std::path::Path::new(&path))
            .await
            .unwrap();
        let r = reconcile(&api, &node, &cfg, &scan(&["a", "b"]), &[])
            .await
            .unwrap();
        assert_eq!(r.created.len(), 2, "{r}");
        let r = reconcile(&api, &node, &cfg, &scan(&["a", "b"]), &[])
            .await
            .unwrap();
        assert_eq!((r.created.len(), r.present), (0, 2), "{r}");
        let r = reconcile(&api, &node, &cfg, &scan(&["a"]), &[])
            .await
            .unwrap();
        assert_eq!(r.marked_missing.len(), 1, "{r}");
        let pvs = api.list(&pv::node_selector(&node)).await.unwrap();
        assert_eq!(pvs.len(), 2);
        for p in &pvs {
            let spec = p.spec.as_ref().unwrap();
            assert_eq!(spec.flex_volume.as_ref().unwrap().driver, "moor/local");
            assert_eq!(spec.storage_class_name.as_deref(), Some("moor-it"));
            api.delete(
                p.metadata.name.as_deref().unwrap(),
                p.metadata.uid.as_deref().unwrap(),
            )
            .await
            .unwrap();
        }
        // Deletion of a PV is asynchronous (finalizers); wait until the list is empty.
        for _ in 0..100 {
            if api
                .list(&pv::node_selector(&node))
                .await
                .unwrap()
                .is_empty()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("PVs of {node} not deleted");
    });
}
