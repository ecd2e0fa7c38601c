//! The server under test: the production wiring (`Application`) on
//! `127.0.0.1:0`, on a database of its own. `spawn_app()` is the way in.
//!
//! This is the one place the tests build a server; everything else goes
//! through [`spawn_app`], [`spawn_app_with`] or [`spawn_replicas`].

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, LazyLock},
    time::Duration,
};

use connections::{
    background::Activity,
    config::{
        BackgroundSettings, DatabaseSettings, LogFormat, Settings, TlsSettings, WebhookOptions,
    },
    db::Reader,
    domain::{Action, webhook::RetrySchedule},
    proto::{
        self, CreateConnectionRequest, admin_service_client::AdminServiceClient,
        connection_service_client::ConnectionServiceClient,
        organization_service_client::OrganizationServiceClient,
        webhook_service_client::WebhookServiceClient,
    },
    service::ApiKeys,
    startup::{Application, StartupError},
    telemetry,
};
use sea_orm::DatabaseConnection;
use secrecy::SecretString;
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{Status, transport::Channel};

use super::{
    clients::{
        ADMIN_TOKEN, Admin, Asked, Bearer, Connections, Organizations, TestOrg, Webhooks,
        connections_on, new_key_on, new_org_on, take,
    },
    database::{TestDatabase, with_address},
};

static TRACING: LazyLock<()> = LazyLock::new(|| {
    if std::env::var_os("TEST_LOG").is_some() {
        telemetry::init_subscriber(telemetry::get_subscriber(
            LogFormat::Pretty,
            "info",
            std::io::stdout,
        ));
    }
});

/// PEM-encoded TLS material for a test server.
pub struct Tls {
    /// The server's certificate chain.
    pub cert_pem: String,
    /// The server's private key.
    pub key_pem: String,
    /// Require client certificates that chain to this CA (mutual TLS).
    pub client_ca_pem: Option<String>,
}

impl Tls {
    /// The PEM files written to a directory of their own, removed when the
    /// returned guard is dropped, and the server settings naming them.
    fn write(&self) -> (TlsFiles, TlsSettings) {
        let dir = std::env::temp_dir().join(format!("connections-tls-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("TLS directory");
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("TLS file");
            path
        };
        let settings = TlsSettings {
            cert: Some(write("cert.pem", &self.cert_pem)),
            key: Some(write("key.pem", &self.key_pem)),
            client_ca: self
                .client_ca_pem
                .as_deref()
                .map(|pem| write("client-ca.pem", pem)),
        };
        (TlsFiles(dir), settings)
    }
}

/// A directory of TLS files, removed on drop.
struct TlsFiles(PathBuf);

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The server's database settings for `url`, with a pool of
/// `max_connections`.
pub fn db_settings(url: &str, max_connections: u32) -> DatabaseSettings {
    DatabaseSettings {
        url: url.to_owned(),
        max_connections,
    }
}

/// A running server and what the tests need to talk to it.
pub struct TestApp {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub channel: Channel,
    /// The server's own pool: closing it simulates a database outage.
    pub server_db: DatabaseConnection,
    /// The pool of the server's health probes.
    pub server_health_db: DatabaseConnection,
    /// Where the server reads outside transactions (on PostgreSQL, a pool of
    /// its own).
    pub server_reader: Reader,
    /// What the server's request_id sweeper has done.
    pub sweeper: Arc<Activity>,
    /// The server's API keys layer (its lookup counter).
    pub api_keys: ApiKeys,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), StartupError>>>,
    /// The URL of the server's database, to reach it from the test.
    pub database_url: String,
    database: Arc<TestDatabase>,
    _tls_files: Option<TlsFiles>,
}

