//! What is on a device, according to a low-level `blkid -p` probe (every superblock kind and
//! partition tables). Parsing is pure; exit codes are interpreted here and nowhere else.

use std::collections::BTreeMap;

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// No signature of any kind (blkid exit 2). Alone this does not prove the device is
    /// blank: it is also what an unreadable device gives; see `format::ensure_filesystem`.
    NothingFound,
    /// A filesystem, RAID member, swap, LUKS, LVM or other superblock (`TYPE=`).
    Superblock {
        /// blkid's TYPE.
        kind: String,
        /// Filesystem UUID, when it has one.
        uuid: Option<String>,
    },
    /// A partition table (`PTTYPE=`).
    PartitionTable {
        /// `gpt`, `dos`, …
        kind: String,
    },
    /// blkid found more than one signature and refuses to choose (exit 8).
    Ambivalent,
}

impl Probe {
    /// A short description for messages.
    pub fn describe(&self) -> String {
        match self {
            Probe::NothingFound => "no signature".into(),
            Probe::Superblock {
                kind,
                uuid: Some(u),
            } => format!("{kind} (UUID {u})"),
            Probe::Superblock { kind, uuid: None } => kind.clone(),
            Probe::PartitionTable { kind } => format!("a {kind} partition table"),
            Probe::Ambivalent => "several conflicting signatures".into(),
        }
    }
}

/// blkid answered in a way that proves nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("blkid {}: {detail}", crate::host::exec::exit_text(*code))]
pub struct ProbeUnclear {
    /// Exit code.
    pub code: Option<i32>,
    /// stderr tail.
    pub detail: String,
}

/// The argv for a low-level probe of every signature kind.
pub fn probe_args(device: &std::path::Path) -> Vec<std::ffi::OsString> {
    vec!["-p".into(), "-o".into(), "export".into(), device.into()]
}

/// Interprets `blkid -p -o export`'s exit code and output.
pub fn interpret(code: Option<i32>, stdout: &str, stderr: &str) -> Result<Probe, ProbeUnclear> {
    let unclear = || ProbeUnclear {
        code,
        detail: stderr.trim().to_owned(),
    };
    match code {
        // man blkid: 2 = nothing found (or the device could not be identified).
        Some(2) if stdout.trim().is_empty() => Ok(Probe::NothingFound),
        // 8 = ambivalent low-level probing result.
        Some(8) => Ok(Probe::Ambivalent),
        Some(0) => {
            let kv = parse_export(stdout);
            if let Some(t) = kv.get("TYPE") {
                Ok(Probe::Superblock {
                    kind: t.clone(),
                    uuid: kv.get("UUID").cloned(),
                })
            } else if let Some(pt) = kv.get("PTTYPE") {
                Ok(Probe::PartitionTable { kind: pt.clone() })
            } else if kv.keys().any(|k| k != "DEVNAME") {
                // Something was found that has neither TYPE nor PTTYPE: treat as in use.
                Ok(Probe::Ambivalent)
            } else {
                Err(unclear())
            }
        }
        _ => Err(unclear()),
    }
}

/// Parses `KEY=value` lines.
pub fn parse_export(stdout: &str) -> BTreeMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_two_with_no_output_is_nothing_found() {
        assert_eq!(interpret(Some(2), "", ""), Ok(Probe::NothingFound));
    }

    #[test]
    fn filesystems_and_tables_are_signatures() {
        let ext4 = "DEVNAME=/dev/loop0\nUUID=4b1c-9\nVERSION=1.0\nBLOCK_SIZE=4096\nTYPE=ext4\nUSAGE=filesystem\n";
        assert_eq!(
            interpret(Some(0), ext4, ""),
            Ok(Probe::Superblock {
                kind: "ext4".into(),
                uuid: Some("4b1c-9".into())
            })
        );
        let gpt = "DEVNAME=/dev/loop0\nPTUUID=aa\nPTTYPE=gpt\n";
        assert_eq!(
            interpret(Some(0), gpt, ""),
            Ok(Probe::PartitionTable { kind: "gpt".into() })
        );
        let lvm = "DEVNAME=/dev/loop1\nUUID=x\nVERSION=LVM2 001\nTYPE=LVM2_member\nUSAGE=raid\n";
        assert!(
            matches!(interpret(Some(0), lvm, ""), Ok(Probe::Superblock { kind, .. }) if kind == "LVM2_member")
        );
        assert_eq!(interpret(Some(8), "", ""), Ok(Probe::Ambivalent));
    }

    #[test]
    fn errors_prove_nothing() {
        assert!(interpret(Some(4), "", "usage").is_err());
        assert!(interpret(None, "", "").is_err());
        assert!(interpret(Some(0), "DEVNAME=/dev/x\n", "").is_err());
        // exit 2 with output is not a clean "nothing found"
        assert!(interpret(Some(2), "TYPE=ext4\n", "").is_err());
    }
}
