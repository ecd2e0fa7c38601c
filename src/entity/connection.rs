//! The `connections` table: its rows, the queries that read and write them,
//! and the mapping between rows and domain records.
//!
//! Every read by ID is scoped to the caller ([`secure_find`]): a connection
//! the caller is not a party to is simply not found. Every change is a write
//! guarded by the version that was read ([`update_guarded`]).

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
    /// The latest invitation's message.
    pub invitation_message: Option<String>,
    /// While PENDING: when it expires. The previous release leaves it as it
    /// was when it changes the connection, so it counts only while the
    /// connection is PENDING at `expire_version`.
    pub expire_time: Option<DateTimeUtc>,
    /// The version `expire_time` was set for.
    pub expire_version: Option<i64>,
    /// While ACTIVE: the data types waiting for the destination's approval,
    /// as `data_types`. The previous release leaves it as it was when it
    /// changes the connection, so it counts only while the connection is
    /// ACTIVE at `pending_data_types_version`.
    pub pending_data_types: Option<String>,
    /// The version `pending_data_types` was set for.
    pub pending_data_types_version: Option<i64>,
}

/// No relations are navigated through the ORM.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Select, UpdateMany,
    sea_query::{Asterisk, Expr, ExprTrait, SimpleExpr},
};
use uuid::Uuid;

use super::unreadable;
use crate::domain::{
    ConnectionId, ConnectionRecord, ConnectionState, DataType, DataTypes, Named, OrganizationId,
    Parties, Role,
};

/// ListConnections filters; `None` means "any".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Outbound (source) or inbound (destination) only.
    pub role: Option<Role>,
    /// Only this state.
    pub state: Option<ConnectionState>,
    /// Only connections with this other organization.
    pub counterparty: Option<OrganizationId>,
    /// Only connections that share this data type.
    pub data_type: Option<DataType>,
}

/// The query for connection `id`, only if `caller` is one of its parties.
pub fn secure_find_query(caller: OrganizationId, id: ConnectionId) -> Select<Entity> {
    Entity::find_by_id(id.uuid()).filter(
        Condition::any()
            .add(Column::SourceOrganizationId.eq(caller.uuid()))
            .add(Column::DestinationOrganizationId.eq(caller.uuid())),
    )
}

/// Connection `id`, only if `caller` is one of its parties.
pub async fn secure_find(
    conn: &impl ConnectionTrait,
    caller: OrganizationId,
    id: ConnectionId,
) -> Result<Option<ConnectionRecord>, DbErr> {
    secure_find_query(caller, id)
        .one(conn)
        .await?
        .map(record_from)
        .transpose()
}

/// Takes, until the write transaction `txn` ends, the lock that every
/// change to connection `id` takes first (PostgreSQL; SQLite writers take
/// turns anyway). It gives the transaction no ID, so a change that waits for
/// another gets its transaction ID, and with it its change log position,
/// only after the other has committed: a connection's events are in
/// sequence in the log, whichever request began first.
pub async fn lock_for_change(txn: &impl ConnectionTrait, id: ConnectionId) -> Result<(), DbErr> {
    if txn.get_database_backend() != sea_orm::DbBackend::Postgres {
        return Ok(());
    }
    let (high, low) = id.uuid().as_u64_pair();
    txn.execute_raw(sea_orm::Statement::from_sql_and_values(
        sea_orm::DbBackend::Postgres,
        "SELECT pg_advisory_xact_lock($1)",
        [sea_orm::Value::from((high ^ low).cast_signed())],
    ))
    .await
    .map(drop)
}

/// Connection `id`, whoever its parties are (for the service's own work).
pub async fn find(
    conn: &impl ConnectionTrait,
    id: ConnectionId,
) -> Result<Option<ConnectionRecord>, DbErr> {
    Entity::find_by_id(id.uuid())
        .one(conn)
        .await?
        .map(record_from)
        .transpose()
}

/// The ID of the connection from `source` to `destination`, if there is one.
pub async fn find_pair(
    conn: &impl ConnectionTrait,
    source: OrganizationId,
    destination: OrganizationId,
) -> Result<Option<ConnectionId>, DbErr> {
    let id: Option<Uuid> = Entity::find()
        .select_only()
        .column(Column::Id)
        .filter(Column::SourceOrganizationId.eq(source.uuid()))
        .filter(Column::DestinationOrganizationId.eq(destination.uuid()))
        .into_tuple()
        .one(conn)
        .await?;
    Ok(id.map(ConnectionId::from))
}

/// The connection from `source` to `destination`, if there is one.
pub async fn find_between(
    conn: &impl ConnectionTrait,
    source: OrganizationId,
    destination: OrganizationId,
) -> Result<Option<ConnectionRecord>, DbErr> {
    Entity::find()
        .filter(Column::SourceOrganizationId.eq(source.uuid()))
        .filter(Column::DestinationOrganizationId.eq(destination.uuid()))
        .one(conn)
        .await?
        .map(record_from)
        .transpose()
}

