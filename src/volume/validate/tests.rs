use proptest::prelude::*;

use super::*;

/// The message of a refusal, checked for the shape every driver relies on.
fn refusal<T: std::fmt::Debug>(r: Result<T, OptionsError>, key: &str, value: &str) -> String {
    let e = match r {
        Ok(v) => panic!("{key}={value:?} accepted as {v:?}"),
        Err(e) => e,
    };
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("option {key}={}: expected ", shown(value))),
        "{msg}"
    );
    msg
}

/// What every accepted value must satisfy, whatever its kind.
fn clean(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty".into());
    }
    if s.starts_with('-') {
        return Err(format!("{s:?} starts with '-'"));
    }
    if let Some(c) = s.chars().find(|c| is_forbidden(*c)) {
        return Err(format!("{s:?} holds {c:?}"));
    }
    Ok(())
}

#[test]
fn host_port_accepts_names_addresses_and_ports() {
    let cases: &[(&str, &str)] = &[
        ("10.0.0.1", "10.0.0.1"),
        ("10.0.0.1:3260", "10.0.0.1:3260"),
        (" 10.0.0.1:3260 ", "10.0.0.1:3260"),
        ("target.example.com", "target.example.com"),
        ("target.example.com:1", "target.example.com:1"),
        ("t:65535", "t:65535"),
        ("my_svc.ns.svc", "my_svc.ns.svc"),
        ("[fd00::1]", "[fd00::1]"),
        ("[fd00::1]:3260", "[fd00::1]:3260"),
        ("[FD00:0:0::1]:3260", "[fd00::1]:3260"),
        ("[::ffff:10.0.0.1]:3260", "[::ffff:10.0.0.1]:3260"),
        ("10.0.0.1:03260", "10.0.0.1:3260"),
    ];
    for (input, formatted) in cases {
        let hp = host_port("targetPortal", input).unwrap();
        assert_eq!(hp.to_string(), *formatted, "{input}");
        assert_eq!(host_port("targetPortal", formatted).unwrap(), hp);
    }
    let hp = host_port("p", "[fd00::1]").unwrap();
    assert_eq!(hp.port_or(3260), 3260);
    assert_eq!(hp.host.to_string(), "fd00::1");
}

#[test]
fn host_port_refuses_options_bad_ports_and_open_brackets() {
    for bad in [
        "-u",
        "--logoutall=all",
        "-p10.0.0.1",
        "",
        " ",
        "10.0.0.1:",
        "10.0.0.1:0",
        "10.0.0.1:65536",
        "10.0.0.1:99999",
        "10.0.0.1:+80",
        "10.0.0.1:-1",
        "10.0.0.1:80:80",
        "[fd00::1",
        "fd00::1]",
        "[fd00::1]:",
        "[fd00::1]:99999",
        "[fd00::1]3260",
        "[fd00::1%eth0]",
        "[10.0.0.1]",
        "[]",
        "fd00::1",
        "::1",
        "10.0.0",
        "300.1.1.1",
        "010.0.0.1",
        "a..b",
        ".a",
        "a.",
        "host-.example",
        "-host.example",
        "a b",
        "a\tb",
        "a;b",
        "$(reboot)",
        "`id`",
        "a'b",
        "a\"b",
        "a\\b",
        "a,b",
        "a\0b",
        "a\nb",
        "a/b",
        "a@b",
        "é.example",
    ] {
        let msg = refusal(host_port("targetPortal", bad), "targetPortal", bad);
        assert!(msg.contains("host[:port]"), "{msg}");
    }
    let long = format!("{}.x", "a".repeat(252));
    assert!(host_port("p", &long).is_err());
    let label = format!("{}.x", "a".repeat(64));
    assert!(host_port("p", &label).is_err());
}

#[test]
fn monitor_lists() {
    let m = monitors(
        "monitors",
        "10.0.0.1:6789, mon-b ,[fd00::1]:3300,10.0.0.1:6789",
    )
    .unwrap();
    assert_eq!(format_monitors(&m), "10.0.0.1:6789,mon-b,[fd00::1]:3300");
    assert_eq!(monitors("monitors", &format_monitors(&m)).unwrap(), m);
    for bad in [
        "",
        "m,,n",
        "m,",
        "-m",
        "m,-n",
        "10.0.0.1;reboot",
        "$(reboot)",
        "m,`id`",
        "10.0.0.1:65536",
        "10.0.0.1:0",
        "[fd00::1",
        "fd00::1",
        "v2:10.0.0.1:3300",
        "[v2:10.0.0.1:3300,v1:10.0.0.1:6789]",
        "m/n",
        "m n",
    ] {
        let msg = refusal(monitors("monitors", bad), "monitors", bad);
        assert!(msg.contains("v1:/v2:"), "{msg}");
    }
}

