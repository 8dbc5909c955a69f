//! The typed volume each driver derives from the options once, and which the journal keeps
//! in the stage record ([`VolumeState`], a serde enum tagged by driver): what attach needs, and
//! what detach needs after a restart, including what attach learnt (a WWID, an rbd device id).
//! Pure data: each driver's module parses options into its type and acts on it.
//!
//! Invariants: nothing here holds a secret (only where a credential comes from); every value
//! in a state a driver built went through its kind's validator in `volume()`; a record of an
//! earlier moor (its non-secret options as a string map) converts with [`VolumeState::from_legacy`]
//! into the same typed value, or fails naming the option, so an upgrade detaches what it
//! attached.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::options::OptionsError;
use super::validate;

/// Where a stage mount comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StageSource {
    /// A directory bind-mounted as the stage.
    Directory {
        /// The directory.
        path: PathBuf,
    },
    /// A block device with a filesystem.
    Block {
        /// The device path.
        device: PathBuf,
    },
    /// A block device that the driver's attach makes appear (iSCSI, RBD, FC). `None` until
    /// attach has returned it: a crash before that leaves only the options to detach with.
    Attached {
        /// The device attach returned.
        device: Option<PathBuf>,
    },
    /// A network or FUSE filesystem mounted by its mount helper (NFS, GlusterFS, CephFS).
    Remote(RemoteMount),
}

impl StageSource {
    /// The block device to format and mount, when the source is one.
    pub fn block_device(&self) -> Option<&PathBuf> {
        match self {
            StageSource::Block { device } => Some(device),
            StageSource::Attached { device } => device.as_ref(),
            _ => None,
        }
    }
}

/// How to mount a network filesystem: `mount -t <fs_type> -o <options> <source> <stage>`.
/// Never holds a secret: credentials reach the helper through files named in `options`
/// (`secretfile=`, `ceph.keyring=`), which live in a 0700 directory until unstage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteMount {
    /// Filesystem type for `mount -t` (`nfs`, `nfs4`, `glusterfs`, `ceph`, `fuse.ceph`).
    pub fs_type: String,
    /// What to mount (`server:/path`, `host:/volume`, `mon1,mon2:/path`, `none`).
    pub source: String,
    /// `-o` items, in order.
    pub options: Vec<String>,
    /// The helper leaves a FUSE daemon behind: it runs in its own systemd scope, with no
    /// inherited stdio, and a hung connection is aborted through fusectl.
    pub fuse: bool,
    /// A log the client writes; its tail goes into a failure message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_file: Option<PathBuf>,
    /// The server(s) to name in messages.
    pub server: String,
}

/// The typed volume of one driver, as the stage record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "driver", rename_all = "snake_case")]
pub enum VolumeState {
    /// `moor~local`.
    Local(LocalSource),
    /// `moor~iscsi`.
    Iscsi(IscsiTarget),
    /// `moor~rbd`.
    Rbd(RbdImage),
    /// `moor~fc`.
    Fc(FcLun),
    /// `moor~nfs`.
    Nfs(NfsExport),
    /// `moor~glusterfs`.
    Glusterfs(GlusterVolume),
    /// `moor~cephfs`.
    Cephfs(CephFsShare),
}

/// A local directory or disk, by the `path` the user named it with (the stage holds the
/// object it resolved to; the key derives from that object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalSource {
    /// The text of option `path`.
    pub path: String,
    /// The stage's mount options (a bind takes only the per-mount flags).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mount_options: Vec<String>,
}

/// An iSCSI portal, `host:port`; the host as iscsiadm and sysfs print it (no brackets).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Portal {
    /// Address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Portal {
    /// The default iSCSI port.
    pub const DEFAULT_PORT: u16 = 3260;

    /// Parses `10.0.0.1`, `10.0.0.1:3260`, `[fd00::1]:3260` for option `key` through the
    /// shared `host[:port]` validator (an IPv6 address must be bracketed).
    pub fn from_option(key: &str, s: &str) -> Result<Portal, OptionsError> {
        let hp = validate::host_port(key, s)?;
        Ok(Portal {
            host: hp.host.to_string(),
            port: hp.port_or(Self::DEFAULT_PORT),
        })
    }

    /// [`Portal::from_option`] without the message.
    pub fn parse(s: &str) -> Option<Portal> {
        Self::from_option("portal", s).ok()
    }

    /// `-p` argument form (`10.0.0.1:3260`, `[fd00::1]:3260`).
    pub fn arg(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for Portal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.arg())
    }
}

