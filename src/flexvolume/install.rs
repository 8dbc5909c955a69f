//! Installs the FlexVolume front end into kubelet's plugin dir (`moor install-flexvolume`):
//! what the DaemonSet's init container runs, since kubelet execs a FlexVolume driver on the
//! host, never in a container.
//!
//! Layout: the binary at `<plugin-dir>/.moor/moor`, and one driver directory per driver,
//! `moor~<driver>/<driver>` → `../.moor/moor` (the front end takes its driver from the name
//! it was run by). kubelet probes a driver directory as soon as it appears (fsnotify) and
//! may exec a driver at any moment, so nothing is ever written in place: the binary is
//! written and fsynced under a temporary name and renamed over the old one (an exec in
//! flight keeps the old inode; no ETXTBSY, no half-written file), a new driver directory is
//! built under a dot-name kubelet ignores and renamed into place, and an existing one gets
//! its link replaced by a rename. A `frontend.yaml` beside a driver (packaging/install.sh
//! writes one for a non-default socket) is left as it is.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where the binary lives inside the plugin dir (a dot-name: kubelet's prober skips it).
pub const BINARY_DIR: &str = ".moor";

/// An install that could not be done; nothing already in place was removed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A file operation failed.
    #[error("install-flexvolume: {what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Something that is not moor's stands where moor's driver directory goes.
    #[error(
        "install-flexvolume: {} exists and is not a directory; refusing to replace what moor did not make",
        path.display()
    )]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
}

impl InstallError {
    /// Stable reason label.
    pub fn reason(&self) -> &'static str {
        match self {
            InstallError::Io { .. } => "install_io",
            InstallError::NotADirectory { .. } => "install_conflict",
        }
    }
}

/// What an install put in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The binary kubelet's drivers point at.
    pub binary: PathBuf,
    /// The driver executables, one per driver.
    pub drivers: Vec<PathBuf>,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> InstallError + 'a {
    move |source| InstallError::Io {
        what,
        path: path.into(),
        source,
    }
}

/// Installs `binary` and the driver directories of `drivers` into `plugin_dir` (created when
/// missing). Idempotent; safe while kubelet execs the drivers.
pub fn install(
    plugin_dir: &Path,
    binary: &Path,
    drivers: &[&str],
) -> Result<Installed, InstallError> {
    std::fs::create_dir_all(plugin_dir).map_err(io("create", plugin_dir))?;
    let bin_dir = plugin_dir.join(BINARY_DIR);
    std::fs::create_dir_all(&bin_dir).map_err(io("create", &bin_dir))?;
    let installed_binary = bin_dir.join("moor");
    replace_file(binary, &installed_binary)?;
    let mut out = Installed {
        binary: installed_binary,
        drivers: Vec::new(),
    };
    let link_target = Path::new("..").join(BINARY_DIR).join("moor");
    for d in drivers {
        out.drivers
            .push(install_driver(plugin_dir, d, &link_target)?);
    }
    sync_dir(plugin_dir)?;
    Ok(out)
}

