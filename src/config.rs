//! The daemon's typed configuration: the YAML file (`/etc/moor/config.yaml`), then the
//! environment, then flags — a later source wins, key by key. Errors name the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The default config file.
pub const DEFAULT_CONFIG: &str = "/etc/moor/config.yaml";

/// Keys of the YAML file (kebab-case, the same names as the flags).
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    /// kubelet's root directory.
    pub kubelet_dir: Option<PathBuf>,
    /// Durable state.
    pub state_dir: Option<PathBuf>,
    /// Runtime state (tmpfs).
    pub run_dir: Option<PathBuf>,
    /// The Unix socket.
    pub socket: Option<PathBuf>,
    /// `/metrics` listen address, or `off`.
    pub metrics_addr: Option<String>,
    /// This node's name.
    pub node_name: Option<String>,
    /// Deadline of one volume operation, seconds.
    pub operation_timeout_seconds: Option<u64>,
    /// Deadline of one filesystem mount, seconds.
    pub mount_timeout_seconds: Option<u64>,
    /// Reconciler period, seconds.
    pub reconcile_interval_seconds: Option<u64>,
    /// `text` or `json` (default: text on a TTY, JSON otherwise).
    pub log_format: Option<String>,
    /// Local PV discovery: classes and their discovery directories (file only).
    pub local: Option<crate::local::classes::LocalFileConfig>,
    /// kubelet's pod log directory (`<namespace>_<pod>_<uid>` entries), where the volume
    /// statistics take each pod's namespace from.
    pub pod_log_dir: Option<PathBuf>,
    /// The host's mount namespace when moor runs in a container (`/proc/1/ns/mnt`, with
    /// `hostPID`): the host-bound tools run there (`host::onhost`). File only.
    pub host_mount_namespace: Option<PathBuf>,
    /// The CSI front end (file only).
    pub csi: Option<CsiFileConfig>,
    /// The API server: Events, the node's pods, watches (file only).
    pub kubernetes: Option<KubernetesFileConfig>,
    /// Healing into running pods (file only).
    pub heal: Option<HealFileConfig>,
    /// Orphaned pod volumes (file only).
    pub gc: Option<GcFileConfig>,
}

/// The `kubernetes:` section as written.
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KubernetesFileConfig {
    /// `auto` (use in-cluster credentials or `KUBECONFIG` when found) or `off`.
    pub mode: Option<String>,
    /// A kubeconfig file to use instead of the inferred credentials.
    pub kubeconfig: Option<PathBuf>,
    /// Record Kubernetes Events (default true).
    pub events: Option<bool>,
}

/// The `heal:` section as written.
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HealFileConfig {
    /// Drivers whose pods still holding a dead mount after a heal are evicted (default
    /// none). A PV opts in or out on its own with the annotation `moor.io/evict-pods`.
    pub evict_pods: Option<Vec<String>>,
    /// How long after a heal a pod may keep the dead mount before it is evicted, seconds.
    pub evict_after_seconds: Option<u64>,
}

/// The `gc:` section as written.
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GcFileConfig {
    /// Clean the volumes of pods the API server confirms gone (default true).
    pub orphans: Option<bool>,
    /// How long kubelet gets to unmount a gone pod's volumes itself, seconds.
    pub grace_seconds: Option<u64>,
}

/// The resolved `kubernetes:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesConfig {
    /// Look for credentials at all.
    pub enabled: bool,
    /// An explicit kubeconfig.
    pub kubeconfig: Option<PathBuf>,
    /// Record Events.
    pub events: bool,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            enabled: true,
            kubeconfig: None,
            events: true,
        }
    }
}

/// The resolved `heal:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealConfig {
    /// Drivers whose pods are evicted when they keep a dead mount after a heal.
    pub evict_pods: Vec<String>,
    /// Grace after the heal before an eviction.
    pub evict_after: Duration,
}

impl Default for HealConfig {
    fn default() -> Self {
        HealConfig {
            evict_pods: Vec::new(),
            evict_after: Duration::from_secs(60),
        }
    }
}

