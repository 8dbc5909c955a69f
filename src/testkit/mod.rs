//! The one harness: a real `moor daemon` on a scratch kubelet tree, driven exactly as kubelet
//! drives a FlexVolume driver (an exec of `<plugins>/moor~local/local` with kubelet's argv
//! and JSON). `moor demo`, the host integration tests (`tests/`) and the benchmark
//! (`benches/moorbench.rs`) all start, drive and tear down their daemon through it.
//!
//! - [`tree`]: the scratch tree's layout (kubelet dir, run dir, state dir, socket, driver
//!   symlink, pod directories), its allow-list config, and its teardown (every mount under
//!   it detached, deepest first);
//! - [`daemon`]: spawning the daemon on a tree, waiting until it serves (its socket answers,
//!   or its `READY=1` arrives over sd_notify), stopping it (SIGTERM) or killing it (SIGKILL);
//! - [`flex`]: one FlexVolume call through the driver symlink, checked against kubelet's
//!   contract: exactly one JSON line on stdout and nothing on stderr;
//! - [`loopdev`]: a loop device over a backing file, detached when dropped;
//! - [`csi`]: a typed CSI client over a driver's Unix socket, as kubelet dials it;
//! - [`csi_call`]: a CSI node call as the CSI front end hands it to the daemon, and
//!   kubelet's CSI path shapes.
//!
//! **How the release binary reaches it.** `moor demo` is a production command, so the
//! modules above are always compiled: they return errors, never panic, and touch the machine
//! only through `host/` (`host::sandbox`, `host::exec`). What only tests want — panicking
//! wrappers with the tests' vocabulary (`Daemon::start()`, `d.mount(…).assert_ok()`), the
//! sandbox check, loop devices listed in a per-process allow-list directory, the log and
//! journal checks — lives in [`harness`], behind the cargo feature `testkit`. The tests and
//! the bench get it through a dev-dependency of the crate on itself with that feature
//! (`Cargo.toml`), so `cargo test`, `cargo nextest run` and `cargo bench` enable it and a
//! release build (`packaging/build-release`) never contains it.
//!
//! Invariant: everything the harness creates lives under one scratch root that the caller
//! owns; it never touches the host's `/var/lib/kubelet`, `/run/moor` or `/var/lib/moor`, and
//! its teardown leaves no mount, daemon or loop device behind.

pub mod csi;
pub mod csi_call;
pub mod daemon;
pub mod fakeapi;
pub mod flex;
#[cfg(feature = "testkit")]
pub mod harness;
pub mod loopdev;
pub mod tree;

use std::path::PathBuf;

pub use daemon::{DaemonProcess, DaemonSpec, Ready};
pub use flex::FlexReply;
pub use loopdev::LoopDevice;
pub use tree::{AllowList, Tree};

/// A harness step failed: the scratch tree, the daemon, a FlexVolume call or a loop device.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// A file or directory of the scratch tree.
    #[error("scratch tree: {what} {}", path.display())]
    Tree {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The daemon could not be started.
    #[error("start moor daemon {}", exe.display())]
    Spawn {
        /// The binary.
        exe: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The daemon exited before it was ready.
    #[error("moor daemon exited early ({status}); its log: {}", log.display())]
    ExitedEarly {
        /// Its exit status.
        status: String,
        /// Its log file.
        log: PathBuf,
    },
    /// The daemon did not become ready in time.
    #[error("moor daemon not ready within {seconds} s ({detail}); its log: {}", log.display())]
    NotReady {
        /// The deadline.
        seconds: u64,
        /// What was waited for.
        detail: String,
        /// Its log file.
        log: PathBuf,
    },
    /// The FlexVolume front end could not be executed.
    #[error("exec FlexVolume {op} through {}", link.display())]
    Exec {
        /// The operation.
        op: String,
        /// The driver symlink.
        link: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The front end broke kubelet's contract (one JSON line on stdout, nothing on stderr).
    #[error("FlexVolume {op}: the front end broke kubelet's contract: {detail}")]
    Contract {
        /// The operation.
        op: String,
        /// What it printed wrong.
        detail: String,
    },
    /// losetup failed.
    #[error("loop device over {}: {detail}", backing.display())]
    Loop {
        /// The backing file.
        backing: PathBuf,
        /// losetup's error.
        detail: String,
    },
    /// A CSI call or its connection.
    #[error("CSI {what}: {detail}")]
    Csi {
        /// The call (`csi_stage`, …), the socket, or the step.
        what: String,
        /// What failed.
        detail: String,
    },
    /// A loopback HTTP request to the daemon's endpoint.
    #[error("GET 127.0.0.1:{port}{path}")]
    Http {
        /// The port.
        port: u16,
        /// The path asked for.
        path: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

impl TestkitError {
    /// A stable, low-cardinality label for the failure.
    pub fn reason(&self) -> &'static str {
        match self {
            TestkitError::Tree { .. } => "tree",
            TestkitError::Spawn { .. } => "spawn",
            TestkitError::ExitedEarly { .. } => "exited_early",
            TestkitError::NotReady { .. } => "not_ready",
            TestkitError::Exec { .. } => "exec",
            TestkitError::Contract { .. } => "contract",
            TestkitError::Loop { .. } => "loop",
            TestkitError::Csi { .. } => "csi",
            TestkitError::Http { .. } => "http",
        }
    }
}

/// A TCP port on loopback that nothing listens on now (for a daemon's `--metrics-addr`).
pub fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// `GET <path>` from a daemon's HTTP endpoint on loopback: the whole response, headers
/// included.
pub fn http_get(port: u16, path: &str) -> Result<String, TestkitError> {
    use std::io::{Read, Write};
    let err = |source| TestkitError::Http {
        port,
        path: path.to_owned(),
        source,
    };
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(err)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .map_err(err)?;
    let mut body = String::new();
    s.read_to_string(&mut body).map_err(err)?;
    Ok(body)
}
