//! Command line and environment (SPEC section 6).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum, builder::FalseyValueParser};
use secrecy::SecretString;

use crate::domain::webhook::RetrySchedule;

/// The embedded default database: a SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://connections.db?mode=rwc";
/// The default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

/// Shortest admin token accepted, in characters.
pub const MIN_ADMIN_TOKEN_LEN: usize = 32;

/// By default one IP address may hold this fraction (1 / `PEER_SHARE`) of
/// the client connection slots.
pub const PEER_SHARE: u32 = 4;

/// Longest duration a flag takes (a year): longer ones would overflow the
/// clocks they are added to.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// One-directional data-sharing connections between organizations, over gRPC.
#[derive(Debug, Parser)]
#[command(name = "connections", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending migrations (unless --no-migrate), then serve gRPC until
    /// SIGINT or SIGTERM.
    Serve(Box<Settings>),
    /// Apply pending migrations and exit.
    Migrate(DatabaseSettings),
    /// Manage organizations and API keys directly in the database (no server needed).
    Admin(AdminArgs),
}

/// Everything the server runs with: `connections serve` builds it from its
/// options and the environment, and the tests build the same (see
/// [`Settings::from_environment`]) and change a few fields.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Address to listen on: an IP address or a host name, and a port.
    #[arg(long, env = "CONNECTIONS_LISTEN", default_value = DEFAULT_LISTEN, value_parser = parse_listen)]
    pub listen: SocketAddr,

    /// Not an option: says to use --listen.
    #[arg(long, hide = true, num_args = 0..=1, default_missing_value = "", value_parser = no_port_option)]
    pub port: Option<u16>,

    /// Database settings.
    #[command(flatten)]
    pub database: DatabaseSettings,

    /// Token for AdminService (prefer the environment variable: arguments are
    /// visible to other local users). Without it, AdminService refuses every call.
    /// At least 32 characters (e.g. `openssl rand -hex 32`); surrounding
    /// whitespace is ignored.
    #[arg(long, env = "CONNECTIONS_ADMIN_TOKEN", hide_env_values = true, value_parser = AdminTokenParser)]
    pub admin_token: Option<SecretString>,

    /// Token that may call AccessService (CheckAccess, BatchCheckAccess) for
    /// any pair of organizations and nothing else, for the services that move
    /// the data.
    /// At least 32 characters; surrounding whitespace is ignored.
    #[arg(long, env = "CONNECTIONS_ACCESS_CHECK_TOKEN", hide_env_values = true, value_parser = AdminTokenParser)]
    pub access_check_token: Option<SecretString>,

    /// Log format.
    #[arg(long, env = "CONNECTIONS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,

    /// Origin allowed to call the API from a browser over gRPC-Web, as
    /// `scheme://host[:port]` (repeatable; the environment variable takes a
    /// comma-separated list). None by default; `*` and `null` are refused.
    #[arg(
        long = "cors-allow-origin",
        env = "CONNECTIONS_CORS_ALLOW_ORIGIN",
        value_delimiter = ',',
        value_parser = parse_origin
    )]
    pub cors_allow_origins: Vec<String>,

    /// TLS settings.
    #[command(flatten)]
    pub tls: TlsSettings,

    /// How long a stop waits for calls in flight (after SIGTERM or SIGINT)
    /// before it ends them: `10s`, `500ms`, `2m`.
    #[arg(
        long,
        env = "CONNECTIONS_SHUTDOWN_TIMEOUT",
        default_value = "10s",
        value_parser = parse_duration
    )]
    pub shutdown_timeout: Duration,

    /// How long a new client connection may take, from being accepted, to
    /// finish its TLS handshake (with TLS) and send the start of its first
    /// request (the HTTP/2 preface), before it is closed: `10s`, `500ms`.
    #[arg(
        long,
        env = "CONNECTIONS_HANDSHAKE_TIMEOUT",
        default_value = "10s",
        value_parser = parse_positive_duration
    )]
    pub handshake_timeout: Duration,

    /// How often an HTTP/2 connection is pinged when it sends nothing.
    #[arg(
        long,
        env = "CONNECTIONS_HTTP2_KEEPALIVE_INTERVAL",
        default_value = "60s",
        value_parser = parse_positive_duration
    )]
    pub http2_keepalive_interval: Duration,

    /// How long a ping may go unanswered before the connection is closed as
    /// dead.
    #[arg(
        long,
        env = "CONNECTIONS_HTTP2_KEEPALIVE_TIMEOUT",
        default_value = "20s",
        value_parser = parse_positive_duration
    )]
    pub http2_keepalive_timeout: Duration,

    /// How long a client connection may go without a call in flight before
    /// it is closed: gracefully (HTTP/2 GOAWAY, so a client reconnects on
    /// its next call), so that idle clients do not hold connection slots. A
    /// stream (e.g. a watch) is a call in flight for as long as it is open.
    #[arg(
        long,
        env = "CONNECTIONS_IDLE_CONNECTION_TIMEOUT",
        default_value = "5m",
        value_parser = parse_positive_duration
    )]
    pub idle_connection_timeout: Duration,

    /// Most WatchConnectionEvents streams one organization may have open on
    /// this server at once.
    #[arg(
        long,
        env = "CONNECTIONS_WATCH_STREAMS_PER_ORGANIZATION",
        default_value_t = 16,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub watch_streams_per_organization: u32,

    /// Longest time between two messages of a WatchConnectionEvents stream
    /// (a heartbeat is sent if nothing else is): `15s`.
    #[arg(
        long,
        env = "CONNECTIONS_WATCH_HEARTBEAT_INTERVAL",
        default_value = "15s",
        value_parser = parse_positive_duration
    )]
    pub watch_heartbeat_interval: Duration,

    /// A WatchConnectionEvents stream whose client has left a message unread
    /// this long ends with ABORTED / WATCH_CONSUMER_TOO_SLOW, however little
    /// it holds: `60s`.
    #[arg(
        long,
        env = "CONNECTIONS_WATCH_UNREAD_TIMEOUT",
        default_value = "60s",
        value_parser = parse_duration
    )]
    pub watch_unread_timeout: Duration,

    /// How many batches of the change log (each one read of it, up to 256
    /// events) a WatchConnectionEvents stream may fall behind before it is
    /// ended with ABORTED (`WATCH_CONSUMER_TOO_SLOW`). The batches are shared
    /// by every stream: this bounds memory, not per stream.
    #[arg(
        long,
        env = "CONNECTIONS_WATCH_BUFFER",
        default_value_t = 1024,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub watch_buffer: u32,

    /// Most client connections open at once; further ones wait in the
    /// listen queue until one closes.
    #[arg(
        long,
        env = "CONNECTIONS_MAX_CLIENT_CONNECTIONS",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_client_connections: u32,

    /// Most client connections open at once from one IP address; further
    /// ones are closed at once. 0: no limit per address (e.g. behind a proxy
    /// that does not keep the client's address). Default: a quarter of
    /// --max-client-connections.
    #[arg(long, env = "CONNECTIONS_MAX_CONNECTIONS_PER_PEER")]
    pub max_connections_per_peer: Option<u32>,

    /// Do not serve the dashboard (the "Connect > Connections" page at `/`).
    /// `CONNECTIONS_DASHBOARD=false` does the same.
    #[arg(
        long = "no-dashboard",
        env = "CONNECTIONS_DASHBOARD",
        action = ArgAction::SetFalse,
        value_parser = FalseyValueParser::new(),
    )]
    pub dashboard: bool,

    /// Do not apply pending migrations at start, for deployments that run
    /// `connections migrate` as a step of their own: the server then refuses
    /// to start (exit code 3) while the database lacks a migration it needs.
    /// `CONNECTIONS_MIGRATE=false` does the same.
    #[arg(
        long = "no-migrate",
        env = "CONNECTIONS_MIGRATE",
        value_parser = FalseyValueParser::new(),
        action = ArgAction::SetFalse,
    )]
    pub migrate: bool,

    /// Write an access log: one JSON line per call on standard output (the
    /// diagnostic log goes to standard error), naming the method, gRPC code
    /// and reason, caller, duration, peer and request ID. Never a secret.
    #[arg(
        long = "access-log",
        env = "CONNECTIONS_ACCESS_LOG",
        value_parser = FalseyValueParser::new(),
        action = ArgAction::SetTrue,
    )]
    pub access_log: bool,

    /// Address for Prometheus metrics (GET /metrics); off by default.
    #[arg(long, env = "CONNECTIONS_METRICS_LISTEN", value_parser = parse_listen)]
    pub metrics_listen: Option<SocketAddr>,

    /// How long a PENDING connection waits for its destination to activate
    /// it before the service deactivates it (an EXPIRED event), counted from
    /// its creation or reactivation: `30d`; `0`: for ever. A change applies
    /// to connections created or reactivated from then on.
    #[arg(
        long = "pending-expiry",
        env = "CONNECTIONS_PENDING_EXPIRY",
        default_value = "30d",
        value_parser = parse_duration
    )]
    pub pending_expiry: Duration,

    /// Webhook settings.
    #[command(flatten)]
    pub webhooks: WebhookOptions,

    /// Work besides answering calls (not options: fixed in production,
    /// shortened by tests).
    #[arg(skip)]
    pub background: BackgroundSettings,
}

