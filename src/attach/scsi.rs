//! Shared SCSI sysfs logic for iSCSI and Fibre Channel: the block device behind an
//! `H:C:T:L` address, its WWID and VPD serial, the dm-multipath device holding a set of
//! paths, one-LUN scans and device deletion.
//!
//! Invariant: everything is read under a sysfs root (a fixture tree in tests); the few
//! writes go through [`crate::host::scsi`]. A device is identified by its SCSI address and
//! checked by WWID — never by a `/dev/sdX` name alone, which the kernel reuses.

use std::path::{Path, PathBuf};

use crate::volume::CapacityError;

/// A SCSI address `host:channel:target:lun`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ScsiAddr {
    /// Host number.
    pub host: u32,
    /// Channel.
    pub channel: u32,
    /// Target id.
    pub target: u32,
    /// LUN.
    pub lun: u64,
}

impl ScsiAddr {
    /// Parses `H:C:T:L`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.split(':');
        let a = ScsiAddr {
            host: it.next()?.parse().ok()?,
            channel: it.next()?.parse().ok()?,
            target: it.next()?.parse().ok()?,
            lun: it.next()?.parse().ok()?,
        };
        it.next().is_none().then_some(a)
    }
}

impl std::fmt::Display for ScsiAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}",
            self.host, self.channel, self.target, self.lun
        )
    }
}

/// A SCSI disk found in sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiDisk {
    /// Its address.
    pub addr: ScsiAddr,
    /// Kernel name (`sdb`).
    pub name: String,
}

/// sysfs questions about SCSI devices, under a root.
#[derive(Debug, Clone)]
pub struct Scsi {
    /// sysfs root (`/sys`).
    pub sys: PathBuf,
}

impl Scsi {
    /// Every SCSI device address present, with its block device name when it has one.
    pub fn devices(&self) -> Vec<(ScsiAddr, Option<String>)> {
        let Ok(rd) = std::fs::read_dir(self.sys.join("bus/scsi/devices")) else {
            return Vec::new();
        };
        let mut out: Vec<_> = rd
            .flatten()
            .filter_map(|e| {
                let addr = ScsiAddr::parse(&e.file_name().to_string_lossy())?;
                let name = first_entry(&e.path().join("block"));
                Some((addr, name))
            })
            .collect();
        out.sort();
        out
    }

    /// The disks on `host` with LUN `lun` (any channel and target).
    pub fn disks_on_host(&self, host: u32, lun: u64) -> Vec<ScsiDisk> {
        self.devices()
            .into_iter()
            .filter(|(a, _)| a.host == host && a.lun == lun)
            .filter_map(|(addr, name)| Some(ScsiDisk { addr, name: name? }))
            .collect()
    }

    /// Every device address on `host`, disks or not (to decide whether a session is in use).
    pub fn addrs_on_host(&self, host: u32) -> Vec<ScsiAddr> {
        self.devices()
            .into_iter()
            .map(|(a, _)| a)
            .filter(|a| a.host == host)
            .collect()
    }

    /// The disk at `addr`.
    pub fn disk_at(&self, addr: ScsiAddr) -> Option<ScsiDisk> {
        let name = first_entry(
            &self
                .sys
                .join("bus/scsi/devices")
                .join(addr.to_string())
                .join("block"),
        )?;
        Some(ScsiDisk { addr, name })
    }

    /// The WWID (`/sys/block/X/device/wwid`), normalised: trimmed, inner runs of spaces
    /// collapsed (t10 WWIDs pad with spaces).
    pub fn wwid(&self, name: &str) -> Option<String> {
        let s =
            std::fs::read_to_string(self.sys.join("block").join(name).join("device/wwid")).ok()?;
        let w = normalise_wwid(&s);
        (!w.is_empty()).then_some(w)
    }

    /// The VPD page 0x80 serial, when the device has one.
    pub fn serial(&self, name: &str) -> Option<String> {
        let raw = std::fs::read(self.sys.join("block").join(name).join("device/vpd_pg80")).ok()?;
        // Page 0x80: 4-byte header, then the serial in ASCII.
        let s = String::from_utf8_lossy(raw.get(4..)?).trim().to_owned();
        (!s.is_empty()).then_some(s)
    }

