//! Webhook deliveries on PostgreSQL, received by this process on 127.0.0.1
//! (a receiver that answers at once and notes when each delivery arrives):
//!
//! - Latency: two servers on one database, writers on both committing
//!   transitions at a fixed rate (open loop) on connections of one partner
//!   organization that has an endpoint: from each event's `create_time` (and
//!   from the write's response on the client) to its first arrival (target:
//!   p99 at most 100 ms).
//! - Backlog drain: the endpoint disabled, many writers commit a backlog of
//!   events across many connections; the endpoint enabled, how fast the
//!   backlog arrives (target: at least 2,000 events/s).
//! - Bare POST: this process POSTs a delivery's body to the same receiver
//!   with as many requests in flight as a replica sends at most, over
//!   HTTP/1.1 keep-alive connections: the transport's ceiling, beside the
//!   drain.
//! - Memory: one server with 1,000 endpoints over 100 organizations, 10 of
//!   them answered 500, while a few hundred events flow: its RSS against
//!   the same server before it had endpoints (target: at most 50 MB more).

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, Uri},
    serve::ListenerExt,
};
use bytes::Bytes;
use connections::proto::{
    CreateConnectionRequest, CreateWebhookEndpointRequest, DataType, UpdateWebhookEndpointRequest,
    WebhookEndpoint, webhook_service_client::WebhookServiceClient,
};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde::{Deserialize, Serialize};
use tokio::{process::Command, task::JoinSet, time::Instant};
use tonic::metadata::AsciiMetadataValue;

use crate::{
    ADMIN_TOKEN, cpu,
    load::{self, Call, CallResult, Window},
    process::{Server, free_address, status_mib},
    seed::{self, Caller},
    workload::{self, Observer, PoolEntry, Target, authorized},
};

/// The benchmark's database, created and dropped on the PostgreSQL server.
const DATABASE: &str = "connections_webhooks";
/// The servers' retry schedule: a failed attempt goes again soon, a few
/// times, so that endpoints answering 500 keep retrying while memory is
/// measured.
const RETRY_SCHEDULE: &str = "100ms,200ms,500ms,1s,2s";
/// Latency target: p99 from an event's commit to its arrival, ms.
const LATENCY_TARGET_MS: f64 = 100.0;
/// Drain target, events per second.
const DRAIN_TARGET: f64 = 2_000.0;
/// Memory target: RSS increase with the endpoints, MB.
const RSS_TARGET_MB: f64 = 50.0;
/// How long every event written is waited for once the writes stop.
const ARRIVAL_WAIT: Duration = Duration::from_secs(60);
/// Seconds of writes before the latency line measures (a replica takes the
/// new endpoint's lease within a second).
const WARMUP: Duration = Duration::from_secs(2);
/// How long PostgreSQL may keep an idle session's counters before it
/// reports them in `pg_stat_database` (PGSTAT_IDLE_INTERVAL, 10 s), and a
/// second more.
const STATS_FLUSH: Duration = Duration::from_secs(11);
/// The stretches of the latency line whose p99 is reported one by one.
const LATENCY_STRETCH: Duration = Duration::from_secs(5);
/// The memory line's write rate, events per second.
const MEMORY_RATE: f64 = 100.0;
/// How long the memory line keeps watching RSS after its writes.
const MEMORY_SETTLE: Duration = Duration::from_secs(5);
/// Requests the bare POST line sends with: what a delivery carries.
const USER_AGENT: &str = concat!("connections/", env!("CARGO_PKG_VERSION"));
/// A `webhook-signature` of a real one's length (the receiver does not
/// verify it, nor does the bare line compute it).
const SIGNATURE: &str = "v1,K3qRcUf0m1hL8x2Zc9n4gT7yVw5sB6aD0eJ1kM2oP3Q=";

/// What the harness vacuums and analyzes every 10 s when the PostgreSQL
/// server's autovacuum is off (as autovacuum would): the tables the writes
/// and the deliveries change.
const VACUUMED: &str =
    "connections, connection_events, webhook_queue, webhook_attempts, webhook_endpoints";

/// Options of `bench webhooks`.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookOptions {
    /// A quick run with small numbers that checks every line works; its
    /// numbers mean nothing.
    #[arg(long)]
    smoke: bool,
    /// Events per second the writers commit, over both replicas (half on
    /// each; open loop).
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Seconds of writes measured by the latency line (after 2 s of warm-up).
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Connections of the partner each replica's writers change.
    #[arg(long, default_value_t = 256)]
    connections: usize,
    /// Events in the backlog.
    #[arg(long, default_value_t = 100_000)]
    backlog: u64,
    /// Writers on each replica committing the backlog (closed loop).
    #[arg(long, default_value_t = 16)]
    backlog_writers: usize,
    /// Longest wait for the backlog to drain, seconds: a drain not done by
    /// then is reported as such, with the rate so far.
    #[arg(long, default_value_t = 600.0)]
    drain_timeout: f64,
    /// Requests in flight on the bare POST line, one HTTP/1.1 connection
    /// each (64: what one replica sends at most).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds measured by the bare POST line (after 1 s of warm-up).
    #[arg(long, default_value_t = 5.0)]
    bare_duration: f64,
    /// Webhook endpoints on the memory line; one in 100 answers 500.
    #[arg(long, default_value_t = 1_000)]
    endpoints: usize,
    /// Organizations the memory line's endpoints belong to (at most 20
    /// endpoints each, the server's default limit).
    #[arg(long, default_value_t = 100)]
    organizations: usize,
    /// Events the memory line commits (once without endpoints, once with).
    #[arg(long, default_value_t = 300)]
    events: usize,
    /// Never vacuum nor analyze, even when the PostgreSQL server's
    /// autovacuum is off (by default the harness then does it every 10 s).
    #[arg(long)]
    no_vacuum: bool,
    #[command(flatten)]
    setup: crate::Setup,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "target/bench/webhooks.json")]
    output: PathBuf,
}

impl WebhookOptions {
    fn shrink_for_smoke(&mut self) {
        if self.smoke {
            self.rate = 100.0;
            self.duration = 2.0;
            self.connections = 16;
            self.backlog = 2_000;
            self.backlog_writers = 4;
            self.drain_timeout = 120.0;
            self.bare_duration = 1.0;
            self.endpoints = 100;
            self.organizations = 10;
            self.events = 50;
        }
    }
}

/// What the run measured.
#[derive(Debug, Default, Serialize)]
struct Results {
    smoke: bool,
    /// Whether the PostgreSQL server's autovacuum was off, and whether the
    /// harness then vacuumed and analyzed the tables every 10 s.
    autovacuum_off: bool,
    vacuumed_by_harness: bool,
    latency: Latency,
    drain: Drain,
    bare: Bare,
    memory: Memory,
    /// Every target, with its verdict.
    targets: Vec<Verdict>,
    /// Seconds the whole run took.
    run_seconds: f64,
    /// The machine's load averages (1, 5, 15 minutes) at the start and at
    /// the end: other work on the machine shows there.
    load_at_start: Option<String>,
    load_at_end: Option<String>,
}

/// `/proc/loadavg`'s three load averages (Linux only).
fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

