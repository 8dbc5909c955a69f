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
use crate::driver::{Attached, Driver, DriverError, NodeContext, VolumeSpec, volume_key};
use crate::flexvolume::{OptionsError, VolumeOptions};
use crate::host::Host;
use crate::journal::{StageRecord, StageSource};

/// The user options this driver accepts.
pub const OPTIONS: &[&str] = &["targetWWNs", "lun", "wwids", "readOnly", "mountOptions"];

const DEVICE_WAIT: Duration = Duration::from_secs(15);
const MULTIPATH_WAIT: Duration = Duration::from_secs(20);

/// The FC driver.
#[derive(Debug, Default, Clone, Copy)]
pub struct FcDriver;

/// How the volume is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FcVolume {
    /// Target port WWNs (16 lowercase hex digits) and a LUN.
    Wwn {
        /// WWNs.
        wwns: Vec<String>,
        /// LUN.
        lun: u64,
    },
    /// Device WWIDs.
    Wwids(Vec<String>),
}

fn list(s: &str) -> Vec<String> {
    s.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|x| x.trim().trim_matches('"').trim().to_owned())
        .filter(|x| !x.is_empty())
        .collect()
}

/// Normalises a WWN: `0x`, `:` and case removed; must be 16 hex digits.
pub fn normalise_wwn(s: &str) -> Option<String> {
    let w: String = s
        .trim()
        .trim_start_matches("0x")
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    (w.len() == 16 && w.chars().all(|c| c.is_ascii_hexdigit())).then_some(w)
}

