//! The gRPC server under test: the production server (`spawn_app`), called
//! through real clients, so that request validation, conversion and the
//! mapping of errors to statuses are part of what the model checks. The
//! conversions here are written from the proto files, not taken from the
//! crate.

use connections::{
    domain::{Action, ConnectionState, DataType, EventType, Role},
    proto,
};
use proptest::{prelude::*, test_runner::TestCaseError};
use tonic::Status;
use tonic_types::StatusExt;

use super::{
    harness::{Filter, Layer, Page, Seen, SeenEvent},
    reference::{EventTypes, Failure, Refusal},
};
use crate::support::{TestApp, clients, spawn_app, violated_fields};

/// The server on a database made for one test.
pub struct GrpcLayer {
    app: TestApp,
}

impl GrpcLayer {
    /// A server on a new database of the pass's backend.
    pub async fn new() -> Self {
        Self {
            app: spawn_app().await,
        }
    }

    /// Stops the server.
    pub async fn close(self) {
        self.app.stop().await;
    }
}

/// A status as the model describes failures: the code as sent, and the
/// refusal its ErrorInfo names, if the detail is complete (domain, reason,
/// metadata, and the BadRequest fields the reason calls for); anything else
/// is unexpected, described.
fn failure(status: &Status) -> Failure {
    let info = status.get_details_error_info();
    let fields = violated_fields(status);
    let refusal = info.as_ref().and_then(|info| {
        let reason = info.reason.strip_prefix("ERROR_REASON_")?;
        Refusal::from_reason(reason, &info.metadata)
    });
    match (info, refusal) {
        (Some(info), Some(refusal))
            if info.domain == "connections.v1" && fields == refusal.fields() =>
        {
            Failure::Refused(status.code(), refusal)
        }
        (info, _) => Failure::Unexpected(format!(
            "{:?} {:?}: ErrorInfo {:?}, BadRequest fields {:?}",
            status.code(),
            status.message(),
            info,
            fields
        )),
    }
}

fn data_type_value(t: DataType) -> i32 {
    match t {
        DataType::Inquiry => proto::DataType::Inquiry as i32,
        DataType::Verification => proto::DataType::Verification as i32,
        DataType::Account => proto::DataType::Account as i32,
        DataType::Transaction => proto::DataType::Transaction as i32,
    }
}

fn role_value(role: Option<Role>) -> i32 {
    match role {
        None => proto::ConnectionRole::Unspecified as i32,
        Some(Role::Source) => proto::ConnectionRole::Source as i32,
        Some(Role::Destination) => proto::ConnectionRole::Destination as i32,
    }
}

fn state_value(state: Option<ConnectionState>) -> i32 {
    match state {
        None => proto::ConnectionState::Unspecified as i32,
        Some(ConnectionState::Pending) => proto::ConnectionState::Pending as i32,
        Some(ConnectionState::Active) => proto::ConnectionState::Active as i32,
        Some(ConnectionState::Inactive) => proto::ConnectionState::Inactive as i32,
    }
}

/// A state field; `None` for UNSPECIFIED.
fn state(value: i32) -> Result<Option<ConnectionState>, TestCaseError> {
    match proto::ConnectionState::try_from(value) {
        Ok(proto::ConnectionState::Unspecified) => Ok(None),
        Ok(proto::ConnectionState::Pending) => Ok(Some(ConnectionState::Pending)),
        Ok(proto::ConnectionState::Active) => Ok(Some(ConnectionState::Active)),
        Ok(proto::ConnectionState::Inactive) => Ok(Some(ConnectionState::Inactive)),
        Err(_) => Err(TestCaseError::fail(format!("state {value}"))),
    }
}

/// A state field that must be set.
fn set_state(value: i32) -> Result<ConnectionState, TestCaseError> {
    state(value)?.ok_or_else(|| TestCaseError::fail("state UNSPECIFIED"))
}

/// A role field; `None` for UNSPECIFIED.
fn role(value: i32) -> Result<Option<Role>, TestCaseError> {
    match proto::ConnectionRole::try_from(value) {
        Ok(proto::ConnectionRole::Unspecified) => Ok(None),
        Ok(proto::ConnectionRole::Source) => Ok(Some(Role::Source)),
        Ok(proto::ConnectionRole::Destination) => Ok(Some(Role::Destination)),
        Err(_) => Err(TestCaseError::fail(format!("role {value}"))),
    }
}

