//! The change log: every connection event gets a position in one total order
//! that every replica agrees on, and a request_id record keeps the change
//! token its call returned.
//!
//! A position names the transaction that wrote the event. On PostgreSQL it is
//! the writing transaction's ID (`pg_current_xact_id()`, 64 bits, never
//! reused): every transaction with a lower ID has ended once the oldest
//! running transaction (the snapshot's xmin) is past it, so a reader that
//! stops below xmin never misses an event that commits later. On SQLite,
//! writers hold the database's write lock in turn, so one more than the
//! highest position is both the next position and the commit order.
//!
//! Events written before this migration are numbered below zero, oldest
//! first, so they come before every later one.
//!
//! Down: the column, its index and the records' tokens are dropped.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ConnectionEvents::Table)
                    .add_column(
                        ColumnDef::new(ConnectionEvents::Position)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .to_owned(),
            )
            .await?;
        // The same statement on PostgreSQL and SQLite (3.33 and later).
        manager
            .get_connection()
            .execute_unprepared(
                "UPDATE connection_events SET position = numbered.n - numbered.total - 1 \
                 FROM (SELECT id, row_number() OVER (ORDER BY create_time, id) AS n, \
                              count(*) OVER () AS total \
                       FROM connection_events) AS numbered \
                 WHERE connection_events.id = numbered.id",
            )
            .await?;
        // One event per position: each write transaction writes one event.
        manager
            .create_index(
                Index::create()
                    .name("ux_connection_events_position")
                    .table(ConnectionEvents::Table)
                    .col(ConnectionEvents::Position)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(IdempotencyRecords::Table)
                    .add_column(
                        ColumnDef::new(IdempotencyRecords::ChangeToken)
                            .string()
                            .not_null()
                            .default(""),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(IdempotencyRecords::Table)
                    .drop_column(IdempotencyRecords::ChangeToken)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name("ux_connection_events_position")
                    .table(ConnectionEvents::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(ConnectionEvents::Table)
                    .drop_column(ConnectionEvents::Position)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum ConnectionEvents {
    Table,
    Position,
}

#[derive(DeriveIden)]
enum IdempotencyRecords {
    Table,
    ChangeToken,
}
