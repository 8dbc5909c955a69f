//! Notices: the facts an operator must hear about (a share died and was healed or not, a
//! format refused, a fencing or wrong-node refusal, a record set aside, a pod still holding a
//! dead mount, an eviction, an orphan cleaned). The daemon turns each into a Kubernetes Event
//! on the pod (and the PV) when it has credentials, and always into a log line, a metric and
//! an entry of `moor status`.
//!
//! Invariant: a notice carries no secret. Its message is built from typed, non-secret facts
//! (volume key, driver, server, device, pod UID), never from options or command output.

use serde::{Deserialize, Serialize};

/// Kubernetes Event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Event type `Normal`.
    Normal,
    /// Event type `Warning`.
    Warning,
}

impl Severity {
    /// The Event's `type`.
    pub fn event_type(self) -> &'static str {
        match self {
            Severity::Normal => "Normal",
            Severity::Warning => "Warning",
        }
    }
}

/// What happened: a stable, low-cardinality name (the Event's `reason`, a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeReason {
    /// A staged share stopped answering or vanished.
    ShareDead,
    /// A dead share was mounted again and its pod directories bound again.
    ShareHealed,
    /// A heal attempt failed (retried with backoff).
    ShareHealFailed,
    /// A running pod's container still holds the dead mount (its mounts do not propagate).
    DeadMountInPod,
    /// A pod holding a dead mount was evicted (`heal.evict-pods`).
    PodEvicted,
    /// The eviction of such a pod was refused (a PodDisruptionBudget) or failed.
    EvictionRefused,
    /// A device holds a signature, so it was not formatted.
    FormatRefused,
    /// Another client holds the volume (RBD watcher/lock, …).
    FencingRefused,
    /// A local volume of another node was asked for here.
    WrongNode,
    /// A journal record could not be used at start-up and was set aside.
    RecordSetAside,
    /// A gone pod's volumes were unpublished and its empty directories removed.
    OrphanCleaned,
    /// A gone pod's volume could not be cleaned (a mount moor did not make on it, a failed
    /// unmount): retried with backoff, reported once per reason.
    OrphanNotCleaned,
}

impl NoticeReason {
    /// Every reason (the daemon starts each one's counter at 0, so a rate or `increase` over
    /// the first notice of a reason sees it).
    pub const ALL: [NoticeReason; 12] = [
        NoticeReason::ShareDead,
        NoticeReason::ShareHealed,
        NoticeReason::ShareHealFailed,
        NoticeReason::DeadMountInPod,
        NoticeReason::PodEvicted,
        NoticeReason::EvictionRefused,
        NoticeReason::FormatRefused,
        NoticeReason::FencingRefused,
        NoticeReason::WrongNode,
        NoticeReason::RecordSetAside,
        NoticeReason::OrphanCleaned,
        NoticeReason::OrphanNotCleaned,
    ];

    /// The Event `reason` (CamelCase, as kubelet's own).
    pub fn event_reason(self) -> &'static str {
        match self {
            NoticeReason::ShareDead => "ShareDead",
            NoticeReason::ShareHealed => "ShareHealed",
            NoticeReason::ShareHealFailed => "ShareHealFailed",
            NoticeReason::DeadMountInPod => "DeadMountInPod",
            NoticeReason::PodEvicted => "PodEvicted",
            NoticeReason::EvictionRefused => "EvictionRefused",
            NoticeReason::FormatRefused => "FormatRefused",
            NoticeReason::FencingRefused => "FencingRefused",
            NoticeReason::WrongNode => "WrongNode",
            NoticeReason::RecordSetAside => "RecordSetAside",
            NoticeReason::OrphanCleaned => "OrphanCleaned",
            NoticeReason::OrphanNotCleaned => "OrphanNotCleaned",
        }
    }

    /// The metric label (snake_case).
    pub fn label(self) -> &'static str {
        match self {
            NoticeReason::ShareDead => "share_dead",
            NoticeReason::ShareHealed => "share_healed",
            NoticeReason::ShareHealFailed => "share_heal_failed",
            NoticeReason::DeadMountInPod => "dead_mount_in_pod",
            NoticeReason::PodEvicted => "pod_evicted",
            NoticeReason::EvictionRefused => "eviction_refused",
            NoticeReason::FormatRefused => "format_refused",
            NoticeReason::FencingRefused => "fencing_refused",
            NoticeReason::WrongNode => "wrong_node",
            NoticeReason::RecordSetAside => "record_set_aside",
            NoticeReason::OrphanCleaned => "orphan_cleaned",
            NoticeReason::OrphanNotCleaned => "orphan_not_cleaned",
        }
    }

    /// Whether it is a `Warning` (else `Normal`).
    pub fn severity(self) -> Severity {
        match self {
            NoticeReason::ShareHealed | NoticeReason::PodEvicted | NoticeReason::OrphanCleaned => {
                Severity::Normal
            }
            _ => Severity::Warning,
        }
    }
}

/// One fact to report. Events go on each pod in `pod_uids` (resolved to namespace/name by
/// the daemon's pod cache: the UID comes from kubelet's path, never from options a pod
/// author writes), on `pv` when set, and on the node when neither is known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// What happened.
    pub reason: NoticeReason,
    /// One sentence an operator can act on (no secrets).
    pub message: String,
    /// Volume key, when it concerns one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// Driver name, when it concerns one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Pods concerned (UIDs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pod_uids: Vec<String>,
    /// PersistentVolume name, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pv: Option<String>,
}

impl Notice {
    /// A notice about `reason` with `message` and nothing else set.
    pub fn new(reason: NoticeReason, message: impl Into<String>) -> Self {
        Notice {
            reason,
            message: message.into(),
            volume: None,
            driver: None,
            pod_uids: Vec::new(),
            pv: None,
        }
    }

    /// Names the volume and its driver.
    pub fn volume(mut self, key: impl Into<String>, driver: impl Into<String>) -> Self {
        self.volume = Some(key.into());
        self.driver = Some(driver.into());
        self
    }

    /// Names the pods.
    pub fn pods(mut self, uids: impl IntoIterator<Item = String>) -> Self {
        self.pod_uids.extend(uids);
        self
    }

    /// Names the PV.
    pub fn pv(mut self, name: impl Into<String>) -> Self {
        self.pv = Some(name.into());
        self
    }
}

/// A notice as `moor status` shows it: aggregated (same reason, volume and message) with a
/// count and first/last times (seconds since the epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentNotice {
    /// The notice.
    #[serde(flatten)]
    pub notice: Notice,
    /// How many times it was seen.
    pub count: u32,
    /// First seen.
    pub first_seen: u64,
    /// Last seen.
    pub last_seen: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_holds_every_reason_once() {
        // A new variant fails to compile here until it is placed in ALL.
        let index = |r: NoticeReason| match r {
            NoticeReason::ShareDead => 0,
            NoticeReason::ShareHealed => 1,
            NoticeReason::ShareHealFailed => 2,
            NoticeReason::DeadMountInPod => 3,
            NoticeReason::PodEvicted => 4,
            NoticeReason::EvictionRefused => 5,
            NoticeReason::FormatRefused => 6,
            NoticeReason::FencingRefused => 7,
            NoticeReason::WrongNode => 8,
            NoticeReason::RecordSetAside => 9,
            NoticeReason::OrphanCleaned => 10,
            NoticeReason::OrphanNotCleaned => 11,
        };
        for (i, r) in NoticeReason::ALL.iter().enumerate() {
            assert_eq!(index(*r), i, "{r:?}");
        }
    }
}
