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
use crate::volume::{OptionsError, RemoteMount, validate};

pub mod ceph;
pub mod cephfs;
pub mod glusterfs;
pub mod nfs;

/// The remote mount a share driver's volume stages (unit tests).
#[cfg(test)]
pub(crate) fn remote_of(s: &crate::volume::VolumeSpec) -> &RemoteMount {
    match &s.source {
        crate::volume::StageSource::Remote(r) => r,
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

/// An export or subdirectory path (the shared validator): no `..` component, no
/// whitespace, control characters, commas or shell metacharacters.
pub fn check_export_path(key: &str, path: &str) -> Result<(), OptionsError> {
    validate::export_path(key, path).map(drop)
}

/// A comma list of GlusterFS endpoints (names and IPv4 addresses only), in the user's
/// order, duplicates removed. (Ceph monitors: [`ceph::monitors`].)
pub fn split_hosts(key: &str, value: &str) -> Result<Vec<String>, OptionsError> {
    Ok(validate::endpoints(key, value)?
        .iter()
        .map(ToString::to_string)
        .collect())
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
    let fake = crate::host::fake::FakeHost::new(root);
    let (host, runner) = (fake.host, fake.runner);
    (host, runner)
}

/// Issue 12 item 10, for every share driver: each `(key, value)` of `cases`, put into
/// `base`, is refused by `volume()` with `bad_options: option <key>=…: expected …`. An
/// accepted value is staged the way the lifecycle does it — its mount command run on a host
/// whose script is empty — so the test fails on the first command a bad value would reach.
#[cfg(test)]
pub(crate) fn assert_refused_before_mount(
    driver: &dyn crate::volume::Driver,
    base: &[(&str, &str)],
    cases: &[(&str, &str)],
) {
    use crate::volume::DriverError;
    use std::collections::BTreeMap;
    let tmp = tempfile::tempdir().unwrap();
    let node = crate::volume::NodeContext::for_tests();
    for (key, value) in cases {
        let mut m: BTreeMap<String, String> = base
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        m.insert(key.to_string(), value.to_string());
        let (host, runner) = test_host(tmp.path());
        // What every driver shares (`mountOptions`) is refused by the one parser, before
        // the driver; the driver's own keys by its `volume()`.
        let spec = crate::volume::options::parse(&m)
            .map_err(DriverError::from)
            .and_then(|o| driver.volume(&node, &o));
        match spec {
            Ok(spec) => {
                let r = remote_of(&spec);
                let cmd = mount_command(r, &tmp.path().join("stage"), r.fuse, None);
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    host.runner.run(&cmd)
                }));
                panic!(
                    "{} {key}={value:?} accepted; stage would run: {}",
                    driver.name(),
                    cmd.display()
                );
            }
            Err(e) => {
                assert_eq!(e.reason(), "bad_options", "{key}={value:?}: {e}");
                let msg = e.to_string();
                assert!(msg.starts_with(&format!("option {key}")), "{key}: {msg}");
                assert!(msg.contains("expected"), "{key}: {msg}");
                assert!(runner.calls().is_empty(), "{key}={value:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            split_hosts("endpoints", "a, b ,a,,c").unwrap(),
            ["a", "b", "c"]
        );
        assert!(split_hosts("endpoints", " , ").is_err());
        assert!(split_hosts("endpoints", "10.0.0.1:24007").is_err());
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
