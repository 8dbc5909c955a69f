//! Directories: made with a mode, removed with `rmdir` only, given to a group at the root.
//!
//! Invariants: nothing here removes recursively (the one recursive removal, a local-PV wipe,
//! is [`super::tree`], which never crosses a filesystem); a group change touches the root
//! of a volume only, never a walk, and only when it differs.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use super::target::Target;

/// A directory step failed: which one (`create`, `chmod`) and the OS error.
pub type DirError = (&'static str, std::io::Error);

/// Makes `path` (and missing parents) with `mode`, and gives an existing one that mode too.
pub fn private_dir(path: &Path, mode: u32) -> Result<(), DirError> {
    create_missing(path, mode)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| ("chmod", e))
}

/// Makes `path` and its missing parents with `mode`; an existing directory is left as it is.
pub fn create_missing(path: &Path, mode: u32) -> Result<(), DirError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|e| ("create", e))
}

/// `rmdir` of a held directory through its parent, never a recursive removal: a non-empty
/// or mounted directory stays (and that is only worth a debug line).
pub fn remove_empty(t: &Target) {
    match t.remove_dir() {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::debug!(path = %t.path().display(), error = %e, "directory left in place")
        }
    }
}

/// Gives the volume root to `gid` (group rwx + setgid, as kubelet's fsGroup does) only when
/// it differs: one chown/chmod of the root, never a recursive walk. Returns whether it changed.
pub fn give_root_to_group(root: &Path, gid: u32) -> std::io::Result<bool> {
    let md = std::fs::symlink_metadata(root)?;
    let wanted_bits = 0o2070;
    if md.gid() == gid && md.mode() & wanted_bits == wanted_bits {
        return Ok(false);
    }
    std::os::unix::fs::lchown(root, None, Some(gid))?;
    let mode = (md.mode() & 0o7777) | wanted_bits;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(mode))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[ignore = "needs root: it gives a directory a group the test user is not in (run-tests)"]
    fn fs_group_changes_only_the_root_and_only_once() {
        let t = tempfile::tempdir().unwrap();
        let sub = t.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let before = std::fs::metadata(&sub).unwrap().gid();
        assert!(give_root_to_group(t.path(), 4321).unwrap());
        let md = std::fs::metadata(t.path()).unwrap();
        assert_eq!(md.gid(), 4321);
        assert_eq!(md.mode() & 0o2070, 0o2070);
        assert_eq!(
            std::fs::metadata(&sub).unwrap().gid(),
            before,
            "no recursive walk"
        );
        assert!(
            !give_root_to_group(t.path(), 4321).unwrap(),
            "second time: nothing to do"
        );
    }

    #[test]
    fn a_private_dir_gets_its_mode_even_when_it_existed() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("a/b");
        private_dir(&p, 0o700).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&p), 0o700);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&p, 0o700).unwrap();
        assert_eq!(mode(&p), 0o700);
        create_missing(&p, 0o750).unwrap();
        assert_eq!(mode(&p), 0o700, "an existing directory is left as it is");
    }

    #[test]
    fn only_an_empty_directory_is_removed() {
        let t = tempfile::tempdir().unwrap();
        let full = t.path().join("full");
        std::fs::create_dir(&full).unwrap();
        std::fs::write(full.join("data"), "x").unwrap();
        remove_empty(&Target::by_path(&full));
        assert!(full.join("data").exists());
        let empty = t.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        remove_empty(&Target::by_path(&empty));
        assert!(!empty.exists());
        remove_empty(&Target::by_path(&empty));
    }
}
