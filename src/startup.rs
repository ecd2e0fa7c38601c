//! Builds the server from its [`Settings`] and runs it. Shared by `main` and
//! the integration tests, so the tests exercise the production wiring.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use sea_orm::{DatabaseConnection, DbErr};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

use crate::{
    background::{
        self, Activity, change_feed, expiry, health, sweeper,
        webhooks::{
            deliver,
            http::{Sender, SenderOptions},
        },
    },
    config::{DatabaseSettings, Settings},
    db,
    entity::change_log,
    grpc::{
        AdminToken,
        call::AccessLog,
        convert,
        server::{self, Services, Transport, TransportError},
    },
    metrics::{self, Metrics},
    service::{
        Access, ApiKeys, AuditLog, ChangeFeed, ChangeTokens, Connections, Organizations,
        PageTokens, WatchLimits, Watches, WebhookKey, WebhookSettings, Webhooks, secrets,
        webhook_delivery::{Deliveries, DeliveryMetrics},
    },
};

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Connecting to, or migrating, the database failed.
    #[error("database: {}", db::describe(.0))]
    Database(#[from] DbErr),
    /// Serving without migrating (`--no-migrate`), or reading with an admin
    /// command, on a database that lacks migrations this release needs.
    #[error(
        "the database's schema is older than this release: {} migration(s) pending ({}); \
         run `connections migrate` of this release first (`serve` migrates at start unless \
         --no-migrate)",
        pending.len(),
        pending.join(", ")
    )]
    SchemaBehind {
        /// The migrations the database lacks, in order.
        pending: Vec<String>,
    },
    /// Binding the listen address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The TLS or CORS settings cannot be used.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Building the reflection service failed.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The webhook HTTP client cannot be set up (for example, no root
    /// certificates to trust).
    #[error("webhook deliveries: {0}")]
    WebhookSender(String),
    /// The webhook key file cannot be read or made.
    #[error("webhook key file {path}: {problem}")]
    WebhookKey {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
}

/// A server bound to its ports, connected and migrated, ready to run.
pub struct Application {
    settings: Settings,
    transport: Transport,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    services: Services,
    db: DatabaseConnection,
    /// Reads outside transactions.
    reader: db::Reader,
    /// A pool of its own for health probes, so a busy request pool does not
    /// make the server report NOT_SERVING.
    health_db: DatabaseConnection,
    /// What the request_id sweeper has done.
    sweeper: Arc<Activity>,
    /// The connections layer, for the expiry sweep.
    expirer: Connections,
    /// The change log, as this process follows it.
    feed: ChangeFeed,
    /// The access index.
    access: Access,
    /// The webhook deliveries of this replica: none without a webhook key.
    deliveries: Option<Deliveries>,
    /// What the webhook deliverer counts.
    webhook_metrics: DeliveryMetrics,
    /// Notified when a call changes a webhook endpoint.
    endpoints_changed: Arc<tokio::sync::Notify>,
}

