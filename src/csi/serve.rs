//! The CSI sockets: one per served driver (`plugins/<name>/csi.sock`, in a 0750 directory,
//! the socket 0600) with Identity, Controller and Node on it, and one registration socket per
//! driver in kubelet's `plugins_registry/`, checked every [`REGISTRATION_CHECK`] and made
//! again if it disappeared (kubelet's dir wiped on a restart, a container recreated), so
//! kubelet always finds the drivers.
//!
//! Invariants: a socket path is only removed when it is a socket (the daemon's lock proves
//! no other moor serves it); shutdown removes the registration sockets first (kubelet
//! unregisters the drivers), then, after the daemon drained, stops the servers and removes
//! the CSI sockets, so nothing moor bound is left behind.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;

use super::identity::{IdentityService, Readiness};
use super::node::NodeService;
use super::proto::csi::v1::controller_server::ControllerServer;
use super::proto::csi::v1::identity_server::IdentityServer;
use super::proto::csi::v1::node_server::NodeServer;
use super::proto::registration::registration_server::RegistrationServer;
use super::registration::RegistrationService;
use crate::api::Handler;

/// How often each registration socket is checked for still being there.
pub const REGISTRATION_CHECK: Duration = Duration::from_secs(2);
/// How long shutdown waits for the servers to finish their calls in flight.
const STOP_LIMIT: Duration = Duration::from_secs(5);

/// A CSI socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A directory or socket step failed.
    #[error("CSI {what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// Something other than a socket is where moor's socket belongs.
    #[error("CSI socket {}: something that is not a socket is in the way; moor removes only sockets", path.display())]
    InTheWay {
        /// The path.
        path: PathBuf,
    },
}

impl ServeError {
    /// Stable label.
    pub fn reason(&self) -> &'static str {
        match self {
            ServeError::Io { .. } => "csi_socket",
            ServeError::InTheWay { .. } => "csi_socket_in_the_way",
        }
    }
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ServeError + 'a {
    move |source| ServeError::Io {
        what,
        path: path.into(),
        source,
    }
}

/// What the CSI servers need from the daemon (its `csi:` config, resolved).
pub struct Settings<'a> {
    /// kubelet's root directory (the sockets' home).
    pub kubelet_dir: &'a Path,
    /// This node's name.
    pub node_name: &'a str,
    /// moor driver names to serve.
    pub drivers: &'a [String],
    /// Per driver, NodeGetInfo's `max_volumes_per_node` (absent: no limit).
    pub max_volumes_per_node: &'a BTreeMap<String, u64>,
    /// Extra topology segments.
    pub topology: &'a BTreeMap<String, String>,
    /// Serve kubelet's plugin registration.
    pub register: bool,
}

/// The running CSI servers.
pub struct CsiServers {
    readiness: Readiness,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    watchers: Vec<JoinHandle<()>>,
    sockets: Vec<PathBuf>,
    registrations: Vec<PathBuf>,
}

/// Removes a stale socket at `path` (nothing else).
fn remove_stale(path: &Path) -> Result<(), ServeError> {
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(io("remove stale socket", path))
        }
        Ok(_) => Err(ServeError::InTheWay { path: path.into() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("inspect", path)(e)),
    }
}

/// Binds a 0600 socket at `path` (a stale one removed first); returns it and its inode.
fn bind(path: &Path) -> Result<(UnixListener, u64), ServeError> {
    remove_stale(path)?;
    let l = UnixListener::bind(path).map_err(io("bind", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io("chmod", path))?;
    let ino = std::fs::symlink_metadata(path)
        .map_err(io("inspect", path))?
        .ino();
    Ok((l, ino))
}

/// A future that ends when `stop` says so (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serves a driver's CSI services on `listener` until `stop`.
fn serve_csi(
    listener: UnixListener,
    identity: IdentityService,
    node: NodeService,
    stop: watch::Receiver<bool>,
    path: PathBuf,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .add_service(IdentityServer::new(identity.clone()))
            .add_service(ControllerServer::new(identity))
            .add_service(NodeServer::new(node))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stopped(stop))
            .await;
        if let Err(e) = result {
            tracing::error!(socket = %path.display(), error = %e, "CSI server stopped");
        }
    })
}

/// Waits until the socket at `path` is no longer the one bound (inode `ino`): false, or
/// until `stop`: true.
async fn until_gone(path: &Path, ino: u64, stop: &mut watch::Receiver<bool>) -> bool {
    loop {
        if pause_or_stop(stop).await {
            return true;
        }
        let still_ours = std::fs::symlink_metadata(path)
            .is_ok_and(|md| md.file_type().is_socket() && md.ino() == ino);
        if !still_ours {
            return false;
        }
    }
}

/// Sleeps one [`REGISTRATION_CHECK`]; true when `stop` came first.
async fn pause_or_stop(stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = stop.wait_for(|s| *s) => true,
        _ = tokio::time::sleep(REGISTRATION_CHECK) => false,
    }
}

