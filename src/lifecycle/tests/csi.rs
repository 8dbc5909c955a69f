//! The CSI rules over the fake host: explicit stage and unstage, one stage per key and per
//! `volume_id`, access modes, limits, and what reconstruction keeps.

use super::*;
use crate::api::{AccessMode, VolumeMode};

const ID: &str = "vol-1";

impl Rig {
    fn in_kubelet(&self, rel: String) -> String {
        self.paths.kubelet_dir.join(rel).display().to_string()
    }

    fn staging(&self, pv: &str) -> String {
        self.in_kubelet(format!("plugins/kubernetes.io/csi/pv/{pv}/globalmount"))
    }

    fn csi_target(&self, pod: &str) -> String {
        self.in_kubelet(format!("pods/{pod}/volumes/kubernetes.io~csi/pv-1/mount"))
    }

    fn csi_opts(&self, source: &Path, ro: bool) -> VolumeOptions {
        let mut o = crate::volume::options::parse(&BTreeMap::from([(
            "path".to_owned(),
            source.display().to_string(),
        )]))
        .unwrap();
        o.read_only = ro;
        o
    }

    /// A filesystem volume `ID` staged at `staging` with `access`.
    fn volume<'a>(
        &self,
        id: &'a str,
        staging: &'a str,
        access: AccessMode,
        options: &'a VolumeOptions,
    ) -> CsiVolume<'a> {
        CsiVolume {
            driver: "local",
            volume_id: id,
            staging_path: staging,
            mode: VolumeMode::Filesystem,
            access,
            options,
        }
    }

    fn csi_stage_as(
        &self,
        lc: &Lifecycle,
        id: &str,
        source: &Path,
        access: AccessMode,
        limit: Option<usize>,
    ) -> Result<String, Error> {
        let opts = self.csi_opts(source, false);
        let staging = self.staging(id);
        let plan = lc.plan_csi_stage(&self.volume(id, &staging, access, &opts))?;
        lc.csi_stage(&plan, limit)
    }

    fn csi_stage(&self, lc: &Lifecycle) -> Result<String, Error> {
        self.csi_stage_as(lc, ID, &self.source, AccessMode::SingleNodeWriter, None)
    }

    fn csi_publish_as(
        &self,
        lc: &Lifecycle,
        pod: &str,
        access: AccessMode,
        ro: bool,
    ) -> Result<String, Error> {
        let opts = self.csi_opts(&self.source, ro);
        let staging = self.staging(ID);
        lc.csi_publish(
            &self.volume(ID, &staging, access, &opts),
            &self.csi_target(pod),
        )
    }

    fn csi_publish(&self, lc: &Lifecycle, pod: &str, ro: bool) -> Result<String, Error> {
        self.csi_publish_as(lc, pod, AccessMode::SingleNodeWriter, ro)
    }

    /// A lifecycle with volume `ID` staged and published read-write in `pod`.
    fn published(&self, pod: &str) -> Lifecycle {
        let lc = self.lifecycle();
        self.csi_stage(&lc).unwrap();
        self.csi_publish(&lc, pod, false).unwrap();
        lc
    }

    fn csi_stage_path(&self, lc: &Lifecycle) -> PathBuf {
        self.paths.stage_dir("local", &lc.csi_key(ID).unwrap())
    }
}

