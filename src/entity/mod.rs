//! SeaORM entities, one per table (see the `migration` crate for the schema).

pub mod api_key;
pub mod connection;
pub mod connection_event;
pub mod idempotency_record;
pub mod organization;
pub mod server_secret;
