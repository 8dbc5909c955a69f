//! Deadlines for calls that can block in the kernel (mount, umount, statfs on a dead
//! export): the call runs on another thread; the caller gets an answer in time.
//!
//! The calls run on a pool of long-lived worker threads (no thread is created per call). A
//! call that misses its deadline keeps its worker until the kernel returns (no thread can be
//! killed): that worker is abandoned, not joined, and the pool starts a new one whenever a
//! call finds no idle worker, so a hung call never delays any other. Idle workers beyond a
//! few exit after a while.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

/// The deadline passed before the call returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no answer within {0:?}")]
pub struct TimedOut(pub Duration);

type Job = Box<dyn FnOnce() + Send>;

/// Idle workers kept beyond this many exit after [`IDLE_EXIT`].
const KEEP_IDLE: usize = 2;
const IDLE_EXIT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    idle: usize,
}

struct Pool {
    queue: Mutex<Queue>,
    ready: Condvar,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        queue: Mutex::new(Queue::default()),
        ready: Condvar::new(),
    })
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // Jobs run outside the lock; a poisoned queue is still consistent.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `job`; starts a worker when none is idle (every existing one is busy or stuck).
    fn submit(&'static self, job: Job) -> bool {
        let mut q = self.lock();
        q.jobs.push_back(job);
        if q.idle >= q.jobs.len() {
            drop(q);
            self.ready.notify_one();
            return true;
        }
        drop(q);
        let spawned = std::thread::Builder::new()
            .name("moor-bounded".into())
            .spawn(move || self.work());
        if spawned.is_err() {
            // No new worker: an idle one may still come; otherwise the caller gives up (its
            // job stays queued, and is skipped as abandoned when a worker reaches it).
            if self.lock().idle == 0 {
                return false;
            }
            self.ready.notify_one();
        }
        true
    }

    fn work(&self) {
        let mut q = self.lock();
        loop {
            if let Some(job) = q.jobs.pop_front() {
                drop(q);
                job();
                q = self.lock();
                continue;
            }
            q.idle += 1;
            let (guard, waited) = self
                .ready
                .wait_timeout(q, IDLE_EXIT)
                .unwrap_or_else(|p| p.into_inner());
            q = guard;
            q.idle -= 1;
            if waited.timed_out() && q.jobs.is_empty() && q.idle >= KEEP_IDLE {
                return;
            }
        }
    }
}

/// Runs `f` on a pool worker and waits at most `timeout` for its result.
pub fn bounded<T, F>(timeout: Duration, f: F) -> Result<T, TimedOut>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let timeout = super::deadline::clamp(timeout);
    let (tx, rx) = mpsc::sync_channel(1);
    let span = tracing::Span::current();
    // Set when the caller stops waiting: a job that has not started by then never starts
    // (one already running finishes, as a call in the kernel must).
    let abandoned = Arc::new(AtomicBool::new(false));
    let gone = abandoned.clone();
    let job: Job = Box::new(move || {
        if gone.load(Ordering::Acquire) {
            return;
        }
        let _ = tx.send(span.in_scope(f));
    });
    if !pool().submit(job) {
        abandoned.store(true, Ordering::Release);
        return Err(TimedOut(Duration::ZERO));
    }
    rx.recv_timeout(timeout).map_err(|_| {
        abandoned.store(true, Ordering::Release);
        TimedOut(timeout)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_value() {
        assert_eq!(bounded(Duration::from_secs(5), || 7), Ok(7));
    }

    #[test]
    fn gives_up_on_a_call_that_blocks() {
        let (_hold, rx) = mpsc::channel::<()>();
        let r = bounded(Duration::from_millis(50), move || rx.recv().is_ok());
        assert_eq!(r, Err(TimedOut(Duration::from_millis(50))));
    }

    #[test]
    fn a_stuck_call_does_not_block_the_next_ones() {
        let (hold, rx) = mpsc::channel::<()>();
        let stuck = bounded(Duration::from_millis(20), move || rx.recv().is_ok());
        assert!(stuck.is_err());
        for i in 0..20 {
            assert_eq!(bounded(Duration::from_secs(5), move || i), Ok(i));
        }
        drop(hold);
    }
}