fn data_type(value: i32) -> Result<DataType, TestCaseError> {
    match proto::DataType::try_from(value) {
        Ok(proto::DataType::Inquiry) => Ok(DataType::Inquiry),
        Ok(proto::DataType::Verification) => Ok(DataType::Verification),
        Ok(proto::DataType::Account) => Ok(DataType::Account),
        Ok(proto::DataType::Transaction) => Ok(DataType::Transaction),
        _ => Err(TestCaseError::fail(format!("data type {value}"))),
    }
}

fn event_type(value: i32) -> Result<EventType, TestCaseError> {
    match proto::ConnectionEventType::try_from(value) {
        Ok(proto::ConnectionEventType::Created) => Ok(EventType::Created),
        Ok(proto::ConnectionEventType::Activated) => Ok(EventType::Activated),
        Ok(proto::ConnectionEventType::Deactivated) => Ok(EventType::Deactivated),
        Ok(proto::ConnectionEventType::Reactivated) => Ok(EventType::Reactivated),
        Ok(proto::ConnectionEventType::DataTypesChanged) => Ok(EventType::DataTypesChanged),
        Ok(proto::ConnectionEventType::DataTypesProposed) => Ok(EventType::DataTypesProposed),
        Ok(proto::ConnectionEventType::DataTypesApproved) => Ok(EventType::DataTypesApproved),
        Ok(proto::ConnectionEventType::DataTypesDeclined) => Ok(EventType::DataTypesDeclined),
        _ => Err(TestCaseError::fail(format!("event type {value}"))),
    }
}

/// A repeated data type field.
fn data_types(values: &[i32]) -> Result<Vec<DataType>, TestCaseError> {
    values.iter().map(|&t| data_type(t)).collect()
}

/// Empty text is "none".
fn text(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_owned())
}

