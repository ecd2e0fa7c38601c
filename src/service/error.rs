//! The service layer's error type: everything that can go wrong in a call,
//! in the terms of the API's rules. It knows neither gRPC nor protobuf; the
//! adapters map it to a status (`grpc::status`).

use sea_orm::DbErr;

use crate::{
    db::error::{DbFailure, classify},
    domain::{Action, ConnectionId, ConnectionState, Named},
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

/// Why an API key was refused. Unknown and revoked keys share one problem:
/// telling them apart would tell whoever holds a guessed or leaked secret
/// whether it was ever a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyProblem {
    /// The `authorization` metadata is not `Bearer <key>`.
    #[error("the authorization metadata must be \"Bearer <API key>\"")]
    NotBearer,
    /// Not shaped like an API key.
    #[error(
        "the API key is malformed: keys start with \"cnx_\" and are 47 characters long; send the \
         whole secret CreateApiKey returned"
    )]
    Malformed,
    /// Well-formed, but no key has this secret, or its key is revoked.
    #[error("the API key is not valid: it is unknown or revoked; ask your operator for a new one")]
    UnknownOrRevoked,
    /// The operator's admin token, sent where an organization's key belongs.
    #[error(
        "this is the admin token, which only AdminService takes; send an organization's API key"
    )]
    AdminToken,
}

/// Why a call to AdminService was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdminTokenProblem {
    /// The server was started without an admin token.
    #[error(
        "this server has no admin token configured, so AdminService is disabled; start it with \
         --admin-token or CONNECTIONS_ADMIN_TOKEN"
    )]
    NotConfigured,
    /// No `authorization` metadata.
    #[error("missing credentials: send the metadata \"authorization: Bearer <admin token>\"")]
    Missing,
    /// The `authorization` metadata is not `Bearer <token>`.
    #[error("the authorization metadata must be \"Bearer <admin token>\"")]
    NotBearer,
    /// An organization's API key, sent where the admin token belongs.
    #[error("this is an organization's API key; AdminService takes the admin token")]
    ApiKey,
    /// Some other token.
    #[error("the admin token is not valid")]
    Wrong,
}

/// Everything that can go wrong in a call, as the service layer reports it.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No `authorization` metadata.
    #[error("missing credentials: send the metadata \"authorization: Bearer <API key>\"")]
    ApiKeyMissing,
    /// An API key that cannot be used; each problem says what to do.
    #[error("{0}")]
    ApiKeyInvalid(KeyProblem),
    /// Too many API keys not seen lately were presented at once: the lookup
    /// was not made.
    #[error("too many unknown API keys are being presented; retry with backoff")]
    KeyLookupsThrottled,
    /// The admin token is missing or wrong, or none is configured.
    #[error("{0}")]
    AdminTokenInvalid(AdminTokenProblem),
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
    /// A change token that was not issued by the service, or was altered.
    #[error("{field} is not a change token issued by this service")]
    InvalidChangeToken {
        /// The request field it came in.
        field: &'static str,
    },
    /// The organization has as many watch streams open as it may.
    #[error("too many WatchConnectionEvents streams are open for this organization")]
    WatchLimitExceeded,
    /// The server is stopping: open streams end so that their clients
    /// reconnect, to another replica.
    #[error("the server is shutting down; reconnect and retry")]
    ServerStopping,
    /// A watch fell further behind than its buffer.
    #[error("the stream fell too far behind; resume with the last change_token received")]
    WatchConsumerTooSlow,
    /// No such connection, or the caller is not a party to it.
    #[error("connection not found")]
    ConnectionNotFound,
    /// No such organization.
    #[error("organization not found")]
    OrganizationNotFound,
    /// No such API key.
    #[error("API key not found")]
    ApiKeyNotFound,
    /// No such webhook endpoint, or it is another organization's.
    #[error("webhook endpoint not found")]
    WebhookEndpointNotFound,
    /// A webhook URL that deliveries may not go to.
    #[error("url {0}")]
    WebhookUrlNotAllowed(String),
    /// The organization has as many webhook endpoints as it may.
    #[error(
        "this organization already has {limit} webhook endpoints, the most allowed; delete one first"
    )]
    WebhookEndpointLimitExceeded {
        /// The limit.
        limit: usize,
    },
    /// This server has no key to seal webhook secrets with (PostgreSQL
    /// without `--webhook-key-file`).
    #[error(
        "webhooks are not configured on this server: its operator must start it with --webhook-key-file"
    )]
    WebhooksNotConfigured,
    /// An activation after the pending connection's expire time.
    #[error(
        "this connection's invitation expired before it was activated; the source must reactivate it"
    )]
    ConnectionExpired,
    /// An approval or a decline while no data types are pending.
    #[error(
        "no data types are waiting for approval on this connection; read it again to see its data types"
    )]
    NoPendingDataTypes,
    /// A proposal that keeps none of an active connection's data types.
    #[error(
        "an active connection must keep at least one of its data types while added ones wait for approval; keep one, or deactivate the connection first"
    )]
    NoDataTypesLeft,
    /// An update of the data types that changes nothing.
    #[error("the connection already has these data types, and none is waiting for approval")]
    DataTypesUnchanged,
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
    /// CheckAccess by an organization that is neither the source nor the
    /// destination it asks about.
    #[error("only the source or the destination may check access between them")]
    CallerNotParty,
    /// The connection's state does not allow the action.
    #[error("cannot {action} a connection that is {}", .current.as_str().to_lowercase())]
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
