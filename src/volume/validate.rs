//! One validator per kind of value a driver hands to a tool: a `host[:port]`, a Ceph monitor
//! list, an NFS server, an iSCSI name (IQN/EUI/NAA), an FC WWN or WWID, a LUN, an iSCSI iface,
//! a Ceph or GlusterFS name, a path inside an export, a file on the node, a `mountOptions`
//! word. Every driver that takes a value of a kind uses the same validator, and the drivers'
//! `volume()` run them before anything is spawned or written. They are pure (no I/O), so
//! the FlexVolume front end can run them without the daemon.
//!
//! Invariant: nothing a validator accepts is empty, starts with `-` (a tool would read it as
//! an option), or holds whitespace, a control character (NUL included), `,`, `;`, `$`, a
//! backtick, a quote or `\`; the typed values round-trip (formatting what was parsed and
//! parsing it again gives the same value). A refusal is `bad_options: option <key>=<value>:
//! expected …`.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::options::OptionsError;

/// Characters no accepted value holds, beside whitespace and control characters: the tools'
/// list separators and what a shell (or a script a tool runs, such as `mount.glusterfs`)
/// would interpret.
pub const FORBIDDEN: &[char] = &[',', ';', '$', '`', '\'', '"', '\\'];

/// Whether `c` may never appear in an accepted value.
pub fn is_forbidden(c: char) -> bool {
    c.is_whitespace() || c.is_control() || FORBIDDEN.contains(&c)
}

/// The longest value any validator accepts (bounded work, bounded messages).
const MAX_LEN: usize = 4096;

/// How much of a refused value a message echoes.
const SHOWN_LEN: usize = 256;

/// A refused value as a message shows it: control characters escaped (a newline in an
/// option must not start a line of its own in a log), cut after [`SHOWN_LEN`] characters.
pub fn shown(value: &str) -> String {
    let mut out = String::new();
    for (i, c) in value.chars().enumerate() {
        if i == SHOWN_LEN {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn invalid(key: &str, value: &str, expected: &'static str) -> OptionsError {
    OptionsError::Invalid {
        key: key.into(),
        value: shown(value),
        expected,
    }
}

/// What `host[:port]` accepts (the message names the option before it).
pub const HOST_PORT: &str = "expected host[:port]: a DNS name, an IPv4 address or a bracketed IPv6 address ([fd00::1]:3260), port 1-65535";
/// What a monitor list accepts.
pub const MONITORS: &str = "expected a comma-separated list of monitors, each host[:port] (a DNS name, an IPv4 address or a bracketed IPv6 address, port 1-65535); v1:/v2: prefixes and [v2:…,v1:…] address vectors are not accepted, name the port instead (3300 for msgr2)";
/// What an NFS server accepts.
pub const NFS_SERVER: &str = "expected an NFS server: a DNS name, an IPv4 address or an IPv6 address (bare or in brackets), without a port (use mountOptions port=)";
/// What a GlusterFS endpoint list accepts.
pub const ENDPOINTS: &str = "expected a comma-separated list of host names or IPv4 addresses (no ports: mount.glusterfs joins backup servers with ':')";

/// A DNS name, an IPv4 address or an IPv6 address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostName {
    /// A DNS name (RFC 1123 labels; `_` allowed, as in service names), case kept.
    Name(String),
    /// An IPv4 address in dotted-quad form.
    V4(Ipv4Addr),
    /// An IPv6 address (no zone id).
    V6(Ipv6Addr),
}

impl HostName {
    /// The form for `host:port` and mount sources: an IPv6 address in brackets.
    pub fn bracketed(&self) -> String {
        match self {
            HostName::V6(a) => format!("[{a}]"),
            other => other.to_string(),
        }
    }
}

impl std::fmt::Display for HostName {
    /// The bare form (an IPv6 address without brackets), as sysfs and iscsiadm print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostName::Name(n) => f.write_str(n),
            HostName::V4(a) => write!(f, "{a}"),
            HostName::V6(a) => write!(f, "{a}"),
        }
    }
}

