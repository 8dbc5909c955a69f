//! `moor bundle [-o FILE]`: one `.tar.gz` an operator attaches to a bug report — the
//! version, the config, `moor status -o json`, `moor doctor -o json`, the journal records,
//! the mountinfo lines of kubelet's and moor's dirs, the daemon's recent log lines and
//! `/metrics`, with a README saying what each file is. Whatever cannot be collected is a
//! line in `errors.txt`; the bundle is made all the same.
//!
//! Invariants: every byte that goes into the archive passes through [`redact`] first (moor
//! keeps secrets out of its log, journal and status already; this is the second wall), the
//! credential files under `<run_dir>/secrets` are never read, links are never followed, and
//! the archive is created mode 0600.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use regex::{Captures, Regex};

use crate::api::{Request, Response, client};
use crate::config::Config;

/// `moor bundle`'s flags.
#[derive(Debug, clap::Args)]
pub struct BundleArgs {
    /// The archive to write [default: ./moor-bundle-<node>-<unix time>.tar.gz].
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// Config file [default: /etc/moor/config.yaml, if present].
    #[arg(long, env = "MOOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// kubelet's `--volume-plugin-dir` (for the doctor's checks).
    #[arg(long, default_value = super::doctor::DEFAULT_PLUGIN_DIR)]
    pub plugin_dir: PathBuf,
    /// How many of the daemon's newest log lines.
    #[arg(long, default_value_t = crate::telemetry::RING_LINES)]
    pub log_lines: usize,
}

/// `moor bundle` could not write its archive (a part that cannot be collected is no error:
/// it is a line in `errors.txt`).
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The config cannot be used.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Writing the archive failed.
    #[error("bundle {path}: {what}")]
    Write {
        /// The archive.
        path: PathBuf,
        /// What was being written.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl BundleError {
    /// Stable label.
    pub fn reason(&self) -> &'static str {
        match self {
            BundleError::Config(_) => "config_invalid",
            BundleError::Write { .. } => "bundle_write_failed",
        }
    }
}

/// Names whose values are secrets wherever they appear: Kubernetes' secret keys, CHAP,
/// passwords, tokens, cephx keys.
pub fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    let last = n.rsplit(['/', '.']).next().unwrap_or(&n);
    n.starts_with("kubernetes.io/secret")
        || [
            "secret",
            "password",
            "passwd",
            "token",
            "credential",
            "chap",
            "auth",
        ]
        .iter()
        .any(|w| n.contains(w))
        || matches!(last, "key" | "username" | "username_in" | "keyring-data")
}

