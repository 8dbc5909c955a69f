//! Growing a staged filesystem after its backend grew: FlexVolume `expandfs`, which kubelet
//! calls (NodeExpand) on the node that has the volume mounted, once the claim's new size is
//! on the PV. Without it kubelet falls back to its generic resize with an empty device path,
//! which fails, and the claim stays in `FileSystemResizePending`.
//!
//! Invariants:
//! - only a filesystem moor staged and still has mounted read-write is grown, under the
//!   volume's lock (the executor takes it);
//! - the kernel is asked for the device's new size first (SCSI `device/rescan` on every
//!   path, `multipathd resize map`, a loop device's capacity, RBD's header `refresh`); a
//!   device still smaller than the claim asks is an error kubelet retries, and nothing is
//!   grown by half;
//! - the grow tools only grow (resize2fs, xfs_growfs, btrfs resize max): never a shrink,
//!   never a format;
//! - a share or a directory has no filesystem of its own to grow: success, nothing done.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Lifecycle;
use crate::error::{Error, ExpandError};
use crate::fs::mkfs::{grow_command, is_ext};
use crate::host::Cmd;
use crate::journal::{StagePhase, StageSource};
use crate::volume::CapacityError;

/// `<linux/capability.h>`: what EXT4_IOC_RESIZE_FS asks of its caller.
const CAP_SYS_RESOURCE: u32 = 24;

