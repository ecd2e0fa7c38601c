//! Caller identity from `authorization: Bearer <secret>` metadata.

use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;

use std::sync::Arc;

use super::call::{self, Presented};
use crate::{
    domain::{Caller, Credential, OrganizationId},
    service::{
        AdminTokenProblem, ApiKeys, KeyProblem, ServiceError,
        api_keys::{SECRET_PREFIX, digest},
        watch::StillAuthorized,
    },
};

/// Longest `authorization` value examined; longer ones are refused unread.
pub const MAX_AUTHORIZATION_LEN: usize = 512;

/// Why the `authorization` metadata holds no usable bearer credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BearerError {
    /// No `authorization` metadata at all.
    Missing,
    /// Present, but not `Bearer <credential>` within the length limit.
    Malformed,
}

/// The credential in `authorization: Bearer <credential>`.
fn bearer(metadata: &MetadataMap) -> Result<&str, BearerError> {
    let value = metadata.get("authorization").ok_or(BearerError::Missing)?;
    if value.len() > MAX_AUTHORIZATION_LEN {
        return Err(BearerError::Malformed);
    }
    let value = value.to_str().map_err(|_| BearerError::Malformed)?;
    match value.split_once(' ') {
        Some((scheme, credential)) if scheme.eq_ignore_ascii_case("bearer") => {
            Ok(credential.trim())
        }
        _ => Err(BearerError::Malformed),
    }
}

/// Resolves API keys to the organization they act for.
#[derive(Debug, Clone)]
pub struct Authenticator {
    keys: ApiKeys,
    /// Recognised to say so when it is sent instead of an API key.
    admin_token: AdminToken,
}

impl Authenticator {
    /// Authenticates against the keys in `keys`.
    pub fn new(keys: ApiKeys) -> Self {
        Self {
            keys,
            admin_token: AdminToken::new(None),
        }
    }

    /// Also tells a caller that sends `admin_token` instead of an API key so.
    pub fn recognizing(self, admin_token: AdminToken) -> Self {
        Self {
            admin_token,
            ..self
        }
    }

    /// Who calls: the key's organization, and the key. Missing metadata is
    /// `ApiKeyMissing`; anything else that is not a valid key is
    /// `ApiKeyInvalid`, with its [`KeyProblem`].
    pub async fn caller(&self, metadata: &MetadataMap) -> Result<Caller, ServiceError> {
        let secret = bearer(metadata).map_err(|err| match err {
            BearerError::Missing => ServiceError::ApiKeyMissing,
            BearerError::Malformed => ServiceError::ApiKeyInvalid(KeyProblem::NotBearer),
        })?;
        let caller = match self.keys.authenticate(secret).await {
            Err(ServiceError::ApiKeyInvalid(KeyProblem::Malformed))
                if self.admin_token.matches(secret) =>
            {
                return Err(ServiceError::ApiKeyInvalid(KeyProblem::AdminToken));
            }
            other => other?,
        };
        call::note(Presented::ApiKey {
            organization: caller.organization,
            api_key: caller.api_key,
        });
        let span = tracing::Span::current();
        span.record("caller", tracing::field::display(caller.organization));
        span.record("api_key", tracing::field::display(caller.api_key));
        Ok(caller)
    }

    /// The calling organization (see [`caller`](Self::caller)).
    pub async fn organization(
        &self,
        metadata: &MetadataMap,
    ) -> Result<OrganizationId, ServiceError> {
        Ok(self.caller(metadata).await?.organization)
    }

    /// Who calls, as [`caller`](Self::caller), and a check that its key is
    /// still valid, for streams that stay open after the call began.
    pub async fn caller_while_valid(
        &self,
        metadata: &MetadataMap,
    ) -> Result<(Caller, StillAuthorized), ServiceError> {
        let caller = self.caller(metadata).await?;
        let secret =
            bearer(metadata).map_err(|_| ServiceError::ApiKeyInvalid(KeyProblem::NotBearer))?;
        let presented = digest(secret);
        let (keys, organization) = (self.keys.clone(), caller.organization);
        let check: StillAuthorized = Arc::new(move || {
            let keys = keys.clone();
            Box::pin(async move { keys.still_valid(presented, organization).await })
        });
        Ok((caller, check))
    }
}

/// An operator's token (the admin token, or the access-check token), kept
/// only as a SHA-256 digest.
#[derive(Clone)]
pub struct AdminToken {
    digest: Option<[u8; 32]>,
    /// What a call it accepts is noted as (see [`call::note`]).
    presented: Presented,
}

/// Bytes of a token's digest its fingerprint shows.
const FINGERPRINT_BYTES: usize = 8;

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminToken")
            .field("configured", &self.digest.is_some())
            .finish()
    }
}

