//! Lifecycle over the fake host: the state machine, rollback and reconstruction without
//! root. Real mounts are exercised by the host tests in `tests/`.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use nix::errno::Errno;

use super::publish::apply_fs_group;
use super::*;
use crate::host::Mounter;
use crate::host::fake::{FakeMounts, ScriptRunner};
use crate::host::{BlockDevices, HostPaths};
use crate::journal::{StagePhase, StageRecord};

struct Rig {
    _tmp: tempfile::TempDir,
    paths: HostPaths,
    mounts: Arc<FakeMounts>,
    source: PathBuf,
}

impl Rig {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let paths = HostPaths {
            kubelet_dir: root.join("kubelet"),
            kubelet_alias: None,
            state_dir: root.join("state"),
            run_dir: root.join("run"),
            sys: "/sys".into(),
            dev: "/dev".into(),
            proc: "/proc".into(),
        };
        let source = root.join("data");
        std::fs::create_dir_all(&source).unwrap();
        Rig {
            _tmp: tmp,
            paths,
            mounts: Arc::new(FakeMounts::default()),
            source,
        }
    }

    fn lifecycle(&self) -> Lifecycle {
        let host = Host {
            paths: self.paths.clone(),
            runner: Arc::new(ScriptRunner::default()),
            mounter: self.mounts.clone(),
            mounts: self.mounts.clone(),
            blockdev: BlockDevices { sys: "/sys".into() },
        };
        let journal = Journal::open(&self.paths.state_dir, &self.paths.run_dir).unwrap();
        Lifecycle::new(
            host,
            journal,
            Drivers::builtin(),
            "node-a".into(),
            Timeouts::default(),
        )
        .with_local_sources(
            crate::host::allow::AllowList {
                directories: vec![self.source.clone(), self._tmp.path().join("other")],
                ..Default::default()
            },
            crate::local::discover::IdSources {
                dev_dir: "/dev".into(),
                udev_dir: "/run/udev/data".into(),
                sys: "/sys".into(),
            },
        )
    }

    fn target(&self, pod: &str) -> String {
        self.paths
            .kubelet_dir
            .join(format!("pods/{pod}/volumes/moor~local/vol"))
            .display()
            .to_string()
    }

    fn opts(&self, ro: bool) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("path".into(), self.source.display().to_string());
        m.insert(
            "kubernetes.io/readwrite".into(),
            if ro { "ro" } else { "rw" }.into(),
        );
        m
    }

    fn stage_path(&self, lc: &Lifecycle) -> PathBuf {
        let plan = lc
            .plan_mount("local", &self.target("p"), &self.opts(false))
            .unwrap();
        self.paths.stage_dir("local", plan.key())
    }

    fn mount(&self, lc: &Lifecycle, pod: &str, ro: bool) -> Result<MountOutcome, Error> {
        let plan = lc.plan_mount("local", &self.target(pod), &self.opts(ro))?;
        lc.mount(&plan)
    }

    fn journal_files(&self) -> usize {
        let count = |d: PathBuf| std::fs::read_dir(d).map(|r| r.count()).unwrap_or(0);
        count(self.paths.state_dir.join("stage")) + count(self.paths.run_dir.join("publish"))
    }
}

#[test]
fn mount_stages_once_and_publishes_each_pod() {
    let rig = Rig::new();
    let lc = rig.lifecycle();
    assert_eq!(
        rig.mount(&lc, "p1", false).unwrap(),
        MountOutcome::Published
    );
    assert_eq!(rig.mount(&lc, "p2", true).unwrap(), MountOutcome::Published);
    let stage = rig.stage_path(&lc);
    assert_eq!(rig.mounts.mount_points().len(), 3, "one stage + two binds");
    assert!(rig.mounts.get(&stage).is_some());
    assert!(
        rig.mounts
            .get(Path::new(&rig.target("p2")))
            .unwrap()
            .is_read_only()
    );
    assert_eq!(
        rig.mount(&lc, "p1", false).unwrap(),
        MountOutcome::AlreadyPublished
    );
    assert_eq!(rig.mounts.mount_points().len(), 3);

    assert_eq!(
        lc.unmount(Some("local"), &rig.target("p1")).unwrap(),
        UnmountOutcome::Unpublished
    );
    assert!(
        rig.mounts.get(&stage).is_some(),
        "stage stays while p2 uses it"
    );
    assert_eq!(
        lc.unmount(Some("local"), &rig.target("p2")).unwrap(),
        UnmountOutcome::Unstaged
    );
    assert!(rig.mounts.mount_points().is_empty());
    assert!(!stage.exists(), "stage dir removed with rmdir");
    assert_eq!(rig.journal_files(), 0);
    assert_eq!(
        lc.unmount(Some("local"), &rig.target("p2")).unwrap(),
        UnmountOutcome::NotMounted
    );
}

