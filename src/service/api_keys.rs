//! API keys: creation, listing, revocation and authentication.
//!
//! A key is `cnx_` followed by 256 random bits in base64url. Only its SHA-256
//! digest is stored; the secret is returned once, at creation.
//!
//! Keys that verified are remembered (by digest) for [`VERIFIED_KEY_TTL`], so
//! a busy caller does not cost a database query per call. A key revoked
//! through this process stops working at once, even for a call whose lookup
//! raced with the revocation; one revoked elsewhere (another replica, the CLI)
//! within that TTL, inside the 5 seconds SPEC allows. Open streams re-check
//! their key ([`ApiKeys::still_valid`]) the same way, so they cost at most one
//! lookup per key per TTL however many are open. A key used in the last
//! [`REFRESH_AHEAD`] of its TTL is verified again in the background (once at
//! a time), so a busy key's calls never wait for a lookup when it expires;
//! the revocation bound is the same, since what a refresh finds replaces
//! what is remembered.
//!
//! Presented secrets cost a database lookup only when they can matter: one
//! that cannot be a key (not `cnx_` and 43 base64url characters) is refused
//! unread; one that matched no key is remembered as unknown for
//! [`UNKNOWN_KEY_TTL`]; and lookups of secrets that have not verified lately
//! are limited to [`NEW_KEY_LOOKUPS_PER_SECOND`] (a call waits up to
//! [`NEW_KEY_LOOKUP_WAIT`] for its turn, then is refused as throttled). A
//! flood of random well-formed keys therefore costs a bounded number of
//! queries, and the keys of callers seen lately skip the limit, so the flood
//! does not lock them out. Concurrent calls presenting the same secret share one
//! lookup, so a client that opens with hundreds of calls at once costs one
//! query and one turn; a lookup is forgotten when it answers or when the last
//! of its calls goes (cancelled by a deadline, say), so calls that all time
//! out leave nothing behind.

