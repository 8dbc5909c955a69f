//! The FlexVolume contract: argv, kubelet's JSON options (parsed into the typed
//! [`crate::volume::VolumeOptions`] by the one parser), the reply type, and the front end that
//! kubelet executes. See `shared/notes/flexvolume.md` for the contract as kubelet drives it.
//!
//! Invariant: the front end prints exactly one JSON object on stdout and nothing on stderr,
//! on every path (bad argv, malformed JSON, unknown op, dead daemon, panic), and has no side
//! effect of its own: it parses and checks, then forwards the typed options to the daemon.

pub mod frontend;
pub mod install;
pub mod options;
pub mod precheck;
pub mod reply;

pub use precheck::{PrecheckError, precheck};
pub use reply::{Capabilities, Reply, Status};

/// The drivers moor serves, as FlexVolume driver names (`moor~<name>/<name>`).
pub const DRIVERS: &[&str] = &["local", "iscsi", "rbd", "fc", "nfs", "glusterfs", "cephfs"];
