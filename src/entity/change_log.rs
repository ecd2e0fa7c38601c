//! The change log: every connection event in one order that every replica
//! agrees on, and what a reader can know of it.
//!
//! An event's *position* names the transaction that wrote it. On PostgreSQL
//! it is that transaction's ID plus the log's offset (see [`continue_after_move`]);
//! transactions commit in any order, so a reader learns which positions had
//! committed from a [`Snapshot`] of the database. On SQLite writers take
//! turns: a position is one more than the highest so far, and they commit in
//! position order.
//!
//! Two ways to read it:
//! - in position order, up to the [`horizon`]: the first position that may
//!   still be written. Every event below it has committed or never will, so a
//!   reader that reads up to the horizon never misses an event committed
//!   later. Only transactions that hold a lock on one of the service's tables
//!   hold it back (see [`horizon`]).
//! - as soon as they are visible, in no particular order: [`changes_since`] a
//!   snapshot returns what has committed since it, whatever else is still
//!   running; the CheckAccess index reads this way.

use sea_orm::{
    ConnectionTrait, DbBackend, DbErr, EntityTrait, FromQueryResult, JoinType, QueryFilter,
    QueryOrder, QueryResult, QuerySelect, RelationTrait, Statement, Value, sea_query::Condition,
};
use uuid::Uuid;

use super::{
    connection,
    connection_event::{Column, Entity, Model, Relation, event_from},
    unreadable,
};
use crate::{
    db,
    domain::{ConnectionEvent, DataTypes, OrganizationId, Parties, Role, Snapshot},
};

/// The offset of the current epoch, added to a transaction ID to make its
/// position (PostgreSQL).
pub(super) const OFFSET: &str =
    "(SELECT xid_offset FROM change_log_epochs ORDER BY epoch DESC LIMIT 1)";

/// The change log's horizon: every event below it has committed or never
/// will.
///
/// On PostgreSQL, the lowest transaction ID among the transactions that hold
/// a lock on a table of the service's schema, or if none, the snapshot's
/// `xmax` (every transaction below it had ended, or was running and is
/// counted). A transaction that writes an event writes one of those tables
/// first, and takes their lock before it gets an ID, so one that holds no
/// such lock now can only get an ID above the snapshot's `xmax`. The lock
/// list is read after the snapshot was taken, in one scan; a transaction
/// that ended in between is visible to every later read. Transactions in
/// other databases, and ones in this database that never touched the
/// service's tables, are not counted. On SQLite, one more than the highest
/// position.
pub async fn horizon(conn: &impl ConnectionTrait) -> Result<i64, DbErr> {
    let sql = match conn.get_database_backend() {
        DbBackend::Postgres => HORIZON_POSTGRES,
        _ => "SELECT COALESCE(MAX(position), -1) + 1 AS value FROM connection_events",
    };
    conn.query_one_raw(Statement::from_string(conn.get_database_backend(), sql))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("the change log's horizon".to_owned()))?
        .try_get("", "value")
}

/// See [`horizon`]. A running transaction's 32-bit ID in the lock list is
/// matched with its full ID in the snapshot's running list: the lock holders
/// not in that list began after the snapshot, above its `xmax`.
const HORIZON_POSTGRES: &str = "\
WITH s AS (SELECT pg_current_snapshot() AS snap), \
locks AS MATERIALIZED (SELECT locktype, database, relation, transactionid, \
                              virtualtransaction, granted FROM pg_locks), \
ours AS (SELECT virtualtransaction FROM locks \
         WHERE locktype = 'relation' \
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND relation IN (SELECT oid FROM pg_class WHERE relnamespace = \
                            (SELECT relnamespace FROM pg_class \
                             WHERE oid = 'connection_events'::regclass))), \
holding AS (SELECT transactionid::text::bigint AS xid FROM locks \
            WHERE locktype = 'transactionid' AND granted \
              AND virtualtransaction IN (SELECT virtualtransaction FROM ours)) \
SELECT LEAST(pg_snapshot_xmax(snap)::text::bigint, \
             (SELECT min(x::text::bigint) FROM pg_snapshot_xip(snap) AS x \
              WHERE x::text::bigint % 4294967296 IN (SELECT xid FROM holding))) \
       + (SELECT xid_offset FROM change_log_epochs ORDER BY epoch DESC LIMIT 1) AS value \
FROM s";

