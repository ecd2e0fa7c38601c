//! CheckAccess: "may the destination receive this data type from the source
//! now?", answered from memory.
//!
//! Each process keeps an index of every connection, (source, destination) ->
//! state, data types and version, built from the database at start and kept
//! current by reading every change as soon as it has committed (see
//! `entity::change_log::changes_since`): the latest version of each
//! connection wins, so it needs no order among changes, and no transaction
//! left open anywhere else delays it. It knows the snapshot it has applied,
//! so a check that names a change token waits (up to [`TOKEN_WAIT`]) for the
//! index to hold every change the token holds, and otherwise reads the
//! database: an answer is never older than the token it was asked for.
//!
//! A batch ([`Access::check_batch`]) waits for its token once, then reads
//! every entry it asks about under one read of the index, so every answer
//! comes from one state of it, named by one change token; when it reads the
//! database instead, it reads every entry in one transaction, under one
//! snapshot.

use std::{
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use sea_orm::DatabaseConnection;

use super::{ChangeTokens, ServiceError, change_feed::ChangeFeed};
use crate::{
    db::{self, Reader},
    domain::{
        ConnectionId, ConnectionState, DataType, DataTypes, OrganizationId, Snapshot, VariantArray,
    },
    entity::{
        change_log::{self, LogEntry},
        connection::{self, AccessRow},
    },
};

/// How long a check waits for the index to reach its change token before it
/// reads the database instead.
pub const TOKEN_WAIT: Duration = Duration::from_secs(1);

/// Connections read at once while the index is built.
const BUILD_PAGE: u64 = 10_000;

/// Changes read at once while following the log.
const CHANGES_PAGE: u64 = 1_000;

/// How long the index waits before it reads the database again after
/// failing to.
const RETRY: Duration = Duration::from_secs(1);

/// Who asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checker {
    /// An organization: it may ask about connections it is named in.
    Organization(OrganizationId),
    /// The operator or the platform's data-moving services: any pair.
    Operator,
}

/// What CheckAccess asks, already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessQuestion {
    /// The organization that would send the data.
    pub source: OrganizationId,
    /// The organization that would receive it.
    pub destination: OrganizationId,
    /// The data.
    pub data_type: DataType,
    /// Changes the answer must reflect at least.
    pub at_least: Option<Snapshot>,
}

/// One question of a batch: an [`AccessQuestion`] without a token of its
/// own (the batch has one for every question).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessPair {
    /// The organization that would send the data.
    pub source: OrganizationId,
    /// The organization that would receive it.
    pub destination: OrganizationId,
    /// The data.
    pub data_type: DataType,
}

/// The answers to a batch of [`AccessPair`]s, all from one state.
#[derive(Debug)]
pub struct BatchAnswer {
    /// One per question, in the order asked: the answer, or why the checker
    /// may not ask it. Every answer's `change_token` is `change_token`.
    pub answers: Vec<Result<AccessAnswer, ServiceError>>,
    /// The changes every answer reflects.
    pub change_token: String,
}

/// The answer to an [`AccessQuestion`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessAnswer {
    /// The connection is ACTIVE and includes the data type.
    pub allowed: bool,
    /// The connection from source to destination and its state, if any.
    pub connection: Option<(ConnectionId, ConnectionState)>,
    /// The changes the answer reflects.
    pub change_token: String,
}

mod table;

use table::Table;

/// One connection, as the index keeps it: 24 bytes, 56 with its key, so
/// that a million connections take about 56 MB (see [`Table`] and
/// BENCHMARKS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    id: Uuid,
    /// The low 32 bits of the version, compared with [`is_newer`].
    version: u32,
    state: ConnectionState,
    /// One bit per [`DataType`] variant.
    data_types: u8,
}

const _: () = assert!(size_of::<((Uuid, Uuid), Entry)>() == 56);