/// The resolved `gc:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcConfig {
    /// Clean confirmed orphans on the daemon's own.
    pub orphans: bool,
    /// kubelet's grace before moor cleans.
    pub grace: Duration,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            orphans: true,
            grace: Duration::from_secs(120),
        }
    }
}

impl KubernetesConfig {
    fn resolve(raw: &KubernetesFileConfig) -> Result<Self, ConfigError> {
        let enabled = match raw.mode.as_deref() {
            None | Some("auto") => true,
            Some("off") => false,
            Some(m) => {
                return Err(ConfigError::Invalid {
                    key: "kubernetes.mode",
                    message: format!("{m}: expected auto or off"),
                });
            }
        };
        if let Some(p) = &raw.kubeconfig
            && !(p.is_absolute() && crate::host::paths::is_clean_absolute(p))
        {
            return Err(ConfigError::Invalid {
                key: "kubernetes.kubeconfig",
                message: format!("{} must be a clean absolute path", p.display()),
            });
        }
        Ok(KubernetesConfig {
            enabled,
            kubeconfig: raw.kubeconfig.clone(),
            events: raw.events.unwrap_or(true),
        })
    }
}

impl HealConfig {
    fn resolve(raw: &HealFileConfig) -> Result<Self, ConfigError> {
        let mut c = HealConfig::default();
        for d in raw.evict_pods.iter().flatten() {
            if !crate::csi::DRIVERS.contains(&d.as_str()) {
                return Err(ConfigError::Invalid {
                    key: "heal.evict-pods",
                    message: format!(
                        "{d}: not a moor driver (known: {})",
                        crate::csi::DRIVERS.join(", ")
                    ),
                });
            }
            if !c.evict_pods.contains(d) {
                c.evict_pods.push(d.clone());
            }
        }
        if let Some(s) = raw.evict_after_seconds {
            c.evict_after = Duration::from_secs(s);
        }
        Ok(c)
    }
}

impl GcConfig {
    fn resolve(raw: &GcFileConfig) -> Result<Self, ConfigError> {
        let mut c = GcConfig {
            orphans: raw.orphans.unwrap_or(true),
            ..GcConfig::default()
        };
        if let Some(s) = raw.grace_seconds {
            if s < 10 {
                return Err(ConfigError::Invalid {
                    key: "gc.grace-seconds",
                    message: format!("{s}: at least 10 (kubelet's own cleanup needs the time)"),
                });
            }
            c.grace = Duration::from_secs(s);
        }
        Ok(c)
    }
}

/// The `csi:` section as written.
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CsiFileConfig {
    /// Serve the CSI sockets (default false).
    pub enabled: Option<bool>,
    /// moor driver names to serve as CSI drivers (default: all).
    pub drivers: Option<Vec<String>>,
    /// Per moor driver, the most volumes kubelet may publish on this node (absent: no limit).
    pub max_volumes_per_node: Option<BTreeMap<String, u64>>,
    /// Extra topology labels (label → value) beside `kubernetes.io/hostname`.
    pub topology: Option<BTreeMap<String, String>>,
    /// Serve kubelet's plugin registration (default true).
    pub register: Option<bool>,
}

/// The CSI front end's resolved settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsiConfig {
    /// Serve the CSI sockets.
    pub enabled: bool,
    /// moor driver names served, in config order, each once.
    pub drivers: Vec<String>,
    /// Per moor driver, NodeGetInfo's `max_volumes_per_node` (absent: 0, no limit).
    pub max_volumes_per_node: BTreeMap<String, u64>,
    /// Extra topology segments.
    pub topology: BTreeMap<String, String>,
    /// Serve kubelet's plugin registration sockets.
    pub register: bool,
}

impl Default for CsiConfig {
    fn default() -> Self {
        CsiConfig {
            enabled: false,
            drivers: crate::csi::DRIVERS
                .iter()
                .map(|d| (*d).to_owned())
                .collect(),
            max_volumes_per_node: BTreeMap::new(),
            topology: BTreeMap::new(),
            register: true,
        }
    }
}

