//! The programs moor runs, per driver, found on the root's PATH, each asked its version (the
//! first line it prints to `--version`/`-V`, whatever its exit status: several print usage
//! and exit 1). A required tool that is missing fails its drivers; an optional one warns.
//! The list is read from the drivers' code: `attach/iscsiadm.rs`, `attach/rbd.rs`,
//! `attach/scsi.rs`, `share/*`, `fs/mkfs.rs`, `fs/format.rs`, `local/wipe.rs`.

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

fn row(inputs: &Inputs, tool: &Tool) -> Row {
    let row = Row::new(format!("tool {}", tool.name), tool.drivers, Status::Ok);
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
    fn a_tool_that_is_not_executable_is_not_found() {
        let fx = Fx::new();
        fx.write("bin/rbd", "not a program");
        assert_eq!(row(&fx.inputs, &TOOLS[4]).status, Status::Fail);
        assert_eq!(first_line(b"\n  \n", b"x 1\ny"), Some("x 1".into()));
    }
}
