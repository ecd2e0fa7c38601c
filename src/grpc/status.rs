//! The one mapping from a service error to a gRPC status.
//!
//! Every status carries a `google.rpc.ErrorInfo` (domain `connections.v1`,
//! reason = an `ErrorReason` name); malformed fields also carry a
//! `google.rpc.BadRequest`. Messages are for people and never contain SQL or
//! other internals: those are logged here, once, instead.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{
    proto::{self, ERROR_DOMAIN, ErrorReason},
    service::{FieldViolation, ServiceError},
};

impl From<ServiceError> for Status {
    fn from(err: ServiceError) -> Self {
        use ServiceError as E;
        let mut metadata = HashMap::new();
        let mut violations: Vec<FieldViolation> = Vec::new();
        let (code, reason) = match &err {
            E::ApiKeyMissing => (Code::Unauthenticated, ErrorReason::ApiKeyMissing),
            E::ApiKeyInvalid(_) => (Code::Unauthenticated, ErrorReason::ApiKeyInvalid),
            E::AdminTokenInvalid(_) => (Code::Unauthenticated, ErrorReason::AdminTokenInvalid),
            E::KeyLookupsThrottled => (Code::Unavailable, ErrorReason::AuthenticationThrottled),
            E::InvalidArgument(fields) => {
                violations.extend(fields.iter().cloned());
                (Code::InvalidArgument, ErrorReason::InvalidArgument)
            }
            E::SelfConnection => {
                violations.push(FieldViolation::new(
                    "destination_organization_id",
                    "must not be the caller's own organization",
                ));
                (Code::InvalidArgument, ErrorReason::SelfConnection)
            }
            E::RequestIdReused => {
                violations.push(FieldViolation::new(
                    "request_id",
                    "already used with different parameters",
                ));
                (Code::InvalidArgument, ErrorReason::RequestIdReused)
            }
            E::InvalidPageToken => {
                violations.push(FieldViolation::new(
                    "page_token",
                    "not a token issued for this caller and these filters",
                ));
                (Code::InvalidArgument, ErrorReason::InvalidPageToken)
            }
            E::InvalidChangeToken { field } => {
                violations.push(FieldViolation::new(
                    field,
                    "not a change token issued by this service",
                ));
                (Code::InvalidArgument, ErrorReason::InvalidChangeToken)
            }
            E::WatchLimitExceeded => (Code::ResourceExhausted, ErrorReason::WatchLimitExceeded),
            E::WatchConsumerTooSlow => (Code::Aborted, ErrorReason::WatchConsumerTooSlow),
            E::ServerStopping => (Code::Unavailable, ErrorReason::ServerStopping),
            E::ConnectionNotFound => (Code::NotFound, ErrorReason::ConnectionNotFound),
            E::OrganizationNotFound => (Code::NotFound, ErrorReason::OrganizationNotFound),
            E::ApiKeyNotFound => (Code::NotFound, ErrorReason::ApiKeyNotFound),
            E::WebhookEndpointNotFound => (Code::NotFound, ErrorReason::WebhookEndpointNotFound),
            E::WebhookUrlNotAllowed(problem) => {
                violations.push(FieldViolation::new("url", problem.clone()));
                (Code::InvalidArgument, ErrorReason::WebhookUrlNotAllowed)
            }
            E::WebhookEndpointLimitExceeded { limit } => {
                metadata.insert("limit".to_owned(), limit.to_string());
                (
                    Code::ResourceExhausted,
                    ErrorReason::WebhookEndpointLimitExceeded,
                )
            }
            E::WebhooksNotConfigured => {
                (Code::FailedPrecondition, ErrorReason::WebhooksNotConfigured)
            }
            E::ConnectionAlreadyExists { connection_id } => {
                metadata.insert("connection_id".to_owned(), connection_id.to_string());
                (Code::AlreadyExists, ErrorReason::ConnectionAlreadyExists)
            }
            E::CallerNotSource => (Code::PermissionDenied, ErrorReason::CallerNotSource),
            E::CallerNotDestination => (Code::PermissionDenied, ErrorReason::CallerNotDestination),
            E::CallerNotParty => (Code::PermissionDenied, ErrorReason::CallerNotParty),
            E::InvalidStateTransition { current, .. } => {
                metadata.insert(
                    "current_state".to_owned(),
                    proto::ConnectionState::from(*current)
                        .as_str_name()
                        .to_owned(),
                );
                (
                    Code::FailedPrecondition,
                    ErrorReason::InvalidStateTransition,
                )
            }
            E::ConnectionExpired => (Code::FailedPrecondition, ErrorReason::ConnectionExpired),
            E::NoPendingDataTypes => (Code::FailedPrecondition, ErrorReason::NoPendingDataTypes),
            E::NoDataTypesLeft => (Code::FailedPrecondition, ErrorReason::NoDataTypesLeft),
            E::DataTypesUnchanged => (Code::FailedPrecondition, ErrorReason::DataTypesUnchanged),
            E::EtagMismatch => (Code::Aborted, ErrorReason::EtagMismatch),
            E::ConcurrentModification => (Code::Aborted, ErrorReason::ConcurrentModification),
            E::DatabaseUnavailable(_) => (Code::Unavailable, ErrorReason::DatabaseUnavailable),
            E::Internal(_) => (Code::Internal, ErrorReason::Internal),
        };

        match &err {
            E::Internal(_) => tracing::error!(error = ?err, "internal error"),
            E::DatabaseUnavailable(_) | E::KeyLookupsThrottled => {
                tracing::warn!(error = ?err, "unavailable");
            }
            _ => tracing::debug!(reason = reason.as_str_name(), message = %err, "request refused"),
        }

        let mut details =
            ErrorDetails::with_error_info(reason.as_str_name(), ERROR_DOMAIN, metadata);
        for violation in violations {
            details.add_bad_request_violation(violation.field, violation.description);
        }
        // The reason ends the message too, so that it shows with any tool,
        // not only with clients that decode the details.
        let message = format!("{err} ({})", reason.as_str_name());
        Status::with_error_details(code, message, details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Action, ConnectionId, ConnectionState};
    use sea_orm::DbErr;

    /// The reasons README's error table names (its first table after
    /// "### Errors"), each with the code of its row.
    fn readme_reasons() -> Vec<(String, String)> {
        let readme = include_str!("../../README.md");
        let section = &readme[readme.find("### Errors").expect("an Errors section")..];
        let mut rows = Vec::new();
        for line in section
            .lines()
            .skip_while(|line| !line.starts_with("| code"))
            .skip(2)
            .take_while(|line| line.starts_with('|'))
        {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let (code, reasons) = (cells[1], cells[2]);
            // The reasons are the `NAME`s in the cell, before any note in
            // parentheses that itself names nothing in back quotes.
            for name in reasons.split('`').skip(1).step_by(2) {
                if name.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                    rows.push((code.to_owned(), format!("ERROR_REASON_{name}")));
                }
            }
        }
        rows
    }

