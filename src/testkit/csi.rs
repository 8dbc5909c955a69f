//! A typed CSI client over a daemon's Unix socket, as kubelet (≥ 1.26) dials it: HTTP/2
//! with the `localhost` authority, one persistent connection. Blocking wrappers for tests
//! and benches: [`CsiClient::run`] drives any call of the generated clients.
//!
//! Invariant: the client owns its runtime, so a synchronous test can hold several (one per
//! driver socket) without sharing one.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use super::TestkitError;
use crate::csi::proto::csi::v1::controller_client::ControllerClient;
use crate::csi::proto::csi::v1::identity_client::IdentityClient;
use crate::csi::proto::csi::v1::node_client::NodeClient;
use crate::csi::proto::registration::registration_client::RegistrationClient;

/// One connection to a CSI (or registration) socket.
pub struct CsiClient {
    rt: tokio::runtime::Runtime,
    channel: Channel,
    /// The socket.
    pub socket: PathBuf,
}

impl CsiClient {
    /// Connects to `socket`, waiting up to `wait` for it to appear (the daemon binds its
    /// CSI sockets right after reconstruction).
    pub fn connect(socket: &Path, wait: Duration) -> Result<Self, TestkitError> {
        let err = |detail: String| TestkitError::Csi {
            what: format!("socket {}", socket.display()),
            detail,
        };
        let deadline = Instant::now() + wait;
        while !socket.exists() {
            if Instant::now() >= deadline {
                return Err(err(format!("no socket within {} s", wait.as_secs())));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| err(format!("runtime: {e}")))?;
        let path = socket.to_owned();
        let endpoint = Endpoint::from_static("http://localhost");
        let channel = rt
            .block_on(
                endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let s = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(s))
                    }
                })),
            )
            .map_err(|e| err(format!("connect: {e}")))?;
        Ok(CsiClient {
            rt,
            channel,
            socket: socket.to_owned(),
        })
    }

    /// Runs one call to its end.
    pub fn run<F: Future>(&self, call: F) -> F::Output {
        self.rt.block_on(call)
    }

    /// The connection itself (for a raw call no generated client has).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The Identity service.
    pub fn identity(&self) -> IdentityClient<Channel> {
        IdentityClient::new(self.channel.clone())
    }

    /// The Controller service (capabilities only).
    pub fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.channel.clone())
    }

    /// The Node service.
    pub fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.channel.clone())
    }

    /// kubelet's registration service (on a registration socket).
    pub fn registration(&self) -> RegistrationClient<Channel> {
        RegistrationClient::new(self.channel.clone())
    }
}
