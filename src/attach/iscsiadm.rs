//! open-iscsi's `iscsiadm`: pure argv builders, the portal-list parser, and where the
//! node and discovery records live.
//!
//! Invariant: no builder here ever puts a CHAP secret on argv. Secrets reach open-iscsi
//! through the record files (`/etc/iscsi/nodes/<iqn>/<ip>,<port>,<tpgt>/<iface>` and
//! `/etc/iscsi/send_targets/<ip>,<port>/st_config`), rewritten 0600 by
//! [`crate::host::scsi::update_record`]: iscsiadm reads the record at login/discovery time,
//! so `-o update -n …password -v <secret>` (which would show in `ps`) is never needed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::host::Cmd;
use crate::volume::OptionsError;
use crate::volume::validate;

/// iscsiadm exit status: a session to that target and portal already exists.
pub const ERR_SESS_EXISTS: i32 = 15;
/// iscsiadm exit status: no matching session/record (`logout` of a gone session).
pub const ERR_NO_OBJS_FOUND: i32 = 21;
/// iscsiadm exit status: login authorization failed (wrong CHAP secret).
pub const ERR_LOGIN_AUTH_FAILED: i32 = 24;

/// Deadline for one iscsiadm call: iscsid's own login timeout is 15 s per attempt.
pub const TIMEOUT: Duration = Duration::from_secs(45);

/// A portal `host:port` (IPv6 in brackets), port 3260 when absent: part of the typed volume.
pub use crate::volume::state::Portal;

/// What `portals` accepts.
const PORTALS: &str = r#"expected ["host:port",…] or host:port,host:port, each host a DNS name, an IPv4 address or a bracketed IPv6 address, port 1-65535"#;

/// Parses the in-tree `portals` value of option `key`: `["a:3260","b:3260"]`, `[a:3260, b]`
/// or `a,b`; every item through the shared `host[:port]` validator.
pub fn portals_option(key: &str, s: &str) -> Result<Vec<Portal>, OptionsError> {
    let inner = s.trim();
    let inner = inner
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(inner);
    let mut out = Vec::new();
    for item in inner.split(',') {
        let item = item.trim().trim_matches('"').trim_matches('\'').trim();
        if item.is_empty() {
            continue;
        }
        out.push(
            Portal::from_option(key, item).map_err(|_| OptionsError::Invalid {
                key: key.into(),
                value: validate::shown(s),
                expected: PORTALS,
            })?,
        );
    }
    Ok(out)
}

/// [`portals_option`] without the message.
pub fn parse_portals(s: &str) -> Option<Vec<Portal>> {
    portals_option("portals", s).ok()
}

/// Whether an IQN/EUI/NAA name is acceptable (the shared iSCSI name validator).
pub fn valid_target_name(s: &str) -> bool {
    validate::iscsi_name("iqn", s).is_ok()
}

/// Whether an iface name is acceptable (the shared iface validator).
pub fn valid_iface(s: &str) -> bool {
    validate::iscsi_iface("iscsiInterface", s).is_ok()
}

fn iscsiadm() -> Cmd {
    Cmd::new("iscsiadm").timeout(TIMEOUT)
}

/// `iscsiadm -m discoverydb -t sendtargets -p P -I IF`, the start of both discovery calls.
fn discoverydb(p: &Portal, iface: &str) -> Cmd {
    iscsiadm().args([
        "-m",
        "discoverydb",
        "-t",
        "sendtargets",
        "-p",
        &p.arg(),
        "-I",
        iface,
    ])
}

/// `iscsiadm -m discoverydb -t sendtargets -p P -I IF -o new`: the discovery record
/// (so discovery CHAP can be written to its file before discovering).
pub fn discoverydb_new(p: &Portal, iface: &str) -> Cmd {
    discoverydb(p, iface).args(["-o", "new"])
}

/// `iscsiadm -m discoverydb -t sendtargets -p P -I IF --discover -o new -o update`:
/// creates or updates node records without deleting others (never `-o delete`: another
/// volume may use a record this portal no longer advertises).
pub fn discover(p: &Portal, iface: &str) -> Cmd {
    discoverydb(p, iface).args(["--discover", "-o", "new", "-o", "update"])
}

/// `iscsiadm -m node -T IQN -p P -I IF --login`.
pub fn login(iqn: &str, p: &Portal, iface: &str) -> Cmd {
    iscsiadm().args([
        "-m",
        "node",
        "-T",
        iqn,
        "-p",
        &p.arg(),
        "-I",
        iface,
        "--login",
    ])
}

