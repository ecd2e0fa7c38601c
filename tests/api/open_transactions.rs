//! The change feed with other transactions open in the database cluster: a
//! transaction left open in another database, one in the service's own
//! database that never touches its tables, and a prepared one. None of them
//! may hold back CheckAccess or a watch.

use std::time::{Duration, Instant};

use connections::proto::{
    ActivateConnectionRequest, CheckAccessRequest, CheckAccessResponse, DataType,
    DeactivateConnectionRequest, ReactivateConnectionRequest, WatchConnectionEventsRequest,
    WatchConnectionEventsResponse, access_service_client::AccessServiceClient,
};
use sea_orm::sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};
use tonic::Streaming;

use crate::support::{
    AppOptions, Bearer, TestApp, TestOrg, own_postgres::OwnPostgres, postgres_url,
    require_postgres, spawn_replicas,
};

/// How soon a change must show on every replica, whatever else is open.
const FRESH: Duration = Duration::from_secs(1);

/// CheckAccess for inquiries from `source` to `destination` on `app`, as the
/// destination.
async fn check(
    app: &TestApp,
    source: &TestOrg,
    destination: &TestOrg,
    at_least: &str,
) -> CheckAccessResponse {
    AccessServiceClient::with_interceptor(app.channel.clone(), Bearer::new(&destination.key))
        .check_access(CheckAccessRequest {
            source_organization_id: source.id.clone(),
            destination_organization_id: destination.id.clone(),
            data_type: DataType::Inquiry.into(),
            at_least_change_token: at_least.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Asks `app` without a token until the answer is `allowed`; returns how
/// long that took, or panics after [`FRESH`].
async fn until_answer(
    app: &TestApp,
    source: &TestOrg,
    destination: &TestOrg,
    allowed: bool,
    what: &str,
) -> Duration {
    let started = Instant::now();
    loop {
        if check(app, source, destination, "").await.allowed == allowed {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < FRESH,
            "{what}: CheckAccess still answers allowed={} after {FRESH:?}",
            !allowed
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A watch of `org`'s events on `app` from now, past its first heartbeat.
async fn watch_now(app: &TestApp, org: &TestOrg) -> Streaming<WatchConnectionEventsResponse> {
    let mut stream = app
        .connections(org)
        .watch_connection_events(WatchConnectionEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(first.event.is_none(), "the first message is a heartbeat");
    stream
}

/// The next event of `stream`, and how long it took to come; panics if none
/// comes within [`FRESH`].
async fn next_event(
    stream: &mut Streaming<WatchConnectionEventsResponse>,
    what: &str,
) -> (i64, Duration) {
    let started = Instant::now();
    loop {
        let message =
            tokio::time::timeout(FRESH.saturating_sub(started.elapsed()), stream.message())
                .await
                .unwrap_or_else(|_| panic!("{what}: no event reached the watch within {FRESH:?}"))
                .unwrap()
                .unwrap();
        if let Some(event) = message.event {
            return (event.sequence, started.elapsed());
        }
    }
}

/// A session of its own on `url` with a transaction open that has a
/// transaction ID and has touched no table: idle in transaction.
async fn idle_in_transaction(url: &str) -> PgConnection {
    let mut session = PgConnection::connect(url).await.unwrap();
    session.execute("BEGIN").await.unwrap();
    session
        .execute("SELECT pg_current_xact_id()")
        .await
        .unwrap();
    session
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set TEST_DATABASE_URL and pass --include-ignored"]
async fn changes_reach_check_access_and_watches_on_every_replica_whatever_transactions_are_open() {
    require_postgres();
    // Prepared transactions need `max_prepared_transactions`, which servers
    // leave at 0: a server of the test's own allows them.
    let own = OwnPostgres::start(&["max_prepared_transactions=4"]);
    let server = match &own {
        Ok(own) => own.url.clone(),
        Err(why) => {
            eprintln!("no PostgreSQL server of the test's own, so no prepared transaction: {why}");
            postgres_url().unwrap()
        }
    };
    let replicas = spawn_replicas(
        2,
        AppOptions {
            postgres_server: Some(server.clone()),
            ..AppOptions::default()
        },
    )
    .await;
    let source = replicas[0].new_org("S").await;
    let destination = replicas[0].new_org("D").await;
    let id = replicas[0].connect(&source, &destination).await.id;

    // Left open from here to the end: a transaction in another database of
    // the cluster, one in the service's database that touches none of its
    // tables, and (on the test's own server) a prepared one.
    let _elsewhere = idle_in_transaction(&server).await;
    let _beside = idle_in_transaction(&replicas[0].database_url).await;
    let prepared = format!("connections-test-{}", uuid::Uuid::now_v7().simple());
    if own.is_ok() {
        let mut session = PgConnection::connect(&replicas[0].database_url)
            .await
            .unwrap();
        for statement in [
            "BEGIN".to_owned(),
            "SELECT pg_current_xact_id()".to_owned(),
            format!("PREPARE TRANSACTION '{prepared}'"),
        ] {
            session.execute(AssertSqlSafe(statement)).await.unwrap();
        }
    }

    let mut watches = [
        watch_now(&replicas[0], &destination).await,
        watch_now(&replicas[1], &destination).await,
    ];
    let mut slowest = Duration::ZERO;
    let mut sequence = 1;
    for round in 0..4 {
        let writer = &replicas[round % 2];
        let mut client = writer.connections(&destination);
        let request = || ActivateConnectionRequest {
            connection_id: id.clone(),
            ..Default::default()
        };
        if round > 0 {
            writer
                .connections(&source)
                .reactivate_connection(ReactivateConnectionRequest {
                    connection_id: id.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
            sequence += 1;
            for watch in &mut watches {
                assert_eq!(next_event(watch, "reactivated").await.0, sequence);
            }
        }
        let activated = client.activate_connection(request()).await.unwrap();
        sequence += 1;
        let granted = activated.into_inner().change_token;
        for (replica, watch) in replicas.iter().zip(&mut watches) {
            let what = format!("round {round}, activated");
            slowest = slowest.max(until_answer(replica, &source, &destination, true, &what).await);
            let (seen, delay) = next_event(watch, &what).await;
            assert_eq!(seen, sequence, "{what}");
            slowest = slowest.max(delay);
            let started = Instant::now();
            assert!(
                check(replica, &source, &destination, &granted)
                    .await
                    .allowed
            );
            slowest = slowest.max(started.elapsed());
        }

        let deactivated = client
            .deactivate_connection(DeactivateConnectionRequest {
                connection_id: id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        sequence += 1;
        let revoked = deactivated.into_inner().change_token;
        for (replica, watch) in replicas.iter().zip(&mut watches) {
            let what = format!("round {round}, deactivated");
            // With the write's token the answer waits only for that write.
            let started = Instant::now();
            assert!(
                !check(replica, &source, &destination, &revoked)
                    .await
                    .allowed
            );
            let with_token = started.elapsed();
            assert!(with_token < FRESH, "{what}: {with_token:?} with the token");
            slowest = slowest.max(with_token);
            slowest = slowest.max(until_answer(replica, &source, &destination, false, &what).await);
            let (seen, delay) = next_event(watch, &what).await;
            assert_eq!(seen, sequence, "{what}");
            slowest = slowest.max(delay);
        }
    }
    eprintln!("slowest change to reach CheckAccess or a watch on either replica: {slowest:?}");

    if own.is_ok() {
        let mut session = PgConnection::connect(&replicas[0].database_url)
            .await
            .unwrap();
        session
            .execute(AssertSqlSafe(format!("ROLLBACK PREPARED '{prepared}'")))
            .await
            .unwrap();
    }
    drop(replicas);
}
