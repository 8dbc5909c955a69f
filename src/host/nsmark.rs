//! Which mount namespace this daemon runs in, as a token that stays the same across a
//! restart in one namespace (a systemd unit's) and changes with the namespace (a DaemonSet's
//! next pod). A mount id means something only in the namespace it was read in, so records
//! carry the token beside each id (`journal::MountId::ns`).
//!
//! The token lives in a tiny tmpfs that only this namespace has: a mount exists exactly as
//! long as its namespace, and a new namespace finds none. Where the run dir is a shared
//! mount (the DaemonSet's `/run/moor`, a peer of the host's), a new mount there would be
//! copied to the host and from there into the next pod; so the marker is two mounts: a
//! tmpfs at `<run_dir>/mount-namespace` made private in every namespace that uses it, and
//! inside it the token's own tmpfs (`this/`), whose mount no private parent passes on. The
//! namespace's inode number is no such token: the kernel hands a freed number to the next
//! namespace.
//!
//! Invariant: moor never unmounts the marker; the harness's teardown may.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::mount::{MsFlags, mount};

/// The marker directory's name under the run dir.
pub const MARKER: &str = "mount-namespace";

/// True for the marker's mounts (`…/mount-namespace` and what is inside it): a harness
/// listing a daemon's volume mounts leaves them out.
pub fn is_marker(mount_point: &Path) -> bool {
    mount_point.components().any(|c| c.as_os_str() == MARKER)
}

/// The token of this daemon's mount namespace: the one the marker holds, or a new one
/// in a new marker.
pub fn token(run_dir: &Path) -> std::io::Result<u64> {
    let outer = run_dir.join(MARKER);
    ensure_tmpfs(&outer, run_dir)?;
    // Private here whatever it was (a copy from the host is a peer of the host's): what is
    // mounted inside it from now on stays in this namespace.
    mount(
        None::<&str>,
        &outer,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    let inner = outer.join("this");
    let file = inner.join("token");
    if is_mount(&inner, &outer)? {
        let mut text = String::new();
        if std::fs::File::open(&file)
            .and_then(|mut f| f.read_to_string(&mut text))
            .is_ok()
            && let Ok(t) = text.trim().parse::<u64>()
        {
            return Ok(t);
        }
    } else {
        ensure_tmpfs(&inner, &outer)?;
    }
    let mut raw = [0u8; 8];
    super::fill_random(&mut raw)?;
    let t = u64::from_ne_bytes(raw);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&file)?;
    writeln!(f, "{t}")?;
    Ok(t)
}

/// True when `dir` is the root of a mount other than its parent's.
fn is_mount(dir: &Path, parent: &Path) -> std::io::Result<bool> {
    match std::fs::metadata(dir) {
        Ok(m) => Ok(m.dev() != std::fs::metadata(parent)?.dev()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Mounts a 4 KiB tmpfs (0700) at `dir` unless one is there.
fn ensure_tmpfs(dir: &Path, parent: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    if is_mount(dir, parent)? {
        return Ok(());
    }
    mount(
        Some("moor-mount-namespace"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=4k,mode=0700"),
    )?;
    Ok(())
}
