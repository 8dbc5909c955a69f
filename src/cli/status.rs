//! `moor status`: the daemon's volumes as a table an operator reads (or JSON), and the
//! journal entries it set aside at start-up. The table is also what `moor demo` prints.

use std::path::Path;
use std::time::Duration;

use crate::api::{Request, Response, client};

/// How `moor status` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// The table.
    Table,
    /// JSON, for scripts.
    Json,
}

/// `moor status` could not get the table.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The daemon could not be asked.
    #[error(transparent)]
    Client(#[from] client::ClientError),
    /// It answered something else than a status.
    #[error("unexpected answer from the daemon: {0}")]
    Unexpected(String),
}

/// `moor status`: asks the daemon, prints the table (or JSON).
pub fn run(output: Output) -> Result<i32, StatusError> {
    let resp = client::call(
        &client::socket_path(Path::new(crate::config::DEFAULT_CONFIG)),
        &Request::Status,
        Duration::from_secs(10),
    )?;
    if output == Output::Json {
        let Some(v) = json(&resp) else {
            return Err(StatusError::Unexpected(format!("{resp:?}")));
        };
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(0);
    }
    let Response::Status {
        node,
        volumes,
        set_aside,
        notices,
        dead_mounts,
    } = resp
    else {
        return Err(StatusError::Unexpected(format!("{resp:?}")));
    };
    print!("{}", table(&node, &volumes));
    print!("{}", set_aside_table(&set_aside));
    print!("{}", dead_mounts_table(&dead_mounts));
    print!("{}", notices_table(&notices));
    Ok(0)
}

/// `moor status -o json` (and the bundle's `status.json`): the answer's fields, every list
/// present even when empty; `None` for another answer.
pub fn json(resp: &Response) -> Option<serde_json::Value> {
    if !matches!(resp, Response::Status { .. }) {
        return None;
    }
    let mut v = serde_json::to_value(resp).ok()?;
    let o = v.as_object_mut()?;
    o.remove("kind");
    for list in ["volumes", "set_aside", "dead_mounts", "notices"] {
        o.entry(list).or_insert_with(|| serde_json::json!([]));
    }
    Some(v)
}

/// Renders the volume table.
pub fn table(node: &str, volumes: &[crate::api::VolumeStatus]) -> String {
    let mut rows = vec![[
        "DRIVER".to_owned(),
        "VOLUME".to_owned(),
        "STATE".to_owned(),
        "DEVICE".to_owned(),
        "FS".to_owned(),
        "PODS".to_owned(),
    ]];
    for v in volumes {
        let pods = if v.pods.is_empty() {
            "-".to_owned()
        } else {
            v.pods
                .iter()
                .map(|p| {
                    format!(
                        "{}({})",
                        short_uid(&p.pod_uid),
                        if p.read_only { "ro" } else { "rw" }
                    )
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        rows.push([
            v.driver.clone(),
            v.key.clone(),
            v.state.clone(),
            v.device.clone().unwrap_or_else(|| v.source.clone()),
            v.fs_type.clone().unwrap_or_else(|| "-".into()),
            pods,
        ]);
    }
    let mut widths = [0usize; 6];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = format!("node {node}: {} volume(s)\n", volumes.len());
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Journal entries set aside at start-up, after the volume table (nothing when none).
pub fn set_aside_table(entries: &[crate::api::SetAsideRecord]) -> String {
    if entries.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "\n{} journal entr{} set aside (kept on disk; inspect, then remove):\n",
        entries.len(),
        if entries.len() == 1 { "y" } else { "ies" }
    );
    for e in entries {
        out.push_str(&format!("  {}  {}: {}\n", e.path, e.reason, e.detail));
    }
    out
}

/// Pods still holding a healed share's dead mount (nothing when none): each needs a restart
/// of its pod, or an eviction moor makes when the operator opted in.
pub fn dead_mounts_table(dead: &[crate::api::DeadMount]) -> String {
    if dead.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "\n{} pod(s) still hold a dead mount (restart them, or see heal.evict-pods):\n",
        dead.len()
    );
    out.push_str(&format!(
        "{:<10} {:<40} {:<38} {:>8}  {}\n",
        "DRIVER", "POD", "VOLUME", "SINCE", "ACTION"
    ));
    for d in dead {
        let pod = match (d.namespace.is_empty(), d.pod.is_empty()) {
            (false, false) => format!("{}/{}", d.namespace, d.pod),
            _ => d.pod_uid.clone(),
        };
        out.push_str(&format!(
            "{:<10} {:<40} {:<38} {:>7}s  {}\n",
            d.driver, pod, d.volume, d.since_heal_secs, d.action
        ));
    }
    out
}

/// Recent notices, after the tables (nothing when none): what an operator must know.
pub fn notices_table(notices: &[crate::api::notice::RecentNotice]) -> String {
    if notices.is_empty() {
        return String::new();
    }
    let mut out = format!("\n{} recent notice(s), newest last:\n", notices.len());
    for n in notices {
        let what = n.notice.volume.as_deref().unwrap_or("-");
        out.push_str(&format!(
            "  {:<8} {:<16} {}  {} (x{})\n",
            n.notice.reason.severity().event_type(),
            n.notice.reason.event_reason(),
            what,
            n.notice.message,
            n.count
        ));
    }
    out
}

fn short_uid(uid: &str) -> &str {
    uid.get(..8).unwrap_or(uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DeadMount;

    #[test]
    fn the_json_has_every_list_even_empty_and_no_wire_tag() {
        let v = json(&Response::Status {
            node: "n1".into(),
            volumes: vec![],
            set_aside: vec![],
            notices: vec![],
            dead_mounts: vec![],
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"node": "n1", "volumes": [], "set_aside": [], "dead_mounts": [], "notices": []})
        );
        assert!(json(&Response::Done).is_none());
    }

    #[test]
    fn dead_mounts_are_listed_by_pod_name_or_uid() {
        assert_eq!(dead_mounts_table(&[]), "");
        let row = |ns: &str, pod: &str| DeadMount {
            volume: "glusterfs-vol1".into(),
            driver: "glusterfs".into(),
            pod_uid: "1b2c3d4e-0000-4abc-8def-0123456789ab".into(),
            namespace: ns.into(),
            pod: pod.into(),
            since_heal_secs: 42,
            action: "reported".into(),
        };
        let t = dead_mounts_table(&[row("team-a", "web-0"), row("", "")]);
        assert!(t.contains("2 pod(s) still hold a dead mount"), "{t}");
        assert!(t.contains("team-a/web-0"), "{t}");
        assert!(t.contains("1b2c3d4e-0000-4abc-8def-0123456789ab"), "{t}");
        assert!(t.contains("42s  reported"), "{t}");
    }
}