static OPTION: LazyLock<Result<Regex, regex::Error>> =
    LazyLock::new(|| Regex::new(r#"([A-Za-z0-9_./-]+)=([^,\s"'&;\\]+)"#));
static JSON_PAIR: LazyLock<Result<Regex, regex::Error>> =
    LazyLock::new(|| Regex::new(r#""((?:[^"\\]|\\.)+)"(\s*:\s*)"((?:[^"\\]|\\.)*)""#));
static YAML_PAIR: LazyLock<Result<Regex, regex::Error>> =
    LazyLock::new(|| Regex::new(r#"(?m)^(\s*-?\s*)([A-Za-z0-9_./-]+)(:[ \t]+)([^\s#][^\n]*)$"#));
// A cephx key: 16 key bytes and a 12-byte header, base64 (`AQ…==`, 40 characters).
static CEPHX: LazyLock<Result<Regex, regex::Error>> =
    LazyLock::new(|| Regex::new(r"AQ[A-Za-z0-9+/]{36}=="));

/// What stands where a secret was.
pub const REDACTED: &str = "<redacted>";

/// `text` with every secret-looking value replaced: `name=value` options (mount options,
/// iscsiadm settings), `"name": "value"` JSON pairs and `name: value` YAML lines whose name
/// [`is_secret_name`] (except JSON/YAML `key`, moor's volume key), and anything shaped like a
/// cephx key.
pub fn redact(text: &str) -> String {
    let mut s = text.to_owned();
    if let Ok(re) = &*JSON_PAIR {
        s = re
            .replace_all(&s, |c: &Captures| {
                if is_secret_name(&c[1]) && &c[1] != "key" {
                    format!("\"{}\"{}\"{REDACTED}\"", &c[1], &c[2])
                } else {
                    c[0].to_owned()
                }
            })
            .into_owned();
    }
    if let Ok(re) = &*YAML_PAIR {
        s = re
            .replace_all(&s, |c: &Captures| {
                if is_secret_name(&c[2]) && &c[2] != "key" {
                    format!("{}{}{}{REDACTED}", &c[1], &c[2], &c[3])
                } else {
                    c[0].to_owned()
                }
            })
            .into_owned();
    }
    if let Ok(re) = &*OPTION {
        s = re
            .replace_all(&s, |c: &Captures| {
                if is_secret_name(&c[1]) {
                    format!("{}={REDACTED}", &c[1])
                } else {
                    c[0].to_owned()
                }
            })
            .into_owned();
    }
    if let Ok(re) = &*CEPHX {
        s = re.replace_all(&s, REDACTED).into_owned();
    }
    s
}

/// The archive's files, in order, and what went wrong collecting them.
#[derive(Debug, Default)]
pub struct Contents {
    /// (name inside the bundle, bytes, already redacted).
    pub files: Vec<(String, Vec<u8>)>,
    /// One line per part that could not be collected.
    pub errors: Vec<String>,
}

impl Contents {
    fn add(&mut self, name: impl Into<String>, text: &str) {
        self.files.push((name.into(), redact(text).into_bytes()));
    }
    fn fail(&mut self, part: &str, e: impl std::fmt::Display) {
        self.errors.push(format!("{part}: {e}"));
    }
}

/// What each file is.
pub const README: &str = "moor support bundle
===================
version.txt    moor's version, the kernel release, the node, when the bundle was made
config.yaml    the config file as written, then the effective settings (as comments)
status.json    `moor status -o json`: the daemon's volumes, set-aside records, notices
doctor.json    `moor doctor -o json` for the drivers configured on this node
journal/       moor's records: stage/ (<state-dir>/stage), publish/ (<run-dir>/publish),
               and the other record directories of the state dir (wipe journal)
mountinfo.txt  the lines of /proc/self/mountinfo under the kubelet dir and moor's dirs
daemon.log     the daemon's newest log lines (JSON), from its in-memory ring
metrics.txt    GET /metrics from the configured metrics address
errors.txt     each part that could not be collected, and why
Never in it: credential files (<run-dir>/secrets is never read), secret values (every file
passes a redactor: secret/password/token/CHAP/key options and fields, cephx keys).
";

/// A file's text, at most `max` bytes, only when it is a regular file (a link is refused).
fn read_bounded(p: &Path, max: u64) -> std::io::Result<String> {
    let meta = std::fs::symlink_metadata(p)?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut buf = Vec::new();
    std::fs::File::open(p)?.take(max).read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn journal(c: &mut Contents, cfg: &Config) {
    let secrets = cfg.run_dir.join("secrets");
    let mut dirs: Vec<(String, PathBuf)> = vec![("publish".into(), cfg.run_dir.join("publish"))];
    match std::fs::read_dir(&cfg.state_dir) {
        Ok(rd) => {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push((e.file_name().to_string_lossy().into_owned(), e.path()));
                }
            }
        }
        Err(e) => c.fail(&format!("journal {}", cfg.state_dir.display()), e),
    }
    for (name, dir) in dirs {
        if dir.starts_with(&secrets) {
            continue;
        }
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<_> = rd.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let f = e.file_name().to_string_lossy().into_owned();
            if !(f.ends_with(".json") || f.ends_with(".corrupt")) {
                continue;
            }
            match read_bounded(&e.path(), 1 << 20) {
                Ok(t) => c.add(format!("journal/{name}/{f}"), &t),
                Err(err) => c.fail(&format!("journal {}", e.path().display()), err),
            }
        }
    }
}

/// The mountinfo lines whose mount point is under one of `roots`, secret options redacted.
pub fn mountinfo_lines(text: &str, roots: &[&Path]) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let Ok(m) = crate::host::mountinfo::parse_line(line) else {
            continue;
        };
        if roots.iter().any(|r| m.mount_point.starts_with(r)) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn metrics(addr: std::net::SocketAddr) -> Result<String, String> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("{addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut buf = Vec::new();
    s.take(16 << 20)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{addr}: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!(
            "{addr}: {}",
            head.lines().next().unwrap_or("no answer")
        ));
    }
    Ok(body.to_owned())
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Gathers every part (each failure becomes an `errors.txt` line).
pub fn collect(
    cfg: &Config,
    config_path: Option<&Path>,
    plugin_dir: &Path,
    log_lines: usize,
) -> Contents {
    let mut c = Contents::default();
    c.files
        .push(("README.txt".into(), README.as_bytes().to_vec()));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    c.add(
        "version.txt",
        &format!(
            "{}\nkernel {}\nnode {}\ncollected at {now} (unix seconds)\n",
            super::version_line(),
            kernel_release(),
            cfg.node_name
        ),
    );
    let raw = match config_path.map(|p| (p, std::fs::read_to_string(p))) {
        Some((p, Ok(t))) => format!("# {}\n{t}", p.display()),
        Some((p, Err(e))) => {
            c.fail(&format!("config {}", p.display()), e);
            String::new()
        }
        None => format!("# no file at {}: defaults\n", crate::config::DEFAULT_CONFIG),
    };
    let effective: String = super::config_check::summary(cfg)
        .lines()
        .map(|l| format!("#   {l}\n"))
        .collect();
    c.add(
        "config.yaml",
        &format!("{raw}\n# effective settings:\n{effective}"),
    );

    match client::call(&cfg.socket, &Request::Status, Duration::from_secs(10)) {
        Ok(resp) => match super::status::json(&resp) {
            Some(v) => c.add(
                "status.json",
                &serde_json::to_string_pretty(&v).unwrap_or_default(),
            ),
            None => c.fail("status.json", format!("unexpected answer {resp:?}")),
        },
        Err(e) => c.fail("status.json", crate::error::Chain(&e)),
    }

    let drivers = super::doctor::configured_drivers(cfg, plugin_dir, &[]);
    let inputs = super::doctor::system_inputs(cfg.clone(), plugin_dir.to_owned(), &drivers);
    let rows = super::doctor::check(&inputs, &drivers);
    c.add("doctor.json", &super::doctor::json(&drivers, &rows));

    journal(&mut c, cfg);

    match read_bounded(Path::new("/proc/self/mountinfo"), 64 << 20) {
        Ok(t) => {
            let roots = [
                cfg.kubelet_dir.as_path(),
                cfg.state_dir.as_path(),
                cfg.run_dir.as_path(),
            ];
            c.add("mountinfo.txt", &mountinfo_lines(&t, &roots));
        }
        Err(e) => c.fail("mountinfo.txt", e),
    }

    match client::call(
        &cfg.socket,
        &Request::Logs { lines: log_lines },
        Duration::from_secs(10),
    ) {
        Ok(Response::Logs { lines }) => {
            let mut t = lines.join("\n");
            t.push('\n');
            c.add("daemon.log", &t);
        }
        Ok(other) => c.fail("daemon.log", format!("unexpected answer {other:?}")),
        Err(e) => c.fail("daemon.log", crate::error::Chain(&e)),
    }

    match cfg.metrics_addr {
        Some(a) => match metrics(a) {
            Ok(t) => c.add("metrics.txt", &t),
            Err(e) => c.fail("metrics.txt", e),
        },
        None => c.fail("metrics.txt", "metrics-addr is off"),
    }
    c
}

/// Writes `c` as `<prefix>/<file>` entries of a gzip'd tar at `path`, mode 0600.
pub fn write(path: &Path, prefix: &str, c: &Contents) -> Result<(), BundleError> {
    let err = |what: &str| {
        let path = path.to_owned();
        let what = what.to_owned();
        move |source| BundleError::Write { path, what, source }
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err("create"))?;
    // An existing file keeps its mode through open(2): make it 0600 whatever it was.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(err("chmod 0600"))?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let errors = if c.errors.is_empty() {
        "none\n".to_owned()
    } else {
        c.errors
            .iter()
            .map(|e| format!("{}\n", redact(e)))
            .collect()
    };
    let all = c
        .files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .chain(std::iter::once(("errors.txt", errors.as_bytes())));
    for (name, bytes) in all {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o600);
        h.set_mtime(now);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, format!("{prefix}/{name}"), bytes)
            .map_err(err(name))?;
    }
    let gz = tar.into_inner().map_err(err("tar"))?;
    let file = gz.finish().map_err(err("gzip"))?;
    file.sync_all().map_err(err("fsync"))?;
    Ok(())
}

