//! The host seam: the only code that touches the machine.
//!
//! Services receive a [`Host`] value; production builds it with [`Host::system`], unit
//! tests with [`fake::FakeHost::new`]. Invariant: nothing outside this module spawns a
//! process, calls mount(2) or makes any other call through `libc` or `nix` (tests aside);
//! the kernel's vocabulary the seam's signatures use, [`Errno`] and [`MsFlags`], is
//! re-exported here. Every host location comes from the one [`HostPaths`] value.

use std::sync::Arc;

pub mod allow;
pub mod blockdev;
pub mod bounded;
pub mod deadline;
pub mod devid;
pub mod dirs;
pub mod exec;
pub mod fake;
pub mod fusectl;
pub mod mountinfo;
pub mod mounts;
pub mod mountwatch;
pub mod nsmark;
pub mod nsmounts;
pub mod onhost;
pub mod paths;
pub mod podlogs;
pub mod podproc;
pub mod probe;
pub mod process;
pub mod rbdbus;
pub mod records;
pub mod sandbox;
pub mod scsi;
pub mod secrets;
pub mod stdio;
pub mod target;
pub mod tree;

pub use blockdev::{BlockDevices, DevNum, SysfsBlockDevices};
pub use exec::{Cmd, CommandRunner, ExecError, Output, SystemRunner};
pub use mounts::{FsMount, KernelMounts, MountError, MountTable, Mounter, PathMount};
/// The kernel's error numbers and mount flags, as the seam's signatures use them.
pub use nix::errno::Errno;
pub use nix::mount::MsFlags;
pub use paths::{CsiStaging, CsiTarget, HostPaths, PathError, PodVolumeDir};
pub use target::Target;

/// Everything that touches the machine, bundled for injection.
#[derive(Clone)]
pub struct Host {
    /// Host locations.
    pub paths: HostPaths,
    /// External programs.
    pub runner: Arc<dyn CommandRunner>,
    /// Mount changes.
    pub mounter: Arc<dyn Mounter>,
    /// Mount questions.
    pub mounts: Arc<dyn MountTable>,
    /// Block device questions.
    pub blockdev: Arc<dyn BlockDevices>,
}

impl Host {
    /// The real machine.
    pub fn system(paths: HostPaths) -> Self {
        let kernel = Arc::new(KernelMounts {
            mountinfo: paths.proc.join("self/mountinfo"),
            kubelet_dir: paths.kubelet_dir.clone(),
        });
        Host {
            blockdev: Arc::new(SysfsBlockDevices {
                sys: paths.sys.clone(),
            }),
            paths,
            runner: Arc::new(SystemRunner),
            mounter: kernel.clone(),
            mounts: kernel,
        }
    }
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

/// Fills `buf` from the kernel's random source (`getrandom(2)`, blocking until it is seeded).
pub fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}
