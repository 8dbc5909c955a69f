//! Fuzz entry points: one function per parser that reads what another party wrote (kubelet's
//! argv and JSON, a client's request line, the kernel's mountinfo and sysfs, blkid, udev,
//! the rbd CLI, an operator's YAML, a device's superblock). The `fuzz/` crate (cargo-fuzz,
//! nightly) calls them; `tests/fuzz_corpus.rs` replays the kept corpus through the very same
//! functions on stable, so a regression fails CI without nightly.
//!
//! Invariant: every function accepts any byte string. Besides "does not panic", each one
//! asserts a cheap property a caller relies on (a round trip, a safety rule such as "only an
//! empty probe is *nothing found*"); a broken property panics, which the fuzzer reports.
//! Functions that need files (sysfs trees, a superblock image) write them under one private
//! scratch directory per thread, never outside it.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// One fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target by name: the name is the `fuzz/fuzz_targets/<name>.rs` binary and the
/// `fuzz/corpus/<name>/` directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("flexvolume", flexvolume),
    ("api_request", api_request),
    ("mountinfo", mountinfo),
    ("blkid_export", blkid_export),
    ("superblock", superblock),
    ("rbd_json", rbd_json),
    ("sysfs", sysfs),
    ("iscsi", iscsi),
    ("udev", udev),
    ("config", config),
];

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// Splits `data` at NUL bytes (how argv and the multi-field targets carry several values).
fn fields(data: &[u8]) -> Vec<String> {
    data.split(|b| *b == 0).map(text).collect()
}

/// A private scratch directory for this thread, emptied on each call, removed when the
/// thread ends.
fn scratch() -> PathBuf {
    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    thread_local! {
        static DIR: Dir = {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            Dir(std::env::temp_dir().join(format!("moor-fuzz-{}-{n}", std::process::id())))
        };
    }
    let dir = DIR.with(|d| d.0.clone());
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("fuzz scratch dir {}: {e}", dir.display());
    }
    dir
}

/// A file name from fuzz input: one path component, or None.
fn component(s: &str) -> Option<&str> {
    (!s.is_empty() && s != "." && s != ".." && !s.contains('/') && s.len() < 200).then_some(s)
}

fn write(path: &Path, contents: &str) {
    if let Some(p) = path.parent() {
        let _ = std::fs::create_dir_all(p);
    }
    let _ = std::fs::write(path, contents);
}

/// The FlexVolume front end: `data` is argv after the program name, NUL-separated and taken
/// as raw bytes (kubelet's argv need not be UTF-8); the first field names the driver (empty:
/// none, as when kubelet runs `moor flex` directly). The daemon is "found" at a path where
/// nothing listens, so a call that passes validation ends in `daemon_unreachable` instead
/// of reaching a real daemon. Each JSON-looking field also goes through the pure precheck
/// the daemon runs, for every driver.
pub fn flexvolume(data: &[u8]) {
    use std::os::unix::ffi::OsStringExt;
    let mut argv: Vec<std::ffi::OsString> = data
        .split(|b| *b == 0)
        .map(|f| std::ffi::OsString::from_vec(f.to_vec()))
        .collect();
    if argv.is_empty() {
        return;
    }
    let driver = argv.remove(0);
    let driver = driver.to_str().filter(|d| !d.is_empty()).map(str::to_owned);
    for a in argv.iter().filter_map(|a| a.to_str()) {
        if let Ok(map) = serde_json::from_str::<std::collections::BTreeMap<String, String>>(a) {
            for d in crate::flexvolume::DRIVERS {
                let _ = crate::flexvolume::precheck(d, &map, "node-a");
            }
        }
        let _ = crate::flexvolume::options::parse_json(a);
    }
    let nowhere = || crate::api::client::Discovery {
        socket: std::env::temp_dir().join(format!(
            "moor-fuzz-no-daemon-{}/moor.sock",
            std::process::id()
        )),
        socket_from: "fuzzing".into(),
        node_name: Some("node-a".into()),
        notes: Vec::new(),
    };
    let reply = crate::flexvolume::frontend::run_with(driver.as_deref(), &argv, &nowhere);
    let json = reply.to_json();
    assert!(!json.contains('\n'), "reply is not one line: {json}");
    let back: crate::flexvolume::Reply = match serde_json::from_str(&json) {
        Ok(r) => r,
        Err(e) => panic!("reply {json} does not parse back: {e}"),
    };
    assert_eq!(back, reply, "reply does not round-trip");
}

