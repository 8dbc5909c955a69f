//! The executor: one operation per volume key at a time, different volumes in parallel,
//! each with a deadline. It is the server's [`Handler`] and runs on its connection threads
//! (plain blocking threads, never the async runtime): a request is validated, locked, run
//! and answered on the thread that accepted it, with no hand-off. It answers in the api's
//! typed [`Response`] (a failure carries its reason label and cause chain) and maps the
//! lifecycle's own views to the status table's wire types; it knows no front end.
//!
//! Invariants:
//! - a volume's lock is held until its operation really ends — the deadline answers
//!   kubelet in time (a [`Watchdog`] thread writes the timeout answer), but the lock stays
//!   with the thread running the operation, so a late-finishing operation can never overlap
//!   the next one on the same volume; a request still waiting for the lock when its
//!   deadline passes gives up without running;
//! - every request gets exactly one answer (the first of the operation and the watchdog);
//! - shutdown ([`Executor::drain`]) waits for operations in progress; afterwards none start.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::api::{
    Answer, CsiCall, Failure, Handler, PodUse, Request, Response, SetAsideRecord, VolumeStatus,
};
use crate::cluster::{Notice, NoticeReason};
use crate::error::{Chain, CsiError, Error};
use crate::journal::{Problem, PublishRecord, StageSource};
use crate::lifecycle::orphans::PodVolume;
use crate::lifecycle::{CsiVolume, Lifecycle, MountOutcome, UnmountOutcome, VolumeView};
use crate::metrics::Metrics;
use crate::volume::DriverError;
use crate::volume::VolumeOptions;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a few map/counter updates that cannot panic half-way.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Per-volume-key locks, held by the thread that runs the operation.
#[derive(Default)]
struct KeyLocks {
    map: Mutex<HashMap<String, KeyState>>,
}

struct KeyState {
    held: bool,
    waiters: usize,
    free: Arc<Condvar>,
}

/// Holds a volume key's lock; releases it when dropped.
struct KeyGuard<'a> {
    locks: &'a KeyLocks,
    key: String,
}

impl KeyLocks {
    /// Takes `key`'s lock, waiting at most until `deadline` (None: no limit).
    fn lock(&self, key: &str, deadline: Option<Instant>) -> Option<KeyGuard<'_>> {
        let mut map = lock(&self.map);
        let st = map.entry(key.to_owned()).or_insert_with(|| KeyState {
            held: false,
            waiters: 0,
            free: Arc::new(Condvar::new()),
        });
        if st.held {
            let free = st.free.clone();
            st.waiters += 1;
            loop {
                map = match deadline {
                    None => free.wait(map).unwrap_or_else(|p| p.into_inner()),
                    Some(d) => {
                        let left = d.saturating_duration_since(Instant::now());
                        free.wait_timeout(map, left)
                            .unwrap_or_else(|p| p.into_inner())
                            .0
                    }
                };
                // The entry stays while it has waiters, so it is still there.
                let st = map.get_mut(key)?;
                if !st.held {
                    st.waiters -= 1;
                    break;
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    st.waiters -= 1;
                    return None;
                }
            }
        }
        if let Some(st) = map.get_mut(key) {
            st.held = true;
        }
        Some(KeyGuard {
            locks: self,
            key: key.to_owned(),
        })
    }
}

impl KeyLocks {
    /// Takes `key`'s lock only if nobody holds it or waits for it now (CSI: a call on a
    /// volume with an operation in flight answers `busy` at once, it never queues).
    fn try_lock(&self, key: &str) -> Option<KeyGuard<'_>> {
        let mut map = lock(&self.map);
        if map.contains_key(key) {
            return None;
        }
        map.insert(
            key.to_owned(),
            KeyState {
                held: true,
                waiters: 0,
                free: Arc::new(Condvar::new()),
            },
        );
        Some(KeyGuard {
            locks: self,
            key: key.to_owned(),
        })
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        let mut map = lock(&self.locks.map);
        if let Some(st) = map.get_mut(&self.key) {
            st.held = false;
            if st.waiters == 0 {
                map.remove(&self.key);
            } else {
                st.free.notify_one();
            }
        }
    }
}

/// Operations enter it; shutdown closes it and waits for them to leave.
#[derive(Default)]
struct Gate {
    state: Mutex<(bool, usize)>,
    empty: Condvar,
}

struct GatePass<'a>(&'a Gate);

impl Gate {
    fn enter(&self) -> Option<GatePass<'_>> {
        let mut st = lock(&self.state);
        if st.0 {
            return None;
        }
        st.1 += 1;
        Some(GatePass(self))
    }
}

