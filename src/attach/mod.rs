//! Block attach drivers: each makes a remote disk appear as a local block device (and makes
//! it go away), and nothing more — probing, formatting and mounting are the lifecycle's.

pub mod rbd;
