//! The never-format-data rule.
//!
//! [`ensure_filesystem`] is the only code in moor that runs mkfs. It formats only when all
//! of these hold, and otherwise refuses without writing a byte:
//! - the request is read-write;
//! - moor has never seen a filesystem on this volume (a known volume that now looks blank is
//!   a broken data path, not an empty disk);
//! - a low-level `blkid -p` probe found no signature of any kind (filesystem, swap, LUKS,
//!   LVM, RAID, partition table) and the probe itself was clear;
//! - the device was actually read, start and end, so "nothing found" is not "cannot read",
//!   and both ends hold only zeros, so data no probe recognises (a damaged superblock, a lone
//!   backup GPT) is not taken for blank;
//! - the kernel knows no partitions or holders on it, and an exclusive open succeeds (it is
//!   mounted nowhere and held by nothing);
//! - a second probe, right before mkfs, still finds nothing.
//!
//! mkfs then runs without any force flag, writing a UUID moor chose, and the new superblock
//! must carry that UUID before the device counts as formatted. A mount failure never leads
//! here: callers decide to format only from a probe, never from an error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::mkfs::{self, DEFAULT_FS, FORMATTABLE};
use super::probe::{self, Probe};
use super::superblock;
use crate::host::{BlockDevices, Cmd, Errno, ExecError, Host};

/// Deadline for one blkid probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline for mkfs (a large LUN with discard can take minutes).
const MKFS_TIMEOUT: Duration = Duration::from_secs(600);
/// Deadline for fsck in preen mode.
const FSCK_TIMEOUT: Duration = Duration::from_secs(600);

/// What to prepare.
#[derive(Debug, Clone)]
pub struct FormatRequest<'a> {
    /// Volume key, for messages.
    pub volume: &'a str,
    /// The block device.
    pub device: &'a Path,
    /// Requested filesystem (`kubernetes.io/fsType`); empty means ext4 when formatting,
    /// whatever is there when not.
    pub fs_type: &'a str,
    /// Read-only request: never formats.
    pub read_only: bool,
    /// The filesystem moor saw on this volume before (from the journal), if any.
    pub known: Option<&'a str>,
}

/// The device is ready to mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// It already held a filesystem, left untouched.
    Existing {
        /// Type to mount with.
        fs_type: String,
        /// Filesystem UUID.
        uuid: Option<String>,
    },
    /// It was blank and moor formatted it.
    Formatted {
        /// Type created.
        fs_type: String,
        /// New UUID.
        uuid: Option<String>,
    },
}

impl Prepared {
    /// The filesystem to mount.
    pub fn fs_type(&self) -> &str {
        match self {
            Prepared::Existing { fs_type, .. } | Prepared::Formatted { fs_type, .. } => fs_type,
        }
    }

    /// The filesystem UUID.
    pub fn uuid(&self) -> Option<&str> {
        match self {
            Prepared::Existing { uuid, .. } | Prepared::Formatted { uuid, .. } => uuid.as_deref(),
        }
    }
}

