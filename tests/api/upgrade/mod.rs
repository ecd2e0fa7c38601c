//! Rolling upgrades: the previous release and this one serving side by side
//! on one PostgreSQL database, with no failed call and no lost or repeated
//! event; and the first upgrade of an empty database through every release.
//!
//! The previous release's binary is built by `.ci/previous-release`, which
//! prints its path; the tests read it from `CONNECTIONS_PREVIOUS_RELEASE_BIN`
//! and fail, saying how to build it, without it.
//!
//! - `fleet`: the replicas as a load balancer sees them, and the record of
//!   every call.
//! - `traffic`: rounds of calls covering every RPC, and watchers.

mod fleet;
mod traffic;

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use connections::proto::ListConnectionEventsRequest;
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Channel};

use self::{
    fleet::{Fleet, Release, Replica},
    traffic::{Plan, Watcher, Worker, connections, paged, round, watch},
};
use crate::support::{
    ADMIN_TOKEN, TestDatabase, clients::new_org_on, process::Server, require_postgres, rpcs,
};

/// Where the tests find the previous release's binary.
const PREVIOUS_RELEASE_BIN: &str = "CONNECTIONS_PREVIOUS_RELEASE_BIN";

/// The access-check token of every server of these tests.
pub const ACCESS_CHECK_TOKEN: &str = "upgrade-test-access-check-token-0123456789";

/// The previous release's binary; fails the test, saying how to build it,
/// when there is none.
#[track_caller]
fn previous_release_binary() -> String {
    let path = std::env::var(PREVIOUS_RELEASE_BIN)
        .ok()
        .filter(|path| !path.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "this test runs the previous release beside this one: build it with \
                 `.ci/previous-release` (minutes the first time, then cached) and pass the path it \
                 prints: {PREVIOUS_RELEASE_BIN}=$(.ci/previous-release)"
            )
        });
    assert!(
        std::path::Path::new(&path).is_file(),
        "{PREVIOUS_RELEASE_BIN}={path} is not a file: build it with `.ci/previous-release`"
    );
    path
}

/// The environment of every server of these tests.
fn server_env() -> [(&'static str, &'static str); 2] {
    [
        ("CONNECTIONS_ADMIN_TOKEN", ADMIN_TOKEN),
        ("CONNECTIONS_ACCESS_CHECK_TOKEN", ACCESS_CHECK_TOKEN),
    ]
}

/// Runs `<binary> migrate` on the database at `url`; it must succeed.
/// Returns how long it took.
async fn migrate_with(binary: &str, url: &str) -> Duration {
    let (binary, url) = (binary.to_owned(), url.to_owned());
    let started = Instant::now();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&binary)
            .arg("migrate")
            .env("CONNECTIONS_DATABASE_URL", &url)
            .env_remove("RUST_LOG")
            .output()
            .unwrap_or_else(|err| panic!("run {binary} migrate: {err}"))
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "migrate failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    started.elapsed()
}

/// Waits (at most 30 s) until the server on `channel` reports SERVING: a
/// rolling update sends traffic to a replica once it is ready.
async fn wait_until_serving(channel: &Channel) {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = HealthClient::new(channel.clone())
            .check(HealthCheckRequest::default())
            .await
            .map(|response| response.into_inner().status());
        if matches!(status, Ok(ServingStatus::Serving)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not SERVING within 30 s: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The RPCs of the API (package `connections.v1`) the server on `channel`
/// serves, as `Service/Method`, read through its reflection service.
async fn rpcs_served(channel: &Channel) -> BTreeSet<String> {
    use prost::Message;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut client = ServerReflectionClient::new(channel.clone());
    let mut ask = async |request: MessageRequest| -> MessageResponse {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        };
        let mut answers = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .expect("reflection")
            .into_inner();
        let answer = answers.message().await.expect("reflection");
        answer
            .and_then(|answer| answer.message_response)
            .expect("an answer")
    };
    let MessageResponse::ListServicesResponse(list) =
        ask(MessageRequest::ListServices(String::new())).await
    else {
        panic!("expected a service list");
    };
    let package = format!("{}.", rpcs::PACKAGE);
    let mut served = BTreeSet::new();
    for service in list.service.into_iter().map(|service| service.name) {
        let Some(short) = service.strip_prefix(&package) else {
            continue;
        };
        let MessageResponse::FileDescriptorResponse(files) =
            ask(MessageRequest::FileContainingSymbol(service.clone())).await
        else {
            panic!("expected the file of {service}");
        };
        let methods: Vec<String> = files
            .file_descriptor_proto
            .iter()
            .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap())
            .flat_map(|file| file.service)
            .filter(|found| found.name() == short)
            .flat_map(|found| found.method)
            .map(|method| format!("{short}/{}", method.name()))
            .collect();
        assert!(!methods.is_empty(), "{service} has no method");
        served.extend(methods);
    }
    assert!(!served.is_empty(), "no service of the API");
    served
}

