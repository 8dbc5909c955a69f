//! Credential files: the only way a secret leaves moor's memory. Each volume's files live in
//! `<run_dir>/secrets/<key>/` (tmpfs: gone with the boot), the directories 0700, the files
//! 0600, written under a temporary name and renamed, so a reader sees all or nothing.
//! Removal takes plain files only and never follows a link or descends.

use std::fs::DirBuilder;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The private directory for one volume's credential files.
pub fn secret_dir(run_dir: &Path, key: &str) -> PathBuf {
    run_dir.join("secrets").join(key)
}

fn private_dir(p: &Path) -> std::io::Result<()> {
    DirBuilder::new().mode(0o700).recursive(true).create(p)?;
    let md = std::fs::symlink_metadata(p)?;
    if !md.is_dir() {
        return Err(std::io::Error::other(format!(
            "{} is not a directory",
            p.display()
        )));
    }
    // A directory left by an older run with wider permissions is tightened, not trusted.
    if md.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Writes `bytes` to `<dir>/<name>` (0600) and returns its path.
pub fn write_secret(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    if let Some(parent) = dir.parent() {
        private_dir(parent)?;
    }
    private_dir(dir)?;
    let path = dir.join(name);
    crate::host::records::replace_private_file(&path, bytes)?;
    Ok(path)
}

/// Removes the plain files in `dir` and then `dir`. Missing is success.
pub fn remove_secrets(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        if e.file_type()?.is_file() || e.file_type()?.is_symlink() {
            std::fs::remove_file(e.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn files_are_private_and_removed() {
        let run = tempfile::tempdir().unwrap();
        let dir = secret_dir(run.path(), "cephfs-x");
        let p = write_secret(&dir, "secret", b"AQD...==").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"AQD...==");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        assert_eq!(
            std::fs::metadata(dir.parent().unwrap()).unwrap().mode() & 0o777,
            0o700
        );
        // Rewriting replaces; removing takes the directory too; again is fine.
        write_secret(&dir, "secret", b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        remove_secrets(&dir).unwrap();
        assert!(!dir.exists());
        remove_secrets(&dir).unwrap();
    }

    #[test]
    fn a_wide_directory_is_tightened() {
        let run = tempfile::tempdir().unwrap();
        let dir = secret_dir(run.path(), "k");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        write_secret(&dir, "s", b"x").unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    }
}
