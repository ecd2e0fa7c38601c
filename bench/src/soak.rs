//! The soak: the service on PostgreSQL under a steady, moderate, mixed load
//! for a long while (10 minutes by default), to show whether it stays sound:
//! no unexpected errors, and memory, file descriptors and database pool flat
//! once warmed up. Speed is not the point; the load is a fixed number of
//! calls in flight.
//!
//! The mix: GetConnection reads, ListConnections pages, transitions
//! (activate, deactivate, reactivate, round and round), CreateConnection
//! (of new connections during warm-up, then of ones that exist, refused with
//! ALREADY_EXISTS, so that the data stops growing),
//! calls with bad API keys (random well-formed ones, a few repeated unknown
//! ones, malformed ones), and calls the client cancels mid-flight (a very
//! short deadline sent to the server, or the call dropped by the client).
//! Refusals of bad keys (UNAUTHENTICATED, or UNAVAILABLE with
//! AUTHENTICATION_THROTTLED once unknown keys come faster than the server
//! looks them up) and cancelled calls are expected outcomes, counted apart;
//! anything else that is not a correct answer is an unexpected error, and any
//! unexpected error fails the run.
//!
//! Every minute it prints the calls by kind and outcome, the unexpected
//! errors, the server's RSS and open file descriptors, its database pool
//! (from its Prometheus endpoint) and its PostgreSQL sessions. At the end it
//! checks that every connection made through the API has one event per
//! version, ending in its state, counts the server log's warnings and errors,
//! and judges whether RSS and file descriptors stayed within 10% of their
//! level after warm-up (the end of minute 2).

use std::{
    collections::BTreeMap,
    hash::BuildHasher,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use connections::{
    config::parse_duration,
    proto::{
        ConnectionState, CreateConnectionRequest, DataType, GetConnectionRequest,
        ListConnectionsRequest,
    },
};
use hdrhistogram::Histogram;
use sea_orm::ConnectionTrait;
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::watch,
    time::Instant,
};
use tonic::{Code, metadata::AsciiMetadataValue};

use crate::{
    ADMIN_TOKEN,
    load::{self, Call, CallResult, Window, closed_loop},
    process::{self, Server, free_address},
    report,
    seed::{self, Bulk, Caller},
    workload::{self, Target},
};

/// The soak's database, created and dropped on the PostgreSQL server.
const SOAK_DATABASE: &str = "connections_soak";
/// Connections of the organization the reads go to.
const READ_CONNECTIONS: u64 = 10_000;
/// Bulk organizations: the destinations of the CreateConnection calls.
const ORGANIZATIONS: u64 = 200_000;
/// More CreateConnection calls per second than any run is expected to make:
/// each creating organization connects to every bulk organization once, and
/// there are enough of them for this rate over the whole run.
const MOST_CREATES_PER_SECOND: u64 = 2_000;
/// Organizations on each side of the transitions' connections.
const WRITE_POOL_SIDE: usize = 16;
/// How often the database pool is sampled between rows.
const POOL_SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// How CreateConnection of a connection that exists is refused.
const EXISTS: &str = "AlreadyExists/ERROR_REASON_CONNECTION_ALREADY_EXISTS";
/// How far RSS and open file descriptors may move after warm-up.
const TOLERANCE: f64 = 0.10;

/// Options of `bench soak`.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakOptions {
    /// How long to load the server: `10m`, `90s`, `2h`.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    duration: Duration,
    /// Calls in flight (closed loop: each caller sends its next call when the
    /// last one returns).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// HTTP/2 connections the calls are spread over.
    #[arg(long, default_value_t = 4)]
    channels: usize,
    #[command(flatten)]
    setup: crate::Setup,
    /// Where to write the rows and the summary as JSON.
    #[arg(long, default_value = "target/bench/soak.json")]
    output: PathBuf,
    /// How often a row is printed (for trying the harness out quickly).
    #[arg(long, default_value = "1m", value_parser = parse_duration, hide = true)]
    row_every: Duration,
}

