//! Generates the gRPC code for the CSI front end (`src/csi/proto.rs` includes it) from
//! `proto/`: protox parses the `.proto` files in pure Rust, so building moor needs no
//! `protoc`. The request messages that carry secrets get no derived `Debug`: the front end
//! writes one that leaves the secrets out, so no log line can print them.

use std::error::Error;

const PROTOS: [&str; 2] = ["proto/csi.proto", "proto/pluginregistration.proto"];

/// Messages with a `secrets` map (their `Debug` is hand-written in `src/csi/redact.rs`).
const WITH_SECRETS: [&str; 3] = [
    ".csi.v1.NodeStageVolumeRequest",
    ".csi.v1.NodePublishVolumeRequest",
    ".csi.v1.NodeExpandVolumeRequest",
];

fn main() -> Result<(), Box<dyn Error>> {
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .skip_debug(WITH_SECRETS)
        .compile_fds(fds)?;
    Ok(())
}
