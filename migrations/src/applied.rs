//! Which migrations a database has applied, and applying the pending ones.
//!
//! The first release (v0.1.0) applies its migrations with sea-orm-migration's
//! `Migrator::up`, which records each one in `seaql_migrations` and refuses to
//! run at all when that table names a migration it does not have. A replica
//! of that release applies migrations at every start, so a later release that
//! recorded its own migrations there would stop it from starting again (a
//! restart, or a rollback to it). So `seaql_migrations` keeps the first
//! release's migrations only, and every later migration is recorded in
//! `schema_migrations`, which the first release never reads. Later releases
//! read both, and serve on a schema that holds migrations they do not know
//! (a later release's: they only add to the schema).
//!
//! Apply migrations with these functions (through `connections::db`), never
//! with `MigratorTrait::up`, which would record every migration in
//! `seaql_migrations`.

use std::collections::BTreeSet;
use std::time::SystemTime;

use sea_orm_migration::{
    IntoSchemaManagerConnection, MigrationTrait, MigratorTrait, SchemaManager,
    prelude::*,
    sea_orm::{ConnectionTrait, Schema},
    seaql_migrations,
};

use crate::Migrator;

/// Where the first release's migrations are recorded (and where that release
/// looks for every migration).
pub const FIRST_RELEASE_TABLE: &str = "seaql_migrations";

/// Where every migration after the first release is recorded.
pub const LATER_TABLE: &str = "schema_migrations";

/// The migrations of the first release, v0.1.0, in order: the only ones
/// recorded in [`FIRST_RELEASE_TABLE`]. Never add to this list.
pub const FIRST_RELEASE: [&str; 10] = [
    "m20261128_000001_create_organizations",
    "m20261128_000002_create_api_keys",
    "m20261128_000003_create_connections",
    "m20261128_000004_create_connection_events",
    "m20261128_000005_create_server_secrets",
    "m20261128_000006_create_idempotency_records",
    "m20261201_000007_idempotency_responses_as_protobuf",
    "m20261201_000008_change_log",
    "m20261201_000009_change_log_notify",
    "m20261207_000010_change_log_epochs",
];

/// The table that records the migration `name`.
pub fn table_of(name: &str) -> &'static str {
    if FIRST_RELEASE.contains(&name) {
        FIRST_RELEASE_TABLE
    } else {
        LATER_TABLE
    }
}

/// A database's schema compared with the migrations of this build.
pub struct Status {
    /// This build's migrations that the database has not applied, in order.
    pub pending: Vec<Box<dyn MigrationTrait>>,
    /// Migrations the database has applied that this build does not know (a
    /// later release applied them), oldest first.
    pub unknown: Vec<String>,
}

/// Reads which migrations the database has applied. Changes nothing: a
/// database without migration records has every migration pending.
pub async fn status<'c, C>(db: C) -> Result<Status, DbErr>
where
    C: IntoSchemaManagerConnection<'c>,
{
    let manager = SchemaManager::new(db);
    // Names begin with their date, so this order is the order they were written in.
    let mut applied = BTreeSet::new();
    for table in [FIRST_RELEASE_TABLE, LATER_TABLE] {
        if !manager.has_table(table).await? {
            continue;
        }
        let select = Query::select()
            .column(seaql_migrations::Column::Version)
            .from(Alias::new(table))
            .to_owned();
        for row in manager.get_connection().query_all(&select).await? {
            applied.insert(row.try_get::<String>("", "version")?);
        }
    }
    let migrations = Migrator::migrations();
    let unknown = applied
        .iter()
        .filter(|name| !migrations.iter().any(|m| m.name() == name.as_str()))
        .cloned()
        .collect();
    let pending = migrations
        .into_iter()
        .filter(|migration| !applied.contains(migration.name()))
        .collect();
    Ok(Status { pending, unknown })
}

/// Applies `migration` and records it in its table (see [`table_of`]), in
/// the transaction (or on the connection) given: the caller makes sure that
/// no one else is migrating meanwhile.
pub async fn apply<'c, C>(db: C, migration: &dyn MigrationTrait) -> Result<(), DbErr>
where
    C: IntoSchemaManagerConnection<'c>,
{
    let manager = SchemaManager::new(db);
    let table = table_of(migration.name());
    let backend = manager.get_database_backend();
    let mut create = Schema::new(backend).create_table_from_entity(seaql_migrations::Entity);
    create.table(Alias::new(table)).if_not_exists();
    manager.get_connection().execute(&create).await?;
    migration.up(&manager).await?;
    let applied_at = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64);
    manager
        .exec_stmt(
            Query::insert()
                .into_table(Alias::new(table))
                .columns([
                    seaql_migrations::Column::Version,
                    seaql_migrations::Column::AppliedAt,
                ])
                .values_panic([migration.name().into(), applied_at.into()])
                .to_owned(),
        )
        .await
}
