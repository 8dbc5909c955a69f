//! Is a pod still running on this node? Its processes' cgroups say so: kubelet puts every
//! container of pod `<uid>` under a cgroup named `pod<uid>` (cgroupfs driver:
//! `/kubepods/burstable/pod<uid>/…`) or `…-pod<uid with _ for ->.slice` (systemd driver).
//!
//! Invariant: only reads — `<proc>/<pid>/cgroup` of each numeric entry of the given procfs
//! root ([`super::HostPaths::proc`]); a process that ends during the scan is skipped, never
//! an error.

use std::path::Path;

/// The pids under `proc` whose cgroup names pod `uid`.
pub fn pod_processes(proc: &Path, uid: &str) -> std::io::Result<Vec<u32>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir(proc)? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(entry.path().join("cgroup")) else {
            continue;
        };
        if cgroup_names_pod(&text, uid) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

/// True when a `/proc/<pid>/cgroup` text puts the process in pod `uid`'s cgroup: a path
/// component `pod<uid>`, or a systemd unit `…-pod<uid with '_'>.slice`, matched whole (a UID
/// that is a prefix of another does not match).
pub fn cgroup_names_pod(text: &str, uid: &str) -> bool {
    if uid.is_empty() {
        return false;
    }
    let dashed = format!("pod{uid}");
    let underscored = format!("pod{}", uid.replace('-', "_"));
    text.lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .flat_map(|path| path.split('/'))
        .any(|component| {
            // `kubepods-burstable-pod<uid>.slice`: the last `-`-separated part, unit suffix off.
            let unit = component.strip_suffix(".slice").unwrap_or(component);
            let last = unit.rsplit('-').next().unwrap_or(unit);
            component == dashed || last == underscored || last == dashed
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_cgroup_drivers_name_the_pod_and_nothing_else_matches() {
        let uid = "14e0e8a4-e4d0-4f89-9e4d-83d55fdefaac";
        let cgroupfs = "0::/kubepods/burstable/pod14e0e8a4-e4d0-4f89-9e4d-83d55fdefaac/0123abcd\n";
        let systemd = "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod14e0e8a4_e4d0_4f89_9e4d_83d55fdefaac.slice/cri-containerd-01.scope\n";
        let v1 =
            "12:memory:/kubepods/pod14e0e8a4-e4d0-4f89-9e4d-83d55fdefaac/c\n1:name=systemd:/\n";
        for text in [cgroupfs, systemd, v1] {
            assert!(cgroup_names_pod(text, uid), "{text}");
        }
        // Another pod whose UID starts like this one; the host; an empty UID.
        assert!(!cgroup_names_pod(
            "0::/kubepods/pod14e0e8a4-e4d0-4f89-9e4d-83d55fdefaac0/c\n",
            uid
        ));
        assert!(!cgroup_names_pod("0::/system.slice/kubelet.service\n", uid));
        assert!(!cgroup_names_pod(cgroupfs, ""));
    }

    #[test]
    fn the_scan_reads_each_process_and_skips_what_is_not_one() {
        let t = tempfile::tempdir().unwrap();
        for (pid, cg) in [
            ("10", "0::/kubepods/podabc/x\n"),
            ("11", "0::/user.slice\n"),
            ("12", "0::/kubepods.slice/kubepods-poda_bc.slice\n"),
        ] {
            std::fs::create_dir(t.path().join(pid)).unwrap();
            std::fs::write(t.path().join(pid).join("cgroup"), cg).unwrap();
        }
        std::fs::create_dir(t.path().join("self")).unwrap();
        std::fs::create_dir(t.path().join("13")).unwrap(); // ended: no cgroup file
        assert_eq!(pod_processes(t.path(), "abc").unwrap(), vec![10]);
        assert_eq!(pod_processes(t.path(), "a-bc").unwrap(), vec![12]);
    }
}