/// A connection as the CheckAccess index keeps it: no times, no reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRow {
    /// The connection.
    pub id: ConnectionId,
    /// Its source and destination.
    pub parties: Parties,
    /// Its state.
    pub state: ConnectionState,
    /// What it shares.
    pub data_types: DataTypes,
    /// Its version.
    pub version: i64,
}

/// Every connection with an ID after `after`, in ID order, as the
/// CheckAccess index keeps it: at most `limit`. Only the columns it needs
/// are read.
pub async fn access_rows_after(
    conn: &impl ConnectionTrait,
    after: Option<ConnectionId>,
    limit: u64,
) -> Result<Vec<AccessRow>, DbErr> {
    let mut query = Entity::find().select_only().columns([
        Column::Id,
        Column::SourceOrganizationId,
        Column::DestinationOrganizationId,
        Column::State,
        Column::DataTypes,
        Column::Version,
    ]);
    if let Some(after) = after {
        query = query.filter(Column::Id.gt(after.uuid()));
    }
    query
        .order_by_asc(Column::Id)
        .limit(limit)
        .into_tuple::<(Uuid, Uuid, Uuid, String, String, i64)>()
        .all(conn)
        .await?
        .into_iter()
        .map(|(id, source, destination, state, data_types, version)| {
            let bad =
                |err: &dyn std::fmt::Display| unreadable("connections", format!("{id}: {err}"));
            Ok(AccessRow {
                id: id.into(),
                parties: Parties {
                    source: source.into(),
                    destination: destination.into(),
                },
                state: state.parse().map_err(|err| bad(&err))?,
                data_types: DataTypes::from_storage(&data_types).map_err(|err| bad(&err))?,
                version,
            })
        })
        .collect()
}

/// How many connections there are.
pub async fn count(conn: &impl ConnectionTrait) -> Result<u64, DbErr> {
    let count: Option<i64> = Entity::find()
        .select_only()
        .column_as(Expr::col(Asterisk).count(), "count")
        .into_tuple()
        .one(conn)
        .await?;
    Ok(count.map_or(0, |n| u64::try_from(n).unwrap_or(0)))
}

/// Inserts a new connection. A connection between the same parties makes it
/// fail with a unique violation (`db::error::unique_violation`).
pub async fn insert(conn: &impl ConnectionTrait, record: &ConnectionRecord) -> Result<(), DbErr> {
    Entity::insert(active_model(record))
        .exec_without_returning(conn)
        .await?;
    Ok(())
}

/// The update that writes `next` over the version `previous_version`.
pub fn update_guarded_query(previous_version: i64, next: &ConnectionRecord) -> UpdateMany<Entity> {
    Entity::update_many()
        .set(active_model(next))
        .filter(Column::Id.eq(next.id.uuid()))
        .filter(Column::Version.eq(previous_version))
}

/// Writes `next` over the stored connection if it is still at
/// `previous_version`; false (nothing written) if anyone changed it since.
pub async fn update_guarded(
    conn: &impl ConnectionTrait,
    previous_version: i64,
    next: &ConnectionRecord,
) -> Result<bool, DbErr> {
    let result = update_guarded_query(previous_version, next)
        .exec(conn)
        .await?;
    Ok(result.rows_affected == 1)
}

/// The caller's connections matching `filter`, newest first, after the
/// connection `after`: at most `limit` of them.
pub async fn list(
    conn: &impl ConnectionTrait,
    caller: OrganizationId,
    filter: ListFilter,
    after: Option<Uuid>,
    limit: u64,
) -> Result<Vec<ConnectionRecord>, DbErr> {
    // One keyset query per side, each cut at `limit`: the newest `limit` of
    // their union are the newest overall.
    let side = |role| {
        list_side_query(caller, role, filter, after)
            .limit(limit)
            .all(conn)
    };
    let rows = match filter.role {
        Some(role) => side(role).await?,
        None => {
            let (mut outbound, inbound) =
                tokio::try_join!(side(Role::Source), side(Role::Destination))?;
            outbound.extend(inbound);
            outbound.sort_unstable_by_key(|row| std::cmp::Reverse(row.id));
            outbound.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
            outbound
        }
    };
    rows.into_iter().map(record_from).collect()
}

/// The caller's connections on the `role` side matching `filter`, newest
/// first, after the cursor.
pub fn list_side_query(
    caller: OrganizationId,
    role: Role,
    filter: ListFilter,
    after: Option<Uuid>,
) -> Select<Entity> {
    let (own, other) = match role {
        Role::Source => (
            Column::SourceOrganizationId,
            Column::DestinationOrganizationId,
        ),
        Role::Destination => (
            Column::DestinationOrganizationId,
            Column::SourceOrganizationId,
        ),
    };
    let query = match filter.counterparty {
        // At most one row: the unique (source, destination) index.
        Some(counterparty) => {
            let mut query = Entity::find()
                .filter(own.eq(caller.uuid()))
                .filter(other.eq(counterparty.uuid()));
            if let Some(state) = filter.state {
                query = query.filter(Column::State.eq(state.as_str()));
            }
            if let Some(after) = after {
                query = query.filter(Column::Id.lt(after));
            }
            query.order_by_desc(Column::Id)
        }
        None => keyset_page(own, caller, filter.state, after),
    };
    match filter.data_type {
        Some(data_type) => query.filter(shares(data_type)),
        None => query,
    }
}