impl Settings {
    /// The settings of `connections serve` given no options: the defaults,
    /// overridden by the `CONNECTIONS_*` environment variables.
    pub fn from_environment() -> Self {
        /// `Settings` alone, as a command line.
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            settings: Settings,
        }
        Only::parse_from(["connections"]).settings
    }

    /// Most client connections open at once from one IP address, or `None`
    /// for no limit: `--max-connections-per-peer`, by default a quarter of
    /// `--max-client-connections` (at least 1), so that one address never
    /// holds more than a quarter of the slots.
    pub fn connections_per_peer(&self) -> Option<u32> {
        match self.max_connections_per_peer {
            None => Some((self.max_client_connections / PEER_SHARE).max(1)),
            Some(0) => None,
            Some(limit) => Some(limit),
        }
    }
}

/// Where the data lives.
#[derive(Clone, Args)]
pub struct DatabaseSettings {
    /// Database URL: sqlite://PATH?mode=rwc or postgres://USER@HOST/DB.
    #[arg(
        id = "database_url",
        long = "database-url",
        env = "CONNECTIONS_DATABASE_URL",
        default_value = DEFAULT_DATABASE_URL,
        hide_env_values = true,
        global = true
    )]
    pub url: String,

    /// Most database connections in the pool.
    #[arg(
        id = "db_max_connections",
        long = "db-max-connections",
        env = "CONNECTIONS_DB_MAX_CONNECTIONS",
        default_value_t = 16,
        global = true
    )]
    pub max_connections: u32,
}

