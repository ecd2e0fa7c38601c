//! The `api_keys` table.

use sea_orm::entity::prelude::*;

/// An API key; only the SHA-256 digest of its secret is stored.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_keys")]
pub struct Model {
    /// UUIDv7.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The organization the key acts for.
    pub organization_id: Uuid,
    /// Human-readable name.
    pub display_name: String,
    /// The non-secret start of the key.
    pub prefix: String,
    /// SHA-256 of the secret (unique).
    pub secret_sha256: Vec<u8>,
    /// Creation time.
    pub create_time: DateTimeUtc,
    /// Revocation time; `None` while valid.
    pub revoke_time: Option<DateTimeUtc>,
}

/// No relations are navigated through the ORM.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
