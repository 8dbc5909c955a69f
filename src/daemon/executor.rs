//! The executor: one operation per volume key at a time, different volumes in parallel,
//! each with a deadline, all blocking work off the async runtime.
//!
//! Invariant: a volume's lock is held until its operation really ends — a deadline answers
//! kubelet in time, but the lock travels into the blocking task, so a late-finishing
//! operation can never overlap the next one on the same volume.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedMutexGuard, RwLock};
use tracing::Instrument;

use crate::api::{Request, Response};
use crate::error::Error;
use crate::flexvolume::Reply;
use crate::lifecycle::{Lifecycle, MountOutcome, UnmountOutcome};
use crate::metrics::Metrics;

/// Runs requests against the lifecycle.
pub struct Executor {
    lifecycle: Arc<Lifecycle>,
    metrics: Arc<Metrics>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    op_timeout: Duration,
    /// Operations hold it shared; shutdown takes it exclusively to wait for them.
    gate: Arc<RwLock<()>>,
}

impl Executor {
    /// An executor over `lifecycle`.
    pub fn new(lifecycle: Arc<Lifecycle>, metrics: Arc<Metrics>, op_timeout: Duration) -> Self {
        Executor {
            lifecycle,
            metrics,
            locks: Mutex::new(HashMap::new()),
            op_timeout,
            gate: Arc::new(RwLock::new(())),
        }
    }

    /// Waits (at most `limit`) for operations in progress; afterwards none can start.
    pub async fn drain(&self, limit: Duration) -> bool {
        match tokio::time::timeout(limit, self.gate.clone().write_owned()).await {
            Ok(guard) => {
                std::mem::forget(guard);
                true
            }
            Err(_) => false,
        }
    }

    async fn lock(&self, key: &str) -> OwnedMutexGuard<()> {
        let m = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(key.to_owned()).or_default().clone()
        };
        m.lock_owned().await
    }

    fn prune(&self, key: &str) {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        if locks.get(key).is_some_and(|m| Arc::strong_count(m) == 1) {
            locks.remove(key);
        }
    }

    /// Handles one request.
    pub async fn handle(&self, req: Request) -> Response {
        let Ok(_gate) = self.gate.clone().try_read_owned() else {
            return flex(Reply::failure("moor daemon is shutting down; retry"));
        };
        match req {
            Request::Status => Response::Status {
                node: self.lifecycle.node_name().into(),
                volumes: self.lifecycle.status(),
            },
            Request::Forget { key } => self.forget(key).await,
            Request::Mount {
                driver,
                target,
                options,
            } => {
                let span = tracing::info_span!("op", op = "mount", driver = %driver, target = %target,
                    pod_uid = options.get("kubernetes.io/pod.uid").map(String::as_str).unwrap_or(""),
                    volume = tracing::field::Empty);
                let subject = target.clone();
                self.timed(
                    "mount",
                    &driver,
                    &subject,
                    self.mount(driver.clone(), target, options).instrument(span),
                )
                .await
            }
            Request::Unmount { driver, target } => {
                let span = tracing::info_span!("op", op = "unmount", driver = %driver, target = %target, volume = tracing::field::Empty);
                let subject = target.clone();
                self.timed(
                    "unmount",
                    &driver,
                    &subject,
                    self.unmount(driver.clone(), target).instrument(span),
                )
                .await
            }
        }
    }

    /// Runs `fut` under the operation deadline and records its metrics; `subject` (the pod
    /// volume directory) names the volume in a timeout message.
    async fn timed<F>(&self, op: &'static str, driver: &str, subject: &str, fut: F) -> Response
    where
        F: std::future::Future<Output = Result<String, Error>>,
    {
        let started = Instant::now();
        self.metrics.in_flight.inc();
        let result = match tokio::time::timeout(self.op_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                volume: subject.into(),
                op,
                after: self.op_timeout,
            }),
        };
        self.metrics.in_flight.dec();
        let secs = started.elapsed().as_secs_f64();
        match result {
            Ok(what) => {
                self.metrics.observe(driver, op, secs, None);
                tracing::info!(op, driver, outcome = %what, elapsed_ms = secs * 1e3, "done");
                self.refresh_counts();
                flex(Reply::success())
            }
            Err(e) => {
                self.metrics.observe(driver, op, secs, Some(e.reason()));
                tracing::warn!(op, driver, reason = e.reason(), error = %e, elapsed_ms = secs * 1e3, "failed");
                self.refresh_counts();
                flex(Reply::failure(e.flex_message()))
            }
        }
    }

    fn refresh_counts(&self) {
        let (stages, publishes) = self.lifecycle.counts();
        self.metrics
            .staged_volumes
            .set(i64::try_from(stages).unwrap_or(i64::MAX));
        self.metrics
            .published_volumes
            .set(i64::try_from(publishes).unwrap_or(i64::MAX));
    }

    async fn forget(&self, key: String) -> Response {
        let guard = self.lock(&key).await;
        let lc = self.lifecycle.clone();
        let k = key.clone();
        let r = blocking(move || {
            let _held = guard;
            lc.forget(&k)
        })
        .await;
        self.prune(&key);
        flex(match r {
            Ok(true) => Reply::success(),
            Ok(false) => Reply::failure(format!("no record of volume {key}")),
            Err(e) => Reply::failure(e.flex_message()),
        })
    }

    async fn mount(
        &self,
        driver: String,
        target: String,
        options: std::collections::BTreeMap<String, String>,
    ) -> Result<String, Error> {
        let lc = self.lifecycle.clone();
        let plan = blocking(move || lc.plan_mount(&driver, &target, &options)).await?;
        tracing::Span::current().record("volume", plan.key());
        let key = plan.key().to_owned();
        let guard = self.lock(&key).await;
        let lc = self.lifecycle.clone();
        let r = blocking(move || {
            let _held = guard;
            lc.mount(&plan)
        })
        .await;
        self.prune(&key);
        match r? {
            MountOutcome::Published => Ok("published".into()),
            MountOutcome::AlreadyPublished => Ok("already published".into()),
        }
    }

    async fn unmount(&self, driver: String, target: String) -> Result<String, Error> {
        let key = self.lifecycle.key_of(std::path::Path::new(&target));
        let guard = match &key {
            Some(k) => {
                tracing::Span::current().record("volume", k.as_str());
                Some(self.lock(k).await)
            }
            None => None,
        };
        let lc = self.lifecycle.clone();
        let r = blocking(move || {
            let _held = guard;
            lc.unmount(Some(&driver), &target)
        })
        .await;
        if let Some(k) = &key {
            self.prune(k);
        }
        Ok(match r? {
            UnmountOutcome::Unpublished => "unpublished".into(),
            UnmountOutcome::Unstaged => "unpublished and unstaged".into(),
            UnmountOutcome::NotMounted => "not mounted".into(),
        })
    }
}

fn flex(reply: Reply) -> Response {
    Response::Flex { reply }
}

async fn blocking<T, F>(f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Error> + Send + 'static,
{
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .map_err(|e| Error::Internal(format!("worker failed: {e}")))?
}
