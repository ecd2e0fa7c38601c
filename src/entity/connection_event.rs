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
    ColumnTrait, Condition, ConnectionTrait, DbBackend, DbErr, EntityTrait, FromQueryResult,
    JoinType, QueryFilter, QueryOrder, QuerySelect, RelationTrait, Statement,
    sea_query::{Expr, Query},
};
use uuid::Uuid;

use super::{connection, unreadable};
use crate::domain::{
    ConnectionEvent, ConnectionId, DataTypes, Named, NewEvent, OrganizationId, Parties, Role,
};

/// The insert that appends `event` as event `id`, at the position of the
/// transaction it runs in (computed by the database in the same statement),
/// and returns that position as `position`.
pub fn append_statement(backend: DbBackend, id: Uuid, event: &NewEvent) -> Statement {
    let position = match backend {
        DbBackend::Postgres => Expr::cust("pg_current_xact_id()::text::bigint"),
        _ => Expr::cust("(SELECT COALESCE(MAX(position), -1) + 1 FROM connection_events)"),
    };
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
            Column::Reason,
            Column::CreateTime,
            Column::Position,
        ])
        .values_panic([
            id.into(),
            event.connection_id.uuid().into(),
            event.sequence.into(),
            event.event_type.as_str().into(),
            event.from_state.map(|s| s.as_str()).into(),
            event.to_state.as_str().into(),
            event.actor.uuid().into(),
            event.actor_role.as_str().into(),
            event.reason.clone().into(),
            event.create_time.into(),
            position,
        ])
        .returning_col(Column::Position)
        .to_owned();
    backend.build(&insert)
}

/// Appends `event` to its connection's history (with a new UUIDv7) and to
/// the change log, inside the write transaction `txn`; returns its position.
pub async fn append(txn: &impl ConnectionTrait, event: &NewEvent) -> Result<i64, DbErr> {
    let statement = append_statement(txn.get_database_backend(), Uuid::now_v7(), event);
    txn.query_one_raw(statement)
        .await?
        .ok_or_else(|| DbErr::RecordNotInserted)?
        .try_get("", "position")
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

/// Which positions had committed when a snapshot was taken: on PostgreSQL,
/// every transaction below `xmin`, and those below `xmax` that were not
/// running then; on SQLite, every position below the horizon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The horizon: every position below it had ended.
    pub xmin: i64,
    /// Every position from here on began after the snapshot.
    pub xmax: i64,
    /// Positions between the two still running then.
    pub running: Vec<i64>,
}

impl Snapshot {
    /// Whether the event at `position` had committed when the snapshot was
    /// taken.
    pub fn saw(&self, position: i64) -> bool {
        position < self.xmin || (position < self.xmax && !self.running.contains(&position))
    }
}

/// The change log as of now (see [`Snapshot`]).
pub async fn snapshot(conn: &impl ConnectionTrait) -> Result<Snapshot, DbErr> {
    if conn.get_database_backend() != DbBackend::Postgres {
        let horizon = horizon(conn).await?;
        return Ok(Snapshot {
            xmin: horizon,
            xmax: horizon,
            running: Vec::new(),
        });
    }
    let sql = "SELECT pg_snapshot_xmin(s)::text::bigint AS xmin, \
                      pg_snapshot_xmax(s)::text::bigint AS xmax, \
                      (SELECT COALESCE(string_agg(x::text, ','), '') \
                       FROM pg_snapshot_xip(s) AS x) AS running \
               FROM pg_current_snapshot() AS s";
    let row = conn
        .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(sql.to_owned()))?;
    let running: String = row.try_get("", "running")?;
    Ok(Snapshot {
        xmin: row.try_get("", "xmin")?,
        xmax: row.try_get("", "xmax")?,
        running: running
            .split(',')
            .filter(|x| !x.is_empty())
            .map(|x| {
                x.parse()
                    .map_err(|_| DbErr::Custom(format!("not a transaction ID: {x}")))
            })
            .collect::<Result<_, _>>()?,
    })
}

/// One entry of the change log: an event, its position, and the parties of
/// its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Its place in the change log.
    pub position: i64,
    /// The event.
    pub event: ConnectionEvent,
    /// The connection's parties.
    pub parties: Parties,
    /// The connection's data types.
    pub data_types: DataTypes,
}

/// The events of one organization's connections, on one side or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Party {
    /// The organization.
    pub organization: OrganizationId,
    /// Only the connections where it has this role; `None`: both.
    pub role: Option<Role>,
}

impl Party {
    /// Whether the organization takes part, in the role asked for, in a
    /// connection between `parties`.
    pub fn takes_part_in(&self, parties: &Parties) -> bool {
        let source = parties.source == self.organization;
        let destination = parties.destination == self.organization;
        match self.role {
            None => source || destination,
            Some(Role::Source) => source,
            Some(Role::Destination) => destination,
        }
    }

    fn condition(&self) -> Condition {
        let id = self.organization.uuid();
        let source = connection::Column::SourceOrganizationId.eq(id);
        let destination = connection::Column::DestinationOrganizationId.eq(id);
        match self.role {
            None => Condition::any().add(source).add(destination),
            Some(Role::Source) => Condition::all().add(source),
            Some(Role::Destination) => Condition::all().add(destination),
        }
    }
}

/// A change log row with its connection's parties.
#[derive(Debug, FromQueryResult)]
struct LogRow {
    id: Uuid,
    connection_id: Uuid,
    sequence: i64,
    event_type: String,
    from_state: Option<String>,
    to_state: String,
    actor_organization_id: Uuid,
    actor_role: String,
    reason: Option<String>,
    create_time: DateTimeUtc,
    position: i64,
    source_organization_id: Uuid,
    destination_organization_id: Uuid,
    data_types: String,
}

/// The change log from position `from` up to (not including) `before`, in
/// order: at most `limit` entries, only `party`'s if given. With `before` a
/// [`horizon`] read earlier, the result never misses an event.
pub async fn log_entries(
    conn: &impl ConnectionTrait,
    from: i64,
    before: i64,
    limit: u64,
    party: Option<Party>,
) -> Result<Vec<LogEntry>, DbErr> {
    let mut query = Entity::find()
        .column(connection::Column::SourceOrganizationId)
        .column(connection::Column::DestinationOrganizationId)
        .column(connection::Column::DataTypes)
        .join(JoinType::InnerJoin, Relation::Connection.def())
        .filter(Column::Position.gte(from))
        .filter(Column::Position.lt(before));
    if let Some(party) = party {
        query = query.filter(party.condition());
    }
    query
        .order_by_asc(Column::Position)
        .limit(limit)
        .into_model::<LogRow>()
        .all(conn)
        .await?
        .into_iter()
        .map(|row| {
            let parties = Parties {
                source: row.source_organization_id.into(),
                destination: row.destination_organization_id.into(),
            };
            let data_types = DataTypes::from_storage(&row.data_types).map_err(|err| {
                unreadable("connections", format!("{}: {err}", row.connection_id))
            })?;
            Ok(LogEntry {
                position: row.position,
                parties,
                data_types,
                event: event_from(Model {
                    id: row.id,
                    connection_id: row.connection_id,
                    sequence: row.sequence,
                    event_type: row.event_type,
                    from_state: row.from_state,
                    to_state: row.to_state,
                    actor_organization_id: row.actor_organization_id,
                    actor_role: row.actor_role,
                    reason: row.reason,
                    create_time: row.create_time,
                    position: row.position,
                })?,
            })
        })
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
