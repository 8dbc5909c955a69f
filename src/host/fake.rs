//! Fakes for unit tests: a scripted command runner, an in-memory mount table, in-memory
//! block devices, and [`FakeHost`], the one [`Host`] over them that tests build.
//!
//! The script fails the test on any command it did not expect (kubernetes mount-utils'
//! FakeExec shape), and keeps the call log so tests can assert no secret reached argv.
//! The mount fake applies mounts to its table, so later questions see them; like the
//! kernel, it gives two different sources two different device numbers, so a test cannot
//! mistake one filesystem for another.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::errno::Errno;

use super::Host;
use super::blockdev::{BlockDevices, DevNum, Ends};
use super::exec::{Cmd, CommandRunner, ExecError, Output};
use super::mountinfo::MountInfo;
use super::mounts::{FsMount, MountError, MountTable, Mounter, PathMount};
use super::paths::HostPaths;
use super::probe::Probe;
use super::target::Target;

/// Computes the answer to an expected command from the command itself.
type Answer = Box<dyn Fn(&Cmd) -> Output + Send>;

/// One expected command and its answer.
pub struct Expect {
    /// The full command line as [`Cmd::display`] renders it, or, for an answer computed
    /// from the command ([`ScriptRunner::expect_program`]), only the program.
    pub cmdline: String,
    answer: Answer,
    whole_line: bool,
}

impl std::fmt::Debug for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expect")
            .field("cmdline", &self.cmdline)
            .finish_non_exhaustive()
    }
}

/// A runner that plays a script.
#[derive(Debug, Default)]
pub struct ScriptRunner {
    script: Mutex<VecDeque<Expect>>,
    log: Mutex<Vec<Cmd>>,
}

impl ScriptRunner {
    /// Expects `cmdline` next and answers with exit `code` and `stdout`.
    pub fn expect(&self, cmdline: &str, code: i32, stdout: &str) -> &Self {
        let output = Output {
            code: Some(code),
            stdout: stdout.as_bytes().to_vec(),
            stderr: Vec::new(),
        };
        if let Ok(mut s) = self.script.lock() {
            s.push_back(Expect {
                cmdline: cmdline.into(),
                answer: Box::new(move |_| output.clone()),
                whole_line: true,
            });
        }
        self
    }

    /// Expects `program` next, with arguments only known when it runs (a UUID moor chose),
    /// and answers with `answer(cmd)`, which may also change the fakes (what mkfs writes).
    pub fn expect_program(
        &self,
        program: &str,
        answer: impl Fn(&Cmd) -> Output + Send + 'static,
    ) -> &Self {
        if let Ok(mut s) = self.script.lock() {
            s.push_back(Expect {
                cmdline: program.into(),
                answer: Box::new(answer),
                whole_line: false,
            });
        }
        self
    }

    /// Every command run so far.
    pub fn calls(&self) -> Vec<Cmd> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Commands expected but never run.
    pub fn remaining(&self) -> Vec<String> {
        self.script
            .lock()
            .map(|s| s.iter().map(|e| e.cmdline.clone()).collect())
            .unwrap_or_default()
    }
}

impl CommandRunner for ScriptRunner {
    fn run(&self, cmd: &Cmd) -> Result<Output, ExecError> {
        if let Ok(mut l) = self.log.lock() {
            l.push(cmd.clone());
        }
        let next = self.script.lock().ok().and_then(|mut s| s.pop_front());
        match next {
            Some(e) if e.whole_line && e.cmdline == cmd.display() => Ok((e.answer)(cmd)),
            Some(e) if !e.whole_line && e.cmdline == cmd.program_name() => Ok((e.answer)(cmd)),
            Some(e) => panic!(
                "unexpected command `{}`; the script expected `{}`",
                cmd.display(),
                e.cmdline
            ),
            None => panic!(
                "unexpected command `{}`; the script is empty",
                cmd.display()
            ),
        }
    }
}

/// An in-memory mount table.
#[derive(Debug, Default)]
pub struct FakeMounts {
    table: Mutex<BTreeMap<PathBuf, MountInfo>>,
    next_id: Mutex<u64>,
    fail_next: Mutex<Vec<(&'static str, Errno)>>,
    probes: Mutex<BTreeMap<PathBuf, Probe>>,
    /// The device number given to each source not mounted in the table, as the kernel
    /// gives each filesystem its own.
    devs: Mutex<BTreeMap<String, (u32, u32)>>,
}

impl FakeMounts {
    /// Makes the next operation named `op` (`mount`, `bind`, `unmount`) fail with `errno`.
    pub fn fail_next(&self, op: &'static str, errno: Errno) {
        if let Ok(mut f) = self.fail_next.lock() {
            f.push((op, errno));
        }
    }

