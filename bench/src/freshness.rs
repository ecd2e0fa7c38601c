//! How fresh CheckAccess is across replicas, and what open watches cost: two
//! servers on one PostgreSQL database, with writers cycling transitions
//! through both the whole time.
//!
//! - Latency: a transition acknowledged by replica 1, then CheckAccess on
//!   replica 2 (without a token) every millisecond until its answer shows
//!   the transition: p50, p99 and max (target: p99 at most 50 ms).
//! - Tokens: transitions on one replica and the other in turn, each followed
//!   by CheckAccess on the other replica with the transition's change token:
//!   a stale answer is one that does not show the transition (target: none).
//! - Watches: replica 2's RSS with 200 idle WatchConnectionEvents streams
//!   open, and while 10 streams that never read sit through a minute of
//!   writes; then how each ended (ABORTED / WATCH_CONSUMER_TOO_SLOW once it
//!   fell further behind than the server's buffer).

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use connections::proto::{
    ActivateConnectionRequest, CheckAccessRequest, ConnectionState, CreateConnectionRequest,
    DataType, DeactivateConnectionRequest, ReactivateConnectionRequest,
    WatchConnectionEventsRequest, WatchConnectionEventsResponse,
    access_service_client::AccessServiceClient,
};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;
use tonic::Streaming;

use crate::{
    ADMIN_TOKEN,
    load::{self, Call},
    process::{Server, free_address, status_mib},
    seed::{self, Caller},
    workload::{self, Target, authorized},
};

/// The benchmark's database, created and dropped on the PostgreSQL server.
const DATABASE: &str = "connections_freshness";
/// How long a check waits for a transition to show before it counts as
/// never seen.
const GIVE_UP: Duration = Duration::from_secs(5);
/// Organizations on each side of each replica's writers' connections.
const RACE_SIDE: usize = 8;
/// Connections the measurements change (one at a time).
const MEASURED: usize = 16;
/// How long the burst of writes lasts while the stalled watches sit.
const BURST: Duration = Duration::from_secs(60);
/// How often the harness vacuums the tables the writers rewrite when the
/// PostgreSQL server's autovacuum is off (see [`vacuum_until`]).
pub(crate) const VACUUM_EVERY: Duration = Duration::from_secs(10);

/// Options of `bench freshness`.
#[derive(Debug, Clone, clap::Args)]
pub struct FreshnessOptions {
    /// Latency samples: transitions on replica 1 watched for on replica 2.
    #[arg(long, default_value_t = 1_000)]
    samples: usize,
    /// Checks with a change token, alternating replicas.
    #[arg(long, default_value_t = 10_000)]
    checks: usize,
    /// Writers on each replica, cycling transitions the whole time.
    #[arg(long, default_value_t = 4)]
    writers: usize,
    #[command(flatten)]
    setup: crate::Setup,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "target/bench/freshness.json")]
    output: PathBuf,
}

/// What the run measured.
#[derive(Debug, Default, Serialize)]
struct Results {
    /// Transition acknowledged on replica 1 until CheckAccess on replica 2
    /// shows it, ms.
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    latency_max_ms: f64,
    latency_samples: u64,
    /// Samples not shown within [`GIVE_UP`].
    never_seen: u64,
    /// Checks with a change token, and how many answered stale.
    token_checks: u64,
    stale: u64,
    /// Their latency, ms, and how many took 1 s or more: the server gave
    /// up waiting for its index to reach the token and read the database.
    token_check_p50_ms: f64,
    token_check_p99_ms: f64,
    token_check_max_ms: f64,
    token_checks_at_fallback: u64,
    /// Transitions the racing writers made meanwhile.
    racing_writes: u64,
    racing_failures: u64,
    /// Whether the harness vacuumed the tables every [`VACUUM_EVERY`]
    /// (the server's autovacuum was off).
    vacuumed_by_harness: bool,
    /// Replica 2's RSS: before the streams, with 200 idle streams open, and
    /// the most while 10 stalled streams sat through a burst of writes, MiB.
    rss_before_mib: Option<f64>,
    rss_idle_streams_mib: Option<f64>,
    rss_stalled_streams_peak_mib: Option<f64>,
    /// Writes in the burst, and how the stalled streams ended.
    burst_writes: u64,
    stalled_ended: Vec<String>,
}

