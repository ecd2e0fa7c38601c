//! The `connection_events` table.

use sea_orm::entity::prelude::*;

/// One entry of a connection's history.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "connection_events")]
pub struct Model {
    /// UUIDv7.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The connection.
    pub connection_id: Uuid,
    /// 1, 2, 3, ... per connection (unique with `connection_id`).
    pub sequence: i64,
    /// `CREATED`, `ACTIVATED`, `DEACTIVATED` or `REACTIVATED`.
    pub event_type: String,
    /// State before; `None` for the creation.
    pub from_state: Option<String>,
    /// State after.
    pub to_state: String,
    /// The organization that made the change.
    pub actor_organization_id: Uuid,
    /// `SOURCE` or `DESTINATION`.
    pub actor_role: String,
    /// Reason given, if any.
    pub reason: Option<String>,
    /// When it happened.
    pub create_time: DateTimeUtc,
}

/// No relations are navigated through the ORM.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
