//! Webhooks: each organization's endpoints, the queue of events each endpoint
//! has still to be sent, and the record of every delivery attempt.
//!
//! A write of a connection event queues it, in the same transaction, for
//! every endpoint of both parties that takes its type; a replica holding an
//! endpoint's lease (`lease_owner` until `lease_expire_time`) sends the
//! queue, per connection in log order, and records each attempt.
//!
//! Expand only: new tables; the previous release neither reads nor writes
//! them (its writes queue nothing, so events it writes during an upgrade
//! reach endpoints only through RecoverWebhookDeliveries).
//!
//! Down: the tables are dropped.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(WebhookEndpoints::Table)
                    .col(uuid(WebhookEndpoints::Id).primary_key())
                    .col(uuid(WebhookEndpoints::OrganizationId))
                    .col(string_len(WebhookEndpoints::Url, 2048))
                    .col(string_len(WebhookEndpoints::Description, 500).default(""))
                    // "" for every type, else ",created,activated," and so on.
                    .col(string_len(WebhookEndpoints::EventTypes, 200).default(""))
                    .col(boolean(WebhookEndpoints::Disabled).default(false))
                    .col(string_len_null(WebhookEndpoints::DisabledReason, 500))
                    // Encrypted with the server's webhook key (AES-SIV, the
                    // endpoint's ID as associated data).
                    .col(binary(WebhookEndpoints::Secret))
                    .col(binary_null(WebhookEndpoints::PreviousSecret))
                    .col(timestamp_with_time_zone_null(
                        WebhookEndpoints::PreviousSecretExpireTime,
                    ))
                    // Since when every attempt has failed; none after a success.
                    .col(timestamp_with_time_zone_null(
                        WebhookEndpoints::FailingSince,
                    ))
                    .col(uuid_null(WebhookEndpoints::LeaseOwner))
                    .col(timestamp_with_time_zone_null(
                        WebhookEndpoints::LeaseExpireTime,
                    ))
                    .col(timestamp_with_time_zone(WebhookEndpoints::CreateTime))
                    .col(timestamp_with_time_zone(WebhookEndpoints::UpdateTime))
                    .foreign_key(
                        ForeignKey::create()
                            .from(WebhookEndpoints::Table, WebhookEndpoints::OrganizationId)
                            .to(Organizations::Table, Organizations::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("webhook_endpoints_by_organization")
                    .table(WebhookEndpoints::Table)
                    .col(WebhookEndpoints::OrganizationId)
                    .col(WebhookEndpoints::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(WebhookQueue::Table)
                    .col(uuid(WebhookQueue::EndpointId))
                    .col(uuid(WebhookQueue::EventId))
                    .col(uuid(WebhookQueue::ConnectionId))
                    .col(big_integer(WebhookQueue::Position))
                    .col(string_len(WebhookQueue::ChangeToken, 4096))
                    .col(text(WebhookQueue::Body))
                    .col(integer(WebhookQueue::Attempts).default(0))
                    .col(timestamp_with_time_zone(WebhookQueue::NextAttemptTime))
                    .col(timestamp_with_time_zone(WebhookQueue::EnqueueTime))
                    .primary_key(
                        Index::create()
                            .col(WebhookQueue::EndpointId)
                            .col(WebhookQueue::EventId),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("webhook_queue_in_order")
                    .table(WebhookQueue::Table)
                    .col(WebhookQueue::EndpointId)
                    .col(WebhookQueue::ConnectionId)
                    .col(WebhookQueue::Position)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(WebhookAttempts::Table)
                    // UUIDv7: in the order the attempts were made.
                    .col(uuid(WebhookAttempts::Id).primary_key())
                    .col(uuid(WebhookAttempts::EndpointId))
                    .col(uuid(WebhookAttempts::EventId))
                    .col(string_len(WebhookAttempts::ChangeToken, 4096))
                    .col(integer(WebhookAttempts::Attempt))
                    .col(integer_null(WebhookAttempts::HttpStatus))
                    .col(string_len_null(WebhookAttempts::Error, 1200))
                    .col(big_integer(WebhookAttempts::DurationMicros))
                    .col(timestamp_with_time_zone(WebhookAttempts::AttemptTime))
                    .col(timestamp_with_time_zone_null(
                        WebhookAttempts::NextAttemptTime,
                    ))
                    // 1 succeeded, 2 will retry, 3 gave up.
                    .col(small_integer(WebhookAttempts::Outcome))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("webhook_attempts_by_endpoint")
                    .table(WebhookAttempts::Table)
                    .col(WebhookAttempts::EndpointId)
                    .col(WebhookAttempts::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            WebhookAttempts::Table.into_iden(),
            WebhookQueue::Table.into_iden(),
            WebhookEndpoints::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Organizations {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum WebhookEndpoints {
    Table,
    Id,
    OrganizationId,
    Url,
    Description,
    EventTypes,
    Disabled,
    DisabledReason,
    Secret,
    PreviousSecret,
    PreviousSecretExpireTime,
    FailingSince,
    LeaseOwner,
    LeaseExpireTime,
    CreateTime,
    UpdateTime,
}

#[derive(DeriveIden)]
enum WebhookQueue {
    Table,
    EndpointId,
    EventId,
    ConnectionId,
    Position,
    ChangeToken,
    Body,
    Attempts,
    NextAttemptTime,
    EnqueueTime,
}

#[derive(DeriveIden)]
enum WebhookAttempts {
    Table,
    Id,
    EndpointId,
    EventId,
    ChangeToken,
    Attempt,
    HttpStatus,
    Error,
    DurationMicros,
    AttemptTime,
    NextAttemptTime,
    Outcome,
}
