//! The top error of a volume operation, rolled up from the module errors, and the
//! lifecycle's own error kinds. `reason()` is the stable, low-cardinality label used in
//! metrics and as the FlexVolume message prefix; it matches variants, never message text.
//!
//! Invariant: this module imports nothing from the lifecycle (which returns these errors),
//! so the two form no circle; `layering.rs` checks it.

use std::path::PathBuf;
use std::time::Duration;

use crate::fs::FsError;
use crate::host::{ExecError, MountError, PathError};
use crate::journal::JournalError;
use crate::volume::{DriverError, OptionsError};

/// Why a volume operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad options.
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// Bad path.
    #[error(transparent)]
    Path(#[from] PathError),
    /// Driver refused or failed.
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// Probe/format/fsck refused or failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// A mount syscall failed.
    #[error("volume {volume}")]
    Mount {
        /// Volume key or target.
        volume: String,
        /// The failure.
        #[source]
        source: MountError,
    },
    /// The journal could not be written.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A filesystem could not be grown.
    #[error(transparent)]
    Expand(#[from] ExpandError),
    /// Unknown driver name.
    #[error("unknown driver {0} (moor serves: {1})")]
    UnknownDriver(String, String),
    /// The pod directory already serves another volume, or holds a mount moor did not make.
    #[error("{target}: {detail}")]
    TargetBusy {
        /// Pod volume dir.
        target: PathBuf,
        /// What is there.
        detail: String,
    },
    /// A mount moor does not own: moor never unmounts it.
    #[error("{detail}; leaving it alone")]
    NotOwned {
        /// The mount point.
        target: PathBuf,
        /// What is there, and what moor made there if anything (the ownership refusal).
        detail: String,
    },
    /// Mount options a bind cannot carry (filesystem-specific ones on a directory volume).
    #[error(
        "volume {volume}: mountOptions {options} cannot be applied to a bind of a directory (only ro, nosuid, nodev, noexec, noatime, nodiratime, relatime, strictatime can); remove them"
    )]
    BindOptions {
        /// Volume key.
        volume: String,
        /// The options refused.
        options: String,
    },
    /// A different filesystem than the one moor staged before: the device path now points
    /// at another disk.
    #[error(
        "volume {volume}: {device} now holds filesystem UUID {found}, but moor staged UUID {known} before; refusing to mount a different disk"
    )]
    DeviceChanged {
        /// Volume key.
        volume: String,
        /// Device.
        device: PathBuf,
        /// UUID found now.
        found: String,
        /// UUID recorded.
        known: String,
    },
    /// An attaching driver returned no device.
    #[error("volume {volume}: driver {driver} attached but named no block device")]
    NoDevice {
        /// Volume key.
        volume: String,
        /// Driver.
        driver: &'static str,
    },
    /// A network filesystem mount failed.
    #[error("volume {volume}: mount from {server} failed{}", log_tail.as_ref().map(|t| format!(" (client log: {t})")).unwrap_or_default())]
    RemoteMount {
        /// Volume key.
        volume: String,
        /// The server(s).
        server: String,
        /// The helper's failure, typed (a timeout stays a timeout); boxed to keep `Error`
        /// small on every `Result`.
        #[source]
        source: Box<RemoteMountError>,
        /// The tail of the client's own log, when it keeps one.
        log_tail: Option<String>,
    },
    /// The operation's deadline passed (it may still finish in the background).
    #[error("volume {volume}: {op} did not finish within {after:?}; kubelet will retry{}",
        running.as_ref().map(|c| format!(" ({c} and is left to finish: cut short it could leave the volume half-made; the volume stays locked until it ends)")).unwrap_or_default())]
    Timeout {
        /// Volume key or target.
        volume: String,
        /// Operation.
        op: &'static str,
        /// The deadline.
        after: Duration,
        /// The command the operation still waits for, and for how long.
        running: Option<String>,
    },
    /// A filesystem operation on a path failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A CSI call refused by the lifecycle's CSI rules.
    #[error(transparent)]
    Csi(#[from] CsiError),
    /// The daemon is shutting down or a worker died. (Its message does not say "internal":
    /// the reason label is printed before every failure's message.)
    #[error("{0}")]
    Internal(String),
}

