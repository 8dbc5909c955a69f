//! The process's standard descriptors, for the FlexVolume front end: its one JSON line
//! must reach kubelet whatever state stdout is in, and never cause a second failure.
//!
//! Invariant: writing the reply never panics and never blocks on std's stdout lock, so the
//! panic hook can use it even when the panic happened inside a write to stdout.

use std::os::fd::{AsFd, BorrowedFd};

/// Opens `/dev/null` on any of descriptors 0, 1 and 2 that is closed, so a socket the front
/// end opens later can never take descriptor 1 and receive the reply meant for kubelet.
pub fn reserve_std_fds() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only asks whether the descriptor is open; it changes nothing.
        let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1;
        if !open {
            // The lowest free descriptor is the closed one, so it is filled in order.
            let _ = std::fs::OpenOptions::new()
                .read(fd == 0)
                .write(fd != 0)
                .open("/dev/null")
                .map(std::mem::forget::<std::fs::File>);
        }
    }
}

/// Writes `bytes` to descriptor 1 directly (no std buffer, no lock). Errors (closed stdout,
/// a broken pipe: SIGPIPE is ignored by Rust programs) are returned, never raised.
pub fn write_stdout(bytes: &[u8]) -> std::io::Result<()> {
    // SAFETY: descriptor 1 is borrowed for the length of this call only; reserve_std_fds
    // makes sure it is open, and a closed one only makes write(2) fail with EBADF.
    let fd = unsafe { BorrowedFd::borrow_raw(1) };
    write_all(fd.as_fd(), bytes)
}

fn write_all(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        match nix::unistd::write(fd, bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
