//! The host services and settings moor relies on: iscsid and multipathd running (the process
//! table, or systemd's socket activation of iscsid), `/etc/multipath.conf`'s
//! `find_multipaths` and blacklist, the iSCSI initiator name, and systemd as PID 1 for FUSE
//! scopes (or the container mode that reaches the host's systemd). In the container mode the
//! host's `/etc` is read through `<proc>/1/root/etc`: iscsid and multipathd read theirs.

use super::{Inputs, Row, Status};
use crate::host::Cmd;

/// Every row of this area.
pub fn check(inputs: &Inputs) -> Vec<Row> {
    vec![
        iscsid(inputs),
        multipathd(inputs),
        multipath_conf(inputs),
        initiator_name(inputs),
        systemd(inputs),
    ]
}

/// The `/etc` the host's iscsid and multipathd read.
fn host_etc(inputs: &Inputs) -> std::path::PathBuf {
    if inputs.cfg.host_mount_namespace.is_some() {
        inputs.root.proc.join("1/root/etc")
    } else {
        inputs.root.etc.clone()
    }
}

/// The `comm` of every process under the proc root.
pub fn processes(inputs: &Inputs) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(&inputs.root.proc) else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .map(|c| c.trim().to_owned())
        .collect()
}

fn pid1_is_systemd(inputs: &Inputs) -> bool {
    inputs
        .root
        .read(&inputs.root.proc.join("1/comm"))
        .is_some_and(|c| c.trim() == "systemd")
}

/// `systemctl is-active <unit>` said `active` (only asked when systemd is PID 1).
fn unit_active(inputs: &Inputs, unit: &str) -> bool {
    if !pid1_is_systemd(inputs) {
        return false;
    }
    let Some(systemctl) = inputs.root.which("systemctl") else {
        return false;
    };
    let cmd = Cmd::new(systemctl)
        .args(["is-active", unit])
        .timeout(std::time::Duration::from_secs(5));
    inputs
        .runner
        .run(&cmd)
        .is_ok_and(|o| o.success() && o.stdout_text().trim() == "active")
}

fn iscsid(inputs: &Inputs) -> Row {
    let row = Row::new("service iscsid", &["iscsi"], Status::Ok);
    if processes(inputs).iter().any(|p| p == "iscsid") {
        return row.detail("running");
    }
    if unit_active(inputs, "iscsid.socket") {
        return row.detail("not running; iscsid.socket is active (started on first use)");
    }
    Row {
        status: Status::Fail,
        ..row
    }
    .detail("no iscsid process and no active iscsid.socket")
    .fix("systemctl enable --now iscsid (package open-iscsi)")
}

fn multipathd(inputs: &Inputs) -> Row {
    let row = Row::new("service multipathd", &["iscsi", "fc"], Status::Ok);
    if processes(inputs).iter().any(|p| p == "multipathd") {
        return row.detail("running");
    }
    if unit_active(inputs, "multipathd") {
        return row.detail("active");
    }
    Row { status: Status::Warn, ..row }
        .detail("not running: a LUN reached through several portals is used through one path")
        .fix("systemctl enable --now multipathd (package multipath-tools), if volumes have several paths")
}

/// What moor needs of `multipath.conf`, from its text: `Ok(detail)` or `Err((status, detail,
/// fix))`.
pub fn judge_multipath_conf(text: &str) -> Result<String, (Status, String, String)> {
    let mut section: Vec<String> = Vec::new();
    let mut find = None;
    let mut blacklisted = Vec::new();
    for raw in text.lines() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_suffix('{') {
            section.push(name.trim().to_owned());
            continue;
        }
        if line == "}" {
            section.pop();
            continue;
        }
        let mut words = line.splitn(2, char::is_whitespace);
        let key = words.next().unwrap_or("");
        let value = words
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches('"')
            .to_owned();
        match (section.first().map(String::as_str), key) {
            (Some("defaults"), "find_multipaths") => find = Some(value),
            (Some("blacklist"), "devnode" | "wwid") => blacklisted.push((key.to_owned(), value)),
            _ => {}
        }
    }
    // iSCSI and FC paths are sdX devices with varying WWIDs: a pattern that matches every sd
    // device or every WWID takes every path away from multipathd.
    let all = |v: &str| {
        let v = v.trim_start_matches('^');
        matches!(
            v,
            ".*" | "*" | ".+" | "sd" | "sd.*" | "sd[a-z]" | "sd[a-z]*" | "sd[a-z]+" | "(sd)"
        )
    };
    if let Some((k, v)) = blacklisted.iter().find(|(_, v)| all(v)) {
        return Err((
            Status::Fail,
            format!("blacklist {k} \"{v}\" covers every iSCSI/FC path"),
            "blacklist local disks by wwid (or use blacklist_exceptions), not every sd device"
                .into(),
        ));
    }
    match find.as_deref() {
        Some("no" | "off" | "greedy") => Err((
            Status::Warn,
            format!("find_multipaths {}: multipathd claims every disk, local PV disks included (\"already mounted or mount point busy\")", find.unwrap_or_default()),
            "find_multipaths yes (or smart) in defaults, and blacklist the node's local disks".into(),
        )),
        Some("strict") => Err((
            Status::Warn,
            "find_multipaths strict: a new LUN's WWID is not in /etc/multipath/wwids, so it gets no map and one path is used".into(),
            "find_multipaths yes (or smart) in defaults".into(),
        )),
        Some(v) => Ok(format!("find_multipaths {v}; {} blacklist entr(ies)", blacklisted.len())),
        None => Ok(format!("find_multipaths not set (the build's default); {} blacklist entr(ies)", blacklisted.len())),
    }
}

