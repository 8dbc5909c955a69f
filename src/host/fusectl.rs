//! FUSE connection control (fusectl): the one way to free calls stuck in a FUSE server that
//! stopped answering. Such calls sit in uninterruptible sleep — no signal, no deadline can
//! end them — until the connection is aborted; afterwards they return ENOTCONN at once.
//!
//! fusectl is often not mounted; moor mounts it when it needs it and leaves it (it is a
//! kernel control filesystem with no state of its own).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::mounts::{FsMount, Mounter};

/// Where the kernel exposes FUSE connections, under sysfs (`/sys/fs/fuse/connections`).
pub const CONNECTIONS_IN_SYS: &str = "fs/fuse/connections";

/// Aborts the FUSE connection of the superblock with device number `0:minor` (what
/// `/proc/self/mountinfo` shows for a FUSE mount).
pub fn abort(mounter: &dyn Mounter, connections: &Path, minor: u32) -> std::io::Result<()> {
    let conn = connection_dir(connections, minor);
    if !conn.exists() {
        let m = FsMount {
            source: "fusectl".into(),
            target: connections.into(),
            fs_type: "fusectl".into(),
            flags: nix::mount::MsFlags::empty(),
            data: String::new(),
        };
        // EBUSY: mounted meanwhile; anything else shows up as a missing connection below.
        let _ = mounter.mount(&m, Duration::from_secs(5));
    }
    if !conn.exists() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no FUSE connection {}", conn.display()),
        ));
    }
    std::fs::write(conn.join("abort"), b"1")
}

fn connection_dir(connections: &Path, minor: u32) -> PathBuf {
    connections.join(minor.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeMounts;

    #[test]
    fn writes_abort_of_the_connection() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("57")).unwrap();
        let m = FakeMounts::default();
        abort(&m, d.path(), 57).unwrap();
        assert_eq!(std::fs::read(d.path().join("57/abort")).unwrap(), b"1");
        assert!(
            m.mount_points().is_empty(),
            "fusectl was reachable: no mount"
        );
    }

    #[test]
    fn a_missing_connection_is_an_error_after_trying_to_mount_fusectl() {
        let d = tempfile::tempdir().unwrap();
        let m = FakeMounts::default();
        let e = abort(&m, d.path(), 9).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        assert_eq!(m.mount_points(), vec![d.path().to_path_buf()]);
    }
}
