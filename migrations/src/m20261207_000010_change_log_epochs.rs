//! Change log epochs: positions that go on rising after the database is
//! moved to another cluster.
//!
//! On PostgreSQL a position is the writing transaction's ID plus the offset
//! of the current epoch. Transaction IDs belong to one database cluster:
//! after a dump and restore into another they start lower. The server then
//! starts a new epoch (a new row) whose offset puts every new position
//! above the old ones. This migration adds the table and epoch 0, offset 0,
//! so positions stay what they were. Unused on SQLite, whose positions are
//! kept in the database file.
//!
//! Expand only: a new table; the previous release neither reads nor needs it.
//!
//! Down: the table is dropped.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ChangeLogEpochs::Table)
                    .if_not_exists()
                    .col(big_integer(ChangeLogEpochs::Epoch).primary_key())
                    .col(big_integer(ChangeLogEpochs::XidOffset))
                    .col(big_integer(ChangeLogEpochs::FirstPosition))
                    .col(timestamp_with_time_zone(ChangeLogEpochs::CreateTime))
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::insert()
                    .into_table(ChangeLogEpochs::Table)
                    .columns([
                        ChangeLogEpochs::Epoch,
                        ChangeLogEpochs::XidOffset,
                        ChangeLogEpochs::FirstPosition,
                        ChangeLogEpochs::CreateTime,
                    ])
                    .values_panic([
                        0i64.into(),
                        0i64.into(),
                        i64::MIN.into(),
                        Expr::current_timestamp(),
                    ])
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ChangeLogEpochs::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum ChangeLogEpochs {
    Table,
    Epoch,
    XidOffset,
    FirstPosition,
    CreateTime,
}