impl CsiConfig {
    /// Checks the section: known drivers, each once; limits for served drivers, at least 1;
    /// label-shaped topology keys and values, `kubernetes.io/hostname` left to moor.
    pub fn resolve(raw: &CsiFileConfig) -> Result<Self, ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid { key, message };
        let mut c = CsiConfig {
            enabled: raw.enabled.unwrap_or(false),
            register: raw.register.unwrap_or(true),
            ..CsiConfig::default()
        };
        if let Some(d) = &raw.drivers {
            c.drivers.clear();
            for name in d {
                if !crate::csi::DRIVERS.contains(&name.as_str()) {
                    return Err(invalid(
                        "csi.drivers",
                        format!(
                            "{name}: not a moor driver (known: {})",
                            crate::csi::DRIVERS.join(", ")
                        ),
                    ));
                }
                if c.drivers.contains(name) {
                    return Err(invalid("csi.drivers", format!("{name}: listed twice")));
                }
                c.drivers.push(name.clone());
            }
            if c.drivers.is_empty() && c.enabled {
                return Err(invalid(
                    "csi.drivers",
                    "empty while csi.enabled is true".into(),
                ));
            }
        }
        for (driver, n) in raw.max_volumes_per_node.iter().flatten() {
            if !c.drivers.contains(driver) {
                return Err(invalid(
                    "csi.max-volumes-per-node",
                    format!("{driver}: not a served CSI driver"),
                ));
            }
            if *n == 0 || i64::try_from(*n).is_err() {
                return Err(invalid(
                    "csi.max-volumes-per-node",
                    format!(
                        "{driver}: {n}: expected 1 or more (leave the driver out for no limit)"
                    ),
                ));
            }
            c.max_volumes_per_node.insert(driver.clone(), *n);
        }
        for (k, v) in raw.topology.iter().flatten() {
            if k == crate::csi::HOSTNAME_LABEL {
                return Err(invalid(
                    "csi.topology",
                    format!("{k}: moor sets it to the node name itself"),
                ));
            }
            if !label_shaped(k, 316) || !(v.is_empty() || label_shaped(v, 63)) || v.contains('/') {
                return Err(invalid(
                    "csi.topology",
                    format!(
                        "{k}={v}: expected a label key and value (letters, digits, '-', '_', '.', one '/' in the key)"
                    ),
                ));
            }
            c.topology.insert(k.clone(), v.clone());
        }
        Ok(c)
    }
}

/// A Kubernetes label key or value, roughly: ASCII letters, digits, `-_./`, within `max`.
fn label_shaped(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.matches('/').count() <= 1
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Flag/env overrides (clap fills these).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// Config file path (flag `--config`, env `MOOR_CONFIG`).
    pub config: Option<PathBuf>,
    /// As in [`FileConfig`].
    pub file: FileConfig,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// kubelet's root directory.
    pub kubelet_dir: PathBuf,
    /// Durable state.
    pub state_dir: PathBuf,
    /// Runtime state.
    pub run_dir: PathBuf,
    /// The Unix socket.
    pub socket: PathBuf,
    /// `/metrics` address; None disables it.
    pub metrics_addr: Option<SocketAddr>,
    /// This node's name.
    pub node_name: String,
    /// Deadline of one volume operation.
    pub operation_timeout: Duration,
    /// Deadline of one filesystem mount.
    pub mount_timeout: Duration,
    /// Reconciler period.
    pub reconcile_interval: Duration,
    /// Log format override.
    pub log_format: Option<String>,
    /// Local PV discovery (no classes: off).
    pub local: crate::local::classes::LocalConfig,
    /// kubelet's pod log directory.
    pub pod_log_dir: PathBuf,
    /// The host's mount namespace, when moor runs in a container that can reach it.
    pub host_mount_namespace: Option<PathBuf>,
    /// The CSI front end.
    pub csi: CsiConfig,
    /// The API server.
    pub kubernetes: KubernetesConfig,
    /// Healing into running pods.
    pub heal: HealConfig,
    /// Orphaned pod volumes.
    pub gc: GcConfig,
}

