//! One FlexVolume call as kubelet makes it: an exec of the driver symlink with kubelet's argv
//! (`init`, `mount <dir> <json>`, `unmount <dir>`), the daemon found through `MOOR_SOCKET`.
//!
//! Invariant: a reply is only returned when the front end kept kubelet's contract — nothing
//! on stderr, exactly one line on stdout, and that line a JSON object; anything else is a
//! [`TestkitError::Contract`], whatever the reply said.

use std::path::Path;
use std::process::Command;

use super::TestkitError;

/// A FlexVolume reply as kubelet sees it: the exit code and the JSON object.
#[derive(Debug, Clone)]
pub struct FlexReply {
    /// The front end's exit code.
    pub code: Option<i32>,
    /// The one JSON object it printed.
    pub json: serde_json::Value,
}

impl FlexReply {
    /// `Success` with exit code 0.
    pub fn ok(&self) -> bool {
        self.code == Some(0) && self.json["status"] == "Success"
    }
    /// The `status` field (`Success`, `Failure`, `Not supported`).
    pub fn status(&self) -> &str {
        self.json["status"].as_str().unwrap_or("")
    }
    /// The `message` field (empty when there is none).
    pub fn message(&self) -> &str {
        self.json["message"].as_str().unwrap_or("")
    }
}

/// Runs the front end through `link` with `args`, talking to the daemon on `socket`.
pub fn call(link: &Path, socket: &Path, args: &[&str]) -> Result<FlexReply, TestkitError> {
    let op = args.first().copied().unwrap_or_default().to_owned();
    let out = Command::new(link)
        .args(args)
        .env("MOOR_SOCKET", socket)
        .output()
        .map_err(|source| TestkitError::Exec {
            op: op.clone(),
            link: link.to_owned(),
            source,
        })?;
    check_contract(&op, out.status.code(), &out.stdout, &out.stderr)
}

/// kubelet's contract on what a driver prints (see the module header).
pub fn check_contract(
    op: &str,
    code: Option<i32>,
    stdout: &[u8],
    stderr: &[u8],
) -> Result<FlexReply, TestkitError> {
    let broken = |detail: String| TestkitError::Contract {
        op: op.to_owned(),
        detail,
    };
    if !stderr.is_empty() {
        return Err(broken(format!(
            "it wrote to stderr: {}",
            String::from_utf8_lossy(stderr)
        )));
    }
    let text = std::str::from_utf8(stdout)
        .map_err(|_| broken(format!("stdout is not UTF-8: {stdout:?}")))?;
    let json: serde_json::Value = serde_json::from_str(text.trim())
        .map_err(|e| broken(format!("stdout is not JSON ({e}): {text:?}")))?;
    if text.trim().lines().count() != 1 {
        return Err(broken(format!("not exactly one JSON line: {text:?}")));
    }
    if !json.is_object() {
        return Err(broken(format!("not a JSON object: {text:?}")));
    }
    Ok(FlexReply { code, json })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_json_line_and_a_silent_stderr_is_a_reply() {
        let r = check_contract("init", Some(0), b"{\"status\":\"Success\"}\n", b"").unwrap();
        assert!(r.ok());
        let r = check_contract(
            "mount",
            Some(1),
            b"{\"status\":\"Failure\",\"message\":\"busy: x\"}\n",
            b"",
        )
        .unwrap();
        assert!(!r.ok());
        assert_eq!((r.status(), r.message()), ("Failure", "busy: x"));
    }

    #[test]
    fn anything_else_breaks_the_contract() {
        for (stdout, stderr) in [
            (&b"{\"status\":\"Success\"}\n"[..], &b"warning\n"[..]),
            (b"{\"status\":\"Success\"}\n{\"status\":\"Success\"}\n", b""),
            (b"{\"status\":\n\"Success\"}\n", b""),
            (b"not json\n", b""),
            (b"\"Success\"\n", b""),
            (b"", b""),
            (b"{\"status\":\"\xff\"}\n", b""),
        ] {
            let e = check_contract("mount", Some(0), stdout, stderr).unwrap_err();
            assert_eq!(e.reason(), "contract", "{stdout:?} {stderr:?}: {e}");
            assert!(e.to_string().starts_with("FlexVolume mount: "), "{e}");
        }
    }
}
