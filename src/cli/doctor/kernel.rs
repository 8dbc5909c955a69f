//! The kernel's part: its version (5.12+: moor binds pod directories with `open_tree`,
//! `mount_setattr` and `move_mount`) and whether statx reports `STATX_ATTR_MOUNT_ROOT` (5.8+,
//! moor's ownership check needs it), the modules each driver needs (loaded, built in, or
//! loadable from `modules.dep`), and `CAP_SYS_RESOURCE` (ext4's online grow of a filesystem
//! with reserved blocks needs it). Read from `<proc>`, `<sys>` and `<lib_modules>` only.

use super::{Inputs, Row, Status};

/// The modules moor's drivers need: (module, drivers, required). A missing optional one is a
/// warning (dm_multipath: one path is used). cephfs' ceph-fuse client needs fuse too, but
/// the kernel client is its default, so fuse is asked of glusterfs only.
pub const MODULES: &[(&str, &[&str], bool)] = &[
    ("iscsi_tcp", &["iscsi"], true),
    ("rbd", &["rbd"], true),
    ("nfs", &["nfs"], true),
    ("ceph", &["cephfs"], true),
    ("fuse", &["glusterfs"], true),
    ("dm_multipath", &["iscsi", "fc"], false),
];

/// Every row of this area.
pub fn check(inputs: &Inputs) -> Vec<Row> {
    let mut rows = vec![kernel_row(inputs)];
    let release = release(inputs);
    for (m, drivers, required) in MODULES {
        rows.push(module_row(
            inputs,
            release.as_deref(),
            m,
            drivers,
            *required,
        ));
    }
    rows.push(cap_row(inputs));
    rows
}

fn release(inputs: &Inputs) -> Option<String> {
    inputs
        .root
        .read(&inputs.root.proc.join("sys/kernel/osrelease"))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The oldest kernel moor runs on.
pub const MIN_KERNEL: (u32, u32) = (5, 12);

/// `major.minor` of a release string (`6.1.0-27-amd64` → (6, 1)).
pub fn version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

fn kernel_row(inputs: &Inputs) -> Row {
    let row = Row::new("kernel", &[], Status::Ok);
    let Some(rel) = release(inputs) else {
        return Row {
            status: Status::Fail,
            ..row
        }
        .detail("cannot read sys/kernel/osrelease under the proc root")
        .fix("mount /proc");
    };
    let old = version(&rel).is_none_or(|v| v < MIN_KERNEL);
    match (&inputs.statx_mount_root, old) {
        (Ok(()), false) => row.detail(format!("{rel}; statx reports STATX_ATTR_MOUNT_ROOT")),
        (Ok(()), true) => Row { status: Status::Fail, ..row }
            .detail(format!("{rel}: older than 5.12 (mount_setattr, open_tree, move_mount)"))
            .fix("boot a 5.12 or newer kernel"),
        (Err(e), _) => Row { status: Status::Fail, ..row }
            .detail(format!("{rel}; statx: {e}"))
            .fix("boot a 5.12 or newer kernel: moor decides what it may unmount from statx's mount-root flag (5.8+)"),
    }
}

/// Where a module was found.
#[derive(Debug, PartialEq, Eq)]
pub enum ModuleState {
    /// In `/proc/modules` or `/sys/module`.
    Loaded,
    /// Listed in `modules.builtin`.
    BuiltIn,
    /// In `modules.dep`: the kernel or the tool loads it on first use.
    Loadable,
    /// Nowhere.
    Missing,
}

/// The module's state (names compare with '-' and '_' as one, as modprobe does).
pub fn module_state(inputs: &Inputs, release: Option<&str>, module: &str) -> ModuleState {
    let norm = |s: &str| s.replace('-', "_");
    let root = &inputs.root;
    let loaded = root.read(&root.proc.join("modules")).is_some_and(|t| {
        t.lines().any(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|n| norm(n) == module)
        })
    }) || root.sys.join("module").join(module).is_dir();
    if loaded {
        return ModuleState::Loaded;
    }
    let Some(rel) = release else {
        return ModuleState::Missing;
    };
    let listed = |file: &str| {
        root.read(&root.lib_modules.join(rel).join(file))
            .is_some_and(|t| {
                t.lines().any(|l| {
                    let path = l.split(':').next().unwrap_or("");
                    let base = path.rsplit('/').next().unwrap_or("");
                    base.split(".ko").next().is_some_and(|n| norm(n) == module)
                        && base.contains(".ko")
                })
            })
    };
    if listed("modules.builtin") {
        ModuleState::BuiltIn
    } else if listed("modules.dep") {
        ModuleState::Loadable
    } else {
        ModuleState::Missing
    }
}

fn module_row(
    inputs: &Inputs,
    release: Option<&str>,
    m: &str,
    drivers: &[&str],
    required: bool,
) -> Row {
    let row = Row::new(format!("module {m}"), drivers, Status::Ok);
    match module_state(inputs, release, m) {
        ModuleState::Loaded => row.detail("loaded"),
        ModuleState::BuiltIn => row.detail("built into the kernel"),
        ModuleState::Loadable => row.detail(format!(
            "not loaded; in modules.dep of {}: loaded on first use",
            release.unwrap_or("?")
        )),
        ModuleState::Missing => Row {
            status: if required { Status::Fail } else { Status::Warn },
            ..row
        }
        .detail(format!(
            "not loaded, not built in, not in {}/{}/modules.dep",
            inputs.root.lib_modules.display(),
            release.unwrap_or("?")
        ))
        .fix(format!(
            "install this kernel's modules (Debian: linux-image-$(uname -r); Ubuntu: linux-modules-extra-$(uname -r)), then modprobe {m}{}",
            if required { "" } else { " (optional: without it one path is used)" }
        )),
    }
}

