//! The CSI front end of a real `moor daemon` (tier 2: root, a real daemon process, its real
//! Unix sockets), dialled as kubelet dials it.
//!
//! What a user checks: every enabled driver answers Identity under its own name on its own
//! socket (0600, in a 0750 directory) and is ready; the Controller service answers only its
//! capabilities; NodeGetInfo reports the node, the configured limit and topology; malformed
//! Node calls are refused with InvalidArgument and moor's reason before any work; kubelet's
//! plugin watcher finds each driver through its registration socket, which comes back when
//! removed; and shutdown leaves no socket behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Daemon, require_privileged_sandbox};
use moor::csi::proto::csi::v1::volume_capability::{
    AccessMode, AccessType, BlockVolume, MountVolume, access_mode::Mode,
};
use moor::csi::proto::csi::v1::{
    ControllerGetCapabilitiesRequest, GetPluginCapabilitiesRequest, GetPluginInfoRequest,
    NodeGetInfoRequest, NodePublishVolumeRequest, NodeStageVolumeRequest, ProbeRequest,
    ProbeResponse, VolumeCapability, controller_service_capability, plugin_capability,
};
use moor::csi::proto::registration::{InfoRequest, RegistrationStatus};
use moor::testkit::csi::CsiClient;

const ALL: [&str; 7] = ["iscsi", "rbd", "fc", "nfs", "glusterfs", "cephfs", "local"];

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn wait_for(what: &str, d: &Daemon, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen; log:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn mount_cap(m: Mode) -> Option<VolumeCapability> {
    Some(VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode { mode: m as i32 }),
    })
}

#[test]
#[ignore = "tier 2: needs root (a real daemon on a scratch kubelet tree)"]
fn every_driver_answers_identity_on_its_own_socket_and_is_ready() {
    require_privileged_sandbox();
    let d = Daemon::start_with_csi();
    for driver in ALL {
        let c = d.csi(driver);
        let sock = d.csi_socket(driver);
        assert!(
            std::fs::symlink_metadata(&sock)
                .unwrap()
                .file_type()
                .is_socket()
        );
        assert_eq!(mode(&sock), 0o600, "{}", sock.display());
        assert_eq!(mode(sock.parent().unwrap()), 0o750);
        let info = c
            .run(c.identity().get_plugin_info(GetPluginInfoRequest {}))
            .unwrap()
            .into_inner();
        assert_eq!(info.name, format!("{driver}.csi.moor.io"));
        assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));
        let caps = c
            .run(
                c.identity()
                    .get_plugin_capabilities(GetPluginCapabilitiesRequest {}),
            )
            .unwrap()
            .into_inner()
            .capabilities;
        let services: Vec<i32> = caps
            .iter()
            .filter_map(|c| match c.r#type {
                Some(plugin_capability::Type::Service(s)) => Some(s.r#type),
                _ => None,
            })
            .collect();
        use plugin_capability::service::Type as S;
        assert_eq!(services, [S::VolumeAccessibilityConstraints as i32]);
        let probe = c
            .run(c.identity().probe(ProbeRequest {}))
            .unwrap()
            .into_inner();
        assert_eq!(probe.ready, Some(true));
        let ctrl = c
            .run(
                c.controller()
                    .controller_get_capabilities(ControllerGetCapabilitiesRequest {}),
            )
            .unwrap()
            .into_inner()
            .capabilities;
        let rpcs: Vec<i32> = ctrl
            .iter()
            .filter_map(|c| c.r#type)
            .map(|controller_service_capability::Type::Rpc(r)| r.r#type)
            .collect();
        assert_eq!(
            rpcs,
            [controller_service_capability::rpc::Type::SingleNodeMultiWriter as i32]
        );
    }
    // Any other Controller method is unimplemented: a raw call to CreateVolume.
    let c = d.csi("nfs");
    let status = c
        .run(async {
            let mut grpc = tonic::client::Grpc::new(c.channel());
            grpc.ready().await.unwrap();
            grpc.unary::<ProbeRequest, ProbeResponse, _>(
                tonic::Request::new(ProbeRequest {}),
                tonic::codegen::http::uri::PathAndQuery::from_static(
                    "/csi.v1.Controller/CreateVolume",
                ),
                tonic_prost::ProstCodec::default(),
            )
            .await
        })
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
}

#[test]
#[ignore = "tier 2: needs root (a real daemon on a scratch kubelet tree)"]
fn only_the_configured_drivers_serve_with_their_limit_and_topology() {
    require_privileged_sandbox();
    let d = Daemon::start_with_csi_config(
        "csi:\n  enabled: true\n  drivers: [local, nfs]\n  max-volumes-per-node: {local: 5}\n  topology: {topology.moor.io/rack: r9}\n  register: false\n",
    );
    let local = d.csi("local");
    let info = local
        .run(local.node().node_get_info(NodeGetInfoRequest {}))
        .unwrap()
        .into_inner();
    assert_eq!(info.node_id, d.node);
    assert_eq!(info.max_volumes_per_node, 5);
    let seg = info.accessible_topology.unwrap().segments;
    assert_eq!(seg.get("kubernetes.io/hostname"), Some(&d.node));
    assert_eq!(
        seg.get("topology.moor.io/rack").map(String::as_str),
        Some("r9")
    );
    let nfs = d.csi("nfs");
    let info = nfs
        .run(nfs.node().node_get_info(NodeGetInfoRequest {}))
        .unwrap()
        .into_inner();
    assert_eq!(info.max_volumes_per_node, 0, "no limit configured for nfs");
    assert!(!d.csi_socket("iscsi").exists());
    assert!(!d.registration_socket("local").exists(), "register: false");
}

