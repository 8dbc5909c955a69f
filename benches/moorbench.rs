//! moor's first benchmark (issue 2, item 12; toward issue 7). Not a test: it prints a table of
//! moor against a peer or the kernel's floor, measured in the same run, and exits 0 on a miss.
//!
//! Run it through `benches/run` (builds, enters a private mount namespace, cleans up). The
//! binary itself expects: root, a private mount namespace, and
//!   moorbench --moor <release moor binary> --reference <bashjq-driver> --root <empty dir>
//!             [--floor <static init program>] [--quick] [--no-scale] [--extra <N mounts>]
//!
//! What it measures (see benches/RESULTS.md for the targets and where they come from):
//!  1. FlexVolume `init` exec round trip: moor's front end (through its `moor~local/local`
//!     symlink) vs a bash+jq community-style driver vs a static C exec floor;
//!  2. FlexVolume `mount` of an already-published volume (full round trip through the daemon)
//!     vs the bash+jq driver's `mount` (3 jq option parses + `mountpoint -q`);
//!  3. publish+unpublish pairs through the daemon's socket API vs a raw mount(2) MS_BIND +
//!     umount2(2) loop from the same childless source (moor's stage mount);
//!  4. the same pairs through the FlexVolume exec path vs util-linux `mount --bind` + `umount`;
//!  5. 1,000 volumes: time to publish, daemon RSS, restart reconstruction time, teardown;
//!  6. 3 and 2 again with N extra mounts (default 10,000) under the kubelet dir;
//!  7. (with 3 and 6) CSI NodePublishVolume+NodeUnpublishVolume pairs of a volume staged
//!     through NodeStageVolume, over one persistent gRPC connection to the local driver's
//!     socket, vs the raw loop onto the same target; and NodePublishVolume's latency vs a
//!     FlexVolume `mount` of an unpublished pod directory.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use moor::csi::proto::csi::v1::volume_capability::{
    AccessMode, AccessType, MountVolume, access_mode::Mode,
};
use moor::csi::proto::csi::v1::{
    NodePublishVolumeRequest, NodeStageVolumeRequest, NodeUnpublishVolumeRequest,
    NodeUnstageVolumeRequest, VolumeCapability,
};
use moor::host::sandbox;
use moor::testkit::csi::CsiClient;
use moor::testkit::{AllowList, DaemonProcess, DaemonSpec, Ready, Tree};
use nix::mount::{MntFlags, MsFlags};
use sha2::{Digest, Sha256};

struct Args {
    moor: PathBuf,
    reference: PathBuf,
    floor: Option<PathBuf>,
    /// Static helper that reports a child's peak RSS (benches/reference/maxrss.c).
    maxrss: Option<PathBuf>,
    root: PathBuf,
    quick: bool,
    scale: bool,
    extra: usize,
    /// `--profile-api N`: only run N API publish+unpublish pairs, with `MOORBENCH_PROFILER`
    /// (a command line; `{pid}` is replaced by the daemon's pid) attached to the daemon.
    profile_api: usize,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        moor: PathBuf::new(),
        reference: PathBuf::new(),
        floor: None,
        maxrss: None,
        root: PathBuf::new(),
        quick: false,
        scale: true,
        extra: 10_000,
        profile_api: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--moor" => a.moor = val()?.into(),
            "--reference" => a.reference = val()?.into(),
            "--floor" => a.floor = Some(val()?.into()),
            "--maxrss" => a.maxrss = Some(val()?.into()),
            "--root" => a.root = val()?.into(),
            "--extra" => a.extra = val()?.parse()?,
            "--profile-api" => a.profile_api = val()?.parse()?,
            "--quick" => a.quick = true,
            "--no-scale" => a.scale = false,
            "--bench" => {} // passed by `cargo bench`
            other => bail!("unknown argument {other}"),
        }
    }
    if a.moor.as_os_str().is_empty()
        || a.reference.as_os_str().is_empty()
        || a.root.as_os_str().is_empty()
    {
        bail!(
            "usage: moorbench --moor <bin> --reference <driver> --root <dir> [--floor <bin>] [--quick] [--no-scale] [--extra N]"
        );
    }
    Ok(a)
}

// ---------------------------------------------------------------- statistics and the table

/// Latency sample in seconds.
struct Lat(Vec<f64>);

impl Lat {
    fn pct(&self, p: f64) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        let i = ((v.len() as f64 * p / 100.0).ceil() as usize).clamp(1, v.len()) - 1;
        v[i]
    }
    fn p50(&self) -> f64 {
        self.pct(50.0)
    }
    fn p99(&self) -> f64 {
        self.pct(99.0)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Row {
    metric: String,
    moor: String,
    reference: String,
    ratio: String,
    target: String,
    pass: Option<bool>,
}

#[derive(Default)]
struct Table(Vec<Row>);

impl Table {
    fn row(
        &mut self,
        metric: &str,
        moor: String,
        reference: String,
        ratio: String,
        target: &str,
        pass: Option<bool>,
    ) {
        let r = Row {
            metric: metric.into(),
            moor,
            reference,
            ratio,
            target: target.into(),
            pass,
        };
        eprintln!(
            "  -> {} | {} | {} | {} | {} | {}",
            r.metric,
            r.moor,
            r.reference,
            r.ratio,
            r.target,
            verdict(r.pass)
        );
        self.0.push(r);
    }

    fn markdown(&self) -> String {
        let mut s = String::from(
            "| metric | moor | reference | ratio | target | pass/miss |\n|---|---|---|---|---|---|\n",
        );
        for r in &self.0 {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                r.metric,
                r.moor,
                r.reference,
                r.ratio,
                r.target,
                verdict(r.pass)
            );
        }
        s
    }
}

fn verdict(p: Option<bool>) -> &'static str {
    match p {
        Some(true) => "PASS",
        Some(false) => "**MISS**",
        None => "info",
    }
}

