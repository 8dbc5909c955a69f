//! CSI conformance of moor's node plugin (tier 2: root, a real `moor daemon` with CSI on,
//! dialled over its Unix socket as kubelet dials it, through moor's gRPC client), with the
//! local driver's directory volumes, a loop-device filesystem and a raw block loop device.
//!
//! What the spec asks of a node plugin, each rule checked by what a CO would see: every
//! Identity and Node RPC (and ControllerGetCapabilities) answers; Stage, Publish, Unpublish
//! and Unstage are idempotent (twice is OK, and leaves one mount, then none); every required
//! field missing is InvalidArgument; stats or expansion of a volume the node does not have is
//! NotFound; a capability the driver cannot honour is InvalidArgument; the same volume_id
//! with other attributes is AlreadyExists, and a second volume_id for the same storage is
//! FailedPrecondition; a call on a volume with one in flight is Aborted at once and the one
//! in flight finishes whole; Probe is ready; NodeGetInfo names the node and its topology.
//! moor's own rule on top: nothing is mounted at kubelet's staging path, and data survives.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Daemon, is_mounted, mounts_under, require_privileged_sandbox, s, source};
use moor::csi::proto::csi::v1::volume_capability::{
    AccessMode, AccessType, BlockVolume, MountVolume, access_mode::Mode,
};
use moor::csi::proto::csi::v1::{
    CapacityRange, ControllerGetCapabilitiesRequest, GetPluginInfoRequest, NodeExpandVolumeRequest,
    NodeGetCapabilitiesRequest, NodeGetInfoRequest, NodeGetVolumeStatsRequest,
    NodeGetVolumeStatsResponse, NodePublishVolumeRequest, NodeStageVolumeRequest,
    NodeUnpublishVolumeRequest, NodeUnstageVolumeRequest, ProbeRequest, VolumeCapability,
    node_service_capability, volume_usage,
};
use moor::testkit::csi::CsiClient;
use tonic::Code;

const DRIVER: &str = "local.csi.moor.io";

/// A node with CSI on and a client on the local driver's socket.
struct Node {
    d: Daemon,
    c: CsiClient,
}

impl Node {
    fn start() -> Self {
        Self::from(Daemon::start_with_csi())
    }

    fn from(d: Daemon) -> Self {
        let c = d.csi("local");
        Node { d, c }
    }

    /// kubelet's staging path for volume handle `volume_id`.
    fn staging(&self, volume_id: &str) -> String {
        s(&self.d.csi_paths().staging("local", volume_id)).into()
    }

    /// kubelet's target for a filesystem volume of pod `uid`, its parent made as kubelet
    /// makes it (the target itself is the plugin's to create).
    fn target(&self, uid: &str, pv: &str) -> String {
        let t = self.d.csi_paths().target(uid, pv);
        std::fs::create_dir_all(t.parent().unwrap()).unwrap();
        s(&t).into()
    }

    fn stage(&self, r: &NodeStageVolumeRequest) -> Result<(), tonic::Status> {
        self.c
            .run(self.c.node().node_stage_volume(r.clone()))
            .map(drop)
    }

    fn unstage(&self, volume_id: &str, staging: &str) -> Result<(), tonic::Status> {
        let r = NodeUnstageVolumeRequest {
            volume_id: volume_id.into(),
            staging_target_path: staging.into(),
        };
        self.c.run(self.c.node().node_unstage_volume(r)).map(drop)
    }

    fn publish(&self, r: &NodePublishVolumeRequest) -> Result<(), tonic::Status> {
        self.c
            .run(self.c.node().node_publish_volume(r.clone()))
            .map(drop)
    }

    fn unpublish(&self, volume_id: &str, target: &str) -> Result<(), tonic::Status> {
        let r = NodeUnpublishVolumeRequest {
            volume_id: volume_id.into(),
            target_path: target.into(),
        };
        self.c.run(self.c.node().node_unpublish_volume(r)).map(drop)
    }

    fn stats(
        &self,
        volume_id: &str,
        path: &str,
    ) -> Result<NodeGetVolumeStatsResponse, tonic::Status> {
        let r = NodeGetVolumeStatsRequest {
            volume_id: volume_id.into(),
            volume_path: path.into(),
            staging_target_path: String::new(),
        };
        self.c
            .run(self.c.node().node_get_volume_stats(r))
            .map(tonic::Response::into_inner)
    }

