//! The mount-table watch: a thread woken by the kernel on every mount and unmount in this
//! mount namespace (`/proc/self/mountinfo` polls POLLPRI; no read needed).
//!
//! Invariant: the watch only says "something changed"; what changed is asked afterwards,
//! coalesced by the caller, so a burst of mounts costs one table read, not one per mount.

use std::os::fd::AsRawFd;
use std::path::Path;

/// Starts a thread that calls `changed` after each change of the mount table that
/// `mountinfo` (the host paths' `<proc>/self/mountinfo`) describes. Fails when the file
/// cannot be opened or the thread cannot start; the caller then polls on a timer only.
pub fn watch(mountinfo: &Path, changed: impl Fn() + Send + 'static) -> std::io::Result<()> {
    let file = std::fs::File::open(mountinfo)?;
    std::thread::Builder::new()
        .name("moor-mountwatch".into())
        .spawn(move || {
            let mut pfd = libc::pollfd {
                fd: file.as_raw_fd(),
                events: libc::POLLPRI,
                revents: 0,
            };
            loop {
                // SAFETY: one valid pollfd whose fd stays open (owned by `file`) for the loop.
                let r = unsafe { libc::poll(&mut pfd, 1, -1) };
                if r < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.raw_os_error() == Some(libc::EINTR) {
                        continue;
                    }
                    tracing::warn!(error = %e, "mount-table watch stopped");
                    return;
                }
                if pfd.revents & (libc::POLLPRI | libc::POLLERR) != 0 {
                    changed();
                }
            }
        })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_mount_table_is_an_error_not_a_silent_watch() {
        let t = tempfile::tempdir().unwrap();
        let e = watch(&t.path().join("self/mountinfo"), || {}).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }
}
