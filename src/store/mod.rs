//! Persistence, one module per table: the queries that read and write it
//! (each scoped as the service needs, e.g. to the caller's own rows) and the
//! mapping between its rows and domain records. Errors are the database's;
//! a row the domain cannot read is a [`DbErr::Type`].

pub mod connection_events;
pub mod connections;

use sea_orm::DbErr;

/// A stored value the domain cannot read: a bug or a damaged row.
fn unreadable(table: &str, err: impl std::fmt::Display) -> DbErr {
    DbErr::Type(format!("unreadable {table} row: {err}"))
}
