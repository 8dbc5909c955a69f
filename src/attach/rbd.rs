//! Ceph RBD through the kernel client (`moor~rbd/rbd`): `rbd map` on attach, `rbd unmap`
//! on detach; the lifecycle probes, formats-if-blank and mounts `/dev/rbdN` like any disk.
//!
//! Invariants:
//! - **One mapping per image per node.** Attach first looks in sysfs
//!   (`/sys/bus/rbd/devices/<id>/{pool,pool_ns,name,current_snap}`) and reuses a mapping of
//!   the image head it finds, so an attach after a daemon restart or a crash between `rbd map`
//!   and the journal write never maps twice. Detach unmaps every head mapping of the image
//!   found the same way, so it works from the bare `pool`/`image` (and namespace) of a record whose attach a
//!   crash cut short. A RADOS namespace (`radosNamespace`) is part of the image's name:
//!   a mapping of `pool/image` is never taken for one of `pool/ns/image`, and the other
//!   way round (sysfs `pool_ns` tells them apart).
//! - **Only moor's mappings.** A claim file (`<run_dir>/rbd/<key>`, written before `rbd map`)
//!   marks a mapping as moor's. A mapping of the image that someone else made on this node
//!   (a hand-made `rbd map`) is refused with its device and client named, never shared, and
//!   never unmapped by detach.
//! - **RWO fencing.** Before mapping read-write, `rbd status` (watchers) and `rbd lock list`
//!   (advisory and exclusive locks) must both come back empty; otherwise the attach is refused
//!   with an error naming every other client (id and address). A read-only volume is mapped
//!   `--read-only` without that check. The check and the map are not atomic, so for images
//!   with the `exclusive-lock` feature the read-write map also uses the kernel's `exclusive`
//!   option: the lock is taken in the map and never handed over, and a second node that
//!   passed the check in the same second fails its map. Images without that feature
//!   (`layering` only) have the check alone: two nodes mapping in the same second can both
//!   pass it.
//! - **No advisory lock of our own.** The in-tree plugin's `kubelet_lock_magic_<node>` lock
//!   outlives a dead node forever and has to be removed by hand; the kernel client's watcher
//!   is already a lease that ends with the mapping, and expires by itself 30 s
//!   (`osd_client_watch_timeout`) after the node dies. Locks taken by others (the in-tree
//!   plugin, an operator's `rbd lock add`) are still honoured.
//! - **The key never reaches argv, the journal or a log.** A key from the secret (`key`, the
//!   in-tree name, or `userKey`, ceph-csi's) is written to `<run_dir>/secrets/<volume>/keyfile`
//!   (0600 in a 0700 directory) and passed as `--keyfile`; detach removes it. A `keyring`
//!   option is a path to a keyring already on the node and is passed as `--keyring`.
//! - **Every rbd command is bounded:** librados gives up after `client_mount_timeout` /
//!   `rados_{mon,osd}_op_timeout`, the kernel's map after `mount_timeout`, and the process is
//!   killed at the command deadline either way, so a dead monitor fails the attach instead of
//!   hanging it.
//!
//! Clearing a dead node's claim (the error message says the same): a watcher lingers up to
//! 30 s after its client died; to end it at once, fence the client with
//! `ceph osd blocklist add <address>`. A lock is removed with
//! `rbd lock remove <pool>/<image> <lock-id> <locker>` (from `rbd lock list`), which also
//! blocklists the locker. Only do either when the other node is really gone: fencing a live
//! writer is what the check protects against.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::host::rbdbus::{self, RbdMapping};
use crate::host::{Cmd, Host, secrets};
use crate::share::ceph;
use crate::testhook::pause_point;
use crate::volume::state::RbdImage;
use crate::volume::{
    Attached, CapacityError, Driver, DriverError, NodeContext, OptionsError, Recorded, StageSource,
    VolumeOptions, VolumeSpec, VolumeState, validate, volume_key,
};

pub mod parse;

use parse::Holder;

