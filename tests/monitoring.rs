//! The monitoring kit (`packaging/monitoring/`) against what moor really exports.
//!
//! What an operator trusts when importing the dashboard and loading the rules: every series
//! a panel, a variable, an alert or a recording rule names is one moor exports (or kubelet's
//! standard `kubelet_volume_stats_*`, or Prometheus's `up`), and every label an expression
//! uses — in a `{…}` matcher, a `by`/`without`/`on`/`ignoring`/`group_*` clause, a
//! `histogram_quantile` over `le`, a legend's or an annotation's `{{ … }}` — is on the
//! series it is used with. A typo there is no error in Prometheus or Grafana: the panel is
//! empty and the alert never fires, so this check is the only one (`promtool` is not on these
//! machines, and it would not know moor's series anyway).
//!
//! Where the names and labels come from:
//! - tier 1: moor's own registry (`Metrics::new()`), encoded to the text format exactly as
//!   `/metrics` serves it, after one sample was put into **every** family through the public
//!   label structs: the compiler makes each struct literal name every field, and the test
//!   fails when the registry has a family (`# TYPE`) this test did not fill, so a new family
//!   or label cannot slip past. Labels come from the samples, never from a list kept here;
//! - tier 2: a real `moor daemon` scraped over HTTP after a local mount, a refused mount and
//!   an unmount: its families must be the registry's, its samples' labels the same, and the
//!   kit must pass against that scrape too (families with no sample in the scrape still
//!   appear as `# TYPE`; their labels are the registry's);
//! - the labels the scrape adds (`job`, `instance`, and what the ServiceMonitor's
//!   relabelings set) are read from `packaging/kubernetes/components/monitoring/service.yaml`.
//!
//! The PromQL check is a small parser of the subset the kit uses (selectors, ranges,
//! aggregations, functions, binary operators with their matching clauses). It computes each
//! expression's output labels, so `sum by (x) (…)` over a series without `x`, a one-to-one
//! `a / b` whose sides have different labels (it matches nothing), or a legend naming a label
//! the query dropped are all caught. It fails on any construct it does not know, rather than
//! let it pass unchecked.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use moor::metrics::{
    ApiRequestLabels, DeadPodLabels, DriverLabels, ErrorLabels, EventLabels, EvictionLabels,
    HealLabels, Metrics, NoticeLabels, OpLabels, PlacementLabels, ReconstructionLabels,
    SetAsideLabels, VolumeUse, volume_labels,
};
use serde_json::Value;

type Labels = BTreeSet<String>;
/// Series name → the label names its samples carry.
type Catalog = BTreeMap<String, Labels>;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn set(names: &[&str]) -> Labels {
    names.iter().map(|s| (*s).to_owned()).collect()
}

// ---------------------------------------------------------------------------------------
// The text format: families (`# TYPE`) and the label names of every sample.

/// One parsed exposition: family → type, and sample name → label names.
#[derive(Default, Debug)]
struct Exposition {
    families: BTreeMap<String, String>,
    samples: Catalog,
}

fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    // s starts after '{'
    let mut names = Labels::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((names, r));
        }
        let eq = rest.find('=').ok_or_else(|| format!("no '=' in {s}"))?;
        names.insert(rest[..eq].to_owned());
        let v = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or_else(|| format!("unquoted value in {s}"))?;
        let mut end = None;
        let mut escaped = false;
        for (i, c) in v.char_indices() {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end.ok_or_else(|| format!("unterminated value in {s}"))?;
        rest = &v[end + 1..];
    }
}

fn parse_exposition(text: &str) -> Exposition {
    let mut e = Exposition::default();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, ty) = t.split_once(' ').unwrap();
            e.families.insert(name.to_owned(), ty.to_owned());
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (name, labels) = match line.find(['{', ' ']) {
            Some(i) if line.as_bytes()[i] == b'{' => (
                &line[..i],
                parse_labels(&line[i + 1..])
                    .unwrap_or_else(|err| panic!("{err}: {line}"))
                    .0,
            ),
            Some(i) => (&line[..i], Labels::new()),
            None => panic!("not a sample line: {line}"),
        };
        let prev = e.samples.insert(name.to_owned(), labels.clone());
        assert!(
            prev.is_none_or(|p| p == labels),
            "{name}: samples with different label names"
        );
    }
    e
}

/// The sample names a family of this type has in the text format.
fn series_of(family: &str, ty: &str) -> Vec<(String, Option<&'static str>)> {
    match ty {
        "counter" => vec![(format!("{family}_total"), None)],
        "histogram" => vec![
            (format!("{family}_bucket"), Some("le")),
            (format!("{family}_sum"), None),
            (format!("{family}_count"), None),
        ],
        "info" => vec![(format!("{family}_info"), None)],
        _ => vec![(family.to_owned(), None)],
    }
}

/// The catalog of a scrape: every sample's labels, plus the registry's series the scrape
/// has no sample of yet (prometheus-client leaves such a family out of the text format, so
/// their labels are the registry's, whose every family was sampled).
fn catalog(e: &Exposition, registry: &Catalog) -> Catalog {
    let mut c = e.samples.clone();
    for (series, labels) in registry {
        c.entry(series.clone()).or_insert_with(|| labels.clone());
    }
    c
}

