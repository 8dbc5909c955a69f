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
//! `plugins_registry/` reachable at kubelet's own path in every overlay.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::api::storage::v1::CSIDriver;
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
    moor::flexvolume::DRIVERS
        .iter()
        .map(|d| format!("{d}.csi.moor.io"))
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

        // RBAC: PersistentVolumes and reading Nodes, for the account the pods run as.
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
                ("nodes".to_owned(), want(&["get"])),
                (
                    "persistentvolumes".to_owned(),
                    want(&["create", "delete", "get", "list", "patch"])
                ),
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
