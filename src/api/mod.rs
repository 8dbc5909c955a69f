//! The daemon's Unix-socket protocol: one JSON request line, one JSON response line, per
//! connection. The socket is mode 0600 and the server checks the peer's credentials.
//!
//! Layering: this module knows neither FlexVolume nor CSI nor the daemon behind it. A
//! [`Response`] is typed (done, failed with a reason label and the cause chain, the status
//! table), and each front end renders it its own way; the server hands each request to a
//! [`Handler`] and imports no domain module, so the arrows point down only.

pub mod client;
pub mod notice;
pub mod server;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::volume::VolumeOptions;

/// A request to the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// FlexVolume `mount`: attach + stage + publish.
    Mount {
        /// Driver name.
        driver: String,
        /// Pod volume directory.
        target: String,
        /// The request's options as the front end parsed them (secrets included: the socket
        /// is root-only).
        #[serde(deserialize_with = "crate::volume::options::typed_or_kubelet")]
        options: VolumeOptions,
    },
    /// FlexVolume `unmount`: unpublish, then unstage + detach when no publish remains.
    Unmount {
        /// Driver name.
        driver: String,
        /// Pod volume directory.
        target: String,
    },
    /// FlexVolume `expandfs`: grow the staged filesystem of a PV to its device's new size.
    Expand {
        /// Driver name.
        driver: String,
        /// The PV's options as the front end parsed them (no secrets: kubelet sends none to
        /// expandfs).
        #[serde(deserialize_with = "crate::volume::options::typed_or_kubelet")]
        options: VolumeOptions,
        /// The claim's new size in bytes.
        new_size: u64,
    },
    /// The volume table.
    Status,
    /// The daemon's newest log lines (`moor bundle`).
    Logs {
        /// At most this many.
        lines: usize,
    },
    /// Drop an idle volume's record (`moor forget`).
    Forget {
        /// Volume key.
        key: String,
    },
    /// Orphaned pod volumes (`moor gc`): list every publish with what the API server says of
    /// its pod and what moor does about it; with `pods`, clean those pods' volumes (unless
    /// `dry_run`).
    Gc {
        /// Pod UIDs to clean (empty: list only).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pods: Vec<String>,
        /// Say what would be done, do nothing.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        dry_run: bool,
    },
    /// A CSI node call, as the CSI front end translated it from gRPC. Paths and names were
    /// checked there; the daemon checks them again against its own rules.
    Csi {
        /// moor's driver name (`iscsi`, `nfs`, …): which CSI socket the call came in on.
        driver: String,
        /// The CSI `volume_id` (the PV's `volumeHandle`).
        volume_id: String,
        /// The call.
        call: CsiCall,
    },
}

/// The suffix of moor's CSI driver names.
pub const CSI_NAME_SUFFIX: &str = ".csi.moor.io";

/// The CSI driver name of moor's driver `driver` (`iscsi` → `iscsi.csi.moor.io`): the name
/// kubelet knows the driver by, spells in the staging paths it makes, and registers.
pub fn csi_driver_name(driver: &str) -> String {
    format!("{driver}{CSI_NAME_SUFFIX}")
}

/// How a CSI volume is presented: a mounted filesystem or the raw block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VolumeMode {
    /// `volumeMode: Filesystem`.
    Filesystem,
    /// `volumeMode: Block`: the device node is bound onto the target file.
    Block,
}

/// CSI's access modes (`VolumeCapability.AccessMode.Mode`), minus UNKNOWN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessMode {
    /// ReadWriteOnce.
    SingleNodeWriter,
    /// Read-only on one node.
    SingleNodeReaderOnly,
    /// ReadOnlyMany.
    MultiNodeReaderOnly,
    /// Many nodes read, one writes.
    MultiNodeSingleWriter,
    /// ReadWriteMany.
    MultiNodeMultiWriter,
    /// ReadWriteOncePod: one publish (one pod) at a time.
    SingleNodeSingleWriter,
    /// Many pods of one node write.
    SingleNodeMultiWriter,
}

