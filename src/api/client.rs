//! Synchronous client for the front end and the CLI: no async runtime, so a FlexVolume call
//! costs one exec, one connect and one round trip.
//!
//! Invariants: the daemon is found the way it was configured, even with kubelet's empty
//! environment ([`discover`]); the answer is read with a size limit and one deadline for the
//! whole exchange; options (secrets included) are sent only to a server running as root or
//! as this process's own user.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::{Request, Response};

/// The default socket path.
pub const DEFAULT_SOCKET: &str = "/run/moor/moor.sock";
/// The file beside a driver executable (`<plugin-dir>/moor~<driver>/frontend.yaml`) that
/// tells the front end where the daemon is; kubelet only execs `<dir>/<driver>`.
pub const FRONTEND_FILE: &str = "frontend.yaml";
/// Largest answer accepted from the daemon (a status table of thousands of volumes fits).
pub const MAX_ANSWER: usize = 1 << 20;
/// Largest config file the front end reads.
const MAX_CONFIG: u64 = 1 << 20;

/// Where the daemon is and what this node is called, as the front end and the CLI see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// The daemon's socket.
    pub socket: PathBuf,
    /// Where `socket` came from (`MOOR_SOCKET`, a file path, or `default`).
    pub socket_from: String,
    /// This node's name, the way the daemon picks it by default (None: unknown).
    pub node_name: Option<String>,
    /// Files that could not be used (unreadable, malformed, too open), for messages.
    pub notes: Vec<String>,
}

/// The keys the front end reads from a config file; any other key is ignored, so a daemon
/// key the front end does not know never breaks it.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct FrontKeys {
    socket: Option<PathBuf>,
    node_name: Option<String>,
}

/// Finds the daemon: `MOOR_SOCKET`, then `socket:` in [`FRONTEND_FILE`] inside
/// `driver_dir`, then `socket:` in the daemon's config file (`MOOR_CONFIG`, else
/// `default_config`, which the caller takes from the config module), then
/// [`DEFAULT_SOCKET`]. The node name: `MOOR_NODE_NAME`, then `node-name:` in the same two
/// files, then the hostname.
pub fn discover(default_config: &Path, driver_dir: Option<&Path>) -> Discovery {
    discover_with(&|k| std::env::var_os(k), default_config, driver_dir)
}

/// [`discover`] with the environment given (tests).
pub fn discover_with(
    env: &dyn Fn(&str) -> Option<OsString>,
    default_config: &Path,
    driver_dir: Option<&Path>,
) -> Discovery {
    let env = |k: &str| env(k).filter(|v| !v.is_empty());
    let mut notes = Vec::new();
    let mut files: Vec<(PathBuf, FrontKeys)> = Vec::new();
    let config = env("MOOR_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| default_config.to_owned());
    for path in driver_dir
        .map(|d| d.join(FRONTEND_FILE))
        .into_iter()
        .chain([config])
    {
        match read_keys(&path) {
            Ok(Some(keys)) => files.push((path, keys)),
            Ok(None) => {}
            Err(why) => notes.push(format!("{} ignored: {why}", path.display())),
        }
    }
    let (socket, socket_from) = match env("MOOR_SOCKET") {
        Some(s) => (PathBuf::from(s), "MOOR_SOCKET".to_owned()),
        None => files
            .iter()
            .find_map(|(p, k)| {
                k.socket
                    .clone()
                    .filter(|s| !s.as_os_str().is_empty())
                    .map(|s| (s, p.display().to_string()))
            })
            .unwrap_or_else(|| (DEFAULT_SOCKET.into(), "default".to_owned())),
    };
    let node_name = env("MOOR_NODE_NAME")
        .map(|n| n.to_string_lossy().into_owned())
        .or_else(|| {
            files
                .iter()
                .find_map(|(_, k)| k.node_name.clone().filter(|n| !n.is_empty()))
        })
        .or_else(|| crate::host::process::hostname().ok());
    Discovery {
        socket,
        socket_from,
        node_name,
        notes,
    }
}

/// Reads the front end's keys of one file: `Ok(None)` when it does not exist, `Err` (why)
/// when it cannot be trusted or parsed. A file that others may write could point the front
/// end, and the secrets it forwards, at another socket: it must belong to root (or to us)
/// and be writable by nobody else.
fn read_keys(path: &Path) -> Result<Option<FrontKeys>, String> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let md = f.metadata().map_err(|e| e.to_string())?;
    if !md.is_file() {
        return Err("not a regular file".into());
    }
    let me = crate::host::process::euid();
    if md.uid() != 0 && md.uid() != me {
        return Err(format!("owned by uid {}, not root", md.uid()));
    }
    if md.mode() & 0o022 != 0 {
        return Err(format!(
            "mode {:o} lets others write it",
            md.mode() & 0o7777
        ));
    }
    let mut text = String::new();
    f.take(MAX_CONFIG)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.trim().is_empty() {
        return Ok(Some(FrontKeys::default()));
    }
    serde_saphyr::from_str::<FrontKeys>(&text)
        .map(Some)
        .map_err(|e| format!("not valid YAML for moor: {e}"))
}

