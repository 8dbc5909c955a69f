use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use super::*;
use crate::host::fake::{FakeMounts, ScriptRunner};
use crate::host::rbdbus::tests::{add as add_mapping, add_in_namespace};
use crate::host::{CommandRunner, ExecError, HostPaths, Output, SysfsBlockDevices};
use crate::journal::StagePhase;
use crate::journal::StageRecord;
use crate::volume::Secret;

const KEY: &str = "AQBzZ2ZmAAAAABAAm0o7mYbn4tQXa8VvYV1nLQ==";
const T: &str = "--client_mount_timeout=15 --rados_mon_op_timeout=15 --rados_osd_op_timeout=15";

/// The script runner, plus: `rbd map` makes the mapping appear in the fixture sysfs tree
/// and the device node in the fixture /dev, as the kernel and udev would.
struct Kernel {
    script: ScriptRunner,
    sys: PathBuf,
    dev: PathBuf,
}

impl CommandRunner for Kernel {
    fn run(&self, cmd: &Cmd) -> Result<Output, ExecError> {
        let out = self.script.run(cmd)?;
        let args: Vec<String> = cmd
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        if out.success() && args.first().map(String::as_str) == Some("map") {
            // pool/image or pool/namespace/image
            let parts: Vec<&str> = args[1].split('/').collect();
            let (pool, ns, image) = match parts[..] {
                [p, i] => (p, "", i),
                [p, n, i] => (p, n, i),
                _ => panic!("bad image spec {}", args[1]),
            };
            add_in_namespace(
                &self.sys,
                5,
                pool,
                ns,
                image,
                "-",
                args.contains(&"--read-only".into()),
            );
            std::fs::write(self.dev.join("rbd5"), b"").unwrap();
        }
        if out.success() && args.first().map(String::as_str) == Some("unmap") {
            let id = args[1]
                .trim_start_matches(&*self.dev.join("rbd").to_string_lossy())
                .to_owned();
            std::fs::remove_dir_all(self.sys.join("bus/rbd/devices").join(id)).unwrap();
        }
        Ok(out)
    }
}

