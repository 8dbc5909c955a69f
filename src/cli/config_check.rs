//! `moor config check FILE`: the file parsed and resolved exactly as the daemon resolves it
//! ([`Config::load`]), then `ok` and the effective settings, or the error naming the key.
//! Invariant: it creates nothing and starts nothing — no directory, socket, lock or process;
//! resolving a config only reads.

use std::path::Path;

use crate::config::{Config, ConfigError, FileConfig, Overrides};

/// Resolves `file` as the daemon would.
pub fn resolve(file: &Path) -> Result<Config, ConfigError> {
    Config::load(&Overrides {
        config: Some(file.to_owned()),
        file: FileConfig::default(),
    })
}

/// The effective settings, one `key: value` a line.
pub fn summary(c: &Config) -> String {
    let secs = |d: std::time::Duration| format!("{}s", d.as_secs());
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(", ")
        }
    };
    let mut lines = vec![
        format!("node-name: {}", c.node_name),
        format!("kubelet-dir: {}", c.kubelet_dir.display()),
        format!("state-dir: {}", c.state_dir.display()),
        format!("run-dir: {}", c.run_dir.display()),
        format!("socket: {}", c.socket.display()),
        format!(
            "metrics-addr: {}",
            c.metrics_addr
                .map_or_else(|| "off".to_owned(), |a| a.to_string())
        ),
        format!(
            "timeouts: operation {}, mount {}, reconcile every {}",
            secs(c.operation_timeout),
            secs(c.mount_timeout),
            secs(c.reconcile_interval)
        ),
        format!(
            "log-format: {}",
            c.log_format
                .as_deref()
                .unwrap_or("text on a TTY, json otherwise")
        ),
        format!(
            "host-mount-namespace: {}",
            c.host_mount_namespace.as_ref().map_or_else(
                || "none (moor runs on the host)".to_owned(),
                |p| p.display().to_string()
            )
        ),
        format!(
            "csi: {}",
            if c.csi.enabled {
                format!(
                    "on, drivers {}, registration {}",
                    list(&c.csi.drivers),
                    if c.csi.register { "on" } else { "off" }
                )
            } else {
                "off".to_owned()
            }
        ),
        format!("local: {} class(es)", c.local.classes.len()),
        format!(
            "kubernetes: {}, events {}{}",
            if c.kubernetes.enabled { "auto" } else { "off" },
            if c.kubernetes.events { "on" } else { "off" },
            c.kubernetes
                .kubeconfig
                .as_ref()
                .map(|p| format!(", kubeconfig {}", p.display()))
                .unwrap_or_default()
        ),
        format!(
            "heal: evict-pods {}, after {}",
            list(&c.heal.evict_pods),
            secs(c.heal.evict_after)
        ),
        format!(
            "gc: orphans {}, grace {}",
            if c.gc.orphans { "on" } else { "off" },
            secs(c.gc.grace)
        ),
    ];
    lines.push(String::new());
    lines.join("\n")
}

/// `moor config check FILE`: prints `ok: FILE` and the summary; a bad file is the error.
pub fn run(file: &Path) -> Result<i32, ConfigError> {
    let c = resolve(file)?;
    print!("ok: {}\n{}", file.display(), summary(&c));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(rel: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
    }

    /// The config.yaml inside every ConfigMap of the manifests (`config.yaml: |` blocks).
    fn configmap_configs(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut lines = text.lines().peekable();
        while let Some(l) = lines.next() {
            let t = l.trim_start();
            if t.starts_with("config.yaml: |") {
                let indent = l.len() - t.len();
                let mut body = String::new();
                while let Some(n) = lines.peek() {
                    let ni = n.len() - n.trim_start().len();
                    if !n.trim().is_empty() && ni <= indent {
                        break;
                    }
                    body.push_str(n.get(indent + 2..).unwrap_or(""));
                    body.push('\n');
                    lines.next();
                }
                out.push(body);
            }
        }
        out
    }

    fn yaml_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                yaml_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                out.push(p);
            }
        }
    }

    #[test]
    fn every_shipped_config_passes() {
        let t = tempfile::tempdir().unwrap();
        let example = repo("packaging/examples/config.yaml");
        let c = resolve(&example).unwrap_or_else(|e| panic!("{}: {e}", example.display()));
        assert!(summary(&c).contains("kubelet-dir: "));
        let mut files = Vec::new();
        yaml_files(&repo("packaging/kubernetes"), &mut files);
        let mut found = 0;
        for f in files {
            for (i, body) in configmap_configs(&std::fs::read_to_string(&f).unwrap())
                .into_iter()
                .enumerate()
            {
                let p = t.path().join(format!("cm-{found}-{i}.yaml"));
                std::fs::write(&p, &body).unwrap();
                resolve(&p)
                    .unwrap_or_else(|e| panic!("{} ConfigMap {i}: {e}\n{body}", f.display()));
                found += 1;
            }
        }
        assert!(
            found >= 1,
            "no ConfigMap config.yaml found under packaging/kubernetes"
        );
    }

    #[test]
    fn bad_configs_fail_naming_the_key_and_nothing_is_created() {
        let t = tempfile::tempdir().unwrap();
        let state = t.path().join("state");
        let run = t.path().join("run");
        let good = t.path().join("good.yaml");
        std::fs::write(
            &good,
            format!(
                "node-name: n1\nstate-dir: {}\nrun-dir: {}\nsocket: {}/moor.sock\ncsi:\n  enabled: true\n  drivers: [nfs]\n",
                state.display(),
                run.display(),
                run.display()
            ),
        )
        .unwrap();
        let c = resolve(&good).unwrap();
        let s = summary(&c);
        assert!(
            s.contains("node-name: n1") && s.contains("csi: on, drivers nfs"),
            "{s}"
        );
        assert!(
            !state.exists() && !run.exists(),
            "config check created a directory"
        );
        for (yaml, key) in [
            ("kubelet-dirr: /k\n", "kubelet-dirr"),
            ("metrics-addr: nowhere\n", "metrics-addr"),
            ("gc:\n  grace-seconds: 2\n", "gc.grace-seconds"),
            ("csi:\n  drivers: [ceph]\n", "csi.drivers"),
            ("state-dir: relative/dir\n", "state-dir"),
        ] {
            let p = t.path().join("bad.yaml");
            std::fs::write(&p, format!("node-name: n\n{yaml}")).unwrap();
            let e = resolve(&p).unwrap_err().to_string();
            assert!(e.contains(key), "{yaml}: {e}");
        }
        assert!(resolve(&t.path().join("absent.yaml")).is_err());
    }
}
