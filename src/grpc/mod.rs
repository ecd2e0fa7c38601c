//! gRPC adapters: one file per service. Each handler takes the same steps:
//! authenticate the caller, validate and convert the request, call the service
//! layer, convert the result back. No business rules live here.

pub mod access_api;
pub mod admin_api;
pub mod auth;
pub mod call;
pub mod connection_api;
pub mod convert;
pub mod deadline;
pub mod drain;
pub mod incoming;
pub mod limits;
pub mod organization_api;
pub mod serve;
pub mod server;
pub mod status;
pub mod validate;
pub mod webhook_api;

pub use access_api::AccessApi;
pub use admin_api::AdminApi;
pub use auth::{AdminToken, Authenticator};
pub use connection_api::ConnectionApi;
pub use organization_api::OrganizationApi;
pub use webhook_api::WebhookApi;
