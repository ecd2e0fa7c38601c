//! Connections: creation, reads, listing and state transitions.
//!
//! Each use case loads what it needs through `store`, lets the domain decide
//! (`ConnectionRecord::create`, `ConnectionRecord::apply`), and saves the
//! result and its event in one write transaction; the write is guarded by the
//! version that was read.

use chrono::TimeDelta;
use sea_orm::DatabaseConnection;
use tracing::instrument;

use super::{
    ChangeFeed, ChangeTokens, Page, PageTokens, ServiceError,
    idempotency::{self, Claim, Encode, IdempotencyKey, Outcome, Recorded},
    now, time_of,
    webhooks::{self, WebhookBody},
};
pub use crate::entity::connection::ListFilter;
use crate::{
    db,
    domain::{
        Action, Caller, Change, ConnectionEvent, ConnectionId, ConnectionRecord, DataTypes,
        Invitation, Named, OrganizationId, PageSize, Parties, Role, TransitionError,
    },
    entity::{
        connection,
        connection_event::{self, Appended},
        connection_expiry, organization, trusted_source,
    },
};

/// The connections business layer.
#[derive(Debug, Clone)]
pub struct Connections {
    db: DatabaseConnection,
    /// Reads outside transactions.
    reader: db::Reader,
    tokens: PageTokens,
    change_tokens: ChangeTokens,
    replays: idempotency::ReplayCounts,
    /// The response a call's replays return.
    encode: Encode<ConnectionRecord>,
    /// Told of every commit.
    feed: ChangeFeed,
    /// Makes the body of each event's webhook deliveries; `None`: events are
    /// not queued for webhooks.
    webhook_body: Option<WebhookBody>,
    /// How long a connection may stay PENDING; `None`: for ever.
    pending_lifetime: Option<TimeDelta>,
}

/// A connection as a write left it, and the change token just after the
/// write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The connection after the change.
    pub record: ConnectionRecord,
    /// The change token of the change: every change before it, and it.
    pub change_token: String,
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
    /// The invitation message, if any.
    pub message: Option<String>,
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
    /// Invitation message, for a reactivation.
    pub message: Option<String>,
    /// The full new set of data types, for an update of them.
    pub data_types: Option<DataTypes>,
    /// Makes the call safe to retry.
    pub request_id: Option<String>,
}

impl Connections {
    /// The business layer over `db`, reading through `reader` outside
    /// transactions, signing page tokens with `tokens`, and recording for
    /// retries the responses `encode` makes of its results.
    pub fn new(
        db: DatabaseConnection,
        reader: db::Reader,
        tokens: PageTokens,
        encode: Encode<ConnectionRecord>,
    ) -> Self {
        Self {
            db,
            change_tokens: ChangeTokens::new(tokens.clone()),
            tokens,
            replays: idempotency::ReplayCounts::default(),
            encode,
            feed: ChangeFeed::new(reader.clone()),
            reader,
            webhook_body: None,
            pending_lifetime: None,
        }
    }

    /// Lets connections stay PENDING at most `lifetime` (`None`: for ever);
    /// see [`Connections::expire_due`].
    pub fn expiring_after(mut self, lifetime: Option<TimeDelta>) -> Self {
        self.pending_lifetime = lifetime;
        self
    }

    /// Queues every event, in the transaction that writes it, for the
    /// webhook endpoints of both parties that take it, with the body `body`
    /// makes.
    pub fn queueing_webhooks(mut self, body: WebhookBody) -> Self {
        self.webhook_body = Some(body);
        self
    }

    /// Tells `feed` of every commit, so that it follows this process's
    /// writes at once.
    pub fn notifying(mut self, feed: ChangeFeed) -> Self {
        self.feed = feed;
        self
    }

    /// How often calls were answered with a recorded result (for metrics).
    pub fn replays(&self) -> &idempotency::ReplayCounts {
        &self.replays
    }