/// The driver name.
pub const NAME: &str = "rbd";
/// User options the driver knows.
pub const OPTIONS: &[&str] = &[
    "monitors",
    "pool",
    "radosNamespace",
    "image",
    "user",
    "keyring",
    "readOnly",
    "mountOptions",
];
/// Secret keys accepted for the cephx key, in order of preference.
const SECRET_KEYS: &[&str] = &["key", "userKey"];
/// librados: how long to wait for a monitor session and for each operation (seconds).
const RADOS_TIMEOUT_S: u64 = 15;
/// The kernel client's connect deadline for `rbd map` (seconds).
const KERNEL_MOUNT_TIMEOUT_S: u64 = 30;
/// Deadline of one rbd command: above the tools' own timeouts so they report first.
const CMD_TIMEOUT: Duration = Duration::from_secs(45);
/// How long to wait for udev to create `/dev/rbdN` after a map.
const DEVICE_WAIT: Duration = Duration::from_secs(10);
/// Name of the key file in the volume's secret directory.
const KEYFILE: &str = "keyfile";

/// RBD's own failures.
#[derive(Debug, thiserror::Error)]
pub enum RbdError {
    /// Another client uses the image; mapping it read-write here would corrupt it.
    #[error(
        "volume {volume}: image {image} is in use by another client: {holders}; refusing to map it read-write (a read-only volume would be allowed). If that client is a dead node: wait 30 s for its watch to expire, or fence it with `ceph osd blocklist add <address>`; remove a stale lock with `rbd lock remove {image} <lock-id> <locker>`"
    )]
    InUse {
        /// Volume key.
        volume: String,
        /// `pool/image`.
        image: String,
        /// Every other client, with id and address.
        holders: String,
    },
    /// The image is mapped read-only on this node and a read-write use was asked for.
    #[error(
        "volume {volume}: image {image} is already mapped read-only here as {device}; unmount its read-only users before using it read-write"
    )]
    MappedReadOnly {
        /// Volume key.
        volume: String,
        /// `pool/image`.
        image: String,
        /// The existing device.
        device: PathBuf,
    },
    /// The image is already mapped on this node, but not by moor (a hand-made `rbd map`).
    #[error(
        "volume {volume}: image {image} is already mapped on this node as {device} by {client}, not by moor; moor neither shares nor unmaps a mapping it did not make: stop its user and `rbd unmap {device}` first"
    )]
    ForeignMapping {
        /// Volume key.
        volume: String,
        /// `pool/image`.
        image: String,
        /// The existing device.
        device: PathBuf,
        /// The kernel client (id and address from sysfs).
        client: String,
    },
    /// moor's claim on a mapping could not be written or removed.
    #[error("volume {volume}: mapping claim {path}")]
    Claim {
        /// Volume key.
        volume: String,
        /// The claim file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `rbd map` succeeded but no device appeared.
    #[error("volume {volume}: `rbd map {image}` succeeded but {detail}")]
    NoDevice {
        /// Volume key.
        volume: String,
        /// `pool/image`.
        image: String,
        /// What is missing.
        detail: String,
    },
    /// sysfs could not be read.
    #[error("volume {volume}: cannot read {path}")]
    Sysfs {
        /// Volume key.
        volume: String,
        /// What was read.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A tool printed something we could not understand.
    #[error("volume {volume}: cannot parse the output of `{command}`: {detail}")]
    Parse {
        /// Volume key.
        volume: String,
        /// The redacted command.
        command: String,
        /// Why.
        detail: String,
    },
}

impl RbdError {
    /// Stable reason label.
    pub fn reason(&self) -> &'static str {
        match self {
            RbdError::InUse { .. } => "rbd_in_use",
            RbdError::MappedReadOnly { .. } => "rbd_mapped_read_only",
            RbdError::ForeignMapping { .. } => "rbd_foreign_mapping",
            RbdError::Claim { .. } => "rbd_claim",
            RbdError::NoDevice { .. } => "rbd_no_device",
            RbdError::Sysfs { .. } => "sysfs",
            RbdError::Parse { .. } => "rbd_parse",
        }
    }
}

impl crate::volume::ProtocolError for RbdError {
    fn reason(&self) -> &'static str {
        RbdError::reason(self)
    }
}

/// The RBD driver.
#[derive(Debug, Default, Clone, Copy)]
pub struct RbdDriver;

impl RbdImage {
    /// rbd's image spec: `pool/image`, or `pool/namespace/image` inside a namespace.
    fn spec(&self) -> String {
        image_spec(&self.pool, &self.namespace, &self.image)
    }

