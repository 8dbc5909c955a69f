//! The DaemonSet manifests as a cluster gets them (tier 1: no root; needs `kubectl` for its
//! built-in kustomize, and fails naming it when it is missing).
//!
//! What an operator checks before rolling moor out to every node: the base and every
//! overlay render; every object parses into the Kubernetes API types; the fields that keep
//! nodes safe are there in each rendering — privileged with the kubelet dir Bidirectional
//! and mounted at kubelet's own path, the host directories moor's state and tools live in,
//! probes that kubelet reaches and the world does not, a rolling update with a grace that
//! covers moor's drain, every taint tolerated, node-critical priority — the plugin dir each
//! overlay promises, the RBAC rules the local PV controller needs and nothing more, one image
//! reference, and a `config.yaml` the daemon accepts. For CSI: one `CSIDriver` per moor driver
//! with the settings moor decided (README, "CSI"), kubelet's `plugins/` and
//! `plugins_registry/` reachable at kubelet's own path in every overlay; and the CSI examples
//! (`packaging/examples/csi/`): every object parses, every PV's attributes and secrets are
//! accepted by the moor driver its `CSIDriver` names, the access modes and volume modes are
//! ones that driver serves, every claim binds and every pod uses its claim as its mode asks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service,
    ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::api::storage::v1::{CSIDriver, StorageClass};
use moor::api::{AccessMode, VolumeMode};
use serde_json::Value;

const DEFAULT_PLUGIN_DIR: &str = "/usr/libexec/kubernetes/kubelet-plugins/volume/exec";

/// What each overlay must set: (kubelet dir, FlexVolume plugin dir, has the ServiceMonitor).
/// A new overlay must be added here, or this test fails.
fn expected(overlay: &str) -> (&'static str, &'static str, bool) {
    match overlay {
        "base" | "default" => ("/var/lib/kubelet", DEFAULT_PLUGIN_DIR, false),
        "monitoring" => ("/var/lib/kubelet", DEFAULT_PLUGIN_DIR, true),
        "gke" => ("/var/lib/kubelet", "/home/kubernetes/flexvolume", false),
        "openshift" => (
            "/var/lib/kubelet",
            "/etc/kubernetes/kubelet-plugins/volume/exec",
            false,
        ),
        "rke" => ("/var/lib/kubelet", "/var/lib/kubelet/volumeplugins", false),
        "aks" => ("/var/lib/kubelet", "/etc/kubernetes/volumeplugins", false),
        "k0s" => ("/var/lib/k0s/kubelet", DEFAULT_PLUGIN_DIR, false),
        other => panic!("overlay {other} is not in this test's table: add what it must set"),
    }
}

fn kube_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/kubernetes")
}

fn render(dir: &Path) -> Vec<Value> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("this test needs kubectl (its built-in kustomize) on PATH: {e}")
        });
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{}: rendered YAML does not parse: {e}", dir.display()))
}