/// Why a CSI call was refused by the rules CSI adds to the lifecycle (one stage per volume
/// key and `volume_id`, explicit unstage, access modes). Each variant's `reason()` is the
/// label the CSI front end maps to a gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum CsiError {
    /// The same `volume_id` staged (or published) with other attributes, mode or capability.
    #[error("volume_id {volume_id}: already staged as volume {key} with {detail}")]
    Conflict {
        /// The CSI volume id.
        volume_id: String,
        /// Volume key.
        key: String,
        /// What differs.
        detail: String,
    },
    /// The volume key is staged under another `volume_id` or by FlexVolume.
    #[error("volume {key}: already staged {by}; one stage per volume on a node")]
    KeyInUse {
        /// Volume key.
        key: String,
        /// By whom (`by FlexVolume`, `by CSI volume_id x`).
        by: String,
    },
    /// Publish (or a call that needs a stage) of a `volume_id` moor has not staged.
    #[error("volume_id {volume_id}: not staged on this node{detail}; NodeStageVolume first")]
    NotStaged {
        /// The CSI volume id.
        volume_id: String,
        /// More (a staging path that differs).
        detail: String,
    },
    /// Unstage while publishes remain.
    #[error("volume_id {volume_id}: still published at {targets}; NodeUnpublishVolume first")]
    StillPublished {
        /// The CSI volume id.
        volume_id: String,
        /// The targets.
        targets: String,
    },
    /// SINGLE_NODE_SINGLE_WRITER (ReadWriteOncePod) and another target is published.
    #[error(
        "volume_id {volume_id}: SINGLE_NODE_SINGLE_WRITER allows one publish, and it is published at {other}"
    )]
    SingleWriter {
        /// The CSI volume id.
        volume_id: String,
        /// The target it is published at.
        other: PathBuf,
    },
    /// A read-write publish of a volume staged with a *_READER_ONLY access mode.
    #[error("volume_id {volume_id}: access mode {access} allows read-only publishes only")]
    ReadOnly {
        /// The CSI volume id.
        volume_id: String,
        /// The access mode.
        access: String,
    },
    /// Another operation on this volume is in flight.
    #[error("volume {volume}: another operation on it is in progress; retry")]
    Busy {
        /// Volume id or key.
        volume: String,
    },
    /// No such volume (or path of it) on this node.
    #[error("volume_id {volume_id}: {detail}")]
    UnknownVolume {
        /// The CSI volume id.
        volume_id: String,
        /// What was not found.
        detail: String,
    },
    /// The driver's per-node volume limit is reached.
    #[error(
        "driver {driver}: {limit} volume(s) staged on this node, its limit (csi.max-volumes-per-node)"
    )]
    TooManyVolumes {
        /// Driver.
        driver: String,
        /// The limit.
        limit: usize,
    },
    /// A raw block volume's device is gone, or its path names another device than the one
    /// staged.
    #[error("volume_id {volume_id}: {device} {detail}")]
    DeviceChanged {
        /// The CSI volume id.
        volume_id: String,
        /// The device path recorded at stage.
        device: PathBuf,
        /// What it is now.
        detail: String,
    },
    /// A capability this driver or volume cannot serve.
    #[error("volume_id {volume_id}: {detail}")]
    UnsupportedCapability {
        /// The CSI volume id.
        volume_id: String,
        /// What is not supported.
        detail: String,
    },
}