/// Runs the soak; fails if any call had an unexpected outcome.
pub async fn run(options: SoakOptions) -> anyhow::Result<()> {
    anyhow::ensure!(
        !options.duration.is_zero() && !options.row_every.is_zero(),
        "--duration must be positive"
    );
    let server_bin = crate::server_binary(options.setup.server_bin.as_deref())?;
    let work = std::env::temp_dir().join(format!("connections-soak-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let (admin, url) = crate::create_database(&options.setup.postgres_url, SOAK_DATABASE)
        .await
        .context("pass --postgres-url")?;
    let result = soak(&options, &server_bin, &work, &url).await;
    crate::drop_database(&admin, SOAK_DATABASE).await?;
    let summary = result.inspect_err(|_| {
        eprintln!("the server's log is kept in {}", work.display());
    })?;

    if let Some(dir) = options.output.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&options.output, serde_json::to_string_pretty(&summary)?)?;
    eprintln!("results written to {}", options.output.display());
    if summary.unexpected_errors.is_empty() {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        eprintln!("the server's log is kept in {}", work.display());
    }
    let total: u64 = summary.unexpected_errors.values().sum();
    anyhow::ensure!(
        total == 0,
        "{total} unexpected error(s): {}",
        report::by_reason(&summary.unexpected_errors)
    );
    anyhow::ensure!(summary.calls > 0, "no call was made");
    Ok(())
}

/// Starts the server, seeds, loads it for the duration while printing a row
/// per interval, and prints the table and the summary.
async fn soak(
    options: &SoakOptions,
    server_bin: &Path,
    work: &Path,
    url: &str,
) -> anyhow::Result<Summary> {
    let address = free_address()?;
    let metrics = free_address()?;
    let mut command = crate::service_command(server_bin, address, url);
    command.arg("--metrics-listen").arg(metrics.to_string());
    let log = work.join("server-soak.log");
    let server = Server::start("server (postgres)", command, address, &log).await?;
    server.serving(crate::SERVING_TIMEOUT).await?;
    let pid = server.pid().context("the server exited")?;
    let target = Target::connect(&server.url(), options.channels).await?;
    let mix = Arc::new(seed_mix(&target, url, options.row_every).await?);

    eprintln!(
        "soak: {} calls in flight over {} HTTP/2 connections for {} s, a row every {} s",
        options.concurrency,
        options.channels,
        options.duration.as_secs(),
        options.row_every.as_secs_f64()
    );
    let postgres = connections::db::connect(&connections::config::DatabaseSettings::new(
        options.setup.postgres_url.clone(),
    ))
    .await?;
    let autovacuum = postgres
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT current_setting('autovacuum') AS on",
        ))
        .await?
        .context("no autovacuum setting")?
        .try_get::<String>("", "on")?;
    let vacuum = if autovacuum == "off" {
        eprintln!("soak: autovacuum is off on this server: the soak vacuums its tables every row");
        Some(
            connections::db::connect(&connections::config::DatabaseSettings::new(url.to_owned()))
                .await?,
        )
    } else {
        None
    };
    let vacuumed_by_harness = vacuum.is_some();
    let watched = Watched {
        pid,
        metrics,
        tally: mix.tally.clone(),
        postgres,
        vacuum,
    };
    eprintln!("{}", header());
    let start = Instant::now();
    let _ = mix.warmup_end.set(start + options.row_every);
    let (done, finished) = watch::channel(false);
    let monitor = tokio::spawn(monitor(
        watched,
        start,
        options.duration,
        options.row_every,
        finished,
    ));
    let load = closed_loop(
        mixed(mix.clone()),
        options.concurrency,
        Window {
            warmup: Duration::ZERO,
            duration: options.duration,
        },
    )
    .await;
    let _ = done.send(true);
    let rows = monitor.await?;
    let peak_rss_mib = server.peak_rss_mib();
    server.stop().await?;

    let mut summary = Summary::new(options, rows, load.errors, peak_rss_mib);
    summary.server_log = warnings_and_errors(&log)?;
    summary.vacuumed_by_harness = vacuumed_by_harness;
    let histories = check_histories(url).await?;
    for (what, n) in [
        (
            "history: events do not match the version",
            histories.version_mismatch,
        ),
        (
            "history: last event not in the current state",
            histories.state_mismatch,
        ),
    ] {
        if n > 0 {
            summary.unexpected_errors.insert(what.to_owned(), n);
        }
    }
    summary.histories = Some(histories);
    summary.print();
    Ok(summary)
}

/// What a call can come to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// A correct answer.
    Ok,
    /// A bad key refused with UNAUTHENTICATED.
    Refused,
    /// A bad key refused with UNAVAILABLE / AUTHENTICATION_THROTTLED.
    Throttled,
    /// A call to be cancelled that finished first, correctly.
    Completed,
    /// A call dropped by the client before it finished.
    Dropped,
    /// A call ended by its deadline (CANCELLED or DEADLINE_EXCEEDED).
    Deadline,
    /// Anything else: the reason.
    Unexpected(String),
}

/// The kinds of call in the mix, with their shares in percent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Get,
    List,
    Transition,
    Create,
    BadKey,
    Cancelled,
}

const MIX: [(Kind, u64); 6] = [
    (Kind::Get, 40),
    (Kind::List, 15),
    (Kind::Transition, 20),
    (Kind::Create, 10),
    (Kind::BadKey, 7),
    (Kind::Cancelled, 8),
];

impl Kind {
    /// The kind of a call whose random number is `r`.
    fn of(r: u64) -> Self {
        let mut point = r % MIX.iter().map(|(_, share)| share).sum::<u64>();
        for (kind, share) in MIX {
            if point < share {
                return kind;
            }
            point -= share;
        }
        unreachable!("the shares add up to the total")
    }

    fn name(self) -> &'static str {
        match self {
            Self::Get => "GetConnection",
            Self::List => "ListConnections",
            Self::Transition => "transition",
            Self::Create => "CreateConnection",
            Self::BadKey => "bad key",
            Self::Cancelled => "cancelled",
        }
    }
}

/// SplitMix64: a fast, well-mixed 64-bit hash of `x`.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `n` base64url characters drawn from `r`.
fn base64url(mut r: u64, n: usize) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    (0..n)
        .map(|_| {
            r = splitmix(r);
            char::from(ALPHABET[(r >> 58) as usize])
        })
        .collect()
}

/// Unknown well-formed keys presented again and again (the server remembers
/// them as unknown, and refuses them without a lookup).
const REPEATED_UNKNOWN_KEYS: u64 = 8;

/// A secret that is no API key, drawn from `r` (`seed` fixes the repeated ones).
fn bad_secret(r: u64, seed: u64) -> String {
    match r % 10 {
        // Well-formed and new: a database lookup, rate limited by the server.
        0..=3 => format!("cnx_{}", base64url(r, 43)),
        // Well-formed, one of a few presented again and again.
        4 | 5 => format!(
            "cnx_{}",
            base64url(seed ^ ((r >> 8) % REPEATED_UNKNOWN_KEYS), 43)
        ),
        // Malformed: too short, a character outside base64url, another prefix.
        6 => format!("cnx_{}", base64url(r, 42)),
        7 => format!("cnx_{}.", base64url(r, 42)),
        8 => format!("key_{}", base64url(r, 43)),
        // Nothing after "Bearer ".
        _ => String::new(),
    }
}