struct Fixture {
    _tmp: tempfile::TempDir,
    host: Host,
    kernel: Arc<Kernel>,
    node: NodeContext,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let p = |s: &str| {
            let d = tmp.path().join(s);
            std::fs::create_dir_all(&d).unwrap();
            d
        };
        let paths = HostPaths {
            kubelet_dir: p("kubelet"),
            kubelet_alias: None,
            state_dir: p("state"),
            run_dir: p("run"),
            sys: p("sys"),
            dev: p("dev"),
            proc: p("proc"),
        };
        let kernel = Arc::new(Kernel {
            script: ScriptRunner::default(),
            sys: paths.sys.clone(),
            dev: paths.dev.clone(),
        });
        let mounts = Arc::new(FakeMounts::default());
        let host = Host {
            blockdev: Arc::new(SysfsBlockDevices {
                sys: paths.sys.clone(),
            }),
            paths: paths.clone(),
            runner: kernel.clone(),
            mounter: mounts.clone(),
            mounts,
        };
        let node = NodeContext {
            node_name: "n1".into(),
            kubelet_dir: paths.kubelet_dir.clone(),
            run_dir: paths.run_dir.clone(),
        };
        Fixture {
            _tmp: tmp,
            host,
            kernel,
            node,
        }
    }

    fn expect(&self, cmdline: &str, code: i32, stdout: &str) {
        self.kernel.script.expect(cmdline, code, stdout);
    }

    fn keyfile(&self, spec: &VolumeSpec) -> PathBuf {
        secrets::secret_dir(&self.host.paths.run_dir, &spec.key).join(KEYFILE)
    }

    fn record(&self, spec: &VolumeSpec) -> StageRecord {
        StageRecord::new(
            &spec.key,
            NAME,
            spec.source.clone(),
            spec.state.clone(),
            StagePhase::Staging,
        )
    }

    fn all_argv(&self) -> String {
        self.kernel
            .script
            .calls()
            .iter()
            .flat_map(|c| c.args.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn opts(pairs: &[(&str, &str)], key: Option<&str>, ro: bool) -> VolumeOptions {
    let mut o = VolumeOptions {
        read_only: ro,
        fs_type: "ext4".into(),
        ..VolumeOptions::default()
    };
    o.set_user(
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
    )
    .unwrap();
    if let Some(k) = key {
        o.secrets
            .insert("key".into(), Secret(format!("{k}\n").into_bytes()));
    }
    o
}

/// The typed image of a spec (or of what attach learnt).
fn image(state: &Option<VolumeState>) -> RbdImage {
    match state {
        Some(VolumeState::Rbd(i)) => i.clone(),
        other => panic!("not an rbd image: {other:?}"),
    }
}

fn img1(ro: bool) -> VolumeOptions {
    opts(
        &[
            ("monitors", "10.0.0.1:6789, 10.0.0.2"),
            ("image", "img1"),
            ("user", "k8s"),
        ],
        Some(KEY),
        ro,
    )
}

/// img1's connection arguments with the volume's key file.
fn img1_args(keyfile: &Path) -> String {
    format!(
        "-m 10.0.0.1:6789,10.0.0.2 --id k8s --keyfile {}",
        keyfile.display()
    )
}

/// The two fencing queries of a read-write attach of `image` (an rbd spec such as
/// `rbd/img1`), answered with `status`, `locks`.
fn expect_fencing(f: &Fixture, image: &str, c: &str, status: &str, locks: &str) {
    f.expect(
        &format!("rbd status {image} --format json {c} {T}"),
        0,
        status,
    );
    f.expect(
        &format!("rbd lock list {image} --format json {c} {T}"),
        0,
        locks,
    );
}

/// Every rbd call of a read-write attach of the layering-only `image`, with no other client.
fn fresh_map_script(f: &Fixture, image: &str, keyfile: &Path) {
    let c = img1_args(keyfile);
    expect_fencing(f, image, &c, r#"{"watchers":[]}"#, "[]");
    f.expect(
        &format!("rbd info {image} --format json {c} {T}"),
        0,
        r#"{"name":"img1","format":2,"features":["layering"]}"#,
    );
    f.expect(
        &format!("rbd map {image} {c} --options mount_timeout=30 {T}"),
        0,
        "/dev/rbd5\n",
    );
}

#[test]
fn options_defaults_key_and_persisted_facts() {
    let f = Fixture::new();
    let spec = RbdDriver.volume(&f.node, &img1(false)).unwrap();
    assert_eq!(spec.key, volume_key("rbd", "rbd/img1"));
    assert_eq!(spec.source, StageSource::Attached { device: None });
    assert_eq!(image(&spec.state).pool, "rbd");
    assert_eq!(image(&spec.state).monitors, ["10.0.0.1:6789", "10.0.0.2"]);
    assert!(!format!("{:?}", spec.state).contains(KEY));
    let o = opts(
        &[
            ("monitors", "m"),
            ("image", "i"),
            ("keyring", "/etc/ceph/k.keyring"),
            ("mountOptions", "discard"),
        ],
        None,
        false,
    );
    let spec = RbdDriver.volume(&f.node, &o).unwrap();
    assert_eq!(image(&spec.state).user, "admin");
    assert_eq!(
        image(&spec.state).keyring.as_deref(),
        Some("/etc/ceph/k.keyring")
    );
    assert_eq!(spec.mount_options.joined(), "discard");
    // Same pool/image from other monitors or users is the same volume.
    let o = opts(
        &[("monitors", "x"), ("image", "i"), ("pool", "rbd")],
        Some(KEY),
        false,
    );
    assert_eq!(RbdDriver.volume(&f.node, &o).unwrap().key, spec.key);
}

#[test]
fn bad_options_name_the_option_and_never_the_key() {
    let f = Fixture::new();
    let err = |pairs: &[(&str, &str)], key: Option<&str>| {
        RbdDriver
            .volume(&f.node, &opts(pairs, key, false))
            .unwrap_err()
            .to_string()
    };
    assert!(err(&[("image", "i")], Some(KEY)).contains("monitors"));
    assert!(err(&[("monitors", "m")], Some(KEY)).contains("image"));
    assert!(
        err(
            &[("monitors", "m"), ("image", "i"), ("foo", "1")],
            Some(KEY)
        )
        .contains("foo")
    );
    assert!(err(&[("monitors", "m"), ("image", "a/b")], Some(KEY)).contains("image"));
    assert!(err(&[("monitors", "m"), ("image", "i@snap")], Some(KEY)).contains("image"));
    assert!(err(&[("monitors", "m"), ("image", "--x")], Some(KEY)).contains("image"));
    assert!(err(&[("monitors", "m,,n"), ("image", "i")], Some(KEY)).contains("monitors"));
    assert!(
        err(
            &[("monitors", "m"), ("image", "i"), ("pool", "a b")],
            Some(KEY)
        )
        .contains("pool")
    );
    assert!(
        err(
            &[("monitors", "m"), ("image", "i"), ("radosNamespace", "a/b")],
            Some(KEY)
        )
        .contains("radosNamespace")
    );
    assert!(err(&[("monitors", "m"), ("image", "i")], None).contains("keyring"));
    assert!(
        err(
            &[("monitors", "m"), ("image", "i"), ("keyring", "rel")],
            None
        )
        .contains("keyring")
    );
    let both = err(
        &[("monitors", "m"), ("image", "i"), ("keyring", "/k")],
        Some(KEY),
    );
    assert!(both.contains("not both") && !both.contains(KEY), "{both}");
    let mut o = opts(&[("monitors", "m"), ("image", "i")], None, false);
    o.secrets.insert("password".into(), Secret(KEY.into()));
    let e = RbdDriver.volume(&f.node, &o).unwrap_err().to_string();
    assert!(e.contains("secret/password") && !e.contains(KEY), "{e}");
    o.secrets.clear();
    o.secrets.insert("key".into(), Secret(b"AQB x".to_vec()));
    let e = RbdDriver.volume(&f.node, &o).unwrap_err().to_string();
    assert!(e.contains("secret/key") && !e.contains("AQB"), "{e}");
    // userKey (ceph-csi's name) is accepted alone, or beside an equal `key`.
    o.secrets.clear();
    o.secrets.insert("userKey".into(), Secret(KEY.into()));
    assert!(RbdDriver.volume(&f.node, &o).is_ok());
    o.secrets.insert("key".into(), Secret(b"AQBother".to_vec()));
    assert!(RbdDriver.volume(&f.node, &o).is_err());
}

#[test]
fn attach_checks_maps_with_a_keyfile_and_detach_unmaps_and_removes_it() {
    let f = Fixture::new();
    let o = img1(false);
    let spec = RbdDriver.volume(&f.node, &o).unwrap();
    let keyfile = f.keyfile(&spec);
    fresh_map_script(&f, "rbd/img1", &keyfile);
    let a = RbdDriver.attach(&f.host, &spec, &o).unwrap();
    assert_eq!(a.device, Some(f.host.paths.dev.join("rbd5")));
    assert_eq!(image(&a.state).rbd_id, Some(5));
    assert_eq!(
        std::fs::read(&keyfile).unwrap(),
        KEY.as_bytes(),
        "trimmed key"
    );
    assert_eq!(std::fs::metadata(&keyfile).unwrap().mode() & 0o777, 0o600);
    assert!(!f.all_argv().contains(KEY));
    assert!(f.kernel.script.remaining().is_empty());
    // Detach from the bare record (as after a crash): sysfs says what to unmap.
    let dev = f.host.paths.dev.join("rbd5");
    f.expect(&format!("rbd unmap {}", dev.display()), 0, "");
    assert!(rbdbus::is_claimed(&f.host.paths.run_dir, &spec.key));
    RbdDriver
        .detach(&f.host, &f.record(&spec).recorded())
        .unwrap();
    assert!(!rbdbus::is_claimed(&f.host.paths.run_dir, &spec.key));
    assert!(!keyfile.exists() && !keyfile.parent().unwrap().exists());
    assert!(rbdbus::mappings(&f.host.paths.sys).unwrap().is_empty());
    // Again: nothing mapped, nothing run.
    RbdDriver
        .detach(&f.host, &f.record(&spec).recorded())
        .unwrap();
}

#[test]
fn an_image_in_a_rados_namespace_is_its_own_volume_and_mapping() {
    let f = Fixture::new();
    let mut o = img1(false);
    o.user.insert("radosNamespace".into(), "ns1".into());
    let spec = RbdDriver.volume(&f.node, &o).unwrap();
    assert_eq!(spec.key, volume_key("rbd", "rbd/ns1/img1"));
    assert_ne!(
        spec.key,
        RbdDriver.volume(&f.node, &img1(false)).unwrap().key
    );
    assert_eq!(image(&spec.state).namespace, "ns1");
    // An empty radosNamespace is the default namespace: the same volume as none.
    let mut empty = img1(false);
    empty.user.insert("radosNamespace".into(), String::new());
    assert_eq!(
        RbdDriver.volume(&f.node, &empty).unwrap().key,
        volume_key("rbd", "rbd/img1")
    );
    // moor's mapping of the default namespace's img1 is another image: not reused, and
    // left mapped by this volume's detach.
    add_mapping(&f.host.paths.sys, 1, "rbd", "img1", "-", false);
    fresh_map_script(&f, "rbd/ns1/img1", &f.keyfile(&spec));
    let a = RbdDriver.attach(&f.host, &spec, &o).unwrap();
    assert_eq!(a.device, Some(f.host.paths.dev.join("rbd5")));
    assert!(f.kernel.script.remaining().is_empty());
    f.expect(
        &format!("rbd unmap {}", f.host.paths.dev.join("rbd5").display()),
        0,
        "",
    );
    RbdDriver
        .detach(&f.host, &f.record(&spec).recorded())
        .unwrap();
    let left = rbdbus::mappings(&f.host.paths.sys).unwrap();
    assert_eq!(left.len(), 1);
    assert!(left[0].is_head_of("rbd", "", "img1"));
}

#[test]
fn an_exclusive_lock_image_is_mapped_holding_the_lock() {
    let f = Fixture::new();
    let o = img1(false);
    let spec = RbdDriver.volume(&f.node, &o).unwrap();
    let c = img1_args(&f.keyfile(&spec));
    expect_fencing(&f, "rbd/img1", &c, r#"{"watchers":[]}"#, "[]");
    f.expect(
        &format!("rbd info rbd/img1 --format json {c} {T}"),
        0,
        r#"{"name":"img1","format":2,"features":["layering","exclusive-lock"]}"#,
    );
    f.expect(
        &format!("rbd map rbd/img1 {c} --options mount_timeout=30,exclusive,lock_timeout=30 {T}"),
        0,
        "/dev/rbd5\n",
    );
    let a = RbdDriver.attach(&f.host, &spec, &o).unwrap();
    assert_eq!(a.device, Some(f.host.paths.dev.join("rbd5")));
    assert!(f.kernel.script.remaining().is_empty());
}

#[test]
fn an_existing_mapping_is_reused_without_running_rbd() {
    let f = Fixture::new();
    add_mapping(&f.host.paths.sys, 2, "rbd", "img1", "snap1", true);
    add_mapping(&f.host.paths.sys, 3, "rbd", "img1", "-", false);
    let o = img1(false);
    let spec = RbdDriver.volume(&f.node, &o).unwrap();
    rbdbus::claim(&f.host.paths.run_dir, &spec.key, "rbd/img1").unwrap();
    let a = RbdDriver.attach(&f.host, &spec, &o).unwrap();
    assert_eq!(a.device, Some(f.host.paths.dev.join("rbd3")));
    assert!(f.kernel.script.calls().is_empty());
    // Detach leaves the snapshot mapping alone.
    f.expect(
        &format!("rbd unmap {}", f.host.paths.dev.join("rbd3").display()),
        0,
        "",
    );
    RbdDriver
        .detach(&f.host, &f.record(&spec).recorded())
        .unwrap();
    assert_eq!(rbdbus::mappings(&f.host.paths.sys).unwrap().len(), 1);
}

#[test]
fn a_read_only_mapping_is_not_used_read_write() {
    let f = Fixture::new();
    add_mapping(&f.host.paths.sys, 0, "rbd", "img1", "-", true);
    let spec = RbdDriver.volume(&f.node, &img1(false)).unwrap();
    rbdbus::claim(&f.host.paths.run_dir, &spec.key, "rbd/img1").unwrap();
    let e = RbdDriver.attach(&f.host, &spec, &img1(false)).unwrap_err();
    assert_eq!(e.reason(), "rbd_mapped_read_only");
    assert!(RbdDriver.attach(&f.host, &spec, &img1(true)).is_ok());
}

#[test]
fn watchers_and_locks_refuse_read_write_naming_the_clients() {
    let f = Fixture::new();
    let o = img1(false);
    let spec = RbdDriver.volume(&f.node, &o).unwrap();
    expect_fencing(
        &f,
        "rbd/img1",
        &img1_args(&f.keyfile(&spec)),
        r#"{"watchers":[{"address":"10.0.0.9:0/1234","client":4181,"cookie":1}]}"#,
        r#"[{"id":"kubelet_lock_magic_n2","locker":"client.4999","address":"10.0.0.8:0/99"}]"#,
    );
    let e = RbdDriver.attach(&f.host, &spec, &o).unwrap_err();
    assert_eq!(e.reason(), "rbd_in_use");
    let msg = e.to_string();
    for want in [
        "client.4181 at 10.0.0.9:0/1234",
        "client.4999 at 10.0.0.8:0/99",
        "ceph osd blocklist add",
        "rbd lock remove rbd/img1",
    ] {
        assert!(msg.contains(want), "{want}: {msg}");
    }
    assert!(
        rbdbus::mappings(&f.host.paths.sys).unwrap().is_empty(),
        "nothing mapped"
    );
    assert!(f.kernel.script.remaining().is_empty());
}

#[test]
fn read_only_maps_read_only_without_the_fencing_check() {
    let f = Fixture::new();
    let o = opts(
        &[
            ("monitors", "m1"),
            ("image", "img1"),
            ("keyring", "/etc/ceph/ceph.client.admin.keyring"),
        ],
        None,
        true,
    );
    let spec = RbdDriver.volume(&f.node, &o).unwrap();
    f.expect(
        &format!("rbd map rbd/img1 --read-only -m m1 --id admin --keyring /etc/ceph/ceph.client.admin.keyring --options mount_timeout=30 {T}"),
        0,
        "/dev/rbd5\n",
    );
    let a = RbdDriver.attach(&f.host, &spec, &o).unwrap();
    assert!(rbdbus::is_read_only(&f.host.paths.sys, 5).unwrap());
    assert_eq!(a.device, Some(f.host.paths.dev.join("rbd5")));
    assert!(!f.keyfile(&spec).exists(), "no key file for a keyring");
}

#[test]
fn unparsable_fencing_output_refuses_instead_of_mapping() {
    let f = Fixture::new();
    let o = img1(false);
    let spec = RbdDriver.volume(&f.node, &o).unwrap();
    let c = img1_args(&f.keyfile(&spec));
    f.expect(
        &format!("rbd status rbd/img1 --format json {c} {T}"),
        0,
        "Watchers: none",
    );
    let e = RbdDriver.attach(&f.host, &spec, &o).unwrap_err();
    assert_eq!(e.reason(), "rbd_parse");
    assert!(rbdbus::mappings(&f.host.paths.sys).unwrap().is_empty());
}

#[test]
fn a_failed_unmap_keeps_the_key_file_and_reports() {
    let f = Fixture::new();
    add_mapping(&f.host.paths.sys, 1, "rbd", "img1", "-", false);
    let spec = RbdDriver.volume(&f.node, &img1(false)).unwrap();
    rbdbus::claim(&f.host.paths.run_dir, &spec.key, "rbd/img1").unwrap();
    secrets::write_secret(
        &secrets::secret_dir(&f.host.paths.run_dir, &spec.key),
        KEYFILE,
        KEY.as_bytes(),
    )
    .unwrap();
    f.expect(
        &format!("rbd unmap {}", f.host.paths.dev.join("rbd1").display()),
        16,
        "",
    );
    let e = RbdDriver
        .detach(&f.host, &f.record(&spec).recorded())
        .unwrap_err();
    assert_eq!(e.reason(), "command_failed");
    assert!(f.keyfile(&spec).exists());
}

#[test]
fn a_mapping_moor_did_not_make_is_refused_and_left_alone() {
    let f = Fixture::new();
    add_mapping(&f.host.paths.sys, 4, "rbd", "img1", "-", false);
    let spec = RbdDriver.volume(&f.node, &img1(false)).unwrap();
    for ro in [false, true] {
        let e = RbdDriver.attach(&f.host, &spec, &img1(ro)).unwrap_err();
        assert_eq!(e.reason(), "rbd_foreign_mapping");
        let msg = e.to_string();
        assert!(
            msg.contains("rbd4") && msg.contains("client.4181 at 127.0.0.1:0/3416352455"),
            "{msg}"
        );
    }
    // Detach (a rollback, or kubelet's unmount) runs nothing: the script is empty.
    RbdDriver
        .detach(&f.host, &f.record(&spec).recorded())
        .unwrap();
    assert_eq!(rbdbus::mappings(&f.host.paths.sys).unwrap().len(), 1);
    assert!(f.kernel.script.calls().is_empty());
}

#[test]
fn a_crash_right_after_map_leaves_a_claim_so_detach_unmaps() {
    let f = Fixture::new();
    let spec = RbdDriver.volume(&f.node, &img1(false)).unwrap();
    // What the journal holds then: the options only, no device.
    let rec = f.record(&spec);
    rbdbus::claim(&f.host.paths.run_dir, &spec.key, "rbd/img1").unwrap();
    add_mapping(&f.host.paths.sys, 0, "rbd", "img1", "-", false);
    f.expect(
        &format!("rbd unmap {}", f.host.paths.dev.join("rbd0").display()),
        0,
        "",
    );
    RbdDriver.detach(&f.host, &rec.recorded()).unwrap();
    assert!(rbdbus::mappings(&f.host.paths.sys).unwrap().is_empty());
    assert!(f.kernel.script.remaining().is_empty());
}

#[test]
fn sysfs_client_ids_read_like_ceph_spells_them() {
    assert_eq!(client_name("client4181"), "client.4181");
    assert_eq!(client_name("client.4181"), "client.4181");
    assert_eq!(client_name("odd"), "odd");
}

/// Issue 12 item 10: monitors, pool/namespace/image names, the user id and the keyring path
/// that are not one are refused by `volume()` naming the option, so nothing reaches rbd's
/// argv. An accepted value would go on to `attach`, whose empty script fails at once.
#[test]
fn hostile_values_are_refused_before_any_command() {
    let cases: &[(&str, &str)] = &[
        ("monitors", "10.0.0.1;reboot"),
        ("monitors", "$(reboot)"),
        ("monitors", "10.0.0.1:6789,`id`"),
        ("monitors", "-m"),
        ("monitors", "10.0.0.1:65536"),
        ("monitors", "10.0.0.1:0"),
        ("monitors", "[fd00::1"),
        ("monitors", "[fd00::1]:3300,fd00::2"),
        ("monitors", "mon'1"),
        ("monitors", "mon\"1"),
        ("monitors", "mon\\1"),
        ("pool", "-p"),
        ("pool", "a;b"),
        ("pool", "a$b"),
        ("radosNamespace", "--x"),
        ("radosNamespace", "n`s`"),
        ("image", "-i"),
        ("image", "img'1"),
        ("image", "img\u{0}"),
        ("user", "-x"),
        ("user", "a;b"),
        ("user", "a b"),
        ("keyring", "/etc/ceph/a;b"),
        ("keyring", "/etc/ceph/a b"),
    ];
    for (key, value) in cases {
        let f = Fixture::new();
        let mut pairs = vec![("monitors", "10.0.0.1:6789"), ("image", "img1")];
        pairs.retain(|(k, _)| k != key);
        pairs.push((*key, *value));
        let k = (*key != "keyring").then_some(KEY);
        let o = opts(&pairs, k, false);
        match RbdDriver.volume(&f.node, &o) {
            Ok(spec) => {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    RbdDriver.attach(&f.host, &spec, &o)
                }));
                panic!("{key}={value:?} accepted; attach ran: {}", f.all_argv());
            }
            Err(e) => {
                assert_eq!(e.reason(), "bad_options", "{key}={value:?}: {e}");
                let msg = e.to_string();
                assert!(msg.starts_with(&format!("option {key}")), "{key}: {msg}");
                assert!(msg.contains("expected"), "{key}: {msg}");
                assert!(f.kernel.script.calls().is_empty(), "{key}={value:?}");
            }
        }
    }
}

/// A record written before the validators (or edited by hand) never puts its values on
/// rbd's argv: detach matches mappings in sysfs by pool and image and unmaps by device, so a
/// hostile record finds no mapping and runs nothing. (Attach gets no record: only the spec
/// `volume()` made, which refuses these values.)
#[test]
fn a_hostile_persisted_target_is_refused_before_any_command() {
    let f = Fixture::new();
    for (key, value) in [
        ("monitors", "-m;x"),
        ("pool", "-p"),
        ("image", "$(x)"),
        ("user", "-x"),
    ] {
        let mut pairs = vec![
            ("monitors", "10.0.0.1:6789"),
            ("image", "img1"),
            ("user", "k8s"),
        ];
        pairs.retain(|(k, _)| *k != key);
        pairs.push((key, value));
        let e = RbdDriver
            .volume(&f.node, &opts(&pairs, Some(KEY), false))
            .unwrap_err();
        assert_eq!(e.reason(), "bad_options", "{key}: {e}");
        let mut old: serde_json::Value =
            serde_json::from_str(include_str!("../../volume/fixtures/rbd-ef677bd.json")).unwrap();
        old["options"][key] = value.into();
        let rec: StageRecord = serde_json::from_value(old).unwrap();
        RbdDriver.detach(&f.host, &rec.recorded()).unwrap();
    }
    assert!(f.kernel.script.calls().is_empty());
}

/// A stage record main ef677bd wrote (a namespaced image, a keyring, the mapping's id)
/// loads typed and detaches as it did: moor's mapping of it unmapped, its claim released.
#[test]
fn a_record_of_main_ef677bd_loads_typed_and_detaches() {
    let f = Fixture::new();
    let rec =
        crate::journal::record::old_record(include_str!("../../volume/fixtures/rbd-ef677bd.json"));
    assert_eq!(
        rec.volume,
        Some(VolumeState::Rbd(RbdImage {
            monitors: vec!["10.0.0.1:6789".into(), "[fd00::2]:3300".into()],
            pool: "kube".into(),
            namespace: "ns1".into(),
            image: "pvc-1".into(),
            user: "k8s".into(),
            keyring: Some("/etc/ceph/ceph.client.k8s.keyring".into()),
            mount_options: vec![],
            rbd_id: Some(3),
        }))
    );
    rbdbus::claim(&f.host.paths.run_dir, &rec.key, "kube/ns1/pvc-1").unwrap();
    add_in_namespace(&f.host.paths.sys, 3, "kube", "ns1", "pvc-1", "-", false);
    // Another namespace's image of the same name is not this volume's.
    add_mapping(&f.host.paths.sys, 4, "kube", "pvc-1", "-", false);
    f.expect(
        &format!("rbd unmap {}", f.host.paths.dev.join("rbd3").display()),
        0,
        "",
    );
    RbdDriver.detach(&f.host, &rec.recorded()).unwrap();
    assert!(f.kernel.script.remaining().is_empty());
    assert!(!rbdbus::is_claimed(&f.host.paths.run_dir, &rec.key));
    let left = rbdbus::mappings(&f.host.paths.sys).unwrap();
    assert_eq!(left.len(), 1);
    assert!(left[0].is_head_of("kube", "", "pvc-1"));
}

/// Before a grow, krbd reads the image's new size at once (its header `refresh`); a mapping
/// that is gone is an error naming the attribute, so the grow does not run.
#[test]
fn capacity_is_refreshed_through_the_mappings_header() {
    let f = Fixture::new();
    add_mapping(&f.host.paths.sys, 3, "rbd", "img1", "-", false);
    let attr = f.host.paths.sys.join("bus/rbd/devices/3/refresh");
    std::fs::write(&attr, "").unwrap();
    RbdDriver.refresh_capacity(&f.host, "rbd3").unwrap();
    assert_eq!(std::fs::read_to_string(&attr).unwrap(), "1");
    let e = RbdDriver.refresh_capacity(&f.host, "rbd9").unwrap_err();
    assert!(e.to_string().starts_with("refresh "), "{e}");
    assert!(f.kernel.script.calls().is_empty());
}