#[test]
fn a_csi_stage_outlives_its_publishes_until_unstage() {
    let rig = Rig::new();
    let lc = rig.lifecycle();
    assert_eq!(rig.csi_stage(&lc).unwrap(), "staged");
    let stage = rig.csi_stage_path(&lc);
    assert!(rig.mounts.get(&stage).is_some());
    // Nothing is mounted at kubelet's staging path.
    assert!(rig.mounts.get(Path::new(&rig.staging(ID))).is_none());
    assert_eq!(rig.csi_stage(&lc).unwrap(), "already staged");
    assert_eq!(rig.mounts.mount_points().len(), 1);

    assert_eq!(rig.csi_publish(&lc, "p1", false).unwrap(), "published");
    assert_eq!(rig.csi_publish(&lc, "p2", true).unwrap(), "published");
    assert_eq!(
        rig.csi_publish(&lc, "p1", false).unwrap(),
        "already published"
    );
    assert_eq!(rig.mounts.mount_points().len(), 3);
    let p2 = PathBuf::from(rig.csi_target("p2"));
    assert!(rig.mounts.get(&p2).unwrap().is_read_only());
    // A publish asked again read-only where it is read-write is not the same publish.
    assert_eq!(
        rig.csi_publish(&lc, "p1", true).unwrap_err().reason(),
        "conflict"
    );

    assert_eq!(
        lc.csi_unstage("local", ID, &rig.staging(ID))
            .unwrap_err()
            .reason(),
        "still_published"
    );
    for pod in ["p1", "p2"] {
        assert_eq!(
            lc.csi_unpublish("local", ID, &rig.csi_target(pod)).unwrap(),
            "unpublished"
        );
        assert!(
            !Path::new(&rig.csi_target(pod)).exists(),
            "the target moor created is removed"
        );
    }
    assert_eq!(
        lc.csi_unpublish("local", ID, &rig.csi_target("p1"))
            .unwrap(),
        "not published"
    );
    assert!(
        rig.mounts.get(&stage).is_some(),
        "no publish left does not unstage a CSI stage"
    );
    assert_eq!(
        lc.csi_unstage("local", ID, &rig.staging(ID)).unwrap(),
        "unstaged"
    );
    assert!(rig.mounts.mount_points().is_empty());
    assert_eq!(rig.journal_files(), 0);
    assert_eq!(
        lc.csi_unstage("local", ID, &rig.staging(ID)).unwrap(),
        "not staged"
    );
    assert_eq!(
        rig.csi_publish(&lc, "p1", false).unwrap_err().reason(),
        "not_staged"
    );
}

#[test]
fn one_stage_per_key_and_per_volume_id_whichever_front_end() {
    let rig = Rig::new();
    let lc = rig.lifecycle();
    rig.csi_stage(&lc).unwrap();
    // The same volume_id with other attributes (another directory) or another access mode.
    let other = rig._tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let e = rig
        .csi_stage_as(&lc, ID, &other, AccessMode::SingleNodeWriter, None)
        .unwrap_err();
    assert_eq!(e.reason(), "conflict", "{e}");
    let e = rig
        .csi_stage_as(
            &lc,
            ID,
            &rig.source,
            AccessMode::SingleNodeMultiWriter,
            None,
        )
        .unwrap_err();
    assert_eq!(e.reason(), "conflict", "{e}");
    // A second volume_id for the same directory, and FlexVolume's mount of it.
    let e = rig
        .csi_stage_as(
            &lc,
            "vol-2",
            &rig.source,
            AccessMode::SingleNodeWriter,
            None,
        )
        .unwrap_err();
    assert_eq!(e.reason(), "key_in_use", "{e}");
    let e = rig.mount(&lc, "flex-pod", false).unwrap_err();
    assert_eq!(e.reason(), "key_in_use", "{e}");
    assert!(e.to_string().contains(ID), "{e}");
    assert_eq!(
        rig.mounts.mount_points().len(),
        1,
        "nothing mounted by them"
    );
    lc.csi_unstage("local", ID, &rig.staging(ID)).unwrap();

    // FlexVolume first: CSI may not stage that key.
    rig.mount(&lc, "flex-pod", false).unwrap();
    let e = rig.csi_stage(&lc).unwrap_err();
    assert_eq!(e.reason(), "key_in_use", "{e}");
    assert!(e.to_string().contains("FlexVolume"), "{e}");
    lc.unmount(Some("local"), &rig.target("flex-pod")).unwrap();
    assert!(rig.mounts.mount_points().is_empty());
}