impl CsiError {
    /// Stable reason label (common15 §7).
    pub fn reason(&self) -> &'static str {
        match self {
            CsiError::Conflict { .. } => "conflict",
            CsiError::KeyInUse { .. } => "key_in_use",
            CsiError::NotStaged { .. } => "not_staged",
            CsiError::StillPublished { .. } => "still_published",
            CsiError::SingleWriter { .. } => "single_writer",
            CsiError::ReadOnly { .. } => "read_only",
            CsiError::Busy { .. } => "busy",
            CsiError::UnknownVolume { .. } => "unknown_volume",
            CsiError::TooManyVolumes { .. } => "too_many_volumes",
            CsiError::DeviceChanged { .. } => "device_changed",
            CsiError::UnsupportedCapability { .. } => "unsupported_capability",
        }
    }
}

/// An error and its causes, outermost first, joined by `: `: how a log field or a CLI
/// message shows an error, since each variant's own message says only its own part.
pub struct Chain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

impl Error {
    /// Stable, low-cardinality reason label.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Options(_) => "bad_options",
            Error::Path(_) => "bad_path",
            Error::Driver(d) => d.reason(),
            Error::Fs(f) => f.reason(),
            Error::Mount { source, .. } => match source {
                MountError::Timeout { .. } => "timeout",
                MountError::Sys { errno, .. } if *errno == crate::host::Errno::EBUSY => {
                    "mount_busy"
                }
                _ => "mount_failed",
            },
            Error::Journal(_) => "journal_failed",
            Error::Expand(e) => e.reason(),
            Error::UnknownDriver(..) => "unknown_driver",
            Error::TargetBusy { .. } => "target_busy",
            Error::NotOwned { .. } => "not_owned",
            Error::BindOptions { .. } => "bad_options",
            Error::DeviceChanged { .. } => "device_changed",
            Error::NoDevice { .. } => "no_device",
            Error::RemoteMount { source, .. }
                if matches!(
                    **source,
                    RemoteMountError::Helper(ExecError::Timeout { .. })
                ) =>
            {
                "timeout"
            }
            Error::RemoteMount { .. } => "mount_failed",
            Error::Timeout { .. } => "timeout",
            Error::Io { .. } => "io_failed",
            Error::Csi(c) => c.reason(),
            Error::Internal(_) => "internal",
        }
    }
}

/// Why a network filesystem's mount helper left no mount.
#[derive(Debug, thiserror::Error)]
pub enum RemoteMountError {
    /// The helper failed, or did not finish within the mount deadline.
    #[error(transparent)]
    Helper(#[from] ExecError),
    /// The helper said it succeeded, but nothing is mounted on the stage.
    #[error("`{cmdline}` reported success but {stage} is not a mount point")]
    NoMount {
        /// The helper's redacted command line.
        cmdline: String,
        /// The stage directory.
        stage: PathBuf,
    },
}

/// Why a volume was not grown (`expandfs`, in `lifecycle/expand.rs`). It lives here, with
/// the top error that wraps it, so that this module imports nothing from the lifecycle.
#[derive(Debug, thiserror::Error)]
pub enum ExpandError {
    /// No stage of this PV on this node.
    #[error(
        "no pod on this node uses PV {pv} through moor~{driver}; kubelet expands a volume on the node that has it mounted"
    )]
    NotMounted {
        /// Driver name.
        driver: String,
        /// The PV name kubelet gave.
        pv: String,
    },
    /// The stage was adopted from the mount table after its record was lost: moor cannot
    /// tell which disk it is, so it never grows (or checks, or formats) it.
    #[error(
        "volume {volume}: adopted from the mount table after its record was lost; moor does not grow a filesystem whose disk it cannot identify (unmount it and mount it again)"
    )]
    Adopted {
        /// Volume key.
        volume: String,
    },
    /// The stage is mounted read-only.
    #[error(
        "volume {volume}: the filesystem is mounted read-only; a read-only volume is not grown"
    )]
    ReadOnly {
        /// Volume key.
        volume: String,
    },
    /// The device has not grown (yet) to the size asked for.
    #[error(
        "volume {volume}: {device} is {size} bytes, less than the {want} bytes asked for; grow the backend first (`rbd resize`, the LUN on the array), kubelet retries"
    )]
    DeviceTooSmall {
        /// Volume key.
        volume: String,
        /// The device.
        device: PathBuf,
        /// Its size after the rescan.
        size: u64,
        /// The claim's new size.
        want: u64,
    },
    /// ext4's online resize ioctl needs CAP_SYS_RESOURCE, and moor runs without it.
    #[error(
        "volume {volume}: growing ext4 online needs CAP_SYS_RESOURCE, which moor's process does not have; give it back to moor's unit or container (the filesystem was not touched)"
    )]
    NoCapability {
        /// Volume key.
        volume: String,
    },
    /// A filesystem moor has no online grow for.
    #[error("volume {volume}: moor cannot grow a {fs_type} filesystem online")]
    Unsupported {
        /// Volume key.
        volume: String,
        /// The filesystem.
        fs_type: String,
    },
    /// A sysfs or device operation failed.
    #[error("volume {volume}: {what} {path}")]
    Io {
        /// Volume key.
        volume: String,
        /// What was done.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A tool failed.
    #[error("volume {volume}")]
    Command {
        /// Volume key.
        volume: String,
        /// The failure, with the redacted command line and its output.
        #[source]
        source: ExecError,
    },
}

