//! The Prometheus endpoint.

use connections::proto::{GetConnectionRequest, GetOrganizationRequest};
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

use crate::helpers::{AppOptions, TestApp, spawn_app, spawn_app_with, unknown_id};

async fn scrape(app: &TestApp) -> String {
    let addr = app.metrics_addr.expect("metrics enabled");
    let response = Client::builder(TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>()
        .get(format!("http://{addr}/metrics").parse().unwrap())
        .await
        .expect("scrape");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

/// The value of the sample named exactly `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().unwrap())
        })
}

#[tokio::test]
async fn metrics_count_calls_by_method_and_code_and_connections_by_state() {
    let app = spawn_app_with(AppOptions {
        metrics: true,
        ..AppOptions::default()
    })
    .await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let mut organizations = app.organizations(&source);
    for _ in 0..3 {
        organizations
            .get_organization(GetOrganizationRequest::default())
            .await
            .unwrap();
    }
    let mut connections = app.connections(&source);
    for _ in 0..2 {
        connections
            .get_connection(GetConnectionRequest {
                connection_id: unknown_id(),
            })
            .await
            .unwrap_err();
    }
    let id = app.connect(&source, &destination).await.id;
    app.activate(&destination, &id, "").await.unwrap();
    let other = app.new_org("O").await;
    app.connect(&source, &other).await;

    let text = scrape(&app).await;
    let get_org = "/connections.v1.OrganizationService/GetOrganization";
    let get_connection = "/connections.v1.ConnectionService/GetConnection";
    assert_eq!(
        sample(
            &text,
            &format!(r#"grpc_server_handled_total{{method="{get_org}",code="Ok"}}"#)
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!(r#"grpc_server_handled_total{{method="{get_connection}",code="NotFound"}}"#)
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!(r#"grpc_server_handling_seconds_count{{method="{get_org}"}}"#)
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"connections{state="ACTIVE"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"connections{state="PENDING"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"connections{state="INACTIVE"}"#),
        Some(0.0),
        "{text}"
    );
    assert!(
        sample(&text, r#"db_pool_connections{state="idle"}"#).is_some(),
        "{text}"
    );
    assert!(
        sample(&text, r#"db_pool_connections{state="in_use"}"#).is_some(),
        "{text}"
    );
}

#[tokio::test]
async fn metrics_are_off_by_default() {
    let app = spawn_app().await;
    assert!(app.metrics_addr.is_none());
}