#[test]
fn access_modes_hold_per_node() {
    use AccessMode::{SingleNodeReaderOnly as ReaderOnly, SingleNodeSingleWriter as OnePod};
    let rig = Rig::new();
    let lc = rig.lifecycle();
    let publish = |pod: &str, access, ro| {
        rig.csi_publish_as(&lc, pod, access, ro)
            .map_err(|e| e.reason())
    };
    let unpublish = |pod: &str| lc.csi_unpublish("local", ID, &rig.csi_target(pod)).unwrap();
    rig.csi_stage_as(&lc, ID, &rig.source, OnePod, None)
        .unwrap();
    assert_eq!(publish("p1", OnePod, false), Ok("published".into()));
    assert_eq!(publish("p2", OnePod, false), Err("single_writer"));
    // The same target again is the same publish.
    assert_eq!(publish("p1", OnePod, false), Ok("already published".into()));
    // Publish mode = stage mode.
    assert_eq!(
        publish("p3", AccessMode::SingleNodeWriter, false),
        Err("conflict")
    );
    unpublish("p1");
    assert_eq!(publish("p2", OnePod, false), Ok("published".into()));
    unpublish("p2");
    lc.csi_unstage("local", ID, &rig.staging(ID)).unwrap();

    rig.csi_stage_as(&lc, ID, &rig.source, ReaderOnly, None)
        .unwrap();
    assert_eq!(publish("p1", ReaderOnly, false), Err("read_only"));
    assert_eq!(publish("p1", ReaderOnly, true), Ok("published".into()));
    let bind = rig.mounts.get(Path::new(&rig.csi_target("p1"))).unwrap();
    assert!(bind.is_read_only());
}

#[test]
fn csi_paths_outside_kubelets_shapes_are_refused() {
    let rig = Rig::new();
    let lc = rig.lifecycle();
    let opts = rig.csi_opts(&rig.source, false);
    let k = rig.paths.kubelet_dir.display().to_string();
    for staging in [
        format!("{k}/plugins/moor/local/x"),
        format!("{k}/plugins/kubernetes.io/csi/pv/v/../../../../etc/globalmount"),
        "/etc".to_owned(),
        format!("{k}/pods/u/volumes/moor~local/v"),
    ] {
        let v = rig.volume(ID, &staging, AccessMode::SingleNodeWriter, &opts);
        let e = lc.plan_csi_stage(&v).err().unwrap();
        assert_eq!(e.reason(), "bad_path", "{staging}: {e}");
    }
    rig.csi_stage(&lc).unwrap();
    for target in [
        rig.target("flex-shaped"),
        format!("{k}/pods/u/volumes/kubernetes.io~csi/pv-1"),
        rig.staging(ID),
    ] {
        let staging = rig.staging(ID);
        let v = rig.volume(ID, &staging, AccessMode::SingleNodeWriter, &opts);
        let e = lc.csi_publish(&v, &target).unwrap_err();
        assert_eq!(e.reason(), "bad_path", "{target}: {e}");
    }
    assert_eq!(rig.mounts.mount_points().len(), 1);
}

#[test]
fn a_foreign_mount_on_a_csi_target_is_left_alone() {
    let rig = Rig::new();
    let lc = rig.lifecycle();
    rig.csi_stage(&lc).unwrap();
    let t = PathBuf::from(rig.csi_target("p9"));
    std::fs::create_dir_all(&t).unwrap();
    rig.mounts.bind(Path::new("/elsewhere"), &t, false).unwrap();
    assert_eq!(
        lc.csi_unpublish("local", ID, &rig.csi_target("p9"))
            .unwrap_err()
            .reason(),
        "not_owned"
    );
    assert_eq!(
        rig.csi_publish(&lc, "p9", false).unwrap_err().reason(),
        "target_busy"
    );
    assert!(rig.mounts.get(&t).is_some());
}

#[test]
fn the_volume_limit_counts_csi_stages_of_the_driver() {
    let rig = Rig::new();
    let lc = rig.lifecycle();
    rig.csi_stage_as(&lc, ID, &rig.source, AccessMode::SingleNodeWriter, Some(1))
        .unwrap();
    // Asked again, the staged volume is no new one.
    rig.csi_stage_as(&lc, ID, &rig.source, AccessMode::SingleNodeWriter, Some(1))
        .unwrap();
    let other = rig._tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let e = rig
        .csi_stage_as(&lc, "vol-2", &other, AccessMode::SingleNodeWriter, Some(1))
        .unwrap_err();
    assert_eq!(e.reason(), "too_many_volumes", "{e}");
    rig.csi_stage_as(&lc, "vol-2", &other, AccessMode::SingleNodeWriter, Some(2))
        .unwrap();
}