/// The renderings: the base and every overlay directory.
fn renderings() -> Vec<(String, Vec<Value>)> {
    let mut out = vec![("base".to_owned(), render(&kube_dir().join("base")))];
    let mut overlays: Vec<PathBuf> = std::fs::read_dir(kube_dir().join("overlays"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    overlays.sort();
    assert!(overlays.len() >= 5, "overlays: {overlays:?}");
    for o in overlays {
        let name = o.file_name().unwrap().to_string_lossy().into_owned();
        out.push((name, render(&o)));
    }
    out
}

/// Every object, parsed into its API type (a kind this test does not know fails it).
#[derive(Default)]
struct Objects {
    daemonsets: Vec<DaemonSet>,
    configmaps: Vec<ConfigMap>,
    roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    accounts: Vec<ServiceAccount>,
    namespaces: Vec<Namespace>,
    services: Vec<Service>,
    service_monitors: Vec<Value>,
    prometheus_rules: Vec<Value>,
    csi_drivers: Vec<CSIDriver>,
}

fn typed<T: serde::de::DeserializeOwned>(name: &str, v: &Value) -> T {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| {
        panic!(
            "{name}: {} {} does not parse into its API type: {e}",
            v["kind"], v["metadata"]["name"]
        )
    })
}

fn parse(name: &str, docs: &[Value]) -> Objects {
    let mut o = Objects::default();
    for v in docs {
        match (v["apiVersion"].as_str(), v["kind"].as_str()) {
            (Some("apps/v1"), Some("DaemonSet")) => o.daemonsets.push(typed(name, v)),
            (Some("v1"), Some("ConfigMap")) => o.configmaps.push(typed(name, v)),
            (Some("v1"), Some("ServiceAccount")) => o.accounts.push(typed(name, v)),
            (Some("v1"), Some("Namespace")) => o.namespaces.push(typed(name, v)),
            (Some("v1"), Some("Service")) => o.services.push(typed(name, v)),
            (Some("storage.k8s.io/v1"), Some("CSIDriver")) => o.csi_drivers.push(typed(name, v)),
            (Some("rbac.authorization.k8s.io/v1"), Some("ClusterRole")) => {
                o.roles.push(typed(name, v))
            }
            (Some("rbac.authorization.k8s.io/v1"), Some("ClusterRoleBinding")) => {
                o.bindings.push(typed(name, v))
            }
            (Some("monitoring.coreos.com/v1"), Some("ServiceMonitor")) => {
                assert!(
                    v["spec"]["endpoints"][0]["port"].is_string(),
                    "{name}: ServiceMonitor without an endpoint port: {v}"
                );
                o.service_monitors.push(v.clone())
            }
            // Its content is tests/monitoring.rs's to check.
            (Some("monitoring.coreos.com/v1"), Some("PrometheusRule")) => {
                o.prometheus_rules.push(v.clone())
            }
            other => panic!("{name}: unexpected object {other:?}: {v}"),
        }
    }
    o
}

fn container<'a>(cs: &'a [Container], name: &str) -> &'a Container {
    cs.iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn env_of(c: &Container, key: &str) -> Option<String> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == key)
        .and_then(|e| e.value.clone())
}

/// A volume mount of the moor container, by mount path: (volume, propagation, read-only).
type Mount = (String, Option<String>, bool);

/// What a path inside the moor container is on the host: the host path the deepest volume
/// mount above it puts there, with that mount (`None` when no hostPath covers it).
fn on_host<'a>(
    mounts: &'a BTreeMap<String, Mount>,
    volumes: &BTreeMap<String, String>,
    path: &str,
) -> Option<(String, &'a Mount)> {
    let (at, m) = mounts
        .iter()
        .filter(|(at, _)| {
            let at = at.trim_end_matches('/');
            path == at || path.starts_with(&format!("{at}/"))
        })
        .max_by_key(|(at, _)| at.len())?;
    let host = volumes.get(&m.0)?;
    let rest = &path[at.trim_end_matches('/').len()..];
    Some((format!("{}{rest}", host.trim_end_matches('/')), m))
}

/// moor's CSI driver names, one per moor driver.
fn csi_names() -> BTreeSet<String> {
    moor::csi::DRIVERS
        .iter()
        .map(|d| moor::api::csi_driver_name(d))
        .collect()
}

/// What each driver's `CSIDriver` must say beyond what all say: (fsGroupPolicy,
/// seLinuxMount). Block filesystems are the volume's own (`File`); shares belong to their
/// server (root_squash refuses kubelet's chown: `None`); `-o context=` only where the volume
/// is a superblock of its own (README, "CSI").
fn csi_expected(driver: &str) -> (&'static str, bool) {
    match driver {
        "iscsi" | "rbd" | "fc" => ("File", true),
        "local" => ("File", false),
        "nfs" | "glusterfs" | "cephfs" => ("None", false),
        other => panic!("driver {other} is not in this test's CSIDriver table"),
    }
}

