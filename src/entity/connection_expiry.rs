//! The `connection_expiries` table: each PENDING connection that has an
//! expire time, indexed by that time, for the sweep that expires them. A
//! row may outlive its reason (the previous release does not keep this
//! table): the sweep checks the connection itself and drops such rows.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, entity::prelude::*, sea_query::OnConflict,
};

use crate::domain::ConnectionId;

/// When one connection expires.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "connection_expiries")]
pub struct Model {
    /// The connection.
    #[sea_orm(primary_key, auto_increment = false)]
    pub connection_id: Uuid,
    /// When it expires, unless it stops being PENDING first.
    pub expire_time: DateTimeUtc,
}

/// No relations are navigated through the ORM.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// Records that connection `id` expires at `time`, or, with `None`, that it
/// does not.
pub async fn set(
    conn: &impl ConnectionTrait,
    id: ConnectionId,
    time: Option<DateTime<Utc>>,
) -> Result<(), DbErr> {
    match time {
        Some(time) => {
            Entity::insert(ActiveModel {
                connection_id: Set(id.uuid()),
                expire_time: Set(time),
            })
            .on_conflict(
                OnConflict::column(Column::ConnectionId)
                    .update_column(Column::ExpireTime)
                    .to_owned(),
            )
            .exec_without_returning(conn)
            .await?;
        }
        None => {
            Entity::delete_by_id(id.uuid()).exec(conn).await?;
        }
    }
    Ok(())
}

/// The connections whose expire time is `now` or earlier, soonest first: at
/// most `limit`.
pub async fn due(
    conn: &impl ConnectionTrait,
    now: DateTime<Utc>,
    limit: u64,
) -> Result<Vec<ConnectionId>, DbErr> {
    let ids: Vec<Uuid> = Entity::find()
        .select_only()
        .column(Column::ConnectionId)
        .filter(Column::ExpireTime.lte(now))
        .order_by_asc(Column::ExpireTime)
        .order_by_asc(Column::ConnectionId)
        .limit(limit)
        .into_tuple()
        .all(conn)
        .await?;
    Ok(ids.into_iter().map(ConnectionId::from).collect())
}
