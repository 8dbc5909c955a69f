//! The front end kubelet executes: parse argv and JSON, forward to the daemon, return one
//! [`Reply`]. No side effects, no logging (kubelet reads stdout and stderr as one JSON).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::options::VolumeOptions;
use super::reply::Reply;
use crate::api::{Request, Response, client};
use crate::host::paths::{VENDOR, is_clean_absolute};

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
pub fn run(driver: Option<&str>, args: &[String]) -> Reply {
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
    match op.as_str() {
        "init" if rest.is_empty() => Reply::init(),
        "mount" => match rest {
            [dir, json] => mount(driver, dir, json),
            _ => Reply::failure("usage: mount <pod-volume-dir> <json-options>"),
        },
        "unmount" => match rest {
            [dir] => unmount(driver, dir),
            _ => Reply::failure("usage: unmount <pod-volume-dir>"),
        },
        "expandfs" => match rest {
            [json, _device, _device_mount, new_size, _old_size] => expandfs(driver, json, new_size),
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

fn mount(driver: Option<&str>, dir: &str, json: &str) -> Reply {
    let driver = match driver_of(dir, driver) {
        Ok(d) => d,
        Err(m) => return Reply::failure(m),
    };
    let options = match parse_options(json) {
        Ok(o) => o,
        Err(r) => return r,
    };
    forward(&Request::Mount {
        driver,
        target: dir.into(),
        options,
    })
}

/// kubelet's JSON options, checked as the daemon will read them.
fn parse_options(json: &str) -> Result<BTreeMap<String, String>, Reply> {
    let options: BTreeMap<String, String> = serde_json::from_str(json).map_err(|e| {
        Reply::failure(format!(
            "bad_options: options are not a JSON object of strings: {e}"
        ))
    })?;
    VolumeOptions::from_map(&options).map_err(|e| Reply::failure(format!("bad_options: {e}")))?;
    Ok(options)
}

fn unmount(driver: Option<&str>, dir: &str) -> Reply {
    match driver_of(dir, driver) {
        Ok(driver) => forward(&Request::Unmount {
            driver,
            target: dir.into(),
        }),
        Err(m) => Reply::failure(m),
    }
}

/// kubelet names the volume by the PV (`kubernetes.io/pvOrVolumeName`) and gives no pod
/// directory, so the driver comes from the executable's name (or `--driver`).
fn expandfs(driver: Option<&str>, json: &str, new_size: &str) -> Reply {
    let Some(driver) = driver else {
        return Reply::failure(
            "expandfs needs the driver: kubelet runs moor as moor~<driver>/<driver> (or pass --driver)",
        );
    };
    let options = match parse_options(json) {
        Ok(o) => o,
        Err(r) => return r,
    };
    if options
        .get("kubernetes.io/pvOrVolumeName")
        .is_none_or(String::is_empty)
    {
        return Reply::failure("bad_options: expandfs needs kubernetes.io/pvOrVolumeName");
    }
    let Ok(new_size) = new_size.parse::<u64>() else {
        return Reply::failure(format!(
            "bad_options: new size {new_size:?} is not a number of bytes"
        ));
    };
    forward(&Request::Expand {
        driver: driver.into(),
        options,
        new_size,
    })
}

fn forward(req: &Request) -> Reply {
    match client::call(&client::socket_path(), req, call_timeout()) {
        Ok(Response::Flex { reply }) => reply,
        Ok(other) => Reply::failure(format!("daemon_error: unexpected answer {other:?}")),
        Err(e) => Reply::failure(format!("daemon_unreachable: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flexvolume::Status;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn every_op_gets_the_answer_kubelet_expects() {
        assert_eq!(run(Some("local"), &s(&["init"])), Reply::init());
        for op in NOT_SUPPORTED {
            assert_eq!(
                run(Some("local"), &s(&[op, "{}"])).status,
                Status::NotSupported,
                "{op}"
            );
        }
        assert_eq!(run(None, &s(&["frobnicate"])).status, Status::NotSupported);
        assert_eq!(run(None, &s(&[])).status, Status::Failure);
        assert_eq!(run(None, &s(&["mount", "/x"])).status, Status::Failure);
        assert_eq!(run(None, &s(&["unmount"])).status, Status::Failure);
        assert_eq!(run(Some("nope"), &s(&["init"])).status, Status::Failure);
    }

    #[test]
    fn bad_input_fails_before_reaching_the_daemon() {
        // MOOR_SOCKET is irrelevant: each of these fails on validation first.
        let dir = "/var/lib/kubelet/pods/u/volumes/moor~local/v";
        let r = run(Some("local"), &s(&["mount", dir, "{not json"]));
        assert!(r.message.unwrap().starts_with("bad_options:"));
        let r = run(
            Some("local"),
            &s(&["mount", dir, r#"{"kubernetes.io/readwrite":"x"}"#]),
        );
        assert!(r.message.unwrap().starts_with("bad_options:"));
        let r = run(
            Some("local"),
            &s(&[
                "mount",
                "/var/lib/kubelet/pods/u/volumes/moor~local/../../x",
                "{}",
            ]),
        );
        assert!(r.message.unwrap().starts_with("bad_path:"));
        let r = run(
            Some("local"),
            &s(&[
                "unmount",
                "/var/lib/kubelet/pods/u/volumes/kubernetes.io~nfs/v",
            ]),
        );
        assert!(r.message.unwrap().starts_with("bad_path:"));
    }
}
