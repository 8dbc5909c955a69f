//! Driver `moor~fc/fc`: Fibre Channel LUNs by `targetWWNs` + `lun`, or by `wwids`.
//!
//! Attach: find the disk in sysfs — by WWN, through `/sys/class/fc_transport/targetH:C:T/
//! port_name` then `H:C:T:LUN`; by WWID, through `/sys/block/*/device/wwid` — scanning only
//! the one `C T L` on the matching hosts when it is missing (WWN mode), or issuing a
//! wildcard scan on FC hosts only (WWID mode, where the LUN is unknown). Every path must
//! report the same WWID; with two or more paths the dm-multipath device is used. The WWID
//! is persisted so detach (flush multipath, delete each SCSI disk) finds exactly these
//! disks after a restart, whatever their `sdX` names became.
//!
//! Invariant: only disks whose WWID matches the volume's are ever deleted.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::scsi::{Scsi, ScsiAddr, ScsiDisk, ScsiError, common_wwid, wait_for, wwid_matches};
use crate::host::Host;
use crate::volume::state::{FcLun, FcName};
use crate::volume::{
    Attached, CapacityError, Driver, DriverError, NodeContext, OptionsError, Recorded, StageSource,
    VolumeOptions, VolumeSpec, VolumeState, validate, volume_key,
};

/// The driver name.
pub const NAME: &str = "fc";
/// The user options this driver accepts.
pub const OPTIONS: &[&str] = &["targetWWNs", "lun", "wwids", "readOnly", "mountOptions"];

const DEVICE_WAIT: Duration = Duration::from_secs(15);
const MULTIPATH_WAIT: Duration = Duration::from_secs(20);

/// The FC driver.
#[derive(Debug, Default, Clone, Copy)]
pub struct FcDriver;

fn list(s: &str) -> Vec<String> {
    s.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|x| x.trim().trim_matches('"').trim().to_owned())
        .filter(|x| !x.is_empty())
        .collect()
}

/// Normalises a WWN (user option or sysfs `port_name`) to 16 lowercase hex digits, through
/// the shared WWN validator.
pub fn normalise_wwn(s: &str) -> Option<String> {
    validate::wwn("targetWWNs", s).ok()
}

/// The LUN's name from the user's options (`targetWWNs` + `lun`, or `wwids`), every value
/// through its validator.
pub fn parse_name(m: &BTreeMap<String, String>) -> Result<FcName, OptionsError> {
    {
        let get = |k: &str| m.get(k).map(String::as_str).unwrap_or("");
        let invalid = |k: &str, v: &str, expected: &'static str| OptionsError::Invalid {
            key: k.into(),
            value: validate::shown(v),
            expected,
        };
        let (wwns, wwids) = (get("targetWWNs"), get("wwids"));
        match (wwns.is_empty(), wwids.is_empty()) {
            (false, true) => {
                let wwns = list(wwns)
                    .iter()
                    .map(|w| validate::wwn("targetWWNs", w))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| invalid("targetWWNs", wwns, validate::WWN))?;
                if wwns.is_empty() {
                    return Err(invalid("targetWWNs", get("targetWWNs"), validate::WWN));
                }
                let lun = match get("lun") {
                    "" => {
                        return Err(invalid(
                            "lun",
                            "",
                            "expected a LUN number 0-16383 (required with targetWWNs)",
                        ));
                    }
                    l => validate::lun("lun", l)?,
                };
                Ok(FcName::Wwn { wwns, lun })
            }
            (true, false) => {
                let v = list(wwids)
                    .iter()
                    .map(|w| validate::wwid("wwids", w))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| invalid("wwids", wwids, validate::WWID))?;
                if v.is_empty() {
                    return Err(invalid("wwids", wwids, validate::WWID));
                }
                if !get("lun").is_empty() {
                    return Err(invalid("lun", get("lun"), "not used with wwids"));
                }
                Ok(FcName::Wwids(v))
            }
            (false, false) => Err(invalid(
                "wwids",
                wwids,
                "give either targetWWNs+lun or wwids, not both",
            )),
            (true, true) => Err(OptionsError::Missing {
                key: "targetWWNs",
                driver: "fc".into(),
            }),
        }
    }
}

fn what(v: &FcName) -> String {
    match v {
        FcName::Wwn { wwns, lun } => format!("WWN {} lun {lun}", wwns.join(",")),
        FcName::Wwids(w) => format!("WWID {}", w.join(",")),
    }
}

