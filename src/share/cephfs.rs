//! Driver `moor~cephfs/cephfs`: options `monitors` (comma list, `host[:port]`), `path`
//! (default `/`), `user` (default `admin`), `secretFile` or the secret key `key`
//! (`kubernetes.io/secret/key`, which wins, as in Kubernetes' `cephfs` volume), `mounter`
//! (`kernel`, the default, or `fuse`), `fsName`, `readOnly`, `mountOptions`.
//!
//! The kernel client gets `name=<user>,secretfile=<file>,recover_session=clean` (an evicted
//! client reconnects by itself; `mountOptions` may say otherwise); ceph-fuse gets
//! `mount -t fuse.ceph none <stage> -o ceph.id=..,ceph.conf=..,ceph.keyring=..,
//! ceph.client_mountpoint=..` with a `ceph.conf` naming the monitors and a log file beside
//! the stage.
//!
//! Invariant: the key never leaves moor's memory except into the 0600 files in
//! `<run_dir>/secrets/<volume key>/` (written by attach, removed by detach); the options,
//! the stage record and every error name only the files' paths.

use std::path::{Path, PathBuf};

use super::{ceph, check_export_path};
use crate::host::Host;
use crate::host::paths::VENDOR;
use crate::host::secrets::{remove_secrets, secret_dir, write_secret};
use crate::volume::state::{CephClient, CephCredential, CephFsShare};
use crate::volume::{
    Attached, Driver, DriverError, MountOptions, NodeContext, OptionsError, Recorded, RemoteMount,
    StageSource, VolumeOptions, VolumeSpec, VolumeState, validate, volume_key,
};

/// The user options this driver accepts.
pub const OPTIONS: &[&str] = &[
    "monitors",
    "path",
    "user",
    "secretFile",
    "mounter",
    "fsName",
    "readOnly",
    "mountOptions",
];

/// The secret key (`kubernetes.io/secret/key`) holding the cephx key.
pub const SECRET_KEY: &str = "key";

/// The driver name.
pub const NAME: &str = "cephfs";

/// The CephFS driver.
#[derive(Debug, Clone, Copy, Default)]
pub struct CephFsDriver;

fn invalid(key: &str, value: &str, expected: &'static str) -> DriverError {
    OptionsError::Invalid {
        key: key.into(),
        value: value.into(),
        expected,
    }
    .into()
}

/// The key's bytes as one line, or an error that never shows them.
fn key_text(secret: &[u8]) -> Result<&str, DriverError> {
    let text = std::str::from_utf8(secret).unwrap_or_default().trim();
    if text.is_empty() || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            "kubernetes.io/secret/key",
            "<redacted>",
            "a cephx key (one base64 word)",
        ));
    }
    Ok(text)
}

/// The user's options as a [`CephFsShare`], every value through its validator (the
/// secret's key too, never shown).
pub fn parse_share(opts: &VolumeOptions) -> Result<CephFsShare, DriverError> {
    {
        opts.check_known(NAME, OPTIONS)?;
        let monitors = ceph::monitors(opts, NAME)?;
        let get = |k: &str| opts.user.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let path = get("path").unwrap_or("/").to_owned();
        check_export_path("path", &path)?;
        if !path.starts_with('/') {
            return Err(invalid(
                "path",
                &path,
                "an absolute path inside the filesystem",
            ));
        }
        let user = validate::ceph_user("user", get("user").unwrap_or(ceph::DEFAULT_USER))?;
        let client = match get("mounter").unwrap_or("kernel") {
            "kernel" => CephClient::Kernel,
            "fuse" => CephClient::Fuse,
            other => return Err(invalid("mounter", other, "kernel or fuse")),
        };
        let fs_name = get("fsName").map(str::to_owned);
        if let Some(f) = &fs_name {
            validate::ceph_name("fsName", f)?;
        }
        let credential = if let Some(s) = opts.secrets.get(SECRET_KEY) {
            key_text(&s.0)?;
            CephCredential::Secret
        } else if let Some(f) = get("secretFile") {
            CephCredential::File(validate::node_file("secretFile", f)?.into())
        } else {
            return Err(invalid(
                "secretFile",
                "",
                "set secretFile or give a secretRef whose Secret has the key `key`",
            ));
        };
        Ok(CephFsShare {
            monitors,
            path,
            user,
            client,
            fs_name,
            credential,
            mount_options: opts.mount_options.words().to_vec(),
        })
    }
}

