use std::time::Duration;

use connections::proto::ListConnectionsRequest;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::{TestApp, assert_error, spawn_app};

async fn health(app: &TestApp, service: &str) -> ServingStatus {
    HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .status()
}

/// Polls until the health service reports `want` (bounded).
async fn wait_for_health(app: &TestApp, want: ServingStatus) {
    for _ in 0..100 {
        if health(app, "").await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("health never became {want:?}");
}

#[tokio::test]
async fn health_reports_serving_for_the_server_and_each_service() {
    let app = spawn_app().await;
    wait_for_health(&app, ServingStatus::Serving).await;
    for service in [
        "connections.v1.ConnectionService",
        "connections.v1.OrganizationService",
        "connections.v1.AdminService",
    ] {
        assert_eq!(
            health(&app, service).await,
            ServingStatus::Serving,
            "{service}"
        );
    }
}

#[tokio::test]
async fn when_the_database_is_unreachable_health_is_not_serving_and_calls_are_unavailable() {
    let app = spawn_app().await;
    let org = app.new_org("A").await;
    wait_for_health(&app, ServingStatus::Serving).await;

    // Closing the server's pools makes every database call fail as in an outage.
    app.server_db.clone().close().await.unwrap();
    app.server_health_db.clone().close().await.unwrap();
    app.server_reader.close().await;

    wait_for_health(&app, ServingStatus::NotServing).await;
    let status = app
        .connections(&org)
        .list_connections(ListConnectionsRequest::default())
        .await
        .unwrap_err();
    assert_error(&status, Code::Unavailable, "DATABASE_UNAVAILABLE");
    assert!(!status.message().to_lowercase().contains("pool"));
}

#[tokio::test]
async fn reflection_v1_lists_every_service() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let app = spawn_app().await;
    let mut client = ServerReflectionClient::new(app.channel.clone());
    let requests = tokio_stream::iter([
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "connections.v1.ConnectionService".into(),
            )),
        },
    ]);
    let mut responses = client
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();

    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "connections.v1.ConnectionService",
        "connections.v1.OrganizationService",
        "connections.v1.AdminService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }

    let Some(MessageResponse::FileDescriptorResponse(files)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected file descriptors");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

#[tokio::test]
async fn reflection_v1alpha_lists_every_service() {
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let app = spawn_app().await;
    let mut client = ServerReflectionClient::new(app.channel.clone());
    let requests = tokio_stream::iter([ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    }]);
    let mut responses = client
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "connections.v1.ConnectionService")
    );
}

#[tokio::test]
async fn graceful_stop_finishes_and_refuses_new_connections() {
    let app = spawn_app().await;
    let addr = app.addr;
    app.stop().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
