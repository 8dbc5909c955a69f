//! Driver `moor~nfs/nfs`: options `server`, `path`, `readOnly`, `mountOptions` (the names of
//! Kubernetes' `nfs` volume). One mount per export and option list per node, through
//! `mount.nfs`; `readOnly` is honoured per pod by the read-only bind, so a read-only and a
//! read-write pod of the same export share one stage.
//!
//! Invariant: the key covers server, export and every mount option, so two volumes that
//! differ only in options (`nfsvers=3` vs `nfsvers=4.1`) are never served by one mount.

use super::check_export_path;
use crate::volume::state::NfsExport;
use crate::volume::validate::{self, HostName};
use crate::volume::{
    Driver, DriverError, MountOptions, NodeContext, OptionsError, RemoteMount, StageSource,
    VolumeOptions, VolumeSpec, VolumeState, volume_key,
};

/// The user options this driver accepts.
pub const OPTIONS: &[&str] = &["server", "path", "readOnly", "mountOptions"];

/// The NFS driver.
#[derive(Debug, Clone, Copy, Default)]
pub struct NfsDriver;

/// The export and options of an NFS volume (pure: no host access).
pub fn remote_mount(server: &HostName, path: &str, options: Vec<String>) -> RemoteMount {
    RemoteMount {
        fs_type: "nfs".into(),
        // mount.nfs splits `server:/export` at the first ':' unless the server is in
        // brackets, so an IPv6 address always goes in brackets.
        source: format!("{}:{path}", server.bracketed()),
        options,
        fuse: false,
        log_file: None,
        server: server.to_string(),
    }
}