    /// Makes the stale-mount probe of the mount at `target` answer `seen` (a dead export,
    /// a hung server) while it is mounted; unmounting or mounting there again forgets it.
    pub fn set_probe(&self, target: &Path, seen: Probe) {
        if let Ok(mut p) = self.probes.lock() {
            p.insert(target.to_owned(), seen);
        }
    }

    /// The mount points, sorted.
    pub fn mount_points(&self) -> Vec<PathBuf> {
        self.table
            .lock()
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The entry at `target`.
    pub fn get(&self, target: &Path) -> Option<MountInfo> {
        self.table.lock().ok().and_then(|t| t.get(target).cloned())
    }

    fn injected(&self, op: &'static str, target: &Path) -> Result<(), MountError> {
        let mut f = self
            .fail_next
            .lock()
            .map_err(|_| MountError::BadPath(target.into()))?;
        if let Some(i) = f.iter().position(|(o, _)| *o == op) {
            let (_, errno) = f.remove(i);
            return Err(MountError::Sys {
                op,
                target: target.into(),
                errno,
            });
        }
        Ok(())
    }

    /// The device number of `source`: the same source always the same, two sources never.
    /// Majors 7 (a filesystem mounted from a device) and 0 (a bound directory) keep the two
    /// apart; minors start at 100, clear of the kernel's early pseudo filesystems.
    fn dev_of(&self, major: u32, source: &str) -> (u32, u32) {
        let Ok(mut d) = self.devs.lock() else {
            return (major, 0);
        };
        let next = 100 + d.len() as u32;
        *d.entry(format!("{major}:{source}"))
            .or_insert((major, next))
    }

    fn insert(&self, mut m: MountInfo) {
        if let Ok(mut p) = self.probes.lock() {
            p.remove(&m.mount_point);
        }
        if let (Ok(mut t), Ok(mut id)) = (self.table.lock(), self.next_id.lock()) {
            *id += 1;
            m.mount_id = 1000 + *id;
            t.insert(m.mount_point.clone(), m);
        }
    }
}

impl Mounter for FakeMounts {
    fn mount(&self, m: &FsMount, _timeout: Duration) -> Result<(), MountError> {
        self.injected("mount", &m.target)?;
        let ro = m.flags.contains(nix::mount::MsFlags::MS_RDONLY);
        let (major, minor) = self.dev_of(7, &m.source.display().to_string());
        self.insert(MountInfo {
            mount_id: 0,
            parent_id: 1,
            major,
            minor,
            root: "/".into(),
            mount_point: m.target.clone(),
            mount_options: if ro { "ro".into() } else { "rw".into() },
            optional: vec![],
            fs_type: m.fs_type.clone(),
            source: m.source.display().to_string(),
            super_options: m.data.clone(),
        });
        Ok(())
    }

    fn bind(&self, source: &Path, target: &Path, read_only: bool) -> Result<(), MountError> {
        self.injected("bind", target)?;
        let base = self.get(source);
        let mut m = base.unwrap_or_else(|| {
            let (major, minor) = self.dev_of(0, &source.display().to_string());
            MountInfo {
                mount_id: 0,
                parent_id: 1,
                major,
                minor,
                root: source.into(),
                mount_point: PathBuf::new(),
                mount_options: String::new(),
                optional: vec![],
                fs_type: "none".into(),
                source: source.display().to_string(),
                super_options: String::new(),
            }
        });
        m.mount_point = target.into();
        m.mount_options = if read_only { "ro".into() } else { "rw".into() };
        self.insert(m);
        Ok(())
    }

    fn remount(&self, target: &Path, read_only: bool) -> Result<(), MountError> {
        self.injected("remount", target)?;
        let mut t = self
            .table
            .lock()
            .map_err(|_| MountError::BadPath(target.into()))?;
        match t.get_mut(target) {
            Some(m) => {
                m.mount_options = if read_only { "ro".into() } else { "rw".into() };
                Ok(())
            }
            None => Err(MountError::Sys {
                op: "remount",
                target: target.into(),
                errno: Errno::EINVAL,
            }),
        }
    }

    fn unmount(&self, target: &Path, _lazy: bool, _timeout: Duration) -> Result<(), MountError> {
        self.injected("unmount", target)?;
        let mut t = self
            .table
            .lock()
            .map_err(|_| MountError::BadPath(target.into()))?;
        if let Ok(mut p) = self.probes.lock() {
            p.remove(target);
        }
        t.remove(target).map(drop).ok_or(MountError::Sys {
            op: "unmount",
            target: target.into(),
            errno: Errno::EINVAL,
        })
    }

