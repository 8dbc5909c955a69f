//! Prometheus metrics: one [`Metrics`] value (no globals), prefix `moor_`, base units,
//! labels `driver`/`op`/`reason` — never a volume id or path on operation metrics, so
//! cardinality stays bounded. Per-volume statistics follow kubelet's
//! `kubelet_volume_stats_*` shape (`namespace`, `persistentvolumeclaim`) under the `moor_`
//! prefix, one series per volume key, labelled only from sources a pod author cannot write.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Labels of an operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// Driver name.
    pub driver: String,
    /// Operation (`mount`, `unmount`, …).
    pub op: String,
}

/// Labels of a failed operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Driver name.
    pub driver: String,
    /// Operation.
    pub op: String,
    /// `Error::reason()`.
    pub reason: String,
}

/// Labels of per-volume statistics: one series per volume key. Every value comes from a
/// source a pod author cannot write (the kubelet's pod directory path, the pod's log
/// directory kubelet creates, the API server) — never from the volume's options, which
/// kubelet lets an inline volume's author set (`kubernetes.io/pod.namespace` included).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VolumeLabels {
    /// Namespace of the pods using it (of the claim, for a PV); empty when unknown or when
    /// pods of several namespaces share an inline volume.
    pub namespace: String,
    /// The claim bound to the PV, when moor could confirm it; else empty.
    pub persistentvolumeclaim: String,
    /// The PV, when moor could confirm the pod directory is a PV's; else empty.
    pub persistentvolume: String,
    /// kubelet's name of the pod volume directory: the PV name, or the inline volume name.
    pub volume: String,
    /// moor's volume key: what makes the series unique.
    pub volume_key: String,
    /// Driver name.
    pub driver: String,
}

/// A PV and its bound claim, as the API server (not the pod) says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoundClaim {
    /// PV name.
    pub persistent_volume: String,
    /// The claim's namespace.
    pub namespace: String,
    /// The claim's name.
    pub name: String,
}

/// One pod's use of a volume, from sources a pod author cannot write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeUse {
    /// The pod volume directory's name (kubelet's `pvOrVolumeName`).
    pub volume_name: String,
    /// The pod's namespace from a trusted source, if one answered.
    pub namespace: Option<String>,
    /// The PV behind the directory and its claim, if confirmed.
    pub claim: Option<BoundClaim>,
}

/// The labels of a volume's statistics from its uses (in a stable order). A confirmed PV
/// gives its claim's namespace and name. Otherwise the namespace is the one every user's
/// trusted source agrees on; users in several namespaces, or any user of unknown
/// namespace, leave it empty rather than credit one tenant with another's volume.
pub fn volume_labels(key: &str, driver: &str, uses: &[VolumeUse]) -> VolumeLabels {
    let mut l = VolumeLabels {
        namespace: String::new(),
        persistentvolumeclaim: String::new(),
        persistentvolume: String::new(),
        volume: uses
            .first()
            .map(|u| u.volume_name.clone())
            .unwrap_or_default(),
        volume_key: key.into(),
        driver: driver.into(),
    };
    if let Some(c) = uses.iter().find_map(|u| u.claim.as_ref()) {
        l.namespace = c.namespace.clone();
        l.persistentvolumeclaim = c.name.clone();
        l.persistentvolume = c.persistent_volume.clone();
        return l;
    }
    let mut namespaces = uses.iter().map(|u| u.namespace.as_deref());
    if let Some(Some(first)) = namespaces.next()
        && namespaces.all(|n| n == Some(first))
    {
        l.namespace = first.into();
    }
    l
}

/// Labels of volume counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriverLabels {
    /// Driver name.
    pub driver: String,
}

fn op_histogram() -> Histogram {
    // 0.25 ms … ~8 s: a bind publish is sub-millisecond, a format+mount takes seconds.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

type GaugeU = Gauge<u64, AtomicU64>;

/// (name, help, family, unit) of one per-volume statistic.
type StatSpec<'a> = (
    &'a str,
    &'a str,
    &'a Family<VolumeLabels, GaugeU>,
    Option<Unit>,
);