use std::{
    collections::{HashMap, HashSet},
    num::NonZeroU32,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use moka::sync::Cache;
use sea_orm::DatabaseConnection;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::instrument;

use super::{ServiceError, audit, error::KeyProblem, now, random_bytes, time_of};
use crate::{
    db::{self, Reader},
    domain::{Actor, ApiKey, ApiKeyId, AuditAction, Caller, OrganizationId},
    entity::{api_key, organization},
};

/// Every secret starts with this, so a leaked key is easy to recognise.
pub const SECRET_PREFIX: &str = "cnx_";
/// Characters of the secret kept as the key's non-secret `prefix`.
const DISPLAY_PREFIX_LEN: usize = 12;
/// Characters after the prefix: 256 bits in base64url, without padding.
const SECRET_BODY_LEN: usize = 43;
/// The length of every secret.
pub const SECRET_LEN: usize = SECRET_PREFIX.len() + SECRET_BODY_LEN;

/// How long a verified key is trusted before the database is asked again;
/// the longest a key revoked on another replica keeps working there.
pub const VERIFIED_KEY_TTL: Duration = Duration::from_secs(2);
/// A key used this close to the end of its [`VERIFIED_KEY_TTL`] is verified
/// again in the background, so that its calls keep being answered from
/// memory instead of waiting for a lookup when it expires.
pub const REFRESH_AHEAD: Duration = Duration::from_millis(500);
/// Most verified keys remembered; beyond it the least used are forgotten.
const VERIFIED_KEY_CAPACITY: u64 = 100_000;
/// How long a key that verified keeps skipping the lookup limit.
const KNOWN_KEY_TTL: Duration = Duration::from_secs(15 * 60);
/// How long a well-formed secret that matched no key is refused unread.
pub const UNKNOWN_KEY_TTL: Duration = Duration::from_secs(60);
/// Most unknown secrets remembered.
const UNKNOWN_KEY_CAPACITY: u64 = 100_000;
/// Database lookups per second, per process, of secrets that have not
/// verified lately (with as many in a burst).
pub const NEW_KEY_LOOKUPS_PER_SECOND: u32 = 100;
/// How long a call waits for a lookup turn before it is refused.
pub const NEW_KEY_LOOKUP_WAIT: Duration = Duration::from_secs(1);

/// Whether `secret` has the form of a key: the prefix, then 43 base64url
/// characters.
fn well_formed(secret: &str) -> bool {
    secret.len() == SECRET_LEN
        && secret.starts_with(SECRET_PREFIX)
        && secret[SECRET_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The API keys business layer. Clones share one cache of verified keys.
#[derive(Clone)]
pub struct ApiKeys {
    db: DatabaseConnection,
    /// Reads outside transactions.
    reader: Reader,
    /// Digest of a verified secret -> who calls with it, and since when.
    verified: Cache<[u8; 32], Verified>,
    /// Digests being verified again in the background (see [`REFRESH_AHEAD`]).
    refreshing: Arc<Mutex<HashSet<[u8; 32]>>>,
    /// Digests of secrets that verified lately: their lookups are not limited.
    known: Cache<[u8; 32], ()>,
    /// Digests of well-formed secrets that matched no key.
    unknown: Cache<[u8; 32], ()>,
    /// Limits lookups of the secrets in neither cache.
    new_key_lookups: Arc<DefaultDirectRateLimiter>,
    /// How long a call waits for a lookup turn ([`NEW_KEY_LOOKUP_WAIT`]).
    lookup_wait: Duration,
    /// Lookups in flight, by digest.
    inflight: Arc<Inflight>,
    /// Revocations through this process so far: a lookup that overlapped one
    /// does not leave its key remembered.
    revocations: Arc<AtomicU64>,
    /// Presented secrets looked up in the database so far.
    lookups: Arc<AtomicU64>,
    /// Of those, the lookups of keys verified again in the background.
    refreshes: Arc<AtomicU64>,
    /// Calls that waited for a lookup (their own or a shared one).
    waits: Arc<AtomicU64>,
}

/// A key that verified, and when.
#[derive(Debug, Clone)]
struct Verified {
    caller: Caller,
    at: Instant,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("verified_keys", &self.verified.entry_count())
            .finish_non_exhaustive()
    }
}

impl ApiKeys {
    /// The business layer over `db`, reading through `reader`.
    pub fn new(db: DatabaseConnection, reader: Reader) -> Self {
        Self {
            db,
            reader,
            verified: Cache::builder()
                .max_capacity(VERIFIED_KEY_CAPACITY)
                .time_to_live(VERIFIED_KEY_TTL)
                .build(),
            refreshing: Arc::default(),
            known: Cache::builder()
                .max_capacity(VERIFIED_KEY_CAPACITY)
                .time_to_idle(KNOWN_KEY_TTL)
                .build(),
            unknown: Cache::builder()
                .max_capacity(UNKNOWN_KEY_CAPACITY)
                .time_to_live(UNKNOWN_KEY_TTL)
                .build(),
            new_key_lookups: Arc::new(RateLimiter::direct(Quota::per_second(
                NonZeroU32::new(NEW_KEY_LOOKUPS_PER_SECOND).expect("a positive rate"),
            ))),
            lookup_wait: NEW_KEY_LOOKUP_WAIT,
            inflight: Arc::default(),
            revocations: Arc::new(AtomicU64::new(0)),
            lookups: Arc::new(AtomicU64::new(0)),
            refreshes: Arc::new(AtomicU64::new(0)),
            waits: Arc::new(AtomicU64::new(0)),
        }
    }

    /// How many presented secrets were looked up in the database so far:
    /// malformed, recently verified and recently unknown ones cost none.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::SeqCst)
    }

    /// Of [`lookups`](Self::lookups), those made in the background to verify
    /// a key in use again before it expired.
    pub fn refreshes(&self) -> u64 {
        self.refreshes.load(Ordering::SeqCst)
    }

    /// How many calls waited for a lookup (of their own, or shared) instead
    /// of being answered from memory.
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::SeqCst)
    }

    /// Creates a key for `organization_id`, recording `actor` in the audit
    /// log; returns it with its secret, which is not stored and cannot be
    /// recovered.
    #[instrument(skip(self, actor, display_name))]
    pub async fn create(
        &self,
        actor: &Actor,
        organization_id: OrganizationId,
        display_name: String,
    ) -> Result<(ApiKey, String), ServiceError> {
        let secret = format!(
            "{SECRET_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(random_bytes::<32>())
        );
        let id = ApiKeyId::generate();
        let key = ApiKey {
            id,
            organization_id,
            display_name,
            prefix: secret[..DISPLAY_PREFIX_LEN].to_owned(),
            create_time: time_of(id.uuid()),
            revoke_time: None,
        };
        let txn = db::begin_write(&self.db).await?;
        if !organization::exists(&*txn, organization_id).await? {
            return Err(ServiceError::OrganizationNotFound);
        }
        api_key::insert(&*txn, &key, digest(&secret)).await?;
        audit::record(
            &*txn,
            actor,
            AuditAction::ApiKeyCreated,
            id.uuid(),
            organization_id,
            &key.display_name,
        )
        .await?;
        txn.commit().await?;
        tracing::info!(api_key_id = %key.id, prefix = %key.prefix, "API key created");
        Ok((key, secret))
    }

    /// An organization's keys, revoked ones included, oldest first.
    #[instrument(skip(self))]
    pub async fn list(&self, organization_id: OrganizationId) -> Result<Vec<ApiKey>, ServiceError> {
        if !organization::exists(&self.db, organization_id).await? {
            return Err(ServiceError::OrganizationNotFound);
        }
        Ok(api_key::list(&self.reader, organization_id).await?)
    }

    /// Revokes a key, recording `actor` in the audit log; revoking a revoked
    /// key changes nothing and records nothing.
    #[instrument(skip(self, actor))]
    pub async fn revoke(&self, actor: &Actor, id: ApiKeyId) -> Result<ApiKey, ServiceError> {
        let txn = db::begin_write(&self.db).await?;
        let revoked = api_key::revoke(&*txn, id, now()).await?;
        let found = match api_key::find(&*txn, id).await {
            Ok(Some((key, stored))) if revoked => audit::record(
                &*txn,
                actor,
                AuditAction::ApiKeyRevoked,
                id.uuid(),
                key.organization_id,
                &key.display_name,
            )
            .await
            .map(|_| Some((key, stored))),
            other => other,
        };
        // A revocation without its audit entry is never committed: dropping
        // the transaction rolls both back (on SQLite a failed statement
        // leaves the transaction open, so committing would keep the rest).
        let committed = match &found {
            Ok(_) => txn.commit().await,
            Err(_) => Ok(()),
        };
        self.revocations.fetch_add(1, Ordering::SeqCst);
        let (key, stored) = match (found, committed) {
            (Ok(found), Ok(())) => found.ok_or(ServiceError::ApiKeyNotFound)?,
            (Err(err), _) | (_, Err(err)) => {
                // The key may be revoked, but which digest is unknown.
                self.verified.invalidate_all();
                return Err(err.into());
            }
        };
        if let Ok(digest) = <[u8; 32]>::try_from(stored.as_slice()) {
            self.verified.invalidate(&digest);
        }
        tracing::info!(api_key_id = %key.id, "API key revoked");
        Ok(key)
    }

    /// The organization a presented secret acts for. Malformed, unknown and
    /// revoked keys are `ApiKeyInvalid`; a secret that waited too long
    /// for its lookup turn is `KeyLookupsThrottled`.
    pub async fn authenticate(&self, secret: &str) -> Result<Caller, ServiceError> {
        if !well_formed(secret) {
            return Err(ServiceError::ApiKeyInvalid(KeyProblem::Malformed));
        }
        self.verify(digest(secret)).await
    }

    /// Who calls with the key with digest `presented`: from memory if it
    /// verified within [`VERIFIED_KEY_TTL`] (or matched no key within
    /// [`UNKNOWN_KEY_TTL`]), otherwise looked up. A key used in the last
    /// [`REFRESH_AHEAD`] of its time in memory is verified again in the
    /// background.
    async fn verify(&self, presented: [u8; 32]) -> Result<Caller, ServiceError> {
        // Looking up a digest reveals nothing usable about the secret (finding
        // a preimage of SHA-256 is infeasible), so this needs no constant time.
        if let Some(verified) = self.verified.get(&presented) {
            if verified.at.elapsed() >= VERIFIED_KEY_TTL.saturating_sub(REFRESH_AHEAD) {
                self.refresh(presented);
            }
            return Ok(verified.caller);
        }
        if self.unknown.contains_key(&presented) {
            return Err(ServiceError::ApiKeyInvalid(KeyProblem::UnknownOrRevoked));
        }
        // Concurrent calls with the same secret share one lookup. The waiter
        // leaves it however this call ends, cancelled included.
        self.waits.fetch_add(1, Ordering::SeqCst);
        let waiter = Waiter::join(&self.inflight, presented);
        let outcome = waiter
            .lookup()
            .get_or_init(|| async {
                let outcome = self.look_up(presented).await;
                // Calls that come after this answer start a lookup of their
                // own rather than share one that may predate a revocation.
                waiter.finished();
                outcome
            })
            .await
            .clone();
        drop(waiter);
        outcome.map_err(|failure| match failure {
            LookupFailure::Invalid => ServiceError::ApiKeyInvalid(KeyProblem::UnknownOrRevoked),
            LookupFailure::Throttled => ServiceError::KeyLookupsThrottled,
            LookupFailure::Database(err) => err.into(),
        })
    }

    /// Verifies the key with digest `presented` again, in the background,
    /// unless that is under way: what it finds replaces what is remembered
    /// (a revoked key is forgotten).
    fn refresh(&self, presented: [u8; 32]) {
        let started = self
            .refreshing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(presented);
        if !started {
            return;
        }
        let keys = self.clone();
        tokio::spawn(async move {
            keys.refreshes.fetch_add(1, Ordering::SeqCst);
            if let Err(LookupFailure::Database(err)) = keys.look_up_again(presented).await {
                tracing::warn!(error = %err, "cannot verify an API key in use again");
            }
            keys.refreshing
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&presented);
        });
    }

    /// Looks `presented` up in the database, within the lookup limit unless
    /// it verified lately, and remembers what it found.
    async fn look_up(&self, presented: [u8; 32]) -> Result<Caller, LookupFailure> {
        // A lookup that answered after this call missed the caches, but
        // before it joined, left its answer there.
        if let Some(verified) = self.verified.get(&presented) {
            return Ok(verified.caller);
        }
        if self.unknown.contains_key(&presented) {
            return Err(LookupFailure::Invalid);
        }
        self.look_up_again(presented).await
    }

    /// Looks `presented` up in the database whatever is remembered of it,
    /// within the lookup limit unless it verified lately, and remembers what
    /// it found.
    async fn look_up_again(&self, presented: [u8; 32]) -> Result<Caller, LookupFailure> {
        if !self.known.contains_key(&presented) {
            tokio::time::timeout(self.lookup_wait, self.new_key_lookups.until_ready())
                .await
                .map_err(|_| LookupFailure::Throttled)?;
        }
        let revocations = self.revocations.load(Ordering::SeqCst);
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let found = api_key::lookup(&self.reader, &presented)
            .await
            .map_err(LookupFailure::Database)?;
        match found {
            // The lookup is by digest; the constant-time comparison makes the
            // final decision independent of where the bytes differ.
            Some((caller, stored)) if bool::from(stored.ct_eq(&presented)) => {
                self.known.insert(presented, ());
                let verified = Verified {
                    caller: caller.clone(),
                    at: Instant::now(),
                };
                self.verified.insert(presented, verified);
                // The lookup may have read the key just before a revocation
                // counted since it began: do not remember it past this call.
                // (A revocation counted after this check invalidates after
                // the insert.)
                if self.revocations.load(Ordering::SeqCst) != revocations {
                    self.verified.invalidate(&presented);
                }
                Ok(caller)
            }
            _ => {
                self.known.invalidate(&presented);
                self.verified.invalidate(&presented);
                self.unknown.insert(presented, ());
                Err(LookupFailure::Invalid)
            }
        }
    }
}

