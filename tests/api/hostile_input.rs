//! Hostile input: garbage gRPC frames, oversized messages and metadata,
//! non-HTTP/2 bytes, stream floods, stalled uploads and over-long fields.
//!
//! Every test shows three things: the hostile input is refused (an error
//! status, or a refused stream / closed connection for transport-level
//! abuse), the server process keeps serving, and a normal call on a fresh
//! channel right afterwards succeeds.

use std::{future::Future, net::SocketAddr, time::Duration};

use bytes::Bytes;
use connections::{
    grpc::{
        auth::MAX_AUTHORIZATION_LEN,
        validate::{MAX_DATA_TYPES, MAX_ETAG_LEN, MAX_REQUEST_ID_CHARS},
    },
    proto::{
        ActivateConnectionRequest, CreateApiKeyRequest, CreateConnectionRequest, DataType,
        DeactivateConnectionRequest, GetConnectionRequest, GetOrganizationRequest,
        ListApiKeysRequest, ListConnectionEventsRequest, ListConnectionsRequest,
        ListOrganizationsRequest, ReactivateConnectionRequest, RevokeApiKeyRequest,
        organization_service_client::OrganizationServiceClient,
    },
    service::page_token::MAX_PAGE_TOKEN_LEN,
    startup::{
        MAX_CONCURRENT_STREAMS, MAX_DECODING_MESSAGE_SIZE, MAX_ENCODING_MESSAGE_SIZE,
        MAX_HEADER_LIST_SIZE, REQUEST_TIMEOUT,
    },
};
use prost::Message;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic::{
    Code, Request, Status,
    metadata::{MetadataKey, MetadataValue},
    transport::Channel,
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_types::StatusExt;

use crate::helpers::{
    ADMIN_TOKEN, Bearer, TestApp, TestOrg, assert_error, spawn_app, unknown_id, violated_fields,
};

/// Upper bound for any single step of these tests: nothing may hang.
const STEP: Duration = Duration::from_secs(30);

/// `future`, or a panic naming `what` if it takes longer than [`STEP`].
async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {STEP:?}"))
}

/// A new HTTP/2 connection to the server (the abused one may be dead).
async fn fresh_channel(app: &TestApp) -> Channel {
    bounded(
        "connect",
        Channel::from_shared(format!("http://{}", app.addr))
            .unwrap()
            .connect(),
    )
    .await
    .expect("the server still accepts connections")
}

/// The server answers health checks and authenticated calls on a new connection.
async fn assert_still_serving(app: &TestApp, org: &TestOrg) {
    let channel = fresh_channel(app).await;
    let health = bounded(
        "health check",
        HealthClient::new(channel.clone()).check(HealthCheckRequest::default()),
    )
    .await
    .expect("health check after hostile input")
    .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);
    let own = bounded(
        "GetOrganization",
        OrganizationServiceClient::with_interceptor(channel, Bearer::new(&org.key))
            .get_organization(GetOrganizationRequest::default()),
    )
    .await
    .expect("normal call after hostile input")
    .into_inner()
    .organization
    .unwrap();
    assert_eq!(own.id, org.id);
}

/// Deterministic pseudo-random bytes (xorshift64).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect()
}

/// A gRPC length-prefixed message: flag, 4-byte big-endian length, payload.
fn grpc_frame(compressed: u8, declared_len: u32, payload: &[u8]) -> Bytes {
    let mut frame = vec![compressed];
    frame.extend_from_slice(&declared_len.to_be_bytes());
    frame.extend_from_slice(payload);
    frame.into()
}

