//! The reconciler: periodically restores pod binds that vanished under a live record and
//! refreshes per-volume statistics. Every filesystem call it makes is bounded (a dead
//! export must not wedge it) and runs off the async runtime.

use std::sync::Arc;
use std::time::Duration;

use crate::host::bounded::bounded;
use crate::lifecycle::Lifecycle;
use crate::metrics::{Metrics, VolumeLabels};

/// Deadline of one statvfs.
const STAT_TIMEOUT: Duration = Duration::from_secs(2);

/// One pass: heal, then statistics.
pub fn pass(lifecycle: &Lifecycle, metrics: &Metrics) {
    metrics.reconcile_runs.inc();
    let healed = lifecycle.heal_publishes();
    metrics.healed_publishes.inc_by(healed as u64);
    let volumes = lifecycle.staged_volumes();
    let families = [
        &metrics.capacity_bytes,
        &metrics.available_bytes,
        &metrics.used_bytes,
        &metrics.inodes,
        &metrics.inodes_free,
        &metrics.inodes_used,
    ];
    let mut fresh = Vec::new();
    for (stage, path, first_pod) in volumes {
        let p = path.clone();
        let stats = match bounded(STAT_TIMEOUT, move || nix::sys::statvfs::statvfs(&p)) {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::warn!(volume = %stage.key, target = %path.display(), error = %e, "statvfs failed");
                continue;
            }
            Err(t) => {
                tracing::warn!(volume = %stage.key, target = %path.display(), error = %t, "statvfs hung");
                continue;
            }
        };
        let labels = VolumeLabels {
            namespace: first_pod
                .as_ref()
                .and_then(|p| p.namespace.clone())
                .unwrap_or_default(),
            volume: first_pod
                .as_ref()
                .map(|p| p.volume_name.clone())
                .unwrap_or_else(|| stage.key.clone()),
            driver: stage.driver.clone(),
        };
        let frsize = stats.fragment_size();
        let values = [
            stats.blocks() * frsize,
            stats.blocks_available() * frsize,
            stats.blocks().saturating_sub(stats.blocks_free()) * frsize,
            stats.files(),
            stats.files_free(),
            stats.files().saturating_sub(stats.files_free()),
        ];
        fresh.push((labels, values));
    }
    // Volumes that went away must not keep exporting their last value.
    for f in families {
        f.clear();
    }
    for (labels, values) in fresh {
        for (f, v) in families.iter().zip(values) {
            f.get_or_create(&labels).set(v);
        }
    }
}

/// Runs [`pass`] every `interval` until the task is dropped.
pub async fn run(lifecycle: Arc<Lifecycle>, metrics: Arc<Metrics>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (lc, m) = (lifecycle.clone(), metrics.clone());
        if let Err(e) = tokio::task::spawn_blocking(move || pass(&lc, &m)).await {
            tracing::error!(error = %e, "reconciler pass failed");
        }
    }
}
