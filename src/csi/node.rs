//! CSI Node, per driver socket: each call's arguments are checked as the spec asks (a
//! missing volume_id, path or capability is InvalidArgument before the daemon sees it), the
//! call is translated into a [`CsiCall`] and run through the daemon's [`Handler`] on a
//! blocking thread — the same entry, locks, deadlines, metrics and journal as FlexVolume's
//! requests — and the daemon's answer becomes the spec's reply or status.
//!
//! Invariants: the call's answer, not the blocking thread, ends the gRPC call (an
//! operation past its deadline goes on after `timeout` was answered); every call is logged
//! in a debug span (method, volume_id, driver) with its secrets stripped.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::proto::csi::v1::node_server::Node;
use super::proto::csi::v1::volume_capability::AccessType;
use super::proto::csi::v1::{
    NodeExpandVolumeRequest, NodeExpandVolumeResponse, NodeGetCapabilitiesRequest,
    NodeGetCapabilitiesResponse, NodeGetInfoRequest, NodeGetInfoResponse,
    NodeGetVolumeStatsRequest, NodeGetVolumeStatsResponse, NodePublishVolumeRequest,
    NodePublishVolumeResponse, NodeServiceCapability, NodeStageVolumeRequest,
    NodeStageVolumeResponse, NodeUnpublishVolumeRequest, NodeUnpublishVolumeResponse,
    NodeUnstageVolumeRequest, NodeUnstageVolumeResponse, Topology, VolumeCapability,
    VolumeCondition, VolumeUsage, node_service_capability, volume_usage,
};
use super::status::{refuse, status_of};
use super::translate;
use crate::api::{self, AccessMode, Answer, CsiCall, Handler, VolumeMode};

/// What the Node capabilities promise: stage/unstage, stats with volume health, expansion,
/// and the single-node writer modes. Not VOLUME_MOUNT_GROUP: kubelet then applies fsGroup
/// itself as the CSIDriver's fsGroupPolicy says (recursively), which moor's root-only group
/// change would not match.
pub const NODE_CAPABILITIES: [node_service_capability::rpc::Type; 5] = [
    node_service_capability::rpc::Type::StageUnstageVolume,
    node_service_capability::rpc::Type::GetVolumeStats,
    node_service_capability::rpc::Type::VolumeCondition,
    node_service_capability::rpc::Type::ExpandVolume,
    node_service_capability::rpc::Type::SingleNodeMultiWriter,
];

/// One driver's Node service.
#[derive(Clone)]
pub struct NodeService {
    /// moor's driver name (`iscsi`).
    pub driver: String,
    /// The CSI driver name (`iscsi.csi.moor.io`).
    pub name: String,
    /// This node's name: NodeGetInfo's node_id.
    pub node_id: String,
    /// NodeGetInfo's `max_volumes_per_node` (0: no limit).
    pub max_volumes: u64,
    /// NodeGetInfo's topology segments.
    pub topology: BTreeMap<String, String>,
    /// The daemon's executor.
    pub handler: Arc<dyn Handler>,
}

/// `Err(missing_argument)` when `value` is empty.
fn required(method: &str, field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(refuse(
            "missing_argument",
            format!("{method}: {field} is required"),
        ));
    }
    Ok(())
}

/// Runs a call's `body` in its debug span (method, volume_id, driver), the request logged
/// first (its secrets stripped: see [`super::redact`]) and a refusal logged last.
async fn traced<T, R: std::fmt::Debug + Sync>(
    method: &'static str,
    volume_id: &str,
    driver: &str,
    req: &R,
    body: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let span = tracing::debug_span!("csi", method, volume_id = %volume_id, driver = %driver);
    async {
        tracing::debug!(request = ?req, "csi call");
        let out = body.await;
        if let Err(e) = &out {
            tracing::debug!(code = ?e.code(), message = e.message(), "csi call refused");
        }
        out
    }
    .instrument(span)
    .await
}

