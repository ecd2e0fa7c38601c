//! Data types that change: narrowing at once, widening only with the
//! destination's consent, and the races between them.

use connections::{
    domain::Action,
    proto::{
        CheckAccessRequest, Connection, ConnectionEventType as Event, ConnectionState, DataType,
        UpdateConnectionDataTypesRequest, access_service_client::AccessServiceClient,
    },
};
use tonic::Code;

use crate::support::{
    AppOptions, Bearer, TestApp, TestOrg, assert_error,
    clients::{Asked, take},
    spawn_app, spawn_replicas,
};

const INQUIRY: DataType = DataType::Inquiry;
const ACCOUNT: DataType = DataType::Account;
const TRANSACTION: DataType = DataType::Transaction;
const VERIFICATION: DataType = DataType::Verification;

fn ints(types: &[DataType]) -> Vec<i32> {
    types.iter().map(|t| *t as i32).collect()
}

/// Whether `asker` (a party) hears that `data_type` may flow from `source` to
/// `destination` on `app`, at least as of `token`.
async fn allowed(
    app: &TestApp,
    asker: &TestOrg,
    (source, destination): (&TestOrg, &TestOrg),
    data_type: DataType,
    token: &str,
) -> bool {
    AccessServiceClient::with_interceptor(app.channel.clone(), Bearer::new(&asker.key))
        .check_access(CheckAccessRequest {
            source_organization_id: source.id.clone(),
            destination_organization_id: destination.id.clone(),
            data_type: data_type.into(),
            at_least_change_token: token.to_owned(),
        })
        .await
        .expect("check access")
        .into_inner()
        .allowed
}

/// Takes `action` as `org` with the data types `types` (for an update) and
/// the etag `etag`: the connection and the change token.
async fn change(
    app: &TestApp,
    org: &TestOrg,
    action: Action,
    id: &str,
    types: &[DataType],
    etag: &str,
) -> Result<(Connection, String), tonic::Status> {
    let asked = Asked {
        etag: etag.to_owned(),
        data_types: types.to_vec(),
        reason: "not these".to_owned(),
        ..Asked::default()
    };
    take(&mut app.connections(org), action, id, asked).await
}

/// An ACTIVE connection from `source` to `destination` sharing `types`.
async fn active(
    app: &TestApp,
    source: &TestOrg,
    destination: &TestOrg,
    types: &[DataType],
) -> Connection {
    let created = app.connect(source, destination).await;
    let mut connection = app.activate(destination, &created.id, "").await.unwrap();
    if types != [INQUIRY] {
        // Widened by a proposal and its approval.
        change(
            app,
            source,
            Action::UpdateDataTypes,
            &connection.id,
            types,
            "",
        )
        .await
        .unwrap();
        connection = change(
            app,
            destination,
            Action::ApproveDataTypes,
            &connection.id,
            &[],
            "",
        )
        .await
        .unwrap()
        .0;
    }
    assert_eq!(connection.data_types, ints(types));
    connection
}