fn ms(s: f64) -> String {
    format!("{:.3} ms", s * 1e3)
}

fn lat_cell(l: &Lat) -> String {
    format!("p50 {} / p99 {}", ms(l.p50()), ms(l.p99()))
}

fn rate(pairs_per_s: f64) -> String {
    format!("{pairs_per_s:.0} pairs/s")
}

// ---------------------------------------------------------------- the sandbox

/// The bench's daemon runs on the shared harness's scratch tree (`moor::testkit`): the same
/// layout, spawn and teardown as the host tests and `moor demo`.
struct Bench {
    args: Args,
    tree: Tree,
    daemon: Option<DaemonProcess>,
    filler: Vec<PathBuf>,
}

impl Bench {
    fn kubelet(&self) -> PathBuf {
        self.tree.kubelet_dir()
    }
    fn socket(&self) -> PathBuf {
        self.tree.socket()
    }
    fn log(&self) -> PathBuf {
        self.tree.log()
    }
    fn link(&self) -> PathBuf {
        self.tree.driver_link()
    }
    fn pod_dir(&self, uid: &str, vol: &str) -> PathBuf {
        self.tree.pod_dir(uid, vol)
    }

    fn setup(&mut self) -> Result<()> {
        self.tree.create_node_dirs()?;
        std::fs::create_dir_all(self.args.root.join("data"))?;
        // kubelet's dir and moor's run dir on tmpfs, as on a node (/var/lib/kubelet is often
        // its own filesystem; /run always is). The state dir and the volume sources stay on
        // the root disk, so stage records pay a real fsync.
        for d in [self.tree.kubelet_dir(), self.tree.run_dir()] {
            nix::mount::mount(
                Some("tmpfs"),
                &d,
                Some("tmpfs"),
                MsFlags::empty(),
                Some("mode=0755"),
            )
            .with_context(|| format!("mount tmpfs on {}", d.display()))?;
        }
        self.tree.install_driver_link(&self.args.moor)?;
        self.start_daemon()?;
        Ok(())
    }

    /// Starts the daemon; returns the time from its spawn until its socket answered.
    fn start_daemon(&mut self) -> Result<Duration> {
        // A node serves only the directories its operator lists: the bench's sources.
        let config = self.tree.write_config(&AllowList {
            directories: vec![self.args.root.join("data")],
            devices: Vec::new(),
        })?;
        // The CSI rows dial the local driver's socket; nothing registers with a kubelet.
        let mut yaml = std::fs::read_to_string(&config)?;
        yaml.push_str("csi:\n  enabled: true\n  drivers: [local]\n  register: false\n");
        std::fs::write(&config, yaml)?;
        let mut spec = DaemonSpec::new(&self.args.moor, "bench-node");
        spec.config = Some(config);
        spec.env_remove = vec!["MOOR_LOG".into()];
        // A killed benchmark never leaves a daemon (and its namespace) behind.
        spec.terminate_with_parent = true;
        spec.ready = Ready::Socket {
            poll: Duration::from_micros(500),
        };
        spec.deadline = Duration::from_secs(60);
        let d = DaemonProcess::spawn(&self.tree, &spec).map_err(|e| {
            anyhow::anyhow!(
                "{e}:\n{}",
                std::fs::read_to_string(self.log()).unwrap_or_default()
            )
        })?;
        let ready = d.ready_after;
        self.daemon = Some(d);
        Ok(ready)
    }

    fn stop_daemon(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.stop();
        }
    }

    fn daemon_pid(&self) -> u32 {
        self.daemon.as_ref().map_or(0, DaemonProcess::pid)
    }

    fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.daemon_pid()))
            .unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn add_filler(&mut self, n: usize) -> Result<Duration> {
        let base = self.kubelet().join("pods/filler");
        let t = Instant::now();
        for i in 0..n {
            let d = base.join(format!("m{i}"));
            std::fs::create_dir_all(&d)?;
            nix::mount::mount(
                Some("tmpfs"),
                &d,
                Some("tmpfs"),
                MsFlags::empty(),
                Some("size=64k"),
            )
            .with_context(|| format!("filler mount {i}"))?;
            self.filler.push(d);
        }
        Ok(t.elapsed())
    }

    fn remove_filler(&mut self) {
        for d in self.filler.drain(..).rev() {
            let _ = nix::mount::umount2(&d, MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(&d);
        }
    }

    fn cleanup(&mut self) {
        self.stop_daemon();
        self.remove_filler();
        // Everything still mounted under the root, deepest first.
        self.tree.unmount_all();
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn mount_count() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo").map_or(0, |t| t.lines().count())
}

// ---------------------------------------------------------------- clients

/// kubelet's option JSON for a local directory volume (the keys a real kubelet sends).
fn options_json(uid: &str, vol: &str, src: &Path) -> String {
    serde_json::json!({
        "kubernetes.io/fsType": "",
        "kubernetes.io/pod.name": format!("pod-{uid}"),
        "kubernetes.io/pod.namespace": "default",
        "kubernetes.io/pod.uid": uid,
        "kubernetes.io/pvOrVolumeName": vol,
        "kubernetes.io/readwrite": "rw",
        "kubernetes.io/serviceAccount.name": "default",
        "path": src.to_str().unwrap_or_default(),
    })
    .to_string()
}

fn mount_request(target: &Path, opts_json: &str) -> Vec<u8> {
    let options: serde_json::Value = serde_json::from_str(opts_json).unwrap_or_default();
    let mut v = serde_json::to_vec(&serde_json::json!({
        "op": "mount", "driver": "local", "target": target, "options": options,
    }))
    .unwrap_or_default();
    v.push(b'\n');
    v
}

fn unmount_request(target: &Path) -> Vec<u8> {
    let mut v = serde_json::to_vec(
        &serde_json::json!({"op": "unmount", "driver": "local", "target": target}),
    )
    .unwrap_or_default();
    v.push(b'\n');
    v
}

/// One socket round trip, as small as a client can make it: connect, one write, read to '\n'.
fn api(sock: &Path, line: &[u8], buf: &mut Vec<u8>) -> Result<()> {
    let mut s = UnixStream::connect(sock)?;
    s.write_all(line)?;
    buf.clear();
    let mut chunk = [0u8; 512];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.ends_with(b"\n") {
            break;
        }
    }
    // The daemon's typed answer (api::Response): only `done` is a success.
    if !matches!(
        serde_json::from_slice::<moor::api::Response>(buf),
        Ok(moor::api::Response::Done)
    ) {
        bail!("daemon answered {}", String::from_utf8_lossy(buf));
    }
    Ok(())
}

