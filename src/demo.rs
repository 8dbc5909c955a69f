//! `moor demo`: the main job on a built-in default. A real daemon on a temporary kubelet
//! tree with a loop-backed disk, driven exactly as kubelet drives a FlexVolume driver
//! (exec of `moor~local/local` with kubelet's argv and JSON), each step timed.
//!
//! Invariant: it runs in a private mount namespace of its own, so whatever happens nothing
//! it mounts is visible to the host, and it leaves no mount, loop device or file behind.

use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::api::{Request, Response, client};
use crate::host::{Cmd, CommandRunner, SystemRunner};

/// Size of the demo disk.
const DISK_MIB: u64 = 256;

/// The demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Not root.
    #[error("moor demo needs root (it creates a loop device and mounts it); run it with sudo")]
    NotRoot,
    /// A step failed.
    #[error("step '{step}' failed: {detail}")]
    Step {
        /// The step.
        step: String,
        /// What happened.
        detail: String,
    },
}

fn fail(step: &str, detail: impl std::fmt::Display) -> DemoError {
    DemoError::Step {
        step: step.into(),
        detail: detail.to_string(),
    }
}

/// Everything the demo created, removed on drop whatever happened.
struct Sandbox {
    root: PathBuf,
    loop_dev: Option<String>,
    daemon: Option<Child>,
}

impl Sandbox {
    fn kubelet(&self) -> PathBuf {
        self.root.join("kubelet")
    }
    fn socket(&self) -> PathBuf {
        self.root.join("run/moor.sock")
    }
    fn driver_exe(&self) -> PathBuf {
        self.root.join("plugins/moor~local/local")
    }
    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.kubelet()
            .join(format!("pods/{uid}/volumes/moor~local/data"))
    }

    fn stop_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let _ = c.wait();
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop_daemon();
        for m in mounts_under(&self.root).into_iter().rev() {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        if let Some(dev) = self.loop_dev.take() {
            let _ = SystemRunner.run(&Cmd::new("losetup").args(["-d", dev.as_str()]));
        }
        // Only once nothing is mounted below it (checked above) is a recursive removal safe.
        if mounts_under(&self.root).is_empty() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

fn mounts_under(root: &Path) -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|t| crate::host::mountinfo::parse(&t).ok())
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(root))
        .collect()
}

struct Steps {
    started: Instant,
    n: usize,
}

impl Steps {
    fn run<T>(
        &mut self,
        what: &str,
        f: impl FnOnce() -> Result<(T, String), DemoError>,
    ) -> Result<T, DemoError> {
        self.n += 1;
        let t = Instant::now();
        let (v, note) = f()?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        println!("{:>2}. {what:<50} {ms:>8.1} ms  {note}", self.n);
        Ok(v)
    }
}

/// Runs the demo; returns the exit code.
pub fn run() -> Result<i32, DemoError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(DemoError::NotRoot);
    }
    private_mount_namespace()?;
    let root = tempdir()?;
    let mut sb = Sandbox {
        root,
        loop_dev: None,
        daemon: None,
    };
    println!(
        "moor demo: a real daemon, driven as kubelet drives moor~local/local, on a {DISK_MIB} MiB loop-backed disk"
    );
    println!(
        "    scratch tree {} (private mount namespace)\n",
        sb.root.display()
    );
    let mut steps = Steps {
        started: Instant::now(),
        n: 0,
    };
    let result = play(&mut sb, &mut steps);
    sb.stop_daemon();
    let leftovers = mounts_under(&sb.root);
    let dev = sb.loop_dev.clone().unwrap_or_default();
    drop(sb);
    match result {
        Ok(()) if leftovers.is_empty() => {
            println!(
                "\ndemo passed in {:.2} s: daemon stopped, nothing left mounted, {dev} detached, scratch tree removed",
                steps.started.elapsed().as_secs_f64()
            );
            Ok(0)
        }
        Ok(()) => Err(fail(
            "cleanup",
            format!("mounts left behind: {leftovers:?}"),
        )),
        Err(e) => Err(e),
    }
}

fn private_mount_namespace() -> Result<(), DemoError> {
    use nix::mount::{MsFlags, mount};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| fail("unshare -m", e))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| fail("make / private", e))
}

fn tempdir() -> Result<PathBuf, DemoError> {
    let base = std::env::temp_dir().join(format!("moor-demo-{}", std::process::id()));
    for d in ["kubelet", "state", "run", "plugins/moor~local"] {
        std::fs::create_dir_all(base.join(d)).map_err(|e| fail("create scratch tree", e))?;
    }
    Ok(base)
}

