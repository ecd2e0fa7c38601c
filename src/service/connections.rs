//! Connections: creation, reads, listing and state transitions.
//!
//! Every query is scoped to the caller: a connection the caller is not a party
//! to is simply not found. Every change is one transaction holding a guarded
//! update (`WHERE id = ? AND version = ?`) and the event that records it.

use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect,
};
use tracing::instrument;

use super::{
    Page, PageTokens, ServiceError,
    idempotency::{self, Claim, IdempotencyKey},
    now, time_of,
};
use crate::{
    db,
    domain::{
        Action, ConnectionEvent, ConnectionId, ConnectionRecord, ConnectionState, DataTypes,
        EventType, OrganizationId, PageSize, Parties, Role, TransitionError, transition,
    },
    entity::{connection, connection_event, organization},
};

/// The connections business layer.
#[derive(Debug, Clone)]
pub struct Connections {
    db: DatabaseConnection,
    /// Reads outside transactions.
    reader: db::Reader,
    tokens: PageTokens,
    replays: idempotency::ReplayCounts,
}

/// What CreateConnection asks for, already validated.
#[derive(Debug, Clone)]
pub struct NewConnection {
    /// The organization to share with.
    pub destination: OrganizationId,
    /// What to share.
    pub data_types: DataTypes,
    /// Makes the call safe to retry.
    pub request_id: Option<String>,
}

/// A state change, already validated.
#[derive(Debug, Clone)]
pub struct TransitionRequest {
    /// The connection.
    pub id: ConnectionId,
    /// What to do.
    pub action: Action,
    /// If given, the change happens only if the connection still has this etag.
    pub etag: Option<String>,
    /// Deactivation reason.
    pub reason: Option<String>,
    /// Makes the call safe to retry.
    pub request_id: Option<String>,
}

/// ListConnections filters; `None` means "any".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Outbound (source) or inbound (destination) only.
    pub role: Option<Role>,
    /// Only this state.
    pub state: Option<ConnectionState>,
    /// Only connections with this other organization.
    pub counterparty: Option<OrganizationId>,
}

impl Connections {
    /// The business layer over `db`, reading through `reader` outside
    /// transactions and signing page tokens with `tokens`.
    pub fn new(db: DatabaseConnection, reader: db::Reader, tokens: PageTokens) -> Self {
        Self {
            db,
            reader,
            tokens,
            replays: idempotency::ReplayCounts::default(),
        }
    }

    /// How often calls were answered with a recorded result (for metrics).
    pub fn replays(&self) -> &idempotency::ReplayCounts {
        &self.replays
    }

    /// Creates a PENDING connection from `caller` to `new.destination`.
    #[instrument(skip_all, fields(caller = %caller, destination = %new.destination))]
    pub async fn create(
        &self,
        caller: OrganizationId,
        new: NewConnection,
    ) -> Result<ConnectionRecord, ServiceError> {
        if new.destination == caller {
            return Err(ServiceError::SelfConnection);
        }
        let key = new.request_id.clone().map(|request_id| {
            IdempotencyKey::new(
                caller,
                "CreateConnection",
                request_id,
                &[
                    new.destination.uuid().as_bytes(),
                    new.data_types.to_storage().as_bytes(),
                ],
            )
        });
        let txn = match self.begin(key.as_ref()).await? {
            Begun::Fresh(txn) => txn,
            Begun::Done(record) => return Ok(record),
        };
        if organization::Entity::find_by_id(new.destination.uuid())
            .one(&*txn)
            .await?
            .is_none()
        {
            return Err(ServiceError::OrganizationNotFound);
        }
        if let Some(existing) = find_pair(&*txn, caller, new.destination).await? {
            return Err(ServiceError::ConnectionAlreadyExists {
                connection_id: existing,
            });
        }

        let id = ConnectionId::generate();
        let created = time_of(id.uuid());
        let record = ConnectionRecord {
            id,
            parties: Parties {
                source: caller,
                destination: new.destination,
            },
            state: ConnectionState::Pending,
            data_types: new.data_types,
            version: 1,
            create_time: created,
            update_time: created,
            activate_time: None,
            deactivate_time: None,
            deactivated_by: None,
            deactivation_reason: None,
        };
        let inserted = connection::Entity::insert(active_model(&record))
            .exec_without_returning(&*txn)
            .await;
        if let Err(err) = inserted {
            if db::error::unique_violation(&err) {
                // A concurrent create of the same pair committed first.
                drop(txn);
                return match find_pair(&self.reader, caller, new.destination).await? {
                    Some(connection_id) => {
                        Err(ServiceError::ConnectionAlreadyExists { connection_id })
                    }
                    None => Err(ServiceError::ConcurrentModification),
                };
            }
            return Err(err.into());
        }
        insert_event(
            &*txn,
            &record,
            EventDraft {
                event_type: EventType::Created,
                from_state: None,
                actor: caller,
                actor_role: Role::Source,
                reason: None,
            },
        )
        .await?;
        commit(txn, key.as_ref(), &record).await?;
        tracing::info!(connection_id = %record.id, "connection created");
        Ok(record)
    }

