//! API keys: creation, listing, revocation and authentication.
//!
//! A key is `cnx_` followed by 256 random bits in base64url. Only its SHA-256
//! digest is stored; the secret is returned once, at creation.
//!
//! Keys that verified are remembered (by digest) for [`VERIFIED_KEY_TTL`], so
//! a busy caller does not cost a database query per call. A key revoked
//! through this process stops working at once, even for a call whose lookup
//! raced with the revocation; one revoked elsewhere (another replica, the CLI)
//! within that TTL, inside the 5 seconds SPEC allows.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use moka::sync::Cache;
use sea_orm::DatabaseConnection;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::instrument;

use super::{ServiceError, now, random_bytes, time_of};
use crate::{
    db::Reader,
    domain::{ApiKey, ApiKeyId, OrganizationId},
    entity::{api_key, organization},
};

/// Every secret starts with this, so a leaked key is easy to recognise.
pub const SECRET_PREFIX: &str = "cnx_";
/// Characters of the secret kept as the key's non-secret `prefix`.
const DISPLAY_PREFIX_LEN: usize = 12;
/// Longer presented secrets are refused without hashing.
pub const MAX_SECRET_LEN: usize = 128;

/// How long a verified key is trusted before the database is asked again;
/// the longest a key revoked on another replica keeps working there.
pub const VERIFIED_KEY_TTL: Duration = Duration::from_secs(2);
/// Most verified keys remembered; beyond it the least used are forgotten.
const VERIFIED_KEY_CAPACITY: u64 = 100_000;

/// The API keys business layer. Clones share one cache of verified keys.
#[derive(Clone)]
pub struct ApiKeys {
    db: DatabaseConnection,
    /// Reads outside transactions.
    reader: Reader,
    /// Digest of a verified secret -> its organization.
    verified: Cache<[u8; 32], OrganizationId>,
    /// Revocations through this process so far: a lookup that overlapped one
    /// does not leave its key remembered.
    revocations: Arc<AtomicU64>,
    /// Presented secrets looked up in the database so far.
    lookups: Arc<AtomicU64>,
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
            revocations: Arc::new(AtomicU64::new(0)),
            lookups: Arc::new(AtomicU64::new(0)),
        }
    }

    /// How many presented secrets were looked up in the database so far:
    /// malformed ones and recently verified ones cost none.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::SeqCst)
    }

    /// Creates a key for `organization_id`; returns it with its secret, which
    /// is not stored and cannot be recovered.
    #[instrument(skip(self, display_name))]
    pub async fn create(
        &self,
        organization_id: OrganizationId,
        display_name: String,
    ) -> Result<(ApiKey, String), ServiceError> {
        if !organization::exists(&self.db, organization_id).await? {
            return Err(ServiceError::OrganizationNotFound);
        }
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
        api_key::insert(&self.db, &key, digest(&secret)).await?;
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

    /// Revokes a key; revoking a revoked key changes nothing.
    #[instrument(skip(self))]
    pub async fn revoke(&self, id: ApiKeyId) -> Result<ApiKey, ServiceError> {
        api_key::revoke(&self.db, id, now()).await?;
        self.revocations.fetch_add(1, Ordering::SeqCst);
        let (key, stored) = match api_key::find(&self.db, id).await {
            Ok(found) => found.ok_or(ServiceError::ApiKeyNotFound)?,
            Err(err) => {
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

    /// The organization a presented secret acts for. Unknown, malformed and
    /// revoked keys are all `ApiKeyInvalid`.
    pub async fn authenticate(&self, secret: &str) -> Result<OrganizationId, ServiceError> {
        if secret.len() > MAX_SECRET_LEN || !secret.starts_with(SECRET_PREFIX) {
            return Err(ServiceError::ApiKeyInvalid);
        }
        let presented = digest(secret);
        // Looking up a digest reveals nothing usable about the secret (finding
        // a preimage of SHA-256 is infeasible), so this needs no constant time.
        if let Some(organization) = self.verified.get(&presented) {
            return Ok(organization);
        }
        let revocations = self.revocations.load(Ordering::SeqCst);
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let found = api_key::lookup(&self.reader, &presented).await?;
        match found {
            // The lookup is by digest; the constant-time comparison makes the
            // final decision independent of where the bytes differ.
            Some((organization, stored)) if bool::from(stored.ct_eq(&presented)) => {
                self.verified.insert(presented, organization);
                // The lookup may have read the key just before a revocation
                // counted since it began: do not remember it past this call.
                // (A revocation counted after this check invalidates after
                // the insert.)
                if self.revocations.load(Ordering::SeqCst) != revocations {
                    self.verified.invalidate(&presented);
                }
                Ok(organization)
            }
            _ => Err(ServiceError::ApiKeyInvalid),
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
    use migration::{Migrator, MigratorTrait};

    /// API keys over a new database, and a key of a new organization.
    async fn setup() -> (ApiKeys, OrganizationId, String) {
        let db = connect(&DatabaseSettings::new("sqlite::memory:"))
            .await
            .unwrap();
        Migrator::up(&db, None).await.unwrap();
        let organizations =
            Organizations::new(db.clone(), db.clone().into(), PageTokens::new([1; 32]));
        let org = organizations
            .create(DisplayName::parse("O").unwrap())
            .await
            .unwrap();
        let keys = ApiKeys::new(db.clone(), db.into());
        let (_, secret) = keys.create(org.id, "k".to_owned()).await.unwrap();
        (keys, org.id, secret)
    }

    #[tokio::test]
    async fn a_verified_key_is_remembered_and_not_looked_up_again() {
        let (keys, org, secret) = setup().await;
        assert_eq!(keys.authenticate(&secret).await.unwrap(), org);
        assert_eq!(keys.authenticate(&secret).await.unwrap(), org);
        assert_eq!(keys.lookups(), 1);
    }

    #[tokio::test]
    async fn secrets_that_cannot_be_keys_are_refused_without_a_lookup() {
        let (keys, _, secret) = setup().await;
        let too_long = format!(
            "{SECRET_PREFIX}{}",
            "a".repeat(MAX_SECRET_LEN + 1 - SECRET_PREFIX.len())
        );
        let longest = format!(
            "{SECRET_PREFIX}{}",
            "a".repeat(MAX_SECRET_LEN - SECRET_PREFIX.len())
        );
        for presented in [
            "",
            "cnx",
            "key_abc",
            &secret[SECRET_PREFIX.len()..],
            &too_long,
        ] {
            assert!(
                matches!(
                    keys.authenticate(presented).await,
                    Err(ServiceError::ApiKeyInvalid)
                ),
                "{presented:?}"
            );
            assert_eq!(keys.lookups(), 0, "{presented:?} was looked up");
        }
        // The longest secret accepted for a lookup is looked up (and unknown).
        assert!(matches!(
            keys.authenticate(&longest).await,
            Err(ServiceError::ApiKeyInvalid)
        ));
        assert_eq!(keys.lookups(), 1);
    }

    #[tokio::test]
    async fn a_revoked_key_is_refused_at_once() {
        let (keys, org, secret) = setup().await;
        assert_eq!(keys.authenticate(&secret).await.unwrap(), org);
        let key = keys.list(org).await.unwrap().remove(0);
        keys.revoke(key.id).await.unwrap();
        assert!(matches!(
            keys.authenticate(&secret).await,
            Err(ServiceError::ApiKeyInvalid)
        ));
    }
}
