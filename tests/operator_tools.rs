//! The operator's tools on this host, with the real binary and a real daemon (tier 2: root,
//! a private mount namespace). `moor doctor` names what this host lacks for iSCSI (no
//! iscsi_tcp module, no iscsiadm) and fails; for the local driver it fails on a private
//! kubelet dir with the fix, and passes once the fix is applied. `moor bundle` after mounts
//! of every driver carrying secrets holds none of them in any form, and every part is there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Daemon, require_privileged_sandbox};
use serde_json::json;

fn moor_bin() -> PathBuf {
    std::env::var_os("MOOR_TEST_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_moor").into())
}

/// A config naming the harness daemon's dirs (and its metrics port, when given).
fn config_for(d: &Daemon, metrics: Option<u16>) -> PathBuf {
    let p = d.root.path().join("operator.yaml");
    let mut y = format!(
        "node-name: {}\nkubelet-dir: {}\nstate-dir: {}\nrun-dir: {}\nsocket: {}\n",
        d.node,
        d.kubelet_dir().display(),
        d.state_dir().display(),
        d.run_dir().display(),
        d.socket().display()
    );
    y.push_str(&match metrics {
        Some(port) => format!("metrics-addr: 127.0.0.1:{port}\n"),
        None => "metrics-addr: off\n".into(),
    });
    std::fs::write(&p, y).unwrap();
    p
}

/// `moor <sub…> --config C --plugin-dir P`, without API credentials from the environment.
fn operator_cmd(sub: &[&str], config: &Path, plugins: &Path) -> Command {
    let mut c = Command::new(moor_bin());
    c.args(sub)
        .arg("--config")
        .arg(config)
        .arg("--plugin-dir")
        .arg(plugins)
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST");
    c
}

fn doctor(config: &Path, plugins: &Path, drivers: &[&str]) -> (i32, serde_json::Value) {
    let mut c = operator_cmd(&["doctor", "-o", "json"], config, plugins);
    for d in drivers {
        c.args(["--driver", d]);
    }
    let out = c.output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor -o json: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

fn row<'a>(v: &'a serde_json::Value, check: &str) -> &'a serde_json::Value {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["check"] == check)
        .unwrap_or_else(|| panic!("no row {check}: {v:#}"))
}

