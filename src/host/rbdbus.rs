//! The kernel RBD client's mappings, read from sysfs (`<sys>/bus/rbd/devices/<id>/`): the
//! only record of what is mapped on this node that survives a daemon restart, so attach
//! reuses an existing `/dev/rbdN` instead of mapping the image twice and detach finds what
//! to unmap even when the journal never learnt the device.
//!
//! Beside the kernel's view, moor's claims: one file per volume under `<run_dir>/rbd/` that
//! marks a mapping as moor's, so a mapping someone else made on this node (a hand-made
//! `rbd map`) is neither shared nor unmapped.
//!
//! Invariant: sysfs is only read; a device directory that vanishes mid-walk (a concurrent unmap) is
//! skipped, any other read error is reported, never taken as "not mapped".

use std::path::{Path, PathBuf};

/// One kernel mapping (`/sys/bus/rbd/devices/<id>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbdMapping {
    /// Device id: the `N` of `/dev/rbdN`.
    pub id: u32,
    /// Pool name.
    pub pool: String,
    /// RADOS namespace (empty for the default one or on kernels without `pool_ns`).
    pub namespace: String,
    /// Image name.
    pub image: String,
    /// Mapped snapshot, `-` for the image head.
    pub snap: String,
    /// The kernel client's id as sysfs spells it (`client4181`), if the kernel exposes it.
    pub client_id: Option<String>,
    /// The kernel client's address (`127.0.0.1:0/3416352455`), on kernels with `client_addr`.
    pub client_addr: Option<String>,
}

impl RbdMapping {
    /// True when this mapping is the head of `pool[/namespace]/image`.
    pub fn is_head_of(&self, pool: &str, namespace: &str, image: &str) -> bool {
        self.pool == pool && self.namespace == namespace && self.image == image && self.snap == "-"
    }

    /// The block device node under the `dev` root.
    pub fn device(&self, dev: &Path) -> PathBuf {
        dev.join(format!("rbd{}", self.id))
    }
}