/// A byte or inode count as the spec's int64.
fn int64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn usage(unit: volume_usage::Unit, u: &api::Usage) -> VolumeUsage {
    VolumeUsage {
        available: int64(u.available),
        total: int64(u.total),
        used: int64(u.used),
        unit: unit as i32,
    }
}

/// A failure's status, or Internal for an answer of the wrong kind.
fn unexpected(method: &str, r: api::Response) -> Status {
    match r {
        api::Response::Failed(f) => status_of(&f),
        other => Status::internal(format!(
            "{method}: the daemon answered with an unexpected {other:?}"
        )),
    }
}

impl NodeService {
    /// The capability (required), its mode and access mode, checked against the driver.
    fn capability<'a>(
        &self,
        method: &str,
        cap: Option<&'a VolumeCapability>,
    ) -> Result<(&'a VolumeCapability, VolumeMode, AccessMode), Status> {
        let cap = cap.ok_or_else(|| {
            refuse(
                "missing_argument",
                format!("{method}: volume_capability is required"),
            )
        })?;
        let (mode, access) = translate::capability(cap).map_err(|f| status_of(&f))?;
        translate::check_access(&self.driver, mode, access).map_err(|f| status_of(&f))?;
        Ok((cap, mode, access))
    }

    /// Runs a call whose answer is `Done` (stage, unstage, publish, unpublish).
    async fn run(&self, method: &str, volume_id: &str, call: CsiCall) -> Result<(), Status> {
        match self.call(volume_id, call).await? {
            api::Response::Done => Ok(()),
            other => Err(unexpected(method, other)),
        }
    }

    /// Runs `call` through the daemon's handler on a blocking thread and waits for its one
    /// answer.
    async fn call(&self, volume_id: &str, call: CsiCall) -> Result<api::Response, Status> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tx = Mutex::new(Some(tx));
        let answer = Answer::new(move |r: &api::Response| {
            let sender = tx.lock().unwrap_or_else(PoisonError::into_inner).take();
            if let Some(sender) = sender {
                // The caller may have gone (kubelet's own timeout): nobody is left to tell.
                let _ = sender.send(r.clone());
            }
        });
        let req = api::Request::Csi {
            driver: self.driver.clone(),
            volume_id: volume_id.to_owned(),
            call,
        };
        let handler = self.handler.clone();
        let span = tracing::Span::current();
        // Not awaited: the handler returns when the operation really ended, which may be
        // after its deadline's answer; the answer is what ends this call.
        drop(tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            handler.handle(req, &answer);
        }));
        rx.await.map_err(|_| {
            Status::internal(format!(
                "volume {volume_id}: the daemon ended the call without an answer"
            ))
        })
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        req: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        const M: &str = "NodeStageVolume";
        let req = req.into_inner();
        traced(M, &req.volume_id, &self.name, &req, async {
            required(M, "volume_id", &req.volume_id)?;
            required(M, "staging_target_path", &req.staging_target_path)?;
            let (cap, mode, access) = self.capability(M, req.volume_capability.as_ref())?;
            let options =
                translate::options(&req.volume_context, mount_of(cap), false, &req.secrets)
                    .map_err(|f| status_of(&f))?;
            let call = CsiCall::Stage {
                staging_path: req.staging_target_path.clone(),
                mode,
                access,
                options,
            };
            self.run(M, &req.volume_id, call).await?;
            Ok(Response::new(NodeStageVolumeResponse {}))
        })
        .await
    }

    async fn node_unstage_volume(
        &self,
        req: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        const M: &str = "NodeUnstageVolume";
        let req = req.into_inner();
        traced(M, &req.volume_id, &self.name, &req, async {
            required(M, "volume_id", &req.volume_id)?;
            required(M, "staging_target_path", &req.staging_target_path)?;
            let call = CsiCall::Unstage {
                staging_path: req.staging_target_path.clone(),
            };
            self.run(M, &req.volume_id, call).await?;
            Ok(Response::new(NodeUnstageVolumeResponse {}))
        })
        .await
    }

    async fn node_publish_volume(
        &self,
        req: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        const M: &str = "NodePublishVolume";
        let req = req.into_inner();
        traced(M, &req.volume_id, &self.name, &req, async {
            required(M, "volume_id", &req.volume_id)?;
            if translate::is_ephemeral(&req.volume_context) {
                // kubelet publishes an inline ephemeral volume without staging it, and moor
                // only publishes stages (a stage ends only at NodeUnstageVolume).
                return Err(refuse(
                    "unsupported_capability",
                    format!("{M}: volume {}: inline ephemeral CSI volumes are not served (declare only Persistent in the CSIDriver)", req.volume_id),
                ));
            }
            // moor stages (STAGE_UNSTAGE_VOLUME), so the spec makes the staging path required.
            required(M, "staging_target_path", &req.staging_target_path)?;
            required(M, "target_path", &req.target_path)?;
            let (cap, mode, access) = self.capability(M, req.volume_capability.as_ref())?;
            let options = translate::options(
                &req.volume_context,
                mount_of(cap),
                req.readonly,
                &req.secrets,
            )
            .map_err(|f| status_of(&f))?;
            let call = CsiCall::Publish {
                staging_path: req.staging_target_path.clone(),
                target: req.target_path.clone(),
                mode,
                access,
                options,
            };
            self.run(M, &req.volume_id, call).await?;
            Ok(Response::new(NodePublishVolumeResponse {}))
        })
        .await
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        const M: &str = "NodeUnpublishVolume";
        let req = req.into_inner();
        traced(M, &req.volume_id, &self.name, &req, async {
            required(M, "volume_id", &req.volume_id)?;
            required(M, "target_path", &req.target_path)?;
            let call = CsiCall::Unpublish {
                target: req.target_path.clone(),
            };
            self.run(M, &req.volume_id, call).await?;
            Ok(Response::new(NodeUnpublishVolumeResponse {}))
        })
        .await
    }

    async fn node_get_volume_stats(
        &self,
        req: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        const M: &str = "NodeGetVolumeStats";
        let req = req.into_inner();
        traced(M, &req.volume_id, &self.name, &req, async {
            required(M, "volume_id", &req.volume_id)?;
            required(M, "volume_path", &req.volume_path)?;
            let call = CsiCall::Stats {
                path: req.volume_path.clone(),
            };
            match self.call(&req.volume_id, call).await? {
                api::Response::VolumeStats {
                    bytes,
                    inodes,
                    size,
                    condition,
                    ..
                } => {
                    let mut out = Vec::new();
                    if let Some(b) = &bytes {
                        out.push(usage(volume_usage::Unit::Bytes, b));
                    }
                    if let Some(i) = &inodes {
                        out.push(usage(volume_usage::Unit::Inodes, i));
                    }
                    if let Some(total) = size {
                        out.push(VolumeUsage {
                            total: int64(total),
                            unit: volume_usage::Unit::Bytes as i32,
                            ..VolumeUsage::default()
                        });
                    }
                    Ok(Response::new(NodeGetVolumeStatsResponse {
                        usage: out,
                        volume_condition: Some(VolumeCondition {
                            abnormal: condition.abnormal,
                            message: condition.message,
                        }),
                    }))
                }
                other => Err(unexpected(M, other)),
            }
        })
        .await
    }

    async fn node_expand_volume(
        &self,
        req: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        const M: &str = "NodeExpandVolume";
        let req = req.into_inner();
        traced(M, &req.volume_id, &self.name, &req, async {
            required(M, "volume_id", &req.volume_id)?;
            required(M, "volume_path", &req.volume_path)?;
            if req.volume_capability.is_some() {
                self.capability(M, req.volume_capability.as_ref())?;
            }
            let range = req.capacity_range.unwrap_or_default();
            if range.required_bytes < 0
                || range.limit_bytes < 0
                || (range.limit_bytes > 0 && range.required_bytes > range.limit_bytes)
            {
                return Err(refuse(
                    "bad_options",
                    format!(
                        "{M}: capacity_range required_bytes {} / limit_bytes {} is not a range",
                        range.required_bytes, range.limit_bytes
                    ),
                ));
            }
            let call = CsiCall::Expand {
                path: req.volume_path.clone(),
                required_bytes: range.required_bytes.unsigned_abs(),
            };
            match self.call(&req.volume_id, call).await? {
                api::Response::Expanded { capacity_bytes } => {
                    Ok(Response::new(NodeExpandVolumeResponse {
                        capacity_bytes: int64(capacity_bytes),
                    }))
                }
                other => Err(unexpected(M, other)),
            }
        })
        .await
    }

    async fn node_get_capabilities(
        &self,
        _req: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        tracing::debug!(method = "NodeGetCapabilities", driver = %self.name, "csi call");
        let capabilities = NODE_CAPABILITIES
            .iter()
            .map(|t| NodeServiceCapability {
                r#type: Some(node_service_capability::Type::Rpc(
                    node_service_capability::Rpc { r#type: *t as i32 },
                )),
            })
            .collect();
        Ok(Response::new(NodeGetCapabilitiesResponse { capabilities }))
    }

    async fn node_get_info(
        &self,
        _req: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        tracing::debug!(method = "NodeGetInfo", driver = %self.name, "csi call");
        let mut segments: std::collections::HashMap<String, String> =
            self.topology.clone().into_iter().collect();
        segments.insert(super::HOSTNAME_LABEL.to_owned(), self.node_id.clone());
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            max_volumes_per_node: int64(self.max_volumes),
            accessible_topology: Some(Topology { segments }),
        }))
    }
}

