//! What a user checks on the host after moor acted: the signatures on a device (`blkid -p`),
//! its bytes (a checksum), the live mount table's entries. Also how the tests put a
//! signature on a loop device. (The daemon's commands and records: `moor::testkit::harness`.)

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use super::{LoopDev, sh};

/// A signature a test puts on a device before handing it to moor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signature {
    /// Nothing at all (a fresh sparse file).
    Blank,
    /// An ext2 filesystem with a marker file.
    Ext2,
    /// An ext4 filesystem with a marker file.
    Ext4,
    /// An xfs filesystem with a marker file.
    Xfs,
    /// A btrfs filesystem with a marker file.
    Btrfs,
    /// A FAT filesystem (raw marker bytes, not a file: the kernel may lack vfat).
    Vfat,
    /// A swap area.
    Swap,
    /// An LVM2 physical volume.
    Lvm2,
    /// A LUKS2 header.
    Luks,
    /// A GPT partition table with one partition.
    Gpt,
    /// A dos (MBR) partition table with one partition.
    Dos,
}

/// The marker file written inside filesystems, and its content.
pub const MARKER: &str = "moor-marker.txt";
/// The marker's content.
pub const MARKER_TEXT: &str = "data that must survive\n";
/// Where raw marker bytes go on devices without a filesystem (past every header written here).
pub const RAW_MARKER_OFFSET: u64 = 40 << 20;

impl Signature {
    /// A loop device size that fits the signature (xfs needs 300 MiB, btrfs ~110 MiB).
    pub fn size_mib(self) -> u64 {
        match self {
            Signature::Xfs => 300,
            Signature::Btrfs => 128,
            _ => 64,
        }
    }

    /// The filesystem type when this signature is a filesystem Linux mounts.
    pub fn filesystem(self) -> Option<&'static str> {
        Some(match self {
            Signature::Ext2 => "ext2",
            Signature::Ext4 => "ext4",
            Signature::Xfs => "xfs",
            Signature::Btrfs => "btrfs",
            Signature::Vfat => "vfat",
            _ => return None,
        })
    }

    /// What `blkid -p -o export` reports: (key, value).
    pub fn blkid(self) -> Option<(&'static str, &'static str)> {
        Some(match self {
            Signature::Blank => return None,
            Signature::Swap => ("TYPE", "swap"),
            Signature::Lvm2 => ("TYPE", "LVM2_member"),
            Signature::Luks => ("TYPE", "crypto_LUKS"),
            Signature::Gpt => ("PTTYPE", "gpt"),
            Signature::Dos => ("PTTYPE", "dos"),
            fs => ("TYPE", fs.filesystem().unwrap_or_default()),
        })
    }

    /// Writes the signature on `dev`, plus marker data: a file inside a filesystem we can
    /// mount, raw bytes at [`RAW_MARKER_OFFSET`] otherwise. Force flags are fine here: these
    /// are the test's own fresh devices.
    pub fn write(self, dev: &Path) {
        let d = dev.to_str().unwrap();
        match self {
            Signature::Blank => {}
            Signature::Ext2 | Signature::Ext4 | Signature::Xfs | Signature::Btrfs => {
                let fs = self.filesystem().unwrap();
                mkfs(dev, fs);
                with_mounted(dev, fs, false, |root| {
                    std::fs::write(root.join(MARKER), MARKER_TEXT).unwrap();
                });
            }
            Signature::Vfat => {
                sh("mkfs.vfat", &[d]);
            }
            Signature::Swap => {
                sh("mkswap", &[d]);
            }
            Signature::Lvm2 => {
                // No device-mapper here: pvcreate only writes the PV label. Without the
                // devices file, pvcreate accepts any device it is given.
                let out = Command::new("pvcreate")
                    .args(["-ff", "-y", "--config", "devices { use_devicesfile=0 }", d])
                    .env("LVM_SUPPRESS_FD_WARNINGS", "1")
                    .output()
                    .expect("pvcreate (lvm2)");
                assert!(
                    out.status.success(),
                    "pvcreate: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Signature::Luks => {
                run_with_stdin(
                    "cryptsetup",
                    &[
                        "luksFormat",
                        "--batch-mode",
                        "--type",
                        "luks2",
                        "--pbkdf",
                        "pbkdf2",
                        "--pbkdf-force-iterations",
                        "1000",
                        "--key-file",
                        "-",
                        d,
                    ],
                    b"not-a-real-key",
                );
            }
            Signature::Gpt | Signature::Dos => {
                let label = if self == Signature::Gpt { "gpt" } else { "dos" };
                // No partition scan on the test's loop devices: the kernel knows no partitions.
                run_with_stdin(
                    "sfdisk",
                    &["--quiet", "--no-reread", "--no-tell-kernel", d],
                    format!("label: {label}\nstart=2048, size=20480\n").as_bytes(),
                );
            }
        }
        if self.filesystem().is_none() || self == Signature::Vfat {
            write_at(dev, RAW_MARKER_OFFSET, MARKER_TEXT.as_bytes());
        }
        if let Some((k, v)) = self.blkid() {
            assert_eq!(
                probe(dev).get(k).map(String::as_str),
                Some(v),
                "test setup: {self:?} on {d}"
            );
        }
    }
}