fn check_csi_driver(rendering: &str, d: &CSIDriver) {
    let name = d.metadata.name.as_deref().unwrap();
    let driver = name.strip_suffix(".csi.moor.io").unwrap();
    let (fs_group, selinux) = csi_expected(driver);
    let s = &d.spec;
    let at = format!("{rendering}: CSIDriver {name}");
    assert_eq!(s.attach_required, Some(false), "{at}: no attacher runs");
    assert_eq!(s.pod_info_on_mount, Some(true), "{at}: podInfoOnMount");
    // Never Ephemeral: an inline volume's attributes are the pod author's.
    assert_eq!(
        s.volume_lifecycle_modes.as_deref(),
        Some(&["Persistent".to_owned()][..]),
        "{at}: lifecycle modes"
    );
    assert_eq!(s.requires_republish, Some(false), "{at}");
    assert_eq!(s.storage_capacity, Some(false), "{at}");
    assert_eq!(
        s.fs_group_policy.as_deref(),
        Some(fs_group),
        "{at}: fsGroupPolicy"
    );
    assert_eq!(s.se_linux_mount, Some(selinux), "{at}: seLinuxMount");
    assert!(
        s.token_requests.is_none(),
        "{at}: moor needs no service-account token"
    );
}

#[test]
fn every_rendering_parses_and_keeps_nodes_safe() {
    for (name, docs) in renderings() {
        let (kubelet_dir, plugin_dir, monitored) = expected(&name);
        let o = parse(&name, &docs);
        assert_eq!(o.daemonsets.len(), 1, "{name}: one DaemonSet");
        assert_eq!(o.namespaces.len(), 1, "{name}: one Namespace");
        let ns = o.namespaces[0].metadata.name.clone().unwrap();
        let ds = &o.daemonsets[0];
        assert_eq!(
            ds.metadata.namespace.as_deref(),
            Some(ns.as_str()),
            "{name}"
        );
        let spec = ds.spec.as_ref().unwrap();
        let strategy = spec.update_strategy.as_ref().unwrap();
        assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"), "{name}");
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(
            pod.priority_class_name.as_deref(),
            Some("system-node-critical"),
            "{name}"
        );
        assert_eq!(pod.host_network, Some(true), "{name}: hostNetwork");
        assert_eq!(pod.host_pid, Some(true), "{name}: hostPID");
        assert_eq!(
            pod.dns_policy.as_deref(),
            Some("ClusterFirstWithHostNet"),
            "{name}"
        );
        // moor drains in-flight operations for up to 25 s on SIGTERM.
        assert!(
            pod.termination_grace_period_seconds.unwrap_or(30) > 25,
            "{name}: grace"
        );
        let tolerations = pod.tolerations.as_ref().unwrap();
        assert!(
            tolerations
                .iter()
                .any(|t| t.operator.as_deref() == Some("Exists")
                    && t.key.is_none()
                    && t.effect.is_none()),
            "{name}: every taint tolerated: {tolerations:?}"
        );

        let volumes: BTreeMap<String, String> = pod
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| Some((v.name.clone(), v.host_path.as_ref()?.path.clone())))
            .collect();
        let moor = container(&pod.containers, "moor");
        let sc = moor.security_context.as_ref().unwrap();
        assert_eq!(sc.privileged, Some(true), "{name}: moor is privileged");
        let mounts: BTreeMap<String, Mount> = moor
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| {
                (
                    m.mount_path.clone(),
                    (
                        m.name.clone(),
                        m.mount_propagation.clone(),
                        m.read_only.unwrap_or(false),
                    ),
                )
            })
            .collect();
        // Host directories mounted at their own path (moor works with the host's paths).
        for (path, ro) in [
            (kubelet_dir, false),
            ("/dev", false),
            ("/sys", false),
            ("/run/moor", false),
            ("/var/lib/moor", false),
            ("/etc/iscsi", false),
            ("/lib/modules", true),
        ] {
            let (vol, _, read_only) = mounts
                .get(path)
                .unwrap_or_else(|| panic!("{name}: {path} is not mounted: {mounts:?}"));
            assert_eq!(
                volumes.get(vol).map(String::as_str),
                Some(path),
                "{name}: {path} comes from the host's {path}"
            );
            assert_eq!(*read_only, ro, "{name}: {path} read-only");
        }
        assert_eq!(
            mounts[kubelet_dir].1.as_deref(),
            Some("Bidirectional"),
            "{name}: moor's mounts must reach the host"
        );
        // CSI: kubelet watches plugins_registry/ and dials the sockets moor registers under
        // plugins/, by kubelet's own paths: the container must see the host's directories
        // there, writable, and moor's stages (plugins/moor/…) must reach the host.
        for (sub, stages) in [("plugins", true), ("plugins_registry", false)] {
            let path = format!("{kubelet_dir}/{sub}");
            let (host, (_, propagation, read_only)) = on_host(&mounts, &volumes, &path)
                .unwrap_or_else(|| panic!("{name}: no host directory is mounted at {path}"));
            assert_eq!(
                host, path,
                "{name}: {path} in the container is the host's {host}"
            );
            assert!(!read_only, "{name}: {path} is read-only");
            if stages {
                assert_eq!(
                    propagation.as_deref(),
                    Some("Bidirectional"),
                    "{name}: {path}: moor's stage mounts must reach the host"
                );
            }
        }
        let drivers: BTreeSet<String> = o
            .csi_drivers
            .iter()
            .map(|d| d.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            drivers,
            csi_names(),
            "{name}: one CSIDriver per moor driver"
        );
        assert_eq!(drivers.len(), o.csi_drivers.len(), "{name}: duplicates");
        for d in &o.csi_drivers {
            check_csi_driver(&name, d);
        }

        // The daemon is told the same kubelet dir it is given.
        let config_text = o.configmaps[0].data.as_ref().unwrap()["config.yaml"].clone();
        let config: moor::config::FileConfig = serde_saphyr::from_str(&config_text)
            .unwrap_or_else(|e| panic!("{name}: config.yaml is not moor's: {e}"));
        let told = env_of(moor, "MOOR_KUBELET_DIR")
            .or_else(|| config.kubelet_dir.map(|p| p.display().to_string()))
            .unwrap_or_else(|| "/var/lib/kubelet".into());
        assert_eq!(told, kubelet_dir, "{name}: kubelet dir given to moor");
        assert!(
            !config.local.unwrap().allowed_directories.is_empty(),
            "{name}: an allow-list"
        );
        // The CSI node plugin is on, for every driver the CSIDriver objects name.
        let csi = moor::config::CsiConfig::resolve(config.csi.as_ref().unwrap_or_else(|| {
            panic!("{name}: config.yaml has no csi section: CSI is off by default")
        }))
        .unwrap_or_else(|e| panic!("{name}: csi: {e}"));
        assert!(csi.enabled, "{name}: csi.enabled");
        assert!(
            csi.register,
            "{name}: moor registers with kubelet itself (no sidecar)"
        );
        let served: BTreeSet<String> = csi
            .drivers
            .iter()
            .map(|d| moor::api::csi_driver_name(d))
            .collect();
        assert_eq!(served, csi_names(), "{name}: csi.drivers");
        // With hostPID, the host-bound tools and FUSE clients are run on the host.
        assert_eq!(
            config.host_mount_namespace.as_deref(),
            Some(Path::new("/proc/1/ns/mnt")),
            "{name}"
        );

        // Probes: kubelet reaches the listener; only the monitoring component opens it.
        let metrics = env_of(moor, "MOOR_METRICS_ADDR")
            .or(config.metrics_addr)
            .unwrap();
        let port: i32 = metrics.rsplit(':').next().unwrap().parse().unwrap();
        for (probe, path) in [
            (moor.liveness_probe.as_ref(), "/healthz"),
            (moor.readiness_probe.as_ref(), "/readyz"),
        ] {
            let get = probe.unwrap().http_get.as_ref().unwrap();
            assert_eq!(get.path.as_deref(), Some(path), "{name}");
            assert_eq!(
                get.port,
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port),
                "{name}: {path} on moor's listener"
            );
            if monitored {
                assert!(get.host.is_none(), "{name}: the probe follows the listener");
                assert!(metrics.starts_with("$(POD_IP)"), "{name}: {metrics}");
            } else {
                assert_eq!(get.host.as_deref(), Some("127.0.0.1"), "{name}");
                assert!(metrics.starts_with("127.0.0.1:"), "{name}: loopback only");
            }
        }
        assert_eq!(o.service_monitors.len(), usize::from(monitored), "{name}");
        assert_eq!(o.services.len(), usize::from(monitored), "{name}");
        assert_eq!(o.prometheus_rules.len(), usize::from(monitored), "{name}");

        // The front end lands in the plugin dir this overlay promises.
        let init = container(pod.init_containers.as_ref().unwrap(), "install-flexvolume");
        let target = init
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == "/flexvolume")
            .unwrap_or_else(|| panic!("{name}: the installer mounts no /flexvolume"));
        assert_eq!(
            volumes.get(&target.name).map(String::as_str),
            Some(plugin_dir),
            "{name}: plugin dir"
        );
        let cmd = init.command.as_ref().unwrap();
        assert!(
            cmd.windows(2)
                .any(|w| w[0] == "--plugin-dir" && w[1] == "/flexvolume"),
            "{name}: {cmd:?}"
        );

        // One image reference, from the base's `images:`.
        let images: Vec<&str> = pod
            .containers
            .iter()
            .chain(pod.init_containers.iter().flatten())
            .map(|c| c.image.as_deref().unwrap())
            .collect();
        assert!(
            images.iter().all(|i| *i == images[0]) && images[0].contains(':'),
            "{name}: {images:?}"
        );

        // RBAC, for the account the pods run as: this node's PVs and pods (watched), its
        // Node, a pod's claim, Events, evictions.
        let mut rules: Vec<(String, Vec<String>)> = o
            .roles
            .iter()
            .flat_map(|r| r.rules.iter().flatten())
            .flat_map(|r| {
                assert!(
                    r.api_groups.iter().flatten().all(|g| g.is_empty()),
                    "{name}: core group only: {r:?}"
                );
                let mut verbs = r.verbs.clone();
                verbs.sort();
                r.resources
                    .iter()
                    .flatten()
                    .map(move |res| (res.clone(), verbs.clone()))
            })
            .collect();
        rules.sort();
        let want = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            rules,
            vec![
                ("events".to_owned(), want(&["create", "patch"])),
                ("nodes".to_owned(), want(&["get"])),
                ("persistentvolumeclaims".to_owned(), want(&["get"])),
                (
                    "persistentvolumes".to_owned(),
                    want(&["create", "delete", "get", "list", "patch", "watch"])
                ),
                ("pods".to_owned(), want(&["get", "list", "watch"])),
                ("pods/eviction".to_owned(), want(&["create"])),
            ],
            "{name}: RBAC"
        );
        let account = pod.service_account_name.as_deref().unwrap();
        assert_eq!(o.accounts[0].metadata.name.as_deref(), Some(account));
        assert!(
            o.bindings
                .iter()
                .any(|b| b.subjects.iter().flatten().any(|s| {
                    s.kind == "ServiceAccount"
                        && s.name == account
                        && s.namespace.as_deref() == Some(ns.as_str())
                }) && b.role_ref.name == o.roles[0].metadata.name.clone().unwrap()),
            "{name}: the role is bound to the pods' account"
        );
    }
}

