//! Kubernetes Events (core/v1) the way kubelet's recorder sends them (client-go's
//! `EventCorrelator`): the same object, reason, type and message within [`Tuning::window`]
//! patch the existing Event's `count` and `lastTimestamp` instead of creating one; more than
//! [`Tuning::max_similar`] different messages for the same object and reason within the
//! window collapse into one "(combined from similar events)" Event; and a token bucket per
//! object (burst [`Tuning::burst`], one token per [`Tuning::refill`]) throttles a flapping
//! object. A throttled Event changes no state and is only counted.
//!
//! Invariants: the correlator is pure (time is passed in), so its rules are tested without
//! an API server; its maps are bounded ([`MAX_KEYS`]); a message is cut to
//! [`MAX_MESSAGE`] bytes before it is sent.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Patch, PatchParams, PostParams};

use crate::metrics::ClusterMetrics;

/// An Event's message is cut to this many bytes (at a character boundary).
pub const MAX_MESSAGE: usize = 1024;
/// At most this many keys are remembered per map (client-go's LRU size).
pub const MAX_KEYS: usize = 4096;
/// The prefix of an aggregated Event's message (client-go's wording).
pub const COMBINED: &str = "(combined from similar events): ";

/// The recorder's rules (client-go's defaults).
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// Aggregation and deduplication window.
    pub window: Duration,
    /// Different messages for one object and reason within the window before they combine.
    pub max_similar: usize,
    /// Spam filter burst per object.
    pub burst: u32,
    /// One token per this long.
    pub refill: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            window: Duration::from_secs(600),
            max_similar: 10,
            burst: 25,
            refill: Duration::from_secs(300),
        }
    }
}

/// The object an Event is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Involved {
    /// `Pod`, `PersistentVolume` or `Node`.
    pub kind: &'static str,
    /// The object's namespace (empty for a cluster-scoped object).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID (kubelet uses the node's name as a Node's UID in its Events).
    pub uid: String,
}

impl Involved {
    /// The namespace the Event is created in (`default` for cluster-scoped objects, as
    /// kubelet does).
    pub fn event_namespace(&self) -> &str {
        if self.namespace.is_empty() {
            "default"
        } else {
            &self.namespace
        }
    }

    /// This node, as kubelet's node Events name it.
    pub fn node(name: &str) -> Self {
        Involved {
            kind: "Node",
            namespace: String::new(),
            name: name.to_owned(),
            uid: name.to_owned(),
        }
    }
}

/// What to do with one Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create a new Event with this name and message.
    Create {
        /// Event name.
        name: String,
        /// The message (possibly combined).
        message: String,
    },
    /// Patch the Event `name` to `count` (and the message).
    Patch {
        /// Event name.
        name: String,
        /// The new count.
        count: i32,
        /// The message (possibly combined).
        message: String,
    },
    /// Throttled by the spam filter: nothing sent.
    Throttled,
}

struct Similar {
    since: Instant,
    messages: HashSet<String>,
}

