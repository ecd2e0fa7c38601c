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
                    .table(ApiKeys::Table)
                    .if_not_exists()
                    .col(uuid(ApiKeys::Id).primary_key())
                    .col(uuid(ApiKeys::OrganizationId))
                    .col(string_len(ApiKeys::DisplayName, 200))
                    .col(string_len(ApiKeys::Prefix, 32))
                    // SHA-256 of the secret; the secret itself is never stored.
                    .col(binary_len(ApiKeys::SecretSha256, 32))
                    .col(timestamp_with_time_zone(ApiKeys::CreateTime))
                    .col(timestamp_with_time_zone_null(ApiKeys::RevokeTime))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_api_keys_organization")
                            .from(ApiKeys::Table, ApiKeys::OrganizationId)
                            .to(Organizations::Table, Organizations::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("ux_api_keys_secret_sha256")
                    .table(ApiKeys::Table)
                    .col(ApiKeys::SecretSha256)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("ix_api_keys_organization_id")
                    .table(ApiKeys::Table)
                    .col(ApiKeys::OrganizationId)
                    .col(ApiKeys::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ApiKeys::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    Id,
    OrganizationId,
    DisplayName,
    Prefix,
    SecretSha256,
    CreateTime,
    RevokeTime,
}
