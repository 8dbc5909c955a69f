//! Shared filesystems (NFS, GlusterFS, CephFS): each driver turns options into a
//! [`RemoteMount`]; this module turns a `RemoteMount` into the mount helper's command line.
//! Staging, publishing, healing and metrics are the lifecycle's and the reconciler's.
//!
//! Invariant: the command carries no secret (credentials are files named in the options),
//! and a FUSE helper never holds moor's stdio: its output goes to a file, and under
//! systemd it runs in its own transient scope, so restarting moor leaves the FUSE daemon
//! (and every pod's mount) alive.

use std::path::Path;

use crate::host::Cmd;
use crate::journal::RemoteMount;

/// How much of a client log a failure message keeps.
const LOG_TAIL: usize = 768;

/// `mount -t <fs_type> [-o <options>] <source> <target>`, wrapped in
/// `systemd-run --scope` when `scope` is set; output to `output_file` when given.
pub fn mount_command(
    remote: &RemoteMount,
    target: &Path,
    scope: bool,
    output_file: Option<&Path>,
) -> Cmd {
    let mut cmd = if scope {
        Cmd::new("systemd-run").args([
            "--scope",
            "--quiet",
            "--collect",
            "--description",
            "moor FUSE mount",
            "--",
            "mount",
        ])
    } else {
        Cmd::new("mount")
    };
    cmd = cmd.args(["-t", remote.fs_type.as_str()]);
    if !remote.options.is_empty() {
        cmd = cmd.arg("-o").arg(remote.options.join(","));
    }
    cmd = cmd.arg(&remote.source).arg(target);
    if let Some(f) = output_file {
        cmd = cmd.output_to(f);
    }
    cmd
}

/// The last lines of a client's log, for a failure message (`None` when absent or empty).
pub fn log_tail(path: &Path) -> Option<String> {
    let text = std::fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&text).trim().replace('\n', " | ");
    if text.is_empty() {
        return None;
    }
    let mut start = text.len().saturating_sub(LOG_TAIL);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    Some(text[start..].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nfs() -> RemoteMount {
        RemoteMount {
            fs_type: "nfs".into(),
            source: "10.0.0.5:/export".into(),
            options: vec!["nfsvers=4.1".into(), "hard".into()],
            fuse: false,
            log_file: None,
            server: "10.0.0.5".into(),
        }
    }

    #[test]
    fn plain_mount_command() {
        let c = mount_command(&nfs(), Path::new("/k/stage"), false, None);
        assert_eq!(
            c.display(),
            "mount -t nfs -o nfsvers=4.1,hard 10.0.0.5:/export /k/stage"
        );
        assert!(c.output_file.is_none());
    }

    #[test]
    fn fuse_helper_gets_a_scope_and_no_pipes() {
        let mut r = nfs();
        r.options.clear();
        r.fuse = true;
        let c = mount_command(&r, Path::new("/k/s"), true, Some(Path::new("/run/x.log")));
        assert!(
            c.display().starts_with("systemd-run --scope"),
            "{}",
            c.display()
        );
        assert!(
            c.display()
                .ends_with("-- mount -t nfs 10.0.0.5:/export /k/s")
        );
        assert_eq!(c.output_file.as_deref(), Some(Path::new("/run/x.log")));
    }

    #[test]
    fn log_tail_keeps_the_end() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("c.log");
        assert_eq!(log_tail(&f), None);
        std::fs::write(&f, format!("{}\nlast line\n", "x".repeat(2000))).unwrap();
        let t = log_tail(&f).unwrap();
        assert!(t.ends_with("| last line"), "{t}");
        assert!(t.len() <= LOG_TAIL);
    }
}
