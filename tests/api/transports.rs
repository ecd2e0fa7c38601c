//! gRPC-Web with CORS, TLS with and without client certificates, and what
//! holds connections open: handshake deadlines, connection limits (overall
//! and per address) and the idle timeout.

use std::time::Duration;

use connections::proto::{
    GetOrganizationRequest, organization_service_client::OrganizationServiceClient,
};
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tonic::{
    Request,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

use crate::support::{AppOptions, TestApp, TestOrg, app::Tls, spawn_app, spawn_app_with};

fn get_own_organization(org: &TestOrg) -> Request<GetOrganizationRequest> {
    let mut request = Request::new(GetOrganizationRequest::default());
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", org.key).parse().unwrap(),
    );
    request
}

#[tokio::test]
async fn grpc_web_calls_work_over_http_1_1() {
    let app = spawn_app().await;
    let org = app.new_org("Browser Co").await;
    let http1 = Client::builder(TokioExecutor::new()).build_http();
    let grpc_web = tower::ServiceBuilder::new()
        .layer(tonic_web::GrpcWebClientLayer::new())
        .service(http1);
    let mut client = OrganizationServiceClient::with_origin(
        grpc_web,
        format!("http://{}", app.addr).parse().unwrap(),
    );
    let own = client
        .get_organization(get_own_organization(&org))
        .await
        .expect("gRPC-Web call")
        .into_inner()
        .organization
        .unwrap();
    assert_eq!(own.id, org.id);
}

/// A CORS preflight from `origin`; returns the allowed origin, if any.
async fn preflight(app: &TestApp, origin: &str) -> Option<String> {
    let request = http::Request::builder()
        .method("OPTIONS")
        .uri(format!(
            "http://{}/connections.v1.OrganizationService/GetOrganization",
            app.addr
        ))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type,x-grpc-web",
        )
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = Client::builder(TokioExecutor::new())
        .build_http()
        .request(request)
        .await
        .unwrap();
    let allowed = response
        .headers()
        .get("access-control-allow-origin")
        .map(|v| v.to_str().unwrap().to_owned());
    let _ = response.into_body().collect().await;
    allowed
}

#[tokio::test]
async fn cors_allows_only_the_configured_origins() {
    let app = spawn_app_with(AppOptions {
        cors_allow_origins: vec!["https://dashboard.example".into()],
        ..AppOptions::default()
    })
    .await;
    assert_eq!(
        preflight(&app, "https://dashboard.example")
            .await
            .as_deref(),
        Some("https://dashboard.example")
    );
    assert_eq!(preflight(&app, "https://evil.example").await, None);

    let default = spawn_app().await;
    assert_eq!(preflight(&default, "https://dashboard.example").await, None);
}

/// A CA, a server certificate for localhost signed by it, and a client
/// certificate signed by it.
struct Pki {
    ca_pem: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca_pem: ca.pem(),
        server: leaf(vec!["localhost".into()]),
        client: leaf(vec!["partner-client".into()]),
    }
}

/// A server with `pki`'s certificate, requiring client certificates if
/// `mutual`.
fn tls_options(pki: &Pki, mutual: bool) -> AppOptions {
    AppOptions {
        tls: Some(Tls {
            cert_pem: pki.server.0.clone(),
            key_pem: pki.server.1.clone(),
            client_ca_pem: mutual.then(|| pki.ca_pem.clone()),
        }),
        ..AppOptions::default()
    }
}

async fn tls_app(pki: &Pki, mutual: bool) -> TestApp {
    spawn_app_with(tls_options(pki, mutual)).await
}

/// A TLS server closing connections that have not started a request
/// within `deadline`.
async fn tls_app_with_deadline(pki: &Pki, deadline: Duration) -> TestApp {
    spawn_app_with(AppOptions {
        handshake_timeout: deadline,
        ..tls_options(pki, false)
    })
    .await
}