/// Every metric moor exports.
pub struct Metrics {
    registry: Registry,
    /// Operations handled.
    pub operations: Family<OpLabels, Counter>,
    /// Failed operations by reason.
    pub errors: Family<ErrorLabels, Counter>,
    /// Operation latency.
    pub duration: Family<OpLabels, Histogram, fn() -> Histogram>,
    /// Operations in progress.
    pub in_flight: Gauge,
    /// Staged volumes.
    pub staged_volumes: Gauge,
    /// Published pod volume directories.
    pub published_volumes: Gauge,
    /// Reconstruction outcomes at start-up.
    pub reconstruction: Family<ReconstructionLabels, Counter>,
    /// How long the last start-up reconstruction took (journal replay against the mount
    /// table, heals and roll-backs included).
    pub reconstruction_seconds: Gauge<f64, AtomicU64>,
    /// When it finished (Unix time): an alert on a slow one looks only at recent starts.
    pub reconstruction_finished: Gauge<f64, AtomicU64>,
    /// Reconciler passes.
    pub reconcile_runs: Counter,
    /// Pod binds found missing and restored by the reconciler.
    pub healed_publishes: Counter,
    /// Dead shares found by the stale-mount probe, by driver and what the probe saw.
    pub stale_detected: Family<ErrorLabels, Counter>,
    /// Heal attempts of dead shares, by driver and result (`healed`, `failed`, `busy`).
    pub heals: Family<HealLabels, Counter>,
    /// Volume capacity.
    pub capacity_bytes: Family<VolumeLabels, GaugeU>,
    /// Volume available bytes.
    pub available_bytes: Family<VolumeLabels, GaugeU>,
    /// Volume used bytes.
    pub used_bytes: Family<VolumeLabels, GaugeU>,
    /// Volume inodes.
    pub inodes: Family<VolumeLabels, GaugeU>,
    /// Volume free inodes.
    pub inodes_free: Family<VolumeLabels, GaugeU>,
    /// Volume used inodes.
    pub inodes_used: Family<VolumeLabels, GaugeU>,
    /// Journal entries found unusable at start-up and set aside as `*.corrupt` (still on
    /// disk, for an operator to inspect), by reason.
    pub records_set_aside: Family<SetAsideLabels, Gauge>,
    /// Where moor runs (`host`, `container`, `isolated`) and whether FUSE clients live in
    /// scopes of the host's systemd (`fuse_outlives_moor` = `true`/`false`): always 1.
    pub placement: Family<PlacementLabels, Gauge>,
    /// Notices, Events and API requests (`cluster`).
    pub cluster: ClusterMetrics,
    /// 1 per pod whose container still holds a healed share's dead mount.
    pub dead_mount_pods: Family<DeadPodLabels, Gauge>,
    /// Evictions of pods holding a dead mount, by driver and result.
    pub evictions: Family<EvictionLabels, Counter>,
    /// Orphaned pod volumes cleaned (a gone pod's publish unpublished, its empty
    /// directories removed), by driver.
    pub orphans_cleaned: Family<DriverLabels, Counter>,
}

/// What the daemon tells the API server and how often it asks it (cheap to clone: the
/// families share their series).
#[derive(Clone, Debug, Default)]
pub struct ClusterMetrics {
    /// `moor_notices_total{reason}`: every notice, with or without credentials.
    pub notices: Family<NoticeLabels, Counter>,
    /// `moor_events_total{result}`: sent, aggregated, throttled, dropped, failed.
    pub events: Family<EventLabels, Counter>,
    /// `moor_api_requests_total{verb,resource}`: every request to the API server.
    pub api_requests: Family<ApiRequestLabels, Counter>,
}

impl ClusterMetrics {
    /// Every `moor_notices_total{reason}` series present from the start, at 0: a series
    /// born at 1 would hide its first notice from `increase()` (the alerts on notices).
    pub fn with_every_notice_reason() -> Self {
        let m = ClusterMetrics::default();
        for r in crate::api::notice::NoticeReason::ALL {
            drop(m.notices.get_or_create(&NoticeLabels {
                reason: r.label().into(),
            }));
        }
        m
    }
}

/// Labels of `moor_notices_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NoticeLabels {
    /// `NoticeReason::label()`.
    pub reason: String,
}

/// Labels of `moor_events_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// `sent`, `aggregated`, `throttled`, `dropped`, `failed`.
    pub result: String,
}

/// Labels of `moor_api_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiRequestLabels {
    /// `get`, `list`, `watch`, `create`, `patch`, `update`, `delete`.
    pub verb: String,
    /// `pods`, `persistentvolumes`, `events`, `pods/eviction`, …
    pub resource: String,
}

