//! CSI node calls as the CSI front end hands them to the daemon: a [`Request::Csi`] built
//! from a volume context with FlexVolume's option names, sent over the daemon's socket (the
//! same [`crate::api::Handler`] the in-process gRPC front end calls), and the typed
//! [`Response`] read back. kubelet's CSI path shapes for a scratch tree are here too, so
//! tests and benches ask for the paths kubelet would use.
//!
//! Invariant: a call is the typed request and nothing else — no gRPC, no status-code
//! mapping (the CSI front end's own tests cover those); what a test sees is what the
//! executor answered.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::TestkitError;
use crate::api::{CsiCall, Request, Response};
use crate::volume::VolumeOptions;

/// The volume context (`volumeAttributes`) parsed as the front end parses it.
pub fn options(attrs: &[(&str, &str)]) -> Result<VolumeOptions, TestkitError> {
    let map: BTreeMap<String, String> = attrs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    crate::volume::options::parse(&map).map_err(|e| TestkitError::Csi {
        what: "parse the volume context".into(),
        detail: e.to_string(),
    })
}

/// Sends `call` for `volume_id` of moor driver `driver` to the daemon on `socket`.
pub fn call(
    socket: &Path,
    driver: &str,
    volume_id: &str,
    call: CsiCall,
    timeout: Duration,
) -> Result<Response, TestkitError> {
    let what = call.op().to_owned();
    let req = Request::Csi {
        driver: driver.into(),
        volume_id: volume_id.into(),
        call,
    };
    crate::api::client::call(socket, &req, timeout).map_err(|e| TestkitError::Csi {
        what,
        detail: crate::error::Chain(&e).to_string(),
    })
}

/// kubelet's CSI paths under a kubelet dir.
#[derive(Debug, Clone)]
pub struct CsiPaths {
    /// The kubelet dir.
    pub kubelet_dir: PathBuf,
}

impl CsiPaths {
    /// A filesystem volume's `staging_target_path` (kubelet ≥ 1.24's shape: a SHA-256 of
    /// the volume handle under the CSI driver's name).
    pub fn staging(&self, driver: &str, volume_id: &str) -> PathBuf {
        use sha2::Digest;
        let hash: String = sha2::Sha256::digest(volume_id.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.kubelet_dir
            .join("plugins/kubernetes.io/csi")
            .join(crate::api::csi_driver_name(driver))
            .join(hash)
            .join("globalmount")
    }

    /// A raw block volume's `staging_target_path`.
    pub fn block_staging(&self, pv: &str) -> PathBuf {
        self.kubelet_dir
            .join("plugins/kubernetes.io/csi/volumeDevices/staging")
            .join(pv)
    }

    /// A filesystem volume's `target_path` in pod `pod_uid`.
    pub fn target(&self, pod_uid: &str, pv: &str) -> PathBuf {
        self.kubelet_dir
            .join("pods")
            .join(pod_uid)
            .join("volumes/kubernetes.io~csi")
            .join(pv)
            .join("mount")
    }

    /// A raw block volume's `target_path` for pod `pod_uid`.
    pub fn block_target(&self, pod_uid: &str, pv: &str) -> PathBuf {
        self.kubelet_dir
            .join("plugins/kubernetes.io/csi/volumeDevices/publish")
            .join(pv)
            .join(pod_uid)
    }
}

/// The reason label of a failed answer (None for any other answer).
pub fn reason(r: &Response) -> Option<&str> {
    match r {
        Response::Failed(f) => f.reason.as_deref(),
        _ => None,
    }
}
