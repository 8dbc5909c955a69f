//! Command line: `moor daemon | flex | status | demo | version`, and argv[0] dispatch for
//! kubelet's FlexVolume layout (`<plugin-dir>/moor~<driver>/<driver>` → `moor flex`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::api::{Request, Response, client};
use crate::config::{Config, FileConfig, Overrides};
use crate::flexvolume::{self, Reply};

/// moor: node-local storage agent for Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "moor", version, about, long_about = None, args_override_self = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node daemon (root).
    Daemon(DaemonArgs),
    /// The FlexVolume front end: `moor flex <op> [args…]` as kubelet calls a driver.
    Flex {
        /// Driver (default: taken from the pod volume directory).
        #[arg(long)]
        driver: Option<String>,
        /// Operation and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Show the volumes the daemon manages.
    Status {
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Forget an idle volume: moor stops remembering the filesystem it saw on it, so a disk
    /// wiped on purpose may be formatted again. Refused while the volume is in use.
    Forget {
        /// The volume key, as `moor status` shows it.
        key: String,
    },
    /// Run the main job on a built-in default: a daemon on a loop-backed disk, driven as
    /// kubelet drives it (root).
    Demo,
    /// Local persistent volumes: `moor local discover | wipe <entry> | sync`.
    Local(crate::local::cli::LocalArgs),
    /// Print the version.
    Version,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, clap::Args)]
struct DaemonArgs {
    /// Config file [default: /etc/moor/config.yaml, if present].
    #[arg(long, env = "MOOR_CONFIG")]
    config: Option<PathBuf>,
    /// kubelet's root directory [default: /var/lib/kubelet].
    #[arg(long, env = "MOOR_KUBELET_DIR")]
    kubelet_dir: Option<PathBuf>,
    /// Durable state directory [default: /var/lib/moor].
    #[arg(long, env = "MOOR_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Runtime state directory, on tmpfs [default: /run/moor].
    #[arg(long, env = "MOOR_RUN_DIR")]
    run_dir: Option<PathBuf>,
    /// Unix socket [default: /run/moor/moor.sock].
    #[arg(long, env = "MOOR_SOCKET")]
    socket: Option<PathBuf>,
    /// /metrics listen address, or `off` [default: 127.0.0.1:9477].
    #[arg(long, env = "MOOR_METRICS_ADDR")]
    metrics_addr: Option<String>,
    /// This node's name [default: the hostname].
    #[arg(long, env = "MOOR_NODE_NAME")]
    node_name: Option<String>,
    /// Deadline of one volume operation in seconds [default: 300].
    #[arg(long, env = "MOOR_OPERATION_TIMEOUT_SECONDS")]
    operation_timeout_seconds: Option<u64>,
    /// Deadline of one filesystem mount in seconds [default: 120].
    #[arg(long, env = "MOOR_MOUNT_TIMEOUT_SECONDS")]
    mount_timeout_seconds: Option<u64>,
    /// Reconciler period in seconds [default: 30].
    #[arg(long, env = "MOOR_RECONCILE_INTERVAL_SECONDS")]
    reconcile_interval_seconds: Option<u64>,
    /// Log format: text or json [default: text on a TTY, json otherwise].
    #[arg(long, env = "MOOR_LOG_FORMAT")]
    log_format: Option<String>,
    /// kubelet's pod log directory, the source of pods' namespaces [default: /var/log/pods].
    #[arg(long, env = "MOOR_POD_LOG_DIR")]
    pod_log_dir: Option<PathBuf>,
}

impl DaemonArgs {
    fn overrides(self) -> Overrides {
        Overrides {
            config: self.config,
            file: FileConfig {
                kubelet_dir: self.kubelet_dir,
                state_dir: self.state_dir,
                run_dir: self.run_dir,
                socket: self.socket,
                metrics_addr: self.metrics_addr,
                node_name: self.node_name,
                operation_timeout_seconds: self.operation_timeout_seconds,
                mount_timeout_seconds: self.mount_timeout_seconds,
                reconcile_interval_seconds: self.reconcile_interval_seconds,
                log_format: self.log_format,
                local: None,
                pod_log_dir: self.pod_log_dir,
            },
        }
    }
}

/// The driver name when this binary was executed through a FlexVolume symlink: the file
/// name is a moor driver, or its directory is `moor~<file name>`.
pub fn flex_driver_from_argv0(argv0: &str) -> Option<String> {
    let p = Path::new(argv0);
    let name = p.file_name()?.to_str()?;
    let dir_matches = p
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|d| d.to_str())
        .is_some_and(|d| d.strip_prefix("moor~") == Some(name));
    (dir_matches || flexvolume::DRIVERS.contains(&name)).then(|| name.to_owned())
}