/// The calls of the mix, and what they came to in the current row.
struct Mix {
    target: Target,
    /// The organization the reads are made by.
    reader: Caller,
    /// Its connections.
    ids: Arc<Vec<String>>,
    get: Call,
    /// First page, pages in the middle and near the end (reached by their
    /// tokens), and the PENDING-only page.
    lists: Vec<Call>,
    cycles: Call,
    /// CreateConnection of a new connection, one call per creating
    /// organization: during warm-up.
    creates: Vec<Call>,
    next_create: AtomicU64,
    /// When warm-up ends, and with it the making of new connections: set when
    /// the load starts.
    warmup_end: std::sync::OnceLock<Instant>,
    /// Picks each call's kind and details.
    seed: u64,
    tally: Arc<Mutex<Tally>>,
}

/// Makes the organizations, keys and connections the mix uses.
async fn seed_mix(target: &Target, url: &str, warmup: Duration) -> anyhow::Result<Mix> {
    let channel = target.channel(0);
    let reader = seed::caller(channel.clone(), ADMIN_TOKEN, "Soak reader").await?;
    eprintln!(
        "soak: seeding {ORGANIZATIONS} organizations and {READ_CONNECTIONS} connections to read"
    );
    let db = connections::db::connect(&connections::config::DatabaseSettings::new(url.to_owned()))
        .await?;
    let bulk = Bulk {
        organizations: ORGANIZATIONS,
        small_count: READ_CONNECTIONS,
        large_count: 0,
    };
    seed::bulk(&db, bulk, &reader, &reader).await?;
    db.close().await?;

    let creators = 1 + (warmup.as_secs() * MOST_CREATES_PER_SECOND).div_ceil(ORGANIZATIONS);
    let mut creates = Vec::new();
    for i in 0..creators {
        let creator =
            seed::caller(channel.clone(), ADMIN_TOKEN, &format!("Soak creator {i}")).await?;
        creates.push(workload::create(
            target.clone(),
            creator.key,
            ORGANIZATIONS,
            |n| seed::organization_id(n + 1),
        ));
    }
    eprintln!(
        "soak: {} connections to cycle through transitions",
        WRITE_POOL_SIDE * WRITE_POOL_SIDE
    );
    let pool = crate::write_pool(target, WRITE_POOL_SIDE).await?;

    let mut lists = vec![workload::list(
        target.clone(),
        reader.key.clone(),
        50,
        String::new(),
    )];
    for depth in [READ_CONNECTIONS / 2, READ_CONNECTIONS * 9 / 10] {
        let token = crate::deep_token(target, &reader, depth).await?;
        lists.push(workload::list(
            target.clone(),
            reader.key.clone(),
            50,
            token,
        ));
    }
    lists.push(workload::list_in_state(
        target.clone(),
        reader.key.clone(),
        50,
        ConnectionState::Pending,
        usize::try_from(seed::PENDING_PER_ORGANIZATION)?,
    ));

    let ids: Arc<Vec<String>> = Arc::new((1..=READ_CONNECTIONS).map(seed::connection_id).collect());
    Ok(Mix {
        target: target.clone(),
        get: workload::get(target.clone(), reader.key.clone(), ids.clone()),
        reader,
        ids,
        lists,
        cycles: workload::cycles(target.clone(), pool),
        creates,
        next_create: AtomicU64::new(0),
        warmup_end: std::sync::OnceLock::new(),
        seed: std::collections::hash_map::RandomState::new().hash_one(std::process::id()),
        tally: Arc::new(Mutex::new(Tally::new())),
    })
}

/// The mix as one [`Call`]: each call picks its kind, makes it, tallies what
/// it came to, and fails only on an unexpected outcome.
fn mixed(mix: Arc<Mix>) -> Call {
    load::call(move |i| {
        let mix = mix.clone();
        async move { mix.one(i).await }
    })
}

impl Mix {
    async fn one(&self, i: u64) -> CallResult {
        let r = splitmix(self.seed ^ i);
        let kind = Kind::of(r);
        // Details (which list, which bad key, how soon to cancel) from other bits.
        let detail = splitmix(r);
        let sent = Instant::now();
        let seen = match kind {
            Kind::Get => answer((self.get)(i).await),
            Kind::List => answer((self.lists[detail as usize % self.lists.len()])(i).await),
            Kind::Transition => answer((self.cycles)(i).await),
            Kind::Create => answer(self.create(i).await),
            Kind::BadKey => self.bad_key(i, detail).await,
            Kind::Cancelled if detail.is_multiple_of(2) => self.dropped(i, detail >> 1).await,
            Kind::Cancelled => self.deadline(i, detail >> 1).await,
        };
        let result = match &seen {
            Seen::Unexpected(reason) => Err(format!("{}: {reason}", kind.name())),
            _ => Ok(()),
        };
        self.tally
            .lock()
            .unwrap()
            .record(kind, seen, sent.elapsed());
        result
    }

    /// A CreateConnection. During warm-up, a new connection, made by the
    /// next creating organization. After it, one the reader already has,
    /// which must be refused with ALREADY_EXISTS: the data stops growing, so
    /// that memory after warm-up shows leaks, not data (the CheckAccess index
    /// keeps every connection made).
    async fn create(&self, i: u64) -> CallResult {
        if self
            .warmup_end
            .get()
            .is_none_or(|end| Instant::now() < *end)
        {
            let n = self.next_create.fetch_add(1, Ordering::Relaxed);
            return self.creates[(n % self.creates.len() as u64) as usize](i).await;
        }
        let n = 1 + workload::scatter(i, self.ids.len()) as u64;
        let request = workload::authorized(
            CreateConnectionRequest {
                message: String::new(),
                destination_organization_id: seed::organization_id(n),
                data_types: vec![DataType::Inquiry.into()],
                request_id: String::new(),
            },
            &self.reader.key,
        );
        match self.target.connections(i).create_connection(request).await {
            Err(status) if load::code_of(&status) == EXISTS => Ok(()),
            Err(status) => Err(load::code_of(&status)),
            Ok(_) => Err("made a second connection to one destination".to_owned()),
        }
    }

