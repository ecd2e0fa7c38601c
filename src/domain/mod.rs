//! Pure domain types and rules: no I/O.

pub mod connection;
pub mod ids;
pub mod organization;
pub mod page;

pub use connection::{
    Action, ConnectionEvent, ConnectionRecord, ConnectionState, DataType, DataTypes, EventType,
    Parties, Role, TransitionError, transition,
};
pub use ids::{ApiKeyId, ConnectionId, OrganizationId};
pub use organization::{ApiKey, DisplayName, Organization};
pub use page::PageSize;
