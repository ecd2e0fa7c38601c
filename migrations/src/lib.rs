//! Schema migrations for the connections service.
//!
//! Migrations are append-only: once released, a migration is never edited; a
//! schema change is a new migration at the end of [`Migrator::migrations`].
//! A migration only expands the schema, so that the previous release keeps
//! serving on it (see ARCHITECTURE.md, "Change the schema").
//!
//! Apply them with [`applied`] (as `connections::db::migrate` does), never
//! with `MigratorTrait::up`: see [`applied`] for why.

pub use sea_orm_migration::prelude::*;

pub mod applied;

mod m20261128_000001_create_organizations;
mod m20261128_000002_create_api_keys;
mod m20261128_000003_create_connections;
mod m20261128_000004_create_connection_events;
mod m20261128_000005_create_server_secrets;
mod m20261128_000006_create_idempotency_records;
mod m20261201_000007_idempotency_responses_as_protobuf;
mod m20261201_000008_change_log;
mod m20261201_000009_change_log_notify;
mod m20261207_000010_change_log_epochs;
mod m20261207_000011_event_actor_api_key;
mod m20261207_000012_audit_events;
mod m20261207_000013_webhooks;
mod m20261207_000014_invitations;
mod m20261207_000015_data_type_changes;
mod m20261207_000016_organization_policies;

/// The service's migrations, in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261128_000001_create_organizations::Migration),
            Box::new(m20261128_000002_create_api_keys::Migration),
            Box::new(m20261128_000003_create_connections::Migration),
            Box::new(m20261128_000004_create_connection_events::Migration),
            Box::new(m20261128_000005_create_server_secrets::Migration),
            Box::new(m20261128_000006_create_idempotency_records::Migration),
            Box::new(m20261201_000007_idempotency_responses_as_protobuf::Migration),
            Box::new(m20261201_000008_change_log::Migration),
            Box::new(m20261201_000009_change_log_notify::Migration),
            Box::new(m20261207_000010_change_log_epochs::Migration),
            Box::new(m20261207_000011_event_actor_api_key::Migration),
            Box::new(m20261207_000012_audit_events::Migration),
            Box::new(m20261207_000013_webhooks::Migration),
            Box::new(m20261207_000014_invitations::Migration),
            Box::new(m20261207_000015_data_type_changes::Migration),
            Box::new(m20261207_000016_organization_policies::Migration),
        ]
    }
}
