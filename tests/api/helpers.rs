//! `spawn_app()` and friends.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, LazyLock},
    time::Duration,
};

use connections::{
    background::Activity,
    config::LogFormat,
    db::{DbSettings, Reader},
    proto::{
        self, CreateApiKeyRequest, CreateConnectionRequest, CreateOrganizationRequest,
        admin_service_client::AdminServiceClient,
        connection_service_client::ConnectionServiceClient,
        organization_service_client::OrganizationServiceClient,
    },
    startup::{Application, Settings, StartupError},
    telemetry,
};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, sqlx::postgres::PgConnectOptions};
use secrecy::SecretString;
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{
    Code, Request, Status,
    metadata::MetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};
use tonic_types::StatusExt;
use uuid::Uuid;

pub const ADMIN_TOKEN: &str = "test-admin-token";

static TRACING: LazyLock<()> = LazyLock::new(|| {
    if std::env::var_os("TEST_LOG").is_some() {
        telemetry::init_subscriber(telemetry::get_subscriber(
            LogFormat::Pretty,
            "info",
            std::io::stdout,
        ));
    }
});

/// Adds `authorization: Bearer <secret>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    pub fn new(secret: &str) -> Self {
        Self(Some(
            format!("Bearer {secret}").parse().expect("ASCII secret"),
        ))
    }

    pub fn none() -> Self {
        Self(None)
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub type Connections = ConnectionServiceClient<InterceptedService<Channel, Bearer>>;
pub type Organizations = OrganizationServiceClient<InterceptedService<Channel, Bearer>>;
pub type Admin = AdminServiceClient<InterceptedService<Channel, Bearer>>;

/// An organization with an API key.
#[derive(Debug, Clone)]
pub struct TestOrg {
    pub id: String,
    pub key: String,
}

/// A database made for one test and removed after it.
pub enum TestDatabase {
    Sqlite(PathBuf),
    Postgres { admin_url: String, name: String },
}

/// The PostgreSQL server to test against, if `TEST_DATABASE_URL` names one.
pub fn postgres_url() -> Option<String> {
    std::env::var("TEST_DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
}

impl TestDatabase {
    /// A fresh database: PostgreSQL when `TEST_DATABASE_URL` is set (unless
    /// `sqlite` is asked for), else a SQLite file.
    pub async fn create(sqlite: bool) -> (Self, String) {
        match postgres_url().filter(|_| !sqlite) {
            Some(admin_url) => {
                let name = format!("connections_test_{}", Uuid::now_v7().simple());
                let admin = Database::connect(&admin_url)
                    .await
                    .expect("TEST_DATABASE_URL reachable");
                admin
                    .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                    .await
                    .expect("create test database");
                admin.close().await.ok();
                let url = with_database_name(&admin_url, &name);
                (Self::Postgres { admin_url, name }, url)
            }
            None => {
                let path =
                    std::env::temp_dir().join(format!("connections-test-{}.db", Uuid::now_v7()));
                let url = format!("sqlite://{}?mode=rwc", path.display());
                (Self::Sqlite(path), url)
            }
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        match self {
            Self::Sqlite(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut file = path.clone().into_os_string();
                    file.push(suffix);
                    let _ = std::fs::remove_file(file);
                }
            }
            Self::Postgres { admin_url, name } => {
                let (admin_url, name) = (admin_url.clone(), name.clone());
                // Drop runs inside the test's runtime: use a thread with its own.
                let _ = std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    runtime.block_on(async {
                        if let Ok(admin) = Database::connect(&admin_url).await {
                            let _ = admin
                                .execute_unprepared(&format!(
                                    "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                                ))
                                .await;
                            let _ = admin.close().await;
                        }
                    });
                })
                .join();
            }
        }
    }
}

/// The `TEST_DATABASE_URL` server, for a PostgreSQL-only test (marked
/// `#[ignore = ...]`, run with `--include-ignored` on the PostgreSQL pass):
/// its URL and address. Panics, failing the test, when there is none to use.
#[track_caller]
pub fn require_postgres() -> (String, SocketAddr) {
    let url = postgres_url().expect("this test needs PostgreSQL: set TEST_DATABASE_URL");
    let address = postgres_address(&url)
        .unwrap_or_else(|err| panic!("cannot resolve the host of TEST_DATABASE_URL: {err}"));
    (url, address)
}

/// The host and port of the PostgreSQL server `url` names.
fn postgres_address(url: &str) -> Result<SocketAddr, String> {
    use std::{net::ToSocketAddrs, str::FromStr};
    let options = PgConnectOptions::from_str(url).map_err(|err| err.to_string())?;
    (options.get_host(), options.get_port())
        .to_socket_addrs()
        .map_err(|err| err.to_string())?
        .next()
        .ok_or_else(|| format!("{} has no address", options.get_host()))
}

/// `url` with its `host:port` replaced by `address`.
fn with_address(url: &str, address: SocketAddr) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    let authority = &url[start..end];
    let user = authority.rsplit_once('@').map(|(user, _)| user);
    let authority = match user {
        Some(user) => format!("{user}@{address}"),
        None => address.to_string(),
    };
    format!("{}{authority}{}", &url[..start], &url[end..])
}

/// `postgres://u@h:5432/db?x=y` with `db` replaced by `name`.
fn with_database_name(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let prefix = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    format!("{prefix}/{name}{query}")
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
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), StartupError>>>,
    /// The URL of the server's database, to reach it from the test.
    pub database_url: String,
    _database: Arc<TestDatabase>,
}

