//! Pure domain types and rules: no I/O.

pub mod audit;
pub mod connection;
pub mod ids;
pub mod names;
pub mod organization;
pub mod page;
pub mod snapshot;
pub mod webhook;

pub use audit::{
    Actor, AuditAction, AuditEvent, AuditFilter, Credential, CredentialKind, TargetType,
};
pub use connection::{
    Action, Change, ConnectionEvent, ConnectionRecord, ConnectionState, DataType, DataTypes,
    DataTypesChange, EventActor, EventType, Invitation, NewEvent, Parties, Role, TransitionError,
    transition,
};
pub use ids::{ApiKeyId, ConnectionId, OrganizationId, WebhookEndpointId};
pub use names::Named;
pub use organization::{
    ActorKey, ApiKey, Caller, DisplayName, Organization, Policy, PolicyProblem,
};
pub use page::PageSize;
pub use snapshot::Snapshot;
pub use strum::VariantArray;
