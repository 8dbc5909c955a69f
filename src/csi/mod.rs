//! The CSI front end: kubelet's gRPC calls (CSI Identity, Node, and Controller's
//! capabilities) and kubelet's plugin registration, served by the daemon on Unix sockets.
//!
//! The generated code lives apart in [`proto`]; everything else here is hand-written. The
//! front end checks a call's arguments, translates it into an [`crate::api::Request`] and
//! hands it in process to the daemon's [`crate::api::Handler`], exactly as FlexVolume's
//! socket requests go; it never touches the machine itself. Secrets never reach a log line:
//! the messages that carry them print through [`redact`].

pub mod proto;
pub mod redact;