/// Options for [`spawn_app_with`].
pub struct AppOptions {
    pub admin_token: Option<&'static str>,
    pub request_id_retention: Duration,
    pub request_id_sweep_interval: Duration,
    /// Use SQLite even when `TEST_DATABASE_URL` is set.
    pub sqlite: bool,
    /// Server pool size.
    pub max_connections: u32,
    /// Reach PostgreSQL through this address (e.g. a fault-injecting proxy).
    pub database_address: Option<SocketAddr>,
    pub cors_allow_origins: Vec<String>,
    /// Serve TLS; the test then builds its own channel.
    pub tls: Option<connections::startup::TlsSettings>,
    /// Serve metrics on a free port (see `TestApp::metrics_addr`).
    pub metrics: bool,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            admin_token: Some(ADMIN_TOKEN),
            request_id_retention: Duration::from_secs(24 * 60 * 60),
            request_id_sweep_interval: Duration::from_secs(60 * 60),
            sqlite: false,
            max_connections: 8,
            database_address: None,
            cors_allow_origins: Vec::new(),
            tls: None,
            metrics: false,
        }
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppOptions::default()).await
}

pub async fn spawn_app_with(options: AppOptions) -> TestApp {
    let (database, url) = TestDatabase::create(options.sqlite).await;
    start(Arc::new(database), url, &options).await
}

/// `count` servers sharing one new database, as replicas do in production;
/// they start at the same moment, so they migrate it together.
pub async fn spawn_replicas(count: usize, options: AppOptions) -> Vec<TestApp> {
    let (database, url) = TestDatabase::create(options.sqlite).await;
    let database = Arc::new(database);
    futures::future::join_all((0..count).map(|_| start(database.clone(), url.clone(), &options)))
        .await
}

async fn start(database: Arc<TestDatabase>, url: String, options: &AppOptions) -> TestApp {
    LazyLock::force(&TRACING);
    let database_url = url.clone();
    let url = match options.database_address {
        Some(address) => with_address(&url, address),
        None => url,
    };
    let app = Application::build(Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        database: DbSettings {
            url,
            max_connections: options.max_connections,
        },
        admin_token: options
            .admin_token
            .map(|t| SecretString::from(t.to_owned())),
        health_check_interval: Duration::from_millis(100),
        request_id_retention: options.request_id_retention,
        request_id_sweep_interval: options.request_id_sweep_interval,
        cors_allow_origins: options.cors_allow_origins.clone(),
        tls: options.tls.clone(),
        metrics_listen: options.metrics.then(|| "127.0.0.1:0".parse().unwrap()),
    })
    .await
    .expect("application builds");
    let addr = app.local_addr();
    let metrics_addr = app.metrics_addr();
    let server_db = app.database();
    let server_health_db = app.health_database();
    let server_reader = app.reader();
    let sweeper = app.request_id_sweeper();
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
    TestApp {
        addr,
        metrics_addr,
        channel,
        server_db,
        server_health_db,
        server_reader,
        sweeper,
        shutdown: Some(tx),
        server: Some(server),
        database_url,
        _database: database,
    }
}