/// A DNS name: 1-253 characters, dot-separated labels of 1-63 letters, digits, `-` or `_`,
/// no label starting or ending with `-`, and a last label that is not all digits (so
/// `10.0.0` or `300.1.1.1` is neither a name nor silently an address).
fn dns_name(s: &str) -> Option<String> {
    if s.is_empty() || s.len() > 253 {
        return None;
    }
    let labels: Vec<&str> = s.split('.').collect();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    let last_numeric = labels
        .last()
        .is_some_and(|l| l.chars().all(|c| c.is_ascii_digit()));
    (labels.iter().all(|l| label_ok(l)) && !last_numeric).then(|| s.to_owned())
}

/// An IPv4 address in strict dotted-quad form (no octal, no short forms).
fn ipv4(s: &str) -> Option<Ipv4Addr> {
    // std refuses leading zeros and short forms, which inet_aton would read differently.
    s.parse().ok()
}

/// An IPv6 address without brackets or zone id.
fn ipv6(s: &str) -> Option<Ipv6Addr> {
    if s.is_empty() || !s.chars().all(|c| c.is_ascii_hexdigit() || ".:".contains(c)) {
        return None;
    }
    s.parse().ok()
}

/// A name or an IPv4 address (no IPv6).
fn name_or_v4(s: &str) -> Option<HostName> {
    if let Some(a) = ipv4(s) {
        return Some(HostName::V4(a));
    }
    dns_name(s).map(HostName::Name)
}

/// A TCP port: 1-5 digits, 1-65535 (no sign, which `u16::from_str` would take).
fn port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|p| *p != 0)
}

/// A host and an optional port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPort {
    /// The host.
    pub host: HostName,
    /// The port, when one was given.
    pub port: Option<u16>,
}

impl HostPort {
    /// The port, or `default` (the use's default: 3260 for iSCSI).
    pub fn port_or(&self, default: u16) -> u16 {
        self.port.unwrap_or(default)
    }
}

impl std::fmt::Display for HostPort {
    /// `name[:port]`, `1.2.3.4[:port]`, `[fd00::1][:port]`: the form it was parsed from.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.host.bracketed())?;
        match self.port {
            Some(p) => write!(f, ":{p}"),
            None => Ok(()),
        }
    }
}

fn parse_host_port(s: &str) -> Option<HostPort> {
    if let Some(rest) = s.strip_prefix('[') {
        let (h, tail) = rest.split_once(']')?;
        let host = HostName::V6(ipv6(h)?);
        let port = match tail {
            "" => None,
            t => Some(port(t.strip_prefix(':')?)?),
        };
        return Some(HostPort { host, port });
    }
    // An unbracketed IPv6 address cannot be told from host:port: refused, not guessed.
    let (h, p) = match s.split_once(':') {
        Some((h, p)) => (h, Some(port(p)?)),
        None => (s, None),
    };
    Some(HostPort {
        host: name_or_v4(h)?,
        port: p,
    })
}

/// `host[:port]` for option `key` (an iSCSI portal, one monitor): a DNS name, an IPv4
/// address or a bracketed IPv6 address, optionally `:port` (1-65535).
pub fn host_port(key: &str, value: &str) -> Result<HostPort, OptionsError> {
    let v = value.trim();
    if v.len() > MAX_LEN {
        return Err(invalid(key, value, HOST_PORT));
    }
    parse_host_port(v).ok_or_else(|| invalid(key, value, HOST_PORT))
}

