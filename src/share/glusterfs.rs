//! Driver `moor~glusterfs/glusterfs`: options `endpoints` (hosts or IPv4 addresses, a comma
//! list), `path` (the volume name, optionally `volume/subdir`), `readOnly`, `mountOptions`.
//! moor mounts from the first endpoint and names the others in `backup-volfile-servers`
//! (never the one it mounts from), keeps the FUSE client's log at
//! `<kubelet>/plugins/moor/glusterfs/<key>.log` (beside the stage, never inside it, so the
//! log survives a dead mount and its tail can explain a failure), at `log-level=ERROR`, and
//! asks for `auto_unmount`, so a killed client takes its mount with it instead of leaving
//! "Transport endpoint is not connected" behind.
//!
//! Invariant: the key covers the endpoints in the user's order, the volume and the options,
//! so one key always means one mount command.

use std::path::{Path, PathBuf};

use super::{check_export_path, split_hosts};
use crate::host::paths::VENDOR;
use crate::host::{Cmd, Host};
use crate::volume::state::GlusterVolume;
use crate::volume::{
    Driver, DriverError, MountOptions, NodeContext, OptionsError, Recorded, RemoteMount,
    StageSource, VolumeOptions, VolumeSpec, VolumeState, validate, volume_key,
};

/// The user options this driver accepts.
pub const OPTIONS: &[&str] = &["endpoints", "path", "readOnly", "mountOptions"];

/// The GlusterFS driver.
#[derive(Debug, Clone, Copy, Default)]
pub struct GlusterFsDriver;

/// Where the FUSE client of volume `key` logs.
pub fn log_file(kubelet_dir: &Path, key: &str) -> PathBuf {
    kubelet_dir
        .join("plugins")
        .join(VENDOR)
        .join("glusterfs")
        .join(format!("{key}.log"))
}

/// The mount of volume `volume` from `endpoints[0]`, with moor's options first and the
/// user's after them; a user who sets `backup-volfile-servers`, `log-level` or
/// `auto_unmount` replaces moor's value (pure: no host access).
pub fn remote_mount(
    endpoints: &[String],
    volume: &str,
    user: Vec<String>,
    log: &Path,
) -> RemoteMount {
    let name_of = |o: &str| o.split('=').next().unwrap_or(o).to_owned();
    let user_sets = |k: &str| user.iter().any(|o| name_of(o) == k);
    let mut options = Vec::new();
    let backups = &endpoints[1.min(endpoints.len())..];
    if !backups.is_empty() && !user_sets("backup-volfile-servers") {
        // mount.glusterfs separates the backup servers with ':'.
        options.push(format!("backup-volfile-servers={}", backups.join(":")));
    }
    options.push(format!("log-file={}", log.display()));
    if !user_sets("log-level") {
        options.push("log-level=ERROR".into());
    }
    if !user_sets("auto_unmount") {
        options.push("auto_unmount".into());
    }
    options.extend(user);
    let first = endpoints.first().map(String::as_str).unwrap_or_default();
    RemoteMount {
        fs_type: "glusterfs".into(),
        source: format!("{first}:/{volume}"),
        options,
        fuse: true,
        log_file: Some(log.into()),
        server: endpoints.join(","),
    }
}