impl Application {
    /// Checks the transport settings, takes its ports, connects, migrates
    /// (unless told not to), and listens. A database whose schema is newer than this release
    /// (migrations a later release applied) is served, with a warning; one
    /// that still lacks this release's migrations is refused without
    /// `settings.migrate` ([`StartupError::SchemaBehind`]).
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let transport = Transport::new(&settings)?;
        // The ports are taken first, so that a server that cannot have them
        // touches no database; they are listened on only once the database
        // is migrated, so that until then nothing accepts calls it cannot
        // serve (a TCP probe or a client fails over at once).
        let port = reserve(settings.listen)?;
        let metrics_port = settings.metrics_listen.map(reserve).transpose()?;
        let db = db::connect(&settings.database).await?;
        let schema = if settings.migrate {
            db::migrate(&db).await?
        } else {
            db::schema(&db).await?
        };
        if !schema.pending.is_empty() {
            return Err(StartupError::SchemaBehind {
                pending: schema.pending,
            });
        }
        schema.warn_if_newer();
        change_log::continue_after_move(&db).await?;
        let reader = db::Reader::new(&db, &settings.database)?;
        let health_db = db::connect(&DatabaseSettings {
            max_connections: 1,
            ..settings.database.clone()
        })
        .await?;
        let tokens = PageTokens::new(secrets::shared_key(&db, PageTokens::SECRET_NAME).await?);
        let feed = ChangeFeed::with_buffer(reader.clone(), settings.watch_buffer as usize);
        feed.start().await?;
        let access = Access::new(
            db.clone(),
            reader.clone(),
            ChangeTokens::new(tokens.clone()),
        );
        let webhook_key = webhook_key(&settings, &db).await?;
        let webhook_options = &settings.webhooks;
        let deliveries = webhook_key.clone().map(|key| {
            Deliveries::new(
                db.clone(),
                reader.clone(),
                key,
                webhook_options.retry_schedule.clone(),
                webhook_options.disable_after,
            )
        });
        let webhooks = Webhooks::new(
            db.clone(),
            reader.clone(),
            tokens.clone(),
            webhook_key,
            WebhookSettings {
                endpoints_per_organization: webhook_options.endpoints_per_organization as usize,
                allow_private_addresses: webhook_options.allow_private_addresses,
                secret_overlap: webhook_options.secret_overlap,
                pending_lifetime: pending_lifetime(settings.pending_expiry),
            },
            convert::webhook_body,
        )
        .notifying(feed.clone());
        let endpoints_changed = webhooks.endpoints_changed();
        let services = Services {
            connections: Connections::new(
                db.clone(),
                reader.clone(),
                tokens.clone(),
                convert::encode_connection,
            )
            .notifying(feed.clone())
            .queueing_webhooks(convert::webhook_body)
            .expiring_after(pending_lifetime(settings.pending_expiry)),
            watches: Watches::new(
                reader.clone(),
                feed.clone(),
                ChangeTokens::new(tokens.clone()),
                WatchLimits {
                    streams_per_organization: settings.watch_streams_per_organization as usize,
                    heartbeat: settings.watch_heartbeat_interval,
                    unread_timeout: settings.watch_unread_timeout,
                },
            ),
            organizations: Organizations::new(db.clone(), reader.clone(), tokens.clone()),
            audit: AuditLog::new(reader.clone(), tokens),
            api_keys: ApiKeys::new(db.clone(), reader.clone()),
            admin_token: AdminToken::new(settings.admin_token.as_ref()),
            access: access.clone(),
            access_check_token: AdminToken::access_check(settings.access_check_token.as_ref()),
            webhooks,
        };
        let listener = listen(port, settings.listen)?;
        let metrics_listener = metrics_port
            .zip(settings.metrics_listen)
            .map(|(port, addr)| listen(port, addr))
            .transpose()?;
        let expirer = services.connections.clone();
        Ok(Self {
            settings,
            transport,
            listener,
            metrics_listener,
            services,
            db,
            reader,
            health_db,
            sweeper: Arc::default(),
            expirer,
            feed,
            access,
            deliveries,
            webhook_metrics: DeliveryMetrics::default(),
            endpoints_changed,
        })
    }

    /// The settings it was built with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// What the request_id sweeper has done (shared with it, not a copy).
    pub fn request_id_sweeper(&self) -> Arc<Activity> {
        self.sweeper.clone()
    }

    /// The bound address (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The bound metrics address, if metrics are enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// The API keys layer (shared with the server, not a copy): its
    /// counters show what authentication cost.
    pub fn api_keys(&self) -> ApiKeys {
        self.services.api_keys.clone()
    }

    /// Tells when the CheckAccess index has been built (it is built in the
    /// background once the server runs; until then health reports
    /// NOT_SERVING).
    pub fn index_built(&self) -> tokio::sync::watch::Receiver<bool> {
        self.access.built()
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
    /// calls in flight finish, stops the background tasks and closes the
    /// database pools.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), StartupError> {
        let intervals = &self.settings.background;
        let local_addr = self.local_addr();
        let admin_service = self.services.admin_token.is_configured();
        let metrics = self.metrics_listener.as_ref().map(|_| {
            Arc::new(Metrics::new(
                self.db.clone(),
                self.reader.clone(),
                self.services.connections.replays(),
                metrics::Followers {
                    feed: self.feed.clone(),
                    watches: self.services.watches.clone(),
                    access: self.access.clone(),
                },
                &self.webhook_metrics,
                intervals.connection_count_interval,
            ))
        });
        let stopping = CancellationToken::new();
        let (access_log, access_log_writer) = match self.settings.access_log {
            true => {
                let (log, writer) = AccessLog::stdout();
                (Some(log), Some(writer))
            }
            false => (None, None),
        };
        let (routes, health_reporter) = server::register(
            self.services,
            self.settings.dashboard,
            access_log,
            &stopping,
        )?;

        health::report_now(
            &self.health_db,
            &health_reporter,
            intervals.health_check_interval,
            self.access.is_built(),
        )
        .await;
        let mut tasks = vec![
            health::start(
                self.health_db.clone(),
                health_reporter.clone(),
                intervals.health_check_interval,
                self.access.built(),
            ),
            sweeper::start(
                self.db.clone(),
                intervals.request_id_retention,
                intervals.request_id_sweep_interval,
                self.sweeper,
            ),
            change_feed::start(self.feed.clone(), intervals.change_feed_poll_interval),
            expiry::start(self.expirer, intervals.expiry_sweep_interval),
            change_feed::start_index(
                self.access,
                self.feed.clone(),
                intervals.change_feed_poll_interval,
            ),
        ];
        if let Some(options) = self.reader.postgres_options() {
            tasks.push(change_feed::listen(self.feed.clone(), options));
        }
        let sender = Sender::new(SenderOptions {
            allow_private: self.settings.webhooks.allow_private_addresses,
            timeout: self.settings.webhooks.timeout,
            ..SenderOptions::default()
        })
        .map_err(|err| StartupError::WebhookSender(err.to_string()))?;
        if let Some(deliveries) = self.deliveries {
            tasks.push(deliver::start(
                deliveries,
                sender,
                self.feed.commits(),
                self.endpoints_changed,
                self.webhook_metrics,
            ));
        }
        if let (Some(listener), Some(metrics)) = (self.metrics_listener, metrics.clone()) {
            tasks.push(background::Task::start(|stop| async move {
                if let Err(err) = metrics::serve(listener, metrics, stop).await {
                    tracing::error!(error = %err, "metrics endpoint failed");
                }
            }));
        }

        tracing::info!(
            %local_addr,
            database = db::backend_name(&self.db),
            tls = self.transport.tls_mode(),
            admin_service = if admin_service { "enabled" } else { "disabled" },
            dashboard = if self.settings.dashboard { "on" } else { "off" },
            "serving gRPC"
        );
        if self.settings.dashboard {
            let url = dashboard_url(local_addr, self.transport.tls_mode() != "off");
            tracing::info!(%url, "open the dashboard in a browser");
        }
        let serve = self
            .transport
            .serve(routes, metrics, self.listener, stopping.clone());
        let stop = async {
            shutdown.await;
            tracing::info!("shutting down: finishing calls in flight");
            health::set_all(&health_reporter, ServingStatus::NotServing).await;
            stopping.cancel();
        };
        // Serves until the stop, then until the calls in flight finish or
        // the drain deadline passes: then the calls left are dropped.
        let deadline = self.settings.shutdown_timeout;
        tokio::select! {
            () = serve => {}
            () = async { stop.await; tokio::time::sleep(deadline).await } => {
                tracing::warn!(?deadline, "calls still in flight at the drain deadline: ending them");
            }
        }

        if let Some(writer) = access_log_writer {
            writer.finish(std::time::Duration::from_secs(2)).await;
        }
        for task in tasks {
            task.stop().await;
        }
        self.reader.close().await;
        self.db.close().await?;
        self.health_db.close().await?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The key that encrypts webhook signing secrets: from the key file (by
/// default beside a SQLite database, created if missing); for an in-memory
/// database, a random one. On PostgreSQL without a key file, none (with a
/// warning): a key kept in the database would let a copy of it sign
/// deliveries, so this server then neither makes secrets nor delivers.
async fn webhook_key(
    settings: &Settings,
    db: &DatabaseConnection,
) -> Result<Option<WebhookKey>, StartupError> {
    let sqlite = db::sqlite_file(&settings.database.url);
    let path = match (&settings.webhooks.key_file, &sqlite) {
        (Some(path), _) => path.clone(),
        (None, Some(database)) => {
            let mut path = database.clone().into_os_string();
            path.push(".webhook-key");
            path.into()
        }
        (None, None) if db.get_database_backend() == sea_orm::DbBackend::Postgres => {
            tracing::warn!(
                "no --webhook-key-file: this server neither creates webhook endpoints nor \
                 delivers webhooks (give every replica the same key file to turn them on)"
            );
            return Ok(None);
        }
        (None, None) => return Ok(Some(WebhookKey::random())),
    };
    read_key_file(&path, sqlite.is_some())
        .map(Some)
        .map_err(|problem| StartupError::WebhookKey {
            path: path.display().to_string(),
            problem,
        })
}

/// The key in `path` (base64 of 32 bytes); with `create`, a new random one
/// is written there, readable by its owner only, if the file is missing.
fn read_key_file(path: &std::path::Path, create: bool) -> Result<WebhookKey, String> {
    use base64::{Engine, engine::general_purpose::STANDARD};
    use std::io::Write;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let bytes = STANDARD
                .decode(text.trim())
                .map_err(|_| "is not base64 (make one with `head -c 32 /dev/urandom | base64`)")?;
            let key: [u8; 32] = bytes
                .try_into()
                .map_err(|_| "must hold 32 bytes (`head -c 32 /dev/urandom | base64`)")?;
            Ok(WebhookKey::new(key))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && create => {
            let key = crate::service::webhooks::random_key();
            let mut file = std::fs::OpenOptions::new();
            file.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut file, 0o600);
            file.open(path)
                .and_then(|mut file| writeln!(file, "{}", STANDARD.encode(key)))
                .map_err(|err| format!("cannot create it: {err}"))?;
            tracing::info!(path = %path.display(), "webhook key file created");
            Ok(WebhookKey::new(key))
        }
        Err(err) => Err(err.to_string()),
    }
}

