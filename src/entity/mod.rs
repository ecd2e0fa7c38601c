//! Persistence, one module per table: its SeaORM entity (the schema itself is
//! in the `migration` crate), the queries that read and write it (each scoped
//! as the service needs, e.g. to the caller's own rows), and the mapping
//! between its rows and domain records. Errors are the database's; a row the
//! domain cannot read is a [`DbErr::Type`].

pub mod api_key;
pub mod audit_event;
pub mod change_log;
pub mod connection;
pub mod connection_event;
pub mod connection_expiry;
pub mod idempotency_record;
pub mod organization;
pub mod server_secret;
pub mod trusted_source;
pub mod webhook_attempt;
pub mod webhook_endpoint;
pub mod webhook_queue;

use sea_orm::DbErr;

/// A stored value the domain cannot read: a bug or a damaged row.
fn unreadable(table: &str, err: impl std::fmt::Display) -> DbErr {
    DbErr::Type(format!("unreadable {table} row: {err}"))
}