/// The columns that give a statement's snapshot as positions (PostgreSQL).
const SNAPSHOT_COLUMNS: &str = "pg_current_snapshot()::text AS snapshot, \
     (SELECT xid_offset FROM change_log_epochs ORDER BY epoch DESC LIMIT 1) AS xid_offset";

/// The snapshot in a row with [`SNAPSHOT_COLUMNS`].
pub(super) fn snapshot_in(row: &QueryResult) -> Result<Snapshot, DbErr> {
    let text: String = row.try_get("", "snapshot")?;
    let offset: i64 = row.try_get("", "xid_offset")?;
    parse_snapshot(&text, offset)
}

/// A snapshot as PostgreSQL writes it (`xmin:xmax:xip,xip,...`), its
/// transaction IDs moved by `offset` into positions.
fn parse_snapshot(text: &str, offset: i64) -> Result<Snapshot, DbErr> {
    let bad = || DbErr::Custom(format!("not a snapshot: {text}"));
    let number = |x: &str| -> Result<i64, DbErr> {
        x.parse::<i64>()
            .map_err(|_| bad())?
            .checked_add(offset)
            .ok_or_else(bad)
    };
    let mut parts = text.split(':');
    let (Some(xmin), Some(xmax), Some(running), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    // What is below `xmin` follows from the running list.
    number(xmin)?;
    let running = running
        .split(',')
        .filter(|x| !x.is_empty())
        .map(number)
        .collect::<Result<_, _>>()?;
    Ok(Snapshot::new(number(xmax)?, running, Vec::new()))
}

/// What has committed now: on PostgreSQL the database's snapshot, on SQLite
/// every position below the horizon.
pub async fn snapshot(conn: &impl ConnectionTrait) -> Result<Snapshot, DbErr> {
    if conn.get_database_backend() != DbBackend::Postgres {
        return Ok(Snapshot::before(horizon(conn).await?));
    }
    let sql = format!("SELECT {SNAPSHOT_COLUMNS}");
    let row = conn
        .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("the current snapshot".to_owned()))?;
    snapshot_in(&row)
}

/// One entry of the change log: an event, its position, and what the
/// readers of the log need of its connection.
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

/// Entries read together, and the snapshot they were read under: it holds
/// every one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// The entries, in position order.
    pub entries: Vec<LogEntry>,
    /// What had committed when they were read.
    pub snapshot: Snapshot,
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
        use sea_orm::ColumnTrait;
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
    actor_api_key_id: Option<Uuid>,
    actor_api_key_display_name: Option<String>,
    reason: Option<String>,
    create_time: chrono::DateTime<chrono::Utc>,
    position: i64,
    message: Option<String>,
    types_before: Option<String>,
    pending_types_before: Option<String>,
    types_after: Option<String>,
    pending_types_after: Option<String>,
    by_policy: Option<bool>,
    source_organization_id: Uuid,
    destination_organization_id: Uuid,
    data_types: String,
}

impl LogRow {
    fn entry(self) -> Result<LogEntry, DbErr> {
        let parties = Parties {
            source: self.source_organization_id.into(),
            destination: self.destination_organization_id.into(),
        };
        let data_types = DataTypes::from_storage(&self.data_types)
            .map_err(|err| unreadable("connections", format!("{}: {err}", self.connection_id)))?;
        Ok(LogEntry {
            position: self.position,
            parties,
            data_types,
            event: event_from(Model {
                id: self.id,
                connection_id: self.connection_id,
                sequence: self.sequence,
                event_type: self.event_type,
                from_state: self.from_state,
                to_state: self.to_state,
                actor_organization_id: self.actor_organization_id,
                actor_role: self.actor_role,
                actor_api_key_id: self.actor_api_key_id,
                actor_api_key_display_name: self.actor_api_key_display_name,
                reason: self.reason,
                create_time: self.create_time,
                position: self.position,
                message: self.message,
                types_before: self.types_before,
                pending_types_before: self.pending_types_before,
                types_after: self.types_after,
                pending_types_after: self.pending_types_after,
                by_policy: self.by_policy,
            })?,
        })
    }
}