/// Why a shared lookup did not verify a secret.
#[derive(Debug, Clone)]
enum LookupFailure {
    /// No such key, or revoked.
    Invalid,
    /// The lookup limit was reached.
    Throttled,
    /// The database failed.
    Database(sea_orm::DbErr),
}

/// A lookup in flight, shared by the calls presenting the same secret.
type SharedLookup = Arc<tokio::sync::OnceCell<Result<Caller, LookupFailure>>>;

/// The lookups in flight, by digest.
type Inflight = Mutex<HashMap<[u8; 32], SharedLookup>>;

/// The map of lookups in flight. A panic cannot leave it inconsistent (each
/// change is one map operation), so a poisoned lock is taken as it is.
fn lock(inflight: &Inflight) -> MutexGuard<'_, HashMap<[u8; 32], SharedLookup>> {
    inflight.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One call's share of a lookup in flight.
///
/// The map holds one reference to each lookup and each waiter one more, and
/// references are only taken and released with the map locked, so under the
/// lock a count of two means the waiter dropping is the last. Dropping the
/// last waiter, however its call ended (answered, failed, or cancelled at an
/// `.await` by a deadline or a client that went away), removes the lookup,
/// so one that every caller abandoned leaves nothing behind.
struct Waiter<'a> {
    inflight: &'a Inflight,
    presented: [u8; 32],
    /// `None` only while being dropped.
    lookup: Option<SharedLookup>,
}

