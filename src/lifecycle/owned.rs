//! The one decision that guards every unmount moor does: facts in, "unmount" or a named
//! refusal out, no I/O (the never-wipe rule's shape, `local::wipe::check_wipe`).
//!
//! Invariant: moor unmounts a path only when its record says it made a mount there and the
//! mount on top of the path now is that mount, told apart by mount id (with the device):
//! never by the device alone, since a foreign bind of the same filesystem has the same
//! device. A refusal never changes a record, so once the foreign mount is gone a later call
//! still removes moor's own.

use std::path::{Path, PathBuf};

use crate::host::PathMount;
use crate::journal::MountId;

/// Which of moor's directories the path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// `<kubelet>/plugins/moor/<driver>/<key>`.
    Stage,
    /// `<kubelet>/pods/<uid>/volumes/moor~<driver>/<name>`.
    PodDir,
}

/// What is at the path now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Not a mount root, or no such directory.
    Nothing,
    /// A network or FUSE mount whose server or client is gone: it cannot say its id.
    Dead,
    /// A live mount on top of the path.
    Mount(PathMount),
}

/// The facts of one unmount.
#[derive(Debug, Clone, Copy)]
pub struct UnmountFacts<'a> {
    /// The path.
    pub path: &'a Path,
    /// Stage or pod directory.
    pub place: Place,
    /// moor has a record of a mount here (any phase).
    pub recorded: bool,
    /// The mount moor made there, as recorded; `None` for a record written before moor
    /// recorded mount ids, or a step interrupted between the mount and its record.
    pub mount_id: Option<MountId>,
    /// What is on the path now.
    pub found: Found,
    /// For a pod dir with no recorded mount id: the stage mount it binds, now.
    pub stage_now: Option<PathMount>,
}

/// Go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Unmount what is on the path.
    Unmount,
    /// Nothing is mounted there: nothing to do.
    NothingMounted,
}

/// Why moor leaves a mount alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No record at all.
    #[error("{path} is mounted, but moor has no record of mounting anything there")]
    NoRecord {
        /// The path.
        path: PathBuf,
    },
    /// A record, but another mount is on top now.
    #[error(
        "the mount at {path} now (mount id {found}, device {}:{}) is not the one moor made there (mount id {ours}, device {}:{}); remove the other mount first",
        .found_dev.0, .found_dev.1, .ours_dev.0, .ours_dev.1
    )]
    NotMoors {
        /// The path.
        path: PathBuf,
        /// The mount id there now.
        found: u64,
        /// Its device.
        found_dev: (u32, u32),
        /// The mount id moor recorded.
        ours: u64,
        /// The device moor recorded.
        ours_dev: (u32, u32),
    },
    /// An old record without a mount id, and the mount is not of the stage's filesystem.
    #[error(
        "the mount at {path} is not a bind of the stage moor recorded for it (no mount id recorded, and its device differs or the stage is gone)"
    )]
    NotTheStage {
        /// The path.
        path: PathBuf,
    },
}

/// May moor unmount what is at `f.path`?
pub fn may_unmount(f: &UnmountFacts<'_>) -> Result<Verdict, Refusal> {
    let path = || f.path.to_path_buf();
    let now = match f.found {
        Found::Nothing => return Ok(Verdict::NothingMounted),
        _ if !f.recorded => return Err(Refusal::NoRecord { path: path() }),
        // A dead share under a path moor's record owns: it cannot be asked, and leaving it
        // would strand the pod; only moor mounts in moor's own directories.
        Found::Dead => return Ok(Verdict::Unmount),
        Found::Mount(m) => m,
    };
    match f.mount_id {
        // 32-bit ids are reused as soon as a mount is gone, so where the kernel has no
        // unique ids the device must match too; a unique id is compared as it is.
        Some(ours)
            if ours.id == now.mount_id && ours.unique == now.id_unique && ours.dev == now.dev =>
        {
            Ok(Verdict::Unmount)
        }
        Some(ours) => Err(Refusal::NotMoors {
            path: path(),
            found: now.mount_id,
            found_dev: now.dev,
            ours: ours.id,
            ours_dev: ours.dev,
        }),
        // The stage dir is named by the volume key moor owns: what an interrupted stage of
        // this key left there is moor's.
        None if f.place == Place::Stage => Ok(Verdict::Unmount),
        None => match f.stage_now {
            Some(s) if s.is_mount_root && s.dev == now.dev => Ok(Verdict::Unmount),
            _ => Err(Refusal::NotTheStage { path: path() }),
        },
    }
}

