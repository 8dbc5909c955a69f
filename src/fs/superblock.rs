//! Reads the UUID from the primary superblock of a filesystem moor has just created.
//!
//! After mkfs, moor has to know two things: that the filesystem it asked for is really on
//! the device, and its UUID (the journal keeps it to notice a different disk under the same
//! path later). moor chooses the UUID itself and passes it to mkfs, so checking the one
//! superblock field is enough, and it costs a read of a few KiB instead of another `blkid -p`
//! (an exec that probes every signature type, each a read over the wire on iSCSI or RBD).
//! Anything else — an existing device, an unknown type — still goes through `blkid`.

use std::path::Path;

use crate::host::BlockDevices;

/// Where each family keeps its magic and UUID (offsets from the start of the device).
struct Layout {
    magic_at: u64,
    magic: &'static [u8],
    uuid_at: u64,
}

/// ext2/3/4: superblock at 1024, `s_magic` 0xEF53 little-endian at +56, `s_uuid` at +104.
const EXT: Layout = Layout {
    magic_at: 1024 + 56,
    magic: &[0x53, 0xEF],
    uuid_at: 1024 + 104,
};
/// XFS: `sb_magicnum` "XFSB" at 0, `sb_uuid` at 32.
const XFS: Layout = Layout {
    magic_at: 0,
    magic: b"XFSB",
    uuid_at: 32,
};
/// btrfs: superblock at 64 KiB, `fsid` at +32, magic "_BHRfS_M" at +64.
const BTRFS: Layout = Layout {
    magic_at: 65536 + 64,
    magic: b"_BHRfS_M",
    uuid_at: 65536 + 32,
};

fn layout(fs: &str) -> Option<&'static Layout> {
    match fs {
        "ext2" | "ext3" | "ext4" => Some(&EXT),
        "xfs" => Some(&XFS),
        "btrfs" => Some(&BTRFS),
        _ => None,
    }
}

/// The UUID in `device`'s superblock for filesystem type `fs`, as blkid prints it
/// (lowercase, hyphenated). `Ok(None)` when that type's magic is not there, or moor cannot
/// read that type's superblock.
pub fn uuid(
    devices: &dyn BlockDevices,
    device: &Path,
    fs: &str,
) -> std::io::Result<Option<String>> {
    let Some(l) = layout(fs) else {
        return Ok(None);
    };
    let mut magic = vec![0u8; l.magic.len()];
    devices.read_at(device, l.magic_at, &mut magic)?;
    if magic != l.magic {
        return Ok(None);
    }
    let mut raw = [0u8; 16];
    devices.read_at(device, l.uuid_at, &mut raw)?;
    Ok(Some(format_uuid(&raw)))
}

/// A fresh random (version 4) UUID for mkfs to write.
pub fn new_uuid() -> std::io::Result<String> {
    let mut raw = [0u8; 16];
    crate::host::fill_random(&mut raw)?;
    raw[6] = (raw[6] & 0x0f) | 0x40;
    raw[8] = (raw[8] & 0x3f) | 0x80;
    Ok(format_uuid(&raw))
}

fn format_uuid(raw: &[u8; 16]) -> String {
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(len: usize, writes: &[(usize, &[u8])]) -> tempfile::NamedTempFile {
        let mut buf = vec![0u8; len];
        for (at, bytes) in writes {
            buf[*at..*at + bytes.len()].copy_from_slice(bytes);
        }
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), &buf).unwrap();
        f
    }

    const RAW: [u8; 16] = [
        0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0x4d, 0xef, 0x80, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06,
        0x07,
    ];
    const TEXT: &str = "12345678-9abc-4def-8001-020304050607";
    /// Images are plain files: the real reads.
    static DEVICES: crate::host::SysfsBlockDevices = crate::host::SysfsBlockDevices {
        sys: std::path::PathBuf::new(),
    };

    #[test]
    fn each_family_is_read_at_its_own_offsets() {
        let ext = image(4096, &[(1080, &[0x53, 0xEF]), (1128, &RAW)]);
        assert_eq!(
            uuid(&DEVICES, ext.path(), "ext4").unwrap().as_deref(),
            Some(TEXT)
        );
        assert_eq!(
            uuid(&DEVICES, ext.path(), "ext3").unwrap().as_deref(),
            Some(TEXT)
        );
        assert_eq!(uuid(&DEVICES, ext.path(), "xfs").unwrap(), None);
        let xfs = image(4096, &[(0, b"XFSB"), (32, &RAW)]);
        assert_eq!(
            uuid(&DEVICES, xfs.path(), "xfs").unwrap().as_deref(),
            Some(TEXT)
        );
        assert_eq!(uuid(&DEVICES, xfs.path(), "ext4").unwrap(), None);
        let btrfs = image(70000, &[(65600, b"_BHRfS_M"), (65568, &RAW)]);
        assert_eq!(
            uuid(&DEVICES, btrfs.path(), "btrfs").unwrap().as_deref(),
            Some(TEXT)
        );
    }

    #[test]
    fn blank_short_and_unknown_devices_give_no_uuid() {
        let blank = image(70000, &[]);
        for fs in ["ext4", "xfs", "btrfs", "vfat"] {
            assert_eq!(uuid(&DEVICES, blank.path(), fs).unwrap(), None, "{fs}");
        }
        let short = image(512, &[]);
        assert!(uuid(&DEVICES, short.path(), "btrfs").is_err());
    }

    #[test]
    fn new_uuids_are_random_version_4() {
        let a = new_uuid().unwrap();
        let b = new_uuid().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
        assert!(
            a.chars()
                .all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }
}
