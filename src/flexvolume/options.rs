//! The JSON options kubelet passes to `mount` and `expandfs`: one object of strings (kubelet's
//! own `kubernetes.io/*` keys, the user's `flexVolume.options`, base64 secrets), turned into
//! the typed [`VolumeOptions`] by the one parser, [`crate::volume::options::parse`].

use std::collections::BTreeMap;

use crate::volume::{OptionsError, VolumeOptions};

/// kubelet's JSON argument as a string map (every value must be a string).
pub fn json_map(json: &str) -> Result<BTreeMap<String, String>, OptionsError> {
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
    Ok(map)
}

/// Parses kubelet's JSON argument into typed options.
pub fn parse_json(json: &str) -> Result<VolumeOptions, OptionsError> {
    crate::volume::options::parse(&json_map(json)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::Secret;

    /// Captured from a real kubelet (shared/notes/flexvolume.md).
    const KUBELET_SECRET_MOUNT: &str = r#"{"kubernetes.io/fsType":"xfs","kubernetes.io/mounterArgs.FsGroup":"1234","kubernetes.io/pod.name":"flexfsgroup","kubernetes.io/pod.namespace":"default","kubernetes.io/pod.uid":"432cc85a-0001","kubernetes.io/pvOrVolumeName":"vol","kubernetes.io/readwrite":"ro","kubernetes.io/secret/password":"czNjcjN0","kubernetes.io/secret/username":"YWxpY2U=","kubernetes.io/serviceAccount.name":"","size":"2Gi","volumeID":"vol-api-1"}"#;

    #[test]
    fn parses_a_real_kubelet_mount() {
        let o = parse_json(KUBELET_SECRET_MOUNT).unwrap();
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
        assert!(matches!(parse_json("{"), Err(OptionsError::Json(_))));
        assert!(matches!(parse_json("[]"), Err(OptionsError::Json(_))));
        assert_eq!(
            parse_json(r#"{"path":3}"#).unwrap_err(),
            OptionsError::NotString { key: "path".into() }
        );
        assert!(matches!(
            parse_json(r#"{"kubernetes.io/readwrite":"maybe"}"#),
            Err(OptionsError::Invalid { .. })
        ));
        assert!(matches!(
            parse_json(r#"{"kubernetes.io/mounterArgs.FsGroup":"-1"}"#),
            Err(OptionsError::Invalid { .. })
        ));
        assert!(matches!(
            parse_json(r#"{"kubernetes.io/secret/k":"%%%"}"#),
            Err(OptionsError::SecretEncoding { .. })
        ));
    }

    #[test]
    fn unknown_user_keys_are_refused() {
        let o = parse_json(r#"{"pth":"/x"}"#).unwrap();
        let e = o.check_known("local", &["path", "node"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown option pth for driver local (known: path, node)"
        );
    }
}
