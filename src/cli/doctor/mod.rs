//! `moor doctor`: every host prerequisite a configured driver needs, one row per check
//! (`check`, the drivers it matters for, `status`, what was found, a fix hint), as a table or
//! JSON. The areas live beside this file: [`kernel`] (version, statx, modules, capability),
//! [`tools`] (the programs moor calls and their versions), [`services`] (iscsid, multipathd,
//! `multipath.conf`, the initiator name, systemd or the container mode), [`kubelet`] (mount
//! propagation, plugin dir and links, CSI sockets, the daemon socket) and [`api`]
//! (credentials and RBAC).
//!
//! Invariant: every host read goes through one [`Root`] (`/proc`, `/sys`, `/etc`, `/run`,
//! `/lib/modules`, the PATH), so the tests feed fixture trees; the doctor reads and asks, it
//! never creates, loads or starts anything. The exit status is non-zero exactly when a row
//! that a configured driver needs is `fail` (a `warn` never fails).

pub mod api;
pub mod kernel;
pub mod kubelet;
pub mod services;
pub mod tools;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::config::{Config, FileConfig, Overrides};
use crate::host::CommandRunner;

/// kubelet's default `--volume-plugin-dir`.
pub const DEFAULT_PLUGIN_DIR: &str = "/usr/libexec/kubernetes/kubelet-plugins/volume/exec";

/// `moor doctor`'s flags.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Which drivers are checked: the drivers whose FlexVolume links are installed \
in the plugin dir (<plugin-dir>/moor~<driver>/<driver>), plus csi.drivers when csi.enabled is \
true in the config; --driver replaces that choice. Exit status 1 when a check a checked driver \
needs fails (warn never fails), 0 otherwise."
)]
pub struct DoctorArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Config file [default: /etc/moor/config.yaml, if present].
    #[arg(long, env = "MOOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Check this driver (repeatable); replaces the drivers found installed.
    #[arg(long = "driver", value_parser = clap::builder::PossibleValuesParser::new(crate::flexvolume::DRIVERS))]
    pub drivers: Vec<String>,
    /// kubelet's `--volume-plugin-dir`.
    #[arg(long, default_value = DEFAULT_PLUGIN_DIR)]
    pub plugin_dir: PathBuf,
}

/// How `moor doctor` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The table.
    Table,
    /// JSON, for scripts and `moor bundle`.
    Json,
}

/// A row's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Found as needed.
    Ok,
    /// Works, but not as well as it should (never fails the run).
    Warn,
    /// A driver that needs this cannot work.
    Fail,
    /// Not checked, and why is said.
    Skip,
}

impl Status {
    /// The lowercase label.
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Skip => "skip",
        }
    }
}

/// One check's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    /// What was checked (`module iscsi_tcp`, `tool iscsiadm` …).
    pub check: String,
    /// The checked drivers it matters for (empty before [`scope`]: every driver).
    pub drivers: Vec<String>,
    /// The verdict.
    pub status: Status,
    /// What was found: versions, paths, values.
    pub detail: String,
    /// What to do when not ok: the package, the command, the config line.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub fix: String,
}

impl Row {
    /// A row for `drivers` (empty: every driver).
    pub fn new(check: impl Into<String>, drivers: &[&str], status: Status) -> Self {
        Row {
            check: check.into(),
            drivers: drivers.iter().map(|d| (*d).to_owned()).collect(),
            status,
            detail: String::new(),
            fix: String::new(),
        }
    }
    /// Sets what was found.
    pub fn detail(mut self, d: impl Into<String>) -> Self {
        self.detail = d.into();
        self
    }
    /// Sets the fix hint.
    pub fn fix(mut self, f: impl Into<String>) -> Self {
        self.fix = f.into();
        self
    }
}

/// Where the host is read from: the real machine, or a fixture tree in tests.
#[derive(Debug, Clone)]
pub struct Root {
    /// procfs.
    pub proc: PathBuf,
    /// sysfs.
    pub sys: PathBuf,
    /// `/etc`.
    pub etc: PathBuf,
    /// `/run`.
    pub run: PathBuf,
    /// `/lib/modules`.
    pub lib_modules: PathBuf,
    /// The directories tools are looked for in, in order.
    pub path: Vec<PathBuf>,
}

