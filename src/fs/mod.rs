//! Filesystems on block devices: probe, format-if-blank, fsck.
//!
//! The never-format-data rule lives in one function, [`format::ensure_filesystem`].

pub mod format;
pub mod mkfs;
pub mod probe;
pub mod superblock;

pub use format::{FsError, Prepared, check_exclusive, ensure_filesystem, fsck};
