//! Deadlines for calls that can block in the kernel (mount, umount, statfs on a dead
//! export): the call runs on its own thread; the caller gets an answer in time.
//!
//! A call that misses its deadline keeps its thread until the kernel returns (no thread can
//! be killed): the thread is abandoned, not joined, so the caller and the daemon go on.

use std::sync::mpsc;
use std::time::Duration;

/// The deadline passed before the call returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no answer within {0:?}")]
pub struct TimedOut(pub Duration);

/// Runs `f` on a fresh thread and waits at most `timeout` for its result.
pub fn bounded<T, F>(timeout: Duration, f: F) -> Result<T, TimedOut>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("moor-bounded".into())
        .spawn(move || {
            let _ = tx.send(f());
        });
    if spawned.is_err() {
        return Err(TimedOut(Duration::ZERO));
    }
    rx.recv_timeout(timeout).map_err(|_| TimedOut(timeout))
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
}
