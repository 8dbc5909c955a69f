//! The daemon's answer as the spec's gRPC status: a [`Failure`]'s stable reason picks the
//! code, and the message is the Failure's own `<reason>: <cause>: …`, so kubelet's events
//! carry the same reason labels as FlexVolume's messages and moor's metrics.
//!
//! Invariant: one table ([`code_for`]); a reason it does not name (or no reason) is Internal.

use tonic::{Code, Status};

use crate::api::Failure;

/// The status code of a failure `reason`.
pub fn code_for(reason: Option<&str>) -> Code {
    match reason {
        Some(
            "bad_options"
            | "bad_path"
            | "unknown_driver"
            | "unsupported_capability"
            | "missing_argument",
        ) => Code::InvalidArgument,
        Some("unknown_volume") => Code::NotFound,
        Some("conflict") => Code::AlreadyExists,
        Some(
            "key_in_use" | "not_staged" | "still_published" | "single_writer" | "target_busy"
            | "not_owned" | "device_changed" | "read_only",
        ) => Code::FailedPrecondition,
        Some("busy") => Code::Aborted,
        Some("timeout") => Code::DeadlineExceeded,
        Some("too_many_volumes") => Code::ResourceExhausted,
        _ => Code::Internal,
    }
}

/// A failure as a gRPC status.
pub fn status_of(f: &Failure) -> Status {
    Status::new(code_for(f.reason.as_deref()), f.to_string())
}

/// The front end's own refusal of a call (before the daemon sees it).
pub fn refuse(reason: &str, message: impl Into<String>) -> Status {
    status_of(&Failure::labelled(reason, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_gets_the_specs_code_and_the_message_keeps_the_reason() {
        for (reason, code) in [
            ("bad_options", Code::InvalidArgument),
            ("missing_argument", Code::InvalidArgument),
            ("unsupported_capability", Code::InvalidArgument),
            ("unknown_volume", Code::NotFound),
            ("conflict", Code::AlreadyExists),
            ("key_in_use", Code::FailedPrecondition),
            ("single_writer", Code::FailedPrecondition),
            ("busy", Code::Aborted),
            ("timeout", Code::DeadlineExceeded),
            ("too_many_volumes", Code::ResourceExhausted),
            ("mount_failed", Code::Internal),
        ] {
            let s = status_of(&Failure::labelled(reason, "volume v: why"));
            assert_eq!(s.code(), code, "{reason}");
            assert_eq!(s.message(), format!("{reason}: volume v: why"));
        }
        let s = status_of(&Failure::refused("moor daemon is shutting down; retry"));
        assert_eq!(s.code(), Code::Internal);
        assert_eq!(s.message(), "moor daemon is shutting down; retry");
    }
}