impl ClusterMetrics {
    /// Counts one Event outcome.
    pub fn event(&self, result: &str) {
        self.events
            .get_or_create(&EventLabels {
                result: result.into(),
            })
            .inc();
    }

    /// The number of notices with reason label `reason` so far.
    pub fn notices_with(&self, reason: &str) -> u64 {
        self.notices
            .get_or_create(&NoticeLabels {
                reason: reason.into(),
            })
            .get()
    }

    /// The number of requests `verb resource` so far.
    pub fn requests_with(&self, verb: &str, resource: &str) -> u64 {
        self.api_requests
            .get_or_create(&ApiRequestLabels {
                verb: verb.into(),
                resource: resource.into(),
            })
            .get()
    }

    /// The number of Events with `result` so far.
    pub fn events_with(&self, result: &str) -> u64 {
        self.events
            .get_or_create(&EventLabels {
                result: result.into(),
            })
            .get()
    }
}

/// Labels of `moor_dead_mount_pods`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeadPodLabels {
    /// Driver.
    pub driver: String,
    /// The pod's namespace; empty when the API server did not say.
    pub namespace: String,
    /// The pod's name, or its UID when the name is not known.
    pub pod: String,
}

/// Labels of `moor_evictions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EvictionLabels {
    /// Driver.
    pub driver: String,
    /// `evicted`, `blocked` (a PodDisruptionBudget), `failed`, `skipped` (a bare pod, or a
    /// pod the API server does not know).
    pub result: String,
}

/// Labels of `moor_placement_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlacementLabels {
    /// `host`, `container` or `isolated` (see `host::onhost`).
    pub placement: String,
    /// `true` when a restart of moor cannot kill a FUSE client.
    pub fuse_outlives_moor: String,
}

/// Labels of set-aside journal entries.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SetAsideLabels {
    /// `invalid_json`, `not_regular`, `set_aside_earlier`, … (see `host::records`).
    pub reason: String,
}

/// Labels of heal attempts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HealLabels {
    /// Driver.
    pub driver: String,
    /// `healed`, `failed` or `busy`.
    pub result: String,
}