    /// Connection and credential arguments shared by every cluster command.
    fn connect_args(&self, keyfile: Option<&Path>) -> Vec<String> {
        let mut a = vec![
            "-m".to_owned(),
            self.monitors.join(","),
            "--id".to_owned(),
            self.user.clone(),
        ];
        if let Some(k) = keyfile {
            a.push("--keyfile".into());
            a.push(k.display().to_string());
        } else if let Some(k) = &self.keyring {
            a.push("--keyring".into());
            a.push(k.clone());
        }
        a
    }
}

fn image_spec(pool: &str, namespace: &str, image: &str) -> String {
    if namespace.is_empty() {
        format!("{pool}/{image}")
    } else {
        format!("{pool}/{namespace}/{image}")
    }
}

fn rados_timeouts() -> Vec<String> {
    [
        "client_mount_timeout",
        "rados_mon_op_timeout",
        "rados_osd_op_timeout",
    ]
    .iter()
    .map(|o| format!("--{o}={RADOS_TIMEOUT_S}"))
    .collect()
}

/// `rbd status <pool/image> --format json …`: the image's watchers.
fn status_cmd(t: &RbdImage, keyfile: Option<&Path>) -> Cmd {
    Cmd::new("rbd")
        .args(["status", &t.spec(), "--format", "json"])
        .args(t.connect_args(keyfile))
        .args(rados_timeouts())
        .timeout(CMD_TIMEOUT)
}

/// `rbd lock list <pool/image> --format json …`: the image's locks.
fn lock_list_cmd(t: &RbdImage, keyfile: Option<&Path>) -> Cmd {
    Cmd::new("rbd")
        .args(["lock", "list", &t.spec(), "--format", "json"])
        .args(t.connect_args(keyfile))
        .args(rados_timeouts())
        .timeout(CMD_TIMEOUT)
}

/// `rbd info <pool/image> --format json …`: the image's features.
fn info_cmd(t: &RbdImage, keyfile: Option<&Path>) -> Cmd {
    Cmd::new("rbd")
        .args(["info", &t.spec(), "--format", "json"])
        .args(t.connect_args(keyfile))
        .args(rados_timeouts())
        .timeout(CMD_TIMEOUT)
}

/// How `rbd map` maps the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MapMode {
    ReadOnly,
    ReadWrite,
    /// Read-write holding the image's exclusive lock from the map on, never handing it over
    /// (the kernel's `exclusive` option, for images with the `exclusive-lock` feature).
    Exclusive,
}

/// `rbd map <pool/image> [--read-only] … --options mount_timeout=…[,exclusive,lock_timeout=…]`.
fn map_cmd(t: &RbdImage, keyfile: Option<&Path>, mode: MapMode) -> Cmd {
    let mut c = Cmd::new("rbd").args(["map", &t.spec()]);
    if mode == MapMode::ReadOnly {
        c = c.arg("--read-only");
    }
    let mut kernel = format!("mount_timeout={KERNEL_MOUNT_TIMEOUT_S}");
    if mode == MapMode::Exclusive {
        // Bounded: a lock another client will not give up fails the map instead of hanging it.
        kernel.push_str(&format!(",exclusive,lock_timeout={KERNEL_MOUNT_TIMEOUT_S}"));
    }
    c.args(t.connect_args(keyfile))
        .args(["--options", &kernel])
        .args(rados_timeouts())
        .timeout(CMD_TIMEOUT)
}

/// `rbd unmap /dev/rbdN`: needs no credentials (the kernel already has the session).
fn unmap_cmd(device: &Path) -> Cmd {
    Cmd::new("rbd")
        .arg("unmap")
        .arg(device)
        .timeout(CMD_TIMEOUT)
}

