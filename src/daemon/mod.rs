//! The daemon: start-up (directories, single-instance lock, reconstruction, socket,
//! metrics), readiness via sd_notify, the reconciler, and a clean shutdown on SIGTERM that
//! leaves every mount in place.

pub mod csi;
pub mod deadmounts;
pub mod drivers;
pub mod executor;
pub mod gc;
pub mod local_pvs;
pub mod notify;
pub mod reconciler;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::host::onhost::Placement;
use crate::host::process::{LockError, PidLock};
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
    #[error("{what} {path}")]
    Io {
        /// What.
        what: &'static str,
        /// Path.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// Another daemon holds the lock of a directory moor must own alone.
    #[error(
        "another moor daemon is running{} and uses {dir} (lock {lock} is held); stop it or give this one its own --state-dir and --run-dir",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    AlreadyRunning {
        /// The state or run dir.
        dir: PathBuf,
        /// Its lock file.
        lock: PathBuf,
        /// The holder's pid, as it wrote it into the lock.
        pid: Option<u32>,
    },
    /// Reconstruction failed outright.
    #[error("reconstruction failed")]
    Reconstruct(#[from] crate::Error),
    /// A CSI socket could not be served.
    #[error(transparent)]
    Csi(#[from] crate::csi::serve::ServeError),
    /// The journal could not be opened.
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    /// The socket's directory is not safe to serve from (moor never changes its mode).
    #[error(
        "socket directory {path} {why}; put the socket in a directory only root can write (e.g. /run/moor), moor does not change an existing directory"
    )]
    SocketDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DaemonError + 'a {
    move |source| DaemonError::Io {
        what,
        path: path.into(),
        source,
    }
}

fn private_dir(p: &Path) -> Result<(), DaemonError> {
    crate::host::dirs::private_dir(p, 0o700).map_err(|(op, e)| io(op, p)(e))
}

/// Holds `<dir>/moor.lock` for the daemon's lifetime, with this daemon's pid written into
/// it, so a second daemon on the same dir is refused with the holder's pid. Both the state
/// dir and the run dir are locked: two daemons sharing either would adopt each other's
/// mounts (a DaemonSet beside a systemd unit).
fn lock_instance(dir: &Path) -> Result<PidLock, DaemonError> {
    let path = dir.join("moor.lock");
    crate::host::process::lock_pid_file(&path).map_err(|e| match e {
        LockError::Held { pid } => DaemonError::AlreadyRunning {
            dir: dir.into(),
            lock: path.clone(),
            pid,
        },
        LockError::Io { op, source } => io(op, &path)(source),
    })
}

/// What `moor~local` may serve; the socket's directory is refused beside the lifecycle's own.
fn local_allow_list(cfg: &Config) -> crate::host::allow::AllowList {
    let mut allow = cfg.local.allow_list();
    allow
        .refused
        .extend(cfg.socket.parent().map(Path::to_path_buf));
    allow
}

fn local_id_sources(cfg: &Config) -> crate::host::devid::IdSources {
    crate::host::devid::IdSources {
        dev_dir: cfg.local.dev_dir.clone(),
        udev_dir: cfg.local.udev_dir.clone(),
        sys: "/sys".into(),
    }
}