/// What reconstruction does with a recorded mount id (see [`rekey`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rekey {
    /// The id is valid here: nothing to do.
    Keep,
    /// The id was read in another mount namespace; this is the same mount's id here.
    Replace(MountId),
    /// The id was read in another mount namespace and the mount cannot be told apart here:
    /// the record keeps its id, so every unmount of it is refused, with this reason.
    Ambiguous(String),
}

/// A mount id means something only in the mount namespace it was read in: a DaemonSet's
/// next pod sees moor's mounts (propagated to the host and back) under other ids. The mount
/// moor made is the one at its path now only when exactly one mount stands there
/// (`stacked`) and it is of the recorded device; then its id here (`now`) replaces the old
/// one. Records of earlier versions (no namespace) were written in this one.
pub fn rekey(
    recorded: MountId,
    current_ns: Option<u64>,
    stacked: usize,
    now: Option<MountId>,
) -> Rekey {
    match (recorded.ns, current_ns) {
        (Some(then), Some(here)) if then != here => {}
        _ => return Rekey::Keep,
    }
    match now {
        // Nothing mounted: reconstruction deals with it as with any vanished mount.
        None => Rekey::Keep,
        Some(m) if stacked == 1 && m.dev == recorded.dev => Rekey::Replace(m),
        Some(m) if m.dev != recorded.dev => Rekey::Ambiguous(format!(
            "the mount there now is of device {}:{}, moor mounted device {}:{} (in another mount namespace)",
            m.dev.0, m.dev.1, recorded.dev.0, recorded.dev.1
        )),
        Some(_) => Rekey::Ambiguous(format!(
            "{stacked} mounts are stacked there and moor's was recorded in another mount namespace; unmount the others, then restart moor"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(id: u64, dev: (u32, u32)) -> PathMount {
        PathMount {
            is_mount_root: true,
            mount_id: id,
            id_unique: true,
            dev,
        }
    }

    fn ours(id: u64, dev: (u32, u32)) -> Option<MountId> {
        Some(MountId {
            id,
            unique: true,
            dev,
            ns: None,
        })
    }

    fn facts(place: Place, mount_id: Option<MountId>, found: Found) -> UnmountFacts<'static> {
        UnmountFacts {
            path: Path::new("/k/pods/u/volumes/moor~local/v"),
            place,
            recorded: true,
            mount_id,
            found,
            stage_now: None,
        }
    }

    #[test]
    fn moors_own_mount_is_unmounted_in_both_places() {
        for place in [Place::Stage, Place::PodDir] {
            let f = facts(place, ours(7, (7, 0)), Found::Mount(mount(7, (7, 0))));
            assert_eq!(may_unmount(&f), Ok(Verdict::Unmount));
        }
    }

    #[test]
    fn a_foreign_mount_of_the_same_filesystem_stacked_on_top_is_refused() {
        for place in [Place::Stage, Place::PodDir] {
            let f = facts(place, ours(7, (7, 0)), Found::Mount(mount(9, (7, 0))));
            let err = may_unmount(&f).unwrap_err();
            assert!(
                matches!(
                    err,
                    Refusal::NotMoors {
                        found: 9,
                        ours: 7,
                        ..
                    }
                ),
                "{err}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains("mount id 9") && msg.contains("mount id 7"),
                "{msg}"
            );
            assert!(!msg.contains("no record"), "{msg}");
        }
    }

    #[test]
    fn a_reused_32_bit_id_on_another_device_is_refused() {
        let old = Some(MountId {
            id: 40,
            unique: false,
            dev: (7, 0),
            ns: None,
        });
        let mut now = mount(40, (0, 55));
        now.id_unique = false;
        let f = facts(Place::PodDir, old, Found::Mount(now));
        assert!(matches!(may_unmount(&f), Err(Refusal::NotMoors { .. })));
        // The same id and device: moor's.
        now.dev = (7, 0);
        let f = facts(Place::PodDir, old, Found::Mount(now));
        assert_eq!(may_unmount(&f), Ok(Verdict::Unmount));
        // A unique id is never confused with a 32-bit one of the same value.
        let f = facts(Place::PodDir, ours(40, (7, 0)), Found::Mount(now));
        assert!(matches!(may_unmount(&f), Err(Refusal::NotMoors { .. })));
    }

    #[test]
    fn no_record_is_refused_and_says_so() {
        let mut f = facts(Place::PodDir, None, Found::Mount(mount(3, (7, 0))));
        f.recorded = false;
        let err = may_unmount(&f).unwrap_err();
        assert!(matches!(err, Refusal::NoRecord { .. }));
        assert!(err.to_string().contains("no record"));
        f.found = Found::Dead;
        assert!(matches!(may_unmount(&f), Err(Refusal::NoRecord { .. })));
    }

    #[test]
    fn nothing_mounted_is_nothing_to_do_record_or_not() {
        for recorded in [true, false] {
            let mut f = facts(Place::PodDir, ours(1, (7, 0)), Found::Nothing);
            f.recorded = recorded;
            assert_eq!(may_unmount(&f), Ok(Verdict::NothingMounted));
        }
    }

    #[test]
    fn a_dead_share_moor_recorded_is_detached() {
        for place in [Place::Stage, Place::PodDir] {
            let f = facts(place, ours(1, (0, 60)), Found::Dead);
            assert_eq!(may_unmount(&f), Ok(Verdict::Unmount));
        }
    }

    #[test]
    fn old_records_without_an_id_fall_back_to_the_stage() {
        // A stage dir is the key's own: an interrupted stage's leftover is moor's.
        let f = facts(Place::Stage, None, Found::Mount(mount(5, (7, 0))));
        assert_eq!(may_unmount(&f), Ok(Verdict::Unmount));
        // A pod dir: only a bind of the stage's filesystem.
        let mut f = facts(Place::PodDir, None, Found::Mount(mount(5, (7, 0))));
        f.stage_now = Some(mount(4, (7, 0)));
        assert_eq!(may_unmount(&f), Ok(Verdict::Unmount));
        f.stage_now = Some(mount(4, (8, 0)));
        assert!(matches!(may_unmount(&f), Err(Refusal::NotTheStage { .. })));
        f.stage_now = None;
        assert!(matches!(may_unmount(&f), Err(Refusal::NotTheStage { .. })));
    }

    fn mid(id: u64, dev: (u32, u32), ns: Option<u64>) -> MountId {
        MountId {
            id,
            unique: true,
            dev,
            ns,
        }
    }

    #[test]
    fn an_id_from_this_namespace_or_an_older_record_is_kept() {
        let here = Some(7);
        for recorded in [mid(10, (8, 1), Some(7)), mid(10, (8, 1), None)] {
            let now = Some(mid(99, (8, 1), here));
            assert_eq!(rekey(recorded, here, 1, now), Rekey::Keep);
        }
        // This daemon cannot read its own namespace: nothing to compare, nothing changes.
        assert_eq!(
            rekey(
                mid(10, (8, 1), Some(3)),
                None,
                1,
                Some(mid(99, (8, 1), None))
            ),
            Rekey::Keep
        );
    }

    #[test]
    fn an_id_from_another_namespace_is_replaced_only_when_the_mount_is_unambiguous() {
        let (then, here) = (mid(179, (254, 0), Some(3)), Some(7));
        let now = mid(319, (254, 0), here);
        assert_eq!(rekey(then, here, 1, Some(now)), Rekey::Replace(now));
        // Nothing mounted there: left to reconstruction.
        assert_eq!(rekey(then, here, 0, None), Rekey::Keep);
        // A foreign mount of the same filesystem stacked on moor's: cannot tell which.
        assert!(
            matches!(rekey(then, here, 2, Some(now)), Rekey::Ambiguous(r) if r.contains("2 mounts"))
        );
        // Another device at the path: not moor's, whatever the count.
        let other = mid(320, (8, 16), here);
        assert!(
            matches!(rekey(then, here, 1, Some(other)), Rekey::Ambiguous(r) if r.contains("8:16"))
        );
    }
}
