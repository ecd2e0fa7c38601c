//! The gRPC server: every service registered in one place ([`register`]), and
//! the transport they are served on ([`Transport`]: TLS, CORS for gRPC-Web,
//! HTTP/2 settings, limits, deadlines).

use std::{path::Path, sync::Arc, time::Duration};

use hyper_util::{
    rt::{TokioExecutor, TokioTimer},
    server::conn::auto,
};
use tokio::net::TcpListener;
use tokio_rustls::rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio_util::sync::CancellationToken;
use tonic::{
    server::NamedService,
    service::{RecoverErrorLayer, Routes},
};
use tonic_health::server::HealthReporter;
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::{
    AccessApi, AdminApi, AdminToken, Authenticator, ConnectionApi, OrganizationApi, WebhookApi,
    call::{AccessLog, CallLayer},
    deadline::Deadline,
    drain::EndStreamsLayer,
    incoming::{self, AcceptLimits},
    limits::LimitsLayer,
    serve,
};
use crate::{
    config::{Settings, TlsSettings},
    metrics::{Metrics, MetricsLayer},
    proto::{
        self, access_service_server::AccessServiceServer, admin_service_server::AdminServiceServer,
        connection_service_server::ConnectionServiceServer,
        organization_service_server::OrganizationServiceServer,
        webhook_service_server::WebhookServiceServer,
    },
    service::{Access, ApiKeys, AuditLog, Connections, Organizations, Watches, Webhooks},
};

/// Largest request message accepted, in bytes (by every service but
/// AccessService, see below). Every valid request is far smaller.
pub const MAX_DECODING_MESSAGE_SIZE: usize = 64 * 1024;
/// Largest request message AccessService accepts, in bytes: a
/// BatchCheckAccess of 1,000 checks (`validate::MAX_BATCH_CHECKS`) takes up
/// to 82 KB, and one over that bound reaches validation (INVALID_ARGUMENT).
pub const MAX_ACCESS_DECODING_MESSAGE_SIZE: usize = 128 * 1024;
/// Largest response message sent, in bytes (a page of 500 connections fits).
pub const MAX_ENCODING_MESSAGE_SIZE: usize = 4 * 1024 * 1024;
pub use super::limits::MAX_HEADER_LIST_SIZE;
/// Concurrent calls allowed on one HTTP/2 connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;
/// Calls running longer than this fail with CANCELLED (server-side deadline).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The business layers behind the gRPC services.
#[derive(Debug, Clone)]
pub struct Services {
    /// Connections: ConnectionService.
    pub connections: Connections,
    /// Watches: ConnectionService's WatchConnectionEvents.
    pub watches: Watches,
    /// Organizations: OrganizationService and AdminService.
    pub organizations: Organizations,
    /// API keys: AdminService, and every caller's authentication.
    pub api_keys: ApiKeys,
    /// AdminService's credential (it may call AccessService too).
    pub admin_token: AdminToken,
    /// Access checks: AccessService.
    pub access: Access,
    /// The credential that may call AccessService only.
    pub access_check_token: AdminToken,
    /// The audit log: AdminService.
    pub audit: AuditLog,
    /// Webhook endpoints: WebhookService.
    pub webhooks: Webhooks,
}

/// The services whose health is reported. The whole server ("") comes last,
/// so once it reports a status, every service reports the same.
pub const HEALTH_SERVICES: [&str; 6] = [
    <ConnectionServiceServer<ConnectionApi> as NamedService>::NAME,
    <OrganizationServiceServer<OrganizationApi> as NamedService>::NAME,
    <AdminServiceServer<AdminApi> as NamedService>::NAME,
    <AccessServiceServer<AccessApi> as NamedService>::NAME,
    <WebhookServiceServer<WebhookApi> as NamedService>::NAME,
    "",
];

/// The encoded descriptors of every service [`register`] serves.
const DESCRIPTOR_SETS: [&[u8]; 4] = [
    proto::FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
];