#[test]
fn a_failed_publish_undoes_the_stage_it_made() {
    let rig = Rig::new();
    let lc = rig.lifecycle();
    // The first bind is the stage, the second the pod's: fail the pod's.
    rig.mounts.fail_next("bind", Errno::EPERM);
    let e = rig.mount(&lc, "p1", false).unwrap_err();
    assert_eq!(e.reason(), "mount_failed");
    assert!(rig.mounts.mount_points().is_empty());
    assert_eq!(rig.journal_files(), 0);
    assert!(lc.status().is_empty());
    // kubelet retries; now it works.
    rig.mount(&lc, "p1", false).unwrap();
    assert_eq!(rig.mounts.mount_points().len(), 2);
}

#[test]
fn a_busy_unmount_keeps_the_record_for_the_retry() {
    let rig = Rig::new();
    let lc = rig.lifecycle();
    rig.mount(&lc, "p1", false).unwrap();
    rig.mounts.fail_next("unmount", Errno::EBUSY);
    let e = lc.unmount(Some("local"), &rig.target("p1")).unwrap_err();
    assert_eq!(e.reason(), "mount_busy");
    assert_eq!(rig.mounts.mount_points().len(), 2);
    assert_eq!(
        lc.unmount(Some("local"), &rig.target("p1")).unwrap(),
        UnmountOutcome::Unstaged
    );
    assert!(rig.mounts.mount_points().is_empty());
}

#[test]
fn foreign_mounts_are_never_touched() {
    let rig = Rig::new();
    let lc = rig.lifecycle();
    let t = PathBuf::from(rig.target("p9"));
    std::fs::create_dir_all(&t).unwrap();
    rig.mounts.bind(Path::new("/elsewhere"), &t, false).unwrap();
    assert_eq!(
        lc.unmount(Some("local"), &rig.target("p9"))
            .unwrap_err()
            .reason(),
        "not_owned"
    );
    assert_eq!(
        rig.mount(&lc, "p9", false).unwrap_err().reason(),
        "target_busy"
    );
    assert!(
        rig.mounts.get(&t).is_some(),
        "the foreign mount is still there"
    );
}

#[test]
fn reconstruction_keeps_live_volumes_and_undoes_half_done_ones() {
    let rig = Rig::new();
    {
        let lc = rig.lifecycle();
        rig.mount(&lc, "live", false).unwrap();
        rig.mount(&lc, "half", false).unwrap();
    }
    // Make "half" look like a crash after the bind, before the Published record.
    let journal = Journal::open(&rig.paths.state_dir, &rig.paths.run_dir).unwrap();
    let mut half = journal
        .load()
        .unwrap()
        .publishes
        .into_iter()
        .find(|p| p.pod_uid == "half")
        .unwrap();
    half.phase = PublishPhase::Publishing;
    journal.put_publish(&half).unwrap();

    let lc = rig.lifecycle();
    let r = lc.reconstruct().unwrap();
    assert_eq!(r.kept_publishes, 1);
    assert_eq!(r.rolled_back_publishes, 1);
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert!(rig.mounts.get(Path::new(&rig.target("half"))).is_none());
    assert!(rig.mounts.get(Path::new(&rig.target("live"))).is_some());
    // kubelet after its own restart only calls init; the state must carry the volume.
    let st = lc.status();
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].pods.len(), 1);
    assert_eq!(
        lc.unmount(Some("local"), &rig.target("live")).unwrap(),
        UnmountOutcome::Unstaged
    );
    assert!(rig.mounts.mount_points().is_empty());
}

