//! The deadline of the volume operation running on this thread, so every command and every
//! bounded kernel call started under it ends before it: kubelet then hears which command
//! did not finish ("`mkfs.ext4 …` did not finish within 3s"), not only that the operation
//! did not.
//!
//! Invariant: a wait that starts before the operation's deadline is cut to end a margin
//! before it; one that starts after (a rollback once the deadline's answer went out) keeps
//! its own deadline, so undoing a step is never denied the time it needs.

use std::cell::Cell;
use std::time::{Duration, Instant};

thread_local! {
    static CUTOFF: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Time kept between a cut command's end and the operation's deadline, for the failure to
/// travel back (a tenth of the operation, at most 2 s).
fn margin(op_timeout: Duration) -> Duration {
    (op_timeout / 10).min(Duration::from_secs(2))
}

/// Runs `f` with waits cut to end before `deadline` (an operation of `op_timeout`).
pub fn with_op_deadline<R>(deadline: Instant, op_timeout: Duration, f: impl FnOnce() -> R) -> R {
    let cutoff = deadline.checked_sub(margin(op_timeout)).unwrap_or(deadline);
    let before = CUTOFF.with(|c| c.replace(Some(cutoff)));
    struct Restore(Option<Instant>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CUTOFF.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(before);
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
        with_op_deadline(
            now + Duration::from_secs(10),
            Duration::from_secs(10),
            || {
                let c = clamp_at(t, now);
                assert_eq!(
                    c,
                    Duration::from_secs(9),
                    "cut a margin before the deadline"
                );
                assert_eq!(
                    clamp_at(Duration::from_secs(1), now),
                    Duration::from_secs(1)
                );
                // Past the cutoff (the deadline's answer is out): a rollback keeps its own.
                assert_eq!(clamp_at(t, now + Duration::from_secs(9)), t);
            },
        );
        with_op_deadline(
            now + Duration::from_secs(300),
            Duration::from_secs(300),
            || {
                assert_eq!(clamp_at(t, now), Duration::from_secs(298));
            },
        );
        assert_eq!(clamp(t), t, "restored after the operation");
    }
}