/// Serves one registration socket, making it again when it disappears, until `stop`.
fn serve_registration(
    path: PathBuf,
    service: RegistrationService,
    first: (UnixListener, u64),
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut bound = Some(first);
        loop {
            if let Some((listener, ino)) = bound.take() {
                let (gone_tx, gone_rx) = watch::channel(false);
                let server = tokio::spawn(
                    tonic::transport::Server::builder()
                        .add_service(RegistrationServer::new(service.clone()))
                        .serve_with_incoming_shutdown(
                            UnixListenerStream::new(listener),
                            stopped(gone_rx),
                        ),
                );
                let stopping = until_gone(&path, ino, &mut stop).await;
                let _ = gone_tx.send(true);
                let _ = server.await;
                if stopping {
                    return;
                }
            }
            if let Some(dir) = path.parent()
                && let Err((op, e)) = crate::host::dirs::create_missing(dir, 0o750)
            {
                tracing::warn!(dir = %dir.display(), op, error = %e, "cannot make kubelet's plugin registry again; retrying");
            }
            match bind(&path) {
                Ok(b) => {
                    tracing::info!(driver = %service.name, socket = %path.display(), "registration socket was gone; made it again for kubelet");
                    bound = Some(b);
                }
                Err(e) => {
                    tracing::warn!(driver = %service.name, error = %e, "cannot make the registration socket again; retrying");
                    if pause_or_stop(&mut stop).await {
                        return;
                    }
                }
            }
        }
    })
}

impl CsiServers {
    /// Binds and serves every configured driver's sockets. Call it inside the runtime,
    /// after reconstruction: Probe answers ready from here on.
    pub fn start(s: &Settings<'_>, handler: Arc<dyn Handler>) -> Result<Self, ServeError> {
        let readiness = Readiness::ready();
        let (stop, stop_rx) = watch::channel(false);
        let mut out = CsiServers {
            readiness: readiness.clone(),
            stop,
            servers: Vec::new(),
            watchers: Vec::new(),
            sockets: Vec::new(),
            registrations: Vec::new(),
        };
        for driver in s.drivers {
            let name = crate::api::csi_driver_name(driver);
            let path = super::socket_path(s.kubelet_dir, driver);
            if let Some(dir) = path.parent() {
                crate::host::dirs::private_dir(dir, 0o750).map_err(|(op, e)| io(op, dir)(e))?;
            }
            let (listener, _) = bind(&path)?;
            out.sockets.push(path.clone());
            let identity = IdentityService {
                name: name.clone(),
                readiness: readiness.clone(),
            };
            let node = NodeService {
                driver: driver.clone(),
                name: name.clone(),
                node_id: s.node_name.to_owned(),
                max_volumes: s.max_volumes_per_node.get(driver).copied().unwrap_or(0),
                topology: s.topology.clone(),
                handler: handler.clone(),
            };
            out.servers.push(serve_csi(
                listener,
                identity,
                node,
                stop_rx.clone(),
                path.clone(),
            ));
            if s.register {
                let reg = super::registration_path(s.kubelet_dir, driver);
                if let Some(dir) = reg.parent() {
                    // kubelet's directory: made if missing, never changed.
                    crate::host::dirs::create_missing(dir, 0o750)
                        .map_err(|(op, e)| io(op, dir)(e))?;
                }
                let first = bind(&reg)?;
                out.registrations.push(reg.clone());
                let service = RegistrationService {
                    name: name.clone(),
                    endpoint: path.clone(),
                };
                out.watchers
                    .push(serve_registration(reg, service, first, stop_rx.clone()));
            }
            tracing::info!(driver = %name, socket = %path.display(), registered = s.register, "CSI driver serving");
        }
        Ok(out)
    }

    /// The daemon begins to shut down: Probe answers not ready, and the registration
    /// sockets go (kubelet unregisters the drivers; no new volume is sent here).
    pub fn drain(&self) {
        self.readiness.drain();
        for w in &self.watchers {
            w.abort();
        }
        for r in &self.registrations {
            remove_socket(r);
        }
    }

    /// Stops every server (calls in flight get [`STOP_LIMIT`] to finish) and removes the
    /// CSI sockets. After the daemon drained its operations.
    pub async fn stop(self) {
        self.drain();
        let _ = self.stop.send(true);
        for s in self.servers {
            if tokio::time::timeout(STOP_LIMIT, s).await.is_err() {
                tracing::warn!("a CSI server did not stop in time");
            }
        }
        for p in &self.sockets {
            remove_socket(p);
        }
    }
}

/// Removes moor's socket at `p` (only a socket; gone already is fine).
fn remove_socket(p: &Path) {
    if let Err(e) = remove_stale(p) {
        tracing::warn!(socket = %p.display(), error = %e, "cannot remove a CSI socket at shutdown");
    }
}