/// Puts one sample into every family of `m` through its public label structs.
fn fill_every_family(m: &Metrics) {
    let op = OpLabels {
        driver: "local".into(),
        op: "mount".into(),
    };
    m.operations.get_or_create(&op).inc();
    m.duration.get_or_create(&op).observe(0.01);
    m.errors
        .get_or_create(&ErrorLabels {
            driver: "local".into(),
            op: "mount".into(),
            reason: "wrong_node".into(),
        })
        .inc();
    m.stale_detected
        .get_or_create(&ErrorLabels {
            driver: "nfs".into(),
            op: "probe".into(),
            reason: "hung".into(),
        })
        .inc();
    m.heals
        .get_or_create(&HealLabels {
            driver: "nfs".into(),
            result: "failed".into(),
        })
        .inc();
    m.reconstruction
        .get_or_create(&ReconstructionLabels {
            outcome: "kept".into(),
        })
        .inc();
    m.records_set_aside
        .get_or_create(&SetAsideLabels {
            reason: "invalid_json".into(),
        })
        .set(1);
    m.placement
        .get_or_create(&PlacementLabels {
            placement: "host".into(),
            fuse_outlives_moor: "true".into(),
        })
        .set(1);
    let vl = volume_labels(
        "local-x",
        "local",
        &[VolumeUse {
            volume_name: "pv".into(),
            namespace: None,
            claim: None,
        }],
    );
    for fam in [
        &m.capacity_bytes,
        &m.available_bytes,
        &m.used_bytes,
        &m.inodes,
        &m.inodes_free,
        &m.inodes_used,
    ] {
        fam.get_or_create(&vl).set(1);
    }
    m.in_flight.set(0);
    m.staged_volumes.set(0);
    m.published_volumes.set(0);
    m.reconcile_runs.inc();
    m.healed_publishes.inc();
    m.dead_mount_pods
        .get_or_create(&moor::metrics::DeadPodLabels {
            driver: "glusterfs".into(),
            namespace: "team-a".into(),
            pod: "web-0".into(),
        })
        .set(1);
    m.evictions
        .get_or_create(&moor::metrics::EvictionLabels {
            driver: "glusterfs".into(),
            result: "blocked".into(),
        })
        .inc();
    m.orphans_cleaned
        .get_or_create(&DriverLabels {
            driver: "local".into(),
        })
        .inc();
    m.dead_mount_pods
        .get_or_create(&DeadPodLabels {
            driver: "glusterfs".into(),
            namespace: "team-a".into(),
            pod: "web-0".into(),
        })
        .set(1);
    m.evictions
        .get_or_create(&EvictionLabels {
            driver: "glusterfs".into(),
            result: "evicted".into(),
        })
        .inc();
    let c = &m.cluster;
    c.notices
        .get_or_create(&NoticeLabels {
            reason: "share_dead".into(),
        })
        .inc();
    c.events
        .get_or_create(&EventLabels {
            result: "sent".into(),
        })
        .inc();
    c.api_requests
        .get_or_create(&ApiRequestLabels {
            verb: "watch".into(),
            resource: "pods".into(),
        })
        .inc();
}

/// The families the wave's contract (issue 16, common rules) fixed by name and labels
/// before their code existed; the kit was written against them, so the registry must
/// export exactly these.
const CONTRACT: &[(&str, &[&str])] = &[
    ("moor_notices_total", &["reason"]),
    ("moor_events_total", &["result"]),
    ("moor_api_requests_total", &["verb", "resource"]),
    ("moor_dead_mount_pods", &["driver", "namespace", "pod"]),
    ("moor_evictions_total", &["driver", "result"]),
    ("moor_orphans_cleaned_total", &["driver"]),
];

/// The names moor's source registers (`registry.register("name", …)`,
/// `register_with_unit(\n "name", …)`, and the `("name", …)` rows of a table registered in a
/// loop), without the `moor_` prefix: how a family that has no sample is still known.
/// prometheus-client does not list a labelled family without children at all (no `# TYPE`
/// either: checked below), so the exposition alone cannot show what is registered.
fn registered_in_source() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo().join("src/metrics.rs")).unwrap();
    let code = text.split("#[cfg(test)]").next().unwrap();
    let lit = |s: &str| -> Option<String> {
        let s = s.strip_prefix('"')?;
        let end = s.find('"')?;
        let name = &s[..end];
        (!name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .then(|| name.to_owned())
    };
    let mut out = BTreeSet::new();
    let mut prev = "";
    for line in code.lines().map(str::trim) {
        for pat in ["register(", "register_with_unit("] {
            if let Some(i) = line.find(pat)
                && let Some(n) = lit(&line[i + pat.len()..])
            {
                out.insert(n);
            }
        }
        if let Some(n) = line.strip_prefix('(').and_then(lit) {
            out.insert(n);
        }
        if (prev.ends_with("register(") || prev.ends_with("register_with_unit(") || prev == "(")
            && let Some(n) = lit(line)
        {
            out.insert(n);
        }
        prev = line;
    }
    out
}

/// moor's registry, every family sampled: sample name → labels.
fn registry() -> (Exposition, Catalog) {
    let m = Metrics::new();
    let empty = parse_exposition(&m.encode());
    fill_every_family(&m);
    let e = parse_exposition(&m.encode());
    // A labelled family with no sample yet is not in the text format at all: a panel over
    // it shows "No data" until moor first counts something (hence `or vector(0)` where a
    // zero matters). Checked, so the kit's README stays true.
    assert!(
        empty.families.len() < e.families.len()
            && !empty.families.contains_key("moor_operation_errors"),
        "prometheus-client now lists empty families: {:?}",
        empty.families
    );
    let source = registered_in_source();
    assert!(
        source.len() >= 15,
        "names found in src/metrics.rs: {source:?}"
    );
    for name in &source {
        let found = e.families.keys().any(|f| {
            let f = f.strip_prefix("moor_").unwrap_or(f);
            f == name
                || f.strip_suffix("_seconds") == Some(name)
                || f.strip_suffix("_bytes") == Some(name)
        });
        assert!(
            found,
            "src/metrics.rs registers {name:?} but fill_every_family() gives it no sample: \
             fill it, so the kit's check knows its labels"
        );
    }
    for (fam, ty) in &e.families {
        for (series, _) in series_of(fam, ty) {
            assert!(
                e.samples.contains_key(&series),
                "family {fam} ({ty}) without {series}"
            );
        }
    }
    for (name, labels) in CONTRACT {
        assert_eq!(
            e.samples.get(*name),
            Some(&set(labels)),
            "{name}: the registry's labels differ from the contract's"
        );
    }
    let c = e.samples.clone();
    (e, c)
}

// ---------------------------------------------------------------------------------------
// What the scrape adds, and the series that are not moor's.

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()))
}

