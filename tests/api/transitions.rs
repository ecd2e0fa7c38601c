use connections::proto::{
    ActivateConnectionRequest, Connection, ConnectionState, DeactivateConnectionRequest,
    GetConnectionRequest, ListConnectionEventsRequest, ReactivateConnectionRequest,
};
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{TestApp, TestOrg, assert_error, spawn_app, violated_fields};

async fn activate(
    app: &TestApp,
    org: &TestOrg,
    id: &str,
    etag: &str,
) -> Result<Connection, tonic::Status> {
    app.connections(org)
        .activate_connection(ActivateConnectionRequest {
            connection_id: id.to_owned(),
            etag: etag.to_owned(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().connection.unwrap())
}

async fn deactivate(
    app: &TestApp,
    org: &TestOrg,
    id: &str,
    etag: &str,
) -> Result<Connection, tonic::Status> {
    app.connections(org)
        .deactivate_connection(DeactivateConnectionRequest {
            connection_id: id.to_owned(),
            etag: etag.to_owned(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().connection.unwrap())
}

async fn reactivate(
    app: &TestApp,
    org: &TestOrg,
    id: &str,
    etag: &str,
) -> Result<Connection, tonic::Status> {
    app.connections(org)
        .reactivate_connection(ReactivateConnectionRequest {
            connection_id: id.to_owned(),
            etag: etag.to_owned(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().connection.unwrap())
}

async fn get(app: &TestApp, org: &TestOrg, id: &str) -> Connection {
    app.connections(org)
        .get_connection(GetConnectionRequest {
            connection_id: id.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap()
}

async fn event_count(app: &TestApp, org: &TestOrg, id: &str) -> usize {
    app.connections(org)
        .list_connection_events(ListConnectionEventsRequest {
            connection_id: id.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events
        .len()
}

fn current_state(status: &tonic::Status) -> String {
    status
        .get_details_error_info()
        .and_then(|info| info.metadata.get("current_state").cloned())
        .unwrap_or_default()
}

#[tokio::test]
async fn source_cannot_activate_permission_denied_caller_not_destination() {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let connection = app.connect(&source, &destination).await;
    let status = activate(&app, &source, &connection.id, "")
        .await
        .unwrap_err();
    assert_error(&status, Code::PermissionDenied, "CALLER_NOT_DESTINATION");
    assert_eq!(get(&app, &source, &connection.id).await, connection);
}

#[tokio::test]
async fn destination_cannot_reactivate_permission_denied_caller_not_source() {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let connection = app.connect(&source, &destination).await;
    deactivate(&app, &destination, &connection.id, "")
        .await
        .unwrap();
    let status = reactivate(&app, &destination, &connection.id, "")
        .await
        .unwrap_err();
    assert_error(&status, Code::PermissionDenied, "CALLER_NOT_SOURCE");
}

#[tokio::test]
async fn either_party_can_deactivate() {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let connection = app.connect(&source, &destination).await;
    let by_destination = deactivate(&app, &destination, &connection.id, "")
        .await
        .unwrap();
    assert_eq!(by_destination.state(), ConnectionState::Inactive);
    assert_eq!(
        by_destination.deactivated_by(),
        connections::proto::ConnectionRole::Destination
    );
    reactivate(&app, &source, &connection.id, "").await.unwrap();
    activate(&app, &destination, &connection.id, "")
        .await
        .unwrap();
    let by_source = deactivate(&app, &source, &connection.id, "").await.unwrap();
    assert_eq!(
        by_source.deactivated_by(),
        connections::proto::ConnectionRole::Source
    );
}

#[tokio::test]
async fn transitions_the_state_does_not_allow_are_failed_precondition_with_current_state() {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let connection = app.connect(&source, &destination).await;
    let id = connection.id.as_str();

    // PENDING: reactivate is not allowed.
    let status = reactivate(&app, &source, id, "").await.unwrap_err();
    assert_error(
        &status,
        Code::FailedPrecondition,
        "INVALID_STATE_TRANSITION",
    );
    assert_eq!(current_state(&status), "CONNECTION_STATE_PENDING");

    // ACTIVE: activating again is not allowed.
    activate(&app, &destination, id, "").await.unwrap();
    let status = activate(&app, &destination, id, "").await.unwrap_err();
    assert_error(
        &status,
        Code::FailedPrecondition,
        "INVALID_STATE_TRANSITION",
    );
    assert_eq!(current_state(&status), "CONNECTION_STATE_ACTIVE");
    let status = reactivate(&app, &source, id, "").await.unwrap_err();
    assert_eq!(current_state(&status), "CONNECTION_STATE_ACTIVE");

    // INACTIVE: neither activate nor deactivate.
    deactivate(&app, &source, id, "").await.unwrap();
    let status = activate(&app, &destination, id, "").await.unwrap_err();
    assert_error(
        &status,
        Code::FailedPrecondition,
        "INVALID_STATE_TRANSITION",
    );
    assert_eq!(current_state(&status), "CONNECTION_STATE_INACTIVE");
    let status = deactivate(&app, &destination, id, "").await.unwrap_err();
    assert_eq!(current_state(&status), "CONNECTION_STATE_INACTIVE");

    // Refusals append nothing: created, activated, deactivated.
    assert_eq!(event_count(&app, &source, id).await, 3);
}

#[tokio::test]
async fn wrong_role_is_reported_before_state_and_state_before_etag() {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let connection = app.connect(&source, &destination).await;
    let active = activate(&app, &destination, &connection.id, "")
        .await
        .unwrap();

    // Source activating an ACTIVE connection with a stale etag: role first.
    let status = activate(&app, &source, &active.id, &connection.etag)
        .await
        .unwrap_err();
    assert_error(&status, Code::PermissionDenied, "CALLER_NOT_DESTINATION");
    // Destination doing the same: state before etag.
    let status = activate(&app, &destination, &active.id, &connection.etag)
        .await
        .unwrap_err();
    assert_error(
        &status,
        Code::FailedPrecondition,
        "INVALID_STATE_TRANSITION",
    );
}

#[tokio::test]
async fn stale_etag_is_aborted_and_changes_nothing() {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let created = app.connect(&source, &destination).await;
    let active = activate(&app, &destination, &created.id, &created.etag)
        .await
        .unwrap();

    let status = deactivate(&app, &source, &created.id, &created.etag)
        .await
        .unwrap_err();
    assert_error(&status, Code::Aborted, "ETAG_MISMATCH");
    let status = deactivate(&app, &source, &created.id, "garbage")
        .await
        .unwrap_err();
    assert_error(&status, Code::Aborted, "ETAG_MISMATCH");
    assert_eq!(get(&app, &source, &created.id).await, active);
    assert_eq!(event_count(&app, &source, &created.id).await, 2);

    let inactive = deactivate(&app, &source, &created.id, &active.etag)
        .await
        .unwrap();
    assert_eq!(inactive.state(), ConnectionState::Inactive);
}

#[tokio::test]
async fn deactivation_reason_is_bounded_to_500_characters() {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let connection = app.connect(&source, &destination).await;
    let mut client = app.connections(&source);
    let status = client
        .deactivate_connection(DeactivateConnectionRequest {
            connection_id: connection.id.clone(),
            reason: "x".repeat(501),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(violated_fields(&status), ["reason"]);

    let reason = "ü".repeat(500);
    let inactive = client
        .deactivate_connection(DeactivateConnectionRequest {
            connection_id: connection.id.clone(),
            reason: reason.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    assert_eq!(inactive.deactivation_reason, reason);
}

#[tokio::test]
async fn malformed_connection_id_is_invalid_argument() {
    let app = spawn_app().await;
    let source = app.new_org("S").await;
    for id in ["", "nope", "0190f3c47a2b7c3d8e4f5a6b7c8d9e0f"] {
        let status = activate(&app, &source, id, "").await.unwrap_err();
        assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
        assert_eq!(violated_fields(&status), ["connection_id"]);
    }
}

#[tokio::test]
async fn concurrent_activations_apply_once() {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let connection = app.connect(&source, &destination).await;
    let calls = (0..10).map(|_| {
        let mut client = app.connections(&destination);
        let id = connection.id.clone();
        tokio::spawn(async move {
            client
                .activate_connection(ActivateConnectionRequest {
                    connection_id: id,
                    ..Default::default()
                })
                .await
        })
    });
    let mut successes = 0;
    for result in futures::future::join_all(calls).await {
        match result.unwrap() {
            Ok(_) => successes += 1,
            Err(status) => assert!(
                matches!(status.code(), Code::FailedPrecondition | Code::Aborted),
                "{status:?}"
            ),
        }
    }
    assert_eq!(successes, 1);
    assert_eq!(event_count(&app, &source, &connection.id).await, 2);
}