/// The daemon's request decoder: one line read as the server reads it (size-limited), then
/// decoded. A decoded request encodes back to the same JSON value.
pub fn api_request(data: &[u8]) {
    let mut line = String::new();
    if BufReader::new(data.take(crate::api::server::MAX_REQUEST))
        .read_line(&mut line)
        .is_err()
    {
        return;
    }
    assert!(line.len() as u64 <= crate::api::server::MAX_REQUEST);
    let Ok(req) = serde_json::from_str::<crate::api::Request>(&line) else {
        return;
    };
    let _ = req.op();
    let again = serde_json::to_string(&req).unwrap_or_default();
    let (Ok(a), Ok(b)) = (
        serde_json::to_value(&req),
        serde_json::from_str::<crate::api::Request>(&again).and_then(serde_json::to_value),
    ) else {
        panic!("request {again} does not decode again");
    };
    assert_eq!(a, b, "request does not round-trip");
}

/// The mountinfo parser: every parsed line, escaped again the kernel's way, parses to the
/// same entry (each path unescaped exactly once, no field split or merged).
pub fn mountinfo(data: &[u8]) {
    use crate::host::mountinfo::{escape, parse, parse_line};
    let t = text(data);
    let Ok(all) = parse(&t) else {
        return;
    };
    for m in all {
        let mut line = format!(
            "{} {} {}:{} {} {} {}",
            m.mount_id,
            m.parent_id,
            m.major,
            m.minor,
            escape(&m.root.to_string_lossy()),
            escape(&m.mount_point.to_string_lossy()),
            m.mount_options
        );
        for o in &m.optional {
            line.push(' ');
            line.push_str(o);
        }
        line.push_str(&format!(
            " - {} {} {}",
            escape(&m.fs_type),
            escape(&m.source),
            m.super_options
        ));
        match parse_line(&line) {
            Ok(again) => assert_eq!(again, m, "mountinfo line {line:?} does not round-trip"),
            Err(e) => panic!("re-escaped line {line:?} does not parse: {e}"),
        }
    }
}

/// `blkid -p -o export` and its exit code: the first byte is the exit code (255: killed),
/// then stdout and stderr, NUL-separated. Only an exit 2 with empty output is *nothing
/// found*, the one answer that allows a format.
pub fn blkid_export(data: &[u8]) {
    use crate::fs::probe::{Probe, interpret, parse_export};
    let Some((&code, rest)) = data.split_first() else {
        return;
    };
    let code = (code != 255).then_some(i32::from(code));
    let f = fields(rest);
    let stdout = f.first().map(String::as_str).unwrap_or_default();
    let stderr = f.get(1).map(String::as_str).unwrap_or_default();
    for (k, v) in parse_export(stdout) {
        assert!(!k.contains('\n') && !v.contains('\n'), "{k:?}={v:?}");
        assert_eq!(k.trim(), k);
    }
    if interpret(code, stdout, stderr) == Ok(Probe::NothingFound) {
        assert_eq!(code, Some(2));
        assert!(
            stdout.trim().is_empty(),
            "signature {stdout:?} read as nothing found"
        );
    }
}