/// One CSI node call. `options` are the volume context (the PV's `volumeAttributes`, with
/// exactly FlexVolume's option names) parsed by [`crate::volume::options::parse`], with the
/// capability's fsType and mount flags, the publish's `readonly` and the pod's details
/// filled in, and the call's secrets beside.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum CsiCall {
    /// NodeStageVolume: attach, and for a filesystem volume probe/format-if-blank and mount
    /// at moor's own stage directory. `staging_path` is kubelet's, recorded and handed back
    /// to publish; nothing is mounted on it.
    Stage {
        /// kubelet's `staging_target_path`.
        staging_path: String,
        /// Filesystem or raw block.
        mode: VolumeMode,
        /// The capability's access mode.
        access: AccessMode,
        /// The parsed volume context and secrets.
        #[serde(deserialize_with = "crate::volume::options::typed_or_kubelet")]
        options: VolumeOptions,
    },
    /// NodeUnstageVolume: unmount the stage and detach. Refused while a publish remains.
    Unstage {
        /// kubelet's `staging_target_path`.
        staging_path: String,
    },
    /// NodePublishVolume: bind the stage (or the device node, for raw block) onto
    /// `target`, which moor creates.
    Publish {
        /// kubelet's `staging_target_path` given at stage.
        staging_path: String,
        /// kubelet's `target_path`.
        target: String,
        /// Filesystem or raw block.
        mode: VolumeMode,
        /// The capability's access mode.
        access: AccessMode,
        /// The parsed volume context and secrets (read-only from the call's `readonly`).
        #[serde(deserialize_with = "crate::volume::options::typed_or_kubelet")]
        options: VolumeOptions,
    },
    /// NodeUnpublishVolume: unmount moor's bind at `target` and remove what moor created
    /// there.
    Unpublish {
        /// kubelet's `target_path`.
        target: String,
    },
    /// NodeGetVolumeStats of a published or staged path.
    Stats {
        /// `volume_path`: a target or the staging path.
        path: String,
    },
    /// NodeExpandVolume: refresh the device's size and grow the filesystem.
    Expand {
        /// `volume_path`.
        path: String,
        /// `capacity_range.required_bytes` (0: as large as the device).
        required_bytes: u64,
    },
}

impl CsiCall {
    /// The operation name, for logs and metrics.
    pub fn op(&self) -> &'static str {
        match self {
            CsiCall::Stage { .. } => "csi_stage",
            CsiCall::Unstage { .. } => "csi_unstage",
            CsiCall::Publish { .. } => "csi_publish",
            CsiCall::Unpublish { .. } => "csi_unpublish",
            CsiCall::Stats { .. } => "csi_stats",
            CsiCall::Expand { .. } => "csi_expand",
        }
    }
}

/// Bytes or inodes of a filesystem volume (NodeGetVolumeStats' `VolumeUsage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Total.
    pub total: u64,
    /// Available to the pod.
    pub available: u64,
    /// Used.
    pub used: u64,
}

/// What the reconciler's probe last saw of a volume (CSI's `VolumeCondition`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    /// Something is wrong: a dead, hung or unmounted share, a block device gone, a
    /// filesystem with I/O errors.
    pub abnormal: bool,
    /// What, in a sentence (empty when healthy).
    pub message: String,
}

impl Request {
    /// The operation name, for logs and metrics.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Mount { .. } => "mount",
            Request::Unmount { .. } => "unmount",
            Request::Expand { .. } => "expandfs",
            Request::Status => "status",
            Request::Logs { .. } => "logs",
            Request::Forget { .. } => "forget",
            Request::Gc { .. } => "gc",
            Request::Csi { call, .. } => call.op(),
        }
    }
}

/// A publish as `moor status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodUse {
    /// Pod UID.
    pub pod_uid: String,
    /// Pod namespace.
    pub namespace: Option<String>,
    /// Pod volume directory.
    pub target: String,
    /// Read-only bind.
    pub read_only: bool,
    /// Publish phase.
    pub phase: String,
}

/// A volume as `moor status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeStatus {
    /// Driver.
    pub driver: String,
    /// Volume key.
    pub key: String,
    /// Stage phase.
    pub state: String,
    /// Block device, when there is one.
    pub device: Option<String>,
    /// Source directory, for directory volumes.
    pub source: String,
    /// Filesystem type.
    pub fs_type: Option<String>,
    /// Stage path.
    pub stage_path: String,
    /// Pods using it.
    pub pods: Vec<PodUse>,
}

