//! The daemon's local-PV task: watch the discovery directories (inotify) and rescan on every
//! change and on a period; with API credentials, reconcile the PVs and recycle Released ones;
//! without, log what `moor local discover` would print.
//!
//! Invariants: scans and wipes run off the async workers (`spawn_blocking`); an unfinished
//! wipe found at start-up is resumed (the never-wipe rules are checked again first) or
//! reported, and its entry is not published until a wipe finishes.

use std::sync::Arc;
use std::time::Duration;

use inotify::{Inotify, WatchMask};

use crate::config::Config;
use crate::host::Host;
use crate::lifecycle::Lifecycle;

use crate::cluster::watch::Timings;
use crate::local::discover::{Scan, scan_class};
use crate::local::kube::{
    KubePvApi, PvApi, PvView, WatchedPvApi, finish_job, reconcile, wipe_for_job,
};
use crate::local::wipe::{self, WipeCtx, WipePhase};

/// How long to wait for a burst of inotify events to settle before a scan.
const SETTLE: Duration = Duration::from_millis(500);

/// Starts the task when classes are configured.
pub fn spawn(
    cfg: &Config,
    lifecycle: Arc<Lifecycle>,
    client: Option<kube::Client>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    if cfg.local.classes.is_empty() {
        return None;
    }
    let cfg = Arc::new(cfg.clone());
    let host = Arc::new(cfg.host());
    Some(tokio::spawn(async move {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        watch_dirs(&cfg, tx);
        resume_wipes(&cfg, &host, &lifecycle).await;
        let api = match cfg.local.kubernetes {
            crate::local::classes::KubeMode::Off => None,
            crate::local::classes::KubeMode::Auto => match client {
                Some(c) => {
                    let view = Arc::new(PvView::default());
                    tokio::spawn(WatchedPvApi::watch(
                        c.clone(),
                        cfg.node_name.clone(),
                        view.clone(),
                        Timings::PRODUCTION,
                    ));
                    Some(WatchedPvApi::new(KubePvApi::new(c), view))
                }
                None => {
                    tracing::warn!(
                        "local PVs: no API server; discovery only (`moor local discover` prints the manifests)"
                    );
                    None
                }
            },
        };
        let mut last_summary = String::new();
        loop {
            pass(&cfg, &host, &lifecycle, api.as_ref(), &mut last_summary).await;
            let pvs_changed = async {
                match &api {
                    Some(a) => a.view().changed.notified().await,
                    None => std::future::pending().await,
                }
            };
            // The period rescans the directories; PVs come from the watch, so a pass
            // makes no request unless something differs.
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(cfg.local.resync) => {}
                _ = pvs_changed => tokio::time::sleep(SETTLE).await,
                Some(()) = rx.recv() => {
                    tokio::time::sleep(SETTLE).await;
                    while rx.try_recv().is_ok() {}
                }
            }
        }
    }))
}

