//! Invitations: the message a source sends with a creation or a
//! reactivation, and the expiry of a PENDING connection its destination does
//! not activate in time.

use std::time::Duration;

use connections::proto::{
    ActivateConnectionRequest, Connection, ConnectionEventType, ConnectionRole, ConnectionState,
    CreateConnectionRequest, DataType, ReactivateConnectionRequest, WatchConnectionEventsRequest,
};
use tokio_stream::StreamExt;
use tonic::Code;

use crate::support::{
    AppOptions, TestApp, TestOrg, assert_error, spawn_app, spawn_app_with, violated_fields,
};

/// Creates a connection from `source` to `destination` with `message`.
async fn invite(
    app: &TestApp,
    source: &TestOrg,
    destination: &TestOrg,
    message: &str,
) -> Result<Connection, tonic::Status> {
    Ok(app
        .connections(source)
        .create_connection(CreateConnectionRequest {
            destination_organization_id: destination.id.clone(),
            data_types: vec![DataType::Inquiry as i32],
            message: message.to_owned(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .connection
        .unwrap())
}

/// ReactivateConnection as `source` with `message`.
async fn reinvite(app: &TestApp, source: &TestOrg, id: &str, message: &str) -> Connection {
    app.connections(source)
        .reactivate_connection(ReactivateConnectionRequest {
            connection_id: id.to_owned(),
            message: message.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap()
}

/// A server whose connections may stay PENDING for `lifetime`, swept every
/// `sweep`.
async fn expiring(lifetime: Duration, sweep: Duration) -> TestApp {
    spawn_app_with(AppOptions {
        pending_expiry: lifetime,
        expiry_sweep_interval: sweep,
        ..AppOptions::default()
    })
    .await
}

/// Waits (at most 10 s) until `org` sees connection `id` in `state`.
async fn wait_for_state(
    app: &TestApp,
    org: &TestOrg,
    id: &str,
    state: ConnectionState,
) -> Connection {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let connection = app.get(org, id).await;
        if connection.state() == state {
            return connection;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {:?} after 10 s",
            connection.state()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn seconds(time: Option<prost_types::Timestamp>) -> i64 {
    time.expect("a time").seconds
}

#[tokio::test]
async fn the_invitation_message_is_kept_on_its_event_and_shown_to_both_parties() {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("Source").await, app.new_org("Dest").await);
    let created = invite(
        &app,
        &source,
        &destination,
        "  Hello! We would like to share inquiries.\n ",
    )
    .await
    .unwrap();
    let message = "Hello! We would like to share inquiries.";
    assert_eq!(created.invitation_message, message, "trimmed");
    for org in [&source, &destination] {
        assert_eq!(app.get(org, &created.id).await.invitation_message, message);
        let events = app.events(org, &created.id).await;
        assert_eq!(events[0].message, message);
    }

    // Each reactivation is a new invitation, with its own message or none.
    app.activate(&destination, &created.id, "").await.unwrap();
    let activated = app.get(&source, &created.id).await;
    assert_eq!(activated.invitation_message, message, "kept while active");
    app.deactivate(&destination, &created.id, "").await.unwrap();
    let again = reinvite(&app, &source, &created.id, "Fixed:\tthe mapping").await;
    assert_eq!(again.invitation_message, "Fixed:\tthe mapping");
    app.deactivate(&source, &created.id, "").await.unwrap();
    let silent = reinvite(&app, &source, &created.id, "   ").await;
    assert_eq!(silent.invitation_message, "");

    let messages: Vec<(ConnectionEventType, String)> = app
        .events(&destination, &created.id)
        .await
        .into_iter()
        .map(|event| (event.r#type(), event.message))
        .collect();
    assert_eq!(
        messages,
        [
            (ConnectionEventType::Created, message.to_owned()),
            (ConnectionEventType::Activated, String::new()),
            (ConnectionEventType::Deactivated, String::new()),
            (
                ConnectionEventType::Reactivated,
                "Fixed:\tthe mapping".to_owned()
            ),
            (ConnectionEventType::Deactivated, String::new()),
            (ConnectionEventType::Reactivated, String::new()),
        ]
    );

    // Watches carry it too.
    let mut watch = app
        .connections(&destination)
        .watch_connection_events(WatchConnectionEventsRequest {
            from_beginning: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = loop {
        let item = watch.next().await.unwrap().unwrap();
        if let Some(event) = item.event {
            break event;
        }
    };
    assert_eq!(first.message, message);
}

#[tokio::test]
async fn messages_too_long_or_with_control_characters_are_refused_and_nothing_is_stored() {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("Source").await, app.new_org("Dest").await);
    for bad in [
        "x".repeat(1001),
        "bell \u{7}".to_owned(),
        "escape \u{1b}[2J".to_owned(),
    ] {
        let refused = invite(&app, &source, &destination, &bad).await.unwrap_err();
        assert_error(&refused, Code::InvalidArgument, "INVALID_ARGUMENT");
        assert_eq!(violated_fields(&refused), ["message"]);
    }
    // 1,000 characters, counted as characters, fit once trimmed.
    let longest = format!("  {}  ", "é".repeat(1000));
    let created = invite(&app, &source, &destination, &longest).await.unwrap();
    assert_eq!(created.invitation_message.chars().count(), 1000);

    app.deactivate(&source, &created.id, "").await.unwrap();
    let refused = app
        .connections(&source)
        .reactivate_connection(ReactivateConnectionRequest {
            connection_id: created.id.clone(),
            message: "\u{0}".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&refused, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(violated_fields(&refused), ["message"]);
    assert_eq!(
        app.get(&source, &created.id).await.state(),
        ConnectionState::Inactive
    );
}

#[tokio::test]
async fn a_retry_with_another_message_reuses_its_request_id() {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("Source").await, app.new_org("Dest").await);
    let create = |message: &str| CreateConnectionRequest {
        destination_organization_id: destination.id.clone(),
        data_types: vec![DataType::Inquiry as i32],
        message: message.to_owned(),
        request_id: "invite-1".to_owned(),
    };
    let mut client = app.connections(&source);
    let first = client.create_connection(create("Hello")).await.unwrap();
    let retried = client.create_connection(create("Hello")).await.unwrap();
    assert_eq!(first.into_inner(), retried.into_inner());
    let refused = client
        .create_connection(create("Goodbye"))
        .await
        .unwrap_err();
    assert_error(&refused, Code::InvalidArgument, "REQUEST_ID_REUSED");
}

#[tokio::test]
async fn an_unanswered_invitation_expires_and_the_source_can_send_a_new_one() {
    let app = expiring(Duration::from_secs(1), Duration::from_millis(50)).await;
    let (source, destination) = (app.new_org("Source").await, app.new_org("Dest").await);
    let created = invite(&app, &source, &destination, "Hello").await.unwrap();
    assert_eq!(
        seconds(created.expire_time) * 1000
            + i64::from(created.expire_time.unwrap().nanos) / 1_000_000,
        seconds(created.create_time) * 1000
            + i64::from(created.create_time.unwrap().nanos) / 1_000_000
            + 1000,
        "expires a lifetime after its creation"
    );

    let expired = wait_for_state(&app, &destination, &created.id, ConnectionState::Inactive).await;
    assert_eq!(expired.expire_time, None);
    assert_eq!(expired.deactivated_by(), ConnectionRole::Unspecified);
    let events = app.events(&source, &created.id).await;
    let last = events.last().unwrap();
    assert_eq!(last.r#type(), ConnectionEventType::Expired);
    assert_eq!(
        (last.from_state(), last.to_state()),
        (ConnectionState::Pending, ConnectionState::Inactive)
    );
    assert_eq!(
        (last.actor_organization_id.as_str(), last.actor_role()),
        ("", ConnectionRole::Unspecified),
        "no organization expired it"
    );
    assert_eq!(last.actor_api_key_id, "");

    // Reactivated: a new invitation with a new expiry, which an activation
    // in time ends.
    let again = reinvite(&app, &source, &created.id, "Still interested?").await;
    assert!(seconds(again.expire_time) >= seconds(expired.update_time));
    let active = app.activate(&destination, &created.id, "").await.unwrap();
    assert_eq!(active.expire_time, None);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        app.get(&source, &created.id).await.state(),
        ConnectionState::Active,
        "an active connection never expires"
    );
}

#[tokio::test]
async fn an_activation_after_the_expire_time_is_refused_even_before_the_sweep_runs() {
    // The sweep would run only in an hour: the activation checks the time.
    let app = expiring(Duration::from_secs(1), Duration::from_secs(3600)).await;
    let (source, destination) = (app.new_org("Source").await, app.new_org("Dest").await);
    let created = invite(&app, &source, &destination, "").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let refused = app
        .activate(&destination, &created.id, &created.etag)
        .await
        .unwrap_err();
    assert_error(&refused, Code::FailedPrecondition, "CONNECTION_EXPIRED");
    let unchanged = app.get(&destination, &created.id).await;
    assert_eq!(unchanged.state(), ConnectionState::Pending);
    assert_eq!(unchanged.etag, created.etag);
    // Either party may still withdraw it.
    app.deactivate(&source, &created.id, "").await.unwrap();
}

#[tokio::test]
async fn without_a_lifetime_pending_connections_never_expire() {
    let app = expiring(Duration::ZERO, Duration::from_millis(50)).await;
    let (source, destination) = (app.new_org("Source").await, app.new_org("Dest").await);
    let created = invite(&app, &source, &destination, "").await.unwrap();
    assert_eq!(created.expire_time, None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.activate(&destination, &created.id, "").await.unwrap();
}

#[tokio::test]
async fn activation_and_expiry_racing_end_with_exactly_one_of_them() {
    const CONNECTIONS: usize = 40;
    let app = expiring(Duration::from_secs(1), Duration::from_millis(5)).await;
    let destination = app.new_org("Dest").await;
    let mut created = Vec::new();
    for n in 0..CONNECTIONS {
        let source = app.new_org(&format!("Source {n}")).await;
        created.push(invite(&app, &source, &destination, "").await.unwrap());
    }
    // Each activation is sent within a few milliseconds of its expire time,
    // on either side of it, while the sweep looks every 5 ms.
    let mut racing = tokio::task::JoinSet::new();
    for (n, connection) in created.iter().enumerate() {
        let expire = connection.expire_time.unwrap();
        let expire =
            std::time::UNIX_EPOCH + Duration::new(expire.seconds as u64, expire.nanos as u32);
        let offset = Duration::from_millis((n % 8) as u64 * 2);
        let at = if n % 2 == 0 {
            expire - offset
        } else {
            expire + offset
        };
        let mut client = app.connections(&destination);
        let id = connection.id.clone();
        racing.spawn(async move {
            if let Ok(wait) = at.duration_since(std::time::SystemTime::now()) {
                tokio::time::sleep(wait).await;
            }
            let outcome = client
                .activate_connection(ActivateConnectionRequest {
                    connection_id: id.clone(),
                    ..Default::default()
                })
                .await;
            (id, outcome.map(|_| ()))
        });
    }
    let (mut activated, mut expired) = (0, 0);
    while let Some(joined) = racing.join_next().await {
        let (id, outcome) = joined.unwrap();
        let final_state = match &outcome {
            Ok(()) => ConnectionState::Active,
            Err(_) => ConnectionState::Inactive,
        };
        let connection = wait_for_state(&app, &destination, &id, final_state).await;
        let types: Vec<_> = app
            .events(&destination, &id)
            .await
            .iter()
            .map(|e| e.r#type())
            .collect();
        match outcome {
            Ok(()) => {
                activated += 1;
                assert_eq!(
                    types,
                    [ConnectionEventType::Created, ConnectionEventType::Activated]
                );
            }
            Err(refused) => {
                expired += 1;
                // Refused for its time, or, once the sweep had expired it,
                // for its state.
                assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
                assert!(
                    refused.message().contains("CONNECTION_EXPIRED")
                        || refused.message().contains("INVALID_STATE_TRANSITION"),
                    "{refused:?}"
                );
                assert_eq!(
                    types,
                    [ConnectionEventType::Created, ConnectionEventType::Expired]
                );
            }
        }
        assert_eq!(connection.state(), final_state);
    }
    eprintln!("activation vs expiry: {activated} activated first, {expired} expired first");
    assert_eq!(activated + expired, CONNECTIONS);
}

#[tokio::test]
async fn an_expiry_reaches_both_parties_webhooks_as_connection_expired() {
    use crate::support::receiver::Receiver;
    use connections::proto::CreateWebhookEndpointRequest;
    let app = expiring(Duration::from_secs(1), Duration::from_millis(50)).await;
    let (source, destination) = (app.new_org("Source").await, app.new_org("Dest").await);
    let receiver = Receiver::start().await;
    for (org, path) in [(&source, "/source"), (&destination, "/destination")] {
        app.webhooks(org)
            .create_webhook_endpoint(CreateWebhookEndpointRequest {
                url: receiver.url(path),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let created = invite(&app, &source, &destination, "Hello").await.unwrap();
    let delivered = receiver.wait_for_delivered(4).await;
    for path in ["/source", "/destination"] {
        let mine: Vec<_> = delivered.iter().filter(|d| d.path == path).collect();
        assert_eq!(
            mine.iter().map(|d| d.event_type()).collect::<Vec<_>>(),
            ["connection.created", "connection.expired"],
            "{path}"
        );
        assert!(mine.iter().all(|d| d.connection_id() == created.id));
        assert_eq!(mine[0].json()["data"]["event"]["message"], "Hello");
        assert_eq!(
            mine[1].json()["data"]["connection"]["state"],
            "CONNECTION_STATE_INACTIVE"
        );
    }
}