/// How long a connection may stay PENDING: `None` (for ever) for zero.
fn pending_lifetime(expiry: Duration) -> Option<chrono::TimeDelta> {
    (!expiry.is_zero())
        .then(|| chrono::TimeDelta::from_std(expiry).unwrap_or(chrono::TimeDelta::MAX))
}

/// `addr`, bound but not listened on yet: a port in use elsewhere fails
/// here, while connecting to it is still refused.
fn reserve(addr: SocketAddr) -> Result<tokio::net::TcpSocket, StartupError> {
    let bind = || {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As TcpListener::bind does: a restarted server may take its port
        // while connections of the one before are still closing.
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        Ok(socket)
    };
    bind().map_err(|source| StartupError::Bind { addr, source })
}

/// Starts listening on a port [`reserve`] took.
fn listen(socket: tokio::net::TcpSocket, addr: SocketAddr) -> Result<TcpListener, StartupError> {
    socket
        .listen(1024)
        .map_err(|source| StartupError::Bind { addr, source })
}

/// Where a browser on this machine finds the dashboard of a server bound to
/// `addr`: a wildcard address (`0.0.0.0`, `::`) is reached on loopback.
pub fn dashboard_url(addr: SocketAddr, tls: bool) -> String {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{}/", SocketAddr::new(ip, addr.port()))
}

#[cfg(test)]
mod tests {
    use super::dashboard_url;

    #[test]
    fn the_dashboard_url_names_an_address_a_browser_can_open() {
        let url = |addr: &str, tls| dashboard_url(addr.parse().unwrap(), tls);
        assert_eq!(url("127.0.0.1:50051", false), "http://127.0.0.1:50051/");
        assert_eq!(url("0.0.0.0:8080", true), "https://127.0.0.1:8080/");
        assert_eq!(url("[::]:50051", false), "http://[::1]:50051/");
        assert_eq!(url("[::1]:50051", false), "http://[::1]:50051/");
    }
}