    /// GetConnection or a first ListConnections page with a bad key: it must
    /// be refused.
    async fn bad_key(&self, i: u64, detail: u64) -> Seen {
        let key = workload::bearer(&bad_secret(detail >> 1, self.seed));
        let call = if detail.is_multiple_of(2) {
            workload::get(self.target.clone(), key, self.ids.clone())
        } else {
            workload::list(self.target.clone(), key, 50, String::new())
        };
        match call(i).await {
            Ok(()) => Seen::Unexpected("a bad key was accepted".to_owned()),
            Err(reason) if reason.starts_with("Unauthenticated") => Seen::Refused,
            Err(reason) if reason == "Unavailable/ERROR_REASON_AUTHENTICATION_THROTTLED" => {
                Seen::Throttled
            }
            Err(reason) => Seen::Unexpected(reason),
        }
    }

    /// A GetConnection, a ListConnections page or a CreateConnection dropped
    /// by the client after 0.2 to 10 ms, if it has not finished by then.
    async fn dropped(&self, i: u64, detail: u64) -> Seen {
        let call = match detail % 3 {
            0 => (self.get)(i),
            1 => self.lists[(detail >> 2) as usize % self.lists.len()](i),
            _ => Box::pin(self.create(i)),
        };
        let patience = Duration::from_micros(200 + (detail >> 8) % 9_800);
        match tokio::time::timeout(patience, call).await {
            Err(_) => Seen::Dropped,
            Ok(Ok(())) => Seen::Completed,
            Ok(Err(reason)) => Seen::Unexpected(reason),
        }
    }

    /// A GetConnection or a first ListConnections page with a deadline of
    /// 0.1 to 3 ms, sent to the server (`grpc-timeout`) and kept by the client.
    async fn deadline(&self, i: u64, detail: u64) -> Seen {
        let mut client = self.target.connections(i);
        let deadline = Duration::from_micros(100 + (detail >> 8) % 2_900);
        let result = if detail.is_multiple_of(2) {
            let id = self.ids[workload::scatter(i, self.ids.len())].clone();
            let request = with_deadline(
                GetConnectionRequest {
                    connection_id: id.clone(),
                },
                &self.reader.key,
                deadline,
            );
            client
                .get_connection(request)
                .await
                .map(|reply| reply.into_inner().connection.is_some_and(|c| c.id == id))
        } else {
            let request = with_deadline(
                ListConnectionsRequest {
                    page_size: 50,
                    ..Default::default()
                },
                &self.reader.key,
                deadline,
            );
            client
                .list_connections(request)
                .await
                .map(|reply| reply.into_inner().connections.len() == 50)
        };
        match result {
            Ok(true) => Seen::Completed,
            Ok(false) => Seen::Unexpected("bad response".to_owned()),
            Err(status) if matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded) => {
                Seen::Deadline
            }
            Err(status) => Seen::Unexpected(load::code_of(&status)),
        }
    }
}

/// `message` with the caller's credential and a deadline.
fn with_deadline<T>(message: T, key: &AsciiMetadataValue, deadline: Duration) -> tonic::Request<T> {
    let mut request = workload::authorized(message, key);
    request.set_timeout(deadline);
    request
}

/// What the histories of the connections made through the API show.
#[derive(Debug, Clone, Copy, Serialize)]
struct Histories {
    /// Connections made through the API (the bulk ones have no history).
    connections: u64,
    /// Those whose number of events is not their version (one event when
    /// made, one per transition).
    version_mismatch: u64,
    /// Those whose last event did not leave them in their current state.
    state_mismatch: u64,
}

/// Checks, once the load is over, that every connection made through the
/// API has one event per version and that its last event ends in its state.
async fn check_histories(url: &str) -> anyhow::Result<Histories> {
    use sea_orm::ConnectionTrait;

    let db = connections::db::connect(&connections::config::DatabaseSettings::new(url.to_owned()))
        .await?;
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!(
                "SELECT count(*)::bigint, \
                 (count(*) FILTER (WHERE c.version <> h.events))::bigint, \
                 (count(*) FILTER (WHERE h.last_state IS DISTINCT FROM c.state))::bigint \
                 FROM connections c CROSS JOIN LATERAL ( \
                   SELECT count(*) AS events, \
                   (array_agg(e.to_state ORDER BY e.sequence DESC))[1] AS last_state \
                   FROM connection_events e WHERE e.connection_id = c.id) h \
                 WHERE c.id::text NOT LIKE '{}%'",
                &seed::connection_id(0)[..9]
            ),
        ))
        .await?
        .context("no row")?;
    db.close().await?;
    let count =
        |i: usize| -> anyhow::Result<u64> { Ok(u64::try_from(row.try_get_by_index::<i64>(i)?)?) };
    Ok(Histories {
        connections: count(0)?,
        version_mismatch: count(1)?,
        state_mismatch: count(2)?,
    })
}

/// The server log's warnings and errors, counted by level and message.
fn warnings_and_errors(log: &Path) -> anyhow::Result<BTreeMap<String, u64>> {
    use std::io::BufRead;

    let mut counts = BTreeMap::new();
    let file = std::fs::File::open(log).with_context(|| format!("reading {log:?}"))?;
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        if !(line.contains(r#""level":"WARN""#) || line.contains(r#""level":"ERROR""#)) {
            continue;
        }
        let entry = serde_json::from_str::<serde_json::Value>(&line).unwrap_or_default();
        let field = |name: &str| entry.get(name).and_then(|v| v.as_str()).unwrap_or("?");
        *counts
            .entry(format!("{} {}", field("level"), field("message")))
            .or_default() += 1;
    }
    Ok(counts)
}