fn play(sb: &mut Sandbox, steps: &mut Steps) -> Result<(), DemoError> {
    let exe = std::env::current_exe().map_err(|e| fail("find moor", e))?;
    std::os::unix::fs::symlink(&exe, sb.driver_exe())
        .map_err(|e| fail("install driver symlink", e))?;

    let dev = steps.run("create a loop-backed disk", || {
        let img = sb.root.join("disk.img");
        let f = std::fs::File::create(&img).map_err(|e| fail("disk image", e))?;
        f.set_len(DISK_MIB << 20)
            .map_err(|e| fail("disk image", e))?;
        let out = SystemRunner
            .run(&Cmd::new("losetup").args(["--find", "--show"]).arg(&img))
            .map_err(|e| fail("losetup", e))?;
        if !out.success() {
            return Err(fail("losetup", out.stderr_tail()));
        }
        let dev = out.stdout_text().trim().to_owned();
        Ok((dev.clone(), format!("{dev}, blank")))
    })?;
    sb.loop_dev = Some(dev.clone());

    let metrics_port = free_port()?;
    steps.run("start moor daemon", || {
        let child = start_daemon(sb, &exe, metrics_port)?;
        sb.daemon = Some(child.0);
        Ok(((), child.1))
    })?;

    let flex = |args: &[&str]| -> Result<serde_json::Value, DemoError> {
        let out = Command::new(sb.driver_exe())
            .args(args)
            .env("MOOR_SOCKET", sb.socket())
            .output()
            .map_err(|e| fail(args[0], e))?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| fail(args[0], format!("not one JSON object: {e}")))?;
        if v["status"] != "Success" {
            return Err(fail(args[0], v));
        }
        Ok(v)
    };
    let opts = |uid: &str, rw: &str| {
        serde_json::json!({
            "path": dev, "kubernetes.io/fsType": "ext4", "kubernetes.io/readwrite": rw,
            "kubernetes.io/pod.uid": uid, "kubernetes.io/pod.name": format!("demo-{}", &uid[..5]),
            "kubernetes.io/pod.namespace": "demo", "kubernetes.io/pvOrVolumeName": "data",
            "kubernetes.io/mounterArgs.FsGroup": "2000", "kubernetes.io/serviceAccount.name": "default",
        })
        .to_string()
    };
    let (pod_a, pod_b) = (
        "a1b2c3d4-0000-4000-8000-00000000000a",
        "b5e6f7a8-0000-4000-8000-00000000000b",
    );
    let dir_a = sb.pod_dir(pod_a);
    let dir_b = sb.pod_dir(pod_b);
    for d in [&dir_a, &dir_b] {
        std::fs::create_dir_all(d).map_err(|e| fail("create pod dir", e))?;
    }
    let (dir_a_s, dir_b_s) = (dir_a.display().to_string(), dir_b.display().to_string());

    steps.run("init", || {
        let v = flex(&["init"])?;
        Ok(((), format!("capabilities {}", v["capabilities"])))
    })?;
    steps.run("mount pod A rw (blank disk: probe, format, stage)", || {
        flex(&["mount", &dir_a_s, &opts(pod_a, "rw")])?;
        Ok(((), format!("ext4 UUID {}", uuid(&dev))))
    })?;
    steps.run("mount pod B ro (same stage, ro bind)", || {
        flex(&["mount", &dir_b_s, &opts(pod_b, "ro")])?;
        Ok(((), "shares pod A's stage".into()))
    })?;
    steps.run("write through A, read through B", || {
        std::fs::write(dir_a.join("hello.txt"), "written by pod A\n")
            .map_err(|e| fail("write", e))?;
        let back = std::fs::read_to_string(dir_b.join("hello.txt")).map_err(|e| fail("read", e))?;
        let ro = std::fs::write(dir_b.join("x"), "x").map_err(|e| e.raw_os_error());
        if ro != Err(Some(libc::EROFS)) {
            return Err(fail(
                "ro check",
                format!("write through pod B gave {ro:?}, expected EROFS"),
            ));
        }
        Ok(((), format!("B reads {:?}; B's write: EROFS", back.trim())))
    })?;
    steps.run("mount pod A again (kubelet retry)", || {
        flex(&["mount", &dir_a_s, &opts(pod_a, "rw")])?;
        Ok(((), "Success, no second mount".into()))
    })?;
    let table = status(sb)?;
    println!("\n{table}");
    steps.run("unmount pod A", || {
        flex(&["unmount", &dir_a_s])?;
        Ok(((), "stage kept for pod B".into()))
    })?;
    steps.run("unmount pod B (last user: unstage)", || {
        flex(&["unmount", &dir_b_s])?;
        Ok((
            (),
            format!("{} mount(s) left", mounts_under(&sb.kubelet()).len()),
        ))
    })?;
    let before = uuid(&dev);
    steps.run("mount pod A again (data must still be there)", || {
        flex(&["mount", &dir_a_s, &opts(pod_a, "rw")])?;
        let back =
            std::fs::read_to_string(dir_a.join("hello.txt")).map_err(|e| fail("read back", e))?;
        if uuid(&dev) != before {
            return Err(fail(
                "remount",
                "the filesystem UUID changed: the disk was formatted again",
            ));
        }
        Ok((
            (),
            format!("reads {:?}, same UUID: not formatted again", back.trim()),
        ))
    })?;
    let excerpt = steps.run("scrape /metrics", || {
        let text = scrape(metrics_port)?;
        Ok((text, String::new()))
    })?;
    println!();
    for l in excerpt.lines().filter(|l| {
        l.starts_with("moor_operations_total")
            || l.starts_with("moor_operation_errors_total")
            || l.starts_with("moor_volume_stats_capacity_bytes")
            || l.starts_with("moor_volume_stats_used_bytes")
            || l.starts_with("moor_staged_volumes")
            || l.starts_with("moor_published_volumes")
    }) {
        println!("    {l}");
    }
    println!();
    steps.run("unmount pod A", || {
        flex(&["unmount", &dir_a_s])?;
        Ok(((), "unstaged".into()))
    })?;
    steps.run("stop daemon (SIGTERM)", || {
        sb.stop_daemon();
        Ok(((), "clean shutdown".into()))
    })?;
    Ok(())
}

