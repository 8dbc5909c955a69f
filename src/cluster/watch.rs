//! One quiet watch of a selected set of objects: list once, then watch from the list's
//! resourceVersion with bookmarks and a long server-side timeout (randomised, so a fleet's
//! watches do not expire together), resume from the last resourceVersion when a watch ends,
//! relist only on 410 Gone or after [`Timings::resync`], and back off exponentially with
//! jitter (capped) on errors. The API server then sends each node only its own objects'
//! changes: a few requests per node per hour in steady state (see `benches/RESULTS.md`).
//!
//! Invariant: the sink is told the watch is unhealthy whenever the view may be stale (a
//! failed list or watch), and healthy again only after a list or a watch that resumed from
//! a resourceVersion the server accepted.

use std::fmt::Debug;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::core::Resource;
use serde::de::DeserializeOwned;
use tokio_stream::StreamExt;

/// A watch's timings (parameters, so a test runs the real loop in seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// The server-side watch timeout (`timeoutSeconds`), before jitter.
    pub timeout: Duration,
    /// Jitter: the timeout is drawn from `timeout × [1 - jitter, 1 + jitter]` (per mille).
    pub jitter_permille: u32,
    /// A full relist this often even when nothing failed.
    pub resync: Duration,
    /// The first backoff after an error.
    pub backoff_min: Duration,
    /// The backoff's cap.
    pub backoff_max: Duration,
}

impl Timings {
    /// What the daemon uses: 1 h watches (±10 %), a relist every 6 h, backoff 1 s … 5 min.
    pub const PRODUCTION: Timings = Timings {
        timeout: Duration::from_secs(3600),
        jitter_permille: 100,
        resync: Duration::from_secs(6 * 3600),
        backoff_min: Duration::from_secs(1),
        backoff_max: Duration::from_secs(300),
    };

    /// The shortest watch the jitter can draw.
    pub fn shortest_watch(&self) -> Duration {
        self.timeout
            .mul_f64(1.0 - f64::from(self.jitter_permille.min(1000)) / 1000.0)
    }
}

/// A random fraction in [0, 1) (std's per-process random hash keys; no crate needed).
pub fn random_unit() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// `d` scaled by a random factor in [1 - frac, 1 + frac].
fn jittered(d: Duration, permille: u32) -> Duration {
    let frac = f64::from(permille.min(1000)) / 1000.0;
    d.mul_f64(1.0 - frac + 2.0 * frac * random_unit())
}

/// Exponential backoff with full jitter in its upper half, capped.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `min`, doubles up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The next wait (between half and all of the current step).
    pub fn next_wait(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        step.mul_f64(0.5 + 0.5 * random_unit())
    }

    /// After a success.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// What the watch tells its sink.
#[derive(Debug)]
pub enum Change<K> {
    /// The full current set (after a list).
    Reset(Vec<K>),
    /// An object was added or changed.
    Upsert(K),
    /// An object was deleted.
    Delete(K),
}

/// Where a watch's changes go.
pub trait Sink<K>: Send {
    /// Applies one change (may make requests of its own, e.g. a claim's GET).
    fn apply(&mut self, change: Change<K>) -> impl Future<Output = ()> + Send;
    /// Whether the view is current (a list or watch succeeded) or may be stale.
    fn healthy(&mut self, ok: bool);
}

/// Which objects: the selectors every list and watch carries.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    /// `fieldSelector`.
    pub fields: Option<String>,
    /// `labelSelector`.
    pub labels: Option<String>,
}

fn rv_of<K: Resource>(o: &K) -> Option<String> {
    o.meta().resource_version.clone()
}

