//! The cluster without an API server: each notice is logged (warn or info by its severity)
//! and kept, aggregated, for `moor status`; no pod is known, no eviction is possible.
//!
//! Invariant: at most [`KEEP`] aggregated notices are held (the oldest go first), so a
//! flapping share cannot grow the daemon's memory.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{Eviction, Notice, Notify, PodState, Pods, RecentNotice, Severity};

/// Aggregated notices kept for `moor status`.
pub const KEEP: usize = 200;

/// Logs and keeps notices; knows no pod.
#[derive(Debug, Default)]
pub struct Offline {
    recent: Mutex<VecDeque<RecentNotice>>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Logs a notice with structured fields (shared by every [`Notify`]).
pub fn log(n: &Notice) {
    let volume = n.volume.as_deref().unwrap_or("");
    let driver = n.driver.as_deref().unwrap_or("");
    let pods = n.pod_uids.join(",");
    match n.reason.severity() {
        Severity::Warning => {
            tracing::warn!(
                reason = n.reason.event_reason(),
                volume,
                driver,
                pods,
                pv = n.pv.as_deref().unwrap_or(""),
                "{}",
                n.message
            )
        }
        Severity::Normal => {
            tracing::info!(
                reason = n.reason.event_reason(),
                volume,
                driver,
                pods,
                pv = n.pv.as_deref().unwrap_or(""),
                "{}",
                n.message
            )
        }
    }
}

impl Offline {
    /// Adds a notice to the aggregated list (same reason, volume, pods and message: counted).
    pub fn keep(&self, n: Notice) {
        let t = now();
        let mut r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = r.iter().position(|x| x.notice == n) {
            if let Some(mut x) = r.remove(i) {
                x.count = x.count.saturating_add(1);
                x.last_seen = t;
                r.push_back(x);
            }
            return;
        }
        if r.len() >= KEEP {
            r.pop_front();
        }
        r.push_back(RecentNotice {
            notice: n,
            count: 1,
            first_seen: t,
            last_seen: t,
        });
    }
}

impl Notify for Offline {
    fn notify(&self, notice: Notice) {
        log(&notice);
        self.keep(notice);
    }

    fn recent(&self) -> Vec<RecentNotice> {
        let r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        r.iter().cloned().collect()
    }
}

impl Pods for Offline {
    fn pod(&self, _uid: &str) -> PodState {
        PodState::Unknown
    }

    fn evict(&self, _namespace: &str, _name: &str, _uid: &str) -> Eviction {
        Eviction::Failed("no Kubernetes credentials".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::notice::NoticeReason;

    #[test]
    fn the_same_notice_is_counted_once_and_the_list_is_bounded() {
        let o = Offline::default();
        let n = Notice::new(NoticeReason::ShareDead, "nfs share 10.0.0.1:/x is dead")
            .volume("k", "nfs");
        o.notify(n.clone());
        o.notify(n.clone());
        let r = o.recent();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].count, 2);
        for i in 0..(KEEP + 10) {
            o.notify(Notice::new(
                NoticeReason::ShareHealed,
                format!("healed {i}"),
            ));
        }
        let r = o.recent();
        assert_eq!(r.len(), KEEP);
        assert_eq!(
            r.last().unwrap().notice.message,
            format!("healed {}", KEEP + 9)
        );
        assert!(r.iter().all(|x| x.notice != n), "the oldest went first");
        assert_eq!(o.pod("u"), PodState::Unknown);
    }
}