#[test]
#[ignore = "tier 2: needs root (a real daemon on a scratch kubelet tree)"]
fn malformed_node_calls_are_invalid_argument_with_moors_reason() {
    require_privileged_sandbox();
    let d = Daemon::start_with_csi();
    let c = d.csi("nfs");
    let stage = NodeStageVolumeRequest {
        volume_id: String::new(),
        staging_target_path: d
            .kubelet_dir()
            .join("plugins/kubernetes.io/csi/nfs.csi.moor.io/h/globalmount")
            .display()
            .to_string(),
        volume_capability: mount_cap(Mode::MultiNodeMultiWriter),
        ..Default::default()
    };
    let e = c
        .run(c.node().node_stage_volume(stage.clone()))
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "missing_argument: NodeStageVolume: volume_id is required"
    );
    let mut no_cap = stage.clone();
    no_cap.volume_id = "pv-a".into();
    no_cap.volume_capability = None;
    let e = c.run(c.node().node_stage_volume(no_cap)).unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("volume_capability"), "{}", e.message());
    let mut reserved = stage.clone();
    reserved.volume_id = "pv-a".into();
    reserved
        .volume_context
        .insert("kubernetes.io/secret/x".into(), "eA==".into());
    let e = c.run(c.node().node_stage_volume(reserved)).unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("bad_options: "), "{}", e.message());
    // A share has no block device.
    let block = NodePublishVolumeRequest {
        volume_id: "pv-a".into(),
        staging_target_path: stage.staging_target_path.clone(),
        target_path: d
            .kubelet_dir()
            .join("pods/u/volumes/kubernetes.io~csi/pv-a/mount")
            .display()
            .to_string(),
        volume_capability: Some(VolumeCapability {
            access_type: Some(AccessType::Block(BlockVolume {})),
            access_mode: Some(AccessMode {
                mode: Mode::SingleNodeWriter as i32,
            }),
        }),
        ..Default::default()
    };
    let e = c.run(c.node().node_publish_volume(block)).unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().starts_with("unsupported_capability: "),
        "{}",
        e.message()
    );
    assert!(d.mounts().is_empty(), "{:?}", d.mounts());
}

/// kubelet's plugin watcher, faked: every socket in `plugins_registry/` is dialled, GetInfo
/// read, the endpoint dialled for the driver's name, and the verdict notified.
#[test]
#[ignore = "tier 2: needs root (a real daemon on a scratch kubelet tree)"]
fn a_fake_kubelet_watcher_registers_every_driver() {
    require_privileged_sandbox();
    let d = Daemon::start_with_csi();
    let registry = d.kubelet_dir().join("plugins_registry");
    let mut found = Vec::new();
    for e in std::fs::read_dir(&registry).unwrap() {
        let path = e.unwrap().path();
        let reg = CsiClient::connect(&path, Duration::from_secs(5)).unwrap();
        let info = reg
            .run(reg.registration().get_info(InfoRequest {}))
            .unwrap()
            .into_inner();
        assert_eq!(info.r#type, "CSIPlugin");
        assert_eq!(info.supported_versions, ["1.0.0"]);
        let endpoint = Path::new(&info.endpoint);
        assert!(endpoint.is_absolute(), "{}", info.endpoint);
        let csi = CsiClient::connect(endpoint, Duration::from_secs(5)).unwrap();
        let name = csi
            .run(csi.identity().get_plugin_info(GetPluginInfoRequest {}))
            .unwrap()
            .into_inner()
            .name;
        assert_eq!(
            name, info.name,
            "the endpoint serves the driver GetInfo named"
        );
        let verdict = if name == "rbd.csi.moor.io" {
            RegistrationStatus {
                plugin_registered: false,
                error: "version 1.0.0 not supported by the fake".into(),
            }
        } else {
            RegistrationStatus {
                plugin_registered: true,
                error: String::new(),
            }
        };
        reg.run(reg.registration().notify_registration_status(verdict))
            .unwrap();
        found.push(name);
    }
    found.sort();
    let mut want: Vec<String> = ALL.iter().map(|d| format!("{d}.csi.moor.io")).collect();
    want.sort();
    assert_eq!(found, want);
    wait_for("the refusal logged", &d, || {
        d.log_text().lines().any(|l| {
            l.contains("ERROR")
                && l.contains("rbd.csi.moor.io")
                && l.contains("version 1.0.0 not supported by the fake")
        })
    });
    assert!(d.log_text().contains("kubelet registered the CSI driver"));
}

#[test]
#[ignore = "tier 2: needs root (a real daemon on a scratch kubelet tree)"]
fn a_removed_registration_socket_comes_back_and_shutdown_removes_every_socket() {
    require_privileged_sandbox();
    let mut d = Daemon::start_with_csi();
    let reg = d.registration_socket("iscsi");
    std::fs::remove_file(&reg).unwrap();
    wait_for("the registration socket re-created", &d, || reg.exists());
    let c = CsiClient::connect(&reg, Duration::from_secs(5)).unwrap();
    let info = c
        .run(c.registration().get_info(InfoRequest {}))
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "iscsi.csi.moor.io");
    drop(c);
    // kubelet's whole registry directory wiped.
    std::fs::remove_dir_all(d.kubelet_dir().join("plugins_registry")).unwrap();
    wait_for("the registry re-created", &d, || {
        d.registration_socket("nfs").exists()
    });
    d.stop();
    for driver in ALL {
        assert!(!d.csi_socket(driver).exists(), "{driver}");
        assert!(!d.registration_socket(driver).exists(), "{driver}");
    }
}