/// A call that must answer correctly.
fn answer(result: CallResult) -> Seen {
    match result {
        Ok(()) => Seen::Ok,
        Err(reason) => Seen::Unexpected(reason),
    }
}

/// What the calls came to since the last row.
struct Tally {
    /// Calls by kind, in [`MIX`] order.
    calls: [u64; MIX.len()],
    refused: u64,
    throttled: u64,
    completed: u64,
    dropped: u64,
    deadline: u64,
    /// Unexpected outcomes by kind and reason.
    errors: BTreeMap<String, u64>,
    /// Latency of the correct answers (the four kinds that must answer), µs.
    latency: Histogram<u64>,
}

impl Tally {
    fn new() -> Self {
        Self {
            calls: [0; MIX.len()],
            refused: 0,
            throttled: 0,
            completed: 0,
            dropped: 0,
            deadline: 0,
            errors: BTreeMap::new(),
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
        }
    }

    fn record(&mut self, kind: Kind, seen: Seen, elapsed: Duration) {
        let index = MIX
            .iter()
            .position(|(k, _)| *k == kind)
            .expect("in the mix");
        self.calls[index] += 1;
        match seen {
            Seen::Ok => {
                let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
                self.latency.saturating_record(micros.max(1));
            }
            Seen::Refused => self.refused += 1,
            Seen::Throttled => self.throttled += 1,
            Seen::Completed => self.completed += 1,
            Seen::Dropped => self.dropped += 1,
            Seen::Deadline => self.deadline += 1,
            Seen::Unexpected(reason) => {
                *self
                    .errors
                    .entry(format!("{}: {reason}", kind.name()))
                    .or_default() += 1;
            }
        }
    }
}

/// The server being watched, and the tally of the calls made to it.
struct Watched {
    pid: u32,
    metrics: SocketAddr,
    tally: Arc<Mutex<Tally>>,
    /// The PostgreSQL server, to count the sessions on the soak's database.
    postgres: sea_orm::DatabaseConnection,
    /// The soak's database, when the harness must vacuum it (see
    /// [`VACUUM`]).
    vacuum: Option<sea_orm::DatabaseConnection>,
}

/// Run on the soak's database every row when the PostgreSQL server's
/// autovacuum is off, as autovacuum would (its default naptime is a
/// minute): the transitions rewrite the same rows all the time, and their
/// dead versions would otherwise pile up and slow every call.
const VACUUM: &str = "VACUUM (ANALYZE) connections, connection_events, idempotency_records";

/// The server's sessions on the soak's database.
#[derive(Debug, Clone, Copy, Serialize)]
struct Sessions {
    /// All of them.
    open: u64,
    /// Those idle inside a transaction for more than a second: a transaction
    /// nobody is finishing.
    stuck_in_transaction: u64,
}

/// Reads the server's sessions from `pg_stat_activity`.
async fn sessions(postgres: &sea_orm::DatabaseConnection) -> Option<Sessions> {
    use sea_orm::ConnectionTrait;

    let row = postgres
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!(
                "SELECT count(*)::bigint, (count(*) FILTER (WHERE state = 'idle in transaction' \
                 AND state_change < now() - interval '1 second'))::bigint \
                 FROM pg_stat_activity WHERE datname = '{SOAK_DATABASE}'"
            ),
        ))
        .await
        .ok()??;
    let count = |i: usize| u64::try_from(row.try_get_by_index::<i64>(i).ok()?).ok();
    Some(Sessions {
        open: count(0)?,
        stuck_in_transaction: count(1)?,
    })
}

/// Sessions ever established on the soak's database (PostgreSQL 14 and
/// later), from `pg_stat_database`.
async fn sessions_established(postgres: &sea_orm::DatabaseConnection) -> Option<u64> {
    use sea_orm::ConnectionTrait;

    let row = postgres
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!(
                "SELECT sessions::bigint FROM pg_stat_database WHERE datname = '{SOAK_DATABASE}'"
            ),
        ))
        .await
        .ok()??;
    u64::try_from(row.try_get_by_index::<i64>(0).ok()?).ok()
}

/// The database pool as the server reports it.
#[derive(Debug, Clone, Copy, Serialize)]
struct Pool {
    idle: f64,
    in_use: f64,
}

/// What the server's Prometheus endpoint says, as far as the soak reads it.
#[derive(Debug, Clone, Copy, Default)]
struct Scraped {
    /// `db_pool_connections`.
    pool: Option<Pool>,
    /// `access_index_connections`: connections the server keeps in memory
    /// for CheckAccess (absent from servers without that index).
    access_index: Option<f64>,
}

/// Reads the server's Prometheus endpoint.
async fn scrape_metrics(metrics: SocketAddr) -> Scraped {
    let Ok(Ok(text)) = tokio::time::timeout(Duration::from_secs(5), scrape(metrics)).await else {
        return Scraped::default();
    };
    let pool = || {
        Some(Pool {
            idle: gauge(&text, r#"db_pool_connections{state="idle"}"#)?,
            in_use: gauge(&text, r#"db_pool_connections{state="in_use"}"#)?,
        })
    };
    Scraped {
        pool: pool(),
        access_index: gauge(&text, "access_index_connections"),
    }
}

/// GET /metrics, over plain HTTP/1.0.
pub(crate) async fn scrape(metrics: SocketAddr) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(metrics).await?;
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {metrics}\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no end of the headers")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "{head}"
    );
    Ok(body.to_owned())
}

/// The value of the sample `name` (with its labels) in Prometheus text.
pub(crate) fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
}

