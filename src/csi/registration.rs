//! kubelet's plugin registration, served by moor itself (no node-driver-registrar sidecar):
//! kubelet's plugin watcher finds `<name>-reg.sock` in `plugins_registry/`, asks GetInfo for
//! the driver's name and CSI socket, registers it, and reports the outcome through
//! NotifyRegistrationStatus.
//!
//! Invariant: GetInfo names the driver's own CSI socket and only the CSI versions moor
//! serves; a refused registration is an error line naming the driver and kubelet's reason.

use std::path::PathBuf;

use tonic::{Request, Response, Status};

use super::proto::registration::registration_server::Registration;
use super::proto::registration::{
    InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse,
};

/// kubelet's plugin type for a CSI driver.
pub const CSI_PLUGIN: &str = "CSIPlugin";

/// One driver's registration service.
#[derive(Debug, Clone)]
pub struct RegistrationService {
    /// The CSI driver name.
    pub name: String,
    /// The driver's CSI socket (absolute: kubelet dials it as given).
    pub endpoint: PathBuf,
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn get_info(&self, _req: Request<InfoRequest>) -> Result<Response<PluginInfo>, Status> {
        tracing::debug!(method = "GetInfo", driver = %self.name, "registration call");
        Ok(Response::new(PluginInfo {
            r#type: CSI_PLUGIN.into(),
            name: self.name.clone(),
            endpoint: self.endpoint.display().to_string(),
            supported_versions: super::SUPPORTED_VERSIONS
                .iter()
                .map(|v| (*v).to_owned())
                .collect(),
        }))
    }

    async fn notify_registration_status(
        &self,
        req: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        let st = req.into_inner();
        if st.plugin_registered {
            tracing::info!(driver = %self.name, endpoint = %self.endpoint.display(), "kubelet registered the CSI driver");
        } else {
            tracing::error!(driver = %self.name, error = %st.error, "kubelet refused to register the CSI driver");
        }
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}
