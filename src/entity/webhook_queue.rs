//! The `webhook_queue` table: for each endpoint, the events it has still to
//! be sent, with the body every attempt sends. A row is written in the
//! transaction that writes its event (or by a recovery) and deleted once the
//! event is delivered or given up.

use chrono::{DateTime, Utc};
use sea_orm::{
    DbBackend, QueryOrder, QuerySelect, Statement,
    entity::prelude::*,
    sea_query::{Alias, Expr, ExprTrait, OnConflict, Query},
};

use super::webhook_endpoint;

/// An event queued for an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_queue")]
pub struct Model {
    /// The endpoint.
    #[sea_orm(primary_key, auto_increment = false)]
    pub endpoint_id: Uuid,
    /// The event (the `webhook-id`).
    #[sea_orm(primary_key, auto_increment = false)]
    pub event_id: Uuid,
    /// The event's connection: its events go in order.
    pub connection_id: Uuid,
    /// The event's change log position.
    pub position: i64,
    /// The change token in the body.
    pub change_token: String,
    /// What every attempt sends.
    pub body: String,
    /// Attempts made so far.
    pub attempts: i32,
    /// Not to be sent before.
    pub next_attempt_time: DateTimeUtc,
    /// When it was queued.
    pub enqueue_time: DateTimeUtc,
}

/// No relations are navigated through the ORM.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// An event to queue.
#[derive(Debug, Clone)]
pub struct Queued<'a> {
    /// The event.
    pub event_id: Uuid,
    /// Its connection.
    pub connection_id: Uuid,
    /// Its type's stored name.
    pub event_type: &'static str,
    /// Its position.
    pub position: i64,
    /// The change token after it.
    pub change_token: &'a str,
    /// The body to send.
    pub body: &'a str,
}

/// Queues `event` for every endpoint of `parties` that takes its type (only
/// `endpoint`, if given); an event already queued for an endpoint stays as
/// it is. Returns how many endpoints it was queued for.
pub async fn enqueue(
    conn: &impl ConnectionTrait,
    parties: [Uuid; 2],
    endpoint: Option<Uuid>,
    event: &Queued<'_>,
    now: DateTime<Utc>,
) -> Result<u64, DbErr> {
    let mut endpoints = webhook_endpoint::taking(parties, event.event_type);
    if let Some(endpoint) = endpoint {
        endpoints.and_where(Expr::col(webhook_endpoint::Column::Id).eq(endpoint));
    }
    let select = endpoints
        .expr(Expr::val(event.event_id))
        .expr(Expr::val(event.connection_id))
        .expr(Expr::val(event.position))
        .expr(Expr::val(event.change_token))
        .expr(Expr::val(event.body))
        .expr(Expr::val(0))
        .expr(Expr::val(now))
        .expr(Expr::val(now))
        .to_owned();
    let insert = Query::insert()
        .into_table(Entity)
        .columns([
            Column::EndpointId,
            Column::EventId,
            Column::ConnectionId,
            Column::Position,
            Column::ChangeToken,
            Column::Body,
            Column::Attempts,
            Column::NextAttemptTime,
            Column::EnqueueTime,
        ])
        .select_from(select)
        .map_err(|err| DbErr::Custom(err.to_string()))?
        .on_conflict(
            OnConflict::columns([Column::EndpointId, Column::EventId])
                .do_nothing()
                .to_owned(),
        )
        .to_owned();
    let result = conn.execute(&insert).await?;
    Ok(result.rows_affected())
}

/// The events of the endpoints in `endpoints` that are due at `now` and
/// first in line for their connection (no earlier event of the same
/// connection is queued for the same endpoint), soonest due first: at most
/// `limit`.
pub async fn due_heads(
    conn: &impl ConnectionTrait,
    endpoints: &[Uuid],
    now: DateTime<Utc>,
    limit: u64,
) -> Result<Vec<Model>, DbErr> {
    if endpoints.is_empty() {
        return Ok(Vec::new());
    }
    if conn.get_database_backend() == DbBackend::Postgres {
        let mut heads = Vec::new();
        for endpoint in endpoints {
            let statement = Statement::from_sql_and_values(
                DbBackend::Postgres,
                HEADS_POSTGRES,
                [(*endpoint).into(), now.into(), (limit as i64).into()],
            );
            heads.extend(Entity::find().from_raw_sql(statement).all(conn).await?);
        }
        heads.sort_by_key(|head| (head.next_attempt_time, head.position));
        heads.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        return Ok(heads);
    }
    let earlier = Alias::new("earlier");
    let first_in_line = Expr::exists(
        Query::select()
            .expr(Expr::val(1))
            .from_as(Entity, earlier.clone())
            .and_where(
                Expr::col((earlier.clone(), Column::EndpointId))
                    .equals((Entity, Column::EndpointId)),
            )
            .and_where(
                Expr::col((earlier.clone(), Column::ConnectionId))
                    .equals((Entity, Column::ConnectionId)),
            )
            .and_where(
                Expr::col((earlier, Column::Position)).lt(Expr::col((Entity, Column::Position))),
            )
            .to_owned(),
    )
    .not();
    Entity::find()
        .filter(Column::EndpointId.is_in(endpoints.iter().copied()))
        .filter(Column::NextAttemptTime.lte(now))
        .filter(first_in_line)
        .order_by_asc(Column::NextAttemptTime)
        .order_by_asc(Column::Position)
        .limit(limit)
        .all(conn)
        .await
}