/// One inotify thread for every discovery directory: a change anywhere wakes the task.
fn watch_dirs(cfg: &Config, tx: tokio::sync::mpsc::Sender<()>) {
    let mut ino = match Inotify::init() {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(error = %e, "inotify unavailable; local discovery rescans on its period only");
            return;
        }
    };
    let mask = WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::ATTRIB
        | WatchMask::DELETE_SELF;
    for c in &cfg.local.classes {
        if let Err(e) = ino.watches().add(&c.discovery_dir, mask) {
            tracing::warn!(dir = %c.discovery_dir.display(), error = %e, "cannot watch discovery directory; rescanned on the period");
        }
    }
    let spawned = std::thread::Builder::new()
        .name("moor-local-inotify".into())
        .spawn(move || {
            let mut buf = [0u8; 4096];
            while ino.read_events_blocking(&mut buf).is_ok() {
                if tx.is_closed() {
                    return;
                }
                let _ = tx.try_send(());
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the inotify thread");
    }
}

/// After a wipe: moor no longer knows a filesystem on the entry (see [`wipe::volume_keys_of`]).
fn forget(lifecycle: &Lifecycle, entry: &std::path::Path) {
    for key in wipe::volume_keys_of(entry, lifecycle.id_sources()) {
        match lifecycle.forget(&key) {
            Ok(true) => {
                tracing::info!(volume = %key, "wiped entry forgotten; the next claim formats it")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(volume = %key, error = %crate::error::Chain(&e), "wiped entry not forgotten")
            }
        }
    }
}

fn live(lifecycle: &Lifecycle) -> Result<Option<Vec<crate::api::VolumeStatus>>, String> {
    Ok(Some(
        lifecycle
            .status()
            .iter()
            .map(crate::api::VolumeStatus::from)
            .collect(),
    ))
}

/// Start-up: a wipe the last run did not finish is resumed (the rules are checked again) or,
/// when it failed, reported.
async fn resume_wipes(cfg: &Arc<Config>, host: &Arc<Host>, lifecycle: &Arc<Lifecycle>) {
    let (recs, problems) = wipe::load_records(&cfg.state_dir);
    for p in problems {
        tracing::error!(record = %p, "unreadable wipe record; its entry stays unpublished until it is removed");
    }
    for rec in recs {
        match rec.phase {
            WipePhase::Done => {}
            WipePhase::Failed => {
                tracing::error!(entry = %rec.entry.display(), error = ?rec.error, "an earlier wipe failed; the entry stays unpublished (retry: moor local wipe)")
            }
            WipePhase::Started => {
                tracing::warn!(entry = %rec.entry.display(), "resuming a wipe interrupted by a crash");
                let (cfg2, host2, lc) = (cfg.clone(), host.clone(), lifecycle.clone());
                let res = tokio::task::spawn_blocking(move || {
                    let ctx = WipeCtx {
                        host: &host2,
                        cfg: &cfg2.local,
                        state_dir: &cfg2.state_dir,
                        live_volumes: live(&lc),
                    };
                    let r =
                        wipe::wipe_entry(&ctx, &rec.entry, Some(&rec.stable_id), rec.pv.as_deref());
                    if let Ok(done) = &r {
                        forget(&lc, &done.entry);
                        if done.pv.is_none() {
                            // A command-line wipe: nothing else waits for the record.
                            let _ = wipe::remove_record(&cfg2.state_dir, &done.stable_id);
                        }
                    }
                    r
                })
                .await;
                match res {
                    Ok(Ok(_)) => tracing::info!("interrupted wipe finished"),
                    Ok(Err(e)) => {
                        tracing::error!(error = %crate::error::Chain(&e), "interrupted wipe not resumed; the entry stays unpublished")
                    }
                    Err(e) => tracing::error!(error = %e, "wipe task failed"),
                }
            }
        }
    }
}

async fn pass(
    cfg: &Arc<Config>,
    host: &Arc<Host>,
    lifecycle: &Arc<Lifecycle>,
    api: Option<&WatchedPvApi>,
    last_summary: &mut String,
) {
    let (c, h) = (cfg.clone(), host.clone());
    let scans = tokio::task::spawn_blocking(move || {
        let src = crate::local::discover::id_sources(&c.local, &h);
        c.local
            .classes
            .iter()
            .map(|cl| scan_class(&h, &src, cl))
            .collect::<Vec<Scan>>()
    })
    .await
    .unwrap_or_default();
    let summary = scans
        .iter()
        .zip(&cfg.local.classes)
        .map(|(s, c)| {
            let skipped: Vec<String> = s
                .skipped
                .iter()
                .map(|k| format!("{}: {}", k.path.display(), k.reason))
                .collect();
            format!(
                "class {}: {} entr(ies) [{}] skipped [{}]",
                c.name,
                s.entries.len(),
                s.entries
                    .iter()
                    .map(|e| format!("{}={}", e.path.display(), e.stable_id))
                    .collect::<Vec<_>>()
                    .join(", "),
                skipped.join("; ")
            )
        })
        .collect::<Vec<_>>()
        .join(" | ");
    if summary != *last_summary {
        tracing::info!(%summary, "local discovery");
        *last_summary = summary;
    }
    let Some(api) = api else {
        return;
    };
    let unfinished = wipe::unfinished_among(&cfg.state_dir, &scans);
    let report = match reconcile(api, &cfg.node_name, &cfg.local, &scans, &unfinished).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "local PV reconcile failed; retried on the next pass");
            return;
        }
    };
    for e in &report.errors {
        tracing::warn!(error = %e, "local PV reconcile");
    }
    for job in report.wipe_jobs {
        recycle(cfg, host, lifecycle, api, job).await;
    }
}

async fn recycle<A: PvApi>(
    cfg: &Arc<Config>,
    host: &Arc<Host>,
    lifecycle: &Arc<Lifecycle>,
    api: &A,
    job: crate::local::kube::WipeJob,
) {
    let (c, h, lc, j) = (cfg.clone(), host.clone(), lifecycle.clone(), job.clone());
    let wiped = tokio::task::spawn_blocking(move || {
        let ctx = WipeCtx {
            host: &h,
            cfg: &c.local,
            state_dir: &c.state_dir,
            live_volumes: live(&lc),
        };
        let r = wipe_for_job(&ctx, &j);
        if r.is_ok() {
            forget(&lc, &j.entry);
        }
        r
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    match wiped {
        Ok(()) => {
            if let Err(e) = finish_job(api, &cfg.state_dir, &job).await {
                tracing::warn!(pv = %job.pv, error = %e, "wiped, but the PV could not be deleted yet; retried on the next pass");
            }
        }
        Err(e) => {
            tracing::warn!(pv = %job.pv, entry = %job.entry.display(), error = %e, "released local PV not recycled")
        }
    }
}