    /// Creates a PENDING connection from `caller`'s organization to
    /// `new.destination`; its event names `caller`'s key.
    #[instrument(skip_all, fields(caller = %caller.organization, destination = %new.destination))]
    pub async fn create(
        &self,
        caller: &Caller,
        new: NewConnection,
    ) -> Result<Outcome<Written>, ServiceError> {
        let source = caller.organization;
        if new.destination == source {
            return Err(ServiceError::SelfConnection);
        }
        let key = new.request_id.clone().map(|request_id| {
            let destination = new.destination.uuid();
            let data_types = new.data_types.to_storage();
            let mut parameters = vec![destination.as_bytes().as_slice(), data_types.as_bytes()];
            // Only when there is one: a call without a message fingerprints
            // as it did before messages, so that its retries match across
            // releases during an upgrade.
            parameters.extend(new.message.as_deref().map(str::as_bytes));
            IdempotencyKey::new(source, "CreateConnection", request_id, &parameters)
        });
        let txn = match self.begin(key.as_ref(), None).await? {
            Begun::Fresh(txn) => txn,
            Begun::Done(response) => return Ok(Outcome::Replayed(response)),
        };
        if !organization::exists(&*txn, new.destination).await? {
            return Err(ServiceError::OrganizationNotFound);
        }
        if let Some(existing) = connection::find_pair(&*txn, source, new.destination).await? {
            return Err(ServiceError::ConnectionAlreadyExists {
                connection_id: existing,
            });
        }

        let id = ConnectionId::generate();
        let (record, event) = ConnectionRecord::create(
            id,
            caller,
            new.destination,
            new.data_types,
            time_of(id.uuid()),
            Invitation {
                message: new.message,
                pending_lifetime: self.pending_lifetime,
            },
        );
        if let Err(err) = connection::insert(&*txn, &record).await {
            if db::error::unique_violation(&err) {
                // A concurrent create of the same pair committed first.
                drop(txn);
                return match connection::find_pair(&self.reader, source, new.destination).await? {
                    Some(connection_id) => {
                        Err(ServiceError::ConnectionAlreadyExists { connection_id })
                    }
                    None => Err(ServiceError::ConcurrentModification),
                };
            }
            return Err(err.into());
        }
        if record.expire_time.is_some() {
            connection_expiry::set(&*txn, id, record.expire_time).await?;
        }
        let appended = connection_event::append(&*txn, &event).await?;
        let written = self.commit(txn, key.as_ref(), record, appended).await?;
        tracing::info!(connection_id = %written.record.id, "connection created");
        Ok(Outcome::Fresh(
            self.activate_if_trusted(key.as_ref(), written).await,
        ))
    }

    /// The connection `id`, if `caller` is a party to it.
    #[instrument(skip_all, fields(caller = %caller, connection_id = %id))]
    pub async fn get(
        &self,
        caller: OrganizationId,
        id: ConnectionId,
    ) -> Result<ConnectionRecord, ServiceError> {
        connection::secure_find(&self.reader, caller, id)
            .await?
            .ok_or(ServiceError::ConnectionNotFound)
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
        let after = self.tokens.cursor(&scope, page_token, |cursor| {
            uuid::Uuid::from_slice(cursor).ok()
        })?;
        let rows = connection::list(&self.reader, caller, filter, after, page_size.fetch()).await?;
        Ok(self.tokens.page(&scope, page_size, rows, |last| {
            last.id.uuid().as_bytes().to_vec()
        }))
    }