/// The first event of each connection queued for endpoint `$1`, if due at
/// `$2`, soonest due first, at most `$3` (PostgreSQL). The connections are
/// found by a loose scan of the `(endpoint, connection, position)` index,
/// one index descent per connection, so the cost follows the number of
/// connections, not of queued events.
const HEADS_POSTGRES: &str = "\
WITH RECURSIVE lanes(connection_id) AS ( \
    (SELECT connection_id FROM webhook_queue WHERE endpoint_id = $1 \
     ORDER BY connection_id LIMIT 1) \
    UNION ALL \
    SELECT (SELECT q.connection_id FROM webhook_queue q \
            WHERE q.endpoint_id = $1 AND q.connection_id > l.connection_id \
            ORDER BY q.connection_id LIMIT 1) \
    FROM lanes l WHERE l.connection_id IS NOT NULL) \
SELECT h.* FROM lanes l CROSS JOIN LATERAL ( \
    SELECT * FROM webhook_queue q \
    WHERE q.endpoint_id = $1 AND q.connection_id = l.connection_id \
    ORDER BY q.position LIMIT 1) h \
WHERE h.next_attempt_time <= $2 \
ORDER BY h.next_attempt_time, h.position LIMIT $3";

/// When the next queued event of `endpoints` is due, if any is queued.
pub async fn next_due(
    conn: &impl ConnectionTrait,
    endpoints: &[Uuid],
) -> Result<Option<DateTime<Utc>>, DbErr> {
    if endpoints.is_empty() {
        return Ok(None);
    }
    Entity::find()
        .select_only()
        .column_as(Column::NextAttemptTime.min(), "next")
        .filter(Column::EndpointId.is_in(endpoints.iter().copied()))
        .into_tuple::<Option<DateTime<Utc>>>()
        .one(conn)
        .await
        .map(Option::flatten)
}

/// Removes `events` from the endpoint's queue (delivered or given up).
pub async fn remove_all(
    conn: &impl ConnectionTrait,
    endpoint: Uuid,
    events: &[Uuid],
) -> Result<(), DbErr> {
    Entity::delete_many()
        .filter(Column::EndpointId.eq(endpoint))
        .filter(Column::EventId.is_in(events.iter().copied()))
        .exec(conn)
        .await?;
    Ok(())
}

/// Counts one more attempt of the event and sets when it goes again.
pub async fn postpone(
    conn: &impl ConnectionTrait,
    endpoint: Uuid,
    event: Uuid,
    attempts: i32,
    next: DateTime<Utc>,
) -> Result<(), DbErr> {
    Entity::update_many()
        .col_expr(Column::Attempts, Expr::val(attempts))
        .col_expr(Column::NextAttemptTime, Expr::val(next))
        .filter(Column::EndpointId.eq(endpoint))
        .filter(Column::EventId.eq(event))
        .exec(conn)
        .await?;
    Ok(())
}

/// Deletes every event queued for endpoint `id`.
pub async fn clear(conn: &impl ConnectionTrait, endpoint: Uuid) -> Result<(), DbErr> {
    Entity::delete_many()
        .filter(Column::EndpointId.eq(endpoint))
        .exec(conn)
        .await?;
    Ok(())
}

/// Per endpoint with queued events: how many, and when the oldest was
/// queued (for metrics).
pub async fn backlog(
    conn: &impl ConnectionTrait,
) -> Result<Vec<(Uuid, i64, DateTime<Utc>)>, DbErr> {
    Entity::find()
        .select_only()
        .column(Column::EndpointId)
        .column_as(Column::EventId.count(), "events")
        .column_as(Column::EnqueueTime.min(), "oldest")
        .group_by(Column::EndpointId)
        .into_tuple()
        .all(conn)
        .await
}
