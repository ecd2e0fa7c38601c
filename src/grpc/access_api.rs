//! `connections.v1.AccessService`.

use prost::Message;
use tonic::{Request, Response, Status, metadata::MetadataMap};

use super::{
    AdminToken, Authenticator,
    validate::{self, AllOk, MAX_BATCH_CHECKS},
};
use crate::{
    domain::{DataType, OrganizationId},
    proto::{
        self, BatchCheckAccessRequest, BatchCheckAccessResponse, CheckAccessRequest,
        CheckAccessResponse, CheckAccessResult, access_service_server::AccessService,
        check_access_result,
    },
    service::{
        Access, AccessAnswer, AccessPair, AccessQuestion, Checker, FieldViolation, ServiceError,
    },
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

    /// Who calls: an operator credential, else an organization's API key.
    async fn checker(&self, metadata: &MetadataMap) -> Result<Checker, Status> {
        if self
            .operators
            .iter()
            .any(|token| token.check(metadata).is_ok())
        {
            Ok(Checker::Operator)
        } else {
            Ok(Checker::Organization(
                self.auth.organization(metadata).await?,
            ))
        }
    }
}

/// The fields of a CheckAccess question, each checked, every violation
/// reported at once; its `at_least_change_token` is checked by `token`.
fn question<'a, T>(
    request: &'a CheckAccessRequest,
    token: impl FnOnce(&'a str) -> Result<T, FieldViolation>,
) -> Result<(OrganizationId, OrganizationId, DataType, T), ServiceError> {
    (
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
        token(&request.at_least_change_token),
    )
        .all_ok()
}

/// One item of a BatchCheckAccess: a CheckAccess question without a token of
/// its own (the batch has one). Its violations name the item's own fields.
fn batch_item(request: &CheckAccessRequest) -> Result<AccessPair, ServiceError> {
    let (source, destination, data_type, ()) = question(request, |token| {
        validate::empty(
            "at_least_change_token",
            token,
            "must be empty in a batch: set the batch's at_least_change_token, which every check \
             shares",
        )
    })?;
    Ok(AccessPair {
        source,
        destination,
        data_type,
    })
}

/// `answer` as CheckAccess returns it.
fn response(answer: AccessAnswer) -> CheckAccessResponse {
    let (connection_id, state) = answer.connection.map_or(
        (String::new(), proto::ConnectionState::Unspecified),
        |(id, state)| (id.to_string(), state.into()),
    );
    CheckAccessResponse {
        allowed: answer.allowed,
        connection_id,
        state: state.into(),
        change_token: answer.change_token,
    }
}

/// `err` as the `google.rpc.Status` a call failing with it returns: its
/// code, message and details (ErrorInfo, and BadRequest for malformed
/// fields), from the one mapping of service errors to statuses.
fn rpc_status(err: ServiceError) -> tonic_types::pb::Status {
    let status = Status::from(err);
    // A status with details carries them as an encoded google.rpc.Status
    // (its code and message included); the mapping always adds ErrorInfo.
    tonic_types::pb::Status::decode(status.details()).unwrap_or_else(|_| tonic_types::pb::Status {
        code: status.code() as i32,
        message: status.message().to_owned(),
        details: Vec::new(),
    })
}

#[tonic::async_trait]
impl AccessService for AccessApi {
    async fn check_access(
        &self,
        request: Request<CheckAccessRequest>,
    ) -> Result<Response<CheckAccessResponse>, Status> {
        let checker = self.checker(request.metadata()).await?;
        let request = request.into_inner();
        let (source, destination, data_type, token) = question(&request, |token| {
            validate::change_token("at_least_change_token", token)
        })?;
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
        Ok(Response::new(response(answer)))
    }

    async fn batch_check_access(
        &self,
        request: Request<BatchCheckAccessRequest>,
    ) -> Result<Response<BatchCheckAccessResponse>, Status> {
        let checker = self.checker(request.metadata()).await?;
        let request = request.into_inner();
        let ((), token) = (
            validate::entries("checks", request.checks.len(), MAX_BATCH_CHECKS),
            validate::change_token("at_least_change_token", &request.at_least_change_token),
        )
            .all_ok()?;
        let at_least = token
            .map(|token| self.access.at_least(token, "at_least_change_token"))
            .transpose()?;
        // Each item is checked on its own: a malformed one is refused alone.
        let items: Vec<Result<AccessPair, ServiceError>> =
            request.checks.iter().map(batch_item).collect();
        let questions: Vec<AccessPair> = items.iter().flatten().copied().collect();
        let batch = self
            .access
            .check_batch(checker, &questions, at_least)
            .await?;
        let mut answers = batch.answers.into_iter();
        let results = items
            .into_iter()
            .map(|item| {
                let answer = item.and_then(|_| answers.next().expect("one answer per question"));
                CheckAccessResult {
                    result: Some(match answer {
                        Ok(answer) => check_access_result::Result::Response(response(answer)),
                        Err(err) => check_access_result::Result::Error(rpc_status(err)),
                    }),
                }
            })
            .collect();
        Ok(Response::new(BatchCheckAccessResponse {
            results,
            change_token: batch.change_token,
        }))
    }
}