    /// Activates, deactivates or reactivates a connection, or changes its
    /// data types; its event names `caller`'s key.
    #[instrument(skip_all, fields(caller = %caller.organization, connection_id = %request.id, action = ?request.action))]
    pub async fn transition(
        &self,
        caller: &Caller,
        request: TransitionRequest,
    ) -> Result<Outcome<Written>, ServiceError> {
        let organization = caller.organization;
        let key = request.request_id.clone().map(|request_id| {
            let id = request.id.uuid();
            let mut parameters = vec![
                id.as_bytes().as_slice(),
                request.etag.as_deref().unwrap_or_default().as_bytes(),
                request.reason.as_deref().unwrap_or_default().as_bytes(),
            ];
            // Only when there is one, as for a creation.
            parameters.extend(request.message.as_deref().map(str::as_bytes));
            let data_types = request.data_types.as_ref().map(DataTypes::to_storage);
            parameters.extend(data_types.as_deref().map(str::as_bytes));
            IdempotencyKey::new(
                organization,
                operation(request.action),
                request_id,
                &parameters,
            )
        });
        let txn = match self.begin(key.as_ref(), Some(request.id)).await? {
            Begun::Fresh(txn) => txn,
            Begun::Done(response) => return Ok(Outcome::Replayed(response)),
        };
        let current = connection::secure_find(&*txn, organization, request.id)
            .await?
            .ok_or(ServiceError::ConnectionNotFound)?;
        let (next, event) = current
            .apply(Change {
                action: request.action,
                caller: caller.clone(),
                etag: request.etag,
                reason: request.reason,
                at: now(),
                message: request.message,
                pending_lifetime: self.pending_lifetime,
                data_types: request.data_types,
            })
            .map_err(|err| transition_error(err, request.action))?;
        if !connection::update_guarded(&*txn, current.version, &next).await? {
            return Err(ServiceError::ConcurrentModification);
        }
        if current.expire_time != next.expire_time {
            connection_expiry::set(&*txn, next.id, next.expire_time).await?;
        }
        let appended = connection_event::append(&*txn, &event).await?;
        let written = self.commit(txn, key.as_ref(), next, appended).await?;
        tracing::info!(from = %current.state, to = %written.record.state, "connection changed");
        if request.action == Action::Reactivate {
            return Ok(Outcome::Fresh(
                self.activate_if_trusted(key.as_ref(), written).await,
            ));
        }
        Ok(Outcome::Fresh(written))
    }

    /// What a creation or a reactivation that `written` records ends with:
    /// when the destination's policy trusts the source, the connection
    /// activated on the destination's behalf, in a transaction of its own
    /// (on PostgreSQL a transaction appends one event), which also makes
    /// the activated connection the call's result for its request_id.
    /// Otherwise, or when that fails (another change came first, or the
    /// database did not answer), `written`: the connection stays PENDING
    /// for the destination to activate.
    async fn activate_if_trusted(&self, key: Option<&IdempotencyKey>, written: Written) -> Written {
        match self.activate_by_policy(key, &written.record).await {
            Ok(Some(activated)) => activated,
            Ok(None) => written,
            Err(err) => {
                tracing::warn!(
                    connection_id = %written.record.id,
                    error = %err,
                    "activation by the destination's policy failed: the connection stays pending"
                );
                written
            }
        }
    }

    async fn activate_by_policy(
        &self,
        key: Option<&IdempotencyKey>,
        pending: &ConnectionRecord,
    ) -> Result<Option<Written>, ServiceError> {
        let Parties {
            source,
            destination,
        } = pending.parties;
        if !trusted_source::trusts(&self.reader, destination, source).await? {
            return Ok(None);
        }
        let txn = db::begin_write(&self.db).await?;
        connection::lock_for_change(&*txn, pending.id).await?;
        let Some(current) = connection::find(&*txn, pending.id).await? else {
            return Ok(None);
        };
        if current.version != pending.version {
            // Changed since the call's own write: nothing to activate.
            return Ok(None);
        }
        let Some((next, event)) = current.activate_by_policy(now()) else {
            return Ok(None);
        };
        if !connection::update_guarded(&*txn, current.version, &next).await? {
            return Ok(None);
        }
        if current.expire_time.is_some() {
            connection_expiry::set(&*txn, next.id, None).await?;
        }
        let appended = connection_event::append(&*txn, &event).await?;
        let written = self.commit(txn, key, next, appended).await?;
        tracing::info!(connection_id = %written.record.id, "connection activated by the destination's policy");
        Ok(Some(written))
    }

