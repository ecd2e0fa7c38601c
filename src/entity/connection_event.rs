//! The `connection_events` table: each connection's history, numbered 1, 2,
//! 3, ... by the version each change produced, and together the change log,
//! ordered by `position` (see [`change_log`](super::change_log)). Its rows,
//! the queries that append and list them, and the mapping to domain events.

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
    /// `CREATED`, `ACTIVATED`, ... (`domain::EventType`).
    pub event_type: String,
    /// State before; `None` for the creation.
    pub from_state: Option<String>,
    /// State after.
    pub to_state: String,
    /// The organization that made the change; [`SERVICE_ACTOR`] (the nil
    /// UUID) when the service made it.
    pub actor_organization_id: Uuid,
    /// `SOURCE`, `DESTINATION`, or [`SERVICE_ROLE`] when the service made
    /// the change.
    pub actor_role: String,
    /// The API key the actor called with; `None` for events written before
    /// keys were recorded (or by a release that did not record them).
    pub actor_api_key_id: Option<Uuid>,
    /// That key's display name when it acted (a copy: never the secret);
    /// set exactly when `actor_api_key_id` is.
    pub actor_api_key_display_name: Option<String>,
    /// Reason given, if any.
    pub reason: Option<String>,
    /// When it happened.
    pub create_time: DateTimeUtc,
    /// Its place in the change log (unique).
    pub position: i64,
    /// The invitation message of a creation or reactivation.
    pub message: Option<String>,
    /// A DATA_TYPES_* event's data types before it, as
    /// `connections.data_types`; the four `*types*` columns are set together,
    /// on those events only (the pending ones when there were any).
    pub types_before: Option<String>,
    /// The data types pending before it.
    pub pending_types_before: Option<String>,
    /// The data types after it.
    pub types_after: Option<String>,
    /// The data types pending after it.
    pub pending_types_after: Option<String>,
    /// True on an ACTIVATED event the service wrote because the
    /// destination's policy trusts the source; empty otherwise.
    pub by_policy: Option<bool>,
}

/// The `actor_organization_id` of a change the service made: the columns
/// are not nullable (the previous release reads them), so no organization
/// is stored as the nil UUID.
pub const SERVICE_ACTOR: Uuid = Uuid::nil();
/// The `actor_role` of a change the service made.
pub const SERVICE_ROLE: &str = "SERVICE";

/// The connection an event belongs to (joined by the change log's reads).
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// The event's connection.
    #[sea_orm(
        belongs_to = "super::connection::Entity",
        from = "Column::ConnectionId",
        to = "super::connection::Column::Id"
    )]
    Connection,
}

impl ActiveModelBehavior for ActiveModel {}

use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Statement,
    sea_query::{Expr, Query},
};
use uuid::Uuid;

use super::{change_log, unreadable};
use crate::domain::{
    ActorKey, ConnectionEvent, ConnectionId, DataTypes, DataTypesChange, EventActor, Named,
    NewEvent, Snapshot,
};

/// The insert that appends `event` as event `id`, at the position of the
/// transaction it runs in (computed by the database in the same statement),
/// and returns that position as `position`; on PostgreSQL also the
/// statement's snapshot (see `change_log`'s snapshot columns).
pub fn append_statement(backend: DbBackend, id: Uuid, event: &NewEvent) -> Statement {
    let position = match backend {
        DbBackend::Postgres => Expr::cust(format!(
            "pg_current_xact_id()::text::bigint + {}",
            change_log::OFFSET
        )),
        _ => Expr::cust("(SELECT COALESCE(MAX(position), -1) + 1 FROM connection_events)"),
    };
    let mut returning = vec![Expr::col(Column::Position)];
    if backend == DbBackend::Postgres {
        returning.push(Expr::cust(
            "pg_current_snapshot()::text AS snapshot, \
             position - pg_current_xact_id()::text::bigint AS xid_offset",
        ));
    }
    let types = event.data_types.as_ref();
    let insert = Query::insert()
        .into_table(Entity)
        .columns([
            Column::Id,
            Column::ConnectionId,
            Column::Sequence,
            Column::EventType,
            Column::FromState,
            Column::ToState,
            Column::ActorOrganizationId,
            Column::ActorRole,
            Column::ActorApiKeyId,
            Column::ActorApiKeyDisplayName,
            Column::Reason,
            Column::CreateTime,
            Column::Position,
            Column::Message,
            Column::TypesBefore,
            Column::PendingTypesBefore,
            Column::TypesAfter,
            Column::PendingTypesAfter,
            Column::ByPolicy,
        ])
        .values_panic([
            id.into(),
            event.connection_id.uuid().into(),
            event.sequence.into(),
            event.event_type.as_str().into(),
            event.from_state.map(|s| s.as_str()).into(),
            event.to_state.as_str().into(),
            event
                .actor
                .organization()
                .map_or(SERVICE_ACTOR, |org| org.uuid())
                .into(),
            event
                .actor
                .role()
                .map_or(SERVICE_ROLE, |r| r.as_str())
                .into(),
            event.actor.key().map(|key| key.id.uuid()).into(),
            event.actor.key().map(|key| key.display_name.clone()).into(),
            event.reason.clone().into(),
            event.create_time.into(),
            position,
            event.message.clone().into(),
            stored(types.map(|t| &t.previous)).into(),
            stored(types.and_then(|t| t.previous_pending.as_ref())).into(),
            stored(types.map(|t| &t.current)).into(),
            stored(types.and_then(|t| t.pending.as_ref())).into(),
            event.by_policy.then_some(true).into(),
        ])
        .returning(Query::returning().exprs(returning))
        .to_owned();
    backend.build(&insert)
}

