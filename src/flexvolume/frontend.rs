//! The front end kubelet executes: parse argv and JSON, forward to the daemon, return one
//! [`Reply`]. No side effects, no logging (kubelet reads stdout and stderr as one JSON).

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use super::precheck::check;
use super::reply::Reply;
use crate::api::{Failure, Request, Response, client};
use crate::host::paths::{VENDOR, is_clean_absolute};
use crate::volume::DriverError;
use crate::volume::VolumeOptions;

/// Operations of the attach family and the rest of the contract that moor answers with
/// "Not supported": with `attach: false`, kubelet attaches inside `mount`, and for
/// `getvolumename` and `expandvolume` (the controller side: the backend is grown by its own
/// provisioner) kubelet's own fallback is what moor wants. `expandfs` is moor's.
pub const NOT_SUPPORTED: &[&str] = &[
    "getvolumename",
    "attach",
    "isattached",
    "detach",
    "waitforattach",
    "mountdevice",
    "unmountdevice",
    "expandvolume",
];

/// How long the front end waits for the daemon (its own deadline per operation is 300 s by
/// default; kubelet gives a driver no deadline at all). `MOOR_FLEX_TIMEOUT` overrides, in seconds.
fn call_timeout() -> Duration {
    std::env::var("MOOR_FLEX_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(330))
}

/// Runs one FlexVolume call. `driver` comes from the symlink name, or `--driver`; when
/// None, mount/unmount take it from the pod volume directory (`…/moor~<driver>/<name>`).
/// `driver_dir` is the directory of the driver executable kubelet ran (where
/// [`client::FRONTEND_FILE`] may say where the daemon is).
pub fn run(driver: Option<&str>, args: &[OsString], driver_dir: Option<&Path>) -> Reply {
    run_with(driver, args, &|| {
        client::discover(Path::new(crate::config::DEFAULT_CONFIG), driver_dir)
    })
}

/// [`run`] with the daemon's discovery given: it is asked only when a call is forwarded.
pub fn run_with(
    driver: Option<&str>,
    args: &[OsString],
    discover: &dyn Fn() -> client::Discovery,
) -> Reply {
    let Some((op, rest)) = args.split_first() else {
        return Reply::failure("usage: <op> [args…]; ops: init, mount <dir> <json>, unmount <dir>");
    };
    if let Some(d) = driver
        && !super::DRIVERS.contains(&d)
    {
        return Reply::failure(format!(
            "unknown driver {d} (moor serves: {})",
            super::DRIVERS.join(", ")
        ));
    }
    let Some(op) = op.to_str() else {
        return Reply::failure(format!(
            "usage: argument 1 (the operation) is not UTF-8: {}",
            op.to_string_lossy()
        ));
    };
    // Every later argument must be text too; the message names the one that is not.
    let mut text = Vec::with_capacity(rest.len());
    for (i, a) in rest.iter().enumerate() {
        match a.to_str() {
            Some(t) => text.push(t),
            None => {
                let (prefix, what) = arg_role(op, i);
                return Reply::failure(format!(
                    "{prefix}: argument {} ({what}) is not UTF-8: {}",
                    i + 2,
                    a.to_string_lossy()
                ));
            }
        }
    }
    match op {
        "init" if text.is_empty() => Reply::init(),
        "mount" => match text[..] {
            [dir, json] => mount(driver, dir, json, discover),
            _ => Reply::failure("usage: mount <pod-volume-dir> <json-options>"),
        },
        "unmount" => match text[..] {
            [dir] => unmount(driver, dir, discover),
            _ => Reply::failure("usage: unmount <pod-volume-dir>"),
        },
        "expandfs" => match text[..] {
            [json, _device, _device_mount, new_size, _old_size] => {
                expandfs(driver, json, new_size, discover)
            }
            _ => Reply::failure(
                "usage: expandfs <json-options> <device> <device-mount-path> <new-size-bytes> <old-size-bytes>",
            ),
        },
        "init" => Reply::failure("usage: init (no arguments)"),
        o if NOT_SUPPORTED.contains(&o) => {
            Reply::not_supported(format!("{o} is not used: moor attaches inside mount"))
        }
        o => Reply::not_supported(format!("unknown operation {o}")),
    }
}

/// The reason prefix and the name of argument `i` (after the operation) of `op`.
fn arg_role(op: &str, i: usize) -> (&'static str, &'static str) {
    match (op, i) {
        ("mount" | "unmount", 0) => ("bad_path", "the pod volume directory"),
        ("mount", 1) | ("expandfs", 0) => ("bad_options", "the JSON options"),
        ("expandfs", 1) => ("bad_path", "the device"),
        ("expandfs", 2) => ("bad_path", "the device mount path"),
        ("expandfs", 3) => ("bad_options", "the new size"),
        ("expandfs", 4) => ("bad_options", "the old size"),
        _ => ("usage", "an extra argument"),
    }
}

/// The driver named by `…/volumes/moor~<driver>/<name>`, checked against `driver`.
fn driver_of(dir: &str, driver: Option<&str>) -> Result<String, String> {
    let p = Path::new(dir);
    if !is_clean_absolute(p) {
        return Err(format!("bad_path: {dir}: not a clean absolute path"));
    }
    let found = p
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix(VENDOR))
        .and_then(|n| n.strip_prefix('~'))
        .filter(|d| super::DRIVERS.contains(d));
    match (found, driver) {
        (Some(f), Some(d)) if f != d => {
            Err(format!("bad_path: {dir} belongs to driver {f}, not {d}"))
        }
        (Some(f), _) => Ok(f.to_owned()),
        (None, _) => Err(format!(
            "bad_path: {dir}: not a pod volume directory …/volumes/{VENDOR}~<driver>/<name>"
        )),
    }
}