/// `moor bundle`: collects, writes, prints the archive's path and any collection errors.
pub fn run(args: BundleArgs) -> Result<i32, BundleError> {
    let cfg = super::doctor::load_config(args.config.clone())?;
    let config_path = args.config.clone().or_else(|| {
        let d = PathBuf::from(crate::config::DEFAULT_CONFIG);
        d.exists().then_some(d)
    });
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let prefix = format!("moor-bundle-{}-{now}", cfg.node_name);
    let path = args
        .output
        .unwrap_or_else(|| PathBuf::from(format!("{prefix}.tar.gz")));
    let c = collect(
        &cfg,
        config_path.as_deref(),
        &args.plugin_dir,
        args.log_lines,
    );
    write(&path, &prefix, &c)?;
    println!("wrote {} ({} files)", path.display(), c.files.len() + 1);
    for e in &c.errors {
        println!("  not collected: {}", redact(e));
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_in_options_json_yaml_and_cephx_shape() {
        let key = "AQBzcm9vdGtleWZvcnRlc3RpbmcxMjM0NTY3OA==";
        let t = format!(
            "rw,relatime,name=admin,secret={key},password=hunter2,acl\n\
             {{\"kubernetes.io/secret/node.session.auth.password\": \"s3cr3t\", \"key\": \"iscsi-10.0.0.1\", \"node.session.auth.username\":\"chapuser\"}}\n\
             token: abc.def\n  password: pw1\nkey: vol\nkubelet-dir: /var/lib/kubelet\n\
             iscsiadm -o update -n node.session.auth.password_in -v x node.session.auth.password_in=pw2\n\
             the key {key} was used\n"
        );
        let r = redact(&t);
        for s in [
            key, "hunter2", "s3cr3t", "chapuser", "abc.def", "pw1", "pw2",
        ] {
            assert!(!r.contains(s), "{s} left in:\n{r}");
        }
        for kept in [
            "name=admin",
            "\"key\": \"iscsi-10.0.0.1\"",
            "key: vol",
            "kubelet-dir: /var/lib/kubelet",
            "acl",
        ] {
            assert!(r.contains(kept), "{kept} lost:\n{r}");
        }
    }

    #[test]
    fn mountinfo_keeps_lines_under_the_roots_only() {
        let t = "22 1 0:21 / / rw - ext4 /dev/vda1 rw\n\
                 40 22 0:50 / /var/lib/kubelet/pods/u/volumes/moor~cephfs/v rw - ceph 10.0.0.1:/ rw,name=admin,secret=AQBzcm9vdGtleWZvcnRlc3RpbmcxMjM0NTY3OA==\n";
        let out = redact(&mountinfo_lines(t, &[Path::new("/var/lib/kubelet")]));
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(
            out.contains("secret=<redacted>") && out.contains("moor~cephfs"),
            "{out}"
        );
    }

    #[test]
    fn the_archive_is_0600_and_holds_every_file_and_the_errors() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("b.tar.gz");
        std::fs::write(&p, "old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut c = Contents::default();
        c.add("status.json", "{\"password\": \"pw\"}");
        c.fail("metrics.txt", "127.0.0.1:1: connection refused");
        write(&p, "moor-bundle-n-1", &c).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let mut a = tar::Archive::new(flate2::read::GzDecoder::new(
            std::fs::File::open(&p).unwrap(),
        ));
        let mut seen = std::collections::BTreeMap::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut s = String::new();
            e.read_to_string(&mut s).unwrap();
            seen.insert(name, s);
        }
        assert_eq!(
            seen["moor-bundle-n-1/status.json"],
            "{\"password\": \"<redacted>\"}"
        );
        assert!(
            seen["moor-bundle-n-1/errors.txt"]
                .contains("metrics.txt: 127.0.0.1:1: connection refused")
        );
    }
}