/// CapEff of `<proc>/self/status` has bit `bit`.
pub fn has_cap(status: &str, bit: u32) -> Option<bool> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    let v = u64::from_str_radix(hex, 16).ok()?;
    Some(v & (1u64 << bit) != 0)
}

/// `CAP_SYS_RESOURCE`'s bit.
pub const CAP_SYS_RESOURCE: u32 = 24;

fn cap_row(inputs: &Inputs) -> Row {
    let drivers = ["local", "iscsi", "rbd", "fc"];
    let row = Row::new("capability CAP_SYS_RESOURCE", &drivers, Status::Ok);
    match inputs
        .root
        .read(&inputs.root.proc.join("self/status"))
        .and_then(|s| has_cap(&s, CAP_SYS_RESOURCE))
    {
        Some(true) => row.detail("in the effective set"),
        Some(false) => Row { status: Status::Warn, ..row }
            .detail("not in the effective set: resize2fs cannot grow an ext4 filesystem with reserved blocks online")
            .fix("run moor as root with all capabilities (systemd: no CapabilityBoundingSet; DaemonSet: privileged: true or add SYS_RESOURCE)"),
        None => Row { status: Status::Warn, ..row }.detail("cannot read CapEff from proc/self/status"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::Fx;
    use super::*;

    #[test]
    fn a_new_kernel_with_statx_is_ok_and_an_old_one_or_no_flag_fails() {
        let mut fx = Fx::new();
        fx.write("proc/sys/kernel/osrelease", "6.1.0-27-amd64\n");
        let r = kernel_row(&fx.inputs);
        assert_eq!(r.status, Status::Ok, "{r:?}");
        assert!(r.detail.contains("6.1.0-27-amd64"), "{r:?}");
        fx.write("proc/sys/kernel/osrelease", "5.10.0-150-generic\n");
        let r = kernel_row(&fx.inputs);
        assert_eq!(r.status, Status::Fail);
        assert!(r.fix.contains("5.12"), "{r:?}");
        fx.write("proc/sys/kernel/osrelease", "5.12.1\n");
        assert_eq!(kernel_row(&fx.inputs).status, Status::Ok);
        fx.write("proc/sys/kernel/osrelease", "6.1.0\n");
        fx.inputs.statx_mount_root = Err("kernel does not report STATX_ATTR_MOUNT_ROOT".into());
        let r = kernel_row(&fx.inputs);
        assert_eq!(r.status, Status::Fail);
        assert!(r.detail.contains("STATX_ATTR_MOUNT_ROOT"), "{r:?}");
    }

    #[test]
    fn modules_are_found_loaded_built_in_or_loadable_and_a_missing_one_names_the_fix() {
        let fx = Fx::new();
        let rel = "6.1.0-27-amd64";
        fx.write("proc/sys/kernel/osrelease", rel);
        fx.write(
            "proc/modules",
            "nfs 536576 0 - Live 0x0\nrbd 118784 0 - Live 0x0\n",
        );
        std::fs::create_dir_all(fx.path("sys/module/fuse")).unwrap();
        fx.write(
            &format!("lib/modules/{rel}/modules.dep"),
            "kernel/drivers/md/dm-multipath.ko.xz: kernel/drivers/md/dm-mod.ko.xz\nkernel/fs/ceph/ceph.ko.xz: kernel/net/ceph/libceph.ko.xz\n",
        );
        fx.write(
            &format!("lib/modules/{rel}/modules.builtin"),
            "kernel/drivers/scsi/iscsi_tcp.ko\n",
        );
        let rows = check(&fx.inputs);
        let st = |c: &str| Fx::row(&rows, c).status;
        assert_eq!(st("module nfs"), Status::Ok);
        assert_eq!(st("module rbd"), Status::Ok);
        assert_eq!(Fx::row(&rows, "module fuse").detail, "loaded");
        assert!(
            Fx::row(&rows, "module dm_multipath")
                .detail
                .contains("modules.dep")
        );
        assert!(Fx::row(&rows, "module ceph").detail.contains("first use"));
        assert!(
            Fx::row(&rows, "module iscsi_tcp")
                .detail
                .contains("built into")
        );

        let bare = Fx::new();
        bare.write("proc/sys/kernel/osrelease", rel);
        let rows = check(&bare.inputs);
        let r = Fx::row(&rows, "module iscsi_tcp");
        assert_eq!(r.status, Status::Fail);
        assert!(
            r.fix.contains("modprobe iscsi_tcp") && r.fix.contains("linux-modules-extra"),
            "{r:?}"
        );
        assert_eq!(Fx::row(&rows, "module dm_multipath").status, Status::Warn);
    }

    #[test]
    fn cap_sys_resource_is_read_from_cap_eff() {
        let fx = Fx::new();
        fx.write(
            "proc/self/status",
            "Name:\tmoor\nCapEff:\t000001ffffffffff\n",
        );
        assert_eq!(cap_row(&fx.inputs).status, Status::Ok);
        // Everything but bit 24.
        fx.write("proc/self/status", "CapEff:\t000001fffeffffff\n");
        let r = cap_row(&fx.inputs);
        assert_eq!(r.status, Status::Warn);
        assert!(r.fix.contains("SYS_RESOURCE"), "{r:?}");
        assert_eq!(version("5.10.0-amd64"), Some((5, 10)));
    }
}
