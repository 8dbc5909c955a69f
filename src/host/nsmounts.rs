//! Other processes' mount namespaces: which of them still hold a given filesystem (a dead
//! share's superblock, by `major:minor`), and which pod each belongs to (kubelet's cgroup
//! names carry `pod<uid>`). Read from a `/proc` root the caller passes, so tests point it at
//! a fixture tree.
//!
//! Invariants: each mount namespace is read once per scan (the first process found in it
//! stands for it); a namespace excluded by the caller (the daemon's own, whose pod
//! directories are moor's records, not a container's copy) is never reported; a mount that
//! has another mount stacked on its root at the same place is covered (a heal stacked the
//! live share over it), so it does not count as held. Nothing here blocks on the dead
//! filesystem: only procfs files are read, never the mounts themselves.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use super::mountinfo::{self, MountInfo};

/// One mount namespace that still holds one of the filesystems asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The namespace's inode number (`/proc/<pid>/ns/mnt`).
    pub ns: u64,
    /// A process in it.
    pub pid: u32,
    /// The pod it belongs to, from the process's cgroup (`None`: not a pod's).
    pub pod_uid: Option<String>,
    /// The devices it holds (uncovered), each with where it is mounted there and whether
    /// that copy receives propagation (a `master:N` or `shared:N` field).
    pub held: Vec<HeldMount>,
}

/// One uncovered mount of a watched filesystem inside a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldMount {
    /// `(major, minor)`.
    pub dev: (u32, u32),
    /// Where, inside that namespace.
    pub mount_point: PathBuf,
    /// The copy is a slave (or peer) of a host mount, so a mount made on top of the host's
    /// copy reaches it (`mountPropagation: HostToContainer` / `Bidirectional`).
    pub receives_propagation: bool,
}

/// The mount namespace inode of `/proc/<pid>` (`mnt:[4026531841]`), if readable.
pub fn mount_ns(proc: &Path, pid: &str) -> Option<u64> {
    let link = std::fs::read_link(proc.join(pid).join("ns/mnt")).ok()?;
    let text = link.to_str()?;
    text.strip_prefix("mnt:[")?.strip_suffix(']')?.parse().ok()
}

/// The mounts of `table` that are of one of `devs` and not covered by a mount stacked on
/// their root at the same mount point.
pub fn uncovered(table: &[MountInfo], devs: &HashSet<(u32, u32)>) -> Vec<HeldMount> {
    table
        .iter()
        .filter(|m| devs.contains(&(m.major, m.minor)))
        .filter(|m| {
            !table
                .iter()
                .any(|o| o.parent_id == m.mount_id && o.mount_point == m.mount_point)
        })
        .map(|m| HeldMount {
            dev: (m.major, m.minor),
            mount_point: m.mount_point.clone(),
            receives_propagation: m
                .optional
                .iter()
                .any(|f| f.starts_with("master:") || f.starts_with("shared:")),
        })
        .collect()
}