/// A connection the measurements change, with its parties.
pub(crate) struct Measured {
    id: String,
    source: Caller,
    destination: Caller,
    /// What the next transition makes it.
    next: ConnectionState,
}

/// Runs the benchmark.
pub async fn run(options: FreshnessOptions) -> anyhow::Result<()> {
    let server_bin = crate::server_binary(options.setup.server_bin.as_deref())?;
    let work = std::env::temp_dir().join(format!("connections-freshness-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let (admin, url) = crate::create_database(&options.setup.postgres_url, DATABASE)
        .await
        .context("pass --postgres-url")?;
    let result = measure(&options, &server_bin, &work, &url).await;
    crate::drop_database(&admin, DATABASE).await?;
    let results = result?;
    let _ = std::fs::remove_dir_all(&work);
    print(&results);
    if let Some(dir) = options.output.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&options.output, serde_json::to_string_pretty(&results)?)?;
    eprintln!("results written to {}", options.output.display());
    anyhow::ensure!(results.stale == 0, "{} stale answers", results.stale);
    Ok(())
}

async fn measure(
    options: &FreshnessOptions,
    server_bin: &std::path::Path,
    work: &std::path::Path,
    url: &str,
) -> anyhow::Result<Results> {
    let mut servers = Vec::new();
    let mut targets = Vec::new();
    for replica in 1..=2 {
        let address = free_address()?;
        let command = crate::service_command(server_bin, address, url);
        let log = work.join(format!("server-{replica}.log"));
        let server = Server::start(&format!("replica {replica}"), command, address, &log).await?;
        server.serving(crate::SERVING_TIMEOUT).await?;
        targets.push(Target::connect(&server.url(), 2).await?);
        servers.push(server);
    }
    let pid = servers[1].pid().context("replica 2 exited")?;
    let mut results = Results {
        rss_before_mib: status_mib(pid, "VmRSS"),
        ..Results::default()
    };
    let vacuuming = Arc::new(AtomicBool::new(true));
    let vacuum = match autovacuum_off(url).await? {
        Some(db) => {
            eprintln!(
                "freshness: autovacuum is off on this server: the harness vacuums the tables every {} s",
                VACUUM_EVERY.as_secs()
            );
            results.vacuumed_by_harness = true;
            Some(tokio::spawn(vacuum_until(
                db,
                vacuuming.clone(),
                "connections, connection_events",
            )))
        }
        None => None,
    };

    eprintln!("freshness: seeding");
    let mut measured = measured(&targets[0], MEASURED).await?;
    let mut race_pools = Vec::new();
    for target in &targets {
        race_pools.push(crate::write_pool(target, RACE_SIDE).await?);
    }
    // Sources of the first replica's writers: the stalled streams watch them.
    let watched_keys: Vec<_> = race_pools[0]
        .iter()
        .step_by(RACE_SIDE)
        .map(|entry| entry.source.clone())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let (writes, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let race_calls: Vec<Call> = targets
        .iter()
        .zip(race_pools)
        .map(|(target, pool)| workload::cycles(target.clone(), pool))
        .collect();
    let mut racing = tokio::task::JoinSet::new();
    for call in &race_calls {
        for writer in 0..options.writers {
            racing.spawn(write_until(
                call.clone(),
                writer as u64,
                stop.clone(),
                writes.clone(),
                failures.clone(),
            ));
        }
    }

    eprintln!(
        "freshness: {} transitions on replica 1, each watched for on replica 2",
        options.samples
    );
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for i in 0..options.samples {
        let m = &mut measured[i % MEASURED];
        let expected = transition(&targets[0], m).await?.0;
        let acknowledged = Instant::now();
        loop {
            let answer = check(&targets[1], m, "").await?;
            if answer == expected {
                let micros = u64::try_from(acknowledged.elapsed().as_micros())?;
                latency.record(micros.max(1))?;
                break;
            }
            if acknowledged.elapsed() > GIVE_UP {
                results.never_seen += 1;
                latency.record(u64::try_from(GIVE_UP.as_micros())?)?;
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    results.latency_samples = latency.len();
    results.latency_p50_ms = latency.value_at_quantile(0.5) as f64 / 1000.0;
    results.latency_p99_ms = latency.value_at_quantile(0.99) as f64 / 1000.0;
    results.latency_max_ms = latency.max() as f64 / 1000.0;

    eprintln!(
        "freshness: {} checks with the transition's token, alternating replicas",
        options.checks
    );
    let mut token_latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for i in 0..options.checks {
        let (on, other) = if i % 2 == 0 { (0, 1) } else { (1, 0) };
        let m = &mut measured[i % MEASURED];
        let (expected, token) = transition(&targets[on], m).await?;
        results.token_checks += 1;
        let asked = Instant::now();
        let answer = check(&targets[other], m, &token).await?;
        token_latency.saturating_record(u64::try_from(asked.elapsed().as_micros())?.max(1));
        if answer != expected {
            results.stale += 1;
        }
    }
    results.token_check_p50_ms = token_latency.value_at_quantile(0.5) as f64 / 1000.0;
    results.token_check_p99_ms = token_latency.value_at_quantile(0.99) as f64 / 1000.0;
    results.token_check_max_ms = token_latency.max() as f64 / 1000.0;
    results.token_checks_at_fallback = token_latency.count_between(
        u64::try_from(crate::under_writes::TOKEN_FALLBACK.as_micros())?,
        u64::MAX,
    );
    stop.store(true, Ordering::SeqCst);
    while racing.join_next().await.is_some() {}
    results.racing_writes = writes.load(Ordering::SeqCst);
    results.racing_failures = failures.load(Ordering::SeqCst);

    eprintln!("freshness: 200 idle watches on replica 2");
    let mut idle = Vec::new();
    for i in 0..20 {
        let caller = seed::caller(targets[1].channel(0), ADMIN_TOKEN, &format!("Idle {i}")).await?;
        for _ in 0..10 {
            idle.push(open_watch(&targets[1], &caller.key).await?);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    results.rss_idle_streams_mib = status_mib(pid, "VmRSS");
    drop(idle);

    eprintln!("freshness: 10 watches on replica 2 that never read, through a burst of writes");
    let mut stalled = Vec::new();
    for key in watched_keys.iter().cycle().take(10) {
        stalled.push(open_watch(&targets[1], key).await?);
    }
    // The stalled streams' organizations are the sources of the first
    // replica's writers' connections: write those, at full speed.
    stop.store(false, Ordering::SeqCst);
    let burst = race_calls[0].clone();
    let burst_writes = Arc::new(AtomicU64::new(0));
    let mut burst_tasks = tokio::task::JoinSet::new();
    for writer in 0..16 {
        burst_tasks.spawn(write_until(
            burst.clone(),
            writer,
            stop.clone(),
            burst_writes.clone(),
            failures.clone(),
        ));
    }
    let mut peak: Option<f64> = None;
    let burst_end = Instant::now() + BURST;
    while Instant::now() < burst_end {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(rss) = status_mib(pid, "VmRSS") {
            peak = Some(peak.map_or(rss, |p: f64| p.max(rss)));
        }
    }
    stop.store(true, Ordering::SeqCst);
    while burst_tasks.join_next().await.is_some() {}
    results.rss_stalled_streams_peak_mib = peak;
    results.burst_writes = burst_writes.load(Ordering::SeqCst);
    for mut stream in stalled {
        results.stalled_ended.push(drain(&mut stream).await);
    }

    vacuuming.store(false, Ordering::SeqCst);
    if let Some(vacuum) = vacuum {
        vacuum.await??;
    }
    for server in servers {
        server.stop().await?;
    }
    Ok(results)
}

/// A connection to the database of `url` if its server's autovacuum is off.
pub(crate) async fn autovacuum_off(
    url: &str,
) -> anyhow::Result<Option<sea_orm::DatabaseConnection>> {
    use sea_orm::ConnectionTrait;
    let db = connections::db::connect(&connections::config::DatabaseSettings::new(url.to_owned()))
        .await?;
    let autovacuum = db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT current_setting('autovacuum') AS on",
        ))
        .await?
        .context("no autovacuum setting")?
        .try_get::<String>("", "on")?;
    Ok((autovacuum == "off").then_some(db))
}

/// Vacuums `tables` (the tables the writers rewrite) every
/// [`VACUUM_EVERY`] while `running`, as autovacuum would: the writers update
/// the same few hundred rows all the time, and without it their dead
/// versions pile up and slow every write and every read of the change log,
/// more the longer the run.
pub(crate) async fn vacuum_until(
    db: sea_orm::DatabaseConnection,
    running: Arc<AtomicBool>,
    tables: &'static str,
) -> anyhow::Result<()> {
    use sea_orm::ConnectionTrait;
    while running.load(Ordering::SeqCst) {
        let next = Instant::now() + VACUUM_EVERY;
        while running.load(Ordering::SeqCst) && Instant::now() < next {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        db.execute_unprepared(&format!("VACUUM (ANALYZE) {tables}"))
            .await?;
    }
    db.close().await?;
    Ok(())
}

/// Makes `count` connections, each with its own two parties, to be made
/// ACTIVE by their first [`transition`].
pub(crate) async fn measured(target: &Target, count: usize) -> anyhow::Result<Vec<Measured>> {
    let mut all = Vec::new();
    for i in 0..count {
        let channel = target.channel(0);
        let source = seed::caller(channel.clone(), ADMIN_TOKEN, &format!("Source {i}")).await?;
        let destination = seed::caller(channel, ADMIN_TOKEN, &format!("Destination {i}")).await?;
        let created = target
            .connections(0)
            .create_connection(authorized(
                CreateConnectionRequest {
                    message: String::new(),
                    destination_organization_id: destination.id.clone(),
                    data_types: vec![DataType::Transaction.into()],
                    request_id: String::new(),
                },
                &source.key,
            ))
            .await?
            .into_inner()
            .connection
            .context("no connection")?;
        all.push(Measured {
            id: created.id,
            source,
            destination,
            next: ConnectionState::Active,
        });
    }
    Ok(all)
}

/// The next transition of `m` on `target`: the state it is now in, and the
/// change token of the transition.
pub(crate) async fn transition(
    target: &Target,
    m: &mut Measured,
) -> anyhow::Result<(ConnectionState, String)> {
    let mut client = target.connections(0);
    let id = m.id.clone();
    let (state, token) = match m.next {
        ConnectionState::Active => {
            let reply = client
                .activate_connection(authorized(
                    ActivateConnectionRequest {
                        connection_id: id,
                        ..Default::default()
                    },
                    &m.destination.key,
                ))
                .await?
                .into_inner();
            (reply.connection.map(|c| c.state), reply.change_token)
        }
        ConnectionState::Inactive => {
            let reply = client
                .deactivate_connection(authorized(
                    DeactivateConnectionRequest {
                        connection_id: id,
                        ..Default::default()
                    },
                    &m.source.key,
                ))
                .await?
                .into_inner();
            (reply.connection.map(|c| c.state), reply.change_token)
        }
        _ => {
            let reply = client
                .reactivate_connection(authorized(
                    ReactivateConnectionRequest {
                        connection_id: id,
                        ..Default::default()
                    },
                    &m.source.key,
                ))
                .await?
                .into_inner();
            (reply.connection.map(|c| c.state), reply.change_token)
        }
    };
    let expected = m.next;
    anyhow::ensure!(state == Some(expected as i32), "unexpected state {state:?}");
    m.next = match expected {
        ConnectionState::Active => ConnectionState::Inactive,
        ConnectionState::Inactive => ConnectionState::Pending,
        _ => ConnectionState::Active,
    };
    Ok((expected, token))
}

/// The state CheckAccess on `target` reports for `m` (as its source), at
/// least as fresh as `token`; checks that `allowed` agrees with it.
pub(crate) async fn check(
    target: &Target,
    m: &Measured,
    token: &str,
) -> anyhow::Result<ConnectionState> {
    let answer = AccessServiceClient::new(target.channel(1))
        .check_access(authorized(
            CheckAccessRequest {
                source_organization_id: m.source.id.clone(),
                destination_organization_id: m.destination.id.clone(),
                data_type: DataType::Transaction.into(),
                at_least_change_token: token.to_owned(),
            },
            &m.source.key,
        ))
        .await?
        .into_inner();
    let state = ConnectionState::try_from(answer.state)?;
    anyhow::ensure!(
        answer.allowed == (state == ConnectionState::Active),
        "allowed is {} in state {state:?}",
        answer.allowed
    );
    Ok(state)
}

/// Calls `call` until `stop`, counting successes and failures.
async fn write_until(
    call: Call,
    seed: u64,
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
) {
    let mut i = seed * 1_000_000_000;
    while !stop.load(Ordering::SeqCst) {
        match call(i).await {
            Ok(()) => writes.fetch_add(1, Ordering::Relaxed),
            Err(_) => failures.fetch_add(1, Ordering::Relaxed),
        };
        i += 1;
    }
}

/// A watch from now, as the organization of `key`, that nobody reads yet.
pub(crate) async fn open_watch(
    target: &Target,
    key: &tonic::metadata::AsciiMetadataValue,
) -> anyhow::Result<Streaming<WatchConnectionEventsResponse>> {
    Ok(target
        .connections(0)
        .watch_connection_events(authorized(WatchConnectionEventsRequest::default(), key))
        .await?
        .into_inner())
}

/// Reads what a stalled stream holds; how it ended.
async fn drain(stream: &mut Streaming<WatchConnectionEventsResponse>) -> String {
    let mut messages = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
            Ok(Ok(Some(_))) => messages += 1,
            Ok(Ok(None)) => return format!("ended without an error after {messages} messages"),
            Ok(Err(status)) => {
                return format!("{} after {messages} messages", load::code_of(&status));
            }
            Err(_) => return format!("still open after {messages} messages"),
        }
    }
}

fn print(results: &Results) {
    let mib = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1} MiB"));
    println!(
        "\nCheckAccess freshness across replicas (transition acknowledged on replica 1 until replica 2 shows it), {} samples:",
        results.latency_samples
    );
    println!(
        "  p50 {:.2} ms, p99 {:.2} ms (target <= 50: {}), max {:.2} ms; not shown within {} s: {}",
        results.latency_p50_ms,
        results.latency_p99_ms,
        if results.latency_p99_ms <= 50.0 {
            "met"
        } else {
            "NOT MET"
        },
        results.latency_max_ms,
        GIVE_UP.as_secs(),
        results.never_seen
    );
    println!(
        "checks with the transition's change token on the other replica: {}, stale: {} (target 0)",
        results.token_checks, results.stale
    );
    println!(
        "  their latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; 1 s or more (the fallback): {}",
        results.token_check_p50_ms,
        results.token_check_p99_ms,
        results.token_check_max_ms,
        results.token_checks_at_fallback
    );
    println!(
        "racing writers meanwhile: {} transitions, {} failed",
        results.racing_writes, results.racing_failures
    );
    if results.vacuumed_by_harness {
        println!(
            "autovacuum is off on this PostgreSQL server: the harness ran `VACUUM (ANALYZE) connections, connection_events` every {} s",
            VACUUM_EVERY.as_secs()
        );
    }
    println!(
        "replica 2 RSS: {} before; {} with 200 idle watches; {} at most with 10 stalled watches through {} writes",
        mib(results.rss_before_mib),
        mib(results.rss_idle_streams_mib),
        mib(results.rss_stalled_streams_peak_mib),
        results.burst_writes
    );
    println!("the stalled watches ended: {:?}", results.stalled_ended);
}
