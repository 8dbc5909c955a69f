//! The one JSON object a FlexVolume call prints, and its exit code; and how the daemon's
//! typed [`Response`] becomes that object (the daemon knows nothing of FlexVolume).

use serde::{Deserialize, Serialize};

use crate::api::Response;

/// FlexVolume status strings (exact, case-sensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Done.
    Success,
    /// Failed; `message` says why.
    Failure,
    /// kubelet falls back to its own behaviour.
    #[serde(rename = "Not supported")]
    NotSupported,
}

/// What `init` advertises.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// false: kubelet calls only mount/unmount; attach happens inside mount.
    pub attach: bool,
    /// kubelet runs statfs on the pod volume dir for its volume stats.
    #[serde(rename = "supportsMetrics")]
    pub supports_metrics: bool,
    /// false: moor applies fsGroup itself (to the volume root only), so kubelet must not
    /// walk the volume recursively.
    #[serde(rename = "fsGroup")]
    pub fs_group: bool,
    /// kubelet may let the runtime relabel the volume.
    #[serde(rename = "selinuxRelabel")]
    pub selinux_relabel: bool,
}

/// A FlexVolume reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// Outcome.
    pub status: Status,
    /// Human message (short and actionable: it lands in pod events).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub message: Option<String>,
    /// `init` only.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub capabilities: Option<Capabilities>,
}

impl Reply {
    /// Success with no payload.
    pub fn success() -> Self {
        Reply {
            status: Status::Success,
            message: None,
            capabilities: None,
        }
    }

    /// Failure with a message.
    pub fn failure(message: impl Into<String>) -> Self {
        Reply {
            status: Status::Failure,
            message: Some(message.into()),
            capabilities: None,
        }
    }

    /// "Not supported": kubelet falls back to its default for this call.
    pub fn not_supported(message: impl Into<String>) -> Self {
        Reply {
            status: Status::NotSupported,
            message: Some(message.into()),
            capabilities: None,
        }
    }

    /// The `init` answer.
    pub fn init() -> Self {
        Reply {
            status: Status::Success,
            message: None,
            capabilities: Some(Capabilities {
                attach: false,
                supports_metrics: true,
                fs_group: false,
                selinux_relabel: true,
            }),
        }
    }

    /// The reply for the daemon's answer: `Success`, or `Failure` with the reason prefix
    /// and the cause chain (see [`crate::api::Failure`]). A status table is no answer to a
    /// FlexVolume call.
    pub fn from_response(r: Response) -> Self {
        match r {
            Response::Done => Reply::success(),
            Response::Failed(f) => Reply::failure(f.to_string()),
            other @ (Response::Status { .. }
            | Response::VolumeStats { .. }
            | Response::Expanded { .. }
            | Response::Gc { .. }
            | Response::Logs { .. }) => {
                Reply::failure(format!("daemon_error: unexpected answer {other:?}"))
            }
        }
    }

    /// Exit code kubelet expects: 0 for Success, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self.status {
            Status::Success => 0,
            Status::Failure | Status::NotSupported => 1,
        }
    }

    /// The single line printed on stdout.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"status":"Failure","message":"moor: cannot encode reply"}"#.to_owned()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_reply_is_what_kubelet_parses() {
        assert_eq!(
            Reply::init().to_json(),
            r#"{"status":"Success","capabilities":{"attach":false,"supportsMetrics":true,"fsGroup":false,"selinuxRelabel":true}}"#
        );
        assert_eq!(Reply::init().exit_code(), 0);
    }

    #[test]
    fn each_daemon_answer_prints_what_kubelet_read_before() {
        use crate::api::Failure;
        for (r, json) in [
            (Response::Done, r#"{"status":"Success"}"#),
            (
                Response::Failed(Failure {
                    reason: Some("mount_failed".into()),
                    causes: vec!["volume k: stage".into(), "EBUSY: busy".into()],
                }),
                r#"{"status":"Failure","message":"mount_failed: volume k: stage: EBUSY: busy"}"#,
            ),
            (
                Response::Failed(Failure::refused("moor daemon is shutting down; retry")),
                r#"{"status":"Failure","message":"moor daemon is shutting down; retry"}"#,
            ),
            (
                Response::Failed(Failure::labelled("bad_request", "eof")),
                r#"{"status":"Failure","message":"bad_request: eof"}"#,
            ),
            (
                Response::Status {
                    node: "n".into(),
                    volumes: vec![],
                    set_aside: vec![],
                    notices: vec![],
                    dead_mounts: vec![],
                },
                r#"{"status":"Failure","message":"daemon_error: unexpected answer Status { node: \"n\", volumes: [], set_aside: [], notices: [], dead_mounts: [] }"}"#,
            ),
        ] {
            let reply = Reply::from_response(r);
            assert_eq!(reply.to_json(), json);
            assert_eq!(
                reply.exit_code(),
                i32::from(reply.status != Status::Success)
            );
        }
    }

    /// A failed operation's reply, from the daemon's typed error through the wire, is the
    /// message kubelet got before the Response was typed (reason, then each cause once).
    #[test]
    fn a_failed_operation_reads_as_it_did() {
        use crate::api::Failure;
        use crate::error::Error;
        use std::time::Duration;
        let mount = Error::Mount {
            volume: "k".into(),
            source: crate::host::MountError::Sys {
                op: "bind",
                target: "/t".into(),
                errno: crate::host::Errno::EBUSY,
            },
        };
        let timeout = Error::Timeout {
            volume: "/pods/v".into(),
            op: "mount",
            after: Duration::from_secs(300),
            running: Some("`mkfs.xfs /dev/x` has run for 2.0s".into()),
        };
        let command: Error = crate::volume::DriverError::Command {
            volume: "v".into(),
            source: crate::host::ExecError::Failed {
                cmdline: "iscsiadm -m node --login".into(),
                code: Some(24),
                stderr: "iscsiadm: login failed".into(),
            },
        }
        .into();
        for (e, message) in [
            (
                mount,
                "mount_busy: volume k: bind /t: EBUSY: Device or resource busy",
            ),
            (
                timeout,
                "timeout: volume /pods/v: mount did not finish within 300s; kubelet will retry (`mkfs.xfs /dev/x` has run for 2.0s and is left to finish: cut short it could leave the volume half-made; the volume stays locked until it ends)",
            ),
            (
                command,
                "command_failed: volume v: `iscsiadm -m node --login` failed (exit status 24): iscsiadm: login failed",
            ),
        ] {
            let wire =
                serde_json::to_string(&Response::Failed(Failure::of(e.reason(), &e))).unwrap();
            let reply = Reply::from_response(serde_json::from_str(&wire).unwrap());
            assert_eq!(reply, Reply::failure(message));
        }
    }

    #[test]
    fn not_supported_is_spelled_exactly() {
        let r = Reply::not_supported("x");
        assert_eq!(r.to_json(), r#"{"status":"Not supported","message":"x"}"#);
        assert_eq!(r.exit_code(), 1);
        assert_eq!(Reply::failure("y").exit_code(), 1);
    }
}
