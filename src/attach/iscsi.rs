//! Driver `moor~iscsi/iscsi`: options as Kubernetes' in-tree iSCSI volume names them
//! (`targetPortal`, `portals`, `iqn`, `lun`, `iscsiInterface`, `initiatorName`,
//! `chapAuthDiscovery`, `chapAuthSession`), secrets `discovery.sendtargets.auth.*` and
//! `node.session.auth.*`.
//!
//! Attach, per portal: sendtargets discovery, node record set to `node.startup=manual` and
//! `node.session.scan=manual` (so neither a reboot nor a login brings in LUNs nobody asked
//! for), CHAP written into the record file (never argv), login; then one LUN scanned through
//! `/sys/class/scsi_host/hostN/scan`, its disk found in sysfs (no udev needed), every path
//! checked to report the same WWID, and with two or more paths the dm-multipath device used.
//! Detach: flush multipath, delete exactly the disks of this target+LUN (matched by the WWID
//! attach recorded), and log out of a session only when no SCSI device remains on it — so a
//! second volume on the same target keeps its session. Attach and detach of one target are
//! serialised by a per-target lock (the daemon only serialises per volume).
//!
//! Invariant: a device is used only after its sysfs address (session host + LUN) and WWID
//! say it is this volume's; no secret reaches argv, logs or the journal.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::iscsiadm::{self, Portal};
use super::scsi::{Scsi, ScsiDisk, ScsiError, common_wwid, wait_for};
use crate::host::{ExecError, Host};
use crate::volume::state::IscsiTarget;
use crate::volume::{
    Attached, CapacityError, Driver, DriverError, NodeContext, OptionsError, Recorded, StageSource,
    VolumeOptions, VolumeSpec, VolumeState, validate, volume_key,
};

/// The user options this driver accepts.
pub const OPTIONS: &[&str] = &[
    "targetPortal",
    "portals",
    "iqn",
    "lun",
    "iscsiInterface",
    "initiatorName",
    "chapAuthDiscovery",
    "chapAuthSession",
    "readOnly",
    "mountOptions",
];

/// How long a scanned LUN may take to show up as a disk.
const DEVICE_WAIT: Duration = Duration::from_secs(15);
/// How long multipathd may take to assemble the map.
const MULTIPATH_WAIT: Duration = Duration::from_secs(20);

/// The iSCSI driver.
#[derive(Debug)]
pub struct IscsiDriver {
    /// open-iscsi's configuration directory (`/etc/iscsi`).
    pub iscsi_dir: PathBuf,
    locks: Mutex<BTreeMap<String, Arc<Mutex<()>>>>,
}

impl Default for IscsiDriver {
    fn default() -> Self {
        IscsiDriver {
            iscsi_dir: PathBuf::from("/etc/iscsi"),
            locks: Mutex::new(BTreeMap::new()),
        }
    }
}

/// The driver name.
pub const NAME: &str = "iscsi";

/// An IQN an earlier moor accepted (`iqn.`/`eui.`/`naa.` and letters, digits, `.`, `-`, `:`,
/// `_`) where the strict RFC 3720 form refuses it: taken from a record moor wrote itself, so
/// an upgrade never strands a volume it cannot log out of; such a name cannot start with `-`
/// or hold anything a tool could read as more than the name.
fn earlier_form(n: &str) -> bool {
    ["iqn.", "eui.", "naa."].iter().any(|p| n.starts_with(p))
        && n.len() <= 223
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:_".contains(c))
}

/// The user's options as an [`IscsiTarget`], every value through its validator.
fn parse_target(opts: &VolumeOptions) -> Result<IscsiTarget, OptionsError> {
    let tp = opts.required(NAME, "targetPortal")?;
    let mut portals = vec![Portal::from_option("targetPortal", tp)?];
    for p in iscsiadm::portals_option("portals", opts.get("portals").unwrap_or(""))? {
        if !portals.contains(&p) {
            portals.push(p);
        }
    }
    let iqn = validate::iscsi_name("iqn", opts.required(NAME, "iqn")?)?;
    let lun = match opts.get("lun") {
        None => 0,
        Some(l) => validate::lun("lun", l)?,
    };
    let iface = match opts.get("iscsiInterface") {
        None => "default".to_owned(),
        Some(i) => validate::iscsi_iface("iscsiInterface", i)?,
    };
    // It is written into the node record: a newline would add lines of its own.
    let initiator_name = match opts.get("initiatorName") {
        Some(i) => Some(validate::iscsi_name("initiatorName", i)?),
        None => None,
    };
    Ok(IscsiTarget {
        portals,
        iqn,
        lun,
        iface,
        initiator_name,
        chap_discovery: flag(opts, "chapAuthDiscovery")?,
        chap_session: flag(opts, "chapAuthSession")?,
        mount_options: opts.mount_options.words().to_vec(),
        wwid: None,
    })
}