impl DatabaseSettings {
    /// Settings for `url` with the default pool size.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 16,
        }
    }
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &redact(&self.url))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// `url` without its password (user information, or a `password` query
/// parameter) and user name, for messages and logs.
pub fn redact(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "<database url>".to_owned();
    };
    if parsed.password().is_some() || !parsed.username().is_empty() {
        // Neither fails on a URL that has a user name.
        let _ = parsed.set_password(None);
        let _ = parsed.set_username("***");
    }
    if parsed
        .query_pairs()
        .any(|(name, _)| name.eq_ignore_ascii_case("password"))
    {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(name, value)| {
                let value = if name.eq_ignore_ascii_case("password") {
                    "***".to_owned()
                } else {
                    value.into_owned()
                };
                (name.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.into()
}

/// TLS: the server's certificate and key, and for mutual TLS the CAs that
/// client certificates must chain to. All PEM files.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsSettings {
    /// TLS certificate chain (PEM). With --tls-key, the server speaks only TLS.
    #[arg(
        id = "tls_cert",
        long = "tls-cert",
        env = "CONNECTIONS_TLS_CERT",
        requires = "tls_key"
    )]
    pub cert: Option<PathBuf>,

    /// TLS private key (PEM).
    #[arg(
        id = "tls_key",
        long = "tls-key",
        env = "CONNECTIONS_TLS_KEY",
        requires = "tls_cert"
    )]
    pub key: Option<PathBuf>,

    /// CA certificate(s) (PEM) for mutual TLS: clients must present a
    /// certificate signed by one of them.
    #[arg(
        id = "tls_client_ca",
        long = "tls-client-ca",
        env = "CONNECTIONS_TLS_CLIENT_CA",
        requires = "tls_cert"
    )]
    pub client_ca: Option<PathBuf>,
}