#[test]
fn nfs_servers() {
    let cases: &[(&str, &str, &str)] = &[
        ("10.0.0.5", "10.0.0.5", "10.0.0.5"),
        ("nfs.example", "nfs.example", "nfs.example"),
        ("fd00::5", "fd00::5", "[fd00::5]"),
        ("[fd00::5]", "fd00::5", "[fd00::5]"),
        ("FD00:0::5", "fd00::5", "[fd00::5]"),
    ];
    for (input, bare, bracketed) in cases {
        let h = nfs_server("server", input).unwrap();
        assert_eq!(h.to_string(), *bare, "{input}");
        assert_eq!(h.bracketed(), *bracketed, "{input}");
        assert_eq!(nfs_server("server", bracketed).unwrap(), h);
        assert_eq!(nfs_server("server", bare).unwrap(), h);
    }
    for bad in [
        "-Lroot",
        "-oremount",
        "--bind",
        "-",
        "",
        "10.0.0.5:2049",
        "nfs.example:2049",
        "[fd00::5",
        "fd00::5]",
        "[fd00::5]:2049",
        "[nfs.example]",
        "10.0.0.5;reboot",
        "$(reboot)",
        "s`id`",
        "s x",
        "s,t",
        "a..b",
    ] {
        let msg = refusal(nfs_server("server", bad), "server", bad);
        assert!(msg.contains("NFS server"), "{msg}");
    }
}

#[test]
fn gluster_endpoints() {
    let e = endpoints("endpoints", "g1, 10.0.0.2,g1,,g3 ").unwrap();
    let text: Vec<String> = e.iter().map(ToString::to_string).collect();
    assert_eq!(text, ["g1", "10.0.0.2", "g3"]);
    for bad in [
        "",
        " , ",
        "-oremount",
        "g1,-Lroot",
        "g1:24007",
        "fd00::1",
        "[fd00::1]",
        "g1;reboot",
        "$(x)",
    ] {
        refusal(endpoints("endpoints", bad), "endpoints", bad);
    }
}

#[test]
fn iscsi_names() {
    for good in [
        "iqn.2024-01.dev.moor.lab:plain",
        "iqn.2003-01.org.linux-iscsi.lab:disk1",
        "iqn.1993-08.org.debian:01:abcdef123456",
        "iqn.1991-05.com.microsoft:host.domain.example",
        "iqn.2005-10.org.freenas.ctl:target_name",
        "iqn.2024-12.example",
        "eui.02004567A425678D",
        "naa.52004567BA64678D",
        "naa.600140550a1b2c3d4e5f60718293a4b5",
    ] {
        assert_eq!(iscsi_name("iqn", good).unwrap(), good);
    }
    for bad in [
        "",
        "-u",
        "../etc",
        "iqn.",
        "iqn.2024-01",
        "iqn.2024-01.",
        "iqn.2024-00.example",
        "iqn.2024-13.dev.moor:x",
        "iqn.24-01.example",
        "iqn.2024_01.example",
        "iqn.dev.moor:x",
        "iqn.2024-01.-dev.moor",
        "iqn.2024-01..moor",
        "iqn.2024-01.dev.moor:",
        "iqn.2024-01.dev.moor.lab:a;b",
        "iqn.2024-01.dev.moor.lab:a b",
        "iqn.2024-01.dev.moor.lab:x\nnode.startup = automatic",
        "iqn.2024-01.dev.moor.lab:x\0",
        "IQN.2024-01.dev.moor",
        "eui.12345",
        "eui.02004567A425678DX",
        "naa.xyz",
        "naa.52004567BA64678",
        "not-an-iqn",
    ] {
        refusal(iscsi_name("initiatorName", bad), "initiatorName", bad);
    }
    let long = format!("iqn.2024-01.example:{}", "a".repeat(210));
    assert!(iscsi_name("iqn", &long).is_err());
}

