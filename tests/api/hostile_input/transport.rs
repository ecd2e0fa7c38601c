//! The transport: bytes that are not HTTP/2, partial prefaces, stream
//! floods, and uploads that stall.

use std::time::Duration;

use connections::{
    grpc::server::{MAX_CONCURRENT_STREAMS, MAX_HEADER_LIST_SIZE, REQUEST_TIMEOUT},
    proto::{GetOrganizationRequest, organization_service_client::OrganizationServiceClient},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic::{Code, Status};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use super::{GET_CONNECTION, assert_still_serving, fresh_channel};
use crate::support::{
    AppOptions, Bearer, TestApp, bounded,
    http2::{self, raw_grpc_call},
    rng::TestRng,
    spawn_app, spawn_app_with,
};

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

    // Plain HTTP/1.1 is accepted for gRPC-Web and the dashboard's page only:
    // tonic-web answers any other HTTP/1.1 request 400 (the server asks to
    // close, as we did).
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(
            b"POST /connections.v1.ConnectionService/GetConnection HTTP/1.1\r\n\
              Host: x\r\nContent-Type: application/grpc\r\nContent-Length: 0\r\n\
              Connection: close\r\n\r\n",
        )
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
    let mut rng = TestRng::new();
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let noise = rng.bytes(4096);
    assert!(!noise.starts_with(http2::PREFACE));
    let _ = stream.write_all(&noise).await;
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
    stream.write_all(http2::PREFACE).await.unwrap();
    let mut garbage = rng.bytes(4096);
    // The first "frame" declares a length of at least 8 MiB.
    garbage[0] |= 0x80;
    assert!(u32::from_be_bytes([0, garbage[0], garbage[1], garbage[2]]) > 16 * 1024);
    let _ = stream.write_all(&garbage).await;
    let frames = http2::read_all(&mut stream).await;
    let kinds: Vec<u8> = frames.iter().map(|f| f.kind).collect();
    assert_eq!(kinds, [http2::SETTINGS, http2::GOAWAY], "{frames:?}");
    assert_eq!(frames[1].goaway_error(), http2::FRAME_SIZE_ERROR);
    assert_still_serving(&app, &org).await;
}

