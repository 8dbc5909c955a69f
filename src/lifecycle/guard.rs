//! Every unmount the lifecycle does goes through [`Lifecycle::unmount_guarded`]: it gathers
//! the facts now (what is mounted on the held directory, its mount id, the record) and asks
//! the one pure decision, [`super::owned::may_unmount`]; a refusal is `not_owned` and the
//! record stays.

use std::path::Path;

use super::*;
use crate::error::Error;
use crate::host::mounts::is_dead_mount_error;
use crate::host::{Errno, PathMount, Target};
use crate::journal::MountId;
use owned::{Found, Place, UnmountFacts, Verdict};

impl Lifecycle {
    /// What is mounted on a held target now.
    pub(super) fn found_at(&self, t: &Target) -> Result<Found, Error> {
        match self.host.mounts.target_mount(t) {
            Ok(m) if m.is_mount_root => Ok(Found::Mount(m)),
            Ok(_) => Ok(Found::Nothing),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Found::Nothing),
            Err(e) if is_dead_mount_error(&e) => Ok(Found::Dead),
            Err(source) => Err(Error::Io {
                what: "statx",
                path: t.path().into(),
                source,
            }),
        }
    }

    /// The facts [`owned::may_unmount`] decides on, gathered now.
    pub(super) fn unmount_facts<'a>(
        &self,
        t: &'a Target,
        place: Place,
        recorded: bool,
        mount_id: Option<MountId>,
        stage_path: Option<&Path>,
    ) -> Result<UnmountFacts<'a>, Error> {
        let found = self.found_at(t)?;
        let stage_now = match (place, mount_id, stage_path) {
            (Place::PodDir, None, Some(sp)) => self.host.mounts.path_mount(sp).ok().map(|m| {
                // A raw block publish binds a device node, which is never a mount root
                // itself: the node stands for the stage, and its filesystem (devtmpfs) is
                // what a bind of it shows.
                let node = std::fs::metadata(sp).is_ok_and(|md| {
                    use std::os::unix::fs::FileTypeExt;
                    md.file_type().is_block_device()
                });
                PathMount {
                    is_mount_root: m.is_mount_root || node,
                    ..m
                }
            }),
            _ => None,
        };
        Ok(UnmountFacts {
            path: t.path(),
            place,
            recorded,
            mount_id,
            found,
            stage_now,
        })
    }

    /// Every unmount moor does goes through here: it unmounts what is on `t` only when the
    /// ownership decision says it is moor's, and answers `not_owned` otherwise (the record
    /// stays). Returns whether something was unmounted.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn unmount_guarded(
        &self,
        t: &Target,
        place: Place,
        key: &str,
        recorded: bool,
        mount_id: Option<MountId>,
        stage_path: Option<&Path>,
        lazy: bool,
    ) -> Result<bool, Error> {
        let facts = self.unmount_facts(t, place, recorded, mount_id, stage_path)?;
        match owned::may_unmount(&facts) {
            Ok(Verdict::NothingMounted) => Ok(false),
            Ok(Verdict::Unmount) => {
                let lazy = lazy || facts.found == Found::Dead;
                match self
                    .host
                    .mounter
                    .unmount_target(t, lazy, self.timeouts.unmount)
                {
                    Ok(()) => Ok(true),
                    Err(e) if e.errno() == Some(Errno::EINVAL) => Ok(false),
                    Err(e) => Err(Self::mount_err(key)(e)),
                }
            }
            Err(refusal) => {
                tracing::warn!(volume = key, target = %t.path().display(), refusal = %refusal, "not unmounting a mount moor did not make");
                Err(Error::NotOwned {
                    target: t.path().into(),
                    detail: refusal.to_string(),
                })
            }
        }
    }

    /// True when the ownership decision would let moor unmount what is on `t`: the mount
    /// there is the one moor recorded.
    pub(super) fn owns(
        &self,
        t: &Target,
        place: Place,
        mount_id: Option<MountId>,
        stage_path: Option<&Path>,
    ) -> bool {
        self.unmount_facts(t, place, true, mount_id, stage_path)
            .is_ok_and(|f| owned::may_unmount(&f) == Ok(Verdict::Unmount))
    }

    /// Refuses with `not_owned` when the stage's mount is not the one moor made: checked
    /// before the last pod's bind goes, so a refused unstage leaves the whole volume as it
    /// was and kubelet's retry can finish it once the other mount is gone.
    pub(super) fn check_stage_owned(&self, key: &str) -> Result<(), Error> {
        let Some(rec) = self.state().stages.get(key).cloned() else {
            return Ok(());
        };
        let Some(t) = self.open_target(&self.stage_path(&rec.driver, key), false)? else {
            return Ok(());
        };
        let facts = self.unmount_facts(&t, Place::Stage, true, rec.mount_id, None)?;
        owned::may_unmount(&facts)
            .map(drop)
            .map_err(|refusal| Error::NotOwned {
                target: t.path().into(),
                detail: refusal.to_string(),
            })
    }

    /// The identity of the mount on a held target now (right after moor made it).
    pub(super) fn mount_id_at(&self, t: &Target) -> Option<MountId> {
        match self.found_at(t) {
            Ok(Found::Mount(m)) => Some(m.into()),
            _ => None,
        }
    }

    pub(super) fn mount_id_of_path(&self, path: &Path) -> Option<MountId> {
        let t = self.open_target(path, false).ok().flatten()?;
        self.mount_id_at(&t)
    }
}
