//! Three organizations: a source, a destination and an outsider.

use connections::proto::{
    ConnectionState, DataType, GetConnectionRequest, ListConnectionEventsRequest,
    ListConnectionsRequest, UpdateConnectionDataTypesRequest,
};
use tonic::Code;

use crate::support::{
    TestApp, TestOrg, assert_error,
    rpcs::{self, Encoded},
    spawn_app, unknown_id,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Source,
    Destination,
    Outsider,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Activate,
    Deactivate,
    Reactivate,
}

async fn call(
    app: &TestApp,
    org: &TestOrg,
    call: Call,
    id: &str,
) -> Result<ConnectionState, tonic::Status> {
    let connection = match call {
        Call::Activate => app.activate(org, id, "").await?,
        Call::Deactivate => app.deactivate(org, id, "").await?,
        Call::Reactivate => app.reactivate(org, id, "").await?,
    };
    Ok(connection.state())
}

/// Brings a fresh connection into `state` through the API.
async fn connection_in(
    app: &TestApp,
    source: &TestOrg,
    destination: &TestOrg,
    state: ConnectionState,
) -> String {
    let id = app.connect(source, destination).await.id;
    match state {
        ConnectionState::Pending => {}
        ConnectionState::Active => {
            call(app, destination, Call::Activate, &id).await.unwrap();
        }
        ConnectionState::Inactive => {
            call(app, source, Call::Deactivate, &id).await.unwrap();
        }
        ConnectionState::Unspecified => unreachable!(),
    }
    id
}

