//! What kubelet and moor meet on: the kubelet dir's mount propagation (moor's mounts must
//! reach kubelet and the containers, so the mount holding the kubelet dir must be shared),
//! the FlexVolume plugin dir and each driver's link (pointing at this build), the CSI and
//! registration sockets when CSI is on, and the daemon's socket (a socket, root's, 0600, and
//! a daemon answering `Status` behind it).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::{Inputs, Row, Status};
use crate::host::mountinfo;

/// Every row of this area.
pub fn check(inputs: &Inputs, drivers: &[String]) -> Vec<Row> {
    let mut rows = vec![propagation(inputs)];
    rows.extend(flexvolume(inputs, drivers));
    rows.extend(csi(inputs, drivers));
    rows.push(daemon_socket(inputs));
    rows
}

fn propagation(inputs: &Inputs) -> Row {
    let row = Row::new("kubelet dir propagation", &[], Status::Ok);
    // In a container, the host's view is PID 1's (hostPID); moor's own view is the one that
    // matters otherwise.
    let who = if inputs.cfg.host_mount_namespace.is_some() {
        "1"
    } else {
        "self"
    };
    let path = inputs.root.proc.join(who).join("mountinfo");
    let Some(text) = inputs.root.read(&path) else {
        return Row {
            status: Status::Fail,
            ..row
        }
        .detail(format!("cannot read {}", path.display()));
    };
    let Ok(table) = mountinfo::parse(&text) else {
        return Row {
            status: Status::Fail,
            ..row
        }
        .detail(format!("{}: not a mountinfo table", path.display()));
    };
    let kubelet = std::fs::canonicalize(&inputs.cfg.kubelet_dir)
        .unwrap_or_else(|_| inputs.cfg.kubelet_dir.clone());
    // The last of the longest: a mount stacked on the same point hides the one below.
    let Some(m) = table
        .iter()
        .filter(|m| kubelet.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len())
        .and_then(|best| {
            table
                .iter()
                .rev()
                .find(|m| m.mount_point == best.mount_point)
        })
    else {
        return Row {
            status: Status::Fail,
            ..row
        }
        .detail(format!("no mount holds {}", kubelet.display()));
    };
    let shared = m.optional.iter().find(|o| o.starts_with("shared:"));
    let what = if m.mount_point == kubelet {
        format!("{} is a mount", kubelet.display())
    } else {
        format!(
            "{} is on the mount {}",
            kubelet.display(),
            m.mount_point.display()
        )
    };
    match shared {
        Some(s) => row.detail(format!("{what} ({s})")),
        None => {
            let kind = if m.optional.iter().any(|o| o.starts_with("master:")) {
                "slave"
            } else {
                "private"
            };
            let fix = if m.mount_point == kubelet {
                format!("mount --make-rshared {}", kubelet.display())
            } else {
                format!(
                    "mount --make-rshared {} (or: mount --bind {k} {k} && mount --make-rshared {k})",
                    m.mount_point.display(),
                    k = kubelet.display()
                )
            };
            Row {
                status: Status::Fail,
                ..row
            }
            .detail(format!(
                "{what}, {kind}: moor's mounts do not reach kubelet's containers"
            ))
            .fix(fix)
        }
    }
}

/// Same file: one path, or the same length and content (an installed copy of this build).
fn same_binary(a: &Path, b: &Path) -> std::io::Result<bool> {
    use sha2::{Digest, Sha256};
    let (ca, cb) = (std::fs::canonicalize(a)?, std::fs::canonicalize(b)?);
    if ca == cb {
        return Ok(true);
    }
    if std::fs::metadata(&ca)?.len() != std::fs::metadata(&cb)?.len() {
        return Ok(false);
    }
    let hash = |p: &Path| -> std::io::Result<Vec<u8>> {
        let mut h = Sha256::new();
        std::io::copy(&mut std::fs::File::open(p)?, &mut h)?;
        Ok(h.finalize().to_vec())
    };
    Ok(hash(&ca)? == hash(&cb)?)
}

fn csi_served(inputs: &Inputs, d: &str) -> bool {
    inputs.cfg.csi.enabled && inputs.cfg.csi.drivers.iter().any(|c| c == d)
}

