//! `connections.v1.AccessService`.

use tonic::{Request, Response, Status};

use super::{
    AdminToken, Authenticator,
    validate::{self, AllOk},
};
use crate::{
    domain::OrganizationId,
    proto::{self, CheckAccessRequest, CheckAccessResponse, access_service_server::AccessService},
    service::{Access, AccessQuestion, Checker},
};

/// The gRPC adapter over [`Access`].
#[derive(Debug, Clone)]
pub struct AccessApi {
    auth: Authenticator,
    /// The credentials that may check any pair: the admin token and the
    /// access-check token.
    operators: [AdminToken; 2],
    access: Access,
}

impl AccessApi {
    /// Serves `access` to organizations identified by `auth` and to the
    /// holders of `admin_token` or `access_check_token`.
    pub fn new(
        auth: Authenticator,
        admin_token: AdminToken,
        access_check_token: AdminToken,
        access: Access,
    ) -> Self {
        Self {
            auth,
            operators: [admin_token, access_check_token],
            access,
        }
    }
}

#[tonic::async_trait]
impl AccessService for AccessApi {
    async fn check_access(
        &self,
        request: Request<CheckAccessRequest>,
    ) -> Result<Response<CheckAccessResponse>, Status> {
        let metadata = request.metadata();
        let checker = if self
            .operators
            .iter()
            .any(|token| token.check(metadata).is_ok())
        {
            Checker::Operator
        } else {
            Checker::Organization(self.auth.organization(metadata).await?)
        };
        let request = request.into_inner();
        let (source, destination, data_type, token) = (
            validate::id(
                "source_organization_id",
                &request.source_organization_id,
                OrganizationId::parse,
            ),
            validate::id(
                "destination_organization_id",
                &request.destination_organization_id,
                OrganizationId::parse,
            ),
            validate::data_type("data_type", request.data_type),
            validate::change_token("at_least_change_token", &request.at_least_change_token),
        )
            .all_ok()?;
        let at_least = token
            .map(|token| self.access.at_least(token, "at_least_change_token"))
            .transpose()?;
        let answer = self
            .access
            .check(
                checker,
                AccessQuestion {
                    source,
                    destination,
                    data_type,
                    at_least,
                },
            )
            .await?;
        let (connection_id, state) = answer.connection.map_or(
            (String::new(), proto::ConnectionState::Unspecified),
            |(id, state)| (id.to_string(), state.into()),
        );
        Ok(Response::new(CheckAccessResponse {
            allowed: answer.allowed,
            connection_id,
            state: state.into(),
            change_token: answer.change_token,
        }))
    }
}