/// Checks a target read from a stage record before detach hands it to iscsiadm: every
/// value through its validator again (whatever wrote the record), an IQN of an earlier
/// moor's form ([`earlier_form`]) accepted.
fn check_recorded(t: &IscsiTarget) -> Result<(), OptionsError> {
    for p in &t.portals {
        Portal::from_option("portals", &p.arg())?;
    }
    if !earlier_form(&t.iqn) {
        validate::iscsi_name("iqn", &t.iqn)?;
    }
    validate::iscsi_iface("iscsiInterface", &t.iface)?;
    Ok(())
}

fn flag(opts: &VolumeOptions, key: &str) -> Result<bool, OptionsError> {
    match opts.get(key) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(v) => Err(OptionsError::Invalid {
            key: key.into(),
            value: v.into(),
            expected: "expected true or false",
        }),
    }
}

fn what(t: &IscsiTarget) -> String {
    format!("{} lun {}", t.iqn, t.lun)
}

/// CHAP record lines for `prefix` (`node.session.auth` or `discovery.sendtargets.auth`)
/// from the secrets; `None` when CHAP is off.
fn chap_lines(
    opts: &VolumeOptions,
    prefix: &str,
    on: bool,
) -> Result<Vec<(String, Vec<u8>)>, OptionsError> {
    let keys = ["username", "password", "username_in", "password_in"];
    let mut out = vec![(
        format!("{prefix}.authmethod"),
        if on {
            b"CHAP".to_vec()
        } else {
            b"None".to_vec()
        },
    )];
    for k in keys {
        let name = format!("{prefix}.{k}");
        let v = if on {
            opts.secrets.get(&name).map(|s| s.0.clone())
        } else {
            None
        };
        if on && v.is_none() && (k == "username" || k == "password") {
            return Err(OptionsError::Invalid {
                key: name,
                value: "<missing secret>".into(),
                expected: "required when CHAP is on (secretRef)",
            });
        }
        if v.as_ref().is_some_and(|b| b.contains(&b'\n')) {
            return Err(OptionsError::Invalid {
                key: name,
                value: "<redacted>".into(),
                expected: "a secret without newlines",
            });
        }
        // Off: blank the lines so no stale secret stays in the record.
        out.push((name, v.unwrap_or_default()));
    }
    Ok(out)
}

/// What login writes into the records: CHAP lines (never argv) and the initiator name.
struct Creds<'a> {
    discovery: Vec<(String, Vec<u8>)>,
    session: Vec<(String, Vec<u8>)>,
    initiator: Option<&'a str>,
}

/// An iSCSI session in sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// `sessionN`'s N.
    pub sid: u32,
    /// The SCSI host it created.
    pub host: u32,
}

/// The session to `iqn` through `portal`, from `/sys/class/iscsi_session` and
/// `/sys/class/iscsi_connection`.
pub fn find_session(sys: &Path, iqn: &str, portal: &Portal) -> Option<Session> {
    let rd = std::fs::read_dir(sys.join("class/iscsi_session")).ok()?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(sid) = name
            .strip_prefix("session")
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let read = |p: PathBuf| std::fs::read_to_string(p).map(|s| s.trim().to_owned()).ok();
        if read(e.path().join("targetname")).as_deref() != Some(iqn) {
            continue;
        }
        let conn = sys.join(format!("class/iscsi_connection/connection{sid}:0"));
        let addr = read(conn.join("persistent_address")).or_else(|| read(conn.join("address")));
        let port = read(conn.join("persistent_port")).or_else(|| read(conn.join("port")));
        if addr.as_deref() != Some(portal.host.as_str())
            || port.and_then(|p| p.parse::<u16>().ok()) != Some(portal.port)
        {
            continue;
        }
        // .../hostH/sessionN: the SCSI host is the parent of the session's device.
        let dev = std::fs::canonicalize(e.path().join("device")).ok()?;
        let host = dev
            .components()
            .filter_map(|c| c.as_os_str().to_str()?.strip_prefix("host")?.parse().ok())
            .next_back()?;
        return Some(Session { sid, host });
    }
    None
}

impl IscsiDriver {
    fn lock(&self, iqn: &str) -> Arc<Mutex<()>> {
        let mut m = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(iqn.to_owned()).or_default().clone()
    }

    fn io(volume: &str, path: &Path, source: std::io::Error) -> DriverError {
        ScsiError::Io {
            volume: volume.into(),
            path: path.into(),
            source,
        }
        .into()
    }