/// Whether a connection's data types include `data_type`: its stored list
/// (names joined by commas), fenced with commas, contains `,NAME,`.
fn shares(data_type: DataType) -> SimpleExpr {
    Expr::cust("(',' || \"connections\".\"data_types\" || ',')")
        .like(format!("%,{},%", data_type.as_str()))
}

/// The caller's connections on one side, newest first, after the cursor.
///
/// The page is a range of the (party, id) or (party, state, id) index, written
/// so that both ends of the range bound the index scan:
/// - no state: `(party, id) < (caller, cursor) AND (party, id) >= (caller, nil)`;
/// - a state: `party = caller AND (state, id) < (state, cursor) AND
///   (state, id) >= (state, nil)`;
///
/// ordered by the index's columns, descending. With a plain `party = caller
/// AND id < cursor` the planners may instead walk the primary key (PostgreSQL
/// does for an organization holding most rows, passing every newer row of
/// everyone else; SQLite bounds only the party and skips down to the cursor).
/// PostgreSQL ends a scan only on the first column of a row comparison, so the
/// state, when there is one, leads its own comparison: a scan for a rare state
/// stops at that state's last entry instead of reading the party's others. A
/// page costs the same at any size and depth.
fn keyset_page(
    party: Column,
    caller: OrganizationId,
    state: Option<ConnectionState>,
    after: Option<Uuid>,
) -> Select<Entity> {
    let mut query = Entity::find();
    let (leading, prefix): (Column, SimpleExpr) = match state {
        Some(state) => {
            query = query.filter(party.eq(caller.uuid()));
            (Column::State, Expr::value(state.as_str()))
        }
        None => (party, Expr::value(caller.uuid())),
    };
    let key = || {
        Expr::tuple([
            Expr::col((Entity, leading)),
            Expr::col((Entity, Column::Id)),
        ])
    };
    let bound = |id: Uuid| Expr::tuple([prefix.clone(), Expr::value(id)]);
    query = query
        .filter(key().lt(bound(after.unwrap_or(Uuid::max()))))
        .filter(key().gte(bound(Uuid::nil())));
    query = query.order_by_desc(party);
    if state.is_some() {
        query = query.order_by_desc(Column::State);
    }
    query.order_by_desc(Column::Id)
}

fn active_model(record: &ConnectionRecord) -> ActiveModel {
    ActiveModel {
        id: Set(record.id.uuid()),
        source_organization_id: Set(record.parties.source.uuid()),
        destination_organization_id: Set(record.parties.destination.uuid()),
        state: Set(record.state.as_str().to_owned()),
        data_types: Set(record.data_types.to_storage()),
        version: Set(record.version),
        create_time: Set(record.create_time),
        update_time: Set(record.update_time),
        activate_time: Set(record.activate_time),
        deactivate_time: Set(record.deactivate_time),
        deactivated_by: Set(record.deactivated_by.map(|r| r.as_str().to_owned())),
        deactivation_reason: Set(record.deactivation_reason.clone()),
        invitation_message: Set(record.invitation_message.clone()),
        expire_time: Set(record.expire_time),
        expire_version: Set(record.expire_time.map(|_| record.version)),
        pending_data_types: Set(record
            .pending_data_types
            .as_ref()
            .map(DataTypes::to_storage)),
        pending_data_types_version: Set(record.pending_data_types.as_ref().map(|_| record.version)),
    }
}

fn record_from(row: Model) -> Result<ConnectionRecord, DbErr> {
    let id = row.id;
    let bad = |err: &dyn std::fmt::Display| unreadable("connections", format!("{id}: {err}"));
    let state = row.state.parse().map_err(|err| bad(&err))?;
    Ok(ConnectionRecord {
        id: row.id.into(),
        parties: Parties {
            source: row.source_organization_id.into(),
            destination: row.destination_organization_id.into(),
        },
        state,
        data_types: DataTypes::from_storage(&row.data_types).map_err(|err| bad(&err))?,
        version: row.version,
        create_time: row.create_time,
        update_time: row.update_time,
        activate_time: row.activate_time,
        deactivate_time: row.deactivate_time,
        deactivated_by: row
            .deactivated_by
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|err| bad(&err))?,
        deactivation_reason: row.deactivation_reason,
        invitation_message: row.invitation_message,
        expire_time: row.expire_time.filter(|_| {
            state == ConnectionState::Pending && row.expire_version == Some(row.version)
        }),
        pending_data_types: row
            .pending_data_types
            .filter(|_| {
                state == ConnectionState::Active
                    && row.pending_data_types_version == Some(row.version)
            })
            .as_deref()
            .map(DataTypes::from_storage)
            .transpose()
            .map_err(|err| bad(&err))?,
    })
}
