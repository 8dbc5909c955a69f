//! `sd_notify(3)` without libsystemd: one datagram to `$NOTIFY_SOCKET` (a path, or an
//! abstract socket when it starts with `@`). A no-op when not run by systemd.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (e.g. `READY=1`) to the service manager, if there is one.
pub fn notify(state: &str) -> std::io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let path = path.to_string_lossy().into_owned();
    let sock = UnixDatagram::unbound()?;
    let addr = match path.strip_prefix('@') {
        Some(abs) => SocketAddr::from_abstract_name(abs.as_bytes())?,
        None => SocketAddr::from_pathname(&path)?,
    };
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_ready_to_the_socket() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("notify");
        let rx = UnixDatagram::bind(&p).unwrap();
        set_notify_socket(&p);
        assert!(notify("READY=1").unwrap());
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    fn set_notify_socket(v: &std::path::Path) {
        // SAFETY: nextest runs each test in its own process; no other thread reads the
        // environment while this one writes it.
        unsafe { std::env::set_var("NOTIFY_SOCKET", v) };
    }
}