#[test]
fn ifaces_luns_wwns_wwids() {
    for good in ["default", "iser", "eth0.100", "a_b-c"] {
        assert_eq!(iscsi_iface("iscsiInterface", good).unwrap(), good);
    }
    for bad in ["", "-u", ".hidden", "a b", "a;b", "a/b", &"a".repeat(65)] {
        refusal(iscsi_iface("iscsiInterface", bad), "iscsiInterface", bad);
    }

    assert_eq!(lun("lun", "0").unwrap(), 0);
    assert_eq!(lun("lun", "16383").unwrap(), 16383);
    assert_eq!(lun("lun", "007").unwrap(), 7);
    for bad in [
        "",
        "-1",
        "+1",
        "-0",
        "16384",
        "99999999999",
        "1 ",
        "0x1",
        "x",
    ] {
        refusal(lun("lun", bad), "lun", bad);
    }

    for (input, canon) in [
        ("500601603ba01234", "500601603ba01234"),
        ("0x500601603BA01234", "500601603ba01234"),
        ("0X500601603ba01234", "500601603ba01234"),
        ("50:06:01:60:3B:A0:12:34", "500601603ba01234"),
        ("0x50:06:01:60:3b:a0:12:34", "500601603ba01234"),
    ] {
        assert_eq!(wwn("targetWWNs", input).unwrap(), canon, "{input}");
        assert_eq!(wwn("targetWWNs", canon).unwrap(), canon);
    }
    for bad in [
        "",
        "-x",
        "0x-00601603ba01234",
        "500601603ba0123",
        "500601603ba012345",
        "5006:01603ba01234",
        "50:06:01:60:3b:a0:12:3:4",
        "500601603ba0123g",
        "500601603ba01234;x",
        "0x",
    ] {
        refusal(wwn("targetWWNs", bad), "targetWWNs", bad);
    }

    for good in [
        "naa.600601603ba0123400000000000000aa",
        "3600601603ba0123400000000000000aa",
        "t10.ATA_QEMU_HARDDISK_QM00001",
        "eui.0025385b71b0a2b1",
    ] {
        assert_eq!(wwid("wwids", good).unwrap(), good);
    }
    for bad in [
        "",
        "-x",
        "naa.600601603ba0;reboot",
        "$(reboot)",
        "naa.6006 `id`",
        "t10.ATA QEMU",
        "naa.6006'x",
        "naa.6006\\x",
        "a/b",
        &"a".repeat(257),
    ] {
        refusal(wwid("wwids", bad), "wwids", bad);
    }
}

#[test]
fn ceph_and_gluster_names_paths_and_files() {
    for good in ["rbd", "kube", "csi-vol-0a1b2c3d", "ns_1", "img.1", "a"] {
        assert_eq!(ceph_name("image", good).unwrap(), good);
    }
    for bad in [
        "", "-i", "--x", ".x", "a/b", "i@snap", "a,b", "a b", "a;b", "a$b", "a`b`", "img'1",
        "img\0", "a:b", "a=b",
    ] {
        refusal(ceph_name("image", bad), "image", bad);
    }
    assert_eq!(ceph_user("user", "client.k8s").unwrap(), "k8s");
    assert_eq!(ceph_user("user", "admin").unwrap(), "admin");
    for bad in ["client.", "-x", "client.-x", "a;b", "a b"] {
        refusal(ceph_user("user", bad), "user", bad);
    }

    assert_eq!(gluster_volume("path", "vol_1-a").unwrap(), "vol_1-a");
    for bad in ["", "-vol", "vol;x", "vol$x", "vol:x", "vol.x", "vol x"] {
        refusal(gluster_volume("path", bad), "path", bad);
    }

    for good in ["/", "/exports/a", "vol1/sub", "/a/..b", "/a:b", "/a-b/-c"] {
        assert_eq!(export_path("path", good).unwrap(), good);
    }
    for bad in [
        "", "-o", "..", "/a/../b", "/a/..", "/a b", "/a,b", "/e;x", "/e$x", "/e'x", "/e\"x",
        "/e\\x", "/e`x`", "/e\0", "/e\n",
    ] {
        refusal(export_path("path", bad), "path", bad);
    }

    for good in ["/etc/ceph/k.keyring", "/k"] {
        assert_eq!(node_file("keyring", good).unwrap(), good);
    }
    for bad in [
        "",
        "/",
        "rel",
        "-x",
        "/a/../b",
        "/a/./b",
        "/a//b",
        "/a/",
        "/etc/ceph/a;b",
        "/etc/ceph/a b",
        "/a,b",
        "/a'b",
    ] {
        refusal(node_file("keyring", bad), "keyring", bad);
    }
}

