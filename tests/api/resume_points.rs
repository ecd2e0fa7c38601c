//! Every change token is a safe place to resume: a watch after it sends
//! every event the token does not cover, once, even when a transaction that
//! began before the token's write commits after it.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use connections::proto::{
    ActivateConnectionRequest, CheckAccessRequest, Connection, ConnectionEvent, ConnectionState,
    DataType, DeactivateConnectionRequest, GetConnectionRequest, ReactivateConnectionRequest,
    WatchConnectionEventsResponse, access_service_client::AccessServiceClient,
};
use sea_orm::sqlx::{self, Connection as _, Executor, PgConnection};
use tokio::time::Instant;
use tonic::{Code, Streaming};

use crate::support::{
    AppOptions, Bearer, TestApp, TestOrg,
    clients::Connections,
    require_postgres,
    rng::TestRng,
    spawn_app, spawn_app_with,
    watching::{after, from_beginning, keys, until_quiet, watch},
};

/// Creates an ACTIVE connection from `source` to `destination`.
async fn active(app: &TestApp, source: &TestOrg, destination: &TestOrg) -> String {
    let id = app.connect(source, destination).await.id;
    app.activate(destination, &id, "").await.unwrap();
    id
}

/// DeactivateConnection of `id` through `client`, with a request_id; the
/// change token.
async fn deactivate(mut client: Connections, id: &str) -> String {
    client
        .deactivate_connection(DeactivateConnectionRequest {
            connection_id: id.to_owned(),
            request_id: uuid::Uuid::now_v7().to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .change_token
}

/// Every event `stream` sends until none has come for `quiet`.
async fn events_until_quiet(
    stream: &mut Streaming<WatchConnectionEventsResponse>,
    quiet: Duration,
) -> Vec<ConnectionEvent> {
    until_quiet(stream, quiet).await.0
}

/// Waits until a session of database `url` waits for a lock.
async fn until_one_waits_for_a_lock(url: &str) {
    let mut session = PgConnection::connect(url).await.unwrap();
    let started = Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut session)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "nobody waits");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set TEST_DATABASE_URL and pass --include-ignored"]
async fn resuming_after_a_writes_token_sends_an_older_transaction_that_commits_later() {
    require_postgres();
    let app = spawn_app().await;
    let source = app.new_org("S").await;
    let (first, second) = (app.new_org("D1").await, app.new_org("D2").await);
    let x1 = active(&app, &source, &first).await;
    let x2 = active(&app, &source, &second).await;

    // Another session holds x1's row, so B's deactivation of x1 (which gets
    // its transaction ID from its request_id record first) waits for it.
    let mut holder = PgConnection::connect(&app.database_url).await.unwrap();
    holder.execute("BEGIN").await.unwrap();
    sqlx::query("SELECT 1 FROM connections WHERE id = $1::uuid FOR UPDATE")
        .bind(&x1)
        .execute(&mut holder)
        .await
        .unwrap();
    let b = tokio::spawn({
        let (client, x1) = (app.connections(&first), x1.clone());
        async move { deactivate(client, &x1).await }
    });
    until_one_waits_for_a_lock(&app.database_url).await;
    // A's deactivation of x2 commits first, with a higher transaction ID.
    let a_token = deactivate(app.connections(&second), &x2).await;
    holder.execute("ROLLBACK").await.unwrap();
    let b_token = b.await.unwrap();

    let mut session = PgConnection::connect(&app.database_url).await.unwrap();
    let position = |id: String| {
        sqlx::query_scalar::<_, i64>(
            "SELECT position FROM connection_events WHERE connection_id = $1::uuid AND sequence = 3",
        )
        .bind(id)
    };
    let b_position = position(x1.clone()).fetch_one(&mut session).await.unwrap();
    let a_position = position(x2.clone()).fetch_one(&mut session).await.unwrap();
    assert!(b_position < a_position, "B's transaction began first");

    // After A's token: B's change, which A's write had not seen, and only it.
    let mut resumed = watch(&app, &source, after(&a_token)).await;
    let events = events_until_quiet(&mut resumed, Duration::from_millis(500)).await;
    assert_eq!(keys(&events), [(x1.clone(), 3)]);
    // After B's token: nothing (A had committed before B's write).
    let mut resumed = watch(&app, &source, after(&b_token)).await;
    let events = events_until_quiet(&mut resumed, Duration::from_millis(500)).await;
    assert_eq!(events, []);

    // CheckAccess with either token reflects its write.
    for (id_destination, token) in [(&first, &b_token), (&second, &a_token)] {
        let answer =
            AccessServiceClient::with_interceptor(app.channel.clone(), Bearer::new(&source.key))
                .check_access(CheckAccessRequest {
                    source_organization_id: source.id.clone(),
                    destination_organization_id: id_destination.id.clone(),
                    data_type: DataType::Inquiry.into(),
                    at_least_change_token: token.clone(),
                })
                .await
                .unwrap()
                .into_inner();
        assert!(!answer.allowed);
        assert_eq!(answer.state(), ConnectionState::Inactive);
    }
}

/// One successful write, as its caller saw it.
#[derive(Debug, Clone)]
struct Write {
    connection: String,
    /// When it was sent, and when its response came.
    sent: Instant,
    answered: Instant,
    /// The connection after it: its update time is its event's time.
    after: Connection,
    token: String,
}

impl Write {
    fn is(&self, event: &ConnectionEvent) -> bool {
        event.connection_id == self.connection && event.create_time == self.after.update_time
    }
}

/// Takes a random step the state of connection `id` allows, through `app`:
/// `Ok(None)` if a concurrent write got there first.
async fn random_step(
    app: &TestApp,
    source: &TestOrg,
    destination: &TestOrg,
    id: &str,
    rng: &mut TestRng,
) -> Option<Write> {
    let current = app
        .connections(source)
        .get_connection(GetConnectionRequest {
            connection_id: id.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    let either = if rng.below(2) == 0 {
        source
    } else {
        destination
    };
    let (connection_id, request_id) = (id.to_owned(), uuid::Uuid::now_v7().to_string());
    let sent = Instant::now();
    let response = match current.state() {
        ConnectionState::Pending if rng.below(10) < 7 => app
            .connections(destination)
            .activate_connection(ActivateConnectionRequest {
                connection_id,
                request_id,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
            .map(|r| (r.connection, r.change_token)),
        ConnectionState::Pending | ConnectionState::Active => app
            .connections(either)
            .deactivate_connection(DeactivateConnectionRequest {
                connection_id,
                request_id,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
            .map(|r| (r.connection, r.change_token)),
        _ => app
            .connections(source)
            .reactivate_connection(ReactivateConnectionRequest {
                connection_id,
                request_id,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
            .map(|r| (r.connection, r.change_token)),
    };
    match response {
        Ok((after, token)) => Some(Write {
            connection: id.to_owned(),
            sent,
            answered: Instant::now(),
            after: after.unwrap(),
            token,
        }),
        Err(status) if matches!(status.code(), Code::FailedPrecondition | Code::Aborted) => None,
        Err(status) => panic!("{status:?}"),
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set TEST_DATABASE_URL and pass --include-ignored"]
async fn watchers_resuming_from_write_tokens_get_exactly_the_later_events_under_random_lock_holds()
{
    require_postgres();
    let app = Arc::new(
        spawn_app_with(AppOptions {
            watch_streams_per_organization: 100,
            ..AppOptions::default()
        })
        .await,
    );
    let source = app.new_org("S").await;
    let mut pairs = Vec::new();
    for i in 0..4 {
        let destination = app.new_org(&format!("D{i}")).await;
        let id = app.connect(&source, &destination).await.id;
        pairs.push((destination, id));
    }
    let pairs = Arc::new(pairs);
    let writes = Arc::new(Mutex::new(Vec::<Write>::new()));
    // (connection, held from before, held until after) of every row lock.
    let holds = Arc::new(Mutex::new(Vec::<(String, Instant, Instant)>::new()));
    let run_for = Duration::from_secs(4);
    let started = Instant::now();
    let rng = TestRng::new();
    let seed = rng.seed();

    // Sessions that hold a random connection's row for a random while, so
    // that writers wait with their transaction IDs taken and commit out of
    // order.
    let mut tasks = Vec::new();
    for holder in 0..2u64 {
        let (url, pairs, holds, mut rng) = (
            app.database_url.clone(),
            pairs.clone(),
            holds.clone(),
            rng.fork(holder),
        );
        tasks.push(tokio::spawn(async move {
            let mut session = PgConnection::connect(&url).await.unwrap();
            while started.elapsed() < run_for {
                let id = &pairs[rng.below(pairs.len())].1;
                session.execute("BEGIN").await.unwrap();
                sqlx::query("SELECT 1 FROM connections WHERE id = $1::uuid FOR UPDATE")
                    .bind(id)
                    .execute(&mut session)
                    .await
                    .unwrap();
                let held = Instant::now();
                tokio::time::sleep(Duration::from_millis(rng.below(40) as u64)).await;
                holds
                    .lock()
                    .unwrap()
                    .push((id.clone(), held, Instant::now()));
                session.execute("COMMIT").await.unwrap();
                tokio::time::sleep(Duration::from_millis(rng.below(10) as u64)).await;
            }
        }));
    }
    for writer in 0..4u64 {
        let (app, source, pairs, writes, mut rng) = (
            app.clone(),
            source.clone(),
            pairs.clone(),
            writes.clone(),
            rng.fork(writer + 100),
        );
        tasks.push(tokio::spawn(async move {
            while started.elapsed() < run_for {
                let (destination, id) = &pairs[rng.below(pairs.len())];
                if let Some(write) = random_step(&app, &source, destination, id, &mut rng).await {
                    writes.lock().unwrap().push(write);
                }
            }
        }));
    }
    // Watchers that resume from the token of a write that has just returned.
    let mut watchers = Vec::new();
    let mut rng = rng.fork(1000);
    while started.elapsed() < run_for {
        tokio::time::sleep(Duration::from_millis(20 + rng.below(100) as u64)).await;
        let last = writes.lock().unwrap().last().cloned();
        if let Some(write) = last {
            let stream = watch(&app, &source, after(&write.token)).await;
            watchers.push((write, stream));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }

    let writes = writes.lock().unwrap().clone();
    let holds = holds.lock().unwrap().clone();
    let mut history = HashMap::new();
    for (_, id) in pairs.iter() {
        history.insert(id.clone(), app.events(&source, id).await);
    }
    let all: Vec<&ConnectionEvent> = history.values().flatten().collect();
    assert!(writes.len() > 20, "only {} writes", writes.len());
    assert!(watchers.len() >= 4, "only {} watchers", watchers.len());
    let mut beginning = watch(&app, &source, from_beginning()).await;
    let order: Vec<String> = events_until_quiet(&mut beginning, Duration::from_secs(1))
        .await
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(
        order.len(),
        all.len(),
        "a watch from the beginning sees all"
    );

    let watched =
        futures::future::join_all(watchers.into_iter().map(|(from, mut stream)| async move {
            let events = events_until_quiet(&mut stream, Duration::from_secs(1)).await;
            (from, events)
        }))
        .await;
    for (n, (from, events)) in watched.into_iter().enumerate() {
        let what = format!("watcher {n} (seed {seed})");
        let ids: Vec<&String> = events.iter().map(|e| &e.id).collect();
        let distinct: HashSet<&String> = ids.iter().copied().collect();
        assert_eq!(distinct.len(), ids.len(), "{what}: an event came twice");
        // In log order.
        let positions: Vec<usize> = ids
            .iter()
            .map(|id| order.iter().position(|o| o == *id).unwrap())
            .collect();
        assert!(positions.is_sorted(), "{what}: out of log order");
        // Per connection, the end of its history, from some event on.
        for (id, events_of) in &history {
            let got: Vec<&ConnectionEvent> =
                events.iter().filter(|e| &e.connection_id == id).collect();
            let tail: Vec<&ConnectionEvent> =
                events_of[events_of.len() - got.len()..].iter().collect();
            assert_eq!(got, tail, "{what}: not the end of {id}'s history");
        }
        // Not its own write, nor any that had answered before it was sent.
        // Every one that committed after it answered: sent after that, or
        // sent while another session held its connection's row, which it
        // still held then (the write waited for it, whatever its
        // transaction ID).
        for write in &writes {
            let delivered = events.iter().any(|e| write.is(e));
            let waited = holds.iter().any(|(id, held, until)| {
                id == &write.connection && *held < write.sent && *until > from.answered
            });
            if write.answered < from.sent || write.token == from.token {
                assert!(!delivered, "{what}: an event its token covers came");
            } else if write.sent > from.answered || waited {
                assert!(
                    delivered,
                    "{what}: an event committed after its token is missing"
                );
            }
        }
    }
}
