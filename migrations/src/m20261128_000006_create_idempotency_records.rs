use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// One row per (caller organization, method, request_id) of a mutating call
/// that succeeded, written in the same transaction as the change it records.
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(IdempotencyRecords::Table)
                    .if_not_exists()
                    .col(uuid(IdempotencyRecords::OrganizationId))
                    .col(string_len(IdempotencyRecords::Method, 64))
                    .col(string_len(IdempotencyRecords::RequestId, 255))
                    // SHA-256 of the request's parameters.
                    .col(binary_len(IdempotencyRecords::RequestSha256, 32))
                    // The result returned to the first call, replayed to retries.
                    .col(text(IdempotencyRecords::Response))
                    .col(timestamp_with_time_zone(IdempotencyRecords::CreateTime))
                    .primary_key(
                        Index::create()
                            .col(IdempotencyRecords::OrganizationId)
                            .col(IdempotencyRecords::Method)
                            .col(IdempotencyRecords::RequestId),
                    )
                    .to_owned(),
            )
            .await?;
        // The expiry sweep deletes the oldest records first.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("ix_idempotency_records_create_time")
                    .table(IdempotencyRecords::Table)
                    .col(IdempotencyRecords::CreateTime)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(IdempotencyRecords::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum IdempotencyRecords {
    Table,
    OrganizationId,
    Method,
    RequestId,
    RequestSha256,
    Response,
    CreateTime,
}