    /// The SCSI device state (`running`, `offline`, `blocked`, …).
    pub fn state(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.sys.join("block").join(name).join("device/state"))
            .ok()
            .map(|s| s.trim().to_owned())
    }

    /// Disks whose WWID is `wwid`.
    pub fn disks_by_wwid(&self, wwid: &str) -> Vec<ScsiDisk> {
        let want = normalise_wwid(wwid);
        self.devices()
            .into_iter()
            .filter_map(|(addr, name)| Some(ScsiDisk { addr, name: name? }))
            .filter(|d| self.wwid(&d.name).is_some_and(|w| wwid_matches(&w, &want)))
            .collect()
    }

    /// The dm device (`dm-3`) whose slaves include every one of `paths`; with a WWID, its
    /// `dm/uuid` must be `mpath-<wwid>` as multipathd names it.
    pub fn multipath_holding(&self, paths: &[String], wwid: Option<&str>) -> Option<String> {
        if paths.is_empty() {
            return None;
        }
        self.multipath_maps()
            .into_iter()
            .find(|(dm, map_wwid)| {
                wwid.is_none_or(|w| wwid_matches(map_wwid, w)) && {
                    let slaves = entries(&self.sys.join("block").join(dm).join("slaves"));
                    paths.iter().all(|p| slaves.contains(p))
                }
            })
            .map(|(dm, _)| dm)
    }

    /// The dm-multipath device built for `wwid`, whatever its slaves.
    pub fn multipath_for_wwid(&self, wwid: &str) -> Option<String> {
        self.multipath_maps()
            .into_iter()
            .find(|(_, map_wwid)| wwid_matches(map_wwid, wwid))
            .map(|(dm, _)| dm)
    }

    /// Every dm-multipath device (`dm-N`, in name order) with the WWID multipathd named it
    /// by (`dm/uuid` = `mpath-<wwid>`); other device-mapper targets are left out.
    fn multipath_maps(&self) -> Vec<(String, String)> {
        let Ok(rd) = std::fs::read_dir(self.sys.join("block")) else {
            return Vec::new();
        };
        let mut maps: Vec<(String, String)> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("dm-"))
            .filter_map(|dm| {
                let uuid =
                    std::fs::read_to_string(self.sys.join("block").join(&dm).join("dm/uuid"))
                        .ok()?;
                let wwid = uuid.trim().strip_prefix("mpath-")?.to_owned();
                Some((dm, wwid))
            })
            .collect();
        maps.sort();
        maps
    }

    /// The map name multipath knows a dm device by (`/sys/block/dm-N/dm/name`, e.g. the
    /// WWID); `multipath -f` refuses the kernel name `dm-N`.
    pub fn dm_name(&self, dm: &str) -> Option<String> {
        std::fs::read_to_string(self.sys.join("block").join(dm).join("dm/name"))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    }

    /// The dm device's slaves (`sdb`, `sdc`).
    pub fn slaves(&self, dm: &str) -> Vec<String> {
        entries(&self.sys.join("block").join(dm).join("slaves"))
    }

    /// The `scan` attribute of a SCSI host.
    pub fn scan_attr(&self, host: u32) -> PathBuf {
        self.sys.join(format!("class/scsi_host/host{host}/scan"))
    }

    /// The `delete` attribute of a disk.
    pub fn delete_attr(&self, name: &str) -> PathBuf {
        self.sys.join("block").join(name).join("device/delete")
    }

    /// Asks `host` to scan exactly one LUN on any channel and target: `- - L`. Scanning
    /// nothing else keeps a stale, reused LUN number from appearing as a device.
    pub fn scan_lun(&self, host: u32, lun: u64) -> std::io::Result<()> {
        crate::host::scsi::write_attr(&self.scan_attr(host), &format!("- - {lun}"))
    }

    /// Asks `host` to scan `channel target lun`.
    pub fn scan_addr(&self, host: u32, channel: u32, target: u32, lun: u64) -> std::io::Result<()> {
        crate::host::scsi::write_attr(&self.scan_attr(host), &format!("{channel} {target} {lun}"))
    }

    /// Asks a disk to re-read its capacity (`device/rescan`), after its LUN grew. Not a SCSI
    /// disk (no such attribute) is `Ok(false)`.
    pub fn rescan(&self, name: &str) -> std::io::Result<bool> {
        let attr = self.sys.join("block").join(name).join("device/rescan");
        match crate::host::scsi::write_attr(&attr, "1") {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// True when `dm` is a dm-multipath map (its dm uuid starts with `mpath-`), not LVM or
    /// another device-mapper target.
    pub fn is_multipath(&self, dm: &str) -> bool {
        std::fs::read_to_string(self.sys.join("block").join(dm).join("dm/uuid"))
            .is_ok_and(|u| u.starts_with("mpath-"))
    }

    /// Deletes a SCSI disk (the kernel flushes its cache first).
    pub fn delete(&self, name: &str) -> std::io::Result<()> {
        match crate::host::scsi::write_attr(&self.delete_attr(name), "1") {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
}

/// Trims and collapses runs of whitespace (t10 WWIDs pad vendor/product with spaces).
pub fn normalise_wwid(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether a sysfs WWID (`naa.6001405…`, `t10.…`) and a user or multipath WWID
/// (`36001405…` — the NAA type digit prefixed, as `scsi_id`/multipath print it) name the
/// same device.
pub fn wwid_matches(sysfs: &str, want: &str) -> bool {
    let a = normalise_wwid(sysfs).to_ascii_lowercase();
    let b = normalise_wwid(want).to_ascii_lowercase();
    if a == b {
        return true;
    }
    let canon = |s: &str| -> String {
        if let Some(naa) = s.strip_prefix("naa.") {
            format!("3{naa}")
        } else if let Some(eui) = s.strip_prefix("eui.") {
            format!("2{eui}")
        } else if let Some(t10) = s.strip_prefix("t10.") {
            format!("1{}", t10.replace(' ', "_"))
        } else {
            s.replace(' ', "_")
        }
    };
    canon(&a) == canon(&b)
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn first_entry(dir: &Path) -> Option<String> {
    entries(dir).into_iter().next()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a sysfs fixture: disks at addresses with WWIDs, optional dm devices.
    pub(crate) fn disk(sys: &Path, addr: &str, name: &str, wwid: &str) {
        let dev = sys.join("bus/scsi/devices").join(addr);
        std::fs::create_dir_all(dev.join("block").join(name)).unwrap();
        let blk = sys.join("block").join(name).join("device");
        std::fs::create_dir_all(&blk).unwrap();
        std::fs::write(blk.join("wwid"), format!("{wwid}\n")).unwrap();
        std::fs::write(blk.join("state"), "running\n").unwrap();
        std::fs::write(blk.join("delete"), "").unwrap();
    }

    pub(crate) fn dm(sys: &Path, name: &str, uuid: &str, slaves: &[&str]) {
        let base = sys.join("block").join(name);
        std::fs::create_dir_all(base.join("dm")).unwrap();
        std::fs::write(base.join("dm/uuid"), format!("{uuid}\n")).unwrap();
        let name = uuid.strip_prefix("mpath-").unwrap_or(uuid);
        std::fs::write(base.join("dm/name"), format!("{name}\n")).unwrap();
        for s in slaves {
            std::fs::create_dir_all(base.join("slaves").join(s)).unwrap();
        }
    }

    #[test]
    fn addresses_parse_strictly() {
        assert_eq!(
            ScsiAddr::parse("3:0:1:7"),
            Some(ScsiAddr {
                host: 3,
                channel: 0,
                target: 1,
                lun: 7
            })
        );
        assert_eq!(ScsiAddr::parse("3:0:1"), None);
        assert_eq!(ScsiAddr::parse("3:0:1:7:9"), None);
        assert_eq!(ScsiAddr::parse("host3"), None);
    }

    #[test]
    fn wwids_match_across_spellings() {
        assert!(wwid_matches("naa.6001405abcdef", "36001405abcdef"));
        assert!(wwid_matches("naa.6001405ABCDEF", "naa.6001405abcdef"));
        assert!(!wwid_matches("naa.6001405abcdef", "36001405abcde0"));
        assert!(wwid_matches(
            "t10.Linux   scsi_debug      2000",
            "1Linux_scsi_debug_2000"
        ));
    }

    #[test]
    fn finds_disks_by_host_lun_and_wwid_and_their_multipath() {
        let d = tempfile::tempdir().unwrap();
        let sys = d.path();
        disk(sys, "2:0:0:1", "sdb", "naa.600140511");
        disk(sys, "2:0:0:2", "sdc", "naa.600140522");
        disk(sys, "3:0:0:1", "sdd", "naa.600140511");
        dm(sys, "dm-0", "LVM-xyz", &["sda"]);
        dm(sys, "dm-1", "mpath-3600140511", &["sdb", "sdd"]);
        let s = Scsi { sys: sys.into() };
        assert_eq!(
            s.disks_on_host(2, 1),
            vec![ScsiDisk {
                addr: ScsiAddr::parse("2:0:0:1").unwrap(),
                name: "sdb".into()
            }]
        );
        assert!(s.disks_on_host(2, 9).is_empty());
        let by: Vec<_> = s
            .disks_by_wwid("3600140511")
            .into_iter()
            .map(|d| d.name)
            .collect();
        assert_eq!(by, ["sdb", "sdd"]);
        assert_eq!(
            s.multipath_holding(&["sdb".into(), "sdd".into()], Some("naa.600140511")),
            Some("dm-1".into())
        );
        assert_eq!(
            s.multipath_holding(&["sdb".into(), "sdc".into()], None),
            None
        );
        assert_eq!(s.multipath_for_wwid("naa.600140511"), Some("dm-1".into()));
        assert_eq!(s.addrs_on_host(3).len(), 1);
        s.delete("sdb").unwrap();
        assert_eq!(std::fs::read_to_string(s.delete_attr("sdb")).unwrap(), "1");
        // A vanished device is already deleted.
        s.delete("sdz").unwrap();
    }
}

/// A SCSI attach or detach that could not be done (iSCSI and FC).
#[derive(Debug, thiserror::Error)]
pub enum ScsiError {
    /// Login to a target failed on every portal.
    #[error("volume {volume}: iSCSI login to {target} failed on every portal: {detail}")]
    Login {
        /// Volume key.
        volume: String,
        /// Target IQN.
        target: String,
        /// Per-portal failures (redacted commands, stderr tails).
        detail: String,
    },
    /// The target refused our CHAP credentials.
    #[error(
        "volume {volume}: iSCSI CHAP authentication at {step} to {target} at {portal} failed: check the secret ({secrets}.username/password)"
    )]
    Auth {
        /// Volume key.
        volume: String,
        /// Target IQN.
        target: String,
        /// Portal.
        portal: String,
        /// `discovery` or `login`: which exchange the target refused.
        step: &'static str,
        /// The secret keys that exchange used.
        secrets: &'static str,
    },
    /// The LUN did not show up in time.
    #[error("volume {volume}: no block device for {what} after {waited_ms} ms")]
    NoDevice {
        /// Volume key.
        volume: String,
        /// What was looked for.
        what: String,
        /// How long we waited.
        waited_ms: u128,
    },
    /// Paths of one volume report different WWIDs (a reused LUN number, a misconfigured target).
    #[error(
        "volume {volume}: {what}: paths disagree on the device identity ({detail}); refusing to use any"
    )]
    Mismatch {
        /// Volume key.
        volume: String,
        /// What was looked for.
        what: String,
        /// The WWIDs seen.
        detail: String,
    },
    /// Several paths but no dm-multipath device.
    #[error(
        "volume {volume}: {paths} paths to {what} but no dm-multipath device after {waited_ms} ms; is multipathd running?"
    )]
    NoMultipath {
        /// Volume key.
        volume: String,
        /// What.
        what: String,
        /// Path count.
        paths: usize,
        /// How long we waited.
        waited_ms: u128,
    },
    /// A sysfs or record file write failed.
    #[error("volume {volume}: {path}")]
    Io {
        /// Volume key.
        volume: String,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl ScsiError {
    /// Stable reason label.
    pub fn reason(&self) -> &'static str {
        match self {
            ScsiError::Login { .. } => "login_failed",
            ScsiError::Auth { .. } => "auth_failed",
            ScsiError::NoDevice { .. } => "no_device",
            ScsiError::Mismatch { .. } => "device_mismatch",
            ScsiError::NoMultipath { .. } => "no_multipath",
            ScsiError::Io { .. } => "sysfs",
        }
    }
}