fn service_monitor() -> Value {
    let docs = yaml_docs(&repo().join("packaging/kubernetes/components/monitoring/service.yaml"));
    docs.into_iter()
        .find(|d| d["kind"] == "ServiceMonitor")
        .expect("a ServiceMonitor in the monitoring component")
}

/// Labels Prometheus attaches to every sample of moor's target under this ServiceMonitor:
/// `job`, `instance`, every relabeling's `targetLabel`. Fails when one of the operator's
/// own target labels would collide with a label of moor's and is neither dropped nor
/// honoured (Prometheus would rename moor's to `exported_<name>`).
fn target_labels_of(sm: &Value, moor_labels: &Labels) -> Result<Labels, String> {
    let ep = &sm["spec"]["endpoints"][0];
    let mut out = set(&["job", "instance"]);
    let mut dropped = Labels::new();
    for r in ep["relabelings"].as_array().into_iter().flatten() {
        if let Some(t) = r["targetLabel"].as_str() {
            out.insert(t.to_owned());
        }
        if r["action"] == "labeldrop" {
            let re = r["regex"].as_str().unwrap_or_default();
            dropped.extend(re.trim_matches(['(', ')']).split('|').map(String::from));
        }
    }
    let honor = ep["honorLabels"].as_bool().unwrap_or(false);
    // The Prometheus Operator's own target labels for a Service endpoint.
    for op_label in ["namespace", "pod", "container", "service", "endpoint"] {
        if moor_labels.contains(op_label) && !dropped.contains(op_label) && !honor {
            return Err(format!(
                "moor's label {op_label} collides with the operator's target label: drop it \
                 in the ServiceMonitor's relabelings (else it becomes exported_{op_label})"
            ));
        }
        if !dropped.contains(op_label) {
            out.insert(op_label.to_owned());
        }
    }
    Ok(out)
}

fn target_labels(moor_labels: &Labels) -> Labels {
    target_labels_of(&service_monitor(), moor_labels).unwrap_or_else(|e| panic!("{e}"))
}

/// The whole catalog the kit may use: moor's series (with the target labels), `up`, and
/// kubelet's standard volume statistics.
fn full_catalog(moor: &Catalog) -> Catalog {
    let all_moor: Labels = moor.values().flatten().cloned().collect();
    let target = target_labels(&all_moor);
    let mut c: Catalog = moor
        .iter()
        .map(|(k, v)| (k.clone(), v.union(&target).cloned().collect()))
        .collect();
    c.insert("up".into(), target);
    for s in [
        "capacity_bytes",
        "available_bytes",
        "used_bytes",
        "inodes",
        "inodes_free",
        "inodes_used",
        "health_status_abnormal",
    ] {
        c.insert(
            format!("kubelet_volume_stats_{s}"),
            set(&["namespace", "persistentvolumeclaim", "job", "instance"]),
        );
    }
    c
}

// ---------------------------------------------------------------------------------------
// PromQL: a tokenizer and a Pratt parser that computes output labels.

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Num,
    Str(String),
    Op(String),
    LParen,
    RParen,
    LBrace,
    RBrace,
    Range,
    Comma,
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let b: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let st = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == '_' || b[i] == ':') {
                i += 1;
            }
            out.push(Tok::Ident(b[st..i].iter().collect()));
        } else if c.is_ascii_digit() || c == '.' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == '.') {
                i += 1;
            }
            out.push(Tok::Num);
        } else if c == '"' || c == '\'' {
            let st = i + 1;
            i += 1;
            while i < b.len() && b[i] != c {
                if b[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            if i >= b.len() {
                return Err(format!("unterminated string in {s}"));
            }
            out.push(Tok::Str(b[st..i].iter().collect()));
            i += 1;
        } else if c == '[' {
            // A range or subquery: its content is durations (or Grafana's $__rate_interval).
            while i < b.len() && b[i] != ']' {
                i += 1;
            }
            if i >= b.len() {
                return Err(format!("unterminated range in {s}"));
            }
            i += 1;
            out.push(Tok::Range);
        } else {
            let two: String = b[i..(i + 2).min(b.len())].iter().collect();
            let t = match c {
                '(' => Tok::LParen,
                ')' => Tok::RParen,
                '{' => Tok::LBrace,
                '}' => Tok::RBrace,
                ',' => Tok::Comma,
                _ if ["==", "!=", ">=", "<=", "=~", "!~"].contains(&two.as_str()) => {
                    i += 1;
                    Tok::Op(two)
                }
                '+' | '-' | '*' | '/' | '%' | '^' | '>' | '<' | '=' => Tok::Op(c.to_string()),
                _ => return Err(format!("unexpected {c:?} in {s}")),
            };
            i += 1;
            out.push(t);
        }
    }
    Ok(out)
}

/// An expression's type: a scalar, or an instant/range vector with these labels.
#[derive(Debug, Clone, PartialEq)]
enum Ty {
    Scalar,
    Vector(Labels),
}

const AGGREGATIONS: &[&str] = &[
    "sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "topk", "bottomk", "quantile",
];
/// Functions whose output keeps the labels of their (first) vector argument.
const KEEP_LABELS: &[&str] = &[
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "deriv",
    "abs",
    "ceil",
    "floor",
    "round",
    "clamp_min",
    "clamp_max",
    "sort",
    "sort_desc",
    "max_over_time",
    "min_over_time",
    "avg_over_time",
    "sum_over_time",
    "count_over_time",
    "last_over_time",
    "absent",
    "changes",
    "resets",
    "timestamp",
];

struct Parser<'a> {
    toks: Vec<Tok>,
    pos: usize,
    catalog: &'a Catalog,
    errors: Vec<String>,
    src: String,
}

