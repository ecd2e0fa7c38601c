//! Exactly-once retries with `request_id` (SPEC section 4).

use std::time::Duration;

use connections::proto::{
    ActivateConnectionRequest, ConnectionState, CreateConnectionRequest, DataType,
    DeactivateConnectionRequest, ListConnectionsRequest,
};
use prost::Message;
use sea_orm::{ConnectionTrait, Database, DbBackend, TransactionTrait};
use tonic::Code;

use crate::support::{
    AppOptions, TestApp, TestOrg, assert_error, metric_sample, postgres_url, spawn_app,
    spawn_app_with,
};

fn create_request(
    destination: &TestOrg,
    data_type: DataType,
    request_id: &str,
) -> CreateConnectionRequest {
    CreateConnectionRequest {
        message: String::new(),
        destination_organization_id: destination.id.clone(),
        data_types: vec![data_type as i32],
        request_id: request_id.to_owned(),
    }
}

fn activate_request(id: &str, request_id: &str) -> ActivateConnectionRequest {
    ActivateConnectionRequest {
        connection_id: id.to_owned(),
        etag: String::new(),
        request_id: request_id.to_owned(),
    }
}

async fn connection_count(app: &TestApp, org: &TestOrg) -> usize {
    app.connections(org)
        .list_connections(ListConnectionsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .connections
        .len()
}

#[tokio::test]
async fn a_retried_create_returns_the_first_response_byte_for_byte_and_creates_nothing() {
    let app = spawn_app().await;
    let (a, b) = (app.new_org("A").await, app.new_org("B").await);
    let mut client = app.connections(&a);
    let request = create_request(&b, DataType::Account, "create-1");
    let first = client
        .create_connection(request.clone())
        .await
        .unwrap()
        .into_inner();
    let retry = client
        .create_connection(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retry.encode_to_vec(), first.encode_to_vec());
    assert_eq!(connection_count(&app, &a).await, 1);
    let id = first.connection.unwrap().id;
    assert_eq!(app.events(&a, &id).await.len(), 1);
}

#[tokio::test]
async fn a_retried_transition_returns_the_first_response_even_after_later_changes() {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let id = app.connect(&source, &destination).await.id;
    let mut client = app.connections(&destination);
    let first = client
        .activate_connection(activate_request(&id, "activate-1"))
        .await
        .unwrap()
        .into_inner();
    app.deactivate(&source, &id, "").await.unwrap();

    let retry = client
        .activate_connection(activate_request(&id, "activate-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retry.encode_to_vec(), first.encode_to_vec());
    assert_eq!(retry.connection.unwrap().state(), ConnectionState::Active);
    // Created, activated, deactivated: the retry appended nothing.
    assert_eq!(app.events(&source, &id).await.len(), 3);
    assert_eq!(
        app.get(&source, &id).await.state(),
        ConnectionState::Inactive
    );
}

#[tokio::test]
async fn the_same_request_id_with_different_parameters_is_request_id_reused() {
    let app = spawn_app().await;
    let (a, b, c) = (
        app.new_org("A").await,
        app.new_org("B").await,
        app.new_org("C").await,
    );
    let mut client = app.connections(&a);
    client
        .create_connection(create_request(&b, DataType::Account, "r-1"))
        .await
        .unwrap();
    for different in [
        create_request(&b, DataType::Inquiry, "r-1"),
        create_request(&c, DataType::Account, "r-1"),
    ] {
        let status = client.create_connection(different).await.unwrap_err();
        assert_error(&status, Code::InvalidArgument, "REQUEST_ID_REUSED");
    }
    assert_eq!(connection_count(&app, &a).await, 1);

    let id = app.connect(&b, &a).await.id;
    client
        .deactivate_connection(DeactivateConnectionRequest {
            connection_id: id.clone(),
            reason: "first".into(),
            request_id: "d-1".into(),
            etag: String::new(),
        })
        .await
        .unwrap();
    let status = client
        .deactivate_connection(DeactivateConnectionRequest {
            connection_id: id,
            reason: "second".into(),
            request_id: "d-1".into(),
            etag: String::new(),
        })
        .await
        .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "REQUEST_ID_REUSED");
}

#[tokio::test]
async fn request_ids_are_scoped_to_the_caller_and_the_method() {
    let app = spawn_app().await;
    let (a, b, c) = (
        app.new_org("A").await,
        app.new_org("B").await,
        app.new_org("C").await,
    );
    // The same request_id from two organizations: two connections.
    app.connections(&a)
        .create_connection(create_request(&c, DataType::Account, "shared"))
        .await
        .unwrap();
    app.connections(&b)
        .create_connection(create_request(&c, DataType::Account, "shared"))
        .await
        .unwrap();
    assert_eq!(connection_count(&app, &c).await, 2);

    // The same request_id on two methods: both execute.
    let id = app.connect(&a, &b).await.id;
    let mut client = app.connections(&b);
    client
        .activate_connection(activate_request(&id, "same"))
        .await
        .unwrap();
    let deactivated = client
        .deactivate_connection(DeactivateConnectionRequest {
            connection_id: id.clone(),
            request_id: "same".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    assert_eq!(deactivated.state(), ConnectionState::Inactive);
}

#[tokio::test]
async fn a_failed_call_records_nothing_so_its_retry_is_evaluated_afresh() {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let id = app.connect(&source, &destination).await.id;
    app.deactivate(&source, &id, "").await.unwrap();
    let mut client = app.connections(&destination);
    let status = client
        .activate_connection(activate_request(&id, "a-1"))
        .await
        .unwrap_err();
    assert_error(
        &status,
        Code::FailedPrecondition,
        "INVALID_STATE_TRANSITION",
    );

    app.reactivate(&source, &id, "").await.unwrap();
    let activated = client
        .activate_connection(activate_request(&id, "a-1"))
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    assert_eq!(activated.state(), ConnectionState::Active);
}

/// Sends `count` copies of one call at once; returns the responses of those
/// that succeeded (encoded) and the requests of those that lost the race.
/// A loser may only be told to retry (ABORTED, CONCURRENT_MODIFICATION).
async fn race<F, Fut, R>(count: usize, call: F) -> (Vec<Vec<u8>>, usize)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>> + Send + 'static,
    R: Message + Send + 'static,
{
    let calls = (0..count).map(|_| tokio::spawn(call()));
    let (mut responses, mut losers) = (Vec::new(), 0);
    for result in futures::future::join_all(calls).await {
        match result.unwrap() {
            Ok(response) => responses.push(response.into_inner().encode_to_vec()),
            Err(status) => {
                assert_error(&status, Code::Aborted, "CONCURRENT_MODIFICATION");
                losers += 1;
            }
        }
    }
    (responses, losers)
}

#[tokio::test]
async fn of_concurrent_duplicates_exactly_one_executes() {
    let app = spawn_app_with(AppOptions {
        metrics: true,
        ..AppOptions::default()
    })
    .await;
    // On PostgreSQL duplicates really run at once: those that wait for the
    // winner's commit must answer with its result, not just give up. Whether
    // one waits depends on timing, so rounds (each its own pair and
    // request_ids) repeat until one did. (On SQLite this process's writers
    // take turns, so duplicates come after the winner and find its record:
    // one round.)
    let rounds = if postgres_url().is_some() { 20 } else { 1 };
    let mut answered = 0;
    let (mut after_race, mut recorded) = (0.0, 0.0);
    for round in 0..rounds {
        answered += race_create_and_activate(&app, round).await;
        let text = app.metrics_text().await;
        after_race =
            metric_sample(&text, r#"request_id_replays_total{path="after_race"}"#).unwrap();
        recorded = metric_sample(&text, r#"request_id_replays_total{path="recorded"}"#).unwrap();
        // Every duplicate but the winner, of each race, and every retry of a
        // loser was answered with a recorded result.
        assert_eq!(after_race + recorded, answered as f64, "{text}");
        if after_race > 0.0 {
            break;
        }
    }
    println!("replays: {after_race} after a race, {recorded} of a record");
    if postgres_url().is_some() {
        assert!(
            after_race > 0.0,
            "no duplicate was answered after a race in {rounds} rounds"
        );
    } else {
        assert_eq!(after_race, 0.0);
    }
}

/// Races 16 duplicates of a create, then 16 of an activation, on a pair of
/// its own; checks that each executed once and every answer is the winner's.
/// Returns how many calls were answered with a recorded result.
async fn race_create_and_activate(app: &TestApp, round: usize) -> usize {
    let (source, destination) = (
        app.new_org(&format!("S{round}")).await,
        app.new_org(&format!("D{round}")).await,
    );
    let create_id = format!("c-race-{round}");
    let create = || {
        let mut client = app.connections(&source);
        let request = create_request(&destination, DataType::Inquiry, &create_id);
        async move { client.create_connection(request).await }
    };
    let (responses, create_losers) = race(16, create).await;
    assert!(!responses.is_empty());
    assert!(responses.iter().all(|r| *r == responses[0]));
    // Once the winner has committed, each loser's retry gets its response.
    for _ in 0..create_losers {
        let retry = create().await.unwrap().into_inner().encode_to_vec();
        assert_eq!(retry, responses[0]);
    }
    assert_eq!(connection_count(app, &source).await, 1);

    let id = app
        .connections(&source)
        .list_connections(ListConnectionsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .connections[0]
        .id
        .clone();
    let activate_id = format!("a-race-{round}");
    let activate = || {
        let mut client = app.connections(&destination);
        let request = activate_request(&id, &activate_id);
        async move { client.activate_connection(request).await }
    };
    let (responses, activate_losers) = race(16, activate).await;
    assert!(!responses.is_empty());
    assert!(responses.iter().all(|r| *r == responses[0]));
    for _ in 0..activate_losers {
        let retry = activate().await.unwrap().into_inner().encode_to_vec();
        assert_eq!(retry, responses[0]);
    }
    assert_eq!(app.events(&source, &id).await.len(), 2);
    30 + create_losers + activate_losers
}

#[tokio::test]
async fn expired_request_ids_are_swept_and_the_sweep_stops_on_shutdown() {
    let app = spawn_app_with(AppOptions {
        request_id_retention: Duration::ZERO,
        request_id_sweep_interval: Duration::from_millis(50),
        ..AppOptions::default()
    })
    .await;
    let (a, b, c) = (
        app.new_org("A").await,
        app.new_org("B").await,
        app.new_org("C").await,
    );
    let mut client = app.connections(&a);
    client
        .create_connection(create_request(&b, DataType::Account, "short-lived"))
        .await
        .unwrap();
    // Once the record is swept, the request_id is free for other parameters.
    let mut reused = true;
    for _ in 0..100 {
        match client
            .create_connection(create_request(&c, DataType::Account, "short-lived"))
            .await
        {
            Ok(_) => {
                reused = false;
                break;
            }
            Err(status) => {
                assert_error(&status, Code::InvalidArgument, "REQUEST_ID_REUSED");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert!(!reused, "the record was never swept");
    let sweeper = app.sweeper.clone();
    assert!(sweeper.is_running() && sweeper.rounds() > 0);

    // Hold a sweep in the middle of its DELETE with a lock on the table, so
    // the server, stopped now, must wait for it.
    let locker = Database::connect(&app.database_url).await.unwrap();
    let lock = locker.begin().await.unwrap();
    lock.execute_unprepared(match locker.get_database_backend() {
        DbBackend::Postgres => "LOCK TABLE idempotency_records IN SHARE MODE",
        _ => "UPDATE idempotency_records SET response_proto = response_proto",
    })
    .await
    .unwrap();
    let mut rounds = sweeper.rounds();
    let mut still_since = tokio::time::Instant::now();
    let locked_at = tokio::time::Instant::now();
    while still_since.elapsed() < Duration::from_millis(300) {
        assert!(
            locked_at.elapsed() < Duration::from_secs(3),
            "the sweep went on despite the lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        if sweeper.rounds() != rounds {
            rounds = sweeper.rounds();
            still_since = tokio::time::Instant::now();
        }
    }
    let stopping = tokio::spawn(app.stop());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !stopping.is_finished(),
        "the server stopped while its sweep was still running"
    );
    assert!(sweeper.is_running());
    lock.commit().await.unwrap();
    locker.close().await.unwrap();

    // Then it stops, with the server: a sweep that ignored the stop would
    // hold the server up, and one left behind would still run.
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("the server stops within 10 s")
        .unwrap();
    assert!(!sweeper.is_running(), "the sweep outlived the server");
    let rounds = sweeper.rounds();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(sweeper.rounds(), rounds, "the sweep ran after the stop");
}

#[tokio::test]
async fn sweeping_100_000_expired_request_ids_during_writes_fails_no_write() {
    use connections::entity::idempotency_record;
    use sea_orm::{ActiveValue::Set, EntityTrait, PaginatorTrait};
    const EXPIRED: i64 = 100_000;
    let app = spawn_app_with(AppOptions {
        request_id_retention: Duration::from_secs(60 * 60),
        request_id_sweep_interval: Duration::from_millis(100),
        ..AppOptions::default()
    })
    .await;
    let source = app.new_org("S").await;
    let mut connections = Vec::new();
    for i in 0..8 {
        let destination = app.new_org(&format!("D{i}")).await;
        let id = app.connect(&source, &destination).await.id;
        connections.push((destination, id));
    }
    let records = Database::connect(&app.database_url).await.unwrap();
    let expired = chrono::Utc::now() - chrono::Duration::hours(2);
    let org = uuid::Uuid::now_v7();
    for chunk in 0..EXPIRED / 1_000 {
        let batch = (0..1_000).map(|i| idempotency_record::ActiveModel {
            organization_id: Set(org),
            method: Set("CreateConnection".to_owned()),
            request_id: Set(format!("expired-{chunk}-{i}")),
            request_sha256: Set(vec![0; 32]),
            response_proto: Set(Vec::new()),
            change_token: Set(String::new()),
            create_time: Set(expired),
        });
        idempotency_record::Entity::insert_many(batch)
            .exec_without_returning(&records)
            .await
            .unwrap();
    }

    // Every writer cycles its connection through activate, deactivate and
    // reactivate until the sweep has deleted every expired record.
    let swept = std::sync::atomic::AtomicBool::new(false);
    let writer = |destination: &TestOrg, id: &str| {
        let (destination, id) = (destination.clone(), id.to_owned());
        let (app, source, swept) = (&app, &source, &swept);
        async move {
            let mut writes = 0;
            while !swept.load(std::sync::atomic::Ordering::Relaxed) {
                app.activate(&destination, &id, "").await.expect("activate");
                app.deactivate(&destination, &id, "")
                    .await
                    .expect("deactivate");
                app.reactivate(source, &id, "").await.expect("reactivate");
                writes += 3;
            }
            writes
        }
    };
    let watcher = async {
        let started = tokio::time::Instant::now();
        loop {
            let left = idempotency_record::Entity::find()
                .count(&records)
                .await
                .unwrap();
            if left == 0 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "{left} records left after 2 minutes"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        swept.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let (writes, ()) = tokio::join!(
        futures::future::join_all(connections.iter().map(|(d, id)| writer(d, id))),
        watcher
    );
    assert!(writes.iter().all(|w| *w > 0), "{writes:?}");
    records.close().await.unwrap();
}