    /// The connection `id`, if `caller` is a party to it.
    #[instrument(skip_all, fields(caller = %caller, connection_id = %id))]
    pub async fn get(
        &self,
        caller: OrganizationId,
        id: ConnectionId,
    ) -> Result<ConnectionRecord, ServiceError> {
        record_from(secure_find(&self.reader, caller, id).await?)
    }

    /// The caller's connections matching `filter`, newest first.
    #[instrument(skip_all, fields(caller = %caller))]
    pub async fn list(
        &self,
        caller: OrganizationId,
        filter: ListFilter,
        page_size: PageSize,
        page_token: Option<&str>,
    ) -> Result<Page<ConnectionRecord>, ServiceError> {
        let scope = list_scope(caller, &filter);
        let after = match page_token {
            Some(token) => {
                let cursor = self.tokens.verify(&scope, token)?;
                let uuid =
                    uuid::Uuid::from_slice(&cursor).map_err(|_| ServiceError::InvalidPageToken)?;
                Some(uuid)
            }
            None => None,
        };

        // One keyset query per side, each cut at one row past the page: the
        // newest `page_size + 1` of their union are the newest overall.
        let fetch = u64::from(page_size.get()) + 1;
        let side = |role| {
            let (own, other) = match role {
                Role::Source => (
                    connection::Column::SourceOrganizationId,
                    connection::Column::DestinationOrganizationId,
                ),
                Role::Destination => (
                    connection::Column::DestinationOrganizationId,
                    connection::Column::SourceOrganizationId,
                ),
            };
            let query = match filter.counterparty {
                // At most one row: the unique (source, destination) index.
                Some(counterparty) => {
                    let mut query = connection::Entity::find()
                        .filter(own.eq(caller.uuid()))
                        .filter(other.eq(counterparty.uuid()));
                    if let Some(state) = filter.state {
                        query = query.filter(connection::Column::State.eq(state.as_str()));
                    }
                    if let Some(after) = after {
                        query = query.filter(connection::Column::Id.lt(after));
                    }
                    query.order_by_desc(connection::Column::Id)
                }
                None => keyset_page(own, caller, filter.state, after),
            };
            query.limit(fetch).all(&self.reader)
        };
        let mut rows = match filter.role {
            Some(role) => side(role).await?,
            None => {
                let (mut outbound, inbound) =
                    tokio::try_join!(side(Role::Source), side(Role::Destination))?;
                outbound.extend(inbound);
                outbound.sort_unstable_by_key(|row| std::cmp::Reverse(row.id));
                outbound
            }
        };

        let has_more = rows.len() > page_size.as_usize();
        rows.truncate(page_size.as_usize());
        let next_page_token = match rows.last() {
            Some(last) if has_more => Some(self.tokens.issue(&scope, last.id.as_bytes())),
            _ => None,
        };
        let items = rows
            .into_iter()
            .map(record_from)
            .collect::<Result<_, _>>()?;
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// Activates, deactivates or reactivates a connection.
    #[instrument(skip_all, fields(caller = %caller, connection_id = %request.id, action = ?request.action))]
    pub async fn transition(
        &self,
        caller: OrganizationId,
        request: TransitionRequest,
    ) -> Result<ConnectionRecord, ServiceError> {
        let key = request.request_id.clone().map(|request_id| {
            IdempotencyKey::new(
                caller,
                request.action.method(),
                request_id,
                &[
                    request.id.uuid().as_bytes(),
                    request.etag.as_deref().unwrap_or_default().as_bytes(),
                    request.reason.as_deref().unwrap_or_default().as_bytes(),
                ],
            )
        });
        let txn = match self.begin(key.as_ref()).await? {
            Begun::Fresh(txn) => txn,
            Begun::Done(record) => return Ok(record),
        };
        let current = record_from(secure_find(&*txn, caller, request.id).await?)?;
        let role = current.parties.role_of(caller);
        let etag_matches = request
            .etag
            .as_deref()
            .is_none_or(|etag| etag == current.etag());
        let next = transition(current.state, request.action, role, etag_matches)
            .map_err(|err| transition_error(err, request.action))?;
        let role = role.expect("transition() refuses non-parties");

        let changed = now();
        let mut updated = current.clone();
        updated.state = next;
        updated.version = current.version + 1;
        updated.update_time = changed;
        let mut reason = None;
        match request.action {
            Action::Activate => updated.activate_time = Some(changed),
            Action::Deactivate => {
                reason = request.reason.filter(|r| !r.is_empty());
                updated.deactivate_time = Some(changed);
                updated.deactivated_by = Some(role);
                updated.deactivation_reason = reason.clone();
            }
            Action::Reactivate => {}
        }

        save_transition(
            &*txn,
            &current,
            &updated,
            EventDraft {
                event_type: request.action.event_type(),
                from_state: Some(current.state),
                actor: caller,
                actor_role: role,
                reason,
            },
        )
        .await?;
        commit(txn, key.as_ref(), &updated).await?;
        tracing::info!(from = %current.state, to = %next, "connection changed");
        Ok(updated)
    }

    /// The history of a connection the caller is a party to, oldest first.
    #[instrument(skip_all, fields(caller = %caller, connection_id = %id))]
    pub async fn list_events(
        &self,
        caller: OrganizationId,
        id: ConnectionId,
        page_size: PageSize,
        page_token: Option<&str>,
    ) -> Result<Page<ConnectionEvent>, ServiceError> {
        let scope = format!("ListConnectionEvents|{caller}|{id}");
        let after = match page_token {
            Some(token) => {
                let cursor = self.tokens.verify(&scope, token)?;
                let bytes: [u8; 8] = cursor
                    .try_into()
                    .map_err(|_| ServiceError::InvalidPageToken)?;
                i64::from_be_bytes(bytes)
            }
            None => 0,
        };
        secure_find(&self.reader, caller, id).await?;
        let mut rows = connection_event::Entity::find()
            .filter(connection_event::Column::ConnectionId.eq(id.uuid()))
            .filter(connection_event::Column::Sequence.gt(after))
            .order_by_asc(connection_event::Column::Sequence)
            .limit(u64::from(page_size.get()) + 1)
            .all(&self.reader)
            .await?;
        let has_more = rows.len() > page_size.as_usize();
        rows.truncate(page_size.as_usize());
        let next_page_token = match rows.last() {
            Some(last) if has_more => Some(self.tokens.issue(&scope, &last.sequence.to_be_bytes())),
            _ => None,
        };
        let items = rows.into_iter().map(event_from).collect::<Result<_, _>>()?;
        Ok(Page {
            items,
            next_page_token,
        })
    }
}

/// A write transaction, or the recorded result of an earlier call.
enum Begun {
    /// Execute the call in this transaction.
    Fresh(db::WriteTransaction),
    /// A call with the same request_id succeeded before: this is its result.
    Done(ConnectionRecord),
}

impl Connections {
    /// Begins a write transaction and, for a call with a request_id, claims
    /// it, or returns the result recorded by an earlier call.
    async fn begin(&self, key: Option<&IdempotencyKey>) -> Result<Begun, ServiceError> {
        let txn = db::begin_write(&self.db).await?;
        let Some(key) = key else {
            return Ok(Begun::Fresh(txn));
        };
        match idempotency::claim(&*txn, key).await? {
            Claim::Fresh => Ok(Begun::Fresh(txn)),
            Claim::Replay(record) => {
                self.replays.recorded();
                Ok(Begun::Done(record))
            }
            Claim::Raced => {
                txn.rollback().await?;
                let record = idempotency::replay_committed(&self.reader, key).await?;
                self.replays.after_race();
                Ok(Begun::Done(record))
            }
        }
    }
}

/// Records the result for the call's request_id, if any, and commits.
async fn commit(
    txn: db::WriteTransaction,
    key: Option<&IdempotencyKey>,
    record: &ConnectionRecord,
) -> Result<(), ServiceError> {
    if let Some(key) = key {
        idempotency::complete(&*txn, key, record).await?;
    }
    txn.commit().await?;
    Ok(())
}

/// The scope a ListConnections page token is bound to.
fn list_scope(caller: OrganizationId, filter: &ListFilter) -> String {
    let role = filter.role.map_or("*", Role::as_str);
    let state = filter.state.map_or("*", ConnectionState::as_str);
    let counterparty = filter
        .counterparty
        .map_or_else(|| "*".to_owned(), |id| id.to_string());
    format!("ListConnections|{caller}|{role}|{state}|{counterparty}")
}

fn transition_error(err: TransitionError, action: Action) -> ServiceError {
    match err {
        TransitionError::NotAParty => ServiceError::ConnectionNotFound,
        TransitionError::WrongRole {
            required: Role::Source,
        } => ServiceError::CallerNotSource,
        TransitionError::WrongRole {
            required: Role::Destination,
        } => ServiceError::CallerNotDestination,
        TransitionError::InvalidState { current } => {
            ServiceError::InvalidStateTransition { action, current }
        }
        TransitionError::EtagMismatch => ServiceError::EtagMismatch,
    }
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
    party: connection::Column,
    caller: OrganizationId,
    state: Option<ConnectionState>,
    after: Option<uuid::Uuid>,
) -> sea_orm::Select<connection::Entity> {
    use sea_orm::sea_query::{Expr, ExprTrait, SimpleExpr};

    let mut query = connection::Entity::find();
    let (leading, prefix): (connection::Column, SimpleExpr) = match state {
        Some(state) => {
            query = query.filter(party.eq(caller.uuid()));
            (connection::Column::State, Expr::value(state.as_str()))
        }
        None => (party, Expr::value(caller.uuid())),
    };
    let key = || {
        Expr::tuple([
            Expr::col((connection::Entity, leading)),
            Expr::col((connection::Entity, connection::Column::Id)),
        ])
    };
    let bound = |id: uuid::Uuid| Expr::tuple([prefix.clone(), Expr::value(id)]);
    query = query
        .filter(key().lt(bound(after.unwrap_or(uuid::Uuid::max()))))
        .filter(key().gte(bound(uuid::Uuid::nil())));
    query = query.order_by_desc(party);
    if state.is_some() {
        query = query.order_by_desc(connection::Column::State);
    }
    query.order_by_desc(connection::Column::Id)
}

/// Loads a connection only if `caller` is one of its parties.
async fn secure_find(
    conn: &impl ConnectionTrait,
    caller: OrganizationId,
    id: ConnectionId,
) -> Result<connection::Model, ServiceError> {
    connection::Entity::find_by_id(id.uuid())
        .filter(
            Condition::any()
                .add(connection::Column::SourceOrganizationId.eq(caller.uuid()))
                .add(connection::Column::DestinationOrganizationId.eq(caller.uuid())),
        )
        .one(conn)
        .await?
        .ok_or(ServiceError::ConnectionNotFound)
}

/// The ID of the connection from `source` to `destination`, if there is one.
async fn find_pair(
    conn: &impl ConnectionTrait,
    source: OrganizationId,
    destination: OrganizationId,
) -> Result<Option<ConnectionId>, ServiceError> {
    let id: Option<uuid::Uuid> = connection::Entity::find()
        .select_only()
        .column(connection::Column::Id)
        .filter(connection::Column::SourceOrganizationId.eq(source.uuid()))
        .filter(connection::Column::DestinationOrganizationId.eq(destination.uuid()))
        .into_tuple()
        .one(conn)
        .await?;
    Ok(id.map(ConnectionId::from))
}

/// The event that records a change, before it is numbered and stored.
struct EventDraft {
    event_type: EventType,
    from_state: Option<ConnectionState>,
    actor: OrganizationId,
    actor_role: Role,
    reason: Option<String>,
}

/// Writes `updated` over `previous` and records the event, in the caller's
/// transaction. The update is guarded by `previous.version`: if anyone changed
/// the row since it was read, nothing is written and the result is
/// `ConcurrentModification`.
async fn save_transition(
    conn: &impl ConnectionTrait,
    previous: &ConnectionRecord,
    updated: &ConnectionRecord,
    event: EventDraft,
) -> Result<(), ServiceError> {
    let result = connection::Entity::update_many()
        .set(active_model(updated))
        .filter(connection::Column::Id.eq(previous.id.uuid()))
        .filter(connection::Column::Version.eq(previous.version))
        .exec(conn)
        .await?;
    if result.rows_affected != 1 {
        return Err(ServiceError::ConcurrentModification);
    }
    insert_event(conn, updated, event).await
}

/// Appends the event numbered `record.version` to the record's history.
async fn insert_event(
    conn: &impl ConnectionTrait,
    record: &ConnectionRecord,
    event: EventDraft,
) -> Result<(), ServiceError> {
    let id = uuid::Uuid::now_v7();
    let row = connection_event::ActiveModel {
        id: Set(id),
        connection_id: Set(record.id.uuid()),
        sequence: Set(record.version),
        event_type: Set(event.event_type.as_str().to_owned()),
        from_state: Set(event.from_state.map(|s| s.as_str().to_owned())),
        to_state: Set(record.state.as_str().to_owned()),
        actor_organization_id: Set(event.actor.uuid()),
        actor_role: Set(event.actor_role.as_str().to_owned()),
        reason: Set(event.reason),
        create_time: Set(record.update_time),
    };
    connection_event::Entity::insert(row)
        .exec_without_returning(conn)
        .await?;
    Ok(())
}

fn active_model(record: &ConnectionRecord) -> connection::ActiveModel {
    connection::ActiveModel {
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
    }
}

fn record_from(model: connection::Model) -> Result<ConnectionRecord, ServiceError> {
    Ok(ConnectionRecord {
        id: model.id.into(),
        parties: Parties {
            source: model.source_organization_id.into(),
            destination: model.destination_organization_id.into(),
        },
        state: model.state.parse().map_err(ServiceError::internal)?,
        data_types: DataTypes::from_storage(&model.data_types).map_err(ServiceError::internal)?,
        version: model.version,
        create_time: model.create_time,
        update_time: model.update_time,
        activate_time: model.activate_time,
        deactivate_time: model.deactivate_time,
        deactivated_by: model
            .deactivated_by
            .map(|r| r.parse())
            .transpose()
            .map_err(ServiceError::internal)?,
        deactivation_reason: model.deactivation_reason,
    })
}

fn event_from(model: connection_event::Model) -> Result<ConnectionEvent, ServiceError> {
    Ok(ConnectionEvent {
        id: model.id,
        connection_id: model.connection_id.into(),
        sequence: model.sequence,
        event_type: model.event_type.parse().map_err(ServiceError::internal)?,
        from_state: model
            .from_state
            .map(|s| s.parse())
            .transpose()
            .map_err(ServiceError::internal)?,
        to_state: model.to_state.parse().map_err(ServiceError::internal)?,
        actor_organization_id: model.actor_organization_id.into(),
        actor_role: model.actor_role.parse().map_err(ServiceError::internal)?,
        reason: model.reason,
        create_time: model.create_time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::DatabaseSettings,
        db::connect,
        domain::{DataType, DisplayName},
        service::Organizations,
    };
    use migration::{Migrator, MigratorTrait};

    async fn setup() -> (Connections, OrganizationId, OrganizationId) {
        let db = connect(&DatabaseSettings::new("sqlite::memory:")).await.unwrap();
        Migrator::up(&db, None).await.unwrap();
        let tokens = PageTokens::new([1; 32]);
        let orgs = Organizations::new(db.clone(), db.clone().into(), tokens.clone());
        let source = orgs.create(DisplayName::parse("S").unwrap()).await.unwrap();
        let destination = orgs.create(DisplayName::parse("D").unwrap()).await.unwrap();
        (
            Connections::new(db.clone(), db.into(), tokens),
            source.id,
            destination.id,
        )
    }

    #[tokio::test]
    async fn a_guarded_update_from_a_stale_read_writes_nothing() {
        let (connections, source, destination) = setup().await;
        let stale = connections
            .create(
                source,
                NewConnection {
                    destination,
                    data_types: DataTypes::new([DataType::Inquiry]).unwrap(),
                    request_id: None,
                },
            )
            .await
            .unwrap();
        // Another writer changes the connection after our read.
        let activated = connections
            .transition(
                destination,
                TransitionRequest {
                    id: stale.id,
                    action: Action::Activate,
                    etag: None,
                    reason: None,
                    request_id: None,
                },
            )
            .await
            .unwrap();

        // Our write, based on the stale read, loses the race.
        let mut deactivated = stale.clone();
        deactivated.state = ConnectionState::Inactive;
        deactivated.version = stale.version + 1;
        let txn = db::begin_write(&connections.db).await.unwrap();
        let result = save_transition(
            &*txn,
            &stale,
            &deactivated,
            EventDraft {
                event_type: EventType::Deactivated,
                from_state: Some(stale.state),
                actor: source,
                actor_role: Role::Source,
                reason: None,
            },
        )
        .await;
        assert!(matches!(result, Err(ServiceError::ConcurrentModification)));
        drop(txn);

        assert_eq!(connections.get(source, stale.id).await.unwrap(), activated);
        let events = connections
            .list_events(source, stale.id, PageSize::from_request(0).unwrap(), None)
            .await
            .unwrap();
        assert_eq!(events.items.len(), 2);
    }
}
