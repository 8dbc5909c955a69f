//! Helpers for host integration tests (tier 2): the one harness, `moor::testkit` (a real
//! `moor daemon` on a temporary kubelet tree, driven through the real `moor flex` front end;
//! real loop devices, mkfs and mounts), plus [`host`]: what only these tests check on the
//! host (signatures, checksums, the mount table's details).
//!
//! These tests need root and a private mount namespace (`unshare -m`, as `run-tests`
//! arranges); each carries `#[ignore = "tier 2: …"]`, so a plain `cargo test` shows them as
//! ignored and `run-tests` runs them with `--run-ignored all`. A missing capability FAILS
//! the test with a message saying what is missing: a green run must mean the tests really ran.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

pub use moor::testkit::harness::*;

/// Host-side checks (signatures, checksums, mount table) and device setup.
pub mod host;