    fn bind_target(
        &self,
        source: &Target,
        target: &Target,
        flags: nix::mount::MsFlags,
    ) -> Result<PathMount, MountError> {
        let ro = flags.contains(nix::mount::MsFlags::MS_RDONLY);
        self.bind(source.path(), target.path(), ro)?;
        self.path_mount(target.path())
            .map_err(|_| MountError::BadPath(target.path().into()))
    }

    fn bind_device(
        &self,
        device: &Path,
        _dev: super::DevNum,
        target: &Target,
        read_only: bool,
    ) -> Result<PathMount, MountError> {
        self.bind(device, target.path(), read_only)?;
        self.path_mount(target.path())
            .map_err(|_| MountError::BadPath(target.path().into()))
    }

    fn mount_target(
        &self,
        m: &FsMount,
        target: &Target,
        timeout: Duration,
    ) -> Result<PathMount, MountError> {
        let mut m = m.clone();
        m.target = target.path().into();
        self.mount(&m, timeout)?;
        self.path_mount(target.path())
            .map_err(|_| MountError::BadPath(target.path().into()))
    }

    fn unmount_target(
        &self,
        target: &Target,
        lazy: bool,
        timeout: Duration,
    ) -> Result<(), MountError> {
        self.unmount(target.path(), lazy, timeout)
    }
}

impl MountTable for FakeMounts {
    fn path_mount(&self, path: &Path) -> std::io::Result<PathMount> {
        if let Some(m) = self.get(path) {
            return Ok(PathMount {
                is_mount_root: true,
                mount_id: m.mount_id,
                id_unique: true,
                dev: (m.major, m.minor),
            });
        }
        std::fs::symlink_metadata(path)?;
        Ok(PathMount {
            is_mount_root: false,
            mount_id: 1,
            id_unique: true,
            dev: (0, 0),
        })
    }

    fn open_target(&self, path: &Path, create: bool) -> std::io::Result<Target> {
        if create {
            std::fs::create_dir_all(path)?;
        }
        Ok(Target::by_path(path))
    }

    /// Not mounted: gone; else what [`FakeMounts::set_probe`] said, or alive.
    fn probe(&self, path: &Path, _timeout: Duration) -> Probe {
        if self.get(path).is_none() {
            return Probe::Gone;
        }
        self.probes
            .lock()
            .ok()
            .and_then(|p| p.get(path).copied())
            .unwrap_or(Probe::Alive)
    }

    fn snapshot(&self) -> std::io::Result<Vec<MountInfo>> {
        Ok(self
            .table
            .lock()
            .map(|t| t.values().cloned().collect())
            .unwrap_or_default())
    }
}

/// One fake disk.
#[derive(Debug, Clone)]
pub struct FakeDisk {
    /// Its number.
    pub dev: DevNum,
    /// Its bytes (a fake disk is small: the checks read at most the first and last MiB).
    pub data: Vec<u8>,
    /// The kernel marks it read-only.
    pub read_only: bool,
    /// Its holders (device-mapper, md).
    pub holders: Vec<String>,
    /// Its partitions.
    pub partitions: Vec<String>,
    /// Reading it fails with this errno.
    pub read_error: Option<Errno>,
    /// Something holds it exclusively (a mount elsewhere).
    pub busy: bool,
}

/// In-memory block devices, by path: a path not added is no block device (its number is
/// `None` when the path exists, else the lookup fails as `stat` would).
#[derive(Debug, Default)]
pub struct FakeBlockDevices {
    disks: Mutex<BTreeMap<PathBuf, FakeDisk>>,
}

impl FakeBlockDevices {
    /// Adds a blank (all-zero) readable disk of `size` bytes at `path`.
    pub fn add(&self, path: &Path, dev: DevNum, size: usize) {
        self.put(
            path,
            FakeDisk {
                dev,
                data: vec![0; size],
                read_only: false,
                holders: vec![],
                partitions: vec![],
                read_error: None,
                busy: false,
            },
        );
    }

    /// Adds or replaces the disk at `path`.
    pub fn put(&self, path: &Path, disk: FakeDisk) {
        if let Ok(mut d) = self.disks.lock() {
            d.insert(path.to_owned(), disk);
        }
    }

    /// Changes the disk at `path` (a test writing a signature, making it unreadable).
    pub fn edit(&self, path: &Path, f: impl FnOnce(&mut FakeDisk)) {
        if let Some(d) = self
            .disks
            .lock()
            .ok()
            .as_mut()
            .and_then(|d| d.get_mut(path))
        {
            f(d);
        }
    }