/// kubelet's access mode of a PV → the CSI access mode it asks for (moor offers
/// SINGLE_NODE_MULTI_WRITER, so kubelet sends that for ReadWriteOnce).
fn csi_access_mode(mode: &str) -> AccessMode {
    match mode {
        "ReadWriteOnce" => AccessMode::SingleNodeMultiWriter,
        "ReadWriteOncePod" => AccessMode::SingleNodeSingleWriter,
        "ReadOnlyMany" => AccessMode::MultiNodeReaderOnly,
        "ReadWriteMany" => AccessMode::MultiNodeMultiWriter,
        other => panic!("{other} is no Kubernetes access mode"),
    }
}

/// A quantity as written in the examples (`50Gi`, `1Ti`), in bytes.
fn quantity(q: &str) -> u64 {
    let (n, unit) = q.split_at(q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len()));
    let scale: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        other => panic!("quantity {q}: unit {other} is not one this test reads"),
    };
    n.parse::<u64>().unwrap() * scale
}

/// The objects of one example file, typed.
#[derive(Default)]
struct Example {
    pvs: Vec<PersistentVolume>,
    claims: Vec<PersistentVolumeClaim>,
    pods: Vec<Pod>,
    secrets: Vec<Secret>,
    classes: Vec<StorageClass>,
}