#[tokio::test]
async fn an_added_type_flows_only_once_the_destination_approves_it() {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let parties = (&source, &destination);
    let connection = active(&app, &source, &destination, &[INQUIRY]).await;
    let id = &connection.id;

    let (proposed, token) = change(
        &app,
        &source,
        Action::UpdateDataTypes,
        id,
        &[ACCOUNT, INQUIRY, ACCOUNT],
        &connection.etag,
    )
    .await
    .unwrap();
    assert_eq!(proposed.state(), ConnectionState::Active);
    assert_eq!(proposed.data_types, ints(&[INQUIRY]));
    assert_eq!(proposed.pending_data_types, ints(&[ACCOUNT]));
    assert!(!allowed(&app, &destination, parties, ACCOUNT, &token).await);
    assert!(allowed(&app, &source, parties, INQUIRY, &token).await);

    let (approved, token) = change(
        &app,
        &destination,
        Action::ApproveDataTypes,
        id,
        &[],
        &proposed.etag,
    )
    .await
    .unwrap();
    assert_eq!(approved.data_types, ints(&[INQUIRY, ACCOUNT]));
    assert!(approved.pending_data_types.is_empty());
    assert!(allowed(&app, &destination, parties, ACCOUNT, &token).await);

    // Both changes are in the history, each with the sets before and after.
    let events = app.events(&source, id).await;
    let [.., proposal, approval] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert_eq!(proposal.r#type(), Event::DataTypesProposed);
    assert_eq!(
        (proposal.from_state(), proposal.to_state()),
        (ConnectionState::Active, ConnectionState::Active)
    );
    assert_eq!(
        (
            &proposal.previous_data_types,
            &proposal.previous_pending_data_types,
            &proposal.data_types,
            &proposal.pending_data_types,
        ),
        (
            &ints(&[INQUIRY]),
            &vec![],
            &ints(&[INQUIRY]),
            &ints(&[ACCOUNT])
        )
    );
    assert_eq!(proposal.actor_organization_id, source.id);
    assert_eq!(approval.r#type(), Event::DataTypesApproved);
    assert_eq!(
        (
            &approval.previous_data_types,
            &approval.previous_pending_data_types,
            &approval.data_types,
            &approval.pending_data_types,
        ),
        (
            &ints(&[INQUIRY]),
            &ints(&[ACCOUNT]),
            &ints(&[INQUIRY, ACCOUNT]),
            &vec![]
        )
    );
    assert_eq!(approval.actor_organization_id, destination.id);
}

#[tokio::test]
async fn a_removed_type_is_denied_from_the_changes_token_on_on_every_replica() {
    let replicas = spawn_replicas(2, AppOptions::default()).await;
    let (writer, other) = (&replicas[0], &replicas[1]);
    let (source, destination) = (writer.new_org("S").await, writer.new_org("D").await);
    let parties = (&source, &destination);
    let connection = active(writer, &source, &destination, &[INQUIRY, ACCOUNT]).await;

    // Removing a type and adding another: the removal applies at once.
    let (changed, token) = change(
        writer,
        &source,
        Action::UpdateDataTypes,
        &connection.id,
        &[ACCOUNT, TRANSACTION],
        "",
    )
    .await
    .unwrap();
    assert_eq!(changed.data_types, ints(&[ACCOUNT]));
    assert_eq!(changed.pending_data_types, ints(&[TRANSACTION]));
    for app in [writer, other] {
        assert!(!allowed(app, &destination, parties, INQUIRY, &token).await);
        assert!(!allowed(app, &destination, parties, TRANSACTION, &token).await);
        assert!(allowed(app, &destination, parties, ACCOUNT, &token).await);
    }
}

#[tokio::test]
async fn a_destination_may_only_narrow_and_each_refusal_names_its_reason() {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let connection = active(&app, &source, &destination, &[INQUIRY, ACCOUNT]).await;
    let id = &connection.id;
    let refused =
        |result: Result<(Connection, String), tonic::Status>| result.expect_err("refused").clone();

    let cases = [
        (
            &destination,
            Action::UpdateDataTypes,
            vec![INQUIRY, TRANSACTION],
            Code::PermissionDenied,
            "CALLER_NOT_SOURCE",
        ),
        (
            &source,
            Action::ApproveDataTypes,
            vec![],
            Code::PermissionDenied,
            "CALLER_NOT_DESTINATION",
        ),
        (
            &destination,
            Action::ApproveDataTypes,
            vec![],
            Code::FailedPrecondition,
            "NO_PENDING_DATA_TYPES",
        ),
        (
            &destination,
            Action::DeclineDataTypes,
            vec![],
            Code::FailedPrecondition,
            "NO_PENDING_DATA_TYPES",
        ),
        (
            &source,
            Action::UpdateDataTypes,
            vec![ACCOUNT, INQUIRY],
            Code::FailedPrecondition,
            "DATA_TYPES_UNCHANGED",
        ),
        (
            &source,
            Action::UpdateDataTypes,
            vec![TRANSACTION],
            Code::FailedPrecondition,
            "NO_DATA_TYPES_LEFT",
        ),
    ];
    for (org, action, types, code, reason) in cases {
        let status = refused(change(&app, org, action, id, &types, "").await);
        assert_error(&status, code, reason);
        assert!(
            status
                .message()
                .ends_with(&format!("(ERROR_REASON_{reason})"))
        );
    }
    let status = refused(change(&app, &source, Action::UpdateDataTypes, id, &[], "").await);
    assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(
        app.events(&source, id).await.len(),
        4,
        "a refusal records nothing"
    );

    // A proposal waits while the destination narrows, then declines it.
    let (proposed, _) = change(
        &app,
        &source,
        Action::UpdateDataTypes,
        id,
        &[INQUIRY, ACCOUNT, TRANSACTION],
        "",
    )
    .await
    .unwrap();
    let (narrowed, _) = change(
        &app,
        &destination,
        Action::UpdateDataTypes,
        id,
        &[ACCOUNT],
        "",
    )
    .await
    .unwrap();
    assert_eq!(
        (&narrowed.data_types, &narrowed.pending_data_types),
        (&ints(&[ACCOUNT]), &ints(&[TRANSACTION]))
    );
    let status = refused(
        change(
            &app,
            &destination,
            Action::ApproveDataTypes,
            id,
            &[],
            &proposed.etag,
        )
        .await,
    );
    assert_error(&status, Code::Aborted, "ETAG_MISMATCH");
    let (declined, _) = change(
        &app,
        &destination,
        Action::DeclineDataTypes,
        id,
        &[],
        &narrowed.etag,
    )
    .await
    .unwrap();
    assert_eq!(
        (&declined.data_types, &declined.pending_data_types),
        (&ints(&[ACCOUNT]), &vec![])
    );
    let events = app.events(&destination, id).await;
    let [.., narrowing, decline] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert_eq!(narrowing.r#type(), Event::DataTypesChanged);
    assert_eq!(narrowing.actor_organization_id, destination.id);
    assert_eq!(decline.r#type(), Event::DataTypesDeclined);
    assert_eq!(decline.reason, "not these");
    assert_eq!(decline.previous_pending_data_types, ints(&[TRANSACTION]));

    // A deactivation drops a waiting proposal; while INACTIVE the source
    // sets the types the next activation consents to, and the destination
    // may not narrow.
    change(
        &app,
        &source,
        Action::UpdateDataTypes,
        id,
        &[ACCOUNT, TRANSACTION],
        "",
    )
    .await
    .unwrap();
    let inactive = app.deactivate(&source, id, "").await.unwrap();
    assert!(inactive.pending_data_types.is_empty());
    let status = refused(
        change(
            &app,
            &destination,
            Action::UpdateDataTypes,
            id,
            &[ACCOUNT],
            "",
        )
        .await,
    );
    assert_error(
        &status,
        Code::FailedPrecondition,
        "INVALID_STATE_TRANSITION",
    );
    let (replaced, _) = change(
        &app,
        &source,
        Action::UpdateDataTypes,
        id,
        &[VERIFICATION],
        "",
    )
    .await
    .unwrap();
    assert_eq!(replaced.state(), ConnectionState::Inactive);
    assert_eq!(replaced.data_types, ints(&[VERIFICATION]));
    app.reactivate(&source, id, "").await.unwrap();
    let again = app.activate(&destination, id, "").await.unwrap();
    assert_eq!(again.data_types, ints(&[VERIFICATION]));
    assert!(again.pending_data_types.is_empty());
}

#[tokio::test]
async fn a_retried_update_returns_its_first_response_and_other_types_under_its_request_id_are_refused()
 {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let connection = active(&app, &source, &destination, &[INQUIRY]).await;
    let update = |types: Vec<DataType>| UpdateConnectionDataTypesRequest {
        connection_id: connection.id.clone(),
        data_types: ints(&types),
        request_id: "widen-1".to_owned(),
        etag: String::new(),
    };
    let mut client = app.connections(&source);
    let first = client
        .update_connection_data_types(update(vec![INQUIRY, ACCOUNT]))
        .await
        .unwrap()
        .into_inner();
    let retried = client
        .update_connection_data_types(update(vec![ACCOUNT, INQUIRY]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried, first);
    let status = client
        .update_connection_data_types(update(vec![INQUIRY, TRANSACTION]))
        .await
        .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "REQUEST_ID_REUSED");
    assert_eq!(app.events(&source, &connection.id).await.len(), 3);
}

/// The destination approves the proposal it read while the source replaces
/// it with another, both conditional on the version they read: exactly one
/// wins, and an approval never allows types the destination did not see.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_approval_racing_a_second_proposal_never_approves_what_the_destination_did_not_see() {
    const ROUNDS: usize = 30;
    let replicas = spawn_replicas(2, AppOptions::default()).await;
    let (source, destination) = (
        replicas[0].new_org("S").await,
        replicas[1].new_org("D").await,
    );
    let connection = active(&replicas[0], &source, &destination, &[INQUIRY]).await;
    let id = connection.id.clone();
    let (mut approvals, mut proposals) = (0, 0);
    for round in 0..ROUNDS {
        let (read, _) = change(
            &replicas[0],
            &source,
            Action::UpdateDataTypes,
            &id,
            &[INQUIRY, ACCOUNT],
            "",
        )
        .await
        .unwrap();
        let (approve, propose) = tokio::join!(
            change(
                &replicas[1],
                &destination,
                Action::ApproveDataTypes,
                &id,
                &[],
                &read.etag
            ),
            change(
                &replicas[round % 2],
                &source,
                Action::UpdateDataTypes,
                &id,
                &[INQUIRY, TRANSACTION],
                &read.etag
            ),
        );
        let now = match (approve, propose) {
            (Ok((approved, _)), Err(status)) => {
                assert_error(&status, Code::Aborted, "ETAG_MISMATCH");
                assert_eq!(
                    approved.data_types,
                    ints(&[INQUIRY, ACCOUNT]),
                    "round {round}"
                );
                approvals += 1;
                // Back to inquiries alone for the next round.
                change(
                    &replicas[0],
                    &source,
                    Action::UpdateDataTypes,
                    &id,
                    &[INQUIRY],
                    "",
                )
                .await
                .unwrap()
                .0
            }
            (Err(status), Ok((proposed, _))) => {
                assert_error(&status, Code::Aborted, "ETAG_MISMATCH");
                assert_eq!(
                    proposed.pending_data_types,
                    ints(&[TRANSACTION]),
                    "round {round}"
                );
                proposals += 1;
                change(
                    &replicas[1],
                    &destination,
                    Action::DeclineDataTypes,
                    &id,
                    &[],
                    "",
                )
                .await
                .unwrap()
                .0
            }
            other => panic!("round {round}: exactly one must win: {other:?}"),
        };
        assert_eq!(
            (now.data_types, now.pending_data_types),
            (ints(&[INQUIRY]), vec![]),
            "round {round}"
        );
    }
    // Every approved type was the one proposed before it, in the history too.
    let events = replicas[0].events(&source, &id).await;
    for pair in events.windows(2) {
        if pair[1].r#type() == Event::DataTypesApproved {
            assert_eq!(pair[0].r#type(), Event::DataTypesProposed);
            assert_eq!(
                pair[1].previous_pending_data_types,
                pair[0].pending_data_types
            );
            assert_eq!(pair[1].previous_pending_data_types, ints(&[ACCOUNT]));
        }
    }
    println!(
        "race: {ROUNDS} rounds, the approval won {approvals}, the second proposal {proposals}"
    );
    assert_eq!(approvals + proposals, ROUNDS);
}