/// A TLS channel trusting `ca_pem`, optionally presenting a client certificate.
async fn tls_channel(
    app: &TestApp,
    ca_pem: &str,
    client: Option<&(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = client {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://localhost:{}", app.addr.port()))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

async fn create_org_over(channel: Channel) -> Result<(), tonic::Status> {
    let mut admin = connections::proto::admin_service_client::AdminServiceClient::new(channel);
    let mut request = Request::new(connections::proto::CreateOrganizationRequest {
        display_name: "Over TLS".into(),
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", crate::support::ADMIN_TOKEN)
            .parse()
            .unwrap(),
    );
    admin.create_organization(request).await.map(|_| ())
}

#[tokio::test]
async fn with_tls_calls_succeed_over_tls_and_plaintext_is_refused() {
    let pki = pki();
    let app = tls_app(&pki, false).await;
    let channel = tls_channel(&app, &pki.ca_pem, None)
        .await
        .expect("TLS handshake");
    create_org_over(channel).await.expect("call over TLS");

    let plaintext = Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await;
    match plaintext {
        Err(_) => {}
        Ok(channel) => assert!(create_org_over(channel).await.is_err()),
    }
}

#[tokio::test]
async fn with_mutual_tls_a_client_without_the_right_certificate_is_refused() {
    let pki = pki();
    let other = self::pki();
    let app = tls_app(&pki, true).await;

    let with_cert = tls_channel(&app, &pki.ca_pem, Some(&pki.client))
        .await
        .expect("handshake with a client certificate");
    create_org_over(with_cert).await.expect("call with mTLS");

    for client in [None, Some(&other.client)] {
        let refused = match tls_channel(&app, &pki.ca_pem, client).await {
            Err(_) => true,
            Ok(channel) => create_org_over(channel).await.is_err(),
        };
        assert!(
            refused,
            "client certificate {:?} accepted",
            client.map(|_| "from another CA")
        );
    }
}

/// Whether the server closes `stream` (end of stream or an error) within
/// `limit`, reading and discarding whatever it sends before.
async fn closed_within(stream: &mut (impl tokio::io::AsyncRead + Unpin), limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0; 1024];
    tokio::time::timeout(limit, async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
    .is_ok()
}

/// `count` connections that send the first 40 bytes of a 512-byte TLS
/// ClientHello record, then nothing.
async fn stalled_tls_handshakes(app: &TestApp, count: usize) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    hello.resize(40, 0x2a);
    let mut stalled = Vec::with_capacity(count);
    for _ in 0..count {
        let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        stream.write_all(&hello).await.unwrap();
        stalled.push(stream);
    }
    stalled
}

#[tokio::test]
async fn stalled_tls_handshakes_are_closed_after_the_deadline_and_others_are_served() {
    let deadline = Duration::from_secs(2);
    let pki = pki();
    let app = tls_app_with_deadline(&pki, deadline).await;
    let opened = tokio::time::Instant::now();
    let mut stalled = stalled_tls_handshakes(&app, 100).await;
    // A complete handshake is served meanwhile.
    let channel = tls_channel(&app, &pki.ca_pem, None).await.unwrap();
    create_org_over(channel)
        .await
        .expect("served during the stalled handshakes");
    assert!(opened.elapsed() < deadline, "too slow to show anything");
    // Every stalled one is closed once the deadline has passed.
    for stream in &mut stalled {
        assert!(
            closed_within(stream, Duration::from_secs(10)).await,
            "a stalled handshake was never closed"
        );
    }
    assert!(opened.elapsed() >= deadline, "closed before the deadline");
}

/// A raw TLS connection to `app`, trusting `pki`'s CA and offering `alpn`.
async fn tls_connect(
    app: &TestApp,
    pki: &Pki,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use tokio_rustls::{
        TlsConnector,
        rustls::{
            ClientConfig, RootCertStore,
            crypto::ring::default_provider,
            pki_types::{CertificateDer, ServerName, pem::PemObject},
        },
    };
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut config = ClientConfig::builder_with_provider(default_provider().into())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let stream = TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("the handshake completes");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(alpn));
    stream
}

#[tokio::test]
async fn a_client_silent_after_its_tls_handshake_is_closed_at_the_deadline() {
    let deadline = Duration::from_secs(2);
    let pki = pki();
    let app = tls_app_with_deadline(&pki, deadline).await;
    let opened = tokio::time::Instant::now();
    let mut stream = tls_connect(&app, &pki, b"h2").await;

    // No HTTP/2 preface follows: the server closes the connection.
    assert!(
        closed_within(&mut stream, Duration::from_secs(10)).await,
        "a silent TLS connection was never closed"
    );
    assert!(opened.elapsed() >= deadline, "closed before the deadline");
    // Calls are still served.
    let channel = tls_channel(&app, &pki.ca_pem, None).await.unwrap();
    create_org_over(channel)
        .await
        .expect("served after the close");
}

#[tokio::test]
async fn with_tls_grpc_web_calls_work_over_http_1_1() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = pki();
    let app = tls_app(&pki, false).await;
    let mut stream = tls_connect(&app, &pki, b"http/1.1").await;
    // A health check (an empty message in one gRPC-Web frame).
    let request = "POST /grpc.health.v1.Health/Check HTTP/1.1\r\n\
                   Host: localhost\r\n\
                   Content-Type: application/grpc-web+proto\r\n\
                   X-Grpc-Web: 1\r\n\
                   Content-Length: 5\r\n\
                   Connection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(&[0; 5]).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("the response ends")
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("grpc-status:0"), "{response}");
}

