//! Guard tests for DESIGN's arrows (the compiler checks none of them): the floors that a
//! second front end or a test builds on — `api/` (the protocol) and `host/` (the machine) —
//! import no domain module, and the top error does not import the lifecycle that returns
//! it (no error ↔ lifecycle circle); and no error variant prints its own `#[source]` (a
//! chain printer says each cause once). A failure names the file and the line.

use std::path::{Path, PathBuf};

/// The crate's top-level modules that a floor may name, per floor. The protocol's requests
/// carry the typed options (`volume::VolumeOptions`, what every front end parses into) and
/// the journal persists each driver's typed volume (`volume::VolumeState`), so `api/` and
/// `journal/` may name `volume/`: the vocabulary below the drivers, which itself names only
/// `host/`.
const FLOORS: &[(&str, &[&str])] = &[
    ("api", &["api", "host", "volume"]),
    ("journal", &["journal", "host", "volume"]),
    ("volume", &["volume", "host"]),
    ("host", &["host"]),
];

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

/// The top-level module a file under `src/` belongs to (`lifecycle` for
/// `src/lifecycle/stage.rs`, `error` for `src/error.rs`).
fn top_module(f: &Path) -> String {
    let rel = f.strip_prefix(src()).unwrap_or(f);
    let first = rel
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned());
    first.unwrap_or_default().trim_end_matches(".rs").to_owned()
}

