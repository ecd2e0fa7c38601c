//! The real binary killed mid-burst (`kill -9`), and stopped with calls in
//! flight (SIGTERM).

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use connections::proto::{
    ActivateConnectionRequest, Connection, ConnectionEventType as Event, ConnectionRole,
    ConnectionState as State, DeactivateConnectionRequest, ListConnectionsRequest,
    ReactivateConnectionRequest,
};
use sea_orm::{ConnectionTrait, TransactionTrait};
use tonic::{Code, Status, transport::Channel};

use crate::support::{
    TestDatabase, TestOrg,
    clients::connections_on,
    process::{Server, new_org},
};

#[derive(Debug, Clone, Copy)]
pub enum Step {
    Deactivate,
    Reactivate,
    Activate,
}

pub const CYCLE: [Step; 3] = [Step::Deactivate, Step::Reactivate, Step::Activate];

/// One transition with a request_id; the source deactivates and reactivates,
/// the destination activates.
pub async fn step(
    channel: &Channel,
    source: &TestOrg,
    destination: &TestOrg,
    step: Step,
    id: &str,
    request_id: &str,
) -> Result<Connection, Status> {
    let (connection_id, request_id) = (id.to_owned(), request_id.to_owned());
    let response = match step {
        Step::Deactivate => {
            connections_on(channel, source)
                .deactivate_connection(DeactivateConnectionRequest {
                    connection_id,
                    request_id,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .connection
        }
        Step::Reactivate => {
            connections_on(channel, source)
                .reactivate_connection(ReactivateConnectionRequest {
                    message: String::new(),
                    connection_id,
                    request_id,
                    etag: String::new(),
                })
                .await?
                .into_inner()
                .connection
        }
        Step::Activate => {
            connections_on(channel, destination)
                .activate_connection(ActivateConnectionRequest {
                    connection_id,
                    request_id,
                    etag: String::new(),
                })
                .await?
                .into_inner()
                .connection
        }
    };
    Ok(response.unwrap())
}

/// A request sent before a crash: acknowledged with this response, or not.
struct Sent {
    connection: usize,
    step: Step,
    request_id: String,
    acknowledged: Option<Connection>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_kill_9_every_acknowledged_write_is_there_and_retries_execute_at_most_once() {
    const WRITERS: usize = 6;
    const ROUNDS: usize = 3;
    let (_database, url) = TestDatabase::create(false).await;
    let source = new_org(&url, "Source");
    let mut destinations = Vec::new();
    let mut connections = Vec::new();
    {
        let server = Server::start(&url).await;
        for i in 0..WRITERS {
            let destination = new_org(&url, &format!("Destination {i}"));
            let created = server
                .client(&source)
                .create_connection(connections::proto::CreateConnectionRequest {
                    message: String::new(),
                    destination_organization_id: destination.id.clone(),
                    data_types: vec![1],
                    request_id: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
                .connection
                .unwrap();
            step(
                &server.channel,
                &source,
                &destination,
                Step::Activate,
                &created.id,
                "",
            )
            .await
            .unwrap();
            connections.push(created.id);
            destinations.push(destination);
        }
        server.signal("-KILL");
        server.wait().await;
    }

    let mut sent: Vec<Sent> = Vec::new();
    for round in 0..ROUNDS {
        let server = Server::start(&url).await;
        let crashed = Arc::new(AtomicBool::new(false));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let writers = (0..WRITERS).map(|w| {
            let (channel, crashed) = (server.channel.clone(), crashed.clone());
            let in_flight = in_flight.clone();
            let (source, destination) = (source.clone(), destinations[w].clone());
            let id = connections[w].clone();
            tokio::spawn(async move {
                let mut log = Vec::new();
                // Each connection is ACTIVE at the start of a round (see below).
                // The kill ends the loop long before its bound.
                for (n, s) in CYCLE.iter().cycle().take(100_000).enumerate() {
                    let request_id = format!("round{round}-writer{w}-{n}");
                    in_flight.fetch_add(1, Ordering::SeqCst);
                    let result = step(&channel, &source, &destination, *s, &id, &request_id).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    let acknowledged = result.as_ref().ok().cloned();
                    let stop = result.is_err();
                    log.push(Sent {
                        connection: w,
                        step: *s,
                        request_id,
                        acknowledged,
                    });
                    if stop {
                        assert!(
                            crashed.load(Ordering::SeqCst),
                            "failed before the crash: {result:?}"
                        );
                        break;
                    }
                }
                log
            })
        });
        let writers: Vec<_> = writers.collect();
        tokio::time::sleep(Duration::from_millis(300 + 100 * round as u64)).await;
        crashed.store(true, Ordering::SeqCst);
        let in_flight_at_kill = in_flight.load(Ordering::SeqCst);
        server.signal("-KILL");
        for writer in writers {
            sent.extend(writer.await.unwrap());
        }
        server.wait().await;
        // The kill must have cut calls off, or this round tested nothing.
        assert!(
            in_flight_at_kill > 0,
            "round {round}: no write was in flight at the kill"
        );

        // Restart; finish each connection's interrupted cycle with the same
        // request_ids, so every connection is ACTIVE again for the next round.
        let server = Server::start(&url).await;
        for w in 0..WRITERS {
            let pending: Vec<&Sent> = sent
                .iter()
                .filter(|s| {
                    s.connection == w && s.request_id.starts_with(&format!("round{round}-"))
                })
                .collect();
            let last = pending.last().expect("each writer sent something");
            if last.acknowledged.is_none() {
                // Retry the unacknowledged request twice: it runs at most once.
                let first = step(
                    &server.channel,
                    &source,
                    &destinations[w],
                    last.step,
                    &connections[w],
                    &last.request_id,
                )
                .await
                .expect("the interrupted step is still allowed");
                let again = step(
                    &server.channel,
                    &source,
                    &destinations[w],
                    last.step,
                    &connections[w],
                    &last.request_id,
                )
                .await
                .unwrap();
                assert_eq!(first, again);
            }
            // Complete the cycle back to ACTIVE.
            let done = pending.len();
            for (n, s) in CYCLE
                .iter()
                .cycle()
                .enumerate()
                .skip(done)
                .take_while(|(n, _)| n % 3 != 0)
            {
                let request_id = format!("round{round}-writer{w}-{n}");
                step(
                    &server.channel,
                    &source,
                    &destinations[w],
                    *s,
                    &connections[w],
                    &request_id,
                )
                .await
                .unwrap();
            }
        }
        server.signal("-KILL");
        server.wait().await;
    }

    // Every acknowledged write is there: its retry replays it unchanged.
    let server = Server::start(&url).await;
    let mut acknowledged = 0;
    for s in &sent {
        if let Some(response) = &s.acknowledged {
            let replay = step(
                &server.channel,
                &source,
                &destinations[s.connection],
                s.step,
                &connections[s.connection],
                &s.request_id,
            )
            .await
            .expect("an acknowledged write is replayed after a crash");
            assert_eq!(&replay, response);
            acknowledged += 1;
        }
    }
    // And each connection's whole history is one creation, one activation,
    // then complete cycles, each step by the party that may take it: nothing
    // ran twice and nothing is missing.
    let mut per_connection: HashMap<usize, usize> = HashMap::new();
    for (w, id) in connections.iter().enumerate() {
        let events = server.events(&source, id).await;
        assert!(events.len() >= 2, "connection {w}: {events:?}");
        for (n, event) in events.iter().enumerate() {
            assert_eq!(event.sequence, n as i64 + 1, "connection {w}");
            let expected = match n {
                0 => (Event::Created, State::Unspecified, State::Pending),
                1 => (Event::Activated, State::Pending, State::Active),
                _ => match CYCLE[(n - 2) % 3] {
                    Step::Deactivate => (Event::Deactivated, State::Active, State::Inactive),
                    Step::Reactivate => (Event::Reactivated, State::Inactive, State::Pending),
                    Step::Activate => (Event::Activated, State::Pending, State::Active),
                },
            };
            assert_eq!(
                (event.r#type(), event.from_state(), event.to_state()),
                expected,
                "connection {w}, event {}",
                event.sequence
            );
            let (role, actor) = if event.r#type() == Event::Activated {
                (ConnectionRole::Destination, &destinations[w].id)
            } else {
                (ConnectionRole::Source, &source.id)
            };
            assert_eq!(event.actor_role(), role, "connection {w}, {event:?}");
            assert_eq!(&event.actor_organization_id, actor);
        }
        assert_eq!((events.len() - 2) % 3, 0, "an incomplete or doubled cycle");
        per_connection.insert(w, events.len());
    }
    let listed = server
        .client(&source)
        .list_connections(ListConnectionsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .connections;
    assert!(
        listed
            .iter()
            .all(|c| c.state() == connections::proto::ConnectionState::Active)
    );
    server.signal("-TERM");
    assert!(server.wait().await.success());
    println!(
        "crash: {ROUNDS} kill -9 rounds, {} requests sent, {acknowledged} acknowledged, events per connection {per_connection:?}",
        sent.len()
    );
}

/// UNAVAILABLE for a call the server refused, or that the client's own
/// transport refused to send on a connection the server is closing (tonic
/// reports that as CANCELLED with a transport error as its source); any other
/// status's own code.
fn refused(status: &Status) -> Code {
    let from_transport = std::error::Error::source(status)
        .is_some_and(|source| source.is::<tonic::transport::Error>());
    match status.code() {
        Code::Cancelled if from_transport => Code::Unavailable,
        code => code,
    }
}

/// What one writer saw around the signal.
#[derive(Default)]
struct Outcomes {
    /// Calls started before the signal, and acknowledged.
    acknowledged_before: usize,
    /// Calls started before the signal that failed, with their statuses.
    failed_before: Vec<Status>,
    /// Calls started after the signal, by status code (see [`refused`]).
    after: HashMap<Code, usize>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_lets_calls_in_flight_complete_and_exits_zero() {
    const WRITERS: usize = 8;
    let (_database, url) = TestDatabase::create(false).await;
    let source = new_org(&url, "Source");
    let server = Server::start(&url).await;
    let mut destinations = Vec::new();
    let mut ids = Vec::new();
    for i in 0..WRITERS {
        let destination = new_org(&url, &format!("Destination {i}"));
        let created = server
            .client(&source)
            .create_connection(connections::proto::CreateConnectionRequest {
                message: String::new(),
                destination_organization_id: destination.id.clone(),
                data_types: vec![1],
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .connection
            .unwrap();
        ids.push(created.id);
        destinations.push(destination);
    }

    // Writers drive their connections around the state machine until a call
    // fails, sorting each call by whether it started before the signal.
    let signalled = Arc::new(AtomicBool::new(false));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (channel, source) = (server.channel.clone(), source.clone());
            let (destination, id) = (destinations[w].clone(), ids[w].clone());
            let (signalled, in_flight) = (signalled.clone(), in_flight.clone());
            tokio::spawn(async move {
                let mut seen = Outcomes::default();
                for s in [Step::Activate, Step::Deactivate, Step::Reactivate]
                    .iter()
                    .cycle()
                    .take(30_000)
                {
                    let after = signalled.load(Ordering::SeqCst);
                    in_flight.fetch_add(1, Ordering::SeqCst);
                    let result = step(&channel, &source, &destination, *s, &id, "").await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    match (after, result) {
                        (false, Ok(_)) => seen.acknowledged_before += 1,
                        (false, Err(status)) => seen.failed_before.push(status),
                        (true, result) => {
                            let code = result.map_or_else(|s| refused(&s), |_| Code::Ok);
                            *seen.after.entry(code).or_default() += 1;
                        }
                    }
                    if after {
                        break;
                    }
                }
                seen
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Hold every writer's next call inside the server: lock the connections
    // in the database (on SQLite, the write lock), and wait until each writer
    // has a call out. The server's busy timeout (5 s) outlasts the hold (at
    // most 2 s of waiting and 0.9 s of sleeps).
    let locker = sea_orm::Database::connect(&url).await.unwrap();
    let lock = locker.begin().await.unwrap();
    lock.execute_unprepared("UPDATE connections SET version = version")
        .await
        .unwrap();
    let waiting = tokio::time::Instant::now();
    while in_flight.load(Ordering::SeqCst) < WRITERS {
        assert!(
            waiting.elapsed() < Duration::from_secs(2),
            "writers never all had a call out"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Each call is on the wire well within this.
    tokio::time::sleep(Duration::from_millis(300)).await;

    signalled.store(true, Ordering::SeqCst);
    server.signal("-TERM");
    // Calls started now, after the signal: more on the same channel, besides
    // the writers' next calls.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late = tokio::spawn({
        let (channel, source, id) = (server.channel.clone(), source.clone(), ids[0].clone());
        async move {
            let mut codes: HashMap<Code, usize> = HashMap::new();
            for _ in 0..4 {
                let result = connections_on(&channel, &source)
                    .get_connection(connections::proto::GetConnectionRequest {
                        connection_id: id.clone(),
                    })
                    .await;
                *codes
                    .entry(result.map_or_else(|s| refused(&s), |_| Code::Ok))
                    .or_default() += 1;
            }
            codes
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    lock.commit().await.unwrap();
    locker.close().await.unwrap();

    let status = server.wait().await;
    assert!(status.success(), "exit status {status:?}");

    // A call cut off mid-way would have changed the connection without its
    // caller hearing of it: every change must have been acknowledged.
    let server = Server::start(&url).await;
    let (mut before, mut after): (usize, HashMap<Code, usize>) = (0, late.await.unwrap());
    for (w, writer) in writers.into_iter().enumerate() {
        let seen = writer.await.unwrap();
        assert!(
            seen.failed_before.is_empty(),
            "writer {w}: calls started before the signal failed: {:?}",
            seen.failed_before
        );
        let events = server.events(&source, &ids[w]).await;
        assert_eq!(
            events.len() - 1,
            seen.acknowledged_before + seen.after.get(&Code::Ok).copied().unwrap_or_default(),
            "connection {w}"
        );
        before += seen.acknowledged_before;
        for (code, n) in seen.after {
            *after.entry(code).or_default() += n;
        }
    }
    // Every call held in flight over the signal completed, and more before it.
    assert!(
        before > WRITERS,
        "too few calls before the signal: {before}"
    );
    assert!(
        after.values().sum::<usize>() >= WRITERS && after.keys().all(|c| *c == Code::Unavailable),
        "calls started after the signal: {after:?}"
    );
    server.signal("-TERM");
    assert!(server.wait().await.success());
    println!("sigterm: {before} calls acknowledged before the signal; after it {after:?}");
}
