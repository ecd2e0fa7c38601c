//! WatchConnectionEvents: history then live events of the caller's
//! connections, resumable by change token, with heartbeats and limits.

use std::time::Duration;

use connections::proto::{
    ConnectionEvent, ConnectionRole, CreateConnectionRequest, CreateConnectionResponse, DataType,
    ListApiKeysRequest, RevokeApiKeyRequest, WatchConnectionEventsRequest,
    WatchConnectionEventsResponse,
};
use tonic::{Code, Status, Streaming};

use crate::support::{
    AppOptions, TestApp, TestOrg, assert_error, clients::connections_on, require_postgres,
    spawn_app, spawn_app_with, spawn_replicas,
};

/// How long a test waits for a message it expects.
const EXPECT: Duration = Duration::from_secs(10);

/// Opens a watch as `org`.
async fn watch(
    app: &TestApp,
    org: &TestOrg,
    request: WatchConnectionEventsRequest,
) -> Result<Streaming<WatchConnectionEventsResponse>, Status> {
    app.connections(org)
        .watch_connection_events(request)
        .await
        .map(tonic::Response::into_inner)
}

fn from_beginning() -> WatchConnectionEventsRequest {
    WatchConnectionEventsRequest {
        from_beginning: true,
        ..Default::default()
    }
}

fn after(token: &str) -> WatchConnectionEventsRequest {
    WatchConnectionEventsRequest {
        after_change_token: token.to_owned(),
        ..Default::default()
    }
}