fn binding(op: &str) -> Option<(u8, bool)> {
    // (precedence, right-associative)
    Some(match op {
        "or" => (1, false),
        "and" | "unless" => (2, false),
        "==" | "!=" | ">" | "<" | ">=" | "<=" => (3, false),
        "+" | "-" => (4, false),
        "*" | "/" | "%" | "atan2" => (5, false),
        "^" => (6, true),
        _ => return None,
    })
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn expect(&mut self, t: Tok) -> Result<(), String> {
        match self.next() {
            Some(ref g) if *g == t => Ok(()),
            g => Err(format!("expected {t:?}, found {g:?} in {}", self.src)),
        }
    }
    fn err(&mut self, e: String) {
        self.errors.push(e);
    }
    fn peek_ident(&self, names: &[&str]) -> Option<String> {
        match self.peek() {
            Some(Tok::Ident(s)) if names.contains(&s.as_str()) => Some(s.clone()),
            _ => None,
        }
    }

    fn label_list(&mut self) -> Result<Vec<String>, String> {
        self.expect(Tok::LParen)?;
        let mut out = Vec::new();
        loop {
            match self.next() {
                Some(Tok::RParen) => return Ok(out),
                Some(Tok::Comma) => {}
                Some(Tok::Ident(s)) => out.push(s),
                t => return Err(format!("bad label list at {t:?} in {}", self.src)),
            }
        }
    }

    fn need_labels(&mut self, what: &str, wanted: &[String], on: &Ty) {
        if let Ty::Vector(have) = on {
            for l in wanted {
                if !have.contains(l) {
                    let e = format!(
                        "{what}: label {l:?} is not on its operand (labels {have:?}) in {}",
                        self.src
                    );
                    self.err(e);
                }
            }
        } else {
            let e = format!("{what}: applied to a scalar in {}", self.src);
            self.err(e);
        }
    }

    fn expr(&mut self, min_prec: u8) -> Result<Ty, String> {
        let mut lhs = self.unary()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Op(o)) if o != "=" && o != "=~" && o != "!~" => o.clone(),
                Some(Tok::Ident(o)) if binding(o).is_some() => o.clone(),
                _ => break,
            };
            let (prec, right) = binding(&op).unwrap();
            if prec < min_prec {
                break;
            }
            self.pos += 1;
            let is_bool = self.peek_ident(&["bool"]).is_some();
            if is_bool {
                self.pos += 1;
            }
            let mut matching: Option<(String, Vec<String>)> = None;
            if let Some(kw) = self.peek_ident(&["on", "ignoring"]) {
                self.pos += 1;
                matching = Some((kw, self.label_list()?));
            }
            let mut group: Option<(String, Vec<String>)> = None;
            if let Some(kw) = self.peek_ident(&["group_left", "group_right"]) {
                self.pos += 1;
                let ls = if self.peek() == Some(&Tok::LParen) {
                    self.label_list()?
                } else {
                    Vec::new()
                };
                group = Some((kw, ls));
            }
            let rhs = self.expr(if right { prec } else { prec + 1 })?;
            lhs = self.binary(&op, is_bool, matching, group, lhs, rhs);
        }
        Ok(lhs)
    }

    fn binary(
        &mut self,
        op: &str,
        is_bool: bool,
        matching: Option<(String, Vec<String>)>,
        group: Option<(String, Vec<String>)>,
        lhs: Ty,
        rhs: Ty,
    ) -> Ty {
        let (l, r) = match (&lhs, &rhs) {
            (Ty::Scalar, Ty::Scalar) => return Ty::Scalar,
            (Ty::Vector(l), Ty::Scalar) => return Ty::Vector(l.clone()),
            (Ty::Scalar, Ty::Vector(r)) => return Ty::Vector(r.clone()),
            (Ty::Vector(l), Ty::Vector(r)) => (l.clone(), r.clone()),
        };
        let _ = is_bool;
        match &matching {
            Some((kw, ls)) if kw == "on" => {
                self.need_labels(&format!("{op} on"), ls, &lhs);
                self.need_labels(&format!("{op} on"), ls, &rhs);
            }
            Some((_, ls)) => {
                let both = Ty::Vector(l.union(&r).cloned().collect());
                self.need_labels(&format!("{op} ignoring"), ls, &both);
            }
            None if op != "or" && l != r => {
                let e = format!(
                    "`{op}` matches series one-to-one on all labels, but its sides have \
                     {l:?} and {r:?}: nothing would match, in {}",
                    self.src
                );
                self.err(e);
            }
            None => {}
        }
        match group {
            Some((kw, ls)) if kw == "group_left" => {
                self.need_labels("group_left", &ls, &rhs);
                Ty::Vector(l.into_iter().chain(ls).collect())
            }
            Some((_, ls)) => {
                self.need_labels("group_right", &ls, &lhs);
                Ty::Vector(r.into_iter().chain(ls).collect())
            }
            None if op == "or" => Ty::Vector(l.union(&r).cloned().collect()),
            None => Ty::Vector(l),
        }
    }

    fn unary(&mut self) -> Result<Ty, String> {
        if matches!(self.peek(), Some(Tok::Op(o)) if o == "-" || o == "+") {
            self.pos += 1;
            return self.unary();
        }
        let t = self.primary()?;
        // A range selector or subquery, then `offset <dur>`.
        if self.peek() == Some(&Tok::Range) {
            self.pos += 1;
        }
        if self.peek_ident(&["offset"]).is_some() {
            self.pos += 1;
            match self.next() {
                Some(Tok::Num) => {
                    // "5m" tokenizes as a number: digits then letters.
                }
                t => return Err(format!("bad offset {t:?} in {}", self.src)),
            }
        }
        Ok(t)
    }

    fn args(&mut self) -> Result<Vec<Ty>, String> {
        self.expect(Tok::LParen)?;
        let mut out = Vec::new();
        if self.peek() == Some(&Tok::RParen) {
            self.pos += 1;
            return Ok(out);
        }
        loop {
            if let Some(Tok::Str(_)) = self.peek() {
                self.pos += 1;
                out.push(Ty::Scalar);
            } else {
                out.push(self.expr(0)?);
            }
            match self.next() {
                Some(Tok::Comma) => {}
                Some(Tok::RParen) => return Ok(out),
                t => return Err(format!("expected , or ) at {t:?} in {}", self.src)),
            }
        }
    }

    fn primary(&mut self) -> Result<Ty, String> {
        match self.next() {
            Some(Tok::Num) => Ok(Ty::Scalar),
            Some(Tok::LParen) => {
                let t = self.expr(0)?;
                self.expect(Tok::RParen)?;
                Ok(t)
            }
            Some(Tok::Ident(name)) if AGGREGATIONS.contains(&name.as_str()) => {
                let mut clause = None;
                if let Some(kw) = self.peek_ident(&["by", "without"]) {
                    self.pos += 1;
                    clause = Some((kw, self.label_list()?));
                }
                let args = self.args()?;
                if clause.is_none()
                    && let Some(kw) = self.peek_ident(&["by", "without"])
                {
                    self.pos += 1;
                    clause = Some((kw, self.label_list()?));
                }
                let v = args.last().cloned().unwrap_or(Ty::Scalar);
                match clause {
                    Some((kw, ls)) => {
                        self.need_labels(&format!("{name} {kw}"), &ls, &v);
                        if kw == "by" {
                            Ok(Ty::Vector(ls.into_iter().collect()))
                        } else {
                            match v {
                                Ty::Vector(have) => Ok(Ty::Vector(
                                    have.into_iter().filter(|l| !ls.contains(l)).collect(),
                                )),
                                Ty::Scalar => Ok(Ty::Scalar),
                            }
                        }
                    }
                    None => Ok(Ty::Vector(Labels::new())),
                }
            }
            Some(Tok::Ident(name)) if self.peek() == Some(&Tok::LParen) => {
                let args = self.args()?;
                let first_vec = args.iter().find(|a| matches!(a, Ty::Vector(_))).cloned();
                match name.as_str() {
                    "histogram_quantile" => {
                        let v = args.get(1).cloned().unwrap_or(Ty::Scalar);
                        self.need_labels("histogram_quantile", &["le".to_owned()], &v);
                        match v {
                            Ty::Vector(mut ls) => {
                                ls.remove("le");
                                Ok(Ty::Vector(ls))
                            }
                            Ty::Scalar => Ok(Ty::Scalar),
                        }
                    }
                    "vector" => Ok(Ty::Vector(Labels::new())),
                    "scalar" | "time" => Ok(Ty::Scalar),
                    n if KEEP_LABELS.contains(&n) => {
                        first_vec.ok_or_else(|| format!("{n}() without a vector in {}", self.src))
                    }
                    n => Err(format!("function {n}() is not known to this check: add it")),
                }
            }
            Some(Tok::Ident(name)) => self.selector(name),
            t => Err(format!("unexpected {t:?} in {}", self.src)),
        }
    }

    fn selector(&mut self, name: String) -> Result<Ty, String> {
        let known = self.catalog.get(&name).cloned();
        if known.is_none() {
            let e = format!(
                "series {name} is not one moor (or kubelet) exports, in {}",
                self.src
            );
            self.err(e);
        }
        let mut used = Vec::new();
        if self.peek() == Some(&Tok::LBrace) {
            self.pos += 1;
            loop {
                match self.next() {
                    Some(Tok::RBrace) => break,
                    Some(Tok::Comma) => {}
                    Some(Tok::Ident(l)) => {
                        match self.next() {
                            Some(Tok::Op(o)) if ["=", "!=", "=~", "!~"].contains(&o.as_str()) => {}
                            t => return Err(format!("bad matcher at {t:?} in {}", self.src)),
                        }
                        match self.next() {
                            Some(Tok::Str(_)) => {}
                            t => {
                                return Err(format!(
                                    "matcher without a string {t:?} in {}",
                                    self.src
                                ));
                            }
                        }
                        used.push(l);
                    }
                    t => return Err(format!("bad matcher at {t:?} in {}", self.src)),
                }
            }
        }
        let labels = known.unwrap_or_default();
        for l in used {
            if !labels.contains(&l) {
                let e = format!("{name}{{{l}=…}}: {name} has no label {l:?} (it has {labels:?})");
                self.err(e);
            }
        }
        Ok(Ty::Vector(labels))
    }
}