/// What `/readyz` says of the placement: one line, and a warning line with the risk.
fn placement_detail(p: &Placement) -> String {
    let mut s = format!(
        "placement: {}, FUSE clients {}\n",
        p.label(),
        if p.fuse_scope() {
            "in scopes of the host's systemd"
        } else {
            "in moor's own cgroup"
        }
    );
    if let Some(risk) = p.risk() {
        s.push_str(&format!("warning: {risk}\n"));
    }
    s
}

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(cfg: Config) -> Result<(), DaemonError> {
    let started = Instant::now();
    // The kubelet dir must exist before its symlinks can be resolved (HostPaths::system).
    fs::create_dir_all(&cfg.kubelet_dir).map_err(io("create", &cfg.kubelet_dir))?;
    private_dir(&cfg.state_dir)?;
    private_dir(&cfg.run_dir)?;
    if let Some(parent) = cfg.socket.parent() {
        socket_dir(parent)?;
    }
    let _state_lock = lock_instance(&cfg.state_dir)?;
    let _run_lock = lock_instance(&cfg.run_dir)?;
    let mut host = Host::system(HostPaths::system(
        cfg.kubelet_dir.clone(),
        cfg.state_dir.clone(),
        cfg.run_dir.clone(),
    ));
    // Under systemd a FUSE daemon started from moor's cgroup would die with a restart of
    // the unit (or a `systemctl stop`), and in the DaemonSet's container with the pod: its
    // own scope of the host's systemd keeps every pod's mount alive.
    let placement = Placement::detect(&host.paths.proc, cfg.host_mount_namespace.as_deref());
    host.runner = placement.runner(host.runner.clone());
    match placement.risk() {
        None => tracing::info!(
            placement = placement.label(),
            fuse_scope = "host systemd",
            "FUSE clients run in scopes of the host's systemd and outlive moor"
        ),
        Some(risk) => tracing::warn!(
            placement = placement.label(),
            risk,
            "FUSE mounts do not outlive moor here"
        ),
    }
    // Before any mount id is read or recorded: ids from another namespace are learnt again
    // at reconstruction (a DaemonSet's next pod is a new namespace).
    match crate::host::nsmark::token(&cfg.run_dir) {
        Ok(t) => crate::host::process::set_mount_namespace(t),
        Err(e) => {
            tracing::warn!(error = %e, run_dir = %cfg.run_dir.display(), "cannot mark this mount namespace; mount ids recorded by a daemon in another namespace will not be recognised as such")
        }
    }
    let journal = Journal::open(&cfg.state_dir, &cfg.run_dir)?;
    let timeouts = Timeouts {
        mount: cfg.mount_timeout,
        unmount: cfg.mount_timeout,
    };
    let drivers = drivers::with_local_sources(
        drivers::builtin(),
        &host.paths,
        local_allow_list(&cfg),
        local_id_sources(&cfg),
    );
    let metrics = Arc::new(Metrics::new());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("moor")
        .build()
        .map_err(io("start runtime", Path::new("-")))?;
    // Before reconstruction, so a record it sets aside is reported like any notice.
    let settings = crate::cluster::client::Settings {
        enabled: cfg.kubernetes.enabled,
        kubeconfig: cfg.kubernetes.kubeconfig.clone(),
        events: cfg.kubernetes.events,
    };
    let api = rt.block_on(crate::cluster::Cluster::start(
        &settings,
        &cfg.node_name,
        metrics.cluster.clone(),
    ));
    let lifecycle = Arc::new(
        Lifecycle::new(host, journal, drivers, cfg.node_name.clone(), timeouts)
            .with_fuse_scope(placement.fuse_scope())
            .with_id_sources(local_id_sources(&cfg))
            .with_cluster(crate::cluster::testpods::pods_from_file(
                api.cluster.clone(),
            )),
    );
    let reconstructing = Instant::now();
    let report = lifecycle.reconstruct()?;
    let took = reconstructing.elapsed();
    metrics.reconstruction_seconds.set(took.as_secs_f64());
    metrics.reconstruction_finished.set(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
    );
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
        ("rekeyed", report.rekeyed),
        ("problem", report.problems.len()),
    ] {
        metrics
            .reconstruction
            .get_or_create(&ReconstructionLabels {
                outcome: outcome.into(),
            })
            .inc_by(n as u64);
    }
    for p in lifecycle.set_aside() {
        metrics
            .records_set_aside
            .get_or_create(&crate::metrics::SetAsideLabels {
                reason: p.reason.into(),
            })
            .inc();
    }
    metrics
        .placement
        .get_or_create(&crate::metrics::PlacementLabels {
            placement: placement.label().into(),
            fuse_outlives_moor: placement.fuse_scope().to_string(),
        })
        .set(1);
    tracing::info!(?report, reconstruction_ms = took.as_secs_f64() * 1e3, elapsed_ms = started.elapsed().as_secs_f64() * 1e3, node = %cfg.node_name, "state reconstructed");

    let served = rt.block_on(serve(cfg, lifecycle, metrics, placement, api));
    // An operation past its deadline may still hold a blocking thread (a hung mount): the
    // journal finishes it on restart, so do not wait for it here.
    rt.shutdown_timeout(Duration::from_secs(1));
    served
}