/// `grpc-message` is percent-encoded on the wire.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1..i + 3)) {
            (b'%', Some(hex)) => {
                let hex = std::str::from_utf8(hex).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// What the server answered to a hand-made gRPC call.
#[derive(Debug)]
struct RawReply {
    http_status: http::StatusCode,
    /// `grpc-status`, from the trailers or (trailers-only) the headers.
    code: Option<Code>,
    message: String,
}

/// A gRPC call made with the `h2` crate so that the body can be anything.
/// `body: None` sends the headers and then stalls, never finishing the upload.
async fn raw_grpc_call(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Bytes>,
) -> RawReply {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(connection);
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    client = client.ready().await.unwrap();
    let (response, mut upload) = client
        .send_request(request.body(()).unwrap(), false)
        .unwrap();
    if let Some(body) = body {
        upload.send_data(body, true).unwrap();
    }
    let response = response.await.expect("an HTTP/2 response");
    let http_status = response.status();
    let head = response.headers().clone();
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("response body");
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.expect("trailers").unwrap_or_default();
    drop(upload);
    driver.abort();
    let field = |name: &str| {
        trailers
            .get(name)
            .or_else(|| head.get(name))
            .map(|v| v.to_str().unwrap().to_owned())
    };
    RawReply {
        http_status,
        code: field("grpc-status").map(|s| Code::from_i32(s.parse().unwrap())),
        message: percent_decode(&field("grpc-message").unwrap_or_default()),
    }
}

// ---------------------------------------------------------------------------
// 1. Garbage bytes inside well-formed gRPC frames
// ---------------------------------------------------------------------------

const GET_CONNECTION: &str = "/connections.v1.ConnectionService/GetConnection";

#[tokio::test]
async fn undecodable_protobuf_in_a_valid_grpc_frame_is_internal_and_never_reaches_the_handler() {
    let app = spawn_app().await;
    let org = app.new_org("A").await;
    let bearer = format!("Bearer {}", org.key);
    let payloads: [(&str, Vec<u8>); 4] = [
        // A varint that never ends.
        ("endless varint", vec![0xff; 32]),
        // Field 1 (connection_id, a string) holding invalid UTF-8.
        ("invalid UTF-8", vec![0x0a, 0x04, 0xff, 0xfe, 0xfd, 0xfc]),
        // Field 1 claiming 100 bytes of which only 3 follow.
        ("truncated field", vec![0x0a, 0x64, b'a', b'b', b'c']),
        // Fixed-seed noise; its first byte is field 0, which protobuf forbids.
        ("noise", {
            let mut bytes = noise(512, 0x5eed);
            bytes[0] = 0x07;
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
            Code::OutOfRange,
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
            grpc_frame(1, 8, &noise(8, 7)),
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

// ---------------------------------------------------------------------------
// 2. Oversized messages
// ---------------------------------------------------------------------------

#[tokio::test]
async fn messages_over_64_kib_are_out_of_range_and_exactly_64_kib_reach_validation() {
    assert_eq!(MAX_DECODING_MESSAGE_SIZE, 64 * 1024);
    assert_eq!(MAX_ENCODING_MESSAGE_SIZE, 4 * 1024 * 1024);
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let connection = app.connect(&source, &destination).await;
    let mut client = app
        .connections(&source)
        .max_encoding_message_size(4 * 1024 * 1024);
    let request_of_size = |size: usize| {
        let mut request = DeactivateConnectionRequest {
            connection_id: connection.id.clone(),
            ..Default::default()
        };
        let mut reason_len = size;
        loop {
            request.reason = "x".repeat(reason_len);
            match request.encoded_len() {
                len if len == size => return request,
                len if len > size => reason_len -= len - size,
                _ => reason_len += 1,
            }
        }
    };

    // ~1 MB, far over the limit: refused before decoding.
    let status = bounded(
        "1 MB message",
        client.deactivate_connection(request_of_size(1024 * 1024)),
    )
    .await
    .unwrap_err();
    // tonic reports an over-limit message as OUT_OF_RANGE (gRPC core and
    // grpc-go say RESOURCE_EXHAUSTED), from its codec: the application never
    // runs, so there is no ErrorInfo. Only the 5-byte prefix is needed to refuse.
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("the limit is: 65536 bytes"),
        "{status:?}"
    );

    // One byte over the limit: the same.
    let status = client
        .deactivate_connection(request_of_size(MAX_DECODING_MESSAGE_SIZE + 1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    // Exactly at the limit: decoded, then refused by the application.
    let status = client
        .deactivate_connection(request_of_size(MAX_DECODING_MESSAGE_SIZE))
        .await
        .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(violated_fields(&status), ["reason"]);

    // Nothing changed; the same connection (app.get shares the client's
    // channel) and a fresh one both still work.
    client
        .get_connection(GetConnectionRequest {
            connection_id: connection.id.clone(),
        })
        .await
        .expect("the connection survives an oversized message");
    assert_eq!(app.get(&source, &connection.id).await, connection);
    assert_still_serving(&app, &source).await;
}

// ---------------------------------------------------------------------------
// 3. and 4. Oversized metadata and credentials
// ---------------------------------------------------------------------------

/// GetOrganization as `org` with extra metadata.
async fn get_own_organization_with(
    channel: Channel,
    org: &TestOrg,
    extra: &[(String, String)],
) -> Result<(), Status> {
    let mut request = Request::new(GetOrganizationRequest::default());
    for (name, value) in extra {
        request.metadata_mut().append(
            MetadataKey::from_bytes(name.as_bytes()).unwrap(),
            MetadataValue::try_from(value.as_str()).unwrap(),
        );
    }
    bounded(
        "GetOrganization with extra metadata",
        OrganizationServiceClient::with_interceptor(channel, Bearer::new(&org.key))
            .get_organization(request),
    )
    .await
    .map(|_| ())
}

/// How the server's HTTP/2 layer (h2, below tonic and the application)
/// refused a header list over its advertised SETTINGS_MAX_HEADER_LIST_SIZE.
#[derive(Debug, PartialEq, Eq)]
enum HeaderRefusal {
    /// A `431 Request Header Fields Too Large` response on the stream; the
    /// connection lives on. tonic maps the HTTP status to UNKNOWN.
    Status431,
    /// A GOAWAY closing the whole connection, with its reason and debug data.
    /// tonic maps ENHANCE_YOUR_CALM to RESOURCE_EXHAUSTED and
    /// COMPRESSION_ERROR to INTERNAL.
    GoAway(h2::Reason, &'static str),
}

/// Classifies a refusal by the server's HTTP/2 layer; panics on anything else.
#[track_caller]
fn header_refusal(status: &Status) -> HeaderRefusal {
    // Refused below the application: no ErrorInfo.
    assert!(status.get_details_error_info().is_none(), "{status:?}");
    if status.code() == Code::Unknown {
        assert!(
            status.message().contains("HTTP status code 431"),
            "{status:?}"
        );
        return HeaderRefusal::Status431;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    let h2 = loop {
        let err = source.unwrap_or_else(|| panic!("not an HTTP/2 refusal: {status:?}"));
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            break h2;
        }
        source = err.source();
    };
    assert!(h2.is_go_away() && h2.is_remote(), "{h2:?}");
    let reason = h2.reason().unwrap();
    let expected_code = match reason {
        h2::Reason::ENHANCE_YOUR_CALM => Code::ResourceExhausted,
        h2::Reason::COMPRESSION_ERROR => Code::Internal,
        other => panic!("unexpected GOAWAY reason {other:?}: {status:?}"),
    };
    assert_eq!(status.code(), expected_code, "{status:?}");
    let debug = format!("{h2:?}");
    let data = ["too_many_continuations", "header_list_way_too_large"]
        .into_iter()
        .find(|data| debug.contains(&format!("b\"{data}\"")))
        .unwrap_or("");
    HeaderRefusal::GoAway(reason, data)
}

#[tokio::test]
async fn metadata_over_16_kib_is_refused_at_the_transport_and_under_it_is_served() {
    assert_eq!(MAX_HEADER_LIST_SIZE, 16 * 1024);
    let app = spawn_app().await;
    let org = app.new_org("A").await;
    let one = |len: usize| vec![("x-padding".to_owned(), "a".repeat(len))];

    // 15 KiB of metadata fits in the 16 KiB header list (with the pseudo
    // headers, authorization and 32 bytes of accounting per entry).
    get_own_organization_with(fresh_channel(&app).await, &org, &one(15 * 1024))
        .await
        .expect("15 KiB of metadata is within the limit");

    // Just over the limit, in one HEADERS frame: the stream is answered 431
    // and the same connection keeps working.
    let channel = fresh_channel(&app).await;
    let status = get_own_organization_with(channel.clone(), &org, &one(17 * 1024))
        .await
        .unwrap_err();
    assert_eq!(header_refusal(&status), HeaderRefusal::Status431);
    get_own_organization_with(channel, &org, &[])
        .await
        .expect("the connection survives a 431");

    // Far over the limit, h2 stops buffering and closes the connection. One
    // 1 MiB value needs ~64 CONTINUATION frames where h2 tolerates 5 for a
    // 16 KiB limit (CONTINUATION-flood protection): ENHANCE_YOUR_CALM. Many
    // small headers are decoded as they arrive; once the list is known to be
    // over the limit, a further CONTINUATION frame that would buffer more than
    // 16 KiB is a COMPRESSION_ERROR, which tonic reports as INTERNAL.
    let cases = [
        (
            "1 MiB in one header",
            one(1024 * 1024),
            HeaderRefusal::GoAway(h2::Reason::ENHANCE_YOUR_CALM, "too_many_continuations"),
        ),
        (
            "1 MiB in 1024 headers of 1 KiB",
            (0..1024)
                .map(|i| (format!("x-padding-{i}"), "a".repeat(1024)))
                .collect(),
            HeaderRefusal::GoAway(h2::Reason::COMPRESSION_ERROR, ""),
        ),
    ];
    for (name, extra, refusal) in cases {
        let status = get_own_organization_with(fresh_channel(&app).await, &org, &extra)
            .await
            .expect_err(name);
        assert_eq!(header_refusal(&status), refusal, "{name}");
        assert_still_serving(&app, &org).await;
    }
}

#[tokio::test]
async fn authorization_values_over_512_bytes_are_api_key_invalid_and_over_16_kib_never_arrive() {
    assert_eq!(MAX_AUTHORIZATION_LEN, 512);
    let app = spawn_app().await;
    let org = app.new_org("A").await;
    // The credential is trimmed, so padding between scheme and key keeps a
    // valid key valid: this isolates the length limit itself.
    let padded = |total: usize| {
        let pad = total - "Bearer ".len() - org.key.len();
        format!("Bearer {}{}", " ".repeat(pad), org.key)
    };
    let call = |channel: Channel, authorization: String| {
        let mut request = Request::new(GetOrganizationRequest::default());
        request
            .metadata_mut()
            .insert("authorization", authorization.parse().unwrap());
        let mut client = OrganizationServiceClient::with_interceptor(channel, Bearer::none());
        async move { bounded("GetOrganization", client.get_organization(request)).await }
    };

    call(app.channel.clone(), padded(MAX_AUTHORIZATION_LEN))
        .await
        .expect("a 512-byte authorization value is read");
    let status = call(app.channel.clone(), padded(MAX_AUTHORIZATION_LEN + 1))
        .await
        .unwrap_err();
    assert_error(&status, Code::Unauthenticated, "API_KEY_INVALID");
    // 12 KB, under the header list limit: answered by the application.
    let status = call(app.channel.clone(), padded(12 * 1024))
        .await
        .unwrap_err();
    assert_error(&status, Code::Unauthenticated, "API_KEY_INVALID");
    // Admin tokens are bounded the same way.
    let status = app
        .admin_with(Bearer::new(&format!(
            "{}{}",
            " ".repeat(MAX_AUTHORIZATION_LEN),
            ADMIN_TOKEN
        )))
        .list_organizations(ListOrganizationsRequest::default())
        .await
        .unwrap_err();
    assert_error(&status, Code::Unauthenticated, "ADMIN_TOKEN_INVALID");

    // A 100 KB bearer token exceeds the 16 KiB header list limit, so the
    // server's HTTP/2 layer refuses it before authentication could answer
    // UNAUTHENTICATED: as soon as the buffered header block of an already
    // oversized list passes 16 KiB, h2 sends GOAWAY(ENHANCE_YOUR_CALM,
    // "header_list_way_too_large") and closes the connection.
    let status = call(
        fresh_channel(&app).await,
        format!("Bearer cnx_{}", "A".repeat(100_000)),
    )
    .await
    .unwrap_err();
    assert_eq!(
        header_refusal(&status),
        HeaderRefusal::GoAway(h2::Reason::ENHANCE_YOUR_CALM, "header_list_way_too_large")
    );
    assert_still_serving(&app, &org).await;
}

// ---------------------------------------------------------------------------
// 5. Bytes that are not HTTP/2
// ---------------------------------------------------------------------------

/// Reads what the server sends until it closes the connection (bounded).
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    bounded("server closes the connection", async {
        let mut buf = [0; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    received
}

#[tokio::test]
async fn non_http2_bytes_on_the_port_are_answered_or_dropped_and_the_server_keeps_serving() {
    let app = spawn_app().await;
    let org = app.new_org("A").await;

    // Plain HTTP/1.1 is accepted for gRPC-Web only: tonic-web answers any
    // other HTTP/1.1 request 400 (the server asks to close, as we did).
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let reply = read_until_closed(&mut stream).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{reply:?}"
    );
    assert!(reply.contains("content-length: 0\r\n"), "{reply:?}");
    assert_still_serving(&app, &org).await;

    // 4 KiB of noise is not an HTTP/2 preface, so it is parsed as HTTP/1.1:
    // hyper answers 400 and closes the connection.
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let _ = stream.write_all(&noise(4096, 0xdead_beef)).await;
    let reply = read_until_closed(&mut stream).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.starts_with("HTTP/1.1 400 Bad Request\r\nconnection: close\r\n"),
        "{reply:?}"
    );
    assert_still_serving(&app, &org).await;

    // The HTTP/2 preface followed by noise: the server sends its SETTINGS,
    // then, as the noise's first "frame" declares a length over the 16 KiB
    // maximum frame size, GOAWAY(FRAME_SIZE_ERROR) and closes.
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(h2_raw::PREFACE).await.unwrap();
    let garbage = noise(4096, 42);
    assert!(u32::from_be_bytes([0, garbage[0], garbage[1], garbage[2]]) > 16 * 1024);
    let _ = stream.write_all(&garbage).await;
    let frames = h2_raw::read_all(&mut stream).await;
    let kinds: Vec<u8> = frames.iter().map(|f| f.kind).collect();
    assert_eq!(kinds, [h2_raw::SETTINGS, h2_raw::GOAWAY], "{frames:?}");
    assert_eq!(frames[1].goaway_error(), h2_raw::FRAME_SIZE_ERROR);
    assert_still_serving(&app, &org).await;
}

#[tokio::test]
async fn a_connection_that_sends_a_partial_preface_and_hangs_up_does_not_disturb_the_server() {
    let app = spawn_app().await;
    let org = app.new_org("A").await;
    for cut in [1, 10, h2_raw::PREFACE.len() - 1] {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream.write_all(&h2_raw::PREFACE[..cut]).await.unwrap();
        drop(stream);
    }
    // Many connections opened and abandoned at once.
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(TcpStream::connect(app.addr).await.unwrap());
    }
    assert_still_serving(&app, &org).await;
    drop(idle);
    assert_still_serving(&app, &org).await;
}

// ---------------------------------------------------------------------------
// 7. max_concurrent_streams
// ---------------------------------------------------------------------------

/// Just enough raw HTTP/2 framing to break the rules a real client keeps.
mod h2_raw {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };

    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const GOAWAY: u8 = 0x7;
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;
    pub const FRAME_SIZE_ERROR: u32 = 0x6;
    pub const REFUSED_STREAM: u32 = 0x7;

    #[derive(Debug)]
    pub struct Frame {
        pub kind: u8,
        pub flags: u8,
        pub stream: u32,
        pub payload: Vec<u8>,
    }

    impl Frame {
        /// The (identifier, value) pairs of a SETTINGS frame.
        pub fn settings(&self) -> Vec<(u16, u32)> {
            self.payload
                .chunks_exact(6)
                .map(|c| {
                    (
                        u16::from_be_bytes([c[0], c[1]]),
                        u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                    )
                })
                .collect()
        }

        /// The error code of a RST_STREAM frame.
        pub fn rst_error(&self) -> u32 {
            u32::from_be_bytes(self.payload[..4].try_into().unwrap())
        }

        /// The error code of a GOAWAY frame.
        pub fn goaway_error(&self) -> u32 {
            u32::from_be_bytes(self.payload[4..8].try_into().unwrap())
        }
    }

    pub fn encode(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut frame = vec![len[1], len[2], len[3], kind, flags];
        frame.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    /// HPACK integer with an `n`-bit prefix (RFC 7541, 5.1).
    fn integer(out: &mut Vec<u8>, n: u32, mut value: usize) {
        let max = (1usize << n) - 1;
        if value < max {
            out.push(value as u8);
            return;
        }
        out.push(max as u8);
        value -= max;
        while value >= 128 {
            out.push((value % 128 + 128) as u8);
            value /= 128;
        }
        out.push(value as u8);
    }

    /// A header block of literals without indexing (no Huffman, no table).
    pub fn header_block(headers: &[(&str, &str)]) -> Vec<u8> {
        let mut block = Vec::new();
        for (name, value) in headers {
            block.push(0x00);
            integer(&mut block, 7, name.len());
            block.extend_from_slice(name.as_bytes());
            integer(&mut block, 7, value.len());
            block.extend_from_slice(value.as_bytes());
        }
        block
    }

    /// The next frame, or `None` once the server has closed the connection.
    pub async fn read(stream: &mut TcpStream) -> Option<Frame> {
        let mut head = [0; 9];
        stream.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0; len];
        stream.read_exact(&mut payload).await.ok()?;
        Some(Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        })
    }

    /// Every frame until the server closes the connection (bounded).
    pub async fn read_all(stream: &mut TcpStream) -> Vec<Frame> {
        super::bounded("server closes the connection", async {
            let mut frames = Vec::new();
            while let Some(frame) = read(stream).await {
                frames.push(frame);
            }
            frames
        })
        .await
    }

    /// Connects, exchanges SETTINGS, and returns the server's settings.
    pub async fn handshake(addr: std::net::SocketAddr) -> (TcpStream, Vec<(u16, u32)>) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(PREFACE).await.unwrap();
        stream
            .write_all(&encode(SETTINGS, 0, 0, &[]))
            .await
            .unwrap();
        let settings = super::bounded("server SETTINGS", async {
            loop {
                let frame = read(&mut stream).await.expect("server SETTINGS");
                if frame.kind == SETTINGS && frame.flags & ACK == 0 {
                    return frame.settings();
                }
            }
        })
        .await;
        stream
            .write_all(&encode(SETTINGS, ACK, 0, &[]))
            .await
            .unwrap();
        (stream, settings)
    }
}

const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

#[tokio::test]
async fn the_server_advertises_its_stream_and_header_limits() {
    let app = spawn_app().await;
    let (_stream, settings) = h2_raw::handshake(app.addr).await;
    let setting = |id| settings.iter().find(|(i, _)| *i == id).map(|(_, v)| *v);
    assert_eq!(
        setting(h2_raw::SETTINGS_MAX_CONCURRENT_STREAMS),
        Some(MAX_CONCURRENT_STREAMS)
    );
    assert_eq!(MAX_CONCURRENT_STREAMS, 256);
    assert_eq!(
        setting(h2_raw::SETTINGS_MAX_HEADER_LIST_SIZE),
        Some(MAX_HEADER_LIST_SIZE)
    );
}

#[tokio::test]
async fn a_client_opening_more_than_256_streams_gets_refused_stream_and_the_rest_are_served() {
    let app = spawn_app().await;
    let org = app.new_org("A").await;
    let (mut stream, _) = h2_raw::handshake(app.addr).await;
    let authority = app.addr.to_string();
    let block = h2_raw::header_block(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", HEALTH_CHECK),
        (":authority", &authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]);
    // 257 calls whose request bodies have not been sent yet: each stays open.
    let streams: Vec<u32> = (0..=MAX_CONCURRENT_STREAMS).map(|i| 1 + 2 * i).collect();
    let mut out = Vec::new();
    for id in &streams {
        out.extend(h2_raw::encode(
            h2_raw::HEADERS,
            h2_raw::END_HEADERS,
            *id,
            &block,
        ));
    }
    stream.write_all(&out).await.unwrap();
    let over = *streams.last().unwrap();
    bounded("RST_STREAM for the 257th stream", async {
        loop {
            let frame = h2_raw::read(&mut stream).await.expect("connection open");
            if frame.kind == h2_raw::RST_STREAM {
                assert_eq!(
                    frame.stream, over,
                    "only the stream over the limit is reset"
                );
                assert_eq!(frame.rst_error(), h2_raw::REFUSED_STREAM);
                return;
            }
            assert_ne!(frame.kind, h2_raw::GOAWAY, "{frame:?}");
        }
    })
    .await;

    // The connection still works: finish the first call (an empty
    // HealthCheckRequest) and receive its trailers.
    stream
        .write_all(&h2_raw::encode(
            h2_raw::DATA,
            h2_raw::END_STREAM,
            1,
            &[0, 0, 0, 0, 0],
        ))
        .await
        .unwrap();
    bounded("the first call completes", async {
        loop {
            let frame = h2_raw::read(&mut stream).await.expect("connection open");
            assert!(
                !(frame.kind == h2_raw::RST_STREAM && frame.stream == 1),
                "{frame:?}"
            );
            assert_ne!(frame.kind, h2_raw::GOAWAY, "{frame:?}");
            if frame.kind == h2_raw::HEADERS
                && frame.stream == 1
                && frame.flags & h2_raw::END_STREAM != 0
            {
                return;
            }
        }
    })
    .await;
    drop(stream);
    assert_still_serving(&app, &org).await;
}

#[tokio::test]
async fn three_hundred_concurrent_calls_on_one_connection_all_complete() {
    let app = spawn_app().await;
    let org = app.new_org("A").await;
    // One tonic Channel is one HTTP/2 connection; its client queues streams
    // above the server's limit until earlier ones finish.
    let channel = fresh_channel(&app).await;

    // Watch streams stay open until dropped, so 300 of them really saturate
    // the 256-stream limit; each is closed after its first message.
    let watches = (0..300).map(|_| {
        let mut client = HealthClient::new(channel.clone());
        async move {
            let mut updates = client
                .watch(HealthCheckRequest::default())
                .await?
                .into_inner();
            let first = updates.message().await?.expect("a first status");
            Ok::<_, Status>(first.status())
        }
    });
    let results = bounded("300 Watch calls", futures::future::join_all(watches)).await;
    assert_eq!(results.len(), 300);
    for result in results {
        assert_eq!(result.expect("watch"), ServingStatus::Serving);
    }

    let checks = (0..300).map(|_| {
        let mut client =
            OrganizationServiceClient::with_interceptor(channel.clone(), Bearer::new(&org.key));
        async move {
            client
                .get_organization(GetOrganizationRequest::default())
                .await
        }
    });
    let results = bounded("300 unary calls", futures::future::join_all(checks)).await;
    for result in results {
        assert_eq!(
            result.expect("unary").into_inner().organization.unwrap().id,
            org.id
        );
    }
    assert_still_serving(&app, &org).await;
}

// ---------------------------------------------------------------------------
// 8. Server-side request timeout
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_stalled_upload_is_cancelled_by_the_client_deadline() {
    let app = spawn_app().await;
    let org = app.new_org("A").await;
    let bearer = format!("Bearer {}", org.key);
    let started = tokio::time::Instant::now();
    // Headers, then nothing: the server-side timeout (the smaller of
    // grpc-timeout and REQUEST_TIMEOUT) covers reading the request body.
    let reply = bounded(
        "stalled upload with grpc-timeout",
        raw_grpc_call(
            app.addr,
            GET_CONNECTION,
            &[("authorization", &bearer), ("grpc-timeout", "300m")],
            None,
        ),
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(reply.code, Some(Code::Cancelled), "{reply:?}");
    assert!(reply.message.contains("Timeout expired"), "{reply:?}");
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < REQUEST_TIMEOUT, "{elapsed:?}");
    assert_still_serving(&app, &org).await;
}

/// Takes REQUEST_TIMEOUT (30 s): a client that sends headers and then
/// nothing, without a deadline of its own, is cut off by the server.
#[tokio::test]
async fn a_stalled_upload_without_a_deadline_is_cancelled_after_30_seconds() {
    assert_eq!(REQUEST_TIMEOUT, Duration::from_secs(30));
    let app = spawn_app().await;
    let org = app.new_org("A").await;
    let bearer = format!("Bearer {}", org.key);
    let started = tokio::time::Instant::now();
    let reply = tokio::time::timeout(
        REQUEST_TIMEOUT + Duration::from_secs(15),
        raw_grpc_call(
            app.addr,
            GET_CONNECTION,
            &[("authorization", &bearer)],
            None,
        ),
    )
    .await
    .expect("the server gives up on a stalled upload");
    let elapsed = started.elapsed();
    assert_eq!(reply.code, Some(Code::Cancelled), "{reply:?}");
    assert!(
        elapsed >= REQUEST_TIMEOUT - Duration::from_secs(1),
        "{elapsed:?}"
    );
    assert_still_serving(&app, &org).await;
}

// ---------------------------------------------------------------------------
// 6. Field limits through the API (those not covered in tests/api)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn connection_ids_must_be_36_character_uuids_everywhere() {
    let app = spawn_app().await;
    let org = app.new_org("A").await;
    let mut client = app.connections(&org);
    let valid = unknown_id();
    assert_eq!(valid.len(), 36);
    for id in [format!("{valid}0"), format!(" {valid}"), "a".repeat(10_000)] {
        let calls: [(&str, Result<(), Status>); 5] = [
            (
                "GetConnection",
                client
                    .get_connection(GetConnectionRequest {
                        connection_id: id.clone(),
                    })
                    .await
                    .map(drop),
            ),
            (
                "ListConnectionEvents",
                client
                    .list_connection_events(ListConnectionEventsRequest {
                        connection_id: id.clone(),
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            ),
            (
                "ActivateConnection",
                client
                    .activate_connection(ActivateConnectionRequest {
                        connection_id: id.clone(),
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            ),
            (
                "DeactivateConnection",
                client
                    .deactivate_connection(DeactivateConnectionRequest {
                        connection_id: id.clone(),
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            ),
            (
                "ReactivateConnection",
                client
                    .reactivate_connection(ReactivateConnectionRequest {
                        connection_id: id.clone(),
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            ),
        ];
        for (method, result) in calls {
            let status = result.expect_err(method);
            assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
            assert_eq!(violated_fields(&status), ["connection_id"], "{method}");
        }
    }
    // 36 characters in canonical form pass validation and name nothing.
    let status = client
        .get_connection(GetConnectionRequest {
            connection_id: valid,
        })
        .await
        .unwrap_err();
    assert_error(&status, Code::NotFound, "CONNECTION_NOT_FOUND");
}

#[tokio::test]
async fn organization_and_api_key_ids_must_be_36_character_uuids() {
    let app = spawn_app().await;
    let org = app.new_org("A").await;
    let mut admin = app.admin();
    for id in [format!("{}0", org.id), "a".repeat(10_000)] {
        let status = app
            .organizations(&org)
            .get_organization(GetOrganizationRequest {
                organization_id: id.clone(),
            })
            .await
            .unwrap_err();
        assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
        assert_eq!(violated_fields(&status), ["organization_id"]);

        let status = app
            .connections(&org)
            .list_connections(ListConnectionsRequest {
                counterparty_organization_id: id.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
        assert_eq!(violated_fields(&status), ["counterparty_organization_id"]);

        let status = app
            .connections(&org)
            .create_connection(CreateConnectionRequest {
                destination_organization_id: id.clone(),
                data_types: vec![DataType::Inquiry as i32],
                request_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
        assert_eq!(violated_fields(&status), ["destination_organization_id"]);

        let status = admin
            .create_api_key(CreateApiKeyRequest {
                organization_id: id.clone(),
                display_name: String::new(),
            })
            .await
            .unwrap_err();
        assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
        assert_eq!(violated_fields(&status), ["organization_id"]);

        let status = admin
            .list_api_keys(ListApiKeysRequest {
                organization_id: id.clone(),
            })
            .await
            .unwrap_err();
        assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
        assert_eq!(violated_fields(&status), ["organization_id"]);

        let status = admin
            .revoke_api_key(RevokeApiKeyRequest { api_key_id: id })
            .await
            .unwrap_err();
        assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
        assert_eq!(violated_fields(&status), ["api_key_id"]);
    }
}

#[tokio::test]
async fn transition_request_ids_are_bounded_to_255_characters() {
    assert_eq!(MAX_REQUEST_ID_CHARS, 255);
    let app = spawn_app().await;
    let org = app.new_org("A").await;
    let mut client = app.connections(&org);
    let id = unknown_id();
    for (len, refused) in [
        (MAX_REQUEST_ID_CHARS, false),
        (MAX_REQUEST_ID_CHARS + 1, true),
    ] {
        // Multi-byte characters: the limit counts characters, not bytes.
        let request_id = "é".repeat(len);
        let results = [
            client
                .activate_connection(ActivateConnectionRequest {
                    connection_id: id.clone(),
                    request_id: request_id.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
            client
                .deactivate_connection(DeactivateConnectionRequest {
                    connection_id: id.clone(),
                    request_id: request_id.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
            client
                .reactivate_connection(ReactivateConnectionRequest {
                    connection_id: id.clone(),
                    request_id: request_id.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ];
        for result in results {
            let status = result.unwrap_err();
            if refused {
                assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
                assert_eq!(violated_fields(&status), ["request_id"]);
            } else {
                // Valid: the call goes on to look the connection up.
                assert_error(&status, Code::NotFound, "CONNECTION_NOT_FOUND");
            }
        }
    }
}

#[tokio::test]
async fn etags_over_64_characters_are_invalid_argument() {
    assert_eq!(MAX_ETAG_LEN, 64);
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let connection = app.connect(&source, &destination).await;
    for etag in ["e".repeat(MAX_ETAG_LEN + 1), "e".repeat(10_000)] {
        let status = app
            .activate(&destination, &connection.id, &etag)
            .await
            .unwrap_err();
        assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
        assert_eq!(violated_fields(&status), ["etag"]);
    }
    // 64 characters pass validation and are merely not the current etag.
    let status = app
        .activate(&destination, &connection.id, &"e".repeat(MAX_ETAG_LEN))
        .await
        .unwrap_err();
    assert_error(&status, Code::Aborted, "ETAG_MISMATCH");
    assert_eq!(app.get(&source, &connection.id).await, connection);
}

#[tokio::test]
async fn oversized_or_out_of_range_data_type_lists_are_invalid_argument() {
    assert_eq!(MAX_DATA_TYPES, 32);
    let app = spawn_app().await;
    let (a, b) = (app.new_org("A").await, app.new_org("B").await);
    let mut client = app.connections(&a);
    let inquiry = DataType::Inquiry as i32;
    for data_types in [
        vec![inquiry; MAX_DATA_TYPES + 1],
        // 10,000 packed varints: ~10 KB, inside the message limit.
        vec![inquiry; 10_000],
        vec![i32::MAX],
        vec![i32::MIN],
        vec![-1],
    ] {
        let status = client
            .create_connection(CreateConnectionRequest {
                destination_organization_id: b.id.clone(),
                data_types: data_types.clone(),
                request_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
        assert_eq!(
            violated_fields(&status),
            ["data_types"],
            "{:?}",
            &data_types[..1]
        );
    }
    // Exactly 32 entries (duplicates collapse) are accepted.
    client
        .create_connection(CreateConnectionRequest {
            destination_organization_id: b.id.clone(),
            data_types: vec![inquiry; MAX_DATA_TYPES],
            request_id: String::new(),
        })
        .await
        .expect("32 data types");

    // Unknown enum values in list filters, at the extremes of i32.
    let status = client
        .list_connections(ListConnectionsRequest {
            role: i32::MIN,
            state: i32::MAX,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(violated_fields(&status), ["role", "state"]);
}

#[tokio::test]
async fn page_tokens_over_256_characters_are_refused_by_every_list() {
    assert_eq!(MAX_PAGE_TOKEN_LEN, 256);
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let connection = app.connect(&source, &destination).await;
    for token in ["A".repeat(MAX_PAGE_TOKEN_LEN + 1), "A".repeat(10_000)] {
        let statuses = [
            app.connections(&source)
                .list_connection_events(ListConnectionEventsRequest {
                    connection_id: connection.id.clone(),
                    page_size: 0,
                    page_token: token.clone(),
                })
                .await
                .unwrap_err(),
            app.admin()
                .list_organizations(ListOrganizationsRequest {
                    page_size: 0,
                    page_token: token.clone(),
                })
                .await
                .unwrap_err(),
            app.connections(&source)
                .list_connections(ListConnectionsRequest {
                    page_token: token.clone(),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
        ];
        for status in statuses {
            assert_error(&status, Code::InvalidArgument, "INVALID_PAGE_TOKEN");
            assert_eq!(violated_fields(&status), ["page_token"]);
        }
    }
}

#[tokio::test]
async fn api_key_display_names_are_bounded_to_200_characters() {
    use connections::domain::organization::MAX_DISPLAY_NAME_CHARS;
    assert_eq!(MAX_DISPLAY_NAME_CHARS, 200);
    let app = spawn_app().await;
    let org = app.new_org("A").await;
    let mut admin = app.admin();
    for name in ["k".repeat(MAX_DISPLAY_NAME_CHARS + 1), "k".repeat(10_000)] {
        let status = admin
            .create_api_key(CreateApiKeyRequest {
                organization_id: org.id.clone(),
                display_name: name,
            })
            .await
            .unwrap_err();
        assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
        assert_eq!(violated_fields(&status), ["display_name"]);
    }
    let key = admin
        .create_api_key(CreateApiKeyRequest {
            organization_id: org.id.clone(),
            display_name: "ü".repeat(MAX_DISPLAY_NAME_CHARS),
        })
        .await
        .expect("200 characters")
        .into_inner()
        .api_key
        .unwrap();
    assert_eq!(key.display_name.chars().count(), MAX_DISPLAY_NAME_CHARS);
}