impl Config {
    /// The machine as this configuration sees it: the system host with the configured
    /// kubelet, state and run dirs, and the local PV config's `/dev`.
    pub fn host(&self) -> crate::host::Host {
        let mut paths = crate::host::HostPaths::system(
            self.kubelet_dir.clone(),
            self.state_dir.clone(),
            self.run_dir.clone(),
        );
        paths.dev = self.local.dev_dir.clone();
        crate::host::Host::system(paths)
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config file {path}")]
    Read {
        /// Path.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML for moor.
    #[error("config file {path}: {message}")]
    Parse {
        /// Path.
        path: PathBuf,
        /// Parser message (names the key).
        message: String,
    },
    /// A value is out of range.
    #[error("config key {key}: {message}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// Why.
        message: String,
    },
}

/// The default `/metrics` address: loopback only.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9477";

impl Config {
    /// Resolves file → env/flags (already merged by clap) → defaults.
    pub fn load(o: &Overrides) -> Result<Self, ConfigError> {
        let (path, must_exist) = match &o.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        let file = read_file(&path, must_exist)?;
        Self::resolve(&file, &o.file)
    }

    /// Merges two layers, `top` winning.
    pub fn resolve(file: &FileConfig, top: &FileConfig) -> Result<Self, ConfigError> {
        fn pick<T: Clone>(a: &Option<T>, b: &Option<T>) -> Option<T> {
            a.clone().or_else(|| b.clone())
        }
        let path_key = |key: &'static str, p: PathBuf| -> Result<PathBuf, ConfigError> {
            if p.is_absolute() && crate::host::paths::is_clean_absolute(&p) {
                Ok(p)
            } else {
                Err(ConfigError::Invalid {
                    key,
                    message: format!("{} must be a clean absolute path", p.display()),
                })
            }
        };
        let metrics = pick(&top.metrics_addr, &file.metrics_addr)
            .unwrap_or_else(|| DEFAULT_METRICS_ADDR.into());
        let metrics_addr = match metrics.as_str() {
            "" | "off" | "none" => None,
            a => Some(a.parse().map_err(|e| ConfigError::Invalid {
                key: "metrics-addr",
                message: format!("{a}: {e} (expected host:port, or off)"),
            })?),
        };
        let secs =
            |key: &'static str, v: Option<u64>, default: u64| -> Result<Duration, ConfigError> {
                match v.unwrap_or(default) {
                    0 => Err(ConfigError::Invalid {
                        key,
                        message: "must be at least 1".into(),
                    }),
                    n => Ok(Duration::from_secs(n)),
                }
            };
        let log_format = pick(&top.log_format, &file.log_format);
        if let Some(f) = &log_format
            && f != "text"
            && f != "json"
        {
            return Err(ConfigError::Invalid {
                key: "log-format",
                message: format!("{f}: expected text or json"),
            });
        }
        let node_name = match pick(&top.node_name, &file.node_name).filter(|n| !n.is_empty()) {
            Some(n) => n,
            None => crate::host::process::hostname().map_err(|e| ConfigError::Invalid {
                key: "node-name",
                message: format!("not set and the hostname cannot be read: {e}"),
            })?,
        };
        let kubelet_dir = path_key(
            "kubelet-dir",
            pick(&top.kubelet_dir, &file.kubelet_dir).unwrap_or_else(|| "/var/lib/kubelet".into()),
        )?;
        let local = match pick(&top.local, &file.local) {
            Some(raw) => crate::local::classes::validate(&raw, &kubelet_dir).map_err(|e| {
                ConfigError::Invalid {
                    key: "local",
                    message: e.to_string(),
                }
            })?,
            None => crate::local::classes::LocalConfig::default(),
        };
        let cfg = Config {
            kubelet_dir,
            state_dir: path_key(
                "state-dir",
                pick(&top.state_dir, &file.state_dir).unwrap_or_else(|| "/var/lib/moor".into()),
            )?,
            run_dir: path_key(
                "run-dir",
                pick(&top.run_dir, &file.run_dir).unwrap_or_else(|| "/run/moor".into()),
            )?,
            socket: path_key(
                "socket",
                pick(&top.socket, &file.socket)
                    .unwrap_or_else(|| crate::api::client::DEFAULT_SOCKET.into()),
            )?,
            metrics_addr,
            node_name,
            operation_timeout: secs(
                "operation-timeout-seconds",
                pick(
                    &top.operation_timeout_seconds,
                    &file.operation_timeout_seconds,
                ),
                300,
            )?,
            mount_timeout: secs(
                "mount-timeout-seconds",
                pick(&top.mount_timeout_seconds, &file.mount_timeout_seconds),
                120,
            )?,
            reconcile_interval: secs(
                "reconcile-interval-seconds",
                pick(
                    &top.reconcile_interval_seconds,
                    &file.reconcile_interval_seconds,
                ),
                30,
            )?,
            log_format,
            local,
            pod_log_dir: path_key(
                "pod-log-dir",
                pick(&top.pod_log_dir, &file.pod_log_dir)
                    .unwrap_or_else(|| crate::host::podlogs::DEFAULT_POD_LOG_DIR.into()),
            )?,
            host_mount_namespace: match pick(&top.host_mount_namespace, &file.host_mount_namespace)
            {
                Some(p) => Some(path_key("host-mount-namespace", p)?),
                None => None,
            },
            csi: match pick(&top.csi, &file.csi) {
                Some(raw) => CsiConfig::resolve(&raw)?,
                None => CsiConfig::default(),
            },
            kubernetes: match pick(&top.kubernetes, &file.kubernetes) {
                Some(raw) => KubernetesConfig::resolve(&raw)?,
                None => KubernetesConfig::default(),
            },
            heal: match pick(&top.heal, &file.heal) {
                Some(raw) => HealConfig::resolve(&raw)?,
                None => HealConfig::default(),
            },
            gc: match pick(&top.gc, &file.gc) {
                Some(raw) => GcConfig::resolve(&raw)?,
                None => GcConfig::default(),
            },
        };
        let socket_dir = cfg.socket.parent().unwrap_or(&cfg.socket);
        cfg.local
            .refuse_roots_around(&[&cfg.state_dir, &cfg.run_dir, socket_dir])
            .map_err(|e| ConfigError::Invalid {
                key: "local",
                message: e.to_string(),
            })?;
        Ok(cfg)
    }
}