impl ExpandError {
    /// Stable reason label.
    pub fn reason(&self) -> &'static str {
        match self {
            ExpandError::NotMounted { .. } => "not_mounted",
            ExpandError::ReadOnly { .. } => "read_only",
            ExpandError::Adopted { .. } => "adopted",
            ExpandError::DeviceTooSmall { .. } => "device_too_small",
            ExpandError::NoCapability { .. } => "missing_capability",
            ExpandError::Unsupported { .. } => "unsupported_fs",
            ExpandError::Io { .. } => "io_failed",
            ExpandError::Command { .. } => "command_failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec_timeout() -> ExecError {
        ExecError::Timeout {
            cmdline: "mount -t nfs s:/x /st".into(),
            timeout: Duration::from_secs(30),
        }
    }

    fn remote(source: RemoteMountError) -> Error {
        Error::RemoteMount {
            volume: "v".into(),
            server: "s".into(),
            source: Box::new(source),
            log_tail: Some("E [x] no such volume".into()),
        }
    }

    fn expand_io() -> Error {
        ExpandError::Io {
            volume: "v".into(),
            what: "rescan",
            path: "/sys/x".into(),
            source: std::io::Error::from_raw_os_error(13),
        }
        .into()
    }

    fn mount_err(errno: crate::host::Errno) -> Error {
        Error::Mount {
            volume: "k".into(),
            source: MountError::Sys {
                op: "bind",
                target: "/t".into(),
                errno,
            },
        }
    }