/// The cephx key from the secret, trimmed; errors name the secret key, never the value.
fn secret_key(opts: &VolumeOptions) -> Result<Option<Vec<u8>>, OptionsError> {
    for name in opts.secrets.keys() {
        if !SECRET_KEYS.contains(&name.as_str()) {
            return Err(OptionsError::Invalid {
                key: format!("kubernetes.io/secret/{name}"),
                value: "<redacted>".into(),
                expected: "the rbd driver reads the cephx key from secret key `key` (or `userKey`) only",
            });
        }
    }
    let found: Vec<&[u8]> = SECRET_KEYS
        .iter()
        .filter_map(|k| opts.secrets.get(*k))
        .map(|s| s.0.trim_ascii())
        .collect();
    match found.as_slice() {
        [] => Ok(None),
        [k] | [k, _] if found.iter().all(|o| o == k) => {
            if k.is_empty()
                || k.iter()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
            {
                return Err(OptionsError::Invalid {
                    key: "kubernetes.io/secret/key".into(),
                    value: "<redacted>".into(),
                    expected: "a bare cephx key (the base64 text after `key =` in a keyring)",
                });
            }
            Ok(Some(k.to_vec()))
        }
        _ => Err(OptionsError::Invalid {
            key: "kubernetes.io/secret/userKey".into(),
            value: "<redacted>".into(),
            expected: "the same key as secret `key` (or give only one of them)",
        }),
    }
}

impl RbdDriver {
    fn sysfs_err(volume: &str, host: &Host) -> impl Fn(std::io::Error) -> DriverError {
        let volume = volume.to_owned();
        let path = host.paths.sys.join("bus/rbd/devices");
        move |source| {
            DriverError::from(RbdError::Sysfs {
                volume: volume.clone(),
                path: path.clone(),
                source,
            })
        }
    }

    fn head_mappings(
        host: &Host,
        volume: &str,
        t: &RbdImage,
    ) -> Result<Vec<RbdMapping>, DriverError> {
        Ok(rbdbus::mappings(&host.paths.sys)
            .map_err(Self::sysfs_err(volume, host))?
            .into_iter()
            .filter(|m| m.is_head_of(&t.pool, &t.namespace, &t.image))
            .collect())
    }

    /// The other clients that watch or lock the image.
    fn holders(
        host: &Host,
        volume: &str,
        t: &RbdImage,
        keyfile: Option<&Path>,
    ) -> Result<Vec<Holder>, DriverError> {
        let cmd_err = |source| DriverError::Command {
            volume: volume.into(),
            source,
        };
        let parse_err = |cmd: &Cmd, detail: String| {
            DriverError::from(RbdError::Parse {
                volume: volume.into(),
                command: cmd.display(),
                detail,
            })
        };
        let status = status_cmd(t, keyfile);
        let out = host.runner.run_ok(&status).map_err(cmd_err)?;
        let mut holders = parse::watchers(&out.stdout_text()).map_err(|e| parse_err(&status, e))?;
        let locks = lock_list_cmd(t, keyfile);
        let out = host.runner.run_ok(&locks).map_err(cmd_err)?;
        holders.extend(parse::locks(&out.stdout_text()).map_err(|e| parse_err(&locks, e))?);
        Ok(holders)
    }

    /// Whether the image has the `exclusive-lock` feature. With it, a read-write map takes
    /// the lock in the map itself and keeps it: a second node that passed the same
    /// watcher/lock check in the same second cannot map it read-write too. Without it, the
    /// check is all there is (the module header says so).
    fn has_exclusive_lock(
        host: &Host,
        volume: &str,
        t: &RbdImage,
        keyfile: Option<&Path>,
    ) -> Result<bool, DriverError> {
        let info = info_cmd(t, keyfile);
        let out = host
            .runner
            .run_ok(&info)
            .map_err(|source| DriverError::Command {
                volume: volume.into(),
                source,
            })?;
        let features = parse::features(&out.stdout_text()).map_err(|detail| {
            DriverError::from(RbdError::Parse {
                volume: volume.into(),
                command: info.display(),
                detail,
            })
        })?;
        Ok(features.iter().any(|f| f == "exclusive-lock"))
    }

