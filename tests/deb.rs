//! The Debian package (`packaging/deb/build`), as `dpkg` sees it.
//!
//! What an operator relies on before `apt install ./moor_….deb` on every node: the package
//! holds the binary, the unit (rewritten to the package's path, `KillMode=process` kept: an
//! upgrade's restart must not kill a FUSE client), `/etc/moor/config.yaml` and
//! `/etc/default/moor` as conffiles, a config the daemon accepts; its maintainer scripts
//! parse and pass shellcheck; and what they do to a node's files — driver links on install,
//! an edited config kept on upgrade, state and drivers kept on remove, only the config gone
//! on purge. The file effects are checked by installing into a throwaway root with
//! `dpkg --root --force-script-chrootless` (the scripts honour `DPKG_ROOT` and skip the unit
//! there, saying so); the unit's start/restart/stop under a real systemd is the VM lab's
//! `deb` scenario.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PLUGIN_DIR: &str = "usr/libexec/kubernetes/kubelet-plugins/volume/exec";
const DRIVERS: &[&str] = &["local", "iscsi", "rbd", "fc", "nfs", "glusterfs", "cephfs"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd`; its output, both streams, when it succeeds (stderr carries what the
/// maintainer scripts say).
fn run(cmd: &mut Command) -> Output {
    match cmd.output() {
        Ok(out) if out.status.success() => out,
        Ok(out) => panic!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("{cmd:?}: {e} (this test needs dpkg, dpkg-deb and shellcheck)"),
    }
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn build(version: &str, out: &Path) -> PathBuf {
    let o = run(Command::new(repo().join("packaging/deb/build"))
        .args(["--binary", env!("CARGO_BIN_EXE_moor"), "--version", version])
        .arg("--out")
        .arg(out)
        .args(["--compress", "none"]));
    let deb = PathBuf::from(text(&o).trim());
    assert_eq!(
        deb,
        out.join(format!("moor_{version}_amd64.deb")),
        "the package's file name"
    );
    deb
}

fn dpkg(root: &Path, args: &[&str]) -> String {
    let o = run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args([
            "--force-script-chrootless",
            "--force-depends",
            "--log=/dev/null",
        ])
        .args(args));
    format!("{}{}", text(&o), String::from_utf8_lossy(&o.stderr))
}

fn status(root: &Path) -> String {
    std::fs::read_to_string(root.join("var/lib/dpkg/status")).unwrap()
}

#[test]
fn a_bad_version_is_refused_before_anything_is_built() {
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(repo().join("packaging/deb/build"))
        .args(["--version", "1_0", "--binary", env!("CARGO_BIN_EXE_moor")])
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not a Debian version"),
        "{o:?}"
    );
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}

#[test]
#[ignore = "tier 2: builds two packages (~10 s) and installs them into a throwaway root (root)"]
fn the_package_holds_what_a_node_needs_and_its_scripts_keep_state() {
    let tmp = tempfile::tempdir().unwrap();
    let a = build("0.1.0~test1", tmp.path());

    // --- dpkg-deb --info: the control fields.
    let info = text(&run(Command::new("dpkg-deb").arg("--info").arg(&a)));
    for want in [
        "Package: moor",
        "Version: 0.1.0~test1",
        "Architecture: amd64",
        "util-linux",
        "e2fsprogs",
        "xfsprogs",
    ] {
        assert!(info.contains(want), "{want} not in\n{info}");
    }
    let recommends = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("Recommends: "))
        .unwrap();
    for tool in [
        "open-iscsi",
        "multipath-tools",
        "nfs-common",
        "glusterfs-client",
        "ceph-common",
    ] {
        assert!(
            recommends.contains(tool),
            "{tool} not recommended: {recommends}"
        );
    }

    // --- dpkg-deb --contents: files, modes, owners.
    let contents = text(&run(Command::new("dpkg-deb").arg("--contents").arg(&a)));
    for (mode, path) in [
        ("-rwxr-xr-x", "./usr/bin/moor"),
        ("-rw-r--r--", "./lib/systemd/system/moor.service"),
        ("-rw-r--r--", "./etc/moor/config.yaml"),
        ("-rw-r--r--", "./etc/default/moor"),
        ("-rw-r--r--", "./usr/share/doc/moor/README.md"),
    ] {
        let line = contents
            .lines()
            .find(|l| l.ends_with(&format!(" {path}")))
            .unwrap_or_else(|| panic!("{path} not in\n{contents}"));
        assert!(
            line.starts_with(mode) && line.contains(" root/root "),
            "{path}: {line}"
        );
    }
    assert!(
        !contents.contains("./var/lib/moor") && !contents.contains(PLUGIN_DIR),
        "state and driver links are made by the scripts, never owned by the package:\n{contents}"
    );

    // --- the control files: conffiles, scripts that parse and pass shellcheck.
    let control = tmp.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&a).arg(&control));
    assert_eq!(
        std::fs::read_to_string(control.join("conffiles")).unwrap(),
        "/etc/moor/config.yaml\n/etc/default/moor\n"
    );
    for s in ["postinst", "prerm", "postrm"] {
        let p = control.join(s);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755, "{s} mode");
        run(Command::new("sh").arg("-n").arg(&p));
        run(Command::new("shellcheck")
            .args(["-s", "sh", "-S", "warning"])
            .arg(&p));
    }

    // --- the unit and the config as the package ships them.
    let unpacked = tmp.path().join("unpacked");
    run(Command::new("dpkg-deb").arg("-x").arg(&a).arg(&unpacked));
    let unit = std::fs::read_to_string(unpacked.join("lib/systemd/system/moor.service")).unwrap();
    for want in [
        "ExecStart=/usr/bin/moor daemon",
        "EnvironmentFile=-/etc/default/moor",
        // An upgrade restarts the unit: only the daemon may be stopped, never a FUSE client.
        "KillMode=process",
        "Type=notify",
    ] {
        assert!(unit.lines().any(|l| l == want), "{want} not in\n{unit}");
    }
    let cfg_text = std::fs::read_to_string(unpacked.join("etc/moor/config.yaml")).unwrap();
    let file: moor::config::FileConfig = serde_saphyr::from_str(&cfg_text)
        .unwrap_or_else(|e| panic!("the package's config.yaml is not moor's: {e}"));
    let cfg = moor::config::Config::resolve(&file, &moor::config::FileConfig::default())
        .unwrap_or_else(|e| panic!("the package's config.yaml is refused: {e}"));
    assert_eq!(cfg.kubelet_dir, Path::new("/var/lib/kubelet"));
    // And the packaged binary says so, as postinst asks it before any (re)start.
    let checked = text(&run(Command::new(unpacked.join("usr/bin/moor"))
        .args(["config", "check"])
        .arg(unpacked.join("etc/moor/config.yaml"))));
    assert!(checked.starts_with("ok: "), "{checked}");
    let default = std::fs::read_to_string(unpacked.join("etc/default/moor")).unwrap();
    assert!(
        default
            .lines()
            .any(|l| l == format!("MOOR_PLUGIN_DIR=/{PLUGIN_DIR}")),
        "{default}"
    );

    // --- install, upgrade, remove, purge into a throwaway root.
    let root = tmp.path().join("root");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    let said = dpkg(&root, &["-i", a.to_str().unwrap()]);
    assert!(said.contains("skipping moor.service"), "{said}");
    assert!(status(&root).contains("Status: install ok installed"));
    let plugin = root.join(PLUGIN_DIR);
    for d in DRIVERS {
        let link = plugin.join(format!("moor~{d}/{d}"));
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            Path::new("../.moor/moor"),
            "{}",
            link.display()
        );
    }
    let front_end = plugin.join(".moor/moor");
    assert_eq!(
        std::fs::read(&front_end).unwrap(),
        std::fs::read(root.join("usr/bin/moor")).unwrap(),
        "the drivers run the package's binary"
    );
    // The operator edits the config; moor's state appears.
    let cfg_path = root.join("etc/moor/config.yaml");
    let edited = format!("{cfg_text}# edited by the operator\n");
    std::fs::write(&cfg_path, &edited).unwrap();
    std::fs::create_dir_all(root.join("var/lib/moor/stages")).unwrap();
    std::fs::write(root.join("var/lib/moor/stages/rec.json"), "{}").unwrap();

    let b = build("0.1.0~test2", tmp.path());
    let said = dpkg(&root, &["-i", b.to_str().unwrap()]);
    assert!(status(&root).contains("Version: 0.1.0~test2"), "{said}");
    assert_eq!(
        std::fs::read_to_string(&cfg_path).unwrap(),
        edited,
        "an upgrade keeps the edited conffile"
    );
    assert!(front_end.exists());

    let said = dpkg(&root, &["-r", "moor"]);
    assert!(!root.join("usr/bin/moor").exists(), "{said}");
    assert!(
        status(&root).contains("Status: deinstall ok config-files"),
        "{said}"
    );
    assert!(cfg_path.exists(), "remove keeps the config");
    assert!(
        root.join("var/lib/moor/stages/rec.json").exists(),
        "remove keeps the state"
    );
    for d in DRIVERS {
        assert!(
            plugin.join(format!("moor~{d}/{d}")).exists(),
            "remove keeps the driver {d}, resolving: kubelet unmounts through it"
        );
    }
    assert!(said.contains("kept: mounts, /var/lib/moor"), "{said}");

    let said = dpkg(&root, &["-P", "moor"]);
    assert!(
        !root.join("etc/moor").exists(),
        "purge removes /etc/moor: {said}"
    );
    assert!(
        !root.join("etc/default/moor").exists(),
        "purge removes /etc/default/moor"
    );
    assert!(
        root.join("var/lib/moor/stages/rec.json").exists(),
        "purge keeps the state"
    );
    assert!(
        plugin.join("moor~local/local").exists(),
        "purge keeps the drivers"
    );
    assert!(!status(&root).contains("Package: moor"), "{said}");
}
