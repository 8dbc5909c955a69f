//! [`VolumeOptions`]: a mount request's options, parsed once into types — mount options (one
//! validated word list), read-only, fsType, fsGroup, the pod, the driver's own keys — with the
//! decoded secrets beside them. The FlexVolume front end parses kubelet's map with
//! [`parse`] and sends the typed value to the daemon; the daemon hands it to the driver as it
//! came, never parsing a string again.
//!
//! Invariants: `mountOptions` and `readOnly` are taken out of the driver's keys here, through
//! one validator each, for every driver alike; a [`Secret`] never shows in `Debug` output, and
//! nothing persisted or logged holds a [`VolumeOptions`] (the journal keeps the driver's typed
//! volume, which holds no secret).

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::validate;

/// A decoded secret value. Its `Debug` never shows the value; on the daemon's root-only
/// socket it travels base64-encoded, as kubelet gave it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map(Secret)
            .map_err(|_| serde::de::Error::custom("secret: not valid base64"))
    }
}

/// Options that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// Not a JSON object of strings.
    #[error("options are not valid JSON: {0}")]
    Json(String),
    /// A value is not a string.
    #[error("option {key}: expected a string value")]
    NotString {
        /// The key.
        key: String,
    },
    /// A value is outside what the key allows.
    #[error("option {key}={value}: {expected}")]
    Invalid {
        /// The key.
        key: String,
        /// The value (never a secret).
        value: String,
        /// What is allowed.
        expected: &'static str,
    },
    /// A secret is not base64.
    #[error("secret key {key}: not valid base64")]
    SecretEncoding {
        /// The secret's key.
        key: String,
    },
    /// A key the driver does not know (a typo must not be silently ignored).
    #[error("unknown option {key} for driver {driver} (known: {known})")]
    Unknown {
        /// The key.
        key: String,
        /// The driver.
        driver: String,
        /// The driver's keys.
        known: String,
    },
    /// A required key is missing.
    #[error("option {key} is required by driver {driver}")]
    Missing {
        /// The key.
        key: &'static str,
        /// The driver.
        driver: String,
    },
}

/// `mountOptions` (`nfsvers=4.1,hard`) as words, in order, each through
/// [`validate::mount_options`]: a value of this type was validated, whoever built it (the
/// socket's deserializer runs the same validator).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct MountOptions(Vec<String>);

impl MountOptions {
    /// Parses the comma-separated text of option `key`.
    pub fn parse(key: &str, value: &str) -> Result<Self, OptionsError> {
        validate::mount_options(key, value).map(MountOptions)
    }

    /// The words, in order.
    pub fn words(&self) -> &[String] {
        &self.0
    }

    /// The comma-separated form, as mount(8) and mount(2) read it.
    pub fn joined(&self) -> String {
        self.0.join(",")
    }

    /// No options.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<Vec<String>> for MountOptions {
    type Error = OptionsError;

    fn try_from(words: Vec<String>) -> Result<Self, OptionsError> {
        // One word per item: a comma inside one would be two options to the helper.
        if words.iter().any(|w| w.contains(',') || w.is_empty()) {
            return Err(OptionsError::Invalid {
                key: "mountOptions".into(),
                value: validate::shown(&words.join(",")),
                expected: validate::MOUNT_OPTIONS,
            });
        }
        Self::parse("mountOptions", &words.join(","))
    }
}

impl From<MountOptions> for Vec<String> {
    fn from(m: MountOptions) -> Self {
        m.0
    }
}

/// A mount request's options, typed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeOptions {
    /// The filesystem asked for (may be empty: the driver's default).
    pub fs_type: String,
    /// Mount read-only (kubelet's `ro`, or the user's `readOnly: "true"`).
    pub read_only: bool,
    /// PV or inline volume name.
    pub pv_or_volume_name: Option<String>,
    /// Pod UID.
    pub pod_uid: Option<String>,
    /// Pod name.
    pub pod_name: Option<String>,
    /// Pod namespace.
    pub pod_namespace: Option<String>,
    /// The group the volume root is given to (kubelet's fsGroup).
    pub fs_group: Option<u32>,
    /// The user's `mountOptions`, validated.
    #[serde(default)]
    pub mount_options: MountOptions,
    /// The driver's own keys (every user key but `mountOptions` and `readOnly`), unparsed:
    /// the driver turns them into its typed volume, once.
    pub user: BTreeMap<String, String>,
    /// Decoded secrets, beside the options and never inside a value that is persisted.
    #[serde(default)]
    pub secrets: BTreeMap<String, Secret>,
}

