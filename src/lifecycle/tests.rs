//! Lifecycle over the fake host: the state machine, rollback and reconstruction without
//! root. Real mounts are exercised by the host tests in `tests/`.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::host::Errno;

use super::*;
use crate::host::Mounter;
use crate::host::fake::{FakeHost, FakeMounts};
use crate::host::{FsMount, HostPaths, MsFlags};
use crate::journal::{StagePhase, StageRecord};

struct Rig {
    _tmp: tempfile::TempDir,
    fake: FakeHost,
    paths: HostPaths,
    mounts: Arc<FakeMounts>,
    source: PathBuf,
}

impl Rig {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let fake = FakeHost::new(tmp.path());
        let source = tmp.path().join("data");
        std::fs::create_dir_all(&source).unwrap();
        Rig {
            paths: fake.host.paths.clone(),
            mounts: fake.mounts.clone(),
            fake,
            _tmp: tmp,
            source,
        }
    }

    /// A lifecycle as a daemon (re)started on this host builds it: the journal read again.
    fn lifecycle(&self) -> Lifecycle {
        self.lifecycle_with(None)
    }

    /// The lifecycle over the builtin drivers and the fake block driver, or over `drivers`
    /// alone.
    fn lifecycle_with(&self, drivers: Option<Drivers>) -> Lifecycle {
        let host = self.fake.host.clone();
        let journal = Journal::open(&self.paths.state_dir, &self.paths.run_dir).unwrap();
        // Device identities from the fake tree, never the machine's udev database.
        let ids = crate::host::devid::IdSources {
            dev_dir: self.paths.dev.clone(),
            udev_dir: self._tmp.path().join("udev"),
            sys: self.paths.sys.clone(),
        };
        let drivers = drivers.unwrap_or_else(|| {
            let mut builtin = crate::daemon::drivers::builtin();
            builtin.add(Arc::new(FakeBlockDriver));
            crate::daemon::drivers::with_local_sources(
                builtin,
                &host.paths,
                crate::host::allow::AllowList {
                    directories: vec![self.source.clone(), self._tmp.path().join("other")],
                    ..Default::default()
                },
                ids.clone(),
            )
        });
        Lifecycle::new(host, journal, drivers, "node-a".into(), Timeouts::default())
            .with_id_sources(ids)
    }

    fn target(&self, pod: &str) -> String {
        self.paths
            .kubelet_dir
            .join(format!("pods/{pod}/volumes/moor~local/vol"))
            .display()
            .to_string()
    }

    fn opts(&self, ro: bool) -> VolumeOptions {
        let mut m = BTreeMap::new();
        m.insert("path".into(), self.source.display().to_string());
        m.insert(
            "kubernetes.io/readwrite".into(),
            if ro { "ro" } else { "rw" }.into(),
        );
        crate::volume::options::parse(&m).unwrap()
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
    assert_eq!(st[0].publishes.len(), 1);
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
    assert_eq!(lc.status()[0].stage.phase, StagePhase::Idle);
    rig.mount(&lc, "p1", false).unwrap();
    assert_eq!(lc.status()[0].stage.phase, StagePhase::Staged);
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
    o.user.insert("path".into(), other.display().to_string());
    let plan = lc.plan_mount("local", &rig.target("p1"), &o).unwrap();
    assert_eq!(lc.mount(&plan).unwrap_err().reason(), "target_busy");
}