fn failing(v: &serde_json::Value) -> Vec<String> {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "fail")
        .map(|r| r["check"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn doctor_names_what_this_host_lacks_and_passes_local_once_the_kubelet_dir_is_shared() {
    require_privileged_sandbox();
    let d = Daemon::start();
    let plugins = d.root.path().join("plugins");
    d.driver_link();
    let cfg = config_for(&d, None);

    // This host has no iSCSI initiator: the rows say what is missing and how to get it.
    let (code, v) = doctor(&cfg, &plugins, &["iscsi"]);
    assert_ne!(code, 0, "{v:#}");
    let m = row(&v, "module iscsi_tcp");
    assert_eq!(m["status"], "fail", "{m}");
    assert!(
        m["fix"].as_str().unwrap().contains("modprobe iscsi_tcp"),
        "{m}"
    );
    let t = row(&v, "tool iscsiadm");
    assert_eq!(t["status"], "fail", "{t}");
    assert_eq!(t["fix"], "apt-get install open-iscsi");
    assert_eq!(row(&v, "flexvolume link iscsi")["status"], "fail");

    // local: the daemon answers, the link is this build; only the private kubelet dir fails.
    let (code, v) = doctor(&cfg, &plugins, &["local"]);
    assert_eq!(failing(&v), ["kubelet dir propagation"], "{v:#}");
    assert_ne!(code, 0);
    let p = row(&v, "kubelet dir propagation");
    assert!(p["fix"].as_str().unwrap().contains("--make-rshared"), "{p}");
    let s = row(&v, "daemon socket");
    assert_eq!(s["status"], "ok", "{s}");
    assert!(
        s["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("node {}", d.node)),
        "{s}"
    );
    assert_eq!(row(&v, "flexvolume link local")["status"], "ok");
    assert_eq!(row(&v, "api credentials")["status"], "skip");

    // The fix the row gives, applied: the kubelet dir becomes a shared mount of its own.
    let k = d.kubelet_dir();
    for args in [
        vec!["--bind", k.to_str().unwrap(), k.to_str().unwrap()],
        vec!["--make-rshared", k.to_str().unwrap()],
    ] {
        let out = Command::new("mount").args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "mount {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (code, v) = doctor(&cfg, &plugins, &["local"]);
    assert_eq!(failing(&v), Vec::<String>::new(), "{v:#}");
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(row(&v, "kubelet dir propagation")["status"], "ok");
    // The table form says the same.
    let out = operator_cmd(&["doctor", "--driver", "local"], &cfg, &plugins)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && table.starts_with("CHECK") && table.contains(" 0 fail"),
        "{table}"
    );
}

/// A driver's secret keys and values.
type Secrets = Vec<(&'static str, &'static str)>;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_bundle_after_mounts_with_secrets_of_every_driver_holds_none_of_them() {
    require_privileged_sandbox();
    let (d, port) = Daemon::start_with_metrics();
    let plugins = d.root.path().join("plugins");
    d.driver_link();
    // Each driver's secrets, unique so a find means a leak. The cephx key is a real-shaped one.
    let cephx = "AQDm4W9nAAAAABAAQm9vck1vb3JTZWNyZXRLZXk=";
    let secrets: Vec<(&str, serde_json::Value, Secrets)> = vec![
        (
            "iscsi",
            json!({"targetPortal": "127.0.0.1:3260", "iqn": "iqn.2020-01.io.moor:t1", "lun": "0", "chapAuthSession": "true", "chapAuthDiscovery": "true"}),
            vec![
                ("node.session.auth.username", "chapuser-Kq7v"),
                ("node.session.auth.password", "chappass-Zr81xQ"),
                ("discovery.sendtargets.auth.username", "discuser-Pm3e"),
                ("discovery.sendtargets.auth.password", "discpass-Wt55oL"),
            ],
        ),
        (
            "rbd",
            json!({"monitors": "127.0.0.1:6789", "pool": "rbd", "image": "img1", "user": "admin"}),
            vec![("key", cephx)],
        ),
        (
            "cephfs",
            json!({"monitors": "127.0.0.1:6789", "path": "/", "user": "admin"}),
            vec![("key", cephx)],
        ),
        (
            "nfs",
            json!({"server": "127.0.0.1", "path": "/export"}),
            vec![("password", "nfspass-Hh20aa")],
        ),
        (
            "glusterfs",
            json!({"endpoints": "127.0.0.1", "path": "vol1"}),
            vec![("password", "glusterpass-Yy31")],
        ),
        (
            "fc",
            json!({"targetWWNs": "500a098188a51ea2", "lun": "1"}),
            vec![("password", "fcpass-Qq90zz")],
        ),
    ];
    let mut values: Vec<String> = Vec::new();
    for (driver, opts, secs) in &secrets {
        let dir = plugins.join(format!("moor~{driver}"));
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.join(driver);
        if !link.exists() {
            std::os::unix::fs::symlink(moor_bin(), &link).unwrap();
        }
        let mut o = common::kubelet_options("pod-s", &format!("v-{driver}"), opts.clone());
        for (k, v) in secs {
            o[format!("kubernetes.io/secret/{k}")] = b64(v.as_bytes()).into();
            values.push((*v).to_owned());
        }
        let target = d
            .kubelet_dir()
            .join(format!("pods/pod-s/volumes/moor~{driver}/v-{driver}"));
        std::fs::create_dir_all(&target).unwrap();
        // Most fail on this host (no initiator, no servers); the secrets travel all the same.
        let _ = moor::testkit::flex::call(
            &link,
            &d.socket(),
            &["mount", target.to_str().unwrap(), &o.to_string()],
        )
        .unwrap();
    }
    // One mount that works, with a secret beside it: a journal record and a mountinfo line.
    let src = d.root.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    d.mount(
        "pod-1",
        "v",
        json!({"path": src, "kubernetes.io/secret/password": b64(b"localpass-Ee44")}),
    )
    .assert_ok();
    values.push("localpass-Ee44".into());

    // A record an older build might have written with a secret in it, set aside as corrupt:
    // the bundle's own redactor is the wall here.
    std::fs::write(
        d.state_dir().join("stage/old-leak.json.corrupt"),
        format!("{{\"options\": \"rw,secret={cephx},password=plantedpass-Jj12\", \"node.session.auth.password\": \"plantedchap-Uu77\"}}"),
    )
    .unwrap();
    values.extend(["plantedpass-Jj12".to_owned(), "plantedchap-Uu77".to_owned()]);

    let cfg = config_for(&d, Some(port));
    let out_file = d.root.path().join("bundle.tar.gz");
    let out = operator_cmd(&["bundle"], &cfg, &plugins)
        .arg("-o")
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&out_file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let mut files = std::collections::BTreeMap::new();
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(
        std::fs::File::open(&out_file).unwrap(),
    ));
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        let rel = name
            .split_once('/')
            .map(|(_, r)| r.to_owned())
            .unwrap_or(name);
        let mut b = Vec::new();
        e.read_to_end(&mut b).unwrap();
        files.insert(rel, b);
    }
    for f in [
        "README.txt",
        "version.txt",
        "config.yaml",
        "status.json",
        "doctor.json",
        "mountinfo.txt",
        "daemon.log",
        "metrics.txt",
        "errors.txt",
    ] {
        assert!(
            files.get(f).is_some_and(|b| !b.is_empty()),
            "{f} missing or empty in {:?}",
            files.keys()
        );
    }
    assert!(
        files
            .keys()
            .any(|k| k.starts_with("journal/stage/") && k.ends_with(".json")),
        "{:?}",
        files.keys()
    );
    let leak = String::from_utf8_lossy(&files["journal/stage/old-leak.json.corrupt"]).into_owned();
    assert!(
        leak.contains("password=<redacted>") && leak.contains("secret=<redacted>"),
        "{leak}"
    );
    assert_eq!(String::from_utf8_lossy(&files["errors.txt"]), "none\n");
    let text = |f: &str| String::from_utf8_lossy(&files[f]).into_owned();
    assert!(
        text("metrics.txt").contains("moor_"),
        "{}",
        text("metrics.txt")
    );
    assert!(
        text("mountinfo.txt").contains("pod-1"),
        "{}",
        text("mountinfo.txt")
    );
    assert!(
        text("daemon.log").lines().count() > 3,
        "{}",
        text("daemon.log")
    );
    assert!(text("status.json").contains("\"volumes\""));
    for (driver, ..) in &secrets {
        assert!(
            text("daemon.log").contains(driver),
            "the log shows no {driver} mount:\n{}",
            text("daemon.log")
        );
    }

    for v in &values {
        let forms = [
            v.clone(),
            b64(v.as_bytes()),
            hex(v.as_bytes()),
            hex(v.as_bytes()).to_uppercase(),
        ];
        for (name, bytes) in &files {
            let s = String::from_utf8_lossy(bytes);
            for form in &forms {
                assert!(
                    !s.contains(form.as_str()),
                    "secret {v:?} (as {form:?}) is in {name}:\n{s}"
                );
            }
        }
    }
}