    /// Discovery, record set-up and login through one portal. `Ok(())` also when a session
    /// already exists.
    fn login_portal(
        &self,
        host: &Host,
        volume: &str,
        t: &IscsiTarget,
        p: &Portal,
        creds: &Creds<'_>,
    ) -> Result<(), DriverError> {
        let (disc_chap, sess_chap, initiator) = (&creds.discovery, &creds.session, creds.initiator);
        let cmd_err = |source: ExecError| DriverError::Command {
            volume: volume.into(),
            source,
        };
        if find_session(&host.paths.sys, &t.iqn, p).is_some() {
            return Ok(());
        }
        let discovery_chap = disc_chap.first().is_some_and(|(_, v)| v == b"CHAP");
        if discovery_chap {
            let _ = host.runner.run(&iscsiadm::discoverydb_new(p, &t.iface));
            let rec = iscsiadm::discovery_record(&self.iscsi_dir, p);
            let items: Vec<(&str, &[u8])> = disc_chap
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_slice()))
                .collect();
            crate::host::scsi::update_record(&rec, &items)
                .map_err(|e| Self::io(volume, &rec, e))?;
        }
        let out = host
            .runner
            .run(&iscsiadm::discover(p, &t.iface))
            .map_err(cmd_err)?;
        if out.code == Some(iscsiadm::ERR_LOGIN_AUTH_FAILED) {
            return Err(DriverError::from(ScsiError::Auth {
                volume: volume.into(),
                target: t.iqn.clone(),
                portal: p.arg(),
                step: "discovery",
                secrets: "discovery.sendtargets.auth",
            }));
        }
        if !out.success() {
            return Err(cmd_err(ExecError::Failed {
                cmdline: iscsiadm::discover(p, &t.iface).display(),
                code: out.code,
                stderr: out.stderr_tail(),
            }));
        }
        let rec = iscsiadm::node_record(&self.iscsi_dir, &t.iqn, p, &t.iface).ok_or_else(|| {
            DriverError::from(ScsiError::Login {
                volume: volume.into(),
                target: t.iqn.clone(),
                detail: format!("{p}: discovery did not return this target at this portal"),
            })
        })?;
        // One write of the record instead of an `iscsiadm -o update` per setting (each an
        // exec that reads and rewrites the same file): manual startup so the node never logs
        // in at boot behind kubelet's back, manual scan so only the LUN asked for appears.
        // No initiatorName: the line goes (an empty value removes it), so the login uses the
        // node's own name instead of one an earlier volume of this target left in the record.
        let initiator_name: &[u8] = initiator.map(str::as_bytes).unwrap_or_default();
        let mut items: Vec<(&str, &[u8])> = vec![
            ("node.startup", b"manual"),
            ("node.session.scan", b"manual"),
            ("iface.initiatorname", initiator_name),
        ];
        items.extend(sess_chap.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
        crate::host::scsi::update_record(&rec, &items).map_err(|e| Self::io(volume, &rec, e))?;
        let out = host
            .runner
            .run(&iscsiadm::login(&t.iqn, p, &t.iface))
            .map_err(cmd_err)?;
        match out.code {
            Some(0) | Some(iscsiadm::ERR_SESS_EXISTS) => {
                crate::testhook::pause_point("iscsi:logged-in");
                Ok(())
            }
            Some(iscsiadm::ERR_LOGIN_AUTH_FAILED) => Err(DriverError::from(ScsiError::Auth {
                volume: volume.into(),
                target: t.iqn.clone(),
                portal: p.arg(),
                step: "login",
                secrets: "node.session.auth",
            })),
            code => Err(cmd_err(ExecError::Failed {
                cmdline: iscsiadm::login(&t.iqn, p, &t.iface).display(),
                code,
                stderr: out.stderr_tail(),
            })),
        }
    }

    fn detach_target(
        &self,
        host: &Host,
        volume: &str,
        t: &IscsiTarget,
        wwid: Option<&str>,
    ) -> Result<(), DriverError> {
        let scsi = Scsi {
            sys: host.paths.sys.clone(),
        };
        let sessions: Vec<(Portal, Session)> = t
            .portals
            .iter()
            .filter_map(|p| Some((p.clone(), find_session(&host.paths.sys, &t.iqn, p)?)))
            .collect();
        let mut disks: Vec<ScsiDisk> = Vec::new();
        for (_, s) in &sessions {
            for d in scsi.disks_on_host(s.host, t.lun) {
                let theirs = scsi.wwid(&d.name);
                match (wwid, theirs) {
                    (Some(w), Some(th)) if !super::scsi::wwid_matches(&th, w) => {
                        tracing::warn!(volume, device = %d.name, target = %t.iqn, "not deleting: WWID differs from the one attach recorded");
                    }
                    _ => disks.push(d),
                }
            }
        }
        let names: Vec<String> = disks.iter().map(|d| d.name.clone()).collect();
        let dm = match wwid {
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
            tracing::info!(volume, device = %d.name, target = %t.iqn, op = "detach", "deleting SCSI device {}", d.addr);
            scsi.delete(&d.name)
                .map_err(|e| Self::io(volume, &scsi.delete_attr(&d.name), e))?;
        }
        for (p, s) in &sessions {
            // Devices just deleted may linger in sysfs for a moment; they are not users.
            let left: Vec<_> = scsi
                .addrs_on_host(s.host)
                .into_iter()
                .filter(|a| !disks.iter().any(|d| d.addr == *a))
                .collect();
            if !left.is_empty() {
                tracing::info!(volume, target = %t.iqn, "keeping session {} at {p}: {} other device(s) still on it", s.sid, left.len());
                continue;
            }
            let out = host
                .runner
                .run(&iscsiadm::logout(&t.iqn, p, &t.iface))
                .map_err(|source| DriverError::Command {
                    volume: volume.into(),
                    source,
                })?;
            if !out.success() && out.code != Some(iscsiadm::ERR_NO_OBJS_FOUND) {
                return Err(DriverError::Command {
                    volume: volume.into(),
                    source: ExecError::Failed {
                        cmdline: iscsiadm::logout(&t.iqn, p, &t.iface).display(),
                        code: out.code,
                        stderr: out.stderr_tail(),
                    },
                });
            }
        }
        Ok(())
    }
}

