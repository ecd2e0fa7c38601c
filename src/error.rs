//! The service layer's error type and its one mapping to a gRPC status.
//!
//! Every status carries a `google.rpc.ErrorInfo` (domain `connections.v1`,
//! reason = an `ErrorReason` name); malformed fields also carry a
//! `google.rpc.BadRequest`. Messages are for people and never contain SQL or
//! other internals: those are logged here, once, instead.

use std::collections::HashMap;

use sea_orm::{DbErr, RuntimeErr, sqlx};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{
    domain::{Action, ConnectionId, ConnectionState},
    proto::{self, ERROR_DOMAIN, ErrorReason},
};

/// One malformed field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's name in the request, e.g. `connection_id`.
    pub field: &'static str,
    /// What is wrong with it, for people.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: &'static str, description: impl Into<String>) -> Self {
        Self {
            field,
            description: description.into(),
        }
    }
}

/// Everything that can go wrong in a call, as the service layer reports it.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No `authorization` metadata.
    #[error("missing credentials: send the metadata \"authorization: Bearer <API key>\"")]
    ApiKeyMissing,
    /// Unknown, malformed or revoked API key.
    #[error("the API key is not valid")]
    ApiKeyInvalid,
    /// Admin token missing, wrong, or none configured.
    #[error("the admin token is missing or not valid")]
    AdminTokenInvalid,
    /// One or more malformed fields.
    #[error("invalid request: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// The destination is the caller itself.
    #[error("a connection from an organization to itself is not allowed")]
    SelfConnection,
    /// The request_id was used before with other parameters.
    #[error("request_id was already used with different parameters")]
    RequestIdReused,
    /// Malformed, altered, or issued for another caller or other filters.
    #[error("the page token is not valid for this request")]
    InvalidPageToken,
    /// No such connection, or the caller is not a party to it.
    #[error("connection not found")]
    ConnectionNotFound,
    /// No such organization.
    #[error("organization not found")]
    OrganizationNotFound,
    /// No such API key.
    #[error("API key not found")]
    ApiKeyNotFound,
    /// The caller already has a connection to this destination.
    #[error("a connection to this destination already exists: {connection_id}")]
    ConnectionAlreadyExists {
        /// The existing connection.
        connection_id: ConnectionId,
    },
    /// Only the source may take this action.
    #[error("only the source organization of the connection may do this")]
    CallerNotSource,
    /// Only the destination may take this action.
    #[error("only the destination organization of the connection may do this")]
    CallerNotDestination,
    /// The connection's state does not allow the action.
    #[error("cannot {} a connection that is {}", action_verb(*.action), .current.as_str().to_lowercase())]
    InvalidStateTransition {
        /// The requested action.
        action: Action,
        /// The connection's state.
        current: ConnectionState,
    },
    /// The given etag is not the connection's current one.
    #[error(
        "the connection has changed since it was read (etag mismatch); read it again and retry"
    )]
    EtagMismatch,
    /// A concurrent change won the race.
    #[error("the connection was changed concurrently; read it again and retry")]
    ConcurrentModification,
    /// The database cannot be reached.
    #[error("the database is unavailable; retry with backoff")]
    DatabaseUnavailable(#[source] DbErr),
    /// Anything else: a bug, or data the service cannot read.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

fn describe(violations: &[FieldViolation]) -> String {
    let parts: Vec<String> = violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect();
    parts.join("; ")
}

fn action_verb(action: Action) -> &'static str {
    match action {
        Action::Activate => "activate",
        Action::Deactivate => "deactivate",
        Action::Reactivate => "reactivate",
    }
}

impl ServiceError {
    /// An internal error from anything printable.
    pub fn internal(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Internal(error.into())
    }

    /// A single malformed field.
    pub fn invalid_field(field: &'static str, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }
}

impl From<DbErr> for ServiceError {
    fn from(err: DbErr) -> Self {
        match classify(&err) {
            DbFailure::Unavailable => Self::DatabaseUnavailable(err),
            DbFailure::Conflict => Self::ConcurrentModification,
            DbFailure::Other => Self::Internal(Box::new(err)),
        }
    }
}

impl From<sea_orm::TransactionError<ServiceError>> for ServiceError {
    fn from(err: sea_orm::TransactionError<ServiceError>) -> Self {
        match err {
            sea_orm::TransactionError::Connection(db) => db.into(),
            sea_orm::TransactionError::Transaction(inner) => inner,
        }
    }
}

/// How a database error should be reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbFailure {
    /// The database cannot be reached or refuses work for now: UNAVAILABLE.
    Unavailable,
    /// A serialization failure or deadlock: the caller should retry (ABORTED).
    Conflict,
    /// Anything else: INTERNAL.
    Other,
}