/// One row: what happened in one interval, and the server at its end.
#[derive(Debug, Clone, Serialize)]
struct Row {
    /// Minutes since the load started, at the row's end.
    minute: f64,
    /// Calls by kind.
    calls: BTreeMap<&'static str, u64>,
    calls_per_second: f64,
    bad_key_refused: u64,
    bad_key_throttled: u64,
    cancelled_dropped: u64,
    cancelled_by_deadline: u64,
    cancelled_but_completed: u64,
    /// Latency of the correct answers, ms.
    p50_ms: f64,
    p99_ms: f64,
    /// Unexpected outcomes by kind and reason.
    errors: BTreeMap<String, u64>,
    /// The server's resident memory (VmRSS), MiB.
    rss_mib: Option<f64>,
    /// The server's open file descriptors.
    fds: Option<usize>,
    /// Those of them that are sockets (gRPC, metrics and database
    /// connections, and the listeners).
    sockets: Option<usize>,
    /// Connections in the server's in-memory CheckAccess index: memory that
    /// grows with the data, not with time.
    access_index_connections: Option<f64>,
    /// The server's database pool at the row's end.
    pool: Option<Pool>,
    /// Most pool connections in use among the samples of the interval.
    pool_in_use_max: Option<f64>,
    /// The server's PostgreSQL sessions at the row's end.
    sessions: Option<Sessions>,
    /// PostgreSQL sessions established on the soak's database in the interval
    /// (each one a new backend process: the pools' churn).
    sessions_opened: Option<u64>,
    /// Most sessions stuck in a transaction among the samples of the interval.
    stuck_in_transaction_max: Option<u64>,
}

impl Row {
    fn total(&self) -> u64 {
        self.calls.values().sum()
    }
}

/// Prints a row per interval until the load has ended; returns the rows.
async fn monitor(
    watched: Watched,
    start: Instant,
    duration: Duration,
    row_every: Duration,
    mut finished: watch::Receiver<bool>,
) -> Vec<Row> {
    let end = start + duration;
    let mut rows = Vec::new();
    let mut row_start = start;
    let mut last_take = start;
    let mut established = sessions_established(&watched.postgres).await;
    loop {
        let row_end = (row_start + row_every).min(end);
        let mut in_use_max: Option<f64> = None;
        let mut stuck_max: Option<u64> = None;
        loop {
            let next = (Instant::now() + POOL_SAMPLE_EVERY).min(row_end);
            tokio::time::sleep_until(next).await;
            if next >= row_end {
                break;
            }
            if let Some(pool) = scrape_metrics(watched.metrics).await.pool {
                in_use_max = Some(in_use_max.map_or(pool.in_use, |m| m.max(pool.in_use)));
            }
            if let Some(s) = sessions(&watched.postgres).await {
                stuck_max = Some(
                    stuck_max.map_or(s.stuck_in_transaction, |m| m.max(s.stuck_in_transaction)),
                );
            }
        }
        let last = row_end >= end;
        if last {
            // The calls in flight at the end belong to the last row.
            let _ = finished.wait_for(|done| *done).await;
        }
        if let Some(db) = &watched.vacuum
            && let Err(err) = db.execute_unprepared(VACUUM).await
        {
            eprintln!("soak: vacuum failed: {err}");
        }
        let tally = std::mem::replace(&mut *watched.tally.lock().unwrap(), Tally::new());
        let now = Instant::now();
        let fds = process::open_fds(watched.pid);
        let scraped = scrape_metrics(watched.metrics).await;
        let pool = scraped.pool;
        if let Some(pool) = pool {
            in_use_max = Some(in_use_max.map_or(pool.in_use, |m| m.max(pool.in_use)));
        }
        let sessions = sessions(&watched.postgres).await;
        let established_now = sessions_established(&watched.postgres).await;
        let sessions_opened = established_now
            .zip(established)
            .map(|(now, before)| now.saturating_sub(before));
        established = established_now;
        if let Some(s) = sessions {
            stuck_max =
                Some(stuck_max.map_or(s.stuck_in_transaction, |m| m.max(s.stuck_in_transaction)));
        }
        let row = Row {
            minute: (row_end - start).as_secs_f64() / 60.0,
            calls: MIX
                .iter()
                .zip(tally.calls)
                .map(|((kind, _), n)| (kind.name(), n))
                .collect(),
            calls_per_second: tally.calls.iter().sum::<u64>() as f64
                / (now - last_take).as_secs_f64(),
            bad_key_refused: tally.refused,
            bad_key_throttled: tally.throttled,
            cancelled_dropped: tally.dropped,
            cancelled_by_deadline: tally.deadline,
            cancelled_but_completed: tally.completed,
            p50_ms: tally.latency.value_at_quantile(0.5) as f64 / 1000.0,
            p99_ms: tally.latency.value_at_quantile(0.99) as f64 / 1000.0,
            errors: tally.errors,
            rss_mib: process::status_mib(watched.pid, "VmRSS"),
            fds: fds.map(|f| f.total),
            sockets: fds.map(|f| f.sockets),
            access_index_connections: scraped.access_index,
            pool,
            pool_in_use_max: in_use_max,
            sessions,
            sessions_opened,
            stuck_in_transaction_max: stuck_max,
        };
        last_take = now;
        eprintln!("{}", format_row(&row));
        rows.push(row);
        if last {
            return rows;
        }
        row_start = row_end;
    }
}

fn header() -> String {
    format!(
        "{:>5} {:>8} {:>7} {:>7} {:>7} {:>15} {:>22} {:>7} {:>6} {:>6} {:>7} {:>7} {:>9} {:>12} {:>13}  unexpected errors",
        "min",
        "get",
        "list",
        "trans",
        "create",
        "bad key ref/thr",
        "cancel drop/dl/done",
        "calls/s",
        "p50ms",
        "p99ms",
        "RSS MiB",
        "index",
        "fds (sock)",
        "pool idle/use",
        "pg ses/new/tx"
    )
}

