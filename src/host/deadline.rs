//! The deadline of the volume operation running on this thread, so every command and every
//! bounded kernel call started under it ends before it: kubelet then hears which command
//! did not finish ("`mkfs.ext4 …` did not finish within 3s"), not only that the operation
//! did not.
//!
//! Invariant: a wait that starts before the operation's deadline is cut to end a margin
//! before it; one that starts after (a rollback once the deadline's answer went out) keeps
//! its own deadline, so undoing a step is never denied the time it needs. A command that
//! must not be cut (mkfs, fsck: killed halfway they leave a disk neither blank nor
//! formatted) is recorded in the operation's [`Progress`] instead, so the deadline's answer
//! names it.

use std::cell::{Cell, RefCell};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

thread_local! {
    static CUTOFF: Cell<Option<Instant>> = const { Cell::new(None) };
    static PROGRESS: RefCell<Option<Arc<Progress>>> = const { RefCell::new(None) };
}

/// The command an operation is waiting for right now, readable from another thread (the
/// watchdog that answers kubelet at the deadline).
#[derive(Debug, Default)]
pub struct Progress(Mutex<Option<(String, Instant)>>);

impl Progress {
    /// `` `cmdline` `` and for how long it has run, if a command is running.
    pub fn describe(&self) -> Option<String> {
        let g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref()
            .map(|(c, since)| format!("`{c}` has run for {:.1?}", since.elapsed()))
    }
}

/// Clears the running command when dropped.
pub struct Running(Option<Arc<Progress>>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            *p.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
}

/// Records `cmdline` as what this thread's operation waits for, until the guard drops.
pub fn running(cmdline: &str) -> Running {
    let p = PROGRESS.with(|p| p.borrow().clone());
    if let Some(p) = &p {
        *p.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((cmdline.to_owned(), Instant::now()));
    }
    Running(p)
}

/// Time kept between a cut command's end and the operation's deadline, for the failure to
/// travel back (a tenth of the operation, at most 2 s).
fn margin(op_timeout: Duration) -> Duration {
    (op_timeout / 10).min(Duration::from_secs(2))
}

/// Runs `f` with waits cut to end before `deadline` (an operation of `op_timeout`), and
/// the commands it runs recorded in `progress`.
pub fn with_op_deadline<R>(
    deadline: Instant,
    op_timeout: Duration,
    progress: Arc<Progress>,
    f: impl FnOnce() -> R,
) -> R {
    let cutoff = deadline.checked_sub(margin(op_timeout)).unwrap_or(deadline);
    let before = CUTOFF.with(|c| c.replace(Some(cutoff)));
    let before_progress = PROGRESS.with(|p| p.replace(Some(progress)));
    struct Restore(Option<Instant>, Option<Arc<Progress>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CUTOFF.with(|c| c.set(self.0));
            let p = self.1.take();
            PROGRESS.with(|c| *c.borrow_mut() = p);
        }
    }
    let _restore = Restore(before, before_progress);
    f()
}

/// `timeout`, cut to the time left before this thread's operation cutoff (if one is set and
/// not yet passed).
pub fn clamp(timeout: Duration) -> Duration {
    clamp_at(timeout, Instant::now())
}

fn clamp_at(timeout: Duration, now: Instant) -> Duration {
    match CUTOFF.with(Cell::get) {
        Some(cutoff) if cutoff > now => timeout.min(cutoff - now),
        _ => timeout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_end_before_the_operation_and_rollbacks_keep_their_time() {
        let t = Duration::from_secs(600);
        assert_eq!(clamp(t), t, "no operation: unchanged");
        let now = Instant::now();
        let progress = Arc::new(Progress::default());
        let ten = Duration::from_secs(10);
        with_op_deadline(now + ten, ten, progress.clone(), || {
            assert_eq!(
                clamp_at(t, now),
                Duration::from_secs(9),
                "cut before the deadline"
            );
            let one = Duration::from_secs(1);
            assert_eq!(clamp_at(one, now), one);
            // Past the cutoff (the deadline's answer is out): a rollback keeps its own.
            assert_eq!(clamp_at(t, now + Duration::from_secs(9)), t);
            assert_eq!(progress.describe(), None);
            {
                let _r = running("mkfs.ext4 /dev/x");
                let d = progress.describe().unwrap();
                assert!(d.starts_with("`mkfs.ext4 /dev/x` has run for"), "{d}");
            }
            assert_eq!(progress.describe(), None);
        });
        let long = Duration::from_secs(300);
        with_op_deadline(now + long, long, Arc::default(), || {
            assert_eq!(clamp_at(t, now), Duration::from_secs(298));
        });
        assert_eq!(clamp(t), t, "restored after the operation");
        let _r = running("outside any operation");
        assert_eq!(progress.describe(), None);
    }
}