/// Checks one expression: every error found, or its output type.
fn check_expr(expr: &str, catalog: &Catalog) -> Result<Ty, Vec<String>> {
    let toks = tokenize(expr).map_err(|e| vec![e])?;
    let mut p = Parser {
        toks,
        pos: 0,
        catalog,
        errors: Vec::new(),
        src: expr.trim().to_owned(),
    };
    let t = p.expr(0).map_err(|e| vec![e])?;
    if p.pos != p.toks.len() {
        p.errors
            .push(format!("trailing tokens {:?} in {expr}", &p.toks[p.pos..]));
    }
    if p.errors.is_empty() {
        Ok(t)
    } else {
        Err(p.errors)
    }
}

/// The `{{ name }}` / `{{ $labels.name }}` references of a template.
fn template_labels(text: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("{{") {
        let Some(j) = rest[i..].find("}}") else { break };
        let inner = rest[i + 2..i + j].trim();
        if let Some(l) = inner.strip_prefix(prefix) {
            let l: String = l
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !l.is_empty() {
                out.push(l);
            }
        }
        rest = &rest[i + j + 2..];
    }
    out
}

fn labels_missing(refs: &[String], out: &Ty) -> Vec<String> {
    match out {
        Ty::Vector(ls) => refs.iter().filter(|r| !ls.contains(*r)).cloned().collect(),
        Ty::Scalar => refs.to_vec(),
    }
}

// ---------------------------------------------------------------------------------------
// The kit.