/// `iscsiadm -m node -T IQN -p P -I IF --logout`.
pub fn logout(iqn: &str, p: &Portal, iface: &str) -> Cmd {
    iscsiadm().args([
        "-m",
        "node",
        "-T",
        iqn,
        "-p",
        &p.arg(),
        "-I",
        iface,
        "--logout",
    ])
}

/// The node record directory `<iscsi_dir>/nodes/<iqn>/<ip>,<port>,<tpgt>` for a portal,
/// whatever its TPGT (discovery wrote it; we find it by prefix).
pub fn node_record(iscsi_dir: &Path, iqn: &str, p: &Portal, iface: &str) -> Option<PathBuf> {
    let dir = iscsi_dir.join("nodes").join(iqn);
    let prefix = format!("{},{},", p.host, p.port);
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path().join(iface))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.into_iter().next()
}

/// The sendtargets discovery record `<iscsi_dir>/send_targets/<ip>,<port>/st_config`.
pub fn discovery_record(iscsi_dir: &Path, p: &Portal) -> PathBuf {
    iscsi_dir
        .join("send_targets")
        .join(format!("{},{}", p.host, p.port))
        .join("st_config")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portals_parse_in_every_kubernetes_spelling() {
        let want = vec![
            Portal {
                host: "10.0.0.1".into(),
                port: 3260,
            },
            Portal {
                host: "10.0.0.2".into(),
                port: 3261,
            },
        ];
        assert_eq!(
            parse_portals(r#"["10.0.0.1:3260","10.0.0.2:3261"]"#),
            Some(want.clone())
        );
        assert_eq!(parse_portals("10.0.0.1, 10.0.0.2:3261"), Some(want.clone()));
        assert_eq!(parse_portals("[10.0.0.1, 10.0.0.2:3261]"), Some(want));
        assert_eq!(parse_portals("[]"), Some(vec![]));
        assert_eq!(parse_portals("10.0.0.1:x"), None);
        assert_eq!(parse_portals("a b"), None);
        assert_eq!(
            Portal::parse("[fd00::1]:3260").map(|p| p.arg()),
            Some("[fd00::1]:3260".into())
        );
    }

    #[test]
    fn a_portal_never_reads_as_an_option() {
        // Found by the iscsi fuzz target: `-` parsed as a host, giving `-p -:3260`.
        for bad in [
            "-",
            "-u",
            "--login",
            "-u:3260",
            "[-u]:3260",
            "[-x]",
            ".a:3260",
            " -u ",
        ] {
            assert_eq!(Portal::parse(bad), None, "{bad}");
            assert_eq!(parse_portals(&format!("10.0.0.1,{bad}")), None, "{bad}");
        }
        for good in ["a-b.example", "10.0.0.1:3260", "[::1]", "[fd00::1]:3261"] {
            let p = Portal::parse(good).unwrap();
            assert!(!p.arg().starts_with('-'), "{good}");
        }
    }

    #[test]
    fn target_names_are_checked() {
        assert!(valid_target_name("iqn.2003-01.org.linux-iscsi.lab:disk1"));
        assert!(!valid_target_name("iqn.x/../../etc"));
        assert!(!valid_target_name("disk1"));
        assert!(valid_iface("default"));
        assert!(!valid_iface("a/b"));
    }

    #[test]
    fn argv_never_carries_a_secret_and_login_is_exact() {
        let p = Portal::parse("10.0.0.1").unwrap();
        assert_eq!(
            login("iqn.t:x", &p, "default").display(),
            "iscsiadm -m node -T iqn.t:x -p 10.0.0.1:3260 -I default --login"
        );
        assert_eq!(
            discover(&p, "default").display(),
            "iscsiadm -m discoverydb -t sendtargets -p 10.0.0.1:3260 -I default --discover -o new -o update"
        );
    }

    #[test]
    fn node_record_found_whatever_the_tpgt() {
        let d = tempfile::tempdir().unwrap();
        let rec = d.path().join("nodes/iqn.t:x/10.0.0.1,3260,1");
        std::fs::create_dir_all(&rec).unwrap();
        std::fs::write(rec.join("default"), "node.name = iqn.t:x\n").unwrap();
        let p = Portal::parse("10.0.0.1:3260").unwrap();
        assert_eq!(
            node_record(d.path(), "iqn.t:x", &p, "default"),
            Some(rec.join("default"))
        );
        let other = Portal::parse("10.0.0.11:3260").unwrap();
        assert_eq!(node_record(d.path(), "iqn.t:x", &other, "default"), None);
    }
}