/// The socket path for the CLI (`moor status`, `moor forget`): as [`discover`] without a
/// driver directory.
pub fn socket_path(default_config: &Path) -> PathBuf {
    discover(default_config, None).socket
}

/// Where an operator looks when the daemon does not answer, from what this process can
/// see: the systemd unit when one is installed and systemd runs, else the DaemonSet's pod.
pub fn daemon_hint() -> String {
    let unit = [
        "/etc/systemd/system/moor.service",
        "/usr/lib/systemd/system/moor.service",
        "/lib/systemd/system/moor.service",
    ]
    .iter()
    .any(|p| Path::new(p).exists());
    if unit && Path::new("/run/systemd/system").is_dir() {
        "is `moor daemon` running? systemctl status moor; journalctl -u moor".into()
    } else {
        "is `moor daemon` running? it runs as the moor DaemonSet's pod on this node: kubectl get pods -A -o wide --field-selector spec.nodeName=<this node>, then kubectl logs it".into()
    }
}

/// Talking to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon listening.
    #[error("moor daemon is not reachable at {socket} ({hint})")]
    Connect {
        /// Socket path.
        socket: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
        /// Where to look ([`daemon_hint`]).
        hint: String,
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

/// Sends one request and waits (at most `timeout` for the whole exchange) for its response.
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let deadline = Instant::now() + timeout;
    let exchange = |what: String| ClientError::Exchange {
        socket: socket.to_owned(),
        what,
    };
    let s = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        socket: socket.to_owned(),
        source,
        hint: daemon_hint(),
    })?;
    let peer = crate::host::process::peer_credentials(&s)
        .map_err(|e| exchange(format!("cannot read the server's credentials: {e}")))?;
    let me = crate::host::process::euid();
    if peer.uid != 0 && peer.uid != me {
        return Err(exchange(format!(
            "the socket is served by uid {} (pid {}), not root; refusing to send it a request",
            peer.uid, peer.pid
        )));
    }
    s.set_write_timeout(Some(timeout))
        .map_err(|e| exchange(e.to_string()))?;
    let mut line = serde_json::to_vec(req).map_err(|e| exchange(e.to_string()))?;
    line.push(b'\n');
    (&s).write_all(&line)
        .map_err(|e| exchange(format!("send: {e}")))?;
    let answer = read_answer(&s, deadline, timeout).map_err(exchange)?;
    serde_json::from_slice(&answer).map_err(|e| exchange(format!("bad answer: {e}")))
}

