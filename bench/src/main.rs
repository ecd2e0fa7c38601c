//! Benchmarks the connections service, side by side with its ceilings: a bare
//! tonic server (the transport) and pgbench running the service's own SQL (the
//! database), with one load generator at one concurrency, in one run.

mod cpu;
mod freshness;
mod hello;
mod load;
mod pgbench;
mod process;
mod report;
mod seed;
mod soak;
mod sql;
mod under_writes;
mod webhooks;
mod workload;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::{Parser, Subcommand};
use connections::{config::DatabaseSettings, db::connect, proto::ConnectionState};
use sea_orm::{ConnectionTrait, DbBackend};
use tokio::process::Command;

use crate::{
    load::{Window, closed_loop, open_loop},
    process::{Server, free_address, status_mib},
    report::{IndexBuild, Line, Report, batch_line},
    seed::{Bulk, Caller},
    workload::{PoolEntry, Target},
};

/// Benchmarks the connections service against its transport and database ceilings.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Commands>,
    #[command(flatten)]
    options: Options,
}

// Without a command, the benchmark runs every line.
#[derive(Debug, Subcommand)]
enum Commands {
    /// Runs the service on PostgreSQL under a steady mixed load for a long
    /// while (10 minutes by default) and prints, every minute, the calls made,
    /// the unexpected errors, and the server's memory, file descriptors and
    /// database pool: stability, not speed.
    Soak(soak::SoakOptions),
    /// Runs two servers on one PostgreSQL database with writers on both, and
    /// measures how soon CheckAccess on one shows a transition made on the
    /// other, that no answer is older than its change token, and what open
    /// and stalled watches cost in memory.
    Freshness(freshness::FreshnessOptions),
    /// Measures webhook deliveries on PostgreSQL to a receiver in this
    /// process: latency from commit to arrival with two replicas and
    /// writers on both, how fast a backlog drains (beside bare HTTP POSTs
    /// to the same receiver), and the memory of 1,000 endpoints.
    Webhooks(webhooks::WebhookOptions),
    /// Serves the hello-world baseline (started by the benchmark itself).
    #[command(hide = true)]
    HelloServer {
        #[arg(long)]
        listen: SocketAddr,
    },
}

#[derive(Debug, Clone, clap::Args)]
struct Options {
    /// A quick run with small data that checks the harness works; its numbers
    /// mean nothing.
    #[arg(long)]
    smoke: bool,
    /// Seconds measured per line.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of load before measuring, per line.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Calls in flight (closed loop), and pgbench clients.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// HTTP/2 connections the load generator spreads its calls over.
    #[arg(long, default_value_t = 4)]
    channels: usize,
    /// Open-loop rate, as a fraction of the closed-loop peak.
    #[arg(long, default_value_t = 0.7)]
    load_fraction: f64,
    /// Connections for the "large" organization.
    #[arg(long, default_value_t = 1_000_000)]
    large: u64,
    /// Connections for the "small" organization.
    #[arg(long, default_value_t = 10_000)]
    small: u64,
    #[command(flatten)]
    setup: crate::Setup,
    /// Skip PostgreSQL (and pgbench).
    #[arg(long)]
    no_postgres: bool,
    /// Skip SQLite.
    #[arg(long)]
    no_sqlite: bool,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "target/bench/results.json")]
    output: PathBuf,
}

impl Options {
    fn window(&self) -> Window {
        Window {
            warmup: Duration::from_secs_f64(self.warmup),
            duration: Duration::from_secs_f64(self.duration),
        }
    }

    /// Organizations on each side of the write pool (their product is the
    /// number of connections cycled). The pool must outnumber the calls in
    /// flight: an open-loop line at a few hundred calls a second with a
    /// 100 ms stall on SQLite has some 40 of them.
    fn pool_side(&self) -> usize {
        if self.smoke { 12 } else { 48 }
    }
}