/// The superblock reader on an image holding `data`: a UUID is reported only when that
/// family's magic is there, in blkid's lowercase hyphenated form.
pub fn superblock(data: &[u8]) {
    let img = scratch().join("image");
    if std::fs::write(&img, data).is_err() {
        return;
    }
    for (fs, at, magic) in [
        ("ext4", 1024 + 56, &[0x53u8, 0xEF][..]),
        ("xfs", 0, &b"XFSB"[..]),
        ("btrfs", 65536 + 64, &b"_BHRfS_M"[..]),
        ("vfat", 0, &[][..]),
    ] {
        let Ok(Some(uuid)) = crate::fs::superblock::uuid(
            &crate::host::SysfsBlockDevices { sys: "/sys".into() },
            &img,
            fs,
        ) else {
            continue;
        };
        assert!(
            !magic.is_empty() && data.get(at..at + magic.len()) == Some(magic),
            "{fs}: uuid {uuid} without its magic"
        );
        assert_eq!(uuid.len(), 36, "{uuid}");
        assert!(
            uuid.char_indices()
                .all(|(i, c)| if [8, 13, 18, 23].contains(&i) {
                    c == '-'
                } else {
                    c.is_ascii_digit() || ('a'..='f').contains(&c)
                }),
            "{uuid}"
        );
    }
}

/// `rbd status`, `rbd lock list` and `rbd info` JSON: a holder always has a client name in
/// `client.<id>` form and an address (an unreadable answer is an error, never "nobody").
pub fn rbd_json(data: &[u8]) {
    use crate::attach::rbd::parse::{Holder, features, locks, watchers};
    let t = text(data);
    for h in watchers(&t).unwrap_or_default() {
        let Holder::Watcher { client, .. } = h else {
            panic!("watchers gave a lock");
        };
        assert!(client.starts_with("client."), "{client}");
    }
    for h in locks(&t).unwrap_or_default() {
        assert!(matches!(h, Holder::Lock { .. }), "locks gave a watcher");
        let _ = h.to_string();
    }
    let _ = features(&t);
}

/// sysfs as the kernel's rbd bus and SCSI layer show it, built from NUL-separated fields:
/// rbd `<id> pool name current_snap pool_ns client_id client_addr ro`, then SCSI
/// `<H:C:T:L> <disk> wwid vpd_pg80 state <wanted wwid>`.
pub fn sysfs(data: &[u8]) {
    let f = fields(data);
    let get = |i: usize| f.get(i).map(String::as_str).unwrap_or_default();
    let sys = scratch().join("sys");
    if let Some(id) = component(get(0)) {
        let dir = sys.join("bus/rbd/devices").join(id);
        for (i, attr) in [
            "pool",
            "name",
            "current_snap",
            "pool_ns",
            "client_id",
            "client_addr",
        ]
        .iter()
        .enumerate()
        {
            if !get(i + 1).is_empty() {
                write(&dir.join(attr), get(i + 1));
            }
        }
        write(&sys.join(format!("block/rbd{id}/ro")), get(7));
    }
    let _ = std::fs::create_dir_all(sys.join("bus/rbd/devices"));
    let dev = Path::new("/dev");
    for m in crate::host::rbdbus::mappings(&sys).unwrap_or_default() {
        let _ = m.is_head_of(&m.pool, &m.namespace, &m.image);
        let _ = m.device(dev);
        let _ = crate::host::rbdbus::is_read_only(&sys, m.id);
    }
    if let (Some(addr), Some(disk)) = (component(get(8)), component(get(9))) {
        let d = sys.join("bus/scsi/devices").join(addr);
        let _ = std::fs::create_dir_all(d.join("block").join(disk));
        let dev = sys.join("block").join(disk).join("device");
        write(&dev.join("wwid"), get(10));
        write(&dev.join("vpd_pg80"), get(11));
        write(&dev.join("state"), get(12));
    }
    let scsi = crate::attach::scsi::Scsi { sys: sys.clone() };
    let want = get(13);
    for (addr, name) in scsi.devices() {
        assert_eq!(
            crate::attach::scsi::ScsiAddr::parse(&addr.to_string()),
            Some(addr)
        );
        let Some(name) = name else { continue };
        if let Some(w) = scsi.wwid(&name) {
            assert_eq!(crate::attach::scsi::normalise_wwid(&w), w);
            assert!(crate::attach::scsi::wwid_matches(&w, &w));
            let _ = crate::attach::scsi::wwid_matches(&w, want);
        }
        let _ = scsi.serial(&name);
        let _ = scsi.state(&name);
        let _ = scsi.disk_at(addr);
    }
    let _ = scsi.disks_by_wwid(want);
}

