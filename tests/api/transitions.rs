use connections::proto::{ActivateConnectionRequest, ConnectionState, DeactivateConnectionRequest};
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{assert_error, spawn_app, violated_fields};

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
    let status = app.activate(&source, &connection.id, "").await.unwrap_err();
    assert_error(&status, Code::PermissionDenied, "CALLER_NOT_DESTINATION");
    assert_eq!(app.get(&source, &connection.id).await, connection);
}

#[tokio::test]
async fn destination_cannot_reactivate_permission_denied_caller_not_source() {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let connection = app.connect(&source, &destination).await;
    app.deactivate(&destination, &connection.id, "")
        .await
        .unwrap();
    let status = app
        .reactivate(&destination, &connection.id, "")
        .await
        .unwrap_err();
    assert_error(&status, Code::PermissionDenied, "CALLER_NOT_SOURCE");
}

#[tokio::test]
async fn either_party_can_deactivate() {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let connection = app.connect(&source, &destination).await;
    let by_destination = app
        .deactivate(&destination, &connection.id, "")
        .await
        .unwrap();
    assert_eq!(by_destination.state(), ConnectionState::Inactive);
    assert_eq!(
        by_destination.deactivated_by(),
        connections::proto::ConnectionRole::Destination
    );
    app.reactivate(&source, &connection.id, "").await.unwrap();
    app.activate(&destination, &connection.id, "")
        .await
        .unwrap();
    let by_source = app.deactivate(&source, &connection.id, "").await.unwrap();
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
    let status = app.reactivate(&source, id, "").await.unwrap_err();
    assert_error(
        &status,
        Code::FailedPrecondition,
        "INVALID_STATE_TRANSITION",
    );
    assert_eq!(current_state(&status), "CONNECTION_STATE_PENDING");

    // ACTIVE: activating again is not allowed.
    app.activate(&destination, id, "").await.unwrap();
    let status = app.activate(&destination, id, "").await.unwrap_err();
    assert_error(
        &status,
        Code::FailedPrecondition,
        "INVALID_STATE_TRANSITION",
    );
    assert_eq!(current_state(&status), "CONNECTION_STATE_ACTIVE");
    let status = app.reactivate(&source, id, "").await.unwrap_err();
    assert_error(
        &status,
        Code::FailedPrecondition,
        "INVALID_STATE_TRANSITION",
    );
    assert_eq!(current_state(&status), "CONNECTION_STATE_ACTIVE");

    // INACTIVE: neither activate nor deactivate.
    app.deactivate(&source, id, "").await.unwrap();
    let status = app.activate(&destination, id, "").await.unwrap_err();
    assert_error(
        &status,
        Code::FailedPrecondition,
        "INVALID_STATE_TRANSITION",
    );
    assert_eq!(current_state(&status), "CONNECTION_STATE_INACTIVE");
    let status = app.deactivate(&destination, id, "").await.unwrap_err();
    assert_error(
        &status,
        Code::FailedPrecondition,
        "INVALID_STATE_TRANSITION",
    );
    assert_eq!(current_state(&status), "CONNECTION_STATE_INACTIVE");

    // Refusals append nothing: created, activated, deactivated.
    assert_eq!(app.events(&source, id).await.len(), 3);
}

#[tokio::test]
async fn wrong_role_is_reported_before_state_and_state_before_etag() {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let connection = app.connect(&source, &destination).await;
    let active = app
        .activate(&destination, &connection.id, "")
        .await
        .unwrap();

    // Source activating an ACTIVE connection with a stale etag: role first.
    let status = app
        .activate(&source, &active.id, &connection.etag)
        .await
        .unwrap_err();
    assert_error(&status, Code::PermissionDenied, "CALLER_NOT_DESTINATION");
    // Destination doing the same: state before etag.
    let status = app
        .activate(&destination, &active.id, &connection.etag)
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
    let active = app
        .activate(&destination, &created.id, &created.etag)
        .await
        .unwrap();

    let status = app
        .deactivate(&source, &created.id, &created.etag)
        .await
        .unwrap_err();
    assert_error(&status, Code::Aborted, "ETAG_MISMATCH");
    let status = app
        .deactivate(&source, &created.id, "garbage")
        .await
        .unwrap_err();
    assert_error(&status, Code::Aborted, "ETAG_MISMATCH");
    assert_eq!(app.get(&source, &created.id).await, active);
    assert_eq!(app.events(&source, &created.id).await.len(), 2);

    let inactive = app
        .deactivate(&source, &created.id, &active.etag)
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
        let status = app.activate(&source, id, "").await.unwrap_err();
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
            Ok(activated) => {
                let activated = activated.into_inner().connection.unwrap();
                assert_eq!(activated.state(), ConnectionState::Active);
                successes += 1;
            }
            // Read after the winner committed: the state forbids it.
            Err(status) if status.code() == Code::FailedPrecondition => {
                assert_error(
                    &status,
                    Code::FailedPrecondition,
                    "INVALID_STATE_TRANSITION",
                );
                assert_eq!(current_state(&status), "CONNECTION_STATE_ACTIVE");
            }
            // Read before the winner committed: its guarded update lost.
            Err(status) => assert_error(&status, Code::Aborted, "CONCURRENT_MODIFICATION"),
        }
    }
    assert_eq!(successes, 1);
    assert_eq!(app.events(&source, &connection.id).await.len(), 2);
}