impl FcVolume {
    /// From the user's (or the persisted) options.
    pub fn from_map(m: &BTreeMap<String, String>) -> Result<FcVolume, OptionsError> {
        let get = |k: &str| m.get(k).map(String::as_str).unwrap_or("");
        let invalid = |k: &str, v: &str, expected: &'static str| OptionsError::Invalid {
            key: k.into(),
            value: v.into(),
            expected,
        };
        let (wwns, wwids) = (get("targetWWNs"), get("wwids"));
        match (wwns.is_empty(), wwids.is_empty()) {
            (false, true) => {
                let wwns = list(wwns)
                    .iter()
                    .map(|w| normalise_wwn(w))
                    .collect::<Option<Vec<_>>>()
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| {
                        invalid(
                            "targetWWNs",
                            wwns,
                            "expected WWNs of 16 hex digits, comma-separated",
                        )
                    })?;
                let l = get("lun");
                let lun = l.parse().ok().filter(|l| *l < 16384).ok_or_else(|| {
                    invalid(
                        "lun",
                        l,
                        "expected a number 0-16383 (required with targetWWNs)",
                    )
                })?;
                Ok(FcVolume::Wwn { wwns, lun })
            }
            (true, false) => {
                let v = list(wwids);
                if v.is_empty()
                    || v.iter().any(|w| {
                        !w.chars().all(|c| c.is_ascii_graphic() || c == ' ') || w.len() > 256
                    })
                {
                    return Err(invalid("wwids", wwids, "expected WWIDs, comma-separated"));
                }
                if !get("lun").is_empty() {
                    return Err(invalid("lun", get("lun"), "not used with wwids"));
                }
                Ok(FcVolume::Wwids(v))
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

    fn what(&self) -> String {
        match self {
            FcVolume::Wwn { wwns, lun } => format!("WWN {} lun {lun}", wwns.join(",")),
            FcVolume::Wwids(w) => format!("WWID {}", w.join(",")),
        }
    }
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
pub fn find_disks(scsi: &Scsi, v: &FcVolume) -> Vec<ScsiDisk> {
    match v {
        FcVolume::Wwn { wwns, lun } => targets_for_wwns(&scsi.sys, wwns)
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
        FcVolume::Wwids(ws) => {
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

fn scan(scsi: &Scsi, v: &FcVolume) {
    // Failures are not fatal: the wait below reports what matters (no device).
    match v {
        FcVolume::Wwn { wwns, lun } => {
            for (h, c, t) in targets_for_wwns(&scsi.sys, wwns) {
                if let Err(e) = scsi.scan_addr(h, c, t, *lun) {
                    tracing::warn!(driver = "fc", "scan of host{h} {c} {t} {lun}: {e}");
                }
            }
        }
        FcVolume::Wwids(_) => {
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
        "fc"
    }

    fn volume(&self, _node: &NodeContext, opts: &VolumeOptions) -> Result<VolumeSpec, DriverError> {
        opts.check_known(self.name(), OPTIONS)?;
        let v = FcVolume::from_map(&opts.user)?;
        let mut persist = BTreeMap::new();
        let identity = match &v {
            FcVolume::Wwn { wwns, lun } => {
                persist.insert("targetWWNs".into(), wwns.join(","));
                persist.insert("lun".into(), lun.to_string());
                let mut sorted = wwns.clone();
                sorted.sort();
                format!("{}/{lun}", sorted.join(","))
            }
            FcVolume::Wwids(w) => {
                persist.insert("wwids".into(), w.join(","));
                w.join(",")
            }
        };
        let mount_options = opts.user.get("mountOptions").cloned().unwrap_or_default();
        if !mount_options.is_empty() {
            persist.insert("mountOptions".into(), mount_options.clone());
        }
        Ok(VolumeSpec {
            key: volume_key(self.name(), &identity),
            source: StageSource::Attached { device: None },
            persist,
            mount_options,
        })
    }

    fn attach(
        &self,
        host: &Host,
        spec: &VolumeSpec,
        _opts: &VolumeOptions,
    ) -> Result<Attached, DriverError> {
        let volume = spec.key.as_str();
        let v = FcVolume::from_map(&spec.persist)?;
        let scsi = Scsi {
            sys: host.paths.sys.clone(),
        };
        let mut disks = find_disks(&scsi, &v);
        if disks.is_empty() {
            scan(&scsi, &v);
            disks = wait_for(DEVICE_WAIT, || {
                Some(find_disks(&scsi, &v)).filter(|d| !d.is_empty())
            })
            .ok_or_else(|| {
                DriverError::Scsi(ScsiError::NoDevice {
                    volume: volume.into(),
                    what: v.what(),
                    waited_ms: DEVICE_WAIT.as_millis(),
                })
            })?;
        }
        let wwid = common_wwid(&scsi, &disks).map_err(|detail| {
            DriverError::Scsi(ScsiError::Mismatch {
                volume: volume.into(),
                what: v.what(),
                detail,
            })
        })?;
        let names: Vec<String> = disks.iter().map(|d| d.name.clone()).collect();
        let name = match (&wwid, names.len()) {
            (Some(w), n) if n >= 2 => {
                wait_for(MULTIPATH_WAIT, || scsi.multipath_holding(&names, Some(w))).ok_or_else(
                    || {
                        DriverError::Scsi(ScsiError::NoMultipath {
                            volume: volume.into(),
                            what: v.what(),
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
        tracing::info!(volume, driver = "fc", device = %device.display(), op = "attach", "attached");
        let mut persist = BTreeMap::new();
        if let Some(w) = wwid {
            persist.insert("wwid".to_owned(), w);
        }
        Ok(Attached {
            device: Some(device),
            persist,
        })
    }

    fn detach(&self, host: &Host, rec: &StageRecord) -> Result<(), DriverError> {
        let volume = rec.key.as_str();
        let v = FcVolume::from_map(&rec.options)?;
        let scsi = Scsi {
            sys: host.paths.sys.clone(),
        };
        let wwid = rec.options.get("wwid").cloned();
        let disks: Vec<ScsiDisk> = find_disks(&scsi, &v)
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
                DriverError::Scsi(ScsiError::Io {
                    volume: volume.into(),
                    path: scsi.delete_attr(&d.name),
                    source: e,
                })
            })?;
        }
        Ok(())
    }
}
