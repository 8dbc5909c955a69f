//! The daemon's wiring of the CSI front end: with `csi.enabled`, the CSI servers start after
//! reconstruction over the daemon's executor (the same [`crate::api::Handler`] FlexVolume's
//! socket uses) and stop at shutdown, registration first, the CSI sockets after the drain;
//! the executor refuses stages beyond `csi.max-volumes-per-node`.

use std::collections::HashMap;
use std::sync::Arc;

use crate::api::Handler;
use crate::config::Config;
use crate::csi::serve::{CsiServers, ServeError, Settings};

/// The executor's per-driver CSI stage limits: `csi.max-volumes-per-node`, the same numbers
/// NodeGetInfo tells kubelet.
pub fn volume_limits(cfg: &Config) -> HashMap<String, usize> {
    cfg.csi
        .max_volumes_per_node
        .iter()
        .map(|(d, n)| (d.clone(), usize::try_from(*n).unwrap_or(usize::MAX)))
        .collect()
}

/// Starts the CSI servers when the config enables them (inside the runtime).
pub fn start(cfg: &Config, handler: Arc<dyn Handler>) -> Result<Option<CsiServers>, ServeError> {
    if !cfg.csi.enabled {
        return Ok(None);
    }
    let settings = Settings {
        kubelet_dir: &cfg.kubelet_dir,
        node_name: &cfg.node_name,
        drivers: &cfg.csi.drivers,
        max_volumes_per_node: &cfg.csi.max_volumes_per_node,
        topology: &cfg.csi.topology,
        register: cfg.csi.register,
    };
    CsiServers::start(&settings, handler).map(Some)
}