/// Why a device was not prepared. Every variant leaves the device untouched, except
/// `MkfsFailed` (mkfs itself failed on a blank device) and `FsckFailed`.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The probe could not run or gave an unclear answer.
    #[error("volume {volume}: cannot probe {device} ({detail}); not formatting")]
    ProbeFailed {
        /// Volume key.
        volume: String,
        /// Device.
        device: PathBuf,
        /// What happened.
        detail: String,
    },
    /// blkid found nothing but the device could not be read.
    #[error(
        "volume {volume}: {device} shows no signature but cannot be read ({error}); not formatting"
    )]
    Unreadable {
        /// Volume key.
        volume: String,
        /// Device.
        device: PathBuf,
        /// The read error.
        error: String,
    },
    /// A non-filesystem signature (partition table, swap, LUKS, LVM …).
    #[error("volume {volume}: {device} holds {found}; refusing to format or mount it")]
    SignaturePresent {
        /// Volume key.
        volume: String,
        /// Device.
        device: PathBuf,
        /// What was found.
        found: String,
    },
    /// A filesystem of another type than asked.
    #[error(
        "volume {volume}: {device} already holds {found}, but fsType {asked} was asked; not formatting"
    )]
    FsTypeMismatch {
        /// Volume key.
        volume: String,
        /// Device.
        device: PathBuf,
        /// Found type.
        found: String,
        /// Requested type.
        asked: String,
    },
    /// Blank, but the request is read-only.
    #[error(
        "volume {volume}: {device} holds no filesystem and the volume is read-only; not formatting"
    )]
    BlankReadOnly {
        /// Volume key.
        volume: String,
        /// Device.
        device: PathBuf,
    },
    /// moor saw a filesystem on this volume before, and now sees none.
    #[error(
        "volume {volume}: {device} looks blank, but it held {known} before; refusing to format (check the data path)"
    )]
    KnownVolumeLooksBlank {
        /// Volume key.
        volume: String,
        /// Device.
        device: PathBuf,
        /// What moor saw before.
        known: String,
    },
    /// No signature, but the ends of the device are not zero.
    #[error(
        "volume {volume}: {device} shows no known signature but its first or last MiB is not zero: it may hold data no probe recognises (a damaged filesystem, a backup partition table); not formatting. To let moor format it, zero both ends (blkdiscard -z, or dd)"
    )]
    DataPresent {
        /// Volume key.
        volume: String,
        /// Device.
        device: PathBuf,
    },
    /// Partitions, holders or mounts on the device.
    #[error("volume {volume}: {device} is in use ({detail}); refusing to format or mount it")]
    InUse {
        /// Volume key.
        volume: String,
        /// Device.
        device: PathBuf,
        /// What uses it.
        detail: String,
    },
    /// A filesystem moor cannot create.
    #[error("volume {volume}: cannot create fsType {asked} (supported: {})", FORMATTABLE.join(", "))]
    Unsupported {
        /// Volume key.
        volume: String,
        /// Requested type.
        asked: String,
    },
    /// mkfs ran and failed.
    #[error("volume {volume}: `{cmdline}` failed ({}): {stderr}", crate::host::exec::exit_text(*code))]
    MkfsFailed {
        /// Volume key.
        volume: String,
        /// Redacted command line.
        cmdline: String,
        /// Exit code.
        code: Option<i32>,
        /// stderr tail.
        stderr: String,
    },
    /// fsck found errors it did not fix.
    #[error(
        "volume {volume}: `{cmdline}` found errors it could not fix ({}): {stderr}; run fsck by hand",
        crate::host::exec::exit_text(*code)
    )]
    FsckFailed {
        /// Volume key.
        volume: String,
        /// Redacted command line.
        cmdline: String,
        /// Exit code.
        code: Option<i32>,
        /// stderr tail.
        stderr: String,
    },
    /// A tool could not be run.
    #[error("volume {volume}")]
    Exec {
        /// Volume key.
        volume: String,
        /// The failure.
        #[source]
        source: ExecError,
    },
}

impl FsError {
    /// Stable, low-cardinality reason label.
    pub fn reason(&self) -> &'static str {
        match self {
            FsError::ProbeFailed { .. } => "probe_failed",
            FsError::Unreadable { .. } => "device_unreadable",
            FsError::SignaturePresent { .. } => "signature_present",
            FsError::FsTypeMismatch { .. } => "fs_type_mismatch",
            FsError::BlankReadOnly { .. } => "blank_read_only",
            FsError::KnownVolumeLooksBlank { .. } => "known_volume_blank",
            FsError::InUse { .. } => "device_in_use",
            FsError::DataPresent { .. } => "data_present",
            FsError::Unsupported { .. } => "unsupported_fs_type",
            FsError::MkfsFailed { .. } => "mkfs_failed",
            FsError::FsckFailed { .. } => "fsck_failed",
            FsError::Exec {
                source: ExecError::NotFound { .. },
                ..
            } => "missing_binary",
            FsError::Exec {
                source: ExecError::Timeout { .. },
                ..
            } => "timeout",
            FsError::Exec { .. } => "exec_failed",
        }
    }
}

