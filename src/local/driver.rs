//! Driver `moor~local/local`: option `path` is a directory (bind-mounted) or a block device
//! (format-if-blank, then mounted) that the node's allow-list serves; option `node`, when
//! set, must name this node — local PV affinity enforced on the node itself, not only by the
//! scheduler.
//!
//! Invariant: the volume is the object the path resolved to, never the text: the key derives
//! from the directory's real path or the device's stable id (so every name of one disk is one
//! volume and one lock), and the resolved object is handed to the stage held open.

use std::path::Path;
use std::sync::Arc;

use crate::host::allow::{AllowList, Resolved, SourceObject};
use crate::host::paths::is_clean_absolute;
use crate::host::{DevNum, Host};
use crate::local::discover::IdSources;
use crate::volume::state::LocalSource;
use crate::volume::{
    CapacityError, Driver, DriverError, NodeContext, StageSource, VolumeOptions, VolumeSpec,
    VolumeState, volume_key,
};

/// The user options this driver accepts.
pub const OPTIONS: &[&str] = &["path", "node", "mountOptions", "readOnly"];

/// The local driver.
#[derive(Debug, Clone, Default)]
pub struct LocalDriver {
    /// What it serves.
    pub sources: LocalSources,
}

/// What local sources this node serves and where device identities are read from.
#[derive(Debug, Clone)]
pub struct LocalSources {
    /// The allow-list.
    pub allow: Arc<AllowList>,
    /// udev, sysfs and `/dev`, for stable ids.
    pub ids: IdSources,
}

impl Default for LocalSources {
    fn default() -> Self {
        LocalSources {
            allow: Arc::new(AllowList {
                proc: "/proc".into(),
                ..AllowList::default()
            }),
            ids: IdSources {
                dev_dir: "/dev".into(),
                udev_dir: "/run/udev/data".into(),
                sys: "/sys".into(),
            },
        }
    }
}

pub use crate::host::devid::device_stable_id;

/// Every volume key a local `path` may be recorded under: the key of the object it resolves
/// to now (a device's stable id, a directory's real path), then the key of the text itself
/// (what earlier versions used). For forgetting a wiped entry: serving goes through
/// [`AllowList::resolve`].
pub fn volume_keys_of(path: &Path, ids: &IdSources) -> Vec<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut keys = Vec::new();
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_block_device() => {
            let dev = DevNum::from_rdev(m.rdev());
            keys.push(volume_key("local", &device_stable_id(ids, dev)));
        }
        Ok(m) if m.is_dir() => {
            if let Ok(real) = std::fs::canonicalize(path) {
                keys.push(volume_key("local", &real.display().to_string()));
            }
        }
        _ => {}
    }
    let text = volume_key("local", &path.display().to_string());
    if !keys.contains(&text) {
        keys.push(text);
    }
    keys
}