fn read_attr(dir: &Path, name: &str) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(dir.join(name)) {
        Ok(s) => Ok(Some(s.trim_end_matches('\n').to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every mapping on this node, sorted by id. No `bus/rbd` (module not loaded) is no mapping.
pub fn mappings(sys: &Path) -> std::io::Result<Vec<RbdMapping>> {
    let root = sys.join("bus/rbd/devices");
    let entries = match std::fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e?;
        let Some(id) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let dir = e.path();
        // pool/name/current_snap exist on every kernel with krbd; missing means the device
        // went away between readdir and read.
        let (Some(pool), Some(image), Some(snap)) = (
            read_attr(&dir, "pool")?,
            read_attr(&dir, "name")?,
            read_attr(&dir, "current_snap")?,
        ) else {
            continue;
        };
        out.push(RbdMapping {
            id,
            pool,
            namespace: read_attr(&dir, "pool_ns")?.unwrap_or_default(),
            image,
            snap,
            client_id: read_attr(&dir, "client_id")?,
            client_addr: read_attr(&dir, "client_addr")?,
        });
    }
    out.sort_by_key(|m| m.id);
    Ok(out)
}

/// True when the kernel marks `/dev/rbd<id>` read-only (`<sys>/block/rbd<id>/ro`).
pub fn is_read_only(sys: &Path, id: u32) -> std::io::Result<bool> {
    Ok(read_attr(&sys.join(format!("block/rbd{id}")), "ro")?.as_deref() == Some("1"))
}

/// The claim file that says moor made (or was about to make) the mapping of volume `key`:
/// `<run_dir>/rbd/<key>`. It is written *before* `rbd map`, so a mapping that a crash left
/// unrecorded in the journal is still known as moor's; it lives on tmpfs like the mapping
/// itself, so neither survives a reboot.
pub fn claim_path(run_dir: &Path, key: &str) -> PathBuf {
    run_dir.join("rbd").join(key)
}

/// Writes the claim for `key` (its content, `pool/image`, is for a human reading the dir).
pub fn claim(run_dir: &Path, key: &str, spec: &str) -> std::io::Result<()> {
    let p = claim_path(run_dir, key);
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&p, format!("{spec}\n"))
}

/// True when moor claimed the mapping of `key`.
pub fn is_claimed(run_dir: &Path, key: &str) -> bool {
    claim_path(run_dir, key).is_file()
}

/// Drops the claim (after the last unmap). Missing is success.
pub fn release(run_dir: &Path, key: &str) -> std::io::Result<()> {
    match std::fs::remove_file(claim_path(run_dir, key)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes one mapping's sysfs directory under `sys` (a fixture tree).
    pub(crate) fn add(sys: &Path, id: u32, pool: &str, image: &str, snap: &str, ro: bool) {
        add_in_namespace(sys, id, pool, "", image, snap, ro);
    }

    /// [`add`] for an image in RADOS namespace `ns` of `pool`.
    pub(crate) fn add_in_namespace(
        sys: &Path,
        id: u32,
        pool: &str,
        ns: &str,
        image: &str,
        snap: &str,
        ro: bool,
    ) {
        let d = sys.join(format!("bus/rbd/devices/{id}"));
        std::fs::create_dir_all(&d).unwrap();
        for (k, v) in [
            ("pool", pool),
            ("pool_ns", ns),
            ("name", image),
            ("current_snap", snap),
            ("client_id", "client4181"),
            ("client_addr", "127.0.0.1:0/3416352455"),
        ] {
            std::fs::write(d.join(k), format!("{v}\n")).unwrap();
        }
        let b = sys.join(format!("block/rbd{id}"));
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(b.join("ro"), if ro { "1\n" } else { "0\n" }).unwrap();
    }

    #[test]
    fn walks_mappings_and_skips_half_gone_devices() {
        let t = tempfile::tempdir().unwrap();
        assert!(
            mappings(t.path()).unwrap().is_empty(),
            "no bus/rbd is no mapping"
        );
        add(t.path(), 3, "rbd", "img1", "-", false);
        add(t.path(), 0, "rbd", "img1", "snap1", true);
        // A device being removed: directory still there, attributes gone.
        std::fs::create_dir_all(t.path().join("bus/rbd/devices/7")).unwrap();
        let m = mappings(t.path()).unwrap();
        assert_eq!(m.iter().map(|m| m.id).collect::<Vec<_>>(), vec![0, 3]);
        assert!(!m[0].is_head_of("rbd", "", "img1"));
        assert!(m[1].is_head_of("rbd", "", "img1"));
        assert!(!m[1].is_head_of("rbd", "", "img"));
        assert!(!m[1].is_head_of("rbd", "ns1", "img1"), "another namespace");
        add_in_namespace(t.path(), 4, "rbd", "ns1", "img1", "-", false);
        let m = mappings(t.path()).unwrap();
        assert!(m[2].is_head_of("rbd", "ns1", "img1"));
        assert!(!m[2].is_head_of("rbd", "", "img1"), "the default namespace");
        assert_eq!(m[1].client_id.as_deref(), Some("client4181"));
        assert_eq!(m[1].device(Path::new("/dev")), Path::new("/dev/rbd3"));
        assert!(is_read_only(t.path(), 0).unwrap());
        assert!(!is_read_only(t.path(), 3).unwrap());
    }

    #[test]
    fn reads_a_tree_captured_from_a_real_kernel() {
        // Copied from /sys in the VM lab (Debian's kernel) while moor had rbd/img1 mapped.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rbd-sysfs");
        let m = mappings(&root).unwrap();
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(m[0].is_head_of("rbd", "", "img1"), "{m:?}");
        let client = m[0].client_id.as_deref().unwrap_or_default();
        assert!(client.starts_with("client") && client.len() > 6, "{client}");
        assert!(m[0].client_addr.as_deref().is_some_and(|a| a.contains(':')));
        assert!(!is_read_only(&root, m[0].id).unwrap());
    }

    #[test]
    fn claims_come_and_go() {
        let t = tempfile::tempdir().unwrap();
        assert!(!is_claimed(t.path(), "rbd-k"));
        claim(t.path(), "rbd-k", "rbd/img1").unwrap();
        assert!(is_claimed(t.path(), "rbd-k"));
        assert!(!is_claimed(t.path(), "rbd-other"));
        release(t.path(), "rbd-k").unwrap();
        release(t.path(), "rbd-k").unwrap();
        assert!(!is_claimed(t.path(), "rbd-k"));
    }
}
