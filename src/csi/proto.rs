//! The code `build.rs` generates from `proto/` (prost messages, tonic clients and servers),
//! included here and nowhere else, so the lints it needs are allowed for it alone.
//!
//! Invariant: nothing hand-written lives in this file; the messages that carry secrets have
//! no derived `Debug` (their redacting one is in [`super::redact`]).

/// CSI spec v1 (package `csi.v1`): Identity, Node, Controller's capabilities.
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::nursery)]
pub mod csi {
    /// The spec's major version package.
    #[allow(missing_docs, clippy::all, clippy::pedantic, clippy::nursery)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/csi.v1.rs"));
    }
}

/// kubelet's plugin registration API (package `pluginregistration`, kubelet's v1).
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::nursery)]
pub mod registration {
    include!(concat!(env!("OUT_DIR"), "/pluginregistration.rs"));
}