impl Driver for LocalDriver {
    fn name(&self) -> &'static str {
        "local"
    }

    fn volume(&self, node: &NodeContext, opts: &VolumeOptions) -> Result<VolumeSpec, DriverError> {
        self.resolve_volume(node, opts).map(|(spec, _)| spec)
    }

    fn resolve_volume(
        &self,
        node: &NodeContext,
        opts: &VolumeOptions,
    ) -> Result<(VolumeSpec, Option<Resolved>), DriverError> {
        opts.check_known(self.name(), OPTIONS)?;
        let path = opts.required(self.name(), "path")?;
        let bad = |detail: &str| DriverError::BadSource {
            path: path.into(),
            detail: detail.into(),
        };
        if let Some(wanted) = opts.user.get("node").filter(|n| !n.is_empty())
            && *wanted != node.node_name
        {
            return Err(DriverError::WrongNode {
                volume: opts
                    .pv_or_volume_name
                    .clone()
                    .unwrap_or_else(|| path.into()),
                wanted: wanted.clone(),
                this: node.node_name.clone(),
            });
        }
        let p = Path::new(path);
        if !is_clean_absolute(p) {
            return Err(bad("must be a clean absolute path (no '.', '..', '//')"));
        }
        if p == Path::new("/") || p.starts_with(&node.kubelet_dir) {
            return Err(bad("must not be / or inside the kubelet directory"));
        }
        let resolved = self.sources.allow.resolve(p)?;
        let (source, identity) = match resolved.object {
            SourceObject::Directory { .. } => (
                StageSource::Directory {
                    path: resolved.real.clone(),
                },
                resolved.real.display().to_string(),
            ),
            SourceObject::Block(dev) => (
                StageSource::Block {
                    device: resolved.real.clone(),
                },
                device_stable_id(&self.sources.ids, dev),
            ),
        };
        Ok((
            VolumeSpec {
                key: volume_key(self.name(), &identity),
                source,
                state: Some(VolumeState::Local(LocalSource {
                    path: path.to_owned(),
                    mount_options: opts.mount_options.words().to_vec(),
                })),
                mount_options: opts.mount_options.clone(),
            },
            Some(resolved),
        ))
    }

    /// A loop device is set to its file's size; any other disk (SCSI, or dm over SCSI) is
    /// rescanned. NVMe and virtio tell their new size by themselves.
    fn refresh_capacity(&self, host: &Host, name: &str) -> Result<(), CapacityError> {
        if name.starts_with("loop") {
            let device = host.paths.dev.join(name);
            host.blockdev
                .set_capacity(&device)
                .map_err(|source| CapacityError::Io {
                    what: "set the capacity of",
                    path: device.clone(),
                    source,
                })
        } else {
            crate::attach::scsi::refresh_capacity(host, name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeContext {
        NodeContext::for_tests()
    }

    /// A driver that allows `root` as a directory root.
    fn allowing(root: &Path) -> LocalDriver {
        let mut d = LocalDriver::default();
        d.sources.allow = Arc::new(AllowList {
            directories: vec![root.into()],
            proc: "/proc".into(),
            ..AllowList::default()
        });
        d
    }

    fn opts(json: &str) -> VolumeOptions {
        VolumeOptions::parse_json(json).unwrap()
    }

    #[test]
    fn directory_volume() {
        let t = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(t.path()).unwrap();
        std::fs::create_dir(root.join("d")).unwrap();
        std::os::unix::fs::symlink("d", root.join("alias")).unwrap();
        let (n, local) = (node(), allowing(&root));
        let o = opts(&format!(r#"{{"path":"{}"}}"#, root.join("d").display()));
        let s = local.volume(&n, &o).unwrap();
        assert_eq!(
            s.source,
            StageSource::Directory {
                path: root.join("d")
            }
        );
        assert_eq!(
            s.key,
            volume_key("local", &root.join("d").display().to_string())
        );
        let o = opts(&format!(r#"{{"path":"{}"}}"#, root.join("alias").display()));
        let (a, held) = local.resolve_volume(&n, &o).unwrap();
        assert_eq!(a.key, s.key, "two spellings of one directory are one key");
        assert_eq!(a.source, s.source);
        assert!(held.is_some());
        assert_eq!(
            a.state.as_ref().and_then(VolumeState::named_path),
            Some(root.join("alias").display().to_string().as_str())
        );
    }

    #[test]
    fn nothing_is_served_without_an_allow_list() {
        let t = tempfile::tempdir().unwrap();
        let o = opts(&format!(r#"{{"path":"{}"}}"#, t.path().display()));
        let e = LocalDriver::default().volume(&node(), &o).unwrap_err();
        assert_eq!(e.reason(), "not_allowed", "{e}");
        assert!(e.to_string().contains("local.allowed-directories"), "{e}");
    }

    #[test]
    fn another_nodes_volume_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(t.path()).unwrap();
        let (n, local) = (node(), allowing(&root));
        let o = opts(&format!(
            r#"{{"path":"{}","node":"node-b","kubernetes.io/pvOrVolumeName":"pv-1"}}"#,
            root.display()
        ));
        let e = local.volume(&n, &o).unwrap_err();
        assert_eq!(
            e.to_string(),
            "volume pv-1 belongs to node node-b, this is node node-a; refusing to mount it here"
        );
        let o = opts(&format!(
            r#"{{"path":"{}","node":"node-a"}}"#,
            root.display()
        ));
        assert!(local.volume(&n, &o).is_ok());
    }

    #[test]
    fn bad_paths_are_refused() {
        let (n, local) = (node(), allowing(Path::new("/")));
        for p in [
            "relative",
            "/tmp/../etc",
            "/",
            "/var/lib/kubelet/pods",
            "/nonexistent-moor-x",
            "/etc/hostname",
        ] {
            let o = opts(&format!(r#"{{"path":"{p}"}}"#));
            let r = local.volume(&n, &o);
            assert!(
                matches!(
                    r,
                    Err(DriverError::BadSource { .. }) | Err(DriverError::Source(_))
                ),
                "{p}: {r:?}"
            );
            assert_eq!(r.unwrap_err().reason(), "bad_source", "{p}");
        }
        let o = opts(r#"{"pth":"/tmp"}"#);
        assert_eq!(
            LocalDriver::default()
                .volume(&node(), &o)
                .unwrap_err()
                .reason(),
            "bad_options"
        );
        let o = opts(r#"{}"#);
        assert_eq!(
            LocalDriver::default()
                .volume(&node(), &o)
                .unwrap_err()
                .to_string(),
            "option path is required by driver local"
        );
    }

    /// A stage record main ef677bd wrote for a disk loads typed: the path it was named by
    /// (what tells a renamed disk), its mount options and the device claim.
    #[test]
    fn a_record_of_main_ef677bd_loads_typed() {
        let rec = crate::journal::record::old_record(include_str!(
            "../volume/fixtures/local-ef677bd.json"
        ));
        assert_eq!(
            rec.volume,
            Some(VolumeState::Local(LocalSource {
                path: "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4".into(),
                mount_options: vec!["noatime".into(), "discard".into()],
            }))
        );
        assert_eq!(
            rec.volume.as_ref().and_then(VolumeState::named_path),
            Some("/dev/disk/by-id/wwn-0x5000c500a1b2c3d4")
        );
        assert_eq!(
            rec.device.as_ref().map(|c| c.stable_id.as_str()),
            Some("wwn-0x5000c500a1b2c3d4")
        );
    }
}
