//! Command line: `moor daemon | flex | status | forget | gc | demo | local | version`, and argv[0]
//! dispatch for kubelet's FlexVolume layout (`<plugin-dir>/moor~<driver>/<driver>` → `moor
//! flex`), with the FlexVolume entry (its panic hook: one JSON line whatever happens). The
//! longer commands live beside it — [`status`] (the table), [`demo`] — and import nothing
//! from here: the arrows point from the dispatch to them.

pub mod bundle;
pub mod completions;
pub mod config_check;
pub mod demo;
pub mod doctor;
pub mod gc;
pub mod local;
pub mod status;

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};

use status::Output;

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
    /// Orphaned pod volumes: list them (a dry run), or clean the named pods' (`--pod <uid>`).
    #[command(long_about = gc::LONG_ABOUT)]
    Gc(gc::GcArgs),
    /// Run the main job on a built-in default: a daemon on a loop-backed disk, driven as
    /// kubelet drives it (root).
    Demo,
    /// Local persistent volumes: `moor local discover | wipe <entry> | sync`.
    Local(local::LocalArgs),
    /// Install the FlexVolume front end into kubelet's plugin dir, atomically (the
    /// DaemonSet's init container runs this; kubelet execs the drivers on the host).
    InstallFlexvolume {
        /// kubelet's `--volume-plugin-dir`.
        #[arg(
            long,
            default_value = "/usr/libexec/kubernetes/kubelet-plugins/volume/exec"
        )]
        plugin_dir: PathBuf,
        /// The binary to install [default: this one].
        #[arg(long)]
        binary: Option<PathBuf>,
    },
    /// Check this node's prerequisites for the drivers it is configured for: one row per
    /// check with a fix hint; exit status 1 when a checked driver cannot work.
    Doctor(doctor::DoctorArgs),
    /// Config file tools: `moor config check FILE`.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Write a support bundle (.tar.gz, mode 0600): version, config, status, doctor, journal
    /// records, mountinfo, daemon log lines, metrics — secrets removed.
    Bundle(bundle::BundleArgs),
    /// Print a shell completion script: `moor completions bash > /etc/bash_completion.d/moor`.
    Completions {
        /// The shell.
        shell: completions::Shell,
    },
    /// Print the version.
    Version,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Parse and resolve a config as the daemon would, print `ok` and the effective
    /// settings, or the error naming the key (exit 1). Creates and starts nothing.
    Check {
        /// The config file.
        file: PathBuf,
    },
}

/// The flags every command that reads the node's config shares (the daemon, `moor local`).
#[derive(Debug, clap::Args)]
pub(crate) struct NodeArgs {
    /// Config file [default: /etc/moor/config.yaml, if present].
    #[arg(long, env = "MOOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// kubelet's root directory [default: /var/lib/kubelet].
    #[arg(long, env = "MOOR_KUBELET_DIR")]
    pub kubelet_dir: Option<PathBuf>,
    /// Durable state directory (the journal, wipe records) [default: /var/lib/moor].
    #[arg(long, env = "MOOR_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct DaemonArgs {
    #[command(flatten)]
    node: NodeArgs,
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
            config: self.node.config,
            file: FileConfig {
                kubelet_dir: self.node.kubelet_dir,
                state_dir: self.node.state_dir,
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
                host_mount_namespace: None,
                csi: None,
                kubernetes: None,
                heal: None,
                gc: None,
            },
        }
    }
}

/// The driver name when this binary was executed through a FlexVolume symlink: the file
/// name is a moor driver, or its directory is `moor~<file name>`. Any bytes are accepted
/// (kubelet's plugin directory need not be UTF-8); only the two last components are read.
pub fn flex_driver_from_argv0(argv0: &OsStr) -> Option<String> {
    let p = Path::new(argv0);
    let name = p.file_name()?.to_str()?;
    let dir_matches = p
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|d| d.to_str())
        .is_some_and(|d| d.strip_prefix("moor~") == Some(name));
    (dir_matches || flexvolume::DRIVERS.contains(&name)).then(|| name.to_owned())
}

/// The FlexVolume reply for `argv` when it is a FlexVolume call (through a driver symlink,
/// or `moor flex [--driver D] …`), None otherwise. `discover` finds the daemon from the
/// driver's directory; it is asked only when a call is forwarded.
pub fn flex_reply(
    argv: &[OsString],
    discover: &dyn Fn(Option<&Path>) -> client::Discovery,
) -> Option<Reply> {
    let argv0 = argv.first()?;
    if let Some(driver) = flex_driver_from_argv0(argv0) {
        let dir = Path::new(argv0)
            .parent()
            .filter(|d| !d.as_os_str().is_empty());
        return Some(flexvolume::frontend::run_with(
            Some(&driver),
            &argv[1..],
            &|| discover(dir),
        ));
    }
    // `moor flex …` skips clap, so a bad argv still gets a JSON answer and never a usage text.
    if argv.get(1).map(OsString::as_os_str) != Some(OsStr::new("flex")) {
        return None;
    }
    let mut rest = &argv[2..];
    let mut driver = None;
    if let [flag, d, tail @ ..] = rest
        && flag == "--driver"
    {
        let Some(d) = d.to_str() else {
            return Some(Reply::failure(format!(
                "usage: --driver {} is not UTF-8",
                d.to_string_lossy()
            )));
        };
        driver = Some(d.to_owned());
        rest = tail;
    }
    Some(flexvolume::frontend::run_with(
        driver.as_deref(),
        rest,
        &|| discover(None),
    ))
}