#[test]
fn a_device_is_held_by_one_volume_key_whatever_its_names() {
    use crate::host::DevNum;
    let dev = DevNum {
        major: 8,
        minor: 16,
    };
    let rec = |key: &str, phase: StagePhase, device: &str, num: Option<&str>, id: Option<&str>| {
        let mut r = StageRecord::new(
            key,
            "iscsi",
            StageSource::Attached {
                device: Some(device.into()),
            },
            None,
            phase,
        );
        r.device = num.map(|n| crate::journal::DeviceClaim {
            number: n.into(),
            stable_id: id.unwrap_or_default().into(),
        });
        r
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

/// What attach learns reaches the stage record typed before anything else can fail, so the
/// detach that undoes the attach (here the rollback of a stage whose device never came)
/// gets it, as detach after a restart would from the journal.
#[test]
fn what_attach_learnt_is_recorded_typed_and_reaches_detach() {
    use crate::volume::state::{FcLun, FcName};
    use crate::volume::{Attached, DriverError, Recorded, VolumeState};

    fn lun(wwid: Option<&str>) -> VolumeState {
        VolumeState::Fc(FcLun {
            name: FcName::Wwids(vec!["3600a".into()]),
            mount_options: vec![],
            wwid: wwid.map(str::to_owned),
        })
    }

    #[derive(Default)]
    struct Learner {
        detached: Mutex<Vec<Option<VolumeState>>>,
    }

    impl Driver for Learner {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn volume(&self, _: &NodeContext, _: &VolumeOptions) -> Result<VolumeSpec, DriverError> {
            Ok(VolumeSpec {
                key: "fake-1".into(),
                source: StageSource::Attached { device: None },
                state: Some(lun(None)),
                mount_options: Default::default(),
            })
        }
        fn attach(
            &self,
            _: &Host,
            spec: &VolumeSpec,
            _: &VolumeOptions,
        ) -> Result<Attached, DriverError> {
            assert_eq!(
                spec.state,
                Some(lun(None)),
                "attach gets the planned volume"
            );
            Ok(Attached {
                device: None,
                state: Some(lun(Some("naa.3600a"))),
            })
        }
        fn detach(&self, _: &Host, rec: &Recorded<'_>) -> Result<(), DriverError> {
            self.detached.lock().unwrap().push(rec.state.cloned());
            Ok(())
        }
    }

    let rig = Rig::new();
    let learner = Arc::new(Learner::default());
    let mut drivers = Drivers::default();
    drivers.add(learner.clone());
    let lc = rig.lifecycle_with(Some(drivers));
    let target = rig
        .paths
        .kubelet_dir
        .join("pods/p/volumes/moor~fake/vol")
        .display()
        .to_string();
    let plan = lc
        .plan_mount("fake", &target, &VolumeOptions::default())
        .unwrap();
    let e = lc.mount(&plan).unwrap_err();
    assert_eq!(e.reason(), "no_device", "{e}");
    assert_eq!(
        *learner.detached.lock().unwrap(),
        [Some(lun(Some("naa.3600a")))]
    );
}

/// A block driver whose attach hands back the device its `device` option names: the
/// lifecycle's block path (claim, never-format rule, mount, ownership) over the fake
/// host's disks, without any one protocol's attach.
struct FakeBlockDriver;

impl Driver for FakeBlockDriver {
    fn name(&self) -> &'static str {
        "fakeblk"
    }

    fn volume(
        &self,
        _node: &NodeContext,
        opts: &VolumeOptions,
    ) -> Result<VolumeSpec, crate::volume::DriverError> {
        let device = opts.user.get("device").cloned().unwrap_or_default();
        Ok(VolumeSpec {
            key: crate::volume::volume_key("fakeblk", &device),
            source: StageSource::Attached { device: None },
            state: None,
            mount_options: Default::default(),
        })
    }

    fn attach(
        &self,
        _host: &Host,
        _spec: &VolumeSpec,
        opts: &VolumeOptions,
    ) -> Result<crate::volume::Attached, crate::volume::DriverError> {
        Ok(crate::volume::Attached {
            device: opts.user.get("device").map(PathBuf::from),
            state: None,
        })
    }
}

impl Rig {
    /// Adds a blank 4 MiB fake disk at `/dev/<name>` with minor `minor`.
    fn disk(&self, name: &str, minor: u32) -> PathBuf {
        let p = PathBuf::from(format!("/dev/{name}"));
        self.fake
            .disks
            .add(&p, crate::host::DevNum { major: 8, minor }, 4 << 20);
        p
    }

    fn block_target(&self, pod: &str, vol: &str) -> String {
        self.paths
            .kubelet_dir
            .join(format!("pods/{pod}/volumes/moor~fakeblk/{vol}"))
            .display()
            .to_string()
    }

    fn mount_block(&self, lc: &Lifecycle, pod: &str, device: &Path) -> Result<MountOutcome, Error> {
        let opts = BTreeMap::from([
            ("device".to_owned(), device.display().to_string()),
            ("kubernetes.io/fsType".to_owned(), "ext4".to_owned()),
            ("kubernetes.io/readwrite".to_owned(), "rw".to_owned()),
        ]);
        let vol = device.file_name().unwrap().to_string_lossy().into_owned();
        let opts = crate::volume::options::parse(&opts).unwrap();
        let plan = lc.plan_mount("fakeblk", &self.block_target(pod, &vol), &opts)?;
        lc.mount(&plan)
    }

    fn block_stage(&self, device: &Path) -> PathBuf {
        self.paths.stage_dir(
            "fakeblk",
            &crate::volume::volume_key("fakeblk", &device.display().to_string()),
        )
    }

    fn programs(&self) -> Vec<String> {
        self.fake
            .runner
            .calls()
            .iter()
            .map(|c| c.program_name())
            .collect()
    }
}

/// A blank device: probed twice, formatted once, mounted at the stage and bound into the
/// pod; a second pod shares that stage and nothing is formatted again.
#[test]
fn a_blank_block_device_is_formatted_once_and_staged() {
    let rig = Rig::new();
    let lc = rig.lifecycle();
    let dev = rig.disk("fake0", 16);
    let blkid = "blkid -p -o export /dev/fake0";
    rig.fake.runner.expect(blkid, 2, "").expect(blkid, 2, "");
    rig.fake.expect_mkfs_ext4(&dev);
    assert_eq!(
        rig.mount_block(&lc, "p1", &dev).unwrap(),
        MountOutcome::Published
    );
    assert_eq!(rig.programs(), ["blkid", "blkid", "mkfs.ext4"]);
    let stage = rig.block_stage(&dev);
    let m = rig.mounts.get(&stage).expect("stage mounted");
    assert_eq!(
        (m.source.as_str(), m.fs_type.as_str()),
        ("/dev/fake0", "ext4")
    );
    let pod = rig
        .mounts
        .get(Path::new(&rig.block_target("p1", "fake0")))
        .unwrap();
    assert_eq!(
        (pod.major, pod.minor),
        (m.major, m.minor),
        "the pod sees the stage"
    );
    let key = crate::volume::volume_key("fakeblk", "/dev/fake0");
    let rec = lc.state().stages[&key].clone();
    assert!(rec.formatted_by_moor);
    assert_eq!(rec.fs_type.as_deref(), Some("ext4"));

    assert_eq!(
        rig.mount_block(&lc, "p2", &dev).unwrap(),
        MountOutcome::Published
    );
    assert_eq!(rig.programs().len(), 3, "the second pod formats nothing");
    assert!(rig.fake.runner.remaining().is_empty());
    assert_eq!(rig.mounts.mount_points().len(), 3, "one stage + two binds");
}

/// A device with a filesystem is checked and mounted as it is: never mkfs.
#[test]
fn a_block_device_with_a_filesystem_is_mounted_without_mkfs() {
    let rig = Rig::new();
    let lc = rig.lifecycle();
    let dev = rig.disk("fake1", 17);
    rig.fake.disks.write_at(&dev, 1024 + 56, &[0x53, 0xEF]);
    rig.fake.runner.expect(
        "blkid -p -o export /dev/fake1",
        0,
        "TYPE=ext4\nUUID=0b9c5a6e-1f1d-4c55-9e3b-2f3f1d0a7c11\n",
    );
    rig.fake.runner.expect("e2fsck -p /dev/fake1", 0, "");
    let before = rig.fake.disks.data(&dev).unwrap();
    rig.mount_block(&lc, "p1", &dev).unwrap();
    assert_eq!(rig.programs(), ["blkid", "e2fsck"]);
    assert_eq!(
        rig.fake.disks.data(&dev).unwrap(),
        before,
        "not a byte written"
    );
    assert_eq!(
        rig.mounts.get(&rig.block_stage(&dev)).unwrap().fs_type,
        "ext4"
    );
    let key = crate::volume::volume_key("fakeblk", "/dev/fake1");
    let rec = lc.state().stages[&key].clone();
    assert!(!rec.formatted_by_moor);
    assert_eq!(
        rec.fs_uuid.as_deref(),
        Some("0b9c5a6e-1f1d-4c55-9e3b-2f3f1d0a7c11")
    );
}

/// Two block volumes staged side by side: unmounting the last pod of one unstages that
/// one's mount only. A mount someone stacked on a stage is not moor's: the unstage refuses
/// it rather than take it down, and the other volume is untouched throughout.
#[test]
fn unstage_unmounts_only_its_own_mount() {
    let rig = Rig::new();
    let lc = rig.lifecycle();
    let (a, b) = (rig.disk("fake2", 18), rig.disk("fake3", 19));
    for d in [&a, &b] {
        let blkid = format!("blkid -p -o export {}", d.display());
        rig.fake.runner.expect(&blkid, 0, "TYPE=ext4\n");
        rig.fake
            .runner
            .expect(&format!("e2fsck -p {}", d.display()), 0, "");
        rig.mount_block(&lc, "p1", d).unwrap();
    }
    let (sa, sb) = (rig.block_stage(&a), rig.block_stage(&b));
    let (ta, tb) = (
        rig.block_target("p1", "fake2"),
        rig.block_target("p1", "fake3"),
    );
    assert_ne!(
        rig.mounts.get(&sa).map(|m| (m.major, m.minor)),
        rig.mounts.get(&sb).map(|m| (m.major, m.minor)),
        "two disks, two filesystems"
    );
    assert_eq!(
        lc.unmount(Some("fakeblk"), &ta).unwrap(),
        UnmountOutcome::Unstaged
    );
    assert!(rig.mounts.get(&sa).is_none() && rig.mounts.get(Path::new(&ta)).is_none());
    assert!(rig.mounts.get(&sb).is_some() && rig.mounts.get(Path::new(&tb)).is_some());

    // Someone mounts their own filesystem over b's stage: not moor's to take down.
    rig.mounts
        .mount(
            &FsMount {
                source: "/dev/other".into(),
                target: sb.clone(),
                fs_type: "xfs".into(),
                flags: MsFlags::empty(),
                data: String::new(),
            },
            Duration::from_secs(1),
        )
        .unwrap();
    let e = lc.unmount(Some("fakeblk"), &tb).unwrap_err();
    assert_eq!(e.reason(), "not_owned", "{e}");
    let left = rig.mounts.get(&sb).expect("the foreign mount stays");
    assert_eq!(
        (left.source.as_str(), left.fs_type.as_str()),
        ("/dev/other", "xfs")
    );
}

mod csi;