/// Checks a name read from a stage record before detach acts on it: every value through
/// its validator again, whatever wrote the record.
fn check_recorded(v: &FcName) -> Result<(), OptionsError> {
    let (key, items) = match v {
        FcName::Wwn { wwns, lun } => {
            validate::lun("lun", &lun.to_string())?;
            ("targetWWNs", wwns)
        }
        FcName::Wwids(w) => ("wwids", w),
    };
    for w in items {
        match key {
            "targetWWNs" => validate::wwn(key, w).map(drop)?,
            _ => validate::wwid(key, w).map(drop)?,
        }
    }
    Ok(())
}

/// FC remote ports `(H, C, T)` whose `port_name` is one of `wwns`.
pub fn targets_for_wwns(sys: &Path, wwns: &[String]) -> Vec<(u32, u32, u32)> {
    let Ok(rd) = std::fs::read_dir(sys.join("class/fc_transport")) else {
        return Vec::new();
    };
    let mut out: Vec<(u32, u32, u32)> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let hct = name.strip_prefix("target")?;
            let a = ScsiAddr::parse(&format!("{hct}:0"))?;
            let pn = std::fs::read_to_string(e.path().join("port_name")).ok()?;
            let pn = normalise_wwn(&pn)?;
            wwns.contains(&pn).then_some((a.host, a.channel, a.target))
        })
        .collect();
    out.sort();
    out
}

