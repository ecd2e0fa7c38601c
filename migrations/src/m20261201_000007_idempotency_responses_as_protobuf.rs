//! Idempotency records keep the response their call returned, encoded as the
//! API's protobuf message (`connections.v1.Connection`), in
//! `response_proto`, instead of a JSON copy of the service's internal record
//! in `response`. A replay then returns what the first call returned, however
//! the service's types change later.
//!
//! Records written before this migration are converted. The conversion uses
//! copies of the message and of the JSON form as they were when this
//! migration was written: like every migration, it never changes.
//!
//! Down: the records are deleted (they are kept 24 hours to answer retries;
//! a retry after a downgrade runs afresh) and the JSON column restored.

use sea_orm_migration::{
    prelude::*,
    sea_orm::{ConnectionTrait, FromQueryResult},
};
use sha2::{Digest, Sha256};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(IdempotencyRecords::Table)
                    .add_column(
                        ColumnDef::new(IdempotencyRecords::ResponseProto)
                            .binary()
                            .not_null()
                            .default(Vec::<u8>::new()),
                    )
                    .to_owned(),
            )
            .await?;

        let db = manager.get_connection();
        let select = Query::select()
            .columns([
                IdempotencyRecords::OrganizationId,
                IdempotencyRecords::Method,
                IdempotencyRecords::RequestId,
                IdempotencyRecords::Response,
            ])
            .from(IdempotencyRecords::Table)
            .to_owned();
        for row in db.query_all(&select).await? {
            let record = OldRecord::from_query_result(&row, "")?;
            let encoded = encode(&record.response).map_err(|err| {
                DbErr::Migration(format!(
                    "cannot convert the idempotency record {} of {}: {err}",
                    record.request_id, record.organization_id
                ))
            })?;
            let update = Query::update()
                .table(IdempotencyRecords::Table)
                .value(IdempotencyRecords::ResponseProto, encoded)
                .and_where(Expr::col(IdempotencyRecords::OrganizationId).eq(record.organization_id))
                .and_where(Expr::col(IdempotencyRecords::Method).eq(record.method))
                .and_where(Expr::col(IdempotencyRecords::RequestId).eq(record.request_id))
                .to_owned();
            db.execute(&update).await?;
        }

        manager
            .alter_table(
                Table::alter()
                    .table(IdempotencyRecords::Table)
                    .drop_column(IdempotencyRecords::Response)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute(
            &Query::delete()
                .from_table(IdempotencyRecords::Table)
                .to_owned(),
        )
        .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(IdempotencyRecords::Table)
                    .add_column(
                        ColumnDef::new(IdempotencyRecords::Response)
                            .text()
                            .not_null()
                            .default(""),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(IdempotencyRecords::Table)
                    .drop_column(IdempotencyRecords::ResponseProto)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum IdempotencyRecords {
    Table,
    OrganizationId,
    Method,
    RequestId,
    Response,
    ResponseProto,
}

/// A record as stored before this migration.
#[derive(FromQueryResult)]
struct OldRecord {
    organization_id: uuid::Uuid,
    method: String,
    request_id: String,
    response: String,
}

/// The JSON the service stored: its connection record.
#[derive(serde::Deserialize)]
struct OldConnection {
    id: uuid::Uuid,
    parties: OldParties,
    state: String,
    data_types: Vec<String>,
    version: i64,
    create_time: chrono::DateTime<chrono::Utc>,
    update_time: chrono::DateTime<chrono::Utc>,
    activate_time: Option<chrono::DateTime<chrono::Utc>>,
    deactivate_time: Option<chrono::DateTime<chrono::Utc>>,
    deactivated_by: Option<String>,
    deactivation_reason: Option<String>,
}

#[derive(serde::Deserialize)]
struct OldParties {
    source: uuid::Uuid,
    destination: uuid::Uuid,
}

/// `connections.v1.Connection` as it was when this migration was written.
#[derive(Clone, PartialEq, prost::Message)]
struct Connection {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(string, tag = "2")]
    source_organization_id: String,
    #[prost(string, tag = "3")]
    destination_organization_id: String,
    #[prost(int32, tag = "4")]
    state: i32,
    #[prost(int32, repeated, tag = "5")]
    data_types: Vec<i32>,
    #[prost(message, optional, tag = "6")]
    create_time: Option<prost_types::Timestamp>,
    #[prost(message, optional, tag = "7")]
    update_time: Option<prost_types::Timestamp>,
    #[prost(message, optional, tag = "8")]
    activate_time: Option<prost_types::Timestamp>,
    #[prost(message, optional, tag = "9")]
    deactivate_time: Option<prost_types::Timestamp>,
    #[prost(int32, tag = "10")]
    deactivated_by: i32,
    #[prost(string, tag = "11")]
    deactivation_reason: String,
    #[prost(string, tag = "12")]
    etag: String,
}

/// The protobuf form of a stored JSON response. An empty response (a claim
/// whose call never completed) stays empty.
fn encode(json: &str) -> Result<Vec<u8>, String> {
    if json.is_empty() {
        return Ok(Vec::new());
    }
    let old: OldConnection = serde_json::from_str(json).map_err(|err| err.to_string())?;
    let number = |name: &str, names: &[&str]| {
        names
            .iter()
            .position(|known| *known == name)
            .map(|i| <i32 as TryFrom<usize>>::try_from(i + 1).expect("few names"))
            .ok_or_else(|| format!("unknown name {name:?}"))
    };
    let state = number(&old.state, &["PENDING", "ACTIVE", "INACTIVE"])?;
    let data_types = old
        .data_types
        .iter()
        .map(|name| number(name, &["INQUIRY", "VERIFICATION", "ACCOUNT", "TRANSACTION"]))
        .collect::<Result<_, _>>()?;
    let deactivated_by = match &old.deactivated_by {
        Some(role) => number(role, &["SOURCE", "DESTINATION"])?,
        None => 0,
    };
    let timestamp = |time: chrono::DateTime<chrono::Utc>| prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: <i32 as TryFrom<u32>>::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    };
    let message = Connection {
        id: old.id.hyphenated().to_string(),
        source_organization_id: old.parties.source.hyphenated().to_string(),
        destination_organization_id: old.parties.destination.hyphenated().to_string(),
        state,
        data_types,
        create_time: Some(timestamp(old.create_time)),
        update_time: Some(timestamp(old.update_time)),
        activate_time: old.activate_time.map(timestamp),
        deactivate_time: old.deactivate_time.map(timestamp),
        deactivated_by,
        deactivation_reason: old.deactivation_reason.unwrap_or_default(),
        etag: etag(old.id, old.version),
    };
    Ok(prost::Message::encode_to_vec(&message))
}

/// The etag of version `version` of connection `id`, as the service computes it.
fn etag(id: uuid::Uuid, version: i64) -> String {
    let mut hasher = Sha256::new();
    hasher.update(id.as_bytes());
    hasher.update(version.to_be_bytes());
    hasher.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