fn stored(types: Option<&DataTypes>) -> Option<String> {
    types.map(DataTypes::to_storage)
}

/// An event as appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The event, with its new ID.
    pub event: ConnectionEvent,
    /// Its position in the change log.
    pub position: i64,
    /// What the reader of the write's change token has seen once the
    /// transaction commits: the write itself and every change that had
    /// committed before it.
    pub seen: Snapshot,
}

/// Appends `event` to its connection's history (with a new UUIDv7) and to
/// the change log, inside the write transaction `txn`.
pub async fn append(txn: &impl ConnectionTrait, event: &NewEvent) -> Result<Appended, DbErr> {
    let backend = txn.get_database_backend();
    let id = Uuid::now_v7();
    let statement = append_statement(backend, id, event);
    let row = txn
        .query_one_raw(statement)
        .await?
        .ok_or(DbErr::RecordNotInserted)?;
    let position: i64 = row.try_get("", "position")?;
    let before = match backend {
        DbBackend::Postgres => change_log::snapshot_in(&row)?,
        // Writers take turns: every lower position has committed.
        _ => Snapshot::before(position),
    };
    Ok(Appended {
        event: event.recorded(id),
        position,
        seen: before.with(position),
    })
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

pub(super) fn event_from(row: Model) -> Result<ConnectionEvent, DbErr> {
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
        actor: actor_from(
            row.actor_organization_id,
            &row.actor_role,
            row.actor_api_key_id,
            row.actor_api_key_display_name,
        )
        .map_err(|err| bad(&err))?,
        reason: row.reason,
        message: row.message,
        data_types: data_types_change_from([
            row.types_before,
            row.pending_types_before,
            row.types_after,
            row.pending_types_after,
        ])
        .map_err(|err| bad(&err))?,
        by_policy: row.by_policy.unwrap_or(false),
        create_time: row.create_time,
    })
}

/// The change of the data types a stored event records, from its four
/// `*types*` columns (before, pending before, after, pending after).
fn data_types_change_from(
    [before, pending_before, after, pending_after]: [Option<String>; 4],
) -> Result<Option<DataTypesChange>, String> {
    let parse = |stored: Option<String>| {
        stored
            .as_deref()
            .map(DataTypes::from_storage)
            .transpose()
            .map_err(|err| err.to_string())
    };
    match (parse(before)?, parse(after)?) {
        (Some(previous), Some(current)) => Ok(Some(DataTypesChange {
            previous,
            previous_pending: parse(pending_before)?,
            current,
            pending: parse(pending_after)?,
        })),
        (None, None) => Ok(None),
        _ => Err("data types before an event without those after it, or the reverse".to_owned()),
    }
}

/// The actor of a stored event, from its four actor columns.
pub(super) fn actor_from(
    organization: Uuid,
    role: &str,
    key_id: Option<Uuid>,
    key_name: Option<String>,
) -> Result<EventActor, String> {
    if role == SERVICE_ROLE && organization == SERVICE_ACTOR {
        return Ok(EventActor::Service);
    }
    let key = match (key_id, key_name) {
        (Some(id), Some(display_name)) => Some(ActorKey {
            id: id.into(),
            display_name,
        }),
        (None, None) => None,
        _ => return Err("an actor key without its name, or a name without its key".to_owned()),
    };
    Ok(EventActor::Party {
        organization: organization.into(),
        role: role.parse().map_err(|err| format!("{err}"))?,
        key,
    })
}
