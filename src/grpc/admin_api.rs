//! `connections.v1.AdminService`.

use tonic::{Request, Response, Status};

use super::{
    AdminToken, call,
    validate::{self, AllOk},
};
use crate::{
    domain::{Actor, ApiKeyId, AuditFilter, DisplayName, OrganizationId},
    proto::{
        CreateApiKeyRequest, CreateApiKeyResponse, CreateOrganizationRequest,
        CreateOrganizationResponse, ListApiKeysRequest, ListApiKeysResponse,
        ListAuditEventsRequest, ListAuditEventsResponse, ListOrganizationsRequest,
        ListOrganizationsResponse, RevokeApiKeyRequest, RevokeApiKeyResponse,
        admin_service_server::AdminService,
    },
    service::{ApiKeys, AuditLog, FieldViolation, Organizations, ServiceError},
};

/// The gRPC adapter for operators, guarded by the admin token.
#[derive(Debug, Clone)]
pub struct AdminApi {
    token: AdminToken,
    organizations: Organizations,
    keys: ApiKeys,
    audit: AuditLog,
}

impl AdminApi {
    /// Serves `organizations`, `keys` and the `audit` log to holders of
    /// `token`.
    pub fn new(
        token: AdminToken,
        organizations: Organizations,
        keys: ApiKeys,
        audit: AuditLog,
    ) -> Self {
        Self {
            token,
            organizations,
            keys,
            audit,
        }
    }

    /// Who makes a change: the admin token (checked), from the request's
    /// peer, under its request ID.
    fn actor<T>(&self, request: &Request<T>) -> Result<Actor, ServiceError> {
        self.token.check(request.metadata())?;
        Ok(call::actor(self.token.credential(), request.extensions()))
    }
}

fn display_name(value: &str) -> Result<DisplayName, FieldViolation> {
    DisplayName::parse(value).map_err(|err| FieldViolation::new("display_name", err.to_string()))
}

/// An API key's optional display name: empty, or a valid display name.
fn optional_display_name(value: &str) -> Result<String, FieldViolation> {
    if value.trim().is_empty() {
        return Ok(String::new());
    }
    display_name(value).map(|name| name.as_str().to_owned())
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_organization(
        &self,
        request: Request<CreateOrganizationRequest>,
    ) -> Result<Response<CreateOrganizationResponse>, Status> {
        let actor = self.actor(&request)?;
        let request = request.into_inner();
        let (name,) = (display_name(&request.display_name),).all_ok()?;
        let organization = self.organizations.create(&actor, name).await?;
        Ok(Response::new(CreateOrganizationResponse {
            organization: Some(organization.into()),
        }))
    }

    async fn list_organizations(
        &self,
        request: Request<ListOrganizationsRequest>,
    ) -> Result<Response<ListOrganizationsResponse>, Status> {
        self.token.check(request.metadata())?;
        let request = request.into_inner();
        let (page_size, page_token) = (
            validate::page_size(request.page_size),
            validate::page_token(&request.page_token),
        )
            .all_ok()?;
        let page = self.organizations.list(page_size, page_token).await?;
        Ok(Response::new(ListOrganizationsResponse {
            organizations: page.items.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn create_api_key(
        &self,
        request: Request<CreateApiKeyRequest>,
    ) -> Result<Response<CreateApiKeyResponse>, Status> {
        let actor = self.actor(&request)?;
        let request = request.into_inner();
        let (organization_id, name) = (
            validate::id(
                "organization_id",
                &request.organization_id,
                OrganizationId::parse,
            ),
            optional_display_name(&request.display_name),
        )
            .all_ok()?;
        let (key, secret) = self.keys.create(&actor, organization_id, name).await?;
        Ok(Response::new(CreateApiKeyResponse {
            api_key: Some(key.into()),
            secret,
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<ListApiKeysRequest>,
    ) -> Result<Response<ListApiKeysResponse>, Status> {
        self.token.check(request.metadata())?;
        let request = request.into_inner();
        let (organization_id,) = (validate::id(
            "organization_id",
            &request.organization_id,
            OrganizationId::parse,
        ),)
            .all_ok()?;
        let keys = self.keys.list(organization_id).await?;
        Ok(Response::new(ListApiKeysResponse {
            api_keys: keys.into_iter().map(Into::into).collect(),
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<RevokeApiKeyRequest>,
    ) -> Result<Response<RevokeApiKeyResponse>, Status> {
        let actor = self.actor(&request)?;
        let request = request.into_inner();
        let (id,) = (validate::id(
            "api_key_id",
            &request.api_key_id,
            ApiKeyId::parse,
        ),)
            .all_ok()?;
        let key = self.keys.revoke(&actor, id).await?;
        Ok(Response::new(RevokeApiKeyResponse {
            api_key: Some(key.into()),
        }))
    }

    async fn list_audit_events(
        &self,
        request: Request<ListAuditEventsRequest>,
    ) -> Result<Response<ListAuditEventsResponse>, Status> {
        self.token.check(request.metadata())?;
        let request = request.into_inner();
        let (page_size, page_token, action, target_id, start_time, end_time) = (
            validate::page_size(request.page_size),
            validate::page_token(&request.page_token),
            validate::audit_action_filter(request.action),
            validate::optional_id(
                "target_id",
                &request.target_id,
                crate::domain::ids::parse_uuid,
            ),
            validate::optional_time("start_time", request.start_time),
            validate::optional_time("end_time", request.end_time),
        )
            .all_ok()?;
        if let (Some(start), Some(end)) = (start_time, end_time)
            && end <= start
        {
            return Err(ServiceError::invalid_field("end_time", "must be after start_time").into());
        }
        let filter = AuditFilter {
            action,
            target_id,
            start_time,
            end_time,
        };
        let page = self.audit.list(&filter, page_size, page_token).await?;
        Ok(Response::new(ListAuditEventsResponse {
            audit_events: page.items.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }
}
