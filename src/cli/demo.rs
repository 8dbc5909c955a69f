//! `moor demo`: the main job on a built-in default. A real daemon on a temporary kubelet
//! tree with a loop-backed disk, driven exactly as kubelet drives a FlexVolume driver
//! (exec of `moor~local/local` with kubelet's argv and JSON), each step timed. The tree, the
//! daemon, the FlexVolume calls and the loop device are the test harness's (`testkit`), so
//! the demo shows what the host tests check.
//!
//! Invariant: it runs in a private mount namespace of its own, so whatever happens nothing
//! it mounts is visible to the host, and it leaves no mount, loop device or file behind.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::api::{Request, Response, client};
use crate::host::sandbox;
use crate::host::{Cmd, CommandRunner, SystemRunner};
use crate::testkit::{self, AllowList, DaemonProcess, DaemonSpec, LoopDevice, Ready, Tree};

/// Size of the demo disk.
const DISK_MIB: u64 = 256;

/// The demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Not root.
    #[error("moor demo needs root (it creates a loop device and mounts it); run it with sudo")]
    NotRoot,
    /// A step failed.
    #[error("step '{step}' failed")]
    Step {
        /// The step.
        step: String,
        /// What happened.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn fail(step: &str, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> DemoError {
    DemoError::Step {
        step: step.into(),
        source: source.into(),
    }
}

/// Everything the demo created, removed on drop whatever happened.
struct Sandbox {
    tree: Tree,
    loop_dev: Option<LoopDevice>,
    daemon: Option<DaemonProcess>,
}

impl Sandbox {
    fn stop_daemon(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.stop();
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop_daemon();
        let left = self.tree.unmount_all();
        // The loop device goes only once nothing is mounted from it.
        self.loop_dev.take();
        // Only once nothing is mounted below it (checked above) is a recursive removal safe.
        if left.is_empty() {
            let _ = std::fs::remove_dir_all(self.tree.root());
        }
    }
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
    if !sandbox::is_root() {
        return Err(DemoError::NotRoot);
    }
    sandbox::enter_private_mount_namespace().map_err(|e| fail("unshare -m", e))?;
    let tree = Tree::new(std::env::temp_dir().join(format!("moor-demo-{}", std::process::id())));
    tree.create_node_dirs()
        .map_err(|e| fail("create scratch tree", e))?;
    let mut sb = Sandbox {
        tree,
        loop_dev: None,
        daemon: None,
    };
    println!(
        "moor demo: a real daemon, driven as kubelet drives moor~local/local, on a {DISK_MIB} MiB loop-backed disk"
    );
    println!(
        "    scratch tree {} (private mount namespace)\n",
        sb.tree.root().display()
    );
    let mut steps = Steps {
        started: Instant::now(),
        n: 0,
    };
    let result = play(&mut sb, &mut steps);
    sb.stop_daemon();
    let leftovers = sb.tree.mounts().unwrap_or_default();
    let dev = sb
        .loop_dev
        .as_ref()
        .map(|d| d.path_str().to_owned())
        .unwrap_or_default();
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

fn play(sb: &mut Sandbox, steps: &mut Steps) -> Result<(), DemoError> {
    let exe = std::env::current_exe().map_err(|e| fail("find moor", e))?;
    let link = sb
        .tree
        .install_driver_link(&exe)
        .map_err(|e| fail("install driver symlink", e))?;

    let dev = steps.run("create a loop-backed disk", || {
        let d = LoopDevice::create(&sb.tree.root().join("disk.img"), DISK_MIB)
            .map_err(|e| fail("losetup", e))?;
        let dev = d.path_str().to_owned();
        sb.loop_dev = Some(d);
        Ok((dev.clone(), format!("{dev}, blank")))
    })?;

    let metrics_port = testkit::free_port().map_err(|e| fail("pick a port", e))?;
    steps.run("start moor daemon", || {
        let d = start_daemon(&sb.tree, &exe, &dev, metrics_port)?;
        sb.daemon = Some(d);
        Ok(((), "READY=1 received over sd_notify".into()))
    })?;

    let socket = sb.tree.socket();
    let flex = |args: &[&str]| -> Result<serde_json::Value, DemoError> {
        let op = args.first().copied().unwrap_or_default();
        let r = testkit::flex::call(&link, &socket, args).map_err(|e| fail(op, e))?;
        if !r.ok() {
            return Err(fail(op, r.json.to_string()));
        }
        Ok(r.json)
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
    let dir_a = sb.tree.pod_dir(pod_a, "data");
    let dir_b = sb.tree.pod_dir(pod_b, "data");
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
        let ro = std::fs::write(dir_b.join("x"), "x").map_err(|e| e.kind());
        if ro != Err(std::io::ErrorKind::ReadOnlyFilesystem) {
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
    let table = status(&socket)?;
    println!("\n{table}");
    steps.run("unmount pod A", || {
        flex(&["unmount", &dir_a_s])?;
        Ok(((), "stage kept for pod B".into()))
    })?;
    let kubelet = sb.tree.kubelet_dir();
    steps.run("unmount pod B (last user: unstage)", || {
        flex(&["unmount", &dir_b_s])?;
        let left = crate::host::sandbox::mounts_under(&kubelet).unwrap_or_default();
        Ok(((), format!("{} mount(s) left", left.len())))
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

/// Starts the daemon (serving only the demo's disk, as an operator's allow-list would) and
/// waits for its READY=1 on a notify socket, as systemd would.
fn start_daemon(
    tree: &Tree,
    exe: &std::path::Path,
    dev: &str,
    port: u16,
) -> Result<DaemonProcess, DemoError> {
    let config = tree
        .write_config(&AllowList {
            directories: Vec::new(),
            devices: vec![PathBuf::from(dev)],
        })
        .map_err(|e| fail("config file", e))?;
    let mut spec = DaemonSpec::new(exe, "demo-node");
    spec.metrics_addr = format!("127.0.0.1:{port}");
    spec.config = Some(config);
    spec.args = vec!["--reconcile-interval-seconds".into(), "1".into()];
    spec.ready = Ready::Notify;
    DaemonProcess::spawn(tree, &spec).map_err(|e| fail("start daemon", e))
}

fn status(socket: &std::path::Path) -> Result<String, DemoError> {
    match client::call(socket, &Request::Status, Duration::from_secs(5)) {
        Ok(Response::Status { node, volumes, .. }) => Ok(super::status::table(&node, &volumes)),
        Ok(other) => Err(fail("status", format!("{other:?}"))),
        Err(e) => Err(fail("status", e)),
    }
}

/// Waits for the reconciler to publish volume statistics, then returns the exposition.
fn scrape(port: u16) -> Result<String, DemoError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let body = testkit::http_get(port, "/metrics").map_err(|e| fail("scrape", e))?;
        if body.contains("moor_volume_stats_capacity_bytes{") || Instant::now() > deadline {
            return Ok(body);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