/// The request path of every method the server serves
/// (`/package.Service/Method`), read from the services' descriptors.
pub fn served_methods() -> Vec<String> {
    use prost::Message;
    let mut methods = Vec::new();
    for encoded in DESCRIPTOR_SETS {
        let set = prost_types::FileDescriptorSet::decode(encoded)
            .expect("compiled-in descriptor sets decode");
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    methods.push(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
    }
    methods
}

/// Every service the server offers: the API, health and reflection (v1 and
/// v1alpha, with the google.rpc types so tools can decode error details),
/// and, with `dashboard`, the dashboard's page at `/`; each call gets a
/// request ID, and with `access_log`, a line there. Their streams end once
/// `stopping` is cancelled (see [`EndStreamsLayer`]). Returns them with the
/// reporter that sets their health.
pub fn register(
    services: Services,
    dashboard: bool,
    access_log: Option<AccessLog>,
    stopping: &CancellationToken,
) -> Result<(Routes, HealthReporter), tonic_reflection::server::Error> {
    let Services {
        connections,
        watches,
        organizations,
        api_keys,
        admin_token,
        access,
        access_check_token,
        audit,
        webhooks,
    } = services;
    let auth = Authenticator::new(api_keys.clone()).recognizing(admin_token.clone());
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    let routes = Routes::new(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(
            ConnectionServiceServer::new(ConnectionApi::new(auth.clone(), connections, watches))
                .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_ENCODING_MESSAGE_SIZE),
        )
        .add_service(
            OrganizationServiceServer::new(OrganizationApi::new(
                auth.clone(),
                organizations.clone(),
            ))
            .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_ENCODING_MESSAGE_SIZE),
        )
        .add_service(
            AccessServiceServer::new(AccessApi::new(
                auth.clone(),
                admin_token.clone(),
                access_check_token,
                access,
            ))
            .max_decoding_message_size(MAX_ACCESS_DECODING_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_ENCODING_MESSAGE_SIZE),
        )
        .add_service(
            WebhookServiceServer::new(WebhookApi::new(auth.clone(), webhooks))
                .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_ENCODING_MESSAGE_SIZE),
        )
        .add_service(
            AdminServiceServer::new(AdminApi::new(admin_token, organizations, api_keys, audit))
                .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_ENCODING_MESSAGE_SIZE),
        );
    // gRPC-Web is translated for the services only: it answers any other
    // HTTP/1.1 request with 400, so the page's routes are merged after it.
    // Streams are ended inside the translation, so that a gRPC-Web stream
    // gets the stop's trailers in its body as every other stream does.
    // Each call's request ID, credential and access log line are taken
    // inside the translation too, where every call is gRPC.
    let grpc = routes
        .into_axum_router()
        .layer(EndStreamsLayer::new(stopping.clone()))
        .layer(CallLayer::new(access_log))
        .layer(tonic_web::GrpcWebLayer::new());
    let routes = if dashboard {
        grpc.merge(crate::dashboard::router())
    } else {
        grpc
    };
    Ok((Routes::from(routes), health_reporter))
}

/// Why the transport settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A CORS origin is not a valid header value.
    #[error("invalid CORS origin {0:?}")]
    InvalidOrigin(String),
    /// A TLS file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The TLS certificate, key or client CA cannot be used.
    #[error("TLS: {0}")]
    Tls(String),
}

/// How the server is reached: TLS (or not) and CORS, checked before anything
/// starts.
#[derive(Debug, Clone)]
pub struct Transport {
    tls: Option<Arc<ServerConfig>>,
    mutual_tls: bool,
    cors: CorsLayer,
    accept: AcceptLimits,
    /// How long a connection may have no call in flight before it is closed.
    idle_timeout: Duration,
    /// HTTP/2 keepalive: ping interval and how long a ping may go unanswered.
    keepalive: (Duration, Duration),
}

impl Transport {
    /// Reads and checks the TLS files and the CORS origins of `settings`.
    pub fn new(settings: &Settings) -> Result<Self, TransportError> {
        let cors = cors_layer(&settings.cors_allow_origins)?;
        // Fails here, before anything starts, on unusable PEM files.
        let tls = tls_config(&settings.tls)?;
        Ok(Self {
            tls,
            mutual_tls: settings.tls.client_ca.is_some(),
            cors,
            accept: AcceptLimits {
                max_open: settings.max_client_connections,
                per_peer: settings.connections_per_peer(),
                handshake_timeout: settings.handshake_timeout,
            },
            idle_timeout: settings.idle_connection_timeout,
            keepalive: (
                settings.http2_keepalive_interval,
                settings.http2_keepalive_timeout,
            ),
        })
    }

