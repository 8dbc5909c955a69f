//! The process-level host calls of a sandbox that runs a daemon on a scratch tree (`moor
//! demo`, the test harness, the bench): who we are, a private mount namespace, signals and
//! exec-time limits for a child, and the last-resort unmount of the scratch tree.
//!
//! Invariant: nothing here touches kubelet's or moor's real directories; every call acts on
//! this process, a child it spawned, or a path the caller owns.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::mount::{MntFlags, MsFlags};

/// True when this process runs with effective uid 0.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Moves this process into a mount namespace of its own and makes every mount in it
/// private, so nothing it mounts from now on reaches the host.
pub fn enter_private_mount_namespace() -> io::Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(io::Error::from)?;
    make_mounts_private()
}

/// `mount --make-rprivate /`: no mount made from now on propagates out of this namespace.
pub fn make_mounts_private() -> io::Result<()> {
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(io::Error::from)
}

/// True when a mount of this namespace is a peer of a mount in an ancestor's namespace (the
/// host's, or one between it and us): a mount made under it would reach that namespace.
/// Peer group ids are global, so a `shared:N` seen both here and there is one group.
/// Ancestors whose tables cannot be read are passed over (PID 1's may be unreadable in a
/// container, as here); when no other namespace's table could be read at all, the answer is
/// "shared" (the caller then makes every mount private, the safe side).
pub fn shares_mounts_with_ancestors() -> io::Result<bool> {
    let ours = std::fs::read_to_string("/proc/self/mountinfo")?;
    let tables: Vec<Option<String>> = ancestors_in_other_namespaces()?
        .into_iter()
        .map(|pid| std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok())
        .collect();
    Ok(shares_groups_with(&ours, &tables))
}

/// Whether a `shared:N` group of `ours` is in one of the other namespaces' `tables` (`None`:
/// unreadable, passed over); with none of them readable, whether `ours` shares anything.
fn shares_groups_with(ours: &str, tables: &[Option<String>]) -> bool {
    let ours = peer_groups(ours);
    if ours.is_empty() {
        return false;
    }
    let readable: Vec<_> = tables.iter().flatten().collect();
    readable.is_empty() || readable.iter().any(|t| !peer_groups(t).is_disjoint(&ours))
}

/// The `shared:N` peer groups of a mount table (lines that do not parse are skipped: they
/// cannot be told apart, and the caller only needs the groups it can match).
fn peer_groups(mountinfo: &str) -> std::collections::HashSet<u64> {
    mountinfo
        .lines()
        .filter_map(|l| crate::host::mountinfo::parse_line(l).ok())
        .flat_map(|m| m.optional)
        .filter_map(|o| o.strip_prefix("shared:").and_then(|n| n.parse().ok()))
        .collect()
}

/// True when an ancestor process lives in another mount namespace than we do: proof that
/// someone between it and us ran `unshare -m`. (PID 1's namespace may be unreadable in a
/// container, so the chain of parents is walked instead.)
pub fn in_private_mount_namespace() -> io::Result<bool> {
    Ok(!ancestors_in_other_namespaces()?.is_empty())
}

/// Up the chain of parents, the first process seen in each mount namespace other than ours
/// (an ancestor whose namespace cannot be read is passed over).
fn ancestors_in_other_namespaces() -> io::Result<Vec<u32>> {
    let mut seen = vec![std::fs::read_link("/proc/self/ns/mnt")?];
    let mut found = Vec::new();
    let mut pid = std::process::id();
    for _ in 0..64 {
        let Some(ppid) = parent_of(pid).filter(|p| *p != 0) else {
            break;
        };
        pid = ppid;
        if let Ok(ns) = std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
            && !seen.contains(&ns)
        {
            seen.push(ns);
            found.push(pid);
        }
    }
    Ok(found)
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_ppid(&stat)
}

/// The parent pid in a `/proc/<pid>/stat` line. The command name may hold spaces and
/// parentheses: the fields after the last ')' are fixed.
fn parse_ppid(stat: &str) -> Option<u32> {
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split(' ').nth(1)?.parse().ok()
}

