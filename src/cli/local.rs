//! `moor local …`: the local-PV commands an operator runs on a node.
//!
//! `discover` prints this node's PVs as YAML (stdout: pipe it to `kubectl apply -f -`; what was
//! skipped and why goes to stderr); `wipe <entry>` cleans one entry after the never-wipe rules
//! agree; `sync` does one pass against the API server, as the daemon does periodically.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Subcommand, ValueEnum};

use crate::api::{Request, Response, VolumeStatus, client};
use crate::config::{Config, FileConfig, Overrides};
use crate::host::Host;

use crate::local::discover::{Scan, scan_class};
use crate::local::wipe::{self, WipeCtx};

/// `moor local`.
#[derive(Debug, clap::Args)]
pub struct LocalArgs {
    #[command(subcommand)]
    cmd: LocalCommand,
}

#[derive(Debug, Subcommand)]
enum LocalCommand {
    /// Print this node's local PersistentVolumes (one per discovery-directory entry) as YAML.
    Discover {
        #[command(flatten)]
        common: Common,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Yaml)]
        output: Format,
    },
    /// Wipe one entry of a discovery directory (refused while it is mounted or in use).
    Wipe {
        #[command(flatten)]
        common: Common,
        /// Refuse unless the entry still holds the disk with this stable id.
        #[arg(long)]
        expect_id: Option<String>,
        /// The entry, e.g. /mnt/disks/nvme/disk0.
        entry: PathBuf,
    },
    /// One pass against the API server: create new PVs, mark missing ones, recycle Released ones.
    Sync {
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Yaml,
    Json,
}

#[derive(Debug, clap::Args)]
struct Common {
    /// Config file [default: /etc/moor/config.yaml, if present].
    #[arg(long, env = "MOOR_CONFIG")]
    config: Option<PathBuf>,
    /// kubelet's root directory [default: /var/lib/kubelet].
    #[arg(long, env = "MOOR_KUBELET_DIR")]
    kubelet_dir: Option<PathBuf>,
    /// Durable state directory (wipe records) [default: /var/lib/moor].
    #[arg(long, env = "MOOR_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// The daemon's socket, asked which volumes are live [default: /run/moor/moor.sock].
    #[arg(long, env = "MOOR_SOCKET")]
    socket: Option<PathBuf>,
    /// This node's name [default: the hostname].
    #[arg(long, env = "MOOR_NODE_NAME")]
    node_name: Option<String>,
}

impl Common {
    fn load(self) -> Result<Config, LocalCliError> {
        let cfg = Config::load(&Overrides {
            config: self.config,
            file: FileConfig {
                kubelet_dir: self.kubelet_dir,
                state_dir: self.state_dir,
                socket: self.socket,
                node_name: self.node_name,
                metrics_addr: Some("off".into()),
                ..FileConfig::default()
            },
        })?;
        if cfg.local.classes.is_empty() {
            return Err(LocalCliError::NoClasses);
        }
        Ok(cfg)
    }
}