/// Whether this process has capability `cap` in its effective set (`CapEff` of
/// `<proc>/self/status`); unreadable counts as yes, so the tool reports for itself.
fn has_effective_cap(proc: &Path, cap: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(proc.join("self/status")) else {
        return true;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_none_or(|mask| mask & (1 << cap) != 0)
}

/// An online grow of a large filesystem writes new group descriptors: minutes, not hours.
const GROW_TIMEOUT: Duration = Duration::from_secs(600);

/// An [`ExpandError::Io`] maker for `map_err`.
fn io_err(
    key: &str,
    what: &'static str,
    path: PathBuf,
) -> impl FnOnce(std::io::Error) -> ExpandError {
    let volume = key.to_owned();
    move |source| ExpandError::Io {
        volume,
        what,
        path,
        source,
    }
}

impl Lifecycle {
    /// The volume key of PV `pv` of `driver`, found through the pods that use it here
    /// (kubelet names a PV's pod volume directory after the PV): kubelet's `expandfs`
    /// carries the PV's options but no secrets, so the key cannot always be derived from
    /// them the way `mount` does.
    pub fn key_of_pv(&self, driver: &str, pv: &str) -> Result<String, Error> {
        let driver = self.driver(driver)?;
        let st = self.state();
        st.publishes
            .values()
            .find(|p| p.driver == driver.name() && p.volume_name == pv)
            .map(|p| p.key.clone())
            .ok_or_else(|| {
                ExpandError::NotMounted {
                    driver: driver.name().into(),
                    pv: pv.into(),
                }
                .into()
            })
    }

    /// Has the kernel learn `device`'s new size the protocol's way (a SCSI rescan, a
    /// multipath resize, an RBD header refresh, a loop device's file size); returns its size
    /// before and after.
    pub(super) fn refresh_size(
        &self,
        key: &str,
        driver: &str,
        device: &Path,
    ) -> Result<(u64, u64), Error> {
        let io = |what, path: &Path| io_err(key, what, path.to_owned());
        let dev = self
            .host
            .blockdev
            .dev_num(device)
            .map_err(io("stat", device))?
            .ok_or_else(|| io("stat", device)(std::io::Error::other("not a block device")))?;
        let before = self
            .host
            .blockdev
            .size_bytes(dev)
            .map_err(io("read the size of", device))?;
        if let Some(name) = self.host.blockdev.kernel_name(dev) {
            // The protocol knows how its device learns a new size (a SCSI rescan, a
            // multipath resize, an RBD header refresh, a loop device's file size).
            self.driver(driver)?
                .refresh_capacity(&self.host, &name)
                .map_err(|e| match e {
                    CapacityError::Io { what, path, source } => ExpandError::Io {
                        volume: key.into(),
                        what,
                        path,
                        source,
                    },
                    CapacityError::Command { source } => ExpandError::Command {
                        volume: key.into(),
                        source,
                    },
                })?;
        }
        let size = self
            .host
            .blockdev
            .size_bytes(dev)
            .map_err(io("read the size of", device))?;
        Ok((before, size))
    }

    /// Grows the staged filesystem of `key` to its device's size, after checking that the
    /// device holds at least `want` bytes (0: no check). Returns what was done, for the log.
    pub fn expand(&self, key: &str, want: u64) -> Result<String, Error> {
        let rec = self
            .state()
            .stages
            .get(key)
            .filter(|s| s.phase == StagePhase::Staged)
            .cloned();
        let Some(rec) = rec else {
            return Err(Error::Internal(format!(
                "volume {key}: used by a pod but not staged"
            )));
        };
        let device = match &rec.source {
            StageSource::Block { .. } | StageSource::Attached { .. } if rec.adopted => {
                return Err(ExpandError::Adopted { volume: key.into() }.into());
            }
            StageSource::Directory { .. } | StageSource::Remote(_) => {
                return Ok(format!(
                    "nothing to grow: a {} volume has no filesystem of its own",
                    rec.driver
                ));
            }
            StageSource::Block { device }
            | StageSource::Attached {
                device: Some(device),
            } => device.clone(),
            StageSource::Attached { device: None } => {
                return Err(Error::Internal(format!(
                    "volume {key}: staged, but its record names no device"
                )));
            }
        };
        if rec.read_only {
            return Err(ExpandError::ReadOnly { volume: key.into() }.into());
        }
        let stage = self.stage_path(&rec.driver, key);
        if !self.is_mount_point(&stage)? {
            return Err(Error::Internal(format!(
                "volume {key}: the stage {} is not mounted; kubelet's next mount heals it",
                stage.display()
            )));
        }
        let (before, size) = self.refresh_size(key, &rec.driver, &device)?;
        if size < want {
            return Err(ExpandError::DeviceTooSmall {
                volume: key.into(),
                device,
                size,
                want,
            }
            .into());
        }
        let fs_type = rec.fs_type.clone().unwrap_or_default();
        let Some((program, args)) = grow_command(&fs_type, &device, &stage) else {
            return Err(ExpandError::Unsupported {
                volume: key.into(),
                fs_type,
            }
            .into());
        };
        if is_ext(&fs_type) && !has_effective_cap(&self.host.paths.proc, CAP_SYS_RESOURCE) {
            // resize2fs would fail with a bare "Permission denied"; say what is missing.
            return Err(ExpandError::NoCapability { volume: key.into() }.into());
        }
        let cmd = Cmd::new(program).args(args).timeout(GROW_TIMEOUT);
        self.host
            .runner
            .run_ok(&cmd)
            .map_err(|source| ExpandError::Command {
                volume: key.into(),
                source,
            })?;
        tracing::info!(volume = key, device = %device.display(), fs_type, before, size, "filesystem grown");
        Ok(format!(
            "{fs_type} on {} grown to the device's {size} bytes (device was {before} bytes)",
            device.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_read_from_cap_eff() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("self")).unwrap();
        let status = |eff: &str| {
            std::fs::write(
                dir.path().join("self/status"),
                format!("Name:\tmoor\nCapInh:\t0000000000000000\nCapEff:\t{eff}\n"),
            )
            .unwrap();
        };
        status("000001ffffffffff");
        assert!(has_effective_cap(dir.path(), CAP_SYS_RESOURCE));
        status("000001fffeffffff");
        assert!(!has_effective_cap(dir.path(), CAP_SYS_RESOURCE));
        assert!(has_effective_cap(dir.path(), 0));
        std::fs::remove_file(dir.path().join("self/status")).unwrap();
        assert!(
            has_effective_cap(dir.path(), CAP_SYS_RESOURCE),
            "unknown: let the tool say"
        );
    }
}
