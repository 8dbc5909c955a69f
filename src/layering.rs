//! Guard tests for DESIGN's arrows (the compiler checks none of them): the floors that a
//! second front end or a test builds on — `api/` (the protocol) and `host/` (the machine) —
//! import no domain module, and the top error does not import the lifecycle that returns
//! it (no error ↔ lifecycle circle). A failure names the file, the line and the module it
//! reached up to.

use std::path::{Path, PathBuf};

/// The crate's top-level modules that a floor may name, per floor.
const FLOORS: &[(&str, &[&str])] = &[("api", &["api", "host"]), ("host", &["host"])];

/// Every `crate::<module>` a line of code names (comments skipped: a doc link is no import).
fn modules_named(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.push((n + 1, name));
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Each line of the files under `dir` that names a module outside `allowed`.
fn reaching_up(dir: &Path, allowed: &[&str]) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(dir, &mut files);
    let mut found = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (line, module) in modules_named(&text) {
            if !allowed.contains(&module.as_str()) {
                found.push(format!("{}:{line}: crate::{module}", f.display()));
            }
        }
    }
    found
}

#[test]
fn the_scanner_sees_an_import_and_skips_comments() {
    let text = "use crate::daemon::executor::Executor;\n/// [`crate::lifecycle`]\nlet x = crate::host::paths::VENDOR; // crate::config\n";
    assert_eq!(
        modules_named(text),
        [(1, "daemon".to_owned()), (3, "host".to_owned())]
    );
}

#[test]
fn api_and_host_import_no_domain_module() {
    let mut found = Vec::new();
    for (floor, allowed) in FLOORS {
        let dir = src().join(floor);
        assert!(dir.is_dir(), "{}", dir.display());
        found.extend(reaching_up(&dir, allowed));
    }
    assert!(
        found.is_empty(),
        "arrows pointing up:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_top_error_does_not_import_the_lifecycle() {
    let text = std::fs::read_to_string(src().join("error.rs")).unwrap();
    let found: Vec<_> = modules_named(&text)
        .into_iter()
        .filter(|(_, m)| ["lifecycle", "daemon", "api", "cli"].contains(&m.as_str()))
        .collect();
    assert!(found.is_empty(), "error.rs reaches up: {found:?}");
}
