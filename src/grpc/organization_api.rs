//! `connections.v1.OrganizationService`.

use tonic::{Request, Response, Status};

use super::{
    Authenticator,
    validate::{self, AllOk},
};
use crate::{
    domain::OrganizationId,
    proto::{
        GetOrganizationRequest, GetOrganizationResponse,
        organization_service_server::OrganizationService,
    },
    service::Organizations,
};

/// The gRPC adapter over [`Organizations`] for API-key callers.
#[derive(Debug, Clone)]
pub struct OrganizationApi {
    auth: Authenticator,
    organizations: Organizations,
}

impl OrganizationApi {
    /// Serves `organizations`, identifying callers with `auth`.
    pub fn new(auth: Authenticator, organizations: Organizations) -> Self {
        Self {
            auth,
            organizations,
        }
    }
}

#[tonic::async_trait]
impl OrganizationService for OrganizationApi {
    async fn get_organization(
        &self,
        request: Request<GetOrganizationRequest>,
    ) -> Result<Response<GetOrganizationResponse>, Status> {
        let caller = self.auth.organization(request.metadata()).await?;
        let request = request.into_inner();
        let (id,) = (validate::optional_id(
            "organization_id",
            &request.organization_id,
            OrganizationId::parse,
        ),)
            .all_ok()?;
        let organization = self.organizations.get(id.unwrap_or(caller)).await?;
        Ok(Response::new(GetOrganizationResponse {
            organization: Some(organization.into()),
        }))
    }
}