/// An iSCSI LUN and how to log in to its target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IscsiTarget {
    /// Every portal, `targetPortal` first, no duplicates.
    pub portals: Vec<Portal>,
    /// Target name (IQN, EUI or NAA).
    pub iqn: String,
    /// LUN.
    pub lun: u64,
    /// open-iscsi iface.
    pub iface: String,
    /// The initiator name the login uses instead of the node's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiator_name: Option<String>,
    /// CHAP at discovery (the secrets come with the request, never from here).
    #[serde(default)]
    pub chap_discovery: bool,
    /// CHAP at login.
    #[serde(default)]
    pub chap_session: bool,
    /// The stage's mount options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mount_options: Vec<String>,
    /// Learnt at attach: the WWID every path reported, so detach deletes only its disks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wwid: Option<String>,
}

/// A Ceph RBD image and who moor is to the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RbdImage {
    /// Monitors, normalised (`host[:port]`), in the user's order.
    pub monitors: Vec<String>,
    /// Pool.
    pub pool: String,
    /// RADOS namespace inside the pool; empty for the pool's default namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Image.
    pub image: String,
    /// cephx user, without `client.`.
    pub user: String,
    /// A keyring already on the node (else the key comes in the request's secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyring: Option<String>,
    /// The stage's mount options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mount_options: Vec<String>,
    /// Learnt at attach: the kernel's id of the mapping (`/dev/rbd<id>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rbd_id: Option<u32>,
}

/// How a Fibre Channel LUN is named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FcName {
    /// Target port WWNs (16 lowercase hex digits) and a LUN.
    Wwn {
        /// WWNs.
        wwns: Vec<String>,
        /// LUN.
        lun: u64,
    },
    /// Device WWIDs.
    Wwids(Vec<String>),
}

/// A Fibre Channel LUN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FcLun {
    /// Its name.
    pub name: FcName,
    /// The stage's mount options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mount_options: Vec<String>,
    /// Learnt at attach: the WWID every path reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wwid: Option<String>,
}

/// An NFS export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NfsExport {
    /// Server, canonical (an IPv6 address without brackets).
    pub server: String,
    /// Absolute export path.
    pub path: String,
    /// mount.nfs options, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mount_options: Vec<String>,
}

/// A GlusterFS volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlusterVolume {
    /// Servers, in the user's order: the first is mounted from, the others are backups.
    pub endpoints: Vec<String>,
    /// The volume name, optionally `volume/subdir` (no leading `/`).
    pub volume: String,
    /// The user's mount.glusterfs options, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mount_options: Vec<String>,
}

/// Which CephFS client mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CephClient {
    /// The kernel client (`mount -t ceph`).
    Kernel,
    /// ceph-fuse (`mount -t fuse.ceph`).
    Fuse,
}

/// Where a CephFS cephx key comes from (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CephCredential {
    /// A file on the node the user named (`secretFile`): a bare key.
    File(PathBuf),
    /// The request's secret `key`: moor writes it into the volume's private directory.
    Secret,
}

/// A CephFS path and how to mount it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CephFsShare {
    /// Monitor addresses, in the user's order.
    pub monitors: Vec<String>,
    /// Path inside the filesystem.
    pub path: String,
    /// cephx user without `client.`.
    pub user: String,
    /// Which client.
    pub client: CephClient,
    /// The filesystem's name when the cluster has more than one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_name: Option<String>,
    /// Where the key comes from.
    pub credential: CephCredential,
    /// The user's `mountOptions`, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mount_options: Vec<String>,
}

impl VolumeState {
    /// The text a local source was named by (its `path`), for telling a renamed disk.
    pub fn named_path(&self) -> Option<&str> {
        match self {
            VolumeState::Local(l) => Some(&l.path),
            _ => None,
        }
    }