/// A pod whose container still holds the dead mount of a healed share (its volume mount
/// does not propagate, so the heal could not reach it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadMount {
    /// Volume key.
    pub volume: String,
    /// Driver.
    pub driver: String,
    /// Pod UID.
    pub pod_uid: String,
    /// Pod namespace, when the API server said (else empty).
    #[serde(default)]
    pub namespace: String,
    /// Pod name, when the API server said (else empty).
    #[serde(default)]
    pub pod: String,
    /// Seconds since the heal the pod did not see.
    pub since_heal_secs: u64,
    /// What moor did or will do about it (`reported`, `evicting`, `evicted`, `blocked`,
    /// `not evicted: …`).
    pub action: String,
}

/// One pod volume as `moor gc` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcVolume {
    /// Pod UID.
    pub pod_uid: String,
    /// Driver (empty for a named pod moor has no publish of).
    pub driver: String,
    /// Volume key.
    pub key: String,
    /// Pod volume directory.
    pub target: String,
    /// A CSI publish (its stage stays for kubelet's NodeUnstageVolume).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub csi: bool,
    /// What the API server says of the pod: `present`, `gone` or `unknown`.
    pub pod: String,
    /// How long this daemon has seen the pod gone, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gone_seconds: Option<u64>,
    /// `keep`, `wait`, `clean` (would be cleaned), `cleaned`, `partial` (unpublished, but a
    /// directory holds files moor did not expect), `refused`, `busy`, `failed`, `none`
    /// (nothing of the pod is published).
    pub action: String,
    /// Why, or what went wrong, in a sentence.
    pub detail: String,
    /// The last publish of a FlexVolume stage: unstaged and detached.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unstaged: bool,
    /// Empty directories removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// Directories left in place, with why (`<dir>: not empty (vol_data.json)`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left: Vec<String>,
}

impl GcVolume {
    /// True when something asked for could not be done (the CLI's exit status).
    pub fn failed(&self) -> bool {
        matches!(
            self.action.as_str(),
            "partial" | "refused" | "busy" | "failed"
        )
    }
}

/// A journal entry moor could not use and set aside (still on disk, renamed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAsideRecord {
    /// Where it is now.
    pub path: String,
    /// Stable label (`invalid_json`, `not_regular`, `set_aside_earlier`, …).
    pub reason: String,
    /// What was wrong with it.
    pub detail: String,
}

/// Why a request failed, as the daemon says it: a front end prints [`Failure`]'s `Display`
/// (`<reason>: <cause>: <cause>…`) or maps `reason` to its own status codes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The stable, low-cardinality label (`bad_options`, `timeout`, …) that metrics use
    /// too. None for the daemon's own refusals that come before any volume operation
    /// (shutting down, a peer that is not root, an unknown volume to forget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What failed, then why: the error's own message, then each cause's, outermost first,
    /// each said once.
    pub causes: Vec<String>,
}

impl Failure {
    /// A failure labelled `reason`, with `err`'s whole cause chain.
    pub fn of(reason: &str, err: &dyn std::error::Error) -> Self {
        let mut causes = vec![err.to_string()];
        let mut next = err.source();
        while let Some(e) = next {
            causes.push(e.to_string());
            next = e.source();
        }
        Failure {
            reason: Some(reason.to_owned()),
            causes,
        }
    }

    /// A refusal with no reason label.
    pub fn refused(message: impl Into<String>) -> Self {
        Failure {
            reason: None,
            causes: vec![message.into()],
        }
    }

    /// A failure labelled `reason` with one message.
    pub fn labelled(reason: &str, message: impl Into<String>) -> Self {
        Failure {
            reason: Some(reason.to_owned()),
            causes: vec![message.into()],
        }
    }
}

