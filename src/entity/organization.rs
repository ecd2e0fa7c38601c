//! The `organizations` table: its rows, the queries that read and write them,
//! and the mapping to domain organizations.

use sea_orm::{ActiveValue::Set, QueryOrder, QuerySelect, entity::prelude::*};

use crate::domain::{Organization, OrganizationId};

/// An organization on the platform.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "organizations")]
pub struct Model {
    /// UUIDv7.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Human-readable name.
    pub display_name: String,
    /// Creation time.
    pub create_time: DateTimeUtc,
}

/// No relations are navigated through the ORM.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// Organization `id`, if it exists.
pub async fn find(
    conn: &impl ConnectionTrait,
    id: OrganizationId,
) -> Result<Option<Organization>, DbErr> {
    Ok(Entity::find_by_id(id.uuid()).one(conn).await?.map(from_row))
}

/// Organization `id`, if it exists, its row locked until the transaction
/// ends (PostgreSQL; SQLite's writers take turns anyway), so that changes
/// to what belongs to it are made one at a time.
pub async fn find_for_update(
    conn: &impl ConnectionTrait,
    id: OrganizationId,
) -> Result<Option<Organization>, DbErr> {
    Ok(Entity::find_by_id(id.uuid())
        .lock_exclusive()
        .one(conn)
        .await?
        .map(from_row))
}

/// Whether organization `id` exists.
pub async fn exists(conn: &impl ConnectionTrait, id: OrganizationId) -> Result<bool, DbErr> {
    Ok(Entity::find_by_id(id.uuid()).count(conn).await? > 0)
}

/// How many of `ids` (distinct) exist.
pub async fn count_existing(
    conn: &impl ConnectionTrait,
    ids: &[OrganizationId],
) -> Result<u64, DbErr> {
    Entity::find()
        .filter(Column::Id.is_in(ids.iter().map(|id| id.uuid())))
        .count(conn)
        .await
}

/// Inserts a new organization.
pub async fn insert(conn: &impl ConnectionTrait, org: &Organization) -> Result<(), DbErr> {
    Entity::insert(ActiveModel {
        id: Set(org.id.uuid()),
        display_name: Set(org.display_name.clone()),
        create_time: Set(org.create_time),
    })
    .exec_without_returning(conn)
    .await?;
    Ok(())
}

/// Organizations after `after`, oldest first: at most `limit` of them.
pub async fn list(
    conn: &impl ConnectionTrait,
    after: Option<Uuid>,
    limit: u64,
) -> Result<Vec<Organization>, DbErr> {
    let mut query = Entity::find();
    if let Some(after) = after {
        query = query.filter(Column::Id.gt(after));
    }
    let rows = query
        .order_by_asc(Column::Id)
        .limit(limit)
        .all(conn)
        .await?;
    Ok(rows.into_iter().map(from_row).collect())
}

fn from_row(row: Model) -> Organization {
    Organization {
        id: row.id.into(),
        display_name: row.display_name,
        create_time: row.create_time,
    }
}