#[test]
fn after_a_reboot_records_turn_idle_and_remember_the_volume() {
    let rig = Rig::new();
    {
        let lc = rig.lifecycle();
        rig.mount(&lc, "p1", false).unwrap();
    }
    // A reboot: every mount and the tmpfs run dir are gone; the durable stage record stays.
    for m in rig.mounts.mount_points() {
        rig.mounts
            .unmount(&m, true, Duration::from_secs(1))
            .unwrap();
    }
    std::fs::remove_dir_all(&rig.paths.run_dir).unwrap();
    let lc = rig.lifecycle();
    let r = lc.reconstruct().unwrap();
    assert_eq!(r.idled, 1);
    assert_eq!(lc.status()[0].state, "idle");
    rig.mount(&lc, "p1", false).unwrap();
    assert_eq!(lc.status()[0].state, "staged");
}

#[test]
fn journal_loss_is_survived_by_adopting_moors_own_mounts() {
    let rig = Rig::new();
    {
        let lc = rig.lifecycle();
        rig.mount(&lc, "p1", false).unwrap();
    }
    std::fs::remove_dir_all(&rig.paths.state_dir).unwrap();
    std::fs::remove_dir_all(&rig.paths.run_dir).unwrap();
    let lc = rig.lifecycle();
    let r = lc.reconstruct().unwrap();
    assert_eq!(r.adopted, 2, "the stage and the pod bind");
    assert_eq!(
        lc.unmount(Some("local"), &rig.target("p1")).unwrap(),
        UnmountOutcome::Unstaged
    );
    assert!(rig.mounts.mount_points().is_empty());
}

#[test]
fn a_vanished_bind_is_restored_by_the_reconciler() {
    let rig = Rig::new();
    let lc = rig.lifecycle();
    rig.mount(&lc, "p1", true).unwrap();
    let t = PathBuf::from(rig.target("p1"));
    rig.mounts
        .unmount(&t, false, Duration::from_secs(1))
        .unwrap();
    assert_eq!(lc.heal_publishes(), 1);
    assert!(
        rig.mounts.get(&t).unwrap().is_read_only(),
        "restored with its ro flag"
    );
    assert_eq!(lc.heal_publishes(), 0);
}

#[test]
fn one_pod_dir_cannot_serve_two_volumes() {
    let rig = Rig::new();
    let lc = rig.lifecycle();
    rig.mount(&lc, "p1", false).unwrap();
    let other = rig._tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let mut o = rig.opts(false);
    o.insert("path".into(), other.display().to_string());
    let plan = lc.plan_mount("local", &rig.target("p1"), &o).unwrap();
    assert_eq!(lc.mount(&plan).unwrap_err().reason(), "target_busy");
}

#[test]
#[ignore = "needs root: it gives a directory a group the test user is not in (run-tests)"]
fn fs_group_changes_only_the_root_and_only_once() {
    let t = tempfile::tempdir().unwrap();
    let sub = t.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let before = std::fs::metadata(&sub).unwrap().gid();
    assert!(apply_fs_group(t.path(), 4321).unwrap());
    let md = std::fs::metadata(t.path()).unwrap();
    assert_eq!(md.gid(), 4321);
    assert_eq!(md.mode() & 0o2070, 0o2070);
    assert_eq!(
        std::fs::metadata(&sub).unwrap().gid(),
        before,
        "no recursive walk"
    );
    assert!(
        !apply_fs_group(t.path(), 4321).unwrap(),
        "second time: nothing to do"
    );
}