    /// Waits for udev to create the device node.
    fn wait_for_device(dev: &Path) -> bool {
        let start = Instant::now();
        while !dev.exists() {
            if start.elapsed() > DEVICE_WAIT {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }
}

impl Driver for RbdDriver {
    fn name(&self) -> &'static str {
        NAME
    }

    fn volume(&self, _node: &NodeContext, opts: &VolumeOptions) -> Result<VolumeSpec, DriverError> {
        opts.check_known(NAME, OPTIONS)?;
        let monitors = ceph::monitors(opts, NAME)?;
        let pool = validate::ceph_name("pool", opts.get("pool").unwrap_or("rbd"))?;
        // ceph-csi's name for it; the default namespace is "" (no option, or empty).
        let namespace = match opts.get("radosNamespace") {
            None => String::new(),
            Some(n) => validate::ceph_name("radosNamespace", n)?,
        };
        let image = validate::ceph_name("image", opts.required(NAME, "image")?)?;
        let user = validate::ceph_user("user", opts.get("user").unwrap_or(ceph::DEFAULT_USER))?;
        let key = secret_key(opts)?;
        let keyring = opts.get("keyring");
        match (&key, keyring) {
            (Some(_), Some(k)) => {
                return Err(OptionsError::Invalid {
                    key: "keyring".into(),
                    value: k.to_owned(),
                    expected: "either a keyring path or the key in secret `key`, not both",
                }
                .into());
            }
            (None, None) => {
                return Err(OptionsError::Invalid {
                    key: "keyring".into(),
                    value: String::new(),
                    expected: "a keyring path on the node, or the cephx key in secret `key` (secretRef)",
                }
                .into());
            }
            (None, Some(k)) => {
                validate::node_file("keyring", k)?;
            }
            _ => {}
        }
        Ok(VolumeSpec {
            key: volume_key(NAME, &image_spec(&pool, &namespace, &image)),
            source: StageSource::Attached { device: None },
            state: Some(VolumeState::Rbd(RbdImage {
                monitors,
                pool,
                namespace,
                image,
                user,
                keyring: keyring.map(str::to_owned),
                mount_options: opts.mount_options.words().to_vec(),
                rbd_id: None,
            })),
            mount_options: opts.mount_options.clone(),
        })
    }

    fn attach(
        &self,
        host: &Host,
        spec: &VolumeSpec,
        opts: &VolumeOptions,
    ) -> Result<Attached, DriverError> {
        let volume = spec.key.as_str();
        let Some(VolumeState::Rbd(t)) = &spec.state else {
            return Err(DriverError::NoVolume {
                volume: volume.into(),
                driver: NAME,
            });
        };
        let mapped = |m: &RbdMapping| {
            Some(VolumeState::Rbd(RbdImage {
                rbd_id: Some(m.id),
                ..t.clone()
            }))
        };
        let run_dir = host.paths.run_dir.as_path();
        let claim_err = |source| {
            DriverError::from(RbdError::Claim {
                volume: volume.into(),
                path: rbdbus::claim_path(run_dir, volume),
                source,
            })
        };
        if let Some(m) = Self::head_mappings(host, volume, t)?.into_iter().next() {
            let device = m.device(&host.paths.dev);
            if !rbdbus::is_claimed(run_dir, volume) {
                let client = match (&m.client_id, &m.client_addr) {
                    (Some(id), Some(addr)) => format!("{} at {addr}", client_name(id)),
                    (Some(id), None) => client_name(id),
                    _ => "another kernel client".into(),
                };
                return Err(RbdError::ForeignMapping {
                    volume: volume.into(),
                    image: t.spec(),
                    device,
                    client,
                }
                .into());
            }
            let ro = rbdbus::is_read_only(&host.paths.sys, m.id)
                .map_err(Self::sysfs_err(volume, host))?;
            if ro && !opts.read_only {
                return Err(RbdError::MappedReadOnly {
                    volume: volume.into(),
                    image: t.spec(),
                    device,
                }
                .into());
            }
            tracing::info!(volume, driver = NAME, device = %device.display(), op = "attach", "image already mapped on this node; reusing it");
            return Ok(Attached {
                device: Some(device),
                state: mapped(&m),
            });
        }
        let keyfile = match secret_key(opts)? {
            Some(k) => {
                let dir = secrets::secret_dir(&host.paths.run_dir, volume);
                Some(secrets::write_secret(&dir, KEYFILE, &k).map_err(|source| {
                    DriverError::SecretFile {
                        volume: volume.into(),
                        path: dir.join(KEYFILE),
                        source,
                    }
                })?)
            }
            None => None,
        };
        let mode = if opts.read_only {
            MapMode::ReadOnly
        } else {
            let holders = Self::holders(host, volume, t, keyfile.as_deref())?;
            if !holders.is_empty() {
                let holders: Vec<String> = holders.iter().map(ToString::to_string).collect();
                return Err(RbdError::InUse {
                    volume: volume.into(),
                    image: t.spec(),
                    holders: holders.join("; "),
                }
                .into());
            }
            if Self::has_exclusive_lock(host, volume, t, keyfile.as_deref())? {
                MapMode::Exclusive
            } else {
                MapMode::ReadWrite
            }
        };
        // Claimed before the map: a crash right after it still leaves the mapping known as
        // ours, so reconstruction's detach unmaps it.
        rbdbus::claim(run_dir, volume, &t.spec()).map_err(claim_err)?;
        let map = map_cmd(t, keyfile.as_deref(), mode);
        let out = host
            .runner
            .run_ok(&map)
            .map_err(|source| DriverError::Command {
                volume: volume.into(),
                source,
            })?;
        pause_point("rbd:mapped");
        // Trust sysfs, not the printed path: it is what detach will look at.
        let Some(m) = Self::head_mappings(host, volume, t)?.into_iter().next() else {
            return Err(RbdError::NoDevice {
                volume: volume.into(),
                image: t.spec(),
                detail: format!(
                    "no mapping of it under {} (rbd printed {:?})",
                    host.paths.sys.join("bus/rbd/devices").display(),
                    out.stdout_text().trim()
                ),
            }
            .into());
        };
        let device = m.device(&host.paths.dev);
        if !Self::wait_for_device(&device) {
            return Err(RbdError::NoDevice {
                volume: volume.into(),
                image: t.spec(),
                detail: format!("{} did not appear within {DEVICE_WAIT:?}", device.display()),
            }
            .into());
        }
        tracing::info!(volume, driver = NAME, device = %device.display(), op = "attach", read_only = opts.read_only, "mapped");
        Ok(Attached {
            device: Some(device),
            state: mapped(&m),
        })
    }

    /// Needs only pool, namespace and image of the record (to find the mappings in sysfs):
    /// `rbd unmap` takes the device alone, so nothing recorded reaches argv.
    fn detach(&self, host: &Host, rec: &Recorded<'_>) -> Result<(), DriverError> {
        let volume = rec.key;
        let run_dir = host.paths.run_dir.as_path();
        if let Some(VolumeState::Rbd(t)) = rec.state {
            let mappings = Self::head_mappings(host, volume, t)?;
            if rbdbus::is_claimed(run_dir, volume) {
                for m in mappings {
                    let device = m.device(&host.paths.dev);
                    host.runner.run_ok(&unmap_cmd(&device)).map_err(|source| {
                        DriverError::Command {
                            volume: volume.into(),
                            source,
                        }
                    })?;
                    tracing::info!(volume, driver = NAME, device = %device.display(), op = "detach", "unmapped");
                }
                rbdbus::release(run_dir, volume).map_err(|source| {
                    DriverError::from(RbdError::Claim {
                        volume: volume.into(),
                        path: rbdbus::claim_path(run_dir, volume),
                        source,
                    })
                })?;
            } else {
                for m in mappings {
                    tracing::warn!(volume, driver = NAME, device = %m.device(&host.paths.dev).display(), op = "detach", "mapping not made by moor; left alone");
                }
            }
        }
        let dir = secrets::secret_dir(run_dir, volume);
        secrets::remove_secrets(&dir).map_err(|source| DriverError::SecretFile {
            volume: volume.into(),
            path: dir,
            source,
        })
    }

    /// krbd hears of an `rbd resize` through its header watch, a moment later; `refresh`
    /// reads the header now.
    fn refresh_capacity(&self, host: &Host, name: &str) -> Result<(), CapacityError> {
        let Some(id) = name.strip_prefix("rbd") else {
            return Ok(());
        };
        let attr = host.paths.sys.join(format!("bus/rbd/devices/{id}/refresh"));
        crate::host::scsi::write_attr(&attr, "1").map_err(|source| CapacityError::Io {
            what: "refresh",
            path: attr.clone(),
            source,
        })
    }
}

/// sysfs spells the kernel client `client4181`; Ceph's tools and messages `client.4181`.
fn client_name(sysfs_id: &str) -> String {
    match sysfs_id.strip_prefix("client") {
        Some(n) if !n.starts_with('.') => format!("client.{n}"),
        _ => sysfs_id.to_owned(),
    }
}

#[cfg(test)]
mod tests;
