//! `moor gc`: orphaned pod volumes. Without `--pod` it only lists (a dry run): every publish
//! moor holds, what the API server says of its pod and what the daemon does about it. With
//! `--pod <uid>` it asks the daemon to clean those pods' volumes now, credentials or not;
//! the daemon refuses a pod the API server still lists or one with a live process here.
//!
//! Invariant: the exit status is non-zero whenever something asked for was not done
//! (refused, busy, failed), so a script can tell.

use std::path::Path;
use std::time::Duration;

use crate::api::{GcVolume, Request, Response, client};

use super::status::Output;

/// `moor gc --help`: the class, what the daemon does with and without credentials, what
/// `--pod` refuses.
pub const LONG_ABOUT: &str = "Orphaned pod volumes: a pod deleted while kubelet was down (or whose unmount \
failed) leaves moor's bind behind, and kubelet logs \"orphaned pod … volume paths are still \
present on disk\" forever.\n\n\
Without --pod, `moor gc` is a dry run: it lists every pod volume moor publishes, what the API \
server says of its pod (present, gone, unknown) and what the daemon does about it. With API \
credentials the daemon cleans pods confirmed gone by itself after gc.grace-seconds; without \
them it never guesses, and `moor gc --pod <uid>` is the way.\n\n\
With --pod, the named pods' volumes are unpublished through moor's own unmount path and their \
empty directories removed (rmdir only, up to pods/<uid>/volumes). A pod the API server still \
lists, or with a process alive in its cgroup on this node, is refused. Exit status 1 when \
anything could not be cleaned.";

/// `moor gc` arguments.
#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// Clean this pod's volumes (its UID, as `moor gc` lists it); repeat for several pods.
    #[arg(long = "pod", value_name = "UID")]
    pods: Vec<String>,
    /// With --pod: say what would be done, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    output: Output,
}

/// `moor gc` could not ask the daemon.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// The daemon could not be asked.
    #[error(transparent)]
    Client(#[from] client::ClientError),
    /// It refused the request.
    #[error("the daemon refused: {0}")]
    Refused(String),
    /// It answered something else.
    #[error("unexpected answer from the daemon: {0}")]
    Unexpected(String),
}

/// Runs `moor gc`; the exit status (1 when something could not be cleaned).
pub fn run(args: GcArgs) -> Result<i32, GcError> {
    let req = Request::Gc {
        pods: args.pods,
        dry_run: args.dry_run,
    };
    let resp = client::call(
        &client::socket_path(Path::new(crate::config::DEFAULT_CONFIG)),
        &req,
        // Cleaning unmounts (each bounded by the mount deadline) and may detach devices.
        Duration::from_secs(600),
    )?;
    let Response::Gc {
        volumes,
        dry_run,
        orphans,
        connected,
        grace_seconds,
    } = resp
    else {
        return match resp {
            Response::Failed(f) => Err(GcError::Refused(f.to_string())),
            other => Err(GcError::Unexpected(format!("{other:?}"))),
        };
    };
    match args.output {
        Output::Json => {
            let v = serde_json::json!({
                "volumes": volumes,
                "dry_run": dry_run,
                "orphans": orphans,
                "connected": connected,
                "grace_seconds": grace_seconds,
            });
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Output::Table => print!("{}", table(&volumes, orphans, connected, grace_seconds)),
    }
    Ok(i32::from(volumes.iter().any(GcVolume::failed)))
}

/// The table an operator reads, then what was removed or left per volume.
pub fn table(volumes: &[GcVolume], orphans: bool, connected: bool, grace: u64) -> String {
    let mut out = format!(
        "API credentials: {}; automatic cleaning of confirmed orphans: {} (grace {grace}s)\n",
        if connected {
            "yes"
        } else {
            "no (every pod is unknown)"
        },
        if orphans { "on" } else { "off" },
    );
    if volumes.is_empty() {
        out.push_str("no pod volumes\n");
        return out;
    }
    let header = ["POD", "POD-STATE", "DRIVER", "VOLUME", "ACTION", "DETAIL"];
    let rows: Vec<[String; 6]> = volumes
        .iter()
        .map(|v| {
            let state = match v.gone_seconds {
                Some(s) => format!("{} {s}s", v.pod),
                None => v.pod.clone(),
            };
            [
                v.pod_uid.clone(),
                state,
                v.driver.clone(),
                v.key.clone(),
                v.action.clone(),
                v.detail.clone(),
            ]
        })
        .collect();
    let mut width = header.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(width).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  "));
            }
        }
        l.push('\n');
        l
    };
    out.push_str(&line(&header));
    for (v, r) in volumes.iter().zip(&rows) {
        out.push_str(&line(&r.each_ref().map(String::as_str)));
        for d in &v.removed {
            out.push_str(&format!("  removed {d}\n"));
        }
        for d in &v.left {
            out.push_str(&format!("  left    {d}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_each_volume_and_what_was_left() {
        let v = GcVolume {
            pod_uid: "u1".into(),
            driver: "local".into(),
            key: "local-dir-x".into(),
            target: "/k/pods/u1/volumes/moor~local/v".into(),
            pod: "gone".into(),
            gone_seconds: Some(130),
            action: "cleaned".into(),
            detail: "unpublished, unstaged and detached".into(),
            removed: vec!["/k/pods/u1/volumes/moor~local/v".into()],
            left: vec!["/k/pods/u1/volumes/moor~local: not empty (other)".into()],
            ..GcVolume::default()
        };
        let t = table(std::slice::from_ref(&v), true, false, 120);
        assert!(t.contains("API credentials: no"), "{t}");
        assert!(t.contains("gone 130s"), "{t}");
        assert!(
            t.contains("  removed /k/pods/u1/volumes/moor~local/v\n"),
            "{t}"
        );
        assert!(
            t.contains("  left    /k/pods/u1/volumes/moor~local: not empty"),
            "{t}"
        );
        assert!(!v.failed());
        let refused = GcVolume {
            action: "refused".into(),
            ..v
        };
        assert!(refused.failed());
        assert!(table(&[], false, true, 120).contains("no pod volumes"));
    }
}
