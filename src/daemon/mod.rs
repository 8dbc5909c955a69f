//! The daemon: start-up (directories, single-instance lock, reconstruction, socket,
//! metrics), readiness via sd_notify, the reconciler, and a clean shutdown on SIGTERM that
//! leaves every mount in place.

pub mod executor;
pub mod notify;
pub mod reconciler;

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::driver::Drivers;
use crate::host::{Host, HostPaths};
use crate::http::HttpState;
use crate::journal::Journal;
use crate::lifecycle::{Lifecycle, Timeouts};
use crate::metrics::{Metrics, ReconstructionLabels};

/// How long shutdown waits for operations in progress.
const DRAIN_LIMIT: Duration = Duration::from_secs(25);

/// Start-up failed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A directory or file could not be prepared.
    #[error("{what} {path}: {source}")]
    Io {
        /// What.
        what: &'static str,
        /// Path.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// Another daemon holds the lock.
    #[error("another moor daemon is running (lock {0} is held)")]
    AlreadyRunning(PathBuf),
    /// Reconstruction failed outright.
    #[error("reconstruction failed: {0}")]
    Reconstruct(#[from] crate::Error),
    /// The journal could not be opened.
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DaemonError + 'a {
    move |source| DaemonError::Io {
        what,
        path: path.into(),
        source,
    }
}

fn private_dir(p: &Path) -> Result<(), DaemonError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .map_err(io("create", p))?;
    fs::set_permissions(p, fs::Permissions::from_mode(0o700)).map_err(io("chmod", p))
}

/// Holds the single-instance lock for the daemon's lifetime.
fn lock_instance(run_dir: &Path) -> Result<nix::fcntl::Flock<File>, DaemonError> {
    let path = run_dir.join("moor.lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io("open", &path))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| DaemonError::AlreadyRunning(path))
}

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(cfg: Config) -> Result<(), DaemonError> {
    let started = Instant::now();
    // The kubelet dir must exist before its symlinks can be resolved (HostPaths::system).
    fs::create_dir_all(&cfg.kubelet_dir).map_err(io("create", &cfg.kubelet_dir))?;
    private_dir(&cfg.state_dir)?;
    private_dir(&cfg.run_dir)?;
    if let Some(parent) = cfg.socket.parent() {
        private_dir(parent)?;
    }
    let _lock = lock_instance(&cfg.run_dir)?;
    let host = Host::system(HostPaths::system(
        cfg.kubelet_dir.clone(),
        cfg.state_dir.clone(),
        cfg.run_dir.clone(),
    ));
    let journal = Journal::open(&cfg.state_dir, &cfg.run_dir)?;
    let timeouts = Timeouts {
        mount: cfg.mount_timeout,
        unmount: cfg.mount_timeout,
    };
    // Under systemd a FUSE daemon started from moor's cgroup would die with a restart of
    // the unit (or a `systemctl stop`); its own scope keeps every pod's mount alive.
    let systemd = std::path::Path::new("/run/systemd/system").is_dir();
    let lifecycle = Arc::new(
        Lifecycle::new(
            host,
            journal,
            Drivers::builtin(),
            cfg.node_name.clone(),
            timeouts,
        )
        .with_fuse_scope(systemd),
    );
    let metrics = Arc::new(Metrics::new());
    let report = lifecycle.reconstruct()?;
    for (outcome, n) in [
        ("kept", report.kept_publishes + report.kept_stages),
        (
            "rolled_back",
            report.rolled_back_publishes + report.rolled_back_stages,
        ),
        ("finished", report.finished),
        ("healed", report.healed),
        ("adopted", report.adopted),
        ("idled", report.idled),
        ("problem", report.problems.len()),
    ] {
        metrics
            .reconstruction
            .get_or_create(&ReconstructionLabels {
                outcome: outcome.into(),
            })
            .inc_by(n as u64);
    }
    tracing::info!(?report, elapsed_ms = started.elapsed().as_secs_f64() * 1e3, node = %cfg.node_name, "state reconstructed");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("moor")
        .build()
        .map_err(io("start runtime", Path::new("-")))?;
    rt.block_on(serve(cfg, lifecycle, metrics))
}

async fn serve(
    cfg: Config,
    lifecycle: Arc<Lifecycle>,
    metrics: Arc<Metrics>,
) -> Result<(), DaemonError> {
    let http_state = Arc::new(HttpState {
        metrics: metrics.clone(),
        ready: Default::default(),
    });
    if let Some(addr) = cfg.metrics_addr {
        let (bound, _task) = crate::http::serve(addr, http_state.clone())
            .await
            .map_err(io("listen", Path::new(&addr.to_string())))?;
        tracing::info!(addr = %bound, "metrics listening");
    }
    // The lock proves no other daemon runs, so a socket file left here is stale.
    match fs::remove_file(&cfg.socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("remove stale", &cfg.socket)(e)),
    }
    let listener =
        std::os::unix::net::UnixListener::bind(&cfg.socket).map_err(io("bind", &cfg.socket))?;
    fs::set_permissions(&cfg.socket, fs::Permissions::from_mode(0o600))
        .map_err(io("chmod", &cfg.socket))?;

    let exec = Arc::new(executor::Executor::new(
        lifecycle.clone(),
        metrics.clone(),
        cfg.operation_timeout,
    ));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let local_pvs = crate::local::watch::spawn(&cfg, lifecycle.clone(), stop_rx);
    let server = crate::api::server::serve(listener, cfg.socket.clone(), exec.clone())
        .map_err(io("start serving", &cfg.socket))?;
    let claims = Arc::new(reconciler::ClaimCache::default());
    if !matches!(cfg.local.kubernetes, crate::local::classes::KubeMode::Off) {
        let (cache, interval) = (claims.clone(), cfg.reconcile_interval);
        tokio::spawn(async move {
            match kube::Client::try_default().await {
                Ok(client) => reconciler::refresh_claims(cache, client, interval).await,
                Err(e) => {
                    tracing::info!(error = %e, "no Kubernetes credentials: volume statistics name no PV or claim")
                }
            }
        });
    }
    let reconciler = tokio::spawn(reconciler::run(
        reconciler::Reconciler::new(lifecycle.clone(), metrics.clone(), exec.clone())
            .with_pod_log_dir(cfg.pod_log_dir.clone())
            .with_claims(claims),
        cfg.reconcile_interval,
    ));
    http_state.ready.store(true, Ordering::Relaxed);
    tracing::info!(socket = %cfg.socket.display(), kubelet_dir = %cfg.kubelet_dir.display(), "moor daemon ready");
    if let Err(e) = notify::notify("READY=1\nSTATUS=serving") {
        tracing::warn!(error = %e, "sd_notify READY failed");
    }

    wait_for_signal().await;
    tracing::info!("shutting down; mounts stay in place");
    let _ = notify::notify("STOPPING=1");
    let _ = stop_tx.send(true);
    let drained = tokio::task::spawn_blocking(move || {
        server.stop();
        exec.drain(DRAIN_LIMIT)
    });
    reconciler.abort();
    if let Some(t) = local_pvs {
        t.abort();
    }
    if !drained.await.unwrap_or(false) {
        tracing::warn!(
            "operations still running at shutdown; their journal intents finish them on restart"
        );
    }
    let _ = fs::remove_file(&cfg.socket);
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stopping");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
