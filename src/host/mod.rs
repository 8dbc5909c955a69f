//! The host seam: the only code that touches the machine.
//!
//! Services receive a [`Host`] value; production builds it with [`Host::system`], unit
//! tests with the fakes in [`fake`]. Nothing outside this module spawns a process or
//! calls mount(2).

use std::sync::Arc;

pub mod allow;
pub mod blockdev;
pub mod bounded;
pub mod deadline;
pub mod exec;
pub mod fake;
pub mod fusectl;
pub mod mountinfo;
pub mod mounts;
pub mod onhost;
pub mod paths;
pub mod podlogs;
pub mod rbdbus;
pub mod records;
pub mod sandbox;
pub mod scsi;
pub mod secrets;
pub mod stdio;
pub mod target;

pub use blockdev::{BlockDevices, DevNum};
pub use exec::{Cmd, CommandRunner, ExecError, Output, SystemRunner};
pub use mounts::{FsMount, KernelMounts, MountError, MountTable, Mounter, PathMount};
pub use paths::{HostPaths, PathError, PodVolumeDir};
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
    pub blockdev: BlockDevices,
}

impl Host {
    /// The real machine.
    pub fn system(paths: HostPaths) -> Self {
        let kernel = Arc::new(KernelMounts {
            mountinfo: paths.proc.join("self/mountinfo"),
            kubelet_dir: paths.kubelet_dir.clone(),
        });
        Host {
            blockdev: BlockDevices {
                sys: paths.sys.clone(),
            },
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
