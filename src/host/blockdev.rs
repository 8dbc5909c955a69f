//! Block devices behind one trait, [`BlockDevices`]: identity, size, read-only flag, holders
//! and partitions, an exclusive claim, the loop rescan, and a real read of the device (so
//! "blank" is never confused with "unreadable"). [`SysfsBlockDevices`] answers from sysfs
//! and `/dev`; nothing outside `host/` opens a device node to ask these questions.

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

/// Block device questions and the few actions on a device itself. Services take it through
/// [`super::Host::blockdev`]; production uses [`SysfsBlockDevices`], unit tests the fake in
/// [`super::fake`], so the format path can be tested below the probe.
pub trait BlockDevices: Send + Sync + std::fmt::Debug {
    /// The device number when `path` (after following symlinks) is a block device.
    fn dev_num(&self, path: &Path) -> std::io::Result<Option<DevNum>>;

    /// Size in bytes.
    fn size_bytes(&self, d: DevNum) -> std::io::Result<u64>;

    /// True when the kernel marks the device read-only.
    fn is_read_only(&self, d: DevNum) -> std::io::Result<bool>;

    /// Devices stacked on this one (device-mapper, md, LVM): any holder means "in use".
    fn holders(&self, d: DevNum) -> std::io::Result<Vec<String>>;

    /// Partitions the kernel knows on this device.
    fn partitions(&self, d: DevNum) -> std::io::Result<Vec<String>>;

    /// The kernel name (`sda`, `loop3`) of the device.
    fn kernel_name(&self, d: DevNum) -> Option<String>;

    /// Reads the first and the last MiB of the device (see [`Ends`]).
    fn read_ends(&self, path: &Path) -> std::io::Result<Ends>;

    /// Reads exactly `buf.len()` bytes at `offset` (a superblock field).
    fn read_at(&self, path: &Path, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;

    /// Fails (EBUSY) while anything holds the device exclusively: a mount, device-mapper,
    /// md, another exclusive opener.
    fn claim_exclusive(&self, path: &Path) -> std::io::Result<()>;

    /// Makes a loop device take its backing file's current size (the rescan of a loop
    /// device; SCSI rescans go through sysfs in `attach/scsi.rs`).
    fn set_capacity(&self, path: &Path) -> std::io::Result<()>;

    /// Makes the kernel refuse (or allow again) writes to the whole device (`BLKROSET`):
    /// a read-only bind of a device node does not stop writes through it, this does.
    fn set_read_only(&self, path: &Path, read_only: bool) -> std::io::Result<()>;

    /// Waits up to `limit` for `path` to be a block device (udev creating the node after an
    /// attach), polling.
    fn wait_for(&self, path: &Path, limit: std::time::Duration) -> Option<DevNum> {
        let until = std::time::Instant::now() + limit;
        loop {
            if let Ok(Some(d)) = self.dev_num(path) {
                return Some(d);
            }
            if std::time::Instant::now() >= until {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// The real machine: sysfs (rooted at a configurable `/sys`) and the device nodes.
#[derive(Debug, Clone)]
pub struct SysfsBlockDevices {
    /// sysfs root.
    pub sys: PathBuf,
}

impl SysfsBlockDevices {
    fn sysfs(&self, d: DevNum) -> PathBuf {
        self.sys.join("dev/block").join(d.to_string())
    }
}

impl BlockDevices for SysfsBlockDevices {
    fn dev_num(&self, path: &Path) -> std::io::Result<Option<DevNum>> {
        let md = std::fs::metadata(path)?;
        if !md.file_type().is_block_device() {
            return Ok(None);
        }
        Ok(Some(DevNum::from_rdev(md.rdev())))
    }

    /// sysfs `size` is in 512-byte sectors whatever the device's block size.
    fn size_bytes(&self, d: DevNum) -> std::io::Result<u64> {
        let s = std::fs::read_to_string(self.sysfs(d).join("size"))?;
        s.trim()
            .parse::<u64>()
            .map(|n| n * 512)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    fn is_read_only(&self, d: DevNum) -> std::io::Result<bool> {
        Ok(std::fs::read_to_string(self.sysfs(d).join("ro"))?.trim() == "1")
    }

    fn holders(&self, d: DevNum) -> std::io::Result<Vec<String>> {
        list_names(&self.sysfs(d).join("holders"))
    }

    fn partitions(&self, d: DevNum) -> std::io::Result<Vec<String>> {
        let dir = self.sysfs(d);
        let mut parts = Vec::new();
        for name in list_names(&dir)? {
            if dir.join(&name).join("partition").exists() {
                parts.push(name);
            }
        }
        Ok(parts)
    }

    fn kernel_name(&self, d: DevNum) -> Option<String> {
        std::fs::read_link(self.sysfs(d))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
    }

    fn read_ends(&self, path: &Path) -> std::io::Result<Ends> {
        read_ends(path)
    }

    fn read_at(&self, path: &Path, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        File::open(path)?.read_exact_at(buf, offset)
    }

    fn claim_exclusive(&self, path: &Path) -> std::io::Result<()> {
        claim_exclusive(path)
    }

    fn set_capacity(&self, path: &Path) -> std::io::Result<()> {
        loop_set_capacity(path)
    }

    fn set_read_only(&self, path: &Path, read_only: bool) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let f = File::open(path)?;
        let flag: libc::c_int = read_only.into();
        // SAFETY: `f` is open for the whole call; BLKROSET reads one int from `&flag`,
        // which lives until the call returns.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), BLKROSET, &flag as *const libc::c_int) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
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
fn read_ends(path: &Path) -> std::io::Result<Ends> {
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

/// `<linux/fs.h>`: `_IO(0x12, 93)`, set a block device read-only (an int, 1 or 0).
const BLKROSET: libc::c_ulong = 0x125D;

/// Makes a loop device take its backing file's current size (what `losetup -c` does).
fn loop_set_capacity(path: &Path) -> std::io::Result<()> {
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
fn claim_exclusive(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(path)
        .map(drop)
}