/// Sorts a database error into what the caller can do about it.
pub fn classify(err: &DbErr) -> DbFailure {
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => DbFailure::Unavailable,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            classify_sqlx(e)
        }
        _ => DbFailure::Other,
    }
}

fn classify_sqlx(err: &sqlx::Error) -> DbFailure {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => DbFailure::Unavailable,
        sqlx::Error::Database(db) if is_sqlite(db.as_ref()) => db
            .code()
            .map_or(DbFailure::Other, |code| classify_sqlite_code(&code)),
        sqlx::Error::Database(db) => db
            .code()
            .map_or(DbFailure::Other, |code| classify_postgres_code(&code)),
        _ => DbFailure::Other,
    }
}

/// PostgreSQL reports SQLSTATE codes.
fn classify_postgres_code(code: &str) -> DbFailure {
    match code {
        // serialization_failure, deadlock_detected, lock_not_available
        "40001" | "40P01" | "55P03" => DbFailure::Conflict,
        // query_canceled (statement timeout, cancelled backend) and
        // read_only_sql_transaction (a standby after a failover)
        "57014" | "25006" => DbFailure::Unavailable,
        // connection exceptions, insufficient resources (e.g. too many
        // connections), operator intervention (shutdown, cannot connect now),
        // system errors (I/O)
        _ if code.starts_with("08")
            || code.starts_with("53")
            || code.starts_with("57P")
            || code.starts_with("58") =>
        {
            DbFailure::Unavailable
        }
        _ => DbFailure::Other,
    }
}

const SQLITE_BUSY: i64 = 5;
const SQLITE_LOCKED: i64 = 6;
const SQLITE_READONLY: i64 = 8;
const SQLITE_IOERR: i64 = 10;
const SQLITE_FULL: i64 = 13;
const SQLITE_CANTOPEN: i64 = 14;

fn is_sqlite(err: &dyn sqlx::error::DatabaseError) -> bool {
    err.try_downcast_ref::<sqlx::sqlite::SqliteError>()
        .is_some()
}

/// SQLite reports (extended) result codes as decimal strings; the primary
/// code is the low byte.
fn sqlite_primary_code(code: &str) -> Option<i64> {
    code.parse::<i64>().ok().map(|extended| extended & 0xff)
}

fn classify_sqlite_code(code: &str) -> DbFailure {
    match sqlite_primary_code(code) {
        Some(
            SQLITE_BUSY | SQLITE_LOCKED | SQLITE_READONLY | SQLITE_IOERR | SQLITE_FULL
            | SQLITE_CANTOPEN,
        ) => DbFailure::Unavailable,
        _ => DbFailure::Other,
    }
}

/// The driver's error inside `err`, if it has one.
fn sqlx_error(err: &DbErr) -> Option<&sqlx::Error> {
    match err {
        DbErr::Conn(RuntimeErr::SqlxError(err))
        | DbErr::Exec(RuntimeErr::SqlxError(err))
        | DbErr::Query(RuntimeErr::SqlxError(err)) => Some(err),
        _ => None,
    }
}

/// Whether SQLite answered "busy" or "locked": another connection holds the
/// lock it needed.
pub fn sqlite_busy(err: &DbErr) -> bool {
    let Some(sqlx::Error::Database(db)) = sqlx_error(err) else {
        return false;
    };
    is_sqlite(db.as_ref())
        && db
            .code()
            .and_then(|code| sqlite_primary_code(&code))
            .is_some_and(|code| matches!(code, SQLITE_BUSY | SQLITE_LOCKED))
}

/// Whether the connection was closed under a statement (a database restart, a
/// failover, an administrator): I/O errors, and PostgreSQL's admin_shutdown,
/// crash_shutdown and connection exceptions. Whether the statement ran is
/// then unknown: only one that cannot have written (a query, a `BEGIN`) is
/// safe to run again.
pub fn connection_closed(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code == "57P01" || code == "57P02" || code.starts_with("08")),
        _ => false,
    }
}

/// [`connection_closed`], for an error SeaORM returned.
pub fn closed_by_database(err: &DbErr) -> bool {
    sqlx_error(err).is_some_and(connection_closed)
}