    /// Writes `bytes` at `offset` of the disk at `path` (what mkfs would write).
    pub fn write_at(&self, path: &Path, offset: usize, bytes: &[u8]) {
        self.edit(path, |d| {
            let end = offset + bytes.len();
            if d.data.len() < end {
                d.data.resize(end, 0);
            }
            d.data[offset..end].copy_from_slice(bytes);
        });
    }

    /// The bytes of the disk at `path`.
    pub fn data(&self, path: &Path) -> Option<Vec<u8>> {
        self.disk(path).map(|d| d.data)
    }

    fn disk(&self, path: &Path) -> Option<FakeDisk> {
        self.disks.lock().ok().and_then(|d| d.get(path).cloned())
    }

    fn by_dev(&self, dev: DevNum) -> std::io::Result<FakeDisk> {
        self.disks
            .lock()
            .ok()
            .and_then(|d| d.values().find(|x| x.dev == dev).cloned())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    }

    fn readable(&self, path: &Path) -> std::io::Result<FakeDisk> {
        let d = self
            .disk(path)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))?;
        match d.read_error {
            Some(e) => Err(std::io::Error::from_raw_os_error(e as i32)),
            None => Ok(d),
        }
    }
}

impl BlockDevices for FakeBlockDevices {
    fn dev_num(&self, path: &Path) -> std::io::Result<Option<DevNum>> {
        if let Some(d) = self.disk(path) {
            return Ok(Some(d.dev));
        }
        std::fs::metadata(path).map(|_| None)
    }

    fn size_bytes(&self, d: DevNum) -> std::io::Result<u64> {
        Ok(self.by_dev(d)?.data.len() as u64)
    }

    fn is_read_only(&self, d: DevNum) -> std::io::Result<bool> {
        Ok(self.by_dev(d)?.read_only)
    }

    fn holders(&self, d: DevNum) -> std::io::Result<Vec<String>> {
        Ok(self.by_dev(d)?.holders)
    }

    fn partitions(&self, d: DevNum) -> std::io::Result<Vec<String>> {
        Ok(self.by_dev(d)?.partitions)
    }

    fn kernel_name(&self, d: DevNum) -> Option<String> {
        self.by_dev(d).ok().map(|x| format!("fake{}", x.dev.minor))
    }

    fn read_ends(&self, path: &Path) -> std::io::Result<Ends> {
        let d = self.readable(path)?;
        if d.data.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "device size is 0",
            ));
        }
        let n = d.data.len().min(1 << 20);
        let zero = |b: &[u8]| b.iter().all(|x| *x == 0);
        Ok(Ends {
            size: d.data.len() as u64,
            all_zero: zero(&d.data[..n]) && zero(&d.data[d.data.len() - n..]),
        })
    }

    fn read_at(&self, path: &Path, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let d = self.readable(path)?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let src = d
            .data
            .get(start..start.saturating_add(buf.len()))
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn claim_exclusive(&self, path: &Path) -> std::io::Result<()> {
        match self.disk(path) {
            Some(d) if d.busy => Err(std::io::Error::from_raw_os_error(Errno::EBUSY as i32)),
            Some(_) => Ok(()),
            None => Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
        }
    }

    fn set_capacity(&self, path: &Path) -> std::io::Result<()> {
        self.disk(path)
            .map(drop)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    }

    fn set_read_only(&self, path: &Path, read_only: bool) -> std::io::Result<()> {
        self.disk(path)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))?;
        self.edit(path, |d| d.read_only = read_only);
        Ok(())
    }
}

/// A [`Host`] over the fakes, its host paths under one temporary root (`<root>/kubelet`,
/// `state`, `run`, `sys`, `dev`) — except `/proc`, whose `self/fd` links name this
/// process's own descriptors and cannot be a fixture — and handles on each fake so a test
/// can script commands, inspect the mount table and add disks.
#[derive(Debug, Clone)]
pub struct FakeHost {
    /// The host to hand to the code under test.
    pub host: Host,
    /// Its command script.
    pub runner: Arc<ScriptRunner>,
    /// Its mount table.
    pub mounts: Arc<FakeMounts>,
    /// Its block devices.
    pub disks: Arc<FakeBlockDevices>,
}