fn dashboard() -> Value {
    let p = repo().join("packaging/monitoring/grafana/moor.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
        .unwrap_or_else(|e| panic!("{}: not JSON: {e}", p.display()))
}

fn rules() -> Value {
    let docs = yaml_docs(&repo().join("packaging/monitoring/prometheus/rules.yaml"));
    assert_eq!(docs.len(), 1, "one PrometheusRule");
    docs.into_iter().next().unwrap()
}

/// Every problem of the rules file against `catalog`; adds the recorded series to it.
fn check_rules(rule: &Value, catalog: &mut Catalog) -> Vec<String> {
    let mut errs = Vec::new();
    if rule["apiVersion"] != "monitoring.coreos.com/v1" || rule["kind"] != "PrometheusRule" {
        errs.push(format!(
            "not a PrometheusRule: {} {}",
            rule["apiVersion"], rule["kind"]
        ));
    }
    if !rule["metadata"]["name"].is_string() {
        errs.push("PrometheusRule without metadata.name".into());
    }
    let groups = rule["spec"]["groups"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if groups.is_empty() {
        errs.push("no spec.groups".into());
    }
    let all: Vec<Value> = groups
        .iter()
        .flat_map(|g| {
            if !g["name"].is_string() {
                errs.push(format!("a group without a name: {g}"));
            }
            g["rules"].as_array().cloned().unwrap_or_default()
        })
        .collect();
    // Recording rules first: alerts use what they record.
    for r in all.iter().filter(|r| r.get("record").is_some()) {
        let name = r["record"].as_str().unwrap_or_default();
        match check_expr(r["expr"].as_str().unwrap_or_default(), catalog) {
            Ok(Ty::Vector(ls)) => {
                catalog.insert(name.to_owned(), ls);
            }
            Ok(Ty::Scalar) => errs.push(format!("record {name}: a scalar")),
            Err(e) => errs.extend(e.into_iter().map(|e| format!("record {name}: {e}"))),
        }
    }
    let mut alerts = BTreeSet::new();
    for r in all.iter().filter(|r| r.get("alert").is_some()) {
        let name = r["alert"].as_str().unwrap_or_default().to_owned();
        if !alerts.insert(name.clone()) {
            errs.push(format!("alert {name} twice"));
        }
        let sev = r["labels"]["severity"].as_str().unwrap_or_default();
        if !["critical", "warning", "info"].contains(&sev) {
            errs.push(format!("alert {name}: severity {sev:?}"));
        }
        for a in ["summary", "description", "runbook"] {
            if r["annotations"][a].as_str().is_none_or(str::is_empty) {
                errs.push(format!("alert {name}: no {a} annotation"));
            }
        }
        let out = match check_expr(r["expr"].as_str().unwrap_or_default(), catalog) {
            Ok(t) => t,
            Err(e) => {
                errs.extend(e.into_iter().map(|e| format!("alert {name}: {e}")));
                continue;
            }
        };
        if !matches!(&out, Ty::Vector(ls) if ls.contains("node")) {
            errs.push(format!(
                "alert {name}: its series do not say which node ({out:?})"
            ));
        }
        let texts: String = ["summary", "description"]
            .iter()
            .map(|a| r["annotations"][*a].as_str().unwrap_or_default())
            .collect();
        for l in labels_missing(&template_labels(&texts, "$labels."), &out) {
            errs.push(format!(
                "alert {name}: an annotation names $labels.{l}, which its expression ({out:?}) does not keep"
            ));
        }
    }
    errs
}

/// Every problem of the dashboard against `catalog`.
fn check_dashboard(d: &Value, catalog: &Catalog) -> Vec<String> {
    let mut errs = Vec::new();
    let vars = d["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let var = |n: &str| vars.iter().find(|v| v["name"] == n).cloned();
    match var("datasource") {
        Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
        v => errs.push(format!("no Prometheus datasource variable: {v:?}")),
    }
    match var("node") {
        Some(v) => {
            let q = v["query"]["query"]
                .as_str()
                .or(v["query"].as_str())
                .unwrap_or_default();
            match q
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .and_then(|q| q.split_once(','))
            {
                Some((series, label)) => {
                    let label = label.trim();
                    match check_expr(series, catalog) {
                        Ok(t) if labels_missing(&[label.to_owned()], &t).is_empty() => {}
                        Ok(t) => {
                            errs.push(format!("variable node: {label} not on {series} ({t:?})"))
                        }
                        Err(e) => errs.extend(e),
                    }
                }
                None => errs.push(format!("variable node: query {q:?} is not label_values(…)")),
            }
        }
        None => errs.push("no node variable".into()),
    }
    let mut panels: Vec<Value> = Vec::new();
    for p in d["panels"].as_array().cloned().unwrap_or_default() {
        panels.extend(p["panels"].as_array().cloned().unwrap_or_default());
        panels.push(p);
    }
    let mut queried = 0;
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let title = p["title"].as_str().unwrap_or("(untitled)");
        if p["datasource"]["uid"] != "${datasource}" {
            errs.push(format!("panel {title}: datasource is not ${{datasource}}"));
        }
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            errs.push(format!("panel {title}: no query"));
        }
        for t in targets {
            let Some(expr) = t["expr"].as_str().filter(|e| !e.trim().is_empty()) else {
                errs.push(format!("panel {title}: a target without an expression"));
                continue;
            };
            queried += 1;
            match check_expr(expr, catalog) {
                Ok(out) => {
                    let legend = t["legendFormat"].as_str().unwrap_or_default();
                    for l in labels_missing(&template_labels(legend, ""), &out) {
                        errs.push(format!(
                            "panel {title}: legend {{{{{l}}}}} is not on {expr} ({out:?})"
                        ));
                    }
                    if !expr.contains("node=~\"$node\"") && !expr.contains("kubelet_volume_stats_")
                    {
                        errs.push(format!(
                            "panel {title}: does not follow the node variable: {expr}"
                        ));
                    }
                }
                Err(e) => errs.extend(e.into_iter().map(|e| format!("panel {title}: {e}"))),
            }
        }
    }
    if queried == 0 {
        errs.push("the dashboard has no queries".into());
    }
    errs
}

/// The kit against one catalog of moor's series: every problem.
fn check_kit(moor: &Catalog) -> Vec<String> {
    let mut c = full_catalog(moor);
    let mut errs = check_rules(&rules(), &mut c);
    errs.extend(check_dashboard(&dashboard(), &c));
    errs
}

/// Every moor and kubelet series name the kit's expressions use.
fn names_used() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for e in exprs() {
        for t in tokenize(&e).unwrap() {
            if let Tok::Ident(s) = t
                && (s.starts_with("moor_") || s.starts_with("kubelet_"))
            {
                out.insert(s);
            }
        }
    }
    out
}