/// How webhooks are delivered (SPEC section 10).
#[derive(Debug, Clone, Args)]
pub struct WebhookOptions {
    /// Allow webhook URLs with `http` and addresses in private networks
    /// (loopback, private, link-local, ...), for development and tests only:
    /// in production they would let a caller reach the server's own network.
    #[arg(
        long = "webhook-allow-private-addresses",
        env = "CONNECTIONS_WEBHOOK_ALLOW_PRIVATE_ADDRESSES",
        value_parser = FalseyValueParser::new(),
        action = ArgAction::SetTrue,
    )]
    pub allow_private_addresses: bool,

    /// The waits between a failed delivery and the next attempt, each with
    /// up to 20% added at random; after the last the event is given up.
    #[arg(
        long = "webhook-retry-schedule",
        env = "CONNECTIONS_WEBHOOK_RETRY_SCHEDULE",
        default_value = "5s,5m,30m,2h,5h,10h,10h",
        value_parser = RetrySchedule::parse
    )]
    pub retry_schedule: RetrySchedule,

    /// Most webhook endpoints one organization may have.
    #[arg(
        long = "webhook-endpoints-per-organization",
        env = "CONNECTIONS_WEBHOOK_ENDPOINTS_PER_ORGANIZATION",
        default_value_t = 20,
        value_parser = clap::value_parser!(u32).range(1..=1000)
    )]
    pub endpoints_per_organization: u32,

    /// How long a rotated-out signing secret keeps signing beside the new
    /// one: `24h`.
    #[arg(
        long = "webhook-secret-overlap",
        env = "CONNECTIONS_WEBHOOK_SECRET_OVERLAP",
        default_value = "24h",
        value_parser = parse_duration
    )]
    pub secret_overlap: Duration,

    /// An endpoint whose every delivery attempt has failed this long is
    /// disabled (its events stay queued): `120h` (5 days).
    #[arg(
        long = "webhook-disable-after",
        env = "CONNECTIONS_WEBHOOK_DISABLE_AFTER",
        default_value = "120h",
        value_parser = parse_positive_duration
    )]
    pub disable_after: Duration,

    /// How long a delivery attempt may take to get the receiver's status:
    /// `15s`. Longer is a failed attempt (`timeout`).
    #[arg(
        long = "webhook-timeout",
        env = "CONNECTIONS_WEBHOOK_TIMEOUT",
        default_value = "15s",
        value_parser = parse_positive_duration
    )]
    pub timeout: Duration,

    /// File holding the key that encrypts webhook signing secrets (base64
    /// of 32 random bytes, e.g. `head -c 32 /dev/urandom | base64`), so
    /// that a copy of the database alone cannot sign a delivery. Every
    /// replica must have the same. Default with SQLite: `<database
    /// file>.webhook-key`, created if missing; with PostgreSQL, none: the
    /// server then neither creates webhook endpoints (FAILED_PRECONDITION,
    /// `WEBHOOKS_NOT_CONFIGURED`) nor delivers, and warns at start.
    #[arg(long = "webhook-key-file", env = "CONNECTIONS_WEBHOOK_KEY_FILE")]
    pub key_file: Option<PathBuf>,
}