/// A Ceph monitor list (rbd's `-m`, the kernel CephFS source, ceph-fuse's `mon_host`):
/// comma-separated `host[:port]`, items trimmed, duplicates dropped (first kept, so the
/// user's order holds). An empty item is refused (a doubled or trailing comma is a typo
/// that would otherwise change which monitors are named). `v1:`/`v2:` prefixes and
/// `[v2:…,v1:…]` address vectors are refused: the kernel CephFS client does not read them,
/// and one list must mean the same to rbd and to CephFS.
pub fn monitors(key: &str, value: &str) -> Result<Vec<HostPort>, OptionsError> {
    if value.len() > MAX_LEN {
        return Err(invalid(key, value, MONITORS));
    }
    let mut out: Vec<HostPort> = Vec::new();
    for item in value.split(',').map(str::trim) {
        let m = parse_host_port(item).ok_or_else(|| invalid(key, value, MONITORS))?;
        if !out.contains(&m) {
            out.push(m);
        }
    }
    Ok(out)
}

/// Formats a monitor list as [`monitors`] reads it.
pub fn format_monitors(m: &[HostPort]) -> String {
    m.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// An NFS server: a DNS name, an IPv4 address, or an IPv6 address with or without
/// brackets; no port (mount.nfs takes `port=`). mount(8) gets it as
/// [`HostName::bracketed`] before `:/export`.
pub fn nfs_server(key: &str, value: &str) -> Result<HostName, OptionsError> {
    let v = value.trim();
    let inner = match v.strip_prefix('[') {
        Some(rest) => Some(
            rest.strip_suffix(']')
                .ok_or_else(|| invalid(key, value, NFS_SERVER))?,
        ),
        None => None,
    };
    let host = match inner {
        Some(i) => ipv6(i).map(HostName::V6),
        None => ipv6(v).map(HostName::V6).or_else(|| name_or_v4(v)),
    };
    host.ok_or_else(|| invalid(key, value, NFS_SERVER))
}

/// GlusterFS endpoints: comma-separated host names or IPv4 addresses, trimmed, empty items
/// dropped, duplicates dropped (first kept); at least one.
pub fn endpoints(key: &str, value: &str) -> Result<Vec<HostName>, OptionsError> {
    if value.len() > MAX_LEN {
        return Err(invalid(key, value, ENDPOINTS));
    }
    let mut out: Vec<HostName> = Vec::new();
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let h = name_or_v4(item).ok_or_else(|| invalid(key, value, ENDPOINTS))?;
        if !out.contains(&h) {
            out.push(h);
        }
    }
    if out.is_empty() {
        return Err(invalid(key, value, ENDPOINTS));
    }
    Ok(out)
}

/// What an iSCSI name accepts.
pub const ISCSI_NAME: &str = "expected an iSCSI name (RFC 3720): iqn.YYYY-MM.reversed.domain[:unique] (letters, digits, '.', '-', ':'; also '_' after the ':'), eui. and 16 hex digits, or naa. and 16 or 32 hex digits; at most 223 bytes";

/// An iSCSI name (RFC 3720 §3.2.6.3, RFC 3721): `iqn.YYYY-MM.<reversed domain>[:<unique>]`,
/// `eui.<16 hex>` or `naa.<16 or 32 hex>`, at most 223 bytes; case is kept (targets compare
/// it as given). Target names (`iqn`) and initiator names (`initiatorName`) alike.
pub fn iscsi_name(key: &str, value: &str) -> Result<String, OptionsError> {
    let ok = |s: &str| -> bool {
        if s.len() > 223 {
            return false;
        }
        let hex = |h: &str| h.chars().all(|c| c.is_ascii_hexdigit());
        if let Some(h) = s.strip_prefix("eui.") {
            return h.len() == 16 && hex(h);
        }
        if let Some(h) = s.strip_prefix("naa.") {
            return (h.len() == 16 || h.len() == 32) && hex(h);
        }
        let Some(rest) = s.strip_prefix("iqn.") else {
            return false;
        };
        let (authority, unique) = match rest.split_once(':') {
            Some((a, u)) => (a, Some(u)),
            None => (rest, None),
        };
        let Some((date, domain)) = authority.split_once('.') else {
            return false;
        };
        let date_ok = date.len() == 7
            && date.is_ascii()
            && date.as_bytes()[4] == b'-'
            && date[..4].chars().all(|c| c.is_ascii_digit())
            && date[5..].chars().all(|c| c.is_ascii_digit())
            && matches!(date[5..].parse::<u8>(), Ok(1..=12));
        let label_ok = |l: &str| {
            !l.is_empty()
                && !l.starts_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        // RFC 3720 has no '_', but targets in the field use it in the unique part (TrueNAS
        // target names, for one); it is no argv or record hazard, so it is accepted there.
        let unique_ok = unique.is_none_or(|u| {
            !u.is_empty()
                && u.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:_".contains(c))
        });
        date_ok && domain.split('.').all(label_ok) && unique_ok
    };
    if ok(value) {
        Ok(value.to_owned())
    } else {
        Err(invalid(key, value, ISCSI_NAME))
    }
}

/// What an iSCSI iface name accepts.
pub const ISCSI_IFACE: &str =
    "expected an iface name: 1-64 letters, digits, '.', '_' or '-', not starting with '-' or '.'";

/// An open-iscsi iface name (it becomes a file name under `/etc/iscsi/ifaces` and the nodes'
/// record directories).
pub fn iscsi_iface(key: &str, value: &str) -> Result<String, OptionsError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && !value.starts_with(['-', '.'])
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    ok.then(|| value.to_owned())
        .ok_or_else(|| invalid(key, value, ISCSI_IFACE))
}