/// Every expression of the rules and the dashboard.
fn exprs() -> Vec<String> {
    let mut out = Vec::new();
    for g in rules()["spec"]["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            out.push(r["expr"].as_str().unwrap().to_owned());
        }
    }
    for p in dashboard()["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(t["expr"].as_str().unwrap().to_owned());
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Tests.

/// A notice reason misspelt in a matcher selects nothing, and the alert never fires: every
/// `reason` value the kit matches `moor_notices_total` on is one moor counts.
#[test]
fn the_notice_reasons_the_kit_matches_are_moors() {
    let matcher = regex::Regex::new(r#"moor_notices_total\{[^}]*reason=~?"([^"]*)""#).unwrap();
    let mut seen = 0;
    for e in exprs() {
        for c in matcher.captures_iter(&e) {
            for v in c[1].split('|') {
                let r: Result<moor::cluster::NoticeReason, _> =
                    serde_json::from_value(serde_json::Value::String(v.into()));
                assert!(
                    r.is_ok_and(|r| r.label() == v),
                    "{e}: {v:?} is not a notice reason moor counts"
                );
                seen += 1;
            }
        }
    }
    assert!(
        seen > 0,
        "the kit matches no notice reason (else this proves nothing)"
    );
}

#[test]
fn the_kit_names_only_series_and_labels_moor_exports() {
    let (_, reg) = registry();
    let errs = check_kit(&reg);
    assert!(errs.is_empty(), "the monitoring kit:\n{}", errs.join("\n"));
    // What the brief asks the kit to show is there.
    let used = names_used();
    for want in [
        "moor_operations_total",
        "moor_operation_errors_total",
        "moor_operation_duration_seconds_bucket",
        "moor_stale_mounts_detected_total",
        "moor_heals_total",
        "moor_staged_volumes",
        "moor_published_volumes",
        "moor_volume_stats_capacity_bytes",
        "moor_volume_stats_used_bytes",
        "kubelet_volume_stats_capacity_bytes",
        "moor_notices_total",
        "moor_events_total",
        "moor_api_requests_total",
        "moor_dead_mount_pods",
        "moor_evictions_total",
        "moor_orphans_cleaned_total",
        "moor_journal_records_set_aside",
    ] {
        assert!(used.contains(want), "the kit does not show {want}");
    }
}

#[test]
fn a_wrong_name_or_label_is_caught() {
    let (_, reg) = registry();
    let c = full_catalog(&reg);
    for (expr, must_say) in [
        // A name moor does not export (singular `operation`).
        ("rate(moor_operation_total[5m])", "moor_operation_total"),
        // A matcher label the series does not have.
        (r#"moor_heals_total{reslt="failed"}"#, "reslt"),
        // A grouping label its operand does not have.
        ("sum by (drivr) (rate(moor_heals_total[5m]))", "drivr"),
        ("sum(rate(moor_heals_total[5m])) by (op)", "\"op\""),
        // A label dropped by an inner aggregation.
        (
            "max by (driver) (sum by (node) (moor_heals_total))",
            "\"driver\"",
        ),
        // A quantile over a series without buckets.
        (
            "histogram_quantile(0.99, rate(moor_operation_duration_seconds_sum[5m]))",
            "le",
        ),
        // One-to-one matching of series with different labels matches nothing.
        (
            "moor_volume_stats_used_bytes / moor_staged_volumes",
            "one-to-one",
        ),
        // `on` a label one side lacks.
        (
            "moor_heals_total / on (volume) moor_volume_stats_used_bytes",
            "\"volume\"",
        ),
        // kubelet's statistics have no `volume_key`.
        (
            "kubelet_volume_stats_used_bytes{volume_key=\"x\"}",
            "volume_key",
        ),
        // A function the check does not know is not waved through.
        (
            "predict_linear(moor_volume_stats_used_bytes[1h], 3600)",
            "predict_linear",
        ),
    ] {
        let errs = check_expr(expr, &c).expect_err(expr);
        assert!(
            errs.iter().any(|e| e.contains(must_say)),
            "{expr}: {errs:?} does not name {must_say}"
        );
    }
    // And what is right passes.
    for ok in [
        r#"sum by (node, driver) (increase(moor_heals_total{result="failed"}[15m])) > 0"#,
        "histogram_quantile(0.5, sum by (le, driver) (rate(moor_operation_duration_seconds_bucket[$__rate_interval])))",
        "(up{job=\"moor-metrics\"} == 0) and on (node) (max_over_time(up[1h]) == 1)",
    ] {
        check_expr(ok, &c).unwrap_or_else(|e| panic!("{ok}: {e:?}"));
    }
}

#[test]
fn a_wrong_rule_or_panel_is_caught() {
    let (_, reg) = registry();
    // An annotation naming a label its alert's expression aggregated away.
    let mut r = rules();
    let alert = r["spec"]["groups"][1]["rules"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|a| a["alert"] == "MoorHealFailing")
        .unwrap();
    alert["expr"] = "sum by (node) (increase(moor_heals_total{result=\"failed\"}[15m])) > 0".into();
    let errs = check_rules(&r, &mut full_catalog(&reg));
    assert!(
        errs.iter().any(|e| e.contains("$labels.driver")),
        "{errs:?}"
    );
    // An alert without severity, a recorded series with a typo used by an alert.
    let mut r = rules();
    let rs = r["spec"]["groups"][1]["rules"].as_array_mut().unwrap();
    rs[0]["labels"] = serde_json::json!({});
    for a in rs.iter_mut().filter(|a| a["alert"] == "MoorVolumeFull") {
        a["expr"] = "moor:volume_usd:ratio > 0.97".into();
    }
    let errs = check_rules(&r, &mut full_catalog(&reg));
    assert!(errs.iter().any(|e| e.contains("severity")), "{errs:?}");
    assert!(
        errs.iter().any(|e| e.contains("moor:volume_usd:ratio")),
        "{errs:?}"
    );
    // A panel without a query; a legend naming a dropped label; a panel off the node variable.
    let mut d = dashboard();
    let ps = d["panels"].as_array_mut().unwrap();
    let i = ps.iter().position(|p| p["type"] != "row").unwrap();
    ps[i]["targets"] = serde_json::json!([]);
    let j = ps
        .iter()
        .position(|p| p["title"] == "Heals by result")
        .unwrap();
    ps[j]["targets"][0]["legendFormat"] = "{{volume}}".into();
    let k = ps
        .iter()
        .position(|p| p["title"] == "Evictions by result")
        .unwrap();
    ps[k]["targets"][0]["expr"] = "sum by (driver, result) (moor_evictions_total)".into();
    let errs = check_dashboard(&d, &full_catalog(&reg));
    assert!(errs.iter().any(|e| e.contains("no query")), "{errs:?}");
    assert!(errs.iter().any(|e| e.contains("{{volume}}")), "{errs:?}");
    assert!(errs.iter().any(|e| e.contains("node variable")), "{errs:?}");
}

#[test]
fn a_label_the_operator_would_rename_is_caught() {
    let (_, reg) = registry();
    let moor_labels: Labels = reg.values().flatten().cloned().collect();
    let sm = service_monitor();
    let t = target_labels_of(&sm, &moor_labels).unwrap();
    assert!(
        t.contains("node") && t.contains("job") && t.contains("instance"),
        "{t:?}"
    );
    assert!(
        !t.contains("pod") && !t.contains("namespace"),
        "dropped: {t:?}"
    );
    // Without the labeldrop, moor's `namespace` (the volume's) and `pod` (the one holding a
    // dead mount) would be renamed by Prometheus: caught.
    let mut bare = sm.clone();
    bare["spec"]["endpoints"][0]["relabelings"]
        .as_array_mut()
        .unwrap()
        .retain(|r| r["action"] != "labeldrop");
    let e = target_labels_of(&bare, &moor_labels).unwrap_err();
    assert!(e.contains("namespace") || e.contains("pod"), "{e}");
}

#[test]
fn the_dashboard_and_rules_are_well_formed() {
    let d = dashboard();
    assert!(
        d["title"].is_string() && d["uid"].is_string(),
        "title and uid"
    );
    assert!(d["schemaVersion"].as_u64().unwrap() >= 30);
    let ids: Vec<u64> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    let unique: BTreeSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "panel ids are unique");
    for p in d["panels"].as_array().unwrap() {
        let g = &p["gridPos"];
        assert!(
            g["w"].as_u64().unwrap() > 0
                && g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "{}: gridPos {g}",
            p["title"]
        );
    }
    // The rules in the overlay are the file's: the component renders them unchanged.
    let out = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(repo().join("packaging/kubernetes/overlays/monitoring"))
        .output()
        .unwrap_or_else(|e| panic!("this test needs kubectl (its built-in kustomize): {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs =
        serde_saphyr::from_multiple::<Value>(&String::from_utf8(out.stdout).unwrap()).unwrap();
    let rendered: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "PrometheusRule")
        .collect();
    assert_eq!(rendered.len(), 1);
    assert_eq!(rendered[0]["spec"], rules()["spec"]);
    assert_eq!(rendered[0]["metadata"]["namespace"], "moor-system");
    let sm: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "ServiceMonitor")
        .collect();
    let svc: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "Service" && d["metadata"]["name"] == "moor-metrics")
        .collect();
    assert_eq!((sm.len(), svc.len()), (1, 1));
    // The alerts' `job="moor-metrics"` is the Service's name (the operator's job label).
    let r = serde_json::to_string(&rules()).unwrap();
    assert!(
        r.contains(r#"job=\"moor-metrics\""#),
        "MoorDown selects the Service's job"
    );
    assert_eq!(svc[0]["spec"]["clusterIP"], "None", "headless");
    assert_eq!(
        svc[0]["spec"]["ports"][0]["name"],
        sm[0]["spec"]["endpoints"][0]["port"]
    );
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn the_kit_matches_a_real_scrape_of_the_daemon() {
    use common::{Daemon, http_get, require_privileged_sandbox};
    use serde_json::json;
    require_privileged_sandbox();
    let (reg_expo, reg) = registry();
    let (d, port) = Daemon::start_with_metrics();
    let src = d.root.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // A mount, a refused mount (an error with a reason), an unmount.
    d.mount("pod1", "pv-a", json!({"path": src})).assert_ok();
    let bad = d.mount("pod2", "pv-b", json!({"path": src, "node": "elsewhere"}));
    assert!(
        bad.message().starts_with("wrong_node:"),
        "{}",
        bad.message()
    );
    // The volume statistics come with the reconciler's next pass (every second here).
    let text = (0..150)
        .map(|i| {
            if i > 0 {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            http_get(port, "/metrics")
        })
        .find(|t| t.contains("moor_volume_stats_capacity_bytes{"))
        .expect("volume statistics on /metrics within 15 s");
    d.unmount("pod1", "pv-a").assert_ok();
    let body = text
        .split_once("\r\n\r\n")
        .map_or(text.as_str(), |(_, b)| b);
    let scrape = parse_exposition(body);
    // The daemon serves the registry's families (those with a sample so far).
    for fam in scrape.families.keys() {
        assert!(
            reg_expo.families.contains_key(fam),
            "{fam} served but not in the registry"
        );
    }
    // What it sampled carries the registry's labels.
    for (name, labels) in &scrape.samples {
        assert_eq!(Some(labels), reg.get(name), "{name}: labels in the scrape");
    }
    for want in [
        "moor_operations_total",
        "moor_operation_errors_total",
        "moor_operation_duration_seconds_bucket",
        "moor_volume_stats_capacity_bytes",
    ] {
        assert!(
            scrape.samples.contains_key(want),
            "{want} sampled in:\n{body}"
        );
    }
    let c = catalog(&scrape, &reg);
    let errs = check_kit(&c);
    assert!(errs.is_empty(), "against the scrape:\n{}", errs.join("\n"));
}
