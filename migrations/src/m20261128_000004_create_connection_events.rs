use sea_orm_migration::{prelude::*, schema::*};

use crate::m20261128_000003_create_connections::Connections;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ConnectionEvents::Table)
                    .if_not_exists()
                    .col(uuid(ConnectionEvents::Id).primary_key())
                    .col(uuid(ConnectionEvents::ConnectionId))
                    .col(big_integer(ConnectionEvents::Sequence))
                    .col(string_len(ConnectionEvents::EventType, 16))
                    .col(string_len_null(ConnectionEvents::FromState, 16))
                    .col(string_len(ConnectionEvents::ToState, 16))
                    .col(uuid(ConnectionEvents::ActorOrganizationId))
                    .col(string_len(ConnectionEvents::ActorRole, 16))
                    .col(text_null(ConnectionEvents::Reason))
                    .col(timestamp_with_time_zone(ConnectionEvents::CreateTime))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_connection_events_connection")
                            .from(ConnectionEvents::Table, ConnectionEvents::ConnectionId)
                            .to(Connections::Table, Connections::Id),
                    )
                    .to_owned(),
            )
            .await?;
        // One event per position in a connection's history: a gap-free sequence.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("ux_connection_events_connection_sequence")
                    .table(ConnectionEvents::Table)
                    .col(ConnectionEvents::ConnectionId)
                    .col(ConnectionEvents::Sequence)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ConnectionEvents::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum ConnectionEvents {
    Table,
    Id,
    ConnectionId,
    Sequence,
    EventType,
    FromState,
    ToState,
    ActorOrganizationId,
    ActorRole,
    Reason,
    CreateTime,
}