/// kubelet's prefix for its own keys.
const K8S: &str = "kubernetes.io/";

/// Parses an option map as kubelet writes it (`kubernetes.io/*` keys, base64 secrets under
/// `kubernetes.io/secret/`, the user's keys): the one parse of a request's options, run by
/// the front end; the daemon receives its result.
pub fn parse(map: &BTreeMap<String, String>) -> Result<VolumeOptions, OptionsError> {
    let mut o = VolumeOptions::default();
    let mut user = BTreeMap::new();
    for (k, v) in map {
        let Some(kube) = k.strip_prefix(K8S) else {
            user.insert(k.clone(), v.clone());
            continue;
        };
        match kube {
            "fsType" => o.fs_type = v.clone(),
            "readwrite" => {
                o.read_only = match v.as_str() {
                    "ro" => true,
                    "rw" | "" => false,
                    _ => return Err(invalid(k, v, "expected ro or rw")),
                }
            }
            "pvOrVolumeName" => o.pv_or_volume_name = non_empty(v),
            "pod.uid" | "pod.UID" => o.pod_uid = non_empty(v),
            "pod.name" => o.pod_name = non_empty(v),
            "pod.namespace" => o.pod_namespace = non_empty(v),
            "mounterArgs.FsGroup" | "fsGroup" => {
                o.fs_group = Some(
                    v.parse()
                        .map_err(|_| invalid(k, v, "expected a numeric group id"))?,
                )
            }
            other => {
                if let Some(name) = other.strip_prefix("secret/") {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(v.trim())
                        .map_err(|_| OptionsError::SecretEncoding { key: name.into() })?;
                    o.secrets.insert(name.into(), Secret(bytes));
                }
                // Other kubelet keys (serviceAccount.name, …) are informational.
            }
        }
    }
    o.set_user(user)?;
    Ok(o)
}

/// Reads a request's options off the daemon's socket: the typed value the front end parsed,
/// or — from a client that sends kubelet's option map as it came (an earlier front end, a
/// hand-made request) — that map, through [`parse`]. For `#[serde(deserialize_with)]`.
pub fn typed_or_kubelet<'de, D: serde::Deserializer<'de>>(d: D) -> Result<VolumeOptions, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Wire {
        Typed(VolumeOptions),
        Kubelet(BTreeMap<String, String>),
    }
    match Wire::deserialize(d)? {
        Wire::Typed(o) => Ok(o),
        Wire::Kubelet(m) => parse(&m).map_err(serde::de::Error::custom),
    }
}

impl VolumeOptions {
    /// Takes the driver's own keys (FlexVolume's `options`, a CSI volume context): the keys
    /// every driver shares — `mountOptions`, `readOnly` — are parsed out here, the rest kept
    /// for the driver.
    pub fn set_user(&mut self, mut user: BTreeMap<String, String>) -> Result<(), OptionsError> {
        if let Some(m) = user.remove("mountOptions") {
            self.mount_options = MountOptions::parse("mountOptions", &m)?;
        }
        if let Some(ro) = user.remove("readOnly") {
            match ro.as_str() {
                "true" => self.read_only = true,
                "false" | "" => {}
                _ => return Err(invalid("readOnly", &ro, "expected true or false")),
            }
        }
        self.user = user;
        Ok(())
    }

    /// Checks that every user key is one the driver knows.
    pub fn check_known(&self, driver: &str, known: &[&str]) -> Result<(), OptionsError> {
        for k in self.user.keys() {
            if !known.contains(&k.as_str()) {
                return Err(OptionsError::Unknown {
                    key: k.clone(),
                    driver: driver.into(),
                    known: known.join(", "),
                });
            }
        }
        Ok(())
    }

    /// A user option that must be present.
    pub fn required(&self, driver: &str, key: &'static str) -> Result<&str, OptionsError> {
        self.user
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
            .ok_or(OptionsError::Missing {
                key,
                driver: driver.into(),
            })
    }

    /// [`parse`] of a map, for the drivers' unit tests.
    #[cfg(test)]
    pub(crate) fn from_map(map: &BTreeMap<String, String>) -> Result<Self, OptionsError> {
        parse(map)
    }

    /// [`parse`] of a JSON object of strings, for the drivers' unit tests.
    #[cfg(test)]
    pub(crate) fn parse_json(json: &str) -> Result<Self, OptionsError> {
        let map: BTreeMap<String, String> =
            serde_json::from_str(json).map_err(|e| OptionsError::Json(e.to_string()))?;
        parse(&map)
    }

    /// A user option, `None` when absent or empty.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.user
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// An option map from pairs, for unit tests.
#[cfg(test)]
pub(crate) fn string_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn non_empty(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_owned())
}