impl CephFsShare {
    /// The identity the volume key is derived from: everything that changes the mount.
    pub fn identity(&self) -> String {
        let cred = match &self.credential {
            CephCredential::File(f) => format!("secretFile={}", f.display()),
            CephCredential::Secret => "secret".into(),
        };
        format!(
            "{}:{}?user={}&mounter={}&fs={}&{cred}&{}",
            self.monitors.join(","),
            self.path,
            self.user,
            match self.client {
                CephClient::Kernel => "kernel",
                CephClient::Fuse => "fuse",
            },
            self.fs_name.as_deref().unwrap_or_default(),
            self.mount_options.join(",")
        )
    }

    /// The mount for key `key`; `dir` is its private credential directory, `log` the
    /// ceph-fuse log (pure: no host access).
    pub fn remote_mount(&self, dir: &Path, log: &Path) -> RemoteMount {
        let server = self.monitors.join(",");
        match self.client {
            CephClient::Kernel => {
                let secretfile = match &self.credential {
                    CephCredential::File(f) => f.clone(),
                    CephCredential::Secret => dir.join("secret"),
                };
                let mut options = vec![
                    format!("name={}", self.user),
                    format!("secretfile={}", secretfile.display()),
                ];
                if let Some(f) = &self.fs_name {
                    options.push(format!("fs={f}"));
                }
                // An evicted (blocklisted) kernel client answers statfs and cached lookups
                // but refuses everything else (EACCES) until remounted; with
                // `recover_session=clean` the kernel opens a new session by itself on the
                // next access, dropping only what the eviction had already lost.
                if !self
                    .mount_options
                    .iter()
                    .any(|o| o.starts_with("recover_session"))
                {
                    options.push("recover_session=clean".into());
                }
                options.extend(self.mount_options.iter().cloned());
                RemoteMount {
                    fs_type: "ceph".into(),
                    source: format!("{server}:{}", self.path),
                    options,
                    fuse: false,
                    log_file: None,
                    server,
                }
            }
            CephClient::Fuse => {
                let mut options = vec![
                    format!("ceph.id={}", self.user),
                    format!("ceph.conf={}", dir.join("ceph.conf").display()),
                ];
                options.push(match &self.credential {
                    CephCredential::File(f) => format!("ceph.keyfile={}", f.display()),
                    CephCredential::Secret => {
                        format!("ceph.keyring={}", dir.join("keyring").display())
                    }
                });
                options.push(format!("ceph.client_mountpoint={}", self.path));
                if let Some(f) = &self.fs_name {
                    options.push(format!("ceph.client_fs={f}"));
                }
                options.extend(self.mount_options.iter().cloned());
                RemoteMount {
                    fs_type: "fuse.ceph".into(),
                    source: "none".into(),
                    options,
                    fuse: true,
                    log_file: Some(log.into()),
                    server,
                }
            }
        }
    }

    /// ceph-fuse's configuration: the monitors and the log; no admin socket (two clients of
    /// one user would fight over `client.<user>.asok`, and moor does not use it).
    pub fn ceph_conf(&self, log: &Path) -> String {
        format!(
            "[global]\nmon_host = {}\nlog_file = {}\nadmin_socket =\n",
            self.monitors.join(","),
            log.display()
        )
    }
}

