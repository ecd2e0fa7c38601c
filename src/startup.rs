//! Server assembly, shared by `main` and the integration tests so the tests
//! exercise the production wiring.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr};
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig, server::TcpIncoming};
use tonic_health::ServingStatus;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::{
    background::{self, Activity},
    db::{self, DbSettings},
    grpc::{AdminApi, AdminToken, Authenticator, ConnectionApi, OrganizationApi},
    metrics::{self, Metrics, MetricsLayer},
    proto::{
        self, admin_service_server::AdminServiceServer,
        connection_service_server::ConnectionServiceServer,
        organization_service_server::OrganizationServiceServer,
    },
    service::{ApiKeys, Connections, Organizations, PageTokens, idempotency, secrets},
};

/// Largest request message accepted, in bytes. Every valid request is far smaller.
pub const MAX_DECODING_MESSAGE_SIZE: usize = 64 * 1024;
/// Largest response message sent, in bytes (a page of 500 connections fits).
pub const MAX_ENCODING_MESSAGE_SIZE: usize = 4 * 1024 * 1024;
/// Largest header list (metadata) accepted per request, in bytes.
pub const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
/// Concurrent calls allowed on one HTTP/2 connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;
/// Calls running longer than this fail with CANCELLED (server-side deadline).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What the server needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address to bind; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Database to use.
    pub database: DbSettings,
    /// AdminService token; `None` refuses every admin call.
    pub admin_token: Option<SecretString>,
    /// How often the database is probed for the health service.
    pub health_check_interval: Duration,
    /// How long request_id records are kept (SPEC: at least 24 hours).
    pub request_id_retention: Duration,
    /// How often expired request_id records are deleted.
    pub request_id_sweep_interval: Duration,
    /// Origins allowed to call over gRPC-Web from a browser.
    pub cors_allow_origins: Vec<String>,
    /// Serve TLS (and optionally require client certificates).
    pub tls: Option<TlsSettings>,
    /// Serve Prometheus metrics on this address.
    pub metrics_listen: Option<SocketAddr>,
}

/// PEM-encoded TLS material.
#[derive(Clone)]
pub struct TlsSettings {
    /// The server's certificate chain.
    pub cert_pem: Vec<u8>,
    /// The server's private key.
    pub key_pem: Vec<u8>,
    /// CA certificate(s) that client certificates must chain to (mutual TLS).
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("mutual", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl TlsSettings {
    fn server_config(&self) -> ServerTlsConfig {
        let config =
            ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem));
        match &self.client_ca_pem {
            Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
            None => config,
        }
    }
}

/// Headers a browser may send and read in gRPC-Web calls.
const GRPC_WEB_REQUEST_HEADERS: [&str; 5] = [
    "authorization",
    "content-type",
    "grpc-timeout",
    "x-grpc-web",
    "x-user-agent",
];
const GRPC_WEB_RESPONSE_HEADERS: [&str; 3] =
    ["grpc-status", "grpc-message", "grpc-status-details-bin"];

/// CORS for gRPC-Web: only the configured origins get CORS headers.
fn cors_layer(origins: &[String]) -> Result<CorsLayer, StartupError> {
    let origins = origins
        .iter()
        .map(|origin| {
            origin
                .parse()
                .map_err(|_| StartupError::InvalidOrigin(origin.clone()))
        })
        .collect::<Result<Vec<http::HeaderValue>, _>>()?;
    Ok(CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([http::Method::POST, http::Method::OPTIONS])
        .allow_headers(GRPC_WEB_REQUEST_HEADERS.map(http::HeaderName::from_static))
        .expose_headers(GRPC_WEB_RESPONSE_HEADERS.map(http::HeaderName::from_static))
        .max_age(Duration::from_secs(24 * 60 * 60)))
}

impl Settings {
    /// Production settings for `listen` and `database`.
    pub fn new(listen: SocketAddr, database: DbSettings) -> Self {
        Self {
            listen,
            database,
            admin_token: None,
            health_check_interval: Duration::from_secs(1),
            request_id_retention: idempotency::RETENTION,
            request_id_sweep_interval: Duration::from_secs(10 * 60),
            cors_allow_origins: Vec::new(),
            tls: None,
            metrics_listen: None,
        }
    }
}

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Connecting to, or migrating, the database failed.
    #[error("database: {0}")]
    Database(#[from] DbErr),
    /// Binding the listen address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Building the reflection service failed.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// A CORS origin is not a valid header value.
    #[error("invalid CORS origin {0:?}")]
    InvalidOrigin(String),
    /// The TLS certificate, key or client CA cannot be used.
    #[error("TLS: {0}")]
    Tls(String),
}

