//! The checks of a `mount` request that need no daemon and touch nothing: kubelet's own
//! keys, the option names each driver knows, the options it cannot do without, and (for
//! `moor~local`) the node the volume belongs to.
//!
//! Invariant: the front end and the daemon call this same pure function, so a typo gets the
//! same `bad_options:` answer whether the daemon is up or not, and the daemon never accepts
//! what the front end refused (or the other way round). Value checks that need a driver's
//! own parser stay in the driver's `volume()`.

use std::collections::BTreeMap;

use crate::volume::{DriverError, VolumeOptions};

/// What one driver accepts: its option names and the ones it requires.
#[derive(Debug, Clone, Copy)]
pub struct DriverOptions {
    /// The FlexVolume driver name.
    pub driver: &'static str,
    /// Every user option the driver knows.
    pub known: &'static [&'static str],
    /// Options without which the driver refuses (checked in this order).
    pub required: &'static [&'static str],
}

/// The option table of every driver moor serves (the same names as [`super::DRIVERS`]).
pub const TABLE: &[DriverOptions] = &[
    DriverOptions {
        driver: "local",
        known: crate::local::OPTIONS,
        required: &["path"],
    },
    DriverOptions {
        driver: "iscsi",
        known: crate::attach::iscsi::OPTIONS,
        required: &["targetPortal", "iqn"],
    },
    DriverOptions {
        driver: "rbd",
        known: crate::attach::rbd::OPTIONS,
        required: &["monitors", "image"],
    },
    // FC takes either targetWWNs+lun or wwids: the driver says which is missing.
    DriverOptions {
        driver: "fc",
        known: crate::attach::fc::OPTIONS,
        required: &[],
    },
    DriverOptions {
        driver: "nfs",
        known: crate::share::nfs::OPTIONS,
        required: &["server", "path"],
    },
    DriverOptions {
        driver: "glusterfs",
        known: crate::share::glusterfs::OPTIONS,
        required: &["endpoints", "path"],
    },
    DriverOptions {
        driver: "cephfs",
        known: crate::share::cephfs::OPTIONS,
        required: &["monitors"],
    },
];

/// A request refused before any driver ran: a [`DriverError`] (`Options`, or `WrongNode`
/// for `moor~local`), the same error, message and reason label the driver's own check gives
/// in the daemon.
pub type PrecheckError = DriverError;

/// Parses a `mount` request's options ([`crate::volume::options::parse`]) and [`check`]s them.
pub fn precheck(
    driver: &str,
    options: &BTreeMap<String, String>,
    node_name: &str,
) -> Result<VolumeOptions, PrecheckError> {
    let opts = crate::volume::options::parse(options)?;
    check(driver, &opts, node_name)?;
    Ok(opts)
}

