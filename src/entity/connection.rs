//! The `connections` table.

use sea_orm::entity::prelude::*;

/// A connection row. Enumerations are stored by name; see `domain::connection`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "connections")]
pub struct Model {
    /// UUIDv7.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The source organization.
    pub source_organization_id: Uuid,
    /// The destination organization.
    pub destination_organization_id: Uuid,
    /// `PENDING`, `ACTIVE` or `INACTIVE`.
    pub state: String,
    /// Data type names, sorted, comma-separated.
    pub data_types: String,
    /// Incremented by every change; guards conditional updates.
    pub version: i64,
    /// Creation time.
    pub create_time: DateTimeUtc,
    /// Last change.
    pub update_time: DateTimeUtc,
    /// Last activation.
    pub activate_time: Option<DateTimeUtc>,
    /// Last deactivation.
    pub deactivate_time: Option<DateTimeUtc>,
    /// `SOURCE` or `DESTINATION`: who deactivated last.
    pub deactivated_by: Option<String>,
    /// Reason given with the last deactivation.
    pub deactivation_reason: Option<String>,
}

/// No relations are navigated through the ORM.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