#[test]
fn refused_values_are_shown_escaped_and_cut() {
    let e = iscsi_name("initiatorName", "iqn.x\nnode.startup = automatic\0").unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("option initiatorName=iqn.x\\nnode.startup = automatic\\u{{0}}: {ISCSI_NAME}")
    );
    let e = host_port("targetPortal", &"a".repeat(5000))
        .unwrap_err()
        .to_string();
    assert!(e.len() < 700 && e.contains("a…: expected"), "{e}");
}

#[test]
fn mount_option_words() {
    assert_eq!(
        mount_options("mountOptions", " nfsvers=4.1, hard,,noatime ").unwrap(),
        ["nfsvers=4.1", "hard", "noatime"]
    );
    assert!(mount_options("mountOptions", "").unwrap().is_empty());
    for bad in [
        "-oremount",
        "hard,-v",
        "hard,--bind",
        "hard,ro x",
        "a\tb",
        "a\0",
    ] {
        refusal(mount_options("mountOptions", bad), "mountOptions", bad);
    }
}

/// One valid value per kind, for the mutation property.
const SEEDS: &[(&str, &str)] = &[
    ("host_port", "target.example.com:3260"),
    ("host_port", "[fd00::1]:3260"),
    ("monitors", "10.0.0.1:6789,mon-b,[fd00::1]:3300"),
    ("nfs_server", "fd00::5"),
    ("nfs_server", "nfs.example"),
    ("iscsi_name", "iqn.2024-01.dev.moor.lab:plain"),
    ("iscsi_name", "naa.52004567BA64678D"),
    ("wwn", "0x50:06:01:60:3b:a0:12:34"),
    ("wwid", "t10.ATA_QEMU_HARDDISK_QM00001"),
    ("ceph_name", "csi-vol-0a1b"),
    ("export_path", "/exports/a"),
    ("node_file", "/etc/ceph/k.keyring"),
    ("gluster_volume", "vol_1"),
];

/// What an attacker puts in.
const HOSTILE: &[char] = &[
    '-', ',', ';', '$', '`', '\'', '"', '\\', ' ', '\t', '\n', '\0', '\u{7f}', '(', ')', '[', ']',
    ':', '/', '@', '=', '.', '\u{a0}',
];

/// Characters a hostile value is made of: everything a validator must sort, forbidden
/// ones and the separators of every syntax included.
fn any_value() -> impl Strategy<Value = String> {
    proptest::string::string_regex(r#"[-a-fA-F0-9xgz.:\[\]/_ ,;$`'"\\@=+\t\n\x00é]{0,40}"#)
        .expect("regex")
}

fn dns_label() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-z_]([a-z0-9_-]{0,10}[a-z0-9_])?").expect("regex")
}