#[tokio::test]
async fn a_connection_that_sends_a_partial_preface_and_hangs_up_does_not_disturb_the_server() {
    let app = spawn_app().await;
    let org = app.new_org("A").await;
    for cut in [1, 10, http2::PREFACE.len() - 1] {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream.write_all(&http2::PREFACE[..cut]).await.unwrap();
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

const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

#[tokio::test]
async fn the_server_advertises_its_stream_and_header_limits() {
    let app = spawn_app().await;
    let (_stream, settings) = http2::handshake(app.addr).await;
    let setting = |id| settings.iter().find(|(i, _)| *i == id).map(|(_, v)| *v);
    assert_eq!(
        setting(http2::SETTINGS_MAX_CONCURRENT_STREAMS),
        Some(MAX_CONCURRENT_STREAMS)
    );
    assert_eq!(MAX_CONCURRENT_STREAMS, 256);
    assert_eq!(
        setting(http2::SETTINGS_MAX_HEADER_LIST_SIZE),
        Some(MAX_HEADER_LIST_SIZE)
    );
}

#[tokio::test]
async fn a_client_opening_more_than_256_streams_gets_refused_stream_and_the_rest_are_served() {
    let app = spawn_app().await;
    let org = app.new_org("A").await;
    let (mut stream, _) = http2::handshake(app.addr).await;
    let authority = app.addr.to_string();
    let block = http2::header_block(&[
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
        out.extend(http2::encode(
            http2::HEADERS,
            http2::END_HEADERS,
            *id,
            &block,
        ));
    }
    stream.write_all(&out).await.unwrap();
    let over = *streams.last().unwrap();
    bounded("RST_STREAM for the 257th stream", async {
        loop {
            let frame = http2::read(&mut stream).await.expect("connection open");
            if frame.kind == http2::RST_STREAM {
                assert_eq!(
                    frame.stream, over,
                    "only the stream over the limit is reset"
                );
                assert_eq!(frame.rst_error(), http2::REFUSED_STREAM);
                return;
            }
            assert_ne!(frame.kind, http2::GOAWAY, "{frame:?}");
        }
    })
    .await;

    // The connection still works: finish the first call (an empty
    // HealthCheckRequest) and receive its trailers.
    stream
        .write_all(&http2::encode(
            http2::DATA,
            http2::END_STREAM,
            1,
            &[0, 0, 0, 0, 0],
        ))
        .await
        .unwrap();
    bounded("the first call completes", async {
        loop {
            let frame = http2::read(&mut stream).await.expect("connection open");
            assert!(
                !(frame.kind == http2::RST_STREAM && frame.stream == 1),
                "{frame:?}"
            );
            assert_ne!(frame.kind, http2::GOAWAY, "{frame:?}");
            if frame.kind == http2::HEADERS
                && frame.stream == 1
                && frame.flags & http2::END_STREAM != 0
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

/// Opens `count` connections that each send part of the HTTP/2 preface and
/// then nothing more.
async fn stalled_connections(app: &TestApp, count: usize) -> Vec<TcpStream> {
    let mut stalled = Vec::with_capacity(count);
    for _ in 0..count {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream.write_all(&http2::PREFACE[..12]).await.unwrap();
        stalled.push(stream);
    }
    stalled
}

#[tokio::test]
async fn five_hundred_stalled_handshakes_do_not_stop_a_call_and_are_closed_after_the_deadline() {
    let deadline = Duration::from_secs(2);
    let app = spawn_app_with(AppOptions {
        handshake_timeout: deadline,
        // All 500 come from one address: only the deadline counts here.
        max_connections_per_peer: Some(0),
        ..AppOptions::default()
    })
    .await;
    let org = app.new_org("A").await;
    let opened = tokio::time::Instant::now();
    let mut stalled = stalled_connections(&app, 500).await;

    // A normal call, on a connection of its own, is served meanwhile.
    assert_still_serving(&app, &org).await;
    assert!(opened.elapsed() < deadline, "too slow to show anything");

    // Each stalled connection is closed once its deadline has passed.
    futures::future::join_all(stalled.iter_mut().map(read_until_closed)).await;
    assert!(opened.elapsed() >= deadline, "closed before the deadline");
    assert_still_serving(&app, &org).await;
}

#[tokio::test]
async fn connections_over_the_limit_wait_until_one_closes() {
    let deadline = Duration::from_secs(2);
    let app = spawn_app_with(AppOptions {
        handshake_timeout: deadline,
        max_client_connections: 10,
        // Every client here is on one address: only the overall limit counts.
        max_connections_per_peer: Some(0),
        ..AppOptions::default()
    })
    .await;
    let org = app.new_org("A").await;
    // The test's own channel holds one of the 10; 9 stalled ones take the rest.
    let opened = tokio::time::Instant::now();
    let _stalled = stalled_connections(&app, 9).await;
    // A new connection is accepted only once the stalled ones are closed.
    assert_still_serving(&app, &org).await;
    assert!(
        opened.elapsed() >= deadline - Duration::from_millis(100),
        "a connection over the limit was served at once"
    );
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_disconnected() {
    let app = spawn_app_with(AppOptions {
        http2_keepalive: (Duration::from_secs(1), Duration::from_secs(1)),
        ..AppOptions::default()
    })
    .await;
    let org = app.new_org("A").await;
    // A client that completes the HTTP/2 handshake and then goes silent,
    // never acknowledging a PING.
    let (mut stream, _) = http2::handshake(app.addr).await;
    let silent_since = tokio::time::Instant::now();
    let frames = http2::read_all(&mut stream).await;
    let kinds: Vec<u8> = frames.iter().map(|f| f.kind).collect();
    assert!(
        kinds.contains(&http2::PING),
        "no PING before the close: {kinds:?}"
    );
    assert!(
        silent_since.elapsed() >= Duration::from_secs(1),
        "closed before a ping could go unanswered"
    );
    assert_still_serving(&app, &org).await;
}
