//! Block devices through sysfs and `/dev`: identity, size, read-only flag, holders and
//! partitions, and a real read of the device (so "blank" is never confused with "unreadable").

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// A block device's number.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct DevNum {
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
}

impl std::fmt::Display for DevNum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl DevNum {
    /// The number a `stat` reports as `st_rdev` (or `st_dev`).
    pub fn from_rdev(rdev: u64) -> Self {
        DevNum {
            major: libc::major(rdev),
            minor: libc::minor(rdev),
        }
    }
}

/// How much of each end of a device is read to prove it is readable.
const READ_CHECK: u64 = 1 << 20;

/// sysfs-backed block device queries, rooted at a configurable `/sys`.
#[derive(Debug, Clone)]
pub struct BlockDevices {
    /// sysfs root.
    pub sys: PathBuf,
}

impl BlockDevices {
    /// The device number when `path` (after following symlinks) is a block device.
    pub fn dev_num(&self, path: &Path) -> std::io::Result<Option<DevNum>> {
        let md = std::fs::metadata(path)?;
        if !md.file_type().is_block_device() {
            return Ok(None);
        }
        let rdev = md.rdev();
        Ok(Some(DevNum {
            major: nix::sys::stat::major(rdev) as u32,
            minor: nix::sys::stat::minor(rdev) as u32,
        }))
    }

    fn sysfs(&self, d: DevNum) -> PathBuf {
        self.sys.join("dev/block").join(d.to_string())
    }

    /// Size in bytes (sysfs `size` is in 512-byte sectors whatever the device's block size).
    pub fn size_bytes(&self, d: DevNum) -> std::io::Result<u64> {
        let s = std::fs::read_to_string(self.sysfs(d).join("size"))?;
        s.trim()
            .parse::<u64>()
            .map(|n| n * 512)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// True when the kernel marks the device read-only.
    pub fn is_read_only(&self, d: DevNum) -> std::io::Result<bool> {
        Ok(std::fs::read_to_string(self.sysfs(d).join("ro"))?.trim() == "1")
    }

    /// Devices stacked on this one (device-mapper, md, LVM): any holder means "in use".
    pub fn holders(&self, d: DevNum) -> std::io::Result<Vec<String>> {
        list_names(&self.sysfs(d).join("holders"))
    }

    /// Partitions the kernel knows on this device.
    pub fn partitions(&self, d: DevNum) -> std::io::Result<Vec<String>> {
        let dir = self.sysfs(d);
        let mut parts = Vec::new();
        for name in list_names(&dir)? {
            if dir.join(&name).join("partition").exists() {
                parts.push(name);
            }
        }
        Ok(parts)
    }

    /// The kernel name (`sda`, `loop3`) of the device.
    pub fn kernel_name(&self, d: DevNum) -> Option<String> {
        std::fs::read_link(self.sysfs(d))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
    }
}

fn list_names(dir: &Path) -> std::io::Result<Vec<String>> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// What reading both ends of a device showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ends {
    /// Device size in bytes.
    pub size: u64,
    /// The first and the last MiB hold only zero bytes.
    pub all_zero: bool,
}

/// Reads the first and the last MiB of the device. A probe that found nothing on a device
/// that cannot be read proves nothing, so this must succeed before any mkfs; and bytes that
/// are not zero there are data no probe recognised (a damaged superblock, a lone backup
/// partition table). A zero-size device (a vanished disk) is an error, never "blank".
pub fn read_ends(path: &Path) -> std::io::Result<Ends> {
    let mut f = File::open(path)?;
    let size = f.seek(SeekFrom::End(0))?;
    if size == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "device size is 0",
        ));
    }
    let mut buf = vec![0u8; READ_CHECK.min(size) as usize];
    f.seek(SeekFrom::Start(0))?;
    f.read_exact(&mut buf)?;
    let mut all_zero = buf.iter().all(|b| *b == 0);
    f.seek(SeekFrom::Start(size - buf.len() as u64))?;
    f.read_exact(&mut buf)?;
    all_zero &= buf.iter().all(|b| *b == 0);
    Ok(Ends { size, all_zero })
}

/// `LOOP_SET_CAPACITY` (`<linux/loop.h>`; not in the libc crate).
const LOOP_SET_CAPACITY: libc::c_ulong = 0x4C07;

/// Makes a loop device take its backing file's current size (what `losetup -c` does).
pub fn loop_set_capacity(path: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = File::open(path)?;
    // SAFETY: `f` is an open descriptor for the whole call; this ioctl takes no argument
    // and touches no memory of ours.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), LOOP_SET_CAPACITY, 0) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Opens the device with `O_EXCL`, which for a block device fails with EBUSY while anything
/// holds it exclusively: a mount, device-mapper, md, another exclusive opener. Closed again
/// at once.
pub fn claim_exclusive(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(path)
        .map(drop)
}