fn run_probe(host: &Host, req: &FormatRequest<'_>) -> Result<Probe, FsError> {
    let cmd = Cmd::new("blkid")
        .args(probe::probe_args(req.device))
        .timeout(PROBE_TIMEOUT);
    let out = host.runner.run(&cmd).map_err(|source| FsError::Exec {
        volume: req.volume.into(),
        source,
    })?;
    probe::interpret(out.code, &out.stdout_text(), &out.stderr_tail()).map_err(|e| {
        FsError::ProbeFailed {
            volume: req.volume.into(),
            device: req.device.into(),
            detail: e.to_string(),
        }
    })
}

/// Makes sure `req.device` carries a filesystem to mount, formatting it only when the rules
/// in the module header all hold. The one place moor runs mkfs.
pub fn ensure_filesystem(host: &Host, req: &FormatRequest<'_>) -> Result<Prepared, FsError> {
    let asked = if req.fs_type.is_empty() {
        DEFAULT_FS
    } else {
        req.fs_type
    };
    match run_probe(host, req)? {
        Probe::Superblock { kind, uuid } => return existing(req, asked, kind, uuid),
        found @ (Probe::PartitionTable { .. } | Probe::Ambivalent) => {
            return Err(FsError::SignaturePresent {
                volume: req.volume.into(),
                device: req.device.into(),
                found: found.describe(),
            });
        }
        Probe::NothingFound => {}
    }
    if req.read_only {
        return Err(FsError::BlankReadOnly {
            volume: req.volume.into(),
            device: req.device.into(),
        });
    }
    if let Some(known) = req.known {
        return Err(FsError::KnownVolumeLooksBlank {
            volume: req.volume.into(),
            device: req.device.into(),
            known: known.into(),
        });
    }
    if !FORMATTABLE.contains(&asked) {
        return Err(FsError::Unsupported {
            volume: req.volume.into(),
            asked: asked.into(),
        });
    }
    let ends = host
        .blockdev
        .read_ends(req.device)
        .map_err(|e| FsError::Unreadable {
            volume: req.volume.into(),
            device: req.device.into(),
            error: e.to_string(),
        })?;
    if !ends.all_zero {
        return Err(FsError::DataPresent {
            volume: req.volume.into(),
            device: req.device.into(),
        });
    }
    refuse_if_in_use(host, req)?;
    // The state may have changed while we looked (another agent, a slow udev): look again.
    if run_probe(host, req)? != Probe::NothingFound {
        return Err(FsError::InUse {
            volume: req.volume.into(),
            device: req.device.into(),
            detail: "a signature appeared between two probes".into(),
        });
    }
    let uuid = superblock::new_uuid().map_err(|e| FsError::ProbeFailed {
        volume: req.volume.into(),
        device: req.device.into(),
        detail: format!("no random UUID for mkfs: {e}"),
    })?;
    let Some((program, args)) = mkfs::mkfs_command(asked, req.device, &uuid) else {
        return Err(FsError::Unsupported {
            volume: req.volume.into(),
            asked: asked.into(),
        });
    };
    // Killed halfway, mkfs would leave a disk neither blank nor formatted.
    let cmd = Cmd::new(program)
        .args(args)
        .timeout(MKFS_TIMEOUT)
        .outlive_operation();
    tracing::info!(volume = req.volume, device = %req.device.display(), fs_type = asked, "formatting blank device");
    let out = host.runner.run(&cmd).map_err(|source| FsError::Exec {
        volume: req.volume.into(),
        source,
    })?;
    if !out.success() {
        return Err(FsError::MkfsFailed {
            volume: req.volume.into(),
            cmdline: cmd.display(),
            code: out.code,
            stderr: out.stderr_tail(),
        });
    }
    // mkfs said it succeeded: the superblock must now carry the UUID moor chose.
    match superblock::uuid(host.blockdev.as_ref(), req.device, asked) {
        Ok(Some(found)) if found == uuid => Ok(Prepared::Formatted {
            fs_type: asked.into(),
            uuid: Some(uuid),
        }),
        found => Err(FsError::ProbeFailed {
            volume: req.volume.into(),
            device: req.device.into(),
            detail: match found {
                Ok(Some(other)) => {
                    format!("after mkfs.{asked} the superblock has UUID {other}, not {uuid}")
                }
                Ok(None) => format!("after mkfs.{asked} no {asked} superblock is there"),
                Err(e) => format!("after mkfs.{asked} the superblock cannot be read: {e}"),
            },
        }),
    }
}