/// Reads one answer line: at most [`MAX_ANSWER`] bytes, all of it before `deadline`.
fn read_answer(s: &UnixStream, deadline: Instant, timeout: Duration) -> Result<Vec<u8>, String> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no answer within {timeout:?}"));
        }
        s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        let n = match (&*s).read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("no answer within {timeout:?}"));
            }
            Err(e) => return Err(format!("receive: {e}")),
        };
        if n == 0 {
            return Err(if buf.is_empty() {
                "closed the connection without an answer".into()
            } else {
                format!(
                    "closed the connection after {} bytes of an unfinished answer",
                    buf.len()
                )
            });
        }
        let got = &chunk[..n];
        if let Some(end) = got.iter().position(|b| *b == b'\n') {
            buf.extend_from_slice(&got[..end]);
            if buf.len() > MAX_ANSWER {
                break;
            }
            return Ok(buf);
        }
        buf.extend_from_slice(got);
        if buf.len() > MAX_ANSWER {
            break;
        }
    }
    Err(format!(
        "answer larger than {} KiB; not a moor daemon, or a broken one",
        MAX_ANSWER >> 10
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The tests name their config file through `MOOR_CONFIG`; the default is never there.
    const NO_CONFIG: &str = "/nonexistent/moor-test/config.yaml";

    fn write(path: &Path, text: &str, mode: u32) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn the_socket_comes_from_env_then_the_driver_file_then_the_config_then_the_default() {
        let t = tempfile::tempdir().unwrap();
        let driver = t.path().join("moor~local");
        std::fs::create_dir(&driver).unwrap();
        let config = t.path().join("config.yaml");
        let cfg = config.clone().into_os_string();
        let env_config = move |k: &str| (k == "MOOR_CONFIG").then(|| cfg.clone());

        // Nothing configured: the default.
        let d = discover_with(&env_config, Path::new(NO_CONFIG), Some(&driver));
        assert_eq!(d.socket, PathBuf::from(DEFAULT_SOCKET));
        assert!(d.notes.is_empty(), "{:?}", d.notes);

        // The daemon's config file, with keys the front end does not know.
        write(
            &config,
            "socket: /srv/moor/c.sock\nnode-name: n-cfg\nstate-dir: /x\nlocal:\n  classes: []\nfuture-key: 3\n",
            0o644,
        );
        let d = discover_with(&env_config, Path::new(NO_CONFIG), Some(&driver));
        assert_eq!(d.socket, PathBuf::from("/srv/moor/c.sock"));
        assert_eq!(d.node_name.as_deref(), Some("n-cfg"));

        // The file beside the driver wins over the config file.
        write(
            &driver.join(FRONTEND_FILE),
            "socket: /srv/moor/f.sock\n",
            0o644,
        );
        let d = discover_with(&env_config, Path::new(NO_CONFIG), Some(&driver));
        assert_eq!(d.socket, PathBuf::from("/srv/moor/f.sock"));
        assert_eq!(d.node_name.as_deref(), Some("n-cfg"));

        // MOOR_SOCKET wins over both.
        let cfg2 = config.clone().into_os_string();
        let env_both = move |k: &str| match k {
            "MOOR_CONFIG" => Some(cfg2.clone()),
            "MOOR_SOCKET" => Some("/e.sock".into()),
            _ => None,
        };
        assert_eq!(
            discover_with(&env_both, Path::new(NO_CONFIG), Some(&driver)).socket,
            PathBuf::from("/e.sock")
        );
    }

    #[test]
    fn a_broken_or_open_file_falls_back_and_says_why() {
        let t = tempfile::tempdir().unwrap();
        let config = t.path().join("config.yaml");
        let cfg = config.clone().into_os_string();
        let env = move |k: &str| (k == "MOOR_CONFIG").then(|| cfg.clone());
        for (text, mode, why) in [
            ("socket: [unclosed\n", 0o644, "not valid YAML"),
            ("socket:\n  nested: map\n", 0o644, "not valid YAML"),
            ("socket: /evil.sock\n", 0o666, "lets others write it"),
            ("socket: /evil.sock\n", 0o620, "lets others write it"),
        ] {
            write(&config, text, mode);
            let d = discover_with(&env, Path::new(NO_CONFIG), None);
            assert_eq!(d.socket, PathBuf::from(DEFAULT_SOCKET), "{text:?} {mode:o}");
            assert_eq!(d.notes.len(), 1, "{text:?}");
            assert!(d.notes[0].contains(why), "{:?}", d.notes);
        }
        std::fs::remove_file(&config).unwrap();
        std::fs::create_dir(&config).unwrap();
        let d = discover_with(&env, Path::new(NO_CONFIG), None);
        assert_eq!(d.socket, PathBuf::from(DEFAULT_SOCKET));
        assert!(!d.notes.is_empty());
    }

    #[test]
    fn answers_are_bounded_in_size() {
        let t = tempfile::tempdir().unwrap();
        let sock = t.path().join("s.sock");
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut req = [0u8; 64];
            let _ = c.read(&mut req);
            let junk = vec![b'x'; 1 << 16];
            for _ in 0..64 {
                if c.write_all(&junk).is_err() {
                    break;
                }
            }
        });
        let e = call(&sock, &Request::Status, Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("answer larger than 1024 KiB"), "{e}");
        server.join().unwrap();
    }
}
