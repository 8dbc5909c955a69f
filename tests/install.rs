//! `moor install-flexvolume`, the DaemonSet's init container step, with the real binary
//! (tier 1: no root). What an operator checks: after it, kubelet's exec of every
//! `moor~<driver>/<driver>` answers `init`; re-running it (an upgrade) while kubelet execs
//! the drivers never makes an exec fail — no missing file, no ETXTBSY, no half binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

const DRIVERS: &[&str] = &["local", "iscsi", "rbd", "fc", "nfs", "glusterfs", "cephfs"];

fn install(plugins: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_moor"))
        .args(["install-flexvolume", "--plugin-dir"])
        .arg(plugins)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn init(plugins: &Path, driver: &str) -> Result<serde_json::Value, String> {
    let exe = plugins.join(format!("moor~{driver}/{driver}"));
    let out = Command::new(&exe)
        .arg("init")
        .output()
        .map_err(|e| format!("exec {}: {e}", exe.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).map_err(|e| format!("{driver}: {e}: {text:?}"))
}

#[test]
fn every_installed_driver_answers_init_as_kubelet_execs_it() {
    let t = tempfile::tempdir().unwrap();
    let plugins = t.path().join("volume/exec");
    install(&plugins);
    for d in DRIVERS {
        let r = init(&plugins, d).unwrap();
        assert_eq!(r["status"], "Success", "{d}: {r}");
        assert_eq!(r["capabilities"]["attach"], false, "{d}: {r}");
    }
}

#[test]
fn a_reinstall_while_kubelet_execs_the_drivers_never_fails_an_exec() {
    let t = tempfile::tempdir().unwrap();
    let plugins = t.path().join("exec");
    install(&plugins);
    let stop = Arc::new(AtomicBool::new(false));
    let execs = {
        let (stop, plugins) = (stop.clone(), plugins.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let r = init(&plugins, "nfs").unwrap();
                assert_eq!(r["status"], "Success", "{r}");
                n += 1;
            }
            n
        })
    };
    for _ in 0..25 {
        install(&plugins);
    }
    stop.store(true, Ordering::Relaxed);
    let n = execs.join().expect("an exec failed during a reinstall");
    assert!(n > 0);
    let names: Vec<String> = std::fs::read_dir(&plugins)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".new"))
        .collect();
    assert!(names.is_empty(), "temporary entries left: {names:?}");
}