/// A replica of `release` started from `binary` with `args` on the database
/// at `url`, once it reports SERVING.
async fn start(
    name: &str,
    binary: &str,
    release: Release,
    url: &str,
    args: &[&str],
) -> (Server, Arc<Replica>) {
    let server = Server::start_binary(binary, url, args, &server_env()).await;
    wait_until_serving(&server.channel).await;
    let replica = Arc::new(Replica::new(name, release, server.channel.clone()));
    (server, replica)
}

/// Stops `server` (drained first, then SIGTERM); it must exit 0.
async fn stop(fleet: &Fleet, replica: &Replica, server: Server) {
    fleet.drain(replica).await;
    replica.stopping.store(true, Ordering::SeqCst);
    server.signal("-TERM");
    let log = server.log();
    let status = server.wait().await;
    assert!(
        status.success(),
        "{} exited with {status}: {log}",
        replica.name
    );
}

/// The whole history of every connection of each worker's source, by
/// source, read on `on`.
async fn histories(
    fleet: &Fleet,
    on: &Replica,
    workers: &[Arc<Worker>],
) -> BTreeMap<String, Vec<traffic::Key>> {
    let mut histories = BTreeMap::new();
    for worker in workers {
        let mut events = Vec::new();
        let ids = worker.connections.lock().unwrap().clone();
        for id in ids {
            let list = |on: &Replica, page_token| {
                let mut client = connections(on, &worker.source.key);
                let request = ListConnectionEventsRequest {
                    connection_id: id.clone(),
                    page_size: 100,
                    page_token,
                };
                async move {
                    let page = client.list_connection_events(request).await?.into_inner();
                    Ok((page.events, page.next_page_token))
                }
            };
            let listed = paged(&fleet.log, (on, on), "ListConnectionEvents", list).await;
            events.extend(traffic::keys(&listed.unwrap_or_default()));
        }
        histories.insert(worker.source.id.clone(), events);
    }
    histories
}

/// Checks that each watcher received every event of its source's
/// connections exactly once, each connection's in sequence, as
/// ListConnectionEvents lists them. Returns how many events it checked.
fn check_watchers(
    fleet: &Fleet,
    watchers: &[Arc<Watcher>],
    histories: &BTreeMap<String, Vec<traffic::Key>>,
) -> usize {
    let log = &fleet.log;
    let mut checked = 0;
    for watcher in watchers {
        let seen = traffic::keys(&watcher.events.lock().unwrap());
        let unique: BTreeSet<_> = seen.iter().collect();
        log.check(unique.len() == seen.len(), || {
            format!(
                "{}: {} events twice",
                watcher.name,
                seen.len() - unique.len()
            )
        });
        let (mut received, mut expected) = (seen.clone(), histories[&watcher.org.id].clone());
        received.sort();
        expected.sort();
        log.check(received == expected, || {
            format!(
                "{}: received {} events, ListConnectionEvents lists {}",
                watcher.name,
                received.len(),
                expected.len()
            )
        });
        let mut last: BTreeMap<&str, i64> = BTreeMap::new();
        for (connection, sequence, _) in &seen {
            let previous = last.insert(connection, *sequence).unwrap_or(0);
            log.check(*sequence == previous + 1, || {
                format!(
                    "{}: {connection} event {sequence} after {previous}",
                    watcher.name
                )
            });
        }
        checked += seen.len();
    }
    checked
}

/// Fails with every failed call and check, grouped by what and where.
fn assert_no_failure(failures: &[String]) {
    if failures.is_empty() {
        return;
    }
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for failure in failures {
        let kind = failure.split(": ").next().unwrap_or_default();
        *kinds.entry(kind).or_default() += 1;
    }
    panic!(
        "{} failed calls or checks, by what and where:\n{}the first ones:\n{}",
        failures.len(),
        kinds
            .iter()
            .map(|(kind, n)| format!("  {kind}: {n}\n"))
            .collect::<String>(),
        failures
            .iter()
            .take(10)
            .map(|failure| format!("  {failure}\n"))
            .collect::<String>()
    );
}