impl Root {
    /// This machine: `$PATH` plus the sbin directories a root shell has.
    pub fn system() -> Self {
        let mut path: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        for d in ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
            if !path.iter().any(|p| p == Path::new(d)) {
                path.push(d.into());
            }
        }
        Root {
            proc: "/proc".into(),
            sys: "/sys".into(),
            etc: "/etc".into(),
            run: "/run".into(),
            lib_modules: "/lib/modules".into(),
            path,
        }
    }

    /// A fixture tree: `<dir>/proc`, `sys`, `etc`, `run`, `lib/modules`, tools in `<dir>/bin`.
    pub fn under(dir: &Path) -> Self {
        Root {
            proc: dir.join("proc"),
            sys: dir.join("sys"),
            etc: dir.join("etc"),
            run: dir.join("run"),
            lib_modules: dir.join("lib/modules"),
            path: vec![dir.join("bin")],
        }
    }

    /// The first executable file named `tool` on the path.
    pub fn which(&self, tool: &str) -> Option<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        self.path.iter().map(|d| d.join(tool)).find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    }

    /// A file's text, `None` when it cannot be read.
    pub fn read(&self, path: &Path) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }
}

/// Asks the daemon behind a socket: a one-line summary, or why not.
pub type DaemonAsk = dyn Fn(&Path) -> Result<String, String>;

/// Everything the checks look at.
pub struct Inputs {
    /// The host.
    pub root: Root,
    /// The resolved config.
    pub cfg: Config,
    /// kubelet's FlexVolume plugin dir.
    pub plugin_dir: PathBuf,
    /// The running binary (what driver links should point at).
    pub exe: PathBuf,
    /// Runs `--version` and `systemctl is-active`.
    pub runner: Arc<dyn CommandRunner>,
    /// The kernel's answer to statx on `/`: `Ok` when it reports `STATX_ATTR_MOUNT_ROOT`.
    pub statx_mount_root: Result<(), String>,
    /// Asks the daemon behind a socket for its status: a one-line summary, or why not.
    pub daemon_status: Box<DaemonAsk>,
    /// The API server's answers (credentials and RBAC), already gathered.
    pub api: Vec<Row>,
}

/// The drivers the doctor checks: `--driver` when given, else the installed FlexVolume links
/// plus the served CSI drivers, in [`crate::flexvolume::DRIVERS`] order.
pub fn configured_drivers(cfg: &Config, plugin_dir: &Path, explicit: &[String]) -> Vec<String> {
    crate::flexvolume::DRIVERS
        .iter()
        .filter(|d| {
            if !explicit.is_empty() {
                return explicit.iter().any(|e| e == *d);
            }
            let link = plugin_dir.join(format!("moor~{d}")).join(d);
            std::fs::symlink_metadata(&link).is_ok()
                || (cfg.csi.enabled && cfg.csi.drivers.iter().any(|c| c == *d))
        })
        .map(|d| (*d).to_owned())
        .collect()
}

/// Runs every check for `drivers`; rows for drivers not checked are dropped, and each kept
/// row names only the checked drivers it matters for.
pub fn check(inputs: &Inputs, drivers: &[String]) -> Vec<Row> {
    let mut rows = Vec::new();
    if drivers.is_empty() {
        rows.push(
            Row::new("drivers", &[], Status::Warn)
                .detail(format!(
                    "no FlexVolume driver link in {} and no CSI driver served",
                    inputs.plugin_dir.display()
                ))
                .fix("moor install-flexvolume --plugin-dir <kubelet's --volume-plugin-dir>, or csi.enabled: true; or say --driver D"),
        );
    }
    rows.extend(kernel::check(inputs));
    rows.extend(tools::check(inputs));
    rows.extend(services::check(inputs));
    rows.extend(kubelet::check(inputs, drivers));
    rows.extend(inputs.api.iter().cloned());
    scope(rows, drivers)
}

/// Keeps the rows that matter for `drivers`, each naming only those drivers.
pub fn scope(rows: Vec<Row>, drivers: &[String]) -> Vec<Row> {
    rows.into_iter()
        .filter_map(|mut r| {
            if r.drivers.is_empty() {
                r.drivers = drivers.to_vec();
                return Some(r);
            }
            r.drivers.retain(|d| drivers.contains(d));
            (!r.drivers.is_empty()).then_some(r)
        })
        .collect()
}