/// Checks typed options for `driver` on node `node_name`: the option names it knows, the
/// ones it requires, the node. An unknown driver passes (the caller refuses it with its own
/// message).
pub fn check(driver: &str, opts: &VolumeOptions, node_name: &str) -> Result<(), PrecheckError> {
    let Some(table) = TABLE.iter().find(|t| t.driver == driver) else {
        return Ok(());
    };
    opts.check_known(table.driver, table.known)?;
    for key in table.required {
        opts.required(table.driver, key)?;
    }
    if driver == "local"
        && let Some(wanted) = opts.user.get("node").filter(|n| !n.is_empty())
        && wanted != node_name
    {
        return Err(DriverError::WrongNode {
            volume: opts
                .pv_or_volume_name
                .clone()
                .or_else(|| opts.user.get("path").cloned())
                .unwrap_or_default(),
            wanted: wanted.clone(),
            this: node_name.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::volume::options::string_map as map;

    #[test]
    fn every_driver_has_one_row() {
        for d in super::super::DRIVERS {
            assert_eq!(TABLE.iter().filter(|t| t.driver == *d).count(), 1, "{d}");
        }
        assert_eq!(TABLE.len(), super::super::DRIVERS.len());
        for t in TABLE {
            for r in t.required {
                assert!(
                    t.known.contains(r),
                    "{}: {r} required but unknown",
                    t.driver
                );
            }
        }
    }

    #[test]
    fn typos_missing_keys_and_foreign_nodes_are_refused() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: &[Case] = &[
            (
                "local",
                &[("pth", "/x")],
                "bad_options",
                "unknown option pth",
            ),
            (
                "local",
                &[("node", "n1")],
                "bad_options",
                "option path is required",
            ),
            (
                "nfs",
                &[("server", "s"), ("pat", "/e")],
                "bad_options",
                "unknown option pat",
            ),
            (
                "nfs",
                &[("server", "s")],
                "bad_options",
                "option path is required",
            ),
            (
                "rbd",
                &[("monitors", "m:6789")],
                "bad_options",
                "option image is required",
            ),
            (
                "iscsi",
                &[("iqn", "iqn.2020-01.x:y")],
                "bad_options",
                "option targetPortal",
            ),
            (
                "cephfs",
                &[("monitor", "m")],
                "bad_options",
                "unknown option monitor",
            ),
            (
                "glusterfs",
                &[("endpoints", "e")],
                "bad_options",
                "option path is required",
            ),
            ("fc", &[("wwid", "x")], "bad_options", "unknown option wwid"),
            (
                "local",
                &[("path", "/x"), ("kubernetes.io/readwrite", "maybe")],
                "bad_options",
                "kubernetes.io/readwrite",
            ),
            (
                "local",
                &[
                    ("path", "/x"),
                    ("node", "node-b"),
                    ("kubernetes.io/pvOrVolumeName", "pv1"),
                ],
                "wrong_node",
                "volume pv1 belongs to node node-b, this is node node-a",
            ),
        ];
        for (driver, pairs, reason, text) in cases {
            let e = precheck(driver, &map(pairs), "node-a").unwrap_err();
            assert_eq!(e.reason(), *reason, "{driver} {pairs:?}: {e}");
            assert!(e.to_string().contains(text), "{driver} {pairs:?}: {e}");
        }
    }

    /// `mountOptions` is read once, by the one parser, for every driver alike: a bad option
    /// is refused with the same message whichever driver the request names, and a good one
    /// reaches every driver as the same typed list.
    #[test]
    fn mount_options_are_validated_once_for_every_driver() {
        let required = |driver: &str| -> Vec<(&str, &str)> {
            let t = TABLE.iter().find(|t| t.driver == driver).unwrap();
            let mut p: Vec<(&str, &str)> = t.required.iter().map(|k| (*k, "v")).collect();
            if driver == "fc" {
                p.push(("wwids", "3600"));
            }
            p
        };
        let mut refusals = Vec::new();
        for d in super::super::DRIVERS {
            let mut pairs = required(d);
            pairs.push(("mountOptions", "noatime,-oremount"));
            let e = precheck(d, &map(&pairs), "node-a").unwrap_err();
            assert_eq!(e.reason(), "bad_options", "{d}: {e}");
            refusals.push(e.to_string());
            let mut pairs = required(d);
            pairs.push(("mountOptions", " noatime, nodev,"));
            let o = precheck(d, &map(&pairs), "node-a").unwrap();
            assert_eq!(o.mount_options.words(), ["noatime", "nodev"], "{d}");
            assert!(!o.user.contains_key("mountOptions"), "{d}");
        }
        refusals.dedup();
        assert_eq!(
            refusals,
            [
                "option mountOptions=noatime,-oremount: expected a comma-separated list of options, none starting with '-', without spaces"
            ]
        );
    }

    #[test]
    fn good_requests_pass() {
        for (driver, pairs) in [
            ("local", &[("path", "/x"), ("node", "node-a")][..]),
            ("local", &[("path", "/x"), ("node", "")][..]),
            (
                "nfs",
                &[("server", "s"), ("path", "/e"), ("readOnly", "true")][..],
            ),
            ("fc", &[("wwids", "3600")][..]),
            ("unknown-driver", &[("anything", "x")][..]),
        ] {
            precheck(driver, &map(pairs), "node-a").unwrap();
        }
        // `node` is local's option: other drivers refuse it as unknown, never as wrong_node.
        let e = precheck(
            "nfs",
            &map(&[("server", "s"), ("path", "/e"), ("node", "b")]),
            "a",
        );
        assert_eq!(e.unwrap_err().reason(), "bad_options");
    }
}