impl Default for WebhookOptions {
    fn default() -> Self {
        Self {
            allow_private_addresses: false,
            retry_schedule: RetrySchedule::default(),
            endpoints_per_organization: 20,
            secret_overlap: Duration::from_secs(24 * 3600),
            disable_after: Duration::from_secs(120 * 3600),
            timeout: Duration::from_secs(15),
            key_file: None,
        }
    }
}

/// How often the server's background tasks run.
#[derive(Debug, Clone)]
pub struct BackgroundSettings {
    /// How often the database is probed for the health service.
    pub health_check_interval: Duration,
    /// How long request_id records are kept (SPEC: at least 24 hours).
    pub request_id_retention: Duration,
    /// How often expired request_id records are deleted.
    pub request_id_sweep_interval: Duration,
    /// How often the change log is read for changes made by other replicas
    /// and processes (this process's own are read as they commit).
    pub change_feed_poll_interval: Duration,
    /// How long the metrics' count of connections by state is reused before
    /// the database is asked again, however many scrapes arrive.
    pub connection_count_interval: Duration,
    /// How often PENDING connections past their expire time are expired.
    pub expiry_sweep_interval: Duration,
}

impl Default for BackgroundSettings {
    fn default() -> Self {
        Self {
            health_check_interval: Duration::from_secs(1),
            request_id_retention: REQUEST_ID_RETENTION,
            request_id_sweep_interval: Duration::from_secs(10 * 60),
            connection_count_interval: Duration::from_secs(15),
            change_feed_poll_interval: Duration::from_millis(100),
            expiry_sweep_interval: Duration::from_secs(10),
        }
    }
}

/// How long request_id records are kept at least (SPEC section 4).
pub const REQUEST_ID_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// A duration: a whole number followed by `ms`, `s`, `m` or `h` (`s` if none),
/// at most [`MAX_DURATION`].
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let duration = parse_any_duration(value)?;
    if duration > MAX_DURATION {
        return Err(format!("{:?} is longer than a year", value.trim()));
    }
    Ok(duration)
}

/// A duration as [`parse_duration`] reads it, longer than zero: for
/// timeouts and intervals, where zero would close every connection at once
/// or tick without end.
pub fn parse_positive_duration(value: &str) -> Result<Duration, String> {
    let duration = parse_duration(value)?;
    if duration.is_zero() {
        return Err(format!("{:?} is zero: it must be longer", value.trim()));
    }
    Ok(duration)
}

fn parse_any_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{value:?} is not a duration such as 10s, 500ms, 2m or 30d"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "" | "s" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number.saturating_mul(60))),
        "h" => Ok(Duration::from_secs(number.saturating_mul(3600))),
        "d" => Ok(Duration::from_secs(number.saturating_mul(24 * 3600))),
        _ => Err(format!(
            "{value:?} is not a duration such as 10s, 500ms, 2m or 30d"
        )),
    }
}

/// An address to listen on: `IP:PORT`, or `HOST:PORT` with a host name that
/// resolves (its first IPv4 address is taken, else its first address).
fn parse_listen(value: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = value.parse() {
        return Ok(addr);
    }
    let usage = "an address and a port, e.g. 127.0.0.1:50051, [::1]:50051 or localhost:50051";
    if !value.contains(':') {
        return Err(format!("{value:?} has no port: give {usage}"));
    }
    let addrs: Vec<SocketAddr> = value
        .to_socket_addrs()
        .map_err(|err| format!("cannot resolve {value:?} ({err}): give {usage}"))?
        .collect();
    // An IPv4 address first: `localhost` then means 127.0.0.1, the address
    // the quick start and most clients use, even where it resolves to ::1
    // first.
    addrs
        .iter()
        .find(|addr| addr.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("{value:?} resolves to no address: give {usage}"))
}