async fn serve(
    cfg: Config,
    lifecycle: Arc<Lifecycle>,
    metrics: Arc<Metrics>,
    placement: Placement,
    api: crate::cluster::Started,
) -> Result<(), DaemonError> {
    let http_state = Arc::new(HttpState {
        metrics: metrics.clone(),
        ready: Default::default(),
        detail: placement_detail(&placement),
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

    let orphans = Arc::new(
        gc::Orphans::new(lifecycle.clone(), metrics.clone(), cfg.gc.clone())
            .seeing_node_processes(placement != Placement::Isolated),
    );
    let exec = Arc::new(
        executor::Executor::new(lifecycle.clone(), metrics.clone(), cfg.operation_timeout)
            .with_volume_limits(csi::volume_limits(&cfg))
            .with_orphans(orphans.clone()),
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let local_pvs = local_pvs::spawn(&cfg, lifecycle.clone(), api.client.clone(), stop_rx);
    let csi = csi::start(&cfg, exec.clone())?;
    let server = crate::api::server::serve(listener, cfg.socket.clone(), exec.clone())
        .map_err(io("start serving", &cfg.socket))?;
    let claims = Arc::new(match &api.pods {
        Some(p) => reconciler::ClaimCache::from_pods(p.clone()),
        None => reconciler::ClaimCache::default(),
    });
    let reconciler = tokio::spawn(reconciler::run(
        reconciler::Reconciler::new(lifecycle.clone(), metrics.clone(), exec.clone())
            .with_pod_log_dir(cfg.pod_log_dir.clone())
            .with_claims(claims)
            .with_heal(cfg.heal.clone()),
        cfg.reconcile_interval,
    ));
    let collector = cfg.gc.orphans.then(|| {
        let e = exec.clone();
        let locks: Arc<gc::TryLocked<'static>> = Arc::new(move |v, f| e.try_locked_volume(v, f));
        tokio::spawn(gc::run(orphans, locks))
    });
    http_state.ready.store(true, Ordering::Relaxed);
    tracing::info!(socket = %cfg.socket.display(), kubelet_dir = %cfg.kubelet_dir.display(), "moor daemon ready");
    if let Err(e) = notify::notify("READY=1\nSTATUS=serving") {
        tracing::warn!(error = %e, "sd_notify READY failed");
    }

    wait_for_signal().await;
    tracing::info!("shutting down; mounts stay in place");
    let _ = notify::notify("STOPPING=1");
    let _ = stop_tx.send(true);
    if let Some(c) = &csi {
        c.drain();
    }
    let drained = tokio::task::spawn_blocking(move || {
        server.stop();
        exec.drain(DRAIN_LIMIT)
    });
    reconciler.abort();
    if let Some(t) = collector {
        t.abort();
    }
    if let Some(t) = local_pvs {
        t.abort();
    }
    if !drained.await.unwrap_or(false) {
        tracing::warn!(
            "operations still running at shutdown; their journal intents finish them on restart"
        );
    }
    if let Some(c) = csi {
        c.stop().await;
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

/// Makes the socket's directory ready without changing one that exists: missing
/// components are created 0700, and an existing directory that is not root's (or this
/// user's) or that group/others may write is refused, since whoever can write it could put
/// their own socket in moor's place.
fn socket_dir(p: &Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::MetadataExt;
    if !p.exists() {
        crate::host::dirs::create_missing(p, 0o700).map_err(|(op, e)| io(op, p)(e))?;
    }
    let md = fs::metadata(p).map_err(io("inspect", p))?;
    let me = crate::host::process::euid();
    let why = if !md.is_dir() {
        Some("is not a directory".to_owned())
    } else if md.uid() != 0 && md.uid() != me {
        Some(format!("belongs to uid {}, not root", md.uid()))
    } else if md.mode() & 0o022 != 0 {
        Some(format!(
            "has mode {:o}: others may write it",
            md.mode() & 0o7777
        ))
    } else {
        None
    };
    match why {
        Some(why) => Err(DaemonError::SocketDir {
            path: p.into(),
            why,
        }),
        None => Ok(()),
    }
}