/// Where a command finds PostgreSQL and the server it measures.
#[derive(Debug, Clone, clap::Args)]
struct Setup {
    /// A PostgreSQL server URL; the command creates a database of its own
    /// on it (`connections_bench`, `connections_soak` or
    /// `connections_freshness`) and drops it at the end.
    #[arg(
        long,
        env = "BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    postgres_url: String,
    /// The server binary (default: `connections` next to this program).
    #[arg(long)]
    server_bin: Option<PathBuf>,
}

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789abcdef";
/// Whether the service looks up the caller's API key on every call (so the
/// pgbench scripts must too). It does not: verified keys are cached for 2 s,
/// so under load the lookup is one query per key per 2 s, not per call.
const AUTHENTICATES_EVERY_CALL: bool = false;
const BENCH_DATABASE: &str = "connections_bench";
/// Questions in each BatchCheckAccess of its line.
const BATCH_ITEMS: usize = 100;
/// How long a server may take to report SERVING (to build its CheckAccess
/// index) after it starts.
const SERVING_TIMEOUT: Duration = Duration::from_secs(300);

fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Some(Commands::HelloServer { listen }) => runtime.block_on(hello::serve(listen)),
        Some(Commands::Soak(options)) => runtime.block_on(soak::run(options)),
        Some(Commands::Freshness(options)) => runtime.block_on(freshness::run(options)),
        Some(Commands::Webhooks(options)) => runtime.block_on(webhooks::run(options)),
        None => {
            if cli.options.smoke {
                let o = &mut cli.options;
                (o.duration, o.warmup, o.large, o.small) = (0.5, 0.2, 20_000, 2_000);
            }
            runtime.block_on(run(cli.options))
        }
    }
}

