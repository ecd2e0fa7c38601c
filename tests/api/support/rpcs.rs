//! Every RPC of the API, read from its file descriptor set, and calls of any
//! of them with a request encoded field by field.
//!
//! A test meant to cover "every RPC that takes X" builds its list here, so a
//! new RPC is covered (or makes the test fail, asking to be taught) instead of
//! being skipped silently.

use std::str::FromStr;

use bytes::{Buf, BufMut};
use connections::proto::FILE_DESCRIPTOR_SET;
use http::uri::PathAndQuery;
use prost::Message;
use prost_types::{DescriptorProto, FileDescriptorSet};
use tonic::{
    Request, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
};

use super::clients::{ADMIN_TOKEN, TestOrg};

/// The package of the API's services.
pub const PACKAGE: &str = "connections.v1";

/// One RPC and the fields of its request.
#[derive(Debug, Clone)]
pub struct Rpc {
    /// The service's full name, e.g. `connections.v1.ConnectionService`.
    pub service: String,
    /// The method's name, e.g. `GetConnection`.
    pub method: String,
    /// The request's fields: name and number.
    pub fields: Vec<(String, u32)>,
}

impl Rpc {
    /// The HTTP/2 path of the RPC.
    pub fn path(&self) -> String {
        format!("/{}/{}", self.service, self.method)
    }

    /// The number of the request's field `name`, if it has one.
    pub fn field(&self, name: &str) -> Option<u32> {
        self.fields
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, number)| *number)
    }

    /// The number of the request's field `name`; panics if it has none.
    #[track_caller]
    pub fn number(&self, name: &str) -> u32 {
        self.field(name)
            .unwrap_or_else(|| panic!("{} has no field {name}", self.method))
    }

    /// The secret that may call this RPC: the admin token for the
    /// AdminService, `org`'s API key for the others.
    #[track_caller]
    pub fn secret<'a>(&self, org: &'a TestOrg) -> &'a str {
        match self.service.strip_prefix(PACKAGE) {
            Some(".AdminService") => ADMIN_TOKEN,
            Some(
                ".ConnectionService"
                | ".OrganizationService"
                | ".AccessService"
                | ".WebhookService",
            ) => &org.key,
            _ => panic!("which credential calls {}? Add it here", self.service),
        }
    }
}

fn descriptor_set() -> FileDescriptorSet {
    FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("the API's file descriptor set")
}

/// The full name of every service of the API.
pub fn services() -> Vec<String> {
    descriptor_set()
        .file
        .iter()
        .filter(|file| file.package() == PACKAGE)
        .flat_map(|file| &file.service)
        .map(|service| format!("{PACKAGE}.{}", service.name()))
        .collect()
}

/// Every RPC of every service of the API.
pub fn all() -> Vec<Rpc> {
    let set = descriptor_set();
    let message = |full_name: &str| -> &DescriptorProto {
        set.file
            .iter()
            .flat_map(|file| {
                file.message_type.iter().map(move |message| {
                    (format!(".{}.{}", file.package(), message.name()), message)
                })
            })
            .find(|(name, _)| name == full_name)
            .map(|(_, message)| message)
            .unwrap_or_else(|| panic!("no message {full_name} in the descriptor set"))
    };
    let mut rpcs = Vec::new();
    for file in set.file.iter().filter(|file| file.package() == PACKAGE) {
        for service in &file.service {
            for method in &service.method {
                let request = message(method.input_type());
                rpcs.push(Rpc {
                    service: format!("{PACKAGE}.{}", service.name()),
                    method: method.name().to_owned(),
                    fields: request
                        .field
                        .iter()
                        .map(|f| (f.name().to_owned(), f.number() as u32))
                        .collect(),
                });
            }
        }
    }
    assert!(!rpcs.is_empty(), "the descriptor set lists no RPC");
    rpcs
}

/// Every RPC whose request has a field `name`. They include every method in
/// `known` (or this panics): the list derived from the descriptor set is
/// not missing what the test knows of.
#[track_caller]
pub fn taking(name: &str, known: &[&str]) -> Vec<Rpc> {
    let rpcs: Vec<Rpc> = all()
        .into_iter()
        .filter(|rpc| rpc.field(name).is_some())
        .collect();
    let methods: Vec<&str> = rpcs.iter().map(|rpc| rpc.method.as_str()).collect();
    for method in known {
        assert!(
            methods.contains(method),
            "{method} missing from {methods:?}"
        );
    }
    rpcs
}

/// A protobuf request built field by field. A field set twice takes the
/// later value (protobuf's rule for a scalar field seen twice).
#[derive(Debug, Clone, Default)]
pub struct Encoded(Vec<u8>);

impl Encoded {
    /// `message`, encoded.
    pub fn of(message: &impl Message) -> Self {
        Self(message.encode_to_vec())
    }

    /// Sets string field `number` to `value`.
    pub fn string(mut self, number: u32, value: &str) -> Self {
        prost::encoding::string::encode(number, &value.to_owned(), &mut self.0);
        self
    }
}

/// Calls `rpc` with `request`, authenticated with `secret`; returns the
/// encoded response or the status.
pub async fn call(
    channel: &Channel,
    rpc: &Rpc,
    secret: &str,
    request: Encoded,
) -> Result<Vec<u8>, Status> {
    let (mut grpc, request, path) = prepare(channel, rpc, secret, request).await?;
    grpc.unary(request, path, EncodedCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// Calls the server-streaming `rpc` with `request`, authenticated with
/// `secret`; returns the stream of encoded messages, or the status.
pub async fn call_streaming(
    channel: &Channel,
    rpc: &Rpc,
    secret: &str,
    request: Encoded,
) -> Result<tonic::Streaming<Vec<u8>>, Status> {
    let (mut grpc, request, path) = prepare(channel, rpc, secret, request).await?;
    grpc.server_streaming(request, path, EncodedCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// A client ready to call on `channel`, the request carrying `secret`, and
/// the path of `rpc`.
async fn prepare(
    channel: &Channel,
    rpc: &Rpc,
    secret: &str,
    request: Encoded,
) -> Result<(tonic::client::Grpc<Channel>, Request<Vec<u8>>, PathAndQuery), Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|err| Status::unavailable(err.to_string()))?;
    let mut request = Request::new(request.0);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {secret}").parse().expect("ASCII secret"),
    );
    let path = PathAndQuery::from_str(&rpc.path()).expect("a path");
    Ok((grpc, request, path))
}

/// A codec for messages already encoded: bytes in, bytes out.
#[derive(Debug, Clone, Copy, Default)]
struct EncodedCodec;

impl Codec for EncodedCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self {
        Self
    }

    fn decoder(&mut self) -> Self {
        Self
    }
}

impl Encoder for EncodedCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for EncodedCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

#[test]
fn the_descriptor_set_lists_the_known_services_and_rpcs() {
    let services = services();
    for known in [
        "connections.v1.ConnectionService",
        "connections.v1.OrganizationService",
        "connections.v1.AdminService",
    ] {
        assert!(services.iter().any(|s| s == known), "{known}: {services:?}");
    }
    let rpcs = all();
    let get = rpcs
        .iter()
        .find(|rpc| rpc.method == "GetConnection")
        .expect("GetConnection");
    assert_eq!(
        get.path(),
        "/connections.v1.ConnectionService/GetConnection"
    );
    assert_eq!(get.field("connection_id"), Some(1));
    assert!(rpcs.iter().all(|rpc| services.contains(&rpc.service)));
}
