//! Writes to SCSI sysfs attributes and to open-iscsi's record files: the only code that
//! changes SCSI state without a command. Reads live in `attach::scsi` (pure walkers over a
//! sysfs root).
//!
//! Invariant: record files that may hold CHAP secrets are written 0600 through a temp file
//! and a rename, so no reader ever sees a half-written or world-readable secret.

use std::io::Write;
use std::path::Path;

/// Writes `value` to a sysfs attribute (`scan`, `delete`, `rescan`, `issue_lip`).
pub fn write_attr(path: &Path, value: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(value.as_bytes())
}

/// Sets `key = value` lines in an open-iscsi record file (node or discovery record),
/// replacing existing lines for those keys and keeping every other line. The result is
/// written 0600 via a temp file in the same directory and renamed over the record. An
/// empty value removes the key (iscsiadm rejects `key = ` lines with a warning).
pub fn update_record(path: &Path, items: &[(&str, &[u8])]) -> std::io::Result<()> {
    let old = std::fs::read(path)?;
    let mut out: Vec<u8> = Vec::with_capacity(old.len() + 128);
    for line in old.split(|b| *b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let key = line
            .split(|b| *b == b'=')
            .next()
            .map(|k| k.trim_ascii())
            .unwrap_or_default();
        if items.iter().any(|(k, _)| k.as_bytes() == key) {
            continue;
        }
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    for (k, v) in items.iter().filter(|(_, v)| !v.is_empty()) {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b" = ");
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    crate::host::records::replace_private_file(path, &out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn record_update_replaces_keys_and_is_private() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("default");
        std::fs::write(
            &p,
            "node.name = iqn.x\nnode.session.auth.authmethod = None\nnode.session.auth.password_in = old\nnode.startup = automatic\n",
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        update_record(
            &p,
            &[
                ("node.session.auth.authmethod", b"CHAP"),
                ("node.session.auth.password", b"s3cr3t"),
                ("node.session.auth.password_in", b""),
            ],
        )
        .unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(
            text,
            "node.name = iqn.x\nnode.startup = automatic\nnode.session.auth.authmethod = CHAP\nnode.session.auth.password = s3cr3t\n"
        );
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
