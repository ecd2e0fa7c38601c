//! Data types that change: the types an ACTIVE connection's source proposed
//! and its destination has yet to approve, and what each change of the
//! data types changed.
//!
//! `connections.pending_data_types` and `connections.pending_data_types_version`
//! (the pending types, and the version they were set for: the previous
//! release changes a connection without clearing them, so they count only
//! while the connection is ACTIVE at that version), and four columns of
//! `connection_events` that a DATA_TYPES_* event fills: the data types
//! allowed and pending before it and after it.
//!
//! Expand only: nullable columns without a default (on PostgreSQL only the
//! catalog changes). The previous release neither reads nor writes them.
//!
//! Down: the columns are dropped.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Room for every data type's name, comma-separated.
const TYPES_LEN: u32 = 200;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite alters one column per statement.
        let mut alterations = vec![
            Table::alter()
                .table(Connections::Table)
                .add_column(string_len_null(Connections::PendingDataTypes, TYPES_LEN))
                .to_owned(),
            Table::alter()
                .table(Connections::Table)
                .add_column(big_integer_null(Connections::PendingDataTypesVersion))
                .to_owned(),
        ];
        for column in EVENT_COLUMNS {
            alterations.push(
                Table::alter()
                    .table(ConnectionEvents::Table)
                    .add_column(string_len_null(column, TYPES_LEN))
                    .to_owned(),
            );
        }
        for alteration in alterations {
            manager.alter_table(alteration).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let mut alterations = Vec::new();
        for column in EVENT_COLUMNS.into_iter().rev() {
            alterations.push(
                Table::alter()
                    .table(ConnectionEvents::Table)
                    .drop_column(column)
                    .to_owned(),
            );
        }
        for column in [
            Connections::PendingDataTypesVersion,
            Connections::PendingDataTypes,
        ] {
            alterations.push(
                Table::alter()
                    .table(Connections::Table)
                    .drop_column(column)
                    .to_owned(),
            );
        }
        for alteration in alterations {
            manager.alter_table(alteration).await?;
        }
        Ok(())
    }
}

const EVENT_COLUMNS: [ConnectionEvents; 4] = [
    ConnectionEvents::TypesBefore,
    ConnectionEvents::PendingTypesBefore,
    ConnectionEvents::TypesAfter,
    ConnectionEvents::PendingTypesAfter,
];

#[derive(DeriveIden)]
enum Connections {
    Table,
    PendingDataTypes,
    PendingDataTypesVersion,
}

#[derive(DeriveIden, Clone, Copy)]
enum ConnectionEvents {
    Table,
    TypesBefore,
    PendingTypesBefore,
    TypesAfter,
    PendingTypesAfter,
}