/// What a LUN accepts.
pub const LUN: &str = "expected a LUN number 0-16383";

/// A LUN: digits only (no sign), 0-16383 (the SCSI flat-space addressing limit).
pub fn lun(key: &str, value: &str) -> Result<u64, OptionsError> {
    let ok = !value.is_empty() && value.len() <= 5 && value.chars().all(|c| c.is_ascii_digit());
    ok.then(|| value.parse::<u64>().ok())
        .flatten()
        .filter(|l| *l < 16384)
        .ok_or_else(|| invalid(key, value, LUN))
}

/// What a WWN accepts.
pub const WWN: &str = "expected WWNs of 16 hex digits (optionally 0x-prefixed, or as 8 colon-separated pairs), comma-separated";

/// A Fibre Channel WWN: 16 hex digits, optionally `0x`-prefixed or written as 8
/// colon-separated pairs (`50:06:01:60:3b:a0:12:34`). Canonical form: 16 lowercase hex
/// digits, no prefix — what sysfs `port_name` reads as once its `0x` is dropped.
pub fn wwn(key: &str, value: &str) -> Result<String, OptionsError> {
    let v = value.trim();
    let v = v
        .strip_prefix("0x")
        .or_else(|| v.strip_prefix("0X"))
        .unwrap_or(v);
    let digits: Option<String> = if v.contains(':') {
        let pairs: Vec<&str> = v.split(':').collect();
        (pairs.len() == 8 && pairs.iter().all(|p| p.len() == 2)).then(|| pairs.concat())
    } else {
        Some(v.to_owned())
    };
    digits
        .filter(|d| d.len() == 16 && d.chars().all(|c| c.is_ascii_hexdigit()))
        .map(|d| d.to_ascii_lowercase())
        .ok_or_else(|| invalid(key, value, WWN))
}

/// What a WWID accepts.
pub const WWID: &str = "expected WWIDs (naa.…, eui.…, t10.… with '_' for spaces, or multipath's 3…/2…/1… form): letters, digits, '.', '_', ':' or '-', not starting with '-', comma-separated";

/// A SCSI WWID as sysfs (`naa.6001405…`), multipath/`scsi_id` (`36001405…`) or udev's
/// `by-id` names spell it (spaces of a t10 id as `_`): 1-256 letters, digits, `.`, `_`,
/// `:` or `-`, not starting with `-`. Kept as given ([`crate::attach::scsi::wwid_matches`]
/// compares spellings).
pub fn wwid(key: &str, value: &str) -> Result<String, OptionsError> {
    let ok = !value.is_empty()
        && value.len() <= 256
        && !value.starts_with('-')
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c));
    ok.then(|| value.to_owned())
        .ok_or_else(|| invalid(key, value, WWID))
}