/// iSCSI: portal values (a `-p` argument parses back to the same portal) and the session
/// found in sysfs, from NUL-separated fields `portal portals <sessionN> targetname address
/// port <hostH>`.
pub fn iscsi(data: &[u8]) {
    use crate::attach::iscsiadm::{Portal, parse_portals, valid_target_name};
    let f = fields(data);
    let get = |i: usize| f.get(i).map(String::as_str).unwrap_or_default();
    let portal = Portal::parse(get(0));
    if let Some(p) = &portal {
        assert_eq!(Portal::parse(&p.arg()).as_ref(), Some(p), "{}", p.arg());
        assert!(
            !p.arg().starts_with('-'),
            "portal {} reads as an option",
            p.arg()
        );
        assert_ne!(p.port, 0);
    }
    for p in parse_portals(get(1)).unwrap_or_default() {
        assert_eq!(Portal::parse(&p.arg()), Some(p));
    }
    let sys = scratch().join("sys");
    if let (Some(session), Some(host)) = (component(get(2)), component(get(6))) {
        let dev = sys.join("devices/platform").join(host).join(session);
        let _ = std::fs::create_dir_all(&dev);
        let s = sys.join("class/iscsi_session").join(session);
        let _ = std::fs::create_dir_all(&s);
        write(&s.join("targetname"), get(3));
        let _ = std::os::unix::fs::symlink(&dev, s.join("device"));
        if let Some(sid) = session.strip_prefix("session") {
            let c = sys.join(format!("class/iscsi_connection/connection{sid}:0"));
            write(&c.join("persistent_address"), get(4));
            write(&c.join("persistent_port"), get(5));
        }
    }
    let portal = portal.unwrap_or(Portal {
        host: get(4).to_owned(),
        port: get(5).trim().parse().unwrap_or(3260),
    });
    if let Some(s) = crate::attach::iscsi::find_session(&sys, get(3).trim(), &portal) {
        assert!(get(2).ends_with(&s.sid.to_string()));
    }
    let _ = valid_target_name(get(3));
    if valid_target_name(get(3)) {
        let rec = crate::attach::iscsiadm::node_record(&sys, get(3), &portal, "default");
        assert!(rec.is_none_or(|r| r.starts_with(&sys)));
    }
}

/// The udev database record parser and the stable id taken from it: an id is printable
/// ASCII without spaces (it becomes an annotation and, hashed, a name).
pub fn udev(data: &[u8]) {
    let r = crate::local::discover::parse_udev(&text(data));
    assert!(r.props.keys().all(|k| !k.contains('\n')));
    if let Some(id) = crate::local::discover::block_id_from_udev(&r) {
        assert!(!id.is_empty());
        assert!(id.chars().all(|c| c.is_ascii_graphic()), "{id:?}");
    }
}

/// The config loader on a YAML file: a configuration that loads has clean absolute paths.
pub fn config(data: &[u8]) {
    let Ok(t) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = serde_saphyr::from_str::<crate::config::FileConfig>(t) else {
        return;
    };
    let Ok(cfg) = crate::config::Config::resolve(&file, &crate::config::FileConfig::default())
    else {
        return;
    };
    for p in [&cfg.kubelet_dir, &cfg.state_dir, &cfg.run_dir, &cfg.socket] {
        assert!(crate::host::paths::is_clean_absolute(p), "{}", p.display());
    }
}
