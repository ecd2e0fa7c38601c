//! The `connection_events` table: each connection's history, numbered 1, 2,
//! 3, ... by the version each change produced, and together the change log,
//! ordered by `position`. Its rows, the queries that read and write them, and
//! the mapping to domain events.
//!
//! A position names the transaction that wrote the event (see the
//! `change_log` migration): on PostgreSQL its transaction ID, on SQLite one
//! more than the highest position so far. The log's *horizon* is the first
//! position that may still be written: every event below it has committed
//! or never will, so a reader that reads up to the horizon never misses an
//! event committed later.

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
    /// Its place in the change log (unique).
    pub position: i64,
}

/// No relations are navigated through the ORM.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, Insert,
    QueryFilter, QueryOrder, QuerySelect, Statement,
};
use uuid::Uuid;

use super::unreadable;
use crate::domain::{ConnectionEvent, ConnectionId, Named, NewEvent};

/// The insert that appends `event`, stored as event `id` at `position`.
pub fn append_query(id: Uuid, event: &NewEvent, position: i64) -> Insert<ActiveModel> {
    Entity::insert(ActiveModel {
        id: Set(id),
        connection_id: Set(event.connection_id.uuid()),
        sequence: Set(event.sequence),
        event_type: Set(event.event_type.as_str().to_owned()),
        from_state: Set(event.from_state.map(|s| s.as_str().to_owned())),
        to_state: Set(event.to_state.as_str().to_owned()),
        actor_organization_id: Set(event.actor.uuid()),
        actor_role: Set(event.actor_role.as_str().to_owned()),
        reason: Set(event.reason.clone()),
        create_time: Set(event.create_time),
        position: Set(position),
    })
}

/// Appends `event` to its connection's history (with a new UUIDv7) and to
/// the change log, inside the write transaction `txn`; returns its position.
pub async fn append(txn: &impl ConnectionTrait, event: &NewEvent) -> Result<i64, DbErr> {
    let position = scalar(
        txn,
        match txn.get_database_backend() {
            DbBackend::Postgres => "SELECT pg_current_xact_id()::text::bigint AS value",
            _ => "SELECT COALESCE(MAX(position), -1) + 1 AS value FROM connection_events",
        },
    )
    .await?;
    append_query(Uuid::now_v7(), event, position)
        .exec_without_returning(txn)
        .await?;
    Ok(position)
}

/// The change log's horizon: every event below it is committed or never
/// will be. On PostgreSQL, the oldest transaction still running anywhere in
/// the cluster (the snapshot's xmin); on SQLite, where writers commit in
/// position order, one more than the highest position.
pub async fn horizon(conn: &impl ConnectionTrait) -> Result<i64, DbErr> {
    scalar(
        conn,
        match conn.get_database_backend() {
            DbBackend::Postgres => {
                "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS value"
            }
            _ => "SELECT COALESCE(MAX(position), -1) + 1 AS value FROM connection_events",
        },
    )
    .await
}

/// The change log from position `from` up to (not including) `before`, in
/// order: at most `limit` events, each with its position. With `before` a
/// [`horizon`] read earlier, the result never misses an event.
pub async fn log(
    conn: &impl ConnectionTrait,
    from: i64,
    before: i64,
    limit: u64,
) -> Result<Vec<(i64, ConnectionEvent)>, DbErr> {
    Entity::find()
        .filter(Column::Position.gte(from))
        .filter(Column::Position.lt(before))
        .order_by_asc(Column::Position)
        .limit(limit)
        .all(conn)
        .await?
        .into_iter()
        .map(|row| Ok((row.position, event_from(row)?)))
        .collect()
}

/// The `value` column of a query that returns one row.
async fn scalar(conn: &impl ConnectionTrait, sql: &str) -> Result<i64, DbErr> {
    conn.query_one_raw(Statement::from_string(conn.get_database_backend(), sql))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(sql.to_owned()))?
        .try_get("", "value")
}

/// The events of connection `id` after sequence number `after`, oldest
/// first: at most `limit` of them.
pub async fn list(
    conn: &impl ConnectionTrait,
    id: ConnectionId,
    after: i64,
    limit: u64,
) -> Result<Vec<ConnectionEvent>, DbErr> {
    Entity::find()
        .filter(Column::ConnectionId.eq(id.uuid()))
        .filter(Column::Sequence.gt(after))
        .order_by_asc(Column::Sequence)
        .limit(limit)
        .all(conn)
        .await?
        .into_iter()
        .map(event_from)
        .collect()
}

fn event_from(row: Model) -> Result<ConnectionEvent, DbErr> {
    let id = row.id;
    let bad = |err: &dyn std::fmt::Display| unreadable("connection_events", format!("{id}: {err}"));
    Ok(ConnectionEvent {
        id: row.id,
        connection_id: row.connection_id.into(),
        sequence: row.sequence,
        event_type: row.event_type.parse().map_err(|err| bad(&err))?,
        from_state: row
            .from_state
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|err| bad(&err))?,
        to_state: row.to_state.parse().map_err(|err| bad(&err))?,
        actor_organization_id: row.actor_organization_id.into(),
        actor_role: row.actor_role.parse().map_err(|err| bad(&err))?,
        reason: row.reason,
        create_time: row.create_time,
    })
}