/// Lists and watches `api` by `sel` into `sink`, forever (abort the task to stop).
pub async fn run<K, S>(
    api: kube::Api<K>,
    sel: Selector,
    t: Timings,
    what: &'static str,
    sink: &mut S,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    S: Sink<K>,
{
    let mut backoff = Backoff::new(t.backoff_min, t.backoff_max);
    let mut lp = ListParams::default();
    if let Some(f) = &sel.fields {
        lp = lp.fields(f);
    }
    if let Some(l) = &sel.labels {
        lp = lp.labels(l);
    }
    'relist: loop {
        let mut rv = match api.list(&lp).await {
            Ok(l) => {
                let rv = l.metadata.resource_version.clone().unwrap_or_default();
                sink.apply(Change::Reset(l.items)).await;
                sink.healthy(true);
                backoff.reset();
                tracing::debug!(what, resource_version = %rv, "listed");
                rv
            }
            Err(e) => {
                sink.healthy(false);
                let wait = backoff.next_wait();
                tracing::warn!(what, error = %e, retry_in_ms = wait.as_millis() as u64, "list failed");
                tokio::time::sleep(wait).await;
                continue 'relist;
            }
        };
        let listed = Instant::now();
        loop {
            let left = t.resync.saturating_sub(listed.elapsed());
            if left.is_zero() {
                tracing::debug!(what, "resync: relisting");
                continue 'relist;
            }
            let secs = jittered(t.timeout, t.jitter_permille)
                .min(left)
                .as_secs()
                .max(1);
            let mut wp = WatchParams::default().timeout(u32::try_from(secs).unwrap_or(u32::MAX));
            if let Some(f) = &sel.fields {
                wp = wp.fields(f);
            }
            if let Some(l) = &sel.labels {
                wp = wp.labels(l);
            }
            let started = Instant::now();
            let stream = match api.watch(&wp, &rv).await {
                Ok(s) => s,
                Err(kube::Error::Api(s)) if s.code == 410 => continue 'relist,
                Err(e) => {
                    sink.healthy(false);
                    let wait = backoff.next_wait();
                    tracing::warn!(what, error = %e, retry_in_ms = wait.as_millis() as u64, "watch failed");
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            sink.healthy(true);
            let mut stream = std::pin::pin!(stream);
            let mut failed = None;
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(WatchEvent::Added(o)) | Ok(WatchEvent::Modified(o)) => {
                        rv = rv_of(&o).unwrap_or(rv);
                        sink.apply(Change::Upsert(o)).await;
                    }
                    Ok(WatchEvent::Deleted(o)) => {
                        rv = rv_of(&o).unwrap_or(rv);
                        sink.apply(Change::Delete(o)).await;
                    }
                    Ok(WatchEvent::Bookmark(b)) => rv = b.metadata.resource_version,
                    Ok(WatchEvent::Error(s)) if s.code == 410 => {
                        tracing::debug!(what, "resourceVersion too old: relisting");
                        continue 'relist;
                    }
                    Ok(WatchEvent::Error(s)) => {
                        failed = Some(s.message);
                        break;
                    }
                    Err(e) => {
                        failed = Some(e.to_string());
                        break;
                    }
                }
            }
            match failed {
                None if started.elapsed() >= t.backoff_min => backoff.reset(),
                // A watch the server ends at once, again and again, must not spin.
                None => tokio::time::sleep(backoff.next_wait()).await,
                Some(e) => {
                    sink.healthy(false);
                    let wait = backoff.next_wait();
                    tracing::warn!(what, error = %e, retry_in_ms = wait.as_millis() as u64, "watch broke");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        let waits: Vec<Duration> = (0..12).map(|_| b.next_wait()).collect();
        assert!(waits[0] >= Duration::from_millis(500) && waits[0] <= Duration::from_secs(1));
        assert!(waits[3] >= Duration::from_secs(4) && waits[3] <= Duration::from_secs(8));
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(300)));
        assert!(waits[11] >= Duration::from_secs(150), "{waits:?}");
        b.reset();
        assert!(b.next_wait() <= Duration::from_secs(1));
    }

    #[test]
    fn watch_timeouts_are_spread() {
        let t = Timings::PRODUCTION;
        let draws: Vec<Duration> = (0..50)
            .map(|_| jittered(t.timeout, t.jitter_permille))
            .collect();
        assert!(
            draws
                .iter()
                .all(|d| *d >= t.shortest_watch() && *d <= Duration::from_secs(3960))
        );
        assert!(draws.iter().any(|d| *d != draws[0]), "not randomised");
    }
}
