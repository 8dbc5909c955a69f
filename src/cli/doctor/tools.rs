//! The programs moor runs, per driver, found on the root's PATH, each asked its version (the
//! first line it prints to `--version`/`-V`, whatever its exit status: several print usage
//! and exit 1). A required tool that is missing fails its drivers; an optional one warns.
//! The list is read from the drivers' code: `attach/iscsiadm.rs`, `attach/rbd.rs`,
//! `attach/scsi.rs`, `share/*`, `fs/mkfs.rs`, `fs/format.rs`, `local/wipe.rs`.
//!
//! In the container mode (`host-mount-namespace` set) the host-bound tools
//! ([`crate::host::onhost::HOST_TOOLS`], the mount helpers and FUSE clients `mount` runs)
//! are looked for where moor runs them — on the host, through `<proc>/1/root` — and asked
//! their version through `nsenter`, as the daemon runs them; the filesystem tools are the
//! image's own.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Inputs, Row, Status};
use crate::host::Cmd;

/// A tool moor calls.
pub struct Tool {
    /// Program name.
    pub name: &'static str,
    /// The drivers that call it.
    pub drivers: &'static [&'static str],
    /// Missing fails those drivers (else a warning says what is lost).
    pub required: bool,
    /// The Debian package that ships it.
    pub package: &'static str,
    /// The argument that makes it print its version.
    pub version_arg: &'static str,
    /// What is lost without it, for an optional tool.
    pub without: &'static str,
}

const BLOCK: &[&str] = &["local", "iscsi", "rbd", "fc"];

const fn t(
    name: &'static str,
    drivers: &'static [&'static str],
    required: bool,
    package: &'static str,
    version_arg: &'static str,
    without: &'static str,
) -> Tool {
    Tool {
        name,
        drivers,
        required,
        package,
        version_arg,
        without,
    }
}

/// Every tool, in the order the table shows them.
pub const TOOLS: &[Tool] = &[
    t("mount", &[], true, "mount", "-V", ""),
    t("umount", &[], true, "mount", "-V", ""),
    t("iscsiadm", &["iscsi"], true, "open-iscsi", "--version", ""),
    t(
        "multipath",
        &["iscsi", "fc"],
        false,
        "multipath-tools",
        "-h",
        "a volume with several paths is used through one",
    ),
    t("rbd", &["rbd"], true, "ceph-common", "--version", ""),
    t("mount.nfs", &["nfs"], true, "nfs-common", "-V", ""),
    t(
        "mount.glusterfs",
        &["glusterfs"],
        true,
        "glusterfs-client",
        "-V",
        "",
    ),
    t(
        "glusterfs",
        &["glusterfs"],
        true,
        "glusterfs-client",
        "--version",
        "",
    ),
    t(
        "pkill",
        &["glusterfs"],
        false,
        "procps",
        "-V",
        "a client left behind by a failed mount is not stopped",
    ),
    // The kernel client is given `secretfile=`, which only the helper reads.
    t("mount.ceph", &["cephfs"], true, "ceph-common", "-V", ""),
    t(
        "ceph-fuse",
        &["cephfs"],
        false,
        "ceph-fuse",
        "--version",
        "volumes with mounter: fuse cannot mount",
    ),
    t("blkid", BLOCK, true, "util-linux", "-V", ""),
    t("mkfs.ext4", BLOCK, true, "e2fsprogs", "-V", ""),
    t("e2fsck", BLOCK, true, "e2fsprogs", "-V", ""),
    t("resize2fs", BLOCK, true, "e2fsprogs", "-h", ""),
    t(
        "mkfs.xfs",
        BLOCK,
        false,
        "xfsprogs",
        "-V",
        "volumes with fsType xfs cannot be formatted",
    ),
    t(
        "xfs_growfs",
        BLOCK,
        false,
        "xfsprogs",
        "-V",
        "xfs volumes cannot grow",
    ),
    t(
        "wipefs",
        &["local"],
        false,
        "util-linux",
        "-V",
        "released local PVs cannot be wiped",
    ),
    t(
        "blkdiscard",
        &["local"],
        false,
        "util-linux",
        "-V",
        "released local PVs are wiped without discard",
    ),
];

/// Every row of this area.
pub fn check(inputs: &Inputs) -> Vec<Row> {
    TOOLS.iter().map(|tool| row(inputs, tool)).collect()
}

/// The first non-empty line a tool printed, on either stream.
pub fn first_line(stdout: &[u8], stderr: &[u8]) -> Option<String> {
    [stdout, stderr].into_iter().find_map(|b| {
        String::from_utf8_lossy(b)
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(|l| l.chars().take(100).collect())
    })
}

/// The tool runs in the host's mount namespace (container mode only).
fn on_host(inputs: &Inputs, name: &str) -> Option<PathBuf> {
    let ns = inputs.cfg.host_mount_namespace.as_ref()?;
    let host_bound = crate::host::onhost::HOST_TOOLS.contains(&name)
        || name.starts_with("mount.")
        || matches!(name, "umount" | "glusterfs" | "ceph-fuse");
    host_bound.then(|| ns.clone())
}

/// The tool on the host's PATH as seen through `<proc>/1/root`: (path on the host, path
/// from here).
fn which_on_host(inputs: &Inputs, name: &str) -> Option<(PathBuf, PathBuf)> {
    let host_root = inputs.root.proc.join("1/root");
    inputs.root.path.iter().find_map(|d| {
        let on_host = d.join(name);
        let here = host_root.join(on_host.strip_prefix("/").unwrap_or(&on_host));
        std::fs::metadata(&here)
            .is_ok_and(|m| m.is_file())
            .then_some((on_host, here))
    })
}