/// The entries matching `filter`, in position order, at most `limit`, with
/// the snapshot they were read under. On PostgreSQL one statement returns
/// both (the entries joined to a row of the snapshot, so that it comes even
/// when nothing matches); on SQLite the snapshot is every position below the
/// horizon, read in the same statement.
async fn read(conn: &impl ConnectionTrait, filter: Condition, limit: u64) -> Result<Read, DbErr> {
    let backend = conn.get_database_backend();
    let query = Entity::find()
        .column(connection::Column::SourceOrganizationId)
        .column(connection::Column::DestinationOrganizationId)
        .column(connection::Column::DataTypes)
        .join(JoinType::InnerJoin, Relation::Connection.def())
        .filter(filter)
        .order_by_asc(Column::Position)
        .limit(limit);
    let inner = sea_orm::QueryTrait::build(&query, backend);
    let head = match backend {
        DbBackend::Postgres => SNAPSHOT_COLUMNS.to_owned(),
        _ => {
            "(SELECT COALESCE(MAX(position), -1) + 1 FROM connection_events) AS horizon".to_owned()
        }
    };
    let sql = format!(
        "SELECT s.*, e.* FROM (SELECT {head}) AS s \
         LEFT JOIN ({}) AS e ON 1 = 1 ORDER BY e.position",
        inner.sql
    );
    let rows = conn
        .query_all_raw(Statement::from_sql_and_values(
            backend,
            sql,
            inner.values.map_or_else(Vec::new, |values| values.0),
        ))
        .await?;
    let first = rows
        .first()
        .ok_or_else(|| DbErr::RecordNotFound("the change log's snapshot".to_owned()))?;
    let snapshot = match backend {
        DbBackend::Postgres => snapshot_in(first)?,
        _ => Snapshot::before(first.try_get("", "horizon")?),
    };
    let mut entries = Vec::with_capacity(rows.len());
    for row in &rows {
        // The one row of an empty result has no event.
        if row.try_get::<Option<Uuid>>("", "id")?.is_some() {
            entries.push(LogRow::from_query_result(row, "")?.entry()?);
        }
    }
    Ok(Read { entries, snapshot })
}

/// The change log from position `from` up to (not including) `before`, in
/// order: at most `limit` entries, only `party`'s if given. With `before` a
/// [`horizon`] read earlier, the result never misses an event, and its
/// snapshot holds every position below `before`.
pub async fn log_entries(
    conn: &impl ConnectionTrait,
    from: i64,
    before: i64,
    limit: u64,
    party: Option<Party>,
) -> Result<Read, DbErr> {
    use sea_orm::ColumnTrait;
    let mut filter = Condition::all()
        .add(Column::Position.gte(from))
        .add(Column::Position.lt(before));
    if let Some(party) = party {
        filter = filter.add(party.condition());
    }
    read(conn, filter, limit).await
}

/// The entries that `since` had not seen and that have committed now, in
/// position order from `after` on (exclusive; `None`: from the start), at
/// most `limit`, with the snapshot they were read under. The caller that
/// reads every page of them has seen every change of the first page's
/// snapshot.
pub async fn changes_since(
    conn: &impl ConnectionTrait,
    since: &Snapshot,
    after: Option<i64>,
    limit: u64,
) -> Result<Read, DbErr> {
    use sea_orm::ColumnTrait;
    let mut filter = Condition::all().add(unseen(since));
    if let Some(after) = after {
        filter = filter.add(Column::Position.gt(after));
    }
    read(conn, filter, limit).await
}

/// `party`'s entries below `before` that `since` had not seen, in position
/// order from `after` on (exclusive; `None`: from the start), at most
/// `limit`: a watch catching up from where it starts. Only positions the
/// snapshot left out are looked at, so a snapshot whose lowest running
/// transaction is old (one left open elsewhere) costs nothing more.
pub async fn unseen_entries(
    conn: &impl ConnectionTrait,
    since: &Snapshot,
    after: Option<i64>,
    before: i64,
    limit: u64,
    party: Party,
) -> Result<Read, DbErr> {
    use sea_orm::ColumnTrait;
    let mut filter = Condition::all()
        .add(unseen(since))
        .add(Column::Position.lt(before))
        .add(party.condition());
    if let Some(after) = after {
        filter = filter.add(Column::Position.gt(after));
    }
    read(conn, filter, limit).await
}

/// The positions `since` does not hold.
fn unseen(since: &Snapshot) -> Condition {
    use sea_orm::ColumnTrait;
    let mut unseen = Condition::any().add(Column::Position.gte(since.xmax()));
    if !since.running().is_empty() {
        unseen = unseen.add(Column::Position.is_in(since.running().iter().copied()));
    }
    let mut filter = Condition::all().add(unseen);
    if !since.also().is_empty() {
        filter = filter.add(Column::Position.is_not_in(since.also().iter().copied()));
    }
    filter
}

