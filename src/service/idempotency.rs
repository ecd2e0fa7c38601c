//! Exactly-once retries keyed by the caller's `request_id` (SPEC section 4).
//!
//! A mutating call with a request_id first *claims* the key (caller
//! organization, method, request_id) inside its write transaction, by
//! inserting a record that the same transaction completes with the call's
//! result. So the record exists exactly when the change does:
//!
//! - a retry after the commit finds the record and gets the recorded result,
//!   without executing anything;
//! - a concurrent duplicate blocks on the claim (PostgreSQL: the primary key;
//!   SQLite: the write lock) until the first call ends, then replays its result
//!   (or, if the first call failed and wrote nothing, executes itself);
//! - the same request_id with different parameters is `RequestIdReused`.
//!
//! Only successful calls are recorded: a call that failed changed nothing, and
//! its retry is evaluated afresh.
//!
//! A record keeps the response as the API encoded it (the adapter supplies
//! the encoding, see [`Encode`]), so a replay returns the first call's
//! response whatever fields the service's types gain later.

use chrono::{DateTime, Utc};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect,
};
use sha2::{Digest, Sha256};

use super::ServiceError;
use super::now;
use crate::{
    db::{self, error::unique_violation},
    domain::OrganizationId,
    entity::idempotency_record,
};

/// How often calls were answered with an earlier call's recorded result, by
/// `path`: `recorded` (a retry found the record of a committed call) or
/// `after_race` (a concurrent duplicate waited for the first call to commit,
/// [`Claim::Raced`], then returned its result).
#[derive(Debug, Clone)]
pub struct ReplayCounts(Family<ReplayPath, Counter>);

/// The label of [`ReplayCounts`].
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplayPath {
    path: &'static str,
}

const RECORDED: ReplayPath = ReplayPath { path: "recorded" };
const AFTER_RACE: ReplayPath = ReplayPath { path: "after_race" };

impl Default for ReplayCounts {
    fn default() -> Self {
        let family = Family::default();
        for path in [&RECORDED, &AFTER_RACE] {
            drop(family.get_or_create(path));
        }
        Self(family)
    }
}

impl ReplayCounts {
    /// A retry found the record of a committed call.
    pub fn recorded(&self) {
        self.0.get_or_create(&RECORDED).inc();
    }

    /// A concurrent duplicate returned the result of the call that won.
    pub fn after_race(&self) {
        self.0.get_or_create(&AFTER_RACE).inc();
    }

    /// The counters, for a metrics registry (shared, not a copy).
    pub fn family(&self) -> Family<ReplayPath, Counter> {
        self.0.clone()
    }
}

/// The key of one mutating call and a digest of its parameters.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    organization: OrganizationId,
    method: &'static str,
    request_id: String,
    fingerprint: [u8; 32],
}

impl IdempotencyKey {
    /// The key of `method` called by `organization` with `request_id`;
    /// `parameters` are the call's (validated) inputs, in a fixed order.
    pub fn new(
        organization: OrganizationId,
        method: &'static str,
        request_id: String,
        parameters: &[&[u8]],
    ) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(method.as_bytes());
        for parameter in parameters {
            // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
            hasher.update((parameter.len() as u64).to_be_bytes());
            hasher.update(parameter);
        }
        Self {
            organization,
            method,
            request_id,
            fingerprint: hasher.finalize().into(),
        }
    }

    /// The digest of the call's method and parameters, as stored.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    fn find(&self) -> sea_orm::Select<idempotency_record::Entity> {
        idempotency_record::Entity::find_by_id((
            self.organization.uuid(),
            self.method.to_owned(),
            self.request_id.clone(),
        ))
    }

    /// The recorded response, if `record` was made by a call with our parameters.
    fn replay(&self, record: idempotency_record::Model) -> Result<Recorded, ServiceError> {
        if record.request_sha256 != self.fingerprint {
            return Err(ServiceError::RequestIdReused);
        }
        Ok(Recorded {
            response: record.response_proto,
            change_token: record.change_token,
        })
    }
}

/// Encodes a call's result as the response its replays return.
pub type Encode<T> = fn(&T) -> Vec<u8>;

/// What a call with a request_id returned, as recorded for its replays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The response, as encoded then (see [`Encode`]).
    pub response: Vec<u8>,
    /// The change token it returned (empty for calls recorded before change
    /// tokens existed).
    pub change_token: String,
}

/// The result of a call that may have been answered by an earlier one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T> {
    /// The call ran now: its result.
    Fresh(T),
    /// An earlier call with the same request_id ran: what it returned.
    Replayed(Recorded),
}

/// The outcome of claiming a key.
#[derive(Debug)]
pub enum Claim {
    /// The key is ours: execute the call, then [`complete`] it.
    Fresh,
    /// An earlier call with this key succeeded: return its response.
    Replay(Recorded),
    /// A concurrent call claimed the key first and committed. Roll back, then
    /// [`replay_committed`].
    Raced,
}

/// Claims `key` inside the write transaction `txn`.
pub async fn claim(
    txn: &impl ConnectionTrait,
    key: &IdempotencyKey,
) -> Result<Claim, ServiceError> {
    if let Some(record) = key.find().one(txn).await? {
        return key.replay(record).map(Claim::Replay);
    }
    let placeholder = idempotency_record::ActiveModel {
        organization_id: Set(key.organization.uuid()),
        method: Set(key.method.to_owned()),
        request_id: Set(key.request_id.clone()),
        request_sha256: Set(key.fingerprint.to_vec()),
        response_proto: Set(Vec::new()),
        change_token: Set(String::new()),
        create_time: Set(now()),
    };
    match idempotency_record::Entity::insert(placeholder)
        .exec_without_returning(txn)
        .await
    {
        Ok(_) => Ok(Claim::Fresh),
        Err(err) if unique_violation(&err) => Ok(Claim::Raced),
        Err(err) => Err(err.into()),
    }
}

