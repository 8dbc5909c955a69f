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

/// Python's grpcio (no moor code on the client side), run on `socket`.
fn grpcio(socket: &Path, method: &str, request_hex: &str, authority: Option<&str>) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/csi/raw_call.py");
    // Debian's python3-grpcio: the interpreter it belongs to, not whatever `python3` is first.
    let mut cmd = std::process::Command::new("/usr/bin/python3");
    cmd.arg(&script).arg(socket).arg(method).arg(request_hex);
    cmd.args(authority);
    let out = cmd.output().expect("run /usr/bin/python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "grpcio client failed (apt-get install python3-grpcio): {stderr}"
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// An independent client (grpcio) reads Identity; the same client sending the socket path
/// as `:authority`, as kubelet before 1.26 does, is refused by h2 — and the daemon's log
/// says why, naming the minimum kubelet version.
#[test]
#[ignore = "tier 2: needs root (a real daemon) and Debian's python3-grpcio"]
fn an_old_kubelets_authority_is_refused_with_a_warning_naming_kubelet_1_26() {
    require_privileged_sandbox();
    let d = Daemon::start_with_csi_config("csi:\n  enabled: true\n  drivers: [nfs]\n");
    let sock = d.csi_socket("nfs");
    let _ = d.csi("nfs");
    let ok = grpcio(&sock, "/csi.v1.Identity/GetPluginInfo", "", None);
    // GetPluginInfoResponse: field 1 (name) = "nfs.csi.moor.io".
    let name_hex: String = "nfs.csi.moor.io"
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(ok.starts_with("OK 0a0f") && ok.contains(&name_hex), "{ok}");
    assert!(!d.log_text().contains("minimum_kubelet"));
    let old = grpcio(
        &sock,
        "/csi.v1.Identity/GetPluginInfo",
        "",
        Some(sock.to_str().unwrap()),
    );
    assert!(old.starts_with("ERR "), "{old}");
    wait_for("the old-kubelet warning", &d, || {
        d.log_text().lines().any(|l| {
            l.contains("\"level\":\"WARN\"")
                && l.contains("kubelet 1.26 or newer")
                && l.contains(&format!("\"authority\":\"{}\"", sock.display()))
        })
    });
}

/// Every byte under `dir` (the journal and state files), as text.
fn all_file_text(dir: &Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let md = std::fs::symlink_metadata(&p).unwrap();
        if md.is_dir() {
            out.push_str(&all_file_text(&p));
        } else if md.is_file() {
            out.push_str(&String::from_utf8_lossy(&std::fs::read(&p).unwrap()));
        }
    }
    out
}

/// A CSI local directory volume's stage and publish requests, through gRPC.
fn local_requests(
    d: &Daemon,
    id: &str,
    dir: &Path,
    secrets: &[(&str, &str)],
) -> (NodeStageVolumeRequest, NodePublishVolumeRequest) {
    let paths = d.csi_paths();
    let context: std::collections::HashMap<String, String> =
        [("path".to_owned(), dir.display().to_string())].into();
    let secrets: std::collections::HashMap<String, String> = secrets
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let stage = NodeStageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: paths.staging("local", id).display().to_string(),
        volume_capability: mount_cap(Mode::SingleNodeWriter),
        volume_context: context.clone(),
        secrets: secrets.clone(),
        ..Default::default()
    };
    let publish = NodePublishVolumeRequest {
        volume_id: id.into(),
        staging_target_path: stage.staging_target_path.clone(),
        target_path: paths.target("u-1", id).display().to_string(),
        volume_capability: mount_cap(Mode::SingleNodeWriter),
        volume_context: context,
        secrets,
        ..Default::default()
    };
    (stage, publish)
}

/// A directory under the daemon's allowed root.
fn volume_dir(d: &Daemon, name: &str) -> std::path::PathBuf {
    let dir = d.allowed_root().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Unpublishes and unstages what [`local_requests`] made; both must succeed.
fn tear_down(c: &CsiClient, stage: &NodeStageVolumeRequest, publish: &NodePublishVolumeRequest) {
    use moor::csi::proto::csi::v1::{NodeUnpublishVolumeRequest, NodeUnstageVolumeRequest};
    c.run(c.node().node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: publish.volume_id.clone(),
        target_path: publish.target_path.clone(),
    }))
    .unwrap();
    c.run(c.node().node_unstage_volume(NodeUnstageVolumeRequest {
        volume_id: stage.volume_id.clone(),
        staging_target_path: stage.staging_target_path.clone(),
    }))
    .unwrap();
}

/// A call's secrets reach neither the daemon's debug log nor its journal, while the call
/// itself is logged (method, volume_id, driver) with the secret's key name only.
#[test]
#[ignore = "tier 2: needs root (a real daemon on a scratch kubelet tree, real binds)"]
fn secrets_are_stripped_from_every_logged_call_and_never_journaled() {
    require_privileged_sandbox();
    const SECRET: &str = "moor-secret-value-7f3a9";
    let d = Daemon::start_with_csi_config("csi:\n  enabled: true\n  drivers: [local]\n");
    let dir = volume_dir(&d, "vol-s");
    let c = d.csi("local");
    let (stage, publish) = local_requests(&d, "pv-secret", &dir, &[("token", SECRET)]);
    c.run(c.node().node_stage_volume(stage.clone())).unwrap();
    c.run(c.node().node_publish_volume(publish.clone()))
        .unwrap();
    assert!(!d.stage_records().is_empty(), "the stage was journaled");
    let log = d.log_text();
    for method in ["NodeStageVolume", "NodePublishVolume"] {
        assert!(
            log.lines().any(|l| l.contains(method)
                && l.contains("pv-secret")
                && l.contains("local.csi.moor.io")
                && l.contains("token")),
            "{method} not logged with its volume, driver and secret key:\n{log}"
        );
    }
    assert!(!log.contains(SECRET), "a secret in the log:\n{log}");
    assert!(
        !all_file_text(&d.state_dir()).contains(SECRET),
        "a secret in the state dir"
    );
    tear_down(&c, &stage, &publish);
    assert!(!d.log_text().contains(SECRET));
}

/// `csi.max-volumes-per-node` is both what NodeGetInfo tells kubelet and what the daemon
/// enforces: a stage beyond it is ResourceExhausted with moor's reason.
#[test]
#[ignore = "tier 2: needs root (a real daemon on a scratch kubelet tree, real binds)"]
fn a_stage_beyond_the_configured_limit_is_resource_exhausted() {
    require_privileged_sandbox();
    let d = Daemon::start_with_csi_config(
        "csi:\n  enabled: true\n  drivers: [local]\n  max-volumes-per-node: {local: 1}\n",
    );
    let c = d.csi("local");
    let info = c
        .run(c.node().node_get_info(NodeGetInfoRequest {}))
        .unwrap()
        .into_inner();
    assert_eq!(info.max_volumes_per_node, 1);
    let (first, first_pub) = local_requests(&d, "pv-one", &volume_dir(&d, "one"), &[]);
    c.run(c.node().node_stage_volume(first.clone())).unwrap();
    let (second, _) = local_requests(&d, "pv-two", &volume_dir(&d, "two"), &[]);
    let e = c.run(c.node().node_stage_volume(second)).unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{}", e.message());
    assert!(
        e.message().starts_with("too_many_volumes: "),
        "{}",
        e.message()
    );
    c.run(c.node().node_publish_volume(first_pub.clone()))
        .unwrap();
    tear_down(&c, &first, &first_pub);
}