#[test]
fn a_device_is_held_by_one_volume_key_whatever_its_names() {
    use crate::host::DevNum;
    let dev = DevNum {
        major: 8,
        minor: 16,
    };
    let rec = |key: &str, phase: StagePhase, device: &str, num: Option<&str>, id: Option<&str>| {
        let mut options = BTreeMap::new();
        if let Some(n) = num {
            options.insert("device-number".to_owned(), n.to_owned());
        }
        if let Some(i) = id {
            options.insert("device-stable-id".to_owned(), i.to_owned());
        }
        StageRecord {
            key: key.into(),
            driver: "iscsi".into(),
            source: StageSource::Attached {
                device: Some(device.into()),
            },
            options,
            fs_type: None,
            fs_uuid: None,
            read_only: false,
            phase,
            formatted_by_moor: false,
            mount_id: None,
            adopted: false,
        }
    };
    let legacy_dev = |p: &Path| (p == Path::new("/dev/sdb")).then_some(dev);
    let holder = |recs: &[StageRecord]| {
        super::devices::device_holder(recs, "mine", dev, "wwn-0x5000", legacy_dev)
    };
    // Another key staged the same device under another name (a second portal of one LUN).
    let portal_b = rec(
        "portal-b",
        StagePhase::Staged,
        "/dev/sdc",
        Some("8:16"),
        Some("wwn-0x5000"),
    );
    assert_eq!(
        holder(std::slice::from_ref(&portal_b)).as_deref(),
        Some("portal-b")
    );
    // The same disk under another number now (a re-scan), known by its stable id.
    let renumbered = rec(
        "other",
        StagePhase::Staging,
        "/dev/sdd",
        Some("8:48"),
        Some("wwn-0x5000"),
    );
    assert_eq!(
        holder(std::slice::from_ref(&renumbered)).as_deref(),
        Some("other")
    );
    // A record of the previous version: only its device path, which names the device now.
    let legacy = rec("legacy", StagePhase::Staged, "/dev/sdb", None, None);
    assert_eq!(
        holder(std::slice::from_ref(&legacy)).as_deref(),
        Some("legacy")
    );
    // Not holders: our own key, idle or unstaging records, other devices.
    for r in [
        rec(
            "mine",
            StagePhase::Staged,
            "/dev/sdb",
            Some("8:16"),
            Some("wwn-0x5000"),
        ),
        rec(
            "idle",
            StagePhase::Idle,
            "/dev/sdb",
            Some("8:16"),
            Some("wwn-0x5000"),
        ),
        rec(
            "going",
            StagePhase::Unstaging,
            "/dev/sdb",
            Some("8:16"),
            Some("wwn-0x5000"),
        ),
        rec(
            "else",
            StagePhase::Staged,
            "/dev/sde",
            Some("8:64"),
            Some("wwn-0x6000"),
        ),
        rec("legacy-else", StagePhase::Staged, "/dev/sde", None, None),
    ] {
        assert_eq!(holder(std::slice::from_ref(&r)), None, "{}", r.key);
    }
}

/// The reconciler's sweep: nothing to finish while volumes are simply published; an unmount
/// that failed half-way (the bind was busy) leaves a transitional record, and finishing it
/// (what the reconciler does under the lock) removes the bind and the stage it was the last
/// user of, as kubelet's retry would.
#[test]
fn only_interrupted_transitions_are_finished_by_the_sweep() {
    let rig = Rig::new();
    let lc = rig.lifecycle();
    rig.mount(&lc, "p1", false).unwrap();
    rig.mount(&lc, "p2", false).unwrap();
    assert!(
        lc.pending_transitions().is_empty(),
        "published volumes are left alone"
    );
    lc.unmount(Some("local"), &rig.target("p1")).unwrap();
    assert!(
        lc.pending_transitions().is_empty(),
        "a stage in use is left alone"
    );

    rig.mounts.fail_next("unmount", Errno::EBUSY);
    lc.unmount(Some("local"), &rig.target("p2")).unwrap_err();
    let key = lc.key_of(Path::new(&rig.target("p2"))).unwrap();
    assert_eq!(lc.pending_transitions(), vec![key.clone()]);
    let report = lc.finish_pending(&key);
    assert!(report.problems.is_empty(), "{report:?}");
    assert!(
        rig.mounts.mount_points().is_empty(),
        "bind and stage are gone"
    );
    assert_eq!(rig.journal_files(), 0);
    assert!(lc.pending_transitions().is_empty());
    assert_eq!(
        lc.unmount(Some("local"), &rig.target("p2")).unwrap(),
        UnmountOutcome::NotMounted
    );
}