fn mount(
    driver: Option<&str>,
    dir: &str,
    json: &str,
    discover: &dyn Fn() -> client::Discovery,
) -> Reply {
    let driver = match driver_of(dir, driver) {
        Ok(d) => d,
        Err(m) => return Reply::failure(m),
    };
    let options = match parse_options(json) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let found = discover();
    let node = found.node_name.as_deref().unwrap_or_default();
    let checked = check(&driver, &options, node);
    // The daemon gets the options as parsed here, typed: it never parses them again.
    let req = Request::Mount {
        driver: driver.clone(),
        target: dir.into(),
        options,
    };
    match checked {
        Ok(()) => forward(&req, &found),
        // The daemon's node name may come from a flag the front end cannot see: when the
        // daemon answers, its answer (from the same check) is the one that counts.
        Err(e @ DriverError::WrongNode { .. }) => match call(&req, &found) {
            Err(client::ClientError::Connect { .. }) if found.node_name.is_some() => {
                Reply::failure(format!(
                    "{}: {e} (checked by the front end: the daemon at {} is not reachable)",
                    e.reason(),
                    found.socket.display()
                ))
            }
            r => reply_of(r, &found),
        },
        Err(e) => Reply::failure(format!("{}: {e}", e.reason())),
    }
}

/// kubelet's JSON options, parsed by the one parser ([`crate::volume::options::parse`]).
fn parse_options(json: &str) -> Result<VolumeOptions, Reply> {
    let options: std::collections::BTreeMap<String, String> =
        serde_json::from_str(json).map_err(|e| {
            Reply::failure(format!(
                "bad_options: options are not a JSON object of strings: {e}"
            ))
        })?;
    crate::volume::options::parse(&options).map_err(|e| Reply::failure(format!("bad_options: {e}")))
}

fn unmount(driver: Option<&str>, dir: &str, discover: &dyn Fn() -> client::Discovery) -> Reply {
    match driver_of(dir, driver) {
        Ok(driver) => forward(
            &Request::Unmount {
                driver,
                target: dir.into(),
            },
            &discover(),
        ),
        Err(m) => Reply::failure(m),
    }
}

/// kubelet names the volume by the PV (`kubernetes.io/pvOrVolumeName`) and gives no pod
/// directory, so the driver comes from the executable's name (or `--driver`).
fn expandfs(
    driver: Option<&str>,
    json: &str,
    new_size: &str,
    discover: &dyn Fn() -> client::Discovery,
) -> Reply {
    let Some(driver) = driver else {
        return Reply::failure(
            "expandfs needs the driver: kubelet runs moor as moor~<driver>/<driver> (or pass --driver)",
        );
    };
    let options = match parse_options(json) {
        Ok(o) => o,
        Err(r) => return r,
    };
    if options.pv_or_volume_name.is_none() {
        return Reply::failure("bad_options: expandfs needs kubernetes.io/pvOrVolumeName");
    }
    let Ok(new_size) = new_size.parse::<u64>() else {
        return Reply::failure(format!(
            "bad_options: new size {new_size:?} is not a number of bytes"
        ));
    };
    forward(
        &Request::Expand {
            driver: driver.into(),
            options,
            new_size,
        },
        &discover(),
    )
}

fn call(req: &Request, found: &client::Discovery) -> Result<Response, client::ClientError> {
    client::call(&found.socket, req, call_timeout())
}

fn forward(req: &Request, found: &client::Discovery) -> Reply {
    reply_of(call(req, found), found)
}

