//! Webhooks through failures: two replicas of the real binary on one
//! PostgreSQL database, writers racing on both, the replica delivering to
//! the endpoint killed with SIGKILL mid-way; and a receiver that is down
//! for a while. Every event arrives at least once, per connection in log
//! order, every repeat identical to the first.

use std::{collections::HashMap, time::Duration};

use connections::proto::{
    CreateConnectionRequest, CreateWebhookEndpointRequest,
    webhook_service_client::WebhookServiceClient,
};

use crate::{
    crash::{CYCLE, step},
    support::{
        AppOptions, Bearer, TestDatabase,
        process::{Server, new_org},
        receiver::{Answer, Delivery, Receiver},
        require_postgres, spawn_app_with,
    },
};

/// Checks that `deliveries` hold every event of `expected` (connection →
/// event IDs in sequence order) at least once, that the first delivery of
/// each connection's events is in sequence order, and that every repeat has
/// the body of the first. Returns how many repeats there were.
fn assert_all_once_in_order(
    deliveries: &[Delivery],
    expected: &HashMap<String, Vec<String>>,
) -> usize {
    let mut first: HashMap<String, &Delivery> = HashMap::new();
    let mut order: HashMap<String, Vec<String>> = HashMap::new();
    let mut repeats = 0;
    for delivery in deliveries.iter().filter(|d| (200..300).contains(&d.status)) {
        match first.get(delivery.id()) {
            Some(earlier) => {
                repeats += 1;
                assert_eq!(earlier.body, delivery.body, "a repeat has the same body");
            }
            None => {
                first.insert(delivery.id().to_owned(), delivery);
                order
                    .entry(delivery.connection_id())
                    .or_default()
                    .push(delivery.id().to_owned());
            }
        }
    }
    for (connection, events) in expected {
        assert_eq!(
            order.get(connection),
            Some(events),
            "connection {connection}: delivered first in this order"
        );
    }
    repeats
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set TEST_DATABASE_URL and pass --include-ignored"]
async fn a_replica_killed_while_delivering_loses_no_event_and_another_carries_on_in_order() {
    const CONNECTIONS: usize = 6;
    const CYCLES: usize = 6;
    require_postgres();
    let (_database, url) = TestDatabase::create(false).await;
    let key_dir = tempfile_dir();
    let key_file = key_dir.join("webhook.key");
    std::fs::write(&key_file, "c2l4dGVlbi1ieXRlcy1rZXkhIHNpeHRlZW4tYnl0ZXM=\n").unwrap();
    let key_file = key_file.to_str().unwrap().to_owned();
    // Small pools: tests on other databases of the cluster share its
    // connection slots.
    let args = [
        "--webhook-allow-private-addresses",
        "--webhook-key-file",
        &key_file,
        "--db-max-connections",
        "4",
    ];
    let env = [(
        "CONNECTIONS_WEBHOOK_RETRY_SCHEDULE",
        "100ms,200ms,400ms,800ms,1s,1s,1s,1s",
    )];
    let source = new_org(&url, "Source");
    let destinations: Vec<_> = (0..CONNECTIONS)
        .map(|i| new_org(&url, &format!("Destination {i}")))
        .collect();

    // The first replica takes the endpoint's lease; the second waits.
    let first = Server::start_with(&url, &args, &env).await;
    let receiver = Receiver::start().await;
    let secret =
        WebhookServiceClient::with_interceptor(first.channel.clone(), Bearer::new(&source.key))
            .create_webhook_endpoint(CreateWebhookEndpointRequest {
                url: receiver.url("/"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .secret;
    let mut ids = Vec::new();
    for destination in &destinations {
        let created = first
            .client(&source)
            .create_connection(CreateConnectionRequest {
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
    }
    receiver.wait_for_delivered(CONNECTIONS).await;
    let second = Server::start_with(&url, &args, &env).await;

    // Writers on both replicas; the first is killed half-way.
    let channels = [first.channel.clone(), second.channel.clone()];
    let mut first = Some(first);
    for cycle in 0..CYCLES {
        if cycle == CYCLES / 2 {
            let killed = first.take().unwrap();
            killed.signal("-KILL");
            killed.wait().await;
        }
        let writes = ids
            .iter()
            .zip(&destinations)
            .enumerate()
            .map(|(i, (id, destination))| {
                let channels = channels.clone();
                let source = source.clone();
                let destination = destination.clone();
                let id = id.clone();
                async move {
                    for (s, action) in CYCLE.iter().enumerate() {
                        // Alternate replicas; the killed one's turns go to the other.
                        let replica = if cycle >= CYCLES / 2 { 1 } else { (i + s) % 2 };
                        step(&channels[replica], &source, &destination, *action, &id, "")
                            .await
                            .unwrap_or_else(|status| panic!("cycle {cycle}: {status:?}"));
                    }
                }
            });
        futures::future::join_all(writes).await;
    }

    let mut expected = HashMap::new();
    let mut total = 0;
    for id in &ids {
        let events: Vec<String> = second
            .events(&source, id)
            .await
            .into_iter()
            .map(|e| e.id)
            .collect();
        total += events.len();
        expected.insert(id.clone(), events);
    }
    assert_eq!(total, CONNECTIONS * (1 + 3 * CYCLES));
    // The killed replica's lease ends within 30 s; then the other delivers.
    receiver
        .wait_until(
            Duration::from_secs(60),
            "every event delivered",
            |requests| {
                let delivered: std::collections::HashSet<&str> = requests
                    .iter()
                    .filter(|d| (200..300).contains(&d.status))
                    .map(Delivery::id)
                    .collect();
                delivered.len() == total
            },
        )
        .await;
    let deliveries = receiver.requests();
    assert!(deliveries.iter().all(|d| d.verifies_with(&secret)));
    let repeats = assert_all_once_in_order(&deliveries, &expected);
    println!(
        "webhooks across a SIGKILL: {total} events, {} requests, {repeats} repeats",
        deliveries.len()
    );
    drop(second);
    let _ = std::fs::remove_dir_all(key_dir);
}

#[tokio::test]
async fn a_receiver_down_for_a_while_gets_everything_in_order_once_it_is_back() {
    let mut options = AppOptions::default();
    options.webhooks.retry_schedule =
        connections::domain::webhook::RetrySchedule::parse(&["200ms"; 20].join(",")).unwrap();
    let app = spawn_app_with(options).await;
    let source = app.new_org("Source").await;
    let receiver = Receiver::start().await;
    let down_until = std::time::Instant::now() + Duration::from_secs(2);
    receiver.answer_with(move |_, _| {
        if std::time::Instant::now() < down_until {
            Answer::Status(503, Vec::new())
        } else {
            Answer::Status(200, Vec::new())
        }
    });
    app.webhooks(&source)
        .create_webhook_endpoint(CreateWebhookEndpointRequest {
            url: receiver.url("/"),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut expected = HashMap::new();
    let mut total = 0;
    for i in 0..4 {
        let destination = app.new_org(&format!("Destination {i}")).await;
        let id = app.connect(&source, &destination).await.id;
        app.activate(&destination, &id, "").await.unwrap();
        app.deactivate(&source, &id, "").await.unwrap();
        let events = app.events(&source, &id).await;
        total += events.len();
        expected.insert(id, events.into_iter().map(|e| e.id).collect::<Vec<_>>());
    }
    receiver.wait_for_delivered(total).await;
    let requests = receiver.requests();
    assert!(requests.iter().any(|d| d.status == 503), "it was down");
    assert_all_once_in_order(&requests, &expected);
}

/// A new directory for the test's files.
fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("connections-test-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
