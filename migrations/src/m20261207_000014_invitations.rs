//! Invitations: the message a source sends with a creation or a
//! reactivation, and when a PENDING connection expires.
//!
//! `connections.invitation_message`, `connections.expire_time` and
//! `connections.expire_version` (the latest invitation's message; while
//! PENDING, when the service expires it, and the version that time belongs
//! to: the previous release changes a connection without clearing the time,
//! so a time counts only while the connection is still at its version),
//! `connection_events.message` (the message of a CREATED or REACTIVATED
//! event), and `connection_expiries`: one row per connection that has an
//! expire time, kept small and indexed by the time, so that the sweep that
//! expires connections never scans `connections` and no index has to be
//! built on that large table.
//!
//! Expand only: nullable columns without a default (on PostgreSQL only the
//! catalog changes) and a new table. The previous release neither reads nor
//! writes any of them: connections it creates or reactivates during an
//! upgrade have no expire time and never expire, and a row it leaves in
//! `connection_expiries` for a connection it activated is dropped by the
//! sweep, which checks the connection itself.
//!
//! Down: the table and the columns are dropped.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite alters one column per statement.
        for alteration in [
            Table::alter()
                .table(Connections::Table)
                .add_column(string_len_null(Connections::InvitationMessage, 4000))
                .to_owned(),
            Table::alter()
                .table(Connections::Table)
                .add_column(timestamp_with_time_zone_null(Connections::ExpireTime))
                .to_owned(),
            Table::alter()
                .table(Connections::Table)
                .add_column(big_integer_null(Connections::ExpireVersion))
                .to_owned(),
            Table::alter()
                .table(ConnectionEvents::Table)
                .add_column(string_len_null(ConnectionEvents::Message, 4000))
                .to_owned(),
        ] {
            manager.alter_table(alteration).await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(ConnectionExpiries::Table)
                    .col(uuid(ConnectionExpiries::ConnectionId).primary_key())
                    .col(timestamp_with_time_zone(ConnectionExpiries::ExpireTime))
                    .foreign_key(
                        ForeignKey::create()
                            .from(ConnectionExpiries::Table, ConnectionExpiries::ConnectionId)
                            .to(Connections::Table, Connections::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_connection_expiries_expire_time")
                    .table(ConnectionExpiries::Table)
                    .col(ConnectionExpiries::ExpireTime)
                    .col(ConnectionExpiries::ConnectionId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ConnectionExpiries::Table).to_owned())
            .await?;
        for alteration in [
            Table::alter()
                .table(ConnectionEvents::Table)
                .drop_column(ConnectionEvents::Message)
                .to_owned(),
            Table::alter()
                .table(Connections::Table)
                .drop_column(Connections::ExpireVersion)
                .to_owned(),
            Table::alter()
                .table(Connections::Table)
                .drop_column(Connections::ExpireTime)
                .to_owned(),
            Table::alter()
                .table(Connections::Table)
                .drop_column(Connections::InvitationMessage)
                .to_owned(),
        ] {
            manager.alter_table(alteration).await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Connections {
    Table,
    Id,
    InvitationMessage,
    ExpireTime,
    ExpireVersion,
}

#[derive(DeriveIden)]
enum ConnectionEvents {
    Table,
    Message,
}

#[derive(DeriveIden)]
enum ConnectionExpiries {
    Table,
    ConnectionId,
    ExpireTime,
}