fn multipath_conf(inputs: &Inputs) -> Row {
    let row = Row::new("multipath.conf", &["iscsi", "fc"], Status::Ok);
    let path = host_etc(inputs).join("multipath.conf");
    match inputs.root.read(&path) {
        None if !super::tools::present(inputs, "multipath") => Row {
            status: Status::Skip,
            ..row
        }
        .detail("multipath-tools not installed"),
        None => Row {
            status: Status::Warn,
            ..row
        }
        .detail(format!(
            "{} absent: multipathd runs on its built-in defaults",
            path.display()
        ))
        .fix("write defaults { find_multipaths yes } and a blacklist of the node's local disks"),
        Some(text) => match judge_multipath_conf(&text) {
            Ok(d) => row.detail(d),
            Err((status, d, fix)) => Row { status, ..row }.detail(d).fix(fix),
        },
    }
}

fn initiator_name(inputs: &Inputs) -> Row {
    let row = Row::new("iscsi initiator name", &["iscsi"], Status::Ok);
    let path = host_etc(inputs).join("iscsi/initiatorname.iscsi");
    let fix = "echo \"InitiatorName=$(iscsi-iname)\" > /etc/iscsi/initiatorname.iscsi, then restart iscsid";
    let Some(text) = inputs.root.read(&path) else {
        return Row {
            status: Status::Fail,
            ..row
        }
        .detail(format!("{} absent", path.display()))
        .fix(fix);
    };
    let name = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix("InitiatorName="));
    match name {
        Some(n) if crate::volume::validate::iscsi_name("InitiatorName", n.trim()).is_ok() => {
            row.detail(n.trim().to_owned())
        }
        Some(n) => Row {
            status: Status::Fail,
            ..row
        }
        .detail(format!(
            "{}: {n:?} is not an iqn./eui./naa. name",
            path.display()
        ))
        .fix(fix),
        None if text.contains("GenerateName=yes") => Row {
            status: Status::Warn,
            ..row
        }
        .detail("GenerateName=yes: open-iscsi makes the name when iscsid first starts")
        .fix("systemctl start iscsid (it writes InitiatorName=)"),
        None => Row {
            status: Status::Fail,
            ..row
        }
        .detail(format!("{}: no InitiatorName= line", path.display()))
        .fix(fix),
    }
}