impl crate::volume::ProtocolError for ScsiError {
    fn reason(&self) -> &'static str {
        ScsiError::reason(self)
    }
}

/// Makes the kernel read the size of a SCSI disk (`name`: `sdX`, or a dm device over SCSI
/// paths) again: each path rescanned, then a multipath map resized over them.
pub fn refresh_capacity(host: &crate::host::Host, name: &str) -> Result<(), CapacityError> {
    let scsi = Scsi {
        sys: host.paths.sys.clone(),
    };
    let rescan = |path: &str| {
        scsi.rescan(path)
            .map(drop)
            .map_err(|source| CapacityError::Io {
                what: "rescan",
                path: host.paths.sys.join("block").join(path),
                source,
            })
    };
    if name.starts_with("dm-") {
        for path in scsi.slaves(name) {
            rescan(&path)?;
        }
        if scsi.is_multipath(name) {
            resize_multipath(host, name).map_err(|source| CapacityError::Command { source })?;
        }
        Ok(())
    } else {
        rescan(name)
    }
}

/// Polls `f` until it returns `Some` or `limit` passes: first after 5 ms, the interval
/// doubling up to 100 ms. A scanned disk usually shows up within tens of milliseconds (sd
/// probes asynchronously after the scan returns), so a flat 100 ms poll would add up to
/// 100 ms to every attach; a slow target still costs only a few sysfs reads a second.
pub fn wait_for<T>(limit: std::time::Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(5);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(100));
    }
}