/// The FC hosts (`/sys/class/fc_host/hostN`).
pub fn fc_hosts(sys: &Path) -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir(sys.join("class/fc_host"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.strip_prefix("host")?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The disks of the volume present now.
pub fn find_disks(scsi: &Scsi, v: &FcName) -> Vec<ScsiDisk> {
    match v {
        FcName::Wwn { wwns, lun } => targets_for_wwns(&scsi.sys, wwns)
            .into_iter()
            .filter_map(|(host, channel, target)| {
                scsi.disk_at(ScsiAddr {
                    host,
                    channel,
                    target,
                    lun: *lun,
                })
            })
            .collect(),
        FcName::Wwids(ws) => {
            let mut out: Vec<ScsiDisk> = Vec::new();
            for w in ws {
                for d in scsi.disks_by_wwid(w) {
                    if !out.contains(&d) {
                        out.push(d);
                    }
                }
            }
            out
        }
    }
}

fn scan(scsi: &Scsi, v: &FcName) {
    // Failures are not fatal: the wait below reports what matters (no device).
    match v {
        FcName::Wwn { wwns, lun } => {
            for (h, c, t) in targets_for_wwns(&scsi.sys, wwns) {
                if let Err(e) = scsi.scan_addr(h, c, t, *lun) {
                    tracing::warn!(driver = "fc", "scan of host{h} {c} {t} {lun}: {e}");
                }
            }
        }
        FcName::Wwids(_) => {
            for h in fc_hosts(&scsi.sys) {
                if let Err(e) = crate::host::scsi::write_attr(&scsi.scan_attr(h), "- - -") {
                    tracing::warn!(driver = "fc", "scan of host{h}: {e}");
                }
            }
        }
    }
}

impl Driver for FcDriver {
    fn name(&self) -> &'static str {
        NAME
    }

    fn volume(&self, _node: &NodeContext, opts: &VolumeOptions) -> Result<VolumeSpec, DriverError> {
        opts.check_known(NAME, OPTIONS)?;
        let name = parse_name(&opts.user)?;
        let identity = match &name {
            FcName::Wwn { wwns, lun } => {
                let mut sorted = wwns.clone();
                sorted.sort();
                format!("{}/{lun}", sorted.join(","))
            }
            FcName::Wwids(w) => w.join(","),
        };
        Ok(VolumeSpec {
            key: volume_key(NAME, &identity),
            source: StageSource::Attached { device: None },
            state: Some(VolumeState::Fc(FcLun {
                name,
                mount_options: opts.mount_options.words().to_vec(),
                wwid: None,
            })),
            mount_options: opts.mount_options.clone(),
        })
    }

    fn attach(
        &self,
        host: &Host,
        spec: &VolumeSpec,
        _opts: &VolumeOptions,
    ) -> Result<Attached, DriverError> {
        let volume = spec.key.as_str();
        let Some(VolumeState::Fc(lun)) = &spec.state else {
            return Err(DriverError::NoVolume {
                volume: volume.into(),
                driver: NAME,
            });
        };
        let v = &lun.name;
        let scsi = Scsi {
            sys: host.paths.sys.clone(),
        };
        let mut disks = find_disks(&scsi, v);
        if disks.is_empty() {
            scan(&scsi, v);
            disks = wait_for(DEVICE_WAIT, || {
                Some(find_disks(&scsi, v)).filter(|d| !d.is_empty())
            })
            .ok_or_else(|| {
                DriverError::from(ScsiError::NoDevice {
                    volume: volume.into(),
                    what: what(v),
                    waited_ms: DEVICE_WAIT.as_millis(),
                })
            })?;
        }
        let wwid = common_wwid(&scsi, &disks).map_err(|detail| {
            DriverError::from(ScsiError::Mismatch {
                volume: volume.into(),
                what: what(v),
                detail,
            })
        })?;
        let names: Vec<String> = disks.iter().map(|d| d.name.clone()).collect();
        let name = match (&wwid, names.len()) {
            (Some(w), n) if n >= 2 => {
                wait_for(MULTIPATH_WAIT, || scsi.multipath_holding(&names, Some(w))).ok_or_else(
                    || {
                        DriverError::from(ScsiError::NoMultipath {
                            volume: volume.into(),
                            what: what(v),
                            paths: n,
                            waited_ms: MULTIPATH_WAIT.as_millis(),
                        })
                    },
                )?
            }
            (Some(w), _) => scsi
                .multipath_for_wwid(w)
                .unwrap_or_else(|| names[0].clone()),
            (None, _) => names[0].clone(),
        };
        let device = host.paths.dev.join(&name);
        tracing::info!(volume, driver = NAME, device = %device.display(), op = "attach", "attached");
        Ok(Attached {
            device: Some(device),
            state: Some(VolumeState::Fc(FcLun {
                wwid,
                ..lun.clone()
            })),
        })
    }

    fn detach(&self, host: &Host, rec: &Recorded<'_>) -> Result<(), DriverError> {
        let volume = rec.key;
        let Some(VolumeState::Fc(lun)) = rec.state else {
            return Err(rec.missing(NAME));
        };
        check_recorded(&lun.name)?;
        let scsi = Scsi {
            sys: host.paths.sys.clone(),
        };
        let wwid = lun.wwid.clone();
        let disks: Vec<ScsiDisk> = find_disks(&scsi, &lun.name)
            .into_iter()
            .filter(|d| match (&wwid, scsi.wwid(&d.name)) {
                (Some(w), Some(th)) => wwid_matches(&th, w),
                _ => true,
            })
            .collect();
        let names: Vec<String> = disks.iter().map(|d| d.name.clone()).collect();
        let dm = match &wwid {
            Some(w) => scsi.multipath_for_wwid(w),
            None => scsi.multipath_holding(&names, None),
        };
        if let Some(dm) = dm {
            super::scsi::flush_multipath(host, &dm).map_err(|source| DriverError::Command {
                volume: volume.into(),
                source,
            })?;
        }
        for d in &disks {
            tracing::info!(volume, driver = "fc", device = %d.name, op = "detach", "deleting SCSI device {}", d.addr);
            scsi.delete(&d.name).map_err(|e| {
                DriverError::from(ScsiError::Io {
                    volume: volume.into(),
                    path: scsi.delete_attr(&d.name),
                    source: e,
                })
            })?;
        }
        Ok(())
    }

    fn refresh_capacity(&self, host: &Host, name: &str) -> Result<(), CapacityError> {
        super::scsi::refresh_capacity(host, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attach::scsi::tests::{disk, dm};
    use std::path::PathBuf;

    use crate::volume::options::string_map as m;

    /// Two FC HBAs (host3, host4) each seeing target port 50:06:01:60:3b:a0:12:34 as
    /// target H:0:1, LUN 2 on both, assembled by multipath as dm-4.
    fn fabric(sys: &Path) {
        for h in [3, 4] {
            std::fs::create_dir_all(sys.join(format!("class/fc_host/host{h}"))).unwrap();
            let t = sys.join(format!("class/fc_transport/target{h}:0:1"));
            std::fs::create_dir_all(&t).unwrap();
            std::fs::write(t.join("port_name"), "0x500601603ba01234\n").unwrap();
            let o = sys.join(format!("class/fc_transport/target{h}:0:0"));
            std::fs::create_dir_all(&o).unwrap();
            std::fs::write(o.join("port_name"), "0x5006016000000000\n").unwrap();
        }
        disk(
            sys,
            "3:0:1:2",
            "sdf",
            "naa.600601603ba0123400000000000000aa",
        );
        disk(
            sys,
            "4:0:1:2",
            "sdg",
            "naa.600601603ba0123400000000000000aa",
        );
        disk(
            sys,
            "3:0:0:2",
            "sdh",
            "naa.6006016000000000000000000000ffff",
        );
        dm(
            sys,
            "dm-4",
            "mpath-3600601603ba0123400000000000000aa",
            &["sdf", "sdg"],
        );
    }

    /// Issue 12 item 10: WWNs, WWIDs and LUNs that are not one are refused by `volume()`
    /// naming the option (`volume()` is pure: refused there, nothing is scanned or run).
    #[test]
    fn hostile_values_are_refused_before_any_command() {
        let cases: &[&[(&str, &str)]] = &[
            &[("targetWWNs", "-x"), ("lun", "0")],
            &[("targetWWNs", "0x-00601603ba01234"), ("lun", "0")],
            &[("targetWWNs", "500601603ba0123"), ("lun", "0")],
            &[("targetWWNs", "500601603ba012345"), ("lun", "0")],
            &[("targetWWNs", "5006:01603ba01234"), ("lun", "0")],
            &[("targetWWNs", "500601603ba01234;x"), ("lun", "0")],
            &[("targetWWNs", "500601603ba01234"), ("lun", "+1")],
            &[("targetWWNs", "500601603ba01234"), ("lun", "-0")],
            &[("targetWWNs", "500601603ba01234"), ("lun", "16384")],
            &[("wwids", "-x")],
            &[("wwids", "naa.600601603ba0;reboot")],
            &[("wwids", "$(reboot)")],
            &[("wwids", "naa.6006 `id`")],
            &[("wwids", "naa.6006'x")],
            &[("wwids", "naa.6006\\x")],
        ];
        for pairs in cases {
            let o = VolumeOptions::from_map(&m(pairs)).unwrap();
            let e = match FcDriver.volume(&NodeContext::for_tests(), &o) {
                Ok(spec) => panic!("{pairs:?} accepted: {:?}", spec.state),
                Err(e) => e,
            };
            assert_eq!(e.reason(), "bad_options", "{pairs:?}: {e}");
            let msg = e.to_string();
            assert!(
                pairs
                    .iter()
                    .any(|(k, _)| msg.starts_with(&format!("option {k}="))),
                "{pairs:?}: {msg}"
            );
            assert!(msg.contains("expected"), "{pairs:?}: {msg}");
        }
    }

    #[test]
    fn options_take_wwns_and_lun_or_wwids() {
        assert_eq!(
            parse_name(&m(&[
                ("targetWWNs", "50:06:01:60:3B:A0:12:34"),
                ("lun", "2")
            ]))
            .unwrap(),
            FcName::Wwn {
                wwns: vec!["500601603ba01234".into()],
                lun: 2
            }
        );
        assert!(
            parse_name(&m(&[("targetWWNs", "5006")]))
                .unwrap_err()
                .to_string()
                .contains("targetWWNs")
        );
        assert!(
            parse_name(&m(&[("targetWWNs", "500601603ba01234")]))
                .unwrap_err()
                .to_string()
                .contains("option lun")
        );
        assert!(
            parse_name(&m(&[
                ("targetWWNs", "500601603ba01234"),
                ("lun", "1"),
                ("wwids", "x")
            ]))
            .is_err()
        );
        assert!(
            parse_name(&m(&[]))
                .unwrap_err()
                .to_string()
                .contains("targetWWNs")
        );
        assert_eq!(
            parse_name(&m(&[("wwids", "3600a,3600b")])).unwrap(),
            FcName::Wwids(vec!["3600a".into(), "3600b".into()])
        );
    }

    #[test]
    fn finds_paths_by_wwn_and_lun_and_by_wwid() {
        let d = tempfile::tempdir().unwrap();
        fabric(d.path());
        let s = Scsi {
            sys: d.path().into(),
        };
        let by_wwn = find_disks(
            &s,
            &FcName::Wwn {
                wwns: vec!["500601603ba01234".into()],
                lun: 2,
            },
        );
        let names: Vec<_> = by_wwn.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["sdf", "sdg"]);
        let by_wwid = find_disks(
            &s,
            &FcName::Wwids(vec!["3600601603ba0123400000000000000aa".into()]),
        );
        assert_eq!(by_wwid, by_wwn);
        assert!(
            find_disks(
                &s,
                &FcName::Wwn {
                    wwns: vec!["500601603ba01234".into()],
                    lun: 3
                }
            )
            .is_empty()
        );
        assert_eq!(fc_hosts(d.path()), [3, 4]);
        assert_eq!(
            s.multipath_holding(
                &["sdf".into(), "sdg".into()],
                Some("naa.600601603ba0123400000000000000aa")
            ),
            Some("dm-4".into())
        );
    }

    #[test]
    fn attach_prefers_multipath_and_detach_flushes_then_deletes_only_its_paths() {
        let d = tempfile::tempdir().unwrap();
        let sys = d.path().join("sys");
        fabric(&sys);
        let mut fake = crate::host::fake::FakeHost::new(d.path()).with_sysfs_fixture();
        // The test expects the device under `/dev`, as the kernel names it.
        fake.host.paths.dev = "/dev".into();
        let (host, runner) = (fake.host, fake.runner);
        let mut u = m(&[("targetWWNs", "500601603ba01234"), ("lun", "2")]);
        u.insert("kubernetes.io/fsType".into(), "ext4".into());
        let o = VolumeOptions::from_map(&u).unwrap();
        let node = NodeContext {
            node_name: "n".into(),
            kubelet_dir: "/k".into(),
            run_dir: "/r".into(),
        };
        let spec = FcDriver.volume(&node, &o).unwrap();
        let a = FcDriver.attach(&host, &spec, &o).unwrap();
        assert_eq!(a.device, Some(PathBuf::from("/dev/dm-4")));
        let Some(VolumeState::Fc(learnt)) = &a.state else {
            panic!("{:?}", a.state)
        };
        assert!(learnt.wwid.is_some());
        let rec = crate::journal::StageRecord::new(
            &spec.key,
            NAME,
            StageSource::Attached { device: a.device },
            a.state.clone(),
            crate::journal::StagePhase::Unstaging,
        );
        // And the same volume as main ef677bd recorded it.
        let old =
            crate::journal::record::old_record(include_str!("../volume/fixtures/fc-ef677bd.json"));
        assert_eq!(
            old.volume,
            Some(VolumeState::Fc(FcLun {
                name: FcName::Wwn {
                    wwns: vec!["500601603ba01234".into()],
                    lun: 2
                },
                mount_options: vec![],
                wwid: Some("naa.600601603ba0123400000000000000aa".into()),
            }))
        );
        assert_eq!(old.volume, rec.volume);
        runner.expect("multipath -f 3600601603ba0123400000000000000aa", 0, "");
        FcDriver.detach(&host, &old.recorded()).unwrap();
        assert!(runner.remaining().is_empty());
        let deleted = |n: &str| {
            std::fs::read_to_string(sys.join(format!("block/{n}/device/delete"))).unwrap()
        };
        assert_eq!(
            (
                deleted("sdf").as_str(),
                deleted("sdg").as_str(),
                deleted("sdh").as_str()
            ),
            ("1", "1", "")
        );
    }

    /// Before a grow, a multipath LUN reads its new size in: each path rescanned, then the
    /// map resized by its name (what lifecycle/expand.rs did itself before it named no
    /// protocol); a plain path is rescanned alone.
    #[test]
    fn capacity_is_refreshed_on_every_path_then_the_map() {
        let d = tempfile::tempdir().unwrap();
        let (host, runner) = crate::share::test_host(d.path());
        let sys = d.path().join("sys");
        fabric(&sys);
        let host = Host {
            paths: crate::host::HostPaths {
                sys: sys.clone(),
                ..host.paths.clone()
            },
            ..host
        };
        for p in ["sdf", "sdg", "sdh"] {
            std::fs::write(sys.join(format!("block/{p}/device/rescan")), "").unwrap();
        }
        let rescanned = |p: &str| {
            std::fs::read_to_string(sys.join(format!("block/{p}/device/rescan"))).unwrap()
        };
        runner.expect(
            "multipathd resize map 3600601603ba0123400000000000000aa",
            0,
            "",
        );
        FcDriver.refresh_capacity(&host, "dm-4").unwrap();
        assert!(runner.remaining().is_empty());
        assert_eq!(
            (rescanned("sdf"), rescanned("sdg"), rescanned("sdh")),
            ("1".into(), "1".into(), String::new())
        );
        FcDriver.refresh_capacity(&host, "sdh").unwrap();
        assert_eq!(rescanned("sdh"), "1");
        assert!(runner.calls().len() == 1, "no tool for a plain path");
    }
}
