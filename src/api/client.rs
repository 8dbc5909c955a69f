//! Synchronous client for the front end and the CLI: no async runtime, so a FlexVolume call
//! costs one exec, one connect and one round trip.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Request, Response};

/// The default socket path.
pub const DEFAULT_SOCKET: &str = "/run/moor/moor.sock";

/// The socket path: `MOOR_SOCKET`, else the default (kubelet passes a driver no flags).
pub fn socket_path() -> PathBuf {
    std::env::var_os("MOOR_SOCKET")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| DEFAULT_SOCKET.into())
}

/// Talking to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon listening.
    #[error(
        "moor daemon is not reachable at {socket}: {source} (is `moor daemon` running? systemctl status moor)"
    )]
    Connect {
        /// Socket path.
        socket: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The exchange broke.
    #[error("moor daemon at {socket}: {what}")]
    Exchange {
        /// Socket path.
        socket: PathBuf,
        /// What happened.
        what: String,
    },
}

/// Sends one request and waits (at most `timeout`) for its response.
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let exchange = |what: String| ClientError::Exchange {
        socket: socket.to_owned(),
        what,
    };
    let mut s = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        socket: socket.to_owned(),
        source,
    })?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| exchange(e.to_string()))?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| exchange(e.to_string()))?;
    let mut line = serde_json::to_vec(req).map_err(|e| exchange(e.to_string()))?;
    line.push(b'\n');
    s.write_all(&line)
        .map_err(|e| exchange(format!("send: {e}")))?;
    let mut reader = BufReader::new(s);
    let mut resp = String::new();
    match reader.read_line(&mut resp) {
        Ok(0) => Err(exchange("closed the connection without an answer".into())),
        Ok(_) => serde_json::from_str(&resp).map_err(|e| exchange(format!("bad answer: {e}"))),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err(exchange(format!("no answer within {timeout:?}")))
        }
        Err(e) => Err(exchange(format!("receive: {e}"))),
    }
}
