//! Shared filesystems (NFS, GlusterFS, CephFS): each driver turns options into a
//! [`RemoteMount`]; this module turns a `RemoteMount` into the mount helper's command line.
//! Staging, publishing, healing and metrics are the lifecycle's and the reconciler's.
//!
//! Invariant: the command carries no secret (credentials are files named in the options),
//! and a FUSE helper never holds moor's stdio: its output goes to a file, and under
//! systemd it runs in its own transient scope, so restarting moor leaves the FUSE daemon
//! (and every pod's mount) alive.

use std::path::{Component, Path};

use crate::flexvolume::OptionsError;
use crate::host::Cmd;
use crate::journal::RemoteMount;

pub mod cephfs;
pub mod glusterfs;
pub mod nfs;

/// The remote mount a share driver's volume stages (unit tests).
#[cfg(test)]
pub(crate) fn remote_of(s: &crate::driver::VolumeSpec) -> &RemoteMount {
    match &s.source {
        crate::journal::StageSource::Remote(r) => r,
        other => panic!("not remote: {other:?}"),
    }
}

pub use cephfs::CephFsDriver;
pub use glusterfs::GlusterFsDriver;
pub use nfs::NfsDriver;

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

fn invalid(key: &str, value: &str, expected: &'static str) -> OptionsError {
    OptionsError::Invalid {
        key: key.into(),
        value: value.into(),
        expected,
    }
}

/// Splits `mountOptions` (`nfsvers=4.1,hard`) into items, in order. Empty items are
/// dropped; whitespace or control characters inside an item are refused (the helper
/// would read them as separate arguments or lose them).
pub fn split_mount_options(value: &str) -> Result<Vec<String>, OptionsError> {
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        if item.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                "mountOptions",
                value,
                "a comma-separated list of options without spaces",
            ));
        }
        out.push(item.to_owned());
    }
    Ok(out)
}

/// A host name or address for `key` (one server or one list item): letters, digits, `.`,
/// `-`, `_`, and `:`/`[]` for IPv6 or a port when `allow_colon`.
pub fn check_host(key: &str, host: &str, allow_colon: bool) -> Result<(), OptionsError> {
    let ok = !host.is_empty()
        && host.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '.' | '-' | '_')
                || (allow_colon && matches!(c, ':' | '[' | ']'))
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            host,
            if allow_colon {
                "host names or addresses (optionally :port), comma-separated"
            } else {
                "host names or IPv4 addresses, comma-separated"
            },
        ))
    }
}

/// An export or subdirectory path: no `..` component, no whitespace, commas or control
/// characters (they would split the helper's option list or its source).
pub fn check_export_path(key: &str, path: &str) -> Result<(), OptionsError> {
    let dotdot = Path::new(path)
        .components()
        .any(|c| matches!(c, Component::ParentDir));
    if path.is_empty()
        || dotdot
        || path
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ',')
    {
        return Err(invalid(key, path, "a path without '..', spaces or commas"));
    }
    Ok(())
}

/// A comma list (`endpoints`, `monitors`): trimmed, empty items dropped, duplicates removed
/// (first occurrence kept, so the user's order — and the server moor mounts from — holds).
pub fn split_hosts(key: &str, value: &str, allow_colon: bool) -> Result<Vec<String>, OptionsError> {
    let mut out: Vec<String> = Vec::new();
    for h in value.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        check_host(key, h, allow_colon)?;
        if !out.iter().any(|o| o == h) {
            out.push(h.to_owned());
        }
    }
    if out.is_empty() {
        return Err(invalid(key, value, "at least one host"));
    }
    Ok(out)
}

/// A host over fakes rooted at `root`, for the drivers' attach/detach tests, and its
/// command script.
#[cfg(test)]
pub(crate) fn test_host(
    root: &Path,
) -> (
    crate::host::Host,
    std::sync::Arc<crate::host::fake::ScriptRunner>,
) {
    use std::sync::Arc;
    let runner = Arc::new(crate::host::fake::ScriptRunner::default());
    let mounts = Arc::new(crate::host::fake::FakeMounts::default());
    let host = crate::host::Host {
        paths: crate::host::HostPaths {
            kubelet_dir: root.join("kubelet"),
            kubelet_alias: None,
            state_dir: root.join("state"),
            run_dir: root.join("run"),
            sys: "/sys".into(),
            dev: "/dev".into(),
            proc: "/proc".into(),
        },
        runner: runner.clone(),
        mounter: mounts.clone(),
        mounts,
        blockdev: crate::host::BlockDevices { sys: "/sys".into() },
    };
    (host, runner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_options_split_in_order() {
        assert_eq!(
            split_mount_options(" nfsvers=4.1, hard,,noatime ").unwrap(),
            ["nfsvers=4.1", "hard", "noatime"]
        );
        assert!(split_mount_options("").unwrap().is_empty());
        let e = split_mount_options("hard,ro x").unwrap_err();
        assert!(
            e.to_string().starts_with("option mountOptions=hard,ro x"),
            "{e}"
        );
    }

    #[test]
    fn paths_with_dotdot_or_separators_are_refused() {
        for bad in ["/a/../b", "..", "/a/..", "/a b", "/a,b", ""] {
            assert!(check_export_path("path", bad).is_err(), "{bad}");
        }
        for good in ["/", "/exports/a", "vol1/sub", "/a/..b"] {
            assert!(check_export_path("path", good).is_ok(), "{good}");
        }
    }

    #[test]
    fn host_lists() {
        assert_eq!(
            split_hosts("endpoints", "a, b ,a,,c", false).unwrap(),
            ["a", "b", "c"]
        );
        assert!(split_hosts("endpoints", " , ", false).is_err());
        assert!(split_hosts("endpoints", "10.0.0.1:24007", false).is_err());
        assert!(split_hosts("monitors", "10.0.0.1:6789,[::1]:3300", true).is_ok());
        assert!(split_hosts("monitors", "a;rm -rf", true).is_err());
    }

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
