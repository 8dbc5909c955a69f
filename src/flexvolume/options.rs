//! The JSON options kubelet passes to `mount`: kubelet's own `kubernetes.io/*` keys, the
//! user's `flexVolume.options`, and base64 secrets. All values are strings.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;

/// A decoded secret value. Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
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

/// Parsed options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeOptions {
    /// `kubernetes.io/fsType` (may be empty).
    pub fs_type: String,
    /// `kubernetes.io/readwrite` = `ro`, or the user's `readOnly: "true"`.
    pub read_only: bool,
    /// `kubernetes.io/pvOrVolumeName`.
    pub pv_or_volume_name: Option<String>,
    /// `kubernetes.io/pod.uid`.
    pub pod_uid: Option<String>,
    /// `kubernetes.io/pod.name`.
    pub pod_name: Option<String>,
    /// `kubernetes.io/pod.namespace`.
    pub pod_namespace: Option<String>,
    /// `kubernetes.io/mounterArgs.FsGroup`.
    pub fs_group: Option<u32>,
    /// `kubernetes.io/secret/<key>`, decoded.
    pub secrets: BTreeMap<String, Secret>,
    /// The user's options (every key outside `kubernetes.io/`).
    pub user: BTreeMap<String, String>,
}

const K8S: &str = "kubernetes.io/";

impl VolumeOptions {
    /// Parses kubelet's JSON argument.
    pub fn parse_json(json: &str) -> Result<Self, OptionsError> {
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| OptionsError::Json(e.to_string()))?;
        let serde_json::Value::Object(obj) = v else {
            return Err(OptionsError::Json("expected a JSON object".into()));
        };
        let mut map = BTreeMap::new();
        for (k, v) in obj {
            match v {
                serde_json::Value::String(s) => {
                    map.insert(k, s);
                }
                _ => return Err(OptionsError::NotString { key: k }),
            }
        }
        Self::from_map(&map)
    }

    /// Parses an already-split string map (the form the daemon API carries).
    pub fn from_map(map: &BTreeMap<String, String>) -> Result<Self, OptionsError> {
        let mut o = VolumeOptions::default();
        for (k, v) in map {
            let Some(kube) = k.strip_prefix(K8S) else {
                o.user.insert(k.clone(), v.clone());
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
        if let Some(ro) = o.user.get("readOnly") {
            match ro.as_str() {
                "true" => o.read_only = true,
                "false" | "" => {}
                _ => return Err(invalid("readOnly", ro, "expected true or false")),
            }
        }
        Ok(o)
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

    /// Captured from a real kubelet (shared/notes/flexvolume.md).
    const KUBELET_SECRET_MOUNT: &str = r#"{"kubernetes.io/fsType":"xfs","kubernetes.io/mounterArgs.FsGroup":"1234","kubernetes.io/pod.name":"flexfsgroup","kubernetes.io/pod.namespace":"default","kubernetes.io/pod.uid":"432cc85a-0001","kubernetes.io/pvOrVolumeName":"vol","kubernetes.io/readwrite":"ro","kubernetes.io/secret/password":"czNjcjN0","kubernetes.io/secret/username":"YWxpY2U=","kubernetes.io/serviceAccount.name":"","size":"2Gi","volumeID":"vol-api-1"}"#;

    #[test]
    fn parses_a_real_kubelet_mount() {
        let o = VolumeOptions::parse_json(KUBELET_SECRET_MOUNT).unwrap();
        assert_eq!(o.fs_type, "xfs");
        assert!(o.read_only);
        assert_eq!(o.fs_group, Some(1234));
        assert_eq!(o.pod_uid.as_deref(), Some("432cc85a-0001"));
        assert_eq!(o.pod_namespace.as_deref(), Some("default"));
        assert_eq!(o.secrets["password"], Secret(b"s3cr3t".to_vec()));
        assert_eq!(o.user["size"], "2Gi");
        assert!(!format!("{o:?}").contains("s3cr3t"));
    }

    #[test]
    fn bad_input_is_named() {
        assert!(matches!(
            VolumeOptions::parse_json("{"),
            Err(OptionsError::Json(_))
        ));
        assert!(matches!(
            VolumeOptions::parse_json("[]"),
            Err(OptionsError::Json(_))
        ));
        assert_eq!(
            VolumeOptions::parse_json(r#"{"path":3}"#).unwrap_err(),
            OptionsError::NotString { key: "path".into() }
        );
        assert!(matches!(
            VolumeOptions::parse_json(r#"{"kubernetes.io/readwrite":"maybe"}"#),
            Err(OptionsError::Invalid { .. })
        ));
        assert!(matches!(
            VolumeOptions::parse_json(r#"{"kubernetes.io/mounterArgs.FsGroup":"-1"}"#),
            Err(OptionsError::Invalid { .. })
        ));
        assert!(matches!(
            VolumeOptions::parse_json(r#"{"kubernetes.io/secret/k":"%%%"}"#),
            Err(OptionsError::SecretEncoding { .. })
        ));
    }

    #[test]
    fn unknown_user_keys_are_refused() {
        let o = VolumeOptions::parse_json(r#"{"pth":"/x"}"#).unwrap();
        let e = o.check_known("local", &["path", "node"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown option pth for driver local (known: path, node)"
        );
    }
}