impl Drop for GatePass<'_> {
    fn drop(&mut self) {
        let mut st = lock(&self.0.state);
        st.1 -= 1;
        if st.0 && st.1 == 0 {
            self.0.empty.notify_all();
        }
    }
}

type Alarm = Box<dyn FnOnce() + Send>;

/// One long-lived thread that fires deadline alarms. Arming costs a map insert: the thread
/// is woken only when a new deadline is earlier than the one it sleeps towards (with one
/// operation timeout, never in steady state).
struct Watchdog {
    inner: Arc<WatchdogInner>,
}

struct WatchdogInner {
    state: Mutex<Alarms>,
    wake: Condvar,
    idle_period: Duration,
}

struct Alarms {
    next_id: u64,
    armed: BTreeMap<(Instant, u64), Alarm>,
    wake_at: Option<Instant>,
    running: bool,
}

type Ticket = (Instant, u64);

impl Watchdog {
    fn new(idle_period: Duration) -> Self {
        Watchdog {
            inner: Arc::new(WatchdogInner {
                state: Mutex::new(Alarms {
                    next_id: 0,
                    armed: BTreeMap::new(),
                    wake_at: None,
                    running: false,
                }),
                wake: Condvar::new(),
                idle_period: idle_period.max(Duration::from_millis(10)),
            }),
        }
    }

    fn arm(&self, deadline: Instant, alarm: Alarm) -> Ticket {
        let mut st = lock(&self.inner.state);
        let id = st.next_id;
        st.next_id += 1;
        st.armed.insert((deadline, id), alarm);
        if !st.running {
            let inner = self.inner.clone();
            match std::thread::Builder::new()
                .name("moor-watchdog".into())
                .spawn(move || inner.run())
            {
                Ok(_) => st.running = true,
                Err(e) => tracing::error!(error = %e, "cannot start the deadline watchdog"),
            }
        } else if st.wake_at.is_none_or(|w| deadline < w) {
            self.inner.wake.notify_one();
        }
        (deadline, id)
    }

    fn disarm(&self, t: Ticket) {
        let alarm = lock(&self.inner.state).armed.remove(&t);
        // Dropped outside the lock: it may own a connection.
        drop(alarm);
    }
}

