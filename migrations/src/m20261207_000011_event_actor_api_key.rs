//! The API key that made each change: every connection event records the
//! acting key's ID and its display name as it was at the time of the call
//! (a copy, not a reference: the history says what the key was called when
//! it acted). Never the secret.
//!
//! Expand only: two nullable columns without a default, so adding them
//! rewrites nothing (on PostgreSQL only the catalog changes). Events written
//! before this migration, and those the previous release writes during a
//! rolling upgrade (its insert names neither column), have neither: the API
//! shows them with the key fields empty.
//!
//! Down: the columns are dropped.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        alter(
            manager,
            [
                events(|t| t.add_column(uuid_null(ConnectionEvents::ActorApiKeyId))),
                // As long as a key's display name may be.
                events(|t| {
                    t.add_column(string_len_null(
                        ConnectionEvents::ActorApiKeyDisplayName,
                        200,
                    ))
                }),
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        alter(
            manager,
            [
                events(|t| t.drop_column(ConnectionEvents::ActorApiKeyDisplayName)),
                events(|t| t.drop_column(ConnectionEvents::ActorApiKeyId)),
            ],
        )
        .await
    }
}

/// `connection_events`, altered by `change`.
fn events(
    change: impl FnOnce(&mut TableAlterStatement) -> &mut TableAlterStatement,
) -> TableAlterStatement {
    change(Table::alter().table(ConnectionEvents::Table)).to_owned()
}

/// Runs `alterations` in order, one statement each: SQLite alters one column
/// at a time.
async fn alter(
    manager: &SchemaManager<'_>,
    alterations: impl IntoIterator<Item = TableAlterStatement>,
) -> Result<(), DbErr> {
    for alteration in alterations {
        manager.alter_table(alteration).await?;
    }
    Ok(())
}

#[derive(DeriveIden)]
enum ConnectionEvents {
    Table,
    ActorApiKeyId,
    ActorApiKeyDisplayName,
}