/// `--port`, which does not exist: refused with the option to use instead.
fn no_port_option(_: &str) -> Result<u16, String> {
    Err(
        "there is no --port option; give the address and port together with --listen, e.g. \
         --listen 127.0.0.1:50051"
            .to_owned(),
    )
}

/// An origin a browser may call from: `http(s)://host[:port]`, surrounding
/// spaces trimmed, in its serialized form. A wildcard would let any site
/// call the API with a user's key, and `null` admits sandboxed frames and
/// local files: both are refused, as is anything that is not an origin.
fn parse_origin(value: &str) -> Result<String, String> {
    let value = value.trim();
    match value {
        "*" => return Err("a wildcard origin is not allowed: list each origin".to_owned()),
        "null" => return Err("the origin null is not allowed".to_owned()),
        _ => {}
    }
    let not_an_origin = || format!("{value:?} is not an origin of the form scheme://host[:port]");
    let url = url::Url::parse(value).map_err(|_| not_an_origin())?;
    let bare = url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && !value.ends_with('/')
        && url.query().is_none()
        && url.fragment().is_none();
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() || !bare {
        return Err(not_an_origin());
    }
    Ok(url.origin().ascii_serialization())
}

/// Parses the admin token with [`parse_admin_token`]; its errors, unlike
/// clap's own, do not quote the value.
#[derive(Debug, Clone, Copy)]
struct AdminTokenParser;

impl clap::builder::TypedValueParser for AdminTokenParser {
    type Value = SecretString;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<SecretString, clap::Error> {
        use clap::error::ErrorKind;
        let refuse =
            |kind, message: &str| clap::Error::raw(kind, format!("{message}\n")).with_cmd(cmd);
        let value = value
            .to_str()
            .ok_or_else(|| refuse(ErrorKind::InvalidUtf8, "the admin token is not UTF-8"))?;
        parse_admin_token(value).map_err(|message| refuse(ErrorKind::ValueValidation, &message))
    }
}