/// Flushes the dm-multipath device `dm` (`multipath -f <map name>`), so its paths can be
/// deleted.
pub fn flush_multipath(host: &crate::host::Host, dm: &str) -> Result<(), crate::host::ExecError> {
    on_map(host, dm, "multipath", &["-f"])
}

/// Runs `program args… <map name>` on the map of `dm`, bounded: the multipath tools take
/// the map's name, never the kernel's `dm-N`.
fn on_map(
    host: &crate::host::Host,
    dm: &str,
    program: &str,
    args: &[&str],
) -> Result<(), crate::host::ExecError> {
    let scsi = Scsi {
        sys: host.paths.sys.clone(),
    };
    let name = scsi.dm_name(dm).unwrap_or_else(|| dm.to_owned());
    let cmd = crate::host::Cmd::new(program)
        .args(args)
        .arg(&name)
        .timeout(std::time::Duration::from_secs(30));
    host.runner.run_ok(&cmd).map(|_| ())
}

/// Makes the dm-multipath map `dm` take its paths' new size (`multipathd resize map`),
/// after each path was rescanned.
pub fn resize_multipath(host: &crate::host::Host, dm: &str) -> Result<(), crate::host::ExecError> {
    on_map(host, dm, "multipathd", &["resize", "map"])
}

/// Checks that every disk reports one WWID and returns it.
pub fn common_wwid(scsi: &Scsi, disks: &[ScsiDisk]) -> Result<Option<String>, String> {
    let mut seen: Vec<String> = Vec::new();
    for d in disks {
        let w = scsi.wwid(&d.name).unwrap_or_default();
        if !seen.iter().any(|s| wwid_matches(s, &w)) {
            seen.push(w);
        }
    }
    match seen.len() {
        0 => Ok(None),
        1 => Ok(seen.pop().filter(|w| !w.is_empty())),
        _ => Err(seen.join(" vs ")),
    }
}