    fn expand(&self, volume_id: &str, path: &str) -> Result<i64, tonic::Status> {
        let r = NodeExpandVolumeRequest {
            volume_id: volume_id.into(),
            volume_path: path.into(),
            capacity_range: Some(CapacityRange {
                required_bytes: 1 << 30,
                limit_bytes: 0,
            }),
            ..Default::default()
        };
        self.c
            .run(self.c.node().node_expand_volume(r))
            .map(|r| r.into_inner().capacity_bytes)
    }

    /// Mounts under the tree's kubelet dir, from the live table.
    fn mounts(&self) -> Vec<PathBuf> {
        mounts_under(&self.d.kubelet_dir())
    }
}

fn cap(block: bool, mode: Mode) -> Option<VolumeCapability> {
    Some(VolumeCapability {
        access_type: Some(if block {
            AccessType::Block(BlockVolume {})
        } else {
            AccessType::Mount(MountVolume::default())
        }),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    })
}

/// A stage of a local `path` with `cap`, as kubelet sends it for PV `volume_id` (at
/// kubelet's staging path for the capability's volume mode).
fn stage_req(
    n: &Node,
    volume_id: &str,
    path: &Path,
    cap: Option<VolumeCapability>,
) -> NodeStageVolumeRequest {
    let block = matches!(
        cap.as_ref().and_then(|c| c.access_type.as_ref()),
        Some(AccessType::Block(_))
    );
    let staging = if block {
        s(&n.d.csi_paths().block_staging(volume_id)).into()
    } else {
        n.staging(volume_id)
    };
    NodeStageVolumeRequest {
        volume_id: volume_id.into(),
        staging_target_path: staging,
        volume_capability: cap,
        volume_context: HashMap::from([("path".into(), s(path).into())]),
        ..Default::default()
    }
}

/// The publish matching `stage` onto `target` for pod `uid` (podInfoOnMount's keys added).
fn publish_req(
    stage: &NodeStageVolumeRequest,
    target: &str,
    uid: &str,
) -> NodePublishVolumeRequest {
    let mut ctx = stage.volume_context.clone();
    ctx.insert("csi.storage.k8s.io/pod.name".into(), format!("pod-{uid}"));
    ctx.insert("csi.storage.k8s.io/pod.namespace".into(), "default".into());
    ctx.insert("csi.storage.k8s.io/pod.uid".into(), uid.into());
    ctx.insert("csi.storage.k8s.io/ephemeral".into(), "false".into());
    NodePublishVolumeRequest {
        volume_id: stage.volume_id.clone(),
        staging_target_path: stage.staging_target_path.clone(),
        target_path: target.into(),
        volume_capability: stage.volume_capability.clone(),
        volume_context: ctx,
        ..Default::default()
    }
}

#[track_caller]
fn refused(
    r: Result<impl std::fmt::Debug, tonic::Status>,
    code: Code,
    reason: &str,
) -> tonic::Status {
    let e = r.expect_err("the call should have been refused");
    assert_eq!(e.code(), code, "{}", e.message());
    assert!(
        e.message().starts_with(&format!("{reason}: ")),
        "message of a {code:?} should start with {reason}: {}",
        e.message()
    );
    e
}

