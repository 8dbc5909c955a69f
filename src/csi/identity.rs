//! CSI Identity (name, capabilities, readiness) and the one Controller call a node plugin
//! answers, per driver socket.
//!
//! Invariants: Probe says ready only while the daemon serves — the servers start after
//! reconstruction, and [`Readiness::drain`] turns it off before the daemon drains; nothing
//! here advertises a Controller service or an RPC moor does not serve.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tonic::{Request, Response, Status};

use super::proto::csi::v1::controller_server::Controller;
use super::proto::csi::v1::identity_server::Identity;
use super::proto::csi::v1::{
    ControllerGetCapabilitiesRequest, ControllerGetCapabilitiesResponse,
    ControllerServiceCapability, GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse,
    GetPluginInfoRequest, GetPluginInfoResponse, PluginCapability, ProbeRequest, ProbeResponse,
    controller_service_capability, plugin_capability,
};

/// Whether the daemon serves: shared by every driver's Identity.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Ready now (the daemon reconstructed its state).
    pub fn ready() -> Self {
        Readiness(Arc::new(AtomicBool::new(true)))
    }

    /// Not ready from now on: the daemon is shutting down.
    pub fn drain(&self) {
        self.0.store(false, Ordering::Release);
    }

    /// Whether Probe answers ready.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// One driver's Identity and Controller service.
#[derive(Debug, Clone)]
pub struct IdentityService {
    /// The CSI driver name (`<driver>.csi.moor.io`).
    pub name: String,
    /// The daemon's readiness.
    pub readiness: Readiness,
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _req: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        tracing::debug!(method = "GetPluginInfo", driver = %self.name, "csi call");
        Ok(Response::new(GetPluginInfoResponse {
            name: self.name.clone(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _req: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        tracing::debug!(method = "GetPluginCapabilities", driver = %self.name, "csi call");
        // Topology only: NodeGetInfo reports the node's segments. No CONTROLLER_SERVICE:
        // moor provisions and attaches nothing, so no CO should route controller work here.
        let service = plugin_capability::Service {
            r#type: plugin_capability::service::Type::VolumeAccessibilityConstraints as i32,
        };
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities: vec![PluginCapability {
                r#type: Some(plugin_capability::Type::Service(service)),
            }],
        }))
    }

    async fn probe(&self, _req: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        let ready = self.readiness.is_ready();
        tracing::debug!(method = "Probe", driver = %self.name, ready, "csi call");
        Ok(Response::new(ProbeResponse { ready: Some(ready) }))
    }
}

/// The Controller capability moor answers: SINGLE_NODE_MULTI_WRITER says only that the
/// plugin understands the SINGLE_NODE_SINGLE_WRITER/MULTI_WRITER access modes (which the
/// node side does honour); unlike GET_VOLUME, LIST_VOLUMES, PUBLISH_UNPUBLISH_VOLUME or
/// EXPAND_VOLUME it promises no Controller RPC, all of which answer Unimplemented. An empty
/// list or UNKNOWN would be truthful too, but conformance suites refuse both.
pub const CONTROLLER_CAPABILITY: controller_service_capability::rpc::Type =
    controller_service_capability::rpc::Type::SingleNodeMultiWriter;

#[tonic::async_trait]
impl Controller for IdentityService {
    async fn controller_get_capabilities(
        &self,
        _req: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        tracing::debug!(method = "ControllerGetCapabilities", driver = %self.name, "csi call");
        let rpc = controller_service_capability::Rpc {
            r#type: CONTROLLER_CAPABILITY as i32,
        };
        Ok(Response::new(ControllerGetCapabilitiesResponse {
            capabilities: vec![ControllerServiceCapability {
                r#type: Some(controller_service_capability::Type::Rpc(rpc)),
            }],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn probe_is_ready_until_the_daemon_drains() {
        let svc = IdentityService {
            name: "nfs.csi.moor.io".into(),
            readiness: Readiness::ready(),
        };
        let ready = |s: &IdentityService| {
            let s = s.clone();
            async move {
                s.probe(Request::new(ProbeRequest {}))
                    .await
                    .unwrap()
                    .into_inner()
                    .ready
            }
        };
        assert_eq!(ready(&svc).await, Some(true));
        svc.readiness.drain();
        assert_eq!(ready(&svc).await, Some(false));
    }
}