/// The low 32 bits of a version.
fn low_bits(version: i64) -> u32 {
    // Truncation is the point: see `is_newer`.
    (version & 0xFFFF_FFFF) as u32
}

/// Whether version `a` is newer than version `b`, given their low 32 bits.
/// Versions go up by one per event, and the two compared are never 2^31
/// events apart (the index is at most a few events behind), so the
/// difference modulo 2^32 tells (serial number arithmetic, RFC 1982), even
/// after 4 billion events on one connection.
fn is_newer(a: u32, b: u32) -> bool {
    a.wrapping_sub(b).cast_signed() > 0
}

fn bit(data_type: DataType) -> u8 {
    let index = DataType::VARIANTS
        .iter()
        .position(|t| *t == data_type)
        .expect("every data type is a variant");
    1 << index
}

fn bits(data_types: &DataTypes) -> u8 {
    data_types.as_slice().iter().fold(0, |all, t| all | bit(*t))
}

impl Entry {
    fn of(row: &AccessRow) -> Self {
        Self {
            id: row.id.uuid(),
            version: low_bits(row.version),
            state: row.state,
            data_types: bits(&row.data_types),
        }
    }
}

/// The index and the changes it has applied.
#[derive(Debug)]
struct Index {
    entries: RwLock<Table>,
    /// Every change in this set has been applied.
    seen: watch::Sender<Snapshot>,
    /// Whether every connection has been read in (until then, checks read
    /// the database).
    built: watch::Sender<bool>,
    /// When the newest change applied from the feed happened.
    last_change: Mutex<Option<DateTime<Utc>>>,
}

/// The access checks business layer. Clones share one index.
#[derive(Debug, Clone)]
pub struct Access {
    /// For the reads a batch makes in one transaction.
    db: DatabaseConnection,
    reader: Reader,
    tokens: ChangeTokens,
    index: Arc<Index>,
}

impl Access {
    /// An index of the database read through `reader`, empty until
    /// [`follow`](Self::follow) has built it (checks read the database until
    /// then; a batch reads it in a transaction of `db`).
    pub fn new(db: DatabaseConnection, reader: Reader, tokens: ChangeTokens) -> Self {
        Self {
            db,
            reader,
            tokens,
            index: Arc::new(Index {
                entries: RwLock::default(),
                seen: watch::Sender::new(Snapshot::empty()),
                built: watch::Sender::new(false),
                last_change: Mutex::new(None),
            }),
        }
    }

    /// Whether the index has been built (see [`follow`](Self::follow)).
    pub fn is_built(&self) -> bool {
        *self.index.built.borrow()
    }

    /// Tells when the index has been built.
    pub fn built(&self) -> watch::Receiver<bool> {
        self.index.built.subscribe()
    }

    /// The changes a change token names (`field`: where it came from).
    pub fn at_least(&self, token: &str, field: &'static str) -> Result<Snapshot, ServiceError> {
        self.tokens.verify(token, field)
    }

