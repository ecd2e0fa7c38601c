//! `connections.v1.WebhookService`.

use tonic::{Request, Response, Status};

use super::{
    Authenticator, call, convert,
    validate::{self, AllOk},
};
use crate::{
    domain::{Actor, Caller, Credential, WebhookEndpointId},
    proto::{
        CreateWebhookEndpointRequest, CreateWebhookEndpointResponse, DeleteWebhookEndpointRequest,
        DeleteWebhookEndpointResponse, GetWebhookEndpointRequest, GetWebhookEndpointResponse,
        ListWebhookDeliveriesRequest, ListWebhookDeliveriesResponse, ListWebhookEndpointsRequest,
        ListWebhookEndpointsResponse, RecoverWebhookDeliveriesRequest,
        RecoverWebhookDeliveriesResponse, RotateWebhookSecretRequest, RotateWebhookSecretResponse,
        UpdateWebhookEndpointRequest, UpdateWebhookEndpointResponse,
        webhook_service_server::WebhookService,
    },
    service::{
        FieldViolation, Webhooks,
        webhooks::{EndpointChanges, NewEndpoint},
    },
};

/// The field paths UpdateWebhookEndpoint may change.
const UPDATABLE: [&str; 4] = ["url", "description", "event_types", "disabled"];

/// The gRPC adapter over [`Webhooks`] for API-key callers.
#[derive(Debug, Clone)]
pub struct WebhookApi {
    auth: Authenticator,
    webhooks: Webhooks,
}

impl WebhookApi {
    /// Serves `webhooks`, identifying callers with `auth`.
    pub fn new(auth: Authenticator, webhooks: Webhooks) -> Self {
        Self { auth, webhooks }
    }
}

/// Who changes an endpoint, as the audit log records it: `caller`'s API key,
/// from the client's address, under the call's request ID.
fn actor(caller: &Caller, extensions: &http::Extensions) -> Actor {
    call::actor(Credential::ApiKey { id: caller.api_key }, extensions)
}

fn endpoint_id(field: &'static str, value: &str) -> Result<WebhookEndpointId, FieldViolation> {
    validate::id(field, value, WebhookEndpointId::parse)
}

#[tonic::async_trait]
impl WebhookService for WebhookApi {
    async fn create_webhook_endpoint(
        &self,
        request: Request<CreateWebhookEndpointRequest>,
    ) -> Result<Response<CreateWebhookEndpointResponse>, Status> {
        let caller = self.auth.caller(request.metadata()).await?;
        let actor = actor(&caller, request.extensions());
        let request = request.into_inner();
        let (url, description, event_types, request_id) = (
            validate::webhook_url("url", &request.url),
            validate::description(&request.description),
            validate::event_types(&request.event_types),
            validate::request_id(&request.request_id),
        )
            .all_ok()?;
        let created = self
            .webhooks
            .create(
                &actor,
                caller.organization,
                NewEndpoint {
                    url,
                    description,
                    event_types,
                    request_id,
                },
            )
            .await?;
        Ok(Response::new(CreateWebhookEndpointResponse {
            endpoint: Some(created.endpoint.into()),
            secret: created.secret,
        }))
    }

    async fn get_webhook_endpoint(
        &self,
        request: Request<GetWebhookEndpointRequest>,
    ) -> Result<Response<GetWebhookEndpointResponse>, Status> {
        let caller = self.auth.organization(request.metadata()).await?;
        let (id,) = (endpoint_id("endpoint_id", &request.get_ref().endpoint_id),).all_ok()?;
        let endpoint = self.webhooks.get(caller, id).await?;
        Ok(Response::new(GetWebhookEndpointResponse {
            endpoint: Some(endpoint.into()),
        }))
    }