    /// Expires every PENDING connection whose expire time has come (at most
    /// `limit`, soonest first), each in a transaction of its own, guarded
    /// like any change: an activation that commits first wins, and the
    /// connection is then left alone. Returns how many it expired.
    #[instrument(skip_all)]
    pub async fn expire_due(&self, limit: u64) -> Result<usize, ServiceError> {
        let due = connection_expiry::due(&self.reader, now(), limit).await?;
        let mut expired = 0;
        for id in due {
            let txn = db::begin_write(&self.db).await?;
            connection::lock_for_change(&*txn, id).await?;
            let Some(current) = connection::find(&*txn, id).await? else {
                continue;
            };
            let Some((next, event)) = current.expire(now()) else {
                // Activated, deactivated or reactivated since: not due.
                if current.expire_time.is_none() {
                    connection_expiry::set(&*txn, id, None).await?;
                    txn.commit().await?;
                }
                continue;
            };
            if !connection::update_guarded(&*txn, current.version, &next).await? {
                continue;
            }
            connection_expiry::set(&*txn, id, None).await?;
            let appended = connection_event::append(&*txn, &event).await?;
            self.commit(txn, None, next, appended).await?;
            tracing::info!(connection_id = %id, "pending connection expired");
            expired += 1;
        }
        Ok(expired)
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
        let after = self.tokens.cursor(&scope, page_token, |cursor| {
            Some(i64::from_be_bytes(cursor.try_into().ok()?))
        })?;
        if connection::secure_find(&self.reader, caller, id)
            .await?
            .is_none()
        {
            return Err(ServiceError::ConnectionNotFound);
        }
        let rows =
            connection_event::list(&self.reader, id, after.unwrap_or(0), page_size.fetch()).await?;
        Ok(self.tokens.page(&scope, page_size, rows, |last| {
            last.sequence.to_be_bytes().to_vec()
        }))
    }
}

/// A write transaction, or the recorded result of an earlier call.
enum Begun {
    /// Execute the call in this transaction.
    Fresh(db::WriteTransaction),
    /// A call with the same request_id succeeded before: what it returned.
    Done(Recorded),
}

impl Connections {
    /// Begins a write transaction (taking the lock for changes to
    /// `changing`, if given, before anything else) and, for a call with a
    /// request_id, claims it, or returns the result recorded by an earlier
    /// call.
    async fn begin(
        &self,
        key: Option<&IdempotencyKey>,
        changing: Option<ConnectionId>,
    ) -> Result<Begun, ServiceError> {
        let txn = db::begin_write(&self.db).await?;
        if let Some(id) = changing {
            connection::lock_for_change(&*txn, id).await?;
        }
        let Some(key) = key else {
            return Ok(Begun::Fresh(txn));
        };
        match idempotency::claim(&*txn, key).await? {
            Claim::Fresh => Ok(Begun::Fresh(txn)),
            Claim::Replay(response) => {
                self.replays.recorded();
                Ok(Begun::Done(response))
            }
            Claim::Raced => {
                txn.rollback().await?;
                let response = idempotency::replay_committed(&self.reader, key).await?;
                self.replays.after_race();
                Ok(Begun::Done(response))
            }
        }
    }

    /// Queues the event the call wrote for webhooks, records what the call
    /// returns for its request_id, if any, and commits: `record` is the
    /// connection as the call left it, and `appended` the event it wrote.
    async fn commit(
        &self,
        txn: db::WriteTransaction,
        key: Option<&IdempotencyKey>,
        record: ConnectionRecord,
        appended: Appended,
    ) -> Result<Written, ServiceError> {
        let written = Written {
            change_token: self.change_tokens.issue(&appended.seen),
            record,
        };
        if let Some(body) = self.webhook_body {
            webhooks::queue(
                &*txn,
                &appended,
                &written.record,
                &written.change_token,
                body,
            )
            .await?;
        }
        let position = appended.position;
        if let Some(key) = key {
            let recorded = Recorded {
                response: (self.encode)(&written.record),
                change_token: written.change_token.clone(),
            };
            idempotency::complete(&*txn, key, recorded).await?;
        }
        txn.commit().await?;
        self.feed.committed(position);
        Ok(written)
    }
}