/// Creates a connection from `source` to `destination`; returns the response.
async fn create(
    app: &TestApp,
    source: &TestOrg,
    destination: &TestOrg,
) -> CreateConnectionResponse {
    app.connections(source)
        .create_connection(CreateConnectionRequest {
            message: String::new(),
            destination_organization_id: destination.id.clone(),
            data_types: vec![DataType::Account.into()],
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// The next `count` events (skipping heartbeats), and the token after the
/// last.
async fn next_events(
    stream: &mut Streaming<WatchConnectionEventsResponse>,
    count: usize,
) -> (Vec<ConnectionEvent>, String) {
    let mut events = Vec::new();
    let mut token = String::new();
    while events.len() < count {
        let message = tokio::time::timeout(EXPECT, stream.message())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} events arrived", events.len()))
            .expect("the stream goes on")
            .expect("the stream goes on");
        assert!(!message.change_token.is_empty());
        token = message.change_token;
        events.extend(message.event);
    }
    (events, token)
}

/// Asserts that no event arrives for a while (heartbeats may).
async fn assert_quiet(stream: &mut Streaming<WatchConnectionEventsResponse>) {
    let quiet = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            let message = stream.message().await.unwrap().unwrap();
            if message.event.is_some() {
                return message;
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "unexpected event: {quiet:?}");
}

/// (connection, sequence) of each event.
fn keys(events: &[ConnectionEvent]) -> Vec<(String, i64)> {
    events
        .iter()
        .map(|e| (e.connection_id.clone(), e.sequence))
        .collect()
}

/// The final error of a stream that is expected to end.
async fn end_of(stream: &mut Streaming<WatchConnectionEventsResponse>) -> Status {
    tokio::time::timeout(EXPECT, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("the stream ended without an error"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the stream ends")
}

#[tokio::test]
async fn from_the_beginning_a_watch_streams_the_callers_history_then_live_events_only() {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let (x, y) = (app.new_org("X").await, app.new_org("Y").await);
    let id = app.connect(&source, &destination).await.id;
    app.activate(&destination, &id, "").await.unwrap();
    let others = app.connect(&x, &y).await.id;

    let mut stream = watch(&app, &source, from_beginning()).await.unwrap();
    let (history, _) = next_events(&mut stream, 2).await;
    assert_eq!(keys(&history), [(id.clone(), 1), (id.clone(), 2)]);

    app.activate(&y, &others, "").await.unwrap();
    app.deactivate(&destination, &id, "").await.unwrap();
    let (live, _) = next_events(&mut stream, 1).await;
    assert_eq!(keys(&live), [(id.clone(), 3)]);
    assert_eq!(live, app.events(&source, &id).await[2..]);
    assert_quiet(&mut stream).await;
}

#[tokio::test]
async fn resuming_after_the_last_token_loses_nothing_and_repeats_nothing() {
    let app = spawn_app().await;
    let source = app.new_org("S").await;
    let mut ids = Vec::new();
    let mut destinations = Vec::new();
    for i in 0..3 {
        let destination = app.new_org(&format!("D{i}")).await;
        ids.push(app.connect(&source, &destination).await.id);
        destinations.push(destination);
    }
    let mut stream = watch(&app, &source, from_beginning()).await.unwrap();
    let (first, token) = next_events(&mut stream, 3).await;
    drop(stream);

    // Changes while no one watches, then resume.
    for (destination, id) in destinations.iter().zip(&ids) {
        app.activate(destination, id, "").await.unwrap();
        app.deactivate(&source, id, "").await.unwrap();
    }
    let mut resumed = watch(&app, &source, after(&token)).await.unwrap();
    let (rest, _) = next_events(&mut resumed, 6).await;
    assert_quiet(&mut resumed).await;

    // Together they are each connection's history, in order, exactly once.
    let all: Vec<ConnectionEvent> = first.into_iter().chain(rest).collect();
    for id in &ids {
        let watched: Vec<_> = all
            .iter()
            .filter(|e| e.connection_id == *id)
            .cloned()
            .collect();
        assert_eq!(watched, app.events(&source, id).await, "{id}");
    }
}

#[tokio::test]
async fn the_token_a_write_returns_resumes_just_after_that_write() {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let created = create(&app, &source, &destination).await;
    let id = created.connection.unwrap().id;
    let mut stream = watch(&app, &destination, after(&created.change_token))
        .await
        .unwrap();
    app.activate(&destination, &id, "").await.unwrap();
    let (events, _) = next_events(&mut stream, 1).await;
    assert_eq!(keys(&events), [(id, 2)]);
}

#[tokio::test]
async fn without_a_token_or_from_beginning_a_watch_starts_now_and_role_filters() {
    let app = spawn_app().await;
    let (a, b, c) = (
        app.new_org("A").await,
        app.new_org("B").await,
        app.new_org("C").await,
    );
    let outbound = app.connect(&a, &b).await.id;
    let inbound = app.connect(&c, &a).await.id;

    let mut now = watch(&app, &a, WatchConnectionEventsRequest::default())
        .await
        .unwrap();
    let mut as_destination = watch(
        &app,
        &a,
        WatchConnectionEventsRequest {
            from_beginning: true,
            role: ConnectionRole::Destination.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (history, _) = next_events(&mut as_destination, 1).await;
    assert_eq!(keys(&history), [(inbound.clone(), 1)]);

    app.activate(&b, &outbound, "").await.unwrap();
    app.activate(&a, &inbound, "").await.unwrap();
    let (both, _) = next_events(&mut now, 2).await;
    assert_eq!(keys(&both), [(outbound, 2), (inbound.clone(), 2)]);
    let (inbound_only, _) = next_events(&mut as_destination, 1).await;
    assert_eq!(keys(&inbound_only), [(inbound, 2)]);
    assert_quiet(&mut as_destination).await;
}

#[tokio::test]
async fn a_watch_that_starts_now_sees_a_write_made_as_soon_as_its_response_arrives() {
    let app = spawn_app().await;
    let source = app.new_org("S").await;
    for round in 0..20 {
        let destination = app.new_org(&format!("D{round}")).await;
        let id = create(&app, &source, &destination)
            .await
            .connection
            .unwrap()
            .id;
        // No message read first: the response alone says the start is fixed.
        let mut stream = watch(&app, &source, WatchConnectionEventsRequest::default())
            .await
            .unwrap();
        app.activate(&destination, &id, "").await.unwrap();
        let (events, _) = tokio::time::timeout(EXPECT, next_events(&mut stream, 1))
            .await
            .unwrap_or_else(|_| panic!("round {round}: the write was not sent"));
        assert_eq!(keys(&events), [(id, 2)], "round {round}");
    }
}

#[tokio::test]
async fn an_idle_watch_gets_heartbeats_whose_token_resumes_it() {
    let app = spawn_app_with(AppOptions {
        watch_heartbeat_interval: Duration::from_millis(200),
        ..AppOptions::default()
    })
    .await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let id = app.connect(&source, &destination).await.id;
    let mut stream = watch(&app, &source, from_beginning()).await.unwrap();
    next_events(&mut stream, 1).await;
    let heartbeat = tokio::time::timeout(Duration::from_secs(2), stream.message())
        .await
        .expect("a heartbeat within 2 s")
        .unwrap()
        .unwrap();
    assert_eq!(heartbeat.event, None);
    drop(stream);

    app.activate(&destination, &id, "").await.unwrap();
    let mut resumed = watch(&app, &source, after(&heartbeat.change_token))
        .await
        .unwrap();
    let (events, _) = next_events(&mut resumed, 1).await;
    assert_eq!(keys(&events), [(id, 2)]);
}

#[tokio::test]
async fn tokens_that_were_not_issued_are_invalid_change_token() {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let created = create(&app, &source, &destination).await;
    let mut tampered = created.change_token.clone().into_bytes();
    tampered[3] = if tampered[3] == b'A' { b'B' } else { b'A' };
    for token in [
        String::from_utf8(tampered).unwrap(),
        "not-a-token".to_owned(),
        "x".repeat(10_000),
    ] {
        let status = watch(&app, &source, after(&token)).await.unwrap_err();
        assert_error(&status, Code::InvalidArgument, "INVALID_CHANGE_TOKEN");
    }
}

#[tokio::test]
async fn an_organization_may_open_only_so_many_watches_at_once() {
    let app = spawn_app_with(AppOptions {
        watch_streams_per_organization: 2,
        ..AppOptions::default()
    })
    .await;
    let (a, b) = (app.new_org("A").await, app.new_org("B").await);
    let first = watch(&app, &a, from_beginning()).await.unwrap();
    let _second = watch(&app, &a, from_beginning()).await.unwrap();
    let status = watch(&app, &a, from_beginning()).await.unwrap_err();
    assert_error(&status, Code::ResourceExhausted, "WATCH_LIMIT_EXCEEDED");
    // Another organization is not affected; a closed stream frees its place.
    let _other = watch(&app, &b, from_beginning()).await.unwrap();
    drop(first);
    let mut reopened = None;
    for _ in 0..50 {
        match watch(&app, &a, from_beginning()).await {
            Ok(stream) => {
                reopened = Some(stream);
                break;
            }
            Err(status) => {
                assert_error(&status, Code::ResourceExhausted, "WATCH_LIMIT_EXCEEDED");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    assert!(
        reopened.is_some(),
        "the closed stream's place was never freed"
    );
}

#[tokio::test]
async fn revoking_the_key_ends_an_open_watch_with_unauthenticated() {
    let app = spawn_app().await;
    let org = app.new_org("A").await;
    let mut stream = watch(&app, &org, from_beginning()).await.unwrap();
    let mut admin = app.admin();
    let key = admin
        .list_api_keys(ListApiKeysRequest {
            organization_id: org.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .api_keys
        .remove(0);
    let revoked_at = tokio::time::Instant::now();
    admin
        .revoke_api_key(RevokeApiKeyRequest { api_key_id: key.id })
        .await
        .unwrap();
    let status = end_of(&mut stream).await;
    assert_error(&status, Code::Unauthenticated, "API_KEY_INVALID");
    assert!(
        revoked_at.elapsed() < Duration::from_secs(2),
        "{:?}",
        revoked_at.elapsed()
    );
}

#[tokio::test]
async fn a_stop_ends_an_open_watch_with_unavailable() {
    let app = spawn_app().await;
    let org = app.new_org("A").await;
    let mut stream = watch(&app, &org, from_beginning()).await.unwrap();
    let (stopping, _database) = app.begin_stop();
    let status = end_of(&mut stream).await;
    assert_error(&status, Code::Unavailable, "SERVER_STOPPING");
    tokio::time::timeout(EXPECT, stopping.finished())
        .await
        .expect("the server stops with a watch open");
}

#[tokio::test]
async fn a_watcher_that_moves_to_another_replica_with_its_token_sees_every_event_once() {
    let replicas = spawn_replicas(2, AppOptions::default()).await;
    let (first, second) = (&replicas[0], &replicas[1]);
    let source = first.new_org("S").await;
    let mut pairs = Vec::new();
    for i in 0..4 {
        let destination = first.new_org(&format!("D{i}")).await;
        let id = first.connect(&source, &destination).await.id;
        pairs.push((destination, id));
    }
    let mut stream = watch(first, &source, from_beginning()).await.unwrap();
    // Writers on both replicas.
    for (i, (destination, id)) in pairs.iter().enumerate() {
        let replica = &replicas[i % 2];
        replica.activate(destination, id, "").await.unwrap();
    }
    let (seen, token) = next_events(&mut stream, 6).await;
    drop(stream);
    for (i, (_, id)) in pairs.iter().enumerate() {
        let replica = &replicas[(i + 1) % 2];
        replica.deactivate(&source, id, "").await.unwrap();
    }
    let mut moved = watch(second, &source, after(&token)).await.unwrap();
    let (rest, _) = next_events(&mut moved, 6).await;
    assert_quiet(&mut moved).await;
    let all: Vec<ConnectionEvent> = seen.into_iter().chain(rest).collect();
    assert_eq!(all.len(), 12);
    for (_, id) in &pairs {
        let watched: Vec<_> = all
            .iter()
            .filter(|e| e.connection_id == *id)
            .cloned()
            .collect();
        assert_eq!(watched, first.events(&source, id).await, "{id}");
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set TEST_DATABASE_URL and pass --include-ignored"]
async fn a_commit_on_another_replica_reaches_a_watcher_without_waiting_for_the_poll() {
    require_postgres();
    // Replicas that would read the log for each other's changes only every
    // minute: only the database's notification can bring them sooner.
    let replicas = spawn_replicas(
        2,
        AppOptions {
            change_feed_poll_interval: Duration::from_secs(60),
            ..AppOptions::default()
        },
    )
    .await;
    let (first, second) = (&replicas[0], &replicas[1]);
    let source = first.new_org("S").await;
    let destination = first.new_org("D").await;
    let mut stream = watch(second, &source, WatchConnectionEventsRequest::default())
        .await
        .unwrap();
    let started = tokio::time::timeout(EXPECT, stream.message())
        .await
        .expect("a first heartbeat")
        .unwrap()
        .unwrap();
    assert_eq!(started.event, None, "the first message is a heartbeat");
    let created = create(first, &source, &destination).await;
    let id = created.connection.unwrap().id;
    let (events, _) = tokio::time::timeout(Duration::from_secs(5), next_events(&mut stream, 1))
        .await
        .expect("the creation arrives long before the next poll");
    assert_eq!(keys(&events), vec![(id.clone(), 1)]);
    second.deactivate(&destination, &id, "").await.unwrap();
    first.reactivate(&source, &id, "").await.unwrap();
    let (events, _) = tokio::time::timeout(Duration::from_secs(5), next_events(&mut stream, 2))
        .await
        .expect("the transitions arrive long before the next poll");
    assert_eq!(keys(&events), vec![(id.clone(), 2), (id, 3)]);
}

/// A channel to `app` whose streams each take at most 1 KiB before the
/// client reads: a watch that is not read stalls on the server after a few
/// messages.
async fn narrow_channel(app: &TestApp) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .initial_stream_window_size(Some(1024))
        .connect()
        .await
        .unwrap()
}

/// Deactivates and reactivates `id` `times` times: two events each.
async fn churn(app: &TestApp, source: &TestOrg, id: &str, times: usize) {
    for _ in 0..times {
        app.deactivate(source, id, "").await.unwrap();
        app.reactivate(source, id, "").await.unwrap();
    }
}

#[tokio::test]
async fn the_stalled_watches_of_a_revoked_key_end_at_once_and_give_their_slots_back() {
    let app = spawn_app().await;
    let source = app.new_org("S").await;
    let destination = app.new_org("D").await;
    let id = app.connect(&source, &destination).await.id;
    // A second key of the same organization.
    let mut admin = app.admin();
    let keys = admin
        .list_api_keys(ListApiKeysRequest {
            organization_id: source.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .api_keys;
    let other = app.new_key(&source, "other").await;

    // Every stream the organization may open, through a channel that takes
    // little before the client reads, and nobody reads: they stall.
    let narrow = narrow_channel(&app).await;
    let mut stalled = Vec::new();
    for _ in 0..AppOptions::default().watch_streams_per_organization {
        let mut stream = connections_on(&narrow, &source)
            .watch_connection_events(WatchConnectionEventsRequest::default())
            .await
            .unwrap()
            .into_inner();
        stream.message().await.unwrap().unwrap();
        stalled.push(stream);
    }
    churn(&app, &source, &id, 40).await;
    let before_revocation = app.events(&source, &id).await;

    let revoked_at = tokio::time::Instant::now();
    admin
        .revoke_api_key(RevokeApiKeyRequest {
            api_key_id: keys[0].id.clone(),
        })
        .await
        .unwrap();
    // The organization's other key gets a slot back within the bound.
    let reopened = loop {
        match watch(&app, &other, WatchConnectionEventsRequest::default()).await {
            Ok(stream) => break stream,
            Err(status) => assert_error(&status, Code::ResourceExhausted, "WATCH_LIMIT_EXCEEDED"),
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(3),
            "no slot came back within 3 s of the revocation"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let freed_after = revoked_at.elapsed();
    drop(reopened);
    churn(&app, &other, &id, 3).await;

    // A stalled stream, read now: no event committed after the revocation,
    // then UNAUTHENTICATED.
    let mut stream = stalled.pop().unwrap();
    let status = loop {
        match tokio::time::timeout(EXPECT, stream.message())
            .await
            .expect("the stream ends")
        {
            Ok(Some(message)) => {
                if let Some(event) = message.event {
                    assert!(
                        before_revocation.contains(&event),
                        "event {} came after the revocation",
                        event.sequence
                    );
                }
            }
            Ok(None) => panic!("the stream ended without an error"),
            Err(status) => break status,
        }
    };
    assert_error(&status, Code::Unauthenticated, "API_KEY_INVALID");
    eprintln!("a slot came back {freed_after:?} after the revocation");
}

#[tokio::test]
async fn a_watch_whose_messages_go_unread_ends_as_too_slow_however_little_it_holds() {
    let app = spawn_app_with(AppOptions {
        watch_unread_timeout: Duration::from_secs(1),
        watch_streams_per_organization: 1,
        ..AppOptions::default()
    })
    .await;
    let source = app.new_org("S").await;
    let destination = app.new_org("D").await;
    let id = app.connect(&source, &destination).await.id;
    let narrow = narrow_channel(&app).await;
    let mut stalled = connections_on(&narrow, &source)
        .watch_connection_events(WatchConnectionEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    stalled.message().await.unwrap().unwrap();
    // A few events: more than the client takes unread, far fewer than the
    // server's buffers hold.
    churn(&app, &source, &id, 10).await;
    let started = tokio::time::Instant::now();
    let reopened = loop {
        if let Ok(stream) = watch(&app, &source, WatchConnectionEventsRequest::default()).await {
            break stream;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the unread stream still holds its slot"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    drop(reopened);
    let status = end_of(&mut stalled).await;
    assert_error(&status, Code::Aborted, "WATCH_CONSUMER_TOO_SLOW");
}