    /// The typed volume of a record an earlier moor (up to ef677bd) wrote for `driver`: its
    /// non-secret options as strings, every one moor wrote from a value its driver had
    /// validated. Numbers and addresses are parsed here; a value that is not one fails
    /// naming its option. The values themselves are checked again by the driver that acts
    /// on them (its record check), exactly as for a typed record.
    pub fn from_legacy(
        driver: &str,
        m: &BTreeMap<String, String>,
    ) -> Result<VolumeState, OptionsError> {
        let get = |k: &str| m.get(k).map(String::as_str).filter(|v| !v.is_empty());
        let need = |k: &'static str| {
            get(k).ok_or(OptionsError::Missing {
                key: k,
                driver: driver.into(),
            })
        };
        let words = |k: &str| -> Vec<String> {
            get(k)
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|w| !w.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let number = |k: &'static str, v: &str| {
            v.parse::<u64>().map_err(|_| OptionsError::Invalid {
                key: k.into(),
                value: validate::shown(v),
                expected: "expected a number (as moor recorded it)",
            })
        };
        let mount_options = words("mountOptions");
        Ok(match driver {
            "local" => VolumeState::Local(LocalSource {
                path: need("path")?.to_owned(),
                mount_options,
            }),
            "iscsi" => {
                let mut portals = vec![Portal::from_option("targetPortal", need("targetPortal")?)?];
                for p in words("portals") {
                    let p = Portal::from_option("portals", &p)?;
                    if !portals.contains(&p) {
                        portals.push(p);
                    }
                }
                VolumeState::Iscsi(IscsiTarget {
                    portals,
                    iqn: need("iqn")?.to_owned(),
                    lun: get("lun").map_or(Ok(0), |l| number("lun", l))?,
                    iface: get("iscsiInterface").unwrap_or("default").to_owned(),
                    initiator_name: None,
                    chap_discovery: false,
                    chap_session: false,
                    mount_options,
                    wwid: get("wwid").map(str::to_owned),
                })
            }
            "rbd" => VolumeState::Rbd(RbdImage {
                monitors: {
                    need("monitors")?;
                    words("monitors")
                },
                pool: need("pool")?.to_owned(),
                namespace: get("radosNamespace").unwrap_or_default().to_owned(),
                image: need("image")?.to_owned(),
                user: get("user").unwrap_or("admin").to_owned(),
                keyring: get("keyring").map(str::to_owned),
                mount_options,
                rbd_id: match get("rbd_id") {
                    Some(id) => Some(u32::try_from(number("rbd_id", id)?).map_err(|_| {
                        OptionsError::Invalid {
                            key: "rbd_id".into(),
                            value: validate::shown(id),
                            expected: "expected an rbd device id",
                        }
                    })?),
                    None => None,
                },
            }),
            "fc" => VolumeState::Fc(FcLun {
                name: match (get("targetWWNs"), get("wwids")) {
                    (Some(_), _) => FcName::Wwn {
                        wwns: words("targetWWNs"),
                        lun: number("lun", need("lun")?)?,
                    },
                    (None, Some(_)) => FcName::Wwids(words("wwids")),
                    (None, None) => {
                        return Err(OptionsError::Missing {
                            key: "targetWWNs",
                            driver: driver.into(),
                        });
                    }
                },
                mount_options,
                wwid: get("wwid").map(str::to_owned),
            }),
            "nfs" => VolumeState::Nfs(NfsExport {
                server: need("server")?.to_owned(),
                path: need("path")?.to_owned(),
                mount_options,
            }),
            "glusterfs" => VolumeState::Glusterfs(GlusterVolume {
                endpoints: words("endpoints"),
                volume: need("path")?.to_owned(),
                mount_options,
            }),
            "cephfs" => VolumeState::Cephfs(CephFsShare {
                monitors: words("monitors"),
                path: get("path").unwrap_or("/").to_owned(),
                user: get("user").unwrap_or("admin").to_owned(),
                client: match get("mounter") {
                    Some("fuse") => CephClient::Fuse,
                    _ => CephClient::Kernel,
                },
                fs_name: get("fsName").map(str::to_owned),
                credential: match get("secretFile") {
                    Some(f) => CephCredential::File(f.into()),
                    None => CephCredential::Secret,
                },
                mount_options,
            }),
            other => {
                return Err(OptionsError::Invalid {
                    key: "driver".into(),
                    value: validate::shown(other),
                    expected: "expected a driver moor ships",
                });
            }
        })
    }
}
