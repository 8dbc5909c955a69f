//! The typed volume: this module will own `VolumeOptions` parsed once (typed mount options,
//! read-only, fsType, fsGroup, secrets beside), the `Driver` trait and the typed driver
//! state the journal persists; a later renovation moves them here. Today it owns the shared
//! validators ([`validate`]): one per kind of value a driver hands to a tool's argv, a mount
//! source or a record file.
//!
//! Invariant: a value that reaches a tool went through its kind's validator first, in the
//! driver's `volume()` (pure, so the front end can run it without the daemon).

pub mod validate;