/// The iSCSI target of a spec or record, or the error saying it has none.
fn target_of<'a>(
    state: Option<&'a VolumeState>,
    key: &str,
) -> Result<&'a IscsiTarget, DriverError> {
    match state {
        Some(VolumeState::Iscsi(t)) => Ok(t),
        _ => Err(DriverError::NoVolume {
            volume: key.into(),
            driver: NAME,
        }),
    }
}

impl Driver for IscsiDriver {
    fn name(&self) -> &'static str {
        NAME
    }

    fn volume(&self, _node: &NodeContext, opts: &VolumeOptions) -> Result<VolumeSpec, DriverError> {
        opts.check_known(NAME, OPTIONS)?;
        let t = parse_target(opts)?;
        chap_lines(opts, "discovery.sendtargets.auth", t.chap_discovery)?;
        chap_lines(opts, "node.session.auth", t.chap_session)?;
        Ok(VolumeSpec {
            key: volume_key(NAME, &format!("{}/{}/{}", t.portals[0].arg(), t.iqn, t.lun)),
            source: StageSource::Attached { device: None },
            state: Some(VolumeState::Iscsi(t)),
            mount_options: opts.mount_options.clone(),
        })
    }

    fn attach(
        &self,
        host: &Host,
        spec: &VolumeSpec,
        opts: &VolumeOptions,
    ) -> Result<Attached, DriverError> {
        let volume = spec.key.as_str();
        let t = target_of(spec.state.as_ref(), volume)?;
        let creds = Creds {
            discovery: chap_lines(opts, "discovery.sendtargets.auth", t.chap_discovery)?,
            session: chap_lines(opts, "node.session.auth", t.chap_session)?,
            initiator: t.initiator_name.as_deref(),
        };
        let lock = self.lock(&t.iqn);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());

        let mut failures = Vec::new();
        let mut sessions = Vec::new();
        for p in &t.portals {
            match self.login_portal(host, volume, t, p, &creds) {
                Ok(()) => match find_session(&host.paths.sys, &t.iqn, p) {
                    Some(s) => sessions.push(s),
                    None => failures.push(format!("{p}: logged in but no session in sysfs")),
                },
                Err(e) if matches!(e.protocol::<ScsiError>(), Some(ScsiError::Auth { .. })) => {
                    return Err(e);
                }
                Err(e) => {
                    let e = crate::error::Chain(&e);
                    tracing::warn!(volume, target = %t.iqn, "login through {p} failed: {e}");
                    failures.push(format!("{p}: {e}"));
                }
            }
        }
        if sessions.is_empty() {
            return Err(DriverError::from(ScsiError::Login {
                volume: volume.into(),
                target: t.iqn.clone(),
                detail: failures.join("; "),
            }));
        }
        let scsi = Scsi {
            sys: host.paths.sys.clone(),
        };
        let mut disks = Vec::new();
        for s in &sessions {
            scsi.scan_lun(s.host, t.lun)
                .map_err(|e| Self::io(volume, &scsi.scan_attr(s.host), e))?;
        }
        for s in &sessions {
            let found = wait_for(DEVICE_WAIT, || {
                let d = scsi.disks_on_host(s.host, t.lun);
                (!d.is_empty() && d.iter().all(|d| scsi.wwid(&d.name).is_some())).then_some(d)
            })
            .ok_or_else(|| {
                DriverError::from(ScsiError::NoDevice {
                    volume: volume.into(),
                    what: format!("{} (session {})", what(t), s.sid),
                    waited_ms: DEVICE_WAIT.as_millis(),
                })
            })?;
            disks.extend(found);
        }
        let wwid = common_wwid(&scsi, &disks).map_err(|detail| {
            DriverError::from(ScsiError::Mismatch {
                volume: volume.into(),
                what: what(t),
                detail,
            })
        })?;
        let names: Vec<String> = disks.iter().map(|d| d.name.clone()).collect();
        let name = if names.len() >= 2 {
            wait_for(MULTIPATH_WAIT, || {
                scsi.multipath_holding(&names, wwid.as_deref())
            })
            .ok_or_else(|| {
                DriverError::from(ScsiError::NoMultipath {
                    volume: volume.into(),
                    what: what(t),
                    paths: names.len(),
                    waited_ms: MULTIPATH_WAIT.as_millis(),
                })
            })?
        } else {
            names[0].clone()
        };
        let device = host.paths.dev.join(&name);
        tracing::info!(volume, driver = NAME, device = %device.display(), target = %t.iqn, op = "attach", wwid = wwid.as_deref().unwrap_or(""), "attached");
        Ok(Attached {
            device: Some(device),
            state: Some(VolumeState::Iscsi(IscsiTarget { wwid, ..t.clone() })),
        })
    }

    fn detach(&self, host: &Host, rec: &Recorded<'_>) -> Result<(), DriverError> {
        let Some(VolumeState::Iscsi(t)) = rec.state else {
            return Err(rec.missing(NAME));
        };
        check_recorded(t)?;
        let lock = self.lock(&t.iqn);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        self.detach_target(host, rec.key, t, t.wwid.as_deref())
    }

    fn refresh_capacity(&self, host: &Host, name: &str) -> Result<(), CapacityError> {
        super::scsi::refresh_capacity(host, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attach::scsi::tests::disk;
    use crate::host::fake::{FakeHost, ScriptRunner};
    use crate::journal::StagePhase;
    use crate::journal::StageRecord;
    use crate::volume::Secret;

    const IQN: &str = "iqn.2024-01.dev.moor.lab:plain";

    struct Rig {
        tmp: tempfile::TempDir,
        runner: Arc<ScriptRunner>,
        host: Host,
        driver: IscsiDriver,
    }

    /// The stage record detach gets for `key`: unstaging, as the lifecycle hands it over.
    fn unstaging(
        key: &str,
        device: Option<std::path::PathBuf>,
        volume: Option<VolumeState>,
    ) -> StageRecord {
        StageRecord::new(
            key,
            NAME,
            StageSource::Attached { device },
            volume,
            StagePhase::Unstaging,
        )
    }

    /// The typed target of a spec (or of what attach learnt).
    fn target(state: &Option<VolumeState>) -> IscsiTarget {
        target_of(state.as_ref(), "k").unwrap().clone()
    }

    /// A record as main ef677bd wrote it, with `options` replaced.
    fn old_record_with(options: &[(&str, &str)]) -> StageRecord {
        let mut v: serde_json::Value =
            serde_json::from_str(include_str!("../volume/fixtures/iscsi-ef677bd.json")).unwrap();
        v["options"] = options
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        serde_json::from_value(v).unwrap()
    }

    fn rig() -> Rig {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let fake = FakeHost::new(root).with_sysfs_fixture();
        let (host, runner) = (fake.host, fake.runner);
        let driver = IscsiDriver {
            iscsi_dir: root.join("etc-iscsi"),
            ..Default::default()
        };
        Rig {
            tmp,
            runner,
            host,
            driver,
        }
    }

    /// A session `sid` on SCSI host `h` to IQN through `addr:port`, as the kernel shows it.
    fn session(sys: &Path, sid: u32, h: u32, addr: &str, port: u16) {
        let dev = sys.join(format!("devices/platform/host{h}/session{sid}"));
        std::fs::create_dir_all(&dev).unwrap();
        let cls = sys.join(format!("class/iscsi_session/session{sid}"));
        std::fs::create_dir_all(&cls).unwrap();
        std::fs::write(cls.join("targetname"), format!("{IQN}\n")).unwrap();
        std::os::unix::fs::symlink(&dev, cls.join("device")).unwrap();
        let conn = sys.join(format!("class/iscsi_connection/connection{sid}:0"));
        std::fs::create_dir_all(&conn).unwrap();
        std::fs::write(conn.join("persistent_address"), format!("{addr}\n")).unwrap();
        std::fs::write(conn.join("persistent_port"), format!("{port}\n")).unwrap();
        let scan = sys.join(format!("class/scsi_host/host{h}"));
        std::fs::create_dir_all(&scan).unwrap();
        std::fs::write(scan.join("scan"), "").unwrap();
    }

    fn opts(extra: &[(&str, &str)]) -> VolumeOptions {
        let mut m: BTreeMap<String, String> = [
            ("targetPortal", "127.0.0.1:3260"),
            ("iqn", IQN),
            ("lun", "0"),
            ("kubernetes.io/fsType", "ext4"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        m.retain(|_, v| !v.is_empty());
        VolumeOptions::from_map(&m).unwrap()
    }

    fn node() -> NodeContext {
        NodeContext::for_tests()
    }

    /// Issue 12 item 10: a portal, target or initiator name, iface or LUN that is not one is
    /// refused by `volume()` with the option named, so nothing reaches iscsiadm's argv or the
    /// node record. An accepted value would go on to `attach`, whose empty script fails on
    /// the first command.
    #[test]
    fn hostile_values_are_refused_before_any_command() {
        let cases: &[(&str, &str)] = &[
            ("targetPortal", "-u"),
            ("targetPortal", "--logoutall=all"),
            ("targetPortal", "10.0.0.1:65536"),
            ("targetPortal", "10.0.0.1:0"),
            ("targetPortal", "10.0.0.1:+80"),
            ("targetPortal", "[fd00::1"),
            ("targetPortal", "[fd00::1]:99999"),
            ("targetPortal", "fd00::1"),
            ("targetPortal", "10.0.0.1;reboot"),
            ("targetPortal", "$(reboot)"),
            ("targetPortal", "host-.example"),
            ("portals", "127.0.0.1:3261,-u"),
            ("portals", r#"["127.0.0.1:3261","[::1"]"#),
            ("portals", "127.0.0.1:3261,a`b`"),
            ("iqn", "-u"),
            ("iqn", "iqn.2024-01.dev.moor.lab:a;b"),
            ("iqn", "iqn.2024-13.dev.moor:x"),
            ("iqn", "iqn.dev.moor:x"),
            ("iqn", "eui.12345"),
            ("iqn", "naa.xyz"),
            ("initiatorName", "-u"),
            (
                "initiatorName",
                "iqn.2024-01.dev.moor.lab:x\nnode.startup = automatic",
            ),
            ("initiatorName", "iqn.2024-01.dev.moor.lab:x\u{0}"),
            ("initiatorName", "not-an-iqn"),
            ("iscsiInterface", "-u"),
            ("iscsiInterface", "a b"),
            ("iscsiInterface", "a;b"),
            ("lun", "-1"),
            ("lun", "+1"),
            ("lun", "16384"),
        ];
        for (key, value) in cases {
            let r = rig();
            let o = opts(&[(*key, *value)]);
            match r.driver.volume(&node(), &o) {
                Ok(spec) => {
                    let attached = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        r.driver.attach(&r.host, &spec, &o)
                    }));
                    panic!(
                        "{key}={value:?} accepted; attach ran {:?} ({})",
                        r.runner
                            .calls()
                            .iter()
                            .map(crate::host::Cmd::display)
                            .collect::<Vec<_>>(),
                        if attached.is_err() {
                            "and hit an unscripted command"
                        } else {
                            "ok"
                        }
                    );
                }
                Err(e) => {
                    assert_eq!(e.reason(), "bad_options", "{key}={value:?}: {e}");
                    let msg = e.to_string();
                    assert!(msg.starts_with(&format!("option {key}")), "{key}: {msg}");
                    assert!(msg.contains("expected"), "{key}: {msg}");
                    assert!(r.runner.calls().is_empty(), "{key}={value:?}");
                }
            }
        }
    }

    /// A record an earlier moor wrote with an IQN the strict form refuses (no date, a one-digit
    /// month) still detaches, in its old form and typed: an upgrade must not strand a volume.
    #[test]
    fn a_record_of_an_earlier_version_still_detaches() {
        let r = rig();
        for iqn in ["iqn.2024-1.legacy.example:disk", "iqn.legacy:disk_1"] {
            assert!(
                parse_target(&opts(&[("iqn", iqn)])).is_err(),
                "{iqn} is not strict RFC 3720"
            );
            let old = old_record_with(&[("targetPortal", "127.0.0.1:3260"), ("iqn", iqn)]);
            assert_eq!(target(&old.volume).iqn, iqn);
            let typed: StageRecord =
                serde_json::from_str(&serde_json::to_string(&old).unwrap()).unwrap();
            for rec in [old, typed] {
                // No session of it is logged in: nothing to run, and no refusal either.
                r.driver.detach(&r.host, &rec.recorded()).unwrap();
            }
        }
        assert!(r.runner.calls().is_empty());
    }

    /// A record written before the validators (or edited by hand) is refused by detach
    /// before iscsiadm runs: in the old form (its options do not convert) and typed (its
    /// values fail the record check). (Attach gets no record: only the spec `volume()`
    /// made, which refuses these values, see `hostile_values_are_refused_before_any_command`.)
    #[test]
    fn a_hostile_persisted_target_is_refused_before_any_command() {
        let r = rig();
        for (key, value) in [("targetPortal", "-u"), ("portals", "-u"), ("lun", "x")] {
            let mut options = vec![("targetPortal", "127.0.0.1:3260"), ("iqn", IQN)];
            options.retain(|(k, _)| *k != key);
            options.push((key, value));
            let rec = old_record_with(&options);
            assert_eq!(rec.volume, None, "{key}");
            let e = r.driver.detach(&r.host, &rec.recorded()).unwrap_err();
            assert_eq!(e.reason(), "bad_options", "{key}: {e}");
            assert!(e.to_string().starts_with(&format!("option {key}=")), "{e}");
        }
        let spec = r.driver.volume(&node(), &opts(&[])).unwrap();
        let good = target(&spec.state);
        for bad in [
            IscsiTarget {
                iqn: "-x".into(),
                ..good.clone()
            },
            IscsiTarget {
                portals: vec![Portal {
                    host: "-u".into(),
                    port: 3260,
                }],
                ..good.clone()
            },
            IscsiTarget {
                iface: "a;b".into(),
                ..good.clone()
            },
        ] {
            let rec = unstaging(&spec.key, None, Some(VolumeState::Iscsi(bad)));
            let typed: StageRecord =
                serde_json::from_str(&serde_json::to_string(&rec).unwrap()).unwrap();
            let e = r.driver.detach(&r.host, &typed.recorded()).unwrap_err();
            assert_eq!(e.reason(), "bad_options", "{e}");
        }
        // A stage adopted from the mount table has no target to log out of.
        let adopted = unstaging(&spec.key, None, None);
        let e = r.driver.detach(&r.host, &adopted.recorded()).unwrap_err();
        assert_eq!(e.reason(), "bad_options", "{e}");
        assert!(r.runner.calls().is_empty());
    }

    /// A stage record main ef677bd wrote loads typed (the WWID attach learnt included) and
    /// detaches as it did: exactly its disk deleted, then the session logged out.
    #[test]
    fn a_record_of_main_ef677bd_loads_typed_and_detaches() {
        let rec = crate::journal::record::old_record(include_str!(
            "../volume/fixtures/iscsi-ef677bd.json"
        ));
        assert_eq!(
            rec.volume,
            Some(VolumeState::Iscsi(IscsiTarget {
                portals: vec![
                    Portal {
                        host: "127.0.0.1".into(),
                        port: 3260
                    },
                    Portal {
                        host: "fd00::1".into(),
                        port: 3261
                    },
                ],
                iqn: IQN.into(),
                lun: 0,
                iface: "default".into(),
                initiator_name: None,
                chap_discovery: false,
                chap_session: false,
                mount_options: vec!["noatime".into(), "discard".into()],
                wwid: Some("naa.6001405aa".into()),
            }))
        );
        let r = rig();
        let sys = r.host.paths.sys.clone();
        session(&sys, 3, 5, "127.0.0.1", 3260);
        disk(&sys, "5:0:0:0", "sdc", "naa.6001405aa");
        r.runner.expect(
            "iscsiadm -m node -T iqn.2024-01.dev.moor.lab:plain -p 127.0.0.1:3260 -I default --logout",
            0,
            "",
        );
        r.driver.detach(&r.host, &rec.recorded()).unwrap();
        assert_eq!(
            std::fs::read_to_string(sys.join("block/sdc/device/delete")).unwrap(),
            "1"
        );
        assert!(r.runner.remaining().is_empty());
    }

    #[test]
    fn options_are_validated_and_named() {
        let d = IscsiDriver::default();
        let spec = d
            .volume(
                &node(),
                &opts(&[("portals", r#"["127.0.0.1:3261","127.0.0.1:3260"]"#)]),
            )
            .unwrap();
        let t = target(&spec.state);
        let portals: Vec<String> = t.portals.iter().map(Portal::arg).collect();
        assert_eq!(portals, ["127.0.0.1:3260", "127.0.0.1:3261"]);
        assert_eq!(t.iface, "default");
        assert!(spec.key.starts_with("iscsi-"));
        let err = |o: VolumeOptions| d.volume(&node(), &o).unwrap_err().to_string();
        assert!(err(opts(&[("lun", "x")])).contains("option lun=x"));
        assert!(err(opts(&[("iqn", "../etc")])).contains("option iqn"));
        assert!(err(opts(&[("chapAuthSession", "true")])).contains("node.session.auth.username"));
        assert!(err(opts(&[("targetportal", "x")])).contains("unknown option targetportal"));
    }

    #[test]
    fn chap_goes_to_the_private_record_never_to_argv() {
        let r = rig();
        let mut o = opts(&[("chapAuthSession", "true")]);
        o.secrets.insert(
            "node.session.auth.username".into(),
            Secret(b"lab-user".to_vec()),
        );
        o.secrets.insert(
            "node.session.auth.password".into(),
            Secret(b"TOPSECRET".to_vec()),
        );
        let spec = r.driver.volume(&node(), &o).unwrap();
        let rec = r
            .driver
            .iscsi_dir
            .join(format!("nodes/{IQN}/127.0.0.1,3260,1/default"));
        std::fs::create_dir_all(rec.parent().unwrap()).unwrap();
        std::fs::write(
            &rec,
            // An earlier volume of this target asked for another initiator name.
            format!(
                "node.name = {IQN}\nnode.session.auth.authmethod = None\niface.initiatorname = iqn.2024-01.dev.moor.lab:earlier\n"
            ),
        )
        .unwrap();
        let p = "-T iqn.2024-01.dev.moor.lab:plain -p 127.0.0.1:3260 -I default";
        r.runner
            .expect("iscsiadm -m discoverydb -t sendtargets -p 127.0.0.1:3260 -I default --discover -o new -o update", 0, "")
            .expect(&format!("iscsiadm -m node {p} --login"), iscsiadm::ERR_LOGIN_AUTH_FAILED, "");
        let e = r.driver.attach(&r.host, &spec, &o).unwrap_err();
        assert_eq!(e.reason(), "auth_failed", "{e}");
        assert!(
            e.to_string().contains("CHAP authentication at login")
                && e.to_string()
                    .contains("node.session.auth.username/password"),
            "{e}"
        );
        assert!(r.runner.remaining().is_empty());
        for c in r.runner.calls() {
            assert!(
                !c.display().contains("TOPSECRET")
                    && !format!("{:?}", c.args).contains("TOPSECRET")
            );
        }
        let text = std::fs::read_to_string(&rec).unwrap();
        assert!(
            text.contains("node.session.auth.authmethod = CHAP\n"),
            "{text}"
        );
        assert!(
            text.contains("node.session.auth.password = TOPSECRET\n"),
            "{text}"
        );
        // Set in the same write: no boot-time login, no scan of every LUN.
        assert!(text.contains("node.startup = manual\n"), "{text}");
        assert!(text.contains("node.session.scan = manual\n"), "{text}");
        // This volume names none: the node's own name is used, not the earlier volume's.
        assert!(!text.contains("iface.initiatorname"), "{text}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&rec).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!format!("{spec:?}").contains("TOPSECRET"));
    }

    #[test]
    fn existing_session_scans_one_lun_and_detach_deletes_then_logs_out() {
        let r = rig();
        let sys = r.host.paths.sys.clone();
        session(&sys, 3, 5, "127.0.0.1", 3260);
        disk(&sys, "5:0:0:0", "sdc", "naa.6001405aa");
        let o = opts(&[]);
        let spec = r.driver.volume(&node(), &o).unwrap();
        let a = r.driver.attach(&r.host, &spec, &o).unwrap();
        assert_eq!(a.device, Some(r.host.paths.dev.join("sdc")));
        assert_eq!(target(&a.state).wwid.as_deref(), Some("naa.6001405aa"));
        assert_eq!(
            std::fs::read_to_string(sys.join("class/scsi_host/host5/scan")).unwrap(),
            "- - 0"
        );
        assert!(
            r.runner.calls().is_empty(),
            "no login when the session exists"
        );

        // Another volume's LUN 1 on the same session keeps the session.
        disk(&sys, "5:0:0:1", "sdd", "naa.6001405bb");
        let rec = unstaging(&spec.key, a.device.clone(), a.state.clone());
        r.driver.detach(&r.host, &rec.recorded()).unwrap();
        assert_eq!(
            std::fs::read_to_string(sys.join("block/sdc/device/delete")).unwrap(),
            "1"
        );
        assert_eq!(
            std::fs::read_to_string(sys.join("block/sdd/device/delete")).unwrap(),
            ""
        );
        assert!(r.runner.calls().is_empty(), "session kept for LUN 1");

        std::fs::remove_dir_all(sys.join("bus/scsi/devices/5:0:0:1")).unwrap();
        r.runner.expect(
            "iscsiadm -m node -T iqn.2024-01.dev.moor.lab:plain -p 127.0.0.1:3260 -I default --logout",
            0,
            "",
        );
        r.driver.detach(&r.host, &rec.recorded()).unwrap();
        assert!(r.runner.remaining().is_empty());
        drop(r.tmp);
    }

    #[test]
    fn a_lun_with_another_wwid_is_not_deleted() {
        let r = rig();
        let sys = r.host.paths.sys.clone();
        session(&sys, 1, 2, "127.0.0.1", 3260);
        disk(&sys, "2:0:0:0", "sdb", "naa.6001405ff");
        let spec = r.driver.volume(&node(), &opts(&[])).unwrap();
        let recorded = IscsiTarget {
            wwid: Some("naa.6001405aa".into()),
            ..target(&spec.state)
        };
        let mut rec = unstaging(&spec.key, None, Some(VolumeState::Iscsi(recorded)));
        rec.phase = StagePhase::Staging;
        r.driver.detach(&r.host, &rec.recorded()).unwrap();
        assert_eq!(
            std::fs::read_to_string(sys.join("block/sdb/device/delete")).unwrap(),
            ""
        );
    }
}