fn uuid(dev: &str) -> String {
    SystemRunner
        .run(&Cmd::new("blkid").args(["-p", "-s", "UUID", "-o", "value", dev]))
        .map(|o| o.stdout_text().trim().to_owned())
        .unwrap_or_default()
}

fn free_port() -> Result<u16, DemoError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| fail("pick a port", e))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| fail("pick a port", e))
}

/// Starts the daemon and waits for its READY=1 on a notify socket, as systemd would.
fn start_daemon(sb: &Sandbox, exe: &Path, port: u16) -> Result<(Child, String), DemoError> {
    let notify_path = sb.root.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).map_err(|e| fail("notify socket", e))?;
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| fail("notify socket", e))?;
    let log =
        std::fs::File::create(sb.root.join("daemon.log")).map_err(|e| fail("daemon log", e))?;
    let log2 = log.try_clone().map_err(|e| fail("daemon log", e))?;
    // A node serves only the disks its operator lists: the demo lists its own loop disk.
    let config = sb.root.join("config.yaml");
    let dev = sb.loop_dev.as_deref().unwrap_or_default();
    std::fs::write(
        &config,
        format!("local:\n  kubernetes: off\n  allowed-devices: [{dev}]\n"),
    )
    .map_err(|e| fail("config file", e))?;
    let child = Command::new(exe)
        .arg("daemon")
        .arg("--config")
        .arg(&config)
        .arg("--kubelet-dir")
        .arg(sb.kubelet())
        .arg("--state-dir")
        .arg(sb.root.join("state"))
        .arg("--run-dir")
        .arg(sb.root.join("run"))
        .arg("--socket")
        .arg(sb.socket())
        .args([
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
            "--node-name",
            "demo-node",
        ])
        .args(["--reconcile-interval-seconds", "1", "--log-format", "json"])
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(|e| fail("start daemon", e))?;
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).map_err(|e| {
        fail(
            "start daemon",
            format!("no READY=1 within 20 s ({e}); see the daemon log"),
        )
    })?;
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    if !msg.contains("READY=1") {
        return Err(fail(
            "start daemon",
            format!("unexpected notification {msg:?}"),
        ));
    }
    Ok((child, "READY=1 received over sd_notify".into()))
}

fn status(sb: &Sandbox) -> Result<String, DemoError> {
    match client::call(&sb.socket(), &Request::Status, Duration::from_secs(5)) {
        Ok(Response::Status { node, volumes, .. }) => Ok(crate::cli::status_table(&node, &volumes)),
        Ok(other) => Err(fail("status", format!("{other:?}"))),
        Err(e) => Err(fail("status", crate::error::Chain(&e))),
    }
}

/// Waits for the reconciler to publish volume statistics, then returns the exposition.
fn scrape(port: u16) -> Result<String, DemoError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s =
            std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| fail("scrape", e))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .map_err(|e| fail("scrape", e))?;
        let mut body = String::new();
        s.read_to_string(&mut body).map_err(|e| fail("scrape", e))?;
        if body.contains("moor_volume_stats_capacity_bytes{") || Instant::now() > deadline {
            return Ok(body);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