/// The epoch the change log is in, and how positions are made in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch {
    /// 0 at first, one more after each move to another database cluster.
    pub epoch: i64,
    /// Added to a transaction ID to make its position.
    pub xid_offset: i64,
    /// No position of this epoch is lower.
    pub first_position: i64,
}

/// How far above the highest position so far a new epoch starts: more than
/// any transaction ID the previous cluster could have handed out since its
/// last event, so that the snapshots in old change tokens hold no position
/// of the new epoch.
pub const EPOCH_GAP: i64 = 1 << 48;

/// On PostgreSQL, makes sure the next position is above every position so
/// far, and returns the epoch the log is in. Positions are transaction IDs
/// of one database cluster: after a dump and restore into another, the IDs
/// start lower. Then a new epoch begins, whose offset puts every new
/// position at least [`EPOCH_GAP`] above the highest one, so the log goes on
/// in order, no position is taken twice, and the snapshots in change tokens
/// issued before the move, which name positions below the gap, keep their
/// meaning. Run at start, after the migrations, under their lock.
pub async fn continue_after_move(db: &sea_orm::DatabaseConnection) -> Result<Epoch, DbErr> {
    let txn = db::begin_write(db).await?;
    let backend = txn.get_database_backend();
    if backend == DbBackend::Postgres {
        // The migrations' lock: replicas starting together take turns.
        txn.execute_unprepared(&format!(
            "SELECT pg_advisory_xact_lock({})",
            db::MIGRATION_LOCK
        ))
        .await?;
    }
    let current = current_epoch(&*txn).await?;
    if backend != DbBackend::Postgres {
        txn.commit().await?;
        return Ok(current);
    }
    // This transaction's ID is the newest: in the cluster that wrote the
    // log, above every position. Below the highest one, the IDs started over.
    let row = txn
        .query_one_raw(Statement::from_string(
            backend,
            "SELECT pg_current_xact_id()::text::bigint AS newest, \
                    pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin, \
                    (SELECT MAX(position) FROM connection_events) AS highest",
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("the transaction counter".to_owned()))?;
    let newest: i64 = row.try_get("", "newest")?;
    let xmin: i64 = row.try_get("", "xmin")?;
    let highest: Option<i64> = row.try_get("", "highest")?;
    let Some(highest) = highest.filter(|&highest| newest + current.xid_offset <= highest) else {
        txn.commit().await?;
        return Ok(current);
    };
    // Every transaction that may still write has an ID from `xmin` on.
    let next = Epoch {
        epoch: current.epoch + 1,
        xid_offset: highest + EPOCH_GAP - xmin,
        first_position: highest + EPOCH_GAP,
    };
    txn.execute_raw(Statement::from_sql_and_values(
        backend,
        "INSERT INTO change_log_epochs (epoch, xid_offset, first_position, create_time) \
         VALUES ($1, $2, $3, CURRENT_TIMESTAMP)",
        [
            Value::from(next.epoch),
            Value::from(next.xid_offset),
            Value::from(next.first_position),
        ],
    ))
    .await?;
    txn.commit().await?;
    tracing::warn!(
        epoch = next.epoch,
        first_position = next.first_position,
        "the database's transaction IDs are below the change log's positions (restored into \
         another cluster?): the change log continues in a new epoch"
    );
    Ok(next)
}

async fn current_epoch(conn: &impl ConnectionTrait) -> Result<Epoch, DbErr> {
    let row = conn
        .query_one_raw(Statement::from_string(
            conn.get_database_backend(),
            "SELECT epoch, xid_offset, first_position FROM change_log_epochs \
             ORDER BY epoch DESC LIMIT 1",
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("change_log_epochs".to_owned()))?;
    Ok(Epoch {
        epoch: row.try_get("", "epoch")?,
        xid_offset: row.try_get("", "xid_offset")?,
        first_position: row.try_get("", "first_position")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_are_read_from_postgresql_text_and_moved_by_the_offset() {
        let snapshot = parse_snapshot("725:728:725,726", 1000).unwrap();
        assert_eq!(snapshot, Snapshot::new(1728, vec![1725, 1726], vec![]));
        assert_eq!(
            parse_snapshot("5:5:", 0).unwrap(),
            Snapshot::before(5),
            "nothing running"
        );
        for bad in [
            "",
            "1:2",
            "1:2:3:4",
            "a:2:",
            "1:2:x",
            "1:9223372036854775807:",
        ] {
            assert!(parse_snapshot(bad, 1).is_err(), "{bad:?}");
        }
    }
}