fn format_row(row: &Row) -> String {
    let calls = |kind: Kind| row.calls.get(kind.name()).copied().unwrap_or(0);
    let minute = if row.minute.fract().abs() < 1e-6 {
        format!("{:.0}", row.minute)
    } else {
        format!("{:.2}", row.minute)
    };
    let pool = match (row.pool, row.pool_in_use_max) {
        (Some(pool), Some(max)) => format!("{:.0}/{:.0} ({max:.0})", pool.idle, pool.in_use),
        _ => "-".to_owned(),
    };
    let sessions = match (row.sessions, row.stuck_in_transaction_max) {
        (Some(s), Some(max)) => format!(
            "{}/{}/{max}",
            s.open,
            row.sessions_opened
                .map_or("-".to_owned(), |n| n.to_string())
        ),
        _ => "-".to_owned(),
    };
    let index = row
        .access_index_connections
        .map_or("-".to_owned(), |n| format!("{n:.0}"));
    let fds = match (row.fds, row.sockets) {
        (Some(total), Some(sockets)) => format!("{total} ({sockets})"),
        (Some(total), None) => total.to_string(),
        _ => "-".to_owned(),
    };
    let errors = if row.errors.is_empty() {
        "0".to_owned()
    } else {
        report::by_reason(&row.errors)
    };
    format!(
        "{minute:>5} {:>8} {:>7} {:>7} {:>7} {:>15} {:>22} {:>7.0} {:>6.2} {:>6.2} {:>7} {index:>7} {fds:>9} {pool:>12} {sessions:>13}  {errors}",
        calls(Kind::Get),
        calls(Kind::List),
        calls(Kind::Transition),
        calls(Kind::Create),
        format!(
            "{} ({}/{})",
            calls(Kind::BadKey),
            row.bad_key_refused,
            row.bad_key_throttled
        ),
        format!(
            "{} ({}/{}/{})",
            calls(Kind::Cancelled),
            row.cancelled_dropped,
            row.cancelled_by_deadline,
            row.cancelled_but_completed
        ),
        row.calls_per_second,
        row.p50_ms,
        row.p99_ms,
        row.rss_mib.map_or("-".to_owned(), |m| format!("{m:.1}")),
    )
}

/// How far a measure moved after warm-up: from the second row on, against
/// the second row.
#[derive(Debug, Clone, Serialize)]
struct Drift {
    /// At the end of the second row (the first after warm-up).
    after_warmup: f64,
    lowest: f64,
    highest: f64,
    /// At the end of the last row.
    last: f64,
    /// The largest move from `after_warmup`, as a fraction of it.
    largest_move: f64,
    /// Whether every row from the second on is within [`TOLERANCE`] of it.
    within_tolerance: bool,
}

impl Drift {
    /// `None` without a second row, or with a row where the measure is missing.
    fn of(values: &[Option<f64>]) -> Option<Self> {
        let values: Vec<f64> = values.get(1..)?.iter().copied().collect::<Option<_>>()?;
        let after_warmup = *values.first()?;
        let lowest = values.iter().copied().fold(f64::INFINITY, f64::min);
        let highest = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let largest_move = ((highest - after_warmup).max(after_warmup - lowest)) / after_warmup;
        Some(Self {
            after_warmup,
            lowest,
            highest,
            last: *values.last()?,
            largest_move,
            within_tolerance: largest_move <= TOLERANCE,
        })
    }

    fn describe(what: &str, unit: &str, decimals: usize, drift: Option<&Self>) -> String {
        match drift {
            None => format!("{what}: not judged (needs two rows, the second after warm-up)"),
            Some(d) => format!(
                "{what}: {:.decimals$}{unit} after warm-up (the second row), {:.decimals$}..{:.decimals$}{unit} since, {:.decimals$}{unit} at the end; largest move {:.1}%: {}",
                d.after_warmup,
                d.lowest,
                d.highest,
                d.last,
                d.largest_move * 100.0,
                if d.within_tolerance {
                    "within 10%"
                } else {
                    "NOT within 10%"
                }
            ),
        }
    }
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
struct Summary {
    duration_s: u64,
    concurrency: usize,
    /// The mix, in percent of calls.
    mix: BTreeMap<&'static str, u64>,
    rows: Vec<Row>,
    calls: u64,
    calls_per_second: f64,
    /// Unexpected outcomes by kind and reason, over the whole run.
    unexpected_errors: BTreeMap<String, u64>,
    rss_mib: Option<Drift>,
    fds: Option<Drift>,
    /// Open file descriptors other than sockets (files, pipes, event
    /// queues): the pool opens and closes database connections as it likes,
    /// so the sockets come and go; any other leak would show here.
    fds_besides_sockets: Option<Drift>,
    peak_rss_mib: Option<f64>,
    /// The server log's warnings and errors, by level and message.
    server_log: BTreeMap<String, u64>,
    /// The histories of the connections made through the API.
    histories: Option<Histories>,
    /// Whether the harness vacuumed the tables every row (the server's
    /// autovacuum was off).
    vacuumed_by_harness: bool,
}

impl Summary {
    fn new(
        options: &SoakOptions,
        rows: Vec<Row>,
        unexpected_errors: BTreeMap<String, u64>,
        peak_rss_mib: Option<f64>,
    ) -> Self {
        let calls = rows.iter().map(Row::total).sum();
        let rss = rows.iter().map(|r| r.rss_mib).collect::<Vec<_>>();
        let fds = rows
            .iter()
            .map(|r| r.fds.map(|n| n as f64))
            .collect::<Vec<_>>();
        let other_fds = rows
            .iter()
            .map(|r| Some(r.fds? as f64 - r.sockets? as f64))
            .collect::<Vec<_>>();
        Self {
            duration_s: options.duration.as_secs(),
            concurrency: options.concurrency,
            mix: MIX
                .iter()
                .map(|(kind, share)| (kind.name(), *share))
                .collect(),
            calls,
            calls_per_second: calls as f64 / options.duration.as_secs_f64(),
            rss_mib: Drift::of(&rss),
            fds: Drift::of(&fds),
            fds_besides_sockets: Drift::of(&other_fds),
            rows,
            unexpected_errors,
            peak_rss_mib,
            server_log: BTreeMap::new(),
            histories: None,
            vacuumed_by_harness: false,
        }
    }