/// A loop device carrying `sig`.
pub fn device_with(sig: Signature) -> LoopDev {
    let dev = LoopDev::new(sig.size_mib());
    sig.write(&dev.path);
    dev
}

fn run_with_stdin(cmd: &str, args: &[&str], input: &[u8]) {
    use std::io::Write;
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (is it installed?)"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test's own mkfs (with force: the test owns the device).
pub fn mkfs(dev: &Path, fs: &str) {
    let d = dev.to_str().unwrap();
    match fs {
        "xfs" | "btrfs" => sh(&format!("mkfs.{fs}"), &["-q", "-f", d]),
        _ => sh(&format!("mkfs.{fs}"), &["-q", "-F", d]),
    };
}

/// Mounts `dev` on a private temporary directory, runs `f` on it, unmounts.
pub fn with_mounted<T>(dev: &Path, fs: &str, read_only: bool, f: impl FnOnce(&Path) -> T) -> T {
    let dir = tempfile::Builder::new()
        .prefix("moor-check")
        .tempdir_in("/var/tmp")
        .unwrap();
    let opts = if read_only { "ro" } else { "rw" };
    sh(
        "mount",
        &[
            "-t",
            fs,
            "-o",
            opts,
            dev.to_str().unwrap(),
            dir.path().to_str().unwrap(),
        ],
    );
    let out = f(dir.path());
    sh("umount", &[dir.path().to_str().unwrap()]);
    out
}

/// `blkid -p -o export`, without DEVNAME; empty when blkid finds nothing (exit 2).
pub fn probe(dev: &Path) -> BTreeMap<String, String> {
    let out = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(dev)
        .output()
        .expect("blkid");
    match out.status.code() {
        Some(0) => moor::fs::probe::parse_export(&String::from_utf8_lossy(&out.stdout))
            .into_iter()
            .filter(|(k, _)| k != "DEVNAME")
            .collect(),
        Some(2) => BTreeMap::new(),
        c => panic!(
            "blkid -p {}: exit {c:?}: {}",
            dev.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Every signature libblkid finds, the backup GPT at the end included (`wipefs --no-act`).
pub fn all_signatures(dev: &Path) -> String {
    sh("wipefs", &["--no-act", "--parsable", dev.to_str().unwrap()])
}

/// SHA-256 of the whole device (native `sha256sum`: a debug-build hasher would be slow).
pub fn digest(dev: &Path) -> String {
    let out = sh("sha256sum", &[dev.to_str().unwrap()]);
    out.split_whitespace().next().unwrap().to_owned()
}

/// Writes `bytes` at `offset` of the device, synchronously.
pub fn write_at(dev: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(dev).unwrap();
    f.write_all_at(bytes, offset).unwrap();
    f.sync_all().unwrap();
}

/// Reads `len` bytes at `offset` of the device.
pub fn read_at(dev: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(dev).unwrap();
    let mut buf = vec![0; len];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}

/// True when the running kernel can mount `fs` (no modules can be loaded here).
pub fn kernel_has(fs: &str) -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().last() == Some(fs))
}

/// Live mount table entries whose mount point is under `root` (or is `root`).
pub fn mount_entries_under(root: &Path) -> Vec<moor::host::mountinfo::MountInfo> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    moor::host::mountinfo::parse(&text)
        .unwrap()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(root))
        // The daemon's own mount-namespace marker (host::nsmark) is no volume.
        .filter(|m| !moor::host::nsmark::is_marker(&m.mount_point))
        .collect()
}

/// The live mount table entries at exactly `p` (stacked mounts give several).
pub fn mount_entries_at(p: &Path) -> Vec<moor::host::mountinfo::MountInfo> {
    mount_entries_under(p)
        .into_iter()
        .filter(|m| m.mount_point == p)
        .collect()
}

/// Asserts a Failure whose message starts with `reason` and mentions every word of `words`.
#[track_caller]
pub fn assert_failure(r: &super::FlexResult, reason: &str, words: &[&str]) {
    assert_eq!(
        r.status(),
        "Failure",
        "expected Failure {reason}, got {}",
        r.json
    );
    assert_eq!(r.code, Some(1), "exit code of a Failure: {}", r.json);
    assert!(
        r.message().starts_with(&format!("{reason}: ")),
        "expected reason {reason}: {}",
        r.message()
    );
    for w in words {
        assert!(
            r.message().contains(w),
            "message should mention {w:?}: {}",
            r.message()
        );
    }
}
