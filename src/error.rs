//! The top error of a volume operation, rolled up from the module errors. `reason()` is the
//! stable, low-cardinality label used in metrics and as the FlexVolume message prefix.

use std::path::PathBuf;
use std::time::Duration;

use crate::driver::DriverError;
use crate::flexvolume::OptionsError;
use crate::fs::FsError;
use crate::host::{MountError, PathError};
use crate::journal::JournalError;
use crate::lifecycle::ExpandError;

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
    #[error("volume {volume}: {source}")]
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
    #[error("volume {volume}: mount from {server} failed: {detail}{}", log_tail.as_ref().map(|t| format!("; client log: {t}")).unwrap_or_default())]
    RemoteMount {
        /// Volume key.
        volume: String,
        /// The server(s).
        server: String,
        /// The helper's failure.
        detail: String,
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
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The daemon is shutting down or a worker died.
    #[error("internal: {0}")]
    Internal(String),
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
                MountError::Sys { errno, .. } if *errno == nix::errno::Errno::EBUSY => "mount_busy",
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
            Error::RemoteMount { detail, .. } if detail.contains("did not finish within") => {
                "timeout"
            }
            Error::RemoteMount { .. } => "mount_failed",
            Error::Timeout { .. } => "timeout",
            Error::Io { .. } => "io_failed",
            Error::Internal(_) => "internal",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount_err(errno: nix::errno::Errno) -> Error {
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
            (mount_err(nix::errno::Errno::EBUSY), "mount_busy"),
            (mount_err(nix::errno::Errno::EINVAL), "mount_failed"),
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
                ExpandError::ReadOnly { volume: "v".into() }.into(),
                "read_only",
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
        ];
        for (e, label) in &cases {
            assert_eq!(e.reason(), *label, "{e:?}");
        }
    }
}
