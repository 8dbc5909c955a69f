//! Pod namespaces from kubelet's pod log directories (`/var/log/pods/<namespace>_<pod>_<uid>`):
//! a source of a pod's namespace that neither a pod's author nor its volume options can write,
//! for nodes where moor has no API credentials.
//!
//! Invariant: a namespace is returned only from a directory whose name splits into exactly
//! three non-empty parts (namespaces and pod names cannot contain `_`) and whose namespace
//! is a valid DNS label; anything else in the directory is ignored.

use std::collections::HashMap;
use std::path::Path;

/// kubelet's default pod log directory.
pub const DEFAULT_POD_LOG_DIR: &str = "/var/log/pods";

/// The namespace and pod UID named by one pod log directory name.
pub fn parse_dir_name(name: &str) -> Option<(&str, &str)> {
    let mut parts = name.split('_');
    let (ns, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
    let dns_label = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    };
    (parts.next().is_none() && dns_label(ns) && !pod.is_empty() && !uid.is_empty())
        .then_some((ns, uid))
}

/// Pod UID → namespace for every pod log directory under `dir` (one `readdir`). A missing
/// directory is no pods.
pub fn namespaces(dir: &Path) -> std::io::Result<HashMap<String, String>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(e),
    };
    let mut out = HashMap::new();
    for e in rd {
        let e = e?;
        // kubelet makes directories; a file or symlink of that name is not its.
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = e.file_name();
        if let Some((ns, uid)) = name.to_str().and_then(parse_dir_name) {
            out.insert(uid.to_owned(), ns.to_owned());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_kubelet_names_give_a_namespace() {
        assert_eq!(
            parse_dir_name("team-a_web-0_0b6f1c1e-2f0e-4c53-9a43-3c1e0f0a1b2c"),
            Some(("team-a", "0b6f1c1e-2f0e-4c53-9a43-3c1e0f0a1b2c"))
        );
        for bad in [
            "team-a_web-0",
            "team-a_web_0_uid",
            "_web-0_uid",
            "Team_web_uid",
            "team.a_web_uid",
            "team-a__uid",
            "team-a_web_",
            "-x_web_uid",
        ] {
            assert_eq!(parse_dir_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn directories_only_and_a_missing_dir_is_empty() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("team-a_web-0_uid-1")).unwrap();
        std::fs::write(t.path().join("kube-system_forged_uid-2"), "").unwrap();
        std::os::unix::fs::symlink(
            t.path().join("team-a_web-0_uid-1"),
            t.path().join("kube-system_link_uid-3"),
        )
        .unwrap();
        let m = namespaces(t.path()).unwrap();
        assert_eq!(m.len(), 1, "{m:?}");
        assert_eq!(m["uid-1"], "team-a");
        assert!(namespaces(&t.path().join("nope")).unwrap().is_empty());
    }
}