fn any_host_port() -> impl Strategy<Value = String> {
    let name = proptest::collection::vec(dns_label(), 1..4).prop_map(|l| l.join("."));
    let v4 = any::<[u8; 4]>().prop_map(|o| std::net::Ipv4Addr::from(o).to_string());
    let v6 = any::<[u16; 8]>().prop_map(|s| format!("[{}]", std::net::Ipv6Addr::from(s)));
    let host = prop_oneof![name, v4, v6];
    (host, proptest::option::of(1u16..=65535)).prop_map(|(h, p)| match p {
        Some(p) => format!("{h}:{p}"),
        None => h,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever a validator accepts is clean, and parses back to itself once formatted.
    #[test]
    fn nothing_accepted_is_unclean_and_everything_round_trips(v in any_value()) {
        if let Ok(hp) = host_port("k", &v) {
            let text = hp.to_string();
            prop_assert!(clean(&text).is_ok(), "{v:?} -> {text:?}");
            prop_assert!(clean(v.trim()).is_ok(), "{v:?}");
            prop_assert_eq!(host_port("k", &text).unwrap(), hp);
        }
        if let Ok(m) = monitors("k", &v) {
            let text = format_monitors(&m);
            prop_assert!(m.iter().all(|h| clean(&h.to_string()).is_ok()), "{v:?}");
            prop_assert_eq!(monitors("k", &text).unwrap(), m);
        }
        if let Ok(h) = nfs_server("k", &v) {
            prop_assert!(clean(&h.bracketed()).is_ok(), "{v:?}");
            prop_assert_eq!(nfs_server("k", &h.bracketed()).unwrap(), h.clone());
            prop_assert_eq!(nfs_server("k", &h.to_string()).unwrap(), h);
        }
        if let Ok(e) = endpoints("k", &v) {
            prop_assert!(e.iter().all(|h| clean(&h.to_string()).is_ok() && !h.to_string().contains(':')), "{v:?}");
            let text = e.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
            prop_assert_eq!(endpoints("k", &text).unwrap(), e);
        }
        if let Ok(w) = wwn("k", &v) {
            prop_assert!(clean(&w).is_ok(), "{v:?}");
            prop_assert_eq!(wwn("k", &w).unwrap(), w);
        }
        if let Ok(l) = lun("k", &v) {
            prop_assert_eq!(lun("k", &l.to_string()).unwrap(), l);
        }
        type Check = fn(&str, &str) -> Result<String, OptionsError>;
        let kinds: [(&str, Check); 9] = [
            ("iscsi_name", iscsi_name),
            ("iscsi_iface", iscsi_iface),
            ("wwid", wwid),
            ("ceph_name", ceph_name),
            ("ceph_user", ceph_user),
            ("gluster_volume", gluster_volume),
            ("export_path", export_path),
            ("node_file", node_file),
            ("wwn", wwn),
        ];
        for (kind, check) in kinds {
            if let Ok(out) = check("k", &v) {
                prop_assert!(clean(&v).is_ok() || kind == "wwn", "{kind} accepted {v:?}");
                prop_assert!(clean(&out).is_ok(), "{kind}: {v:?} -> {out:?}");
                prop_assert_eq!(check("k", &out).unwrap(), out.clone(), "{}", kind);
            }
        }
        if let Ok(words) = mount_options("k", &v) {
            for w in &words {
                prop_assert!(!w.starts_with('-') && !w.chars().any(|c| c.is_whitespace() || c.is_control()), "{v:?}");
            }
            prop_assert_eq!(mount_options("k", &words.join(",")).unwrap(), words);
        }
    }

    /// A valid value of each kind with one character put in anywhere (a separator, a
    /// metacharacter, a `-` in front): whatever is still accepted is clean and round-trips.
    #[test]
    fn one_hostile_character_anywhere_is_refused_or_harmless(
        seed in 0usize..SEEDS.len(),
        at in 0usize..64,
        c in proptest::sample::select(HOSTILE),
    ) {
        let (kind, value) = SEEDS[seed];
        let mut chars: Vec<char> = value.chars().collect();
        chars.insert(at % (chars.len() + 1), c);
        let v: String = chars.into_iter().collect();
        let out: Option<String> = match kind {
            "host_port" => host_port("k", &v).ok().map(|h| h.to_string()),
            "monitors" => monitors("k", &v).ok().map(|m| format_monitors(&m)),
            "nfs_server" => nfs_server("k", &v).ok().map(|h| h.bracketed()),
            "iscsi_name" => iscsi_name("k", &v).ok(),
            "wwn" => wwn("k", &v).ok(),
            "wwid" => wwid("k", &v).ok(),
            "ceph_name" => ceph_name("k", &v).ok(),
            "export_path" => export_path("k", &v).ok(),
            "node_file" => node_file("k", &v).ok(),
            "gluster_volume" => gluster_volume("k", &v).ok(),
            other => unreachable!("{other}"),
        };
        if let Some(out) = out {
            if kind == "monitors" {
                for m in out.split(',') {
                    prop_assert!(clean(m).is_ok(), "{kind}: {v:?} -> {out:?}");
                }
            } else {
                prop_assert!(clean(&out).is_ok(), "{kind}: {v:?} -> {out:?}");
            }
        }
    }

    /// Every well-formed host[:port] is accepted and round-trips.
    #[test]
    fn well_formed_host_ports_are_accepted(v in any_host_port()) {
        let hp = host_port("k", &v).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(clean(&hp.to_string()).is_ok());
        prop_assert_eq!(host_port("k", &hp.to_string()).unwrap(), hp.clone());
        let list = format!("{v}, {v},{v}");
        prop_assert_eq!(monitors("k", &list).unwrap(), vec![hp]);
    }
}
