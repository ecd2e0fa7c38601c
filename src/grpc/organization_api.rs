//! `connections.v1.OrganizationService`.

use tonic::{Request, Response, Status};

use super::{
    Authenticator, call,
    validate::{self, AllOk},
};
use crate::{
    domain::{Credential, OrganizationId},
    proto::{
        GetOrganizationPolicyRequest, GetOrganizationPolicyResponse, GetOrganizationRequest,
        GetOrganizationResponse, UpdateOrganizationPolicyRequest, UpdateOrganizationPolicyResponse,
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

    async fn get_organization_policy(
        &self,
        request: Request<GetOrganizationPolicyRequest>,
    ) -> Result<Response<GetOrganizationPolicyResponse>, Status> {
        let caller = self.auth.organization(request.metadata()).await?;
        let policy = self.organizations.policy(caller).await?;
        Ok(Response::new(GetOrganizationPolicyResponse {
            policy: Some(policy.into()),
        }))
    }

    async fn update_organization_policy(
        &self,
        request: Request<UpdateOrganizationPolicyRequest>,
    ) -> Result<Response<UpdateOrganizationPolicyResponse>, Status> {
        let caller = self.auth.caller(request.metadata()).await?;
        let actor = call::actor(
            Credential::ApiKey { id: caller.api_key },
            request.extensions(),
        );
        let policy = request.into_inner().policy.unwrap_or_default();
        let (sources,) = (validate::trusted_sources(&policy.auto_activate_source_ids),).all_ok()?;
        let policy = self
            .organizations
            .update_policy(
                &actor,
                caller.organization,
                sources,
                validate::TRUSTED_SOURCES_FIELD,
            )
            .await?;
        Ok(Response::new(UpdateOrganizationPolicyResponse {
            policy: Some(policy.into()),
        }))
    }
}
