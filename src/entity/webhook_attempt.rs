//! The `webhook_attempts` table: every attempt to deliver an event to an
//! endpoint, newest first when listed.

use sea_orm::{ActiveValue::Set, QueryOrder, QuerySelect, entity::prelude::*};

use super::unreadable;
use crate::domain::{
    WebhookEndpointId,
    webhook::{DeliveryAttempt, DeliveryOutcome},
};

/// One attempt.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_attempts")]
pub struct Model {
    /// UUIDv7.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The endpoint.
    pub endpoint_id: Uuid,
    /// The event.
    pub event_id: Uuid,
    /// The change token sent.
    pub change_token: String,
    /// 1, 2, 3, ... per event.
    pub attempt: i32,
    /// The receiver's status.
    pub http_status: Option<i32>,
    /// Why no status came, or the start of the answer.
    pub error: Option<String>,
    /// Microseconds from sending to the status or failure.
    pub duration_micros: i64,
    /// When.
    pub attempt_time: DateTimeUtc,
    /// When the event goes again.
    pub next_attempt_time: Option<DateTimeUtc>,
    /// See [`DeliveryOutcome`].
    pub outcome: i16,
}

/// No relations are navigated through the ORM.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// Records `attempts`.
pub async fn insert_all(
    conn: &impl ConnectionTrait,
    attempts: &[DeliveryAttempt],
) -> Result<(), DbErr> {
    if attempts.is_empty() {
        return Ok(());
    }
    Entity::insert_many(attempts.iter().map(|attempt| ActiveModel {
        id: Set(attempt.id),
        endpoint_id: Set(attempt.endpoint_id.uuid()),
        event_id: Set(attempt.event_id),
        change_token: Set(attempt.change_token.clone()),
        attempt: Set(attempt.attempt),
        http_status: Set(attempt.http_status.map(i32::from)),
        error: Set(attempt.error.clone()),
        duration_micros: Set(i64::try_from(attempt.duration.as_micros()).unwrap_or(i64::MAX)),
        attempt_time: Set(attempt.attempt_time),
        next_attempt_time: Set(attempt.next_attempt_time),
        outcome: Set(attempt.outcome as i16),
    }))
    .exec_without_returning(conn)
    .await?;
    Ok(())
}

/// The attempts for `endpoint` before `before`, newest first, only the
/// failed ones if `failed_only`: at most `limit`.
pub async fn list(
    conn: &impl ConnectionTrait,
    endpoint: WebhookEndpointId,
    failed_only: bool,
    before: Option<Uuid>,
    limit: u64,
) -> Result<Vec<DeliveryAttempt>, DbErr> {
    let mut query = Entity::find().filter(Column::EndpointId.eq(endpoint.uuid()));
    if let Some(before) = before {
        query = query.filter(Column::Id.lt(before));
    }
    if failed_only {
        query = query.filter(Column::Outcome.ne(DeliveryOutcome::Succeeded as i16));
    }
    query
        .order_by_desc(Column::Id)
        .limit(limit)
        .all(conn)
        .await?
        .into_iter()
        .map(attempt_from)
        .collect()
}

/// Deletes every attempt recorded for endpoint `id`.
pub async fn clear(conn: &impl ConnectionTrait, endpoint: Uuid) -> Result<(), DbErr> {
    Entity::delete_many()
        .filter(Column::EndpointId.eq(endpoint))
        .exec(conn)
        .await?;
    Ok(())
}

fn attempt_from(row: Model) -> Result<DeliveryAttempt, DbErr> {
    Ok(DeliveryAttempt {
        id: row.id,
        endpoint_id: row.endpoint_id.into(),
        event_id: row.event_id,
        change_token: row.change_token,
        attempt: row.attempt,
        http_status: row
            .http_status
            .map(u16::try_from)
            .transpose()
            .map_err(|err| unreadable("webhook_attempts", err))?,
        error: row.error,
        duration: std::time::Duration::from_micros(row.duration_micros.max(0).cast_unsigned()),
        attempt_time: row.attempt_time,
        next_attempt_time: row.next_attempt_time,
        outcome: DeliveryOutcome::from_stored(row.outcome)
            .ok_or_else(|| unreadable("webhook_attempts", format!("outcome {}", row.outcome)))?,
    })
}