/// What a Ceph name accepts.
pub const CEPH_NAME: &str =
    "expected a name of letters, digits, '.', '_' or '-', not starting with '-' or '.'";

/// A Ceph pool, RADOS namespace, image, filesystem or user name: 1-255 letters, digits,
/// `.`, `_` or `-`, not starting with `-` or `.` (nothing rbd's `pool/ns/image@snap` spec,
/// a `-m` list or the kernel client's option list could misread).
pub fn ceph_name(key: &str, value: &str) -> Result<String, OptionsError> {
    let ok = !value.is_empty()
        && value.len() <= 255
        && !value.starts_with(['-', '.'])
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    ok.then(|| value.to_owned())
        .ok_or_else(|| invalid(key, value, CEPH_NAME))
}

/// A cephx user id, with or without `client.` (the tools take it without): a [`ceph_name`].
pub fn ceph_user(key: &str, value: &str) -> Result<String, OptionsError> {
    let id = value.strip_prefix("client.").unwrap_or(value);
    ceph_name(key, id).map_err(|_| invalid(key, value, CEPH_NAME))
}

/// What a GlusterFS volume name accepts.
pub const GLUSTER_VOLUME: &str = "expected a GlusterFS volume name (letters, digits, '_' or '-', not starting with '-'), optionally followed by /subdir";

/// A GlusterFS volume name: 1-255 letters, digits, `_` or `-`, not starting with `-` (what
/// glusterd accepts for a volume name).
pub fn gluster_volume(key: &str, value: &str) -> Result<String, OptionsError> {
    let ok = !value.is_empty()
        && value.len() <= 255
        && !value.starts_with('-')
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c));
    ok.then(|| value.to_owned())
        .ok_or_else(|| invalid(key, value, GLUSTER_VOLUME))
}

/// What a path inside an export accepts.
pub const EXPORT_PATH: &str =
    "expected a path without '..', whitespace, control characters or any of , ; $ ` ' \" \\";

/// A path inside a share (an NFS export, a CephFS path, a GlusterFS subdir): not empty, no
/// `..` component, no forbidden character, at most 4096 bytes. Absolute or relative as the
/// caller requires (it checks the leading `/`); a relative one may not start with `-`.
pub fn export_path(key: &str, value: &str) -> Result<String, OptionsError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_LEN
        && !value.starts_with('-')
        && !value.chars().any(is_forbidden)
        && !value.split('/').any(|c| c == "..");
    ok.then(|| value.to_owned())
        .ok_or_else(|| invalid(key, value, EXPORT_PATH))
}

/// What a file on the node accepts.
pub const NODE_FILE: &str = "expected a clean absolute path (no '.', '..' or empty components) without whitespace, control characters or any of , ; $ ` ' \" \\";

/// A file on the node a tool is told to read (`keyring`, `secretFile`): absolute, no `.`,
/// `..` or empty components, no forbidden character (a `,` would split the kernel client's
/// option list).
pub fn node_file(key: &str, value: &str) -> Result<String, OptionsError> {
    let ok = value.len() > 1
        && value.len() <= MAX_LEN
        && value.starts_with('/')
        && !value.ends_with('/')
        && !value.chars().any(is_forbidden)
        && value[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    ok.then(|| value.to_owned())
        .ok_or_else(|| invalid(key, value, NODE_FILE))
}

/// What a `mountOptions` word accepts.
pub const MOUNT_OPTIONS: &str =
    "expected a comma-separated list of options, none starting with '-', without spaces";

/// `mountOptions` (`nfsvers=4.1,hard`) as words, in order: items trimmed, empty items
/// dropped; a word starting with `-` (a helper would read it as a flag) or holding
/// whitespace or a control character (the helper would see two arguments, or lose the rest)
/// is refused. The option names themselves stay each driver's to check.
pub fn mount_options(key: &str, value: &str) -> Result<Vec<String>, OptionsError> {
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        if item.starts_with('-') || item.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(key, value, MOUNT_OPTIONS));
        }
        out.push(item.to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