async fn run(options: Options) -> anyhow::Result<()> {
    let work = std::env::temp_dir().join(format!("connections-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let server_bin = server_binary(options.setup.server_bin.as_deref())?;
    let mut report = Report::new(&options.concurrency, options.smoke);
    eprintln!(
        "benchmark: concurrency {}, {} HTTP/2 connections, {} s per line after {} s warm-up",
        options.concurrency, options.channels, options.duration, options.warmup
    );

    let result = async {
        baseline(&options, &work, &mut report).await?;
        if !options.no_postgres {
            postgres(&options, &server_bin, &work, &mut report).await?;
        }
        if !options.no_sqlite {
            let url = format!("sqlite://{}?mode=rwc", work.join("bench.db").display());
            backend(
                &options,
                &server_bin,
                &work,
                &url,
                DbBackend::Sqlite,
                &mut report,
            )
            .await?;
        }
        anyhow::Ok(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&work);
    result?;

    report.compute_ratios();
    report.print();
    if let Some(dir) = options.output.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&options.output, report.json()?)?;
    eprintln!("results written to {}", options.output.display());
    let problems = report.problems();
    for problem in &problems {
        eprintln!("line failed: {problem}");
    }
    anyhow::ensure!(
        problems.is_empty(),
        "{} line(s) failed: {}",
        problems.len(),
        problems.join("; ")
    );
    Ok(())
}

/// The server binary: `path`, or `connections` next to this program.
fn server_binary(path: Option<&Path>) -> anyhow::Result<PathBuf> {
    let server_bin = match path {
        Some(path) => path.to_owned(),
        None => std::env::current_exe()?.with_file_name("connections"),
    };
    anyhow::ensure!(
        server_bin.exists(),
        "no server binary at {server_bin:?}: build it (bench/run.sh does) or pass --server-bin"
    );
    Ok(server_bin)
}

/// The bare tonic server, loaded exactly like the service.
async fn baseline(options: &Options, work: &Path, report: &mut Report) -> anyhow::Result<()> {
    let address = free_address()?;
    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg("hello-server")
        .arg("--listen")
        .arg(address.to_string());
    let server = Server::start("hello server", command, address, &work.join("hello.log")).await?;
    let target = Target::connect(&server.url(), options.channels).await?;
    let key = workload::bearer(&format!("cnx_{}", "x".repeat(43)));
    let (outcome, cpu) = closed(
        workload::hello(target.clone(), key.clone()),
        options.concurrency,
        options.window(),
        server.pid(),
    )
    .await;
    report.add(
        Line::closed("hello (bare tonic)", "none", &outcome, options.concurrency).with_cpu(cpu),
    );
    let rate = outcome.throughput() * options.load_fraction;
    let at_rate = open_loop(workload::hello(target, key), rate, options.window()).await;
    report.add(Line::open("hello (bare tonic)", "none", &at_rate, rate));
    report.memory("hello (bare tonic)", server.peak_rss_mib());
    server.stop().await
}

/// The PostgreSQL lines, with pgbench beside them.
async fn postgres(
    options: &Options,
    server_bin: &Path,
    work: &Path,
    report: &mut Report,
) -> anyhow::Result<()> {
    let (admin, url) = create_database(&options.setup.postgres_url, BENCH_DATABASE)
        .await
        .context("pass --postgres-url, or --no-postgres")?;
    let result = backend(options, server_bin, work, &url, DbBackend::Postgres, report).await;
    drop_database(&admin, BENCH_DATABASE).await?;
    result
}

/// Creates the database `database` (dropping any left from an earlier run)
/// on the PostgreSQL server of `postgres_url`; returns a connection to
/// `postgres_url` to drop it with afterwards, and the new database's URL.
async fn create_database(
    postgres_url: &str,
    database: &str,
) -> anyhow::Result<(sea_orm::DatabaseConnection, String)> {
    let admin = connect(&DatabaseSettings::new(postgres_url.to_owned()))
        .await
        .context("connecting to PostgreSQL")?;
    drop_database(&admin, database).await?;
    admin
        .execute_unprepared(&format!("CREATE DATABASE {database}"))
        .await?;
    Ok((admin, with_database(postgres_url, database)?))
}

/// Drops the database `database`, if it exists, whoever is connected to it.
async fn drop_database(admin: &sea_orm::DatabaseConnection, database: &str) -> anyhow::Result<()> {
    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .await?;
    Ok(())
}

/// `url` with its database name replaced by `database`.
fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(url).context("--postgres-url")?;
    url.set_path(database);
    Ok(url.into())
}

/// Every line for one backend.
async fn backend(
    options: &Options,
    server_bin: &Path,
    work: &Path,
    url: &str,
    backend: DbBackend,
    report: &mut Report,
) -> anyhow::Result<()> {
    let name = match backend {
        DbBackend::Postgres => "postgres",
        _ => "sqlite",
    };
    let address = free_address()?;
    let command = service_command(server_bin, address, url);
    let log = work.join(format!("server-{name}.log"));
    let server = Server::start(&format!("server ({name})"), command, address, &log).await?;
    server.serving(SERVING_TIMEOUT).await?;
    let target = Target::connect(&server.url(), options.channels).await?;
    let db = connect(&DatabaseSettings::new(url.to_owned())).await?;

    eprintln!(
        "{name}: seeding {} + {} connections",
        options.small, options.large
    );
    let channel = target.channel(0);
    let small = seed::caller(channel.clone(), ADMIN_TOKEN, "Small").await?;
    let large = seed::caller(channel.clone(), ADMIN_TOKEN, "Large").await?;
    let creator = seed::caller(channel.clone(), ADMIN_TOKEN, "Creator").await?;
    let bulk = Bulk {
        organizations: options.large.max(options.small).max(100_000),
        small_count: options.small,
        large_count: options.large,
    };
    seed::bulk(&db, bulk, &small, &large).await?;

    // The CheckAccess index is built from the database at start, in the
    // background once the server listens: start it again, so that it holds
    // the rows just inserted, and measure that. Nothing is measured before
    // the server reports SERVING: until then checks read the database.
    let before = server.pid().and_then(|pid| status_mib(pid, "VmRSS"));
    server.stop().await?;
    let address = free_address()?;
    let command = service_command(server_bin, address, url);
    let started = Instant::now();
    let server = Server::start(&format!("server ({name})"), command, address, &log).await?;
    let listening = started.elapsed().as_secs_f64();
    server.serving(SERVING_TIMEOUT).await?;
    let serving = started.elapsed().as_secs_f64();
    let status = |field| server.pid().and_then(|pid| status_mib(pid, field));
    let (rss, peak) = (status("VmRSS"), status("VmHWM"));
    report.index_build(
        name,
        IndexBuild::new(
            count_connections(&db).await?,
            listening,
            serving,
            before,
            rss,
            peak,
        ),
    );
    let target = Target::connect(&server.url(), options.channels).await?;
    let pool = write_pool(&target, options.pool_side()).await?;
    // Each organization of the pool: every source, then every destination
    // (the pool holds each source's connections to every destination in turn).
    let side = options.pool_side();
    let watchers: Vec<_> = (pool.iter().step_by(side).map(|e| e.source.clone()))
        .chain(pool.iter().take(side).map(|e| e.destination.clone()))
        .collect();
    let small_ids: Arc<Vec<String>> =
        Arc::new((1..=options.small).map(seed::connection_id).collect());
    let window = options.window();
    let c = options.concurrency;
    let pid = server.pid();

    // Reads.
    eprintln!("{name}: GetConnection");
    let get = workload::get(target.clone(), small.key.clone(), small_ids.clone());
    let (peak, cpu) = closed(get.clone(), c, window, pid).await;
    report.add(Line::closed("GetConnection", name, &peak, c).with_cpu(cpu));
    if backend == DbBackend::Postgres {
        let script = sql::get_script(work, AUTHENTICATES_EVERY_CALL, options.small)?;
        let (run, cpu) = pgbench(url, &script, &sql::defines(&small), c, window).await?;
        report.add(Line::pgbench("pgbench: GetConnection's SQL", run, c).with_cpu(cpu));
    }
    let rate = peak.throughput() * options.load_fraction;
    let at_rate = open_loop(get, rate, window).await;
    report.add(Line::open("GetConnection", name, &at_rate, rate));

    eprintln!("{name}: CheckAccess");
    let check = workload::check_access(
        target.clone(),
        small.key.clone(),
        small.id.clone(),
        options.small,
    );
    let (peak, cpu) = closed(check.clone(), c, window, pid).await;
    report.add(Line::closed("CheckAccess", name, &peak, c).with_cpu(cpu));
    let rate = peak.throughput() * options.load_fraction;
    let at_rate = open_loop(check, rate, window).await;
    report.add(Line::open("CheckAccess", name, &at_rate, rate));
    eprintln!("{name}: BatchCheckAccess");
    let batch = workload::batch_check_access(
        target.clone(),
        small.key.clone(),
        small.id.clone(),
        options.small,
        BATCH_ITEMS,
    );
    let (outcome, cpu) = closed(batch, c, window, pid).await;
    report.add(Line::closed(&batch_line(BATCH_ITEMS), name, &outcome, c).with_cpu(cpu));
    report.batch_checks(name, BATCH_ITEMS);

    eprintln!("{name}: ListConnections");
    for (owner, rows, label) in [
        (&small, options.small, "small"),
        (&large, options.large, "large"),
    ] {
        let first = workload::list(target.clone(), owner.key.clone(), 50, String::new());
        let (outcome, cpu) = closed(first, c, window, pid).await;
        report.add(
            Line::closed(
                &format!("ListConnections first page, {rows} rows ({label})"),
                name,
                &outcome,
                c,
            )
            .with_cpu(cpu),
        );
        let token = deep_token(&target, owner, rows / 2).await?;
        let deep = workload::list(target.clone(), owner.key.clone(), 50, token);
        let (outcome, cpu) = closed(deep, c, window, pid).await;
        report.add(
            Line::closed(
                &format!(
                    "ListConnections page at row {}, {rows} rows ({label})",
                    rows / 2
                ),
                name,
                &outcome,
                c,
            )
            .with_cpu(cpu),
        );
        let pending = workload::list_in_state(
            target.clone(),
            owner.key.clone(),
            50,
            ConnectionState::Pending,
            usize::try_from(seed::PENDING_PER_ORGANIZATION)?,
        );
        let (outcome, cpu) = closed(pending, c, window, pid).await;
        report.add(
            Line::closed(
                &format!(
                    "ListConnections PENDING only ({} of them), {rows} rows ({label})",
                    seed::PENDING_PER_ORGANIZATION
                ),
                name,
                &outcome,
                c,
            )
            .with_cpu(cpu),
        );
    }

    // Writes.
    eprintln!("{name}: Activate/Deactivate/Reactivate cycles");
    let cycles = workload::cycles(target.clone(), pool);
    let (peak, cpu) = closed(cycles.clone(), c, window, pid).await;
    report.add(Line::closed("Activate/Deactivate/Reactivate", name, &peak, c).with_cpu(cpu));
    if backend == DbBackend::Postgres {
        let script = sql::transition_script(
            work,
            AUTHENTICATES_EVERY_CALL,
            options.small,
            options.large,
            c,
        )?;
        let (run, cpu) = pgbench(url, &script, &sql::defines(&large), c, window).await?;
        check_pgbench_transitions(&db, &large).await?;
        report.add(Line::pgbench("pgbench: a transition's transaction", run, c).with_cpu(cpu));
    }
    let rate = peak.throughput() * options.load_fraction;
    let at_rate = open_loop(cycles.clone(), rate, window).await;
    report.add(Line::open(
        "Activate/Deactivate/Reactivate",
        name,
        &at_rate,
        rate,
    ));
    eprintln!("{name}: Activate/Deactivate/Reactivate with watches and token-bound CheckAccess");
    let (outcome, cpu, seen) =
        under_writes::run(&target, cycles, &watchers, c, window, pid).await?;
    report.add(
        Line::closed(
            "Activate/Deactivate/Reactivate + watches + token checks",
            name,
            &outcome,
            c,
        )
        .with_cpu(cpu),
    );
    report.under_writes(name, seen);

    eprintln!("{name}: CreateConnection");
    let create = workload::create(
        target.clone(),
        creator.key.clone(),
        bulk.organizations,
        |n| seed::organization_id(n + 1),
    );
    let (outcome, cpu) = closed(create, c, window, pid).await;
    report.add(Line::closed("CreateConnection", name, &outcome, c).with_cpu(cpu));

    report.memory(&format!("server ({name})"), server.peak_rss_mib());
    db.close().await?;
    server.stop().await
}

/// The command that starts the service on `address` with the database
/// `url`, JSON logs at the default level and the AdminService enabled with
/// [`ADMIN_TOKEN`].
fn service_command(server_bin: &Path, address: SocketAddr, url: &str) -> Command {
    let mut command = Command::new(server_bin);
    command
        .arg("serve")
        .arg("--listen")
        .arg(address.to_string())
        .arg("--database-url")
        .arg(url)
        .arg("--log-format")
        .arg("json")
        .env("CONNECTIONS_ADMIN_TOKEN", ADMIN_TOKEN)
        .env_remove("RUST_LOG");
    command
}

/// The number of connections in the database.
async fn count_connections(db: &sea_orm::DatabaseConnection) -> anyhow::Result<u64> {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT count(*) AS n FROM connections",
        ))
        .await?
        .context("count(*) returned no row")?;
    Ok(u64::try_from(row.try_get::<i64>("", "n")?)?)
}