impl FakeHost {
    /// A fake host rooted at `root` (the directories are not created).
    pub fn new(root: &Path) -> Self {
        let runner = Arc::new(ScriptRunner::default());
        let mounts = Arc::new(FakeMounts::default());
        let disks = Arc::new(FakeBlockDevices::default());
        let host = Host {
            paths: HostPaths {
                kubelet_dir: root.join("kubelet"),
                kubelet_alias: None,
                state_dir: root.join("state"),
                run_dir: root.join("run"),
                sys: root.join("sys"),
                dev: root.join("dev"),
                proc: "/proc".into(),
            },
            runner: runner.clone(),
            mounter: mounts.clone(),
            mounts: mounts.clone(),
            blockdev: disks.clone(),
        };
        FakeHost {
            host,
            runner,
            mounts,
            disks,
        }
    }

    /// Scripts `mkfs.ext4` next, as the real one behaves on the fake disk at `device`: it
    /// writes the ext magic and the UUID it was given (`-U <uuid>`) into the superblock, so
    /// the check that the new filesystem carries moor's UUID reads what mkfs wrote.
    pub fn expect_mkfs_ext4(&self, device: &Path) {
        let disks = self.disks.clone();
        let device = device.to_owned();
        self.runner.expect_program("mkfs.ext4", move |cmd| {
            let args: Vec<String> = cmd
                .args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            let hex = args
                .iter()
                .position(|a| a == "-U")
                .and_then(|i| args.get(i + 1))
                .map(|u| u.replace('-', ""))
                .unwrap_or_default();
            let raw: Option<Vec<u8>> = (0..hex.len() / 2)
                .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
                .collect();
            let Some(raw) = raw.filter(|r| r.len() == 16) else {
                return Output {
                    code: Some(1),
                    stdout: vec![],
                    stderr: b"fake mkfs.ext4: no -U <uuid>".to_vec(),
                };
            };
            // ext2/3/4: superblock at 1024, magic at +56, UUID at +104.
            disks.write_at(&device, 1024 + 56, &[0x53, 0xEF]);
            disks.write_at(&device, 1024 + 104, &raw);
            Output {
                code: Some(0),
                stdout: vec![],
                stderr: vec![],
            }
        });
    }

    /// Answers block device questions from a sysfs fixture tree under `<root>/sys` (what the
    /// attach drivers' tests build) instead of [`FakeHost::disks`], which then answers
    /// nothing.
    pub fn with_sysfs_fixture(mut self) -> Self {
        self.host.blockdev = Arc::new(super::blockdev::SysfsBlockDevices {
            sys: self.host.paths.sys.clone(),
        });
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_for_a_device_sees_it_appear_and_gives_up_on_one_that_never_does() {
        let disks = Arc::new(FakeBlockDevices::default());
        let t = tempfile::tempdir().unwrap();
        let (late, never) = (t.path().join("late"), t.path().join("never"));
        let d = DevNum {
            major: 252,
            minor: 3,
        };
        let adder = {
            let (disks, late) = (disks.clone(), late.clone());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(120));
                disks.add(&late, d, 4096);
            })
        };
        assert_eq!(disks.wait_for(&late, Duration::from_secs(10)), Some(d));
        adder.join().unwrap();
        let start = std::time::Instant::now();
        assert_eq!(disks.wait_for(&never, Duration::from_millis(200)), None);
        assert!(start.elapsed() >= Duration::from_millis(200));
    }

    #[test]
    fn two_sources_get_two_device_numbers_and_one_source_keeps_its_own() {
        let m = FakeMounts::default();
        let t = tempfile::tempdir().unwrap();
        let at = |n: &str| t.path().join(n);
        m.bind(&at("src-a"), &at("a1"), false).unwrap();
        m.bind(&at("src-a"), &at("a2"), true).unwrap();
        m.bind(&at("src-b"), &at("b1"), false).unwrap();
        m.bind(&at("a1"), &at("a3"), false).unwrap();
        let dev = |n: &str| m.get(&at(n)).map(|x| (x.major, x.minor)).unwrap();
        assert_eq!(dev("a1"), dev("a2"));
        assert_eq!(
            dev("a1"),
            dev("a3"),
            "a bind of a mount shows that mount's filesystem"
        );
        assert_ne!(dev("a1"), dev("b1"));
        let fs = |src: &str, target: &str| FsMount {
            source: src.into(),
            target: at(target),
            fs_type: "ext4".into(),
            flags: nix::mount::MsFlags::empty(),
            data: String::new(),
        };
        m.mount(&fs("/dev/x", "x1"), Duration::from_secs(1))
            .unwrap();
        m.mount(&fs("/dev/x", "x2"), Duration::from_secs(1))
            .unwrap();
        m.mount(&fs("/dev/y", "y1"), Duration::from_secs(1))
            .unwrap();
        assert_eq!(dev("x1"), dev("x2"), "one device, one filesystem");
        assert_ne!(dev("x1"), dev("y1"));
        assert_ne!(dev("x1"), dev("a1"));
    }
}