    /// The labels are metric label values and FlexVolume message prefixes: renaming one is
    /// a breaking change, so every one of them is spelled out here.
    #[test]
    fn every_reason_label_is_pinned() {
        let io = || std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let cases: Vec<(Error, &str)> = vec![
            (
                OptionsError::NotString { key: "k".into() }.into(),
                "bad_options",
            ),
            (PathError::NotClean { path: "x".into() }.into(), "bad_path"),
            (
                DriverError::WrongNode {
                    volume: "v".into(),
                    wanted: "a".into(),
                    this: "b".into(),
                }
                .into(),
                "wrong_node",
            ),
            (
                FsError::InUse {
                    volume: "v".into(),
                    device: "/dev/x".into(),
                    detail: "d".into(),
                }
                .into(),
                "device_in_use",
            ),
            (mount_err(crate::host::Errno::EBUSY), "mount_busy"),
            (mount_err(crate::host::Errno::EINVAL), "mount_failed"),
            (
                Error::Mount {
                    volume: "k".into(),
                    source: MountError::Timeout {
                        op: "mount",
                        target: "/t".into(),
                        timeout: crate::host::bounded::TimedOut(Duration::from_secs(1)),
                    },
                },
                "timeout",
            ),
            (
                JournalError::Io {
                    op: "write",
                    path: "/s".into(),
                    source: io(),
                }
                .into(),
                "journal_failed",
            ),
            (
                ExpandError::NotMounted {
                    driver: "rbd".into(),
                    pv: "pv".into(),
                }
                .into(),
                "not_mounted",
            ),
            (
                ExpandError::Adopted { volume: "v".into() }.into(),
                "adopted",
            ),
            (
                ExpandError::ReadOnly { volume: "v".into() }.into(),
                "read_only",
            ),
            (
                ExpandError::DeviceTooSmall {
                    volume: "v".into(),
                    device: "/dev/x".into(),
                    size: 1,
                    want: 2,
                }
                .into(),
                "device_too_small",
            ),
            (
                ExpandError::NoCapability { volume: "v".into() }.into(),
                "missing_capability",
            ),
            (
                ExpandError::Unsupported {
                    volume: "v".into(),
                    fs_type: "vfat".into(),
                }
                .into(),
                "unsupported_fs",
            ),
            (expand_io(), "io_failed"),
            (
                ExpandError::Command {
                    volume: "v".into(),
                    source: exec_timeout(),
                }
                .into(),
                "command_failed",
            ),
            (
                Error::UnknownDriver("x".into(), "local".into()),
                "unknown_driver",
            ),
            (
                Error::TargetBusy {
                    target: "/t".into(),
                    detail: "d".into(),
                },
                "target_busy",
            ),
            (
                Error::NotOwned {
                    target: "/t".into(),
                    detail: "d".into(),
                },
                "not_owned",
            ),
            (
                Error::BindOptions {
                    volume: "v".into(),
                    options: "vers=4".into(),
                },
                "bad_options",
            ),
            (
                Error::DeviceChanged {
                    volume: "v".into(),
                    device: "/dev/x".into(),
                    found: "a".into(),
                    known: "b".into(),
                },
                "device_changed",
            ),
            (
                Error::NoDevice {
                    volume: "v".into(),
                    driver: "rbd",
                },
                "no_device",
            ),
            (
                Error::Timeout {
                    volume: "v".into(),
                    op: "mount",
                    after: Duration::from_secs(300),
                    running: None,
                },
                "timeout",
            ),
            (
                Error::Io {
                    what: "open",
                    path: "/p".into(),
                    source: io(),
                },
                "io_failed",
            ),
            (Error::Internal("x".into()), "internal"),
            (remote(exec_timeout().into()), "timeout"),
            (
                remote(
                    ExecError::Failed {
                        cmdline: "mount -t nfs s:/x /st".into(),
                        code: Some(32),
                        // A helper's own words never pick the label.
                        stderr: "did not finish within 5s".into(),
                    }
                    .into(),
                ),
                "mount_failed",
            ),
            (
                remote(RemoteMountError::NoMount {
                    cmdline: "mount -t nfs s:/x /st".into(),
                    stage: "/st".into(),
                }),
                "mount_failed",
            ),
        ];
        for (e, label) in &cases {
            assert_eq!(e.reason(), *label, "{e:?}");
            // A failure is printed `<reason>: <message>`: a message that starts with its
            // own label says it twice (`internal: internal: …`).
            assert!(
                !e.to_string().starts_with(&format!("{label}:")),
                "{label} said twice: {e}"
            );
        }
    }

    /// Each level of the chain, outermost first.
    fn levels(e: &dyn std::error::Error) -> Vec<String> {
        let mut out = vec![e.to_string()];
        let mut next = e.source();
        while let Some(s) = next {
            out.push(s.to_string());
            next = s.source();
        }
        out
    }