impl<'a> Waiter<'a> {
    /// Joins the lookup of `presented` in flight, or starts one.
    fn join(inflight: &'a Inflight, presented: [u8; 32]) -> Self {
        let lookup = lock(inflight).entry(presented).or_default().clone();
        Self {
            inflight,
            presented,
            lookup: Some(lookup),
        }
    }

    /// The shared lookup.
    fn lookup(&self) -> &SharedLookup {
        self.lookup.as_ref().expect("taken only on drop")
    }

    /// Removes this lookup from the map, if it is still there: it has its
    /// answer, and calls from now on do not share it.
    fn finished(&self) {
        let mut inflight = lock(self.inflight);
        if inflight
            .get(&self.presented)
            .is_some_and(|current| Arc::ptr_eq(current, self.lookup()))
        {
            inflight.remove(&self.presented);
        }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut inflight = lock(self.inflight);
        let lookup = self.lookup.take().expect("dropped once");
        if Arc::strong_count(&lookup) == 2
            && inflight
                .get(&self.presented)
                .is_some_and(|current| Arc::ptr_eq(current, &lookup))
        {
            inflight.remove(&self.presented);
        }
        // Released under the lock, so the next waiter to leave counts right.
        drop(lookup);
        drop(inflight);
    }
}

impl ApiKeys {
    /// Checks that the key with digest `presented` still acts for
    /// `organization`: for streams, which outlive the call that opened them.
    /// As for a call, the answer comes from memory while the key verified
    /// within [`VERIFIED_KEY_TTL`], so however many streams a key keeps open
    /// their checks cost at most one lookup per TTL (shared with any calls
    /// looking it up meanwhile). A key revoked through this process fails at
    /// once; one revoked elsewhere, within [`VERIFIED_KEY_TTL`].
    pub async fn still_valid(
        &self,
        presented: [u8; 32],
        organization: OrganizationId,
    ) -> Result<(), ServiceError> {
        if self.verify(presented).await?.organization == organization {
            Ok(())
        } else {
            Err(ServiceError::ApiKeyInvalid(KeyProblem::UnknownOrRevoked))
        }
    }
}