    fn print(&self) {
        println!(
            "\nsoak on PostgreSQL: {} s, {} calls in flight; the mix (percent of calls): {}",
            self.duration_s,
            self.concurrency,
            self.mix
                .iter()
                .map(|(kind, share)| format!("{kind} {share}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "bad key: calls (refused UNAUTHENTICATED / AUTHENTICATION_THROTTLED); \
             cancel: calls (dropped by the client / ended by the deadline / completed first); \
             latency: correct answers of the other kinds; index: connections in the server's \
             in-memory CheckAccess index; pool: idle/in use at the row's end \
             (most in use in the 5 s samples); fds: open file descriptors (of which sockets); pg ses/new/tx: the server's PostgreSQL \
             sessions at the row's end / sessions established in the minute / most idle in a \
             transaction for over 1 s in the samples\n"
        );
        if self.vacuumed_by_harness {
            println!(
                "autovacuum is off on this PostgreSQL server: the harness ran `{VACUUM}` at the end of every row\n"
            );
        }
        println!("{}", header());
        for row in &self.rows {
            println!("{}", format_row(row));
        }
        let errors: u64 = self.unexpected_errors.values().sum();
        println!("\ncalls: {} ({:.0}/s)", self.calls, self.calls_per_second);
        println!(
            "unexpected errors: {errors} (target 0){}",
            if errors == 0 {
                String::new()
            } else {
                format!(": {}", report::by_reason(&self.unexpected_errors))
            }
        );
        println!(
            "{}",
            Drift::describe("RSS", " MiB", 1, self.rss_mib.as_ref())
        );
        println!(
            "{}",
            Drift::describe("open file descriptors", "", 0, self.fds.as_ref())
        );
        println!(
            "{}",
            Drift::describe(
                "open file descriptors other than sockets",
                "",
                0,
                self.fds_besides_sockets.as_ref()
            )
        );
        if let Some(peak) = self.peak_rss_mib {
            println!("peak RSS (VmHWM): {peak:.1} MiB");
        }
        if let Some(h) = self.histories {
            println!(
                "histories: {} connections made through the API; {} with events not matching \
                 their version, {} whose last event is not their state",
                h.connections, h.version_mismatch, h.state_mismatch
            );
        }
        println!(
            "server log, warnings and errors: {}",
            if self.server_log.is_empty() {
                "none".to_owned()
            } else {
                report::by_reason(&self.server_log)
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_has_every_kind_in_its_share() {
        let mut counts = [0u64; MIX.len()];
        for i in 0..100_000 {
            let kind = Kind::of(splitmix(i));
            counts[MIX.iter().position(|(k, _)| *k == kind).unwrap()] += 1;
        }
        for ((kind, share), n) in MIX.iter().zip(counts) {
            let percent = n as f64 / 1000.0;
            assert!(
                (percent - *share as f64).abs() < 1.0,
                "{kind:?}: {percent}%"
            );
        }
    }

    #[test]
    fn bad_secrets_come_in_every_form() {
        let well_formed = |s: &str| {
            s.len() == 47
                && s.starts_with("cnx_")
                && s[4..]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        let mut forms = BTreeMap::new();
        let mut repeated = std::collections::BTreeSet::new();
        for r in 0..1_000u64 {
            let secret = bad_secret(splitmix(r), 7);
            workload::bearer(&secret);
            *forms.entry(well_formed(&secret)).or_insert(0) += 1;
            if splitmix(r) % 10 == 4 || splitmix(r) % 10 == 5 {
                repeated.insert(secret);
            }
        }
        // About 60% well-formed (unknown) keys, 40% malformed or empty.
        assert!((550..650).contains(&forms[&true]), "{forms:?}");
        assert_eq!(repeated.len() as u64, REPEATED_UNKNOWN_KEYS);
    }

    #[test]
    fn drift_is_judged_from_the_second_row() {
        let d = Drift::of(&[Some(10.0), Some(40.0), Some(42.0), Some(39.0)]).unwrap();
        assert_eq!(
            (d.after_warmup, d.lowest, d.highest, d.last),
            (40.0, 39.0, 42.0, 39.0)
        );
        assert!((d.largest_move - 0.05).abs() < 1e-9);
        assert!(d.within_tolerance);
        let d = Drift::of(&[Some(10.0), Some(40.0), Some(45.0)]).unwrap();
        assert!(!d.within_tolerance);
        assert!(Drift::of(&[Some(10.0)]).is_none());
        assert!(Drift::of(&[Some(10.0), None]).is_none());
    }

    #[test]
    fn pool_gauges_are_read_from_prometheus_text() {
        let text = "# HELP db_pool_connections Database pool connections, idle or in use.\n\
                    # TYPE db_pool_connections gauge\n\
                    db_pool_connections{state=\"idle\"} 5\n\
                    db_pool_connections{state=\"in_use\"} 2\n";
        assert_eq!(
            gauge(text, r#"db_pool_connections{state="idle"}"#),
            Some(5.0)
        );
        assert_eq!(
            gauge(text, r#"db_pool_connections{state="in_use"}"#),
            Some(2.0)
        );
        assert_eq!(gauge(text, "nothing"), None);
    }
}