/// What a call should give: the new state, or a status code and reason.
type Outcome = Result<ConnectionState, (Code, &'static str)>;
type Case = (ConnectionState, Call, Who, Outcome);

#[tokio::test]
async fn every_call_by_every_party_in_every_state_matches_the_spec() {
    use ConnectionState::{Active, Inactive, Pending};
    let app = spawn_app().await;
    let outsider = app.new_org("Outsider").await;
    // (state, call, who) -> Ok(new state) or Err((code, reason)), from SPEC section 2.
    #[rustfmt::skip]
    let table: &[Case] = &[
        (Pending, Call::Activate, Who::Destination, Ok(Active)),
        (Pending, Call::Activate, Who::Source, Err((Code::PermissionDenied, "CALLER_NOT_DESTINATION"))),
        (Pending, Call::Deactivate, Who::Source, Ok(Inactive)),
        (Pending, Call::Deactivate, Who::Destination, Ok(Inactive)),
        (Pending, Call::Reactivate, Who::Source, Err((Code::FailedPrecondition, "INVALID_STATE_TRANSITION"))),
        (Pending, Call::Reactivate, Who::Destination, Err((Code::PermissionDenied, "CALLER_NOT_SOURCE"))),
        (Active, Call::Activate, Who::Destination, Err((Code::FailedPrecondition, "INVALID_STATE_TRANSITION"))),
        (Active, Call::Activate, Who::Source, Err((Code::PermissionDenied, "CALLER_NOT_DESTINATION"))),
        (Active, Call::Deactivate, Who::Source, Ok(Inactive)),
        (Active, Call::Deactivate, Who::Destination, Ok(Inactive)),
        (Active, Call::Reactivate, Who::Source, Err((Code::FailedPrecondition, "INVALID_STATE_TRANSITION"))),
        (Active, Call::Reactivate, Who::Destination, Err((Code::PermissionDenied, "CALLER_NOT_SOURCE"))),
        (Inactive, Call::Activate, Who::Destination, Err((Code::FailedPrecondition, "INVALID_STATE_TRANSITION"))),
        (Inactive, Call::Activate, Who::Source, Err((Code::PermissionDenied, "CALLER_NOT_DESTINATION"))),
        (Inactive, Call::Deactivate, Who::Source, Err((Code::FailedPrecondition, "INVALID_STATE_TRANSITION"))),
        (Inactive, Call::Deactivate, Who::Destination, Err((Code::FailedPrecondition, "INVALID_STATE_TRANSITION"))),
        (Inactive, Call::Reactivate, Who::Source, Ok(Pending)),
        (Inactive, Call::Reactivate, Who::Destination, Err((Code::PermissionDenied, "CALLER_NOT_SOURCE"))),
    ];
    for state in [Pending, Active, Inactive] {
        for c in [Call::Activate, Call::Deactivate, Call::Reactivate] {
            for who in [Who::Source, Who::Destination, Who::Outsider] {
                // A fresh pair of organizations per case: one connection per pair.
                let source = app.new_org("Source").await;
                let destination = app.new_org("Destination").await;
                let id = connection_in(&app, &source, &destination, state).await;
                let caller = match who {
                    Who::Source => &source,
                    Who::Destination => &destination,
                    Who::Outsider => &outsider,
                };
                let got = call(&app, caller, c, &id).await;
                let expected = if who == Who::Outsider {
                    Err((Code::NotFound, "CONNECTION_NOT_FOUND"))
                } else {
                    table
                        .iter()
                        .find(|(s, k, w, _)| (*s, *k, *w) == (state, c, who))
                        .map(|(_, _, _, outcome)| *outcome)
                        .expect("case in table")
                };
                match (got, expected) {
                    (Ok(new_state), Ok(expected_state)) => {
                        assert_eq!(new_state, expected_state, "{state:?} {c:?} by {who:?}")
                    }
                    (Err(status), Err((code, reason))) => assert_error(&status, code, reason),
                    (got, expected) => {
                        panic!("{state:?} {c:?} by {who:?}: got {got:?}, expected {expected:?}")
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn an_outsider_sees_not_found_exactly_as_for_an_id_that_does_not_exist() {
    let app = spawn_app().await;
    let source = app.new_org("Source").await;
    let destination = app.new_org("Destination").await;
    let outsider = app.new_org("Outsider").await;
    let id = app.connect(&source, &destination).await.id;
    let mut as_outsider = app.connections(&outsider);

    for target in [id.clone(), unknown_id()] {
        let get = as_outsider
            .get_connection(GetConnectionRequest {
                connection_id: target.clone(),
            })
            .await
            .unwrap_err();
        let events = as_outsider
            .list_connection_events(ListConnectionEventsRequest {
                connection_id: target.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        let mut statuses = vec![get, events];
        for c in [Call::Activate, Call::Deactivate, Call::Reactivate] {
            statuses.push(call(&app, &outsider, c, &target).await.unwrap_err());
        }
        // And every RPC that takes a connection_id, as the API lists them,
        // so that a new one cannot be left out.
        let by_id = rpcs::taking(
            "connection_id",
            &[
                "GetConnection",
                "ActivateConnection",
                "DeactivateConnection",
                "ReactivateConnection",
                "UpdateConnectionDataTypes",
                "ApproveDataTypes",
                "DeclineDataTypes",
                "ListConnectionEvents",
            ],
        );
        for rpc in &by_id {
            // The one field besides the ID a request needs to be valid.
            let base = match rpc.method.as_str() {
                "UpdateConnectionDataTypes" => Encoded::of(&UpdateConnectionDataTypesRequest {
                    data_types: vec![DataType::Inquiry as i32],
                    ..Default::default()
                }),
                _ => Encoded::default(),
            };
            let request = base.string(rpc.number("connection_id"), &target);
            let status = rpcs::call(&app.channel, rpc, rpc.secret(&outsider), request)
                .await
                .expect_err(&rpc.method);
            statuses.push(status);
        }
        for status in statuses {
            assert_error(&status, Code::NotFound, "CONNECTION_NOT_FOUND");
            assert_eq!(
                status.message(),
                "connection not found (ERROR_REASON_CONNECTION_NOT_FOUND)"
            );
        }
    }

    let listed = as_outsider
        .list_connections(ListConnectionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.connections.is_empty());
    let filtered = as_outsider
        .list_connections(ListConnectionsRequest {
            counterparty_organization_id: source.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(filtered.connections.is_empty());

    // And nothing changed for the parties.
    let connection = app
        .connections(&destination)
        .get_connection(GetConnectionRequest { connection_id: id })
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    assert_eq!(connection.state(), ConnectionState::Pending);
}
