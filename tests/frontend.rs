//! The FlexVolume front end as kubelet runs it: one JSON object on every path (bad bytes,
//! dead or broken daemons, closed stdout), the daemon found the way it was configured with
//! kubelet's empty environment, and the daemon's own bounds (socket directory, idle
//! connections, command deadlines inside the operation's).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, LoopDev, require_privileged_sandbox};
use serde_json::json;

/// The binary under test (`MOOR_TEST_BINARY` runs the same checks against another build,
/// e.g. the one before a fix, to see them fail).
fn moor_bin() -> PathBuf {
    std::env::var_os("MOOR_TEST_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_moor").into())
}

/// `<dir>/moor~local/local` → moor, as install.sh lays it out.
fn driver_link(dir: &Path) -> PathBuf {
    let plugin = dir.join("moor~local");
    std::fs::create_dir_all(&plugin).unwrap();
    let link = plugin.join("local");
    if !link.exists() {
        std::os::unix::fs::symlink(moor_bin(), &link).unwrap();
    }
    link
}

/// What kubelet sees of one call, and the front end's peak memory.
struct Run {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    max_rss_kib: i64,
}

impl Run {
    /// Asserts kubelet's contract: exactly one JSON object on one line on stdout, nothing on
    /// stderr, exit 0 for Success and 1 otherwise. Returns the object.
    #[track_caller]
    fn one_json(&self, what: &str) -> serde_json::Value {
        let out = String::from_utf8_lossy(&self.stdout);
        assert!(
            self.stderr.is_empty(),
            "{what}: stderr not empty: {}",
            String::from_utf8_lossy(&self.stderr)
        );
        assert!(
            out.ends_with('\n') && out.trim_end().lines().count() == 1,
            "{what}: not exactly one line: {out:?} (exit {:?})",
            self.code
        );
        let v: serde_json::Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("{what}: not JSON {out:?}: {e}"));
        assert!(v.is_object(), "{what}: {v}");
        let want = if v["status"] == "Success" { 0 } else { 1 };
        assert_eq!(self.code, Some(want), "{what}: exit code for {v}");
        v
    }
}

/// Runs `prog args` with exactly `env` as its environment (kubelet gives a driver none),
/// collecting its peak RSS with wait4.
fn run_env(prog: &Path, args: &[OsString], env: &[(&str, &OsString)], stdout: Stdio) -> Run {
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut out = Vec::new();
    let mut err = Vec::new();
    if let Some(mut o) = child.stdout.take() {
        o.read_to_end(&mut out).unwrap();
    }
    child.stderr.take().unwrap().read_to_end(&mut err).unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; status and usage are valid for writes. std's Child is
    // never waited afterwards (it is forgotten), so the pid is reaped exactly once.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    std::mem::forget(child);
    Run {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        stdout: out,
        stderr: err,
        max_rss_kib: usage.ru_maxrss,
    }
}

fn os(s: &str) -> OsString {
    s.into()
}

fn bytes(b: &[u8]) -> OsString {
    OsString::from_vec(b.to_vec())
}

/// A socket server that answers every connection with `reply` (after reading the request).
fn fake_daemon(path: &Path, reply: fn(&mut std::os::unix::net::UnixStream)) {
    let l = std::os::unix::net::UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            std::thread::spawn(move || reply(&mut c));
        }
    });
}