struct Logged {
    name: String,
    count: i32,
    last: Instant,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Aggregation, deduplication and the spam filter.
pub struct Correlator {
    tuning: Tuning,
    similar: HashMap<(Involved, String, &'static str), Similar>,
    logged: HashMap<(Involved, String, &'static str, String), Logged>,
    buckets: HashMap<Involved, Bucket>,
    seq: u64,
}

fn bound<K: Clone + Eq + std::hash::Hash, V>(m: &mut HashMap<K, V>, age: impl Fn(&V) -> Instant) {
    if m.len() < MAX_KEYS {
        return;
    }
    if let Some(oldest) = m.iter().min_by_key(|(_, v)| age(v)).map(|(k, _)| k.clone()) {
        m.remove(&oldest);
    }
}

impl Correlator {
    /// A correlator with `tuning`.
    pub fn new(tuning: Tuning) -> Self {
        Correlator {
            tuning,
            similar: HashMap::new(),
            logged: HashMap::new(),
            buckets: HashMap::new(),
            seq: 0,
        }
    }

    fn allow(&mut self, obj: &Involved, now: Instant) -> bool {
        let t = self.tuning;
        if !self.buckets.contains_key(obj) {
            bound(&mut self.buckets, |b| b.at);
        }
        let b = self.buckets.entry(obj.clone()).or_insert(Bucket {
            tokens: f64::from(t.burst),
            at: now,
        });
        let refill = now.saturating_duration_since(b.at).as_secs_f64()
            / t.refill.as_secs_f64().max(f64::MIN_POSITIVE);
        b.tokens = (b.tokens + refill).min(f64::from(t.burst));
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Decides what one Event about `obj` becomes at `now`.
    pub fn observe(
        &mut self,
        obj: &Involved,
        reason: &str,
        kind: &'static str,
        message: &str,
        now: Instant,
    ) -> Action {
        if !self.allow(obj, now) {
            return Action::Throttled;
        }
        let window = self.tuning.window;
        let skey = (obj.clone(), reason.to_owned(), kind);
        if !self.similar.contains_key(&skey) {
            bound(&mut self.similar, |s| s.since);
        }
        let s = self.similar.entry(skey).or_insert_with(|| Similar {
            since: now,
            messages: HashSet::new(),
        });
        if now.saturating_duration_since(s.since) > window {
            s.since = now;
            s.messages.clear();
        }
        s.messages.insert(message.to_owned());
        let (local, message) = if s.messages.len() > self.tuning.max_similar {
            // One Event for all of them: keyed without the message, so it is patched.
            (String::new(), format!("{COMBINED}{message}"))
        } else {
            (message.to_owned(), message.to_owned())
        };
        let message = truncate(&message, MAX_MESSAGE);
        let lkey = (obj.clone(), reason.to_owned(), kind, local);
        if let Some(l) = self.logged.get_mut(&lkey)
            && now.saturating_duration_since(l.last) <= window
        {
            l.count = l.count.saturating_add(1);
            l.last = now;
            return Action::Patch {
                name: l.name.clone(),
                count: l.count,
                message,
            };
        }
        bound(&mut self.logged, |l| l.last);
        self.seq += 1;
        let name = event_name(&obj.name, self.seq);
        self.logged.insert(
            lkey,
            Logged {
                name: name.clone(),
                count: 1,
                last: now,
            },
        );
        Action::Create { name, message }
    }

    /// Forgets an Event the API server no longer has (a 404 on its patch), so the next one
    /// is created afresh.
    pub fn forget(&mut self, name: &str) {
        self.logged.retain(|_, l| l.name != name);
    }
}

/// `<object>.<unique hex>`, as client-go names Events (unique per process and instant).
fn event_name(object: &str, seq: u64) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{object}.{:x}", nanos.wrapping_add(u128::from(seq)))
}

/// `s` cut to at most `max` bytes at a character boundary.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Sends the correlator's decisions to the API server.
pub struct Sender {
    client: kube::Client,
    node: String,
    correlator: Correlator,
    metrics: ClusterMetrics,
}

impl Sender {
    /// A sender for this node's Events.
    pub fn new(client: kube::Client, node: &str, tuning: Tuning, metrics: ClusterMetrics) -> Self {
        Sender {
            client,
            node: node.to_owned(),
            correlator: Correlator::new(tuning),
            metrics,
        }
    }

    /// Records one Event about `obj` (the outcome is counted in `moor_events_total`).
    pub async fn record(
        &mut self,
        obj: &Involved,
        reason: &str,
        kind: &'static str,
        message: &str,
    ) {
        let action = self
            .correlator
            .observe(obj, reason, kind, message, Instant::now());
        let ns = obj.event_namespace().to_owned();
        let api: kube::Api<Event> = kube::Api::namespaced(self.client.clone(), &ns);
        let result = match action {
            Action::Throttled => {
                tracing::debug!(object = %obj.name, kind = obj.kind, reason, "Event throttled (spam filter)");
                self.metrics.event("throttled");
                return;
            }
            Action::Create { name, message } => {
                let ev = self.event(obj, &name, reason, kind, &message);
                api.create(&PostParams::default(), &ev)
                    .await
                    .map(|_| "sent")
            }
            Action::Patch {
                name,
                count,
                message,
            } => {
                let patch = serde_json::json!({
                    "count": count,
                    "message": message,
                    "lastTimestamp": Time(k8s_openapi::jiff::Timestamp::now()),
                });
                match api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => Ok("aggregated"),
                    Err(kube::Error::Api(s)) if s.code == 404 => {
                        // Expired or deleted on the server: start a new one.
                        self.correlator.forget(&name);
                        let ev = self.event(obj, &name, reason, kind, &message);
                        api.create(&PostParams::default(), &ev)
                            .await
                            .map(|_| "sent")
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match result {
            Ok(r) => self.metrics.event(r),
            Err(e) => {
                tracing::warn!(object = %obj.name, kind = obj.kind, reason, error = %e, "Event not recorded");
                self.metrics.event("failed");
            }
        }
    }

    fn event(
        &self,
        obj: &Involved,
        name: &str,
        reason: &str,
        kind: &'static str,
        message: &str,
    ) -> Event {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        Event {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(obj.event_namespace().to_owned()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some(obj.kind.into()),
                name: Some(obj.name.clone()),
                namespace: (!obj.namespace.is_empty()).then(|| obj.namespace.clone()),
                uid: Some(obj.uid.clone()),
                ..Default::default()
            },
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            type_: Some(kind.to_owned()),
            source: Some(EventSource {
                component: Some("moor".into()),
                host: Some(self.node.clone()),
            }),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            reporting_component: Some("moor".into()),
            reporting_instance: Some(self.node.clone()),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(n: &str) -> Involved {
        Involved {
            kind: "Pod",
            namespace: "team-a".into(),
            name: n.into(),
            uid: format!("uid-{n}"),
        }
    }

    #[test]
    fn the_same_event_is_patched_within_the_window_and_created_after_it() {
        let mut c = Correlator::new(Tuning::default());
        let t0 = Instant::now();
        let first = c.observe(&pod("a"), "ShareDead", "Warning", "dead", t0);
        let Action::Create { name, .. } = first else {
            panic!("{first:?}")
        };
        for i in 2..=20 {
            assert_eq!(
                c.observe(&pod("a"), "ShareDead", "Warning", "dead", t0),
                Action::Patch {
                    name: name.clone(),
                    count: i,
                    message: "dead".into()
                }
            );
        }
        // Another pod is another Event.
        assert!(matches!(
            c.observe(&pod("b"), "ShareDead", "Warning", "dead", t0),
            Action::Create { .. }
        ));
        // After the window: a new Event.
        let later = t0 + Duration::from_secs(601);
        assert!(matches!(
            c.observe(&pod("a"), "ShareDead", "Warning", "dead", later),
            Action::Create { .. }
        ));
    }

    #[test]
    fn more_than_ten_similar_messages_combine_into_one_event() {
        let mut c = Correlator::new(Tuning::default());
        let t0 = Instant::now();
        for i in 0..10 {
            let a = c.observe(&pod("a"), "FormatRefused", "Warning", &format!("m{i}"), t0);
            assert!(matches!(a, Action::Create { .. }), "{i}: {a:?}");
        }
        let Action::Create { name, message } =
            c.observe(&pod("a"), "FormatRefused", "Warning", "m10", t0)
        else {
            panic!("the 11th is one combined Event")
        };
        assert_eq!(message, format!("{COMBINED}m10"));
        assert_eq!(
            c.observe(&pod("a"), "FormatRefused", "Warning", "m11", t0),
            Action::Patch {
                name,
                count: 2,
                message: format!("{COMBINED}m11")
            }
        );
    }

    #[test]
    fn the_spam_filter_lets_a_burst_through_then_one_per_refill() {
        let mut c = Correlator::new(Tuning::default());
        let t0 = Instant::now();
        let sent = (0..40)
            .filter(|i| {
                c.observe(&pod("a"), "ShareDead", "Warning", &format!("{i}"), t0)
                    != Action::Throttled
            })
            .count();
        assert_eq!(sent, 25);
        // Another object has its own bucket.
        assert_ne!(
            c.observe(&pod("b"), "ShareDead", "Warning", "x", t0),
            Action::Throttled
        );
        assert_eq!(
            c.observe(
                &pod("a"),
                "ShareDead",
                "Warning",
                "x",
                t0 + Duration::from_secs(299)
            ),
            Action::Throttled
        );
        assert_ne!(
            c.observe(
                &pod("a"),
                "ShareDead",
                "Warning",
                "x",
                t0 + Duration::from_secs(301)
            ),
            Action::Throttled
        );
    }

    #[test]
    fn messages_are_cut_at_a_character_boundary() {
        let s = "é".repeat(600);
        let t = truncate(&s, MAX_MESSAGE);
        assert!(t.len() <= MAX_MESSAGE && t.len() >= MAX_MESSAGE - 1);
        assert!(s.starts_with(&t));
    }
}
