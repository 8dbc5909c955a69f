//! Driver `moor~local/local`: option `path` is an existing directory (bind-mounted) or a
//! block device (format-if-blank, then mounted); option `node`, when set, must name this
//! node — local PV affinity enforced on the node itself, not only by the scheduler.

use std::collections::BTreeMap;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use crate::driver::{Driver, DriverError, NodeContext, VolumeSpec, volume_key};
use crate::flexvolume::VolumeOptions;
use crate::host::paths::is_clean_absolute;
use crate::journal::StageSource;

/// The user options this driver accepts.
pub const OPTIONS: &[&str] = &["path", "node", "mountOptions", "readOnly"];

/// The local driver.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalDriver;

impl Driver for LocalDriver {
    fn name(&self) -> &'static str {
        "local"
    }

    fn volume(&self, node: &NodeContext, opts: &VolumeOptions) -> Result<VolumeSpec, DriverError> {
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
        let md = std::fs::metadata(p).map_err(|e| bad(&format!("cannot use it: {e}")))?;
        let source = if md.is_dir() {
            StageSource::Directory { path: p.into() }
        } else if md.file_type().is_block_device() {
            StageSource::Block { device: p.into() }
        } else {
            return Err(bad("neither a directory nor a block device"));
        };
        let mut persist = BTreeMap::new();
        persist.insert("path".to_owned(), path.to_owned());
        let mount_options = opts.user.get("mountOptions").cloned().unwrap_or_default();
        if !mount_options.is_empty() {
            persist.insert("mountOptions".to_owned(), mount_options.clone());
        }
        Ok(VolumeSpec {
            key: volume_key(self.name(), path),
            source,
            persist,
            mount_options,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::DriverError;

    fn node() -> NodeContext {
        NodeContext::for_tests()
    }

    fn opts(json: &str) -> VolumeOptions {
        VolumeOptions::parse_json(json).unwrap()
    }

    #[test]
    fn directory_volume() {
        let t = tempfile::tempdir().unwrap();
        let o = opts(&format!(r#"{{"path":"{}"}}"#, t.path().display()));
        let s = LocalDriver.volume(&node(), &o).unwrap();
        assert_eq!(
            s.source,
            StageSource::Directory {
                path: t.path().into()
            }
        );
        assert_eq!(s.key, volume_key("local", &t.path().display().to_string()));
    }

    #[test]
    fn another_nodes_volume_is_refused() {
        let o = opts(r#"{"path":"/tmp","node":"node-b","kubernetes.io/pvOrVolumeName":"pv-1"}"#);
        let e = LocalDriver.volume(&node(), &o).unwrap_err();
        assert_eq!(
            e.to_string(),
            "volume pv-1 belongs to node node-b, this is node node-a; refusing to mount it here"
        );
        let o = opts(r#"{"path":"/tmp","node":"node-a"}"#);
        assert!(LocalDriver.volume(&node(), &o).is_ok());
    }

    #[test]
    fn bad_paths_are_refused() {
        for p in [
            "relative",
            "/tmp/../etc",
            "/",
            "/var/lib/kubelet/pods",
            "/nonexistent-moor-x",
            "/etc/hostname",
        ] {
            let o = opts(&format!(r#"{{"path":"{p}"}}"#));
            assert!(
                matches!(
                    LocalDriver.volume(&node(), &o),
                    Err(DriverError::BadSource { .. })
                ),
                "{p}"
            );
        }
        let o = opts(r#"{"pth":"/tmp"}"#);
        assert_eq!(
            LocalDriver.volume(&node(), &o).unwrap_err().reason(),
            "bad_options"
        );
        let o = opts(r#"{}"#);
        assert_eq!(
            LocalDriver.volume(&node(), &o).unwrap_err().to_string(),
            "option path is required by driver local"
        );
    }
}
