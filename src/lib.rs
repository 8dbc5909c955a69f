//! moor: a node-local storage agent for Kubernetes.
//!
//! One binary is the daemon (`moor daemon`), the FlexVolume driver kubelet executes (`moor
//! flex …`, or through a `moor~<driver>/<driver>` symlink) and the operator's CLI. See
//! `DESIGN.md` in the shared notes and the README for the architecture.

pub mod api;
pub mod attach;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod csi;
pub mod daemon;
pub mod error;
pub mod flexvolume;
pub mod fs;
pub mod fuzzing;
pub mod host;
pub mod http;
pub mod journal;
#[cfg(test)]
mod layering;
pub mod lifecycle;
pub mod local;
pub mod metrics;
pub mod share;
pub mod telemetry;
pub mod testhook;
pub mod testkit;
pub mod volume;

pub use error::Error;