/// Labels of reconstruction outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconstructionLabels {
    /// `kept`, `rolled_back`, `finished`, `healed`, `adopted`, `idled`, `problem`.
    pub outcome: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under `moor_`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("moor");
        let m = Metrics {
            operations: Family::default(),
            errors: Family::default(),
            duration: Family::new_with_constructor(op_histogram as fn() -> Histogram),
            in_flight: Gauge::default(),
            staged_volumes: Gauge::default(),
            published_volumes: Gauge::default(),
            reconstruction: Family::default(),
            reconstruction_seconds: Gauge::default(),
            reconstruction_finished: Gauge::default(),
            reconcile_runs: Counter::default(),
            healed_publishes: Counter::default(),
            stale_detected: Family::default(),
            heals: Family::default(),
            capacity_bytes: Family::default(),
            available_bytes: Family::default(),
            used_bytes: Family::default(),
            inodes: Family::default(),
            inodes_free: Family::default(),
            inodes_used: Family::default(),
            records_set_aside: Family::default(),
            placement: Family::default(),
            cluster: ClusterMetrics::with_every_notice_reason(),
            dead_mount_pods: Family::default(),
            evictions: Family::default(),
            orphans_cleaned: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "operations",
            "Volume operations handled, by driver and operation",
            m.operations.clone(),
        );
        registry.register(
            "operation_errors",
            "Failed volume operations, by reason",
            m.errors.clone(),
        );
        registry.register_with_unit(
            "operation_duration",
            "Volume operation latency, by driver and operation",
            Unit::Seconds,
            m.duration.clone(),
        );
        registry.register(
            "operations_in_flight",
            "Volume operations in progress",
            m.in_flight.clone(),
        );
        registry.register(
            "staged_volumes",
            "Volumes staged on this node",
            m.staged_volumes.clone(),
        );
        registry.register(
            "published_volumes",
            "Pod volume directories published",
            m.published_volumes.clone(),
        );
        registry.register(
            "reconstruction",
            "Start-up reconstruction outcomes",
            m.reconstruction.clone(),
        );
        registry.register_with_unit(
            "reconstruction_duration",
            "How long the last start-up reconstruction took",
            Unit::Seconds,
            m.reconstruction_seconds.clone(),
        );
        registry.register_with_unit(
            "reconstruction_finished_time",
            "When the last start-up reconstruction finished, Unix time",
            Unit::Seconds,
            m.reconstruction_finished.clone(),
        );
        registry.register(
            "reconcile_runs",
            "Reconciler passes",
            m.reconcile_runs.clone(),
        );
        registry.register(
            "healed_publishes",
            "Pod binds found missing and restored",
            m.healed_publishes.clone(),
        );
        registry.register(
            "stale_mounts_detected",
            "Dead network/FUSE mounts found by the probe (op=probe), by driver and errno or hung",
            m.stale_detected.clone(),
        );
        registry.register(
            "heals",
            "Heals of dead network/FUSE mounts, by driver and result",
            m.heals.clone(),
        );
        let stats: [StatSpec<'_>; 6] = [
            (
                "volume_stats_capacity",
                "Volume capacity",
                &m.capacity_bytes,
                Some(Unit::Bytes),
            ),
            (
                "volume_stats_available",
                "Volume bytes available to the pod",
                &m.available_bytes,
                Some(Unit::Bytes),
            ),
            (
                "volume_stats_used",
                "Volume bytes used",
                &m.used_bytes,
                Some(Unit::Bytes),
            ),
            ("volume_stats_inodes", "Volume inodes", &m.inodes, None),
            (
                "volume_stats_inodes_free",
                "Volume free inodes",
                &m.inodes_free,
                None,
            ),
            (
                "volume_stats_inodes_used",
                "Volume used inodes",
                &m.inodes_used,
                None,
            ),
        ];
        for (name, help, fam, unit) in stats {
            match unit {
                Some(u) => registry.register_with_unit(name, help, u, fam.clone()),
                None => registry.register(name, help, fam.clone()),
            }
        }
        registry.register(
            "journal_records_set_aside",
            "Journal entries set aside as *.corrupt at start-up, by reason",
            m.records_set_aside.clone(),
        );
        registry.register(
            "placement_info",
            "Where moor runs and whether its FUSE clients outlive it (a pod restart, an upgrade)",
            m.placement.clone(),
        );
        registry.register(
            "notices",
            "Notices (what an operator must know), by reason",
            m.cluster.notices.clone(),
        );
        registry.register(
            "events",
            "Kubernetes Events, by result (sent, aggregated, throttled, dropped, failed)",
            m.cluster.events.clone(),
        );
        registry.register(
            "api_requests",
            "Requests to the Kubernetes API server, by verb and resource",
            m.cluster.api_requests.clone(),
        );
        registry.register(
            "dead_mount_pods",
            "Pods whose containers still hold a healed share's dead mount (1 each)",
            m.dead_mount_pods.clone(),
        );
        registry.register(
            "evictions",
            "Evictions of pods holding a dead mount, by driver and result",
            m.evictions.clone(),
        );
        registry.register(
            "orphans_cleaned",
            "Volumes of gone pods unpublished and their empty directories removed, by driver",
            m.orphans_cleaned.clone(),
        );
        let info = Family::<BuildLabels, Gauge>::default();
        info.get_or_create(&BuildLabels {
            version: env!("CARGO_PKG_VERSION").into(),
        })
        .set(1);
        registry.register("build_info", "moor version", info);
        Metrics { registry, ..m }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        if encode(&mut s, &self.registry).is_err() {
            s.clear();
        }
        s
    }

    /// Sets the staged and published volume gauges from the lifecycle's `(stages,
    /// publishes)`.
    pub fn set_volume_counts(&self, (stages, publishes): (usize, usize)) {
        self.staged_volumes
            .set(i64::try_from(stages).unwrap_or(i64::MAX));
        self.published_volumes
            .set(i64::try_from(publishes).unwrap_or(i64::MAX));
    }

    /// Records one finished operation.
    pub fn observe(&self, driver: &str, op: &str, seconds: f64, reason: Option<&str>) {
        let l = OpLabels {
            driver: driver.into(),
            op: op.into(),
        };
        self.operations.get_or_create(&l).inc();
        self.duration.get_or_create(&l).observe(seconds);
        if let Some(r) = reason {
            self.errors
                .get_or_create(&ErrorLabels {
                    driver: driver.into(),
                    op: op.into(),
                    reason: r.into(),
                })
                .inc();
        }
    }
}

