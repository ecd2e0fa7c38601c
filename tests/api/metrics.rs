//! The Prometheus endpoint.

use std::time::{Duration, Instant};

use connections::proto::{CreateOrganizationRequest, GetConnectionRequest, GetOrganizationRequest};
use futures::future::join_all;
use tonic::Code;

use crate::support::{
    AppOptions, assert_error, metric_sample, spawn_app, spawn_app_with, unknown_id, violated_fields,
};

/// `grpc_server_handled_total` for `method` and `code` (e.g. `"NotFound"`).
fn handled(text: &str, method: &str, code: &str) -> Option<f64> {
    metric_sample(
        text,
        &format!(r#"grpc_server_handled_total{{method="{method}",code="{code}"}}"#),
    )
}

/// Every count differs from every other one it could be confused with: a
/// metric that swapped two states, two codes or two methods would report a
/// wrong number rather than the same one under another label.
#[tokio::test]
async fn metrics_count_calls_by_method_and_code_and_connections_by_state() {
    let app = spawn_app_with(AppOptions {
        metrics: true,
        ..AppOptions::default()
    })
    .await;
    let source = app.new_org("S").await;
    let mut destinations = Vec::new();
    for name in ["D1", "D2", "D3", "D4", "D5", "D6"] {
        destinations.push(app.new_org(name).await);
    }
    // One more organization, without a key: 8 CreateOrganization, 7 CreateApiKey.
    app.admin()
        .create_organization(CreateOrganizationRequest {
            display_name: "no key".to_owned(),
        })
        .await
        .unwrap();

    // GetOrganization: 3 OK.
    let mut organizations = app.organizations(&source);
    for _ in 0..3 {
        organizations
            .get_organization(GetOrganizationRequest::default())
            .await
            .unwrap();
    }

    // CreateConnection: 6 OK. ActivateConnection: 4 OK, then 1
    // DeactivateConnection: 3 ACTIVE, 2 PENDING, 1 INACTIVE.
    let mut ids = Vec::new();
    for destination in &destinations {
        ids.push(app.connect(&source, destination).await.id);
    }
    for (destination, id) in destinations.iter().zip(&ids).take(4) {
        app.activate(destination, id, "").await.unwrap();
    }
    app.deactivate(&source, &ids[3], "").await.unwrap();

    // GetConnection: 5 OK, 2 NOT_FOUND, 1 INVALID_ARGUMENT.
    let mut connections = app.connections(&source);
    for id in &ids[..5] {
        connections
            .get_connection(GetConnectionRequest {
                connection_id: id.clone(),
            })
            .await
            .unwrap();
    }
    for _ in 0..2 {
        let status = connections
            .get_connection(GetConnectionRequest {
                connection_id: unknown_id(),
            })
            .await
            .unwrap_err();
        assert_error(&status, Code::NotFound, "CONNECTION_NOT_FOUND");
    }
    let status = connections
        .get_connection(GetConnectionRequest {
            connection_id: "nope".to_owned(),
        })
        .await
        .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(violated_fields(&status), ["connection_id"]);

    let text = app.metrics_text().await;
    let service = "/connections.v1.ConnectionService";
    let get_org = "/connections.v1.OrganizationService/GetOrganization";
    let get_connection = &format!("{service}/GetConnection");
    for (method, code, count) in [
        (get_org, "Ok", 3.0),
        (get_connection, "Ok", 5.0),
        (get_connection, "NotFound", 2.0),
        (get_connection, "InvalidArgument", 1.0),
        (&format!("{service}/CreateConnection"), "Ok", 6.0),
        (&format!("{service}/ActivateConnection"), "Ok", 4.0),
        (&format!("{service}/DeactivateConnection"), "Ok", 1.0),
        ("/connections.v1.AdminService/CreateOrganization", "Ok", 8.0),
        ("/connections.v1.AdminService/CreateApiKey", "Ok", 7.0),
    ] {
        assert_eq!(
            handled(&text, method, code),
            Some(count),
            "{method} {code}: {text}"
        );
    }
    // No call ended with a code it did not end with.
    assert_eq!(handled(&text, get_org, "NotFound"), None, "{text}");
    assert_eq!(handled(&text, get_connection, "Internal"), None, "{text}");
    for (method, count) in [(get_org, 3.0), (get_connection, 8.0)] {
        assert_eq!(
            metric_sample(
                &text,
                &format!(r#"grpc_server_handling_seconds_count{{method="{method}"}}"#)
            ),
            Some(count),
            "{method}: {text}"
        );
    }
    for (state, count) in [("ACTIVE", 3.0), ("PENDING", 2.0), ("INACTIVE", 1.0)] {
        assert_eq!(
            metric_sample(&text, &format!(r#"connections{{state="{state}"}}"#)),
            Some(count),
            "{state}: {text}"
        );
    }
    assert!(
        metric_sample(&text, r#"db_pool_connections{state="idle"}"#).is_some(),
        "{text}"
    );
    assert!(
        metric_sample(&text, r#"db_pool_connections{state="in_use"}"#).is_some(),
        "{text}"
    );
}

#[tokio::test]
async fn metrics_are_off_by_default() {
    let app = spawn_app().await;
    assert!(app.metrics_addr.is_none());
}

#[tokio::test]
async fn concurrent_scrapes_share_one_count_of_connections_per_interval_and_writes_go_on() {
    let interval = Duration::from_secs(3);
    let app = spawn_app_with(AppOptions {
        metrics: true,
        connection_count_interval: interval,
        ..AppOptions::default()
    })
    .await;
    let source = app.new_org("S").await;
    let mut destinations = Vec::new();
    for i in 0..6 {
        destinations.push(app.new_org(&format!("D{i}")).await);
    }
    let pending = |text: &str| metric_sample(text, r#"connections{state="PENDING"}"#);
    app.connect(&source, &destinations[0]).await;
    // The count is taken between these two instants.
    let counted = Instant::now();
    assert_eq!(pending(&app.metrics_text().await), Some(1.0));
    let counted_by = Instant::now();

    // 20 scrapers scrape without pause while the source creates 5 more
    // connections: every write succeeds, and every scrape that ended within
    // the interval shows the first count, so none of them asked the database.
    let writes_done = std::sync::atomic::AtomicBool::new(false);
    let scraper = || async {
        let mut seen = Vec::new();
        while !writes_done.load(std::sync::atomic::Ordering::Relaxed) {
            let text = app.metrics_text().await;
            seen.push((counted.elapsed(), pending(&text)));
        }
        seen
    };
    let writer = async {
        for destination in &destinations[1..] {
            app.connect(&source, destination).await;
        }
        writes_done.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let (seen, ()) = tokio::join!(join_all((0..20).map(|_| scraper())), writer);
    let seen: Vec<_> = seen.into_iter().flatten().collect();
    let within: Vec<_> = seen.iter().filter(|(at, _)| *at < interval).collect();
    assert!(
        within.len() >= 20,
        "{} scrapes within the interval",
        within.len()
    );
    for (at, count) in &within {
        assert_eq!(
            *count,
            Some(1.0),
            "a scrape {at:?} after the count saw a new one"
        );
    }

    // Once the interval has passed, the next scrape counts again.
    tokio::time::sleep(interval.saturating_sub(counted_by.elapsed())).await;
    assert_eq!(pending(&app.metrics_text().await), Some(6.0));
}

#[tokio::test]
async fn metrics_show_open_watches_events_sent_and_the_access_index() {
    let app = spawn_app_with(AppOptions {
        metrics: true,
        ..AppOptions::default()
    })
    .await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let id = app.connect(&source, &destination).await.id;
    let mut stream = app
        .connections(&source)
        .watch_connection_events(connections::proto::WatchConnectionEventsRequest {
            from_beginning: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    app.activate(&destination, &id, "").await.unwrap();
    let mut events = 0;
    while events < 2 {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        events += usize::from(message.event.is_some());
    }
    // The index applies the activation (the check below waits for it).
    let text = loop {
        let text = app.metrics_text().await;
        if metric_sample(&text, "access_index_last_change_age_seconds").is_some_and(|age| age > 0.0)
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(metric_sample(&text, "watch_streams"), Some(1.0), "{text}");
    assert_eq!(
        metric_sample(&text, "watch_events_sent_total"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric_sample(&text, "access_index_connections"),
        Some(1.0),
        "{text}"
    );
    assert!(
        metric_sample(&text, "access_index_lag").is_some_and(|lag| lag >= 0.0),
        "{text}"
    );
    drop(stream);
}