/// The tool is where moor would run it from (the host's PATH in the container mode).
pub fn present(inputs: &Inputs, name: &str) -> bool {
    match on_host(inputs, name) {
        Some(_) => which_on_host(inputs, name).is_some(),
        None => inputs.root.which(name).is_some(),
    }
}

fn host_row(inputs: &Inputs, tool: &Tool, ns: &Path, row: Row) -> Row {
    let Some((path, _)) = which_on_host(inputs, tool.name) else {
        let status = if tool.required {
            Status::Fail
        } else {
            Status::Warn
        };
        return Row { status, ..row }
            .detail(format!(
                "not found on the host's PATH (through {})",
                inputs.root.proc.join("1/root").display()
            ))
            .fix(format!("apt-get install {} on the host", tool.package));
    };
    let mut mount = std::ffi::OsString::from("--mount=");
    mount.push(ns);
    let cmd = Cmd::new("nsenter")
        .arg(mount)
        .arg("--")
        .arg(&path)
        .arg(tool.version_arg)
        .timeout(Duration::from_secs(5));
    let version = match inputs.runner.run(&cmd) {
        Ok(out) => {
            first_line(&out.stdout, &out.stderr).unwrap_or_else(|| "no version printed".into())
        }
        Err(e) => format!("version not read: {e}"),
    };
    row.detail(format!("on the host: {}: {version}", path.display()))
}

fn row(inputs: &Inputs, tool: &Tool) -> Row {
    let row = Row::new(format!("tool {}", tool.name), tool.drivers, Status::Ok);
    if let Some(ns) = on_host(inputs, tool.name) {
        return host_row(inputs, tool, &ns, row);
    }
    let Some(path) = inputs.root.which(tool.name) else {
        let status = if tool.required {
            Status::Fail
        } else {
            Status::Warn
        };
        let lost = if tool.required {
            String::new()
        } else {
            format!(" (without it {})", tool.without)
        };
        return Row { status, ..row }
            .detail("not found on the PATH")
            .fix(format!("apt-get install {}{lost}", tool.package));
    };
    let cmd = Cmd::new(&path)
        .arg(tool.version_arg)
        .timeout(Duration::from_secs(5));
    match inputs.runner.run(&cmd) {
        Ok(out) => {
            let v =
                first_line(&out.stdout, &out.stderr).unwrap_or_else(|| "no version printed".into());
            row.detail(format!("{}: {v}", path.display()))
        }
        Err(e) => Row {
            status: if tool.required {
                Status::Fail
            } else {
                Status::Warn
            },
            ..row
        }
        .detail(format!("{} does not run: {e}", path.display()))
        .fix(format!("reinstall {}", tool.package)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::Fx;
    use super::*;

    #[test]
    fn a_present_tool_shows_its_version_and_a_missing_one_names_its_package() {
        let fx = Fx::new();
        fx.tool("iscsiadm", "iscsiadm version 2.1.8", false);
        // e2fsprogs print their version on stderr.
        fx.tool("mkfs.ext4", "mke2fs 1.47.0 (5-Feb-2023)", true);
        let rows = check(&fx.inputs);
        let r = Fx::row(&rows, "tool iscsiadm");
        assert_eq!(r.status, Status::Ok);
        assert!(r.detail.ends_with("iscsiadm version 2.1.8"), "{r:?}");
        assert!(
            Fx::row(&rows, "tool mkfs.ext4")
                .detail
                .contains("mke2fs 1.47.0")
        );
        let r = Fx::row(&rows, "tool rbd");
        assert_eq!(r.status, Status::Fail);
        assert_eq!(r.fix, "apt-get install ceph-common");
        let r = Fx::row(&rows, "tool multipath");
        assert_eq!(r.status, Status::Warn, "optional");
        assert!(
            r.fix.contains("multipath-tools") && r.fix.contains("one"),
            "{r:?}"
        );
    }

    #[test]
    fn in_the_container_mode_host_tools_are_looked_for_on_the_host() {
        let mut fx = Fx::new();
        fx.inputs.cfg.host_mount_namespace = Some("/proc/1/ns/mnt".into());
        // In the image, not on the host: the host's copy is the one moor runs.
        fx.tool("iscsiadm", "iscsiadm version 2.1.8", false);
        fx.tool("blkid", "blkid from util-linux 2.38.1", false);
        let rows = check(&fx.inputs);
        let r = Fx::row(&rows, "tool iscsiadm");
        assert_eq!(r.status, Status::Fail, "{r:?}");
        assert!(
            r.detail.contains("host's PATH") && r.fix.ends_with("on the host"),
            "{r:?}"
        );
        assert_eq!(
            Fx::row(&rows, "tool blkid").status,
            Status::Ok,
            "filesystem tools are the image's"
        );
        let bin = fx.path("bin");
        let host_copy = fx
            .path("proc/1/root")
            .join(bin.strip_prefix("/").unwrap())
            .join("iscsiadm");
        std::fs::create_dir_all(host_copy.parent().unwrap()).unwrap();
        std::fs::write(&host_copy, "#!/bin/sh\n").unwrap();
        let r = row(&fx.inputs, &TOOLS[2]);
        assert_eq!(r.status, Status::Ok, "{r:?}");
        assert!(
            r.detail
                .starts_with(&format!("on the host: {}", bin.join("iscsiadm").display())),
            "{r:?}"
        );
    }

    #[test]
    fn a_tool_that_is_not_executable_is_not_found() {
        let fx = Fx::new();
        fx.write("bin/rbd", "not a program");
        assert_eq!(row(&fx.inputs, &TOOLS[4]).status, Status::Fail);
        assert_eq!(first_line(b"\n  \n", b"x 1\ny"), Some("x 1".into()));
    }
}