/// Sends SIGTERM to the process `pid` (a clean shutdown request).
pub fn terminate(pid: u32) -> io::Result<()> {
    signal(pid, nix::sys::signal::Signal::SIGTERM)
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) -> io::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).map_err(io::Error::from)
}

/// Detaches whatever is mounted at `path` (MNT_DETACH: even when busy), for tearing down a
/// scratch tree. Never used on a path the sandbox did not create.
pub fn detach_mount(path: &Path) -> io::Result<()> {
    nix::mount::umount2(path, MntFlags::MNT_DETACH).map_err(io::Error::from)
}

/// Mount points at or under `root` in this process's live mount table, in table order
/// (a parent before what is mounted on top of or below it).
pub fn mounts_under(root: &Path) -> io::Result<Vec<std::path::PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    let table = super::mountinfo::parse(&text)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    Ok(table
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(root))
        .collect())
}

/// Removes capabilities (`CAP_*` numbers) from the child's bounding set at exec, as a unit's
/// `CapabilityBoundingSet=` or a container's `drop` would: the child and its children can
/// never gain them.
pub fn drop_capabilities_at_exec(cmd: &mut Command, caps: Vec<u32>) {
    // SAFETY: the closure runs between fork and exec and only calls prctl, which is
    // async-signal-safe; it allocates nothing (the vector was built before the fork).
    unsafe {
        cmd.pre_exec(move || {
            for c in &caps {
                if libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(*c), 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Has the child receive SIGTERM when the thread that spawned it dies, so a killed harness
/// never leaves a daemon (and its mounts) behind.
pub fn terminate_with_parent_at_exec(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; it only sets this child's parent-death signal.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Starts the child in a mount namespace of its own, a copy of the caller's (what a
/// container runtime gives a DaemonSet's pod): its mount ids differ from the caller's, and
/// only shared mounts propagate between the two.
pub fn new_mount_namespace_at_exec(cmd: &mut Command) {
    // SAFETY: unshare is async-signal-safe; it only changes this child's namespaces.
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_pid_is_read_past_a_command_name_with_parentheses_and_spaces() {
        assert_eq!(parse_ppid("42 (a) b) (c) S 17 42 42 0"), Some(17));
        assert_eq!(parse_ppid("1 (init) S 0 1 1"), Some(0));
        assert_eq!(parse_ppid("garbage"), None);
        assert_eq!(parse_ppid("7 (x)"), None);
    }

    #[test]
    fn peer_groups_are_the_shared_fields_of_the_lines_that_parse() {
        let table = "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n\
            30 22 0:40 / /k rw shared:7 master:3 - ext4 /dev/vdb rw\n\
            31 22 0:41 / /p rw master:9 - tmpfs t rw\n\
            32 22 0:42 / /q rw - tmpfs t rw\n\
            not a mountinfo line\n";
        let g = peer_groups(table);
        assert_eq!(g, [1, 7].into_iter().collect());
    }

    #[test]
    fn a_group_shared_with_an_ancestor_or_unknowable_counts_as_shared() {
        let ours = "30 22 0:40 / /k rw shared:7 - ext4 /dev/vdb rw\n";
        let host = |opt: &str| Some(format!("22 1 0:21 / / rw {opt}- ext4 /dev/vda1 rw\n"));
        assert!(shares_groups_with(ours, &[host("shared:7 ")]));
        assert!(shares_groups_with(
            ours,
            &[None, host("shared:1 "), host("shared:7 ")]
        ));
        assert!(!shares_groups_with(ours, &[host("shared:1 "), None]));
        assert!(!shares_groups_with(ours, &[host("")]));
        // Nothing readable to compare with: the safe side.
        assert!(shares_groups_with(ours, &[None]));
        assert!(shares_groups_with(ours, &[]));
        // Nothing shared here: nothing can propagate out.
        let private = "30 22 0:40 / /k rw master:7 - ext4 /dev/vdb rw\n";
        assert!(!shares_groups_with(private, &[host("shared:7 ")]));
    }

    #[test]
    fn our_own_parent_chain_is_readable() {
        // Whatever namespace the test runs in, the walk ends with an answer, not an error.
        assert!(in_private_mount_namespace().is_ok());
        assert_eq!(
            parent_of(std::process::id()),
            Some(std::os::unix::process::parent_id())
        );
    }
}