/// 1 when a kept row fails, else 0.
pub fn exit_code(rows: &[Row]) -> i32 {
    i32::from(rows.iter().any(|r| r.status == Status::Fail))
}

/// The table an operator reads.
pub fn table(rows: &[Row]) -> String {
    let mut cells = vec![[
        "CHECK".to_owned(),
        "DRIVERS".to_owned(),
        "STATUS".to_owned(),
        "DETAIL".to_owned(),
        "FIX".to_owned(),
    ]];
    for r in rows {
        let drivers = if r.drivers.is_empty() {
            "-".to_owned()
        } else {
            r.drivers.join(",")
        };
        cells.push([
            r.check.clone(),
            drivers,
            r.status.label().to_owned(),
            r.detail.clone(),
            r.fix.clone(),
        ]);
    }
    let mut width = [0usize; 4];
    for c in &cells {
        for (w, cell) in width.iter_mut().zip(c.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for c in &cells {
        let mut line = String::new();
        for (i, cell) in c.iter().enumerate() {
            if i < 4 {
                line.push_str(&format!("{cell:<w$}  ", w = width[i]));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let count = |s: Status| rows.iter().filter(|r| r.status == s).count();
    out.push_str(&format!(
        "{} ok, {} warn, {} fail, {} skip\n",
        count(Status::Ok),
        count(Status::Warn),
        count(Status::Fail),
        count(Status::Skip)
    ));
    out
}

/// JSON: `{"drivers": [...], "checks": [rows]}`.
pub fn json(drivers: &[String], rows: &[Row]) -> String {
    serde_json::to_string_pretty(&serde_json::json!({ "drivers": drivers, "checks": rows }))
        .unwrap_or_default()
}

/// `moor doctor` could not run its checks at all.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    /// The config cannot be used.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

impl DoctorError {
    /// Stable label.
    pub fn reason(&self) -> &'static str {
        match self {
            DoctorError::Config(_) => "config_invalid",
        }
    }
}

/// The inputs of this machine for `cfg`.
pub fn system_inputs(cfg: Config, plugin_dir: PathBuf, drivers: &[String]) -> Inputs {
    let api = api::check(&cfg, drivers);
    Inputs {
        root: Root::system(),
        cfg,
        plugin_dir,
        exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("moor")),
        runner: Arc::new(crate::host::SystemRunner),
        statx_mount_root: crate::host::mounts::statx_mount(Path::new("/"))
            .map(|_| ())
            .map_err(|e| e.to_string()),
        daemon_status: Box::new(daemon_status),
        api,
    }
}

/// Asks the daemon behind `socket` for `Status`: its node and how many volumes.
pub fn daemon_status(socket: &Path) -> Result<String, String> {
    use crate::api::{Request, Response, client};
    match client::call(socket, &Request::Status, Duration::from_secs(5)) {
        Ok(Response::Status { node, volumes, .. }) => {
            Ok(format!("node {node}, {} volume(s)", volumes.len()))
        }
        Ok(other) => Err(format!("unexpected answer: {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Loads the config as the daemon does.
pub fn load_config(path: Option<PathBuf>) -> Result<Config, crate::config::ConfigError> {
    Config::load(&Overrides {
        config: path,
        file: FileConfig::default(),
    })
}

/// `moor doctor`: prints the rows, returns the exit status.
pub fn run(args: DoctorArgs) -> Result<i32, DoctorError> {
    let cfg = load_config(args.config)?;
    let drivers = configured_drivers(&cfg, &args.plugin_dir, &args.drivers);
    let inputs = system_inputs(cfg, args.plugin_dir, &drivers);
    let rows = check(&inputs, &drivers);
    match args.output {
        Format::Table => print!("{}", table(&rows)),
        Format::Json => println!("{}", json(&drivers, &rows)),
    }
    Ok(exit_code(&rows))
}

/// What the tests of each area share: a fixture tree and inputs over it.
#[cfg(test)]
pub(crate) mod fixture {
    use super::*;

    /// A fixture tree with a config whose dirs point into it.
    pub struct Fx {
        pub dir: tempfile::TempDir,
        pub inputs: Inputs,
    }

    impl Fx {
        pub fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            for sub in [
                "proc/self",
                "proc/1",
                "sys/module",
                "etc",
                "run",
                "lib/modules",
                "bin",
                "kubelet",
                "plugins",
            ] {
                std::fs::create_dir_all(d.join(sub)).unwrap();
            }
            let file: FileConfig = serde_saphyr::from_str(&format!(
                "node-name: n\nkubelet-dir: {k}\nstate-dir: {d}/state\nrun-dir: {d}/run/moor\nsocket: {d}/run/moor/moor.sock\n",
                k = d.join("kubelet").display(),
                d = d.display()
            ))
            .unwrap();
            let cfg = Config::resolve(&file, &FileConfig::default()).unwrap();
            let inputs = Inputs {
                root: Root::under(d),
                cfg,
                plugin_dir: d.join("plugins"),
                exe: d.join("bin/moor-self"),
                runner: Arc::new(crate::host::SystemRunner),
                statx_mount_root: Ok(()),
                daemon_status: Box::new(|_| Err("not asked".into())),
                api: Vec::new(),
            };
            Fx { dir, inputs }
        }

        pub fn path(&self, rel: &str) -> PathBuf {
            self.dir.path().join(rel)
        }

        /// Writes a file under the tree (parents made).
        pub fn write(&self, rel: &str, text: &str) {
            let p = self.path(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }

        /// An executable script `bin/<name>` printing `out` (to stderr when `stderr`).
        pub fn tool(&self, name: &str, out: &str, stderr: bool) {
            use std::os::unix::fs::PermissionsExt;
            let redirect = if stderr { " >&2" } else { "" };
            self.write(
                &format!("bin/{name}"),
                &format!("#!/bin/sh\necho '{out}'{redirect}\n"),
            );
            std::fs::set_permissions(
                self.path(&format!("bin/{name}")),
                std::fs::Permissions::from_mode(0o755),
            )
            .unwrap();
        }

        pub fn row<'a>(rows: &'a [Row], check: &str) -> &'a Row {
            rows.iter()
                .find(|r| r.check == check)
                .unwrap_or_else(|| panic!("no row {check} in {rows:#?}"))
        }
    }

    pub fn drivers(d: &[&str]) -> Vec<String> {
        d.iter().map(|s| (*s).to_owned()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::*;
    use super::*;

    #[test]
    fn rows_are_scoped_to_the_checked_drivers_and_only_a_fail_fails() {
        let rows = vec![
            Row::new("module rbd", &["rbd"], Status::Fail),
            Row::new("tool blkid", &["local", "iscsi"], Status::Ok),
            Row::new("kernel", &[], Status::Warn),
        ];
        let kept = scope(rows.clone(), &drivers(&["local"]));
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].drivers, ["local"]);
        assert_eq!(kept[1].drivers, ["local"]);
        assert_eq!(exit_code(&kept), 0, "a warn never fails");
        let kept = scope(rows, &drivers(&["rbd", "local"]));
        assert_eq!(exit_code(&kept), 1);
        let t = table(&kept);
        assert!(t.starts_with("CHECK"), "{t}");
        assert!(t.contains("module rbd") && t.contains("fail"), "{t}");
        assert!(t.ends_with("1 ok, 1 warn, 1 fail, 0 skip\n"), "{t}");
        let j: serde_json::Value = serde_json::from_str(&json(&drivers(&["rbd"]), &kept)).unwrap();
        assert_eq!(j["checks"][0]["status"], "fail");
    }

    #[test]
    fn the_default_drivers_are_the_installed_links_plus_the_served_csi_drivers() {
        let fx = Fx::new();
        let plugins = fx.path("plugins");
        std::fs::create_dir_all(plugins.join("moor~nfs")).unwrap();
        std::os::unix::fs::symlink("../.moor/moor", plugins.join("moor~nfs/nfs")).unwrap();
        let mut cfg = fx.inputs.cfg.clone();
        assert_eq!(configured_drivers(&cfg, &plugins, &[]), ["nfs"]);
        cfg.csi.enabled = true;
        cfg.csi.drivers = drivers(&["rbd"]);
        assert_eq!(configured_drivers(&cfg, &plugins, &[]), ["rbd", "nfs"]);
        assert_eq!(
            configured_drivers(&cfg, &plugins, &drivers(&["iscsi"])),
            ["iscsi"]
        );
        let rows = check(&fx.inputs, &[]);
        let r = Fx::row(&rows, "drivers");
        assert_eq!(r.status, Status::Warn);
        assert!(r.fix.contains("install-flexvolume"), "{r:?}");
    }
}