/// True when `argv` is a FlexVolume call (see [`flex_reply`]).
fn is_flex(argv: &[OsString]) -> bool {
    argv.first()
        .and_then(|a| flex_driver_from_argv0(a))
        .is_some()
        || argv.get(1).map(OsString::as_os_str) == Some(OsStr::new("flex"))
}

/// Installs the front end's panic hook: one JSON line on stdout, nothing on stderr, exit 1.
/// Writing goes straight to descriptor 1, so a panic inside a write to stdout, a closed
/// stdout or a broken pipe cannot cause a second panic.
pub fn install_flex_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let where_ = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let reply = Reply::failure(format!("internal: moor front end panicked{where_}"));
        let mut line = reply.to_json().into_bytes();
        line.push(b'\n');
        let _ = crate::host::stdio::write_stdout(&line);
        std::process::exit(1);
    }));
}

/// Runs a FlexVolume call: the panic hook first, then one JSON line; returns kubelet's exit
/// code.
pub fn flex_main(argv: &[OsString]) -> i32 {
    install_flex_panic_hook();
    crate::host::stdio::reserve_std_fds();
    crate::testhook::frontend_panic_point();
    let reply = flex_reply(argv, &|dir| {
        client::discover(Path::new(crate::config::DEFAULT_CONFIG), dir)
    })
    .unwrap_or_else(|| Reply::failure("usage: moor flex [--driver D] <op> [args…]"));
    let mut line = reply.to_json().into_bytes();
    line.push(b'\n');
    let _ = crate::host::stdio::write_stdout(&line);
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
    /// `moor status`.
    #[error(transparent)]
    Status(#[from] status::StatusError),
    /// Demo.
    #[error(transparent)]
    Demo(#[from] demo::DemoError),
    /// `moor local …`.
    #[error(transparent)]
    Local(#[from] local::LocalCliError),
    /// `moor gc`.
    #[error(transparent)]
    Gc(#[from] gc::GcError),
    /// `moor install-flexvolume`.
    #[error(transparent)]
    Install(#[from] flexvolume::install::InstallError),
    /// `moor doctor`.
    #[error(transparent)]
    Doctor(#[from] doctor::DoctorError),
    /// `moor bundle`.
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// Runs the CLI on `argv` (as the OS gave it); returns the process exit code.
pub fn run(argv: Vec<OsString>) -> Result<i32, CliError> {
    if is_flex(&argv) {
        return Ok(flex_main(&argv));
    }
    let cli = Cli::parse_from(argv);
    match cli.command {
        Command::Daemon(args) => {
            let cfg = Config::load(&args.overrides())?;
            crate::telemetry::init(cfg.log_format.as_deref());
            crate::daemon::run(cfg)?;
            Ok(0)
        }
        // Unreachable in practice (`moor flex` is dispatched before clap), kept for `--help`.
        Command::Flex { .. } => Ok(flex_main(&std::env::args_os().collect::<Vec<_>>())),
        Command::Status { output } => Ok(status::run(output)?),
        Command::Forget { key } => forget(&key),
        Command::Gc(args) => Ok(gc::run(args)?),
        Command::Demo => Ok(demo::run()?),
        Command::Local(args) => Ok(local::run(args)?),
        Command::InstallFlexvolume { plugin_dir, binary } => {
            let binary = match binary {
                Some(b) => b,
                None => std::env::current_exe()
                    .map_err(|e| CliError::Other(format!("cannot find this binary: {e}")))?,
            };
            let done = flexvolume::install::install(&plugin_dir, &binary, flexvolume::DRIVERS)?;
            println!(
                "installed {} and {} drivers in {}",
                done.binary.display(),
                done.drivers.len(),
                plugin_dir.display()
            );
            Ok(0)
        }
        Command::Doctor(args) => Ok(doctor::run(args)?),
        Command::Bundle(args) => Ok(bundle::run(args)?),
        Command::Config(ConfigCommand::Check { file }) => Ok(config_check::run(&file)?),
        Command::Completions { shell } => {
            print!("{}", completions::script(shell));
            Ok(0)
        }
        Command::Version => {
            println!("{}", version_line());
            Ok(0)
        }
    }
}

/// `moor version`: the version, and [`crate::testhook::FEATURE_TAG`] in a build with test
/// hooks (the test harness refuses to rely on pause points a binary does not have).
fn version_line() -> String {
    let v = env!("CARGO_PKG_VERSION");
    if crate::testhook::COMPILED_IN {
        format!("moor {v} ({})", crate::testhook::FEATURE_TAG)
    } else {
        format!("moor {v}")
    }
}

fn forget(key: &str) -> Result<i32, CliError> {
    let req = Request::Forget { key: key.into() };
    match client::call(
        &client::socket_path(Path::new(crate::config::DEFAULT_CONFIG)),
        &req,
        Duration::from_secs(30),
    )? {
        Response::Done => {
            println!("forgot volume {key}");
            Ok(0)
        }
        Response::Failed(f) => Err(CliError::Other(f.to_string())),
        other => Err(CliError::Other(format!(
            "unexpected answer from the daemon: {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_names_select_flex_mode() {
        assert_eq!(
            flex_driver_from_argv0(OsStr::new(
                "/usr/libexec/kubernetes/kubelet-plugins/volume/exec/moor~local/local"
            ))
            .as_deref(),
            Some("local")
        );
        assert_eq!(
            flex_driver_from_argv0(OsStr::new("local")).as_deref(),
            Some("local")
        );
        assert_eq!(
            flex_driver_from_argv0(OsStr::new("/usr/local/bin/moor")),
            None
        );
        assert_eq!(
            flex_driver_from_argv0(OsStr::new("target/debug/moor")),
            None
        );
    }

    #[test]
    fn a_non_utf8_argv0_still_dispatches_to_the_front_end() {
        use std::os::unix::ffi::OsStringExt;
        let argv0 = OsString::from_vec(b"/opt/pl\xffugins/moor~local/local".to_vec());
        assert_eq!(flex_driver_from_argv0(&argv0).as_deref(), Some("local"));
        let seen = std::cell::RefCell::new(None);
        let discover = |d: Option<&Path>| {
            *seen.borrow_mut() = d.map(Path::to_path_buf);
            client::Discovery {
                socket: "/nonexistent/moor-test.sock".into(),
                socket_from: "test".into(),
                node_name: Some("n".into()),
                notes: vec![],
            }
        };
        let argv = vec![
            argv0,
            "unmount".into(),
            "/var/lib/kubelet/pods/u/volumes/moor~local/v".into(),
        ];
        let r = flex_reply(&argv, &discover).unwrap();
        assert!(r.message.unwrap().starts_with("daemon_unreachable:"));
        // The driver's own directory is where its frontend.yaml is looked for.
        assert_eq!(
            seen.borrow()
                .as_deref()
                .map(|p| p.as_os_str().as_encoded_bytes().to_vec()),
            Some(b"/opt/pl\xffugins/moor~local".to_vec())
        );
        let r = flex_reply(
            &[
                "moor".into(),
                "flex".into(),
                "--driver".into(),
                OsString::from_vec(b"lo\xffcal".to_vec()),
                "init".into(),
            ],
            &discover,
        )
        .unwrap();
        assert!(r.message.unwrap().contains("--driver"));
        assert!(flex_reply(&["moor".into(), "status".into()], &discover).is_none());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]
        /// The whole entry (argv[0] dispatch included) answers any bytes with one JSON line,
        /// without a daemon.
        #[test]
        fn any_argv_bytes_get_one_json_line(
            dir in proptest::collection::vec(proptest::num::u8::ANY, 0..12),
            name in proptest::sample::select(vec!["local", "nfs", "moor"]),
            flex in proptest::bool::ANY,
            rest in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..24), 0..5),
        ) {
            use std::os::unix::ffi::OsStringExt;
            let mut argv0 = b"/plugins/".to_vec();
            argv0.extend(dir.into_iter().filter(|b| *b != b'/' && *b != 0));
            argv0.extend(format!("/moor~{name}/{name}").into_bytes());
            let mut argv = vec![OsString::from_vec(argv0)];
            if flex {
                argv.push("flex".into());
            }
            argv.extend(rest.into_iter().map(OsString::from_vec));
            let discover = |_: Option<&Path>| client::Discovery {
                socket: "/nonexistent/moor-test.sock".into(),
                socket_from: "test".into(),
                node_name: Some("n".into()),
                notes: vec![],
            };
            let Some(reply) = flex_reply(&argv, &discover) else {
                // Neither a driver symlink nor `moor flex`: clap's business.
                proptest::prop_assert!(name == "moor" && !flex);
                return Ok(());
            };
            let line = reply.to_json();
            proptest::prop_assert!(!line.contains('\n'));
            let back: Reply = serde_json::from_str(&line).unwrap();
            proptest::prop_assert_eq!(back, reply);
        }
    }
}
