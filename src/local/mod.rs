//! Local persistent volumes: a directory or a disk on this node, served only to this node.
//!
//! `driver` serves a volume (`moor~local/local`); `classes` (config), `discover` (entries and
//! their stable ids), `pv` (PV objects), `wipe` (the never-wipe rules and the cleaning) and
//! `kube` (the API server) turn a node's disks into PersistentVolumes. The daemon's discovery
//! task is `daemon/local_pvs.rs`, `moor local …` is `cli/local.rs`: this module names neither
//! the lifecycle nor the daemon's config.

pub mod classes;
pub mod discover;
pub mod driver;
pub mod kube;
pub mod pv;
pub mod wipe;

pub use driver::{LocalDriver, OPTIONS};