#[tokio::test]
async fn with_tls_connections_over_the_limit_wait_until_stalled_and_silent_ones_are_closed() {
    let deadline = Duration::from_secs(2);
    let pki = pki();
    let app = spawn_app_with(AppOptions {
        handshake_timeout: deadline,
        max_client_connections: 10,
        // Every client here is on one address: only the overall limit counts.
        max_connections_per_peer: Some(0),
        ..tls_options(&pki, false)
    })
    .await;
    let opened = tokio::time::Instant::now();
    // Five stalled in their handshake and five silent after it hold the 10.
    let _stalled = stalled_tls_handshakes(&app, 5).await;
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(tls_connect(&app, &pki, b"h2").await);
    }
    // Ten new clients, each on a connection of its own kept open until all
    // are served: they need every slot back, and get them only once the
    // stalled and silent connections have been closed.
    let served = tokio::time::timeout(
        Duration::from_secs(10),
        futures::future::join_all((0..10).map(|_| async {
            let channel = tls_channel(&app, &pki.ca_pem, None).await.unwrap();
            create_org_over(channel.clone()).await.map(|()| channel)
        })),
    )
    .await;
    for served in served.expect("every slot was freed within 10 s") {
        served.expect("served once a slot was free");
    }
    assert!(
        opened.elapsed() >= deadline - Duration::from_millis(100),
        "a connection over the limit was served at once"
    );
}

#[tokio::test]
async fn a_stopping_server_ends_the_tls_handshakes_under_way() {
    let pki = pki();
    let app = tls_app_with_deadline(&pki, Duration::from_secs(60)).await;
    let mut stalled = stalled_tls_handshakes(&app, 3).await;
    // Accepted and waiting in their handshakes, then the server stops.
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.stop().await;
    for stream in &mut stalled {
        assert!(
            closed_within(stream, Duration::from_secs(5)).await,
            "a handshake outlived the server"
        );
    }
}

// Idle connections and the limit per address.

/// A TCP connection to `app` from the loopback address `source` (Linux
/// routes all of 127.0.0.0/8 to the loopback interface).
async fn connect_from(source: [u8; 4], app: &TestApp) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((source, 0).into()).unwrap();
    socket.connect(app.addr).await.unwrap()
}

/// A channel to `app` whose connections come from `source`, and the number
/// of connections it has opened.
fn channel_from(
    source: [u8; 4],
    app: &TestApp,
) -> (Channel, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::{Arc, atomic::AtomicUsize, atomic::Ordering};
    let opened = Arc::new(AtomicUsize::new(0));
    let addr = app.addr;
    let connector = tower::service_fn({
        let opened = opened.clone();
        move |_: http::Uri| {
            opened.fetch_add(1, Ordering::SeqCst);
            async move {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind((source, 0).into())?;
                let stream = socket.connect(addr).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }
    });
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector_lazy(connector);
    (channel, opened)
}

async fn health_check(channel: &Channel) -> Result<(), tonic::Status> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .map(|_| ())
}

const LOCALHOST: [u8; 4] = [127, 0, 0, 1];
const OTHER_HOST: [u8; 4] = [127, 0, 0, 2];

/// The HTTP/2 frames of a call of `grpc.health.v1.Health/{method}` on
/// stream `id`, its request (empty) sent in full.
fn health_call(app: &TestApp, method: &str, id: u32) -> Vec<u8> {
    use crate::support::http2::{self, DATA, END_HEADERS, END_STREAM, HEADERS};
    let path = format!("/grpc.health.v1.Health/{method}");
    let authority = app.addr.to_string();
    let block = http2::header_block(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", &path),
        (":authority", &authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]);
    let mut frames = http2::encode(HEADERS, END_HEADERS, id, &block);
    frames.extend(http2::encode(DATA, END_STREAM, id, &[0; 5]));
    frames
}

/// A server closing connections idle for `idle_timeout`.
async fn app_closing_idle_connections_after(idle_timeout: Duration) -> TestApp {
    spawn_app_with(AppOptions {
        idle_connection_timeout: idle_timeout,
        ..AppOptions::default()
    })
    .await
}