    /// "off", "on" or "mutual", for logs.
    pub fn tls_mode(&self) -> &'static str {
        match (&self.tls, self.mutual_tls) {
            (None, _) => "off",
            (Some(_), false) => "on",
            (Some(_), true) => "mutual",
        }
    }

    /// Serves `routes` on `listener` (see [`incoming`] for the connection
    /// limits and handshake deadline, [`serve`](super::serve) for closing
    /// idle connections), recording calls in `metrics`, until `stopping` is
    /// cancelled; then stops accepting calls, ends open streams
    /// (UNAVAILABLE, see [`drain`](super::drain)) and lets the calls in
    /// flight finish.
    pub async fn serve(
        self,
        routes: Routes,
        metrics: Option<Arc<Metrics>>,
        listener: TcpListener,
        stopping: CancellationToken,
    ) {
        let service = tower::ServiceBuilder::new()
            // An error a layer returns (e.g. the deadline) becomes a status.
            .layer(RecoverErrorLayer::new())
            .layer_fn(|inner| Deadline::new(inner, REQUEST_TIMEOUT))
            .layer(self.cors)
            .layer(MetricsLayer::new(metrics))
            .layer(LimitsLayer)
            .service(routes.prepare());
        let http = http_builder(self.keepalive);
        let (limits, idle) = (self.accept, self.idle_timeout);
        match self.tls {
            None => {
                let incoming = incoming::accept(listener, limits);
                serve::serve(incoming, service, http, idle, stopping).await;
            }
            Some(config) => {
                let incoming = incoming::accept_tls(listener, limits, config);
                serve::serve(incoming, service, http, idle, stopping).await;
            }
        }
    }
}

/// HTTP/2, and HTTP/1.1 for gRPC-Web: the limits on streams and headers,
/// and keepalive pings (`keepalive`: interval, and how long one may go
/// unanswered). HTTP/1.1 request headers must arrive within hyper's 30 s.
fn http_builder(keepalive: (Duration, Duration)) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .keep_alive_interval(keepalive.0)
        .keep_alive_timeout(keepalive.1);
    // hyper enforces its HTTP/1.1 header timeout only with a timer.
    builder.http1().timer(TokioTimer::new());
    builder
}