/// Options for [`spawn_app_with`].
pub struct AppOptions {
    pub admin_token: Option<&'static str>,
    /// The token that may call CheckAccess only.
    pub access_check_token: Option<&'static str>,
    pub request_id_retention: Duration,
    pub request_id_sweep_interval: Duration,
    /// Use SQLite even when `TEST_DATABASE_URL` is set.
    pub sqlite: bool,
    /// A database on this PostgreSQL server (its admin URL) instead.
    pub postgres_server: Option<String>,
    /// Server pool size.
    pub max_connections: u32,
    /// Reach PostgreSQL through this address (e.g. a fault-injecting proxy).
    pub database_address: Option<SocketAddr>,
    pub cors_allow_origins: Vec<String>,
    /// Serve TLS; the test then builds its own channel.
    pub tls: Option<Tls>,
    /// Serve metrics on a free port (see `TestApp::metrics_addr`).
    pub metrics: bool,
    /// How long the metrics reuse a count of connections by state.
    pub connection_count_interval: Duration,
    /// How long a new client connection may take to start its first request.
    pub handshake_timeout: Duration,
    /// Most client connections open at once.
    pub max_client_connections: u32,
    /// Most client connections open at once from one address (`Some(0)`:
    /// no limit; `None`: the default share of `max_client_connections`).
    pub max_connections_per_peer: Option<u32>,
    /// How long a client connection may have no call in flight.
    pub idle_connection_timeout: Duration,
    /// HTTP/2 keepalive: ping interval and how long a ping may go unanswered.
    pub http2_keepalive: (Duration, Duration),
    /// Most WatchConnectionEvents streams per organization.
    pub watch_streams_per_organization: u32,
    /// Longest time between two messages of a watch.
    pub watch_heartbeat_interval: Duration,
    /// A watch whose client leaves a message unread this long ends.
    pub watch_unread_timeout: Duration,
    /// Change log batches a watch may fall behind.
    pub watch_buffer: u32,
    /// How often the change log is read for other replicas' changes.
    pub change_feed_poll_interval: Duration,
    /// How long a connection may stay PENDING (zero: for ever).
    pub pending_expiry: Duration,
    /// How often connections past their expire time are expired.
    pub expiry_sweep_interval: Duration,
    /// Webhooks: private addresses allowed (receivers are on 127.0.0.1),
    /// retries within a second and the tests' key file, unless a test says
    /// otherwise.
    pub webhooks: WebhookOptions,
}

/// A webhook key file every test server may share (the same key each
/// time, so that replicas of one database agree).
fn test_webhook_key_file() -> PathBuf {
    static FILE: LazyLock<PathBuf> = LazyLock::new(|| {
        let path = std::env::temp_dir().join("connections-test.webhook-key");
        // Written beside it, then renamed: test processes running at once
        // never read half a file.
        let written = path.with_extension(format!("webhook-key.{}", std::process::id()));
        std::fs::write(&written, "dGhlIHRlc3RzIHdlYmhvb2sga2V5LCAzMiBieXRlcyE=\n")
            .expect("write the tests' webhook key file");
        std::fs::rename(&written, &path).expect("place the tests' webhook key file");
        path
    });
    FILE.clone()
}

impl Default for AppOptions {
    fn default() -> Self {
        let server = Settings::from_environment();
        Self {
            admin_token: Some(ADMIN_TOKEN),
            access_check_token: None,
            request_id_retention: Duration::from_secs(24 * 60 * 60),
            request_id_sweep_interval: Duration::from_secs(60 * 60),
            sqlite: false,
            postgres_server: None,
            max_connections: 8,
            database_address: None,
            cors_allow_origins: Vec::new(),
            tls: None,
            metrics: false,
            connection_count_interval: BackgroundSettings::default().connection_count_interval,
            handshake_timeout: server.handshake_timeout,
            max_client_connections: server.max_client_connections,
            max_connections_per_peer: server.max_connections_per_peer,
            idle_connection_timeout: server.idle_connection_timeout,
            http2_keepalive: (
                server.http2_keepalive_interval,
                server.http2_keepalive_timeout,
            ),
            watch_streams_per_organization: server.watch_streams_per_organization,
            watch_heartbeat_interval: server.watch_heartbeat_interval,
            watch_unread_timeout: server.watch_unread_timeout,
            watch_buffer: server.watch_buffer,
            change_feed_poll_interval: BackgroundSettings::default().change_feed_poll_interval,
            pending_expiry: server.pending_expiry,
            expiry_sweep_interval: Duration::from_millis(100),
            webhooks: WebhookOptions {
                allow_private_addresses: true,
                retry_schedule: RetrySchedule::parse("100ms,200ms,300ms").unwrap(),
                timeout: Duration::from_secs(5),
                key_file: Some(test_webhook_key_file()),
                ..WebhookOptions::default()
            },
        }
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppOptions::default()).await
}

pub async fn spawn_app_with(options: AppOptions) -> TestApp {
    let (database, url) = new_database(&options).await;
    start(Arc::new(database), url, &options).await
}

/// A server on `database` (reached at `url`), which the test has prepared.
pub async fn spawn_app_on(database: TestDatabase, url: String, options: AppOptions) -> TestApp {
    start(Arc::new(database), url, &options).await
}

async fn new_database(options: &AppOptions) -> (TestDatabase, String) {
    match &options.postgres_server {
        Some(server) => TestDatabase::create_on(server).await,
        None => TestDatabase::create(options.sqlite).await,
    }
}

/// `count` servers sharing one new database, as replicas do in production;
/// they start at the same moment, so they migrate it together.
pub async fn spawn_replicas(count: usize, options: AppOptions) -> Vec<TestApp> {
    let (database, url) = new_database(&options).await;
    let database = Arc::new(database);
    futures::future::join_all((0..count).map(|_| start(database.clone(), url.clone(), &options)))
        .await
}

