//! Code generated from `proto/connections/v1`.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("connections.v1");

/// The encoded file descriptor set of the API, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/connections_descriptor.bin"));

/// The `google.rpc.ErrorInfo` domain of every error this service returns.
pub const ERROR_DOMAIN: &str = "connections.v1";