#[test]
fn reconstruction_keeps_a_csi_stage_without_publishes_and_undoes_a_half_publish() {
    let rig = Rig::new();
    drop(rig.published("half"));
    let journal = Journal::open(&rig.paths.state_dir, &rig.paths.run_dir).unwrap();
    let mut half = journal.load().unwrap().publishes.pop().unwrap();
    assert!(half.csi);
    half.phase = PublishPhase::Publishing;
    journal.put_publish(&half).unwrap();

    let lc = rig.lifecycle();
    let r = lc.reconstruct().unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!((r.kept_stages, r.rolled_back_publishes), (1, 1));
    assert!(rig.mounts.get(Path::new(&rig.csi_target("half"))).is_none());
    let stage = rig.csi_stage_path(&lc);
    assert!(rig.mounts.get(&stage).is_some(), "the CSI stage stays");
    // And the reconciler's pass finds nothing to finish on it.
    assert!(lc.pending_transitions().is_empty());
    assert_eq!(rig.csi_stage(&lc).unwrap(), "already staged");
    lc.csi_unstage("local", ID, &rig.staging(ID)).unwrap();
    assert!(rig.mounts.mount_points().is_empty());
}

impl Rig {
    /// The fake block driver's raw volume `raw-1` on `/dev/fake0`.
    fn raw_volume<'a>(
        &self,
        staging: &'a str,
        access: AccessMode,
        options: &'a VolumeOptions,
    ) -> CsiVolume<'a> {
        CsiVolume {
            driver: "fakeblk",
            volume_id: "raw-1",
            staging_path: staging,
            mode: VolumeMode::Block,
            access,
            options,
        }
    }

    fn raw_staging(&self) -> String {
        self.in_kubelet("plugins/kubernetes.io/csi/volumeDevices/staging/pv-raw".into())
    }

    fn raw_opts(ro: bool) -> VolumeOptions {
        let mut o = crate::volume::options::parse(&BTreeMap::from([(
            "device".to_owned(),
            "/dev/fake0".to_owned(),
        )]))
        .unwrap();
        o.read_only = ro;
        o
    }

    fn raw(&self, lc: &Lifecycle, access: AccessMode) -> Result<String, Error> {
        let (opts, staging) = (Self::raw_opts(false), self.raw_staging());
        let plan = lc.plan_csi_stage(&self.raw_volume(&staging, access, &opts))?;
        lc.csi_stage(&plan, None)
    }

    fn raw_target(&self, pod: &str) -> String {
        self.in_kubelet(format!(
            "plugins/kubernetes.io/csi/volumeDevices/publish/pv-raw/{pod}"
        ))
    }

    /// Publishes `raw-1` in `pod` with `access`, read-only when `ro`.
    fn raw_publish(
        &self,
        lc: &Lifecycle,
        (pod, access, ro): (&str, AccessMode, bool),
    ) -> Result<String, Error> {
        let (opts, staging) = (Self::raw_opts(ro), self.raw_staging());
        let v = self.raw_volume(&staging, access, &opts);
        lc.csi_publish(&v, &self.raw_target(pod))
    }
}

