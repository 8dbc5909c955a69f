//! Local persistent volumes: a directory or a disk on this node, served only to this node.
//!
//! `driver` serves a volume (`moor~local/local`); `classes` (config), `discover` (entries and
//! their stable ids), `pv` (PV objects), `wipe` (the never-wipe rules and the cleaning),
//! `kube` (the API server), `watch` (the daemon's discovery task) and `cli` (`moor local …`)
//! turn a node's disks into PersistentVolumes.

pub mod classes;
pub mod cli;
pub mod discover;
pub mod driver;
pub mod kube;
pub mod pv;
pub mod watch;
pub mod wipe;

pub use driver::{LocalDriver, OPTIONS};
