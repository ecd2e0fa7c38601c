//! Destinations' policies: the source organizations each organization
//! trusts, and the mark on an activation the service made on a
//! destination's behalf.
//!
//! `trusted_sources`: one row per (organization, source it trusts), keyed by
//! both, so that "does D trust S" is one index lookup and D's list one range.
//! `connection_events.by_policy`: true on an ACTIVATED event the service
//! wrote because the destination trusts the source; empty otherwise.
//!
//! Expand only: a new table and a nullable column without a default. The
//! previous release neither reads nor writes them; while it serves during an
//! upgrade, connections it creates are not activated by policy.
//!
//! Down: the column and the table are dropped.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(TrustedSources::Table)
                    .col(uuid(TrustedSources::OrganizationId))
                    .col(uuid(TrustedSources::SourceOrganizationId))
                    .col(timestamp_with_time_zone(TrustedSources::CreateTime))
                    .primary_key(
                        Index::create()
                            .col(TrustedSources::OrganizationId)
                            .col(TrustedSources::SourceOrganizationId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(TrustedSources::Table, TrustedSources::OrganizationId)
                            .to(Organizations::Table, Organizations::Id),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(TrustedSources::Table, TrustedSources::SourceOrganizationId)
                            .to(Organizations::Table, Organizations::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(ConnectionEvents::Table)
                    .add_column(boolean_null(ConnectionEvents::ByPolicy))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ConnectionEvents::Table)
                    .drop_column(ConnectionEvents::ByPolicy)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(TrustedSources::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum TrustedSources {
    Table,
    OrganizationId,
    SourceOrganizationId,
    CreateTime,
}

#[derive(DeriveIden)]
enum Organizations {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum ConnectionEvents {
    Table,
    ByPolicy,
}