fn flexvolume(inputs: &Inputs, drivers: &[String]) -> Vec<Row> {
    let dir = &inputs.plugin_dir;
    let install = format!("moor install-flexvolume --plugin-dir {}", dir.display());
    let flex: Vec<&str> = drivers
        .iter()
        .map(String::as_str)
        .filter(|d| !csi_served(inputs, d))
        .collect();
    let mut rows = Vec::new();
    if flex.is_empty() {
        return rows;
    }
    let row = Row::new("flexvolume plugin dir", &flex, Status::Ok);
    rows.push(if dir.is_dir() {
        row.detail(dir.display().to_string())
    } else {
        Row {
            status: Status::Fail,
            ..row
        }
        .detail(format!("{} absent", dir.display()))
        .fix(format!(
            "{install} (and check kubelet's --volume-plugin-dir)"
        ))
    });
    for d in drivers {
        let link: PathBuf = dir.join(format!("moor~{d}")).join(d);
        let row = Row::new(format!("flexvolume link {d}"), &[d.as_str()], Status::Ok);
        let r = match (std::fs::symlink_metadata(&link), csi_served(inputs, d)) {
            (Err(_), true) => row.detail("none: served by CSI"),
            (Err(_), false) => Row {
                status: Status::Fail,
                ..row
            }
            .detail(format!("{} absent", link.display()))
            .fix(install.clone()),
            (Ok(_), _) => match same_binary(&link, &inputs.exe) {
                Ok(true) => row.detail(format!("{} → this build", link.display())),
                Ok(false) => Row {
                    status: Status::Warn,
                    ..row
                }
                .detail(format!(
                    "{} → {}: a different build than {}",
                    link.display(),
                    std::fs::canonicalize(&link).unwrap_or_default().display(),
                    inputs.exe.display()
                ))
                .fix(install.clone()),
                Err(e) => Row {
                    status: Status::Fail,
                    ..row
                }
                .detail(format!("{}: {e}", link.display()))
                .fix(install.clone()),
            },
        };
        rows.push(r);
    }
    rows
}