    /// Every kind of error that wraps a cause: printed as a chain (the FlexVolume message,
    /// logs, the CLI), each cause appears once, and the chain still says what failed
    /// (the volume, the path or the command) and why (the OS's or the tool's words).
    #[test]
    fn no_cause_is_said_twice_in_a_chain() {
        use crate::attach::rbd::RbdError;
        use crate::attach::scsi::ScsiError;
        let io = || std::io::Error::from_raw_os_error(13);
        let failed = || ExecError::Failed {
            cmdline: "iscsiadm -m node -T iqn.x --login".into(),
            code: Some(24),
            stderr: "iscsiadm: login failed".into(),
        };
        let cases: Vec<(Error, &[&str])> = vec![
            (
                mount_err(crate::host::Errno::EBUSY),
                &["volume k", "bind /t", "EBUSY"],
            ),
            (
                Error::Io {
                    what: "open",
                    path: "/p".into(),
                    source: io(),
                },
                &["open /p", "Permission denied"],
            ),
            (
                remote(exec_timeout().into()),
                &[
                    "mount from s failed",
                    "client log: E [x]",
                    "did not finish within 30s",
                ],
            ),
            (
                remote(RemoteMountError::NoMount {
                    cmdline: "mount -t nfs s:/x /st".into(),
                    stage: "/st".into(),
                }),
                &["volume v", "reported success but /st is not a mount point"],
            ),
            (
                JournalError::Io {
                    op: "write",
                    path: "/s/k.json".into(),
                    source: io(),
                }
                .into(),
                &["journal write /s/k.json", "Permission denied"],
            ),
            (
                expand_io(),
                &["volume v: rescan /sys/x", "Permission denied"],
            ),
            (
                ExpandError::Command {
                    volume: "v".into(),
                    source: failed(),
                }
                .into(),
                &["volume v", "iscsiadm: login failed"],
            ),
            (
                DriverError::Command {
                    volume: "v".into(),
                    source: failed(),
                }
                .into(),
                &["volume v", "`iscsiadm -m node -T iqn.x --login` failed"],
            ),
            (
                DriverError::SecretFile {
                    volume: "v".into(),
                    path: "/run/moor/secrets/v/key".into(),
                    source: io(),
                }
                .into(),
                &["secret file /run/moor/secrets/v/key", "Permission denied"],
            ),
            (
                DriverError::from(ScsiError::Io {
                    volume: "v".into(),
                    path: "/sys/class/scsi_host/host0/scan".into(),
                    source: io(),
                })
                .into(),
                &["host0/scan", "Permission denied"],
            ),
            (
                DriverError::from(RbdError::Claim {
                    volume: "v".into(),
                    path: "/run/moor/rbd/0".into(),
                    source: io(),
                })
                .into(),
                &["mapping claim /run/moor/rbd/0", "Permission denied"],
            ),
            (
                DriverError::from(RbdError::Sysfs {
                    volume: "v".into(),
                    path: "/sys/bus/rbd/devices".into(),
                    source: io(),
                })
                .into(),
                &["cannot read /sys/bus/rbd/devices", "Permission denied"],
            ),
            (
                DriverError::Source(crate::host::allow::AllowError::Open {
                    path: "/srv/x".into(),
                    source: io(),
                })
                .into(),
                &["option path=/srv/x: cannot use it", "Permission denied"],
            ),
            (
                FsError::Exec {
                    volume: "v".into(),
                    source: ExecError::NotFound {
                        program: "mkfs.xfs".into(),
                    },
                }
                .into(),
                &["volume v", "mkfs.xfs is not installed"],
            ),
        ];
        for (e, says) in &cases {
            let chain = levels(e);
            for (i, outer) in chain.iter().enumerate() {
                for inner in &chain[i + 1..] {
                    assert!(
                        !outer.contains(inner.as_str()),
                        "{e:?}: {outer:?} repeats {inner:?}"
                    );
                }
            }
            let text = Chain(e).to_string();
            assert_eq!(text, chain.join(": "));
            for s in *says {
                assert!(text.contains(s), "{text:?} does not say {s:?}");
            }
        }
    }
}