/// Whether `frames` hold a GOAWAY without error.
fn graceful_goaway(frames: &[crate::support::http2::Frame]) -> bool {
    use crate::support::http2::GOAWAY;
    frames
        .iter()
        .any(|frame| frame.kind == GOAWAY && frame.goaway_error() == 0)
}

#[tokio::test]
async fn idle_clients_are_sent_goaway_and_their_slots_are_free_again() {
    use crate::support::http2;
    let idle_timeout = Duration::from_secs(1);
    let app = spawn_app_with(AppOptions {
        max_client_connections: 4,
        max_connections_per_peer: Some(0),
        idle_connection_timeout: idle_timeout,
        ..AppOptions::default()
    })
    .await;
    // Four clients complete the HTTP/2 handshake, answer pings and never
    // call (the test's own channel holds a slot until it is idle too).
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(http2::handshake(app.addr).await.0);
    }
    let opened = tokio::time::Instant::now();
    let closed = tokio::time::timeout(
        Duration::from_secs(10),
        futures::future::join_all(idle.iter_mut().map(http2::frames_until_closed)),
    )
    .await
    .expect("idle clients are closed");
    for frames in &closed {
        assert!(graceful_goaway(frames), "closed without GOAWAY: {frames:?}");
    }
    assert!(opened.elapsed() >= idle_timeout - Duration::from_millis(100));
    // Every slot is free: four new clients get their handshake at once
    // (well before an idle timeout could free one), and a call is served.
    let fresh = tokio::time::timeout(
        idle_timeout / 2,
        futures::future::join_all((0..4).map(|_| http2::handshake(app.addr))),
    )
    .await
    .expect("four slots free");
    drop(fresh);
    let (channel, _) = channel_from(LOCALHOST, &app);
    health_check(&channel)
        .await
        .expect("a new client is served");
}

#[tokio::test]
async fn a_connection_with_a_stream_open_is_not_idle_and_is_once_the_stream_ends() {
    use crate::support::http2::{self, RST_STREAM};
    use tokio::io::AsyncWriteExt;
    let idle_timeout = Duration::from_secs(1);
    let app = app_closing_idle_connections_after(idle_timeout).await;
    let (mut stream, _) = http2::handshake(app.addr).await;
    // A health Watch: one message (SERVING), then the stream stays open.
    stream
        .write_all(&health_call(&app, "Watch", 1))
        .await
        .unwrap();
    // Three idle timeouts pass with the stream open: no GOAWAY.
    let (frames, closed) = http2::frames_within(&mut stream, idle_timeout * 3).await;
    assert!(!closed, "closed with a stream open: {frames:?}");
    assert!(
        frames.iter().all(|frame| frame.kind != http2::GOAWAY),
        "GOAWAY with a stream open: {frames:?}"
    );
    // The client ends the stream: the connection is idle from then on.
    let ended = tokio::time::Instant::now();
    stream
        .write_all(&http2::encode(RST_STREAM, 0, 1, &8u32.to_be_bytes()))
        .await
        .unwrap();
    let frames = tokio::time::timeout(idle_timeout * 5, http2::frames_until_closed(&mut stream))
        .await
        .expect("closed once idle");
    assert!(graceful_goaway(&frames), "{frames:?}");
    assert!(ended.elapsed() >= idle_timeout - Duration::from_millis(100));
}

#[tokio::test]
async fn a_client_whose_idle_connection_was_closed_reconnects_on_its_next_call() {
    use std::sync::atomic::Ordering;
    let idle_timeout = Duration::from_millis(500);
    let app = app_closing_idle_connections_after(idle_timeout).await;
    let (channel, opened) = channel_from(LOCALHOST, &app);
    health_check(&channel).await.expect("first call");
    tokio::time::sleep(idle_timeout * 3).await;
    health_check(&channel)
        .await
        .expect("the call after the idle close");
    assert_eq!(opened.load(Ordering::SeqCst), 2, "a new connection");
}