/// The admin token, trimmed: at least [`MIN_ADMIN_TOKEN_LEN`] characters,
/// so that it cannot be guessed online.
fn parse_admin_token(value: &str) -> Result<SecretString, String> {
    let value = value.trim();
    if value.chars().count() < MIN_ADMIN_TOKEN_LEN {
        return Err(format!(
            "the admin token must be at least {MIN_ADMIN_TOKEN_LEN} characters \
             (generate one with `openssl rand -hex 32`)"
        ));
    }
    Ok(SecretString::from(value.to_owned()))
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// `connections admin`.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// Database settings.
    #[command(flatten)]
    pub database: DatabaseSettings,

    /// The operation.
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// Operator commands. Each prints JSON, one object per line.
#[derive(Debug, Clone, Subcommand)]
pub enum AdminCommand {
    /// Create an organization.
    CreateOrg {
        /// Display name.
        #[arg(long)]
        name: String,
    },
    /// Create an API key for an organization; prints its secret, once.
    CreateKey {
        /// The organization's ID.
        #[arg(long)]
        org: String,
        /// Display name of the key.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Revoke an API key.
    RevokeKey {
        /// The key's ID.
        #[arg(long)]
        key: String,
    },
    /// For trying the service: on a database with no organizations yet,
    /// create two ("Acme Bank" and "Orbit Credit Union") with an API key
    /// each, and print them with their keys' secrets, one per line. Refused
    /// on a database that already has organizations.
    Quickstart,
    /// List every organization.
    ListOrgs,
    /// List an organization's API keys, revoked ones included (never their
    /// secrets).
    ListKeys {
        /// The organization's ID.
        #[arg(long)]
        org: String,
    },
    /// Print the audit log, oldest first, one JSON object per line: every
    /// organization created and API key created or revoked, and every change
    /// an organization made to its webhook endpoints, with the credential
    /// that did it.
    Audit {
        /// Only this action: organization.created, api_key.created,
        /// api_key.revoked, webhook_endpoint.created, webhook_endpoint.updated,
        /// webhook_endpoint.deleted, webhook_endpoint.secret_rotated or
        /// webhook_endpoint.deliveries_recovered.
        #[arg(long)]
        action: Option<String>,
        /// Only entries about this organization's, API key's or webhook
        /// endpoint's ID.
        #[arg(long)]
        target: Option<String>,
        /// Only entries made at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Only entries made before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
    },
}

impl AdminCommand {
    /// Whether the command only reads: it then never creates a database
    /// that does not exist, nor migrates one.
    pub fn reads_only(&self) -> bool {
        match self {
            Self::ListOrgs | Self::ListKeys { .. } | Self::Audit { .. } => true,
            Self::Quickstart
            | Self::CreateOrg { .. }
            | Self::CreateKey { .. }
            | Self::RevokeKey { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn admin_tokens_are_trimmed_and_need_32_characters() {
        use secrecy::ExposeSecret;
        let long = "a".repeat(MIN_ADMIN_TOKEN_LEN);
        assert_eq!(
            parse_admin_token(&format!(" {long}\n"))
                .unwrap()
                .expose_secret(),
            long
        );
        for short in ["", "change-me", &format!(" {} ", &long[1..])] {
            let err = parse_admin_token(short).unwrap_err();
            assert!(err.contains("at least 32 characters"), "{short:?}: {err}");
        }
    }

    #[test]
    fn command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_defaults_match_the_spec() {
        let cli = Cli::try_parse_from(["connections", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("expected serve");
        };
        assert_eq!(args.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(args.log_format, LogFormat::Pretty);
        assert!(args.dashboard, "the dashboard is on by default");
        let cli = Cli::try_parse_from(["connections", "serve", "--no-dashboard"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("expected serve");
        };
        assert!(!args.dashboard);
    }

    #[test]
    fn origins_repeat_and_tls_needs_a_key() {
        let cli = Cli::try_parse_from([
            "connections",
            "serve",
            "--cors-allow-origin",
            "https://a.example",
            "--cors-allow-origin",
            "https://b.example",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("expected serve");
        };
        assert_eq!(
            args.cors_allow_origins,
            ["https://a.example", "https://b.example"]
        );
        assert!(Cli::try_parse_from(["connections", "serve", "--tls-cert", "c.pem"]).is_err());
    }

    #[test]
    fn settings_without_options_are_the_defaults() {
        let settings = Settings::from_environment();
        assert_eq!(settings.listen.to_string(), DEFAULT_LISTEN);
        // SPEC section 4: request_id records are kept at least 24 hours.
        let retention = settings.background.request_id_retention;
        assert_eq!(retention, REQUEST_ID_RETENTION);
        assert!(retention >= Duration::from_secs(24 * 60 * 60));
        assert!(retention <= Duration::from_secs(48 * 60 * 60));
    }

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            redact("postgres://app:s3cret@db.internal:5432/connections"),
            "postgres://***@db.internal:5432/connections"
        );
        assert_eq!(
            redact("sqlite://connections.db?mode=rwc"),
            "sqlite://connections.db?mode=rwc"
        );
        assert!(!redact("postgres://app:p%40ss@h/db").contains("ss"));
        let query = redact("postgres://h/db?sslmode=require&password=s3cret");
        assert!(!query.contains("s3cret"), "{query}");
        assert!(query.contains("sslmode=require"), "{query}");
        assert!(!format!("{:?}", DatabaseSettings::new("postgres://u:pw@h/db")).contains("pw"));
    }

    #[test]
    fn origins_are_trimmed_and_wildcards_null_and_non_origins_refused() {
        let parse = |value: &str| {
            Cli::try_parse_from(["connections", "serve", "--cors-allow-origin", value]).map(|cli| {
                let Command::Serve(args) = cli.command else {
                    panic!("expected serve");
                };
                args.cors_allow_origins
            })
        };
        assert_eq!(
            parse("https://a.example, https://b.example:8443").unwrap(),
            ["https://a.example", "https://b.example:8443"]
        );
        assert_eq!(parse("HTTPS://A.Example").unwrap(), ["https://a.example"]);
        for bad in [
            "*",
            "null",
            "a.example",
            "https://a.example/",
            "https://a.example/path",
            "https://user@a.example",
            "ftp://a.example",
            "https://a.example?x=1",
            "",
        ] {
            let err = parse(bad).expect_err(bad);
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{bad}");
            assert_eq!(err.exit_code(), 2, "{bad}");
        }
    }

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        for bad in ["", "s", "1w", "-1s", "1.5s", "400d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Settings::from_environment().shutdown_timeout,
            Duration::from_secs(10)
        );
    }

    /// `connections serve` with `args`, or clap's error.
    fn serve(args: &[&str]) -> Result<Settings, clap::Error> {
        let cli = Cli::try_parse_from(["connections", "serve"].iter().chain(args))?;
        let Command::Serve(settings) = cli.command else {
            panic!("expected serve");
        };
        Ok(*settings)
    }

    #[test]
    fn zero_timeouts_and_intervals_are_refused_naming_the_flag() {
        for flag in [
            "--handshake-timeout",
            "--http2-keepalive-interval",
            "--http2-keepalive-timeout",
            "--watch-heartbeat-interval",
            "--idle-connection-timeout",
        ] {
            for zero in ["0", "0s", "0ms"] {
                let err = serve(&[flag, zero]).expect_err(flag);
                assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
                assert_eq!(err.exit_code(), 2);
                let message = err.to_string();
                assert!(message.contains(flag), "{message}");
                assert!(message.contains("zero"), "{message}");
            }
            assert!(serve(&[flag, "1ms"]).is_ok(), "{flag}");
        }
        // Zero means "end the calls in flight at once": allowed.
        assert_eq!(
            serve(&["--shutdown-timeout", "0s"])
                .unwrap()
                .shutdown_timeout,
            Duration::ZERO
        );
    }

    #[test]
    fn durations_over_a_year_are_refused() {
        assert_eq!(parse_duration("8760h"), Ok(MAX_DURATION));
        for huge in ["8761h", "18446744073709551615s", "99999999999999999999h"] {
            let err = parse_duration(huge).unwrap_err();
            assert!(
                err.contains("longer than a year") || err.contains("not a duration"),
                "{err}"
            );
        }
        let err = serve(&["--handshake-timeout", "18446744073709551615s"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn the_idle_timeout_defaults_to_five_minutes() {
        let settings = serve(&[]).unwrap();
        assert_eq!(settings.idle_connection_timeout, Duration::from_secs(300));
        let settings = serve(&["--idle-connection-timeout", "90s"]).unwrap();
        assert_eq!(settings.idle_connection_timeout, Duration::from_secs(90));
    }

    #[test]
    fn one_address_may_hold_a_quarter_of_the_connections_by_default() {
        let limit = |args: &[&str]| serve(args).unwrap().connections_per_peer();
        assert_eq!(limit(&[]), Some(250));
        assert_eq!(limit(&["--max-client-connections", "40"]), Some(10));
        assert_eq!(limit(&["--max-client-connections", "3"]), Some(1));
        assert_eq!(limit(&["--max-connections-per-peer", "7"]), Some(7));
        assert_eq!(limit(&["--max-connections-per-peer", "0"]), None);
    }

    #[test]
    fn admin_create_key_parses() {
        let cli = Cli::try_parse_from([
            "connections",
            "admin",
            "create-key",
            "--org",
            "x",
            "--name",
            "ci",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Admin(AdminArgs {
                command: AdminCommand::CreateKey { .. },
                ..
            })
        ));
    }
}
