use sea_orm_migration::{prelude::*, schema::*};

use crate::m20261128_000001_create_organizations::Organizations;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Connections::Table)
                    .if_not_exists()
                    .col(uuid(Connections::Id).primary_key())
                    .col(uuid(Connections::SourceOrganizationId))
                    .col(uuid(Connections::DestinationOrganizationId))
                    .col(string_len(Connections::State, 16))
                    .col(string_len(Connections::DataTypes, 128))
                    // Incremented by every change; the etag is derived from it and
                    // every state change is conditional on it.
                    .col(big_integer(Connections::Version))
                    .col(timestamp_with_time_zone(Connections::CreateTime))
                    .col(timestamp_with_time_zone(Connections::UpdateTime))
                    .col(timestamp_with_time_zone_null(Connections::ActivateTime))
                    .col(timestamp_with_time_zone_null(Connections::DeactivateTime))
                    .col(string_len_null(Connections::DeactivatedBy, 16))
                    .col(text_null(Connections::DeactivationReason))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_connections_source")
                            .from(Connections::Table, Connections::SourceOrganizationId)
                            .to(Organizations::Table, Organizations::Id),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_connections_destination")
                            .from(Connections::Table, Connections::DestinationOrganizationId)
                            .to(Organizations::Table, Organizations::Id),
                    )
                    .to_owned(),
            )
            .await?;
        // At most one connection per (source, destination) pair.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("ux_connections_source_destination")
                    .table(Connections::Table)
                    .col(Connections::SourceOrganizationId)
                    .col(Connections::DestinationOrganizationId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // Keyset pagination, newest (highest UUIDv7) first, for each side;
        // with a state filter too, so a page costs the same however rare the
        // state is.
        use Connections::{DestinationOrganizationId, Id, SourceOrganizationId, State};
        let indexes: [(&str, &[Connections]); 4] = [
            ("ix_connections_source_id", &[SourceOrganizationId, Id]),
            (
                "ix_connections_destination_id",
                &[DestinationOrganizationId, Id],
            ),
            (
                "ix_connections_source_state_id",
                &[SourceOrganizationId, State, Id],
            ),
            (
                "ix_connections_destination_state_id",
                &[DestinationOrganizationId, State, Id],
            ),
        ];
        for (name, columns) in indexes {
            let mut index = Index::create();
            index.if_not_exists().name(name).table(Connections::Table);
            for column in columns {
                index.col(*column);
            }
            manager.create_index(index).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Connections::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden, Clone, Copy)]
pub enum Connections {
    Table,
    Id,
    SourceOrganizationId,
    DestinationOrganizationId,
    State,
    DataTypes,
    Version,
    CreateTime,
    UpdateTime,
    ActivateTime,
    DeactivateTime,
    DeactivatedBy,
    DeactivationReason,
}