fn is_socket(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

fn csi(inputs: &Inputs, drivers: &[String]) -> Vec<Row> {
    let mut rows = Vec::new();
    let k = &inputs.cfg.kubelet_dir;
    for d in drivers.iter().filter(|d| csi_served(inputs, d)) {
        let mut socks = vec![("csi socket", crate::csi::socket_path(k, d))];
        if inputs.cfg.csi.register {
            socks.push((
                "csi registration socket",
                crate::csi::registration_path(k, d),
            ));
        }
        for (what, p) in socks {
            let row = Row::new(format!("{what} {d}"), &[d.as_str()], Status::Ok);
            rows.push(if is_socket(&p) {
                row.detail(p.display().to_string())
            } else {
                Row { status: Status::Fail, ..row }
                    .detail(format!("{} is not a socket: the daemon does not serve it", p.display()))
                    .fix("start moor daemon with this config (systemctl start moor); its log says why a socket failed")
            });
        }
    }
    rows
}

fn daemon_socket(inputs: &Inputs) -> Row {
    let sock = &inputs.cfg.socket;
    let row = Row::new("daemon socket", &[], Status::Ok);
    let fail = |row: Row, d: String, fix: &str| {
        Row {
            status: Status::Fail,
            ..row
        }
        .detail(d)
        .fix(fix)
    };
    let start = "start moor daemon (systemctl start moor, or the DaemonSet)";
    let meta = match std::fs::symlink_metadata(sock) {
        Ok(m) => m,
        Err(e) => return fail(row, format!("{}: {e}", sock.display()), start),
    };
    if !meta.file_type().is_socket() {
        return fail(row, format!("{} is not a socket", sock.display()), start);
    }
    let mode = meta.mode() & 0o7777;
    if meta.uid() != 0 || mode != 0o600 {
        return fail(
            row,
            format!(
                "{}: owner uid {}, mode {mode:04o} (expected root, 0600)",
                sock.display(),
                meta.uid()
            ),
            "restart moor daemon as root (it makes its socket root-only)",
        );
    }
    match (inputs.daemon_status)(sock) {
        Ok(s) => row.detail(format!("{}: root, 0600, answers: {s}", sock.display())),
        Err(e) => fail(
            row,
            format!("{}: no answer to Status: {e}", sock.display()),
            start,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{Fx, drivers};
    use super::*;

    fn kubelet_line(fx: &Fx, optional: &str) -> String {
        let k = std::fs::canonicalize(fx.path("kubelet")).unwrap();
        format!(
            "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n30 22 0:40 / {} rw,relatime {optional}- ext4 /dev/vdb rw\n",
            k.display()
        )
    }

    #[test]
    fn a_shared_kubelet_dir_is_ok_and_a_private_one_fails_with_make_rshared() {
        let fx = Fx::new();
        fx.write("proc/self/mountinfo", &kubelet_line(&fx, "shared:7 "));
        let r = propagation(&fx.inputs);
        assert_eq!(r.status, Status::Ok, "{r:?}");
        assert!(r.detail.contains("shared:7"));
        fx.write("proc/self/mountinfo", &kubelet_line(&fx, ""));
        let r = propagation(&fx.inputs);
        assert_eq!(r.status, Status::Fail);
        assert!(
            r.detail.contains("private") && r.fix.starts_with("mount --make-rshared "),
            "{r:?}"
        );
        fx.write("proc/self/mountinfo", &kubelet_line(&fx, "master:3 "));
        assert!(propagation(&fx.inputs).detail.contains("slave"));
        // Not its own mount: the one holding it decides, and the fix offers the bind.
        fx.write(
            "proc/self/mountinfo",
            "22 1 0:21 / / rw - ext4 /dev/vda1 rw\n",
        );
        let r = propagation(&fx.inputs);
        assert_eq!(r.status, Status::Fail);
        assert!(r.fix.contains("mount --bind"), "{r:?}");
    }

    #[test]
    fn driver_links_must_point_at_this_build() {
        let fx = Fx::new();
        fx.write("bin/moor-self", "build A");
        fx.write("other/moor", "build B");
        let p = fx.path("plugins");
        std::fs::create_dir_all(p.join("moor~local")).unwrap();
        std::fs::create_dir_all(p.join("moor~nfs")).unwrap();
        std::os::unix::fs::symlink(fx.path("bin/moor-self"), p.join("moor~local/local")).unwrap();
        std::os::unix::fs::symlink(fx.path("other/moor"), p.join("moor~nfs/nfs")).unwrap();
        let rows = flexvolume(&fx.inputs, &drivers(&["local", "nfs", "rbd"]));
        assert_eq!(Fx::row(&rows, "flexvolume plugin dir").status, Status::Ok);
        assert_eq!(Fx::row(&rows, "flexvolume link local").status, Status::Ok);
        let r = Fx::row(&rows, "flexvolume link nfs");
        assert_eq!(r.status, Status::Warn);
        assert!(r.detail.contains("different build"), "{r:?}");
        let r = Fx::row(&rows, "flexvolume link rbd");
        assert_eq!(r.status, Status::Fail);
        assert!(
            r.fix.starts_with("moor install-flexvolume --plugin-dir"),
            "{r:?}"
        );
        // No plugin dir at all: kubelet's --volume-plugin-dir is named in the fix.
        let mut fx = fx;
        fx.inputs.plugin_dir = fx.path("nowhere");
        let rows = flexvolume(&fx.inputs, &drivers(&["local"]));
        let r = Fx::row(&rows, "flexvolume plugin dir");
        assert_eq!(r.status, Status::Fail);
        assert!(r.fix.contains("--volume-plugin-dir"), "{r:?}");
    }

    #[test]
    fn csi_sockets_are_checked_for_served_drivers_only() {
        let mut fx = Fx::new();
        fx.inputs.cfg.csi.enabled = true;
        fx.inputs.cfg.csi.drivers = drivers(&["nfs"]);
        let k = fx.inputs.cfg.kubelet_dir.clone();
        let sock = crate::csi::socket_path(&k, "nfs");
        std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let rows = csi(&fx.inputs, &drivers(&["nfs", "local"]));
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(Fx::row(&rows, "csi socket nfs").status, Status::Ok);
        let r = Fx::row(&rows, "csi registration socket nfs");
        assert_eq!(r.status, Status::Fail);
        assert!(r.fix.contains("start moor daemon"), "{r:?}");
        // A CSI-served driver needs no FlexVolume link.
        let rows = flexvolume(&fx.inputs, &drivers(&["nfs"]));
        assert!(rows.is_empty(), "{rows:?}");
    }

    #[test]
    fn the_daemon_socket_must_be_roots_0600_and_answer() {
        use std::os::unix::fs::PermissionsExt;
        let mut fx = Fx::new();
        let r = daemon_socket(&fx.inputs);
        assert_eq!(r.status, Status::Fail);
        assert!(r.fix.contains("start moor daemon"), "{r:?}");
        let sock = fx.inputs.cfg.socket.clone();
        std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
        let r = daemon_socket(&fx.inputs);
        assert_eq!(r.status, Status::Fail);
        assert!(r.detail.contains("expected root, 0600"), "{r:?}");
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).unwrap();
        let r = daemon_socket(&fx.inputs);
        if crate::host::process::euid() == 0 {
            assert_eq!(r.status, Status::Fail, "nobody answers");
            assert!(r.detail.contains("no answer to Status: not asked"), "{r:?}");
            fx.inputs.daemon_status = Box::new(|_| Ok("node n, 2 volume(s)".into()));
            let r = daemon_socket(&fx.inputs);
            assert_eq!(r.status, Status::Ok, "{r:?}");
            assert!(r.detail.ends_with("answers: node n, 2 volume(s)"));
        } else {
            assert!(
                r.detail
                    .contains(&format!("owner uid {}", crate::host::process::euid())),
                "{r:?}"
            );
        }
    }
}
