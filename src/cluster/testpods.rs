//! A test seam, compiled in only with the cargo feature `test-hooks` (see `crate::testhook`):
//! with `MOOR_TEST_PODS=<file>`, the daemon answers [`super::Pods::pod`] from that file
//! (lines `<uid> present|gone`, read at each question; a UID not listed is unknown), so a host
//! test can delete a pod "in the API server" without one.
//!
//! Invariant: without the feature [`pods_from_file`] returns the cluster as it is, and no
//! environment variable is read.

/// The daemon's cluster, its pod view replaced by `MOOR_TEST_PODS`'s file when set (a test
/// seam: see the module header; the file's pods count as confirmed by an API server).
#[cfg(feature = "test-hooks")]
pub fn pods_from_file(cluster: super::Cluster) -> super::Cluster {
    match std::env::var_os("MOOR_TEST_PODS").filter(|v| !v.is_empty()) {
        Some(file) => {
            tracing::warn!(file = %std::path::Path::new(&file).display(), "test hook: pod states are read from a file");
            super::Cluster {
                pods: std::sync::Arc::new(pods::FilePods(file.into())),
                connected: true,
                ..cluster
            }
        }
        None => cluster,
    }
}

/// Compiled out: the cluster as it is.
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn pods_from_file(cluster: super::Cluster) -> super::Cluster {
    cluster
}

#[cfg(feature = "test-hooks")]
mod pods {
    use crate::cluster::{Eviction, PodInfo, PodState, Pods};

    /// Pod states from a file a test writes: `<uid> present|gone` per line.
    pub(super) struct FilePods(pub(super) std::path::PathBuf);

    impl Pods for FilePods {
        fn pod(&self, uid: &str) -> PodState {
            let text = std::fs::read_to_string(&self.0).unwrap_or_default();
            let state = text.lines().find_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some(uid)).then(|| w.next()).flatten()
            });
            match state {
                Some("present") => PodState::Present(PodInfo {
                    namespace: "test".into(),
                    name: uid.into(),
                    uid: uid.into(),
                    mounts: Vec::new(),
                    pvs: Default::default(),
                    controlled: false,
                }),
                Some("gone") => PodState::Gone,
                _ => PodState::Unknown,
            }
        }

        fn evict(&self, _namespace: &str, _name: &str, _uid: &str) -> Eviction {
            Eviction::Failed("test pods: no eviction".into())
        }
    }
}