/// SHA-256 of a secret.
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::DatabaseSettings,
        db::connect,
        domain::DisplayName,
        service::{Organizations, PageTokens},
    };
    /// API keys over a new database, and a key of a new organization.
    async fn setup() -> (ApiKeys, OrganizationId, String) {
        let db = connect(&DatabaseSettings::new("sqlite::memory:"))
            .await
            .unwrap();
        crate::db::migrate(&db).await.unwrap();
        let organizations =
            Organizations::new(db.clone(), db.clone().into(), PageTokens::new([1; 32]));
        let org = organizations
            .create(
                &crate::domain::Actor::command_line(),
                DisplayName::parse("O").unwrap(),
            )
            .await
            .unwrap();
        let keys = ApiKeys::new(db.clone(), db.into());
        let (_, secret) = keys
            .create(
                &crate::domain::Actor::command_line(),
                org.id,
                "k".to_owned(),
            )
            .await
            .unwrap();
        (keys, org.id, secret)
    }

    #[tokio::test]
    async fn a_verified_key_is_remembered_and_not_looked_up_again() {
        let (keys, org, secret) = setup().await;
        assert_eq!(keys.authenticate(&secret).await.unwrap().organization, org);
        assert_eq!(keys.authenticate(&secret).await.unwrap().organization, org);
        assert_eq!(keys.lookups(), 1);
    }

    #[tokio::test]
    async fn secrets_that_cannot_be_keys_are_refused_without_a_lookup() {
        let (keys, _, secret) = setup().await;
        assert!(well_formed(&secret), "{secret}");
        let body = &secret[SECRET_PREFIX.len()..];
        for presented in [
            String::new(),
            "cnx".to_owned(),
            format!("key_{body}"),
            body.to_owned(),
            format!("{secret}A"),
            secret[..SECRET_LEN - 1].to_owned(),
            format!("{}+", &secret[..SECRET_LEN - 1]),
            format!("{}=", &secret[..SECRET_LEN - 1]),
            format!("{}é", &secret[..SECRET_LEN - 2]),
        ] {
            assert!(
                matches!(
                    keys.authenticate(&presented).await,
                    Err(ServiceError::ApiKeyInvalid(_))
                ),
                "{presented:?}"
            );
            assert_eq!(keys.lookups(), 0, "{presented:?} was looked up");
        }
    }

    #[tokio::test]
    async fn an_unknown_secret_is_looked_up_once_then_refused_from_memory() {
        let (keys, _, _) = setup().await;
        let unknown = format!("{SECRET_PREFIX}{}", "A".repeat(SECRET_BODY_LEN));
        for _ in 0..5 {
            assert!(matches!(
                keys.authenticate(&unknown).await,
                Err(ServiceError::ApiKeyInvalid(_))
            ));
        }
        assert_eq!(keys.lookups(), 1);
    }

    #[tokio::test]
    async fn new_secrets_are_looked_up_at_a_limited_rate_but_known_keys_are_not() {
        let (mut keys, org, secret) = setup().await;
        assert_eq!(keys.authenticate(&secret).await.unwrap().organization, org);
        // No waiting for a turn: refused as soon as the limit is reached.
        keys.lookup_wait = Duration::ZERO;
        let mut new_secrets = 0;
        let throttled_after = loop {
            let random = format!("{SECRET_PREFIX}{new_secrets:A>43}");
            let lookups = keys.lookups();
            match keys.authenticate(&random).await {
                Err(ServiceError::ApiKeyInvalid(_)) => new_secrets += 1,
                Err(ServiceError::KeyLookupsThrottled) => {
                    assert_eq!(keys.lookups(), lookups, "a refused secret was looked up");
                    break new_secrets;
                }
                other => panic!("{other:?}"),
            }
            assert!(
                new_secrets < 10 * NEW_KEY_LOOKUPS_PER_SECOND,
                "never throttled"
            );
        };
        // The burst, and what refilled while it was used up.
        assert!(
            throttled_after >= NEW_KEY_LOOKUPS_PER_SECOND,
            "{throttled_after}"
        );
        // A key that verified lately is looked up again once its verification
        // expires, whatever the limit.
        let lookups = keys.lookups();
        keys.verified.invalidate_all();
        assert_eq!(keys.authenticate(&secret).await.unwrap().organization, org);
        assert_eq!(keys.lookups(), lookups + 1);
    }

    #[tokio::test]
    async fn concurrent_calls_with_a_new_key_share_one_lookup() {
        let (keys, org, secret) = setup().await;
        let calls = (0..300).map(|_| keys.authenticate(&secret));
        for result in futures_util::future::join_all(calls).await {
            assert_eq!(result.unwrap().organization, org);
        }
        assert_eq!(keys.lookups(), 1);
    }

    /// A well-formed secret, different for each `i`, that is no key.
    fn random_like(i: u64) -> String {
        format!(
            "{SECRET_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(Sha256::digest(i.to_be_bytes()))
        )
    }

    /// How many lookups are in flight.
    fn in_flight(keys: &ApiKeys) -> usize {
        keys.inflight.lock().unwrap().len()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancelled_lookups_leave_nothing_in_flight() {
        let (keys, _, _) = setup().await;
        // Four callers at once, on two threads, go through the same 25,000
        // well-formed secrets, each starting two calls per secret and
        // dropping both after one poll: 200,000 calls cancelled while they
        // wait on a shared lookup, most for a lookup turn, the first hundred
        // or so during the query.
        let callers: Vec<_> = (0..4)
            .map(|_| {
                let keys = keys.clone();
                tokio::spawn(async move {
                    let mut pending = 0;
                    for i in 0..25_000 {
                        let secret = random_like(i);
                        let mut first = std::pin::pin!(keys.authenticate(&secret));
                        let mut second = std::pin::pin!(keys.authenticate(&secret));
                        if futures::poll!(&mut first).is_pending() {
                            pending += 1;
                        }
                        if futures::poll!(&mut second).is_pending() {
                            pending += 1;
                        }
                    }
                    pending
                })
            })
            .collect();
        let mut cancelled = 0;
        for caller in callers {
            cancelled += caller.await.unwrap();
        }
        assert!(cancelled > 190_000, "{cancelled}");
        assert_eq!(in_flight(&keys), 0);
    }

    #[tokio::test]
    async fn a_lookup_whose_first_caller_is_cancelled_still_answers_the_others_once() {
        let (keys, org, secret) = setup().await;
        // Use up the burst, so that the first caller waits for its turn.
        while keys.new_key_lookups.check().is_ok() {}
        let mut first = Box::pin(keys.authenticate(&secret));
        let mut second = Box::pin(keys.authenticate(&secret));
        assert!(futures::poll!(&mut first).is_pending());
        assert!(futures::poll!(&mut second).is_pending());
        drop(first);
        // A caller arriving now shares the lookup the second still waits for.
        let third = keys.authenticate(&secret);
        let (second, third) = futures_util::future::join(second, third).await;
        assert_eq!(second.unwrap().organization, org);
        assert_eq!(third.unwrap().organization, org);
        assert_eq!(keys.lookups(), 1);
        assert_eq!(in_flight(&keys), 0);
    }

    #[tokio::test]
    async fn checks_of_open_streams_cost_at_most_one_lookup_per_verification_period() {
        let (keys, org, secret) = setup().await;
        let presented = digest(&secret);
        assert_eq!(keys.authenticate(&secret).await.unwrap().organization, org);
        let (started, lookups) = (std::time::Instant::now(), keys.lookups());
        // A hundred streams of the key, each checking every 50 ms (twenty
        // times as often as a watch does) for two and a half periods.
        let period = VERIFIED_KEY_TTL * 5 / 2;
        let streams: Vec<_> = (0..100)
            .map(|_| {
                let keys = keys.clone();
                tokio::spawn(async move {
                    let mut checks = 0;
                    while started.elapsed() < period {
                        keys.still_valid(presented, org).await.unwrap();
                        checks += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    checks
                })
            })
            .collect();
        let mut checks = 0;
        for stream in streams {
            checks += stream.await.unwrap();
        }
        let elapsed = started.elapsed();
        let lookups = keys.lookups() - lookups;
        // The key was verified again as each verification expired, and only
        // then.
        let bound = elapsed.as_millis() / VERIFIED_KEY_TTL.as_millis() + 1;
        assert!(
            (1..=bound as u64).contains(&lookups),
            "{lookups} lookups for {checks} checks in {elapsed:?}"
        );
    }

    #[tokio::test]
    async fn a_key_revoked_on_another_replica_fails_its_checks_within_the_verification_period() {
        let (here, org, secret) = setup().await;
        let presented = digest(&secret);
        // Another replica: its own caches, the same database.
        let elsewhere = ApiKeys::new(here.db.clone(), here.db.clone().into());
        here.still_valid(presented, org).await.unwrap();
        let lookups = here.lookups();
        let key = elsewhere.list(org).await.unwrap().remove(0);
        elsewhere
            .revoke(&crate::domain::Actor::command_line(), key.id)
            .await
            .unwrap();
        let revoked = std::time::Instant::now();
        loop {
            match here.still_valid(presented, org).await {
                Ok(()) => assert!(
                    revoked.elapsed() < VERIFIED_KEY_TTL,
                    "still valid {:?} after the revocation",
                    revoked.elapsed()
                ),
                Err(ServiceError::ApiKeyInvalid(_)) => break,
                Err(other) => panic!("{other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Until its verification expired, the key was checked from memory.
        assert_eq!(here.lookups(), lookups + 1);
        // And the revoked key now costs no more lookups.
        assert!(matches!(
            here.still_valid(presented, org).await,
            Err(ServiceError::ApiKeyInvalid(_))
        ));
        assert_eq!(here.lookups(), lookups + 1);
    }

    #[tokio::test]
    async fn a_revoked_key_is_refused_at_once() {
        let (keys, org, secret) = setup().await;
        assert_eq!(keys.authenticate(&secret).await.unwrap().organization, org);
        let key = keys.list(org).await.unwrap().remove(0);
        keys.revoke(&crate::domain::Actor::command_line(), key.id)
            .await
            .unwrap();
        assert!(matches!(
            keys.still_valid(digest(&secret), org).await,
            Err(ServiceError::ApiKeyInvalid(_))
        ));
        assert!(matches!(
            keys.authenticate(&secret).await,
            Err(ServiceError::ApiKeyInvalid(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_in_use_is_verified_again_before_it_expires_so_its_calls_never_wait() {
        let (keys, org, secret) = setup().await;
        assert_eq!(keys.authenticate(&secret).await.unwrap().organization, org);
        assert_eq!(keys.waits(), 1, "the first call looks the key up");
        let started = std::time::Instant::now();
        while started.elapsed() < 3 * VERIFIED_KEY_TTL {
            assert_eq!(keys.authenticate(&secret).await.unwrap().organization, org);
            assert_eq!(
                keys.waits(),
                1,
                "a call waited for a lookup {:?} in",
                started.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(keys.refreshes() >= 2, "{} refreshes", keys.refreshes());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_in_use_that_is_revoked_elsewhere_still_stops_within_the_verification_period() {
        let (keys, org, secret) = setup().await;
        // Another replica over the same database.
        let elsewhere = ApiKeys::new(keys.db.clone(), keys.reader.clone());
        assert_eq!(keys.authenticate(&secret).await.unwrap().organization, org);
        // In use for a while, so that it has been verified again.
        let started = std::time::Instant::now();
        while started.elapsed() < VERIFIED_KEY_TTL + VERIFIED_KEY_TTL / 2 {
            keys.authenticate(&secret).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let key = elsewhere.list(org).await.unwrap().remove(0);
        elsewhere
            .revoke(&crate::domain::Actor::command_line(), key.id)
            .await
            .unwrap();
        let revoked = std::time::Instant::now();
        while keys.authenticate(&secret).await.is_ok() {
            assert!(
                revoked.elapsed() <= VERIFIED_KEY_TTL,
                "still accepted {:?} after the revocation",
                revoked.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