/// The server's TLS configuration, read from the PEM files of `settings`:
/// its certificate chain and key, and with a client CA, mutual TLS (every
/// client must present a certificate that CA issued). ALPN offers HTTP/2,
/// then HTTP/1.1 (for gRPC-Web).
fn tls_config(settings: &TlsSettings) -> Result<Option<Arc<ServerConfig>>, TransportError> {
    let (Some(cert), Some(key)) = (&settings.cert, &settings.key) else {
        return Ok(None);
    };
    let invalid =
        |what: String, err: &dyn std::fmt::Display| TransportError::Tls(format!("{what}: {err}"));
    let file = |role: &str, path: &Path| format!("the {role} file {}", path.display());
    let chain = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| invalid(file("certificate", cert), &err))?;
    if chain.is_empty() {
        return Err(invalid(file("certificate", cert), &"no CERTIFICATE block"));
    }
    let private_key = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|err| invalid(file("key", key), &err))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| invalid("the TLS versions".to_owned(), &err))?;
    let builder = match &settings.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            // Every certificate in the file must be usable.
            let mut roots = RootCertStore::empty();
            for certificate in CertificateDer::pem_slice_iter(&read(ca)?) {
                let certificate =
                    certificate.map_err(|err| invalid(file("client CA", ca), &err))?;
                roots
                    .add(certificate)
                    .map_err(|err| invalid(file("client CA", ca), &err))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|err| invalid(file("client CA", ca), &err))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, private_key)
        .map_err(|err| {
            let files = format!(
                "the certificate and key files {} and {}",
                cert.display(),
                key.display()
            );
            invalid(files, &err)
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

fn read(path: &Path) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path).map_err(|source| TransportError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Headers a browser may send and read in gRPC-Web calls.
const GRPC_WEB_REQUEST_HEADERS: [&str; 6] = [
    "authorization",
    "content-type",
    "grpc-timeout",
    "x-grpc-web",
    "x-request-id",
    "x-user-agent",
];
const GRPC_WEB_RESPONSE_HEADERS: [&str; 4] = [
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "x-request-id",
];

/// CORS for gRPC-Web: only the configured origins get CORS headers.
fn cors_layer(origins: &[String]) -> Result<CorsLayer, TransportError> {
    let origins = origins
        .iter()
        .map(|origin| match origin.as_str() {
            // `AllowOrigin::list` would panic on a wildcard.
            "*" => Err(TransportError::InvalidOrigin(origin.clone())),
            _ => origin
                .parse()
                .map_err(|_| TransportError::InvalidOrigin(origin.clone())),
        })
        .collect::<Result<Vec<http::HeaderValue>, _>>()?;
    Ok(CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([http::Method::POST, http::Method::OPTIONS])
        .allow_headers(GRPC_WEB_REQUEST_HEADERS.map(http::HeaderName::from_static))
        .expose_headers(GRPC_WEB_RESPONSE_HEADERS.map(http::HeaderName::from_static))
        .max_age(Duration::from_secs(24 * 60 * 60)))
}

#[cfg(test)]
mod tests {
    use rcgen::{CertifiedKey, generate_simple_self_signed};

    use super::*;

    /// Writes `files` into a new directory and returns their paths.
    fn write(files: &[(&str, &str)]) -> Vec<std::path::PathBuf> {
        let dir = std::env::temp_dir().join(format!("tls-config-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        files
            .iter()
            .map(|(name, text)| {
                let path = dir.join(name);
                std::fs::write(&path, text).unwrap();
                path
            })
            .collect()
    }

    fn settings(cert: &Path, key: &Path, client_ca: Option<&Path>) -> TlsSettings {
        TlsSettings {
            cert: Some(cert.to_owned()),
            key: Some(key.to_owned()),
            client_ca: client_ca.map(Path::to_owned),
        }
    }

    #[test]
    fn usable_pem_files_give_a_configuration_offering_http2_then_http1() {
        let CertifiedKey { cert, signing_key } =
            generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let paths = write(&[
            ("cert.pem", &cert.pem()),
            ("key.pem", &signing_key.serialize_pem()),
        ]);
        for client_ca in [None, Some(paths[0].as_path())] {
            let config = tls_config(&settings(&paths[0], &paths[1], client_ca))
                .unwrap()
                .expect("TLS is configured");
            assert_eq!(config.alpn_protocols, [&b"h2"[..], &b"http/1.1"[..]]);
        }
        let none = TlsSettings {
            cert: None,
            key: None,
            client_ca: None,
        };
        assert!(tls_config(&none).unwrap().is_none());
        std::fs::remove_dir_all(paths[0].parent().unwrap()).unwrap();
    }

    #[test]
    fn unusable_pem_files_are_refused_before_the_server_starts() {
        let CertifiedKey { cert, signing_key } =
            generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let other = generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let paths = write(&[
            ("cert.pem", &cert.pem()),
            ("key.pem", &signing_key.serialize_pem()),
            ("other-key.pem", &other.signing_key.serialize_pem()),
            ("garbage.pem", "not a PEM file"),
        ]);
        let (cert, key, other_key, garbage) = (&paths[0], &paths[1], &paths[2], &paths[3]);
        let missing = cert.with_file_name("missing.pem");
        let cases = [
            (settings(&missing, key, None), "cannot read"),
            (settings(garbage, key, None), "the certificate file"),
            (settings(cert, garbage, None), "the key file"),
            (
                settings(cert, other_key, None),
                "the certificate and key files",
            ),
            (settings(cert, key, Some(garbage)), "the client CA file"),
        ];
        for (settings, expected) in cases {
            let err = tls_config(&settings).expect_err(expected).to_string();
            assert!(err.contains(expected), "{err:?} does not say {expected:?}");
            assert!(err.contains(".pem"), "{err:?} does not name the file");
        }
        std::fs::remove_dir_all(paths[0].parent().unwrap()).unwrap();
    }
}
