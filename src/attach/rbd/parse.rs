//! Pure parsers of `rbd status --format json` (watchers) and `rbd lock list --format json`
//! (lockers), fed by fixtures captured from the rbd CLI in the VM lab (Ceph 16, pacific).
//!
//! Invariant: output that does not have the expected shape is an error, never "nobody holds
//! the image": a parse that silently returned no holders would let a second writer in.

use serde_json::Value;

/// Another client that watches or locks an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// A client with the image open (a kernel mapping, rbd-nbd, a VM, rbd-fuse …).
    Watcher {
        /// `client.<id>`.
        client: String,
        /// Its address (what `ceph osd blocklist add` takes).
        address: String,
    },
    /// An advisory or exclusive lock.
    Lock {
        /// Lock id (tag).
        id: String,
        /// `client.<id>`.
        locker: String,
        /// The locker's address.
        address: String,
    },
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::Watcher { client, address } => write!(f, "watcher {client} at {address}"),
            Holder::Lock {
                id,
                locker,
                address,
            } => write!(f, "lock {id:?} held by {locker} at {address}"),
        }
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The watchers in `rbd status --format json` output.
pub fn watchers(json: &str) -> Result<Vec<Holder>, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let list = v
        .get("watchers")
        .and_then(Value::as_array)
        .ok_or("no \"watchers\" array")?;
    list.iter()
        .map(|w| {
            let client = w
                .get("client")
                .and_then(text)
                .ok_or("a watcher without client")?;
            let address = w
                .get("address")
                .and_then(text)
                .ok_or("a watcher without address")?;
            // pacific prints the numeric id; older releases `client.<id>`.
            let client = if client.starts_with("client.") {
                client
            } else {
                format!("client.{client}")
            };
            Ok(Holder::Watcher { client, address })
        })
        .collect()
}

/// The locks in `rbd lock list --format json` output: pacific prints a list of
/// `{id, locker, address}`, older releases an object keyed by lock id; no locks may print
/// nothing at all.
pub fn locks(json: &str) -> Result<Vec<Holder>, String> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let lock = |id: Option<String>, l: &Value| -> Result<Holder, String> {
        Ok(Holder::Lock {
            id: id
                .or_else(|| l.get("id").and_then(text))
                .ok_or("a lock without id")?,
            locker: l
                .get("locker")
                .and_then(text)
                .ok_or("a lock without locker")?,
            address: l
                .get("address")
                .and_then(text)
                .ok_or("a lock without address")?,
        })
    };
    match &v {
        Value::Array(list) => list.iter().map(|l| lock(None, l)).collect(),
        Value::Object(map) => map
            .iter()
            .map(|(id, l)| lock(Some(id.clone()), l))
            .collect(),
        _ => Err("neither a list nor an object of locks".into()),
    }
}

/// The feature names in `rbd info --format json` output (`"features": ["layering", …]`).
pub fn features(json: &str) -> Result<Vec<String>, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    v.get("features")
        .and_then(Value::as_array)
        .ok_or("no \"features\" array")?
        .iter()
        .map(|f| text(f).ok_or_else(|| "a feature that is not a string".to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_are_read_from_rbd_info() {
        let info = r#"{"name":"img5","id":"1a2b","size":67108864,"objects":16,"order":22,
            "object_size":4194304,"snapshot_count":0,"block_name_prefix":"rbd_data.1a2b",
            "format":2,"features":["layering","exclusive-lock"],"op_features":[],"flags":[]}"#;
        assert_eq!(features(info).unwrap(), ["layering", "exclusive-lock"]);
        assert!(features(r#"{"name":"x"}"#).is_err());
        assert!(features("rbd: error opening image").is_err());
    }

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!(
            "{}/tests/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn watchers_of_a_mapped_image_name_client_and_address() {
        let w = watchers(&fixture("rbd-status-mapped.json")).unwrap();
        assert_eq!(w.len(), 1, "{w:?}");
        let Holder::Watcher { client, address } = &w[0] else {
            panic!("{w:?}")
        };
        assert!(client.starts_with("client."), "{client}");
        assert!(address.contains(':'), "{address}");
        assert!(w[0].to_string().starts_with("watcher client."));
        assert!(
            watchers(&fixture("rbd-status-idle.json"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn locks_in_both_shapes() {
        let l = locks(&fixture("rbd-lock-list-one.json")).unwrap();
        assert_eq!(l.len(), 1, "{l:?}");
        assert!(matches!(&l[0], Holder::Lock { locker, .. } if locker.starts_with("client.")));
        assert!(
            locks(&fixture("rbd-lock-list-none.json"))
                .unwrap()
                .is_empty()
        );
        assert!(locks("").unwrap().is_empty());
        let old = r#"{"kubelet_lock_magic_n1":{"locker":"client.4181","address":"10.0.0.5:0/77"}}"#;
        assert_eq!(
            locks(old).unwrap(),
            vec![Holder::Lock {
                id: "kubelet_lock_magic_n1".into(),
                locker: "client.4181".into(),
                address: "10.0.0.5:0/77".into()
            }]
        );
    }

    #[test]
    fn unexpected_output_is_an_error_not_an_empty_list() {
        assert!(watchers("").is_err());
        assert!(watchers("{}").is_err());
        assert!(watchers(r#"{"watchers":[{"client":1}]}"#).is_err());
        assert!(locks("[{\"id\":\"x\"}]").is_err());
        assert!(locks("42").is_err());
        assert!(locks("rbd: error").is_err());
    }
}