/// A server bound to its port, ready to run.
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    db: DatabaseConnection,
    /// Reads outside transactions.
    reader: db::Reader,
    tokens: PageTokens,
    admin_token: AdminToken,
    health_check_interval: Duration,
    request_id_retention: Duration,
    request_id_sweep_interval: Duration,
    cors: CorsLayer,
    tls: Option<ServerTlsConfig>,
    tls_mode: &'static str,
    metrics_listener: Option<TcpListener>,
    /// A pool of its own for health probes, so a busy request pool does not
    /// make the server report NOT_SERVING.
    health_db: DatabaseConnection,
    /// What the request_id sweeper has done.
    sweeper: Arc<Activity>,
}

/// Connects to the database and applies pending migrations (see [`migrate`]).
pub async fn connect_and_migrate(settings: &DbSettings) -> Result<DatabaseConnection, DbErr> {
    let db = db::connect(settings).await?;
    migrate(&db).await?;
    Ok(db)
}

/// The PostgreSQL advisory lock held while migrating ("cnx-migr" in ASCII).
const MIGRATION_LOCK: i64 = 0x636e_782d_6d69_6772;

/// Applies pending migrations in one write transaction, so that replicas
/// started together take turns: on PostgreSQL the transaction first takes an
/// advisory lock (released when it ends, or when its session dies), on SQLite
/// it holds the write lock from the start. The first replica applies every
/// pending migration, or none if one fails; the others then find nothing left
/// to do.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    let txn = db::begin_write(db).await?;
    if db.get_database_backend() == DbBackend::Postgres {
        txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
            .await?;
    }
    Migrator::up(&*txn, None).await?;
    txn.commit().await
}