/// `pkill` of a GlusterFS client whose mount point (its last argument) is `stage`: the key
/// makes the path moor's own, so no other client can match.
pub fn leftover_client_kill(stage: &Path) -> Cmd {
    let escaped: String = stage
        .display()
        .to_string()
        .chars()
        .flat_map(|c| {
            let special = "\\.^$|?*+()[]{}".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect();
    Cmd::new("pkill")
        .args(["-KILL", "-f", "--"])
        .arg(format!("^[^ ]*glusterfs .* {escaped}$"))
}

impl Driver for GlusterFsDriver {
    fn name(&self) -> &'static str {
        "glusterfs"
    }

    fn volume(&self, node: &NodeContext, opts: &VolumeOptions) -> Result<VolumeSpec, DriverError> {
        opts.check_known(self.name(), OPTIONS)?;
        let endpoints_opt = opts.required(self.name(), "endpoints")?;
        // mount.glusterfs joins backups with ':', so IPv6 literals and ports cannot be named.
        let endpoints = split_hosts("endpoints", endpoints_opt)?;
        let path = opts.required(self.name(), "path")?;
        check_export_path("path", path)?;
        let volume = path.trim_start_matches('/');
        // The volume name must be one glusterd accepts; a subdir is a path inside it.
        let name = volume.split('/').next().unwrap_or_default();
        if validate::gluster_volume("path", name).is_err() {
            return Err(OptionsError::Invalid {
                key: "path".into(),
                value: validate::shown(path),
                expected: validate::GLUSTER_VOLUME,
            }
            .into());
        }
        let user = opts.mount_options.words().to_vec();
        if let Some(o) = user.iter().find(|o| o.starts_with("log-file")) {
            return Err(OptionsError::Invalid {
                key: "mountOptions".into(),
                value: o.clone(),
                expected: "no log-file: moor keeps the client log beside the stage",
            }
            .into());
        }
        let identity = format!("{}:/{volume}?{}", endpoints.join(","), user.join(","));
        let key = volume_key(self.name(), &identity);
        let remote = remote_mount(
            &endpoints,
            volume,
            user.clone(),
            &log_file(&node.kubelet_dir, &key),
        );
        Ok(VolumeSpec {
            key,
            source: StageSource::Remote(remote),
            state: Some(VolumeState::Glusterfs(GlusterVolume {
                endpoints,
                volume: volume.to_owned(),
                mount_options: user,
            })),
            mount_options: MountOptions::default(),
        })
    }

    /// Unstaged: a client left without a mount goes (the mount deadline kills
    /// `mount.glusterfs`, but the client it started has daemonized into its own session and
    /// would retry an unreachable server forever), then the client log (a failed stage has
    /// already put its tail into the error message before this runs).
    fn detach(&self, host: &Host, rec: &Recorded<'_>) -> Result<(), DriverError> {
        let stage = host.paths.stage_dir(self.name(), rec.key);
        let cmd = leftover_client_kill(&stage);
        match host.runner.run(&cmd) {
            // pkill: 0 = killed some, 1 = none matched.
            Ok(out) if matches!(out.code, Some(0 | 1)) => {
                if out.code == Some(0) {
                    tracing::warn!(volume = %rec.key, driver = "glusterfs", target = %stage.display(), "killed a GlusterFS client left without its mount");
                }
            }
            Ok(out) => {
                return Err(DriverError::Command {
                    volume: rec.key.into(),
                    source: crate::host::ExecError::Failed {
                        cmdline: cmd.display(),
                        code: out.code,
                        stderr: out.stderr_tail(),
                    },
                });
            }
            Err(source) => {
                return Err(DriverError::Command {
                    volume: rec.key.into(),
                    source,
                });
            }
        }
        if let StageSource::Remote(RemoteMount {
            log_file: Some(log),
            ..
        }) = rec.source
        {
            match std::fs::remove_file(log) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(volume = %rec.key, driver = "glusterfs", error = %e, "cannot remove the client log");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeContext {
        NodeContext::for_tests()
    }

    fn spec(json: &str) -> Result<VolumeSpec, DriverError> {
        GlusterFsDriver.volume(&node(), &VolumeOptions::parse_json(json).unwrap())
    }

    use crate::share::remote_of as remote;

    #[test]
    fn backups_exclude_the_mounting_host_and_options_keep_their_order() {
        let s = spec(
            r#"{"endpoints":"10.0.0.1, 10.0.0.2,10.0.0.3,10.0.0.1","path":"vol1","mountOptions":"acl"}"#,
        )
        .unwrap();
        let r = remote(&s);
        let log = format!("/var/lib/kubelet/plugins/moor/glusterfs/{}.log", s.key);
        assert_eq!(r.fs_type, "glusterfs");
        assert_eq!(r.source, "10.0.0.1:/vol1");
        assert_eq!(
            r.options,
            [
                "backup-volfile-servers=10.0.0.2:10.0.0.3".to_owned(),
                format!("log-file={log}"),
                "log-level=ERROR".into(),
                "auto_unmount".into(),
                "acl".into(),
            ]
        );
        assert!(r.fuse);
        assert_eq!(r.log_file.as_deref(), Some(Path::new(&log)));
        assert_eq!(r.server, "10.0.0.1,10.0.0.2,10.0.0.3");
        // Beside the stage dir, not inside it.
        let stage = Path::new("/var/lib/kubelet/plugins/moor/glusterfs").join(&s.key);
        assert!(!Path::new(&log).starts_with(&stage));
    }

    #[test]
    fn one_endpoint_has_no_backups_and_user_options_replace_moors() {
        let s =
            spec(r#"{"endpoints":"g1","path":"/vol1/sub","mountOptions":"log-level=WARNING,ro"}"#)
                .unwrap();
        let r = remote(&s);
        assert_eq!(r.source, "g1:/vol1/sub");
        assert!(
            !r.options
                .iter()
                .any(|o| o.starts_with("backup-volfile-servers"))
        );
        assert!(!r.options.iter().any(|o| o == "log-level=ERROR"));
        assert_eq!(
            r.options[r.options.len() - 2..],
            ["log-level=WARNING", "ro"]
        );
    }

    #[test]
    fn pod_read_only_shares_the_stage() {
        let rw = spec(r#"{"endpoints":"g1","path":"v","kubernetes.io/readwrite":"rw"}"#).unwrap();
        let ro = spec(r#"{"endpoints":"g1","path":"v","readOnly":"true"}"#).unwrap();
        assert_eq!(rw, ro);
        assert!(!remote(&ro).options.iter().any(|o| o == "ro"));
    }

    #[test]
    fn key_is_stable() {
        let a = spec(r#"{"endpoints":"g1,g2","path":"v"}"#).unwrap();
        let b = spec(r#"{"endpoints":" g1 ,g2,","path":"/v"}"#).unwrap();
        let c = spec(r#"{"endpoints":"g2,g1","path":"v"}"#).unwrap();
        assert_eq!(a.key, b.key);
        assert_eq!(a, b);
        // Another mounting host is another mount command.
        assert_ne!(a.key, c.key);
        assert_eq!(a.key, volume_key("glusterfs", "g1,g2:/v?"));
    }

    /// Issue 12 item 10: endpoints, volume names, subdirs and mount options that are not
    /// one never reach mount.glusterfs' argv.
    #[test]
    fn hostile_values_are_refused_before_any_command() {
        crate::share::assert_refused_before_mount(
            &GlusterFsDriver,
            &[("endpoints", "g1,g2"), ("path", "vol1")],
            &[
                ("endpoints", "-oremount"),
                ("endpoints", "g1,-Lroot"),
                ("endpoints", "g1;reboot"),
                ("endpoints", "$(reboot)"),
                ("endpoints", "g1:24007"),
                ("endpoints", "fd00::1"),
                ("endpoints", "[fd00::1]"),
                ("endpoints", "g1,g`id`"),
                ("path", "-vol"),
                ("path", "vol;x"),
                ("path", "vol$x"),
                ("path", "vol/sub'x"),
                ("path", "vol/sub\\x"),
                ("path", "vol:x"),
                ("mountOptions", "-oremount"),
                ("mountOptions", "acl,--bind"),
            ],
        );
    }

    #[test]
    fn bad_options_are_refused() {
        let msg = |j: &str| spec(j).unwrap_err().to_string();
        assert_eq!(
            msg(r#"{"path":"v"}"#),
            "option endpoints is required by driver glusterfs"
        );
        assert_eq!(
            msg(r#"{"endpoints":"g"}"#),
            "option path is required by driver glusterfs"
        );
        assert!(
            msg(r#"{"endpoints":"g","path":"v","server":"x"}"#)
                .starts_with("unknown option server")
        );
        assert!(msg(r#"{"endpoints":"g","path":"v/../w"}"#).starts_with("option path=v/../w"));
        assert!(msg(r#"{"endpoints":"g","path":"/"}"#).starts_with("option path=/"));
        assert!(
            msg(r#"{"endpoints":"g:24007","path":"v"}"#).starts_with("option endpoints=g:24007")
        );
        assert!(
            msg(r#"{"endpoints":"g","path":"v","mountOptions":"log-file=/tmp/x"}"#)
                .contains("no log-file")
        );
    }

    #[test]
    fn detach_removes_the_log() {
        let d = tempfile::tempdir().unwrap();
        let n = NodeContext {
            kubelet_dir: d.path().into(),
            ..node()
        };
        let o = VolumeOptions::parse_json(r#"{"endpoints":"g","path":"v"}"#).unwrap();
        let s = GlusterFsDriver.volume(&n, &o).unwrap();
        let log = remote(&s).log_file.clone().unwrap();
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        std::fs::write(&log, "E [x] failed\n").unwrap();
        let rec = crate::journal::StageRecord::new(
            &s.key,
            "glusterfs",
            s.source.clone(),
            s.state.clone(),
            crate::journal::StagePhase::Unstaging,
        );
        let (host, runner) = crate::share::test_host(d.path());
        let stage = host.paths.stage_dir("glusterfs", &s.key);
        let want = leftover_client_kill(&stage).display();
        assert!(
            want.starts_with("pkill -KILL -f -- ^[^ ]*glusterfs .* ")
                && want.ends_with(&format!("glusterfs/{}$", s.key.replace('.', "\\."))),
            "{want}"
        );
        runner.expect(&want, 0, "");
        runner.expect(&want, 1, "");
        GlusterFsDriver.detach(&host, &rec.recorded()).unwrap();
        assert!(!log.exists());
        GlusterFsDriver.detach(&host, &rec.recorded()).unwrap();
        assert!(runner.remaining().is_empty());
    }

    /// A stage record main ef677bd wrote loads typed and detaches as it did: the leftover
    /// client killed by its stage path, the client log removed.
    #[test]
    fn a_record_of_main_ef677bd_loads_typed_and_detaches() {
        let d = tempfile::tempdir().unwrap();
        let mut old: serde_json::Value =
            serde_json::from_str(include_str!("../volume/fixtures/glusterfs-ef677bd.json"))
                .unwrap();
        let log = d.path().join("client.log");
        std::fs::write(&log, "E [x] failed\n").unwrap();
        old["source"]["log_file"] = log.display().to_string().into();
        let rec = crate::journal::record::old_record(&old.to_string());
        assert_eq!(
            rec.volume,
            Some(VolumeState::Glusterfs(GlusterVolume {
                endpoints: vec!["g1".into(), "g2".into()],
                volume: "vol1".into(),
                mount_options: vec!["acl".into()],
            }))
        );
        let now = spec(r#"{"endpoints":"g1,g2","path":"vol1","mountOptions":"acl"}"#).unwrap();
        assert_eq!(rec.volume, now.state);
        let (host, runner) = crate::share::test_host(d.path());
        let stage = host.paths.stage_dir("glusterfs", &rec.key);
        runner.expect(&leftover_client_kill(&stage).display(), 1, "");
        GlusterFsDriver.detach(&host, &rec.recorded()).unwrap();
        assert!(runner.remaining().is_empty());
        assert!(!log.exists());
    }
}