fn systemd(inputs: &Inputs) -> Row {
    let row = Row::new(
        "systemd (FUSE scopes)",
        &["glusterfs", "cephfs"],
        Status::Ok,
    );
    let container = inputs.cfg.host_mount_namespace.as_ref();
    match (pid1_is_systemd(inputs), container) {
        (true, None) => row.detail("systemd is PID 1: FUSE clients run in scopes of their own and outlive moor"),
        (true, Some(ns)) => row.detail(format!(
            "container mode (host-mount-namespace {}): the host's systemd runs FUSE clients in scopes",
            ns.display()
        )),
        (false, Some(ns)) => Row { status: Status::Warn, ..row }
            .detail(format!("container mode (host-mount-namespace {}), but PID 1 is not systemd: FUSE clients die with moor's container", ns.display()))
            .fix("run the DaemonSet with hostPID: true on a systemd host"),
        (false, None) => Row { status: Status::Warn, ..row }
            .detail("PID 1 is not systemd and no host-mount-namespace: FUSE clients (glusterfs, ceph-fuse) are moor's children and die with it")
            .fix("run moor as the systemd unit, or in the DaemonSet with hostPID: true and host-mount-namespace: /proc/1/ns/mnt"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::Fx;
    use super::*;

    #[test]
    fn iscsid_and_multipathd_are_found_in_the_process_table() {
        let fx = Fx::new();
        let r = iscsid(&fx.inputs);
        assert_eq!(r.status, Status::Fail);
        assert!(r.fix.contains("systemctl enable --now iscsid"), "{r:?}");
        assert_eq!(multipathd(&fx.inputs).status, Status::Warn);
        fx.write("proc/812/comm", "iscsid\n");
        fx.write("proc/813/comm", "multipathd\n");
        assert_eq!(iscsid(&fx.inputs).status, Status::Ok);
        assert_eq!(multipathd(&fx.inputs).detail, "running");
    }

    #[test]
    fn a_socket_activated_iscsid_is_ok_under_systemd() {
        let fx = Fx::new();
        fx.write("proc/1/comm", "systemd\n");
        fx.tool("systemctl", "active", false);
        let r = iscsid(&fx.inputs);
        assert_eq!(r.status, Status::Ok, "{r:?}");
        assert!(r.detail.contains("iscsid.socket"));
    }

    #[test]
    fn multipath_conf_sanity() {
        assert!(
            judge_multipath_conf(
                "defaults {\n  find_multipaths yes\n}\nblacklist {\n  wwid \"3600508b1001c7\"\n}\n"
            )
            .is_ok()
        );
        let (s, d, fix) =
            judge_multipath_conf("defaults {\n user_friendly_names no\n find_multipaths no\n}\n")
                .unwrap_err();
        assert_eq!(s, Status::Warn);
        assert!(
            d.contains("claims every disk") && fix.contains("find_multipaths yes"),
            "{d}"
        );
        assert_eq!(
            judge_multipath_conf("defaults {\n find_multipaths \"strict\"\n}\n")
                .unwrap_err()
                .0,
            Status::Warn
        );
        let (s, d, _) =
            judge_multipath_conf("blacklist {\n  devnode \"^sd[a-z]\"  # all\n}\n").unwrap_err();
        assert_eq!(s, Status::Fail);
        assert!(d.contains("^sd[a-z]"), "{d}");
        let fx = Fx::new();
        assert_eq!(multipath_conf(&fx.inputs).status, Status::Skip);
        fx.tool("multipath", "multipath-tools v0.9.4 (12/19, 2022)", false);
        assert_eq!(multipath_conf(&fx.inputs).status, Status::Warn);
        fx.write("etc/multipath.conf", "blacklist {\n devnode \".*\"\n}\n");
        let r = multipath_conf(&fx.inputs);
        assert_eq!(r.status, Status::Fail);
        assert!(r.fix.contains("wwid"), "{r:?}");
    }

    #[test]
    fn the_initiator_name_must_be_iqn_shaped() {
        let fx = Fx::new();
        let r = initiator_name(&fx.inputs);
        assert_eq!(r.status, Status::Fail);
        assert!(r.fix.contains("iscsi-iname"), "{r:?}");
        fx.write(
            "etc/iscsi/initiatorname.iscsi",
            "## DO NOT EDIT\nInitiatorName=iqn.1993-08.org.debian:01:5c2a1f3e9b\n",
        );
        let r = initiator_name(&fx.inputs);
        assert_eq!(r.status, Status::Ok);
        assert_eq!(r.detail, "iqn.1993-08.org.debian:01:5c2a1f3e9b");
        fx.write("etc/iscsi/initiatorname.iscsi", "InitiatorName=node-7\n");
        assert_eq!(initiator_name(&fx.inputs).status, Status::Fail);
        fx.write("etc/iscsi/initiatorname.iscsi", "GenerateName=yes\n");
        assert_eq!(initiator_name(&fx.inputs).status, Status::Warn);
        // In the container mode the host's file is the one iscsid reads.
        let mut fx = fx;
        fx.inputs.cfg.host_mount_namespace = Some("/proc/1/ns/mnt".into());
        assert_eq!(initiator_name(&fx.inputs).status, Status::Fail);
        fx.write(
            "proc/1/root/etc/iscsi/initiatorname.iscsi",
            "InitiatorName=iqn.2004-10.com.ubuntu:01:abc\n",
        );
        assert_eq!(initiator_name(&fx.inputs).status, Status::Ok);
    }

    #[test]
    fn fuse_scopes_need_systemd_or_the_container_mode_on_a_systemd_host() {
        let mut fx = Fx::new();
        fx.write("proc/1/comm", "bash\n");
        let r = systemd(&fx.inputs);
        assert_eq!(r.status, Status::Warn);
        assert!(r.fix.contains("host-mount-namespace"), "{r:?}");
        fx.write("proc/1/comm", "systemd\n");
        assert_eq!(systemd(&fx.inputs).status, Status::Ok);
        fx.inputs.cfg.host_mount_namespace = Some("/proc/1/ns/mnt".into());
        assert!(systemd(&fx.inputs).detail.starts_with("container mode"));
    }
}
