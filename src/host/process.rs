//! Who this process and its peers are — effective uid, host name, the credentials of a Unix
//! socket's peer — and the pid-file lock that keeps one daemon per directory.
//!
//! Invariant: a peer is identified by the kernel's `SO_PEERCRED` answer, never by anything
//! the peer says; the lock file is opened without following a symlink and the lock is held
//! through a read-only descriptor, so a state dir can be remounted read-only under it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// This daemon's mount namespace token (see [`super::nsmark`]), once the daemon set it:
/// a mount id means something only inside the namespace it was read in. `None` in a
/// process that never set it (unit tests, the CLI).
pub fn mount_namespace() -> Option<u64> {
    NS.get().copied()
}

/// Sets [`mount_namespace`] (once; later calls are ignored).
pub fn set_mount_namespace(token: u64) {
    let _ = NS.set(token);
}

static NS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// This process's effective uid.
pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// The kernel's host name (lossy UTF-8).
pub fn hostname() -> std::io::Result<String> {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .map_err(std::io::Error::from)
}

/// The process at the other end of a Unix socket, as the kernel saw it connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// Its uid.
    pub uid: u32,
    /// Its pid.
    pub pid: i32,
}

/// `SO_PEERCRED` of `stream`.
pub fn peer_credentials(stream: &UnixStream) -> std::io::Result<PeerCred> {
    let c = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)?;
    Ok(PeerCred {
        uid: c.uid(),
        pid: c.pid(),
    })
}

/// An exclusive lock on a pid file, held until dropped.
#[derive(Debug)]
pub struct PidLock {
    _held: nix::fcntl::Flock<File>,
}

/// Why [`lock_pid_file`] did not take the lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("held by another process")]
    Held {
        /// The holder's pid, as it wrote it into the file.
        pid: Option<u32>,
    },
    /// The file could not be opened or written.
    #[error("lock file {op}")]
    Io {
        /// `open`, `truncate` or `write`.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Takes an exclusive, non-blocking lock on `path` (created 0600, never through a symlink)
/// and writes this process's pid into it; when another process holds it, says which.
pub fn lock_pid_file(path: &Path) -> Result<PidLock, LockError> {
    let io = |op| move |source| LockError::Io { op, source };
    let open = |write: bool| {
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(write)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(io("open"))
    };
    // Created by a short-lived writable handle; the lock itself is held through a read-only
    // one, so an operator can still remount the state dir read-only under a running daemon.
    drop(open(true)?);
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io("open"))?;
    let held = match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((mut f, _)) => {
            let mut text = String::new();
            let pid = f
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse().ok());
            return Err(LockError::Held { pid });
        }
    };
    let mut w = open(true)?;
    w.set_len(0).map_err(io("truncate"))?;
    w.write_all(format!("{}\n", std::process::id()).as_bytes())
        .map_err(io("write"))?;
    Ok(PidLock { _held: held })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_freed_on_drop() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("moor.lock");
        let held = lock_pid_file(&p).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            format!("{}\n", std::process::id())
        );
        match lock_pid_file(&p) {
            Err(LockError::Held { pid }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("{other:?}"),
        }
        drop(held);
        lock_pid_file(&p).unwrap();
    }

    #[test]
    fn a_symlinked_lock_file_is_refused() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("elsewhere"), "").unwrap();
        std::os::unix::fs::symlink(t.path().join("elsewhere"), t.path().join("moor.lock")).unwrap();
        assert!(matches!(
            lock_pid_file(&t.path().join("moor.lock")),
            Err(LockError::Io { op: "open", .. })
        ));
    }

    #[test]
    fn a_socket_pair_shows_this_process_as_its_peer() {
        let (a, _b) = UnixStream::pair().unwrap();
        let c = peer_credentials(&a).unwrap();
        assert_eq!(c.uid, euid());
        assert_eq!(c.pid, std::process::id() as i32);
    }
}