/// The capability's filesystem details, for a mount access type.
fn mount_of(
    cap: &VolumeCapability,
) -> Option<&super::proto::csi::v1::volume_capability::MountVolume> {
    match &cap.access_type {
        Some(AccessType::Mount(m)) => Some(m),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use super::super::proto::csi::v1::CapacityRange;
    use super::super::proto::csi::v1::volume_capability::{
        AccessMode as Am, BlockVolume, MountVolume, access_mode::Mode,
    };
    use super::*;
    use crate::api::{Condition, Failure, Usage};

    /// A daemon that records each request and answers with `answer`, then (optionally)
    /// goes on working for `linger`.
    struct Fake {
        seen: Mutex<Vec<api::Request>>,
        answer: api::Response,
        linger: Duration,
        calls: AtomicUsize,
    }

    impl Handler for Fake {
        fn handle(&self, req: api::Request, answer: &Arc<Answer>) {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.seen.lock().unwrap().push(req);
            answer.send(&self.answer);
            std::thread::sleep(self.linger);
        }
    }

    fn service(answer: api::Response) -> (NodeService, Arc<Fake>) {
        let fake = Arc::new(Fake {
            seen: Mutex::new(Vec::new()),
            answer,
            linger: Duration::ZERO,
            calls: AtomicUsize::new(0),
        });
        let svc = NodeService {
            driver: "iscsi".into(),
            name: "iscsi.csi.moor.io".into(),
            node_id: "node-a".into(),
            max_volumes: 16,
            topology: BTreeMap::from([("topology.moor.io/rack".into(), "r7".into())]),
            handler: fake.clone(),
        };
        (svc, fake)
    }

    fn mount_cap(mode: Mode) -> Option<VolumeCapability> {
        Some(VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume {
                fs_type: "ext4".into(),
                mount_flags: vec!["noatime".into()],
                volume_mount_group: String::new(),
            })),
            access_mode: Some(Am { mode: mode as i32 }),
        })
    }

    fn stage_req() -> NodeStageVolumeRequest {
        NodeStageVolumeRequest {
            volume_id: "pv-1".into(),
            staging_target_path:
                "/var/lib/kubelet/plugins/kubernetes.io/csi/iscsi.csi.moor.io/abc/globalmount"
                    .into(),
            volume_capability: mount_cap(Mode::SingleNodeWriter),
            volume_context: HashMap::from([
                ("targetPortal".into(), "10.0.0.1:3260".into()),
                ("iqn".into(), "iqn.2001-04.com.example:d".into()),
                ("lun".into(), "1".into()),
            ]),
            secrets: HashMap::from([("chapPassword".into(), "pw-9".into())]),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_stage_reaches_the_daemon_as_a_typed_csi_request() {
        let (svc, fake) = service(api::Response::Done);
        svc.node_stage_volume(Request::new(stage_req()))
            .await
            .unwrap();
        let seen = fake.seen.lock().unwrap();
        let [
            api::Request::Csi {
                driver,
                volume_id,
                call,
            },
        ] = seen.as_slice()
        else {
            panic!("{seen:?}");
        };
        assert_eq!((driver.as_str(), volume_id.as_str()), ("iscsi", "pv-1"));
        let CsiCall::Stage {
            staging_path,
            mode,
            access,
            options,
        } = call
        else {
            panic!("{call:?}");
        };
        assert!(staging_path.ends_with("/globalmount"));
        assert_eq!(
            (*mode, *access),
            (VolumeMode::Filesystem, AccessMode::SingleNodeWriter)
        );
        assert_eq!(options.fs_type, "ext4");
        assert_eq!(options.mount_options.words(), ["noatime"]);
        assert_eq!(options.user.get("lun").map(String::as_str), Some("1"));
        assert_eq!(options.secrets.len(), 1);
    }

    #[tokio::test]
    async fn a_publish_carries_target_readonly_and_block_mode() {
        let (svc, fake) = service(api::Response::Done);
        let req = NodePublishVolumeRequest {
            volume_id: "pv-1".into(),
            staging_target_path: "/s".into(),
            target_path: "/t".into(),
            readonly: true,
            volume_capability: Some(VolumeCapability {
                access_type: Some(AccessType::Block(BlockVolume {})),
                access_mode: Some(Am {
                    mode: Mode::MultiNodeMultiWriter as i32,
                }),
            }),
            volume_context: stage_req().volume_context,
            ..Default::default()
        };
        svc.node_publish_volume(Request::new(req)).await.unwrap();
        let seen = fake.seen.lock().unwrap();
        let api::Request::Csi {
            call:
                CsiCall::Publish {
                    target,
                    mode,
                    access,
                    options,
                    staging_path,
                },
            ..
        } = &seen[0]
        else {
            panic!("{seen:?}");
        };
        assert_eq!((target.as_str(), staging_path.as_str()), ("/t", "/s"));
        assert_eq!(
            (*mode, *access),
            (VolumeMode::Block, AccessMode::MultiNodeMultiWriter)
        );
        assert!(options.read_only);
    }

    #[tokio::test]
    async fn missing_arguments_are_invalid_before_the_daemon_sees_them() {
        let (svc, fake) = service(api::Response::Done);
        let mut no_id = stage_req();
        no_id.volume_id.clear();
        let mut no_path = stage_req();
        no_path.staging_target_path.clear();
        let mut no_cap = stage_req();
        no_cap.volume_capability = None;
        for req in [no_id, no_path, no_cap] {
            let e = svc.node_stage_volume(Request::new(req)).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(
                e.message()
                    .starts_with("missing_argument: NodeStageVolume: "),
                "{}",
                e.message()
            );
        }
        let e = svc
            .node_unstage_volume(Request::new(NodeUnstageVolumeRequest {
                volume_id: "v".into(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let e = svc
            .node_publish_volume(Request::new(NodePublishVolumeRequest {
                volume_id: "v".into(),
                staging_target_path: "/s".into(),
                volume_capability: mount_cap(Mode::SingleNodeWriter),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert!(e.message().contains("target_path"), "{}", e.message());
        let e = svc
            .node_unpublish_volume(Request::new(NodeUnpublishVolumeRequest {
                target_path: "/t".into(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert!(e.message().contains("volume_id"), "{}", e.message());
        let e = svc
            .node_get_volume_stats(Request::new(NodeGetVolumeStatsRequest {
                volume_id: "v".into(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert!(e.message().contains("volume_path"), "{}", e.message());
        let e = svc
            .node_expand_volume(Request::new(NodeExpandVolumeRequest {
                volume_path: "/t".into(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(fake.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn an_inline_ephemeral_publish_is_refused_as_unsupported() {
        let (svc, fake) = service(api::Response::Done);
        let req = NodePublishVolumeRequest {
            volume_id: "csi-abc".into(),
            target_path: "/t".into(),
            volume_capability: mount_cap(Mode::SingleNodeWriter),
            volume_context: HashMap::from([("csi.storage.k8s.io/ephemeral".into(), "true".into())]),
            ..Default::default()
        };
        let e = svc
            .node_publish_volume(Request::new(req))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("inline ephemeral"), "{}", e.message());
        assert_eq!(fake.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn an_access_mode_the_driver_cannot_keep_is_refused_with_invalid_argument() {
        let (svc, fake) = service(api::Response::Done);
        let mut req = stage_req();
        req.volume_capability = mount_cap(Mode::MultiNodeMultiWriter);
        let e = svc.node_stage_volume(Request::new(req)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().starts_with("unsupported_capability: "),
            "{}",
            e.message()
        );
        let mut reserved = stage_req();
        reserved
            .volume_context
            .insert("kubernetes.io/fsType".into(), "xfs".into());
        let e = svc
            .node_stage_volume(Request::new(reserved))
            .await
            .unwrap_err();
        assert!(e.message().starts_with("bad_options: "), "{}", e.message());
        assert_eq!(fake.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn the_daemons_failure_reason_picks_the_status_code() {
        for (reason, code) in [
            ("busy", tonic::Code::Aborted),
            ("conflict", tonic::Code::AlreadyExists),
            ("key_in_use", tonic::Code::FailedPrecondition),
            ("unknown_volume", tonic::Code::NotFound),
            ("mount_failed", tonic::Code::Internal),
        ] {
            let (svc, _) = service(api::Response::Failed(Failure::labelled(
                reason,
                "volume pv-1: why",
            )));
            let e = svc
                .node_stage_volume(Request::new(stage_req()))
                .await
                .unwrap_err();
            assert_eq!(e.code(), code, "{reason}");
            assert_eq!(e.message(), format!("{reason}: volume pv-1: why"));
        }
    }

    async fn stats_of(svc: &NodeService) -> Result<NodeGetVolumeStatsResponse, Status> {
        let req = NodeGetVolumeStatsRequest {
            volume_id: "v".into(),
            volume_path: "/t".into(),
            ..Default::default()
        };
        svc.node_get_volume_stats(Request::new(req))
            .await
            .map(Response::into_inner)
    }

    #[tokio::test]
    async fn stats_report_bytes_inodes_and_the_condition() {
        let (svc, _) = service(api::Response::VolumeStats {
            mode: VolumeMode::Filesystem,
            bytes: Some(Usage {
                total: 100,
                available: 60,
                used: 40,
            }),
            inodes: Some(Usage {
                total: 10,
                available: 7,
                used: 3,
            }),
            size: None,
            condition: Condition {
                abnormal: true,
                message: "share unreachable".into(),
            },
        });
        let r = stats_of(&svc).await.unwrap();
        assert_eq!(r.usage.len(), 2);
        assert_eq!(
            (r.usage[0].unit, r.usage[0].total, r.usage[0].used),
            (volume_usage::Unit::Bytes as i32, 100, 40)
        );
        assert_eq!(
            (r.usage[1].unit, r.usage[1].available),
            (volume_usage::Unit::Inodes as i32, 7)
        );
        let c = r.volume_condition.unwrap();
        assert!(c.abnormal);
        assert_eq!(c.message, "share unreachable");
        let (block, _) = service(api::Response::VolumeStats {
            mode: VolumeMode::Block,
            bytes: None,
            inodes: None,
            size: Some(1 << 30),
            condition: Condition {
                abnormal: false,
                message: String::new(),
            },
        });
        let r = stats_of(&block).await.unwrap();
        assert_eq!(r.usage.len(), 1);
        assert_eq!(r.usage[0].total, 1 << 30);
        // An answer of the wrong kind is the daemon's bug, said as Internal.
        let (wrong, _) = service(api::Response::Done);
        let e = stats_of(&wrong).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Internal);
    }

    #[tokio::test]
    async fn expand_passes_the_required_size_and_returns_the_capacity() {
        let (svc, fake) = service(api::Response::Expanded {
            capacity_bytes: 2 << 30,
        });
        let r = svc
            .node_expand_volume(Request::new(NodeExpandVolumeRequest {
                volume_id: "v".into(),
                volume_path: "/t".into(),
                capacity_range: Some(CapacityRange {
                    required_bytes: 2 << 30,
                    limit_bytes: 0,
                }),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.capacity_bytes, 2 << 30);
        let first = fake.seen.lock().unwrap().remove(0);
        assert!(
            matches!(&first, api::Request::Csi { call: CsiCall::Expand { required_bytes, .. }, .. } if *required_bytes == 2 << 30),
            "{first:?}"
        );
        let e = svc
            .node_expand_volume(Request::new(NodeExpandVolumeRequest {
                volume_id: "v".into(),
                volume_path: "/t".into(),
                capacity_range: Some(CapacityRange {
                    required_bytes: 5,
                    limit_bytes: 4,
                }),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn info_and_capabilities_say_what_the_node_offers() {
        let (svc, _) = service(api::Response::Done);
        let info = svc
            .node_get_info(Request::new(NodeGetInfoRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.node_id, "node-a");
        assert_eq!(info.max_volumes_per_node, 16);
        let seg = info.accessible_topology.unwrap().segments;
        assert_eq!(
            seg.get("kubernetes.io/hostname").map(String::as_str),
            Some("node-a")
        );
        assert_eq!(
            seg.get("topology.moor.io/rack").map(String::as_str),
            Some("r7")
        );
        let caps = svc
            .node_get_capabilities(Request::new(NodeGetCapabilitiesRequest {}))
            .await
            .unwrap()
            .into_inner()
            .capabilities;
        let types: Vec<i32> = caps
            .iter()
            .map(|c| match c.r#type {
                Some(node_service_capability::Type::Rpc(r)) => r.r#type,
                None => 0,
            })
            .collect();
        use node_service_capability::rpc::Type as T;
        for t in [
            T::StageUnstageVolume,
            T::GetVolumeStats,
            T::VolumeCondition,
            T::ExpandVolume,
            T::SingleNodeMultiWriter,
        ] {
            assert!(types.contains(&(t as i32)), "{t:?}");
        }
        assert!(!types.contains(&(T::VolumeMountGroup as i32)));
    }

    #[tokio::test]
    async fn the_answer_ends_the_call_even_while_the_operation_goes_on() {
        let fake = Arc::new(Fake {
            seen: Mutex::new(Vec::new()),
            answer: api::Response::Failed(Failure::labelled("timeout", "volume pv-1: deadline")),
            linger: Duration::from_secs(3),
            calls: AtomicUsize::new(0),
        });
        let (mut svc, _) = service(api::Response::Done);
        svc.handler = fake;
        let t = Instant::now();
        let e = svc
            .node_stage_volume(Request::new(stage_req()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::DeadlineExceeded);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
}