/// A raw block stage runs nothing (the fake runner fails any command it was not given: no
/// blkid, no mkfs, no fsck) and mounts nothing; a publish binds the device onto a file.
#[test]
fn a_raw_block_stage_claims_the_device_and_runs_nothing() {
    let rig = Rig::new();
    let lc = rig.lifecycle();
    let dev = rig.disk("fake0", 16);
    let rw = AccessMode::SingleNodeWriter;
    assert_eq!(rig.raw(&lc, rw).unwrap(), "staged");
    assert_eq!(rig.raw(&lc, rw).unwrap(), "already staged");
    assert_eq!(rig.programs(), Vec::<String>::new());
    assert!(rig.mounts.mount_points().is_empty());
    let key = lc.csi_key("raw-1").unwrap();
    let rec = lc.state().stages[&key].clone();
    assert_eq!(rec.device.as_ref().map(|c| c.number.as_str()), Some("8:16"));
    assert_eq!((rec.fs_type.clone(), rec.mount_id), (None, None));
    // FlexVolume may not stage the claimed disk.
    assert_eq!(
        rig.mount_block(&lc, "p1", &dev).unwrap_err().reason(),
        "key_in_use"
    );

    assert_eq!(
        rig.raw_publish(&lc, ("pod-a", rw, false)).unwrap(),
        "published"
    );
    let t = PathBuf::from(rig.raw_target("pod-a"));
    assert!(t.is_file(), "a regular file is the bind target");
    assert_eq!(rig.mounts.get(&t).unwrap().source, "/dev/fake0");
    let e = rig.raw_publish(&lc, ("pod-b", rw, true)).unwrap_err();
    assert_eq!(e.reason(), "unsupported_capability", "{e}");
    assert_eq!(
        lc.csi_unpublish("fakeblk", "raw-1", &rig.raw_target("pod-a"))
            .unwrap(),
        "unpublished"
    );
    assert!(!t.exists(), "the device file moor made is unlinked");

    // The disk went away: publish refuses it by name.
    rig.fake.disks.edit(&dev, |d| {
        d.dev = crate::host::DevNum {
            major: 8,
            minor: 99,
        }
    });
    let e = rig.raw_publish(&lc, ("pod-a", rw, false)).unwrap_err();
    assert_eq!(e.reason(), "device_changed", "{e}");
    rig.fake.disks.edit(&dev, |d| {
        d.dev = crate::host::DevNum {
            major: 8,
            minor: 16,
        }
    });
    let staging = rig.in_kubelet("plugins/kubernetes.io/csi/volumeDevices/staging/pv-raw".into());
    lc.csi_unstage("fakeblk", "raw-1", &staging).unwrap();
    assert_eq!(rig.journal_files(), 0);

    // Reader-only: the device is made read-only for the stage, and writable again after.
    let ro = AccessMode::SingleNodeReaderOnly;
    rig.raw(&lc, ro).unwrap();
    let read_only = || {
        let dev = crate::host::DevNum {
            major: 8,
            minor: 16,
        };
        rig.fake.host.blockdev.is_read_only(dev).unwrap()
    };
    assert!(read_only());
    assert_eq!(
        rig.raw_publish(&lc, ("pod-a", ro, false))
            .unwrap_err()
            .reason(),
        "read_only"
    );
    rig.raw_publish(&lc, ("pod-a", ro, true)).unwrap();
    lc.csi_unpublish("fakeblk", "raw-1", &rig.raw_target("pod-a"))
        .unwrap();
    lc.csi_unstage("fakeblk", "raw-1", &staging).unwrap();
    assert!(!read_only());
    assert_eq!(rig.programs(), Vec::<String>::new());
}

/// The condition kubelet reports comes from what moor sees of its stage now.
#[test]
fn stats_report_the_condition_of_the_stage_and_the_publish() {
    use crate::api::Response;
    use crate::host::probe::Probe;
    let rig = Rig::new();
    let lc = rig.published("p1");
    let stage = rig.csi_stage_path(&lc);
    let condition = |path: &str| match lc.csi_stats("local", ID, path).unwrap() {
        Response::VolumeStats {
            condition, bytes, ..
        } => (condition, bytes.is_some()),
        other => panic!("{other:?}"),
    };
    let (c, bytes) = condition(&rig.csi_target("p1"));
    assert!(!c.abnormal && c.message.is_empty() && bytes, "{c:?}");
    let (c, _) = condition(&rig.staging(ID));
    assert!(!c.abnormal, "{c:?}");
    for (seen, says) in [
        (Probe::Dead(Errno::ESTALE), "is dead"),
        (Probe::Hung, "does not answer"),
    ] {
        rig.mounts.set_probe(&stage, seen);
        let (c, bytes) = condition(&rig.csi_target("p1"));
        assert!(c.abnormal && c.message.contains(says) && !bytes, "{c:?}");
    }
    rig.mounts.set_probe(&stage, Probe::Alive);
    rig.mounts
        .unmount(
            Path::new(&rig.csi_target("p1")),
            false,
            Duration::from_secs(1),
        )
        .unwrap();
    let (c, _) = condition(&rig.csi_target("p1"));
    assert!(c.abnormal && c.message.contains("not mounted"), "{c:?}");
    for (id, path) in [
        (ID, rig.csi_target("p2")),
        (ID, rig.staging("pv-other")),
        ("vol-unknown", rig.csi_target("p1")),
    ] {
        let e = lc.csi_stats("local", id, &path).unwrap_err();
        assert_eq!(e.reason(), "unknown_volume", "{id} {path}: {e}");
    }
}