fn example(path: &Path) -> Example {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).unwrap();
    let docs = serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{name}: YAML does not parse: {e}"));
    let mut x = Example::default();
    for v in &docs {
        match (v["apiVersion"].as_str(), v["kind"].as_str()) {
            (Some("v1"), Some("PersistentVolume")) => x.pvs.push(typed(&name, v)),
            (Some("v1"), Some("PersistentVolumeClaim")) => x.claims.push(typed(&name, v)),
            (Some("v1"), Some("Pod")) => x.pods.push(typed(&name, v)),
            (Some("v1"), Some("Secret")) => x.secrets.push(typed(&name, v)),
            (Some("storage.k8s.io/v1"), Some("StorageClass")) => x.classes.push(typed(&name, v)),
            other => panic!("{name}: unexpected object {other:?}: {v}"),
        }
    }
    x
}

/// The secrets a PV's `nodeStageSecretRef` names, from the Secret in the same file, as the
/// CSI front end hands them to the driver (the Secret's keys, the values' bytes).
fn stage_secrets(
    at: &str,
    pv: &PersistentVolume,
    x: &Example,
) -> BTreeMap<String, moor::volume::Secret> {
    let csi = pv.spec.as_ref().unwrap().csi.as_ref().unwrap();
    assert!(
        csi.node_publish_secret_ref.is_none() && csi.controller_publish_secret_ref.is_none(),
        "{at}: moor reads secrets at stage only (nodeStageSecretRef)"
    );
    let Some(r) = &csi.node_stage_secret_ref else {
        return BTreeMap::new();
    };
    let s = x
        .secrets
        .iter()
        .find(|s| s.metadata.name == r.name && s.metadata.namespace == r.namespace)
        .unwrap_or_else(|| panic!("{at}: nodeStageSecretRef {r:?}: no such Secret in the file"));
    let mut out: BTreeMap<String, moor::volume::Secret> = BTreeMap::new();
    for (k, v) in s.data.iter().flatten() {
        out.insert(k.clone(), moor::volume::Secret(v.0.clone()));
    }
    for (k, v) in s.string_data.iter().flatten() {
        out.insert(k.clone(), moor::volume::Secret(v.as_bytes().to_vec()));
    }
    out
}