fn read_file(path: &Path, must_exist: bool) -> Result<FileConfig, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
            return Ok(FileConfig::default());
        }
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.into(),
                source,
            });
        }
    };
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    serde_saphyr::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.into(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_the_rest() {
        let file: FileConfig =
            serde_saphyr::from_str("kubelet-dir: /k\nnode-name: file-node\nmetrics-addr: off\n")
                .unwrap();
        let top = FileConfig {
            node_name: Some("flag-node".into()),
            ..FileConfig::default()
        };
        let c = Config::resolve(&file, &top).unwrap();
        assert_eq!(c.kubelet_dir, PathBuf::from("/k"));
        assert_eq!(c.node_name, "flag-node");
        assert_eq!(c.metrics_addr, None);
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/moor"));
        assert_eq!(c.socket, PathBuf::from("/run/moor/moor.sock"));
    }

    #[test]
    fn errors_name_the_key() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("c.yaml");
        std::fs::write(&p, "kubelet-dirr: /k\n").unwrap();
        let e = Config::load(&Overrides {
            config: Some(p),
            file: FileConfig::default(),
        })
        .unwrap_err();
        assert!(e.to_string().contains("kubelet-dirr"), "{e}");
        let bad = FileConfig {
            metrics_addr: Some("nope".into()),
            ..FileConfig::default()
        };
        let e = Config::resolve(&FileConfig::default(), &bad).unwrap_err();
        assert!(e.to_string().starts_with("config key metrics-addr:"), "{e}");
        let bad = FileConfig {
            state_dir: Some("/var/../etc".into()),
            ..FileConfig::default()
        };
        assert!(
            Config::resolve(&FileConfig::default(), &bad)
                .unwrap_err()
                .to_string()
                .contains("state-dir")
        );
    }

    #[test]
    fn the_csi_section_defaults_to_off_with_every_driver_and_names_its_bad_keys() {
        let c = Config::resolve(&FileConfig::default(), &FileConfig::default()).unwrap();
        assert!(!c.csi.enabled);
        assert!(c.csi.register);
        assert_eq!(c.csi.drivers.len(), 7);
        let file: FileConfig = serde_saphyr::from_str(
            "csi:\n  enabled: true\n  drivers: [nfs, local]\n  max-volumes-per-node: {local: 8}\n  topology: {topology.moor.io/rack: r1}\n  register: false\n",
        )
        .unwrap();
        let c = Config::resolve(&file, &FileConfig::default()).unwrap().csi;
        assert!(c.enabled && !c.register);
        assert_eq!(c.drivers, ["nfs", "local"]);
        assert_eq!(c.max_volumes_per_node.get("local"), Some(&8));
        assert_eq!(
            c.topology.get("topology.moor.io/rack").map(String::as_str),
            Some("r1")
        );
        for (yaml, key) in [
            ("csi:\n  drivers: [nfs, ceph]\n", "csi.drivers"),
            ("csi:\n  drivers: [nfs, nfs]\n", "csi.drivers"),
            (
                "csi:\n  drivers: [nfs]\n  max-volumes-per-node: {rbd: 3}\n",
                "csi.max-volumes-per-node",
            ),
            (
                "csi:\n  max-volumes-per-node: {rbd: 0}\n",
                "csi.max-volumes-per-node",
            ),
            (
                "csi:\n  topology: {kubernetes.io/hostname: x}\n",
                "csi.topology",
            ),
            ("csi:\n  topology: {\"bad key\": x}\n", "csi.topology"),
        ] {
            let file: FileConfig = serde_saphyr::from_str(yaml).unwrap();
            let e = Config::resolve(&file, &FileConfig::default()).unwrap_err();
            assert!(
                e.to_string().starts_with(&format!("config key {key}:")),
                "{yaml}: {e}"
            );
        }
        assert!(serde_saphyr::from_str::<FileConfig>("csi:\n  enable: true\n").is_err());
    }

    #[test]
    fn the_operator_sections_resolve_and_name_the_bad_key() {
        let file: FileConfig = serde_saphyr::from_str(
            "node-name: n\nkubernetes:\n  mode: off\n  events: false\nheal:\n  evict-pods: [glusterfs, nfs, nfs]\n  evict-after-seconds: 30\ngc:\n  orphans: false\n  grace-seconds: 300\n",
        )
        .unwrap();
        let c = Config::resolve(&file, &FileConfig::default()).unwrap();
        assert!(!c.kubernetes.enabled && !c.kubernetes.events);
        assert_eq!(c.heal.evict_pods, ["glusterfs", "nfs"]);
        assert_eq!(c.heal.evict_after, Duration::from_secs(30));
        assert!(!c.gc.orphans);
        assert_eq!(c.gc.grace, Duration::from_secs(300));
        let d = Config::resolve(
            &serde_saphyr::from_str("node-name: n\n").unwrap(),
            &FileConfig::default(),
        )
        .unwrap();
        assert!(d.kubernetes.enabled && d.kubernetes.events && d.gc.orphans);
        assert!(d.heal.evict_pods.is_empty());
        for (yaml, key) in [
            ("kubernetes:\n  mode: on\n", "kubernetes.mode"),
            (
                "kubernetes:\n  kubeconfig: rel/kc\n",
                "kubernetes.kubeconfig",
            ),
            ("heal:\n  evict-pods: [ceph]\n", "heal.evict-pods"),
            ("gc:\n  grace-seconds: 1\n", "gc.grace-seconds"),
        ] {
            let file: FileConfig = serde_saphyr::from_str(yaml).unwrap();
            let e = Config::resolve(&file, &FileConfig::default()).unwrap_err();
            assert!(
                e.to_string().starts_with(&format!("config key {key}:")),
                "{yaml}: {e}"
            );
        }
    }

    #[test]
    fn a_missing_default_file_is_fine_but_a_named_one_is_not() {
        let e = Config::load(&Overrides {
            config: Some("/nonexistent/moor.yaml".into()),
            file: FileConfig::default(),
        });
        assert!(matches!(e, Err(ConfigError::Read { .. })));
    }
}