impl From<ServiceError> for Status {
    fn from(err: ServiceError) -> Self {
        use ServiceError as E;
        let mut metadata = HashMap::new();
        let mut violations: Vec<FieldViolation> = Vec::new();
        let (code, reason) = match &err {
            E::ApiKeyMissing => (Code::Unauthenticated, ErrorReason::ApiKeyMissing),
            E::ApiKeyInvalid => (Code::Unauthenticated, ErrorReason::ApiKeyInvalid),
            E::AdminTokenInvalid => (Code::Unauthenticated, ErrorReason::AdminTokenInvalid),
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
            E::ConnectionNotFound => (Code::NotFound, ErrorReason::ConnectionNotFound),
            E::OrganizationNotFound => (Code::NotFound, ErrorReason::OrganizationNotFound),
            E::ApiKeyNotFound => (Code::NotFound, ErrorReason::ApiKeyNotFound),
            E::ConnectionAlreadyExists { connection_id } => {
                metadata.insert("connection_id".to_owned(), connection_id.to_string());
                (Code::AlreadyExists, ErrorReason::ConnectionAlreadyExists)
            }
            E::CallerNotSource => (Code::PermissionDenied, ErrorReason::CallerNotSource),
            E::CallerNotDestination => (Code::PermissionDenied, ErrorReason::CallerNotDestination),
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
            E::EtagMismatch => (Code::Aborted, ErrorReason::EtagMismatch),
            E::ConcurrentModification => (Code::Aborted, ErrorReason::ConcurrentModification),
            E::DatabaseUnavailable(_) => (Code::Unavailable, ErrorReason::DatabaseUnavailable),
            E::Internal(_) => (Code::Internal, ErrorReason::Internal),
        };

        match code {
            Code::Internal => tracing::error!(error = ?err, "internal error"),
            Code::Unavailable => tracing::warn!(error = ?err, "database unavailable"),
            _ => tracing::debug!(reason = reason.as_str_name(), message = %err, "request refused"),
        }

        let mut details =
            ErrorDetails::with_error_info(reason.as_str_name(), ERROR_DOMAIN, metadata);
        for violation in violations {
            details.add_bad_request_violation(violation.field, violation.description);
        }
        Status::with_error_details(code, err.to_string(), details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            "cannot activate a connection that is active"
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
    fn database_errors_never_leak_their_text() {
        let status = Status::from(ServiceError::from(DbErr::Custom(
            "SELECT secret FROM table".into(),
        )));
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error");
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

    #[test]
    fn postgres_codes_map_to_what_the_caller_can_do() {
        for (code, expected) in [
            ("40001", DbFailure::Conflict),
            ("40P01", DbFailure::Conflict),
            ("55P03", DbFailure::Conflict),
            ("08006", DbFailure::Unavailable),
            ("53300", DbFailure::Unavailable),
            ("57P01", DbFailure::Unavailable),
            ("57014", DbFailure::Unavailable),
            ("25006", DbFailure::Unavailable),
            ("58030", DbFailure::Unavailable),
            ("23505", DbFailure::Other),
            ("42P01", DbFailure::Other),
        ] {
            assert_eq!(classify_postgres_code(code), expected, "{code}");
        }
    }

    #[test]
    fn lost_connections_are_unavailable() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        let err = DbErr::Exec(RuntimeErr::SqlxError(std::sync::Arc::new(io)));
        assert_eq!(classify(&err), DbFailure::Unavailable);
        assert_eq!(
            classify(&DbErr::Conn(RuntimeErr::Internal("gone".into()))),
            DbFailure::Unavailable
        );
    }

    #[test]
    fn sqlite_busy_and_locked_codes_are_unavailable() {
        assert_eq!(classify_sqlite_code("5"), DbFailure::Unavailable);
        assert_eq!(classify_sqlite_code("517"), DbFailure::Unavailable); // BUSY_SNAPSHOT
        assert_eq!(classify_sqlite_code("6"), DbFailure::Unavailable);
        assert_eq!(classify_sqlite_code("2067"), DbFailure::Other); // CONSTRAINT_UNIQUE
        assert_eq!(classify_sqlite_code("778"), DbFailure::Unavailable); // IOERR_WRITE
        assert_eq!(classify_sqlite_code("13"), DbFailure::Unavailable); // FULL
    }
}