/// Waits (at most 10 s) until the server on `channel` reports SERVING.
async fn wait_until_serving(channel: &Channel) {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|response| response.into_inner().status());
        if matches!(status, Ok(ServingStatus::Serving)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server did not report SERVING within 10 s: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Another server on `app`'s database, started now: a replica started
/// after the data was written (or a restart, once `app` is stopped).
pub async fn spawn_replica_of(app: &TestApp, options: AppOptions) -> TestApp {
    start(app.database.clone(), app.database_url.clone(), &options).await
}

async fn start(database: Arc<TestDatabase>, url: String, options: &AppOptions) -> TestApp {
    LazyLock::force(&TRACING);
    let database_url = url.clone();
    let url = match options.database_address {
        Some(address) => with_address(&url, address),
        None => url,
    };
    let (tls_files, tls) = match &options.tls {
        Some(tls) => {
            let (files, settings) = tls.write();
            (Some(files), settings)
        }
        None => (None, TlsSettings::default()),
    };
    // The production settings, with the few fields a test server changes.
    let app = Application::build(Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        database: db_settings(&url, options.max_connections),
        admin_token: options
            .admin_token
            .map(|t| SecretString::from(t.to_owned())),
        access_check_token: options
            .access_check_token
            .map(|t| SecretString::from(t.to_owned())),
        cors_allow_origins: options.cors_allow_origins.clone(),
        tls,
        metrics_listen: options.metrics.then(|| "127.0.0.1:0".parse().unwrap()),
        handshake_timeout: options.handshake_timeout,
        max_client_connections: options.max_client_connections,
        max_connections_per_peer: options.max_connections_per_peer,
        idle_connection_timeout: options.idle_connection_timeout,
        http2_keepalive_interval: options.http2_keepalive.0,
        http2_keepalive_timeout: options.http2_keepalive.1,
        watch_streams_per_organization: options.watch_streams_per_organization,
        watch_heartbeat_interval: options.watch_heartbeat_interval,
        watch_unread_timeout: options.watch_unread_timeout,
        watch_buffer: options.watch_buffer,
        webhooks: options.webhooks.clone(),
        background: BackgroundSettings {
            health_check_interval: Duration::from_millis(100),
            request_id_retention: options.request_id_retention,
            request_id_sweep_interval: options.request_id_sweep_interval,
            connection_count_interval: options.connection_count_interval,
            change_feed_poll_interval: options.change_feed_poll_interval,
            expiry_sweep_interval: options.expiry_sweep_interval,
        },
        pending_expiry: options.pending_expiry,
        ..Settings::from_environment()
    })
    .await
    .expect("application builds");
    let addr = app.local_addr();
    let metrics_addr = app.metrics_addr();
    let server_db = app.database();
    let server_health_db = app.health_database();
    let server_reader = app.reader();
    let sweeper = app.request_id_sweeper();
    let api_keys = app.api_keys();
    let mut index_built = app.index_built();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    // The listener is already bound: connecting needs no retry loop. A TLS
    // server gets a channel that connects on first use; its tests make their own.
    let endpoint = Channel::from_shared(format!("http://{addr}")).unwrap();
    let channel = if options.tls.is_some() {
        endpoint.connect_lazy()
    } else {
        endpoint.connect().await.expect("connect to test server")
    };
    // Ready, as a readiness probe would wait for: the access index built
    // and (over plaintext) the health service SERVING.
    tokio::time::timeout(
        Duration::from_secs(10),
        index_built.wait_for(|built| *built),
    )
    .await
    .expect("the access index is built within 10 s")
    .expect("the server runs");
    if options.tls.is_none() {
        wait_until_serving(&channel).await;
    }
    TestApp {
        addr,
        metrics_addr,
        channel,
        server_db,
        server_health_db,
        server_reader,
        sweeper,
        api_keys,
        shutdown: Some(tx),
        server: Some(server),
        database_url,
        database,
        _tls_files: tls_files,
    }
}

impl TestApp {
    pub fn connections(&self, org: &TestOrg) -> Connections {
        connections_on(&self.channel, org)
    }

    pub fn connections_with(&self, bearer: Bearer) -> Connections {
        ConnectionServiceClient::with_interceptor(self.channel.clone(), bearer)
    }

    pub fn organizations(&self, org: &TestOrg) -> Organizations {
        OrganizationServiceClient::with_interceptor(self.channel.clone(), Bearer::new(&org.key))
    }

    pub fn webhooks(&self, org: &TestOrg) -> Webhooks {
        WebhookServiceClient::with_interceptor(self.channel.clone(), Bearer::new(&org.key))
    }

    pub fn admin(&self) -> Admin {
        self.admin_with(Bearer::new(ADMIN_TOKEN))
    }