/// What the traffic must have done, in both directions between releases.
fn crossings() -> Vec<String> {
    let mut expected = Vec::new();
    for (from, to) in [("previous", "current"), ("current", "previous")] {
        expected.push(format!("request_id retry from {from} to {to}"));
        expected.push(format!("page token from {from} to {to}"));
        expected.push(format!(
            "change token from a write, used by CheckAccess, {from} to {to}"
        ));
        expected.push(format!("watch resumed with its last token, {from} to {to}"));
    }
    for release in ["previous", "current"] {
        expected.push(format!(
            "CheckAccess with a change token and an API key on {release}"
        ));
        expected.push(format!(
            "CheckAccess with a change token and the access-check token on {release}"
        ));
        expected.push(format!(
            "CheckAccess without a token and the admin token on {release}"
        ));
    }
    expected.push(
        "watch ended by the stop of previous, resumed with its last token on current".to_owned(),
    );
    expected
}

/// The side-by-side upgrade: the previous release serves a new database;
/// traffic starts; this release's `connections migrate` runs under it; a
/// replica of each release starts (the previous one's a restart, or a
/// rollback, after the migration); traffic runs on both releases, every
/// retry, next page and change token crossing from one to the other; the
/// previous release's replicas are drained and stopped (SIGTERM); traffic
/// goes on on this release. No call may fail, and every watcher must see
/// each event of its connections exactly once, as ListConnectionEvents
/// lists them. Prints what it counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL and the previous release: set TEST_DATABASE_URL and CONNECTIONS_PREVIOUS_RELEASE_BIN, and pass --include-ignored"]
async fn the_previous_release_and_this_one_serve_side_by_side_through_an_upgrade_with_no_failed_call()
 {
    const SOURCES: usize = 4;
    let started = Instant::now();
    require_postgres();
    let previous = previous_release_binary();
    let current = crate::support::process::BIN;
    let (_database, url) = TestDatabase::create(false).await;

    // The previous release serves (and migrates) an empty database.
    let fleet = Arc::new(Fleet::default());
    let (previous_1_server, previous_1) =
        start("previous-1", &previous, Release::Previous, &url, &[]).await;
    fleet.route_to(previous_1.clone());

    // What the previous release serves: the traffic must call all of it.
    let previous_rpcs = rpcs_served(&previous_1.channel).await;
    let current_rpcs: BTreeSet<String> = rpcs::all()
        .iter()
        .map(|rpc| format!("{}/{}", rpc.service.rsplit('.').next().unwrap(), rpc.method))
        .collect();
    assert!(
        previous_rpcs.is_subset(&current_rpcs),
        "this release dropped RPCs: {:?}",
        previous_rpcs.difference(&current_rpcs).collect::<Vec<_>>()
    );

    // The sources, made through the previous release; watches of them on
    // it: one each that stays (until its replica stops), and two that move
    // to the other release and back.
    let mut workers = Vec::new();
    for i in 0..SOURCES {
        let source = new_org_on(&previous_1.channel, &format!("source {i}")).await;
        workers.push(Arc::new(Worker::new(source)));
    }
    let done = CancellationToken::new();
    let mut watchers = Vec::new();
    let mut watching = Vec::new();
    let mut watch_from = |name: String, source: usize, plan: Plan, first: &Arc<Replica>| {
        let watcher = Arc::new(Watcher::new(name, &workers[source].source, plan));
        watching.push(tokio::spawn(watch(
            fleet.clone(),
            watcher.clone(),
            first.clone(),
            done.clone(),
        )));
        watchers.push(watcher);
    };
    for i in 0..SOURCES {
        let name = format!("watch of source {i} on previous-1");
        watch_from(name, i, Plan::Stay, &previous_1);
    }
    for i in 0..2 {
        let name = format!("moving watch of source {i}, from previous-1");
        watch_from(name, i, Plan::Alternate(7 + i), &previous_1);
    }

    // Traffic.
    let traffic = CancellationToken::new();
    let working: Vec<_> = workers
        .iter()
        .map(|worker| {
            let (fleet, worker, traffic) = (fleet.clone(), worker.clone(), traffic.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !traffic.is_cancelled() {
                    round(&fleet, &worker, n).await;
                    n += 1;
                    // A round that fails at once never waits: give the
                    // runtime a turn, so that a failed test ends instead of
                    // spinning here.
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // This release's migrations, under traffic.
    let migrate_took = migrate_with(current, &url).await;

    // A replica of the previous release started after them (a restart, or
    // a rollback to it), and one of this release, which does not migrate.
    let (previous_2_server, previous_2) =
        start("previous-2", &previous, Release::Previous, &url, &[]).await;
    fleet.route_to(previous_2.clone());
    let (current_server, current_1) = start(
        "current-1",
        current,
        Release::Current,
        &url,
        &["--no-migrate"],
    )
    .await;
    fleet.route_to(current_1.clone());
    for i in 0..SOURCES {
        let name = format!("watch of source {i} on current-1");
        watch_from(name, i, Plan::Stay, &current_1);
    }
    let name = "moving watch of source 3, from current-1".to_owned();
    watch_from(name, 3, Plan::Alternate(5), &current_1);
    tokio::time::sleep(Duration::from_secs(4)).await;

    // The previous release goes; traffic goes on on this one.
    stop(&fleet, &previous_1, previous_1_server).await;
    stop(&fleet, &previous_2, previous_2_server).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    traffic.cancel();
    for task in working {
        task.await.unwrap();
    }

    // The watchers catch up (at most 30 s), then are checked.
    let histories = histories(&fleet, &current_1, &workers).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline
        && watchers
            .iter()
            .any(|w| w.events.lock().unwrap().len() < histories[&w.org.id].len())
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done.cancel();
    for task in watching {
        task.await.unwrap();
    }
    let events_checked = check_watchers(&fleet, &watchers, &histories);
    stop(&fleet, &current_1, current_server).await;

    let log = &fleet.log;
    let calls = log.calls.lock().unwrap().clone();
    let total = |release| -> u64 {
        calls
            .iter()
            .filter(|((r, _, _), _)| *r == release)
            .map(|(_, n)| n)
            .sum()
    };
    let failures = log.failures.lock().unwrap().clone();
    let seen = log.seen.lock().unwrap().clone();
    println!(
        "upgrade test: {} calls answered by the previous release, {} by this one; {} failed; \
         {events_checked} watched events checked against ListConnectionEvents ({} watchers); \
         this release's migrate took {migrate_took:?} under traffic; {:?} in all\n{}\
         what the traffic did:\n{}",
        total(Release::Previous),
        total(Release::Current),
        failures.len(),
        watchers.len(),
        started.elapsed(),
        log.summary(),
        seen.iter()
            .map(|(what, n)| format!("  {what}: {n}\n"))
            .collect::<String>(),
    );
    assert_no_failure(&failures);

    // Every RPC of the previous release, answered by both releases; and
    // every crossing from one release to the other, both ways.
    for rpc in &previous_rpcs {
        let method = rpc.rsplit('/').next().unwrap();
        for release in [Release::Previous, Release::Current] {
            let answered = calls
                .iter()
                .any(|((r, m, code), _)| *r == release && *m == method && *code == Code::Ok as i32);
            assert!(
                answered,
                "{rpc} was not answered by the {} release",
                release.name()
            );
        }
    }
    for what in crossings() {
        assert!(seen.contains_key(&what), "never happened: {what}");
    }
}

/// The first upgrade, from an empty database through every release in
/// turn: the previous release's `connections migrate`, then this one's.
/// This release serves afterwards, and so does the previous one (a
/// rollback). On PostgreSQL and SQLite.
#[tokio::test]
#[ignore = "needs PostgreSQL and the previous release: set TEST_DATABASE_URL and CONNECTIONS_PREVIOUS_RELEASE_BIN, and pass --include-ignored"]
async fn an_empty_database_upgraded_through_every_release_in_turn_serves() {
    require_postgres();
    let previous = previous_release_binary();
    let current = crate::support::process::BIN;
    for sqlite in [false, true] {
        let (_database, url) = TestDatabase::create(sqlite).await;
        migrate_with(&previous, &url).await;
        migrate_with(current, &url).await;
        let db = connections::db::connect(&connections::config::DatabaseSettings::new(&url))
            .await
            .unwrap();
        assert_eq!(
            connections::db::schema(&db).await.unwrap(),
            connections::db::Schema::default(),
            "sqlite: {sqlite}"
        );
        db.close().await.unwrap();

        let releases = [
            (current, Release::Current, &["--no-migrate"][..]),
            (previous.as_str(), Release::Previous, &[][..]),
        ];
        for (binary, release, args) in releases {
            let (server, replica) = start(release.name(), binary, release, &url, args).await;
            let fleet = Fleet::default();
            let worker = Worker::new(new_org_on(&replica.channel, "source").await);
            fleet.route_to(replica.clone());
            round(&fleet, &worker, 0).await;
            let failures = fleet.log.failures.lock().unwrap().clone();
            assert!(
                failures.is_empty(),
                "{} (sqlite: {sqlite}): {failures:?}\n{}",
                release.name(),
                server.log()
            );
            stop(&fleet, &replica, server).await;
        }
    }
}