fn read_request_line(c: &mut std::os::unix::net::UnixStream) {
    let mut b = [0u8; 1];
    while let Ok(1) = c.read(&mut b) {
        if b[0] == b'\n' {
            break;
        }
    }
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn every_path_answers_exactly_one_json_object() {
    require_privileged_sandbox();
    let t = tempfile::Builder::new()
        .prefix("moor-fe")
        .tempdir_in("/var/tmp")
        .unwrap();
    let link = driver_link(t.path());
    let dir = os("/var/lib/kubelet/pods/u1/volumes/moor~local/v");
    let dead = t.path().join("nobody-listens.sock").into_os_string();
    let env = [("MOOR_SOCKET", &dead)];

    // Non-UTF-8 bytes in each argument: a Failure naming which one.
    for (args, want) in [
        (
            vec![bytes(b"mo\xffunt"), dir.clone(), os("{}")],
            "argument 1",
        ),
        (
            vec![
                os("mount"),
                bytes(b"/var/lib/kubelet/pods/u1/volumes/moor~local/\xff"),
                os("{}"),
            ],
            "argument 2",
        ),
        (
            vec![os("mount"), dir.clone(), bytes(b"{\"path\":\"/\xfe\"}")],
            "argument 3",
        ),
        (vec![os("unmount"), bytes(b"/\xc3\x28")], "argument 2"),
    ] {
        let r = run_env(&link, &args, &env, Stdio::piped()).one_json(&format!("{args:?}"));
        assert_eq!(r["status"], "Failure", "{r}");
        assert!(r["message"].as_str().unwrap().contains(want), "{r}");
    }

    // argv[0] itself not UTF-8 (a plugin dir with odd bytes): still the front end.
    let odd = t.path().join(OsString::from_vec(b"pl\xffugins".to_vec()));
    let odd_link = driver_link(&odd);
    let r = run_env(&odd_link, &[os("init")], &env, Stdio::piped()).one_json("argv0");
    assert_eq!(r["status"], "Success", "{r}");

    // `moor flex` with bad bytes too.
    let r = run_env(
        &moor_bin(),
        &[os("flex"), os("--driver"), os("local"), bytes(b"\xff")],
        &env,
        Stdio::piped(),
    )
    .one_json("moor flex");
    assert_eq!(r["status"], "Failure", "{r}");

    // A dead daemon.
    let r =
        run_env(&link, &[os("unmount"), dir.clone()], &env, Stdio::piped()).one_json("dead daemon");
    let m = r["message"].as_str().unwrap();
    assert!(m.starts_with("daemon_unreachable:"), "{m}");
    let unit = [
        "/etc/systemd/system/moor.service",
        "/usr/lib/systemd/system/moor.service",
        "/lib/systemd/system/moor.service",
    ]
    .iter()
    .any(|p| Path::new(p).exists());
    if !(unit && Path::new("/run/systemd/system").is_dir()) {
        assert!(!m.contains("systemctl"), "no moor unit here, yet: {m}");
        assert!(m.contains("DaemonSet"), "{m}");
    }

    // Option mistakes and a foreign node are named while the daemon is down.
    for (json, prefix) in [
        (r#"{"pth":"/srv/x"}"#, "bad_options: unknown option pth"),
        (
            r#"{"path":"/srv/x","mountOption":"ro"}"#,
            "bad_options: unknown option mountOption",
        ),
        (r#"{"node":"n1"}"#, "bad_options: option path is required"),
        (
            r#"{"path":"/srv/x","kubernetes.io/readwrite":"rx"}"#,
            "bad_options:",
        ),
        (
            r#"{"path":"/srv/x","node":"certainly-not-this-node"}"#,
            "wrong_node:",
        ),
    ] {
        let r = run_env(
            &link,
            &[os("mount"), dir.clone(), os(json)],
            &env,
            Stdio::piped(),
        )
        .one_json(json);
        let m = r["message"].as_str().unwrap();
        assert!(m.starts_with(prefix), "{json}: {m}");
    }

    // The front end's own footprint on a short answer from a fake daemon, for the next check.
    let small = t.path().join("small.sock");
    fake_daemon(&small, |c| {
        read_request_line(c);
        let _ = c.write_all(b"{\"kind\":\"done\"}\n");
    });
    let small_os = small.clone().into_os_string();
    let base = run_env(
        &link,
        &[os("unmount"), dir.clone()],
        &[("MOOR_SOCKET", &small_os)],
        Stdio::piped(),
    );
    assert_eq!(base.one_json("small answer")["status"], "Success");
    // A broken "daemon" that streams 8 MiB without a newline: a daemon_error, and the front
    // end does not buffer it all.
    let big = t.path().join("big.sock");
    fake_daemon(&big, |c| {
        read_request_line(c);
        let junk = vec![b'x'; 64 << 10];
        for _ in 0..128 {
            if c.write_all(&junk).is_err() {
                return;
            }
        }
    });
    let big_os = big.clone().into_os_string();
    let run = run_env(
        &link,
        &[os("unmount"), dir.clone()],
        &[("MOOR_SOCKET", &big_os)],
        Stdio::piped(),
    );
    let r = run.one_json("oversized answer");
    assert!(
        r["message"].as_str().unwrap().starts_with("daemon_error:"),
        "{r}"
    );
    let grew = run.max_rss_kib - base.max_rss_kib;
    assert!(
        grew < 4 << 10,
        "front end grew by {grew} KiB (to {} KiB) on an 8 MiB answer",
        run.max_rss_kib
    );
    eprintln!(
        "front end peak RSS: {} KiB on a short answer, {} KiB on an 8 MiB answer",
        base.max_rss_kib, run.max_rss_kib
    );

    // A daemon that closes early, and one that answers garbage.
    let early = t.path().join("early.sock");
    fake_daemon(&early, |c| {
        read_request_line(c);
    });
    let garbage = t.path().join("garbage.sock");
    fake_daemon(&garbage, |c| {
        read_request_line(c);
        let _ = c.write_all(b"\xff\xfe not json\n");
    });
    for s in [&early, &garbage] {
        let s = s.clone().into_os_string();
        let r = run_env(
            &link,
            &[os("unmount"), dir.clone()],
            &[("MOOR_SOCKET", &s)],
            Stdio::piped(),
        )
        .one_json("broken daemon");
        assert!(
            r["message"].as_str().unwrap().starts_with("daemon_error:"),
            "{r}"
        );
    }

    // stdout closed, and stdout a pipe nobody reads: nothing on stderr, exit 1, no abort.
    for (name, stdout) in [("closed", None), ("broken pipe", Some(()))] {
        let mut cmd = Command::new(&link);
        cmd.args(["unmount", "/var/lib/kubelet/pods/u1/volumes/moor~local/v"])
            .env_clear()
            .env("MOOR_SOCKET", &dead)
            .stderr(Stdio::piped());
        let out = match stdout {
            None => {
                use std::os::unix::process::CommandExt;
                // SAFETY: close(2) between fork and exec, async-signal-safe.
                unsafe {
                    cmd.stdout(Stdio::inherit()).pre_exec(|| {
                        libc::close(1);
                        Ok(())
                    });
                }
                cmd.output().unwrap()
            }
            Some(()) => {
                let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
                drop(child.stdout.take());
                child.wait_with_output().unwrap()
            }
        };
        assert!(
            out.stderr.is_empty(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(1), "{name}: {:?}", out.status);
    }
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_panic_answers_one_json_object_whatever_stdout_is() {
    require_privileged_sandbox();
    common::require_test_hooks(&moor_bin());
    let t = tempfile::Builder::new()
        .prefix("moor-fe")
        .tempdir_in("/var/tmp")
        .unwrap();
    let link = driver_link(t.path());
    let on = os("1");
    let r = run_env(
        &link,
        &[os("init")],
        &[("MOOR_TEST_FRONTEND_PANIC", &on)],
        Stdio::piped(),
    )
    .one_json("panic");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .starts_with("internal: moor front end panicked"),
        "{r}"
    );
    for closed in [true, false] {
        let mut cmd = Command::new(&link);
        cmd.arg("init")
            .env_clear()
            .env("MOOR_TEST_FRONTEND_PANIC", "1")
            .stderr(Stdio::piped());
        let out = if closed {
            use std::os::unix::process::CommandExt;
            // SAFETY: close(2) between fork and exec, async-signal-safe.
            unsafe {
                cmd.stdout(Stdio::inherit()).pre_exec(|| {
                    libc::close(1);
                    Ok(())
                });
            }
            cmd.output().unwrap()
        } else {
            let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
            drop(child.stdout.take());
            child.wait_with_output().unwrap()
        };
        assert!(
            out.stderr.is_empty(),
            "closed={closed}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            out.status.code(),
            Some(1),
            "closed={closed}: {:?}",
            out.status
        );
    }
}

/// A daemon configured by a file only, on a socket that is not the default.
fn daemon_from_config(root: &Path) -> (std::process::Child, PathBuf, PathBuf) {
    let sock = root.join("elsewhere/moor-test.sock");
    let config = root.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "kubelet-dir: {k}\nstate-dir: {s}\nrun-dir: {r}\nsocket: {sock}\nnode-name: node-cfg\nmetrics-addr: off\nlog-format: json\n",
            k = root.join("kubelet").display(),
            s = root.join("state").display(),
            r = root.join("run").display(),
            sock = sock.display(),
        ),
    )
    .unwrap();
    let log = std::fs::File::create(root.join("daemon.log")).unwrap();
    let mut child = Command::new(moor_bin())
        .arg("daemon")
        .arg("--config")
        .arg(&config)
        .env_clear()
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            Instant::now() < deadline,
            "daemon did not listen: {}",
            std::fs::read_to_string(root.join("daemon.log")).unwrap_or_default()
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "daemon exited: {}",
            std::fs::read_to_string(root.join("daemon.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, sock, config)
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn the_front_end_finds_the_daemon_the_way_it_was_configured() {
    require_privileged_sandbox();
    let t = tempfile::Builder::new()
        .prefix("moor-fe")
        .tempdir_in("/var/tmp")
        .unwrap();
    let (mut daemon, sock, config) = daemon_from_config(t.path());
    let link = driver_link(&t.path().join("plugins"));
    let pod = t
        .path()
        .join("kubelet/pods/p1/volumes/moor~local/v")
        .into_os_string();
    let unmount = [os("unmount"), pod.clone()];

    // Only the daemon's config file says where the socket is.
    let cfg = config.clone().into_os_string();
    let r = run_env(&link, &unmount, &[("MOOR_CONFIG", &cfg)], Stdio::piped()).one_json("config");
    assert_eq!(
        r["status"], "Success",
        "reached through the config file: {r}"
    );
    // The node name comes from the same file: with the daemon down, a volume of node-cfg
    // goes on to the daemon (daemon_unreachable), one of another node is wrong_node.
    let down = t.path().join("down.yaml");
    std::fs::write(
        &down,
        format!(
            "socket: {}\nnode-name: node-cfg\nstate-dir: /nowhere\n",
            t.path().join("none.sock").display()
        ),
    )
    .unwrap();
    let down = down.into_os_string();
    for (json, prefix) in [
        (
            r#"{"path":"/srv/x","node":"node-cfg"}"#,
            "daemon_unreachable:",
        ),
        (
            r#"{"path":"/srv/x","node":"node-zzz"}"#,
            "wrong_node: volume v belongs to node node-zzz, this is node node-cfg",
        ),
    ] {
        let mut opts: serde_json::Value = serde_json::from_str(json).unwrap();
        opts["kubernetes.io/pvOrVolumeName"] = "v".into();
        let r = run_env(
            &link,
            &[os("mount"), pod.clone(), os(&opts.to_string())],
            &[("MOOR_CONFIG", &down)],
            Stdio::piped(),
        )
        .one_json(json);
        let m = r["message"].as_str().unwrap();
        assert!(m.starts_with(prefix), "{json}: {m}");
    }

    // The file install.sh writes beside the driver, with no environment at all.
    let fe = link.parent().unwrap().join("frontend.yaml");
    std::fs::write(&fe, format!("socket: {}\n", sock.display())).unwrap();
    std::fs::set_permissions(&fe, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = run_env(&link, &unmount, &[], Stdio::piped()).one_json("frontend.yaml");
    assert_eq!(r["status"], "Success", "reached through frontend.yaml: {r}");

    // A file others may write is not trusted (it could point the secrets elsewhere), and
    // the answer says so.
    std::fs::set_permissions(&fe, std::fs::Permissions::from_mode(0o666)).unwrap();
    let r = run_env(&link, &unmount, &[], Stdio::piped()).one_json("open frontend.yaml");
    let m = r["message"].as_str().unwrap();
    assert!(
        m.starts_with("daemon_unreachable:") && m.contains("frontend.yaml ignored"),
        "{m}"
    );
    // A malformed config falls back and says so too.
    std::fs::remove_file(&fe).unwrap();
    let broken = t.path().join("broken.yaml");
    std::fs::write(&broken, "socket: [oops\n").unwrap();
    let b = broken.into_os_string();
    let r = run_env(&link, &unmount, &[("MOOR_CONFIG", &b)], Stdio::piped()).one_json("broken");
    let m = r["message"].as_str().unwrap();
    assert!(
        m.starts_with("daemon_unreachable:") && m.contains("broken.yaml ignored"),
        "{m}"
    );

    // `moor status` finds it the same way, and says an OS error once.
    let st = Command::new(moor_bin())
        .arg("status")
        .env_clear()
        .env("MOOR_CONFIG", &cfg)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert!(String::from_utf8_lossy(&st.stdout).contains("node node-cfg"));
    let st = Command::new(moor_bin())
        .arg("status")
        .env_clear()
        .env("MOOR_SOCKET", t.path().join("none.sock"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&st.stderr);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");

    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = daemon.wait();
}

fn daemon_with_socket(root: &Path, sock: &Path) -> std::process::Output {
    let mut child = Command::new(moor_bin())
        .arg("daemon")
        .arg("--kubelet-dir")
        .arg(root.join("kubelet"))
        .arg("--state-dir")
        .arg(root.join("state"))
        .arg("--run-dir")
        .arg(root.join("run"))
        .arg("--socket")
        .arg(sock)
        .args(["--metrics-addr", "off", "--log-format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A daemon that starts serves until stopped: give it time to refuse, then stop it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some()
            || std::os::unix::net::UnixStream::connect(sock).is_ok()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    child.wait_with_output().unwrap()
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn the_socket_directory_is_never_chmodded_and_an_open_one_is_refused() {
    require_privileged_sandbox();
    let t = tempfile::Builder::new()
        .prefix("moor-fe")
        .tempdir_in("/var/tmp")
        .unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    // Shared directories: refused, and left exactly as they were.
    for (name, m, owner) in [
        ("shared", 0o1777, 0),
        ("group", 0o770, 0),
        ("nobody", 0o700, 65534),
    ] {
        let d = t.path().join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(m)).unwrap();
        nix::unistd::chown(&d, Some(nix::unistd::Uid::from_raw(owner)), None).unwrap();
        let out = daemon_with_socket(t.path(), &d.join("moor.sock"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{name}: daemon started in an open directory"
        );
        assert!(
            err.contains("socket directory") && err.contains(&d.display().to_string()),
            "{name}: {err}"
        );
        assert_eq!(mode(&d), m, "{name}: mode changed");
        assert!(!d.join("moor.sock").exists(), "{name}");
    }
    // A private existing one (0755, root's): used as it is, mode untouched.
    let d = t.path().join("private");
    std::fs::create_dir(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = daemon_with_socket(t.path(), &d.join("moor.sock"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&d), 0o755);
    // A missing one: created 0700.
    let d = t.path().join("new/sub");
    let out = daemon_with_socket(t.path(), &d.join("moor.sock"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&d), 0o700);
}

fn threads_of(pid: u32) -> usize {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn idle_connections_are_bounded_and_closed_while_real_calls_go_through() {
    require_privileged_sandbox();
    let d = Daemon::start();
    let pid = d.pid();
    let before = threads_of(pid);
    let idle: Vec<_> = (0..300)
        .map(|_| std::os::unix::net::UnixStream::connect(d.socket()).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let peak = threads_of(pid);
    assert!(
        peak <= before + 70,
        "300 idle connections made {peak} threads (from {before})"
    );
    // A real call meanwhile.
    let src = d.root.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let started = Instant::now();
    d.mount("pod-1", "v", json!({"path": src})).assert_ok();
    let mount_took = started.elapsed();
    let peak = peak.max(threads_of(pid));
    // Every idle one is answered and closed after the request deadline.
    let started = Instant::now();
    for mut c in idle {
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut buf = Vec::new();
        c.read_to_end(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf);
        assert!(text.contains("no request line within"), "{text}");
        assert!(text.lines().count() == 1, "{text}");
    }
    let closed_in = started.elapsed();
    assert!(
        closed_in < Duration::from_secs(10),
        "idle connections closed after {closed_in:?}"
    );
    assert!(
        mount_took < Duration::from_secs(5),
        "a real mount waited {mount_took:?} behind idle connections"
    );
    eprintln!(
        "threads: {before} before, {peak} at most with 300 idle connections; mount took {mount_took:?}; idle ones closed within {closed_in:?}"
    );
    d.unmount("pod-1", "v").assert_ok();
}

/// A daemon with a 4 s operation deadline whose PATH starts with fake `tools` that sleep
/// `secs`.
fn daemon_with_slow(tools: &[&str], secs: u32) -> (Daemon, tempfile::TempDir) {
    let bin = tempfile::Builder::new()
        .prefix("moor-fakebin")
        .tempdir_in("/var/tmp")
        .unwrap();
    for tool in tools {
        let p = bin.path().join(tool);
        std::fs::write(&p, format!("#!/bin/sh\nexec sleep {secs}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
    );
    let mut d = Daemon::start();
    d.stop();
    d.extra_env.push(("PATH".into(), path));
    d.extra_args = vec!["--operation-timeout-seconds".into(), "4".into()];
    d.spawn();
    (d, bin)
}

#[test]
#[ignore = "tier 2: needs root and a private mount namespace (run-tests)"]
fn a_slow_command_is_named_before_the_operation_deadline() {
    require_privileged_sandbox();
    // An ordinary command is cut to end before the operation and killed: the answer names it.
    let (d, _bin) = daemon_with_slow(&["blkid"], 60);
    let dev = LoopDev::new(64);
    let started = Instant::now();
    let r = d.mount("pod-probe", "v", json!({"path": dev.path_str()}));
    let took = started.elapsed();
    let m = r.message();
    assert_eq!(r.status(), "Failure", "{m}");
    assert!(
        m.contains("`blkid") && m.contains("did not finish within") && m.contains("killed"),
        "the failure must name the command: {m}"
    );
    assert!(took < Duration::from_secs(6), "answered after {took:?}");
    eprintln!("blkid: answered in {took:?}: {m}");
    drop(d);

    // mkfs is never killed halfway (that would leave a disk neither blank nor formatted): the
    // deadline's answer names it instead, and it is left to finish.
    let (d, _bin) = daemon_with_slow(&["mkfs.ext4", "mkfs.xfs"], 6);
    for fs in ["ext4", "xfs"] {
        let dev = LoopDev::new(64);
        let started = Instant::now();
        let r = d.mount(
            &format!("pod-{fs}"),
            "v",
            json!({"path": dev.path_str(), "kubernetes.io/fsType": fs}),
        );
        let took = started.elapsed();
        let m = r.message();
        assert_eq!(r.status(), "Failure", "{m}");
        assert!(
            m.contains(&format!("`mkfs.{fs} ")) && m.contains("is left to finish"),
            "{fs}: the failure must name the command: {m}"
        );
        assert!(
            took < Duration::from_secs(6),
            "{fs}: answered after {took:?}"
        );
        eprintln!("{fs}: answered in {took:?}: {m}");
        // Let the fake mkfs end before the loop device goes.
        std::thread::sleep(Duration::from_secs(3));
    }
}