    #[test]
    fn the_readme_error_table_names_every_reason_once() {
        let mut listed: Vec<String> = readme_reasons().into_iter().map(|(_, r)| r).collect();
        listed.sort();
        let mut reasons: Vec<String> = (1..100)
            .filter_map(|value| ErrorReason::try_from(value).ok())
            .map(|reason| reason.as_str_name().to_owned())
            .collect();
        reasons.sort();
        assert_eq!(
            listed, reasons,
            "README's error table and the ErrorReason enum differ"
        );
    }

    fn error_info(status: &Status) -> tonic_types::ErrorInfo {
        status.get_details_error_info().expect("ErrorInfo detail")
    }

    #[test]
    fn every_status_carries_error_info_in_the_service_domain() {
        let status = Status::from(ServiceError::ConnectionNotFound);
        assert_eq!(status.code(), Code::NotFound);
        let info = error_info(&status);
        assert_eq!(info.reason, "ERROR_REASON_CONNECTION_NOT_FOUND");
        assert_eq!(info.domain, "connections.v1");
    }

    #[test]
    fn already_exists_names_the_existing_connection() {
        let id = ConnectionId::generate();
        let status = Status::from(ServiceError::ConnectionAlreadyExists { connection_id: id });
        assert_eq!(status.code(), Code::AlreadyExists);
        assert_eq!(
            error_info(&status).metadata.get("connection_id"),
            Some(&id.to_string())
        );
    }

    #[test]
    fn invalid_transition_reports_the_current_state() {
        let status = Status::from(ServiceError::InvalidStateTransition {
            action: Action::Activate,
            current: ConnectionState::Active,
        });
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(
            error_info(&status)
                .metadata
                .get("current_state")
                .map(String::as_str),
            Some("CONNECTION_STATE_ACTIVE")
        );
        assert_eq!(
            status.message(),
            "cannot activate a connection that is active (ERROR_REASON_INVALID_STATE_TRANSITION)"
        );
    }

    #[test]
    fn invalid_argument_lists_field_violations() {
        let status = Status::from(ServiceError::InvalidArgument(vec![
            FieldViolation::new("connection_id", "must be a UUID"),
            FieldViolation::new("reason", "too long"),
        ]));
        assert_eq!(status.code(), Code::InvalidArgument);
        let bad_request = status.get_details_bad_request().expect("BadRequest");
        let fields: Vec<&str> = bad_request
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["connection_id", "reason"]);
    }

    #[test]
    fn an_invalid_page_token_names_the_page_token_field() {
        let status = Status::from(ServiceError::InvalidPageToken);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            error_info(&status).reason,
            "ERROR_REASON_INVALID_PAGE_TOKEN"
        );
        let fields: Vec<String> = status
            .get_details_bad_request()
            .expect("BadRequest")
            .field_violations
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, ["page_token"]);
    }

    #[test]
    fn database_errors_never_leak_their_text() {
        let status = Status::from(ServiceError::from(DbErr::Custom(
            "SELECT secret FROM table".into(),
        )));
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error (ERROR_REASON_INTERNAL)");
        assert_eq!(error_info(&status).reason, "ERROR_REASON_INTERNAL");
    }

    #[test]
    fn unreachable_database_is_unavailable() {
        let err = DbErr::ConnectionAcquire(sea_orm::ConnAcquireErr::Timeout);
        let status = Status::from(ServiceError::from(err));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            error_info(&status).reason,
            "ERROR_REASON_DATABASE_UNAVAILABLE"
        );
        assert!(!status.message().contains("pool"));
    }
}