#[derive(Debug, Default, Serialize)]
struct Latency {
    /// Offered events per second, over both replicas.
    offered_rate: f64,
    /// Seconds measured (after the warm-up).
    seconds: f64,
    /// Writes made (warm-up included), and the failed ones by reason.
    writes: u64,
    write_errors: BTreeMap<String, u64>,
    /// Events written after the warm-up: those measured.
    events: u64,
    /// From the event's `create_time` (set in the write's transaction,
    /// before its commit) to its first arrival, ms.
    from_create_p50_ms: f64,
    from_create_p99_ms: f64,
    from_create_max_ms: f64,
    /// From the write's response on the client (after the commit) to the
    /// first arrival, ms; arrivals before the response count as 0.
    from_response_p50_ms: f64,
    from_response_p99_ms: f64,
    from_response_max_ms: f64,
    arrived_before_response: u64,
    /// Events written (warm-up included) that had not arrived
    /// [`ARRIVAL_WAIT`] after the writes stopped.
    never_arrived: u64,
    /// Arrivals after the first of the same delivery, and first arrivals
    /// out of their connection's order.
    repeats: u64,
    out_of_order: u64,
    /// p99 from `create_time` of the events written in each
    /// [`LATENCY_STRETCH`] of the line, ms: whether it grew as it went.
    p99_ms_by_stretch: Vec<f64>,
    /// The most rows in the webhook queue, sampled every second.
    queue_max: i64,
    /// The replica whose deliverer sent the events (1 or 2).
    delivered_by: Option<usize>,
    /// CPU per event written, µs, by party, from the start of the writes
    /// until every event had arrived.
    cpu_us_per_event: BTreeMap<String, f64>,
}

#[derive(Debug, Default, Serialize)]
struct Drain {
    /// Events committed while the endpoint was disabled, by how many
    /// writers, in how long; failed writes by reason.
    events: u64,
    writers: usize,
    write_seconds: f64,
    write_errors: BTreeMap<String, u64>,
    /// Rows in the webhook queue when the endpoint was enabled.
    queued: i64,
    /// Distinct events that arrived, and seconds from the enabling call
    /// to the last of them (or to the timeout).
    delivered: u64,
    seconds: f64,
    /// Seconds from the enabling call to the first arrival.
    first_arrival_seconds: Option<f64>,
    /// delivered / seconds; and from the first arrival on.
    events_per_second: f64,
    events_per_second_after_first: f64,
    /// Whether every event arrived before the timeout.
    drained: bool,
    /// Rows left in the webhook queue at the end.
    queue_left: i64,
    repeats: u64,
    out_of_order: u64,
    /// CPU per event delivered, µs, by party.
    cpu_us_per_event: BTreeMap<String, f64>,
    /// Per event delivered, from `pg_stat_database`: transactions, rows
    /// read by scans (`tup_returned`), rows fetched by index
    /// (`tup_fetched`).
    db_transactions_per_event: Option<f64>,
    db_rows_returned_per_event: Option<f64>,
    db_rows_fetched_per_event: Option<f64>,
    /// Arrivals per second in each 5 s of the drain.
    rate_every_5s: Vec<f64>,
}

#[derive(Debug, Default, Serialize)]
struct Bare {
    concurrency: usize,
    seconds: f64,
    body_bytes: usize,
    requests_per_second: f64,
    requests: u64,
    p50_ms: f64,
    p99_ms: f64,
    errors: BTreeMap<String, u64>,
    /// This process's CPU (client and receiver) per request, µs.
    cpu_us_per_request: Option<f64>,
    /// The drain's events/s over this line's requests/s.
    drain_over_bare: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
struct Memory {
    endpoints: usize,
    organizations: usize,
    failing_endpoints: usize,
    /// Events written in each phase.
    events: usize,
    write_errors: BTreeMap<String, u64>,
    /// The most RSS sampled (every 50 ms) while the events flowed, and for
    /// a few seconds after: before the endpoints existed, and with them.
    rss_without_endpoints_mib: Option<f64>,
    rss_with_endpoints_mib: Option<f64>,
    increase_mb: Option<f64>,
    /// RSS and peak (`VmHWM`) at the end.
    rss_end_mib: Option<f64>,
    peak_end_mib: Option<f64>,
    /// Deliveries answered 200 (distinct), and attempts answered 500.
    delivered: u64,
    failed_attempts: u64,
    /// Seconds from the end of the writes until every event to an endpoint
    /// that answers 200 had been delivered.
    settle_seconds: f64,
    repeats: u64,
    out_of_order: u64,
}

#[derive(Debug, Clone, Serialize)]
struct Verdict {
    name: &'static str,
    value: Option<f64>,
    /// "<=" or ">=".
    bound: &'static str,
    target: f64,
    met: Option<bool>,
}

impl Verdict {
    fn new(name: &'static str, value: Option<f64>, bound: &'static str, target: f64) -> Self {
        let met = value.map(|v| {
            if bound == "<=" {
                v <= target
            } else {
                v >= target
            }
        });
        Self {
            name,
            value,
            bound,
            target,
            met,
        }
    }

