//! `connections.v1.ConnectionService`.

use std::pin::Pin;

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::{
    Authenticator, convert,
    validate::{self, AllOk},
};
use crate::{
    domain::{Action, ConnectionId, OrganizationId},
    proto::{
        self, ActivateConnectionRequest, ActivateConnectionResponse, ApproveDataTypesRequest,
        ApproveDataTypesResponse, CreateConnectionRequest, CreateConnectionResponse,
        DeactivateConnectionRequest, DeactivateConnectionResponse, DeclineDataTypesRequest,
        DeclineDataTypesResponse, GetConnectionRequest, GetConnectionResponse,
        ListConnectionEventsRequest, ListConnectionEventsResponse, ListConnectionsRequest,
        ListConnectionsResponse, ReactivateConnectionRequest, ReactivateConnectionResponse,
        UpdateConnectionDataTypesRequest, UpdateConnectionDataTypesResponse,
        WatchConnectionEventsRequest, WatchConnectionEventsResponse,
        connection_service_server::ConnectionService,
    },
    service::{
        Connections, ListFilter, NewConnection, TransitionRequest, WatchStart, Watches,
        watch::Party,
    },
};

/// The gRPC adapter over [`Connections`].
#[derive(Debug, Clone)]
pub struct ConnectionApi {
    auth: Authenticator,
    connections: Connections,
    watches: Watches,
}

impl ConnectionApi {
    /// Serves `connections` and `watches`, identifying callers with `auth`.
    pub fn new(auth: Authenticator, connections: Connections, watches: Watches) -> Self {
        Self {
            auth,
            connections,
            watches,
        }
    }

    async fn transition(
        &self,
        request: Request<TransitionFields>,
    ) -> Result<(proto::Connection, String), Status> {
        let caller = self.auth.caller(request.metadata()).await?;
        let fields = request.into_inner();
        let (id, etag, request_id, reason, message, data_types) = (
            validate::id("connection_id", &fields.connection_id, ConnectionId::parse),
            validate::etag(&fields.etag),
            validate::request_id(&fields.request_id),
            validate::reason(&fields.reason),
            validate::message(&fields.message),
            fields
                .data_types
                .as_deref()
                .map(validate::data_types)
                .transpose(),
        )
            .all_ok()?;
        let connection = self
            .connections
            .transition(
                &caller,
                TransitionRequest {
                    id,
                    action: fields.action,
                    etag,
                    reason,
                    message,
                    data_types,
                    request_id,
                },
            )
            .await?;
        Ok(convert::written(connection)?)
    }
}

/// The fields of the requests that change a connection (empty or `None`
/// where a request has no such field).
struct TransitionFields {
    action: Action,
    connection_id: String,
    etag: String,
    request_id: String,
    reason: String,
    message: String,
    data_types: Option<Vec<i32>>,
}

impl TransitionFields {
    /// `action` on `connection_id`, with the fields every such request has.
    fn new(action: Action, connection_id: String, etag: String, request_id: String) -> Self {
        Self {
            action,
            connection_id,
            etag,
            request_id,
            reason: String::new(),
            message: String::new(),
            data_types: None,
        }
    }
}

#[tonic::async_trait]
impl ConnectionService for ConnectionApi {
    async fn create_connection(
        &self,
        request: Request<CreateConnectionRequest>,
    ) -> Result<Response<CreateConnectionResponse>, Status> {
        let caller = self.auth.caller(request.metadata()).await?;
        let request = request.into_inner();
        let (destination, data_types, request_id, message) = (
            validate::id(
                "destination_organization_id",
                &request.destination_organization_id,
                OrganizationId::parse,
            ),
            validate::data_types(&request.data_types),
            validate::request_id(&request.request_id),
            validate::message(&request.message),
        )
            .all_ok()?;
        let connection = self
            .connections
            .create(
                &caller,
                NewConnection {
                    destination,
                    data_types,
                    request_id,
                    message,
                },
            )
            .await?;
        let (connection, change_token) = convert::written(connection)?;
        Ok(Response::new(CreateConnectionResponse {
            connection: Some(connection),
            change_token,
        }))
    }

    async fn get_connection(
        &self,
        request: Request<GetConnectionRequest>,
    ) -> Result<Response<GetConnectionResponse>, Status> {
        let caller = self.auth.organization(request.metadata()).await?;
        let request = request.into_inner();
        let (id,) = (validate::id(
            "connection_id",
            &request.connection_id,
            ConnectionId::parse,
        ),)
            .all_ok()?;
        let connection = self.connections.get(caller, id).await?;
        Ok(Response::new(GetConnectionResponse {
            connection: Some(connection.into()),
        }))
    }

