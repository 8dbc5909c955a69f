//! The typed volume: [`VolumeOptions`] parsed once (typed mount options, read-only, fsType,
//! fsGroup, the driver's keys; secrets beside), the [`Driver`] trait and its table, the typed
//! driver state the journal persists ([`VolumeState`], and [`StageSource`]: what the stage
//! mounts), and the shared validators ([`validate`]): one per kind of value a driver hands to
//! a tool's argv, a mount source or a record file.
//!
//! Invariants: a value that reaches a tool went through its kind's validator first, in
//! [`options::parse`] (what every driver shares) or the driver's `volume()` (its own keys),
//! both pure, so the front end runs them without the daemon; nothing here names a driver
//! implementation (the daemon's composition root builds the table).

pub mod driver;
pub mod options;
pub mod state;
pub mod validate;

pub use driver::{
    Attached, CapacityError, Driver, DriverError, Drivers, NodeContext, ProtocolError, Recorded,
    VolumeSpec, volume_key,
};
pub use options::{MountOptions, OptionsError, Secret, VolumeOptions};
pub use state::{RemoteMount, StageSource, VolumeState};