    /// Connections in the index.
    pub fn len(&self) -> usize {
        self.index.entries.read().expect("never poisoned").len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The changes the index has applied.
    pub fn seen(&self) -> Snapshot {
        self.index.seen.borrow().clone()
    }

    /// Reads every connection into the index's entries. The changes
    /// committed after a snapshot taken before it began are applied
    /// afterwards, so nothing newer is lost.
    async fn load(&self) -> Result<(), ServiceError> {
        // The array is sized once, from a count; connections made after it
        // go to the table's hash table instead (see `table::Builder`). Only
        // what the index keeps is read, a page at a time.
        let count = connection::count(&self.reader).await?;
        let mut table = table::Builder::new(usize::try_from(count).unwrap_or(0));
        let mut after = None;
        loop {
            let page = connection::access_rows_after(&self.reader, after, BUILD_PAGE).await?;
            for row in &page {
                table.push(
                    (row.parties.source.uuid(), row.parties.destination.uuid()),
                    Entry::of(row),
                );
            }
            match page.last() {
                Some(last) if page.len() as u64 == BUILD_PAGE => after = Some(last.id),
                _ => break,
            }
        }
        *self.index.entries.write().expect("never poisoned") = table.build();
        Ok(())
    }

    /// Builds the index (reading every connection, and again after a second
    /// while the database fails), then applies every change as soon as it
    /// has committed: whenever `feed` hears of a commit, and at least every
    /// `poll`, until `stop` is cancelled.
    pub async fn follow(&self, feed: ChangeFeed, poll: Duration, stop: CancellationToken) {
        let started = tokio::time::Instant::now();
        let mut commits = feed.commits();
        // Every change this snapshot does not hold is applied after the
        // build, so the build may read each page at any later time.
        let mut seen = loop {
            let error = match change_log::snapshot(&self.reader).await {
                Ok(seen) => match self.load().await {
                    Ok(()) => break seen,
                    Err(err) => err.to_string(),
                },
                Err(err) => err.to_string(),
            };
            tracing::warn!(error, "cannot build the access index");
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(RETRY) => {}
            }
        };
        // The entries hold every change of the snapshot taken before them.
        self.index.seen.send_replace(seen.clone());
        self.index.built.send_replace(true);
        tracing::info!(
            connections = self.len(),
            seconds = started.elapsed().as_secs_f64(),
            "access index built"
        );
        loop {
            commits.mark_unchanged();
            let wait = match self.catch_up(&seen).await {
                Ok(now) => {
                    seen = now;
                    self.index.seen.send_replace(seen.clone());
                    poll
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read the change log into the access index");
                    RETRY.min(poll)
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                _ = commits.changed() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Applies every change committed since `since`; returns what the index
    /// has seen then. Read in pages, each under its own snapshot: the first
    /// one's changes are all applied once every page has been, since each
    /// later snapshot holds the earlier ones.
    async fn catch_up(&self, since: &Snapshot) -> Result<Snapshot, sea_orm::DbErr> {
        let first = change_log::changes_since(&self.reader, since, None, CHANGES_PAGE).await?;
        self.apply(&first.entries);
        let mut last = first.entries.last().map(|entry| entry.position);
        let mut full = first.entries.len() as u64 == CHANGES_PAGE;
        while full {
            let page = change_log::changes_since(&self.reader, since, last, CHANGES_PAGE).await?;
            self.apply(&page.entries);
            full = page.entries.len() as u64 == CHANGES_PAGE;
            last = page.entries.last().map(|entry| entry.position);
        }
        Ok(first.snapshot)
    }

    /// When the newest change the index applied from the log happened.
    pub fn last_change(&self) -> Option<DateTime<Utc>> {
        *self.index.last_change.lock().expect("never poisoned")
    }

    fn apply(&self, log: &[LogEntry]) {
        if let Some(newest) = log.iter().map(|entry| entry.event.create_time).max() {
            let mut last = self.index.last_change.lock().expect("never poisoned");
            *last = (*last).max(Some(newest));
        }
        let mut entries = self.index.entries.write().expect("never poisoned");
        for entry in log {
            let event = &entry.event;
            entries.upsert(
                (
                    entry.parties.source.uuid(),
                    entry.parties.destination.uuid(),
                ),
                Entry {
                    id: event.connection_id.uuid(),
                    version: low_bits(event.sequence),
                    state: event.to_state,
                    data_types: bits(&entry.data_types),
                },
            );
        }
    }

    /// Answers `question` for `checker`.
    pub async fn check(
        &self,
        checker: Checker,
        question: AccessQuestion,
    ) -> Result<AccessAnswer, ServiceError> {
        may_ask(checker, question.source, question.destination)?;
        if !self.reached(question.at_least.as_ref()).await {
            return self.check_in_database(question).await;
        }
        let key = (question.source.uuid(), question.destination.uuid());
        let seen = self.seen();
        let entry = self.index.entries.read().expect("never poisoned").get(&key);
        Ok(self.answer(
            question.data_type,
            entry.map(|e| (e.id, e.state, e.data_types)),
            &seen,
        ))
    }

    /// Answers every question of `questions` for `checker`, from one state:
    /// of the index once it holds every change of `at_least` (waiting for it
    /// once), else of the database, in one transaction. A question the
    /// checker may not ask is refused alone.
    pub async fn check_batch(
        &self,
        checker: Checker,
        questions: &[AccessPair],
        at_least: Option<Snapshot>,
    ) -> Result<BatchAnswer, ServiceError> {
        let asked: Vec<Result<&AccessPair, ServiceError>> = questions
            .iter()
            .map(|q| may_ask(checker, q.source, q.destination).map(|()| q))
            .collect();
        if !self.reached(at_least.as_ref()).await {
            return self.check_batch_in_database(asked, at_least).await;
        }
        let (seen, found) = {
            let entries = self.index.entries.read().expect("never poisoned");
            // Read while no change can be applied: `seen` is sent only once
            // every change it holds is in the entries, so they hold at least
            // what it names, and the same for every question.
            let seen = self.seen();
            let found: Vec<Option<Entry>> = asked
                .iter()
                .map(|asked| {
                    let q = asked.as_ref().ok()?;
                    entries.get(&(q.source.uuid(), q.destination.uuid()))
                })
                .collect();
            (seen, found)
        };
        let change_token = self.tokens.issue(&seen);
        let answers = asked
            .into_iter()
            .zip(found)
            .map(|(asked, entry)| {
                let q = asked?;
                Ok(self.answer_with(
                    q.data_type,
                    entry.map(|e| (e.id, e.state, e.data_types)),
                    &change_token,
                ))
            })
            .collect();
        Ok(BatchAnswer {
            answers,
            change_token,
        })
    }

    /// Whether the index may answer a check that must reflect `at_least`:
    /// it is built, and holds every change of `at_least` (waiting up to
    /// [`TOKEN_WAIT`] for them).
    async fn reached(&self, at_least: Option<&Snapshot>) -> bool {
        if !self.is_built() {
            return false;
        }
        let Some(at_least) = at_least else {
            return true;
        };
        let mut seen = self.index.seen.subscribe();
        tokio::time::timeout(TOKEN_WAIT, seen.wait_for(|seen| seen.covers(at_least)))
            .await
            .is_ok_and(|waited| waited.is_ok())
    }

    /// Answers a batch from the database, every question in one
    /// transaction: for a token the index has not reached, or while the
    /// index is being built.
    async fn check_batch_in_database(
        &self,
        asked: Vec<Result<&AccessPair, ServiceError>>,
        at_least: Option<Snapshot>,
    ) -> Result<BatchAnswer, ServiceError> {
        let txn = db::begin_read(&self.db).await?;
        // The transaction's snapshot, which every read below sees; and the
        // token's changes, which had committed before it was asked for.
        let mut seen = change_log::snapshot(&*txn).await?;
        if let Some(at_least) = &at_least {
            seen = seen.union(at_least);
        }
        let mut found = Vec::with_capacity(asked.len());
        for asked in &asked {
            found.push(match asked {
                Ok(q) => connection::find_between(&*txn, q.source, q.destination).await?,
                Err(_) => None,
            });
        }
        txn.finish().await?;
        let change_token = self.tokens.issue(&seen);
        let answers = asked
            .into_iter()
            .zip(found)
            .map(|(asked, record)| {
                let q = asked?;
                Ok(self.answer_with(
                    q.data_type,
                    record.map(|r| (r.id.uuid(), r.state, bits(&r.data_types))),
                    &change_token,
                ))
            })
            .collect();
        Ok(BatchAnswer {
            answers,
            change_token,
        })
    }

    /// Answers from the database: for a token the index has not reached, or
    /// while the index is being built.
    async fn check_in_database(
        &self,
        question: AccessQuestion,
    ) -> Result<AccessAnswer, ServiceError> {
        // The read sees every change this snapshot holds, and the token's:
        // it was asked for after the token was issued.
        let mut seen = change_log::snapshot(&self.reader).await?;
        let record =
            connection::find_between(&self.reader, question.source, question.destination).await?;
        if let Some(at_least) = &question.at_least {
            seen = seen.union(at_least);
        }
        Ok(self.answer(
            question.data_type,
            record.map(|r| (r.id.uuid(), r.state, bits(&r.data_types))),
            &seen,
        ))
    }

    fn answer(
        &self,
        data_type: DataType,
        connection: Option<(Uuid, ConnectionState, u8)>,
        seen: &Snapshot,
    ) -> AccessAnswer {
        self.answer_with(data_type, connection, &self.tokens.issue(seen))
    }

    fn answer_with(
        &self,
        data_type: DataType,
        connection: Option<(Uuid, ConnectionState, u8)>,
        change_token: &str,
    ) -> AccessAnswer {
        AccessAnswer {
            allowed: connection.is_some_and(|(_, state, types)| {
                state == ConnectionState::Active && types & bit(data_type) != 0
            }),
            connection: connection.map(|(id, state, _)| (id.into(), state)),
            change_token: change_token.to_owned(),
        }
    }
}

/// Whether `checker` may ask about the connection from `source` to
/// `destination`: an organization only about its own; the refusal depends
/// on the question alone, so it tells nothing of the pair.
fn may_ask(
    checker: Checker,
    source: OrganizationId,
    destination: OrganizationId,
) -> Result<(), ServiceError> {
    match checker {
        Checker::Organization(organization)
            if organization != source && organization != destination =>
        {
            Err(ServiceError::CallerNotParty)
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        domain::Action,
        service::{
            Connections,
            connections::{TransitionRequest, Written},
            idempotency::Outcome,
            testing,
        },
    };

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn until_the_index_is_built_checks_read_the_database() {
        let (db, tokens, source_key, destination_key) = testing::two_organizations().await;
        let (source, destination) = (source_key.organization, destination_key.organization);
        let connections = Connections::new(db.clone(), db.clone().into(), tokens.clone(), |_| {
            Vec::new()
        });
        let new = testing::inquiries_to(destination);
        let Outcome::Fresh(Written { record, .. }) =
            connections.create(&source_key, new).await.unwrap()
        else {
            panic!("no request_id: nothing to replay")
        };
        let activate = TransitionRequest {
            id: record.id,
            action: Action::Activate,
            etag: None,
            reason: None,
            message: None,
            data_types: None,
            request_id: None,
        };
        let Outcome::Fresh(activated) = connections
            .transition(&destination_key, activate)
            .await
            .unwrap()
        else {
            panic!("no request_id: nothing to replay")
        };

        let feed = ChangeFeed::new(db.clone().into());
        let change_tokens = ChangeTokens::new(tokens);
        let access = Access::new(db.clone(), db.clone().into(), change_tokens.clone());
        let question = AccessQuestion {
            source,
            destination,
            data_type: DataType::Inquiry,
            at_least: None,
        };
        // Not built: the index is empty, and the answer comes from the database.
        assert!(!access.is_built());
        assert_eq!(access.len(), 0);
        let answer = access
            .check(Checker::Operator, question.clone())
            .await
            .unwrap();
        assert!(answer.allowed);
        assert_eq!(
            answer.connection,
            Some((record.id, ConnectionState::Active))
        );
        // Its token holds the activation: a place to resume after it.
        let answered = change_tokens.verify(&answer.change_token, "t").unwrap();
        let written = change_tokens.verify(&activated.change_token, "t").unwrap();
        assert!(answered.covers(&written), "{answered:?} {written:?}");

        let stop = CancellationToken::new();
        tokio::spawn({
            let (access, stop) = (access.clone(), stop.clone());
            async move { access.follow(feed, Duration::from_secs(60), stop).await }
        });
        access.built().wait_for(|built| *built).await.unwrap();
        assert_eq!(access.len(), 1);
        let answer = access.check(Checker::Operator, question).await.unwrap();
        assert!(answer.allowed);
        stop.cancel();
    }

    /// Two organizations with a connection from the first to the second,
    /// activated, and the access layer over their database with its feed
    /// (which nothing notifies): the connection layer, the callers, the
    /// connection's ID and the activation's change token.
    async fn an_active_connection() -> (
        Connections,
        Access,
        ChangeFeed,
        ChangeTokens,
        (crate::domain::Caller, crate::domain::Caller),
        ConnectionId,
        String,
    ) {
        let (db, tokens, source_key, destination_key) = testing::two_organizations().await;
        let connections = Connections::new(db.clone(), db.clone().into(), tokens.clone(), |_| {
            Vec::new()
        });
        let new = testing::inquiries_to(destination_key.organization);
        let Outcome::Fresh(Written { record, .. }) =
            connections.create(&source_key, new).await.unwrap()
        else {
            panic!("no request_id: nothing to replay")
        };
        let activate = TransitionRequest {
            id: record.id,
            action: Action::Activate,
            etag: None,
            reason: None,
            message: None,
            data_types: None,
            request_id: None,
        };
        let Outcome::Fresh(activated) = connections
            .transition(&destination_key, activate)
            .await
            .unwrap()
        else {
            panic!("no request_id: nothing to replay")
        };
        let feed = ChangeFeed::new(db.clone().into());
        let change_tokens = ChangeTokens::new(tokens);
        let access = Access::new(db.clone(), db.into(), change_tokens.clone());
        (
            connections,
            access,
            feed,
            change_tokens,
            (source_key, destination_key),
            record.id,
            activated.change_token,
        )
    }

    /// The questions of `pairs`, each for inquiries.
    fn inquiries(pairs: &[(OrganizationId, OrganizationId)]) -> Vec<AccessPair> {
        pairs
            .iter()
            .map(|&(source, destination)| AccessPair {
                source,
                destination,
                data_type: DataType::Inquiry,
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_answers_as_single_checks_do_with_one_token_before_and_after_the_index_is_built()
     {
        let (_, access, feed, change_tokens, (source, destination), id, activated) =
            an_active_connection().await;
        let (source, destination) = (source.organization, destination.organization);
        let outsider = OrganizationId::generate();
        let pairs = [
            (source, destination),
            (destination, source),
            (outsider, destination),
            (source, destination),
        ];
        let questions = inquiries(&pairs);
        let written = change_tokens.verify(&activated, "t").unwrap();

        // An organization's batch: the pair it is not a party to is refused
        // alone; every answer carries the batch's token, and single checks
        // answer the same.
        let assert_batch = async |access: &Access| {
            let batch = access
                .check_batch(Checker::Organization(source), &questions, None)
                .await
                .unwrap();
            let answered = change_tokens.verify(&batch.change_token, "t").unwrap();
            assert!(answered.covers(&written), "{answered:?} {written:?}");
            assert_eq!(batch.answers.len(), 4);
            for (answer, &(s, d)) in batch.answers.iter().zip(&pairs) {
                let single = access
                    .check(
                        Checker::Organization(source),
                        AccessQuestion {
                            source: s,
                            destination: d,
                            data_type: DataType::Inquiry,
                            at_least: None,
                        },
                    )
                    .await;
                match (answer, single) {
                    (Ok(answer), Ok(single)) => {
                        assert_eq!(answer.change_token, batch.change_token);
                        assert_eq!(
                            (answer.allowed, answer.connection),
                            (single.allowed, single.connection)
                        );
                    }
                    (Err(ServiceError::CallerNotParty), Err(ServiceError::CallerNotParty)) => {}
                    other => panic!("{other:?}"),
                }
            }
            let allowed: Vec<_> = batch
                .answers
                .iter()
                .map(|a| a.as_ref().map(|a| (a.allowed, a.connection)).ok())
                .collect();
            let active = Some((true, Some((id, ConnectionState::Active))));
            assert_eq!(allowed, [active, Some((false, None)), None, active]);
        };

        // Not built: from the database, in one transaction.
        assert!(!access.is_built());
        assert_batch(&access).await;

        let stop = CancellationToken::new();
        tokio::spawn({
            let (access, stop) = (access.clone(), stop.clone());
            async move { access.follow(feed, Duration::from_secs(60), stop).await }
        });
        access.built().wait_for(|built| *built).await.unwrap();
        // Built: from the index.
        assert_batch(&access).await;
        // The operator may ask about any pair.
        let batch = access
            .check_batch(Checker::Operator, &questions, Some(written))
            .await
            .unwrap();
        assert!(batch.answers.iter().all(Result::is_ok));
        stop.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_whose_token_the_index_does_not_reach_reads_the_database_in_one_snapshot() {
        let (connections, access, _, change_tokens, (source, destination), id, _) =
            an_active_connection().await;
        // An index built as `follow` builds it, which then falls behind:
        // nothing applies the changes committed after it.
        let seen = change_log::snapshot(&access.reader).await.unwrap();
        access.load().await.unwrap();
        access.index.seen.send_replace(seen);
        access.index.built.send_replace(true);
        let deactivate = TransitionRequest {
            id,
            action: Action::Deactivate,
            etag: None,
            reason: None,
            message: None,
            data_types: None,
            request_id: None,
        };
        let Outcome::Fresh(deactivated) = connections
            .transition(&destination, deactivate)
            .await
            .unwrap()
        else {
            panic!("no request_id: nothing to replay")
        };
        let written = change_tokens
            .verify(&deactivated.change_token, "t")
            .unwrap();
        let questions = inquiries(&[
            (source.organization, destination.organization),
            (destination.organization, source.organization),
        ]);

        // Without the token, the index answers: it has not seen the change.
        let batch = access
            .check_batch(Checker::Operator, &questions, None)
            .await
            .unwrap();
        assert!(batch.answers[0].as_ref().unwrap().allowed);
        // With it, the batch waits for the index, then reads the database.
        let started = tokio::time::Instant::now();
        let batch = access
            .check_batch(Checker::Operator, &questions, Some(written.clone()))
            .await
            .unwrap();
        assert!(started.elapsed() >= TOKEN_WAIT);
        let first = batch.answers[0].as_ref().unwrap();
        assert!(!first.allowed);
        assert_eq!(first.connection, Some((id, ConnectionState::Inactive)));
        assert_eq!(batch.answers[1].as_ref().unwrap().connection, None);
        let answered = change_tokens.verify(&batch.change_token, "t").unwrap();
        assert!(answered.covers(&written), "{answered:?} {written:?}");
        for answer in &batch.answers {
            assert_eq!(answer.as_ref().unwrap().change_token, batch.change_token);
        }
    }

    #[test]
    fn a_version_is_newer_than_the_ones_before_it_across_the_32_bit_boundary() {
        for (newer, older) in [
            (2_i64, 1_i64),
            (1 << 32, (1 << 32) - 1),
            ((1 << 32) + 5, (1 << 32) - 5),
            (3 << 32, (3 << 32) - 1_000),
        ] {
            let (newer, older) = (low_bits(newer), low_bits(older));
            assert!(is_newer(newer, older), "{newer} after {older}");
            assert!(!is_newer(older, newer), "{older} after {newer}");
            assert!(!is_newer(newer, newer));
        }
    }
}