impl WatchdogInner {
    fn run(&self) {
        let mut st = lock(&self.state);
        loop {
            let now = Instant::now();
            let mut due = Vec::new();
            while let Some(entry) = st.armed.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                due.push(entry.remove());
            }
            if !due.is_empty() {
                drop(st);
                for alarm in due {
                    alarm();
                }
                st = lock(&self.state);
                continue;
            }
            let wake_at = st
                .armed
                .keys()
                .next()
                .map_or(now + self.idle_period, |k| k.0);
            st.wake_at = Some(wake_at);
            st = self
                .wake
                .wait_timeout(st, wake_at.saturating_duration_since(now))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Runs requests against the lifecycle.
pub struct Executor {
    lifecycle: Arc<Lifecycle>,
    metrics: Arc<Metrics>,
    locks: KeyLocks,
    op_timeout: Duration,
    gate: Gate,
    watchdog: Watchdog,
    /// CSI stages allowed per driver on this node (`csi.max-volumes-per-node`).
    volume_limits: HashMap<String, usize>,
    /// Orphaned pod volumes (`moor gc`).
    orphans: Arc<crate::daemon::gc::Orphans>,
}

impl Executor {
    /// An executor over `lifecycle`.
    pub fn new(lifecycle: Arc<Lifecycle>, metrics: Arc<Metrics>, op_timeout: Duration) -> Self {
        Executor {
            locks: KeyLocks::default(),
            op_timeout,
            gate: Gate::default(),
            watchdog: Watchdog::new(op_timeout),
            volume_limits: HashMap::new(),
            orphans: Arc::new(crate::daemon::gc::Orphans::new(
                lifecycle.clone(),
                metrics.clone(),
                crate::config::GcConfig::default(),
            )),
            lifecycle,
            metrics,
        }
    }

    /// Answers `moor gc` with `orphans` (the daemon's collector, with its `gc:` config).
    pub fn with_orphans(mut self, orphans: Arc<crate::daemon::gc::Orphans>) -> Self {
        self.orphans = orphans;
        self
    }

    /// Refuses a CSI stage (`too_many_volumes`) beyond `limits[driver]` CSI stages of that
    /// driver on this node; a driver not in the map has no limit.
    pub fn with_volume_limits(mut self, limits: HashMap<String, usize>) -> Self {
        self.volume_limits = limits;
        self
    }

    /// Waits (at most `limit`) for operations in progress; afterwards none can start.
    /// Blocking: call it off the async runtime.
    pub fn drain(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut st = lock(&self.gate.state);
        st.0 = true;
        while st.1 > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self
                .gate
                .empty
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Runs `f` under `key`'s lock if nobody holds it now (the reconciler: it never waits
    /// behind kubelet's operations, it tries again next pass). `None` when busy or draining.
    pub fn try_locked<R>(&self, key: &str, f: impl FnOnce() -> R) -> Option<R> {
        let _pass = self.gate.enter()?;
        let _guard = self.locks.lock(key, Some(Instant::now()))?;
        Some(f())
    }

    /// [`Executor::try_locked`] for a pod volume: a CSI publish's `volume_id` lock too, as
    /// a CSI call takes it. False when either is busy (then `f` did not run).
    pub fn try_locked_volume(&self, v: &PodVolume, f: &mut dyn FnMut()) -> bool {
        let mut run = || self.try_locked(&v.key, &mut *f).is_some();
        match &v.csi_volume_id {
            Some(id) => self.try_locked(&csi_id_lock(id), run).unwrap_or(false),
            None => run(),
        }
    }
}

impl Handler for Executor {
    /// Handles one request on the calling thread and answers it through `answer` (exactly
    /// once). Blocking: it returns when the operation really ended, which may be after the
    /// deadline's answer was sent.
    fn handle(&self, req: Request, answer: &Arc<Answer>) {
        let Some(_pass) = self.gate.enter() else {
            answer.send(&Response::Failed(Failure::refused(
                "moor daemon is shutting down; retry",
            )));
            return;
        };
        match req {
            Request::Status => answer.send(&Response::Status {
                node: self.lifecycle.node_name().into(),
                volumes: self
                    .lifecycle
                    .status()
                    .iter()
                    .map(VolumeStatus::from)
                    .collect(),
                set_aside: self
                    .lifecycle
                    .set_aside()
                    .iter()
                    .map(SetAsideRecord::from)
                    .collect(),
                notices: self.lifecycle.cluster().notify.recent(),
                dead_mounts: self.lifecycle.dead_mounts(),
            }),
            Request::Forget { key } => answer.send(&self.forget(key)),
            Request::Gc { pods, dry_run } => {
                let locks = |v: &PodVolume, f: &mut dyn FnMut()| self.try_locked_volume(v, f);
                let r = self.orphans.request(&pods, dry_run, &locks);
                self.refresh_counts();
                answer.send(&r);
            }
            Request::Logs { lines } => answer.send(&Response::Logs {
                lines: crate::telemetry::ring().last(lines),
            }),
            Request::Csi {
                driver,
                volume_id,
                call,
            } => {
                let op = call.op();
                let span = tracing::info_span!("op", op, driver = %driver, volume_id = %volume_id,
                    volume = tracing::field::Empty);
                let _entered = span.enter();
                let pod = match &call {
                    CsiCall::Publish { target, .. } => pod_of_target(target),
                    _ => None,
                };
                self.timed_reply(op, &driver, &volume_id, answer, |_deadline| {
                    let r = self.csi(&driver, &volume_id, call);
                    if let Err(e) = &r {
                        self.report(e, &driver, pod, None);
                    }
                    r
                });
            }
            Request::Mount {
                driver,
                target,
                options,
            } => {
                let span = tracing::info_span!("op", op = "mount", driver = %driver, target = %target,
                    pod_uid = options.pod_uid.as_deref().unwrap_or(""),
                    volume = tracing::field::Empty);
                let _entered = span.enter();
                self.timed("mount", &driver, &target, answer, |deadline| {
                    let r = self.mount(&driver, &target, &options, deadline);
                    if let Err(e) = &r {
                        self.report(
                            e,
                            &driver,
                            pod_of_target(&target),
                            options.pv_or_volume_name.clone(),
                        );
                    }
                    r
                });
            }
            Request::Expand {
                driver,
                options,
                new_size,
            } => {
                let pv = options.pv_or_volume_name.clone().unwrap_or_default();
                let span = tracing::info_span!("op", op = "expandfs", driver = %driver, pv = %pv, new_size, volume = tracing::field::Empty);
                let _entered = span.enter();
                self.timed("expandfs", &driver, &pv, answer, |deadline| {
                    self.expand(&driver, &pv, new_size, deadline)
                });
            }
            Request::Unmount { driver, target } => {
                let span = tracing::info_span!("op", op = "unmount", driver = %driver, target = %target, volume = tracing::field::Empty);
                let _entered = span.enter();
                self.timed("unmount", &driver, &target, answer, |deadline| {
                    self.unmount(&driver, &target, deadline)
                });
            }
        }
    }
}

/// The pod UID in a kubelet target path (`…/pods/<uid>/volumes/…`): kubelet's own path,
/// never an option a pod author writes.
fn pod_of_target(target: &str) -> Option<String> {
    let mut parts = target.split('/');
    while let Some(p) = parts.next() {
        if p == "pods" {
            let uid = parts.next()?;
            return (parts.next() == Some("volumes") && !uid.is_empty()).then(|| uid.to_owned());
        }
    }
    None
}

/// The notice an operator must get for a refusal (a format refused because the device
/// holds data, a fencing refusal naming the other client, a wrong-node refusal), built from
/// the error's typed facts only — never its options or a command's output.
pub fn notice_of(e: &Error, driver: &str) -> Option<Notice> {
    use crate::attach::rbd::RbdError;
    use crate::fs::FsError;
    let (reason, volume, message) = match e {
        Error::Fs(FsError::DataPresent { volume, device }) => (
            NoticeReason::FormatRefused,
            volume,
            format!(
                "{} holds data but no filesystem moor can mount; not formatted",
                device.display()
            ),
        ),
        Error::Fs(FsError::SignaturePresent {
            volume,
            device,
            found,
        }) => (
            NoticeReason::FormatRefused,
            volume,
            format!("{} holds {found}; not formatted", device.display()),
        ),
        Error::Driver(DriverError::WrongNode {
            volume,
            wanted,
            this,
        }) => (
            NoticeReason::WrongNode,
            volume,
            format!("belongs to node {wanted}; refused on node {this}"),
        ),
        Error::Driver(d) => match d.protocol::<RbdError>()? {
            RbdError::InUse {
                volume,
                image,
                holders,
            } => (
                NoticeReason::FencingRefused,
                volume,
                format!(
                    "image {image} is in use by another client ({holders}); not mapped read-write here"
                ),
            ),
            _ => return None,
        },
        _ => return None,
    };
    Some(
        Notice::new(reason, format!("{driver} volume {volume}: {message}"))
            .volume(volume.clone(), driver),
    )
}

impl Executor {
    /// Reports a refusal an operator must hear about (see [`notice_of`]) on the pod and PV.
    fn report(&self, e: &Error, driver: &str, pod: Option<String>, pv: Option<String>) {
        let Some(mut n) = notice_of(e, driver) else {
            return;
        };
        n = n.pods(pod);
        if let Some(pv) = pv.filter(|p| !p.is_empty()) {
            n = n.pv(pv);
        }
        self.lifecycle.cluster().notify.notify(n);
    }

    /// Runs `run` under the operation deadline and records its metrics; `subject` (the pod
    /// volume directory) names the volume in a timeout message. When the deadline passes
    /// first, the watchdog answers and records the timeout; `run` still goes on to its end.
    fn timed<F>(&self, op: &'static str, driver: &str, subject: &str, answer: &Arc<Answer>, run: F)
    where
        F: FnOnce(Instant) -> Result<String, Error>,
    {
        self.timed_reply(op, driver, subject, answer, |deadline| {
            run(deadline).map(|what| (what, Response::Done))
        });
    }

    /// [`Executor::timed`] for an operation that answers more than `Done` (CSI's stats and
    /// expand): `run` returns what it did (for the log) and the answer.
    fn timed_reply<F>(
        &self,
        op: &'static str,
        driver: &str,
        subject: &str,
        answer: &Arc<Answer>,
        run: F,
    ) where
        F: FnOnce(Instant) -> Result<(String, Response), Error>,
    {
        let started = Instant::now();
        let deadline = started + self.op_timeout;
        self.metrics.in_flight.inc();
        let progress = Arc::new(crate::host::deadline::Progress::default());
        let ticket = {
            let running = progress.clone();
            let (metrics, answer, span) = (
                self.metrics.clone(),
                answer.clone(),
                tracing::Span::current(),
            );
            let (driver, subject, after) = (driver.to_owned(), subject.to_owned(), self.op_timeout);
            self.watchdog.arm(
                deadline,
                Box::new(move || {
                    let Some(claimed) = answer.claim() else {
                        return;
                    };
                    let _entered = span.enter();
                    metrics.in_flight.dec();
                    let e = Error::Timeout {
                        volume: subject,
                        op,
                        after,
                        running: running.describe(),
                    };
                    let secs = started.elapsed().as_secs_f64();
                    metrics.observe(&driver, op, secs, Some(e.reason()));
                    tracing::warn!(op, driver, reason = e.reason(), error = %Chain(&e), elapsed_ms = secs * 1e3, "failed");
                    claimed.send(&failed(&e));
                }),
            )
        };
        let result =
            crate::host::deadline::with_op_deadline(deadline, self.op_timeout, progress, || {
                run(deadline)
            });
        self.watchdog.disarm(ticket);
        let secs = started.elapsed().as_secs_f64();
        let Some(claimed) = answer.claim() else {
            // The watchdog answered (and counted) a timeout; this is the real end.
            match &result {
                Ok((what, _)) => {
                    tracing::warn!(op, driver, outcome = %what, elapsed_ms = secs * 1e3, "finished after its deadline")
                }
                Err(e) => {
                    tracing::warn!(op, driver, reason = e.reason(), error = %Chain(&e), elapsed_ms = secs * 1e3, "failed after its deadline")
                }
            }
            self.refresh_counts();
            return;
        };
        self.metrics.in_flight.dec();
        let response = match result {
            Ok((what, response)) => {
                self.metrics.observe(driver, op, secs, None);
                tracing::info!(op, driver, outcome = %what, elapsed_ms = secs * 1e3, "done");
                response
            }
            Err(e) => {
                self.metrics.observe(driver, op, secs, Some(e.reason()));
                tracing::warn!(op, driver, reason = e.reason(), error = %Chain(&e), elapsed_ms = secs * 1e3, "failed");
                failed(&e)
            }
        };
        self.refresh_counts();
        claimed.send(&response);
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

    fn forget(&self, key: String) -> Response {
        let r = match self.locks.lock(&key, None) {
            Some(_held) => self.lifecycle.forget(&key),
            None => Err(Error::Internal(format!("volume {key}: lock lost"))),
        };
        match r {
            Ok(true) => Response::Done,
            Ok(false) => Response::Failed(Failure::refused(format!("no record of volume {key}"))),
            Err(e) => failed(&e),
        }
    }

    fn timeout(&self, subject: &str, op: &'static str) -> Error {
        Error::Timeout {
            volume: subject.into(),
            op,
            after: self.op_timeout,
            running: None,
        }
    }

    /// One CSI call: the `volume_id` and then the volume key are taken without waiting
    /// (`busy` if either is held), then the lifecycle serves the call.
    fn csi(
        &self,
        driver: &str,
        volume_id: &str,
        call: CsiCall,
    ) -> Result<(String, Response), Error> {
        let busy = |volume: &str| {
            Error::from(CsiError::Busy {
                volume: volume.into(),
            })
        };
        let id_lock = csi_id_lock(volume_id);
        let Some(_id_held) = self.locks.try_lock(&id_lock) else {
            return Err(busy(volume_id));
        };
        let lc = &self.lifecycle;
        let key_guard = |key: Option<String>| -> Result<Option<KeyGuard<'_>>, Error> {
            let Some(key) = key else { return Ok(None) };
            tracing::Span::current().record("volume", key.as_str());
            match self.locks.try_lock(&key) {
                Some(g) => Ok(Some(g)),
                None => Err(busy(&key)),
            }
        };
        let done = |what: String| (what, Response::Done);
        match &call {
            CsiCall::Stage {
                staging_path,
                mode,
                access,
                options,
            }
            | CsiCall::Publish {
                staging_path,
                mode,
                access,
                options,
                ..
            } => {
                let v = CsiVolume {
                    driver,
                    volume_id,
                    staging_path,
                    mode: *mode,
                    access: *access,
                    options,
                };
                if let CsiCall::Publish { target, .. } = &call {
                    let _held = key_guard(lc.csi_key(volume_id))?;
                    return lc.csi_publish(&v, target).map(done);
                }
                let plan = lc.plan_csi_stage(&v)?;
                let _held = key_guard(Some(plan.key().to_owned()))?;
                let limit = self.volume_limits.get(driver).copied();
                lc.csi_stage(&plan, limit).map(done)
            }
            CsiCall::Unstage { staging_path } => {
                let _held = key_guard(lc.csi_key(volume_id))?;
                lc.csi_unstage(driver, volume_id, staging_path).map(done)
            }
            CsiCall::Unpublish { target } => {
                let key = lc
                    .csi_key_of_target(driver, target)
                    .or_else(|| lc.csi_key(volume_id));
                let _held = key_guard(key)?;
                lc.csi_unpublish(driver, volume_id, target).map(done)
            }
            CsiCall::Stats { path } => {
                let _held = key_guard(lc.csi_key(volume_id))?;
                let r = lc.csi_stats(driver, volume_id, path)?;
                Ok(("stats".into(), r))
            }
            CsiCall::Expand {
                path,
                required_bytes,
            } => {
                let _held = key_guard(lc.csi_key(volume_id))?;
                lc.csi_expand(driver, volume_id, path, *required_bytes)
            }
        }
    }

    fn mount(
        &self,
        driver: &str,
        target: &str,
        options: &VolumeOptions,
        deadline: Instant,
    ) -> Result<String, Error> {
        let plan = self.lifecycle.plan_mount(driver, target, options)?;
        tracing::Span::current().record("volume", plan.key());
        let Some(_held) = self.locks.lock(plan.key(), Some(deadline)) else {
            return Err(self.timeout(target, "mount"));
        };
        match self.lifecycle.mount(&plan)? {
            MountOutcome::Published => Ok("published".into()),
            MountOutcome::AlreadyPublished => Ok("already published".into()),
        }
    }

    fn expand(
        &self,
        driver: &str,
        pv: &str,
        new_size: u64,
        deadline: Instant,
    ) -> Result<String, Error> {
        let key = self.lifecycle.key_of_pv(driver, pv)?;
        tracing::Span::current().record("volume", key.as_str());
        let Some(_held) = self.locks.lock(&key, Some(deadline)) else {
            return Err(self.timeout(pv, "expandfs"));
        };
        self.lifecycle.expand(&key, new_size)
    }

    fn unmount(&self, driver: &str, target: &str, deadline: Instant) -> Result<String, Error> {
        let key = self.lifecycle.key_of(std::path::Path::new(target));
        let _held = match &key {
            Some(k) => {
                tracing::Span::current().record("volume", k.as_str());
                match self.locks.lock(k, Some(deadline)) {
                    Some(g) => Some(g),
                    None => return Err(self.timeout(target, "unmount")),
                }
            }
            None => None,
        };
        Ok(match self.lifecycle.unmount(Some(driver), target)? {
            UnmountOutcome::Unpublished => "unpublished".into(),
            UnmountOutcome::Unstaged => "unpublished and unstaged".into(),
            UnmountOutcome::NotMounted => "not mounted".into(),
        })
    }
}

/// A volume on the wire (`moor status`, and the never-wipe rules' live volumes): phases in
/// lower case, the source as an operator reads it.
impl From<&VolumeView> for VolumeStatus {
    fn from(v: &VolumeView) -> Self {
        let s = &v.stage;
        let (device, source) = match &s.source {
            StageSource::Block { device }
            | StageSource::Attached {
                device: Some(device),
            } => (
                Some(device.display().to_string()),
                device.display().to_string(),
            ),
            StageSource::Attached { device: None } => (None, "(attaching)".into()),
            StageSource::Directory { path } => (None, path.display().to_string()),
            StageSource::Remote(r) => (None, format!("{} ({})", r.source, r.fs_type)),
        };
        VolumeStatus {
            driver: s.driver.clone(),
            key: s.key.clone(),
            state: format!("{:?}", s.phase).to_lowercase(),
            device,
            source,
            fs_type: s.fs_type.clone(),
            stage_path: v.stage_path.display().to_string(),
            pods: v.publishes.iter().map(PodUse::from).collect(),
        }
    }
}

impl From<&PublishRecord> for PodUse {
    fn from(p: &PublishRecord) -> Self {
        PodUse {
            pod_uid: p.pod_uid.clone(),
            namespace: p.namespace.clone(),
            target: p.target.display().to_string(),
            read_only: p.read_only,
            phase: format!("{:?}", p.phase).to_lowercase(),
        }
    }
}

impl From<&Problem> for SetAsideRecord {
    fn from(p: &Problem) -> Self {
        SetAsideRecord {
            path: p.path.display().to_string(),
            reason: p.reason.into(),
            detail: p.detail.clone(),
        }
    }
}

/// The lock a CSI call takes on its `volume_id` before the volume key's.
fn csi_id_lock(volume_id: &str) -> String {
    format!("csi-volume-id:{volume_id}")
}

/// The answer for a failed operation: its reason label and its cause chain, typed.
fn failed(e: &Error) -> Response {
    Response::Failed(Failure::of(e.reason(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_become_notices_naming_volume_driver_and_device_only() {
        assert_eq!(
            pod_of_target("/var/lib/kubelet/pods/0a1b-2c/volumes/moor~nfs/data").as_deref(),
            Some("0a1b-2c")
        );
        assert_eq!(pod_of_target("/var/lib/kubelet/plugins/moor/nfs/k"), None);
        let e = Error::Fs(crate::fs::FsError::DataPresent {
            volume: "iscsi-key".into(),
            device: "/dev/sdb".into(),
        });
        let n = notice_of(&e, "iscsi").unwrap();
        assert_eq!(n.reason, NoticeReason::FormatRefused);
        assert_eq!(n.volume.as_deref(), Some("iscsi-key"));
        assert!(n.message.contains("/dev/sdb") && n.message.contains("iscsi volume iscsi-key"));
        let e = Error::Driver(DriverError::WrongNode {
            volume: "local-key".into(),
            wanted: "node-b".into(),
            this: "node-a".into(),
        });
        let n = notice_of(&e, "local").unwrap();
        assert_eq!(n.reason, NoticeReason::WrongNode);
        assert!(n.message.contains("node-b") && n.message.contains("node-a"));
        let e = Error::Driver(DriverError::from(crate::attach::rbd::RbdError::InUse {
            volume: "rbd-key".into(),
            image: "pool/img".into(),
            holders: "client.4171 10.0.0.9:0/1234".into(),
        }));
        let n = notice_of(&e, "rbd").unwrap();
        assert_eq!(n.reason, NoticeReason::FencingRefused);
        assert!(
            n.message.contains("client.4171 10.0.0.9:0/1234") && n.message.contains("pool/img")
        );
        // Other failures are the log's and the metrics' business.
        assert!(notice_of(&Error::Internal("x".into()), "nfs").is_none());
    }

    #[test]
    fn a_key_lock_is_exclusive_and_a_waiter_gives_up_at_its_deadline() {
        let locks = KeyLocks::default();
        let g = locks.lock("k", None).unwrap();
        let soon = Instant::now() + Duration::from_millis(30);
        assert!(locks.lock("k", Some(soon)).is_none());
        assert!(locks.lock("other", Some(soon)).is_some());
        drop(g);
        assert!(locks.lock("k", Some(soon)).is_some());
        assert!(lock(&locks.map).is_empty(), "released keys are pruned");
    }

    #[test]
    fn a_waiter_gets_the_lock_when_it_is_released() {
        let locks = Arc::new(KeyLocks::default());
        let g = locks.lock("k", None).unwrap();
        let l2 = locks.clone();
        let t = std::thread::spawn(move || l2.lock("k", None).is_some());
        std::thread::sleep(Duration::from_millis(20));
        drop(g);
        assert!(t.join().unwrap());
        assert!(lock(&locks.map).is_empty());
    }

    /// An executor over a fake host with the builtin drivers.
    fn fake_executor(tmp: &std::path::Path) -> Executor {
        let fake = crate::host::fake::FakeHost::new(tmp);
        let lc = Arc::new(Lifecycle::over_fake(
            &fake,
            crate::daemon::drivers::builtin(),
        ));
        Executor::new(lc, Arc::new(Metrics::new()), Duration::from_secs(30))
    }

    fn ask(exec: &Executor, req: Request) -> Response {
        let (tx, rx) = std::sync::mpsc::channel();
        let answer = Answer::new(move |r| tx.send(r.clone()).unwrap());
        exec.handle(req, &answer);
        rx.recv_timeout(Duration::from_secs(5)).unwrap()
    }

    fn nfs_stage(exec: &Executor, volume_id: &str) -> Request {
        let opts = crate::volume::options::parse(&std::collections::BTreeMap::from([
            ("server".to_owned(), "10.0.0.5".to_owned()),
            ("path".to_owned(), format!("/exports/{volume_id}")),
        ]))
        .unwrap();
        let kubelet = &exec.lifecycle.host().paths.kubelet_dir;
        Request::Csi {
            driver: "nfs".into(),
            volume_id: volume_id.into(),
            call: CsiCall::Stage {
                staging_path: kubelet
                    .join(format!(
                        "plugins/kubernetes.io/csi/pv/{volume_id}/globalmount"
                    ))
                    .display()
                    .to_string(),
                mode: crate::api::VolumeMode::Filesystem,
                access: crate::api::AccessMode::MultiNodeMultiWriter,
                options: opts,
            },
        }
    }

    fn reason(r: &Response) -> Option<&str> {
        match r {
            Response::Failed(f) => f.reason.as_deref(),
            _ => None,
        }
    }

    #[test]
    fn a_csi_call_on_a_volume_in_flight_is_busy_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let exec = fake_executor(tmp.path());
        let held = exec.locks.try_lock("csi-volume-id:v1").unwrap();
        assert!(exec.locks.try_lock("csi-volume-id:v1").is_none());
        let started = Instant::now();
        let r = ask(&exec, nfs_stage(&exec, "v1"));
        assert_eq!(reason(&r), Some("busy"), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
        drop(held);
        // Its key held (by the reconciler, a FlexVolume call): busy too, never queued.
        let key = {
            let Request::Csi {
                call: CsiCall::Stage { options, .. },
                ..
            } = nfs_stage(&exec, "v1")
            else {
                unreachable!()
            };
            let plan = exec.lifecycle.plan_mount(
                "nfs",
                &exec
                    .lifecycle
                    .host()
                    .paths
                    .kubelet_dir
                    .join("pods/u/volumes/moor~nfs/v")
                    .display()
                    .to_string(),
                &options,
            );
            plan.unwrap().key().to_owned()
        };
        let _key_held = exec.locks.lock(&key, None).unwrap();
        let r = ask(&exec, nfs_stage(&exec, "v1"));
        assert_eq!(reason(&r), Some("busy"), "{r:?}");
        let text = exec.metrics.encode();
        assert!(
            text.lines()
                .any(|l| l.contains("op=\"csi_stage\"") && l.contains("reason=\"busy\"")),
            "{text}"
        );
    }

    #[test]
    fn a_csi_stage_beyond_the_drivers_limit_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let exec =
            fake_executor(tmp.path()).with_volume_limits(HashMap::from([("nfs".to_owned(), 0)]));
        // Refused before any side effect: the fake host has no mount scripted.
        let r = ask(&exec, nfs_stage(&exec, "v1"));
        assert_eq!(reason(&r), Some("too_many_volumes"), "{r:?}");
        let Response::Failed(f) = &r else {
            unreachable!()
        };
        assert!(f.to_string().contains("driver nfs"), "{f}");
        assert_eq!(exec.lifecycle.counts(), (0, 0));
    }

    #[test]
    fn the_watchdog_fires_only_armed_alarms() {
        let w = Watchdog::new(Duration::from_secs(5));
        let (tx, rx) = std::sync::mpsc::channel();
        let tx2 = tx.clone();
        let t = w.arm(
            Instant::now() + Duration::from_millis(20),
            Box::new(move || tx2.send("cancelled").unwrap()),
        );
        w.disarm(t);
        w.arm(
            Instant::now() + Duration::from_millis(40),
            Box::new(move || tx.send("fired").unwrap()),
        );
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok("fired"));
    }

    /// The status table's rows, from records as the journal holds them.
    #[test]
    fn the_status_wire_shows_phases_sources_and_pods_as_before() {
        let stage = |source: serde_json::Value| -> crate::journal::StageRecord {
            serde_json::from_value(serde_json::json!({
                "key": "k", "driver": "local", "source": source, "options": {},
                "fs_type": "ext4", "fs_uuid": null, "read_only": false, "phase": "staged",
            }))
            .unwrap()
        };
        let publish: PublishRecord = serde_json::from_value(serde_json::json!({
            "target": "/k/pods/u/volumes/moor~local/v", "key": "k", "driver": "local",
            "pod_uid": "u", "volume_name": "v", "namespace": "ns", "read_only": true,
            "phase": "published",
        }))
        .unwrap();
        let view = VolumeView {
            stage: stage(serde_json::json!({"kind": "block", "device": "/dev/loop7"})),
            stage_path: "/k/plugins/moor/local/k".into(),
            publishes: vec![publish],
        };
        assert_eq!(
            VolumeStatus::from(&view),
            VolumeStatus {
                driver: "local".into(),
                key: "k".into(),
                state: "staged".into(),
                device: Some("/dev/loop7".into()),
                source: "/dev/loop7".into(),
                fs_type: Some("ext4".into()),
                stage_path: "/k/plugins/moor/local/k".into(),
                pods: vec![PodUse {
                    pod_uid: "u".into(),
                    namespace: Some("ns".into()),
                    target: "/k/pods/u/volumes/moor~local/v".into(),
                    read_only: true,
                    phase: "published".into(),
                }],
            }
        );
        for (source, device, shown) in [
            (
                serde_json::json!({"kind": "directory", "path": "/srv/a"}),
                None,
                "/srv/a",
            ),
            (
                serde_json::json!({"kind": "attached", "device": null}),
                None,
                "(attaching)",
            ),
            (
                serde_json::json!({"kind": "attached", "device": "/dev/sdb"}),
                Some("/dev/sdb"),
                "/dev/sdb",
            ),
            (
                serde_json::json!({"kind": "remote", "fs_type": "nfs", "source": "s:/x",
                    "options": [], "fuse": false, "server": "s"}),
                None,
                "s:/x (nfs)",
            ),
        ] {
            let v = VolumeStatus::from(&VolumeView {
                stage: stage(source),
                stage_path: "/s".into(),
                publishes: vec![],
            });
            assert_eq!((v.device.as_deref(), v.source.as_str()), (device, shown));
        }
        let aside = SetAsideRecord::from(&Problem {
            path: "/state/stage/x.json.bad".into(),
            reason: "invalid_json",
            detail: "eof".into(),
        });
        assert_eq!(
            (
                aside.path.as_str(),
                aside.reason.as_str(),
                aside.detail.as_str()
            ),
            ("/state/stage/x.json.bad", "invalid_json", "eof")
        );
    }
}
