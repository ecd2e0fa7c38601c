//! The `idempotency_records` table: results of mutating calls by request_id.

use sea_orm::entity::prelude::*;

/// The recorded result of one mutating call.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "idempotency_records")]
pub struct Model {
    /// The calling organization.
    #[sea_orm(primary_key, auto_increment = false)]
    pub organization_id: Uuid,
    /// The RPC, e.g. `ActivateConnection`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub method: String,
    /// The caller's request_id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub request_id: String,
    /// SHA-256 of the request's parameters.
    pub request_sha256: Vec<u8>,
    /// The response the call returned, encoded as the API's protobuf
    /// message; replayed to retries. Empty until the call completes.
    pub response_proto: Vec<u8>,
    /// The change token the call returned; empty for calls recorded before
    /// change tokens existed.
    pub change_token: String,
    /// When the first call committed.
    pub create_time: DateTimeUtc,
}

/// No relations are navigated through the ORM.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