/// The answer of a call that must succeed.
#[track_caller]
fn ok<T>(r: Result<tonic::Response<T>, tonic::Status>) -> T {
    r.unwrap_or_else(|e| panic!("{:?}: {}", e.code(), e.message()))
        .into_inner()
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn identity_node_and_controller_capabilities_answer_as_the_spec_asks() {
    require_privileged_sandbox();
    let n = Node::start();
    let c = &n.c;
    let info = ok(c.run(c.identity().get_plugin_info(GetPluginInfoRequest {})));
    assert_eq!(
        (info.name.as_str(), info.vendor_version.is_empty()),
        (DRIVER, false)
    );
    // Ready: the sockets are served only once reconstruction is done.
    assert_eq!(
        ok(c.run(c.identity().probe(ProbeRequest {}))).ready,
        Some(true)
    );
    let mut controller = c.controller();
    let caps =
        ok(c.run(controller.controller_get_capabilities(ControllerGetCapabilitiesRequest {})));
    assert!(
        !caps.capabilities.is_empty(),
        "conformance tools reject none"
    );
    let caps: Vec<i32> = ok(c.run(
        c.node()
            .node_get_capabilities(NodeGetCapabilitiesRequest {}),
    ))
    .capabilities
    .iter()
    .filter_map(|c| {
        c.r#type
            .map(|node_service_capability::Type::Rpc(r)| r.r#type)
    })
    .collect();
    use node_service_capability::rpc::Type as T;
    for want in [
        T::StageUnstageVolume,
        T::GetVolumeStats,
        T::VolumeCondition,
        T::ExpandVolume,
    ] {
        assert!(
            caps.contains(&(want as i32)),
            "{want:?} missing from {caps:?}"
        );
    }
    // Never VOLUME_MOUNT_GROUP: kubelet applies fsGroup as the CSIDriver's policy says.
    assert!(!caps.contains(&(T::VolumeMountGroup as i32)), "{caps:?}");
    let info = ok(c.run(c.node().node_get_info(NodeGetInfoRequest {})));
    assert_eq!(info.node_id, n.d.node);
    assert_eq!(info.max_volumes_per_node, 0, "no limit unless configured");
    let topology = info.accessible_topology.expect("topology").segments;
    assert_eq!(topology.get("kubernetes.io/hostname"), Some(&n.d.node));
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_directory_volume_stages_publishes_and_unwinds_and_every_step_is_idempotent() {
    require_privileged_sandbox();
    let n = Node::start();
    let src = source(&n.d, "dir-a");
    let st = stage_req(&n, "pv-dir-a", &src, cap(false, Mode::SingleNodeWriter));
    n.stage(&st).unwrap();
    let staged = n.mounts();
    n.stage(&st).expect("a second identical stage is OK");
    assert_eq!(n.mounts(), staged, "the second stage mounted nothing more");
    assert_eq!(staged.len(), 1, "one stage mount: {staged:?}");
    // moor stages at its own directory and mounts nothing at kubelet's staging path.
    assert!(!is_mounted(Path::new(&st.staging_target_path)));
    assert!(staged[0].starts_with(n.d.kubelet_dir().join("plugins/moor/local")));

    let target = n.target("uid-1", "pv-dir-a");
    let pb = publish_req(&st, &target, "uid-1");
    n.publish(&pb).unwrap();
    n.publish(&pb).expect("a second identical publish is OK");
    assert!(is_mounted(Path::new(&target)));
    assert_eq!(n.mounts().len(), 2, "{:?}", n.mounts());
    let t = Path::new(&target);
    assert_eq!(
        std::fs::read_to_string(t.join("existing")).unwrap(),
        "already here"
    );
    std::fs::write(t.join("from-pod"), "written through the publish").unwrap();
    assert_eq!(
        std::fs::read_to_string(src.join("from-pod")).unwrap(),
        "written through the publish"
    );

    n.unpublish("pv-dir-a", &target).unwrap();
    n.unpublish("pv-dir-a", &target)
        .expect("unpublish of a target not published is OK");
    assert!(!is_mounted(t));
    assert_eq!(
        n.mounts(),
        staged,
        "the stage stays until NodeUnstageVolume"
    );
    n.unstage("pv-dir-a", &st.staging_target_path).unwrap();
    n.unstage("pv-dir-a", &st.staging_target_path)
        .expect("unstage of a volume not staged is OK");
    assert_eq!(n.mounts(), Vec::<PathBuf>::new());
    assert_eq!(
        std::fs::read_to_string(src.join("from-pod")).unwrap(),
        "written through the publish",
        "nothing deleted through a mount"
    );
    // A volume this node never had, unwound anyway: OK, as the spec asks.
    let other = n.target("uid-9", "pv-never");
    n.unpublish("pv-never", &other).unwrap();
    n.unstage("pv-never", &n.staging("pv-never")).unwrap();
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn every_required_field_missing_is_invalid_argument_before_anything_is_done() {
    require_privileged_sandbox();
    let n = Node::start();
    let src = source(&n.d, "dir-b");
    let st = stage_req(&n, "pv-dir-b", &src, cap(false, Mode::SingleNodeWriter));
    let target = n.target("uid-1", "pv-dir-b");
    let pb = publish_req(&st, &target, "uid-1");
    let node = n.c.node();
    let missing = |what: &str, r: Result<(), tonic::Status>| {
        let e = refused(r, Code::InvalidArgument, "missing_argument");
        assert!(e.message().contains(what), "{what}: {}", e.message());
    };
    for field in ["volume_id", "staging_target_path", "volume_capability"] {
        let mut r = st.clone();
        match field {
            "volume_id" => r.volume_id.clear(),
            "staging_target_path" => r.staging_target_path.clear(),
            _ => r.volume_capability = None,
        }
        missing(field, n.stage(&r));
    }
    for field in ["volume_id", "staging_target_path"] {
        let (id, path) = match field {
            "volume_id" => ("", st.staging_target_path.as_str()),
            _ => (st.volume_id.as_str(), ""),
        };
        missing(field, n.unstage(id, path));
    }
    for field in [
        "volume_id",
        "staging_target_path",
        "target_path",
        "volume_capability",
    ] {
        let mut r = pb.clone();
        match field {
            "volume_id" => r.volume_id.clear(),
            "staging_target_path" => r.staging_target_path.clear(),
            "target_path" => r.target_path.clear(),
            _ => r.volume_capability = None,
        }
        missing(field, n.publish(&r));
    }
    missing("volume_id", n.unpublish("", &target));
    missing("target_path", n.unpublish("pv-dir-b", ""));
    missing("volume_id", n.stats("", &target).map(drop));
    missing("volume_path", n.stats("pv-dir-b", "").map(drop));
    missing("volume_id", n.expand("", &target).map(drop));
    missing("volume_path", n.expand("pv-dir-b", "").map(drop));
    drop(node);
    assert_eq!(
        n.mounts(),
        Vec::<PathBuf>::new(),
        "a refused call did nothing"
    );
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn capabilities_the_driver_cannot_honour_are_invalid_argument() {
    require_privileged_sandbox();
    let n = Node::start();
    let src = source(&n.d, "dir-d");
    // A local volume never leaves its node.
    for mode in [
        Mode::MultiNodeMultiWriter,
        Mode::MultiNodeReaderOnly,
        Mode::MultiNodeSingleWriter,
    ] {
        let st = stage_req(&n, "pv-dir-d", &src, cap(false, mode));
        refused(
            n.stage(&st),
            Code::InvalidArgument,
            "unsupported_capability",
        );
    }
    // A directory has no block device.
    let st = stage_req(&n, "pv-dir-d", &src, cap(true, Mode::SingleNodeWriter));
    refused(
        n.stage(&st),
        Code::InvalidArgument,
        "unsupported_capability",
    );
    // A share has no block device either (its own socket).
    let nfs = n.d.csi("nfs");
    let mut share = stage_req(&n, "pv-share", &src, cap(true, Mode::SingleNodeWriter));
    share.volume_context = HashMap::from([
        ("server".into(), "nfs.example.com".into()),
        ("path".into(), "/exports/a".into()),
    ]);
    let e = nfs.run(nfs.node().node_stage_volume(share)).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(
        e.message().starts_with("unsupported_capability: "),
        "{}",
        e.message()
    );
    assert_eq!(n.mounts(), Vec::<PathBuf>::new());
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn one_volume_id_is_one_volume_and_one_volume_is_one_volume_id() {
    require_privileged_sandbox();
    let n = Node::start();
    let a = source(&n.d, "dir-e");
    let b = source(&n.d, "dir-f");
    let st = stage_req(&n, "pv-e", &a, cap(false, Mode::SingleNodeWriter));
    n.stage(&st).unwrap();
    // The same volume_id with other attributes, or another capability: AlreadyExists.
    let mut other_path = st.clone();
    other_path
        .volume_context
        .insert("path".into(), s(&b).into());
    refused(n.stage(&other_path), Code::AlreadyExists, "conflict");
    let mut other_mode = st.clone();
    other_mode.volume_capability = cap(false, Mode::SingleNodeReaderOnly);
    refused(n.stage(&other_mode), Code::AlreadyExists, "conflict");
    // Another volume_id for the same directory: FailedPrecondition.
    let second = stage_req(&n, "pv-e-again", &a, cap(false, Mode::SingleNodeWriter));
    refused(n.stage(&second), Code::FailedPrecondition, "key_in_use");
    // And FlexVolume may not mount what CSI staged.
    let flex =
        n.d.mount("pod-flex", "vol", serde_json::json!({"path": s(&a)}));
    assert!(!flex.ok(), "{flex:?}");
    assert!(
        flex.message().starts_with("key_in_use: "),
        "{}",
        flex.message()
    );
    assert_eq!(n.mounts().len(), 1, "still the one stage: {:?}", n.mounts());
    n.unstage("pv-e", &st.staging_target_path).unwrap();
    assert_eq!(n.mounts(), Vec::<PathBuf>::new());
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_single_writer_volume_is_published_to_one_target_at_a_time() {
    require_privileged_sandbox();
    let n = Node::start();
    let src = source(&n.d, "dir-g");
    let st = stage_req(&n, "pv-g", &src, cap(false, Mode::SingleNodeSingleWriter));
    n.stage(&st).unwrap();
    let one = n.target("uid-1", "pv-g");
    let two = n.target("uid-2", "pv-g");
    n.publish(&publish_req(&st, &one, "uid-1")).unwrap();
    refused(
        n.publish(&publish_req(&st, &two, "uid-2")),
        Code::FailedPrecondition,
        "single_writer",
    );
    assert!(!is_mounted(Path::new(&two)));
    n.unpublish("pv-g", &one).unwrap();
    n.publish(&publish_req(&st, &two, "uid-2"))
        .expect("free again");
    n.unpublish("pv-g", &two).unwrap();
    n.unstage("pv-g", &st.staging_target_path).unwrap();
}

#[test]
#[ignore = "tier 2: needs root, a private mount namespace and test hooks (run-tests)"]
fn a_call_on_a_volume_with_one_in_flight_is_aborted_and_the_first_finishes_whole() {
    require_privileged_sandbox();
    let mut d = Daemon::unstarted(&[]);
    d.config_extra = "csi:\n  enabled: true\n".into();
    let pause = d.pause_and_resume_at("stage:intent");
    d.spawn();
    let n = Node::from(d);
    let src = source(&n.d, "dir-h");
    let st = stage_req(&n, "pv-h", &src, cap(false, Mode::SingleNodeWriter));
    // The first stage runs on its own connection and stops at its journal intent.
    let first = {
        let socket = n.d.csi_socket("local");
        let st = st.clone();
        std::thread::spawn(move || {
            let c = CsiClient::connect(&socket, Duration::from_secs(5)).unwrap();
            c.run(c.node().node_stage_volume(st)).map(drop)
        })
    };
    pause.wait(&n.d);
    let t = Instant::now();
    refused(n.stage(&st), Code::Aborted, "busy");
    let target = n.target("uid-1", "pv-h");
    refused(
        n.publish(&publish_req(&st, &target, "uid-1")),
        Code::Aborted,
        "busy",
    );
    refused(
        n.unstage("pv-h", &st.staging_target_path),
        Code::Aborted,
        "busy",
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "Aborted at once, never queued: {:?}",
        t.elapsed()
    );
    pause.resume();
    first.join().unwrap().expect("the call in flight finished");
    assert_eq!(n.mounts().len(), 1, "one stage, whole: {:?}", n.mounts());
    n.publish(&publish_req(&st, &target, "uid-1")).unwrap();
    assert_eq!(
        std::fs::read_to_string(Path::new(&target).join("existing")).unwrap(),
        "already here"
    );
    n.unpublish("pv-h", &target).unwrap();
    n.unstage("pv-h", &st.staging_target_path).unwrap();
    assert_eq!(n.mounts(), Vec::<PathBuf>::new());
}

/// (total, used, available) of a stats answer's `unit`.
fn usage(r: &NodeGetVolumeStatsResponse, unit: volume_usage::Unit) -> Option<(i64, i64, i64)> {
    r.usage
        .iter()
        .find(|u| u.unit == unit as i32)
        .map(|u| (u.total, u.used, u.available))
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn stats_answer_for_the_volume_and_a_volume_the_node_does_not_have_is_not_found() {
    require_privileged_sandbox();
    let n = Node::start();
    let src = source(&n.d, "dir-c");
    let st = stage_req(&n, "pv-dir-c", &src, cap(false, Mode::SingleNodeWriter));
    n.stage(&st).unwrap();
    let target = n.target("uid-1", "pv-dir-c");
    n.publish(&publish_req(&st, &target, "uid-1")).unwrap();
    // Bytes and inodes of a healthy filesystem volume, by its target or its staging path.
    for path in [&target, &st.staging_target_path] {
        let r = n.stats("pv-dir-c", path).unwrap();
        let (total, used, available) = usage(&r, volume_usage::Unit::Bytes).expect("bytes");
        assert!(
            total > 0 && used >= 0 && available > 0 && used + available <= total,
            "{r:?}"
        );
        assert!(
            usage(&r, volume_usage::Unit::Inodes).is_some_and(|(t, _, _)| t > 0),
            "{r:?}"
        );
        let condition = r.volume_condition.expect("VOLUME_CONDITION is offered");
        assert!(!condition.abnormal, "{condition:?}");
    }
    let elsewhere = n.target("uid-2", "pv-nothing");
    refused(
        n.stats("pv-unknown", &target),
        Code::NotFound,
        "unknown_volume",
    );
    refused(
        n.stats("pv-dir-c", &elsewhere),
        Code::NotFound,
        "unknown_volume",
    );
    refused(
        n.expand("pv-unknown", &target),
        Code::NotFound,
        "unknown_volume",
    );
    refused(
        n.expand("pv-dir-c", &elsewhere),
        Code::NotFound,
        "unknown_volume",
    );
    n.unpublish("pv-dir-c", &target).unwrap();
    n.unstage("pv-dir-c", &st.staging_target_path).unwrap();
    refused(
        n.stats("pv-dir-c", &target),
        Code::NotFound,
        "unknown_volume",
    );
}

#[test]
#[ignore = "tier 2: needs root, loop devices and a private mount namespace (run-tests)"]
fn a_raw_block_volume_is_the_device_itself_through_every_call() {
    use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
    require_privileged_sandbox();
    let n = Node::start();
    let dev = common::LoopDev::new(32);
    common::sh("blockdev", &["--setrw", dev.path_str()]);
    let disk = Path::new(dev.path_str());
    let st = stage_req(&n, "pv-raw", disk, cap(true, Mode::SingleNodeWriter));
    n.stage(&st).unwrap();
    n.stage(&st).expect("a second identical stage is OK");
    assert_eq!(
        n.mounts(),
        Vec::<PathBuf>::new(),
        "a raw block stage mounts nothing"
    );
    // The filesystem shape is refused for a volume staged as block.
    let mut fs = publish_req(&st, &n.target("uid-1", "pv-raw"), "uid-1");
    fs.volume_capability = cap(false, Mode::SingleNodeWriter);
    refused(n.publish(&fs), Code::AlreadyExists, "conflict");

    let target = n.d.csi_paths().block_target("uid-1", "pv-raw");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let pb = publish_req(&st, s(&target), "uid-1");
    n.publish(&pb).unwrap();
    n.publish(&pb).expect("a second identical publish is OK");
    let meta = std::fs::metadata(&target).unwrap();
    assert!(meta.file_type().is_block_device(), "{meta:?}");
    assert_eq!(
        meta.rdev(),
        std::fs::metadata(disk).unwrap().rdev(),
        "the volume's own device"
    );
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&target)
        .unwrap();
    f.write_all_at(b"through the pod's device file", 4096)
        .unwrap();
    f.sync_all().unwrap();
    drop(f);
    let mut back = [0u8; 29];
    std::fs::File::open(disk)
        .unwrap()
        .read_exact_at(&mut back, 4096)
        .unwrap();
    assert_eq!(&back, b"through the pod's device file");

    let r = n.stats("pv-raw", s(&target)).unwrap();
    let (total, _, _) = usage(&r, volume_usage::Unit::Bytes).expect("a block volume's size");
    assert_eq!(total, 32 << 20, "{r:?}");
    assert!(usage(&r, volume_usage::Unit::Inodes).is_none(), "{r:?}");

    n.unpublish("pv-raw", s(&target)).unwrap();
    n.unpublish("pv-raw", s(&target)).expect("again: OK");
    assert!(!target.exists(), "the device file moor made is gone");
    n.unstage("pv-raw", &st.staging_target_path).unwrap();
    n.unstage("pv-raw", &st.staging_target_path)
        .expect("again: OK");
    let mut back = [0u8; 29];
    std::fs::File::open(disk)
        .unwrap()
        .read_exact_at(&mut back, 4096)
        .unwrap();
    assert_eq!(&back, b"through the pod's device file", "never formatted");
}