impl AdminToken {
    /// The configured token, without surrounding whitespace (as the bearer
    /// credential it is compared with); `None` (or an empty token) refuses
    /// every call.
    pub fn new(token: Option<&SecretString>) -> Self {
        let digest = token
            .map(|t| t.expose_secret().trim())
            .filter(|t| !t.is_empty())
            .map(digest);
        Self {
            digest,
            presented: Presented::AdminToken,
        }
    }

    /// The access-check token: as [`new`](Self::new), but the calls it
    /// accepts are noted as made with the access-check token.
    pub fn access_check(token: Option<&SecretString>) -> Self {
        Self {
            presented: Presented::AccessCheckToken,
            ..Self::new(token)
        }
    }

    /// The token as the audit log names it: the start of its digest in hex,
    /// from which the token cannot be recovered. Empty when none is set.
    pub fn credential(&self) -> Credential {
        let fingerprint = self.digest.map_or_else(String::new, |digest| {
            digest[..FINGERPRINT_BYTES]
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect()
        });
        Credential::AdminToken { fingerprint }
    }

    /// Whether a token is configured.
    pub fn is_configured(&self) -> bool {
        self.digest.is_some()
    }

    /// Succeeds only if the metadata carries the configured token; else says
    /// what is wrong ([`AdminTokenProblem`]).
    pub fn check(&self, metadata: &MetadataMap) -> Result<(), ServiceError> {
        use AdminTokenProblem as P;
        if self.digest.is_none() {
            return Err(ServiceError::AdminTokenInvalid(P::NotConfigured));
        }
        let presented = bearer(metadata).map_err(|err| {
            ServiceError::AdminTokenInvalid(match err {
                BearerError::Missing => P::Missing,
                BearerError::Malformed => P::NotBearer,
            })
        })?;
        if self.matches(presented) {
            call::note(self.presented.clone());
            Ok(())
        } else if presented.starts_with(SECRET_PREFIX) {
            Err(ServiceError::AdminTokenInvalid(P::ApiKey))
        } else {
            Err(ServiceError::AdminTokenInvalid(P::Wrong))
        }
    }

    /// Whether `presented` is the configured token. Digests of equal length
    /// are compared in constant time, so neither the token's content nor its
    /// length leaks through timing.
    pub fn matches(&self, presented: &str) -> bool {
        self.digest
            .as_ref()
            .is_some_and(|expected| bool::from(digest(presented).ct_eq(expected)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(authorization: Option<&str>) -> MetadataMap {
        let mut map = MetadataMap::new();
        if let Some(value) = authorization {
            map.insert("authorization", value.parse().unwrap());
        }
        map
    }

    #[test]
    fn admin_token_accepts_only_the_configured_token() {
        let secret = SecretString::from("s3cret-token");
        let token = AdminToken::new(Some(&secret));
        assert!(token.check(&metadata(Some("Bearer s3cret-token"))).is_ok());
        assert!(token.check(&metadata(Some("bearer s3cret-token"))).is_ok());
        let padded = AdminToken::new(Some(&SecretString::from(" s3cret-token\n")));
        assert!(
            padded
                .check(&metadata(Some("Bearer  s3cret-token ")))
                .is_ok()
        );
        use AdminTokenProblem as P;
        for (bad, problem) in [
            (None, P::Missing),
            (Some("Bearer wrong"), P::Wrong),
            (Some("Bearer s3cret-token-and-more"), P::Wrong),
            (Some("Bearer cnx_an-organizations-key"), P::ApiKey),
            (Some("Basic s3cret-token"), P::NotBearer),
            (Some("s3cret-token"), P::NotBearer),
        ] {
            assert!(
                matches!(
                    token.check(&metadata(bad)),
                    Err(ServiceError::AdminTokenInvalid(p)) if p == problem
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn no_or_empty_admin_token_refuses_everything() {
        for token in [
            AdminToken::new(None),
            AdminToken::new(Some(&SecretString::from(""))),
        ] {
            assert!(!token.is_configured());
            assert!(matches!(
                token.check(&metadata(Some("Bearer "))),
                Err(ServiceError::AdminTokenInvalid(
                    AdminTokenProblem::NotConfigured
                ))
            ));
        }
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let token = AdminToken::new(Some(&SecretString::from("hunter2")));
        assert!(!format!("{token:?}").contains("hunter2"));
    }

    #[test]
    fn bearer_distinguishes_missing_from_malformed() {
        assert_eq!(bearer(&metadata(None)), Err(BearerError::Missing));
        assert_eq!(
            bearer(&metadata(Some("Token abc"))),
            Err(BearerError::Malformed)
        );
        let long = format!("Bearer {}", "a".repeat(MAX_AUTHORIZATION_LEN));
        assert_eq!(bearer(&metadata(Some(&long))), Err(BearerError::Malformed));
        assert_eq!(bearer(&metadata(Some("Bearer  cnx_abc "))), Ok("cnx_abc"));
    }
}
