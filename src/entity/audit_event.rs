//! The `audit_events` table: the append-only audit log of operator actions
//! and of organizations' changes to their webhook endpoints (the database
//! refuses to change or delete a row). Its rows, the queries
//! that append and list them, and the mapping to domain entries.

use std::str::FromStr;

use sea_orm::{ActiveValue::Set, QueryOrder, QuerySelect, entity::prelude::*};

use super::unreadable;
use crate::domain::{AuditEvent, AuditFilter};

/// One audit log entry.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_events")]
pub struct Model {
    /// UUIDv7.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// When.
    pub occur_time: DateTimeUtc,
    /// e.g. `api_key.revoked`.
    pub action: String,
    /// `admin_token`, `cli` or `api_key`.
    pub credential_kind: String,
    /// The admin token's fingerprint or the API key's ID; `None` for `cli`.
    pub credential_id: Option<String>,
    /// `organization`, `api_key` or `webhook_endpoint`.
    pub target_type: String,
    /// The target's ID.
    pub target_id: Uuid,
    /// The organization the target is, or belongs to.
    pub organization_id: Uuid,
    /// The target's display name then.
    pub target_display_name: String,
    /// The client's address, for calls over the network.
    pub peer: Option<String>,
    /// The call's request ID, for calls over the network.
    pub request_id: Option<String>,
}

/// No relations are navigated through the ORM.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// Appends `event`.
pub async fn insert(conn: &impl ConnectionTrait, event: &AuditEvent) -> Result<(), DbErr> {
    Entity::insert(ActiveModel {
        id: Set(event.id),
        occur_time: Set(event.occur_time),
        action: Set(event.action.to_string()),
        credential_kind: Set(event.credential_kind.to_string()),
        credential_id: Set(event.credential_id.clone()),
        target_type: Set(event.target_type.to_string()),
        target_id: Set(event.target_id),
        organization_id: Set(event.organization_id.uuid()),
        target_display_name: Set(event.target_display_name.clone()),
        peer: Set(event.peer.clone()),
        request_id: Set(event.request_id.clone()),
    })
    .exec_without_returning(conn)
    .await?;
    Ok(())
}

/// Entries matching `filter` after `after`, oldest first: at most `limit`.
pub async fn list(
    conn: &impl ConnectionTrait,
    filter: &AuditFilter,
    after: Option<Uuid>,
    limit: u64,
) -> Result<Vec<AuditEvent>, DbErr> {
    let mut query = Entity::find();
    if let Some(after) = after {
        query = query.filter(Column::Id.gt(after));
    }
    if let Some(action) = filter.action {
        query = query.filter(Column::Action.eq(action.to_string()));
    }
    if let Some(target) = filter.target_id {
        query = query.filter(Column::TargetId.eq(target));
    }
    if let Some(start) = filter.start_time {
        query = query.filter(Column::OccurTime.gte(start));
    }
    if let Some(end) = filter.end_time {
        query = query.filter(Column::OccurTime.lt(end));
    }
    let rows = query
        .order_by_asc(Column::Id)
        .limit(limit)
        .all(conn)
        .await?;
    rows.into_iter().map(from_row).collect()
}

fn from_row(row: Model) -> Result<AuditEvent, DbErr> {
    let id = row.id;
    let bad = |err: &dyn std::fmt::Display| unreadable("audit_events", format!("{id}: {err}"));
    Ok(AuditEvent {
        id,
        occur_time: row.occur_time,
        action: FromStr::from_str(&row.action).map_err(|err| bad(&err))?,
        credential_kind: FromStr::from_str(&row.credential_kind).map_err(|err| bad(&err))?,
        credential_id: row.credential_id,
        target_type: FromStr::from_str(&row.target_type).map_err(|err| bad(&err))?,
        target_id: row.target_id,
        organization_id: row.organization_id.into(),
        target_display_name: row.target_display_name,
        peer: row.peer,
        request_id: row.request_id,
    })
}
