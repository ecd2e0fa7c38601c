//! Garbage inside well-formed gRPC frames, and malformed frames: refused
//! before the application runs.

use bytes::Bytes;
use tonic::Code;

use super::{GET_CONNECTION, assert_still_serving};
use crate::support::{
    bounded,
    http2::{grpc_frame, raw_grpc_call},
    rng::TestRng,
    spawn_app, unknown_id,
};

#[tokio::test]
async fn undecodable_protobuf_in_a_valid_grpc_frame_is_internal_and_never_reaches_the_handler() {
    let app = spawn_app().await;
    let org = app.new_org("A").await;
    let bearer = format!("Bearer {}", org.key);
    let mut rng = TestRng::new();
    let payloads: [(&str, Vec<u8>); 4] = [
        // A varint that never ends.
        ("endless varint", vec![0xff; 32]),
        // Field 1 (connection_id, a string) holding invalid UTF-8.
        ("invalid UTF-8", vec![0x0a, 0x04, 0xff, 0xfe, 0xfd, 0xfc]),
        // Field 1 claiming 100 bytes of which only 3 follow.
        ("truncated field", vec![0x0a, 0x64, b'a', b'b', b'c']),
        // Random bytes after a first byte that is field 0, which protobuf
        // forbids: undecodable whatever follows.
        ("noise", {
            let mut bytes = rng.bytes(512);
            bytes[0] = 0x07;
            assert_eq!(bytes[0] >> 3, 0, "the first tag names field 0");
            bytes
        }),
    ];
    for (name, payload) in payloads {
        let body = grpc_frame(0, payload.len() as u32, &payload);
        for auth in [Some(bearer.as_str()), None] {
            let headers: Vec<(&str, &str)> =
                auth.map(|a| ("authorization", a)).into_iter().collect();
            let reply = bounded(
                name,
                raw_grpc_call(app.addr, GET_CONNECTION, &headers, Some(body.clone())),
            )
            .await;
            // tonic decodes the whole message before the handler (and thus
            // authentication) runs, and reports a protobuf DecodeError as
            // INTERNAL (no ErrorInfo), with or without credentials.
            assert_eq!(reply.http_status, http::StatusCode::OK, "{name}");
            assert_eq!(reply.code, Some(Code::Internal), "{name}: {reply:?}");
            assert!(
                reply.message.contains("failed to decode"),
                "{name}: {reply:?}"
            );
        }
    }
    assert_still_serving(&app, &org).await;
}

#[tokio::test]
async fn malformed_grpc_length_prefixes_and_flags_are_refused() {
    let app = spawn_app().await;
    let org = app.new_org("A").await;
    let bearer = format!("Bearer {}", org.key);
    let mut rng = TestRng::new();
    let auth = [("authorization", bearer.as_str())];
    let id_field = {
        let mut field = vec![0x0a, 36];
        field.extend_from_slice(unknown_id().as_bytes());
        field
    };
    // (what, grpc-encoding, body, expected code, expected message part)
    let cases: [(&str, Option<&str>, Bytes, Code, &str); 6] = [
        (
            "length prefix claims more bytes than are sent",
            None,
            grpc_frame(0, 100, &id_field[..10]),
            Code::Internal,
            "Unexpected EOF",
        ),
        (
            "only part of the 5-byte prefix",
            None,
            Bytes::from_static(&[0, 0, 0]),
            Code::Internal,
            "Unexpected EOF",
        ),
        (
            "length prefix of 4 GiB",
            None,
            grpc_frame(0, u32::MAX, &id_field),
            Code::ResourceExhausted,
            "decoded message length too large",
        ),
        (
            "compressed flag without grpc-encoding",
            None,
            grpc_frame(1, id_field.len() as u32, &id_field),
            Code::Internal,
            "compressed-flag but no grpc-encoding",
        ),
        (
            "compression flag 2",
            None,
            grpc_frame(2, id_field.len() as u32, &id_field),
            Code::Internal,
            "invalid compression flag",
        ),
        (
            "gzip, which the server does not accept",
            Some("gzip"),
            grpc_frame(1, 8, &rng.bytes(8)),
            Code::Unimplemented,
            "gzip",
        ),
    ];
    for (name, encoding, body, code, message) in cases {
        let mut headers = auth.to_vec();
        headers.extend(encoding.map(|e| ("grpc-encoding", e)));
        let reply = bounded(
            name,
            raw_grpc_call(app.addr, GET_CONNECTION, &headers, Some(body)),
        )
        .await;
        assert_eq!(reply.code, Some(code), "{name}: {reply:?}");
        assert!(reply.message.contains(message), "{name}: {reply:?}");
    }
    // The same hand-made call with a well-formed message reaches the
    // application (which finds nothing), proving the harness is sound.
    let reply = raw_grpc_call(
        app.addr,
        GET_CONNECTION,
        &auth,
        Some(grpc_frame(0, id_field.len() as u32, &id_field)),
    )
    .await;
    assert_eq!(reply.code, Some(Code::NotFound), "{reply:?}");
    assert_still_serving(&app, &org).await;
}