    async fn list_webhook_endpoints(
        &self,
        request: Request<ListWebhookEndpointsRequest>,
    ) -> Result<Response<ListWebhookEndpointsResponse>, Status> {
        let caller = self.auth.organization(request.metadata()).await?;
        let request = request.into_inner();
        let (page_size, page_token) = (
            validate::page_size(request.page_size),
            validate::page_token(&request.page_token),
        )
            .all_ok()?;
        let page = self.webhooks.list(caller, page_size, page_token).await?;
        Ok(Response::new(ListWebhookEndpointsResponse {
            endpoints: page.items.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn update_webhook_endpoint(
        &self,
        request: Request<UpdateWebhookEndpointRequest>,
    ) -> Result<Response<UpdateWebhookEndpointResponse>, Status> {
        let caller = self.auth.caller(request.metadata()).await?;
        let actor = actor(&caller, request.extensions());
        let request = request.into_inner();
        let endpoint = request.endpoint.unwrap_or_default();
        let paths = request
            .update_mask
            .map(|mask| mask.paths)
            .unwrap_or_default();
        let mask = update_mask(&paths);
        let (id, (), url, description, event_types) = (
            endpoint_id("endpoint.id", &endpoint.id),
            mask.clone().map(drop),
            optional(&mask, "url", || {
                validate::webhook_url("endpoint.url", &endpoint.url)
            }),
            optional(&mask, "description", || {
                validate::description(&endpoint.description)
            }),
            optional(&mask, "event_types", || {
                validate::event_types(&endpoint.event_types)
            }),
        )
            .all_ok()?;
        let disabled = mask
            .as_ref()
            .is_ok_and(|paths| paths.contains(&"disabled"))
            .then_some(endpoint.disabled);
        let changed = self
            .webhooks
            .update(
                &actor,
                caller.organization,
                id,
                EndpointChanges {
                    url,
                    description,
                    event_types,
                    disabled,
                },
            )
            .await?;
        Ok(Response::new(UpdateWebhookEndpointResponse {
            endpoint: Some(changed.into()),
        }))
    }

    async fn delete_webhook_endpoint(
        &self,
        request: Request<DeleteWebhookEndpointRequest>,
    ) -> Result<Response<DeleteWebhookEndpointResponse>, Status> {
        let caller = self.auth.caller(request.metadata()).await?;
        let (id,) = (endpoint_id("endpoint_id", &request.get_ref().endpoint_id),).all_ok()?;
        let actor = actor(&caller, request.extensions());
        self.webhooks
            .delete(&actor, caller.organization, id)
            .await?;
        Ok(Response::new(DeleteWebhookEndpointResponse {}))
    }

    async fn rotate_webhook_secret(
        &self,
        request: Request<RotateWebhookSecretRequest>,
    ) -> Result<Response<RotateWebhookSecretResponse>, Status> {
        let caller = self.auth.caller(request.metadata()).await?;
        let (id,) = (endpoint_id("endpoint_id", &request.get_ref().endpoint_id),).all_ok()?;
        let actor = actor(&caller, request.extensions());
        let (secret, expire) = self
            .webhooks
            .rotate(&actor, caller.organization, id)
            .await?;
        Ok(Response::new(RotateWebhookSecretResponse {
            secret,
            previous_secret_expire_time: Some(convert::timestamp(expire)),
        }))
    }

    async fn list_webhook_deliveries(
        &self,
        request: Request<ListWebhookDeliveriesRequest>,
    ) -> Result<Response<ListWebhookDeliveriesResponse>, Status> {
        let caller = self.auth.organization(request.metadata()).await?;
        let request = request.into_inner();
        let (id, page_size, page_token) = (
            endpoint_id("endpoint_id", &request.endpoint_id),
            validate::page_size(request.page_size),
            validate::page_token(&request.page_token),
        )
            .all_ok()?;
        let page = self
            .webhooks
            .deliveries(caller, id, request.failed_only, page_size, page_token)
            .await?;
        Ok(Response::new(ListWebhookDeliveriesResponse {
            deliveries: page.items.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn recover_webhook_deliveries(
        &self,
        request: Request<RecoverWebhookDeliveriesRequest>,
    ) -> Result<Response<RecoverWebhookDeliveriesResponse>, Status> {
        let caller = self.auth.caller(request.metadata()).await?;
        let actor = actor(&caller, request.extensions());
        let request = request.into_inner();
        const FIELD: &str = "after_change_token";
        let (id, token) = (
            endpoint_id("endpoint_id", &request.endpoint_id),
            validate::change_token(FIELD, &request.after_change_token)
                .and_then(|token| token.ok_or_else(|| FieldViolation::new(FIELD, "is required"))),
        )
            .all_ok()?;
        let after = self.webhooks.recovery_start(token, FIELD)?;
        let events_queued = self
            .webhooks
            .recover(&actor, caller.organization, id, &after)
            .await?;
        Ok(Response::new(RecoverWebhookDeliveriesResponse {
            events_queued,
        }))
    }
}

/// The paths of an update mask: at least one, each one of [`UPDATABLE`].
fn update_mask(paths: &[String]) -> Result<Vec<&'static str>, FieldViolation> {
    if paths.is_empty() {
        return Err(FieldViolation::new(
            "update_mask",
            format!(
                "is required: name the fields to change ({})",
                UPDATABLE.join(", ")
            ),
        ));
    }
    paths
        .iter()
        .map(|path| {
            UPDATABLE
                .iter()
                .find(|known| **known == path.as_str())
                .copied()
                .ok_or_else(|| {
                    FieldViolation::new(
                        "update_mask",
                        format!("{path:?} cannot be changed (only {})", UPDATABLE.join(", ")),
                    )
                })
        })
        .collect()
}

/// The field `path` checked by `check` if the mask names it, else `None`.
fn optional<T>(
    mask: &Result<Vec<&'static str>, FieldViolation>,
    path: &str,
    check: impl FnOnce() -> Result<T, FieldViolation>,
) -> Result<Option<T>, FieldViolation> {
    match mask {
        Ok(paths) if paths.contains(&path) => check().map(Some),
        _ => Ok(None),
    }
}