/// The node a PV's affinity pins it to (`kubernetes.io/hostname In [node]`).
fn affinity_node(pv: &PersistentVolume) -> Option<String> {
    let terms = &pv
        .spec
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required
        .as_ref()?;
    let e = terms
        .node_selector_terms
        .first()?
        .match_expressions
        .as_ref()?;
    e.iter()
        .find(|e| e.key == "kubernetes.io/hostname" && e.operator == "In")
        .and_then(|e| e.values.as_ref()?.first().cloned())
}

#[test]
fn csi_examples_are_what_moor_serves() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/examples/csi");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();

    // The driver names the cluster gets (the base's CSIDriver objects).
    let base = parse("base", &render(&kube_dir().join("base")));
    let registered: BTreeSet<String> = base
        .csi_drivers
        .iter()
        .map(|d| d.metadata.name.clone().unwrap())
        .collect();
    let config_text = base.configmaps[0].data.as_ref().unwrap()["config.yaml"].clone();
    let config: moor::config::FileConfig = serde_saphyr::from_str(&config_text).unwrap();
    let allow = config.local.unwrap();

    let drivers = moor::daemon::drivers::builtin();
    let node = moor::volume::NodeContext {
        node_name: "node-a".into(),
        kubelet_dir: "/var/lib/kubelet".into(),
        run_dir: "/run/moor".into(),
    };
    let mut examples: BTreeSet<(String, bool)> = BTreeSet::new();
    let mut keys: BTreeMap<String, String> = BTreeMap::new();
    let mut handles = BTreeSet::new();
    for file in &files {
        let fname = file.file_name().unwrap().to_string_lossy().into_owned();
        let x = example(file);
        assert!(!x.pvs.is_empty(), "{fname}: no PersistentVolume");
        for pv in &x.pvs {
            let pv_name = pv.metadata.name.clone().unwrap();
            let at = format!("{fname}: PV {pv_name}");
            let spec = pv.spec.as_ref().unwrap();
            let csi = spec
                .csi
                .as_ref()
                .unwrap_or_else(|| panic!("{at}: not a CSI volume"));
            assert!(
                registered.contains(&csi.driver),
                "{at}: driver {} is none of moor's CSIDrivers {registered:?}",
                csi.driver
            );
            let driver = csi.driver.strip_suffix(".csi.moor.io").unwrap();
            assert!(
                handles.insert(csi.volume_handle.clone()),
                "{at}: volumeHandle {} used twice",
                csi.volume_handle
            );
            let block = spec.volume_mode.as_deref() == Some("Block");
            examples.insert((driver.to_owned(), block));
            assert_ne!(
                spec.persistent_volume_reclaim_policy.as_deref(),
                Some("Delete"),
                "{at}: a static PV of someone's data is never deleted by its claim"
            );
            // The front end's own table of what each driver honours.
            let volume_mode = if block {
                VolumeMode::Block
            } else {
                VolumeMode::Filesystem
            };
            for mode in spec.access_modes.iter().flatten() {
                moor::csi::translate::check_access(driver, volume_mode, csi_access_mode(mode))
                    .unwrap_or_else(|f| panic!("{at}: {mode}: {f}"));
            }
            if block {
                assert!(
                    csi.fs_type.is_none(),
                    "{at}: a raw block volume has no fsType"
                );
            }

            // The kubelet-style map the front end builds from the call, then the one parser.
            let attrs = csi.volume_attributes.clone().unwrap_or_default();
            for k in attrs.keys() {
                assert!(
                    !k.starts_with("kubernetes.io/") && !k.starts_with("csi.storage.k8s.io/"),
                    "{at}: attribute {k}: reserved prefix"
                );
            }
            let mut map = attrs.clone();
            if let Some(fs) = &csi.fs_type {
                map.insert("kubernetes.io/fsType".into(), fs.clone());
            }
            if let Some(flags) = spec.mount_options.as_ref().filter(|f| !f.is_empty()) {
                let mut all: Vec<String> = map.remove("mountOptions").into_iter().collect();
                all.extend(flags.iter().cloned());
                map.insert("mountOptions".into(), all.join(","));
            }
            if csi.read_only == Some(true) {
                map.insert("kubernetes.io/readwrite".into(), "ro".into());
            }
            map.insert("kubernetes.io/pvOrVolumeName".into(), pv_name.clone());
            let mut opts = moor::volume::options::parse(&map)
                .unwrap_or_else(|e| panic!("{at}: attributes refused: {e}"));
            opts.secrets = stage_secrets(&at, pv, &x);

            if driver == "local" {
                // The path is resolved on the node, against its allow-list: check the names,
                // the node, and that the shipped allow-list covers the path.
                let pinned = affinity_node(pv)
                    .unwrap_or_else(|| panic!("{at}: a local PV needs a node affinity"));
                assert_eq!(
                    attrs.get("node"),
                    Some(&pinned),
                    "{at}: `node` is the affinity's node"
                );
                moor::flexvolume::precheck::check(driver, &opts, &pinned)
                    .unwrap_or_else(|e| panic!("{at}: refused by {driver}: {e}"));
                let path = Path::new(&attrs["path"]);
                let device = block || csi.fs_type.is_some();
                let roots = if device {
                    &allow.allowed_devices
                } else {
                    &allow.allowed_directories
                };
                assert!(
                    roots.iter().any(|r| path.starts_with(r)),
                    "{at}: {} is outside the DaemonSet's allow-list {roots:?}",
                    path.display()
                );
                keys.insert(format!("local:{}", path.display()), at.clone());
            } else {
                let d = drivers.get(driver).unwrap();
                let v = d
                    .volume(&node, &opts)
                    .unwrap_or_else(|e| panic!("{at}: refused by moor's {driver} driver: {e}"));
                if let Some(other) = keys.insert(v.key.clone(), at.clone()) {
                    panic!("{at}: the same volume as {other} ({})", v.key);
                }
            }
        }

        for c in &x.claims {
            let at = format!("{fname}: PVC {}", c.metadata.name.as_deref().unwrap());
            let cs = c.spec.as_ref().unwrap();
            let mode = cs.volume_mode.as_deref().unwrap_or("Filesystem");
            let wants =
                quantity(&cs.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0);
            let fits = |pv: &PersistentVolume| {
                let s = pv.spec.as_ref().unwrap();
                s.volume_mode.as_deref().unwrap_or("Filesystem") == mode
                    && s.storage_class_name == cs.storage_class_name
                    && cs
                        .access_modes
                        .iter()
                        .flatten()
                        .all(|m| s.access_modes.iter().flatten().any(|p| p == m))
                    && quantity(&s.capacity.as_ref().unwrap()["storage"].0) >= wants
            };
            match &cs.volume_name {
                Some(v) => {
                    let pv = x
                        .pvs
                        .iter()
                        .find(|p| p.metadata.name.as_ref() == Some(v))
                        .unwrap_or_else(|| panic!("{at}: volumeName {v}: no such PV in the file"));
                    assert!(
                        fits(pv),
                        "{at}: does not fit PV {v} (mode, class, access, size)"
                    );
                }
                None => {
                    let class = cs.storage_class_name.as_deref().unwrap_or_default();
                    let sc = x
                        .classes
                        .iter()
                        .find(|s| s.metadata.name.as_deref() == Some(class))
                        .unwrap_or_else(|| {
                            panic!("{at}: no volumeName and no StorageClass {class}")
                        });
                    assert_eq!(sc.provisioner, "kubernetes.io/no-provisioner", "{at}");
                    assert_eq!(
                        sc.volume_binding_mode.as_deref(),
                        Some("WaitForFirstConsumer"),
                        "{at}: a node-bound PV binds where its pod goes"
                    );
                    assert!(x.pvs.iter().any(fits), "{at}: no PV in the file fits it");
                }
            }
        }

        for p in &x.pods {
            let at = format!("{fname}: Pod {}", p.metadata.name.as_deref().unwrap());
            let ps = p.spec.as_ref().unwrap();
            for v in ps.volumes.iter().flatten() {
                let Some(claim) = &v.persistent_volume_claim else {
                    continue;
                };
                let c = x
                    .claims
                    .iter()
                    .find(|c| c.metadata.name.as_ref() == Some(&claim.claim_name))
                    .unwrap_or_else(|| panic!("{at}: claim {}: not in the file", claim.claim_name));
                let block = c.spec.as_ref().unwrap().volume_mode.as_deref() == Some("Block");
                let mounted = ps
                    .containers
                    .iter()
                    .any(|ct| ct.volume_mounts.iter().flatten().any(|m| m.name == v.name));
                let device = ps
                    .containers
                    .iter()
                    .any(|ct| ct.volume_devices.iter().flatten().any(|d| d.name == v.name));
                assert_eq!(
                    (mounted, device),
                    (!block, block),
                    "{at}: volume {} of a {} claim: {}",
                    v.name,
                    if block { "Block" } else { "Filesystem" },
                    if block {
                        "volumeDevices only"
                    } else {
                        "volumeMounts only"
                    }
                );
            }
        }
    }

    // An example per driver, and a raw block one for each driver that serves block volumes.
    for d in moor::flexvolume::DRIVERS {
        assert!(
            examples.contains(&(d.to_string(), false)),
            "no filesystem example for {d}"
        );
        let block_capable = ["iscsi", "rbd", "fc", "local"].contains(d);
        assert_eq!(
            examples.contains(&(d.to_string(), true)),
            block_capable,
            "a raw block example for {d}: {block_capable}"
        );
    }
}