/// `<reason>: <cause>: <cause>…`: the message FlexVolume and the CLI print.
impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(r) = &self.reason {
            write!(f, "{r}: ")?;
        }
        for (i, c) in self.causes.iter().enumerate() {
            if i > 0 {
                f.write_str(": ")?;
            }
            f.write_str(c)?;
        }
        Ok(())
    }
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    /// The operation is done (or there was nothing to do).
    Done,
    /// The operation failed.
    Failed(Failure),
    /// Answer to `Status`.
    Status {
        /// Node name.
        node: String,
        /// Volumes.
        volumes: Vec<VolumeStatus>,
        /// Journal entries set aside at start-up.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        set_aside: Vec<SetAsideRecord>,
        /// Recent notices (aggregated), newest last.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        notices: Vec<notice::RecentNotice>,
        /// Pods whose containers still hold a dead share's old mount after its heal.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        dead_mounts: Vec<DeadMount>,
    },
    /// Answer to [`Request::Gc`].
    Gc {
        /// Every publish of the pods concerned (all of them when listing).
        volumes: Vec<GcVolume>,
        /// Nothing was done.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        dry_run: bool,
        /// The daemon cleans confirmed orphans on its own (`gc.orphans`).
        orphans: bool,
        /// It has API credentials (without them every pod is `unknown`).
        connected: bool,
        /// `gc.grace-seconds`.
        grace_seconds: u64,
    },
    /// Answer to [`CsiCall::Stats`].
    VolumeStats {
        /// Filesystem or raw block.
        mode: VolumeMode,
        /// Bytes (filesystem volumes).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bytes: Option<Usage>,
        /// Inodes (filesystem volumes).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        inodes: Option<Usage>,
        /// The device's size (raw block volumes).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
        /// The volume's health.
        condition: Condition,
    },
    /// Answer to [`CsiCall::Expand`].
    Expanded {
        /// The volume's capacity now.
        capacity_bytes: u64,
    },
    /// The daemon's newest log lines, oldest first (JSON, as its log writes them).
    Logs {
        /// The lines.
        lines: Vec<String>,
    },
}

/// What the server hands each decoded request to (the daemon's executor). It answers
/// through `answer` exactly once, and may go on working after that: a deadline's answer
/// can precede the end of the operation it answers.
pub trait Handler: Send + Sync {
    /// Handles one request on the calling (connection) thread.
    fn handle(&self, req: Request, answer: &Arc<Answer>);
}

/// Where a request's one answer goes: the first to claim it sends; later ones are dropped.
pub struct Answer {
    claimed: AtomicBool,
    sink: Box<dyn Fn(&Response) + Send + Sync>,
}

/// The right to send a request's answer, held by whoever claimed it first.
#[must_use = "a claimed answer that is not sent leaves the client without one"]
pub struct Claimed<'a>(&'a Answer);

impl Claimed<'_> {
    /// Sends the answer.
    pub fn send(self, r: &Response) {
        (self.0.sink)(r);
    }
}

impl Answer {
    /// An answer written by `sink` (at most once).
    pub fn new(sink: impl Fn(&Response) + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Answer {
            claimed: AtomicBool::new(false),
            sink: Box::new(sink),
        })
    }

    /// For the first caller only: the right to send; None once claimed.
    pub fn claim(&self) -> Option<Claimed<'_>> {
        (!self.claimed.swap(true, Ordering::AcqRel)).then_some(Claimed(self))
    }

    /// Sends `r` unless the request was already answered.
    pub fn send(&self, r: &Response) {
        if let Some(c) = self.claim() {
            c.send(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("bottom")]
    struct Bottom;

    #[derive(Debug, thiserror::Error)]
    #[error("volume v: stage")]
    struct Top(#[source] Bottom);

    #[test]
    fn a_failure_prints_its_reason_then_each_cause_once() {
        let f = Failure::of("mount_failed", &Top(Bottom));
        assert_eq!(f.causes, ["volume v: stage", "bottom"]);
        assert_eq!(f.to_string(), "mount_failed: volume v: stage: bottom");
        assert_eq!(Failure::refused("no").to_string(), "no");
        assert_eq!(Failure::labelled("x", "y").to_string(), "x: y");
    }

    #[test]
    fn responses_keep_their_shape_on_the_wire() {
        for (r, json) in [
            (Response::Done, r#"{"kind":"done"}"#),
            (
                Response::Failed(Failure::of("timeout", &Bottom)),
                r#"{"kind":"failed","reason":"timeout","causes":["bottom"]}"#,
            ),
            (
                Response::Failed(Failure::refused("shutting down")),
                r#"{"kind":"failed","causes":["shutting down"]}"#,
            ),
            (
                Response::Logs {
                    lines: vec![r#"{"level":"INFO"}"#.into()],
                },
                r#"{"kind":"logs","lines":["{\"level\":\"INFO\"}"]}"#,
            ),
        ] {
            assert_eq!(serde_json::to_string(&r).unwrap(), json);
            assert_eq!(serde_json::from_str::<Response>(json).unwrap(), r);
        }
    }

    #[test]
    fn an_answer_is_sent_once() {
        let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let n2 = n.clone();
        let a = Answer::new(move |_| {
            n2.fetch_add(1, Ordering::SeqCst);
        });
        a.send(&Response::Done);
        assert!(a.claim().is_none());
        a.send(&Response::Done);
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }
}