impl TestApp {
    pub fn connections(&self, org: &TestOrg) -> Connections {
        ConnectionServiceClient::with_interceptor(self.channel.clone(), Bearer::new(&org.key))
    }

    pub fn connections_with(&self, bearer: Bearer) -> Connections {
        ConnectionServiceClient::with_interceptor(self.channel.clone(), bearer)
    }

    pub fn organizations(&self, org: &TestOrg) -> Organizations {
        OrganizationServiceClient::with_interceptor(self.channel.clone(), Bearer::new(&org.key))
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

    /// Creates a connection from `source` to `destination` sharing inquiries.
    pub async fn connect(&self, source: &TestOrg, destination: &TestOrg) -> proto::Connection {
        self.connections(source)
            .create_connection(CreateConnectionRequest {
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
        self.connections(org)
            .activate_connection(proto::ActivateConnectionRequest {
                connection_id: id.to_owned(),
                etag: etag.to_owned(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().connection.unwrap())
    }

    /// DeactivateConnection as `org`, optionally conditional on `etag`.
    pub async fn deactivate(
        &self,
        org: &TestOrg,
        id: &str,
        etag: &str,
    ) -> Result<proto::Connection, Status> {
        self.connections(org)
            .deactivate_connection(proto::DeactivateConnectionRequest {
                connection_id: id.to_owned(),
                etag: etag.to_owned(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().connection.unwrap())
    }

    /// ReactivateConnection as `org`, optionally conditional on `etag`.
    pub async fn reactivate(
        &self,
        org: &TestOrg,
        id: &str,
        etag: &str,
    ) -> Result<proto::Connection, Status> {
        self.connections(org)
            .reactivate_connection(proto::ReactivateConnectionRequest {
                connection_id: id.to_owned(),
                etag: etag.to_owned(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().connection.unwrap())
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
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("server task")
                .expect("server stops cleanly");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A new organization with one API key, made through the AdminService of
/// the server at the other end of `channel` (with the tests' admin token).
pub async fn new_org_on(channel: &Channel, name: &str) -> TestOrg {
    let mut admin = AdminServiceClient::with_interceptor(channel.clone(), Bearer::new(ADMIN_TOKEN));
    let org = admin
        .create_organization(CreateOrganizationRequest {
            display_name: name.to_owned(),
        })
        .await
        .expect("create organization")
        .into_inner()
        .organization
        .unwrap();
    let key = admin
        .create_api_key(CreateApiKeyRequest {
            organization_id: org.id.clone(),
            display_name: "tests".to_owned(),
        })
        .await
        .expect("create API key")
        .into_inner();
    TestOrg {
        id: org.id,
        key: key.secret,
    }
}

/// Asserts the status code and the ErrorInfo reason (and domain).
#[track_caller]
pub fn assert_error(status: &Status, code: Code, reason: &str) {
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.domain, "connections.v1");
    assert_eq!(info.reason, format!("ERROR_REASON_{reason}"), "{status:?}");
}

/// The fields named in the BadRequest detail.
pub fn violated_fields(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|br| br.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// The value of the Prometheus sample named exactly `series` (name and labels).
pub fn metric_sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().unwrap())
        })
}

/// A well-formed ID that names nothing.
pub fn unknown_id() -> String {
    Uuid::now_v7().to_string()
}

#[test]
fn database_name_is_replaced_in_urls() {
    assert_eq!(
        with_database_name("postgres://u@h:5432/postgres", "x"),
        "postgres://u@h:5432/x"
    );
    assert_eq!(
        with_database_name("postgres://u@h/postgres?sslmode=disable", "x"),
        "postgres://u@h/x?sslmode=disable"
    );
    assert_eq!(
        with_database_name("postgres://u@h", "x"),
        "postgres://u@h/x"
    );
    assert_eq!(
        with_address("postgres://u@h:5432/db?x=y", "127.0.0.1:7".parse().unwrap()),
        "postgres://u@127.0.0.1:7/db?x=y"
    );
    assert_eq!(
        with_address("postgres://h/db", "127.0.0.1:7".parse().unwrap()),
        "postgres://127.0.0.1:7/db"
    );
}
