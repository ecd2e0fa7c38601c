//! The audit log's records: operator actions, and changes organizations
//! make to their webhook endpoints; the credential that made each, and where
//! the request came from.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::ids::{ApiKeyId, OrganizationId};

/// An action the audit log records.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
pub enum AuditAction {
    /// An organization was created.
    #[strum(serialize = "organization.created")]
    OrganizationCreated,
    /// An API key was created.
    #[strum(serialize = "api_key.created")]
    ApiKeyCreated,
    /// An API key was revoked (its first revocation: revoking it again
    /// changes nothing and records nothing).
    #[strum(serialize = "api_key.revoked")]
    ApiKeyRevoked,
    /// An organization created a webhook endpoint (a retry of the creation
    /// with the same request_id records nothing).
    #[strum(serialize = "webhook_endpoint.created")]
    WebhookEndpointCreated,
    /// An organization changed a webhook endpoint's URL, description, event
    /// types or whether it is disabled.
    #[strum(serialize = "webhook_endpoint.updated")]
    WebhookEndpointUpdated,
    /// An organization deleted a webhook endpoint (and its undelivered
    /// events).
    #[strum(serialize = "webhook_endpoint.deleted")]
    WebhookEndpointDeleted,
    /// An organization rotated a webhook endpoint's signing secret.
    #[strum(serialize = "webhook_endpoint.secret_rotated")]
    WebhookSecretRotated,
    /// An organization queued past events again for a webhook endpoint
    /// (only when the recovery queued at least one).
    #[strum(serialize = "webhook_endpoint.deliveries_recovered")]
    WebhookDeliveriesRecovered,
    /// An organization replaced its policy as a destination (the sources it
    /// trusts).
    #[strum(serialize = "organization.policy_updated")]
    OrganizationPolicyUpdated,
}

impl AuditAction {
    /// What the action's target is.
    pub fn target_type(self) -> TargetType {
        match self {
            Self::OrganizationCreated | Self::OrganizationPolicyUpdated => TargetType::Organization,
            Self::ApiKeyCreated | Self::ApiKeyRevoked => TargetType::ApiKey,
            Self::WebhookEndpointCreated
            | Self::WebhookEndpointUpdated
            | Self::WebhookEndpointDeleted
            | Self::WebhookSecretRotated
            | Self::WebhookDeliveriesRecovered => TargetType::WebhookEndpoint,
        }
    }
}

/// What an audited action acted on.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::Display, strum::EnumString, strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum TargetType {
    /// An organization.
    Organization,
    /// An API key.
    ApiKey,
    /// A webhook endpoint.
    WebhookEndpoint,
}

/// The credential an action was made with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// The operator's admin token, named by its fingerprint (the start of
    /// its SHA-256 digest), so that entries made before and after a token
    /// rotation can be told apart without the token being recoverable.
    AdminToken {
        /// Hex digits of the token's digest.
        fingerprint: String,
    },
    /// `connections admin` on the database directly (no token: whoever can
    /// reach the database).
    CommandLine,
    /// An organization's API key.
    ApiKey {
        /// The key.
        id: ApiKeyId,
    },
}

/// The kinds of [`Credential`], as stored and shown.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::Display, strum::EnumString, strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum CredentialKind {
    /// [`Credential::AdminToken`].
    AdminToken,
    /// [`Credential::CommandLine`].
    Cli,
    /// [`Credential::ApiKey`].
    ApiKey,
}

impl Credential {
    /// Its kind.
    pub fn kind(&self) -> CredentialKind {
        match self {
            Self::AdminToken { .. } => CredentialKind::AdminToken,
            Self::CommandLine => CredentialKind::Cli,
            Self::ApiKey { .. } => CredentialKind::ApiKey,
        }
    }

    /// Its ID, if it has one: the admin token's fingerprint or the key's ID.
    pub fn id(&self) -> Option<String> {
        match self {
            Self::AdminToken { fingerprint } => Some(fingerprint.clone()),
            Self::CommandLine => None,
            Self::ApiKey { id } => Some(id.to_string()),
        }
    }
}

/// Who makes an audited change, and from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The credential.
    pub credential: Credential,
    /// The client's address, for calls over the network.
    pub peer: Option<String>,
    /// The call's request ID (its `x-request-id`), for calls over the network.
    pub request_id: Option<String>,
}

impl Actor {
    /// `connections admin`, on the database directly.
    pub fn command_line() -> Self {
        Self {
            credential: Credential::CommandLine,
            peer: None,
            request_id: None,
        }
    }
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// UUIDv7: entries sort by it in the order they were made.
    pub id: Uuid,
    /// When.
    pub occur_time: DateTime<Utc>,
    /// What was done.
    pub action: AuditAction,
    /// The credential's kind.
    pub credential_kind: CredentialKind,
    /// The credential's ID (see [`Credential::id`]).
    pub credential_id: Option<String>,
    /// What it was done to.
    pub target_type: TargetType,
    /// The target's ID.
    pub target_id: Uuid,
    /// The organization the target is, or belongs to.
    pub organization_id: OrganizationId,
    /// The target's display name when the action was made.
    pub target_display_name: String,
    /// The client's address, if the action came over the network.
    pub peer: Option<String>,
    /// The call's request ID, if the action came over the network.
    pub request_id: Option<String>,
}

/// Which entries a reader wants; every filter set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only this action.
    pub action: Option<AuditAction>,
    /// Only entries about this target (an organization, an API key or a
    /// webhook endpoint).
    pub target_id: Option<Uuid>,
    /// Only entries made at or after this time.
    pub start_time: Option<DateTime<Utc>>,
    /// Only entries made before this time.
    pub end_time: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use strum::VariantArray;

    use super::*;

    #[test]
    fn every_action_reads_back_from_its_name_and_names_its_target() {
        for action in AuditAction::VARIANTS {
            assert_eq!(AuditAction::from_str(&action.to_string()), Ok(*action));
            // The columns' widths.
            assert!(action.to_string().len() <= 64, "{action}");
            assert!(action.target_type().to_string().len() <= 32, "{action}");
        }
        assert_eq!(AuditAction::ApiKeyRevoked.to_string(), "api_key.revoked");
        assert_eq!(
            AuditAction::OrganizationCreated.target_type(),
            TargetType::Organization
        );
        assert_eq!(
            AuditAction::WebhookSecretRotated.to_string(),
            "webhook_endpoint.secret_rotated"
        );
        assert_eq!(
            AuditAction::WebhookEndpointDeleted
                .target_type()
                .to_string(),
            "webhook_endpoint"
        );
    }

    #[test]
    fn a_credential_names_its_kind_and_only_an_id_that_is_not_a_secret() {
        let key = ApiKeyId::generate();
        assert_eq!(Credential::ApiKey { id: key }.id(), Some(key.to_string()));
        assert_eq!(Credential::CommandLine.id(), None);
        assert_eq!(Credential::CommandLine.kind().to_string(), "cli");
        let token = Credential::AdminToken {
            fingerprint: "0a1b2c3d4e5f6a7b".to_owned(),
        };
        assert_eq!(token.kind().to_string(), "admin_token");
        assert_eq!(
            CredentialKind::from_str("api_key"),
            Ok(CredentialKind::ApiKey)
        );
    }
}