    fn text(&self) -> String {
        let verdict = match self.met {
            Some(true) => "met",
            Some(false) => "NOT MET",
            None => "not measured",
        };
        format!("target {} {}: {verdict}", self.bound, self.target)
    }
}

/// Runs the benchmark.
pub async fn run(mut options: WebhookOptions) -> anyhow::Result<()> {
    options.shrink_for_smoke();
    let started = Instant::now();
    let server_bin = crate::server_binary(options.setup.server_bin.as_deref())?;
    let work = std::env::temp_dir().join(format!("connections-webhooks-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let receiver = Receiver::start().await?;
    let mut results = Results {
        smoke: options.smoke,
        load_at_start: load_average(),
        ..Results::default()
    };
    let (admin, url) = crate::create_database(&options.setup.postgres_url, DATABASE)
        .await
        .context("pass --postgres-url")?;
    let result = async {
        replicas(&options, &server_bin, &work, &url, &receiver, &mut results).await?;
        crate::drop_database(&admin, DATABASE).await?;
        let (_, url) = crate::create_database(&options.setup.postgres_url, DATABASE).await?;
        memory(&options, &server_bin, &work, &url, &receiver, &mut results).await
    }
    .await;
    crate::drop_database(&admin, DATABASE).await?;
    result?;
    let _ = std::fs::remove_dir_all(&work);
    results.run_seconds = started.elapsed().as_secs_f64();
    results.load_at_end = load_average();
    results.targets = vec![
        Verdict::new(
            "latency p99 from create_time, ms",
            Some(results.latency.from_create_p99_ms),
            "<=",
            LATENCY_TARGET_MS,
        ),
        Verdict::new(
            "backlog drain, events/s",
            Some(results.drain.events_per_second),
            ">=",
            DRAIN_TARGET,
        ),
        Verdict::new(
            "RSS increase with the endpoints, MB",
            results.memory.increase_mb,
            "<=",
            RSS_TARGET_MB,
        ),
    ];
    print(&results);
    if let Some(dir) = options.output.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&options.output, serde_json::to_string_pretty(&results)?)?;
    eprintln!("results written to {}", options.output.display());
    let problems = problems(&results);
    for problem in &problems {
        eprintln!("failed: {problem}");
    }
    anyhow::ensure!(problems.is_empty(), "{}", problems.join("; "));
    Ok(())
}

/// What fails the run: failed calls, events that never arrived, arrivals
/// out of order, lines that measured nothing. Missed targets do not.
fn problems(results: &Results) -> Vec<String> {
    let mut problems = Vec::new();
    let (l, d, b, m) = (
        &results.latency,
        &results.drain,
        &results.bare,
        &results.memory,
    );
    for (line, errors) in [
        ("latency writes", &l.write_errors),
        ("backlog writes", &d.write_errors),
        ("bare POST", &b.errors),
        ("memory writes", &m.write_errors),
    ] {
        if !errors.is_empty() {
            problems.push(format!(
                "{line}: failed calls: {}",
                crate::report::by_reason(errors)
            ));
        }
    }
    if l.events == 0 {
        problems.push("latency: no event measured".to_owned());
    }
    if l.never_arrived > 0 {
        problems.push(format!("latency: {} events never arrived", l.never_arrived));
    }
    if d.delivered == 0 {
        problems.push("drain: no event arrived".to_owned());
    }
    if b.requests == 0 {
        problems.push("bare POST: no successful request".to_owned());
    }
    if m.delivered == 0 || m.failed_attempts == 0 {
        problems.push(format!(
            "memory: {} deliveries and {} failed attempts (both expected)",
            m.delivered, m.failed_attempts
        ));
    }
    for (line, n) in [
        ("latency", l.out_of_order),
        ("drain", d.out_of_order),
        ("memory", m.out_of_order),
    ] {
        if n > 0 {
            problems.push(format!("{line}: {n} events arrived out of order"));
        }
    }
    problems
}

/// A server started for webhooks: private addresses allowed (the receiver
/// is on 127.0.0.1), fast retries, metrics on.
struct Replica {
    server: Server,
    target: Target,
    metrics: SocketAddr,
}

async fn start_replica(
    server_bin: &Path,
    work: &Path,
    url: &str,
    name: &str,
) -> anyhow::Result<Replica> {
    let address = free_address()?;
    let metrics = free_address()?;
    // Every replica gets the same key, as in production.
    let key_file = work.join("webhook.key");
    if !key_file.exists() {
        std::fs::write(&key_file, "YmVuY2htYXJrIHdlYmhvb2sga2V5LCAzMiBieXRlcyE=\n")?;
    }
    let mut command: Command = crate::service_command(server_bin, address, url);
    command
        .arg("--metrics-listen")
        .arg(metrics.to_string())
        .arg("--webhook-key-file")
        .arg(&key_file)
        .arg("--webhook-allow-private-addresses")
        .arg("--webhook-retry-schedule")
        .arg(RETRY_SCHEDULE);
    let log = work.join(format!("{}.log", name.replace(' ', "-")));
    let server = Server::start(name, command, address, &log).await?;
    server.serving(crate::SERVING_TIMEOUT).await?;
    let target = Target::connect(&server.url(), 2).await?;
    Ok(Replica {
        server,
        target,
        metrics,
    })
}

/// The latency, drain and bare lines: two replicas on one database.
async fn replicas(
    options: &WebhookOptions,
    server_bin: &Path,
    work: &Path,
    url: &str,
    receiver: &Receiver,
    results: &mut Results,
) -> anyhow::Result<()> {
    let mut replicas = Vec::new();
    for n in 1..=2 {
        replicas.push(start_replica(server_bin, work, url, &format!("replica {n}")).await?);
    }
    let db = connections::db::connect(&connections::config::DatabaseSettings::new(url.to_owned()))
        .await?;
    let pids: Vec<Option<u32>> = replicas.iter().map(|r| r.server.pid()).collect();
    let vacuum = Vacuum::start(url, options, results).await?;

    eprintln!(
        "webhooks: a partner organization with {} connections written through each replica",
        options.connections
    );
    let partner = seed::caller(replicas[0].target.channel(0), ADMIN_TOKEN, "Partner").await?;
    let mut pools = Vec::new();
    for (n, replica) in replicas.iter().enumerate() {
        pools.push(
            partner_pool(
                &replica.target,
                &partner,
                options.connections,
                &format!("Replica {} destination", n + 1),
            )
            .await?,
        );
    }
    // Made after the connections: it receives only their transitions.
    let endpoint = create_endpoint(
        &replicas[0].target,
        &partner.key,
        &receiver.url("/partner/hooks"),
    )
    .await?;
    // Each successful write's response time, by (connection, etag): the
    // delivery's body names the same connection and etag.
    let responses: Arc<Mutex<HashMap<(String, String), SystemTime>>> = Arc::default();
    let observer: Observer = {
        let responses = responses.clone();
        Arc::new(move |connection| {
            let at = SystemTime::now();
            responses
                .lock()
                .unwrap()
                .insert((connection.id.clone(), connection.etag.clone()), at);
        })
    };
    let calls: Vec<Call> = replicas
        .iter()
        .zip(pools)
        .map(|(replica, pool)| {
            workload::observed_cycles(replica.target.clone(), pool, Some(observer.clone()))
        })
        .collect();

    // Latency.
    eprintln!(
        "webhooks: latency, {} events/s over both replicas for {} s after {} s of warm-up",
        options.rate,
        options.duration,
        WARMUP.as_secs()
    );
    let window = Window {
        warmup: WARMUP,
        duration: Duration::from_secs_f64(options.duration),
    };
    let attempts_before = succeeded(&replicas).await;
    let cpu_before = cpu_samples(&pids);
    let begin = SystemTime::now();
    let depth = QueueDepth::start(db.clone());
    let (one, two) = tokio::join!(
        load::open_loop(calls[0].clone(), options.rate / 2.0, window),
        load::open_loop(calls[1].clone(), options.rate / 2.0, window),
    );
    let written = responses.lock().unwrap().clone();
    let arrived = receiver
        .await_distinct("partner", written.len() as u64, ARRIVAL_WAIT)
        .await;
    results.latency.queue_max = depth.stop().await?;
    let cpu_after = cpu_samples(&pids);
    let attempts_after = succeeded(&replicas).await;
    let latency = &mut results.latency;
    latency.offered_rate = options.rate;
    latency.seconds = options.duration;
    latency.writes = written.len() as u64;
    for outcome in [&one, &two] {
        for (reason, n) in &outcome.errors {
            *latency.write_errors.entry(reason.clone()).or_default() += n;
        }
    }
    latency.never_arrived = (written.len() as u64).saturating_sub(arrived);
    let measured_from = begin + WARMUP;
    let arrivals = receiver.arrivals("partner");
    let by_write: HashMap<(String, String), &Arrival> = arrivals
        .iter()
        .map(|a| ((a.connection.clone(), a.etag.clone()), a))
        .collect();
    let mut from_create = histogram();
    let mut from_response = histogram();
    let mut by_stretch: Vec<Histogram<u64>> = Vec::new();
    for (key, response) in &written {
        if *response < measured_from {
            continue;
        }
        latency.events += 1;
        let Some(arrival) = by_write.get(key) else {
            continue;
        };
        if let Some(created) = arrival.create_time {
            let took = micros_between(created, arrival.at);
            from_create.saturating_record(took);
            let stretch = usize::try_from(
                micros_between(measured_from, *response) / micros(LATENCY_STRETCH),
            )?;
            if by_stretch.len() <= stretch {
                by_stretch.resize_with(stretch + 1, histogram);
            }
            by_stretch[stretch].saturating_record(took);
        }
        if arrival.at < *response {
            latency.arrived_before_response += 1;
        }
        from_response.saturating_record(micros_between(*response, arrival.at));
    }
    (
        latency.from_create_p50_ms,
        latency.from_create_p99_ms,
        latency.from_create_max_ms,
    ) = quantiles(&from_create);
    (
        latency.from_response_p50_ms,
        latency.from_response_p99_ms,
        latency.from_response_max_ms,
    ) = quantiles(&from_response);
    latency.p99_ms_by_stretch = by_stretch.iter().map(|h| quantiles(h).1).collect();
    (latency.repeats, latency.out_of_order) = receiver.faults("partner");
    latency.delivered_by = deliverer(&attempts_before, &attempts_after);
    latency.cpu_us_per_event = cpu_per_event(&cpu_before, &cpu_after, written.len() as f64);

    // Backlog drain.
    eprintln!(
        "webhooks: backlog, {} events with the endpoint disabled, {} writers on each replica",
        options.backlog, options.backlog_writers
    );
    set_disabled(&replicas[0].target, &partner.key, &endpoint, true).await?;
    // The deliverer sees the endpoint disabled when it next looks at its
    // leases, within a second.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let drain = &mut results.drain;
    drain.writers = options.backlog_writers * 2;
    let write_start = Instant::now();
    let (events, errors) = write_count(&calls, options.backlog_writers, options.backlog).await;
    drain.write_seconds = write_start.elapsed().as_secs_f64();
    drain.events = events;
    drain.write_errors = errors;
    // Stats of the writes reach pg_stat_database before the drain's.
    tokio::time::sleep(STATS_FLUSH).await;
    drain.queued = count(&db, "SELECT count(*) FROM webhook_queue").await?;
    let before = receiver.distinct("partner");
    let (repeats_before, out_of_order_before) = receiver.faults("partner");
    let stats_before = db_activity(&db).await?;
    let cpu_before = cpu_samples(&pids);
    eprintln!(
        "webhooks: {} events queued (written in {:.1} s); enabling the endpoint",
        drain.queued, drain.write_seconds
    );
    let enabled = Instant::now();
    set_disabled(&replicas[0].target, &partner.key, &endpoint, false).await?;
    let deadline = enabled + Duration::from_secs_f64(options.drain_timeout);
    let mut first = None;
    let mut last_progress = (before, enabled);
    let mut last_seen = (before, enabled);
    loop {
        let now = Instant::now();
        let count = receiver.distinct("partner");
        if count > last_seen.0 {
            last_seen = (count, now);
            if first.is_none() {
                first = Some(now);
            }
        }
        if now - last_progress.1 >= Duration::from_secs(5) {
            let rate = (count - last_progress.0) as f64 / (now - last_progress.1).as_secs_f64();
            drain.rate_every_5s.push(rate);
            if drain.rate_every_5s.len().is_multiple_of(2) {
                eprintln!(
                    "webhooks: drain {} of {} after {:.0} s, {rate:.0}/s",
                    count - before,
                    drain.queued,
                    (now - enabled).as_secs_f64()
                );
            }
            last_progress = (count, now);
        }
        if count - before >= drain.queued as u64 {
            drain.drained = true;
            break;
        }
        if now >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drain.delivered = last_seen.0 - before;
    let end = if drain.drained {
        last_seen.1
    } else {
        Instant::now()
    };
    drain.seconds = (end - enabled).as_secs_f64();
    drain.events_per_second = drain.delivered as f64 / drain.seconds;
    drain.first_arrival_seconds = first.map(|f| (f - enabled).as_secs_f64());
    if let Some(first) = first
        && end > first
    {
        drain.events_per_second_after_first =
            drain.delivered.saturating_sub(1) as f64 / (end - first).as_secs_f64();
    }
    // The last attempts are recorded after they arrive.
    let wait_queue = Instant::now() + Duration::from_secs(if drain.drained { 30 } else { 0 });
    loop {
        drain.queue_left = count(&db, "SELECT count(*) FROM webhook_queue").await?;
        if drain.queue_left == 0 || Instant::now() >= wait_queue {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu_after = cpu_samples(&pids);
    tokio::time::sleep(STATS_FLUSH).await;
    let stats_after = db_activity(&db).await?;
    let (repeats, out_of_order) = receiver.faults("partner");
    drain.repeats = repeats - repeats_before;
    drain.out_of_order = out_of_order - out_of_order_before;
    drain.cpu_us_per_event = cpu_per_event(&cpu_before, &cpu_after, drain.delivered as f64);
    if drain.delivered > 0 {
        let per =
            |i: usize| Some((stats_after[i] - stats_before[i]) as f64 / drain.delivered as f64);
        drain.db_transactions_per_event = per(0);
        drain.db_rows_returned_per_event = per(1);
        drain.db_rows_fetched_per_event = per(2);
    }

    // Bare POST.
    eprintln!(
        "webhooks: bare HTTP/1.1 POST to the receiver, {} in flight",
        options.concurrency
    );
    let body = receiver.sample_body().context("no delivery body to send")?;
    let bare = &mut results.bare;
    bare.concurrency = options.concurrency;
    bare.seconds = options.bare_duration;
    bare.body_bytes = body.len();
    let window = Window {
        warmup: Duration::from_secs(1),
        duration: Duration::from_secs_f64(options.bare_duration),
    };
    let cpu_before = cpu::sample(None);
    let outcome = bare_posts(receiver.address, body, options.concurrency, window).await?;
    let cpu_after = cpu::sample(None);
    bare.requests_per_second = outcome.throughput();
    bare.requests = outcome.measured();
    bare.p50_ms = outcome.latency_ms(0.5);
    bare.p99_ms = outcome.latency_ms(0.99);
    bare.errors = outcome.errors.clone();
    let requests = outcome.throughput() * cpu::elapsed(&cpu_before, &cpu_after);
    bare.cpu_us_per_request = cpu::per_call(&cpu_before, &cpu_after, requests)
        .get("load generator")
        .copied();
    bare.drain_over_bare =
        Some(results.drain.events_per_second / bare.requests_per_second).filter(|r| r.is_finite());
    receiver.forget("bare");

    vacuum.stop().await?;
    db.close().await?;
    for replica in replicas {
        replica.server.stop().await?;
    }
    Ok(())
}

/// The memory line: one server, first without endpoints, then with them.
async fn memory(
    options: &WebhookOptions,
    server_bin: &Path,
    work: &Path,
    url: &str,
    receiver: &Receiver,
    results: &mut Results,
) -> anyhow::Result<()> {
    let per_organization = options.endpoints / options.organizations.max(1);
    anyhow::ensure!(
        (1..=20).contains(&per_organization),
        "--endpoints / --organizations must be 1 to 20 (the server's limit per organization)"
    );
    let replica = start_replica(server_bin, work, url, "memory server").await?;
    let pid = replica.server.pid().context("the server exited")?;
    let db = connections::db::connect(&connections::config::DatabaseSettings::new(url.to_owned()))
        .await?;
    let vacuum = Vacuum::start(url, options, results).await?;
    eprintln!(
        "webhooks: memory, {} organizations connected to one hub",
        options.organizations
    );
    let hub = seed::caller(replica.target.channel(0), ADMIN_TOKEN, "Hub").await?;
    let pool = partner_pool(
        &replica.target,
        &hub,
        options.organizations,
        "Memory organization",
    )
    .await?;
    let keys: Vec<AsciiMetadataValue> = pool.iter().map(|e| e.destination.clone()).collect();
    let call = workload::cycles(replica.target.clone(), pool);
    let flow = Window {
        warmup: Duration::ZERO,
        duration: Duration::from_secs_f64(options.events as f64 / MEMORY_RATE),
    };
    let memory = &mut results.memory;
    memory.organizations = options.organizations;
    memory.events = options.events;

    eprintln!(
        "webhooks: memory, {} events without endpoints",
        options.events
    );
    let watch = RssWatch::start(pid);
    let outcome = load::open_loop(call.clone(), MEMORY_RATE, flow).await;
    merge_errors(&mut memory.write_errors, &outcome.errors);
    tokio::time::sleep(MEMORY_SETTLE).await;
    memory.rss_without_endpoints_mib = watch.stop().await;

    let failing = (options.endpoints / 100).max(1);
    eprintln!(
        "webhooks: memory, {} endpoints ({} answered 500), then {} events",
        per_organization * keys.len(),
        failing,
        options.events
    );
    let mut made = 0;
    let mut creating = JoinSet::new();
    for (org, key) in keys.iter().enumerate() {
        for n in 0..per_organization {
            let path = if n == 0 && org < failing {
                format!("/fail/{org}")
            } else {
                format!("/spread/{org}-{n}")
            };
            let (target, key, url) = (replica.target.clone(), key.clone(), receiver.url(&path));
            creating.spawn(async move { create_endpoint(&target, &key, &url).await });
            if creating.len() >= 16 {
                creating.join_next().await.context("no task")???;
            }
            made += 1;
        }
    }
    while let Some(created) = creating.join_next().await {
        created??;
    }
    memory.endpoints = made;
    memory.failing_endpoints = failing;
    // The replica takes the new endpoints' leases within a second.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let watch = RssWatch::start(pid);
    let outcome = load::open_loop(call, MEMORY_RATE, flow).await;
    merge_errors(&mut memory.write_errors, &outcome.errors);
    let written = Instant::now();
    let deadline = written + Duration::from_secs(120);
    loop {
        let left = count(
            &db,
            "SELECT count(*) FROM webhook_queue q JOIN webhook_endpoints e ON e.id = q.endpoint_id \
             WHERE e.url NOT LIKE '%/fail/%'",
        )
        .await?;
        if left == 0 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    memory.settle_seconds = written.elapsed().as_secs_f64();
    tokio::time::sleep(MEMORY_SETTLE).await;
    memory.rss_with_endpoints_mib = watch.stop().await;
    memory.rss_end_mib = status_mib(pid, "VmRSS");
    memory.peak_end_mib = status_mib(pid, "VmHWM");
    memory.increase_mb = match (
        memory.rss_without_endpoints_mib,
        memory.rss_with_endpoints_mib,
    ) {
        (Some(without), Some(with)) => Some((with - without) * 1.048_576),
        _ => None,
    };
    memory.delivered = receiver.distinct("spread");
    memory.failed_attempts = receiver.requests("fail");
    (memory.repeats, memory.out_of_order) = receiver.faults("spread");
    vacuum.stop().await?;
    db.close().await?;
    replica.server.stop().await
}

/// `count` connections from `partner` (their source) to new organizations,
/// made through `target`: the pool the writers cycle through.
async fn partner_pool(
    target: &Target,
    partner: &Caller,
    count: usize,
    label: &str,
) -> anyhow::Result<Vec<PoolEntry>> {
    let mut pool = Vec::with_capacity(count);
    for start in (0..count).step_by(16) {
        let mut batch = JoinSet::new();
        for i in start..(start + 16).min(count) {
            let channel = target.channel(i as u64);
            let mut client = target.connections(i as u64);
            let partner = partner.clone();
            let name = format!("{label} {i}");
            batch.spawn(async move {
                let destination = seed::caller(channel, ADMIN_TOKEN, &name).await?;
                let created = client
                    .create_connection(authorized(
                        CreateConnectionRequest {
                            message: String::new(),
                            destination_organization_id: destination.id.clone(),
                            data_types: vec![DataType::Transaction.into()],
                            request_id: String::new(),
                        },
                        &partner.key,
                    ))
                    .await?
                    .into_inner()
                    .connection
                    .context("no connection")?;
                anyhow::Ok((
                    i,
                    PoolEntry {
                        id: created.id,
                        source: partner.key.clone(),
                        destination: destination.key,
                    },
                ))
            });
        }
        let mut made = Vec::new();
        while let Some(entry) = batch.join_next().await {
            made.push(entry??);
        }
        made.sort_by_key(|(i, _)| *i);
        pool.extend(made.into_iter().map(|(_, entry)| entry));
    }
    Ok(pool)
}

/// Creates an endpoint for the organization of `key` that takes every
/// event; returns its ID.
async fn create_endpoint(
    target: &Target,
    key: &AsciiMetadataValue,
    url: &str,
) -> anyhow::Result<String> {
    let reply = WebhookServiceClient::new(target.channel(0))
        .create_webhook_endpoint(authorized(
            CreateWebhookEndpointRequest {
                url: url.to_owned(),
                ..Default::default()
            },
            key,
        ))
        .await?
        .into_inner();
    anyhow::ensure!(reply.secret.starts_with("whsec_"), "no secret");
    Ok(reply.endpoint.context("no endpoint")?.id)
}

/// Disables or enables endpoint `id`.
async fn set_disabled(
    target: &Target,
    key: &AsciiMetadataValue,
    id: &str,
    disabled: bool,
) -> anyhow::Result<()> {
    let reply = WebhookServiceClient::new(target.channel(0))
        .update_webhook_endpoint(authorized(
            UpdateWebhookEndpointRequest {
                endpoint: Some(WebhookEndpoint {
                    id: id.to_owned(),
                    disabled,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["disabled".to_owned()],
                }),
            },
            key,
        ))
        .await?
        .into_inner();
    let endpoint = reply.endpoint.context("no endpoint")?;
    anyhow::ensure!(
        endpoint.disabled == disabled,
        "disabled is {}",
        endpoint.disabled
    );
    Ok(())
}

/// Runs `writers` closed-loop writers on each of `calls` until `total`
/// writes have been made; returns the successful ones and the failures by
/// reason.
async fn write_count(calls: &[Call], writers: usize, total: u64) -> (u64, BTreeMap<String, u64>) {
    let next = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let errors: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let mut tasks = JoinSet::new();
    for (c, call) in calls.iter().enumerate() {
        for w in 0..writers {
            let (call, next, ok, errors) = (call.clone(), next.clone(), ok.clone(), errors.clone());
            let seed = ((c * writers + w) as u64) << 32;
            tasks.spawn(async move {
                let mut i = seed;
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    match call(i).await {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(reason) => *errors.lock().unwrap().entry(reason).or_default() += 1,
                    }
                    i += 1;
                }
            });
        }
    }
    while tasks.join_next().await.is_some() {}
    let errors = errors.lock().unwrap().clone();
    (ok.load(Ordering::SeqCst), errors)
}

/// Closed-loop POSTs of `body` to the receiver, `concurrency` at once, each
/// on an HTTP/1.1 connection of its own that stays open.
async fn bare_posts(
    address: SocketAddr,
    body: Bytes,
    concurrency: usize,
    window: Window,
) -> anyhow::Result<load::Outcome> {
    let mut idle = VecDeque::new();
    for _ in 0..concurrency {
        let stream = tokio::net::TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        idle.push_back(sender);
    }
    let idle = Arc::new(Mutex::new(idle));
    let host = address.to_string();
    let call = load::call(move |_| {
        let (idle, body, host) = (idle.clone(), body.clone(), host.clone());
        async move {
            let Some(mut sender) = idle.lock().unwrap().pop_front() else {
                return Err("no idle connection".to_owned());
            };
            let result = post(&mut sender, &host, body).await;
            idle.lock().unwrap().push_back(sender);
            result
        }
    });
    Ok(load::closed_loop(call, concurrency, window).await)
}

/// One POST as a delivery makes it: the same headers, a new webhook-id.
async fn post(sender: &mut SendRequest<Full<Bytes>>, host: &str, body: Bytes) -> CallResult {
    sender
        .ready()
        .await
        .map_err(|err| format!("connection: {err}"))?;
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let request = hyper::Request::post("/bare/hooks")
        .header(hyper::header::HOST, host)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, USER_AGENT)
        .header("webhook-id", uuid::Uuid::now_v7().to_string())
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", SIGNATURE)
        .body(Full::new(body))
        .map_err(|err| format!("request: {err}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|err| format!("request: {err}"))?;
    let status = response.status();
    response
        .into_body()
        .collect()
        .await
        .map_err(|err| format!("response: {err}"))?;
    if status == StatusCode::OK {
        Ok(())
    } else {
        Err(format!("HTTP {}", status.as_u16()))
    }
}

/// `webhook_delivery_attempts_total{outcome="succeeded"}` of each replica.
async fn succeeded(replicas: &[Replica]) -> Vec<Option<f64>> {
    let mut counts = Vec::new();
    for replica in replicas {
        let text = crate::soak::scrape(replica.metrics).await.ok();
        counts.push(text.and_then(|text| {
            crate::soak::gauge(
                &text,
                r#"webhook_delivery_attempts_total{outcome="succeeded"}"#,
            )
        }));
    }
    counts
}

/// The replica (1-based) whose successful attempts grew the most.
fn deliverer(before: &[Option<f64>], after: &[Option<f64>]) -> Option<usize> {
    before
        .iter()
        .zip(after)
        .enumerate()
        .map(|(n, (b, a))| (n + 1, a.unwrap_or(0.0) - b.unwrap_or(0.0)))
        .filter(|&(_, grew)| grew > 0.0)
        .max_by(|x, y| x.1.total_cmp(&y.1))
        .map(|(n, _)| n)
}

/// A CPU sample per replica (each names its replica "server").
fn cpu_samples(pids: &[Option<u32>]) -> Vec<cpu::Sample> {
    pids.iter().map(|&pid| cpu::sample(pid)).collect()
}

/// CPU µs per event of each replica, PostgreSQL and this process.
fn cpu_per_event(
    before: &[cpu::Sample],
    after: &[cpu::Sample],
    events: f64,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (n, (b, a)) in before.iter().zip(after).enumerate() {
        let used = cpu::per_call(b, a, events);
        if let Some(&us) = used.get("server") {
            out.insert(format!("replica {}", n + 1), us);
        }
        if n == 0 {
            for (party, name) in [("postgres", "postgres"), ("load generator", "bench")] {
                if let Some(&us) = used.get(party) {
                    out.insert(name.to_owned(), us);
                }
            }
        }
    }
    out
}

/// A `SELECT count(*)`.
async fn count(db: &DatabaseConnection, sql: &str) -> anyhow::Result<i64> {
    let row = db
        .query_one_raw(Statement::from_string(DbBackend::Postgres, sql.to_owned()))
        .await?
        .context("count(*) returned no row")?;
    Ok(row.try_get_by_index::<i64>(0)?)
}

/// The database's transactions, rows returned by scans and rows fetched by
/// index so far, from `pg_stat_database`.
async fn db_activity(db: &DatabaseConnection) -> anyhow::Result<[i64; 3]> {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT xact_commit + xact_rollback, tup_returned, tup_fetched \
             FROM pg_stat_database WHERE datname = current_database()",
        ))
        .await?
        .context("no pg_stat_database row")?;
    Ok([
        row.try_get_by_index::<i64>(0)?,
        row.try_get_by_index::<i64>(1)?,
        row.try_get_by_index::<i64>(2)?,
    ])
}

fn merge_errors(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (reason, n) in from {
        *into.entry(reason.clone()).or_default() += n;
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// p50, p99 and max of a histogram of µs, in ms.
fn quantiles(h: &Histogram<u64>) -> (f64, f64, f64) {
    if h.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let ms = |us: u64| us as f64 / 1000.0;
    (
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max()),
    )
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Microseconds from `from` to `to`, at least 1 (0 and before count as 1).
fn micros_between(from: SystemTime, to: SystemTime) -> u64 {
    to.duration_since(from)
        .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .max(1)
}

/// Samples the number of rows in the webhook queue every second and
/// keeps the most.
struct QueueDepth {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<anyhow::Result<i64>>,
}

impl QueueDepth {
    fn start(db: DatabaseConnection) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut most = 0;
                while !stop.load(Ordering::SeqCst) {
                    most = most.max(count(&db, "SELECT count(*) FROM webhook_queue").await?);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Ok(most)
            }
        });
        Self { stop, task }
    }

    async fn stop(self) -> anyhow::Result<i64> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await?
    }
}

/// The harness's vacuum, when the PostgreSQL server's autovacuum is off:
/// [`VACUUMED`] every 10 s, as autovacuum would. Without it the tables'
/// statistics stay as they were when the database was made (empty tables),
/// and plans made from them do not fit a queue of thousands of events.
struct Vacuum {
    running: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Vacuum {
    async fn start(
        url: &str,
        options: &WebhookOptions,
        results: &mut Results,
    ) -> anyhow::Result<Self> {
        let running = Arc::new(AtomicBool::new(true));
        let mut task = None;
        if let Some(db) = crate::freshness::autovacuum_off(url).await? {
            results.autovacuum_off = true;
            if options.no_vacuum {
                db.close().await?;
            } else {
                results.vacuumed_by_harness = true;
                task = Some(tokio::spawn(crate::freshness::vacuum_until(
                    db,
                    running.clone(),
                    VACUUMED,
                )));
            }
        }
        Ok(Self { running, task })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.running.store(false, Ordering::SeqCst);
        if let Some(task) = self.task {
            task.await??;
        }
        Ok(())
    }
}

/// Samples a process's RSS every 50 ms and keeps the most.
struct RssWatch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Option<f64>>,
}

impl RssWatch {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut most: Option<f64> = None;
                loop {
                    if let Some(rss) = status_mib(pid, "VmRSS") {
                        most = Some(most.map_or(rss, |m| m.max(rss)));
                    }
                    if stop.load(Ordering::SeqCst) {
                        return most;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        Self { stop, task }
    }

    /// The most RSS sampled, MiB.
    async fn stop(self) -> Option<f64> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.ok().flatten()
    }
}

/// The receiver: an HTTP/1.1 server on 127.0.0.1 that answers 500 to
/// `/fail/...` and 200 to anything else at once, and notes the first
/// arrival of each delivery (by path and `webhook-id`). Paths are grouped
/// by their first segment (`/partner/...`: group "partner").
struct Receiver {
    address: SocketAddr,
    shared: Arc<Mutex<Received>>,
}

/// What the receiver saw.
#[derive(Default)]
struct Received {
    /// The first arrival of each delivery, by path and webhook-id.
    first: HashMap<(String, String), Arrival>,
    /// Per group: distinct deliveries, requests, repeats, first arrivals
    /// out of their connection's order.
    groups: HashMap<String, GroupCounts>,
    /// The last sequence that arrived, by path and connection.
    sequence: HashMap<(String, String), i64>,
    /// A body as the server sent it.
    sample: Option<Bytes>,
}

#[derive(Debug, Default, Clone, Copy)]
struct GroupCounts {
    distinct: u64,
    requests: u64,
    repeats: u64,
    out_of_order: u64,
}

/// The first arrival of a delivery.
#[derive(Debug, Clone)]
struct Arrival {
    group: String,
    at: SystemTime,
    /// The event's `create_time` (the body's `timestamp`).
    create_time: Option<SystemTime>,
    /// The connection and its etag after the event, from the body.
    connection: String,
    etag: String,
}

/// The parts of a delivery's body the receiver reads.
#[derive(Deserialize)]
struct Body {
    timestamp: String,
    data: BodyData,
}

#[derive(Deserialize)]
struct BodyData {
    event: BodyEvent,
    connection: BodyConnection,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BodyEvent {
    connection_id: String,
    /// An int64: a string in the proto3 JSON mapping.
    sequence: Int64,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Int64 {
    Number(i64),
    Text(String),
}

#[derive(Deserialize)]
struct BodyConnection {
    etag: String,
}

impl Receiver {
    async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let shared: Arc<Mutex<Received>> = Arc::default();
        let app = Router::new().fallback(receive).with_state(shared.clone());
        let listener = listener.tap_io(|stream| {
            let _ = stream.set_nodelay(true);
        });
        tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                eprintln!("webhooks: the receiver stopped: {err}");
            }
        });
        Ok(Self { address, shared })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    fn counts(&self, group: &str) -> GroupCounts {
        let received = self.shared.lock().unwrap();
        received.groups.get(group).copied().unwrap_or_default()
    }

    fn distinct(&self, group: &str) -> u64 {
        self.counts(group).distinct
    }

    fn requests(&self, group: &str) -> u64 {
        self.counts(group).requests
    }

    /// Repeats and first arrivals out of order in `group`.
    fn faults(&self, group: &str) -> (u64, u64) {
        let counts = self.counts(group);
        (counts.repeats, counts.out_of_order)
    }

    fn arrivals(&self, group: &str) -> Vec<Arrival> {
        let received = self.shared.lock().unwrap();
        received
            .first
            .values()
            .filter(|a| a.group == group)
            .cloned()
            .collect()
    }

    fn sample_body(&self) -> Option<Bytes> {
        self.shared.lock().unwrap().sample.clone()
    }

    /// Drops what `group` received.
    fn forget(&self, group: &str) {
        let mut received = self.shared.lock().unwrap();
        received.first.retain(|_, a| a.group != group);
        received.groups.remove(group);
    }

    /// Waits until `group` has `count` distinct deliveries, at most
    /// `within`; returns how many it has.
    async fn await_distinct(&self, group: &str, count: u64, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let distinct = self.distinct(group);
            if distinct >= count || Instant::now() >= deadline {
                return distinct;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn receive(
    State(shared): State<Arc<Mutex<Received>>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let at = SystemTime::now();
    let path = uri.path();
    let group = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let parsed = serde_json::from_slice::<Body>(&body).ok();
    let mut received = shared.lock().unwrap();
    let received = &mut *received;
    let counts = received.groups.entry(group.clone()).or_default();
    counts.requests += 1;
    let key = (path.to_owned(), id);
    if received.first.contains_key(&key) {
        counts.repeats += 1;
    } else {
        counts.distinct += 1;
        let (mut connection, mut etag, mut create_time) = (String::new(), String::new(), None);
        if let Some(parsed) = parsed {
            let sequence = match parsed.data.event.sequence {
                Int64::Number(n) => n,
                Int64::Text(text) => text.parse().unwrap_or_default(),
            };
            // The bare line sends one body over and over.
            if group != "bare" {
                let last = received
                    .sequence
                    .entry((path.to_owned(), parsed.data.event.connection_id.clone()))
                    .or_insert(0);
                if sequence <= *last {
                    counts.out_of_order += 1;
                } else {
                    *last = sequence;
                }
            }
            create_time = chrono::DateTime::parse_from_rfc3339(&parsed.timestamp)
                .ok()
                .map(SystemTime::from);
            connection = parsed.data.event.connection_id;
            etag = parsed.data.connection.etag;
            if received.sample.is_none() && group != "bare" {
                received.sample = Some(body.clone());
            }
        }
        received.first.insert(
            key,
            Arrival {
                group,
                at,
                create_time,
                connection,
                etag,
            },
        );
    }
    if path.starts_with("/fail/") {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
}

fn print(results: &Results) {
    let (l, d, b, m) = (
        &results.latency,
        &results.drain,
        &results.bare,
        &results.memory,
    );
    let cpu = |map: &BTreeMap<String, f64>| {
        map.iter()
            .map(|(party, us)| format!("{party} {us:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mib = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1} MiB"));
    if results.smoke {
        println!("\nsmoke run: small numbers, short lines; the numbers mean nothing");
    }
    if results.vacuumed_by_harness {
        println!(
            "\nautovacuum is off on this PostgreSQL server: the harness ran `VACUUM (ANALYZE) {VACUUMED}` every {} s",
            crate::freshness::VACUUM_EVERY.as_secs()
        );
    } else if results.autovacuum_off {
        println!(
            "\nautovacuum is off on this PostgreSQL server, and the harness did not vacuum nor analyze (--no-vacuum)"
        );
    }
    println!(
        "\nwebhook latency, two replicas on one database, writers on both at {:.0} events/s (open loop) for {} s, {} events:",
        l.offered_rate, l.seconds, l.events
    );
    println!(
        "  from the event's create_time to its first arrival: p50 {:.2} ms, p99 {:.2} ms ({}), max {:.2} ms",
        l.from_create_p50_ms,
        l.from_create_p99_ms,
        results.targets[0].text(),
        l.from_create_max_ms
    );
    println!(
        "  from the write's response on the client: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; arrived before the response: {}",
        l.from_response_p50_ms,
        l.from_response_p99_ms,
        l.from_response_max_ms,
        l.arrived_before_response
    );
    println!(
        "  delivered by replica {}; never arrived: {}; repeats: {}; out of order: {}; failed writes: {}",
        l.delivered_by.map_or("-".to_owned(), |n| n.to_string()),
        l.never_arrived,
        l.repeats,
        l.out_of_order,
        l.write_errors.values().sum::<u64>()
    );
    println!(
        "  p99 by {} s of writes, ms: {}; the queue held at most {} events",
        LATENCY_STRETCH.as_secs(),
        l.p99_ms_by_stretch
            .iter()
            .map(|p| format!("{p:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
        l.queue_max
    );
    println!("  CPU per event, µs: {}", cpu(&l.cpu_us_per_event));
    println!(
        "backlog drain: {} events committed with the endpoint disabled ({} writers, {:.1} s, {:.0}/s), {} queued, then enabled:",
        d.events,
        d.writers,
        d.write_seconds,
        d.events as f64 / d.write_seconds,
        d.queued
    );
    println!(
        "  {} {} events in {:.1} s: {:.0} events/s ({}); first arrival after {}; {:.0}/s from then on",
        if d.drained { "all" } else { "NOT ALL: only" },
        d.delivered,
        d.seconds,
        d.events_per_second,
        results.targets[1].text(),
        d.first_arrival_seconds
            .map_or("-".to_owned(), |s| format!("{s:.2} s")),
        d.events_per_second_after_first
    );
    println!(
        "  queue left: {}; repeats: {}; out of order: {}; CPU per event, µs: {}",
        d.queue_left,
        d.repeats,
        d.out_of_order,
        cpu(&d.cpu_us_per_event)
    );
    let per = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
    println!(
        "  PostgreSQL per event: {} transactions, {} rows returned by scans, {} rows fetched by index",
        per(d.db_transactions_per_event),
        per(d.db_rows_returned_per_event),
        per(d.db_rows_fetched_per_event)
    );
    println!(
        "bare HTTP/1.1 POST of a delivery's body ({} bytes) to the same receiver, {} in flight on keep-alive connections, {} s:",
        b.body_bytes, b.concurrency, b.seconds
    );
    println!(
        "  {:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms; CPU of the bench per request {} µs; failed: {}",
        b.requests_per_second,
        b.p50_ms,
        b.p99_ms,
        per(b.cpu_us_per_request),
        b.errors.values().sum::<u64>()
    );
    println!(
        "  drain / bare: {}",
        b.drain_over_bare
            .map_or("-".to_owned(), |r| format!("{r:.3}"))
    );
    println!(
        "memory: one server, {} endpoints over {} organizations ({} answered 500), {} events without them, then {} with them:",
        m.endpoints, m.organizations, m.failing_endpoints, m.events, m.events
    );
    println!(
        "  RSS at most {} without endpoints, {} with them: {} ({})",
        mib(m.rss_without_endpoints_mib),
        mib(m.rss_with_endpoints_mib),
        m.increase_mb
            .map_or("-".to_owned(), |mb| format!("{mb:+.1} MB")),
        results.targets[2].text()
    );
    println!(
        "  {} deliveries answered 200 (all within {:.1} s of the last write), {} attempts answered 500; RSS {} and peak {} at the end; repeats: {}",
        m.delivered,
        m.settle_seconds,
        m.failed_attempts,
        mib(m.rss_end_mib),
        mib(m.peak_end_mib),
        m.repeats
    );
    let load = |l: &Option<String>| l.clone().unwrap_or_else(|| "-".to_owned());
    println!(
        "run took {:.0} s; load average {} at the start, {} at the end",
        results.run_seconds,
        load(&results.load_at_start),
        load(&results.load_at_end)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A delivery's body for `connection` after its event `sequence`.
    fn body(connection: &str, sequence: i64) -> Bytes {
        Bytes::from(
            serde_json::json!({
                "type": "connection.activated",
                "timestamp": "2026-12-07T16:40:00.123456Z",
                "data": {
                    "event": {"id": "e", "connectionId": connection, "sequence": sequence.to_string()},
                    "connection": {"id": connection, "etag": format!("v{sequence}")},
                    "changeToken": "t",
                },
            })
            .to_string(),
        )
    }

    async fn send(address: SocketAddr, path: &str, id: &str, body: Bytes) -> StatusCode {
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, address.to_string())
            .header("webhook-id", id)
            .body(Full::new(body))
            .unwrap();
        sender.send_request(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn the_receiver_counts_deliveries_repeats_and_order_by_path() {
        let receiver = Receiver::start().await.unwrap();
        let at = receiver.address;
        assert_eq!(
            send(at, "/partner/hooks", "a", body("c1", 2)).await,
            StatusCode::OK
        );
        assert_eq!(
            send(at, "/partner/hooks", "b", body("c1", 3)).await,
            StatusCode::OK
        );
        // A repeat of "a", then an event older than the last of c1.
        send(at, "/partner/hooks", "a", body("c1", 2)).await;
        send(at, "/partner/hooks", "c", body("c1", 1)).await;
        // The same event to another endpoint is another delivery.
        send(at, "/spread/1-1", "a", body("c1", 2)).await;
        assert_eq!(
            send(at, "/fail/0", "a", body("c1", 2)).await,
            StatusCode::INTERNAL_SERVER_ERROR
        );

        assert_eq!(receiver.distinct("partner"), 3);
        assert_eq!(receiver.requests("partner"), 4);
        assert_eq!(receiver.faults("partner"), (1, 1));
        assert_eq!(receiver.distinct("spread"), 1);
        assert_eq!(receiver.requests("fail"), 1);
        let mut arrivals = receiver.arrivals("partner");
        arrivals.sort_by(|x, y| x.etag.cmp(&y.etag));
        let etags: Vec<_> = arrivals.iter().map(|a| a.etag.as_str()).collect();
        assert_eq!(etags, ["v1", "v2", "v3"]);
        let created = SystemTime::from(
            chrono::DateTime::parse_from_rfc3339("2026-12-07T16:40:00.123456Z").unwrap(),
        );
        assert!(arrivals.iter().all(|a| a.create_time == Some(created)));
        assert!(receiver.sample_body().is_some());

        receiver.forget("partner");
        assert_eq!(receiver.distinct("partner"), 0);
        assert!(receiver.arrivals("partner").is_empty());
    }

    #[test]
    fn the_deliverer_is_the_replica_whose_successes_grew() {
        assert_eq!(
            deliverer(&[Some(10.0), Some(5.0)], &[Some(10.0), Some(900.0)]),
            Some(2)
        );
        assert_eq!(deliverer(&[None, None], &[Some(3.0), None]), Some(1));
        assert_eq!(deliverer(&[Some(1.0), None], &[Some(1.0), None]), None);
    }

    #[test]
    fn targets_are_judged_by_their_bound() {
        assert_eq!(
            Verdict::new("p99", Some(100.0), "<=", 100.0).met,
            Some(true)
        );
        assert_eq!(
            Verdict::new("rate", Some(1999.0), ">=", 2000.0).met,
            Some(false)
        );
        assert_eq!(
            Verdict::new("rss", None, "<=", 50.0).text(),
            "target <= 50: not measured"
        );
    }
}