/// Records what the call that claimed `key` returned, in the same
/// transaction as the change.
pub async fn complete(
    txn: &impl ConnectionTrait,
    key: &IdempotencyKey,
    recorded: Recorded,
) -> Result<(), ServiceError> {
    idempotency_record::Entity::update_many()
        .col_expr(
            idempotency_record::Column::ResponseProto,
            recorded.response.into(),
        )
        .col_expr(
            idempotency_record::Column::ChangeToken,
            recorded.change_token.into(),
        )
        .filter(idempotency_record::Column::OrganizationId.eq(key.organization.uuid()))
        .filter(idempotency_record::Column::Method.eq(key.method))
        .filter(idempotency_record::Column::RequestId.eq(key.request_id.as_str()))
        .exec(txn)
        .await?;
    Ok(())
}

/// After [`Claim::Raced`]: the result of the call that won, read outside the
/// failed transaction.
pub async fn replay_committed(
    db: &impl ConnectionTrait,
    key: &IdempotencyKey,
) -> Result<Recorded, ServiceError> {
    match key.find().one(db).await? {
        Some(record) => key.replay(record),
        // The winner was rolled back after all: the caller may simply retry.
        None => Err(ServiceError::ConcurrentModification),
    }
}

/// Most records one sweep transaction deletes: a sweep of many records
/// takes many short turns at the write lock, between other writers'.
pub const SWEEP_BATCH: u64 = 1_000;

/// Deletes the oldest records created before `cutoff`, about `limit` of them
/// (more only if several share the last one's create time), in one write
/// transaction; returns how many. Fewer than `limit` means none are left.
pub async fn delete_expired_batch(
    db: &DatabaseConnection,
    cutoff: DateTime<Utc>,
    limit: u64,
) -> Result<u64, DbErr> {
    use idempotency_record::{Column, Entity};
    let txn = db::begin_write(db).await?;
    // The create time of the `limit`-th oldest expired record, by the index.
    let last: Option<DateTime<Utc>> = Entity::find()
        .select_only()
        .column(Column::CreateTime)
        .filter(Column::CreateTime.lt(cutoff))
        .order_by_asc(Column::CreateTime)
        .offset(limit.saturating_sub(1))
        .limit(1)
        .into_tuple()
        .one(&*txn)
        .await?;
    let mut delete = Entity::delete_many().filter(Column::CreateTime.lt(cutoff));
    if let Some(last) = last {
        delete = delete.filter(Column::CreateTime.lte(last));
    }
    let deleted = delete.exec(&*txn).await?.rows_affected;
    txn.commit().await?;
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `count` records of `org` created at `at` plus i milliseconds.
    async fn insert_records(
        db: &DatabaseConnection,
        org: uuid::Uuid,
        at: DateTime<Utc>,
        count: i64,
    ) {
        let records = (0..count).map(|i| idempotency_record::ActiveModel {
            organization_id: Set(org),
            method: Set("CreateConnection".to_owned()),
            request_id: Set(format!("{at}-{i}")),
            request_sha256: Set(vec![0; 32]),
            response_proto: Set(Vec::new()),
            change_token: Set(String::new()),
            create_time: Set(at + chrono::Duration::milliseconds(i)),
        });
        idempotency_record::Entity::insert_many(records)
            .exec_without_returning(db)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn expired_records_are_deleted_oldest_first_in_batches_of_the_limit() {
        let db = db::connect(&crate::config::DatabaseSettings::new("sqlite::memory:"))
            .await
            .unwrap();
        db::migrate(&db).await.unwrap();
        let org = uuid::Uuid::now_v7();
        let cutoff = Utc::now() - chrono::Duration::hours(24);
        insert_records(&db, org, cutoff - chrono::Duration::hours(1), 2_500).await;
        insert_records(&db, org, cutoff + chrono::Duration::seconds(1), 10).await;
        let mut batches = Vec::new();
        loop {
            let deleted = delete_expired_batch(&db, cutoff, 1_000).await.unwrap();
            batches.push(deleted);
            if deleted < 1_000 {
                break;
            }
        }
        assert_eq!(batches, [1_000, 1_000, 500]);
        let left = idempotency_record::Entity::find().all(&db).await.unwrap();
        assert_eq!(left.len(), 10);
        assert!(left.iter().all(|record| record.create_time > cutoff));
    }

    #[test]
    fn fingerprints_differ_with_parameters_and_their_boundaries() {
        let org = OrganizationId::generate();
        let key = |parameters: &[&[u8]]| {
            IdempotencyKey::new(org, "ActivateConnection", "r".into(), parameters).fingerprint
        };
        assert_eq!(key(&[b"ab", b"c"]), key(&[b"ab", b"c"]));
        assert_ne!(key(&[b"ab", b"c"]), key(&[b"a", b"bc"]));
        assert_ne!(key(&[b"ab"]), key(&[b"ab", b""]));
        assert_ne!(
            IdempotencyKey::new(org, "ActivateConnection", "r".into(), &[]).fingerprint,
            IdempotencyKey::new(org, "ReactivateConnection", "r".into(), &[]).fingerprint
        );
    }
}
