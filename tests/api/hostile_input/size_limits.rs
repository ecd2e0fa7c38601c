//! Messages, metadata and credentials over their size limits.

use connections::{
    grpc::auth::MAX_AUTHORIZATION_LEN,
    grpc::server::{MAX_DECODING_MESSAGE_SIZE, MAX_ENCODING_MESSAGE_SIZE, MAX_HEADER_LIST_SIZE},
    proto::{
        DeactivateConnectionRequest, GetConnectionRequest, GetOrganizationRequest,
        ListOrganizationsRequest, organization_service_client::OrganizationServiceClient,
    },
};
use prost::Message;
use tonic::{
    Code, Request, Status,
    metadata::{MetadataKey, MetadataValue},
    transport::Channel,
};
use tonic_types::StatusExt;

use super::{assert_still_serving, fresh_channel};
use crate::support::{
    ADMIN_TOKEN, Bearer, TestApp, TestOrg, assert_error, bounded, spawn_app, violated_fields,
};

#[tokio::test]
async fn messages_over_64_kib_are_resource_exhausted_and_exactly_64_kib_reach_validation() {
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
    // RESOURCE_EXHAUSTED, as gRPC's status-code guide says (and gRPC core
    // and grpc-go send), from the transport: the application never runs, so
    // there is no ErrorInfo. Only the 5-byte prefix is needed to refuse.
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("the limit is: 65536 bytes"),
        "{status:?}"
    );

    // One byte over the limit: the same.
    let status = client
        .deactivate_connection(request_of_size(MAX_DECODING_MESSAGE_SIZE + 1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

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

/// A gRPC-Web GetOrganization over HTTP/1.1 as `org` with `padding` bytes
/// of extra metadata; returns the response's status line.
async fn grpc_web_http1_status_line(app: &TestApp, org: &TestOrg, padding: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "POST /connections.v1.OrganizationService/GetOrganization HTTP/1.1\r\n\
         host: x\r\ncontent-type: application/grpc-web+proto\r\n\
         authorization: Bearer {}\r\nx-padding: {}\r\n\
         content-length: 5\r\nconnection: close\r\n\r\n",
        org.key,
        "a".repeat(padding)
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // An empty GetOrganizationRequest in a gRPC-Web frame.
    let _ = stream.write_all(&[0, 0, 0, 0, 0]).await;
    let mut reply = Vec::new();
    bounded("the HTTP/1.1 reply", stream.read_to_end(&mut reply))
        .await
        .ok();
    let reply = String::from_utf8_lossy(&reply);
    reply.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn grpc_web_over_http1_is_held_to_the_same_16_kib_header_limit() {
    let app = spawn_app().await;
    let org = app.new_org("A").await;
    assert_eq!(
        grpc_web_http1_status_line(&app, &org, 15 * 1024).await,
        "HTTP/1.1 200 OK"
    );
    assert_eq!(
        grpc_web_http1_status_line(&app, &org, 17 * 1024).await,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    // Far over it (hyper alone would read up to ~400 KiB): refused the same way.
    assert_eq!(
        grpc_web_http1_status_line(&app, &org, 200 * 1024).await,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    assert_still_serving(&app, &org).await;
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