/// Copies `from` to `to` through a temporary file in `to`'s directory, then renames it over
/// `to`: a reader (or an exec) sees the old file or the new one, whole.
fn replace_file(from: &Path, to: &Path) -> Result<(), InstallError> {
    let tmp = to.with_file_name(format!(".moor.new.{}", std::process::id()));
    let result = (|| {
        let mut src = std::fs::File::open(from).map_err(io("read", from))?;
        let mut dst = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o755)
            .open(&tmp)
            .map_err(io("write", &tmp))?;
        std::io::copy(&mut src, &mut dst).map_err(io("write", &tmp))?;
        dst.flush().map_err(io("write", &tmp))?;
        // The umask may have narrowed the creation mode; kubelet must be able to exec it.
        dst.set_permissions(std::fs::Permissions::from_mode(0o755))
            .map_err(io("chmod", &tmp))?;
        dst.sync_all().map_err(io("fsync", &tmp))?;
        // Closed before the rename: an exec of a file someone holds open for writing fails
        // with ETXTBSY, and after the rename this is the file kubelet execs.
        drop(dst);
        std::fs::rename(&tmp, to).map_err(io("rename into place", to))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    if let Some(dir) = to.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Puts `<plugin_dir>/moor~<d>/<d>` → `link_target` in place; returns the driver's path.
fn install_driver(plugin_dir: &Path, d: &str, link_target: &Path) -> Result<PathBuf, InstallError> {
    let dir = plugin_dir.join(format!("moor~{d}"));
    let exe = dir.join(d);
    match std::fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() => {
            // kubelet already knows this driver: swap its link in one rename.
            let tmp = dir.join(format!(".{d}.new.{}", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(link_target, &tmp).map_err(io("link", &tmp))?;
            if let Err(e) = std::fs::rename(&tmp, &exe) {
                let _ = std::fs::remove_file(&tmp);
                return Err(io("rename into place", &exe)(e));
            }
            sync_dir(&dir)?;
        }
        Ok(_) => return Err(InstallError::NotADirectory { path: dir }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Built under a dot-name kubelet's prober skips, then renamed into place whole.
            let tmp = plugin_dir.join(format!(".moor~{d}.new.{}", std::process::id()));
            let build = || -> Result<(), InstallError> {
                std::fs::create_dir(&tmp).map_err(io("create", &tmp))?;
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
                    .map_err(io("chmod", &tmp))?;
                let link = tmp.join(d);
                std::os::unix::fs::symlink(link_target, &link).map_err(io("link", &link))?;
                sync_dir(&tmp)?;
                std::fs::rename(&tmp, &dir).map_err(io("rename into place", &dir))
            };
            if let Err(e) = build() {
                let _ = std::fs::remove_file(tmp.join(d));
                let _ = std::fs::remove_dir(&tmp);
                return Err(e);
            }
        }
        Err(e) => return Err(io("inspect", &dir)(e)),
    }
    Ok(exe)
}

fn sync_dir(dir: &Path) -> Result<(), InstallError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io("fsync", dir))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn fake_binary(dir: &Path, content: &str) -> PathBuf {
        let p = dir.join("moor-src");
        std::fs::write(&p, content).unwrap();
        p
    }

    #[test]
    fn an_install_lays_out_every_driver_and_leaves_no_temporary_entry() {
        let t = tempfile::tempdir().unwrap();
        let plugins = t.path().join("exec");
        let bin = fake_binary(t.path(), "v1");
        let out = install(&plugins, &bin, &["local", "nfs"]).unwrap();
        assert_eq!(std::fs::read_to_string(&out.binary).unwrap(), "v1");
        for (d, exe) in ["local", "nfs"].iter().zip(&out.drivers) {
            assert_eq!(exe, &plugins.join(format!("moor~{d}/{d}")));
            assert_eq!(std::fs::read_to_string(exe).unwrap(), "v1", "{d}");
        }
        let mode = std::fs::metadata(&out.binary).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        let mut names: Vec<String> = std::fs::read_dir(&plugins)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [".moor", "moor~local", "moor~nfs"]);
        assert_eq!(
            std::fs::read_dir(plugins.join(".moor")).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn a_reinstall_replaces_the_binary_and_an_old_link_and_keeps_frontend_yaml() {
        let t = tempfile::tempdir().unwrap();
        let plugins = t.path().join("exec");
        // What packaging/install.sh leaves: a link to /usr/local/bin/moor and a socket file.
        std::fs::create_dir_all(plugins.join("moor~local")).unwrap();
        std::os::unix::fs::symlink("/usr/local/bin/moor", plugins.join("moor~local/local"))
            .unwrap();
        std::fs::write(plugins.join("moor~local/frontend.yaml"), "socket: /x\n").unwrap();
        install(&plugins, &fake_binary(t.path(), "v1"), &["local"]).unwrap();
        let out = install(&plugins, &fake_binary(t.path(), "v2"), &["local"]).unwrap();
        assert_eq!(std::fs::read_to_string(&out.drivers[0]).unwrap(), "v2");
        assert_eq!(
            std::fs::read_link(&out.drivers[0]).unwrap(),
            Path::new("../.moor/moor")
        );
        assert_eq!(
            std::fs::read_to_string(plugins.join("moor~local/frontend.yaml")).unwrap(),
            "socket: /x\n"
        );
        assert_eq!(
            std::fs::read_dir(plugins.join("moor~local"))
                .unwrap()
                .count(),
            2
        );
    }

    #[test]
    fn something_else_in_a_drivers_place_is_refused_and_kept() {
        let t = tempfile::tempdir().unwrap();
        let plugins = t.path().join("exec");
        std::fs::create_dir_all(&plugins).unwrap();
        std::fs::write(plugins.join("moor~nfs"), "someone's file").unwrap();
        let e = install(&plugins, &fake_binary(t.path(), "v1"), &["nfs"]).unwrap_err();
        assert_eq!(e.reason(), "install_conflict");
        assert!(e.to_string().contains("moor~nfs"), "{e}");
        assert_eq!(
            std::fs::read_to_string(plugins.join("moor~nfs")).unwrap(),
            "someone's file"
        );
    }

    #[test]
    fn a_missing_binary_fails_naming_it_and_installs_nothing_half() {
        let t = tempfile::tempdir().unwrap();
        let plugins = t.path().join("exec");
        let e = install(&plugins, &t.path().join("nope"), &["local"]).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        assert!(!plugins.join("moor~local").exists());
        assert_eq!(std::fs::read_dir(plugins.join(".moor")).unwrap().count(), 0);
    }
}