/// A `moor local` failure.
#[derive(Debug, thiserror::Error)]
pub enum LocalCliError {
    /// Configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// No classes configured.
    #[error("no local classes configured (config key local.classes)")]
    NoClasses,
    /// A wipe refused or failed.
    #[error("{reason}", reason = .source.reason())]
    Wipe {
        /// The wipe error.
        #[from]
        source: wipe::WipeError,
    },
    /// Output.
    #[error("{0}")]
    Output(String),
    /// The API server.
    #[error(transparent)]
    Kube(#[from] crate::local::kube::KubeError),
}

/// Scans every class; entries with an unfinished wipe are moved to `skipped`.
pub fn scan_all(cfg: &Config, host: &Host) -> Vec<Scan> {
    let src = crate::local::discover::id_sources(&cfg.local, host);
    let unfinished = wipe::unfinished_ids(&cfg.state_dir);
    cfg.local
        .classes
        .iter()
        .map(|c| {
            let mut s = scan_class(host, &src, c);
            let (held, ok): (Vec<_>, Vec<_>) = s.entries.into_iter().partition(|e| {
                unfinished.contains(&e.stable_id)
                    || wipe::held_by_unusable_record(&cfg.state_dir, &e.stable_id)
            });
            s.entries = ok;
            s.skipped
                .extend(held.into_iter().map(|e| crate::local::discover::Skipped {
                    path: e.path,
                    reason: format!(
                        "wipe of {} unfinished (see {}); not published until it completes",
                        e.stable_id,
                        wipe::wipe_dir(&cfg.state_dir).display()
                    ),
                }));
            s
        })
        .collect()
}

/// The daemon's live volumes: `Ok(None)` when no daemon listens, `Err` when one could not
/// answer (which the never-wipe rules take as "in use").
pub fn live_volumes(socket: &std::path::Path) -> Result<Option<Vec<VolumeStatus>>, String> {
    match client::call(socket, &Request::Status, Duration::from_secs(10)) {
        Ok(Response::Status { volumes, .. }) => Ok(Some(volumes)),
        Ok(other) => Err(format!("unexpected answer {other:?}")),
        Err(client::ClientError::Connect { source, .. })
            if matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(crate::error::Chain(&e).to_string()),
    }
}

/// After a wipe, moor must not remember a filesystem on the entry (the next claim would be
/// refused as `known_volume_blank` instead of formatted): through the daemon when it runs,
/// else in its journal directly.
fn forget_wiped(cfg: &Config, entry: &std::path::Path, daemon_up: bool) {
    let ids = crate::local::discover::IdSources {
        dev_dir: cfg.local.dev_dir.clone(),
        udev_dir: cfg.local.udev_dir.clone(),
        sys: "/sys".into(),
    };
    let mut keys = wipe::volume_keys_of(entry, &ids);
    // The daemon keyed the disk by the identity it saw; whatever this command's view of
    // udev, the daemon's record of the same device number is the one to forget.
    if daemon_up && let Ok(Some(volumes)) = live_volumes(&cfg.socket) {
        let dev_of = |p: &std::path::Path| {
            use std::os::unix::fs::{FileTypeExt, MetadataExt};
            std::fs::metadata(p)
                .ok()
                .filter(|m| m.file_type().is_block_device())
                .map(|m| m.rdev())
        };
        if let Some(dev) = dev_of(entry) {
            for v in volumes.iter().filter(|v| v.driver == "local") {
                if v.device
                    .as_deref()
                    .map(std::path::Path::new)
                    .and_then(dev_of)
                    == Some(dev)
                    && !keys.contains(&v.key)
                {
                    keys.push(v.key.clone());
                }
            }
        }
    }
    for key in keys {
        forget_key(cfg, &key, daemon_up);
    }
}

fn forget_key(cfg: &Config, key: &str, daemon_up: bool) {
    let key = key.to_owned();
    let result = if daemon_up {
        client::call(
            &cfg.socket,
            &Request::Forget { key: key.clone() },
            Duration::from_secs(30),
        )
        .map(drop)
        .map_err(|e| crate::error::Chain(&e).to_string())
    } else {
        crate::journal::Journal::open(&cfg.state_dir, &cfg.run_dir)
            .and_then(|j| j.remove_stage(&key))
            .map_err(|e| crate::error::Chain(&e).to_string())
    };
    if let Err(e) = result {
        eprintln!(
            "warning: moor still remembers a filesystem on {key}: {e} (run: moor forget {key})"
        );
    }
}

/// Runs `moor local …`.
pub fn run(args: LocalArgs) -> Result<i32, LocalCliError> {
    match args.cmd {
        LocalCommand::Discover { common, output } => {
            let cfg = common.load()?;
            let host = cfg.host();
            let scans = scan_all(&cfg, &host);
            let mut pvs = Vec::new();
            for (class, scan) in cfg.local.classes.iter().zip(&scans) {
                for s in &scan.skipped {
                    eprintln!(
                        "# skipped {} (class {}): {}",
                        s.path.display(),
                        class.name,
                        s.reason
                    );
                }
                for e in &scan.entries {
                    pvs.push(crate::local::pv::build(&cfg.node_name, class, e));
                }
            }
            let text = match output {
                Format::Yaml => crate::local::pv::to_yaml(&pvs).map_err(LocalCliError::Output)?,
                Format::Json => {
                    let list =
                        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": pvs});
                    serde_json::to_string_pretty(&list)
                        .map_err(|e| LocalCliError::Output(e.to_string()))?
                        + "\n"
                }
            };
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|e| LocalCliError::Output(e.to_string()))?;
            Ok(0)
        }
        LocalCommand::Wipe {
            common,
            expect_id,
            entry,
        } => {
            let cfg = common.load()?;
            let host = cfg.host();
            let ctx = WipeCtx {
                host: &host,
                cfg: &cfg.local,
                state_dir: &cfg.state_dir,
                live_volumes: live_volumes(&cfg.socket),
            };
            let daemon_up = matches!(ctx.live_volumes, Ok(Some(_)));
            let rec = wipe::wipe_entry(&ctx, &entry, expect_id.as_deref(), None)?;
            forget_wiped(&cfg, &rec.entry, daemon_up);
            // Nothing else waits for this record: no PV to delete from the command line.
            if let Err(e) = wipe::remove_record(&cfg.state_dir, &rec.stable_id) {
                eprintln!(
                    "warning: wipe record left in place: {}",
                    crate::error::Chain(&e)
                );
            }
            println!(
                "wiped {} ({}, {}){}",
                rec.entry.display(),
                rec.stable_id,
                rec.method,
                if rec.nested_mounts_left.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; mounts inside left untouched: {}",
                        rec.nested_mounts_left
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            );
            Ok(0)
        }
        LocalCommand::Sync { common } => {
            let cfg = common.load()?;
            let host = cfg.host();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| LocalCliError::Output(e.to_string()))?;
            let report = rt.block_on(async {
                let api = crate::local::kube::KubePvApi::from_env().await?;
                let live = live_volumes(&cfg.socket);
                let node = crate::local::kube::NodeSync {
                    node_name: &cfg.node_name,
                    local: &cfg.local,
                    state_dir: &cfg.state_dir,
                };
                crate::local::kube::sync_once(&api, &node, &host, live).await
            })?;
            println!("{report}");
            Ok(0)
        }
    }
}