/// Prints the one JSON line and returns kubelet's exit code. Installs a panic hook first,
/// so even a bug answers with a JSON object and not a backtrace on stderr.
pub fn flex_main(driver: Option<&str>, args: &[String]) -> i32 {
    std::panic::set_hook(Box::new(|info| {
        let where_ = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let reply = Reply::failure(format!("internal: moor front end panicked{where_}"));
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", reply.to_json());
        let _ = out.flush();
        std::process::exit(1);
    }));
    let reply = flexvolume::frontend::run(driver, args);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", reply.to_json());
    let _ = out.flush();
    reply.exit_code()
}

/// A CLI failure (the daemon subcommands report through tracing instead).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Daemon start-up.
    #[error(transparent)]
    Daemon(#[from] crate::daemon::DaemonError),
    /// Client.
    #[error(transparent)]
    Client(#[from] client::ClientError),
    /// Demo.
    #[error(transparent)]
    Demo(#[from] crate::demo::DemoError),
    /// `moor local …`.
    #[error(transparent)]
    Local(#[from] crate::local::cli::LocalCliError),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// Runs the CLI; returns the process exit code.
pub fn run() -> Result<i32, CliError> {
    let argv: Vec<String> = std::env::args().collect();
    if let Some(driver) = argv.first().and_then(|a| flex_driver_from_argv0(a)) {
        return Ok(flex_main(Some(&driver), &argv[1..]));
    }
    // `moor flex …` skips clap, so a bad argv still gets a JSON answer and never a usage text.
    if argv.get(1).map(String::as_str) == Some("flex") {
        let mut rest = &argv[2..];
        let mut driver = None;
        if let [flag, d, tail @ ..] = rest
            && flag == "--driver"
        {
            driver = Some(d.clone());
            rest = tail;
        }
        return Ok(flex_main(driver.as_deref(), rest));
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Daemon(args) => {
            let cfg = Config::load(&args.overrides())?;
            crate::telemetry::init(cfg.log_format.as_deref());
            crate::daemon::run(cfg)?;
            Ok(0)
        }
        Command::Flex { driver, args } => Ok(flex_main(driver.as_deref(), &args)),
        Command::Status { output } => status(output),
        Command::Forget { key } => forget(&key),
        Command::Demo => Ok(crate::demo::run()?),
        Command::Local(args) => Ok(crate::local::cli::run(args)?),
        Command::Version => {
            println!("moor {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
    }
}

fn forget(key: &str) -> Result<i32, CliError> {
    let req = Request::Forget { key: key.into() };
    match client::call(&client::socket_path(), &req, Duration::from_secs(30))? {
        Response::Flex { reply } if reply.status == flexvolume::Status::Success => {
            println!("forgot volume {key}");
            Ok(0)
        }
        Response::Flex { reply } => Err(CliError::Other(reply.message.unwrap_or_default())),
        other => Err(CliError::Other(format!(
            "unexpected answer from the daemon: {other:?}"
        ))),
    }
}

fn status(output: Output) -> Result<i32, CliError> {
    let resp = client::call(
        &client::socket_path(),
        &Request::Status,
        Duration::from_secs(10),
    )?;
    let Response::Status { node, volumes } = resp else {
        return Err(CliError::Other(format!(
            "unexpected answer from the daemon: {resp:?}"
        )));
    };
    match output {
        Output::Json => {
            let v = serde_json::json!({ "node": node, "volumes": volumes });
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Output::Table => print!("{}", status_table(&node, &volumes)),
    }
    Ok(0)
}

/// Renders the volume table.
pub fn status_table(node: &str, volumes: &[crate::api::VolumeStatus]) -> String {
    let mut rows = vec![[
        "DRIVER".to_owned(),
        "VOLUME".to_owned(),
        "STATE".to_owned(),
        "DEVICE".to_owned(),
        "FS".to_owned(),
        "PODS".to_owned(),
    ]];
    for v in volumes {
        let pods = if v.pods.is_empty() {
            "-".to_owned()
        } else {
            v.pods
                .iter()
                .map(|p| {
                    format!(
                        "{}({})",
                        short_uid(&p.pod_uid),
                        if p.read_only { "ro" } else { "rw" }
                    )
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        rows.push([
            v.driver.clone(),
            v.key.clone(),
            v.state.clone(),
            v.device.clone().unwrap_or_else(|| v.source.clone()),
            v.fs_type.clone().unwrap_or_else(|| "-".into()),
            pods,
        ]);
    }
    let mut widths = [0usize; 6];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = format!("node {node}: {} volume(s)\n", volumes.len());
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn short_uid(uid: &str) -> &str {
    uid.get(..8).unwrap_or(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_names_select_flex_mode() {
        assert_eq!(
            flex_driver_from_argv0(
                "/usr/libexec/kubernetes/kubelet-plugins/volume/exec/moor~local/local"
            )
            .as_deref(),
            Some("local")
        );
        assert_eq!(flex_driver_from_argv0("local").as_deref(), Some("local"));
        assert_eq!(flex_driver_from_argv0("/usr/local/bin/moor"), None);
        assert_eq!(flex_driver_from_argv0("target/debug/moor"), None);
    }
}
