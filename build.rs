//! Compiles the protobuf API with `protox` (a pure-Rust protobuf compiler, so no
//! system `protoc` is needed) and generates the tonic servers and clients.
//! `google.rpc.Status` (googleapis' `google/rpc/status.proto`, kept unchanged
//! in `proto/`) is not generated again: the code uses tonic-types' type.

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "connections/v1/resources.proto",
    "connections/v1/errors.proto",
    "connections/v1/connection_service.proto",
    "connections/v1/organization_service.proto",
    "connections/v1/admin_service.proto",
    "connections/v1/access_service.proto",
    "connections/v1/webhook_service.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let file_descriptors = protox::compile(PROTOS, ["proto"])?;
    let descriptor_path = out_dir.join("connections_descriptor.bin");
    std::fs::write(
        &descriptor_path,
        prost::Message::encode_to_vec(&file_descriptors),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .extern_path(".google.rpc", "::tonic_types::pb")
        .compile_fds(file_descriptors)?;
    Ok(())
}