/// Labels of `moor_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_documented_names() {
        let m = Metrics::new();
        m.observe("local", "mount", 0.002, None);
        m.observe("local", "mount", 0.5, Some("signature_present"));
        m.capacity_bytes
            .get_or_create(&volume_labels(
                "local-dev-wwn-1",
                "local",
                &[VolumeUse {
                    volume_name: "pv1".into(),
                    namespace: Some("ns".into()),
                    claim: None,
                }],
            ))
            .set(1 << 30);
        m.orphans_cleaned
            .get_or_create(&DriverLabels {
                driver: "local".into(),
            })
            .inc();
        let text = m.encode();
        for want in [
            r#"moor_operations_total{driver="local",op="mount"} 2"#,
            r#"moor_operation_errors_total{driver="local",op="mount",reason="signature_present"} 1"#,
            "# TYPE moor_operation_duration_seconds histogram",
            r#"moor_volume_stats_capacity_bytes{namespace="ns",persistentvolumeclaim="",persistentvolume="",volume="pv1",volume_key="local-dev-wwn-1",driver="local"} 1073741824"#,
            "moor_build_info",
            r#"moor_orphans_cleaned_total{driver="local"} 1"#,
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
    }

    fn inline(name: &str, ns: Option<&str>) -> VolumeUse {
        VolumeUse {
            volume_name: name.into(),
            namespace: ns.map(Into::into),
            claim: None,
        }
    }

    #[test]
    fn two_volumes_named_alike_in_two_namespaces_are_two_series() {
        let m = Metrics::new();
        let a = volume_labels("local-dev-a", "local", &[inline("vol", Some("team-a"))]);
        let b = volume_labels("local-dev-b", "local", &[inline("vol", Some("team-b"))]);
        assert_ne!(a, b);
        m.capacity_bytes.get_or_create(&a).set(64 << 20);
        m.capacity_bytes.get_or_create(&b).set(128 << 20);
        let text = m.encode();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("moor_volume_stats_capacity_bytes{"))
            .collect();
        assert_eq!(series.len(), 2, "{text}");
        assert!(text.contains(r#"namespace="team-a",persistentvolumeclaim="",persistentvolume="",volume="vol",volume_key="local-dev-a",driver="local"} 67108864"#), "{text}");
        assert!(text.contains(r#"namespace="team-b",persistentvolumeclaim="",persistentvolume="",volume="vol",volume_key="local-dev-b",driver="local"} 134217728"#), "{text}");
        // Even with no namespace known at all, the key keeps them apart.
        assert_ne!(
            volume_labels("k1", "local", &[inline("vol", None)]),
            volume_labels("k2", "local", &[inline("vol", None)])
        );
    }

    #[test]
    fn a_shared_volume_is_one_series_named_only_when_its_users_agree() {
        let same = volume_labels(
            "nfs-x",
            "nfs",
            &[
                inline("data", Some("team-a")),
                inline("cache", Some("team-a")),
            ],
        );
        assert_eq!(
            (same.namespace.as_str(), same.volume.as_str()),
            ("team-a", "data")
        );
        for uses in [
            vec![
                inline("data", Some("team-a")),
                inline("data", Some("team-b")),
            ],
            vec![inline("data", Some("team-a")), inline("data", None)],
            vec![inline("data", None), inline("data", Some("team-a"))],
        ] {
            assert_eq!(
                volume_labels("nfs-x", "nfs", &uses).namespace,
                "",
                "{uses:?}"
            );
        }
    }

    #[test]
    fn a_confirmed_pv_is_labelled_by_its_claim() {
        let claim = BoundClaim {
            persistent_volume: "pv-7".into(),
            namespace: "team-a".into(),
            name: "data-web-0".into(),
        };
        let l = volume_labels(
            "local-dev-7",
            "local",
            &[VolumeUse {
                volume_name: "pv-7".into(),
                namespace: Some("team-a".into()),
                claim: Some(claim),
            }],
        );
        assert_eq!(l.namespace, "team-a");
        assert_eq!(l.persistentvolumeclaim, "data-web-0");
        assert_eq!(l.persistentvolume, "pv-7");
        assert_eq!(l.volume, "pv-7");
    }
}