fn existing(
    req: &FormatRequest<'_>,
    asked: &str,
    kind: String,
    uuid: Option<String>,
) -> Result<Prepared, FsError> {
    let mountable = FORMATTABLE.contains(&kind.as_str())
        || matches!(kind.as_str(), "vfat" | "exfat" | "ntfs" | "f2fs");
    if !mountable {
        return Err(FsError::SignaturePresent {
            volume: req.volume.into(),
            device: req.device.into(),
            found: Probe::Superblock { kind, uuid }.describe(),
        });
    }
    let compatible =
        req.fs_type.is_empty() || kind == asked || (mkfs::is_ext(&kind) && mkfs::is_ext(asked));
    if !compatible {
        return Err(FsError::FsTypeMismatch {
            volume: req.volume.into(),
            device: req.device.into(),
            found: kind,
            asked: asked.into(),
        });
    }
    Ok(Prepared::Existing {
        fs_type: kind,
        uuid,
    })
}

fn refuse_if_in_use(host: &Host, req: &FormatRequest<'_>) -> Result<(), FsError> {
    let in_use = |detail: String| FsError::InUse {
        volume: req.volume.into(),
        device: req.device.into(),
        detail,
    };
    let dev = host
        .blockdev
        .dev_num(req.device)
        .map_err(|e| in_use(format!("cannot stat: {e}")))?
        .ok_or_else(|| in_use("not a block device".into()))?;
    let parts = host
        .blockdev
        .partitions(dev)
        .map_err(|e| in_use(format!("sysfs: {e}")))?;
    if !parts.is_empty() {
        return Err(in_use(format!("partitions {}", parts.join(", "))));
    }
    let holders = host
        .blockdev
        .holders(dev)
        .map_err(|e| in_use(format!("sysfs: {e}")))?;
    if !holders.is_empty() {
        return Err(in_use(format!("held by {}", holders.join(", "))));
    }
    exclusive(host.blockdev.as_ref(), req.volume, req.device)
}

/// Fails unless nothing holds `device` exclusively (no mount anywhere, no device-mapper or md
/// on top): checked before formatting, and before mounting an existing filesystem, so one
/// disk is never staged twice under two names.
pub fn check_exclusive(host: &Host, volume: &str, device: &Path) -> Result<(), FsError> {
    exclusive(host.blockdev.as_ref(), volume, device)
}

fn exclusive(devices: &dyn BlockDevices, volume: &str, device: &Path) -> Result<(), FsError> {
    devices.claim_exclusive(device).map_err(|e| {
        // Name the kernel's device too when the volume names it through a link (by-id …).
        let resolved = std::fs::canonicalize(device)
            .ok()
            .filter(|r| r != device)
            .map(|r| format!("{}: ", r.display()))
            .unwrap_or_default();
        FsError::InUse {
            volume: volume.into(),
            device: device.into(),
            detail: if e.raw_os_error() == Some(Errno::EBUSY as i32) {
                format!("{resolved}mounted or held by another user of the device")
            } else {
                format!("{resolved}cannot open it exclusively: {e}")
            },
        }
    })
}