#[tokio::test]
async fn a_call_sent_while_the_server_closes_an_idle_connection_is_served() {
    use crate::support::http2::{self, DATA, END_STREAM, GOAWAY, HEADERS, PING, RST_STREAM};
    use tokio::io::AsyncWriteExt;
    let app = app_closing_idle_connections_after(Duration::from_millis(500)).await;
    let (mut stream, _) = http2::handshake(app.addr).await;
    // The server's first GOAWAY admits every stream, and it PINGs to learn
    // when the client has seen it. The client has not yet: it sends a call.
    let last_stream = |frame: &http2::Frame| {
        u32::from_be_bytes(frame.payload[..4].try_into().unwrap()) & 0x7fff_ffff
    };
    let first = crate::support::bounded("the first GOAWAY", async {
        loop {
            let frame = http2::read(&mut stream).await.expect("connection open");
            if frame.kind == GOAWAY {
                return frame;
            }
        }
    })
    .await;
    assert_eq!(
        (last_stream(&first), first.goaway_error()),
        (0x7fff_ffff, 0)
    );
    stream
        .write_all(&health_call(&app, "Check", 1))
        .await
        .unwrap();
    // Answering the PING now, the client gets the call's answer, then the
    // last GOAWAY (naming the call's stream as served), then the close.
    let frames =
        crate::support::bounded("the close", http2::frames_until_closed(&mut stream)).await;
    let on_stream_1: Vec<_> = frames.iter().filter(|f| f.stream == 1).collect();
    assert!(
        on_stream_1.iter().all(|f| f.kind != RST_STREAM),
        "{frames:?}"
    );
    // HealthCheckResponse { status: SERVING }, then the trailers.
    assert!(
        on_stream_1
            .iter()
            .any(|f| f.kind == DATA && f.payload == [0, 0, 0, 0, 2, 0x08, 0x01]),
        "{frames:?}"
    );
    assert!(
        on_stream_1
            .iter()
            .any(|f| f.kind == HEADERS && f.flags & END_STREAM != 0),
        "{frames:?}"
    );
    let last = frames
        .iter()
        .rfind(|f| f.kind == GOAWAY)
        .expect("a last GOAWAY");
    assert_eq!((last_stream(last), last.goaway_error()), (1, 0));
    assert!(frames.iter().any(|f| f.kind == PING), "{frames:?}");
}

#[tokio::test]
async fn an_idle_http_1_1_keep_alive_connection_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let idle_timeout = Duration::from_secs(1);
    let app = app_closing_idle_connections_after(idle_timeout).await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    // A gRPC-Web health check on a keep-alive connection.
    let request = format!(
        "POST /grpc.health.v1.Health/Check HTTP/1.1\r\n\
         Host: {}\r\n\
         Content-Type: application/grpc-web+proto\r\n\
         X-Grpc-Web: 1\r\n\
         Content-Length: 5\r\n\r\n",
        app.addr
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(&[0; 5]).await.unwrap();
    let mut response = vec![0; 1024];
    let n = stream.read(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response[..n]);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let answered = tokio::time::Instant::now();
    assert!(
        closed_within(&mut stream, Duration::from_secs(5)).await,
        "an idle keep-alive connection stayed open"
    );
    assert!(answered.elapsed() >= idle_timeout - Duration::from_millis(100));
}

#[tokio::test]
async fn one_address_cannot_take_more_than_its_limit_while_another_is_served() {
    use crate::support::http2;
    let app = spawn_app_with(AppOptions {
        max_client_connections: 4,
        max_connections_per_peer: Some(2),
        ..AppOptions::default()
    })
    .await;
    // The test's own channel is one of 127.0.0.1's two; a second is served.
    let (second, _) = http2::handshake_on(connect_from(LOCALHOST, &app).await).await;
    // Further ones from 127.0.0.1 are closed at once, long before the
    // handshake deadline, and never see the server's SETTINGS.
    for _ in 0..4 {
        let mut over = connect_from(LOCALHOST, &app).await;
        let started = tokio::time::Instant::now();
        let frames = tokio::time::timeout(
            Duration::from_secs(2),
            http2::frames_until_closed(&mut over),
        )
        .await
        .expect("closed at once");
        assert!(frames.is_empty(), "{frames:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    // Two clients from 127.0.0.2 are served meanwhile.
    for _ in 0..2 {
        let (channel, _) = channel_from(OTHER_HOST, &app);
        bounded_check(&channel).await;
    }
    // A connection from 127.0.0.1 that closes frees its place (once the
    // server has seen it close).
    drop(second);
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let (channel, _) = channel_from(LOCALHOST, &app);
            if health_check(&channel).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("127.0.0.1 is served again");
}

async fn bounded_check(channel: &Channel) {
    tokio::time::timeout(Duration::from_secs(5), health_check(channel))
        .await
        .expect("served within 5 s")
        .expect("served");
}