/// The reply for the daemon's answer; a failure to reach it says where the socket came from
/// and which config files were set aside.
fn reply_of(r: Result<Response, client::ClientError>, found: &client::Discovery) -> Reply {
    let notes = || {
        let mut n = format!(" [socket from {}", found.socket_from);
        for note in &found.notes {
            n.push_str("; ");
            n.push_str(note);
        }
        n.push(']');
        n
    };
    match r {
        Ok(resp) => Reply::from_response(resp),
        Err(e @ client::ClientError::Connect { .. }) => Reply::failure(format!(
            "{}{}",
            Failure::of("daemon_unreachable", &e),
            notes()
        )),
        Err(e @ client::ClientError::Exchange { .. }) => {
            Reply::failure(format!("daemon_error: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flexvolume::Status;

    fn s(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    /// No daemon: a socket path that cannot exist.
    fn no_daemon() -> client::Discovery {
        client::Discovery {
            socket: "/nonexistent/moor-test/moor.sock".into(),
            socket_from: "test".into(),
            node_name: Some("node-a".into()),
            notes: vec![],
        }
    }

    fn rt(driver: Option<&str>, args: &[OsString]) -> Reply {
        run_with(driver, args, &no_daemon)
    }

    #[test]
    fn every_op_gets_the_answer_kubelet_expects() {
        assert_eq!(rt(Some("local"), &s(&["init"])), Reply::init());
        for op in NOT_SUPPORTED {
            assert_eq!(
                rt(Some("local"), &s(&[op, "{}"])).status,
                Status::NotSupported,
                "{op}"
            );
        }
        assert_eq!(rt(None, &s(&["frobnicate"])).status, Status::NotSupported);
        assert_eq!(rt(None, &s(&[])).status, Status::Failure);
        assert_eq!(rt(None, &s(&["mount", "/x"])).status, Status::Failure);
        assert_eq!(rt(None, &s(&["unmount"])).status, Status::Failure);
        assert_eq!(rt(Some("nope"), &s(&["init"])).status, Status::Failure);
    }

    #[test]
    fn bad_input_fails_before_reaching_the_daemon() {
        // MOOR_SOCKET is irrelevant: each of these fails on validation first.
        let dir = "/var/lib/kubelet/pods/u/volumes/moor~local/v";
        let r = rt(Some("local"), &s(&["mount", dir, "{not json"]));
        assert!(r.message.unwrap().starts_with("bad_options:"));
        let r = rt(
            Some("local"),
            &s(&["mount", dir, r#"{"kubernetes.io/readwrite":"x"}"#]),
        );
        assert!(r.message.unwrap().starts_with("bad_options:"));
        let r = rt(
            Some("local"),
            &s(&[
                "mount",
                "/var/lib/kubelet/pods/u/volumes/moor~local/../../x",
                "{}",
            ]),
        );
        assert!(r.message.unwrap().starts_with("bad_path:"));
        let r = rt(
            Some("local"),
            &s(&[
                "unmount",
                "/var/lib/kubelet/pods/u/volumes/kubernetes.io~nfs/v",
            ]),
        );
        assert!(r.message.unwrap().starts_with("bad_path:"));
    }

    #[test]
    fn a_non_utf8_argument_is_named_in_a_failure() {
        use std::os::unix::ffi::OsStringExt;
        let bad = |b: &[u8]| OsString::from_vec(b.to_vec());
        let dir = OsString::from("/var/lib/kubelet/pods/u/volumes/moor~local/v");
        for (args, prefix, which) in [
            (
                vec![bad(b"mo\xffunt"), dir.clone(), "{}".into()],
                "usage:",
                "argument 1",
            ),
            (
                vec![
                    "mount".into(),
                    bad(b"/var/lib/kubelet/pods/u/volumes/moor~local/\xff"),
                    "{}".into(),
                ],
                "bad_path:",
                "argument 2",
            ),
            (
                vec!["mount".into(), dir.clone(), bad(b"{\"path\":\"/\xfe\"}")],
                "bad_options:",
                "argument 3",
            ),
            (
                vec!["unmount".into(), bad(b"\xc3\x28")],
                "bad_path:",
                "argument 2",
            ),
            (
                vec![
                    "expandfs".into(),
                    "{}".into(),
                    "/dev/x".into(),
                    "/m".into(),
                    bad(b"1\xff"),
                    "1".into(),
                ],
                "bad_options:",
                "argument 5",
            ),
        ] {
            let r = rt(Some("local"), &args);
            assert_eq!(r.status, Status::Failure, "{args:?}");
            let m = r.message.unwrap();
            assert!(m.starts_with(prefix) && m.contains(which), "{args:?}: {m}");
        }
    }

    #[test]
    fn option_mistakes_and_foreign_nodes_are_answered_without_the_daemon() {
        let dir = "/var/lib/kubelet/pods/u/volumes/moor~local/v";
        for (json, prefix) in [
            (r#"{"pth":"/x"}"#, "bad_options: unknown option pth"),
            (
                r#"{"node":"node-a"}"#,
                "bad_options: option path is required",
            ),
            (
                r#"{"path":"/x","mountOption":"ro"}"#,
                "bad_options: unknown option mountOption",
            ),
            (
                r#"{"path":"/x","node":"node-b"}"#,
                "wrong_node: volume /x belongs to node node-b, this is node node-a",
            ),
        ] {
            let m = rt(Some("local"), &s(&["mount", dir, json]))
                .message
                .unwrap();
            assert!(m.starts_with(prefix), "{json}: {m}");
        }
        let nfs = "/var/lib/kubelet/pods/u/volumes/moor~nfs/v";
        let m = rt(None, &s(&["mount", nfs, r#"{"server":"s"}"#]))
            .message
            .unwrap();
        assert!(m.starts_with("bad_options: option path is required"), "{m}");
        // A valid request goes to the daemon, which is not there.
        let m = rt(
            Some("local"),
            &s(&["mount", dir, r#"{"path":"/x","node":"node-a"}"#]),
        )
        .message
        .unwrap();
        assert!(m.starts_with("daemon_unreachable:"), "{m}");
        assert!(m.contains("[socket from test]"), "{m}");
    }

    /// The daemon gets the options the front end parsed, typed: they cross the socket as
    /// the one parser made them (secrets included), so the daemon never parses text again.
    #[test]
    fn the_daemon_gets_the_options_the_front_end_parsed() {
        let json = r#"{"path":"/x","mountOptions":"noatime, nodev","kubernetes.io/fsType":"xfs","kubernetes.io/readwrite":"ro","kubernetes.io/secret/k":"czNjcjN0"}"#;
        let opts = parse_options(json).unwrap();
        let map = serde_json::from_str(json).unwrap();
        assert_eq!(opts, crate::volume::options::parse(&map).unwrap());
        assert_eq!(opts.mount_options.words(), ["noatime", "nodev"]);
        let req = Request::Mount {
            driver: "local".into(),
            target: "/t".into(),
            options: opts.clone(),
        };
        let back: Request = serde_json::from_str(&serde_json::to_string(&req).unwrap()).unwrap();
        let Request::Mount { options, .. } = back else {
            panic!("{back:?}")
        };
        assert_eq!(options, opts);
        // A bad mount option is answered here, by the same parser, before the daemon.
        let dir = "/var/lib/kubelet/pods/u/volumes/moor~nfs/v";
        let m = rt(
            None,
            &s(&[
                "mount",
                dir,
                r#"{"server":"s","path":"/e","mountOptions":"hard,-v"}"#,
            ]),
        )
        .message
        .unwrap();
        assert!(
            m.starts_with("bad_options: option mountOptions=hard,-v: expected"),
            "{m}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// Whatever bytes kubelet (or anyone) passes, the answer is one JSON object on one
        /// line that kubelet can parse back.
        #[test]
        fn any_argv_gets_one_json_line(
            driver in proptest::option::of(proptest::sample::select(vec!["local", "nfs", "rbd", "nope"])),
            op in proptest::sample::select(vec!["init", "mount", "unmount", "expandfs", "attach", "x"]),
            args in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::collection::vec(proptest::num::u8::ANY, 0..40),
                    proptest::sample::select(vec![
                        b"/var/lib/kubelet/pods/u/volumes/moor~local/v".to_vec(),
                        b"{\"path\":\"/x\"}".to_vec(),
                        b"{\"pth\":\"\xff\"}".to_vec(),
                        b"{}".to_vec(),
                    ]),
                ],
                0..6,
            ),
            raw_op in proptest::collection::vec(proptest::num::u8::ANY, 0..8),
            use_raw_op in proptest::bool::ANY,
        ) {
            use std::os::unix::ffi::OsStringExt;
            let mut argv = vec![if use_raw_op { OsString::from_vec(raw_op) } else { op.into() }];
            argv.extend(args.into_iter().map(OsString::from_vec));
            let line = rt(driver, &argv).to_json();
            proptest::prop_assert!(!line.contains('\n'), "{line}");
            let back: Reply = serde_json::from_str(&line).unwrap();
            proptest::prop_assert_eq!(back.exit_code() == 0, back.status == Status::Success);
        }
    }
}