/// Where ceph-fuse of volume `key` logs (beside the stage, never inside it).
pub fn log_file(kubelet_dir: &Path, key: &str) -> PathBuf {
    kubelet_dir
        .join("plugins")
        .join(VENDOR)
        .join("cephfs")
        .join(format!("{key}.log"))
}

impl Driver for CephFsDriver {
    fn name(&self) -> &'static str {
        NAME
    }

    fn volume(&self, node: &NodeContext, opts: &VolumeOptions) -> Result<VolumeSpec, DriverError> {
        let v = parse_share(opts)?;
        let key = volume_key(NAME, &v.identity());
        let remote = v.remote_mount(
            &secret_dir(&node.run_dir, &key),
            &log_file(&node.kubelet_dir, &key),
        );
        Ok(VolumeSpec {
            key,
            source: StageSource::Remote(remote),
            state: Some(VolumeState::Cephfs(v)),
            mount_options: MountOptions::default(),
        })
    }

    /// Writes the key (and ceph-fuse's configuration) into the volume's private directory.
    fn attach(
        &self,
        host: &Host,
        spec: &VolumeSpec,
        opts: &VolumeOptions,
    ) -> Result<Attached, DriverError> {
        let Some(VolumeState::Cephfs(v)) = &spec.state else {
            return Err(DriverError::NoVolume {
                volume: spec.key.clone(),
                driver: NAME,
            });
        };
        let dir = secret_dir(&host.paths.run_dir, &spec.key);
        let write = |name: &str, bytes: &[u8]| {
            write_secret(&dir, name, bytes).map_err(|source| DriverError::SecretFile {
                volume: spec.key.clone(),
                path: dir.join(name),
                source,
            })
        };
        if v.credential == CephCredential::Secret
            && let Some(s) = opts.secrets.get(SECRET_KEY)
        {
            let key = key_text(&s.0)?;
            match v.client {
                CephClient::Kernel => write("secret", key.as_bytes())?,
                CephClient::Fuse => write(
                    "keyring",
                    format!("[client.{}]\n\tkey = {key}\n", v.user).as_bytes(),
                )?,
            };
        }
        if v.client == CephClient::Fuse {
            let log = log_file(&host.paths.kubelet_dir, &spec.key);
            write("ceph.conf", v.ceph_conf(&log).as_bytes())?;
        }
        tracing::debug!(volume = %spec.key, driver = NAME, dir = %dir.display(), "credential files written");
        Ok(Attached::default())
    }

    /// Removes the credential directory and the ceph-fuse log.
    fn detach(&self, host: &Host, rec: &Recorded<'_>) -> Result<(), DriverError> {
        let dir = secret_dir(&host.paths.run_dir, rec.key);
        remove_secrets(&dir).map_err(|source| DriverError::SecretFile {
            volume: rec.key.into(),
            path: dir.clone(),
            source,
        })?;
        if let StageSource::Remote(RemoteMount {
            log_file: Some(log),
            ..
        }) = rec.source
            && let Err(e) = std::fs::remove_file(log)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(volume = %rec.key, driver = "cephfs", error = %e, "cannot remove the client log");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const KEY: &str = "AQDmoorTESTkeyAAAAAAAAAAAAAAAAAAAAAAAA==";

    fn node() -> NodeContext {
        NodeContext::for_tests()
    }

    fn opts(json: &str) -> VolumeOptions {
        VolumeOptions::parse_json(json).unwrap()
    }

    fn with_secret(json: &str) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{KEY}\n"));
        json.replacen('{', &format!(r#"{{"kubernetes.io/secret/key":"{b64}","#), 1)
    }

    use crate::share::remote_of as remote;

    /// Issue 12 item 10: monitors, paths, user ids, fs names, secret files and mount options
    /// that are not one never reach mount's argv (or ceph-fuse's option list).
    #[test]
    fn hostile_values_are_refused_before_any_command() {
        crate::share::assert_refused_before_mount(
            &CephFsDriver,
            &[
                ("monitors", "10.0.0.1:6789"),
                ("secretFile", "/etc/ceph/k.secret"),
            ],
            &[
                ("monitors", "-m"),
                ("monitors", "10.0.0.1;reboot"),
                ("monitors", "$(reboot)"),
                ("monitors", "10.0.0.1:99999"),
                ("monitors", "10.0.0.1:0"),
                ("monitors", "[fd00::1"),
                ("monitors", "fd00::1"),
                ("monitors", "10.0.0.1,`id`"),
                ("path", "/v;x"),
                ("path", "/v$x"),
                ("path", "/v'x"),
                ("path", "-o"),
                ("user", "-x"),
                ("user", "a;b"),
                ("fsName", "-x"),
                ("fsName", "a$b"),
                ("secretFile", "/etc/ceph/a;b"),
                ("secretFile", "/etc/ceph/a'b"),
                ("mountOptions", "-oremount"),
                ("mountOptions", "noatime,--bind"),
            ],
        );
    }

    /// RBD and CephFS read `monitors` through one validator: the same lists are accepted
    /// (and persisted alike) or refused by both.
    #[test]
    fn rbd_and_cephfs_read_monitors_alike() {
        use crate::attach::rbd::RbdDriver;
        for v in [
            "10.0.0.1:6789",
            " 10.0.0.1:6789, mon-b ,10.0.0.1:6789",
            "[fd00::1]:3300,m2",
            "m,,n",
            "-m",
            "10.0.0.1;reboot",
            "10.0.0.1:65536",
            "[fd00::1",
            "fd00::1",
            "v2:10.0.0.1:3300",
        ] {
            let ceph = CephFsDriver.volume(
                &node(),
                &opts(&serde_json::json!({"monitors": v, "secretFile": "/etc/ceph/k"}).to_string()),
            );
            let rbd = RbdDriver.volume(
                &node(),
                &opts(
                    &serde_json::json!({"monitors": v, "image": "i", "keyring": "/etc/ceph/k"})
                        .to_string(),
                ),
            );
            match (ceph, rbd) {
                (Ok(c), Ok(r)) => match (c.state, r.state) {
                    (Some(VolumeState::Cephfs(c)), Some(VolumeState::Rbd(r))) => {
                        assert_eq!(c.monitors, r.monitors, "{v}")
                    }
                    other => panic!("{v}: {other:?}"),
                },
                (Err(c), Err(r)) => assert_eq!(c.to_string(), r.to_string(), "{v}"),
                (c, r) => panic!("{v}: cephfs {c:?}, rbd {r:?}"),
            }
        }
    }

    #[test]
    fn kernel_mount_names_a_secret_file() {
        let o = opts(&with_secret(
            r#"{"monitors":"10.0.0.1:6789,10.0.0.2","path":"/volumes/a","user":"k8s","fsName":"cephfs","mountOptions":"noatime"}"#,
        ));
        let s = CephFsDriver.volume(&node(), &o).unwrap();
        let r = remote(&s);
        assert_eq!(r.fs_type, "ceph");
        assert_eq!(r.source, "10.0.0.1:6789,10.0.0.2:/volumes/a");
        assert_eq!(
            r.options,
            [
                "name=k8s".to_owned(),
                format!("secretfile=/run/moor/secrets/{}/secret", s.key),
                "fs=cephfs".into(),
                "recover_session=clean".into(),
                "noatime".into(),
            ]
        );
        assert!(!r.fuse);
        let rec = format!("{r:?}{:?}", s.state);
        assert!(!rec.contains(KEY), "the key leaked into the spec: {rec}");
    }

    #[test]
    fn fuse_mount_uses_conf_and_keyring() {
        let o = opts(&with_secret(r#"{"monitors":"m1","mounter":"fuse"}"#));
        let s = CephFsDriver.volume(&node(), &o).unwrap();
        let r = remote(&s);
        let dir = format!("/run/moor/secrets/{}", s.key);
        assert_eq!(r.fs_type, "fuse.ceph");
        assert_eq!(r.source, "none");
        assert_eq!(
            r.options,
            [
                "ceph.id=admin".to_owned(),
                format!("ceph.conf={dir}/ceph.conf"),
                format!("ceph.keyring={dir}/keyring"),
                "ceph.client_mountpoint=/".into(),
            ]
        );
        assert!(r.fuse);
        assert_eq!(
            r.log_file.as_deref(),
            Some(Path::new(&format!(
                "/var/lib/kubelet/plugins/moor/cephfs/{}.log",
                s.key
            )))
        );
    }

    #[test]
    fn secret_file_option() {
        let o = opts(
            r#"{"monitors":"m1","secretFile":"/etc/ceph/k8s.secret","user":"client.k8s","mountOptions":"recover_session=no"}"#,
        );
        let s = CephFsDriver.volume(&node(), &o).unwrap();
        assert_eq!(
            remote(&s).options,
            [
                "name=k8s",
                "secretfile=/etc/ceph/k8s.secret",
                "recover_session=no"
            ]
        );
        let o = opts(r#"{"monitors":"m1","secretFile":"/etc/ceph/k","mounter":"fuse"}"#);
        let s = CephFsDriver.volume(&node(), &o).unwrap();
        assert!(
            remote(&s)
                .options
                .contains(&"ceph.keyfile=/etc/ceph/k".to_owned())
        );
    }

    #[test]
    fn read_only_is_per_pod_and_key_is_stable() {
        let a = CephFsDriver
            .volume(
                &node(),
                &opts(&with_secret(r#"{"monitors":"m1,m2","readOnly":"true"}"#)),
            )
            .unwrap();
        let b = CephFsDriver
            .volume(
                &node(),
                &opts(&with_secret(r#"{"monitors":" m1, m2","path":"/"}"#)),
            )
            .unwrap();
        assert_eq!(a, b);
        assert!(!remote(&a).options.iter().any(|o| o == "ro"));
        let c = CephFsDriver
            .volume(
                &node(),
                &opts(&with_secret(r#"{"monitors":"m1,m2","mounter":"fuse"}"#)),
            )
            .unwrap();
        let d = CephFsDriver
            .volume(
                &node(),
                &opts(&with_secret(r#"{"monitors":"m1,m2","user":"k8s"}"#)),
            )
            .unwrap();
        assert_ne!(a.key, c.key);
        assert_ne!(a.key, d.key);
        assert_eq!(
            a.key,
            volume_key("cephfs", "m1,m2:/?user=admin&mounter=kernel&fs=&secret&")
        );
    }

    #[test]
    fn bad_options_are_refused() {
        let msg = |j: &str| {
            CephFsDriver
                .volume(&node(), &opts(j))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            msg(r#"{"path":"/"}"#),
            "option monitors is required by driver cephfs"
        );
        assert!(msg(r#"{"monitors":"m"}"#).contains("set secretFile or give a secretRef"));
        assert!(
            msg(&with_secret(r#"{"monitors":"m","mounter":"nfs"}"#))
                .starts_with("option mounter=nfs: kernel or fuse")
        );
        assert!(
            msg(&with_secret(r#"{"monitors":"m","path":"/a/../b"}"#)).starts_with("option path=")
        );
        assert!(msg(&with_secret(r#"{"monitors":"m","path":"a"}"#)).contains("absolute"));
        assert!(msg(&with_secret(r#"{"monitors":"m","user":"a b"}"#)).starts_with("option user="));
        assert!(
            msg(&with_secret(r#"{"monitors":"m","fsName":"x,y"}"#)).starts_with("option fsName=")
        );
        assert!(msg(r#"{"monitors":"m","secretFile":"rel/x"}"#).starts_with("option secretFile="));
        assert!(
            msg(&with_secret(r#"{"monitors":"m","keyring":"/x"}"#))
                .starts_with("unknown option keyring")
        );
        // A malformed key is refused without showing it.
        let bad = r#"{"kubernetes.io/secret/key":"QVFEIGJhZCBrZXk=","monitors":"m"}"#;
        let m = msg(bad);
        assert!(
            m.contains("<redacted>") && !m.contains("AQD bad key"),
            "{m}"
        );
    }

    #[test]
    fn attach_writes_private_files_and_detach_removes_them() {
        let t = tempfile::tempdir().unwrap();
        let (host, _) = crate::share::test_host(t.path());
        let n = NodeContext {
            node_name: "n".into(),
            kubelet_dir: host.paths.kubelet_dir.clone(),
            run_dir: host.paths.run_dir.clone(),
        };
        for mounter in ["kernel", "fuse"] {
            let o = opts(&with_secret(&format!(
                r#"{{"monitors":"m1,m2","user":"k8s","mounter":"{mounter}"}}"#
            )));
            let s = CephFsDriver.volume(&n, &o).unwrap();
            CephFsDriver.attach(&host, &s, &o).unwrap();
            let dir = secret_dir(&host.paths.run_dir, &s.key);
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&dir), 0o700);
            if mounter == "kernel" {
                assert_eq!(std::fs::read_to_string(dir.join("secret")).unwrap(), KEY);
                assert_eq!(mode(&dir.join("secret")), 0o600);
            } else {
                assert_eq!(
                    std::fs::read_to_string(dir.join("keyring")).unwrap(),
                    format!("[client.k8s]\n\tkey = {KEY}\n")
                );
                let conf = std::fs::read_to_string(dir.join("ceph.conf")).unwrap();
                assert!(conf.contains("mon_host = m1,m2\n"), "{conf}");
                assert!(!conf.contains(KEY));
            }
            let rec = crate::journal::StageRecord::new(
                &s.key,
                NAME,
                s.source.clone(),
                s.state.clone(),
                crate::journal::StagePhase::Unstaging,
            );
            assert!(!serde_json::to_string(&rec).unwrap().contains(KEY));
            CephFsDriver.detach(&host, &rec.recorded()).unwrap();
            assert!(!dir.exists());
            CephFsDriver.detach(&host, &rec.recorded()).unwrap();
        }
    }

    /// A stage record main ef677bd wrote (ceph-fuse, a secret file, a filesystem name) loads
    /// into the share `volume()` derives from the same options today, and detaches: the
    /// volume's private directory goes.
    #[test]
    fn a_record_of_main_ef677bd_loads_typed_and_detaches() {
        let rec = crate::journal::record::old_record(include_str!(
            "../volume/fixtures/cephfs-ef677bd.json"
        ));
        let now = CephFsDriver
            .volume(
                &node(),
                &opts(
                    r#"{"monitors":"m1,m2","path":"/volumes/a","user":"k8s","mounter":"fuse","fsName":"cephfs","secretFile":"/etc/ceph/k8s.secret","mountOptions":"noatime"}"#,
                ),
            )
            .unwrap();
        assert_eq!(rec.volume, now.state);
        let Some(VolumeState::Cephfs(share)) = &rec.volume else {
            panic!("{:?}", rec.volume)
        };
        assert_eq!(share.client, CephClient::Fuse);
        assert_eq!(
            share.credential,
            CephCredential::File("/etc/ceph/k8s.secret".into())
        );
        let t = tempfile::tempdir().unwrap();
        let (host, _) = crate::share::test_host(t.path());
        let dir = secret_dir(&host.paths.run_dir, &rec.key);
        write_secret(&dir, "ceph.conf", b"[global]\n").unwrap();
        CephFsDriver.detach(&host, &rec.recorded()).unwrap();
        assert!(!dir.exists());
    }
}
