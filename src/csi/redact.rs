//! `Debug` for the CSI requests that carry secrets (`build.rs` turns the derived one off for
//! them): every field is printed except the secrets' values, of which only the key names
//! show, so a request logged with `?req` can never leak a password or a key.
//!
//! Invariant: a message with a `secrets` field prints through here or not at all.

use std::collections::HashMap;
use std::fmt;

use super::proto::csi::v1::{
    NodeExpandVolumeRequest, NodePublishVolumeRequest, NodeStageVolumeRequest,
};

/// The secrets' key names, sorted, and never their values.
struct SecretKeys<'a>(&'a HashMap<String, String>);

impl fmt::Debug for SecretKeys<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<&str> = self.0.keys().map(String::as_str).collect();
        keys.sort_unstable();
        f.debug_map()
            .entries(keys.into_iter().map(|k| (k, Redacted)))
            .finish()
    }
}

/// What a secret's value prints as.
struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `Debug` for a request type: its listed fields as they are, then `secrets` by key names.
macro_rules! debug_without_secrets {
    ($ty:ident { $($field:ident),* $(,)? }) => {
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($ty))
                    $(.field(stringify!($field), &self.$field))*
                    .field("secrets", &SecretKeys(&self.secrets))
                    .finish()
            }
        }
    };
}

debug_without_secrets!(NodeStageVolumeRequest {
    volume_id,
    publish_context,
    staging_target_path,
    volume_capability,
    volume_context,
});

debug_without_secrets!(NodePublishVolumeRequest {
    volume_id,
    publish_context,
    staging_target_path,
    target_path,
    volume_capability,
    readonly,
    volume_context,
});

debug_without_secrets!(NodeExpandVolumeRequest {
    volume_id,
    volume_path,
    capacity_range,
    staging_target_path,
    volume_capability,
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logged_request_shows_secret_names_but_never_values() {
        let req = NodeStageVolumeRequest {
            volume_id: "vol-1".into(),
            secrets: HashMap::from([("password".to_owned(), "hunter2-s3cr3t".to_owned())]),
            volume_context: HashMap::from([("iqn".to_owned(), "iqn.2001-04.x:y".to_owned())]),
            ..Default::default()
        };
        let shown = format!("{req:?}");
        assert!(!shown.contains("hunter2-s3cr3t"), "{shown}");
        assert!(shown.contains(r#""password": <redacted>"#), "{shown}");
        assert!(shown.contains("iqn.2001-04.x:y"), "{shown}");
        let publish = NodePublishVolumeRequest {
            secrets: req.secrets.clone(),
            ..Default::default()
        };
        assert!(!format!("{publish:?}").contains("hunter2-s3cr3t"));
        let expand = NodeExpandVolumeRequest {
            secrets: req.secrets.clone(),
            ..Default::default()
        };
        assert!(!format!("{expand:?}").contains("hunter2-s3cr3t"));
    }
}
