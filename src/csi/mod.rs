//! The CSI front end: kubelet's gRPC calls (CSI Identity, Node, and Controller's
//! capabilities) and kubelet's plugin registration, served by the daemon on Unix sockets.
//!
//! One CSI driver per moor driver, named `<driver>.csi.moor.io`, each on its own socket
//! `<kubelet>/plugins/<name>/csi.sock` (the call does not carry the driver: the socket it came
//! in on says which), and — unless turned off — its own registration socket
//! `<kubelet>/plugins_registry/<name>-reg.sock`, so kubelet finds it without a sidecar.
//!
//! The generated code lives apart in [`proto`]; everything else here is hand-written. The
//! front end checks a call's arguments ([`node`]), translates it ([`translate`]) into an
//! [`crate::api::Request`] and hands it in process to the daemon's [`crate::api::Handler`],
//! exactly as FlexVolume's socket requests go; the answer's reason becomes the spec's status
//! code ([`status`]). It never touches the machine itself beyond its own sockets
//! ([`serve`]). Secrets never reach a log line: the messages that carry them print through
//! [`redact`].

pub mod identity;
pub mod node;
pub mod oldkubelet;
pub mod proto;
pub mod redact;
pub mod registration;
pub mod serve;
pub mod status;
pub mod translate;

use std::path::{Path, PathBuf};

use crate::api::csi_driver_name;

/// Every moor driver is a CSI driver too (a test keeps this the daemon's driver table).
pub const DRIVERS: &[&str] = &["local", "iscsi", "rbd", "fc", "nfs", "glusterfs", "cephfs"];

/// The topology key moor always sets itself, to the node's name.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// The CSI versions the registration socket tells kubelet about.
pub const SUPPORTED_VERSIONS: &[&str] = &["1.0.0"];

/// The CSI socket of `driver` under kubelet's dir.
pub fn socket_path(kubelet_dir: &Path, driver: &str) -> PathBuf {
    kubelet_dir
        .join("plugins")
        .join(csi_driver_name(driver))
        .join("csi.sock")
}

/// The registration socket of `driver` under kubelet's dir.
pub fn registration_path(kubelet_dir: &Path, driver: &str) -> PathBuf {
    kubelet_dir
        .join("plugins_registry")
        .join(format!("{}-reg.sock", csi_driver_name(driver)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_driver_has_its_name_socket_and_registration_socket() {
        let k = Path::new("/var/lib/kubelet");
        assert_eq!(csi_driver_name("iscsi"), "iscsi.csi.moor.io");
        assert_eq!(
            socket_path(k, "rbd"),
            Path::new("/var/lib/kubelet/plugins/rbd.csi.moor.io/csi.sock")
        );
        assert_eq!(
            registration_path(k, "nfs"),
            Path::new("/var/lib/kubelet/plugins_registry/nfs.csi.moor.io-reg.sock")
        );
        let builtin = crate::daemon::drivers::builtin().names();
        let mut ours: Vec<&str> = DRIVERS.to_vec();
        ours.sort_unstable();
        assert_eq!(builtin, ours);
        assert_eq!(DRIVERS, crate::flexvolume::DRIVERS);
    }
}