fn event(e: &proto::ConnectionEvent) -> Result<SeenEvent, TestCaseError> {
    prop_assert!(e.create_time.is_some(), "an event without create_time");
    Ok(SeenEvent {
        connection_id: e.connection_id.clone(),
        sequence: e.sequence,
        event_type: event_type(e.r#type)?,
        from: state(e.from_state)?,
        to: set_state(e.to_state)?,
        actor: e.actor_organization_id.clone(),
        actor_role: role(e.actor_role)?.ok_or_else(|| TestCaseError::fail("no actor role"))?,
        reason: text(&e.reason),
        types: EventTypes {
            previous: data_types(&e.previous_data_types)?,
            previous_pending: data_types(&e.previous_pending_data_types)?,
            current: data_types(&e.data_types)?,
            pending: data_types(&e.pending_data_types)?,
        },
    })
}

/// The connection of a response that must have one.
fn connection(connection: Option<proto::Connection>) -> Result<proto::Connection, Failure> {
    connection.ok_or_else(|| Failure::Unexpected("a response without its connection".to_owned()))
}

impl Layer for GrpcLayer {
    type Record = proto::Connection;
    type Caller = clients::Connections;

    async fn organization(&self, name: &str) -> (String, clients::Connections) {
        let org = self.app.new_org(name).await;
        (org.id.clone(), self.app.connections(&org))
    }

    async fn create(
        &self,
        caller: &clients::Connections,
        destination: &str,
        data_types: &[DataType],
        request_id: Option<&str>,
    ) -> Result<proto::Connection, Failure> {
        let request = proto::CreateConnectionRequest {
            message: String::new(),
            destination_organization_id: destination.to_owned(),
            data_types: data_types.iter().copied().map(data_type_value).collect(),
            request_id: request_id.unwrap_or_default().to_owned(),
        };
        let response = caller.clone().create_connection(request).await;
        connection(response.map_err(|s| failure(&s))?.into_inner().connection)
    }

    async fn transition(
        &self,
        caller: &clients::Connections,
        action: Action,
        id: &str,
        etag: Option<&str>,
        reason: Option<&str>,
        data_types: Option<&[DataType]>,
        request_id: Option<&str>,
    ) -> Result<proto::Connection, Failure> {
        assert!(
            data_types.is_none()
                || matches!(action, Action::UpdateDataTypes | Action::NarrowDataTypes),
            "only updates of the data types have data types"
        );
        let (connection_id, etag, request_id) = (
            id.to_owned(),
            etag.unwrap_or_default().to_owned(),
            request_id.unwrap_or_default().to_owned(),
        );
        let mut client = caller.clone();
        let response = match action {
            Action::Activate => {
                assert!(reason.is_none(), "an activation has no reason");
                client
                    .activate_connection(proto::ActivateConnectionRequest {
                        connection_id,
                        etag,
                        request_id,
                    })
                    .await
                    .map(|r| r.into_inner().connection)
            }
            Action::Deactivate => client
                .deactivate_connection(proto::DeactivateConnectionRequest {
                    connection_id,
                    etag,
                    request_id,
                    reason: reason.unwrap_or_default().to_owned(),
                })
                .await
                .map(|r| r.into_inner().connection),
            Action::Reactivate => {
                assert!(reason.is_none(), "a reactivation has no reason");
                client
                    .reactivate_connection(proto::ReactivateConnectionRequest {
                        message: String::new(),
                        connection_id,
                        etag,
                        request_id,
                    })
                    .await
                    .map(|r| r.into_inner().connection)
            }
            // Either party's: the API has no narrowing request of its own.
            Action::UpdateDataTypes | Action::NarrowDataTypes => {
                assert!(reason.is_none(), "an update has no reason");
                client
                    .update_connection_data_types(proto::UpdateConnectionDataTypesRequest {
                        connection_id,
                        etag,
                        request_id,
                        data_types: data_types
                            .unwrap_or_default()
                            .iter()
                            .copied()
                            .map(data_type_value)
                            .collect(),
                    })
                    .await
                    .map(|r| r.into_inner().connection)
            }
            Action::ApproveDataTypes => {
                assert!(reason.is_none(), "an approval has no reason");
                client
                    .approve_data_types(proto::ApproveDataTypesRequest {
                        connection_id,
                        etag,
                        request_id,
                    })
                    .await
                    .map(|r| r.into_inner().connection)
            }
            Action::DeclineDataTypes => client
                .decline_data_types(proto::DeclineDataTypesRequest {
                    connection_id,
                    etag,
                    request_id,
                    reason: reason.unwrap_or_default().to_owned(),
                })
                .await
                .map(|r| r.into_inner().connection),
        };
        connection(response.map_err(|s| failure(&s))?)
    }

    async fn get(
        &self,
        caller: &clients::Connections,
        id: &str,
    ) -> Result<proto::Connection, Failure> {
        let response = caller
            .clone()
            .get_connection(proto::GetConnectionRequest {
                connection_id: id.to_owned(),
            })
            .await;
        connection(response.map_err(|s| failure(&s))?.into_inner().connection)
    }

    async fn list(
        &self,
        caller: &clients::Connections,
        filter: &Filter,
        page_size: i32,
        page_token: Option<&str>,
    ) -> Result<Page<proto::Connection>, Failure> {
        let response = caller
            .clone()
            .list_connections(proto::ListConnectionsRequest {
                role: role_value(filter.role),
                state: state_value(filter.state),
                counterparty_organization_id: filter.counterparty.clone().unwrap_or_default(),
                page_size,
                page_token: page_token.unwrap_or_default().to_owned(),
                data_type: filter
                    .data_type
                    .map_or(proto::DataType::Unspecified as i32, data_type_value),
            })
            .await
            .map_err(|s| failure(&s))?
            .into_inner();
        Ok(Page {
            items: response.connections,
            next_page_token: text(&response.next_page_token),
        })
    }

    async fn list_events(
        &self,
        caller: &clients::Connections,
        id: &str,
        page_size: i32,
        page_token: Option<&str>,
    ) -> Result<Page<SeenEvent>, Failure> {
        let response = caller
            .clone()
            .list_connection_events(proto::ListConnectionEventsRequest {
                connection_id: id.to_owned(),
                page_size,
                page_token: page_token.unwrap_or_default().to_owned(),
            })
            .await
            .map_err(|s| failure(&s))?
            .into_inner();
        let items = response
            .events
            .iter()
            .map(event)
            .collect::<Result<_, _>>()
            .map_err(|err| Failure::Unexpected(err.to_string()))?;
        Ok(Page {
            items,
            next_page_token: text(&response.next_page_token),
        })
    }

    fn seen(&self, c: &proto::Connection) -> Result<Seen, TestCaseError> {
        prop_assert!(
            c.create_time.is_some() && c.update_time.is_some(),
            "a connection without create_time or update_time: {:?}",
            c
        );
        Ok(Seen {
            id: c.id.clone(),
            source: c.source_organization_id.clone(),
            destination: c.destination_organization_id.clone(),
            state: set_state(c.state)?,
            version: None,
            etag: c.etag.clone(),
            data_types: data_types(&c.data_types)?,
            pending_data_types: data_types(&c.pending_data_types)?,
            ever_activated: c.activate_time.is_some(),
            ever_deactivated: c.deactivate_time.is_some(),
            deactivated_by: role(c.deactivated_by)?,
            deactivation_reason: text(&c.deactivation_reason),
        })
    }
}