/// Checks an ext filesystem before a read-write mount (`e2fsck -p`); other types check
/// themselves when mounted.
pub fn fsck(host: &Host, volume: &str, device: &Path, fs_type: &str) -> Result<(), FsError> {
    let Some((program, args)) = mkfs::fsck_command(fs_type, device) else {
        return Ok(());
    };
    let cmd = Cmd::new(program)
        .args(args)
        .timeout(FSCK_TIMEOUT)
        .outlive_operation();
    let out = host.runner.run(&cmd).map_err(|source| FsError::Exec {
        volume: volume.into(),
        source,
    })?;
    if mkfs::fsck_ok(out.code) {
        return Ok(());
    }
    Err(FsError::FsckFailed {
        volume: volume.into(),
        cmdline: cmd.display(),
        code: out.code,
        stderr: out.stderr_tail(),
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn exit_codes_read_as_an_operator_writes_them() {
        let fsck = FsError::FsckFailed {
            volume: "v".into(),
            cmdline: "e2fsck -p /dev/x".into(),
            code: Some(4),
            stderr: "bad".into(),
        };
        let mkfs = FsError::MkfsFailed {
            volume: "v".into(),
            cmdline: "mkfs.xfs /dev/x".into(),
            code: None,
            stderr: "".into(),
        };
        let exec = ExecError::Failed {
            cmdline: "blkid".into(),
            code: Some(2),
            stderr: "".into(),
        };
        let probe = super::super::probe::interpret(Some(4), "", "usage").unwrap_err();
        for (e, want) in [
            (fsck.to_string(), "(exit status 4)"),
            (mkfs.to_string(), "(killed by a signal)"),
            (exec.to_string(), "(exit status 2)"),
            (probe.to_string(), "blkid exit status 4"),
        ] {
            assert!(e.contains(want) && !e.contains("Some("), "{e}");
        }
    }
    use super::*;
    use crate::host::fake::{FakeHost, ScriptRunner};
    use crate::host::{DevNum, Output};
    use std::sync::Arc;

    fn host(runner: Arc<ScriptRunner>) -> Host {
        let mut f = FakeHost::new(Path::new("/fake-root"));
        f.host.runner = runner;
        f.host
    }

    const DEV: &str = "/dev/fake0";
    const BLKID: &str = "blkid -p -o export /dev/fake0";

    /// A fake host with a blank, readable 4 MiB disk at [`DEV`].
    fn with_disk() -> FakeHost {
        let f = FakeHost::new(Path::new("/fake-root"));
        f.disks.add(
            Path::new(DEV),
            DevNum {
                major: 8,
                minor: 16,
            },
            4 << 20,
        );
        f
    }

    fn mkfs_runs(r: &ScriptRunner) -> usize {
        r.calls()
            .iter()
            .filter(|c| c.program_name().starts_with("mkfs"))
            .count()
    }

    /// Blank and readable: probed, read, probed again right before mkfs, formatted once
    /// with the UUID moor chose, and that UUID is what the new superblock carries.
    #[test]
    fn a_blank_readable_device_is_formatted_once_after_a_second_probe() {
        let f = with_disk();
        f.runner.expect(BLKID, 2, "").expect(BLKID, 2, "");
        f.expect_mkfs_ext4(Path::new(DEV));
        let p = ensure_filesystem(&f.host, &req("ext4", false, None)).unwrap();
        let Prepared::Formatted { fs_type, uuid } = &p else {
            panic!("{p:?}");
        };
        assert_eq!(fs_type, "ext4");
        let calls: Vec<String> = f.runner.calls().iter().map(Cmd::display).collect();
        assert_eq!(calls.len(), 3, "{calls:?}");
        assert_eq!(calls[0], BLKID);
        assert_eq!(calls[1], BLKID, "probed again right before mkfs");
        assert_eq!(
            calls[2],
            format!("mkfs.ext4 -q -m0 -U {} {DEV}", uuid.as_deref().unwrap())
        );
        assert!(f.runner.remaining().is_empty());
    }

    /// Every "no" of the rule over a readable fake disk: the reason, and no mkfs.
    #[test]
    fn the_never_format_rule_holds_below_the_probe() {
        let blank = |_: &FakeHost| {};
        type Case<'a> = (
            &'a str,
            &'a dyn Fn(&FakeHost),
            &'a [(i32, &'a str)],
            bool,
            &'a str,
        );
        let cases: &[Case<'_>] = &[
            (
                "a signature",
                &blank,
                &[(0, "TYPE=swap\n")],
                false,
                "signature_present",
            ),
            (
                "a partition table",
                &blank,
                &[(0, "PTTYPE=gpt\n")],
                false,
                "signature_present",
            ),
            (
                "an ambivalent probe",
                &blank,
                &[(8, "")],
                false,
                "signature_present",
            ),
            (
                "a probe that did not answer",
                &blank,
                &[(4, "")],
                false,
                "probe_failed",
            ),
            ("read-only", &blank, &[(2, "")], true, "blank_read_only"),
            (
                "an unreadable device",
                &|f| {
                    f.disks
                        .edit(Path::new(DEV), |d| d.read_error = Some(Errno::EIO))
                },
                &[(2, "")],
                false,
                "device_unreadable",
            ),
            (
                "data no probe knows",
                &|f| f.disks.write_at(Path::new(DEV), (4 << 20) - 1, &[1]),
                &[(2, "")],
                false,
                "data_present",
            ),
            (
                "partitions",
                &|f| {
                    f.disks
                        .edit(Path::new(DEV), |d| d.partitions = vec!["fake0p1".into()])
                },
                &[(2, "")],
                false,
                "device_in_use",
            ),
            (
                "a holder",
                &|f| {
                    f.disks
                        .edit(Path::new(DEV), |d| d.holders = vec!["dm-0".into()])
                },
                &[(2, "")],
                false,
                "device_in_use",
            ),
            (
                "an exclusive user",
                &|f| f.disks.edit(Path::new(DEV), |d| d.busy = true),
                &[(2, "")],
                false,
                "device_in_use",
            ),
            (
                "a signature that appeared between the probes",
                &blank,
                &[(2, ""), (0, "TYPE=xfs\n")],
                false,
                "device_in_use",
            ),
        ];
        for (what, setup, probes, ro, reason) in cases {
            let f = with_disk();
            setup(&f);
            for (code, out) in *probes {
                f.runner.expect(BLKID, *code, out);
            }
            let e = ensure_filesystem(&f.host, &req("ext4", *ro, None)).unwrap_err();
            assert_eq!(e.reason(), *reason, "{what}: {e}");
            assert_eq!(mkfs_runs(&f.runner), 0, "{what}: mkfs ran");
            assert!(
                f.runner.remaining().is_empty(),
                "{what}: a probe did not run"
            );
            assert!(
                f.disks.data(Path::new(DEV)).unwrap()[..1 << 20]
                    .iter()
                    .all(|b| *b == 0),
                "{what}: the disk was written"
            );
        }
    }

    /// A probe killed before it answered (no exit status) is no "nothing found".
    #[test]
    fn a_probe_that_did_not_run_to_the_end_means_no_mkfs() {
        let f = with_disk();
        f.runner.expect_program("blkid", |_| Output {
            code: None,
            stdout: vec![],
            stderr: b"killed".to_vec(),
        });
        let e = ensure_filesystem(&f.host, &req("ext4", false, None)).unwrap_err();
        assert_eq!(e.reason(), "probe_failed");
        assert_eq!(mkfs_runs(&f.runner), 0);
    }

    /// mkfs said it succeeded but the superblock does not carry moor's UUID: not formatted.
    #[test]
    fn a_superblock_without_the_chosen_uuid_is_not_taken_for_formatted() {
        let f = with_disk();
        f.runner.expect(BLKID, 2, "").expect(BLKID, 2, "");
        f.runner.expect_program("mkfs.ext4", |_| Output {
            code: Some(0),
            stdout: vec![],
            stderr: vec![],
        });
        let e = ensure_filesystem(&f.host, &req("ext4", false, None)).unwrap_err();
        assert_eq!(e.reason(), "probe_failed");
        assert!(e.to_string().contains("no ext4 superblock"), "{e}");
        assert_eq!(mkfs_runs(&f.runner), 1);
    }

    fn req<'a>(fs: &'a str, ro: bool, known: Option<&'a str>) -> FormatRequest<'a> {
        FormatRequest {
            volume: "vol",
            device: Path::new("/dev/fake0"),
            fs_type: fs,
            read_only: ro,
            known,
        }
    }

    #[test]
    fn existing_filesystem_of_the_asked_type_is_kept() {
        let r = Arc::new(ScriptRunner::default());
        r.expect("blkid -p -o export /dev/fake0", 0, "TYPE=xfs\nUUID=u1\n");
        let p = ensure_filesystem(&host(r.clone()), &req("xfs", false, None)).unwrap();
        assert_eq!(
            p,
            Prepared::Existing {
                fs_type: "xfs".into(),
                uuid: Some("u1".into())
            }
        );
        assert!(r.remaining().is_empty());
    }

    #[test]
    fn other_filesystem_is_refused_not_formatted() {
        let r = Arc::new(ScriptRunner::default());
        r.expect("blkid -p -o export /dev/fake0", 0, "TYPE=ext4\n");
        let e = ensure_filesystem(&host(r.clone()), &req("xfs", false, None)).unwrap_err();
        assert_eq!(e.reason(), "fs_type_mismatch");
        assert!(
            r.calls()
                .iter()
                .all(|c| !c.program_name().starts_with("mkfs"))
        );
    }

    #[test]
    fn non_filesystem_signatures_are_refused() {
        for out in [
            "TYPE=swap\n",
            "TYPE=crypto_LUKS\n",
            "TYPE=LVM2_member\n",
            "PTTYPE=dos\n",
        ] {
            let r = Arc::new(ScriptRunner::default());
            r.expect("blkid -p -o export /dev/fake0", 0, out);
            let e = ensure_filesystem(&host(r), &req("ext4", false, None)).unwrap_err();
            assert_eq!(e.reason(), "signature_present", "{out}");
        }
    }

    #[test]
    fn blank_read_only_and_known_volumes_are_never_formatted() {
        let r = Arc::new(ScriptRunner::default());
        r.expect("blkid -p -o export /dev/fake0", 2, "");
        assert_eq!(
            ensure_filesystem(&host(r), &req("ext4", true, None))
                .unwrap_err()
                .reason(),
            "blank_read_only"
        );
        let r = Arc::new(ScriptRunner::default());
        r.expect("blkid -p -o export /dev/fake0", 2, "");
        let e = ensure_filesystem(&host(r), &req("ext4", false, Some("ext4 UUID 1"))).unwrap_err();
        assert_eq!(e.reason(), "known_volume_blank");
    }

    #[test]
    fn unclear_probe_is_refused() {
        let r = Arc::new(ScriptRunner::default());
        r.expect("blkid -p -o export /dev/fake0", 4, "");
        assert_eq!(
            ensure_filesystem(&host(r), &req("ext4", false, None))
                .unwrap_err()
                .reason(),
            "probe_failed"
        );
    }

    #[test]
    fn unreadable_blank_device_is_refused() {
        // /dev/fake0 does not exist: the probe's "nothing found" is not trusted.
        let r = Arc::new(ScriptRunner::default());
        r.expect("blkid -p -o export /dev/fake0", 2, "");
        let e = ensure_filesystem(&host(r.clone()), &req("ext4", false, None)).unwrap_err();
        assert_eq!(e.reason(), "device_unreadable");
        assert_eq!(r.calls().len(), 1);
    }
}