impl Application {
    /// Connects, migrates and binds the listen address.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let cors = cors_layer(&settings.cors_allow_origins)?;
        let tls = settings.tls.as_ref().map(TlsSettings::server_config);
        let tls_mode = match &settings.tls {
            None => "off",
            Some(tls) if tls.client_ca_pem.is_some() => "mutual",
            Some(_) => "on",
        };
        if let Some(tls) = &tls {
            // Fails here, before anything starts, on unusable PEM files.
            Server::builder()
                .tls_config(tls.clone())
                .map_err(|err| StartupError::Tls(error_chain(&err)))?;
        }
        let db = connect_and_migrate(&settings.database).await?;
        let reader = db::Reader::new(&db, &settings.database)?;
        let health_db = db::connect(&DbSettings {
            max_connections: 1,
            ..settings.database.clone()
        })
        .await?;
        let tokens = PageTokens::new(secrets::shared_key(&db, PageTokens::SECRET_NAME).await?);
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| StartupError::Bind {
                    addr: settings.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| StartupError::Bind {
            addr: settings.listen,
            source,
        })?;
        let metrics_listener = match settings.metrics_listen {
            Some(addr) => Some(
                metrics::bind(addr)
                    .await
                    .map_err(|source| StartupError::Bind { addr, source })?,
            ),
            None => None,
        };
        Ok(Self {
            listener,
            local_addr,
            db,
            reader,
            tokens,
            admin_token: AdminToken::new(settings.admin_token.as_ref()),
            health_check_interval: settings.health_check_interval,
            request_id_retention: settings.request_id_retention,
            request_id_sweep_interval: settings.request_id_sweep_interval,
            cors,
            tls,
            tls_mode,
            metrics_listener,
            health_db,
            sweeper: Arc::default(),
        })
    }

    /// What the request_id sweeper has done (shared with it, not a copy).
    pub fn request_id_sweeper(&self) -> Arc<Activity> {
        self.sweeper.clone()
    }

    /// The bound address (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound metrics address, if metrics are enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// The pool the health probes use (shared with the server, not a copy).
    pub fn health_database(&self) -> DatabaseConnection {
        self.health_db.clone()
    }

    /// The server's database pool (shared with the server, not a copy).
    pub fn database(&self) -> DatabaseConnection {
        self.db.clone()
    }

    /// Where the server reads outside transactions (shared, not a copy).
    pub fn reader(&self) -> db::Reader {
        self.reader.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting calls, lets the
    /// calls in flight finish, and closes the database pool.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), StartupError> {
        let Self {
            listener,
            local_addr,
            db,
            reader,
            tokens,
            admin_token,
            health_check_interval,
            request_id_retention,
            request_id_sweep_interval,
            cors,
            tls,
            tls_mode,
            metrics_listener,
            health_db,
            sweeper,
        } = self;

        let keys = ApiKeys::new(db.clone(), reader.clone());
        let auth = Authenticator::new(keys.clone());
        let connections = Connections::new(db.clone(), reader.clone(), tokens.clone());
        let replays = connections.replays().clone();
        let organizations = Organizations::new(db.clone(), reader.clone(), tokens);

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        // The google.rpc types are included so tools can decode error details.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;

        let connection_service =
            ConnectionServiceServer::new(ConnectionApi::new(auth.clone(), connections))
                .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_ENCODING_MESSAGE_SIZE);
        let organization_service =
            OrganizationServiceServer::new(OrganizationApi::new(auth, organizations.clone()))
                .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_ENCODING_MESSAGE_SIZE);
        let admin_service =
            AdminServiceServer::new(AdminApi::new(admin_token.clone(), organizations, keys))
                .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_ENCODING_MESSAGE_SIZE);

        // Report real health before the first call can ask for it.
        background::set_all(
            &health_reporter,
            background::serving_status(background::probe(&health_db, health_check_interval).await),
        )
        .await;
        let stop_background = CancellationToken::new();
        let metrics = metrics_listener
            .as_ref()
            .map(|_| Arc::new(Metrics::new(db.clone(), reader.clone(), &replays)));
        let mut background = vec![
            tokio::spawn(background::monitor_database(
                health_db.clone(),
                health_reporter.clone(),
                health_check_interval,
                stop_background.clone(),
            )),
            tokio::spawn(background::sweep_request_ids(
                db.clone(),
                request_id_retention,
                request_id_sweep_interval,
                sweeper,
                stop_background.clone(),
            )),
        ];
        if let (Some(listener), Some(metrics)) = (metrics_listener, metrics.clone()) {
            let stop = stop_background.clone();
            background.push(tokio::spawn(async move {
                if let Err(err) = metrics::serve(listener, metrics, stop).await {
                    tracing::error!(error = %err, "metrics endpoint failed");
                }
            }));
        }

        let mut server = Server::builder();
        if let Some(tls) = tls {
            server = server.tls_config(tls)?;
        }
        let router = server
            // HTTP/1.1 is accepted for gRPC-Web; plain gRPC needs HTTP/2.
            .accept_http1(true)
            .layer(cors)
            .layer(MetricsLayer::new(metrics))
            .layer(tonic_web::GrpcWebLayer::new())
            .timeout(REQUEST_TIMEOUT)
            .http2_max_header_list_size(MAX_HEADER_LIST_SIZE)
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .http2_keepalive_interval(Some(Duration::from_secs(60)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .trace_fn(|request| tracing::info_span!("grpc", method = %request.uri().path(), caller = tracing::field::Empty))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(connection_service)
            .add_service(organization_service)
            .add_service(admin_service);

        tracing::info!(
            %local_addr,
            database = db::backend_name(&db),
            tls = tls_mode,
            admin_service = if admin_token.is_configured() { "enabled" } else { "disabled" },
            "serving gRPC"
        );
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let reporter = health_reporter.clone();
        let result = router
            .serve_with_incoming_shutdown(incoming, async move {
                shutdown.await;
                tracing::info!("shutting down: finishing calls in flight");
                background::set_all(&reporter, ServingStatus::NotServing).await;
            })
            .await;

        stop_background.cancel();
        for task in background {
            let _ = task.await;
        }
        reader.close().await;
        db.close().await?;
        health_db.close().await?;
        tracing::info!("stopped");
        result.map_err(Into::into)
    }
}

/// An error and its sources, for messages.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// A future that completes on SIGINT or SIGTERM. The handlers are installed
/// now, so a signal that arrives while the server is still starting (e.g.
/// migrating) also leads to a clean stop instead of killing the process.
#[cfg(unix)]
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("received SIGINT"),
            _ = terminate.recv() => tracing::info!("received SIGTERM"),
        }
    })
}

/// A future that completes on Ctrl-C.
#[cfg(not(unix))]
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("received Ctrl-C");
    })
}