fn invalid(k: &str, v: &str, expected: &'static str) -> OptionsError {
    OptionsError::Invalid {
        key: k.into(),
        value: v.into(),
        expected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::volume::options::string_map as map;

    #[test]
    fn kubelet_keys_and_shared_user_keys_become_fields() {
        let o = parse(&map(&[
            ("kubernetes.io/fsType", "xfs"),
            ("kubernetes.io/mounterArgs.FsGroup", "1234"),
            ("kubernetes.io/pod.uid", "u1"),
            ("mountOptions", " noatime, nodev ,,"),
            ("readOnly", "true"),
            ("path", "/x"),
        ]))
        .unwrap();
        assert_eq!(o.fs_type, "xfs");
        assert_eq!(o.fs_group, Some(1234));
        assert_eq!(o.pod_uid.as_deref(), Some("u1"));
        assert!(o.read_only);
        assert_eq!(o.mount_options.words(), ["noatime", "nodev"]);
        assert_eq!(o.mount_options.joined(), "noatime,nodev");
        // What the driver gets is its own keys only.
        assert_eq!(o.user, map(&[("path", "/x")]));
    }

    #[test]
    fn bad_shared_values_are_named() {
        for (pairs, text) in [
            (
                &[("mountOptions", "hard,-v")][..],
                "option mountOptions=hard,-v: expected",
            ),
            (&[("readOnly", "yes")][..], "option readOnly=yes"),
            (
                &[("kubernetes.io/readwrite", "maybe")][..],
                "option kubernetes.io/readwrite=maybe",
            ),
            (
                &[("kubernetes.io/secret/k", "%%%")][..],
                "secret key k: not valid base64",
            ),
        ] {
            let e = parse(&map(pairs)).unwrap_err();
            assert!(e.to_string().starts_with(text), "{pairs:?}: {e}");
        }
    }

    /// What the front end sends is what the daemon gets: the typed value crosses the socket
    /// unchanged, secrets included (base64 on the wire, never in `Debug`).
    #[test]
    fn options_cross_the_socket_unchanged() {
        let o = parse(&map(&[
            ("kubernetes.io/fsType", "ext4"),
            ("kubernetes.io/secret/key", "czNjcjN0"),
            ("mountOptions", "noatime"),
            ("pool", "p"),
        ]))
        .unwrap();
        let wire = serde_json::to_string(&o).unwrap();
        assert!(!wire.contains("s3cr3t"), "{wire}");
        let back: VolumeOptions = serde_json::from_str(&wire).unwrap();
        assert_eq!(back, o);
        assert_eq!(back.secrets["key"], Secret(b"s3cr3t".to_vec()));
        assert!(!format!("{back:?}").contains("s3cr3t"));
    }

    /// kubelet's map as it came (an earlier front end, a hand-made request, the bench) is
    /// read through the one parser; the typed value as it is.
    #[test]
    fn the_socket_takes_the_typed_value_or_kubelets_map() {
        #[derive(Deserialize)]
        struct Req {
            #[serde(deserialize_with = "typed_or_kubelet")]
            options: VolumeOptions,
        }
        let m = map(&[
            ("path", "/x"),
            ("mountOptions", "noatime"),
            ("kubernetes.io/readwrite", "ro"),
        ]);
        let want = parse(&m).unwrap();
        for wire in [
            serde_json::json!({ "options": m }),
            serde_json::json!({ "options": want }),
        ] {
            let r: Req = serde_json::from_value(wire).unwrap();
            assert_eq!(r.options, want);
        }
        let bad = serde_json::json!({"options": {"path": "/x", "mountOptions": "-oremount"}});
        let e = serde_json::from_value::<Req>(bad).err().unwrap();
        assert!(
            e.to_string().contains("option mountOptions=-oremount"),
            "{e}"
        );
    }

    /// A hand-made request cannot smuggle a mount option past the validator: the socket's
    /// deserializer runs the same one.
    #[test]
    fn the_socket_refuses_what_the_parser_refuses() {
        for words in [
            r#"["-oremount"]"#,
            r#"["hard,-v"]"#,
            r#"["a b"]"#,
            r#"[""]"#,
        ] {
            let json = format!(
                r#"{{"fs_type":"","read_only":false,"pv_or_volume_name":null,"pod_uid":null,"pod_name":null,"pod_namespace":null,"fs_group":null,"mount_options":{words},"user":{{}}}}"#
            );
            assert!(
                serde_json::from_str::<VolumeOptions>(&json).is_err(),
                "{words}"
            );
        }
    }
}