/// Checks that every pgbench transition changed its row and recorded its
/// event (a guarded update that matched no row would not fail by itself).
async fn check_pgbench_transitions(
    db: &sea_orm::DatabaseConnection,
    large: &Caller,
) -> anyhow::Result<()> {
    let count = |sql: String| async move {
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(DbBackend::Postgres, sql))
            .await?
            .context("no row")?;
        anyhow::Ok(row.try_get_by_index::<i64>(0)?)
    };
    let changes = count(format!(
        "SELECT coalesce(sum(version - 1), 0)::bigint FROM connections \
         WHERE source_organization_id = '{}'",
        large.id
    ))
    .await?;
    let events = count(format!(
        "SELECT count(*) FROM connection_events e JOIN connections c ON c.id = e.connection_id \
         WHERE c.source_organization_id = '{}'",
        large.id
    ))
    .await?;
    anyhow::ensure!(
        changes > 0 && changes == events,
        "pgbench transitions: {changes} version changes but {events} events"
    );
    Ok(())
}

/// Runs a closed-loop line; returns it with the CPU each party spent per call.
async fn closed(
    call: load::Call,
    concurrency: usize,
    window: Window,
    server: Option<u32>,
) -> (load::Outcome, BTreeMap<String, f64>) {
    let before = cpu::sample(server);
    let outcome = closed_loop(call, concurrency, window).await;
    let after = cpu::sample(server);
    let calls = outcome.throughput() * cpu::elapsed(&before, &after);
    (outcome, cpu::per_call(&before, &after, calls))
}