/// Exec a program, read stdout to the end, check a Success reply when asked.
fn exec(prog: &Path, args: &[&str], sock: &Path, want_success: bool) -> Result<f64> {
    let t = Instant::now();
    let out = Command::new(prog)
        .args(args)
        .env("MOOR_SOCKET", sock)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    let dt = t.elapsed().as_secs_f64();
    if want_success
        && (!out.status.success() || !String::from_utf8_lossy(&out.stdout).contains("Success"))
    {
        bail!(
            "{} {:?}: {} {} {}",
            prog.display(),
            args,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(dt)
}

fn exec_n(n: usize, prog: &Path, args: &[&str], sock: &Path) -> Result<Lat> {
    for _ in 0..(n / 20).max(3) {
        exec(prog, args, sock, true)?;
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(exec(prog, args, sock, true)?);
    }
    Ok(Lat(v))
}

// ---------------------------------------------------------------- CSI

/// A local directory volume staged through CSI (`local.csi.moor.io`) and the requests of its
/// publish pairs, all on one persistent connection, as kubelet keeps one per driver.
struct Csi {
    client: CsiClient,
    volume_id: String,
    staging: String,
    publish: NodePublishVolumeRequest,
    unpublish: NodeUnpublishVolumeRequest,
    /// moor's stage of the volume (the raw loop binds it too) and kubelet's target.
    stage: PathBuf,
    target: PathBuf,
}

/// The mounts under moor's local stage directory.
fn local_stages(b: &Bench) -> Result<Vec<PathBuf>> {
    Ok(moor::testkit::tree::volume_mounts_under(
        &b.kubelet().join("plugins/moor/local"),
    )?)
}

impl Csi {
    /// Stages `src` through NodeStageVolume, at the paths kubelet would use.
    fn stage(b: &Bench, src: &Path) -> Result<Csi> {
        let kubelet = b.kubelet();
        let client = CsiClient::connect(
            &moor::csi::socket_path(&kubelet, "local"),
            Duration::from_secs(30),
        )?;
        let volume_id = "pv-bench-csi".to_owned();
        let hash: String = Sha256::digest(volume_id.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let staging = kubelet
            .join("plugins/kubernetes.io/csi/local.csi.moor.io")
            .join(hash)
            .join("globalmount");
        std::fs::create_dir_all(&staging)?;
        let pod_volume = kubelet
            .join("pods/pod-csi/volumes/kubernetes.io~csi")
            .join(&volume_id);
        std::fs::create_dir_all(&pod_volume)?;
        let target = pod_volume.join("mount");
        let capability = Some(VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode {
                mode: Mode::SingleNodeWriter as i32,
            }),
        });
        let mut context = HashMap::from([("path".to_owned(), src.display().to_string())]);
        let staging = staging.display().to_string();
        let before = local_stages(b)?;
        client
            .run(client.node().node_stage_volume(NodeStageVolumeRequest {
                volume_id: volume_id.clone(),
                staging_target_path: staging.clone(),
                volume_capability: capability.clone(),
                volume_context: context.clone(),
                ..Default::default()
            }))
            .context("NodeStageVolume")?;
        let stage = local_stages(b)?
            .into_iter()
            .find(|m| !before.contains(m))
            .context("NodeStageVolume answered OK but moor staged nothing")?;
        // podInfoOnMount's keys, as kubelet adds them to every publish.
        for (k, v) in [
            ("name", "pod-csi"),
            ("namespace", "default"),
            ("uid", "pod-csi"),
        ] {
            context.insert(format!("csi.storage.k8s.io/pod.{k}"), v.into());
        }
        let target_path = target.display().to_string();
        Ok(Csi {
            publish: NodePublishVolumeRequest {
                volume_id: volume_id.clone(),
                staging_target_path: staging.clone(),
                target_path: target_path.clone(),
                volume_capability: capability,
                volume_context: context,
                ..Default::default()
            },
            unpublish: NodeUnpublishVolumeRequest {
                volume_id: volume_id.clone(),
                target_path,
            },
            client,
            volume_id,
            staging,
            stage,
            target,
        })
    }

    /// A new connection after the daemon restarted (the stage itself was reconstructed).
    fn redial(&mut self, b: &Bench) -> Result<()> {
        self.client = CsiClient::connect(
            &moor::csi::socket_path(&b.kubelet(), "local"),
            Duration::from_secs(30),
        )?;
        Ok(())
    }

    fn publish(&self) -> Result<()> {
        let c = &self.client;
        let call = c.run(c.node().node_publish_volume(self.publish.clone()));
        call.map(drop).context("NodePublishVolume")
    }

    fn unpublish(&self) -> Result<()> {
        let c = &self.client;
        let call = c.run(c.node().node_unpublish_volume(self.unpublish.clone()));
        call.map(drop).context("NodeUnpublishVolume")
    }

    /// One publish whose bind is looked at: the pairs below measure real binds.
    fn check(&self) -> Result<()> {
        self.publish()?;
        let bound = moor::host::mounts::statx_mount(&self.target)?.is_mount_root;
        self.unpublish()?;
        if !bound {
            bail!(
                "NodePublishVolume answered OK but bound nothing at {}",
                self.target.display()
            );
        }
        Ok(())
    }

    /// `n` NodePublishVolume + NodeUnpublishVolume pairs; returns pairs/s.
    fn pairs(&self, n: usize) -> Result<f64> {
        let t = Instant::now();
        for _ in 0..n {
            self.publish()?;
            self.unpublish()?;
        }
        Ok(n as f64 / t.elapsed().as_secs_f64())
    }

    /// The latency of NodePublishVolume onto a target not published (each unpublish untimed).
    fn publish_latency(&self, n: usize) -> Result<Lat> {
        let mut v = Vec::with_capacity(n);
        for i in 0..n + 10 {
            let t = Instant::now();
            self.publish()?;
            let dt = t.elapsed().as_secs_f64();
            self.unpublish()?;
            if i >= 10 {
                v.push(dt);
            }
        }
        Ok(Lat(v))
    }

    /// NodeUnstageVolume: CSI stages end only there.
    fn unstage(&self) -> Result<()> {
        let c = &self.client;
        let req = NodeUnstageVolumeRequest {
            volume_id: self.volume_id.clone(),
            staging_target_path: self.staging.clone(),
        };
        let call = c.run(c.node().node_unstage_volume(req));
        call.map(drop).context("NodeUnstageVolume")
    }
}

/// The latency of a FlexVolume `mount` of a pod directory not published (a bind of the
/// stage, through the exec'd front end and the daemon), each `unmount` untimed.
fn flex_publish_latency(b: &Bench, c: &Ctx, n: usize) -> Result<Lat> {
    let link = b.link();
    let churn = c.churn.to_str().unwrap_or_default();
    let mut v = Vec::with_capacity(n);
    for i in 0..n + 10 {
        let m = exec(&link, &["mount", churn, &c.churn_json], &c.sock, true)?;
        exec(&link, &["unmount", churn], &c.sock, true)?;
        if i >= 10 {
            v.push(m);
        }
    }
    Ok(Lat(v))
}

/// The CSI rows at the table's current mount count: pairs against the raw loop on the same
/// target (the 0.30 target), and NodePublishVolume's latency against FlexVolume's `mount`.
fn csi_rows(
    b: &Bench,
    c: &Ctx,
    csi: &Csi,
    t: &mut Table,
    n_pairs: (usize, usize),
    n_lat: usize,
) -> Result<()> {
    let (n_api, n_raw) = n_pairs;
    csi.check()?;
    let p = pair_rates(
        b,
        &mut |n| csi.pairs(n),
        (&csi.stage, &csi.target),
        3,
        n_api,
        n_raw,
    )?;
    let label = format!("{} mounts in table", mount_count());
    pair_rows(t, CSI, &label, &p);
    let grpc = csi.publish_latency(n_lat)?;
    let flex = flex_publish_latency(b, c, n_lat)?;
    t.row(
        &format!("NodePublishVolume vs FlexVolume `mount` of an unpublished pod dir ({n_lat} calls each), {label}"),
        lat_cell(&grpc),
        format!("FlexVolume `mount` exec: {}", lat_cell(&flex)),
        format!("{:.2}× faster (p50)", flex.p50() / grpc.p50()),
        "p50 below FlexVolume's (no exec per call)",
        Some(grpc.p50() < flex.p50()),
    );
    Ok(())
}

// ---------------------------------------------------------------- measurements

struct Ctx {
    sock: PathBuf,
    src0: PathBuf,
    stage0: PathBuf,
    held: PathBuf,
    held_json: String,
    churn: PathBuf,
    churn_json: String,
}

/// publish+unpublish pairs through the socket API; returns pairs/s.
fn api_pairs(c: &Ctx, n: usize) -> Result<f64> {
    let (m, u) = (
        mount_request(&c.churn, &c.churn_json),
        unmount_request(&c.churn),
    );
    let mut buf = Vec::with_capacity(512);
    let t = Instant::now();
    for _ in 0..n {
        api(&c.sock, &m, &mut buf)?;
        api(&c.sock, &u, &mut buf)?;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// mount(2) MS_BIND + umount2(2) from moor's stage mount (a childless mount root) to the same
/// pod directory; returns pairs/s.
fn raw_pairs(stage: &Path, target: &Path, n: usize) -> Result<f64> {
    std::fs::create_dir_all(target)?;
    let t = Instant::now();
    for _ in 0..n {
        nix::mount::mount(
            Some(stage),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )?;
        nix::mount::umount2(target, MntFlags::empty())?;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Alternating rounds of both, medians: the two loops see the same machine state.
struct Pairs {
    /// Wall-clock pairs/s through the API, and of the raw loop.
    api: f64,
    raw: f64,
    /// CPU seconds per pair: the daemon (all its threads), the client, the raw loop.
    daemon_cpu: f64,
    client_cpu: f64,
    raw_cpu: f64,
}

impl Pairs {
    /// moor's own CPU cost per pair beyond the two syscalls the raw loop makes.
    fn overhead(&self) -> f64 {
        self.daemon_cpu + self.client_cpu - self.raw_cpu
    }
}

/// CPU seconds (user + system) the process `pid` has used, threads that exited included.
fn proc_cpu(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(')').map_or("", |(_, a)| a);
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / hz
}

/// CPU seconds this thread has used.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// One way of running `n` publish+unpublish pairs through moor; returns pairs/s.
type MoorPairs<'a> = &'a mut dyn FnMut(usize) -> Result<f64>;

/// Alternating rounds of moor's pairs and the raw loop from `stage` onto `target`, medians:
/// the two loops see the same machine state. CPU time is summed over all rounds (it is what
/// the machine's load distorts least).
fn pair_rates(
    b: &Bench,
    moor: MoorPairs<'_>,
    (stage, target): (&Path, &Path),
    rounds: usize,
    n_api: usize,
    n_raw: usize,
) -> Result<Pairs> {
    moor(n_api / 5)?;
    raw_pairs(stage, target, n_raw / 5)?;
    let pid = b.daemon_pid();
    let (mut a, mut r) = (Vec::new(), Vec::new());
    let (mut dcpu, mut ccpu, mut rcpu) = (0.0, 0.0, 0.0);
    for _ in 0..rounds {
        let (d0, c0) = (proc_cpu(pid), thread_cpu());
        a.push(moor(n_api)?);
        dcpu += proc_cpu(pid) - d0;
        ccpu += thread_cpu() - c0;
        let r0 = thread_cpu();
        r.push(raw_pairs(stage, target, n_raw)?);
        rcpu += thread_cpu() - r0;
    }
    let (na, nr) = ((rounds * n_api) as f64, (rounds * n_raw) as f64);
    Ok(Pairs {
        api: median(a),
        raw: median(r),
        daemon_cpu: dcpu / na,
        client_cpu: ccpu / na,
        raw_cpu: rcpu / nr,
    })
}

/// [`pair_rates`] of the daemon's socket API against the raw loop on the same pod directory.
fn api_rates(b: &Bench, c: &Ctx, rounds: usize, n_api: usize, n_raw: usize) -> Result<Pairs> {
    pair_rates(
        b,
        &mut |n| api_pairs(c, n),
        (&c.stage0, &c.churn),
        rounds,
        n_api,
        n_raw,
    )
}

/// How the socket API's rows name it.
const API: &str = "daemon API";
/// How the CSI rows name it.
const CSI: &str = "CSI gRPC (one connection)";

/// The wall-clock row (the target) and the CPU row (what the time is made of); `via` says
/// which way moor was called.
fn pair_rows(t: &mut Table, via: &str, label: &str, p: &Pairs) {
    t.row(
        &format!("publish+unpublish via {via}, {label}"),
        rate(p.api),
        format!("raw bind+umount2 loop: {}", rate(p.raw)),
        format!("{:.3}", p.api / p.raw),
        "≥ 0.30",
        Some(p.api / p.raw >= 0.30),
    );
    t.row(
        &format!("  CPU per pair, {label}"),
        format!("daemon {} + client {}", ms(p.daemon_cpu), ms(p.client_cpu)),
        format!("raw loop {}", ms(p.raw_cpu)),
        format!("{:.3}", p.raw_cpu / (p.daemon_cpu + p.client_cpu)),
        "(explains the row above)",
        None,
    );
}

/// Pairs through exec: moor's front end vs util-linux; returns (moor pairs/s, util-linux pairs/s).
fn exec_pairs(b: &Bench, c: &Ctx, n: usize) -> Result<(f64, f64)> {
    let link = b.link();
    let churn = c.churn.to_str().unwrap_or_default();
    let stage = c.stage0.to_str().unwrap_or_default();
    let mount_bin = Path::new("/usr/bin/mount");
    let umount_bin = Path::new("/usr/bin/umount");
    let (mut tm, mut tu) = (0.0, 0.0);
    for i in 0..n + 10 {
        let m = exec(&link, &["mount", churn, &c.churn_json], &c.sock, true)?
            + exec(&link, &["unmount", churn], &c.sock, true)?;
        let u = exec(mount_bin, &["--bind", stage, churn], &c.sock, false)?
            + exec(umount_bin, &[churn], &c.sock, false)?;
        if i >= 10 {
            tm += m;
            tu += u;
        }
    }
    Ok((n as f64 / tm, n as f64 / tu))
}

fn mount_path(b: &Bench, c: &Ctx, n_moor: usize, n_ref: usize) -> Result<(Lat, Lat)> {
    let held = c.held.to_str().unwrap_or_default();
    let moor = exec_n(n_moor, &b.link(), &["mount", held, &c.held_json], &c.sock)?;
    let reference = exec_n(
        n_ref,
        &b.args.reference,
        &["mount", held, &c.held_json],
        &c.sock,
    )?;
    Ok((moor, reference))
}

fn reconstructed_ms(log: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("state reconstructed"))?;
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    v.get("elapsed_ms")?.as_f64()
}

fn run(b: &mut Bench, t: &mut Table) -> Result<()> {
    let q = b.args.quick;
    let scale = |full: usize, quick: usize| if q { quick } else { full };
    b.setup()?;
    let sock = b.socket();

    // A local directory volume, held published by one pod for the whole run: every later
    // publish of it is a pure publish (the stage stays).
    let src0 = b.args.root.join("data/vol0");
    std::fs::create_dir_all(&src0)?;
    let held = b.pod_dir("pod-held", "vol0");
    let churn = b.pod_dir("pod-churn", "vol0");
    std::fs::create_dir_all(&held)?;
    std::fs::create_dir_all(&churn)?;
    let held_json = options_json("pod-held", "vol0", &src0);
    let churn_json = options_json("pod-churn", "vol0", &src0);
    let mut buf = Vec::new();
    api(&sock, &mount_request(&held, &held_json), &mut buf).context("publish the held volume")?;
    let stage0 = std::fs::read_dir(b.kubelet().join("plugins/moor/local"))?
        .next()
        .context("no stage directory after the first publish")??
        .path();
    let st = moor::host::mounts::statx_mount(&stage0)?;
    if !st.is_mount_root {
        bail!("{} is not a mount root", stage0.display());
    }
    let c = Ctx {
        sock: sock.clone(),
        src0,
        stage0,
        held,
        held_json,
        churn,
        churn_json,
    };
    eprintln!(
        "moorbench: daemon up, volume staged at {}, {} mounts in the table",
        c.stage0.display(),
        mount_count()
    );
    if b.args.profile_api > 0 {
        return profile_api(b, &c, t);
    }

    // 1. init
    eprintln!("[1] init exec round trip");
    let n_init = scale(1000, 200);
    let moor_init = exec_n(n_init, &b.link(), &["init"], &sock)?;
    let ref_init = exec_n(n_init, &b.args.reference, &["init"], &sock)?;
    t.row(
        &format!("FlexVolume `init` exec round trip ({n_init} calls)"),
        lat_cell(&moor_init),
        format!("bash driver (no jq in init): {}", lat_cell(&ref_init)),
        format!("{:.2}× faster (p50)", ref_init.p50() / moor_init.p50()),
        "p50 ≤ 0.9 ms (anchors); issue 2: ≤ 2 ms",
        Some(moor_init.p50() <= 0.9e-3),
    );
    t.row(
        "`init` vs bash: issue 2's ≥ 10× (unreachable: a bash `init` runs no jq)",
        ms(moor_init.p50()),
        ms(ref_init.p50()),
        format!("{:.2}×", ref_init.p50() / moor_init.p50()),
        "≥ 10× (superseded by the `mount` row)",
        None,
    );
    if let Some(floor) = &b.args.floor {
        let fl = exec_n(n_init, floor, &["init"], &sock)?;
        t.row(
            "`init` vs the exec floor (static C program printing the reply)",
            ms(moor_init.p50()),
            lat_cell(&fl),
            format!("{:.2}× the floor (p50)", moor_init.p50() / fl.p50()),
            "≤ 2× the floor",
            Some(moor_init.p50() <= 2.0 * fl.p50()),
        );
    }

    // 2. mount of an already-published volume
    eprintln!("[2] mount of an already-published volume");
    let (n_m, n_r) = (scale(500, 100), scale(200, 30));
    let (mm, mr) = mount_path(b, &c, n_m, n_r)?;
    t.row(
        &format!("FlexVolume `mount`, already published ({n_m} moor / {n_r} bash+jq calls)"),
        lat_cell(&mm),
        format!("bash+jq: {}", lat_cell(&mr)),
        format!("{:.1}× faster (p50)", mr.p50() / mm.p50()),
        "p50 ≤ 2 ms and ≥ 25× faster",
        Some(mm.p50() <= 2e-3 && mr.p50() / mm.p50() >= 25.0),
    );

    // 3. API pairs vs raw syscalls
    eprintln!("[3] publish+unpublish through the API vs raw mount(2)+umount2(2)");
    let (rounds, n_api, n_raw) = (3, scale(1000, 300), scale(10_000, 3000));
    let p0 = api_rates(b, &c, rounds, n_api, n_raw)?;
    pair_rows(t, API, &format!("{} mounts in table", mount_count()), &p0);
    let overhead0 = p0.overhead();

    // 4. exec path pairs
    eprintln!("[4] publish+unpublish through FlexVolume exec vs util-linux mount/umount exec");
    let n_x = scale(300, 60);
    let (xm, xu) = exec_pairs(b, &c, n_x)?;
    t.row(
        &format!("publish+unpublish via FlexVolume exec ({n_x} pairs)"),
        format!("{} ({} per pair)", rate(xm), ms(1.0 / xm)),
        format!(
            "util-linux `mount --bind` + `umount`: {} ({} per pair)",
            rate(xu),
            ms(1.0 / xu)
        ),
        format!("{:.2}×", xm / xu),
        "moor faster (> 1.0×)",
        Some(xm > xu),
    );

    // 4b. CSI: one persistent gRPC connection, a volume staged through NodeStageVolume.
    eprintln!(
        "[4b] CSI NodePublishVolume+NodeUnpublishVolume through gRPC vs raw mount(2)+umount2(2)"
    );
    let csi_src = b.args.root.join("data/vol-csi");
    std::fs::create_dir_all(&csi_src)?;
    let mut csi = Csi::stage(b, &csi_src)?;
    let n_lat = scale(300, 60);
    csi_rows(b, &c, &csi, t, (n_api, n_raw), n_lat)?;

    // 5. 1,000 and 10,000 volumes
    let mut overhead_1k = None;
    if b.args.scale {
        let small = scale(1000, 200);
        let big = scale(10_000, 2000);
        let f1 = scale_run(
            b,
            t,
            small,
            Some((&c, rounds, n_api, n_raw, &mut overhead_1k)),
        )?;
        let f2 = scale_run(b, t, big, None)?;
        let ratio = f2.publish_s / f1.publish_s;
        let n_ratio = big as f64 / small as f64;
        t.row(
            &format!("publish {big} vs {small} volumes: total-time ratio"),
            format!("{:.2} s vs {:.2} s", f2.publish_s, f1.publish_s),
            format!("linear would be {n_ratio:.0}"),
            format!("{ratio:.2}"),
            "≤ 12 (flat per volume)",
            Some(ratio <= 1.2 * n_ratio),
        );
        t.row(
            &format!("restart reconstruction with {small} published"),
            format!("{:.1} ms", f1.recon_ms),
            "-".into(),
            "-".into(),
            "≤ 1 s",
            Some(f1.recon_ms <= 1000.0),
        );
        t.row(
            &format!("restart reconstruction with {big} published"),
            format!("{:.1} ms", f2.recon_ms),
            "-".into(),
            "-".into(),
            "≤ 10 s",
            Some(f2.recon_ms <= 10_000.0),
        );
        t.row(
            &format!("daemon RSS with {big} volumes published"),
            format!("{:.1} MiB", f2.rss_kib as f64 / 1024.0),
            "-".into(),
            "-".into(),
            "≤ 50 MB",
            Some((f2.rss_kib as f64) * 1024.0 <= 50e6),
        );
    }

    // Front end's peak memory: one `init` (answered locally) and one `mount` (a daemon round
    // trip of an already-published volume), through a small static parent (see maxrss.c).
    if let Some(helper) = b.args.maxrss.clone() {
        let held = c.held.display().to_string();
        let fe_init = peak_rss_kib(&helper, &b.link(), &["init"], &sock)?;
        let fe_mount = peak_rss_kib(&helper, &b.link(), &["mount", &held, &c.held_json], &sock)?;
        let floor = peak_rss_kib(&helper, Path::new("/bin/true"), &[], &sock)?;
        t.row(
            "FlexVolume front end peak RSS (`init` / `mount` of a published volume)",
            format!(
                "{:.2} MiB / {:.2} MiB",
                fe_init as f64 / 1024.0,
                fe_mount as f64 / 1024.0
            ),
            format!(
                "`/bin/true` through the same helper: {:.2} MiB",
                floor as f64 / 1024.0
            ),
            "-".into(),
            "≤ 5 MB",
            Some((fe_init.max(fe_mount) as f64) * 1024.0 <= 5e6),
        );
    }

    // 6. at N extra mounts
    if b.args.extra > 0 {
        let n = b.args.extra;
        eprintln!("[6] again with {n} extra tmpfs mounts under the kubelet dir");
        let took = b.add_filler(n)?;
        eprintln!(
            "    {n} filler mounts in {:.2} s; {} mounts in the table",
            took.as_secs_f64(),
            mount_count()
        );
        let (own, findmnt) = table_refresh(scale(20, 5))?;
        t.row(
            &format!(
                "mount-table refresh, {} mounts: moor's snapshot (read + parse) vs `findmnt -rn`",
                mount_count()
            ),
            ms(own),
            format!("findmnt: {}", ms(findmnt)),
            format!("{:.2}× faster", findmnt / own),
            "faster than findmnt",
            Some(own < findmnt),
        );
        let px = api_rates(b, &c, rounds, n_api, n_raw)?;
        pair_rows(t, API, &format!("{} mounts in table", mount_count()), &px);
        let overheadx = px.overhead();
        let base = overhead_1k.unwrap_or(overhead0);
        t.row(
            &format!(
                "moor's own CPU per pair beyond the raw syscalls: {} → +{n} mounts",
                if overhead_1k.is_some() {
                    "1k volumes"
                } else {
                    "0 extra"
                }
            ),
            format!("{} → {}", ms(base), ms(overheadx)),
            "kubelet GetMountRefs: 3.7 → 65 ms".into(),
            format!("{:.2}", overheadx / base),
            "≤ 1.5 (flat)",
            Some(overheadx / base <= 1.5),
        );
        let (n_m, n_r) = (scale(300, 60), scale(30, 10));
        let (mmx, mrx) = mount_path(b, &c, n_m, n_r)?;
        t.row(
            &format!(
                "FlexVolume `mount`, already published, {} mounts in table",
                mount_count()
            ),
            lat_cell(&mmx),
            format!("bash+jq: {}", lat_cell(&mrx)),
            format!("{:.1}× faster (p50)", mrx.p50() / mmx.p50()),
            "p50 ≤ 2 ms and ≥ 25× faster",
            Some(mmx.p50() <= 2e-3 && mrx.p50() / mmx.p50() >= 25.0),
        );
        if b.args.scale {
            csi.redial(b)?; // the scale steps restarted the daemon
        }
        csi_rows(b, &c, &csi, t, (n_api, n_raw), n_lat)?;
        b.remove_filler();
    }

    if b.args.scale && b.args.extra == 0 {
        csi.redial(b)?;
    }
    csi.unstage()?;
    // Leave it as kubelet would: unmount the held pod, which unstages the volume.
    api(&sock, &unmount_request(&c.held), &mut buf)?;
    let _ = c.src0;
    Ok(())
}

/// What one scale step measured.
struct ScaleFigures {
    publish_s: f64,
    rss_kib: u64,
    recon_ms: f64,
}

type PairProbe<'a> = (&'a Ctx, usize, usize, usize, &'a mut Option<f64>);

/// Publishes `nv` distinct volumes, reports RSS, restarts the daemon (reconstruction), checks
/// a re-mount answers Success, unmounts everything. With `pairs`, also measures API pairs
/// while the volumes are published.
fn scale_run(
    b: &mut Bench,
    t: &mut Table,
    nv: usize,
    pairs: Option<PairProbe<'_>>,
) -> Result<ScaleFigures> {
    eprintln!("[5] {nv} distinct volumes: publish, RSS, restart, teardown");
    let sock = b.socket();
    let mut buf = Vec::new();
    let rss0 = b.rss_kib();
    let mut reqs = Vec::with_capacity(nv);
    for i in 0..nv {
        let src = b.args.root.join(format!("data/v{i}"));
        std::fs::create_dir_all(&src)?;
        let uid = format!("pod-s{i}");
        let dir = b.pod_dir(&uid, &format!("v{i}"));
        std::fs::create_dir_all(&dir)?;
        reqs.push((
            mount_request(&dir, &options_json(&uid, &format!("v{i}"), &src)),
            unmount_request(&dir),
            dir,
        ));
    }
    let t0 = Instant::now();
    for (m, _, _) in &reqs {
        api(&sock, m, &mut buf)?;
    }
    let up = t0.elapsed().as_secs_f64();
    let rss1 = b.rss_kib();
    t.row(
        &format!("publish {nv} distinct volumes (stage+publish each, sequential API calls)"),
        format!("{:.2} s total, {} per volume", up, ms(up / nv as f64)),
        "-".into(),
        "-".into(),
        "report",
        None,
    );
    t.row(
        &format!("daemon RSS: idle with 1 volume → {nv} published"),
        format!(
            "{:.1} MiB → {:.1} MiB",
            rss0 as f64 / 1024.0,
            rss1 as f64 / 1024.0
        ),
        "-".into(),
        "-".into(),
        "report",
        None,
    );
    if let Some((c, rounds, n_api, n_raw, overhead)) = pairs {
        let p = api_rates(b, c, rounds, n_api, n_raw)?;
        pair_rows(
            t,
            API,
            &format!("{nv} volumes published ({} mounts)", mount_count()),
            &p,
        );
        *overhead = Some(p.overhead());
    }
    b.stop_daemon();
    let _ = std::fs::remove_file(b.log());
    let ready = b.start_daemon()?;
    let recon = reconstructed_ms(&b.log()).unwrap_or(f64::NAN);
    t.row(
        &format!("restart with {nv} published: spawn → socket ready"),
        format!("{} (reconstruction {recon:.1} ms)", ms(ready.as_secs_f64())),
        "-".into(),
        "-".into(),
        "report",
        None,
    );
    // The volumes survived the restart: kubelet's idempotent re-mount must answer Success.
    api(&sock, &reqs[nv / 2].0, &mut buf).context("re-mount after restart")?;
    let t0 = Instant::now();
    for (_, u, _) in &reqs {
        api(&sock, u, &mut buf)?;
    }
    let down = t0.elapsed().as_secs_f64();
    t.row(
        &format!("unmount {nv} volumes (unpublish+unstage each)"),
        format!("{:.2} s total, {} per volume", down, ms(down / nv as f64)),
        "-".into(),
        "-".into(),
        "report",
        None,
    );
    for (_, _, dir) in &reqs {
        let _ = std::fs::remove_dir(dir);
    }
    Ok(ScaleFigures {
        publish_s: up,
        rss_kib: rss1,
        recon_ms: recon,
    })
}

/// Peak RSS (KiB) of one run of `prog args`, measured by the static `helper`.
fn peak_rss_kib(helper: &Path, prog: &Path, args: &[&str], sock: &Path) -> Result<u64> {
    let out = Command::new(helper)
        .arg(prog)
        .args(args)
        .env("MOOR_SOCKET", sock)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("maxrss helper said {text:?} ({})", out.status))
}

/// Median time of moor's full mount-table read (the reconciler's and start-up's snapshot)
/// and of `findmnt -rn` reading the same table.
fn table_refresh(n: usize) -> Result<(f64, f64)> {
    use moor::host::MountTable;
    let table = moor::host::KernelMounts {
        mountinfo: "/proc/self/mountinfo".into(),
        kubelet_dir: "/".into(),
    };
    let mut own = Vec::new();
    let mut fm = Vec::new();
    for _ in 0..n {
        let t0 = Instant::now();
        let rows = table.snapshot()?.len();
        own.push(t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        let out = Command::new("findmnt")
            .args(["-rn", "-o", "TARGET"])
            .stderr(Stdio::null())
            .output()?;
        fm.push(t0.elapsed().as_secs_f64());
        let lines = out.stdout.iter().filter(|b| **b == b'\n').count();
        if lines + 50 < rows {
            bail!("findmnt saw {lines} mounts, moor {rows}");
        }
    }
    Ok((median(own), median(fm)))
}

/// Runs API pairs with a profiler attached to the daemon (SIGINT ends the profiler).
fn profile_api(b: &mut Bench, c: &Ctx, t: &mut Table) -> Result<()> {
    let n = b.args.profile_api;
    api_pairs(c, (n / 10).max(50))?;
    let mut prof = match std::env::var("MOORBENCH_PROFILER") {
        Ok(cmdline) if !cmdline.trim().is_empty() => {
            let cmdline = cmdline.replace("{pid}", &b.daemon_pid().to_string());
            eprintln!("moorbench: profiler: {cmdline}");
            let child = Command::new("sh")
                .arg("-c")
                .arg(format!("exec {cmdline}"))
                .spawn()?;
            std::thread::sleep(Duration::from_millis(700));
            Some(child)
        }
        _ => None,
    };
    let r = api_pairs(c, n);
    if let Some(p) = prof.as_mut() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = p.wait();
    }
    let r = r?;
    t.row(
        &format!("publish+unpublish via daemon API ({n} pairs, profiled)"),
        rate(r),
        "-".into(),
        "-".into(),
        "-",
        None,
    );
    Ok(())
}

fn sanity() -> Result<()> {
    if !sandbox::is_root() {
        bail!("needs root (mount(2)); run it through benches/run");
    }
    if !sandbox::in_private_mount_namespace()? {
        bail!("must run in a private mount namespace; run it through benches/run");
    }
    // Belt and braces: nothing mounted here may propagate anywhere.
    sandbox::make_mounts_private()?;
    Ok(())
}

fn main() {
    let args = match parse_args().and_then(|a| sanity().map(|()| a)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("moorbench: {e:#}");
            std::process::exit(2);
        }
    };
    let mut b = Bench {
        tree: Tree::new(&args.root),
        args,
        daemon: None,
        filler: Vec::new(),
    };
    let mut t = Table::default();
    let started = Instant::now();
    let result = run(&mut b, &mut t);
    b.cleanup();
    let left = b.tree.mounts().unwrap_or_default();
    println!();
    println!(
        "## moor benchmark ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    println!();
    print!("{}", t.markdown());
    let misses = t.0.iter().filter(|r| r.pass == Some(false)).count();
    println!();
    println!(
        "{} target(s) checked: {} pass, {} MISS",
        t.0.iter().filter(|r| r.pass.is_some()).count(),
        t.0.iter().filter(|r| r.pass == Some(true)).count(),
        misses
    );
    if !left.is_empty() {
        println!(
            "WARNING: mounts left under {}: {left:?}",
            b.args.root.display()
        );
    }
    if let Err(e) = result {
        println!("BENCHMARK ABORTED: {e:#}");
        let log = std::fs::read_to_string(b.log()).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        println!(
            "daemon log tail:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        std::process::exit(1);
    }
}