    pub fn admin_with(&self, bearer: Bearer) -> Admin {
        AdminServiceClient::with_interceptor(self.channel.clone(), bearer)
    }

    /// A new organization with one API key.
    pub async fn new_org(&self, name: &str) -> TestOrg {
        new_org_on(&self.channel, name).await
    }

    /// Another API key of `org`'s organization, named `name`: the
    /// organization as it calls with that key.
    pub async fn new_key(&self, org: &TestOrg, name: &str) -> TestOrg {
        new_key_on(&self.channel, &org.id, name).await
    }

    /// Creates a connection from `source` to `destination` sharing inquiries.
    pub async fn connect(&self, source: &TestOrg, destination: &TestOrg) -> proto::Connection {
        self.connections(source)
            .create_connection(CreateConnectionRequest {
                message: String::new(),
                destination_organization_id: destination.id.clone(),
                data_types: vec![proto::DataType::Inquiry as i32],
                request_id: String::new(),
            })
            .await
            .expect("create connection")
            .into_inner()
            .connection
            .unwrap()
    }

    /// ActivateConnection as `org`, optionally conditional on `etag`.
    pub async fn activate(
        &self,
        org: &TestOrg,
        id: &str,
        etag: &str,
    ) -> Result<proto::Connection, Status> {
        self.transition(org, Action::Activate, id, etag).await
    }

    /// DeactivateConnection as `org`, optionally conditional on `etag`.
    pub async fn deactivate(
        &self,
        org: &TestOrg,
        id: &str,
        etag: &str,
    ) -> Result<proto::Connection, Status> {
        self.transition(org, Action::Deactivate, id, etag).await
    }

    /// ReactivateConnection as `org`, optionally conditional on `etag`.
    pub async fn reactivate(
        &self,
        org: &TestOrg,
        id: &str,
        etag: &str,
    ) -> Result<proto::Connection, Status> {
        self.transition(org, Action::Reactivate, id, etag).await
    }

    /// The RPC that takes `action`, as `org`, optionally conditional on `etag`.
    pub async fn transition(
        &self,
        org: &TestOrg,
        action: Action,
        id: &str,
        etag: &str,
    ) -> Result<proto::Connection, Status> {
        self.take(
            org,
            action,
            id,
            Asked {
                etag: etag.to_owned(),
                ..Asked::default()
            },
        )
        .await
    }

    /// The RPC that takes `action` on connection `id` as `org`, with `asked`.
    pub async fn take(
        &self,
        org: &TestOrg,
        action: Action,
        id: &str,
        asked: Asked,
    ) -> Result<proto::Connection, Status> {
        let (connection, _) = take(&mut self.connections(org), action, id, asked).await?;
        Ok(connection)
    }

    /// GetConnection as `org`, which must succeed.
    pub async fn get(&self, org: &TestOrg, id: &str) -> proto::Connection {
        self.connections(org)
            .get_connection(proto::GetConnectionRequest {
                connection_id: id.to_owned(),
            })
            .await
            .expect("get connection")
            .into_inner()
            .connection
            .unwrap()
    }

    /// The first page (up to 500) of a connection's history, as `org`.
    pub async fn events(&self, org: &TestOrg, id: &str) -> Vec<proto::ConnectionEvent> {
        self.connections(org)
            .list_connection_events(proto::ListConnectionEventsRequest {
                connection_id: id.to_owned(),
                page_size: 500,
                page_token: String::new(),
            })
            .await
            .expect("list events")
            .into_inner()
            .events
    }

    /// The Prometheus text the metrics endpoint serves (metrics must be on).
    pub async fn metrics_text(&self) -> String {
        use http_body_util::{BodyExt, Empty};
        use hyper_util::{client::legacy::Client, rt::TokioExecutor};
        let addr = self.metrics_addr.expect("metrics enabled");
        let response = Client::builder(TokioExecutor::new())
            .build_http::<Empty<bytes::Bytes>>()
            .get(format!("http://{addr}/metrics").parse().unwrap())
            .await
            .expect("scrape");
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(self) {
        let (stopping, _database) = self.begin_stop();
        stopping.finished().await;
    }

    /// Asks the server to stop gracefully and returns at once. The database
    /// lives on as long as the caller keeps the returned handle on it.
    pub fn begin_stop(mut self) -> (Stopping, Arc<TestDatabase>) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let server = self.server.take().expect("the server runs");
        (Stopping(server), self.database.clone())
    }
}

/// A server asked to stop gracefully.
pub struct Stopping(JoinHandle<Result<(), StartupError>>);

impl Stopping {
    /// Whether the server has stopped.
    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }

    /// Waits for the server to stop; it must stop cleanly.
    pub async fn finished(self) {
        self.0
            .await
            .expect("server task")
            .expect("server stops cleanly");
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