/// Runs a pgbench line; returns it with the CPU each party spent per transaction.
async fn pgbench(
    url: &str,
    script: &Path,
    defines: &[(String, String)],
    clients: usize,
    window: Window,
) -> anyhow::Result<(pgbench::Run, BTreeMap<String, f64>)> {
    let before = cpu::sample(None);
    let run = pgbench::run(url, script, defines, clients, window.duration).await?;
    let after = cpu::sample(None);
    let transactions = run.tps * cpu::elapsed(&before, &after);
    Ok((run, cpu::per_call(&before, &after, transactions)))
}

/// Makes the write pool through the API: `side` sources, each with a
/// connection to every one of `side` destinations.
async fn write_pool(target: &Target, side: usize) -> anyhow::Result<Vec<PoolEntry>> {
    let mut sources = Vec::with_capacity(side);
    let mut destinations = Vec::with_capacity(side);
    let channel = target.channel(0);
    for i in 0..side {
        sources
            .push(seed::caller(channel.clone(), ADMIN_TOKEN, &format!("Writer source {i}")).await?);
        destinations.push(
            seed::caller(
                channel.clone(),
                ADMIN_TOKEN,
                &format!("Writer destination {i}"),
            )
            .await?,
        );
    }
    let mut pool = Vec::with_capacity(side * side);
    for source in &sources {
        let mut batch = tokio::task::JoinSet::new();
        for (i, destination) in destinations.iter().enumerate() {
            let mut client = target.connections(i as u64);
            let (source, destination): (Caller, Caller) = (source.clone(), destination.clone());
            batch.spawn(async move {
                let request = workload::authorized(
                    connections::proto::CreateConnectionRequest {
                        message: String::new(),
                        destination_organization_id: destination.id.clone(),
                        data_types: vec![connections::proto::DataType::Transaction.into()],
                        request_id: String::new(),
                    },
                    &source.key,
                );
                let created = client.create_connection(request).await?.into_inner();
                let id = created.connection.map(|c| c.id).unwrap_or_default();
                anyhow::Ok(PoolEntry {
                    id,
                    source: source.key,
                    destination: destination.key,
                })
            });
        }
        while let Some(entry) = batch.join_next().await {
            pool.push(entry??);
        }
    }
    Ok(pool)
}

/// The token of the page that starts about `depth` rows into `owner`'s list,
/// reached by following tokens with pages of 500.
async fn deep_token(target: &Target, owner: &Caller, depth: u64) -> anyhow::Result<String> {
    let mut client = target.connections(0);
    let mut token = String::new();
    let mut seen = 0;
    while seen < depth {
        let page = client
            .list_connections(workload::authorized(
                connections::proto::ListConnectionsRequest {
                    page_size: 500,
                    page_token: token.clone(),
                    ..Default::default()
                },
                &owner.key,
            ))
            .await?
            .into_inner();
        seen += page.connections.len() as u64;
        anyhow::ensure!(!page.next_page_token.is_empty(), "list ended at row {seen}");
        token = page.next_page_token;
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "b").unwrap(),
            "postgres://postgres@127.0.0.1:5432/b"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "b").unwrap(),
            "postgres://u:p@h/b?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h", "b").unwrap(),
            "postgres://h/b"
        );
    }
}