impl Driver for NfsDriver {
    fn name(&self) -> &'static str {
        "nfs"
    }

    fn volume(&self, _node: &NodeContext, opts: &VolumeOptions) -> Result<VolumeSpec, DriverError> {
        opts.check_known(self.name(), OPTIONS)?;
        let server = validate::nfs_server("server", opts.required(self.name(), "server")?)?;
        let path = opts.required(self.name(), "path")?;
        check_export_path("path", path)?;
        if !path.starts_with('/') {
            return Err(OptionsError::Invalid {
                key: "path".into(),
                value: path.into(),
                expected: "an absolute export path",
            }
            .into());
        }
        let options = opts.mount_options.words().to_vec();
        let remote = remote_mount(&server, path, options.clone());
        let identity = format!("{}?{}", remote.source, remote.options.join(","));
        Ok(VolumeSpec {
            key: volume_key(self.name(), &identity),
            source: StageSource::Remote(remote),
            state: Some(VolumeState::Nfs(NfsExport {
                server: server.to_string(),
                path: path.to_owned(),
                mount_options: options,
            })),
            // The options travel in the RemoteMount; nothing for a kernel mount(2) here.
            mount_options: MountOptions::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeContext {
        NodeContext::for_tests()
    }

    fn spec(json: &str) -> Result<VolumeSpec, DriverError> {
        let map = serde_json::from_str(json).unwrap();
        NfsDriver.volume(&node(), &crate::volume::options::parse(&map)?)
    }

    use crate::share::remote_of as remote;

    #[test]
    fn export_and_options_in_order() {
        let s =
            spec(r#"{"server":"10.0.0.5","path":"/exports/a","mountOptions":"nfsvers=4.1,hard"}"#)
                .unwrap();
        let r = remote(&s);
        assert_eq!(r.fs_type, "nfs");
        assert_eq!(r.source, "10.0.0.5:/exports/a");
        assert_eq!(r.options, ["nfsvers=4.1", "hard"]);
        assert!(!r.fuse);
        assert_eq!(r.server, "10.0.0.5");
        let Some(VolumeState::Nfs(export)) = &s.state else {
            panic!("{:?}", s.state)
        };
        assert_eq!(export.mount_options, ["nfsvers=4.1", "hard"]);
        assert!(
            s.key
                .starts_with("nfs-10.0.0.5__exports_a_nfsvers_4.1_hard-"),
            "{}",
            s.key
        );
    }

    #[test]
    fn ipv6_server_is_bracketed() {
        let s = spec(r#"{"server":"fd00::5","path":"/e"}"#).unwrap();
        assert_eq!(remote(&s).source, "[fd00::5]:/e");
    }

    #[test]
    fn read_only_is_per_pod_and_keeps_the_key() {
        let rw = spec(r#"{"server":"s","path":"/e","kubernetes.io/readwrite":"rw"}"#).unwrap();
        let ro = spec(r#"{"server":"s","path":"/e","kubernetes.io/readwrite":"ro"}"#).unwrap();
        let ro2 = spec(r#"{"server":"s","path":"/e","readOnly":"true"}"#).unwrap();
        assert_eq!(rw, ro);
        assert_eq!(rw, ro2);
        assert!(!remote(&ro).options.iter().any(|o| o == "ro"));
    }

    #[test]
    fn key_is_stable_and_covers_options() {
        let a = spec(r#"{"server":"s","path":"/e","mountOptions":"nfsvers=3"}"#).unwrap();
        let b = spec(r#"{"server":"s","path":"/e","mountOptions":" nfsvers=3 "}"#).unwrap();
        let c = spec(r#"{"server":"s","path":"/e","mountOptions":"nfsvers=4.1"}"#).unwrap();
        let d = spec(r#"{"server":"s","path":"/e2","mountOptions":"nfsvers=3"}"#).unwrap();
        assert_eq!(a.key, b.key);
        assert_ne!(a.key, c.key);
        assert_ne!(a.key, d.key);
        assert_eq!(a.key, volume_key("nfs", "s:/e?nfsvers=3"));
    }

    /// Issue 12 item 10: a server that mount(8) would read as an option (`-Lroot`), or any
    /// server, export path or mount option that is not one, never reaches mount's argv.
    #[test]
    fn hostile_values_are_refused_before_any_command() {
        crate::share::assert_refused_before_mount(
            &NfsDriver,
            &[("server", "10.0.0.5"), ("path", "/exports/a")],
            &[
                ("server", "-Lroot"),
                ("server", "-oremount"),
                ("server", "--bind"),
                ("server", "10.0.0.5;reboot"),
                ("server", "$(reboot)"),
                ("server", "srv`id`"),
                ("server", "10.0.0.5:2049"),
                ("server", "[fd00::5"),
                ("server", "fd00::5]"),
                ("server", "[fd00::5]:2049"),
                ("server", "a..b"),
                ("server", "-"),
                ("path", "/e;reboot"),
                ("path", "/e$x"),
                ("path", "/e'x"),
                ("path", "/e\"x"),
                ("path", "/e\\x"),
                ("path", "/e`x`"),
                ("path", "/e\u{0}"),
                ("path", "-o"),
                ("mountOptions", "-oremount"),
                ("mountOptions", "hard,-v"),
                ("mountOptions", "hard,--bind"),
            ],
        );
    }

    #[test]
    fn ipv6_server_is_bracketed_once_and_canonical() {
        let s = spec(r#"{"server":"[fd00::5]","path":"/e"}"#).unwrap();
        assert_eq!(remote(&s).source, "[fd00::5]:/e");
        let s = spec(r#"{"server":"fd00:0::5","path":"/e"}"#).unwrap();
        assert_eq!(remote(&s).source, "[fd00::5]:/e");
    }

    #[test]
    fn bad_options_are_refused() {
        let msg = |j: &str| spec(j).unwrap_err().to_string();
        assert_eq!(
            msg(r#"{"path":"/e"}"#),
            "option server is required by driver nfs"
        );
        assert_eq!(
            msg(r#"{"server":"s"}"#),
            "option path is required by driver nfs"
        );
        assert!(
            msg(r#"{"server":"s","path":"/e","sever":"x"}"#).starts_with("unknown option sever")
        );
        assert!(msg(r#"{"server":"s","path":"/e/../etc"}"#).starts_with("option path=/e/../etc"));
        assert!(msg(r#"{"server":"s","path":"e"}"#).contains("absolute"));
        assert!(msg(r#"{"server":"s x","path":"/e"}"#).starts_with("option server=s x"));
        assert!(
            msg(r#"{"server":"s","path":"/e","mountOptions":"a b"}"#)
                .starts_with("option mountOptions")
        );
        assert_eq!(
            spec(r#"{"path":"/e"}"#).unwrap_err().reason(),
            "bad_options"
        );
    }

    /// A stage record main ef677bd wrote loads into the export `volume()` derives from the
    /// same options today, and round-trips typed.
    #[test]
    fn a_record_of_main_ef677bd_loads_typed() {
        let rec =
            crate::journal::record::old_record(include_str!("../volume/fixtures/nfs-ef677bd.json"));
        let now =
            spec(r#"{"server":"10.0.0.5","path":"/exports/a","mountOptions":"nfsvers=4.1,hard"}"#)
                .unwrap();
        assert_eq!(rec.volume, now.state);
        assert_eq!(rec.source, now.source);
        let t = tempfile::tempdir().unwrap();
        let (host, runner) = crate::share::test_host(t.path());
        NfsDriver.detach(&host, &rec.recorded()).unwrap();
        assert!(runner.calls().is_empty());
    }
}
