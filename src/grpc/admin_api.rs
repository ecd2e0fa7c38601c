//! `connections.v1.AdminService`.

use tonic::{Request, Response, Status};

use super::{
    AdminToken,
    validate::{self, AllOk},
};
use crate::{
    domain::{ApiKeyId, DisplayName, OrganizationId},
    proto::{
        CreateApiKeyRequest, CreateApiKeyResponse, CreateOrganizationRequest,
        CreateOrganizationResponse, ListApiKeysRequest, ListApiKeysResponse,
        ListOrganizationsRequest, ListOrganizationsResponse, RevokeApiKeyRequest,
        RevokeApiKeyResponse, admin_service_server::AdminService,
    },
    service::{ApiKeys, FieldViolation, Organizations},
};

/// The gRPC adapter for operators, guarded by the admin token.
#[derive(Debug, Clone)]
pub struct AdminApi {
    token: AdminToken,
    organizations: Organizations,
    keys: ApiKeys,
}

impl AdminApi {
    /// Serves `organizations` and `keys` to holders of `token`.
    pub fn new(token: AdminToken, organizations: Organizations, keys: ApiKeys) -> Self {
        Self {
            token,
            organizations,
            keys,
        }
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
        self.token.check(request.metadata())?;
        let request = request.into_inner();
        let (name,) = (display_name(&request.display_name),).all_ok()?;
        let organization = self.organizations.create(name).await?;
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
        self.token.check(request.metadata())?;
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
        let (key, secret) = self.keys.create(organization_id, name).await?;
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
        self.token.check(request.metadata())?;
        let request = request.into_inner();
        let (id,) = (validate::id(
            "api_key_id",
            &request.api_key_id,
            ApiKeyId::parse,
        ),)
            .all_ok()?;
        let key = self.keys.revoke(id).await?;
        Ok(Response::new(RevokeApiKeyResponse {
            api_key: Some(key.into()),
        }))
    }
}
