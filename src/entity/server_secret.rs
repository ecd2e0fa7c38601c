//! The `server_secrets` table: keys shared by all replicas.

use sea_orm::entity::prelude::*;

/// A named random key.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "server_secrets")]
pub struct Model {
    /// The key's purpose, e.g. `page_token_hmac`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    /// Random bytes.
    pub value: Vec<u8>,
    /// Creation time.
    pub create_time: DateTimeUtc,
}

/// No relations are navigated through the ORM.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