/// The name under which calls taking `action` record their request_ids
/// (stored: changing one would forget the records made under it).
fn operation(action: Action) -> &'static str {
    match action {
        Action::Activate => "ActivateConnection",
        Action::Deactivate => "DeactivateConnection",
        Action::Reactivate => "ReactivateConnection",
        Action::UpdateDataTypes | Action::NarrowDataTypes => "UpdateConnectionDataTypes",
        Action::ApproveDataTypes => "ApproveDataTypes",
        Action::DeclineDataTypes => "DeclineDataTypes",
    }
}

/// The scope a ListConnections page token is bound to.
fn list_scope(caller: OrganizationId, filter: &ListFilter) -> String {
    let role = filter.role.map_or("*", Named::as_str);
    let state = filter.state.map_or("*", Named::as_str);
    let counterparty = filter
        .counterparty
        .map_or_else(|| "*".to_owned(), |id| id.to_string());
    let scope = format!("ListConnections|{caller}|{role}|{state}|{counterparty}");
    // Only with the filter: tokens without it are bound as they were before
    // it existed, so that they pass between releases during an upgrade.
    match filter.data_type {
        Some(data_type) => format!("{scope}|{data_type}"),
        None => scope,
    }
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
        TransitionError::Expired => ServiceError::ConnectionExpired,
        TransitionError::NoPendingDataTypes => ServiceError::NoPendingDataTypes,
        TransitionError::NoDataTypesLeft => ServiceError::NoDataTypesLeft,
        TransitionError::DataTypesUnchanged => ServiceError::DataTypesUnchanged,
        TransitionError::EtagMismatch => ServiceError::EtagMismatch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::testing;

    async fn setup() -> (Connections, Caller, Caller) {
        let (db, tokens, source, destination) = testing::two_organizations().await;
        (
            Connections::new(db.clone(), db.into(), tokens, |_| Vec::new()),
            source,
            destination,
        )
    }

    #[tokio::test]
    async fn a_guarded_update_from_a_stale_read_writes_nothing() {
        let (service, source, destination) = setup().await;
        let stale = service
            .create(&source, testing::inquiries_to(destination.organization))
            .await
            .unwrap();
        let Outcome::Fresh(Written { record: stale, .. }) = stale else {
            panic!("no request_id: nothing to replay")
        };
        // Another writer changes the connection after our read.
        let activated = service
            .transition(
                &destination,
                TransitionRequest {
                    id: stale.id,
                    action: Action::Activate,
                    etag: None,
                    reason: None,
                    message: None,
                    data_types: None,
                    request_id: None,
                },
            )
            .await
            .unwrap();
        let Outcome::Fresh(Written {
            record: activated, ..
        }) = activated
        else {
            panic!("no request_id: nothing to replay")
        };

        // Our write, based on the stale read, loses the race.
        let (deactivated, _) = stale
            .apply(Change {
                action: Action::Deactivate,
                caller: source.clone(),
                etag: None,
                reason: None,
                message: None,
                pending_lifetime: None,
                data_types: None,
                at: now(),
            })
            .unwrap();
        let txn = db::begin_write(&service.db).await.unwrap();
        let written = connection::update_guarded(&*txn, stale.version, &deactivated)
            .await
            .unwrap();
        assert!(
            !written,
            "a write over a changed version must write nothing"
        );
        drop(txn);

        assert_eq!(
            service.get(source.organization, stale.id).await.unwrap(),
            activated
        );
        let events = service
            .list_events(
                source.organization,
                stale.id,
                PageSize::from_request(0).unwrap(),
                None,
            )
            .await
            .unwrap();
        assert_eq!(events.items.len(), 2);
    }
}