/// The production code of a file (a test may reach anywhere): none for `tests.rs`; else
/// the file without its inline `#[cfg(test)] mod tests { … }` (the file's last item, by
/// convention) and without the single line after any other `#[cfg(test)]`.
fn production_code(f: &Path, text: &str) -> String {
    if f.file_name().is_some_and(|n| n == "tests.rs") {
        return String::new();
    }
    let text = text
        .split("#[cfg(test)]\nmod tests {")
        .next()
        .unwrap_or_default();
    let mut out = String::new();
    let mut skip = false;
    for line in text.lines() {
        if std::mem::take(&mut skip) {
            continue;
        }
        if line.trim() == "#[cfg(test)]" {
            skip = true;
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The import graph between the crate's top-level modules, production code only.
fn module_graph() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut graph: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for f in files {
        let from = top_module(&f);
        if ["lib", "main"].contains(&from.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for (_, to) in modules_named(&production_code(&f, &text)) {
            if to != from {
                graph.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    graph
}

/// Every module that can reach itself through the graph, with one such path.
fn circles(
    graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for start in graph.keys() {
        // Breadth-first from `start`, remembering each module's predecessor.
        let mut prev: std::collections::BTreeMap<&str, &str> = Default::default();
        let mut todo = std::collections::VecDeque::from([start.as_str()]);
        while let Some(m) = todo.pop_front() {
            for next in graph.get(m).into_iter().flatten() {
                if next == start {
                    let mut path = vec![start.clone(), m.to_owned()];
                    let mut at = m;
                    while let Some(p) = prev.get(at) {
                        path.push((*p).to_owned());
                        at = p;
                    }
                    path.reverse();
                    path.dedup();
                    out.push(path);
                    todo.clear();
                    break;
                }
                if !prev.contains_key(next.as_str()) && next != start {
                    prev.insert(next, m);
                    todo.push_back(next);
                }
            }
        }
    }
    out
}

#[test]
fn no_module_imports_itself_round_a_circle() {
    let mut graph = std::collections::BTreeMap::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        graph
            .entry(a.to_owned())
            .or_insert_with(std::collections::BTreeSet::new)
            .insert(b.to_owned());
    }
    assert_eq!(
        circles(&graph).len(),
        3,
        "the detector sees a→b→c→a from each end"
    );
    let found = circles(&module_graph());
    assert!(
        found.is_empty(),
        "import circles between top-level modules (production code):\n{}",
        found
            .iter()
            .map(|p| p.join(" -> "))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The text between `open` (just after an opening bracket) and its matching close, with
/// string literals skipped; None when unbalanced.
fn balanced(text: &str, open: char, close: char) -> Option<&str> {
    let (mut depth, mut in_str, mut escaped) = (1usize, false, false);
    for (i, c) in text.char_indices() {
        if in_str {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return Some(&text[..i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// The fields of a variant's body that are its source: a field named `source`, or one
/// marked `#[source]`/`#[from]`; tuple fields by position.
fn source_fields(body: &str, tuple: bool) -> Vec<String> {
    // Split at the commas between fields (not those inside `<…>`, `(…)` or `[…]`).
    let mut fields = vec![String::new()];
    let mut depth = 0i32;
    for line in body.lines().map(str::trim).filter(|l| !l.starts_with("//")) {
        for c in line.chars().chain([' ']) {
            match c {
                '<' | '(' | '[' => depth += 1,
                '>' | ')' | ']' => depth -= 1,
                ',' if depth == 0 => {
                    fields.push(String::new());
                    continue;
                }
                _ => {}
            }
            if let Some(f) = fields.last_mut() {
                f.push(c);
            }
        }
    }
    let mut out = Vec::new();
    for (pos, f) in fields.iter().filter(|f| !f.trim().is_empty()).enumerate() {
        let marked = f.contains("#[source]") || f.contains("#[from]");
        let bare = f.rsplit(']').next().unwrap_or_default().trim();
        let name = bare
            .trim_start_matches("pub ")
            .split(':')
            .next()
            .unwrap_or_default()
            .trim();
        if tuple && marked {
            out.push(pos.to_string());
        } else if !tuple && (marked || name == "source") {
            out.push(name.to_owned());
        }
    }
    out
}

/// Each `#[error(...)]` in `text` whose message names its variant's source, by line.
fn sources_printed(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for (at, _) in text.match_indices("#[error(") {
        let rest = &text[at + "#[error(".len()..];
        let Some(attr) = balanced(rest, '(', ')') else {
            continue;
        };
        if attr.trim() == "transparent" {
            continue;
        }
        let after = &rest[attr.len()..];
        let (Some(brace), Some(paren)) = (
            after.find('{').or(Some(usize::MAX)),
            after.find('(').or(Some(usize::MAX)),
        ) else {
            continue;
        };
        // The variant ends at the first `,` when it has no fields.
        let end = after.find(',').unwrap_or(usize::MAX);
        let (open, close, start) = if brace < paren {
            ('{', '}', brace)
        } else {
            ('(', ')', paren)
        };
        if start == usize::MAX || end < start {
            continue;
        }
        let Some(body) = balanced(&after[start + 1..], open, close) else {
            continue;
        };
        for name in source_fields(body, open == '(') {
            if attr.contains(&format!("{{{name}}}")) || attr.contains(&format!("{{{name}:")) {
                out.push(text[..at].matches('\n').count() + 1);
            }
        }
    }
    out
}

#[test]
fn the_source_scanner_sees_a_printed_source() {
    let text = r#"
enum E {
    #[error("volume {volume}: {source}")]
    A {
        volume: String,
        #[source]
        source: std::io::Error,
    },
    #[error("volume {volume}")]
    B {
        volume: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reconstruction failed: {0}")]
    C(#[from] crate::Error),
    #[error("{0} at {1}")]
    D(String, #[source] std::io::Error),
    #[error("{0}, once")]
    E(String, #[source] std::io::Error),
    #[error("bad {0}")]
    F(String),
    #[error(transparent)]
    G(#[from] X),
}
"#;
    assert_eq!(sources_printed(text), [3, 15, 17]);
}

#[test]
fn no_error_message_prints_its_own_source() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut found = Vec::new();
    // This file's own sample is meant to be caught.
    for f in files.into_iter().filter(|f| !f.ends_with("layering.rs")) {
        let text = std::fs::read_to_string(&f).unwrap();
        for line in sources_printed(&text) {
            found.push(format!("{}:{line}", f.display()));
        }
    }
    assert!(
        found.is_empty(),
        "say the cause once, through #[source] (the chain printer adds it):\n{}",
        found.join("\n")
    );
}