/// Scans every process under `proc`, one per mount namespace, for uncovered mounts of
/// `devs`; namespaces in `skip` are left out. Processes that vanish mid-scan are skipped.
pub fn holders(proc: &Path, devs: &HashSet<(u32, u32)>, skip: &HashSet<u64>) -> Vec<Holder> {
    if devs.is_empty() {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir(proc) else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    let mut seen: BTreeMap<u64, ()> = BTreeMap::new();
    let mut out = Vec::new();
    for pid in pids {
        let p = pid.to_string();
        let Some(ns) = mount_ns(proc, &p) else {
            continue;
        };
        if skip.contains(&ns) || seen.insert(ns, ()).is_some() {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(proc.join(&p).join("mountinfo")) else {
            continue;
        };
        let table: Vec<MountInfo> = text
            .lines()
            .filter_map(|l| mountinfo::parse_line(l).ok())
            .collect();
        let held = uncovered(&table, devs);
        if held.is_empty() {
            continue;
        }
        let pod_uid = std::fs::read_to_string(proc.join(&p).join("cgroup"))
            .ok()
            .and_then(|c| pod_uid_of_cgroup(&c));
        out.push(Holder {
            ns,
            pid,
            pod_uid,
            held,
        });
    }
    out
}

/// The pod UID in a `/proc/<pid>/cgroup` text: kubelet's cgroupfs driver names the pod's
/// cgroup `pod<uid>` (`/kubepods/burstable/pod1b2c…-…/<container>`), the systemd driver
/// `kubepods-<qos>-pod<uid with _ for ->.slice`. The UID is returned with dashes.
pub fn pod_uid_of_cgroup(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .flat_map(|path| path.split('/'))
        .find_map(|seg| {
            let seg = seg.strip_suffix(".slice").unwrap_or(seg);
            let uid = match seg.strip_prefix("pod") {
                Some(rest) => rest,
                None => &seg[seg.rfind("-pod")? + 4..],
            };
            is_uid(uid).then(|| uid.replace('_', "-"))
        })
}

/// A Kubernetes UID (a UUID in its 8-4-4-4-12 form), with `-` or `_` separators.
fn is_uid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-' || b == b'_',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "1b2c3d4e-0000-4abc-8def-0123456789ab";

    #[test]
    fn both_cgroup_drivers_name_the_pod() {
        let cgroupfs = format!("0::/kubepods/burstable/pod{UID}/0123abcd\n");
        assert_eq!(pod_uid_of_cgroup(&cgroupfs).as_deref(), Some(UID));
        let systemd = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-0a1b.scope\n",
            UID.replace('-', "_")
        );
        assert_eq!(pod_uid_of_cgroup(&systemd).as_deref(), Some(UID));
        let v1 = format!("12:memory:/kubepods/pod{UID}/c1\n11:cpu,cpuacct:/kubepods/pod{UID}/c1\n");
        assert_eq!(pod_uid_of_cgroup(&v1).as_deref(), Some(UID));
        for not_a_pod in [
            "0::/system.slice/moor.service\n",
            "0::/user.slice/user-0.slice/session-1.scope\n",
            "0::/kubepods/burstable/podnot-a-uid/c\n",
            "",
        ] {
            assert_eq!(pod_uid_of_cgroup(not_a_pod), None, "{not_a_pod:?}");
        }
    }

    fn line(id: u64, parent: u64, dev: &str, point: &str, opt: &str) -> String {
        let opt = if opt.is_empty() {
            String::new()
        } else {
            format!("{opt} ")
        };
        format!("{id} {parent} {dev} / {point} rw,relatime {opt}- fuse.glusterfs srv:/v rw\n")
    }

    /// A fixture `/proc`: pid → (namespace inode, mountinfo, cgroup).
    fn proc_tree(pids: &[(u32, u64, String, String)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (pid, ns, mi, cg) in pids {
            let p = dir.path().join(pid.to_string());
            std::fs::create_dir_all(p.join("ns")).unwrap();
            std::os::unix::fs::symlink(format!("mnt:[{ns}]"), p.join("ns/mnt")).unwrap();
            std::fs::write(p.join("mountinfo"), mi).unwrap();
            std::fs::write(p.join("cgroup"), cg).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("self")).unwrap();
        dir
    }

    #[test]
    fn namespaces_holding_the_dead_device_are_found_once_each_with_their_pod() {
        let dead = (0, 61);
        let cg = |uid: &str| format!("0::/kubepods/besteffort/pod{uid}/ctr\n");
        let other = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";
        let tree = proc_tree(&[
            // The daemon's own namespace: its pod dirs hold the device, but it is skipped.
            (
                1,
                100,
                line(30, 1, "0:61", "/k/pods/x/vol", "shared:2"),
                "0::/init.scope\n".into(),
            ),
            // A container (None propagation) that holds it: two processes, one namespace.
            (40, 200, line(80, 70, "0:61", "/data", ""), cg(UID)),
            (41, 200, line(80, 70, "0:61", "/data", ""), cg(UID)),
            // A HostToContainer container whose copy got the healed share stacked on it.
            (
                50,
                300,
                line(90, 70, "0:61", "/data", "master:2")
                    + &line(91, 90, "0:77", "/data", "master:3"),
                cg(other),
            ),
            // A HostToContainer container not healed yet: it receives propagation.
            (
                60,
                400,
                line(95, 70, "0:61", "/data", "master:2"),
                cg(other),
            ),
            // A namespace holding something else.
            (70, 500, line(99, 70, "0:12", "/data", ""), cg(other)),
        ]);
        let devs = HashSet::from([dead]);
        let found = holders(tree.path(), &devs, &HashSet::from([100]));
        let summary: Vec<_> = found
            .iter()
            .map(|h| {
                (
                    h.ns,
                    h.pod_uid.clone().unwrap(),
                    h.held[0].receives_propagation,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![(200, UID.to_owned(), false), (400, other.to_owned(), true)]
        );
        assert_eq!(found[0].pid, 40);
        assert_eq!(found[0].held[0].mount_point, PathBuf::from("/data"));
        assert!(holders(tree.path(), &HashSet::new(), &HashSet::new()).is_empty());
        assert_eq!(holders(tree.path(), &devs, &HashSet::new()).len(), 3);
    }
}