    async fn list_connections(
        &self,
        request: Request<ListConnectionsRequest>,
    ) -> Result<Response<ListConnectionsResponse>, Status> {
        let caller = self.auth.organization(request.metadata()).await?;
        let request = request.into_inner();
        let (role, state, counterparty, data_type, page_size, page_token) = (
            validate::role_filter(request.role),
            validate::state_filter(request.state),
            validate::optional_id(
                "counterparty_organization_id",
                &request.counterparty_organization_id,
                OrganizationId::parse,
            ),
            validate::data_type_filter("data_type", request.data_type),
            validate::page_size(request.page_size),
            validate::page_token(&request.page_token),
        )
            .all_ok()?;
        let filter = ListFilter {
            role,
            state,
            counterparty,
            data_type,
        };
        let page = self
            .connections
            .list(caller, filter, page_size, page_token)
            .await?;
        Ok(Response::new(ListConnectionsResponse {
            connections: page.items.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn activate_connection(
        &self,
        request: Request<ActivateConnectionRequest>,
    ) -> Result<Response<ActivateConnectionResponse>, Status> {
        let (connection, change_token) = self
            .transition(request.map(|r| {
                TransitionFields::new(Action::Activate, r.connection_id, r.etag, r.request_id)
            }))
            .await?;
        Ok(Response::new(ActivateConnectionResponse {
            connection: Some(connection),
            change_token,
        }))
    }

    async fn deactivate_connection(
        &self,
        request: Request<DeactivateConnectionRequest>,
    ) -> Result<Response<DeactivateConnectionResponse>, Status> {
        let (connection, change_token) = self
            .transition(request.map(|r| TransitionFields {
                reason: r.reason,
                ..TransitionFields::new(Action::Deactivate, r.connection_id, r.etag, r.request_id)
            }))
            .await?;
        Ok(Response::new(DeactivateConnectionResponse {
            connection: Some(connection),
            change_token,
        }))
    }

    async fn reactivate_connection(
        &self,
        request: Request<ReactivateConnectionRequest>,
    ) -> Result<Response<ReactivateConnectionResponse>, Status> {
        let (connection, change_token) = self
            .transition(request.map(|r| TransitionFields {
                message: r.message,
                ..TransitionFields::new(Action::Reactivate, r.connection_id, r.etag, r.request_id)
            }))
            .await?;
        Ok(Response::new(ReactivateConnectionResponse {
            connection: Some(connection),
            change_token,
        }))
    }

    async fn update_connection_data_types(
        &self,
        request: Request<UpdateConnectionDataTypesRequest>,
    ) -> Result<Response<UpdateConnectionDataTypesResponse>, Status> {
        let (connection, change_token) = self
            .transition(request.map(|r| TransitionFields {
                data_types: Some(r.data_types),
                ..TransitionFields::new(
                    Action::UpdateDataTypes,
                    r.connection_id,
                    r.etag,
                    r.request_id,
                )
            }))
            .await?;
        Ok(Response::new(UpdateConnectionDataTypesResponse {
            connection: Some(connection),
            change_token,
        }))
    }

    async fn approve_data_types(
        &self,
        request: Request<ApproveDataTypesRequest>,
    ) -> Result<Response<ApproveDataTypesResponse>, Status> {
        let (connection, change_token) = self
            .transition(request.map(|r| {
                TransitionFields::new(
                    Action::ApproveDataTypes,
                    r.connection_id,
                    r.etag,
                    r.request_id,
                )
            }))
            .await?;
        Ok(Response::new(ApproveDataTypesResponse {
            connection: Some(connection),
            change_token,
        }))
    }

    async fn decline_data_types(
        &self,
        request: Request<DeclineDataTypesRequest>,
    ) -> Result<Response<DeclineDataTypesResponse>, Status> {
        let (connection, change_token) = self
            .transition(request.map(|r| TransitionFields {
                reason: r.reason,
                ..TransitionFields::new(
                    Action::DeclineDataTypes,
                    r.connection_id,
                    r.etag,
                    r.request_id,
                )
            }))
            .await?;
        Ok(Response::new(DeclineDataTypesResponse {
            connection: Some(connection),
            change_token,
        }))
    }

    type WatchConnectionEventsStream =
        Pin<Box<dyn Stream<Item = Result<WatchConnectionEventsResponse, Status>> + Send>>;

    async fn watch_connection_events(
        &self,
        request: Request<WatchConnectionEventsRequest>,
    ) -> Result<Response<Self::WatchConnectionEventsStream>, Status> {
        let (caller, still_authorized) = self.auth.caller_while_valid(request.metadata()).await?;
        let caller = caller.organization;
        let request = request.into_inner();
        let role = validate::role_filter(request.role)
            .map_err(|violation| crate::service::ServiceError::InvalidArgument(vec![violation]))?;
        let start = match (request.after_change_token.as_str(), request.from_beginning) {
            ("", true) => WatchStart::Beginning,
            ("", false) => WatchStart::Now,
            (token, _) => self.watches.start_after(token, "after_change_token")?,
        };
        let party = Party {
            organization: caller,
            role,
        };
        let stream = self.watches.watch(party, start, still_authorized).await?;
        Ok(Response::new(Box::pin(stream.map(|item| {
            let item = item?;
            Ok(WatchConnectionEventsResponse {
                event: item.event.map(Into::into),
                change_token: item.change_token,
            })
        }))))
    }

    async fn list_connection_events(
        &self,
        request: Request<ListConnectionEventsRequest>,
    ) -> Result<Response<ListConnectionEventsResponse>, Status> {
        let caller = self.auth.organization(request.metadata()).await?;
        let request = request.into_inner();
        let (id, page_size, page_token) = (
            validate::id("connection_id", &request.connection_id, ConnectionId::parse),
            validate::page_size(request.page_size),
            validate::page_token(&request.page_token),
        )
            .all_ok()?;
        let page = self
            .connections
            .list_events(caller, id, page_size, page_token)
            .await?;
        Ok(Response::new(ListConnectionEventsResponse {
            events: page.items.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }
}
